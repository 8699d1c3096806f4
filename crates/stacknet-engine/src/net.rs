//! IP prefixes (`ipBlock.cidr`, `except`), the MAC an address gives a port, and the one hash
//! stable identities are made of; no dependency beyond std.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// FNV-1a 64 over `bytes`: stable across builds and platforms, so names derived from it
/// survive restarts and upgrades.
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The MAC a port gets from its (first) address: `0a:58` and the last four bytes of the
/// address, as ovn-kubernetes derives them.
pub fn mac_for(ip: IpAddr) -> String {
    let b = match ip {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => {
            let o = a.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    format!("0a:58:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
}

/// An IPv4 or IPv6 prefix, stored in canonical form (host bits cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// A prefix from an address and a length; host bits are cleared.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let max = max_prefix(addr);
        (prefix <= max).then(|| Cidr { network: mask(addr, prefix), prefix })
    }

    /// The prefix holding exactly one address.
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr { network: addr, prefix: max_prefix(addr) }
    }

    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    pub fn is_ipv4(&self) -> bool {
        self.network.is_ipv4()
    }

    /// Addresses of the other family are never contained.
    pub fn contains(&self, addr: IpAddr) -> bool {
        addr.is_ipv4() == self.network.is_ipv4() && mask(addr, self.prefix) == self.network
    }

    /// Whether `other` lies entirely within this prefix.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.network)
    }

    /// The addresses of this prefix in order, without the network address (unless the prefix
    /// is a /31, /32, /127 or /128) and, for IPv4, the broadcast address (likewise); at most the
    /// first 2^20.
    pub fn hosts(&self) -> impl Iterator<Item = IpAddr> + use<> {
        let bits = u32::from(max_prefix(self.network) - self.prefix);
        let size: u128 = 1u128 << bits.min(20);
        let edges = bits >= 2;
        let (first, end) = match (edges, self.is_ipv4() && bits <= 20) {
            (true, true) => (1, size - 1),
            (true, false) => (1, size),
            (false, _) => (0, size),
        };
        let network = self.network;
        (first..end).filter_map(move |i| match network {
            IpAddr::V4(a) => u32::try_from(u128::from(u32::from(a)) + i).ok().map(|v| IpAddr::V4(v.into())),
            IpAddr::V6(a) => u128::from(a).checked_add(i).map(|v| IpAddr::V6(v.into())),
        })
    }

    /// The two halves of this prefix (none for a single address).
    pub fn halves(&self) -> Option<(Cidr, Cidr)> {
        if self.prefix == max_prefix(self.network) {
            return None;
        }
        let low = Cidr { network: self.network, prefix: self.prefix + 1 };
        let bit = max_prefix(self.network) - self.prefix - 1;
        let high = match self.network {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) | (1u32 << bit)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) | (1u128 << bit)).into()),
        };
        Some((low, Cidr { network: high, prefix: self.prefix + 1 }))
    }

    /// This prefix without the addresses of `except`: the fewest prefixes covering exactly
    /// the rest, in address order (for dataplanes whose rules cannot say "except", such as
    /// Neutron security group rules). Excepts of the other family are ignored.
    pub fn minus(&self, except: &[Cidr]) -> Vec<Cidr> {
        let mut out = Vec::new();
        self.minus_into(except, &mut out);
        out
    }

    fn minus_into(&self, except: &[Cidr], out: &mut Vec<Cidr>) {
        if except.iter().any(|e| e.covers(self)) {
            return;
        }
        let inside: Vec<Cidr> = except.iter().filter(|e| self.covers(e)).copied().collect();
        match self.halves() {
            Some((low, high)) if !inside.is_empty() => {
                low.minus_into(&inside, out);
                high.minus_into(&inside, out);
            }
            _ => out.push(*self),
        }
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
            IpAddr::V6((bits & m).into())
        }
    }
}

/// Why a string is not a prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CidrError(pub String);

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses `a.b.c.d/n` or `x::y/n`. Host bits may be set (the API server has always accepted
/// them); they are cleared, as every implementation does.
impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| CidrError(format!("{s:?} is not a CIDR (expected address/prefix-length)")))?;
        let addr: IpAddr = addr.parse().map_err(|_| CidrError(format!("{addr:?} is not an IP address")))?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= max_prefix(addr))
            .ok_or_else(|| CidrError(format!("prefix length {len:?} is not 0..={}", max_prefix(addr))))?;
        Ok(Cidr { network: mask(addr, len), prefix: len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_leave_out_the_network_and_broadcast_addresses_of_real_subnets() {
        let list = |c: &str| c.parse::<Cidr>().unwrap().hosts().map(|a| a.to_string()).collect::<Vec<_>>();
        assert_eq!(list("10.0.0.0/30"), ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(list("10.0.0.0/31"), ["10.0.0.0", "10.0.0.1"]);
        assert_eq!(list("10.0.0.7/32"), ["10.0.0.7"]);
        assert_eq!(list("fd00::/126"), ["fd00::1", "fd00::2", "fd00::3"]);
        let big: Cidr = "10.0.0.0/8".parse().unwrap();
        assert_eq!(big.hosts().count(), (1 << 20) - 1, "capped (the network address left out)");
        assert_eq!(big.hosts().next().unwrap().to_string(), "10.0.0.1");
    }

    #[test]
    fn parse_contains_and_covers() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains("10.255.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("::a01:203".parse().unwrap()));
        assert!(c.covers(&"10.1.0.0/16".parse().unwrap()));
        assert!(!c.covers(&"0.0.0.0/0".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let v6: Cidr = "fd00::1/64".parse().unwrap();
        assert_eq!(v6.to_string(), "fd00::/64");
        assert!(v6.contains("fd00::ffff".parse().unwrap()));
        assert!(Cidr::host("10.0.0.1".parse().unwrap()).contains("10.0.0.1".parse().unwrap()));
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn minus_leaves_exactly_the_rest() {
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert_eq!(all.minus(&[]), cidrs(&["0.0.0.0/0"]));
        assert_eq!(all.minus(&cidrs(&["0.0.0.0/0"])), vec![]);
        assert_eq!(all.minus(&cidrs(&["128.0.0.0/1"])), cidrs(&["0.0.0.0/1"]));
        let ten: Cidr = "10.0.0.0/8".parse().unwrap();
        assert_eq!(
            ten.minus(&cidrs(&["10.0.0.0/9", "10.192.0.0/10"])),
            cidrs(&["10.128.0.0/10"]),
            "two excepts: what neither covers"
        );
        // An except outside the block, or of the other family, changes nothing.
        assert_eq!(ten.minus(&cidrs(&["11.0.0.0/8", "fd00::/8"])), vec![ten]);
        // The kuryr-kubernetes case: several excepts, none of them may come back.
        let rest = all.minus(&cidrs(&["10.0.0.0/8", "172.16.0.0/12", "192.168.7.0/24"]));
        for probe in ["10.1.2.3", "172.20.0.1", "192.168.7.9"] {
            let ip = probe.parse().unwrap();
            assert!(!rest.iter().any(|c| c.contains(ip)), "{probe} is excepted but {rest:?} holds it");
        }
        for probe in ["9.255.255.255", "11.0.0.0", "172.32.0.0", "192.168.6.255", "192.168.8.0", "8.8.8.8"] {
            let ip = probe.parse().unwrap();
            assert_eq!(rest.iter().filter(|c| c.contains(ip)).count(), 1, "{probe} in exactly one of {rest:?}");
        }
    }

    proptest::proptest! {
        /// An address is in `block.minus(excepts)` iff it is in the block and in no except,
        /// and then in exactly one of the prefixes.
        #[test]
        fn minus_is_exact(
            block in (proptest::num::u32::ANY, 0u8..=32),
            excepts in proptest::collection::vec((proptest::num::u32::ANY, 0u8..=32), 0..5),
            probes in proptest::collection::vec(proptest::num::u32::ANY, 32),
        ) {
            let c = |(a, l): (u32, u8)| Cidr::new(IpAddr::V4(a.into()), l).unwrap();
            let block = c(block);
            // Excepts near the block, as a policy would have them.
            let excepts: Vec<Cidr> = excepts.into_iter().map(|(a, l)| {
                let mixed = u32::from_be_bytes(match block.network() { IpAddr::V4(n) => n.octets(), _ => unreachable!() })
                    | (a >> block.prefix_len().min(31));
                c((mixed, l.max(block.prefix_len())))
            }).collect();
            let rest = block.minus(&excepts);
            let inner = |cidr: &Cidr| match cidr.network() { IpAddr::V4(n) => u32::from(n), _ => unreachable!() };
            let mut samples: Vec<u32> = probes;
            samples.extend(excepts.iter().map(inner));
            samples.extend(rest.iter().map(inner));
            for a in samples {
                let ip = IpAddr::V4(a.into());
                let want = block.contains(ip) && !excepts.iter().any(|e| e.contains(ip));
                let hits = rest.iter().filter(|r| r.contains(ip)).count();
                proptest::prop_assert_eq!(hits, usize::from(want), "{} in {:?}", ip, rest);
            }
        }
    }

    #[test]
    fn bad_prefixes_are_explained() {
        assert!("10.0.0.0".parse::<Cidr>().unwrap_err().0.contains("not a CIDR"));
        assert!("10.0.0/8".parse::<Cidr>().unwrap_err().0.contains("not an IP address"));
        assert!("10.0.0.0/33".parse::<Cidr>().unwrap_err().0.contains("prefix length"));
        assert!("::/129".parse::<Cidr>().is_err());
        assert!("10.0.0.0/x".parse::<Cidr>().is_err());
    }
}
