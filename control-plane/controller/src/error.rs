//! The controller's one error type; `metric_label` classifies errors for
//! `sandbox_controller_reconcile_errors_total`.

use crate::injection::InjectionError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("runtime injection: {0}")]
    Injection(#[from] InjectionError),
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error("SandboxTemplate {0} not found")]
    TemplateNotFound(String),
    #[error("agent-runtime init failed: {0}")]
    RuntimeInit(String),
    #[error("{0} operations failed; first error: {1}")]
    Batch(usize, String),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(_) => "kube",
            Error::Injection(_) => "injection",
            Error::InvalidSpec(_) => "invalid_spec",
            Error::TemplateNotFound(_) => "template_not_found",
            Error::RuntimeInit(_) => "runtime_init",
            Error::Batch(..) => "batch",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// True for an API error with this HTTP status (one definition, in sandbox-api).
pub use sandbox_api::claim::is_status;
