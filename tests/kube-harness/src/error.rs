//! The one error type of the harness.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A binary the Makefile should have exported is missing.
    #[error(
        "{var} is not set or points nowhere ({value:?}); run the tests through `make test` or `make kube-bins` (see docs/testing-kubernetes.md)"
    )]
    MissingBinary {
        var: &'static str,
        value: Option<PathBuf>,
    },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("generating test certificates: {0}")]
    Pki(#[from] rcgen::Error),

    /// A component exited or did not become ready; `log` is the end of its output.
    #[error("{component} {detail} (after {elapsed:?}); last log lines:\n{log}")]
    NotReady {
        component: String,
        detail: String,
        elapsed: Duration,
        log: String,
    },

    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),

    /// A manifest document that cannot be applied.
    #[error("manifest document {index}: {message}")]
    Manifest { index: usize, message: String },

    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },

    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
