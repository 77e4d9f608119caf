//! What may reach smoltcp: each frame from the sandbox is classified here
//! before the TCP/IP stack sees it.
//!
//! smoltcp runs with "any IP" on, so it would accept anything addressed
//! anywhere; this filter is what keeps it to ARP for the gateway, DNS to the
//! gateway and TCP. New TCP connections (SYN without ACK) are singled out so
//! the engine can decide, per destination, whether to put a listener there.

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, IpProtocol,
    Ipv4Packet, TcpPacket, UdpPacket,
};

use super::device::ETHERNET_HEADER;
use super::{DNS_PORT, GATEWAY_IP, GATEWAY_MAC, MTU, SANDBOX_IP};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Give the frame to smoltcp as it is.
    Pass,
    /// A TCP SYN (without ACK) from `src` to `dst`: the engine decides.
    TcpSyn {
        src: SocketAddrV4,
        dst: SocketAddrV4,
    },
    /// Never reaches smoltcp.
    Drop(Dropped),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// Longer than the MTU allows.
    Oversize,
    /// Not parseable, or not addressed to the gateway (other MACs, other ARP
    /// targets, broadcast and multicast IP). Not worth an event.
    Ignored,
    /// Source address is not [`SANDBOX_IP`].
    Spoofed(Ipv4Addr),
    /// An IPv4 fragment: the sandbox's MTU never needs them.
    Fragment(Ipv4Addr),
    /// Not ARP and not IPv4 (IPv6, ...).
    Ethertype(u16),
    /// UDP anywhere but the gateway's DNS port.
    Udp(SocketAddrV4),
    /// Any ICMP (there is no ping through the gateway).
    Icmp(Ipv4Addr),
    /// An IP protocol other than TCP, UDP and ICMP.
    Protocol(u8, Ipv4Addr),
}

impl Dropped {
    /// Whether the sandbox sent this somewhere the policy closes (counted in
    /// [`StackStats::packets_refused`](super::StackStats::packets_refused)),
    /// rather than something not meant for the gateway at all.
    pub(crate) fn refused(&self) -> bool {
        matches!(
            self,
            Dropped::Spoofed(_)
                | Dropped::Fragment(_)
                | Dropped::Udp(_)
                | Dropped::Icmp(_)
                | Dropped::Protocol(..)
        )
    }

    /// The `net.blocked` fields (`proto`, `dst`, `reason`), if this drop is reported.
    pub(crate) fn event(&self) -> Option<(&'static str, String, &'static str)> {
        Some(match *self {
            Dropped::Oversize | Dropped::Ignored => return None,
            Dropped::Spoofed(src) => ("ipv4", src.to_string(), "spoofed-source"),
            Dropped::Fragment(dst) => ("ipv4", dst.to_string(), "fragment"),
            Dropped::Ethertype(t) => ("ethernet", format!("0x{t:04x}"), "not-ipv4"),
            Dropped::Udp(dst) => ("udp", dst.to_string(), "udp-not-dns"),
            Dropped::Icmp(dst) => ("icmp", dst.to_string(), "icmp"),
            Dropped::Protocol(_, dst) => ("ipv4", dst.to_string(), "ip-protocol"),
        })
    }
}

pub(crate) fn classify(frame: &[u8]) -> Verdict {
    use Dropped::*;
    if frame.len() > MTU as usize + ETHERNET_HEADER {
        return Verdict::Drop(Oversize);
    }
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Verdict::Drop(Ignored);
    };
    let to_us = eth.dst_addr() == EthernetAddress(GATEWAY_MAC);
    match eth.ethertype() {
        EthernetProtocol::Arp => {
            if !to_us && !eth.dst_addr().is_broadcast() {
                return Verdict::Drop(Ignored);
            }
            classify_arp(eth.payload())
        }
        EthernetProtocol::Ipv4 if to_us => classify_ipv4(eth.payload()),
        EthernetProtocol::Ipv4 => Verdict::Drop(Ignored),
        other => Verdict::Drop(Ethertype(other.into())),
    }
}

/// Only ARP between the sandbox and the gateway: anything else could teach
/// smoltcp's neighbour cache, or make it claim addresses ("any IP" would
/// answer ARP for every address, the sandbox's own included).
fn classify_arp(payload: &[u8]) -> Verdict {
    let Ok(packet) = ArpPacket::new_checked(payload) else {
        return Verdict::Drop(Dropped::Ignored);
    };
    match ArpRepr::parse(&packet) {
        Ok(ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request | ArpOperation::Reply,
            source_protocol_addr,
            target_protocol_addr,
            ..
        }) if source_protocol_addr == SANDBOX_IP && target_protocol_addr == GATEWAY_IP => {
            Verdict::Pass
        }
        _ => Verdict::Drop(Dropped::Ignored),
    }
}

fn classify_ipv4(payload: &[u8]) -> Verdict {
    use Dropped::*;
    let Ok(ip) = Ipv4Packet::new_checked(payload) else {
        return Verdict::Drop(Ignored);
    };
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if dst.is_broadcast() || dst.is_multicast() || dst.is_unspecified() {
        return Verdict::Drop(Ignored);
    }
    if src != SANDBOX_IP {
        return Verdict::Drop(Spoofed(src));
    }
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Verdict::Drop(Fragment(dst));
    }
    match ip.next_header() {
        IpProtocol::Tcp => {
            let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
                return Verdict::Drop(Ignored);
            };
            if tcp.syn() && !tcp.ack() && !tcp.rst() && !tcp.fin() {
                Verdict::TcpSyn {
                    src: SocketAddrV4::new(src, tcp.src_port()),
                    dst: SocketAddrV4::new(dst, tcp.dst_port()),
                }
            } else {
                Verdict::Pass
            }
        }
        IpProtocol::Udp => {
            let Ok(udp) = UdpPacket::new_checked(ip.payload()) else {
                return Verdict::Drop(Ignored);
            };
            if dst == GATEWAY_IP && udp.dst_port() == DNS_PORT {
                Verdict::Pass
            } else {
                Verdict::Drop(Udp(SocketAddrV4::new(dst, udp.dst_port())))
            }
        }
        IpProtocol::Icmp => Verdict::Drop(Icmp(dst)),
        other => Verdict::Drop(Protocol(other.into(), dst)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetRepr, IpAddress, Ipv4Repr, TcpControl, TcpRepr, TcpSeqNumber, UdpRepr,
    };

    use crate::stack::SANDBOX_MAC;

    /// An Ethernet frame from the sandbox to the gateway carrying `ip` with `payload_len` bytes
    /// that `fill` writes.
    pub(crate) fn ipv4_frame(ip: Ipv4Repr, fill: impl FnOnce(&mut [u8])) -> Vec<u8> {
        let eth = EthernetRepr {
            src_addr: EthernetAddress(SANDBOX_MAC),
            dst_addr: EthernetAddress(GATEWAY_MAC),
            ethertype: EthernetProtocol::Ipv4,
        };
        let mut buf = vec![0; eth.buffer_len() + ip.buffer_len() + ip.payload_len];
        let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.emit(&mut frame);
        let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
        ip.emit(&mut packet, &ChecksumCapabilities::default());
        fill(packet.payload_mut());
        buf
    }

    fn ip(src: Ipv4Addr, dst: Ipv4Addr, proto: IpProtocol, len: usize) -> Ipv4Repr {
        Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: proto,
            payload_len: len,
            hop_limit: 64,
        }
    }

    pub(crate) fn tcp_frame(dst: SocketAddrV4, control: TcpControl, ack: bool) -> Vec<u8> {
        tcp_frame_from(40000, dst, control, ack)
    }

    pub(crate) fn tcp_frame_from(
        src_port: u16,
        dst: SocketAddrV4,
        control: TcpControl,
        ack: bool,
    ) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port,
            dst_port: dst.port(),
            control,
            seq_number: TcpSeqNumber(1),
            ack_number: ack.then_some(TcpSeqNumber(1)),
            window_len: 1000,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        let repr = ip(SANDBOX_IP, *dst.ip(), IpProtocol::Tcp, tcp.buffer_len());
        ipv4_frame(repr, |p| {
            tcp.emit(
                &mut TcpPacket::new_unchecked(p),
                &IpAddress::Ipv4(SANDBOX_IP),
                &IpAddress::Ipv4(*dst.ip()),
                &ChecksumCapabilities::default(),
            )
        })
    }

    pub(crate) fn udp_frame(src: Ipv4Addr, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
        let udp = UdpRepr {
            src_port: 5353,
            dst_port: dst.port(),
        };
        let repr = ip(
            src,
            *dst.ip(),
            IpProtocol::Udp,
            udp.header_len() + payload.len(),
        );
        ipv4_frame(repr, |p| {
            udp.emit(
                &mut UdpPacket::new_unchecked(p),
                &IpAddress::Ipv4(src),
                &IpAddress::Ipv4(*dst.ip()),
                payload.len(),
                |b| b.copy_from_slice(payload),
                &ChecksumCapabilities::default(),
            )
        })
    }

    fn arp_frame(source: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
        let arp = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: EthernetAddress(SANDBOX_MAC),
            source_protocol_addr: source,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: target,
        };
        let mut buf = vec![0; 14 + arp.buffer_len()];
        let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
        EthernetRepr {
            src_addr: EthernetAddress(SANDBOX_MAC),
            dst_addr: EthernetAddress::BROADCAST,
            ethertype: EthernetProtocol::Arp,
        }
        .emit(&mut frame);
        arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
        buf
    }

    const FAKE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

    #[test]
    fn syn_is_singled_out_other_tcp_passes() {
        let dst = SocketAddrV4::new(FAKE, 443);
        assert_eq!(
            classify(&tcp_frame(dst, TcpControl::Syn, false)),
            Verdict::TcpSyn {
                src: SocketAddrV4::new(SANDBOX_IP, 40000),
                dst
            }
        );
        assert_eq!(
            classify(&tcp_frame(dst, TcpControl::Syn, true)),
            Verdict::Pass
        );
        assert_eq!(
            classify(&tcp_frame(dst, TcpControl::None, true)),
            Verdict::Pass
        );
        assert_eq!(
            classify(&tcp_frame(dst, TcpControl::Fin, true)),
            Verdict::Pass
        );
    }

    #[test]
    fn udp_only_to_gateway_dns() {
        let dns = SocketAddrV4::new(GATEWAY_IP, 53);
        assert_eq!(classify(&udp_frame(SANDBOX_IP, dns, b"q")), Verdict::Pass);
        let google = SocketAddrV4::new(Ipv4Addr::new(8, 8, 8, 8), 53);
        assert_eq!(
            classify(&udp_frame(SANDBOX_IP, google, b"q")),
            Verdict::Drop(Dropped::Udp(google))
        );
        let other_port = SocketAddrV4::new(GATEWAY_IP, 123);
        assert_eq!(
            classify(&udp_frame(SANDBOX_IP, other_port, b"q")),
            Verdict::Drop(Dropped::Udp(other_port))
        );
    }

    #[test]
    fn spoofed_source_dropped() {
        let spoof = Ipv4Addr::new(10, 201, 0, 77);
        let dns = SocketAddrV4::new(GATEWAY_IP, 53);
        assert_eq!(
            classify(&udp_frame(spoof, dns, b"q")),
            Verdict::Drop(Dropped::Spoofed(spoof))
        );
    }

    #[test]
    fn icmp_and_other_protocols_dropped() {
        let to = Ipv4Addr::new(1, 1, 1, 1);
        let echo = ipv4_frame(ip(SANDBOX_IP, GATEWAY_IP, IpProtocol::Icmp, 8), |p| {
            p.copy_from_slice(&[8, 0, 0xf7, 0xff, 0, 0, 0, 0])
        });
        assert_eq!(classify(&echo), Verdict::Drop(Dropped::Icmp(GATEWAY_IP)));
        let gre = ipv4_frame(ip(SANDBOX_IP, to, IpProtocol::Unknown(47), 4), |_| {});
        assert_eq!(classify(&gre), Verdict::Drop(Dropped::Protocol(47, to)));
    }

    #[test]
    fn fragments_dropped() {
        let mut frame = tcp_frame(SocketAddrV4::new(FAKE, 80), TcpControl::Syn, false);
        let mut packet = Ipv4Packet::new_unchecked(&mut frame[14..]);
        packet.set_more_frags(true);
        packet.fill_checksum();
        assert_eq!(classify(&frame), Verdict::Drop(Dropped::Fragment(FAKE)));
    }

    #[test]
    fn arp_only_sandbox_to_gateway() {
        assert_eq!(classify(&arp_frame(SANDBOX_IP, GATEWAY_IP)), Verdict::Pass);
        // A probe for the sandbox's own address must not be answered by "any IP".
        assert_eq!(
            classify(&arp_frame(Ipv4Addr::UNSPECIFIED, SANDBOX_IP)),
            Verdict::Drop(Dropped::Ignored)
        );
        assert_eq!(
            classify(&arp_frame(SANDBOX_IP, Ipv4Addr::new(10, 201, 0, 9))),
            Verdict::Drop(Dropped::Ignored)
        );
    }

    #[test]
    fn ipv6_oversize_and_garbage() {
        let mut v6 = tcp_frame(SocketAddrV4::new(FAKE, 80), TcpControl::Syn, false);
        v6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        assert_eq!(classify(&v6), Verdict::Drop(Dropped::Ethertype(0x86dd)));
        let mut big = tcp_frame(SocketAddrV4::new(FAKE, 80), TcpControl::Syn, false);
        big.resize(super::MTU as usize + ETHERNET_HEADER + 1, 0);
        assert_eq!(classify(&big), Verdict::Drop(Dropped::Oversize));
        assert_eq!(classify(&[1, 2, 3]), Verdict::Drop(Dropped::Ignored));
        let mut truncated = tcp_frame(SocketAddrV4::new(FAKE, 80), TcpControl::Syn, false);
        truncated.truncate(30);
        assert_eq!(classify(&truncated), Verdict::Drop(Dropped::Ignored));
        let mut other_mac = tcp_frame(SocketAddrV4::new(FAKE, 80), TcpControl::Syn, false);
        other_mac[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 9]);
        assert_eq!(classify(&other_mac), Verdict::Drop(Dropped::Ignored));
    }
}
