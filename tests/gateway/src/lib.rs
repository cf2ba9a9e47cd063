//! Helpers for the gateway integration tests (being written).
