//! Label, annotation and finalizer keys shared by the controller, the manager and the gateway.
//! The strings are part of the public contract with manifests written for OpenKruise Agents, so
//! they must match upstream byte for byte.

// ---- labels ----
/// Origin SandboxSet of a sandbox.
pub const LABEL_SANDBOX_POOL: &str = "agents.kruise.io/sandbox-pool";
/// templateRef name, else the SandboxSet name.
pub const LABEL_SANDBOX_TEMPLATE: &str = "agents.kruise.io/sandbox-template";
/// `"true"` once a sandbox was handed to a claimer, `"false"` while it sits in a pool.
pub const LABEL_SANDBOX_CLAIMED: &str = "agents.kruise.io/sandbox-claimed";
pub const LABEL_CLAIM_NAME: &str = "agents.kruise.io/claim-name";
/// Revision of the SandboxSet template the sandbox was created from.
pub const LABEL_TEMPLATE_HASH: &str = "agents.kruise.io/template-hash";
pub const LABEL_RESERVED_FAILED_SANDBOX: &str = "agents.kruise.io/reserved-failed-sandbox";
pub const LABEL_SANDBOX_NAME: &str = "agents.kruise.io/sandbox-name";
pub const LABEL_ALLOW_INTERNET_ACCESS: &str = "agents.kruise.io/allow-internet-access";
pub const LABEL_SANDBOX_ID: &str = "agents.kruise.io/sandbox-id";
pub const LABEL_UPDATE_OPS: &str = "agents.kruise.io/update-ops";
pub const LABEL_UPGRADE_FAILED: &str = "agents.kruise.io/upgrade-failed";
/// Pod label carrying the sandbox revision the pod was built from.
pub const LABEL_POD_TEMPLATE_HASH: &str = "pod-template-hash";
pub const LABEL_CHECKPOINT_TYPE: &str = "agents.kruise.io/checkpoint-type";
pub const LABEL_CHECKPOINT_ID: &str = "agents.kruise.io/checkpoint-id";
/// Pod label (and annotation) `created-by=sandbox` on every pod the controller creates.
pub const LABEL_CREATED_BY: &str = "agents.kruise.io/created-by";
pub const CREATED_BY_SANDBOX: &str = "sandbox";

// ---- annotations ----
pub const ANNOTATION_LOCK: &str = "agents.kruise.io/lock";
/// Claimer identity; also copied into the pod template as a label with the same key.
pub const ANNOTATION_OWNER: &str = "agents.kruise.io/owner";
pub const ANNOTATION_CLAIM_TIMESTAMP: &str = "agents.kruise.io/claim-timestamp";
pub const ANNOTATION_RESTORE_FROM: &str = "agents.kruise.io/restore-from";
pub const ANNOTATION_INIT_RUNTIME_REQUEST: &str = "agents.kruise.io/init-runtime-request";
pub const ANNOTATION_SANDBOX_ID: &str = "agents.kruise.io/sandbox-id";
pub const ANNOTATION_MEMBERLIST_URL: &str = "agents.kruise.io/memberlist-url";
pub const ANNOTATION_CLEANUP_ENABLED: &str = "agents.kruise.io/cleanup-enabled";
pub const ANNOTATION_CLEANUP: &str = "agents.kruise.io/cleanup";
pub const ANNOTATION_CLEANUP_RETAIN_ON_FAILURE: &str = "agents.kruise.io/cleanup-retain-on-failure";
pub const ANNOTATION_UPDATED_METADATA_IN_CLAIM: &str = "agents.kruise.io/updated-metadata-in-claim";
pub const ANNOTATION_RUNTIME_URL: &str = "agents.kruise.io/runtime-url";
pub const ANNOTATION_RUNTIME_ACCESS_TOKEN: &str = "agents.kruise.io/runtime-access-token";
pub const ANNOTATION_RUNTIME_TLS_PORT: &str = "agents.kruise.io/runtime-tls-port";
pub const ANNOTATION_RESERVE_PAUSED_SANDBOX_DURATION: &str =
    "agents.kruise.io/reserve-paused-sandbox-duration";
pub const ANNOTATION_CLEANUP_CANDIDATE: &str = "agents.kruise.io/cleanup-candidate";
pub const ANNOTATION_SANDBOX_PRIORITY: &str = "agents.kruise.io/sandbox-priority";
pub const ANNOTATION_UPGRADE_RESUME_TRIGGER: &str = "agents.kruise.io/upgrade-resume-trigger";
pub const ANNOTATION_CREATED_BY: &str = "agents.kruise.io/created-by";
pub const ANNOTATION_INPLACE_UPDATE_STATE: &str = "agents.kruise.io/inplace-update-state";
pub const ANNOTATION_HASH_IMMUTABLE_PART: &str = "sandbox.agents.kruise.io/hash-immutable-part";
pub const ANNOTATION_HASH_WITHOUT_IMAGE_RESOURCES: &str =
    "sandbox.agents.kruise.io/hash-without-image-resources";
pub const ANNOTATION_ENVD_ACCESS_TOKEN: &str = "e2b.agents.kruise.io/envd-access-token";
pub const ANNOTATION_ENVD_URL: &str = "e2b.agents.kruise.io/envd-url";
pub const ANNOTATION_CSI_VOLUME_CONFIG: &str = "e2b.agents.kruise.io/csi-volume-config";
pub const ANNOTATION_SECURITY_TOKEN_STATUS: &str = "security.agents.kruise.io/token-status";
pub const ANNOTATION_SECURITY_AGENT_NAME: &str = "security.agents.kruise.io/agent-name";
pub const ANNOTATION_SECURITY_ENABLE_JWT_AUTH: &str = "security.agents.kruise.io/enable-jwt-auth";

/// Owner value used by the SandboxSet controller when it locks a sandbox before deleting it.
pub const OWNER_SCALE_DOWN: &str = "__manager_scale_down";

/// Annotations dropped when a sandbox returns to its pool (recycle).
pub const ANNOTATIONS_CLEARED_ON_RECYCLE: &[&str] = &[
    ANNOTATION_CLAIM_TIMESTAMP,
    ANNOTATION_LOCK,
    ANNOTATION_OWNER,
    ANNOTATION_INIT_RUNTIME_REQUEST,
    ANNOTATION_RUNTIME_ACCESS_TOKEN,
    ANNOTATION_CLEANUP,
    ANNOTATION_CLEANUP_RETAIN_ON_FAILURE,
    ANNOTATION_CSI_VOLUME_CONFIG,
    ANNOTATION_SANDBOX_PRIORITY,
    ANNOTATION_ENVD_ACCESS_TOKEN,
    ANNOTATION_ENVD_URL,
    ANNOTATION_RUNTIME_URL,
];

/// `agents.kruise.io/*` keys that survive the key stripping done when a SandboxSet stamps out a
/// new sandbox from its pod template metadata.
pub const INTERNAL_KEYS_PRESERVED_ON_CREATION: &[&str] = &[
    ANNOTATION_CLEANUP_ENABLED,
    ANNOTATION_CLEANUP_RETAIN_ON_FAILURE,
];

/// Prefix reserved for the E2B integration; SandboxSet templates may not carry keys with it.
pub const E2B_PREFIX: &str = "e2b.agents.kruise.io/";
pub const AGENTS_PREFIX: &str = "agents.kruise.io/";

// ---- finalizers ----
/// Added when a Sandbox first enters Paused; removed once its pod is gone on deletion or resume.
pub const FINALIZER_SANDBOX: &str = "agents.kruise.io/sandbox";
pub const FINALIZER_SANDBOX_UPDATE_OPS: &str = "agents.kruise.io/sandboxupdateops-protection";
pub const FINALIZER_CHECKPOINT: &str = "agents.kruise.io/checkpoint";
pub const FINALIZER_COMMIT: &str = "agents.kruise.io/commit";

// ---- well-known names ----
pub const RUNTIME_AGENT: &str = "agent-runtime";
pub const RUNTIME_CSI: &str = "csi";
pub const RUNTIME_TRAFFIC_PROXY: &str = "traffic-proxy";
/// Plain agent-runtime (envd) port.
pub const RUNTIME_PORT: u16 = 49983;
pub const RUNTIME_TLS_PORT: u16 = 49984;
pub const INJECTION_CONFIGMAP: &str = "sandbox-injection-config";
pub const DEFAULT_SYSTEM_NAMESPACE: &str = "sandbox-system";
