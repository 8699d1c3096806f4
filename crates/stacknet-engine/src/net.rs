//! IP prefixes (`ipBlock.cidr`, `except`), with no dependency beyond std.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

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

    #[test]
    fn bad_prefixes_are_explained() {
        assert!("10.0.0.0".parse::<Cidr>().unwrap_err().0.contains("not a CIDR"));
        assert!("10.0.0/8".parse::<Cidr>().unwrap_err().0.contains("not an IP address"));
        assert!("10.0.0.0/33".parse::<Cidr>().unwrap_err().0.contains("prefix length"));
        assert!("::/129".parse::<Cidr>().is_err());
        assert!("10.0.0.0/x".parse::<Cidr>().is_err());
    }
}
