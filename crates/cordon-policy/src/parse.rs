//! Turning policy text into a [`Policy`], collecting every problem on the way.
//!
//! `toml_edit` parses the text into a document that remembers where each key
//! and value came from; the walker here reads that document against the
//! policy schema by hand, so that one pass reports every unknown key, wrong
//! type and invalid value with its own line and column instead of stopping at
//! the first. Checks that involve more than one value (a secret also passed
//! through `sandbox.env`, two mounts on one target) run after the walk.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use toml_edit::{Document, Item, TableLike, Value};

use crate::diag::{Collector, Diagnostics};
use crate::model::{
    BackendKind, HTTP_METHODS, Injection, Mount, Network, OnUnknown, Policy, Rule, RuleAction,
    Sandbox, Secret, SecretSource, Workspace,
};
use crate::values::{self, HostPattern, InvalidValue};

/// Largest policy or config text accepted: 1 MiB.
pub const MAX_POLICY_BYTES: usize = 1 << 20;

pub(crate) type Span = Option<Range<usize>>;

pub(crate) const TOP_KEYS: &[&str] = &[
    "sandbox",
    "workspace",
    "mount",
    "network",
    "secrets",
    "rule",
    "monitor",
];
pub(crate) const SANDBOX_KEYS: &[&str] = &[
    "backend",
    "timeout",
    "memory",
    "cpus",
    "pids",
    "disk_quota",
    "output_limit",
    "env",
    "set_env",
    "hostname",
];
pub(crate) const WORKSPACE_KEYS: &[&str] = &["path", "hidden", "read_only", "writable"];
pub(crate) const MOUNT_KEYS: &[&str] = &["source", "target", "writable", "optional"];
pub(crate) const NETWORK_KEYS: &[&str] = &[
    "allow",
    "deny",
    "on_unknown",
    "ask_timeout",
    "passthrough",
    "allow_private",
    "hosts",
    "upstream_ca",
    "max_request_body",
    "requests_per_minute",
];
pub(crate) const SECRET_KEYS: &[&str] = &["from", "hosts", "inject", "placeholder", "ttl"];
pub(crate) const RULE_KEYS: &[&str] = &[
    "host",
    "methods",
    "path",
    "action",
    "max_body",
    "requests_per_minute",
];

/// Headers that frame or route the request; a secret placed in them could
/// redirect or split the request, so they cannot carry one.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

pub(crate) fn parse_policy(text: &str) -> Result<Policy, Diagnostics> {
    let (mut w, doc) = Walker::start(text)?;
    let root = doc.as_table();
    let mut policy = Policy::default();
    w.check_keys(root, "the top level", TOP_KEYS);

    if let Some(t) = w.sub_table(root, "", "sandbox") {
        policy.sandbox = w.sandbox(t);
    }
    if let Some(t) = w.sub_table(root, "", "workspace") {
        policy.workspace = w.workspace(t);
    }
    let mut mount_spans = Vec::new();
    if let Some((item, span)) = entry(root, "mount") {
        for (t, tspan) in w.tables(item, span, "mount") {
            if let Some(m) = w.mount(t, tspan.clone()) {
                policy.mounts.push(m);
                mount_spans.push(tspan);
            }
        }
    }
    if let Some(t) = w.sub_table(root, "", "network") {
        policy.network = w.network(t);
    }
    if let Some((secrets, _, _)) = w.sub_table(root, "", "secrets") {
        for (name, item) in secrets.iter() {
            let key_span = secrets.key(name).and_then(|k| k.span());
            if !values::is_env_name(name) {
                w.error(
                    key_span.clone(),
                    format!(
                        "secret name {name:?} must be usable as an environment variable name: \
                         letters, digits and _, not starting with a digit"
                    ),
                );
            }
            let span = item.span().or(key_span);
            let field = format!("secrets.{name}");
            if let Some(t) = w.table_like(item, span.clone(), &field)
                && let Some(s) = w.secret(t, span, &field)
            {
                policy.secrets.insert(name.to_string(), s);
            }
        }
    }
    if let Some((item, span)) = entry(root, "rule") {
        for (t, tspan) in w.tables(item, span, "rule") {
            if let Some(r) = w.rule(t, tspan) {
                policy.rules.push(r);
            }
        }
    }
    if let Some(t) = w.sub_table(root, "", "monitor") {
        policy.monitor = w.monitor(t);
    }
    w.cross_checks(root, &policy, &mount_spans);
    w.c.finish(policy)
}

/// The value of `key` in `t` and the best position for it: the value's own
/// span, or the key's when the value has none (implicit and dotted tables).
pub(crate) fn entry<'t>(t: &'t dyn TableLike, key: &str) -> Option<(&'t Item, Span)> {
    let (k, item) = t.get_key_value(key)?;
    Some((item, item.span().or_else(|| k.span())))
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

pub(crate) fn type_name(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Table(_) | Item::Value(Value::InlineTable(_)) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
        Item::Value(Value::String(_)) => "a string",
        Item::Value(Value::Integer(_)) => "an integer",
        Item::Value(Value::Float(_)) => "a float",
        Item::Value(Value::Boolean(_)) => "a boolean",
        Item::Value(Value::Datetime(_)) => "a date-time",
        Item::Value(Value::Array(_)) => "an array",
    }
}

fn value_type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "a table",
    }
}

/// Edit distance, for "did you mean" on unknown keys.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Reads a parsed document against a schema, recording diagnostics.
pub(crate) struct Walker<'s> {
    pub(crate) c: Collector<'s>,
}

impl<'s> Walker<'s> {
    /// Parses `text` into a document with positions, or gives the one
    /// diagnostic for text that is too large or is not TOML.
    pub(crate) fn start(text: &'s str) -> Result<(Walker<'s>, Document<&'s str>), Diagnostics> {
        let mut c = Collector::new(text);
        if text.len() > MAX_POLICY_BYTES {
            c.error(
                None,
                format!(
                    "the text is {} bytes, more than the {MAX_POLICY_BYTES} byte (1 MiB) limit; \
                     check that this is the right file",
                    text.len()
                ),
            );
        } else {
            match Document::parse(text) {
                Ok(doc) => return Ok((Walker { c }, doc)),
                Err(e) => c.error(e.span(), format!("TOML syntax error: {}", e.message())),
            }
        }
        c.finish(()).and(Err(Diagnostics(Vec::new())))
    }

    pub(crate) fn error(&mut self, span: Span, msg: impl Into<String>) {
        self.c.error(span, msg);
    }

    /// Reports every key of `t` not in `valid`.
    pub(crate) fn check_keys(&mut self, t: &dyn TableLike, where_: &str, valid: &[&str]) {
        for (key, _) in t.iter() {
            if valid.contains(&key) {
                continue;
            }
            if key.is_empty() {
                let span = t.key(key).and_then(|k| k.span());
                self.error(
                    span,
                    format!(
                        "empty key in {where_}; valid keys are: {}",
                        valid.join(", ")
                    ),
                );
                continue;
            }
            let span = t.key(key).and_then(|k| k.span());
            let suggestion = valid
                .iter()
                .map(|v| (distance(key, v), v))
                .filter(|(d, v)| {
                    *d <= 2.min(v.len() / 2).max(1) || v.starts_with(key) || key.starts_with(*v)
                })
                .min_by_key(|(d, _)| *d)
                .map(|(_, v)| format!(" (did you mean `{v}`?)"))
                .unwrap_or_default();
            self.error(
                span,
                format!(
                    "unknown key `{key}` in {where_}{suggestion}; valid keys are: {}",
                    valid.join(", ")
                ),
            );
        }
    }

    /// The table under `key` in `parent`, reporting a wrong type.
    pub(crate) fn sub_table<'t>(
        &mut self,
        parent: &'t dyn TableLike,
        parent_name: &str,
        key: &str,
    ) -> Option<(&'t dyn TableLike, Span, String)> {
        let (item, span) = entry(parent, key)?;
        let name = join(parent_name, key);
        let t = self.table_like(item, span.clone(), &name)?;
        Some((t, span, name))
    }

    pub(crate) fn table_like<'t>(
        &mut self,
        item: &'t Item,
        span: Span,
        name: &str,
    ) -> Option<&'t dyn TableLike> {
        let t = item.as_table_like();
        if t.is_none() {
            self.error(
                span,
                format!(
                    "{name} must be a table (a [{name}] section), not {}",
                    type_name(item)
                ),
            );
        }
        t
    }

    /// `[[name]]` sections, or an array of inline tables.
    pub(crate) fn tables<'t>(
        &mut self,
        item: &'t Item,
        span: Span,
        name: &str,
    ) -> Vec<(&'t dyn TableLike, Span)> {
        match item {
            Item::ArrayOfTables(a) => a.iter().map(|t| (t as &dyn TableLike, t.span())).collect(),
            Item::Value(Value::Array(a)) => {
                let mut out = Vec::new();
                for v in a.iter() {
                    match v {
                        Value::InlineTable(t) => out.push((t as &dyn TableLike, v.span())),
                        other => self.error(
                            other.span(),
                            format!(
                                "each {name} entry must be a table, not {}",
                                value_type_name(other)
                            ),
                        ),
                    }
                }
                out
            }
            other => {
                self.error(
                    span,
                    format!(
                        "{name} must be written as [[{name}]] sections, not {}",
                        type_name(other)
                    ),
                );
                Vec::new()
            }
        }
    }

    pub(crate) fn string(
        &mut self,
        item: &Item,
        span: Span,
        name: &str,
        expected: &str,
    ) -> Option<String> {
        match item.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                self.error(
                    span,
                    format!("{name} must be {expected}, not {}", type_name(item)),
                );
                None
            }
        }
    }

    pub(crate) fn boolean(&mut self, item: &Item, span: Span, name: &str) -> Option<bool> {
        match item.as_bool() {
            Some(b) => Some(b),
            None => {
                self.error(
                    span,
                    format!("{name} must be true or false, not {}", type_name(item)),
                );
                None
            }
        }
    }

    pub(crate) fn positive_integer(&mut self, item: &Item, span: Span, name: &str) -> Option<u64> {
        match item.as_integer() {
            Some(n) if n >= 1 => Some(n as u64),
            Some(n) => {
                self.error(span, format!("{name} must be at least 1, not {n}"));
                None
            }
            None => {
                self.error(
                    span,
                    format!("{name} must be an integer, not {}", type_name(item)),
                );
                None
            }
        }
    }

    /// A size: an integer number of bytes or a string like `"2G"`; never zero.
    fn size(&mut self, item: &Item, span: Span, name: &str) -> Option<u64> {
        let bytes = self.count_or_text(
            item,
            span.clone(),
            name,
            |n| n,
            values::parse_size,
            "a size such as \"512M\" or \"2G\", or a number of bytes",
        )?;
        if bytes == 0 {
            self.error(
                span,
                format!("{name} must be greater than zero; remove the key for no limit"),
            );
            return None;
        }
        Some(bytes)
    }

    /// A duration: an integer number of seconds or a string like `"30m"`; never zero.
    pub(crate) fn duration(&mut self, item: &Item, span: Span, name: &str) -> Option<Duration> {
        let d = self.count_or_text(
            item,
            span.clone(),
            name,
            Duration::from_secs,
            values::parse_duration,
            "a duration such as \"90s\", \"30m\" or \"2h\", or a number of seconds",
        )?;
        if d.is_zero() {
            self.error(span, format!("{name} must be greater than zero"));
            return None;
        }
        Some(d)
    }

    /// A value written either as a non-negative integer (`from_count`) or as a
    /// string (`parse`); `expected` completes "NAME must be ..." for anything else.
    fn count_or_text<T>(
        &mut self,
        item: &Item,
        span: Span,
        name: &str,
        from_count: impl Fn(u64) -> T,
        parse: impl Fn(&str) -> Result<T, InvalidValue>,
        expected: &str,
    ) -> Option<T> {
        match (item.as_integer(), item.as_str()) {
            (Some(n), _) => match u64::try_from(n) {
                Ok(n) => Some(from_count(n)),
                Err(_) => {
                    self.error(span, format!("{name} must not be negative"));
                    None
                }
            },
            (None, Some(s)) => match parse(s) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.error(span, format!("{name}: {e}"));
                    None
                }
            },
            (None, None) => {
                self.error(
                    span,
                    format!("{name} must be {expected}, not {}", type_name(item)),
                );
                None
            }
        }
    }

    /// An array of strings, each with its position; wrong elements are reported and skipped.
    pub(crate) fn strings(
        &mut self,
        item: &Item,
        span: Span,
        name: &str,
    ) -> Option<Vec<(String, Span)>> {
        let Some(array) = item.as_array() else {
            self.error(
                span,
                format!(
                    "{name} must be an array of strings, like [\"a\", \"b\"], not {}",
                    type_name(item)
                ),
            );
            return None;
        };
        let mut out = Vec::new();
        for v in array.iter() {
            match v.as_str() {
                Some(s) => out.push((s.to_string(), v.span())),
                None => self.error(
                    v.span(),
                    format!(
                        "each entry of {name} must be a string, not {}",
                        value_type_name(v)
                    ),
                ),
            }
        }
        Some(out)
    }

    /// An array of strings each checked by `check`; invalid entries are reported and skipped.
    pub(crate) fn list<T>(
        &mut self,
        item: &Item,
        span: Span,
        name: &str,
        check: impl Fn(&str) -> Result<T, InvalidValue>,
    ) -> Option<Vec<T>> {
        let entries = self.strings(item, span, name)?;
        let mut out = Vec::new();
        for (s, span) in entries {
            match check(&s) {
                Ok(v) => out.push(v),
                Err(e) => self.error(span, format!("{name}: {e}")),
            }
        }
        Some(out)
    }

    /// Runs `read` on the value of `key` when present.
    pub(crate) fn field<T>(
        &mut self,
        t: &dyn TableLike,
        table_name: &str,
        key: &str,
        read: impl FnOnce(&mut Self, &Item, Span, &str) -> Option<T>,
    ) -> Option<T> {
        let (item, span) = entry(t, key)?;
        read(self, item, span, &join(table_name, key))
    }

    fn sandbox(&mut self, (t, _, name): (&dyn TableLike, Span, String)) -> Sandbox {
        self.check_keys(t, &format!("[{name}]"), SANDBOX_KEYS);
        let mut s = Sandbox::default();
        if let Some(b) = self.field(t, &name, "backend", |w, item, span, n| {
            let text = w.string(item, span.clone(), n, "a string")?;
            let found = BackendKind::ALL.into_iter().find(|b| b.name() == text);
            if found.is_none() {
                let names: Vec<&str> = BackendKind::ALL.iter().map(|b| b.name()).collect();
                w.error(
                    span,
                    format!(
                        "{n}: unknown backend {text:?}; choose one of {}",
                        names.join(", ")
                    ),
                );
            }
            found
        }) {
            s.backend = b;
        }
        s.timeout = self.field(t, &name, "timeout", Self::duration);
        s.memory = self.field(t, &name, "memory", Self::size);
        s.disk_quota = self.field(t, &name, "disk_quota", Self::size);
        s.output_limit = self.field(t, &name, "output_limit", Self::size);
        s.pids = self.field(t, &name, "pids", Self::positive_integer);
        s.cpus = self.field(t, &name, "cpus", |w, item, span, n| {
            let cpus = match (item.as_float(), item.as_integer()) {
                (Some(f), _) => f,
                (None, Some(i)) => i as f64,
                (None, None) => {
                    w.error(
                        span,
                        format!(
                            "{n} must be a number of cores, like 2 or 0.5, not {}",
                            type_name(item)
                        ),
                    );
                    return None;
                }
            };
            if !(cpus > 0.0 && cpus <= 1024.0) {
                w.error(
                    span,
                    format!("{n} must be greater than 0 and at most 1024, not {cpus}"),
                );
                return None;
            }
            Some(cpus)
        });
        if let Some(env) = self.field(t, &name, "env", |w, item, span, n| {
            w.list(item, span, n, |s| {
                values::check_env_pattern(s).map(|()| s.to_string())
            })
        }) {
            s.env = env;
        }
        if let Some((set_env, _, set_name)) = self.sub_table(t, &name, "set_env") {
            for (key, item) in set_env.iter() {
                let key_span = set_env.key(key).and_then(|k| k.span());
                if !values::is_env_name(key) {
                    self.error(
                        key_span.clone(),
                        format!(
                            "{set_name}: {key:?} is not an environment variable name: use \
                             letters, digits and _, not starting with a digit"
                        ),
                    );
                    continue;
                }
                let span = item.span().or(key_span);
                let field = join(&set_name, key);
                if let Some(v) = self.string(item, span.clone(), &field, "a string") {
                    if v.contains('\0') {
                        self.error(span, format!("{field} must not contain a NUL character"));
                    } else {
                        s.set_env.insert(key.to_string(), v);
                    }
                }
            }
        }
        if let Some(h) = self.field(t, &name, "hostname", |w, item, span, n| {
            let h = w.string(item, span.clone(), n, "a string")?;
            match values::check_hostname(&h) {
                Ok(()) => Some(h),
                Err(e) => {
                    w.error(span, format!("{n}: {e}"));
                    None
                }
            }
        }) {
            s.hostname = h;
        }
        s
    }

    fn workspace(&mut self, (t, _, name): (&dyn TableLike, Span, String)) -> Workspace {
        self.check_keys(t, &format!("[{name}]"), WORKSPACE_KEYS);
        let path = self.field(t, &name, "path", |w, item, span, n| {
            let p = w.string(item, span.clone(), n, "a directory path")?;
            if p.is_empty() || p.contains('\0') {
                w.error(
                    span,
                    format!(
                        "{n} must be a directory path; use \".\" for the policy file's directory"
                    ),
                );
                return None;
            }
            if p.starts_with('~') {
                w.error(
                    span,
                    format!(
                        "{n}: ~ is not expanded here; write an absolute path, or one relative to \
                         the policy file's directory"
                    ),
                );
                return None;
            }
            Some(PathBuf::from(p))
        });
        let mut ws = Workspace {
            path,
            ..Workspace::default()
        };
        for (key, list) in [
            ("hidden", &mut ws.hidden),
            ("read_only", &mut ws.read_only),
            ("writable", &mut ws.writable),
        ] {
            if let Some(v) = self.field(t, &name, key, |w, item, span, n| {
                w.list(item, span, n, |p| {
                    values::check_workspace_pattern(p).map(|()| p.to_string())
                })
            }) {
                *list = v;
            }
        }
        ws
    }

    fn mount(&mut self, t: &dyn TableLike, span: Span) -> Option<Mount> {
        let name = "mount";
        self.check_keys(t, "[[mount]]", MOUNT_KEYS);
        let source = self.field(t, name, "source", |w, item, span, n| {
            let p = w.string(item, span.clone(), n, "an absolute host path")?;
            w.absolute_path(&p, span, n, "the host path to mount")
        });
        let target = self.field(t, name, "target", |w, item, span, n| {
            let p = w.string(item, span.clone(), n, "an absolute path inside the sandbox")?;
            let path = w.absolute_path(
                &p,
                span.clone(),
                n,
                "where the mount appears in the sandbox",
            )?;
            if path == Path::new("/") {
                w.error(
                    span,
                    format!("{n} cannot be / (that would replace the sandbox's root)"),
                );
                return None;
            }
            Some(path)
        });
        let writable = self.field(t, name, "writable", Self::boolean);
        let optional = self.field(t, name, "optional", Self::boolean);
        if entry(t, "source").is_none() {
            self.error(
                span,
                "[[mount]] needs `source`, the absolute host path to mount, e.g. source = \"/opt/sdk\"",
            );
        }
        let source = source?;
        if source == Path::new("/") && target.is_none() {
            self.error(
                entry(t, "source").and_then(|(_, s)| s),
                "mount.source / without a target would replace the sandbox's root; set `target`",
            );
            return None;
        }
        Some(Mount {
            source,
            target,
            writable: writable.unwrap_or(false),
            optional: optional.unwrap_or(false),
        })
    }

    fn absolute_path(&mut self, p: &str, span: Span, n: &str, what: &str) -> Option<PathBuf> {
        let path = PathBuf::from(p);
        if !path.is_absolute() {
            let hint = if p.starts_with('~') {
                " (~ is not expanded here; write the full path)"
            } else {
                ""
            };
            self.error(
                span,
                format!("{n} must be an absolute path ({what}), not {p:?}{hint}"),
            );
            return None;
        }
        if path.components().any(|c| c == Component::ParentDir) || p.contains('\0') {
            self.error(span, format!("{n} must not contain `..` or NUL: {p:?}"));
            return None;
        }
        Some(path)
    }

    fn network(&mut self, (t, _, name): (&dyn TableLike, Span, String)) -> Network {
        self.check_keys(t, &format!("[{name}]"), NETWORK_KEYS);
        let mut net = Network::default();
        for (key, list) in [("allow", &mut net.allow), ("deny", &mut net.deny)] {
            if let Some(v) = self.field(t, &name, key, |w, item, span, n| {
                w.list(item, span, n, HostPattern::parse)
            }) {
                *list = v;
            }
        }
        if let Some(v) = self.field(t, &name, "on_unknown", |w, item, span, n| {
            match w
                .string(item, span.clone(), n, "\"deny\" or \"ask\"")?
                .as_str()
            {
                "deny" => Some(OnUnknown::Deny),
                "ask" => Some(OnUnknown::Ask),
                other => {
                    w.error(
                        span,
                        format!("{n} must be \"deny\" or \"ask\", not {other:?}"),
                    );
                    None
                }
            }
        }) {
            net.on_unknown = v;
        }
        if let Some(d) = self.field(t, &name, "ask_timeout", Self::duration) {
            net.ask_timeout = d;
        }
        if let Some(v) = self.field(t, &name, "passthrough", |w, item, span, n| {
            w.list(item, span, n, |s| {
                let p = HostPattern::parse(s)?;
                if p.port.is_none() {
                    return Err(InvalidValue(format!(
                        "{s:?} needs a port: raw TCP is forwarded per port, e.g. \"{s}:5432\""
                    )));
                }
                Ok(p)
            })
        }) {
            net.passthrough = v;
        }
        if let Some(v) = self.field(t, &name, "allow_private", |w, item, span, n| {
            w.list(item, span, n, |s| {
                values::check_cidr(s).map(|()| s.to_string())
            })
        }) {
            net.allow_private = v;
        }
        if let Some((hosts, _, hosts_name)) = self.sub_table(t, &name, "hosts") {
            for (key, item) in hosts.iter() {
                let key_span = hosts.key(key).and_then(|k| k.span());
                let field = join(&hosts_name, key);
                let host = match HostPattern::parse(key) {
                    Ok(h) if h.port.is_none() && !h.host.starts_with("*.") => h.host,
                    Ok(_) => {
                        self.error(
                            key_span,
                            format!("{field}: the key is one host name, without port or *"),
                        );
                        continue;
                    }
                    Err(e) => {
                        self.error(key_span, format!("{field}: {e}"));
                        continue;
                    }
                };
                let span = item.span().or(key_span);
                let Some(v) = self.string(
                    item,
                    span.clone(),
                    &field,
                    "an address like \"127.0.0.1:8443\"",
                ) else {
                    continue;
                };
                match values::parse_host_address(&v) {
                    Ok(addr) => {
                        net.hosts.insert(host, addr);
                    }
                    Err(e) => self.error(span, format!("{field}: {e}")),
                }
            }
        }
        if let Some(v) = self.field(t, &name, "upstream_ca", |w, item, span, n| {
            w.list(item, span, n, |s| {
                if s.is_empty() || s.contains('\0') {
                    return Err(InvalidValue(format!(
                        "{s:?} is not a file path; give a PEM file with the extra root certificates"
                    )));
                }
                Ok(PathBuf::from(s))
            })
        }) {
            net.upstream_ca = v;
        }
        if let Some(v) = self.field(t, &name, "max_request_body", Self::size) {
            net.max_request_body = v;
        }
        net.requests_per_minute = self.field(t, &name, "requests_per_minute", Self::rate);
        net
    }

    /// A rate: a whole number of requests per minute, at least 1 and at most 1,000,000.
    fn rate(&mut self, item: &Item, span: Span, name: &str) -> Option<u32> {
        let n = self.positive_integer(item, span.clone(), name)?;
        match u32::try_from(n) {
            Ok(n) if n <= 1_000_000 => Some(n),
            _ => {
                self.error(
                    span,
                    format!("{name} must be at most 1000000 requests per minute"),
                );
                None
            }
        }
    }

    fn secret(&mut self, t: &dyn TableLike, span: Span, name: &str) -> Option<Secret> {
        self.check_keys(t, &format!("[{name}]"), SECRET_KEYS);
        let from = self.field(t, name, "from", |w, item, span, n| {
            let s = w.string(item, span.clone(), n, "a string like \"env:NAME\"")?;
            match parse_secret_source(&s) {
                Ok(src) => Some(src),
                Err(e) => {
                    w.error(span, format!("{n}: {e}"));
                    None
                }
            }
        });
        let hosts = self.field(t, name, "hosts", |w, item, span, n| {
            let hosts = w.list(item, span.clone(), n, HostPattern::parse)?;
            if item.as_array().is_some_and(|a| a.is_empty()) {
                w.error(
                    span,
                    format!(
                        "{n} is empty, so the secret could never be sent anywhere; list the \
                         hosts that may receive it, e.g. [\"api.github.com\"]"
                    ),
                );
                return None;
            }
            Some(hosts)
        });
        let inject = self.field(t, name, "inject", |w, item, span, n| {
            let inject = w.list(item, span.clone(), n, parse_injection)?;
            if item.as_array().is_some_and(|a| a.is_empty()) {
                w.error(
                    span,
                    format!(
                        "{n} is empty; say where the gateway may put the secret, e.g. \
                         [\"header:authorization\"]"
                    ),
                );
                return None;
            }
            Some(inject)
        });
        let placeholder = self.field(t, name, "placeholder", |w, item, span, n| {
            let p = w.string(item, span.clone(), n, "a string")?;
            let ok_chars = p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !(16..=128).contains(&p.len()) || !ok_chars {
                w.error(
                    span,
                    format!(
                        "{n} must be 16 to 128 characters of letters, digits, -, _ and . so that \
                         it cannot appear in a request by accident and needs no escaping; remove \
                         it to get a generated one"
                    ),
                );
                return None;
            }
            Some(p)
        });
        let ttl = self.field(t, name, "ttl", Self::duration);
        for (key, example) in [
            ("from", "from = \"env:GITHUB_TOKEN\""),
            ("hosts", "hosts = [\"api.github.com\"]"),
            ("inject", "inject = [\"header:authorization\"]"),
        ] {
            if entry(t, key).is_none() {
                self.error(
                    span.clone(),
                    format!("[{name}] needs `{key}`, e.g. {example}"),
                );
            }
        }
        let from = from?;
        if ttl.is_some() && !matches!(from, SecretSource::Command(_)) {
            self.error(
                entry(t, "ttl").and_then(|(_, s)| s),
                format!(
                    "{name}.ttl only applies to secrets read with command:; remove it (env: and \
                     file: secrets are read once per session)"
                ),
            );
        }
        Some(Secret {
            from,
            hosts: hosts?,
            inject: inject?,
            placeholder,
            ttl,
        })
    }

    fn rule(&mut self, t: &dyn TableLike, span: Span) -> Option<Rule> {
        let name = "rule";
        self.check_keys(t, "[[rule]]", RULE_KEYS);
        let host = self.field(t, name, "host", |w, item, span, n| {
            let s = w.string(
                item,
                span.clone(),
                n,
                "a host pattern like \"api.github.com\"",
            )?;
            match HostPattern::parse(&s) {
                Ok(h) => Some(h),
                Err(e) => {
                    w.error(span, format!("{n}: {e}"));
                    None
                }
            }
        });
        let methods = self.field(t, name, "methods", |w, item, span, n| {
            w.list(item, span, n, |m| {
                let upper = m.to_ascii_uppercase();
                if HTTP_METHODS.contains(&upper.as_str()) {
                    Ok(upper)
                } else {
                    Err(InvalidValue(format!(
                        "{m:?} is not an HTTP method; use {}, or leave out `methods` for all",
                        HTTP_METHODS.join(", ")
                    )))
                }
            })
        });
        let path = self.field(t, name, "path", |w, item, span, n| {
            let p = w.string(item, span.clone(), n, "a URL path like \"/repos/\"")?;
            if !p.starts_with('/')
                || p.contains(|c: char| c.is_whitespace() || c == '?' || c == '#')
            {
                w.error(
                    span,
                    format!(
                        "{n} must be a URL path starting with / and without spaces, ? or #, \
                         like \"/repos/\" or \"/repos/*/pulls\", not {p:?}"
                    ),
                );
                return None;
            }
            Some(p)
        });
        let action = self.field(t, name, "action", |w, item, span, n| {
            match w
                .string(item, span.clone(), n, "\"allow\", \"deny\" or \"ask\"")?
                .as_str()
            {
                "allow" => Some(RuleAction::Allow),
                "deny" => Some(RuleAction::Deny),
                "ask" => Some(RuleAction::Ask),
                other => {
                    w.error(
                        span,
                        format!("{n} must be \"allow\", \"deny\" or \"ask\", not {other:?}"),
                    );
                    None
                }
            }
        });
        for (key, example) in [
            ("host", "host = \"api.github.com\""),
            ("action", "action = \"deny\""),
        ] {
            if entry(t, key).is_none() {
                self.error(
                    span.clone(),
                    format!("[[rule]] needs `{key}`, e.g. {example}"),
                );
            }
        }
        let max_body = self.field(t, name, "max_body", Self::size);
        let requests_per_minute = self.field(t, name, "requests_per_minute", Self::rate);
        Some(Rule {
            host: host?,
            methods: methods.unwrap_or_default(),
            path,
            action: action?,
            max_body,
            requests_per_minute,
        })
    }

    /// Checks that involve more than one value.
    fn cross_checks(&mut self, root: &dyn TableLike, policy: &Policy, mount_spans: &[Span]) {
        let secrets_table = root.get("secrets").and_then(Item::as_table_like);
        let secret_span = |name: &str| -> Span {
            secrets_table
                .and_then(|t| t.key(name))
                .and_then(|k| k.span())
        };
        let env_spans = string_spans(root, &["sandbox", "env"]);
        for name in policy.secrets.keys() {
            if let Some(span) = env_spans.get(name.as_str()) {
                self.error(
                    span.clone(),
                    format!(
                        "sandbox.env passes the host's {name} into the sandbox, but {name} is a \
                         secret whose value the sandbox must only see as a placeholder; remove it \
                         from sandbox.env"
                    ),
                );
            }
            if policy.sandbox.set_env.contains_key(name) {
                let span = root
                    .get("sandbox")
                    .and_then(Item::as_table_like)
                    .and_then(|t| t.get("set_env"))
                    .and_then(Item::as_table_like)
                    .and_then(|t| t.key(name))
                    .and_then(|k| k.span());
                self.error(
                    span,
                    format!(
                        "sandbox.set_env sets {name}, which is also a secret's name; the sandbox \
                         variable {name} holds the secret's placeholder, so rename one of them"
                    ),
                );
            }
        }

        let mut placeholders: HashMap<&str, &str> = HashMap::new();
        for (name, secret) in &policy.secrets {
            if let Some(p) = &secret.placeholder
                && let Some(first) = placeholders.insert(p, name)
            {
                self.error(
                    secret_span(name),
                    format!(
                        "secrets {first} and {name} have the same placeholder; the gateway \
                         could not tell which value to use"
                    ),
                );
            }
        }

        let mut targets: BTreeSet<&Path> = BTreeSet::new();
        for (m, span) in policy.mounts.iter().zip(mount_spans) {
            if !targets.insert(m.target_path()) {
                self.error(
                    span.clone(),
                    format!(
                        "another mount already has the target {}; each sandbox path can be \
                         mounted once",
                        m.target_path().display()
                    ),
                );
            }
        }
    }
}

/// Strings at `path` (a chain of table keys ending in an array) by value, with positions.
fn string_spans<'t>(root: &'t dyn TableLike, path: &[&str]) -> HashMap<&'t str, Span> {
    let mut out = HashMap::new();
    let Some((last, tables)) = path.split_last() else {
        return out;
    };
    let mut t = root;
    for key in tables {
        match t.get(key).and_then(Item::as_table_like) {
            Some(next) => t = next,
            None => return out,
        }
    }
    if let Some(a) = t.get(last).and_then(Item::as_array) {
        for v in a.iter() {
            if let Some(s) = v.as_str() {
                out.entry(s).or_insert(v.span());
            }
        }
    }
    out
}

/// Parses `env:NAME`, `file:PATH` or `command:CMD`.
pub fn parse_secret_source(s: &str) -> Result<SecretSource, InvalidValue> {
    if let Some(name) = s.strip_prefix("env:") {
        if values::is_env_name(name) {
            return Ok(SecretSource::Env(name.to_string()));
        }
        return Err(InvalidValue(format!(
            "{s:?}: after env: write the name of an environment variable, like env:GITHUB_TOKEN"
        )));
    }
    if let Some(path) = s.strip_prefix("file:") {
        if (path.starts_with('/') || path.starts_with("~/")) && !path.contains('\0') {
            return Ok(SecretSource::File(PathBuf::from(path)));
        }
        return Err(InvalidValue(format!(
            "{s:?}: after file: write an absolute path or one starting with ~/, like file:~/.config/gh/token"
        )));
    }
    if let Some(cmd) = s.strip_prefix("command:") {
        if !cmd.trim().is_empty() && !cmd.contains('\0') {
            return Ok(SecretSource::Command(cmd.to_string()));
        }
        return Err(InvalidValue(format!(
            "{s:?}: after command: write the shell command that prints the secret, like command:gh auth token"
        )));
    }
    Err(InvalidValue(format!(
        "{s:?} must start with env:, file: or command:, as in \"env:GITHUB_TOKEN\""
    )))
}

/// Parses `header:NAME`, `query:NAME` or `basic`.
pub fn parse_injection(s: &str) -> Result<Injection, InvalidValue> {
    if s == "basic" {
        return Ok(Injection::Basic);
    }
    if let Some(h) = s.strip_prefix("header:") {
        if !values::is_header_name(h) {
            return Err(InvalidValue(format!(
                "{s:?}: after header: write a header name, like header:authorization"
            )));
        }
        let h = h.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&h.as_str()) {
            return Err(InvalidValue(format!(
                "{s:?}: the {h} header frames or routes the request and cannot carry a secret"
            )));
        }
        return Ok(Injection::Header(h));
    }
    if let Some(q) = s.strip_prefix("query:") {
        if !q.is_empty()
            && q.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        {
            return Ok(Injection::Query(q.to_string()));
        }
        return Err(InvalidValue(format!(
            "{s:?}: after query: write a parameter name of letters, digits, -, ., _ or ~, like query:api_key"
        )));
    }
    Err(InvalidValue(format!(
        "{s:?} must be header:NAME, query:NAME or basic, as in \"header:authorization\""
    )))
}
