//! Filter configuration: the JSON that Envoy passes to `on_http_filter_config_new` (from a
//! `google.protobuf.Struct`, or a `StringValue`/`BytesValue` holding JSON). Everything is
//! validated at load time; a bad config is rejected with a message naming the problem, and Envoy
//! then refuses the listener.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::Deserialize;

use sandbox_xds_wire::net::{IpPrefix, IpPrefixError};

use crate::deny::DeniedUpstreams;
use crate::identify::IdentifyConfig;
use crate::route::{Route, RouteError, RouteSpec};
use crate::xds_client::{XdsSource, default_node_id};

/// Why a filter config was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("filter config is not valid JSON for sandbox_gateway: {0}")]
    Json(#[from] serde_json::Error),
    #[error("filter config field `{path}`: {source}")]
    Field {
        path: String,
        source: serde_json::Error,
    },
    #[error("filter config is not UTF-8")]
    NotUtf8,
    #[error("{field} must be {what}, got {value:?}")]
    Invalid {
        field: &'static str,
        what: &'static str,
        value: String,
    },
    #[error("denied_upstream_ips[{index}] {value:?}: {source}")]
    DeniedUpstream {
        index: usize,
        value: String,
        source: IpPrefixError,
    },
    #[error("{0} and {1} must differ")]
    SameHeader(&'static str, &'static str),
    #[error("only one route source may be set: routes, routes_file or xds")]
    TwoRouteSources,
    #[error("route #{index} ({id}): {source}")]
    Route {
        index: usize,
        id: String,
        source: RouteError,
    },
    #[error("route id {0:?} appears twice")]
    DuplicateRoute(String),
    #[error("cannot read routes_file {path:?}: {source}")]
    RoutesFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("routes_file {path:?} is not a JSON array of routes: {source}")]
    RoutesFileJson {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn default_table() -> String {
    "default".into()
}
fn default_sandbox_header() -> String {
    "e2b-sandbox-id".into()
}
fn default_port_header() -> String {
    "e2b-sandbox-port".into()
}
fn default_port() -> u16 {
    crate::ENVD_PORT
}
fn default_path_prefix() -> String {
    "/kruise".into()
}
fn default_access_token_header() -> String {
    "x-access-token".into()
}
fn default_traffic_token_header() -> String {
    "e2b-traffic-access-token".into()
}
fn default_sandbox_cluster() -> String {
    "sandboxes".into()
}
fn default_metadata_namespace() -> String {
    "envoy.lb.original_dst".into()
}
fn default_metadata_key() -> String {
    "host".into()
}
fn default_readiness_path() -> String {
    "/readyz".into()
}

/// The JSON document, field by field. Unknown fields are errors, so typos do not go unnoticed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Name of the process-wide route table this filter reads.
    #[serde(default = "default_table")]
    table: String,
    #[serde(default = "default_sandbox_header")]
    sandbox_header: String,
    #[serde(default = "default_port_header")]
    port_header: String,
    /// Port used when only the sandbox id header is given.
    #[serde(default = "default_port")]
    default_port: u16,
    /// The envd port: `X-Access-Token` is checked there, the traffic token everywhere else.
    #[serde(default = "default_port")]
    envd_port: u16,
    #[serde(default = "default_path_prefix")]
    path_prefix: String,
    #[serde(default = "default_access_token_header")]
    access_token_header: String,
    #[serde(default = "default_traffic_token_header")]
    traffic_token_header: String,
    /// The ORIGINAL_DST cluster that carries sandbox traffic. A request routed to it that names no
    /// sandbox is answered 400 (forwarding it would loop back into the gateway).
    #[serde(default = "default_sandbox_cluster")]
    sandbox_cluster: String,
    #[serde(default = "default_metadata_namespace")]
    metadata_namespace: String,
    #[serde(default = "default_metadata_key")]
    metadata_key: String,
    /// `GET` of this path, on a request that names no sandbox, is answered by the module: 200
    /// once the route table is synced, 503 before (a readiness probe on the module's own state,
    /// like the upstream gateway's `/readyz`). Empty turns it off.
    #[serde(default = "default_readiness_path")]
    readiness_path: String,
    /// Addresses (`ip` or `ip/len`) the gateway never forwards to: where the platform itself
    /// listens. The unspecified addresses are refused in any case.
    #[serde(default)]
    denied_upstream_ips: Vec<String>,
    /// Static routes; the table counts as synced once they are loaded.
    #[serde(default)]
    routes: Option<Vec<RouteSpec>>,
    /// Static routes from a JSON file (an array of routes), for large tables.
    #[serde(default)]
    routes_file: Option<PathBuf>,
    /// Routes from sandbox-xds (a delta-xDS subscription to `SandboxRoute`).
    #[serde(default)]
    xds: Option<RawXds>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawXds {
    /// `http://host:port` of sandbox-xds.
    address: String,
    /// Node id announced to the server (default `<hostname>/<pid>`).
    #[serde(default)]
    node_id: Option<String>,
    #[serde(default)]
    cluster: Option<String>,
}

/// Where the table gets its routes from.
#[derive(Debug)]
pub enum RouteSource {
    /// Nothing yet: the table stays unsynced and sandbox requests get 503.
    None,
    /// A fixed list from the config (validated).
    Static(Vec<(String, Route)>),
    /// A subscription to sandbox-xds.
    Xds(XdsSource),
}

/// A validated filter configuration.
#[derive(Debug)]
pub struct GatewayConfig {
    pub table: String,
    pub identify: IdentifyConfig,
    pub envd_port: u16,
    pub access_token_header: String,
    pub traffic_token_header: String,
    pub sandbox_cluster: String,
    pub metadata_namespace: String,
    pub metadata_key: String,
    /// `None` when readiness answers are off.
    pub readiness_path: Option<String>,
    /// Pod IPs a route may carry but the gateway never connects to.
    pub denied_upstreams: DeniedUpstreams,
}

fn valid_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(
                    b,
                    b'-' | b'_'
                        | b'.'
                        | b'!'
                        | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'^'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

fn check_header(field: &'static str, value: &str) -> Result<(), ConfigError> {
    if valid_header_name(value) {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            field,
            what: "a lower-case HTTP header name (no pseudo-headers)",
            value: value.to_string(),
        })
    }
}

fn check_nonzero_port(field: &'static str, value: u16) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::Invalid {
            field,
            what: "a port between 1 and 65535",
            value: "0".into(),
        });
    }
    Ok(())
}

fn parse_denied(entries: &[String]) -> Result<DeniedUpstreams, ConfigError> {
    let prefixes = entries
        .iter()
        .enumerate()
        .map(|(index, value)| {
            value
                .parse::<IpPrefix>()
                .map_err(|source| ConfigError::DeniedUpstream {
                    index,
                    value: value.clone(),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DeniedUpstreams::new(prefixes))
}

fn convert_routes(specs: Vec<RouteSpec>) -> Result<Vec<(String, Route)>, ConfigError> {
    let mut seen = HashSet::with_capacity(specs.len());
    let mut out = Vec::with_capacity(specs.len());
    for (index, spec) in specs.into_iter().enumerate() {
        let id = spec.id.clone();
        let (id, route) =
            spec.into_route()
                .map_err(|source| ConfigError::Route { index, id, source })?;
        if !seen.insert(id.clone()) {
            return Err(ConfigError::DuplicateRoute(id));
        }
        out.push((id, route));
    }
    Ok(out)
}

impl GatewayConfig {
    /// Parses and validates the bytes Envoy hands over. Empty input means all defaults.
    ///
    /// The route source comes back separately: static routes move into the table, and the
    /// config, which lives as long as the listener, must not keep a second copy of them.
    pub fn parse(bytes: &[u8]) -> Result<(Self, RouteSource), ConfigError> {
        let text = std::str::from_utf8(bytes).map_err(|_| ConfigError::NotUtf8)?;
        let text = if text.trim().is_empty() { "{}" } else { text };
        let mut de = serde_json::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let source = e.into_inner();
            if path == "." || source.is_syntax() || source.is_eof() {
                ConfigError::Json(source)
            } else {
                ConfigError::Field { path, source }
            }
        })?;

        for (field, value) in [
            ("sandbox_header", &raw.sandbox_header),
            ("port_header", &raw.port_header),
            ("access_token_header", &raw.access_token_header),
            ("traffic_token_header", &raw.traffic_token_header),
        ] {
            check_header(field, value)?;
        }
        if raw.sandbox_header == raw.port_header {
            return Err(ConfigError::SameHeader("sandbox_header", "port_header"));
        }
        if raw.access_token_header == raw.traffic_token_header {
            return Err(ConfigError::SameHeader(
                "access_token_header",
                "traffic_token_header",
            ));
        }
        check_nonzero_port("default_port", raw.default_port)?;
        check_nonzero_port("envd_port", raw.envd_port)?;
        if !raw.path_prefix.starts_with('/')
            || raw.path_prefix.ends_with('/')
            || raw.path_prefix.contains('?')
        {
            return Err(ConfigError::Invalid {
                field: "path_prefix",
                what: "a path starting with '/' and not ending with '/'",
                value: raw.path_prefix,
            });
        }
        if !raw.readiness_path.is_empty()
            && (!raw.readiness_path.starts_with('/') || raw.readiness_path.contains('?'))
        {
            return Err(ConfigError::Invalid {
                field: "readiness_path",
                what: "empty, or a path starting with '/' without a query",
                value: raw.readiness_path,
            });
        }
        for (field, value) in [
            ("table", &raw.table),
            ("sandbox_cluster", &raw.sandbox_cluster),
            ("metadata_namespace", &raw.metadata_namespace),
            ("metadata_key", &raw.metadata_key),
        ] {
            if value.is_empty() {
                return Err(ConfigError::Invalid {
                    field,
                    what: "non-empty",
                    value: String::new(),
                });
            }
        }

        let denied_upstreams = parse_denied(&raw.denied_upstream_ips)?;

        let sources = usize::from(raw.routes.is_some())
            + usize::from(raw.routes_file.is_some())
            + usize::from(raw.xds.is_some());
        if sources > 1 {
            return Err(ConfigError::TwoRouteSources);
        }
        let routes = match (raw.routes, raw.routes_file) {
            (Some(_), Some(_)) => return Err(ConfigError::TwoRouteSources),
            (Some(specs), None) => RouteSource::Static(convert_routes(specs)?),
            (None, Some(path)) => {
                let data = std::fs::read(&path).map_err(|source| ConfigError::RoutesFile {
                    path: path.clone(),
                    source,
                })?;
                let specs: Vec<RouteSpec> = serde_json::from_slice(&data)
                    .map_err(|source| ConfigError::RoutesFileJson { path, source })?;
                RouteSource::Static(convert_routes(specs)?)
            }
            (None, None) => match raw.xds {
                Some(x) => {
                    if !(x.address.starts_with("http://") || x.address.starts_with("https://")) {
                        return Err(ConfigError::Invalid {
                            field: "xds.address",
                            what: "an http:// or https:// URL of sandbox-xds",
                            value: x.address,
                        });
                    }
                    RouteSource::Xds(XdsSource {
                        address: x.address,
                        node_id: x
                            .node_id
                            .filter(|n| !n.is_empty())
                            .unwrap_or_else(default_node_id),
                        cluster: x.cluster.unwrap_or_default(),
                    })
                }
                None => RouteSource::None,
            },
        };

        let config = GatewayConfig {
            table: raw.table,
            identify: IdentifyConfig {
                sandbox_header: raw.sandbox_header,
                port_header: raw.port_header,
                default_port: raw.default_port,
                path_prefix: raw.path_prefix,
            },
            envd_port: raw.envd_port,
            access_token_header: raw.access_token_header,
            traffic_token_header: raw.traffic_token_header,
            sandbox_cluster: raw.sandbox_cluster,
            metadata_namespace: raw.metadata_namespace,
            metadata_key: raw.metadata_key,
            readiness_path: Some(raw.readiness_path).filter(|p| !p.is_empty()),
            denied_upstreams,
        };
        Ok((config, routes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_all_defaults_without_routes() {
        let (c, routes) = GatewayConfig::parse(b"").unwrap();
        assert!(matches!(routes, RouteSource::None));
        assert_eq!(c.table, "default");
        assert_eq!(c.identify.default_port, 49983);
        assert_eq!(c.envd_port, 49983);
        assert_eq!(c.sandbox_cluster, "sandboxes");
        assert!(c.denied_upstreams.prefixes().is_empty());
        let (_, routes) = GatewayConfig::parse(b"{}").unwrap();
        assert!(matches!(routes, RouteSource::None));
    }

    #[test]
    fn denied_upstream_ips_are_parsed() {
        let (c, _) = GatewayConfig::parse(
            br#"{"denied_upstream_ips":["127.0.0.1","::1","169.254.0.0/16"]}"#,
        )
        .unwrap();
        let shown: Vec<String> = c
            .denied_upstreams
            .prefixes()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown, ["127.0.0.1/32", "::1/128", "169.254.0.0/16"]);
    }

    #[test]
    fn xds_source() {
        let (_, routes) = GatewayConfig::parse(
            br#"{"xds":{"address":"http://127.0.0.1:18000","node_id":"gw-1"}}"#,
        )
        .unwrap();
        match routes {
            RouteSource::Xds(x) => {
                assert_eq!(x.address, "http://127.0.0.1:18000");
                assert_eq!(x.node_id, "gw-1");
            }
            other => panic!("{other:?}"),
        }
        let (_, routes) = GatewayConfig::parse(br#"{"xds":{"address":"http://h:1"}}"#).unwrap();
        assert!(
            matches!(routes, RouteSource::Xds(ref x) if x.node_id.ends_with(&format!("/{}", std::process::id())))
        );
    }

    #[test]
    fn static_routes_are_validated() {
        let ok = br#"{"routes":[{"id":"a","namespace":"ns","name":"a","uid":"u","resourceVersion":"3","ip":"127.0.0.1","state":"running"}]}"#;
        let (_, routes) = GatewayConfig::parse(ok).unwrap();
        assert!(matches!(routes, RouteSource::Static(ref v) if v.len() == 1));

        let dup = br#"{"routes":[
            {"id":"a","namespace":"ns","name":"a","uid":"u","resourceVersion":"3","ip":"127.0.0.1","state":"running"},
            {"id":"a","namespace":"ns","name":"b","uid":"v","resourceVersion":"4","ip":"127.0.0.2","state":"running"}]}"#;
        assert!(matches!(
            GatewayConfig::parse(dup),
            Err(ConfigError::DuplicateRoute(_))
        ));

        let bad_rv = br#"{"routes":[{"id":"a","namespace":"ns","name":"a","uid":"u","resourceVersion":"0","ip":"127.0.0.1","state":"running"}]}"#;
        let e = GatewayConfig::parse(bad_rv).unwrap_err().to_string();
        assert!(
            e.contains("route #0 (a)") && e.contains("resourceVersion"),
            "{e}"
        );
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let cases: &[(&[u8], &str)] = &[
            (b"{", "not valid JSON"),
            (br#"{"tabel":"x"}"#, "unknown field `tabel`"),
            (br#"{"default_port":0}"#, "default_port must be a port"),
            (br#"{"default_port":70000}"#, "field `default_port`"),
            (br#"{"envd_port":"x"}"#, "field `envd_port`: invalid type"),
            (br#"{"sandbox_header":"E2B-Sandbox-Id"}"#, "sandbox_header must be a lower-case"),
            (br#"{"sandbox_header":":authority"}"#, "sandbox_header must be a lower-case"),
            (br#"{"traffic_token_header":"x-access-token"}"#, "must differ"),
            (br#"{"path_prefix":"kruise"}"#, "path_prefix"),
            (br#"{"routes":[],"routes_file":"/x"}"#, "only one route source"),
            (br#"{"routes":[],"xds":{"address":"http://x:1"}}"#, "only one route source"),
            (br#"{"xds":{"address":"x:1"}}"#, "xds.address must be an http"),
            (br#"{"xds":{"adress":"http://x:1"}}"#, "unknown field `adress`"),
            (br#"{"routes_file":"/nonexistent/routes.json"}"#, "cannot read routes_file"),
            (br#"{"routes":[{"id":"a"}]}"#, "missing field `namespace`"),
            (br#"{"routes":[{"id":"a","namespace":"n","name":"a","uid":"u","resourceVersion":"1","state":"sleeping"}]}"#, "field `routes[0].state`: unknown variant"),
            (br#"{"denied_upstream_ips":"127.0.0.1"}"#, "field `denied_upstream_ips`: invalid type"),
            (br#"{"denied_upstream_ips":["::1","localhost"]}"#, "denied_upstream_ips[1] \"localhost\": not an IP address"),
            (br#"{"denied_upstream_ips":["127.0.0.1/8"]}"#, "bits set after the prefix length"),
            (br#"{"denied_upstream_ips":["10.0.0.0/33"]}"#, "prefix length over 32"),
            (b"\xff", "not UTF-8"),
        ];
        for (input, expect) in cases {
            let e = GatewayConfig::parse(input).unwrap_err().to_string();
            assert!(
                e.contains(expect),
                "{:?}: {e}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
