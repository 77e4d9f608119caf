//! The host side of the agent's standard streams: pipes or a pseudo-terminal,
//! relayed to the user's own streams with a byte budget.
//!
//! The agent never receives one of the host's descriptors for a terminal: with
//! a terminal it gets the slave side of a fresh pty (so `TIOCSTI` on it could at
//! most inject into its own input, and seccomp refuses that anyway); otherwise
//! it gets pipes. Output is counted as it is relayed; past the limit, the relay
//! stops copying and calls the `over` callback once (the session kills the
//! sandbox and records `limit.output`).

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use crate::Stdio;

/// Output accounting shared by the relay threads.
pub struct Budget {
    pub limit: Option<u64>,
    pub used: AtomicU64,
    pub exceeded: AtomicBool,
    pub over: Box<dyn Fn() + Send + Sync>,
}

impl Budget {
    /// Account `n` bytes; returns how many may still be written.
    fn take(&self, n: usize) -> usize {
        let before = self.used.fetch_add(n as u64, Ordering::Relaxed);
        let Some(limit) = self.limit else { return n };
        if before + n as u64 <= limit {
            return n;
        }
        if !self.exceeded.swap(true, Ordering::Relaxed) {
            (self.over)();
        }
        limit.saturating_sub(before).min(n as u64) as usize
    }
}

fn pump(mut from: impl Read, mut to: impl Write, budget: Option<Arc<Budget>>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // EIO: the pty's last slave closed.
            Err(_) => break,
        };
        let allowed = budget.as_ref().map_or(n, |b| b.take(n));
        if allowed > 0 && (to.write_all(&buf[..allowed]).is_err() || to.flush().is_err()) {
            // The user's side went away (e.g. `| head`): keep draining so the
            // agent does not block, but stop writing.
            continue;
        }
    }
}

/// Relay threads for one run; `finish` waits for the output side.
pub struct Relay {
    output: Vec<JoinHandle<()>>,
    _terminal: Option<RawMode>,
}

impl Relay {
    pub fn finish(self) {
        for h in self.output {
            let _ = h.join();
        }
    }
}

/// Plain pipes on all three streams: the agent never holds one of the user's
/// own descriptors (which may be a terminal it could resize, retitle or read
/// past its session). Input is copied in by a thread that is not joined (a
/// read of the user's stdin cannot be interrupted); it ends with the process.
pub fn pipes(budget: Arc<Budget>) -> std::io::Result<(Stdio, Relay)> {
    use rustix::pipe::{PipeFlags, pipe_with};
    let (in_r, in_w) = pipe_with(PipeFlags::CLOEXEC)?;
    let (out_r, out_w) = pipe_with(PipeFlags::CLOEXEC)?;
    let (err_r, err_w) = pipe_with(PipeFlags::CLOEXEC)?;
    std::thread::spawn(move || pump(std::io::stdin(), std::fs::File::from(in_w), None));
    let b1 = budget.clone();
    let t1 =
        std::thread::spawn(move || pump(std::fs::File::from(out_r), std::io::stdout(), Some(b1)));
    let t2 = std::thread::spawn(move || {
        pump(std::fs::File::from(err_r), std::io::stderr(), Some(budget))
    });
    Ok((
        Stdio::Pipes {
            stdin: in_r,
            stdout: out_w,
            stderr: err_w,
        },
        Relay {
            output: vec![t1, t2],
            _terminal: None,
        },
    ))
}

/// Puts the user's terminal in raw mode and restores it on drop.
struct RawMode {
    saved: rustix::termios::Termios,
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

/// The user's terminal size (rows, columns), if stdin is a terminal.
pub fn size() -> Option<(u16, u16)> {
    rustix::termios::tcgetwinsize(std::io::stdin())
        .ok()
        .map(|w| (w.ws_row, w.ws_col))
}

/// Relay between the user's terminal (in raw mode for the duration) and the
/// master side of the agent's pty.
pub fn terminal(master: OwnedFd, budget: Arc<Budget>) -> std::io::Result<(Relay, Arc<OwnedFd>)> {
    let saved = rustix::termios::tcgetattr(std::io::stdin())?;
    let mut raw = saved.clone();
    raw.make_raw();
    rustix::termios::tcsetattr(
        std::io::stdin(),
        rustix::termios::OptionalActions::Now,
        &raw,
    )?;
    let guard = RawMode { saved };
    let m_in = master.try_clone()?;
    // Input: not joined (a read of the user's terminal cannot be interrupted); it
    // ends with the process.
    std::thread::spawn(move || pump(std::io::stdin(), std::fs::File::from(m_in), None));
    let m_out = master.try_clone()?;
    let t = std::thread::spawn(move || {
        pump(std::fs::File::from(m_out), std::io::stdout(), Some(budget))
    });
    Ok((
        Relay {
            output: vec![t],
            _terminal: Some(guard),
        },
        Arc::new(master),
    ))
}

/// Copy the user's terminal size to the agent's pty (on SIGWINCH); the kernel
/// then signals the agent's foreground process group itself.
pub fn resize(master: &OwnedFd) {
    if let Ok(ws) = rustix::termios::tcgetwinsize(std::io::stdin()) {
        let _ = rustix::termios::tcsetwinsize(master, ws);
    }
}
