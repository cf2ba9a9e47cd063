//! Contexts (one kernel each) and how a cell runs in one: the registry with a default context
//! per language, one execution at a time per context, per-call env vars that are undone
//! afterwards, the sandbox's env vars set once per kernel, interrupt when the client goes away,
//! and a kernel that dies is reported and replaced.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedMutexGuard, mpsc};
use tokio::time::Instant;

use crate::envd::Envs;
use crate::error::ApiError;
use crate::kernel::{Kernel, KernelError, KernelEvent, LaunchConfig};
use crate::kernelspec::{KernelSpec, KernelSpecs};
use crate::protocol::{CellTracker, ContextInfo, EnvSyntax, ExecuteRequest, OutputLine, Target};

/// How often an interrupt is repeated while the interrupted cell runs on.
const INTERRUPT_REPEAT: Duration = Duration::from_millis(500);
/// The earliest interrupt after the kernel took the cell (so the SIGINT meets the cell's code).
const INTERRUPT_AFTER_START: Duration = Duration::from_millis(100);

/// Settings of the contexts.
#[derive(Debug, Clone)]
pub struct Settings {
    pub launch: LaunchConfig,
    /// Default cwd of contexts (the sandbox user's home).
    pub workdir: PathBuf,
    pub max_contexts: usize,
    /// How long an interrupted cell may take to stop before its kernel is killed and replaced.
    pub interrupt_timeout: Duration,
}

/// Every context of the service.
pub struct Contexts {
    specs: KernelSpecs,
    settings: Settings,
    registry: Mutex<Registry>,
    /// Default contexts are created one at a time, so two first calls for a language share one.
    default_creation: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Registry {
    contexts: Vec<Arc<Context>>,
    /// Language → id of its default context.
    defaults: HashMap<String, String>,
}

/// One context: a language, a cwd and its current kernel.
pub struct Context {
    pub id: String,
    pub language: String,
    pub cwd: PathBuf,
    spec: KernelSpec,
    env_syntax: Option<EnvSyntax>,
    /// The kernel, for kill and interrupt without waiting for the running cell.
    current: Mutex<Arc<Kernel>>,
    /// Held by the running cell (and by whoever replaces the kernel).
    exec: Arc<tokio::sync::Mutex<Slot>>,
    removed: AtomicBool,
    settings: Settings,
}

struct Slot {
    kernel: Arc<Kernel>,
    /// The sandbox env vars this kernel has (set before its first cell).
    globals: Option<Envs>,
    /// Told to the next cell on stderr: the kernel died between cells and was replaced.
    notice: Option<String>,
}

impl Contexts {
    pub fn new(specs: KernelSpecs, settings: Settings) -> Self {
        Self {
            specs,
            settings,
            registry: Mutex::new(Registry::default()),
            default_creation: tokio::sync::Mutex::new(()),
        }
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn workdir(&self) -> &Path {
        &self.settings.workdir
    }

    fn spec_for(&self, language: &str) -> Result<&KernelSpec, ApiError> {
        self.specs.for_language(language).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "no kernel for language '{language}' is installed in this sandbox (available: {})",
                self.specs.languages().join(", ")
            ))
        })
    }

    /// `POST /contexts`: a new context with its own kernel.
    pub async fn create(&self, language: &str, cwd: Option<&str>) -> Result<ContextInfo, ApiError> {
        let spec = self.spec_for(language)?.clone();
        let cwd = self.resolve_cwd(cwd)?;
        let ctx = self.start(language, spec, cwd).await?;
        Ok(ctx.info())
    }

    fn resolve_cwd(&self, cwd: Option<&str>) -> Result<PathBuf, ApiError> {
        let path = match cwd.filter(|c| !c.is_empty()) {
            None => return Ok(self.settings.workdir.clone()),
            Some(c) => self.settings.workdir.join(c),
        };
        if path.is_dir() {
            Ok(path)
        } else {
            Err(ApiError::BadRequest(format!(
                "cwd '{}' is not a directory",
                path.display()
            )))
        }
    }

    async fn start(
        &self,
        language: &str,
        spec: KernelSpec,
        cwd: PathBuf,
    ) -> Result<Arc<Context>, ApiError> {
        let max = self.settings.max_contexts;
        if self.registry().contexts.len() >= max {
            return Err(ApiError::TooManyContexts(format!(
                "this sandbox already has {max} contexts (the maximum); remove one first"
            )));
        }
        let kernel = Arc::new(Kernel::launch(&spec, &cwd, &self.settings.launch).await?);
        let ctx = Arc::new(Context {
            id: uuid::Uuid::new_v4().to_string(),
            language: language.to_string(),
            cwd,
            env_syntax: EnvSyntax::for_language(language),
            spec,
            current: Mutex::new(Arc::clone(&kernel)),
            exec: Arc::new(tokio::sync::Mutex::new(Slot {
                kernel: Arc::clone(&kernel),
                globals: None,
                notice: None,
            })),
            removed: AtomicBool::new(false),
            settings: self.settings.clone(),
        });
        ctx.watch(&kernel);
        tracing::info!(context = %ctx.id, language, kernel = %kernel.name(), cwd = %ctx.cwd.display(), "context created");
        self.registry().contexts.push(Arc::clone(&ctx));
        Ok(ctx)
    }

    /// The default context of a language, created on first use.
    pub async fn default_for(&self, language: &str) -> Result<Arc<Context>, ApiError> {
        if let Some(ctx) = self.find_default(language) {
            return Ok(ctx);
        }
        let spec = self.spec_for(language)?.clone();
        let _one_at_a_time = self.default_creation.lock().await;
        if let Some(ctx) = self.find_default(language) {
            return Ok(ctx);
        }
        let ctx = self
            .start(language, spec, self.settings.workdir.clone())
            .await?;
        self.registry()
            .defaults
            .insert(language.to_string(), ctx.id.clone());
        Ok(ctx)
    }

    fn find_default(&self, language: &str) -> Option<Arc<Context>> {
        let reg = self.registry();
        let id = reg.defaults.get(language)?;
        reg.contexts.iter().find(|c| &c.id == id).cloned()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Context>> {
        self.registry()
            .contexts
            .iter()
            .find(|c| c.id == id)
            .cloned()
    }

    pub fn list(&self) -> Vec<ContextInfo> {
        self.registry().contexts.iter().map(|c| c.info()).collect()
    }

    /// The context an execution names, or a 404/400.
    pub async fn resolve(&self, target: &Target) -> Result<Arc<Context>, ApiError> {
        match target {
            Target::Context(id) => self
                .get(id)
                .ok_or_else(|| ApiError::NotFound(format!("Context {id} not found"))),
            Target::Language(lang) => self.default_for(lang).await,
        }
    }

    /// `DELETE /contexts/{id}`: the kernel is killed (a running cell ends with an error).
    pub fn remove(&self, id: &str) -> Result<(), ApiError> {
        let ctx = {
            let mut reg = self.registry();
            let pos = reg
                .contexts
                .iter()
                .position(|c| c.id == id)
                .ok_or_else(|| ApiError::NotFound(format!("Context {id} not found")))?;
            reg.defaults.retain(|_, v| v != id);
            reg.contexts.remove(pos)
        };
        ctx.removed.store(true, Ordering::SeqCst);
        ctx.kernel().kill();
        tracing::info!(context = %id, "context removed");
        Ok(())
    }

    /// `POST /contexts/{id}/restart`: a fresh kernel, same id, language and cwd.
    pub async fn restart(&self, id: &str) -> Result<(), ApiError> {
        let ctx = self
            .get(id)
            .ok_or_else(|| ApiError::NotFound(format!("Context {id} not found")))?;
        ctx.restart().await
    }

    /// Kills every kernel (shutdown).
    pub fn kill_all(&self) {
        let contexts = std::mem::take(&mut self.registry().contexts);
        for ctx in contexts {
            ctx.removed.store(true, Ordering::SeqCst);
            ctx.kernel().kill();
        }
    }
}

impl Context {
    pub fn info(&self) -> ContextInfo {
        ContextInfo {
            id: self.id.clone(),
            language: self.language.clone(),
            cwd: self.cwd.display().to_string(),
        }
    }

    fn kernel(&self) -> Arc<Kernel> {
        Arc::clone(&self.current.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces a dead kernel when nobody else did: a kernel that dies between cells is
    /// replaced at once, so the next cell does not wait for a start.
    fn watch(self: &Arc<Self>, kernel: &Arc<Kernel>) {
        let me: Weak<Context> = Arc::downgrade(self);
        let kernel = Arc::downgrade(kernel);
        tokio::spawn(async move {
            let Some(k) = kernel.upgrade() else { return };
            let serial = k.serial();
            let exited = k.exited();
            drop(k);
            let why = exited.await;
            let Some(ctx) = me.upgrade() else { return };
            if ctx.removed.load(Ordering::SeqCst) {
                return;
            }
            let mut slot = ctx.exec.lock().await;
            if slot.kernel.serial() != serial || ctx.removed.load(Ordering::SeqCst) {
                return;
            }
            tracing::warn!(context = %ctx.id, %why, "the kernel died between cells; starting a new one");
            if ctx.replace_kernel(&mut slot).await.is_ok() {
                slot.notice = Some(restarted_notice(&why));
            }
        });
    }

    async fn replace_kernel(self: &Arc<Self>, slot: &mut Slot) -> Result<(), KernelError> {
        slot.kernel.kill();
        let kernel = match Kernel::launch(&self.spec, &self.cwd, &self.settings.launch).await {
            Ok(k) => Arc::new(k),
            Err(e) => {
                tracing::error!(context = %self.id, error = %e, "cannot replace the kernel");
                return Err(e);
            }
        };
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&kernel);
        slot.kernel = Arc::clone(&kernel);
        slot.globals = None;
        slot.notice = None;
        self.watch(&kernel);
        Ok(())
    }

    async fn restart(self: &Arc<Self>) -> Result<(), ApiError> {
        // Kill first: a running cell then ends (with an error) and gives up the slot.
        let old = self.kernel();
        old.kill();
        let mut slot = Arc::clone(&self.exec).lock_owned().await;
        if slot.kernel.serial() == old.serial() {
            self.replace_kernel(&mut slot).await?;
        } else {
            // Someone replaced the dead kernel meanwhile: that one is fresh.
            slot.notice = None;
        }
        tracing::info!(context = %self.id, "context restarted");
        Ok(())
    }

    /// Starts a cell: waits for the context's previous cell, makes sure its kernel runs, then
    /// streams the cell's lines (ending with `end_of_execution`) from a task of its own, which
    /// also finishes the cell's clean-up when the client is gone.
    pub async fn execute(
        self: &Arc<Self>,
        req: ExecuteRequest,
        sandbox_envs: Envs,
    ) -> Result<mpsc::Receiver<Bytes>, ApiError> {
        let vars = req.env_vars();
        if !vars.is_empty() && self.env_syntax.is_none() {
            return Err(ApiError::BadRequest(format!(
                "env_vars are not supported for {} contexts",
                self.language
            )));
        }
        let mut slot = Arc::clone(&self.exec).lock_owned().await;
        if slot.kernel.is_dead() {
            let why = slot.kernel.exited().await;
            self.replace_kernel(&mut slot).await?;
            slot.notice = Some(restarted_notice(&why));
        }
        let (tx, rx) = mpsc::channel(64);
        let ctx = Arc::clone(self);
        tokio::spawn(async move { ctx.run(slot, req.code, vars, sandbox_envs, tx).await });
        Ok(rx)
    }

    async fn run(
        self: Arc<Self>,
        mut slot: OwnedMutexGuard<Slot>,
        code: String,
        vars: BTreeMap<String, String>,
        sandbox_envs: Envs,
        tx: mpsc::Sender<Bytes>,
    ) {
        let kernel = Arc::clone(&slot.kernel);
        let mut out = Lines { tx, gone: false };
        if let Some(notice) = slot.notice.take() {
            out.send(&OutputLine::Stderr {
                text: notice,
                timestamp: crate::protocol::timestamp(&chrono::Utc::now()),
            })
            .await;
        }
        let mut outcome = Ok(());
        if let Some(syntax) = self.env_syntax {
            let fresh = slot.globals.as_deref() != Some(&*sandbox_envs);
            if fresh {
                if let Some(code) = syntax.set_code(&sandbox_envs) {
                    outcome = self.silent(&kernel, &code).await;
                }
                slot.globals = Some(Arc::clone(&sandbox_envs));
            }
            if outcome.is_ok()
                && let Some(code) = syntax.set_code(&vars)
            {
                outcome = self.silent(&kernel, &code).await;
            }
        }
        if outcome.is_ok() {
            outcome = self.cell(&kernel, &code, &mut out).await;
        }
        if let Err(why) = &outcome {
            let line = if self.removed.load(Ordering::SeqCst) {
                OutputLine::error(
                    "UnexpectedEndOfExecution",
                    "The context was removed while the code ran",
                )
            } else {
                OutputLine::error(
                    "ContextRestarting",
                    format!(
                        "The kernel died ({why}); the context was restarted and its state is lost"
                    ),
                )
            };
            out.send(&line).await;
        }
        out.send(&OutputLine::EndOfExecution).await;
        // A client that left before the error reached it: the next cell is told instead.
        let untold = out.gone;
        drop(out);
        if outcome.is_ok()
            && let Some(syntax) = self.env_syntax
            && let Some(code) = syntax.reset_code(&vars, &sandbox_envs)
        {
            outcome = self.silent(&kernel, &code).await;
        }
        if let Err(why) = outcome
            && !self.removed.load(Ordering::SeqCst)
            && self.replace_kernel(&mut slot).await.is_ok()
            && untold
        {
            slot.notice = Some(restarted_notice(&why));
        }
    }

    /// The user's cell. Err: the kernel died (or was killed because an interrupt did not stop
    /// the cell in time).
    async fn cell(&self, kernel: &Kernel, code: &str, out: &mut Lines) -> Result<(), String> {
        let mut pending = kernel.execute(code, false).await.map_err(died)?;
        let mut tracker = CellTracker::new();
        let mut deadline: Option<Instant> = None;
        // When to interrupt (again). A SIGINT that reaches ipykernel outside the cell's code is
        // caught by its message loop (and can take the request with it), so interrupts start
        // only once the kernel took the cell, a moment later, and are repeated until it ends;
        // a cell still running at the deadline loses its kernel.
        let mut next_interrupt: Option<Instant> = None;
        let mut started_at: Option<Instant> = None;
        loop {
            if started_at.is_none() && tracker.started() {
                started_at = Some(Instant::now());
            }
            if out.gone && deadline.is_none() {
                // The client is gone (timeout, cancel): stop the cell, keep the context.
                tracing::info!(context = %self.id, "client gone; interrupting the cell");
                deadline = Some(Instant::now() + self.settings.interrupt_timeout);
            }
            if deadline.is_some()
                && next_interrupt.is_none()
                && let Some(started) = started_at
            {
                next_interrupt = Some(started + INTERRUPT_AFTER_START);
            }
            tokio::select! {
                biased;
                event = pending.next() => match event {
                    KernelEvent::Died(why) => return Err(why),
                    KernelEvent::Message(msg) => {
                        if let Some(line) = tracker.on_message(&msg) {
                            out.send(&line).await;
                        }
                        if tracker.is_done() {
                            return Ok(());
                        }
                    }
                },
                _ = out.tx.closed(), if !out.gone => out.gone = true,
                _ = sleep_until(deadline), if deadline.is_some() => {
                    tracing::warn!(context = %self.id, "the cell ignored the interrupt; killing its kernel");
                    kernel.kill();
                    return Err(format!(
                        "killed: the cell did not stop within {} s of an interrupt",
                        self.settings.interrupt_timeout.as_secs_f64()
                    ));
                }
                _ = sleep_until(next_interrupt), if next_interrupt.is_some() && tracker.interruptible() => {
                    if let Err(e) = kernel.interrupt().await {
                        tracing::warn!(context = %self.id, error = %e, "cannot interrupt");
                    }
                    next_interrupt = Some(Instant::now() + INTERRUPT_REPEAT);
                }
            }
        }
    }

    /// Code of the service's own (env vars): silent, no output; its errors are only logged.
    async fn silent(&self, kernel: &Kernel, code: &str) -> Result<(), String> {
        let mut pending = kernel.execute(code, true).await.map_err(died)?;
        let mut tracker = CellTracker::new();
        let limit = self.settings.launch.startup_timeout;
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                event = pending.next() => match event {
                    KernelEvent::Died(why) => return Err(why),
                    KernelEvent::Message(msg) => {
                        if let Some(line @ OutputLine::Error { .. }) = tracker.on_message(&msg) {
                            tracing::warn!(context = %self.id, ?line, "setting env vars failed");
                        }
                        if tracker.is_done() {
                            return Ok(());
                        }
                    }
                },
                _ = &mut deadline => {
                    kernel.kill();
                    return Err(format!("killed: setting env vars took over {} s", limit.as_secs()));
                }
            }
        }
    }
}

fn restarted_notice(why: &str) -> String {
    format!(
        "The kernel of this context died ({why}) and was restarted: its variables and imports are gone.\n"
    )
}

fn died(e: KernelError) -> String {
    match e {
        KernelError::Died(why) => why,
        other => other.to_string(),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The stream to the client; sending to a client that left marks it gone.
struct Lines {
    tx: mpsc::Sender<Bytes>,
    gone: bool,
}

impl Lines {
    async fn send(&mut self, line: &OutputLine) {
        if !self.gone && self.tx.send(line.to_bytes()).await.is_err() {
            self.gone = true;
        }
    }
}
