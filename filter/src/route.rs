//! The route model: what the gateway knows about one sandbox, in a compact form (the table holds
//! up to ~100,000 of these inside Envoy, with a budget of 256 bytes each).

use std::fmt;
use std::net::IpAddr;

use sandbox_xds_wire::route::{InvalidRoute, validate};
use sandbox_xds_wire::v1::SandboxRoute;
use sandbox_xds_wire::v1::sandbox_route::State;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use sandbox_xds_wire::route::valid_sandbox_id;

/// Lifecycle state of a sandbox as projected from its Sandbox CR (upstream `GetSandboxState`).
/// Only `Running` sandboxes receive traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum RouteState {
    Creating,
    Available,
    Running,
    Paused,
    Dead,
}

impl RouteState {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteState::Creating => "creating",
            RouteState::Available => "available",
            RouteState::Running => "running",
            RouteState::Paused => "paused",
            RouteState::Dead => "dead",
        }
    }

    fn to_wire(self) -> State {
        match self {
            RouteState::Creating => State::Creating,
            RouteState::Available => State::Available,
            RouteState::Running => State::Running,
            RouteState::Paused => State::Paused,
            RouteState::Dead => State::Dead,
        }
    }

    /// The wire state of a validated route (never `Unspecified`; that would read as dead).
    fn from_wire(s: State) -> Self {
        match s {
            State::Creating => RouteState::Creating,
            State::Available => RouteState::Available,
            State::Running => RouteState::Running,
            State::Paused => RouteState::Paused,
            State::Dead | State::Unspecified => RouteState::Dead,
        }
    }
}

/// SHA-256 of an access token. Tokens never reach the gateway in clear; requests are checked by
/// hashing the presented header and comparing digests in constant time.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    pub fn of(token: &[u8]) -> Self {
        TokenDigest(Sha256::digest(token).into())
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(TokenDigest(out))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Constant-time check of a presented token against this digest.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let d: [u8; 32] = Sha256::digest(presented).into();
        bool::from(d.ct_eq(&self.0))
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A digest is not a secret, but keep logs short.
        write!(f, "sha256:{}…", &hex::encode(&self.0[..4]))
    }
}

/// Per-route switches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteFlags(u8);

impl RouteFlags {
    /// Requests to the envd port must carry a matching `X-Access-Token` (envd's exemptions apply).
    pub const REQUIRE_ACCESS_TOKEN: RouteFlags = RouteFlags(1);
    /// Requests to any other port must carry a matching `e2b-traffic-access-token`.
    pub const REQUIRE_TRAFFIC_TOKEN: RouteFlags = RouteFlags(2);

    pub const fn empty() -> Self {
        RouteFlags(0)
    }
    pub const fn bits(self) -> u8 {
        self.0
    }
    pub const fn from_bits_truncate(bits: u8) -> Self {
        RouteFlags(bits & 3)
    }
    pub const fn contains(self, other: RouteFlags) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn insert(&mut self, other: RouteFlags) {
        self.0 |= other.0;
    }
}

/// Identity of the Sandbox object behind a route: `namespace/name` and its UID.
///
/// Stored as one allocation (`namespace \0 name \0 uid`) to keep the per-route footprint small.
#[derive(Clone, PartialEq, Eq)]
pub struct SandboxRef(Box<str>);

impl SandboxRef {
    pub fn new(namespace: &str, name: &str, uid: &str) -> Self {
        let mut s = String::with_capacity(namespace.len() + name.len() + uid.len() + 2);
        s.push_str(namespace);
        s.push('\0');
        s.push_str(name);
        s.push('\0');
        s.push_str(uid);
        SandboxRef(s.into_boxed_str())
    }

    fn part(&self, i: usize) -> &str {
        self.0.split('\0').nth(i).unwrap_or("")
    }
    pub fn namespace(&self) -> &str {
        self.part(0)
    }
    pub fn name(&self) -> &str {
        self.part(1)
    }
    pub fn uid(&self) -> &str {
        self.part(2)
    }
}

impl fmt::Debug for SandboxRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} (uid {})",
            self.namespace(),
            self.name(),
            self.uid()
        )
    }
}

/// One sandbox's route. The sandbox id is the table key and is not repeated here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub sandbox: SandboxRef,
    /// Kubernetes resourceVersion of the Sandbox this route was projected from (canonical
    /// positive integer), used to order updates.
    pub resource_version: u64,
    /// Pod IP; `None` while the sandbox has none (state `creating`).
    pub ip: Option<IpAddr>,
    pub state: RouteState,
    pub flags: RouteFlags,
    pub access_token: Option<TokenDigest>,
    /// Rarely set (sandboxes created with `allowPublicTraffic=false`), so kept out of line.
    pub traffic_token: Option<Box<TokenDigest>>,
}

/// Why a route description was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Breaks a rule every route must keep; the rules live in `sandbox_xds_wire::route`, shared
    /// with sandbox-xds's store.
    #[error(transparent)]
    Invalid(#[from] InvalidRoute),
    #[error("resourceVersion {0:?} is not a canonical positive integer")]
    InvalidResourceVersion(String),
    #[error("{field} is not a SHA-256 digest (64 hex characters)")]
    InvalidDigest { field: &'static str },
}

/// Parses a resourceVersion the way upstream validates it: a canonical positive integer
/// ("0", "01" and non-digits are rejected).
pub fn parse_resource_version(rv: &str) -> Result<u64, RouteError> {
    let bad = || RouteError::InvalidResourceVersion(rv.to_string());
    if rv.is_empty() || rv.starts_with('0') || !rv.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    rv.parse::<u64>().map_err(|_| bad())
}

/// The JSON form of a route (filter config `routes` / `routes_file`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub resource_version: String,
    #[serde(default)]
    pub ip: Option<String>,
    pub state: RouteState,
    #[serde(default)]
    pub access_token_sha256: Option<String>,
    #[serde(default)]
    pub traffic_token_sha256: Option<String>,
    #[serde(default)]
    pub require_access_token: bool,
    #[serde(default)]
    pub require_traffic_token: bool,
}

impl RouteSpec {
    /// Validates and converts into the table form, returning the id alongside. The JSON form is
    /// translated to the wire form first, so both are checked by the same rules.
    pub fn into_route(self) -> Result<(String, Route), RouteError> {
        let digest = |v: Option<&str>, field| -> Result<Vec<u8>, RouteError> {
            match v {
                None | Some("") => Ok(Vec::new()),
                Some(s) => TokenDigest::from_hex(s)
                    .map(|d| d.0.to_vec())
                    .ok_or(RouteError::InvalidDigest { field }),
            }
        };
        let wire = SandboxRoute {
            resource_version: parse_resource_version(&self.resource_version)?,
            access_token_sha256: digest(self.access_token_sha256.as_deref(), "accessTokenSha256")?,
            traffic_token_sha256: digest(
                self.traffic_token_sha256.as_deref(),
                "trafficTokenSha256",
            )?,
            id: self.id,
            namespace: self.namespace,
            name: self.name,
            uid: self.uid,
            ip: self.ip.unwrap_or_default(),
            state: self.state.to_wire() as i32,
            require_access_token: self.require_access_token,
            require_traffic_token: self.require_traffic_token,
        };
        from_wire(&wire)
    }
}

/// Converts a `SandboxRoute` received from sandbox-xds (or translated from the JSON form).
pub fn from_wire(r: &SandboxRoute) -> Result<(String, Route), RouteError> {
    let checked = validate(r)?;
    let mut flags = RouteFlags::empty();
    if r.require_access_token {
        flags.insert(RouteFlags::REQUIRE_ACCESS_TOKEN);
    }
    if r.require_traffic_token {
        flags.insert(RouteFlags::REQUIRE_TRAFFIC_TOKEN);
    }
    Ok((
        r.id.clone(),
        Route {
            sandbox: SandboxRef::new(&r.namespace, &r.name, &r.uid),
            resource_version: r.resource_version,
            ip: checked.ip,
            state: RouteState::from_wire(checked.state),
            flags,
            access_token: checked.access_token_sha256.map(TokenDigest),
            traffic_token: checked
                .traffic_token_sha256
                .map(|d| Box::new(TokenDigest(d))),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RouteSpec {
        RouteSpec {
            id: "sbx1".into(),
            namespace: "default".into(),
            name: "sbx1".into(),
            uid: "u-1".into(),
            resource_version: "42".into(),
            ip: Some("10.0.0.7".into()),
            state: RouteState::Running,
            access_token_sha256: None,
            traffic_token_sha256: None,
            require_access_token: false,
            require_traffic_token: false,
        }
    }

    #[test]
    fn resource_versions_must_be_canonical_positive_integers() {
        assert_eq!(parse_resource_version("1"), Ok(1));
        assert_eq!(parse_resource_version("18446744073709551615"), Ok(u64::MAX));
        for bad in [
            "",
            "0",
            "01",
            "rv",
            "-1",
            "1.5",
            " 1",
            "18446744073709551616",
        ] {
            assert!(parse_resource_version(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn spec_conversion_validates_every_field() {
        let (id, r) = spec().into_route().unwrap();
        assert_eq!(id, "sbx1");
        assert_eq!(r.sandbox.namespace(), "default");
        assert_eq!(r.sandbox.name(), "sbx1");
        assert_eq!(r.sandbox.uid(), "u-1");
        assert_eq!(r.resource_version, 42);

        let mut s = spec();
        s.ip = None;
        assert_eq!(
            s.into_route().unwrap_err(),
            RouteError::Invalid(InvalidRoute::RunningWithoutIp)
        );
        let mut s = spec();
        s.state = RouteState::Creating;
        s.ip = None;
        assert!(s.into_route().is_ok());
        let mut s = spec();
        s.ip = Some("10.0.0".into());
        assert!(matches!(
            s.into_route(),
            Err(RouteError::Invalid(InvalidRoute::InvalidIp(_)))
        ));
        let mut s = spec();
        s.id = "bad/id".into();
        assert!(matches!(
            s.into_route(),
            Err(RouteError::Invalid(InvalidRoute::InvalidId(_)))
        ));
        let mut s = spec();
        s.uid = String::new();
        assert_eq!(
            s.into_route().unwrap_err(),
            RouteError::Invalid(InvalidRoute::Empty { field: "uid" })
        );
        let mut s = spec();
        s.require_access_token = true;
        assert_eq!(
            s.into_route().unwrap_err(),
            RouteError::Invalid(InvalidRoute::AccessTokenMissing)
        );
        let mut s = spec();
        s.access_token_sha256 = Some("abc".into());
        assert!(matches!(
            s.into_route(),
            Err(RouteError::InvalidDigest { .. })
        ));
    }

    #[test]
    fn wire_routes_convert_with_the_same_checks() {
        let mut w = SandboxRoute {
            id: "sbx1".into(),
            namespace: "default".into(),
            name: "sbx1".into(),
            uid: "u-1".into(),
            resource_version: 42,
            ip: "2001:db8::7".into(),
            state: State::Running as i32,
            access_token_sha256: TokenDigest::of(b"t").0.to_vec(),
            require_access_token: true,
            ..Default::default()
        };
        let (id, r) = from_wire(&w).unwrap();
        assert_eq!((id.as_str(), r.resource_version), ("sbx1", 42));
        assert!(r.flags.contains(RouteFlags::REQUIRE_ACCESS_TOKEN));
        assert!(r.access_token.unwrap().matches(b"t"));
        w.access_token_sha256 = vec![1; 5];
        assert!(matches!(
            from_wire(&w),
            Err(RouteError::Invalid(InvalidRoute::InvalidDigest { .. }))
        ));
        w.access_token_sha256.clear();
        assert_eq!(
            from_wire(&w).unwrap_err(),
            RouteError::Invalid(InvalidRoute::AccessTokenMissing)
        );
        w.require_access_token = false;
        w.state = 0;
        assert_eq!(
            from_wire(&w).unwrap_err(),
            RouteError::Invalid(InvalidRoute::UnknownState(0))
        );
        w.state = State::Running as i32;
        w.ip.clear();
        assert_eq!(
            from_wire(&w).unwrap_err(),
            RouteError::Invalid(InvalidRoute::RunningWithoutIp)
        );
    }

    #[test]
    fn token_digests_match_only_the_same_token() {
        let d = TokenDigest::of(b"secret-token");
        assert!(d.matches(b"secret-token"));
        assert!(!d.matches(b"secret-tokem"));
        assert!(!d.matches(b""));
        assert_eq!(TokenDigest::from_hex(&d.to_hex()), Some(d));
    }

    #[test]
    fn route_value_stays_compact() {
        // The table's memory budget is 256 B per route including the key, the identity string and
        // the map's own overhead; the inline part must stay well under half of it.
        assert!(
            std::mem::size_of::<Route>() <= 88,
            "Route is {} bytes",
            std::mem::size_of::<Route>()
        );
    }
}
