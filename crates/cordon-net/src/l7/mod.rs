//! The L7 gateway: what happens to each TCP connection the sandbox opens.
//!
//! For every connection ([`Gateway::handle`]) the gateway
//!
//! 1. decides on the host (the DNS name the sandbox resolved, or the IP it
//!    dialed): `deny` refuses, `passthrough` forwards raw TCP, `allow` goes on,
//!    anything else follows `on_unknown` (refuse, or park the connection until
//!    [`Gateway::decide`] or `ask_timeout`);
//! 2. sniffs the first bytes: a TLS ClientHello is terminated with a leaf
//!    certificate from the per-session CA, for the connection's own name only
//!    (an SNI naming another host is refused: no domain fronting); plaintext
//!    HTTP/1.x is served as is; anything else is refused;
//! 3. serves HTTP/1.1 and HTTP/2 (by ALPN) with hyper, checking every request
//!    (`Host`/`:authority` must name the connection's host, no `CONNECT`, no
//!    ambiguous framing), applying the first matching `[[rule]]` (the
//!    strictest one over the readings a server may take of the path and
//!    method), body and rate limits, and swapping secret placeholders for
//!    real values where the policy allows it, over TLS only (and refusing
//!    requests that carry a placeholder to any other host);
//! 4. forwards the request to the real server over a pooled connection
//!    (HTTP/1.1 or HTTP/2, independent of the sandbox's side) after
//!    resolving the name itself and refusing private addresses;
//! 5. streams the response back, scrubbing real secret values out of headers
//!    and body; WebSocket upgrades are bridged, with secret values in the
//!    server-to-sandbox direction replaced by `*` masks of the same length
//!    (frame lengths must not change; a value split across two frames, or
//!    inside a compressed frame, is not seen: the gateway strips
//!    `Sec-WebSocket-Extensions` so compression is not negotiated).
//!
//! Everything the gateway does is reported through [`crate::Emit`]:
//! `net.connect`, `net.request`, `net.blocked`, `net.pending`,
//! `secret.injected`, `secret.blocked`. Values of secrets never appear in
//! events, errors or logs.
//!
//! What it does not do: HTTP/3 (QUIC never reaches it: the stack passes no
//! UDP), `CONNECT` tunnels (including HTTP/2 extended CONNECT WebSockets), or
//! recognising placeholders hidden by encodings other than percent-encoding
//! and Basic credentials.

mod addr;
mod ask;
mod body;
mod ca;
mod io;
mod proxy;
mod ratelimit;
mod rules;
mod scrub;
mod secrets;
mod upstream;
mod ws;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

pub use ask::PendingRequest;
pub use secrets::SecretConfig;

use ask::{Answer, AskQueue};
use ca::SessionCa;
use io::{ByteCounts, Metered, Rewind};
use ratelimit::RateLimiter;
use rules::HostDecision;
use secrets::Secrets;
use upstream::{Connector, Upstream, normalize_name};

/// Timeouts and size limits for what the sandbox sends. The defaults suit
/// interactive agents; tests shorten them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Time for the first bytes of a connection to arrive (protocol sniffing).
    pub first_bytes_timeout: Duration,
    /// Time for a TLS handshake, on either side.
    pub tls_handshake_timeout: Duration,
    /// Time for an HTTP/1.1 request head to arrive, from when the gateway
    /// starts waiting for it (this also bounds idle keep-alive).
    pub header_read_timeout: Duration,
    /// A connection on which nothing moved for this long is closed.
    pub idle_timeout: Duration,
    /// Time to resolve and connect to an upstream server.
    pub upstream_connect_timeout: Duration,
    /// Time from sending a request upstream to its response head.
    pub upstream_response_timeout: Duration,
    /// Largest request head (HTTP/1.1 read buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub h2_max_concurrent_streams: u32,
    /// Connections [`Gateway::serve`] handles at once; more wait.
    pub max_connections: usize,
    /// Requests forwarded upstream at once, over all connections (each may
    /// need its own socket: HTTP/2 streams from the sandbox multiply); more
    /// wait, for at most `upstream_response_timeout`. A request holds its slot
    /// until its response body (or WebSocket) is done.
    pub max_upstream_requests: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            first_bytes_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(600),
            upstream_connect_timeout: Duration::from_secs(10),
            upstream_response_timeout: Duration::from_secs(300),
            max_header_bytes: 64 << 10,
            h2_max_concurrent_streams: 100,
            max_connections: 1024,
            max_upstream_requests: 512,
        }
    }
}

/// What a gateway enforces for one session.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The session id (named in the CA certificate).
    pub session: String,
    /// `[network]`; `upstream_ca` paths must already be absolute.
    pub network: cordon_policy::Network,
    /// `[[rule]]`, in file order.
    pub rules: Vec<cordon_policy::Rule>,
    /// `[secrets.*]` with their placeholders.
    pub secrets: Vec<SecretConfig>,
    /// Lifetime of the session CA and its leaf certificates.
    pub ca_validity: Duration,
    /// Timeouts and size limits.
    pub limits: Limits,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            session: String::new(),
            network: cordon_policy::Network::default(),
            rules: Vec::new(),
            secrets: Vec::new(),
            ca_validity: Duration::from_secs(24 * 3600),
            limits: Limits::default(),
        }
    }
}

/// Why a gateway could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The session CA could not be made.
    #[error("cannot set up the session certificate authority: {0}")]
    Ca(String),
    /// TLS could not be configured.
    #[error("cannot configure TLS: {0}")]
    Tls(String),
    /// An `upstream_ca` file is unusable.
    #[error(
        "[network] upstream_ca {}: {reason}; it must be a PEM file of CA certificates",
        path.display()
    )]
    UpstreamCa {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An `allow_private` entry is not an address range.
    #[error(
        "[network] allow_private entry {0:?} is not an address range; write one like \"10.0.0.0/8\""
    )]
    AllowPrivate(String),
    /// The gateway's runtime could not start.
    #[error("cannot start the gateway: {0}")]
    Runtime(String),
    /// A secret's value could not be read (the value itself is never shown).
    #[error("secret {name} ({from}): {reason}")]
    Secret {
        /// The secret's name.
        name: String,
        /// Where its value comes from (`env:VAR`, `file:PATH`, `command:…`).
        from: String,
        /// What went wrong.
        reason: String,
    },
}

/// Counters since the gateway started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GatewayStats {
    /// Connections handed to the gateway.
    pub connections: u64,
    /// Requests forwarded upstream.
    pub requests_allowed: u64,
    /// Requests refused.
    pub requests_blocked: u64,
    /// Connections refused before any request: by the gateway (host not
    /// allowed or denied, not TLS or HTTP, TLS naming another host, ask
    /// refused, ... every connection-level `net.blocked`) and, once
    /// [`with_stack`](Self::with_stack) added them, by the stack (a direct
    /// IP, a fake address never handed out, connection limits).
    pub connections_blocked: u64,
    /// DNS queries answered NXDOMAIN (from the stack's counters).
    pub names_refused: u64,
    /// UDP, ICMP and other IPv4 packets dropped by policy (from the stack's
    /// counters).
    pub packets_refused: u64,
    /// Placeholders replaced by real values.
    pub secrets_injected: u64,
    /// Bytes from the sandbox (after TLS).
    pub bytes_up: u64,
    /// Bytes to the sandbox (after TLS).
    pub bytes_down: u64,
}

impl GatewayStats {
    /// These counters plus the refusals of the stack in front of the gateway
    /// (what the sandbox tried that never became a connection).
    pub fn with_stack(mut self, stack: &crate::stack::StackStats) -> GatewayStats {
        self.connections_blocked += stack.tcp_refused;
        self.names_refused += stack.names_refused;
        self.packets_refused += stack.packets_refused;
        self
    }
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    connections_blocked: AtomicU64,
    requests_allowed: AtomicU64,
    requests_blocked: AtomicU64,
    secrets_injected: AtomicU64,
    bytes: Arc<ByteCounts>,
}

/// Request bodies as the pooled client takes them.
type ProxyBody = UnsyncBoxBody<Bytes, body::BoxError>;

/// The per-session L7 gateway; share it with `Arc`.
pub struct Gateway {
    network: cordon_policy::Network,
    rules: Vec<cordon_policy::Rule>,
    limits: Limits,
    emit: crate::Emit,
    ca: SessionCa,
    secrets: Arc<Secrets>,
    upstream: Arc<Upstream>,
    client: Client<Connector, ProxyBody>,
    upgrade_client: Client<Connector, ProxyBody>,
    asks: AskQueue,
    rate: RateLimiter,
    /// One permit per request in flight upstream.
    upstream_slots: Arc<tokio::sync::Semaphore>,
    counters: Counters,
}

/// What the first bytes of a connection look like.
#[derive(Debug, PartialEq, Eq)]
enum Sniffed {
    Tls,
    Http,
    Other,
}

/// Reads until the protocol is clear (at most 16 bytes).
async fn sniff<S: AsyncRead + Unpin>(io: &mut S) -> std::io::Result<(Sniffed, Bytes)> {
    let mut seen = Vec::with_capacity(16);
    let mut buf = [0u8; 16];
    loop {
        let want = 16 - seen.len();
        let n = io.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        seen.extend_from_slice(&buf[..n]);
        if let Some(kind) = classify(&seen) {
            return Ok((kind, Bytes::from(seen)));
        }
        if seen.len() >= 16 {
            return Ok((Sniffed::Other, Bytes::from(seen)));
        }
    }
}

/// `None` while more bytes are needed.
fn classify(seen: &[u8]) -> Option<Sniffed> {
    match seen {
        [] => None,
        [0x16] => None,
        [0x16, 0x03, ..] => Some(Sniffed::Tls),
        [0x16, ..] => Some(Sniffed::Other),
        _ => {
            for (i, b) in seen.iter().enumerate() {
                match b {
                    b' ' if i >= 3 => return Some(Sniffed::Http),
                    b'A'..=b'Z' => {}
                    _ => return Some(Sniffed::Other),
                }
            }
            None
        }
    }
}

fn obj(v: Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

impl Gateway {
    /// Makes the session CA, loads the host's root certificates and
    /// `upstream_ca`, and reads `env:` and `file:` secrets (failing, with the
    /// secret and its source named, when one is missing).
    pub fn new(cfg: GatewayConfig, emit: crate::Emit) -> Result<Arc<Gateway>, GatewayError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca = SessionCa::new(&cfg.session, cfg.ca_validity, provider.clone())
            .map_err(|e| GatewayError::Ca(e.to_string()))?;
        let secrets = Arc::new(Secrets::load(&cfg.secrets)?);
        let upstream = Arc::new(Upstream::new(
            &cfg.network,
            provider,
            cfg.limits.upstream_connect_timeout,
        )?);
        let client = |h1_only: bool| {
            Client::builder(TokioExecutor::new())
                .timer(TokioTimer::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_max_idle_per_host(if h1_only { 0 } else { 16 })
                .build(Connector {
                    upstream: upstream.clone(),
                    h1_only,
                })
        };
        let upstream_slots = Arc::new(tokio::sync::Semaphore::new(
            cfg.limits.max_upstream_requests.max(1),
        ));
        Ok(Arc::new(Gateway {
            client: client(false),
            upgrade_client: client(true),
            network: cfg.network,
            rules: cfg.rules,
            limits: cfg.limits,
            emit,
            ca,
            secrets,
            upstream,
            asks: AskQueue::default(),
            rate: RateLimiter::default(),
            upstream_slots,
            counters: Counters::default(),
        }))
    }

    /// The session CA certificate, PEM; install it in the sandbox's trust
    /// stores.
    pub fn ca_cert_pem(&self) -> String {
        self.ca.cert_pem().to_string()
    }

    /// Whether the gateway's DNS should answer for `name`: an allow or
    /// passthrough entry covers it on some port and no port-less deny entry
    /// does, or `on_unknown = "ask"` (the connection is asked about later).
    pub fn dns_allows(&self, name: &str) -> bool {
        rules::dns_allows(&self.network, &normalize_name(name))
    }

    /// Whether a connection straight to `ip:port` (no DNS name) may reach the
    /// gateway: only when an allow or passthrough entry names that address.
    pub fn direct_allows(&self, ip: Ipv4Addr, port: u16) -> bool {
        rules::direct_allows(&self.network, ip, port)
    }

    /// Handles one connection from the sandbox to `dst`, which the sandbox
    /// reached as `name` (`None`: it dialed `dst`'s address directly).
    /// Returns when the connection is over; never panics on what the sandbox
    /// sends.
    pub async fn handle<S>(
        self: &Arc<Self>,
        id: u64,
        name: Option<String>,
        dst: SocketAddrV4,
        io: S,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.counters.connections.fetch_add(1, Ordering::Relaxed);
        let host = match &name {
            Some(n) => normalize_name(n),
            None => dst.ip().to_string(),
        };
        let port = dst.port();
        match rules::decide_host(&self.network, &host, port) {
            HostDecision::Deny { pattern } => {
                let (reason, detail) = match &pattern {
                    Some(p) => (
                        "host-denied",
                        format!("{host}:{port} matches deny entry {p:?}"),
                    ),
                    None => (
                        "host-not-allowed",
                        format!("{host}:{port} is not in [network] allow"),
                    ),
                };
                self.connection_blocked(id, &host, port, reason, pattern.map(Value::from), detail);
                return;
            }
            HostDecision::Ask => {
                let info = PendingRequest {
                    id: 0,
                    kind: "connect",
                    host: host.clone(),
                    port,
                    method: None,
                    path: None,
                    since: 0,
                    rule: "on_unknown".into(),
                };
                let (answer, _) = self
                    .asks
                    .ask(info, self.network.ask_timeout, |p| self.announce(p))
                    .await;
                if let Some((reason, detail)) = ask_refusal(answer) {
                    self.connection_blocked(
                        id,
                        &host,
                        port,
                        reason,
                        Some("on_unknown".into()),
                        detail,
                    );
                    return;
                }
            }
            HostDecision::Passthrough => return self.passthrough(id, &host, port, io).await,
            HostDecision::Allow => {}
        }
        self.serve_l7(id, host, port, io).await;
    }

    /// [`handle`](Self::handle) for a connection from the stack.
    pub async fn handle_flow(self: &Arc<Self>, flow: crate::stack::Flow) {
        self.handle(flow.id, flow.name, flow.dst, flow.io).await;
    }

    /// Handles every flow from `flows`, at most `limits.max_connections` at
    /// once (further flows wait). Returns when the channel closes.
    pub async fn serve(
        self: Arc<Self>,
        mut flows: tokio::sync::mpsc::Receiver<crate::stack::Flow>,
    ) {
        let slots = Arc::new(tokio::sync::Semaphore::new(
            self.limits.max_connections.max(1),
        ));
        while let Some(flow) = flows.recv().await {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let gw = self.clone();
            tokio::spawn(async move {
                gw.handle_flow(flow).await;
                drop(permit);
            });
        }
    }

    /// Connections and requests waiting for a decision, oldest first.
    pub fn pending(&self) -> Vec<PendingRequest> {
        self.asks.pending()
    }

    /// Answers a pending question; false when there is no such id (already
    /// answered, timed out, or never asked). An answer about a connection
    /// holds for later connections to the same host and port.
    pub fn decide(&self, id: u64, allow: bool) -> bool {
        self.asks.decide(id, allow)
    }

    /// Counters since the gateway started (the stack's refusals are not
    /// among them: see [`GatewayStats::with_stack`]).
    pub fn stats(&self) -> GatewayStats {
        let c = &self.counters;
        GatewayStats {
            connections: c.connections.load(Ordering::Relaxed),
            requests_allowed: c.requests_allowed.load(Ordering::Relaxed),
            requests_blocked: c.requests_blocked.load(Ordering::Relaxed),
            connections_blocked: c.connections_blocked.load(Ordering::Relaxed),
            names_refused: 0,
            packets_refused: 0,
            secrets_injected: c.secrets_injected.load(Ordering::Relaxed),
            bytes_up: c.bytes.up.load(Ordering::Relaxed),
            bytes_down: c.bytes.down.load(Ordering::Relaxed),
        }
    }

    fn event(&self, kind: &str, fields: Value) {
        (self.emit)(kind, obj(fields));
    }

    fn announce(&self, p: &PendingRequest) {
        let mut fields = obj(json!({
            "id": p.id,
            "kind": p.kind,
            "host": p.host,
            "port": p.port,
            "rule": p.rule,
            "timeout_s": self.network.ask_timeout.as_secs(),
        }));
        if let Some(m) = &p.method {
            fields.insert("method".into(), m.clone().into());
        }
        if let Some(path) = &p.path {
            fields.insert("path".into(), path.clone().into());
        }
        (self.emit)("net.pending", fields);
    }

    fn connection_blocked(
        &self,
        id: u64,
        host: &str,
        port: u16,
        reason: &str,
        rule: Option<Value>,
        detail: String,
    ) {
        self.counters
            .connections_blocked
            .fetch_add(1, Ordering::Relaxed);
        let mut fields = obj(json!({
            "connection": id,
            "host": host,
            "port": port,
            "reason": reason,
            "detail": detail,
        }));
        if let Some(rule) = rule {
            fields.insert("rule".into(), rule);
        }
        (self.emit)("net.blocked", fields);
    }

    fn connection_done(
        &self,
        host: &str,
        port: u16,
        mode: &str,
        counts: &ByteCounts,
        requests: u64,
    ) {
        self.event(
            "net.connect",
            json!({
                "host": host,
                "port": port,
                "mode": mode,
                "bytes_up": counts.up.load(Ordering::Relaxed),
                "bytes_down": counts.down.load(Ordering::Relaxed),
                "requests": requests,
            }),
        );
    }

    /// `io` counted (this connection's bytes and the gateway's) and closed
    /// when idle for too long.
    fn metered<S>(&self, io: S) -> (Arc<ByteCounts>, Metered<S>) {
        let counts = Arc::new(ByteCounts::default());
        let io = Metered::new(
            io,
            counts.clone(),
            self.counters.bytes.clone(),
            self.limits.idle_timeout,
        );
        (counts, io)
    }

    async fn passthrough<S>(self: &Arc<Self>, id: u64, host: &str, port: u16, io: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (counts, mut io) = self.metered(io);
        let mut upstream = match self.upstream.dial(host, port).await {
            Ok(s) => s,
            Err(e) => {
                self.connection_blocked(id, host, port, e.reason(), None, e.to_string());
                return;
            }
        };
        let _ = tokio::io::copy_bidirectional(&mut io, &mut upstream).await;
        self.connection_done(host, port, "passthrough", &counts, 0);
    }

    async fn serve_l7<S>(self: &Arc<Self>, id: u64, host: String, port: u16, io: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (counts, mut io) = self.metered(io);
        let sniffed = tokio::time::timeout(self.limits.first_bytes_timeout, sniff(&mut io)).await;
        let (kind, prefix) = match sniffed {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                let detail = format!("the connection closed before sending a request: {e}");
                self.connection_blocked(id, &host, port, "no-request", None, detail);
                return;
            }
            Err(_) => {
                let detail = format!(
                    "nothing arrived within {}s",
                    self.limits.first_bytes_timeout.as_secs()
                );
                self.connection_blocked(id, &host, port, "timeout", None, detail);
                return;
            }
        };
        let io = Rewind::new(prefix, io);
        let ctx = |tls| {
            Arc::new(proxy::ConnCtx::new(
                self.clone(),
                id,
                host.clone(),
                port,
                tls,
            ))
        };
        let (mode, ctx) = match kind {
            Sniffed::Other => {
                let detail = "the connection speaks neither TLS nor HTTP/1.x; list host:port in \
                              [network] passthrough for raw TCP"
                    .to_string();
                self.connection_blocked(id, &host, port, "not-http", None, detail);
                return;
            }
            Sniffed::Http => {
                let ctx = ctx(false);
                proxy::serve_connection(ctx.clone(), io, None).await;
                ("http", ctx)
            }
            Sniffed::Tls => {
                let Some((tls, alpn)) = self.accept_tls(id, &host, port, io).await else {
                    return;
                };
                let ctx = ctx(true);
                proxy::serve_connection(ctx.clone(), tls, alpn).await;
                ("https", ctx)
            }
        };
        self.connection_done(&host, port, mode, &counts, ctx.requests());
    }

    /// Terminates TLS for `host`; `None` (after an event) when the handshake
    /// fails or names another host.
    async fn accept_tls<S>(
        &self,
        id: u64,
        host: &str,
        port: u16,
        io: S,
    ) -> Option<(tokio_rustls::server::TlsStream<S>, Option<Vec<u8>>)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let limit = self.limits.tls_handshake_timeout;
        let fail = |reason: &str, detail: String| {
            self.connection_blocked(id, host, port, reason, None, detail);
            None
        };
        let acceptor =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
        let start = match tokio::time::timeout(limit, acceptor).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return fail("tls-error", format!("bad TLS ClientHello: {e}")),
            Err(_) => {
                return fail(
                    "timeout",
                    "the TLS ClientHello did not arrive in time".into(),
                );
            }
        };
        if let Some(sni) = start.client_hello().server_name() {
            let sni = normalize_name(sni);
            if sni != host {
                return fail(
                    "sni-mismatch",
                    format!("TLS names {sni:?} but the connection is to {host:?}"),
                );
            }
        }
        let cfg = match self.ca.server_config(host) {
            Ok(c) => c,
            Err(e) => return fail("tls-error", e.to_string()),
        };
        let tls = match tokio::time::timeout(limit, start.into_stream(cfg)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return fail("tls-error", format!("TLS handshake failed: {e}")),
            Err(_) => return fail("timeout", "the TLS handshake did not finish in time".into()),
        };
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        Some((tls, alpn))
    }
}

/// The `net.blocked` reason and detail for an ask that did not end in "allow".
fn ask_refusal(answer: Answer) -> Option<(&'static str, String)> {
    match answer {
        Answer::Allowed => None,
        Answer::Denied => Some(("ask-denied", "refused by the user".into())),
        Answer::TimedOut => Some(("ask-timeout", "nobody answered in time".into())),
        Answer::QueueFull => Some((
            "ask-queue-full",
            format!("{} questions are already waiting", ask::MAX_PENDING),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing() {
        assert_eq!(classify(b"\x16"), None);
        assert_eq!(classify(b"\x16\x03\x01"), Some(Sniffed::Tls));
        assert_eq!(classify(b"\x16\x01"), Some(Sniffed::Other));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"GET /"), Some(Sniffed::Http));
        assert_eq!(classify(b"PRI * HTTP/2.0"), Some(Sniffed::Http));
        assert_eq!(classify(b"SSH-2.0"), Some(Sniffed::Other));
        assert_eq!(classify(b"G T"), Some(Sniffed::Other));
        assert_eq!(classify(b"\0\0"), Some(Sniffed::Other));
    }
}
