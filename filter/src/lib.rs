//! Envoy dynamic-module filter (being written).
