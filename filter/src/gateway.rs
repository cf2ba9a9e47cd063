//! The per-request decision: identify the sandbox, look its route up, check tokens, and either
//! forward (with the upstream address for the ORIGINAL_DST cluster), answer locally with the E2B
//! error contract, or let the request through untouched. Plain Rust over a [`RequestView`], so it
//! is tested without Envoy; `hooks` applies the [`Decision`] through the ABI.

use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;

use crate::config::GatewayConfig;
use crate::identify::{HeaderField, Incoming, Target, identify};
use crate::route::{Route, RouteFlags, RouteState};
use crate::table::RouteTable;

/// Read access to the request being decided on.
pub trait RequestView {
    /// A request header (lower-case name, pseudo-headers included).
    fn header(&self, name: &str) -> HeaderField<'_>;
    /// The cluster Envoy's route table picked for this request, if any.
    fn routed_cluster(&self) -> Option<&[u8]>;
}

/// What happened to a request, for the `requests` counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Routed,
    PassThrough,
    BadRequest,
    NotReady,
    NotFound,
    NotRunning,
    Unauthorized,
    Forbidden,
    InternalError,
    /// The module's readiness path was answered.
    Readiness,
    /// The route's pod IP is a denied upstream address (`denied_upstream_ips`, unspecified).
    UpstreamDenied,
}

impl Outcome {
    pub const ALL: [Outcome; 11] = [
        Outcome::Routed,
        Outcome::PassThrough,
        Outcome::BadRequest,
        Outcome::NotReady,
        Outcome::NotFound,
        Outcome::NotRunning,
        Outcome::Unauthorized,
        Outcome::Forbidden,
        Outcome::InternalError,
        Outcome::Readiness,
        Outcome::UpstreamDenied,
    ];

    /// Label value of the `outcome` tag.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Routed => "routed",
            Outcome::PassThrough => "passthrough",
            Outcome::BadRequest => "bad_request",
            Outcome::NotReady => "not_ready",
            Outcome::NotFound => "not_found",
            Outcome::NotRunning => "not_running",
            Outcome::Unauthorized => "unauthorized",
            Outcome::Forbidden => "forbidden",
            Outcome::InternalError => "internal_error",
            Outcome::Readiness => "readiness",
            Outcome::UpstreamDenied => "upstream_denied",
        }
    }
}

/// `ip:port` for the ORIGINAL_DST cluster (IPv6 bracketed), formatted without allocating.
#[derive(Clone, Copy)]
pub struct UpstreamAddr {
    buf: [u8; 56],
    len: u8,
}

impl UpstreamAddr {
    pub fn new(ip: IpAddr, port: u16) -> Self {
        let mut buf = [0u8; 56];
        let mut w = &mut buf[..];
        // IPv6 text is at most 45 bytes, so "[" + 45 + "]:" + 5 always fits in 56.
        let _ = match ip {
            IpAddr::V4(v4) => write!(w, "{v4}:{port}"),
            IpAddr::V6(v6) => write!(w, "[{v6}]:{port}"),
        };
        let len = 56 - w.len();
        UpstreamAddr {
            buf,
            len: len as u8,
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII was written.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("")
    }
}

impl std::fmt::Debug for UpstreamAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reply the gateway sends itself, as `application/json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub body: String,
    /// Envoy response-code details, shown in access logs.
    pub details: &'static str,
    pub outcome: Outcome,
}

/// What to do with a request. Borrows the sandbox id from the request headers.
#[derive(Debug)]
pub enum Decision<'a> {
    Forward {
        sandbox_id: &'a str,
        upstream: UpstreamAddr,
        rewrite_path: Option<String>,
        /// Remove the traffic token header before it reaches the sandbox.
        strip_traffic_token: bool,
    },
    Reply(LocalReply),
    PassThrough,
}

impl Decision<'_> {
    pub fn outcome(&self) -> Outcome {
        match self {
            Decision::Forward { .. } => Outcome::Routed,
            Decision::Reply(r) => r.outcome,
            Decision::PassThrough => Outcome::PassThrough,
        }
    }
}

/// Writes `s` as a JSON string (sandbox ids are validated, but never trust that here).
fn json_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::Value::from(s).to_string());
}

fn sandbox_reply(
    status: u16,
    id: &str,
    message: &str,
    details: &'static str,
    outcome: Outcome,
) -> LocalReply {
    let mut body = String::with_capacity(64 + id.len() + message.len());
    body.push_str("{\"sandboxId\":");
    json_str(&mut body, id);
    body.push_str(",\"message\":");
    json_str(&mut body, message);
    body.push_str(",\"code\":");
    body.push_str(&status.to_string());
    body.push('}');
    LocalReply {
        status,
        body,
        details,
        outcome,
    }
}

/// The E2B proxy's not-found contract; the SDK matches "was not found".
pub const NOT_FOUND_MESSAGE: &str = "The sandbox was not found";
/// envd's own 401 message, so clients see the same text from the gateway and from envd.
pub const UNAUTHORIZED_MESSAGE: &str =
    "unauthorized access, please provide a valid access token or method signing if supported";
pub const FORBIDDEN_MESSAGE: &str = "forbidden: invalid or missing traffic access token";
/// A route naming an address the gateway never connects to. Still "was not found" for the SDK:
/// the sandbox cannot be reached through this gateway, like one that does not exist.
pub const UPSTREAM_DENIED_MESSAGE: &str =
    "The sandbox was not found: its address is not allowed as an upstream by the gateway";
pub const NOT_READY_MESSAGE: &str =
    "The sandbox gateway is not ready: its route table has not been synced yet";

pub fn not_found(id: &str) -> LocalReply {
    sandbox_reply(
        502,
        id,
        NOT_FOUND_MESSAGE,
        "sandbox_not_found",
        Outcome::NotFound,
    )
}

pub fn not_running(id: &str, state: RouteState) -> LocalReply {
    let message = match state {
        RouteState::Paused => "The sandbox is paused; resume it to reach it".to_string(),
        other => format!("The sandbox is not running (state: {})", other.as_str()),
    };
    sandbox_reply(
        502,
        id,
        &message,
        "sandbox_not_running",
        Outcome::NotRunning,
    )
}

pub fn upstream_denied(id: &str) -> LocalReply {
    sandbox_reply(
        502,
        id,
        UPSTREAM_DENIED_MESSAGE,
        "sandbox_upstream_denied",
        Outcome::UpstreamDenied,
    )
}

pub fn internal_error() -> LocalReply {
    LocalReply {
        status: 500,
        body: r#"{"message":"internal error in the sandbox gateway","code":500}"#.into(),
        details: "sandbox_gateway_internal_error",
        outcome: Outcome::InternalError,
    }
}

/// The readiness answer: 200 with the table size once synced, 503 before.
fn readiness(table: &RouteTable) -> LocalReply {
    let (status, body) = if table.is_synced() {
        (
            200,
            format!("{{\"status\":\"ready\",\"routes\":{}}}", table.len()),
        )
    } else {
        let mut body = String::from("{\"message\":");
        json_str(&mut body, NOT_READY_MESSAGE);
        body.push_str(",\"code\":503}");
        (503, body)
    };
    LocalReply {
        status,
        body,
        details: "sandbox_gateway_readiness",
        outcome: Outcome::Readiness,
    }
}

fn bad_request(message: &str) -> LocalReply {
    let mut body = String::from("{\"message\":");
    json_str(&mut body, message);
    body.push_str(",\"code\":400}");
    LocalReply {
        status: 400,
        body,
        details: "sandbox_bad_request",
        outcome: Outcome::BadRequest,
    }
}

/// The decision maker for one filter config: its settings and the table it reads.
#[derive(Debug)]
pub struct Gateway {
    pub config: GatewayConfig,
    pub table: Arc<RouteTable>,
}

/// envd paths that authenticate without `X-Access-Token`: `GET /health`, and `/files` carrying
/// a URL signature (envd verifies it; the gateway only holds a token digest).
fn envd_auth_exempt(method: &[u8], path: &[u8]) -> bool {
    let (p, query) = match path.iter().position(|b| *b == b'?') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (path, &b""[..]),
    };
    if method == b"GET" && p == b"/health" {
        return true;
    }
    p == b"/files"
        && query
            .split(|b| *b == b'&')
            .any(|kv| kv.starts_with(b"signature="))
}

impl Gateway {
    pub fn new(config: GatewayConfig, table: Arc<RouteTable>) -> Self {
        Gateway { config, table }
    }

    /// Decides what to do with a request.
    pub fn decide<'r>(&self, req: &'r impl RequestView) -> Decision<'r> {
        let cfg = &self.config;
        let incoming = Incoming {
            sandbox_id: req.header(&cfg.identify.sandbox_header),
            sandbox_port: req.header(&cfg.identify.port_header),
            authority: match req.header(":authority") {
                HeaderField::One(a) => Some(a),
                _ => None,
            },
            path: match req.header(":path") {
                HeaderField::One(p) => Some(p),
                _ => None,
            },
        };
        let target = match identify(&cfg.identify, &incoming) {
            Ok(Some(t)) => t,
            Ok(None) => {
                if let (Some(ready), Some(path)) = (&cfg.readiness_path, incoming.path) {
                    let path = path.split(|b| *b == b'?').next().unwrap_or(path);
                    let method = req.header(":method");
                    if path == ready.as_bytes()
                        && matches!(method, HeaderField::One(b"GET") | HeaderField::One(b"HEAD"))
                    {
                        return Decision::Reply(readiness(&self.table));
                    }
                }
                // Forwarding a request that names no sandbox to the ORIGINAL_DST cluster would send
                // it back to the gateway itself; other routes (the API) pass through untouched.
                return match req.routed_cluster() {
                    Some(c) if c == cfg.sandbox_cluster.as_bytes() => Decision::Reply(bad_request(
                        "the request does not name a sandbox: send the e2b-sandbox-id header, \
                         use the <port>-<sandboxId>.<domain> host, or the /kruise/<sandboxId>/<port>/ path",
                    )),
                    _ => Decision::PassThrough,
                };
            }
            Err(e) => return Decision::Reply(bad_request(&e.to_string())),
        };
        if !self.table.is_synced() {
            return Decision::Reply(sandbox_reply(
                503,
                target.id,
                NOT_READY_MESSAGE,
                "gateway_not_ready",
                Outcome::NotReady,
            ));
        }
        self.table.with_route(target.id, |route| match route {
            None => Decision::Reply(not_found(target.id)),
            Some(route) => self.route_to(req, &target, route, incoming.path.unwrap_or(b"/")),
        })
    }

    fn route_to<'r>(
        &self,
        req: &impl RequestView,
        target: &Target<'r>,
        route: &Route,
        path: &[u8],
    ) -> Decision<'r> {
        let cfg = &self.config;
        match (route.state, route.ip) {
            (RouteState::Dead, _) => return Decision::Reply(not_found(target.id)),
            (RouteState::Running, Some(_)) => {}
            (state, _) => return Decision::Reply(not_running(target.id, state)),
        }
        let Some(ip) = route.ip else {
            return Decision::Reply(not_running(target.id, route.state));
        };
        // Before the tokens: a route to where the platform listens is unusable for everyone.
        if cfg.denied_upstreams.denies(ip) {
            return Decision::Reply(upstream_denied(target.id));
        }
        let mut strip_traffic_token = false;
        if target.port == cfg.envd_port {
            if route.flags.contains(RouteFlags::REQUIRE_ACCESS_TOKEN) {
                let method = match req.header(":method") {
                    HeaderField::One(m) => m,
                    _ => b"",
                };
                let envd_path = target.rewrite_path.as_deref().map_or(path, str::as_bytes);
                if !envd_auth_exempt(method, envd_path) {
                    let ok = match (req.header(&cfg.access_token_header), route.access_token) {
                        (HeaderField::One(t), Some(d)) => d.matches(t),
                        _ => false,
                    };
                    if !ok {
                        return Decision::Reply(sandbox_reply(
                            401,
                            target.id,
                            UNAUTHORIZED_MESSAGE,
                            "sandbox_unauthorized",
                            Outcome::Unauthorized,
                        ));
                    }
                }
            }
        } else if route.flags.contains(RouteFlags::REQUIRE_TRAFFIC_TOKEN) {
            let ok = match (
                req.header(&cfg.traffic_token_header),
                route.traffic_token.as_deref(),
            ) {
                (HeaderField::One(t), Some(d)) => d.matches(t),
                _ => false,
            };
            if !ok {
                return Decision::Reply(sandbox_reply(
                    403,
                    target.id,
                    FORBIDDEN_MESSAGE,
                    "sandbox_forbidden",
                    Outcome::Forbidden,
                ));
            }
            strip_traffic_token = true;
        }
        Decision::Forward {
            sandbox_id: target.id,
            upstream: UpstreamAddr::new(ip, target.port),
            rewrite_path: target.rewrite_path.clone(),
            strip_traffic_token,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{RouteSpec, TokenDigest};

    struct Req {
        headers: Vec<(&'static str, Vec<u8>)>,
        cluster: Option<&'static str>,
    }

    impl Req {
        fn new(headers: &[(&'static str, &str)]) -> Self {
            Req {
                headers: headers
                    .iter()
                    .map(|(k, v)| (*k, v.as_bytes().to_vec()))
                    .collect(),
                cluster: Some("sandboxes"),
            }
        }
    }

    impl RequestView for Req {
        fn header(&self, name: &str) -> HeaderField<'_> {
            let mut it = self.headers.iter().filter(|(k, _)| *k == name);
            match (it.next(), it.next()) {
                (None, _) => HeaderField::Absent,
                (Some((_, v)), None) => HeaderField::One(v),
                _ => HeaderField::Repeated,
            }
        }
        fn routed_cluster(&self) -> Option<&[u8]> {
            self.cluster.map(str::as_bytes)
        }
    }

    fn spec(id: &str, ip: &str, state: &str) -> RouteSpec {
        serde_json::from_value(serde_json::json!({
            "id": id, "namespace": "ns", "name": id, "uid": format!("uid-{id}"),
            "resourceVersion": "10", "ip": ip, "state": state,
        }))
        .unwrap()
    }

    fn gateway(specs: Vec<RouteSpec>) -> Gateway {
        let table = Arc::new(RouteTable::new());
        table.replace_all(specs.into_iter().map(|s| s.into_route().unwrap()).collect());
        Gateway::new(GatewayConfig::parse(b"{}").unwrap().0, table)
    }

    fn forward(g: &Gateway, r: &Req) -> (String, Option<String>, bool) {
        match g.decide(r) {
            Decision::Forward {
                upstream,
                rewrite_path,
                strip_traffic_token,
                ..
            } => (
                upstream.as_str().to_string(),
                rewrite_path,
                strip_traffic_token,
            ),
            other => panic!("expected forward, got {other:?}"),
        }
    }

    fn reply(g: &Gateway, r: &Req) -> LocalReply {
        match g.decide(r) {
            Decision::Reply(r) => r,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn routes_running_sandboxes_with_bracketed_ipv6() {
        let g = gateway(vec![
            spec("a", "10.1.2.3", "running"),
            spec("six", "2001:db8::1", "running"),
        ]);
        let r = &Req::new(&[("e2b-sandbox-id", "a"), (":path", "/")]);
        assert_eq!(forward(&g, r), ("10.1.2.3:49983".into(), None, false));
        let r = &Req::new(&[(":authority", "8080-six.example.com"), (":path", "/x")]);
        assert_eq!(forward(&g, r), ("[2001:db8::1]:8080".into(), None, false));
        let r = &Req::new(&[(":authority", "gw"), (":path", "/kruise/a/3000/api?q=1")]);
        assert_eq!(
            forward(&g, r),
            ("10.1.2.3:3000".into(), Some("/api?q=1".into()), false)
        );
    }

    #[test]
    fn e2b_error_contract() {
        let g = gateway(vec![
            spec("dead", "10.0.0.1", "dead"),
            spec("paused", "10.0.0.2", "paused"),
            spec("creating", "", "creating"),
            spec("pool", "10.0.0.3", "available"),
        ]);
        let r = reply(&g, &Req::new(&[("e2b-sandbox-id", "nope")]));
        assert_eq!((r.status, r.outcome), (502, Outcome::NotFound));
        assert_eq!(
            r.body,
            r#"{"sandboxId":"nope","message":"The sandbox was not found","code":502}"#
        );
        let r = reply(&g, &Req::new(&[("e2b-sandbox-id", "dead")]));
        assert_eq!(
            r.body,
            r#"{"sandboxId":"dead","message":"The sandbox was not found","code":502}"#
        );
        for id in ["paused", "creating", "pool"] {
            let r = reply(&g, &Req::new(&[("e2b-sandbox-id", id)]));
            assert_eq!(
                (r.status, r.outcome, r.details),
                (502, Outcome::NotRunning, "sandbox_not_running")
            );
            assert!(!r.body.contains("was not found"), "{}", r.body);
            assert!(r.body.contains(&format!("\"sandboxId\":\"{id}\"")));
        }
    }

    #[test]
    fn denied_upstream_addresses_are_never_forwarded() {
        let table = Arc::new(RouteTable::new());
        let mut guarded = spec("admin", "127.0.0.1", "running");
        guarded = with_tokens(guarded, Some("tok"), None);
        table.replace_all(
            [
                guarded,
                spec("mapped", "::ffff:127.0.0.1", "running"),
                spec("six", "::1", "running"),
                spec("any", "0.0.0.0", "running"),
                spec("any6", "::", "running"),
                spec("meta", "169.254.169.254", "running"),
                spec("ok", "127.0.1.7", "running"),
                spec("gone", "127.0.0.1", "dead"),
            ]
            .into_iter()
            .map(|s| s.into_route().unwrap())
            .collect(),
        );
        let config = br#"{"denied_upstream_ips":["127.0.0.1","::1","169.254.0.0/16"]}"#;
        let g = Gateway::new(GatewayConfig::parse(config).unwrap().0, table.clone());
        for id in ["admin", "mapped", "six", "any", "any6", "meta"] {
            let r = reply(
                &g,
                &Req::new(&[("e2b-sandbox-id", id), ("e2b-sandbox-port", "9901")]),
            );
            assert_eq!(
                (r.status, r.outcome, r.details),
                (502, Outcome::UpstreamDenied, "sandbox_upstream_denied"),
                "{id}"
            );
            assert_eq!(
                r.body,
                format!(
                    r#"{{"sandboxId":"{id}","message":"{UPSTREAM_DENIED_MESSAGE}","code":502}}"#
                )
            );
            assert!(
                r.body.contains("was not found"),
                "the SDK's not-running match"
            );
        }
        // Refused before the token check: a valid token does not open it either.
        let r = reply(
            &g,
            &Req::new(&[
                ("e2b-sandbox-id", "admin"),
                ("x-access-token", "tok"),
                (":path", "/"),
            ]),
        );
        assert_eq!(r.outcome, Outcome::UpstreamDenied);
        // A dead route stays "not found"; another loopback address is a sandbox like any other.
        assert_eq!(
            reply(&g, &Req::new(&[("e2b-sandbox-id", "gone")])).outcome,
            Outcome::NotFound
        );
        let r = &Req::new(&[("e2b-sandbox-id", "ok"), ("e2b-sandbox-port", "8080")]);
        assert_eq!(forward(&g, r).0, "127.0.1.7:8080");
        // Without a list only the unspecified addresses are refused.
        let open = Gateway::new(GatewayConfig::parse(b"{}").unwrap().0, table);
        let r = &Req::new(&[("e2b-sandbox-id", "six"), ("e2b-sandbox-port", "1")]);
        assert_eq!(forward(&open, r).0, "[::1]:1");
        let r = reply(&open, &Req::new(&[("e2b-sandbox-id", "any")]));
        assert_eq!(r.outcome, Outcome::UpstreamDenied);
    }

    #[test]
    fn readiness_path_follows_the_table_sync() {
        let table = Arc::new(RouteTable::new());
        let g = Gateway::new(GatewayConfig::parse(b"{}").unwrap().0, table.clone());
        let probe = |path: &'static str, method: &'static str| {
            let mut r = Req::new(&[
                (":authority", "10.0.0.9:10000"),
                (":method", method),
                (":path", path),
            ]);
            r.cluster = None;
            r
        };
        let r = reply(&g, &probe("/readyz", "GET"));
        assert_eq!((r.status, r.outcome), (503, Outcome::Readiness));
        assert!(r.body.contains(NOT_READY_MESSAGE), "{}", r.body);
        table.replace_all(vec![spec("a", "10.0.0.1", "running").into_route().unwrap()]);
        let r = reply(&g, &probe("/readyz?verbose", "HEAD"));
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, r#"{"status":"ready","routes":1}"#)
        );
        // Other methods and paths are not the probe; a request naming a sandbox reaches it.
        assert!(matches!(
            g.decide(&probe("/readyz", "POST")),
            Decision::PassThrough
        ));
        assert!(matches!(
            g.decide(&probe("/readyz/x", "GET")),
            Decision::PassThrough
        ));
        let to_sandbox = Req::new(&[
            ("e2b-sandbox-id", "a"),
            (":method", "GET"),
            (":path", "/readyz"),
        ]);
        assert!(matches!(g.decide(&to_sandbox), Decision::Forward { .. }));
        // An empty path turns it off.
        let off = Gateway::new(
            GatewayConfig::parse(br#"{"readiness_path":""}"#).unwrap().0,
            table,
        );
        assert!(matches!(
            off.decide(&probe("/readyz", "GET")),
            Decision::PassThrough
        ));
        assert!(GatewayConfig::parse(br#"{"readiness_path":"readyz"}"#).is_err());
    }

    #[test]
    fn unsynced_table_answers_503() {
        let g = Gateway::new(
            GatewayConfig::parse(b"{}").unwrap().0,
            Arc::new(RouteTable::new()),
        );
        let r = reply(&g, &Req::new(&[("e2b-sandbox-id", "a")]));
        assert_eq!(
            (r.status, r.outcome, r.details),
            (503, Outcome::NotReady, "gateway_not_ready")
        );
        // Requests that name no sandbox are not gated on readiness.
        let mut api = Req::new(&[
            (":authority", "api.example.com"),
            (":path", "/v2/sandboxes"),
        ]);
        api.cluster = Some("manager");
        assert!(matches!(g.decide(&api), Decision::PassThrough));
    }

    #[test]
    fn unidentified_requests_pass_only_to_other_clusters() {
        let g = gateway(vec![]);
        let r = reply(
            &g,
            &Req::new(&[(":authority", "localhost"), (":path", "/")]),
        );
        assert_eq!((r.status, r.outcome), (400, Outcome::BadRequest));
        let mut api = Req::new(&[
            (":authority", "localhost"),
            (":path", "/kruise/api/sandboxes"),
        ]);
        api.cluster = Some("manager");
        assert!(matches!(g.decide(&api), Decision::PassThrough));
        api.cluster = None;
        assert!(matches!(g.decide(&api), Decision::PassThrough));
    }

    #[test]
    fn malformed_identification_is_400_json() {
        let g = gateway(vec![spec("a", "10.0.0.1", "running")]);
        let r = reply(
            &g,
            &Req::new(&[("e2b-sandbox-id", "a"), ("e2b-sandbox-port", "99999")]),
        );
        assert_eq!(r.status, 400);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["code"], 400);
        assert!(v["message"].as_str().unwrap().contains("e2b-sandbox-port"));
        let r = reply(&g, &Req::new(&[("e2b-sandbox-port", "49983")]));
        assert_eq!(r.status, 400);
    }

    fn with_tokens(mut s: RouteSpec, access: Option<&str>, traffic: Option<&str>) -> RouteSpec {
        if let Some(a) = access {
            s.access_token_sha256 = Some(TokenDigest::of(a.as_bytes()).to_hex());
            s.require_access_token = true;
        }
        if let Some(t) = traffic {
            s.traffic_token_sha256 = Some(TokenDigest::of(t.as_bytes()).to_hex());
            s.require_traffic_token = true;
        }
        s
    }

    #[test]
    fn access_token_guards_the_envd_port() {
        let g = gateway(vec![with_tokens(
            spec("a", "10.0.0.1", "running"),
            Some("tok"),
            None,
        )]);
        let base = [
            ("e2b-sandbox-id", "a"),
            (":method", "POST"),
            (":path", "/process.Process/Start"),
        ];
        let r = reply(&g, &Req::new(&base));
        assert_eq!((r.status, r.outcome), (401, Outcome::Unauthorized));
        assert!(r.body.contains(UNAUTHORIZED_MESSAGE));
        let mut wrong = base.to_vec();
        wrong.push(("x-access-token", "tok2"));
        assert_eq!(reply(&g, &Req::new(&wrong)).status, 401);
        let mut right = base.to_vec();
        right.push(("x-access-token", "tok"));
        assert_eq!(forward(&g, &Req::new(&right)).0, "10.0.0.1:49983");
        // envd's own exemptions.
        let health = [
            ("e2b-sandbox-id", "a"),
            (":method", "GET"),
            (":path", "/health"),
        ];
        assert!(matches!(
            g.decide(&Req::new(&health)),
            Decision::Forward { .. }
        ));
        let signed = [
            ("e2b-sandbox-id", "a"),
            (":method", "GET"),
            (":path", "/files?path=x&signature=v1_abc"),
        ];
        assert!(matches!(
            g.decide(&Req::new(&signed)),
            Decision::Forward { .. }
        ));
        let unsigned = [
            ("e2b-sandbox-id", "a"),
            (":method", "GET"),
            (":path", "/files?path=x"),
        ];
        assert_eq!(reply(&g, &Req::new(&unsigned)).status, 401);
        // The token does not guard other ports.
        let other = [
            ("e2b-sandbox-id", "a"),
            ("e2b-sandbox-port", "8080"),
            (":path", "/"),
        ];
        assert!(matches!(
            g.decide(&Req::new(&other)),
            Decision::Forward { .. }
        ));
    }

    #[test]
    fn traffic_token_guards_other_ports_and_is_stripped() {
        let g = gateway(vec![with_tokens(
            spec("a", "10.0.0.1", "running"),
            None,
            Some("tt"),
        )]);
        let base = [
            ("e2b-sandbox-id", "a"),
            ("e2b-sandbox-port", "8080"),
            (":path", "/"),
        ];
        let r = reply(&g, &Req::new(&base));
        assert_eq!((r.status, r.outcome), (403, Outcome::Forbidden));
        let mut ok = base.to_vec();
        ok.push(("e2b-traffic-access-token", "tt"));
        assert_eq!(
            forward(&g, &Req::new(&ok)),
            ("10.0.0.1:8080".into(), None, true)
        );
        // envd port is not guarded by the traffic token.
        let envd = [("e2b-sandbox-id", "a"), (":path", "/health")];
        assert!(matches!(
            g.decide(&Req::new(&envd)),
            Decision::Forward { .. }
        ));
    }

    #[test]
    fn outcome_indexes_match_their_position() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i);
        }
    }

    #[test]
    fn upstream_addr_formats() {
        assert_eq!(
            UpstreamAddr::new("127.0.0.1".parse().unwrap(), 1).as_str(),
            "127.0.0.1:1"
        );
        assert_eq!(
            UpstreamAddr::new(
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
                65535
            )
            .as_str(),
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
        );
        assert_eq!(
            UpstreamAddr::new("::ffff:1.2.3.4".parse().unwrap(), 80).as_str(),
            "[::ffff:1.2.3.4]:80"
        );
    }
}
