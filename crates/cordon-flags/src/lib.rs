//! The FeatureOps control plane: a feature flag server that speaks the Unleash API, so
//! the official Unleash SDKs work against it unchanged.
//!
//! - [`store`]: the [`Store`] trait and its embedded SQLite implementation.
//! - [`pg`]: [`PgStore`], for several replicas sharing one PostgreSQL database, and the
//!   change listener that keeps them in step.
//! - `schema`: the tables, written once for both.
//! - [`audit`]: the hash-chained, append-only log of every change, and its verifier.
//! - [`token`]: API tokens in the Unleash format, hashed at rest, compared in constant time.
//! - [`serve`]: the HTTP server (client, frontend and part of the admin API), evaluating
//!   flags with the `unleash-yggdrasil` engine.
//!
//! - [`metrics`]: SDK registrations and evaluation counts, parsed and bounded.
//!
//! - [`cr`] and [`people`]: four-eyes change requests for protected environments, and
//!   the users, agents and roles they are about. See `docs/flags-governance.md`.
//!
//! It must not depend on the sandbox crates.

mod admin;
pub mod audit;
pub mod client;
pub mod console;
pub mod cr;
mod gov;
mod live;
pub mod metrics;
pub mod people;
pub mod pg;
mod playground;
mod rows;
mod schema;
pub mod server;
mod sql;
mod sqlite;
pub mod store;
mod stream;
pub mod token;
pub mod wire;

use std::sync::Arc;

pub use audit::Actor;
pub use pg::{PgOptions, PgStore};
pub use server::{FrontendResponse, FrontendToggle, FrontendVariant, ServeOptions};
pub use store::{FeatureSummary, NewFeature, SqliteStore, Store, StoreError, TokenRecord};
pub use token::TokenType;

/// Errors from starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the initial admin token must look like `*:*.SECRET` with a secret of at least 16 characters"
    )]
    BadInitToken,
    #[error("cannot draw random bytes for a new token: {0}")]
    Random(getrandom::Error),
    #[error("the HTTP server stopped: {0}")]
    Serve(std::io::Error),
}

/// Make sure an admin token exists.
///
/// With `init` (from `--init-admin-token` or `CORDON_FLAGS_INIT_ADMIN_TOKEN`) that token
/// is created if no admin token exists yet; without it one is generated. Returns the
/// generated token text, which is the only time it can be seen: only its hash is kept.
/// Returns `None` when an admin token already existed or `init` was used.
pub fn bootstrap_admin_token(
    store: &dyn Store,
    init: Option<&str>,
) -> Result<Option<String>, Error> {
    if store
        .tokens()?
        .iter()
        .any(|t| t.token_type == TokenType::Admin)
    {
        return Ok(None);
    }
    let (text, generated) = match init {
        Some(t) => {
            match token::parse_scope(t) {
                Some(("*", "*", secret)) if secret.len() >= 16 => {}
                _ => return Err(Error::BadInitToken),
            }
            (t.to_owned(), false)
        }
        None => (token::generate("*", "*").map_err(Error::Random)?, true),
    };
    let record = TokenRecord {
        name: "admin".into(),
        token_type: TokenType::Admin,
        project: "*".into(),
        environment: "*".into(),
        hash: token::TokenHash::of(&text),
        owner: None,
        expires_ms: None,
    };
    match store.insert_token(&record, &Actor::system()) {
        Ok(()) => Ok(generated.then_some(text)),
        // Another replica of a shared database stored the same token meanwhile.
        Err(_) if !generated && store.tokens()?.iter().any(|t| t.hash == record.hash) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Serve the flag APIs on `listener` until the future is dropped or the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Arc<dyn Store>,
    options: ServeOptions,
) -> Result<(), Error> {
    let (app, state) = server::router(store.clone(), &options)?;
    // Other replicas' changes: the store says when there may have been some.
    let watch = {
        let state = state.clone();
        store.watch_changes(Arc::new(move || state.changed_elsewhere()))
    };
    let watch = async move {
        match watch {
            Some(watch) => watch.await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        served = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        ) => served.map_err(Error::Serve),
        () = state.feeds.clone().run() => Ok(()),
        () = state.clone().keep_tokens_fresh() => Ok(()),
        () = state.clone().run_schedules() => Ok(()),
        () = watch => Ok(()),
    }
}
