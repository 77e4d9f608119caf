//! Terminal output: colour, tables, JSON, progress bars, logging, signals.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// `--color`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

/// Where and how the CLI writes.
pub struct Out {
    color_out: bool,
    color_err: bool,
}

impl Out {
    pub fn new(c: Color) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let (o, e) = match c {
            Color::Always => (true, true),
            Color::Never => (false, false),
            Color::Auto => (
                !no_color && std::io::stdout().is_terminal(),
                !no_color && std::io::stderr().is_terminal(),
            ),
        };
        Out {
            color_out: o,
            color_err: e,
        }
    }

    fn paint(&self, on: bool, code: &str, s: &str) -> String {
        if on {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    /// `s` in an SGR style (e.g. "1;31") on stdout, when colour is on.
    pub fn style(&self, code: &str, s: &str) -> String {
        self.paint(self.color_out, code, s)
    }

    /// `s` in an SGR style on stderr, when colour is on there.
    pub fn style_err(&self, code: &str, s: &str) -> String {
        self.paint(self.color_err, code, s)
    }

    pub fn green(&self, s: &str) -> String {
        self.paint(self.color_out, "32", s)
    }

    pub fn red(&self, s: &str) -> String {
        self.paint(self.color_out, "31", s)
    }

    /// A one-line error on stderr.
    pub fn error(&self, msg: &str) {
        let msg = one_line(msg);
        eprintln!(
            "{} {msg}",
            self.paint(self.color_err, "1;31", "cordon: error:")
        );
    }

    /// A one-line warning on stderr.
    pub fn warn(&self, msg: &str) {
        let msg = one_line(msg);
        eprintln!(
            "{} {msg}",
            self.paint(self.color_err, "1;33", "cordon: warning:")
        );
    }

    /// A status line on stderr (never mixed into machine output on stdout).
    pub fn status(&self, msg: &str) {
        eprintln!("{}", self.paint(self.color_err, "2", msg));
    }

    /// Pretty JSON on stdout.
    pub fn json<T: serde::Serialize>(&self, v: &T) -> std::io::Result<()> {
        let mut s = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut s, v)?;
        writeln!(s)
    }

    /// A left-aligned table on stdout.
    pub fn table(&self, headers: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
        let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
        for r in rows {
            for (i, c) in r.iter().enumerate() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut s = std::io::stdout().lock();
        let line = |cells: Vec<String>| {
            let last = cells.len() - 1;
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if i == last {
                        c.clone()
                    } else {
                        format!("{c:<w$}", w = widths[i])
                    }
                })
                .collect::<Vec<_>>()
                .join("  ")
        };
        let head = line(headers.iter().map(|h| h.to_string()).collect());
        writeln!(s, "{}", self.paint(self.color_out, "1", &head))?;
        for r in rows {
            writeln!(s, "{}", line(r.clone()))?;
        }
        Ok(())
    }

    /// A patch on stdout, coloured like `git diff` on a terminal.
    pub fn patch(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut s = std::io::stdout().lock();
        if !self.color_out {
            return s.write_all(bytes);
        }
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            let code = if line.starts_with(b"diff --git")
                || line.starts_with(b"--- ")
                || line.starts_with(b"+++ ")
                || line.starts_with(b"new file")
                || line.starts_with(b"deleted file")
                || line.starts_with(b"old mode")
                || line.starts_with(b"new mode")
            {
                Some("1")
            } else if line.starts_with(b"@@") {
                Some("36")
            } else if line.starts_with(b"+") {
                Some("32")
            } else if line.starts_with(b"-") {
                Some("31")
            } else {
                None
            };
            match code {
                Some(c) => {
                    let (body, nl) = match line.strip_suffix(b"\n") {
                        Some(b) => (b, "\n"),
                        None => (line, ""),
                    };
                    write!(s, "\x1b[{c}m")?;
                    s.write_all(body)?;
                    write!(s, "\x1b[0m{nl}")?;
                }
                None => s.write_all(line)?,
            }
        }
        Ok(())
    }

    /// A progress bar on stderr (hidden when stderr is not a terminal).
    pub fn progress(&self, total: u64, what: &str) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        if !std::io::stderr().is_terminal() {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        bar
    }

    /// A counter with a spinner on stderr, for work of unknown size.
    pub fn spinner(&self, what: &str) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg}: {pos} entries ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(what.to_string());
        if !std::io::stderr().is_terminal() {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        bar
    }
}

/// Escapes control characters, so a message stays on one line and cannot
/// drive the terminal, whatever path or name it quotes.
pub fn one_line(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for c in msg.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Logs to stderr; `CORDON_LOG=debug` (or any `tracing` filter) for more.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORDON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,fuser=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// "3m ago"-style age of a Unix timestamp.
pub fn age(ts: i64) -> String {
    if ts <= 0 {
        return "-".into();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(ts);
    let d = (now - ts).max(0);
    match d {
        0..60 => format!("{d}s ago"),
        60..3600 => format!("{}m ago", d / 60),
        3600..86400 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86400),
    }
}

/// Human-readable byte count.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// On SIGINT/SIGTERM/SIGHUP, unmount `mountpoint`; a second signal exits at once.
pub fn on_signals(mountpoint: PathBuf) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    std::thread::spawn(move || {
        let mut count = 0;
        for _ in signals.forever() {
            count += 1;
            if count > 1 {
                eprintln!("cordon: second signal; exiting without waiting for the mount to drain");
                std::process::exit(130);
            }
            unmount(&mountpoint);
        }
    });
}

fn unmount(mountpoint: &PathBuf) {
    use rustix::mount::{UnmountFlags, unmount};
    match unmount(mountpoint, UnmountFlags::empty()) {
        Ok(()) => {}
        Err(rustix::io::Errno::BUSY) => {
            eprintln!(
                "cordon: {} is in use; detaching it now (it disappears once the last process leaves it)",
                mountpoint.display()
            );
            let _ = unmount(mountpoint, UnmountFlags::DETACH);
        }
        Err(rustix::io::Errno::PERM) => {
            // Mounted through fusermount3 as an unprivileged user.
            let _ = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(mountpoint)
                .status();
        }
        Err(e) => eprintln!("cordon: unmounting {}: {e}", mountpoint.display()),
    }
}
