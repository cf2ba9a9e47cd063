//! Waiting for objects to reach a state, with a timeout and a clear error (tests never sleep
//! for a fixed time).

use std::fmt::Debug;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Resource;
use kube::api::{Api, ListParams};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Polls `api.get_opt(name)` every 50 ms until `cond` holds for the object (or for its absence:
/// `cond(None)`), returning the last object seen.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    mut cond: impl FnMut(Option<&K>) -> bool,
) -> Result<Option<K>>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let deadline = Instant::now() + timeout;
    loop {
        let obj = api.get_opt(name).await?;
        if cond(obj.as_ref()) {
            return Ok(obj);
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("{name}: condition not met; last seen: {obj:?}"),
                after: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls a list until `cond` holds for its items.
pub async fn wait_for_list<K>(
    api: &Api<K>,
    lp: &ListParams,
    timeout: Duration,
    mut cond: impl FnMut(&[K]) -> bool,
) -> Result<Vec<K>>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let deadline = Instant::now() + timeout;
    loop {
        let items = api.list(lp).await?.items;
        if cond(&items) {
            return Ok(items);
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("list condition not met; {} items", items.len()),
                after: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the pod's Ready condition is True.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The pod's IP, if it has one.
pub fn pod_ip(pod: &Pod) -> Option<std::net::Ipv4Addr> {
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

/// Waits until pod `name` is Ready and returns it.
pub async fn pod_is_ready(api: &Api<Pod>, name: &str, timeout: Duration) -> Result<Pod> {
    let pod = wait_for(api, name, timeout, |p| p.is_some_and(pod_ready)).await?;
    Ok(pod.expect("ready pod exists"))
}
