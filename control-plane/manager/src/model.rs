//! The manager's domain: sandbox ids, teams and callers, what a create asks for, what a sandbox
//! is, and the errors a backend reports. Plain data, shared by the API layer and every backend;
//! nothing here knows HTTP or Kubernetes.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use jiff::Timestamp;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::extensions::Extensions;

/// A sandbox id: 20 lowercase letters and digits, E2B's shape. The SDK splits per-host URLs on
/// `-` (`<port>-<id>.<domain>`), so ids never contain one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SandboxId(String);

impl SandboxId {
    pub const LEN: usize = 20;

    /// A fresh random id.
    pub fn random() -> SandboxId {
        SandboxId(random_alnum(Self::LEN))
    }

    /// Accepts what a client names in a path: 1 to 64 lowercase letters and digits.
    pub fn parse(s: &str) -> Option<SandboxId> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        ok.then(|| SandboxId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SandboxId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        SandboxId::parse(&s).ok_or_else(|| format!("invalid sandbox id {s:?}"))
    }
}

impl From<SandboxId> for String {
    fn from(id: SandboxId) -> String {
        id.0
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `n` random characters from `[a-z0-9]`.
pub fn random_alnum(n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill(&mut buf[..]);
    hex::encode(buf)
}

/// A UUID-shaped random id (version 4 layout), for keys and teams.
pub fn random_uuid() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// A team: the unit of visibility. Every API key belongs to one; a sandbox belongs to the team
/// of the key that created it and is invisible (404) to other teams.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Team {
    pub id: String,
    pub name: String,
}

/// The authenticated caller of an API request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub key_id: String,
    pub team: Team,
    /// The admin team sees and manages every team's sandboxes and keys.
    pub admin: bool,
}

impl Caller {
    /// Whether this caller may see a sandbox of `team_id`.
    pub fn sees(&self, team_id: &str) -> bool {
        self.admin || self.team.id == team_id
    }
}

/// What a sandbox is doing, as the API reports it (the SDK accepts exactly these two).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    Running,
    Paused,
}

impl SandboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
        }
    }
}

/// What happens when a sandbox's timeout passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    #[default]
    Kill,
    Pause,
}

/// The sandbox's lifecycle options (`lifecycle=` of the SDK's create).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Lifecycle {
    pub on_timeout: OnTimeout,
    /// Recorded and reported; a local sandbox is resumed by `connect`, not by traffic.
    pub auto_resume: bool,
}

/// A validated create request.
#[derive(Clone, Debug)]
pub struct CreateSpec {
    pub caller: Caller,
    pub template_id: String,
    pub timeout: Duration,
    pub lifecycle: Lifecycle,
    /// User metadata (extension keys removed).
    pub metadata: BTreeMap<String, String>,
    /// Labels from `label:<k>` metadata keys.
    pub labels: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
    /// Whether the sandbox gets an envd access token (E2B's `secure`; default true).
    pub secure: bool,
    pub allow_internet_access: Option<bool>,
    pub network: Option<serde_json::Value>,
    pub extensions: Extensions,
    /// Volumes to mount into the sandbox (kube backend only), validated.
    pub mounts: Vec<sandbox_api::types::CsiMountConfig>,
}

/// A sandbox as every backend reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: SandboxId,
    pub team_id: String,
    pub owner_key_id: String,
    pub template_id: String,
    pub alias: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub envd_access_token: Option<String>,
    pub started_at: Timestamp,
    /// `None`: the sandbox never times out.
    pub end_at: Option<Timestamp>,
    pub state: SandboxState,
    pub lifecycle: Lifecycle,
    pub cpu_count: u32,
    pub memory_mb: u64,
    pub disk_size_mb: u64,
    /// What is enforced, not what was asked for.
    pub allow_internet_access: Option<bool>,
    pub ip: Option<IpAddr>,
    pub return_ip: bool,
    pub envd_version: String,
}

/// A snapshot of a sandbox's files, usable as a template id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub id: String,
    pub names: Vec<String>,
    pub team_id: String,
    pub owner_key_id: String,
    pub sandbox_id: SandboxId,
    pub template_id: String,
    pub created_at: Timestamp,
}

/// A template a sandbox can be created from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TemplateRecord {
    pub id: String,
    pub aliases: Vec<String>,
    pub cpu_count: u32,
    pub memory_mb: u64,
    pub disk_size_mb: u64,
    pub envd_version: String,
    pub created_at: Timestamp,
    pub public: bool,
}

/// One resource-usage sample of a sandbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricSample {
    pub timestamp: Timestamp,
    pub cpu_count: u32,
    pub cpu_used_pct: f64,
    pub mem_used: u64,
    pub mem_total: u64,
    pub mem_cache: u64,
    pub disk_used: u64,
    pub disk_total: u64,
}

/// One log line of a sandbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub timestamp: Timestamp,
    pub level: String,
    pub message: String,
    pub fields: BTreeMap<String, String>,
}

/// How `connect` found the sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connected {
    /// It was running (200); its timeout was extended, never shortened.
    Running,
    /// It was paused and has been resumed (201).
    Resumed,
}

/// What `pause` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paused {
    Now,
    Already,
}

/// A change of a sandbox's deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deadline {
    /// `POST /timeout`: the new deadline, earlier or later.
    Set(Timestamp),
    /// `connect` and refreshes: at least this late.
    AtLeast(Timestamp),
}

/// Why a backend could not do what was asked. Each maps to one documented status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    /// Transient: the client should retry after the given time.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after: Duration,
    },
    #[error("{0}")]
    Internal(String),
}

impl BackendError {
    pub fn sandbox_not_found(id: &SandboxId) -> Self {
        BackendError::NotFound(format!("sandbox {id} not found"))
    }
}

pub type BackendResult<T> = Result<T, BackendError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_e2b_shape() {
        let id = SandboxId::random();
        assert_eq!(id.as_str().len(), SandboxId::LEN);
        assert!(SandboxId::parse(id.as_str()).is_some());
        for bad in ["", "ABC", "a-b", "a/b", "a b", &"a".repeat(65)] {
            assert!(SandboxId::parse(bad).is_none(), "{bad:?}");
        }
        let u = random_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(u.matches('-').count(), 4);
    }

    #[test]
    fn visibility_is_per_team_and_admin_sees_all() {
        let team = |id: &str| Team {
            id: id.into(),
            name: id.into(),
        };
        let c = Caller {
            key_id: "k".into(),
            team: team("t1"),
            admin: false,
        };
        assert!(c.sees("t1") && !c.sees("t2"));
        let a = Caller { admin: true, ..c };
        assert!(a.sees("t2"));
    }
}
