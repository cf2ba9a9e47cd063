//! The store a claim takes sandboxes from: the small async trait each adapter implements
//! (Kubernetes: Sandbox CRs through the API server).

use std::time::SystemTime;

use async_trait::async_trait;

use crate::runtime::InitRuntimeRequest;
use crate::sandbox::ClaimableSandbox;

/// What one claim attempt writes with a take or a create, besides the adapter's own marks
/// (owner, claim name, labels): its lock and, when the runtime is to be initialised, the `/init`
/// request with a fresh access token.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimIdentity {
    /// A fresh token per attempt; a locked sandbox is offered to nobody else.
    pub lock: String,
    pub init: Option<InitRuntimeRequest>,
    pub claimed_at: SystemTime,
}

/// A snapshot of the pool a claim takes from.
#[derive(Debug, Clone)]
pub struct Pool<S> {
    pub sandboxes: Vec<S>,
    /// The template revision new sandboxes get; candidates running it are preferred.
    pub update_revision: Option<String>,
}

/// Why a take did not happen.
#[derive(Debug)]
pub enum TakeError<E> {
    /// The sandbox changed since it was read (another claimer won): try the next one.
    Conflict,
    /// The sandbox is gone: try the next one.
    Gone,
    /// The store failed; the attempt stops.
    Failed(E),
}

impl<E> TakeError<E> {
    /// A failed guarded write by the HTTP status its answer carried: 409 (the version moved on:
    /// another claimer won) and 404 (the sandbox is gone) send the claim to the next candidate,
    /// anything else (or no answer) fails the attempt.
    pub fn from_status(status: Option<u16>, error: E) -> Self {
        match status {
            Some(409) => TakeError::Conflict,
            Some(404) => TakeError::Gone,
            _ => TakeError::Failed(error),
        }
    }

    /// The same outcome with the store error converted.
    pub fn map_failed<F>(self, f: impl FnOnce(E) -> F) -> TakeError<F> {
        match self {
            TakeError::Conflict => TakeError::Conflict,
            TakeError::Gone => TakeError::Gone,
            TakeError::Failed(e) => TakeError::Failed(f(e)),
        }
    }
}

/// The adapter's side of a claim. Methods are called for the one claim the store was made for.
#[async_trait]
pub trait SandboxStore: Send + Sync {
    type Sandbox: ClaimableSandbox + Clone + 'static;
    type Error: std::error::Error + Send + Sync + 'static;

    /// The pool to pick from (a cache read is fine: a stale candidate only loses its take).
    async fn pool(&self) -> Result<Pool<Self::Sandbox>, Self::Error>;

    /// Takes `candidate` for the claim in one write guarded by the version it was read at, so
    /// that of two claimers only one can win; returns the sandbox as written.
    async fn take(
        &self,
        candidate: &Self::Sandbox,
        identity: &ClaimIdentity,
    ) -> Result<Self::Sandbox, TakeError<Self::Error>>;

    /// Creates a sandbox already taken for the claim (the pool had none).
    async fn create(&self, identity: &ClaimIdentity) -> Result<Self::Sandbox, Self::Error>;

    /// The sandbox again, once it may have changed (an adapter with a watch waits for the next
    /// event; one without polls, pausing before it reads). `None`: it is gone.
    async fn refresh(&self, sandbox: &Self::Sandbox) -> Result<Option<Self::Sandbox>, Self::Error>;

    /// Keeps a sandbox that failed after the take for inspection, no longer counted by the claim.
    async fn reserve(&self, sandbox: &Self::Sandbox) -> Result<(), Self::Error>;

    /// Deletes a sandbox that failed after the take (already gone is success).
    async fn delete(&self, sandbox: &Self::Sandbox) -> Result<(), Self::Error>;

    /// Mounts the claim's volumes into the initialised sandbox (the manager's CSI mounts);
    /// nothing by default. The error says why, for the person who asked.
    async fn mount(&self, _sandbox: &Self::Sandbox) -> Result<(), String> {
        Ok(())
    }

    /// Makes the claimed sandbox reachable before the claim returns (the manager waits until
    /// the gateways route to it); nothing by default.
    async fn route(&self, _sandbox: &Self::Sandbox) -> Result<(), Self::Error> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::TakeError;

    #[test]
    fn take_errors_by_status() {
        assert!(matches!(
            TakeError::from_status(Some(409), "x"),
            TakeError::Conflict
        ));
        assert!(matches!(
            TakeError::from_status(Some(404), "x"),
            TakeError::Gone
        ));
        assert!(matches!(
            TakeError::from_status(Some(500), "x"),
            TakeError::Failed("x")
        ));
        assert!(matches!(
            TakeError::from_status(None, "x"),
            TakeError::Failed("x")
        ));
        let mapped = TakeError::from_status(Some(503), 7).map_failed(|n| n * 2);
        assert!(matches!(mapped, TakeError::Failed(14)));
    }
}
