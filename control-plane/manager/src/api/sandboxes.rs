//! The sandbox endpoints: create (both generations, `Idempotency-Key`), get, list, kill,
//! connect/resume, timeout, refreshes, pause, network, metrics and logs.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode};
use jiff::Timestamp;
use serde_json::Value;

use super::error::{ApiError, ApiResult};
use super::models::{self, NewSandbox, RefreshBody, TimeoutBody};
use super::{AppCtx, JsonBody, list, parse_json, read_body};
use crate::extensions;
use crate::model::{
    Caller, Connected, CreateSpec, Deadline, Lifecycle, OnTimeout, Paused, SandboxId,
};

/// Timeout of a create or connect that names none (the SDK's documented default).
pub const DEFAULT_TIMEOUT_SECS: i64 = 300;

/// A sandbox id from the path; an id that cannot exist is simply not found.
fn sandbox_id(raw: &str) -> ApiResult<SandboxId> {
    SandboxId::parse(raw).ok_or_else(|| ApiError::not_found(format!("sandbox {raw:?} not found")))
}

fn timeout_secs(ctx: &AppCtx, given: Option<i64>, allow_zero: bool) -> ApiResult<u64> {
    let max = ctx.config.max_timeout_secs;
    let t = given.unwrap_or(DEFAULT_TIMEOUT_SECS.min(max as i64));
    let min = if allow_zero { 0 } else { 1 };
    if t < min || t as u64 > max {
        return Err(ApiError::bad_request(format!(
            "timeout should be between {min} and {max} seconds, got {t}"
        )));
    }
    Ok(t as u64)
}

fn env_vars(raw: Option<BTreeMap<String, String>>) -> ApiResult<BTreeMap<String, String>> {
    let vars = raw.unwrap_or_default();
    for (k, v) in &vars {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(ApiError::bad_request(format!(
                "invalid envVars entry {k:?}: names must be non-empty without '=' or NUL, values without NUL"
            )));
        }
    }
    Ok(vars)
}

/// Turns a create body into a validated spec, refusing what this backend cannot do.
pub(crate) fn create_spec(ctx: &AppCtx, caller: Caller, new: NewSandbox) -> ApiResult<CreateSpec> {
    let template_id = new
        .template_id
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("templateID is required"))?;
    if template_id.len() > 256 {
        return Err(ApiError::bad_request("templateID is longer than 256 bytes"));
    }
    let timeout = timeout_secs(ctx, new.timeout, false)?;
    let parsed =
        extensions::parse(&new.metadata.unwrap_or_default()).map_err(ApiError::bad_request)?;
    let caps = ctx.backend.capabilities();
    if !caps.kubernetes {
        if let Some(k) = parsed.extensions.kube.first_key() {
            return Err(ApiError::bad_request(format!(
                "metadata key {}{k} needs Kubernetes; this manager runs the {} backend",
                extensions::PREFIX,
                ctx.backend.name()
            )));
        }
        if new.volume_mounts.as_ref().is_some_and(|v| !v.is_empty()) {
            return Err(ApiError::bad_request(format!(
                "volumeMounts need Kubernetes; this manager runs the {} backend",
                ctx.backend.name()
            )));
        }
    }
    let mounts = crate::mounts::requested(new.volume_mounts.as_deref(), &parsed.extensions.kube)
        .map_err(ApiError::bad_request)?;
    if !caps.egress_rules && (new.allow_internet_access == Some(false) || new.network.is_some()) {
        tracing::warn!(
            backend = ctx.backend.name(),
            "egress rules were requested but this backend does not enforce them; the sandbox reports allowInternetAccess=true"
        );
    }
    let auto_resume = new.auto_resume.is_some_and(|a| a.enabled());
    if auto_resume && !caps.auto_resume {
        tracing::warn!(
            backend = ctx.backend.name(),
            "autoResume was requested but this backend does not wake sandboxes on traffic; the sandbox reports autoResume=false (connect resumes it)"
        );
    }
    let skip_init = parsed.extensions.skip_init_runtime;
    Ok(CreateSpec {
        caller,
        template_id,
        timeout: Duration::from_secs(timeout),
        lifecycle: Lifecycle {
            on_timeout: if new.auto_pause == Some(true) {
                OnTimeout::Pause
            } else {
                OnTimeout::Kill
            },
            auto_resume: auto_resume && caps.auto_resume,
        },
        metadata: parsed.metadata,
        labels: parsed.labels,
        env_vars: env_vars(new.env_vars)?,
        // E2B's v2 sandboxes are always secured and upstream ignores `secure`: every sandbox
        // gets an access token unless the runtime is not initialised at all.
        secure: !skip_init,
        allow_internet_access: new.allow_internet_access,
        network: new.network,
        extensions: parsed.extensions,
        mounts,
    })
}

/// `POST /sandboxes`, `POST /v2/sandboxes`.
pub async fn create(
    State(ctx): State<AppCtx>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let bytes = read_body(body).await?;
    let new: NewSandbox = parse_json(&bytes)?;
    let team = caller.team.id.clone();
    let spec = create_spec(&ctx, caller, new)?;
    let template = spec.template_id.clone();
    let domain = ctx.config.domain.clone();
    let run = {
        let ctx = ctx.clone();
        async move {
            let started = std::time::Instant::now();
            let result = ctx.backend.create(spec).await;
            ctx.metrics
                .observe_create(&template, result.is_ok(), started.elapsed());
            result
                .map(|r| models::sandbox(&r, domain.as_deref()))
                .map_err(ApiError::from)
        }
    };
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match key {
        Some(key) if !key.is_empty() => {
            if key.len() > 256 {
                return Err(ApiError::bad_request(
                    "Idempotency-Key is longer than 256 bytes",
                ));
            }
            ctx.idempotency.run(&team, &key, &bytes, run).await?
        }
        _ => run.await?,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /v2/sandboxes`.
pub async fn list_v2(
    State(ctx): State<AppCtx>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let q = list::parse(query.as_deref())?;
    let all = ctx.backend.list(&caller).await?;
    let (page, token) = list::page(all, &q);
    let items: Vec<Value> = page.iter().map(models::listed).collect();
    let mut resp = Json(items).into_response();
    if let Some(t) = token.and_then(|t| HeaderValue::from_str(&t).ok()) {
        resp.headers_mut().insert("x-next-token", t);
    }
    Ok(resp)
}

/// `GET /sandboxes` (v1): running sandboxes, filtered by metadata, unpaged.
pub async fn list_v1(
    State(ctx): State<AppCtx>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Vec<Value>>> {
    let mut q = list::parse(query.as_deref())?;
    q.states = vec![crate::model::SandboxState::Running];
    q.limit = usize::MAX;
    let (page, _) = list::page(ctx.backend.list(&caller).await?, &q);
    Ok(Json(page.iter().map(models::listed).collect()))
}

/// `GET /sandboxes/{id}`.
pub async fn get_one(
    State(ctx): State<AppCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let r = ctx.backend.get(&caller, &sandbox_id(&id)?).await?;
    Ok(Json(models::detail(&r, ctx.config.domain.as_deref())))
}

/// `DELETE /sandboxes/{id}`.
pub async fn kill(
    State(ctx): State<AppCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    ctx.backend.kill(&caller, &sandbox_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sandboxes/{id}/connect`, `POST /v2/sandboxes/{id}/connect`: 200 when it was running
/// (the timeout extended, never shortened), 201 when it was paused and has been resumed.
pub async fn connect(
    State(ctx): State<AppCtx>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<TimeoutBody>,
) -> ApiResult<Response> {
    let (r, how) = connect_with(&ctx, &caller, &id, body.timeout).await?;
    let status = match how {
        Connected::Running => StatusCode::OK,
        Connected::Resumed => StatusCode::CREATED,
    };
    Ok((status, r).into_response())
}

/// Connects with the request's timeout; the rendered `Sandbox` and how it was found.
async fn connect_with(
    ctx: &AppCtx,
    caller: &Caller,
    id: &str,
    timeout: Option<i64>,
) -> ApiResult<(Json<Value>, Connected)> {
    let id = sandbox_id(id)?;
    let timeout = timeout_secs(ctx, timeout, false)?;
    let (r, how) = ctx
        .backend
        .connect(caller, &id, Duration::from_secs(timeout))
        .await?;
    Ok((Json(models::sandbox(&r, ctx.config.domain.as_deref())), how))
}

/// `POST /sandboxes/{id}/resume` (deprecated; old SDKs): resumes a paused sandbox (201), 409
/// when it is running.
pub async fn resume(
    State(ctx): State<AppCtx>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<TimeoutBody>,
) -> ApiResult<Response> {
    let current = ctx.backend.get(&caller, &sandbox_id(&id)?).await?;
    if current.state == crate::model::SandboxState::Running {
        return Err(ApiError::conflict(format!(
            "sandbox {id} is already running"
        )));
    }
    let (r, _) = connect_with(&ctx, &caller, &id, body.timeout).await?;
    Ok((StatusCode::CREATED, r).into_response())
}

/// `POST /sandboxes/{id}/timeout`: the deadline becomes now + timeout (0 expires it now).
pub async fn timeout(
    State(ctx): State<AppCtx>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<TimeoutBody>,
) -> ApiResult<StatusCode> {
    let id = sandbox_id(&id)?;
    let Some(t) = body.timeout else {
        return Err(ApiError::bad_request("timeout is required"));
    };
    let secs = timeout_secs(&ctx, Some(t), true)?;
    let at = Timestamp::now() + Duration::from_secs(secs);
    ctx.backend
        .set_deadline(&caller, &id, Deadline::Set(at))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Longest refresh E2B allows, seconds.
const MAX_REFRESH_SECS: i64 = 3600;

/// `POST /sandboxes/{id}/refreshes`: keeps the sandbox alive for at least `duration` seconds.
pub async fn refresh(
    State(ctx): State<AppCtx>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RefreshBody>,
) -> ApiResult<StatusCode> {
    let id = sandbox_id(&id)?;
    let d = body.duration.unwrap_or(0);
    if !(0..=MAX_REFRESH_SECS).contains(&d) {
        return Err(ApiError::bad_request(format!(
            "duration should be between 0 and {MAX_REFRESH_SECS} seconds, got {d}"
        )));
    }
    let at = Timestamp::now() + Duration::from_secs(d as u64);
    ctx.backend
        .set_deadline(&caller, &id, Deadline::AtLeast(at))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sandboxes/{id}/pause`: 204, or 409 when it is already paused (the SDK returns False).
pub async fn pause(
    State(ctx): State<AppCtx>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(_body): JsonBody<Value>,
) -> ApiResult<StatusCode> {
    let id = sandbox_id(&id)?;
    match ctx.backend.pause(&caller, &id).await? {
        Paused::Now => Ok(StatusCode::NO_CONTENT),
        Paused::Already => Err(ApiError::conflict(format!(
            "sandbox {id} is already paused"
        ))),
    }
}

/// `PUT /sandboxes/{id}/network`.
pub async fn network(
    State(ctx): State<AppCtx>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(_body): JsonBody<Value>,
) -> ApiResult<StatusCode> {
    let id = sandbox_id(&id)?;
    ctx.backend.get(&caller, &id).await?;
    if !ctx.backend.capabilities().egress_rules {
        return Err(ApiError::bad_request(format!(
            "egress rules are not enforced by the {} backend: its sandboxes share the host's network",
            ctx.backend.name()
        )));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /sandboxes/{id}/metrics`.
pub async fn metrics(
    State(ctx): State<AppCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<Value>>> {
    let samples = ctx.backend.metrics(&caller, &sandbox_id(&id)?).await?;
    Ok(Json(samples.iter().map(models::metric).collect()))
}

fn log_limit(query: Option<&str>) -> ApiResult<usize> {
    for pair in query.unwrap_or("").split('&') {
        if let Some(v) = pair.strip_prefix("limit=") {
            return v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=10_000).contains(n))
                .ok_or_else(|| ApiError::bad_request(format!("invalid limit {v:?}")));
        }
    }
    Ok(1000)
}

/// `GET /sandboxes/{id}/logs`.
pub async fn logs_v1(
    State(ctx): State<AppCtx>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let limit = log_limit(query.as_deref())?;
    let lines = ctx.backend.logs(&caller, &sandbox_id(&id)?, limit).await?;
    Ok(Json(models::logs_v1(&lines)))
}

/// `GET /v2/sandboxes/{id}/logs`.
pub async fn logs_v2(
    State(ctx): State<AppCtx>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let limit = log_limit(query.as_deref())?;
    let lines = ctx.backend.logs(&caller, &sandbox_id(&id)?, limit).await?;
    Ok(Json(serde_json::json!({
        "logs": lines.iter().map(models::log_entry).collect::<Vec<_>>()
    })))
}
