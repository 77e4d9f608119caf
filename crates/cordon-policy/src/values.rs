//! Parsers for the small value languages inside a policy: sizes, durations,
//! host patterns, CIDR ranges, environment variable names, header names.
//!
//! Each returns an [`InvalidValue`] whose message says what was expected, so
//! the policy walker only has to add the position. They are public because the
//! CLI accepts the same syntax in flags (`--memory 2G`, `--timeout 30m`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// A value that does not follow its syntax; the message says what would.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

fn invalid<T>(msg: impl Into<String>) -> Result<T, InvalidValue> {
    Err(InvalidValue(msg.into()))
}

const SIZE_UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("k", 1 << 10),
    ("ki", 1 << 10),
    ("kib", 1 << 10),
    ("kb", 1_000),
    ("m", 1 << 20),
    ("mi", 1 << 20),
    ("mib", 1 << 20),
    ("mb", 1_000_000),
    ("g", 1 << 30),
    ("gi", 1 << 30),
    ("gib", 1 << 30),
    ("gb", 1_000_000_000),
    ("t", 1 << 40),
    ("ti", 1 << 40),
    ("tib", 1 << 40),
    ("tb", 1_000_000_000_000),
];

/// Parses a byte size: a number with an optional unit, case-insensitive.
///
/// `K`, `M`, `G`, `T` and their `Ki`/`KiB` spellings are powers of 1024 (as in
/// Docker and Kubernetes); `KB`, `MB`, `GB`, `TB` are powers of 1000. A
/// fraction is allowed and rounded down to whole bytes: `"1.5G"`.
pub fn parse_size(text: &str) -> Result<u64, InvalidValue> {
    let hint = "write a size such as \"512M\", \"2G\", \"1GiB\" or a number of bytes";
    let t = text.trim();
    let num_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(num_end);
    let unit = unit.trim_start().to_ascii_lowercase();
    if num.is_empty() {
        return invalid(format!("invalid size {text:?}: {hint}"));
    }
    let Some(&(_, multiplier)) = SIZE_UNITS.iter().find(|(u, _)| *u == unit) else {
        return invalid(format!(
            "invalid size {text:?}: unknown unit {unit:?}; use B, K, M, G, T (powers of 1024, also \
             written KiB, MiB, ...) or KB, MB, GB, TB (powers of 1000)"
        ));
    };
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    if int_part.is_empty() || frac_part.contains('.') || (num.contains('.') && frac_part.is_empty())
    {
        return invalid(format!("invalid size {text:?}: {hint}"));
    }
    let too_large = || InvalidValue(format!("size {text:?} is too large"));
    let int: u128 = int_part.parse().map_err(|_| too_large())?;
    let mut bytes = int
        .checked_mul(u128::from(multiplier))
        .ok_or_else(too_large)?;
    if !frac_part.is_empty() {
        // Exact decimal arithmetic: 0.1G must not become 107374182.39999.
        // Digits beyond the 18th are below a byte even for terabytes, and
        // 10^18 * 2^40 still fits in a u128.
        let digits = frac_part.len().min(18) as u32;
        let frac: u128 = frac_part[..digits as usize]
            .parse()
            .map_err(|_| too_large())?;
        let scale = 10u128.pow(digits);
        bytes = bytes
            .checked_add(frac * u128::from(multiplier) / scale)
            .ok_or_else(too_large)?;
    }
    u64::try_from(bytes).map_err(|_| too_large())
}

/// Parses a duration in whole seconds: `"90s"`, `"30m"`, `"2h"`, `"1d"`,
/// combinations such as `"1h30m"`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, InvalidValue> {
    let hint =
        "write a duration such as \"90s\", \"30m\", \"2h\", \"1h30m\" or a number of seconds";
    let t = text.trim();
    if t.is_empty() {
        return invalid(format!("invalid duration {text:?}: {hint}"));
    }
    if t.contains('.') {
        return invalid(format!(
            "invalid duration {text:?}: durations take whole numbers; use a smaller unit, such as \
             \"90s\" rather than \"1.5m\""
        ));
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| InvalidValue(format!("duration {text:?} is too large")));
    }
    let mut total: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if num_end == 0 {
            return invalid(format!("invalid duration {text:?}: {hint}"));
        }
        let (num, after) = rest.split_at(num_end);
        let unit_end = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let seconds_per_unit: u64 = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "ms" | "us" | "ns" => {
                return invalid(format!(
                    "invalid duration {text:?}: durations are whole seconds; use s, m, h or d"
                ));
            }
            "" => {
                return invalid(format!(
                    "invalid duration {text:?}: a number inside a duration needs a unit (s, m, h or d)"
                ));
            }
            other => {
                return invalid(format!(
                    "invalid duration {text:?}: unknown unit {other:?}; use s, m, h or d"
                ));
            }
        };
        let n: u64 = num
            .parse()
            .map_err(|_| InvalidValue(format!("duration {text:?} is too large")))?;
        total = n
            .checked_mul(seconds_per_unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| InvalidValue(format!("duration {text:?} is too large")))?;
        rest = after;
    }
    Ok(Duration::from_secs(total))
}

/// Formats a whole-second duration in the largest exact unit: `"2h"`, `"90s"`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    for (unit, n) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if s != 0 && s.is_multiple_of(n) {
            return format!("{}{unit}", s / n);
        }
    }
    format!("{s}s")
}

/// True for a POSIX-portable environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks an environment variable name, or a prefix glob like `LC_*`.
pub fn check_env_pattern(s: &str) -> Result<(), InvalidValue> {
    let name = s.strip_suffix('*').unwrap_or(s);
    if name.is_empty() {
        return invalid(
            "\"*\" would pass the whole host environment (including its secrets) into the sandbox; \
             list the variables, or prefixes such as \"LC_*\"",
        );
    }
    if !is_env_name(name) {
        return invalid(format!(
            "{s:?} is not an environment variable name: use letters, digits and _, not starting \
             with a digit, optionally ending in * to match a prefix"
        ));
    }
    Ok(())
}

/// Checks a hostname for inside the sandbox (RFC 1123, at most 64 bytes as Linux allows).
pub fn check_hostname(s: &str) -> Result<(), InvalidValue> {
    if s.is_empty() || s.len() > 64 {
        return invalid(format!("hostname {s:?} must be 1 to 64 characters long"));
    }
    for label in s.split('.') {
        check_dns_label(label, false)
            .map_err(|why| InvalidValue(format!("hostname {s:?} is not valid: {why}")))?;
    }
    Ok(())
}

fn check_dns_label(label: &str, allow_underscore: bool) -> Result<(), String> {
    if label.is_empty() {
        return Err("it has an empty label (two dots in a row, or a leading dot)".into());
    }
    if label.len() > 63 {
        return Err(format!("label {label:?} is longer than 63 characters"));
    }
    if let Some(c) = label
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || (allow_underscore && c == '_')))
    {
        return Err(format!(
            "{c:?} is not allowed; use letters, digits, - and ."
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("label {label:?} starts or ends with -"));
    }
    Ok(())
}

/// A host (and optionally a port) that network rules and secrets apply to.
///
/// Written `example.com`, `*.example.com`, `example.com:443`, `10.0.0.5:5432`
/// or `[fd00::1]:8080`. The host is stored in lowercase. `*` may only be the
/// whole leftmost label; `*.example.com` matches every subdomain of
/// `example.com` at any depth, but not `example.com` itself. Without a port,
/// the pattern matches every port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPattern {
    /// Lowercase host: a DNS name, `*.` followed by a DNS name, or an IP
    /// address (IPv6 without brackets).
    pub host: String,
    /// The only port this pattern matches; `None` for any port.
    pub port: Option<u16>,
}

impl HostPattern {
    /// Parses the pattern syntax described on [`HostPattern`].
    pub fn parse(text: &str) -> Result<HostPattern, InvalidValue> {
        let bad = |why: &str| InvalidValue(format!("invalid host pattern {text:?}: {why}"));
        if text.is_empty() {
            return Err(bad("it is empty"));
        }
        if text.contains(|c: char| c.is_whitespace()) {
            return Err(bad("it contains whitespace"));
        }
        if text.contains("://") || text.contains('/') {
            return Err(bad(
                "write only the host, like \"api.example.com\" or \"api.example.com:443\", not a URL",
            ));
        }
        let lower = text.to_ascii_lowercase();
        let (host, port) = if let Some(rest) = lower.strip_prefix('[') {
            let Some((addr, after)) = rest.split_once(']') else {
                return Err(bad("missing ] after the IPv6 address"));
            };
            let ip: Ipv6Addr = addr
                .parse()
                .map_err(|_| bad("the part in brackets is not an IPv6 address"))?;
            let port = match after {
                "" => None,
                p => match p.strip_prefix(':') {
                    Some(p) => Some(parse_port(p).map_err(|why| bad(&why))?),
                    None => return Err(bad("only :PORT may follow the ]")),
                },
            };
            return Ok(HostPattern {
                host: ip.to_string(),
                port,
            });
        } else {
            match lower.matches(':').count() {
                0 => (lower.as_str(), None),
                1 => {
                    let (h, p) = lower.split_once(':').unwrap_or((lower.as_str(), ""));
                    (h, Some(parse_port(p).map_err(|why| bad(&why))?))
                }
                _ => {
                    return Err(bad(
                        "IPv6 addresses need brackets, like \"[fd00::1]\" or \"[fd00::1]:443\"",
                    ));
                }
            }
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.is_empty() {
            return Err(bad("the host part is empty"));
        }
        if host == "*" {
            return Err(bad(
                "a bare * would match every host; list the hosts, or use a wildcard under a \
                 domain such as \"*.example.com\"",
            ));
        }
        if host.len() > 253 {
            return Err(bad("a host name is at most 253 characters"));
        }
        let name = host.strip_prefix("*.").unwrap_or(host);
        if name.contains('*') {
            return Err(bad(
                "* is only allowed as the whole leftmost label, as in \"*.example.com\"",
            ));
        }
        let last_label = name.rsplit('.').next().unwrap_or(name);
        if last_label.bytes().all(|b| b.is_ascii_digit()) {
            if host.starts_with("*.") || name.parse::<Ipv4Addr>().is_err() {
                return Err(bad("this is neither a host name nor an IPv4 address"));
            }
        } else {
            for label in name.split('.') {
                check_dns_label(label, true).map_err(|why| bad(&why))?;
            }
        }
        Ok(HostPattern {
            host: host.to_string(),
            port,
        })
    }

    /// True when a connection to `host:port` is covered by this pattern.
    ///
    /// `host` is compared case-insensitively and may carry a trailing dot or,
    /// for IPv6, brackets; IP addresses are compared by value.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let host = host.strip_suffix('.').unwrap_or(host);
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.host.parse::<IpAddr>().is_ok_and(|mine| mine == ip);
        }
        match self.host.strip_prefix("*.") {
            Some(domain) => {
                host.len() > domain.len() + 1
                    && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
                    && host[host.len() - domain.len()..].eq_ignore_ascii_case(domain)
            }
            None => host.eq_ignore_ascii_case(&self.host),
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for HostPattern {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HostPattern::parse(s)
    }
}

impl serde::Serialize for HostPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("port {p:?} must be a number from 1 to 65535")),
        Ok(n) => Ok(n),
    }
}

/// Checks an address range: `10.0.0.0/8`, `fd00::/8`, or a single address.
/// Host bits beyond the prefix must be zero, to catch `10.0.0.1/8` typos.
pub fn check_cidr(text: &str) -> Result<(), InvalidValue> {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| {
        InvalidValue(format!(
            "{text:?} is not an address range; write one like \"10.0.0.0/8\", \"192.168.1.10\" or \"fd00::/8\""
        ))
    })?;
    let bits: u32 = if ip.is_ipv4() { 32 } else { 128 };
    let Some(prefix) = prefix else { return Ok(()) };
    let len: u32 = match prefix.parse() {
        Ok(n) if n <= bits => n,
        _ => {
            return invalid(format!(
                "{text:?}: the prefix length must be a number from 0 to {bits}"
            ));
        }
    };
    let value: u128 = match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    };
    let host_mask: u128 = if len == bits {
        0
    } else {
        (1u128 << (bits - len)) - 1
    };
    if value & host_mask != 0 {
        let network = value & !host_mask;
        let suggestion = match ip {
            IpAddr::V4(_) => Ipv4Addr::from(network as u32).to_string(),
            IpAddr::V6(_) => Ipv6Addr::from(network).to_string(),
        };
        return invalid(format!(
            "{text:?} has bits set after the /{len} prefix; did you mean \"{suggestion}/{len}\"?"
        ));
    }
    Ok(())
}

/// True for an HTTP header name (an RFC 9110 token).
pub fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A workspace path pattern (`**/.env`, `.git/hooks`, `config/*.key`): relative
/// to the workspace root, `/`-separated, no empty, `.` or `..` segments (so
/// `secrets/`, `./.env` and `a//b` are errors, not patterns that silently
/// match nothing). The sandbox expands patterns with exactly these rules.
pub fn check_workspace_pattern(p: &str) -> Result<(), InvalidValue> {
    if p.is_empty() || p.contains('\0') {
        return Err(InvalidValue(format!("{p:?} is not a usable pattern")));
    }
    if p.starts_with('/') || p.starts_with('~') {
        return Err(InvalidValue(format!(
            "{p:?}: patterns are relative to the workspace root; write it without the leading {}",
            &p[..1]
        )));
    }
    for seg in p.split('/') {
        match seg {
            ".." => {
                return Err(InvalidValue(format!(
                    "{p:?}: patterns cannot reach outside the workspace with .."
                )));
            }
            "" | "." => {
                return Err(InvalidValue(format!(
                    "{p:?}: write the path without empty or \".\" parts (no leading ./, trailing / or //)"
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Parses a `[network.hosts]` address: `IP`, `IP:PORT` or `[IPv6]:PORT`.
pub fn parse_host_address(text: &str) -> Result<crate::model::SocketAddrOrIp, InvalidValue> {
    use crate::model::SocketAddrOrIp;
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddrOrIp { ip, port: None });
    }
    match text.parse::<std::net::SocketAddr>() {
        Ok(sa) if sa.port() != 0 => Ok(SocketAddrOrIp {
            ip: sa.ip(),
            port: Some(sa.port()),
        }),
        _ => Err(InvalidValue(format!(
            "{text:?} is not an address; write an IP with an optional port, like \"127.0.0.1:8443\" or \"[::1]:8443\""
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1Gi"), Ok(1 << 30));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("100 KB"), Ok(100_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("10B"), Ok(10));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("0.1K"), Ok(102));
        let many_nines = format!("1.{}T", "9".repeat(40));
        assert_eq!(parse_size(&many_nines), Ok((2 << 40) - 1));
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
        assert!(parse_size("18446744073709551616").is_err());
        for bad in [
            "",
            "G",
            "12X",
            "1.2.3G",
            "1.G",
            ".5G",
            "-1G",
            "1 G B",
            "99999999999T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be rejected");
        }
        let msg = parse_size("12X").unwrap_err().0;
        assert!(msg.contains("unknown unit \"x\""), "{msg}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        for bad in [
            "",
            "s",
            "1.5h",
            "10x",
            "1h30",
            "500ms",
            "h1",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(
            parse_duration("500ms")
                .unwrap_err()
                .0
                .contains("whole seconds")
        );
        assert!(
            parse_duration("1.5m")
                .unwrap_err()
                .0
                .contains("whole numbers")
        );
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(0)), "0s");
    }

    #[test]
    fn env_patterns() {
        for good in ["HOME", "_X", "LC_*", "a1", "TERM"] {
            assert!(check_env_pattern(good).is_ok(), "{good}");
        }
        for bad in ["*", "1ABC", "A-B", "A*B", "", "A B", "**"] {
            assert!(check_env_pattern(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hostnames() {
        assert!(check_hostname("cordon").is_ok());
        assert!(check_hostname("build-1.local").is_ok());
        assert!(check_hostname("").is_err());
        assert!(check_hostname("-x").is_err());
        assert!(check_hostname("a..b").is_err());
        assert!(check_hostname("under_score").is_err());
        assert!(check_hostname(&"a".repeat(65)).is_err());
    }

    #[test]
    fn host_patterns_parse() {
        let p = |s: &str| HostPattern::parse(s);
        assert_eq!(
            p("API.Example.com"),
            Ok(HostPattern {
                host: "api.example.com".into(),
                port: None
            })
        );
        assert_eq!(
            p("*.example.com:8443"),
            Ok(HostPattern {
                host: "*.example.com".into(),
                port: Some(8443)
            })
        );
        assert_eq!(p("10.1.2.3:5432").map(|h| h.host), Ok("10.1.2.3".into()));
        assert_eq!(
            p("[FD00:0::1]:80"),
            Ok(HostPattern {
                host: "fd00::1".into(),
                port: Some(80)
            })
        );
        assert_eq!(p("example.com.").map(|h| h.host), Ok("example.com".into()));
        for bad in [
            "",
            "*",
            "*:443",
            "api.*.com",
            "api*.example.com",
            "example.com:0",
            "example.com:70000",
            "example.com:https",
            "https://example.com",
            "example.com/path",
            "fd00::1",
            "[fd00::1",
            "[nope]",
            "a..b",
            "-a.com",
            "999.1.1.1",
            "*.1.2.3",
            "ex ample.com",
        ] {
            assert!(p(bad).is_err(), "{bad:?} should be rejected");
        }
        for s in [
            "example.com",
            "*.example.com:443",
            "[fd00::1]:80",
            "10.0.0.1",
        ] {
            assert_eq!(p(s).map(|h| h.to_string()), Ok(s.to_string()));
        }
    }

    #[test]
    fn host_patterns_match() {
        let exact = HostPattern::parse("github.com").unwrap();
        assert!(exact.matches("github.com", 443));
        assert!(exact.matches("GitHub.com.", 22));
        assert!(!exact.matches("api.github.com", 443));
        assert!(!exact.matches("evilgithub.com", 443));

        let wild = HostPattern::parse("*.github.com:443").unwrap();
        assert!(wild.matches("api.github.com", 443));
        assert!(wild.matches("a.b.GITHUB.com", 443));
        assert!(!wild.matches("github.com", 443));
        assert!(!wild.matches("evilgithub.com", 443));
        assert!(!wild.matches(".github.com", 443));
        assert!(!wild.matches("api.github.com", 80));

        let v6 = HostPattern::parse("[fd00::1]").unwrap();
        assert!(v6.matches("[fd00:0:0::1]", 1));
        assert!(v6.matches("fd00::1", 1));
        assert!(!v6.matches("fd00::2", 1));
        let v4 = HostPattern::parse("10.0.0.1").unwrap();
        assert!(v4.matches("10.0.0.1", 5));
        assert!(!v4.matches("10.0.0.2", 5));
    }

    #[test]
    fn cidrs() {
        for good in [
            "10.0.0.0/8",
            "192.168.1.10",
            "192.168.1.10/32",
            "fd00::/8",
            "::1",
            "0.0.0.0/0",
        ] {
            assert!(check_cidr(good).is_ok(), "{good}");
        }
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "fd00::/129",
            "host",
            "10.0.0.0/x",
            "",
        ] {
            assert!(check_cidr(bad).is_err(), "{bad:?}");
        }
        let msg = check_cidr("10.1.2.3/8").unwrap_err().0;
        assert!(msg.contains("did you mean \"10.0.0.0/8\""), "{msg}");
    }

    #[test]
    fn header_names() {
        assert!(is_header_name("authorization"));
        assert!(is_header_name("x-api-key"));
        assert!(!is_header_name("x api"));
        assert!(!is_header_name(""));
        assert!(!is_header_name("a:b"));
    }
}
