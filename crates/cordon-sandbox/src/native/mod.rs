//! The `native` backend: Linux namespaces, `pivot_root`, Landlock, seccomp-bpf
//! and cgroups, with no external dependency.
//!
//! The host side (this module) prepares cgroups, starts stage 1 (the `cordon`
//! binary re-executed, see [`init`]) inside new user, mount, PID, network, IPC,
//! UTS and cgroup namespaces, sends it the spec over a `SOCK_SEQPACKET` control
//! socket, receives the seccomp listener and runs the [`seccomp::Supervisor`].
//! [`Native::start`] returns only after the agent's filters are installed.
//!
//! Rootless: the first user namespace maps the invoking user to root (one id,
//! which an unprivileged process may write for itself), so the same code path
//! runs for root and for ordinary users. Only cgroups differ: without a writable
//! cgroup the limits fall back to rlimits (see [`cgroup`]).

pub mod cgroup;
pub mod init;
pub mod seccomp;

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::{
    Backend, BackendKind, Control, Ended, Error, EventSink, Result, Running, SandboxSpec, Stdio,
};
use cgroup::{Cgroups, Enforcement};
pub use init::{STAGE1_ARG, stage1_main};

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
        let with_cgroup = matches!(enforcement, Enforcement::Cgroup(_));
        let procs = match &enforcement {
            Enforcement::Cgroup(c) => c
                .procs_files()
                .map_err(|e| Error::io("cannot open the session cgroup", e))?,
            Enforcement::Rlimits(_) => Vec::new(),
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
            rlimits: cgroup::rlimits(&spec.limits, with_cgroup),
        };
        let cfg_bytes = serde_json::to_vec(&cfg).map_err(|e| Error::Spec(e.to_string()))?;
        let (host_ctl, child_ctl) = crate::sys::socketpair_seqpacket()
            .map_err(|e| Error::io("cannot create the control socket", e))?;

        let mut cmd = Command::new(&helper);
        cmd.arg(init::STAGE1_ARG).env_clear();
        match stdio {
            Stdio::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                cmd.stdin(stdin).stdout(stdout).stderr(stderr);
            }
            Stdio::Terminal { .. } => {
                // The agent's terminal is made inside; nothing of the host's
                // goes in, not even its stderr.
                cmd.stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null());
            }
        }
        // Everything the child does before exec is prepared here: it may not
        // allocate (the parent has other threads).
        let setgroups = CString::new("/proc/self/setgroups").expect("static");
        let uid_map = CString::new("/proc/self/uid_map").expect("static");
        let gid_map = CString::new("/proc/self/gid_map").expect("static");
        let uid_line = format!("0 {uid} 1");
        let gid_line = format!("0 {gid} 1");
        let ctl_raw = child_ctl.as_raw_fd();
        let proc_raw: Vec<i32> = procs.iter().map(|f| f.as_raw_fd()).collect();
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls on data prepared above.
        unsafe {
            cmd.pre_exec(move || {
                let fail = || Err(std::io::Error::last_os_error());
                if libc::setsid() < 0 {
                    return fail();
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return fail();
                }
                for fd in &proc_raw {
                    if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                        return fail();
                    }
                }
                if libc::unshare(libc::CLONE_NEWUSER) < 0 {
                    return fail();
                }
                for (path, line) in [
                    (&setgroups, "deny"),
                    (&uid_map, uid_line.as_str()),
                    (&gid_map, gid_line.as_str()),
                ] {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return fail();
                    }
                    let n = libc::write(fd, line.as_ptr().cast(), line.len());
                    libc::close(fd);
                    if n != line.len() as isize {
                        return fail();
                    }
                }
                let ns = libc::CLONE_NEWNS
                    | libc::CLONE_NEWPID
                    | libc::CLONE_NEWNET
                    | libc::CLONE_NEWIPC
                    | libc::CLONE_NEWUTS
                    | libc::CLONE_NEWCGROUP;
                if libc::unshare(ns) < 0 {
                    return fail();
                }
                if libc::dup2(ctl_raw, init::CTL_FD) < 0 {
                    return fail();
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            if let Enforcement::Cgroup(c) = &enforcement {
                c.remove();
            }
            Error::Setup(format!("cannot start the sandbox (namespaces): {e}"))
        })?;
        drop(child_ctl);
        drop(procs);
        let init_pid = Arc::new(AtomicI32::new(0));
        let mut running = NativeRunning {
            control: Arc::new(NativeControl {
                init_pid: init_pid.clone(),
                stage1: child.id() as i32,
                ended: Default::default(),
            }),
            child,
            init_pid,
            enforcement,
            supervisor: None,
            terminal: None,
        };
        if let Err(e) = crate::sys::send_msg(host_ctl.as_fd(), &cfg_bytes, None) {
            running.kill();
            let _ = running.child.wait();
            running.cleanup();
            return Err(Error::io("cannot send the sandbox configuration", e));
        }
        // Wait for the listener (the agent is about to exec) or an error.
        let mut buf = vec![0u8; 64 * 1024];
        let outcome: std::result::Result<OwnedFd, String> = loop {
            match crate::sys::recv_msg(host_ctl.as_fd(), &mut buf) {
                Ok(Some((n, fd))) => match serde_json::from_slice::<init::Msg>(&buf[..n]) {
                    Ok(init::Msg::Init { pid }) => running.init_pid.store(pid, Ordering::SeqCst),
                    Ok(init::Msg::Terminal) => running.terminal = fd,
                    Ok(init::Msg::Error { msg }) => break Err(msg),
                    Ok(init::Msg::Seccomp) => match fd {
                        Some(fd) => break Ok(fd),
                        None => break Err("the seccomp listener did not arrive".into()),
                    },
                    Err(e) => break Err(format!("unreadable message from the sandbox: {e}")),
                },
                Ok(None) => break Err("the sandbox ended during setup".into()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(format!("control socket: {e}")),
            }
        };
        match outcome {
            Ok(listener) => {
                let sup = seccomp::Supervisor {
                    listener,
                    events: events.clone(),
                    counters: Arc::new(seccomp::Counters::default()),
                };
                running.supervisor = Some(std::thread::spawn(move || sup.run()));
                Ok(Box::new(running))
            }
            Err(msg) => {
                running.kill();
                let _ = running.child.wait();
                running.cleanup();
                Err(Error::Setup(msg))
            }
        }
    }
}

struct NativeRunning {
    child: Child,
    init_pid: Arc<AtomicI32>,
    control: Arc<NativeControl>,
    enforcement: Enforcement,
    supervisor: Option<std::thread::JoinHandle<()>>,
    terminal: Option<OwnedFd>,
}

impl NativeRunning {
    fn cleanup(&mut self) {
        if let Enforcement::Cgroup(c) = &self.enforcement {
            c.kill_all();
            c.remove();
        }
    }
}

struct NativeControl {
    init_pid: Arc<AtomicI32>,
    stage1: i32,
    /// Set once stage 1 has been reaped: its pid may be reused from then on.
    ended: std::sync::atomic::AtomicBool,
}

impl NativeRunning {
    fn kill(&self) {
        self.control.kill();
    }
}

impl Control for NativeControl {
    fn signal(&self, signal: i32) {
        let pid = self.init_pid.load(Ordering::SeqCst);
        if pid > 0 && !self.ended.load(Ordering::SeqCst) {
            // SAFETY: kill(2) to the sandbox's init, which forwards to the agent.
            unsafe { libc::kill(pid, signal) };
        }
    }

    fn kill(&self) {
        if self.ended.load(Ordering::SeqCst) {
            return;
        }
        let pid = self.init_pid.load(Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: SIGKILL to PID 1 of the sandbox ends its whole PID namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // SAFETY: stage 1 is our child (not yet reaped while a Control exists for
        // a running sandbox); killing it too is harmless.
        unsafe { libc::kill(self.stage1, libc::SIGKILL) };
    }
}

impl Running for NativeRunning {
    fn control(&self) -> Arc<dyn Control> {
        self.control.clone()
    }

    fn terminal(&mut self) -> Option<OwnedFd> {
        self.terminal.take()
    }

    fn wait(&mut self) -> Result<Ended> {
        let status = loop {
            match self.child.wait() {
                Ok(s) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("waiting for the sandbox", e)),
            }
        };
        self.control.ended.store(true, Ordering::SeqCst);
        use std::os::unix::process::ExitStatusExt;
        let code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        let signal = (code > 128 && code < 128 + 65).then_some(code - 128);
        let limits = match &self.enforcement {
            Enforcement::Cgroup(c) => c.hits(),
            Enforcement::Rlimits(_) => Vec::new(),
        };
        let enforcement = self.enforcement.describe();
        self.cleanup();
        if let Some(s) = self.supervisor.take() {
            // The listener reports hang-up once no process holds the filter.
            let _ = s.join();
        }
        Ok(Ended {
            code,
            signal,
            limits,
            enforcement,
        })
    }
}
