//! `cordon run`, `sessions`, `rm`, `log`, `audit verify` and `doctor`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use cordon_events::Event;
use cordon_fs::workspace::DataDir;
use cordon_policy::{Policy, UserConfig};
use cordon_sandbox::session::{self, RunOptions, Summary};
use cordon_sandbox::{BackendKind, LimitKind};
use serde_json::json;

use crate::output::{self, Out};

/// Exit code of `cordon run` when Cordon itself fails (policy, setup), as
/// distinct from the agent's own codes; follows `env`/`docker run`.
pub const EXIT_RUN_FAILED: i32 = 125;

#[derive(Args)]
pub struct RunArgs {
    /// Policy file (default: cordon.toml in the project directory, if present).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Require the policy to be signed by this public key (repeatable; adds to
    /// `trust` in ~/.config/cordon/config.toml).
    #[arg(long, value_name = "PUB")]
    trust: Vec<PathBuf>,
    /// Resume this session (its workspace keeps the earlier changes).
    #[arg(long, value_name = "ID")]
    session: Option<String>,
    /// The project directory. Overrides `[workspace] path`; default: the
    /// current directory. Refused when a trust key is in force.
    #[arg(long, value_name = "DIR")]
    workspace: Option<PathBuf>,
    /// Isolation backend. Overrides `[sandbox] backend`; default:
    /// $CORDON_BACKEND, then the policy's. Refused when a trust key is in force
    /// (and $CORDON_BACKEND must then name the policy's backend).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(BackendKind::ALL.map(|k| k.name())))]
    backend: Option<String>,
    /// Wall-clock limit, e.g. 90s, 30m. Overrides `[sandbox] timeout`.
    /// Refused when a trust key is in force.
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
    /// Memory limit, e.g. 2G. Overrides `[sandbox] memory`. Refused when a
    /// trust key is in force.
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// CPU limit in cores, e.g. 1.5. Overrides `[sandbox] cpus`. Refused when
    /// a trust key is in force.
    #[arg(long)]
    cpus: Option<f64>,
    /// Process limit. Overrides `[sandbox] pids`. Refused when a trust key is
    /// in force.
    #[arg(long)]
    pids: Option<u64>,
    /// Limit on new data in the workspace, e.g. 1G. Overrides `[sandbox]
    /// disk_quota`. Refused when a trust key is in force.
    #[arg(long, value_name = "SIZE")]
    disk_quota: Option<String>,
    /// Limit on stdout+stderr, e.g. 10M. Overrides `[sandbox] output_limit`.
    /// Refused when a trust key is in force.
    #[arg(long, value_name = "SIZE")]
    output_limit: Option<String>,
    /// Pass this host environment variable through (repeatable; `LC_*` globs
    /// allowed). Adds to `[sandbox] env`. Refused when a trust key is in force.
    #[arg(long = "env", value_name = "NAME")]
    env: Vec<String>,
    /// Plain pipes even when stdin and stdout are terminals.
    #[arg(long)]
    no_tty: bool,
    /// Print the end-of-run summary as one JSON line on stderr (stdout belongs
    /// to the agent).
    #[arg(long)]
    json: bool,
    /// The agent command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Check a session's event log for edited, inserted, deleted or reordered events.
    Verify(IdJson),
}

#[derive(Args)]
pub struct IdJson {
    /// Session id (a unique prefix is enough).
    id: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct LogArgs {
    /// Session id (a unique prefix is enough).
    id: String,
    /// Keep printing events as they are written, until the session ends (or Ctrl-C).
    #[arg(long, short)]
    follow: bool,
    /// Print JSON lines (one event per line) instead of text.
    #[arg(long)]
    json: bool,
    /// Only events whose kind starts with this (repeatable), e.g. proc, syscall, limit.
    #[arg(long, value_name = "PREFIX")]
    kind: Vec<String>,
    /// Only violations (denied operations, limit hits, blocked requests, anomalies).
    #[arg(long)]
    violations: bool,
}

#[derive(Args)]
pub struct RmArgs {
    /// Session id (the full id).
    id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionCliError {
    #[error(transparent)]
    Session(#[from] session::SessionError),
    #[error(transparent)]
    Fs(#[from] cordon_fs::Error),
    #[error(transparent)]
    Policy(#[from] cordon_policy::Error),
    #[error(transparent)]
    Events(#[from] cordon_events::Error),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Refused(String),
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

type R<T = i32> = Result<T, SessionCliError>;

fn usage(msg: String) -> SessionCliError {
    SessionCliError::Usage(msg)
}

fn host_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

fn backend_kind(name: &str) -> Option<BackendKind> {
    BackendKind::ALL.into_iter().find(|k| k.name() == name)
}

impl RunArgs {
    /// The flags given that change a policy value, as spelled on the command
    /// line. With a trust key in force the signed policy alone decides these.
    fn policy_overrides(&self) -> Vec<&'static str> {
        [
            (self.workspace.is_some(), "--workspace"),
            (self.backend.is_some(), "--backend"),
            (self.timeout.is_some(), "--timeout"),
            (self.memory.is_some(), "--memory"),
            (self.cpus.is_some(), "--cpus"),
            (self.pids.is_some(), "--pids"),
            (self.disk_quota.is_some(), "--disk-quota"),
            (self.output_limit.is_some(), "--output-limit"),
            (!self.env.is_empty(), "--env"),
        ]
        .into_iter()
        .filter_map(|(given, flag)| given.then_some(flag))
        .collect()
    }
}

/// The policy a run uses, as loaded (and verified, under a trust key).
struct LoadedPolicy {
    policy: Policy,
    path: Option<PathBuf>,
    /// sha256 of the file's exact bytes.
    sha256: Option<String>,
    /// A trust key is in force: the policy is signed, and nothing on the
    /// command line may change it.
    trusted: bool,
}

/// Load the policy and check its signature when a trust key is configured;
/// with one, refuse command-line flags that would change what was signed.
fn load_policy(a: &RunArgs, project: &Path) -> R<LoadedPolicy> {
    let path = match &a.policy {
        Some(p) => Some(p.clone()),
        None => {
            let p = project.join("cordon.toml");
            p.exists().then_some(p)
        }
    };
    let mut trusted = Vec::new();
    for t in &a.trust {
        trusted.push(cordon_policy::read_public_key(t)?);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    if let Some(cfg_path) = UserConfig::default_path(
        std::env::var_os("XDG_CONFIG_HOME").as_deref(),
        home.as_deref().map(|h| h.as_os_str()),
    ) && cfg_path.exists()
    {
        let cfg = UserConfig::load(&cfg_path)?;
        trusted.extend(cfg.trusted_keys(home.as_deref())?);
    }
    if !trusted.is_empty() {
        let overrides = a.policy_overrides();
        if !overrides.is_empty() {
            return Err(SessionCliError::Refused(format!(
                "refusing {}: a trust key is in force, so the signed policy alone sets these; put the change in the policy and sign it again",
                overrides.join(", ")
            )));
        }
    }
    let Some(path) = path else {
        if !trusted.is_empty() {
            return Err(SessionCliError::Refused(format!(
                "a trust key is configured but there is no policy file in {}; pass --policy FILE with a signed policy",
                project.display()
            )));
        }
        return Ok(LoadedPolicy {
            policy: Policy::default(),
            path: None,
            sha256: None,
            trusted: false,
        });
    };
    let (policy, bytes) = Policy::load(&path)?;
    if !trusted.is_empty() {
        let sig_path = cordon_policy::signature_path(&path);
        let sig = match std::fs::read_to_string(&sig_path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SessionCliError::Refused(format!(
                    "{} is not signed ({} is missing) and a trust key is configured; sign it with `cordon policy sign --key KEY {}`",
                    path.display(),
                    sig_path.display(),
                    path.display()
                )));
            }
            Err(e) => {
                return Err(SessionCliError::Refused(format!(
                    "cannot read {}: {e}",
                    sig_path.display()
                )));
            }
        };
        if let Err(e) = cordon_policy::verify_any(&trusted, &bytes, &sig) {
            return Err(SessionCliError::Refused(format!(
                "refusing to run: the signature of {} does not verify against the trusted keys: {e}",
                path.display()
            )));
        }
    }
    use sha2::Digest;
    let sha = sha2::Sha256::digest(&bytes);
    let hex: String = sha.iter().map(|b| format!("{b:02x}")).collect();
    Ok(LoadedPolicy {
        policy,
        path: Some(path),
        sha256: Some(hex),
        trusted: !trusted.is_empty(),
    })
}

fn apply_overrides(a: &RunArgs, p: &mut Policy) -> R<()> {
    use cordon_policy::values::{parse_duration, parse_size};
    let bad = |flag: &str, e: &dyn std::fmt::Display| usage(format!("{flag}: {e}"));
    if let Some(t) = &a.timeout {
        p.sandbox.timeout = Some(parse_duration(t).map_err(|e| bad("--timeout", &e))?);
    }
    if let Some(m) = &a.memory {
        p.sandbox.memory = Some(parse_size(m).map_err(|e| bad("--memory", &e))?);
    }
    if let Some(c) = a.cpus {
        if !(c > 0.0 && c <= 1024.0) {
            return Err(usage(format!(
                "--cpus {c}: give a number of cores above 0 and at most 1024"
            )));
        }
        p.sandbox.cpus = Some(c);
    }
    if let Some(n) = a.pids {
        if n == 0 {
            return Err(usage(
                "--pids 0: the agent needs at least one process".into(),
            ));
        }
        p.sandbox.pids = Some(n);
    }
    if let Some(d) = &a.disk_quota {
        p.sandbox.disk_quota = Some(parse_size(d).map_err(|e| bad("--disk-quota", &e))?);
    }
    if let Some(o) = &a.output_limit {
        p.sandbox.output_limit = Some(parse_size(o).map_err(|e| bad("--output-limit", &e))?);
    }
    for e in &a.env {
        cordon_policy::values::check_env_pattern(e).map_err(|err| bad("--env", &err))?;
        p.sandbox.env.push(e.clone());
    }
    Ok(())
}

pub fn run_cmd(a: RunArgs, out: &Out) -> i32 {
    match run_inner(a, out) {
        Ok(code) => code,
        Err(e) => {
            out.error(&e.to_string());
            if matches!(e, SessionCliError::Usage(_)) {
                2
            } else {
                EXIT_RUN_FAILED
            }
        }
    }
}

fn run_inner(a: RunArgs, out: &Out) -> R {
    tracing::debug!("cordon run: start");
    let data = DataDir::from_env()?;
    let cwd = std::env::current_dir()
        .map_err(|e| usage(format!("cannot read the current directory: {e}")))?;
    let project0 = a.workspace.clone().unwrap_or_else(|| cwd.clone());
    let LoadedPolicy {
        mut policy,
        path: policy_path,
        sha256: policy_sha,
        trusted,
    } = load_policy(&a, &project0)?;
    apply_overrides(&a, &mut policy)?;
    let project = match (&a.workspace, &policy_path) {
        (Some(w), _) => w.clone(),
        (None, Some(pp)) => {
            let dir = pp
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            policy.workspace.resolve_path(dir).unwrap_or(project0)
        }
        (None, None) => project0,
    };
    let backend = match (&a.backend, std::env::var("CORDON_BACKEND")) {
        // clap checked the name.
        (Some(b), _) => backend_kind(b).unwrap_or_default(),
        (None, Ok(name)) if !name.is_empty() => {
            let Some(kind) = backend_kind(&name) else {
                return Err(usage(format!(
                    "CORDON_BACKEND={name}: not a backend; use one of {}",
                    BackendKind::ALL.map(|k| k.name()).join(", ")
                )));
            };
            // An environment default, often set for every run: under a trust
            // key it may only agree with the signed policy.
            if trusted && kind != policy.sandbox.backend {
                return Err(SessionCliError::Refused(format!(
                    "refusing CORDON_BACKEND={name}: a trust key is in force and the signed policy's backend is {}; unset it or put the change in the policy and sign it again",
                    policy.sandbox.backend.name()
                )));
            }
            kind
        }
        _ => policy.sandbox.backend,
    };
    let terminal = !a.no_tty && std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let quiet_start = a.json;
    // The session calls back with its id before the agent starts; style it now
    // because the callback outlives `out`.
    let (bold, reset) = {
        let styled = out.style_err("1", "\0");
        let (b, r) = styled.split_once('\0').unwrap_or(("", ""));
        (b.to_string(), r.to_string())
    };
    let opts = RunOptions {
        policy,
        policy_path,
        policy_sha256: policy_sha,
        argv: a.command.clone(),
        resume: a.session.clone(),
        project,
        cwd,
        terminal,
        backend,
        on_start: Box::new(move |id| {
            if !quiet_start {
                eprintln!("cordon: session {bold}{id}{reset} started");
            }
        }),
        host_env: host_env(),
        helper: None,
    };
    let summary = session::run(&data, opts)?;
    print_summary(&summary, a.json, out);
    Ok(summary.exit_code)
}

fn print_summary(s: &Summary, json: bool, out: &Out) {
    if json {
        if let Ok(line) = serde_json::to_string(s) {
            eprintln!("{line}");
        }
        return;
    }
    let code = if s.exit_code == 0 {
        out.style_err("32", "0")
    } else {
        out.style_err("31", &s.exit_code.to_string())
    };
    let how = match s.signal {
        Some(sig) => format!(" (killed by signal {sig})"),
        None => String::new(),
    };
    eprintln!(
        "cordon: session {} ended: exit {code}{how} after {:.1}s",
        out.style_err("1", &s.session),
        s.duration_ms as f64 / 1000.0
    );
    if let Some(why) = &s.stopped {
        eprintln!("  stopped: {}", out.style_err("1;31", why));
    }
    eprintln!(
        "  files changed: {} ({} added, {} modified, {} deleted)",
        s.files_changed, s.added, s.modified, s.deleted
    );
    let v = if s.violations > 0 {
        out.style_err("1;33", &s.violations.to_string())
    } else {
        "0".into()
    };
    eprintln!("  events: {}, violations: {v}", s.events);
    if s.events_suppressed > 0 {
        eprintln!(
            "  {} more events were observed but not logged (log budget reached)",
            out.style_err("1;33", &s.events_suppressed.to_string())
        );
    }
    if !s.limits_hit.is_empty() {
        let names: Vec<&str> = s.limits_hit.iter().map(|l: &LimitKind| l.name()).collect();
        eprintln!("  limits hit: {}", out.style_err("1;31", &names.join(", ")));
    }
    eprintln!("  limits enforced by: {}", s.limit_enforcement);
    if let Some(n) = &s.network {
        let warn = |count: u64| {
            if count > 0 {
                out.style_err("1;33", &count.to_string())
            } else {
                "0".into()
            }
        };
        // Names and packets are refused only when the agent reaches beyond
        // its policy: mentioned then alone.
        let mut refused = String::new();
        if n.names_refused > 0 {
            refused += &format!(", {} names refused", warn(n.names_refused));
        }
        if n.packets_refused > 0 {
            refused += &format!(", {} packets refused", warn(n.packets_refused));
        }
        eprintln!(
            "  network: {} connections, {} requests allowed, {} blocked, {} connections blocked{refused}, {} secrets injected",
            n.connections,
            n.requests_allowed,
            warn(n.requests_blocked),
            warn(n.connections_blocked),
            n.secrets_injected
        );
    }
    if s.files_changed > 0 {
        eprintln!(
            "  review: cordon diff {id}   apply: cordon apply {id}   discard: cordon rm {id}",
            id = s.session
        );
    }
}

pub fn sessions_cmd(json: bool, out: &Out) -> R {
    let data = DataDir::from_env()?;
    let list = session::list(&data)?;
    if json {
        out.json(&list)?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|m| {
            let last = m.runs.last();
            vec![
                m.id.clone(),
                m.created.get(..19).unwrap_or(&m.created).replace('T', " "),
                m.runs.len().to_string(),
                last.and_then(|r| r.exit_code)
                    .map_or_else(|| "running/unknown".into(), |c| c.to_string()),
                last.map(|r| output::one_line(&r.argv.join(" ")))
                    .unwrap_or_default(),
                m.base.display().to_string(),
            ]
        })
        .collect();
    out.table(
        &[
            "SESSION",
            "CREATED (UTC)",
            "RUNS",
            "LAST EXIT",
            "COMMAND",
            "PROJECT",
        ],
        &rows,
    )?;
    Ok(0)
}

pub fn rm_cmd(a: RmArgs) -> R {
    let data = DataDir::from_env()?;
    let ws = data.resolve_exact(&a.id)?;
    let id = ws.id.clone();
    session::remove(&data, ws)?;
    eprintln!("removed session {id}");
    Ok(0)
}

fn session_dir(id: &str) -> R<(String, PathBuf)> {
    let data = DataDir::from_env()?;
    let ws = data.resolve(id)?;
    let dir = session::session_dir(&data, &ws.id);
    if !dir.join("events.jsonl").exists() {
        return Err(usage(format!(
            "{} is a workspace without a session log (it was not created by `cordon run`)",
            ws.id
        )));
    }
    Ok((ws.id, dir))
}

/// One event as one line: time, seq, kind, then `key=value` fields. Text
/// from the sandbox is escaped before it is styled, so neither it nor the
/// styling can break the line or paint the terminal.
fn event_line(e: &Event, out: &Out) -> String {
    let time = out.style("2", e.ts.get(11..23).unwrap_or(&e.ts));
    if e.kind == cordon_events::kind::ANOMALY
        && let Some(line) = anomaly_line(e, out)
    {
        return format!("{time} {:>5} {line}", e.seq);
    }
    let style = if e.is_violation() {
        "1;31"
    } else if e.kind.starts_with("session.") {
        "1;36"
    } else if e.kind.starts_with("proc.") {
        "32"
    } else if e.kind.starts_with("net.") || e.kind.starts_with("secret.") {
        "34"
    } else {
        "33"
    };
    // Pad before styling: escape sequences have no width.
    let kind = format!("{:<18}", output::one_line(&e.kind));
    format!(
        "{time} {:>5} {}{}",
        e.seq,
        out.style(style, &kind),
        fields(&e.data, out)
    )
}

fn fields(data: &serde_json::Map<String, serde_json::Value>, out: &Out) -> String {
    let mut text = String::new();
    for (k, v) in data {
        let v = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        text.push_str(&format!(
            " {}={}",
            out.style("2", &output::one_line(k)),
            output::one_line(&v)
        ));
    }
    text
}

/// An anomaly stands out: a marker by action (`KILL` white on red, `ALERT`
/// black on yellow, `log` yellow), the rule and its message, then the event
/// that caused it.
fn anomaly_line(e: &Event, out: &Out) -> Option<String> {
    let d = &e.data;
    let action = d.get("action")?.as_str()?;
    let (marker, style) = match action {
        "kill" => (" KILL ", "1;97;41"),
        "alert" => (" ALERT ", "1;30;43"),
        _ => ("log", "33"),
    };
    let rule = d.get("rule").and_then(|v| v.as_str()).unwrap_or("?");
    let message = d.get("message").and_then(|v| v.as_str()).unwrap_or("");
    let cause = d.get("event");
    let cause_kind = cause
        .and_then(|c| c.get("kind"))
        .and_then(|v| v.as_str())
        .unwrap_or("?");
    let cause_seq = cause
        .and_then(|c| c.get("seq"))
        .and_then(|v| v.as_u64())
        .map(|s| format!(" #{s}"))
        .unwrap_or_default();
    let cause_fields = cause
        .and_then(|c| c.get("data"))
        .and_then(|v| v.as_object())
        .map(|m| fields(m, out))
        .unwrap_or_default();
    let suppressed = d
        .get("suppressed")
        .and_then(|v| v.as_u64())
        .map(|n| format!(" (+{n} not shown)"))
        .unwrap_or_default();
    let kind = format!("{:<18}", "anomaly");
    Some(format!(
        "{}{} {}: {}{suppressed} <- {}{cause_seq}{cause_fields}",
        out.style("1;31", &kind),
        out.style(style, marker),
        out.style("1", &output::one_line(rule)),
        output::one_line(message),
        output::one_line(cause_kind),
    ))
}

pub fn log_cmd(a: LogArgs, out: &Out) -> R {
    let (_id, dir) = session_dir(&a.id)?;
    let keep = |e: &Event| {
        (a.kind.is_empty() || a.kind.iter().any(|k| e.kind.starts_with(k.as_str())))
            && (!a.violations || e.is_violation())
    };
    let mut stdout = std::io::stdout().lock();
    let mut print = |e: &Event| -> std::io::Result<()> {
        if !keep(e) {
            return Ok(());
        }
        if a.json {
            serde_json::to_writer(&mut stdout, e)?;
            writeln!(stdout)?;
        } else {
            writeln!(stdout, "{}", event_line(e, out))?;
        }
        stdout.flush()
    };
    let mut follower = cordon_events::Follower::new(&dir);
    let mut ended = false;
    loop {
        let batch = follower.next_batch(if a.follow {
            Duration::from_millis(200)
        } else {
            Duration::ZERO
        })?;
        let empty = batch.is_empty();
        for e in &batch {
            print(e)?;
            ended |= e.kind == "session.end" || e.kind == "session.error";
        }
        if !a.follow || (ended && empty) {
            break;
        }
        if ended {
            // A resumed session appends again after an end; keep following only
            // while something is running.
            let data = DataDir::from_env()?;
            let ws = data.resolve(&a.id)?;
            if ws.mounted_by().is_none() {
                break;
            }
            ended = false;
        }
    }
    Ok(0)
}

pub fn audit_cmd(cmd: AuditCmd, out: &Out) -> R {
    let AuditCmd::Verify(a) = cmd;
    let (id, dir) = session_dir(&a.id)?;
    let report = cordon_events::verify(&dir, &id)?;
    if a.json {
        out.json(&report)?;
    } else if report.ok {
        println!(
            "{} session {id}: {} events, hash chain intact, anchor matches",
            out.green("ok"),
            report.events
        );
    } else {
        for p in &report.problems {
            let kind = p.kind;
            println!("{} {kind}: {}", out.red("FAIL"), p.message);
        }
        println!(
            "session {id}: {} problem(s) in {} events; the log was altered after it was written",
            report.problems.len(),
            report.events
        );
    }
    Ok(if report.ok { 0 } else { 1 })
}

pub fn doctor_cmd(json: bool, out: &Out) -> R {
    let features = cordon_sandbox::doctor::probe_all();
    let backends: Vec<_> = cordon_sandbox::doctor::backends(&features)
        .into_iter()
        .map(|(k, r)| {
            json!({ "backend": k.name(), "available": r.is_ok(), "detail": r.err().unwrap_or_else(|| "ready".into()) })
        })
        .collect();
    if json {
        out.json(&json!({ "features": features, "backends": backends }))?;
        return Ok(0);
    }
    for f in &features {
        let mark = if f.ok {
            out.green("ok  ")
        } else {
            out.red("no  ")
        };
        println!("{mark}{:<28}{}", f.name, f.detail);
    }
    println!();
    for b in &backends {
        let ok = b["available"].as_bool().unwrap_or(false);
        let mark = if ok {
            out.green("ok  ")
        } else {
            out.red("no  ")
        };
        println!(
            "{mark}backend {:<20}{}",
            b["backend"].as_str().unwrap_or(""),
            b["detail"].as_str().unwrap_or("")
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::Color;
    use serde_json::json;

    fn event(seq: u64, kind: &str, data: serde_json::Value) -> Event {
        Event {
            seq,
            ts: "2026-11-27T05:08:48.631204518Z".into(),
            session: "s".into(),
            kind: kind.into(),
            data: data.as_object().cloned().unwrap_or_default(),
            prev: String::new(),
            hash: String::new(),
        }
    }

    fn anomaly(action: &str) -> Event {
        event(
            9,
            "anomaly",
            json!({"rule": "network-tools", "action": action, "message": "a network tool was executed",
                   "event": {"kind": "proc.exec", "seq": 8, "data": {"path": "/usr/bin/curl", "pid": 12}}}),
        )
    }

    #[test]
    fn anomalies_stand_out_by_action() {
        let plain = Out::new(Color::Never);
        assert_eq!(
            event_line(&anomaly("alert"), &plain),
            "05:08:48.631     9 anomaly            ALERT  network-tools: a network tool was executed \
             <- proc.exec #8 path=/usr/bin/curl pid=12"
        );
        assert!(event_line(&anomaly("kill"), &plain).contains(" KILL  network-tools:"));
        let colour = Out::new(Color::Always);
        let alert = event_line(&anomaly("alert"), &colour);
        let kill = event_line(&anomaly("kill"), &colour);
        assert!(alert.contains("\x1b[1;30;43m ALERT \x1b[0m"), "{alert:?}");
        assert!(kill.contains("\x1b[1;97;41m KILL \x1b[0m"), "{kill:?}");
        assert!(event_line(&anomaly("log"), &colour).contains("\x1b[33mlog\x1b[0m"));
    }

    #[test]
    fn lines_keep_colour_and_escape_the_sandboxs_text() {
        let colour = Out::new(Color::Always);
        let e = event(
            3,
            "proc.exec",
            json!({"path": "/bin/x\x1b]0;owned\x07\nnext"}),
        );
        let line = event_line(&e, &colour);
        assert!(line.starts_with("\x1b[2m05:08:48.631\x1b[0m"), "{line:?}");
        assert!(line.contains("\x1b[32mproc.exec"), "{line:?}");
        assert!(line.contains("/bin/x\\x1b]0;owned\\x07\\nnext"), "{line:?}");
        assert!(!line.contains('\n') && !line.contains('\x07'));
        // An anomaly about hostile text is escaped the same way.
        let mut a = anomaly("kill");
        a.data["event"]["data"]["path"] = json!("\x1b[2Jx");
        let line = event_line(&a, &colour);
        assert!(line.contains("path\x1b[0m=\\x1b[2Jx"), "{line:?}");
    }
}
