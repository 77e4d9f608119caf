//! Policy decisions that need no I/O: which hosts the sandbox may reach, and
//! which `[[rule]]` governs a request.
//!
//! Paths are normalized before rules see them (percent-encoded unreserved
//! characters decoded, `.` and `..` segments resolved), and the request is
//! forwarded with the normalized path, so `/%61dmin` or `/x/../admin` cannot
//! slip past a rule about `/admin`. What servers do beyond that (routes
//! without case, merged `//`, ignored `;parameters` and trailing `/`, method
//! override headers) is covered by also matching those looser readings and
//! keeping the strictest outcome ([`governing_rule`]). An escaped `/` (`%2F`)
//! stays part of its segment: APIs such as GitLab's rely on that.

use std::net::{IpAddr, Ipv4Addr};

use cordon_policy::{HostPattern, Network, OnUnknown, Rule, RuleAction};

/// What to do with a connection to `host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HostDecision {
    /// Refuse; `pattern` is the deny entry that matched, if any.
    Deny { pattern: Option<String> },
    /// Forward as raw TCP without inspection.
    Passthrough,
    /// Serve HTTP and apply the request rules.
    Allow,
    /// Park until someone decides.
    Ask,
}

/// True when `pattern` matches `host` on at least one port.
fn matches_host(pattern: &HostPattern, host: &str) -> bool {
    pattern.matches(host, pattern.port.unwrap_or(1))
}

/// The connection-level decision for `host` (a DNS name or an IP literal).
pub(crate) fn decide_host(net: &Network, host: &str, port: u16) -> HostDecision {
    if let Some(p) = net.deny.iter().find(|p| p.matches(host, port)) {
        return HostDecision::Deny {
            pattern: Some(p.to_string()),
        };
    }
    if net.passthrough.iter().any(|p| p.matches(host, port)) {
        return HostDecision::Passthrough;
    }
    if net.allow.iter().any(|p| p.matches(host, port)) {
        return HostDecision::Allow;
    }
    match net.on_unknown {
        OnUnknown::Ask => HostDecision::Ask,
        OnUnknown::Deny => HostDecision::Deny { pattern: None },
    }
}

/// Whether the gateway's DNS should answer for `name`.
pub(crate) fn dns_allows(net: &Network, name: &str) -> bool {
    if net
        .deny
        .iter()
        .any(|p| p.port.is_none() && matches_host(p, name))
    {
        return false;
    }
    net.allow
        .iter()
        .chain(&net.passthrough)
        .any(|p| matches_host(p, name))
        || net.on_unknown == OnUnknown::Ask
}

/// Whether a connection straight to `ip:port` (no DNS name) may pass: only
/// when an allow or passthrough entry names that address literally.
pub(crate) fn direct_allows(net: &Network, ip: Ipv4Addr, port: u16) -> bool {
    let host = ip.to_string();
    if net.deny.iter().any(|p| p.matches(&host, port)) {
        return false;
    }
    net.allow
        .iter()
        .chain(&net.passthrough)
        .any(|p| p.host.parse::<IpAddr>().is_ok() && p.matches(&host, port))
}

/// The first rule that covers the request (path read as it is, or `loose`ly),
/// with its index.
fn first_rule<'a>(
    rules: &'a [Rule],
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    loose: bool,
) -> Option<(usize, &'a Rule)> {
    rules.iter().enumerate().find(|(_, r)| {
        r.host.matches(host, port)
            && (r.methods.is_empty() || r.methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
            && r.path.as_deref().is_none_or(|p| {
                if loose {
                    loose_path_matches(p, path)
                } else {
                    path_matches(p, path)
                }
            })
    })
}

/// Headers with which clients ask frameworks (Google APIs, Rails, Express's
/// `method-override`, ...) to treat a `POST` as another method.
pub(crate) const METHOD_OVERRIDE_HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The rule that governs a request whose method (or one of `methods`, the
/// method plus any method-override header values) and path a server may
/// read in more than one way.
///
/// Each `(method, reading)` pair gets its first matching rule, where a
/// reading is the path as forwarded, or the path as servers commonly route
/// it: letters in either case, empty segments (`//`) and `;parameters`
/// ignored, and no trailing `/`. The strictest outcome wins (`deny` over
/// `ask` over a matching `allow` over no rule; the forwarded reading on
/// ties), so `/Admin`, `/admin/`, `//admin` or `/admin;x` cannot slip past a
/// rule about `/admin`, nor `POST` with `X-HTTP-Method-Override: DELETE` past
/// a rule about `DELETE`.
pub(crate) fn governing_rule<'a>(
    rules: &'a [Rule],
    host: &str,
    port: u16,
    methods: &[&str],
    path: &str,
) -> Option<(usize, &'a Rule)> {
    fn severity(hit: Option<(usize, &Rule)>) -> u8 {
        match hit.map(|(_, r)| r.action) {
            None => 0,
            Some(RuleAction::Allow) => 1,
            Some(RuleAction::Ask) => 2,
            Some(RuleAction::Deny) => 3,
        }
    }
    let mut best: Option<(usize, &'a Rule)> = None;
    let mut first = true;
    for method in methods {
        for loose in [false, true] {
            let hit = first_rule(rules, host, port, method, path, loose);
            if first || severity(hit) > severity(best) {
                best = hit;
            }
            first = false;
        }
    }
    best
}

/// [`path_matches`] on the readings of pattern and path that ignore case,
/// empty segments, `;parameters` and a trailing `/`.
fn loose_path_matches(pattern: &str, path: &str) -> bool {
    let (pat, path) = (loose_path(pattern), loose_path(path));
    if pattern.contains('*') {
        return glob_matches(pat.as_bytes(), path.as_bytes());
    }
    if pattern.ends_with('/') && pat != "/" {
        // A prefix that ends a segment still ends one.
        return path == pat || path.starts_with(&format!("{pat}/"));
    }
    path.starts_with(&pat)
}

/// Lower case, without empty segments, `;parameters` or a trailing `/`.
fn loose_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for seg in path.split('/') {
        let seg = seg.split(';').next().unwrap_or("");
        if !seg.is_empty() {
            out.push('/');
            out.push_str(&seg.to_ascii_lowercase());
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// A rule path: a prefix, or, when it contains `*`, a glob over the whole path
/// where `*` stays inside one segment and `**` crosses segments.
pub(crate) fn path_matches(pattern: &str, path: &str) -> bool {
    if !pattern.contains('*') {
        return path.starts_with(pattern);
    }
    glob_matches(pattern.as_bytes(), path.as_bytes())
}

#[derive(Clone, Copy)]
enum Tok {
    Byte(u8),
    Star,
    DoubleStar,
}

/// Dynamic programming over (pattern token, path byte): linear in the path
/// for a fixed pattern, so a hostile path cannot make matching explode.
fn glob_matches(pattern: &[u8], path: &[u8]) -> bool {
    let mut toks = Vec::with_capacity(pattern.len());
    let mut i = 0;
    while i < pattern.len() {
        if pattern[i] == b'*' {
            if pattern.get(i + 1) == Some(&b'*') {
                toks.push(Tok::DoubleStar);
                i += 2;
            } else {
                toks.push(Tok::Star);
                i += 1;
            }
        } else {
            toks.push(Tok::Byte(pattern[i]));
            i += 1;
        }
    }
    // reach[j]: the first j tokens can match the path bytes consumed so far.
    let mut reach = vec![false; toks.len() + 1];
    reach[0] = true;
    close_stars(&toks, &mut reach);
    for &b in path {
        let mut next = vec![false; toks.len() + 1];
        for (j, tok) in toks.iter().enumerate() {
            if !reach[j] {
                continue;
            }
            match *tok {
                Tok::Byte(c) if c == b => next[j + 1] = true,
                Tok::Byte(_) => {}
                Tok::Star if b != b'/' => next[j] = true,
                Tok::Star => {}
                Tok::DoubleStar => next[j] = true,
            }
        }
        close_stars(&toks, &mut next);
        if !next.iter().any(|r| *r) {
            return false;
        }
        reach = next;
    }
    reach[toks.len()]
}

/// Stars match the empty string: whoever reaches a star also reaches past it.
fn close_stars(toks: &[Tok], reach: &mut [bool]) {
    for j in 0..toks.len() {
        if reach[j] && matches!(toks[j], Tok::Star | Tok::DoubleStar) {
            reach[j + 1] = true;
        }
    }
}

/// The path as rules see it and as it is forwarded: `%XX` escapes of
/// unreserved characters decoded (other escapes kept, hex upper-cased), `.`
/// and `..` segments resolved (never above the root). `None` when the path
/// does not start with `/`.
pub(crate) fn normalize_path(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let bytes = path.as_bytes();
    let mut decoded: Vec<u8> = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|c| hex_val(*c)),
                bytes.get(i + 2).and_then(|c| hex_val(*c)),
            )
        {
            let c = h * 16 + l;
            if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                decoded.push(c);
            } else {
                decoded.push(b'%');
                decoded.push(bytes[i + 1].to_ascii_uppercase());
                decoded.push(bytes[i + 2].to_ascii_uppercase());
            }
            i += 3;
            continue;
        }
        decoded.push(b);
        i += 1;
    }
    let decoded = String::from_utf8(decoded).ok()?;
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut trailing_slash = false;
    for (n, seg) in segments.iter().enumerate() {
        match *seg {
            "." => trailing_slash = n == last,
            ".." => {
                out.pop();
                trailing_slash = n == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut result = String::with_capacity(decoded.len());
    for seg in &out {
        result.push('/');
        result.push_str(seg);
    }
    if trailing_slash || result.is_empty() {
        result.push('/');
    }
    Some(result)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(s: &str) -> HostPattern {
        HostPattern::parse(s).unwrap()
    }

    fn net() -> Network {
        Network {
            allow: vec![
                hp("api.example.com"),
                hp("*.github.com:443"),
                hp("1.2.3.4:443"),
            ],
            deny: vec![hp("evil.github.com"), hp("api.example.com:8080")],
            passthrough: vec![hp("db.example.com:5432")],
            ..Network::default()
        }
    }

    #[test]
    fn host_decisions() {
        let n = net();
        assert_eq!(decide_host(&n, "api.example.com", 443), HostDecision::Allow);
        assert_eq!(decide_host(&n, "API.Example.com.", 80), HostDecision::Allow);
        assert_eq!(
            decide_host(&n, "api.example.com", 8080),
            HostDecision::Deny {
                pattern: Some("api.example.com:8080".into())
            }
        );
        assert_eq!(decide_host(&n, "x.github.com", 443), HostDecision::Allow);
        assert_eq!(
            decide_host(&n, "x.github.com", 80),
            HostDecision::Deny { pattern: None }
        );
        assert!(matches!(
            decide_host(&n, "evil.github.com", 443),
            HostDecision::Deny { pattern: Some(_) }
        ));
        assert_eq!(
            decide_host(&n, "db.example.com", 5432),
            HostDecision::Passthrough
        );
        assert_eq!(
            decide_host(&n, "unknown.test", 443),
            HostDecision::Deny { pattern: None }
        );
        let ask = Network {
            on_unknown: OnUnknown::Ask,
            ..net()
        };
        assert_eq!(decide_host(&ask, "unknown.test", 443), HostDecision::Ask);
        assert!(matches!(
            decide_host(&ask, "evil.github.com", 443),
            HostDecision::Deny { .. }
        ));
    }

    #[test]
    fn dns_decisions() {
        let n = net();
        assert!(dns_allows(&n, "api.example.com"));
        assert!(
            dns_allows(&n, "x.github.com"),
            "port-bound allow still resolves"
        );
        assert!(
            !dns_allows(&n, "evil.github.com"),
            "portless deny denies the name"
        );
        assert!(
            dns_allows(&n, "db.example.com"),
            "passthrough names resolve"
        );
        assert!(!dns_allows(&n, "unknown.test"));
        assert!(!dns_allows(&n, "github.com"));
        let ask = Network {
            on_unknown: OnUnknown::Ask,
            ..net()
        };
        assert!(dns_allows(&ask, "unknown.test"));
        assert!(!dns_allows(&ask, "evil.github.com"));
    }

    #[test]
    fn direct_ip_needs_a_literal_entry() {
        let n = net();
        assert!(direct_allows(&n, Ipv4Addr::new(1, 2, 3, 4), 443));
        assert!(!direct_allows(&n, Ipv4Addr::new(1, 2, 3, 4), 80));
        assert!(!direct_allows(&n, Ipv4Addr::new(1, 2, 3, 5), 443));
        let ask = Network {
            on_unknown: OnUnknown::Ask,
            ..net()
        };
        assert!(!direct_allows(&ask, Ipv4Addr::new(9, 9, 9, 9), 443));
    }

    #[test]
    fn globs() {
        assert!(path_matches("/repos/", "/repos/a/b"));
        assert!(!path_matches("/repos/", "/repo"));
        assert!(path_matches("/repos/*/issues", "/repos/x/issues"));
        assert!(!path_matches("/repos/*/issues", "/repos/x/y/issues"));
        assert!(!path_matches("/repos/*/issues", "/repos/x/issues/1"));
        assert!(path_matches("/repos/**/issues", "/repos/x/y/issues"));
        assert!(path_matches("/repos/**", "/repos/"));
        assert!(path_matches("/repos/**", "/repos/a/b/c"));
        assert!(path_matches("/*.json", "/a.json"));
        assert!(!path_matches("/*.json", "/a/b.json"));
        assert!(path_matches("/**.json", "/a/b.json"));
        assert!(path_matches("/a*b*c", "/abc"));
        assert!(!path_matches("/a*b*c", "/ab/c"));
        let long = format!("/{}", "a".repeat(10_000));
        assert!(!path_matches("/*a*a*a*a*a*a*a*b", &long));
    }

    #[test]
    fn first_matching_rule_wins() {
        let rule = |host: &str, methods: &[&str], path: Option<&str>, action| Rule {
            host: hp(host),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            path: path.map(str::to_string),
            action,
            max_body: None,
            requests_per_minute: None,
        };
        let rules = vec![
            rule("api.github.com", &["DELETE"], None, RuleAction::Deny),
            rule("api.github.com", &[], Some("/admin"), RuleAction::Ask),
            rule("*.github.com", &["GET", "HEAD"], None, RuleAction::Allow),
        ];
        let hit = |method: &str, host: &str, path: &str| {
            governing_rule(&rules, host, 443, &[method], path).map(|(i, _)| i)
        };
        assert_eq!(hit("DELETE", "api.github.com", "/x"), Some(0));
        assert_eq!(hit("POST", "api.github.com", "/admin/x"), Some(1));
        assert_eq!(hit("GET", "api.github.com", "/x"), Some(2));
        assert_eq!(hit("POST", "api.github.com", "/x"), None);
        assert_eq!(hit("GET", "github.com", "/x"), None);
    }

    #[test]
    fn looser_readings_of_a_path_cannot_dodge_a_stricter_rule() {
        let rule = |methods: &[&str], path: &str, action| Rule {
            host: hp("api.test"),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            path: Some(path.to_string()),
            action,
            max_body: None,
            requests_per_minute: None,
        };
        let rules = vec![
            rule(&[], "/admin/*/secret", RuleAction::Deny),
            rule(&["DELETE"], "/", RuleAction::Deny),
            rule(&[], "/Repos/", RuleAction::Ask),
            rule(&["GET"], "/open/*/", RuleAction::Allow),
            rule(&[], "/open/", RuleAction::Deny),
        ];
        let hit = |methods: &[&str], path: &str| {
            governing_rule(&rules, "api.test", 443, methods, path).map(|(i, _)| i)
        };
        for path in [
            "/admin/x/secret",
            "/admin/x/secret/",
            "/admin//x/secret",
            "/admin/x//secret",
            "/ADMIN/x/Secret",
            "/admin/x/secret;jsessionid=1",
            "/admin;a/x/secret",
        ] {
            assert_eq!(hit(&["GET"], path), Some(0), "{path}");
        }
        assert_eq!(hit(&["GET"], "/admin/x/secrets"), None);
        assert_eq!(hit(&["POST", "DELETE"], "/x"), Some(1), "method override");
        assert_eq!(hit(&["POST", "GET"], "/x"), None);
        assert_eq!(hit(&["GET"], "/repos/a"), Some(2), "case");
        assert_eq!(
            hit(&["GET"], "/repository"),
            None,
            "a prefix ending in / keeps its segment"
        );
        // The forwarded reading wins ties: the allow rule, not the later deny.
        assert_eq!(hit(&["GET"], "/open/a/"), Some(3));
        assert_eq!(hit(&["GET"], "/open/a"), Some(4));
    }

    #[test]
    fn paths_are_normalized_before_matching() {
        assert_eq!(normalize_path("/%61dmin").as_deref(), Some("/admin"));
        assert_eq!(normalize_path("/x/../admin").as_deref(), Some("/admin"));
        assert_eq!(normalize_path("/../../admin").as_deref(), Some("/admin"));
        assert_eq!(normalize_path("/a/./b/").as_deref(), Some("/a/b/"));
        assert_eq!(normalize_path("/a/b/..").as_deref(), Some("/a/"));
        assert_eq!(normalize_path("/a%2fb").as_deref(), Some("/a%2Fb"));
        assert_eq!(normalize_path("/").as_deref(), Some("/"));
        assert_eq!(normalize_path("/a//b").as_deref(), Some("/a//b"));
        assert_eq!(normalize_path("/%2e%2e/admin").as_deref(), Some("/admin"));
        assert_eq!(normalize_path("*"), None);
    }
}
