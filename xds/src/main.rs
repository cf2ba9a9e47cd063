//! `sandbox-xds`: serves listeners, clusters and sandbox routes to the gateways over ADS.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use sandbox_xds::kube_source::{self, Projection};
use sandbox_xds::{GatewayResources, XdsServer};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Source {
    /// Watch Sandbox CRs in Kubernetes.
    Kube,
    /// No route source (routes only from an embedding process; useful for tests).
    None,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

/// The xDS control plane of the sandbox gateways.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// gRPC address (ADS for the gateways, RouteSync for the manager).
    #[arg(long, env = "SANDBOX_XDS_GRPC_LISTEN", default_value = "0.0.0.0:18000")]
    grpc_listen: SocketAddr,
    /// HTTP address for /metrics, /healthz and /readyz.
    #[arg(long, env = "SANDBOX_XDS_HTTP_LISTEN", default_value = "0.0.0.0:18001")]
    http_listen: SocketAddr,
    /// YAML file with the gateways' listener and cluster settings (circuit breakers, timeouts,
    /// ports, the address modules use to reach this server). Reloaded on SIGHUP.
    #[arg(long, env = "SANDBOX_XDS_GATEWAY_CONFIG")]
    gateway_config: Option<PathBuf>,
    /// Where routes come from.
    #[arg(long, env = "SANDBOX_XDS_SOURCE", value_enum, default_value = "kube")]
    source: Source,
    /// Watch Sandboxes in this namespace only (default: all namespaces).
    #[arg(long, env = "SANDBOX_XDS_NAMESPACE")]
    namespace: Option<String>,
    /// Make gateways require X-Access-Token on envd's port for sandboxes that have a token.
    #[arg(long, env = "SANDBOX_XDS_ENFORCE_ACCESS_TOKEN", default_value_t = true, action = clap::ArgAction::Set)]
    enforce_access_token: bool,
    #[arg(
        long,
        env = "SANDBOX_XDS_LOG_FORMAT",
        value_enum,
        default_value = "json"
    )]
    log_format: LogFormat,
    /// Parse and validate --gateway-config, print the effective settings (defaults filled in)
    /// and exit: 0 if valid, 1 with the reason if not (like `envoy --mode validate`).
    #[arg(long)]
    check_config: bool,
}

fn load_gateway(path: Option<&PathBuf>) -> anyhow::Result<GatewayResources> {
    let g: GatewayResources = match path {
        Some(p) => serde_yaml::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?,
        )
        .with_context(|| format!("parse {}", p.display()))?,
        None => GatewayResources::default(),
    };
    g.validate().map_err(anyhow::Error::msg)?;
    Ok(g)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.check_config {
        let g = load_gateway(args.gateway_config.as_ref())?;
        println!("{g:#?}");
        return Ok(());
    }
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    match args.log_format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
    }
    let gateway = load_gateway(args.gateway_config.as_ref())?;
    let server = XdsServer::new(&gateway);

    match args.source {
        Source::Kube => {
            let client = kube::Client::try_default()
                .await
                .context("connect to Kubernetes")?;
            let projection = Projection {
                enforce_access_token: args.enforce_access_token,
            };
            tokio::spawn(kube_source::run(
                client,
                args.namespace.clone(),
                projection,
                server.routes.clone(),
                server.shutdown_signal(),
            ));
        }
        Source::None => server.routes.mark_synced(),
    }

    let running =
        sandbox_xds::RunningServer::start(server.clone(), args.grpc_listen, args.http_listen)
            .await
            .context("bind listeners")?;
    tracing::info!(grpc = %running.grpc_addr, http = %running.http_addr, "sandbox-xds serving");

    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = hup.recv() => match load_gateway(args.gateway_config.as_ref()) {
                Ok(g) => {
                    server.set_gateway_resources(&g);
                    tracing::info!("gateway config reloaded");
                }
                Err(e) => tracing::error!(error = %format!("{e:#}"), "gateway config reload failed; keeping the current one"),
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}
