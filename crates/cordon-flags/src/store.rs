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

use rusqlite::{Connection, OptionalExtension, params};
use unleash_types::client_features::{
    ClientFeature, ClientFeatures, FeatureDependency, Segment, Strategy,
};

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
    fn import_state(&self, environment: &str, state: &ClientFeatures) -> Result<()>;
    /// The state of one environment as the client API serves it (segments as a
    /// top-level list, not inlined), restricted to `project` unless it is `*`.
    fn client_state(&self, environment: &str, project: &str) -> Result<ClientFeatures>;
    /// Every stored token.
    fn tokens(&self) -> Result<Vec<TokenRecord>>;
    /// Store a new token.
    fn insert_token(&self, token: &TokenRecord) -> Result<()>;
}

const MIGRATIONS: &[(i64, &str)] = &[(
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
)];

/// The embedded store: one SQLite file in WAL mode.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

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

    fn import_state(&self, environment: &str, state: &ClientFeatures) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db("begin the import"))?;
        let known: Option<String> = tx
            .query_row(
                "SELECT name FROM environments WHERE name = ?1",
                [environment],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("look up the environment"))?;
        if known.is_none() {
            return Err(StoreError::UnknownEnvironment(environment.to_owned()));
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
        tx.commit().map_err(db("commit the import"))
    }

    fn client_state(&self, environment: &str, project: &str) -> Result<ClientFeatures> {
        let conn = self.conn();
        let mut features: BTreeMap<String, ClientFeature> = BTreeMap::new();
        {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT f.name, f.project, f.type, f.description, f.stale,
                            f.impression_data, fe.enabled, fe.variants
                     FROM features f JOIN feature_environments fe ON fe.feature = f.name
                     WHERE fe.environment = ?1 AND NOT f.archived
                       AND (?2 = '*' OR f.project = ?2)",
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
                let parameters: HashMap<String, String> =
                    from_json("strategy parameters", &text(3)?)?;
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

    fn insert_token(&self, token: &TokenRecord) -> Result<()> {
        self.conn()
            .execute(
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
        Ok(())
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
            store.import_state("production", &state).unwrap();
            store
                .insert_token(&TokenRecord {
                    name: "t".into(),
                    token_type: TokenType::Client,
                    project: "*".into(),
                    environment: "production".into(),
                    hash: TokenHash::of("*:production.s"),
                })
                .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.environments().unwrap(), ["development", "production"]);
        let back = store.client_state("production", "*").unwrap();
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
                .features
                .is_empty()
        );
        assert!(
            store
                .client_state("production", "default")
                .unwrap()
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
        store.import_state("development", &state).unwrap();
        assert!(matches!(
            store.import_state("nowhere", &state),
            Err(StoreError::UnknownEnvironment(_))
        ));
        // Duplicate names violate the primary key half-way through: rolled back whole.
        let dup: ClientFeatures = serde_json::from_value(serde_json::json!({
            "version": 2, "features": [{"name": "c", "enabled": true}, {"name": "c", "enabled": false}]
        }))
        .unwrap();
        assert!(store.import_state("development", &dup).is_err());
        let names: Vec<String> = store
            .client_state("development", "*")
            .unwrap()
            .features
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, ["a"]);
    }
}
