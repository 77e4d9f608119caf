//! The OCI bundle `runsc` runs: a root file system made of mount points only, and a
//! `config.json` that mounts into it what the native backend's init mounts — the
//! host's system directories and a filtered `/etc` read-only, the workspace overlay
//! read-write at its host path with protected paths read-only and hidden paths
//! masked, a private `$HOME` and `/tmp`, extra mounts, a fresh `/proc` and `/sys`.
//!
//! The root is a directory of this session (`<scratch>/rootfs`), read-only; every
//! mount point is created in it before runsc starts, so nothing depends on gVisor
//! creating directories in a read-only root.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::spec::SandboxSpec;
use crate::{Error, Result};

/// Host directories bound read-only when they exist (symbolic links are recreated),
/// as in the native backend.
const SYSTEM_DIRS: &[&str] = &[
    "usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "opt",
];

/// Most open files the agent may hold.
const NOFILE: u64 = 4096;

/// Bytes each scratch tmpfs (`/tmp`, `$HOME`, `/dev/shm`) holds without a disk quota.
const SCRATCH_DEFAULT: u64 = 512 << 20;

/// System calls refused with `EPERM` inside the sandbox (`runsc --oci-seccomp`): the
/// native backend's deny list, as far as gVisor implements the call at all (what it
/// does not implement fails with `ENOSYS` anyway, and a name its filter compiler does
/// not know would stop the sandbox from starting), less [`LEFT_TO_THE_SENTRY`].
const DENIED: &[&str] = &[
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "userfaultfd",
    "setns",
    "open_by_handle_at",
    "name_to_handle_at",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "swapon",
    "swapoff",
    "reboot",
    "syslog",
    "acct",
    "quotactl",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "iopl",
    "ioperm",
    "vhangup",
    "modify_ldt",
];

/// Calls the native backend denies that this profile leaves to gVisor's sentry,
/// which refuses each for want of a capability: the agent holds none and its
/// bounding set is empty (so no exec gives one back), and new user namespaces, where
/// it could hold some, stay denied. A call the filter refuses never reaches the
/// sentry's trace points; one left to the sentry does, so every attempt is a
/// `proc.privilege` event (the escape suite checks both the refusal and the event).
pub const LEFT_TO_THE_SENTRY: &[&str] = &[
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
];

/// The OCI seccomp profile: [`DENIED`], namespace flags on `unshare`/`clone`, the
/// terminal-injection ioctls, device nodes, and raw, packet and vsock sockets.
pub fn seccomp() -> Value {
    let eperm = |names: &[&str], args: Value| json!({"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM, "args": args});
    let arg = |index: u32, op: &str, value: u64, two: u64| json!({"index": index, "value": value, "valueTwo": two, "op": op});
    let mut rules = vec![eperm(DENIED, json!([]))];
    let ns = [
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWNS,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWCGROUP,
    ];
    for bit in ns {
        let bit = bit as u64;
        rules.push(eperm(
            &["unshare", "clone"],
            json!([arg(0, "SCMP_CMP_MASKED_EQ", bit, bit)]),
        ));
    }
    for request in [0x5412u64 /* TIOCSTI */, 0x541c /* TIOCLINUX */] {
        rules.push(eperm(
            &["ioctl"],
            json!([arg(1, "SCMP_CMP_EQ", request, 0)]),
        ));
    }
    const S_IFMT: u64 = 0o170000;
    for kind in [libc::S_IFBLK as u64, libc::S_IFCHR as u64] {
        rules.push(eperm(
            &["mknodat"],
            json!([arg(2, "SCMP_CMP_MASKED_EQ", S_IFMT, kind)]),
        ));
        rules.push(eperm(
            &["mknod"],
            json!([arg(1, "SCMP_CMP_MASKED_EQ", S_IFMT, kind)]),
        ));
    }
    for family in [libc::AF_PACKET, libc::AF_VSOCK, libc::AF_KEY, libc::AF_ALG] {
        rules.push(eperm(
            &["socket", "socketpair"],
            json!([arg(0, "SCMP_CMP_EQ", family as u64, 0)]),
        ));
    }
    for ty in [libc::SOCK_RAW as u64, 10 /* SOCK_PACKET */] {
        rules.push(eperm(
            &["socket"],
            json!([arg(1, "SCMP_CMP_MASKED_EQ", 0xf, ty)]),
        ));
    }
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": rules,
    })
}

/// What the bundle needs beyond the spec.
pub struct Options<'a> {
    pub terminal: bool,
    /// The network namespace to join (`--network=sandbox`), if any.
    pub netns: Option<&'a Path>,
    /// Entries below `/etc` only root may read on the host (relative to `/etc`, is a
    /// directory).
    pub etc_private: Vec<(PathBuf, bool)>,
    /// Whether runsc runs as root (else `--rootless`, with the invoker's credentials).
    pub as_root: bool,
}

/// Whether the invoker may open `path` as runsc's gofer would: read a file, read and
/// search a directory.
fn readable_by_invoker(path: &Path, md: &std::fs::Metadata) -> bool {
    use rustix::fs::Access;
    let mode = if md.is_dir() {
        Access::READ_OK | Access::EXEC_OK
    } else {
        Access::READ_OK
    };
    rustix::fs::access(path, mode).is_ok()
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(what, e)
}

/// `path` (absolute) under `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Create a mount point for `target` in the root: a directory, or an empty file for
/// a file mount.
fn mount_point(root: &Path, target: &Path, file: bool) -> Result<()> {
    let p = under(root, target);
    if file {
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io(format!("cannot create {}", parent.display())))?;
        }
        if !p.exists() {
            std::fs::write(&p, b"").map_err(io(format!("cannot create {}", p.display())))?;
        }
        Ok(())
    } else {
        std::fs::create_dir_all(&p).map_err(io(format!("cannot create {}", p.display())))
    }
}

fn bind(source: &Path, target: &Path, writable: bool) -> Value {
    json!({
        "destination": target,
        "type": "bind",
        "source": source,
        "options": ["rbind", if writable { "rw" } else { "ro" }, "nosuid", "nodev"],
    })
}

fn tmpfs(target: &Path, mode: &str, size: &str, read_only: bool) -> Value {
    let mut options = vec![
        "nosuid".to_owned(),
        "nodev".to_owned(),
        format!("mode={mode}"),
        format!("size={size}"),
    ];
    if read_only {
        options.push("ro".into());
    }
    json!({"destination": target, "type": "tmpfs", "source": "tmpfs", "options": options})
}

/// Refuse a mount target inside the workspace that goes through a symbolic link
/// there, as the native backend does: a link planted in the project must not decide
/// where a mount lands.
fn no_links_in_workspace(spec: &SandboxSpec, target: &Path) -> Result<()> {
    let ws = &spec.workspace;
    let Ok(rel) = target.strip_prefix(&ws.target) else {
        return Ok(());
    };
    let mut p = ws.source.clone();
    for c in rel.components() {
        p.push(c);
        if std::fs::symlink_metadata(&p).is_ok_and(|md| md.file_type().is_symlink()) {
            return Err(Error::Setup(format!(
                "{} has a symbolic link in it ({}); mount targets and protected paths must be \
                 real files and directories",
                target.display(),
                p.strip_prefix(&ws.source).unwrap_or(&p).display()
            )));
        }
    }
    Ok(())
}

/// Prepare `<scratch>/rootfs` and return the `config.json` for `spec`.
pub fn prepare(spec: &SandboxSpec, opts: &Options<'_>) -> Result<Value> {
    let root = spec.scratch.join("rootfs");
    std::fs::create_dir_all(&root).map_err(io(format!("cannot create {}", root.display())))?;
    // What masks a file: empty, and readable by nobody (the agent is uid 0 in the
    // sandbox, without capabilities, so mode 000 keeps it out).
    let empty_file = spec.scratch.join("empty");
    std::fs::write(&empty_file, b"")
        .map_err(io(format!("cannot create {}", empty_file.display())))?;
    std::fs::set_permissions(
        &empty_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .map_err(io(format!("cannot protect {}", empty_file.display())))?;
    let mut mounts = Vec::new();
    for d in SYSTEM_DIRS {
        let host = Path::new("/").join(d);
        let Ok(md) = std::fs::symlink_metadata(&host) else {
            continue;
        };
        let inside = root.join(d);
        if md.file_type().is_symlink() {
            let target = std::fs::read_link(&host)
                .map_err(io(format!("cannot read link {}", host.display())))?;
            if std::fs::symlink_metadata(&inside).is_err() {
                std::os::unix::fs::symlink(&target, &inside)
                    .map_err(io(format!("cannot create {}", inside.display())))?;
            }
        } else if md.is_dir() {
            mount_point(&root, &host, false)?;
            mounts.push(bind(&host, &host, false));
        }
    }
    // /etc: the host's, read-only, with what must never enter masked.
    mount_point(&root, Path::new("/etc"), false)?;
    mounts.push(bind(Path::new("/etc"), Path::new("/etc"), false));
    // Rootless, runsc's gofer runs with the invoker's credentials: it cannot open what
    // the invoker may not read, so it can mask no such file (and fails the start if
    // asked to), and neither can the sandbox read it through the gofer.
    let maskable = |p: &Path, md: &std::fs::Metadata| opts.as_root || readable_by_invoker(p, md);
    for name in crate::native::init::ETC_DENY {
        let host = Path::new("/etc").join(name);
        match std::fs::symlink_metadata(&host) {
            Ok(md) if !maskable(&host, &md) => {}
            Ok(md) if md.is_dir() => mounts.push(tmpfs(&host, "0000", "4k", true)),
            Ok(md) if md.is_file() => mounts.push(bind(&empty_file, &host, false)),
            _ => {}
        }
    }
    // Top-level /etc entries not everyone may read (the native backend leaves them
    // out of its /etc), and below /etc what only root may read: the agent is uid 0
    // here.
    if let Ok(entries) = std::fs::read_dir("/etc") {
        for e in entries.flatten() {
            let path = e.path();
            let Ok(md) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if md.file_type().is_symlink()
                || crate::native::init::world_readable(&md)
                || crate::native::init::ETC_DENY
                    .iter()
                    .any(|d| path.file_name().is_some_and(|n| n == *d))
                || !maskable(&path, &md)
            {
                continue;
            }
            mounts.push(if md.is_dir() {
                tmpfs(&path, "0000", "4k", true)
            } else {
                bind(&empty_file, &path, false)
            });
        }
    }
    for (rel, dir) in &opts.etc_private {
        let path = Path::new("/etc").join(rel);
        mounts.push(if *dir {
            tmpfs(&path, "0000", "4k", true)
        } else {
            bind(&empty_file, &path, false)
        });
    }
    for (target, fstype) in [("/proc", "proc"), ("/sys", "sysfs")] {
        mount_point(&root, Path::new(target), false)?;
        mounts.push(json!({
            "destination": target, "type": fstype, "source": fstype,
            "options": ["nosuid", "nodev", "noexec", "ro"],
        }));
    }
    mount_point(&root, Path::new("/dev"), false)?;
    mounts.push(json!({
        "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
        "options": ["nosuid", "mode=755"],
    }));
    // gVisor's own /dev has a FUSE device and a TUN device (both served by the
    // sentry); the agent needs neither.
    for dev in ["/dev/fuse", "/dev/net/tun"] {
        mounts.push(bind(&empty_file, Path::new(dev), false));
    }
    // Scratch space: each tmpfs (the sentry's memory) holds at most the disk quota,
    // and 512 MiB without one. The sentry cannot bind one tmpfs in several places,
    // so unlike the native backend each is bounded on its own.
    let scratch = spec
        .limits
        .disk
        .map_or(SCRATCH_DEFAULT, |q| q.clamp(4096, SCRATCH_DEFAULT))
        .to_string();
    mounts.push(tmpfs(Path::new("/dev/shm"), "1777", &scratch, false));
    mount_point(&root, Path::new("/tmp"), false)?;
    mounts.push(tmpfs(Path::new("/tmp"), "1777", &scratch, false));
    mount_point(&root, &spec.home, false)?;
    mounts.push(tmpfs(&spec.home, "0700", &scratch, false));

    // The workspace overlay at its host path; protected paths read-only over it,
    // hidden ones masked.
    let ws = &spec.workspace;
    mount_point(&root, &ws.target, false)?;
    mounts.push(bind(&ws.source, &ws.target, true));
    let host_of = |p: &Path| ws.source.join(p.strip_prefix(&ws.target).unwrap_or(p));
    for p in &ws.read_only {
        let host = host_of(p);
        if host.exists() {
            mounts.push(bind(&host, p, false));
        }
    }
    for p in &ws.hidden {
        match std::fs::symlink_metadata(host_of(p)) {
            Ok(md) if md.is_dir() => mounts.push(tmpfs(p, "0700", "4k", true)),
            Ok(_) => mounts.push(bind(&empty_file, p, false)),
            Err(_) => {}
        }
    }
    for m in &spec.mounts {
        no_links_in_workspace(spec, &m.target)?;
        let file = std::fs::metadata(&m.source).is_ok_and(|md| !md.is_dir());
        // A target under /etc or another bound directory exists there already.
        if !m.target.starts_with("/etc") {
            mount_point(&root, &m.target, file)?;
        }
        mounts.push(bind(&m.source, &m.target, m.writable));
    }

    let mut rlimits = vec![json!({"type": "RLIMIT_NOFILE", "hard": NOFILE, "soft": NOFILE})];
    if let Some(p) = spec.limits.pids {
        // The sentry enforces RLIMIT_NPROC per user inside the sandbox; a cgroup
        // pids limit would count the sandbox's host threads instead.
        rlimits.push(json!({"type": "RLIMIT_NPROC", "hard": p, "soft": p}));
    }
    let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let no_caps: Vec<String> = Vec::new();
    let mut network = json!({"type": "network"});
    if let Some(ns) = opts.netns {
        network["path"] = json!(ns);
    }
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": opts.terminal,
            "user": {"uid": 0, "gid": 0},
            "args": spec.argv,
            "env": env,
            "cwd": spec.cwd,
            "capabilities": {
                "bounding": no_caps, "effective": no_caps, "inheritable": no_caps,
                "permitted": no_caps, "ambient": no_caps,
            },
            "noNewPrivileges": true,
            "rlimits": rlimits,
        },
        "root": {"path": root, "readonly": true},
        "hostname": spec.hostname,
        "mounts": mounts,
        "linux": {
            "seccomp": seccomp(),
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, network,
            ],
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{BindMount, Limits, NetworkMode, WorkspaceMount};

    fn spec(dir: &Path) -> SandboxSpec {
        let ws = dir.join("mnt");
        std::fs::create_dir_all(ws.join(".git/hooks")).unwrap();
        std::fs::write(ws.join(".env"), b"SECRET=1").unwrap();
        SandboxSpec {
            session: "s1".into(),
            argv: vec!["sh".into(), "-c".into(), "true".into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: "/home/me/project".into(),
            hostname: "cordon".into(),
            workspace: WorkspaceMount {
                source: ws,
                target: "/home/me/project".into(),
                read_only: vec!["/home/me/project/.git/hooks".into()],
                hidden: vec!["/home/me/project/.env".into()],
            },
            mounts: vec![BindMount {
                source: dir.join("resolv.conf"),
                target: "/etc/resolv.conf".into(),
                writable: false,
            }],
            home: "/home/agent".into(),
            limits: Limits {
                pids: Some(64),
                ..Limits::default()
            },
            scratch: dir.join("root"),
            network: NetworkMode::Loopback,
        }
    }

    #[test]
    fn calls_left_to_the_sentry_are_traced_and_the_rest_of_the_native_list_filtered() {
        let profile = seccomp();
        let filtered: Vec<&str> = profile["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["names"].as_array().unwrap())
            .map(|n| n.as_str().unwrap())
            .collect();
        let traced = |name: &str| {
            super::super::trace::PRIVILEGED_SYSNOS
                .iter()
                .any(|(_, n)| *n == name)
        };
        for name in LEFT_TO_THE_SENTRY {
            assert!(!filtered.contains(name), "{name} is filtered");
            assert!(traced(name), "{name} is not traced");
        }
        for name in [
            "ptrace",
            "bpf",
            "keyctl",
            "setns",
            "io_uring_setup",
            "userfaultfd",
        ] {
            assert!(filtered.contains(&name), "{name} is not filtered");
        }
    }

    #[test]
    fn the_bundle_mirrors_the_native_layout() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("resolv.conf"), b"nameserver 10.0.0.1\n").unwrap();
        let s = spec(dir.path());
        let c = prepare(
            &s,
            &Options {
                terminal: false,
                netns: None,
                etc_private: Vec::new(),
                as_root: true,
            },
        )
        .unwrap();
        let mounts = c["mounts"].as_array().unwrap();
        let at =
            |t: &str| -> Vec<&Value> { mounts.iter().filter(|m| m["destination"] == t).collect() };
        let ws = at("/home/me/project");
        assert_eq!(ws[0]["options"][1], "rw", "the workspace is writable");
        assert_eq!(at("/home/me/project/.git/hooks")[0]["options"][1], "ro");
        let hidden = at("/home/me/project/.env");
        assert_eq!(hidden[0]["source"], json!(dir.path().join("root/empty")));
        assert_eq!(at("/usr")[0]["options"][1], "ro");
        assert_eq!(at("/home/agent")[0]["type"], "tmpfs");
        if Path::new("/etc/shadow").exists() {
            assert_eq!(
                at("/etc/shadow")[0]["source"],
                json!(dir.path().join("root/empty")),
                "/etc/shadow is masked"
            );
        }
        assert_eq!(c["root"]["readonly"], true);
        assert_eq!(c["process"]["noNewPrivileges"], true);
        assert_eq!(c["process"]["capabilities"]["bounding"], json!([]));
        assert!(
            c["process"]["rlimits"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["type"] == "RLIMIT_NPROC" && r["hard"] == 64)
        );
        assert!(dir.path().join("root/rootfs/home/me/project").is_dir());
        assert!(dir.path().join("root/rootfs/usr").is_dir());
    }
}
