//! `[monitor]`: the anomaly rule language, its built-in rule set, and its parser.
//!
//! A rule names event kinds, field conditions (regular expressions over
//! fields of the event's data), an optional count within a sliding window,
//! and an action. This module checks rules and compiles their patterns with
//! the same bounds the sandbox's monitor engine uses ([`compile_pattern`]),
//! so a policy that parses never fails to load there. It does not evaluate
//! events: `cordon-sandbox`'s monitor does.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use regex::Regex;
use toml_edit::TableLike;

use crate::model::{Monitor, MonitorAction, MonitorRule};
use crate::parse::{Span, Walker, entry};

pub(crate) const MONITOR_KEYS: &[&str] = &["defaults", "disable", "hook", "rule"];
pub(crate) const MONITOR_RULE_KEYS: &[&str] = &[
    "name", "kind", "where", "count", "window", "action", "message",
];

/// Longest pattern source accepted, in bytes.
pub const MAX_PATTERN_LEN: usize = 1024;
/// Memory a compiled pattern may use (the `regex` crate's size limits).
pub const PATTERN_SIZE_LIMIT: usize = 1 << 20;
/// Most rules in one policy.
pub const MAX_MONITOR_RULES: usize = 256;
/// Most conditions in one rule.
pub const MAX_CONDITIONS: usize = 16;
/// Largest `count`: the engine remembers one timestamp per counted event.
pub const MAX_COUNT: u32 = 10_000;
/// Longest `window`.
pub const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Compiles a rule's pattern with the bounds every user of the rule language
/// shares: at most [`MAX_PATTERN_LEN`] bytes, at most [`PATTERN_SIZE_LIMIT`]
/// bytes of compiled program and lazy DFA.
pub fn compile_pattern(source: &str) -> Result<Regex, String> {
    if source.len() > MAX_PATTERN_LEN {
        return Err(format!(
            "the pattern is {} bytes, more than the {MAX_PATTERN_LEN} byte limit",
            source.len()
        ));
    }
    regex::RegexBuilder::new(source)
        .size_limit(PATTERN_SIZE_LIMIT)
        .dfa_size_limit(PATTERN_SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => format!(
                "the pattern compiles to more than {PATTERN_SIZE_LIMIT} bytes; simplify it \
                 (fewer repetitions such as {{1000}})"
            ),
            other => format!(
                "invalid regular expression: {}",
                other
                    .to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        })
}

/// Whether `pattern` (a rule's `kind` entry) covers the event kind `kind`:
/// `*` covers every kind, `net.*` every kind starting with `net.`, anything
/// else only itself.
pub fn kind_matches(pattern: &str, kind: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    }
}

fn check_kind(k: &str) -> Result<(), String> {
    if k == "*" {
        return Ok(());
    }
    let body = k.strip_suffix(".*").unwrap_or(k);
    let ok = !body.is_empty()
        && body.len() <= 128
        && body
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && !body.starts_with('.')
        && !body.ends_with('.');
    if !ok {
        return Err(format!(
            "{k:?} is not an event kind; write one like \"proc.exec\", a prefix like \"net.*\", \
             or \"*\""
        ));
    }
    if body == "anomaly" {
        return Err(
            "anomaly events are what rules produce and are never evaluated again (no loops); \
             match the events that cause them instead"
                .into(),
        );
    }
    Ok(())
}

fn check_field(f: &str) -> Result<(), String> {
    let ok = !f.is_empty()
        && f.len() <= 128
        && f.split('.').all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{f:?} is not a field path; write a field of the event's data such as \"path\", or a \
             dotted path such as \"request.host\""
        ))
    }
}

fn is_rule_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Programs that reach other machines: fetchers, raw sockets, remote shells.
pub const NETWORK_TOOLS_PATTERN: &str =
    r"(^|/)(curl|wget|nc|ncat|netcat|socat|ssh|scp|sftp|telnet)$";

/// Paths that usually hold credentials.
pub const CREDENTIAL_PATH_PATTERN: &str = r"(^|/)(\.ssh/|\.aws/|\.gnupg/|\.kube/config$|\.docker/config\.json$|\.netrc$|\.git-credentials$|id_(rsa|dsa|ecdsa|ed25519)$|[^/]*(key|private|secret)[^/]*\.pem$|[^/]+\.key$)|^/etc/(shadow|gshadow)$";

/// System calls that change privileges or reach around the sandbox.
pub const PRIVILEGE_SYSCALL_PATTERN: &str = r"^(setns|unshare|clone|mount|umount2|pivot_root|chroot|fsopen|fsmount|fsconfig|fspick|move_mount|open_tree|open_tree_attr|mount_setattr|ptrace|process_vm_readv|process_vm_writev|pidfd_getfd|bpf|perf_event_open|init_module|finit_module|delete_module|kexec_load|kexec_file_load|keyctl|add_key|request_key|open_by_handle_at|iopl|ioperm|setuid|setgid|setreuid|setregid|setresuid|setresgid|setfsuid|setfsgid|setgroups|capset|prctl)$";

/// The built-in rules; `docs/monitor.md` has the table.
pub(crate) fn default_rules() -> Vec<MonitorRule> {
    let rule = |name: &str,
                kind: &[&str],
                conditions: &[(&str, &str)],
                count: Option<(u32, u64)>,
                action: MonitorAction,
                message: &str| MonitorRule {
        name: name.into(),
        kind: kind.iter().map(|k| k.to_string()).collect(),
        conditions: conditions
            .iter()
            .map(|(f, p)| (f.to_string(), p.to_string()))
            .collect::<BTreeMap<_, _>>(),
        count: count.map(|(c, _)| c),
        window: count.map(|(_, w)| Duration::from_secs(w)),
        action,
        message: Some(message.into()),
    };
    vec![
        rule(
            "network-tools",
            &["proc.exec"],
            &[("path", NETWORK_TOOLS_PATTERN)],
            None,
            MonitorAction::Alert,
            "a network tool was executed",
        ),
        rule(
            "credential-read",
            &["fs.*"],
            &[("path", CREDENTIAL_PATH_PATTERN)],
            None,
            MonitorAction::Alert,
            "a credential-looking path was opened",
        ),
        rule(
            "dns-nxdomain-burst",
            &["net.dns"],
            &[("answer", "^nxdomain$")],
            Some((20, 60)),
            MonitorAction::Alert,
            "many lookups of unknown names (DNS tunnelling or a scan)",
        ),
        rule(
            "git-hooks-write",
            &["fs.open", "fs.write"],
            &[("path", r"(^|/)\.git/hooks(/|$)"), ("write", "^true$")],
            None,
            MonitorAction::Kill,
            "a write to .git/hooks (code that would run on the host)",
        ),
        rule(
            "secret-to-unbound-host",
            &["secret.blocked"],
            &[],
            None,
            MonitorAction::Kill,
            "a secret's placeholder was sent toward a host the secret is not bound to",
        ),
        rule(
            "privilege-syscall",
            &["syscall.denied", "proc.privilege"],
            &[("syscall", PRIVILEGE_SYSCALL_PATTERN)],
            None,
            MonitorAction::Alert,
            "a privilege-related system call",
        ),
    ]
}

impl Walker<'_> {
    pub(crate) fn monitor(&mut self, (t, _, name): (&dyn TableLike, Span, String)) -> Monitor {
        self.check_keys(t, &format!("[{name}]"), MONITOR_KEYS);
        let mut m = Monitor::default();
        if let Some(d) = self.field(t, &name, "defaults", Self::boolean) {
            m.defaults = d;
        }
        let builtin: Vec<String> = default_rules().into_iter().map(|r| r.name).collect();
        if let Some(v) = self.field(t, &name, "disable", |w, item, span, n| {
            w.list(item, span, n, |s| {
                if builtin.iter().any(|b| b == s) {
                    Ok(s.to_string())
                } else {
                    Err(crate::values::InvalidValue(format!(
                        "{s:?} is not a built-in rule; the built-in rules are {}",
                        builtin.join(", ")
                    )))
                }
            })
        }) {
            m.disable = v;
        }
        if let Some(v) = self.field(t, &name, "hook", |w, item, span, n| {
            let argv = w.strings(item, span.clone(), n)?;
            if argv.is_empty() || argv[0].0.is_empty() || argv.iter().any(|(a, _)| a.contains('\0'))
            {
                w.error(
                    span,
                    format!(
                        "{n} must be a command and its arguments, like [\"/usr/local/bin/page\", \
                         \"--sev\", \"2\"], without NUL characters"
                    ),
                );
                return None;
            }
            Some(argv.into_iter().map(|(a, _)| a).collect())
        }) {
            m.hook = v;
        }
        if let Some((item, span)) = entry(t, "rule") {
            let mut seen = HashSet::new();
            for (rt, rspan) in self.tables(item, span, "monitor.rule") {
                if m.rules.len() == MAX_MONITOR_RULES {
                    self.error(
                        rspan,
                        format!("at most {MAX_MONITOR_RULES} monitor rules are allowed"),
                    );
                    break;
                }
                if let Some(r) = self.monitor_rule(rt, rspan.clone()) {
                    if !seen.insert(r.name.clone()) {
                        let span = entry(rt, "name").and_then(|(_, s)| s).or(rspan);
                        self.error(
                            span,
                            format!(
                                "another [[monitor.rule]] is already named {:?}; rule names \
                                 must be unique",
                                r.name
                            ),
                        );
                        continue;
                    }
                    m.rules.push(r);
                }
            }
        }
        m
    }

    fn monitor_rule(&mut self, t: &dyn TableLike, span: Span) -> Option<MonitorRule> {
        let name = "monitor.rule";
        self.check_keys(t, "[[monitor.rule]]", MONITOR_RULE_KEYS);
        let rule_name = self.field(t, name, "name", |w, item, span, n| {
            let s = w.string(item, span.clone(), n, "a string")?;
            if !is_rule_name(&s) {
                w.error(
                    span,
                    format!(
                        "{n} must be 1 to 64 characters of a-z, 0-9, - and _, like \
                         \"no-network-tools\", not {s:?}"
                    ),
                );
                return None;
            }
            Some(s)
        });
        let kind = self.field(t, name, "kind", |w, item, span, n| {
            let kinds: Vec<(String, Span)> = match item.as_str() {
                Some(s) => vec![(s.to_string(), span.clone())],
                None if item.is_array() => w.strings(item, span.clone(), n)?,
                None => {
                    w.error(
                        span,
                        format!(
                            "{n} must be an event kind like \"proc.exec\" or a list of them, \
                             not {}",
                            crate::parse::type_name(item)
                        ),
                    );
                    return None;
                }
            };
            if kinds.is_empty() {
                w.error(span, format!("{n} is empty; name at least one event kind"));
                return None;
            }
            let mut out = Vec::new();
            for (k, kspan) in kinds {
                match check_kind(&k) {
                    Ok(()) => out.push(k),
                    Err(e) => w.error(kspan, format!("{n}: {e}")),
                }
            }
            Some(out)
        });
        let conditions = self.field(t, name, "where", |w, item, span, n| {
            let Some(table) = item.as_table_like() else {
                w.error(
                    span,
                    format!(
                        "{n} must be a table of field = \"regex\", like {{ path = \"\\\\.pem$\" }}, \
                         not {}",
                        crate::parse::type_name(item)
                    ),
                );
                return None;
            };
            let mut out = BTreeMap::new();
            for (field, value) in table.iter() {
                let key_span = table.key(field).and_then(|k| k.span());
                let vspan = value.span().or(key_span.clone());
                if let Err(e) = check_field(field) {
                    w.error(key_span, format!("{n}: {e}"));
                    continue;
                }
                let fname = format!("{n}.{field}");
                let Some(pattern) = w.string(value, vspan.clone(), &fname, "a regular expression")
                else {
                    continue;
                };
                if let Err(e) = compile_pattern(&pattern) {
                    w.error(vspan, format!("{fname}: {e}"));
                    continue;
                }
                out.insert(field.to_string(), pattern);
            }
            if out.len() > MAX_CONDITIONS {
                w.error(
                    span,
                    format!("{n} has {} conditions; at most {MAX_CONDITIONS}", out.len()),
                );
                return None;
            }
            Some(out)
        });
        let count = self.field(t, name, "count", |w, item, span, n| {
            let c = w.positive_integer(item, span.clone(), n)?;
            if c > u64::from(MAX_COUNT) {
                w.error(span, format!("{n} must be at most {MAX_COUNT}"));
                return None;
            }
            Some(c as u32)
        });
        let window = self.field(t, name, "window", |w, item, span, n| {
            let d = w.duration(item, span.clone(), n)?;
            if d > MAX_WINDOW {
                w.error(span, format!("{n} must be at most 24h"));
                return None;
            }
            Some(d)
        });
        let action = self.field(t, name, "action", |w, item, span, n| {
            match w
                .string(item, span.clone(), n, "\"log\", \"alert\" or \"kill\"")?
                .as_str()
            {
                "log" => Some(MonitorAction::Log),
                "alert" => Some(MonitorAction::Alert),
                "kill" => Some(MonitorAction::Kill),
                other => {
                    w.error(
                        span,
                        format!("{n} must be \"log\", \"alert\" or \"kill\", not {other:?}"),
                    );
                    None
                }
            }
        });
        let message = self.field(t, name, "message", |w, item, span, n| {
            let m = w.string(item, span.clone(), n, "a string")?;
            if m.len() > 1024 || m.contains('\0') {
                w.error(span, format!("{n} must be at most 1024 bytes, without NUL"));
                return None;
            }
            Some(m)
        });
        for (key, example) in [
            ("name", "name = \"no-network-tools\""),
            ("kind", "kind = \"proc.exec\""),
            ("action", "action = \"alert\""),
        ] {
            if entry(t, key).is_none() {
                self.error(
                    span.clone(),
                    format!("[[monitor.rule]] needs `{key}`, e.g. {example}"),
                );
            }
        }
        let has_count = entry(t, "count").is_some();
        let has_window = entry(t, "window").is_some();
        if has_count != has_window {
            let (present, missing, example) = if has_count {
                ("count", "window", "window = \"60s\"")
            } else {
                ("window", "count", "count = 20")
            };
            self.error(
                entry(t, present).and_then(|(_, s)| s).or(span),
                format!(
                    "monitor.rule.{present} needs `{missing}` too (fire when `count` matching \
                     events happen within `window`), e.g. {example}"
                ),
            );
            return None;
        }
        Some(MonitorRule {
            name: rule_name?,
            kind: kind?,
            conditions: conditions.unwrap_or_default(),
            count,
            window,
            action: action?,
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Policy;

    fn errors(text: &str) -> Vec<String> {
        match Policy::parse(text) {
            Ok(_) => Vec::new(),
            Err(d) => d.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn builtin_rules_compile_and_have_unique_names() {
        let rules = default_rules();
        let names: HashSet<_> = rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names.len(), rules.len());
        for r in &rules {
            assert!(is_rule_name(&r.name), "{}", r.name);
            for k in &r.kind {
                check_kind(k).unwrap();
            }
            for (f, p) in &r.conditions {
                check_field(f).unwrap();
                compile_pattern(p).unwrap();
            }
        }
    }

    #[test]
    fn parses_a_full_monitor_section() {
        let p = Policy::parse(
            r#"
[monitor]
defaults = true
disable = ["dns-nxdomain-burst"]
hook = ["/usr/local/bin/page", "--sev", "2"]

[[monitor.rule]]
name = "no-make"
kind = ["proc.exec", "proc.*"]
where = { path = "(^|/)make$", "argv" = "^-j" }
count = 3
window = "1m"
action = "kill"
message = "no builds"

[[monitor.rule]]
name = "network-tools"
kind = "proc.exec"
where = { path = "/curl$" }
action = "log"
"#,
        )
        .unwrap();
        let m = &p.monitor;
        assert_eq!(m.hook, ["/usr/local/bin/page", "--sev", "2"]);
        assert_eq!(m.rules.len(), 2);
        let r = &m.rules[0];
        assert_eq!(r.kind, ["proc.exec", "proc.*"]);
        assert_eq!(r.count, Some(3));
        assert_eq!(r.window, Some(Duration::from_secs(60)));
        assert_eq!(r.action, MonitorAction::Kill);
        assert_eq!(r.conditions["argv"], "^-j");
        let eff = m.effective_rules();
        let names: Vec<&str> = eff.iter().map(|r| r.name.as_str()).collect();
        assert!(!names.contains(&"dns-nxdomain-burst"));
        assert_eq!(names.iter().filter(|n| **n == "network-tools").count(), 1);
        let nt = eff.iter().find(|r| r.name == "network-tools").unwrap();
        assert_eq!(
            nt.action,
            MonitorAction::Log,
            "the policy's rule replaces the default"
        );
        assert_eq!(names.last(), Some(&"no-make"));
    }

    #[test]
    fn defaults_can_be_turned_off() {
        let p = Policy::parse("[monitor]\ndefaults = false\n").unwrap();
        assert!(p.monitor.effective_rules().is_empty());
        assert_eq!(
            Policy::default().monitor.effective_rules(),
            default_rules(),
            "without a [monitor] section the built-in rules apply"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_position() {
        let errs = errors(
            r#"[monitor]
defualts = true
disable = ["nope"]
hook = []

[[monitor.rule]]
name = "Bad Name"
kind = "anomaly"
where = { path = "(unclosed", "a..b" = "x" }
count = 5
action = "explode"

[[monitor.rule]]
name = "dup"
kind = "proc.exec"
action = "log"

[[monitor.rule]]
name = "dup"
kind = "proc.exec"
action = "log"

[[monitor.rule]]
kind = "net.*"
window = "10s"
action = "alert"
"#,
        );
        let joined = errors_joined(&errs);
        for needle in [
            "2:1: unknown key `defualts` in [monitor] (did you mean `defaults`?)",
            "3:12: monitor.disable: \"nope\" is not a built-in rule",
            "4:8: monitor.hook must be a command",
            "7:8: monitor.rule.name must be 1 to 64 characters",
            "8:8: monitor.rule.kind: anomaly events are what rules produce",
            "9:18: monitor.rule.where.path: invalid regular expression",
            "9:31: monitor.rule.where: \"a..b\" is not a field path",
            "10:9: monitor.rule.count needs `window` too",
            "11:10: monitor.rule.action must be \"log\", \"alert\" or \"kill\", not \"explode\"",
            "19:8: another [[monitor.rule]] is already named \"dup\"",
            "[[monitor.rule]] needs `name`",
            "25:10: monitor.rule.window needs `count` too",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
        assert!(
            errs.iter().all(|e| !e.contains('\n')),
            "every error is one line: {errs:?}"
        );
    }

    fn errors_joined(errs: &[String]) -> String {
        errs.join("\n")
    }

    #[test]
    fn oversized_patterns_are_refused() {
        assert!(compile_pattern(&"a".repeat(MAX_PATTERN_LEN + 1)).is_err());
        let e = compile_pattern(r"(\w{100}){100}").unwrap_err();
        assert!(e.contains("more than"), "{e}");
    }

    #[test]
    fn kind_patterns() {
        assert!(kind_matches("*", "proc.exec"));
        assert!(kind_matches("net.*", "net.dns"));
        assert!(!kind_matches("net.*", "netx.dns"));
        assert!(kind_matches("proc.exec", "proc.exec"));
        assert!(!kind_matches("proc.exec", "proc.exit"));
        assert!(check_kind("net.*").is_ok());
        assert!(check_kind("net*").is_err());
        assert!(check_kind("anomaly").is_err());
    }
}
