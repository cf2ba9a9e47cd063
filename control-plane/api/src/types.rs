//! The `agents.kruise.io/v1alpha1` resources. Field names, defaults, short names, printer columns
//! and subresources follow upstream; pod and PVC templates are schemaless in the CRD (upstream
//! marks them `PreserveUnknownFields`) and typed here.

// kube-derive takes one `printcolumn(...)` per column; clippy reads the repeated `type_ = ...`
// keys as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ExecAction, PersistentVolumeClaim, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "agents.kruise.io";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "agents.kruise.io/v1alpha1";

// ------------------------------------------------------------------ shared pieces

/// A status condition. Upstream uses `metav1.Condition` semantics: `lastTransitionTime` only moves
/// when `status` changes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// How a sandbox pauses. Only `Stop` (delete the pod) is implemented, as upstream.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PauseStrategy {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Stop", "Hibernate"]))]
    pub type_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hibernate_strategy: Option<HibernateStrategy>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HibernateStrategy {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Snapshot"]))]
    pub type_: Option<String>,
}

/// A runtime to inject (`agent-runtime`, `csi`, `traffic-proxy`, or any key of the injection
/// ConfigMap).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
}

fn default_upgrade_timeout() -> Option<i32> {
    Some(60)
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    #[serde(
        default = "default_upgrade_timeout",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout_seconds: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxLifecycle {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_upgrade: Option<UpgradeAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_upgrade: Option<UpgradeAction>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradePolicy {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Recreate", "CheckpointRestore"]))]
    pub type_: Option<String>,
}

pub const UPGRADE_RECREATE: &str = "Recreate";
pub const UPGRADE_CHECKPOINT_RESTORE: &str = "CheckpointRestore";

// ------------------------------------------------------------------ Sandbox

/// One isolated environment: a pod built from `template` (or `templateRef`), with PVCs from
/// `volumeClaimTemplates`, timers, pause/resume and upgrade.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "agents.kruise.io",
    version = "v1alpha1",
    kind = "Sandbox",
    plural = "sandboxes",
    shortname = "sbx",
    namespaced,
    status = "SandboxStatus",
    derive = "PartialEq",
    derive = "Default",
    printcolumn(name = "Status", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Claimed",
        type_ = "string",
        json_path = ".metadata.labels.agents\\.kruise\\.io/sandbox-claimed"
    ),
    printcolumn(
        name = "shutdown_time",
        type_ = "string",
        json_path = ".spec.shutdownTime"
    ),
    printcolumn(name = "pause_time", type_ = "string", json_path = ".spec.pauseTime"),
    printcolumn(
        name = "RecycledCount",
        type_ = "integer",
        json_path = ".status.recycledCount"
    ),
    printcolumn(name = "Message", type_ = "string", json_path = ".status.message")
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxSpec {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_strategy: Option<PauseStrategy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::persistent_contents")]
    pub persistent_contents: Vec<String>,
    /// Absolute deletion time; in the past means delete now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_time: Option<Time>,
    /// Absolute auto-pause time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtimes: Vec<RuntimeConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<SandboxLifecycle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_policy: Option<UpgradePolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_ref: Option<TemplateRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserve_unknown_object")]
    pub template: Option<PodTemplateSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::preserve_unknown_object_list")]
    pub volume_claim_templates: Vec<PersistentVolumeClaim>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodInfo {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "podUID")]
    pub pod_uid: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::conditions")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_info: Option<PodInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recycled_count: Option<i32>,
}

/// A Sandbox's `status.phase`. The CRD field stays a string, so a value this version does not know
/// survives a round trip; this enum is the one place phase strings are parsed and printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SandboxPhase {
    Pending,
    Running,
    Paused,
    Resuming,
    Upgrading,
    Succeeded,
    Failed,
    Recycling,
    Terminating,
}

impl SandboxPhase {
    pub const ALL: [SandboxPhase; 9] = [
        SandboxPhase::Pending,
        SandboxPhase::Running,
        SandboxPhase::Paused,
        SandboxPhase::Resuming,
        SandboxPhase::Upgrading,
        SandboxPhase::Succeeded,
        SandboxPhase::Failed,
        SandboxPhase::Recycling,
        SandboxPhase::Terminating,
    ];

    /// The CRD's string value.
    pub const fn as_str(self) -> &'static str {
        match self {
            SandboxPhase::Pending => "Pending",
            SandboxPhase::Running => "Running",
            SandboxPhase::Paused => "Paused",
            SandboxPhase::Resuming => "Resuming",
            SandboxPhase::Upgrading => "Upgrading",
            SandboxPhase::Succeeded => "Succeeded",
            SandboxPhase::Failed => "Failed",
            SandboxPhase::Recycling => "Recycling",
            SandboxPhase::Terminating => "Terminating",
        }
    }

    /// The phase a CRD string names; `None` for the empty string and for values this version
    /// does not know.
    pub fn parse(s: &str) -> Option<SandboxPhase> {
        SandboxPhase::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// `Succeeded` and `Failed`: the sandbox never runs again.
    pub const fn is_terminal(self) -> bool {
        matches!(self, SandboxPhase::Succeeded | SandboxPhase::Failed)
    }
}

impl std::fmt::Display for SandboxPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl SandboxStatus {
    /// The phase, when it is one this version knows.
    pub fn known_phase(&self) -> Option<SandboxPhase> {
        self.phase.as_deref().and_then(SandboxPhase::parse)
    }
}

impl Sandbox {
    /// The status phase, when there is one this version knows.
    pub fn phase(&self) -> Option<SandboxPhase> {
        self.status.as_ref().and_then(SandboxStatus::known_phase)
    }
}

/// Sandbox condition types and reasons.
pub mod condition {
    pub const READY: &str = "Ready";
    pub const SANDBOX_PAUSED: &str = "SandboxPaused";
    pub const SANDBOX_RESUMED: &str = "SandboxResumed";
    pub const INPLACE_UPDATE: &str = "InplaceUpdate";
    pub const UPGRADING: &str = "Upgrading";
    pub const RUNTIME_INITIALIZED: &str = "RuntimeInitialized";
    pub const RECYCLING: &str = "Recycling";

    pub const REASON_POD_READY: &str = "PodReady";
    pub const REASON_INPLACE_UPDATING: &str = "InplaceUpdating";
    pub const REASON_UPGRADING: &str = "Upgrading";
    pub const REASON_START_CONTAINER_FAILED: &str = "StartContainerFailed";
    pub const REASON_POD_CREATE_FAILED: &str = "PodCreateFailed";
    pub const REASON_PENDING: &str = "Pending";
    pub const REASON_STOP_PAUSE_SUCCEED: &str = "StopPauseSucceed";
    pub const REASON_CREATE_POD: &str = "CreatePod";
    pub const REASON_RESUME_POD: &str = "ResumePod";
    pub const REASON_SUCCEEDED: &str = "Succeeded";
    pub const REASON_FAILED: &str = "Failed";
    pub const REASON_RESUME_SUCCEED: &str = "ResumeSucceed";
    pub const REASON_PRE_UPGRADE: &str = "PreUpgrade";
    pub const REASON_PRE_UPGRADE_FAILED: &str = "PreUpgradeFailed";
    pub const REASON_CHECKPOINTING: &str = "Checkpointing";
    pub const REASON_CHECKPOINT_FAILED: &str = "CheckpointFailed";
    pub const REASON_UPGRADE_POD: &str = "UpgradePod";
    pub const REASON_UPGRADE_POD_FAILED: &str = "UpgradePodFailed";
    pub const REASON_POST_UPGRADE: &str = "PostUpgrade";
    pub const REASON_POST_UPGRADE_FAILED: &str = "PostUpgradeFailed";
    pub const REASON_RESUMING: &str = "Resuming";
    pub const REASON_RECYCLING_REJECTED: &str = "RecyclingRejected";
}

// ------------------------------------------------------------------ SandboxSet

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleStrategy {
    /// Limits scale-up: at most this many sandboxes of `spec.replicas` may be not yet Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::int_or_string")]
    pub max_unavailable: Option<IntOrString>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxSetUpdateStrategy {
    /// How many old Available sandboxes may be replaced at once (webhook default `20%`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::int_or_string")]
    pub max_unavailable: Option<IntOrString>,
}

/// A warm pool: keeps `replicas` unused (creating + available) sandboxes ready to be claimed.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "agents.kruise.io",
    version = "v1alpha1",
    kind = "SandboxSet",
    plural = "sandboxsets",
    shortname = "sbs",
    namespaced,
    status = "SandboxSetStatus",
    derive = "PartialEq",
    derive = "Default",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(
        name = "Available",
        type_ = "integer",
        json_path = ".status.availableReplicas"
    ),
    printcolumn(
        name = "UpdatedReplicas",
        type_ = "integer",
        json_path = ".status.updatedReplicas"
    ),
    printcolumn(
        name = "UpdatedAvailableReplicas",
        type_ = "integer",
        json_path = ".status.updatedAvailableReplicas"
    ),
    printcolumn(
        name = "UpdateRevision",
        type_ = "string",
        json_path = ".status.updateRevision"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxSetSpec {
    /// Number of unused sandboxes (creating + available) to keep.
    pub replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_strategy: Option<PauseStrategy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::persistent_contents")]
    pub persistent_contents: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtimes: Vec<RuntimeConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_ref: Option<TemplateRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserve_unknown_object")]
    pub template: Option<PodTemplateSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::preserve_unknown_object_list")]
    pub volume_claim_templates: Vec<PersistentVolumeClaim>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_strategy: Option<ScaleStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<SandboxSetUpdateStrategy>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxSetStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    pub replicas: i32,
    pub available_replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    #[serde(default)]
    pub updated_replicas: i32,
    #[serde(default)]
    pub updated_available_replicas: i32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::conditions")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

// ------------------------------------------------------------------ SandboxTemplate

/// A reusable pod template referenced by `templateRef`. No status.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "agents.kruise.io",
    version = "v1alpha1",
    kind = "SandboxTemplate",
    plural = "sandboxtemplates",
    shortname = "sbt",
    namespaced,
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxTemplateSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserve_unknown_object")]
    pub template: Option<PodTemplateSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::preserve_unknown_object_list")]
    pub volume_claim_templates: Vec<PersistentVolumeClaim>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::persistent_contents")]
    pub persistent_contents: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtimes: Vec<RuntimeConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_strategy: Option<PauseStrategy>,
}

// ------------------------------------------------------------------ SandboxClaim

fn default_claim_replicas() -> Option<i32> {
    Some(1)
}
fn default_claim_timeout() -> Option<String> {
    Some("1m".into())
}
fn default_ttl_after_completed() -> Option<String> {
    Some("60m".into())
}
fn default_true() -> Option<bool> {
    Some(true)
}
fn default_wait_ready_timeout() -> Option<String> {
    Some("30s".into())
}
fn default_false() -> Option<bool> {
    Some(false)
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InplaceUpdateResources {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InplaceUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<InplaceUpdateResources>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CsiMountConfig {
    #[serde(default, rename = "mountID", skip_serializing_if = "Option::is_none")]
    pub mount_id: Option<String>,
    pub pv_name: String,
    pub mount_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// Claims `replicas` sandboxes from the SandboxSet named `templateName` in the same namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "agents.kruise.io",
    version = "v1alpha1",
    kind = "SandboxClaim",
    plural = "sandboxclaims",
    shortname = "sbc",
    namespaced,
    status = "SandboxClaimStatus",
    derive = "PartialEq",
    derive = "Default",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Template", type_ = "string", json_path = ".spec.templateName"),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(
        name = "Claimed",
        type_ = "integer",
        json_path = ".status.claimedReplicas"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxClaimSpec {
    /// Name of a SandboxSet in the claim's namespace.
    pub template_name: String,
    #[serde(
        default = "default_claim_replicas",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("replicas is immutable"))]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_time: Option<Time>,
    #[serde(
        default = "default_claim_timeout",
        skip_serializing_if = "Option::is_none"
    )]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("claimTimeout must be at least 1s"))]
    pub claim_timeout: Option<String>,
    #[serde(
        default = "default_ttl_after_completed",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl_after_completed: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_vars: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inplace_update: Option<InplaceUpdate>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["mountPath"]))]
    pub dynamic_volumes_mount: Vec<CsiMountConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtimes: Vec<RuntimeConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve_failed_sandbox: Option<bool>,
    #[serde(default = "default_true", skip_serializing_if = "Option::is_none")]
    pub create_on_no_stock: Option<bool>,
    #[serde(
        default = "default_wait_ready_timeout",
        skip_serializing_if = "Option::is_none"
    )]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("waitReadyTimeout must be at least 1s"))]
    pub wait_ready_timeout: Option<String>,
    #[serde(default = "default_false", skip_serializing_if = "Option::is_none")]
    pub skip_init_runtime: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxClaimStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub claimed_replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::conditions")]
    pub conditions: Vec<Condition>,
}

pub mod claim_phase {
    pub const CLAIMING: &str = "Claiming";
    pub const COMPLETED: &str = "Completed";
}

// ------------------------------------------------------------------ Checkpoint

/// A checkpoint of a sandbox. Reconciled by an external checkpoint controller; the sandbox
/// controller only creates and reads them for CheckpointRestore upgrades.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "agents.kruise.io",
    version = "v1alpha1",
    kind = "Checkpoint",
    plural = "checkpoints",
    shortname = "cp",
    namespaced,
    status = "CheckpointStatus",
    derive = "PartialEq",
    derive = "Default",
    printcolumn(name = "Status", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// Documented default true (no schema default upstream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_running: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub persistent_contents: Vec<String>,
    /// e.g. `30s`, `30m`, `30d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_after_finished: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Pending", "Creating", "Succeeded", "Failed", "Terminating"]))]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Raw strategic-merge patch for the pod template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template_delta: Option<String>,
}

// ------------------------------------------------------------------ SandboxUpdateOps

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxUpdateOpsStrategy {
    /// `Recreate` (default when empty) or `CheckpointRestore`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Recreate", "CheckpointRestore"]))]
    pub type_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::int_or_string")]
    pub max_unavailable: Option<IntOrString>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxStateFilter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("items" = {"type": "string", "enum": ["Running", "Paused"]}))]
    pub states: Vec<String>,
}

/// Rolls a template patch over the sandboxes matching `selector`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "agents.kruise.io",
    version = "v1alpha1",
    kind = "SandboxUpdateOps",
    plural = "sandboxupdateops",
    singular = "sandboxupdateops",
    shortname = "suo",
    namespaced,
    status = "SandboxUpdateOpsStatus",
    derive = "PartialEq",
    derive = "Default",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Total", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(
        name = "Updated",
        type_ = "integer",
        json_path = ".status.updatedReplicas"
    ),
    printcolumn(
        name = "Updating",
        type_ = "integer",
        json_path = ".status.updatingReplicas"
    ),
    printcolumn(
        name = "Failed",
        type_ = "integer",
        json_path = ".status.failedReplicas"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxUpdateOpsSpec {
    pub selector: LabelSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<SandboxUpdateOpsStrategy>,
    /// Raw strategic-merge patch applied to each sandbox's `spec.template`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserve_unknown_object")]
    pub patch: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<SandboxLifecycle>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_filter: Option<SandboxStateFilter>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxUpdateOpsStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub updated_replicas: i32,
    #[serde(default)]
    pub failed_replicas: i32,
    #[serde(default)]
    pub updating_replicas: i32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::conditions")]
    pub conditions: Vec<Condition>,
}

pub mod ops_phase {
    pub const PENDING: &str = "Pending";
    pub const UPDATING: &str = "Updating";
    pub const COMPLETED: &str = "Completed";
    pub const FAILED: &str = "Failed";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_round_trip_through_their_crd_strings() {
        for p in SandboxPhase::ALL {
            assert_eq!(SandboxPhase::parse(p.as_str()), Some(p));
            assert_eq!(p.to_string(), p.as_str());
        }
        assert_eq!(SandboxPhase::parse(""), None);
        assert_eq!(SandboxPhase::parse("running"), None);
        let terminal: Vec<_> = SandboxPhase::ALL
            .into_iter()
            .filter(|p| p.is_terminal())
            .collect();
        assert_eq!(terminal, [SandboxPhase::Succeeded, SandboxPhase::Failed]);
    }
}
