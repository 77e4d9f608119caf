//! Sessions: one `cordon run` from policy to summary.
//!
//! A session is a workspace (the copy-on-write store from `cordon-fs`, same id)
//! plus `<data>/sessions/<id>/`: `session.json` (what ran, when, how it ended),
//! the hash-chained `events.jsonl` with its `events.head` anchor, `mnt/` (where
//! the workspace is served on the host while it runs) and `root/` (the empty
//! directory the native backend builds the agent's root on).
//!
//! [`run`] loads nothing itself: the caller passes the validated policy. It
//! mounts the workspace, turns the policy into a [`SandboxSpec`], starts the
//! backend, relays the streams within the output budget, enforces the
//! wall-clock timeout, forwards the user's signals, and writes the summary.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime};

use cordon_events::{EventLog, kind};
use cordon_fs::fuse::ServeOptions;
use cordon_fs::overlay::Quota;
use cordon_fs::workspace::{DataDir, Workspace};
use cordon_policy::Policy;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::{BackendKind, BindMount, EventSink, LimitKind, Limits, SandboxSpec, WorkspaceMount};

/// Errors of the session layer.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Sandbox(#[from] crate::Error),
    #[error(transparent)]
    Fs(#[from] cordon_fs::Error),
    #[error("event log: {0}")]
    Events(#[from] cordon_events::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SessionError {
    let what = what.into();
    move |source| SessionError::Io { what, source }
}

/// `session.json`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct SessionMeta {
    pub id: String,
    pub base: PathBuf,
    pub backend: BackendKind,
    pub created: String,
    /// Random bytes (hex) from which this session's secret placeholders are
    /// derived: stable across its runs (the agent may have written them into
    /// files), unguessable from anything the agent sees.
    #[serde(default)]
    pub placeholder_nonce: String,
    pub runs: Vec<RunRecord>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct RunRecord {
    pub argv: Vec<String>,
    pub started: String,
    pub ended: Option<String>,
    pub exit_code: Option<i32>,
    /// Why the run failed, when Cordon itself failed (setup, log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub policy_sha256: Option<String>,
}

/// What the user sees at the end, and `--json` prints.
#[derive(Serialize, Clone, Debug)]
pub struct Summary {
    pub session: String,
    pub backend: BackendKind,
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// Why the sandbox was stopped early, when it was.
    pub stopped: Option<String>,
    pub duration_ms: u64,
    pub files_changed: usize,
    pub added: usize,
    pub modified: usize,
    pub deleted: usize,
    pub events: u64,
    /// Events observed but not written because the log budget ran out.
    pub events_suppressed: u64,
    pub violations: u64,
    pub limits_hit: Vec<LimitKind>,
    pub limit_enforcement: String,
    /// What the gateway let through and refused; `None` without network.
    pub network: Option<cordon_net::l7::GatewayStats>,
}

/// The caller's choices for one run.
pub struct RunOptions {
    pub policy: Policy,
    /// The policy file, if there was one (recorded, and kept read-only inside
    /// the workspace when it lives there).
    pub policy_path: Option<PathBuf>,
    pub policy_sha256: Option<String>,
    pub argv: Vec<String>,
    /// Resume this session instead of creating one.
    pub resume: Option<String>,
    /// The project directory (the workspace's base).
    pub project: PathBuf,
    /// The working directory to start in (inside the project, else the project root).
    pub cwd: PathBuf,
    /// Use a pseudo-terminal (the caller decides: stdin and stdout are terminals).
    pub terminal: bool,
    pub backend: BackendKind,
    /// Called once the session id is known, before the agent starts.
    pub on_start: Box<dyn FnOnce(&str)>,
    /// Host environment (passed in, so tests can control it).
    pub host_env: Vec<(String, String)>,
    /// For tests: the executable used as the native backend's stage 1.
    pub helper: Option<PathBuf>,
}

/// The events sink a session gives its backend: appends to the chained log and
/// counts failures (a sink cannot return errors into the sandbox).
///
/// With a monitor, every event written is also checked against the anomaly
/// rules; a rule that fires appends an `anomaly` event right after it (which
/// is never checked again) and carries out the rule's action.
pub struct LogSink {
    log: EventLog,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
    monitor: Option<crate::monitor::Live>,
}

impl LogSink {
    fn new(log: EventLog, monitor: Option<crate::monitor::Live>) -> Arc<LogSink> {
        let sink = Arc::new(LogSink {
            log,
            failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
            monitor,
        });
        if let Some(m) = &sink.monitor {
            let weak: std::sync::Weak<dyn EventSink> =
                Arc::downgrade(&(sink.clone() as Arc<dyn EventSink>));
            m.report_to(weak);
        }
        sink
    }

    pub fn append(&self, kind: &str, data: Map<String, Value>) {
        match self.log.append(kind, data) {
            Ok(event) => {
                if let Some(m) = &self.monitor {
                    for v in m.engine.observe(kind, &event.data) {
                        let anomaly =
                            crate::monitor::anomaly_data(&v, kind, Some(event.seq), &event.data);
                        self.append(crate::monitor::ANOMALY, anomaly.clone());
                        m.act(&v, &anomaly);
                    }
                }
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut g) = self.last_error.lock() {
                    *g = Some(e.to_string());
                }
            }
        }
    }
}

impl EventSink for LogSink {
    fn event(&self, kind: &str, data: Map<String, Value>) {
        self.append(kind, data);
    }
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn now() -> String {
    cordon_events::format_timestamp(SystemTime::now())
}

/// `<data>/sessions/<id>`.
pub fn session_dir(data: &DataDir, id: &str) -> PathBuf {
    data.root().join("sessions").join(id)
}

pub fn read_meta(data: &DataDir, id: &str) -> Result<SessionMeta, SessionError> {
    let p = session_dir(data, id).join("session.json");
    let bytes = std::fs::read(&p).map_err(io(format!("cannot read {}", p.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| SessionError::Invalid(format!("{} is damaged: {e}", p.display())))
}

fn write_meta(dir: &Path, meta: &SessionMeta) -> Result<(), SessionError> {
    let tmp = dir.join("session.json.tmp");
    let bytes =
        serde_json::to_vec_pretty(meta).map_err(|e| SessionError::Invalid(e.to_string()))?;
    std::fs::write(&tmp, bytes).map_err(io(format!("cannot write {}", tmp.display())))?;
    std::fs::rename(&tmp, dir.join("session.json")).map_err(io("cannot save session.json"))
}

/// Every session with metadata, newest first.
pub fn list(data: &DataDir) -> Result<Vec<SessionMeta>, SessionError> {
    let dir = data.root().join("sessions");
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(out);
    };
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        if let Ok(m) = read_meta(data, &id) {
            out.push(m);
        }
    }
    out.sort_by(|a, b| b.created.cmp(&a.created));
    Ok(out)
}

/// Remove a session: its workspace and its directory (events included).
pub fn remove(data: &DataDir, ws: Workspace) -> Result<(), SessionError> {
    let id = ws.id.clone();
    ws.discard()?;
    let dir = session_dir(data, &id);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(format!("cannot remove {}", dir.display()))(e)),
    }
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn env_name_matches(pattern: &str, name: &str) -> bool {
    crate::glob::segment_matches(pattern.as_bytes(), name.as_bytes())
}

/// The agent's environment: empty, plus a minimal base, plus what the policy
/// passes through or sets, plus the session id and secret placeholders.
///
/// A host variable that a secret is read from (`from = "env:NAME"`) is never
/// passed through, whatever `[sandbox] env` or `--env` says: the sandbox only
/// ever holds the placeholder.
pub fn build_env(
    policy: &Policy,
    host: &[(String, String)],
    session: &str,
    placeholder_nonce: &[u8],
    home: &Path,
    terminal: bool,
    backend: BackendKind,
) -> Vec<(String, String)> {
    let secret_sources: Vec<&str> = policy
        .secrets
        .values()
        .filter_map(|s| match &s.from {
            cordon_policy::SecretSource::Env(name) => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: String| {
        env.retain(|(n, _)| n != k);
        env.push((k.to_string(), v));
    };
    set("PATH", DEFAULT_PATH.into());
    set("HOME", home.display().to_string());
    let get = |k: &str| host.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    for k in ["USER", "LOGNAME"] {
        if let Some(v) = get(k) {
            set(k, v);
        }
    }
    set("LANG", get("LANG").unwrap_or_else(|| "C.UTF-8".into()));
    if terminal {
        set(
            "TERM",
            get("TERM").unwrap_or_else(|| "xterm-256color".into()),
        );
    }
    for pattern in &policy.sandbox.env {
        for (k, v) in host {
            if env_name_matches(pattern, k) && !secret_sources.contains(&k.as_str()) {
                set(k, v.clone());
            }
        }
    }
    for (k, v) in &policy.sandbox.set_env {
        set(k, v.clone());
    }
    for (name, secret) in &policy.secrets {
        set(name, secret.placeholder_or_default(name, placeholder_nonce));
    }
    set("CORDON_SESSION", session.into());
    set("CORDON_SANDBOX", backend.name().into());
    env
}

/// Run one session to its end.
pub fn run(data: &DataDir, mut opts: RunOptions) -> Result<Summary, SessionError> {
    let started = Instant::now();
    if opts.backend == BackendKind::Native {
        crate::native::prepare(opts.helper.as_deref());
        tracing::debug!("backend prepared");
    }
    let project = opts.project.canonicalize().map_err(io(format!(
        "cannot open the project directory {}",
        opts.project.display()
    )))?;
    // Checks that need nothing on disk come first, so a bad invocation leaves
    // no debris behind.
    for m in &opts.policy.mounts {
        if !m.optional && !m.source.exists() {
            return Err(SessionError::Invalid(format!(
                "mount source {} does not exist; create it or mark the mount `optional = true`",
                m.source.display()
            )));
        }
    }
    opts.policy
        .workspace
        .effective_hidden()
        .into_iter()
        .chain(opts.policy.workspace.effective_read_only())
        .try_for_each(crate::glob::check_pattern)
        .map_err(SessionError::Invalid)?;
    // From here on, the user's signals are caught (and later forwarded to the
    // agent) instead of killing `cordon` half-way through setting up.
    let signals = signal_hook::iterator::Signals::new([
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGWINCH,
    ])
    .ok();
    let fresh = opts.resume.is_none();
    let mut view_conn = None;
    let mut unbuilt = None;
    let ws = match &opts.resume {
        Some(id) => {
            let ws = data.resolve(id)?;
            let conn = ws.connect_read_only()?;
            let base = ws.base_path(&conn)?;
            if base != project {
                return Err(SessionError::Invalid(format!(
                    "session {} works on {}, not {}; run it from that directory or pass --workspace {}",
                    ws.id,
                    base.display(),
                    project.display(),
                    base.display()
                )));
            }
            // Kept for reading the view later in the run (one schema parse).
            view_conn = Some(conn);
            ws
        }
        None => {
            // Checked and reserved now; its database is written on the mount's
            // thread while this one writes the session's records.
            let u = data.begin_session(&project, cordon_fs::schema::DEFAULT_CHUNK_SIZE)?;
            let ws = u.workspace().clone();
            unbuilt = Some(u);
            ws
        }
    };
    tracing::debug!(id = %ws.id, "workspace ready");
    let on_start = std::mem::replace(&mut opts.on_start, Box::new(|_| {}));
    let agent_started = std::cell::Cell::new(false);
    let result = run_session(
        data,
        &ws,
        &opts,
        &project,
        started,
        on_start,
        &agent_started,
        signals,
        view_conn,
        unbuilt,
    );
    if result.is_err() && fresh && !agent_started.get() {
        // Nothing ran: a session that never started is not worth keeping.
        let _ = remove(data, ws);
    }
    result
}

/// Everything one run needs once its workspace exists.
struct Ctx<'a> {
    opts: &'a RunOptions,
    ws: &'a Workspace,
    project: &'a Path,
    dir: PathBuf,
    limits: Limits,
    sink: Arc<LogSink>,
    started: Instant,
    quota: Option<Arc<Quota>>,
    placeholder_nonce: String,
    agent_started: &'a std::cell::Cell<bool>,
    /// The user's signals, registered before anything was set up.
    signals: Mutex<Option<signal_hook::iterator::Signals>>,
}

#[allow(clippy::too_many_arguments)]
fn run_session(
    data: &DataDir,
    ws: &Workspace,
    opts: &RunOptions,
    project: &Path,
    started: Instant,
    on_start: Box<dyn FnOnce(&str)>,
    agent_started: &std::cell::Cell<bool>,
    signals: Option<signal_hook::iterator::Signals>,
    view_conn: Option<rusqlite::Connection>,
    unbuilt: Option<cordon_fs::workspace::Unbuilt>,
) -> Result<Summary, SessionError> {
    let id = ws.id.clone();
    let dir = session_dir(data, &id);
    // A new workspace's files reach the disk while the sandbox starts, once
    // the mount's thread has written them.
    let (built, on_built) = std::sync::mpsc::channel::<()>();
    let syncer = unbuilt.is_some().then(|| {
        let ws = ws.clone();
        std::thread::spawn(move || match on_built.recv() {
            Ok(()) => ws.sync_files(),
            Err(_) => Ok(()),
        })
    });
    let quota = opts.policy.sandbox.disk_quota.map(Quota::new);
    let serve = ServeOptions {
        fs_name: format!("cordon:{id}"),
        quota: quota.clone(),
        // The kernel lets an inode open for FUSE passthrough be opened only in
        // passthrough mode again. A write open by path gets around it (the
        // overlay answers ESTALE and the kernel looks the name up afresh), but
        // gVisor's gofer keeps a read-only descriptor on every file it walks and
        // reopens files through /proc/self/fd, which the kernel does not look up
        // again: each write of an existing file would fail with EIO. Reads are
        // served from userspace and the page cache instead.
        passthrough: opts.backend != BackendKind::Gvisor,
        ..ServeOptions::default()
    };
    let mnt = dir.join("mnt");
    // The FUSE mount comes up on its own thread while the session's records
    // are written. A new session's id is unknown to any other `cordon`, so its
    // database is built and mounted from the start, ahead of the log; a
    // resumed one mounts only under the log's lock (below).
    let early = unbuilt.map(|u| start_mount(ws, &mnt, serve.clone(), Some(u), built.clone()));
    // The log's lock is the session's: a second `cordon run --session` on a
    // running session stops here, before it changes anything.
    let log = if dir.join(cordon_events::LOG_FILE).exists() {
        // Verified on a thread while the sandbox is set up; the agent starts
        // only once the log is known intact (see `verified` below).
        EventLog::resume(&dir, &id)?
    } else {
        EventLog::create(&dir, &id)?
    };
    if early.is_none() {
        clear_stale_mount(ws, &mnt);
    }
    for d in [&mnt, &dir.join("root")] {
        std::fs::create_dir_all(d).map_err(io(format!("cannot create {}", d.display())))?;
    }
    let mounting = early.unwrap_or_else(|| start_mount(ws, &mnt, serve, None, built));
    let mut meta = read_meta(data, &id).unwrap_or_else(|_| SessionMeta {
        id: id.clone(),
        base: project.to_path_buf(),
        backend: opts.backend,
        created: now(),
        placeholder_nonce: String::new(),
        runs: Vec::new(),
    });
    if meta.placeholder_nonce.is_empty() {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce)
            .map_err(|e| SessionError::Invalid(format!("no randomness for the session: {e}")))?;
        meta.placeholder_nonce = nonce.iter().map(|b| format!("{b:02x}")).collect();
    }
    meta.runs.push(RunRecord {
        argv: opts.argv.clone(),
        started: now(),
        ended: None,
        exit_code: None,
        error: None,
        policy_sha256: opts.policy_sha256.clone(),
    });
    // The run's record reaches session.json while the sandbox starts (a
    // rename over the old file makes ext4 flush the new one first, which
    // costs milliseconds); the final write below waits for it.
    let meta_written = {
        let (dir, meta) = (dir.clone(), meta.clone());
        std::thread::spawn(move || write_meta(&dir, &meta))
    };
    let monitor =
        crate::monitor::Monitor::new(&opts.policy.monitor).map_err(SessionError::Invalid)?;
    let monitor = (!monitor.is_empty())
        .then(|| crate::monitor::Live::new(monitor, opts.policy.monitor.hook.clone(), &id));
    let sink = LogSink::new(log, monitor);
    let policy = &opts.policy;
    let limits = Limits {
        memory: policy.sandbox.memory,
        pids: policy.sandbox.pids,
        cpus: policy.sandbox.cpus,
        timeout: policy.sandbox.timeout,
        output: policy.sandbox.output_limit,
        disk: policy.sandbox.disk_quota,
    };
    sink.append(
        kind::SESSION_START,
        obj(json!({
            "argv": opts.argv,
            "backend": opts.backend,
            "base": project,
            "policy": opts.policy_path,
            "policy_sha256": opts.policy_sha256,
            "limits": limits,
            "resumed": opts.resume.is_some(),
            "uid": rustix::process::geteuid().as_raw(),
        })),
    );
    tracing::debug!("session log open");
    on_start(&id);
    let ctx = Ctx {
        opts,
        ws,
        project,
        dir: dir.clone(),
        limits,
        sink: sink.clone(),
        started,
        quota,
        placeholder_nonce: meta.placeholder_nonce.clone(),
        agent_started,
        signals: Mutex::new(signals),
    };
    let mut result = run_mounted(&ctx, mounting, view_conn);
    if let Some(Ok(Err(e))) = syncer.map(|t| t.join()) {
        // The run's outcome stands; the user hears that its workspace may not
        // survive a power loss.
        tracing::warn!(error = %e, "could not sync the new workspace to disk");
        sink.append(
            kind::SESSION_ERROR,
            obj(json!({ "error": format!("sync: {e}") })),
        );
    }
    if let Err(e) = &result {
        sink.append(kind::SESSION_ERROR, obj(json!({ "error": e.to_string() })));
        if let Err(sync) = sink.log.sync() {
            tracing::warn!(error = %sync, "could not sync the session log");
        }
    }
    let started_record = meta_written
        .join()
        .unwrap_or_else(|_| Err(SessionError::Invalid("could not save session.json".into())));
    if let Err(e) = &started_record {
        tracing::warn!(error = %e, "could not record the run's start");
    }
    if let Some(last) = meta.runs.last_mut() {
        last.ended = Some(now());
        match &result {
            Ok(summary) => last.exit_code = Some(summary.exit_code),
            Err(e) => last.error = Some(e.to_string()),
        }
    }
    if let Err(e) = write_meta(&dir, &meta)
        && result.is_ok()
    {
        result = Err(e);
    }
    result
}

/// Mounts the workspace at `mnt` on a new thread, building its database
/// first when it is new (and then telling `built`).
fn start_mount(
    ws: &Workspace,
    mnt: &Path,
    serve: ServeOptions,
    unbuilt: Option<cordon_fs::workspace::Unbuilt>,
    built: std::sync::mpsc::Sender<()>,
) -> PendingMount {
    let (ws, mnt) = (ws.clone(), mnt.to_path_buf());
    PendingMount(Some(std::thread::spawn(move || {
        let mounted = match unbuilt {
            Some(u) => {
                let conn = u.build_for_serving()?;
                let _ = built.send(());
                // The session's thread makes it too; whichever comes first.
                std::fs::create_dir_all(&mnt).map_err(|e| cordon_fs::Error::io(&mnt, e))?;
                cordon_fs::mount::mount_on(&ws, conn, &mnt, &serve)
            }
            None => cordon_fs::mount::mount(&ws, &mnt, &serve),
        };
        mounted.and_then(|m| m.spawn())
    })))
}

/// A FUSE mount left at the session's mount point by a `cordon` that was
/// killed: detached, once the workspace lock shows no server is alive.
fn clear_stale_mount(ws: &Workspace, mnt: &Path) {
    let stale = std::fs::metadata(mnt)
        .err()
        .is_some_and(|e| e.raw_os_error() == Some(libc::ENOTCONN));
    if !stale {
        return;
    }
    let Ok(lock) = ws.lock() else { return };
    if crate::sys::umount_detach(mnt).is_err() {
        let _ = std::process::Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(mnt)
            .status();
    }
    drop(lock);
}

/// A workspace mount coming up on another thread. Dropped without
/// [`PendingMount::wait`] (an error before the sandbox started), it still waits
/// for the mount and unmounts it, so no stale mount outlives `cordon`.
struct PendingMount(
    Option<std::thread::JoinHandle<cordon_fs::Result<cordon_fs::mount::BackgroundMount>>>,
);

impl PendingMount {
    fn wait(mut self) -> Result<cordon_fs::mount::BackgroundMount, SessionError> {
        match self.0.take().map(|t| t.join()) {
            Some(Ok(r)) => Ok(r?),
            _ => Err(SessionError::Invalid(
                "the workspace mount thread failed".into(),
            )),
        }
    }
}

impl Drop for PendingMount {
    fn drop(&mut self) {
        // Joining is enough: the mount's own Drop unmounts it.
        if let Some(t) = self.0.take() {
            let _ = t.join();
        }
    }
}

/// The paths protected patterns cover, as the agent sees them (under
/// `project`): every match found in `mnt` (see [`protect`]).
fn protected(mnt: &Path, project: &Path, patterns: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in crate::glob::expand(mnt, patterns) {
        protect(mnt, project, &p, &mut out);
    }
    out
}

/// Adds the paths protecting `p` (a match under `mnt`) covers, as the agent
/// sees them (under `project`): `p`, and for a symbolic link also what it
/// points to when that is inside the workspace (a mount cannot cover the link
/// itself, so `.env -> config/app.env` protects `config/app.env`).
fn protect(mnt: &Path, project: &Path, p: &Path, out: &mut Vec<PathBuf>) {
    let to_project = |p: &Path| project.join(p.strip_prefix(mnt).unwrap_or(p));
    let is_link = p
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink());
    if is_link && let Ok(target) = p.canonicalize() {
        // A relative link resolves within the mount; an absolute one names
        // the project's own path, which on the host is the base directory.
        if target.starts_with(mnt) {
            out.push(to_project(&target));
        } else if target.starts_with(project) {
            out.push(target);
        }
    }
    out.push(to_project(p));
}

/// `view_conn`: a read-only connection to a resumed session's workspace, opened
/// before the run, to read its view with.
fn run_mounted(
    ctx: &Ctx<'_>,
    mounting: PendingMount,
    view_conn: Option<rusqlite::Connection>,
) -> Result<Summary, SessionError> {
    let Ctx {
        opts,
        ws,
        project,
        limits,
        sink,
        started,
        quota,
        ..
    } = ctx;
    let (limits, sink, started) = (limits.clone(), sink.clone(), *started);
    let id = ws.id.clone();
    let fresh = opts.resume.is_none();
    let mnt = ctx.dir.join("mnt");
    let scratch = ctx.dir.join("root");
    let policy = &opts.policy;
    // The gateway (CA, roots, secrets) is made while the workspace mounts.
    let net = if crate::network::enabled(policy) {
        let policy_dir = opts
            .policy_path
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_else(|| project.to_path_buf());
        Some(crate::network::prepare(
            policy,
            &policy_dir,
            &id,
            &ctx.placeholder_nonce,
            &ctx.dir,
            sink.clone(),
        )?)
    } else {
        None
    };
    let mounted = mounting.wait()?;
    tracing::debug!("workspace mounted");

    let home = opts
        .host_env
        .iter()
        .find(|(k, _)| k == "HOME")
        .map(|(_, v)| PathBuf::from(v))
        .filter(|p| p.is_absolute() && p != Path::new("/"))
        .unwrap_or_else(|| PathBuf::from("/home/agent"));
    // Expand hidden and read-only patterns against the agent's view: a new
    // workspace shows exactly the project, so the project is read directly; a
    // resumed one is read from its store and base in-process (a FUSE lookup
    // only for matches that are symlinks, resolved the way the agent will).
    let resumed_view = match (fresh, view_conn) {
        (true, _) => None,
        (false, Some(conn)) => Some(ws.view_on(conn)?),
        (false, None) => Some(ws.open_view(true)?),
    };
    // One walk per list, whatever the number of patterns in it.
    let expand = |patterns: &[&str]| -> Vec<PathBuf> {
        match &resumed_view {
            None => protected(project, project, patterns),
            Some((store, base)) => {
                let mut out = Vec::new();
                for (rel, kind) in crate::glob::expand_view(store, base, patterns) {
                    if kind == libc::S_IFLNK {
                        // Resolve the link the way the agent will, through the view.
                        protect(&mnt, project, &mnt.join(&rel), &mut out);
                    } else {
                        out.push(project.join(rel));
                    }
                }
                out
            }
        }
    };
    let mut read_only = expand(&policy.workspace.effective_read_only());
    if let Some(pp) = &opts.policy_path
        && let Ok(pp) = pp.canonicalize()
        && let Ok(rel) = pp.strip_prefix(project)
    {
        // The agent must not rewrite the rules it runs under (for a resumed
        // session the host file is read again anyway; this keeps it honest
        // inside the run too).
        for p in [rel.to_path_buf(), cordon_policy::signature_path(rel)] {
            read_only.extend(expand(&[&p.to_string_lossy()]));
        }
    }
    let hidden = expand(&policy.workspace.effective_hidden());

    let mut mounts = Vec::new();
    for m in &policy.mounts {
        if !m.source.exists() {
            if m.optional {
                continue;
            }
            return Err(SessionError::Invalid(format!(
                "mount source {} does not exist; create it or mark the mount `optional = true`",
                m.source.display()
            )));
        }
        mounts.push(BindMount {
            source: m.source.clone(),
            target: m.target_path().to_path_buf(),
            writable: m.writable,
        });
    }
    if let Some(net) = &net {
        mounts.extend(net.mounts.iter().cloned());
    }
    let cwd = if opts.cwd.starts_with(project) {
        opts.cwd.clone()
    } else {
        project.to_path_buf()
    };
    let mut env = build_env(
        policy,
        &opts.host_env,
        &id,
        ctx.placeholder_nonce.as_bytes(),
        &home,
        opts.terminal,
        opts.backend,
    );
    if let Some(net) = &net {
        for (k, v) in &net.env {
            env.retain(|(n, _)| n != k);
            env.push((k.clone(), v.clone()));
        }
    }
    let spec = SandboxSpec {
        session: id.clone(),
        argv: opts.argv.clone(),
        env,
        cwd,
        hostname: policy.sandbox.hostname.clone(),
        workspace: WorkspaceMount {
            source: mnt.clone(),
            target: project.to_path_buf(),
            read_only,
            hidden,
        },
        mounts,
        home,
        limits: limits.clone(),
        scratch,
        network: if net.is_some() {
            crate::NetworkMode::Gateway
        } else {
            crate::NetworkMode::Loopback
        },
    };
    sink.append(
        kind::POLICY_DECISION,
        obj(json!({
            "read_only": spec.workspace.read_only,
            "hidden": spec.workspace.hidden,
            "mounts": spec.mounts,
            "env": spec.env.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            "network": if net.is_some() {
                json!({
                    "allow": policy.network.allow.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
                    "deny": policy.network.deny.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
                    "on_unknown": policy.network.on_unknown,
                    "passthrough": policy.network.passthrough.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
                    "secrets": policy.secrets.keys().collect::<Vec<_>>(),
                    "rules": policy.rules.len(),
                })
            } else {
                json!("none (loopback only)")
            },
        })),
    );

    let backend: Box<dyn crate::Backend> = match (opts.backend, &opts.helper) {
        (BackendKind::Native, Some(h)) => Box::new(crate::native::Native::with_helper(h.clone())),
        (k, _) => crate::backend(k),
    };
    // Output budget: the relay kills the sandbox when it is exceeded.
    let stop_reason: Arc<Mutex<Option<(LimitKind, String)>>> = Arc::new(Mutex::new(None));
    let control_slot: Arc<Mutex<Option<Arc<dyn crate::Control>>>> = Arc::new(Mutex::new(None));
    let budget = {
        let stop = stop_reason.clone();
        let slot = control_slot.clone();
        let sink = sink.clone();
        let limit = limits.output;
        Arc::new(crate::stdio::Budget {
            limit,
            used: AtomicU64::new(0),
            exceeded: AtomicBool::new(false),
            over: Box::new(move || {
                sink.append(kind::LIMIT_OUTPUT, obj(json!({ "limit": limit })));
                if let Ok(mut s) = stop.lock() {
                    s.get_or_insert((
                        LimitKind::Output,
                        format!("output exceeded {} bytes", limit.unwrap_or(0)),
                    ));
                }
                if let Some(c) = slot.lock().ok().and_then(|g| g.clone()) {
                    c.kill();
                }
            }),
        })
    };
    let (stdio, pipe_relay) = match opts.terminal.then(crate::stdio::size).flatten() {
        Some((rows, cols)) => (crate::Stdio::Terminal { rows, cols }, None),
        None => {
            let (s, r) = crate::stdio::pipes(budget.clone())
                .map_err(io("cannot set up the output pipes"))?;
            (s, Some(r))
        }
    };
    // A resumed session's earlier log must be intact before the agent runs;
    // until now its new events were held back (EventLog::resume).
    sink.log.verified()?;
    let sink_dyn: Arc<dyn EventSink> = sink.clone();
    tracing::debug!("starting the backend");
    let mut running = match backend.start(&spec, stdio, sink_dyn) {
        Ok(r) => r,
        Err(e) => {
            drop(pipe_relay);
            return Err(e.into());
        }
    };
    ctx.agent_started.set(true);
    let control = running.control();
    // The gateway goes live on the interface the sandbox handed out. Frames
    // the agent sends before this wait in the TAP device's queue.
    let net_budget = net.as_ref().map(|n| n.budget.clone());
    let gateway = match net {
        None => None,
        Some(net) => {
            let attached = running
                .network_link()
                .ok_or_else(|| SessionError::Invalid("the sandbox has no network link".into()))
                .and_then(|fd| {
                    net.prepared
                        .attach(
                            cordon_net::stack::Link::Tap(fd),
                            &ctx.dir.join(cordon_net::control::SOCKET_FILE),
                        )
                        .map_err(io("cannot start the network gateway"))
                });
            match attached {
                Ok(a) => Some(a),
                Err(e) => {
                    control.kill();
                    let _ = running.wait();
                    return Err(e);
                }
            }
        }
    };
    tracing::debug!("gateway attached");
    tracing::debug!("agent started");
    // From here the output budget can stop the sandbox; output that arrived
    // before this point and overran the budget stops it now.
    if let Ok(mut g) = control_slot.lock() {
        *g = Some(control.clone());
    }
    if let Some(m) = &sink.monitor {
        m.set_control(control.clone());
    }
    if budget.exceeded.load(Ordering::Relaxed) {
        control.kill();
    }
    let (relay, master) = match (pipe_relay, running.terminal()) {
        (Some(r), _) => (r, None),
        (None, Some(m)) => match crate::stdio::terminal(m, budget.clone()) {
            Ok((r, m)) => (r, Some(m)),
            Err(e) => {
                control.kill();
                let _ = running.wait();
                return Err(io("cannot put the terminal in raw mode")(e));
            }
        },
        (None, None) => {
            control.kill();
            let _ = running.wait();
            return Err(SessionError::Invalid(
                "the sandbox did not provide a terminal".into(),
            ));
        }
    };
    // Wall-clock timeout: TERM, a short grace, then KILL.
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let timer = limits.timeout.map(|t| {
        let control = control.clone();
        let stop = stop_reason.clone();
        let sink = sink.clone();
        std::thread::spawn(move || {
            if done_rx.recv_timeout(t) != Err(mpsc::RecvTimeoutError::Timeout) {
                return;
            }
            sink.append(
                kind::LIMIT_TIMEOUT,
                obj(json!({ "timeout_s": t.as_secs_f64() })),
            );
            if let Ok(mut s) = stop.lock() {
                s.get_or_insert((
                    LimitKind::Timeout,
                    format!(
                        "timed out after {}",
                        cordon_policy::values::format_duration(t)
                    ),
                ));
            }
            control.signal(libc::SIGTERM);
            if done_rx.recv_timeout(Duration::from_secs(2)) == Err(mpsc::RecvTimeoutError::Timeout)
            {
                control.kill();
            }
        })
    });
    // The user's signals go to the agent (those that came during start-up
    // were queued and go now); a terminal resize goes to its pty.
    let signals = ctx.signals.lock().ok().and_then(|mut s| s.take());
    let sig_handle = signals.as_ref().map(|s| s.handle());
    let sig_thread = signals.map(|mut signals| {
        let control = control.clone();
        let sink = sink.clone();
        std::thread::spawn(move || {
            for sig in signals.forever() {
                if sig == libc::SIGWINCH {
                    if let Some(m) = &master {
                        crate::stdio::resize(m);
                    }
                    continue;
                }
                sink.append(kind::SIGNAL_FORWARDED, obj(json!({ "signal": sig })));
                control.signal(sig);
            }
        })
    });

    let ended = running.wait();
    tracing::debug!("sandbox ended");
    drop(done_tx);
    if let Some(t) = timer {
        let _ = t.join();
    }
    if let Some(h) = sig_handle {
        h.close();
    }
    if let Some(t) = sig_thread {
        let _ = t.join();
    }
    relay.finish();
    let net_stats = gateway.map(|g| g.shutdown());
    let net_suppressed = net_budget.map_or(0, |b| {
        b.close();
        b.suppressed()
    });
    tracing::debug!("agent ended; gateway stopped");
    let ended = ended?;
    let events_suppressed = ended.events_suppressed + net_suppressed;
    let unmounted = mounted.unmount();

    let mut limits_hit = ended.limits.clone();
    let stopped = stop_reason.lock().ok().and_then(|g| g.clone());
    // A monitor rule that killed the sandbox is the reason, not what followed.
    let monitor_stop = sink.monitor.as_ref().and_then(|m| {
        m.finish(Duration::from_secs(5));
        m.killed_by()
    });
    if let Some((kind, _)) = &stopped
        && !limits_hit.contains(kind)
    {
        limits_hit.push(*kind);
    }
    if quota.as_ref().is_some_and(|q| q.hit()) {
        limits_hit.push(LimitKind::Disk);
        sink.append(
            kind::LIMIT_DISK,
            obj(json!({ "limit": limits.disk, "used": quota.as_ref().map(|q| q.used()) })),
        );
    }
    for l in &ended.limits {
        let detail = match l {
            LimitKind::Memory => json!({ "limit": limits.memory }),
            LimitKind::Pids => json!({ "limit": limits.pids }),
            LimitKind::Cpu => json!({ "limit_cpus": limits.cpus, "note": "throttled" }),
            _ => json!({}),
        };
        sink.append(&format!("limit.{}", l.name()), obj(detail));
    }
    unmounted?;
    // What changed, for the summary.
    let (mut added, mut modified, mut deleted) = (0, 0, 0);
    let view = match resumed_view {
        Some(v) => Ok(v),
        None => ws.open_view(true),
    };
    if let Ok((store, base)) = view {
        let view = cordon_fs::changes::View {
            store: &store,
            base: &base,
        };
        if let Ok(changes) = cordon_fs::changes::compute(&view, &[]) {
            for c in &changes {
                match c.kind {
                    cordon_fs::changes::ChangeKind::Added => added += 1,
                    cordon_fs::changes::ChangeKind::Deleted => deleted += 1,
                    _ => modified += 1,
                }
            }
        }
    }
    sink.append(
        kind::SESSION_END,
        obj(json!({
            "exit_code": ended.code,
            "signal": ended.signal,
            "limits_hit": limits_hit,
            "stopped": monitor_stop.as_ref().or(stopped.as_ref().map(|(_, why)| why)),
            "files_changed": added + modified + deleted,
            "output_bytes": budget.used.load(Ordering::Relaxed),
            "events_suppressed": events_suppressed,
            "network": net_stats,
        })),
    );
    sink.log.sync()?;
    if sink.failures.load(Ordering::Relaxed) > 0 {
        let why = sink
            .last_error
            .lock()
            .ok()
            .and_then(|g| g.clone())
            .unwrap_or_default();
        return Err(SessionError::Invalid(format!(
            "{} events could not be written to the session log ({why})",
            sink.failures.load(Ordering::Relaxed)
        )));
    }
    let stats = sink.log.stats();
    Ok(Summary {
        session: id,
        backend: opts.backend,
        exit_code: ended.code,
        signal: ended.signal,
        stopped: monitor_stop.or(stopped.map(|(_, why)| why)),
        duration_ms: started.elapsed().as_millis() as u64,
        files_changed: added + modified + deleted,
        added,
        modified,
        deleted,
        events: stats.events,
        events_suppressed,
        violations: stats.violations,
        limits_hit,
        limit_enforcement: ended.enforcement,
        network: net_stats,
    })
}
