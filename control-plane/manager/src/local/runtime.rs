//! One local sandbox process: an `agent-runtime` on its own loopback address (never one the
//! platform listens on), with its own home directory under the data directory, its own process
//! group and cgroup, and its log in `runtime.log`. Also the HTTP calls the manager makes to it
//! (`/health`, `/init`, `/metrics`) and the address allocator.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use super::contain::{self, Containment, MARKER_VAR};
use crate::model::{BackendError, MetricSample, SandboxId};

/// The port envd (agent-runtime) listens on in every sandbox.
pub const ENVD_PORT: u16 = 49983;

/// Loopback addresses handed to sandboxes, one each.
#[derive(Debug)]
pub struct AddressPool {
    base: u32,
    size: u32,
    used: Mutex<BTreeSet<u32>>,
}

impl AddressPool {
    /// The addresses of `cidr` (e.g. `127.1.0.0/16`) except its first and last and except
    /// 127.0.0.1, which the platform listens on.
    pub fn parse(cidr: &str) -> Result<AddressPool, String> {
        let (ip, len) = cidr
            .split_once('/')
            .ok_or_else(|| format!("{cidr:?} is not a CIDR such as 127.1.0.0/16"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{cidr:?}: {e}"))?;
        let len: u32 = len
            .parse()
            .ok()
            .filter(|l| (8..=30).contains(l))
            .ok_or_else(|| format!("{cidr:?}: prefix length must be 8 to 30"))?;
        if !ip.is_loopback() {
            return Err(format!(
                "{cidr:?} is not a loopback range: local sandboxes listen on 127.0.0.0/8 only"
            ));
        }
        let mask = u32::MAX << (32 - len);
        Ok(AddressPool {
            base: u32::from(ip) & mask,
            size: 1 << (32 - len),
            used: Mutex::new(BTreeSet::new()),
        })
    }

    /// A free address; `None` when the range is exhausted.
    pub fn take(&self) -> Option<Ipv4Addr> {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        (1..self.size - 1)
            .map(|i| self.base + i)
            .filter(|a| Ipv4Addr::from(*a) != Ipv4Addr::LOCALHOST)
            .find(|a| {
                !used.contains(a)
                    && std::net::TcpListener::bind((Ipv4Addr::from(*a), ENVD_PORT)).is_ok()
            })
            .inspect(|a| {
                used.insert(*a);
            })
            .map(Ipv4Addr::from)
    }

    /// Marks an address as in use (a sandbox restored from disk keeps its address).
    pub fn claim(&self, ip: Ipv4Addr) -> bool {
        let a = u32::from(ip);
        if a < self.base || a >= self.base + self.size {
            return false;
        }
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(a)
    }

    pub fn release(&self, ip: Ipv4Addr) {
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&u32::from(ip));
    }
}

/// How to start runtimes.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub runtime_bin: PathBuf,
    pub user: String,
    pub containment: Containment,
    /// Distinguishes this manager's sandboxes in marker variables.
    pub instance: String,
    pub startup_timeout: Duration,
}

/// What a sandbox process is started with.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    pub env: BTreeMap<String, String>,
    /// Default cwd; empty: the home.
    pub workdir: String,
    /// Run once in the home before the runtime starts.
    pub setup: Option<String>,
    /// Started beside the runtime once it is healthy.
    pub services: Vec<super::templates::Service>,
}

/// A running `agent-runtime` of one sandbox.
#[derive(Debug)]
pub struct RuntimeProcess {
    pub id: SandboxId,
    pub ip: Ipv4Addr,
    pub dir: PathBuf,
    pub pid: u32,
    pub cgroup: Option<PathBuf>,
    pub marker: String,
    child: tokio::process::Child,
    services: Vec<tokio::process::Child>,
}

/// What `runtime.json` records of a process, to find and kill it after a manager crash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessNote {
    pub pid: u32,
    pub ip: Ipv4Addr,
    pub cgroup: Option<PathBuf>,
    pub marker: String,
}

pub fn home_of(dir: &Path) -> PathBuf {
    dir.join("home")
}

impl Launcher {
    pub fn marker(&self, id: &SandboxId) -> String {
        format!("{}:{id}", self.instance)
    }

    /// Starts a runtime for sandbox `id` in `dir` (its home is `dir/home`, which must exist)
    /// on `ip`, and waits until it answers `/health`.
    pub async fn start(
        &self,
        id: &SandboxId,
        dir: &Path,
        ip: Ipv4Addr,
        opts: &StartOptions,
        http: &RuntimeHttp,
    ) -> Result<RuntimeProcess, String> {
        let home = home_of(dir);
        let marker = self.marker(id);
        if let Some(setup) = &opts.setup {
            self.run_setup(setup, &home, opts, &marker).await?;
        }
        let log = std::fs::File::create(dir.join("runtime.log"))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let workdir = if opts.workdir.is_empty() {
            home.clone()
        } else {
            PathBuf::from(&opts.workdir)
        };
        let mut cmd = tokio::process::Command::new(&self.runtime_bin);
        cmd.arg("--listen")
            .arg(SocketAddr::from((ip, ENVD_PORT)).to_string())
            .args(["--default-user", &self.user, "--log-format", "json"])
            .arg("--default-workdir")
            .arg(&workdir)
            .args(["--env", &format!("{MARKER_VAR}={marker}")]);
        for (k, v) in &opts.env {
            cmd.args(["--env", &format!("{k}={v}")]);
        }
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env(MARKER_VAR, &marker)
            .env("AGENT_RUNTIME_LOG", "info")
            .current_dir(&home)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .process_group(0)
            .kill_on_drop(true);
        crate::sys::kill_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.runtime_bin.display()))?;
        let pid = child.id().unwrap_or(0);
        let mut proc = RuntimeProcess {
            id: id.clone(),
            ip,
            dir: dir.to_path_buf(),
            pid,
            cgroup: None,
            marker,
            child,
            services: Vec::new(),
        };
        match self.containment.enter(id.as_str(), pid) {
            Ok(cg) => proc.cgroup = cg,
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "cannot move the runtime into its cgroup; using the process tree")
            }
        }
        let note = ProcessNote {
            pid,
            ip,
            cgroup: proc.cgroup.clone(),
            marker: proc.marker.clone(),
        };
        if let Err(e) = crate::store::write_json(&dir.join("runtime.json"), &note) {
            proc.kill().await;
            return Err(e.to_string());
        }
        let healthy = http
            .wait_healthy(
                ip,
                ENVD_PORT,
                "/health",
                self.startup_timeout,
                &mut proc.child,
            )
            .await
            .map_err(|e| {
                format!(
                    "{e}; runtime log: {}",
                    log_tail(&dir.join("runtime.log"), 5)
                )
            });
        if let Err(e) = healthy {
            proc.kill().await;
            return Err(e);
        }
        // The answer may come from another runtime on the same address (another manager on this
        // machine took it between our probe and our bind, and ours exited): only ours knows the
        // marker.
        if let Err(e) = http.verify_marker(ip, &proc.marker).await {
            proc.kill().await;
            return Err(e);
        }
        for svc in &opts.services {
            if let Err(e) = self
                .start_service(svc, &mut proc, &workdir, opts, http)
                .await
            {
                proc.kill().await;
                return Err(e);
            }
        }
        Ok(proc)
    }

    /// Starts one template service beside a healthy runtime and waits for its health path.
    async fn start_service(
        &self,
        svc: &super::templates::Service,
        proc: &mut RuntimeProcess,
        workdir: &Path,
        opts: &StartOptions,
        http: &RuntimeHttp,
    ) -> Result<(), String> {
        let home = home_of(&proc.dir);
        let fill = |a: &str| {
            a.replace("{ip}", &proc.ip.to_string())
                .replace("{port}", &svc.port.to_string())
                .replace("{home}", &home.display().to_string())
                .replace("{workdir}", &workdir.display().to_string())
        };
        let log_path = proc.dir.join(format!("{}.log", svc.name));
        let log =
            std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = tokio::process::Command::new(fill(&svc.command[0]));
        cmd.args(svc.command[1..].iter().map(|a| fill(a)))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env(MARKER_VAR, &proc.marker)
            .envs(&opts.env)
            .envs(&svc.env)
            .current_dir(workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .process_group(0)
            .kill_on_drop(true);
        crate::sys::kill_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start service {}: {e}", svc.name))?;
        if let Some(cg) = &proc.cgroup
            && let Some(pid) = child.id()
            && let Err(e) = std::fs::write(cg.join("cgroup.procs"), pid.to_string())
        {
            tracing::warn!(service = %svc.name, error = %e, "cannot move a service into the sandbox's cgroup");
        }
        let healthy = http
            .wait_healthy(
                proc.ip,
                svc.port,
                &svc.health_path,
                self.startup_timeout,
                &mut child,
            )
            .await;
        proc.services.push(child);
        healthy.map_err(|e| {
            format!(
                "service {}: {e}; its log: {}",
                svc.name,
                log_tail(&log_path, 5)
            )
        })
    }

    async fn run_setup(
        &self,
        setup: &str,
        home: &Path,
        opts: &StartOptions,
        marker: &str,
    ) -> Result<(), String> {
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.args(["-c", setup])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", home)
            .env(MARKER_VAR, marker)
            .envs(&opts.env)
            .current_dir(home)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        crate::sys::kill_with_parent(&mut cmd);
        let out = tokio::time::timeout(Duration::from_secs(600), cmd.output())
            .await
            .map_err(|_| "template setup did not finish within 600 s".to_string())?
            .map_err(|e| format!("cannot run the template setup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "template setup failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    }
}

impl RuntimeProcess {
    /// Kills every process of the sandbox and reaps the runtime.
    pub async fn kill(&mut self) {
        contain::kill(self.cgroup.as_deref(), self.pid, &self.marker).await;
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        for s in &mut self.services {
            let _ = s.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.wait()).await;
        }
    }

    pub async fn freeze(&self) -> std::io::Result<()> {
        contain::freeze(self.cgroup.as_deref(), self.pid, &self.marker).await
    }

    pub async fn thaw(&self) -> std::io::Result<()> {
        contain::thaw(self.cgroup.as_deref(), self.pid, &self.marker).await
    }

    /// Whether the runtime process still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Kills what a note describes (a sandbox left behind by a previous run of the manager).
pub async fn kill_leftover(note: &ProcessNote) {
    contain::kill(note.cgroup.as_deref(), 0, &note.marker).await;
    // The pid itself, if it is still that sandbox's runtime.
    let environ = std::fs::read(format!("/proc/{}/environ", note.pid)).unwrap_or_default();
    let want = format!("{MARKER_VAR}={}", note.marker);
    if environ.split(|b| *b == 0).any(|kv| kv == want.as_bytes()) {
        let _ = crate::sys::kill(note.pid as i32, libc::SIGKILL);
    }
}

/// The last `n` lines of a log file, joined, for error messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// The HTTP client the manager talks to runtimes with.
#[derive(Debug, Clone)]
pub struct RuntimeHttp {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for RuntimeHttp {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        RuntimeHttp {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
        }
    }
}

/// The body of `POST /init`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InitRequest<'a> {
    pub env_vars: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token: Option<&'a str>,
    pub timestamp: String,
}

impl RuntimeHttp {
    async fn call(
        &self,
        method: http::Method,
        url: String,
        body: Bytes,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<(http::StatusCode, Bytes), String> {
        let mut b = http::Request::builder().method(method).uri(&url);
        if !body.is_empty() {
            b = b.header(http::header::CONTENT_TYPE, "application/json");
        }
        if let Some(t) = token {
            b = b.header("x-access-token", t);
        }
        let req = b.body(Full::new(body)).map_err(|e| e.to_string())?;
        let fut = async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| format!("{url}: no answer within {timeout:?}"))?
            .map_err(|e| format!("{url}: {e}"))
    }

    fn url(ip: Ipv4Addr, path: &str) -> String {
        format!("http://{ip}:{ENVD_PORT}{path}")
    }

    /// Polls `http://ip:port{path}` until it answers 2xx, the child exits, or `timeout` passes.
    pub async fn wait_healthy(
        &self,
        ip: Ipv4Addr,
        port: u16,
        path: &str,
        timeout: Duration,
        child: &mut tokio::process::Child,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut delay = Duration::from_millis(2);
        let url = format!("http://{ip}:{port}{path}");
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("the process exited at start ({status})"));
            }
            let r = self
                .call(
                    http::Method::GET,
                    url.clone(),
                    Bytes::new(),
                    None,
                    Duration::from_millis(500),
                )
                .await;
            if matches!(r, Ok((s, _)) if s.is_success()) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("{url} not healthy within {timeout:?}"));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    }

    /// Whether the runtime answering on `ip` is the one started with `marker` (its default env
    /// vars carry it; `GET /envs` needs no token before `/init`).
    pub async fn verify_marker(&self, ip: Ipv4Addr, marker: &str) -> Result<(), String> {
        let (status, body) = self
            .call(
                http::Method::GET,
                Self::url(ip, "/envs"),
                Bytes::new(),
                None,
                Duration::from_secs(2),
            )
            .await?;
        let envs: BTreeMap<String, String> = serde_json::from_slice(&body).unwrap_or_default();
        if status.is_success() && envs.get(MARKER_VAR).map(String::as_str) == Some(marker) {
            Ok(())
        } else {
            Err(format!(
                "another runtime answers on {ip}:{ENVD_PORT} (this one did not get the address)"
            ))
        }
    }

    /// `POST /init` with the sandbox's env vars and access token (the runtime accepts a repeat).
    pub async fn init(
        &self,
        ip: Ipv4Addr,
        env_vars: &BTreeMap<String, String>,
        token: Option<&str>,
    ) -> Result<(), BackendError> {
        let body = InitRequest {
            env_vars,
            access_token: token,
            timestamp: jiff::Timestamp::now().to_string(),
        };
        let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let (status, text) = self
            .call(
                http::Method::POST,
                Self::url(ip, "/init"),
                body,
                token,
                Duration::from_secs(5),
            )
            .await
            .map_err(BackendError::Internal)?;
        if status.is_success() {
            Ok(())
        } else {
            Err(BackendError::Internal(format!(
                "runtime /init answered {status}: {}",
                String::from_utf8_lossy(&text)
            )))
        }
    }

    /// One metrics sample from the runtime (envd's `/metrics` JSON).
    pub async fn metrics(
        &self,
        ip: Ipv4Addr,
        token: Option<&str>,
    ) -> Result<MetricSample, BackendError> {
        #[derive(Deserialize)]
        struct EnvdMetrics {
            cpu_count: u32,
            cpu_used_pct: f64,
            mem_total: u64,
            mem_used: u64,
            #[serde(default)]
            mem_cache: u64,
            disk_used: u64,
            disk_total: u64,
        }
        let (status, body) = self
            .call(
                http::Method::GET,
                Self::url(ip, "/metrics"),
                Bytes::new(),
                token,
                Duration::from_secs(5),
            )
            .await
            .map_err(BackendError::Internal)?;
        if !status.is_success() {
            return Err(BackendError::Internal(format!(
                "runtime /metrics answered {status}"
            )));
        }
        let m: EnvdMetrics = serde_json::from_slice(&body)
            .map_err(|e| BackendError::Internal(format!("runtime /metrics: {e}")))?;
        Ok(MetricSample {
            timestamp: jiff::Timestamp::now(),
            cpu_count: m.cpu_count,
            cpu_used_pct: m.cpu_used_pct,
            mem_used: m.mem_used,
            mem_total: m.mem_total,
            mem_cache: m.mem_cache,
            disk_used: m.disk_used,
            disk_total: m.disk_total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_loopback_unique_and_never_the_platforms() {
        assert!(AddressPool::parse("10.0.0.0/8").is_err());
        assert!(AddressPool::parse("127.1.0.0").is_err());
        let p = AddressPool::parse("127.0.0.0/30").unwrap();
        // 127.0.0.0 and .3 are the range's ends, .1 is the platform's: only .2 is left.
        assert_eq!(p.take(), Some(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(p.take(), None);
        p.release(Ipv4Addr::new(127, 0, 0, 2));
        assert!(p.claim(Ipv4Addr::new(127, 0, 0, 2)));
        assert!(!p.claim(Ipv4Addr::new(127, 9, 0, 2)));
    }
}
