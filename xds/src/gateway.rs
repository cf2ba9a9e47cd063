//! The gateways' listeners and clusters, served over ADS (the gateway bootstrap holds only the
//! ADS cluster and admin). They mirror `envoy/gateway.yaml`; the module's filter config points it
//! at this server for its `SandboxRoute` subscription. Circuit breakers, timeouts and buffer
//! limits come from [`GatewayResources`] (a YAML file, defaults = the installation guide's).

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLogFilter, ResponseFlagFilter, access_log_filter,
};
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, circuit_breakers::Thresholds, cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, Http1ProtocolOptions, HttpProtocolOptions as CoreHttpProtocolOptions, RoutingPriority,
    SocketAddress, SubstitutionFormatString, address, socket_address, substitution_format_string,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
    StdoutAccessLog, stdout_access_log,
};
use envoy_types::pb::envoy::extensions::dynamic_modules::v3::DynamicModuleConfig;
use envoy_types::pb::envoy::extensions::filters::http::dynamic_modules::v3::DynamicModuleFilter;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, LocalReplyConfig, ResponseMapper, http_connection_manager,
    http_filter,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::r#type::metadata::v3::{MetadataKey, metadata_key};
use envoy_types::pb::google::protobuf::{Any, Duration, Struct, UInt32Value, Value, value};
use prost::Message;
use serde::Deserialize;

pub const LISTENER_TYPE_URL: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const CLUSTER_TYPE_URL: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

/// Circuit breakers of the sandbox cluster.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerConfig {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        CircuitBreakerConfig {
            max_connections: 32768,
            max_pending_requests: 32768,
            max_requests: 65536,
            max_retries: 5,
        }
    }
}

/// What the server tells every gateway to run. YAML, every field optional.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayResources {
    /// Sandbox traffic listener (port 0: any free port, for several gateways on one host).
    pub listen_address: String,
    pub listen_port: u16,
    /// Prometheus listener (`/metrics` → admin `/stats/prometheus`); 0 disables it.
    pub metrics_port: u16,
    /// Envoy's admin port on the gateways (the metrics listener proxies to it).
    pub admin_port: u16,
    pub stream_idle_timeout_secs: u64,
    pub buffer_limit_bytes: u32,
    pub connect_timeout_ms: u64,
    pub upstream_idle_timeout_secs: u64,
    pub circuit_breakers: CircuitBreakerConfig,
    pub access_log: bool,
    /// The module: library name and Envoy stats namespace.
    pub module_name: String,
    pub metrics_namespace: String,
    /// How the module reaches this server for `SandboxRoute` (e.g. `http://sandbox-xds:18000`).
    pub xds_address: String,
    /// Extra filter-config fields passed to the module as they are (e.g. `envd_port`).
    pub filter_config: serde_json::Map<String, serde_json::Value>,
}

impl Default for GatewayResources {
    fn default() -> Self {
        GatewayResources {
            listen_address: "0.0.0.0".into(),
            listen_port: 10000,
            metrics_port: 9902,
            admin_port: 9901,
            stream_idle_timeout_secs: 600,
            buffer_limit_bytes: 1 << 20,
            connect_timeout_ms: 5000,
            upstream_idle_timeout_secs: 60,
            circuit_breakers: CircuitBreakerConfig::default(),
            access_log: true,
            module_name: "sandbox_gateway".into(),
            metrics_namespace: "sandbox".into(),
            xds_address: "http://127.0.0.1:18000".into(),
            filter_config: serde_json::Map::new(),
        }
    }
}

fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: format!("type.googleapis.com/{type_url}"),
        value: m.encode_to_vec(),
    }
}

fn duration_ms(ms: u64) -> Duration {
    Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn secs(s: u64) -> Duration {
    Duration {
        seconds: s as i64,
        nanos: 0,
    }
}

fn u32v(v: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value: v })
}

fn socket(ip: &str, port: u16) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    })
}

/// JSON value → `google.protobuf.Value`.
fn pb_value(v: &serde_json::Value) -> Value {
    let kind = match v {
        serde_json::Value::Null => value::Kind::NullValue(0),
        serde_json::Value::Bool(b) => value::Kind::BoolValue(*b),
        serde_json::Value::Number(n) => value::Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => value::Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => {
            value::Kind::ListValue(envoy_types::pb::google::protobuf::ListValue {
                values: a.iter().map(pb_value).collect(),
            })
        }
        serde_json::Value::Object(o) => value::Kind::StructValue(pb_struct(o)),
    };
    Value { kind: Some(kind) }
}

fn pb_struct(o: &serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: o.iter().map(|(k, v)| (k.clone(), pb_value(v))).collect(),
    }
}

fn router() -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(
            "envoy.extensions.filters.http.router.v3.Router",
            &Router::default(),
        ))),
        ..Default::default()
    }
}

fn hcm_filter(hcm: &HttpConnectionManager) -> Filter {
    Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            hcm,
        ))),
    }
}

fn json_format(fields: &[(&str, serde_json::Value)]) -> SubstitutionFormatString {
    let map: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    SubstitutionFormatString {
        format: Some(substitution_format_string::Format::JsonFormat(pb_struct(
            &map,
        ))),
        ..Default::default()
    }
}

fn access_log() -> AccessLog {
    use serde_json::json;
    let fields = [
        ("start_time", json!("%START_TIME%")),
        ("method", json!("%REQ(:METHOD)%")),
        ("path", json!("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%")),
        ("authority", json!("%REQ(:AUTHORITY)%")),
        ("request_id", json!("%REQ(X-REQUEST-ID)%")),
        ("protocol", json!("%PROTOCOL%")),
        (
            "sandbox_id",
            json!("%DYNAMIC_METADATA(envoy.lb.original_dst:sandbox_id)%"),
        ),
        ("response_code", json!("%RESPONSE_CODE%")),
        ("response_code_details", json!("%RESPONSE_CODE_DETAILS%")),
        ("response_flags", json!("%RESPONSE_FLAGS%")),
        ("duration_ms", json!("%DURATION%")),
        ("bytes_received", json!("%BYTES_RECEIVED%")),
        ("bytes_sent", json!("%BYTES_SENT%")),
        ("upstream_host", json!("%UPSTREAM_HOST%")),
        (
            "downstream_remote_address",
            json!("%DOWNSTREAM_REMOTE_ADDRESS%"),
        ),
    ];
    AccessLog {
        name: "envoy.access_loggers.stdout".into(),
        config_type: Some(access_log::ConfigType::TypedConfig(any(
            "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            &StdoutAccessLog {
                access_log_format: Some(stdout_access_log::AccessLogFormat::LogFormat(
                    json_format(&fields),
                )),
            },
        ))),
        ..Default::default()
    }
}

impl GatewayResources {
    /// The module's filter config: the extra fields, the sandbox cluster, and the xDS source.
    pub fn module_filter_config(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut fc = self.filter_config.clone();
        fc.insert("sandbox_cluster".into(), "sandboxes".into());
        fc.insert(
            "xds".into(),
            serde_json::json!({ "address": self.xds_address }),
        );
        fc
    }

    fn sandbox_listener(&self) -> Listener {
        let module = HttpFilter {
            name: self.module_name.clone(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(
                "envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
                &DynamicModuleFilter {
                    dynamic_module_config: Some(DynamicModuleConfig {
                        name: self.module_name.clone(),
                        metrics_namespace: self.metrics_namespace.clone(),
                        // The module runs a background xDS client; never unload it.
                        do_not_close: true,
                        ..Default::default()
                    }),
                    filter_name: self.module_name.clone(),
                    filter_config: Some(any(
                        "google.protobuf.Struct",
                        &pb_struct(&self.module_filter_config()),
                    )),
                    ..Default::default()
                },
            ))),
            ..Default::default()
        };
        let route_config = RouteConfiguration {
            name: "sandbox_routes".into(),
            virtual_hosts: vec![VirtualHost {
                name: "sandboxes".into(),
                domains: vec!["*".into()],
                routes: vec![Route {
                    name: "sandbox".into(),
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(route::Action::Route(RouteAction {
                        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                            "sandboxes".into(),
                        )),
                        // No route timeout: commands stream for hours.
                        timeout: Some(secs(0)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let port_not_open = ResponseMapper {
            filter: Some(AccessLogFilter {
                filter_specifier: Some(access_log_filter::FilterSpecifier::ResponseFlagFilter(
                    ResponseFlagFilter {
                        flags: vec!["UF".into()],
                    },
                )),
            }),
            status_code: u32v(502),
            body_format_override: Some(SubstitutionFormatString {
                content_type: "application/json".into(),
                ..json_format(&[
                    (
                        "sandboxId",
                        serde_json::json!("%DYNAMIC_METADATA(envoy.lb.original_dst:sandbox_id)%"),
                    ),
                    (
                        "message",
                        serde_json::json!("The sandbox is running but port is not open"),
                    ),
                    ("code", serde_json::json!(502)),
                ])
            }),
            ..Default::default()
        };
        let hcm = HttpConnectionManager {
            stat_prefix: "sandbox_gateway".into(),
            stream_idle_timeout: Some(secs(self.stream_idle_timeout_secs)),
            upgrade_configs: vec![http_connection_manager::UpgradeConfig {
                upgrade_type: "websocket".into(),
                ..Default::default()
            }],
            access_log: if self.access_log {
                vec![access_log()]
            } else {
                Vec::new()
            },
            local_reply_config: Some(LocalReplyConfig {
                mappers: vec![port_not_open],
                ..Default::default()
            }),
            route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
                route_config,
            )),
            http_filters: vec![module, router()],
            ..Default::default()
        };
        Listener {
            name: "sandbox_gateway".into(),
            address: socket(&self.listen_address, self.listen_port),
            per_connection_buffer_limit_bytes: u32v(self.buffer_limit_bytes),
            filter_chains: vec![FilterChain {
                filters: vec![hcm_filter(&hcm)],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn metrics_listener(&self) -> Listener {
        let route = |path: &str, rewrite: Option<&str>| Route {
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Path(path.into())),
                ..Default::default()
            }),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster("admin".into())),
                prefix_rewrite: rewrite.unwrap_or_default().into(),
                timeout: Some(secs(30)),
                ..Default::default()
            })),
            ..Default::default()
        };
        let hcm = HttpConnectionManager {
            stat_prefix: "metrics".into(),
            route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
                RouteConfiguration {
                    virtual_hosts: vec![VirtualHost {
                        name: "metrics".into(),
                        domains: vec!["*".into()],
                        routes: vec![
                            route("/metrics", Some("/stats/prometheus")),
                            route("/ready", None),
                        ],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )),
            http_filters: vec![router()],
            ..Default::default()
        };
        Listener {
            name: "metrics".into(),
            address: socket(&self.listen_address, self.metrics_port),
            filter_chains: vec![FilterChain {
                filters: vec![hcm_filter(&hcm)],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn sandbox_cluster(&self) -> Cluster {
        let cb = &self.circuit_breakers;
        let protocol = HttpProtocolOptions {
            common_http_protocol_options: Some(CoreHttpProtocolOptions {
                idle_timeout: Some(secs(self.upstream_idle_timeout_secs)),
                ..Default::default()
            }),
            upstream_protocol_options: Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                        Http1ProtocolOptions::default(),
                    )),
                },
            )),
            ..Default::default()
        };
        let mut options = HashMap::new();
        options.insert(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
            any(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                &protocol,
            ),
        );
        Cluster {
            name: "sandboxes".into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::OriginalDst as i32,
            )),
            lb_policy: cluster::LbPolicy::ClusterProvided as i32,
            connect_timeout: Some(duration_ms(self.connect_timeout_ms)),
            per_connection_buffer_limit_bytes: u32v(self.buffer_limit_bytes),
            lb_config: Some(cluster::LbConfig::OriginalDstLbConfig(
                cluster::OriginalDstLbConfig {
                    metadata_key: Some(MetadataKey {
                        key: "envoy.lb.original_dst".into(),
                        path: vec![metadata_key::PathSegment {
                            segment: Some(metadata_key::path_segment::Segment::Key("host".into())),
                        }],
                    }),
                    ..Default::default()
                },
            )),
            typed_extension_protocol_options: options,
            circuit_breakers: Some(CircuitBreakers {
                thresholds: vec![Thresholds {
                    priority: RoutingPriority::Default as i32,
                    max_connections: u32v(cb.max_connections),
                    max_pending_requests: u32v(cb.max_pending_requests),
                    max_requests: u32v(cb.max_requests),
                    max_retries: u32v(cb.max_retries),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn admin_cluster(&self) -> Cluster {
        Cluster {
            name: "admin".into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Static as i32,
            )),
            connect_timeout: Some(secs(1)),
            load_assignment: Some(ClusterLoadAssignment {
                cluster_name: "admin".into(),
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints: vec![LbEndpoint {
                        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                            address: socket("127.0.0.1", self.admin_port),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// `(name, version, body)` of every listener.
    pub fn listeners(&self) -> Vec<(String, String, Arc<[u8]>)> {
        let mut out = vec![self.sandbox_listener()];
        if self.metrics_port != 0 {
            out.push(self.metrics_listener());
        }
        out.into_iter()
            .map(|l| versioned(l.name.clone(), l.encode_to_vec()))
            .collect()
    }

    /// `(name, version, body)` of every cluster.
    pub fn clusters(&self) -> Vec<(String, String, Arc<[u8]>)> {
        [self.sandbox_cluster(), self.admin_cluster()]
            .into_iter()
            .map(|c| versioned(c.name.clone(), c.encode_to_vec()))
            .collect()
    }

    /// Checks what Envoy would reject anyway, so a typo fails at start-up, not as a NACK.
    pub fn validate(&self) -> Result<(), String> {
        if self.connect_timeout_ms == 0 {
            return Err("connect_timeout_ms must be positive".into());
        }
        if !(self.xds_address.starts_with("http://") || self.xds_address.starts_with("https://")) {
            return Err(format!(
                "xds_address {:?} must be an http:// or https:// URL",
                self.xds_address
            ));
        }
        if self.module_name.is_empty() {
            return Err("module_name must be set".into());
        }
        Ok(())
    }
}

/// Names a resource's version after its content, so unchanged resources are never resent.
fn versioned(name: String, body: Vec<u8>) -> (String, String, Arc<[u8]>) {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    (name, format!("{:016x}", h.finish()), Arc::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_mirror_the_installation_guide() {
        let g = GatewayResources::default();
        assert_eq!(
            g.circuit_breakers,
            CircuitBreakerConfig {
                max_connections: 32768,
                max_pending_requests: 32768,
                max_requests: 65536,
                max_retries: 5
            }
        );
        assert_eq!(g.listen_port, 10000);
        g.validate().unwrap();
        let names: Vec<String> = g.listeners().into_iter().map(|(n, _, _)| n).collect();
        assert_eq!(names, vec!["sandbox_gateway", "metrics"]);
        let names: Vec<String> = g.clusters().into_iter().map(|(n, _, _)| n).collect();
        assert_eq!(names, vec!["sandboxes", "admin"]);
    }

    #[test]
    fn yaml_overrides_and_versions_follow_content() {
        let g: GatewayResources = serde_yaml::from_str("listen_port: 12000\ncircuit_breakers: {max_connections: 10}\nfilter_config: {envd_port: 49983}").unwrap();
        assert_eq!(g.circuit_breakers.max_connections, 10);
        assert_eq!(g.circuit_breakers.max_requests, 65536);
        assert_eq!(g.module_filter_config()["envd_port"], 49983);
        let a = GatewayResources::default().clusters();
        let b = g.clusters();
        assert_ne!(a[0].1, b[0].1, "changed breakers change the version");
        assert_eq!(a[1].1, b[1].1, "the admin cluster did not change");
        assert!(serde_yaml::from_str::<GatewayResources>("listen_prot: 1").is_err());
    }
}
