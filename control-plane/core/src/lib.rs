//! sandbox-core: the claim engine shared by the controller's SandboxClaim reconciler and the
//! manager's Kubernetes backend. It is protocol-neutral: plain data and small async traits, no
//! Kubernetes client and no HTTP server (its HTTP clients are the runtime's: `/init`, and
//! [`envd`] for commands and files in a sandbox).
//!
//! A claim, in order:
//! 1. **pick** — [`Candidates`] orders a pool snapshot (current template revision first, each
//!    group rotated to a random start) and skips what cannot be offered; the [`PickLock`] keeps
//!    this process's workers off a sandbox another one is taking or has just taken;
//! 2. **take** — one write guarded by the version the candidate was read at, through
//!    [`SandboxStore::take`]: a conflict moves on to the next candidate; with none left, a
//!    create ([`SandboxStore::create`]) when the claim allows it and the [`CreateLimiter`] does;
//! 3. **wait-ready** — a created sandbox is waited for, at most `wait_ready_timeout`, until its
//!    [`Readiness`] verdict is ready (or can never be);
//! 4. **init** — `POST /init` to the runtime ([`RuntimeInit`], [`HttpRuntimeInit`]);
//! 5. **mount** — [`SandboxStore::mount`], the claim's volumes (the manager's CSI mounts);
//! 6. **route** — [`SandboxStore::route`], for adapters that must see the sandbox routable.
//!
//! A sandbox that fails after it was taken is reserved or deleted and never counted; the claim
//! may try again ([`ClaimEngine::claim`], with backoff per [`RetryPolicy`]). Worker slots bound
//! the concurrent picks and takes; [`ClaimTimings`] reports each stage.

#![forbid(unsafe_code)]

mod candidates;
mod engine;
pub mod envd;
mod limiter;
mod pick;
mod retry;
mod runtime;
mod sandbox;
mod store;

pub use candidates::Candidates;
pub use engine::{
    ClaimEngine, ClaimError, ClaimOptions, ClaimReport, ClaimTimings, Claimed,
    DEFAULT_WAIT_READY_TIMEOUT, Disposition, EngineConfig, Origin, Stage,
};
pub use limiter::{CreateLimiter, DEFAULT_CREATE_BURST, DEFAULT_CREATE_PER_SECOND};
pub use pick::{PickGuard, PickLock};
pub use retry::RetryPolicy;
pub use runtime::{HttpRuntimeInit, InitError, InitRuntimeRequest, RuntimeInit};
pub use sandbox::{ClaimableSandbox, PickFacts, Readiness, ReadinessFacts};
pub use store::{ClaimIdentity, Pool, SandboxStore, TakeError};

/// A random token in the UUID v4 text form: claim locks and runtime access tokens.
pub fn new_token() -> String {
    let v: u128 = rand::random();
    // Version 4 (random) and the RFC 4122 variant.
    let v = (v & !(0xf_u128 << 76)) | (0x4_u128 << 76);
    let v = (v & !(0x3_u128 << 62)) | (0x2_u128 << 62);
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_uuid_v4_text_and_differ() {
        let a = super::new_token();
        let b = super::new_token();
        assert_ne!(a, b);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'), "{a}");
        assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"), "{a}");
    }
}
