//! The PostgreSQL store, for several server replicas sharing one database.
//!
//! [`PgStore`] implements [`Store`] with the schema of `schema.rs`, the same
//! errors and the same audit chain as [`SqliteStore`](crate::SqliteStore). What
//! several writers add:
//!
//! - Every write transaction that appends an audit event first takes one
//!   transaction-scoped advisory lock (`pg_advisory_xact_lock`), so appends from all
//!   replicas are serialized: `seq` never forks or skips, and events commit in `seq`
//!   order, so no reader sees event N+1 without N.
//! - Such a transaction also sends `NOTIFY cordon_flags, '<revision>'`, which
//!   PostgreSQL delivers when it commits. [`Store::watch_changes`] listens on a
//!   connection of its own (reconnecting with backoff, and reporting a change after
//!   every reconnect, since it may have missed some) and tells the server, which drops
//!   its snapshots, reloads its tokens and refreshes its streams.
//! - Migrations run in one transaction under another advisory lock, so replicas that
//!   start together apply them once.
//! - [`Store::client_state`] reads in one `REPEATABLE READ` transaction, so the state
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
//! or statement timeouts.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{
    AsyncMessage, Client, Config, GenericClient, IsolationLevel, NoTls, Row, Transaction,
};
use unleash_types::client_features::ClientFeatures;

use crate::audit::{Actor, Change, Event};
use crate::metrics::{Application, Counts, MetricsRow, Registration, Report};
use crate::rows::{self, now_millis, to_json};
use crate::schema::{self, Dialect};
use crate::store::{
    ChangeWatch, FeatureSummary, NewFeature, OnChange, Store, StoreError, TokenRecord,
};

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
        store.with(async |c| migrate(c, &database).await)?;
        Ok(store)
    }

    /// Run `f` with a pooled connection.
    fn with<T>(&self, f: impl AsyncFnOnce(&mut Client) -> Result<T>) -> Result<T> {
        let mut client = self.pool.get()?;
        block_on(f(&mut client))
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
    let current: i64 = col(&row, 0, "read the schema version")?;
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

/// Column `i` of `row`, or an error naming `action` (a column of an unexpected type,
/// in a database edited by hand).
fn col<'r, T: FromSql<'r>>(row: &'r Row, i: usize, action: &'static str) -> Result<T> {
    row.try_get(i).map_err(pg(action))
}

/// Begin a transaction that will append an audit event: wait until no other writer,
/// on any replica, is between its own read of the newest event and its commit.
async fn begin_write<'c>(client: &'c mut Client, action: &'static str) -> Result<Transaction<'c>> {
    let tx = client.transaction().await.map_err(pg(action))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
        .await
        .map_err(pg(action))?;
    Ok(tx)
}

/// Append one event to the audit chain inside the change's own transaction (which
/// holds the write lock), and announce the new revision when it commits.
async fn append_event(tx: &Transaction<'_>, actor: &Actor, change: Change<'_>) -> Result<()> {
    const READ: &str = "read the newest audit event";
    let last = match tx
        .query_opt(
            "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await
        .map_err(pg(READ))?
    {
        Some(r) => Some((col(&r, 0, READ)?, col(&r, 1, READ)?)),
        None => None,
    };
    let event = Event::following(last, actor, change);
    tx.execute(
        "INSERT INTO audit_events
            (seq, ts, actor, action, flag, environment, before, after, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            &event.seq,
            &event.ts,
            &event.actor,
            &event.action,
            &event.flag,
            &event.environment,
            &event.before,
            &event.after,
            &event.prev_hash,
            &event.hash,
        ],
    )
    .await
    .map_err(pg("append an audit event"))?;
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANNEL, &event.seq.to_string()],
    )
    .await
    .map_err(pg("announce a change"))?;
    Ok(())
}

async fn query<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    action: &'static str,
) -> Result<Vec<Row>> {
    c.query(sql, params).await.map_err(pg(action))
}

async fn exists<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    action: &'static str,
) -> Result<bool> {
    Ok(c.query_opt(sql, params)
        .await
        .map_err(pg(action))?
        .is_some())
}

async fn known_environment<C: GenericClient>(c: &C, environment: &str) -> Result<()> {
    if exists(
        c,
        "SELECT 1 FROM environments WHERE name = $1",
        &[&environment],
        "look up the environment",
    )
    .await?
    {
        Ok(())
    } else {
        Err(StoreError::UnknownEnvironment(environment.to_owned()))
    }
}

async fn feature_project<C: GenericClient>(c: &C, flag: &str) -> Result<Option<(String, bool)>> {
    const ACTION: &str = "look up a flag";
    let row = c
        .query_opt(
            "SELECT project, archived FROM features WHERE name = $1",
            &[&flag],
        )
        .await
        .map_err(pg(ACTION))?;
    row.map(|r| Ok((col(&r, 0, ACTION)?, col(&r, 1, ACTION)?)))
        .transpose()
}

/// The flag must exist in `project` and not be archived.
async fn live_feature<C: GenericClient>(c: &C, project: &str, flag: &str) -> Result<()> {
    match feature_project(c, flag).await? {
        Some((p, false)) if p == project => Ok(()),
        _ => Err(StoreError::UnknownFlag {
            project: project.to_owned(),
            flag: flag.to_owned(),
        }),
    }
}

async fn read_revision<C: GenericClient>(c: &C) -> Result<u64> {
    const ACTION: &str = "read the revision";
    let row = c
        .query_one(
            "SELECT COALESCE(MAX(seq), 0)::bigint FROM audit_events",
            &[],
        )
        .await
        .map_err(pg(ACTION))?;
    Ok(col::<i64>(&row, 0, ACTION)?.max(0) as u64)
}

async fn read_client_state<C: GenericClient>(
    c: &C,
    environment: &str,
    project: &str,
) -> Result<ClientFeatures> {
    const FEATURES: &str = "read features";
    let features = query(
        c,
        "SELECT f.name, f.project, f.type, f.description, f.stale,
                f.impression_data, fe.enabled, fe.variants::text
         FROM features f JOIN feature_environments fe ON fe.feature = f.name
         WHERE fe.environment = $1 AND NOT f.archived
           AND ($2 = '*' OR f.project = $2)",
        &[&environment, &project],
        FEATURES,
    )
    .await?
    .iter()
    .map(|r| {
        Ok(rows::FeatureRow {
            name: col(r, 0, FEATURES)?,
            project: col(r, 1, FEATURES)?,
            feature_type: col(r, 2, FEATURES)?,
            description: col(r, 3, FEATURES)?,
            stale: col(r, 4, FEATURES)?,
            impression_data: col(r, 5, FEATURES)?,
            enabled: col(r, 6, FEATURES)?,
            variants: col(r, 7, FEATURES)?,
        })
    })
    .collect::<Result<Vec<_>>>()?;
    const STRATEGIES: &str = "read strategies";
    let strategies = query(
        c,
        "SELECT feature, name, sort_order, parameters::text, constraints::text,
                variants::text, segments::text
         FROM strategies WHERE environment = $1 ORDER BY feature, position",
        &[&environment],
        STRATEGIES,
    )
    .await?
    .iter()
    .map(|r| {
        Ok(rows::StrategyRow {
            feature: col(r, 0, STRATEGIES)?,
            name: col(r, 1, STRATEGIES)?,
            sort_order: col(r, 2, STRATEGIES)?,
            parameters: col(r, 3, STRATEGIES)?,
            constraints: col(r, 4, STRATEGIES)?,
            variants: col(r, 5, STRATEGIES)?,
            segments: col(r, 6, STRATEGIES)?,
        })
    })
    .collect::<Result<Vec<_>>>()?;
    const DEPENDENCIES: &str = "read dependencies";
    let dependencies = query(
        c,
        "SELECT child, parent, enabled, variants::text FROM feature_dependencies
         ORDER BY child, position",
        &[],
        DEPENDENCIES,
    )
    .await?
    .iter()
    .map(|r| {
        Ok(rows::DependencyRow {
            child: col(r, 0, DEPENDENCIES)?,
            parent: col(r, 1, DEPENDENCIES)?,
            enabled: col(r, 2, DEPENDENCIES)?,
            variants: col(r, 3, DEPENDENCIES)?,
        })
    })
    .collect::<Result<Vec<_>>>()?;
    const SEGMENTS: &str = "read segments";
    let segments = query(
        c,
        "SELECT id, constraints::text FROM segments ORDER BY id",
        &[],
        SEGMENTS,
    )
    .await?
    .iter()
    .map(|r| {
        Ok(rows::SegmentRow {
            id: col(r, 0, SEGMENTS)?,
            constraints: col(r, 1, SEGMENTS)?,
        })
    })
    .collect::<Result<Vec<_>>>()?;
    rows::client_state(features, strategies, dependencies, segments)
}

/// Non-archived flags of `project` (or just `only`), with their environments, sorted
/// byte-wise by name as SQLite sorts them.
async fn read_features<C: GenericClient>(
    c: &C,
    project: &str,
    only: Option<&str>,
) -> Result<Vec<FeatureSummary>> {
    const ACTION: &str = "list flags";
    let rows = query(
        c,
        "SELECT f.name, f.project, f.type, f.description, f.stale, f.impression_data,
                f.archived, fe.environment, fe.enabled,
                (SELECT COUNT(*) FROM strategies s
                 WHERE s.feature = f.name AND s.environment = fe.environment)
         FROM features f LEFT JOIN feature_environments fe ON fe.feature = f.name
         WHERE f.project = $1 AND NOT f.archived AND ($2::text IS NULL OR f.name = $2)
         ORDER BY f.name COLLATE \"C\", fe.environment COLLATE \"C\"",
        &[&project, &only],
        ACTION,
    )
    .await?
    .iter()
    .map(|r| {
        Ok(rows::SummaryRow {
            name: col(r, 0, ACTION)?,
            project: col(r, 1, ACTION)?,
            feature_type: col(r, 2, ACTION)?,
            description: col(r, 3, ACTION)?,
            stale: col(r, 4, ACTION)?,
            impression_data: col(r, 5, ACTION)?,
            archived: col(r, 6, ACTION)?,
            environment: col(r, 7, ACTION)?,
            enabled: col(r, 8, ACTION)?,
            strategy_count: col(r, 9, ACTION)?,
        })
    })
    .collect::<Result<Vec<_>>>()?;
    Ok(rows::summaries(rows))
}

/// Store `state` as the flags of `environment` (inside the import's transaction).
async fn write_state(
    tx: &Transaction<'_>,
    environment: &str,
    state: &ClientFeatures,
) -> Result<()> {
    tx.execute(
        "DELETE FROM feature_environments WHERE environment = $1",
        &[&environment],
    )
    .await
    .map_err(pg("clear the environment"))?;
    for segment in state.segments.iter().flatten() {
        tx.execute(
            "INSERT INTO segments (id, constraints) VALUES ($1, $2::text::jsonb)
             ON CONFLICT (id) DO UPDATE SET constraints = excluded.constraints",
            &[&segment.id, &to_json(&segment.constraints)],
        )
        .await
        .map_err(pg("store a segment"))?;
    }
    let insert_strategy = tx
        .prepare(
            "INSERT INTO strategies (feature, environment, position, name, sort_order,
                parameters, constraints, variants, segments)
             VALUES ($1, $2, $3, $4, $5, $6::text::jsonb, $7::text::jsonb, $8::text::jsonb,
                $9::text::jsonb)",
        )
        .await
        .map_err(pg("store a strategy"))?;
    let insert_dependency = tx
        .prepare(
            "INSERT INTO feature_dependencies (child, parent, enabled, variants, position)
             VALUES ($1, $2, $3, $4::text::jsonb, $5)",
        )
        .await
        .map_err(pg("store a dependency"))?;
    for f in &state.features {
        let project = f
            .project
            .as_deref()
            .unwrap_or(crate::store::DEFAULT_PROJECT);
        tx.execute(
            "INSERT INTO projects (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
            &[&project],
        )
        .await
        .map_err(pg("create a project"))?;
        tx.execute(
            "INSERT INTO features (name, project, type, description, stale, impression_data)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (name) DO UPDATE SET project = excluded.project,
                type = excluded.type, description = excluded.description,
                stale = excluded.stale, impression_data = excluded.impression_data,
                archived = FALSE",
            &[
                &f.name,
                &project,
                &f.feature_type,
                &f.description,
                &f.stale.unwrap_or(false),
                &f.impression_data.unwrap_or(false),
            ],
        )
        .await
        .map_err(pg("store a feature"))?;
        tx.execute(
            "INSERT INTO feature_environments (feature, environment, enabled, variants)
             VALUES ($1, $2, $3, $4::text::jsonb)",
            &[
                &f.name,
                &environment,
                &f.enabled,
                &to_json(&f.variants.clone().unwrap_or_default()),
            ],
        )
        .await
        .map_err(pg("store a feature's environment state"))?;
        for (position, s) in f.strategies.iter().flatten().enumerate() {
            tx.execute(
                &insert_strategy,
                &[
                    &f.name,
                    &environment,
                    &(position as i64),
                    &s.name,
                    &s.sort_order,
                    &to_json(&s.parameters.clone().unwrap_or_default()),
                    &to_json(&s.constraints.clone().unwrap_or_default()),
                    &to_json(&s.variants.clone().unwrap_or_default()),
                    &to_json(&s.segments.clone().unwrap_or_default()),
                ],
            )
            .await
            .map_err(pg("store a strategy"))?;
        }
        tx.execute(
            "DELETE FROM feature_dependencies WHERE child = $1",
            &[&f.name],
        )
        .await
        .map_err(pg("clear a feature's dependencies"))?;
        for (position, d) in f.dependencies.iter().flatten().enumerate() {
            tx.execute(
                &insert_dependency,
                &[
                    &f.name,
                    &d.feature,
                    &d.enabled,
                    &d.variants.as_ref().map(to_json),
                    &(position as i64),
                ],
            )
            .await
            .map_err(pg("store a dependency"))?;
        }
    }
    Ok(())
}

/// Add `counts` to the stored counts of one flag in one hour (inside the report's
/// transaction). The row is created first and then locked, so two replicas adding
/// to the same hour at once both count.
async fn add_counts(
    tx: &Transaction<'_>,
    flag: &str,
    report: &Report,
    counts: &Counts,
) -> Result<()> {
    const READ: &str = "read metrics";
    let key: [&(dyn ToSql + Sync); 4] = [
        &flag,
        &report.environment,
        &report.app_name,
        &report.hour_ms,
    ];
    tx.execute(
        "INSERT INTO feature_metrics (feature, environment, app_name, hour, yes, no, variants)
         VALUES ($1, $2, $3, $4, 0, 0, '{}'::jsonb) ON CONFLICT DO NOTHING",
        &key,
    )
    .await
    .map_err(pg("store metrics"))?;
    let row = tx
        .query_one(
            "SELECT yes, no, variants::text FROM feature_metrics
             WHERE feature = $1 AND environment = $2 AND app_name = $3 AND hour = $4
             FOR UPDATE",
            &key,
        )
        .await
        .map_err(pg(READ))?;
    let mut total = rows::counts(
        col(&row, 0, READ)?,
        col(&row, 1, READ)?,
        &col::<String>(&row, 2, READ)?,
    )?;
    total.add(counts);
    tx.execute(
        "UPDATE feature_metrics SET yes = $5, no = $6, variants = $7::text::jsonb
         WHERE feature = $1 AND environment = $2 AND app_name = $3 AND hour = $4",
        &[
            key[0],
            key[1],
            key[2],
            key[3],
            &rows::clamp(total.yes),
            &rows::clamp(total.no),
            &to_json(&total.variants),
        ],
    )
    .await
    .map_err(pg("store metrics"))?;
    Ok(())
}

impl Store for PgStore {
    fn environments(&self) -> Result<Vec<String>> {
        const ACTION: &str = "list environments";
        self.with(async |c| {
            query(
                c,
                "SELECT name FROM environments ORDER BY name COLLATE \"C\"",
                &[],
                ACTION,
            )
            .await?
            .iter()
            .map(|r| col(r, 0, ACTION))
            .collect()
        })
    }

    fn import_state(&self, environment: &str, state: &ClientFeatures, actor: &Actor) -> Result<()> {
        self.with(async |c| {
            let tx = begin_write(c, "begin the import").await?;
            known_environment(&tx, environment).await?;
            let before = read_client_state(&tx, environment, "*").await?;
            write_state(&tx, environment, state).await?;
            let after = read_client_state(&tx, environment, "*").await?;
            append_event(
                &tx,
                actor,
                Change::state_imported(environment, &before, &after),
            )
            .await?;
            tx.commit().await.map_err(pg("commit the import"))
        })
    }

    fn client_state(&self, environment: &str, project: &str) -> Result<(ClientFeatures, u64)> {
        self.with(async |c| {
            let tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(pg("begin a read"))?;
            let state = read_client_state(&tx, environment, project).await?;
            let revision = read_revision(&tx).await?;
            tx.commit().await.map_err(pg("end a read"))?;
            Ok((state, revision))
        })
    }

    fn revision(&self) -> Result<u64> {
        self.with(async |c| read_revision(c).await)
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>> {
        const ACTION: &str = "list tokens";
        self.with(async |c| {
            let mut tokens = Vec::new();
            for r in query(
                c,
                "SELECT name, type, project, environment, hash FROM api_tokens",
                &[],
                ACTION,
            )
            .await?
            {
                let ty: String = col(&r, 1, ACTION)?;
                tokens.extend(rows::token(
                    col(&r, 0, ACTION)?,
                    &ty,
                    col(&r, 2, ACTION)?,
                    col(&r, 3, ACTION)?,
                    col(&r, 4, ACTION)?,
                ));
            }
            Ok(tokens)
        })
    }

    fn insert_token(&self, token: &TokenRecord, actor: &Actor) -> Result<()> {
        self.with(async |c| {
            let tx = begin_write(c, "begin storing a token").await?;
            tx.execute(
                "INSERT INTO api_tokens (hash, name, type, project, environment)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &token.hash.0.as_slice(),
                    &token.name,
                    &token.token_type.as_str(),
                    &token.project,
                    &token.environment,
                ],
            )
            .await
            .map_err(pg("store a token"))?;
            append_event(&tx, actor, Change::token_created(token)).await?;
            tx.commit().await.map_err(pg("commit a new token"))
        })
    }

    fn create_feature(&self, project: &str, feature: &NewFeature, actor: &Actor) -> Result<()> {
        self.with(async |c| {
            let tx = begin_write(c, "begin creating a flag").await?;
            if !exists(
                &tx,
                "SELECT 1 FROM projects WHERE name = $1",
                &[&project],
                "look up the project",
            )
            .await?
            {
                return Err(StoreError::UnknownProject(project.to_owned()));
            }
            let taken = || StoreError::FlagExists(feature.name.clone());
            if feature_project(&tx, &feature.name).await?.is_some() {
                return Err(taken());
            }
            tx.execute(
                "INSERT INTO features (name, project, type, description, impression_data)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &feature.name,
                    &project,
                    &feature.feature_type,
                    &feature.description,
                    &feature.impression_data,
                ],
            )
            .await
            .map_err(|e| match e.code() {
                Some(&SqlState::UNIQUE_VIOLATION) => taken(),
                _ => pg("store a flag")(e),
            })?;
            tx.execute(
                "INSERT INTO feature_environments (feature, environment, enabled, variants)
                 SELECT $1, name, FALSE, '[]'::jsonb FROM environments",
                &[&feature.name],
            )
            .await
            .map_err(pg("store a flag's environments"))?;
            let after = read_features(&tx, project, Some(&feature.name)).await?;
            append_event(
                &tx,
                actor,
                Change::feature_created(&feature.name, after.first()),
            )
            .await?;
            tx.commit().await.map_err(pg("commit a new flag"))
        })
    }

    fn set_enabled(
        &self,
        project: &str,
        flag: &str,
        environment: &str,
        enabled: bool,
        actor: &Actor,
    ) -> Result<bool> {
        self.with(async |c| {
            const READ: &str = "read a flag's state";
            let tx = begin_write(c, "begin switching a flag").await?;
            live_feature(&tx, project, flag).await?;
            known_environment(&tx, environment).await?;
            let before: Option<bool> = match tx
                .query_opt(
                    "SELECT enabled FROM feature_environments
                     WHERE feature = $1 AND environment = $2",
                    &[&flag, &environment],
                )
                .await
                .map_err(pg(READ))?
            {
                Some(r) => Some(col(&r, 0, READ)?),
                None => None,
            };
            if before == Some(enabled) {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO feature_environments (feature, environment, enabled, variants)
                 VALUES ($1, $2, $3, '[]'::jsonb)
                 ON CONFLICT (feature, environment) DO UPDATE SET enabled = excluded.enabled",
                &[&flag, &environment, &enabled],
            )
            .await
            .map_err(pg("switch a flag"))?;
            append_event(
                &tx,
                actor,
                Change::switched(flag, environment, before, enabled),
            )
            .await?;
            tx.commit().await.map_err(pg("commit switching a flag"))?;
            Ok(true)
        })
    }

    fn archive_feature(&self, project: &str, flag: &str, actor: &Actor) -> Result<()> {
        self.with(async |c| {
            let tx = begin_write(c, "begin archiving a flag").await?;
            live_feature(&tx, project, flag).await?;
            tx.execute(
                "UPDATE features SET archived = TRUE WHERE name = $1",
                &[&flag],
            )
            .await
            .map_err(pg("archive a flag"))?;
            append_event(&tx, actor, Change::archived(flag)).await?;
            tx.commit().await.map_err(pg("commit archiving a flag"))
        })
    }

    fn features(&self, project: &str) -> Result<Vec<FeatureSummary>> {
        self.with(async |c| read_features(c, project, None).await)
    }

    fn audit_events(&self) -> Result<Vec<Event>> {
        const ACTION: &str = "read the audit log";
        self.with(async |c| {
            query(
                c,
                "SELECT seq, ts, actor, action, flag, environment, before, after, prev_hash, hash
                 FROM audit_events ORDER BY seq",
                &[],
                ACTION,
            )
            .await?
            .iter()
            .map(|r| {
                Ok(Event {
                    seq: col(r, 0, ACTION)?,
                    ts: col(r, 1, ACTION)?,
                    actor: col(r, 2, ACTION)?,
                    action: col(r, 3, ACTION)?,
                    flag: col(r, 4, ACTION)?,
                    environment: col(r, 5, ACTION)?,
                    before: col(r, 6, ACTION)?,
                    after: col(r, 7, ACTION)?,
                    prev_hash: col(r, 8, ACTION)?,
                    hash: col(r, 9, ACTION)?,
                })
            })
            .collect()
        })
    }

    fn register_client(&self, r: &Registration) -> Result<()> {
        self.with(async |c| {
            c.execute(
                "INSERT INTO client_instances
                    (app_name, instance_id, environment, sdk_version, strategies, interval_ms,
                     last_seen)
                 VALUES ($1, $2, $3, $4, $5::text::jsonb, $6, $7)
                 ON CONFLICT (app_name, instance_id, environment) DO UPDATE SET
                    sdk_version = excluded.sdk_version, strategies = excluded.strategies,
                    interval_ms = excluded.interval_ms, last_seen = excluded.last_seen",
                &[
                    &r.app_name,
                    &r.instance_id,
                    &r.environment,
                    &r.sdk_version,
                    &to_json(&r.strategies),
                    &r.interval.map(rows::clamp),
                    &r.seen_ms,
                ],
            )
            .await
            .map(drop)
            .map_err(pg("record a client registration"))
        })
    }

    fn record_metrics(&self, report: &Report) -> Result<usize> {
        self.with(async |c| {
            let tx = c
                .transaction()
                .await
                .map_err(pg("begin recording metrics"))?;
            let mut counted = 0;
            // In flag-name order (a BTreeMap), so two reports lock rows in one order.
            for (flag, counts) in &report.toggles {
                if !exists(
                    &tx,
                    "SELECT 1 FROM features WHERE name = $1",
                    &[flag],
                    "look up a counted flag",
                )
                .await?
                {
                    continue;
                }
                add_counts(&tx, flag, report, counts).await?;
                counted += 1;
            }
            // A report also says the instance is alive.
            tx.execute(
                "INSERT INTO client_instances
                    (app_name, instance_id, environment, strategies, last_seen)
                 VALUES ($1, $2, $3, '[]'::jsonb, $4)
                 ON CONFLICT (app_name, instance_id, environment) DO UPDATE SET
                    last_seen = excluded.last_seen",
                &[
                    &report.app_name,
                    &report.instance_id,
                    &report.environment,
                    &now_millis(),
                ],
            )
            .await
            .map_err(pg("record a reporting instance"))?;
            tx.commit().await.map_err(pg("commit metrics"))?;
            Ok(counted)
        })
    }

    fn feature_metrics(&self, flag: &str, since_ms: i64) -> Result<Vec<MetricsRow>> {
        const ACTION: &str = "read metrics";
        self.with(async |c| {
            let rows = query(
                c,
                "SELECT app_name, environment, hour, yes, no, variants::text FROM feature_metrics
                 WHERE feature = $1 AND hour >= $2
                 ORDER BY hour, environment COLLATE \"C\", app_name COLLATE \"C\"",
                &[&flag, &since_ms],
                ACTION,
            )
            .await?
            .iter()
            .map(|r| {
                Ok(rows::CountsRow {
                    app_name: col(r, 0, ACTION)?,
                    environment: col(r, 1, ACTION)?,
                    hour: col(r, 2, ACTION)?,
                    yes: col(r, 3, ACTION)?,
                    no: col(r, 4, ACTION)?,
                    variants: col(r, 5, ACTION)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
            rows::metrics(flag, rows)
        })
    }

    fn applications(&self) -> Result<Vec<Application>> {
        const ACTION: &str = "list applications";
        self.with(async |c| {
            let rows = query(
                c,
                "SELECT app_name, instance_id, environment, sdk_version, strategies::text,
                        last_seen
                 FROM client_instances
                 ORDER BY app_name COLLATE \"C\", instance_id COLLATE \"C\",
                    environment COLLATE \"C\"",
                &[],
                ACTION,
            )
            .await?
            .iter()
            .map(|r| {
                Ok(rows::InstanceRow {
                    app_name: col(r, 0, ACTION)?,
                    instance_id: col(r, 1, ACTION)?,
                    environment: col(r, 2, ACTION)?,
                    sdk_version: col(r, 3, ACTION)?,
                    strategies: col(r, 4, ACTION)?,
                    last_seen: col(r, 5, ACTION)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
            rows::applications(rows)
        })
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
