//! Persistent flag state and API tokens.
//!
//! [`Store`] is the seam between the HTTP server and the database: every operation the
//! server needs, expressed in the Unleash client-API data model (`unleash-types`).
//! Its logic is written once, in this file, over the small SQL seam of `sql.rs`, and
//! runs on two drivers: [`SqliteStore`], the embedded one (WAL, one file), and
//! [`PgStore`](crate::PgStore), for several replicas sharing one PostgreSQL database.
//!
//! The schema (`schema.rs`) is relational and portable: projects, environments,
//! features, per-environment enabled state and variants, strategies in order,
//! segments, dependencies, tags. Constraint lists, parameters and variant lists are
//! JSON columns (text in SQLite, `jsonb` in PostgreSQL). Tokens are stored as SHA-256
//! hashes only. Every write that changes flag state appends its audit event in the
//! same transaction.
//!
//! What it does not do: authorisation, evaluation, caching. Those belong to the server.

use std::collections::HashMap;

use unleash_types::client_features::{ClientFeatures, FeatureDependency, Strategy, Variant};

use serde::{Deserialize, Serialize};

use crate::audit::{Actor, Change, Event};
use crate::cr;
use crate::metrics::{Application, Counts, MetricsRow, Registration, Report};
use crate::people::{Kind, Principal, Role, User};
use crate::rows;
pub use crate::schema::SCHEMA_VERSION;
use crate::sql::{Columns, Driver, Json, Sql};
pub use crate::sqlite::SqliteStore;
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
    #[error(
        "environment {environment:?} of project {project:?} is protected: this change needs a change request (POST /api/admin/projects/{project}/environments/{environment}/change-requests, or `cordon flags cr`); turning a flag off is always allowed"
    )]
    ChangeRequestRequired {
        project: String,
        environment: String,
    },
    #[error("there is no change request {id} in project {project:?}")]
    UnknownChangeRequest { project: String, id: i64 },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error("there is no user or agent named {0:?}")]
    UnknownUser(String),
    #[error("a user or agent named {0:?} already exists")]
    UserExists(String),
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
        path: std::path::PathBuf,
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
    /// The user or agent an admin token acts for (personal, agent and console
    /// session tokens); `None` for service and SDK tokens.
    pub owner: Option<String>,
    /// When the token stops working (milliseconds since the epoch); console sessions.
    pub expires_ms: Option<i64>,
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
    /// Change a flag's description, type, stale or impression-data marks, and archive
    /// it when the update says `archived: true`; all or nothing.
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
    /// For a store that other processes write to as well: a task that calls
    /// `on_change` whenever the state may have changed without this process knowing,
    /// that is after every change another writer announces and after every reconnect
    /// (changes may have been missed meanwhile). The server runs it for as long as it
    /// serves. `None` for a store only this process writes.
    fn watch_changes(&self, on_change: OnChange) -> Option<ChangeWatch>;

    /// Users and agents, by name.
    fn users(&self) -> Result<Vec<User>>;
    /// Store a new user or agent.
    fn create_user(&self, user: &User, actor: &Actor) -> Result<()>;
    /// Change a user's role or password hash (`None`: leave as is).
    fn update_user(
        &self,
        name: &str,
        role: Option<Role>,
        password_hash: Option<&str>,
        actor: &Actor,
    ) -> Result<()>;
    /// Delete a user or agent and every token it owns.
    fn delete_user(&self, name: &str, actor: &Actor) -> Result<()>;
    /// Change-request settings of every environment of `project`.
    fn change_request_settings(&self, project: &str) -> Result<Vec<cr::Setting>>;
    /// Protect (or stop protecting) one environment of a project.
    fn set_change_request_settings(
        &self,
        project: &str,
        environment: &str,
        enabled: bool,
        required_approvals: i64,
        actor: &Actor,
    ) -> Result<()>;
    /// The change requests of `project`, newest first.
    fn change_requests(&self, project: &str) -> Result<Vec<cr::View>>;
    fn change_request(&self, project: &str, id: i64) -> Result<cr::View>;
    /// Add changes to the caller's draft in (`project`, `environment`), creating it.
    fn submit_changes(
        &self,
        project: &str,
        environment: &str,
        changes: &[cr::NewChange],
        who: &Principal,
    ) -> Result<cr::View>;
    /// Edit, rename, comment on or move (submit, approve, apply...) a request.
    fn update_change_request(
        &self,
        project: &str,
        id: i64,
        update: &cr::Update,
        who: &Principal,
    ) -> Result<cr::View>;
    /// Apply the scheduled requests that are due (suspending stale ones); their ids.
    fn run_schedules(&self, now_ms: i64) -> Result<Vec<i64>>;

    /// Failed logins for `name` in the window that started at most `window_ms`
    /// before `now_ms`, after counting one more when `failed`. A window that has
    /// passed starts again; names whose window passed are forgotten.
    fn login_failures(&self, name: &str, failed: bool, now_ms: i64, window_ms: i64) -> Result<i64>;
}

/// What [`Store::watch_changes`] calls when the state may have changed elsewhere.
pub type OnChange = std::sync::Arc<dyn Fn() + Send + Sync>;
/// The task [`Store::watch_changes`] returns; it runs until dropped.
pub type ChangeWatch = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

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
    /// `Some(true)`: archive the flag too, in the same transaction (Unleash's update
    /// takes `archived`). `Some(false)` leaves a live flag live; an archived flag is
    /// not found by an update, it is revived through the archive API.
    pub archived: Option<bool>,
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

/// A flag is addressed by name, which is global; `*` when no project is known.
pub(crate) fn unknown_flag(project: &str, flag: &str) -> StoreError {
    StoreError::UnknownFlag {
        project: project.to_owned(),
        flag: flag.to_owned(),
    }
}

impl<D: Driver> Store for D {
    fn login_failures(&self, name: &str, failed: bool, now_ms: i64, window_ms: i64) -> Result<i64> {
        let expired = now_ms.saturating_sub(window_ms);
        let count = |c: &dyn Sql| {
            Ok(c.row(
                "count failed logins",
                "SELECT failures FROM login_failures
                 WHERE name = ?1 AND window_start_ms > ?2",
                &[&name, &expired],
                |r| r.int(0),
            )?
            .unwrap_or(0))
        };
        if !failed {
            // The check before a password is verified only reads.
            return self.read(count);
        }
        self.write("count a failed login", |tx| {
            tx.execute(
                "forget failed logins",
                "DELETE FROM login_failures WHERE window_start_ms <= ?1",
                &[&expired],
            )?;
            tx.execute(
                "count a failed login",
                "INSERT INTO login_failures (name, failures, window_start_ms)
                 VALUES (?1, 1, ?2)
                 ON CONFLICT (name) DO UPDATE SET failures = login_failures.failures + 1",
                &[&name, &now_ms],
            )?;
            count(tx)
        })
    }

    fn environments(&self) -> Result<Vec<String>> {
        self.read(|c| {
            c.rows(
                "list environments",
                "SELECT name FROM environments ORDER BY name",
                &[],
                |r| r.text(0),
            )
        })
    }

    fn import_state(&self, environment: &str, state: &ClientFeatures, actor: &Actor) -> Result<()> {
        self.change("import a state", |tx| {
            known_environment(tx, environment)?;
            crate::cr::guard_environment(tx, environment)?;
            let before = read_client_state(tx, environment, "*")?;
            // Strategies that come back unchanged keep their ids, so an export/import
            // round trip does not break ids that tools or people hold.
            let mut kept_ids: HashMap<(String, String), Vec<String>> = HashMap::new();
            for (feature, id, key) in tx.rows(
                "read strategies",
                "SELECT feature, id, name, sort_order, parameters, constraints, variants,
                    segments FROM strategies WHERE environment = ?1 ORDER BY position DESC",
                &[&environment],
                |r| {
                    let key = strategy_key(
                        &r.text(2)?,
                        r.opt_int32(3)?,
                        [
                            &canonical_json(&r.json(4)?),
                            &canonical_json(&r.json(5)?),
                            &canonical_json(&r.json(6)?),
                            &canonical_json(&r.json(7)?),
                        ],
                    );
                    Ok((r.text(0)?, r.opt_text(1)?, key))
                },
            )? {
                if let Some(id) = id {
                    kept_ids.entry((feature, key)).or_default().push(id);
                }
            }
            tx.execute(
                "clear the environment",
                "DELETE FROM feature_environments WHERE environment = ?1",
                &[&environment],
            )?;
            for segment in state.segments.iter().flatten() {
                tx.execute(
                    "store a segment",
                    "INSERT INTO segments (id, constraints) VALUES (?1, ?2)
                     ON CONFLICT (id) DO UPDATE SET constraints = excluded.constraints",
                    &[&segment.id, &Json::of(&segment.constraints)],
                )?;
            }
            for f in &state.features {
                let project = f.project.as_deref().unwrap_or(DEFAULT_PROJECT);
                tx.execute(
                    "create a project",
                    "INSERT INTO projects (name) VALUES (?1) ON CONFLICT (name) DO NOTHING",
                    &[&project],
                )?;
                tx.execute(
                    "store a feature",
                    "INSERT INTO features (name, project, type, description, stale, impression_data)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
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
                )?;
                tx.execute(
                    "store a feature's environment state",
                    "INSERT INTO feature_environments (feature, environment, enabled, variants)
                     VALUES (?1, ?2, ?3, ?4)",
                    &[
                        &f.name,
                        &environment,
                        &f.enabled,
                        &Json::of(&f.variants.clone().unwrap_or_default()),
                    ],
                )?;
                for (position, s) in f.strategies.iter().flatten().enumerate() {
                    let [parameters, constraints, variants, segments] = strategy_json(s);
                    let key = strategy_key(
                        &s.name,
                        s.sort_order,
                        [&parameters.0, &constraints.0, &variants.0, &segments.0],
                    );
                    let id = match kept_ids.get_mut(&(f.name.clone(), key)).and_then(Vec::pop) {
                        Some(id) => id,
                        None => new_id()?,
                    };
                    insert_strategy(
                        tx,
                        &f.name,
                        environment,
                        position,
                        &id,
                        s,
                        [parameters, constraints, variants, segments],
                    )?;
                }
                tx.execute(
                    "clear a feature's dependencies",
                    "DELETE FROM feature_dependencies WHERE child = ?1",
                    &[&f.name],
                )?;
                for (position, d) in f.dependencies.iter().flatten().enumerate() {
                    tx.execute(
                        "store a dependency",
                        "INSERT INTO feature_dependencies (child, parent, enabled, variants, position)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                        &[
                            &f.name,
                            &d.feature,
                            &d.enabled,
                            &d.variants.as_ref().map(Json::of),
                            &(position as i64),
                        ],
                    )?;
                }
            }
            let after = read_client_state(tx, environment, "*")?;
            append_event(
                tx,
                actor,
                Change::new("state-imported")
                    .environment(environment)
                    .before(&before)
                    .after(&after),
            )
        })
    }

    fn client_state(&self, environment: &str, project: &str) -> Result<(ClientFeatures, u64)> {
        self.read_consistent(|c| {
            let state = read_client_state(c, environment, project)?;
            Ok((state, read_revision(c)?))
        })
    }

    fn revision(&self) -> Result<u64> {
        self.read(read_revision)
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>> {
        let rows = self.read(|c| {
            c.rows(
                "list tokens",
                "SELECT name, type, project, environment, hash, owner, expires_ms
                 FROM api_tokens",
                &[],
                |r| {
                    Ok(
                        rows::token(r.text(0)?, &r.text(1)?, r.text(2)?, r.text(3)?, r.bytes(4)?)
                            .map(|t| TokenRecord {
                                owner: r.opt_text(5).ok().flatten(),
                                expires_ms: r.opt_int(6).ok().flatten(),
                                ..t
                            }),
                    )
                },
            )
        })?;
        Ok(rows.into_iter().flatten().collect())
    }

    fn insert_token(&self, token: &TokenRecord, actor: &Actor) -> Result<()> {
        self.change("store a token", |tx| {
            tx.execute(
                "store a token",
                "INSERT INTO api_tokens
                    (hash, name, type, project, environment, owner, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                &[
                    &token.hash.0.as_slice(),
                    &token.name,
                    &token.token_type.as_str(),
                    &token.project,
                    &token.environment,
                    &token.owner,
                    &token.expires_ms,
                ],
            )?;
            if token.expires_ms.is_some() {
                // Console sessions and personal tokens: expired ones are dropped as new
                // ones start. Expired API tokens stay listed (as Unleash lists them)
                // until an admin deletes them; they authenticate nothing.
                tx.execute(
                    "drop expired sessions",
                    "DELETE FROM api_tokens WHERE expires_ms IS NOT NULL AND expires_ms < ?1
                        AND owner IS NOT NULL",
                    &[&rows::now_millis()],
                )?;
            }
            append_event(tx, actor, Change::token_created(token))
        })
    }

    fn create_feature(&self, project: &str, feature: &NewFeature, actor: &Actor) -> Result<()> {
        self.change("create a flag", |tx| {
            if !tx.exists(
                "look up the project",
                "SELECT 1 FROM projects WHERE name = ?1",
                &[&project],
            )? {
                return Err(StoreError::UnknownProject(project.to_owned()));
            }
            if feature_project(tx, &feature.name)?.is_some() {
                return Err(StoreError::FlagExists(feature.name.clone()));
            }
            tx.execute(
                "store a flag",
                "INSERT INTO features (name, project, type, description, impression_data)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                &[
                    &feature.name,
                    &project,
                    &feature.feature_type,
                    &feature.description,
                    &feature.impression_data,
                ],
            )?;
            tx.execute(
                "store a flag's environments",
                "INSERT INTO feature_environments (feature, environment, enabled, variants)
                 SELECT ?1, name, FALSE, '[]' FROM environments",
                &[&feature.name],
            )?;
            let after = read_features(tx, project, Some(&feature.name))?;
            append_event(
                tx,
                actor,
                Change::new("feature-created")
                    .flag(&feature.name)
                    .after_if(after.first()),
            )
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
        self.change("switch a flag", |tx| {
            live_feature(tx, project, flag)?;
            known_environment(tx, environment)?;
            let before = tx.row(
                "read a flag's state",
                "SELECT enabled FROM feature_environments WHERE feature = ?1 AND environment = ?2",
                &[&flag, &environment],
                |r| r.flag(0),
            )?;
            if before == Some(enabled) {
                return Ok(false);
            }
            // Turning on needs four eyes where the environment is protected; turning
            // off never waits (break-glass), and says so in the log.
            let break_glass = if enabled {
                crate::cr::guard(tx, project, environment)?;
                false
            } else {
                crate::cr::required_approvals(tx, project, environment)?.is_some()
            };
            tx.execute(
                "switch a flag",
                "INSERT INTO feature_environments (feature, environment, enabled, variants)
                 VALUES (?1, ?2, ?3, '[]')
                 ON CONFLICT (feature, environment) DO UPDATE SET enabled = excluded.enabled",
                &[&flag, &environment, &enabled],
            )?;
            let mut change = Change::switched(flag, environment, before, enabled);
            if break_glass {
                change = change.after(serde_json::json!({ "enabled": false, "breakGlass": true }));
            }
            append_event(tx, actor, change)?;
            Ok(true)
        })
    }

    fn archive_feature(&self, project: &str, flag: &str, actor: &Actor) -> Result<()> {
        self.change("archive a flag", |tx| {
            live_feature(tx, project, flag)?;
            archive_in(tx, project, flag, actor)
        })
    }

    fn features(&self, project: &str) -> Result<Vec<FeatureSummary>> {
        self.read(|c| read_features(c, project, None))
    }

    fn audit_events(&self) -> Result<Vec<Event>> {
        self.read(|c| {
            c.rows(
                "read the audit log",
                "SELECT seq, ts, actor, action, flag, environment, before, after, prev_hash, hash
                 FROM audit_events ORDER BY seq",
                &[],
                |r| {
                    Ok(Event {
                        seq: r.int(0)?,
                        ts: r.int(1)?,
                        actor: r.text(2)?,
                        action: r.text(3)?,
                        flag: r.opt_text(4)?,
                        environment: r.opt_text(5)?,
                        before: r.opt_text(6)?,
                        after: r.opt_text(7)?,
                        prev_hash: r.text(8)?,
                        hash: r.text(9)?,
                    })
                },
            )
        })
    }

    fn register_client(&self, r: &Registration) -> Result<()> {
        self.write("record a client registration", |tx| {
            admit_instance(tx, &r.app_name, &r.instance_id, &r.environment)?;
            tx.execute(
                "record a client registration",
                "INSERT INTO client_instances
                    (app_name, instance_id, environment, sdk_version, strategies, interval_ms,
                     last_seen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (app_name, instance_id, environment) DO UPDATE SET
                    sdk_version = excluded.sdk_version, strategies = excluded.strategies,
                    interval_ms = excluded.interval_ms, last_seen = excluded.last_seen",
                &[
                    &r.app_name,
                    &r.instance_id,
                    &r.environment,
                    &r.sdk_version,
                    &Json::of(&r.strategies),
                    &r.interval.map(rows::clamp),
                    &r.seen_ms,
                ],
            )
            .map(drop)
        })
    }

    fn record_metrics(&self, report: &Report) -> Result<usize> {
        self.write("record metrics", |tx| {
            admit_instance(
                tx,
                &report.app_name,
                &report.instance_id,
                &report.environment,
            )?;
            // The first report of an hour drops counts past their retention.
            let new_hour = !tx.exists(
                "read metrics",
                "SELECT 1 FROM feature_metrics WHERE hour = ?1",
                &[&report.hour_ms],
            )?;
            if new_hour {
                tx.execute(
                    "expire metrics",
                    "DELETE FROM feature_metrics WHERE hour < ?1",
                    &[&(report.hour_ms - crate::metrics::RETENTION_MS)],
                )?;
            }
            let mut counted = 0;
            // In flag-name order (a BTreeMap), so two reports lock rows in one order.
            for (flag, counts) in &report.toggles {
                if !tx.exists(
                    "look up a counted flag",
                    "SELECT 1 FROM features WHERE name = ?1",
                    &[flag],
                )? {
                    continue;
                }
                add_counts(tx, flag, report, counts)?;
                counted += 1;
            }
            // A report also says the instance is alive.
            tx.execute(
                "record a reporting instance",
                "INSERT INTO client_instances
                    (app_name, instance_id, environment, strategies, last_seen)
                 VALUES (?1, ?2, ?3, '[]', ?4)
                 ON CONFLICT (app_name, instance_id, environment) DO UPDATE SET
                    last_seen = excluded.last_seen",
                &[
                    &report.app_name,
                    &report.instance_id,
                    &report.environment,
                    &rows::now_millis(),
                ],
            )?;
            Ok(counted)
        })
    }

    fn feature_metrics(&self, flag: &str, since_ms: i64) -> Result<Vec<MetricsRow>> {
        let rows = self.read(|c| {
            c.rows(
                "read metrics",
                "SELECT app_name, environment, hour, yes, no, variants FROM feature_metrics
                 WHERE feature = ?1 AND hour >= ?2 ORDER BY hour, environment, app_name",
                &[&flag, &since_ms],
                |r| {
                    Ok(rows::CountsRow {
                        app_name: r.text(0)?,
                        environment: r.text(1)?,
                        hour: r.int(2)?,
                        yes: r.int(3)?,
                        no: r.int(4)?,
                        variants: r.json(5)?,
                    })
                },
            )
        })?;
        rows::metrics(flag, rows)
    }

    fn applications(&self) -> Result<Vec<Application>> {
        let rows = self.read(|c| {
            c.rows(
                "list applications",
                "SELECT app_name, instance_id, environment, sdk_version, strategies, last_seen
                 FROM client_instances ORDER BY app_name, instance_id, environment",
                &[],
                |r| {
                    Ok(rows::InstanceRow {
                        app_name: r.text(0)?,
                        instance_id: r.text(1)?,
                        environment: r.text(2)?,
                        sdk_version: r.opt_text(3)?,
                        strategies: r.json(4)?,
                        last_seen: r.int(5)?,
                    })
                },
            )
        })?;
        rows::applications(rows)
    }

    fn feature_environment(
        &self,
        project: &str,
        flag: &str,
        environment: &str,
    ) -> Result<EnvConfig> {
        self.read_consistent(|c| {
            live_feature(c, project, flag)?;
            known_environment(c, environment)?;
            read_env_config(c, flag, environment)
        })
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
        self.change("change a flag", |tx| {
            live_feature(tx, project, flag)?;
            known_environment(tx, environment)?;
            crate::cr::guard(tx, project, environment)?;
            let before = read_env_config(tx, flag, environment)?;
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
            write_env_config(tx, flag, environment, &after)?;
            append_event(
                tx,
                actor,
                Change::new(action)
                    .flag(flag)
                    .environment(environment)
                    .before(b)
                    .after(a),
            )?;
            Ok(after)
        })
    }

    fn update_feature(
        &self,
        project: &str,
        flag: &str,
        update: &FeatureUpdate,
        actor: &Actor,
    ) -> Result<()> {
        self.change("update a flag", |tx| {
            live_feature(tx, project, flag)?;
            let one = |tx: &dyn Sql| {
                read_features(tx, project, Some(flag))?
                    .into_iter()
                    .next()
                    .ok_or_else(|| unknown_flag(project, flag))
            };
            let before = one(tx)?;
            tx.execute(
                "update a flag",
                "UPDATE features SET description = COALESCE(?2, description),
                    type = COALESCE(?3, type), stale = COALESCE(?4, stale),
                    impression_data = COALESCE(?5, impression_data)
                 WHERE name = ?1",
                &[
                    &flag,
                    &update.description,
                    &update.feature_type,
                    &update.stale,
                    &update.impression_data,
                ],
            )?;
            let after = one(tx)?;
            if after != before {
                append_event(
                    tx,
                    actor,
                    Change::new("feature-updated")
                        .flag(flag)
                        .before(serde_json::to_value(&before).unwrap_or_default())
                        .after(serde_json::to_value(&after).unwrap_or_default()),
                )?;
            }
            if update.archived == Some(true) {
                archive_in(tx, project, flag, actor)?;
            }
            Ok(())
        })
    }

    fn delete_token(&self, hash: &TokenHash, actor: &Actor) -> Result<bool> {
        self.change("delete a token", |tx| {
            let hash = hash.0.as_slice();
            let Some(before) = tx.row(
                "look up a token",
                "SELECT name, type, project, environment FROM api_tokens WHERE hash = ?1",
                &[&hash],
                |r| {
                    Ok(serde_json::json!({
                        "tokenName": r.text(0)?, "type": r.text(1)?,
                        "project": r.text(2)?, "environment": r.text(3)?
                    }))
                },
            )?
            else {
                return Ok(false);
            };
            tx.execute(
                "delete a token",
                "DELETE FROM api_tokens WHERE hash = ?1",
                &[&hash],
            )?;
            append_event(tx, actor, Change::new("api-token-deleted").before(before))?;
            Ok(true)
        })
    }

    fn audit_anchor(&self) -> Result<Option<crate::audit::Anchor>> {
        Driver::audit_anchor(self)
    }

    fn create_environment(&self, name: &str, actor: &Actor) -> Result<()> {
        self.change("create an environment", |tx| {
            let n = tx.execute(
                "create an environment",
                "INSERT INTO environments (name) VALUES (?1) ON CONFLICT (name) DO NOTHING",
                &[&name],
            )?;
            if n == 0 {
                return Err(StoreError::EnvironmentExists(name.to_owned()));
            }
            tx.execute(
                "add the environment to every flag",
                "INSERT INTO feature_environments (feature, environment, enabled, variants)
                 SELECT name, ?1, FALSE, '[]' FROM features",
                &[&name],
            )?;
            append_event(
                tx,
                actor,
                Change::new("environment-created")
                    .environment(name)
                    .after(serde_json::json!({ "name": name })),
            )
        })
    }

    fn segments(&self) -> Result<Vec<AdminSegment>> {
        self.read(read_segments)
    }

    fn save_segment(&self, segment: &AdminSegment, actor: &Actor) -> Result<i32> {
        self.change("save a segment", |tx| {
            if segment.id != 0 {
                crate::cr::guard_segment(tx, segment.id)?;
            }
            write_segment(tx, segment, actor)
        })
    }

    fn delete_segment(&self, id: i32, actor: &Actor) -> Result<()> {
        self.change("delete a segment", |tx| {
            crate::cr::guard_segment(tx, id)?;
            let Some(before) = read_segments(tx)?.into_iter().find(|s| s.id == id) else {
                return Err(StoreError::UnknownSegment(id));
            };
            let mut flags = Vec::new();
            for (flag, segments) in tx.rows(
                "look for segment users",
                "SELECT DISTINCT feature, segments FROM strategies",
                &[],
                |r| Ok((r.text(0)?, r.json(1)?)),
            )? {
                let ids: Vec<i32> = rows::from_json("strategy segments", &segments)?;
                if ids.contains(&id) && !flags.contains(&flag) {
                    flags.push(flag);
                }
            }
            if !flags.is_empty() {
                flags.sort();
                return Err(StoreError::SegmentInUse { id, flags });
            }
            tx.execute(
                "delete a segment",
                "DELETE FROM segments WHERE id = ?1",
                &[&id],
            )?;
            append_event(tx, actor, Change::new("segment-deleted").before(before))
        })
    }

    fn archived_features(&self) -> Result<Vec<FeatureSummary>> {
        self.read(|c| read_features_where(c, None, None, true))
    }

    fn revive_feature(&self, flag: &str, actor: &Actor) -> Result<()> {
        self.change("revive a flag", |tx| {
            if feature_project(tx, flag)?.is_none_or(|(_, archived)| !archived) {
                return Err(StoreError::NotArchived(flag.to_owned()));
            }
            tx.execute(
                "revive a flag",
                "UPDATE features SET archived = FALSE WHERE name = ?1",
                &[&flag],
            )?;
            tx.execute(
                "revive a flag",
                "UPDATE feature_environments SET enabled = FALSE WHERE feature = ?1",
                &[&flag],
            )?;
            append_event(
                tx,
                actor,
                Change::new("feature-revived")
                    .flag(flag)
                    .before(serde_json::json!({ "archived": true }))
                    .after(serde_json::json!({ "archived": false, "enabled": false })),
            )
        })
    }

    fn delete_archived_feature(&self, flag: &str, actor: &Actor) -> Result<()> {
        self.change("delete a flag", |tx| {
            let Some((project, true)) = feature_project(tx, flag)? else {
                return Err(StoreError::NotArchived(flag.to_owned()));
            };
            let before = read_features_where(tx, Some(&project), Some(flag), true)?;
            tx.execute(
                "delete a flag",
                "DELETE FROM feature_dependencies WHERE parent = ?1",
                &[&flag],
            )?;
            tx.execute(
                "delete a flag",
                "DELETE FROM features WHERE name = ?1",
                &[&flag],
            )?;
            append_event(
                tx,
                actor,
                Change::new("feature-deleted")
                    .flag(flag)
                    .before_if(before.first()),
            )
        })
    }

    fn tags(&self, flag: &str) -> Result<Vec<(String, String)>> {
        self.read(|c| {
            if feature_project(c, flag)?.is_none() {
                return Err(unknown_flag("*", flag));
            }
            c.rows(
                "list tags",
                "SELECT type, value FROM feature_tags WHERE feature = ?1 ORDER BY 1, 2",
                &[&flag],
                |r| Ok((r.text(0)?, r.text(1)?)),
            )
        })
    }

    fn add_tag(&self, flag: &str, tag_type: &str, value: &str, actor: &Actor) -> Result<bool> {
        self.change("tag a flag", |tx| {
            if feature_project(tx, flag)?.is_none() {
                return Err(unknown_flag("*", flag));
            }
            let n = tx.execute(
                "tag a flag",
                "INSERT INTO feature_tags (feature, type, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT DO NOTHING",
                &[&flag, &tag_type, &value],
            )?;
            if n == 0 {
                return Ok(false);
            }
            append_event(
                tx,
                actor,
                Change::new("feature-tagged")
                    .flag(flag)
                    .after(serde_json::json!({ "type": tag_type, "value": value })),
            )?;
            Ok(true)
        })
    }

    fn remove_tag(&self, flag: &str, tag_type: &str, value: &str, actor: &Actor) -> Result<bool> {
        self.change("untag a flag", |tx| {
            let n = tx.execute(
                "untag a flag",
                "DELETE FROM feature_tags WHERE feature = ?1 AND type = ?2 AND value = ?3",
                &[&flag, &tag_type, &value],
            )?;
            if n == 0 {
                return Ok(false);
            }
            append_event(
                tx,
                actor,
                Change::new("feature-untagged")
                    .flag(flag)
                    .before(serde_json::json!({ "type": tag_type, "value": value })),
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
        self.change("add a dependency", |tx| {
            guard_project_dependencies(tx, project)?;
            write_dependency(tx, project, child, dependency, actor)
        })
    }

    fn remove_dependency(
        &self,
        project: &str,
        child: &str,
        parent: Option<&str>,
        actor: &Actor,
    ) -> Result<()> {
        self.change("remove a dependency", |tx| {
            guard_project_dependencies(tx, project)?;
            drop_dependency(tx, project, child, parent, actor)
        })
    }

    fn projects(&self) -> Result<Vec<String>> {
        self.read(|c| {
            c.rows(
                "list projects",
                "SELECT name FROM projects ORDER BY name",
                &[],
                |r| r.text(0),
            )
        })
    }

    fn create_project(&self, name: &str, actor: &Actor) -> Result<()> {
        self.change("create a project", |tx| {
            let n = tx.execute(
                "create a project",
                "INSERT INTO projects (name) VALUES (?1) ON CONFLICT (name) DO NOTHING",
                &[&name],
            )?;
            if n == 0 {
                return Err(StoreError::ProjectExists(name.to_owned()));
            }
            append_event(
                tx,
                actor,
                Change::new("project-created").after(serde_json::json!({ "id": name })),
            )
        })
    }

    fn users(&self) -> Result<Vec<User>> {
        self.read(|c| {
            c.rows(
                "list users",
                "SELECT name, kind, role, password_hash, session, created_ms FROM users
                 ORDER BY name",
                &[],
                |r| {
                    let (kind, role) = (r.text(1)?, r.text(2)?);
                    Ok(User {
                        name: r.text(0)?,
                        kind: if kind == "agent" {
                            Kind::Agent
                        } else {
                            Kind::User
                        },
                        // An unknown stored role grants the least.
                        role: Role::parse(&role).unwrap_or(Role::Viewer),
                        password_hash: r.opt_text(3)?,
                        session: r.opt_text(4)?,
                        created_ms: r.int(5)?,
                    })
                },
            )
        })
    }

    fn create_user(&self, user: &User, actor: &Actor) -> Result<()> {
        self.change("create a user", |tx| {
            if tx.exists(
                "look up a user",
                "SELECT 1 FROM users WHERE name = ?1",
                &[&user.name],
            )? {
                return Err(StoreError::UserExists(user.name.clone()));
            }
            tx.execute(
                "store a user",
                "INSERT INTO users (name, kind, role, password_hash, session, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                &[
                    &user.name,
                    &user.kind.as_str(),
                    &user.role.as_str(),
                    &user.password_hash,
                    &user.session,
                    &user.created_ms,
                ],
            )?;
            append_event(
                tx,
                actor,
                Change::new(if user.kind == Kind::Agent {
                    "agent-created"
                } else {
                    "user-created"
                })
                .after(serde_json::json!({
                    "username": user.name,
                    "kind": user.kind.as_str(),
                    "role": user.role.as_str(),
                    "session": user.session,
                    "password": user.password_hash.is_some(),
                })),
            )
        })
    }

    fn update_user(
        &self,
        name: &str,
        role: Option<Role>,
        password_hash: Option<&str>,
        actor: &Actor,
    ) -> Result<()> {
        self.change("update a user", |tx| {
            let Some(before) = tx.row(
                "read a user",
                "SELECT role FROM users WHERE name = ?1 AND kind = 'user'",
                &[&name],
                |r| r.text(0),
            )?
            else {
                return Err(StoreError::UnknownUser(name.to_owned()));
            };
            tx.execute(
                "update a user",
                "UPDATE users SET role = COALESCE(?2, role),
                    password_hash = COALESCE(?3, password_hash) WHERE name = ?1",
                &[&name, &role.map(Role::as_str), &password_hash],
            )?;
            append_event(
                tx,
                actor,
                Change::new("user-updated")
                    .before(serde_json::json!({ "username": name, "role": before }))
                    .after(serde_json::json!({
                        "username": name,
                        "role": role.map_or(before.clone(), |r| r.as_str().to_owned()),
                        "passwordChanged": password_hash.is_some(),
                    })),
            )
        })
    }

    fn delete_user(&self, name: &str, actor: &Actor) -> Result<()> {
        self.change("delete a user", |tx| {
            let Some((kind, role)) = tx.row(
                "read a user",
                "SELECT kind, role FROM users WHERE name = ?1",
                &[&name],
                |r| Ok((r.text(0)?, r.text(1)?)),
            )?
            else {
                return Err(StoreError::UnknownUser(name.to_owned()));
            };
            let tokens = tx.execute(
                "delete a user's tokens",
                "DELETE FROM api_tokens WHERE owner = ?1",
                &[&name],
            )?;
            tx.execute(
                "delete a user",
                "DELETE FROM users WHERE name = ?1",
                &[&name],
            )?;
            append_event(
                tx,
                actor,
                Change::new("user-deleted")
                    .before(serde_json::json!({ "username": name, "kind": kind, "role": role }))
                    .after(serde_json::json!({ "tokensDeleted": tokens })),
            )
        })
    }

    fn change_request_settings(&self, project: &str) -> Result<Vec<cr::Setting>> {
        self.read(|c| cr::settings(c, project))
    }

    fn set_change_request_settings(
        &self,
        project: &str,
        environment: &str,
        enabled: bool,
        required_approvals: i64,
        actor: &Actor,
    ) -> Result<()> {
        self.change("change a change-request setting", |tx| {
            cr::set_settings(tx, project, environment, enabled, required_approvals, actor)
        })
    }

    fn change_requests(&self, project: &str) -> Result<Vec<cr::View>> {
        self.read_consistent(|c| {
            cr::list(c, project)?
                .into_iter()
                .map(|r| cr::view(c, r))
                .collect()
        })
    }

    fn change_request(&self, project: &str, id: i64) -> Result<cr::View> {
        self.read_consistent(|c| cr::view(c, cr::load(c, project, id)?))
    }

    fn submit_changes(
        &self,
        project: &str,
        environment: &str,
        changes: &[cr::NewChange],
        who: &Principal,
    ) -> Result<cr::View> {
        self.change("open a change request", |tx| {
            let id = cr::submit_changes(tx, project, environment, changes, who)?;
            cr::view(tx, cr::load(tx, project, id)?)
        })
    }

    fn update_change_request(
        &self,
        project: &str,
        id: i64,
        update: &cr::Update,
        who: &Principal,
    ) -> Result<cr::View> {
        self.change("update a change request", |tx| {
            cr::update(tx, project, id, update, who)?;
            cr::view(tx, cr::load(tx, project, id)?)
        })
    }

    fn run_schedules(&self, now_ms: i64) -> Result<Vec<i64>> {
        // Most ticks find nothing due: look before taking the write lock.
        let due = self.read(|c| {
            c.exists(
                "look for scheduled change requests",
                "SELECT 1 FROM change_requests WHERE state = 'Scheduled'",
                &[],
            )
        })?;
        if !due {
            return Ok(Vec::new());
        }
        self.change("run scheduled change requests", |tx| {
            cr::run_schedules(tx, now_ms)
        })
    }

    fn watch_changes(&self, on_change: OnChange) -> Option<ChangeWatch> {
        Driver::watch_changes(self, on_change)
    }
}

/// Let a new SDK instance in only while fewer than [`crate::metrics::MAX_INSTANCES`]
/// are remembered (after forgetting the long-silent ones), so a client token cannot
/// fill the database with invented application names.
fn admit_instance(tx: &dyn Sql, app: &str, instance: &str, environment: &str) -> Result<()> {
    use crate::metrics::{INSTANCE_TTL_MS, MAX_INSTANCES};
    if tx.exists(
        "look up an instance",
        "SELECT 1 FROM client_instances
         WHERE app_name = ?1 AND instance_id = ?2 AND environment = ?3",
        &[&app, &instance, &environment],
    )? {
        return Ok(());
    }
    tx.execute(
        "forget silent instances",
        "DELETE FROM client_instances WHERE last_seen < ?1",
        &[&(rows::now_millis() - INSTANCE_TTL_MS)],
    )?;
    let count = tx
        .row(
            "count instances",
            "SELECT COUNT(*) FROM client_instances",
            &[],
            |r| r.int(0),
        )?
        .unwrap_or(0);
    if count >= MAX_INSTANCES {
        return Err(StoreError::Full(format!(
            "{MAX_INSTANCES} SDK instances are registered already; new ones are refused until \
             silent ones expire (after 7 days)"
        )));
    }
    Ok(())
}

/// Add `counts` to the stored counts of one flag in one hour. The row is created if
/// missing and locked (by a no-op update) before it is read, so two servers adding
/// to the same hour at once both count.
fn add_counts(tx: &dyn Sql, flag: &str, report: &Report, counts: &Counts) -> Result<()> {
    let key: [&dyn crate::sql::Param; 4] = [
        &flag,
        &report.environment,
        &report.app_name,
        &report.hour_ms,
    ];
    tx.execute(
        "store metrics",
        "INSERT INTO feature_metrics (feature, environment, app_name, hour, yes, no, variants)
         VALUES (?1, ?2, ?3, ?4, 0, 0, '{}')
         ON CONFLICT (feature, hour, environment, app_name) DO UPDATE SET yes = feature_metrics.yes",
        &key,
    )?;
    let old = tx.row(
        "read metrics",
        "SELECT yes, no, variants FROM feature_metrics
         WHERE feature = ?1 AND environment = ?2 AND app_name = ?3 AND hour = ?4",
        &key,
        |r| rows::counts(r.int(0)?, r.int(1)?, &r.json(2)?),
    )?;
    let mut total = old.unwrap_or_default();
    total.add(counts);
    tx.execute(
        "store metrics",
        "UPDATE feature_metrics SET yes = ?5, no = ?6, variants = ?7
         WHERE feature = ?1 AND environment = ?2 AND app_name = ?3 AND hour = ?4",
        &[
            key[0],
            key[1],
            key[2],
            key[3],
            &rows::clamp(total.yes),
            &rows::clamp(total.no),
            &Json::of(&total.variants),
        ],
    )?;
    Ok(())
}

/// A strategy's JSON columns: parameters, constraints, variants, segments.
fn strategy_json(s: &Strategy) -> [Json; 4] {
    [
        Json::of(&s.parameters.clone().unwrap_or_default()),
        Json::of(&s.constraints.clone().unwrap_or_default()),
        Json::of(&s.variants.clone().unwrap_or_default()),
        Json::of(&s.segments.clone().unwrap_or_default()),
    ]
}

/// What makes two strategies of one flag the same, for keeping ids across an import.
fn strategy_key(name: &str, sort_order: Option<i32>, json: [&str; 4]) -> String {
    let [parameters, constraints, variants, segments] = json;
    format!(
        "{name}\u{0}{sort_order:?}\u{0}{parameters}\u{0}{constraints}\u{0}{variants}\u{0}{segments}"
    )
}

/// JSON text as [`Json::of`] writes it, whatever the database did to its spacing and
/// key order (`jsonb` normalizes both).
fn canonical_json(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .map_or_else(|_| text.to_owned(), |v| v.to_string())
}

fn insert_strategy(
    tx: &dyn Sql,
    flag: &str,
    environment: &str,
    position: usize,
    id: &str,
    s: &Strategy,
    json: [Json; 4],
) -> Result<()> {
    let [parameters, constraints, variants, segments] = json;
    tx.execute(
        "store a strategy",
        "INSERT INTO strategies (feature, environment, position, name, sort_order,
            parameters, constraints, variants, segments, id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        &[
            &flag,
            &environment,
            &(position as i64),
            &s.name,
            &s.sort_order,
            &parameters,
            &constraints,
            &variants,
            &segments,
            &id,
        ],
    )
    .map(drop)
}

pub(crate) fn read_segments(c: &dyn Sql) -> Result<Vec<AdminSegment>> {
    c.rows(
        "list segments",
        "SELECT id, name, description, constraints FROM segments ORDER BY id",
        &[],
        |r| {
            let id = r.int32(0)?;
            Ok(AdminSegment {
                id,
                // Segments that came in through a state import have no name.
                name: r.opt_text(1)?.unwrap_or_else(|| format!("segment-{id}")),
                description: r.opt_text(2)?,
                constraints: rows::from_json("segment constraints", &r.json(3)?)?,
            })
        },
    )
}

fn dependency(r: &dyn Columns, first: usize) -> Result<FeatureDependency> {
    Ok(FeatureDependency {
        feature: r.text(first)?,
        enabled: r.opt_flag(first + 1)?,
        variants: r
            .opt_json(first + 2)?
            .map(|v| rows::from_json("dependency variants", &v))
            .transpose()?,
    })
}

pub(crate) fn read_dependencies(c: &dyn Sql, child: &str) -> Result<Vec<FeatureDependency>> {
    c.rows(
        "read dependencies",
        "SELECT parent, enabled, variants FROM feature_dependencies
         WHERE child = ?1 ORDER BY position",
        &[&child],
        |r| dependency(r, 0),
    )
}

/// Name, sort order, parameters, constraints, variants, segments from `first` on.
fn strategy(r: &dyn Columns, first: usize) -> Result<Strategy> {
    let segments: Vec<i32> = rows::from_json("strategy segments", &r.json(first + 5)?)?;
    Ok(Strategy {
        name: r.text(first)?,
        sort_order: r.opt_int32(first + 1)?,
        parameters: Some(rows::from_json("strategy parameters", &r.json(first + 2)?)?),
        constraints: Some(rows::from_json(
            "strategy constraints",
            &r.json(first + 3)?,
        )?),
        variants: Some(rows::from_json("strategy variants", &r.json(first + 4)?)?),
        segments: (!segments.is_empty()).then_some(segments),
    })
}

pub(crate) fn read_env_config(c: &dyn Sql, flag: &str, environment: &str) -> Result<EnvConfig> {
    let Some((enabled, variants)) = c.row(
        "read a flag's environment",
        "SELECT enabled, variants FROM feature_environments
         WHERE feature = ?1 AND environment = ?2",
        &[&flag, &environment],
        |r| Ok((r.flag(0)?, r.json(1)?)),
    )?
    else {
        return Ok(EnvConfig {
            enabled: false,
            variants: Vec::new(),
            strategies: Vec::new(),
        });
    };
    let strategies = c.rows(
        "read strategies",
        "SELECT id, name, sort_order, parameters, constraints, variants, segments
         FROM strategies WHERE feature = ?1 AND environment = ?2 ORDER BY position",
        &[&flag, &environment],
        |r| {
            Ok(AdminStrategy {
                id: r.opt_text(0)?.unwrap_or_default(),
                strategy: strategy(r, 1)?,
            })
        },
    )?;
    Ok(EnvConfig {
        enabled,
        variants: rows::from_json("flag variants", &variants)?,
        strategies,
    })
}

pub(crate) fn write_env_config(
    tx: &dyn Sql,
    flag: &str,
    environment: &str,
    c: &EnvConfig,
) -> Result<()> {
    for id in c
        .strategies
        .iter()
        .flat_map(|s| s.strategy.segments.iter().flatten())
    {
        if !tx.exists(
            "look up a segment",
            "SELECT 1 FROM segments WHERE id = ?1",
            &[id],
        )? {
            return Err(StoreError::UnknownSegment(*id));
        }
    }
    tx.execute(
        "store a flag's environment",
        "INSERT INTO feature_environments (feature, environment, enabled, variants)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (feature, environment) DO UPDATE SET
            enabled = excluded.enabled, variants = excluded.variants",
        &[&flag, &environment, &c.enabled, &Json::of(&c.variants)],
    )?;
    tx.execute(
        "replace strategies",
        "DELETE FROM strategies WHERE feature = ?1 AND environment = ?2",
        &[&flag, &environment],
    )?;
    for (position, s) in c.strategies.iter().enumerate() {
        insert_strategy(
            tx,
            flag,
            environment,
            position,
            &s.id,
            &s.strategy,
            strategy_json(&s.strategy),
        )?;
    }
    Ok(())
}

fn read_revision(c: &dyn Sql) -> Result<u64> {
    let newest = c.row(
        "read the revision",
        "SELECT COALESCE(MAX(seq), 0) FROM audit_events",
        &[],
        |r| r.int(0),
    )?;
    Ok(newest.unwrap_or(0).max(0) as u64)
}

/// `project` is `*`, one project, or several separated by commas.
fn read_client_state(c: &dyn Sql, environment: &str, project: &str) -> Result<ClientFeatures> {
    let mut features = c.rows(
        "read features",
        "SELECT f.name, f.project, f.type, f.description, f.stale,
                f.impression_data, fe.enabled, fe.variants
         FROM features f JOIN feature_environments fe ON fe.feature = f.name
         WHERE fe.environment = ?1 AND NOT f.archived",
        &[&environment],
        |r| {
            Ok(rows::FeatureRow {
                flag: rows::Flag::read(r)?,
                enabled: r.flag(6)?,
                variants: r.json(7)?,
            })
        },
    )?;
    if project != "*" {
        features.retain(|f| project.split(',').any(|p| p == f.flag.project));
    }
    let strategies = c.rows(
        "read strategies",
        "SELECT feature, name, sort_order, parameters, constraints, variants, segments
         FROM strategies WHERE environment = ?1 ORDER BY feature, position",
        &[&environment],
        |r| Ok((r.text(0)?, strategy(r, 1)?)),
    )?;
    let dependencies = c.rows(
        "read dependencies",
        "SELECT child, parent, enabled, variants FROM feature_dependencies
         ORDER BY child, position",
        &[],
        |r| Ok((r.text(0)?, dependency(r, 1)?)),
    )?;
    let segments = c.rows(
        "read segments",
        "SELECT id, constraints FROM segments ORDER BY id",
        &[],
        |r| {
            Ok(unleash_types::client_features::Segment {
                id: r.int32(0)?,
                constraints: rows::from_json("segment constraints", &r.json(1)?)?,
            })
        },
    )?;
    rows::client_state(features, strategies, dependencies, segments)
}

/// Non-archived flags of `project` (or just `only`), with their environments.
fn read_features(c: &dyn Sql, project: &str, only: Option<&str>) -> Result<Vec<FeatureSummary>> {
    read_features_where(c, Some(project), only, false)
}

fn read_features_where(
    c: &dyn Sql,
    project: Option<&str>,
    only: Option<&str>,
    archived: bool,
) -> Result<Vec<FeatureSummary>> {
    let rows = c.rows(
        "list flags",
        "SELECT f.name, f.project, f.type, f.description, f.stale, f.impression_data,
                f.archived, fe.environment, fe.enabled,
                (SELECT COUNT(*) FROM strategies s
                 WHERE s.feature = f.name AND s.environment = fe.environment)
         FROM features f LEFT JOIN feature_environments fe ON fe.feature = f.name
         WHERE (CAST(?1 AS TEXT) IS NULL OR f.project = ?1) AND f.archived = ?3
            AND (CAST(?2 AS TEXT) IS NULL OR f.name = ?2)
         ORDER BY f.name, fe.environment",
        &[&project, &only, &archived],
        |r| {
            Ok(rows::SummaryRow {
                flag: rows::Flag::read(r)?,
                archived: r.flag(6)?,
                environment: r.opt_text(7)?,
                enabled: r.opt_flag(8)?,
                strategy_count: r.int(9)?,
            })
        },
    )?;
    Ok(rows::summaries(rows))
}

/// Append one event to the audit chain inside the change's own transaction, which
/// the driver has made the only writer (see [`Driver::change`]), and announce the new
/// revision to other servers when it commits.
pub(crate) fn append_event(tx: &dyn Sql, actor: &Actor, change: Change<'_>) -> Result<()> {
    let last = tx.row(
        "read the newest audit event",
        "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
        &[],
        |r| Ok((r.int(0)?, r.text(1)?)),
    )?;
    let event = Event::following(last, actor, change);
    tx.execute(
        "append an audit event",
        "INSERT INTO audit_events
            (seq, ts, actor, action, flag, environment, before, after, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
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
    )?;
    tx.announce(event.seq)
}

pub(crate) fn feature_project(c: &dyn Sql, flag: &str) -> Result<Option<(String, bool)>> {
    c.row(
        "look up a flag",
        "SELECT project, archived FROM features WHERE name = ?1",
        &[&flag],
        |r| Ok((r.text(0)?, r.flag(1)?)),
    )
}

/// The flag must exist in `project` and not be archived.
pub(crate) fn live_feature(c: &dyn Sql, project: &str, flag: &str) -> Result<()> {
    match feature_project(c, flag)? {
        Some((p, false)) if p == project => Ok(()),
        _ => Err(unknown_flag(project, flag)),
    }
}

pub(crate) fn known_environment(c: &dyn Sql, environment: &str) -> Result<()> {
    if c.exists(
        "look up the environment",
        "SELECT 1 FROM environments WHERE name = ?1",
        &[&environment],
    )? {
        Ok(())
    } else {
        Err(StoreError::UnknownEnvironment(environment.to_owned()))
    }
}

/// Create (`id` 0) or replace a segment, with its audit event; returns its id.
pub(crate) fn write_segment(tx: &dyn Sql, segment: &AdminSegment, actor: &Actor) -> Result<i32> {
    let before = read_segments(tx)?.into_iter().find(|s| s.id == segment.id);
    let id = if segment.id == 0 {
        tx.row(
            "number a segment",
            "SELECT COALESCE(MAX(id), 0) + 1 FROM segments",
            &[],
            |r| r.int32(0),
        )?
        .unwrap_or(1)
    } else if before.is_none() {
        return Err(StoreError::UnknownSegment(segment.id));
    } else {
        segment.id
    };
    tx.execute(
        "save a segment",
        "INSERT INTO segments (id, name, description, constraints) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET name = excluded.name,
            description = excluded.description, constraints = excluded.constraints",
        &[
            &id,
            &segment.name,
            &segment.description,
            &Json::of(&segment.constraints),
        ],
    )?;
    let after = AdminSegment {
        id,
        ..segment.clone()
    };
    append_event(
        tx,
        actor,
        Change::new(if before.is_some() {
            "segment-updated"
        } else {
            "segment-created"
        })
        .before_if(before)
        .after(after),
    )?;
    Ok(id)
}

/// Refuse a dependency of `child` on `parent` that [`write_dependency`] would not
/// write: both must be live flags of `project`, not the same flag, and dependencies
/// stay one level deep. `nested` says whether the parent has parents or the child is
/// a parent, in the state the caller checks against (the database, or a change
/// request's simulation of it).
pub(crate) fn check_dependency(
    c: &dyn Sql,
    project: &str,
    child: &str,
    parent: &str,
    nested: impl FnOnce(&dyn Sql) -> Result<bool>,
) -> Result<()> {
    live_feature(c, project, child)?;
    if parent == child {
        return Err(StoreError::Invalid("a flag cannot depend on itself".into()));
    }
    live_feature(c, project, parent).map_err(|_| {
        StoreError::Invalid(format!(
            "the parent {parent:?} must be a live flag in project {project:?}"
        ))
    })?;
    if nested(c)? {
        return Err(StoreError::Invalid(format!(
            "dependencies are one level deep: {child:?} cannot depend on {parent:?}, because \
             the parent cannot have parents, and a flag that is a parent cannot get one"
        )));
    }
    Ok(())
}

/// Make `child` depend on `dependency.feature`, with its audit event.
pub(crate) fn write_dependency(
    tx: &dyn Sql,
    project: &str,
    child: &str,
    dependency: &FeatureDependency,
    actor: &Actor,
) -> Result<()> {
    let parent = dependency.feature.as_str();
    check_dependency(tx, project, child, parent, |tx| {
        tx.exists(
            "check dependencies",
            "SELECT 1 FROM feature_dependencies WHERE child = ?1 OR parent = ?2",
            &[&parent, &child],
        )
    })?;
    let before = read_dependencies(tx, child)?;
    tx.execute(
        "replace a dependency",
        "DELETE FROM feature_dependencies WHERE child = ?1 AND parent = ?2",
        &[&child, &parent],
    )?;
    tx.execute(
        "add a dependency",
        "INSERT INTO feature_dependencies (child, parent, enabled, variants, position)
         VALUES (?1, ?2, ?3, ?4,
            (SELECT COALESCE(MAX(position), -1) + 1 FROM feature_dependencies
             WHERE child = ?1))",
        &[
            &child,
            &parent,
            &dependency.enabled,
            &dependency.variants.as_ref().map(Json::of),
        ],
    )?;
    let after = read_dependencies(tx, child)?;
    append_event(
        tx,
        actor,
        Change::new("feature-dependency-added")
            .flag(child)
            .before(before)
            .after(after),
    )
}

/// Remove `child`'s dependency on `parent` (all of them for `None`), with its event.
pub(crate) fn drop_dependency(
    tx: &dyn Sql,
    project: &str,
    child: &str,
    parent: Option<&str>,
    actor: &Actor,
) -> Result<()> {
    live_feature(tx, project, child)?;
    let before = read_dependencies(tx, child)?;
    let n = tx.execute(
        "remove a dependency",
        "DELETE FROM feature_dependencies
         WHERE child = ?1 AND (CAST(?2 AS TEXT) IS NULL OR parent = ?2)",
        &[&child, &parent],
    )?;
    if n == 0 {
        return Err(StoreError::Invalid(format!(
            "{child:?} has no such dependency"
        )));
    }
    let after = read_dependencies(tx, child)?;
    append_event(
        tx,
        actor,
        Change::new("feature-dependency-removed")
            .flag(child)
            .before(before)
            .after(after),
    )
}

/// Dependencies hold in every environment, so a project with any protected
/// environment changes them through change requests only.
fn guard_project_dependencies(tx: &dyn Sql, project: &str) -> Result<()> {
    crate::cr::guard_project(tx, project)
}

/// Archive a flag (the caller writes the event).
/// Archive the live flag `flag` of `project` inside the transaction `tx`, with its
/// event; refused while the project's changes go through change requests.
fn archive_in(tx: &dyn Sql, project: &str, flag: &str, actor: &Actor) -> Result<()> {
    crate::cr::guard_project(tx, project)?;
    mark_archived(tx, flag)?;
    append_event(
        tx,
        actor,
        Change::new("feature-archived")
            .flag(flag)
            .before(serde_json::json!({ "archived": false }))
            .after(serde_json::json!({ "archived": true })),
    )
}

pub(crate) fn mark_archived(tx: &dyn Sql, flag: &str) -> Result<()> {
    tx.execute(
        "archive a flag",
        "UPDATE features SET archived = TRUE WHERE name = ?1",
        &[&flag],
    )?;
    Ok(())
}
