//! The host side of the sandbox's only network interface.
//!
//! A userspace TCP/IPv4 stack ([smoltcp]) fed with Ethernet frames from one
//! [`Link`]: a TAP device created inside the sandbox's network namespace, or
//! QEMU's `-netdev stream` socket. The sandbox sees a plain /24 with one
//! router, [`GATEWAY_IP`], which is also its DNS server. What the stack does:
//!
//! * answers ARP for the gateway and DNS queries sent to the gateway: every
//!   name [`StackConfig::dns_allows`] accepts gets a stable "fake" address
//!   from [`FAKE_NET`], every other name NXDOMAIN;
//! * accepts TCP connections to fake addresses it handed out (and to the
//!   direct addresses [`StackConfig::direct_allows`] accepts) and hands each
//!   established one to the caller as a [`Flow`]: a byte stream plus the name
//!   the sandbox resolved;
//! * refuses everything else on the spot: a SYN anywhere else gets a RST
//!   (a quick `ECONNREFUSED`), UDP other than DNS, ICMP, IPv6 and IP
//!   fragments are dropped, and `net.blocked` events say so (rate-limited).
//!
//! What it deliberately does not do: it never opens a connection to the
//! outside itself (the L7 layer does that for each [`Flow`]), it has no IPv6,
//! no DHCP (addresses are fixed, see [`crate::tap::configure`]) and no ICMP.
//!
//! Events (`emit` kind, then fields):
//! * `net.blocked` — `proto` (`tcp`, `udp`, `icmp`, `ipv4`, `ethernet`),
//!   `dst` (`ip:port`, `ip`, or the ethertype), `reason`: `direct-ip`,
//!   `unknown-fake-ip`, `name-denied`, `too-many-connections`,
//!   `backlog-full`, `invalid-port` (TCP); `udp-not-dns`; `icmp`;
//!   `fragment`, `spoofed-source`, `ip-protocol` (IPv4); `not-ipv4`
//!   (once per ethertype). At most 20 per second; an identical event
//!   (same proto, dst, reason) at most once per 10 s.
//! * `net.dns` — `name`, `qtype` (`A`, `AAAA`, ...), `answer` (`198.18.x.y`,
//!   `nodata`, `nxdomain`, `servfail`). At most 50 per second; an
//!   identical one at most once per 60 s.
//!
//! Events the rate limit swallowed are counted in [`StackStats`], and the
//! next event of that kind carries their number in `dropped_events`.

mod device;
mod dns;
mod engine;
mod events;
mod filter;
mod framing;
mod link;

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

/// The stack's own address: the sandbox's default gateway and DNS server.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
/// The sandbox's address (configured inside the sandbox, see [`crate::tap::configure`]).
pub const SANDBOX_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);
/// Prefix length of the link network (10.201.0.0/24).
pub const PREFIX_LEN: u8 = 24;
/// The gateway's MAC address (locally administered).
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0xc0, 0x4d, 0x00, 0x00, 0x01];
/// The MAC address [`crate::tap::configure`] gives the sandbox's interface.
pub const SANDBOX_MAC: [u8; 6] = [0x02, 0xc0, 0x4d, 0x00, 0x00, 0x02];
/// IP MTU of the link, for TAP and QEMU alike. Nothing on the link is a real
/// wire, so the largest frame the QEMU stream framing carries (64 KiB, the
/// value slirp4netns recommends too) beats Ethernet's 1500: a 64 KiB segment
/// costs the stack one frame instead of 44 (bulk throughput +50% measured).
pub const MTU: u32 = 65520;
/// The DNS server port on [`GATEWAY_IP`] (UDP).
pub const DNS_PORT: u16 = 53;
/// Fake addresses handed out for allowed names: 198.18.0.0/15, the RFC 2544
/// benchmarking range, which no real service uses.
pub const FAKE_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 15);
/// How many names one session can resolve; beyond that, new names get SERVFAIL.
pub const MAX_NAMES: usize = 65_536;
/// Most TCP connections (including half-open ones) at once; further SYNs get a RST.
pub const MAX_TCP_CONNECTIONS: usize = 1024;
/// Established connections waiting in the [`Flow`] channel; beyond that, new
/// connections are reset.
pub const FLOW_BACKLOG: usize = 128;
/// Each direction of a [`Flow`]'s byte stream buffers at most this much.
pub const FLOW_BUFFER: usize = 256 * 1024;
/// TTL of the A records the DNS server hands out, in seconds. Answers come
/// from this process in microseconds, so a short TTL costs nothing, and it
/// bounds how long caches inside the sandbox keep dialling a name the policy
/// has since stopped allowing. The fake address itself never changes within
/// a session, so a stale cache is never wrong, only unchecked.
pub const DNS_TTL_SECS: u32 = 5;

/// Whether `ip` lies in [`FAKE_NET`].
pub fn is_fake_ip(ip: Ipv4Addr) -> bool {
    u32::from(ip) >> (32 - FAKE_NET.1) == u32::from(FAKE_NET.0) >> (32 - FAKE_NET.1)
}

/// Where the sandbox's Ethernet frames come from and go to.
#[derive(Debug)]
pub enum Link {
    /// A TAP device (`IFF_TAP | IFF_NO_PI`) from [`crate::tap::create_tap`]:
    /// one frame per `read(2)` / `write(2)`. The fd keeps the sandbox's
    /// network namespace alive, so the stack cannot tell when the sandbox
    /// is gone: call [`StackHandle::stop`] then.
    Tap(OwnedFd),
    /// QEMU's `-netdev stream` socket: each frame is preceded by its length
    /// as a 4-byte big-endian integer, in both directions.
    QemuStream(UnixStream),
}

/// A decision callback about a name (lowercase, without the trailing dot).
pub type NamePolicy = Arc<dyn Fn(&str) -> bool + Send + Sync>;
/// A decision callback about a direct connection (an address that is not a fake IP).
pub type AddrPolicy = Arc<dyn Fn(Ipv4Addr, u16) -> bool + Send + Sync>;

/// What the stack asks its caller. The callbacks run on the stack's task for
/// every DNS query / new connection, so they must be quick and must not block.
#[derive(Clone)]
pub struct StackConfig {
    /// Where `net.blocked` and `net.dns` events go.
    pub emit: crate::Emit,
    /// `true`: answer DNS for this name with a fake IP; `false`: NXDOMAIN.
    /// Also asked again when the sandbox connects to that name's fake IP, so
    /// that a name the policy stopped allowing cannot be dialled from a cache.
    pub dns_allows: NamePolicy,
    /// Whether a TCP SYN to an address that is not a fake IP (a direct IP
    /// connect) is accepted. Normally always `false`.
    pub direct_allows: AddrPolicy,
}

impl StackConfig {
    /// A configuration that allows the names `allows` accepts and no direct connections.
    pub fn new(
        emit: crate::Emit,
        dns_allows: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self {
            emit,
            dns_allows: Arc::new(dns_allows),
            direct_allows: Arc::new(|_, _| false),
        }
    }
}

/// One TCP connection from the sandbox, established.
///
/// `io` carries the bytes: reading gives what the sandbox sent (EOF once it
/// sent FIN), writing sends to the sandbox, `shutdown()` sends FIN, and
/// dropping `io` closes the connection (RST if the sandbox still sends).
/// If the sandbox resets the connection or the stack stops, reads see EOF
/// and writes fail with `BrokenPipe`.
#[derive(Debug)]
pub struct Flow {
    /// Unique within this stack.
    pub id: u64,
    /// The sandbox's end (always [`SANDBOX_IP`]).
    pub src: SocketAddrV4,
    /// The address the sandbox connected to (usually a fake IP).
    pub dst: SocketAddrV4,
    /// The name `dst` was handed out for, if `dst` is a fake IP.
    pub name: Option<String>,
    /// The connection's byte stream.
    pub io: tokio::io::DuplexStream,
}

/// Counters of a running stack (see [`StackHandle::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackStats {
    /// Frames read from the link.
    pub frames_in: u64,
    /// Frames written to the link.
    pub frames_out: u64,
    /// Frames dropped: from the sandbox before the TCP/IP stack saw them
    /// (policy, malformed, oversize), or to it because the link did not take them.
    pub frames_dropped: u64,
    /// DNS queries answered.
    pub dns_queries: u64,
    /// TCP connections established and handed out as [`Flow`]s.
    pub flows: u64,
    /// TCP SYNs answered with a RST by policy or limits.
    pub tcp_refused: u64,
    /// DNS queries answered NXDOMAIN (names the policy does not allow).
    pub names_refused: u64,
    /// UDP (other than DNS to the gateway), ICMP and other IPv4 packets
    /// dropped by policy. Frames that were never meant for the gateway
    /// (broadcasts, other MACs, non-IPv4 chatter such as IPv6 router
    /// solicitations) are not counted here, only in `frames_dropped`.
    pub packets_refused: u64,
    /// Sockets in the TCP/IP stack right now (one is the DNS socket).
    pub sockets: u64,
    /// Events not emitted because of the rate limit or the duplicate filter.
    pub events_suppressed: u64,
}

/// State shared between the stack task, its handle and the flows' wakers.
#[derive(Default)]
struct Shared {
    /// Wakes the stack task: flows became ready, or [`StackHandle::stop`].
    notify: Notify,
    stopping: AtomicBool,
    ready: std::sync::Mutex<Vec<u64>>,
    stats: [AtomicU64; 10],
}

impl Shared {
    fn stats(&self) -> StackStats {
        let s = |i: usize| self.stats[i].load(Ordering::Relaxed);
        StackStats {
            frames_in: s(0),
            frames_out: s(1),
            frames_dropped: s(2),
            dns_queries: s(3),
            flows: s(4),
            tcp_refused: s(5),
            sockets: s(6),
            events_suppressed: s(7),
            names_refused: s(8),
            packets_refused: s(9),
        }
    }

    fn publish(&self, st: &StackStats) {
        let values = [
            st.frames_in,
            st.frames_out,
            st.frames_dropped,
            st.dns_queries,
            st.flows,
            st.tcp_refused,
            st.sockets,
            st.events_suppressed,
            st.names_refused,
            st.packets_refused,
        ];
        for (slot, v) in self.stats.iter().zip(values) {
            slot.store(v, Ordering::Relaxed);
        }
    }
}

/// Reads a stack's counters (see [`StackHandle::stats_reader`]).
#[derive(Clone)]
pub struct StatsReader(Arc<Shared>);

impl StatsReader {
    /// The counters as of the stack's last loop iteration.
    pub fn get(&self) -> StackStats {
        self.0.stats()
    }
}

/// Controls a running stack. Dropping it stops the stack (like [`StackHandle::stop`]).
pub struct StackHandle {
    shared: Arc<Shared>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl StackHandle {
    /// The counters as of the stack's last loop iteration.
    pub fn stats(&self) -> StackStats {
        self.shared.stats()
    }

    /// Something that reads [`stats`](Self::stats) from elsewhere (another
    /// task, after the handle is gone).
    pub fn stats_reader(&self) -> StatsReader {
        StatsReader(self.shared.clone())
    }

    /// Asks the stack to stop: every open connection is reset (the sandbox
    /// gets a RST, the [`Flow`] sees EOF) and the link is closed.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.notify.notify_one();
    }

    /// Waits until the stack has stopped: after [`StackHandle::stop`], when
    /// the sandbox closed the link (`Ok`), or on a link error (`Err`).
    pub async fn wait(mut self) -> io::Result<()> {
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        match task.await {
            Ok(result) => result,
            Err(e) => Err(io::Error::other(format!(
                "the network stack task failed: {e}"
            ))),
        }
    }
}

impl Drop for StackHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the stack on `link`. Must be called inside a tokio runtime with
/// I/O and timers enabled; the stack runs as one task on it. Established connections arrive on the
/// returned channel (at most [`FLOW_BACKLOG`] waiting); if the receiver is
/// dropped, new connections are reset.
pub fn spawn(link: Link, cfg: StackConfig) -> io::Result<(StackHandle, mpsc::Receiver<Flow>)> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(io::Error::other(
            "cordon_net::stack::spawn must be called inside a tokio runtime",
        ));
    }
    let io = link::LinkIo::new(link)?;
    let shared = Arc::new(Shared::default());
    let (flow_tx, flow_rx) = mpsc::channel(FLOW_BACKLOG);
    let core = engine::Core::new(cfg, flow_tx, shared.clone());
    let task = tokio::spawn(engine::run(io, core));
    Ok((
        StackHandle {
            shared,
            task: Some(task),
        },
        flow_rx,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_net_bounds() {
        assert!(is_fake_ip(Ipv4Addr::new(198, 18, 0, 1)));
        assert!(is_fake_ip(Ipv4Addr::new(198, 19, 255, 254)));
        assert!(!is_fake_ip(Ipv4Addr::new(198, 20, 0, 1)));
        assert!(!is_fake_ip(Ipv4Addr::new(198, 17, 255, 255)));
        assert!(!is_fake_ip(GATEWAY_IP));
    }
}
