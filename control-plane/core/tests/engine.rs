//! The claim engine against an in-memory store that behaves like the API server where it
//! matters: every write bumps a global version, and a take guarded by an older version conflicts.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sandbox_core::*;
use tokio::sync::watch;

#[derive(Debug, Clone, PartialEq)]
struct Sbx {
    name: String,
    version: u64,
    owner: Option<String>,
    revision: &'static str,
    readiness: ReadinessFacts,
    ip: Option<String>,
}

fn ready() -> ReadinessFacts {
    ReadinessFacts {
        observed: true,
        running: true,
        ready: true,
        has_address: true,
        ..Default::default()
    }
}

impl ClaimableSandbox for Sbx {
    fn key(&self) -> String {
        format!("ns/{}", self.name)
    }
    fn version(&self) -> Option<u64> {
        Some(self.version)
    }
    fn pick_facts(&self, _: SystemTime) -> PickFacts<'_> {
        PickFacts {
            available: self.owner.is_none() && self.readiness.verdict() == Readiness::Ready,
            locked: self.owner.is_some(),
            created: true,
            has_address: self.ip.is_some(),
            revision: Some(self.revision),
        }
    }
    fn readiness(&self) -> ReadinessFacts {
        self.readiness.clone()
    }
    fn runtime_url(&self) -> Option<String> {
        self.ip.as_ref().map(|ip| format!("http://{ip}:49983"))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("fake store: {0}")]
struct FakeError(String);

#[derive(Default)]
struct World {
    version: u64,
    sandboxes: BTreeMap<String, Sbx>,
    /// (sandbox, lock) of every successful take.
    takes: Vec<(String, String)>,
    reserved: Vec<String>,
    deleted: Vec<String>,
    created: usize,
    pool_reads: u32,
    /// Sandboxes that join the pool at the n-th pool read.
    appear: Vec<(u32, Sbx)>,
}

impl World {
    fn bump(&mut self) -> u64 {
        self.version += 1;
        self.version
    }
}

#[derive(Default)]
struct FakeStore {
    world: Mutex<World>,
    changes: watch::Sender<u64>,
    /// How long a take takes (simulated API latency).
    take_latency: Duration,
    /// Readiness a created sandbox starts with.
    created_readiness: ReadinessFacts,
    takes_running: AtomicUsize,
    most_takes_at_once: AtomicUsize,
    /// What the mount stage answers (`None`: mounted).
    mount_error: Option<String>,
}

impl FakeStore {
    fn with_pool(n: usize) -> FakeStore {
        let s = FakeStore::default();
        for i in 0..n {
            s.add(&format!("s{i:03}"), "r2");
        }
        s
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap()
    }

    fn add(&self, name: &str, revision: &'static str) {
        let mut w = self.world();
        let version = w.bump();
        w.sandboxes.insert(
            name.into(),
            Sbx {
                name: name.into(),
                version,
                owner: None,
                revision,
                readiness: ready(),
                ip: Some(format!("10.0.0.{}", version % 250)),
            },
        );
    }

    /// Changes a sandbox as another writer would.
    fn update(&self, name: &str, f: impl FnOnce(&mut Sbx)) {
        let mut w = self.world();
        let version = w.bump();
        let s = w.sandboxes.get_mut(name).unwrap();
        f(s);
        s.version = version;
        drop(w);
        self.changes.send_modify(|v| *v += 1);
    }

    /// What a (possibly lagging) cache would list now.
    fn snapshot(&self) -> Vec<Sbx> {
        let w = self.world();
        w.sandboxes
            .values()
            .filter(|s| s.owner.is_none())
            .cloned()
            .collect()
    }
}

#[async_trait]
impl SandboxStore for FakeStore {
    type Sandbox = Sbx;
    type Error = FakeError;

    async fn pool(&self) -> Result<Pool<Sbx>, FakeError> {
        {
            let mut w = self.world();
            w.pool_reads += 1;
            let n = w.pool_reads;
            let due: Vec<Sbx> = w
                .appear
                .iter()
                .filter(|(at, _)| *at == n)
                .map(|(_, s)| s.clone())
                .collect();
            for s in due {
                w.sandboxes.insert(s.name.clone(), s);
            }
        }
        Ok(Pool {
            sandboxes: self.snapshot(),
            update_revision: Some("r2".into()),
        })
    }

    async fn take(&self, c: &Sbx, id: &ClaimIdentity) -> Result<Sbx, TakeError<FakeError>> {
        if !self.take_latency.is_zero() {
            let now = self.takes_running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_takes_at_once.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.take_latency).await;
            self.takes_running.fetch_sub(1, Ordering::SeqCst);
        }
        let mut w = self.world();
        let version = w.bump();
        let Some(s) = w.sandboxes.get_mut(&c.name) else {
            return Err(TakeError::Gone);
        };
        if s.version != c.version {
            return Err(TakeError::Conflict);
        }
        s.version = version;
        s.owner = Some(id.lock.clone());
        let taken = s.clone();
        w.takes.push((c.name.clone(), id.lock.clone()));
        Ok(taken)
    }

    async fn create(&self, id: &ClaimIdentity) -> Result<Sbx, FakeError> {
        let mut w = self.world();
        w.created += 1;
        let name = format!("created-{}", w.created);
        let version = w.bump();
        let s = Sbx {
            name: name.clone(),
            version,
            owner: Some(id.lock.clone()),
            revision: "r2",
            readiness: self.created_readiness.clone(),
            ip: Some(format!("10.0.1.{}", w.created)),
        };
        w.sandboxes.insert(name, s.clone());
        Ok(s)
    }

    async fn refresh(&self, seen: &Sbx) -> Result<Option<Sbx>, FakeError> {
        let mut changes = self.changes.subscribe();
        loop {
            match self.world().sandboxes.get(&seen.name) {
                None => return Ok(None),
                Some(s) if s.version != seen.version => return Ok(Some(s.clone())),
                Some(_) => {}
            }
            changes.changed().await.unwrap();
        }
    }

    async fn reserve(&self, s: &Sbx) -> Result<(), FakeError> {
        self.world().reserved.push(s.name.clone());
        Ok(())
    }

    async fn delete(&self, s: &Sbx) -> Result<(), FakeError> {
        let mut w = self.world();
        w.sandboxes.remove(&s.name);
        w.deleted.push(s.name.clone());
        Ok(())
    }

    async fn mount(&self, _s: &Sbx) -> Result<(), String> {
        self.mount_error.clone().map_or(Ok(()), Err)
    }
}

/// A runtime that accepts `/init` except at the refused addresses.
#[derive(Default)]
struct FakeRuntime {
    refuse: Mutex<HashSet<String>>,
    calls: Mutex<Vec<(String, InitRuntimeRequest)>>,
    latency: Duration,
}

#[async_trait]
impl RuntimeInit for FakeRuntime {
    async fn init(&self, base_url: &str, request: &InitRuntimeRequest) -> Result<(), InitError> {
        tokio::time::sleep(self.latency).await;
        self.calls
            .lock()
            .unwrap()
            .push((base_url.into(), request.clone()));
        if self.refuse.lock().unwrap().contains(base_url) {
            return Err(InitError {
                url: format!("{base_url}/init"),
                detail: "400 Bad Request: refused".into(),
            });
        }
        Ok(())
    }
}

fn engine(
    runtime: Arc<FakeRuntime>,
    workers: usize,
    create_limit: Option<(f64, u32)>,
) -> ClaimEngine {
    ClaimEngine::new(
        EngineConfig {
            workers,
            create_limit,
        },
        runtime,
    )
}

fn opts() -> ClaimOptions {
    ClaimOptions {
        init_env: Some(BTreeMap::from([("K".to_string(), "v".to_string())])),
        create_on_no_stock: false,
        reserve_failed: false,
        wait_ready_timeout: Duration::from_secs(30),
        wait_ready_after_take: false,
    }
}

fn candidates(store: &FakeStore, start: usize) -> Candidates<Sbx> {
    Candidates::new(store.snapshot(), Some("r2"), SystemTime::now(), start)
}

#[tokio::test]
async fn a_pool_sandbox_is_taken_initialised_and_reported() {
    let store = FakeStore::with_pool(3);
    let rt = Arc::new(FakeRuntime::default());
    let e = engine(rt.clone(), 10, None);
    let r = e.attempt(&store, &candidates(&store, 1), &opts()).await;
    let claimed = r.outcome.unwrap();
    assert_eq!(
        (claimed.origin, r.conflicts, r.attempts),
        (Origin::Pool, 0, 1)
    );
    assert_eq!(claimed.sandbox.name, "s001", "the rotation's start");
    assert_eq!(
        claimed.sandbox.owner.as_deref(),
        Some(claimed.identity.lock.as_str())
    );
    let calls = rt.calls.lock().unwrap().clone();
    let init = claimed.identity.init.as_ref().unwrap();
    assert_eq!(
        calls,
        [(claimed.sandbox.runtime_url().unwrap(), init.clone())]
    );
    assert_eq!(init.env_vars["K"], "v");
    assert_eq!(init.access_token.len(), 36);
    assert_ne!(init.access_token, claimed.identity.lock);
}

#[tokio::test]
async fn conflicts_move_on_to_the_next_candidate_and_are_not_retried_by_this_process() {
    let store = FakeStore::with_pool(3);
    let stale = store.snapshot();
    // Another claimer takes s000 and s001 after our snapshot was made.
    for name in ["s000", "s001"] {
        store.update(name, |s| s.owner = Some("elsewhere".into()));
    }
    let e = engine(Arc::default(), 10, None);
    let from = |snap: &Vec<Sbx>| Candidates::new(snap.clone(), Some("r2"), SystemTime::now(), 0);
    let r = e.attempt(&store, &from(&stale), &opts()).await;
    assert_eq!(r.outcome.unwrap().sandbox.name, "s002");
    assert_eq!(r.conflicts, 2);
    // The same stale snapshot again (a lagging cache): the lost ones and the taken one are
    // skipped without a write.
    let takes = store.world().takes.len();
    let r = e.attempt(&store, &from(&stale), &opts()).await;
    assert!(
        matches!(r.outcome, Err(ClaimError::NoStock)),
        "{:?}",
        r.outcome
    );
    assert_eq!(r.conflicts, 0);
    assert_eq!(store.world().takes.len(), takes);
    // Once the cache shows a newer version, it is a candidate again.
    store.update("s000", |s| s.owner = None);
    let r = e.attempt(&store, &from(&store.snapshot()), &opts()).await;
    assert_eq!(r.outcome.unwrap().sandbox.name, "s000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_of_two_processes_never_share_a_sandbox() {
    let store = Arc::new(FakeStore {
        take_latency: Duration::from_millis(1),
        ..FakeStore::with_pool(50)
    });
    let mut tasks = Vec::new();
    for _process in 0..2 {
        let e = Arc::new(engine(Arc::default(), 500, None));
        // Four claims per process, each with its own snapshot and ten concurrent attempts.
        for claim in 0..4 {
            let c = Arc::new(candidates(&store, claim * 7));
            for _ in 0..10 {
                let (e, c, store) = (e.clone(), c.clone(), store.clone());
                tasks.push(tokio::spawn(async move {
                    e.attempt(&*store, &c, &opts()).await
                }));
            }
        }
    }
    let mut won = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        match r.outcome {
            Ok(c) => won.push(c.sandbox.name),
            Err(ClaimError::NoStock) => {}
            Err(e) => panic!("{e}"),
        }
    }
    let distinct: HashSet<&String> = won.iter().collect();
    assert_eq!(won.len(), 50, "every sandbox went to someone");
    assert_eq!(distinct.len(), 50, "no sandbox went to two claims");
    let w = store.world();
    assert_eq!(w.takes.len(), 50);
    assert!(w.sandboxes.values().all(|s| s.owner.is_some()));
}

#[tokio::test]
async fn a_sandbox_whose_runtime_refuses_init_is_reserved_or_deleted() {
    for (reserve, disposition) in [(true, Disposition::Reserved), (false, Disposition::Deleted)] {
        let store = FakeStore::with_pool(2);
        let rt = Arc::new(FakeRuntime::default());
        let first = store.snapshot()[0].clone();
        rt.refuse
            .lock()
            .unwrap()
            .insert(first.runtime_url().unwrap());
        let e = engine(rt.clone(), 10, None);
        let o = ClaimOptions {
            reserve_failed: reserve,
            ..opts()
        };
        let r = e.attempt(&store, &candidates(&store, 0), &o).await;
        let Err(err) = r.outcome else {
            panic!("claimed a sandbox that refused /init")
        };
        assert!(err.is_retriable());
        assert_eq!(err.label(), "init_failed");
        let ClaimError::Failed {
            sandbox,
            stage,
            why,
            cleanup,
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!((sandbox.name.as_str(), *stage), ("s000", Stage::Init));
        assert!(
            why.starts_with("runtime init failed (POST http://"),
            "{why}"
        );
        assert_eq!(cleanup.as_ref().unwrap(), &disposition);
        let (reserved, deleted) = {
            let w = store.world();
            (w.reserved.clone(), w.deleted.clone())
        };
        let cleared = vec!["s000".to_string()];
        if reserve {
            assert_eq!((reserved, deleted), (cleared, vec![]));
        } else {
            assert_eq!((reserved, deleted), (vec![], cleared));
        }
        // The next attempt takes the other one.
        let r = e.attempt(&store, &candidates(&store, 0), &o).await;
        assert_eq!(r.outcome.unwrap().sandbox.name, "s001");
    }
}

#[tokio::test]
async fn a_failed_mount_clears_the_sandbox_and_is_not_retried() {
    let mut store = FakeStore::with_pool(2);
    store.mount_error = Some("/data: command failed: [1] no such volume".into());
    let rt = Arc::new(FakeRuntime::default());
    let e = engine(rt.clone(), 10, None);
    let r = e
        .claim(
            &store,
            &opts(),
            &RetryPolicy::upstream(Some(Duration::from_secs(30))),
        )
        .await;
    assert_eq!(r.attempts, 1, "a mount failure is not retried");
    let Err(ClaimError::Failed {
        stage,
        why,
        cleanup,
        ..
    }) = &r.outcome
    else {
        panic!("{:?}", r.outcome)
    };
    assert_eq!(*stage, Stage::Mount);
    assert_eq!(
        why,
        "failed to perform csi mount: /data: command failed: [1] no such volume"
    );
    assert_eq!(cleanup.as_ref().unwrap(), &Disposition::Deleted);
    assert_eq!(store.world().deleted.len(), 1);
    assert_eq!(rt.calls.lock().unwrap().len(), 1, "mounted after /init");
}

#[tokio::test(start_paused = true)]
async fn a_created_sandbox_is_waited_for_then_initialised() {
    let store = Arc::new(FakeStore::default());
    let rt = Arc::new(FakeRuntime::default());
    let e = Arc::new(engine(rt.clone(), 10, None));
    let o = ClaimOptions {
        create_on_no_stock: true,
        ..opts()
    };
    let mut changes = store.changes.subscribe();
    let claim = tokio::spawn({
        let (e, store, o) = (e.clone(), store.clone(), o.clone());
        async move {
            let empty = Candidates::new(Vec::new(), None, SystemTime::now(), 0);
            e.attempt(&*store, &empty, &o).await
        }
    });
    // The claim created its sandbox and waits; it becomes ready 3 s later.
    while store.world().created == 0 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    store.update("created-1", |s| s.readiness = ready());
    changes.changed().await.unwrap();
    let r = claim.await.unwrap();
    let c = r.outcome.unwrap();
    assert_eq!(
        (c.origin, c.sandbox.name.as_str()),
        (Origin::Created, "created-1")
    );
    assert_eq!(r.timings.wait_ready, Duration::from_secs(3));
    assert_eq!(rt.calls.lock().unwrap().len(), 1, "initialised once ready");
}

#[tokio::test(start_paused = true)]
async fn a_created_sandbox_that_is_not_ready_in_time_or_cannot_start_is_cleared() {
    let o = ClaimOptions {
        create_on_no_stock: true,
        reserve_failed: true,
        wait_ready_timeout: Duration::from_secs(5),
        ..opts()
    };
    let empty = || Candidates::new(Vec::<Sbx>::new(), None, SystemTime::now(), 0);
    let store = FakeStore::default();
    let rt = Arc::new(FakeRuntime::default());
    let e = engine(rt.clone(), 10, None);
    let started = tokio::time::Instant::now();
    let r = e.attempt(&store, &empty(), &o).await;
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    match r.outcome {
        Err(ClaimError::Failed {
            stage: Stage::WaitReady,
            why,
            cleanup: Ok(Disposition::Reserved),
            ..
        }) => assert_eq!(why, "not ready within waitReadyTimeout (5s)"),
        other => panic!("{other:?}"),
    }
    // A container that cannot start fails the wait at once, long before the timeout.
    let crashing = FakeStore {
        created_readiness: ReadinessFacts {
            cannot_start: Some("back-off".into()),
            ..Default::default()
        },
        ..FakeStore::default()
    };
    let started = tokio::time::Instant::now();
    let r = e
        .attempt(
            &crashing,
            &empty(),
            &ClaimOptions {
                reserve_failed: false,
                ..o
            },
        )
        .await;
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert!(matches!(
        r.outcome,
        Err(ClaimError::Failed {
            stage: Stage::WaitReady,
            cleanup: Ok(Disposition::Deleted),
            ..
        })
    ));
    assert_eq!(crashing.world().deleted, ["created-1"]);
    assert!(rt.calls.lock().unwrap().is_empty(), "never initialised");
}

#[tokio::test(start_paused = true)]
async fn creates_on_no_stock_are_rate_limited() {
    let store = FakeStore {
        created_readiness: ready(),
        ..FakeStore::default()
    };
    let e = engine(Arc::default(), 10, Some((1.0, 2)));
    let o = ClaimOptions {
        create_on_no_stock: true,
        ..opts()
    };
    let empty = || Candidates::new(Vec::<Sbx>::new(), None, SystemTime::now(), 0);
    let mut labels = Vec::new();
    for _ in 0..3 {
        let r = e.attempt(&store, &empty(), &o).await;
        labels.push(r.outcome.map(|c| c.origin).map_err(|e| e.label()));
    }
    assert_eq!(
        labels,
        [
            Ok(Origin::Created),
            Ok(Origin::Created),
            Err("rate_limited")
        ]
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(
        e.attempt(&store, &empty(), &o).await.outcome.is_ok(),
        "refilled"
    );
    assert_eq!(store.world().created, 3);
}

#[tokio::test(start_paused = true)]
async fn a_claim_retries_with_backoff_until_stock_appears() {
    let store = FakeStore::default();
    store.world().appear.push((
        3,
        Sbx {
            name: "late".into(),
            version: 1,
            owner: None,
            revision: "r2",
            readiness: ready(),
            ip: Some("10.0.0.9".into()),
        },
    ));
    let e = engine(Arc::default(), 10, None);
    let retry = RetryPolicy {
        jitter: 0.0,
        ..RetryPolicy::upstream(None)
    };
    let started = tokio::time::Instant::now();
    let r = e.claim(&store, &opts(), &retry).await;
    assert_eq!(r.outcome.unwrap().sandbox.name, "late");
    assert_eq!(r.attempts, 3);
    assert_eq!(started.elapsed(), Duration::from_secs(1 + 2));
}

#[tokio::test(start_paused = true)]
async fn the_claim_timeout_stops_retries_and_terminal_errors_are_not_retried() {
    let store = FakeStore::default();
    let e = engine(Arc::default(), 10, None);
    let retry = RetryPolicy {
        jitter: 0.0,
        ..RetryPolicy::upstream(Some(Duration::from_secs(5)))
    };
    let started = tokio::time::Instant::now();
    let r = e.claim(&store, &opts(), &retry).await;
    assert!(matches!(r.outcome, Err(ClaimError::NoStock)));
    // Attempts at 0 s, 1 s and 3 s; the next would start at 7 s, past the timeout.
    assert_eq!((r.attempts, started.elapsed()), (3, Duration::from_secs(3)));

    /// A store whose writes fail: nothing to retry.
    struct Broken(FakeStore);
    #[async_trait]
    impl SandboxStore for Broken {
        type Sandbox = Sbx;
        type Error = FakeError;
        async fn pool(&self) -> Result<Pool<Sbx>, FakeError> {
            self.0.pool().await
        }
        async fn take(&self, _: &Sbx, _: &ClaimIdentity) -> Result<Sbx, TakeError<FakeError>> {
            Err(TakeError::Failed(FakeError("forbidden".into())))
        }
        async fn create(&self, id: &ClaimIdentity) -> Result<Sbx, FakeError> {
            self.0.create(id).await
        }
        async fn refresh(&self, s: &Sbx) -> Result<Option<Sbx>, FakeError> {
            self.0.refresh(s).await
        }
        async fn reserve(&self, s: &Sbx) -> Result<(), FakeError> {
            self.0.reserve(s).await
        }
        async fn delete(&self, s: &Sbx) -> Result<(), FakeError> {
            self.0.delete(s).await
        }
    }
    let r = e
        .claim(&Broken(FakeStore::with_pool(1)), &opts(), &retry)
        .await;
    assert_eq!(r.attempts, 1);
    assert_eq!(r.outcome.unwrap_err().to_string(), "fake store: forbidden");
}

#[tokio::test(start_paused = true)]
async fn worker_slots_bound_concurrent_takes_and_stages_are_timed() {
    let store = Arc::new(FakeStore {
        take_latency: Duration::from_millis(10),
        ..FakeStore::with_pool(8)
    });
    let rt = Arc::new(FakeRuntime {
        latency: Duration::from_millis(4),
        ..FakeRuntime::default()
    });
    let e = Arc::new(engine(rt, 2, None));
    let c = Arc::new(candidates(&store, 0));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (e, c, store) = (e.clone(), c.clone(), store.clone());
            tokio::spawn(async move { e.attempt(&*store, &c, &opts()).await })
        })
        .collect();
    let mut reports = Vec::new();
    for t in tasks {
        reports.push(t.await.unwrap());
    }
    assert_eq!(store.most_takes_at_once.load(Ordering::SeqCst), 2);
    assert!(reports.iter().all(|r| r.outcome.is_ok()));
    for r in &reports {
        assert_eq!(r.timings.take, Duration::from_millis(10));
        assert_eq!(r.timings.init, Duration::from_millis(4));
        assert_eq!(r.timings.wait_ready, Duration::ZERO);
    }
    // Slots are freed once the take is done: the last pair waited for three pairs of takes.
    let most_waited = reports.iter().map(|r| r.timings.pick).max().unwrap();
    assert_eq!(most_waited, Duration::from_millis(30));
    let stages: Vec<&str> = reports[0].timings.stages().map(|(s, _)| s).collect();
    assert!(
        stages.contains(&"take") && stages.contains(&"init") && !stages.contains(&"wait_ready")
    );
}
