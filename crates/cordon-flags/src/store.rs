//! Persistent flag state and API tokens.
//!
//! [`Store`] is the seam between the HTTP server and the database: every operation the
//! server needs, expressed in the Unleash client-API data model (`unleash-types`).
//! [`SqliteStore`] is the embedded implementation (WAL, schema migrations on open);
//! [`PgStore`](crate::PgStore) the one several replicas share.
//!
//! The schema (`schema.rs`) is relational and portable: projects, environments,
//! features, per-environment enabled state and variants, strategies in order,
//! segments, dependencies. Constraint lists, parameters and variant lists are JSON
//! text columns (`jsonb` in PostgreSQL). Tokens are stored as SHA-256 hashes only.
//!
//! What it does not do: authorisation, evaluation, caching. Those belong to the server.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use unleash_types::client_features::ClientFeatures;

use serde::{Deserialize, Serialize};

use crate::audit::{Actor, Change, Event};
use crate::metrics::{Application, Counts, MetricsRow, Registration, Report};
use crate::rows::{self, now_millis, to_json};
pub use crate::schema::SCHEMA_VERSION;
use crate::schema::{self, Dialect};
use crate::token::{TokenHash, TokenType};

/// Environments every new store has.
pub const DEFAULT_ENVIRONMENTS: &[&str] = &["development", "production"];
/// The project features land in when the imported state does not name one.
pub const DEFAULT_PROJECT: &str = "default";

/// Errors from a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the flag database {path}: {source}")]
    Open {
        path: std::path::PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "the PostgreSQL URL is not valid ({}); write it as postgres://USER:PASSWORD@HOST:PORT/DATABASE",
        crate::pg::explain(.0)
    )]
    PgUrl(tokio_postgres::Error),
    #[error(
        "cannot connect to the PostgreSQL flag database {database}: {}; is the server up, and are the user and password right?",
        crate::pg::explain(.source)
    )]
    PgConnect {
        database: String,
        source: tokio_postgres::Error,
    },
    #[error(
        "all {size} connections to the PostgreSQL flag database stayed busy for {waited_s} s; the database is slow or a query hangs"
    )]
    PgPoolBusy { size: usize, waited_s: u64 },
    #[error("the PostgreSQL driver's runtime failed: {0}")]
    PgRuntime(std::io::Error),
    #[error(
        "PostgreSQL flag database error while trying to {action}: {}",
        crate::pg::explain(.source)
    )]
    Pg {
        action: &'static str,
        source: tokio_postgres::Error,
    },
    #[error(
        "the flag database {database} has schema version {found}, newer than this build knows ({known}); use a newer cordon"
    )]
    SchemaTooNew {
        /// The SQLite file, or the PostgreSQL database as `user@host:port/name`.
        database: String,
        found: i64,
        known: i64,
    },
    #[error("unknown environment {0:?}; create it first")]
    UnknownEnvironment(String),
    #[error("unknown project {0:?}")]
    UnknownProject(String),
    #[error("there is no flag {flag:?} in project {project:?}")]
    UnknownFlag { project: String, flag: String },
    #[error("a flag named {0:?} already exists (flag names are global, archived flags included)")]
    FlagExists(String),
    #[error("flag database error while trying to {action}: {source}")]
    Db {
        action: &'static str,
        source: rusqlite::Error,
    },
    #[error("stored {what} is not valid JSON ({source}); the database was edited by hand?")]
    CorruptJson {
        what: &'static str,
        source: serde_json::Error,
    },
}

type Result<T> = std::result::Result<T, StoreError>;

/// One API token as stored: only the hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub name: String,
    pub token_type: TokenType,
    /// `*` for every project.
    pub project: String,
    /// `*` for every environment (admin tokens only).
    pub environment: String,
    pub hash: TokenHash,
}

/// The operations the flag server needs from a database.
pub trait Store: Send + Sync + 'static {
    /// Names of the environments, sorted.
    fn environments(&self) -> Result<Vec<String>>;
    /// Replace the flag state of one environment with `state`: features, their
    /// strategies and variants in `environment`, segments (by id) and dependencies.
    /// Features absent from `state` are removed from the environment (not deleted from
    /// other environments). Atomic: on error nothing changes.
    fn import_state(&self, environment: &str, state: &ClientFeatures, actor: &Actor) -> Result<()>;
    /// The state of one environment as the client API serves it (segments as a
    /// top-level list, not inlined), restricted to `project` unless it is `*`, and the
    /// revision it was read at (both from one consistent read).
    fn client_state(&self, environment: &str, project: &str) -> Result<(ClientFeatures, u64)>;
    /// The revision of the flag state: the sequence number of the newest audit event
    /// (every change appends one), 0 for an empty store. Shared by every replica of
    /// one database, so streaming clients can resume on any of them.
    fn revision(&self) -> Result<u64>;
    /// Every stored token.
    fn tokens(&self) -> Result<Vec<TokenRecord>>;
    /// Store a new token.
    fn insert_token(&self, token: &TokenRecord, actor: &Actor) -> Result<()>;
    /// Create a flag in `project`, disabled in every environment, without strategies.
    fn create_feature(&self, project: &str, feature: &NewFeature, actor: &Actor) -> Result<()>;
    /// Turn a flag on or off in one environment (creating its environment entry, with
    /// no strategies, if it has none). Returns whether anything changed; an unchanged
    /// state writes no event.
    fn set_enabled(
        &self,
        project: &str,
        flag: &str,
        environment: &str,
        enabled: bool,
        actor: &Actor,
    ) -> Result<bool>;
    /// Archive a flag: it disappears from every API but its name stays taken.
    fn archive_feature(&self, project: &str, flag: &str, actor: &Actor) -> Result<()>;
    /// Flags of `project` that are not archived, sorted by name.
    fn features(&self, project: &str) -> Result<Vec<FeatureSummary>>;
    /// Every audit event, ordered by `seq`.
    fn audit_events(&self) -> Result<Vec<Event>>;
    /// Record (or refresh) an SDK instance's registration.
    fn register_client(&self, registration: &Registration) -> Result<()>;
    /// Add a report's counts to the per-hour totals. Counts for flags that do not exist
    /// are dropped (so a client cannot fill the database with invented names); returns
    /// how many flags were counted.
    fn record_metrics(&self, report: &Report) -> Result<usize>;
    /// Hourly counts of one flag since `since_ms`, oldest first.
    fn feature_metrics(&self, flag: &str, since_ms: i64) -> Result<Vec<MetricsRow>>;
    /// Applications and their instances, by name.
    fn applications(&self) -> Result<Vec<Application>>;
    /// For a store that other processes write to as well: a task that calls
    /// `on_change` whenever the state may have changed without this process knowing,
    /// that is after every change another writer announces and after every reconnect
    /// (changes may have been missed meanwhile). The server runs it for as long as it
    /// serves. `None`, the default, for a store only this process writes.
    fn watch_changes(&self, on_change: OnChange) -> Option<ChangeWatch> {
        let _ = on_change;
        None
    }
}

/// What [`Store::watch_changes`] calls when the state may have changed elsewhere.
pub type OnChange = std::sync::Arc<dyn Fn() + Send + Sync>;
/// The task [`Store::watch_changes`] returns; it runs until dropped.
pub type ChangeWatch = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A flag to create through the admin API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewFeature {
    pub name: String,
    #[serde(rename = "type")]
    pub feature_type: Option<String>,
    pub description: Option<String>,
    pub impression_data: bool,
}

/// A flag as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeatureSummary {
    pub name: String,
    pub project: String,
    #[serde(rename = "type")]
    pub feature_type: Option<String>,
    pub description: Option<String>,
    pub stale: bool,
    pub impression_data: bool,
    pub archived: bool,
    pub environments: Vec<FeatureEnvironment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeatureEnvironment {
    pub name: String,
    pub enabled: bool,
    pub strategy_count: usize,
}

/// The embedded store: one SQLite file in WAL mode.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn db(action: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Db { action, source }
}

impl SqliteStore {
    /// Open (creating if needed) the database at `path` and bring its schema up to date.
    pub fn open(path: &Path) -> Result<Self> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        migrate(&mut conn, path)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite itself consistent (the
        // transaction rolls back on drop), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let tx = conn.transaction().map_err(db("begin the migration"))?;
    tx.execute_batch(&Dialect::Sqlite.migrations_table())
        .map_err(db("create the migrations table"))?;
    let current: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(db("read the schema version"))?;
    for (version, sql) in schema::pending(Dialect::Sqlite, current, &path.display().to_string())? {
        tx.execute_batch(&sql)
            .map_err(db("apply a schema migration"))?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES (?1)",
            [version],
        )
        .map_err(db("record a schema migration"))?;
    }
    tx.commit().map_err(db("commit the migration"))
}

impl Store for SqliteStore {
    fn environments(&self) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT name FROM environments ORDER BY name")
            .map_err(db("list environments"))?;
        stmt.query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(db("list environments"))
    }

    fn import_state(&self, environment: &str, state: &ClientFeatures, actor: &Actor) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db("begin the import"))?;
        known_environment(&tx, environment)?;
        let before = read_client_state(&tx, environment, "*")?;
        tx.execute(
            "DELETE FROM feature_environments WHERE environment = ?1",
            [environment],
        )
        .map_err(db("clear the environment"))?;
        for segment in state.segments.iter().flatten() {
            tx.execute(
                "INSERT INTO segments (id, constraints) VALUES (?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET constraints = excluded.constraints",
                params![segment.id, to_json(&segment.constraints)],
            )
            .map_err(db("store a segment"))?;
        }
        for f in &state.features {
            let project = f.project.as_deref().unwrap_or(DEFAULT_PROJECT);
            tx.execute(
                "INSERT INTO projects (name) VALUES (?1) ON CONFLICT (name) DO NOTHING",
                [project],
            )
            .map_err(db("create a project"))?;
            tx.execute(
                "INSERT INTO features (name, project, type, description, stale, impression_data)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (name) DO UPDATE SET project = excluded.project,
                    type = excluded.type, description = excluded.description,
                    stale = excluded.stale, impression_data = excluded.impression_data,
                    archived = FALSE",
                params![
                    f.name,
                    project,
                    f.feature_type,
                    f.description,
                    f.stale.unwrap_or(false),
                    f.impression_data.unwrap_or(false)
                ],
            )
            .map_err(db("store a feature"))?;
            tx.execute(
                "INSERT INTO feature_environments (feature, environment, enabled, variants)
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    f.name,
                    environment,
                    f.enabled,
                    to_json(&f.variants.clone().unwrap_or_default())
                ],
            )
            .map_err(db("store a feature's environment state"))?;
            for (position, s) in f.strategies.iter().flatten().enumerate() {
                tx.execute(
                    "INSERT INTO strategies (feature, environment, position, name, sort_order,
                        parameters, constraints, variants, segments)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        f.name,
                        environment,
                        position as i64,
                        s.name,
                        s.sort_order,
                        to_json(&s.parameters.clone().unwrap_or_default()),
                        to_json(&s.constraints.clone().unwrap_or_default()),
                        to_json(&s.variants.clone().unwrap_or_default()),
                        to_json(&s.segments.clone().unwrap_or_default()),
                    ],
                )
                .map_err(db("store a strategy"))?;
            }
            tx.execute(
                "DELETE FROM feature_dependencies WHERE child = ?1",
                [&f.name],
            )
            .map_err(db("clear a feature's dependencies"))?;
            for (position, d) in f.dependencies.iter().flatten().enumerate() {
                tx.execute(
                    "INSERT INTO feature_dependencies (child, parent, enabled, variants, position)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        f.name,
                        d.feature,
                        d.enabled,
                        d.variants.as_ref().map(to_json),
                        position as i64
                    ],
                )
                .map_err(db("store a dependency"))?;
            }
        }
        let after = read_client_state(&tx, environment, "*")?;
        append_event(
            &tx,
            actor,
            Change::state_imported(environment, &before, &after),
        )?;
        tx.commit().map_err(db("commit the import"))
    }

    fn client_state(&self, environment: &str, project: &str) -> Result<(ClientFeatures, u64)> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db("begin a read"))?;
        let state = read_client_state(&tx, environment, project)?;
        let revision = read_revision(&tx)?;
        Ok((state, revision))
    }

    fn revision(&self) -> Result<u64> {
        read_revision(&self.conn())
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT name, type, project, environment, hash FROM api_tokens")
            .map_err(db("list tokens"))?;
        let rows: Vec<(String, String, String, String, Vec<u8>)> = stmt
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .and_then(|rows| rows.collect())
            .map_err(db("list tokens"))?;
        Ok(rows
            .into_iter()
            .filter_map(|(name, ty, project, environment, hash)| {
                rows::token(name, &ty, project, environment, hash)
            })
            .collect())
    }

    fn insert_token(&self, token: &TokenRecord, actor: &Actor) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db("begin storing a token"))?;
        tx.execute(
            "INSERT INTO api_tokens (hash, name, type, project, environment)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                token.hash.0.as_slice(),
                token.name,
                token.token_type.as_str(),
                token.project,
                token.environment
            ],
        )
        .map_err(db("store a token"))?;
        append_event(&tx, actor, Change::token_created(token))?;
        tx.commit().map_err(db("commit a new token"))
    }

    fn create_feature(&self, project: &str, feature: &NewFeature, actor: &Actor) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db("begin creating a flag"))?;
        let known: Option<String> = tx
            .query_row(
                "SELECT name FROM projects WHERE name = ?1",
                [project],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("look up the project"))?;
        if known.is_none() {
            return Err(StoreError::UnknownProject(project.to_owned()));
        }
        if feature_project(&tx, &feature.name)?.is_some() {
            return Err(StoreError::FlagExists(feature.name.clone()));
        }
        tx.execute(
            "INSERT INTO features (name, project, type, description, impression_data)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                feature.name,
                project,
                feature.feature_type,
                feature.description,
                feature.impression_data
            ],
        )
        .map_err(db("store a flag"))?;
        tx.execute(
            "INSERT INTO feature_environments (feature, environment, enabled, variants)
             SELECT ?1, name, FALSE, '[]' FROM environments",
            [&feature.name],
        )
        .map_err(db("store a flag's environments"))?;
        let after = read_features(&tx, project, Some(&feature.name))?;
        append_event(
            &tx,
            actor,
            Change::feature_created(&feature.name, after.first()),
        )?;
        tx.commit().map_err(db("commit a new flag"))
    }

    fn set_enabled(
        &self,
        project: &str,
        flag: &str,
        environment: &str,
        enabled: bool,
        actor: &Actor,
    ) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db("begin switching a flag"))?;
        live_feature(&tx, project, flag)?;
        known_environment(&tx, environment)?;
        let before: Option<bool> = tx
            .query_row(
                "SELECT enabled FROM feature_environments WHERE feature = ?1 AND environment = ?2",
                [flag, environment],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("read a flag's state"))?;
        if before == Some(enabled) {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO feature_environments (feature, environment, enabled, variants)
             VALUES (?1, ?2, ?3, '[]')
             ON CONFLICT (feature, environment) DO UPDATE SET enabled = excluded.enabled",
            params![flag, environment, enabled],
        )
        .map_err(db("switch a flag"))?;
        append_event(
            &tx,
            actor,
            Change::switched(flag, environment, before, enabled),
        )?;
        tx.commit().map_err(db("commit switching a flag"))?;
        Ok(true)
    }

    fn archive_feature(&self, project: &str, flag: &str, actor: &Actor) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db("begin archiving a flag"))?;
        live_feature(&tx, project, flag)?;
        tx.execute(
            "UPDATE features SET archived = TRUE WHERE name = ?1",
            [flag],
        )
        .map_err(db("archive a flag"))?;
        append_event(&tx, actor, Change::archived(flag))?;
        tx.commit().map_err(db("commit archiving a flag"))
    }

    fn features(&self, project: &str) -> Result<Vec<FeatureSummary>> {
        read_features(&self.conn(), project, None)
    }

    fn audit_events(&self) -> Result<Vec<Event>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, ts, actor, action, flag, environment, before, after, prev_hash, hash
                 FROM audit_events ORDER BY seq",
            )
            .map_err(db("read the audit log"))?;
        stmt.query_map([], |r| {
            Ok(Event {
                seq: r.get(0)?,
                ts: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                flag: r.get(4)?,
                environment: r.get(5)?,
                before: r.get(6)?,
                after: r.get(7)?,
                prev_hash: r.get(8)?,
                hash: r.get(9)?,
            })
        })
        .and_then(|rows| rows.collect())
        .map_err(db("read the audit log"))
    }

    fn register_client(&self, r: &Registration) -> Result<()> {
        self.conn()
            .prepare_cached(
                "INSERT INTO client_instances
                    (app_name, instance_id, environment, sdk_version, strategies, interval_ms, last_seen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (app_name, instance_id, environment) DO UPDATE SET
                    sdk_version = excluded.sdk_version, strategies = excluded.strategies,
                    interval_ms = excluded.interval_ms, last_seen = excluded.last_seen",
            )
            .and_then(|mut st| {
                st.execute(params![
                    r.app_name,
                    r.instance_id,
                    r.environment,
                    r.sdk_version,
                    to_json(&r.strategies),
                    r.interval.map(|i| i.min(i64::MAX as u64) as i64),
                    r.seen_ms
                ])
            })
            .map(drop)
            .map_err(db("record a client registration"))
    }

    fn record_metrics(&self, report: &Report) -> Result<usize> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db("begin recording metrics"))?;
        let mut counted = 0;
        for (flag, counts) in &report.toggles {
            let exists: bool = tx
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM features WHERE name = ?1)")
                .and_then(|mut st| st.query_row([flag], |r| r.get(0)))
                .map_err(db("look up a counted flag"))?;
            if !exists {
                continue;
            }
            let key = params![flag, report.environment, report.app_name, report.hour_ms];
            let old: Option<(i64, i64, String)> = tx
                .prepare_cached(
                    "SELECT yes, no, variants FROM feature_metrics
                     WHERE feature = ?1 AND environment = ?2 AND app_name = ?3 AND hour = ?4",
                )
                .and_then(|mut st| {
                    st.query_row(key, |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .optional()
                })
                .map_err(db("read metrics"))?;
            let mut total = match old {
                Some((yes, no, variants)) => rows::counts(yes, no, &variants)?,
                None => Counts::default(),
            };
            total.add(counts);
            tx.prepare_cached(
                "INSERT OR REPLACE INTO feature_metrics
                    (feature, environment, app_name, hour, yes, no, variants)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    flag,
                    report.environment,
                    report.app_name,
                    report.hour_ms,
                    rows::clamp(total.yes),
                    rows::clamp(total.no),
                    to_json(&total.variants)
                ])
            })
            .map_err(db("store metrics"))?;
            counted += 1;
        }
        // A report also says the instance is alive.
        tx.prepare_cached(
            "INSERT INTO client_instances
                (app_name, instance_id, environment, strategies, last_seen)
             VALUES (?1, ?2, ?3, '[]', ?4)
             ON CONFLICT (app_name, instance_id, environment) DO UPDATE SET
                last_seen = excluded.last_seen",
        )
        .and_then(|mut st| {
            st.execute(params![
                report.app_name,
                report.instance_id,
                report.environment,
                now_millis()
            ])
        })
        .map_err(db("record a reporting instance"))?;
        tx.commit().map_err(db("commit metrics"))?;
        Ok(counted)
    }

    fn feature_metrics(&self, flag: &str, since_ms: i64) -> Result<Vec<MetricsRow>> {
        let conn = self.conn();
        let mut st = conn
            .prepare_cached(
                "SELECT app_name, environment, hour, yes, no, variants FROM feature_metrics
                 WHERE feature = ?1 AND hour >= ?2 ORDER BY hour, environment, app_name",
            )
            .map_err(db("read metrics"))?;
        let rows = st
            .query_map(params![flag, since_ms], |r| {
                Ok(rows::CountsRow {
                    app_name: r.get(0)?,
                    environment: r.get(1)?,
                    hour: r.get(2)?,
                    yes: r.get(3)?,
                    no: r.get(4)?,
                    variants: r.get(5)?,
                })
            })
            .and_then(|rows| rows.collect())
            .map_err(db("read metrics"))?;
        rows::metrics(flag, rows)
    }

    fn applications(&self) -> Result<Vec<Application>> {
        let conn = self.conn();
        let mut st = conn
            .prepare_cached(
                "SELECT app_name, instance_id, environment, sdk_version, strategies, last_seen
                 FROM client_instances ORDER BY app_name, instance_id, environment",
            )
            .map_err(db("list applications"))?;
        let rows = st
            .query_map([], |r| {
                Ok(rows::InstanceRow {
                    app_name: r.get(0)?,
                    instance_id: r.get(1)?,
                    environment: r.get(2)?,
                    sdk_version: r.get(3)?,
                    strategies: r.get(4)?,
                    last_seen: r.get(5)?,
                })
            })
            .and_then(|rows| rows.collect())
            .map_err(db("list applications"))?;
        rows::applications(rows)
    }
}

fn read_revision(conn: &Connection) -> Result<u64> {
    conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM audit_events", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| n.max(0) as u64)
    .map_err(db("read the revision"))
}

fn read_client_state(
    conn: &Connection,
    environment: &str,
    project: &str,
) -> Result<ClientFeatures> {
    let features = conn
        .prepare_cached(
            "SELECT f.name, f.project, f.type, f.description, f.stale,
                    f.impression_data, fe.enabled, fe.variants
             FROM features f JOIN feature_environments fe ON fe.feature = f.name
             WHERE fe.environment = ?1 AND NOT f.archived
               AND (?2 = '*' OR f.project = ?2)",
        )
        .and_then(|mut st| {
            st.query_map(params![environment, project], |r| {
                Ok(rows::FeatureRow {
                    name: r.get(0)?,
                    project: r.get(1)?,
                    feature_type: r.get(2)?,
                    description: r.get(3)?,
                    stale: r.get(4)?,
                    impression_data: r.get(5)?,
                    enabled: r.get(6)?,
                    variants: r.get(7)?,
                })
            })?
            .collect()
        })
        .map_err(db("read features"))?;
    let strategies = conn
        .prepare_cached(
            "SELECT feature, name, sort_order, parameters, constraints, variants, segments
             FROM strategies WHERE environment = ?1 ORDER BY feature, position",
        )
        .and_then(|mut st| {
            st.query_map([environment], |r| {
                Ok(rows::StrategyRow {
                    feature: r.get(0)?,
                    name: r.get(1)?,
                    sort_order: r.get(2)?,
                    parameters: r.get(3)?,
                    constraints: r.get(4)?,
                    variants: r.get(5)?,
                    segments: r.get(6)?,
                })
            })?
            .collect()
        })
        .map_err(db("read strategies"))?;
    let dependencies = conn
        .prepare_cached(
            "SELECT child, parent, enabled, variants FROM feature_dependencies
             ORDER BY child, position",
        )
        .and_then(|mut st| {
            st.query_map([], |r| {
                Ok(rows::DependencyRow {
                    child: r.get(0)?,
                    parent: r.get(1)?,
                    enabled: r.get(2)?,
                    variants: r.get(3)?,
                })
            })?
            .collect()
        })
        .map_err(db("read dependencies"))?;
    let segments = conn
        .prepare_cached("SELECT id, constraints FROM segments ORDER BY id")
        .and_then(|mut st| {
            st.query_map([], |r| {
                Ok(rows::SegmentRow {
                    id: r.get(0)?,
                    constraints: r.get(1)?,
                })
            })?
            .collect()
        })
        .map_err(db("read segments"))?;
    rows::client_state(features, strategies, dependencies, segments)
}

/// Non-archived flags of `project` (or just `only`), with their environments.
fn read_features(
    conn: &Connection,
    project: &str,
    only: Option<&str>,
) -> Result<Vec<FeatureSummary>> {
    let rows = conn
        .prepare_cached(
            "SELECT f.name, f.project, f.type, f.description, f.stale, f.impression_data,
                    f.archived, fe.environment, fe.enabled,
                    (SELECT COUNT(*) FROM strategies s
                     WHERE s.feature = f.name AND s.environment = fe.environment)
             FROM features f LEFT JOIN feature_environments fe ON fe.feature = f.name
             WHERE f.project = ?1 AND NOT f.archived AND (?2 IS NULL OR f.name = ?2)
             ORDER BY f.name, fe.environment",
        )
        .and_then(|mut st| {
            st.query_map(params![project, only], |r| {
                Ok(rows::SummaryRow {
                    name: r.get(0)?,
                    project: r.get(1)?,
                    feature_type: r.get(2)?,
                    description: r.get(3)?,
                    stale: r.get(4)?,
                    impression_data: r.get(5)?,
                    archived: r.get(6)?,
                    environment: r.get(7)?,
                    enabled: r.get(8)?,
                    strategy_count: r.get(9)?,
                })
            })?
            .collect()
        })
        .map_err(db("list flags"))?;
    Ok(rows::summaries(rows))
}

/// Append one event to the audit chain inside the change's own transaction (SQLite
/// allows one writer at a time, so the newest event cannot move meanwhile).
fn append_event(tx: &Transaction<'_>, actor: &Actor, change: Change<'_>) -> Result<()> {
    let last: Option<(i64, String)> = tx
        .query_row(
            "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db("read the newest audit event"))?;
    let event = Event::following(last, actor, change);
    tx.execute(
        "INSERT INTO audit_events
            (seq, ts, actor, action, flag, environment, before, after, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            event.seq,
            event.ts,
            event.actor,
            event.action,
            event.flag,
            event.environment,
            event.before,
            event.after,
            event.prev_hash,
            event.hash
        ],
    )
    .map_err(db("append an audit event"))?;
    Ok(())
}

fn feature_project(tx: &Connection, flag: &str) -> Result<Option<(String, bool)>> {
    tx.query_row(
        "SELECT project, archived FROM features WHERE name = ?1",
        [flag],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .map_err(db("look up a flag"))
}

/// The flag must exist in `project` and not be archived.
fn live_feature(tx: &Connection, project: &str, flag: &str) -> Result<()> {
    match feature_project(tx, flag)? {
        Some((p, false)) if p == project => Ok(()),
        _ => Err(StoreError::UnknownFlag {
            project: project.to_owned(),
            flag: flag.to_owned(),
        }),
    }
}

fn known_environment(tx: &Connection, environment: &str) -> Result<()> {
    let known: Option<String> = tx
        .query_row(
            "SELECT name FROM environments WHERE name = ?1",
            [environment],
            |r| r.get(0),
        )
        .optional()
        .map_err(db("look up the environment"))?;
    match known {
        Some(_) => Ok(()),
        None => Err(StoreError::UnknownEnvironment(environment.to_owned())),
    }
}
