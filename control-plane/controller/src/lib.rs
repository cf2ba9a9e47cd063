//! sandbox-controller: reconcilers for the `agents.kruise.io/v1alpha1` resources.
//!
//! Pure domain logic (no I/O, unit- and property-tested): [`pool`] (warm-pool arithmetic),
//! [`claim`] (claim patches, claim phases; picking, takes, `/init` and reserve-or-delete are the
//! shared claim engine's, `sandbox-core`), [`lifecycle`] (the Sandbox state machine and timers), [`revision`] (revision hashes), [`injection`] (runtime injection),
//! [`podgen`] (pod construction), [`updateops`] + [`smp`] (update ops planning, strategic merge
//! patch), [`admission`] (webhook rules), [`conditions`]. Kube adapters live in [`reconcile`]; process
//! wiring (leases, HTTP endpoints, admission) in [`leader`], [`server`], [`webhook`], [`run`].

pub mod admission;
pub mod claim;
pub mod conditions;
pub mod context;
pub mod error;
pub mod expectations;
pub mod injection;
pub mod leader;
pub mod lifecycle;
pub mod metrics;
pub mod pace;
pub mod podgen;
pub mod pool;
pub mod reconcile;
pub mod revision;
pub mod run;
pub mod server;
pub mod smp;
pub mod updateops;
pub mod webhook;
