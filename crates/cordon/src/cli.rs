//! Command definitions and their handlers.
//!
//! Exit codes: 0 success, 1 error, 2 usage error (from clap), 3 `apply` refused
//! because of conflicts. `diff --exit-code` exits 1 when there are changes.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use cordon_fs::base::user_rel_path;
use cordon_fs::changes::{self, ApplyOptions, Change, ChangeKind, View, display_path};
use cordon_fs::fuse::ServeOptions;
use cordon_fs::workspace::{DataDir, Workspace};
use cordon_fs::{Error, export, mount, schema};

use crate::output::{self, Color, Out};

#[derive(Parser)]
#[command(
    name = "cordon",
    version,
    about = "Run autonomous coding agents without handing them the host, the secrets, or production.",
    long_about = "Cordon gives an AI coding agent a copy-on-write view of your project: reads come \
from the real files, every change is kept in one SQLite file, and nothing on the host changes \
until you review the diff and apply it.\n\n\
State lives in $CORDON_HOME (default: $XDG_DATA_HOME/cordon, else ~/.local/share/cordon).",
    propagate_version = true
)]
pub struct Cli {
    /// When to colour output.
    #[arg(long, value_enum, default_value_t = Color::Auto, global = true)]
    color: Color,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run an agent command in a sandbox over a copy-on-write view of the project.
    Run(Box<crate::cmd_session::RunArgs>),
    /// List sessions.
    Sessions(JsonArg),
    /// Show a session's events.
    Log(crate::cmd_session::LogArgs),
    /// Verify a session's tamper-evident event log.
    #[command(subcommand)]
    Audit(crate::cmd_session::AuditCmd),
    /// Delete a session: its workspace, changes and event log.
    Rm(crate::cmd_session::RmArgs),
    /// List network requests waiting for a decision (policy `ask`).
    Pending(crate::cmd_net::PendingArgs),
    /// Let a waiting network request through.
    Approve(crate::cmd_net::DecideArgs),
    /// Refuse a waiting network request.
    Deny(crate::cmd_net::DecideArgs),
    /// Report which kernel features and backends this machine supports.
    Doctor(JsonArg),
    /// Write, check, sign and verify policy files (cordon.toml).
    #[command(subcommand)]
    Policy(crate::cmd_policy::PolicyCmd),
    /// Create, list, inspect and mount workspaces.
    #[command(subcommand)]
    Workspace(WorkspaceCmd),
    /// Show what changed in a workspace compared with the host directory.
    Diff(DiffArgs),
    /// Write a workspace's changes into the host directory.
    Apply(ApplyArgs),
    /// Export a workspace's changes as a patch, or its whole tree as a tar archive.
    Export(ExportArgs),
    /// Take a named snapshot of a workspace (safe while mounted).
    Snapshot(SnapshotArgs),
    /// List a workspace's snapshots.
    Snapshots(SnapshotsArgs),
    /// Create a new workspace from a workspace or one of its snapshots (ID@SNAPSHOT).
    Fork(ForkArgs),
    /// Delete a workspace and all its changes and snapshots.
    Discard(DiscardArgs),
    /// FeatureOps: the Unleash-compatible feature flag server.
    #[command(subcommand)]
    Flags(crate::cmd_flags::FlagsCmd),
    /// MCP servers for coding agents (`cordon mcp flags`).
    #[command(subcommand)]
    Mcp(crate::cmd_mcp::McpCmd),
}

#[derive(Subcommand)]
enum WorkspaceCmd {
    /// Create a workspace over a host directory; prints its id.
    Create(CreateArgs),
    /// List workspaces and sessions.
    List(JsonArg),
    /// Show details of one workspace.
    Info(IdJson),
    /// Mount a workspace (foreground; Ctrl-C unmounts).
    Mount(MountArgs),
    /// Check a workspace database for damage.
    Check(IdJson),
}

#[derive(Args)]
struct JsonArg {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct IdJson {
    /// Workspace or session id (a unique prefix is enough).
    id: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CreateArgs {
    /// The host directory the workspace overlays (never modified until `cordon apply`).
    #[arg(long)]
    base: PathBuf,
    /// Size of the data chunks files are stored in (power of two, 4096..4194304).
    #[arg(long, default_value_t = schema::DEFAULT_CHUNK_SIZE)]
    chunk_size: u32,
    /// Print JSON instead of the bare id.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct MountArgs {
    /// Workspace or session id.
    id: String,
    /// An existing, empty directory outside the base.
    mountpoint: PathBuf,
    /// Serve every read from userspace instead of FUSE passthrough.
    #[arg(long)]
    no_passthrough: bool,
    /// Seconds the kernel may cache names and attributes.
    #[arg(long, default_value_t = 1.0)]
    ttl: f64,
    /// Threads serving requests (1-64).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
    /// Let other users access the mount (default when run as root).
    #[arg(long, overrides_with = "no_allow_other")]
    allow_other: bool,
    /// Only the mounting user may access the mount.
    #[arg(long)]
    no_allow_other: bool,
}

#[derive(Args)]
struct DiffArgs {
    /// Workspace or session id.
    id: String,
    /// Only these paths (relative to the workspace root) and what is below them.
    paths: Vec<OsString>,
    /// Show a per-file summary instead of the patch.
    #[arg(long)]
    stat: bool,
    /// Print JSON: every change with its type, modes and line counts.
    #[arg(long)]
    json: bool,
    /// Exit with 1 if there are changes, 0 if there are none.
    #[arg(long)]
    exit_code: bool,
}

#[derive(Args)]
struct ApplyArgs {
    /// Workspace or session id.
    id: String,
    /// Only these paths (relative to the workspace root) and what is below them.
    paths: Vec<OsString>,
    /// Show what would be written; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Overwrite files that changed on the host since the agent first saw them.
    #[arg(long)]
    force: bool,
    /// Apply the changes that do not conflict, and report the ones that do.
    #[arg(long)]
    skip_conflicts: bool,
    /// Also apply changes to .git/config and .git/hooks (they run code on the host).
    #[arg(long)]
    allow_git_config: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    /// A git-style patch of the changes (`git apply` / `patch -p1`).
    Patch,
    /// A tar archive of the whole merged tree.
    Tar,
}

#[derive(Args)]
struct ExportArgs {
    /// Workspace or session id.
    id: String,
    /// Output format.
    #[arg(long, value_enum)]
    format: ExportFormat,
    /// Write to FILE instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Patch only: only these paths and what is below them.
    paths: Vec<OsString>,
}

#[derive(Args)]
struct SnapshotArgs {
    /// Workspace or session id.
    id: String,
    /// Snapshot name (default: snap-N).
    name: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SnapshotsArgs {
    /// Workspace or session id.
    id: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ForkArgs {
    /// ID or ID@SNAPSHOT.
    source: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DiscardArgs {
    /// The full workspace or session id (no prefixes for a destructive command).
    id: String,
}

type CmdResult = Result<i32, CliError>;

/// Errors a command can end with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Fs(#[from] Error),
    #[error(transparent)]
    Session(#[from] crate::cmd_session::SessionCliError),
    #[error("{0}")]
    Usage(String),
    #[error("writing output: {0}")]
    Output(std::io::Error),
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::Output(e)
    }
}

/// Exit code after the reader of our output went away (128 + SIGPIPE), which
/// is what a shell reports for tools killed by SIGPIPE.
const EXIT_BROKEN_PIPE: i32 = 141;

fn is_broken_pipe(e: &CliError) -> bool {
    match e {
        CliError::Output(e) => e.kind() == std::io::ErrorKind::BrokenPipe,
        CliError::Fs(Error::Io { source, .. }) => source.kind() == std::io::ErrorKind::BrokenPipe,
        _ => false,
    }
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    output::init_logging();
    let out = Out::new(cli.color);
    let cmd = match cli.cmd {
        Cmd::Run(a) => return crate::cmd_session::run_cmd(*a, &out),
        Cmd::Flags(f) => {
            return match crate::cmd_flags::run(f) {
                Ok(code) => code,
                Err(e) => {
                    out.error(&e.to_string());
                    1
                }
            };
        }
        Cmd::Mcp(m) => {
            return match crate::cmd_mcp::run(m) {
                Ok(code) => code,
                Err(e) => {
                    out.error(&e.to_string());
                    1
                }
            };
        }
        Cmd::Policy(p) => {
            return match crate::cmd_policy::run(p) {
                Ok(code) => code,
                Err(e) if e.is_broken_pipe() => EXIT_BROKEN_PIPE,
                Err(e) => {
                    out.error(&e.to_string());
                    1
                }
            };
        }
        other => other,
    };
    match run(cmd, &out) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => EXIT_BROKEN_PIPE,
        Err(e @ (CliError::Usage(_) | CliError::Fs(Error::BadPath { .. }))) => {
            out.error(&e.to_string());
            2
        }
        Err(e) => {
            out.error(&e.to_string());
            1
        }
    }
}

fn data_dir() -> Result<DataDir, CliError> {
    Ok(DataDir::from_env()?)
}

fn resolve(id: &str) -> Result<(DataDir, Workspace), CliError> {
    let data = data_dir()?;
    let ws = data.resolve(id)?;
    Ok((data, ws))
}

fn filters(paths: &[OsString]) -> Result<Vec<Vec<u8>>, CliError> {
    paths
        .iter()
        .map(|p| {
            user_rel_path(p).ok_or_else(|| {
                CliError::Fs(Error::BadPath {
                    path: p.to_string_lossy().into_owned(),
                })
            })
        })
        .collect()
}

fn run(cmd: Cmd, out: &Out) -> CmdResult {
    use crate::cmd_session as cs;
    match cmd {
        Cmd::Run(_) | Cmd::Policy(_) | Cmd::Flags(_) | Cmd::Mcp(_) => {
            unreachable!("handled in main")
        }
        Cmd::Sessions(a) => Ok(cs::sessions_cmd(a.json, out)?),
        Cmd::Log(a) => Ok(cs::log_cmd(a, out)?),
        Cmd::Pending(a) => Ok(crate::cmd_net::pending_cmd(a, out)?),
        Cmd::Approve(a) => Ok(crate::cmd_net::decide_cmd(a, true, out)?),
        Cmd::Deny(a) => Ok(crate::cmd_net::decide_cmd(a, false, out)?),
        Cmd::Audit(a) => Ok(cs::audit_cmd(a, out)?),
        Cmd::Rm(a) => Ok(cs::rm_cmd(a)?),
        Cmd::Doctor(a) => Ok(cs::doctor_cmd(a.json, out)?),
        Cmd::Workspace(WorkspaceCmd::Create(a)) => {
            let ws = data_dir()?.create_workspace(&a.base, a.chunk_size)?;
            if a.json {
                out.json(&ws.info()?)?;
            } else {
                println!("{}", ws.id);
            }
            Ok(0)
        }
        Cmd::Workspace(WorkspaceCmd::List(a)) => {
            let list = data_dir()?.list()?;
            if a.json {
                out.json(&list)?;
            } else if list.is_empty() {
                eprintln!(
                    "no workspaces yet; create one with `cordon workspace create --base DIR`"
                );
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|w| {
                        vec![
                            w.id.clone(),
                            w.kind.to_string(),
                            output::age(w.created_at),
                            w.mounted_by
                                .map_or_else(|| "-".into(), |p| format!("pid {p}")),
                            output::bytes(w.db_bytes),
                            w.base.clone(),
                        ]
                    })
                    .collect();
                out.table(&["ID", "KIND", "CREATED", "MOUNTED", "SIZE", "BASE"], &rows)?;
            }
            Ok(0)
        }
        Cmd::Workspace(WorkspaceCmd::Info(a)) => {
            let (_, ws) = resolve(&a.id)?;
            let info = ws.info()?;
            if a.json {
                out.json(&info)?;
            } else {
                let mut s = std::io::stdout().lock();
                writeln!(s, "id:          {}", info.id)?;
                writeln!(s, "kind:        {}", info.kind)?;
                writeln!(s, "base:        {}", info.base)?;
                writeln!(s, "created:     {}", output::age(info.created_at))?;
                if let Some(f) = &info.forked_from {
                    writeln!(s, "forked from: {f}")?;
                }
                writeln!(
                    s,
                    "mounted:     {}",
                    info.mounted_by
                        .map_or_else(|| "no".into(), |p| format!("by pid {p}"))
                )?;
                writeln!(
                    s,
                    "database:    {} ({})",
                    info.db_path.display(),
                    output::bytes(info.db_bytes)
                )?;
                writeln!(s, "snapshots:   {}", info.snapshots)?;
            }
            Ok(0)
        }
        Cmd::Workspace(WorkspaceCmd::Check(a)) => {
            let (_, ws) = resolve(&a.id)?;
            let problems = ws.check()?;
            if a.json {
                out.json(&serde_json::json!({ "id": ws.id, "ok": problems.is_empty(), "problems": problems }))?;
            } else if problems.is_empty() {
                println!("workspace {} is healthy", ws.id);
            } else {
                for p in &problems {
                    println!("problem: {p}");
                }
            }
            Ok(if problems.is_empty() { 0 } else { 1 })
        }
        Cmd::Workspace(WorkspaceCmd::Mount(a)) => mount_cmd(a, out),
        Cmd::Diff(a) => diff_cmd(a, out),
        Cmd::Apply(a) => apply_cmd(a, out),
        Cmd::Export(a) => export_cmd(a, out),
        Cmd::Snapshot(a) => {
            let (_, ws) = resolve(&a.id)?;
            let snap = ws.snapshot(a.name.as_deref())?;
            if a.json {
                out.json(&snap)?;
            } else {
                println!(
                    "snapshot {} of {}: {} inodes, {} of data",
                    snap.name,
                    ws.id,
                    snap.files,
                    output::bytes(snap.bytes)
                );
            }
            Ok(0)
        }
        Cmd::Snapshots(a) => {
            let (_, ws) = resolve(&a.id)?;
            let snaps = ws.snapshots()?;
            if a.json {
                out.json(&snaps)?;
            } else if snaps.is_empty() {
                eprintln!(
                    "workspace {} has no snapshots; take one with `cordon snapshot {} NAME`",
                    ws.id, ws.id
                );
            } else {
                let rows: Vec<Vec<String>> = snaps
                    .iter()
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            output::age(s.created_at),
                            s.files.to_string(),
                            output::bytes(s.bytes),
                        ]
                    })
                    .collect();
                out.table(&["NAME", "CREATED", "INODES", "DATA"], &rows)?;
            }
            Ok(0)
        }
        Cmd::Fork(a) => {
            let (id, snap) = match a.source.split_once('@') {
                Some((i, s)) => (i, Some(s)),
                None => (a.source.as_str(), None),
            };
            let (data, ws) = resolve(id)?;
            let new = ws.fork(&data, snap)?;
            if a.json {
                out.json(&new.info()?)?;
            } else {
                println!("{}", new.id);
            }
            Ok(0)
        }
        Cmd::Discard(a) => {
            let data = data_dir()?;
            let ws = data.resolve_exact(&a.id)?;
            let id = ws.id.clone();
            cordon_sandbox::session::remove(&data, ws)
                .map_err(crate::cmd_session::SessionCliError::from)?;
            eprintln!("discarded workspace {id}");
            Ok(0)
        }
    }
}

fn mount_cmd(a: MountArgs, out: &Out) -> CmdResult {
    let (_, ws) = resolve(&a.id)?;
    if !(a.ttl.is_finite() && (0.0..=3600.0).contains(&a.ttl)) {
        return Err(CliError::Usage(format!(
            "--ttl {} is out of range; give seconds between 0 and 3600",
            a.ttl
        )));
    }
    let mut opts = ServeOptions {
        ttl: std::time::Duration::from_secs_f64(a.ttl),
        passthrough: !a.no_passthrough,
        threads: usize::from(a.threads),
        ..ServeOptions::default()
    };
    if a.allow_other {
        opts.allow_other = true;
    }
    if a.no_allow_other {
        opts.allow_other = false;
    }
    let mut mounted = mount::mount(&ws, &a.mountpoint, &opts)?;
    let mountpoint = mounted.mountpoint().to_path_buf();
    let _unmounter = mounted.unmounter();
    output::on_signals(mountpoint.clone());
    let base = ws.info().map(|i| i.base).unwrap_or_default();
    out.status(&format!(
        "mounted workspace {} at {} (base {base}); press Ctrl-C to unmount",
        ws.id,
        mountpoint.display()
    ));
    let negotiated = mounted.negotiated();
    let id = ws.id.clone();
    std::thread::spawn(move || {
        // Report what the kernel agreed to once the first request has arrived.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let n = *negotiated.lock().unwrap_or_else(|e| e.into_inner());
        tracing::info!(workspace = %id, passthrough = n.passthrough, readdirplus = n.readdirplus, no_opendir = n.no_opendir, "kernel features");
    });
    mounted.run()?;
    let summary = match ws.open_view(true) {
        Ok((store, base)) => {
            let view = View {
                store: &store,
                base: &base,
            };
            changes::compute(&view, &[]).map(|c| c.len()).ok()
        }
        Err(_) => None,
    };
    match summary {
        Some(0) => out.status(&format!("unmounted {}; no changes", mountpoint.display())),
        Some(n) => out.status(&format!(
            "unmounted {}; {n} changed path(s): review with `cordon diff {}`",
            mountpoint.display(),
            ws.id
        )),
        None => out.status(&format!("unmounted {}", mountpoint.display())),
    }
    Ok(0)
}

fn diff_cmd(a: DiffArgs, out: &Out) -> CmdResult {
    let (_, ws) = resolve(&a.id)?;
    let f = filters(&a.paths)?;
    let (store, base) = ws.open_view(true)?;
    let view = View {
        store: &store,
        base: &base,
    };
    let mut list = changes::compute(&view, &f)?;
    let code = if a.exit_code && !list.is_empty() {
        1
    } else {
        0
    };
    if a.json || a.stat {
        changes::render_patch(&view, &mut list, &mut std::io::sink())?;
    }
    if a.json {
        let summary = summarize(&list);
        out.json(&serde_json::json!({
            "id": ws.id,
            "changes": list,
            "summary": summary,
        }))?;
    } else if a.stat {
        if list.is_empty() {
            out.status(&format!("no changes in workspace {}", ws.id));
        } else {
            print_stat(&list, out)?;
        }
    } else {
        let mut buf = Vec::new();
        changes::render_patch(&view, &mut list, &mut buf)?;
        let dirs = list
            .iter()
            .filter(|c| {
                c.new.as_ref().is_some_and(|n| n.kind == libc::S_IFDIR)
                    || c.old.as_ref().is_some_and(|o| o.kind == libc::S_IFDIR)
            })
            .count();
        out.patch(&buf)?;
        if list.is_empty() {
            out.status(&format!("no changes in workspace {}", ws.id));
        } else if dirs > 0 {
            out.status(&format!(
                "{dirs} directory change(s) not shown in the patch; see `cordon diff {} --stat`",
                ws.id
            ));
        }
    }
    Ok(code)
}

fn summarize(list: &[Change]) -> serde_json::Value {
    let count = |k: ChangeKind| list.iter().filter(|c| c.kind == k).count();
    serde_json::json!({
        "added": count(ChangeKind::Added),
        "deleted": count(ChangeKind::Deleted),
        "modified": count(ChangeKind::Modified),
        "insertions": list.iter().filter_map(|c| c.insertions).sum::<u64>(),
        "deletions": list.iter().filter_map(|c| c.deletions).sum::<u64>(),
    })
}

fn print_stat(list: &[Change], out: &Out) -> std::io::Result<()> {
    let mut s = std::io::stdout().lock();
    let width = list
        .iter()
        .map(|c| display_path(&c.raw_path).len() + 1)
        .max()
        .unwrap_or(0)
        .min(60);
    let (mut ins, mut del, mut files) = (0u64, 0u64, 0usize);
    for c in list {
        let is_dir = c
            .new
            .as_ref()
            .or(c.old.as_ref())
            .is_some_and(|i| i.kind == libc::S_IFDIR);
        let shown = display_path(&c.raw_path);
        let name = if is_dir { format!("{shown}/") } else { shown };
        let detail = if is_dir {
            match c.kind {
                ChangeKind::Added => "new directory".to_string(),
                ChangeKind::Deleted => "deleted directory".to_string(),
                ChangeKind::Modified => format!(
                    "mode {:o} -> {:o}",
                    c.old.as_ref().map_or(0, |o| o.mode),
                    c.new.as_ref().map_or(0, |n| n.mode)
                ),
            }
        } else {
            files += 1;
            if c.binary {
                "Bin".to_string()
            } else {
                let (i, d) = (c.insertions.unwrap_or(0), c.deletions.unwrap_or(0));
                ins += i;
                del += d;
                let total = i + d;
                let scale = |n: u64| {
                    if total > 50 {
                        (n * 50).div_ceil(total)
                    } else {
                        n
                    }
                };
                format!(
                    "{total} {}{}",
                    out.green(&"+".repeat(scale(i) as usize)),
                    out.red(&"-".repeat(scale(d) as usize))
                )
            }
        };
        writeln!(s, " {name:<width$} | {detail}")?;
    }
    writeln!(
        s,
        " {files} file{} changed, {ins} insertion{}(+), {del} deletion{}(-)",
        if files == 1 { "" } else { "s" },
        if ins == 1 { "" } else { "s" },
        if del == 1 { "" } else { "s" }
    )
}

fn apply_cmd(a: ApplyArgs, out: &Out) -> CmdResult {
    let (_, ws) = resolve(&a.id)?;
    let f = filters(&a.paths)?;
    // Applying may rewrite the delta, which a running FUSE server holds in memory.
    let _lock = if a.dry_run { None } else { Some(ws.lock()?) };
    let (store, base) = ws.open_view(a.dry_run)?;
    let epoch = ws.base_epoch_ns(store.conn())?;
    let view = View {
        store: &store,
        base: &base,
    };
    let opts = ApplyOptions {
        dry_run: a.dry_run,
        force: a.force,
        skip_conflicts: a.skip_conflicts,
        allow_git_config: a.allow_git_config,
    };
    let bar = out.progress(0, "applying");
    let report = changes::apply(&view, &f, &opts, epoch, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    let refused = !report.conflicts.is_empty() && report.applied.is_empty();
    if a.json {
        out.json(&report)?;
    } else {
        let mut s = std::io::stdout().lock();
        for item in &report.applied {
            let note = item
                .note
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            let path = display_path(&item.raw_path);
            writeln!(s, "  {:<7} {path}{note}", item.action)?;
        }
        for p in &report.skipped {
            writeln!(s, "  skip    {}: {}", display_path(&p.raw_path), p.reason)?;
        }
        drop(s);
        for p in &report.conflicts {
            out.warn(&format!(
                "refused: {}: {}",
                display_path(&p.raw_path),
                p.reason
            ));
        }
        for p in &report.failed {
            out.error(&format!("{}: {}", display_path(&p.raw_path), p.reason));
        }
        let verb = if a.dry_run { "would apply" } else { "applied" };
        if refused && a.skip_conflicts {
            out.error("nothing applied: every change was refused (see above)");
        } else if refused {
            out.error(&format!(
                "nothing applied: {} path(s) refused (see above). Review them, then re-run with \
                 --force to overwrite host changes, --allow-git-config for git configuration and \
                 hooks, --skip-conflicts to apply the rest, or name the paths to apply",
                report.conflicts.len()
            ));
        } else if report.applied.is_empty()
            && report.conflicts.is_empty()
            && report.failed.is_empty()
        {
            out.status(&format!("no changes in workspace {}", ws.id));
        } else {
            out.status(&format!(
                "{verb} {} change(s) to {}",
                report.applied.len(),
                base.path().display()
            ));
        }
    }
    Ok(if refused {
        3
    } else if !report.failed.is_empty() {
        1
    } else {
        0
    })
}

fn export_cmd(a: ExportArgs, out: &Out) -> CmdResult {
    let (_, ws) = resolve(&a.id)?;
    let f = filters(&a.paths)?;
    if matches!(a.format, ExportFormat::Tar) && !f.is_empty() {
        return Err(CliError::Usage(
            "paths can only be given with --format patch; a tar export holds the whole tree".into(),
        ));
    }
    let (store, base) = ws.open_view(true)?;
    let view = View {
        store: &store,
        base: &base,
    };
    let mut sink: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|e| Error::io(p, e))?,
        )),
        None => {
            if matches!(a.format, ExportFormat::Tar) && std::io::stdout().is_terminal() {
                return Err(CliError::Usage(
                    "refusing to write a tar archive to a terminal; use -o FILE or redirect stdout"
                        .into(),
                ));
            }
            Box::new(std::io::BufWriter::new(std::io::stdout().lock()))
        }
    };
    let result = match a.format {
        ExportFormat::Patch => {
            export::patch(&view, &f, &mut sink).map(|n| format!("{n} change(s)"))
        }
        ExportFormat::Tar => {
            let bar = out.spinner("archiving");
            let r = export::tar(&view, &mut sink, &mut |n| {
                if n % 256 == 0 {
                    bar.set_position(n);
                }
            });
            bar.finish_and_clear();
            r.map(|n| format!("{n} entries"))
        }
    };
    let flushed = sink.flush();
    drop(sink);
    match (result, flushed) {
        (Ok(what), Ok(())) => {
            if let Some(p) = &a.output {
                out.status(&format!("exported {what} to {}", p.display()));
            }
            Ok(0)
        }
        (Err(e), _) => {
            remove_partial(a.output.as_deref());
            Err(e.into())
        }
        (_, Err(e)) => {
            remove_partial(a.output.as_deref());
            Err(e.into())
        }
    }
}

fn remove_partial(p: Option<&Path>) {
    if let Some(p) = p {
        let _ = std::fs::remove_file(p);
    }
}
