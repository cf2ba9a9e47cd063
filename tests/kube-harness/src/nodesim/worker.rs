//! One task per pod on the simulated node: runs its process and reports its status.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::container::{self, Readiness};
use super::status::{self, PodRun, RunPhase, Termination};
use super::{COMMAND_ANNOTATION, Shared, SimPod, ippool};
use crate::process::ManagedChild;

/// How long a freshly started process may take to listen before its (not yet ready) status is
/// written anyway; saves one status write per pod in the common case.
const FIRST_REPORT_HOLD: Duration = Duration::from_secs(1);
/// A process that ran at least this long before exiting restarts with the initial back-off.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// The images the current run stands for: any change restarts the process.
fn images(pod: &Pod) -> Vec<String> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .map(|c| format!("{}={}", c.name, c.image.as_deref().unwrap_or_default()))
        .collect()
}

struct Worker {
    shared: Arc<Shared>,
    namespace: String,
    name: String,
    uid: String,
    dir: PathBuf,
    workdir: PathBuf,
    log_path: PathBuf,
    run: PodRun,
    process: Option<ManagedChild>,
    images: Vec<String>,
    backoff: Duration,
    restart_at: Option<Instant>,
    report_hold_until: Option<Instant>,
    status_retry_at: Option<Instant>,
    ip_claimed: Option<Ipv4Addr>,
    finalized: bool,
    /// When the current run counts as ready.
    readiness: Readiness,
}

pub(crate) async fn run(shared: Arc<Shared>, mut rx: watch::Receiver<Pod>) {
    let pod = rx.borrow_and_update().clone();
    let mut w = Worker::new(shared, &pod);
    w.drive(rx).await;
    w.cleanup();
}

impl Worker {
    fn new(shared: Arc<Shared>, pod: &Pod) -> Worker {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let dir = shared
            .root
            .join(format!("{namespace}_{name}_{}", &uid[..uid.len().min(8)]));
        let workdir = dir.join("work");
        let log_path = dir.join("process.log");
        let status = pod.status.clone().unwrap_or_default();
        // A pod that already ran under an earlier simulator keeps its start time and count.
        let restart_count = status
            .container_statuses
            .iter()
            .flatten()
            .map(|c| c.restart_count)
            .max()
            .unwrap_or(0);
        let run = PodRun {
            ip: None,
            host_ip: Ipv4Addr::LOCALHOST,
            start_time: status.start_time.clone().unwrap_or_else(now),
            phase: RunPhase::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            },
            restart_count,
            last_termination: None,
            run_id: 0,
        };
        Worker {
            readiness: default_readiness(&shared),
            backoff: shared.cfg.restart_backoff,
            shared,
            namespace,
            name,
            uid,
            dir,
            workdir,
            log_path,
            run,
            process: None,
            images: Vec::new(),
            restart_at: Some(Instant::now()),
            report_hold_until: None,
            status_retry_at: None,
            ip_claimed: None,
            finalized: false,
        }
    }

    fn api(&self) -> Api<Pod> {
        Api::namespaced(self.shared.client.clone(), &self.namespace)
    }

    fn publish(&self) {
        let entry = SimPod {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            ip: self.run.ip,
            pid: self.process.as_ref().map(ManagedChild::pid),
            restart_count: self.run.restart_count,
            workdir: self.workdir.clone(),
            log_path: self.log_path.clone(),
        };
        self.shared
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.uid.clone(), entry);
    }

    async fn drive(&mut self, mut rx: watch::Receiver<Pod>) {
        loop {
            let pod = rx.borrow_and_update().clone();

            if pod.metadata.deletion_timestamp.is_some() {
                self.finalize(&pod).await;
                // Wait until the pod is gone (or a finalizer holder updates it).
                if rx.changed().await.is_err() {
                    return;
                }
                continue;
            }

            if self.process.is_some() && images(&pod) != self.images {
                tracing::info!(pod = %self.name, "image changed; restarting the process");
                self.stop_process(self.shared.cfg.max_termination_grace, true)
                    .await;
                self.restart_at = Some(Instant::now());
            }

            let terminal = matches!(self.run.phase, RunPhase::Terminated(_));
            if self.process.is_none()
                && !terminal
                && self.restart_at.is_some_and(|t| t <= Instant::now())
            {
                self.start(&pod).await;
            }

            let holding = self.report_hold_until.is_some_and(|t| t > Instant::now())
                && matches!(self.run.phase, RunPhase::Running { ready: false, .. });
            if !holding && self.status_retry_at.is_none_or(|t| t <= Instant::now()) {
                self.write_status(&pod).await;
            }

            let probing = matches!(self.run.phase, RunPhase::Running { ready: false, .. });
            let ip = self.run.ip.unwrap_or(Ipv4Addr::LOCALHOST);
            let readiness = self.readiness.clone();
            let far = Instant::now() + Duration::from_secs(3600);
            let restart_at = self
                .restart_at
                .filter(|_| self.process.is_none() && !terminal)
                .unwrap_or(far);
            let hold_until = self.report_hold_until.filter(|_| holding).unwrap_or(far);
            let retry_at = self.status_retry_at.unwrap_or(far);
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                exit = wait_exit(&mut self.process) => self.on_exit(&pod, exit),
                _ = probe(ip, &readiness), if probing => {
                    if let RunPhase::Running { ready, .. } = &mut self.run.phase {
                        *ready = true;
                    }
                    self.report_hold_until = None;
                }
                _ = tokio::time::sleep_until(restart_at) => {}
                _ = tokio::time::sleep_until(hold_until) => self.report_hold_until = None,
                _ = tokio::time::sleep_until(retry_at) => self.status_retry_at = None,
            }
        }
    }

    /// Picks the pod's address: the one it already has if it is ours, else a free one.
    fn address(&mut self, pod: &Pod) -> Option<Ipv4Addr> {
        if let Some(ip) = self.run.ip {
            return Some(ip);
        }
        let range = self.shared.ip_range;
        let previous: Option<Ipv4Addr> = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        let ip = match previous {
            Some(ip) if ippool::claim(range, ip) => Some(ip),
            _ => ippool::allocate(range, self.shared.cfg.port),
        }?;
        self.ip_claimed = Some(ip);
        self.run.ip = Some(ip);
        Some(ip)
    }

    fn command(&self, pod: &Pod, ip: Ipv4Addr) -> Result<Command, String> {
        let template: Vec<String> = match pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(COMMAND_ANNOTATION))
        {
            Some(json) => serde_json::from_str(json)
                .map_err(|e| format!("annotation {COMMAND_ANNOTATION}: {e}"))?,
            None => self.shared.command.clone(),
        };
        let fill = |s: &str| {
            s.replace("{ip}", &ip.to_string())
                .replace("{port}", &self.shared.cfg.port.to_string())
                .replace("{workdir}", &self.workdir.display().to_string())
                .replace("{namespace}", &self.namespace)
                .replace("{name}", &self.name)
                .replace("{uid}", &self.uid)
                .replace("{node}", &self.shared.cfg.node_name)
        };
        let (program, args) = template.split_first().ok_or("empty command")?;
        let mut cmd = Command::new(fill(program));
        cmd.args(args.iter().map(|a| fill(a)))
            .current_dir(&self.workdir);
        // Literal env of the pod's first container; valueFrom needs a kubelet and is skipped.
        let env = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.env.as_ref());
        for e in env.into_iter().flatten() {
            if let Some(v) = &e.value {
                cmd.env(&e.name, v);
            }
        }
        cmd.envs(self.shared.cfg.env.iter().map(|(k, v)| (k, v)))
            .env("POD_NAME", &self.name)
            .env("POD_NAMESPACE", &self.namespace)
            .env("POD_UID", &self.uid)
            .env("POD_IP", ip.to_string())
            .env("NODE_NAME", &self.shared.cfg.node_name);
        Ok(cmd)
    }

    /// The process of a pod whose image has a rule: the container as a kubelet would start it.
    async fn container_command(
        &mut self,
        pod: &Pod,
        rule: &container::ImageRule,
        ip: Ipv4Addr,
    ) -> Result<Command, String> {
        let p = container::prepare(&self.shared, pod, rule, ip, &self.dir).await?;
        let mut cmd = Command::new(&p.program);
        cmd.args(&p.args).current_dir(&self.workdir).envs(p.env);
        self.readiness = p.readiness;
        Ok(cmd)
    }

    async fn start(&mut self, pod: &Pod) {
        let Some(ip) = self.address(pod) else {
            self.run.phase = RunPhase::Waiting {
                reason: "IPExhausted".into(),
                message: Some(format!("no free address in {}", self.shared.ip_range)),
            };
            self.restart_at = Some(Instant::now() + Duration::from_secs(1));
            return;
        };
        if let Err(e) = std::fs::create_dir_all(&self.workdir) {
            self.start_failed(format!("create {}: {e}", self.workdir.display()));
            return;
        }
        // The first run of a pod made from a checkpoint starts with its files.
        if self.run.run_id == 0
            && self.shared.cfg.checkpoints
            && let Err(e) = super::checkpoints::restore(
                &self.shared.root,
                pod.metadata.annotations.as_ref(),
                &self.workdir,
            )
        {
            self.start_failed(e);
            return;
        }
        let rule = container::rule_for(&self.shared.cfg.images, pod).cloned();
        let cmd = match rule {
            Some(rule) => self.container_command(pod, &rule, ip).await,
            None => self.command(pod, ip),
        };
        let spawned = cmd.and_then(|cmd| {
            ManagedChild::spawn(&self.name, cmd, &self.log_path).map_err(|e| e.to_string())
        });
        match spawned {
            Ok(child) => {
                if self.run.run_id > 0 {
                    self.run.restart_count += 1;
                }
                self.run.run_id += 1;
                tracing::debug!(pod = %self.name, %ip, pid = child.pid(), "started pod process");
                self.process = Some(child);
                self.images = images(pod);
                self.run.phase = RunPhase::Running {
                    started_at: now(),
                    ready: self.readiness == Readiness::Started,
                };
                self.report_hold_until = Some(Instant::now() + FIRST_REPORT_HOLD);
                self.restart_at = None;
            }
            Err(e) => self.start_failed(e),
        }
        self.publish();
    }

    /// A process that could not even start counts as a crash with exit code 128.
    fn start_failed(&mut self, message: String) {
        tracing::warn!(pod = %self.name, "could not start the pod process: {message}");
        let t = now();
        self.run.last_termination = Some(Termination {
            exit_code: 128,
            signal: None,
            reason: "StartError".into(),
            message: Some(message.clone()),
            started_at: t.clone(),
            finished_at: t,
        });
        self.run.phase = RunPhase::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: Some(message),
        };
        self.schedule_restart();
    }

    fn schedule_restart(&mut self) {
        self.restart_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(self.shared.cfg.max_restart_backoff);
    }

    fn termination(&self, exit: std::process::ExitStatus, started_at: Time) -> Termination {
        use std::os::unix::process::ExitStatusExt;
        let signal = exit.signal();
        let exit_code = exit.code().unwrap_or_else(|| 128 + signal.unwrap_or(0));
        let log = std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(10)..].join("\n");
        let message = (!tail.is_empty()).then(|| {
            tail.chars()
                .rev()
                .take(2048)
                .collect::<String>()
                .chars()
                .rev()
                .collect()
        });
        Termination {
            exit_code,
            signal,
            reason: if exit_code == 0 { "Completed" } else { "Error" }.into(),
            message,
            started_at,
            finished_at: now(),
        }
    }

    fn on_exit(&mut self, pod: &Pod, exit: std::process::ExitStatus) {
        let started_at = match &self.run.phase {
            RunPhase::Running { started_at, .. } => started_at.clone(),
            _ => now(),
        };
        let term = self.termination(exit, started_at);
        tracing::info!(pod = %self.name, code = term.exit_code, "pod process exited");
        self.process = None;
        // Like the kubelet, a run that lasted a while starts the back-off over.
        let ran_for = term.finished_at.0.duration_since(term.started_at.0);
        if ran_for
            >= k8s_openapi::jiff::SignedDuration::from_secs(BACKOFF_RESET_AFTER.as_secs() as i64)
        {
            self.backoff = self.shared.cfg.restart_backoff;
        }
        if status::restarts(pod, term.exit_code) {
            self.run.phase = RunPhase::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: Some(format!(
                    "back-off {:?} restarting failed container",
                    self.backoff
                )),
            };
            self.run.last_termination = Some(term);
            self.schedule_restart();
        } else {
            self.run.phase = RunPhase::Terminated(term);
        }
        self.publish();
    }

    /// Stops the process; with `as_restart`, its end becomes the last state of the next run.
    async fn stop_process(&mut self, grace: Duration, as_restart: bool) {
        let Some(mut p) = self.process.take() else {
            return;
        };
        let exit = p.terminate(grace).await;
        if as_restart {
            let started_at = match &self.run.phase {
                RunPhase::Running { started_at, .. } => started_at.clone(),
                _ => now(),
            };
            let term = self.termination(exit, started_at);
            self.run.last_termination = Some(term);
            self.run.phase = RunPhase::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            };
        }
        self.publish();
    }

    /// A deleted pod: terminate its process within the grace period, then remove the pod object
    /// (grace period 0), as the kubelet does.
    async fn finalize(&mut self, pod: &Pod) {
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64))
            .unwrap_or(self.shared.cfg.max_termination_grace)
            .min(self.shared.cfg.max_termination_grace);
        self.stop_process(grace, false).await;
        if self.finalized {
            return;
        }
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self.api().delete(&self.name, &dp).await {
            Ok(_) => self.finalized = true,
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => self.finalized = true,
            Err(e) => {
                tracing::warn!(pod = %self.name, error = %e, "could not finalize the deleted pod")
            }
        }
    }

    async fn write_status(&mut self, pod: &Pod) {
        let desired = status::desired_status(pod, &self.run, &now());
        let Some(patch) = status::status_patch(pod, &desired) else {
            return;
        };
        match self
            .api()
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            // 409: the pod changed meanwhile; its new version is on the way through the watch.
            // 404: it is gone; the watch will say so.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
            Err(e) => {
                tracing::warn!(pod = %self.name, error = %e, "status write failed; retrying");
                self.status_retry_at = Some(Instant::now() + Duration::from_millis(500));
            }
        }
    }

    fn cleanup(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill_now();
        }
        if let Some(ip) = self.ip_claimed.take() {
            ippool::release(self.shared.ip_range, ip);
        }
        self.shared
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.uid);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Also runs when the simulator aborts the task.
        self.cleanup();
    }
}

/// Resolves when the process exits; never if there is none.
async fn wait_exit(process: &mut Option<ManagedChild>) -> std::process::ExitStatus {
    match process {
        Some(p) => p.wait().await,
        None => std::future::pending().await,
    }
}

/// The simulator-wide readiness check (`port`, `ready_http_path`).
fn default_readiness(shared: &Shared) -> Readiness {
    match &shared.cfg.ready_http_path {
        Some(path) => Readiness::Http {
            port: shared.cfg.port,
            path: path.clone(),
        },
        None => Readiness::Tcp(shared.cfg.port),
    }
}

/// Resolves once the pod passes its readiness check at `ip`.
async fn probe(ip: Ipv4Addr, readiness: &Readiness) {
    let (port, http_path) = match readiness {
        Readiness::Tcp(port) => (*port, None),
        Readiness::Http { port, path } => (*port, Some(path.as_str())),
        Readiness::Started => return,
    };
    let mut delay = Duration::from_millis(10);
    loop {
        if check(ip, port, http_path).await {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

async fn check(ip: Ipv4Addr, port: u16, http_path: Option<&str>) -> bool {
    let connect = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect((ip, port)),
    );
    let Ok(Ok(mut stream)) = connect.await else {
        return false;
    };
    let Some(path) = http_path else { return true };
    let request = format!("GET {path} HTTP/1.0\r\nHost: {ip}:{port}\r\nConnection: close\r\n\r\n");
    let exchange = async {
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut buf = [0u8; 16];
        let mut n = 0;
        while n < 12 {
            let r = stream.read(&mut buf[n..]).await.ok()?;
            if r == 0 {
                break;
            }
            n += r;
        }
        let line = std::str::from_utf8(&buf[..n]).ok()?;
        Some(line.starts_with("HTTP/1.") && line.get(9..10) == Some("2"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), exchange).await,
        Ok(Some(true))
    )
}
