//! `cordon flags ...`: the FeatureOps control plane. `serve` runs the server
//! (`cordon-flags`); the other commands talk to a running server's admin API at
//! `CORDON_FLAGS_URL` with the admin token `CORDON_FLAGS_TOKEN`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};
use cordon_flags::client::AdminClient;
use cordon_flags::{ServeOptions, SqliteStore, Store};
use cordon_fs::workspace::DataDir;

#[derive(Subcommand)]
pub enum FlagsCmd {
    /// Serve the Unleash-compatible flag APIs (client, frontend, admin state import/export).
    #[command(long_about = "Serve the Unleash-compatible flag APIs over HTTP: \
GET /api/client/features (client tokens), GET|POST /api/frontend (frontend tokens), \
POST /api/admin/state/import?environment=ENV, GET /api/admin/state/export?environment=ENV \
and POST /api/admin/api-tokens (admin token). See docs/flags.md.\n\n\
On first start an admin token is created: the one given with --init-admin-token, or a \
generated one printed once on standard output. Only its SHA-256 hash is stored.")]
    Serve(ServeArgs),
    /// Kill switch: turn FLAG off in one environment (default production).
    Kill(SwitchArgs),
    /// Turn FLAG on in one environment.
    Enable(SwitchArgs),
    /// Turn FLAG off in one environment.
    Disable(SwitchArgs),
    /// List the flags of a project.
    List(ListArgs),
    /// Create a flag, disabled in every environment.
    Create(CreateArgs),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
}

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Check the hash chain on the server; exit 1 naming every edited, inserted or
    /// deleted event.
    Verify(Remote),
}

#[derive(Args)]
pub struct Remote {
    /// Flag server, e.g. http://127.0.0.1:4242.
    #[arg(
        long,
        env = "CORDON_FLAGS_URL",
        default_value = "http://127.0.0.1:4242"
    )]
    url: String,
    /// Admin token.
    #[arg(long, env = "CORDON_FLAGS_TOKEN", hide_env_values = true)]
    token: String,
}

#[derive(Args)]
pub struct SwitchArgs {
    flag: String,
    #[arg(long, default_value = "production")]
    env: String,
    #[arg(long, default_value = "default")]
    project: String,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub struct ListArgs {
    #[arg(long, default_value = "default")]
    project: String,
    /// Print the server's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub struct CreateArgs {
    name: String,
    #[arg(long, default_value = "default")]
    project: String,
    #[arg(long)]
    description: Option<String>,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4242")]
    listen: SocketAddr,
    /// SQLite database file (created with its schema if missing).
    /// Default: flags.db in the data directory ($CORDON_HOME).
    #[arg(long)]
    db: Option<PathBuf>,
    /// Admin token to create if no admin token exists yet, as `*:*.SECRET`
    /// (secret of 16 characters or more). Ignored once an admin token exists.
    #[arg(long, env = "CORDON_FLAGS_INIT_ADMIN_TOKEN", hide_env_values = true)]
    init_admin_token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FlagsCliError {
    #[error(transparent)]
    Flags(#[from] cordon_flags::Error),
    #[error(transparent)]
    Store(#[from] cordon_flags::StoreError),
    #[error(transparent)]
    DataDir(#[from] cordon_fs::Error),
    #[error("cannot create the data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(#[from] cordon_flags::client::ClientError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot listen on {addr}: {source}; is another server using it? pass --listen")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub fn run(cmd: FlagsCmd) -> Result<i32, FlagsCliError> {
    match cmd {
        FlagsCmd::Serve(a) => serve(a),
        FlagsCmd::Kill(a) | FlagsCmd::Disable(a) => switch(a, false),
        FlagsCmd::Enable(a) => switch(a, true),
        FlagsCmd::List(a) => list(a),
        FlagsCmd::Create(a) => create(a),
        FlagsCmd::Audit(AuditCmd::Verify(r)) => audit_verify(r),
    }
}

fn admin(r: &Remote) -> Result<AdminClient, FlagsCliError> {
    Ok(AdminClient::new(&r.url, &r.token)?)
}

/// Path segments come from the command line; the server only accepts URL-friendly
/// names, so anything else is escaped and then refused by the server with a 404/400.
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn switch(a: SwitchArgs, on: bool) -> Result<i32, FlagsCliError> {
    let path = format!(
        "/api/admin/projects/{}/features/{}/environments/{}/{}",
        segment(&a.project),
        segment(&a.flag),
        segment(&a.env),
        if on { "on" } else { "off" }
    );
    admin(&a.remote)?.send("POST", &path, None)?;
    eprintln!(
        "{} is now {} in {}",
        a.flag,
        if on { "on" } else { "off" },
        a.env
    );
    Ok(0)
}

fn list(a: ListArgs) -> Result<i32, FlagsCliError> {
    let path = format!("/api/admin/projects/{}/features", segment(&a.project));
    let answer = admin(&a.remote)?.send("GET", &path, None)?;
    if a.json {
        println!("{answer}");
        return Ok(0);
    }
    for f in answer["features"].as_array().into_iter().flatten() {
        let envs: Vec<String> = f["environments"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let state = if e["enabled"] == true { "on" } else { "off" };
                format!("{}={state}", e["name"].as_str().unwrap_or("?"))
            })
            .collect();
        println!("{}\t{}", f["name"].as_str().unwrap_or("?"), envs.join(" "));
    }
    Ok(0)
}

fn create(a: CreateArgs) -> Result<i32, FlagsCliError> {
    let path = format!("/api/admin/projects/{}/features", segment(&a.project));
    let mut body = serde_json::json!({ "name": a.name });
    if let Some(d) = a.description {
        body["description"] = d.into();
    }
    admin(&a.remote)?.send("POST", &path, Some(&body))?;
    eprintln!("created {} (off in every environment)", a.name);
    Ok(0)
}

fn audit_verify(r: Remote) -> Result<i32, FlagsCliError> {
    let report = admin(&r)?.send("GET", "/api/admin/audit/verify", None)?;
    let report: cordon_flags::audit::Report = serde_json::from_value(report)
        .map_err(|_| cordon_flags::client::ClientError::Malformed { url: r.url.clone() })?;
    for p in &report.problems {
        println!("{p}");
    }
    if report.ok() {
        println!(
            "audit chain intact: {} events, head {}",
            report.events,
            report.head.as_deref().unwrap_or("-")
        );
        Ok(0)
    } else {
        Ok(1)
    }
}

fn serve(a: ServeArgs) -> Result<i32, FlagsCliError> {
    let db = match a.db {
        Some(p) => p,
        None => {
            let root = DataDir::from_env()?.root().to_owned();
            std::fs::create_dir_all(&root).map_err(|source| FlagsCliError::CreateDir {
                path: root.clone(),
                source,
            })?;
            root.join("flags.db")
        }
    };
    let store = SqliteStore::open(&db)?;
    let init = a.init_admin_token.as_deref().filter(|t| !t.is_empty());
    if let Some(generated) = cordon_flags::bootstrap_admin_token(&store, init)? {
        eprintln!("Created the admin token (shown only this once; only its hash is stored):");
        println!("{generated}");
    }
    let store: Arc<dyn Store> = Arc::new(store);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(FlagsCliError::Runtime)?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .map_err(|source| FlagsCliError::Listen {
                addr: a.listen,
                source,
            })?;
        let addr = listener.local_addr().unwrap_or(a.listen);
        eprintln!(
            "cordon flags: serving on http://{addr} (database {})",
            db.display()
        );
        cordon_flags::serve(listener, store, ServeOptions::default()).await?;
        Ok(0)
    })
}
