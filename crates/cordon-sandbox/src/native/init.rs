//! What runs inside the native sandbox: stage 1, the init (PID 1) and the agent
//! launcher.
//!
//! Stage 1 is `cordon` re-executed by the host (`__cordon-sandbox-init FD`,
//! possibly before the session is ready). It keeps only the control socket,
//! receives its configuration (a memfd) and the agent's standard streams, joins
//! the session's cgroups, enters a new user namespace (uid 0 there = the
//! invoking user outside), then new mount, PID, network, IPC, UTS and cgroup
//! namespaces. Because `unshare(CLONE_NEWPID)` only moves the caller's
//! *children*, stage 1 forks the init, forwards signals to it, waits for it and
//! exits with its status.
//!
//! The init builds the new root (see [`setup_root`]), pivots into it, forks the
//! agent, forwards signals to it, reaps every orphan (reporting to the host
//! each that a signal ended: it never called `exit_group`, so the seccomp
//! supervisor did not see it end). When the agent ends, the init kills and
//! reaps whatever is left (reporting those too), reports the agent's end and
//! exits with its status. Under a pids rlimit (no cgroup) it also watches the
//! agent's task count, the one sign of that limit it can see.
//!
//! The agent process enters one more user namespace that maps the invoking user's
//! ids onto the outer namespace's root, so the agent sees its own uid and holds no
//! capability over any mount, then applies `no_new_privs`, Landlock, drops every
//! capability, installs the seccomp filters, hands the listener to the host and
//! executes the command.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::SandboxSpec;
use crate::sys::{self, mount};

/// The argument that makes `cordon` act as stage 1.
pub const STAGE1_ARG: &str = "__cordon-sandbox-init";

/// The control socket is always this descriptor in stage 1, init and agent.
pub const CTL_FD: i32 = 3;

/// Largest configuration stage 1 reads (the spec, the environment, the list
/// of root-only files in /etc).
pub const MAX_CONFIG: u64 = 16 << 20;

/// What the host sends stage 1.
#[derive(Serialize, Deserialize)]
pub struct InitConfig {
    pub spec: SandboxSpec,
    pub uid: u32,
    pub gid: u32,
    /// Rows and columns of the terminal to create, if any.
    pub tty: Option<(u16, u16)>,
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    /// `cgroup.procs` files stage 1 joins before unsharing anything.
    pub cgroup_procs: Vec<PathBuf>,
    /// Entries in and below /etc (relative, with "is a directory") that only
    /// root may read, to mask when the agent is host uid 0 (see [`etc_private`]).
    pub etc_private: Vec<(PathBuf, bool)>,
    /// Whether the host made that list (as root). If not, stage 1 checks the
    /// top level of /etc itself.
    #[serde(default)]
    pub etc_scanned: bool,
}

/// Name of the sandbox's network interface.
pub const TAP_NAME: &str = "eth0";

/// Messages from the sandbox to the host.
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum Msg {
    /// Setup failed; the message names the step and path.
    Error { msg: String },
    /// The master side of the agent's terminal travels with this message.
    Terminal,
    /// The seccomp listener travels with this message; the agent execs next.
    /// `landlock` says how much of the Landlock ruleset the kernel enforces.
    Seccomp { landlock: String },
    /// The host side of the sandbox's TAP device travels with this message.
    Tap,
    /// The agent ended: its exit code, or the signal that killed it (sent by
    /// the init, so an exit code of 130 is not mistaken for SIGINT), and the
    /// rlimits the init saw reached (see [`PidsWatch`]).
    Exit {
        code: i32,
        signal: Option<i32>,
        #[serde(default)]
        limits: Vec<crate::LimitKind>,
        /// Signal deaths the init could not report (the socket was full).
        #[serde(default)]
        unreported: u64,
    },
    /// The init reaped a process that a signal ended (SIGKILL from the OOM
    /// killer or the init's own teardown, SIGSEGV, ...): such a process never
    /// called `exit_group`, so the seccomp supervisor did not see it end.
    /// `pid` is the process's number in the sandbox's PID namespace.
    Killed {
        pid: i32,
        signal: i32,
        core_dumped: bool,
        comm: Option<String>,
    },
}

fn ctl() -> BorrowedFd<'static> {
    // SAFETY: stage 1 moves the control socket to CTL_FD first thing; stage 1
    // and the init keep it open for their lifetime, the agent closes it (with
    // everything above stderr) right before its exec.
    unsafe { BorrowedFd::borrow_raw(CTL_FD) }
}

fn send(msg: &Msg, fd: Option<BorrowedFd<'_>>) {
    if let Ok(bytes) = serde_json::to_vec(msg) {
        let _ = sys::send_msg(ctl(), &bytes, fd);
    }
}

fn fail(msg: String, code: i32) -> ! {
    send(&Msg::Error { msg }, None);
    // SAFETY: _exit ends the process without running destructors, which is what a
    // forked child that failed setup must do.
    unsafe { libc::_exit(code) }
}

/// Entry point of stage 1 (`cordon __cordon-sandbox-init FD`). Never returns.
pub fn stage1_main() -> ! {
    // The control socket arrives as descriptor FD; move it to CTL_FD and close
    // everything else but the standard streams.
    let fd: i32 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(-1);
    // SAFETY: dup2/close_range/prctl/getppid/setsid on integers; nothing here
    // relies on descriptors other than 0..=3 afterwards.
    unsafe {
        if fd < 0 || (fd != CTL_FD && libc::dup2(fd, CTL_FD) < 0) {
            libc::_exit(125);
        }
        if fd != CTL_FD {
            libc::close(fd);
        }
        libc::syscall(libc::SYS_close_range, CTL_FD as u32 + 1, u32::MAX, 0u32);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        // The host may have died before the line above took effect.
        if libc::getppid() == 1 {
            libc::_exit(125);
        }
        libc::setsid();
    }
    // The configuration arrives as a memfd, with the agent's stdin, stdout and
    // stderr (pipe mode) or without them (terminal mode: /dev/null stays).
    // Stage 1 may have been started before the session knew any of it.
    let mut buf = [0u8; 64];
    let mut fds = match sys::recv_msg_fds(ctl(), &mut buf) {
        Ok(Some((_, fds))) if !fds.is_empty() => fds,
        _ => {
            // The host went away before starting a sandbox: nothing to report.
            // SAFETY: plain exit of a process that never started anything.
            unsafe { libc::_exit(125) }
        }
    };
    let stdio = fds.split_off(1);
    let cfg: InitConfig = {
        use std::io::Read;
        let mut text = Vec::new();
        let mut file = std::fs::File::from(fds.remove(0));
        match Read::take(&mut file, MAX_CONFIG).read_to_end(&mut text) {
            Ok(_) => match serde_json::from_slice(&text) {
                Ok(c) => c,
                Err(e) => fail(format!("bad sandbox configuration: {e}"), 125),
            },
            Err(e) => fail(format!("cannot read the sandbox configuration: {e}"), 125),
        }
    };
    if stdio.len() == 3 {
        for (target, fd) in stdio.iter().enumerate() {
            // SAFETY: dup2 of a descriptor we own onto 0, 1 or 2.
            if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(fd), target as i32) } < 0 {
                fail(
                    format!(
                        "cannot set up the standard streams: {}",
                        std::io::Error::last_os_error()
                    ),
                    125,
                );
            }
        }
    }
    drop(stdio);
    if let Err(e) = enter_namespaces(&cfg) {
        fail(e, 125);
    }
    // Block the signals we forward before forking, so none is lost in between.
    let set = forwarded_sigset();
    // SAFETY: sigprocmask with a valid set; no old set requested.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    let pid = fork_or_fail();
    if pid == 0 {
        init_main(cfg);
    }
    // SAFETY: close(2) on the control socket, which stage 1 no longer needs.
    unsafe { libc::close(CTL_FD) };
    wait_forwarding(pid, Waiter::Stage1)
}

/// Join the session's cgroups, then enter a new user namespace in which the
/// invoking user is root, then new mount, PID, network, IPC, UTS and cgroup
/// namespaces (the cgroup namespace last joined is the session's own).
fn enter_namespaces(cfg: &InitConfig) -> Result<(), String> {
    for p in &cfg.cgroup_procs {
        sys::write_file(p, "0")
            .map_err(|e| format!("cannot join the cgroup {}: {e}", p.display()))?;
    }
    sys::unshare(libc::CLONE_NEWUSER)
        .map_err(|e| format!("cannot create a user namespace: {e}"))?;
    write_maps(0, cfg.uid, 0, cfg.gid).map_err(|e| format!("cannot map the invoking user: {e}"))?;
    sys::unshare(sys::SANDBOX_NAMESPACES)
        .map_err(|e| format!("cannot create the sandbox's namespaces: {e}"))
}

/// fork(2) in stage 1 or the init, reporting a failure to the host.
fn fork_or_fail() -> libc::pid_t {
    // SAFETY: stage 1 and the init are single-threaded (stage 1 was just exec'd
    // and starts no threads; the init is its forked child), so the child may
    // run arbitrary code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        fail(
            format!("fork failed: {}", std::io::Error::last_os_error()),
            125,
        );
    }
    pid
}

fn forwarded_sigset() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in FORWARDED {
            libc::sigaddset(&mut set, *s);
        }
        libc::sigaddset(&mut set, libc::SIGCHLD);
        set
    }
}

const FORWARDED: &[i32] = &[
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGCONT,
    libc::SIGALRM,
];

/// How often the init counts the agent's tasks against an `RLIMIT_NPROC`.
pub const PIDS_SAMPLE: std::time::Duration = std::time::Duration::from_millis(100);

/// Without a cgroup nothing counts how often `RLIMIT_NPROC` refused a fork:
/// the refusal is an `EAGAIN` inside the agent. What the init can see is the
/// agent's task count reaching the limit (after which every fork fails), so
/// it samples that every [`PIDS_SAMPLE`]; a limit reached for less time than
/// that can go unreported.
struct PidsWatch {
    limit: u64,
    reached: bool,
}

impl PidsWatch {
    fn sample(&mut self) {
        if !self.reached && agent_tasks(Path::new("/proc")) >= self.limit {
            self.reached = true;
        }
    }
}

/// Tasks (threads included, as `RLIMIT_NPROC` counts them) in the PID
/// namespace whose `/proc` is `proc`, the init's own (PID 1: it runs in
/// another user namespace, so the agent's limit does not count it) aside.
fn agent_tasks(proc: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(proc) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.as_encoded_bytes();
            !name.is_empty() && name.iter().all(u8::is_ascii_digit) && name != b"1"
        })
        .map(|e| {
            std::fs::read_dir(e.path().join("task"))
                .map(|t| t.count() as u64)
                .unwrap_or(0)
        })
        .sum()
}

/// Who is waiting: stage 1 for the init, or the init for the agent.
enum Waiter {
    Stage1,
    /// Also reaps every other child (reporting those a signal ended), samples
    /// the agent's task count when there is a pids rlimit, and when the agent
    /// ends kills and reaps what is left, then tells the host how it ended.
    Init {
        pids: Option<PidsWatch>,
        /// Signal deaths not reported because the control socket was full.
        unreported: u64,
    },
}

/// A child of the init that has ended, not yet reaped.
struct Ended {
    pid: i32,
    /// The signal that ended it and whether it dumped core; `None` when it exited.
    signal: Option<(i32, bool)>,
}

/// The next child that has ended, left a zombie (`WNOWAIT`) so that its
/// `comm` can still be read; `None` when there is none (yet, with `block`
/// false) or no child at all.
fn next_ended(block: bool) -> Option<Ended> {
    // SAFETY: siginfo_t is plain data; waitid fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags =
        libc::WEXITED | libc::WNOWAIT | libc::__WALL | if block { 0 } else { libc::WNOHANG };
    loop {
        // SAFETY: waitid with a valid siginfo pointer.
        let r = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, flags) };
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        // SAFETY: waitid filled `info` for a child (si_pid 0: none ready).
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if r < 0 || pid == 0 {
            return None;
        }
        let signal = match info.si_code {
            libc::CLD_KILLED => Some((status, false)),
            libc::CLD_DUMPED => Some((status, true)),
            _ => None,
        };
        return Some(Ended { pid, signal });
    }
}

/// Report a signal death to the host without ever blocking the init: a
/// full socket (a host slow to read, an agent killing processes in a loop)
/// costs the report, counted, not the reaping.
fn report_killed(ended: &Ended, unreported: &mut u64) {
    let Some((signal, core_dumped)) = ended.signal else {
        return;
    };
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", ended.pid))
        .ok()
        .map(|c| c.trim_end().to_string());
    let msg = Msg::Killed {
        pid: ended.pid,
        signal,
        core_dumped,
        comm,
    };
    let sent = serde_json::to_vec(&msg).ok().is_some_and(|bytes| {
        rustix::net::send(
            ctl(),
            &bytes,
            rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
        )
        .is_ok()
    });
    if !sent {
        *unreported += 1;
    }
}

/// Reap the zombie `pid` that [`next_ended`] found.
fn reap(pid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: waitpid with a valid status pointer, on a child known to have ended.
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG | libc::__WALL) };
    status
}

/// Wait for `main` while forwarding signals to it (and what else `waiter`
/// does). Exits with `main`'s status (128+N for signal N).
fn wait_forwarding(main: i32, mut waiter: Waiter) -> ! {
    let set = forwarded_sigset();
    let period = libc::timespec {
        tv_sec: 0,
        tv_nsec: PIDS_SAMPLE.as_nanos() as libc::c_long,
    };
    loop {
        // SAFETY: siginfo_t is plain data; sigwaitinfo fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let sig = match &mut waiter {
            Waiter::Init {
                pids: Some(pids), ..
            } => {
                // SAFETY: the set is initialised and the signals in it are
                // blocked; the timeout is a valid timespec.
                let sig = unsafe { libc::sigtimedwait(&set, &mut info, &period) };
                pids.sample();
                sig
            }
            // SAFETY: the set is initialised and the signals in it are blocked.
            _ => unsafe { libc::sigwaitinfo(&set, &mut info) },
        };
        if sig < 0 {
            continue;
        }
        if sig != libc::SIGCHLD {
            // SAFETY: kill(2) to our own child.
            unsafe { libc::kill(main, sig) };
            continue;
        }
        if let Waiter::Init { pids, unreported } = &mut waiter {
            while let Some(ended) = next_ended(false) {
                report_killed(&ended, unreported);
                let status = reap(ended.pid);
                if ended.pid == main {
                    let limits = match pids {
                        Some(p) if p.reached => vec![crate::LimitKind::Pids],
                        _ => Vec::new(),
                    };
                    init_exit(status, limits, unreported)
                }
            }
            continue;
        }
        let mut status = 0;
        // SAFETY: waitpid with a valid status pointer.
        if unsafe { libc::waitpid(main, &mut status, libc::WNOHANG) } == main
            && let Some((code, _)) = exit_status(status)
        {
            // SAFETY: leaving stage 1 with the init's status.
            unsafe { libc::_exit(code) };
        }
    }
}

/// The exit code (128+N for signal N) and signal of a wait status, `None`
/// for a stop or continue.
fn exit_status(status: i32) -> Option<(i32, Option<i32>)> {
    if libc::WIFEXITED(status) {
        Some((libc::WEXITSTATUS(status), None))
    } else if libc::WIFSIGNALED(status) {
        Some((128 + libc::WTERMSIG(status), Some(libc::WTERMSIG(status))))
    } else {
        None
    }
}

/// The agent ended with `status`: kill what is left of the sandbox and reap
/// it (reporting each, as before — when PID 1 exits the kernel would kill
/// them unseen), tell the host how the agent ended, and exit with its code.
fn init_exit(status: i32, limits: Vec<crate::LimitKind>, unreported: &mut u64) -> ! {
    let (code, signal) = exit_status(status).unwrap_or((128, None));
    // SAFETY: kill(2) with -1 from PID 1 reaches every other process in the
    // namespace, all of them the agent's.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    while let Some(ended) = next_ended(true) {
        report_killed(&ended, unreported);
        reap(ended.pid);
    }
    send(
        &Msg::Exit {
            code,
            signal,
            limits,
            unreported: *unreported,
        },
        None,
    );
    // SAFETY: leaving the process; nothing is left in the namespace.
    unsafe { libc::_exit(code) }
}

fn init_main(cfg: InitConfig) -> ! {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if let Err(e) = setup_root(&cfg.spec, &cfg.etc_private, cfg.etc_scanned) {
        fail(e, 125);
    }
    let pid = fork_or_fail();
    if pid == 0 {
        agent_main(&cfg);
    }
    // The init keeps the control socket to report how the agent ended; the
    // agent cannot reach the init's descriptors (other user namespace, no
    // ptrace, Landlock's signal and abstract-socket scoping).
    let pids = cfg
        .rlimits
        .iter()
        .find(|(res, _)| *res == libc::RLIMIT_NPROC)
        .map(|&(_, limit)| PidsWatch {
            limit,
            reached: false,
        });
    wait_forwarding(
        pid,
        Waiter::Init {
            pids,
            unreported: 0,
        },
    )
}

fn step<T>(what: impl FnOnce() -> String, r: std::io::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{}: {e}", what()))
}

/// `/etc` entries that never enter the sandbox: password hashes, sudo rules,
/// SSH host keys, TLS private keys, VPN and Wi-Fi credentials, daemon configs
/// that carry tokens.
pub const ETC_DENY: &[&str] = &[
    "shadow",
    "shadow-",
    "gshadow",
    "gshadow-",
    "sudoers",
    "sudoers.d",
    "ssh",
    "security",
    "docker",
    "containerd",
    "credstore",
    "credstore.encrypted",
    "NetworkManager",
    "wireguard",
    "openvpn",
    "ppp",
    "kubernetes",
    "rancher",
    "letsencrypt",
    "cron.d",
    "crontab",
    "polkit-1",
    "libvirt",
    "machine-id",
];

/// Host directories bound read-only when they exist (symlinks are recreated).
const SYSTEM_DIRS: &[&str] = &[
    "usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "opt",
];

const MS_NOSUID: libc::c_ulong = libc::MS_NOSUID;
const MS_NODEV: libc::c_ulong = libc::MS_NODEV;
const MS_NOEXEC: libc::c_ulong = libc::MS_NOEXEC;

/// Make the mount at `path` and every mount below it read-only, nosuid and
/// (unless `dev`) nodev.
fn lock_down(path: &Path, dev: bool) -> std::io::Result<()> {
    // mount_setattr(2) (Linux 5.12; Landlock needs 5.13 anyway) changes every
    // mount below `path` in one call. There is no fallback: remounting only
    // the top would leave the binds below it writable.
    let set = sys::MOUNT_ATTR_RDONLY
        | sys::MOUNT_ATTR_NOSUID
        | if dev { 0 } else { sys::MOUNT_ATTR_NODEV };
    sys::mount_setattr_recursive(path, set)
}

/// A recursive bind with no attribute changes (the caller locks the tree down
/// with one recursive `mount_setattr` afterwards).
fn bind_raw(src: &Path, dst: &Path) -> Result<(), String> {
    step(
        || format!("cannot bind {} at {}", src.display(), dst.display()),
        mount(Some(src), dst, None, libc::MS_BIND | libc::MS_REC, None),
    )
}

fn bind(src: &Path, dst: &Path, read_only: bool, dev: bool) -> Result<(), String> {
    bind_raw(src, dst)?;
    if read_only {
        step(
            || format!("cannot make {} read-only", dst.display()),
            lock_down(dst, dev),
        )
    } else if !dev {
        // Writable binds still lose setuid and device semantics.
        step(
            || format!("cannot make {} nosuid,nodev", dst.display()),
            sys::mount_setattr_recursive(dst, sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV),
        )
    } else {
        Ok(())
    }
}

/// Create `path` (and its parents) as directories, or as an empty file when
/// `file` — a mount point for a bind of the same kind.
fn mount_point(path: &Path, file: bool) -> Result<(), String> {
    let parent = if file { path.parent() } else { Some(path) };
    if let Some(p) = parent {
        step(
            || format!("cannot create {}", p.display()),
            std::fs::create_dir_all(p),
        )?;
    }
    if file && std::fs::symlink_metadata(path).is_err() {
        step(
            || format!("cannot create {}", path.display()),
            std::fs::write(path, b""),
        )?;
    }
    Ok(())
}

fn tmpfs(dst: &Path, mode: &str, extra: libc::c_ulong) -> Result<(), String> {
    step(
        || format!("cannot mount a tmpfs at {}", dst.display()),
        mount(
            None,
            dst,
            Some("tmpfs"),
            MS_NOSUID | MS_NODEV | extra,
            Some(&format!("mode={mode}")),
        ),
    )
}

/// `p` (absolute, as the agent sees it) under the new root `root`, refusing a
/// path with `..` or a symbolic link in any component that already exists.
/// Setup runs before `pivot_root`, so following a link planted in the workspace
/// (`build -> /etc`) would create or cover files on the host.
fn under(root: &Path, p: &Path) -> Result<PathBuf, String> {
    use std::path::Component;
    let mut out = root.to_path_buf();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => {
                out.push(n);
                match std::fs::symlink_metadata(&out) {
                    Ok(md) if md.file_type().is_symlink() => {
                        return Err(format!(
                            "{} has a symbolic link in it ({}); mount targets and protected \
                             paths must be real files and directories",
                            p.display(),
                            out.strip_prefix(root).unwrap_or(&out).display()
                        ));
                    }
                    _ => {}
                }
            }
            Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("{} is not a plain absolute path", p.display()));
            }
        }
    }
    Ok(out)
}

/// Build the agent's root file system on `spec.scratch` and pivot into it.
/// `etc_private`: files below /etc only root may read, masked because the agent
/// of a root invoker is host uid 0 (without capabilities); for any other user
/// the kernel's permission checks already keep them out and the list is empty.
fn setup_root(
    spec: &SandboxSpec,
    etc_private: &[(PathBuf, bool)],
    etc_scanned: bool,
) -> Result<(), String> {
    let r = spec.scratch.as_path();
    step(
        || "cannot make the mount tree private".into(),
        mount(
            None,
            Path::new("/"),
            None,
            libc::MS_REC | libc::MS_PRIVATE,
            None,
        ),
    )?;
    tmpfs(r, "0755", 0)?;
    // One empty file to bind over masked files; unlinked before the pivot (the
    // binds keep it alive, nothing names it).
    let empty_file = r.join(".cordon-empty");
    step(
        || "cannot create the empty file".into(),
        std::fs::write(&empty_file, b""),
    )?;
    for d in SYSTEM_DIRS {
        let host = Path::new("/").join(d);
        let Ok(md) = std::fs::symlink_metadata(&host) else {
            continue;
        };
        let inside = r.join(d);
        if md.file_type().is_symlink() {
            let target = step(
                || format!("cannot read link {}", host.display()),
                std::fs::read_link(&host),
            )?;
            step(
                || format!("cannot create {}", inside.display()),
                std::os::unix::fs::symlink(target, &inside),
            )?;
        } else if md.is_dir() {
            mount_point(&inside, false)?;
            bind(&host, &inside, true, false)?;
        }
    }
    setup_etc(r, &empty_file, etc_private, etc_scanned, &spec.mounts)?;
    // Mount points for extra mounts under /etc exist before /etc is locked.
    for m in &spec.mounts {
        if m.target.starts_with("/etc") {
            let is_file = std::fs::metadata(&m.source).is_ok_and(|md| !md.is_dir());
            mount_point(&under(r, &m.target)?, is_file)?;
        }
    }
    // One recursive call makes /etc and every bind in it read-only, nosuid, nodev.
    step(
        || "cannot make /etc read-only".into(),
        lock_down(&r.join("etc"), false),
    )?;
    // /proc: a fresh instance for the new PID namespace, with the knobs that
    // reach the host read-only or masked.
    let proc_dir = r.join("proc");
    mount_point(&proc_dir, false)?;
    step(
        || "cannot mount /proc".into(),
        mount(
            Some(Path::new("proc")),
            &proc_dir,
            Some("proc"),
            MS_NOSUID | MS_NODEV | MS_NOEXEC,
            None,
        ),
    )?;
    for p in ["sys", "sysrq-trigger", "irq", "bus", "fs"] {
        let path = proc_dir.join(p);
        if path.exists() {
            bind(&path, &path, true, false)?;
        }
    }
    // Kernel memory and address layout: empty.
    for p in [
        "kcore",
        "keys",
        "key-users",
        "kmsg",
        "timer_list",
        "latency_stats",
        "sched_debug",
        "vmallocinfo",
        "slabinfo",
        "pagetypeinfo",
        "kpagecount",
        "kpageflags",
        "kpagecgroup",
        "mtrr",
        "config.gz",
    ] {
        let path = proc_dir.join(p);
        if path.is_file() {
            mask(&path, false, &empty_file)?;
        }
    }
    // /sys: a fresh read-only sysfs for the new network namespace (no host
    // cgroup tree, no host network devices). Some kernels refuse this in a user
    // namespace; then the agent gets an empty /sys.
    let sys_dir = r.join("sys");
    mount_point(&sys_dir, false)?;
    let _ = mount(
        Some(Path::new("sysfs")),
        &sys_dir,
        Some("sysfs"),
        libc::MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
        None,
    );
    setup_dev(r)?;
    mount_point(&r.join("var"), false)?;
    for (link, target) in LINKS {
        step(
            || format!("cannot create {link}"),
            std::os::unix::fs::symlink(target, r.join(link.trim_start_matches('/'))),
        )?;
    }
    setup_scratch(r, spec)?;
    // The workspace, at the project's own path, then its read-only and hidden
    // parts on top.
    let ws = under(r, &spec.workspace.target)?;
    mount_point(&ws, false)?;
    bind(&spec.workspace.source, &ws, false, false)?;
    // Protected paths that are (or pass through) symlinks are skipped here: the
    // session resolved them and listed their targets inside the workspace too.
    for p in &spec.workspace.read_only {
        let Ok(inside) = under(r, p) else { continue };
        if inside.exists() {
            bind(&inside, &inside, true, false)?;
        }
    }
    for p in &spec.workspace.hidden {
        let Ok(inside) = under(r, p) else { continue };
        match std::fs::symlink_metadata(&inside) {
            Ok(md) if md.is_dir() => {
                tmpfs(&inside, "0555", libc::MS_RDONLY)?;
            }
            Ok(md) if md.is_file() => bind(&empty_file, &inside, true, false)?,
            // Special files (fifos, sockets): nothing to read; left as they are.
            _ => {}
        }
    }
    let _ = std::fs::remove_file(&empty_file);
    for m in &spec.mounts {
        let inside = under(r, &m.target)?;
        let is_file = std::fs::metadata(&m.source)
            .map(|md| !md.is_dir())
            .unwrap_or(false);
        mount_point(&inside, is_file)?;
        bind(&m.source, &inside, !m.writable, false)?;
    }
    step(
        || "cannot make /dev read-only".into(),
        lock_top(&r.join("dev")),
    )?;
    step(|| "cannot make the root read-only".into(), lock_top(r))?;
    step(
        || "cannot set the hostname".into(),
        sys::sethostname(&spec.hostname),
    )?;
    step(
        || "cannot bring up the loopback interface".into(),
        sys::loopback_up(),
    )?;
    if spec.network == crate::NetworkMode::Gateway {
        // The only other interface: a TAP device whose other end is the
        // gateway's userspace stack on the host. Its descriptor leaves; the
        // sandbox keeps only the interface.
        use cordon_net::stack::{GATEWAY_IP, MTU, PREFIX_LEN, SANDBOX_IP};
        let tap = step(
            || "cannot create the network interface (/dev/net/tun)".into(),
            cordon_net::tap::create_tap(TAP_NAME),
        )?;
        step(
            || "cannot configure the network interface".into(),
            cordon_net::tap::configure(TAP_NAME, SANDBOX_IP, PREFIX_LEN, MTU, GATEWAY_IP),
        )?;
        send(&Msg::Tap, Some(tap.as_fd()));
    }
    // pivot_root(".", ".") stacks the old root under the new one; detaching it
    // leaves only the new root, with no directory needed to hold the old one.
    step(
        || format!("cannot enter {}", r.display()),
        std::env::set_current_dir(r),
    )?;
    step(
        || "pivot_root failed".into(),
        sys::pivot_root(Path::new("."), Path::new(".")),
    )?;
    step(
        || "cannot detach the host's root".into(),
        sys::umount_detach(Path::new(".")),
    )?;
    step(|| "cannot enter /".into(), std::env::set_current_dir("/"))?;
    Ok(())
}

/// Scratch space: /tmp, /run, /dev/shm and `$HOME`, private and empty, are
/// four directories of one tmpfs bound in place, so that together they hold
/// at most the disk quota (on top of the workspace's own). Their pages are
/// memory, so they also count against the memory limit.
fn setup_scratch(r: &Path, spec: &SandboxSpec) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let scratch = r.join(".cordon-scratch");
    mount_point(&scratch, false)?;
    let options = match spec.limits.disk {
        Some(q) => format!("0755,size={}", q.max(4096)),
        None => "0755".to_string(),
    };
    tmpfs(&scratch, &options, 0)?;
    let home = under(r, &spec.home)?;
    for (name, inside, mode) in [
        ("tmp", r.join("tmp"), 0o1777),
        ("run", r.join("run"), 0o755),
        ("shm", r.join("dev/shm"), 0o1777),
        ("home", home, 0o700),
    ] {
        let dir = scratch.join(name);
        step(
            || {
                format!(
                    "cannot create the scratch directory for {}",
                    inside.display()
                )
            },
            std::fs::create_dir(&dir).and_then(|()| {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
            }),
        )?;
        mount_point(&inside, false)?;
        // The bind keeps the tmpfs's nosuid and nodev.
        bind_raw(&dir, &inside)?;
    }
    step(
        || "cannot detach the scratch tmpfs".into(),
        sys::umount_detach(&scratch),
    )?;
    step(
        || "cannot remove the scratch mount point".into(),
        std::fs::remove_dir(&scratch),
    )
}

/// Read-only for the one mount at `path`, leaving mounts below it as they are.
fn lock_top(path: &Path) -> std::io::Result<()> {
    mount(
        None,
        path,
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | MS_NOSUID | MS_NODEV,
        None,
    )
}

/// `/etc` as one read-only overlay: the host's /etc below a layer of whiteouts
/// for everything that must be absent (the deny-list, entries only root may
/// read). One mount instead of one bind per entry; a whiteout makes the entry
/// absent, not empty. The whiteout layer is a tmpfs detached right after the
/// overlay takes it, so nothing in the sandbox names it. Returns `Ok(false)`
/// when the kernel refuses (no overlayfs in user namespaces), so the caller
/// builds /etc from binds instead.
fn etc_overlay(
    r: &Path,
    etc: &Path,
    etc_private: &[(PathBuf, bool)],
    etc_scanned: bool,
    mounts: &[crate::BindMount],
) -> Result<bool, String> {
    let layer = r.join(".cordon-etc-layer");
    let layer_s = layer.to_string_lossy();
    if layer_s.contains([',', ':', '\\']) {
        return Ok(false);
    }
    mount_point(&layer, false)?;
    tmpfs(&layer, "0755", 0)?;
    let whiteout = |rel: &Path| -> Result<(), String> {
        let path = layer.join(rel);
        if let Some(parent) = path.parent() {
            step(
                || format!("cannot create {}", parent.display()),
                std::fs::create_dir_all(parent),
            )?;
        }
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| "NUL in path".to_string())?;
        // SAFETY: mknod(2) of a 0/0 character device (an overlayfs whiteout) at a
        // valid path in our own tmpfs.
        if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) } != 0 {
            return Err(format!(
                "cannot create a whiteout for {}: {}",
                rel.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    };
    let entries = step(|| "cannot list /etc".into(), std::fs::read_dir("/etc"))?;
    for e in entries.flatten() {
        let name = e.file_name();
        let denied = ETC_DENY.iter().any(|d| **d == *name.to_string_lossy());
        // The host's scan already looked at every entry (a `stat` each, on
        // the start's critical path here).
        let private = !etc_scanned
            && e.path()
                .symlink_metadata()
                .is_ok_and(|md| !md.file_type().is_symlink() && !world_readable(&md));
        if denied || private {
            whiteout(Path::new(&name))?;
        }
    }
    if Path::new("/etc/ssl/private").is_dir() {
        whiteout(Path::new("ssl/private"))?;
    }
    for (rel, _) in etc_private {
        if rel != Path::new("ssl/private") && !layer.join(rel).exists() {
            whiteout(rel)?;
        }
    }
    // Mount points for extra mounts under /etc that the host's /etc lacks: in
    // the top layer, so they exist in the (read-only) overlay.
    for m in mounts {
        let Ok(rel) = m.target.strip_prefix("/etc") else {
            continue;
        };
        // A host entry that is a symlink (resolv.conf under systemd-resolved)
        // is replaced by a plain mount point in the layer above it.
        let host = std::fs::symlink_metadata(Path::new("/etc").join(rel));
        if rel.as_os_str().is_empty() || host.is_ok_and(|md| !md.file_type().is_symlink()) {
            continue;
        }
        let is_file = std::fs::metadata(&m.source).is_ok_and(|md| !md.is_dir());
        mount_point(&under(&layer, rel)?, is_file)?;
    }
    let opts = format!("lowerdir={layer_s}:/etc");
    let mounted = mount(
        Some(Path::new("overlay")),
        etc,
        Some("overlay"),
        libc::MS_RDONLY | MS_NOSUID | MS_NODEV,
        Some(&opts),
    );
    let _ = sys::umount_detach(&layer);
    let _ = std::fs::remove_dir(&layer);
    if mounted.is_err() {
        return Ok(false);
    }
    // Host mounts inside /etc (resolv.conf, hosts in some setups) are not part
    // of the overlay's lower layer: put them back, unless denied.
    if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in info.lines() {
            let Some(point) = line.split(' ').nth(4) else {
                continue;
            };
            let Some(rel) = point.strip_prefix("/etc/") else {
                continue;
            };
            if rel.contains('\\')
                || ETC_DENY
                    .iter()
                    .any(|d| rel == *d || rel.starts_with(&format!("{d}/")))
            {
                continue;
            }
            let inside = etc.join(rel);
            if inside.exists() {
                bind_raw(Path::new(point), &inside)?;
            }
        }
    }
    Ok(true)
}

/// Whether "other" may read a file (or list and enter a directory).
pub fn world_readable(md: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    mode_readable(md.permissions().mode(), md.is_dir())
}

/// Cover `inside` (the sandbox's view of a host path) with something empty.
fn mask(inside: &Path, is_dir: bool, empty_file: &Path) -> Result<(), String> {
    if is_dir {
        tmpfs(inside, "0555", libc::MS_RDONLY)
    } else {
        bind(empty_file, inside, true, false)
    }
}

/// Entries in and below the host's /etc that only root may read (the top
/// level, and inside world-readable directories). Runs on the host, on its own
/// thread, while the workspace is prepared; stage 1 then needs no `stat` of
/// its own.
///
/// The walk works relative to directory descriptors and takes symbolic links
/// from the directory entry's type without a `stat`: /etc is mostly links
/// (`alternatives/`, `ssl/certs/`), and resolving every full path from `/`
/// made the walk about twice as slow (two runs of 3 x 20 scans of this
/// machine's /etc: 5.7–6.4 ms against 2.6–3.3 ms, and 4.1–4.3 ms against
/// 2.2–2.4 ms; a sizeable share of a sandbox's start).
pub fn etc_private() -> Vec<(PathBuf, bool)> {
    private_below(Path::new("/etc"), ETC_DENY)
}

/// [`etc_private`] for any directory: what is not world-readable in `root` and
/// inside its world-readable directories, except the entries named in `skip`.
fn private_below(root: &Path, skip: &[&str]) -> Vec<(PathBuf, bool)> {
    let mut out = Vec::new();
    let mut budget = 20_000;
    let Ok(etc) = rustix::fs::open(
        root,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) else {
        return out;
    };
    for_each_entry(etc.as_fd(), |name, mode| {
        let rel = std::ffi::OsStr::from_bytes(name.to_bytes());
        if skip.iter().any(|d| **d == *rel.to_string_lossy()) {
            return;
        }
        let is_dir = mode_is(mode, rustix::fs::FileType::Directory);
        if !mode_readable(mode, is_dir) {
            out.push((PathBuf::from(rel), is_dir));
        } else if is_dir {
            private_entries(etc.as_fd(), name, Path::new(rel), 6, &mut budget, &mut out);
        }
    });
    out
}

/// Calls `f(name, mode)` for every entry of the directory `dir` except `.`,
/// `..` and symbolic links (which are never followed). An entry that vanishes
/// before its `stat` is skipped; false when the listing itself failed, so the
/// caller can mask what it could not see.
fn for_each_entry(dir: BorrowedFd<'_>, mut f: impl FnMut(&std::ffi::CStr, u32)) -> bool {
    let Ok(entries) = rustix::fs::Dir::read_from(dir) else {
        return false;
    };
    for e in entries {
        let Ok(e) = e else { return false };
        let name = e.file_name();
        if name == c"." || name == c".." || e.file_type() == rustix::fs::FileType::Symlink {
            continue;
        }
        let Ok(st) = rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        if !mode_is(st.st_mode, rustix::fs::FileType::Symlink) {
            f(name, st.st_mode);
        }
    }
    true
}

fn mode_is(mode: u32, t: rustix::fs::FileType) -> bool {
    rustix::fs::FileType::from_raw_mode(mode) == t
}

/// Whether "other" may read a file (or list and enter a directory) of this mode.
fn mode_readable(mode: u32, is_dir: bool) -> bool {
    if is_dir {
        mode & 0o005 == 0o005
    } else {
        mode & 0o004 != 0
    }
}

/// Files below `parent/name` (host) that are not world-readable, as paths
/// relative to /etc (`rel`); bounded in depth and entries so a huge /etc cannot
/// stall the start. Past either bound, or when it cannot be opened or listed,
/// the directory is masked as a whole: what was not looked at is not shown.
fn private_entries(
    parent: BorrowedFd<'_>,
    name: &std::ffi::CStr,
    rel: &Path,
    depth: u32,
    budget: &mut u32,
    out: &mut Vec<(PathBuf, bool)>,
) {
    if depth == 0 || *budget == 0 {
        out.push((rel.to_path_buf(), true));
        return;
    }
    let dir = match rustix::fs::openat(
        parent,
        name,
        rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::DIRECTORY
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) {
        Ok(dir) => dir,
        // Removed since it was listed: nothing to hide.
        Err(rustix::io::Errno::NOENT) => return,
        Err(_) => {
            out.push((rel.to_path_buf(), true));
            return;
        }
    };
    let mut cut = false;
    let listed = for_each_entry(dir.as_fd(), |child, mode| {
        if cut {
            return;
        }
        if *budget == 0 {
            out.push((rel.to_path_buf(), true));
            cut = true;
            return;
        }
        *budget -= 1;
        let r = rel.join(std::ffi::OsStr::from_bytes(child.to_bytes()));
        let is_dir = mode_is(mode, rustix::fs::FileType::Directory);
        if !mode_readable(mode, is_dir) {
            out.push((r, is_dir));
        } else if is_dir {
            private_entries(dir.as_fd(), child, &r, depth - 1, budget, out);
        }
    });
    if !listed && !cut {
        out.push((rel.to_path_buf(), true));
    }
}

/// `/etc` as a tmpfs of read-only binds of the host's entries, minus the
/// deny-list (absent, not empty), minus what is not world-readable.
fn setup_etc(
    r: &Path,
    empty_file: &Path,
    etc_private: &[(PathBuf, bool)],
    etc_scanned: bool,
    mounts: &[crate::BindMount],
) -> Result<(), String> {
    let etc = r.join("etc");
    mount_point(&etc, false)?;
    if etc_overlay(r, &etc, etc_private, etc_scanned, mounts)? {
        return Ok(());
    }
    tmpfs(&etc, "0755", 0)?;
    let entries = step(|| "cannot list /etc".into(), std::fs::read_dir("/etc"))?;
    for e in entries.flatten() {
        let name = e.file_name();
        let name_str = name.to_string_lossy();
        if ETC_DENY.iter().any(|d| *d == name_str) {
            continue;
        }
        let host = e.path();
        let inside = etc.join(&name);
        let Ok(md) = host.symlink_metadata() else {
            continue;
        };
        if md.file_type().is_symlink() {
            if let Ok(t) = std::fs::read_link(&host) {
                let _ = std::os::unix::fs::symlink(t, &inside);
            }
            continue;
        }
        if !world_readable(&md) {
            continue;
        }
        if md.is_dir() {
            mount_point(&inside, false)?;
            bind_raw(&host, &inside)?;
        } else if md.is_file() {
            mount_point(&inside, true)?;
            bind_raw(&host, &inside)?;
        }
    }
    // TLS private keys live inside an otherwise useful directory.
    let private = etc.join("ssl/private");
    if private.is_dir()
        && !etc_private
            .iter()
            .any(|(p, _)| p == Path::new("ssl/private"))
    {
        mask(&private, true, empty_file)?;
    }
    for (rel, is_dir) in etc_private {
        // Only below entries that made it in (not denied, world-readable).
        if let Ok(inside) = under(&etc, rel)
            && inside.symlink_metadata().is_ok()
        {
            mask(&inside, *is_dir, empty_file)?;
        }
    }
    Ok(())
}

fn setup_dev(r: &Path) -> Result<(), String> {
    let dev = r.join("dev");
    mount_point(&dev, false)?;
    step(
        || "cannot mount /dev".into(),
        mount(
            None,
            &dev,
            Some("tmpfs"),
            MS_NOSUID | MS_NOEXEC,
            Some("mode=0755"),
        ),
    )?;
    for name in DEVICES {
        let host = Path::new("/dev").join(name);
        if !host.exists() {
            continue;
        }
        let inside = dev.join(name);
        mount_point(&inside, true)?;
        // Read-only mount: the device still reads and writes, but its inode
        // (the host's /dev node) cannot be chmod-ed or touched.
        bind(&host, &inside, true, true)?;
    }
    let pts = dev.join("pts");
    mount_point(&pts, false)?;
    step(
        || "cannot mount /dev/pts".into(),
        mount(
            Some(Path::new("devpts")),
            &pts,
            Some("devpts"),
            MS_NOSUID | MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        ),
    )?;
    mount_point(&dev.join("shm"), false)?;
    Ok(())
}

fn write_maps(
    inside_uid: u32,
    outside_uid: u32,
    inside_gid: u32,
    outside_gid: u32,
) -> std::io::Result<()> {
    sys::write_file(Path::new("/proc/self/setgroups"), "deny")?;
    sys::write_file(
        Path::new("/proc/self/uid_map"),
        &format!("{inside_uid} {outside_uid} 1"),
    )?;
    sys::write_file(
        Path::new("/proc/self/gid_map"),
        &format!("{inside_gid} {outside_gid} 1"),
    )
}

/// Device nodes bound from the host into the sandbox's /dev.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Symbolic links the sandbox's root holds (absolute, as the agent sees
/// them), with their targets.
pub const LINKS: &[(&str, &str)] = &[
    ("/dev/ptmx", "/dev/pts/ptmx"),
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
    ("/var/tmp", "/tmp"),
];

/// Every place (as the agent sees it) below which the agent may write: the
/// workspace (its read-only and hidden parts are read-only mounts on top),
/// the scratch space, the terminal and device nodes, the writable mounts.
/// Landlock allows writing there and nowhere else; the supervisor reports a
/// write-open anywhere else.
pub fn writable_places(spec: &SandboxSpec) -> Vec<PathBuf> {
    let mut rw: Vec<PathBuf> = vec![
        spec.workspace.target.clone(),
        PathBuf::from("/tmp"),
        PathBuf::from("/run"),
        spec.home.clone(),
        PathBuf::from("/dev/shm"),
        PathBuf::from("/dev/pts"),
    ];
    for d in DEVICES {
        rw.push(Path::new("/dev").join(d));
    }
    rw.extend(
        spec.mounts
            .iter()
            .filter(|m| m.writable)
            .map(|m| m.target.clone()),
    );
    rw
}

/// Landlock: read everywhere the sandbox can see (it only sees what was mounted),
/// write only in the workspace, scratch space and the writable mounts.
fn landlock(spec: &SandboxSpec) -> Result<String, String> {
    use landlock::{
        ABI, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
        path_beneath_rules,
    };
    let abi = ABI::V6;
    let mut rw = writable_places(spec);
    rw.retain(|p| p.exists());
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.scope(Scope::from_all(abi)))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(["/"], AccessFs::from_read(abi))))
        .and_then(|r| r.add_rules(path_beneath_rules(&rw, AccessFs::from_all(abi))))
        .and_then(|r| r.restrict_self())
        .map_err(|e| format!("cannot apply Landlock rules: {e}"))?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => "full".into(),
        RulesetStatus::PartiallyEnforced => "partial".into(),
        RulesetStatus::NotEnforced => "none".into(),
    })
}

fn agent_main(cfg: &InitConfig) -> ! {
    let spec = &cfg.spec;
    // SAFETY: setsid(2) has no preconditions; the agent leads its own session.
    unsafe { libc::setsid() };
    if let Some((rows, cols)) = cfg.tty
        && let Err(e) = make_terminal(rows, cols)
    {
        fail(format!("cannot create the agent's terminal: {e}"), 125);
    }
    if let Err(e) = sys::unshare(libc::CLONE_NEWUSER) {
        fail(
            format!("cannot create the agent's user namespace: {e}"),
            125,
        );
    }
    if let Err(e) = write_maps(cfg.uid, 0, cfg.gid, 0) {
        fail(format!("cannot map the agent's user: {e}"), 125);
    }
    let cwd = if spec.cwd.is_dir() {
        spec.cwd.clone()
    } else {
        spec.workspace.target.clone()
    };
    if let Err(e) = std::env::set_current_dir(&cwd) {
        fail(format!("cannot enter {}: {e}", cwd.display()), 125);
    }
    for (res, value) in &cfg.rlimits {
        let lim = libc::rlimit {
            rlim_cur: *value,
            rlim_max: *value,
        };
        // SAFETY: setrlimit with a valid struct.
        if unsafe { libc::setrlimit(*res, &lim) } != 0 {
            fail(
                format!(
                    "cannot set resource limit {res}: {}",
                    std::io::Error::last_os_error()
                ),
                125,
            );
        }
    }
    if let Err(e) = sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1) {
        fail(format!("cannot set no_new_privs: {e}"), 125);
    }
    // Landlock is one of the layers the design counts on: a kernel without
    // it (or with it disabled) does not get a weaker sandbox silently.
    let landlock_status = match landlock(spec) {
        Ok(s) if s == "none" => fail(
            "Landlock is not enabled in this kernel (cordon doctor shows why); the native \
             backend requires it"
                .into(),
            125,
        ),
        Ok(s) => s,
        Err(e) => fail(e, 125),
    };
    if let Err(e) = sys::drop_all_capabilities() {
        fail(format!("cannot drop capabilities: {e}"), 125);
    }
    let programs = match super::seccomp::build() {
        Ok(p) => p,
        Err(e) => fail(format!("cannot build the seccomp filter: {e}"), 125),
    };
    let program = resolve_program(&spec.argv[0], &spec.env);
    let argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
        .collect();
    let env: Vec<CString> = spec
        .env
        .iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")).unwrap_or_default())
        .collect();
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut env_p: Vec<*const libc::c_char> = env.iter().map(|c| c.as_ptr()).collect();
    env_p.push(std::ptr::null());
    // Restore default signal handling for the agent.
    // SAFETY: sigprocmask/signal with valid arguments.
    unsafe {
        let set = forwarded_sigset();
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        for s in FORWARDED.iter().chain(&[libc::SIGPIPE]) {
            libc::signal(*s, libc::SIG_DFL);
        }
    }
    let listener: OwnedFd = match programs.install() {
        Ok(l) => l,
        Err(e) => fail(format!("cannot install the seccomp filter: {e}"), 125),
    };
    // The host must hold the listener before the agent runs: without a
    // supervisor (the host died), the agent does not start.
    let handed_over = serde_json::to_vec(&Msg::Seccomp {
        landlock: landlock_status,
    })
    .ok()
    .and_then(|b| sys::send_msg(ctl(), &b, Some(listener.as_fd())).ok());
    if handed_over.is_none() {
        // SAFETY: leave without running anything; the host is gone.
        unsafe { libc::_exit(125) };
    }
    drop(listener);
    // SAFETY: close_range(2) on integers: the agent starts with its three
    // standard streams and nothing else (the control socket included).
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    // SAFETY: argv_p and env_p are NULL-terminated arrays of valid C strings that
    // outlive the call; PATH lookup uses the agent's environment.
    unsafe { libc::execve(program.as_ptr(), argv_p.as_ptr(), env_p.as_ptr()) };
    let err = std::io::Error::last_os_error();
    let _ = writeln!(
        std::io::stderr(),
        "cordon: cannot run {}: {}",
        spec.argv[0],
        sys::errno_name(&err)
    );
    let code = if err.raw_os_error() == Some(libc::ENOENT) {
        127
    } else {
        126
    };
    // SAFETY: leave the failed child without running destructors.
    unsafe { libc::_exit(code) }
}

/// Open a pty from the sandbox's own devpts, make its slave the controlling
/// terminal and standard streams, and send the master to the host.
fn make_terminal(rows: u16, cols: u16) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let master: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open("/dev/ptmx")?
        .into();
    let m = master.as_raw_fd();
    let unlock: libc::c_int = 0;
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSPTLCK reads an int, TIOCSWINSZ a winsize, TIOCGPTPEER returns a
    // new descriptor for the slave (no path lookup, so no race on /dev/pts).
    let slave = unsafe {
        if libc::ioctl(m, libc::TIOCSPTLCK, &unlock) < 0
            || libc::ioctl(m, libc::TIOCSWINSZ, &ws) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        libc::ioctl(m, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY)
    };
    if slave < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `slave` is a new descriptor we own; dup2 onto 0..2 and TIOCSCTTY on
    // it (we lead a new session with no controlling terminal yet).
    unsafe {
        for fd in 0..3 {
            if libc::dup2(slave, fd) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        libc::close(slave);
        if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    send(&Msg::Terminal, Some(master.as_fd()));
    Ok(())
}

/// The file `name` runs: itself when it contains a `/`, else the first
/// executable match in the agent's `PATH` (resolved before the seccomp filter
/// goes in, so the agent's start is one `execve` and one event).
fn resolve_program(name: &str, env: &[(String, String)]) -> CString {
    let fallback = || CString::new(name.as_bytes()).unwrap_or_default();
    if name.contains('/') {
        return fallback();
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("/usr/local/bin:/usr/bin:/bin");
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let Ok(c) = CString::new(format!("{dir}/{name}")) else {
            continue;
        };
        // SAFETY: access(2) on a valid C string.
        if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0
            && std::fs::metadata(Path::new(dir).join(name)).is_ok_and(|m| m.is_file())
        {
            return c;
        }
    }
    fallback()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    #[test]
    fn agent_tasks_count_threads_but_not_the_init() {
        let proc = tempfile::tempdir().unwrap();
        for task in ["1/task/1", "5/task/5", "5/task/6", "5/task/7", "12/task/12"] {
            std::fs::create_dir_all(proc.path().join(task)).unwrap();
        }
        std::fs::create_dir_all(proc.path().join("sys/task/x")).unwrap();
        symlink("5", proc.path().join("self")).unwrap();
        assert_eq!(agent_tasks(proc.path()), 4);
        assert_eq!(agent_tasks(&proc.path().join("missing")), 0);
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn the_walk_finds_what_others_cannot_read_and_never_follows_links() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        for d in ["app/conf.d", "app/deep/a/b/c/d/e", "open", "skipme"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in [
            "app/public.conf",
            "app/secret.key",
            "app/conf.d/token",
            "app/deep/a/b/c/d/e/far",
            "top-secret",
            "skipme/secret",
        ] {
            std::fs::write(root.join(f), "x").unwrap();
        }
        chmod(&root.join("app/secret.key"), 0o600);
        chmod(&root.join("app/conf.d/token"), 0o640);
        chmod(&root.join("app/deep/a/b/c/d/e/far"), 0o600);
        chmod(&root.join("top-secret"), 0o600);
        chmod(&root.join("skipme/secret"), 0o600);
        std::fs::create_dir(root.join("app/private")).unwrap();
        chmod(&root.join("app/private"), 0o750);
        // A link into a private place and a link to a directory: neither followed.
        symlink(root.join("app/private"), root.join("open/link-dir")).unwrap();
        symlink("/proc/self/root/etc", root.join("open/escape")).unwrap();
        let mut found = private_below(root, &["skipme"]);
        found.sort();
        assert_eq!(
            found,
            vec![
                (PathBuf::from("app/conf.d/token"), false),
                // Seven levels down: not looked into, so masked whole.
                (PathBuf::from("app/deep/a/b/c/d/e"), true),
                (PathBuf::from("app/private"), true),
                (PathBuf::from("app/secret.key"), false),
                (PathBuf::from("top-secret"), false),
            ],
            "skipped names and links are left alone"
        );
    }

    #[test]
    fn past_the_entry_budget_directories_are_masked_whole() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        for d in ["a", "b"] {
            std::fs::create_dir(root.join(d)).unwrap();
            for i in 0..3 {
                std::fs::write(root.join(d).join(format!("f{i}")), "x").unwrap();
            }
        }
        let mut out = Vec::new();
        let mut budget = 4;
        let dir =
            rustix::fs::open(root, rustix::fs::OFlags::RDONLY, rustix::fs::Mode::empty()).unwrap();
        private_entries(dir.as_fd(), c"a", Path::new("a"), 6, &mut budget, &mut out);
        assert!(out.is_empty(), "three entries fit in the budget: {out:?}");
        private_entries(dir.as_fd(), c"b", Path::new("b"), 6, &mut budget, &mut out);
        assert_eq!(out, vec![(PathBuf::from("b"), true)]);
        private_entries(dir.as_fd(), c"a", Path::new("a"), 6, &mut budget, &mut out);
        assert_eq!(out.last(), Some(&(PathBuf::from("a"), true)));
    }

    #[test]
    fn a_missing_root_yields_nothing() {
        assert!(private_below(Path::new("/nonexistent/cordon"), &[]).is_empty());
    }
}
