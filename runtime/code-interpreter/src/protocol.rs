//! The HTTP API of the `e2b-code-interpreter` SDK as plain data: request bodies and their
//! validation, the NDJSON lines of `POST /execute`, and the mapping of Jupyter messages to those
//! lines (`CellTracker`). Nothing here does I/O, so all of it is tested without a kernel.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A request that the API refuses with 400, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

/// `POST /execute` body, as the SDK sends it:
/// `{"code": str, "context_id": str|null, "language": str|null, "env_vars": {..}|null}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ExecuteRequest {
    pub code: String,
    #[serde(default)]
    pub context_id: Option<String>,
    #[serde(default)]
    pub language: Option<String>,
    #[serde(default)]
    pub env_vars: Option<BTreeMap<String, String>>,
}

/// Which context an execution runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An existing context by id.
    Context(String),
    /// The default context of a (normalized) language.
    Language(String),
}

impl ExecuteRequest {
    /// Parses and validates a body: a JSON object with a string `code`, at most one of
    /// `context_id` and `language`, and env var names a shell would accept.
    pub fn parse(body: &[u8]) -> Result<Self, BadRequest> {
        let req: Self = parse_object(body)?;
        if req.context_id.is_some() && req.language.is_some() {
            return Err(BadRequest(
                "only one of context_id or language can be provided".into(),
            ));
        }
        if let Some(vars) = &req.env_vars {
            for name in vars.keys() {
                check_env_name(name)?;
            }
        }
        Ok(req)
    }

    pub fn target(&self) -> Target {
        match (&self.context_id, &self.language) {
            (Some(id), _) => Target::Context(id.clone()),
            (None, lang) => Target::Language(normalize_language(lang.as_deref())),
        }
    }

    /// The call's env vars (empty when none were given).
    pub fn env_vars(&self) -> BTreeMap<String, String> {
        self.env_vars.clone().unwrap_or_default()
    }
}

/// `POST /contexts` body: `{"language"?: str, "cwd"?: str}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CreateContextRequest {
    #[serde(default)]
    pub language: Option<String>,
    #[serde(default)]
    pub cwd: Option<String>,
}

impl CreateContextRequest {
    /// An empty body is an empty request (the SDK always sends a JSON object, other clients
    /// may send nothing).
    pub fn parse(body: &[u8]) -> Result<Self, BadRequest> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        parse_object(body)
    }
}

/// A context as the API shows it: `{"id", "language", "cwd"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContextInfo {
    pub id: String,
    pub language: String,
    pub cwd: String,
}

fn parse_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, BadRequest> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| BadRequest(format!("the body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(BadRequest("the body must be a JSON object".into()));
    }
    serde_json::from_value(value).map_err(|e| BadRequest(format!("invalid request: {e}")))
}

/// Env var names are what a shell accepts (`[A-Za-z_][A-Za-z0-9_]*`): the names end up in
/// code run by the kernel, so nothing else may pass.
pub fn check_env_name(name: &str) -> Result<(), BadRequest> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(BadRequest(format!("invalid env var name {name:?}")))
    }
}

/// The SDK's language names to one spelling: none is Python, case and spaces do not matter,
/// and the short names E2B accepts (`js`, `ts`) are spelled out.
pub fn normalize_language(language: Option<&str>) -> String {
    let lang = language
        .map(|l| l.trim().to_ascii_lowercase())
        .unwrap_or_default();
    match lang.as_str() {
        "" | "py" | "python3" | "ipython" => "python".into(),
        "js" => "javascript".into(),
        "ts" => "typescript".into(),
        "sh" | "shell" => "bash".into(),
        _ => lang,
    }
}

/// How a kernel's language sets and unsets environment variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvSyntax {
    /// `os.environ` (ipykernel).
    Python,
    /// `export` / `unset` (bash_kernel).
    Bash,
}

impl EnvSyntax {
    pub fn for_language(language: &str) -> Option<Self> {
        match language {
            "python" => Some(Self::Python),
            "bash" => Some(Self::Bash),
            _ => None,
        }
    }

    /// Code that sets `vars` in the kernel's process environment (so subprocesses see them
    /// too); `None` when there is nothing to set. Names must have passed `check_env_name`.
    pub fn set_code(self, vars: &BTreeMap<String, String>) -> Option<String> {
        if vars.is_empty() {
            return None;
        }
        Some(match self {
            // A JSON object of strings is a valid Python dict literal.
            Self::Python => format!(
                "__import__('os').environ.update({})",
                serde_json::to_string(vars).unwrap_or_else(|_| "{}".into())
            ),
            Self::Bash => vars
                .iter()
                .map(|(k, v)| format!("export {k}={}", shell_quote(v)))
                .collect::<Vec<_>>()
                .join("\n"),
        })
    }

    /// Code that undoes a call's `vars`: each goes back to its sandbox-wide value (`globals`)
    /// or is removed. `None` when there is nothing to undo.
    pub fn reset_code(
        self,
        vars: &BTreeMap<String, String>,
        globals: &BTreeMap<String, String>,
    ) -> Option<String> {
        if vars.is_empty() {
            return None;
        }
        let restore: BTreeMap<String, String> = vars
            .keys()
            .filter_map(|k| globals.get(k).map(|v| (k.clone(), v.clone())))
            .collect();
        let remove: Vec<&String> = vars.keys().filter(|k| !globals.contains_key(*k)).collect();
        Some(match self {
            Self::Python => {
                let mut parts = Vec::new();
                if let Some(set) = self.set_code(&restore) {
                    parts.push(set);
                }
                if !remove.is_empty() {
                    parts.push(format!(
                        "[__import__('os').environ.pop(k, None) for k in {}]",
                        serde_json::to_string(&remove).unwrap_or_else(|_| "[]".into())
                    ));
                }
                parts.join("\n")
            }
            Self::Bash => {
                let mut parts = Vec::new();
                if let Some(set) = self.set_code(&restore) {
                    parts.push(set);
                }
                if !remove.is_empty() {
                    parts.push(format!(
                        "unset {}",
                        remove
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(" ")
                    ));
                }
                parts.join("\n")
            }
        })
    }
}

/// Single-quotes a value for bash.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// One line of the `POST /execute` stream (one JSON object per line, as the SDK parses it).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputLine {
    Stdout {
        text: String,
        timestamp: String,
    },
    Stderr {
        text: String,
        timestamp: String,
    },
    Result(Box<ResultData>),
    Error {
        name: String,
        value: String,
        traceback: String,
    },
    NumberOfExecutions {
        execution_count: usize,
    },
    EndOfExecution,
}

impl OutputLine {
    /// The line as bytes, newline included.
    pub fn to_bytes(&self) -> bytes::Bytes {
        let mut v = serde_json::to_vec(self).unwrap_or_else(|_| br#"{"type":"error"}"#.to_vec());
        v.push(b'\n');
        v.into()
    }

    pub fn error(name: &str, value: impl Into<String>) -> Self {
        Self::Error {
            name: name.into(),
            value: value.into(),
            traceback: String::new(),
        }
    }
}

/// A `result` line: every MIME representation of a displayed value, under the SDK's names.
/// Representations without a name of their own stay in `extra`, keyed by MIME type.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ResultData {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub markdown: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub svg: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub png: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jpeg: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pdf: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub javascript: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chart: Option<Value>,
    pub is_main_result: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra: Option<Map<String, Value>>,
}

impl ResultData {
    /// Maps a Jupyter MIME bundle (the `data` of `display_data` / `execute_result`) to a
    /// result. `text/plain` of a string value loses its quotes (`'abc'` → `abc`), as E2B's
    /// server does; text given as a list of lines (the notebook form) is joined.
    pub fn from_bundle(bundle: &Map<String, Value>, is_main_result: bool) -> Self {
        let mut r = Self {
            is_main_result,
            ..Self::default()
        };
        let mut extra = Map::new();
        for (mime, value) in bundle {
            let text = || as_text(value);
            match mime.as_str() {
                "text/plain" => r.text = text().map(|t| strip_quotes(&t).to_string()),
                "text/html" => r.html = text(),
                "text/markdown" => r.markdown = text(),
                "image/svg+xml" => r.svg = text(),
                "image/png" => r.png = text(),
                "image/jpeg" => r.jpeg = text(),
                "application/pdf" => r.pdf = text(),
                "text/latex" => r.latex = text(),
                "application/javascript" => r.javascript = text(),
                "application/json" => r.json = Some(value.clone()),
                "e2b/data" => r.data = Some(value.clone()),
                "e2b/chart" => r.chart = Some(value.clone()),
                _ => {
                    extra.insert(mime.clone(), value.clone());
                }
            }
        }
        if !extra.is_empty() {
            r.extra = Some(extra);
        }
        r
    }
}

/// A string, or a list of strings (joined).
fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(parts.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

fn strip_quotes(text: &str) -> &str {
    let quoted = text.len() >= 2
        && ((text.starts_with('\'') && text.ends_with('\''))
            || (text.starts_with('"') && text.ends_with('"')));
    if quoted {
        &text[1..text.len() - 1]
    } else {
        text
    }
}

/// Jupyter's timestamps as E2B's server writes them (Python's `isoformat()` of an aware UTC
/// datetime).
pub fn timestamp(date: &DateTime<Utc>) -> String {
    date.to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// A message from a kernel, as much of it as this service reads. Content stays JSON: kernels
/// differ in what they leave out (bash_kernel's `kernel_info_reply` has no language version),
/// and a message that a strict schema refuses must still end a cell.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub msg_type: String,
    /// `msg_id` of the request this answers (routing key).
    pub parent_id: Option<String>,
    pub date: DateTime<Utc>,
    pub content: Value,
}

impl Incoming {
    /// Decodes the JSON frames of a (signature-checked) message: header, parent header,
    /// metadata, content.
    pub fn decode(frames: &[bytes::Bytes]) -> Result<Self, String> {
        let [header, parent, _metadata, content, ..] = frames else {
            return Err(format!("{} JSON frames, 4 expected", frames.len()));
        };
        let header: Value = serde_json::from_slice(header).map_err(|e| format!("header: {e}"))?;
        let msg_type = header
            .get("msg_type")
            .and_then(Value::as_str)
            .ok_or("header without msg_type")?
            .to_string();
        let date = header
            .get("date")
            .and_then(Value::as_str)
            .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_else(Utc::now);
        let parent_id = serde_json::from_slice::<Value>(parent)
            .ok()
            .and_then(|p| p.get("msg_id").and_then(Value::as_str).map(str::to_string))
            .filter(|id| !id.is_empty());
        let content: Value =
            serde_json::from_slice(content).map_err(|e| format!("{msg_type} content: {e}"))?;
        Ok(Self {
            msg_type,
            parent_id,
            date,
            content,
        })
    }

    fn str_field(&self, name: &str) -> String {
        self.content
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }

    /// `traceback` as one string, lines joined with newlines.
    fn traceback(&self) -> String {
        match self.content.get("traceback") {
            Some(Value::Array(lines)) => lines
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("\n"),
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        }
    }
}

/// Follows one `execute_request` through the messages that answer it (IOPub messages and the
/// shell's `execute_reply`, whose relative order the protocol does not fix): what each means
/// for the client, and when the cell is over (both the `idle` status and the reply seen).
#[derive(Debug, Default)]
pub struct CellTracker {
    started: bool,
    idle: bool,
    replied: bool,
    errored: bool,
}

impl CellTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// True once the kernel is idle after the request and its reply arrived.
    pub fn is_done(&self) -> bool {
        self.idle && self.replied
    }

    /// True once the kernel took the cell (`execute_input`): an interrupt before that would
    /// hit the kernel's own message loop, not the cell.
    pub fn started(&self) -> bool {
        self.started
    }

    /// Whether an interrupt would still meet the cell's code: it started and has not failed
    /// or finished (a later SIGINT would hit the kernel's own loop, or the next cell).
    pub fn interruptible(&self) -> bool {
        self.started && !self.errored && !self.idle && !self.replied
    }

    /// Whether an error was reported for this cell.
    pub fn errored(&self) -> bool {
        self.errored
    }

    /// The line (if any) that a message of this request becomes.
    pub fn on_message(&mut self, msg: &Incoming) -> Option<OutputLine> {
        let c = &msg.content;
        match msg.msg_type.as_str() {
            "execute_input" => {
                self.started = true;
                c.get("execution_count").and_then(Value::as_u64).map(|n| {
                    OutputLine::NumberOfExecutions {
                        execution_count: n as usize,
                    }
                })
            }
            "stream" => {
                let text = as_text(c.get("text")?)?;
                let timestamp = timestamp(&msg.date);
                match c.get("name").and_then(Value::as_str) {
                    Some("stderr") => Some(OutputLine::Stderr { text, timestamp }),
                    _ => Some(OutputLine::Stdout { text, timestamp }),
                }
            }
            kind @ ("display_data" | "execute_result") => {
                let empty = Map::new();
                let bundle = c.get("data").and_then(Value::as_object).unwrap_or(&empty);
                Some(OutputLine::Result(Box::new(ResultData::from_bundle(
                    bundle,
                    kind == "execute_result",
                ))))
            }
            "error" => self.error(
                msg.str_field("ename"),
                msg.str_field("evalue"),
                msg.traceback(),
            ),
            "status" => {
                if c.get("execution_state").and_then(Value::as_str) == Some("idle") {
                    self.idle = true;
                }
                None
            }
            "execute_reply" => {
                self.replied = true;
                match c.get("status").and_then(Value::as_str) {
                    Some("error") => {
                        let name = msg.str_field("ename");
                        self.error(
                            if name.is_empty() {
                                "Error".into()
                            } else {
                                name
                            },
                            msg.str_field("evalue"),
                            msg.traceback(),
                        )
                    }
                    Some("aborted" | "abort") => self.error(
                        "ExecutionAborted".into(),
                        "Execution was aborted".into(),
                        String::new(),
                    ),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// One error per cell: ipykernel reports it on IOPub and again in the reply.
    fn error(&mut self, name: String, value: String, traceback: String) -> Option<OutputLine> {
        if std::mem::replace(&mut self.errored, true) {
            return None;
        }
        Some(OutputLine::Error {
            name,
            value,
            traceback,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line(l: &OutputLine) -> Value {
        let b = l.to_bytes();
        assert_eq!(b.last(), Some(&b'\n'));
        assert_eq!(b.iter().filter(|c| **c == b'\n').count(), 1, "one line");
        serde_json::from_slice(&b).unwrap()
    }

    /// A kernel message as ipykernel sends it.
    fn msg(msg_type: &str, content: Value) -> Incoming {
        let frames: Vec<bytes::Bytes> = [
            json!({"msg_id": "m1", "msg_type": msg_type, "session": "s", "username": "u",
                   "version": "5.3", "date": "2026-12-03T10:00:00.123456Z"}),
            json!({"msg_id": "req-1", "msg_type": "execute_request"}),
            json!({}),
            content,
        ]
        .iter()
        .map(|v| serde_json::to_vec(v).unwrap().into())
        .collect();
        Incoming::decode(&frames).unwrap()
    }

    fn bundle(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn execute_requests_as_the_sdk_sends_them() {
        let r = ExecuteRequest::parse(
            br#"{"code":"1+1","context_id":null,"language":null,"env_vars":null}"#,
        )
        .unwrap();
        assert_eq!(r.code, "1+1");
        assert_eq!(r.target(), Target::Language("python".into()));
        assert!(r.env_vars().is_empty());

        let r = ExecuteRequest::parse(
            br#"{"code":"x","context_id":"c1","env_vars":{"A_1":"v"},"extra":1}"#,
        )
        .unwrap();
        assert_eq!(r.target(), Target::Context("c1".into()));
        assert_eq!(r.env_vars().get("A_1").map(String::as_str), Some("v"));

        let r = ExecuteRequest::parse(br#"{"code":"x","language":" Bash "}"#).unwrap();
        assert_eq!(r.target(), Target::Language("bash".into()));
    }

    #[test]
    fn bad_execute_requests_say_why() {
        for (body, want) in [
            (&b"{not json"[..], "not valid JSON"),
            (b"[]", "JSON object"),
            (b"null", "JSON object"),
            (b"", "not valid JSON"),
            (b"{}", "missing field `code`"),
            (br#"{"code":1}"#, "invalid type"),
            (
                br#"{"code":"x","context_id":"a","language":"python"}"#,
                "only one of",
            ),
            (br#"{"code":"x","env_vars":{"A":1}}"#, "invalid type"),
            (
                br#"{"code":"x","env_vars":{"A-B":"1"}}"#,
                "invalid env var name",
            ),
            (
                br#"{"code":"x","env_vars":{"1A":"1"}}"#,
                "invalid env var name",
            ),
            (
                br#"{"code":"x","env_vars":{"":"1"}}"#,
                "invalid env var name",
            ),
            (
                br#"{"code":"x","env_vars":{"A;rm":"1"}}"#,
                "invalid env var name",
            ),
        ] {
            let err = ExecuteRequest::parse(body).unwrap_err();
            assert!(err.0.contains(want), "{body:?}: {err}");
        }
    }

    #[test]
    fn create_context_requests() {
        assert_eq!(
            CreateContextRequest::parse(b"").unwrap(),
            CreateContextRequest::default()
        );
        let r = CreateContextRequest::parse(br#"{"language":"python","cwd":"/tmp"}"#).unwrap();
        assert_eq!(r.cwd.as_deref(), Some("/tmp"));
        assert!(CreateContextRequest::parse(b"[1]").is_err());
        assert!(CreateContextRequest::parse(br#"{"cwd":5}"#).is_err());
    }

    #[test]
    fn languages_are_normalized() {
        for (given, want) in [
            (None, "python"),
            (Some(""), "python"),
            (Some("Python"), "python"),
            (Some("python3"), "python"),
            (Some("js"), "javascript"),
            (Some("TS"), "typescript"),
            (Some("bash"), "bash"),
            (Some("r"), "r"),
        ] {
            assert_eq!(normalize_language(given), want, "{given:?}");
        }
    }

    #[test]
    fn env_code_for_python() {
        let vars = BTreeMap::from([
            ("A".to_string(), "it's \"x\"\n\\".to_string()),
            ("B".to_string(), "2".to_string()),
        ]);
        let set = EnvSyntax::Python.set_code(&vars).unwrap();
        assert_eq!(
            set,
            r#"__import__('os').environ.update({"A":"it's \"x\"\n\\","B":"2"})"#
        );
        let globals = BTreeMap::from([("B".to_string(), "g".to_string())]);
        let reset = EnvSyntax::Python.reset_code(&vars, &globals).unwrap();
        assert_eq!(
            reset,
            "__import__('os').environ.update({\"B\":\"g\"})\n[__import__('os').environ.pop(k, None) for k in [\"A\"]]"
        );
        assert!(EnvSyntax::Python.set_code(&BTreeMap::new()).is_none());
        assert!(
            EnvSyntax::Python
                .reset_code(&BTreeMap::new(), &globals)
                .is_none()
        );
    }

    #[test]
    fn env_code_for_bash() {
        let vars = BTreeMap::from([("A".to_string(), "it's $HOME".to_string())]);
        assert_eq!(
            EnvSyntax::Bash.set_code(&vars).unwrap(),
            r"export A='it'\''s $HOME'"
        );
        assert_eq!(
            EnvSyntax::Bash.reset_code(&vars, &BTreeMap::new()).unwrap(),
            "unset A"
        );
        assert_eq!(EnvSyntax::for_language("bash"), Some(EnvSyntax::Bash));
        assert_eq!(EnvSyntax::for_language("r"), None);
    }

    #[test]
    fn results_keep_every_representation() {
        let b = bundle(json!({
            "text/plain": "'abc'",
            "text/html": ["<b>", "x</b>"],
            "text/markdown": "**x**",
            "image/svg+xml": "<svg/>",
            "image/png": "iVBOR",
            "image/jpeg": "/9j/",
            "application/pdf": "JVBER",
            "text/latex": "$x$",
            "application/json": {"a": [1, 2]},
            "application/javascript": "alert(1)",
            "e2b/data": {"a": [1, 2]},
            "e2b/chart": {"type": "line", "title": "t", "elements": []},
            "image/gif": "R0lG",
            "application/vnd.custom+json": {"k": 1}
        }));
        let v = line(&OutputLine::Result(Box::new(ResultData::from_bundle(
            &b, true,
        ))));
        assert_eq!(v["type"], "result");
        assert_eq!(v["text"], "abc");
        assert_eq!(v["html"], "<b>x</b>");
        assert_eq!(v["markdown"], "**x**");
        assert_eq!(v["svg"], "<svg/>");
        assert_eq!(v["png"], "iVBOR");
        assert_eq!(v["jpeg"], "/9j/");
        assert_eq!(v["pdf"], "JVBER");
        assert_eq!(v["latex"], "$x$");
        assert_eq!(v["json"], json!({"a": [1, 2]}));
        assert_eq!(v["javascript"], "alert(1)");
        assert_eq!(v["data"], json!({"a": [1, 2]}));
        assert_eq!(v["chart"]["type"], "line");
        assert_eq!(v["is_main_result"], true);
        assert_eq!(
            v["extra"],
            json!({"image/gif": "R0lG", "application/vnd.custom+json": {"k": 1}})
        );
    }

    #[test]
    fn results_leave_out_what_is_absent() {
        let v = line(&OutputLine::Result(Box::new(ResultData::from_bundle(
            &bundle(json!({"text/plain": "2"})),
            false,
        ))));
        assert_eq!(
            v,
            json!({"type": "result", "text": "2", "is_main_result": false})
        );
        for (given, want) in [("\"q\"", "q"), ("'", "'"), ("''", ""), ("'a\"", "'a\"")] {
            let r = ResultData::from_bundle(&bundle(json!({ "text/plain": given })), true);
            assert_eq!(r.text.as_deref(), Some(want), "{given}");
        }
    }

    #[test]
    fn messages_decode_leniently() {
        let m = msg(
            "kernel_info_reply",
            json!({"status": "ok", "language_info": {"name": "bash"}}),
        );
        assert_eq!(m.msg_type, "kernel_info_reply");
        assert_eq!(m.parent_id.as_deref(), Some("req-1"));
        assert_eq!(timestamp(&m.date), "2026-12-03T10:00:00.123456+00:00");

        // No parent (a kernel's own message), no date.
        let frames: Vec<bytes::Bytes> = [&br#"{"msg_type":"status"}"#[..], b"{}", b"{}", b"{}"]
            .iter()
            .map(|b| bytes::Bytes::copy_from_slice(b))
            .collect();
        let m = Incoming::decode(&frames).unwrap();
        assert_eq!(m.parent_id, None);

        for bad in [&frames[..3], &vec![bytes::Bytes::from_static(b"{}"); 4][..]] {
            assert!(Incoming::decode(bad).is_err());
        }
        let mut broken = frames.clone();
        broken[3] = bytes::Bytes::from_static(b"{");
        assert!(Incoming::decode(&broken).is_err());
    }

    #[test]
    fn a_cell_maps_to_the_sdk_lines_and_ends_after_idle_and_reply() {
        let mut t = CellTracker::new();
        assert!(!t.started());
        assert_eq!(
            t.on_message(&msg("status", json!({"execution_state": "busy"}))),
            None
        );
        assert_eq!(
            line(
                &t.on_message(&msg(
                    "execute_input",
                    json!({"code": "x", "execution_count": 7})
                ))
                .unwrap()
            ),
            json!({"type": "number_of_executions", "execution_count": 7})
        );
        assert!(t.started() && t.interruptible());
        let v = line(
            &t.on_message(&msg("stream", json!({"name": "stdout", "text": "1\n"})))
                .unwrap(),
        );
        assert_eq!(
            v,
            json!({"type": "stdout", "text": "1\n", "timestamp": "2026-12-03T10:00:00.123456+00:00"})
        );
        let v = line(
            &t.on_message(&msg("stream", json!({"name": "stderr", "text": "w"})))
                .unwrap(),
        );
        assert_eq!(v["type"], "stderr");
        let v = line(
            &t.on_message(&msg(
                "display_data",
                json!({"data": {"text/plain": "d"}, "metadata": {}}),
            ))
            .unwrap(),
        );
        assert_eq!(v["is_main_result"], false);
        let v = line(
            &t.on_message(&msg(
                "execute_result",
                json!({"data": {"text/plain": "2"}, "execution_count": 7}),
            ))
            .unwrap(),
        );
        assert_eq!(v["is_main_result"], true);
        for ignored in ["clear_output", "update_display_data", "comm_open"] {
            assert_eq!(t.on_message(&msg(ignored, json!({}))), None);
        }
        assert_eq!(
            t.on_message(&msg("status", json!({"execution_state": "idle"}))),
            None
        );
        assert!(!t.is_done(), "the reply is still missing");
        assert_eq!(
            t.on_message(&msg(
                "execute_reply",
                json!({"status": "ok", "execution_count": 7})
            )),
            None
        );
        assert!(!t.interruptible());
        assert!(t.is_done());
        assert!(!t.errored());
    }

    #[test]
    fn the_reply_may_come_before_idle() {
        let mut t = CellTracker::new();
        t.on_message(&msg("execute_reply", json!({"status": "ok"})));
        assert!(!t.is_done());
        t.on_message(&msg("status", json!({"execution_state": "idle"})));
        assert!(t.is_done());
    }

    #[test]
    fn an_error_is_reported_once_with_its_traceback() {
        let mut t = CellTracker::new();
        let e = msg(
            "error",
            json!({"ename": "ZeroDivisionError", "evalue": "division by zero",
                                     "traceback": ["----", "Cell In[1], line 1"]}),
        );
        assert_eq!(
            line(&t.on_message(&e).unwrap()),
            json!({"type": "error", "name": "ZeroDivisionError", "value": "division by zero",
                   "traceback": "----\nCell In[1], line 1"})
        );
        let reply = msg(
            "execute_reply",
            json!({"status": "error", "ename": "ZeroDivisionError",
                                                "evalue": "division by zero", "traceback": []}),
        );
        assert_eq!(t.on_message(&reply), None, "not twice");
        assert!(t.errored());

        // A kernel that reports the error only in its reply (no IOPub `error`).
        let mut t = CellTracker::new();
        assert_eq!(
            line(&t.on_message(&reply).unwrap())["name"],
            "ZeroDivisionError"
        );
        let mut t = CellTracker::new();
        let v = line(
            &t.on_message(&msg("execute_reply", json!({"status": "error"})))
                .unwrap(),
        );
        assert_eq!(v["name"], "Error");
    }

    #[test]
    fn an_aborted_cell_is_an_error() {
        let mut t = CellTracker::new();
        let v = line(
            &t.on_message(&msg("execute_reply", json!({"status": "aborted"})))
                .unwrap(),
        );
        assert_eq!(v["name"], "ExecutionAborted");
    }

    #[test]
    fn end_and_error_lines() {
        assert_eq!(
            line(&OutputLine::EndOfExecution),
            json!({"type": "end_of_execution"})
        );
        assert_eq!(
            line(&OutputLine::error("ContextRestarting", "gone")),
            json!({"type": "error", "name": "ContextRestarting", "value": "gone", "traceback": ""})
        );
    }
}
