//! Harness for the gateway integration tests: the real Envoy 1.40 started from the shipped
//! `envoy/gateway.yaml` (ports and filter config rewritten for the test), loopback upstreams that
//! report what reached them, and a raw HTTP/1.1 client that can send exactly the bytes a test
//! wants (repeated or malformed headers included).

pub mod client;
pub mod envoy;
pub mod upstream;

pub use client::{Response, read_until_closed, request, request_raw, try_request};
pub use envoy::{AdsGatewayBuilder, Gateway, GatewayBuilder, shipped_filter_config};
pub use upstream::{Upstream, WsUpstream};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A route in the filter's JSON form.
pub fn route(id: &str, ip: &str, state: &str) -> Value {
    json!({
        "id": id,
        "namespace": "sandboxes",
        "name": id,
        "uid": format!("uid-{id}"),
        "resourceVersion": "100",
        "ip": ip,
        "state": state,
    })
}

/// Hex SHA-256, the form routes carry token digests in.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}
