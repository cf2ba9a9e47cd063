//! The one definition of a valid [`SandboxRoute`]. sandbox-xds refuses a route that breaks these
//! rules before it publishes it, and the gateway module refuses (NACKs) the same routes, so the
//! store never accepts a route every gateway would reject.

use std::net::IpAddr;

use crate::v1::SandboxRoute;
use crate::v1::sandbox_route::State;

/// Longest sandbox id a route may carry.
pub const MAX_SANDBOX_ID_LEN: usize = 512;

/// Why a route is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRoute {
    #[error("route {field} is empty")]
    Empty { field: &'static str },
    #[error("sandbox id {0:?} has characters outside [A-Za-z0-9._-] or is longer than 512 bytes")]
    InvalidId(String),
    #[error("resourceVersion must be a positive integer")]
    ZeroResourceVersion,
    #[error("state {0} is not a known sandbox state")]
    UnknownState(i32),
    #[error("ip {0:?} is not an IPv4 or IPv6 address")]
    InvalidIp(String),
    #[error("state is running but the route has no ip")]
    RunningWithoutIp,
    #[error("{field} is not a SHA-256 digest (32 bytes)")]
    InvalidDigest { field: &'static str },
    #[error("requireAccessToken is set but no accessTokenSha256 is given")]
    AccessTokenMissing,
    #[error("requireTrafficToken is set but no trafficTokenSha256 is given")]
    TrafficTokenMissing,
}

/// The parsed fields of a route that passed [`validate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckedRoute {
    /// `None` while the sandbox has no address (never for [`State::Running`]).
    pub ip: Option<IpAddr>,
    /// Never [`State::Unspecified`].
    pub state: State,
    pub access_token_sha256: Option<[u8; 32]>,
    pub traffic_token_sha256: Option<[u8; 32]>,
}

/// A sandbox id is opaque but must be safe in a host label, a path segment, a header and JSON.
pub fn valid_sandbox_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_SANDBOX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn digest(bytes: &[u8], field: &'static str) -> Result<Option<[u8; 32]>, InvalidRoute> {
    match bytes.len() {
        0 => Ok(None),
        _ => bytes
            .try_into()
            .map(Some)
            .map_err(|_| InvalidRoute::InvalidDigest { field }),
    }
}

fn identity(r: &SandboxRoute) -> Result<(), InvalidRoute> {
    for (field, v) in [
        ("id", &r.id),
        ("namespace", &r.namespace),
        ("name", &r.name),
        ("uid", &r.uid),
    ] {
        if v.is_empty() {
            return Err(InvalidRoute::Empty { field });
        }
    }
    if !valid_sandbox_id(&r.id) {
        return Err(InvalidRoute::InvalidId(r.id.clone()));
    }
    if r.resource_version == 0 {
        return Err(InvalidRoute::ZeroResourceVersion);
    }
    Ok(())
}

/// Checks every rule a route must keep, returning its parsed fields.
pub fn validate(r: &SandboxRoute) -> Result<CheckedRoute, InvalidRoute> {
    identity(r)?;
    let state = match State::try_from(r.state) {
        Ok(State::Unspecified) | Err(_) => return Err(InvalidRoute::UnknownState(r.state)),
        Ok(s) => s,
    };
    let ip = match r.ip.as_str() {
        "" => None,
        s => Some(
            s.parse::<IpAddr>()
                .map_err(|_| InvalidRoute::InvalidIp(s.to_string()))?,
        ),
    };
    if state == State::Running && ip.is_none() {
        return Err(InvalidRoute::RunningWithoutIp);
    }
    let access = digest(&r.access_token_sha256, "access_token_sha256")?;
    let traffic = digest(&r.traffic_token_sha256, "traffic_token_sha256")?;
    if r.require_access_token && access.is_none() {
        return Err(InvalidRoute::AccessTokenMissing);
    }
    if r.require_traffic_token && traffic.is_none() {
        return Err(InvalidRoute::TrafficTokenMissing);
    }
    Ok(CheckedRoute {
        ip,
        state,
        access_token_sha256: access,
        traffic_token_sha256: traffic,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> SandboxRoute {
        SandboxRoute {
            id: "sbx-1".into(),
            namespace: "default".into(),
            name: "sbx-1".into(),
            uid: "u-1".into(),
            resource_version: 42,
            ip: "10.0.0.7".into(),
            state: State::Running as i32,
            ..Default::default()
        }
    }

    fn with(f: impl FnOnce(&mut SandboxRoute)) -> Result<CheckedRoute, InvalidRoute> {
        let mut r = route();
        f(&mut r);
        validate(&r)
    }

    #[test]
    fn a_complete_route_is_valid_and_parsed() {
        let c = with(|r| {
            r.ip = "2001:db8::7".into();
            r.access_token_sha256 = vec![7; 32];
            r.require_access_token = true;
        })
        .unwrap();
        assert_eq!(c.ip, Some("2001:db8::7".parse().unwrap()));
        assert_eq!(c.state, State::Running);
        assert_eq!(c.access_token_sha256, Some([7; 32]));
        assert_eq!(c.traffic_token_sha256, None);
    }

    #[test]
    fn identity_fields_are_required() {
        for (field, clear) in [
            ("id", (|r| r.id.clear()) as fn(&mut SandboxRoute)),
            ("namespace", |r| r.namespace.clear()),
            ("name", |r| r.name.clear()),
            ("uid", |r| r.uid.clear()),
        ] {
            assert_eq!(with(clear), Err(InvalidRoute::Empty { field }));
        }
        assert_eq!(
            with(|r| r.resource_version = 0),
            Err(InvalidRoute::ZeroResourceVersion)
        );
    }

    #[test]
    fn ids_are_limited_to_a_safe_alphabet_and_length() {
        for bad in ["bad/id", "a b", "ü", "a:b", &"x".repeat(513)] {
            assert!(
                matches!(with(|r| r.id = bad.into()), Err(InvalidRoute::InvalidId(_))),
                "{bad:?} accepted"
            );
        }
        for good in ["ns--name", "aae57hpxaaqac", "A.b_c-9", &"x".repeat(512)] {
            assert!(with(|r| r.id = good.into()).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn state_must_be_known_and_running_needs_an_ip() {
        assert_eq!(with(|r| r.state = 0), Err(InvalidRoute::UnknownState(0)));
        assert_eq!(with(|r| r.state = 99), Err(InvalidRoute::UnknownState(99)));
        assert_eq!(with(|r| r.ip.clear()), Err(InvalidRoute::RunningWithoutIp));
        let creating = with(|r| {
            r.ip.clear();
            r.state = State::Creating as i32;
        })
        .unwrap();
        assert_eq!(creating.ip, None);
        assert_eq!(
            with(|r| r.ip = "10.0.0".into()),
            Err(InvalidRoute::InvalidIp("10.0.0".into()))
        );
    }

    #[test]
    fn digests_are_32_bytes_and_required_when_enforced() {
        assert_eq!(
            with(|r| r.access_token_sha256 = vec![1; 5]),
            Err(InvalidRoute::InvalidDigest {
                field: "access_token_sha256"
            })
        );
        assert_eq!(
            with(|r| r.traffic_token_sha256 = vec![1; 33]),
            Err(InvalidRoute::InvalidDigest {
                field: "traffic_token_sha256"
            })
        );
        assert_eq!(
            with(|r| r.require_access_token = true),
            Err(InvalidRoute::AccessTokenMissing)
        );
        assert_eq!(
            with(|r| r.require_traffic_token = true),
            Err(InvalidRoute::TrafficTokenMissing)
        );
        assert!(
            with(|r| {
                r.traffic_token_sha256 = vec![2; 32];
                r.require_traffic_token = true;
            })
            .is_ok()
        );
    }
}
