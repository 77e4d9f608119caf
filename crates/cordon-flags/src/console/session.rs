//! The browser's side of a console session: the cookie that carries the API session
//! token, and the CSRF token every console form carries.
//!
//! The session itself (its expiry, its owner, logging out) lives in the API; this
//! module only moves its token between the browser and the API and ties forms to it.

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The cookie's name.
pub(super) const COOKIE: &str = "cordon_console";

/// Tokens longer than the API accepts are not worth decoding.
const MAX_TOKEN_BYTES: usize = 1024;

/// Who is asking: the session token from the cookie, if any, and the address the
/// browser connected from.
pub(super) struct Visitor {
    pub session: Option<String>,
    pub peer: Option<ConnectInfo<SocketAddr>>,
}

impl<S: Send + Sync> FromRequestParts<S> for Visitor {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Visitor {
            session: session_from(&parts.headers),
            peer: parts.extensions.get::<ConnectInfo<SocketAddr>>().copied(),
        })
    }
}

/// The session token in the request's cookies. The cookie holds it hex-encoded, so any
/// token text survives cookie syntax.
pub(super) fn session_from(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .and_then(|(_, value)| unhex(value))
        .filter(|t| !t.is_empty())
}

/// `Set-Cookie` for a new session. `HttpOnly`: page scripts cannot read it;
/// `SameSite=Strict`: other sites' pages cannot make the browser send it; `Path`:
/// only the console's URLs see it, not the API's. No `Secure`: this server speaks
/// plain HTTP and cannot tell whether a proxy in front of it terminates TLS
/// (docs/console.md).
pub(super) fn set_cookie(token: &str) -> String {
    format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/console",
        hex(token.as_bytes())
    )
}

/// `Set-Cookie` that makes the browser forget the session.
pub(super) fn clear_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/console; Max-Age=0")
}

/// The CSRF token of a session: SHA-256 of a fixed label and the session token. Only
/// the holder of the session token (kept from scripts by `HttpOnly`) can compute it,
/// and it is the same on every replica and across restarts, so a form rendered by one
/// server is accepted by another.
pub(super) fn csrf_token(session: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"cordon-console-csrf\0");
    h.update(session.as_bytes());
    hex(&h.finalize())
}

/// Whether a form's CSRF token belongs to this session, compared in constant time.
pub(super) fn csrf_ok(session: &str, presented: &str) -> bool {
    let expected = csrf_token(session);
    expected.len() == presented.len() && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) || s.len() > 2 * MAX_TOKEN_BYTES {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_cookie_carries_any_token_back() {
        let token = "user:alice.s3cr;et=\" x";
        let set = set_cookie(token);
        let value = set.split(';').next().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {value}; more=2")).unwrap(),
        );
        assert_eq!(session_from(&headers).as_deref(), Some(token));
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
        assert!(set.contains("Path=/console"));
    }

    #[test]
    fn garbage_cookies_are_no_session() {
        for bad in [
            "cordon_console=zz",
            "cordon_console=abc",
            "cordon_console=",
            "cordon_consolex=6162",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::COOKIE, HeaderValue::from_str(bad).unwrap());
            assert_eq!(session_from(&headers), None, "{bad}");
        }
    }

    #[test]
    fn csrf_tokens_are_bound_to_their_session() {
        let t = csrf_token("session-a");
        assert!(csrf_ok("session-a", &t));
        assert!(!csrf_ok("session-b", &t));
        assert!(!csrf_ok("session-a", ""));
        assert!(!csrf_ok("session-a", &t[..63]));
    }
}
