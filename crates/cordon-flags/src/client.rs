//! A small blocking client for the admin API, for the `cordon flags` CLI.
//!
//! Plain HTTP/1.1 over `std::net::TcpStream`, one request per connection: enough for
//! a command line that sends one or two requests. It does not do TLS; put the server
//! behind a TLS-terminating proxy on the same host, or use a real Unleash SDK.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Errors talking to a flag server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("CORDON_FLAGS_URL {0:?} is not an http://HOST:PORT URL (https is not supported yet)")]
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
    host: String,
    url: String,
    token: String,
}

impl AdminClient {
    pub fn new(url: &str, token: &str) -> Result<Self, ClientError> {
        let host = url
            .strip_prefix("http://")
            .map(|h| h.trim_end_matches('/'))
            .filter(|h| !h.is_empty() && !h.contains('/'))
            .ok_or_else(|| ClientError::BadUrl(url.to_owned()))?;
        Ok(Self {
            host: host.to_owned(),
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
        let io = |source| ClientError::Io {
            url: self.url.clone(),
            source,
        };
        let malformed = || ClientError::Malformed {
            url: self.url.clone(),
        };
        let mut stream = TcpStream::connect(&self.host).map_err(io)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(io)?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\n\
             Connection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            self.token,
            body.len()
        );
        stream.write_all(request.as_bytes()).map_err(io)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).map_err(io)?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(malformed)?;
        let head = std::str::from_utf8(&raw[..split]).map_err(|_| malformed())?;
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(malformed)?;
        let chunked = head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("transfer-encoding:") && l.contains("chunked")
        });
        let mut payload = raw[split + 4..].to_vec();
        if chunked {
            payload = dechunk(&payload).ok_or_else(malformed)?;
        }
        let json: serde_json::Value = if payload.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&payload).map_err(|_| malformed())?
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
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..end]).ok()?.trim(), 16).ok()?;
        b = b.get(end + 2..)?;
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}
