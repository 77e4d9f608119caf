//! The PostgreSQL store, for several server replicas sharing one database.
//!
//! [`PgStore`] is a driver for the store logic of `store.rs` (the same code that runs
//! on [`SqliteStore`](crate::SqliteStore): same schema, errors, audit chain). What
//! several writers add:
//!
//! - Every write transaction that appends an audit event first takes one
//!   transaction-scoped advisory lock (`pg_advisory_xact_lock`), so appends from all
//!   replicas are serialized: `seq` never forks or skips, and events commit in `seq`
//!   order, so no reader sees event N+1 without N.
//! - Such a transaction also sends `NOTIFY cordon_flags, '<revision>'`, which
//!   PostgreSQL delivers when it commits. `Store::watch_changes` listens on a
//!   connection of its own (reconnecting with backoff, and reporting a change after
//!   every reconnect, since it may have missed some) and tells the server, which drops
//!   its snapshots, reloads its tokens and refreshes its streams.
//! - Migrations run in one transaction under another advisory lock, so replicas that
//!   start together apply them once.
//! - `Store::client_state` reads in one `REPEATABLE READ` transaction, so the state
//!   and its revision agree.
//!
//! The trait is synchronous (the server calls it from `spawn_blocking`). The driver is
//! tokio-postgres: its connections run on a one-thread runtime owned by the store, and
//! callers wait for their queries on their own thread. Not the `postgres` crate: it
//! nests a runtime in every connection and panics when one is used or dropped on a
//! thread that drives async tasks, which `serve` does at start-up (it reads the tokens)
//! and when the last reference to the store goes away inside a task. A handful of
//! connections ([`PgOptions::pool_size`]) are pooled so reads do not queue behind one.
//!
//! What it does not do: TLS to the database (use a Unix socket or a trusted network),
//! statement timeouts, or an audit anchor outside the database (there is no place all
//! replicas could write it; record the report's `head` elsewhere). A query on a
//! connection the server has just dropped fails once; the connection is replaced.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{
    AsyncMessage, Client, Config, GenericClient, IsolationLevel, NoTls, Row, Transaction,
};

use crate::schema::{self, Dialect};
use crate::sql::{Columns, Driver, JsonText, Param, Sql, impl_columns, numbered_dollars};
use crate::store::{ChangeWatch, OnChange, StoreError};

type Result<T> = std::result::Result<T, StoreError>;

/// The channel every change is announced on.
pub const CHANNEL: &str = "cordon_flags";
/// Advisory lock held by every transaction that appends an audit event.
const WRITE_LOCK: i64 = 0x636f_7264_6f6e_0001;
/// Advisory lock held while the schema is migrated.
const MIGRATION_LOCK: i64 = 0x636f_7264_6f6e_0002;
/// The listener's first retry after losing its connection, and its slowest.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How a [`PgStore`] uses the database.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Most connections open at once for queries (the change listener has one more).
    pub pool_size: usize,
    /// How long a query waits for a free connection before it fails.
    pub pool_wait: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            pool_size: 4,
            pool_wait: Duration::from_secs(30),
        }
    }
}

/// Flag state in a PostgreSQL database that several servers may share.
pub struct PgStore {
    pool: Pool,
    /// Runs the connections' I/O; `None` only while the store is dropped.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Dropping a runtime waits for its threads, which panics on a thread that
        // drives async tasks; the last reference to the store may go away on one.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn pg(action: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |source| StoreError::Pg { action, source }
}

/// The whole of a driver error on one line: its kind and every cause (the server's
/// own message, detail and hint for a database error), since the driver's `Display`
/// shows only the kind ("db error").
pub(crate) fn explain(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string().replace('\n', "; "));
        cause = c.source();
    }
    text
}

/// `user@host:port/database` of `config`, for messages (never the password).
fn describe(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("?");
    format!(
        "{user}@{host}:{port}/{}",
        config.get_dbname().unwrap_or(user)
    )
}

/// Run `future` to completion on this thread.
///
/// tokio-postgres' client futures only wait on channels to the connection tasks, which
/// run on the store's runtime, so any thread can wait for them this way, including one
/// that drives async tasks (where `Runtime::block_on` would panic).
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        // A spurious wake-up only costs one more poll.
        std::thread::park();
    }
}

struct Idle {
    clients: Vec<Client>,
    /// Connections open, idle or in use.
    open: usize,
}

/// A bounded set of connections.
struct Pool {
    config: Config,
    database: String,
    runtime: tokio::runtime::Handle,
    options: PgOptions,
    idle: Mutex<Idle>,
    freed: Condvar,
}

/// A connection taken from the pool; goes back when dropped (or is closed, if it
/// broke).
struct Pooled<'p> {
    client: Option<Client>,
    pool: &'p Pool,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("a pooled client until dropped")
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("a pooled client until dropped")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let mut idle = self.pool.lock();
        if client.is_closed() {
            idle.open -= 1;
        } else {
            // An unfinished transaction was rolled back when it was dropped; the
            // ROLLBACK is queued ahead of whatever the next user sends.
            idle.clients.push(client);
        }
        drop(idle);
        self.pool.freed.notify_one();
    }
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Idle> {
        // Nothing panics while holding it; a poisoned lock still has valid counts.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self) -> Result<Pooled<'_>> {
        let deadline = Instant::now() + self.options.pool_wait;
        let mut idle = self.lock();
        loop {
            while let Some(client) = idle.clients.pop() {
                if !client.is_closed() {
                    return Ok(Pooled {
                        client: Some(client),
                        pool: self,
                    });
                }
                idle.open -= 1;
            }
            if idle.open < self.options.pool_size.max(1) {
                idle.open += 1;
                drop(idle);
                return match self.connect() {
                    Ok(client) => Ok(Pooled {
                        client: Some(client),
                        pool: self,
                    }),
                    Err(e) => {
                        self.lock().open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(StoreError::PgPoolBusy {
                    size: self.options.pool_size,
                    waited_s: self.options.pool_wait.as_secs(),
                });
            }
            idle = self
                .freed
                .wait_timeout(idle, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn connect(&self) -> Result<Client> {
        let config = self.config.clone();
        let task = self.runtime.spawn(async move {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "a PostgreSQL connection of the flag store failed");
                }
            });
            Ok(client)
        });
        match block_on(task) {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(source)) => Err(StoreError::PgConnect {
                database: self.database.clone(),
                source,
            }),
            Err(e) => Err(StoreError::PgRuntime(std::io::Error::other(e))),
        }
    }
}

impl PgStore {
    /// Connect to the database at `url` (`postgres://USER:PASSWORD@HOST:PORT/DATABASE`
    /// or the `key=value` form) and bring its schema up to date.
    pub fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, PgOptions::default())
    }

    /// [`Self::connect`] with a pool of another size or patience.
    pub fn connect_with(url: &str, options: PgOptions) -> Result<Self> {
        let mut config: Config = url.parse().map_err(StoreError::PgUrl)?;
        if config.get_application_name().is_none() {
            config.application_name("cordon-flags");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cordon-flags-pg")
            .enable_all()
            .build()
            .map_err(StoreError::PgRuntime)?;
        let store = Self {
            pool: Pool {
                database: describe(&config),
                config,
                runtime: runtime.handle().clone(),
                options,
                idle: Mutex::new(Idle {
                    clients: Vec::new(),
                    open: 0,
                }),
                freed: Condvar::new(),
            },
            runtime: Some(runtime),
        };
        let database = store.pool.database.clone();
        block_on(migrate(&mut *store.pool.get()?, &database))?;
        Ok(store)
    }

    /// The database as `user@host:port/name`, for messages (never the password).
    pub fn database(&self) -> &str {
        &self.pool.database
    }
}

async fn migrate(client: &mut Client, database: &str) -> Result<()> {
    let tx = client
        .transaction()
        .await
        .map_err(pg("begin the migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg("wait for other replicas' migrations"))?;
    tx.batch_execute(&Dialect::Postgres.migrations_table())
        .await
        .map_err(pg("create the migrations table"))?;
    let row = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::bigint FROM schema_migrations",
            &[],
        )
        .await
        .map_err(pg("read the schema version"))?;
    let current: i64 = row.try_get(0).map_err(pg("read the schema version"))?;
    for (version, sql) in schema::pending(Dialect::Postgres, current, database)? {
        tx.batch_execute(&sql)
            .await
            .map_err(pg("apply a schema migration"))?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(pg("record a schema migration"))?;
    }
    tx.commit().await.map_err(pg("commit the migration"))
}

/// Begin a transaction that will append an audit event: wait until no other writer,
/// on any replica, is between its own read of the newest event and its commit.
async fn begin_change<'c>(client: &'c mut Client, action: &'static str) -> Result<Transaction<'c>> {
    let tx = client.transaction().await.map_err(pg(action))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
        .await
        .map_err(pg(action))?;
    Ok(tx)
}

/// A connection or transaction, for the store logic.
struct PgSql<'a, C>(&'a C);

impl<C: GenericClient + Sync> Sql for PgSql<'_, C> {
    fn execute(&self, action: &'static str, sql: &str, params: &[&dyn Param]) -> Result<u64> {
        let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.pg()).collect();
        block_on(self.0.execute(&numbered_dollars(sql), &params)).map_err(pg(action))
    }

    fn each(
        &self,
        action: &'static str,
        sql: &str,
        params: &[&dyn Param],
        row: &mut dyn FnMut(&dyn Columns) -> Result<()>,
    ) -> Result<()> {
        let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.pg()).collect();
        for r in block_on(self.0.query(&numbered_dollars(sql), &params)).map_err(pg(action))? {
            row(&r)?;
        }
        Ok(())
    }

    fn announce(&self, revision: i64) -> Result<()> {
        block_on(self.0.execute(
            "SELECT pg_notify($1, $2)",
            &[&CHANNEL, &revision.to_string()],
        ))
        .map(drop)
        .map_err(pg("announce a change"))
    }
}

fn column<'r, T: FromSql<'r>>(r: &'r Row, i: usize) -> Result<T> {
    r.try_get(i).map_err(pg("read a stored value"))
}

fn json_column(r: &Row, i: usize) -> Result<String> {
    column::<JsonText>(r, i).map(|j| j.0)
}

fn opt_json_column(r: &Row, i: usize) -> Result<Option<String>> {
    column::<Option<JsonText>>(r, i).map(|j| j.map(|j| j.0))
}

impl_columns!(Row, column, json_column, opt_json_column);

impl Driver for PgStore {
    fn read<T>(&self, f: impl FnOnce(&dyn Sql) -> Result<T>) -> Result<T> {
        let client = self.pool.get()?;
        f(&PgSql(&*client))
    }

    fn read_consistent<T>(&self, f: impl FnOnce(&dyn Sql) -> Result<T>) -> Result<T> {
        let mut client = self.pool.get()?;
        let tx = block_on(
            client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start(),
        )
        .map_err(pg("begin a read"))?;
        let out = f(&PgSql(&tx))?;
        block_on(tx.commit()).map_err(pg("end a read"))?;
        Ok(out)
    }

    fn change<T>(&self, action: &'static str, f: impl FnOnce(&dyn Sql) -> Result<T>) -> Result<T> {
        let mut client = self.pool.get()?;
        let tx = block_on(begin_change(&mut client, action))?;
        let out = f(&PgSql(&tx))?;
        block_on(tx.commit()).map_err(pg(action))?;
        Ok(out)
    }

    fn write<T>(&self, action: &'static str, f: impl FnOnce(&dyn Sql) -> Result<T>) -> Result<T> {
        let mut client = self.pool.get()?;
        let tx = block_on(client.transaction()).map_err(pg(action))?;
        let out = f(&PgSql(&tx))?;
        block_on(tx.commit()).map_err(pg(action))?;
        Ok(out)
    }

    /// None: there is no place beside a shared database that every replica could
    /// write. Record `head` of the audit report elsewhere to detect truncation.
    fn audit_anchor(&self) -> Result<Option<crate::audit::Anchor>> {
        Ok(None)
    }

    fn watch_changes(&self, on_change: OnChange) -> Option<ChangeWatch> {
        let mut config = self.pool.config.clone();
        let name = format!(
            "{}-listener",
            config.get_application_name().unwrap_or("cordon-flags")
        );
        // A listener only ever reads, so a dead peer would go unnoticed without
        // keepalives: probe after 10 s of silence, give up after three lost probes.
        config
            .application_name(name)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3);
        Some(Box::pin(listen(config, on_change)))
    }
}

/// Listen for changes until dropped, reconnecting with backoff.
async fn listen(config: Config, on_change: OnChange) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let started = Instant::now();
        match listen_once(&config, &on_change).await {
            Ok(never) => match never {},
            Err(e) => tracing::warn!(
                error = %e,
                database = %describe(&config),
                retry_in_ms = backoff.as_millis() as u64,
                "the flag change listener lost its connection; changes made through other \
                 replicas reach this one when it is back"
            ),
        }
        if started.elapsed() > MAX_BACKOFF * 6 {
            backoff = MIN_BACKOFF;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Why one listening connection ended.
#[derive(Debug, thiserror::Error)]
enum ListenError {
    #[error(transparent)]
    Pg(#[from] tokio_postgres::Error),
    #[error("the server closed the connection")]
    Closed,
}

/// One connection: `LISTEN`, report a change once listening (anything may have
/// happened while no connection listened), then one per notification.
async fn listen_once(
    config: &Config,
    on_change: &OnChange,
) -> std::result::Result<Infallible, ListenError> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let sql = format!("LISTEN {CHANNEL}");
    let mut listen = std::pin::pin!(client.batch_execute(&sql));
    let mut listening = false;
    loop {
        tokio::select! {
            done = &mut listen, if !listening => {
                done?;
                listening = true;
                on_change();
            }
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    tracing::debug!(revision = n.payload(), "a flag change was announced");
                    on_change();
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Err(ListenError::Closed),
            }
        }
    }
}
