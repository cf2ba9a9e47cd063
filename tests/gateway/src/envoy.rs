//! Starts the real Envoy 1.40 with `libsandbox_gateway.so`, from the repository's
//! `envoy/gateway.yaml` with only ports, listen addresses and the filter config changed.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use test_support::{ChildGuard, artifact_from_env, envoy_bin, free_port, repo_root};

use crate::client::request;

/// The module built by the Makefile (`SANDBOX_GATEWAY_MODULE`).
pub fn module_path() -> PathBuf {
    artifact_from_env("SANDBOX_GATEWAY_MODULE")
}

/// The shipped bootstrap.
pub fn shipped_bootstrap() -> PathBuf {
    repo_root().join("envoy/gateway.yaml")
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

fn key(k: &str) -> Yaml {
    Yaml::String(k.to_string())
}

fn get_mut<'a>(v: &'a mut Yaml, path: &[&str]) -> &'a mut Yaml {
    let mut cur = v;
    for p in path {
        cur = cur
            .get_mut(key(p))
            .unwrap_or_else(|| panic!("gateway.yaml has no {p:?} in {path:?}"));
    }
    cur
}

fn listener<'a>(root: &'a mut Yaml, name: &str) -> &'a mut Yaml {
    get_mut(root, &["static_resources", "listeners"])
        .as_sequence_mut()
        .expect("listeners")
        .iter_mut()
        .find(|l| l.get("name").and_then(Yaml::as_str) == Some(name))
        .unwrap_or_else(|| panic!("gateway.yaml has no listener {name}"))
}

fn set_address(addr: &mut Yaml, ip: &str, port: u16) {
    let sa = get_mut(addr, &["socket_address"]);
    sa[key("address")] = Yaml::String(ip.to_string());
    sa[key("port_value")] = Yaml::Number(port.into());
}

fn hcm(listener: &mut Yaml) -> &mut Yaml {
    &mut listener[key("filter_chains")][0][key("filters")][0][key("typed_config")]
}

/// The filter config of the shipped bootstrap, as JSON.
pub fn shipped_filter_config() -> Json {
    let text = std::fs::read_to_string(shipped_bootstrap()).expect("read envoy/gateway.yaml");
    let mut root: Yaml = serde_yaml::from_str(&text).expect("envoy/gateway.yaml is YAML");
    let gw = listener(&mut root, "sandbox_gateway");
    let value = hcm(gw)[key("http_filters")][0][key("typed_config")][key("filter_config")]
        [key("value")]
    .clone();
    serde_json::to_value(value).expect("filter config as JSON")
}

/// Configures and starts one gateway.
#[derive(Debug, Clone)]
pub struct GatewayBuilder {
    filter_config: Json,
    api_upstream: Option<SocketAddr>,
    concurrency: u32,
    request_head_timeout: Option<String>,
}

impl Default for GatewayBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayBuilder {
    /// The shipped filter config (no route source: the table stays unsynced).
    pub fn new() -> Self {
        GatewayBuilder {
            filter_config: serde_json::json!({"sandbox_cluster": "sandboxes"}),
            api_upstream: None,
            concurrency: 2,
            request_head_timeout: None,
        }
    }

    /// The shipped filter config as it is (its `denied_upstream_ips` included); most tests use
    /// [`GatewayBuilder::new`] because their upstreams listen on the denied 127.0.0.1.
    pub fn shipped() -> Self {
        GatewayBuilder {
            filter_config: shipped_filter_config(),
            ..Self::new()
        }
    }

    /// Overrides the shipped 10 s for the first bytes of a connection and for a request head
    /// (Envoy duration syntax, e.g. "1s"), on both listeners.
    pub fn request_head_timeout(mut self, timeout: &str) -> Self {
        self.request_head_timeout = Some(timeout.to_string());
        self
    }

    /// Sets one filter config field.
    pub fn set(mut self, field: &str, value: Json) -> Self {
        self.filter_config[field] = value;
        self
    }

    /// Static routes in the filter config (the table is then synced).
    pub fn routes(self, routes: Vec<Json>) -> Self {
        self.set("routes", Json::Array(routes))
    }

    /// Adds a `/kruise/api` route to a plain cluster, standing in for the manager API.
    pub fn api_upstream(mut self, addr: SocketAddr) -> Self {
        self.api_upstream = Some(addr);
        self
    }

    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n;
        self
    }

    /// The bootstrap for the given listener/admin/metrics ports.
    pub fn render(&self, listen: u16, admin: u16, metrics: u16) -> Yaml {
        let text = std::fs::read_to_string(shipped_bootstrap()).expect("read envoy/gateway.yaml");
        let mut root: Yaml = serde_yaml::from_str(&text).expect("envoy/gateway.yaml is YAML");
        set_address(
            get_mut(&mut root, &["admin", "address"]),
            "127.0.0.1",
            admin,
        );
        let gw = listener(&mut root, "sandbox_gateway");
        set_address(&mut gw[key("address")], "127.0.0.1", listen);
        let filter =
            &mut hcm(gw)[key("http_filters")][0][key("typed_config")][key("filter_config")];
        filter[key("value")] =
            serde_yaml::to_value(&self.filter_config).expect("filter config to yaml");
        if let Some(api) = self.api_upstream {
            let routes = hcm(gw)[key("route_config")][key("virtual_hosts")][0][key("routes")]
                .as_sequence_mut()
                .expect("routes");
            let api_route: Yaml = serde_yaml::from_str(
                "{name: api, match: {prefix: /kruise/api}, route: {cluster: manager, timeout: 600s}}",
            )
            .expect("api route");
            routes.insert(0, api_route);
            let cluster: Yaml = serde_yaml::from_str(&format!(
                "{{name: manager, type: STATIC, connect_timeout: 1s, load_assignment: {{cluster_name: manager, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: '{}', port_value: {}}}}}}}}}]}}]}}}}",
                api.ip(),
                api.port()
            ))
            .expect("manager cluster");
            get_mut(&mut root, &["static_resources", "clusters"])
                .as_sequence_mut()
                .expect("clusters")
                .push(cluster);
        }
        if let Some(t) = &self.request_head_timeout {
            for name in ["sandbox_gateway", "metrics"] {
                let l = listener(&mut root, name);
                l[key("listener_filters_timeout")] = Yaml::String(t.clone());
                hcm(l)[key("request_headers_timeout")] = Yaml::String(t.clone());
            }
        }
        let m = listener(&mut root, "metrics");
        set_address(&mut m[key("address")], "127.0.0.1", metrics);
        let clusters = get_mut(&mut root, &["static_resources", "clusters"])
            .as_sequence_mut()
            .expect("clusters");
        let admin_cluster = clusters
            .iter_mut()
            .find(|c| c.get("name").and_then(Yaml::as_str) == Some("admin"))
            .expect("admin cluster");
        let ep = &mut admin_cluster[key("load_assignment")][key("endpoints")][0]
            [key("lb_endpoints")][0][key("endpoint")][key("address")];
        set_address(ep, "127.0.0.1", admin);
        root
    }

    /// Starts Envoy and waits until it reports LIVE.
    pub fn start(&self) -> Gateway {
        let (listen, admin, metrics) = (free_port(), free_port(), free_port());
        let yaml = self.render(listen, admin, metrics);
        let mut cmd = envoy_command();
        let dir = tempfile_dir();
        let config_path = dir.join("gateway.yaml");
        std::fs::write(&config_path, serde_yaml::to_string(&yaml).expect("yaml"))
            .expect("write config");
        cmd.arg("-c")
            .arg(&config_path)
            .args(["--disable-hot-restart", "--concurrency"])
            .arg(self.concurrency.to_string())
            .args(["-l", "info", "--drain-time-s", "1"]);
        let mut child = ChildGuard::spawn("envoy", cmd);
        let admin_addr = loopback(admin);
        child.wait_until(
            "admin /ready to answer LIVE",
            Duration::from_secs(30),
            || {
                std::net::TcpStream::connect_timeout(&admin_addr, Duration::from_millis(100))
                    .is_ok()
                    && request(admin_addr, "GET", "/ready", &[], None).status == 200
            },
        );
        Gateway {
            addr: loopback(listen),
            admin: admin_addr,
            metrics: loopback(metrics),
            child,
            _dir: dir,
        }
    }
}

/// A scratch directory that lives as long as the test process (config files Envoy reads).
fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gateway-tests-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// `envoy` with the module search path pointing at the built module.
pub fn envoy_command() -> Command {
    let module = module_path();
    let mut cmd = Command::new(envoy_bin());
    cmd.env(
        "ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
        module.parent().expect("module dir"),
    );
    cmd
}

/// Runs `envoy --mode validate` on a config file; returns (success, combined output).
pub fn validate(config: &Path) -> (bool, String) {
    let out = envoy_command()
        .arg("--mode")
        .arg("validate")
        .arg("-c")
        .arg(config)
        .arg("--disable-hot-restart")
        .output()
        .expect("run envoy --mode validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    /// The sandbox traffic listener.
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub child: ChildGuard,
    _dir: PathBuf,
}

impl Gateway {
    /// Envoy's `/stats` text.
    pub fn stats(&self) -> String {
        request(self.admin, "GET", "/stats", &[], None).text()
    }

    /// A counter or gauge from `/stats`, by its full name.
    pub fn stat(&self, name: &str) -> Option<u64> {
        self.stats().lines().find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
    }

    /// The module's request counter for one outcome.
    pub fn outcome(&self, outcome: &str) -> u64 {
        self.stat(&format!("sandbox.gateway_requests.outcome.{outcome}"))
            .unwrap_or(0)
    }

    /// Envoy's own memory accounting (`/memory` `allocated`), in bytes.
    pub fn allocated_bytes(&self) -> u64 {
        let v = request(self.admin, "GET", "/memory", &[], None).json();
        v["allocated"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| v["allocated"].as_u64())
            .expect("allocated")
    }

    pub fn log(&self) -> String {
        self.child.log()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

/// A gateway fed by sandbox-xds: `envoy/gateway-ads.yaml` with the admin port, the node id and
/// the address of the `sandbox_xds` cluster rewritten. Its listeners come over ADS; their
/// addresses (port 0 allowed, so several gateways share one LDS) are read back from the admin.
#[derive(Debug, Clone)]
pub struct AdsGatewayBuilder {
    xds: SocketAddr,
    node_id: String,
    sotw: bool,
    concurrency: u32,
}

impl AdsGatewayBuilder {
    pub fn new(xds: SocketAddr, node_id: &str) -> Self {
        AdsGatewayBuilder {
            xds,
            node_id: node_id.to_string(),
            sotw: false,
            concurrency: 2,
        }
    }

    /// Use state-of-the-world ADS for Envoy's listeners and clusters instead of delta.
    pub fn sotw(mut self) -> Self {
        self.sotw = true;
        self
    }

    pub fn render(&self, admin: u16) -> Yaml {
        let text = std::fs::read_to_string(repo_root().join("envoy/gateway-ads.yaml"))
            .expect("read envoy/gateway-ads.yaml");
        let mut root: Yaml = serde_yaml::from_str(&text).expect("gateway-ads.yaml is YAML");
        set_address(
            get_mut(&mut root, &["admin", "address"]),
            "127.0.0.1",
            admin,
        );
        get_mut(&mut root, &["node"])[key("id")] = Yaml::String(self.node_id.clone());
        if self.sotw {
            get_mut(&mut root, &["dynamic_resources", "ads_config"])[key("api_type")] =
                Yaml::String("GRPC".into());
        }
        let cluster = &mut get_mut(&mut root, &["static_resources", "clusters"])[0];
        let ep = &mut cluster[key("load_assignment")][key("endpoints")][0][key("lb_endpoints")][0]
            [key("endpoint")][key("address")];
        set_address(ep, &self.xds.ip().to_string(), self.xds.port());
        root
    }

    /// Starts Envoy and waits until its listeners arrived and it is LIVE.
    pub fn start(&self) -> Gateway {
        let admin = free_port();
        let dir = tempfile_dir();
        let config_path = dir.join("gateway-ads.yaml");
        std::fs::write(
            &config_path,
            serde_yaml::to_string(&self.render(admin)).expect("yaml"),
        )
        .expect("write config");
        let mut cmd = envoy_command();
        cmd.arg("-c")
            .arg(&config_path)
            .args(["--disable-hot-restart", "--concurrency"])
            .arg(self.concurrency.to_string())
            .args(["-l", "info", "--drain-time-s", "1"]);
        let mut child = ChildGuard::spawn(&format!("envoy-{}", self.node_id), cmd);
        let admin_addr = loopback(admin);
        let mut found = None;
        child.wait_until(
            "LIVE with the sandbox listener from sandbox-xds",
            Duration::from_secs(30),
            || {
                if std::net::TcpStream::connect_timeout(&admin_addr, Duration::from_millis(100))
                    .is_err()
                    || request(admin_addr, "GET", "/ready", &[], None).status != 200
                {
                    return false;
                }
                found = listener_addresses(admin_addr);
                found
                    .as_ref()
                    .is_some_and(|m| m.contains_key("sandbox_gateway"))
            },
        );
        let listeners = found.unwrap_or_default();
        let addr = listeners["sandbox_gateway"];
        let metrics = listeners.get("metrics").copied().unwrap_or(admin_addr);
        Gateway {
            addr,
            admin: admin_addr,
            metrics,
            child,
            _dir: dir,
        }
    }
}

/// Listener name → bound address, from the admin's `/listeners?format=json`.
pub fn listener_addresses(
    admin: SocketAddr,
) -> Option<std::collections::HashMap<String, SocketAddr>> {
    let r = request(admin, "GET", "/listeners?format=json", &[], None);
    if r.status != 200 {
        return None;
    }
    let v: Json = serde_json::from_slice(&r.body).ok()?;
    let mut out = std::collections::HashMap::new();
    for l in v["listener_statuses"].as_array()? {
        let sa = &l["local_address"]["socket_address"];
        let ip: std::net::IpAddr = sa["address"].as_str()?.parse().ok()?;
        let port = sa["port_value"].as_u64()? as u16;
        out.insert(l["name"].as_str()?.to_string(), SocketAddr::new(ip, port));
    }
    Some(out)
}
