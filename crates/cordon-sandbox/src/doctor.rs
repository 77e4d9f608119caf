//! What this machine supports, and why not where it doesn't.
//!
//! Each probe actually tries the feature (in a short-lived child where it changes
//! process state) rather than reading version numbers, and says what failed.

use serde::Serialize;

#[derive(Serialize, Debug, Clone)]
pub struct Feature {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

fn probe_in_child(
    f: impl FnOnce() -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    let (r, w) = match rustix::pipe::pipe() {
        Ok(p) => p,
        Err(e) => return Err(format!("pipe: {e}")),
    };
    // SAFETY: the child only runs `f` (no locks shared with other threads are
    // needed by the probes below beyond what a fresh child may take) and exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(r);
        let code = match f() {
            Ok(()) => 0,
            Err(msg) => {
                let _ = rustix::io::write(&w, msg.as_bytes());
                1
            }
        };
        // SAFETY: leave the probe child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    drop(w);
    let mut msg = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = rustix::io::read(&r, &mut buf) {
        if n == 0 {
            break;
        }
        msg.extend_from_slice(&buf[..n]);
    }
    let mut status = 0;
    // SAFETY: waiting for the child forked above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else if msg.is_empty() {
        Err("the probe process failed".into())
    } else {
        Err(String::from_utf8_lossy(&msg).into_owned())
    }
}

fn userns() -> std::result::Result<(), String> {
    probe_in_child(|| {
        crate::sys::unshare(libc::CLONE_NEWUSER)
            .map_err(|e| format!("unshare(CLONE_NEWUSER): {e}"))?;
        crate::sys::unshare(crate::sys::SANDBOX_NAMESPACES)
            .map_err(|e| format!("unshare of mount/pid/net/ipc/uts/cgroup namespaces: {e}"))
    })
}

fn landlock_abi() -> std::result::Result<i32, String> {
    // SAFETY: landlock_create_ruleset with LANDLOCK_CREATE_RULESET_VERSION only
    // returns the ABI version.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    if v < 0 {
        Err(format!(
            "Landlock unavailable: {}",
            std::io::Error::last_os_error()
        ))
    } else {
        Ok(v as i32)
    }
}

fn seccomp_notify() -> std::result::Result<(), String> {
    probe_in_child(|| {
        crate::sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1)
            .map_err(|e| format!("no_new_privs: {e}"))?;
        let p = crate::native::seccomp::build()?;
        p.install()
            .map(drop)
            .map_err(|e| format!("seccomp with a user-notification listener: {e}"))
    })
}

/// Whether the native backend can run, as one line.
pub fn native_ready() -> std::result::Result<(), String> {
    userns()?;
    landlock_abi()?;
    seccomp_notify()
}

/// The features the native backend cannot run without.
pub const NATIVE_REQUIRES: [&str; 3] = ["user namespaces", "landlock", "seccomp user notification"];

/// Whether each backend can run here, from probes already made (the native
/// backend's verdict is the first failed required feature).
pub fn backends(
    features: &[Feature],
) -> Vec<(crate::BackendKind, std::result::Result<(), String>)> {
    crate::BackendKind::ALL
        .into_iter()
        .map(|k| {
            let r = if k == crate::BackendKind::Native {
                match features
                    .iter()
                    .find(|f| NATIVE_REQUIRES.contains(&f.name) && !f.ok)
                {
                    Some(f) => Err(format!("{}: {}", f.name, f.detail)),
                    None => Ok(()),
                }
            } else {
                crate::backend(k).available()
            };
            (k, r)
        })
        .collect()
}

/// Every probe, for `cordon doctor`.
pub fn probe_all() -> Vec<Feature> {
    let mut v = Vec::new();
    let mut push = |name, r: std::result::Result<String, String>| {
        let (ok, detail) = match r {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        v.push(Feature { name, ok, detail });
    };
    push(
        "kernel",
        Ok(rustix::system::uname()
            .release()
            .to_string_lossy()
            .into_owned()),
    );
    push(
        "user namespaces",
        userns().map(|()| "user, mount, pid, net, ipc, uts, cgroup".into()),
    );
    push("landlock", landlock_abi().map(|v| format!("ABI {v}")));
    push(
        "seccomp user notification",
        seccomp_notify().map(|()| "filters install, listener returned".into()),
    );
    let limits = crate::Limits {
        memory: Some(1 << 30),
        pids: Some(1024),
        cpus: Some(1.0),
        ..Default::default()
    };
    let probe_id = format!("doctor-{}", std::process::id());
    push(
        "cgroups",
        match Cgroups::create(&probe_id, &limits) {
            Enforcement::Cgroup(c) => {
                let d = Enforcement::Cgroup(c);
                let s = d.describe();
                if let Enforcement::Cgroup(c) = d {
                    c.remove();
                }
                Ok(format!("{s}: memory, pids and cpu limits enforced"))
            }
            Enforcement::Unlimited => Err("the probe asked for no limits".into()),
            Enforcement::Rlimits(why) => Err(format!(
                "{why}; limits fall back to rlimits (memory per process, hits not observed; pids per user namespace, reaching it sampled; no cpu limit)"
            )),
        },
    );
    let fuse = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse");
    push(
        "fuse",
        fuse.map(|_| "/dev/fuse usable".into())
            .map_err(|e| format!("/dev/fuse: {e}")),
    );
    push("network gateway", gateway_probe());
    push(
        "gvisor",
        match crate::gvisor::find_runsc() {
            None => {
                Err("runsc not found (Debian: apt-get install runsc; or set CORDON_RUNSC)".into())
            }
            Some(runsc) => crate::gvisor::probe(&runsc).map(|r| {
                format!(
                    "{} at {}; platform {} ({})",
                    r.version,
                    runsc.display(),
                    r.platform.name,
                    r.platform.why
                )
            }),
        },
    );
    v
}

/// Whether a sandbox can get its gateway interface: a TAP device made in a
/// fresh user + network namespace, as the sandbox's init makes it.
fn gateway_probe() -> std::result::Result<String, String> {
    probe_in_child(|| {
        crate::sys::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET)
            .map_err(|e| format!("unshare(CLONE_NEWUSER|CLONE_NEWNET): {e}"))?;
        cordon_net::tap::create_tap("probe0")
            .map(drop)
            .map_err(|e| format!("{e}; policies with [network] allow cannot run"))
    })
    .map(|()| "TAP devices in a sandbox network namespace (userspace TCP/IP stack)".into())
}

use crate::native::cgroup::{Cgroups, Enforcement};
