//! Prometheus metrics of the manager (`GET /metrics`, OpenMetrics text): requests by route and
//! status, create outcomes and latency, and the backend's pools and sandboxes.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CreateLabels {
    template: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TemplateLabel {
    template: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: &'static str,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, 16)
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<RouteLabel, Histogram>,
    creates: Family<CreateLabels, Counter>,
    create_seconds: Family<TemplateLabel, Histogram>,
    stage_seconds: Family<StageLabel, Histogram>,
    pool_available: Family<TemplateLabel, Gauge>,
    sandboxes: Family<StateLabel, Gauge>,
    /// Takes lost to another writer (kube backend: a 409 on the guarded patch).
    claim_conflicts: Counter,
    encode_lock: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sandbox_manager");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_seconds = Family::<RouteLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        let creates = Family::<CreateLabels, Counter>::default();
        let create_seconds = Family::<TemplateLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        let stage_seconds = Family::<StageLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        let pool_available = Family::<TemplateLabel, Gauge>::default();
        let sandboxes = Family::<StateLabel, Gauge>::default();
        let claim_conflicts = Counter::default();
        registry.register(
            "claim_conflicts",
            "Takes lost to another writer of the same sandbox (the next candidate was tried)",
            claim_conflicts.clone(),
        );
        registry.register(
            "http_requests",
            "API requests by route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "API request latency by route",
            request_seconds.clone(),
        );
        registry.register(
            "sandbox_creates",
            "Sandbox creates by template and result",
            creates.clone(),
        );
        registry.register(
            "sandbox_create_duration_seconds",
            "Create latency (claim, init, route) by template",
            create_seconds.clone(),
        );
        registry.register(
            "claim_stage_duration_seconds",
            "Time spent in each stage of a create (pick, start, init, route)",
            stage_seconds.clone(),
        );
        registry.register(
            "pool_available",
            "Warm sandboxes ready to be claimed, by template",
            pool_available.clone(),
        );
        registry.register("sandboxes", "Claimed sandboxes by state", sandboxes.clone());
        Metrics {
            registry,
            requests,
            request_seconds,
            creates,
            create_seconds,
            stage_seconds,
            pool_available,
            sandboxes,
            claim_conflicts,
            encode_lock: Mutex::new(()),
        }
    }

    pub fn observe_request(&self, method: &str, route: &str, code: u16, d: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_string(),
                route: route.to_string(),
                code,
            })
            .inc();
        self.request_seconds
            .get_or_create(&RouteLabel {
                route: route.to_string(),
            })
            .observe(d.as_secs_f64());
    }

    pub fn observe_create(&self, template: &str, ok: bool, d: Duration) {
        self.creates
            .get_or_create(&CreateLabels {
                template: template.to_string(),
                result: if ok { "success" } else { "failure" },
            })
            .inc();
        if ok {
            self.create_seconds
                .get_or_create(&TemplateLabel {
                    template: template.to_string(),
                })
                .observe(d.as_secs_f64());
        }
    }

    /// Takes a create lost before it got a sandbox.
    pub fn count_conflicts(&self, n: u32) {
        self.claim_conflicts.inc_by(u64::from(n));
    }

    /// One stage of a create: `pick`, `start`, `init`, `route`.
    pub fn observe_stage(&self, stage: &'static str, d: Duration) {
        self.stage_seconds
            .get_or_create(&StageLabel { stage })
            .observe(d.as_secs_f64());
    }

    pub fn set_pool_available(&self, template: &str, n: usize) {
        self.pool_available
            .get_or_create(&TemplateLabel {
                template: template.to_string(),
            })
            .set(n as i64);
    }

    pub fn set_sandboxes(&self, state: &'static str, n: usize) {
        self.sandboxes
            .get_or_create(&StateLabel { state })
            .set(n as i64);
    }

    pub fn encode(&self) -> String {
        let _g = self.encode_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
