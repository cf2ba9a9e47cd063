//! The MCP endpoint `/mcp`: Model Context Protocol over streamable HTTP (rmcp), stateless (no
//! sessions: every POST stands alone, so any manager replica can answer it), authenticated by
//! API key like the REST API (`X-API-Key`, or `Authorization: Bearer <key>`, which MCP clients
//! send). Its tools act as the key's team through the [`Backend`](crate::backend::Backend)
//! trait — another team's sandbox is "not found" — and reach a sandbox's runtime with
//! [`crate::envd`].
//!
//! Tools: `create_sandbox`, `kill_sandbox`, `run_command`, `read_file`, `write_file`,
//! `list_files`. A failure is a tool result with `isError: true` and a message saying what went
//! wrong, bad arguments included. Outputs are bounded: a whole result stays below
//! [`RESULT_LIMIT`] (command output and file contents are cut, listings shortened, and the
//! result says so), listings hold at most 1,000 entries.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use rmcp::handler::server::tool::IntoCallToolResult;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResponse, CallToolResult, ContentBlock};
use rmcp::schemars::JsonSchema;
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{Json, RoleServer, tool, tool_handler, tool_router};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::api::models::NewSandbox;
use crate::api::sandboxes::{DEFAULT_TIMEOUT_SECS, create_spec};
use crate::api::{AppCtx, authenticate};
use crate::envd::{self, CommandSpec, EnvdClient, EnvdError, Program, Target};
use crate::model::{BackendError, Caller, SandboxId, SandboxState};

/// Where the endpoint is mounted.
pub const PATH: &str = "/mcp";
/// How much of a command's stdout, and of its stderr, is kept from the runtime.
pub const OUTPUT_LIMIT: usize = 1 << 20;
/// How much of a file `read_file` reads.
pub const READ_LIMIT: usize = 1 << 20;
/// Largest serialized tool result: text is cut further so that a result (its structured
/// content plus the text copy of it) stays below the 1 MiB message limit MCP clients commonly
/// have (the Python SDK's SSE event limit).
pub const RESULT_LIMIT: usize = 900 << 10;
/// Largest content `write_file` accepts (bytes of UTF-8).
pub const WRITE_LIMIT: usize = 8 << 20;
/// Largest MCP request body (a `write_file` at the limit, JSON-escaped, fits).
pub const MAX_BODY_BYTES: usize = 4 * WRITE_LIMIT;
/// Default and largest `run_command` timeout, seconds.
pub const DEFAULT_COMMAND_TIMEOUT_SECS: u64 = 60;
pub const MAX_COMMAND_TIMEOUT_SECS: u64 = 3600;
/// Most entries `list_files` returns, and its deepest depth.
pub const MAX_LIST_ENTRIES: usize = 1000;
pub const MAX_LIST_DEPTH: u32 = 10;

/// The `/mcp` routes: the MCP service behind API-key authentication, with the API's request
/// logs and metrics. `shutdown` ends open MCP streams.
pub fn router(ctx: AppCtx, shutdown: CancellationToken) -> axum::Router {
    let envd = EnvdClient::default();
    let tools_ctx = ctx.clone();
    let config = StreamableHttpServerConfig::default()
        // Stateless: no session to keep, expire or share between replicas.
        .with_legacy_session_mode(false)
        // Every request is authenticated by API key, so the DNS-rebinding guard (a loopback
        // Host allow-list) is not needed, and would refuse the manager's real host names.
        .disable_allowed_hosts()
        .with_max_request_body_bytes(MAX_BODY_BYTES)
        .with_cancellation_token(shutdown);
    let service = StreamableHttpService::new(
        move || Ok(SandboxTools::new(tools_ctx.clone(), envd.clone())),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    axum::Router::new()
        .route_service(PATH, service)
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            require_caller,
        ))
        .layer(axum::middleware::from_fn_with_state(
            ctx,
            crate::api::observe,
        ))
}

/// Authenticates the request (401 JSON `{code,message}` otherwise) and hands the caller to the
/// tools in the request extensions.
async fn require_caller(State(ctx): State<AppCtx>, mut req: Request, next: Next) -> Response {
    match authenticate(&ctx, req.headers(), true).await {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// Why a tool failed; the message is what the client (often a model) reads.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{0}")]
    Backend(#[from] BackendError),
    #[error("{0}")]
    Envd(#[from] EnvdError),
    #[error("{0}")]
    Invalid(String),
    /// The command was killed at its timeout; what it wrote until then.
    #[error("the command did not finish within its timeout of {secs} s and was killed")]
    CommandTimedOut {
        secs: u64,
        output: Box<CommandOutput>,
    },
}

impl IntoCallToolResult for ToolError {
    fn into_call_tool_result(self) -> Result<CallToolResponse, rmcp::ErrorData> {
        let message = self.to_string();
        let result = match self {
            ToolError::CommandTimedOut { output, .. } => {
                let mut v = serde_json::to_value(*output).unwrap_or_default();
                v["error"] = serde_json::Value::String(message);
                CallToolResult::structured_error(v)
            }
            _ => CallToolResult::error(vec![ContentBlock::text(message)]),
        };
        Ok(result.into())
    }
}

/// `create_sandbox` arguments.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct CreateSandboxArgs {
    /// Template id or alias (default "base").
    #[serde(default)]
    pub template: Option<String>,
    /// Seconds until the sandbox is killed (default 300).
    #[serde(default)]
    pub timeout: Option<u64>,
    /// Metadata to attach to the sandbox (string values).
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Environment variables of every command in the sandbox.
    #[serde(default)]
    pub envs: Option<BTreeMap<String, String>>,
}

/// `create_sandbox` result.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct SandboxCreated {
    /// The id the other tools take.
    pub sandbox_id: String,
    pub template_id: String,
    /// RFC 3339.
    pub started_at: String,
    /// When the sandbox will be killed (RFC 3339); absent if never.
    pub end_at: Option<String>,
}

/// Arguments naming only a sandbox.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct SandboxArgs {
    /// The sandbox, as create_sandbox returned it.
    pub sandbox_id: String,
}

/// `kill_sandbox` result.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct SandboxKilled {
    pub sandbox_id: String,
    pub killed: bool,
}

/// `run_command` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct RunCommandArgs {
    pub sandbox_id: String,
    /// A bash command line (run with `bash -l -c`).
    pub command: String,
    /// Working directory (default: the user's home).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Extra environment variables for this command only.
    #[serde(default)]
    pub envs: Option<BTreeMap<String, String>>,
    /// Seconds before the command is killed (default 60, at most 3600).
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// `run_command` result.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct CommandOutput {
    /// The exit code; -1 when a signal killed the command.
    pub exit_code: i32,
    /// stdout as text (invalid UTF-8 replaced); its beginning when it was too long.
    pub stdout: String,
    /// stderr as text (invalid UTF-8 replaced); its beginning when it was too long.
    pub stderr: String,
    /// stdout is cut (`stdout_bytes` says how long it was); a result stays below ~900 KiB.
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// How the command ended, e.g. "exit status 2", "signal: killed".
    pub status: String,
}

/// `read_file` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct ReadFileArgs {
    pub sandbox_id: String,
    /// Absolute, or relative to the user's home.
    pub path: String,
}

/// `read_file` result.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct FileContent {
    pub path: String,
    /// The content as text (invalid UTF-8 replaced); its beginning when the file is long.
    pub content: String,
    /// `content` is the beginning of the file only (a result stays below ~900 KiB).
    pub truncated: bool,
    /// The file's size in bytes, when known.
    pub size: Option<u64>,
    /// The file is not valid UTF-8 (some bytes were replaced by U+FFFD).
    pub lossy: bool,
}

/// `write_file` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct WriteFileArgs {
    pub sandbox_id: String,
    /// Absolute, or relative to the user's home; parent directories are created.
    pub path: String,
    /// The text to write (replaces the file; at most 8 MiB).
    pub content: String,
}

/// `write_file` result.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct FileWritten {
    /// The absolute path written.
    pub path: String,
    pub bytes: u64,
}

/// `list_files` arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct ListFilesArgs {
    pub sandbox_id: String,
    /// Directory to list (absolute, or relative to the user's home; default: the home).
    #[serde(default)]
    pub path: Option<String>,
    /// Levels to descend (default 1, at most 10).
    #[serde(default)]
    pub depth: Option<u32>,
}

/// One entry of a listing.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct FileEntry {
    pub name: String,
    pub path: String,
    /// "file", "dir", "symlink" or "other".
    #[serde(rename = "type")]
    pub kind: String,
    pub size: u64,
    pub permissions: String,
    pub modified_time: Option<String>,
    pub symlink_target: Option<String>,
}

/// `list_files` result.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct FileList {
    pub path: String,
    pub entries: Vec<FileEntry>,
    /// Entries were left out (more than 1,000, or a result over ~900 KiB).
    pub truncated: bool,
}

/// The MCP server: one per request (stateless), cheap to build.
#[derive(Clone)]
pub struct SandboxTools {
    ctx: AppCtx,
    envd: EnvdClient,
}

/// The authenticated caller, put in the request's extensions by [`require_caller`].
fn caller(rc: &RequestContext<RoleServer>) -> Result<Caller, ToolError> {
    rc.extensions
        .get::<http::request::Parts>()
        .and_then(|p| p.extensions.get::<Caller>())
        .cloned()
        .ok_or_else(|| ToolError::Invalid("the request is not authenticated".into()))
}

fn check_envs(envs: &BTreeMap<String, String>) -> Result<(), ToolError> {
    for (k, v) in envs {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(ToolError::Invalid(format!(
                "invalid environment variable {k:?}: names must be non-empty without '=' or NUL, values without NUL"
            )));
        }
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), ToolError> {
    if path.trim().is_empty() {
        return Err(ToolError::Invalid("path is required".into()));
    }
    if path.contains('\0') {
        return Err(ToolError::Invalid("path contains a NUL byte".into()));
    }
    Ok(())
}

fn rfc3339(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn command_output(r: &envd::CommandResult) -> CommandOutput {
    let end = r.end.clone().unwrap_or_else(|| envd::ProcessEnd {
        exit_code: -1,
        status: "signal: killed".into(),
        error: None,
    });
    CommandOutput {
        exit_code: end.exit_code,
        stdout: r.stdout.text(),
        stderr: r.stderr.text(),
        stdout_truncated: r.stdout.truncated(),
        stderr_truncated: r.stderr.truncated(),
        stdout_bytes: r.stdout.total,
        stderr_bytes: r.stderr.total,
        status: end.status,
    }
}

fn entry_kind(kind: &str) -> &'static str {
    match kind {
        "FILE_TYPE_FILE" | "1" => "file",
        "FILE_TYPE_DIRECTORY" | "2" => "dir",
        "FILE_TYPE_SYMLINK" | "3" => "symlink",
        _ => "other",
    }
}

/// The serialized size of the result `v` becomes (structured content and its text copy).
fn result_size<T: Serialize>(v: &T) -> usize {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| serde_json::to_string(&CallToolResult::structured(v)).ok())
        .map_or(usize::MAX, |s| s.len())
}

/// Cuts `s` to at most `keep` bytes, on a character boundary.
fn cut(s: &mut String, keep: usize) {
    if s.len() > keep {
        let mut at = keep;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
}

/// Shrinks `v` with `shrink(v, excess)` until its result fits [`RESULT_LIMIT`]; `shrink`
/// returns false when nothing is left to remove.
fn fit<T: Serialize>(v: &mut T, mut shrink: impl FnMut(&mut T, usize) -> bool) {
    for _ in 0..64 {
        let size = result_size(v);
        if size <= RESULT_LIMIT || !shrink(v, size - RESULT_LIMIT) {
            return;
        }
    }
}

/// Fair shares of `avail` for texts needing `need` each: a text needing less than an equal
/// split gets what it needs, the others split the rest equally.
fn shares<const N: usize>(need: &[usize; N], avail: usize) -> [usize; N] {
    let mut order: Vec<usize> = (0..N).collect();
    order.sort_by_key(|&i| need[i]);
    let mut out = [0; N];
    let mut left = avail;
    for (k, &i) in order.iter().enumerate() {
        out[i] = need[i].min(left / (N - k));
        left -= out[i];
    }
    out
}

/// The texts of a result that may be cut, each with its "truncated" flag.
type Texts<'a, const N: usize> = [(&'a mut String, &'a mut bool); N];

/// Cuts the texts `texts` selects (their ends) until the result of `v` fits [`RESULT_LIMIT`]:
/// each text's part of the result is measured, and texts over their fair share of the room
/// left by the rest of the result are cut to it (a short stderr stays whole next to a huge
/// stdout). Escaping makes a text's part larger than its length, so a step or two suffice.
fn fit_texts<T: Serialize, const N: usize>(
    v: &mut T,
    texts: for<'a> fn(&'a mut T) -> Texts<'a, N>,
) {
    for _ in 0..16 {
        let size = result_size(v);
        if size <= RESULT_LIMIT {
            return;
        }
        let mut part = [0usize; N];
        for (i, p) in part.iter_mut().enumerate() {
            let saved = std::mem::take(texts(v)[i].0);
            let without = result_size(v);
            *texts(v)[i].0 = saved;
            *p = size.saturating_sub(without);
        }
        let rest = size.saturating_sub(part.iter().sum());
        let target = shares(&part, RESULT_LIMIT.saturating_sub(rest));
        let mut cut_any = false;
        for (i, (text, truncated)) in texts(v).into_iter().enumerate() {
            if target[i] < part[i] && !text.is_empty() {
                // 3 % below the proportional length, for the escaping of what is kept.
                let keep =
                    (text.len() as u128 * target[i] as u128 * 97 / 100 / part[i] as u128) as usize;
                cut(text, keep);
                *truncated = true;
                cut_any = true;
            }
        }
        if !cut_any {
            return;
        }
    }
}

/// Leaves out the last entries of a listing, in proportion to the excess.
fn shrink_list(l: &mut FileList, excess: usize) -> bool {
    if l.entries.is_empty() {
        return false;
    }
    let size = RESULT_LIMIT + excess;
    let keep = (l.entries.len() as u128 * RESULT_LIMIT as u128 * 97 / 100 / size as u128) as usize;
    l.entries.truncate(keep.min(l.entries.len() - 1));
    l.truncated = true;
    true
}

fn command_texts(o: &mut CommandOutput) -> Texts<'_, 2> {
    [
        (&mut o.stdout, &mut o.stdout_truncated),
        (&mut o.stderr, &mut o.stderr_truncated),
    ]
}

fn file_texts(f: &mut FileContent) -> Texts<'_, 1> {
    [(&mut f.content, &mut f.truncated)]
}

impl SandboxTools {
    pub fn new(ctx: AppCtx, envd: EnvdClient) -> SandboxTools {
        SandboxTools { ctx, envd }
    }

    /// The runtime of a running sandbox the caller sees.
    async fn target(&self, caller: &Caller, raw: &str) -> Result<Target, ToolError> {
        let raw = raw.trim();
        let id = SandboxId::parse(raw).ok_or_else(|| {
            ToolError::Backend(BackendError::NotFound(format!("sandbox {raw:?} not found")))
        })?;
        let r = self.ctx.backend.get(caller, &id).await?;
        if r.state == SandboxState::Paused {
            return Err(ToolError::Invalid(format!(
                "sandbox {id} is paused; resume it (POST /sandboxes/{id}/connect) before using it"
            )));
        }
        let ip = r.ip.ok_or_else(|| {
            ToolError::Invalid(format!("sandbox {id} has no address yet; try again"))
        })?;
        Ok(Target::new(ip, r.envd_access_token))
    }
}

#[tool_router]
impl SandboxTools {
    #[tool(
        description = "Create a sandbox (an isolated Linux environment) and return its sandbox_id. \
        It is killed after `timeout` seconds (default 300) unless killed earlier."
    )]
    async fn create_sandbox(
        &self,
        Parameters(args): Parameters<CreateSandboxArgs>,
        rc: RequestContext<RoleServer>,
    ) -> Result<Json<SandboxCreated>, ToolError> {
        let caller = caller(&rc)?;
        let timeout = match args.timeout {
            None => DEFAULT_TIMEOUT_SECS,
            Some(t) => i64::try_from(t).unwrap_or(i64::MAX),
        };
        let new = NewSandbox {
            template_id: Some(args.template.unwrap_or_else(|| "base".into())),
            timeout: Some(timeout),
            metadata: args.metadata,
            env_vars: args.envs,
            ..NewSandbox::default()
        };
        let spec =
            create_spec(&self.ctx, caller, new).map_err(|e| ToolError::Invalid(e.message))?;
        let template = spec.template_id.clone();
        let started = std::time::Instant::now();
        let result = self.ctx.backend.create(spec).await;
        self.ctx
            .metrics
            .observe_create(&template, result.is_ok(), started.elapsed());
        let r = result?;
        tracing::info!(sandbox = %r.id, template = %r.template_id, team = %r.team_id, "sandbox created through MCP");
        Ok(Json(SandboxCreated {
            sandbox_id: r.id.to_string(),
            template_id: r.template_id,
            started_at: rfc3339(r.started_at),
            end_at: r.end_at.map(rfc3339),
        }))
    }

    #[tool(
        description = "Kill a sandbox and everything running in it.",
        annotations(destructive_hint = true, idempotent_hint = true)
    )]
    async fn kill_sandbox(
        &self,
        Parameters(args): Parameters<SandboxArgs>,
        rc: RequestContext<RoleServer>,
    ) -> Result<Json<SandboxKilled>, ToolError> {
        let caller = caller(&rc)?;
        let raw = args.sandbox_id.trim();
        let id = SandboxId::parse(raw).ok_or_else(|| {
            ToolError::Backend(BackendError::NotFound(format!("sandbox {raw:?} not found")))
        })?;
        self.ctx.backend.kill(&caller, &id).await?;
        Ok(Json(SandboxKilled {
            sandbox_id: id.to_string(),
            killed: true,
        }))
    }

    #[tool(
        description = "Run a bash command line in a sandbox and wait for it to finish; returns \
        its exit code, stdout and stderr (long output is cut, and the result says so). It is \
        killed after `timeout` seconds (default 60)."
    )]
    async fn run_command(
        &self,
        Parameters(args): Parameters<RunCommandArgs>,
        rc: RequestContext<RoleServer>,
    ) -> Result<Json<CommandOutput>, ToolError> {
        let caller = caller(&rc)?;
        if args.command.trim().is_empty() {
            return Err(ToolError::Invalid("command is required".into()));
        }
        if args.command.contains('\0') {
            return Err(ToolError::Invalid("command contains a NUL byte".into()));
        }
        let secs = args.timeout.unwrap_or(DEFAULT_COMMAND_TIMEOUT_SECS);
        if !(1..=MAX_COMMAND_TIMEOUT_SECS).contains(&secs) {
            return Err(ToolError::Invalid(format!(
                "timeout should be between 1 and {MAX_COMMAND_TIMEOUT_SECS} seconds, got {secs}"
            )));
        }
        let envs = args.envs.unwrap_or_default();
        check_envs(&envs)?;
        if let Some(cwd) = &args.cwd {
            check_path(cwd)?;
        }
        let target = self.target(&caller, &args.sandbox_id).await?;
        let spec = CommandSpec {
            program: Program::Shell(&args.command),
            user: None,
            cwd: args.cwd.as_deref(),
            envs: &envs,
            timeout: Duration::from_secs(secs),
            output_limit: OUTPUT_LIMIT,
        };
        let r = self.envd.run(&target, &spec).await?;
        let mut output = command_output(&r);
        fit_texts(&mut output, command_texts);
        if r.timed_out {
            return Err(ToolError::CommandTimedOut {
                secs,
                output: Box::new(output),
            });
        }
        Ok(Json(output))
    }

    #[tool(
        description = "Read a text file of a sandbox (a long file is cut, and the result says so).",
        annotations(read_only_hint = true)
    )]
    async fn read_file(
        &self,
        Parameters(args): Parameters<ReadFileArgs>,
        rc: RequestContext<RoleServer>,
    ) -> Result<Json<FileContent>, ToolError> {
        let caller = caller(&rc)?;
        check_path(&args.path)?;
        let target = self.target(&caller, &args.sandbox_id).await?;
        let f = self.envd.read_file(&target, &args.path, READ_LIMIT).await?;
        let content = envd::text(&f.bytes, f.truncated);
        let lossy = content.contains('\u{fffd}') && std::str::from_utf8(&f.bytes).is_err();
        let mut file = FileContent {
            path: args.path,
            content,
            truncated: f.truncated,
            size: f.size,
            lossy,
        };
        fit_texts(&mut file, file_texts);
        Ok(Json(file))
    }

    #[tool(
        description = "Write a text file in a sandbox (created or replaced; parent directories \
        are created).",
        annotations(destructive_hint = true, idempotent_hint = true)
    )]
    async fn write_file(
        &self,
        Parameters(args): Parameters<WriteFileArgs>,
        rc: RequestContext<RoleServer>,
    ) -> Result<Json<FileWritten>, ToolError> {
        let caller = caller(&rc)?;
        check_path(&args.path)?;
        if args.content.len() > WRITE_LIMIT {
            return Err(ToolError::Invalid(format!(
                "content is {} bytes; write_file takes at most {WRITE_LIMIT}",
                args.content.len()
            )));
        }
        let target = self.target(&caller, &args.sandbox_id).await?;
        let bytes = args.content.len() as u64;
        let path = self
            .envd
            .write_file(&target, &args.path, Bytes::from(args.content))
            .await?;
        Ok(Json(FileWritten { path, bytes }))
    }

    #[tool(
        description = "List a directory of a sandbox, `depth` levels deep (default 1); at most \
        1,000 entries are returned.",
        annotations(read_only_hint = true)
    )]
    async fn list_files(
        &self,
        Parameters(args): Parameters<ListFilesArgs>,
        rc: RequestContext<RoleServer>,
    ) -> Result<Json<FileList>, ToolError> {
        let caller = caller(&rc)?;
        let path = args.path.unwrap_or_default();
        if path.contains('\0') {
            return Err(ToolError::Invalid("path contains a NUL byte".into()));
        }
        let depth = args.depth.unwrap_or(1);
        if !(1..=MAX_LIST_DEPTH).contains(&depth) {
            return Err(ToolError::Invalid(format!(
                "depth should be between 1 and {MAX_LIST_DEPTH}, got {depth}"
            )));
        }
        let target = self.target(&caller, &args.sandbox_id).await?;
        let entries = self.envd.list_dir(&target, &path, depth).await?;
        let truncated = entries.len() > MAX_LIST_ENTRIES;
        let mut list = FileList {
            path,
            truncated,
            entries: entries
                .into_iter()
                .take(MAX_LIST_ENTRIES)
                .map(|e| FileEntry {
                    kind: entry_kind(&e.kind).to_string(),
                    name: e.name,
                    path: e.path,
                    size: e.size,
                    permissions: e.permissions,
                    modified_time: e.modified_time,
                    symlink_target: e.symlink_target,
                })
                .collect(),
        };
        fit(&mut list, shrink_list);
        Ok(Json(list))
    }
}

#[tool_handler(
    name = "sandbox-manager",
    instructions = "Sandboxes are isolated Linux environments. Create one with \
create_sandbox (it returns a sandbox_id), run shell commands in it with run_command, move text \
in and out with write_file/read_file, look around with list_files, and kill_sandbox when done \
(sandboxes are also killed when their timeout passes). Relative paths are under the sandbox \
user's home directory."
)]
impl rmcp::ServerHandler for SandboxTools {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_are_listed_with_schemas() {
        let router = SandboxTools::tool_router();
        let mut names: Vec<String> = router
            .list_all()
            .iter()
            .map(|t| t.name.to_string())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "create_sandbox",
                "kill_sandbox",
                "list_files",
                "read_file",
                "run_command",
                "write_file"
            ]
        );
        for t in router.list_all() {
            let schema = serde_json::Value::Object((*t.input_schema).clone());
            assert_eq!(schema["type"], "object", "{}", t.name);
            if t.name != "create_sandbox" {
                let required = schema["required"].as_array().cloned().unwrap_or_default();
                assert!(
                    required.contains(&serde_json::json!("sandbox_id")),
                    "{}: {schema}",
                    t.name
                );
            }
            assert!(t.output_schema.is_some(), "{}", t.name);
        }
    }

    #[test]
    fn tool_errors_are_error_results() {
        let r = ToolError::Backend(BackendError::NotFound("sandbox x not found".into()))
            .into_call_tool_result()
            .unwrap();
        let CallToolResponse::Complete(r) = r else {
            panic!("not a complete result")
        };
        assert_eq!(r.is_error, Some(true));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["content"][0]["text"], "sandbox x not found");

        let out = CommandOutput {
            exit_code: -1,
            stdout: "partial".into(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            stdout_bytes: 7,
            stderr_bytes: 0,
            status: "signal: killed".into(),
        };
        let r = ToolError::CommandTimedOut {
            secs: 2,
            output: Box::new(out),
        }
        .into_call_tool_result()
        .unwrap();
        let CallToolResponse::Complete(r) = r else {
            panic!("not a complete result")
        };
        assert_eq!(r.is_error, Some(true));
        let s = r.structured_content.unwrap();
        assert_eq!(s["stdout"], "partial");
        assert!(
            s["error"]
                .as_str()
                .unwrap()
                .contains("within its timeout of 2 s")
        );
    }

    #[test]
    fn results_fit_the_message_limit() {
        let mut out = CommandOutput {
            exit_code: 0,
            stdout: "a".repeat(OUTPUT_LIMIT),
            stderr: "\"é\u{1}".repeat(OUTPUT_LIMIT / 8),
            stdout_truncated: false,
            stderr_truncated: false,
            stdout_bytes: OUTPUT_LIMIT as u64,
            stderr_bytes: OUTPUT_LIMIT as u64 / 2,
            status: "exit status 0".into(),
        };
        fit_texts(&mut out, command_texts);
        let size = result_size(&out);
        assert!(size <= RESULT_LIMIT, "{size}");
        assert!(size > RESULT_LIMIT - 64 * 1024, "cut too much: {size}");
        assert!(out.stdout_truncated && out.stderr_truncated);
        assert!(out.stdout.len() > 100_000 && out.stdout.bytes().all(|b| b == b'a'));
        // Small results are left alone.
        let mut small = CommandOutput {
            stdout: "hi\n".into(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            ..out
        };
        fit_texts(&mut small, command_texts);
        assert_eq!(small.stdout, "hi\n");
        assert!(!small.stdout_truncated);

        let entry = |i: usize| FileEntry {
            name: format!("{i}"),
            path: format!("/{}/{i}", "d".repeat(2000)),
            kind: "file".into(),
            size: 1,
            permissions: "-rw-r--r--".into(),
            modified_time: None,
            symlink_target: None,
        };
        let mut list = FileList {
            path: "/".into(),
            entries: (0..MAX_LIST_ENTRIES).map(entry).collect(),
            truncated: false,
        };
        fit(&mut list, shrink_list);
        assert!(result_size(&list) <= RESULT_LIMIT);
        assert!(list.truncated && list.entries.len() > 100);
        let mut s = "aé".to_string();
        cut(&mut s, 2);
        assert_eq!(s, "a");
    }

    #[test]
    fn env_and_path_checks() {
        let ok: BTreeMap<String, String> = [("A".to_string(), "1".to_string())].into();
        assert!(check_envs(&ok).is_ok());
        for bad in ["", "A=B", "A\0"] {
            let m: BTreeMap<String, String> = [(bad.to_string(), "1".to_string())].into();
            assert!(check_envs(&m).is_err(), "{bad:?}");
        }
        assert!(check_path(" ").is_err());
        assert!(check_path("a\0b").is_err());
        assert!(check_path("~/a.txt").is_ok());
        assert_eq!(entry_kind("FILE_TYPE_DIRECTORY"), "dir");
        assert_eq!(entry_kind("FILE_TYPE_UNSPECIFIED"), "other");
    }

    #[test]
    fn api_keys_come_from_x_api_key_or_bearer() {
        use crate::api::api_key;
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = http::HeaderMap::new();
            for (k, v) in pairs {
                m.append(*k, http::HeaderValue::from_static(v));
            }
            m
        };
        assert_eq!(api_key(&h(&[("x-api-key", " k ")]), false), Some("k"));
        assert_eq!(api_key(&h(&[("authorization", "Bearer k")]), false), None);
        assert_eq!(
            api_key(&h(&[("authorization", "Bearer k")]), true),
            Some("k")
        );
        assert_eq!(
            api_key(&h(&[("authorization", "bearer  k")]), true),
            Some("k")
        );
        assert_eq!(api_key(&h(&[("authorization", "Basic k")]), true), None);
        assert_eq!(api_key(&h(&[("authorization", "k")]), true), None);
        // X-API-Key wins; repeated headers are refused.
        assert_eq!(
            api_key(
                &h(&[("x-api-key", "a"), ("authorization", "Bearer b")]),
                true
            ),
            Some("a")
        );
        assert_eq!(
            api_key(&h(&[("x-api-key", "a"), ("x-api-key", "a")]), true),
            None
        );
        assert_eq!(
            api_key(
                &h(&[("authorization", "Bearer a"), ("authorization", "Bearer a")]),
                true
            ),
            None
        );
    }
}
