//! `agents.kruise.io/v1alpha1` API types. Not built yet (issue 5).
