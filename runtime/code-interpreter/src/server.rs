//! The HTTP API (axum) and the service's life: private runtime directory, default Python
//! context before `/health` says OK, every kernel killed at exit.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::serve::ListenerExt;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::config::Config;
use crate::contexts::{Contexts, Settings};
use crate::envd::Envd;
use crate::error::{ApiError, json_error};
use crate::kernel::LaunchConfig;
use crate::kernelspec::KernelSpecs;
use crate::protocol::{CreateContextRequest, ExecuteRequest, normalize_language};

/// Largest request body (code is sent inline).
const BODY_LIMIT: usize = 32 << 20;

/// The E2B display formatters for ipykernel, written to the runtime directory at start.
const IPYTHON_STARTUP: &str = include_str!("../kernel/ipython_startup.py");

pub struct AppState {
    pub contexts: Contexts,
    pub envd: Envd,
    pub ready: AtomicBool,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/execute", post(execute))
        .route("/contexts", post(create_context).get(list_contexts))
        .route("/contexts/{id}", delete(remove_context))
        .route("/contexts/{id}/restart", post(restart_context))
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "not found") })
        .method_not_allowed_fallback(|| async {
            json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        })
        .with_state(state)
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    if s.ready.load(Ordering::Acquire) {
        axum::Json("OK").into_response()
    } else {
        json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: the default Python kernel is not ready yet",
        )
    }
}

async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    match Limited::new(body, BODY_LIMIT).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(ApiError::PayloadTooLarge(format!(
            "the body is larger than {} MiB",
            BODY_LIMIT >> 20
        ))),
        Err(e) => Err(ApiError::BadRequest(format!("cannot read the body: {e}"))),
    }
}

async fn execute(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let token = headers.get("x-access-token").and_then(|v| v.to_str().ok());
    let sandbox_envs = s.envd.authorize(token).await?;
    let req = ExecuteRequest::parse(&read_body(body).await?)?;
    let ctx = s.contexts.resolve(&req.target()).await?;
    let rx = ctx.execute(req, sandbox_envs).await?;
    let lines = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, Infallible>(line), rx))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

async fn create_context(State(s): State<Arc<AppState>>, body: Body) -> Result<Response, ApiError> {
    let req = CreateContextRequest::parse(&read_body(body).await?)?;
    let language = normalize_language(req.language.as_deref());
    let info = s.contexts.create(&language, req.cwd.as_deref()).await?;
    Ok(axum::Json(info).into_response())
}

async fn list_contexts(State(s): State<Arc<AppState>>) -> Response {
    axum::Json(s.contexts.list()).into_response()
}

async fn remove_context(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.contexts.remove(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn restart_context(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.contexts.restart(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Runs the service until SIGTERM/SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // Kept until the end: dropping it removes the directory.
    let (runtime_dir, _owned_dir) = match &config.runtime_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("{}", d.display()))?;
            (d.clone(), None)
        }
        None => {
            let d = tempfile::Builder::new()
                .prefix("code-interpreter-")
                .tempdir()
                .context("cannot create the runtime directory")?;
            (d.path().to_path_buf(), Some(d))
        }
    };
    let ipython_startup = runtime_dir.join("ipython_startup.py");
    std::fs::write(&ipython_startup, IPYTHON_STARTUP)
        .with_context(|| format!("{}", ipython_startup.display()))?;
    let specs = KernelSpecs::load(&config.kernels_venv).map_err(anyhow::Error::msg)?;
    let workdir = match &config.workdir {
        Some(w) => w.clone(),
        None => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or(std::env::current_dir()?),
    };
    anyhow::ensure!(
        workdir.is_dir(),
        "the workdir {} is not a directory",
        workdir.display()
    );
    tracing::info!(venv = %config.kernels_venv.display(), languages = ?specs.languages(),
        workdir = %workdir.display(), runtime_dir = %runtime_dir.display(), "starting");

    let state = Arc::new(AppState {
        contexts: Contexts::new(
            specs,
            Settings {
                launch: LaunchConfig {
                    venv: config.kernels_venv.clone(),
                    runtime_dir: runtime_dir.clone(),
                    ipython_startup,
                    startup_timeout: config.kernel_startup_timeout(),
                },
                workdir,
                max_contexts: config.max_contexts.max(1),
                interrupt_timeout: config.interrupt_timeout(),
            },
        ),
        envd: Envd::new(config.envd_url()),
        ready: AtomicBool::new(false),
    });

    let mut servers = tokio::task::JoinSet::new();
    for addr in &config.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?
            .tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
        tracing::info!(%addr, "listening");
        let app = router(Arc::clone(&state));
        servers.spawn(async move { axum::serve(listener, app).await });
    }

    // The default Python context before `/health` says OK: the sandbox is offered warm.
    let started = std::time::Instant::now();
    let warm = async {
        state.contexts.default_for("python").await?;
        state.ready.store(true, Ordering::Release);
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "default Python context ready"
        );
        Ok::<_, ApiError>(())
    };
    let result = tokio::select! {
        r = warm => match r {
            Ok(()) => tokio::select! {
                r = servers.join_next() => server_ended(r),
                s = shutdown_signal() => s,
            },
            Err(e) => Err(anyhow::anyhow!("cannot start the default Python context: {e}")),
        },
        r = servers.join_next() => server_ended(r),
        s = shutdown_signal() => s,
    };
    state.contexts.kill_all();
    servers.abort_all();
    tracing::info!("code-interpreter stopped");
    result
}

fn server_ended(
    r: Option<Result<std::io::Result<()>, tokio::task::JoinError>>,
) -> anyhow::Result<()> {
    match r {
        Some(Ok(Err(e))) => Err(anyhow::anyhow!("the server failed: {e}")),
        Some(Err(e)) => Err(anyhow::anyhow!("the server failed: {e}")),
        _ => Err(anyhow::anyhow!("the server ended")),
    }
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("signal received; stopping");
    Ok(())
}
