//! The native backend's system call filter and its supervisor.
//!
//! Three stacked seccomp-bpf filters are installed in the agent just before it
//! executes its command:
//!
//! 1. a user-notification filter (built with `seccompiler`, then its match
//!    action rewritten to `SECCOMP_RET_USER_NOTIF`, which `seccompiler` cannot
//!    express) for the denied system calls and for the observed ones:
//!    `execve`/`execveat`/`exit_group`, `connect`/`bind`, and opens that ask
//!    for writing. The listener descriptor goes to the host-side
//!    [`Supervisor`], which answers denied calls with `EPERM` after recording a
//!    `syscall.denied` event, and lets the observed ones continue after
//!    recording `proc.exec` / `proc.exit` / `proc.connect` / `proc.bind` (IP
//!    and Unix addresses), and `fs.open` for a write-open of a protected
//!    workspace path or (`outside: true`) of a path outside every place the
//!    agent may write (the read-only mount or Landlock refuses it; the event
//!    is the only trace). If the supervisor is gone, every notified call
//!    fails with `ENOSYS`: the filter fails closed.
//! 2. `clone3` → `ENOSYS`, because its flags live in memory a filter cannot read;
//!    libc falls back to `clone`, whose namespace flags filter 1 inspects.
//! 3. a six-instruction hand-written filter that refuses the x32 system call
//!    range (`nr >= 0x40000000`, which shares the x86-64 audit architecture and
//!    would otherwise bypass number-based rules) with `EPERM`, and every number
//!    above the newest call this filter knows with `ENOSYS` (a call added by a
//!    newer kernel could reach around the deny-list). `seccompiler` has no way
//!    to express a range.
//!
//! The supervisor also reads the init's reports on the control socket: a
//! process a signal ended (which never calls `exit_group`) becomes a
//! `proc.exit` with `signal`, under the same event budget, and the agent's
//! end is kept for [`crate::Running::wait`].
//!
//! The supervisor reads exec paths and arguments, socket addresses and open
//! paths from `/proc/PID/mem` for the log only (bounded reads; garbage is
//! described or skipped, never trusted): the call continues with whatever is
//! in memory at that time, so these records describe, they do not decide (see
//! seccomp_unotify(2), "Design goals").

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op,
    SeccompCondition as Cond, SeccompFilter, SeccompRule, TargetArch, sock_filter,
};
use serde_json::{Map, Value, json};

use cordon_events::kind;

use super::init::{LINKS, Msg};
use crate::{EventSink, LimitKind};

/// A marker errno that only exists between building filter 1 and rewriting it.
const NOTIFY_MARKER: u32 = 0xcd0;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_ulong = 1 << 3;
const NOTIF_RECV: libc::c_ulong = 0xc050_2100;
const NOTIF_SEND: libc::c_ulong = 0xc018_2101;
const NOTIF_ID_VALID: libc::c_ulong = 0x4008_2102;
const USER_NOTIF_FLAG_CONTINUE: u32 = 1;

/// Namespace flags a sandboxed `clone`/`unshare` may not use.
const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP
    | 0x80) as u64; // CLONE_NEWTIME

const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541c;

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// System calls refused outright (with an event), whatever their arguments.
pub const DENIED: &[(i64, &str)] = &[
    (libc::SYS_mount, "mount"),
    (libc::SYS_umount2, "umount2"),
    (libc::SYS_pivot_root, "pivot_root"),
    (libc::SYS_chroot, "chroot"),
    (libc::SYS_fsopen, "fsopen"),
    (libc::SYS_fsmount, "fsmount"),
    (libc::SYS_fsconfig, "fsconfig"),
    (libc::SYS_fspick, "fspick"),
    (libc::SYS_move_mount, "move_mount"),
    (libc::SYS_open_tree, "open_tree"),
    (libc::SYS_mount_setattr, "mount_setattr"),
    (libc::SYS_ptrace, "ptrace"),
    (libc::SYS_process_vm_readv, "process_vm_readv"),
    (libc::SYS_process_vm_writev, "process_vm_writev"),
    (libc::SYS_process_madvise, "process_madvise"),
    (libc::SYS_pidfd_getfd, "pidfd_getfd"),
    (libc::SYS_kcmp, "kcmp"),
    (libc::SYS_bpf, "bpf"),
    (libc::SYS_perf_event_open, "perf_event_open"),
    (libc::SYS_kexec_load, "kexec_load"),
    (libc::SYS_kexec_file_load, "kexec_file_load"),
    (libc::SYS_init_module, "init_module"),
    (libc::SYS_finit_module, "finit_module"),
    (libc::SYS_delete_module, "delete_module"),
    (libc::SYS_keyctl, "keyctl"),
    (libc::SYS_add_key, "add_key"),
    (libc::SYS_request_key, "request_key"),
    (libc::SYS_userfaultfd, "userfaultfd"),
    (libc::SYS_setns, "setns"),
    (libc::SYS_open_by_handle_at, "open_by_handle_at"),
    (libc::SYS_name_to_handle_at, "name_to_handle_at"),
    (libc::SYS_io_uring_setup, "io_uring_setup"),
    (libc::SYS_io_uring_enter, "io_uring_enter"),
    (libc::SYS_io_uring_register, "io_uring_register"),
    (libc::SYS_swapon, "swapon"),
    (libc::SYS_swapoff, "swapoff"),
    (libc::SYS_reboot, "reboot"),
    (libc::SYS_syslog, "syslog"),
    (libc::SYS_acct, "acct"),
    (libc::SYS_quotactl, "quotactl"),
    (libc::SYS_settimeofday, "settimeofday"),
    (libc::SYS_clock_settime, "clock_settime"),
    (libc::SYS_clock_adjtime, "clock_adjtime"),
    (libc::SYS_adjtimex, "adjtimex"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_iopl, "iopl"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_ioperm, "ioperm"),
    (libc::SYS_vhangup, "vhangup"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_modify_ldt, "modify_ldt"),
    (SYS_OPEN_TREE_ATTR, "open_tree_attr"),
];

/// `open_tree_attr` (Linux 6.15) is newer than the libc crate's table; its
/// number is the same on every architecture (the unified syscall table).
const SYS_OPEN_TREE_ATTR: i64 = 467;

/// System calls numbered above this are unknown to this filter and fail with
/// `ENOSYS` (new kernels add calls that could reach around the list above).
pub const HIGHEST_KNOWN_SYSCALL: u32 = 469;

/// Address families a sandboxed socket may use; anything else (vsock, which
/// is not namespaced; packet; alg; xdp; bluetooth; ...) is refused.
const ALLOWED_FAMILIES: [u64; 4] = [
    libc::AF_UNIX as u64,
    libc::AF_INET as u64,
    libc::AF_INET6 as u64,
    libc::AF_NETLINK as u64,
];

/// personality(2) values allowed: PER_LINUX, the query 0xffffffff, and
/// ADDR_NO_RANDOMIZE (used by debuggers). READ_IMPLIES_EXEC and friends are not.
const ALLOWED_PERSONALITIES: [u64; 3] = [0, 0xffff_ffff, 0x0004_0000];

/// System calls refused only for some arguments.
fn conditional_rules() -> Vec<(i64, &'static str, Vec<SeccompRule>)> {
    let rule = |conds: Vec<Cond>| SeccompRule::new(conds).expect("static seccomp rule is valid");
    let cond = |arg: u8, op: Op, v: u64| {
        Cond::new(arg, Len::Qword, op, v).expect("static seccomp condition is valid")
    };
    let dword = |arg: u8, op: Op, v: u64| {
        Cond::new(arg, Len::Dword, op, v).expect("static seccomp condition is valid")
    };
    let ns_flags = |arg: u8| {
        // Any namespace bit set: MaskedEq cannot say "any of", so one rule per bit.
        let mut v = Vec::new();
        let mut bits = NAMESPACE_FLAGS;
        while bits != 0 {
            let bit = bits & bits.wrapping_neg();
            bits &= !bit;
            v.push(rule(vec![cond(arg, Op::MaskedEq(bit), bit)]));
        }
        v
    };
    const S_IFMT: u64 = 0o170000;
    vec![
        (libc::SYS_unshare, "unshare", ns_flags(0)),
        (libc::SYS_clone, "clone", ns_flags(0)),
        (
            libc::SYS_ioctl,
            "ioctl",
            vec![
                rule(vec![dword(1, Op::Eq, TIOCSTI)]),
                rule(vec![dword(1, Op::Eq, TIOCLINUX)]),
            ],
        ),
        (
            libc::SYS_personality,
            "personality",
            vec![rule(
                ALLOWED_PERSONALITIES
                    .iter()
                    .map(|v| dword(0, Op::Ne, *v))
                    .collect(),
            )],
        ),
        (
            libc::SYS_socketpair,
            "socketpair",
            vec![rule(
                ALLOWED_FAMILIES
                    .iter()
                    .map(|f| dword(0, Op::Ne, *f))
                    .collect(),
            )],
        ),
        (
            libc::SYS_socket,
            "socket",
            vec![
                rule(
                    ALLOWED_FAMILIES
                        .iter()
                        .map(|f| dword(0, Op::Ne, *f))
                        .collect(),
                ),
                rule(vec![dword(0, Op::Eq, libc::AF_PACKET as u64)]),
                rule(vec![dword(1, Op::MaskedEq(0xf), libc::SOCK_RAW as u64)]),
                rule(vec![dword(1, Op::MaskedEq(0xf), 10 /* SOCK_PACKET */)]),
            ],
        ),
        #[cfg(target_arch = "x86_64")]
        (
            libc::SYS_mknod,
            "mknod",
            vec![
                rule(vec![dword(1, Op::MaskedEq(S_IFMT), libc::S_IFCHR as u64)]),
                rule(vec![dword(1, Op::MaskedEq(S_IFMT), libc::S_IFBLK as u64)]),
            ],
        ),
        (
            libc::SYS_mknodat,
            "mknodat",
            vec![
                rule(vec![dword(2, Op::MaskedEq(S_IFMT), libc::S_IFCHR as u64)]),
                rule(vec![dword(2, Op::MaskedEq(S_IFMT), libc::S_IFBLK as u64)]),
            ],
        ),
    ]
}

/// Calls that continue after the supervisor records them.
const OBSERVED: &[(i64, &str)] = &[
    (libc::SYS_execve, "execve"),
    (libc::SYS_execveat, "execveat"),
    (libc::SYS_exit_group, "exit_group"),
    (libc::SYS_connect, "connect"),
    (libc::SYS_bind, "bind"),
    // Every openat2: its flags are in memory a filter cannot read.
    (libc::SYS_openat2, "openat2"),
];

/// Opens that continue after the supervisor looked at them, notified only
/// when their flags ask for writing (`O_WRONLY`, `O_RDWR`, `O_CREAT`,
/// `O_TRUNC`; `creat` always). Only those aimed at a protected path become
/// `fs.open` events; the rest cost one round trip and leave no trace.
const OBSERVED_WRITE_OPENS: &[(i64, &str, u8)] = &[
    (libc::SYS_openat, "openat", 2),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_open, "open", 1),
];

const WRITE_FLAGS: [u64; 4] = [
    libc::O_WRONLY as u64,
    libc::O_RDWR as u64,
    libc::O_CREAT as u64,
    libc::O_TRUNC as u64,
];

/// The name of a system call number this module filters, for events.
/// (Called for every refused call, which the agent controls: a table lookup,
/// no allocation.)
pub fn name_of(nr: i64) -> &'static str {
    DENIED
        .iter()
        .chain(OBSERVED)
        .chain(CONDITIONAL)
        .find(|(n, _)| *n == nr)
        .map_or("unknown", |(_, s)| s)
}

/// The calls [`conditional_rules`] filters, by name.
const CONDITIONAL: &[(i64, &str)] = &[
    (libc::SYS_unshare, "unshare"),
    (libc::SYS_clone, "clone"),
    (libc::SYS_ioctl, "ioctl"),
    (libc::SYS_personality, "personality"),
    (libc::SYS_socketpair, "socketpair"),
    (libc::SYS_socket, "socket"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_mknod, "mknod"),
    (libc::SYS_mknodat, "mknodat"),
    (libc::SYS_openat, "openat"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_open, "open"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_creat, "creat"),
];

/// The three programs, ready to install (built before the fork that uses them,
/// so the child does not allocate).
pub struct Programs {
    notify: BpfProgram,
    clone3: BpfProgram,
    x32: Vec<sock_filter>,
}

pub fn build() -> Result<Programs, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, _) in DENIED.iter().chain(OBSERVED) {
        rules.insert(*nr, Vec::new());
    }
    for (nr, _, r) in conditional_rules() {
        rules.insert(nr, r);
    }
    for (nr, _, flags_arg) in OBSERVED_WRITE_OPENS {
        let r = WRITE_FLAGS
            .iter()
            .map(|bit| {
                let c = Cond::new(*flags_arg, Len::Dword, Op::MaskedEq(*bit), *bit)
                    .map_err(|e| e.to_string())?;
                SeccompRule::new(vec![c]).map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, String>>()?;
        rules.insert(*nr, r);
    }
    #[cfg(target_arch = "x86_64")]
    rules.insert(libc::SYS_creat, Vec::new());
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(NOTIFY_MARKER),
        ARCH,
    )
    .map_err(|e| e.to_string())?;
    let mut notify: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())?;
    let mut rewritten = 0;
    for ins in &mut notify {
        if ins.code == 0x06 && ins.k == SECCOMP_RET_ERRNO | NOTIFY_MARKER {
            ins.k = SECCOMP_RET_USER_NOTIF;
            rewritten += 1;
        }
    }
    if rewritten == 0 {
        return Err("seccomp filter has no notify action to rewrite".into());
    }
    let mut c3 = BTreeMap::new();
    c3.insert(libc::SYS_clone3, Vec::new());
    let clone3: BpfProgram = SeccompFilter::new(
        c3,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        ARCH,
    )
    .map_err(|e| e.to_string())?
    .try_into()
    .map_err(|e: seccompiler::BackendError| e.to_string())?;
    // A = seccomp_data.nr; x32 numbers (bit 30) fail with EPERM, numbers this
    // filter does not know fail with ENOSYS, the rest go on to the other
    // filters (whose architecture check kills foreign-ABI calls).
    let ins = |code: u16, jt: u8, jf: u8, k: u32| sock_filter { code, jt, jf, k };
    const LD_NR: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JGE: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const JGT: u16 = 0x25; // BPF_JMP | BPF_JGT | BPF_K
    const RET: u16 = 0x06; // BPF_RET | BPF_K
    let x32 = vec![
        ins(LD_NR, 0, 0, 0),
        ins(JGE, 0, 1, 0x4000_0000),
        ins(RET, 0, 0, SECCOMP_RET_ERRNO | libc::EPERM as u32),
        ins(JGT, 0, 1, HIGHEST_KNOWN_SYSCALL),
        ins(RET, 0, 0, SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        ins(RET, 0, 0, SECCOMP_RET_ALLOW),
    ];
    Ok(Programs {
        notify,
        clone3,
        x32,
    })
}

fn install(prog: &[sock_filter], flags: libc::c_ulong) -> io::Result<libc::c_long> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `prog`, which outlives the call; seccomp copies it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl Programs {
    /// Install all three filters in the calling process (which must already have
    /// `no_new_privs`) and return the notification listener.
    pub fn install(&self) -> io::Result<OwnedFd> {
        install(&self.x32, 0)?;
        install(&self.clone3, 0)?;
        let fd = install(&self.notify, SECCOMP_FILTER_FLAG_NEW_LISTENER)?;
        // SAFETY: with NEW_LISTENER, seccomp returns a new descriptor we now own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }
}

#[repr(C)]
#[derive(Default)]
struct SeccompData {
    nr: i32,
    arch: u32,
    ip: u64,
    args: [u64; 6],
}

#[repr(C)]
#[derive(Default)]
struct Notif {
    id: u64,
    pid: u32,
    flags: u32,
    data: SeccompData,
}

#[repr(C)]
struct NotifResp {
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
}

/// Events and bytes the supervisor records before it starts only counting: a
/// fork bomb, or a build that runs a million compilers, must not fill the disk
/// with the log. What is not recorded is counted and reported at the end.
const EVENT_BUDGET: u64 = 20_000;
const BYTE_BUDGET: u64 = 16 << 20;
/// Bounds on what one exec event carries.
const MAX_PATH: usize = 1024;
const MAX_ARGS: u64 = 32;
const MAX_ARG: usize = 256;

/// Counters the session summary reads.
#[derive(Default)]
pub struct Counters {
    /// Events counted but not written (budget exhausted).
    pub suppressed: AtomicU64,
}

/// Answers the agent's notified system calls. Runs on its own thread until the
/// last process holding the filter has exited (the listener then reports EOF
/// through `ENOENT`/`POLLHUP`).
pub struct Supervisor {
    pub listener: OwnedFd,
    pub events: Arc<dyn EventSink>,
    pub counters: Arc<Counters>,
    /// Paths (as the agent sees them) whose write-opens are recorded as
    /// `fs.open`: the workspace's read-only and hidden paths.
    pub watched: Vec<PathBuf>,
    /// Where the agent may write ([`super::init::writable_places`]): a write-open
    /// anywhere else is recorded as `fs.open` with `outside: true`.
    pub writable: Vec<PathBuf>,
    /// The host's end of the control socket, on which the init reports the
    /// processes a signal ended and, last, how the agent ended.
    pub init_reports: OwnedFd,
    /// That last report, once it came.
    pub agent_end: Arc<Mutex<Option<AgentEnd>>>,
}

/// How the agent ended, as the init reported it: its exit code (128+N for
/// signal N), the signal, and the rlimits the init saw reached.
#[derive(Debug, Clone)]
pub struct AgentEnd {
    pub code: i32,
    pub signal: Option<i32>,
    pub limits: Vec<LimitKind>,
}

/// Whether `nr` is a call the supervisor lets continue (as opposed to refusing it).
fn continues(nr: i64) -> bool {
    OBSERVED.iter().any(|(o, _)| *o == nr)
        || OBSERVED_WRITE_OPENS.iter().any(|(o, _, _)| *o == nr)
        || is_creat(nr)
}

#[cfg(target_arch = "x86_64")]
fn is_creat(nr: i64) -> bool {
    nr == libc::SYS_creat
}

#[cfg(not(target_arch = "x86_64"))]
fn is_creat(_: i64) -> bool {
    false
}

/// The supervisor's share of the log: what it has written so far, against
/// [`EVENT_BUDGET`] and [`BYTE_BUDGET`].
#[derive(Default)]
struct Budget {
    emitted: u64,
    bytes: u64,
}

/// An event to record: its kind and data.
type Record = (&'static str, Map<String, Value>);

/// The listener failed: no notification will come any more.
struct ListenerGone;

/// How long the supervisor waits, once the agent's last process is gone,
/// for the init's final report (it follows at once unless the init died).
const REPORT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

impl Supervisor {
    pub fn run(self) {
        let mut budget = Budget::default();
        let mut listening = true;
        let mut reporting = true;
        let mut grace: Option<std::time::Instant> = None;
        let mut buf = vec![0u8; 4096];
        while listening || reporting {
            let timeout = if listening {
                -1
            } else {
                let until = *grace.get_or_insert_with(|| std::time::Instant::now() + REPORT_GRACE);
                let left = until.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                left.as_millis().max(1) as i32
            };
            let mut pfds = [
                libc::pollfd {
                    fd: if listening {
                        self.listener.as_raw_fd()
                    } else {
                        -1
                    },
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: if reporting {
                        self.init_reports.as_raw_fd()
                    } else {
                        -1
                    },
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds (negative descriptors are skipped).
            let r = unsafe { libc::poll(pfds.as_mut_ptr(), 2, timeout) };
            if r < 0 {
                if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return;
            }
            if pfds[1].revents != 0 {
                reporting = self.init_report(&mut buf, &mut budget);
            }
            let l = pfds[0].revents;
            if l & libc::POLLIN != 0 {
                match self.notification() {
                    Ok(Some((kind, data))) => self.record(&mut budget, kind, data),
                    Ok(None) => {}
                    Err(ListenerGone) => listening = false,
                }
            } else if l != 0 {
                listening = false;
            }
        }
    }

    /// Reads one message from the init: a process a signal ended becomes a
    /// `proc.exit`, the agent's end is kept for [`crate::Running::wait`].
    /// Returns whether more may come.
    fn init_report(&self, buf: &mut [u8], budget: &mut Budget) -> bool {
        let n = match crate::sys::recv_msg(self.init_reports.as_fd(), buf) {
            Ok(Some((n, _))) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return true,
            Ok(None) | Err(_) => return false,
        };
        match serde_json::from_slice::<Msg>(&buf[..n]) {
            Ok(Msg::Killed {
                pid,
                signal,
                core_dumped,
                comm,
            }) => {
                let mut data = Map::new();
                data.insert("sandbox_pid".into(), json!(pid));
                if let Some(comm) = comm {
                    data.insert("comm".into(), json!(comm));
                }
                data.insert("signal".into(), json!(signal));
                if core_dumped {
                    data.insert("core_dumped".into(), json!(true));
                }
                data.insert("by".into(), json!("signal"));
                self.record(budget, kind::PROC_EXIT, data);
                true
            }
            Ok(Msg::Exit {
                code,
                signal,
                limits,
                unreported,
            }) => {
                self.counters
                    .suppressed
                    .fetch_add(unreported, Ordering::Relaxed);
                if let Ok(mut slot) = self.agent_end.lock() {
                    *slot = Some(AgentEnd {
                        code,
                        signal,
                        limits,
                    });
                }
                false
            }
            // Nothing else is sent after the agent started.
            _ => true,
        }
    }

    /// Writes the event while the budget lasts, else counts it.
    fn record(&self, budget: &mut Budget, kind: &str, data: Map<String, Value>) {
        let size = serde_json::to_string(&data).map_or(0, |t| t.len() as u64);
        let within = budget.emitted < EVENT_BUDGET && budget.bytes + size < BYTE_BUDGET;
        // Refused operations keep a reserve of their own: they are what an
        // attacker would most like to drown.
        let refused = kind == "syscall.denied" || data.get("outside") == Some(&json!(true));
        let reserve =
            refused && budget.emitted < 2 * EVENT_BUDGET && budget.bytes + size < 2 * BYTE_BUDGET;
        if within || reserve {
            budget.emitted += 1;
            budget.bytes += size;
            self.events.event(kind, data);
        } else {
            self.counters.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Receives and answers one notification; returns the event it makes,
    /// if any, or `Err` when the listener is gone.
    fn notification(&self) -> Result<Option<Record>, ListenerGone> {
        let mut n = Notif::default();
        // SAFETY: NOTIF_RECV fills a zeroed `struct seccomp_notif` of this layout.
        let r = unsafe { libc::ioctl(self.listener.as_raw_fd(), NOTIF_RECV, &mut n) };
        if r < 0 {
            return match io::Error::last_os_error().raw_os_error() {
                // The target died between poll and recv, or a signal.
                Some(libc::ENOENT) | Some(libc::EINTR) => Ok(None),
                _ => Err(ListenerGone),
            };
        }
        let nr = n.data.nr as i64;
        let observed = continues(nr);
        let mut data = Map::new();
        let kind;
        if observed {
            if nr == libc::SYS_connect || nr == libc::SYS_bind {
                kind = if nr == libc::SYS_connect {
                    "proc.connect"
                } else {
                    "proc.bind"
                };
                if !describe_sockaddr(n.pid, n.data.args[1], n.data.args[2], &mut data) {
                    // Netlink, AF_UNSPEC, unreadable: nothing a rule wants.
                    self.answer(&n, true);
                    return Ok(None);
                }
            } else if nr != libc::SYS_exit_group
                && nr != libc::SYS_execve
                && nr != libc::SYS_execveat
            {
                kind = "fs.open";
                let Some(path) = write_open_path(nr, &n) else {
                    self.answer(&n, true);
                    return Ok(None);
                };
                let protected = self.watched.iter().any(|w| path.starts_with(w));
                let outside = !protected && !may_write(n.pid, &path, &self.writable);
                if !protected && !outside {
                    self.answer(&n, true);
                    return Ok(None);
                }
                data.insert("pid".into(), json!(n.pid));
                data.insert("path".into(), json!(path.to_string_lossy()));
                data.insert("write".into(), json!(true));
                if outside {
                    data.insert("outside".into(), json!(true));
                }
                if let Some(comm) = comm(n.pid) {
                    data.insert("comm".into(), json!(comm));
                }
            } else if nr == libc::SYS_exit_group {
                kind = "proc.exit";
                data.insert("pid".into(), json!(n.pid));
                data.insert("code".into(), json!(n.data.args[0] as i32));
            } else {
                kind = "proc.exec";
                let (path_ptr, argv_ptr) = if nr == libc::SYS_execve {
                    (n.data.args[0], n.data.args[1])
                } else {
                    (n.data.args[1], n.data.args[2])
                };
                let mem = std::fs::File::open(format!("/proc/{}/mem", n.pid)).ok();
                data.insert("pid".into(), json!(n.pid));
                if let Some(mem) = &mem {
                    data.insert(
                        "path".into(),
                        Value::String(read_cstr(mem, path_ptr, MAX_PATH).unwrap_or_default()),
                    );
                    data.insert(
                        "argv".into(),
                        Value::Array(
                            read_argv(mem, argv_ptr)
                                .into_iter()
                                .map(Value::String)
                                .collect(),
                        ),
                    );
                }
            }
        } else {
            kind = "syscall.denied";
            data.insert("syscall".into(), json!(name_of(nr)));
            data.insert("nr".into(), json!(nr));
            data.insert("pid".into(), json!(n.pid));
            if let Some(comm) = comm(n.pid) {
                data.insert("comm".into(), json!(comm));
            }
            data.insert(
                "args".into(),
                json!(
                    n.data.args[..3]
                        .iter()
                        .map(|a| format!("{a:#x}"))
                        .collect::<Vec<_>>()
                ),
            );
        }
        if !self.answer(&n, observed) {
            return Ok(None);
        }
        Ok(Some((kind, data)))
    }
}

impl Supervisor {
    /// Lets the call continue (`observed`) or refuses it with `EPERM`; returns
    /// whether the request was still the same process's when answered, so
    /// that what was read from its memory may be recorded.
    fn answer(&self, n: &Notif, observed: bool) -> bool {
        let mut id = n.id;
        // SAFETY: NOTIF_ID_VALID reads one u64.
        let valid = unsafe { libc::ioctl(self.listener.as_raw_fd(), NOTIF_ID_VALID, &mut id) } == 0;
        let resp = NotifResp {
            id: n.id,
            val: 0,
            error: if observed { 0 } else { -libc::EPERM },
            flags: if observed {
                USER_NOTIF_FLAG_CONTINUE
            } else {
                0
            },
        };
        // SAFETY: NOTIF_SEND reads a `struct seccomp_notif_resp` of this layout.
        unsafe { libc::ioctl(self.listener.as_raw_fd(), NOTIF_SEND, &resp) };
        valid
    }
}

fn comm(pid: u32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim_end().to_string())
}

/// Longest socket address read from the agent's memory (`sockaddr_storage`).
const MAX_SOCKADDR: usize = 128;

/// Fills `data` with `pid`, `comm`, `family`, `address` and `port` from the
/// `sockaddr` at `addr` (of `len` bytes) in process `pid`'s memory. Returns
/// false for families no rule is about (netlink, `AF_UNSPEC`) and for
/// addresses that cannot be read.
fn describe_sockaddr(pid: u32, addr: u64, len: u64, data: &mut Map<String, Value>) -> bool {
    let len = (len as usize).min(MAX_SOCKADDR);
    if addr == 0 || len < 2 {
        return false;
    }
    let Ok(mem) = std::fs::File::open(format!("/proc/{pid}/mem")) else {
        return false;
    };
    let mut buf = [0u8; MAX_SOCKADDR];
    let Ok(got) = mem.read_at(&mut buf[..len], addr) else {
        return false;
    };
    let Some(fields) = decode_sockaddr(&buf[..got]) else {
        return false;
    };
    data.insert("pid".into(), json!(pid));
    if let Some(comm) = comm(pid) {
        data.insert("comm".into(), json!(comm));
    }
    data.extend(fields);
    true
}

/// `family`, `address` and (for IP) `port` of a socket address in its
/// kernel layout; `None` for other families and for short or garbled input.
fn decode_sockaddr(b: &[u8]) -> Option<Map<String, Value>> {
    let family = u16::from_ne_bytes([*b.first()?, *b.get(1)?]);
    let port = |b: &[u8]| Some(u16::from_be_bytes([*b.get(2)?, *b.get(3)?]));
    let mut m = Map::new();
    match i32::from(family) {
        libc::AF_INET => {
            let ip: [u8; 4] = b.get(4..8)?.try_into().ok()?;
            m.insert("family".into(), json!("inet"));
            m.insert(
                "address".into(),
                json!(std::net::Ipv4Addr::from(ip).to_string()),
            );
            m.insert("port".into(), json!(port(b)?));
        }
        libc::AF_INET6 => {
            let ip: [u8; 16] = b.get(8..24)?.try_into().ok()?;
            m.insert("family".into(), json!("inet6"));
            m.insert(
                "address".into(),
                json!(std::net::Ipv6Addr::from(ip).to_string()),
            );
            m.insert("port".into(), json!(port(b)?));
        }
        libc::AF_UNIX => {
            let path = &b[2..];
            let address = match path.first() {
                None => String::new(),
                // Abstract: a leading NUL, the rest is the name, NULs and all.
                Some(0) => format!("@{}", String::from_utf8_lossy(&path[1..])),
                Some(_) => {
                    let end = path.iter().position(|&c| c == 0).unwrap_or(path.len());
                    String::from_utf8_lossy(&path[..end]).into_owned()
                }
            };
            m.insert("family".into(), json!("unix"));
            m.insert("address".into(), json!(address));
        }
        _ => return None,
    }
    Some(m)
}

/// The path a notified open writes to, as the agent sees it (lexically
/// normalized; symbolic links are not followed), or `None` when the open
/// does not write or its path cannot be read.
fn write_open_path(nr: i64, n: &Notif) -> Option<PathBuf> {
    let a = &n.data.args;
    let (dirfd, path_ptr) = if nr == libc::SYS_openat || nr == libc::SYS_openat2 {
        (a[0] as i32, a[1])
    } else {
        (libc::AT_FDCWD, a[0])
    };
    let mem = std::fs::File::open(format!("/proc/{}/mem", n.pid)).ok()?;
    if nr == libc::SYS_openat2 {
        // struct open_how { u64 flags; u64 mode; u64 resolve; }
        let mut flags = [0u8; 8];
        if mem.read_at(&mut flags, a[2]).ok()? != 8 {
            return None;
        }
        let flags = u64::from_ne_bytes(flags);
        if !WRITE_FLAGS.iter().any(|bit| flags & bit != 0) {
            return None;
        }
    }
    let path = PathBuf::from(read_cstr(&mem, path_ptr, MAX_PATH)?);
    let full = if path.is_absolute() {
        path
    } else {
        let base = if dirfd == libc::AT_FDCWD {
            format!("/proc/{}/cwd", n.pid)
        } else {
            format!("/proc/{}/fd/{dirfd}", n.pid)
        };
        std::fs::read_link(base).ok()?.join(path)
    };
    Some(normalize(&full))
}

/// Whether a write-open of `path` (lexically normalized, as the agent named
/// it) by process `pid` aims at a place the agent may write. The sandbox's
/// own links (`/dev/stdout`, `/var/tmp`, ...) are followed; a reopen through
/// `/proc/self/fd/N` is judged by what descriptor N is (a pipe, a socket or
/// a terminal is writable); through another process's `/proc/N/fd`, which
/// the supervisor cannot map to that process, it is taken as writable.
fn may_write(pid: u32, path: &Path, writable: &[PathBuf]) -> bool {
    let mut path = path.to_path_buf();
    if let Some((link, target)) = LINKS.iter().find(|(l, _)| path.starts_with(l))
        && let Ok(rest) = path.strip_prefix(link)
    {
        path = Path::new(target).join(rest);
    }
    let parts: Vec<&[u8]> = path.iter().skip(1).map(|c| c.as_bytes()).collect();
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    match parts.as_slice() {
        [b"proc", b"self" | b"thread-self", b"fd", n, ..] => {
            let n = String::from_utf8_lossy(n);
            match std::fs::read_link(format!("/proc/{pid}/fd/{n}")) {
                // "pipe:[N]", "socket:[N]", "anon_inode:...": not a place.
                Ok(target) if target.is_absolute() => {
                    let target = target.to_string_lossy();
                    let target = Path::new(target.trim_end_matches(" (deleted)"));
                    writable.iter().any(|w| target.starts_with(w))
                }
                // Not an open descriptor: the open fails by itself.
                Ok(_) | Err(_) => true,
            }
        }
        [b"proc", who, b"fd", ..] | [b"proc", who, b"task", _, b"fd", ..] if digits(who) => true,
        _ => writable.iter().any(|w| path.starts_with(w)),
    }
}

/// `.` and `..` removed without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

fn read_cstr(mem: &std::fs::File, addr: u64, max: usize) -> Option<String> {
    if addr == 0 {
        return None;
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    while out.len() < max {
        let n = mem.read_at(&mut buf, addr + out.len() as u64).ok()?;
        if n == 0 {
            break;
        }
        if let Some(end) = buf[..n].iter().position(|&b| b == 0) {
            out.extend_from_slice(&buf[..end]);
            return Some(String::from_utf8_lossy(&out).into_owned());
        }
        out.extend_from_slice(&buf[..n]);
    }
    out.truncate(max);
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn read_argv(mem: &std::fs::File, addr: u64) -> Vec<String> {
    let mut out = Vec::new();
    if addr == 0 {
        return out;
    }
    for i in 0..MAX_ARGS {
        let mut p = [0u8; 8];
        if mem.read_at(&mut p, addr + i * 8).ok() != Some(8) {
            break;
        }
        let ptr = u64::from_ne_bytes(p);
        if ptr == 0 {
            break;
        }
        match read_cstr(mem, ptr, MAX_ARG) {
            Some(s) => out.push(s),
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_build_and_notify_action_is_rewritten() {
        let p = build().unwrap();
        assert!(
            p.notify
                .iter()
                .any(|i| i.code == 0x06 && i.k == SECCOMP_RET_USER_NOTIF)
        );
        assert!(
            !p.notify
                .iter()
                .any(|i| i.k == SECCOMP_RET_ERRNO | NOTIFY_MARKER)
        );
        assert!(
            p.clone3
                .iter()
                .any(|i| i.code == 0x06 && i.k == SECCOMP_RET_ERRNO | libc::ENOSYS as u32)
        );
    }

    /// Runs the hand-written program on a system call number (it only loads
    /// `nr`, compares and returns).
    fn run_x32(prog: &[sock_filter], nr: u32) -> u32 {
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let i = &prog[pc];
            match i.code {
                0x20 => a = nr,
                0x35 | 0x25 => {
                    let hit = if i.code == 0x35 { a >= i.k } else { a > i.k };
                    pc += usize::from(if hit { i.jt } else { i.jf });
                }
                0x06 => return i.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
            pc += 1;
        }
    }

    #[test]
    fn unknown_and_x32_numbers_are_refused() {
        let p = build().unwrap();
        let enosys = SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        assert_eq!(run_x32(&p.x32, 0), SECCOMP_RET_ALLOW);
        assert_eq!(run_x32(&p.x32, HIGHEST_KNOWN_SYSCALL), SECCOMP_RET_ALLOW);
        assert_eq!(run_x32(&p.x32, HIGHEST_KNOWN_SYSCALL + 1), enosys);
        assert_eq!(run_x32(&p.x32, 1000), enosys);
        assert_eq!(
            run_x32(&p.x32, 0x4000_0000 | 1),
            SECCOMP_RET_ERRNO | libc::EPERM as u32
        );
    }

    #[test]
    fn every_filtered_call_has_a_name() {
        for (nr, name, _) in conditional_rules() {
            assert_eq!(name_of(nr), name);
        }
    }

    #[test]
    fn socket_addresses_are_described_and_garbage_is_not() {
        let mut v4 = vec![0u8; 16];
        v4[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&9u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[10, 0, 0, 1]);
        let m = decode_sockaddr(&v4).unwrap();
        assert_eq!(m["family"], "inet");
        assert_eq!(m["address"], "10.0.0.1");
        assert_eq!(m["port"], 9);
        let mut v6 = vec![0u8; 28];
        v6[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        v6[2..4].copy_from_slice(&443u16.to_be_bytes());
        v6[23] = 1;
        let m = decode_sockaddr(&v6).unwrap();
        assert_eq!(
            (m["family"].as_str(), m["address"].as_str()),
            (Some("inet6"), Some("::1"))
        );
        let mut un = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        un.extend_from_slice(b"/run/x.sock\0junk");
        assert_eq!(decode_sockaddr(&un).unwrap()["address"], "/run/x.sock");
        let mut abs = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        abs.extend_from_slice(b"\0name");
        assert_eq!(decode_sockaddr(&abs).unwrap()["address"], "@name");
        // Truncated, unknown family, empty: no description, no panic.
        assert!(decode_sockaddr(&v4[..6]).is_none());
        assert!(decode_sockaddr(&v6[..20]).is_none());
        assert!(decode_sockaddr(&[]).is_none());
        assert!(decode_sockaddr(&[1]).is_none());
        assert!(decode_sockaddr(&(libc::AF_NETLINK as u16).to_ne_bytes()).is_none());
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = decode_sockaddr(&junk);
        }
    }

    #[test]
    fn open_paths_are_normalized_lexically() {
        assert_eq!(
            normalize(Path::new("/p/a/../.git/./hooks/x")),
            PathBuf::from("/p/.git/hooks/x")
        );
        assert_eq!(normalize(Path::new("/../../etc")), PathBuf::from("/etc"));
    }

    #[test]
    fn write_opens_are_judged_against_the_writable_places() {
        use std::os::fd::AsRawFd;
        let writable: Vec<PathBuf> = ["/ws", "/tmp", "/dev/pts", "/dev/null"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let me = std::process::id();
        let may = |p: &str| may_write(me, Path::new(p), &writable);
        assert!(may("/ws/src/main.rs"));
        assert!(may("/dev/null"));
        assert!(!may("/wsx/a"), "a prefix of a name is not the place");
        assert!(!may("/etc/cordon-pwned"));
        assert!(!may("/proc/sys/kernel/core_pattern"));
        assert!(!may("/sys/fs/cgroup/release_agent"));
        // The sandbox's own links are followed.
        assert!(may("/var/tmp/x"));
        assert!(may("/dev/ptmx"));
        assert!(!may("/var/lib/x"));
        // Reopening a descriptor: judged by what it is.
        let (_r, w) = rustix::pipe::pipe().unwrap();
        assert!(may(&format!("/proc/self/fd/{}", w.as_raw_fd())));
        assert!(may(&format!("/dev/fd/{}", w.as_raw_fd())));
        let ro = std::fs::File::open("/etc/passwd").unwrap();
        assert!(!may(&format!("/proc/self/fd/{}", ro.as_raw_fd())));
        assert!(!may(&format!("/dev/fd/{}", ro.as_raw_fd())));
        let scratch = tempfile::tempfile_in("/tmp").unwrap();
        assert!(may(&format!(
            "/proc/thread-self/fd/{}",
            scratch.as_raw_fd()
        )));
        // Another process's descriptors cannot be looked at: not reported.
        assert!(may("/proc/12/fd/3"));
        assert!(may("/proc/12/task/13/fd/3"));
    }

    #[test]
    fn names() {
        assert_eq!(name_of(libc::SYS_ptrace), "ptrace");
        assert_eq!(name_of(libc::SYS_unshare), "unshare");
        assert_eq!(name_of(libc::SYS_execve), "execve");
    }
}
