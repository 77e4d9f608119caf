//! What every store promises, checked against each: SQLite in a temporary file, and
//! PostgreSQL in a fresh database on the server at `CORDON_TEST_POSTGRES_URL` (these
//! fail, not skip, when it is unset). State survives reopening, a newer schema is
//! refused, a failed change changes nothing and writes no event, the database itself
//! refuses to edit the audit log, and tampering with it (triggers dropped first, as
//! someone with direct access would) is named event by event. A scheduled change
//! request the database refuses fails alone, leaving nothing behind.

mod common;

use cordon_flags::audit::{self, GENESIS, Problem};
use cordon_flags::cr::{self, NewChange, Transition, Update};
use cordon_flags::people::{Kind, Principal, Role};
use cordon_flags::store::{DEFAULT_PROJECT, SCHEMA_VERSION};
use cordon_flags::token::TokenHash;
use cordon_flags::{
    Actor, NewFeature, PgStore, SqliteStore, Store, StoreError, TokenRecord, TokenType,
};
use unleash_types::client_features::ClientFeatures;

/// A database a store can be opened on, and direct access to it.
trait Backend: Sized {
    type Store: Store;
    /// SQL that removes the triggers guarding the audit log.
    const DROP_TRIGGERS: &str;
    /// Whether the store keeps an anchor of the newest event outside the database.
    const ANCHORED: bool;
    /// SQL that makes the database refuse every write of flag `broken`'s environment
    /// configuration, with the message "the disk refuses flag broken".
    const REFUSE_BROKEN: &str;
    fn new() -> Self;
    fn open(&self) -> Result<Self::Store, StoreError>;
    /// Run SQL directly, bypassing the store.
    fn execute(&self, sql: &str) -> Result<(), String>;
    /// The newest applied schema version, read directly.
    fn schema_version(&self) -> i64;
}

struct Sqlite(tempfile::TempDir);

impl Sqlite {
    fn path(&self) -> std::path::PathBuf {
        self.0.path().join("flags.db")
    }
}

impl Backend for Sqlite {
    type Store = SqliteStore;
    const DROP_TRIGGERS: &str = "DROP TRIGGER IF EXISTS audit_events_no_update;
        DROP TRIGGER IF EXISTS audit_events_no_delete;";
    const ANCHORED: bool = true;
    const REFUSE_BROKEN: &str = "
        CREATE TRIGGER refuse_broken_insert BEFORE INSERT ON feature_environments
        WHEN NEW.feature = 'broken'
        BEGIN SELECT RAISE(ABORT, 'the disk refuses flag broken'); END;
        CREATE TRIGGER refuse_broken_update BEFORE UPDATE ON feature_environments
        WHEN NEW.feature = 'broken'
        BEGIN SELECT RAISE(ABORT, 'the disk refuses flag broken'); END;";
    fn new() -> Self {
        Sqlite(tempfile::tempdir().unwrap())
    }
    fn open(&self) -> Result<SqliteStore, StoreError> {
        SqliteStore::open(&self.path())
    }
    fn execute(&self, sql: &str) -> Result<(), String> {
        rusqlite::Connection::open(self.path())
            .and_then(|c| c.execute_batch(sql))
            .map_err(|e| e.to_string())
    }
    fn schema_version(&self) -> i64 {
        rusqlite::Connection::open(self.path())
            .unwrap()
            .query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
                r.get(0)
            })
            .unwrap()
    }
}

struct Postgres(common::pg::TestDatabase);

impl Backend for Postgres {
    type Store = PgStore;
    const DROP_TRIGGERS: &str = "DROP TRIGGER IF EXISTS audit_events_no_update ON audit_events;
        DROP TRIGGER IF EXISTS audit_events_no_delete ON audit_events;";
    const ANCHORED: bool = false;
    const REFUSE_BROKEN: &str = "
        CREATE FUNCTION refuse_broken() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'the disk refuses flag broken'; END $$;
        CREATE TRIGGER refuse_broken BEFORE INSERT OR UPDATE ON feature_environments
        FOR EACH ROW WHEN (NEW.feature = 'broken') EXECUTE FUNCTION refuse_broken();";
    fn new() -> Self {
        Postgres(common::pg::TestDatabase::create())
    }
    fn open(&self) -> Result<PgStore, StoreError> {
        PgStore::connect(&self.0.url)
    }
    fn execute(&self, sql: &str) -> Result<(), String> {
        self.0.execute(sql)
    }
    fn schema_version(&self) -> i64 {
        self.0
            .query_text("SELECT MAX(version) FROM schema_migrations")
            .parse()
            .unwrap()
    }
}

fn client_token() -> TokenRecord {
    TokenRecord {
        name: "t".into(),
        token_type: TokenType::Client,
        project: "*".into(),
        environment: "production".into(),
        hash: TokenHash::of("*:production.s"),
        owner: None,
        expires_ms: None,
    }
}

fn state(v: serde_json::Value) -> ClientFeatures {
    serde_json::from_value(v).unwrap()
}

fn state_and_tokens_survive_reopening<B: Backend>() {
    let db = B::new();
    let state = state(serde_json::json!({
        "version": 2,
        "features": [{"name": "a", "enabled": true, "project": "p",
            "strategies": [{"name": "flexibleRollout", "parameters": {"rollout": "50"}}],
            "dependencies": [{"feature": "b", "enabled": false}]},
            {"name": "b", "enabled": false}]
    }));
    {
        let store = db.open().unwrap();
        store
            .import_state("production", &state, &Actor::system())
            .unwrap();
        store
            .insert_token(&client_token(), &Actor::system())
            .unwrap();
    }
    let store = db.open().unwrap();
    assert_eq!(store.environments().unwrap(), ["development", "production"]);
    let (back, revision) = store.client_state("production", "*").unwrap();
    assert_eq!(revision, 2, "two changes, two events");
    assert_eq!(back.features.len(), 2);
    assert_eq!(back.features[0].project.as_deref(), Some("p"));
    assert_eq!(
        back.features[0].strategies.as_ref().unwrap()[0]
            .parameters
            .as_ref()
            .unwrap()["rollout"],
        "50"
    );
    assert_eq!(
        back.features[0].dependencies.as_ref().unwrap()[0].feature,
        "b"
    );
    let development = store.client_state("development", "*").unwrap().0;
    assert!(development.features.is_empty());
    let default_project = store.client_state("production", "default").unwrap().0;
    assert_eq!(default_project.features.len(), 1);
    assert_eq!(
        store.tokens().unwrap()[0].hash,
        TokenHash::of("*:production.s")
    );
    assert_eq!(db.schema_version(), SCHEMA_VERSION);
}

fn a_newer_schema_is_refused<B: Backend>() {
    let db = B::new();
    drop(db.open().unwrap());
    db.execute("INSERT INTO schema_migrations (version) VALUES (999)")
        .unwrap();
    match db.open() {
        Err(e @ StoreError::SchemaTooNew { found: 999, .. }) => {
            assert!(e.to_string().contains("use a newer cordon"), "{e}")
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a database with schema 999 was opened"),
    }
}

fn a_failed_import_changes_nothing<B: Backend>() {
    let db = B::new();
    let store = db.open().unwrap();
    let a = state(serde_json::json!({
        "version": 2, "features": [{"name": "a", "enabled": true}]
    }));
    store
        .import_state("development", &a, &Actor::system())
        .unwrap();
    assert!(matches!(
        store.import_state("nowhere", &a, &Actor::system()),
        Err(StoreError::UnknownEnvironment(_))
    ));
    // Duplicate names violate the primary key half-way through: rolled back whole.
    let dup = state(serde_json::json!({
        "version": 2, "features": [{"name": "c", "enabled": true}, {"name": "c", "enabled": false}]
    }));
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
    assert_eq!(store.audit_events().unwrap().len(), 1);
    // The store is still usable after the failed transactions.
    assert_eq!(store.revision().unwrap(), 1);
}

/// A store with five events: a token, a flag created, enabled, disabled, archived.
fn store_with_history<B: Backend>() -> (B, B::Store) {
    let db = B::new();
    let store = db.open().unwrap();
    let ops = Actor("admin:ops".into());
    store.insert_token(&client_token(), &ops).unwrap();
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
    (db, store)
}

/// Tamper as someone with direct access to the database would: triggers first.
fn tamper<B: Backend>(db: &B, sql: &str) {
    db.execute(&format!("{}\n{sql}", B::DROP_TRIGGERS)).unwrap();
}

fn problems(store: &dyn Store) -> Vec<Problem> {
    audit::verify(store).unwrap().problems
}

fn every_change_appends_a_chained_event<B: Backend>() {
    let (_db, store) = store_with_history::<B>();
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
    let report = audit::verify(&store).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.events, 5);
    assert_eq!(report.head.as_ref(), Some(&events[4].hash));
    assert_eq!(store.revision().unwrap(), 5);
}

fn the_database_refuses_to_update_or_delete_events<B: Backend>() {
    let (db, store) = store_with_history::<B>();
    let update = db.execute("UPDATE audit_events SET actor = 'x' WHERE seq = 1");
    assert!(
        update.as_ref().is_err_and(|e| e.contains("append-only")),
        "{update:?}"
    );
    let delete = db.execute("DELETE FROM audit_events WHERE seq = 1");
    assert!(
        delete.as_ref().is_err_and(|e| e.contains("append-only")),
        "{delete:?}"
    );
    assert!(audit::verify(&store).unwrap().ok());
}

fn verify_names_an_edited_event<B: Backend>() {
    let (db, store) = store_with_history::<B>();
    tamper(
        &db,
        "UPDATE audit_events SET after = '{\"enabled\":true}' WHERE seq = 4",
    );
    assert_eq!(problems(&store), [Problem::Edited { seq: 4 }]);
}

fn verify_names_an_edited_and_rehashed_event<B: Backend>() {
    let (db, store) = store_with_history::<B>();
    let mut e = store.audit_events().unwrap()[1].clone();
    e.actor = "admin:someone-else".into();
    e.hash = e.compute_hash();
    tamper(
        &db,
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

fn verify_names_deleted_events<B: Backend>() {
    let (db, store) = store_with_history::<B>();
    tamper(&db, "DELETE FROM audit_events WHERE seq IN (2, 3)");
    assert_eq!(problems(&store), [Problem::Deleted { from: 2, to: 3 }]);
    tamper(&db, "DELETE FROM audit_events WHERE seq = 1");
    assert_eq!(
        problems(&store),
        [Problem::Deleted { from: 1, to: 3 }],
        "a deleted first event is named too"
    );
}

fn verify_names_an_inserted_event<B: Backend>() {
    let (db, store) = store_with_history::<B>();
    let events = store.audit_events().unwrap();
    // A well-formed forgery: right link to event 2, right hash of its own. The
    // events after it are renumbered to make room.
    let mut forged = events[2].clone();
    forged.action = "feature-environment-disabled".into();
    forged.prev_hash = events[1].hash.clone();
    forged.hash = forged.compute_hash();
    tamper(
        &db,
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
    let mut want = vec![
        Problem::Edited { seq: 4 },
        Problem::Edited { seq: 5 },
        Problem::Edited { seq: 6 },
    ];
    if B::ANCHORED {
        // The anchor outside the database still names the original event 5.
        want.push(Problem::AnchorMismatch { seq: 5 });
    }
    assert_eq!(found[1..], want);
}

fn a_failed_change_writes_no_event<B: Backend>() {
    let (_db, store) = store_with_history::<B>();
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
        store.create_feature("nowhere", &again, &ops),
        Err(StoreError::UnknownProject(_))
    ));
    assert!(matches!(
        store.set_enabled(DEFAULT_PROJECT, "checkout-v2", "production", true, &ops),
        Err(StoreError::UnknownFlag { .. })
    ));
    assert!(matches!(
        store.archive_feature(DEFAULT_PROJECT, "checkout-v2", &ops),
        Err(StoreError::UnknownFlag { .. })
    ));
    let other = NewFeature {
        name: "other".into(),
        ..NewFeature::default()
    };
    store.create_feature(DEFAULT_PROJECT, &other, &ops).unwrap();
    assert!(matches!(
        store.set_enabled(DEFAULT_PROJECT, "other", "staging", true, &ops),
        Err(StoreError::UnknownEnvironment(_))
    ));
    assert_eq!(store.audit_events().unwrap().len(), 6);
}

fn invented_instances_are_capped_and_old_counts_expire<B: Backend>() {
    use cordon_flags::metrics::{MAX_INSTANCES, RETENTION_MS, parse_registration, parse_report};
    let db = B::new();
    let store = db.open().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    db.execute(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {})
         INSERT INTO client_instances (app_name, instance_id, environment, strategies, last_seen)
         SELECT 'app-' || i, 'i', 'production', '[]', {now} FROM n",
        MAX_INSTANCES - 1
    ))
    .unwrap();
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
    db.execute("UPDATE client_instances SET last_seen = 0 WHERE app_name = 'app-1'")
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
    store.record_metrics(&report(now)).unwrap();
    let rows = store.feature_metrics("f", 0).unwrap();
    assert_eq!(rows.len(), 1, "the expired hour is gone: {rows:?}");
    assert_eq!(rows[0].yes, 2, "two reports in one hour add up");
}

fn person(name: &str, role: Role) -> Principal {
    Principal {
        kind: Kind::User,
        name: name.into(),
        role,
        session: None,
    }
}

/// Open, submit, approve and schedule a change request in production; its id.
fn scheduled(store: &dyn Store, at: i64, changes: serde_json::Value) -> i64 {
    let (ed, ann) = (person("ed", Role::Editor), person("ann", Role::Approver));
    let changes: Vec<NewChange> = changes
        .as_array()
        .unwrap()
        .iter()
        .map(|c| NewChange {
            feature: c["feature"].as_str().unwrap().into(),
            action: serde_json::from_value(c.clone()).unwrap(),
        })
        .collect();
    let id = store
        .submit_changes(DEFAULT_PROJECT, "production", &changes, &ed)
        .unwrap()
        .request
        .id;
    for (to, who) in [
        (Transition::Submit, &ed),
        (Transition::Approve(None), &ann),
        (Transition::Schedule(at), &ed),
    ] {
        store
            .update_change_request(DEFAULT_PROJECT, id, &Update::Move(to), who)
            .unwrap();
    }
    id
}

/// A due change request whose write the database refuses is marked failed (once,
/// audited) and leaves nothing behind; the next one in the same tick still applies.
/// On PostgreSQL a failed statement aborts the whole transaction, so this holds only
/// if each request applies in a savepoint of its own.
fn a_scheduled_request_that_fails_writes_nothing_and_the_next_applies<B: Backend>() {
    let db = B::new();
    let store = db.open().unwrap();
    let system = Actor::system();
    for name in ["parent", "broken", "fine"] {
        let flag = NewFeature {
            name: name.into(),
            ..NewFeature::default()
        };
        store
            .create_feature(DEFAULT_PROJECT, &flag, &system)
            .unwrap();
    }
    store
        .set_change_request_settings(DEFAULT_PROJECT, "production", true, 1, &system)
        .unwrap();
    let at = now_ms() + 60_000;
    let on = |f: &str| serde_json::json!({"feature": f, "action": "updateEnabled", "payload": {"enabled": true}});
    // The dependency is written before the flag's configuration: the request has
    // written something by the time the database refuses it.
    let failing = scheduled(
        &store,
        at,
        serde_json::json!([
            {"feature": "broken", "action": "addDependency", "payload": {"feature": "parent"}},
            on("broken"),
        ]),
    );
    let fine = scheduled(&store, at, serde_json::json!([on("fine")]));
    assert!(failing < fine, "the failing request must come first");
    db.execute(B::REFUSE_BROKEN).unwrap();
    let events_before = store.audit_events().unwrap().len();

    assert_eq!(store.run_schedules(at + 1000).unwrap(), [fine]);

    let failed = store
        .change_request(DEFAULT_PROJECT, failing)
        .unwrap()
        .to_json();
    assert_eq!(failed["state"], "Scheduled");
    assert_eq!(failed["schedule"]["status"], "failed", "{failed}");
    let reason = failed["schedule"]["reason"].as_str().unwrap();
    assert!(reason.contains("the disk refuses flag broken"), "{reason}");
    assert!(!reason.contains('\n'), "{reason}");
    let (production, _) = store.client_state("production", "*").unwrap();
    let flag = |name: &str| {
        production
            .features
            .iter()
            .find(|f| f.name == name)
            .unwrap()
            .clone()
    };
    assert!(flag("fine").enabled);
    assert!(!flag("broken").enabled);
    assert!(
        flag("broken").dependencies.unwrap_or_default().is_empty(),
        "the failed request's dependency stayed"
    );
    assert_eq!(
        store
            .change_request(DEFAULT_PROJECT, fine)
            .unwrap()
            .request
            .state,
        cr::State::Applied
    );
    let events = store.audit_events().unwrap();
    let new: Vec<&str> = events[events_before..]
        .iter()
        .map(|e| e.action.as_str())
        .collect();
    assert!(!new.contains(&"feature-dependency-added"), "{new:?}");
    assert!(new.contains(&"change-request-applied"), "{new:?}");
    let audited: Vec<&audit::Event> = events[events_before..]
        .iter()
        .filter(|e| e.action == "change-request-schedule-failed")
        .collect();
    assert_eq!(audited.len(), 1, "{new:?}");
    let after: serde_json::Value =
        serde_json::from_str(audited[0].after.as_deref().unwrap()).unwrap();
    assert_eq!(after["changeRequest"], failing);
    assert_eq!(after["reason"], reason);
    assert_eq!(problems(&store), []);

    // A failed schedule is not tried again at the next tick.
    assert!(store.run_schedules(at + 2000).unwrap().is_empty());
    assert_eq!(store.audit_events().unwrap().len(), events.len());
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// One `#[test]` per store for each of these functions.
macro_rules! for_each_store {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $test() {
                super::$test::<super::Sqlite>()
            })*
        }
        mod postgres {
            $(#[test]
            fn $test() {
                super::$test::<super::Postgres>()
            })*
        }
    };
}

for_each_store!(
    state_and_tokens_survive_reopening,
    a_newer_schema_is_refused,
    a_failed_import_changes_nothing,
    every_change_appends_a_chained_event,
    the_database_refuses_to_update_or_delete_events,
    verify_names_an_edited_event,
    verify_names_an_edited_and_rehashed_event,
    verify_names_deleted_events,
    verify_names_an_inserted_event,
    a_failed_change_writes_no_event,
    invented_instances_are_capped_and_old_counts_expire,
    a_scheduled_request_that_fails_writes_nothing_and_the_next_applies,
);

/// The SQLite store's anchor beside the database file.
mod sqlite_only {
    use super::*;

    #[test]
    fn the_anchor_reveals_deleted_newest_events_even_after_reopening() {
        let (db, store) = store_with_history::<Sqlite>();
        assert_eq!(problems(&store), [], "an intact chain matches its anchor");
        let last = store.audit_events().unwrap().len() as i64;
        // Deleting the newest events leaves a chain that is intact in itself.
        tamper(
            &db,
            &format!("DELETE FROM audit_events WHERE seq >= {}", last - 1),
        );
        let want = [Problem::Truncated {
            anchored: last,
            last: last - 2,
        }];
        assert_eq!(problems(&store), want);
        drop(store);
        // Reopening must not quietly move the anchor back to the truncated chain.
        let store = db.open().unwrap();
        assert_eq!(problems(&store), want);
        // Nor does a garbled anchor pass.
        std::fs::write(db.0.path().join("flags.db.audit-head"), "{nonsense").unwrap();
        assert!(matches!(
            problems(&store)[..],
            [Problem::AnchorUnreadable { .. }]
        ));
    }
}

/// What only a shared PostgreSQL database has to get right.
mod postgres_only {
    use super::*;
    use cordon_flags::PgOptions;
    use std::time::Duration;

    fn count(db: &common::pg::TestDatabase, sql: &str) -> i64 {
        db.query_text(sql).parse().unwrap()
    }

    #[test]
    fn the_database_refuses_to_truncate_events() {
        let (Postgres(db), store) = store_with_history::<Postgres>();
        let truncate = db.execute("TRUNCATE audit_events");
        assert!(
            truncate.as_ref().is_err_and(|e| e.contains("append-only")),
            "{truncate:?}"
        );
        assert_eq!(store.audit_events().unwrap().len(), 5);
    }

    #[test]
    fn replicas_starting_together_migrate_once() {
        let db = common::pg::TestDatabase::create();
        let opened: Vec<Result<PgStore, StoreError>> = std::thread::scope(|s| {
            let starts: Vec<_> = (0..4)
                .map(|_| s.spawn(|| PgStore::connect(&db.url)))
                .collect();
            starts.into_iter().map(|t| t.join().unwrap()).collect()
        });
        for store in &opened {
            let store = store.as_ref().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(store.environments().unwrap(), ["development", "production"]);
        }
        assert_eq!(
            count(&db, "SELECT count(*) FROM schema_migrations"),
            SCHEMA_VERSION
        );
    }

    #[test]
    fn replicas_bootstrapping_the_same_admin_token_at_once_both_start() {
        const INIT: &str = "*:*.the-same-init-secret-0123";
        for _ in 0..5 {
            let db = common::pg::TestDatabase::create();
            let stores = [db.open_store(), db.open_store()];
            let start = std::sync::Barrier::new(2);
            std::thread::scope(|s| {
                for store in &stores {
                    let start = &start;
                    s.spawn(move || {
                        start.wait();
                        cordon_flags::bootstrap_admin_token(store, Some(INIT))
                            .unwrap_or_else(|e| panic!("a replica failed to start: {e}"))
                    });
                }
            });
            let admins = stores[0]
                .tokens()
                .unwrap()
                .into_iter()
                .filter(|t| t.token_type == TokenType::Admin)
                .count();
            assert_eq!(admins, 1);
        }
    }

    #[test]
    fn the_pool_stays_within_its_size_and_replaces_dropped_connections() {
        let db = common::pg::TestDatabase::create();
        let store = PgStore::connect_with(
            &db.url,
            PgOptions {
                pool_size: 2,
                ..PgOptions::default()
            },
        )
        .unwrap();
        let open = "SELECT count(*) FROM pg_stat_activity
            WHERE datname = current_database() AND application_name = 'cordon-flags'";
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..20 {
                        store.client_state("production", "*").unwrap();
                    }
                });
            }
            // Sampled while the readers queue for the two connections.
            std::thread::sleep(Duration::from_millis(50));
            assert!(count(&db, open) <= 2);
        });
        assert!((1..=2).contains(&count(&db, open)));

        // The server drops every connection (a restart, an administrator): the
        // store notices and opens new ones.
        let killed = count(
            &db,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'cordon-flags'",
        );
        assert!(killed >= 1);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(store.revision().unwrap(), 0);
        assert_eq!(store.environments().unwrap().len(), 2);
    }

    #[test]
    fn connection_errors_name_the_database_but_not_the_password() {
        let server: tokio_postgres::Config = common::pg::server_url().parse().unwrap();
        let host = match &server.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        };
        let port = server.get_ports().first().copied().unwrap_or(5432);
        let user = server.get_user().unwrap();
        let url = format!(
            "host={host} port={port} user={user} password=not-the-password dbname=postgres"
        );
        let db = common::pg::TestDatabase::create();
        assert_eq!(
            db.open_store().database(),
            format!("{user}@{host}:{port}/{}", db.name)
        );
        let e = PgStore::connect(&url)
            .err()
            .expect("a wrong password is refused");
        let message = e.to_string();
        assert!(matches!(e, StoreError::PgConnect { .. }), "{message}");
        assert!(
            message.contains(&format!("{user}@{host}:{port}/postgres")),
            "{message}"
        );
        assert!(
            message.contains("password authentication failed"),
            "{message}"
        );
        assert!(!message.contains("not-the-password"), "{message}");

        let e = PgStore::connect("postgres://u@h:not-a-port/db")
            .err()
            .expect("a bad URL");
        assert!(matches!(e, StoreError::PgUrl(_)), "{e}");
    }
}
