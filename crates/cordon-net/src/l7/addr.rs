//! Which upstream addresses the gateway may dial.
//!
//! A name the policy allows can still resolve to the host's own loopback, a
//! private network, or the cloud metadata service (DNS rebinding, or simply a
//! hostile record). Every address a name resolves to is checked here before
//! the gateway dials it; private, loopback, link-local, shared (CGNAT),
//! multicast and reserved ranges, and Azure's WireServer address, are refused
//! unless an `allow_private` range covers them. IPv6 forms that embed an IPv4
//! address (mapped, NAT64, 6to4) are judged by the embedded address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address range from `[network] allow_private`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `fd00::/8` or a single address. `None` when the
    /// text is not a range (the policy parser has already rejected those).
    pub(crate) fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network = canonical(addr.trim().parse::<IpAddr>().ok()?);
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= bits)?,
        };
        Some(Cidr { network, prefix })
    }

    /// True when `ip` lies inside this range. IPv4-mapped IPv6 addresses are
    /// compared as the IPv4 address they carry.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(
                u128::from(u32::from(net)),
                u128::from(u32::from(ip)),
                32,
                self.prefix,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, bits: u8, prefix: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = u32::from(bits - prefix);
    (a >> shift) == (b >> shift)
}

/// The address an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) stands for;
/// every other address unchanged.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Why `ip` is not a public unicast address, or `None` when it is.
pub(crate) fn non_public_reason(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u8) -> bool {
    prefix_eq(
        u128::from(u32::from(Ipv4Addr::from(net))),
        u128::from(u32::from(ip)),
        32,
        prefix,
    )
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    const RANGES: &[([u8; 4], u8, &str)] = &[
        ([0, 0, 0, 0], 8, "this-network"),
        ([10, 0, 0, 0], 8, "private"),
        ([100, 64, 0, 0], 10, "shared (CGNAT)"),
        ([127, 0, 0, 0], 8, "loopback"),
        ([169, 254, 0, 0], 16, "link-local (cloud metadata)"),
        ([172, 16, 0, 0], 12, "private"),
        ([192, 0, 0, 0], 24, "reserved"),
        ([192, 0, 2, 0], 24, "documentation"),
        ([192, 88, 99, 0], 24, "reserved"),
        ([192, 168, 0, 0], 16, "private"),
        // Public on paper, but inside Azure it is the platform's WireServer
        // (certificates, extension settings), reachable from every VM.
        ([168, 63, 129, 16], 32, "cloud metadata (Azure WireServer)"),
        ([198, 18, 0, 0], 15, "benchmarking"),
        ([198, 51, 100, 0], 24, "documentation"),
        ([203, 0, 113, 0], 24, "documentation"),
        ([224, 0, 0, 0], 4, "multicast"),
        ([240, 0, 0, 0], 4, "reserved (incl. broadcast)"),
    ];
    RANGES
        .iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map(|(_, _, why)| *why)
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let v = u128::from(ip);
    let in_v6 = |net: u128, prefix: u8| prefix_eq(net, v, 128, prefix);
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) carry an IPv4 address that a
    // translator on the path would reach: judge that address.
    if in_v6(0x0064_ff9b_0000_0000_0000_0000_0000_0000, 96) {
        return v4_reason(Ipv4Addr::from(v as u32));
    }
    if in_v6(0x2002_0000_0000_0000_0000_0000_0000_0000, 16) {
        return v4_reason(Ipv4Addr::from((v >> 80) as u32));
    }
    const RANGES: &[(u128, u8, &str)] = &[
        (0, 96, "IPv4-compatible (deprecated)"),
        (
            0x0000_0000_0000_0000_ffff_0000_0000_0000,
            96,
            "IPv4-translated",
        ),
        (
            0x0064_ff9b_0001_0000_0000_0000_0000_0000,
            48,
            "local-use NAT64",
        ),
        (0x0100_0000_0000_0000_0000_0000_0000_0000, 64, "discard"),
        (0x2001_0000_0000_0000_0000_0000_0000_0000, 32, "Teredo"),
        (
            0x2001_0db8_0000_0000_0000_0000_0000_0000,
            32,
            "documentation",
        ),
        (
            0xfc00_0000_0000_0000_0000_0000_0000_0000,
            7,
            "unique local (private)",
        ),
        (0xfe80_0000_0000_0000_0000_0000_0000_0000, 10, "link-local"),
        (
            0xfec0_0000_0000_0000_0000_0000_0000_0000,
            10,
            "site-local (deprecated)",
        ),
        (0xff00_0000_0000_0000_0000_0000_0000_0000, 8, "multicast"),
    ];
    RANGES
        .iter()
        .find(|(net, prefix, _)| in_v6(*net, *prefix))
        .map(|(_, _, why)| *why)
}

/// Whether the gateway may dial `ip`: public unicast, or inside one of the
/// `allow_private` ranges. `Err` carries the reason for the refusal.
pub(crate) fn check(ip: IpAddr, allow_private: &[Cidr]) -> Result<(), &'static str> {
    match non_public_reason(ip) {
        None => Ok(()),
        Some(_) if allow_private.iter().any(|c| c.contains(ip)) => Ok(()),
        Some(why) => Err(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refuses_every_non_public_range() {
        for bad in [
            "127.0.0.1",
            "127.255.0.3",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "198.18.0.1",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:0001::1",
            "fd00::1",
            "fc12::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::127.0.0.1",
            "168.63.129.16",
            "::ffff:0:a9fe:a9fe",
            "64:ff9b:1::a9fe:a9fe",
        ] {
            assert!(check(ip(bad), &[]).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn accepts_public_addresses() {
        for good in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "172.15.255.255",
            "100.128.0.1",
            "100.63.255.255",
            "169.253.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:0808:0808::1",
        ] {
            assert_eq!(check(ip(good), &[]), Ok(()), "{good} should be allowed");
        }
    }

    #[test]
    fn allow_private_opens_exactly_its_range() {
        let allow = [
            Cidr::parse("127.0.0.0/8").unwrap(),
            Cidr::parse("10.1.0.0/16").unwrap(),
            Cidr::parse("fd00::1").unwrap(),
        ];
        assert_eq!(check(ip("127.0.0.1"), &allow), Ok(()));
        assert_eq!(check(ip("::ffff:127.0.0.1"), &allow), Ok(()));
        assert_eq!(check(ip("10.1.200.3"), &allow), Ok(()));
        assert!(check(ip("10.2.0.1"), &allow).is_err());
        assert_eq!(check(ip("fd00::1"), &allow), Ok(()));
        assert!(check(ip("fd00::2"), &allow).is_err());
        assert_eq!(
            check(ip("169.254.169.254"), &allow),
            Err("link-local (cloud metadata)")
        );
        assert!(
            check(ip("::1"), &allow).is_err(),
            "v4 range must not open v6 loopback"
        );
    }

    #[test]
    fn cidr_parsing() {
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("10.0.0.1")));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nope").is_none());
        assert!(!Cidr::parse("10.0.0.0/8").unwrap().contains(ip("fd00::1")));
    }
}
