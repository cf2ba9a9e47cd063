//! The simulator's kube-proxy (userspace mode): a Service named by a simulated container gets a
//! loopback address of the pod range, a listener on each of its ports there, and every
//! connection is forwarded to a ready pod the Service selects (target port by number or by the
//! container port's name), picked afresh per connection in turn.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams};
use tokio::net::{TcpListener, TcpStream};

use super::ippool::{self, IpRange};

pub(crate) struct ServiceProxies {
    client: kube::Client,
    range: IpRange,
    known: tokio::sync::Mutex<HashMap<(String, String), Ipv4Addr>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl ServiceProxies {
    pub(crate) fn new(client: kube::Client, range: IpRange) -> Self {
        ServiceProxies {
            client,
            range,
            known: Default::default(),
            tasks: Default::default(),
        }
    }

    /// The proxy address of Service `ns/name`, started on first use; None if it does not exist.
    pub(crate) async fn address(&self, ns: &str, name: &str) -> Result<Option<Ipv4Addr>, String> {
        let key = (ns.to_string(), name.to_string());
        let mut known = self.known.lock().await;
        if let Some(ip) = known.get(&key) {
            return Ok(Some(*ip));
        }
        let api: Api<Service> = Api::namespaced(self.client.clone(), ns);
        let Some(svc) = api.get_opt(name).await.map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let spec = svc.spec.unwrap_or_default();
        let ports = spec.ports.unwrap_or_default();
        let first = ports.first().map(|p| p.port as u16).unwrap_or(1);
        let ip = ippool::allocate(self.range, first)
            .ok_or_else(|| format!("no free address in {} for service {ns}/{name}", self.range))?;
        let selector = spec
            .selector
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        for port in ports {
            let listener = TcpListener::bind((ip, port.port as u16))
                .await
                .map_err(|e| format!("service {ns}/{name}: bind {ip}:{}: {e}", port.port))?;
            let target = Target {
                client: self.client.clone(),
                namespace: ns.to_string(),
                selector: selector.clone(),
                port,
                turn: AtomicUsize::new(0),
            };
            let task = tokio::spawn(serve(listener, target));
            self.tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(task);
        }
        tracing::debug!(%ns, %name, %ip, "service proxy started");
        known.insert(key, ip);
        Ok(Some(ip))
    }
}

impl Drop for ServiceProxies {
    fn drop(&mut self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
        let known = self.known.get_mut();
        for ip in known.values() {
            ippool::release(self.range, *ip);
        }
    }
}

struct Target {
    client: kube::Client,
    namespace: String,
    selector: String,
    port: ServicePort,
    turn: AtomicUsize,
}

impl Target {
    /// A ready endpoint for the next connection.
    async fn endpoint(&self) -> Option<SocketAddr> {
        if self.selector.is_empty() {
            return None;
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let pods = api
            .list(&ListParams::default().labels(&self.selector))
            .await
            .ok()?;
        let ready: Vec<SocketAddr> = pods
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
            .filter_map(|p| {
                let ip: Ipv4Addr = p.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
                Some(SocketAddr::from((ip, target_port(p, &self.port)?)))
            })
            .collect();
        if ready.is_empty() {
            return None;
        }
        let n = self.turn.fetch_add(1, Ordering::Relaxed);
        Some(ready[n % ready.len()])
    }
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn target_port(p: &Pod, port: &ServicePort) -> Option<u16> {
    match &port.target_port {
        None => u16::try_from(port.port).ok(),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
        Some(IntOrString::String(name)) => p
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|cp| cp.name.as_deref() == Some(name.as_str()))
            .and_then(|cp| u16::try_from(cp.container_port).ok()),
    }
}

async fn serve(listener: TcpListener, target: Target) {
    let target = std::sync::Arc::new(target);
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            continue;
        };
        let target = target.clone();
        tokio::spawn(async move {
            // No ready endpoint: the connection is closed, as kube-proxy rejects it.
            let Some(addr) = target.endpoint().await else {
                return;
            };
            if let Ok(mut upstream) = TcpStream::connect(addr).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
        });
    }
}
