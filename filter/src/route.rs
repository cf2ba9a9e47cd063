//! The route model: what the gateway knows about one sandbox, in a compact form (the table holds
//! up to ~100,000 of these inside Envoy, with a budget of 256 bytes each).

use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

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
    #[error("route {field} is empty")]
    Empty { field: &'static str },
    #[error("sandbox id {0:?} has characters outside [A-Za-z0-9._-] or is longer than 512 bytes")]
    InvalidId(String),
    #[error("resourceVersion {0:?} is not a canonical positive integer")]
    InvalidResourceVersion(String),
    #[error("ip {0:?} is not an IPv4 or IPv6 address")]
    InvalidIp(String),
    #[error("state is running but the route has no ip")]
    RunningWithoutIp,
    #[error("{field} is not a SHA-256 digest (64 hex characters / 32 bytes)")]
    InvalidDigest { field: &'static str },
    #[error("requireTrafficToken is set but no trafficTokenSha256 is given")]
    TrafficTokenMissing,
    #[error("requireAccessToken is set but no accessTokenSha256 is given")]
    AccessTokenMissing,
    #[error("state {0} is not a known sandbox state")]
    UnknownState(i32),
}

/// A sandbox id is opaque but must be safe in a host label, a path segment, a header and JSON.
pub fn valid_sandbox_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 512
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
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

/// The JSON form of a route (filter config `routes` / `routes_file`, and the xDS payload later).
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

/// Everything a route is made of, already parsed; [`RouteParts::build`] checks the invariants
/// every source must satisfy.
#[derive(Debug)]
pub struct RouteParts<'a> {
    pub id: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    pub resource_version: u64,
    pub ip: Option<IpAddr>,
    pub state: RouteState,
    pub access_token: Option<TokenDigest>,
    pub traffic_token: Option<TokenDigest>,
    pub require_access_token: bool,
    pub require_traffic_token: bool,
}

impl RouteParts<'_> {
    pub fn build(self) -> Result<(String, Route), RouteError> {
        for (field, v) in [
            ("id", self.id),
            ("namespace", self.namespace),
            ("name", self.name),
            ("uid", self.uid),
        ] {
            if v.is_empty() {
                return Err(RouteError::Empty { field });
            }
        }
        if !valid_sandbox_id(self.id) {
            return Err(RouteError::InvalidId(self.id.to_string()));
        }
        if self.resource_version == 0 {
            return Err(RouteError::InvalidResourceVersion("0".into()));
        }
        if self.state == RouteState::Running && self.ip.is_none() {
            return Err(RouteError::RunningWithoutIp);
        }
        let mut flags = RouteFlags::empty();
        if self.require_access_token {
            if self.access_token.is_none() {
                return Err(RouteError::AccessTokenMissing);
            }
            flags.insert(RouteFlags::REQUIRE_ACCESS_TOKEN);
        }
        if self.require_traffic_token {
            if self.traffic_token.is_none() {
                return Err(RouteError::TrafficTokenMissing);
            }
            flags.insert(RouteFlags::REQUIRE_TRAFFIC_TOKEN);
        }
        Ok((
            self.id.to_string(),
            Route {
                sandbox: SandboxRef::new(self.namespace, self.name, self.uid),
                resource_version: self.resource_version,
                ip: self.ip,
                state: self.state,
                flags,
                access_token: self.access_token,
                traffic_token: self.traffic_token.map(Box::new),
            },
        ))
    }
}

fn parse_ip(ip: Option<&str>) -> Result<Option<IpAddr>, RouteError> {
    match ip {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse::<IpAddr>()
            .map(Some)
            .map_err(|_| RouteError::InvalidIp(s.to_string())),
    }
}

impl RouteSpec {
    /// Validates and converts into the table form, returning the id alongside.
    pub fn into_route(self) -> Result<(String, Route), RouteError> {
        let digest = |v: Option<&str>, field| -> Result<Option<TokenDigest>, RouteError> {
            match v {
                None | Some("") => Ok(None),
                Some(s) => TokenDigest::from_hex(s)
                    .map(Some)
                    .ok_or(RouteError::InvalidDigest { field }),
            }
        };
        RouteParts {
            id: &self.id,
            namespace: &self.namespace,
            name: &self.name,
            uid: &self.uid,
            resource_version: parse_resource_version(&self.resource_version)?,
            ip: parse_ip(self.ip.as_deref())?,
            state: self.state,
            access_token: digest(self.access_token_sha256.as_deref(), "accessTokenSha256")?,
            traffic_token: digest(self.traffic_token_sha256.as_deref(), "trafficTokenSha256")?,
            require_access_token: self.require_access_token,
            require_traffic_token: self.require_traffic_token,
        }
        .build()
    }
}

/// Converts a `SandboxRoute` received from sandbox-xds.
pub fn from_wire(r: &sandbox_xds_wire::v1::SandboxRoute) -> Result<(String, Route), RouteError> {
    use sandbox_xds_wire::v1::sandbox_route::State;
    let state = match r.state() {
        State::Creating => RouteState::Creating,
        State::Available => RouteState::Available,
        State::Running => RouteState::Running,
        State::Paused => RouteState::Paused,
        State::Dead => RouteState::Dead,
        State::Unspecified => return Err(RouteError::UnknownState(r.state)),
    };
    let digest = |b: &[u8], field| -> Result<Option<TokenDigest>, RouteError> {
        match b.len() {
            0 => Ok(None),
            32 => Ok(Some(TokenDigest(
                b.try_into()
                    .map_err(|_| RouteError::InvalidDigest { field })?,
            ))),
            _ => Err(RouteError::InvalidDigest { field }),
        }
    };
    RouteParts {
        id: &r.id,
        namespace: &r.namespace,
        name: &r.name,
        uid: &r.uid,
        resource_version: r.resource_version,
        ip: parse_ip(Some(&r.ip))?,
        state,
        access_token: digest(&r.access_token_sha256, "access_token_sha256")?,
        traffic_token: digest(&r.traffic_token_sha256, "traffic_token_sha256")?,
        require_access_token: r.require_access_token,
        require_traffic_token: r.require_traffic_token,
    }
    .build()
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
        assert_eq!(s.into_route().unwrap_err(), RouteError::RunningWithoutIp);
        let mut s = spec();
        s.state = RouteState::Creating;
        s.ip = None;
        assert!(s.into_route().is_ok());
        let mut s = spec();
        s.ip = Some("10.0.0".into());
        assert!(matches!(s.into_route(), Err(RouteError::InvalidIp(_))));
        let mut s = spec();
        s.id = "bad/id".into();
        assert!(matches!(s.into_route(), Err(RouteError::InvalidId(_))));
        let mut s = spec();
        s.uid = String::new();
        assert_eq!(
            s.into_route().unwrap_err(),
            RouteError::Empty { field: "uid" }
        );
        let mut s = spec();
        s.require_access_token = true;
        assert_eq!(s.into_route().unwrap_err(), RouteError::AccessTokenMissing);
        let mut s = spec();
        s.access_token_sha256 = Some("abc".into());
        assert!(matches!(
            s.into_route(),
            Err(RouteError::InvalidDigest { .. })
        ));
    }

    #[test]
    fn wire_routes_convert_with_the_same_checks() {
        use sandbox_xds_wire::v1::{SandboxRoute, sandbox_route::State};
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
            Err(RouteError::InvalidDigest { .. })
        ));
        w.access_token_sha256.clear();
        assert_eq!(from_wire(&w).unwrap_err(), RouteError::AccessTokenMissing);
        w.require_access_token = false;
        w.state = 0;
        assert_eq!(from_wire(&w).unwrap_err(), RouteError::UnknownState(0));
        w.state = State::Running as i32;
        w.ip.clear();
        assert_eq!(from_wire(&w).unwrap_err(), RouteError::RunningWithoutIp);
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
