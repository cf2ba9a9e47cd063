//! The E2B-compatible REST API, served natively (`api.<domain>`) and under `/kruise/api`: the
//! router, the shared context, authentication, JSON bodies with bounded size and time, request
//! metrics and logs, and the HTTP server loop.

pub mod error;
mod list;
pub mod models;
mod other;
pub(crate) mod sandboxes;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, request::Parts};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::{ApiError, ApiResult};

use crate::backend::Backend;
use crate::idempotency::Idempotency;
use crate::keys::KeyStore;
use crate::metrics::Metrics;
use crate::model::Caller;

/// Largest request body accepted (create bodies with env vars and metadata are far smaller).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// How long a request body may take to arrive.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of the API layer.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub enable_auth: bool,
    /// Longest timeout a sandbox may have (`e2b.maxTimeout`), seconds.
    pub max_timeout_secs: u64,
    /// The `domain` returned to the SDK (`None`: the SDK keeps its own `E2B_DOMAIN`).
    pub domain: Option<String>,
}

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppCtx {
    pub backend: Arc<dyn Backend>,
    pub keys: Arc<dyn KeyStore>,
    pub config: Arc<ApiConfig>,
    pub metrics: Arc<Metrics>,
    pub idempotency: Arc<Idempotency>,
}

/// Constant-time equality of two secrets of equal length.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// The caller of a request: its API key checked against the key store (see [`api_key`]); every
/// request is the admin team when authentication is disabled.
pub async fn authenticate(
    ctx: &AppCtx,
    headers: &http::HeaderMap,
    bearer: bool,
) -> Result<Caller, ApiError> {
    if !ctx.config.enable_auth {
        return Ok(crate::keys::anonymous_admin());
    }
    let raw = api_key(headers, bearer).ok_or_else(ApiError::unauthorized)?;
    ctx.keys
        .authenticate(raw)
        .await
        .ok_or_else(ApiError::unauthorized)
}

/// The key a request carries: `X-API-Key`, given once; with `bearer` and no `X-API-Key`,
/// `Authorization: Bearer <key>`, given once (what MCP clients send).
pub(crate) fn api_key(headers: &http::HeaderMap, bearer: bool) -> Option<&str> {
    /// `None`: absent; `Some(None)`: repeated or not text.
    fn once<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<Option<&'a str>> {
        let mut values = headers.get_all(name).iter();
        let first = values.next()?;
        Some(match values.next() {
            Some(_) => None,
            None => first.to_str().ok().map(str::trim),
        })
    }
    match once(headers, "x-api-key") {
        Some(key) => key,
        None if bearer => {
            let (scheme, key) = once(headers, "authorization")??.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
        }
        None => None,
    }
}

impl FromRequestParts<AppCtx> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, ctx: &AppCtx) -> Result<Self, ApiError> {
        authenticate(ctx, &parts.headers, false).await
    }
}

/// A JSON request body: at most [`MAX_BODY_BYTES`], arriving within [`BODY_TIMEOUT`], a JSON
/// object. An empty body reads as `{}` for the endpoints whose fields are all optional.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req.into_body()).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

async fn read_body(body: Body) -> ApiResult<Bytes> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s",
                BODY_TIMEOUT.as_secs()
            ),
        )),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            Err(if too_large {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body larger than {MAX_BODY_BYTES} bytes"),
                )
            } else {
                ApiError::bad_request(format!("error reading the request body: {e}"))
            })
        }
        Ok(Ok(b)) => Ok(b),
    }
}

/// Parses a JSON object body (empty → `{}`); other JSON types and syntax errors are 400s that
/// say what was wrong.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        bytes
    };
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "invalid JSON body: expected a JSON object",
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

/// The routes of one generation prefix (`""` or `/kruise/api`).
fn e2b_routes() -> Router<AppCtx> {
    Router::new()
        .route(
            "/sandboxes",
            post(sandboxes::create).get(sandboxes::list_v1),
        )
        .route(
            "/v2/sandboxes",
            post(sandboxes::create).get(sandboxes::list_v2),
        )
        .route(
            "/sandboxes/{id}",
            get(sandboxes::get_one).delete(sandboxes::kill),
        )
        .route("/sandboxes/{id}/connect", post(sandboxes::connect))
        .route("/v2/sandboxes/{id}/connect", post(sandboxes::connect))
        .route("/sandboxes/{id}/resume", post(sandboxes::resume))
        .route("/sandboxes/{id}/timeout", post(sandboxes::timeout))
        .route("/sandboxes/{id}/refreshes", post(sandboxes::refresh))
        .route("/sandboxes/{id}/pause", post(sandboxes::pause))
        .route(
            "/sandboxes/{id}/network",
            axum::routing::put(sandboxes::network),
        )
        .route("/sandboxes/{id}/metrics", get(sandboxes::metrics))
        .route("/sandboxes/{id}/logs", get(sandboxes::logs_v1))
        .route("/v2/sandboxes/{id}/logs", get(sandboxes::logs_v2))
        .route("/sandboxes/{id}/snapshots", post(other::create_snapshot))
        .route("/snapshots", get(other::list_snapshots))
        .route("/templates", get(other::list_templates))
        .route(
            "/templates/{id}",
            get(other::get_template).delete(other::delete_template),
        )
        .route("/templates/aliases/{alias}", get(other::template_alias))
        .route("/teams", get(other::teams))
        .route(
            "/api-keys",
            get(other::list_api_keys).post(other::create_api_key),
        )
        .route(
            "/api-keys/{id}",
            delete(other::delete_api_key).patch(other::update_api_key),
        )
}

/// The whole HTTP surface: both E2B route sets, health, readiness and metrics.
pub fn router(ctx: AppCtx, extra: Option<Router>) -> Router {
    let mut app = Router::new()
        .merge(e2b_routes())
        .nest("/kruise/api", e2b_routes())
        .route("/health", get(|| async { "OK" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(any(not_found))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(ctx.clone(), observe))
        .with_state(ctx);
    if let Some(extra) = extra {
        app = app.merge(extra);
    }
    app
}

async fn readyz(State(ctx): State<AppCtx>) -> Response {
    match ctx.backend.ready().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(why) => ApiError::unavailable(why, Duration::from_secs(1)).into_response(),
    }
}

async fn metrics(State(ctx): State<AppCtx>) -> Response {
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ctx.metrics.encode(),
    )
        .into_response()
}

async fn not_found(method: Method, uri: http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed on {}", uri.path()),
    )
}

/// The route template of a request, for metrics labels (bounded set).
fn route_label(req: &Request) -> String {
    req.extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into())
}

/// Request id, structured log line and metrics of every request.
pub(crate) async fn observe(State(ctx): State<AppCtx>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = route_label(&req);
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| crate::model::random_hex(16));
    let path = req.uri().path().to_string();
    let mut resp = next.run(req).await;
    let status = resp.status().as_u16();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let elapsed = started.elapsed();
    ctx.metrics
        .observe_request(method.as_str(), &route, status, elapsed);
    tracing::info!(
        %method, %path, route, status, request_id,
        elapsed_ms = elapsed.as_secs_f64() * 1e3,
        "request"
    );
    resp
}

/// Serves `app` on `listener` until `shutdown`, then lets open requests finish for `grace`.
/// Request heads must arrive within 10 s; idle keep-alive connections close after `idle`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    grace: Duration,
    idle: Duration,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(Duration::from_secs(10).min(idle));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(idle));
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
        let svc = {
            let app = app.clone();
            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let app = app.clone();
                async move {
                    use tower::ServiceExt;
                    Ok::<_, Infallible>(
                        app.oneshot(req.map(Body::new))
                            .await
                            .unwrap_or_else(|e| match e {}),
                    )
                }
            })
        };
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .into_owned();
        let fut = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("API connections closed"),
        _ = tokio::time::sleep(grace) => tracing::warn!("API connections still open after the grace period"),
    }
}
