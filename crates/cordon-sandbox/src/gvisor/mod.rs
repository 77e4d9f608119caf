//! The `gvisor` backend: the agent runs on `runsc`, gVisor's user-space kernel, so
//! its system calls reach the sentry, not the host kernel.
//!
//! - The OCI bundle is generated from the same [`SandboxSpec`] as the native
//!   backend's mounts ([`bundle`]).
//! - Limits: the session's cgroup (the native backend's [`Cgroups`]) is joined by
//!   `runsc` itself before it execs, so the sentry, the gofer and everything the
//!   agent runs are inside it; `runsc --ignore-cgroups` keeps runsc from making its
//!   own at the hierarchy's root. The memory limit is raised by
//!   [`SENTRY_OVERHEAD`] for the sandbox's own kernel. A pids limit becomes the
//!   agent's `RLIMIT_NPROC`, enforced by the sentry: a cgroup would count the
//!   sandbox's host threads, not the agent's processes.
//! - Output: the agent's streams are pipes (or a terminal through
//!   `--console-socket`), never a shared regular file (runsc processes writing one
//!   file overwrite each other).
//! - Network: `--network=none` (loopback only) unless the session has a gateway.
//!   Then a network namespace is made on a thread of this process, holding a TAP
//!   device configured as the native backend configures its own; runsc joins that
//!   namespace (`--network=sandbox`) and its netstack drives the TAP, whose other end
//!   is the gateway's user-space stack. runsc 2022-12 refuses to start when
//!   `/proc/sys/net/core/rmem_default` exists (it takes that to mean the root
//!   namespace, and kernels since 5.x show it in every namespace): runsc runs in a
//!   private mount namespace with an empty tmpfs over `/proc/sys/net`.
//! - Platform: systrap where this runsc has it, KVM where it boots here (probed once
//!   and remembered per runsc version and kernel), else ptrace ([`platform`]).
//! - Monitoring: a trace session on a `SOCK_SEQPACKET` socket ([`trace`]).
//!   `CORDON_GVISOR_TRACE=off` runs without it (for measuring its cost; the
//!   session's `sandbox.ready` event then says `trace: false`), `=lite` without
//!   resolving `openat` names relative to directory descriptors.
//! - Signals: `runsc run` does not forward signals; [`Control::signal`] uses
//!   `runsc kill`.
//!
//! What it does not do: run rootless with a gateway (an unprivileged user gets
//! `--rootless --network=none`, and a policy that needs the network is refused).

pub mod bundle;
pub mod trace;

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use serde_json::{Map, json};

use crate::native::cgroup::{Cgroups, Enforcement};
use crate::spec::{Ended, NetworkMode, SandboxSpec, Stdio};
use crate::{Backend, BackendKind, Control, Error, EventSink, Result, Running};

/// Memory the sandbox's own kernel (sentry and gofer) may use on top of the
/// agent's limit: the cgroup holds both.
pub const SENTRY_OVERHEAD: u64 = 128 << 20;
/// Longest a KVM probe may take before KVM counts as unusable.
const KVM_PROBE: Duration = Duration::from_secs(8);

/// The `gvisor` backend.
pub struct Gvisor {
    runsc: Option<PathBuf>,
}

impl Default for Gvisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Gvisor {
    pub fn new() -> Self {
        Gvisor {
            runsc: find_runsc(),
        }
    }
}

/// `$CORDON_RUNSC`, else `runsc` on `PATH`, else Debian's `/usr/bin/runsc`.
pub fn find_runsc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CORDON_RUNSC") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("runsc"))
        .chain([
            PathBuf::from("/usr/bin/runsc"),
            PathBuf::from("/usr/sbin/runsc"),
        ])
        .find(|p| p.is_file())
}

/// `runsc --version`'s first line.
pub fn version(runsc: &Path) -> std::result::Result<String, String> {
    let out = Command::new(runsc)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", runsc.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .next()
        .map(str::to_owned)
        .filter(|l| out.status.success() && !l.is_empty())
        .ok_or_else(|| format!("{} --version failed", runsc.display()))
}

/// The platforms this runsc names in its `-platform` flag's help.
pub fn platforms(runsc: &Path) -> Vec<String> {
    let Ok(out) = Command::new(runsc).arg("flags").output() else {
        return Vec::new();
    };
    // Go's flag package prints its usage on standard error.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if l.trim_start().starts_with("-platform") {
            let help = lines.next().unwrap_or_default();
            let list = help.split(':').nth(1).unwrap_or(help);
            return ["systrap", "kvm", "ptrace"]
                .into_iter()
                .filter(|p| list.contains(p))
                .map(str::to_owned)
                .collect();
        }
    }
    Vec::new()
}

/// The platform a session uses, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub name: String,
    pub why: String,
}

fn cache_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("cordon").join("gvisor-runsc.json"))
}

/// What Cordon knows about one runsc binary: its version and the platform to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runsc {
    pub path: PathBuf,
    pub version: String,
    pub platform: Platform,
}

/// Probe `runsc` (version, platforms, whether KVM boots), or reuse the last probe of
/// the same binary on the same kernel: a start-up should not pay for three runsc
/// processes before the one that runs the agent. The cache is keyed by the binary's
/// path, size and modification time and the kernel release, and lives in the user's
/// cache directory. `$CORDON_GVISOR_PLATFORM` overrides the platform.
pub fn probe(runsc: &Path) -> std::result::Result<Runsc, String> {
    use std::os::unix::fs::MetadataExt;
    static MEMO: std::sync::Mutex<Option<Runsc>> = std::sync::Mutex::new(None);
    let md = std::fs::metadata(runsc).map_err(|e| format!("{}: {e}", runsc.display()))?;
    let key = format!(
        "{}\t{}\t{}.{}\t{}",
        runsc.display(),
        md.size(),
        md.mtime(),
        md.mtime_nsec(),
        rustix::system::uname().release().to_string_lossy()
    );
    let overridden = |mut r: Runsc| {
        if let Ok(p) = std::env::var("CORDON_GVISOR_PLATFORM") {
            r.platform = Platform {
                name: p,
                why: "set by CORDON_GVISOR_PLATFORM".into(),
            };
        }
        r
    };
    let mut memo = MEMO.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = memo.as_ref().filter(|r| r.path == runsc) {
        return Ok(overridden(r.clone()));
    }
    let cached = cache_file()
        .and_then(|f| std::fs::read(f).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .filter(|v| v["key"] == key.as_str())
        .and_then(|v| {
            Some(Runsc {
                path: runsc.to_path_buf(),
                version: v["version"].as_str()?.to_owned(),
                platform: Platform {
                    name: v["platform"].as_str()?.to_owned(),
                    why: format!("{} (probed before)", v["why"].as_str()?),
                },
            })
        });
    let r = match cached {
        Some(r) => r,
        None => {
            let version = version(runsc)?;
            let platform = choose_platform(runsc);
            if let Some(f) = cache_file() {
                let _ = std::fs::create_dir_all(f.parent().unwrap_or(Path::new(".")));
                let v = json!({"key": key, "version": version, "platform": platform.name, "why": platform.why});
                let _ = std::fs::write(&f, v.to_string());
            }
            Runsc {
                path: runsc.to_path_buf(),
                version,
                platform,
            }
        }
    };
    *memo = Some(r.clone());
    Ok(overridden(r))
}

/// The fastest platform that works here: systrap if this runsc has it; else KVM if
/// `/dev/kvm` is usable and a probe sandbox boots on it within [`KVM_PROBE`]; else
/// ptrace.
fn choose_platform(runsc: &Path) -> Platform {
    let have = platforms(runsc);
    if have.iter().any(|p| p == "systrap") {
        return Platform {
            name: "systrap".into(),
            why: "the fastest platform this runsc has".into(),
        };
    }
    let ptrace = |why: String| Platform {
        name: "ptrace".into(),
        why,
    };
    if !have.iter().any(|p| p == "kvm") {
        return ptrace("this runsc has neither systrap nor kvm".into());
    }
    if rustix::fs::access(
        "/dev/kvm",
        rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
    )
    .is_err()
    {
        return ptrace("no systrap in this runsc, and /dev/kvm is not usable".into());
    }
    match probe_kvm(runsc) {
        Ok(()) => Platform {
            name: "kvm".into(),
            why: "no systrap in this runsc; KVM boots here".into(),
        },
        Err(e) => ptrace(format!(
            "no systrap in this runsc; KVM did not boot here: {e}"
        )),
    }
}

/// Boot `/bin/true` on KVM; `Err` says why it is not usable.
fn probe_kvm(runsc: &Path) -> std::result::Result<(), String> {
    let dir = tempfile_dir().map_err(|e| format!("no temporary directory: {e}"))?;
    let config = json!({
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["/bin/true"], "cwd": "/",
                    "env": ["PATH=/usr/bin:/bin"], "noNewPrivileges": true},
        "root": {"path": "/", "readonly": true},
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network"}]},
    });
    let cleanup = |d: &Path| {
        let _ = std::fs::remove_dir_all(d);
    };
    if let Err(e) = std::fs::write(dir.join("config.json"), config.to_string()) {
        cleanup(&dir);
        return Err(e.to_string());
    }
    let id = format!("cordon-kvm-probe-{}", std::process::id());
    let state = dir.join("state");
    let mut child = match Command::new(runsc)
        .arg("--root")
        .arg(&state)
        .args(["--platform=kvm", "--network=none", "--ignore-cgroups"])
        .args(rootless_flag())
        .arg("run")
        .arg("--bundle")
        .arg(&dir)
        .arg(&id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            cleanup(&dir);
            return Err(e.to_string());
        }
    };
    let deadline = std::time::Instant::now() + KVM_PROBE;
    let r = loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => break Ok(()),
            Ok(Some(s)) => break Err(format!("the probe sandbox failed ({s})")),
            Ok(None) if std::time::Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!(
                    "the probe sandbox did not finish within {}s",
                    KVM_PROBE.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => break Err(e.to_string()),
        }
    };
    let _ = Command::new(runsc)
        .arg("--root")
        .arg(&state)
        .args(["delete", "--force", &id])
        .stderr(std::process::Stdio::null())
        .status();
    cleanup(&dir);
    r
}

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    let name: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let d = std::env::temp_dir().join(format!("cordon-runsc-{name}"));
    std::fs::create_dir(&d)?;
    Ok(d)
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn rootless_flag() -> Vec<&'static str> {
    if is_root() {
        Vec::new()
    } else {
        vec!["--rootless"]
    }
}

impl Backend for Gvisor {
    fn kind(&self) -> BackendKind {
        BackendKind::Gvisor
    }

    fn available(&self) -> std::result::Result<(), String> {
        let runsc = self
            .runsc
            .as_deref()
            .ok_or("runsc is not installed (Debian: apt-get install runsc; or set CORDON_RUNSC)")?;
        probe(runsc).map(|_| ())
    }

    fn start(
        &self,
        spec: &SandboxSpec,
        stdio: Stdio,
        events: Arc<dyn EventSink>,
    ) -> Result<Box<dyn Running>> {
        spec.validate()?;
        let unavailable = |reason: String| Error::Unavailable {
            backend: "gvisor".into(),
            reason,
        };
        self.available().map_err(unavailable)?;
        let runsc = self.runsc.clone().unwrap_or_default();
        if spec.network == NetworkMode::Gateway && !is_root() {
            return Err(unavailable(
                "the gateway network needs root on the gvisor backend (runsc --rootless \
                 has no network namespace to join); use the native backend, or no network"
                    .into(),
            ));
        }
        // A program that is not there ends the run as a shell would (127, or 126
        // when it is not executable), with the native backend's message; runsc would
        // only say it failed (128).
        if let Err((code, why)) = find_program(spec) {
            let msg = format!("cordon: cannot run {}: {why}\n", spec.argv[0]);
            match &stdio {
                Stdio::Pipes { stderr, .. } => {
                    let _ = rustix::io::write(stderr, msg.as_bytes());
                }
                Stdio::Terminal { .. } => eprint!("{msg}"),
            }
            return Ok(Box::new(NotStarted { code }));
        }
        let info = probe(&runsc).map_err(unavailable)?;
        let platform = info.platform.clone();
        let scratch = &spec.scratch;
        std::fs::create_dir_all(scratch)
            .map_err(|e| Error::io(format!("cannot create {}", scratch.display()), e))?;

        // Limits: the session's cgroup, joined by runsc before it execs.
        let mut cg_limits = spec.limits.clone();
        cg_limits.pids = None;
        cg_limits.memory = cg_limits.memory.map(|m| m.saturating_add(SENTRY_OVERHEAD));
        let enforcement = Cgroups::create(&spec.session, &cg_limits);
        if let Enforcement::Rlimits(why) = &enforcement
            && (spec.limits.memory.is_some() || spec.limits.cpus.is_some())
        {
            return Err(Error::Setup(format!(
                "the memory and cpu limits need a cgroup on the gvisor backend ({why})"
            )));
        }
        let procs: Vec<CString> = match &enforcement {
            Enforcement::Cgroup(c) => c
                .procs_paths()
                .iter()
                .filter_map(|p| CString::new(p.as_os_str().as_encoded_bytes()).ok())
                .collect(),
            _ => Vec::new(),
        };

        // Trace session: on with directory-descriptor paths (the default), `lite`
        // without them, or `off` (both for measuring what it costs).
        let (tracing_on, dirfd_paths) = match std::env::var("CORDON_GVISOR_TRACE")
            .unwrap_or_default()
            .as_str()
        {
            "" | "on" => (true, true),
            "lite" => (true, false),
            "off" => (false, false),
            other => {
                return Err(Error::Spec(format!(
                    "CORDON_GVISOR_TRACE={other:?} is not understood; use on, lite or off"
                )));
            }
        };

        // Network.
        let mut netns = None;
        let mut link = None;
        if spec.network == NetworkMode::Gateway {
            let (ns, tap) = NetNs::create()?;
            link = Some(tap);
            netns = Some(ns);
        }

        // The trace socket and configuration.
        let sock_path = scratch.join("trace.sock");
        let _ = std::fs::remove_file(&sock_path);
        let listener = seqpacket_listener(&sock_path)?;
        let pod_init = scratch.join("trace.json");
        std::fs::write(
            &pod_init,
            trace::pod_init_config(&sock_path, dirfd_paths).to_string(),
        )
        .map_err(|e| Error::io(format!("cannot write {}", pod_init.display()), e))?;
        let scope = trace::Scope {
            workspace: spec.workspace.target.clone(),
            read_only: spec.workspace.read_only.clone(),
            hidden: spec.workspace.hidden.clone(),
            routine: [
                "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt",
            ]
            .iter()
            .map(PathBuf::from)
            .chain(["/proc", "/dev", "/sys", "/tmp"].iter().map(PathBuf::from))
            .chain([spec.home.clone()])
            .chain(
                [
                    "/etc/ld.so.cache",
                    "/etc/localtime",
                    "/etc/nsswitch.conf",
                    "/etc/passwd",
                    "/etc/group",
                    "/etc/host.conf",
                    "/etc/hosts",
                    "/etc/resolv.conf",
                    "/etc/gai.conf",
                    "/etc/ssl/certs",
                    "/etc/cordon",
                ]
                .iter()
                .map(PathBuf::from),
            )
            .collect(),
        };
        let stats = Arc::new(trace::Stats::default());
        let tracer = {
            let (events, stats) = (events.clone(), stats.clone());
            std::thread::Builder::new()
                .name("gvisor-trace".into())
                .spawn(move || trace::serve(listener, scope, events, stats))
                .map_err(|e| Error::io("cannot start the trace reader", e))?
        };

        // Terminal.
        let (tty, console) = match &stdio {
            Stdio::Terminal { rows, cols } => {
                let path = scratch.join("console.sock");
                let _ = std::fs::remove_file(&path);
                let l = std::os::unix::net::UnixListener::bind(&path)
                    .map_err(|e| Error::io("cannot make the console socket", e))?;
                (Some((*rows, *cols)), Some((l, path)))
            }
            Stdio::Pipes { .. } => (None, None),
        };

        let bundle_config = bundle::prepare(
            spec,
            &bundle::Options {
                terminal: tty.is_some(),
                netns: netns.as_ref().map(|n| n.path.as_path()),
                etc_private: if is_root() {
                    crate::native::init::etc_private()
                } else {
                    Vec::new()
                },
                as_root: is_root(),
            },
        )?;
        let config_path = scratch.join("config.json");
        std::fs::write(&config_path, bundle_config.to_string())
            .map_err(|e| Error::io(format!("cannot write {}", config_path.display()), e))?;

        let id = format!("cordon-{}", spec.session);
        let state = scratch.join("state");
        let mut cmd = Command::new(&runsc);
        cmd.arg("--root")
            .arg(&state)
            .arg(format!("--platform={}", platform.name))
            .arg(if netns.is_some() {
                "--network=sandbox"
            } else {
                "--network=none"
            })
            .arg("--ignore-cgroups")
            .arg("--oci-seccomp")
            .args(tracing_on.then(|| format!("--pod-init-config={}", pod_init.display())))
            .args(rootless_flag())
            .arg("run")
            .arg("--bundle")
            .arg(scratch);
        if let Some((_, path)) = &console {
            cmd.arg("--console-socket").arg(path);
        }
        cmd.arg(&id);
        match stdio {
            Stdio::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                cmd.stdin(stdin).stdout(stdout).stderr(stderr);
            }
            Stdio::Terminal { .. } => {
                cmd.stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null());
            }
        }
        let hide_proc_sys_net = netns.is_some();
        let (tmpfs, target) = (c"tmpfs", c"/proc/sys/net");
        // SAFETY: the closure runs in the forked child before exec and only makes
        // system calls on memory prepared before the fork (no allocation, no locks).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for p in &procs {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let ok = libc::write(fd, c"0".as_ptr().cast(), 1) == 1;
                    libc::close(fd);
                    if !ok {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if hide_proc_sys_net
                    && (libc::unshare(libc::CLONE_NEWNS) != 0
                        || libc::mount(
                            std::ptr::null(),
                            c"/".as_ptr(),
                            std::ptr::null(),
                            libc::MS_REC | libc::MS_PRIVATE,
                            std::ptr::null(),
                        ) != 0
                        || libc::mount(
                            tmpfs.as_ptr(),
                            target.as_ptr(),
                            tmpfs.as_ptr(),
                            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                            std::ptr::null(),
                        ) != 0)
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("cannot start {}", runsc.display()), e))?;
        let pid = child.id();

        let mut data = Map::new();
        data.insert("backend".into(), json!("gvisor"));
        data.insert("platform".into(), json!(platform.name));
        data.insert("platform_reason".into(), json!(platform.why));
        data.insert("trace".into(), json!(tracing_on));
        data.insert("runsc".into(), json!(info.version));
        data.insert("pid".into(), json!(pid));
        events.event("sandbox.ready", data);

        let control = Arc::new(GvisorControl {
            runsc: runsc.clone(),
            state: state.clone(),
            id: id.clone(),
            run: rustix::process::Pid::from_raw(pid as i32).and_then(|p| {
                rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
            }),
        });
        let mut child = child;
        let terminal = match (console, tty) {
            (Some((listener, _)), Some((rows, cols))) => {
                match receive_console(listener, &mut child, rows, cols) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        // Not left running without its terminal.
                        control.kill();
                        let _ = child.wait();
                        return Err(e);
                    }
                }
            }
            _ => None,
        };
        Ok(Box::new(GvisorRunning {
            control,
            child,
            runsc,
            state,
            id,
            enforcement,
            pids_rlimit: spec.limits.pids,
            platform,
            terminal,
            link,
            netns,
            tracer: Some(tracer),
            tracing: tracing_on,
            stats,
            events,
        }))
    }
}

/// Where a path of the sandbox's view is on the host before the sandbox starts: in
/// the workspace, an extra mount, or a system directory (the private home and /tmp
/// start empty).
fn host_view(spec: &SandboxSpec, p: &Path) -> Option<PathBuf> {
    if let Ok(rel) = p.strip_prefix(&spec.workspace.target) {
        return Some(spec.workspace.source.join(rel));
    }
    for m in spec.mounts.iter().rev() {
        if let Ok(rel) = p.strip_prefix(&m.target) {
            return Some(m.source.join(rel));
        }
    }
    ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/opt", "/etc"]
        .iter()
        .any(|d| p.starts_with(d))
        .then(|| p.to_path_buf())
}

/// Look the agent's program up as `execvp` would, in the sandbox's view:
/// `Err((127, ENOENT))` when it is nowhere, `Err((126, EACCES))` when it is not
/// executable.
fn find_program(spec: &SandboxSpec) -> std::result::Result<(), (i32, &'static str)> {
    use std::os::unix::fs::PermissionsExt;
    let name = Path::new(&spec.argv[0]);
    let candidates: Vec<PathBuf> = if spec.argv[0].contains('/') {
        vec![spec.cwd.join(name)]
    } else {
        let path = spec.env.iter().find(|(k, _)| k == "PATH").map_or(
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            |(_, v)| v.as_str(),
        );
        path.split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| Path::new(d).join(name))
            .collect()
    };
    let mut found_unexecutable = false;
    for c in candidates {
        let Some(host) = host_view(spec, &c) else {
            // Somewhere only the sandbox knows (its /tmp, its home): let runsc try.
            return Ok(());
        };
        match std::fs::metadata(&host) {
            Ok(md) if md.is_file() && md.permissions().mode() & 0o111 != 0 => return Ok(()),
            Ok(md) if md.is_file() => found_unexecutable = true,
            _ => {}
        }
    }
    Err(if found_unexecutable {
        (126, "EACCES")
    } else {
        (127, "ENOENT")
    })
}

/// A run that ended before the sandbox started (the program was not found).
struct NotStarted {
    code: i32,
}

struct NoControl;

impl Control for NoControl {
    fn signal(&self, _: i32) {}
    fn kill(&self) {}
}

impl Running for NotStarted {
    fn control(&self) -> Arc<dyn Control> {
        Arc::new(NoControl)
    }
    fn terminal(&mut self) -> Option<OwnedFd> {
        None
    }
    fn wait(&mut self) -> Result<Ended> {
        Ok(Ended {
            code: self.code,
            signal: None,
            limits: Vec::new(),
            enforcement: "the sandbox did not start".into(),
            events_suppressed: 0,
        })
    }
}

/// Accept runsc's console socket connection and take the terminal's master side;
/// an error if runsc exits first or takes longer than 30 seconds.
fn receive_console(
    listener: std::os::unix::net::UnixListener,
    child: &mut Child,
    rows: u16,
    cols: u16,
) -> Result<OwnedFd> {
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("cannot poll the console socket", e))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(Error::Setup(format!(
                        "runsc ended ({status}) before handing over the terminal"
                    )));
                }
                if std::time::Instant::now() > deadline {
                    return Err(Error::Setup(
                        "runsc did not hand over the terminal within 30 seconds".into(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(Error::io("runsc did not connect to the console socket", e)),
        }
    };
    conn.set_nonblocking(false)
        .map_err(|e| Error::io("cannot read the console socket", e))?;
    let mut buf = [0u8; 256];
    let fd = crate::sys::recv_msg(conn.as_fd(), &mut buf)
        .map_err(|e| Error::io("cannot receive the terminal from runsc", e))?
        .and_then(|(_, fd)| fd)
        .ok_or_else(|| Error::Setup("runsc sent no terminal on the console socket".into()))?;
    let size = rustix::termios::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let _ = rustix::termios::tcsetwinsize(&fd, size);
    Ok(fd)
}

fn seqpacket_listener(path: &Path) -> Result<OwnedFd> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let what = |e: rustix::io::Errno| {
        Error::io(
            format!("cannot listen on {}", path.display()),
            std::io::Error::from(e),
        )
    };
    let s = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(what)?;
    let addr = SocketAddrUnix::new(path).map_err(what)?;
    rustix::net::bind(&s, &addr).map_err(what)?;
    rustix::net::listen(&s, 1).map_err(what)?;
    Ok(s)
}

/// A network namespace held by a parked thread of this process, with the TAP device
/// the sandbox's netstack drives.
struct NetNs {
    path: PathBuf,
    stop: mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NetNs {
    fn create() -> Result<(NetNs, OwnedFd)> {
        let (tx, rx) = mpsc::channel::<std::result::Result<(PathBuf, OwnedFd), String>>();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("gvisor-netns".into())
            .spawn(move || {
                let made = (|| -> std::result::Result<(PathBuf, OwnedFd), String> {
                    use cordon_net::stack::{GATEWAY_IP, MTU, PREFIX_LEN, SANDBOX_IP};
                    crate::sys::unshare(libc::CLONE_NEWNET)
                        .map_err(|e| format!("cannot make a network namespace: {e}"))?;
                    let tap = cordon_net::tap::create_tap(crate::native::init::TAP_NAME)
                        .map_err(|e| format!("cannot create the TAP device: {e}"))?;
                    cordon_net::tap::configure(
                        crate::native::init::TAP_NAME,
                        SANDBOX_IP,
                        PREFIX_LEN,
                        MTU,
                        GATEWAY_IP,
                    )
                    .map_err(|e| format!("cannot configure the TAP device: {e}"))?;
                    let tid = rustix::thread::gettid().as_raw_nonzero();
                    let path =
                        PathBuf::from(format!("/proc/{}/task/{tid}/ns/net", std::process::id()));
                    Ok((path, tap))
                })();
                let ok = made.is_ok();
                let _ = tx.send(made);
                if ok {
                    // Hold the namespace until the session ends.
                    let _ = stopped.recv();
                }
            })
            .map_err(|e| Error::io("cannot start the network namespace thread", e))?;
        let (path, tap) = rx
            .recv()
            .map_err(|_| Error::Setup("the network namespace thread died".into()))?
            .map_err(Error::Setup)?;
        Ok((
            NetNs {
                path,
                stop,
                thread: Some(thread),
            },
            tap,
        ))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct GvisorControl {
    runsc: PathBuf,
    state: PathBuf,
    id: String,
    /// The `runsc run` process: killing it tears the sandbox down (its children
    /// die with it), the fallback when `runsc kill` cannot reach the container.
    run: Option<OwnedFd>,
}

impl GvisorControl {
    fn runsc_kill(&self, signal: i32, all: bool) {
        let mut cmd = Command::new(&self.runsc);
        cmd.arg("--root").arg(&self.state).arg("kill");
        if all {
            cmd.arg("--all");
        }
        let _ = cmd
            .arg(&self.id)
            .arg(signal.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Control for GvisorControl {
    fn signal(&self, signal: i32) {
        self.runsc_kill(signal, false);
    }

    fn kill(&self) {
        self.runsc_kill(libc::SIGKILL, true);
        if let Some(fd) = &self.run {
            let _ = rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL);
        }
    }
}

struct GvisorRunning {
    control: Arc<GvisorControl>,
    child: Child,
    runsc: PathBuf,
    state: PathBuf,
    id: String,
    enforcement: Enforcement,
    /// The process limit, enforced by the sentry as RLIMIT_NPROC (not by the cgroup).
    pids_rlimit: Option<u64>,
    platform: Platform,
    terminal: Option<OwnedFd>,
    link: Option<OwnedFd>,
    netns: Option<NetNs>,
    tracer: Option<std::thread::JoinHandle<()>>,
    tracing: bool,
    stats: Arc<trace::Stats>,
    events: Arc<dyn EventSink>,
}

impl Running for GvisorRunning {
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
        // `Child::wait` retries on EINTR itself.
        let status = self
            .child
            .wait()
            .map_err(|e| Error::io("waiting for runsc", e))?;
        // runsc passes the agent's exit code on, and 128+N when a signal N ended
        // it, which `exit 130` cannot be told apart from: the trace session's exit
        // of pid 1 says which it was, when it arrived.
        if let Some(t) = self.tracer.take() {
            // The sandbox is gone, so the sink's connection is closed; a tracer that
            // never got one is left behind (it holds nothing but a listener).
            if self.stats.messages.load(Ordering::Relaxed) > 0 {
                let _ = t.join();
            }
        }
        let traced = self.stats.init_exit.lock().ok().and_then(|g| *g);
        let (code, signal) = match (status.code(), status.signal(), traced) {
            (Some(c), _, Some((tc, ts))) if c == tc => (c, ts),
            (Some(c), _, _) if c > 128 && c <= 128 + 64 => (c, Some(c - 128)),
            (Some(c), _, _) => (c, None),
            (None, Some(s), _) => (128 + s, Some(s)),
            (None, None, _) => (128, None),
        };
        let mut limits = match &self.enforcement {
            Enforcement::Cgroup(c) => c.hits(),
            _ => Vec::new(),
        };
        if let Enforcement::Cgroup(c) = &self.enforcement {
            c.kill_all();
        }
        let _ = Command::new(&self.runsc)
            .arg("--root")
            .arg(&self.state)
            .args(["delete", "--force", &self.id])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        self.netns.take();
        let s = &self.stats;
        if s.pids_hit.load(Ordering::Relaxed) && !limits.contains(&crate::LimitKind::Pids) {
            limits.push(crate::LimitKind::Pids);
        }
        let mut data = Map::new();
        data.insert("messages".into(), json!(s.messages.load(Ordering::Relaxed)));
        data.insert(
            "dropped_by_gvisor".into(),
            json!(s.dropped.load(Ordering::Relaxed)),
        );
        data.insert(
            "malformed".into(),
            json!(s.malformed.load(Ordering::Relaxed)),
        );
        data.insert(
            "suppressed".into(),
            json!(s.suppressed.load(Ordering::Relaxed)),
        );
        self.events.event("trace.summary", data);
        if self.tracing && !s.live.load(Ordering::Relaxed) {
            // runsc ends with 128 when it could not create the sandbox; with no
            // container start traced, nothing of the agent ran.
            if status.code() == Some(128) && s.messages.load(Ordering::Relaxed) == 0 {
                return Err(Error::Setup(
                    "runsc could not start the sandbox (its message is above;                      `cordon doctor` checks the gvisor backend)"
                        .into(),
                ));
            }
            let mut data = Map::new();
            data.insert(
                "error".into(),
                json!("the gVisor trace session never reported the container's start: runtime monitoring was off"),
            );
            self.events.event("session.error", data);
        }
        Ok(Ended {
            code,
            signal,
            limits,
            enforcement: format!(
                "{}{}; gVisor platform {} ({})",
                match (&self.enforcement, self.pids_rlimit) {
                    (Enforcement::Unlimited, Some(_)) => "no memory/cpu limits set".into(),
                    _ => self.enforcement.describe(),
                },
                match self.pids_rlimit {
                    Some(p) => format!("; pids {p} by RLIMIT_NPROC in the sentry"),
                    None => String::new(),
                },
                self.platform.name,
                self.platform.why
            ),
            events_suppressed: s.suppressed.load(Ordering::Relaxed)
                + s.dropped.load(Ordering::Relaxed),
        })
    }
}
