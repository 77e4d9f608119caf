//! Sandbox backends and the contract they share.
//!
//! A backend takes a [`SandboxSpec`] — plain data saying what the agent sees (the
//! workspace at its host path, extra mounts, hidden and read-only paths), what it
//! may use (limits) and what it runs (argv, environment, working directory) — and
//! runs it behind an isolation boundary, reporting what happens through an
//! [`EventSink`]. The spec is the same for every backend so that one policy means
//! the same thing everywhere; each backend maps it onto its own engine:
//!
//! * `native` (this crate, [`native`]): Linux namespaces, `pivot_root`, Landlock,
//!   seccomp-bpf with user notification, cgroups or rlimits.
//! * `gvisor`, `microvm`, `wasm`: later issues; they implement the same
//!   [`Backend`] trait and are reported as unavailable until then.
//!
//! This crate does not parse CLI flags or policy files, does not own the workspace
//! store (the caller mounts it and passes the mount point), and does not format
//! events: it hands kinds and fields to the sink.

pub mod doctor;
pub mod glob;
pub mod gvisor;
pub mod monitor;
pub mod native;
pub mod network;
pub mod session;
mod spec;
mod stdio;
mod sys;

pub use spec::*;

use std::sync::Arc;

/// Errors from preparing or running a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the {backend} backend is not available on this machine: {reason}")]
    Unavailable { backend: String, reason: String },
    #[error("sandbox setup failed: {0}")]
    Setup(String),
    #[error("invalid sandbox spec: {0}")]
    Spec(String),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where a backend sends what it observes. Implemented by the session layer, which
/// appends to the hash-chained log; kinds are the `cordon-events` kind names.
pub trait EventSink: Send + Sync {
    fn event(&self, kind: &str, data: serde_json::Map<String, serde_json::Value>);
}

/// A sink that drops everything (for probes and unit tests).
pub struct NullSink;

impl EventSink for NullSink {
    fn event(&self, _kind: &str, _data: serde_json::Map<String, serde_json::Value>) {}
}

/// The four isolation engines (the policy's `[sandbox] backend`). Every one
/// implements [`Backend`].
pub use cordon_policy::BackendKind;

/// One isolation engine.
///
/// `start` must not return before the boundary is in place: once it returns, the
/// agent's first instruction already runs confined. Output and input go through
/// the [`Stdio`] the caller provides (pipes or a terminal), never through the
/// caller's own terminal directly, so the caller can count and cap output.
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;
    /// Whether this backend can run here; `Err` says why not.
    fn available(&self) -> Result<(), String>;
    /// Start the agent. The returned handle waits for and signals it.
    fn start(
        &self,
        spec: &SandboxSpec,
        stdio: Stdio,
        events: Arc<dyn EventSink>,
    ) -> Result<Box<dyn Running>>;
}

/// Signals a started sandbox from any thread (timeout, output limit, the
/// host's own signals).
pub trait Control: Send + Sync {
    /// Deliver a signal to the agent (forwarded by the sandbox's init).
    fn signal(&self, signal: i32);
    /// Stop everything in the sandbox now.
    fn kill(&self);
}

/// A started sandbox.
pub trait Running: Send {
    fn control(&self) -> Arc<dyn Control>;
    /// The master side of the agent's terminal, once (with [`Stdio::Terminal`]).
    fn terminal(&mut self) -> Option<std::os::fd::OwnedFd>;
    /// The host side of the sandbox's network interface, once (with
    /// [`NetworkMode::Gateway`]): a TAP device's descriptor for the native
    /// backend.
    fn network_link(&mut self) -> Option<std::os::fd::OwnedFd> {
        None
    }
    /// Block until the sandbox has ended; returns how the agent ended and which
    /// limits were hit.
    fn wait(&mut self) -> Result<Ended>;
}

/// The backend for a kind. Backends other than `native` report themselves
/// unavailable until their issues land.
pub fn backend(kind: BackendKind) -> Box<dyn Backend> {
    match kind {
        BackendKind::Native => Box::new(native::Native::new()),
        BackendKind::Gvisor => Box::new(gvisor::Gvisor::new()),
        other => Box::new(Missing(other)),
    }
}

struct Missing(BackendKind);

impl Backend for Missing {
    fn kind(&self) -> BackendKind {
        self.0
    }
    fn available(&self) -> Result<(), String> {
        Err("not implemented in this version of cordon".into())
    }
    fn start(&self, _: &SandboxSpec, _: Stdio, _: Arc<dyn EventSink>) -> Result<Box<dyn Running>> {
        Err(Error::Unavailable {
            backend: self.0.name().into(),
            reason: "not implemented in this version of cordon".into(),
        })
    }
}
