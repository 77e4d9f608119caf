//! HTTP serving on the sandbox side and forwarding to the real server: the
//! per-request checks, rules, limits, secret injection, and the response path.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use cordon_policy::RuleAction;
use http::header::{
    self, ACCEPT_ENCODING, CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH, HOST, HeaderMap,
    HeaderName, HeaderValue, TRANSFER_ENCODING, UPGRADE,
};
use http::request::Parts;
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};

use super::ask::{Answer, PendingRequest};
use super::body::{BoxError, RequestBody, ResponseBody, Trip, Tripped};
use super::io::H1Guard;
use super::rules::{METHOD_OVERRIDE_HEADERS, governing_rule, normalize_path};
use super::scrub::{Needle, replace_all};
use super::upstream::{DialError, normalize_name};
use super::{Gateway, ask_refusal, obj, secrets};

/// Request bodies declared (`Content-Length`) at most this long are read
/// whole and checked before the request is sent upstream.
const PREFETCH_BODY: u64 = 64 * 1024;

/// Response bodies as hyper's server takes them.
pub(crate) type RespBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// One sandbox connection being served.
pub(crate) struct ConnCtx {
    gw: Arc<Gateway>,
    id: u64,
    host: String,
    port: u16,
    tls: bool,
    requests: AtomicU64,
    /// Set by [`H1Guard`] when the sandbox sent ambiguous framing.
    smuggled: Arc<AtomicBool>,
}

impl ConnCtx {
    pub(crate) fn new(gw: Arc<Gateway>, id: u64, host: String, port: u16, tls: bool) -> ConnCtx {
        ConnCtx {
            gw,
            id,
            host,
            port,
            tls,
            requests: AtomicU64::new(0),
            smuggled: Arc::new(AtomicBool::new(false)),
        }
    }

    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// Serves HTTP/1.1 or HTTP/2 (per ALPN; sniffed when there is none) on `io`
/// until the sandbox closes it or a limit ends it.
pub(crate) async fn serve_connection<I>(ctx: Arc<ConnCtx>, io: I, alpn: Option<Vec<u8>>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = ctx.gw.limits.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(200);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        // What the sandbox may send before the gateway reads it is what the
        // gateway may have to hold: 256 KiB per stream, 512 KiB per
        // connection (hyper's default is 1 MiB each), which bounds buffered
        // request data to about 0.5 GiB across 1024 connections.
        .initial_stream_window_size(256 * 1024)
        .initial_connection_window_size(512 * 1024)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(50))
        .max_local_error_reset_streams(Some(256));
    let h2 = alpn.as_deref() == Some(b"h2");
    let builder = match alpn.as_deref() {
        Some(b"h2") => builder.http2_only(),
        Some(b"http/1.1") => builder.http1_only(),
        _ => builder,
    };
    let io = H1Guard::new(io, (!h2).then(|| ctx.smuggled.clone()));
    let svc_ctx = ctx.clone();
    let service = service_fn(move |req| {
        let ctx = svc_ctx.clone();
        async move { Ok::<_, Infallible>(proxy(ctx, req).await) }
    });
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await
    {
        tracing::debug!(connection = ctx.id, host = %ctx.host, "connection ended: {e}");
    }
}

/// What is known about a request, for its `net.request` and `net.blocked`
/// events.
struct Record {
    ctx: Arc<ConnCtx>,
    method: String,
    path: String,
    rule: Value,
    secrets: Vec<String>,
    started: Instant,
    bytes_up: Arc<AtomicU64>,
}

impl Record {
    fn emit_request(&self, status: u16, bytes_down: u64) {
        self.ctx.gw.event(
            "net.request",
            json!({
                "host": self.ctx.host,
                "method": self.method,
                "path": self.path,
                "status": status,
                "bytes_up": self.bytes_up.load(Ordering::Relaxed),
                "bytes_down": bytes_down,
                "ms": self.started.elapsed().as_millis() as u64,
                "rule": self.rule,
                "secrets": self.secrets,
            }),
        );
    }

    /// Refuses the request: a `net.blocked` event, the counters, and a short
    /// plain-text response saying why.
    fn refuse(&self, status: StatusCode, reason: &str, detail: String) -> Response<RespBody> {
        let gw = &self.ctx.gw;
        gw.counters.requests_blocked.fetch_add(1, Ordering::Relaxed);
        let mut fields = obj(json!({
            "host": self.ctx.host,
            "port": self.ctx.port,
            "reason": reason,
            "method": self.method,
            "path": self.path,
            "status": status.as_u16(),
            "detail": detail,
        }));
        if self.rule != "default" {
            fields.insert("rule".into(), self.rule.clone());
        }
        (gw.emit)("net.blocked", fields);
        let text = format!("cordon gateway: {detail}\n");
        self.emit_request(status.as_u16(), text.len() as u64);
        let mut resp = Response::new(
            Full::new(Bytes::from(text))
                .map_err(|e| match e {})
                .boxed_unsync(),
        );
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp.headers_mut().insert(
            "x-cordon-blocked",
            HeaderValue::from_str(reason).unwrap_or(HeaderValue::from_static("1")),
        );
        resp
    }

    fn refuse_tripped(&self, t: Tripped) -> Response<RespBody> {
        match t {
            Tripped::TooLarge { limit } => self.refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                format!("the request body is larger than the {limit}-byte limit"),
            ),
            Tripped::Placeholder { secret, place } => {
                self.secret_blocked(secret, &place);
                let ctx = &self.ctx;
                let clear_text = !ctx.tls && ctx.gw.secrets.bound_to(secret, &ctx.host, ctx.port);
                self.refuse(
                    StatusCode::FORBIDDEN,
                    "secret-placeholder",
                    format!(
                        "the placeholder of secret {} may not be sent to {}{} (found in the {place})",
                        ctx.gw.secrets.name(secret),
                        ctx.host,
                        if clear_text {
                            " over plain HTTP; use https"
                        } else {
                            ""
                        },
                    ),
                )
            }
        }
    }

    fn secret_blocked(&self, secret: usize, place: &str) {
        self.ctx.gw.event(
            "secret.blocked",
            json!({
                "name": self.ctx.gw.secrets.name(secret),
                "host": self.ctx.host,
                "where": place,
            }),
        );
    }
}

/// Ambiguous message framing (request smuggling) that hyper lets through.
fn framing_problem(headers: &HeaderMap) -> Option<String> {
    let lengths: Vec<&HeaderValue> = headers.get_all(CONTENT_LENGTH).iter().collect();
    if lengths.windows(2).any(|w| w[0] != w[1]) {
        return Some("the request has conflicting Content-Length headers".into());
    }
    if !lengths.is_empty() && headers.contains_key(TRANSFER_ENCODING) {
        return Some("the request has both Content-Length and Transfer-Encoding".into());
    }
    None
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// True when `authority` names `host` (and, if it has a port, `port`).
fn authority_matches(authority: &str, host: &str, port: u16) -> bool {
    if authority.contains('@') {
        return false;
    }
    let Ok(a) = authority.parse::<Authority>() else {
        return false;
    };
    normalize_name(a.host()) == host && a.port_u16().is_none_or(|p| p == port)
}

/// The request must be for the host the connection was opened to.
fn check_authority(parts: &Parts, host: &str, port: u16) -> Result<(), String> {
    let mut named = false;
    if let Some(a) = parts.uri.authority() {
        named = true;
        if !authority_matches(a.as_str(), host, port) {
            return Err(format!(
                "the request is for {a}, but this connection is to {host}:{port}"
            ));
        }
    }
    let mut hosts = parts.headers.get_all(HOST).iter();
    if let Some(h) = hosts.next() {
        named = true;
        if hosts.next().is_some() {
            return Err("the request has more than one Host header".into());
        }
        let h = h.to_str().unwrap_or("");
        if !authority_matches(h, host, port) {
            return Err(format!(
                "the Host header names {h:?}, but this connection is to {host}:{port}"
            ));
        }
    }
    if !named {
        return Err("the request names no host".into());
    }
    Ok(())
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.to_str()
            .unwrap_or("")
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    })
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those named in
/// `Connection`. With `upgrade`, keeps `Upgrade` and sets `Connection: upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| {
            v.to_str()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for n in named {
        if !(upgrade && n == UPGRADE) {
            headers.remove(n);
        }
    }
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for n in [
        CONNECTION,
        header::TE,
        header::TRAILER,
        TRANSFER_ENCODING,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(n);
    }
    for n in ["keep-alive", "proxy-connection"] {
        headers.remove(n);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
}

/// Replaces real secret values in header values with their placeholders.
pub(crate) fn scrub_headers(headers: &mut HeaderMap, needles: &[Needle]) {
    if needles.is_empty() {
        return;
    }
    for v in headers.values_mut() {
        if let Some(clean) = replace_all(v.as_bytes(), needles) {
            *v = HeaderValue::from_bytes(&clean).unwrap_or(HeaderValue::from_static("[scrubbed]"));
        }
    }
}

/// A WebSocket handshake. Other upgrades (`h2c`, TLS) are not honoured:
/// after a switch the gateway no longer sees requests, and only WebSocket is
/// worth that.
fn wants_upgrade(parts: &Parts) -> bool {
    parts.version == Version::HTTP_11
        && connection_has(&parts.headers, "upgrade")
        && parts
            .headers
            .get(UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

fn dial_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a DialError> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(d) = err.downcast_ref::<DialError>() {
            return Some(d);
        }
        cur = err.source();
    }
    None
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        out.push_str(": ");
        out.push_str(&err.to_string());
        cur = err.source();
    }
    out
}

async fn proxy(ctx: Arc<ConnCtx>, req: Request<Incoming>) -> Response<RespBody> {
    ctx.requests.fetch_add(1, Ordering::Relaxed);
    let gw = ctx.gw.clone();
    let (mut parts, body) = req.into_parts();
    let mut rec = Record {
        ctx: ctx.clone(),
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        rule: Value::from("default"),
        secrets: Vec::new(),
        started: Instant::now(),
        bytes_up: Arc::new(AtomicU64::new(0)),
    };
    let host = ctx.host.as_str();
    let port = ctx.port;

    if ctx.smuggled.load(Ordering::Relaxed) {
        return rec.refuse(
            StatusCode::BAD_REQUEST,
            "request-smuggling",
            "a request on this connection had both Content-Length and Transfer-Encoding".into(),
        );
    }
    if let Some(why) = framing_problem(&parts.headers) {
        return rec.refuse(StatusCode::BAD_REQUEST, "request-smuggling", why);
    }
    if parts.method == Method::CONNECT {
        return rec.refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "connect-method",
            "CONNECT tunnels are not available through the gateway".into(),
        );
    }
    if let Err(why) = check_authority(&parts, host, port) {
        return rec.refuse(StatusCode::MISDIRECTED_REQUEST, "host-mismatch", why);
    }
    let Some(path) = normalize_path(parts.uri.path()) else {
        return rec.refuse(
            StatusCode::BAD_REQUEST,
            "bad-path",
            "the request path must start with /".into(),
        );
    };
    rec.path = path.clone();

    // The method, and what override headers claim it is (a few: each one
    // costs a pass over the rules).
    let mut methods = vec![parts.method.as_str()];
    let claimed = METHOD_OVERRIDE_HEADERS
        .iter()
        .flat_map(|name| parts.headers.get_all(*name))
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(str::trim));
    for m in claimed {
        if methods.len() == 4 {
            break;
        }
        if !methods.iter().any(|x| x.eq_ignore_ascii_case(m)) {
            methods.push(m);
        }
    }
    let rule = governing_rule(&gw.rules, host, port, &methods, &path);
    if let Some((i, _)) = rule {
        rec.rule = Value::from(i);
    }
    if let Some((i, r)) = rule
        && r.action == RuleAction::Deny
    {
        return rec.refuse(
            StatusCode::FORBIDDEN,
            "rule-deny",
            format!("{} {path} is denied by [[rule]] #{i}", parts.method),
        );
    }
    let rate = match rule.and_then(|(i, r)| {
        r.requests_per_minute
            .map(|n| (n, format!("{host}#rule{i}")))
    }) {
        Some(x) => Some(x),
        None => gw
            .network
            .requests_per_minute
            .map(|n| (n, host.to_string())),
    };
    if let Some((per_minute, key)) = rate
        && !gw.rate.check(&key, per_minute, Instant::now())
    {
        return rec.refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limit",
            format!("more than {per_minute} requests per minute to {host}"),
        );
    }
    let limit = rule
        .and_then(|(_, r)| r.max_body)
        .unwrap_or(gw.network.max_request_body);
    if content_length(&parts.headers).is_some_and(|n| n > limit) {
        return rec.refuse_tripped(Tripped::TooLarge { limit });
    }

    let scan = gw.secrets.scan(&parts, host, port, ctx.tls);
    if let Some(f) = &scan.blocked {
        return rec.refuse_tripped(Tripped::Placeholder {
            secret: f.secret,
            place: f.place.clone(),
        });
    }

    if let Some((i, r)) = rule
        && r.action == RuleAction::Ask
    {
        let info = PendingRequest {
            id: 0,
            kind: "request",
            host: host.to_string(),
            port,
            method: Some(parts.method.to_string()),
            path: Some(path.clone()),
            since: 0,
            rule: i.to_string(),
        };
        let (answer, _) = gw
            .asks
            .ask(info, gw.network.ask_timeout, |p| gw.announce(p))
            .await;
        if answer != Answer::Allowed
            && let Some((reason, detail)) = ask_refusal(answer)
        {
            return rec.refuse(StatusCode::FORBIDDEN, reason, detail);
        }
    }

    for f in &scan.inject {
        let value = match gw.secrets.value(f.secret).await {
            Ok(v) => v,
            Err(e) => {
                return rec.refuse(StatusCode::BAD_GATEWAY, "secret-unavailable", e.to_string());
            }
        };
        let placeholder = String::from_utf8_lossy(gw.secrets.placeholder(f.secret)).into_owned();
        if secrets::inject(&mut parts, &f.place, &placeholder, &value) {
            let name = gw.secrets.name(f.secret).to_string();
            gw.counters.secrets_injected.fetch_add(1, Ordering::Relaxed);
            gw.event(
                "secret.injected",
                json!({ "name": name, "host": host, "where": f.place }),
            );
            if !rec.secrets.contains(&name) {
                rec.secrets.push(name);
            }
        }
    }

    // The request as it goes upstream.
    let upgrade = wants_upgrade(&parts);
    let downstream_upgrade = if upgrade {
        parts.extensions.remove::<OnUpgrade>()
    } else {
        None
    };
    strip_hop_by_hop(&mut parts.headers, upgrade);
    parts.headers.remove(HOST);
    let bound = gw.secrets.any_bound_to(host, port);
    if bound {
        // A compressed response could not be scrubbed, and a byte range
        // could hold a slice of a value too short to recognise.
        parts
            .headers
            .insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        parts.headers.remove(header::RANGE);
        parts.headers.remove(header::IF_RANGE);
    }
    if upgrade {
        // Compressed WebSocket frames could not be scrubbed either.
        parts.headers.remove("sec-websocket-extensions");
    }
    let scheme = if ctx.tls { "https" } else { "http" };
    let default_port = if ctx.tls { 443 } else { 80 };
    let authority = if port == default_port {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    parts.uri = match format!("{scheme}://{authority}{path}{query}").parse() {
        Ok(u) => u,
        Err(e) => {
            return rec.refuse(
                StatusCode::BAD_REQUEST,
                "bad-path",
                format!("unusable request target: {e}"),
            );
        }
    };
    parts.version = Version::HTTP_11;
    parts.extensions = http::Extensions::new();
    let trip = Arc::new(Trip::default());
    let watched = scan
        .watch_body
        .iter()
        .map(|i| (*i, gw.secrets.placeholder(*i).to_vec()))
        .collect();
    let body = RequestBody::new(body, limit, watched, trip.clone(), rec.bytes_up.clone());
    let client = if upgrade {
        &gw.upgrade_client
    } else {
        &gw.client
    };
    let waited = tokio::time::timeout(
        gw.limits.upstream_response_timeout,
        gw.upstream_slots.clone().acquire_owned(),
    )
    .await;
    let Ok(Ok(slot)) = waited else {
        return rec.refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream-busy",
            format!(
                "{} requests were already in flight for {}s",
                gw.limits.max_upstream_requests,
                gw.limits.upstream_response_timeout.as_secs()
            ),
        );
    };
    // A body of declared small size is read whole before anything goes
    // upstream (holding an upstream slot, which bounds the memory this takes), so a refused body (a placeholder toward the wrong host, a
    // length that lies) leaves no trace there at all. Larger or open-ended
    // bodies stream: the checks cut them off mid-way and the upstream sees a
    // truncated request, never the refused bytes.
    let body = match content_length(&parts.headers) {
        Some(n) if n <= PREFETCH_BODY => {
            let read =
                tokio::time::timeout(gw.limits.upstream_response_timeout, body.collect()).await;
            match read {
                Ok(Ok(whole)) => {
                    // What `Expect: 100-continue` asked for has been done.
                    parts.headers.remove(header::EXPECT);
                    whole.map_err(|e| match e {}).boxed_unsync()
                }
                Ok(Err(e)) => {
                    if let Some(t) = trip.get() {
                        return rec.refuse_tripped(t);
                    }
                    return rec.refuse(
                        StatusCode::BAD_REQUEST,
                        "bad-body",
                        format!("the request body could not be read: {e}"),
                    );
                }
                Err(_) => {
                    return rec.refuse(
                        StatusCode::REQUEST_TIMEOUT,
                        "body-timeout",
                        format!(
                            "the {n}-byte request body did not arrive within {}s",
                            gw.limits.upstream_response_timeout.as_secs()
                        ),
                    );
                }
            }
        }
        _ => body.boxed_unsync(),
    };
    let upstream_req = Request::from_parts(parts, body);
    let sent = tokio::time::timeout(
        gw.limits.upstream_response_timeout,
        client.request(upstream_req),
    )
    .await;
    let resp = match sent {
        Err(_) => {
            return rec.refuse(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream-timeout",
                format!(
                    "{host} did not answer within {}s",
                    gw.limits.upstream_response_timeout.as_secs()
                ),
            );
        }
        Ok(Err(e)) => {
            if let Some(t) = trip.get() {
                return rec.refuse_tripped(t);
            }
            if let Some(d) = dial_error(&e) {
                let status = match d {
                    DialError::Refused { .. } => StatusCode::FORBIDDEN,
                    _ => StatusCode::BAD_GATEWAY,
                };
                return rec.refuse(status, d.reason(), d.to_string());
            }
            return rec.refuse(StatusCode::BAD_GATEWAY, "upstream-error", error_chain(&e));
        }
        Ok(Ok(r)) => r,
    };
    if let Some(t) = trip.get() {
        return rec.refuse_tripped(t);
    }
    let (mut rparts, rbody) = resp.into_parts();
    let needles: Arc<[Needle]> = gw.secrets.scrub_needles().into();
    if bound
        && !needles.is_empty()
        && rparts
            .headers
            .get(CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return rec.refuse(
            StatusCode::BAD_GATEWAY,
            "compressed-response",
            format!("{host} sent a compressed response that cannot be checked for secret values"),
        );
    }
    gw.counters.requests_allowed.fetch_add(1, Ordering::Relaxed);

    if rparts.status == StatusCode::SWITCHING_PROTOCOLS {
        let upstream_upgrade = rparts.extensions.remove::<OnUpgrade>();
        let (Some(down), Some(up)) = (downstream_upgrade, upstream_upgrade) else {
            return rec.refuse(
                StatusCode::BAD_GATEWAY,
                "upstream-error",
                format!("{host} switched protocols without an upgrade request"),
            );
        };
        strip_hop_by_hop(&mut rparts.headers, true);
        scrub_headers(&mut rparts.headers, &needles);
        rparts.extensions = http::Extensions::new();
        let idle = gw.limits.idle_timeout;
        tokio::spawn(async move {
            let (up_bytes, down_bytes) = super::ws::bridge(down, up, &needles, idle).await;
            drop(slot);
            rec.bytes_up.fetch_add(up_bytes, Ordering::Relaxed);
            rec.emit_request(101, down_bytes);
        });
        return Response::from_parts(
            rparts,
            http_body_util::Empty::new()
                .map_err(|e| match e {})
                .boxed_unsync(),
        );
    }

    strip_hop_by_hop(&mut rparts.headers, false);
    scrub_headers(&mut rparts.headers, &needles);
    if !needles.is_empty() {
        // Scrubbing may change the length.
        rparts.headers.remove(CONTENT_LENGTH);
    }
    rparts.version = Version::default();
    rparts.extensions = http::Extensions::new();
    let status = rparts.status.as_u16();
    let on_done = Box::new(move |bytes_down| {
        drop(slot);
        rec.emit_request(status, bytes_down);
    });
    Response::from_parts(
        rparts,
        ResponseBody::new(rbody, needles, trip, on_done).boxed_unsync(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        assert!(authority_matches("api.test", "api.test", 443));
        assert!(authority_matches("API.test.:443", "api.test", 443));
        assert!(!authority_matches("api.test:444", "api.test", 443));
        assert!(!authority_matches("evil.test", "api.test", 443));
        assert!(!authority_matches("user@api.test", "api.test", 443));
        assert!(!authority_matches("", "api.test", 443));
        assert!(authority_matches("1.2.3.4:80", "1.2.3.4", 80));
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(h.contains_key("x-keep") && h.contains_key(header::TE));
    }

    #[test]
    fn only_websocket_upgrades_are_honoured() {
        let parts = |upgrade: &str| {
            Request::get("/")
                .header(CONNECTION, "keep-alive, Upgrade")
                .header(UPGRADE, upgrade)
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        assert!(wants_upgrade(&parts("WebSocket")));
        assert!(!wants_upgrade(&parts("h2c")));
        assert!(!wants_upgrade(&parts("TLS/1.2")));
    }

    #[test]
    fn framing_problems() {
        let mut h = HeaderMap::new();
        h.append(CONTENT_LENGTH, HeaderValue::from_static("3"));
        assert_eq!(framing_problem(&h), None);
        h.append(CONTENT_LENGTH, HeaderValue::from_static("4"));
        assert!(framing_problem(&h).is_some());
        let mut h = HeaderMap::new();
        h.append(CONTENT_LENGTH, HeaderValue::from_static("3"));
        h.append(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        assert!(framing_problem(&h).is_some());
    }
}
