//! The runtime monitor: anomaly rules evaluated on a session's events as they
//! are written.
//!
//! [`Monitor`] is the pure part: built from the policy's `[monitor]` (the
//! built-in rules plus the policy's own), it looks at one event at a time
//! ([`Monitor::observe`]) and says which rules fire. Counting rules keep a
//! sliding window of at most `count` timestamps each, and every rule fires at
//! most [`FIRES_PER_WINDOW`] times per [`FIRE_WINDOW`] (the rest are counted
//! and reported with the next anomaly), so memory and log growth are bounded
//! whatever the agent does.
//!
//! [`Live`] is the side-effecting part the session's log sink drives: it runs
//! the policy's hook for `alert` and `kill` (spawned, never waited on in the
//! event path, bounded in time and number), and stops the sandbox for `kill`
//! through the backend's [`Control`] once the sandbox has one.
//!
//! It does not write events itself (the sink appends the `anomaly` events it
//! returns) and it never sees `anomaly` or `monitor.error` events, so a rule
//! cannot trigger itself.

use std::collections::VecDeque;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use cordon_policy::{MonitorAction, MonitorRule, compile_pattern, kind_matches};
use regex::Regex;
use serde_json::{Map, Value, json};

use crate::{Control, EventSink};

/// The kind of the events the monitor writes.
pub const ANOMALY: &str = cordon_events::kind::ANOMALY;
/// The kind of the events that report a hook that failed.
pub const MONITOR_ERROR: &str = "monitor.error";
/// A rule fires at most this many times per [`FIRE_WINDOW`].
pub const FIRES_PER_WINDOW: u32 = 10;
pub const FIRE_WINDOW: Duration = Duration::from_secs(60);
/// Array elements looked at per field.
const MAX_ELEMENTS: usize = 64;
/// Hooks running at once; an alert beyond this is reported, not run.
pub const MAX_HOOKS_RUNNING: usize = 4;
/// How long a hook may run before it is killed.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the monitor looks at events of `kind` at all.
pub fn evaluates(kind: &str) -> bool {
    kind != ANOMALY && kind != MONITOR_ERROR
}

/// A rule that fired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub rule: String,
    pub action: MonitorAction,
    pub message: String,
    /// How many earlier firings of this rule were not reported (rate limit).
    pub suppressed: u64,
}

struct Compiled {
    rule: MonitorRule,
    conditions: Vec<(Vec<String>, Regex)>,
}

#[derive(Default)]
struct RuleState {
    /// Times of matching events within the window (counting rules only).
    hits: VecDeque<Instant>,
    fire_window_start: Option<Instant>,
    fired_in_window: u32,
    suppressed: u64,
}

/// The rules in force and their counters.
pub struct Monitor {
    rules: Vec<Compiled>,
    state: Mutex<Vec<RuleState>>,
}

impl Monitor {
    /// Compiles the rules `[monitor]` puts in force. Patterns were checked when
    /// the policy was parsed; the error is for policies built in code.
    pub fn new(policy: &cordon_policy::Monitor) -> Result<Monitor, String> {
        Monitor::from_rules(policy.effective_rules())
    }

    pub fn from_rules(rules: Vec<MonitorRule>) -> Result<Monitor, String> {
        let mut compiled = Vec::with_capacity(rules.len());
        for rule in rules {
            let mut conditions = Vec::new();
            for (field, pattern) in &rule.conditions {
                let re = compile_pattern(pattern)
                    .map_err(|e| format!("monitor rule {}: where.{field}: {e}", rule.name))?;
                conditions.push((field.split('.').map(str::to_string).collect(), re));
            }
            compiled.push(Compiled { rule, conditions });
        }
        let state = compiled.iter().map(|_| RuleState::default()).collect();
        Ok(Monitor {
            rules: compiled,
            state: Mutex::new(state),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules that fire on this event, now.
    pub fn observe(&self, kind: &str, data: &Map<String, Value>) -> Vec<Verdict> {
        self.observe_at(Instant::now(), kind, data)
    }

    /// [`Monitor::observe`] at a given time (for tests of windows).
    pub fn observe_at(&self, now: Instant, kind: &str, data: &Map<String, Value>) -> Vec<Verdict> {
        let mut out = Vec::new();
        if !evaluates(kind) {
            return out;
        }
        let Ok(mut state) = self.state.lock() else {
            return out;
        };
        for (c, st) in self.rules.iter().zip(state.iter_mut()) {
            if !c.rule.kind.iter().any(|k| kind_matches(k, kind)) {
                continue;
            }
            if !c
                .conditions
                .iter()
                .all(|(path, re)| field_matches(data, path, re))
            {
                continue;
            }
            if let (Some(count), Some(window)) = (c.rule.count, c.rule.window) {
                while st
                    .hits
                    .front()
                    .is_some_and(|t| now.saturating_duration_since(*t) >= window)
                {
                    st.hits.pop_front();
                }
                st.hits.push_back(now);
                if st.hits.len() < count as usize {
                    continue;
                }
                // Fired: start counting afresh, so one burst is one anomaly.
                st.hits.clear();
            }
            match st.fire_window_start {
                Some(start) if now.saturating_duration_since(start) < FIRE_WINDOW => {}
                _ => {
                    st.fire_window_start = Some(now);
                    st.fired_in_window = 0;
                }
            }
            if st.fired_in_window >= FIRES_PER_WINDOW {
                st.suppressed += 1;
                continue;
            }
            st.fired_in_window += 1;
            out.push(Verdict {
                rule: c.rule.name.clone(),
                action: c.rule.action,
                message: c
                    .rule
                    .message
                    .clone()
                    .unwrap_or_else(|| match c.rule.count {
                        Some(n) => format!("rule {} matched {n} {kind} events", c.rule.name),
                        None => format!("rule {} matched a {kind} event", c.rule.name),
                    }),
                suppressed: std::mem::take(&mut st.suppressed),
            });
        }
        out
    }
}

/// Whether any value at `path` in `data` matches `re`.
fn field_matches(data: &Map<String, Value>, path: &[String], re: &Regex) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    data.get(first).is_some_and(|v| value_matches(v, rest, re))
}

fn value_matches(v: &Value, rest: &[String], re: &Regex) -> bool {
    match (v, rest.split_first()) {
        (Value::Array(items), _) => items
            .iter()
            .take(MAX_ELEMENTS)
            .any(|i| !i.is_array() && value_matches(i, rest, re)),
        (Value::Object(m), Some(_)) => field_matches(m, rest, re),
        (_, Some(_)) | (Value::Object(_), None) => false,
        (Value::String(s), None) => re.is_match(s),
        (Value::Null, None) => false,
        (other, None) => re.is_match(&other.to_string()),
    }
}

/// The `anomaly` event's data for a verdict on an event.
pub fn anomaly_data(
    v: &Verdict,
    kind: &str,
    seq: Option<u64>,
    data: &Map<String, Value>,
) -> Map<String, Value> {
    let mut event = Map::new();
    event.insert("kind".into(), kind.into());
    if let Some(seq) = seq {
        event.insert("seq".into(), seq.into());
    }
    event.insert("data".into(), summarize(&Value::Object(data.clone()), 0));
    let mut out = Map::new();
    out.insert("rule".into(), v.rule.clone().into());
    out.insert("action".into(), v.action.name().into());
    out.insert("message".into(), v.message.clone().into());
    out.insert("event".into(), Value::Object(event));
    if v.suppressed > 0 {
        out.insert("suppressed".into(), v.suppressed.into());
    }
    out
}

/// A bounded copy of an event's data: strings of at most 256 bytes, at most
/// 16 array elements and 32 keys, three levels deep.
fn summarize(v: &Value, depth: usize) -> Value {
    match v {
        Value::String(s) if s.len() > 256 => {
            let mut end = 256;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            Value::String(format!("{}…", &s[..end]))
        }
        Value::Array(a) if depth < 3 => {
            Value::Array(a.iter().take(16).map(|i| summarize(i, depth + 1)).collect())
        }
        Value::Object(m) if depth < 3 => Value::Object(
            m.iter()
                .take(32)
                .map(|(k, i)| (k.clone(), summarize(i, depth + 1)))
                .collect(),
        ),
        Value::Array(_) | Value::Object(_) => Value::String("…".into()),
        other => other.clone(),
    }
}

/// The monitor at work in a session: the engine plus its actions.
pub struct Live {
    pub engine: Monitor,
    hook: Vec<String>,
    session: String,
    control: OnceLock<Arc<dyn Control>>,
    kill_pending: AtomicBool,
    killed_by: Mutex<Option<String>>,
    hooks_running: Arc<AtomicUsize>,
    /// Where hook failures are reported (the session's sink; weak, because the
    /// sink owns this).
    report: OnceLock<Weak<dyn EventSink>>,
}

impl Live {
    pub fn new(engine: Monitor, hook: Vec<String>, session: &str) -> Live {
        Live {
            engine,
            hook,
            session: session.into(),
            control: OnceLock::new(),
            kill_pending: AtomicBool::new(false),
            killed_by: Mutex::new(None),
            hooks_running: Arc::new(AtomicUsize::new(0)),
            report: OnceLock::new(),
        }
    }

    /// Where hook failures go as `monitor.error` events.
    pub fn report_to(&self, sink: Weak<dyn EventSink>) {
        let _ = self.report.set(sink);
    }

    /// The sandbox started: `kill` verdicts can act now (and one that came
    /// during start-up acts at once).
    pub fn set_control(&self, control: Arc<dyn Control>) {
        let _ = self.control.set(control);
        if self.kill_pending.load(Ordering::SeqCst)
            && let Some(c) = self.control.get()
        {
            c.kill();
        }
    }

    /// Why the monitor stopped the session, if it did: "killed by monitor rule ...".
    pub fn killed_by(&self) -> Option<String> {
        self.killed_by.lock().ok().and_then(|g| g.clone())
    }

    /// Carries out a verdict whose anomaly event has been written.
    pub fn act(&self, v: &Verdict, anomaly: &Map<String, Value>) {
        if v.action == MonitorAction::Log {
            return;
        }
        self.run_hook(v, anomaly);
        if v.action == MonitorAction::Kill {
            if let Ok(mut k) = self.killed_by.lock() {
                k.get_or_insert_with(|| {
                    format!("killed by monitor rule {}: {}", v.rule, v.message)
                });
            }
            self.kill_pending.store(true, Ordering::SeqCst);
            if let Some(c) = self.control.get() {
                c.kill();
            }
        }
    }

    fn report(&self, error: String) {
        if let Some(sink) = self.report.get().and_then(Weak::upgrade) {
            let mut m = Map::new();
            m.insert("error".into(), error.into());
            sink.event(MONITOR_ERROR, m);
        }
    }

    fn run_hook(&self, v: &Verdict, anomaly: &Map<String, Value>) {
        let Some((program, args)) = self.hook.split_first() else {
            return;
        };
        if self.hooks_running.fetch_add(1, Ordering::SeqCst) >= MAX_HOOKS_RUNNING {
            self.hooks_running.fetch_sub(1, Ordering::SeqCst);
            self.report(format!(
                "monitor hook not run for rule {}: {MAX_HOOKS_RUNNING} hooks are still running",
                v.rule
            ));
            return;
        }
        let mut input = serde_json::to_vec(&json!({
            "session": self.session,
            "anomaly": anomaly,
        }))
        .unwrap_or_default();
        input.push(b'\n');
        let spawned = Command::new(program)
            .args(args)
            .env("CORDON_SESSION", &self.session)
            .env("CORDON_RULE", &v.rule)
            .env("CORDON_ACTION", v.action.name())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                self.hooks_running.fetch_sub(1, Ordering::SeqCst);
                self.report(format!("monitor hook {program} could not start: {e}"));
                return;
            }
        };
        let running = self.hooks_running.clone();
        let report = self.report.get().cloned();
        let program = program.clone();
        let rule = v.rule.clone();
        std::thread::spawn(move || {
            let outcome = (|| {
                if let Some(mut stdin) = child.stdin.take() {
                    // A hook that does not read its input must not hang us: the
                    // pipe holds 64 KiB, more than one anomaly.
                    let _ = stdin.write_all(&input);
                }
                let deadline = Instant::now() + HOOK_TIMEOUT;
                loop {
                    match child.try_wait() {
                        Ok(Some(status)) if status.success() => return None,
                        Ok(Some(status)) => {
                            return Some(format!(
                                "monitor hook {program} for rule {rule} failed: {status}"
                            ));
                        }
                        Ok(None) if Instant::now() >= deadline => {
                            let _ = child.kill();
                            let _ = child.wait();
                            return Some(format!(
                                "monitor hook {program} for rule {rule} ran longer than {}s and \
                                 was killed",
                                HOOK_TIMEOUT.as_secs()
                            ));
                        }
                        Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                        Err(e) => {
                            return Some(format!("monitor hook {program}: {e}"));
                        }
                    }
                }
            })();
            if let Some(error) = outcome
                && let Some(sink) = report.as_ref().and_then(Weak::upgrade)
            {
                let mut m = Map::new();
                m.insert("error".into(), error.into());
                sink.event(MONITOR_ERROR, m);
            }
            running.fetch_sub(1, Ordering::SeqCst);
        });
    }

    /// Waits (at most `limit`) for running hooks, so that their failures are
    /// logged before the session ends.
    pub fn finish(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.hooks_running.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn defaults() -> Monitor {
        Monitor::new(&cordon_policy::Monitor::default()).unwrap()
    }

    fn fired(m: &Monitor, kind: &str, d: Value) -> Vec<(String, MonitorAction)> {
        m.observe(kind, &data(d))
            .into_iter()
            .map(|v| (v.rule, v.action))
            .collect()
    }

    #[test]
    fn default_network_tools() {
        let m = defaults();
        for path in [
            "/usr/bin/curl",
            "/bin/nc",
            "wget",
            "/usr/bin/ssh",
            "/usr/bin/socat",
        ] {
            assert_eq!(
                fired(
                    &m,
                    "proc.exec",
                    json!({"pid": 3, "path": path, "argv": [path]})
                ),
                [("network-tools".to_string(), MonitorAction::Alert)],
                "{path}"
            );
        }
        for path in ["/usr/bin/curlx", "/usr/bin/sshd-keygen", "/bin/true"] {
            assert!(
                fired(&m, "proc.exec", json!({"path": path})).is_empty(),
                "{path}"
            );
        }
        assert!(fired(&m, "proc.exit", json!({"path": "/usr/bin/curl"})).is_empty());
    }

    #[test]
    fn default_credential_read() {
        let m = defaults();
        for path in [
            "/home/u/.ssh/id_ed25519",
            "/root/.aws/credentials",
            "/home/u/.netrc",
            "/etc/shadow",
            "/home/u/.docker/config.json",
            "/home/u/.kube/config",
            "/p/.git-credentials",
            "/p/certs/server-key.pem",
            "/p/tls/server.key",
            "/home/u/.gnupg/secring.gpg",
        ] {
            assert_eq!(
                fired(
                    &m,
                    "fs.open",
                    json!({"pid": 1, "path": path, "write": false})
                ),
                [("credential-read".to_string(), MonitorAction::Alert)],
                "{path}"
            );
        }
        // Public material: certificates and CA bundles are read all the time.
        for path in [
            "/etc/passwd",
            "/p/src/ssh.rs",
            "/p/pem.txt",
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/ssl/certs/sandboxing-egress-ca.pem",
            "/home/u/.ssh_config.txt",
            "/home/u/id_ed25519.pub",
        ] {
            assert!(
                fired(&m, "fs.open", json!({"path": path})).is_empty(),
                "{path}"
            );
        }
    }

    #[test]
    fn default_nxdomain_burst_needs_twenty_in_a_minute() {
        let m = defaults();
        let t0 = Instant::now();
        let dns = |i: u32, answer: &str| {
            data(json!({"name": format!("x{i}.evil.test"), "qtype": "A", "answer": answer}))
        };
        // 19 within the minute: nothing; allowed answers never count.
        for i in 0..19 {
            assert!(
                m.observe_at(
                    t0 + Duration::from_secs(i.into()),
                    "net.dns",
                    &dns(i, "nxdomain")
                )
                .is_empty()
            );
            assert!(
                m.observe_at(t0, "net.dns", &dns(i, "198.18.0.5"))
                    .is_empty()
            );
        }
        // The 20th, 70 s after the first: the first ten have left the window.
        assert!(
            m.observe_at(
                t0 + Duration::from_secs(70),
                "net.dns",
                &dns(20, "nxdomain")
            )
            .is_empty()
        );
        let mut t = t0 + Duration::from_secs(71);
        let mut fired = Vec::new();
        for i in 0..20 {
            fired.extend(m.observe_at(t, "net.dns", &dns(100 + i, "nxdomain")));
            t += Duration::from_millis(10);
        }
        assert_eq!(fired.len(), 1, "{fired:?}");
        assert_eq!(fired[0].rule, "dns-nxdomain-burst");
        assert_eq!(fired[0].action, MonitorAction::Alert);
    }

    #[test]
    fn default_git_hooks_write_kills() {
        let m = defaults();
        assert_eq!(
            fired(
                &m,
                "fs.open",
                json!({"pid": 9, "path": "/p/.git/hooks/pre-commit", "write": true})
            ),
            [("git-hooks-write".to_string(), MonitorAction::Kill)]
        );
        assert!(
            fired(
                &m,
                "fs.open",
                json!({"path": "/p/.git/hooks/pre-commit", "write": false})
            )
            .is_empty()
        );
        assert!(
            fired(
                &m,
                "fs.open",
                json!({"path": "/p/.git/hooksmith", "write": true})
            )
            .is_empty()
        );
    }

    #[test]
    fn default_secret_to_unbound_host_kills() {
        let m = defaults();
        assert_eq!(
            fired(
                &m,
                "secret.blocked",
                json!({"name": "GITHUB_TOKEN", "host": "evil.test", "where": "header"})
            ),
            [("secret-to-unbound-host".to_string(), MonitorAction::Kill)]
        );
        assert!(fired(&m, "secret.injected", json!({"name": "GITHUB_TOKEN"})).is_empty());
    }

    #[test]
    fn default_privilege_syscalls() {
        let m = defaults();
        for (kind, sc) in [
            ("syscall.denied", "setns"),
            ("syscall.denied", "unshare"),
            ("syscall.denied", "mount"),
            ("syscall.denied", "ptrace"),
            ("syscall.denied", "bpf"),
            ("syscall.denied", "init_module"),
            ("proc.privilege", "setuid"),
            ("proc.privilege", "capset"),
        ] {
            assert_eq!(
                fired(&m, kind, json!({"pid": 4, "syscall": sc})),
                [("privilege-syscall".to_string(), MonitorAction::Alert)],
                "{kind} {sc}"
            );
        }
        assert!(fired(&m, "syscall.denied", json!({"syscall": "ioctl"})).is_empty());
        assert!(fired(&m, "syscall.denied", json!({"syscall": "mountx"})).is_empty());
    }

    #[test]
    fn policy_can_turn_defaults_off_or_override_them() {
        let p = cordon_policy::Policy::parse(
            "[monitor]\ndisable = [\"network-tools\"]\n[[monitor.rule]]\nname = \"git-hooks-write\"\nkind = \"fs.open\"\nwhere = { path = \"\\\\.git/hooks/\" }\naction = \"log\"\n",
        )
        .unwrap();
        let m = Monitor::new(&p.monitor).unwrap();
        assert!(fired(&m, "proc.exec", json!({"path": "/usr/bin/curl"})).is_empty());
        assert_eq!(
            fired(
                &m,
                "fs.open",
                json!({"path": "/p/.git/hooks/x", "write": true})
            ),
            [("git-hooks-write".to_string(), MonitorAction::Log)]
        );
        let off = cordon_policy::Policy::parse("[monitor]\ndefaults = false\n").unwrap();
        assert!(Monitor::new(&off.monitor).unwrap().is_empty());
    }

    #[test]
    fn fields_arrays_nesting_and_types() {
        let rules = vec![MonitorRule {
            name: "r".into(),
            kind: vec!["x.*".into()],
            conditions: [
                ("argv".to_string(), "^--upload$".to_string()),
                ("req.port".to_string(), "^22$".to_string()),
                ("ok".to_string(), "^false$".to_string()),
            ]
            .into_iter()
            .collect(),
            count: None,
            window: None,
            action: MonitorAction::Log,
            message: None,
        }];
        let m = Monitor::from_rules(rules).unwrap();
        let hit = json!({"argv": ["a", "--upload"], "req": {"port": 22}, "ok": false});
        assert_eq!(fired(&m, "x.y", hit.clone()).len(), 1);
        assert!(fired(&m, "y.x", hit).is_empty(), "kind prefix");
        assert!(
            fired(
                &m,
                "x.y",
                json!({"argv": ["--uploadx"], "req": {"port": 22}, "ok": false})
            )
            .is_empty()
        );
        assert!(
            fired(
                &m,
                "x.y",
                json!({"argv": ["--upload"], "req": {"port": 22}})
            )
            .is_empty(),
            "missing field"
        );
        assert!(
            fired(
                &m,
                "x.y",
                json!({"argv": "--upload", "req": [{"port": 22}], "ok": false})
            )
            .len()
                == 1,
            "arrays of objects and scalars"
        );
        let v = &m.observe(
            "x.y",
            &data(json!({"argv": ["--upload"], "req": {"port": 22}, "ok": false})),
        )[0];
        assert_eq!(v.message, "rule r matched a x.y event");
    }

    #[test]
    fn anomalies_are_never_evaluated_and_firing_is_rate_limited() {
        let star = MonitorRule {
            name: "all".into(),
            kind: vec!["*".into()],
            conditions: Default::default(),
            count: None,
            window: None,
            action: MonitorAction::Alert,
            message: Some("m".into()),
        };
        let m = Monitor::from_rules(vec![star]).unwrap();
        assert!(m.observe(ANOMALY, &Map::new()).is_empty());
        assert!(m.observe(MONITOR_ERROR, &Map::new()).is_empty());
        let t0 = Instant::now();
        let n = (0..100)
            .map(|_| m.observe_at(t0, "proc.exec", &Map::new()).len())
            .sum::<usize>();
        assert_eq!(n, FIRES_PER_WINDOW as usize);
        let next = m.observe_at(t0 + FIRE_WINDOW, "proc.exec", &Map::new());
        assert_eq!(next[0].suppressed, 100 - u64::from(FIRES_PER_WINDOW));
    }

    #[test]
    fn anomaly_data_is_bounded() {
        let v = Verdict {
            rule: "r".into(),
            action: MonitorAction::Kill,
            message: "m".into(),
            suppressed: 0,
        };
        let big = data(json!({"argv": vec!["x".repeat(10_000); 100], "path": "p"}));
        let a = anomaly_data(&v, "proc.exec", Some(7), &big);
        assert_eq!(a["action"], "kill");
        assert_eq!(a["event"]["seq"], 7);
        let argv = a["event"]["data"]["argv"].as_array().unwrap();
        assert_eq!(argv.len(), 16);
        assert!(argv[0].as_str().unwrap().len() < 300);
        assert!(serde_json::to_string(&a).unwrap().len() < 8_000);
    }

    struct Recorder(Mutex<Vec<(String, Map<String, Value>)>>);
    impl EventSink for Recorder {
        fn event(&self, kind: &str, data: Map<String, Value>) {
            self.0.lock().unwrap().push((kind.into(), data));
        }
    }
    struct Killer(AtomicUsize);
    impl Control for Killer {
        fn signal(&self, _: i32) {}
        fn kill(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn kill_before_the_sandbox_runs_acts_once_it_does() {
        let live = Live::new(Monitor::from_rules(vec![]).unwrap(), vec![], "s1");
        let v = Verdict {
            rule: "git-hooks-write".into(),
            action: MonitorAction::Kill,
            message: "a write to .git/hooks".into(),
            suppressed: 0,
        };
        live.act(&v, &Map::new());
        let k = Arc::new(Killer(AtomicUsize::new(0)));
        live.set_control(k.clone());
        assert_eq!(k.0.load(Ordering::SeqCst), 1);
        assert_eq!(
            live.killed_by().as_deref(),
            Some("killed by monitor rule git-hooks-write: a write to .git/hooks")
        );
        live.act(&v, &Map::new());
        assert_eq!(k.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn hook_gets_the_anomaly_on_stdin_and_failures_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("got.json");
        let script = format!("cat > {}; exit 0", out.display());
        let live = Live::new(
            Monitor::from_rules(vec![]).unwrap(),
            vec!["/bin/sh".into(), "-c".into(), script],
            "s2",
        );
        let rec: Arc<Recorder> = Arc::new(Recorder(Mutex::new(Vec::new())));
        let weak: Weak<dyn EventSink> = Arc::downgrade(&(rec.clone() as Arc<dyn EventSink>));
        live.report_to(weak);
        let v = Verdict {
            rule: "network-tools".into(),
            action: MonitorAction::Alert,
            message: "m".into(),
            suppressed: 0,
        };
        let a = anomaly_data(
            &v,
            "proc.exec",
            Some(3),
            &data(json!({"path": "/usr/bin/curl"})),
        );
        live.act(&v, &a);
        live.finish(Duration::from_secs(5));
        let got: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(got["session"], "s2");
        assert_eq!(got["anomaly"]["rule"], "network-tools");
        assert_eq!(got["anomaly"]["event"]["data"]["path"], "/usr/bin/curl");
        assert!(rec.0.lock().unwrap().is_empty());

        let failing = Live::new(
            Monitor::from_rules(vec![]).unwrap(),
            vec!["/nonexistent/hook".into()],
            "s3",
        );
        failing.report_to(Arc::downgrade(&(rec.clone() as Arc<dyn EventSink>)));
        failing.act(&v, &a);
        let failing2 = Live::new(
            Monitor::from_rules(vec![]).unwrap(),
            vec!["/bin/sh".into(), "-c".into(), "exit 3".into()],
            "s4",
        );
        failing2.report_to(Arc::downgrade(&(rec.clone() as Arc<dyn EventSink>)));
        failing2.act(&v, &a);
        failing2.finish(Duration::from_secs(5));
        let events = rec.0.lock().unwrap();
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(events.iter().all(|(k, _)| k == MONITOR_ERROR));
        assert!(
            events[0].1["error"]
                .as_str()
                .unwrap()
                .contains("could not start")
        );
        assert!(
            events[1].1["error"]
                .as_str()
                .unwrap()
                .contains("exit status: 3")
        );
    }
}
