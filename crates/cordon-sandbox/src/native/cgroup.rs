//! Resource limits through cgroups (v1 or v2), with rlimits as the fallback.
//!
//! Each session gets its own cgroup under the cgroup the `cordon` process is in
//! (so host-level limits still apply above it): `memory`, `pids` and `cpu` on
//! v1 hierarchies, or one directory with those controllers on the v2 hierarchy.
//! Stage 1 joins it before it unshares its namespaces, so everything the
//! sandbox forks is accounted. After the run the counters say which limits were hit.
//!
//! When no cgroup can be created (an unprivileged user without a delegated
//! subtree), memory and process counts fall back to `RLIMIT_AS` and
//! `RLIMIT_NPROC` — weaker (per process, per user namespace) — and CPU is not
//! limited; [`Enforcement`] tells the summary and `cordon doctor` which.

use std::path::{Path, PathBuf};

use crate::{LimitKind, Limits};

/// How limits are enforced for one session.
pub enum Enforcement {
    /// No memory, pids or cpu limit was asked for. Joining a cgroup costs a
    /// synchronize_rcu() on cgroup v1 (about 15-20 ms here, measured), so a
    /// session without such limits does not pay for one; the PID namespace
    /// still ends every process when the sandbox's init exits.
    Unlimited,
    Cgroup(Cgroups),
    /// Why no cgroup could be used.
    Rlimits(String),
}

impl Enforcement {
    pub fn describe(&self) -> String {
        match self {
            Enforcement::Unlimited => "no memory/pids/cpu limits set".into(),
            Enforcement::Cgroup(c) => format!("cgroup {}", if c.v2 { "v2" } else { "v1" }),
            Enforcement::Rlimits(why) => format!("rlimits ({why})"),
        }
    }
}

pub struct Cgroups {
    v2: bool,
    /// (controller, directory). On v2 one entry named "unified".
    dirs: Vec<(&'static str, PathBuf)>,
}

const ROOT: &str = "/sys/fs/cgroup";

/// The cgroup path of this process in the hierarchy with `controller`
/// (v1) or the unified one (controller "").
fn own_path(controller: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controller.is_empty() && ctrls.is_empty()
            || !controller.is_empty() && ctrls.split(',').any(|c| c == controller)
        {
            return Some(path.to_string());
        }
    }
    None
}

/// The CFS period both cgroup versions use here, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// The CPU time per period that `cpus` cores allow (at least 1 ms).
fn cpu_quota_us(cpus: f64) -> u64 {
    (cpus * CPU_PERIOD_US as f64).round().max(1000.0) as u64
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), String> {
    crate::sys::write_file(&dir.join(file), value)
        .map_err(|e| format!("cannot write {value} to {}: {e}", dir.join(file).display()))
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_default()
}

/// The value of `key` in a flat keyed file (`memory.events`, `cpu.stat`, ...).
fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

impl Cgroups {
    /// Create the session's cgroups and apply the limits, or say why not.
    pub fn create(session: &str, limits: &Limits) -> Enforcement {
        if limits.memory.is_none() && limits.pids.is_none() && limits.cpus.is_none() {
            return Enforcement::Unlimited;
        }
        // A run-unique name: a run killed with -9 leaves its directory behind,
        // and a resumed session must not trip over it (or, worse, silently
        // fall back to weaker limits).
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("cordon-{session}-{:x}{nanos:x}", std::process::id());
        Self::remove_stale(session);
        let result = if Path::new(ROOT).join("cgroup.controllers").exists() {
            Self::create_v2(&name, limits)
        } else {
            Self::create_v1(&name, limits)
        };
        match result {
            Ok(c) => Enforcement::Cgroup(c),
            Err(why) => Enforcement::Rlimits(why),
        }
    }

    fn create_v1(name: &str, limits: &Limits) -> Result<Self, String> {
        let mut dirs = Vec::new();
        let mut cg = Cgroups {
            v2: false,
            dirs: Vec::new(),
        };
        for ctrl in ["memory", "pids", "cpu"] {
            let mount = Path::new(ROOT).join(ctrl);
            if !mount.join("cgroup.procs").exists() {
                cg.remove();
                return Err(format!(
                    "the cgroup v1 {ctrl} controller is not mounted at {}",
                    mount.display()
                ));
            }
            let own = own_path(ctrl).unwrap_or_else(|| "/".into());
            let dir = mount.join(own.trim_start_matches('/')).join(name);
            if let Err(e) = std::fs::create_dir(&dir) {
                cg.remove();
                return Err(format!("cannot create {}: {e}", dir.display()));
            }
            cg.dirs.push((ctrl, dir.clone()));
            dirs.push((ctrl, dir));
        }
        let dir = |c: &str| dirs.iter().find(|(n, _)| *n == c).map(|(_, d)| d.clone());
        let apply = || -> Result<(), String> {
            let mem = dir("memory").ok_or("no memory cgroup")?;
            if let Some(m) = limits.memory {
                write(&mem, "memory.limit_in_bytes", &m.to_string())?;
                if mem.join("memory.memsw.limit_in_bytes").exists() {
                    // Swap must not be a way around the limit.
                    write(&mem, "memory.memsw.limit_in_bytes", &m.to_string())?;
                }
            }
            let pids = dir("pids").ok_or("no pids cgroup")?;
            if let Some(p) = limits.pids {
                write(&pids, "pids.max", &p.to_string())?;
            }
            let cpu = dir("cpu").ok_or("no cpu cgroup")?;
            if let Some(c) = limits.cpus {
                write(&cpu, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
                write(&cpu, "cpu.cfs_quota_us", &cpu_quota_us(c).to_string())?;
            }
            Ok(())
        };
        if let Err(e) = apply() {
            cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    fn create_v2(name: &str, limits: &Limits) -> Result<Self, String> {
        let own = own_path("").unwrap_or_else(|| "/".into());
        let parent = Path::new(ROOT).join(own.trim_start_matches('/'));
        let available = read(&parent, "cgroup.controllers");
        for c in ["memory", "pids", "cpu"] {
            if !available.split_whitespace().any(|a| a == c) {
                return Err(format!(
                    "the {c} controller is not available in {}",
                    parent.display()
                ));
            }
        }
        // Enabling controllers for children fails while this cgroup itself holds
        // processes (the "no internal processes" rule): then there is no
        // delegated subtree to use, and we say so.
        write(&parent, "cgroup.subtree_control", "+memory +pids +cpu")?;
        let dir = parent.join(name);
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let cg = Cgroups {
            v2: true,
            dirs: vec![("unified", dir.clone())],
        };
        let apply = || -> Result<(), String> {
            if let Some(m) = limits.memory {
                write(&dir, "memory.max", &m.to_string())?;
                let _ = write(&dir, "memory.swap.max", "0");
                write(&dir, "memory.oom.group", "1")?;
            }
            if let Some(p) = limits.pids {
                write(&dir, "pids.max", &p.to_string())?;
            }
            if let Some(c) = limits.cpus {
                write(
                    &dir,
                    "cpu.max",
                    &format!("{} {CPU_PERIOD_US}", cpu_quota_us(c)),
                )?;
            }
            Ok(())
        };
        if let Err(e) = apply() {
            cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    /// Remove empty cgroups of earlier runs of this session (left by a killed
    /// `cordon`; their processes died with the sandbox's init).
    fn remove_stale(session: &str) {
        let prefix = format!("cordon-{session}");
        let mut parents = Vec::new();
        if Path::new(ROOT).join("cgroup.controllers").exists() {
            parents.push(
                Path::new(ROOT).join(own_path("").unwrap_or_default().trim_start_matches('/')),
            );
        } else {
            for ctrl in ["memory", "pids", "cpu"] {
                let own = own_path(ctrl).unwrap_or_default();
                parents.push(Path::new(ROOT).join(ctrl).join(own.trim_start_matches('/')));
            }
        }
        for p in parents {
            let Ok(entries) = std::fs::read_dir(&p) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
    }

    /// `cgroup.procs` of every hierarchy: stage 1 writes itself into each.
    pub fn procs_paths(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|(_, d)| d.join("cgroup.procs"))
            .collect()
    }

    fn dir(&self, ctrl: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| *c == ctrl || *c == "unified")
            .map(|(_, d)| d.as_path())
    }

    /// Which limits were hit during the run.
    pub fn hits(&self) -> Vec<LimitKind> {
        let mut hits = Vec::new();
        if let Some(d) = self.dir("memory") {
            let file = if self.v2 {
                "memory.events"
            } else {
                "memory.oom_control"
            };
            let oom = keyed(&read(d, file), "oom_kill");
            if oom > 0 {
                hits.push(LimitKind::Memory);
            }
        }
        if let Some(d) = self.dir("pids")
            && keyed(&read(d, "pids.events"), "max") > 0
        {
            hits.push(LimitKind::Pids);
        }
        if let Some(d) = self.dir("cpu")
            && keyed(&read(d, "cpu.stat"), "nr_throttled") > 0
        {
            hits.push(LimitKind::Cpu);
        }
        hits
    }

    /// Kill every process left in the session's cgroups (after the sandbox's
    /// init has gone, nothing should be; this is the belt to its braces).
    pub fn kill_all(&self) {
        for (_, d) in &self.dirs {
            if self.v2 && crate::sys::write_file(&d.join("cgroup.kill"), "1").is_ok() {
                continue;
            }
            for pid in read(d, "cgroup.procs").lines() {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    // SAFETY: kill(2) with a pid read from our own cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }

    /// Remove the session's cgroups (retrying briefly while the last processes
    /// are being reaped). Also done on drop.
    pub fn remove(&self) {
        for (_, d) in &self.dirs {
            for _ in 0..50 {
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        }
    }
}

/// rlimits for the fallback (and always: no core dumps, whose files could leak
/// memory contents into the workspace).
pub fn rlimits(limits: &Limits, with_cgroup: bool) -> Vec<(libc::__rlimit_resource_t, u64)> {
    let mut v = vec![(libc::RLIMIT_CORE, 0)];
    if !with_cgroup {
        if let Some(m) = limits.memory {
            v.push((libc::RLIMIT_AS, m));
        }
        if let Some(p) = limits.pids {
            v.push((libc::RLIMIT_NPROC, p));
        }
    }
    v
}

/// What the rlimit fallback holds, limit by limit, for the summary and the
/// `sandbox.ready` event: what each one bounds, and whether a hit is seen. A
/// user reading "limits hit: none" must know when that means "not observed".
pub fn rlimit_scope(limits: &Limits) -> String {
    let mut parts = Vec::new();
    if let Some(m) = limits.memory {
        parts.push(format!(
            "memory {} per process (RLIMIT_AS; not the sandbox's total, and a hit is not \
             observed: the allocation fails inside the agent)",
            size_text(m)
        ));
    }
    if let Some(p) = limits.pids {
        parts.push(format!(
            "pids {p} (RLIMIT_NPROC; reaching it is observed by sampling every {} ms)",
            super::init::PIDS_SAMPLE.as_millis()
        ));
    }
    parts.join(", ")
}

/// `bytes` in the largest binary unit that divides it (`64 MiB`), else bytes.
fn size_text(bytes: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        self.kill_all();
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rlimit_scope_says_what_is_and_is_not_observed() {
        let limits = Limits {
            memory: Some(64 << 20),
            pids: Some(32),
            ..Default::default()
        };
        let s = rlimit_scope(&limits);
        assert!(
            s.starts_with("memory 64 MiB per process (RLIMIT_AS;"),
            "{s}"
        );
        assert!(s.contains("a hit is not observed"), "{s}");
        assert!(
            s.contains("pids 32 (RLIMIT_NPROC; reaching it is observed"),
            "{s}"
        );
        assert_eq!(
            rlimit_scope(&Limits {
                memory: Some(1000),
                ..Default::default()
            }),
            "memory 1000 bytes per process (RLIMIT_AS; not the sandbox's total, and a hit is \
             not observed: the allocation fails inside the agent)"
        );
        assert_eq!(rlimit_scope(&Limits::default()), "");
    }

    #[test]
    fn keyed_files() {
        assert_eq!(
            keyed("low 0\nhigh 3\nmax 7\noom 1\noom_kill 2\n", "oom_kill"),
            2
        );
        assert_eq!(keyed("max 5\n", "max"), 5);
        assert_eq!(keyed("nr_periods 10\nnr_throttled 0\n", "nr_throttled"), 0);
        assert_eq!(keyed("", "max"), 0);
    }
}
