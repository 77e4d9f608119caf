//! The `native` backend: Linux namespaces, `pivot_root`, Landlock, seccomp-bpf
//! and cgroups, with no external dependency.
//!
//! The host side (this module) prepares cgroups, starts stage 1 (the `cordon`
//! binary re-executed, see [`init`]; spawned without forking this process,
//! possibly ahead of time by [`prepare`]), sends it its configuration and the
//! agent's streams over a `SOCK_SEQPACKET` control socket, receives the seccomp
//! listener and runs the [`seccomp::Supervisor`]. Stage 1 enters the
//! namespaces itself. [`Native::start`] returns only after the agent's filters
//! are installed; the init later reports on the same socket the processes a
//! signal ended and how the agent ended, which the supervisor thread reads.
//!
//! Rootless: the first user namespace maps the invoking user to root (one id,
//! which an unprivileged process may write for itself), so the same code path
//! runs for root and for ordinary users. Only cgroups differ: without a writable
//! cgroup the limits fall back to rlimits (see [`cgroup`]).

pub mod cgroup;
pub mod init;
pub mod seccomp;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::{
    Backend, BackendKind, Control, Ended, Error, EventSink, Result, Running, SandboxSpec, Stdio,
};
use cgroup::{Cgroups, Enforcement};
pub use init::{STAGE1_ARG, stage1_main};

type EtcScan = std::thread::JoinHandle<Vec<(PathBuf, bool)>>;
/// A stage 1 started ahead of time by [`prepare`]: the helper path, the child
/// and the host's end of its control socket.
type Prespawned = (PathBuf, Child, OwnedFd);
static PRESPAWNED: std::sync::Mutex<Option<Prespawned>> = std::sync::Mutex::new(None);

/// Start stage 1 (`helper __cordon-sandbox-init FD`) with /dev/null for its
/// standard streams; it waits for its configuration on the control socket.
///
/// No pre_exec: that would make std fork this (large, threaded) process;
/// without it the child is spawned with vfork semantics, and stage 1 — a
/// fresh, small, single-threaded process — joins the cgroups and unshares the
/// namespaces itself. The control socket is the one descriptor it inherits;
/// stage 1 closes everything else.
fn spawn_stage1(helper: &Path) -> Result<(Child, OwnedFd)> {
    let (host_ctl, child_ctl) = crate::sys::socketpair_seqpacket()
        .map_err(|e| Error::io("cannot create the control socket", e))?;
    rustix::io::fcntl_setfd(&child_ctl, rustix::io::FdFlags::empty())
        .map_err(|e| Error::io("cannot pass the control socket", e.into()))?;
    let child = Command::new(helper)
        .arg(init::STAGE1_ARG)
        .arg(child_ctl.as_raw_fd().to_string())
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| Error::Setup(format!("cannot start {}: {e}", helper.display())))?;
    Ok((child, host_ctl))
}

fn take_prespawned(helper: &Path) -> Option<(Child, OwnedFd)> {
    let (h, mut child, ctl) = PRESPAWNED.lock().ok()?.take()?;
    if h == helper && matches!(child.try_wait(), Ok(None)) {
        Some((child, ctl))
    } else {
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}
static ETC_SCAN: std::sync::Mutex<Option<EtcScan>> = std::sync::Mutex::new(None);

/// Start the host-side work the native backend will need while the session
/// prepares the workspace: stage 1 (its exec and runtime start), and, when
/// running as root, the scan of /etc for root-only files on a thread.
/// Optional: `start` does the work itself if this was not called.
pub fn prepare(helper: Option<&Path>) {
    let helper = match helper {
        Some(h) => h.to_path_buf(),
        None => match std::env::current_exe() {
            Ok(h) => h,
            Err(_) => return,
        },
    };
    if let Ok(mut slot) = PRESPAWNED.lock()
        && slot.is_none()
        && let Ok((child, ctl)) = spawn_stage1(&helper)
    {
        *slot = Some((helper, child, ctl));
    }
    if !rustix::process::geteuid().is_root() {
        return;
    }
    if let Ok(mut slot) = ETC_SCAN.lock()
        && slot.is_none()
    {
        *slot = Some(std::thread::spawn(init::etc_private));
    }
}

fn take_etc_scan() -> Vec<(PathBuf, bool)> {
    let pending = ETC_SCAN.lock().ok().and_then(|mut s| s.take());
    match pending {
        Some(h) => h.join().unwrap_or_else(|_| init::etc_private()),
        None => init::etc_private(),
    }
}

/// The native backend. `helper` is the executable re-run as stage 1 (the
/// `cordon` binary itself, which must dispatch [`STAGE1_ARG`] to
/// [`stage1_main`] before doing anything else).
pub struct Native {
    helper: Option<PathBuf>,
}

impl Native {
    pub fn new() -> Self {
        Native { helper: None }
    }

    pub fn with_helper(helper: PathBuf) -> Self {
        Native {
            helper: Some(helper),
        }
    }
}

impl Default for Native {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for Native {
    fn kind(&self) -> BackendKind {
        BackendKind::Native
    }

    fn available(&self) -> std::result::Result<(), String> {
        crate::doctor::native_ready()
    }

    fn start(
        &self,
        spec: &SandboxSpec,
        stdio: Stdio,
        events: Arc<dyn EventSink>,
    ) -> Result<Box<dyn Running>> {
        spec.validate()?;
        let helper = match &self.helper {
            Some(h) => h.clone(),
            None => std::env::current_exe()
                .map_err(|e| Error::io("cannot find the cordon executable", e))?,
        };
        let enforcement = Cgroups::create(&spec.session, &spec.limits);
        let uid0 = rustix::process::geteuid().is_root();
        if let Enforcement::Rlimits(why) = &enforcement {
            // Fail closed: a limit the user asked for must hold. rlimits cannot
            // cap CPU, and the kernel exempts uid 0 from RLIMIT_NPROC.
            let unenforceable = if spec.limits.cpus.is_some() {
                Some("cpus")
            } else if uid0 && spec.limits.pids.is_some() {
                Some("pids")
            } else {
                None
            };
            if let Some(what) = unenforceable {
                return Err(Error::Setup(format!(
                    "the {what} limit cannot be enforced without a cgroup ({why}); give this user a \
                     delegated cgroup (systemd-run --user --scope -p Delegate=yes) or remove the limit"
                )));
            }
        }
        let with_cgroup = matches!(enforcement, Enforcement::Cgroup(_));
        let enforcement_text = match &enforcement {
            Enforcement::Rlimits(_) => {
                format!(
                    "{}: {}",
                    enforcement.describe(),
                    cgroup::rlimit_scope(&spec.limits)
                )
            }
            _ => enforcement.describe(),
        };
        let cgroup_procs = match &enforcement {
            Enforcement::Cgroup(c) => c.procs_paths(),
            Enforcement::Rlimits(_) | Enforcement::Unlimited => Vec::new(),
        };
        let uid = rustix::process::geteuid().as_raw();
        let gid = rustix::process::getegid().as_raw();
        let tty = match stdio {
            Stdio::Terminal { rows, cols } => Some((rows, cols)),
            Stdio::Pipes { .. } => None,
        };
        let cfg = init::InitConfig {
            spec: spec.clone(),
            uid,
            gid,
            tty,
            cgroup_procs,
            etc_private: if uid0 { take_etc_scan() } else { Vec::new() },
            etc_scanned: uid0,
            rlimits: cgroup::rlimits(&spec.limits, with_cgroup),
        };
        // The configuration travels in a memfd: a socket message is capped at
        // the socket buffer (about 208 KiB), a long environment or /etc list
        // is not.
        let config = config_memfd(&cfg)?;
        let (child, host_ctl) = match take_prespawned(&helper) {
            Some(p) => p,
            None => spawn_stage1(&helper)?,
        };
        let mut fds: Vec<OwnedFd> = vec![config];
        match stdio {
            Stdio::Pipes {
                stdin,
                stdout,
                stderr,
            } => fds.extend([stdin, stdout, stderr]),
            // The agent's terminal is made inside; nothing of the host's goes
            // in, not even its stderr: stage 1 keeps its /dev/null.
            Stdio::Terminal { .. } => {}
        }
        tracing::debug!(pid = child.id(), "stage 1 spawned");
        let mut running = NativeRunning {
            control: Arc::new(NativeControl {
                stage1: rustix::process::Pid::from_raw(child.id() as i32).and_then(|p| {
                    rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
                }),
            }),
            child,
            host_ctl,
            enforcement,
            enforcement_text,
            supervisor: None,
            terminal: None,
            link: None,
            counters: Default::default(),
            agent_end: Default::default(),
        };
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        let sent = crate::sys::send_msg_fds(running.host_ctl.as_fd(), b"config", &borrowed);
        drop(fds);
        if let Err(e) = sent {
            running.abort();
            return Err(Error::io("cannot send the sandbox configuration", e));
        }
        // Wait for the listener (the agent is about to exec) or an error.
        let mut buf = vec![0u8; 64 * 1024];
        let outcome: std::result::Result<(OwnedFd, String), String> = loop {
            match crate::sys::recv_msg(running.host_ctl.as_fd(), &mut buf) {
                Ok(Some((n, fd))) => match serde_json::from_slice::<init::Msg>(&buf[..n]) {
                    Ok(init::Msg::Terminal) => running.terminal = fd,
                    Ok(init::Msg::Tap) => running.link = fd,
                    Ok(init::Msg::Error { msg }) => break Err(msg),
                    Ok(init::Msg::Seccomp { landlock }) => match fd {
                        Some(fd) => break Ok((fd, landlock)),
                        None => break Err("the seccomp listener did not arrive".into()),
                    },
                    Ok(init::Msg::Exit { .. } | init::Msg::Killed { .. }) => {
                        break Err("the agent ended before it started".into());
                    }
                    Err(e) => break Err(format!("unreadable message from the sandbox: {e}")),
                },
                Ok(None) => break Err("the sandbox ended during setup".into()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(format!("control socket: {e}")),
            }
        };
        let (listener, landlock) = match outcome {
            Ok(got) => got,
            Err(msg) => {
                running.abort();
                return Err(Error::Setup(msg));
            }
        };
        tracing::debug!("seccomp listener received");
        // The supervisor first: the agent's first execve waits for it.
        let init_reports = match running.host_ctl.try_clone() {
            Ok(fd) => fd,
            Err(e) => {
                running.abort();
                return Err(Error::io("cannot share the control socket", e));
            }
        };
        let sup = seccomp::Supervisor {
            listener,
            events: events.clone(),
            counters: running.counters.clone(),
            watched: spec
                .workspace
                .read_only
                .iter()
                .chain(&spec.workspace.hidden)
                .cloned()
                .collect(),
            writable: init::writable_places(spec),
            init_reports,
            agent_end: running.agent_end.clone(),
        };
        running.supervisor = Some(std::thread::spawn(move || sup.run()));
        let mut ready = serde_json::Map::new();
        ready.insert("backend".into(), "native".into());
        ready.insert("landlock".into(), landlock.into());
        ready.insert("seccomp".into(), "user notification + deny-list".into());
        ready.insert("limits".into(), running.enforcement_text.clone().into());
        ready.insert(
            "network".into(),
            match spec.network {
                crate::NetworkMode::Loopback => "loopback only",
                crate::NetworkMode::Gateway => "gateway (tap eth0)",
            }
            .into(),
        );
        if spec.network == crate::NetworkMode::Gateway && running.link.is_none() {
            running.abort();
            return Err(Error::Setup(
                "the sandbox's network interface did not arrive".into(),
            ));
        }
        events.event(cordon_events::kind::SANDBOX_READY, ready);
        Ok(Box::new(running))
    }
}

/// The configuration as a sealed-size anonymous file stage 1 reads.
fn config_memfd(cfg: &init::InitConfig) -> Result<OwnedFd> {
    use std::io::{Seek, Write};
    let bytes = serde_json::to_vec(cfg).map_err(|e| Error::Spec(e.to_string()))?;
    if bytes.len() as u64 > init::MAX_CONFIG {
        return Err(Error::Spec(format!(
            "the sandbox configuration is {} bytes, more than the {} stage 1 accepts",
            bytes.len(),
            init::MAX_CONFIG
        )));
    }
    let fd = rustix::fs::memfd_create("cordon-config", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| Error::io("cannot create the configuration file", e.into()))?;
    let mut file = std::fs::File::from(fd);
    file.write_all(&bytes)
        .and_then(|()| file.rewind())
        .map_err(|e| Error::io("cannot write the configuration file", e))?;
    Ok(file.into())
}

struct NativeRunning {
    child: Child,
    /// Kept after start: the init reports the agent's end on it.
    host_ctl: OwnedFd,
    control: Arc<NativeControl>,
    enforcement: Enforcement,
    /// How limits are enforced, as the summary says it: for rlimits, each
    /// one's scope and whether its hits are seen.
    enforcement_text: String,
    supervisor: Option<std::thread::JoinHandle<()>>,
    terminal: Option<OwnedFd>,
    /// The TAP device's descriptor, until the session takes it.
    link: Option<OwnedFd>,
    counters: Arc<seccomp::Counters>,
    /// Filled by the supervisor from the init's last report.
    agent_end: Arc<std::sync::Mutex<Option<seccomp::AgentEnd>>>,
}

impl NativeRunning {
    /// Stop a sandbox that failed to start (its cgroups go with `enforcement`).
    fn abort(&mut self) {
        self.control.kill();
        let _ = self.child.wait();
    }
}

/// Signals go to stage 1 through a pidfd (no pid-reuse race, whatever the
/// timing of reaping); stage 1 forwards them to the init, the init to the
/// agent. SIGKILL to stage 1 takes the init down with it (parent-death
/// signal), and with the init the whole PID namespace.
struct NativeControl {
    stage1: Option<OwnedFd>,
}

impl NativeControl {
    fn send(&self, signal: i32) {
        let Some(fd) = &self.stage1 else { return };
        if let Some(sig) = rustix::process::Signal::from_named_raw(signal) {
            let _ = rustix::process::pidfd_send_signal(fd, sig);
        }
    }
}

impl Control for NativeControl {
    fn signal(&self, signal: i32) {
        self.send(signal);
    }

    fn kill(&self) {
        self.send(libc::SIGKILL);
    }
}

impl Running for NativeRunning {
    fn control(&self) -> Arc<dyn Control> {
        self.control.clone()
    }

    fn terminal(&mut self) -> Option<OwnedFd> {
        self.terminal.take()
    }

    fn network_link(&mut self) -> Option<OwnedFd> {
        self.link.take()
    }

    fn wait(&mut self) -> Result<Ended> {
        let status = loop {
            match self.child.wait() {
                Ok(s) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("waiting for the sandbox", e)),
            }
        };
        use std::os::unix::process::ExitStatusExt;
        let cgroup_hits = match &self.enforcement {
            Enforcement::Cgroup(c) => {
                let hits = c.hits();
                c.kill_all();
                Some(hits)
            }
            _ => None,
        };
        if let Some(s) = self.supervisor.take() {
            // It ends once no process holds the filter (the listener hangs
            // up) and the init's last report came (or the init is gone).
            let _ = s.join();
        }
        let reported = self.agent_end.lock().ok().and_then(|mut e| e.take());
        let (code, signal, rlimits_reached) = match reported {
            Some(e) => (e.code, e.signal, e.limits),
            // The init did not report (the sandbox was killed as a whole):
            // stage 1's status says how.
            None => match (status.code(), status.signal()) {
                (Some(c), _) => (c, None, Vec::new()),
                (None, Some(sig)) => (128 + sig, Some(sig), Vec::new()),
                (None, None) => (128, None, Vec::new()),
            },
        };
        let limits = match &self.enforcement {
            Enforcement::Cgroup(_) => cgroup_hits.unwrap_or_default(),
            Enforcement::Rlimits(_) => rlimits_reached,
            Enforcement::Unlimited => Vec::new(),
        };
        let enforcement = self.enforcement_text.clone();
        Ok(Ended {
            code,
            signal,
            limits,
            enforcement,
            events_suppressed: self.counters.suppressed.load(Ordering::Relaxed),
        })
    }
}
