//! The JSON the E2B SDK sends and parses (`reference/e2b-protocol.md` §3.2–3.3), and how domain
//! records are rendered into it.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::extensions::SANDBOX_IP_KEY;
use crate::keys::{KeyRecord, TeamInfo};
use crate::model::{
    LogLine, MetricSample, OnTimeout, SandboxRecord, SnapshotRecord, Team, TemplateRecord,
};

/// E2B's constant client id.
pub const CLIENT_ID: &str = "6532622b";
/// `endAt` of a sandbox that never times out (upstream's zero time).
pub const NEVER: &str = "0001-01-01T00:00:00Z";

/// `POST /sandboxes` (SDK ≤ 2.50) and `POST /v2/sandboxes`. Unknown fields are ignored, as
/// E2B's API does.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct NewSandbox {
    #[serde(rename = "templateID")]
    pub template_id: Option<String>,
    pub timeout: Option<i64>,
    pub auto_pause: Option<bool>,
    pub auto_pause_memory: Option<bool>,
    pub auto_resume: Option<AutoResume>,
    #[serde(rename = "allow_internet_access", alias = "allowInternetAccess")]
    pub allow_internet_access: Option<bool>,
    pub network: Option<Value>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub env_vars: Option<BTreeMap<String, String>>,
    pub secure: Option<bool>,
    pub volume_mounts: Option<Vec<Value>>,
    pub mcp: Option<Value>,
}

/// `autoResume`: `{"enabled": bool}` (also accepted as a bare bool).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum AutoResume {
    Flag(bool),
    Object { enabled: bool },
}

impl AutoResume {
    pub fn enabled(&self) -> bool {
        match self {
            AutoResume::Flag(b) | AutoResume::Object { enabled: b } => *b,
        }
    }
}

/// Bodies that carry only a timeout (connect, timeout, resume).
#[derive(Debug, Deserialize, Default)]
pub struct TimeoutBody {
    pub timeout: Option<i64>,
}

/// `POST /sandboxes/{id}/refreshes`.
#[derive(Debug, Deserialize, Default)]
pub struct RefreshBody {
    pub duration: Option<i64>,
}

/// `POST /sandboxes/{id}/snapshots`.
#[derive(Debug, Deserialize, Default)]
pub struct SnapshotBody {
    pub name: Option<String>,
}

/// `POST /api-keys` (strict: unknown fields are a 400, as upstream).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewApiKey {
    pub name: Option<String>,
    pub team_name: Option<String>,
}

/// `PATCH /api-keys/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateApiKey {
    pub name: Option<String>,
}

fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn end_at(r: &SandboxRecord) -> String {
    r.end_at.map(rfc3339).unwrap_or_else(|| NEVER.to_string())
}

/// Metadata as responses show it: the user's metadata, labels as plain keys, and the sandbox IP
/// when the create asked for it.
fn metadata(r: &SandboxRecord) -> BTreeMap<String, String> {
    let mut m = r.metadata.clone();
    for (k, v) in &r.labels {
        m.insert(k.clone(), v.clone());
    }
    if r.return_ip
        && let Some(ip) = r.ip
    {
        m.insert(SANDBOX_IP_KEY.to_string(), ip.to_string());
    }
    m
}

/// `Sandbox` (create and connect).
pub fn sandbox(r: &SandboxRecord, domain: Option<&str>) -> Value {
    let mut v = json!({
        "templateID": r.template_id,
        "sandboxID": r.id.as_str(),
        "clientID": CLIENT_ID,
        "envdVersion": r.envd_version,
        "trafficAccessToken": null,
        "domain": domain,
    });
    if let Some(t) = &r.envd_access_token {
        v["envdAccessToken"] = json!(t);
    }
    if let Some(a) = &r.alias {
        v["alias"] = json!(a);
    }
    v
}

/// `ListedSandbox` (list items).
pub fn listed(r: &SandboxRecord) -> Value {
    let mut v = json!({
        "templateID": r.template_id,
        "sandboxID": r.id.as_str(),
        "clientID": CLIENT_ID,
        "startedAt": rfc3339(r.started_at),
        "endAt": end_at(r),
        "envdVersion": r.envd_version,
        "cpuCount": r.cpu_count,
        "memoryMB": r.memory_mb,
        "diskSizeMB": r.disk_size_mb,
        "state": r.state.as_str(),
        "metadata": metadata(r),
    });
    if let Some(a) = &r.alias {
        v["alias"] = json!(a);
    }
    v
}

/// `SandboxDetail` (get).
pub fn detail(r: &SandboxRecord, domain: Option<&str>) -> Value {
    let mut v = listed(r);
    v["domain"] = json!(domain);
    v["allowInternetAccess"] = json!(r.allow_internet_access);
    v["lifecycle"] = json!({
        "autoResume": r.lifecycle.auto_resume,
        "onTimeout": match r.lifecycle.on_timeout { OnTimeout::Kill => "kill", OnTimeout::Pause => "pause" },
    });
    if let Some(t) = &r.envd_access_token {
        v["envdAccessToken"] = json!(t);
    }
    v
}

/// `SandboxMetric`.
pub fn metric(m: &MetricSample) -> Value {
    json!({
        "timestamp": rfc3339(m.timestamp),
        "timestampUnix": m.timestamp.as_second(),
        "cpuCount": m.cpu_count,
        "cpuUsedPct": m.cpu_used_pct,
        "memUsed": m.mem_used,
        "memTotal": m.mem_total,
        "memCache": m.mem_cache,
        "diskUsed": m.disk_used,
        "diskTotal": m.disk_total,
    })
}

/// A v2 log entry.
pub fn log_entry(l: &LogLine) -> Value {
    json!({
        "timestamp": rfc3339(l.timestamp),
        "level": l.level,
        "message": l.message,
        "fields": l.fields,
    })
}

/// The v1 logs body: plain lines and structured entries.
pub fn logs_v1(lines: &[LogLine]) -> Value {
    json!({
        "logs": lines.iter().map(|l| json!({"timestamp": rfc3339(l.timestamp), "line": l.message})).collect::<Vec<_>>(),
        "logEntries": lines.iter().map(log_entry).collect::<Vec<_>>(),
    })
}

pub fn snapshot(s: &SnapshotRecord) -> Value {
    json!({ "snapshotID": s.id, "names": s.names })
}

/// `TemplateInfo` (`GET /templates`).
pub fn template_info(t: &TemplateRecord) -> Value {
    let created = rfc3339(t.created_at);
    json!({
        "templateID": t.id,
        "buildID": t.id,
        "cpuCount": t.cpu_count,
        "memoryMB": t.memory_mb,
        "diskSizeMB": t.disk_size_mb,
        "public": t.public,
        "aliases": t.aliases,
        "names": t.aliases,
        "createdAt": created,
        "updatedAt": created,
        "createdBy": null,
        "lastSpawnedAt": null,
        "spawnCount": 0,
        "buildCount": 1,
        "envdVersion": t.envd_version,
        "buildStatus": "ready",
    })
}

/// `Template` (`GET /templates/{id}`).
pub fn template(t: &TemplateRecord) -> Value {
    let created = rfc3339(t.created_at);
    json!({
        "templateID": t.id,
        "public": t.public,
        "aliases": t.aliases,
        "names": t.aliases,
        "createdAt": created,
        "updatedAt": created,
        "lastSpawnedAt": null,
        "spawnCount": 0,
        "builds": [{
            "buildID": t.id,
            "status": "ready",
            "createdAt": created,
            "updatedAt": created,
            "finishedAt": created,
            "cpuCount": t.cpu_count,
            "memoryMB": t.memory_mb,
            "diskSizeMB": t.disk_size_mb,
            "envdVersion": t.envd_version,
        }],
    })
}

pub fn team(t: &TeamInfo) -> Value {
    json!({ "teamID": t.team.id, "name": t.team.name, "apiKey": "", "isDefault": t.is_default })
}

/// `TeamAPIKey`.
pub fn api_key(k: &KeyRecord) -> Value {
    json!({
        "id": k.id,
        "name": k.name,
        "mask": k.mask,
        "createdAt": rfc3339(k.created_at),
        "createdBy": k.created_by.as_ref().map(|id| json!({"id": id, "email": ""})),
        "lastUsed": null,
    })
}

/// `CreatedTeamAPIKey`: the only answer that holds the key's value.
pub fn created_api_key(k: &KeyRecord, team: &Team, raw: &str) -> Value {
    let mut v = api_key(k);
    v["key"] = json!(raw);
    v["team"] = json!({"id": team.id, "name": team.name});
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Lifecycle, SandboxId, SandboxState};

    fn record() -> SandboxRecord {
        SandboxRecord {
            id: SandboxId::parse("abc123").unwrap(),
            team_id: "t".into(),
            owner_key_id: "k".into(),
            template_id: "base".into(),
            alias: None,
            metadata: [("user".to_string(), "1".to_string())].into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            envd_access_token: Some("tok".into()),
            started_at: "2026-12-03T10:00:00Z".parse().unwrap(),
            end_at: None,
            state: SandboxState::Running,
            lifecycle: Lifecycle::default(),
            cpu_count: 2,
            memory_mb: 512,
            disk_size_mb: 1024,
            allow_internet_access: Some(true),
            ip: Some("127.1.0.9".parse().unwrap()),
            return_ip: true,
            envd_version: "0.6.13".into(),
        }
    }

    #[test]
    fn shapes_the_sdk_parses() {
        let r = record();
        let s = sandbox(&r, None);
        for k in ["templateID", "sandboxID", "clientID", "envdVersion"] {
            assert!(s.get(k).is_some(), "{k}");
        }
        assert_eq!(s["envdAccessToken"], "tok");
        let l = listed(&r);
        assert_eq!(l["endAt"], NEVER);
        assert_eq!(l["startedAt"], "2026-12-03T10:00:00.000Z");
        assert_eq!(l["state"], "running");
        assert_eq!(l["metadata"]["app"], "web");
        assert_eq!(l["metadata"][SANDBOX_IP_KEY], "127.1.0.9");
        assert!(l.get("envdAccessToken").is_none(), "lists carry no tokens");
        let d = detail(&r, Some("localhost"));
        assert_eq!(
            d["lifecycle"],
            json!({"autoResume": false, "onTimeout": "kill"})
        );
        assert_eq!(d["envdAccessToken"], "tok");
    }

    #[test]
    fn create_bodies_of_both_generations() {
        let v2: NewSandbox = serde_json::from_str(
            r#"{"templateID":"demo","timeout":120,"autoPause":true,"autoResume":{"enabled":true},"allow_internet_access":false,"metadata":{"a":"b"},"envVars":{"X":"1"},"unknown":[1]}"#,
        )
        .unwrap();
        assert_eq!(v2.template_id.as_deref(), Some("demo"));
        assert!(v2.auto_resume.unwrap().enabled());
        assert_eq!(v2.allow_internet_access, Some(false));
        let v1: NewSandbox =
            serde_json::from_str(r#"{"templateID":"base","timeout":300,"secure":true}"#).unwrap();
        assert_eq!(v1.secure, Some(true));
        assert!(serde_json::from_str::<NewSandbox>(r#"{"templateID":5}"#).is_err());
    }
}
