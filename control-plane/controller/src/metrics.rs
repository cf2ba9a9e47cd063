//! Prometheus metrics (text exposition on `/metrics`).

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub controller: String,
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub namespace: String,
    pub sandboxset: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub reconciles: Family<ControllerLabel, Counter>,
    pub reconcile_errors: Family<ErrorLabel, Counter>,
    pub reconcile_duration: Family<ControllerLabel, Histogram>,
    pub claims: Family<ResultLabel, Counter>,
    pub claim_stages: Family<StageLabel, Histogram>,
    pub pods_created: Counter,
    pub sandboxes_created: Counter,
    pub sandboxes_deleted: Counter,
    pub pool_replicas: Family<PoolLabel, Gauge>,
    pub pool_available: Family<PoolLabel, Gauge>,
    pub leader: Gauge,
    pub events_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("sandbox_controller");
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
            claims: Family::default(),
            claim_stages: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            pods_created: Counter::default(),
            sandboxes_created: Counter::default(),
            sandboxes_deleted: Counter::default(),
            pool_replicas: Family::default(),
            pool_available: Family::default(),
            leader: Gauge::default(),
            events_dropped: Counter::default(),
        };
        r.register(
            "reconcile",
            "Reconciles by controller",
            m.reconciles.clone(),
        );
        r.register(
            "reconcile_errors",
            "Failed reconciles by controller and error class",
            m.reconcile_errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            m.reconcile_duration.clone(),
        );
        r.register(
            "claims",
            "Claim attempts by result (claimed, created, conflict, no_stock, init_failed, failed)",
            m.claims.clone(),
        );
        r.register(
            "claim_stage_duration_seconds",
            "Time claim attempts spent per stage (pick, take, wait_ready, init, route)",
            m.claim_stages.clone(),
        );
        r.register(
            "pods_created",
            "Pods created for sandboxes",
            m.pods_created.clone(),
        );
        r.register(
            "sandboxes_created",
            "Sandboxes created by SandboxSets and claims",
            m.sandboxes_created.clone(),
        );
        r.register(
            "sandboxes_deleted",
            "Sandboxes deleted by SandboxSets (scale-down, rolling update, dead)",
            m.sandboxes_deleted.clone(),
        );
        r.register(
            "pool_replicas",
            "Unused sandboxes (creating + available) per SandboxSet",
            m.pool_replicas.clone(),
        );
        r.register(
            "pool_available",
            "Available sandboxes per SandboxSet",
            m.pool_available.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader lease",
            m.leader.clone(),
        );
        r.register(
            "events_dropped",
            "Kubernetes events dropped because the publishing queue was full",
            m.events_dropped.clone(),
        );
        *m.registry.lock().expect("registry") = r;
        m
    }
}

impl Metrics {
    pub fn observe(&self, controller: &str, took: Duration, error: Option<&str>) {
        let l = ControllerLabel {
            controller: controller.into(),
        };
        self.reconciles.get_or_create(&l).inc();
        self.reconcile_duration
            .get_or_create(&l)
            .observe(took.as_secs_f64());
        if let Some(e) = error {
            self.reconcile_errors
                .get_or_create(&ErrorLabel {
                    controller: controller.into(),
                    error: e.into(),
                })
                .inc();
        }
    }

    pub fn claim(&self, result: &str) {
        self.claims
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    /// Records the stages an attempt went through.
    pub fn claim_timings(&self, t: &sandbox_core::ClaimTimings) {
        for (stage, took) in t.stages() {
            self.claim_stages
                .get_or_create(&StageLabel {
                    stage: stage.into(),
                })
                .observe(took.as_secs_f64());
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(
            &mut out,
            &self.registry.lock().expect("registry"),
        )
        .expect("encode metrics");
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn exposes_text_format() {
        let m = super::Metrics::default();
        m.observe("sandbox", std::time::Duration::from_millis(3), Some("kube"));
        m.claim("claimed");
        m.claim_timings(&sandbox_core::ClaimTimings {
            take: Duration::from_millis(2),
            ..Default::default()
        });
        let text = m.encode();
        assert!(
            text.contains("sandbox_controller_reconcile_total{controller=\"sandbox\"} 1"),
            "{text}"
        );
        assert!(text.contains(
            "sandbox_controller_reconcile_errors_total{controller=\"sandbox\",error=\"kube\"} 1"
        ));
        assert!(text.contains("sandbox_controller_claims_total{result=\"claimed\"} 1"));
        assert!(
            text.contains(
                "sandbox_controller_claim_stage_duration_seconds_count{stage=\"take\"} 1"
            )
        );
        assert!(!text.contains("stage=\"wait_ready\""), "{text}");
    }
}
