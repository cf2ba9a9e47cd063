//! A real Kubernetes control plane for tests, and a node simulator that runs pods as local
//! processes.
//!
//! ```no_run
//! # async fn demo() {
//! use kube_harness::{KubeCluster, NodeSimConfig, NodeSimulator};
//! let cluster = KubeCluster::shared().await; // or KubeCluster::start().await for a private one
//! let ns = cluster.create_namespace("my-test").await;
//! cluster.apply_yaml_file("charts/crds.yaml").await.unwrap();
//! let sim = NodeSimulator::start(cluster, NodeSimConfig::default().in_namespace(&ns)).await;
//! let client = cluster.client();
//! # drop((sim, client));
//! # }
//! ```
//!
//! Binaries come from the environment (`KUBE_APISERVER_BIN`, `ETCD_BIN`,
//! `KUBE_CONTROLLER_MANAGER_BIN`, `KUBECTL_BIN`, `HELM_BIN`, `AGENT_RUNTIME_BIN`), exported by
//! `mk/kube.mk`; see docs/testing-kubernetes.md.

pub mod apply;
pub mod bins;
mod cluster;
mod error;
pub mod nodesim;
pub mod pki;
pub mod process;
pub mod wait;

pub use apply::ApplyOptions;
pub use cluster::{ADMIN_USER, ClusterConfig, DEFAULT_CONTROLLERS, KubeCluster, SERVICE_CIDR};
pub use error::{Error, Result};
pub use nodesim::{
    AGENT_RUNTIME_PORT, COMMAND_ANNOTATION, ImageRule, IpRange, NodeSimConfig, NodeSimulator,
    SimPod,
};
