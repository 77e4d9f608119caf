//! The flag database schema, written once for every SQL store.
//!
//! Each migration is portable SQL with a few placeholders for the types the dialects
//! spell differently (`{text}`, `{bigint}`, `{json}`, `{bytes}`, `{timestamp}`,
//! `{random_hex}`), plus the parts
//! that cannot be portable (triggers). [`pending`] turns the migrations a database
//! still needs into SQL for one dialect and refuses a database whose schema is newer
//! than this build, so SQLite and PostgreSQL cannot drift apart table by table.
//!
//! What it does not do: run anything. Each store applies the SQL in one transaction of
//! its own (PostgreSQL under an advisory lock, so replicas starting together do not
//! race) and records the version in `schema_migrations`.

use crate::store::{DEFAULT_ENVIRONMENTS, DEFAULT_PROJECT, StoreError};

/// The SQL dialect of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// What each placeholder stands for. JSON columns are text in SQLite and `jsonb`
    /// in PostgreSQL; the audit log's `before`/`after` stay `TEXT` in both, since they
    /// are hashed byte for byte and `jsonb` would reorder their keys.
    ///
    /// Text sorts byte-wise in both (`COLLATE "C"` in PostgreSQL, whose default
    /// follows the server's locale), so lists come out in the same order.
    fn types(self) -> [(&'static str, &'static str); 6] {
        match self {
            Dialect::Sqlite => [
                ("{text}", "TEXT"),
                ("{bigint}", "INTEGER"),
                ("{json}", "TEXT"),
                ("{bytes}", "BLOB"),
                ("{timestamp}", "TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP"),
                ("{random_hex}", "lower(hex(randomblob(16)))"),
            ],
            Dialect::Postgres => [
                ("{text}", "TEXT COLLATE \"C\""),
                ("{bigint}", "BIGINT"),
                ("{json}", "JSONB"),
                ("{bytes}", "BYTEA"),
                (
                    "{timestamp}",
                    "TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP",
                ),
                (
                    "{random_hex}",
                    "md5(random()::text || clock_timestamp()::text)",
                ),
            ],
        }
    }

    fn render(self, portable: &str) -> String {
        self.types()
            .iter()
            .fold(portable.to_owned(), |sql, (placeholder, ty)| {
                sql.replace(placeholder, ty)
            })
    }

    /// The table that records which migrations ran.
    pub(crate) fn migrations_table(self) -> String {
        self.render(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
            version {bigint} PRIMARY KEY,
            applied_at {timestamp}
        )",
        )
    }
}

struct Migration {
    version: i64,
    portable: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        portable: r#"
CREATE TABLE projects (
    name {text} PRIMARY KEY
);
CREATE TABLE environments (
    name {text} PRIMARY KEY
);
CREATE TABLE features (
    name {text} PRIMARY KEY,
    project {text} NOT NULL REFERENCES projects(name),
    type {text},
    description {text},
    stale BOOLEAN NOT NULL DEFAULT FALSE,
    impression_data BOOLEAN NOT NULL DEFAULT FALSE,
    archived BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE TABLE feature_environments (
    feature {text} NOT NULL REFERENCES features(name) ON DELETE CASCADE,
    environment {text} NOT NULL REFERENCES environments(name) ON DELETE CASCADE,
    enabled BOOLEAN NOT NULL,
    variants {json} NOT NULL,
    PRIMARY KEY (feature, environment)
);
CREATE TABLE strategies (
    feature {text} NOT NULL,
    environment {text} NOT NULL,
    position {bigint} NOT NULL,
    name {text} NOT NULL,
    sort_order INTEGER,
    parameters {json} NOT NULL,
    constraints {json} NOT NULL,
    variants {json} NOT NULL,
    segments {json} NOT NULL,
    PRIMARY KEY (feature, environment, position),
    FOREIGN KEY (feature, environment)
        REFERENCES feature_environments(feature, environment) ON DELETE CASCADE
);
CREATE TABLE segments (
    id INTEGER PRIMARY KEY,
    constraints {json} NOT NULL
);
CREATE TABLE feature_dependencies (
    child {text} NOT NULL REFERENCES features(name) ON DELETE CASCADE,
    parent {text} NOT NULL,
    enabled BOOLEAN,
    variants {json},
    position {bigint} NOT NULL,
    PRIMARY KEY (child, position)
);
CREATE TABLE api_tokens (
    hash {bytes} PRIMARY KEY,
    name {text} NOT NULL,
    type {text} NOT NULL,
    project {text} NOT NULL,
    environment {text} NOT NULL,
    created_at {timestamp}
);
"#,
        sqlite: "",
        postgres: "",
    },
    Migration {
        version: 2,
        portable: r#"
CREATE TABLE audit_events (
    seq {bigint} PRIMARY KEY,
    ts {bigint} NOT NULL,
    actor {text} NOT NULL,
    action {text} NOT NULL,
    flag {text},
    environment {text},
    before {text},
    after {text},
    prev_hash {text} NOT NULL,
    hash {text} NOT NULL
);
"#,
        sqlite: r#"
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
"#,
        // Row triggers do not fire on TRUNCATE; a statement trigger covers it.
        postgres: r#"
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only' USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
"#,
    },
    Migration {
        version: 3,
        portable: r#"
CREATE TABLE client_instances (
    app_name {text} NOT NULL,
    instance_id {text} NOT NULL,
    environment {text} NOT NULL,
    sdk_version {text},
    strategies {json} NOT NULL,
    interval_ms {bigint},
    last_seen {bigint} NOT NULL,
    PRIMARY KEY (app_name, instance_id, environment)
);
CREATE TABLE feature_metrics (
    feature {text} NOT NULL,
    environment {text} NOT NULL,
    app_name {text} NOT NULL,
    hour {bigint} NOT NULL,
    yes {bigint} NOT NULL,
    no {bigint} NOT NULL,
    variants {json} NOT NULL,
    PRIMARY KEY (feature, hour, environment, app_name)
);
"#,
        sqlite: "",
        postgres: "",
    },
    Migration {
        version: 4,
        portable: r#"
ALTER TABLE strategies ADD COLUMN id {text};
UPDATE strategies SET id = {random_hex};
CREATE UNIQUE INDEX strategies_id ON strategies (id);
"#,
        sqlite: "",
        postgres: "",
    },
    Migration {
        version: 5,
        portable: r#"
ALTER TABLE segments ADD COLUMN name {text};
ALTER TABLE segments ADD COLUMN description {text};
CREATE TABLE feature_tags (
    feature {text} NOT NULL REFERENCES features(name) ON DELETE CASCADE,
    type {text} NOT NULL,
    value {text} NOT NULL,
    PRIMARY KEY (feature, type, value)
);
"#,
        sqlite: "",
        postgres: "",
    },
    Migration {
        version: 6,
        portable: r#"
CREATE INDEX feature_metrics_hour ON feature_metrics (hour);
CREATE INDEX client_instances_last_seen ON client_instances (last_seen);
"#,
        sqlite: "",
        postgres: "",
    },
    Migration {
        version: 7,
        portable: r#"
CREATE TABLE users (
    name {text} PRIMARY KEY,
    kind {text} NOT NULL,
    role {text} NOT NULL,
    password_hash {text},
    session {text},
    created_ms {bigint} NOT NULL
);
ALTER TABLE api_tokens ADD COLUMN owner {text};
ALTER TABLE api_tokens ADD COLUMN expires_ms {bigint};
CREATE TABLE change_request_settings (
    project {text} NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    environment {text} NOT NULL REFERENCES environments(name) ON DELETE CASCADE,
    enabled BOOLEAN NOT NULL,
    required_approvals {bigint} NOT NULL,
    PRIMARY KEY (project, environment)
);
CREATE TABLE change_requests (
    id {bigint} PRIMARY KEY,
    project {text} NOT NULL,
    environment {text} NOT NULL,
    title {text} NOT NULL,
    state {text} NOT NULL,
    created_by {text} NOT NULL,
    created_ms {bigint} NOT NULL,
    updated_ms {bigint} NOT NULL,
    body {json} NOT NULL
);
CREATE INDEX change_requests_project ON change_requests (project, state);
"#,
        sqlite: "",
        postgres: "",
    },
    Migration {
        version: 8,
        // Failed console logins per user name, shared by every replica so that
        // spreading guesses over replicas gains nothing.
        portable: r#"
CREATE TABLE login_failures (
    name {text} PRIMARY KEY,
    failures {bigint} NOT NULL,
    window_start_ms {bigint} NOT NULL
);
"#,
        sqlite: "",
        postgres: "",
    },
];

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// The migrations a database at schema version `current` still needs, in order, as
/// SQL for `dialect` (version 1 also creates the default project and environments).
/// `database` names the database in the error for a schema newer than this build.
pub(crate) fn pending(
    dialect: Dialect,
    current: i64,
    database: &str,
) -> Result<Vec<(i64, String)>, StoreError> {
    if current > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            database: database.to_owned(),
            found: current,
            known: SCHEMA_VERSION,
        });
    }
    Ok(MIGRATIONS
        .iter()
        .filter(|m| m.version > current)
        .map(|m| {
            let mut sql = dialect.render(m.portable);
            sql.push_str(match dialect {
                Dialect::Sqlite => m.sqlite,
                Dialect::Postgres => m.postgres,
            });
            if m.version == 1 {
                sql.push_str(&seed_sql());
            }
            (m.version, sql)
        })
        .collect())
}

/// The rows every new database has. The names are constants of this crate, so they
/// can be written into SQL directly.
fn seed_sql() -> String {
    let environments: Vec<String> = DEFAULT_ENVIRONMENTS
        .iter()
        .map(|e| format!("('{e}')"))
        .collect();
    format!(
        "INSERT INTO projects (name) VALUES ('{DEFAULT_PROJECT}');\n\
         INSERT INTO environments (name) VALUES {};\n",
        environments.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_gets_its_own_types_and_postgres_its_own() {
        let sqlite = pending(Dialect::Sqlite, 0, "x").unwrap();
        let postgres = pending(Dialect::Postgres, 0, "x").unwrap();
        assert_eq!(sqlite.len() as i64, SCHEMA_VERSION);
        for (_, sql) in sqlite.iter().chain(&postgres) {
            assert!(!sql.contains('{'), "a placeholder is left: {sql}");
        }
        assert!(sqlite[0].1.contains("hash BLOB PRIMARY KEY"));
        assert!(postgres[0].1.contains("hash BYTEA PRIMARY KEY"));
        assert!(postgres[1].1.contains("seq BIGINT PRIMARY KEY"));
        assert!(postgres[1].1.contains("plpgsql"));
        assert!(!sqlite[1].1.contains("plpgsql"));
        assert!(sqlite[0].1.contains("('development'), ('production')"));
        assert_eq!(pending(Dialect::Sqlite, SCHEMA_VERSION, "x").unwrap(), []);
        assert!(matches!(
            pending(Dialect::Postgres, SCHEMA_VERSION + 1, "db"),
            Err(StoreError::SchemaTooNew { found, .. }) if found == SCHEMA_VERSION + 1
        ));
    }
}
