//! The policy as plain data: what a sandbox may see, use and reach.
//!
//! Values here are already validated; the only way to get them from text is
//! [`Policy::parse`](crate::Policy::parse). They serialize (for `--json`) with
//! the same key names as the TOML file; durations serialize as whole seconds,
//! sizes as bytes, host patterns, secret sources and injections as the strings
//! the file uses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::values::HostPattern;

/// A whole policy file.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Policy {
    /// `[sandbox]`: the isolation backend and resource limits.
    pub sandbox: Sandbox,
    /// `[workspace]`: the project directory and which files in it are hidden or read-only.
    pub workspace: Workspace,
    /// `[[mount]]`: extra host paths visible in the sandbox.
    #[serde(rename = "mount")]
    pub mounts: Vec<Mount>,
    /// `[network]`: which hosts the sandbox may reach.
    pub network: Network,
    /// `[secrets.NAME]`: credentials the sandbox sees only as placeholders.
    pub secrets: BTreeMap<String, Secret>,
    /// `[[rule]]`: per-request rules for the HTTP gateway, in file order.
    #[serde(rename = "rule")]
    pub rules: Vec<Rule>,
    /// `[monitor]`: anomaly rules evaluated on the session's events as they happen.
    pub monitor: Monitor,
}

/// How the sandbox is isolated from the host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Linux namespaces, seccomp and Landlock on the host kernel.
    #[default]
    Native,
    /// gVisor (`runsc`): a user-space kernel between the agent and the host.
    Gvisor,
    /// A lightweight virtual machine with its own kernel.
    Microvm,
    /// A WebAssembly runtime; only for agents and tools built for WASI.
    Wasm,
}

impl BackendKind {
    /// The policy spelling: `"native"`, `"gvisor"`, `"microvm"` or `"wasm"`.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Native => "native",
            BackendKind::Gvisor => "gvisor",
            BackendKind::Microvm => "microvm",
            BackendKind::Wasm => "wasm",
        }
    }

    /// Every backend.
    pub const ALL: [BackendKind; 4] = [
        BackendKind::Native,
        BackendKind::Gvisor,
        BackendKind::Microvm,
        BackendKind::Wasm,
    ];
}

/// Default hostname inside the sandbox.
pub const DEFAULT_HOSTNAME: &str = "cordon";

/// `[sandbox]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sandbox {
    /// Isolation backend.
    pub backend: BackendKind,
    /// Wall-clock limit for the whole session; `None` for no limit.
    #[serde(serialize_with = "ser_opt_secs")]
    pub timeout: Option<Duration>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// CPU limit in cores (fractions allowed), greater than 0 and at most 1024.
    pub cpus: Option<f64>,
    /// Maximum number of processes and threads, at least 1.
    pub pids: Option<u64>,
    /// Limit on bytes the sandbox may write to its workspace and scratch space.
    pub disk_quota: Option<u64>,
    /// Limit on bytes of stdout plus stderr kept from the agent.
    pub output_limit: Option<u64>,
    /// Host environment variables passed through by name; a trailing `*`
    /// matches a prefix (`LC_*`). Everything else is dropped.
    pub env: Vec<String>,
    /// Variables set to fixed values inside the sandbox.
    pub set_env: BTreeMap<String, String>,
    /// Hostname inside the sandbox.
    pub hostname: String,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            backend: BackendKind::Native,
            timeout: None,
            memory: None,
            cpus: None,
            pids: None,
            disk_quota: None,
            output_limit: None,
            env: Vec::new(),
            set_env: BTreeMap::new(),
            hostname: DEFAULT_HOSTNAME.to_string(),
        }
    }
}

/// Files hidden from the agent unless the policy says otherwise: dotenv files
/// at any depth (`services/api/.env` as much as `.env`).
pub const DEFAULT_HIDDEN: &[&str] = &["**/.env", "**/.env.*"];

/// Files the agent may read but not change unless the policy says otherwise:
/// ones that run code on the host later (git hooks and config, shell startup
/// files, direnv).
pub const DEFAULT_READ_ONLY: &[&str] = &[
    ".git/hooks",
    ".git/config",
    ".bashrc",
    ".bash_profile",
    ".profile",
    ".zshrc",
    ".zprofile",
    ".envrc",
];

/// `[workspace]`: the project the agent works on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Workspace {
    /// Project directory as written in the policy; see [`Workspace::resolve_path`].
    pub path: Option<PathBuf>,
    /// Glob patterns, relative to the workspace root, that the agent cannot
    /// see; `**` is any number of directories.
    pub hidden: Vec<String>,
    /// Glob patterns, relative to the workspace root, that the agent cannot change.
    pub read_only: Vec<String>,
    /// Patterns taken out of `hidden` and `read_only`, to lift a default
    /// without restating the rest of the list. `P` also takes out `**/P`, so
    /// `.env` lifts the default `**/.env`.
    pub writable: Vec<String>,
}

impl Default for Workspace {
    fn default() -> Self {
        Workspace {
            path: None,
            hidden: DEFAULT_HIDDEN.iter().map(|s| s.to_string()).collect(),
            read_only: DEFAULT_READ_ONLY.iter().map(|s| s.to_string()).collect(),
            writable: Vec::new(),
        }
    }
}

impl Workspace {
    /// The project directory: `path` joined to `policy_dir` (the directory
    /// holding the policy file) when relative; `None` when the policy names no
    /// path and the caller should use its own default. No file system access.
    pub fn resolve_path(&self, policy_dir: &Path) -> Option<PathBuf> {
        self.path.as_ref().map(|p| policy_dir.join(p))
    }

    /// `hidden` without the patterns listed in `writable`.
    pub fn effective_hidden(&self) -> Vec<&str> {
        self.without_writable(&self.hidden)
    }

    /// `read_only` without the patterns listed in `writable`.
    pub fn effective_read_only(&self) -> Vec<&str> {
        self.without_writable(&self.read_only)
    }

    fn without_writable<'a>(&'a self, list: &'a [String]) -> Vec<&'a str> {
        let lifted = |p: &str| {
            self.writable
                .iter()
                .any(|w| w == p || p.strip_prefix("**/") == Some(w.as_str()))
        };
        list.iter()
            .map(String::as_str)
            .filter(|p| !lifted(p))
            .collect()
    }
}

/// `[[mount]]`: a host path made visible inside the sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// Absolute host path.
    pub source: PathBuf,
    /// Absolute path inside the sandbox; `None` means the same as `source`.
    pub target: Option<PathBuf>,
    /// Whether the sandbox may write through this mount.
    pub writable: bool,
    /// When true a missing `source` is skipped; otherwise starting the sandbox fails.
    pub optional: bool,
}

impl Mount {
    /// Where the mount appears inside the sandbox.
    pub fn target_path(&self) -> &Path {
        self.target.as_deref().unwrap_or(&self.source)
    }
}

/// What to do with a connection no rule covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnknown {
    /// Refuse it.
    #[default]
    Deny,
    /// Ask the user, and refuse if nobody answers within `ask_timeout`.
    Ask,
}

/// Default time to wait for an answer when `on_unknown = "ask"`.
pub const DEFAULT_ASK_TIMEOUT: Duration = Duration::from_secs(60);

/// `[network]`. With the defaults the sandbox reaches nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Network {
    /// Hosts the sandbox may connect to (through the gateway).
    pub allow: Vec<HostPattern>,
    /// Hosts refused even when `allow` covers them.
    pub deny: Vec<HostPattern>,
    /// What happens to a host neither list covers.
    pub on_unknown: OnUnknown,
    /// How long to wait for an answer when asking.
    #[serde(serialize_with = "ser_secs")]
    pub ask_timeout: Duration,
    /// `host:port` pairs forwarded as raw TCP, without HTTP inspection or
    /// secret injection (databases, SSH).
    pub passthrough: Vec<HostPattern>,
    /// Private address ranges (CIDR) the sandbox may reach; private, loopback
    /// and link-local addresses are refused otherwise, even for allowed names.
    pub allow_private: Vec<String>,
    /// `[network.hosts]`: fixed addresses for names (tests, private
    /// deployments); the gateway dials these instead of resolving the name.
    pub hosts: BTreeMap<String, SocketAddrOrIp>,
    /// PEM files with extra root certificates trusted for upstream TLS, besides
    /// the host's roots. Relative paths are relative to the policy file.
    pub upstream_ca: Vec<PathBuf>,
    /// Largest request body the gateway forwards, in bytes.
    pub max_request_body: u64,
    /// Requests per minute allowed to each host; `None` for no limit.
    pub requests_per_minute: Option<u32>,
}

/// Default for `[network] max_request_body`: 64 MiB.
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 64 << 20;

/// An address in `[network.hosts]`: an IP with an optional port (the
/// connection's own port when absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SocketAddrOrIp {
    pub ip: std::net::IpAddr,
    pub port: Option<u16>,
}

impl std::fmt::Display for SocketAddrOrIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.ip, self.port) {
            (ip, None) => write!(f, "{ip}"),
            (std::net::IpAddr::V6(ip), Some(p)) => write!(f, "[{ip}]:{p}"),
            (ip, Some(p)) => write!(f, "{ip}:{p}"),
        }
    }
}

impl Default for Network {
    fn default() -> Self {
        Network {
            allow: Vec::new(),
            deny: Vec::new(),
            on_unknown: OnUnknown::Deny,
            ask_timeout: DEFAULT_ASK_TIMEOUT,
            passthrough: Vec::new(),
            allow_private: Vec::new(),
            hosts: BTreeMap::new(),
            upstream_ca: Vec::new(),
            max_request_body: DEFAULT_MAX_REQUEST_BODY,
            requests_per_minute: None,
        }
    }
}

/// `[secrets.NAME]`: a credential the agent never sees.
///
/// Inside the sandbox the variable `NAME` holds a placeholder; the gateway
/// swaps the placeholder for the real value only in requests to `hosts`, and
/// only where `inject` says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Secret {
    /// Where the real value comes from.
    pub from: SecretSource,
    /// Hosts that may receive the real value; never empty.
    pub hosts: Vec<HostPattern>,
    /// Where in a request the value may be placed; never empty.
    pub inject: Vec<Injection>,
    /// A fixed placeholder; `None` for [`Secret::placeholder_for`].
    pub placeholder: Option<String>,
    /// How long a `command:` value is reused before the command runs again;
    /// `None` to run it once per session.
    #[serde(serialize_with = "ser_opt_secs")]
    pub ttl: Option<Duration>,
}

impl Secret {
    /// The default placeholder for secret `name`:
    /// `cordon-placeholder-NAME-` and 16 hex digits of
    /// SHA-256(`"cordon-placeholder-v1\0"`, length of `nonce` as 8 bytes
    /// little-endian, `nonce`, `name`).
    ///
    /// The session supplies a fresh random `nonce`, so placeholders differ
    /// between sessions and cannot be guessed in advance, while the same
    /// nonce always gives the same placeholder.
    pub fn placeholder_for(name: &str, nonce: &[u8]) -> String {
        let mut h = Sha256::new();
        h.update(b"cordon-placeholder-v1\0");
        h.update((nonce.len() as u64).to_le_bytes());
        h.update(nonce);
        h.update(name.as_bytes());
        let digest = h.finalize();
        format!("cordon-placeholder-{name}-{}", hex(&digest[..8]))
    }

    /// The placeholder to use for this secret: the configured one, else
    /// [`Secret::placeholder_for`].
    pub fn placeholder_or_default(&self, name: &str, nonce: &[u8]) -> String {
        match &self.placeholder {
            Some(p) => p.clone(),
            None => Secret::placeholder_for(name, nonce),
        }
    }
}

/// Where a secret's real value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// `env:NAME`: a variable in cordon's own environment.
    Env(String),
    /// `file:PATH`: the contents of a file (absolute, or `~/` for the user's
    /// home directory), with one trailing newline removed.
    File(PathBuf),
    /// `command:CMD`: the standard output of `sh -c CMD`, with one trailing
    /// newline removed.
    Command(String),
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Env(n) => write!(f, "env:{n}"),
            SecretSource::File(p) => write!(f, "file:{}", p.display()),
            SecretSource::Command(c) => write!(f, "command:{c}"),
        }
    }
}

impl Serialize for SecretSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Where the gateway may put a secret's value in a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Injection {
    /// `header:NAME`: in this header (name in lowercase).
    Header(String),
    /// `query:NAME`: in this URL query parameter.
    Query(String),
    /// `basic`: in an `Authorization: Basic` header; the secret is `user:password`.
    Basic,
}

impl std::fmt::Display for Injection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Injection::Header(h) => write!(f, "header:{h}"),
            Injection::Query(q) => write!(f, "query:{q}"),
            Injection::Basic => f.write_str("basic"),
        }
    }
}

impl Serialize for Injection {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What a request rule does with a matching request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    /// Let it through.
    Allow,
    /// Refuse it.
    Deny,
    /// Ask the user.
    Ask,
}

/// HTTP methods a rule may name.
pub const HTTP_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
];

/// `[[rule]]`: a decision for HTTP requests, checked in file order by the gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// Hosts the rule applies to.
    pub host: HostPattern,
    /// Upper-case methods the rule applies to; empty for every method.
    pub methods: Vec<String>,
    /// Path the rule applies to, starting with `/`: a prefix, or a glob when
    /// it contains `*` (`*` within one segment, `**` across segments).
    /// `None` for every path.
    pub path: Option<String>,
    /// What to do.
    pub action: RuleAction,
    /// Largest request body for matching requests, in bytes; `None` for the
    /// network-wide `max_request_body`.
    pub max_body: Option<u64>,
    /// Requests per minute allowed to each host through this rule; `None` for
    /// the network-wide limit.
    pub requests_per_minute: Option<u32>,
}

/// `[monitor]`: which events raise an anomaly, and who hears about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Monitor {
    /// Whether the built-in rules ([`Monitor::default_rules`]) apply.
    pub defaults: bool,
    /// Names of built-in rules switched off.
    pub disable: Vec<String>,
    /// Command (argv) run on the host for every `alert` and `kill`, with the
    /// anomaly as JSON on its standard input; empty for none.
    pub hook: Vec<String>,
    /// `[[monitor.rule]]`, in file order. A rule named like a built-in one
    /// replaces it.
    #[serde(rename = "rule")]
    pub rules: Vec<MonitorRule>,
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor {
            defaults: true,
            disable: Vec::new(),
            hook: Vec::new(),
            rules: Vec::new(),
        }
    }
}

impl Monitor {
    /// The rules in force: the built-in ones (unless `defaults = false`),
    /// without the disabled ones, each replaced by a policy rule of the same
    /// name, then the policy's other rules in file order.
    pub fn effective_rules(&self) -> Vec<MonitorRule> {
        let mut out: Vec<MonitorRule> = if self.defaults {
            Monitor::default_rules()
                .into_iter()
                .filter(|r| !self.disable.contains(&r.name))
                .collect()
        } else {
            Vec::new()
        };
        for rule in &self.rules {
            match out.iter_mut().find(|r| r.name == rule.name) {
                Some(slot) => *slot = rule.clone(),
                None => out.push(rule.clone()),
            }
        }
        out
    }

    /// The built-in rule set; see `docs/monitor.md`.
    pub fn default_rules() -> Vec<MonitorRule> {
        crate::monitor::default_rules()
    }
}

/// What a monitor rule does when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MonitorAction {
    /// Record an `anomaly` event.
    Log,
    /// Record it, highlight it in the live view and run the hook.
    Alert,
    /// Record it, run the hook and stop the session.
    Kill,
}

impl MonitorAction {
    /// The policy spelling.
    pub fn name(self) -> &'static str {
        match self {
            MonitorAction::Log => "log",
            MonitorAction::Alert => "alert",
            MonitorAction::Kill => "kill",
        }
    }
}

/// `[[monitor.rule]]`: a pattern over session events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MonitorRule {
    /// Unique name, shown in the anomaly and the summary.
    pub name: String,
    /// Event kinds the rule looks at: an exact kind (`proc.exec`), a prefix
    /// (`net.*`) or `*`; the rule applies when any entry matches.
    pub kind: Vec<String>,
    /// Field conditions, all of which must hold: a dotted path into the
    /// event's data → a regular expression (the `regex` crate's syntax,
    /// unanchored). A string field is matched as is, a number or boolean as
    /// its JSON text, an array when any element matches; a missing field
    /// never matches.
    #[serde(rename = "where")]
    pub conditions: BTreeMap<String, String>,
    /// Fire only once this many matching events happened within `window`.
    pub count: Option<u32>,
    /// The sliding window `count` is measured over.
    #[serde(serialize_with = "ser_opt_secs")]
    pub window: Option<Duration>,
    /// What to do.
    pub action: MonitorAction,
    /// Text for the anomaly; `None` for one generated from the rule.
    pub message: Option<String>,
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn ser_secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

fn ser_opt_secs<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs()),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_is_deterministic_per_nonce_and_name() {
        let a = Secret::placeholder_for("GITHUB_TOKEN", b"nonce-1");
        assert_eq!(a, Secret::placeholder_for("GITHUB_TOKEN", b"nonce-1"));
        assert_ne!(a, Secret::placeholder_for("GITHUB_TOKEN", b"nonce-2"));
        assert_ne!(a, Secret::placeholder_for("NPM_TOKEN", b"nonce-1"));
        let suffix = a
            .strip_prefix("cordon-placeholder-GITHUB_TOKEN-")
            .expect("prefix");
        assert_eq!(suffix.len(), 16);
        assert!(
            suffix
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }

    #[test]
    fn writable_lifts_defaults() {
        let ws = Workspace {
            writable: vec![".envrc".into(), ".env".into()],
            ..Workspace::default()
        };
        // `.env` lifts `**/.env`, as the user who knows the name expects.
        assert_eq!(ws.effective_hidden(), vec!["**/.env.*"]);
        assert!(!ws.effective_read_only().contains(&".envrc"));
        assert!(ws.effective_read_only().contains(&".git/hooks"));
        let ws = Workspace {
            writable: vec!["**/.env.*".into()],
            ..Workspace::default()
        };
        assert_eq!(ws.effective_hidden(), vec!["**/.env"]);
        // Only a whole leading `**/` is implied, never a suffix of a longer pattern.
        let ws = Workspace {
            hidden: vec!["config/.env".into(), "**/x/.env".into()],
            writable: vec![".env".into()],
            ..Workspace::default()
        };
        assert_eq!(ws.effective_hidden(), vec!["config/.env", "**/x/.env"]);
    }

    #[test]
    fn workspace_path_resolves_against_policy_dir() {
        let mut ws = Workspace::default();
        assert_eq!(ws.resolve_path(Path::new("/p")), None);
        ws.path = Some("proj".into());
        assert_eq!(ws.resolve_path(Path::new("/p")), Some("/p/proj".into()));
        ws.path = Some("/abs".into());
        assert_eq!(ws.resolve_path(Path::new("/p")), Some("/abs".into()));
    }
}
