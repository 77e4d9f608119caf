//! Secrets: where their real values come from, where placeholders may be
//! swapped for them, and which requests carry a placeholder somewhere it must
//! not go.
//!
//! Real values never appear in errors, events or logs. `env:` and `file:`
//! values are read once when the gateway starts (a missing one stops the
//! session from starting); `command:` values are produced on first use and
//! reused for their `ttl`.
//!
//! What is looked at: header values, `Authorization: Basic` credentials after
//! base64 decoding, the path and the query (after percent-decoding), and, for
//! hosts a secret is not bound to, the body and trailers (literally, as a
//! stream). A placeholder hidden by another encoding (base64 in a body,
//! compression) is not recognised.
//!
//! Real values only travel over TLS: on a plain-HTTP connection every secret
//! counts as unbound, so its placeholder blocks the request instead of being
//! swapped for a value anyone on the path could read.

use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cordon_policy::{HostPattern, Injection, Secret, SecretSource};
use http::header::{AUTHORIZATION, HeaderValue};
use http::request::Parts;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use super::GatewayError;
use super::scrub::Needle;

/// A secret as the session hands it to the gateway.
#[derive(Clone, Debug)]
pub struct SecretConfig {
    /// The secret's name (the variable the sandbox sees).
    pub name: String,
    /// What the sandbox holds instead of the value
    /// (see [`Secret::placeholder_or_default`]).
    pub placeholder: String,
    /// The policy entry.
    pub secret: Secret,
}

/// Largest `file:` secret read.
const MAX_FILE_BYTES: u64 = 1 << 20;
/// Largest `command:` output accepted.
const MAX_COMMAND_BYTES: usize = 64 << 10;
/// How long a `command:` may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Values remembered per `command:` secret for scrubbing after it rotates.
const MAX_REMEMBERED: usize = 8;

/// Everything but RFC 3986 unreserved characters is escaped in query values.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

enum Source {
    Fixed(String),
    Command {
        cmd: String,
        ttl: Option<Duration>,
        cache: tokio::sync::Mutex<Option<(String, Instant)>>,
    },
}

struct Entry {
    name: String,
    placeholder: String,
    hosts: Vec<HostPattern>,
    inject: Vec<Injection>,
    source: Source,
}

/// The session's secrets.
pub(crate) struct Secrets {
    entries: Vec<Entry>,
    /// Real values seen so far and their placeholders, for scrubbing.
    known: RwLock<Vec<(usize, Needle)>>,
}

/// Where in a request something was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Finding {
    pub(crate) secret: usize,
    pub(crate) place: String,
}

/// What [`Secrets::scan`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Scan {
    /// A placeholder headed to a host its secret is not bound to.
    pub(crate) blocked: Option<Finding>,
    /// Placeholders in a place where the value may be injected.
    pub(crate) inject: Vec<Finding>,
    /// Secrets whose placeholder must not appear in the body either.
    pub(crate) watch_body: Vec<usize>,
}

/// A `command:` secret could not be produced when needed.
#[derive(Debug, thiserror::Error)]
#[error("secret {name} ({from}): {reason}")]
pub(crate) struct SecretUnavailable {
    pub(crate) name: String,
    from: String,
    reason: String,
}

fn secret_err(name: &str, from: &SecretSource, reason: impl Into<String>) -> GatewayError {
    GatewayError::Secret {
        name: name.to_string(),
        from: from.to_string(),
        reason: reason.into(),
    }
}

/// Checks a value can travel in a header; the reason never quotes it.
fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("the value is empty".into());
    }
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err("the value contains a line break or NUL byte".into());
    }
    Ok(())
}

fn strip_newline(mut s: String) -> String {
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    s
}

fn expand_home(path: &Path) -> Option<PathBuf> {
    match path.strip_prefix("~") {
        Ok(rest) => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(rest)),
        Err(_) => Some(path.to_path_buf()),
    }
}

fn read_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let full = expand_home(path).ok_or("HOME is not set, so ~/ cannot be expanded")?;
    let file = std::fs::File::open(&full).map_err(|e| format!("cannot open it: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err("the file is larger than 1 MiB".into());
    }
    String::from_utf8(bytes)
        .map(strip_newline)
        .map_err(|_| "the file is not UTF-8 text".into())
}

/// Runs `sh -c cmd` with a time and output limit; blocking.
fn run_command(cmd: &str) -> Result<String, String> {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start sh: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let res = stdout
            .take(MAX_COMMAND_BYTES as u64 + 1)
            .read_to_end(&mut out)
            .map(|_| out);
        let _ = tx.send(res);
    });
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the command did not finish within {}s",
                    COMMAND_TIMEOUT.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("cannot wait for the command: {e}")),
        }
    };
    if !status.success() {
        return Err(format!("the command failed ({status})"));
    }
    let out = rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| "the command's output did not close (a background process keeps it open?)")?
        .map_err(|e| format!("cannot read the command's output: {e}"))?;
    if out.len() > MAX_COMMAND_BYTES {
        return Err("the command printed more than 64 KiB".into());
    }
    String::from_utf8(out)
        .map(strip_newline)
        .map_err(|_| "the command's output is not UTF-8 text".into())
}

/// What to look for in responses once `value` is known: the value, its
/// query-escaped form (what `query:` injection sends), the value without
/// surrounding whitespace (servers trim header values before echoing them),
/// and, for secrets injected with `basic`, the base64 text the value becomes
/// inside `Authorization: Basic` at each of the three alignments (the rest of
/// the credentials is the sandbox's to choose).
fn needles_for(placeholder: &str, value: &str, basic: bool) -> Vec<Needle> {
    let mut out = vec![Needle {
        find: value.as_bytes().to_vec(),
        replace: placeholder.as_bytes().to_vec(),
    }];
    let mut add = |find: Vec<u8>, replace: Vec<u8>| {
        if !find.is_empty() && !out.iter().any(|n| n.find == find) {
            out.push(Needle { find, replace });
        }
    };
    let escaped = utf8_percent_encode(value, QUERY_VALUE).to_string();
    add(escaped.into_bytes(), placeholder.as_bytes().to_vec());
    add(
        value.trim().as_bytes().to_vec(),
        placeholder.as_bytes().to_vec(),
    );
    if basic {
        for offset in 0..3 {
            add(
                base64_inner(value.as_bytes(), offset),
                base64_inner(placeholder.as_bytes(), offset),
            );
        }
    }
    out
}

/// The base64 characters that depend only on `bytes` when they start
/// `offset` bytes into a 3-byte group of a longer encoded text: the
/// characters whose six bits all come from `bytes`.
fn base64_inner(bytes: &[u8], offset: usize) -> Vec<u8> {
    use base64::engine::general_purpose::STANDARD_NO_PAD;
    let mut padded = vec![0u8; offset];
    padded.extend_from_slice(bytes);
    let text = STANDARD_NO_PAD.encode(&padded).into_bytes();
    let first = (8 * offset).div_ceil(6);
    let end = (8 * (offset + bytes.len()) / 6).min(text.len());
    text.get(first..end).map(<[u8]>::to_vec).unwrap_or_default()
}

impl Secrets {
    /// Reads `env:` and `file:` values now; fails naming the secret and its
    /// source, never the value.
    pub(crate) fn load(configs: &[SecretConfig]) -> Result<Secrets, GatewayError> {
        let mut entries = Vec::with_capacity(configs.len());
        let mut known = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            let from = &c.secret.from;
            if c.placeholder.len() < 8 {
                return Err(secret_err(
                    &c.name,
                    from,
                    "the placeholder must be at least 8 characters, or it would match ordinary traffic",
                ));
            }
            let source = match from {
                SecretSource::Env(var) => {
                    let value = std::env::var(var).map_err(|e| {
                        secret_err(
                            &c.name,
                            from,
                            match e {
                                std::env::VarError::NotPresent => {
                                    format!("the environment variable {var} is not set")
                                }
                                std::env::VarError::NotUnicode(_) => {
                                    format!("the environment variable {var} is not UTF-8")
                                }
                            },
                        )
                    })?;
                    Source::Fixed(value)
                }
                SecretSource::File(path) => {
                    Source::Fixed(read_file(path).map_err(|why| secret_err(&c.name, from, why))?)
                }
                SecretSource::Command(cmd) => Source::Command {
                    cmd: cmd.clone(),
                    ttl: c.secret.ttl,
                    cache: tokio::sync::Mutex::new(None),
                },
            };
            if let Source::Fixed(value) = &source {
                check_value(value).map_err(|why| secret_err(&c.name, from, why))?;
                if value.contains(&c.placeholder) {
                    return Err(secret_err(
                        &c.name,
                        from,
                        "the value contains its own placeholder",
                    ));
                }
                let basic = c.secret.inject.contains(&Injection::Basic);
                known.extend(
                    needles_for(&c.placeholder, value, basic)
                        .into_iter()
                        .map(|n| (i, n)),
                );
            }
            entries.push(Entry {
                name: c.name.clone(),
                placeholder: c.placeholder.clone(),
                hosts: c.secret.hosts.clone(),
                inject: c.secret.inject.clone(),
                source,
            });
        }
        Ok(Secrets {
            entries,
            known: RwLock::new(known),
        })
    }

    pub(crate) fn name(&self, i: usize) -> &str {
        &self.entries[i].name
    }

    pub(crate) fn placeholder(&self, i: usize) -> &[u8] {
        self.entries[i].placeholder.as_bytes()
    }

    /// True when some secret may be sent to `host:port` (its responses may
    /// echo a value, so they are scrubbed and requested uncompressed).
    pub(crate) fn any_bound_to(&self, host: &str, port: u16) -> bool {
        self.entries
            .iter()
            .any(|e| e.hosts.iter().any(|h| h.matches(host, port)))
    }

    /// Every real value known so far, each with its placeholder.
    pub(crate) fn scrub_needles(&self) -> Vec<Needle> {
        self.known
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// The value of secret `i`, running its command when needed.
    pub(crate) async fn value(&self, i: usize) -> Result<String, SecretUnavailable> {
        let e = &self.entries[i];
        let (cmd, ttl, cache) = match &e.source {
            Source::Fixed(v) => return Ok(v.clone()),
            Source::Command { cmd, ttl, cache } => (cmd, ttl, cache),
        };
        let mut cached = cache.lock().await;
        if let Some((v, at)) = cached.as_ref()
            && ttl.is_none_or(|ttl| at.elapsed() < ttl)
        {
            return Ok(v.clone());
        }
        let unavailable = |reason: String| SecretUnavailable {
            name: e.name.clone(),
            from: format!("command:{cmd}"),
            reason,
        };
        let cmd_owned = cmd.clone();
        let value = tokio::task::spawn_blocking(move || run_command(&cmd_owned))
            .await
            .map_err(|e| unavailable(format!("the command runner failed: {e}")))?
            .map_err(unavailable)?;
        check_value(&value).map_err(unavailable)?;
        if value.contains(&e.placeholder) {
            return Err(unavailable("the value contains its own placeholder".into()));
        }
        {
            let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
            if !known
                .iter()
                .any(|(s, n)| *s == i && n.find == value.as_bytes())
            {
                let fresh =
                    needles_for(&e.placeholder, &value, e.inject.contains(&Injection::Basic));
                // Room for about MAX_REMEMBERED values: the needles of the
                // oldest values are forgotten first.
                let limit = MAX_REMEMBERED * fresh.len();
                while known.iter().filter(|(s, _)| *s == i).count() + fresh.len() > limit {
                    let Some(pos) = known.iter().position(|(s, _)| *s == i) else {
                        break;
                    };
                    known.remove(pos);
                }
                known.extend(fresh.into_iter().map(|n| (i, n)));
            }
        }
        *cached = Some((value.clone(), Instant::now()));
        Ok(value)
    }

    /// True when secret `i` is bound to `host:port`.
    pub(crate) fn bound_to(&self, i: usize, host: &str, port: u16) -> bool {
        self.entries[i].hosts.iter().any(|h| h.matches(host, port))
    }

    /// Looks for placeholders in a request's head. `tls`: the request goes
    /// upstream over TLS. Real values never travel in clear text, so without
    /// TLS every secret counts as unbound (its placeholder blocks the request).
    pub(crate) fn scan(&self, parts: &Parts, host: &str, port: u16, tls: bool) -> Scan {
        let mut scan = Scan::default();
        for (i, e) in self.entries.iter().enumerate() {
            let bound = tls && self.bound_to(i, host, port);
            let found = find_placeholder(parts, &e.placeholder);
            if bound {
                for place in found {
                    if injectable(&e.inject, &place) {
                        scan.inject.push(Finding { secret: i, place });
                    }
                }
            } else {
                if let Some(place) = found.into_iter().next()
                    && scan.blocked.is_none()
                {
                    scan.blocked = Some(Finding { secret: i, place });
                }
                scan.watch_body.push(i);
            }
        }
        scan
    }
}

fn injectable(inject: &[Injection], place: &str) -> bool {
    inject.iter().any(|inj| match inj {
        Injection::Header(h) => place.strip_prefix("header:") == Some(h.as_str()),
        Injection::Query(q) => place.strip_prefix("query:") == Some(q.as_str()),
        Injection::Basic => place == "basic",
    })
}

fn decode_query_part(s: &str) -> String {
    percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// The decoded credentials of an `Authorization: Basic` value.
fn basic_credentials(value: &HeaderValue) -> Option<Vec<u8>> {
    let v = value.to_str().ok()?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    B64.decode(rest.trim().trim_end_matches('=').to_string() + pad(rest.trim()))
        .ok()
}

fn pad(s: &str) -> &'static str {
    match s.trim_end_matches('=').len() % 4 {
        2 => "==",
        3 => "=",
        _ => "",
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// Every place in the head where `placeholder` occurs: `header:NAME`,
/// `basic`, `path`, `query:NAME`.
fn find_placeholder(parts: &Parts, placeholder: &str) -> Vec<String> {
    let p = placeholder.as_bytes();
    let mut places = Vec::new();
    for (name, value) in &parts.headers {
        let place = format!("header:{}", name.as_str());
        if contains(value.as_bytes(), p) && !places.contains(&place) {
            places.push(place);
        }
        if name == AUTHORIZATION
            && basic_credentials(value).is_some_and(|c| contains(&c, p))
            && !places.iter().any(|x| x == "basic")
        {
            places.push("basic".into());
        }
    }
    let path = parts.uri.path();
    if contains(path.as_bytes(), p) || contains(decode_query_part(path).as_bytes(), p) {
        places.push("path".into());
    }
    if let Some(q) = parts.uri.query() {
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode_query_part(k);
            let place = format!("query:{key}");
            if (contains(pair.as_bytes(), p)
                || contains(decode_query_part(v).as_bytes(), p)
                || contains(key.as_bytes(), p))
                && !places.contains(&place)
            {
                places.push(place);
            }
        }
    }
    places
}

/// Swaps `placeholder` for `value` at `place` (one of the places
/// [`find_placeholder`] reports); false when nothing changed.
pub(crate) fn inject(parts: &mut Parts, place: &str, placeholder: &str, value: &str) -> bool {
    if let Some(header) = place.strip_prefix("header:") {
        let Ok(name) = http::HeaderName::from_bytes(header.as_bytes()) else {
            return false;
        };
        let old: Vec<HeaderValue> = parts.headers.get_all(&name).iter().cloned().collect();
        let mut changed = false;
        let mut new = Vec::with_capacity(old.len());
        for v in old {
            match v.to_str() {
                Ok(s) if s.contains(placeholder) => {
                    match HeaderValue::from_str(&s.replace(placeholder, value)) {
                        Ok(mut nv) => {
                            nv.set_sensitive(true);
                            new.push(nv);
                            changed = true;
                        }
                        Err(_) => new.push(v),
                    }
                }
                _ => new.push(v),
            }
        }
        if changed {
            parts.headers.remove(&name);
            for v in new {
                parts.headers.append(name.clone(), v);
            }
        }
        return changed;
    }
    if place == "basic" {
        let Some(v) = parts.headers.get(AUTHORIZATION) else {
            return false;
        };
        let Some(creds) = basic_credentials(v) else {
            return false;
        };
        let Ok(creds) = String::from_utf8(creds) else {
            return false;
        };
        if !creds.contains(placeholder) {
            return false;
        }
        let encoded = B64.encode(creds.replace(placeholder, value));
        let Ok(mut nv) = HeaderValue::from_str(&format!("Basic {encoded}")) else {
            return false;
        };
        nv.set_sensitive(true);
        parts.headers.insert(AUTHORIZATION, nv);
        return true;
    }
    if let Some(param) = place.strip_prefix("query:") {
        let Some(q) = parts.uri.query() else {
            return false;
        };
        let mut changed = false;
        let pairs: Vec<String> = q
            .split('&')
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let dv = decode_query_part(v);
                if decode_query_part(k) == param && dv.contains(placeholder) {
                    changed = true;
                    let nv = dv.replace(placeholder, value);
                    format!("{k}={}", utf8_percent_encode(&nv, QUERY_VALUE))
                } else {
                    pair.to_string()
                }
            })
            .collect();
        if !changed {
            return false;
        }
        let path_and_query = format!("{}?{}", parts.uri.path(), pairs.join("&"));
        let mut uri = parts.uri.clone().into_parts();
        match path_and_query.parse() {
            Ok(pq) => uri.path_and_query = Some(pq),
            Err(_) => return false,
        }
        return match http::Uri::from_parts(uri) {
            Ok(u) => {
                parts.uri = u;
                true
            }
            Err(_) => false,
        };
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(hosts: &[&str], inject: Vec<Injection>) -> Secret {
        Secret {
            from: SecretSource::Command("printf real-value-123".into()),
            hosts: hosts
                .iter()
                .map(|h| HostPattern::parse(h).unwrap())
                .collect(),
            inject,
            placeholder: None,
            ttl: None,
        }
    }

    fn store() -> Secrets {
        Secrets::load(&[
            SecretConfig {
                name: "TOKEN".into(),
                placeholder: "PH-TOKEN-0001".into(),
                secret: secret(
                    &["api.test"],
                    vec![
                        Injection::Header("authorization".into()),
                        Injection::Query("key".into()),
                    ],
                ),
            },
            SecretConfig {
                name: "BASIC".into(),
                placeholder: "PH-BASIC-0002".into(),
                secret: secret(&["*.basic.test"], vec![Injection::Basic]),
            },
        ])
        .unwrap()
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[tokio::test]
    async fn header_injection_for_bound_host() {
        let s = store();
        let mut p = parts("/x", &[("authorization", "Bearer PH-TOKEN-0001")]);
        let scan = s.scan(&p, "api.test", 443, true);
        assert_eq!(scan.blocked, None);
        assert_eq!(
            scan.inject,
            vec![Finding {
                secret: 0,
                place: "header:authorization".into()
            }]
        );
        let v = s.value(0).await.unwrap();
        assert!(inject(&mut p, "header:authorization", "PH-TOKEN-0001", &v));
        assert_eq!(p.headers["authorization"], "Bearer real-value-123");
    }

    #[test]
    fn query_injection_reencodes() {
        let s = store();
        let mut p = parts("/x?a=1&key=PH-TOKEN-0001&b=2", &[]);
        let scan = s.scan(&p, "api.test", 443, true);
        assert_eq!(scan.inject[0].place, "query:key");
        assert!(inject(&mut p, "query:key", "PH-TOKEN-0001", "v a&l=ue"));
        assert_eq!(p.uri.to_string(), "/x?a=1&key=v%20a%26l%3Due&b=2");
    }

    #[test]
    fn basic_injection_inside_credentials() {
        let s = store();
        let creds = B64.encode("user:PH-BASIC-0002");
        let mut p = parts("/", &[("authorization", &format!("Basic {creds}"))]);
        let scan = s.scan(&p, "x.basic.test", 443, true);
        assert_eq!(scan.inject[0].place, "basic");
        assert!(inject(&mut p, "basic", "PH-BASIC-0002", "s3cret"));
        let got = basic_credentials(&p.headers["authorization"]).unwrap();
        assert_eq!(got, b"user:s3cret");
    }

    #[test]
    fn placeholder_to_unbound_host_is_blocked_anywhere() {
        let s = store();
        for (uri, headers, place) in [
            (
                "/",
                vec![("x-anything", "PH-TOKEN-0001")],
                "header:x-anything",
            ),
            ("/a/PH-TOKEN-0001", vec![], "path"),
            ("/?q=PH%2DTOKEN%2D0001", vec![], "query:q"),
        ] {
            let p = parts(uri, &headers);
            let scan = s.scan(&p, "evil.test", 443, true);
            assert_eq!(
                scan.blocked,
                Some(Finding {
                    secret: 0,
                    place: place.into()
                }),
                "{uri}"
            );
        }
        let creds = B64.encode("u:PH-BASIC-0002");
        let p = parts("/", &[("authorization", &format!("basic {creds}"))]);
        let scan = s.scan(&p, "api.test", 443, true);
        assert_eq!(
            scan.blocked.map(|f| (f.secret, f.place)),
            Some((1, "basic".into()))
        );
        assert_eq!(
            scan.watch_body,
            vec![1],
            "TOKEN is bound to api.test, BASIC is not"
        );
    }

    #[test]
    fn bound_host_but_wrong_place_is_left_alone() {
        let s = store();
        let p = parts("/?other=PH-TOKEN-0001", &[("x-token", "PH-TOKEN-0001")]);
        let scan = s.scan(&p, "api.test", 443, true);
        assert_eq!(scan.blocked, None);
        assert!(scan.inject.is_empty());
    }

    #[test]
    fn scrub_needles_cover_the_escaped_form() {
        let n = needles_for("PH", "a b", false);
        assert_eq!(n.len(), 2);
        assert_eq!(n[1].find, b"a%20b".to_vec());
    }

    #[test]
    fn basic_values_are_scrubbed_from_base64_at_every_alignment() {
        use super::super::scrub::replace_all;
        let value = "alice:s3cret-pw-88a1";
        let needles = needles_for("PH-BASIC-0002", value, true);
        for prefix in ["", "u", "us", "use"] {
            for suffix in ["", "x", "xy", "xyz"] {
                let sent = B64.encode(format!("{prefix}{value}{suffix}"));
                let scrubbed = replace_all(sent.as_bytes(), &needles)
                    .unwrap_or_else(|| panic!("nothing replaced in {sent}"));
                for offset in 0..3 {
                    let run = base64_inner(value.as_bytes(), offset);
                    assert!(
                        !contains(&scrubbed, &run),
                        "{prefix:?} {suffix:?}: {}",
                        String::from_utf8_lossy(&scrubbed)
                    );
                }
            }
        }
        assert_eq!(
            needles_for("PH-0000001", "tok", false).len(),
            1,
            "no base64 forms without basic injection"
        );
        let padded = needles_for("PH-0000001", " tok\t", false);
        assert!(padded.iter().any(|n| n.find == b"tok"), "the trimmed form");
    }

    #[test]
    fn load_fails_closed_naming_the_source_not_the_value() {
        let err = Secrets::load(&[SecretConfig {
            name: "MISSING".into(),
            placeholder: "PH-MISSING-01".into(),
            secret: Secret {
                from: SecretSource::Env("CORDON_L7_DEFINITELY_UNSET".into()),
                ..secret(&["a.test"], vec![Injection::Basic])
            },
        }])
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("MISSING") && err.contains("CORDON_L7_DEFINITELY_UNSET"),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tok");
        std::fs::write(&path, "line1\nline2\n").unwrap();
        let err = Secrets::load(&[SecretConfig {
            name: "F".into(),
            placeholder: "PH-FILE-00001".into(),
            secret: Secret {
                from: SecretSource::File(path),
                ..secret(&["a.test"], vec![Injection::Basic])
            },
        }])
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("line break") && !err.contains("line1"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn command_values_are_cached_and_scrubbed() {
        let s = Secrets::load(&[SecretConfig {
            name: "CMD".into(),
            placeholder: "PH-CMD-000001".into(),
            secret: Secret {
                from: SecretSource::Command("echo from-command".into()),
                ..secret(&["a.test"], vec![Injection::Basic])
            },
        }])
        .unwrap();
        assert!(s.scrub_needles().is_empty(), "not run before first use");
        assert_eq!(s.value(0).await.unwrap(), "from-command");
        assert_eq!(s.scrub_needles()[0].find, b"from-command".to_vec());
        let failing = Secrets::load(&[SecretConfig {
            name: "BAD".into(),
            placeholder: "PH-BAD-0000001".into(),
            secret: Secret {
                from: SecretSource::Command("echo $((6*7))xyz; exit 3".into()),
                ..secret(&["a.test"], vec![Injection::Basic])
            },
        }])
        .unwrap();
        let err = failing.value(0).await.unwrap_err().to_string();
        assert!(err.contains("BAD") && !err.contains("42xyz"), "{err}");
    }
}
