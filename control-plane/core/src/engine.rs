//! The claim engine: an attempt takes one sandbox from the candidates (or creates one), waits
//! for a created one, initialises its runtime and routes it; a sandbox that fails after the take
//! is reserved or deleted. A claim retries attempts with backoff while the failure is retriable.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::candidates::Candidates;
use crate::limiter::CreateLimiter;
use crate::pick::PickLock;
use crate::retry::RetryPolicy;
use crate::runtime::{InitRuntimeRequest, RuntimeInit};
use crate::sandbox::{ClaimableSandbox, Readiness};
use crate::store::{ClaimIdentity, SandboxStore, TakeError};

/// How a created sandbox is waited for when the claim does not say (upstream's default).
pub const DEFAULT_WAIT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failed read while waiting for a created sandbox.
const REFRESH_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Limits of one engine (one per process).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Picks and takes (or creates) running at once (upstream `MaxClaimWorkers`, 500).
    pub workers: usize,
    /// Creates on no stock per second and their burst; `None` leaves them unlimited.
    pub create_limit: Option<(f64, u32)>,
}

/// What one claim asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimOptions {
    /// `Some`: initialise the runtime with these env vars and a fresh access token per attempt.
    pub init_env: Option<BTreeMap<String, String>>,
    /// Create a sandbox when no candidate could be taken.
    pub create_on_no_stock: bool,
    /// Keep a sandbox that failed after the take (reserved) instead of deleting it.
    pub reserve_failed: bool,
    /// How long a created sandbox is waited for.
    pub wait_ready_timeout: Duration,
    /// The take changes the sandbox in place (a new image: its runtime restarts), so a taken
    /// sandbox is waited for like a created one before `/init`.
    pub wait_ready_after_take: bool,
}

/// Time spent in each stage of a claim (summed over its attempts). `pick` includes waiting for
/// a worker slot and reading the pool; `take` every guarded write, the lost ones included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClaimTimings {
    pub pick: Duration,
    pub take: Duration,
    pub wait_ready: Duration,
    pub init: Duration,
    pub mount: Duration,
    pub route: Duration,
}

impl ClaimTimings {
    /// `(stage, time)` of the stages that took any time, for metrics.
    pub fn stages(&self) -> impl Iterator<Item = (&'static str, Duration)> {
        [
            ("pick", self.pick),
            ("take", self.take),
            ("wait_ready", self.wait_ready),
            ("init", self.init),
            ("mount", self.mount),
            ("route", self.route),
        ]
        .into_iter()
        .filter(|(_, d)| !d.is_zero())
    }

    fn add(&mut self, o: &ClaimTimings) {
        self.pick += o.pick;
        self.take += o.take;
        self.wait_ready += o.wait_ready;
        self.init += o.init;
        self.mount += o.mount;
        self.route += o.route;
    }
}

/// Where a claimed sandbox came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Pool,
    Created,
}

/// A sandbox handed to the claim: taken, ready, initialised and routed.
#[derive(Debug, Clone)]
pub struct Claimed<S> {
    pub sandbox: S,
    pub origin: Origin,
    /// What the take wrote (its lock and `/init` request).
    pub identity: ClaimIdentity,
}

/// The stage a taken sandbox failed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    WaitReady,
    Init,
    Mount,
    Route,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::WaitReady => "wait_ready",
            Stage::Init => "init",
            Stage::Mount => "mount",
            Stage::Route => "route",
        }
    }
}

/// What became of a sandbox that failed after the take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Reserved,
    Deleted,
}

impl Disposition {
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Reserved => "reserved",
            Disposition::Deleted => "deleted",
        }
    }
}

/// Why a claim attempt did not hand out a sandbox.
#[derive(Debug)]
pub enum ClaimError<S, E> {
    /// No candidate could be taken and the claim does not create.
    NoStock,
    /// No candidate could be taken and the create rate limiter said no.
    RateLimited,
    /// Taken (or created), then failed at `stage`; reserved or deleted (`cleanup`), not counted.
    Failed {
        sandbox: S,
        stage: Stage,
        why: String,
        cleanup: Result<Disposition, E>,
    },
    /// The store failed (not a conflict).
    Store(E),
}

impl<S, E> ClaimError<S, E> {
    /// Whether another attempt may succeed: no stock, a denied create, and a sandbox that never
    /// got ready or whose runtime refused `/init` (another one may do). A failed volume mount
    /// is not retried (upstream): the next sandbox would mount the same volume the same way.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClaimError::NoStock | ClaimError::RateLimited => true,
            ClaimError::Failed { stage, .. } => matches!(stage, Stage::WaitReady | Stage::Init),
            ClaimError::Store(_) => false,
        }
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ClaimError::NoStock => "no_stock",
            ClaimError::RateLimited => "rate_limited",
            ClaimError::Failed { .. } => "init_failed",
            ClaimError::Store(_) => "failed",
        }
    }
}

impl<S: ClaimableSandbox, E: fmt::Display> fmt::Display for ClaimError<S, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClaimError::NoStock => f.write_str("no available sandbox"),
            ClaimError::RateLimited => {
                f.write_str("no available sandbox, and the create rate limit is reached")
            }
            ClaimError::Failed {
                sandbox,
                why,
                cleanup,
                ..
            } => {
                let what = match cleanup {
                    Ok(d) => d.as_str().to_string(),
                    Err(e) => format!("not cleared ({e})"),
                };
                write!(f, "sandbox {}: {why}; {what}", sandbox.key())
            }
            ClaimError::Store(e) => write!(f, "{e}"),
        }
    }
}

/// The outcome of a claim with what it cost.
#[derive(Debug)]
pub struct ClaimReport<S, E> {
    pub outcome: Result<Claimed<S>, ClaimError<S, E>>,
    pub timings: ClaimTimings,
    /// Takes lost to another claimer or to a deletion.
    pub conflicts: u32,
    pub attempts: u32,
}

/// Stage times and conflicts of the attempt under way.
#[derive(Debug, Default)]
struct Tally {
    timings: ClaimTimings,
    conflicts: u32,
}

/// The claim engine of one process: its pick lock, worker slots, create limiter and runtime
/// client. Share one per process (the pick lock only helps among the claims that share it).
pub struct ClaimEngine {
    picks: PickLock,
    slots: Semaphore,
    limiter: Option<CreateLimiter>,
    runtime: Arc<dyn RuntimeInit>,
}

impl fmt::Debug for ClaimEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClaimEngine")
            .field("picks", &self.picks)
            .field("free_slots", &self.slots.available_permits())
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl ClaimIdentity {
    fn new(opts: &ClaimOptions) -> Self {
        ClaimIdentity {
            lock: crate::new_token(),
            init: opts.init_env.clone().map(|env_vars| InitRuntimeRequest {
                env_vars,
                access_token: crate::new_token(),
                skip_refresh: false,
            }),
            claimed_at: SystemTime::now(),
        }
    }
}

impl ClaimEngine {
    pub fn new(config: EngineConfig, runtime: Arc<dyn RuntimeInit>) -> Self {
        ClaimEngine {
            picks: PickLock::new(),
            slots: Semaphore::new(config.workers.max(1)),
            limiter: config
                .create_limit
                .map(|(per_second, burst)| CreateLimiter::new(per_second, burst)),
            runtime,
        }
    }

    /// This process's pick lock.
    pub fn picks(&self) -> &PickLock {
        &self.picks
    }

    /// Claims one sandbox: attempts on a fresh read of the pool, retried with `retry`'s backoff
    /// while the failure is retriable.
    pub async fn claim<St: SandboxStore>(
        &self,
        store: &St,
        opts: &ClaimOptions,
        retry: &RetryPolicy,
    ) -> ClaimReport<St::Sandbox, St::Error> {
        let deadline = retry.timeout.map(|t| Instant::now() + t);
        let mut timings = ClaimTimings::default();
        let (mut conflicts, mut attempts) = (0, 0);
        loop {
            attempts += 1;
            let read = Instant::now();
            let outcome = match store.pool().await {
                Ok(pool) => {
                    timings.pick += read.elapsed();
                    let candidates = Candidates::new(
                        pool.sandboxes,
                        pool.update_revision.as_deref(),
                        SystemTime::now(),
                        rand::random::<u32>() as usize,
                    );
                    let r = self.attempt(store, &candidates, opts).await;
                    timings.add(&r.timings);
                    conflicts += r.conflicts;
                    r.outcome
                }
                Err(e) => Err(ClaimError::Store(e)),
            };
            let again = match &outcome {
                Err(e) if e.is_retriable() => backoff(retry, attempts, deadline).await,
                _ => false,
            };
            if !again {
                return ClaimReport {
                    outcome,
                    timings,
                    conflicts,
                    attempts,
                };
            }
        }
    }

    /// One attempt, never retried: the next candidate no other worker of this process is
    /// taking, taken in one guarded write (a conflict moves on to the next); with none left, a
    /// create if the claim and the limiter allow it; then wait-ready (created sandboxes only),
    /// `/init` and route. Attempts of one claim share `candidates`.
    pub async fn attempt<St: SandboxStore>(
        &self,
        store: &St,
        candidates: &Candidates<St::Sandbox>,
        opts: &ClaimOptions,
    ) -> ClaimReport<St::Sandbox, St::Error> {
        let mut tally = Tally::default();
        let identity = ClaimIdentity::new(opts);
        let outcome = match self
            .acquire(store, candidates, opts, &identity, &mut tally)
            .await
        {
            Ok((sandbox, origin)) => self
                .prepare(store, sandbox, origin, &identity, opts, &mut tally)
                .await
                .map(|sandbox| Claimed {
                    sandbox,
                    origin,
                    identity,
                }),
            Err(e) => Err(e),
        };
        ClaimReport {
            outcome,
            timings: tally.timings,
            conflicts: tally.conflicts,
            attempts: 1,
        }
    }

    /// Pick and take (or create), within a worker slot.
    async fn acquire<St: SandboxStore>(
        &self,
        store: &St,
        candidates: &Candidates<St::Sandbox>,
        opts: &ClaimOptions,
        identity: &ClaimIdentity,
        tally: &mut Tally,
    ) -> Result<(St::Sandbox, Origin), ClaimError<St::Sandbox, St::Error>> {
        let waited = Instant::now();
        let _slot = self.slots.acquire().await.expect("slots are never closed");
        tally.timings.pick += waited.elapsed();
        let taken = self.take_from(store, candidates, identity, tally).await;
        if let Some(sandbox) = taken.map_err(ClaimError::Store)? {
            return Ok((sandbox, Origin::Pool));
        }
        if !opts.create_on_no_stock {
            return Err(ClaimError::NoStock);
        }
        if self.limiter.as_ref().is_some_and(|l| !l.allow()) {
            return Err(ClaimError::RateLimited);
        }
        let started = Instant::now();
        let created = store.create(identity).await;
        tally.timings.take += started.elapsed();
        Ok((created.map_err(ClaimError::Store)?, Origin::Created))
    }

    /// Walks the candidates until one is taken; `None` when none could be.
    async fn take_from<St: SandboxStore>(
        &self,
        store: &St,
        candidates: &Candidates<St::Sandbox>,
        identity: &ClaimIdentity,
        tally: &mut Tally,
    ) -> Result<Option<St::Sandbox>, St::Error> {
        let mut picking = Instant::now();
        while let Some((key, candidate)) = candidates.next() {
            let Some(_pick) = self.picks.try_pick(key, candidate.version()) else {
                continue;
            };
            tally.timings.pick += picking.elapsed();
            let started = Instant::now();
            let res = store.take(candidate, identity).await;
            tally.timings.take += started.elapsed();
            picking = Instant::now();
            match res {
                Ok(taken) => {
                    // The cache still shows the old version for a while: skip it until then.
                    if let Some(v) = taken.version() {
                        self.picks.expect_at_least(key, v);
                    }
                    return Ok(Some(taken));
                }
                Err(TakeError::Conflict | TakeError::Gone) => {
                    tally.conflicts += 1;
                    if let Some(v) = candidate.version() {
                        self.picks.expect_at_least(key, v + 1);
                    }
                }
                Err(TakeError::Failed(e)) => return Err(e),
            }
        }
        tally.timings.pick += picking.elapsed();
        Ok(None)
    }

    /// Wait-ready (created, or taken with `wait_ready_after_take`), `/init` (when asked for) and
    /// route; a failure clears the sandbox.
    async fn prepare<St: SandboxStore>(
        &self,
        store: &St,
        mut sandbox: St::Sandbox,
        origin: Origin,
        identity: &ClaimIdentity,
        opts: &ClaimOptions,
        tally: &mut Tally,
    ) -> Result<St::Sandbox, ClaimError<St::Sandbox, St::Error>> {
        if origin == Origin::Created || opts.wait_ready_after_take {
            let started = Instant::now();
            let ready = wait_ready(store, sandbox.clone(), opts.wait_ready_timeout).await;
            tally.timings.wait_ready += started.elapsed();
            match ready {
                Ok(s) => sandbox = s,
                Err(why) => return Err(fail(store, sandbox, Stage::WaitReady, why, opts).await),
            }
        }
        if let Some(init) = &identity.init {
            let started = Instant::now();
            let res = match sandbox.runtime_url() {
                Some(url) => self
                    .runtime
                    .init(&url, init)
                    .await
                    .map_err(|e| e.to_string()),
                None => Err("the sandbox has no address".into()),
            };
            tally.timings.init += started.elapsed();
            if let Err(e) = res {
                let why = format!("runtime init failed ({e})");
                return Err(fail(store, sandbox, Stage::Init, why, opts).await);
            }
        }
        let started = Instant::now();
        let mounted = store.mount(&sandbox).await;
        tally.timings.mount += started.elapsed();
        if let Err(e) = mounted {
            let why = format!("failed to perform csi mount: {e}");
            return Err(fail(store, sandbox, Stage::Mount, why, opts).await);
        }
        let started = Instant::now();
        let routed = store.route(&sandbox).await;
        tally.timings.route += started.elapsed();
        if let Err(e) = routed {
            let why = format!("route failed ({e})");
            return Err(fail(store, sandbox, Stage::Route, why, opts).await);
        }
        Ok(sandbox)
    }
}

/// Sleeps before the next attempt; false when the budget is spent.
async fn backoff(retry: &RetryPolicy, done: u32, deadline: Option<Instant>) -> bool {
    if done >= retry.attempts {
        return false;
    }
    let delay = retry.delay(done, rand::random::<f64>());
    if deadline.is_some_and(|d| Instant::now() + delay >= d) {
        return false;
    }
    tokio::time::sleep(delay).await;
    true
}

/// Waits, at most `timeout`, until a created sandbox's verdict is ready.
async fn wait_ready<St: SandboxStore>(
    store: &St,
    created: St::Sandbox,
    timeout: Duration,
) -> Result<St::Sandbox, String> {
    let deadline = Instant::now() + timeout;
    let gave_up = || format!("not ready within waitReadyTimeout ({timeout:?})");
    let mut current = created;
    loop {
        match current.readiness().verdict() {
            Readiness::Ready => return Ok(current),
            Readiness::Never(why) => return Err(why),
            Readiness::NotYet => {}
        }
        match tokio::time::timeout_at(deadline, store.refresh(&current)).await {
            Err(_) => return Err(gave_up()),
            Ok(Ok(Some(s))) => current = s,
            Ok(Ok(None)) => return Err("sandbox disappeared".into()),
            Ok(Err(e)) => {
                tracing::debug!(sandbox = %current.key(), error = %e, "waiting for a created sandbox");
                if tokio::time::timeout_at(deadline, tokio::time::sleep(REFRESH_ERROR_PAUSE))
                    .await
                    .is_err()
                {
                    return Err(gave_up());
                }
            }
        }
    }
}

/// Upstream's `clearFailedSandbox`: reserve or delete a sandbox that failed after the take.
async fn fail<St: SandboxStore>(
    store: &St,
    sandbox: St::Sandbox,
    stage: Stage,
    why: String,
    opts: &ClaimOptions,
) -> ClaimError<St::Sandbox, St::Error> {
    tracing::info!(sandbox = %sandbox.key(), stage = stage.as_str(), %why, "a taken sandbox failed");
    let cleanup = if opts.reserve_failed {
        store
            .reserve(&sandbox)
            .await
            .map(|()| Disposition::Reserved)
    } else {
        store.delete(&sandbox).await.map(|()| Disposition::Deleted)
    };
    ClaimError::Failed {
        sandbox,
        stage,
        why,
        cleanup,
    }
}
