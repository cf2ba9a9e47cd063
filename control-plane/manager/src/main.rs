//! `sandbox-manager`: wires the flags, the key store, the backend, the embedded sandbox-xds and
//! the HTTP server, and shuts them down in order on SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use sandbox_manager::api::{self, ApiConfig, AppCtx};
use sandbox_manager::backend::Backend;
use sandbox_manager::config::{Args, BackendKind, KeyStoreKind, LogFormat};
use sandbox_manager::kube::keys::SecretStorage;
use sandbox_manager::kube::{KubeBackend, KubeConfig};
use sandbox_manager::local::{LocalBackend, LocalConfig, templates};
use sandbox_manager::{idempotency::Idempotency, keys, metrics::Metrics};
use sandbox_xds::{GatewayResources, RunningServer, XdsServer};
use tokio_util::sync::CancellationToken;

fn gateway_resources(args: &Args) -> anyhow::Result<GatewayResources> {
    let g = match &args.gateway_config {
        Some(p) => serde_yaml::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?,
        )
        .with_context(|| format!("parse {}", p.display()))?,
        None => GatewayResources {
            listen_address: "127.0.0.1".into(),
            xds_address: format!("http://{}", args.xds_grpc_listen),
            ..GatewayResources::default()
        },
    };
    g.validate().map_err(anyhow::Error::msg)?;
    if g.listen_address == "0.0.0.0" || g.listen_address == "::" {
        tracing::warn!(
            "the gateway listener binds every address: local sandboxes (loopback addresses) could reach it"
        );
    }
    Ok(g)
}

/// The embedded backend and its in-process sandbox-xds.
async fn local_backend(
    args: &Args,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(Arc<dyn Backend>, RunningServer)> {
    let xds = XdsServer::new(&gateway_resources(args)?);
    let running = RunningServer::start(xds.clone(), args.xds_grpc_listen, args.xds_http_listen)
        .await
        .context("bind the embedded sandbox-xds")?;
    let templates = templates::load(args.templates.as_deref(), args.base_pool_size)
        .map_err(anyhow::Error::msg)?;
    let runtime_bin = args.runtime_bin();
    tracing::info!(runtime = %runtime_bin.display(), "local backend");
    let backend = LocalBackend::open(
        LocalConfig {
            data_dir: args.data_dir.clone(),
            runtime_bin,
            templates,
            address_range: args.address_range.clone(),
            min_gateways: args.min_gateways,
            route_wait: Duration::from_millis(args.route_wait_ms),
            claim_timeout: Duration::from_secs(args.claim_timeout),
            startup_timeout: Duration::from_secs(args.startup_timeout),
            max_sandboxes: args.max_sandboxes,
        },
        xds,
        metrics,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    Ok((Arc::new(backend), running))
}

/// Sandbox CRs through the apiserver (KUBECONFIG, else the in-cluster config), routes through
/// an external sandbox-xds.
async fn kube_backend(
    args: &Args,
    client: kube::Client,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Arc<dyn Backend>> {
    let backend = KubeBackend::open(
        client,
        KubeConfig {
            namespace: args.namespace.clone(),
            xds_address: args.xds_address.clone(),
            min_gateways: args.min_gateways,
            route_wait: Duration::from_millis(args.route_wait_ms),
            claim_timeout: Duration::from_secs(args.claim_timeout),
            wait_ready_timeout: Duration::from_secs(args.startup_timeout),
            workers: args.max_claim_workers,
            create_qps: args.max_create_qps,
            lifecycle_wait: Duration::from_secs(args.lifecycle_timeout),
            storage: sandbox_api::csi::StorageConfig::new(
                &args.storage_drivers,
                &args.storage_cli,
                &args.system_namespace,
            ),
        },
        metrics,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    Ok(backend)
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,hyper=warn,h2=warn,tower=warn".into());
    match args.log_format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("create {}", args.data_dir.display()))?;
    if args.reap {
        let n = sandbox_manager::local::reap(&args.data_dir)
            .await
            .map_err(anyhow::Error::msg)?;
        tracing::info!(sandboxes = n, "leftover sandbox processes killed");
        return Ok(());
    }
    let store_kind = args.key_store();
    if store_kind == KeyStoreKind::Secret && args.admin_api_key.is_none() {
        bail!(
            "--admin-api-key (E2B_ADMIN_API_KEY) is required with the Secret key store: every replica must write the same admin key"
        );
    }
    let admin = keys::admin_key(&args.data_dir, args.admin_api_key.as_deref())
        .map_err(anyhow::Error::msg)?;
    let shutdown = CancellationToken::new();
    let client = if args.backend == BackendKind::Kube || store_kind == KeyStoreKind::Secret {
        Some(
            kube::Client::try_default()
                .await
                .context("Kubernetes client (KUBECONFIG or in-cluster)")?,
        )
    } else {
        None
    };
    let keys: Arc<dyn keys::KeyStore> = match (store_kind, &client) {
        (KeyStoreKind::Secret, Some(client)) => {
            let storage = SecretStorage::new(client.clone(), &args.system_namespace);
            let book = keys::KeyBook::open(storage.clone(), &admin)
                .await
                .context("open the key store Secret")?;
            storage.watch(book.shared(), shutdown.clone());
            Arc::new(book)
        }
        _ => Arc::new(
            keys::FileKeyStore::open_dir(&args.data_dir, &admin)
                .await
                .context("open the key store")?,
        ),
    };
    let metrics = Arc::new(Metrics::new());

    let (backend, xds): (Arc<dyn Backend>, Option<RunningServer>) = match args.backend {
        BackendKind::Local => {
            let (b, running) = local_backend(&args, metrics.clone()).await?;
            (b, Some(running))
        }
        BackendKind::Kube => {
            let client = client.clone().context("Kubernetes client")?;
            (kube_backend(&args, client, metrics.clone()).await?, None)
        }
    };
    let ctx = AppCtx {
        backend: backend.clone(),
        keys,
        config: Arc::new(ApiConfig {
            enable_auth: args.enable_auth,
            max_timeout_secs: args.max_timeout,
            domain: args.domain.clone(),
        }),
        metrics,
        idempotency: Arc::new(Idempotency::default()),
    };
    // The handlers are in place before anything listens: a SIGTERM that comes as soon as the
    // port answers is a clean shutdown, not the default action (killed, sandboxes left behind).
    let signals = termination_signals()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    tracing::info!(
        api = %listener.local_addr()?,
        backend = backend.name(),
        xds = %xds.as_ref().map(|x| x.grpc_addr.to_string()).unwrap_or(args.xds_address.clone()),
        data_dir = %args.data_dir.display(),
        auth = args.enable_auth,
        "sandbox-manager serving"
    );
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal(signals).await;
            shutdown.cancel();
        });
    }
    let grace = Duration::from_secs(args.shutdown_timeout);
    let mcp = args
        .mcp
        .then(|| sandbox_manager::mcp::router(ctx.clone(), shutdown.clone()));
    api::serve(
        listener,
        api::router(ctx, mcp),
        shutdown,
        grace,
        Duration::from_secs(310),
    )
    .await;
    backend.shutdown().await;
    if let Some(running) = xds {
        running.stop().await;
    }
    tracing::info!("sandbox-manager stopped");
    Ok(())
}
