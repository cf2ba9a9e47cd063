//! Where the real binaries are: `make kube-bins` builds them into the cache and exports these
//! variables (see mk/kube.mk and docs/testing-kubernetes.md).

use std::path::PathBuf;

use crate::error::{Error, Result};

pub const KUBE_APISERVER_BIN: &str = "KUBE_APISERVER_BIN";
pub const ETCD_BIN: &str = "ETCD_BIN";
pub const KUBECTL_BIN: &str = "KUBECTL_BIN";
pub const HELM_BIN: &str = "HELM_BIN";
pub const KUBE_CONTROLLER_MANAGER_BIN: &str = "KUBE_CONTROLLER_MANAGER_BIN";
/// The agent-runtime binary the node simulator runs for each pod by default.
pub const AGENT_RUNTIME_BIN: &str = "AGENT_RUNTIME_BIN";

/// The `sim-pod` server (built from this crate).
pub const SIM_POD_BIN: &str = "SIM_POD_BIN";
/// The `node-sim` binary (built from this crate).
pub const NODE_SIM_BIN: &str = "NODE_SIM_BIN";

/// The path in environment variable `var`, which must name an existing file.
pub fn from_env(var: &'static str) -> Result<PathBuf> {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => {
            let p = PathBuf::from(v);
            if p.is_file() {
                Ok(p)
            } else {
                Err(Error::MissingBinary {
                    var,
                    value: Some(p),
                })
            }
        }
        _ => Err(Error::MissingBinary { var, value: None }),
    }
}

/// The real kube-apiserver (v1.35).
pub fn kube_apiserver() -> Result<PathBuf> {
    from_env(KUBE_APISERVER_BIN)
}

/// The real etcd.
pub fn etcd() -> Result<PathBuf> {
    from_env(ETCD_BIN)
}

/// kubectl built by the project (not whatever is on PATH).
pub fn kubectl() -> Result<PathBuf> {
    from_env(KUBECTL_BIN)
}

/// helm built by the project.
pub fn helm() -> Result<PathBuf> {
    from_env(HELM_BIN)
}

/// The real kube-controller-manager (garbage collector, namespace controller).
pub fn kube_controller_manager() -> Result<PathBuf> {
    from_env(KUBE_CONTROLLER_MANAGER_BIN)
}
