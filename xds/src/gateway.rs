//! The gateways' listeners and clusters, served over ADS (the gateway bootstrap holds only the
//! ADS cluster and admin). They mirror `envoy/gateway.yaml`; the module's filter config points it
//! at this server for its `SandboxRoute` subscription. Circuit breakers, timeouts and buffer
//! limits come from [`GatewayResources`] (a YAML file, defaults = the installation guide's, and
//! for client connections the limits a public edge proxy needs; a unit test keeps the defaults
//! equal to `envoy/gateway.yaml`).

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLogFilter, ComparisonFilter, ResponseFlagFilter, StatusCodeFilter, access_log_filter,
    comparison_filter,
};
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, circuit_breakers::Thresholds, cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, Http1ProtocolOptions, Http2ProtocolOptions,
    HttpProtocolOptions as CoreHttpProtocolOptions, RoutingPriority, RuntimeUInt32, SocketAddress,
    SubstitutionFormatString, address, http_protocol_options::HeadersWithUnderscoresAction,
    socket_address, substitution_format_string,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    header_matcher, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
    StdoutAccessLog, stdout_access_log,
};
use envoy_types::pb::envoy::extensions::dynamic_modules::v3::DynamicModuleConfig;
use envoy_types::pb::envoy::extensions::filters::http::dynamic_modules::v3::DynamicModuleFilter;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, LocalReplyConfig, ResponseMapper, http_connection_manager,
    http_filter,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::metadata::v3::{MetadataKey, metadata_key};
use envoy_types::pb::google::protobuf::{Any, Duration, Struct, UInt32Value, Value, value};
use prost::Message;
use sandbox_xds_wire::net::IpPrefix;
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

/// HTTP/2 limits of client connections (Envoy's defaults are 2^31-1 streams and 256 MiB windows).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Limits {
    /// Streams one client connection may have open; clients open more connections beyond it
    /// (the E2B SDK spreads its streams over as many as needed).
    pub max_concurrent_streams: u32,
    /// Bytes a client may send on one stream before Envoy acknowledges them; also the soft limit
    /// of what Envoy buffers per stream. 1 MiB matches the per-connection buffer limit.
    pub initial_stream_window_size: u32,
    /// The same for the whole connection.
    pub initial_connection_window_size: u32,
}

impl Default for Http2Limits {
    fn default() -> Self {
        Http2Limits {
            max_concurrent_streams: 100,
            initial_stream_window_size: 1 << 20,
            initial_connection_window_size: 16 << 20,
        }
    }
}

/// What Envoy does with a client header whose name contains `_`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnderscoreHeaders {
    Allow,
    /// Answer 400 (HTTP/1) or reset the stream (HTTP/2).
    RejectRequest,
    /// Remove the header before any filter sees it: frameworks that fold `-` and `_` together
    /// (CGI, WSGI) can then never read a client's `x_access_token` as the checked header.
    #[default]
    DropHeader,
}

impl UnderscoreHeaders {
    fn envoy(self) -> HeadersWithUnderscoresAction {
        match self {
            UnderscoreHeaders::Allow => HeadersWithUnderscoresAction::Allow,
            UnderscoreHeaders::RejectRequest => HeadersWithUnderscoresAction::RejectRequest,
            UnderscoreHeaders::DropHeader => HeadersWithUnderscoresAction::DropHeader,
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
    /// A client must start its first request within this time of connecting (else the
    /// connection is closed), and send every request head whole within it (else 408 and close).
    pub request_headers_timeout_secs: u64,
    /// A client connection without any open stream is closed after this time; longer than the
    /// E2B SDK's and browsers' 300 s keep-alive, so the client closes first.
    pub downstream_idle_timeout_secs: u64,
    /// HTTP/2 grace period between the first and the final GOAWAY when a connection drains.
    pub drain_timeout_ms: u64,
    /// How long Envoy waits for the client to close after Envoy closed (a local reply with
    /// `connection: close`) before it closes the socket itself.
    pub delayed_close_timeout_ms: u64,
    pub max_request_headers_kb: u32,
    pub max_headers_count: u32,
    pub headers_with_underscores: UnderscoreHeaders,
    pub http2: Http2Limits,
    /// Pod IPs (`ip` or `ip/len`) the module never forwards to: where the platform listens
    /// (the gateways' admin on 127.0.0.1) and the link-local metadata services.
    pub denied_upstream_ips: Vec<String>,
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
            request_headers_timeout_secs: 10,
            downstream_idle_timeout_secs: 310,
            drain_timeout_ms: 5000,
            delayed_close_timeout_ms: 1000,
            max_request_headers_kb: 60,
            max_headers_count: 100,
            headers_with_underscores: UnderscoreHeaders::default(),
            http2: Http2Limits::default(),
            denied_upstream_ips: ["127.0.0.1", "::1", "169.254.0.0/16", "fe80::/10"]
                .map(String::from)
                .to_vec(),
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

/// The 502 of a request whose sandbox connection closed before an answer (after the retry, or
/// for a request that may not be repeated).
pub const UPSTREAM_CLOSED_MESSAGE: &str =
    "The sandbox is running but closed the connection before answering";

/// Retries of requests whose upstream connection failed: a pooled connection the sandbox
/// already closed (a server that stopped) resets before the request is sent (any method), or
/// right after it (idempotent methods only, which HTTP allows to repeat). One retry on a new
/// connection then succeeds, or is the "port is not open" 502.
pub const RETRY_ON: &str = "reset-before-request";
pub const IDEMPOTENT_RETRY_ON: &str = "reset-before-request,reset";
pub const IDEMPOTENT_METHODS: &str = "GET|HEAD|OPTIONS";

/// The route to the `sandboxes` cluster: no timeout (commands stream for hours), one retry.
fn sandbox_route(name: &str, retry_on: &str, idempotent_only: bool) -> Route {
    Route {
        name: name.into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            headers: if idempotent_only {
                vec![HeaderMatcher {
                    name: ":method".into(),
                    header_match_specifier: Some(
                        header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
                            match_pattern: Some(string_matcher::MatchPattern::SafeRegex(
                                RegexMatcher {
                                    regex: IDEMPOTENT_METHODS.into(),
                                    ..Default::default()
                                },
                            )),
                            ..Default::default()
                        }),
                    ),
                    ..Default::default()
                }]
            } else {
                Vec::new()
            },
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster("sandboxes".into())),
            timeout: Some(secs(0)),
            retry_policy: Some(RetryPolicy {
                retry_on: retry_on.into(),
                num_retries: u32v(1),
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Envoy's own replies to client mistakes (an unfinished head: 408, a body over the buffer
/// limit: 413, headers too large: 431) carry the platform's JSON error shape instead of plain
/// text. The module never answers with these codes, so its own bodies are untouched.
pub const JSON_REPLY_CODES: [(u32, &str); 3] = [
    (
        408,
        "request timeout: the request head did not arrive in time",
    ),
    (413, "payload too large"),
    (431, "request header fields too large"),
];

fn json_error_mappers() -> Vec<ResponseMapper> {
    JSON_REPLY_CODES
        .iter()
        .map(|(code, message)| ResponseMapper {
            filter: Some(AccessLogFilter {
                filter_specifier: Some(access_log_filter::FilterSpecifier::StatusCodeFilter(
                    StatusCodeFilter {
                        comparison: Some(ComparisonFilter {
                            op: comparison_filter::Op::Eq as i32,
                            value: Some(RuntimeUInt32 {
                                default_value: *code,
                                runtime_key: format!("sandbox_gateway.json_reply_{code}"),
                            }),
                        }),
                    },
                )),
            }),
            body_format_override: Some(SubstitutionFormatString {
                content_type: "application/json".into(),
                ..json_format(&[
                    ("code", serde_json::json!(code)),
                    ("message", serde_json::json!(message)),
                ])
            }),
            ..Default::default()
        })
        .collect()
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
    /// The module's filter config: the extra fields, the sandbox cluster, the denied upstream
    /// addresses, and the xDS source.
    pub fn module_filter_config(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut fc = self.filter_config.clone();
        fc.insert("sandbox_cluster".into(), "sandboxes".into());
        fc.insert(
            "denied_upstream_ips".into(),
            self.denied_upstream_ips.clone().into(),
        );
        fc.insert(
            "xds".into(),
            serde_json::json!({ "address": self.xds_address }),
        );
        fc
    }

    /// The client-connection settings of an HTTP connection manager: how long a client may take
    /// to send a request head or keep an idle connection, and how much it may send.
    fn downstream_limits(&self, hcm: HttpConnectionManager) -> HttpConnectionManager {
        HttpConnectionManager {
            request_headers_timeout: Some(secs(self.request_headers_timeout_secs)),
            drain_timeout: Some(duration_ms(self.drain_timeout_ms)),
            delayed_close_timeout: Some(duration_ms(self.delayed_close_timeout_ms)),
            max_request_headers_kb: u32v(self.max_request_headers_kb),
            common_http_protocol_options: Some(CoreHttpProtocolOptions {
                idle_timeout: Some(secs(self.downstream_idle_timeout_secs)),
                max_headers_count: u32v(self.max_headers_count),
                headers_with_underscores_action: self.headers_with_underscores.envoy() as i32,
                ..Default::default()
            }),
            http2_protocol_options: Some(Http2ProtocolOptions {
                max_concurrent_streams: u32v(self.http2.max_concurrent_streams),
                initial_stream_window_size: u32v(self.http2.initial_stream_window_size),
                initial_connection_window_size: u32v(self.http2.initial_connection_window_size),
                ..Default::default()
            }),
            ..hcm
        }
    }

    /// A listener whose connections must send their first request line within the request-head
    /// timeout: the HTTP inspector waits for the first bytes, and a connection whose inspection
    /// times out is closed (`request_headers_timeout` only starts once bytes arrived).
    fn first_bytes_guard(&self, listener: Listener) -> Listener {
        Listener {
            listener_filters: vec![ListenerFilter {
                name: "envoy.filters.listener.http_inspector".into(),
                config_type: Some(listener_filter::ConfigType::TypedConfig(any(
                    "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
                    &HttpInspector::default(),
                ))),
                ..Default::default()
            }],
            listener_filters_timeout: Some(secs(self.request_headers_timeout_secs)),
            continue_on_listener_filters_timeout: false,
            ..listener
        }
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
                routes: vec![
                    sandbox_route("sandbox_idempotent", IDEMPOTENT_RETRY_ON, true),
                    sandbox_route("sandbox", RETRY_ON, false),
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let upstream_502 = |flag: &str, message: &str| ResponseMapper {
            filter: Some(AccessLogFilter {
                filter_specifier: Some(access_log_filter::FilterSpecifier::ResponseFlagFilter(
                    ResponseFlagFilter {
                        flags: vec![flag.into()],
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
                    ("message", serde_json::json!(message)),
                    ("code", serde_json::json!(502)),
                ])
            }),
            ..Default::default()
        };
        let port_not_open = upstream_502("UF", "The sandbox is running but port is not open");
        let closed = upstream_502("UC", UPSTREAM_CLOSED_MESSAGE);
        let hcm = self.downstream_limits(HttpConnectionManager {
            stat_prefix: "sandbox_gateway".into(),
            // No request_timeout and no max_stream_duration: commands stream for hours. A stream
            // that carries nothing for this long is dead (envd sends keepalives every 50 s).
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
                mappers: [port_not_open, closed]
                    .into_iter()
                    .chain(json_error_mappers())
                    .collect(),
                ..Default::default()
            }),
            route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
                route_config,
            )),
            http_filters: vec![module, router()],
            ..Default::default()
        });
        self.first_bytes_guard(Listener {
            name: "sandbox_gateway".into(),
            address: socket(&self.listen_address, self.listen_port),
            per_connection_buffer_limit_bytes: u32v(self.buffer_limit_bytes),
            filter_chains: vec![FilterChain {
                filters: vec![hcm_filter(&hcm)],
                ..Default::default()
            }],
            ..Default::default()
        })
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
        let hcm = self.downstream_limits(HttpConnectionManager {
            stat_prefix: "metrics".into(),
            local_reply_config: Some(LocalReplyConfig {
                mappers: json_error_mappers(),
                ..Default::default()
            }),
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
        });
        self.first_bytes_guard(Listener {
            name: "metrics".into(),
            address: socket(&self.listen_address, self.metrics_port),
            filter_chains: vec![FilterChain {
                filters: vec![hcm_filter(&hcm)],
                ..Default::default()
            }],
            ..Default::default()
        })
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
        for (field, v) in [
            (
                "request_headers_timeout_secs",
                self.request_headers_timeout_secs,
            ),
            (
                "downstream_idle_timeout_secs",
                self.downstream_idle_timeout_secs,
            ),
            ("delayed_close_timeout_ms", self.delayed_close_timeout_ms),
        ] {
            // Envoy reads 0 as "no timeout": exactly the unbounded wait these exist to prevent.
            if v == 0 {
                return Err(format!(
                    "{field} must be positive (0 would let a client hold a connection forever)"
                ));
            }
        }
        if !(1..=8192).contains(&self.max_request_headers_kb) {
            return Err("max_request_headers_kb must be between 1 and 8192".into());
        }
        if self.max_headers_count == 0 {
            return Err("max_headers_count must be positive".into());
        }
        let h2 = &self.http2;
        if !(1..=i32::MAX as u32).contains(&h2.max_concurrent_streams) {
            return Err("http2.max_concurrent_streams must be between 1 and 2^31-1".into());
        }
        for (field, v) in [
            (
                "http2.initial_stream_window_size",
                h2.initial_stream_window_size,
            ),
            (
                "http2.initial_connection_window_size",
                h2.initial_connection_window_size,
            ),
        ] {
            if !(65535..=i32::MAX as u32).contains(&v) {
                return Err(format!("{field} must be between 65535 and 2^31-1"));
            }
        }
        for (i, ip) in self.denied_upstream_ips.iter().enumerate() {
            if let Err(e) = ip.parse::<IpPrefix>() {
                return Err(format!("denied_upstream_ips[{i}] {ip:?}: {e}"));
            }
        }
        if self.filter_config.contains_key("denied_upstream_ips") {
            return Err("set denied_upstream_ips at the top level, not in filter_config".into());
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

    fn served_listener(g: &GatewayResources, listener: &str) -> Listener {
        let (_, _, body) = g
            .listeners()
            .into_iter()
            .find(|(n, _, _)| n == listener)
            .expect("listener");
        Listener::decode(&*body).unwrap()
    }

    fn served_hcm(g: &GatewayResources, listener: &str) -> HttpConnectionManager {
        let l = served_listener(g, listener);
        match &l.filter_chains[0].filters[0].config_type {
            Some(filter::ConfigType::TypedConfig(any)) => {
                HttpConnectionManager::decode(&*any.value).unwrap()
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn client_connections_are_bounded_but_streams_are_not() {
        let g: GatewayResources = serde_yaml::from_str(
            "request_headers_timeout_secs: 1\nheaders_with_underscores: reject_request\nhttp2: {max_concurrent_streams: 7}",
        )
        .unwrap();
        g.validate().unwrap();
        for name in ["sandbox_gateway", "metrics"] {
            let l = served_listener(&g, name);
            assert_eq!(
                l.listener_filters[0].name,
                "envoy.filters.listener.http_inspector"
            );
            assert_eq!(l.listener_filters_timeout, Some(secs(1)));
            assert!(!l.continue_on_listener_filters_timeout);
            let hcm = served_hcm(&g, name);
            assert_eq!(hcm.request_headers_timeout, Some(secs(1)), "{name}");
            assert_eq!(hcm.drain_timeout, Some(duration_ms(5000)));
            assert_eq!(hcm.delayed_close_timeout, Some(duration_ms(1000)));
            assert_eq!(hcm.max_request_headers_kb, u32v(60));
            let common = hcm.common_http_protocol_options.unwrap();
            assert_eq!(common.idle_timeout, Some(secs(310)));
            assert_eq!(common.max_headers_count, u32v(100));
            assert_eq!(
                common.headers_with_underscores_action,
                HeadersWithUnderscoresAction::RejectRequest as i32
            );
            let h2 = hcm.http2_protocol_options.unwrap();
            assert_eq!(h2.max_concurrent_streams, u32v(7));
            assert_eq!(h2.initial_stream_window_size, u32v(1 << 20));
            assert_eq!(h2.initial_connection_window_size, u32v(16 << 20));
        }
        let hcm = served_hcm(&g, "sandbox_gateway");
        assert_eq!(hcm.stream_idle_timeout, Some(secs(600)));
        assert_eq!(
            hcm.request_timeout, None,
            "long-running streams must not be cut"
        );
        assert_eq!(
            hcm.common_http_protocol_options
                .unwrap()
                .max_stream_duration,
            None
        );
        assert_eq!(hcm.upgrade_configs[0].upgrade_type, "websocket");
    }

    #[test]
    fn denied_upstream_ips_reach_the_module() {
        let g = GatewayResources::default();
        assert_eq!(
            g.module_filter_config()["denied_upstream_ips"],
            serde_json::json!(["127.0.0.1", "::1", "169.254.0.0/16", "fe80::/10"])
        );
        let g: GatewayResources = serde_yaml::from_str("denied_upstream_ips: []").unwrap();
        assert_eq!(
            g.module_filter_config()["denied_upstream_ips"],
            serde_json::json!([])
        );
    }

    #[test]
    fn validation_names_the_bad_field() {
        for (yaml, expect) in [
            (
                "request_headers_timeout_secs: 0",
                "request_headers_timeout_secs must be positive",
            ),
            (
                "downstream_idle_timeout_secs: 0",
                "downstream_idle_timeout_secs must be positive",
            ),
            (
                "delayed_close_timeout_ms: 0",
                "delayed_close_timeout_ms must be positive",
            ),
            ("max_request_headers_kb: 9000", "max_request_headers_kb"),
            ("max_headers_count: 0", "max_headers_count"),
            (
                "http2: {max_concurrent_streams: 0}",
                "http2.max_concurrent_streams",
            ),
            (
                "http2: {initial_stream_window_size: 1024}",
                "http2.initial_stream_window_size",
            ),
            (
                "http2: {initial_connection_window_size: 4294967295}",
                "http2.initial_connection_window_size",
            ),
            (
                "denied_upstream_ips: [\"127.0.0.1/8\"]",
                "denied_upstream_ips[0] \"127.0.0.1/8\"",
            ),
            (
                "filter_config: {denied_upstream_ips: []}",
                "at the top level",
            ),
        ] {
            let g: GatewayResources = serde_yaml::from_str(yaml).unwrap();
            let e = g.validate().unwrap_err();
            assert!(e.contains(expect), "{yaml}: {e}");
        }
        assert!(
            serde_yaml::from_str::<GatewayResources>("headers_with_underscores: keep").is_err()
        );
    }

    /// `envoy/gateway.yaml` (the static bootstrap) and the served listener must not drift apart.
    #[test]
    fn defaults_equal_the_static_bootstrap() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../envoy/gateway.yaml");
        let root: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let listener = root["static_resources"]["listeners"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|l| l["name"] == "sandbox_gateway")
            .unwrap();
        let hcm = &listener["filter_chains"][0]["filters"][0]["typed_config"];
        let ms = |v: &serde_yaml::Value| -> u64 {
            let s = v.as_str().unwrap_or_else(|| panic!("duration {v:?}"));
            match s.strip_suffix("ms") {
                Some(n) => n.parse().unwrap(),
                None => s.strip_suffix('s').unwrap().parse::<u64>().unwrap() * 1000,
            }
        };
        let num = |v: &serde_yaml::Value| v.as_u64().unwrap_or_else(|| panic!("number {v:?}"));
        let g = GatewayResources::default();
        assert_eq!(
            ms(&hcm["stream_idle_timeout"]),
            g.stream_idle_timeout_secs * 1000
        );
        assert_eq!(
            ms(&hcm["request_headers_timeout"]),
            g.request_headers_timeout_secs * 1000
        );
        assert_eq!(ms(&hcm["drain_timeout"]), g.drain_timeout_ms);
        assert_eq!(
            ms(&hcm["delayed_close_timeout"]),
            g.delayed_close_timeout_ms
        );
        assert_eq!(
            num(&hcm["max_request_headers_kb"]),
            u64::from(g.max_request_headers_kb)
        );
        let common = &hcm["common_http_protocol_options"];
        assert_eq!(
            ms(&common["idle_timeout"]),
            g.downstream_idle_timeout_secs * 1000
        );
        assert_eq!(
            num(&common["max_headers_count"]),
            u64::from(g.max_headers_count)
        );
        assert_eq!(
            serde_yaml::from_value::<UnderscoreHeaders>(serde_yaml::Value::String(
                common["headers_with_underscores_action"]
                    .as_str()
                    .unwrap()
                    .to_ascii_lowercase()
            ))
            .unwrap(),
            g.headers_with_underscores
        );
        let h2 = &hcm["http2_protocol_options"];
        assert_eq!(
            Http2Limits {
                max_concurrent_streams: num(&h2["max_concurrent_streams"]) as u32,
                initial_stream_window_size: num(&h2["initial_stream_window_size"]) as u32,
                initial_connection_window_size: num(&h2["initial_connection_window_size"]) as u32,
            },
            g.http2
        );
        assert!(hcm.get("request_timeout").is_none());
        assert_eq!(
            ms(&listener["listener_filters_timeout"]),
            g.request_headers_timeout_secs * 1000
        );
        assert_eq!(
            listener["continue_on_listener_filters_timeout"],
            serde_yaml::Value::Bool(false)
        );
        assert_eq!(
            num(&listener["per_connection_buffer_limit_bytes"]),
            u64::from(g.buffer_limit_bytes)
        );
        let module = &hcm["http_filters"][0]["typed_config"]["filter_config"]["value"];
        let denied: Vec<String> =
            serde_yaml::from_value(module["denied_upstream_ips"].clone()).unwrap();
        assert_eq!(denied, g.denied_upstream_ips);
        // The metrics listener has the same client limits.
        let metrics = root["static_resources"]["listeners"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|l| l["name"] == "metrics")
            .unwrap();
        let mhcm = &metrics["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(
            ms(&metrics["listener_filters_timeout"]),
            g.request_headers_timeout_secs * 1000
        );
        assert_eq!(
            ms(&mhcm["request_headers_timeout"]),
            g.request_headers_timeout_secs * 1000
        );
        assert_eq!(
            ms(&mhcm["common_http_protocol_options"]["idle_timeout"]),
            g.downstream_idle_timeout_secs * 1000
        );
    }
}
