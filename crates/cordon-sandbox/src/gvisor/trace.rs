//! gVisor's runtime monitoring: the trace session's `remote` sink, decoded into
//! session events.
//!
//! `runsc` connects to a `SOCK_SEQPACKET` Unix socket before the sandbox boots and
//! hands the connection to the sandbox. The first message is a bare protobuf
//! `Handshake`, which must be answered with ours or runsc waits forever; every later
//! message is an 8-byte little-endian header (`u16` header size, `u16` message type,
//! `u32` points dropped so far because the socket was full) and one protobuf
//! message (gVisor's `pkg/sentry/seccheck/points/*.proto` as of the Debian package
//! 0.0~20221219, wire version 1). The messages below are those protos written as
//! `prost` structs (only the fields used; protobuf skips the others).
//!
//! Everything received is untrusted: the sandbox's sentry writes it. Messages are
//! bounded ([`MAX_MESSAGE`]), a message that does not decode is counted and skipped,
//! strings are bounded before they become events, and a budget caps how many events
//! one session can produce ([`EVENT_BUDGET`]); what is over budget is counted as
//! suppressed, never silently lost.
//!
//! What it does not do: decide anything. A trace point reports; the sandbox's
//! isolation does not depend on this reader keeping up (gVisor drops points when the
//! socket is full, and says how many).

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prost::Message;
use serde_json::{Map, Value, json};

use crate::EventSink;

/// Largest message read; gVisor's are far smaller (an execve with a long argv is a
/// few KiB). Longer ones are truncated by the socket and skipped.
pub const MAX_MESSAGE: usize = 4 << 20;
/// Most events one trace session turns into log events.
pub const EVENT_BUDGET: u64 = 20_000;
/// Longest string kept from a message (paths); arguments are cut shorter.
const MAX_TEXT: usize = 4096;
/// Most arguments kept from an exec, and the longest one (as the native backend
/// keeps them).
const MAX_ARGS: usize = 32;
const MAX_ARG: usize = 256;

/// Most `trace.dropped` events one session logs.
const MAX_DROP_REPORTS: u32 = 16;

/// The protocol version this reader speaks (runsc 2022-12 sends 1).
const VERSION: u32 = 1;

#[derive(Clone, PartialEq, Message)]
pub struct Handshake {
    #[prost(uint32, tag = "1")]
    pub version: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct Credentials {
    #[prost(uint32, tag = "1")]
    pub real_uid: u32,
    #[prost(uint32, tag = "2")]
    pub effective_uid: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct ContextData {
    #[prost(int64, tag = "1")]
    pub time_ns: i64,
    #[prost(int32, tag = "2")]
    pub thread_id: i32,
    #[prost(int32, tag = "4")]
    pub thread_group_id: i32,
    #[prost(string, tag = "6")]
    pub container_id: String,
    #[prost(message, optional, tag = "7")]
    pub credentials: Option<Credentials>,
    #[prost(string, tag = "8")]
    pub cwd: String,
    #[prost(string, tag = "9")]
    pub process_name: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Exit {
    #[prost(int64, tag = "1")]
    pub result: i64,
    #[prost(int64, tag = "2")]
    pub errorno: i64,
}

/// `gvisor.container.Start`.
#[derive(Clone, PartialEq, Message)]
pub struct ContainerStart {
    #[prost(message, optional, tag = "1")]
    pub context_data: Option<ContextData>,
    #[prost(string, tag = "2")]
    pub id: String,
    #[prost(string, tag = "3")]
    pub cwd: String,
    #[prost(string, repeated, tag = "4")]
    pub args: Vec<String>,
}

/// `gvisor.sentry.ExecveInfo`.
#[derive(Clone, PartialEq, Message)]
pub struct ExecveInfo {
    #[prost(message, optional, tag = "1")]
    pub context_data: Option<ContextData>,
    #[prost(string, tag = "2")]
    pub binary_path: String,
    #[prost(string, repeated, tag = "3")]
    pub argv: Vec<String>,
}

/// `gvisor.syscall.Execve` (the `execve`/`execveat` entry points: the path as the
/// caller named it, as the native backend records it).
#[derive(Clone, PartialEq, Message)]
pub struct Execve {
    #[prost(message, optional, tag = "1")]
    pub context_data: Option<ContextData>,
    #[prost(message, optional, tag = "2")]
    pub exit: Option<Exit>,
    #[prost(uint64, tag = "3")]
    pub sysno: u64,
    #[prost(int64, tag = "4")]
    pub fd: i64,
    #[prost(string, tag = "5")]
    pub fd_path: String,
    #[prost(string, tag = "6")]
    pub pathname: String,
    #[prost(string, repeated, tag = "7")]
    pub argv: Vec<String>,
}

/// The context and result of a `clone`, `fork` or `vfork` exit point (the rest of
/// `gvisor.syscall.Clone`/`Fork` is not needed).
#[derive(Clone, PartialEq, Message)]
pub struct Spawned {
    #[prost(message, optional, tag = "1")]
    pub context_data: Option<ContextData>,
    #[prost(message, optional, tag = "2")]
    pub exit: Option<Exit>,
}

/// `gvisor.sentry.TaskExit`.
#[derive(Clone, PartialEq, Message)]
pub struct TaskExit {
    #[prost(message, optional, tag = "1")]
    pub context_data: Option<ContextData>,
    /// A wait(2) status.
    #[prost(int32, tag = "2")]
    pub exit_status: i32,
}

/// `gvisor.syscall.Syscall` (the `syscall/sysno/N` points).
#[derive(Clone, PartialEq, Message)]
pub struct RawSyscall {
    #[prost(message, optional, tag = "1")]
    pub context_data: Option<ContextData>,
    #[prost(message, optional, tag = "2")]
    pub exit: Option<Exit>,
    #[prost(uint64, tag = "4")]
    pub sysno: u64,
    #[prost(uint64, tag = "5")]
    pub arg1: u64,
    #[prost(uint64, tag = "6")]
    pub arg2: u64,
    #[prost(uint64, tag = "7")]
    pub arg3: u64,
}

/// `gvisor.syscall.Open`.
#[derive(Clone, PartialEq, Message)]
pub struct Open {
    #[prost(message, optional, tag = "1")]
    pub context_data: Option<ContextData>,
    #[prost(message, optional, tag = "2")]
    pub exit: Option<Exit>,
    #[prost(uint64, tag = "3")]
    pub sysno: u64,
    #[prost(int64, tag = "4")]
    pub fd: i64,
    #[prost(string, tag = "5")]
    pub fd_path: String,
    #[prost(string, tag = "6")]
    pub pathname: String,
    #[prost(uint32, tag = "7")]
    pub flags: u32,
}

/// `gvisor.syscall.Connect` and `gvisor.syscall.Bind` (same fields; `fd` is int64 in
/// one and int32 in the other, which read alike as varints).
#[derive(Clone, PartialEq, Message)]
pub struct SocketAddress {
    #[prost(message, optional, tag = "1")]
    pub context_data: Option<ContextData>,
    #[prost(message, optional, tag = "2")]
    pub exit: Option<Exit>,
    #[prost(uint64, tag = "3")]
    pub sysno: u64,
    #[prost(int64, tag = "4")]
    pub fd: i64,
    #[prost(string, tag = "5")]
    pub fd_path: String,
    #[prost(bytes = "vec", tag = "6")]
    pub address: Vec<u8>,
}

/// `gvisor.syscall.Setid`.
#[derive(Clone, PartialEq, Message)]
pub struct Setid {
    #[prost(message, optional, tag = "1")]
    pub context_data: Option<ContextData>,
    #[prost(message, optional, tag = "2")]
    pub exit: Option<Exit>,
    #[prost(uint64, tag = "3")]
    pub sysno: u64,
    #[prost(uint32, tag = "4")]
    pub id: u32,
}

/// `gvisor.syscall.Setresid`.
#[derive(Clone, PartialEq, Message)]
pub struct Setresid {
    #[prost(message, optional, tag = "1")]
    pub context_data: Option<ContextData>,
    #[prost(message, optional, tag = "2")]
    pub exit: Option<Exit>,
    #[prost(uint64, tag = "3")]
    pub sysno: u64,
    #[prost(uint32, tag = "4")]
    pub rid: u32,
    #[prost(uint32, tag = "5")]
    pub eid: u32,
    #[prost(uint32, tag = "6")]
    pub sid: u32,
}

/// `gvisor.common.MessageType` values this reader decodes.
mod kind {
    pub const CONTAINER_START: u16 = 1;
    pub const SENTRY_EXEC: u16 = 3;
    pub const SENTRY_TASK_EXIT: u16 = 5;
    pub const SYSCALL_RAW: u16 = 6;
    pub const SYSCALL_OPEN: u16 = 7;
    pub const SYSCALL_CONNECT: u16 = 10;
    pub const SYSCALL_EXECVE: u16 = 11;
    pub const SYSCALL_CLONE: u16 = 23;
    pub const SYSCALL_FORK: u16 = 29;
    pub const SYSCALL_SETID: u16 = 14;
    pub const SYSCALL_SETRESID: u16 = 15;
    pub const SYSCALL_BIND: u16 = 24;
}

/// Privilege-related system calls traced by number (`syscall/sysno/N/enter`): the
/// native backend's denied list, so both backends report the same attempts. The
/// set*id calls have named points of their own; `clone` and `socket` are reported
/// only with namespace flags, and for raw or packet sockets.
pub const PRIVILEGED_SYSNOS: &[(u64, &str)] = &[
    (41, "socket"),
    (56, "clone"),
    (101, "ptrace"),
    (133, "mknod"),
    (259, "mknodat"),
    (248, "add_key"),
    (249, "request_key"),
    (304, "open_by_handle_at"),
    (310, "process_vm_readv"),
    (311, "process_vm_writev"),
    (320, "kexec_file_load"),
    (323, "userfaultfd"),
    (425, "io_uring_setup"),
    (105, "setuid"),
    (106, "setgid"),
    (113, "setreuid"),
    (114, "setregid"),
    (117, "setresuid"),
    (119, "setresgid"),
    (122, "setfsuid"),
    (123, "setfsgid"),
    (126, "capset"),
    (165, "mount"),
    (166, "umount2"),
    (155, "pivot_root"),
    (161, "chroot"),
    (175, "init_module"),
    (313, "finit_module"),
    (176, "delete_module"),
    (246, "kexec_load"),
    (250, "keyctl"),
    (272, "unshare"),
    (308, "setns"),
    (321, "bpf"),
    (298, "perf_event_open"),
];

fn sysno_name(n: u64) -> String {
    PRIVILEGED_SYSNOS
        .iter()
        .find(|(s, _)| *s == n)
        .map_or_else(|| format!("sysno {n}"), |(_, name)| (*name).to_owned())
}

/// The trace session for `runsc --pod-init-config`: the points Cordon turns into
/// events, and the remote sink at `endpoint`. With `dirfd_paths` (the default;
/// `CORDON_GVISOR_TRACE=lite` turns it off) the sentry also sends the path of the
/// directory descriptor an `openat` is relative to, so those opens resolve; on
/// an open-heavy workload (`bench/startup/gvisor`) that costs nothing measurable
/// since the reader takes messages in batches.
pub fn pod_init_config(endpoint: &Path, dirfd_paths: bool) -> Value {
    // Context fields cost the sentry work on every point (the working directory
    // is a path walk): each point asks for what its event uses. Opens need the
    // working directory and the directory descriptor's path to resolve relative
    // names; nothing needs the container id.
    let ctx = ["thread_id", "group_id", "process_name"];
    let open_ctx = ["thread_id", "group_id", "process_name", "cwd"];
    let point = |name: &str| json!({"name": name, "context_fields": ctx});
    let open = |name: &str, fd_path: bool| {
        let mut p = json!({"name": name, "context_fields": open_ctx});
        if fd_path {
            p["optional_fields"] = json!(["fd_path"]);
        }
        p
    };
    let mut points = vec![
        point("container/start"),
        point("syscall/execve/enter"),
        json!({"name": "syscall/execveat/enter", "optional_fields": ["fd_path"], "context_fields": ctx}),
        point("syscall/clone/exit"),
        point("syscall/fork/exit"),
        point("syscall/vfork/exit"),
        point("sentry/task_exit"),
        open("syscall/openat/enter", dirfd_paths),
        open("syscall/open/enter", false),
        open("syscall/creat/enter", false),
        point("syscall/connect/enter"),
        point("syscall/bind/enter"),
        point("syscall/setuid/enter"),
        point("syscall/setgid/enter"),
        point("syscall/setresuid/enter"),
        point("syscall/setresgid/enter"),
    ];
    let named = [105, 106, 117, 119];
    for (n, _) in PRIVILEGED_SYSNOS {
        if !named.contains(n) {
            points.push(json!({"name": format!("syscall/sysno/{n}/enter"), "context_fields": ctx}));
        }
    }
    // gVisor's sink drops a point once the socket stays full through its
    // retries (backing off from 25 µs, doubling); 8 retries wait about 6 ms in
    // all, longer than the reader's pause between batches (see `serve`).
    json!({
        "trace_session": {
            "name": "Default",
            "points": points,
            "sinks": [{"name": "remote", "config": {"endpoint": endpoint, "retries": 8}}],
        }
    })
}

fn bounded(s: &str) -> String {
    if s.len() <= MAX_TEXT {
        return s.to_owned();
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn arg(s: &str) -> String {
    let mut end = s.len().min(MAX_ARG);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

fn context(data: &mut Map<String, Value>, c: &Option<ContextData>) {
    if let Some(c) = c {
        data.insert("pid".into(), json!(c.thread_group_id));
        if !c.process_name.is_empty() {
            data.insert("comm".into(), json!(bounded(&c.process_name)));
        }
    }
}

/// A sockaddr as the event describes it: family, address, port.
fn sockaddr(data: &mut Map<String, Value>, raw: &[u8]) {
    let family = raw.get(..2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let port = |raw: &[u8]| raw.get(2..4).map(|b| u16::from_be_bytes([b[0], b[1]]));
    match family.map(i32::from) {
        Some(libc::AF_INET) if raw.len() >= 8 => {
            let ip = std::net::Ipv4Addr::new(raw[4], raw[5], raw[6], raw[7]);
            data.insert("family".into(), json!("inet"));
            data.insert("address".into(), json!(ip.to_string()));
            data.insert("port".into(), json!(port(raw)));
        }
        Some(libc::AF_INET6) if raw.len() >= 24 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&raw[8..24]);
            data.insert("family".into(), json!("inet6"));
            data.insert(
                "address".into(),
                json!(std::net::Ipv6Addr::from(b).to_string()),
            );
            data.insert("port".into(), json!(port(raw)));
        }
        Some(libc::AF_UNIX) => {
            let path = &raw[2.min(raw.len())..];
            // Abstract sockets start with NUL; pathnames end at the first NUL.
            let (abs, path) = match path.first() {
                Some(0) => (true, &path[1..]),
                _ => (false, path),
            };
            let end = path.iter().position(|&c| c == 0).unwrap_or(path.len());
            let text = String::from_utf8_lossy(&path[..end]);
            data.insert("family".into(), json!("unix"));
            data.insert(
                "address".into(),
                json!(if abs {
                    format!("@{}", bounded(&text))
                } else {
                    bounded(&text)
                }),
            );
        }
        other => {
            data.insert("family".into(), json!(other.unwrap_or(-1)));
        }
    }
}

/// Where one traced session's paths are considered routine (not reported as opens
/// outside the workspace).
#[derive(Debug, Clone)]
pub struct Scope {
    /// The workspace as the agent sees it.
    pub workspace: PathBuf,
    /// Other places whose reads are routine: system directories, the private home
    /// and temporary directories, /proc, /dev.
    pub routine: Vec<PathBuf>,
    /// Workspace paths the agent may not write (read-only) or see (hidden): opens
    /// of hidden ones and write-opens of read-only ones are reported, as the
    /// native backend reports them.
    pub read_only: Vec<PathBuf>,
    pub hidden: Vec<PathBuf>,
}

impl Scope {
    /// The event for an open of `path`, or `None` for a routine one: inside the
    /// workspace, or a read in a routine place.
    fn reportable(&self, path: &Path, write: bool) -> bool {
        if path.starts_with(&self.workspace) {
            return self.hidden.iter().any(|h| path.starts_with(h))
                || write && self.read_only.iter().any(|r| path.starts_with(r));
        }
        let routine = self.routine.iter().any(|r| path.starts_with(r));
        !routine || write && !path.starts_with("/dev") && !path.starts_with("/tmp")
    }
}

/// Resolve an open's path the way the sentry did: absolute, or relative to the
/// directory descriptor's path (or the working directory for `AT_FDCWD`), with `.`
/// and `..` folded lexically.
/// `None` for a name relative to a directory descriptor whose path was not asked
/// for (see [`pod_init_config`]).
fn absolute(o: &Open, cwd: &str) -> Option<PathBuf> {
    let base = if o.pathname.starts_with('/') {
        PathBuf::from("/")
    } else if o.fd == libc::AT_FDCWD as i64 {
        PathBuf::from(if cwd.is_empty() { "/" } else { cwd })
    } else if o.fd_path.is_empty() {
        return None;
    } else {
        PathBuf::from(&o.fd_path)
    };
    let mut out = PathBuf::from("/");
    for c in base.join(&o.pathname).components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    Some(out)
}

/// One message, decoded: an event, nothing to report, or bytes that are not the
/// message its type says (counted as malformed, never trusted).
#[derive(Debug)]
pub enum Decoded {
    Event(&'static str, Map<String, Value>),
    Ignored,
    Malformed,
}

/// What one message becomes: an event kind and its data, or nothing (also for a
/// payload that does not decode; [`decode_checked`] tells the two apart).
pub fn decode(
    message_type: u16,
    payload: &[u8],
    scope: &Scope,
) -> Option<(&'static str, Map<String, Value>)> {
    match decode_checked(message_type, payload, scope) {
        Decoded::Event(kind, data) => Some((kind, data)),
        Decoded::Ignored | Decoded::Malformed => None,
    }
}

/// [`decode`], saying whether a payload failed to decode.
pub fn decode_checked(message_type: u16, payload: &[u8], scope: &Scope) -> Decoded {
    let bad = std::cell::Cell::new(false);
    match interpret(message_type, payload, scope, &bad) {
        _ if bad.get() => Decoded::Malformed,
        Some((kind, data)) => Decoded::Event(kind, data),
        None => Decoded::Ignored,
    }
}

fn interpret(
    message_type: u16,
    payload: &[u8],
    scope: &Scope,
    bad: &std::cell::Cell<bool>,
) -> Option<(&'static str, Map<String, Value>)> {
    let mut data = Map::new();
    match message_type {
        kind::CONTAINER_START => {
            let m = ContainerStart::decode(payload)
                .map_err(|_| bad.set(true))
                .ok()?;
            context(&mut data, &m.context_data);
            data.insert("pid".into(), json!(1));
            data.insert(
                "path".into(),
                json!(bounded(m.args.first().map_or("", String::as_str))),
            );
            let argv: Vec<String> = m.args.iter().take(MAX_ARGS).map(|a| arg(a)).collect();
            data.insert("argv".into(), json!(argv));
            Some(("proc.exec", data))
        }
        kind::SENTRY_EXEC => {
            let m = ExecveInfo::decode(payload)
                .map_err(|_| bad.set(true))
                .ok()?;
            context(&mut data, &m.context_data);
            data.insert("path".into(), json!(bounded(&m.binary_path)));
            let argv: Vec<String> = m.argv.iter().take(MAX_ARGS).map(|a| arg(a)).collect();
            data.insert("argv".into(), json!(argv));
            Some(("proc.exec", data))
        }
        kind::SYSCALL_EXECVE => {
            let m = Execve::decode(payload).map_err(|_| bad.set(true)).ok()?;
            context(&mut data, &m.context_data);
            let path = if m.pathname.is_empty() && !m.fd_path.is_empty() {
                &m.fd_path
            } else {
                &m.pathname
            };
            data.insert("path".into(), json!(bounded(path)));
            let argv: Vec<String> = m.argv.iter().take(MAX_ARGS).map(|a| arg(a)).collect();
            data.insert("argv".into(), json!(argv));
            Some(("proc.exec", data))
        }
        kind::SYSCALL_CLONE | kind::SYSCALL_FORK => {
            // A new process refused for want of room: the process limit
            // (RLIMIT_NPROC, enforced by the sentry) was reached.
            let m = Spawned::decode(payload).map_err(|_| bad.set(true)).ok()?;
            if m.exit.as_ref()?.errorno != i64::from(libc::EAGAIN) {
                return None;
            }
            context(&mut data, &m.context_data);
            Some(("limit.pids", data))
        }
        kind::SENTRY_TASK_EXIT => {
            let m = TaskExit::decode(payload).map_err(|_| bad.set(true)).ok()?;
            let c = m.context_data.as_ref()?;
            // One event per process: its last thread is the leader's exit.
            if c.thread_id != c.thread_group_id {
                return None;
            }
            context(&mut data, &m.context_data);
            let status = m.exit_status;
            if status & 0x7f == 0 {
                data.insert("code".into(), json!((status >> 8) & 0xff));
            } else {
                data.insert("signal".into(), json!(status & 0x7f));
            }
            Some(("proc.exit", data))
        }
        kind::SYSCALL_OPEN => {
            let m = Open::decode(payload).map_err(|_| bad.set(true)).ok()?;
            let cwd = m
                .context_data
                .as_ref()
                .map_or(String::new(), |c| c.cwd.clone());
            let access = m.flags & libc::O_ACCMODE as u32;
            let write = access != libc::O_RDONLY as u32
                || m.flags & (libc::O_CREAT | libc::O_TRUNC) as u32 != 0
                || m.sysno == libc::SYS_creat as u64;
            match absolute(&m, &cwd) {
                Some(path) => {
                    if !scope.reportable(&path, write) {
                        return None;
                    }
                    data.insert("path".into(), json!(bounded(&path.to_string_lossy())));
                }
                // Relative to a directory descriptor whose path the sentry did not
                // send: only writes are reported, by name, marked unresolved.
                None if write => {
                    data.insert("path".into(), json!(bounded(&m.pathname)));
                    data.insert("dirfd".into(), json!(m.fd));
                    data.insert("resolved".into(), json!(false));
                }
                None => return None,
            }
            context(&mut data, &m.context_data);
            data.insert("write".into(), json!(write));
            Some(("fs.open", data))
        }
        kind::SYSCALL_CONNECT | kind::SYSCALL_BIND => {
            let m = SocketAddress::decode(payload)
                .map_err(|_| bad.set(true))
                .ok()?;
            context(&mut data, &m.context_data);
            sockaddr(&mut data, &m.address);
            Some((
                if message_type == kind::SYSCALL_CONNECT {
                    "proc.connect"
                } else {
                    "proc.bind"
                },
                data,
            ))
        }
        kind::SYSCALL_SETID => {
            let m = Setid::decode(payload).map_err(|_| bad.set(true)).ok()?;
            context(&mut data, &m.context_data);
            data.insert("syscall".into(), json!(sysno_name(m.sysno)));
            data.insert("args".into(), json!([m.id]));
            Some(("proc.privilege", data))
        }
        kind::SYSCALL_SETRESID => {
            let m = Setresid::decode(payload).map_err(|_| bad.set(true)).ok()?;
            context(&mut data, &m.context_data);
            data.insert("syscall".into(), json!(sysno_name(m.sysno)));
            data.insert("args".into(), json!([m.rid, m.eid, m.sid]));
            Some(("proc.privilege", data))
        }
        kind::SYSCALL_RAW => {
            let m = RawSyscall::decode(payload)
                .map_err(|_| bad.set(true))
                .ok()?;
            // Ordinary clones and sockets are not privilege-related.
            let ns_flags = (libc::CLONE_NEWUSER
                | libc::CLONE_NEWNS
                | libc::CLONE_NEWPID
                | libc::CLONE_NEWNET
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWUTS
                | libc::CLONE_NEWCGROUP) as u64;
            let raw_socket = m.arg2 & 0xf == libc::SOCK_RAW as u64
                || m.arg2 & 0xf == 10 // SOCK_PACKET, the obsolete packet socket type
                || m.arg1 == libc::AF_PACKET as u64;
            match m.sysno {
                56 if m.arg1 & ns_flags == 0 => return None,
                41 if !raw_socket => return None,
                _ => {}
            }
            context(&mut data, &m.context_data);
            data.insert("syscall".into(), json!(sysno_name(m.sysno)));
            data.insert(
                "args".into(),
                json!([
                    format!("{:#x}", m.arg1),
                    format!("{:#x}", m.arg2),
                    format!("{:#x}", m.arg3)
                ]),
            );
            Some(("proc.privilege", data))
        }
        _ => None,
    }
}

/// Split one received message into its header fields and payload.
pub fn split(msg: &[u8]) -> Option<(u16, u32, &[u8])> {
    let header_size = usize::from(u16::from_le_bytes([*msg.first()?, *msg.get(1)?]));
    let message_type = u16::from_le_bytes([*msg.get(2)?, *msg.get(3)?]);
    let dropped = u32::from_le_bytes(msg.get(4..8)?.try_into().ok()?);
    if header_size < 8 {
        return None;
    }
    Some((message_type, dropped, msg.get(header_size..)?))
}

/// What the reader saw, for the session summary and `trace.summary`.
#[derive(Debug, Default)]
pub struct Stats {
    pub messages: AtomicU64,
    pub malformed: AtomicU64,
    pub suppressed: AtomicU64,
    /// Points gVisor dropped because the socket was full (its own count).
    pub dropped: AtomicU64,
    /// The container/start point arrived: the trace session is live.
    pub live: AtomicBool,
    /// A process could not be created because the process limit was reached.
    pub pids_hit: AtomicBool,
    /// How the sandbox's first process (the agent, pid 1) ended: `(code, signal)`.
    pub init_exit: std::sync::Mutex<Option<(i32, Option<i32>)>>,
}

/// How long the reader pauses after draining the socket (see [`serve`]).
const BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

#[derive(Clone, Copy)]
enum Reading {
    /// Wait for the next message.
    Block,
    /// Read what is queued, without waiting.
    Drain,
    /// After a pause: look once without waiting.
    Look,
}

/// Accept runsc's connection on `listener`, answer the handshake, and turn messages
/// into events until the sandbox closes the connection.
pub fn serve(listener: OwnedFd, scope: Scope, events: Arc<dyn EventSink>, stats: Arc<Stats>) {
    use rustix::net::{RecvFlags, SendFlags};
    let conn = match rustix::net::accept(listener.as_fd()) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "trace sink: accept failed");
            return;
        }
    };
    drop(listener);
    let mut buf = vec![0u8; MAX_MESSAGE];
    // The handshake: runsc's version, then ours.
    match rustix::net::recv(&conn, &mut buf, RecvFlags::empty()) {
        Ok((n, _)) if n > 0 => {
            match Handshake::decode(&buf[..n.min(buf.len())]) {
                Ok(h) if h.version >= VERSION => {}
                _ => {
                    let mut data = Map::new();
                    data.insert(
                    "error".into(),
                    json!("the gVisor trace handshake was not understood; runtime monitoring is off"),
                );
                    events.event("session.error", data);
                    return;
                }
            }
        }
        _ => return,
    }
    let reply = Handshake { version: VERSION }.encode_to_vec();
    if rustix::net::send(&conn, &reply, SendFlags::empty()).is_err() {
        return;
    }
    let mut emitted = 0u64;
    let mut drop_reports = 0u32;
    // Messages are taken in batches: after one arrives, what else is queued is
    // read without blocking, then the reader pauses for a moment before it
    // looks again, and blocks only once a look finds nothing. While the agent
    // is busy, the sentry's sends then rarely have a reader to wake (in one
    // A/B run on an open-heavy workload this took the trace's cost from about
    // +8% to +3%; see docs/BENCHMARKS.md); the socket holds hundreds of points,
    // and gVisor retries a full one (see `pod_init_config`).
    let mut state = Reading::Block;
    loop {
        let flags = match state {
            Reading::Block => RecvFlags::TRUNC,
            Reading::Drain | Reading::Look => RecvFlags::TRUNC | RecvFlags::DONTWAIT,
        };
        let n = match rustix::net::recv(&conn, &mut buf, flags) {
            Ok((0, _)) => return,
            Ok((n, _)) => {
                state = Reading::Drain;
                n
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => {
                state = match state {
                    Reading::Drain => {
                        std::thread::sleep(BATCH_PAUSE);
                        Reading::Look
                    }
                    _ => Reading::Block,
                };
                continue;
            }
            Err(_) => return,
        };
        stats.messages.fetch_add(1, Ordering::Relaxed);
        if n > buf.len() {
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let Some((message_type, dropped, payload)) = split(&buf[..n]) else {
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        // gVisor counts points it could not send (the socket was full, or one
        // message was larger than its send buffer, ~208 KiB: an exec with a huge
        // argument list). Say so in the log as it happens, a few times at most.
        let before = stats
            .dropped
            .fetch_max(u64::from(dropped), Ordering::Relaxed);
        if u64::from(dropped) > before && drop_reports < MAX_DROP_REPORTS {
            drop_reports += 1;
            let mut data = Map::new();
            data.insert("dropped".into(), json!(dropped));
            events.event("trace.dropped", data);
        }
        if message_type == kind::CONTAINER_START {
            stats.live.store(true, Ordering::Relaxed);
        }
        match decode_checked(message_type, payload, &scope) {
            // A fork bomb fails thousands of forks: the limit is one event.
            Decoded::Event("limit.pids", _) if stats.pids_hit.swap(true, Ordering::Relaxed) => {}
            Decoded::Event("proc.exit", data) if data.get("pid") == Some(&json!(1)) => {
                let field = |k: &str| data.get(k).and_then(Value::as_i64);
                let signal = field("signal").map(|s| s as i32);
                let code = match signal {
                    Some(s) => 128 + s,
                    None => field("code").unwrap_or(0) as i32,
                };
                if let Ok(mut g) = stats.init_exit.lock() {
                    *g = Some((code, signal));
                }
                if emitted < EVENT_BUDGET {
                    emitted += 1;
                    events.event("proc.exit", data);
                }
            }
            Decoded::Event(kind, data) if emitted < EVENT_BUDGET => {
                emitted += 1;
                events.event(kind, data);
            }
            Decoded::Event(..) => {
                stats.suppressed.fetch_add(1, Ordering::Relaxed);
            }
            Decoded::Malformed => {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
            }
            Decoded::Ignored => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> Scope {
        Scope {
            workspace: "/work/p".into(),
            routine: ["/usr", "/lib", "/proc", "/dev", "/tmp", "/home/agent"]
                .map(PathBuf::from)
                .to_vec(),
            read_only: vec!["/work/p/.git/hooks".into()],
            hidden: vec!["/work/p/.env".into()],
        }
    }

    fn ctx(tid: i32, tgid: i32) -> Option<ContextData> {
        Some(ContextData {
            thread_id: tid,
            thread_group_id: tgid,
            process_name: "sh".into(),
            cwd: "/work/p".into(),
            ..Default::default()
        })
    }

    fn framed(message_type: u16, dropped: u32, body: &[u8]) -> Vec<u8> {
        let mut v = 8u16.to_le_bytes().to_vec();
        v.extend(message_type.to_le_bytes());
        v.extend(dropped.to_le_bytes());
        v.extend(body);
        v
    }

    #[test]
    fn the_captured_connect_message_decodes() {
        // A `connect` to 127.0.0.1:9 as runsc 2022-12 sent it (header included).
        let raw: &[u8] = &[
            0x08, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x15, 0x08, 0xb7, 0xed, 0x8e,
            0xaf, 0x8c, 0xa1, 0xfa, 0xf5, 0x18, 0x10, 0x02, 0x4a, 0x07, b'p', b'y', b't', b'h',
            b'o', b'n', b'3', 0x18, 0x2a, 0x20, 0x03, 0x2a, 0x0a, b's', b'o', b'c', b'k', b'e',
            b't', b':', b'[', b'1', b']', 0x32, 0x10, 0x02, 0x00, 0x00, 0x09, 0x7f, 0x00, 0x00,
            0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        let (t, dropped, payload) = split(raw).unwrap();
        assert_eq!((t, dropped), (kind::SYSCALL_CONNECT, 0));
        let (kind, data) = decode(t, payload, &scope()).unwrap();
        assert_eq!(kind, "proc.connect");
        assert_eq!(data["address"], "127.0.0.1");
        assert_eq!(data["port"], 9);
        assert_eq!(data["family"], "inet");
        assert_eq!(data["comm"], "python3");
    }

    #[test]
    fn exec_exit_and_privilege_events() {
        let exec = ExecveInfo {
            context_data: ctx(7, 7),
            binary_path: "/usr/bin/curl".into(),
            argv: vec!["curl".into(), "https://example.com".into()],
        };
        let (k, d) = decode(kind::SENTRY_EXEC, &exec.encode_to_vec(), &scope()).unwrap();
        assert_eq!(
            (k, d["path"].as_str()),
            ("proc.exec", Some("/usr/bin/curl"))
        );
        assert_eq!(d["pid"], 7);
        let exit = TaskExit {
            context_data: ctx(7, 7),
            exit_status: 5 << 8,
        };
        let (k, d) = decode(kind::SENTRY_TASK_EXIT, &exit.encode_to_vec(), &scope()).unwrap();
        assert_eq!((k, d["code"].as_i64()), ("proc.exit", Some(5)));
        // A thread that is not the leader: no event.
        let thread = TaskExit {
            context_data: ctx(8, 7),
            exit_status: 0,
        };
        assert!(decode(kind::SENTRY_TASK_EXIT, &thread.encode_to_vec(), &scope()).is_none());
        let killed = TaskExit {
            context_data: ctx(9, 9),
            exit_status: 9,
        };
        let (_, d) = decode(kind::SENTRY_TASK_EXIT, &killed.encode_to_vec(), &scope()).unwrap();
        assert_eq!(d["signal"], 9);
        let raw = RawSyscall {
            context_data: ctx(7, 7),
            sysno: 165,
            ..Default::default()
        };
        let (k, d) = decode(kind::SYSCALL_RAW, &raw.encode_to_vec(), &scope()).unwrap();
        assert_eq!(
            (k, d["syscall"].as_str()),
            ("proc.privilege", Some("mount"))
        );
    }

    #[test]
    fn execs_keep_the_named_path_and_refused_forks_are_the_process_limit() {
        let exec = Execve {
            context_data: ctx(5, 5),
            pathname: "/bin/true".into(),
            argv: vec!["true".into()],
            ..Default::default()
        };
        let (k, d) = decode(kind::SYSCALL_EXECVE, &exec.encode_to_vec(), &scope()).unwrap();
        assert_eq!((k, d["path"].as_str()), ("proc.exec", Some("/bin/true")));
        let fork = |errorno: i64| Spawned {
            context_data: ctx(5, 5),
            exit: Some(Exit {
                result: -1,
                errorno,
            }),
        };
        let refused = fork(libc::EAGAIN as i64).encode_to_vec();
        assert_eq!(
            decode(kind::SYSCALL_FORK, &refused, &scope()).unwrap().0,
            "limit.pids"
        );
        assert!(decode(kind::SYSCALL_CLONE, &fork(0).encode_to_vec(), &scope()).is_none());
    }

    #[test]
    fn only_namespace_clones_and_raw_sockets_are_privilege_events() {
        let raw = |sysno: u64, arg1: u64, arg2: u64| RawSyscall {
            context_data: ctx(4, 4),
            sysno,
            arg1,
            arg2,
            ..Default::default()
        };
        let report = |m: RawSyscall| decode(kind::SYSCALL_RAW, &m.encode_to_vec(), &scope());
        assert!(report(raw(56, libc::SIGCHLD as u64, 0)).is_none(), "a fork");
        let (_, d) = report(raw(56, libc::CLONE_NEWUSER as u64, 0)).unwrap();
        assert_eq!(d["syscall"], "clone");
        assert!(report(raw(41, libc::AF_INET as u64, libc::SOCK_STREAM as u64)).is_none());
        let (_, d) = report(raw(41, libc::AF_INET as u64, libc::SOCK_RAW as u64)).unwrap();
        assert_eq!(d["syscall"], "socket");
        assert!(report(raw(41, libc::AF_PACKET as u64, libc::SOCK_DGRAM as u64)).is_some());
    }

    #[test]
    fn opens_relative_to_a_directory_descriptor() {
        let at = |fd_path: &str, flags: i32| Open {
            context_data: ctx(3, 3),
            fd: 5,
            fd_path: fd_path.into(),
            pathname: "shadow".into(),
            flags: flags as u32,
            sysno: libc::SYS_openat as u64,
            ..Default::default()
        };
        let report = |o: Open| decode(kind::SYSCALL_OPEN, &o.encode_to_vec(), &scope());
        // With the descriptor's path (CORDON_GVISOR_TRACE=full): resolved.
        let (_, d) = report(at("/etc", 0)).unwrap();
        assert_eq!(d["path"], "/etc/shadow");
        // Without it: never guessed from the working directory; writes reported
        // by name, reads not.
        assert!(report(at("", 0)).is_none());
        let (_, d) = report(at("", libc::O_WRONLY)).unwrap();
        assert_eq!(
            (d["path"].as_str(), d["resolved"].as_bool()),
            (Some("shadow"), Some(false))
        );
        assert_eq!(d["dirfd"], 5);
    }

    #[test]
    fn opens_are_reported_only_outside_the_workspace_and_routine_places() {
        let open = |pathname: &str, flags: i32| Open {
            context_data: ctx(3, 3),
            fd: libc::AT_FDCWD as i64,
            pathname: pathname.into(),
            flags: flags as u32,
            sysno: libc::SYS_openat as u64,
            ..Default::default()
        };
        let report = |o: Open| decode(kind::SYSCALL_OPEN, &o.encode_to_vec(), &scope());
        assert!(
            report(open("src/main.rs", libc::O_RDWR)).is_none(),
            "workspace"
        );
        assert!(report(open(".git/hooks/pre-commit", 0)).is_none(), "a read");
        let (_, d) = report(open(
            ".git/hooks/pre-commit",
            libc::O_WRONLY | libc::O_APPEND,
        ))
        .unwrap();
        assert_eq!(d["path"], "/work/p/.git/hooks/pre-commit");
        assert!(
            report(open(".env", 0)).is_some(),
            "hidden files are reported"
        );
        assert!(
            report(open("/usr/lib/libc.so.6", 0)).is_none(),
            "system read"
        );
        let (_, d) = report(open("../../etc/shadow", 0)).unwrap();
        assert_eq!(d["path"], "/etc/shadow");
        assert_eq!(d["write"], false);
        let (_, d) = report(open("/usr/lib/evil", libc::O_WRONLY | libc::O_CREAT)).unwrap();
        assert_eq!(
            d["write"], true,
            "a write to a system directory is reported"
        );
        assert!(report(open("/tmp/x", libc::O_WRONLY | libc::O_CREAT)).is_none());
    }

    #[test]
    fn garbage_is_skipped_not_trusted() {
        assert!(split(&[]).is_none());
        assert!(
            split(&[4, 0, 1, 0, 0, 0, 0, 0]).is_none(),
            "header too small"
        );
        assert!(
            split(&[200, 0, 1, 0, 0, 0, 0, 0]).is_none(),
            "header past the end"
        );
        let junk = framed(kind::SENTRY_EXEC, 3, &[0xff, 0xff, 0xff, 0xff, 0x0f]);
        let (t, dropped, payload) = split(&junk).unwrap();
        assert_eq!(dropped, 3);
        assert!(decode(t, payload, &scope()).is_none());
        assert!(matches!(
            decode_checked(t, payload, &scope()),
            Decoded::Malformed
        ));
        // A well-formed point that is not reported is ignored, not malformed.
        let thread = TaskExit {
            context_data: Some(ContextData {
                thread_id: 7,
                thread_group_id: 3,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(
            decode_checked(kind::SENTRY_TASK_EXIT, &thread.encode_to_vec(), &scope()),
            Decoded::Ignored
        ));
        // Random bytes as every message type: never a panic.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for t in 0..=64u16 {
            for len in [0usize, 1, 2, 7, 31, 200] {
                let junk: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                let _ = decode_checked(t, &junk, &scope());
            }
        }
        let mut data = Map::new();
        sockaddr(&mut data, &[2, 0, 1]);
        assert_eq!(data["family"], 2, "short inet address: only the family");
        let long = "x".repeat(MAX_TEXT * 2);
        assert!(bounded(&long).chars().count() <= MAX_TEXT + 1);
    }

    #[test]
    fn the_trace_config_names_only_points_runsc_2022_has() {
        let c = pod_init_config(Path::new("/run/t.sock"), false);
        let points = c["trace_session"]["points"].as_array().unwrap();
        assert!(points.iter().any(|p| p["name"] == "syscall/execve/enter"));
        assert!(
            points
                .iter()
                .any(|p| p["name"] == "syscall/sysno/165/enter")
        );
        assert!(
            !points
                .iter()
                .any(|p| p["name"] == "syscall/sysno/105/enter"),
            "setuid has a named point"
        );
        assert_eq!(
            c["trace_session"]["sinks"][0]["config"]["endpoint"],
            "/run/t.sock"
        );
    }
}
