//! Upstream addresses the gateway never connects to, whatever a route says.
//!
//! The ORIGINAL_DST cluster connects to any `ip:port` the module names, so a route whose pod IP
//! is an address the platform itself listens on (Envoy's admin on 127.0.0.1, a control-plane
//! service) would turn a sandbox port into a way in. The filter config's `denied_upstream_ips`
//! lists such prefixes; the unspecified addresses are refused always, because connecting to
//! them reaches the local host's listeners.

use std::net::IpAddr;

use sandbox_xds_wire::net::IpPrefix;

/// The denied prefixes of one filter config. Checked on every forwarded request: a linear scan
/// of a handful of prefixes, without allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeniedUpstreams {
    prefixes: Box<[IpPrefix]>,
}

/// `0.0.0.0/8` ("this host on this network", RFC 1122) and `::`, in either IPv6 spelling.
/// Linux connects a socket aimed at them to a local listener.
pub fn is_unspecified(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 0,
        IpAddr::V6(v6) => {
            v6.is_unspecified() || v6.to_ipv4_mapped().is_some_and(|v4| v4.octets()[0] == 0)
        }
    }
}

impl DeniedUpstreams {
    pub fn new(prefixes: Vec<IpPrefix>) -> Self {
        DeniedUpstreams {
            prefixes: prefixes.into_boxed_slice(),
        }
    }

    /// Whether the gateway must refuse to connect to `ip`.
    pub fn denies(&self, ip: IpAddr) -> bool {
        is_unspecified(ip) || self.prefixes.iter().any(|p| p.contains(ip))
    }

    pub fn prefixes(&self) -> &[IpPrefix] {
        &self.prefixes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn unspecified_addresses_are_always_denied() {
        let none = DeniedUpstreams::default();
        for s in [
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "::ffff:0.0.0.0",
            "::ffff:0.9.9.9",
        ] {
            assert!(none.denies(ip(s)), "{s}");
        }
        for s in ["127.0.0.1", "10.0.0.1", "::1", "1.0.0.0", "::ffff:1.2.3.4"] {
            assert!(!none.denies(ip(s)), "{s}");
        }
    }

    #[test]
    fn listed_prefixes_are_denied_in_both_spellings() {
        let d = DeniedUpstreams::new(
            ["127.0.0.1", "::1", "169.254.0.0/16"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
        );
        for s in [
            "127.0.0.1",
            "::ffff:127.0.0.1",
            "::1",
            "169.254.169.254",
            "::ffff:169.254.1.1",
        ] {
            assert!(d.denies(ip(s)), "{s}");
        }
        // Other loopback addresses (one per sandbox, in the embedded backend) stay reachable.
        for s in ["127.0.1.7", "127.1.0.2", "10.244.0.5", "fd00::5"] {
            assert!(!d.denies(ip(s)), "{s}");
        }
    }
}
