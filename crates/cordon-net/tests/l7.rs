//! End-to-end tests of the L7 gateway: a real rustls/hyper client on one end
//! of an in-memory pipe, `Gateway::handle` on the other, and real TLS and
//! plain HTTP servers on 127.0.0.1 as the upstreams, with their own CA.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use cordon_net::l7::{Gateway, GatewayConfig, Limits, SecretConfig};
use cordon_policy::{
    HostPattern, Injection, Network, OnUnknown, Rule, RuleAction, Secret, SecretSource,
    SocketAddrOrIp,
};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

const TOKEN: &str = "real-token-value-0123456789";
const TOKEN_PH: &str = "PH-TOKEN-aaaaaaaaaaaa";
const BASIC: &str = "hunter2-secret-pass";
const BASIC_PH: &str = "PH-BASIC-bbbbbbbbbbbb";
const NAMES: &[&str] = &[
    "api.test",
    "other.test",
    "ask.test",
    "ask2.test",
    "plain.test",
];

type TestBody = UnsyncBoxBody<Bytes, Infallible>;

fn full(s: impl Into<Bytes>) -> TestBody {
    Full::new(s.into()).boxed_unsync()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A body fed from a channel, so tests control when each chunk leaves.
struct ChanBody(mpsc::Receiver<Bytes>);

impl Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

fn chan_body() -> (mpsc::Sender<Bytes>, TestBody) {
    let (tx, rx) = mpsc::channel(16);
    (tx, ChanBody(rx).boxed_unsync())
}

// ---------------------------------------------------------------- upstream

#[derive(Clone, Debug)]
struct Seen {
    version: Version,
    uri: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

#[derive(Clone, Default)]
struct UpstreamState {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Paths of the request heads received, noted before bodies are read.
    heads: Arc<Mutex<Vec<String>>>,
    sse_gate: Arc<Notify>,
}

impl UpstreamState {
    fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw a request")
    }
    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

async fn upstream_service(
    req: Request<Incoming>,
    state: UpstreamState,
) -> Result<Response<TestBody>, Infallible> {
    state
        .heads
        .lock()
        .unwrap()
        .push(req.uri().path().to_string());
    let path = req.uri().path().to_string();
    if path == "/ws" {
        return Ok(websocket_echo(req));
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    state.seen.lock().unwrap().push(Seen {
        version: parts.version,
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let resp = match path.as_str() {
        "/sse" => {
            let (tx, body) = chan_body();
            let gate = state.sse_gate.clone();
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from("data: one\n\n")).await;
                gate.notified().await;
                let _ = tx.send(Bytes::from("data: two\n\n")).await;
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(body)
                .unwrap()
        }
        "/ranged" => {
            // A document holding the real value, served in byte ranges.
            let doc = format!("the token is {TOKEN}.");
            let range = parts
                .headers
                .get("range")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes="))
                .and_then(|v| v.split_once('-'))
                .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
            match range {
                Some((a, b)) if a <= b && b < doc.len() => Response::builder()
                    .status(StatusCode::PARTIAL_CONTENT)
                    .body(full(doc[a..=b].to_string()))
                    .unwrap(),
                _ => Response::new(full(doc)),
            }
        }
        "/gzip" => {
            // Compressed whatever the request asked for (gzip of "hello\n").
            const HELLO_GZ: &[u8] = &[
                0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xcb, 0x48, 0xcd, 0xc9,
                0xc9, 0xe7, 0x02, 0x00, 0x20, 0x30, 0x3a, 0x36, 0x06, 0x00, 0x00, 0x00,
            ];
            Response::builder()
                .header("content-encoding", "gzip")
                .body(full(HELLO_GZ))
                .unwrap()
        }
        "/secret-echo" => {
            // The real value, split across two chunks, in the body and in a header.
            let (tx, body) = chan_body();
            tokio::spawn(async move {
                let (a, b) = TOKEN.split_at(9);
                let _ = tx.send(Bytes::from(format!("before {a}"))).await;
                tokio::time::sleep(Duration::from_millis(30)).await;
                let _ = tx.send(Bytes::from(format!("{b} after"))).await;
            });
            Response::builder()
                .header("x-echo-token", format!("Bearer {TOKEN}"))
                .body(body)
                .unwrap()
        }
        _ => {
            let mut text = format!("{} {}\n", parts.method, parts.uri);
            for (k, v) in &parts.headers {
                text.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
            }
            text.push('\n');
            text.push_str(&String::from_utf8_lossy(&body));
            Response::new(full(text))
        }
    };
    Ok(resp)
}

/// A minimal WebSocket server: echoes one text frame, then sends a frame
/// holding a real secret value.
fn websocket_echo(mut req: Request<Incoming>) -> Response<TestBody> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut io = TokioIo::new(upgraded);
        let mut head = [0u8; 2];
        if io.read_exact(&mut head).await.is_err() {
            return;
        }
        let len = usize::from(head[1] & 0x7f);
        let mut mask = [0u8; 4];
        let mut payload = vec![0u8; len];
        if io.read_exact(&mut mask).await.is_err() || io.read_exact(&mut payload).await.is_err() {
            return;
        }
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        let mut out = vec![0x81, len as u8];
        out.extend_from_slice(&payload);
        let secret = format!("token={TOKEN}");
        out.extend_from_slice(&[0x81, secret.len() as u8]);
        out.extend_from_slice(secret.as_bytes());
        let _ = io.write_all(&out).await;
        let _ = io.flush().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-accept", "test")
        .body(Empty::new().boxed_unsync())
        .unwrap()
}

struct Upstreams {
    tls_port: u16,
    plain_port: u16,
    ca_file: PathBuf,
    state: UpstreamState,
    _dir: tempfile::TempDir,
}

async fn serve_upstream<S>(io: S, state: UpstreamState)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| upstream_service(req, state.clone()));
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .await;
}

async fn start_upstreams() -> Upstreams {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "upstream test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_params =
        rcgen::CertificateParams::new(NAMES.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let ca_file = dir.path().join("upstream-ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();

    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let state = UpstreamState::default();

    let tls = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_port = tls.local_addr().unwrap().port();
    let st = state.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = tls.accept().await {
            let acceptor = acceptor.clone();
            let st = st.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    serve_upstream(tls, st).await;
                }
            });
        }
    });
    let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_port = plain.local_addr().unwrap().port();
    let st = state.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = plain.accept().await {
            tokio::spawn(serve_upstream(tcp, st.clone()));
        }
    });
    Upstreams {
        tls_port,
        plain_port,
        ca_file,
        state,
        _dir: dir,
    }
}

// ---------------------------------------------------------------- gateway

/// One emitted event: its kind and fields.
type Event = (String, Map<String, Value>);

#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<Event>>>);

impl Events {
    /// Events of `kind`, as JSON objects (indexing a missing field gives null).
    fn of(&self, kind: &str) -> Vec<Value> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, m)| Value::Object(m.clone()))
            .collect()
    }

    /// Waits (bounded) for an event of `kind` whose fields satisfy `pred`.
    async fn wait_for(&self, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(m) = self.of(kind).into_iter().find(|m| pred(m)) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "no {kind} event matched; events: {:?}",
                self.0.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn hp(s: &str) -> HostPattern {
    HostPattern::parse(s).unwrap()
}

struct Env {
    gw: Arc<Gateway>,
    events: Events,
    up: Upstreams,
    _secrets_dir: tempfile::TempDir,
}

fn secret_file(dir: &std::path::Path, name: &str, value: &str) -> SecretSource {
    let p = dir.join(name);
    std::fs::write(&p, format!("{value}\n")).unwrap();
    SecretSource::File(p)
}

async fn env_with(tweak: impl FnOnce(&mut GatewayConfig)) -> Env {
    let up = start_upstreams().await;
    let secrets_dir = tempfile::tempdir().unwrap();
    let mut hosts = BTreeMap::new();
    for name in NAMES {
        let port = if *name == "plain.test" {
            up.plain_port
        } else {
            up.tls_port
        };
        hosts.insert(
            name.to_string(),
            SocketAddrOrIp {
                ip: Ipv4Addr::LOCALHOST.into(),
                port: Some(port),
            },
        );
    }
    let mut cfg = GatewayConfig {
        session: "test".into(),
        network: Network {
            allow: vec![hp("api.test"), hp("other.test"), hp("plain.test")],
            hosts,
            allow_private: vec!["127.0.0.0/8".into()],
            upstream_ca: vec![up.ca_file.clone()],
            ..Network::default()
        },
        secrets: vec![
            SecretConfig {
                name: "TOKEN".into(),
                placeholder: TOKEN_PH.into(),
                secret: Secret {
                    from: secret_file(secrets_dir.path(), "token", TOKEN),
                    hosts: vec![hp("api.test")],
                    inject: vec![
                        Injection::Header("authorization".into()),
                        Injection::Query("key".into()),
                    ],
                    placeholder: Some(TOKEN_PH.into()),
                    ttl: None,
                },
            },
            SecretConfig {
                name: "BASIC".into(),
                placeholder: BASIC_PH.into(),
                secret: Secret {
                    from: secret_file(secrets_dir.path(), "basic", BASIC),
                    hosts: vec![hp("api.test")],
                    inject: vec![Injection::Basic],
                    placeholder: Some(BASIC_PH.into()),
                    ttl: None,
                },
            },
        ],
        limits: Limits {
            first_bytes_timeout: Duration::from_secs(3),
            header_read_timeout: Duration::from_secs(1),
            ..Limits::default()
        },
        ..GatewayConfig::default()
    };
    tweak(&mut cfg);
    let events = Events::default();
    let sink = events.clone();
    let gw = Gateway::new(
        cfg,
        Arc::new(move |kind, fields| sink.0.lock().unwrap().push((kind.to_string(), fields))),
    )
    .unwrap();
    Env {
        gw,
        events,
        up,
        _secrets_dir: secrets_dir,
    }
}

async fn env() -> Env {
    env_with(|_| {}).await
}

static FLOW_ID: AtomicU64 = AtomicU64::new(1);

impl Env {
    /// The sandbox's end of a new connection to `name:port`.
    fn connect(&self, name: &str, port: u16) -> DuplexStream {
        let (client, gateway_side) = tokio::io::duplex(64 << 10);
        let gw = self.gw.clone();
        let name = name.to_string();
        let id = FLOW_ID.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            gw.handle(
                id,
                Some(name),
                SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 7), port),
                gateway_side,
            )
            .await;
        });
        client
    }

    async fn tls(
        &self,
        name: &str,
        sni: &str,
        alpn: &[&[u8]],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<DuplexStream>> {
        let mut roots = rustls::RootCertStore::empty();
        let pem = self.gw.ca_cert_pem();
        for cert in rustls_pemfile_certs(&pem) {
            roots.add(cert).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let io = self.connect(name, 443);
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from(sni.to_string()).unwrap(), io)
            .await
    }

    async fn h1(&self, name: &str) -> hyper::client::conn::http1::SendRequest<TestBody> {
        let tls = self
            .tls(name, name, &[b"http/1.1"])
            .await
            .expect("TLS through the gateway");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn.with_upgrades());
        sender
    }

    /// One HTTP/1.1 request over TLS to `name`; the response with its whole body.
    async fn request(&self, name: &str, req: Request<TestBody>) -> (StatusCode, HeaderMap, String) {
        let mut sender = self.h1(name).await;
        let resp = sender.send_request(req).await.expect("response");
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }
}

fn rustls_pemfile_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap())
        .collect()
}

fn get(host: &str, path: &str) -> http::request::Builder {
    Request::get(path).header("host", host)
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn header_secret_is_injected_and_scrubbed_from_the_echo() {
    let env = env().await;
    let req = get("api.test", "/echo")
        .header("authorization", format!("Bearer {TOKEN_PH}"))
        .body(full(""))
        .unwrap();
    let (status, _, body) = env.request("api.test", req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen = env.up.state.last();
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {TOKEN}").as_str()
    );
    assert_eq!(
        seen.version,
        Version::HTTP_2,
        "upstream speaks h2 whatever the sandbox speaks"
    );
    assert!(
        !body.contains(TOKEN),
        "the echoed value must be scrubbed: {body}"
    );
    assert!(
        body.contains(&format!("authorization: Bearer {TOKEN_PH}")),
        "{body}"
    );

    let injected = env.events.wait_for("secret.injected", |_| true).await;
    assert_eq!(injected["name"], "TOKEN");
    assert_eq!(injected["host"], "api.test");
    assert_eq!(injected["where"], "header:authorization");
    let request = env
        .events
        .wait_for("net.request", |m| m["path"] == "/echo")
        .await;
    assert_eq!(request["status"], 200);
    assert_eq!(request["method"], "GET");
    assert_eq!(request["rule"], "default");
    assert_eq!(request["secrets"], serde_json::json!(["TOKEN"]));
    assert!(request["bytes_down"].as_u64().unwrap() > 0);
    let all = format!("{:?}", env.events.0.lock().unwrap());
    assert!(!all.contains(TOKEN), "no event may carry the value");
    assert_eq!(env.gw.stats().secrets_injected, 1);
    assert_eq!(env.gw.stats().requests_allowed, 1);
}

#[tokio::test]
async fn placeholder_to_another_host_is_blocked() {
    let env = env().await;
    let req = get("other.test", "/echo")
        .header("authorization", format!("Bearer {TOKEN_PH}"))
        .body(full(""))
        .unwrap();
    let (status, headers, _) = env.request("other.test", req).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(headers["x-cordon-blocked"], "secret-placeholder");
    assert_eq!(env.up.state.count(), 0, "nothing reached the upstream");
    let ev = env.events.wait_for("secret.blocked", |_| true).await;
    assert_eq!(ev["name"], "TOKEN");
    assert_eq!(ev["host"], "other.test");
    assert_eq!(ev["where"], "header:authorization");

    // In the body too, even split across chunks.
    let (tx, body) = chan_body();
    let mut sender = env.h1("other.test").await;
    let req = Request::post("/echo")
        .header("host", "other.test")
        .body(body)
        .unwrap();
    let pending = tokio::spawn(async move { sender.send_request(req).await });
    let (a, b) = TOKEN_PH.split_at(7);
    tx.send(Bytes::from(format!("{{\"key\":\"{a}")))
        .await
        .unwrap();
    tx.send(Bytes::from(format!("{b}\"}}"))).await.unwrap();
    drop(tx);
    let resp = pending.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    env.events
        .wait_for("secret.blocked", |m| m["where"] == "body")
        .await;
    assert_eq!(env.gw.stats().requests_blocked, 2);

    // A body of declared length is checked whole before the request goes
    // out: the upstream does not even see the head, however slowly the
    // placeholder arrives.
    let (tx, body) = chan_body();
    let mut sender = env.h1("other.test").await;
    let json = format!("{{\"key\":\"{TOKEN_PH}\"}}");
    let req = Request::post("/declared")
        .header("host", "other.test")
        .header("content-length", json.len())
        .header("expect", "100-continue")
        .body(body)
        .unwrap();
    let pending = tokio::spawn(async move { sender.send_request(req).await });
    let (a, b) = json.split_at(12);
    tx.send(Bytes::from(a.to_string())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.send(Bytes::from(b.to_string())).await.unwrap();
    drop(tx);
    let resp = pending.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let heads = env.up.state.heads.lock().unwrap().clone();
    assert!(
        !heads.iter().any(|p| p == "/declared"),
        "a request head reached the upstream: {heads:?}"
    );
    assert_eq!(env.gw.stats().requests_blocked, 3);
}

#[tokio::test]
async fn small_bodies_read_whole_still_arrive_intact() {
    let env = env().await;
    let (tx, body) = chan_body();
    let mut sender = env.h1("api.test").await;
    let req = Request::post("/echo")
        .header("host", "api.test")
        .header("content-length", 10)
        .header("expect", "100-continue")
        .body(body)
        .unwrap();
    let pending = tokio::spawn(async move { sender.send_request(req).await });
    tx.send(Bytes::from_static(b"hello")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    tx.send(Bytes::from_static(b"world")).await.unwrap();
    drop(tx);
    let resp = pending.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = env.up.state.last();
    assert_eq!(seen.body, b"helloworld");
    assert!(seen.headers.get("expect").is_none(), "{:?}", seen.headers);
    assert_eq!(seen.headers["content-length"], "10");

    // A body shorter than it claims is refused, and nothing goes out.
    let mut io = env.connect("plain.test", 80);
    io.write_all(b"POST /short HTTP/1.1\r\nHost: plain.test\r\nContent-Length: 50\r\n\r\nshort")
        .await
        .unwrap();
    io.shutdown().await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut resp))
        .await
        .expect("the gateway answered or closed")
        .unwrap();
    let resp = String::from_utf8_lossy(&resp);
    assert!(!resp.starts_with("HTTP/1.1 200"), "{resp}");
    let heads = env.up.state.heads.lock().unwrap().clone();
    assert!(!heads.iter().any(|p| p == "/short"), "{heads:?}");
}

#[tokio::test]
async fn query_and_basic_injection() {
    let env = env().await;
    let req = get("api.test", &format!("/echo?a=1&key={TOKEN_PH}"))
        .body(full(""))
        .unwrap();
    let (status, _, _) = env.request("api.test", req).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        env.up
            .state
            .last()
            .uri
            .ends_with(&format!("/echo?a=1&key={TOKEN}"))
    );
    env.events
        .wait_for("secret.injected", |m| m["where"] == "query:key")
        .await;

    let b64 = base64::engine::general_purpose::STANDARD;
    let creds = b64.encode(format!("robot:{BASIC_PH}"));
    let req = get("api.test", "/echo")
        .header("authorization", format!("Basic {creds}"))
        .body(full(""))
        .unwrap();
    let (status, _, _) = env.request("api.test", req).await;
    assert_eq!(status, StatusCode::OK);
    let sent = env.up.state.last().headers["authorization"]
        .to_str()
        .unwrap()
        .to_string();
    let decoded = b64.decode(sent.strip_prefix("Basic ").unwrap()).unwrap();
    assert_eq!(decoded, format!("robot:{BASIC}").into_bytes());
    env.events
        .wait_for("secret.injected", |m| {
            m["where"] == "basic" && m["name"] == "BASIC"
        })
        .await;

    // A bound host, but a header the policy does not name: forwarded as is.
    let req = get("api.test", "/echo")
        .header("x-other", TOKEN_PH)
        .body(full(""))
        .unwrap();
    let (status, _, _) = env.request("api.test", req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(env.up.state.last().headers["x-other"], TOKEN_PH);
}

#[tokio::test]
async fn sni_naming_another_host_is_refused() {
    let env = env().await;
    let result = env.tls("api.test", "other.test", &[b"http/1.1"]).await;
    assert!(result.is_err(), "the handshake must fail");
    let ev = env
        .events
        .wait_for("net.blocked", |m| m["reason"] == "sni-mismatch")
        .await;
    assert_eq!(ev["host"], "api.test");
    assert_eq!(env.gw.stats().connections_blocked, 1);
    assert_eq!(env.gw.stats().requests_blocked, 0);
}

#[tokio::test]
async fn host_header_must_name_the_connection_host() {
    let env = env().await;
    let req = get("other.test", "/echo").body(full("")).unwrap();
    let (status, _, _) = env.request("api.test", req).await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    env.events
        .wait_for("net.blocked", |m| m["reason"] == "host-mismatch")
        .await;
    let req = Request::get("https://other.test/echo")
        .header("host", "api.test")
        .body(full(""))
        .unwrap();
    let (status, _, _) = env.request("api.test", req).await;
    assert_eq!(
        status,
        StatusCode::MISDIRECTED_REQUEST,
        "absolute-form naming another host"
    );
    let req = get("api.test:444", "/echo").body(full("")).unwrap();
    let (status, _, _) = env.request("api.test", req).await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "wrong port");
    assert_eq!(env.up.state.count(), 0);
}

#[tokio::test]
async fn http2_client_through_the_gateway() {
    let env = env().await;
    let tls = env.tls("api.test", "api.test", &[b"h2"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("https://api.test/echo?x=1")
        .header("authorization", format!("Bearer {TOKEN_PH}"))
        .body(full(""))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).starts_with("GET "));
    assert_eq!(
        env.up.state.last().headers["authorization"],
        format!("Bearer {TOKEN}").as_str()
    );
    // An h2 request to another authority on this connection is refused.
    let req = Request::get("https://other.test/echo")
        .body(full(""))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::MISDIRECTED_REQUEST);
}

#[tokio::test]
async fn server_sent_events_stream_event_by_event() {
    let env = env().await;
    let mut sender = env.h1("api.test").await;
    let resp = sender
        .send_request(get("api.test", "/sse").body(full("")).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first event must arrive while the upstream holds the stream open")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), Bytes::from("data: one\n\n"));
    env.up.state.sse_gate.notify_one();
    let rest = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(rest, Bytes::from("data: two\n\n"));
}

#[tokio::test]
async fn websocket_echo_through_an_upgrade() {
    let env = env().await;
    let mut sender = env.h1("api.test").await;
    let req = get("api.test", "/ws")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-extensions", "permessage-deflate")
        .body(full(""))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut ws = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    let payload = b"hello";
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    ws.write_all(&frame).await.unwrap();
    ws.flush().await.unwrap();

    let mut echo = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), ws.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"\x81\x05hello");
    let secret_len = "token=".len() + TOKEN.len();
    let mut second = vec![0u8; 2 + secret_len];
    tokio::time::timeout(Duration::from_secs(5), ws.read_exact(&mut second))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second[1] as usize, secret_len, "frame length unchanged");
    let text = String::from_utf8(second[2..].to_vec()).unwrap();
    assert_eq!(text, format!("token={}", "*".repeat(TOKEN.len())));
}

#[tokio::test]
async fn websocket_extensions_are_not_forwarded() {
    let env = env().await;
    let req = get("api.test", "/echo")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-extensions", "permessage-deflate")
        .body(full(""))
        .unwrap();
    let (status, _, _) = env.request("api.test", req).await;
    assert_eq!(status, StatusCode::OK, "the echo route does not upgrade");
    let seen = env.up.state.last();
    assert!(!seen.headers.contains_key("sec-websocket-extensions"));
    assert_eq!(seen.headers["upgrade"], "websocket");
    assert_eq!(seen.version, Version::HTTP_11, "upgrades go over HTTP/1.1");
}

#[tokio::test]
async fn real_values_are_scrubbed_from_responses_across_chunks() {
    let env = env().await;
    let (status, headers, body) = env
        .request(
            "api.test",
            get("api.test", "/secret-echo").body(full("")).unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, format!("before {TOKEN_PH} after"));
    assert_eq!(
        headers["x-echo-token"],
        format!("Bearer {TOKEN_PH}").as_str()
    );
}

#[tokio::test]
async fn body_limits() {
    let env = env_with(|cfg| cfg.network.max_request_body = 1000).await;
    let req = Request::post("/echo")
        .header("host", "api.test")
        .body(full(vec![b'x'; 5000]))
        .unwrap();
    let (status, _, _) = env.request("api.test", req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // A streamed body with no length is cut off when it passes the limit.
    let (tx, body) = chan_body();
    let mut sender = env.h1("api.test").await;
    let req = Request::post("/echo")
        .header("host", "api.test")
        .body(body)
        .unwrap();
    let pending = tokio::spawn(async move { sender.send_request(req).await });
    for _ in 0..3 {
        tx.send(Bytes::from(vec![b'y'; 600])).await.unwrap();
    }
    drop(tx);
    let resp = pending.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        env.up.state.count(),
        0,
        "no complete request reached the upstream"
    );

    let req = Request::post("/echo")
        .header("host", "api.test")
        .body(full(vec![b'z'; 900]))
        .unwrap();
    let (status, _, _) = env.request("api.test", req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(env.up.state.last().body.len(), 900);
}

async fn raw_exchange(io: &mut DuplexStream, request: &[u8]) -> String {
    io.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), io.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(_) => panic!("no response: {}", String::from_utf8_lossy(&out)),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused() {
    let env = env().await;
    let mut io = env.connect("plain.test", 80);
    let resp = raw_exchange(
        &mut io,
        b"POST /echo HTTP/1.1\r\nHost: plain.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    env.events
        .wait_for("net.blocked", |m| m["reason"] == "request-smuggling")
        .await;
    assert_eq!(env.up.state.count(), 0);

    let mut io = env.connect("plain.test", 80);
    let resp = raw_exchange(
        &mut io,
        b"POST /echo HTTP/1.1\r\nHost: plain.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert_eq!(env.up.state.count(), 0);

    // Plain HTTP otherwise works.
    let mut io = env.connect("plain.test", 80);
    let resp = raw_exchange(&mut io, b"GET /echo HTTP/1.1\r\nHost: plain.test\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    env.events.wait_for("net.connect", |_| true).await;
}

#[tokio::test]
async fn connect_method_and_non_http_are_refused() {
    let env = env().await;
    let mut io = env.connect("plain.test", 80);
    let resp = raw_exchange(
        &mut io,
        b"CONNECT plain.test:80 HTTP/1.1\r\nHost: plain.test\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");

    let mut io = env.connect("plain.test", 80);
    io.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), io.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    env.events
        .wait_for("net.blocked", |m| m["reason"] == "not-http")
        .await;
}

#[tokio::test]
async fn slowloris_times_out_without_harming_others() {
    let env = env().await;
    let mut slow = env.connect("plain.test", 80);
    slow.write_all(b"GET /echo HTTP/1.1\r\nHost: plain.test\r\n")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        let started = Instant::now();
        for i in 0..40 {
            if slow
                .write_all(format!("x-{i}: a\r\n").as_bytes())
                .await
                .is_err()
            {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut buf = [0u8; 64];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await
            {
                return Some(started.elapsed());
            }
        }
        None
    });
    // Meanwhile another connection gets served promptly.
    let started = Instant::now();
    let mut fast = env.connect("plain.test", 80);
    let resp = raw_exchange(&mut fast, b"GET /echo HTTP/1.1\r\nHost: plain.test\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let closed_after = trickle
        .await
        .unwrap()
        .expect("the trickling connection must be closed");
    assert!(closed_after < Duration::from_secs(4), "{closed_after:?}");
}

#[tokio::test]
async fn loopback_upstream_is_refused_without_allow_private() {
    let env = env_with(|cfg| cfg.network.allow_private.clear()).await;
    let (status, headers, body) = env
        .request("api.test", get("api.test", "/echo").body(full("")).unwrap())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(headers["x-cordon-blocked"], "private-address");
    assert!(body.contains("127.0.0.1 (loopback)"), "{body}");
    env.events
        .wait_for("net.blocked", |m| m["reason"] == "private-address")
        .await;
    assert_eq!(env.up.state.count(), 0);
}

async fn wait_pending(gw: &Gateway, kind: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(p) = gw.pending().into_iter().find(|p| p.kind == kind) {
            return p.id;
        }
        assert!(Instant::now() < deadline, "nothing parked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn ask_parks_connections_until_decided() {
    let env = env_with(|cfg| cfg.network.on_unknown = OnUnknown::Ask).await;
    assert!(env.gw.dns_allows("ask.test"));

    let gw = env.gw.clone();
    let allowed = tokio::spawn(async move {
        let id = wait_pending(&gw, "connect").await;
        let p = gw.pending();
        assert_eq!((p[0].host.as_str(), p[0].port), ("ask.test", 443));
        assert!(gw.decide(id, true));
        assert!(!gw.decide(id, true));
    });
    let (status, _, _) = env
        .request("ask.test", get("ask.test", "/echo").body(full("")).unwrap())
        .await;
    allowed.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let pending = env
        .events
        .wait_for("net.pending", |m| m["host"] == "ask.test")
        .await;
    assert_eq!(pending["kind"], "connect");

    let gw = env.gw.clone();
    let denied = tokio::spawn(async move {
        let id = wait_pending(&gw, "connect").await;
        assert!(gw.decide(id, false));
    });
    let result = env.tls("ask2.test", "ask2.test", &[b"http/1.1"]).await;
    denied.await.unwrap();
    assert!(result.is_err(), "a refused connection gets no TLS");
    env.events
        .wait_for("net.blocked", |m| {
            m["reason"] == "ask-denied" && m["host"] == "ask2.test"
        })
        .await;
    // The answer holds for the session.
    assert!(
        env.tls("ask2.test", "ask2.test", &[b"http/1.1"])
            .await
            .is_err()
    );
    assert!(env.gw.pending().is_empty());
}

#[tokio::test]
async fn ask_rules_park_requests_while_others_proceed() {
    let env = env_with(|cfg| {
        cfg.rules = vec![
            Rule {
                host: hp("api.test"),
                methods: vec!["POST".into()],
                path: Some("/deploy/**".into()),
                action: RuleAction::Ask,
                max_body: None,
                requests_per_minute: None,
            },
            Rule {
                host: hp("api.test"),
                methods: vec![],
                path: Some("/admin".into()),
                action: RuleAction::Deny,
                max_body: None,
                requests_per_minute: None,
            },
        ]
    })
    .await;
    let mut sender = env.h1("api.test").await;
    let req = Request::post("/deploy/prod")
        .header("host", "api.test")
        .body(full("go"))
        .unwrap();
    let parked = tokio::spawn(async move { sender.send_request(req).await });
    let id = wait_pending(&env.gw, "request").await;
    let p = env.gw.pending().remove(0);
    assert_eq!(p.method.as_deref(), Some("POST"));
    assert_eq!(p.path.as_deref(), Some("/deploy/prod"));
    assert_eq!(p.rule, "0");

    // Other requests are not held up meanwhile.
    let (status, _, _) = env
        .request("api.test", get("api.test", "/echo").body(full("")).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = env
        .request(
            "api.test",
            get("api.test", "/%61dmin/x").body(full("")).unwrap(),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "encoded path still matches the deny rule"
    );

    assert!(env.gw.decide(id, true));
    let resp = parked.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(env.up.state.last().body, b"go");

    let mut sender = env.h1("api.test").await;
    let req = Request::post("/deploy/x")
        .header("host", "api.test")
        .body(full(""))
        .unwrap();
    let parked = tokio::spawn(async move { sender.send_request(req).await });
    let id = wait_pending(&env.gw, "request").await;
    assert!(env.gw.decide(id, false));
    assert_eq!(
        parked.await.unwrap().unwrap().status(),
        StatusCode::FORBIDDEN
    );
    env.events
        .wait_for("net.blocked", |m| {
            m["reason"] == "ask-denied" && m["rule"] == 0
        })
        .await;
}

#[tokio::test]
async fn rate_limit_per_host() {
    let env = env_with(|cfg| cfg.network.requests_per_minute = Some(2)).await;
    let mut sender = env.h1("api.test").await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let resp = sender
            .send_request(get("api.test", "/echo").body(full("")).unwrap())
            .await
            .unwrap();
        statuses.push(resp.status());
        let _ = resp.into_body().collect().await;
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    env.events
        .wait_for("net.blocked", |m| m["reason"] == "rate-limit")
        .await;
}

#[tokio::test]
async fn denied_and_unknown_hosts_are_refused() {
    let env = env_with(|cfg| cfg.network.deny = vec![hp("other.test")]).await;
    assert!(!env.gw.dns_allows("other.test"));
    assert!(!env.gw.dns_allows("unknown.test"));
    assert!(env.gw.dns_allows("API.test"));
    assert!(env.tls("other.test", "other.test", &[]).await.is_err());
    assert!(env.tls("unknown.test", "unknown.test", &[]).await.is_err());
    env.events
        .wait_for("net.blocked", |m| m["reason"] == "host-denied")
        .await;
    env.events
        .wait_for("net.blocked", |m| m["reason"] == "host-not-allowed")
        .await;
    let stats = env.gw.stats();
    assert_eq!(stats.connections, 2);
    assert_eq!(stats.connections_blocked, 2, "{stats:?}");
    assert_eq!(stats.requests_blocked, 0, "{stats:?}");
}

#[tokio::test]
async fn direct_ip_connections_use_the_address_as_host() {
    let env = env_with(|cfg| cfg.network.allow.push(hp("127.0.0.1"))).await;
    let port = env.up.plain_port;
    assert!(env.gw.direct_allows(Ipv4Addr::LOCALHOST, port));
    assert!(!env.gw.direct_allows(Ipv4Addr::new(127, 0, 0, 2), port));
    let direct = || {
        let (io, gateway_side) = tokio::io::duplex(64 << 10);
        let gw = env.gw.clone();
        tokio::spawn(async move {
            let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
            gw.handle(900, None, dst, gateway_side).await;
        });
        io
    };
    let req = format!("GET /echo HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    let resp = raw_exchange(&mut direct(), req.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let req = "GET /echo HTTP/1.1\r\nHost: api.test\r\n\r\n";
    let resp = raw_exchange(&mut direct(), req.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 421"), "{resp}");
}

/// True when `text` holds a base64 run that decodes to 6 or more bytes of
/// `secret` in a row, at any alignment.
fn base64_reveals(text: &str, secret: &str) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    let windows: Vec<&[u8]> = secret.as_bytes().windows(6).collect();
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '/'))
        .any(|run| {
            (0..4.min(run.len())).any(|skip| {
                let run = &run[skip..];
                let usable = run.len() - run.len() % 4;
                b64.decode(&run[..usable])
                    .is_ok_and(|bytes| windows.iter().any(|w| bytes.windows(6).any(|b| b == *w)))
            })
        })
}

#[tokio::test]
async fn basic_credentials_echoed_back_are_scrubbed() {
    let env = env().await;
    let b64 = base64::engine::general_purpose::STANDARD;
    // The sandbox chooses what surrounds the placeholder, and so the
    // alignment of the real value inside the base64 text the server echoes.
    for prefix in ["", "r:", "ro:", "rob:"] {
        for suffix in ["", "x", "xy"] {
            let creds = b64.encode(format!("{prefix}{BASIC_PH}{suffix}"));
            let req = get("api.test", "/echo")
                .header("authorization", format!("Basic {creds}"))
                .body(full(""))
                .unwrap();
            let (status, _, body) = env.request("api.test", req).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let sent = env.up.state.last().headers["authorization"]
                .to_str()
                .unwrap()
                .to_string();
            assert!(
                base64_reveals(&sent, BASIC),
                "the upstream got the real credentials: {sent}"
            );
            assert!(
                !base64_reveals(&body, BASIC),
                "the echoed credentials reveal the real value ({prefix:?}, {suffix:?}): {body}"
            );
        }
    }
}

#[tokio::test]
async fn secrets_are_never_injected_over_plain_http() {
    // TOKEN bound to plain.test as well: still, no real value in clear text.
    let env = env_with(|cfg| cfg.secrets[0].secret.hosts.push(hp("plain.test"))).await;
    let mut io = env.connect("plain.test", 80);
    let req = format!(
        "GET /echo?key={TOKEN_PH} HTTP/1.1\r\nHost: plain.test\r\nAuthorization: Bearer {TOKEN_PH}\r\n\r\n"
    );
    let resp = raw_exchange(&mut io, req.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(resp.contains("secret-placeholder"), "{resp}");
    assert_eq!(env.up.state.count(), 0, "nothing went out in clear text");
    let ev = env.events.wait_for("secret.blocked", |_| true).await;
    assert_eq!(ev["host"], "plain.test");
    assert!(env.events.of("secret.injected").is_empty());
}

#[tokio::test]
async fn deny_rules_hold_for_every_reading_of_the_request() {
    let deny = |methods: &[&str], path: &str| Rule {
        host: hp("api.test"),
        methods: methods.iter().map(|m| m.to_string()).collect(),
        path: Some(path.into()),
        action: RuleAction::Deny,
        max_body: None,
        requests_per_minute: None,
    };
    let env =
        env_with(|cfg| cfg.rules = vec![deny(&[], "/admin/*/secret"), deny(&["DELETE"], "/")])
            .await;
    let mut sender = env.h1("api.test").await;
    let mut send = async |method: &str, path: &str, overrides: Option<&str>| {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "api.test");
        if let Some(m) = overrides {
            req = req.header("x-http-method-override", m);
        }
        let resp = sender
            .send_request(req.body(full("")).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        status
    };
    // Servers commonly route these to /admin/x/secret (trailing slash,
    // merged slashes, case-insensitive routes, ;path parameters).
    for path in [
        "/admin/x/secret",
        "/admin/x/secret/",
        "/admin//x/secret",
        "/Admin/x/SECRET",
        "/admin/x/secret;jsessionid=1",
    ] {
        assert_eq!(
            send("GET", path, None).await,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    assert_eq!(
        send("POST", "/echo", Some("DELETE")).await,
        StatusCode::FORBIDDEN,
        "a method override names the denied method"
    );
    assert_eq!(
        env.up.state.count(),
        0,
        "{:?}",
        env.up.state.seen.lock().unwrap()
    );
    assert_eq!(send("GET", "/admin/x/public", None).await, StatusCode::OK);
    assert_eq!(send("POST", "/echo", Some("PATCH")).await, StatusCode::OK);
}

#[tokio::test]
async fn requests_in_flight_upstream_are_capped_across_connections() {
    let env = env_with(|cfg| cfg.limits.max_upstream_requests = 2).await;
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut sender = env.h1("api.test").await;
        let resp = sender
            .send_request(get("api.test", "/sse").body(full("")).unwrap())
            .await
            .unwrap();
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "data: one\n\n");
        streams.push((sender, body));
    }
    let mut sender = env.h1("api.test").await;
    let third = tokio::spawn(async move {
        sender
            .send_request(get("api.test", "/echo").body(full("")).unwrap())
            .await
            .map(|r| r.status())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "a third request went upstream");
    assert_eq!(env.up.state.count(), 2);
    // A stream that ends gives its slot back.
    drop(streams.pop());
    let status = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the waiting request went on")
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn byte_ranges_cannot_cut_a_value_into_unrecognisable_slices() {
    let env = env().await;
    let start = "the token is ".len();
    let mut seen = String::new();
    for chunk in 0..TOKEN.len().div_ceil(5) {
        let a = start + chunk * 5;
        let req = get("api.test", "/ranged")
            .header("range", format!("bytes={a}-{}", a + 4))
            .body(full(""))
            .unwrap();
        let (_, _, body) = env.request("api.test", req).await;
        seen.push_str(&body);
    }
    assert!(!seen.contains(&TOKEN[..10]), "reassembled: {seen}");
    assert!(seen.contains(TOKEN_PH), "{seen}");
}

#[tokio::test]
async fn upstream_certificates_are_verified() {
    // The upstream's CA is not trusted: nothing is sent to it.
    let env = env_with(|cfg| cfg.network.upstream_ca.clear()).await;
    let (status, headers, body) = env
        .request("api.test", get("api.test", "/echo").body(full("")).unwrap())
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(headers["x-cordon-blocked"], "upstream-tls");
    assert!(body.contains("TLS with api.test failed"), "{body}");
    let ev = env
        .events
        .wait_for("net.blocked", |m| m["reason"] == "upstream-tls")
        .await;
    assert_eq!(ev["host"], "api.test");
    assert_eq!(ev["status"], 502);
    assert!(env.up.state.heads.lock().unwrap().is_empty());
    assert_eq!(env.up.state.count(), 0, "nothing reached the upstream");
    assert_eq!(env.gw.stats().requests_allowed, 0);
    assert_eq!(env.gw.stats().requests_blocked, 1);

    // A trusted CA, but a certificate for other names than the one dialed.
    let env = env_with(|cfg| {
        let api = cfg.network.hosts["api.test"];
        cfg.network.hosts.insert("wrong.test".into(), api);
        cfg.network.allow.push(hp("wrong.test"));
    })
    .await;
    let (status, headers, body) = env
        .request(
            "wrong.test",
            get("wrong.test", "/echo").body(full("")).unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(headers["x-cordon-blocked"], "upstream-tls");
    assert!(body.contains("TLS with wrong.test failed"), "{body}");
    assert!(env.up.state.heads.lock().unwrap().is_empty());
    // The same upstream under a name its certificate holds is fine.
    let (status, _, _) = env
        .request("api.test", get("api.test", "/echo").body(full("")).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(env.up.state.count(), 1);
}

#[tokio::test]
async fn a_rule_carries_its_own_body_and_rate_limits() {
    let env = env_with(|cfg| {
        cfg.rules = vec![Rule {
            host: hp("api.test"),
            methods: vec![],
            path: Some("/upload".into()),
            action: RuleAction::Allow,
            max_body: Some(100),
            requests_per_minute: Some(2),
        }]
    })
    .await;
    let post = |path: &str, len: usize| {
        Request::post(path)
            .header("host", "api.test")
            .body(full(vec![b'x'; len]))
            .unwrap()
    };
    let (status, headers, body) = env.request("api.test", post("/upload", 200)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(headers["x-cordon-blocked"], "body-too-large");
    assert!(body.contains("100-byte limit"), "{body}");
    assert_eq!(env.up.state.count(), 0);
    let ev = env
        .events
        .wait_for("net.blocked", |m| m["reason"] == "body-too-large")
        .await;
    assert_eq!(ev["rule"], 0);

    // The refused request counted toward the rule's rate: one more passes.
    let (status, _, _) = env.request("api.test", post("/upload", 100)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(env.up.state.last().body.len(), 100);
    let (status, headers, body) = env.request("api.test", post("/upload", 10)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(headers["x-cordon-blocked"], "rate-limit");
    let ev = env
        .events
        .wait_for("net.blocked", |m| m["reason"] == "rate-limit")
        .await;
    assert_eq!(ev["rule"], 0);
    assert_eq!(env.up.state.count(), 1);

    // Other paths of the host keep the network-wide limits (none here).
    for _ in 0..3 {
        let (status, _, _) = env.request("api.test", post("/echo", 200)).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(env.up.state.count(), 4);
    assert_eq!(env.gw.stats().requests_allowed, 4);
    assert_eq!(env.gw.stats().requests_blocked, 2);
}

#[tokio::test]
async fn compressed_responses_from_secret_hosts_are_refused() {
    let env = env().await;
    let (status, headers, body) = env
        .request("api.test", get("api.test", "/gzip").body(full("")).unwrap())
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(headers["x-cordon-blocked"], "compressed-response");
    // The gateway asked for an uncompressed answer; the upstream ignored it.
    assert_eq!(env.up.state.last().headers["accept-encoding"], "identity");
    env.events
        .wait_for("net.blocked", |m| {
            m["reason"] == "compressed-response" && m["host"] == "api.test"
        })
        .await;

    // A host no secret is bound to gets its compressed response as it is.
    let (status, headers, body) = env
        .request(
            "other.test",
            get("other.test", "/gzip")
                .header("accept-encoding", "gzip")
                .body(full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["content-encoding"], "gzip");
    assert_eq!(env.gw.stats().requests_allowed, 1);
    assert_eq!(env.gw.stats().requests_blocked, 1);
}

#[tokio::test]
async fn command_secrets_are_cached_for_their_ttl() {
    const CMD_PH: &str = "PH-CMD-cccccccccccc";
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let command = format!(
        "echo run >> '{r}'; printf 'cmd-value-%s' \"$(wc -l < '{r}')\"",
        r = runs.display()
    );
    let env = env_with(|cfg| {
        cfg.secrets.push(SecretConfig {
            name: "CMD".into(),
            placeholder: CMD_PH.into(),
            secret: Secret {
                from: SecretSource::Command(command),
                hosts: vec![hp("api.test")],
                inject: vec![Injection::Header("x-cmd".into())],
                placeholder: Some(CMD_PH.into()),
                ttl: Some(Duration::from_millis(200)),
            },
        })
    })
    .await;
    let runs_so_far = || {
        std::fs::read_to_string(&runs)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    assert_eq!(runs_so_far(), 0, "not run before it is needed");
    let call = async || {
        let req = get("api.test", "/echo")
            .header("x-cmd", CMD_PH)
            .body(full(""))
            .unwrap();
        let (status, _, body) = env.request("api.test", req).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(!body.contains("cmd-value"), "scrubbed: {body}");
        env.up.state.last().headers["x-cmd"].clone()
    };
    assert_eq!(call().await, "cmd-value-1");
    assert_eq!(call().await, "cmd-value-1");
    assert_eq!(runs_so_far(), 1, "the second request used the cached value");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(call().await, "cmd-value-2");
    assert_eq!(runs_so_far(), 2, "run again once the ttl passed");
    assert_eq!(env.gw.stats().secrets_injected, 3);
}
