//! The stack task: smoltcp's interface and sockets, the connections handed
//! out as [`Flow`]s, and the loop that drives them.
//!
//! One loop iteration: read a batch of frames and feed them to smoltcp one
//! at a time (so a SYN's listener exists exactly when the SYN arrives), answer
//! DNS, move bytes between the sockets and the flows that became ready, let
//! smoltcp transmit, drop finished sockets, and write the frames out. Then
//! wait for the link, a flow, smoltcp's next timer, or a stop request.
//!
//! Readiness is per connection: one [`ConnWaker`] per connection is
//! registered with its smoltcp socket (data or space arrived, state changed)
//! and with its end of the flow's duplex pipe (the application read or
//! wrote). A woken connection is queued once; the loop services only queued
//! connections, so idle ones cost nothing.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddrV4;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, IpListenEndpoint};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::mpsc;

use super::device::FrameDevice;
use super::dns::{self, NameTable};
use super::events::{EventGate, fields};
use super::filter::{self, Dropped, Verdict};
use super::framing::TxBuf;
use super::link::{LinkIo, ReadEnd};
use super::{
    DNS_PORT, FLOW_BUFFER, Flow, GATEWAY_IP, GATEWAY_MAC, MAX_NAMES, MAX_TCP_CONNECTIONS,
    PREFIX_LEN, Shared, StackConfig, StackStats, is_fake_ip,
};

/// smoltcp socket buffers per connection. With window scaling this lets a
/// bulk transfer keep 256 KiB in flight each way; the memory is only touched
/// as it is used.
const TCP_RX_BUFFER: usize = 256 * 1024;
const TCP_TX_BUFFER: usize = 256 * 1024;
/// A handshake that does not complete, or a closed connection the sandbox
/// never finishes closing, is dropped after this long without a packet.
const TCP_LINGER: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(60);
/// Frames handled per loop iteration before the flows get their turn.
const FRAME_BATCH: usize = 256;
/// DNS socket: queued datagrams and their bytes, each way.
const DNS_PACKETS: usize = 64;
const DNS_BYTES: usize = 64 * 1024;
/// `net.blocked` / `net.dns` events per second, and how long an identical
/// event is not repeated.
const BLOCKED_PER_SECOND: u32 = 20;
const BLOCKED_REPEAT: Duration = Duration::from_secs(10);
const DNS_PER_SECOND: u32 = 50;
const DNS_REPEAT: Duration = Duration::from_secs(60);

/// Wakes the stack task for one connection.
struct ConnWaker {
    id: u64,
    queued: AtomicBool,
    shared: Arc<Shared>,
}

impl Wake for ConnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            lock(&self.shared.ready).push(self.id);
            self.shared.notify.notify_one();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One TCP connection, from the SYN until its socket is removed.
struct Conn {
    handle: SocketHandle,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    name: Option<String>,
    waker: Arc<ConnWaker>,
    cx_waker: Waker,
    /// Our end of the flow's pipe, once the connection is established and handed out.
    io: Option<DuplexStream>,
    /// The sandbox's FIN was passed on (the application reads EOF).
    fin_to_app: bool,
    /// The application finished writing; the socket was closed (FIN queued).
    fin_from_app: bool,
    /// The application dropped its end: whatever the sandbox still sends is refused.
    app_gone: bool,
}

pub(crate) struct Core {
    iface: Interface,
    sockets: SocketSet<'static>,
    dns_socket: SocketHandle,
    cfg: StackConfig,
    names: NameTable,
    conns: HashMap<u64, Conn>,
    /// (sandbox end, destination) of every connection, to recognise a retransmitted SYN.
    tuples: HashMap<(SocketAddrV4, SocketAddrV4), u64>,
    next_id: u64,
    flows: mpsc::Sender<Flow>,
    shared: Arc<Shared>,
    blocked: EventGate,
    dns_events: EventGate,
    ethertypes_seen: HashSet<u16>,
    start: std::time::Instant,
    now: SmolInstant,
    wall: std::time::Instant,
    stats: StackStats,
    reap: Vec<u64>,
    dns_scratch: Vec<u8>,
}

impl Core {
    pub(crate) fn new(cfg: StackConfig, flows: mpsc::Sender<Flow>, shared: Arc<Shared>) -> Self {
        let mut tx = TxBuf::new();
        let mut device = FrameDevice {
            rx: None,
            tx: &mut tx,
        };
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(GATEWAY_MAC)));
        config.random_seed = getrandom::u64().unwrap_or(0x5eed_c0de);
        let start = std::time::Instant::now();
        let mut iface = Interface::new(config, &mut device, SmolInstant::from_micros(0));
        iface.update_ip_addrs(|addrs| {
            // Capacity is at least one address; this is the only one.
            let _ = addrs.push(IpCidr::new(GATEWAY_IP.into(), PREFIX_LEN));
        });
        // Accept packets for every destination: which ones get a socket is
        // decided frame by frame in `ingest`.
        iface.set_any_ip(true);
        let _ = iface.routes_mut().add_default_ipv4_route(GATEWAY_IP);

        let mut sockets = SocketSet::new(Vec::new());
        let mut dns = udp::Socket::new(
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; DNS_PACKETS],
                vec![0; DNS_BYTES],
            ),
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; DNS_PACKETS],
                vec![0; DNS_BYTES],
            ),
        );
        dns.bind(IpListenEndpoint {
            addr: Some(GATEWAY_IP.into()),
            port: DNS_PORT,
        })
        .expect("binding a fresh UDP socket to a fixed endpoint");
        let dns_socket = sockets.add(dns);

        let blocked = EventGate::new(
            "net.blocked",
            cfg.emit.clone(),
            BLOCKED_PER_SECOND,
            BLOCKED_REPEAT,
        );
        let dns_events = EventGate::new("net.dns", cfg.emit.clone(), DNS_PER_SECOND, DNS_REPEAT);
        Core {
            iface,
            sockets,
            dns_socket,
            cfg,
            names: NameTable::new(MAX_NAMES),
            conns: HashMap::new(),
            tuples: HashMap::new(),
            next_id: 1,
            flows,
            shared,
            blocked,
            dns_events,
            ethertypes_seen: HashSet::new(),
            start,
            now: SmolInstant::from_micros(0),
            wall: start,
            stats: StackStats::default(),
            reap: Vec::new(),
            dns_scratch: Vec::with_capacity(1500),
        }
    }

    fn tick(&mut self) {
        self.wall = std::time::Instant::now();
        self.now =
            SmolInstant::from_micros(self.wall.duration_since(self.start).as_micros() as i64);
    }

    /// One frame from the sandbox.
    fn ingest(&mut self, frame: &[u8], tx: &mut TxBuf) {
        self.stats.frames_in += 1;
        match filter::classify(frame) {
            Verdict::Pass => self.feed(frame, tx),
            Verdict::TcpSyn { src, dst } => self.on_syn(frame, src, dst, tx),
            Verdict::Drop(dropped) => {
                self.stats.frames_dropped += 1;
                self.report_drop(dropped);
            }
        }
    }

    fn feed(&mut self, frame: &[u8], tx: &mut TxBuf) {
        let mut device = FrameDevice {
            rx: Some(frame),
            tx,
        };
        self.iface
            .poll_ingress_single(self.now, &mut device, &mut self.sockets);
    }

    fn on_syn(&mut self, frame: &[u8], src: SocketAddrV4, dst: SocketAddrV4, tx: &mut TxBuf) {
        if self.tuples.contains_key(&(src, dst)) {
            // A retransmitted SYN: the existing socket answers it.
            return self.feed(frame, tx);
        }
        let name = match self.admit(dst) {
            Ok(name) => name,
            Err(reason) => {
                // No listener: smoltcp answers the SYN with a RST.
                self.refuse(dst, reason);
                return self.feed(frame, tx);
            }
        };
        if self.conns.len() >= MAX_TCP_CONNECTIONS {
            self.refuse(dst, "too-many-connections");
            return self.feed(frame, tx);
        }
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; TCP_RX_BUFFER]),
            tcp::SocketBuffer::new(vec![0; TCP_TX_BUFFER]),
        );
        // We relay whatever the application writes as soon as it writes it;
        // coalescing is the application's business.
        socket.set_nagle_enabled(false);
        // ACK at once: a frame batch already coalesces the ACKs of a bulk
        // transfer, and a delayed ACK would stall a sandbox client whose
        // Nagle waits for it (a request written in two pieces).
        socket.set_ack_delay(None);
        socket.set_timeout(Some(TCP_LINGER));
        if socket
            .listen(IpListenEndpoint {
                addr: Some((*dst.ip()).into()),
                port: dst.port(),
            })
            .is_err()
        {
            // Port 0: nothing can listen there.
            self.refuse(dst, "invalid-port");
            return self.feed(frame, tx);
        }
        let handle = self.sockets.add(socket);
        self.feed(frame, tx);
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        if socket.state() == tcp::State::Listen {
            // smoltcp did not take the SYN (bad checksum, ...): no connection.
            self.sockets.remove(handle);
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let waker = Arc::new(ConnWaker {
            id,
            queued: AtomicBool::new(false),
            shared: self.shared.clone(),
        });
        let cx_waker = Waker::from(waker.clone());
        socket.register_recv_waker(&cx_waker);
        socket.register_send_waker(&cx_waker);
        self.tuples.insert((src, dst), id);
        self.conns.insert(
            id,
            Conn {
                handle,
                src,
                dst,
                name,
                waker,
                cx_waker,
                io: None,
                fin_to_app: false,
                fin_from_app: false,
                app_gone: false,
            },
        );
    }

    /// Whether a connection to `dst` may be accepted: `Ok` with the name it
    /// stands for, or `Err` with the reason it may not.
    fn admit(&self, dst: SocketAddrV4) -> Result<Option<String>, &'static str> {
        let ip = *dst.ip();
        if is_fake_ip(ip) {
            match self.names.name_of(ip) {
                Some(name) if (self.cfg.dns_allows)(name) => Ok(Some(name.to_owned())),
                Some(_) => Err("name-denied"),
                None => Err("unknown-fake-ip"),
            }
        } else if (self.cfg.direct_allows)(ip, dst.port()) {
            Ok(None)
        } else {
            Err("direct-ip")
        }
    }

    fn refuse(&mut self, dst: SocketAddrV4, reason: &'static str) {
        self.stats.tcp_refused += 1;
        self.block_event("tcp", dst.to_string(), reason);
    }

    fn block_event(&mut self, proto: &'static str, dst: String, reason: &'static str) {
        let key = format!("{proto} {dst} {reason}");
        let f = fields([
            ("proto", proto.to_owned()),
            ("dst", dst),
            ("reason", reason.to_owned()),
        ]);
        self.blocked.offer(self.wall, key, f);
    }

    fn report_drop(&mut self, dropped: Dropped) {
        if dropped.refused() {
            self.stats.packets_refused += 1;
        }
        if let Dropped::Ethertype(t) = dropped {
            // One event per kind of non-IPv4 traffic (IPv6 chatter is constant).
            if self.ethertypes_seen.len() >= 64 || !self.ethertypes_seen.insert(t) {
                return;
            }
        }
        if let Some((proto, dst, reason)) = dropped.event() {
            self.block_event(proto, dst, reason);
        }
    }

    /// Answers the DNS queries smoltcp received.
    fn serve_dns(&mut self) {
        let socket = self.sockets.get_mut::<udp::Socket>(self.dns_socket);
        while let Ok((data, meta)) = socket.recv() {
            self.dns_scratch.clear();
            self.dns_scratch.extend_from_slice(data);
            let endpoint = meta.endpoint;
            let allows = &*self.cfg.dns_allows;
            let Some(reply) = dns::answer(&self.dns_scratch, allows, &mut self.names) else {
                continue;
            };
            self.stats.dns_queries += 1;
            if reply.refused {
                self.stats.names_refused += 1;
            }
            // A full send queue drops the answer; the resolver retries.
            let _ = socket.send_slice(&reply.bytes, endpoint);
            if let Some(log) = reply.log {
                let key = format!("{} {} {}", log.name, log.qtype, log.answer);
                let f = fields([
                    ("name", log.name),
                    ("qtype", log.qtype),
                    ("answer", log.answer),
                ]);
                self.dns_events.offer(self.wall, key, f);
            }
        }
    }

    /// Services every connection whose waker fired.
    fn service_ready(&mut self) {
        let ready = std::mem::take(&mut *lock(&self.shared.ready));
        for id in ready {
            self.service(id);
        }
    }

    fn service(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.waker.queued.store(false, Ordering::Release);
        let socket = self.sockets.get_mut::<tcp::Socket>(conn.handle);
        socket.register_recv_waker(&conn.cx_waker);
        socket.register_send_waker(&conn.cx_waker);
        if conn.io.is_none() {
            match socket.state() {
                tcp::State::Listen | tcp::State::SynReceived => return,
                tcp::State::Established | tcp::State::CloseWait => {
                    let (ours, theirs) = tokio::io::duplex(FLOW_BUFFER);
                    let flow = Flow {
                        id,
                        src: conn.src,
                        dst: conn.dst,
                        name: conn.name.clone(),
                        io: theirs,
                    };
                    match self.flows.try_send(flow) {
                        Ok(()) => {
                            self.stats.flows += 1;
                            socket.set_timeout(None);
                            conn.io = Some(ours);
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            socket.abort();
                            self.stats.tcp_refused += 1;
                            let dst = conn.dst.to_string();
                            self.block_event("tcp", dst, "backlog-full");
                            self.reap.push(id);
                            return;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            socket.abort();
                            self.reap.push(id);
                            return;
                        }
                    }
                }
                // Closed or reset before it was ever handed out.
                _ => {
                    self.reap.push(id);
                    return;
                }
            }
        }
        pump(socket, conn);
        if finished(socket, conn) {
            self.reap.push(id);
        }
    }

    /// Removes the sockets of finished connections (after their last packet went out).
    fn reap(&mut self) {
        let mut again = Vec::new();
        for id in std::mem::take(&mut self.reap) {
            let Some(conn) = self.conns.get(&id) else {
                continue;
            };
            let socket = self.sockets.get::<tcp::Socket>(conn.handle);
            let done = match socket.state() {
                // `local_endpoint` is gone once the final RST was sent.
                tcp::State::Closed => socket.local_endpoint().is_none(),
                // The final ACK went out in the poll before this call; a
                // retransmitted FIN from the sandbox would get a RST, which
                // it accepts in LAST-ACK. The sandbox picks fresh ports, so
                // the 4-tuple is not reused while TIME-WAIT would matter.
                tcp::State::TimeWait => true,
                _ => false,
            };
            if done {
                let conn = self.conns.remove(&id).expect("looked up above");
                self.sockets.remove(conn.handle);
                self.tuples.remove(&(conn.src, conn.dst));
            } else if !again.contains(&id) {
                again.push(id);
            }
        }
        // Not done yet (an RST still to send): looked at again next time.
        self.reap = again;
    }

    fn abort_all(&mut self) {
        for conn in self.conns.values() {
            self.sockets.get_mut::<tcp::Socket>(conn.handle).abort();
        }
    }

    /// Lets smoltcp transmit what the sockets have queued.
    fn egress(&mut self, tx: &mut TxBuf) {
        let mut device = FrameDevice { rx: None, tx };
        self.iface.poll(self.now, &mut device, &mut self.sockets);
    }

    fn publish_stats(&mut self, tx: &TxBuf) {
        self.stats.frames_out = tx.frames();
        self.stats.sockets = self.sockets.iter().count() as u64;
        self.stats.events_suppressed = self.blocked.suppressed + self.dns_events.suppressed;
        self.shared.publish(&self.stats);
    }

    /// How long smoltcp can wait before it needs polling again (timers).
    fn poll_delay(&mut self) -> Option<Duration> {
        self.iface
            .poll_delay(self.now, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
    }
}

/// Moves bytes between a connection's socket and its flow pipe, both ways,
/// and passes on FINs and closes.
fn pump(socket: &mut tcp::Socket, conn: &mut Conn) {
    let Some(io) = conn.io.as_mut() else {
        return;
    };
    let mut cx = Context::from_waker(&conn.cx_waker);

    // Sandbox -> application.
    if !conn.fin_to_app {
        while socket.can_recv() {
            let result = socket.recv(|data| match Pin::new(&mut *io).poll_write(&mut cx, data) {
                Poll::Ready(Ok(n)) => (n, Poll::Ready(Ok(n))),
                Poll::Ready(Err(e)) => (0, Poll::Ready(Err(e))),
                Poll::Pending => (0, Poll::Pending),
            });
            match result {
                Ok(Poll::Ready(Ok(n))) if n > 0 => continue,
                Ok(Poll::Ready(Err(_))) => {
                    // The application dropped its end while the sandbox sends.
                    socket.abort();
                    return;
                }
                _ => break,
            }
        }
        if !socket.may_recv() && socket.recv_queue() == 0 {
            // EOF for the reader; the application can still write.
            let _ = Pin::new(&mut *io).poll_shutdown(&mut cx);
            conn.fin_to_app = true;
        }
    }

    // Application -> sandbox.
    if !conn.fin_from_app {
        while socket.can_send() {
            let result = socket.send(|space| {
                let mut buf = ReadBuf::new(space);
                match Pin::new(&mut *io).poll_read(&mut cx, &mut buf) {
                    Poll::Ready(Ok(())) => {
                        let n = buf.filled().len();
                        (n, Poll::Ready(n))
                    }
                    // A duplex pipe does not fail reads; treat it as EOF.
                    Poll::Ready(Err(_)) => (0, Poll::Ready(0)),
                    Poll::Pending => (0, Poll::Pending),
                }
            });
            match result {
                Ok(Poll::Ready(0)) => {
                    // EOF: the application shut down its write side, or dropped the stream.
                    conn.fin_from_app = true;
                    let dropped = !conn.fin_to_app
                        && matches!(
                            Pin::new(&mut *io).poll_write(&mut cx, &[]),
                            Poll::Ready(Err(_))
                        );
                    if dropped {
                        conn.app_gone = true;
                        if socket.recv_queue() > 0 {
                            // Like close(2) with unread data: reset.
                            socket.abort();
                            return;
                        }
                    }
                    socket.close();
                    socket.set_timeout(Some(TCP_LINGER));
                    break;
                }
                Ok(Poll::Ready(_)) => continue,
                _ => break,
            }
        }
    }
    if conn.app_gone && socket.recv_queue() > 0 {
        socket.abort();
    }
}

/// Whether nothing more will happen on this connection.
/// Data the application has not read yet keeps a closed socket around
/// (smoltcp empties the buffer itself when the sandbox resets).
fn finished(socket: &tcp::Socket, conn: &Conn) -> bool {
    match socket.state() {
        tcp::State::Closed | tcp::State::TimeWait => socket.recv_queue() == 0 || conn.app_gone,
        _ => false,
    }
}

/// Runs the stack until the link closes, fails, or a stop is requested.
pub(crate) async fn run(mut link: LinkIo, mut core: Core) -> io::Result<()> {
    match drive(&mut link, &mut core).await {
        Err(e) if peer_gone(&e) => Ok(()),
        other => other,
    }
}

/// The sandbox went away (its end of the stream closed, or its network
/// namespace and with it the TAP device): a normal end, not an error.
fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    ) || e.raw_os_error() == Some(libc::EBADFD)
}

async fn drive(link: &mut LinkIo, core: &mut Core) -> io::Result<()> {
    let mut tx = TxBuf::new();
    let shared = core.shared.clone();
    loop {
        if shared.stopping.load(Ordering::Acquire) {
            // Tell the sandbox its connections are gone (best effort: one RST each).
            core.tick();
            core.abort_all();
            core.egress(&mut tx);
            let _ = link.flush(&mut tx);
            return Ok(());
        }
        core.tick();
        let end = link.read_frames(FRAME_BATCH, |frame| core.ingest(frame, &mut tx))?;
        core.serve_dns();
        core.service_ready();
        core.egress(&mut tx);
        // smoltcp may have woken connections while transmitting (states, ACKed space).
        core.service_ready();
        core.egress(&mut tx);
        core.reap();
        // Published before the frames go out, so that whoever sees a frame's
        // effect also sees the counters that led to it.
        core.publish_stats(&tx);
        core.stats.frames_dropped += link.flush(&mut tx)? + std::mem::take(&mut tx.discarded);
        match end {
            ReadEnd::Closed => return Ok(()),
            ReadEnd::Budget => {
                // More frames are waiting: let other tasks run, then go on.
                tokio::task::yield_now().await;
                continue;
            }
            ReadEnd::Drained => {}
        }
        let delay = core.poll_delay();
        let tx_pending = !tx.is_empty();
        tokio::select! {
            r = link.readable() => r?,
            r = link.writable(), if tx_pending => r?,
            _ = shared.notify.notified() => {}
            _ = tokio::time::sleep(delay.unwrap_or(Duration::ZERO)), if delay.is_some() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::filter::tests::{tcp_frame, tcp_frame_from};
    use smoltcp::wire::TcpControl;
    use std::net::Ipv4Addr;
    use std::sync::Mutex as StdMutex;

    type Events = Arc<StdMutex<Vec<(String, serde_json::Map<String, serde_json::Value>)>>>;

    fn core() -> (Core, mpsc::Receiver<Flow>, Events) {
        let events: Events = Arc::default();
        let sink = events.clone();
        let cfg = StackConfig::new(
            Arc::new(move |k, f| sink.lock().unwrap().push((k.to_owned(), f))),
            |name| name == "example.com",
        );
        let (tx, rx) = mpsc::channel(4);
        (Core::new(cfg, tx, Arc::default()), rx, events)
    }

    #[test]
    fn syn_to_unknown_addresses_is_refused_with_rst_and_one_event() {
        let (mut core, _rx, events) = core();
        let mut tx = TxBuf::new();
        core.tick();
        let dst = SocketAddrV4::new(Ipv4Addr::new(93, 184, 216, 34), 80);
        for _ in 0..5 {
            core.ingest(&tcp_frame(dst, TcpControl::Syn, false), &mut tx);
        }
        assert_eq!(core.conns.len(), 0);
        assert_eq!(core.sockets.iter().count(), 1, "only the DNS socket");
        assert_eq!(core.stats.tcp_refused, 5);
        let events = events.lock().unwrap();
        assert_eq!(events.len(), 1, "repeats are deduplicated: {events:?}");
        assert_eq!(events[0].0, "net.blocked");
        assert_eq!(events[0].1["dst"], "93.184.216.34:80");
        assert_eq!(events[0].1["reason"], "direct-ip");
        // smoltcp answered each SYN (with a RST; no ARP needed: the neighbour
        // is unknown, so nothing may go out yet, but nothing was accepted either).
        drop(events);
        let unknown_fake = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 9), 443);
        core.ingest(&tcp_frame(unknown_fake, TcpControl::Syn, false), &mut tx);
        assert_eq!(core.conns.len(), 0);
    }

    #[test]
    fn syn_to_a_handed_out_fake_ip_gets_a_socket() {
        let (mut core, _rx, events) = core();
        let mut tx = TxBuf::new();
        core.tick();
        let ip = core.names.assign("example.com").unwrap();
        let dst = SocketAddrV4::new(ip, 443);
        core.ingest(&tcp_frame(dst, TcpControl::Syn, false), &mut tx);
        assert_eq!(core.conns.len(), 1);
        let conn = core.conns.values().next().unwrap();
        assert_eq!(conn.name.as_deref(), Some("example.com"));
        // The retransmitted SYN does not create a second socket.
        core.ingest(&tcp_frame(dst, TcpControl::Syn, false), &mut tx);
        assert_eq!(core.conns.len(), 1);
        assert_eq!(core.sockets.iter().count(), 2);
        assert!(events.lock().unwrap().is_empty());
        // A name the policy no longer allows is refused even with its fake IP.
        let denied = core.names.assign("gone.example").unwrap();
        core.ingest(
            &tcp_frame(SocketAddrV4::new(denied, 443), TcpControl::Syn, false),
            &mut tx,
        );
        assert_eq!(core.conns.len(), 1);
        assert_eq!(events.lock().unwrap()[0].1["reason"], "name-denied");
    }

    #[test]
    fn connection_limit_refuses_further_syns() {
        let (mut core, _rx, events) = core();
        let mut tx = TxBuf::new();
        core.tick();
        let ip = core.names.assign("example.com").unwrap();
        let dst = SocketAddrV4::new(ip, 443);
        for port in 0..MAX_TCP_CONNECTIONS as u16 + 5 {
            core.ingest(
                &tcp_frame_from(10_000 + port, dst, TcpControl::Syn, false),
                &mut tx,
            );
        }
        assert_eq!(core.conns.len(), MAX_TCP_CONNECTIONS);
        assert_eq!(core.stats.tcp_refused, 5);
        let events = events.lock().unwrap();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].1["reason"], "too-many-connections");
    }
}
