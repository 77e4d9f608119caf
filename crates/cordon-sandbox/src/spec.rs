//! The plain-data description of one sandboxed run, shared by every backend.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What the agent sees and runs. Built by the session layer from the policy;
/// validated by [`SandboxSpec::validate`] before any backend acts on it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Session id, used in names (cgroups, hostname default) and events.
    pub session: String,
    /// The agent's command; `argv[0]` is looked up in the sandbox's `PATH`.
    pub argv: Vec<String>,
    /// The complete environment; nothing else from the host leaks in.
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox (usually inside the workspace).
    pub cwd: PathBuf,
    pub hostname: String,
    pub workspace: WorkspaceMount,
    /// Extra host paths (directories or single files).
    pub mounts: Vec<BindMount>,
    /// Private home directory (an empty tmpfs at this path).
    pub home: PathBuf,
    pub limits: Limits,
    /// An empty directory owned by the session that the backend may use as
    /// scratch (the native backend mounts the new root on it).
    pub scratch: PathBuf,
    /// Whether the sandbox gets an interface to the gateway.
    pub network: NetworkMode,
}

/// The sandbox's network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Loopback only: nothing leaves the sandbox.
    #[default]
    Loopback,
    /// Loopback plus one interface whose far end is the gateway's userspace
    /// stack: the backend creates it inside the sandbox and hands its host
    /// side out through [`crate::Running::network_link`].
    Gateway,
}

/// The project as the agent sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkspaceMount {
    /// Where the caller mounted the workspace overlay on the host.
    pub source: PathBuf,
    /// Where the agent sees it (the project's own host path).
    pub target: PathBuf,
    /// Absolute paths under `target` mounted read-only over the writable workspace.
    pub read_only: Vec<PathBuf>,
    /// Absolute paths under `target` replaced by an empty, read-only file or directory.
    pub hidden: Vec<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub writable: bool,
}

/// Resource limits. `None` means "no limit of our own" (the host's still apply).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Limits {
    pub memory: Option<u64>,
    pub pids: Option<u64>,
    pub cpus: Option<f64>,
    pub timeout: Option<Duration>,
    /// Bytes of stdout + stderr; enforced by the caller's relay.
    pub output: Option<u64>,
    /// Bytes of new data in the workspace; enforced by the workspace store.
    pub disk: Option<u64>,
}

/// The agent's standard streams.
pub enum Stdio {
    /// Plain pipes or files. The caller reads the write ends of stdout and stderr.
    Pipes {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    /// A pseudo-terminal of this size (rows, columns), created inside the
    /// sandbox so the agent's `/dev/pts` names it; the backend hands the master
    /// side out through [`crate::Running::terminal`]. The host's own terminal is
    /// never passed in.
    Terminal { rows: u16, cols: u16 },
}

/// A limit that stopped or constrained the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitKind {
    Memory,
    Pids,
    Cpu,
    Timeout,
    Disk,
    Output,
}

impl LimitKind {
    pub fn name(self) -> &'static str {
        match self {
            LimitKind::Memory => "memory",
            LimitKind::Pids => "pids",
            LimitKind::Cpu => "cpu",
            LimitKind::Timeout => "timeout",
            LimitKind::Disk => "disk",
            LimitKind::Output => "output",
        }
    }
}

/// How a sandbox ended.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ended {
    /// The agent's exit code, or 128+N when it was killed by signal N.
    pub code: i32,
    pub signal: Option<i32>,
    /// Limits the backend observed being hit (memory, pids, cpu throttling).
    pub limits: Vec<LimitKind>,
    /// How the backend enforced limits here (e.g. "cgroup v1", "rlimit").
    pub enforcement: String,
    /// Events the backend observed but did not record (its log budget ran out).
    pub events_suppressed: u64,
}

impl SandboxSpec {
    /// Structural checks that do not touch the file system.
    pub fn validate(&self) -> Result<(), crate::Error> {
        let bad = |m: String| Err(crate::Error::Spec(m));
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return bad("no command to run".into());
        }
        for p in [
            &self.cwd,
            &self.home,
            &self.workspace.target,
            &self.workspace.source,
            &self.scratch,
        ] {
            if !p.is_absolute() {
                return bad(format!("{} is not an absolute path", p.display()));
            }
        }
        for m in &self.mounts {
            if !m.source.is_absolute() || !m.target.is_absolute() {
                return bad(format!(
                    "mount {} -> {} must use absolute paths",
                    m.source.display(),
                    m.target.display()
                ));
            }
            if m.target == std::path::Path::new("/") {
                return bad("a mount cannot replace /".into());
            }
        }
        for p in self
            .workspace
            .read_only
            .iter()
            .chain(&self.workspace.hidden)
        {
            if !p.starts_with(&self.workspace.target) {
                return bad(format!(
                    "{} is not inside the workspace {}",
                    p.display(),
                    self.workspace.target.display()
                ));
            }
        }
        if self.workspace.target == std::path::Path::new("/") {
            return bad("the workspace cannot be /".into());
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return bad(format!("invalid environment variable name {k:?}"));
            }
            if v.contains('\0') {
                return bad(format!("the value of {k} contains a NUL byte"));
            }
        }
        if let Some(a) = self.argv.iter().find(|a| a.contains('\0')) {
            return bad(format!("the command argument {a:?} contains a NUL byte"));
        }
        if self.hostname.is_empty() || self.hostname.len() > 64 {
            return bad("hostname must be 1 to 64 bytes".into());
        }
        Ok(())
    }
}
