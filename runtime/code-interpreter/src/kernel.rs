//! One Jupyter kernel: its process (in its own process group, killed with the `Kernel`) and its
//! ZeroMQ channels over IPC sockets in the service's private runtime directory, spoken with
//! `jupyter-zmq-client` (a pure-Rust ZeroMQ, no libzmq) and `jupyter-protocol` messages.
//!
//! Replies and IOPub messages are routed by their parent's `msg_id` to whoever sent the request
//! (`Pending`); when the process exits, everyone waiting hears `KernelEvent::Died`.

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jupyter_protocol::{
    ConnectionInfo, ExecuteRequest, InterruptRequest, JupyterMessage, KernelInfoRequest, Transport,
};
use jupyter_zmq_client::{Connection, DealerSendConnection, RawMessage};
use rand::RngCore;
use rustix::process::{Pid, Signal};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::kernelspec::KernelSpec;
use crate::protocol::Incoming;

/// Where and how kernels are started (the same for every kernel of the service).
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    /// The kernels' virtualenv.
    pub venv: PathBuf,
    /// Private (0700) directory for connection files and IPC sockets.
    pub runtime_dir: PathBuf,
    /// IPython start-up file (the E2B display formatters) for ipykernel kernels.
    pub ipython_startup: PathBuf,
    /// How long a kernel may take to answer its first `kernel_info_request`.
    pub startup_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    #[error("cannot start the {kernel} kernel: {reason}")]
    Start { kernel: String, reason: String },
    #[error("the kernel died ({0})")]
    Died(String),
    #[error("cannot reach the kernel: {0}")]
    Channel(String),
}

/// What a request's waiter receives.
#[derive(Debug)]
pub enum KernelEvent {
    /// An IOPub message or the shell reply whose parent is the request.
    Message(Box<Incoming>),
    /// The kernel process exited (how).
    Died(String),
}

#[derive(Default)]
struct RouteState {
    waiting: HashMap<String, mpsc::UnboundedSender<KernelEvent>>,
    dead: Option<String>,
}

/// Parent `msg_id` → the waiter of that request.
#[derive(Default)]
struct Routes {
    state: Mutex<RouteState>,
}

impl Routes {
    fn lock(&self) -> std::sync::MutexGuard<'_, RouteState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(self: &Arc<Self>, msg_id: String) -> Result<Pending, KernelError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = self.lock();
        if let Some(why) = &state.dead {
            return Err(KernelError::Died(why.clone()));
        }
        state.waiting.insert(msg_id.clone(), tx);
        Ok(Pending {
            msg_id,
            rx,
            routes: Arc::clone(self),
        })
    }

    fn dispatch(&self, msg: Incoming) {
        let Some(parent) = &msg.parent_id else {
            return;
        };
        let state = self.lock();
        if let Some(tx) = state.waiting.get(parent) {
            let _ = tx.send(KernelEvent::Message(Box::new(msg)));
        }
    }

    fn die(&self, why: String) {
        let mut state = self.lock();
        for (_, tx) in state.waiting.drain() {
            let _ = tx.send(KernelEvent::Died(why.clone()));
        }
        state.dead = Some(why);
    }

    fn is_dead(&self) -> bool {
        self.lock().dead.is_some()
    }
}

/// The messages answering one request; unregisters itself when dropped.
pub struct Pending {
    msg_id: String,
    rx: mpsc::UnboundedReceiver<KernelEvent>,
    routes: Arc<Routes>,
}

impl Pending {
    pub async fn next(&mut self) -> KernelEvent {
        self.rx
            .recv()
            .await
            .unwrap_or_else(|| KernelEvent::Died("its channels closed".into()))
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.routes.lock().waiting.remove(&self.msg_id);
    }
}

/// The kernel's process group and files: killed and removed when dropped (also when a start
/// fails half-way).
struct Resources {
    pgid: Option<Pid>,
    files: Vec<PathBuf>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Resources {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            // The kernel leads its group; this also ends what it started (`!sleep`, subprocesses).
            let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
        }
        for t in &self.tasks {
            t.abort();
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

static NEXT_KERNEL: AtomicU64 = AtomicU64::new(1);

/// A running kernel.
pub struct Kernel {
    serial: u64,
    name: String,
    shell: tokio::sync::Mutex<DealerSendConnection>,
    control: tokio::sync::Mutex<DealerSendConnection>,
    routes: Arc<Routes>,
    exit: watch::Receiver<Option<String>>,
    resources: Resources,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("serial", &self.serial)
            .field("name", &self.name)
            .finish()
    }
}

impl Kernel {
    /// Starts a kernel in `cwd` and returns once it answered a `kernel_info_request` and its
    /// IOPub channel delivers (so no output of the first cell can be missed).
    pub async fn launch(
        spec: &KernelSpec,
        cwd: &Path,
        config: &LaunchConfig,
    ) -> Result<Kernel, KernelError> {
        let fail = |reason: String| KernelError::Start {
            kernel: spec.name.clone(),
            reason,
        };
        let serial = NEXT_KERNEL.fetch_add(1, Ordering::Relaxed);
        let prefix = config.runtime_dir.join(format!("k{serial}"));
        let ports = [1u16, 2, 3, 4, 5];
        let sockets: Vec<PathBuf> = ports
            .iter()
            .map(|p| PathBuf::from(format!("{}-{p}", prefix.display())))
            .collect();
        // sun_path holds 108 bytes.
        if sockets.iter().any(|s| s.as_os_str().len() > 100) {
            return Err(fail(format!(
                "the runtime directory {} is too long for IPC socket paths",
                config.runtime_dir.display()
            )));
        }
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let info = ConnectionInfo {
            ip: prefix.display().to_string(),
            transport: Transport::IPC,
            shell_port: ports[0],
            iopub_port: ports[1],
            stdin_port: ports[2],
            control_port: ports[3],
            hb_port: ports[4],
            key: hex::encode(key),
            signature_scheme: "hmac-sha256".into(),
            kernel_name: Some(spec.name.clone()),
        };
        let conn_file = config.runtime_dir.join(format!("k{serial}.json"));
        let mut resources = Resources {
            pgid: None,
            files: sockets.clone(),
            tasks: Vec::new(),
        };
        resources.files.push(conn_file.clone());
        write_private(&conn_file, &serde_json::to_vec(&info).unwrap_or_default())
            .map_err(|e| fail(format!("{}: {e}", conn_file.display())))?;

        let mut cmd = kernel_command(spec, cwd, &conn_file, config)
            .ok_or_else(|| fail("the kernelspec has an empty argv".into()))?;
        let mut child = cmd.spawn().map_err(|e| fail(e.to_string()))?;
        resources.pgid = child.id().and_then(|p| Pid::from_raw(p as i32));
        tracing::debug!(kernel = %spec.name, serial, pid = ?child.id(), cwd = %cwd.display(), "kernel process started");

        let routes = Arc::new(Routes::default());
        let (exit_tx, exit) = watch::channel(None);
        resources.tasks.push(tokio::spawn({
            let routes = Arc::clone(&routes);
            async move {
                let why = match child.wait().await {
                    Ok(status) => describe_exit(status),
                    Err(e) => format!("cannot wait for it: {e}"),
                };
                routes.die(why.clone());
                let _ = exit_tx.send(Some(why));
            }
        }));

        let connect = async {
            wait_for_sockets(&sockets, &exit).await?;
            let session = uuid::Uuid::new_v4().to_string();
            let iopub = jupyter_zmq_client::create_client_iopub_connection(&info, "", &session)
                .await
                .map_err(|e| e.to_string())?;
            let identity = jupyter_zmq_client::peer_identity_for_session(&session)
                .map_err(|e| e.to_string())?;
            let shell = jupyter_zmq_client::create_client_shell_connection_with_identity(
                &info, &session, identity,
            )
            .await
            .map_err(|e| e.to_string())?;
            let control = jupyter_zmq_client::create_client_control_connection(&info, &session)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((iopub, shell, control))
        };
        let (iopub, shell, control) =
            match tokio::time::timeout(config.startup_timeout, connect).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(fail(e)),
                Err(_) => return Err(fail(startup_timeout_message(config, &exit))),
            };
        let (shell_tx, shell_rx) = shell.split();
        let (control_tx, control_rx) = control.split();
        resources
            .tasks
            .push(spawn_reader(iopub, Arc::clone(&routes)));
        resources
            .tasks
            .push(spawn_reader(shell_rx, Arc::clone(&routes)));
        resources
            .tasks
            .push(spawn_reader(control_rx, Arc::clone(&routes)));

        let kernel = Kernel {
            serial,
            name: spec.name.clone(),
            shell: tokio::sync::Mutex::new(shell_tx),
            control: tokio::sync::Mutex::new(control_tx),
            routes,
            exit,
            resources,
        };
        match tokio::time::timeout(config.startup_timeout, kernel.wait_ready()).await {
            Ok(Ok(())) => Ok(kernel),
            Ok(Err(e)) => Err(fail(e.to_string())),
            Err(_) => Err(fail(startup_timeout_message(config, &kernel.exit))),
        }
    }

    /// Sends `kernel_info_request`s until one is answered on the shell channel and its `status`
    /// arrived on IOPub (the subscription is live). A send refused because ZeroMQ has not
    /// finished connecting to the kernel's socket yet ("not connected to peers": the socket file
    /// exists a moment before the kernel accepts) is tried again; the caller bounds the wait.
    async fn wait_ready(&self) -> Result<(), KernelError> {
        loop {
            let request: JupyterMessage = KernelInfoRequest {}.into();
            let mut pending = self.routes.register(request.header.msg_id.clone())?;
            if let Err(e) = self.send_shell(request).await {
                if let Some(why) = self.exit.borrow().clone() {
                    return Err(KernelError::Died(why));
                }
                tracing::debug!(kernel = %self.name, error = %e, "kernel not reachable yet; trying again");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let (mut replied, mut iopub) = (false, false);
            let round = tokio::time::sleep(Duration::from_secs(1));
            tokio::pin!(round);
            loop {
                tokio::select! {
                    event = pending.next() => match event {
                        KernelEvent::Died(why) => return Err(KernelError::Died(why)),
                        KernelEvent::Message(m) => match m.msg_type.as_str() {
                            "kernel_info_reply" => replied = true,
                            "status" => iopub = true,
                            _ => {}
                        },
                    },
                    _ = &mut round => break,
                }
                if replied && iopub {
                    return Ok(());
                }
            }
        }
    }

    pub fn serial(&self) -> u64 {
        self.serial
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends an `execute_request`; the returned `Pending` receives its messages.
    pub async fn execute(&self, code: &str, silent: bool) -> Result<Pending, KernelError> {
        let request: JupyterMessage = ExecuteRequest {
            code: code.to_string(),
            silent,
            store_history: !silent,
            user_expressions: None,
            allow_stdin: false,
            stop_on_error: false,
        }
        .into();
        let pending = self.routes.register(request.header.msg_id.clone())?;
        self.send_shell(request).await?;
        Ok(pending)
    }

    async fn send_shell(&self, msg: JupyterMessage) -> Result<(), KernelError> {
        self.shell
            .lock()
            .await
            .send(msg)
            .await
            .map_err(|e| KernelError::Channel(e.to_string()))
    }

    /// `interrupt_request` on the control channel: ipykernel (and kernels built on it, such as
    /// bash_kernel) send SIGINT to their process group, so the running cell gets a
    /// KeyboardInterrupt and what it started is interrupted too.
    pub async fn interrupt(&self) -> Result<(), KernelError> {
        let msg: JupyterMessage = InterruptRequest {}.into();
        self.control
            .lock()
            .await
            .send(msg)
            .await
            .map_err(|e| KernelError::Channel(e.to_string()))
    }

    /// SIGKILL to the kernel's process group; waiters hear `Died`.
    pub fn kill(&self) {
        if let Some(pgid) = self.resources.pgid
            && !self.is_dead()
        {
            let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
        }
    }

    pub fn is_dead(&self) -> bool {
        self.routes.is_dead()
    }

    /// Waits until the process exited; returns how. The future does not borrow the kernel.
    pub fn exited(&self) -> impl Future<Output = String> + Send + 'static {
        let mut rx = self.exit.clone();
        async move {
            match rx.wait_for(Option::is_some).await {
                Ok(v) => v.clone().unwrap_or_default(),
                Err(_) => "gone".into(),
            }
        }
    }
}

fn kernel_command(
    spec: &KernelSpec,
    cwd: &Path,
    conn_file: &Path,
    config: &LaunchConfig,
) -> Option<tokio::process::Command> {
    let argv = spec.command_line(&config.venv, conn_file);
    let (program, args) = argv.split_first()?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args);
    if spec.is_ipykernel() {
        cmd.arg(format!(
            "--IPKernelApp.exec_files={}",
            config.ipython_startup.display()
        ))
        // Plain tracebacks (no ANSI colours), as E2B's kernels are configured.
        .arg("--InteractiveShell.colors=nocolor")
        // In/Out history in memory: no SQLite file in the sandbox's home.
        .arg("--HistoryManager.hist_file=:memory:");
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![config.venv.join("bin")];
    paths.extend(std::env::split_paths(&path));
    cmd.current_dir(cwd)
        .envs(&spec.env)
        .env("PATH", std::env::join_paths(paths).unwrap_or(path.clone()))
        // ipykernel exits when this process is gone (its parent poller).
        .env("JPY_PARENT_PID", std::process::id().to_string())
        .env("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        .env("IPYTHONDIR", config.runtime_dir.join("ipython"))
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .process_group(0)
        .kill_on_drop(true);
    // The font cache built when the venv was installed, so no sandbox rebuilds it.
    let mpl = config.venv.join("var").join("matplotlib");
    if std::env::var_os("MPLCONFIGDIR").is_none() && mpl.is_dir() {
        cmd.env("MPLCONFIGDIR", mpl);
    }
    Some(cmd)
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

/// The kernel binds its sockets first thing; connecting before that would leave ZeroMQ
/// retrying with a growing back-off.
async fn wait_for_sockets(
    sockets: &[PathBuf],
    exit: &watch::Receiver<Option<String>>,
) -> Result<(), String> {
    loop {
        if let Some(why) = exit.borrow().clone() {
            return Err(format!("the kernel exited during start-up ({why})"));
        }
        if sockets.iter().all(|s| s.exists()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn startup_timeout_message(
    config: &LaunchConfig,
    exit: &watch::Receiver<Option<String>>,
) -> String {
    match exit.borrow().clone() {
        Some(why) => format!("the kernel exited during start-up ({why})"),
        None => format!(
            "no answer within {} s",
            config.startup_timeout.as_secs_f64()
        ),
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// Reads a channel and routes each message. Frames are checked against the connection's
/// HMAC key by `jupyter-zmq-client`; the JSON is decoded leniently (`Incoming`), so a kernel's
/// non-standard message still reaches its waiter.
fn spawn_reader<S>(mut conn: Connection<S>, routes: Arc<Routes>) -> JoinHandle<()>
where
    S: zeromq::SocketRecv + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let frames = match conn.socket.recv().await {
                Ok(frames) => frames,
                Err(e) => {
                    if routes.is_dead() {
                        return;
                    }
                    tracing::warn!(error = %e, "reading from a kernel channel");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let decoded = RawMessage::from_multipart(frames, &conn.mac)
                .map_err(|e| e.to_string())
                .and_then(|raw| Incoming::decode(&raw.jparts));
            match decoded {
                Ok(msg) => routes.dispatch(msg),
                Err(e) => tracing::warn!(error = %e, "skipping a kernel message"),
            }
        }
    })
}
