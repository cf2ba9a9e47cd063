//! The HTTP server: listeners (HTTP/1.1 and h2c on the same port), routing, the access-token
//! check, CORS, `/health`, `/init`, `/envs`, `/metrics`, and graceful shutdown.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::connect::{self, Code, Framing, RpcError};
use crate::httputil::{BoxBody, empty, full, json_error, json_ok, parse_query};
use crate::state::AppState;

const UNAUTHORIZED: &str =
    "unauthorized access, please provide a valid access token or method signing if supported";

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // Files and directories get the usual 0644/0755 whatever umask the launcher had.
    crate::sys::set_umask(0o022);
    let state = AppState::new(&config).map_err(|e| anyhow::anyhow!(e))?;
    // The handlers are in place before anything listens: a SIGTERM that comes as soon as the
    // port answers is a clean shutdown, not the default action (killed by the signal).
    let signals = termination_signals()?;
    let mut listeners = Vec::new();
    for addr in &config.listen {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        listeners.push(l);
    }
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal(signals).await;
            shutdown.cancel();
        });
    }
    let defaults = state.defaults();
    tracing::info!(
        listen = ?config.listen,
        default_user = %defaults.user,
        default_workdir = ?defaults.workdir,
        envd_version = crate::ENVD_VERSION,
        version = crate::VERSION,
        "agent-runtime serving"
    );
    serve(
        listeners,
        state.clone(),
        shutdown,
        config.shutdown_timeout(),
        Duration::from_secs(config.idle_timeout.max(1)),
    )
    .await;
    let killed = state.processes.kill_all();
    tracing::info!(killed_processes = killed, "agent-runtime stopped");
    Ok(())
}

type Signals = (tokio::signal::unix::Signal, tokio::signal::unix::Signal);

/// SIGTERM and SIGINT, handled from now on.
fn termination_signals() -> anyhow::Result<Signals> {
    use tokio::signal::unix::{SignalKind, signal};
    Ok((
        signal(SignalKind::terminate()).context("install the SIGTERM handler")?,
        signal(SignalKind::interrupt()).context("install the SIGINT handler")?,
    ))
}

async fn wait_for_signal((mut term, mut int): Signals) {
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
    }
}

/// Accepts connections on every listener until `shutdown`, then lets open connections finish
/// for up to `grace`. Idle HTTP/1.1 connections are closed after `idle` (hyper's header-read
/// timeout, which also runs while a keep-alive connection waits for its next request).
pub async fn serve(
    listeners: Vec<TcpListener>,
    state: Arc<AppState>,
    shutdown: CancellationToken,
    grace: Duration,
    idle: Duration,
) {
    let graceful = Arc::new(hyper_util::server::graceful::GracefulShutdown::new());
    let mut tasks = Vec::new();
    for listener in listeners {
        let (state, shutdown, graceful) = (state.clone(), shutdown.clone(), graceful.clone());
        tasks.push(tokio::spawn(async move {
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .keep_alive(true)
                .header_read_timeout(idle);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(1000);
            let builder = Arc::new(builder);
            loop {
                let (stream, peer) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = shutdown.cancelled() => break,
                };
                let _ = stream.set_nodelay(true);
                let st = state.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let st = st.clone();
                    async move { Ok::<_, Infallible>(handle(st, req, peer).await) }
                });
                let conn = builder
                    .serve_connection(TokioIo::new(stream), svc)
                    .into_owned();
                let fut = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = fut.await {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                });
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let graceful = Arc::try_unwrap(graceful)
        .unwrap_or_else(|_| hyper_util::server::graceful::GracefulShutdown::new());
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(grace) => tracing::warn!(grace_secs = grace.as_secs(), "connections still open after the grace period; closing them"),
    }
}

fn with_cors(mut resp: Response<BoxBody>) -> Response<BoxBody> {
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Connect-Protocol-Version, Grpc-Status, Grpc-Message, Content-Encoding, Content-Range, X-Envd-Version"),
    );
    resp
}

fn preflight() -> Response<BoxBody> {
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .header(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            "GET, POST, PUT, DELETE, OPTIONS, PATCH, HEAD",
        )
        .header(header::ACCESS_CONTROL_ALLOW_HEADERS, "*")
        .header(header::ACCESS_CONTROL_MAX_AGE, "7200")
        .body(empty())
        .expect("static response parts")
}

/// A bounded route label for metrics.
fn route_label(method: &Method, path: &str) -> String {
    match path {
        "/health" | "/init" | "/envs" | "/metrics" | "/files" => format!("{method} {path}"),
        p if p.starts_with("/process.Process/") || p.starts_with("/filesystem.Filesystem/") => {
            p.to_string()
        }
        _ => "other".to_string(),
    }
}

/// Handles one request.
pub async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<BoxBody> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = route(&state, req).await;
    let status = resp.status().as_u16();
    state.metrics.request(&route_label(&method, &path), status);
    tracing::debug!(%method, %path, status, %peer, elapsed_us = started.elapsed().as_micros() as u64, "request");
    with_cors(resp)
}

async fn route(state: &Arc<AppState>, req: Request<Incoming>) -> Response<BoxBody> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if method == Method::OPTIONS {
        return preflight();
    }
    let exempt = matches!(
        (&method, path.as_str()),
        (&Method::GET, "/health")
            | (&Method::GET, "/files")
            | (&Method::POST, "/files")
            | (&Method::POST, "/init")
    );
    if !exempt {
        let token = crate::signing::TokenHeader::of(req.headers());
        if !state.token_allows(token) {
            tracing::warn!(%path, "request without a valid access token");
            return json_error(StatusCode::UNAUTHORIZED, UNAUTHORIZED);
        }
    }
    let query = parse_query(req.uri().query());
    match (method.clone(), path.as_str()) {
        (Method::GET, "/health") | (Method::HEAD, "/health") => Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header(header::CACHE_CONTROL, "no-store")
            .header("x-envd-version", crate::ENVD_VERSION)
            .body(empty())
            .expect("static response parts"),
        (Method::GET, "/files") => crate::files::download(state, req, query).await,
        (Method::POST, "/files") => crate::files::upload(state, req, query).await,
        (Method::POST, "/init") => init(state, req).await,
        (Method::GET, "/envs") => json_ok(&json!(state.defaults().envs)),
        (Method::GET, "/metrics") => metrics(state, &req).await,
        (_, "/health" | "/files" | "/init" | "/envs" | "/metrics") => json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} is not allowed on {path}"),
        ),
        _ => rpc(state, req).await,
    }
}

async fn metrics(state: &Arc<AppState>, req: &Request<Incoming>) -> Response<BoxBody> {
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("text/plain") || accept.contains("application/openmetrics-text") {
        return Response::builder()
            .status(StatusCode::OK)
            .header(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(full(state.metrics.render()))
            .expect("static response parts");
    }
    json_ok(&crate::sysmetrics::snapshot(&state.cpu).await)
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase", default)]
struct InitRequest {
    env_vars: Option<HashMap<String, String>>,
    access_token: Option<String>,
    default_user: Option<String>,
    default_workdir: Option<String>,
    timestamp: Option<String>,
}

/// Parses an RFC 3339 timestamp into nanoseconds since the epoch.
pub fn parse_rfc3339_nanos(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || (b[10] != b'T' && b[10] != b't' && b[10] != b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    let mut rest = &s[19..];
    let mut nanos: i128 = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits: String = frac.chars().take_while(|c| c.is_ascii_digit()).collect();
        if digits.is_empty() {
            return None;
        }
        let mut padded = digits.clone();
        padded.truncate(9);
        while padded.len() < 9 {
            padded.push('0');
        }
        nanos = padded.parse().ok()?;
        rest = &frac[digits.len()..];
    }
    let offset_secs: i64 = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) => {
            let hh: i64 = o[1..3].parse().ok()?;
            let mm: i64 = o[4..6].parse().ok()?;
            let v = hh * 3600 + mm * 60;
            if o.starts_with('-') { -v } else { v }
        }
        _ => return None,
    };
    // days_from_civil
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset_secs;
    Some(secs as i128 * 1_000_000_000 + nanos)
}

/// Largest `/init` body accepted (environment variables and settings, never file data).
const MAX_INIT_BYTES: usize = 4 << 20;

/// `POST /init`: sandbox environment, access token, default user and workdir. A request carrying
/// a timestamp older than the newest one applied is acknowledged without effect. Once a token is
/// set, it can only be re-sent unchanged: a different token is a 401 "access token validation
/// failed", a missing one a 401 "access token reset not authorized" (envd's rules without MMDS).
async fn init(state: &Arc<AppState>, req: Request<Incoming>) -> Response<BoxBody> {
    let body = match connect::read_body(req.into_body(), None).await {
        Ok(b) if b.len() > MAX_INIT_BYTES => {
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "init request of {} bytes exceeds the {MAX_INIT_BYTES}-byte limit",
                    b.len()
                ),
            );
        }
        Ok(b) => b,
        Err(e) => return json_error(e.code.http_status(), e.message),
    };
    let init: InitRequest = if body.iter().all(u8::is_ascii_whitespace) {
        InitRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    format!("invalid init request: {e}"),
                );
            }
        }
    };
    let _guard = state.init_lock.lock().await;
    if let Some(ts) = &init.timestamp {
        let Some(nanos) = parse_rfc3339_nanos(ts) else {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("invalid timestamp {ts:?}: expected RFC 3339"),
            );
        };
        let mut last = state.last_init.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|l| nanos <= l) {
            tracing::info!(timestamp = %ts, "ignoring /init older than the last one applied");
            return no_content();
        }
        *last = Some(nanos);
    }
    let current = state.token();
    match (&current, &init.access_token) {
        (Some(cur), Some(new))
            if !crate::signing::constant_time_eq(cur.as_bytes(), new.as_bytes()) =>
        {
            return json_error(StatusCode::UNAUTHORIZED, "access token validation failed");
        }
        (Some(_), None) => {
            return json_error(
                StatusCode::UNAUTHORIZED,
                "access token reset not authorized",
            );
        }
        _ => {}
    }
    if let Some(user) = init.default_user.as_deref().filter(|u| !u.is_empty())
        && crate::users::lookup(user).is_none()
    {
        return json_error(
            StatusCode::BAD_REQUEST,
            format!("invalid default user: '{user}'"),
        );
    }
    state.set_token(init.access_token.clone().filter(|t| !t.is_empty()));
    let n_envs = init.env_vars.as_ref().map(HashMap::len).unwrap_or(0);
    state.update_defaults(|d| {
        if let Some(envs) = init.env_vars {
            d.envs.extend(envs);
        }
        if let Some(u) = init.default_user.filter(|u| !u.is_empty()) {
            d.user = u;
        }
        if let Some(w) = init.default_workdir.filter(|w| !w.is_empty()) {
            d.workdir = Some(w.into());
        }
    });
    tracing::info!(
        env_vars = n_envs,
        token_set = state.token().is_some(),
        "init applied"
    );
    no_content()
}

fn no_content() -> Response<BoxBody> {
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .header(header::CACHE_CONTROL, "no-store")
        .body(empty())
        .expect("static response parts")
}

fn rpc_user(state: &AppState, req: &Request<Incoming>) -> Result<crate::users::User, RpcError> {
    let name = crate::users::basic_auth_user(req.headers().get(header::AUTHORIZATION))
        .map_err(RpcError::unauthenticated)?;
    state.rpc_user(name.as_deref())
}

/// Connect RPCs.
async fn rpc(state: &Arc<AppState>, req: Request<Incoming>) -> Response<BoxBody> {
    let path = req.uri().path().to_string();
    let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return json_error(StatusCode::NOT_FOUND, format!("no route for {path}"));
    };
    let (service, method) = (service.to_string(), method.to_string());
    let streaming = matches!(
        (service.as_str(), method.as_str()),
        ("process.Process", "Start" | "Connect" | "StreamInput")
            | ("filesystem.Filesystem", "WatchDir")
    );
    let known_service = service == "process.Process" || service == "filesystem.Filesystem";
    if !known_service {
        let mut r = connect::unary_error(&RpcError::new(
            Code::Unimplemented,
            format!("{path} is not implemented"),
        ));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    }
    if req.method() != Method::POST {
        let mut r = json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Connect RPCs are called with POST",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let framing = match connect::request_framing(req.headers()) {
        Ok(f) => f,
        Err((status, msg)) => {
            let mut r = json_error(status, msg);
            r.headers_mut().insert(
                "accept-post",
                HeaderValue::from_static("application/json, application/connect+json"),
            );
            return r;
        }
    };
    if streaming != (framing == Framing::Stream) {
        let msg = if streaming {
            format!("{path} is a streaming RPC: use content type application/connect+json")
        } else {
            format!("{path} is a unary RPC: use content type application/json")
        };
        return json_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, msg);
    }
    // The deadline counts from the request's arrival and covers reading its body.
    let deadline = match connect::parse_timeout(req.headers()) {
        Ok(t) => t.map(|t| tokio::time::Instant::now() + t),
        Err(e) if streaming => return connect::stream_error(&e),
        Err(e) => return connect::unary_error(&e),
    };
    let user = rpc_user(state, &req);
    let headers = req.headers().clone();
    if streaming {
        if method == "StreamInput" {
            if let Err(e) = user {
                return connect::stream_error(&e);
            }
            return crate::process::stream_input(state, &headers, req.into_body(), deadline).await;
        }
        let body = match connect::read_body(req.into_body(), deadline).await {
            Ok(b) => b,
            Err(e) => return connect::stream_error(&e),
        };
        return match method.as_str() {
            "Start" => crate::process::start_rpc(state, user, &headers, &body, deadline),
            "Connect" => match user {
                Ok(_) => crate::process::connect_rpc(state, &headers, &body, deadline),
                Err(e) => connect::stream_error(&e),
            },
            _ => crate::watch::watch_dir_rpc(state, user, &headers, &body, deadline),
        };
    }
    let call = async {
        let gz = connect::request_encoding(&headers, Framing::Unary)?;
        let body = connect::read_body(req.into_body(), deadline).await?;
        let payload = if gz { connect::gunzip(&body)? } else { body };
        if service == "process.Process" {
            user?;
            crate::process::unary(state, &method, &payload).await
        } else {
            crate::filesystem::unary(state, user, &method, &payload).await
        }
    };
    let result = connect::with_deadline(deadline, call).await;
    match result {
        Ok(v) => connect::unary_ok(&v),
        Err(e) => connect::unary_error(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_parsing() {
        assert_eq!(parse_rfc3339_nanos("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_nanos("1970-01-01T00:00:01.5Z"),
            Some(1_500_000_000)
        );
        assert_eq!(parse_rfc3339_nanos("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(
            parse_rfc3339_nanos("2026-11-22T08:07:50Z"),
            Some(1_795_334_870 * 1_000_000_000)
        );
        assert_eq!(parse_rfc3339_nanos("yesterday"), None);
        assert_eq!(parse_rfc3339_nanos("2026-11-22T08:07:50"), None);
    }

    #[test]
    fn route_labels_are_bounded() {
        assert_eq!(route_label(&Method::GET, "/health"), "GET /health");
        assert_eq!(
            route_label(&Method::POST, "/process.Process/Start"),
            "/process.Process/Start"
        );
        assert_eq!(route_label(&Method::GET, "/random/123"), "other");
    }
}
