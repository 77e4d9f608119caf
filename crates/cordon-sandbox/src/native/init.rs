//! What runs inside the native sandbox: stage 1, the init (PID 1) and the agent
//! launcher.
//!
//! Stage 1 is `cordon` re-executed by the host with the `__cordon-sandbox-init`
//! argument, already in a new user namespace (uid 0 there = the invoking user
//! outside) and new mount, PID, network, IPC, UTS and cgroup namespaces. Because
//! `unshare(CLONE_NEWPID)` only moves the caller's *children*, stage 1 forks the
//! init, waits for it and exits with its status.
//!
//! The init builds the new root (see [`setup_root`]), pivots into it, forks the
//! agent, forwards signals to it, reaps every orphan and exits with the agent's
//! status; when PID 1 exits the kernel kills whatever is left.
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

/// What the host sends stage 1.
#[derive(Serialize, Deserialize)]
pub struct InitConfig {
    pub spec: SandboxSpec,
    pub uid: u32,
    pub gid: u32,
    /// Rows and columns of the terminal to create, if any.
    pub tty: Option<(u16, u16)>,
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
}

/// Messages from the sandbox to the host.
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum Msg {
    /// Stage 1 forked the init; its pid in the host's PID namespace.
    Init { pid: i32 },
    /// Setup failed; the message names the step and path.
    Error { msg: String },
    /// The master side of the agent's terminal travels with this message.
    Terminal,
    /// The seccomp listener travels with this message; the agent execs next.
    Seccomp,
}

fn ctl() -> BorrowedFd<'static> {
    // SAFETY: CTL_FD is set up by the host before exec and stays open until the
    // agent closes it right before its own exec.
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

/// Entry point of stage 1. Never returns.
pub fn stage1_main() -> ! {
    let mut buf = vec![0u8; 1 << 20];
    let cfg: InitConfig = match sys::recv_msg(ctl(), &mut buf) {
        Ok(Some((n, _))) => match serde_json::from_slice(&buf[..n]) {
            Ok(c) => c,
            Err(e) => fail(format!("bad sandbox configuration: {e}"), 125),
        },
        _ => fail("no sandbox configuration received".into(), 125),
    };
    drop(buf);
    // Block the signals we forward before forking, so none is lost in between.
    let set = forwarded_sigset();
    // SAFETY: sigprocmask with a valid set; no old set requested.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    // SAFETY: stage 1 is single-threaded (it was just exec'd and started no
    // threads), so the child may run arbitrary code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        fail(
            format!("fork failed: {}", std::io::Error::last_os_error()),
            125,
        );
    }
    if pid == 0 {
        init_main(cfg);
    }
    send(&Msg::Init { pid }, None);
    // SAFETY: close(2) on the control socket, which stage 1 no longer needs.
    unsafe { libc::close(CTL_FD) };
    wait_forwarding(pid, None)
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

/// Wait for `main` while forwarding signals to it and, when `reap_all`, reaping
/// every other child. Exits with `main`'s status (128+N for signal N).
fn wait_forwarding(main: i32, reap_all: Option<()>) -> ! {
    let set = forwarded_sigset();
    loop {
        // SAFETY: siginfo_t is plain data; sigwaitinfo fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: the set is initialised and the signals in it are blocked.
        let sig = unsafe { libc::sigwaitinfo(&set, &mut info) };
        if sig < 0 {
            continue;
        }
        if sig != libc::SIGCHLD {
            // SAFETY: kill(2) to our own child.
            unsafe { libc::kill(main, sig) };
            continue;
        }
        loop {
            let mut status = 0;
            let flags = libc::WNOHANG | if reap_all.is_some() { libc::__WALL } else { 0 };
            let who = if reap_all.is_some() { -1 } else { main };
            // SAFETY: waitpid with a valid status pointer.
            let r = unsafe { libc::waitpid(who, &mut status, flags) };
            if r <= 0 {
                break;
            }
            if r == main {
                let code = if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else if libc::WIFSIGNALED(status) {
                    128 + libc::WTERMSIG(status)
                } else {
                    continue;
                };
                // SAFETY: leaving the process; as PID 1 this also ends every
                // process left in the namespace.
                unsafe { libc::_exit(code) };
            }
        }
    }
}

fn init_main(cfg: InitConfig) -> ! {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if let Err(e) = setup_root(&cfg.spec) {
        fail(e, 125);
    }
    // SAFETY: the init is single-threaded; see stage1_main.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        fail(
            format!("fork failed: {}", std::io::Error::last_os_error()),
            125,
        );
    }
    if pid == 0 {
        agent_main(&cfg);
    }
    // SAFETY: the init no longer needs the control socket.
    unsafe { libc::close(CTL_FD) };
    wait_forwarding(pid, Some(()))
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

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// Make the mount at `path` and every mount below it read-only, nosuid and
/// (unless `dev`) nodev.
fn lock_down(path: &Path, dev: bool) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | if dev { 0 } else { MOUNT_ATTR_NODEV },
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr(2) with a valid path and a correctly sized mount_attr.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r == 0 {
        return Ok(());
    }
    // Older kernels: remount the top mount only, keeping its locked flags.
    // SAFETY: statvfs fills a local struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let keep = st.f_flag as libc::c_ulong
        & (libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC
            | libc::MS_NOATIME
            | libc::MS_NODIRATIME
            | libc::MS_RELATIME);
    mount(
        None,
        path,
        None,
        libc::MS_REMOUNT
            | libc::MS_BIND
            | libc::MS_RDONLY
            | MS_NOSUID
            | if dev { 0 } else { MS_NODEV }
            | keep,
        None,
    )
}

fn bind(src: &Path, dst: &Path, read_only: bool, dev: bool) -> Result<(), String> {
    step(
        || format!("cannot bind {} at {}", src.display(), dst.display()),
        mount(Some(src), dst, None, libc::MS_BIND | libc::MS_REC, None),
    )?;
    if read_only {
        step(
            || format!("cannot make {} read-only", dst.display()),
            lock_down(dst, dev),
        )?;
    } else if !dev {
        // Writable binds still lose setuid and device semantics.
        let c = CString::new(dst.as_os_str().as_bytes()).map_err(|_| "NUL in path".to_string())?;
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        // SAFETY: as in lock_down.
        unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                c.as_ptr(),
                libc::AT_RECURSIVE as libc::c_uint,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
    }
    Ok(())
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

fn under(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

/// Build the agent's root file system on `spec.scratch` and pivot into it.
fn setup_root(spec: &SandboxSpec) -> Result<(), String> {
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
    setup_etc(r)?;
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
    for p in [
        "sys",
        "sysrq-trigger",
        "irq",
        "bus",
        "fs",
        "latency_stats",
        "timer_list",
        "kcore",
        "keys",
        "kmsg",
    ] {
        let path = proc_dir.join(p);
        if path.exists() {
            bind(&path, &path, true, false)?;
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
    // Scratch space: /tmp, /run, $HOME are private and empty.
    for (p, mode) in [("tmp", "1777"), ("run", "0755")] {
        let d = r.join(p);
        mount_point(&d, false)?;
        tmpfs(&d, mode, 0)?;
    }
    mount_point(&r.join("var"), false)?;
    let _ = std::os::unix::fs::symlink("../tmp", r.join("var/tmp"));
    let home = under(r, &spec.home);
    mount_point(&home, false)?;
    tmpfs(&home, "0700", 0)?;
    // The workspace, at the project's own path, then its read-only and hidden
    // parts on top.
    let ws = under(r, &spec.workspace.target);
    mount_point(&ws, false)?;
    bind(&spec.workspace.source, &ws, false, false)?;
    for p in &spec.workspace.read_only {
        let inside = under(r, p);
        if inside.exists() {
            bind(&inside, &inside, true, false)?;
        }
    }
    let empty_file = r.join("dev/.cordon-empty");
    step(
        || "cannot create the empty file".into(),
        std::fs::write(&empty_file, b""),
    )?;
    for p in &spec.workspace.hidden {
        let inside = under(r, p);
        match std::fs::symlink_metadata(&inside) {
            Ok(md) if md.is_dir() => {
                tmpfs(&inside, "0555", libc::MS_RDONLY)?;
            }
            Ok(md) if md.is_file() => bind(&empty_file, &inside, true, false)?,
            // Symlinks and special files: a mount cannot cover a symlink itself,
            // so it stays, but what it points to is not mounted in the sandbox
            // unless it is inside the workspace, where it gets its own rules.
            _ => {}
        }
    }
    let _ = std::fs::remove_file(&empty_file);
    for m in &spec.mounts {
        let inside = under(r, &m.target);
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

fn setup_etc(r: &Path) -> Result<(), String> {
    let etc = r.join("etc");
    mount_point(&etc, false)?;
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
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_symlink() {
            if let Ok(t) = std::fs::read_link(&host) {
                let _ = std::os::unix::fs::symlink(t, &inside);
            }
        } else if ft.is_dir() {
            mount_point(&inside, false)?;
            bind(&host, &inside, true, false)?;
        } else if ft.is_file() {
            mount_point(&inside, true)?;
            bind(&host, &inside, true, false)?;
        }
    }
    // TLS private keys live inside an otherwise useful directory.
    let private = etc.join("ssl/private");
    if private.is_dir() {
        tmpfs(&private, "0555", libc::MS_RDONLY)?;
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
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let host = Path::new("/dev").join(name);
        if !host.exists() {
            continue;
        }
        let inside = dev.join(name);
        mount_point(&inside, true)?;
        bind(&host, &inside, false, true)?;
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
    let shm = dev.join("shm");
    mount_point(&shm, false)?;
    tmpfs(&shm, "1777", 0)?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        step(
            || format!("cannot create /dev/{link}"),
            std::os::unix::fs::symlink(target, dev.join(link)),
        )?;
    }
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

/// Landlock: read everywhere the sandbox can see (it only sees what was mounted),
/// write only in the workspace, scratch space and the writable mounts.
fn landlock(spec: &SandboxSpec) -> Result<String, String> {
    use landlock::{
        ABI, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
        path_beneath_rules,
    };
    let abi = ABI::V6;
    let mut rw: Vec<PathBuf> = vec![
        spec.workspace.target.clone(),
        PathBuf::from("/tmp"),
        PathBuf::from("/run"),
        spec.home.clone(),
        PathBuf::from("/dev/shm"),
        PathBuf::from("/dev/pts"),
    ];
    for d in ["null", "zero", "full", "random", "urandom", "tty"] {
        rw.push(Path::new("/dev").join(d));
    }
    rw.extend(
        spec.mounts
            .iter()
            .filter(|m| m.writable)
            .map(|m| m.target.clone()),
    );
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
    if let Err(e) = landlock(spec) {
        fail(e, 125);
    }
    if let Err(e) = sys::drop_all_capabilities() {
        fail(format!("cannot drop capabilities: {e}"), 125);
    }
    let programs = match super::seccomp::build() {
        Ok(p) => p,
        Err(e) => fail(format!("cannot build the seccomp filter: {e}"), 125),
    };
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
    send(&Msg::Seccomp, Some(listener.as_fd()));
    drop(listener);
    // SAFETY: closing our copy of the control socket before exec.
    unsafe { libc::close(CTL_FD) };
    // SAFETY: argv_p and env_p are NULL-terminated arrays of valid C strings that
    // outlive the call; PATH lookup uses the agent's environment.
    unsafe { execvpe_env(argv_p[0], argv_p.as_ptr(), env_p.as_ptr(), &spec.env) };
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

/// `execvpe` that searches the agent's `PATH` (from `env`), not ours.
///
/// # Safety
/// `file`, `argv` and `envp` must be valid, NULL-terminated C data.
unsafe fn execvpe_env(
    file: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    env: &[(String, String)],
) {
    // SAFETY: the caller guarantees `file` is a valid C string.
    let name = unsafe { std::ffi::CStr::from_ptr(file) }.to_bytes();
    if name.contains(&b'/') {
        // SAFETY: forwarded from the caller's guarantees.
        unsafe { libc::execve(file, argv, envp) };
        return;
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("/usr/local/bin:/usr/bin:/bin");
    let mut last = libc::ENOENT;
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let mut full = dir.as_bytes().to_vec();
        full.push(b'/');
        full.extend_from_slice(name);
        let Ok(c) = CString::new(full) else { continue };
        // SAFETY: `c` is a valid C string; argv/envp as guaranteed by the caller.
        unsafe { libc::execve(c.as_ptr(), argv, envp) };
        let e = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::ENOENT);
        if e != libc::ENOENT && e != libc::ENOTDIR {
            last = e;
        }
    }
    // SAFETY: errno is thread-local; setting it reports the most telling error.
    unsafe { *libc::__errno_location() = last };
}
