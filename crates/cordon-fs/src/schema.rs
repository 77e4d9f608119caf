//! The on-disk layout of a workspace database.
//!
//! A workspace is one SQLite file. Its core tables follow the AgentFS
//! specification, version 0.4 (`fs_config`, `fs_inode`, `fs_dentry`, `fs_data`,
//! `fs_symlink`, `fs_whiteout`, `fs_origin`, `fs_overlay_config`, `kv_store`,
//! `tool_calls`), so AgentFS tools can open it and read the delta layer. Everything
//! the specification has no place for lives in tables prefixed `cordon_`:
//!
//! | table | holds |
//! | --- | --- |
//! | `cordon_meta` | our schema version, workspace id, base identity, provenance |
//! | `cordon_xattr` | extended attributes of delta inodes |
//! | `cordon_dir` | per delta directory: opaque flag, redirect to a base directory |
//! | `cordon_metacopy` | delta inodes whose bytes still live in a base file |
//! | `cordon_base_seen` | what the overlay first saw of each base file (for `apply`) |
//! | `cordon_snapshot`, `cordon_snap_*` | named point-in-time copies of the delta |
//!
//! Names and paths are stored as the raw bytes the kernel gave us, bound as TEXT
//! where AgentFS declares TEXT. SQLite does not validate UTF-8, so non-UTF-8 file
//! names round-trip exactly.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::error::{Error, Result};

/// Version of the `cordon_*` tables. Bump it with a migration in [`migrate`].
pub const SCHEMA_VERSION: u32 = 1;

/// The AgentFS specification version whose tables we write.
pub const AGENTFS_VERSION: &str = "0.4";

/// Default size of a data chunk in bytes.
///
/// 64 KiB: large enough that sequential I/O of big files touches few rows (a 1 MiB
/// FUSE write is 16 row upserts), small enough that a 4 KiB random write rewrites
/// at most 64 KiB. Measured against 16 KiB, 256 KiB and 1 MiB in
/// `docs/BENCHMARKS.md` ("chunk size").
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;

/// SQLite page size of a new workspace database.
///
/// 16 KiB: a 64 KiB chunk is stored as four overflow pages plus a small local
/// part (about 3% overhead), so a sequential write appends a quarter of the WAL
/// frames that 4 KiB pages need; 64 KiB pages would store each chunk in two
/// pages (100% overhead) and make every metadata update write 64 KiB.
pub const PAGE_SIZE: u32 = 16 * 1024;

/// WAL size (in pages) at which a writer checkpoints inline. The mount's
/// background checkpointer normally runs long before this; it is a backstop.
pub const WAL_AUTOCHECKPOINT_PAGES: i64 = 32768;

/// The size a WAL is cut down to when it starts over (`journal_size_limit`).
pub const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// Smallest and largest chunk sizes accepted at creation.
pub const CHUNK_SIZE_RANGE: std::ops::RangeInclusive<u32> = 4096..=4 * 1024 * 1024;

const AGENTFS_DDL: &str = r#"
CREATE TABLE fs_config (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
CREATE TABLE fs_inode (
  ino INTEGER PRIMARY KEY AUTOINCREMENT,
  mode INTEGER NOT NULL,
  nlink INTEGER NOT NULL DEFAULT 0,
  uid INTEGER NOT NULL DEFAULT 0,
  gid INTEGER NOT NULL DEFAULT 0,
  size INTEGER NOT NULL DEFAULT 0,
  atime INTEGER NOT NULL,
  mtime INTEGER NOT NULL,
  ctime INTEGER NOT NULL,
  rdev INTEGER NOT NULL DEFAULT 0,
  atime_nsec INTEGER NOT NULL DEFAULT 0,
  mtime_nsec INTEGER NOT NULL DEFAULT 0,
  ctime_nsec INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE fs_dentry (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL,
  parent_ino INTEGER NOT NULL,
  ino INTEGER NOT NULL,
  UNIQUE(parent_ino, name)
);
CREATE INDEX idx_fs_dentry_parent ON fs_dentry(parent_ino, name);
CREATE TABLE fs_data (
  ino INTEGER NOT NULL,
  chunk_index INTEGER NOT NULL,
  data BLOB NOT NULL,
  PRIMARY KEY (ino, chunk_index)
);
CREATE TABLE fs_symlink (
  ino INTEGER PRIMARY KEY,
  target TEXT NOT NULL
);
CREATE TABLE fs_whiteout (
  path TEXT PRIMARY KEY,
  parent_path TEXT NOT NULL,
  created_at INTEGER NOT NULL
);
CREATE INDEX idx_fs_whiteout_parent ON fs_whiteout(parent_path);
CREATE TABLE fs_overlay_config (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
CREATE TABLE fs_origin (
  delta_ino INTEGER PRIMARY KEY,
  base_ino INTEGER NOT NULL
);
CREATE TABLE kv_store (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL,
  created_at INTEGER DEFAULT (unixepoch()),
  updated_at INTEGER DEFAULT (unixepoch())
);
CREATE INDEX idx_kv_store_created_at ON kv_store(created_at);
CREATE TABLE tool_calls (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL,
  parameters TEXT,
  result TEXT,
  error TEXT,
  started_at INTEGER NOT NULL,
  completed_at INTEGER NOT NULL,
  duration_ms INTEGER NOT NULL
);
CREATE INDEX idx_tool_calls_name ON tool_calls(name);
CREATE INDEX idx_tool_calls_started_at ON tool_calls(started_at);
"#;

const CORDON_DDL: &str = r#"
CREATE TABLE cordon_meta (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
CREATE TABLE cordon_xattr (
  ino INTEGER NOT NULL,
  name BLOB NOT NULL,
  value BLOB NOT NULL,
  PRIMARY KEY (ino, name)
) WITHOUT ROWID;
CREATE TABLE cordon_dir (
  ino INTEGER PRIMARY KEY,
  opaque INTEGER NOT NULL DEFAULT 0,
  redirect BLOB
);
CREATE TABLE cordon_metacopy (
  ino INTEGER PRIMARY KEY,
  base_path BLOB NOT NULL
);
CREATE TABLE cordon_base_seen (
  path BLOB PRIMARY KEY,
  kind INTEGER NOT NULL,
  size INTEGER NOT NULL,
  mtime_ns INTEGER NOT NULL,
  ctime_ns INTEGER NOT NULL,
  ino INTEGER NOT NULL,
  sha256 BLOB,
  seen_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE cordon_snapshot (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL UNIQUE,
  created_at INTEGER NOT NULL,
  files INTEGER NOT NULL,
  bytes INTEGER NOT NULL
);
"#;

/// Tables whose rows make up the delta layer: what a snapshot copies and a fork
/// clones. Each entry is the table and its column list.
pub const DELTA_TABLES: &[(&str, &str)] = &[
    (
        "fs_inode",
        "ino, mode, nlink, uid, gid, size, atime, mtime, ctime, rdev, atime_nsec, mtime_nsec, ctime_nsec",
    ),
    ("fs_dentry", "id, name, parent_ino, ino"),
    ("fs_data", "ino, chunk_index, data"),
    ("fs_symlink", "ino, target"),
    ("fs_whiteout", "path, parent_path, created_at"),
    ("fs_origin", "delta_ino, base_ino"),
    ("kv_store", "key, value, created_at, updated_at"),
    ("cordon_xattr", "ino, name, value"),
    ("cordon_dir", "ino, opaque, redirect"),
    ("cordon_metacopy", "ino, base_path"),
    (
        "cordon_base_seen",
        "path, kind, size, mtime_ns, ctime_ns, ino, sha256, seen_at",
    ),
];

/// Name of the snapshot copy of a delta table.
pub fn snapshot_table(table: &str) -> String {
    format!("cordon_snap_{table}")
}

fn snapshot_ddl() -> String {
    let mut ddl = String::new();
    for (table, columns) in DELTA_TABLES {
        // Untyped columns keep every value exactly as stored in the live table.
        ddl.push_str(&format!(
            "CREATE TABLE {} (snap_id INTEGER NOT NULL, {columns});\n\
             CREATE INDEX idx_{}_snap ON {}(snap_id);\n",
            snapshot_table(table),
            snapshot_table(table),
            snapshot_table(table),
        ));
    }
    ddl
}

/// Applies the connection settings every workspace connection uses.
/// Sets the page size on a brand-new, still empty database file; must run before
/// [`configure`] writes the first page.
pub fn prepare_new(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    // The switch to WAL in `configure` writes the first page; the caller syncs
    // the new files itself once they are complete.
    conn.pragma_update(None, "synchronous", "OFF")
}

pub fn configure(conn: &Connection) -> rusqlite::Result<()> {
    // WAL: readers (diff, snapshot) never block the FUSE server's writes. NORMAL: a
    // commit is durable against a crash of this process (the WAL is in the page
    // cache); `fsync` from the agent additionally syncs the WAL file itself.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    // 8 MiB of page cache. A large write fills the cache with data pages it
    // never reads again, and every new page of it is fresh memory to fault in
    // (about 4 us per 4 KiB on the test VMs): 64 MiB cost a new mount's first
    // 256 MiB write some 60 ms (17,000 faults against 2,500). Metadata work
    // (10k creates, find, git status) measured no different; the kernel's
    // page cache still holds the database file.
    conn.pragma_update(None, "cache_size", -8192)?;
    // A snapshot of a large delta holds the write lock for a while; the agent's
    // operations wait for it rather than fail.
    conn.busy_timeout(std::time::Duration::from_secs(120))?;
    // Large writes must not stall on checkpoints (the default is every 1000 pages);
    // the mount checkpoints in the background when the workspace is idle.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
    // After a checkpoint lets the WAL restart, shrink its file back to this size.
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
    Ok(())
}

/// Parameters of a new workspace database.
#[derive(Debug, Clone)]
pub struct NewDatabase<'a> {
    pub workspace_id: &'a str,
    pub base_path: &'a Path,
    pub chunk_size: u32,
    /// Mode, owner and times of the base root, given to the delta root inode.
    pub root_mode: u32,
    pub root_uid: u32,
    pub root_gid: u32,
    pub root_nlink: u32,
    pub now: (i64, u32),
}

/// Creates the schema in an empty database and fills the configuration rows.
pub fn initialize(conn: &Connection, new: &NewDatabase<'_>) -> rusqlite::Result<()> {
    fix_page_size(conn)?;
    let tx = conn.unchecked_transaction()?;
    create_tables(&tx)?;
    fill(&tx, new)?;
    tx.commit()
}

fn fix_page_size(conn: &Connection) -> rusqlite::Result<()> {
    // The page size is fixed by the first table; in WAL mode it cannot change
    // later. A new file gets it from `prepare_new` before anything is written;
    // an existing one is rebuilt (slow: several syncs).
    let page_size: u32 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
    if page_size != PAGE_SIZE {
        conn.pragma_update(None, "journal_mode", "DELETE")?;
        conn.pragma_update(None, "page_size", PAGE_SIZE)?;
        conn.execute_batch("VACUUM")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    Ok(())
}

fn create_tables(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(AGENTFS_DDL)?;
    conn.execute_batch(CORDON_DDL)?;
    conn.execute_batch(&snapshot_ddl())
}

/// Names the schema a template database holds (see [`write_template`]): a
/// hash of everything that shapes the file, so a template written by another
/// version of Cordon or SQLite is never used.
pub fn template_key() -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [
        AGENTFS_DDL,
        CORDON_DDL,
        &snapshot_ddl(),
        rusqlite::version(),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.update(PAGE_SIZE.to_le_bytes());
    h.update(SCHEMA_VERSION.to_le_bytes());
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes an empty database with every table and index of a workspace and
/// nothing else, in WAL mode and fully checkpointed, marked with
/// [`template_key`]: copying it and running [`fill_template`] makes a new
/// workspace database without running the DDL again (about 4 ms of the start
/// of a new session).
pub fn write_template(path: &Path) -> rusqlite::Result<()> {
    let conn = Connection::open(path)?;
    prepare_new(&conn)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let tx = conn.unchecked_transaction()?;
    create_tables(&tx)?;
    tx.execute(
        "INSERT INTO cordon_meta (key, value) VALUES ('template', ?1)",
        [template_key()],
    )?;
    tx.commit()?;
    // Closing the only connection checkpoints the WAL into the file and
    // removes it: the template is one self-contained file.
    conn.close().map_err(|(_, e)| e)
}

/// Fills a copy of a template (see [`write_template`]) as [`initialize`]
/// would fill a new database. Fails, changing nothing, unless the copy holds
/// the template of this very schema.
pub fn fill_template(conn: &Connection, new: &NewDatabase<'_>) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    let key: Option<String> = tx
        .query_row(
            "SELECT value FROM cordon_meta WHERE key = 'template'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let count: i64 = tx.query_row("SELECT count(*) FROM cordon_meta", [], |r| r.get(0))?;
    if key.as_deref() != Some(template_key().as_str()) || count != 1 {
        return Err(rusqlite::Error::InvalidQuery);
    }
    tx.execute("DELETE FROM cordon_meta WHERE key = 'template'", [])?;
    fill(&tx, new)?;
    tx.commit()
}

fn fill(tx: &Connection, new: &NewDatabase<'_>) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO fs_config (key, value) VALUES ('chunk_size', ?1), ('schema_version', ?2)",
        rusqlite::params![new.chunk_size.to_string(), AGENTFS_VERSION],
    )?;
    let base = new.base_path.to_string_lossy();
    tx.execute(
        "INSERT INTO fs_overlay_config (key, value) VALUES ('base_type', 'hostfs'), ('base_path', ?1)",
        [base.as_ref()],
    )?;
    let (sec, nsec) = new.now;
    tx.execute(
        "INSERT INTO fs_inode (ino, mode, nlink, uid, gid, size, atime, mtime, ctime, rdev, \
         atime_nsec, mtime_nsec, ctime_nsec) VALUES (1, ?1, ?6, ?2, ?3, 0, ?4, ?4, ?4, 0, ?5, ?5, ?5)",
        rusqlite::params![new.root_mode, new.root_uid, new.root_gid, sec, nsec, new.root_nlink],
    )?;
    // The root merges with the base root: not opaque, no redirect.
    tx.execute(
        "INSERT INTO cordon_dir (ino, opaque, redirect) VALUES (1, 0, NULL)",
        [],
    )?;
    let meta: [(&str, String); 5] = [
        ("schema_version", SCHEMA_VERSION.to_string()),
        ("workspace_id", new.workspace_id.to_string()),
        ("created_at", sec.to_string()),
        // Host changes after this instant count as conflicts at apply time.
        (
            "base_epoch_ns",
            (sec as i128 * 1_000_000_000 + i128::from(nsec)).to_string(),
        ),
        ("base_path", base.into_owned()),
    ];
    for (k, v) in meta {
        tx.execute(
            "INSERT INTO cordon_meta (key, value) VALUES (?1, ?2)",
            [k, v.as_str()],
        )?;
    }
    // AgentFS >= 0.5 reads PRAGMA user_version; 4 tells it these are 0.4 tables.
    tx.pragma_update(None, "user_version", 4)
}

/// Opens an existing workspace database and checks that it is one of ours.
pub fn open(path: &Path, read_only: bool) -> Result<Connection> {
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::from_raw_os_error(libc::ENOENT),
        ));
    }
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    // Writers gather the WAL's small writes into large ones (see `vfs`).
    let conn = match crate::vfs::name() {
        Some(vfs) if !read_only => Connection::open_with_flags_and_vfs(path, flags, vfs),
        _ => Connection::open_with_flags(path, flags),
    }
    .map_err(|e| Error::sqlite(path, e))?;
    // The first read of the header is where a foreign file shows itself.
    let tables: Vec<String> = (|| {
        let mut stmt = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table'")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
    })()
    .map_err(|e| Error::sqlite(path, e))?;
    for required in [
        "fs_config",
        "fs_inode",
        "fs_dentry",
        "fs_data",
        "fs_symlink",
        "fs_whiteout",
        "fs_origin",
        "fs_overlay_config",
        "cordon_meta",
        "cordon_dir",
        "cordon_metacopy",
    ] {
        if !tables.iter().any(|t| t == required) {
            return Err(Error::ForeignDatabase {
                path: path.to_path_buf(),
                reason: format!("table {required} is missing"),
            });
        }
    }
    let version: Option<String> = conn
        .query_row(
            "SELECT value FROM cordon_meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| Error::sqlite(path, e))?;
    let version: u32 = version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::ForeignDatabase {
            path: path.to_path_buf(),
            reason: "cordon_meta has no valid schema_version".into(),
        })?;
    if version > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if !read_only {
        configure(&conn).map_err(|e| Error::sqlite(path, e))?;
        migrate(&conn, version).map_err(|e| Error::sqlite(path, e))?;
    } else {
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| Error::sqlite(path, e))?;
    }
    Ok(conn)
}

/// Brings the `cordon_*` tables from `from` up to [`SCHEMA_VERSION`].
fn migrate(_conn: &Connection, from: u32) -> rusqlite::Result<()> {
    // Version 1 is the first released layout; later versions add steps here.
    debug_assert!(from <= SCHEMA_VERSION);
    Ok(())
}

/// Reads a `cordon_meta` value.
pub fn meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM cordon_meta WHERE key = ?1", [key], |r| {
        r.get(0)
    })
    .optional()
}

/// Writes a `cordon_meta` value.
pub fn set_meta(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO cordon_meta (key, value) VALUES (?1, ?2) \
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [key, value],
    )?;
    Ok(())
}

/// Reads the chunk size from `fs_config`.
pub fn chunk_size(conn: &Connection) -> rusqlite::Result<u32> {
    let v: String = conn.query_row(
        "SELECT value FROM fs_config WHERE key = 'chunk_size'",
        [],
        |r| r.get(0),
    )?;
    v.parse::<u32>()
        .ok()
        .filter(|c| CHUNK_SIZE_RANGE.contains(c))
        .ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Text,
                format!("chunk_size {v:?} is outside {CHUNK_SIZE_RANGE:?}").into(),
            )
        })
}

/// A fresh workspace database for unit tests, at `path` over `base`.
#[cfg(test)]
pub(crate) fn test_database(path: &Path, base: &Path, chunk_size: u32) -> Connection {
    let conn = Connection::open(path).expect("create test database");
    configure(&conn).expect("configure test database");
    initialize(
        &conn,
        &NewDatabase {
            workspace_id: "test",
            base_path: base,
            chunk_size,
            root_mode: libc::S_IFDIR | 0o755,
            root_uid: 0,
            root_gid: 0,
            root_nlink: 2,
            now: (1, 0),
        },
    )
    .expect("initialize test database");
    conn
}
