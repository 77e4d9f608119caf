//! Reaching the real server: resolve the name ourselves, refuse addresses the
//! policy does not open, dial exactly an address that passed the check (no
//! second lookup, so no DNS rebinding window), and speak TLS verified against
//! the host's roots plus `upstream_ca`.
//!
//! [`Connector`] plugs this into hyper-util's pooled client, so upstream
//! connections are reused per scheme, name and port.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use cordon_policy::SocketAddrOrIp;
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::GatewayError;
use super::addr::{self, Cidr};

/// Why an upstream connection was not made. The proxy turns these into
/// responses and `net.blocked` events.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("{host} resolves only to addresses the policy does not open: {detail}")]
    Refused { host: String, detail: String },
    #[error("cannot connect to {host}: {reason}")]
    Connect { host: String, reason: String },
    #[error("TLS with {host} failed: {reason}")]
    Tls { host: String, reason: String },
}

impl DialError {
    /// The `reason` field of the `net.blocked` event.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            DialError::Resolve { .. } => "upstream-resolve",
            DialError::Refused { .. } => "private-address",
            DialError::Connect { .. } => "upstream-connect",
            DialError::Tls { .. } => "upstream-tls",
        }
    }
}

/// Name resolution, address checks, dialing and TLS for upstream servers.
pub(crate) struct Upstream {
    hosts: BTreeMap<String, SocketAddrOrIp>,
    allow_private: Vec<Cidr>,
    tls_any: Arc<ClientConfig>,
    tls_h1: Arc<ClientConfig>,
    connect_timeout: Duration,
}

fn load_roots(extra: &[PathBuf]) -> Result<RootCertStore, GatewayError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!("loading the host's root certificates: {e}");
    }
    let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
    for path in extra {
        let bad = |reason: String| GatewayError::UpstreamCa {
            path: path.clone(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        let mut n = 0;
        for cert in CertificateDer::pem_slice_iter(&bytes) {
            let cert = cert.map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| bad(format!("a certificate in it is not usable: {e}")))?;
            n += 1;
        }
        if n == 0 {
            return Err(bad("it holds no PEM certificate".into()));
        }
    }
    Ok(roots)
}

impl Upstream {
    pub(crate) fn new(
        network: &cordon_policy::Network,
        provider: Arc<CryptoProvider>,
        connect_timeout: Duration,
    ) -> Result<Upstream, GatewayError> {
        let mut allow_private = Vec::new();
        for c in &network.allow_private {
            allow_private
                .push(Cidr::parse(c).ok_or_else(|| GatewayError::AllowPrivate(c.clone()))?);
        }
        let roots = Arc::new(load_roots(&network.upstream_ca)?);
        let client = |alpn: &[&[u8]]| -> Result<Arc<ClientConfig>, GatewayError> {
            let mut cfg = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| GatewayError::Tls(e.to_string()))?
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(Arc::new(cfg))
        };
        Ok(Upstream {
            hosts: network
                .hosts
                .iter()
                .map(|(k, v)| (normalize_name(k), *v))
                .collect(),
            allow_private,
            tls_any: client(&[b"h2", b"http/1.1"])?,
            tls_h1: client(&[b"http/1.1"])?,
            connect_timeout,
        })
    }

    /// The addresses `host:port` may be dialed at, in resolver order, after
    /// the private-range check.
    pub(crate) async fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, DialError> {
        let host = normalize_name(host);
        let candidates: Vec<SocketAddr> = if let Some(fixed) = self.hosts.get(&host) {
            vec![SocketAddr::new(fixed.ip, fixed.port.unwrap_or(port))]
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            vec![SocketAddr::new(ip, port)]
        } else {
            let lookup = tokio::net::lookup_host((host.clone(), port));
            match tokio::time::timeout(self.connect_timeout, lookup).await {
                Ok(Ok(addrs)) => addrs.collect(),
                Ok(Err(e)) => {
                    return Err(DialError::Resolve {
                        host,
                        reason: e.to_string(),
                    });
                }
                Err(_) => {
                    return Err(DialError::Resolve {
                        host,
                        reason: "the lookup timed out".into(),
                    });
                }
            }
        };
        let mut allowed = Vec::new();
        let mut refused = Vec::new();
        for a in candidates {
            let a = SocketAddr::new(addr::canonical(a.ip()), a.port());
            match addr::check(a.ip(), &self.allow_private) {
                Ok(()) => allowed.push(a),
                Err(why) => refused.push(format!("{} ({why})", a.ip())),
            }
        }
        if allowed.is_empty() {
            return Err(if refused.is_empty() {
                DialError::Resolve {
                    host,
                    reason: "no addresses".into(),
                }
            } else {
                DialError::Refused {
                    host,
                    detail: format!(
                        "{}; list the range in [network] allow_private to reach it",
                        refused.join(", ")
                    ),
                }
            });
        }
        Ok(allowed)
    }

    /// A TCP connection to `host:port` at an address that passed the check.
    pub(crate) async fn dial(&self, host: &str, port: u16) -> Result<TcpStream, DialError> {
        let addrs = self.resolve(host, port).await?;
        let mut last = String::new();
        for a in addrs.iter().take(4) {
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(a)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Ok(Err(e)) => last = format!("{a}: {e}"),
                Err(_) => last = format!("{a}: timed out"),
            }
        }
        Err(DialError::Connect {
            host: host.to_string(),
            reason: last,
        })
    }

    /// TLS over `tcp`, verifying the server as `host`; also says whether h2
    /// was negotiated.
    pub(crate) async fn tls(
        &self,
        tcp: TcpStream,
        host: &str,
        h1_only: bool,
    ) -> Result<(TlsStream<TcpStream>, bool), DialError> {
        let tls_err = |reason: String| DialError::Tls {
            host: host.to_string(),
            reason,
        };
        let name = ServerName::try_from(normalize_name(host))
            .map_err(|e| tls_err(format!("not a valid server name: {e}")))?;
        let cfg = if h1_only { &self.tls_h1 } else { &self.tls_any };
        let connect = TlsConnector::from(cfg.clone()).connect(name, tcp);
        let tls = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| tls_err("the handshake timed out".into()))?
            .map_err(|e| tls_err(e.to_string()))?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok((tls, h2))
    }
}

/// Lowercase, without a trailing dot or IPv6 brackets.
pub(crate) fn normalize_name(host: &str) -> String {
    let h = host.trim();
    let h = h
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(h);
    h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase()
}

/// hyper-util's connector: `https://name:port` and `http://name:port` URIs
/// become checked, dialed (and for https, verified) connections.
#[derive(Clone)]
pub(crate) struct Connector {
    pub(crate) upstream: Arc<Upstream>,
    /// Offer only HTTP/1.1 (for requests that upgrade to WebSocket).
    pub(crate) h1_only: bool,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower_service::Service<Uri> for Connector {
    type Response = UpstreamConn;
    type Error = DialError;
    type Future = BoxFuture<Result<UpstreamConn, DialError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), DialError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let upstream = self.upstream.clone();
        let h1_only = self.h1_only;
        Box::pin(async move {
            let host = uri.host().unwrap_or_default().to_string();
            let https = uri.scheme_str() == Some("https");
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let tcp = upstream.dial(&host, port).await?;
            if https {
                let (tls, h2) = upstream.tls(tcp, &host, h1_only).await?;
                Ok(UpstreamConn {
                    io: TokioIo::new(Stream::Tls(Box::new(tls))),
                    h2,
                })
            } else {
                Ok(UpstreamConn {
                    io: TokioIo::new(Stream::Plain(tcp)),
                    h2: false,
                })
            }
        })
    }
}

pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connection handed to the pooled client.
pub(crate) struct UpstreamConn {
    io: TokioIo<Stream>,
    h2: bool,
}

impl Connection for UpstreamConn {
    fn connected(&self) -> Connected {
        let c = Connected::new();
        if self.h2 { c.negotiated_h2() } else { c }
    }
}

impl hyper::rt::Read for UpstreamConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UpstreamConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(allow_private: &[&str], hosts: &[(&str, &str)]) -> Upstream {
        let network = cordon_policy::Network {
            allow_private: allow_private.iter().map(|s| s.to_string()).collect(),
            hosts: hosts
                .iter()
                .map(|(k, v)| (k.to_string(), cordon_policy::parse_host_address(v).unwrap()))
                .collect(),
            ..Default::default()
        };
        Upstream::new(
            &network,
            Arc::new(rustls::crypto::ring::default_provider()),
            Duration::from_secs(2),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn fixed_hosts_are_checked_like_resolved_ones() {
        let closed = upstream(&[], &[("api.test", "127.0.0.1:9")]);
        let err = closed.resolve("API.test.", 443).await.unwrap_err();
        assert_eq!(err.reason(), "private-address");
        assert!(err.to_string().contains("127.0.0.1 (loopback)"), "{err}");

        let open = upstream(
            &["127.0.0.0/8"],
            &[("api.test", "127.0.0.1:9"), ("b.test", "127.0.0.2")],
        );
        assert_eq!(
            open.resolve("api.test", 443).await.unwrap(),
            vec!["127.0.0.1:9".parse().unwrap()]
        );
        assert_eq!(
            open.resolve("b.test", 8443).await.unwrap(),
            vec!["127.0.0.2:8443".parse().unwrap()],
            "the connection's port when the entry has none"
        );
        let err = open.resolve("169.254.169.254", 80).await.unwrap_err();
        assert_eq!(err.reason(), "private-address");
    }

    #[tokio::test]
    async fn localhost_by_name_is_refused() {
        let u = upstream(&[], &[]);
        let err = u.resolve("localhost", 80).await.unwrap_err();
        assert!(
            matches!(err, DialError::Refused { .. } | DialError::Resolve { .. }),
            "{err}"
        );
    }

    #[test]
    fn bad_upstream_ca_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let network = cordon_policy::Network {
            upstream_ca: vec![path.clone()],
            ..Default::default()
        };
        let err = Upstream::new(
            &network,
            Arc::new(rustls::crypto::ring::default_provider()),
            Duration::from_secs(1),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
}
