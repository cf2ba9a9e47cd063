//! Pod IP addresses from a loopback range. Linux routes all of 127.0.0.0/8 to `lo`, so every
//! address in it can be bound without configuration.
//!
//! Allocation state is per process and per range, shared by every simulator in the process that
//! uses the same range, so two simulators in one test binary never hand out the same address.
//! Across processes, the default range is a /16 chosen at random per process, and an address whose
//! port is already bound by someone else is skipped.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, TcpListener};
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

/// An IPv4 range `a.b.c.d/prefix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpRange {
    base: u32,
    prefix: u8,
}

impl IpRange {
    pub fn new(base: Ipv4Addr, prefix: u8) -> Result<Self, String> {
        if !(8..=30).contains(&prefix) {
            return Err(format!("prefix /{prefix} out of range (8..=30)"));
        }
        let mask = u32::MAX << (32 - prefix);
        let base = u32::from(base) & mask;
        if Ipv4Addr::from(base).octets()[0] != 127 {
            return Err(format!(
                "{} is not a loopback range (127.0.0.0/8)",
                Ipv4Addr::from(base)
            ));
        }
        Ok(IpRange { base, prefix })
    }

    /// The default for this process: 127.X.0.0/16 with X in 128..=254, chosen once at random.
    pub fn process_default() -> Self {
        static X: OnceLock<u8> = OnceLock::new();
        let x = *X.get_or_init(|| rand::random_range(128..=254));
        IpRange::new(Ipv4Addr::new(127, x, 0, 0), 16).expect("valid default range")
    }

    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        ip >= self.base && ip - self.base < self.size()
    }
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected a.b.c.d/prefix"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|e| format!("{s:?}: bad prefix: {e}"))?;
        IpRange::new(ip, prefix)
    }
}

impl std::fmt::Display for IpRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

#[derive(Default)]
struct PoolState {
    next: u32,
    in_use: HashSet<u32>,
}

fn pools() -> &'static Mutex<HashMap<IpRange, PoolState>> {
    static POOLS: OnceLock<Mutex<HashMap<IpRange, PoolState>>> = OnceLock::new();
    POOLS.get_or_init(Default::default)
}

/// Whether `ip:port` can be bound right now (nobody else uses it).
fn port_free(ip: Ipv4Addr, port: u16) -> bool {
    TcpListener::bind((ip, port)).is_ok()
}

/// Takes a free address of `range` (skipping .0 and .255 host bytes and addresses whose `port`
/// is taken), or `None` when the range is exhausted.
pub fn allocate(range: IpRange, port: u16) -> Option<Ipv4Addr> {
    let mut pools = pools().lock().unwrap_or_else(|e| e.into_inner());
    let pool = pools.entry(range).or_default();
    let size = range.size();
    for _ in 0..size {
        let offset = pool.next % size;
        pool.next = pool.next.wrapping_add(1);
        let ip = Ipv4Addr::from(range.base + offset);
        let last = ip.octets()[3];
        if last == 0 || last == 255 || pool.in_use.contains(&offset) {
            continue;
        }
        if !port_free(ip, port) {
            continue;
        }
        pool.in_use.insert(offset);
        return Some(ip);
    }
    None
}

/// Takes a specific address (a pod that already has one, e.g. after a simulator restart).
/// Returns false if it is outside the range or taken in this process.
pub fn claim(range: IpRange, ip: Ipv4Addr) -> bool {
    if !range.contains(ip) {
        return false;
    }
    let mut pools = pools().lock().unwrap_or_else(|e| e.into_inner());
    pools
        .entry(range)
        .or_default()
        .in_use
        .insert(u32::from(ip) - range.base)
}

/// Gives an address back.
pub fn release(range: IpRange, ip: Ipv4Addr) {
    if range.contains(ip) {
        let mut pools = pools().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pool) = pools.get_mut(&range) {
            pool.in_use.remove(&(u32::from(ip) - range.base));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_ranges() {
        let r: IpRange = "127.1.2.3/16".parse().unwrap();
        assert_eq!(r.to_string(), "127.1.0.0/16");
        assert!(r.contains(Ipv4Addr::new(127, 1, 255, 1)));
        assert!(!r.contains(Ipv4Addr::new(127, 2, 0, 1)));
        assert!("10.0.0.0/16".parse::<IpRange>().is_err());
        assert!("127.0.0.0/31".parse::<IpRange>().is_err());
        assert!("127.0.0.0".parse::<IpRange>().is_err());
    }

    #[test]
    fn allocates_distinct_addresses_and_reuses_released_ones() {
        let r: IpRange = "127.77.9.0/30".parse().unwrap();
        // .0 is skipped; /30 leaves .1 .2 .3.
        let a = allocate(r, 1).unwrap();
        let b = allocate(r, 1).unwrap();
        let c = allocate(r, 1).unwrap();
        let mut all = [a, b, c];
        all.sort();
        assert_eq!(
            all,
            [
                Ipv4Addr::new(127, 77, 9, 1),
                Ipv4Addr::new(127, 77, 9, 2),
                Ipv4Addr::new(127, 77, 9, 3)
            ]
        );
        assert_eq!(allocate(r, 1), None);
        release(r, b);
        assert_eq!(allocate(r, 1), Some(b));
        assert!(!claim(r, b), "taken");
        release(r, a);
        assert!(claim(r, a));
    }

    #[test]
    fn skips_addresses_whose_port_is_taken() {
        let r: IpRange = "127.77.10.0/30".parse().unwrap();
        let busy = TcpListener::bind((Ipv4Addr::new(127, 77, 10, 1), 0)).unwrap();
        let port = busy.local_addr().unwrap().port();
        assert_eq!(allocate(r, port), Some(Ipv4Addr::new(127, 77, 10, 2)));
    }
}
