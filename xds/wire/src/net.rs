//! IP prefixes (`10.0.0.0/8`, `127.0.0.1`, `fd00::/8`) as sandbox-xds writes them into the
//! module's `denied_upstream_ips` and as the module matches pod IPs against them: one parser for
//! both sides, so a list the server accepts is a list the module accepts.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 prefix.
///
/// IPv4 prefixes are held in their IPv4-mapped IPv6 form (`::ffff:a.b.c.d/96+n`): connecting to
/// `::ffff:127.0.0.1` reaches 127.0.0.1, so a prefix must match both spellings of an address.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    bits: u128,
    /// Prefix length in the IPv6 space (an IPv4 `/n` is `96 + n`).
    len: u8,
}

/// Why a prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpPrefixError {
    /// Not `<ip>` or `<ip>/<length>`.
    Syntax,
    /// The length exceeds 32 (IPv4) or 128 (IPv6).
    Length,
    /// Bits set after the prefix (`127.0.0.1/8`): ambiguous, probably a typo of `127.0.0.0/8`.
    HostBits,
}

impl fmt::Display for IpPrefixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpPrefixError::Syntax => "not an IP address or <ip>/<prefix length>",
            IpPrefixError::Length => "prefix length over 32 (IPv4) or 128 (IPv6)",
            IpPrefixError::HostBits => "address bits set after the prefix length",
        })
    }
}

impl std::error::Error for IpPrefixError {}

fn v6_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn mask(len: u8) -> u128 {
    match len {
        0 => 0,
        n => u128::MAX << (128 - u32::from(n)),
    }
}

impl IpPrefix {
    /// Whether `ip` lies in this prefix (an IPv4 address and its IPv4-mapped IPv6 form alike).
    /// Allocation-free: one mask and one comparison.
    pub fn contains(&self, ip: IpAddr) -> bool {
        v6_bits(ip) & mask(self.len) == self.bits
    }

    /// True for an IPv4 prefix (or one inside `::ffff:0:0/96`).
    fn is_v4(&self) -> bool {
        self.len >= 96 && self.bits >> 32 == 0xffff
    }
}

impl FromStr for IpPrefix {
    type Err = IpPrefixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let ip: IpAddr = addr.parse().map_err(|_| IpPrefixError::Syntax)?;
        let max: u8 = if ip.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) if !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()) => {
                l.parse::<u8>().map_err(|_| IpPrefixError::Length)?
            }
            Some(_) => return Err(IpPrefixError::Syntax),
        };
        if len > max {
            return Err(IpPrefixError::Length);
        }
        let len = if ip.is_ipv4() { len + 96 } else { len };
        let bits = v6_bits(ip);
        if bits & !mask(len) != 0 {
            return Err(IpPrefixError::HostBits);
        }
        Ok(IpPrefix { bits, len })
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v6 = Ipv6Addr::from(self.bits);
        match v6.to_ipv4_mapped() {
            Some(v4) if self.is_v4() => write!(f, "{v4}/{}", self.len - 96),
            _ => write!(f, "{v6}/{}", self.len),
        }
    }
}

impl fmt::Debug for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> IpPrefix {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_addresses_and_prefixes() {
        for (input, shown) in [
            ("127.0.0.1", "127.0.0.1/32"),
            ("127.0.0.0/8", "127.0.0.0/8"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("::1", "::1/128"),
            ("fe80::/10", "fe80::/10"),
            ("::/0", "::/0"),
            ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ] {
            assert_eq!(p(input).to_string(), shown, "{input}");
        }
        for (input, err) in [
            ("", IpPrefixError::Syntax),
            ("localhost", IpPrefixError::Syntax),
            ("10.0.0.0/", IpPrefixError::Syntax),
            ("10.0.0.0/+8", IpPrefixError::Syntax),
            ("10.0.0.0/8/8", IpPrefixError::Syntax),
            ("10.0.0.0/1000", IpPrefixError::Syntax),
            (" 10.0.0.1", IpPrefixError::Syntax),
            ("10.0.0.0/33", IpPrefixError::Length),
            ("::/129", IpPrefixError::Length),
            ("127.0.0.1/8", IpPrefixError::HostBits),
            ("fe80::1/10", IpPrefixError::HostBits),
        ] {
            assert_eq!(input.parse::<IpPrefix>(), Err(err), "{input:?}");
        }
    }

    #[test]
    fn ipv4_prefixes_match_both_spellings() {
        let lo = p("127.0.0.1");
        assert!(lo.contains(ip("127.0.0.1")));
        assert!(lo.contains(ip("::ffff:127.0.0.1")));
        assert!(!lo.contains(ip("127.0.0.2")));
        assert!(!lo.contains(ip("::1")));
        // The deprecated IPv4-compatible form is a different (IPv6) address.
        assert!(!lo.contains(ip("::127.0.0.1")));
        let net = p("169.254.0.0/16");
        assert!(net.contains(ip("169.254.169.254")));
        assert!(!net.contains(ip("169.255.0.1")));
        assert!(p("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(!p("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(p("::/0").contains(ip("8.8.8.8")), "::/0 is everything");
    }

    #[test]
    fn ipv6_prefixes() {
        let ll = p("fe80::/10");
        assert!(ll.contains(ip("fe80::1")));
        assert!(ll.contains(ip("febf::1")));
        assert!(!ll.contains(ip("fec0::1")));
        assert!(p("::1").contains(ip("::1")));
        assert!(!p("::1").contains(ip("::2")));
    }
}
