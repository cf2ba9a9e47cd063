//! The messages of `process.Process` and `filesystem.Filesystem` in proto3 canonical JSON.
//!
//! Requests are parsed leniently, as protojson does: lowerCamelCase and the original snake_case
//! names, `null` for a default, numbers as JSON numbers or strings, enums by name or number,
//! `bytes` as standard or URL-safe base64 with or without padding. Responses are written
//! canonically: lowerCamelCase, int64 as strings, enums by name, default values omitted.

use std::collections::BTreeMap;

use base64::Engine;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

// ---------- lenient scalar decoding ----------

fn de_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

fn de_opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)
}

fn de_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

fn de_opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Option::<bool>::deserialize(d)
}

fn number_from_value<E: de::Error>(v: Value) -> Result<Option<u64>, E> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u64)
            })
            .map(Some)
            .ok_or_else(|| E::custom(format!("expected a non-negative integer, got {n}"))),
        Value::String(s) => s
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| E::custom(format!("invalid integer {s:?}"))),
        other => Err(E::custom(format!("expected an integer, got {other}"))),
    }
}

fn de_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    Ok(de_opt_u32(d)?.unwrap_or(0))
}

fn de_opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let v = Value::deserialize(d)?;
    match number_from_value::<D::Error>(v)? {
        None => Ok(None),
        Some(n) => u32::try_from(n)
            .map(Some)
            .map_err(|_| de::Error::custom(format!("{n} does not fit uint32"))),
    }
}

fn de_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(Option::<BTreeMap<String, String>>::deserialize(d)?.unwrap_or_default())
}

fn de_vec_string<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// A nested message field: a JSON object or `null`. Serde's derive would also accept an array
/// for a struct (and read `[]` as "every field absent"); protojson does not.
fn de_msg<'de, D: Deserializer<'de>, T: de::DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None => Ok(None),
        Some(v @ Value::Object(_)) => T::deserialize(v).map(Some).map_err(de::Error::custom),
        Some(other) => Err(de::Error::custom(format!(
            "expected a JSON object for a message field, got {}",
            crate::connect::json_kind(&other)
        ))),
    }
}

/// Decodes proto `bytes` from base64 (standard or URL-safe, padding optional).
pub fn decode_b64(s: &str) -> Result<Vec<u8>, String> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const CFG: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, CFG);
    const URL: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, CFG);
    STD.decode(s)
        .or_else(|_| URL.decode(s))
        .map_err(|e| format!("invalid base64: {e}"))
}

/// Encodes proto `bytes` as standard padded base64.
pub fn encode_b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn de_opt_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) => decode_b64(&s).map(Some).map_err(de::Error::custom),
    }
}

// ---------- process.Process ----------

#[derive(Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct ProcessConfig {
    #[serde(deserialize_with = "de_string")]
    pub cmd: String,
    #[serde(deserialize_with = "de_vec_string")]
    pub args: Vec<String>,
    #[serde(deserialize_with = "de_map")]
    pub envs: BTreeMap<String, String>,
    #[serde(deserialize_with = "de_opt_string")]
    pub cwd: Option<String>,
}

impl ProcessConfig {
    pub fn to_json(&self) -> Value {
        let mut v = json!({ "cmd": self.cmd });
        if !self.args.is_empty() {
            v["args"] = json!(self.args);
        }
        if !self.envs.is_empty() {
            v["envs"] = json!(self.envs);
        }
        if let Some(cwd) = &self.cwd {
            v["cwd"] = json!(cwd);
        }
        v
    }
}

#[derive(Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(default)]
pub struct PtySize {
    #[serde(deserialize_with = "de_u32")]
    pub cols: u32,
    #[serde(deserialize_with = "de_u32")]
    pub rows: u32,
}

#[derive(Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(default)]
pub struct Pty {
    #[serde(deserialize_with = "de_msg")]
    pub size: Option<PtySize>,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default)]
pub struct StartRequest {
    #[serde(deserialize_with = "de_msg")]
    pub process: Option<ProcessConfig>,
    #[serde(deserialize_with = "de_msg")]
    pub pty: Option<Pty>,
    #[serde(deserialize_with = "de_opt_string")]
    pub tag: Option<String>,
    #[serde(deserialize_with = "de_opt_bool")]
    pub stdin: Option<bool>,
}

/// `ProcessSelector`: a pid or a tag.
#[derive(Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct ProcessSelector {
    #[serde(deserialize_with = "de_opt_u32")]
    pub pid: Option<u32>,
    #[serde(deserialize_with = "de_opt_string")]
    pub tag: Option<String>,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default)]
pub struct SelectorRequest {
    #[serde(deserialize_with = "de_msg")]
    pub process: Option<ProcessSelector>,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default)]
pub struct UpdateRequest {
    #[serde(deserialize_with = "de_msg")]
    pub process: Option<ProcessSelector>,
    #[serde(deserialize_with = "de_msg")]
    pub pty: Option<Pty>,
}

#[derive(Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct ProcessInput {
    #[serde(deserialize_with = "de_opt_bytes")]
    pub stdin: Option<Vec<u8>>,
    #[serde(deserialize_with = "de_opt_bytes")]
    pub pty: Option<Vec<u8>>,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default)]
pub struct SendInputRequest {
    #[serde(deserialize_with = "de_msg")]
    pub process: Option<ProcessSelector>,
    #[serde(deserialize_with = "de_msg")]
    pub input: Option<ProcessInput>,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default)]
pub struct StreamInputStart {
    #[serde(deserialize_with = "de_msg")]
    pub process: Option<ProcessSelector>,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default)]
pub struct StreamInputData {
    #[serde(deserialize_with = "de_msg")]
    pub input: Option<ProcessInput>,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default)]
pub struct StreamInputRequest {
    #[serde(deserialize_with = "de_msg")]
    pub start: Option<StreamInputStart>,
    #[serde(deserialize_with = "de_msg")]
    pub data: Option<StreamInputData>,
    #[serde(deserialize_with = "de_msg")]
    pub keepalive: Option<serde_json::Map<String, Value>>,
}

/// The `Signal` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Signal {
    #[default]
    Unspecified,
    Term,
    Kill,
    /// A number outside the enum (accepted by protojson, rejected by the service).
    Other(i64),
}

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Null => Signal::Unspecified,
            Value::String(s) => match s.as_str() {
                "SIGNAL_UNSPECIFIED" => Signal::Unspecified,
                "SIGNAL_SIGTERM" => Signal::Term,
                "SIGNAL_SIGKILL" => Signal::Kill,
                other => {
                    return Err(de::Error::custom(format!(
                        "unknown enum value {other:?} for process.Signal"
                    )));
                }
            },
            Value::Number(n) => match n.as_i64() {
                Some(0) => Signal::Unspecified,
                Some(15) => Signal::Term,
                Some(9) => Signal::Kill,
                Some(x) => Signal::Other(x),
                None => return Err(de::Error::custom("invalid process.Signal")),
            },
            other => return Err(de::Error::custom(format!("invalid process.Signal {other}"))),
        })
    }
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default)]
pub struct SendSignalRequest {
    #[serde(deserialize_with = "de_msg")]
    pub process: Option<ProcessSelector>,
    pub signal: Signal,
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    Stdout,
    Stderr,
    Pty,
}

impl OutputKind {
    pub fn field(self) -> &'static str {
        match self {
            OutputKind::Stdout => "stdout",
            OutputKind::Stderr => "stderr",
            OutputKind::Pty => "pty",
        }
    }
}

/// The `EndEvent` of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndEvent {
    pub exit_code: i32,
    pub exited: bool,
    pub status: String,
    pub error: Option<String>,
}

impl EndEvent {
    pub fn to_json(&self) -> Value {
        let mut v = json!({});
        if self.exit_code != 0 {
            v["exitCode"] = json!(self.exit_code);
        }
        if self.exited {
            v["exited"] = json!(true);
        }
        if !self.status.is_empty() {
            v["status"] = json!(self.status);
        }
        if let Some(e) = &self.error {
            v["error"] = json!(e);
        }
        v
    }
}

/// `{"event": {"start": {"pid": N}}}`
pub fn start_event(pid: u32) -> Value {
    json!({ "event": { "start": { "pid": pid } } })
}

/// `{"event": {"data": {"stdout": "<b64>"}}}`
pub fn data_event(kind: OutputKind, data: &[u8]) -> Value {
    json!({ "event": { "data": { kind.field(): encode_b64(data) } } })
}

/// `{"event": {"end": {...}}}`
pub fn end_event(end: &EndEvent) -> Value {
    json!({ "event": { "end": end.to_json() } })
}

/// `{"event": {"keepalive": {}}}`
pub fn keepalive_event() -> Value {
    json!({ "event": { "keepalive": {} } })
}

// ---------- filesystem.Filesystem ----------

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default)]
pub struct PathRequest {
    #[serde(deserialize_with = "de_string")]
    pub path: String,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default)]
pub struct MoveRequest {
    #[serde(deserialize_with = "de_string")]
    pub source: String,
    #[serde(deserialize_with = "de_string")]
    pub destination: String,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default)]
pub struct ListDirRequest {
    #[serde(deserialize_with = "de_string")]
    pub path: String,
    #[serde(deserialize_with = "de_u32")]
    pub depth: u32,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default)]
pub struct WatchRequest {
    #[serde(deserialize_with = "de_string")]
    pub path: String,
    #[serde(deserialize_with = "de_bool")]
    pub recursive: bool,
    #[serde(deserialize_with = "de_bool")]
    pub include_entry: bool,
    #[serde(deserialize_with = "de_bool")]
    pub allow_network_mounts: bool,
}

impl WatchRequest {
    /// Parses a watch request accepting both `includeEntry` and `include_entry`.
    pub fn parse(payload: &[u8]) -> Result<Self, crate::connect::RpcError> {
        let mut v: Value = serde_json::from_slice(payload).map_err(|e| {
            crate::connect::RpcError::invalid_argument(format!("invalid request message: {e}"))
        })?;
        if let Value::Object(map) = &mut v {
            for (camel, snake) in [
                ("includeEntry", "include_entry"),
                ("allowNetworkMounts", "allow_network_mounts"),
            ] {
                if let Some(x) = map.remove(camel) {
                    map.insert(snake.to_string(), x);
                }
            }
        }
        crate::connect::decode_value(v)
    }
}

/// A message without fields (`process.ListRequest`); unknown fields are ignored, as connect-go
/// does, but the body must still be a JSON object.
pub type EmptyMessage = serde_json::Map<String, Value>;

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default)]
pub struct WatcherIdRequest {
    #[serde(
        deserialize_with = "de_string",
        alias = "watcher_id",
        rename = "watcherId"
    )]
    pub watcher_id: String,
}

/// `FileType` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FileType {
    #[serde(rename = "FILE_TYPE_UNSPECIFIED")]
    Unspecified,
    #[serde(rename = "FILE_TYPE_FILE")]
    File,
    #[serde(rename = "FILE_TYPE_DIRECTORY")]
    Directory,
    #[serde(rename = "FILE_TYPE_SYMLINK")]
    Symlink,
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}
fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}
fn ser_i64_string<S: serde::Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

/// `EntryInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub file_type: FileType,
    pub path: String,
    #[serde(skip_serializing_if = "is_zero_i64", serialize_with = "ser_i64_string")]
    pub size: i64,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub mode: u32,
    pub permissions: String,
    pub owner: String,
    pub group: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modified_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "is_false")]
    pub is_symlink: bool,
}

/// `EventType` of a filesystem event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EventType {
    #[serde(rename = "EVENT_TYPE_CREATE")]
    Create,
    #[serde(rename = "EVENT_TYPE_WRITE")]
    Write,
    #[serde(rename = "EVENT_TYPE_REMOVE")]
    Remove,
    #[serde(rename = "EVENT_TYPE_RENAME")]
    Rename,
    #[serde(rename = "EVENT_TYPE_CHMOD")]
    Chmod,
}

/// `FilesystemEvent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FilesystemEvent {
    pub name: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<EntryInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_request_as_the_sdk_sends_it() {
        let r: StartRequest = serde_json::from_str(
            r#"{"process":{"cmd":"/bin/bash","args":["-l","-c","echo hi"],"envs":{"A":"1"},"cwd":"/tmp"},"stdin":false,"tag":null}"#,
        )
        .unwrap();
        let p = r.process.unwrap();
        assert_eq!(p.cmd, "/bin/bash");
        assert_eq!(p.args, vec!["-l", "-c", "echo hi"]);
        assert_eq!(p.envs.get("A").map(String::as_str), Some("1"));
        assert_eq!(p.cwd.as_deref(), Some("/tmp"));
        assert_eq!(r.stdin, Some(false));
        assert_eq!(r.tag, None);
        let pty: StartRequest = serde_json::from_str(
            r#"{"process":{"cmd":"x"},"pty":{"size":{"cols":"80","rows":24}}}"#,
        )
        .unwrap();
        assert_eq!(
            pty.pty.unwrap().size.unwrap(),
            PtySize { cols: 80, rows: 24 }
        );
        assert_eq!(pty.stdin, None);
    }

    #[test]
    fn selectors_inputs_and_signals() {
        let r: SendInputRequest =
            serde_json::from_str(r#"{"process":{"pid":"42"},"input":{"stdin":"aGk"}}"#).unwrap();
        assert_eq!(r.process.unwrap().pid, Some(42));
        assert_eq!(r.input.unwrap().stdin.unwrap(), b"hi");
        let s: SendSignalRequest =
            serde_json::from_str(r#"{"process":{"tag":"t"},"signal":"SIGNAL_SIGKILL"}"#).unwrap();
        assert_eq!(s.signal, Signal::Kill);
        let s: SendSignalRequest =
            serde_json::from_str(r#"{"process":{"pid":1},"signal":15}"#).unwrap();
        assert_eq!(s.signal, Signal::Term);
        assert!(serde_json::from_str::<SendSignalRequest>(r#"{"signal":"SIGHUP"}"#).is_err());
        assert!(serde_json::from_str::<SendInputRequest>(r#"{"process":{"pid":-1}}"#).is_err());
    }

    #[test]
    fn watch_request_both_spellings() {
        let a =
            WatchRequest::parse(br#"{"path":"/x","recursive":true,"includeEntry":true}"#).unwrap();
        assert!(a.recursive && a.include_entry && !a.allow_network_mounts);
        let b = WatchRequest::parse(br#"{"path":"/x","allow_network_mounts":true}"#).unwrap();
        assert!(b.allow_network_mounts);
        let w: WatcherIdRequest = serde_json::from_str(r#"{"watcherId":"w1"}"#).unwrap();
        assert_eq!(w.watcher_id, "w1");
        let w: WatcherIdRequest = serde_json::from_str(r#"{"watcher_id":"w2"}"#).unwrap();
        assert_eq!(w.watcher_id, "w2");
    }

    #[test]
    fn events_serialize_canonically() {
        assert_eq!(
            data_event(OutputKind::Stdout, b"hi\n"),
            json!({"event":{"data":{"stdout":"aGkK"}}})
        );
        let end = EndEvent {
            exit_code: 0,
            exited: true,
            status: "exit status 0".into(),
            error: None,
        };
        assert_eq!(
            end_event(&end),
            json!({"event":{"end":{"exited":true,"status":"exit status 0"}}})
        );
        let killed = EndEvent {
            exit_code: -1,
            exited: false,
            status: "signal: killed".into(),
            error: Some("signal: killed".into()),
        };
        assert_eq!(
            killed.to_json(),
            json!({"exitCode":-1,"status":"signal: killed","error":"signal: killed"})
        );
        let e = EntryInfo {
            name: "a".into(),
            file_type: FileType::File,
            path: "/a".into(),
            size: 11,
            mode: 0o644,
            permissions: "-rw-r--r--".into(),
            owner: "u".into(),
            group: "g".into(),
            modified_time: Some("2026-01-01T00:00:00Z".into()),
            symlink_target: None,
            metadata: BTreeMap::new(),
            is_symlink: false,
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"name":"a","type":"FILE_TYPE_FILE","path":"/a","size":"11","mode":420,"permissions":"-rw-r--r--",
                   "owner":"u","group":"g","modifiedTime":"2026-01-01T00:00:00Z"})
        );
    }
}
