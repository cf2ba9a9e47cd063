//! Prometheus metrics of the daemon itself (`GET /metrics` with a Prometheus `Accept` header).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Counters and gauges, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<Labels, Counter>,
    pub processes_started: Counter,
    pub processes_running: Gauge,
    pub streams_open: Gauge,
    pub watchers: Gauge,
    pub upload_bytes: Counter,
    pub download_bytes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("agent_runtime");
        let requests = Family::<Labels, Counter>::default();
        let processes_started = Counter::default();
        let processes_running = Gauge::default();
        let streams_open = Gauge::default();
        let watchers = Gauge::default();
        let upload_bytes = Counter::default();
        let download_bytes = Counter::default();
        let info = Family::<Labels, Gauge>::default();
        info.get_or_create(&vec![
            ("version", crate::VERSION.to_string()),
            ("envd_version", crate::ENVD_VERSION.to_string()),
        ])
        .set(1);
        registry.register(
            "requests",
            "HTTP requests by route and status code",
            requests.clone(),
        );
        registry.register(
            "processes_started",
            "Processes started",
            processes_started.clone(),
        );
        registry.register(
            "processes_running",
            "Processes currently running",
            processes_running.clone(),
        );
        registry.register(
            "streams_open",
            "Open server streams (process output, directory watches)",
            streams_open.clone(),
        );
        registry.register(
            "watchers",
            "Polling directory watchers (CreateWatcher)",
            watchers.clone(),
        );
        registry.register(
            "upload_bytes",
            "File bytes written through POST /files",
            upload_bytes.clone(),
        );
        registry.register(
            "download_bytes",
            "File bytes read through GET /files",
            download_bytes.clone(),
        );
        registry.register(
            "build_info",
            "Daemon version and the envd version it implements",
            info,
        );
        Metrics {
            registry,
            requests,
            processes_started,
            processes_running,
            streams_open,
            watchers,
            upload_bytes,
            download_bytes,
        }
    }

    /// Counts one finished request.
    pub fn request(&self, route: &str, status: u16) {
        self.requests
            .get_or_create(&vec![
                ("route", route.to_string()),
                ("code", status.to_string()),
            ])
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = encode(&mut s, &self.registry);
        s
    }
}

/// Decrements a gauge when dropped (open streams).
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub fn new(g: &Gauge) -> Self {
        g.inc();
        GaugeGuard(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.request("/health", 204);
        m.processes_started.inc();
        {
            let _g = GaugeGuard::new(&m.streams_open);
            assert!(m.render().contains("agent_runtime_streams_open 1"));
        }
        let text = m.render();
        assert!(
            text.contains("agent_runtime_requests_total{route=\"/health\",code=\"204\"} 1"),
            "{text}"
        );
        assert!(text.contains("agent_runtime_processes_started_total 1"));
        assert!(text.contains("agent_runtime_streams_open 0"));
        assert!(text.contains("envd_version=\"0.6.13\""));
        assert!(text.ends_with("# EOF\n"));
    }
}
