//! The gateway's TCP/IP stack end to end, over both real link types:
//!
//! * QEMU's `-netdev stream` framing on a Unix socket pair, with a second
//!   smoltcp interface on the far end playing the sandbox (client side,
//!   10.201.0.2, default route via 10.201.0.1);
//! * a real TAP device in a fresh network namespace, with the kernel's own
//!   TCP/IP playing the sandbox (needs root or unprivileged user namespaces,
//!   and /dev/net/tun; fails, never skips, without them).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cordon_net::stack::{
    self, DNS_TTL_SECS, Flow, GATEWAY_IP, GATEWAY_MAC, Link, SANDBOX_IP, SANDBOX_MAC, StackConfig,
    StackHandle,
};
use cordon_net::tap;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use sha2::{Digest, Sha256};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, HardwareAddress, Icmpv4Packet,
    Icmpv4Repr, IpCidr, IpProtocol, Ipv4Packet, Ipv4Repr,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// These tests share two cores; one at a time, so that timings mean something.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

type Events = Arc<Mutex<Vec<(String, serde_json::Map<String, serde_json::Value>)>>>;

const ALLOWED: &str = "api.allowed.test";

/// A running stack on a tokio runtime, with its flows and recorded events.
struct Harness {
    rt: tokio::runtime::Runtime,
    handle: Option<StackHandle>,
    flows: Option<mpsc::Receiver<Flow>>,
    events: Events,
}

impl Harness {
    fn start(link: Link) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let events: Events = Arc::default();
        let sink = events.clone();
        let cfg = StackConfig::new(
            Arc::new(move |kind, fields| sink.lock().unwrap().push((kind.to_owned(), fields))),
            |name| name == "allowed.test" || name.ends_with(".allowed.test"),
        );
        let (handle, flows) = {
            let _guard = rt.enter();
            stack::spawn(link, cfg).expect("starting the stack")
        };
        Harness {
            rt,
            handle: Some(handle),
            flows: Some(flows),
            events,
        }
    }

    fn handle(&self) -> &StackHandle {
        self.handle.as_ref().unwrap()
    }

    fn flows(&mut self) -> &mut mpsc::Receiver<Flow> {
        self.flows.as_mut().unwrap()
    }

    /// Every flow from now on gets `serve` on its own task.
    fn serve_flows<F, Fut>(&mut self, serve: F)
    where
        F: Fn(Flow) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut flows = self.flows.take().unwrap();
        self.rt.spawn(async move {
            while let Some(flow) = flows.recv().await {
                tokio::spawn(serve(flow));
            }
        });
    }

    fn event(&self, kind: &str, field: &str, value: &str) -> bool {
        self.events
            .lock()
            .unwrap()
            .iter()
            .any(|(k, f)| k == kind && f.get(field).and_then(|v| v.as_str()) == Some(value))
    }

    fn events_matching(&self, kind: &str, field: &str, value: &str) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, f)| k == kind && f.get(field).and_then(|v| v.as_str()) == Some(value))
            .count()
    }

    /// Stops the stack and returns how it ended.
    fn stop(&mut self) -> io::Result<()> {
        let handle = self.handle.take().unwrap();
        handle.stop();
        self.rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), handle.wait()).await })
            .expect("the stack did not stop within 10 s")
    }
}

async fn echo(flow: Flow) {
    let (mut r, mut w) = tokio::io::split(flow.io);
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

// ---------------------------------------------------------------------------
// The guest: a smoltcp client speaking QEMU's stream framing.

/// smoltcp's device on the guest side: frames cut from the stream, frames to send (framed).
struct Wire {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<u8>,
}

struct WireRx(Vec<u8>);
struct WireTx<'a>(&'a mut Vec<u8>);

impl phy::RxToken for WireRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for WireTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let start = self.0.len();
        self.0.extend_from_slice(&(len as u32).to_be_bytes());
        self.0.resize(start + 4 + len, 0);
        f(&mut self.0[start + 4..])
    }
}

impl phy::Device for Wire {
    type RxToken<'a> = WireRx;
    type TxToken<'a> = WireTx<'a>;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(WireRx, WireTx<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((WireRx(frame), WireTx(&mut self.tx)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<WireTx<'_>> {
        (self.tx.len() < 2 * 1024 * 1024).then_some(WireTx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

struct Guest {
    sock: UnixStream,
    inbuf: Vec<u8>,
    wire: Wire,
    iface: Interface,
    sockets: SocketSet<'static>,
    start: Instant,
    next_port: u16,
}

impl Guest {
    fn new(sock: UnixStream) -> Self {
        sock.set_nonblocking(true).unwrap();
        let mut wire = Wire {
            rx: VecDeque::new(),
            tx: Vec::new(),
        };
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(SANDBOX_MAC)));
        config.random_seed = 42;
        let mut iface = Interface::new(config, &mut wire, smoltcp::time::Instant::from_millis(0));
        iface.update_ip_addrs(|a| a.push(IpCidr::new(SANDBOX_IP.into(), 24)).unwrap());
        iface
            .routes_mut()
            .add_default_ipv4_route(GATEWAY_IP)
            .unwrap();
        Guest {
            sock,
            inbuf: Vec::new(),
            wire,
            iface,
            sockets: SocketSet::new(Vec::new()),
            start: Instant::now(),
            next_port: 40000,
        }
    }

    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.start.elapsed().as_micros() as i64)
    }

    fn port(&mut self) -> u16 {
        self.next_port += 1;
        self.next_port
    }

    /// Lets smoltcp transmit what the sockets queued (without reading the link,
    /// so that nothing arrives unnoticed before a wait).
    fn transmit(&mut self) {
        let now = self.now();
        self.iface.poll(now, &mut self.wire, &mut self.sockets);
        self.flush();
    }

    /// Reads what arrived, lets smoltcp process and transmit, writes what it sent.
    fn step(&mut self) {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match self.sock.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("guest: reading the link failed: {e}"),
            }
            if self.inbuf.len() > 2 * 1024 * 1024 {
                break;
            }
        }
        let mut off = 0;
        while self.inbuf.len() - off >= 4 {
            let len = u32::from_be_bytes(self.inbuf[off..off + 4].try_into().unwrap()) as usize;
            assert!(len <= 1514, "guest: the stack sent a {len}-byte frame");
            if self.inbuf.len() - off < 4 + len {
                break;
            }
            self.wire
                .rx
                .push_back(self.inbuf[off + 4..off + 4 + len].to_vec());
            off += 4 + len;
        }
        self.inbuf.drain(..off);
        let now = self.now();
        self.iface.poll(now, &mut self.wire, &mut self.sockets);
        self.flush();
    }

    fn flush(&mut self) {
        let mut off = 0;
        while off < self.wire.tx.len() {
            match self.sock.write(&self.wire.tx[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("guest: writing the link failed: {e}"),
            }
        }
        self.wire.tx.drain(..off);
    }

    fn wait(&mut self, max: Duration) {
        let now = self.now();
        let delay = self
            .iface
            .poll_delay(now, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
            .unwrap_or(max)
            .min(max);
        if delay.is_zero() {
            return;
        }
        let mut events = libc::POLLIN;
        if !self.wire.tx.is_empty() {
            events |= libc::POLLOUT;
        }
        let mut pfd = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, delay.as_millis().max(1) as i32) };
    }

    /// Drives the guest until `done` returns a value; panics after `timeout`.
    fn run_until<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&mut Guest) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            self.step();
            if let Some(v) = done(self) {
                self.transmit();
                return v;
            }
            self.transmit();
            assert!(
                Instant::now() < deadline,
                "guest: timed out after {timeout:?} waiting for {what}"
            );
            self.wait(Duration::from_millis(20));
        }
    }

    /// Sends one DNS query to the gateway and returns the answer.
    fn dns(&mut self, name: &str, qtype: RecordType) -> Message {
        let buffer = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]);
        let mut socket = udp::Socket::new(buffer(), buffer());
        let port = self.port();
        socket.bind(port).unwrap();
        let handle = self.sockets.add(socket);
        let query = dns_query(port, name, qtype);
        self.sockets
            .get_mut::<udp::Socket>(handle)
            .send_slice(&query, (GATEWAY_IP, 53))
            .unwrap();
        let reply = self.run_until(&format!("a DNS answer for {name}"), secs(10), |g| {
            let socket = g.sockets.get_mut::<udp::Socket>(handle);
            socket.recv().ok().map(|(data, _)| data.to_vec())
        });
        self.sockets.remove(handle);
        let msg = Message::from_vec(&reply).expect("the stack's DNS answer parses");
        assert_eq!(msg.metadata.id, port, "answer id matches the query");
        msg
    }

    fn resolve(&mut self, name: &str) -> Ipv4Addr {
        let msg = self.dns(name, RecordType::A);
        assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
        match msg.answers.first().map(|r| &r.data) {
            Some(RData::A(a)) => a.0,
            other => panic!("no A record for {name}: {other:?}"),
        }
    }

    fn connect(&mut self, dst: SocketAddrV4, buffer: usize) -> SocketHandle {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; buffer]),
            tcp::SocketBuffer::new(vec![0; buffer]),
        );
        socket.set_ack_delay(None);
        socket.set_nagle_enabled(false);
        let port = self.port();
        socket
            .connect(self.iface.context(), (*dst.ip(), dst.port()), port)
            .unwrap();
        self.sockets.add(socket)
    }

    fn tcp(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(handle)
    }

    /// Sends a raw Ethernet frame down the link.
    fn inject(&mut self, frame: &[u8]) {
        self.wire
            .tx
            .extend_from_slice(&(frame.len() as u32).to_be_bytes());
        self.wire.tx.extend_from_slice(frame);
        self.flush();
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn dns_query(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    msg.to_vec().unwrap()
}

fn qemu_pair() -> (Harness, Guest) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let harness = Harness::start(Link::QemuStream(ours));
    (harness, Guest::new(theirs))
}

/// Deterministic, incompressible test data.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

// ---------------------------------------------------------------------------
// QEMU stream link

#[test]
fn dns_answers_allowed_names_and_refuses_the_rest() {
    let _serial = serial();
    let (h, mut guest) = qemu_pair();

    let ip = guest.resolve(ALLOWED);
    assert_eq!(ip, Ipv4Addr::new(198, 18, 0, 1));
    let a = guest.dns(ALLOWED, RecordType::A);
    assert_eq!(a.answers[0].ttl, DNS_TTL_SECS);
    assert_eq!(a.answers[0].data, RData::A(ip.into()), "stable address");

    let aaaa = guest.dns(ALLOWED, RecordType::AAAA);
    assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
    assert!(aaaa.answers.is_empty(), "no IPv6: {aaaa:?}");

    let denied = guest.dns("evil.example", RecordType::A);
    assert_eq!(denied.metadata.response_code, ResponseCode::NXDomain);
    assert!(denied.answers.is_empty());

    guest.run_until("net.dns events", secs(5), |_| {
        (h.event("net.dns", "answer", "198.18.0.1") && h.event("net.dns", "answer", "nxdomain"))
            .then_some(())
    });
    assert!(h.event("net.dns", "name", "evil.example"));
    // The repeated A query was not logged twice.
    assert_eq!(h.events_matching("net.dns", "answer", "198.18.0.1"), 1);
    assert_eq!(h.handle().stats().dns_queries, 4);
    assert_eq!(h.handle().stats().names_refused, 1, "evil.example only");
}

#[test]
fn direct_ip_udp_and_icmp_are_refused_with_events() {
    let _serial = serial();
    let (h, mut guest) = qemu_pair();

    // A SYN to an address no DNS answer handed out: RST, quickly.
    let started = Instant::now();
    let direct = guest.connect(SocketAddrV4::new(Ipv4Addr::new(93, 184, 216, 34), 80), 4096);
    guest.run_until("the RST for a direct IP", secs(5), |g| {
        (g.tcp(direct).state() == tcp::State::Closed).then_some(())
    });
    assert!(
        started.elapsed() < secs(2),
        "refusal took {:?}",
        started.elapsed()
    );
    guest.run_until("the net.blocked event for tcp", secs(5), |_| {
        h.event("net.blocked", "dst", "93.184.216.34:80")
            .then_some(())
    });
    assert!(h.event("net.blocked", "reason", "direct-ip"));
    guest.run_until("the refusal to be counted", secs(5), |_| {
        (h.handle().stats().tcp_refused == 1).then_some(())
    });

    // A fake IP that was never handed out is refused too.
    let unknown = guest.connect(SocketAddrV4::new(Ipv4Addr::new(198, 18, 3, 3), 443), 4096);
    guest.run_until("the RST for an unknown fake IP", secs(5), |g| {
        (g.tcp(unknown).state() == tcp::State::Closed).then_some(())
    });

    // UDP anywhere but the gateway's DNS is dropped.
    let buffer = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]);
    let mut socket = udp::Socket::new(buffer(), buffer());
    socket.bind(5353).unwrap();
    let udp_handle = guest.sockets.add(socket);
    let query = dns_query(7, ALLOWED, RecordType::A);
    guest
        .sockets
        .get_mut::<udp::Socket>(udp_handle)
        .send_slice(&query, (Ipv4Addr::new(8, 8, 8, 8), 53))
        .unwrap();
    guest.run_until("the net.blocked event for udp", secs(5), |_| {
        h.event("net.blocked", "dst", "8.8.8.8:53").then_some(())
    });
    assert!(h.event("net.blocked", "proto", "udp"));
    assert!(
        guest
            .sockets
            .get_mut::<udp::Socket>(udp_handle)
            .recv()
            .is_err(),
        "nothing answers for 8.8.8.8"
    );

    // ICMP echo to the gateway: dropped, reported.
    guest.inject(&icmp_echo(GATEWAY_IP));
    guest.run_until("the net.blocked event for icmp", secs(5), |_| {
        h.event("net.blocked", "proto", "icmp").then_some(())
    });
    // Every refusal is counted: two SYNs, the UDP datagram and the ping.
    guest.run_until("the refusals to be counted", secs(5), |_| {
        let st = h.handle().stats();
        (st.tcp_refused == 2 && st.packets_refused == 2).then_some(())
    });
    assert_eq!(h.handle().stats().names_refused, 0);
}

fn icmp_echo(dst: Ipv4Addr) -> Vec<u8> {
    let icmp = Icmpv4Repr::EchoRequest {
        ident: 1,
        seq_no: 1,
        data: b"ping",
    };
    let ip = Ipv4Repr {
        src_addr: SANDBOX_IP,
        dst_addr: dst,
        next_header: IpProtocol::Icmp,
        payload_len: icmp.buffer_len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(SANDBOX_MAC),
        dst_addr: EthernetAddress(GATEWAY_MAC),
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut buf = vec![0; eth.buffer_len() + ip.buffer_len() + icmp.buffer_len()];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut frame);
    let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
    let caps = ChecksumCapabilities::default();
    ip.emit(&mut packet, &caps);
    icmp.emit(
        &mut Icmpv4Packet::new_unchecked(packet.payload_mut()),
        &caps,
    );
    buf
}

#[test]
fn tcp_flow_carries_bytes_both_ways_and_closes_cleanly() {
    let _serial = serial();
    let (mut h, mut guest) = qemu_pair();
    let ip = guest.resolve(ALLOWED);

    let conn = guest.connect(SocketAddrV4::new(ip, 443), 64 * 1024);
    let flow = guest.run_until("the flow", secs(10), |_| h.flows().try_recv().ok());
    assert_eq!(flow.name.as_deref(), Some(ALLOWED));
    assert_eq!(flow.dst, SocketAddrV4::new(ip, 443));
    assert_eq!(*flow.src.ip(), SANDBOX_IP);
    assert_eq!(guest.tcp(conn).state(), tcp::State::Established);
    let echo_task = h.rt.spawn(echo(flow));

    let message = b"hello through the gateway";
    guest.tcp(conn).send_slice(message).unwrap();
    let mut got = Vec::new();
    guest.run_until("the echo", secs(10), |g| {
        let mut buf = [0u8; 256];
        while let Ok(n @ 1..) = g.tcp(conn).recv_slice(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        (got.len() >= message.len()).then_some(())
    });
    assert_eq!(got, message);

    // Sandbox FIN -> EOF for the application -> its shutdown -> FIN back.
    guest.tcp(conn).close();
    guest.run_until("the connection to close", secs(10), |g| {
        matches!(
            g.tcp(conn).state(),
            tcp::State::TimeWait | tcp::State::Closed
        )
        .then_some(())
    });
    h.rt.block_on(echo_task).unwrap();
    guest.run_until("the stack to drop the socket", secs(10), |_| {
        (h.handle().stats().sockets == 1).then_some(())
    });
    assert_eq!(h.handle().stats().flows, 1);
    assert!(h.stop().is_ok());
}

#[test]
fn application_half_close_and_drop() {
    let _serial = serial();
    let (mut h, mut guest) = qemu_pair();
    let ip = guest.resolve(ALLOWED);

    // The application speaks first and shuts down its side; the sandbox can still send.
    let conn = guest.connect(SocketAddrV4::new(ip, 443), 64 * 1024);
    let flow = guest.run_until("the flow", secs(10), |_| h.flows().try_recv().ok());
    let app = h.rt.spawn(async move {
        let mut io = flow.io;
        io.write_all(b"banner").await.unwrap();
        io.shutdown().await.unwrap();
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.unwrap();
        rest
    });
    let mut got = Vec::new();
    guest.run_until("banner and FIN", secs(10), |g| {
        let mut buf = [0u8; 64];
        while let Ok(n @ 1..) = g.tcp(conn).recv_slice(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        (!g.tcp(conn).may_recv()).then_some(())
    });
    assert_eq!(got, b"banner");
    assert_eq!(guest.tcp(conn).state(), tcp::State::CloseWait);
    guest.tcp(conn).send_slice(b"after your FIN").unwrap();
    guest.tcp(conn).close();
    guest.run_until("LAST-ACK to finish", secs(10), |g| {
        (g.tcp(conn).state() == tcp::State::Closed).then_some(())
    });
    assert_eq!(h.rt.block_on(app).unwrap(), b"after your FIN");

    // The application drops the stream: FIN; data the sandbox sends after that: RST.
    let conn = guest.connect(SocketAddrV4::new(ip, 443), 64 * 1024);
    let flow = guest.run_until("the second flow", secs(10), |_| h.flows().try_recv().ok());
    drop(flow);
    guest.run_until("the FIN after the drop", secs(10), |g| {
        (!g.tcp(conn).may_recv()).then_some(())
    });
    guest.tcp(conn).send_slice(b"anyone there?").unwrap();
    guest.run_until("the RST", secs(10), |g| {
        (g.tcp(conn).state() == tcp::State::Closed).then_some(())
    });
    guest.run_until("the stack to drop both sockets", secs(10), |_| {
        (h.handle().stats().sockets == 1).then_some(())
    });
}

#[test]
fn stopping_resets_open_connections() {
    let _serial = serial();
    let (mut h, mut guest) = qemu_pair();
    let ip = guest.resolve(ALLOWED);
    let conn = guest.connect(SocketAddrV4::new(ip, 443), 4096);
    let flow = guest.run_until("the flow", secs(10), |_| h.flows().try_recv().ok());
    assert!(h.stop().is_ok());
    guest.run_until("the RST", secs(10), |g| {
        (g.tcp(conn).state() == tcp::State::Closed).then_some(())
    });
    let mut io = flow.io;
    let mut rest = Vec::new();
    let read = h.rt.block_on(io.read_to_end(&mut rest));
    assert_eq!(read.unwrap(), 0, "the flow ends when the stack stops");
}

#[test]
fn a_thousand_sequential_connections_leave_no_sockets_behind() {
    let _serial = serial();
    let (mut h, mut guest) = qemu_pair();
    let ip = guest.resolve(ALLOWED);
    // 'e': echo, the sandbox closes first. 'a': the application closes first.
    h.serve_flows(|flow| async move {
        let mut io = flow.io;
        let mut first = [0u8; 1];
        if io.read_exact(&mut first).await.is_err() {
            return;
        }
        io.write_all(&first).await.unwrap();
        if first[0] == b'a' {
            io.shutdown().await.unwrap();
        }
        let mut rest = Vec::new();
        let _ = io.read_to_end(&mut rest).await;
        let _ = io.shutdown().await;
    });
    let started = Instant::now();
    let mut most_sockets = 0;
    for i in 0..1000 {
        let kind = if i % 2 == 0 { b'e' } else { b'a' };
        let conn = guest.connect(SocketAddrV4::new(ip, 443), 4096);
        guest.run_until("established", secs(10), |g| {
            g.tcp(conn).may_send().then_some(())
        });
        guest.tcp(conn).send_slice(&[kind]).unwrap();
        guest.run_until("the reply byte", secs(10), |g| {
            let mut b = [0u8; 1];
            match g.tcp(conn).recv_slice(&mut b) {
                Ok(1) => {
                    assert_eq!(b[0], kind);
                    Some(())
                }
                _ => None,
            }
        });
        if kind == b'a' {
            guest.run_until("the application's FIN", secs(10), |g| {
                (!g.tcp(conn).may_recv()).then_some(())
            });
        }
        guest.tcp(conn).close();
        guest.run_until("closed", secs(10), |g| {
            matches!(
                g.tcp(conn).state(),
                tcp::State::TimeWait | tcp::State::Closed
            )
            .then_some(())
        });
        guest.sockets.remove(conn);
        most_sockets = most_sockets.max(h.handle().stats().sockets);
    }
    guest.run_until("all sockets gone", secs(10), |_| {
        (h.handle().stats().sockets == 1).then_some(())
    });
    let stats = h.handle().stats();
    assert_eq!(stats.flows, 1000);
    assert!(most_sockets <= 4, "socket set grew to {most_sockets}");
    eprintln!(
        "1000 sequential connections in {:?} (at most {most_sockets} sockets)",
        started.elapsed()
    );
}

#[test]
fn bulk_transfer_both_ways_arrives_intact() {
    let _serial = serial();
    const SIZE: usize = 20 * 1024 * 1024;
    let (mut h, mut guest) = qemu_pair();
    let ip = guest.resolve(ALLOWED);

    // Sandbox -> application.
    let upload = pattern(SIZE, 1);
    let conn = guest.connect(SocketAddrV4::new(ip, 443), 1024 * 1024);
    let flow = guest.run_until("the upload flow", secs(10), |_| h.flows().try_recv().ok());
    let sink = h.rt.spawn(async move {
        let mut io = flow.io;
        let mut hash = Sha256::new();
        let mut total = 0;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = io.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            total += n;
        }
        io.shutdown().await.unwrap();
        (total, hash.finalize())
    });
    let started = Instant::now();
    let mut sent = 0;
    guest.run_until("the upload", secs(300), |g| {
        let socket = g.tcp(conn);
        while sent < SIZE && socket.can_send() {
            sent += socket.send_slice(&upload[sent..]).unwrap();
        }
        if sent == SIZE && socket.send_queue() == 0 && socket.may_send() {
            socket.close();
        }
        sink.is_finished().then_some(())
    });
    let up_time = started.elapsed();
    let (total, digest) = h.rt.block_on(sink).unwrap();
    assert_eq!(total, SIZE);
    assert_eq!(digest, Sha256::digest(&upload), "upload corrupted");

    // Application -> sandbox.
    let download = pattern(SIZE, 2);
    let expected = Sha256::digest(&download);
    let conn = guest.connect(SocketAddrV4::new(ip, 443), 1024 * 1024);
    let flow = guest.run_until("the download flow", secs(10), |_| h.flows().try_recv().ok());
    let source = h.rt.spawn(async move {
        let mut io = flow.io;
        io.write_all(&download).await.unwrap();
        io.shutdown().await.unwrap();
    });
    let started = Instant::now();
    let mut hash = Sha256::new();
    let mut total = 0;
    guest.run_until("the download", secs(300), |g| {
        let socket = g.tcp(conn);
        while socket.can_recv() {
            socket
                .recv(|data| {
                    hash.update(&*data);
                    total += data.len();
                    (data.len(), ())
                })
                .unwrap();
        }
        (!socket.may_recv()).then_some(())
    });
    let down_time = started.elapsed();
    h.rt.block_on(source).unwrap();
    assert_eq!(total, SIZE);
    assert_eq!(hash.finalize(), expected, "download corrupted");

    let mib = SIZE as f64 / (1024.0 * 1024.0);
    eprintln!(
        "qemu-stream bulk: sandbox->app {:.1} MiB/s, app->sandbox {:.1} MiB/s ({} build)",
        mib / up_time.as_secs_f64(),
        mib / down_time.as_secs_f64(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
}

#[test]
fn oversize_stream_frame_closes_the_link_with_an_error() {
    let _serial = serial();
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let mut h = Harness::start(Link::QemuStream(ours));
    let mut frame = 70_000u32.to_be_bytes().to_vec();
    frame.extend_from_slice(&[0u8; 64]);
    theirs.write_all(&frame).unwrap();
    let handle = h.handle.take().unwrap();
    let result =
        h.rt.block_on(async { tokio::time::timeout(secs(10), handle.wait()).await })
            .expect("the stack did not notice the oversize frame");
    let err = result.expect_err("an oversize frame is an error");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("70000"), "{err}");

    // The sandbox closing the link is a normal end.
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut h = Harness::start(Link::QemuStream(ours));
    drop(theirs);
    let handle = h.handle.take().unwrap();
    let result =
        h.rt.block_on(async { tokio::time::timeout(secs(10), handle.wait()).await })
            .expect("the stack did not notice the closed link");
    assert!(result.is_ok(), "{result:?}");
}

// ---------------------------------------------------------------------------
// TAP link: the kernel's TCP/IP in a new network namespace.

const TAP_NAME: &str = "cordon0";
const TAP_BULK: usize = 16 * 1024 * 1024;

#[test]
fn tap_device_in_a_network_namespace_with_kernel_tcp() {
    let _serial = serial();
    let (parent_end, child_end) = UnixStream::pair().unwrap();
    // SAFETY: the child only runs `tap_child`, which uses syscalls, the
    // allocator (fork-safe in glibc) and its own threads, and ends in _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", io::Error::last_os_error());
    if pid == 0 {
        drop(parent_end);
        tap_child(child_end);
    }
    drop(child_end);
    parent_end.set_read_timeout(Some(secs(120))).unwrap();

    let fd = match recv_fd(&parent_end) {
        Ok(Some(fd)) => fd,
        Ok(None) => {
            let mut why = String::new();
            let _ = (&parent_end).read_to_string(&mut why);
            let _ = wait_child(pid);
            panic!("the TAP test could not set up its network namespace: {why}");
        }
        Err(e) => {
            let _ = wait_child(pid);
            panic!("no TAP fd from the child: {e}");
        }
    };
    let mut h = Harness::start(Link::Tap(fd));
    h.serve_flows(echo);

    let mut report = String::new();
    let read = (&parent_end).read_to_string(&mut report);
    // A TAP fd keeps its network namespace alive, so the stack cannot see
    // the sandbox go away: whoever runs the sandbox stops the stack.
    let stopped = h.stop();
    let _ = (&parent_end).write_all(b"x");
    let status = wait_child(pid);
    read.expect("reading the child's report");
    assert!(
        report.starts_with("OK"),
        "kernel-side checks failed: {report}"
    );
    assert_eq!(status, 0, "child exit status; report: {report}");
    assert!(stopped.is_ok(), "{stopped:?}");
    assert!(h.event("net.dns", "name", ALLOWED));
    assert!(h.event("net.dns", "answer", "nxdomain"));
    assert!(h.event("net.blocked", "dst", "93.184.216.34:80"));
    eprintln!("tap: {report}");
}

fn wait_child(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waitpid writes one int to `status`.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid: {}", io::Error::last_os_error());
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    }
}

/// The sandbox side, in the forked child. Never returns.
fn tap_child(chan: UnixStream) -> ! {
    let setup = std::panic::catch_unwind(child_setup)
        .unwrap_or_else(|_| Err("the child panicked while setting up".into()));
    match setup {
        Ok(fd) => {
            let sent = send_fd(&chan, Some(fd.as_raw_fd()));
            drop(fd);
            let report = match sent {
                Err(e) => format!("ERR sending the TAP fd: {e}"),
                Ok(()) => match std::panic::catch_unwind(child_checks) {
                    Ok(Ok(report)) => format!("OK {report}"),
                    Ok(Err(e)) => format!("ERR {e}"),
                    Err(_) => "ERR the child panicked".into(),
                },
            };
            let _ = (&chan).write_all(report.as_bytes());
        }
        Err(e) => {
            let _ = send_fd(&chan, None);
            let _ = (&chan).write_all(e.as_bytes());
        }
    }
    let _ = chan.shutdown(std::net::Shutdown::Write);
    let mut go = [0u8; 1];
    let _ = (&chan).read(&mut go);
    // SAFETY: _exit ends the process without running the parent's atexit
    // handlers or test harness code.
    unsafe { libc::_exit(0) }
}

fn child_setup() -> Result<OwnedFd, String> {
    // SAFETY: geteuid/getuid/getgid have no preconditions.
    let (euid, uid, gid) = unsafe { (libc::geteuid(), libc::getuid(), libc::getgid()) };
    let flags = if euid == 0 {
        libc::CLONE_NEWNET
    } else {
        libc::CLONE_NEWUSER | libc::CLONE_NEWNET
    };
    // SAFETY: unshare with constant flags; this process is single-threaded (just forked).
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(format!(
            "unshare({}) failed: {} (run as root, or enable unprivileged user namespaces)",
            if euid == 0 {
                "CLONE_NEWNET"
            } else {
                "CLONE_NEWUSER|CLONE_NEWNET"
            },
            io::Error::last_os_error()
        ));
    }
    if euid != 0 {
        let write = |path: &str, text: String| {
            std::fs::write(path, text).map_err(|e| format!("writing {path}: {e}"))
        };
        write("/proc/self/setgroups", "deny".into())?;
        write("/proc/self/uid_map", format!("0 {uid} 1"))?;
        write("/proc/self/gid_map", format!("0 {gid} 1"))?;
    }
    let fd = tap::create_tap(TAP_NAME).map_err(|e| e.to_string())?;
    tap::configure(
        TAP_NAME,
        SANDBOX_IP,
        stack::PREFIX_LEN,
        stack::MTU,
        GATEWAY_IP,
    )
    .map_err(|e| e.to_string())?;
    Ok(fd)
}

/// Runs in the namespace, against the stack on the other end of the TAP device.
fn child_checks() -> Result<String, String> {
    let udp = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("udp bind: {e}"))?;
    udp.set_read_timeout(Some(secs(2))).unwrap();
    let ask = |name: &str, id: u16| -> Result<Message, String> {
        let query = dns_query(id, name, RecordType::A);
        for _ in 0..5 {
            udp.send_to(&query, (GATEWAY_IP, 53))
                .map_err(|e| format!("sending a DNS query: {e}"))?;
            let mut buf = [0u8; 1500];
            if let Ok((n, from)) = udp.recv_from(&mut buf) {
                if from != (SocketAddrV4::new(GATEWAY_IP, 53)).into() {
                    return Err(format!("DNS answer from {from}"));
                }
                return Message::from_vec(&buf[..n]).map_err(|e| format!("DNS answer: {e}"));
            }
        }
        Err(format!("no DNS answer for {name} from {GATEWAY_IP}"))
    };
    let answer = ask(ALLOWED, 1)?;
    let ip = match answer.answers.first().map(|r| &r.data) {
        Some(RData::A(a)) => a.0,
        other => return Err(format!("no A record for {ALLOWED}: {other:?}")),
    };
    let denied = ask("evil.example", 2)?;
    if denied.metadata.response_code != ResponseCode::NXDomain {
        return Err(format!("evil.example: {:?}", denied.metadata.response_code));
    }

    // A direct IP is refused at once.
    let started = Instant::now();
    match TcpStream::connect_timeout(&(Ipv4Addr::new(93, 184, 216, 34), 80).into(), secs(5)) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
        other => {
            return Err(format!(
                "direct IP connect: expected refusal, got {other:?}"
            ));
        }
    }
    let refused_in = started.elapsed();

    // Echo through the stack with the kernel's TCP.
    let mut stream = TcpStream::connect_timeout(&(ip, 443).into(), secs(5))
        .map_err(|e| format!("connecting to {ip}:443: {e}"))?;
    stream.set_read_timeout(Some(secs(30))).unwrap();
    stream.set_write_timeout(Some(secs(30))).unwrap();
    let data = pattern(TAP_BULK, 3);
    let expected = Sha256::digest(&data);
    let mut writer = stream.try_clone().unwrap();
    let started = Instant::now();
    let sender = std::thread::spawn(move || -> io::Result<()> {
        writer.write_all(&data)?;
        writer.shutdown(std::net::Shutdown::Write)
    });
    let mut echoed = Vec::with_capacity(TAP_BULK);
    stream
        .read_to_end(&mut echoed)
        .map_err(|e| format!("reading the echo: {e}"))?;
    let elapsed = started.elapsed();
    sender
        .join()
        .map_err(|_| "writer panicked".to_string())?
        .map_err(|e| format!("writing: {e}"))?;
    if echoed.len() != TAP_BULK || Sha256::digest(&echoed) != expected {
        return Err(format!(
            "echo corrupted: {} of {TAP_BULK} bytes",
            echoed.len()
        ));
    }
    Ok(format!(
        "direct IP refused in {refused_in:?}; {} MiB echoed in {elapsed:?} ({:.0} MiB/s each way)",
        TAP_BULK >> 20,
        (TAP_BULK >> 20) as f64 / elapsed.as_secs_f64()
    ))
}

/// Sends one byte, with `fd` attached as SCM_RIGHTS if given.
fn send_fd(sock: &UnixStream, fd: Option<RawFd>) -> io::Result<()> {
    let mut byte = [if fd.is_some() { b'F' } else { b'E' }];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // Aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; all-zero is a valid empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_SPACE is arithmetic on its argument.
        let space = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: `msg` points at `control`, which has room for one cmsghdr
        // carrying one fd (`space` bytes); CMSG_* compute offsets inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        }
    }
    // SAFETY: `msg` and everything it points to live until the call returns.
    if unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) } != 1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives the byte [`send_fd`] sent: `Some(fd)` or `None` if it carried none.
fn recv_fd(sock: &UnixStream) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; all-zero is a valid empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: `msg` and the buffers it points to live until the call returns.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the child closed the socket without a word",
        ));
    }
    // SAFETY: recvmsg filled `control` and set msg_controllen; CMSG_FIRSTHDR
    // returns null when there is no control message.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    if byte[0] != b'F' || cmsg.is_null() {
        return Ok(None);
    }
    // SAFETY: `cmsg` points at a complete control header inside `control`.
    let (level, kind) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type) };
    if level != libc::SOL_SOCKET || kind != libc::SCM_RIGHTS {
        return Ok(None);
    }
    // SAFETY: an SCM_RIGHTS message carries at least one fd after the header.
    let raw = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>()) };
    // SAFETY: the kernel just installed `raw` in this process for us alone.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(raw) }))
}
