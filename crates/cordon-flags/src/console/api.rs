//! The console's only way to read or change anything: the JSON admin API router,
//! called in-process with the signed-in user's session token.
//!
//! Nothing here knows what a flag or a change request is; it sends a request through
//! the same `Router` the network does and hands back the JSON answer, or the API's
//! refusal (its status and its `{"error"}` message) untouched, so the console can never
//! do more than the API lets that token do.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::Value;
use tower::ServiceExt;

/// The largest API answer the console reads. An audit page of 100 events with large
/// before/after states stays far below it.
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// The API router the console fronts.
#[derive(Clone)]
pub(super) struct Api {
    router: Router,
}

/// The API said no (or could not be asked): its status and its message, shown to the
/// user as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

impl Refusal {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// One signed-in browser's calls: its session token and the address it connected
/// from, passed on as the network would (the API may rate-limit logins by address).
pub(super) struct Caller<'a> {
    pub api: &'a Api,
    pub token: Option<&'a str>,
    pub peer: Option<ConnectInfo<SocketAddr>>,
}

impl Api {
    pub fn new(router: Router) -> Self {
        Self { router }
    }
}

impl Caller<'_> {
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, Refusal> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// Send one request through the API router. A 2xx answer is its JSON (`null` when
    /// empty); anything else is a [`Refusal`] carrying the API's `error` message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Refusal> {
        let mut builder = Request::builder().method(method).uri(path);
        if let Some(token) = self.token {
            builder = builder.header(header::AUTHORIZATION, token);
        }
        let body = match body {
            Some(json) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        // A session token that is not a valid header value cannot be a session.
        let mut request = builder.body(body).map_err(|_| {
            Refusal::new(
                StatusCode::UNAUTHORIZED,
                "the session is not valid; sign in again",
            )
        })?;
        if let Some(peer) = self.peer {
            request.extensions_mut().insert(peer);
        }
        let answer = match self.api.router.clone().oneshot(request).await {
            Ok(answer) => answer,
            Err(never) => match never {},
        };
        let status = answer.status();
        let bytes = axum::body::to_bytes(answer.into_body(), MAX_ANSWER_BYTES)
            .await
            .map_err(|e| {
                Refusal::new(
                    StatusCode::BAD_GATEWAY,
                    format!("the API's answer to {path} could not be read: {e}"),
                )
            })?;
        let json: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        if status.is_success() {
            return Ok(json);
        }
        let message = match &json {
            Value::Object(o) => match o.get("error") {
                Some(Value::String(s)) => s.clone(),
                _ => json.to_string(),
            },
            Value::String(s) => s.clone(),
            _ => status
                .canonical_reason()
                .unwrap_or("request refused")
                .to_owned(),
        };
        Err(Refusal::new(status, message))
    }
}

/// One path segment, percent-encoded: names come from the database and from the
/// browser, and must not be able to add segments or a query to an API path.
pub(super) fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    // `.` and `..` alone would be resolved as path steps by some clients.
    match out.as_str() {
        "." => "%2E".into(),
        ".." => "%2E%2E".into(),
        _ => out,
    }
}

#[cfg(test)]
mod tests {
    use super::seg;

    #[test]
    fn segments_cannot_escape_their_place() {
        assert_eq!(seg("my-flag_1.x~"), "my-flag_1.x~");
        assert_eq!(seg("a/b?c=d#e"), "a%2Fb%3Fc%3Dd%23e");
        assert_eq!(seg(".."), "%2E%2E");
        assert_eq!(seg("In review"), "In%20review");
        assert_eq!(seg("é"), "%C3%A9");
    }
}
