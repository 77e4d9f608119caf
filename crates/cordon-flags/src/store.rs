//! Persistent flag state and API tokens.
//!
//! [`Store`] is the seam between the HTTP server and the database: every operation the
//! server needs, expressed in the Unleash client-API data model (`unleash-types`), so a
//! PostgreSQL store can implement the same trait. [`SqliteStore`] is the embedded
//! implementation (WAL, schema migrations on open).
//!
//! The schema is relational and portable (no SQLite-only types): projects,
//! environments, features, per-environment enabled state and variants, strategies in
//! order, segments, dependencies. Constraint lists, parameters and variant lists are
//! JSON text columns (`jsonb` in PostgreSQL). Tokens are stored as SHA-256 hashes only.
//!
//! What it does not do: authorisation, evaluation, caching. Those belong to the server.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use unleash_types::client_features::{
    ClientFeature, ClientFeatures, FeatureDependency, Segment, Strategy, Variant,
};

use serde::{Deserialize, Serialize};

use crate::audit::{Actor, Change, Event, GENESIS};
use crate::metrics::{Application, Counts, Instance, MetricsRow, Registration, Report};
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
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "the flag database {path} has schema version {found}, newer than this build knows ({known}); use a newer cordon"
    )]
    SchemaTooNew {
        path: PathBuf,
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
    #[error("a project named {0:?} already exists")]
    ProjectExists(String),
    #[error("there is no strategy {id:?} on flag {flag:?} in environment {environment:?}")]
    UnknownStrategy {
        flag: String,
        environment: String,
        id: String,
    },
    #[error("there is no segment with id {0}")]
    UnknownSegment(i32),
    #[error("segment {id} is used by {flags:?}; remove it from their strategies first")]
    SegmentInUse { id: i32, flags: Vec<String> },
    #[error("{0}")]
    Full(String),
    #[error("an environment named {0:?} already exists")]
    EnvironmentExists(String),
    #[error("there is no archived flag {0:?}")]
    NotArchived(String),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot draw random bytes for an id: {0}")]
    Random(getrandom::Error),
    #[error("cannot write the audit anchor {path}: {source}")]
    Anchor {
        path: PathBuf,
        source: std::io::Error,
    },
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
    /// top-level list, not inlined), restricted to `project` unless it is `*` (a
    /// comma-separated list for tokens of several projects), and the
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
    /// A flag's configuration in one environment (disabled and empty if it has none).
    fn feature_environment(
        &self,
        project: &str,
        flag: &str,
        environment: &str,
    ) -> Result<EnvConfig>;
    /// Change a flag's configuration in one environment in one transaction: `edit`
    /// gets the current configuration and changes it (or fails, and nothing is
    /// written). Strategies without an id get one; referenced segments must exist.
    /// An edit that changes nothing writes no event. Returns the new configuration.
    fn edit_feature_environment(
        &self,
        target: &FeatureEnvTarget<'_>,
        edit: &mut dyn FnMut(&mut EnvConfig) -> Result<()>,
        actor: &Actor,
    ) -> Result<EnvConfig>;
    /// Change a flag's description, type, stale or impression-data marks.
    fn update_feature(
        &self,
        project: &str,
        flag: &str,
        update: &FeatureUpdate,
        actor: &Actor,
    ) -> Result<()>;
    /// Delete the token with this hash. Returns whether one existed.
    fn delete_token(&self, hash: &TokenHash, actor: &Actor) -> Result<bool>;
    /// Project names, sorted.
    fn projects(&self) -> Result<Vec<String>>;
    /// Create a project.
    fn create_project(&self, name: &str, actor: &Actor) -> Result<()>;
    /// The newest audit event as recorded outside the database, for stores that keep
    /// such an anchor (`None` when the store has none).
    fn audit_anchor(&self) -> Result<Option<crate::audit::Anchor>>;
    /// Add an environment; every flag gets it, disabled.
    fn create_environment(&self, name: &str, actor: &Actor) -> Result<()>;
    /// Every segment, by id.
    fn segments(&self) -> Result<Vec<AdminSegment>>;
    /// Create (`segment.id` 0: a new id is assigned) or replace a segment; returns its id.
    fn save_segment(&self, segment: &AdminSegment, actor: &Actor) -> Result<i32>;
    /// Delete a segment no strategy uses.
    fn delete_segment(&self, id: i32, actor: &Actor) -> Result<()>;
    /// Archived flags of every project, by name.
    fn archived_features(&self) -> Result<Vec<FeatureSummary>>;
    /// Bring an archived flag back, disabled in every environment.
    fn revive_feature(&self, flag: &str, actor: &Actor) -> Result<()>;
    /// Delete an archived flag for good (its audit events stay).
    fn delete_archived_feature(&self, flag: &str, actor: &Actor) -> Result<()>;
    /// A flag's tags as (type, value), sorted.
    fn tags(&self, flag: &str) -> Result<Vec<(String, String)>>;
    /// Tag a flag; returns false when it already had the tag.
    fn add_tag(&self, flag: &str, tag_type: &str, value: &str, actor: &Actor) -> Result<bool>;
    /// Remove a tag; returns false when the flag did not have it.
    fn remove_tag(&self, flag: &str, tag_type: &str, value: &str, actor: &Actor) -> Result<bool>;
    /// Make `child` depend on `parent` (same project, one level deep), replacing an
    /// existing dependency on the same parent.
    fn set_dependency(
        &self,
        project: &str,
        child: &str,
        dependency: &FeatureDependency,
        actor: &Actor,
    ) -> Result<()>;
    /// Remove `child`'s dependency on `parent`, or all of them.
    fn remove_dependency(
        &self,
        project: &str,
        child: &str,
        parent: Option<&str>,
        actor: &Actor,
    ) -> Result<()>;
}

/// A segment as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminSegment {
    #[serde(default)]
    pub id: i32,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub constraints: Vec<unleash_types::client_features::Constraint>,
}

/// Which flag, where, and what the change is called in the audit log.
#[derive(Debug, Clone, Copy)]
pub struct FeatureEnvTarget<'a> {
    pub project: &'a str,
    pub flag: &'a str,
    pub environment: &'a str,
    /// The audit event's action, e.g. `feature-strategy-add`.
    pub action: &'a str,
}

/// A flag's configuration in one environment, as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvConfig {
    pub enabled: bool,
    pub variants: Vec<Variant>,
    pub strategies: Vec<AdminStrategy>,
}

/// A strategy with the id the admin API addresses it by.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminStrategy {
    /// Empty for a strategy not stored yet; the store assigns one.
    #[serde(default)]
    pub id: String,
    #[serde(flatten)]
    pub strategy: Strategy,
}

/// Fields of a flag the admin API can change (`None`: leave as is).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FeatureUpdate {
    pub description: Option<String>,
    #[serde(rename = "type")]
    pub feature_type: Option<String>,
    pub stale: Option<bool>,
    pub impression_data: Option<bool>,
}

/// A fresh random id in UUID v4 form.
pub fn new_id() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(StoreError::Random)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

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

const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
CREATE TABLE projects (
    name TEXT PRIMARY KEY
);
CREATE TABLE environments (
    name TEXT PRIMARY KEY
);
CREATE TABLE features (
    name TEXT PRIMARY KEY,
    project TEXT NOT NULL REFERENCES projects(name),
    type TEXT,
    description TEXT,
    stale BOOLEAN NOT NULL DEFAULT FALSE,
    impression_data BOOLEAN NOT NULL DEFAULT FALSE,
    archived BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE TABLE feature_environments (
    feature TEXT NOT NULL REFERENCES features(name) ON DELETE CASCADE,
    environment TEXT NOT NULL REFERENCES environments(name) ON DELETE CASCADE,
    enabled BOOLEAN NOT NULL,
    variants TEXT NOT NULL,
    PRIMARY KEY (feature, environment)
);
CREATE TABLE strategies (
    feature TEXT NOT NULL,
    environment TEXT NOT NULL,
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    sort_order INTEGER,
    parameters TEXT NOT NULL,
    constraints TEXT NOT NULL,
    variants TEXT NOT NULL,
    segments TEXT NOT NULL,
    PRIMARY KEY (feature, environment, position),
    FOREIGN KEY (feature, environment)
        REFERENCES feature_environments(feature, environment) ON DELETE CASCADE
);
CREATE TABLE segments (
    id INTEGER PRIMARY KEY,
    constraints TEXT NOT NULL
);
CREATE TABLE feature_dependencies (
    child TEXT NOT NULL REFERENCES features(name) ON DELETE CASCADE,
    parent TEXT NOT NULL,
    enabled BOOLEAN,
    variants TEXT,
    position INTEGER NOT NULL,
    PRIMARY KEY (child, position)
);
CREATE TABLE api_tokens (
    hash BLOB PRIMARY KEY,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    project TEXT NOT NULL,
    environment TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
"#,
    ),
    (
        2,
        r#"
CREATE TABLE audit_events (
    seq INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    flag TEXT,
    environment TEXT,
    before TEXT,
    after TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
"#,
    ),
    (
        3,
        r#"
CREATE TABLE client_instances (
    app_name TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    environment TEXT NOT NULL,
    sdk_version TEXT,
    strategies TEXT NOT NULL,
    interval_ms INTEGER,
    last_seen INTEGER NOT NULL,
    PRIMARY KEY (app_name, instance_id, environment)
);
CREATE TABLE feature_metrics (
    feature TEXT NOT NULL,
    environment TEXT NOT NULL,
    app_name TEXT NOT NULL,
    hour INTEGER NOT NULL,
    yes INTEGER NOT NULL,
    no INTEGER NOT NULL,
    variants TEXT NOT NULL,
    PRIMARY KEY (feature, hour, environment, app_name)
);
"#,
    ),
    (
        4,
        r#"
ALTER TABLE strategies ADD COLUMN id TEXT;
UPDATE strategies SET id = lower(hex(randomblob(16)));
CREATE UNIQUE INDEX strategies_id ON strategies (id);
"#,
    ),
    (
        5,
        r#"
ALTER TABLE segments ADD COLUMN name TEXT;
ALTER TABLE segments ADD COLUMN description TEXT;
CREATE TABLE feature_tags (
    feature TEXT NOT NULL REFERENCES features(name) ON DELETE CASCADE,
    type TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (feature, type, value)
);
"#,
    ),
    (
        6,
        r#"
CREATE INDEX feature_metrics_hour ON feature_metrics (hour);
CREATE INDEX client_instances_last_seen ON client_instances (last_seen);
"#,
    ),
];

/// The embedded store: one SQLite file in WAL mode.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// `<db>.audit-head`: the newest event's number and hash, rewritten in place after
    /// every committed change, so deleting the newest events from the database (which
    /// the chain alone cannot reveal) is detected.
    anchor: PathBuf,
}

/// Size of the anchor record; written with one `pwrite` at offset 0.
const ANCHOR_LEN: usize = 128;

fn db(action: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Db { action, source }
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    crate::wire::to_value(v).to_string()
}

fn from_json<T: serde::de::DeserializeOwned>(what: &'static str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|source| StoreError::CorruptJson { what, source })
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
        let mut anchor = path.as_os_str().to_owned();
        anchor.push(".audit-head");
        let store = Self {
            conn: Mutex::new(conn),
            anchor: PathBuf::from(anchor),
        };
        // A database from before the anchor existed, or a crash between a commit and
        // its anchor write: anchor what is there, unless an anchor is already ahead
        // of the database (truncation, which verify must keep reporting).
        let last = store.last_event()?;
        let behind = match store.audit_anchor() {
            Ok(Some(a)) => a.seq < last.as_ref().map_or(0, |l| l.seq),
            Ok(None) => true,
            Err(_) => false,
        };
        if behind {
            store.write_anchor(last)?;
        }
        Ok(store)
    }

    /// Run `f` in a write transaction, commit, and move the anchor.
    fn write<T>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db(what))?;
        let out = f(&tx)?;
        tx.commit().map_err(db(what))?;
        drop(conn);
        self.anchor_now()?;
        Ok(out)
    }

    fn last_event(&self) -> Result<Option<crate::audit::Anchor>> {
        self.conn()
            .query_row(
                "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
                [],
                |r| {
                    Ok(crate::audit::Anchor {
                        seq: r.get(0)?,
                        hash: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(db("read the newest audit event"))
    }

    fn write_anchor(&self, last: Option<crate::audit::Anchor>) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let last = last.unwrap_or(crate::audit::Anchor {
            seq: 0,
            hash: GENESIS.to_owned(),
        });
        let mut record = serde_json::to_vec(&last).unwrap_or_default();
        record.resize(ANCHOR_LEN - 1, b' ');
        record.push(b'\n');
        let err = |source| StoreError::Anchor {
            path: self.anchor.clone(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.anchor)
            .map_err(err)?;
        file.write_all_at(&record, 0).map_err(err)?;
        file.sync_data().map_err(err)
    }

    /// After a committed change: move the anchor to the newest event. A failure is
    /// reported, but the change itself is already durable.
    fn anchor_now(&self) -> Result<()> {
        let last = self.last_event()?;
        self.write_anchor(last)
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite itself consistent (the
        // transaction rolls back on drop), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let tx = conn.transaction().map_err(db("begin the migration"))?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
        )",
    )
    .map_err(db("create the migrations table"))?;
    let current: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(db("read the schema version"))?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            path: path.to_owned(),
            found: current,
            known: SCHEMA_VERSION,
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.execute_batch(sql)
            .map_err(db("apply a schema migration"))?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES (?1)",
            [version],
        )
        .map_err(db("record a schema migration"))?;
        if *version == 1 {
            tx.execute("INSERT INTO projects (name) VALUES (?1)", [DEFAULT_PROJECT])
                .map_err(db("create the default project"))?;
            for env in DEFAULT_ENVIRONMENTS {
                tx.execute("INSERT INTO environments (name) VALUES (?1)", [env])
                    .map_err(db("create the default environments"))?;
            }
        }
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
        // Strategies that come back unchanged keep their ids, so an export/import
        // round trip does not break ids that tools or people hold.
        let mut kept_ids: HashMap<(String, String), Vec<String>> = HashMap::new();
        {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT feature, id, name, sort_order, parameters, constraints, variants,
                        segments FROM strategies WHERE environment = ?1 ORDER BY position DESC",
                )
                .map_err(db("read strategies"))?;
            let mut rows = stmt.query([environment]).map_err(db("read strategies"))?;
            while let Some(r) = rows.next().map_err(db("read strategies"))? {
                let get = |i| -> Result<String> { r.get(i).map_err(db("read strategies")) };
                let Some(id) = r
                    .get::<_, Option<String>>(1)
                    .map_err(db("read strategies"))?
                else {
                    continue;
                };
                let order: Option<i32> = r.get(3).map_err(db("read strategies"))?;
                let key = format!(
                    "{}\u{0}{order:?}\u{0}{}\u{0}{}\u{0}{}\u{0}{}",
                    get(2)?,
                    get(4)?,
                    get(5)?,
                    get(6)?,
                    get(7)?
                );
                kept_ids.entry((get(0)?, key)).or_default().push(id);
            }
        }
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
                let (parameters, constraints, variants, segments) = (
                    to_json(&s.parameters.clone().unwrap_or_default()),
                    to_json(&s.constraints.clone().unwrap_or_default()),
                    to_json(&s.variants.clone().unwrap_or_default()),
                    to_json(&s.segments.clone().unwrap_or_default()),
                );
                let key = format!(
                    "{}\u{0}{:?}\u{0}{parameters}\u{0}{constraints}\u{0}{variants}\u{0}{segments}",
                    s.name, s.sort_order
                );
                let id = match kept_ids.get_mut(&(f.name.clone(), key)).and_then(Vec::pop) {
                    Some(id) => id,
                    None => new_id()?,
                };
                tx.execute(
                    "INSERT INTO strategies (feature, environment, position, name, sort_order,
                        parameters, constraints, variants, segments, id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    params![
                        f.name,
                        environment,
                        position as i64,
                        s.name,
                        s.sort_order,
                        parameters,
                        constraints,
                        variants,
                        segments,
                        id,
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
            Change {
                action: "state-imported",
                flag: None,
                environment: Some(environment),
                before: Some(crate::wire::to_value(&before)),
                after: Some(crate::wire::to_value(&after)),
            },
        )?;
        tx.commit().map_err(db("commit the import"))?;
        drop(conn);
        self.anchor_now()
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
                Some(TokenRecord {
                    name,
                    token_type: TokenType::parse(&ty)?,
                    project,
                    environment,
                    hash: TokenHash(hash.try_into().ok()?),
                })
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
        append_event(
            &tx,
            actor,
            Change {
                action: "api-token-created",
                flag: None,
                environment: Some(&token.environment),
                before: None,
                after: Some(serde_json::json!({
                    "tokenName": token.name,
                    "type": token.token_type.as_str(),
                    "project": token.project,
                    "environment": token.environment,
                })),
            },
        )?;
        tx.commit().map_err(db("commit a new token"))?;
        drop(conn);
        self.anchor_now()
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
            Change {
                action: "feature-created",
                flag: Some(&feature.name),
                environment: None,
                before: None,
                after: after.first().map(|f| serde_json::json!(f)),
            },
        )?;
        tx.commit().map_err(db("commit a new flag"))?;
        drop(conn);
        self.anchor_now()
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
            Change {
                action: if enabled {
                    "feature-environment-enabled"
                } else {
                    "feature-environment-disabled"
                },
                flag: Some(flag),
                environment: Some(environment),
                before: Some(serde_json::json!({ "enabled": before })),
                after: Some(serde_json::json!({ "enabled": enabled })),
            },
        )?;
        tx.commit().map_err(db("commit switching a flag"))?;
        drop(conn);
        self.anchor_now()?;
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
        append_event(
            &tx,
            actor,
            Change {
                action: "feature-archived",
                flag: Some(flag),
                environment: None,
                before: Some(serde_json::json!({ "archived": false })),
                after: Some(serde_json::json!({ "archived": true })),
            },
        )?;
        tx.commit().map_err(db("commit archiving a flag"))?;
        drop(conn);
        self.anchor_now()
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
        let conn = self.conn();
        admit_instance(&conn, &r.app_name, &r.instance_id, &r.environment)?;
        conn.prepare_cached(
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
        admit_instance(
            &tx,
            &report.app_name,
            &report.instance_id,
            &report.environment,
        )?;
        // The first report of an hour drops counts past their retention.
        let new_hour: bool = tx
            .query_row(
                "SELECT NOT EXISTS (SELECT 1 FROM feature_metrics WHERE hour = ?1)",
                [report.hour_ms],
                |r| r.get(0),
            )
            .map_err(db("read metrics"))?;
        if new_hour {
            tx.execute(
                "DELETE FROM feature_metrics WHERE hour < ?1",
                [report.hour_ms - crate::metrics::RETENTION_MS],
            )
            .map_err(db("expire metrics"))?;
        }
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
                Some((yes, no, variants)) => Counts {
                    yes: yes.max(0) as u64,
                    no: no.max(0) as u64,
                    variants: from_json("metrics variants", &variants)?,
                },
                None => Counts::default(),
            };
            total.add(counts);
            let clamp = |n: u64| n.min(i64::MAX as u64) as i64;
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
                    clamp(total.yes),
                    clamp(total.no),
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
        let rows: Vec<(String, String, i64, i64, i64, String)> = st
            .query_map(params![flag, since_ms], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .and_then(|rows| rows.collect())
            .map_err(db("read metrics"))?;
        rows.into_iter()
            .map(|(app_name, environment, hour, yes, no, variants)| {
                Ok(MetricsRow {
                    feature_name: flag.to_owned(),
                    app_name,
                    environment,
                    timestamp: crate::metrics::rfc3339(hour),
                    yes: yes.max(0) as u64,
                    no: no.max(0) as u64,
                    variants: from_json("metrics variants", &variants)?,
                })
            })
            .collect()
    }

    fn applications(&self) -> Result<Vec<Application>> {
        let conn = self.conn();
        let mut st = conn
            .prepare_cached(
                "SELECT app_name, instance_id, environment, sdk_version, strategies, last_seen
                 FROM client_instances ORDER BY app_name, instance_id, environment",
            )
            .map_err(db("list applications"))?;
        let rows: Vec<(String, String, String, Option<String>, String, i64)> = st
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .and_then(|rows| rows.collect())
            .map_err(db("list applications"))?;
        let mut apps: Vec<Application> = Vec::new();
        for (app_name, instance_id, environment, sdk_version, strategies, last_seen) in rows {
            let instance = Instance {
                instance_id,
                environment,
                sdk_version,
                strategies: from_json("registered strategies", &strategies)?,
                last_seen: crate::metrics::rfc3339(last_seen),
            };
            match apps.last_mut() {
                Some(a) if a.app_name == app_name => a.instances.push(instance),
                _ => apps.push(Application {
                    app_name,
                    instances: vec![instance],
                }),
            }
        }
        Ok(apps)
    }

    fn feature_environment(
        &self,
        project: &str,
        flag: &str,
        environment: &str,
    ) -> Result<EnvConfig> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db("begin a read"))?;
        live_feature(&tx, project, flag)?;
        known_environment(&tx, environment)?;
        read_env_config(&tx, flag, environment)
    }

    fn edit_feature_environment(
        &self,
        target: &FeatureEnvTarget<'_>,
        edit: &mut dyn FnMut(&mut EnvConfig) -> Result<()>,
        actor: &Actor,
    ) -> Result<EnvConfig> {
        let FeatureEnvTarget {
            project,
            flag,
            environment,
            action,
        } = *target;
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db("begin changing a flag"))?;
        live_feature(&tx, project, flag)?;
        known_environment(&tx, environment)?;
        let before = read_env_config(&tx, flag, environment)?;
        let mut after = before.clone();
        edit(&mut after)?;
        for s in &mut after.strategies {
            if s.id.is_empty() {
                s.id = new_id()?;
            }
        }
        let (b, a) = (
            crate::wire::to_value(&before),
            crate::wire::to_value(&after),
        );
        if a == b {
            return Ok(after);
        }
        write_env_config(&tx, flag, environment, &after)?;
        append_event(
            &tx,
            actor,
            Change {
                action,
                flag: Some(flag),
                environment: Some(environment),
                before: Some(b),
                after: Some(a),
            },
        )?;
        tx.commit().map_err(db("commit changing a flag"))?;
        drop(conn);
        self.anchor_now()?;
        Ok(after)
    }

    fn update_feature(
        &self,
        project: &str,
        flag: &str,
        update: &FeatureUpdate,
        actor: &Actor,
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db("begin updating a flag"))?;
        live_feature(&tx, project, flag)?;
        let before = read_features(&tx, project, Some(flag))?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::UnknownFlag {
                project: project.to_owned(),
                flag: flag.to_owned(),
            })?;
        tx.execute(
            "UPDATE features SET description = COALESCE(?2, description),
                type = COALESCE(?3, type), stale = COALESCE(?4, stale),
                impression_data = COALESCE(?5, impression_data)
             WHERE name = ?1",
            params![
                flag,
                update.description,
                update.feature_type,
                update.stale,
                update.impression_data
            ],
        )
        .map_err(db("update a flag"))?;
        let after = read_features(&tx, project, Some(flag))?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::UnknownFlag {
                project: project.to_owned(),
                flag: flag.to_owned(),
            })?;
        if after == before {
            return Ok(());
        }
        append_event(
            &tx,
            actor,
            Change {
                action: "feature-updated",
                flag: Some(flag),
                environment: None,
                before: Some(serde_json::to_value(&before).unwrap_or_default()),
                after: Some(serde_json::to_value(&after).unwrap_or_default()),
            },
        )?;
        tx.commit().map_err(db("commit updating a flag"))?;
        drop(conn);
        self.anchor_now()
    }

    fn delete_token(&self, hash: &TokenHash, actor: &Actor) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db("begin deleting a token"))?;
        let row: Option<(String, String, String, String)> = tx
            .query_row(
                "SELECT name, type, project, environment FROM api_tokens WHERE hash = ?1",
                [&hash.0[..]],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(db("look up a token"))?;
        let Some((name, ty, project, environment)) = row else {
            return Ok(false);
        };
        tx.execute("DELETE FROM api_tokens WHERE hash = ?1", [&hash.0[..]])
            .map_err(db("delete a token"))?;
        append_event(
            &tx,
            actor,
            Change {
                action: "api-token-deleted",
                flag: None,
                environment: None,
                before: Some(serde_json::json!({
                    "tokenName": name, "type": ty, "project": project, "environment": environment
                })),
                after: None,
            },
        )?;
        tx.commit().map_err(db("commit deleting a token"))?;
        drop(conn);
        self.anchor_now()?;
        Ok(true)
    }

    fn audit_anchor(&self) -> Result<Option<crate::audit::Anchor>> {
        let bytes = match std::fs::read(&self.anchor) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Anchor {
                    path: self.anchor.clone(),
                    source,
                });
            }
        };
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(ANCHOR_LEN)]).into_owned();
        serde_json::from_str(text.trim())
            .map(Some)
            .map_err(|source| StoreError::CorruptJson {
                what: "audit anchor",
                source,
            })
    }

    fn create_environment(&self, name: &str, actor: &Actor) -> Result<()> {
        self.write("create an environment", |tx| {
            let n = tx
                .execute(
                    "INSERT INTO environments (name) VALUES (?1) ON CONFLICT (name) DO NOTHING",
                    [name],
                )
                .map_err(db("create an environment"))?;
            if n == 0 {
                return Err(StoreError::EnvironmentExists(name.to_owned()));
            }
            tx.execute(
                "INSERT INTO feature_environments (feature, environment, enabled, variants)
                 SELECT name, ?1, FALSE, '[]' FROM features",
                [name],
            )
            .map_err(db("add the environment to every flag"))?;
            append_event(
                tx,
                actor,
                Change {
                    action: "environment-created",
                    flag: None,
                    environment: Some(name),
                    before: None,
                    after: Some(serde_json::json!({ "name": name })),
                },
            )
        })
    }

    fn segments(&self) -> Result<Vec<AdminSegment>> {
        read_segments(&self.conn())
    }

    fn save_segment(&self, segment: &AdminSegment, actor: &Actor) -> Result<i32> {
        self.write("save a segment", |tx| {
            let before = read_segments(tx)?.into_iter().find(|s| s.id == segment.id);
            let id = if segment.id == 0 {
                tx.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM segments", [], |r| {
                    r.get(0)
                })
                .map_err(db("number a segment"))?
            } else if before.is_none() {
                return Err(StoreError::UnknownSegment(segment.id));
            } else {
                segment.id
            };
            tx.execute(
                "INSERT INTO segments (id, name, description, constraints) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name,
                    description = excluded.description, constraints = excluded.constraints",
                params![
                    id,
                    segment.name,
                    segment.description,
                    to_json(&segment.constraints)
                ],
            )
            .map_err(db("save a segment"))?;
            let after = AdminSegment {
                id,
                ..segment.clone()
            };
            append_event(
                tx,
                actor,
                Change {
                    action: if before.is_some() {
                        "segment-updated"
                    } else {
                        "segment-created"
                    },
                    flag: None,
                    environment: None,
                    before: before.map(|b| crate::wire::to_value(&b)),
                    after: Some(crate::wire::to_value(&after)),
                },
            )?;
            Ok(id)
        })
    }

    fn delete_segment(&self, id: i32, actor: &Actor) -> Result<()> {
        self.write("delete a segment", |tx| {
            let Some(before) = read_segments(tx)?.into_iter().find(|s| s.id == id) else {
                return Err(StoreError::UnknownSegment(id));
            };
            let mut stmt = tx
                .prepare_cached("SELECT DISTINCT feature, segments FROM strategies")
                .map_err(db("look for segment users"))?;
            let rows: Vec<(String, String)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(|rows| rows.collect())
                .map_err(db("look for segment users"))?;
            let mut flags = Vec::new();
            for (flag, segments) in rows {
                let ids: Vec<i32> = from_json("strategy segments", &segments)?;
                if ids.contains(&id) && !flags.contains(&flag) {
                    flags.push(flag);
                }
            }
            if !flags.is_empty() {
                flags.sort();
                return Err(StoreError::SegmentInUse { id, flags });
            }
            tx.execute("DELETE FROM segments WHERE id = ?1", [id])
                .map_err(db("delete a segment"))?;
            append_event(
                tx,
                actor,
                Change {
                    action: "segment-deleted",
                    flag: None,
                    environment: None,
                    before: Some(crate::wire::to_value(&before)),
                    after: None,
                },
            )
        })
    }

    fn archived_features(&self) -> Result<Vec<FeatureSummary>> {
        read_features_where(&self.conn(), None, None, true)
    }

    fn revive_feature(&self, flag: &str, actor: &Actor) -> Result<()> {
        self.write("revive a flag", |tx| {
            if feature_project(tx, flag)?.is_none_or(|(_, archived)| !archived) {
                return Err(StoreError::NotArchived(flag.to_owned()));
            }
            tx.execute(
                "UPDATE features SET archived = FALSE WHERE name = ?1",
                [flag],
            )
            .map_err(db("revive a flag"))?;
            tx.execute(
                "UPDATE feature_environments SET enabled = FALSE WHERE feature = ?1",
                [flag],
            )
            .map_err(db("revive a flag"))?;
            append_event(
                tx,
                actor,
                Change {
                    action: "feature-revived",
                    flag: Some(flag),
                    environment: None,
                    before: Some(serde_json::json!({ "archived": true })),
                    after: Some(serde_json::json!({ "archived": false, "enabled": false })),
                },
            )
        })
    }

    fn delete_archived_feature(&self, flag: &str, actor: &Actor) -> Result<()> {
        self.write("delete a flag", |tx| {
            let Some((project, true)) = feature_project(tx, flag)? else {
                return Err(StoreError::NotArchived(flag.to_owned()));
            };
            let before = read_features_where(tx, Some(&project), Some(flag), true)?;
            tx.execute("DELETE FROM feature_dependencies WHERE parent = ?1", [flag])
                .map_err(db("delete a flag"))?;
            tx.execute("DELETE FROM features WHERE name = ?1", [flag])
                .map_err(db("delete a flag"))?;
            append_event(
                tx,
                actor,
                Change {
                    action: "feature-deleted",
                    flag: Some(flag),
                    environment: None,
                    before: before.first().map(|f| serde_json::json!(f)),
                    after: None,
                },
            )
        })
    }

    fn tags(&self, flag: &str) -> Result<Vec<(String, String)>> {
        let conn = self.conn();
        if feature_project(&conn, flag)?.is_none() {
            return Err(StoreError::UnknownFlag {
                project: "*".into(),
                flag: flag.to_owned(),
            });
        }
        let mut stmt = conn
            .prepare_cached("SELECT type, value FROM feature_tags WHERE feature = ?1 ORDER BY 1, 2")
            .map_err(db("list tags"))?;
        stmt.query_map([flag], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(db("list tags"))
    }

    fn add_tag(&self, flag: &str, tag_type: &str, value: &str, actor: &Actor) -> Result<bool> {
        self.write("tag a flag", |tx| {
            if feature_project(tx, flag)?.is_none() {
                return Err(StoreError::UnknownFlag {
                    project: "*".into(),
                    flag: flag.to_owned(),
                });
            }
            let n = tx
                .execute(
                    "INSERT INTO feature_tags (feature, type, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT DO NOTHING",
                    [flag, tag_type, value],
                )
                .map_err(db("tag a flag"))?;
            if n == 0 {
                return Ok(false);
            }
            append_event(
                tx,
                actor,
                Change {
                    action: "feature-tagged",
                    flag: Some(flag),
                    environment: None,
                    before: None,
                    after: Some(serde_json::json!({ "type": tag_type, "value": value })),
                },
            )?;
            Ok(true)
        })
    }

    fn remove_tag(&self, flag: &str, tag_type: &str, value: &str, actor: &Actor) -> Result<bool> {
        self.write("untag a flag", |tx| {
            let n = tx
                .execute(
                    "DELETE FROM feature_tags WHERE feature = ?1 AND type = ?2 AND value = ?3",
                    [flag, tag_type, value],
                )
                .map_err(db("untag a flag"))?;
            if n == 0 {
                return Ok(false);
            }
            append_event(
                tx,
                actor,
                Change {
                    action: "feature-untagged",
                    flag: Some(flag),
                    environment: None,
                    before: Some(serde_json::json!({ "type": tag_type, "value": value })),
                    after: None,
                },
            )?;
            Ok(true)
        })
    }

    fn set_dependency(
        &self,
        project: &str,
        child: &str,
        dependency: &FeatureDependency,
        actor: &Actor,
    ) -> Result<()> {
        self.write("add a dependency", |tx| {
            live_feature(tx, project, child)?;
            let parent = dependency.feature.as_str();
            if parent == child {
                return Err(StoreError::Invalid("a flag cannot depend on itself".into()));
            }
            live_feature(tx, project, parent).map_err(|_| {
                StoreError::Invalid(format!(
                    "the parent {parent:?} must be a live flag in project {project:?}"
                ))
            })?;
            let nested: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM feature_dependencies WHERE child = ?1)
                        OR EXISTS (SELECT 1 FROM feature_dependencies WHERE parent = ?2)",
                    [parent, child],
                    |r| r.get(0),
                )
                .map_err(db("check dependencies"))?;
            if nested {
                return Err(StoreError::Invalid(
                    "dependencies are one level deep: the parent cannot have parents, and a \
                     flag that is a parent cannot get one"
                        .into(),
                ));
            }
            let before = read_dependencies(tx, child)?;
            tx.execute(
                "DELETE FROM feature_dependencies WHERE child = ?1 AND parent = ?2",
                [child, parent],
            )
            .map_err(db("replace a dependency"))?;
            tx.execute(
                "INSERT INTO feature_dependencies (child, parent, enabled, variants, position)
                 VALUES (?1, ?2, ?3, ?4,
                    (SELECT COALESCE(MAX(position), -1) + 1 FROM feature_dependencies
                     WHERE child = ?1))",
                params![
                    child,
                    parent,
                    dependency.enabled,
                    dependency.variants.as_ref().map(to_json)
                ],
            )
            .map_err(db("add a dependency"))?;
            let after = read_dependencies(tx, child)?;
            append_event(
                tx,
                actor,
                Change {
                    action: "feature-dependency-added",
                    flag: Some(child),
                    environment: None,
                    before: Some(crate::wire::to_value(&before)),
                    after: Some(crate::wire::to_value(&after)),
                },
            )
        })
    }

    fn remove_dependency(
        &self,
        project: &str,
        child: &str,
        parent: Option<&str>,
        actor: &Actor,
    ) -> Result<()> {
        self.write("remove a dependency", |tx| {
            live_feature(tx, project, child)?;
            let before = read_dependencies(tx, child)?;
            let n = tx
                .execute(
                    "DELETE FROM feature_dependencies WHERE child = ?1 AND (?2 IS NULL OR parent = ?2)",
                    params![child, parent],
                )
                .map_err(db("remove a dependency"))?;
            if n == 0 {
                return Err(StoreError::Invalid(format!("{child:?} has no such dependency")));
            }
            let after = read_dependencies(tx, child)?;
            append_event(
                tx,
                actor,
                Change {
                    action: "feature-dependency-removed",
                    flag: Some(child),
                    environment: None,
                    before: Some(crate::wire::to_value(&before)),
                    after: Some(crate::wire::to_value(&after)),
                },
            )
        })
    }

    fn projects(&self) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT name FROM projects ORDER BY name")
            .map_err(db("list projects"))?;
        stmt.query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(db("list projects"))
    }

    fn create_project(&self, name: &str, actor: &Actor) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db("begin creating a project"))?;
        let n = tx
            .execute(
                "INSERT INTO projects (name) VALUES (?1) ON CONFLICT (name) DO NOTHING",
                [name],
            )
            .map_err(db("create a project"))?;
        if n == 0 {
            return Err(StoreError::ProjectExists(name.to_owned()));
        }
        append_event(
            &tx,
            actor,
            Change {
                action: "project-created",
                flag: None,
                environment: None,
                before: None,
                after: Some(serde_json::json!({ "id": name })),
            },
        )?;
        tx.commit().map_err(db("commit creating a project"))?;
        drop(conn);
        self.anchor_now()
    }
}

/// id, name, sort order, then parameters, constraints, variants, segments as JSON.
type StrategyRow = (
    Option<String>,
    String,
    Option<i32>,
    String,
    String,
    String,
    String,
);

/// Let a new SDK instance in only while fewer than [`crate::metrics::MAX_INSTANCES`]
/// are remembered (after forgetting the long-silent ones), so a client token cannot
/// fill the database with invented application names.
fn admit_instance(conn: &Connection, app: &str, instance: &str, environment: &str) -> Result<()> {
    use crate::metrics::{INSTANCE_TTL_MS, MAX_INSTANCES};
    let known: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM client_instances
                WHERE app_name = ?1 AND instance_id = ?2 AND environment = ?3)",
            [app, instance, environment],
            |r| r.get(0),
        )
        .map_err(db("look up an instance"))?;
    if known {
        return Ok(());
    }
    conn.execute(
        "DELETE FROM client_instances WHERE last_seen < ?1",
        [now_millis() - INSTANCE_TTL_MS],
    )
    .map_err(db("forget silent instances"))?;
    let count: i64 = conn
        .query_row("SELECT COUNT(*) FROM client_instances", [], |r| r.get(0))
        .map_err(db("count instances"))?;
    if count >= MAX_INSTANCES {
        return Err(StoreError::Full(format!(
            "{MAX_INSTANCES} SDK instances are registered already; new ones are refused until \
             silent ones expire (after 7 days)"
        )));
    }
    Ok(())
}

fn read_segments(conn: &Connection) -> Result<Vec<AdminSegment>> {
    let mut stmt = conn
        .prepare_cached("SELECT id, name, description, constraints FROM segments ORDER BY id")
        .map_err(db("list segments"))?;
    let rows: Vec<(i32, Option<String>, Option<String>, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .and_then(|rows| rows.collect())
        .map_err(db("list segments"))?;
    rows.into_iter()
        .map(|(id, name, description, constraints)| {
            Ok(AdminSegment {
                id,
                // Segments that came in through a state import have no name.
                name: name.unwrap_or_else(|| format!("segment-{id}")),
                description,
                constraints: from_json("segment constraints", &constraints)?,
            })
        })
        .collect()
}

fn read_dependencies(conn: &Connection, child: &str) -> Result<Vec<FeatureDependency>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT parent, enabled, variants FROM feature_dependencies
             WHERE child = ?1 ORDER BY position",
        )
        .map_err(db("read dependencies"))?;
    let rows: Vec<(String, Option<bool>, Option<String>)> = stmt
        .query_map([child], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .and_then(|rows| rows.collect())
        .map_err(db("read dependencies"))?;
    rows.into_iter()
        .map(|(feature, enabled, variants)| {
            Ok(FeatureDependency {
                feature,
                enabled,
                variants: variants
                    .map(|v| from_json("dependency variants", &v))
                    .transpose()?,
            })
        })
        .collect()
}

fn read_env_config(tx: &Connection, flag: &str, environment: &str) -> Result<EnvConfig> {
    let row: Option<(bool, String)> = tx
        .query_row(
            "SELECT enabled, variants FROM feature_environments
             WHERE feature = ?1 AND environment = ?2",
            [flag, environment],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db("read a flag's environment"))?;
    let Some((enabled, variants)) = row else {
        return Ok(EnvConfig {
            enabled: false,
            variants: Vec::new(),
            strategies: Vec::new(),
        });
    };
    let mut stmt = tx
        .prepare_cached(
            "SELECT id, name, sort_order, parameters, constraints, variants, segments
             FROM strategies WHERE feature = ?1 AND environment = ?2 ORDER BY position",
        )
        .map_err(db("read strategies"))?;
    let rows: Vec<StrategyRow> = stmt
        .query_map([flag, environment], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .and_then(|rows| rows.collect())
        .map_err(db("read strategies"))?;
    let strategies = rows
        .into_iter()
        .map(
            |(id, name, sort_order, params, constraints, variants, segments)| {
                let segments: Vec<i32> = from_json("strategy segments", &segments)?;
                Ok(AdminStrategy {
                    id: id.unwrap_or_default(),
                    strategy: Strategy {
                        name,
                        sort_order,
                        parameters: Some(from_json("strategy parameters", &params)?),
                        constraints: Some(from_json("strategy constraints", &constraints)?),
                        variants: Some(from_json("strategy variants", &variants)?),
                        segments: (!segments.is_empty()).then_some(segments),
                    },
                })
            },
        )
        .collect::<Result<_>>()?;
    Ok(EnvConfig {
        enabled,
        variants: from_json("flag variants", &variants)?,
        strategies,
    })
}

fn write_env_config(tx: &Connection, flag: &str, environment: &str, c: &EnvConfig) -> Result<()> {
    for id in c
        .strategies
        .iter()
        .flat_map(|s| s.strategy.segments.iter().flatten())
    {
        let exists: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM segments WHERE id = ?1)",
                [id],
                |r| r.get(0),
            )
            .map_err(db("look up a segment"))?;
        if !exists {
            return Err(StoreError::UnknownSegment(*id));
        }
    }
    tx.execute(
        "INSERT INTO feature_environments (feature, environment, enabled, variants)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (feature, environment) DO UPDATE SET
            enabled = excluded.enabled, variants = excluded.variants",
        params![flag, environment, c.enabled, to_json(&c.variants)],
    )
    .map_err(db("store a flag's environment"))?;
    tx.execute(
        "DELETE FROM strategies WHERE feature = ?1 AND environment = ?2",
        [flag, environment],
    )
    .map_err(db("replace strategies"))?;
    for (position, s) in c.strategies.iter().enumerate() {
        let st = &s.strategy;
        tx.execute(
            "INSERT INTO strategies (feature, environment, position, name, sort_order,
                parameters, constraints, variants, segments, id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                flag,
                environment,
                position as i64,
                st.name,
                st.sort_order,
                to_json(&st.parameters.clone().unwrap_or_default()),
                to_json(&st.constraints.clone().unwrap_or_default()),
                to_json(&st.variants.clone().unwrap_or_default()),
                to_json(&st.segments.clone().unwrap_or_default()),
                s.id,
            ],
        )
        .map_err(db("store a strategy"))?;
    }
    Ok(())
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
    let mut features: BTreeMap<String, ClientFeature> = BTreeMap::new();
    {
        let mut stmt = conn
            .prepare_cached(
                "SELECT f.name, f.project, f.type, f.description, f.stale,
                        f.impression_data, fe.enabled, fe.variants
                 FROM features f JOIN feature_environments fe ON fe.feature = f.name
                 WHERE fe.environment = ?1 AND NOT f.archived
                   AND (?2 = '*' OR instr(',' || ?2 || ',', ',' || f.project || ',') > 0)",
            )
            .map_err(db("read the flag state"))?;
        let mut rows = stmt
            .query(params![environment, project])
            .map_err(db("read features"))?;
        while let Some(r) = rows.next().map_err(db("read features"))? {
            let name: String = r.get(0).map_err(db("read features"))?;
            let variants: String = r.get(7).map_err(db("read features"))?;
            let variants: Vec<unleash_types::client_features::Variant> =
                from_json("feature variants", &variants)?;
            features.insert(
                name.clone(),
                ClientFeature {
                    name,
                    project: Some(r.get(1).map_err(db("read features"))?),
                    feature_type: r.get(2).map_err(db("read features"))?,
                    description: r.get(3).map_err(db("read features"))?,
                    stale: Some(r.get(4).map_err(db("read features"))?),
                    impression_data: Some(r.get(5).map_err(db("read features"))?),
                    enabled: r.get(6).map_err(db("read features"))?,
                    variants: Some(variants),
                    strategies: Some(Vec::new()),
                    ..ClientFeature::default()
                },
            );
        }
    }
    {
        let mut stmt = conn
            .prepare_cached(
                "SELECT feature, name, sort_order, parameters, constraints, variants, segments
                 FROM strategies WHERE environment = ?1 ORDER BY feature, position",
            )
            .map_err(db("read strategies"))?;
        let mut rows = stmt.query([environment]).map_err(db("read strategies"))?;
        while let Some(r) = rows.next().map_err(db("read strategies"))? {
            let feature: String = r.get(0).map_err(db("read strategies"))?;
            let Some(f) = features.get_mut(&feature) else {
                continue;
            };
            let text = |i| -> Result<String> { r.get(i).map_err(db("read strategies")) };
            let parameters: HashMap<String, String> = from_json("strategy parameters", &text(3)?)?;
            let segments: Vec<i32> = from_json("strategy segments", &text(6)?)?;
            let strategy = Strategy {
                name: text(1)?,
                sort_order: r.get(2).map_err(db("read strategies"))?,
                parameters: Some(parameters),
                constraints: Some(from_json("strategy constraints", &text(4)?)?),
                variants: Some(from_json("strategy variants", &text(5)?)?),
                segments: (!segments.is_empty()).then_some(segments),
            };
            f.strategies.get_or_insert_with(Vec::new).push(strategy);
        }
    }
    {
        let mut stmt = conn
            .prepare_cached(
                "SELECT child, parent, enabled, variants FROM feature_dependencies
                 ORDER BY child, position",
            )
            .map_err(db("read dependencies"))?;
        let mut rows = stmt.query([]).map_err(db("read dependencies"))?;
        while let Some(r) = rows.next().map_err(db("read dependencies"))? {
            let child: String = r.get(0).map_err(db("read dependencies"))?;
            let Some(f) = features.get_mut(&child) else {
                continue;
            };
            let variants: Option<String> = r.get(3).map_err(db("read dependencies"))?;
            let dependency = FeatureDependency {
                feature: r.get(1).map_err(db("read dependencies"))?,
                enabled: r.get(2).map_err(db("read dependencies"))?,
                variants: variants
                    .map(|v| from_json("dependency variants", &v))
                    .transpose()?,
            };
            f.dependencies.get_or_insert_with(Vec::new).push(dependency);
        }
    }
    let segments = {
        let mut stmt = conn
            .prepare_cached("SELECT id, constraints FROM segments ORDER BY id")
            .map_err(db("read segments"))?;
        let rows: Vec<(i32, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(db("read segments"))?;
        rows.into_iter()
            .map(|(id, c)| {
                Ok(Segment {
                    id,
                    constraints: from_json("segment constraints", &c)?,
                })
            })
            .collect::<Result<Vec<_>>>()?
    };
    Ok(ClientFeatures {
        version: 2,
        features: features.into_values().collect(),
        segments: Some(segments),
        query: None,
        meta: None,
    })
}

/// Non-archived flags of `project` (or just `only`), with their environments.
fn read_features(
    conn: &Connection,
    project: &str,
    only: Option<&str>,
) -> Result<Vec<FeatureSummary>> {
    read_features_where(conn, Some(project), only, false)
}

fn read_features_where(
    conn: &Connection,
    project: Option<&str>,
    only: Option<&str>,
    archived: bool,
) -> Result<Vec<FeatureSummary>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT f.name, f.project, f.type, f.description, f.stale, f.impression_data,
                    f.archived, fe.environment, fe.enabled,
                    (SELECT COUNT(*) FROM strategies s
                     WHERE s.feature = f.name AND s.environment = fe.environment)
             FROM features f LEFT JOIN feature_environments fe ON fe.feature = f.name
             WHERE (?1 IS NULL OR f.project = ?1) AND f.archived = ?3
                AND (?2 IS NULL OR f.name = ?2)
             ORDER BY f.name, fe.environment",
        )
        .map_err(db("list flags"))?;
    let mut rows = stmt
        .query(params![project, only, archived])
        .map_err(db("list flags"))?;
    let mut out: Vec<FeatureSummary> = Vec::new();
    while let Some(r) = rows.next().map_err(db("list flags"))? {
        let name: String = r.get(0).map_err(db("list flags"))?;
        if out.last().is_none_or(|f| f.name != name) {
            out.push(FeatureSummary {
                name,
                project: r.get(1).map_err(db("list flags"))?,
                feature_type: r.get(2).map_err(db("list flags"))?,
                description: r.get(3).map_err(db("list flags"))?,
                stale: r.get(4).map_err(db("list flags"))?,
                impression_data: r.get(5).map_err(db("list flags"))?,
                archived: r.get(6).map_err(db("list flags"))?,
                environments: Vec::new(),
            });
        }
        let env: Option<String> = r.get(7).map_err(db("list flags"))?;
        if let (Some(env), Some(f)) = (env, out.last_mut()) {
            f.environments.push(FeatureEnvironment {
                name: env,
                enabled: r.get(8).map_err(db("list flags"))?,
                strategy_count: r.get::<_, i64>(9).map_err(db("list flags"))? as usize,
            });
        }
    }
    Ok(out)
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Append one event to the audit chain inside the change's own transaction.
fn append_event(tx: &Transaction<'_>, actor: &Actor, change: Change<'_>) -> Result<()> {
    let last: Option<(i64, String)> = tx
        .query_row(
            "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db("read the newest audit event"))?;
    let (seq, prev_hash) = match last {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, GENESIS.to_owned()),
    };
    let mut event = Event {
        seq,
        ts: now_millis(),
        actor: actor.0.clone(),
        action: change.action.to_owned(),
        flag: change.flag.map(str::to_owned),
        environment: change.environment.map(str::to_owned),
        before: change.before.map(|v| v.to_string()),
        after: change.after.map(|v| v.to_string()),
        prev_hash,
        hash: String::new(),
    };
    event.hash = event.compute_hash();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::TokenHash;

    #[test]
    fn state_and_tokens_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flags.db");
        let state: ClientFeatures = serde_json::from_value(serde_json::json!({
            "version": 2,
            "features": [{"name": "a", "enabled": true, "project": "p",
                "strategies": [{"name": "flexibleRollout", "parameters": {"rollout": "50"}}],
                "dependencies": [{"feature": "b", "enabled": false}]},
                {"name": "b", "enabled": false}]
        }))
        .unwrap();
        {
            let store = SqliteStore::open(&path).unwrap();
            store
                .import_state("production", &state, &Actor::system())
                .unwrap();
            store
                .insert_token(
                    &TokenRecord {
                        name: "t".into(),
                        token_type: TokenType::Client,
                        project: "*".into(),
                        environment: "production".into(),
                        hash: TokenHash::of("*:production.s"),
                    },
                    &Actor::system(),
                )
                .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.environments().unwrap(), ["development", "production"]);
        let back = store.client_state("production", "*").unwrap().0;
        assert_eq!(back.features.len(), 2);
        assert_eq!(back.features[0].project.as_deref(), Some("p"));
        assert_eq!(
            back.features[0].dependencies.as_ref().unwrap()[0].feature,
            "b"
        );
        assert!(
            store
                .client_state("development", "*")
                .unwrap()
                .0
                .features
                .is_empty()
        );
        assert!(
            store
                .client_state("production", "default")
                .unwrap()
                .0
                .features
                .len()
                == 1
        );
        assert_eq!(
            store.tokens().unwrap()[0].hash,
            TokenHash::of("*:production.s")
        );
        let version: i64 = store
            .conn()
            .query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flags.db");
        drop(SqliteStore::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .execute("INSERT INTO schema_migrations (version) VALUES (999)", [])
            .unwrap();
        assert!(matches!(
            SqliteStore::open(&path),
            Err(StoreError::SchemaTooNew { found: 999, .. })
        ));
    }

    #[test]
    fn a_failed_import_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("flags.db")).unwrap();
        let state: ClientFeatures = serde_json::from_value(serde_json::json!({
            "version": 2, "features": [{"name": "a", "enabled": true}]
        }))
        .unwrap();
        store
            .import_state("development", &state, &Actor::system())
            .unwrap();
        assert!(matches!(
            store.import_state("nowhere", &state, &Actor::system()),
            Err(StoreError::UnknownEnvironment(_))
        ));
        // Duplicate names violate the primary key half-way through: rolled back whole.
        let dup: ClientFeatures = serde_json::from_value(serde_json::json!({
            "version": 2, "features": [{"name": "c", "enabled": true}, {"name": "c", "enabled": false}]
        }))
        .unwrap();
        assert!(
            store
                .import_state("development", &dup, &Actor::system())
                .is_err()
        );
        let names: Vec<String> = store
            .client_state("development", "*")
            .unwrap()
            .0
            .features
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, ["a"]);
    }

    /// A store with five events: a token, a flag created, enabled, disabled, archived.
    fn store_with_history() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("flags.db")).unwrap();
        let ops = Actor("admin:ops".into());
        store
            .insert_token(
                &TokenRecord {
                    name: "t".into(),
                    token_type: TokenType::Client,
                    project: "*".into(),
                    environment: "production".into(),
                    hash: TokenHash::of("*:production.s"),
                },
                &ops,
            )
            .unwrap();
        let new = NewFeature {
            name: "checkout-v2".into(),
            ..NewFeature::default()
        };
        store.create_feature(DEFAULT_PROJECT, &new, &ops).unwrap();
        assert!(
            store
                .set_enabled(DEFAULT_PROJECT, "checkout-v2", "production", true, &ops)
                .unwrap()
        );
        // No change, no event.
        assert!(
            !store
                .set_enabled(DEFAULT_PROJECT, "checkout-v2", "production", true, &ops)
                .unwrap()
        );
        store
            .set_enabled(DEFAULT_PROJECT, "checkout-v2", "production", false, &ops)
            .unwrap();
        store
            .archive_feature(DEFAULT_PROJECT, "checkout-v2", &ops)
            .unwrap();
        (dir, store)
    }

    /// Tamper as someone with the database file would: the triggers go first.
    fn tamper(store: &SqliteStore, sql: &str) {
        store
            .conn()
            .execute_batch(&format!(
                "DROP TRIGGER IF EXISTS audit_events_no_update;
                 DROP TRIGGER IF EXISTS audit_events_no_delete;
                 {sql}"
            ))
            .unwrap();
    }

    fn problems(store: &SqliteStore) -> Vec<crate::audit::Problem> {
        crate::audit::verify(store).unwrap().problems
    }

    use crate::audit::Problem;

    #[test]
    fn every_change_appends_a_chained_event() {
        let (_dir, store) = store_with_history();
        let events = store.audit_events().unwrap();
        let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(
            actions,
            [
                "api-token-created",
                "feature-created",
                "feature-environment-enabled",
                "feature-environment-disabled",
                "feature-archived"
            ]
        );
        assert_eq!(events[0].prev_hash, GENESIS);
        assert_eq!(events[3].actor, "admin:ops");
        assert_eq!(events[3].environment.as_deref(), Some("production"));
        assert_eq!(events[3].before.as_deref(), Some(r#"{"enabled":true}"#));
        assert_eq!(events[3].after.as_deref(), Some(r#"{"enabled":false}"#));
        assert!(!events[0].after.as_ref().unwrap().contains("hash"));
        let report = crate::audit::verify(&store).unwrap();
        assert!(report.ok(), "{:?}", report.problems);
        assert_eq!(report.events, 5);
        assert_eq!(report.head.as_ref(), Some(&events[4].hash));
    }

    #[test]
    fn the_database_refuses_to_update_or_delete_events() {
        let (_dir, store) = store_with_history();
        let conn = store.conn();
        assert!(
            conn.execute("UPDATE audit_events SET actor = 'x' WHERE seq = 1", [])
                .is_err()
        );
        assert!(
            conn.execute("DELETE FROM audit_events WHERE seq = 1", [])
                .is_err()
        );
    }

    #[test]
    fn verify_names_an_edited_event() {
        let (_dir, store) = store_with_history();
        tamper(
            &store,
            "UPDATE audit_events SET after = '{\"enabled\":true}' WHERE seq = 4",
        );
        assert_eq!(problems(&store), [Problem::Edited { seq: 4 }]);
    }

    #[test]
    fn verify_names_an_edited_and_rehashed_event() {
        let (_dir, store) = store_with_history();
        let mut e = store.audit_events().unwrap()[1].clone();
        e.actor = "admin:someone-else".into();
        e.hash = e.compute_hash();
        tamper(
            &store,
            &format!(
                "UPDATE audit_events SET actor = '{}', hash = '{}' WHERE seq = 2",
                e.actor, e.hash
            ),
        );
        assert_eq!(
            problems(&store),
            [Problem::Unlinked {
                seq: 3,
                previous: 2
            }]
        );
    }

    #[test]
    fn verify_names_deleted_events() {
        let (_dir, store) = store_with_history();
        tamper(&store, "DELETE FROM audit_events WHERE seq IN (2, 3)");
        assert_eq!(problems(&store), [Problem::Deleted { from: 2, to: 3 }]);
        tamper(&store, "DELETE FROM audit_events WHERE seq = 1");
        assert_eq!(
            problems(&store),
            [Problem::Deleted { from: 1, to: 3 }],
            "a deleted first event is named too"
        );
    }

    #[test]
    fn verify_names_an_inserted_event() {
        let (_dir, store) = store_with_history();
        let events = store.audit_events().unwrap();
        // A well-formed forgery: right link to event 2, right hash of its own. The
        // events after it are renumbered to make room.
        let mut forged = events[2].clone();
        forged.action = "feature-environment-disabled".into();
        forged.prev_hash = events[1].hash.clone();
        forged.hash = forged.compute_hash();
        tamper(
            &store,
            &format!(
                "UPDATE audit_events SET seq = seq + 100 WHERE seq >= 3;
                 UPDATE audit_events SET seq = seq - 99 WHERE seq >= 100;
                 INSERT INTO audit_events
                    (seq, ts, actor, action, flag, environment, before, after, prev_hash, hash)
                 SELECT 3, ts, actor, '{}', flag, environment, before, after, '{}', '{}'
                 FROM audit_events WHERE seq = 4",
                forged.action, forged.prev_hash, forged.hash
            ),
        );
        let found = problems(&store);
        assert_eq!(found[0], Problem::Inserted { seq: 3 });
        // Renumbering changed the hashed content of every event after it.
        assert_eq!(
            found[1..],
            [
                Problem::Edited { seq: 4 },
                Problem::Edited { seq: 5 },
                Problem::Edited { seq: 6 },
                // The anchor outside the database still names the original event 5.
                Problem::AnchorMismatch { seq: 5 }
            ]
        );
    }

    #[test]
    fn invented_instances_are_capped_and_old_counts_expire() {
        use crate::metrics::{MAX_INSTANCES, RETENTION_MS, parse_registration, parse_report};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("flags.db")).unwrap();
        let now = now_millis();
        {
            let mut conn = store.conn();
            let tx = conn.transaction().unwrap();
            for i in 0..MAX_INSTANCES {
                tx.execute(
                    "INSERT INTO client_instances
                        (app_name, instance_id, environment, strategies, last_seen)
                     VALUES (?1, 'i', 'production', '[]', ?2)",
                    params![format!("app-{i}"), now],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        let reg = |app: &str| {
            parse_registration(
                &serde_json::json!({"appName": app, "instanceId": "i"}),
                "production",
                now,
            )
            .unwrap()
        };
        assert!(matches!(
            store.register_client(&reg("one-too-many")),
            Err(StoreError::Full(_))
        ));
        store.register_client(&reg("app-7")).unwrap();
        // Once instances fall silent for a week they are forgotten, and room returns.
        store
            .conn()
            .execute(
                "UPDATE client_instances SET last_seen = 0 WHERE app_name = 'app-1'",
                [],
            )
            .unwrap();
        store.register_client(&reg("newcomer")).unwrap();

        // Counts past retention go with the first report of a new hour.
        store
            .create_feature(
                DEFAULT_PROJECT,
                &NewFeature {
                    name: "f".into(),
                    ..NewFeature::default()
                },
                &Actor::system(),
            )
            .unwrap();
        let report = |at: i64| {
            parse_report(
                &serde_json::json!({"appName": "app-7", "instanceId": "i",
                    "bucket": {"toggles": {"f": {"yes": 1}}}}),
                "production",
                at,
            )
            .unwrap()
        };
        store
            .record_metrics(&report(now - RETENTION_MS - 7_200_000))
            .unwrap();
        assert_eq!(store.feature_metrics("f", 0).unwrap().len(), 1);
        store.record_metrics(&report(now)).unwrap();
        let rows = store.feature_metrics("f", 0).unwrap();
        assert_eq!(rows.len(), 1, "the expired hour is gone: {rows:?}");
    }

    #[test]
    fn the_anchor_reveals_deleted_newest_events_even_after_reopening() {
        let (dir, store) = store_with_history();
        assert_eq!(problems(&store), [], "an intact chain matches its anchor");
        let last = store.audit_events().unwrap().len() as i64;
        // Deleting the newest events leaves a chain that is intact in itself.
        tamper(
            &store,
            &format!("DELETE FROM audit_events WHERE seq >= {}", last - 1),
        );
        let want = [Problem::Truncated {
            anchored: last,
            last: last - 2,
        }];
        assert_eq!(problems(&store), want);
        drop(store);
        // Reopening must not quietly move the anchor back to the truncated chain.
        let store = SqliteStore::open(&dir.path().join("flags.db")).unwrap();
        assert_eq!(problems(&store), want);
        // Nor does a garbled anchor pass.
        std::fs::write(dir.path().join("flags.db.audit-head"), "{nonsense").unwrap();
        assert!(matches!(
            problems(&store)[..],
            [Problem::AnchorUnreadable { .. }]
        ));
    }

    #[test]
    fn a_failed_change_writes_no_event() {
        let (_dir, store) = store_with_history();
        let ops = Actor("admin:ops".into());
        let again = NewFeature {
            name: "checkout-v2".into(),
            ..NewFeature::default()
        };
        assert!(matches!(
            store.create_feature(DEFAULT_PROJECT, &again, &ops),
            Err(StoreError::FlagExists(_))
        ));
        assert!(matches!(
            store.set_enabled(DEFAULT_PROJECT, "checkout-v2", "production", true, &ops),
            Err(StoreError::UnknownFlag { .. })
        ));
        assert_eq!(store.audit_events().unwrap().len(), 5);
    }
}
