//! A small blocking client for the admin API, for the `cordon flags` CLI.
//!
//! One request per connection over hyper's HTTP/1.1 client (`http://`, or
//! `https://` with rustls verified against the host's roots), driven by a
//! single-threaded tokio runtime: enough for a command line that sends one or
//! two requests. Answers are read up to [`MAX_RESPONSE`] bytes.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};

/// Largest answer read from the server.
const MAX_RESPONSE: usize = 64 << 20;
/// Longest a request may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Errors talking to a flag server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "CORDON_FLAGS_URL {0:?} is not an http:// or https:// URL of a server (like http://127.0.0.1:4242)"
    )]
    BadUrl(String),
    #[error("cannot reach the flag server at {url}: {source}")]
    Io { url: String, source: std::io::Error },
    #[error("the flag server at {url} sent a malformed response")]
    Malformed { url: String },
    #[error("the flag server refused {method} {path} with {status}: {message}")]
    Refused {
        method: &'static str,
        path: String,
        status: u16,
        message: String,
    },
}

/// An admin API endpoint and the token to use.
#[derive(Debug, Clone)]
pub struct AdminClient {
    /// `host:port` to connect to.
    authority: String,
    /// The host name alone (TLS server name).
    host: String,
    tls: bool,
    url: String,
    token: String,
}

impl AdminClient {
    pub fn new(url: &str, token: &str) -> Result<Self, ClientError> {
        let bad = || ClientError::BadUrl(url.to_owned());
        let uri: hyper::Uri = url.trim_end_matches('/').parse().map_err(|_| bad())?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad()),
        };
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(bad());
        }
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(bad)?;
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Self {
            authority: format!("{host}:{port}"),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            tls,
            url: url.to_owned(),
            token: token.to_owned(),
        })
    }

    /// Send one request; a 2xx answer's JSON body (`null` when empty), else
    /// [`ClientError::Refused`] with the server's `error` message.
    pub fn send(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| self.io(source))?;
        let (status, payload) = rt
            .block_on(async {
                tokio::time::timeout(TIMEOUT, self.exchange(method, path, body)).await
            })
            .map_err(|_| self.io(std::io::Error::from(std::io::ErrorKind::TimedOut)))??;
        let json: serde_json::Value = if payload.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&payload).map_err(|_| self.malformed())?
        };
        if (200..300).contains(&status) {
            Ok(json)
        } else {
            Err(ClientError::Refused {
                method,
                path: path.to_owned(),
                status,
                message: json["error"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| String::from_utf8_lossy(&payload).into_owned()),
            })
        }
    }

    fn io(&self, source: std::io::Error) -> ClientError {
        ClientError::Io {
            url: self.url.clone(),
            source,
        }
    }

    fn malformed(&self) -> ClientError {
        ClientError::Malformed {
            url: self.url.clone(),
        }
    }

    async fn exchange(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let tcp = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| self.io(e))?;
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::AUTHORIZATION, &self.token)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes::Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .map_err(|_| ClientError::BadUrl(self.url.clone()))?;
        if self.tls {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| self.io(std::io::Error::other(e)))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            let name = rustls_pki_types::ServerName::try_from(self.host.clone())
                .map_err(|_| ClientError::BadUrl(self.url.clone()))?;
            let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| self.io(e))?;
            self.round_trip(stream, request).await
        } else {
            self.round_trip(tcp, request).await
        }
    }

    async fn round_trip<S>(
        &self,
        stream: S,
        request: hyper::Request<Full<bytes::Bytes>>,
    ) -> Result<(u16, Vec<u8>), ClientError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|_| self.malformed())?;
        tokio::spawn(conn);
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| self.io(std::io::Error::other(e)))?;
        let status = response.status().as_u16();
        let payload = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|_| self.malformed())?
            .to_bytes()
            .to_vec();
        Ok((status, payload))
    }
}
