//! The embedded store: one SQLite file in WAL mode, and the audit anchor beside it.
//!
//! [`SqliteStore`] is a [`Driver`] for the store logic in `store.rs`: one connection
//! behind a mutex (SQLite has one writer at a time anyway, which is what keeps the
//! audit chain from forking), `synchronous=FULL`, schema migrations on open. After
//! every committed change it rewrites `<db>.audit-head` with the newest event's number
//! and hash, so deleting the newest events from the database is detected.
//!
//! What it does not do: share the file with other servers. For replicas, use
//! [`PgStore`](crate::PgStore).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension};

use crate::audit::{Anchor, GENESIS};
use crate::schema::{self, Dialect};
use crate::sql::{Columns, Driver, Param, Sql, impl_columns};
use crate::store::StoreError;

type Result<T> = std::result::Result<T, StoreError>;

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

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite itself consistent (the
        // transaction rolls back on drop), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `f` in a transaction and commit it.
    fn transaction<T>(
        &self,
        action: &'static str,
        f: impl FnOnce(&dyn Sql) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db(action))?;
        let out = f(&*tx)?;
        tx.commit().map_err(db(action))?;
        Ok(out)
    }

    fn last_event(&self) -> Result<Option<Anchor>> {
        self.conn()
            .query_row(
                "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
                [],
                |r| {
                    Ok(Anchor {
                        seq: r.get(0)?,
                        hash: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(db("read the newest audit event"))
    }

    fn write_anchor(&self, last: Option<Anchor>) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let last = last.unwrap_or(Anchor {
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

impl Driver for SqliteStore {
    fn read<T>(&self, f: impl FnOnce(&dyn Sql) -> Result<T>) -> Result<T> {
        f(&*self.conn())
    }

    fn read_consistent<T>(&self, f: impl FnOnce(&dyn Sql) -> Result<T>) -> Result<T> {
        // Nothing writes while the connection is held; a transaction only makes the
        // reads one snapshot should another process write to the file.
        self.transaction("read", f)
    }

    fn change<T>(&self, action: &'static str, f: impl FnOnce(&dyn Sql) -> Result<T>) -> Result<T> {
        let out = self.transaction(action, f)?;
        // The change is durable already; a failure here is reported all the same.
        self.write_anchor(self.last_event()?)?;
        Ok(out)
    }

    fn write<T>(&self, action: &'static str, f: impl FnOnce(&dyn Sql) -> Result<T>) -> Result<T> {
        self.transaction(action, f)
    }

    fn audit_anchor(&self) -> Result<Option<Anchor>> {
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
}

impl Sql for Connection {
    fn execute(&self, action: &'static str, sql: &str, params: &[&dyn Param]) -> Result<u64> {
        self.prepare_cached(sql)
            .and_then(|mut st| {
                st.execute(rusqlite::params_from_iter(
                    params.iter().map(|p| p.sqlite()),
                ))
            })
            .map(|n| n as u64)
            .map_err(db(action))
    }

    fn each(
        &self,
        action: &'static str,
        sql: &str,
        params: &[&dyn Param],
        row: &mut dyn FnMut(&dyn Columns) -> Result<()>,
    ) -> Result<()> {
        let mut st = self.prepare_cached(sql).map_err(db(action))?;
        let mut rows = st
            .query(rusqlite::params_from_iter(
                params.iter().map(|p| p.sqlite()),
            ))
            .map_err(db(action))?;
        while let Some(r) = rows.next().map_err(db(action))? {
            row(r)?;
        }
        Ok(())
    }

    fn announce(&self, _revision: i64) -> Result<()> {
        Ok(())
    }
}

fn column<T: rusqlite::types::FromSql>(r: &rusqlite::Row<'_>, i: usize) -> Result<T> {
    r.get(i).map_err(db("read a stored value"))
}

impl_columns!(rusqlite::Row<'_>, column, column, column);
