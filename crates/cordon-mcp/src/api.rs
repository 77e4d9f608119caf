//! The seam between the tools and the flag server: one JSON request at a time.
//!
//! [`FlagApi`] is all the tools need from the network. [`HttpFlagApi`] implements it
//! with `cordon_flags::client::AdminClient` (blocking, one request per connection);
//! unit tests implement it with a scripted double, so the decisions (protected
//! environment or not, add or replace a strategy) are tested without a server.

use cordon_flags::client::{AdminClient, ClientError};
use serde_json::Value;

/// Why a request to the flag server failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The server answered with a non-2xx status and its `{"error": ...}` text.
    #[error("the flag server refused {method} {path} with {status}: {message}{}", hint(*.status))]
    Refused {
        method: &'static str,
        path: String,
        status: u16,
        message: String,
    },
    /// No answer: connection refused, timeout, malformed response, bad URL.
    #[error("{0}")]
    Unreachable(String),
}

impl ApiError {
    /// The HTTP status, for a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Refused { status, .. } => Some(*status),
            ApiError::Unreachable(_) => None,
        }
    }
}

/// What the agent (or the person wiring it up) should do about a refusal.
fn hint(status: u16) -> &'static str {
    match status {
        401 => {
            " (check the token given to `cordon mcp flags` with --token or CORDON_FLAGS_TOKEN: it must be an agent or admin token of this server)"
        }
        403 => " (this token may not do that; ask a human to do it, or to open a change request)",
        _ => "",
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Refused {
                method,
                path,
                status,
                message,
            } => ApiError::Refused {
                method,
                path,
                status,
                message,
            },
            other => ApiError::Unreachable(other.to_string()),
        }
    }
}

/// One JSON request to the flag server's admin API.
pub trait FlagApi: Send + Sync + 'static {
    /// Send `method path` with an optional JSON body; the answer's JSON (`null` when
    /// empty) for a 2xx, else [`ApiError::Refused`].
    fn send(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ApiError>;
}

/// The real flag server over HTTP(S).
#[derive(Debug, Clone)]
pub struct HttpFlagApi {
    client: AdminClient,
}

impl HttpFlagApi {
    /// `url` like `http://127.0.0.1:4242`; `token` sent as `Authorization`.
    pub fn new(url: &str, token: &str) -> Result<Self, ApiError> {
        Ok(Self {
            client: AdminClient::new(url, token)?,
        })
    }
}

impl FlagApi for HttpFlagApi {
    fn send(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        Ok(self.client.send(method, path, body)?)
    }
}

/// Escape one path segment. Names the server accepts are URL-friendly already;
/// anything else is escaped so it reaches the server (and is refused there) intact
/// instead of changing the path.
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
