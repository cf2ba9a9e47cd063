//! The boundary between the E2B API and the infrastructure that runs sandboxes. The API layer
//! authenticates, validates, filters, pages and renders; a backend keeps sandboxes and their
//! lifecycle. `local` (embedded, processes on loopback addresses) implements it here; `kube`
//! (Sandbox CRs claimed from SandboxSets) implements the same trait.
//!
//! Every call that takes a sandbox id also takes the caller: a sandbox of another team is
//! `NotFound`, exactly like one that does not exist.

use std::time::Duration;

use async_trait::async_trait;

use crate::model::{
    BackendResult, Caller, Connected, CreateSpec, Deadline, LogLine, MetricSample, Paused,
    SandboxId, SandboxRecord, SnapshotRecord, TemplateRecord,
};

/// What a backend can do beyond the common surface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Kubernetes-only extension keys (image, cpu-*, csi-*, …) are accepted.
    pub kubernetes: bool,
    /// Egress rules (`allow_internet_access: false`, `network`) are enforced.
    pub egress_rules: bool,
    /// A paused sandbox wakes up on inbound traffic (`autoResume`).
    pub auto_resume: bool,
}

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    fn capabilities(&self) -> Capabilities;

    /// Takes a sandbox from the template's warm pool (or starts one when the pool is empty and
    /// the spec allows it), initialises its runtime, and returns once every connected gateway
    /// routes to it. A template id may also be a snapshot id.
    async fn create(&self, spec: CreateSpec) -> BackendResult<SandboxRecord>;

    async fn get(&self, caller: &Caller, id: &SandboxId) -> BackendResult<SandboxRecord>;

    /// Every sandbox the caller sees (running and paused); the API layer filters and pages.
    async fn list(&self, caller: &Caller) -> BackendResult<Vec<SandboxRecord>>;

    /// Kills the sandbox; its route is withdrawn from every gateway before this returns.
    async fn kill(&self, caller: &Caller, id: &SandboxId) -> BackendResult<()>;

    /// Moves the sandbox's deadline (running sandboxes only; never-timeout sandboxes keep none).
    async fn set_deadline(
        &self,
        caller: &Caller,
        id: &SandboxId,
        deadline: Deadline,
    ) -> BackendResult<SandboxRecord>;

    async fn pause(&self, caller: &Caller, id: &SandboxId) -> BackendResult<Paused>;

    /// Resumes a paused sandbox, or extends a running one; the deadline becomes at least
    /// now + `timeout`.
    async fn connect(
        &self,
        caller: &Caller,
        id: &SandboxId,
        timeout: Duration,
    ) -> BackendResult<(SandboxRecord, Connected)>;

    async fn metrics(&self, caller: &Caller, id: &SandboxId) -> BackendResult<Vec<MetricSample>>;

    async fn logs(
        &self,
        caller: &Caller,
        id: &SandboxId,
        limit: usize,
    ) -> BackendResult<Vec<LogLine>>;

    async fn snapshot(
        &self,
        caller: &Caller,
        id: &SandboxId,
        name: Option<String>,
    ) -> BackendResult<SnapshotRecord>;

    async fn list_snapshots(&self, caller: &Caller) -> BackendResult<Vec<SnapshotRecord>>;

    /// Deletes a snapshot; `false` when the caller has none of that id.
    async fn delete_snapshot(&self, caller: &Caller, id: &str) -> BackendResult<bool>;

    async fn templates(&self, caller: &Caller) -> BackendResult<Vec<TemplateRecord>>;

    /// Whether the backend is ready to serve creates (pools warm, gateways synced).
    async fn ready(&self) -> Result<(), String>;

    /// Stops every sandbox process the backend runs (graceful shutdown).
    async fn shutdown(&self);
}
