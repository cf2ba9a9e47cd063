//! sandbox-controller binary: flags, logging, leader election, controllers, HTTP endpoints and
//! graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use sandbox_controller::context::{Context, Settings};
use sandbox_controller::leader::{LeaderElector, LeaseConfig};
use sandbox_controller::metrics::Metrics;
use sandbox_controller::run::{Workers, mark_ready, run_controllers};
use sandbox_controller::server::{Health, router, serve};
use tokio::sync::watch;

/// Reconciles Sandbox, SandboxSet and SandboxClaim (agents.kruise.io/v1alpha1).
/// The Kubernetes connection comes from KUBECONFIG or the in-cluster service account.
#[derive(Parser, Debug)]
#[command(name = "sandbox-controller", version)]
struct Args {
    /// Address of /metrics.
    #[arg(long, env = "METRICS_BIND_ADDRESS", default_value = "0.0.0.0:8080")]
    metrics_bind_address: SocketAddr,
    /// Address of /healthz and /readyz.
    #[arg(
        long,
        env = "HEALTH_PROBE_BIND_ADDRESS",
        default_value = "0.0.0.0:8081"
    )]
    health_probe_bind_address: SocketAddr,
    /// Run only while holding the leader Lease.
    #[arg(long, env = "LEADER_ELECT", default_value_t = false)]
    leader_elect: bool,
    /// Namespace of the leader Lease.
    #[arg(long, env = "LEADER_ELECT_NAMESPACE", default_value = "sandbox-system")]
    leader_elect_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, env = "LEADER_ELECT_ID", default_value = "f57b9a68.kruise.io")]
    leader_elect_id: String,
    /// Lease duration in seconds.
    #[arg(long, env = "LEADER_ELECT_LEASE_SECONDS", default_value_t = 15)]
    leader_elect_lease_seconds: u64,
    /// Namespace holding ConfigMap sandbox-injection-config (upstream: $POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE", default_value = "sandbox-system")]
    system_namespace: String,
    /// CSI drivers whose PersistentVolumes may be mounted into running sandboxes (a
    /// SandboxClaim's dynamicVolumesMount, the re-mount after a resume; comma-separated,
    /// upstream's DYNAMIC_STORAGE_DRIVER_LIST). Empty: none.
    #[arg(
        long,
        env = "DYNAMIC_STORAGE_DRIVER_LIST",
        value_delimiter = ',',
        default_value = ""
    )]
    storage_drivers: Vec<String>,
    /// The mount CLI inside sandboxes (run as root through envd).
    #[arg(long, env = "STORAGE_CLI", default_value = sandbox_storage::CLI_PATH)]
    storage_cli: String,
    /// Concurrent Sandbox reconciles.
    #[arg(long, env = "SANDBOX_WORKERS", default_value_t = 500)]
    sandbox_workers: u16,
    /// Concurrent SandboxSet reconciles.
    #[arg(long, env = "SANDBOXSET_WORKERS", default_value_t = 3)]
    sandboxset_workers: u16,
    /// First batch of sandbox creations per SandboxSet reconcile (doubles after each success).
    #[arg(long, env = "SANDBOXSET_INITIAL_BATCH_SIZE", default_value_t = 16)]
    sandboxset_initial_batch_size: usize,
    /// A pool's refill waits until no sandbox of it was claimed for this long, so that a burst
    /// of claims does not share the apiserver with the refill of what it took (0: refill at
    /// once, as upstream). Never while less than half the pool is left.
    #[arg(long, env = "SANDBOXSET_REFILL_QUIET_MS", default_value_t = 500)]
    sandboxset_refill_quiet_ms: u64,
    /// ... and never longer than this.
    #[arg(long, env = "SANDBOXSET_REFILL_MAX_HOLD_MS", default_value_t = 3000)]
    sandboxset_refill_max_hold_ms: u64,
    /// Concurrent SandboxClaim reconciles.
    #[arg(long, env = "SANDBOXCLAIM_WORKERS", default_value_t = 500)]
    sandboxclaim_workers: u16,
    /// Most sandboxes one claim takes per reconcile.
    #[arg(long, env = "SANDBOXCLAIM_MAX_BATCH_SIZE", default_value_t = 50)]
    sandboxclaim_max_batch_size: usize,
    /// First batch of claim attempts per reconcile (doubles after each success).
    #[arg(long, env = "SANDBOXCLAIM_INITIAL_BATCH_SIZE", default_value_t = 5)]
    sandboxclaim_initial_batch_size: usize,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Concurrent SandboxUpdateOps reconciles.
    #[arg(long, env = "SANDBOXUPDATEOPS_WORKERS", default_value_t = 1)]
    sandboxupdateops_workers: u16,
    /// Serve the admission webhooks (`ENABLE_WEBHOOKS=false` disables them, as upstream).
    #[arg(long, env = "ENABLE_WEBHOOKS", default_value_t = true, action = clap::ArgAction::Set)]
    enable_webhooks: bool,
    /// HTTPS address of the admission webhooks.
    #[arg(long, env = "WEBHOOK_BIND_ADDRESS", default_value = "0.0.0.0:9443")]
    webhook_bind_address: SocketAddr,
    /// Service fronting the webhooks (certificate SANs `<svc>.<ns>.svc`).
    #[arg(
        long,
        env = "WEBHOOK_SERVICE_NAME",
        default_value = "sandbox-controller-webhook-service"
    )]
    webhook_service_name: String,
    /// The controller's own identity: the only user allowed to delete sandbox pods directly.
    #[arg(
        long,
        env = "SANDBOX_CONTROLLER_USERNAME",
        default_value = "system:serviceaccount:sandbox-system:sandbox-controller-manager"
    )]
    controller_username: String,
    /// persistentContents given to SandboxSets created without any (comma list of ip,memory,filesystem).
    #[arg(long, env = "DEFAULT_PERSISTENT_CONTENTS", value_delimiter = ',')]
    default_persistent_contents: Vec<String>,
    /// Log as JSON lines.
    #[arg(long, env = "LOG_JSON", default_value_t = false)]
    log_json: bool,
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let b = tracing_subscriber::fmt().with_env_filter(filter);
    if json { b.json().init() } else { b.init() }
}

async fn signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_json);
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    let (stop_tx, stop_rx) = watch::channel(false);

    let http_stop = || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let app = router(metrics.clone(), health.clone());
    let metrics_srv = tokio::spawn(serve(args.metrics_bind_address, app.clone(), http_stop()));
    let health_srv = if args.health_probe_bind_address != args.metrics_bind_address {
        Some(tokio::spawn(serve(
            args.health_probe_bind_address,
            app,
            http_stop(),
        )))
    } else {
        None
    };

    let settings = Settings {
        system_namespace: args.system_namespace.clone(),
        sandboxset_initial_batch: args.sandboxset_initial_batch_size,
        claim_initial_batch: args.sandboxclaim_initial_batch_size,
        claim_max_batch: args.sandboxclaim_max_batch_size,
        claim_workers: args.sandboxclaim_workers.into(),
        refill_hold: sandbox_controller::pool::RefillHold {
            quiet: Duration::from_millis(args.sandboxset_refill_quiet_ms),
            max: Duration::from_millis(args.sandboxset_refill_max_hold_ms),
        },
        storage: sandbox_api::csi::StorageConfig::new(
            &args.storage_drivers,
            &args.storage_cli,
            &args.system_namespace,
        ),
        ..Settings::default()
    };
    let ctx = Context::new(client.clone(), settings, metrics.clone());
    let event_publisher = ctx.take_event_publisher();
    let workers = Workers {
        sandbox: args.sandbox_workers,
        sandboxset: args.sandboxset_workers,
        sandboxclaim: args.sandboxclaim_workers,
        updateops: args.sandboxupdateops_workers,
    };

    // Webhooks are served by every replica, leader or not.
    let webhook_srv = args.enable_webhooks.then(|| {
        let cfg = sandbox_controller::webhook::WebhookConfig {
            bind: args.webhook_bind_address,
            namespace: args.system_namespace.clone(),
            service: args.webhook_service_name.clone(),
            controller_user: args.controller_username.clone(),
            default_persistent_contents: args.default_persistent_contents.clone(),
        };
        let client = client.clone();
        let stop = http_stop();
        tokio::spawn(async move {
            if let Err(e) = sandbox_controller::webhook::serve(client, cfg, stop).await {
                tracing::error!(error = %e, "admission webhook server failed");
            }
        })
    });

    let identity = format!(
        "{}_{:08x}",
        std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "sandbox-controller".into()),
        rand::random::<u32>()
    );
    let elector = args.leader_elect.then(|| {
        LeaderElector::new(
            client.clone(),
            LeaseConfig {
                name: args.leader_elect_id.clone(),
                namespace: args.leader_elect_namespace.clone(),
                identity: identity.clone(),
                lease_duration: Duration::from_secs(args.leader_elect_lease_seconds),
                renew_interval: Duration::from_secs((args.leader_elect_lease_seconds / 5).max(1)),
            },
        )
    });

    let mut exit_code = 0;
    if let Some(el) = &elector {
        // A standby is healthy and ready (it serves probes) while it waits for the lease.
        mark_ready(&health);
        tracing::info!(%identity, lease = %args.leader_elect_id, "waiting for leadership");
        tokio::select! {
            _ = el.acquire() => {},
            _ = signal() => {
                let _ = stop_tx.send(true);
                let _ = metrics_srv.await;
                return Ok(());
            }
        }
        metrics.leader.set(1);
        tracing::info!(%identity, "became leader");
    }
    mark_ready(&health);
    let ctl = tokio::spawn(run_controllers(
        client.clone(),
        args.namespace.clone(),
        ctx,
        workers,
        stop_rx.clone(),
    ));
    let lost = async {
        match &elector {
            Some(el) => el.hold().await,
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = signal() => tracing::info!("shutting down"),
        _ = lost => {
            tracing::error!("lost leadership; exiting");
            exit_code = 1;
        }
    }
    let _ = stop_tx.send(true);
    if tokio::time::timeout(Duration::from_secs(20), ctl)
        .await
        .is_err()
    {
        tracing::warn!("controllers did not stop within 20s");
    } else if let Some(p) = event_publisher
        && tokio::time::timeout(Duration::from_secs(2), p)
            .await
            .is_err()
    {
        tracing::warn!("queued events not all published within 2s");
    }
    if let Some(el) = &elector {
        el.release().await;
        metrics.leader.set(0);
    }
    let _ = metrics_srv.await;
    if let Some(w) = webhook_srv {
        let _ = w.await;
    }
    if let Some(h) = health_srv {
        let _ = h.await;
    }
    if exit_code != 0 {
        std::process::exit(exit_code);
    }
    Ok(())
}
