//! Prometheus metrics of the xDS server (text format on `/metrics`).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::Outcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub type_url: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// All metrics; cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    streams: Family<KindLabel, Gauge>,
    responses: Family<TypeLabel, Counter>,
    resources_sent: Family<TypeLabel, Counter>,
    acks: Family<TypeLabel, Counter>,
    nacks: Family<TypeLabel, Counter>,
    routes: Gauge,
    route_events: Family<OutcomeLabel, Counter>,
    source_synced: Gauge,
    waits: Family<OutcomeLabel, Counter>,
    wait_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("sandbox_xds");
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            streams: Family::default(),
            responses: Family::default(),
            resources_sent: Family::default(),
            acks: Family::default(),
            nacks: Family::default(),
            routes: Gauge::default(),
            route_events: Family::default(),
            source_synced: Gauge::default(),
            waits: Family::default(),
            wait_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
        };
        r.register("streams", "Connected discovery streams", m.streams.clone());
        r.register("responses", "Discovery responses sent", m.responses.clone());
        r.register(
            "resources_sent",
            "Resources sent in discovery responses",
            m.resources_sent.clone(),
        );
        r.register("acks", "Responses acknowledged by clients", m.acks.clone());
        r.register(
            "nacks",
            "Responses rejected by clients (the client keeps its last good version)",
            m.nacks.clone(),
        );
        r.register("routes", "Sandbox routes served", m.routes.clone());
        r.register(
            "route_events",
            "Route mutations by outcome",
            m.route_events.clone(),
        );
        r.register(
            "route_source_synced",
            "1 once the route source delivered its first complete view",
            m.source_synced.clone(),
        );
        r.register(
            "wait_for_route",
            "WaitForRoute calls by result",
            m.waits.clone(),
        );
        r.register(
            "wait_for_route_seconds",
            "WaitForRoute latency",
            m.wait_seconds.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn stream_opened(&self, kind: &'static str) {
        self.streams.get_or_create(&KindLabel { kind }).inc();
    }
    pub fn stream_closed(&self, kind: &'static str) {
        self.streams.get_or_create(&KindLabel { kind }).dec();
    }
    pub fn response(&self, type_url: &str, resources: usize) {
        let l = TypeLabel {
            type_url: type_url.to_string(),
        };
        self.responses.get_or_create(&l).inc();
        self.resources_sent
            .get_or_create(&l)
            .inc_by(resources as u64);
    }
    pub fn ack(&self, type_url: &str) {
        self.acks
            .get_or_create(&TypeLabel {
                type_url: type_url.to_string(),
            })
            .inc();
    }
    pub fn nack(&self, type_url: &str) {
        self.nacks
            .get_or_create(&TypeLabel {
                type_url: type_url.to_string(),
            })
            .inc();
    }
    pub fn set_routes(&self, n: usize) {
        self.routes.set(n as i64);
    }
    pub fn route_event(&self, outcome: Outcome) {
        self.route_events
            .get_or_create(&OutcomeLabel {
                outcome: outcome.label(),
            })
            .inc();
    }
    pub fn set_source_synced(&self, synced: bool) {
        self.source_synced.set(i64::from(synced));
    }
    pub fn wait(&self, synced: bool, seconds: f64) {
        self.waits
            .get_or_create(&OutcomeLabel {
                outcome: if synced { "synced" } else { "timeout" },
            })
            .inc();
        self.wait_seconds.observe(seconds);
    }
}
