//! Shared daemon state: defaults set by flags and `/init`, the access token, registries.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use crate::config::Config;
use crate::connect::RpcError;
use crate::metrics::Metrics;
use crate::users::{self, User};

/// Defaults applied when a request does not say otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    pub user: String,
    pub workdir: Option<PathBuf>,
    /// Sandbox-wide environment for every process.
    pub envs: BTreeMap<String, String>,
}

/// State shared by all requests.
#[derive(Debug)]
pub struct AppState {
    defaults: RwLock<Defaults>,
    token: RwLock<Option<String>>,
    /// Timestamp (ns since the epoch) of the newest `/init` applied.
    pub last_init: Mutex<Option<i128>>,
    /// Serialises `/init` requests.
    pub init_lock: tokio::sync::Mutex<()>,
    pub processes: crate::process::Registry,
    pub watchers: crate::watch::Registry,
    pub metrics: Metrics,
    pub cpu: crate::sysmetrics::CpuSampler,
    pub fds: FdBudget,
}

/// The open-file budget. The daemon raises its soft limit to the hard one (as Go programs like
/// envd do) and gives children the original back; work that holds descriptors for long
/// (processes, watchers) is refused once fewer than `reserve` remain, so that the daemon keeps
/// accepting and serving connections (health checks, kills, closes) when near the limit.
#[derive(Debug, Clone)]
pub struct FdBudget {
    pub limit: u64,
    pub reserve: u64,
    /// The limit children get (the one the daemon started with).
    pub child_limit: Option<libc::rlimit>,
}

impl FdBudget {
    pub fn at_start() -> FdBudget {
        let before = crate::sys::raise_nofile_limit().ok();
        let limit = crate::sys::nofile_limit()
            .map(|l| l.rlim_cur)
            .unwrap_or(1024);
        FdBudget {
            limit,
            reserve: (limit / 8).clamp(16, 256),
            child_limit: before.filter(|b| b.rlim_cur != limit),
        }
    }

    /// Admits work that opens `needed` descriptors for as long as it lives.
    pub fn admit(&self, needed: u64, what: &str) -> Result<(), RpcError> {
        let open = crate::sys::open_fd_count().unwrap_or(0) as u64;
        if open + needed + self.reserve > self.limit {
            return Err(RpcError::new(
                crate::connect::Code::ResourceExhausted,
                format!(
                    "cannot {what}: the daemon holds {open} of its {} open files and keeps {} for connections; \
                     end processes or watchers and try again",
                    self.limit, self.reserve
                ),
            ));
        }
        Ok(())
    }
}

impl AppState {
    /// Builds the state from the flags; an unknown `--default-user` is an error.
    pub fn new(config: &Config) -> Result<Arc<AppState>, String> {
        let user = match &config.default_user {
            Some(u) => {
                if users::lookup(u).is_none() {
                    return Err(format!("--default-user {u:?}: no such Unix user"));
                }
                u.clone()
            }
            None => {
                if users::lookup("user").is_some() {
                    "user".to_string()
                } else {
                    users::current_user().name
                }
            }
        };
        let mut envs = BTreeMap::new();
        envs.insert("E2B_SANDBOX".to_string(), "true".to_string());
        for (k, v) in config.env_pairs()? {
            envs.insert(k, v);
        }
        Ok(Arc::new(AppState {
            defaults: RwLock::new(Defaults {
                user,
                workdir: config.default_workdir.clone(),
                envs,
            }),
            token: RwLock::new(config.access_token.clone().filter(|t| !t.is_empty())),
            last_init: Mutex::new(None),
            init_lock: tokio::sync::Mutex::new(()),
            processes: crate::process::Registry::default(),
            watchers: crate::watch::Registry::default(),
            metrics: Metrics::new(),
            cpu: crate::sysmetrics::CpuSampler::default(),
            fds: FdBudget::at_start(),
        }))
    }

    pub fn defaults(&self) -> Defaults {
        self.defaults
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn update_defaults(&self, f: impl FnOnce(&mut Defaults)) {
        f(&mut self.defaults.write().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn token(&self) -> Option<String> {
        self.token.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_token(&self, token: Option<String>) {
        *self.token.write().unwrap_or_else(|e| e.into_inner()) = token;
    }

    /// Whether a request with this `X-Access-Token` value may pass (always, when no token is set).
    pub fn token_allows(&self, header: crate::signing::TokenHeader<'_>) -> bool {
        match self.token() {
            None => true,
            Some(t) => header.matches(&t),
        }
    }

    /// The user an RPC runs as: the one named in Basic auth, or the default user.
    pub fn rpc_user(&self, requested: Option<&str>) -> Result<User, RpcError> {
        match requested {
            Some(name) => users::lookup(name)
                .ok_or_else(|| RpcError::unauthenticated(format!("invalid username: '{name}'"))),
            None => {
                let name = self.defaults().user;
                users::lookup(&name).ok_or_else(|| {
                    RpcError::unauthenticated(format!("invalid default user: '{name}'"))
                })
            }
        }
    }
}
