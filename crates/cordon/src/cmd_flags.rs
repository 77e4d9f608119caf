//! `cordon flags ...`: the FeatureOps control plane. Only `serve` exists so far; the
//! server itself is `cordon-flags`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};
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
