//! Workspaces on disk: where they live, how they are named, created, locked,
//! snapshotted, forked and discarded.
//!
//! Layout under the data directory (`$CORDON_HOME`, else `$XDG_DATA_HOME/cordon`,
//! else `~/.local/share/cordon`):
//!
//! ```text
//! workspaces/<id>/workspace.db     the whole workspace: delta, metadata, snapshots
//! workspaces/<id>/mount.lock       flock()ed while a FUSE server serves it
//! sessions/<id>/workspace.db       the same, for workspaces made by `cordon run`
//! ```
//!
//! The lock is an advisory `flock`, so a server killed with SIGKILL never leaves
//! a stale lock behind.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};
use serde::Serialize;

use crate::base::Base;
use crate::error::{Error, Result};
use crate::overlay::{Overlay, OverlayOptions};
use crate::schema::{self, DELTA_TABLES};
use crate::store::{Store, Timestamp};

/// File name of the database inside a workspace directory.
pub const DB_FILE: &str = "workspace.db";
const LOCK_FILE: &str = "mount.lock";

/// The directory holding all of Cordon's state.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

/// Summary of a workspace, as `cordon workspace list --json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct WorkspaceInfo {
    pub id: String,
    pub kind: &'static str,
    pub base: String,
    pub created_at: i64,
    pub forked_from: Option<String>,
    pub mounted_by: Option<u32>,
    pub db_path: PathBuf,
    pub db_bytes: u64,
    pub snapshots: u64,
}

/// A snapshot, as `cordon snapshots --json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotInfo {
    pub name: String,
    pub created_at: i64,
    /// Inodes in the delta at the time.
    pub files: u64,
    /// Bytes of file data in the delta at the time.
    pub bytes: u64,
}

impl DataDir {
    /// The data directory from the environment.
    pub fn from_env() -> Result<Self> {
        let root = if let Some(h) = std::env::var_os("CORDON_HOME").filter(|v| !v.is_empty()) {
            PathBuf::from(h)
        } else if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            PathBuf::from(x).join("cordon")
        } else if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            PathBuf::from(home).join(".local/share/cordon")
        } else {
            return Err(Error::Invalid {
                what: "data directory",
                reason: "none of CORDON_HOME, XDG_DATA_HOME or HOME is set; set CORDON_HOME".into(),
            });
        };
        Ok(DataDir { root })
    }

    /// A data directory at an explicit path.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn kinds(&self) -> [(&'static str, PathBuf); 2] {
        [
            ("workspace", self.root.join("workspaces")),
            ("session", self.root.join("sessions")),
        ]
    }

    /// Creates a workspace over `base`; returns once its files are on disk.
    pub fn create_workspace(&self, base: &Path, chunk_size: u32) -> Result<Workspace> {
        let ws = self.create_workspace_unsynced(base, chunk_size)?;
        ws.sync_files()?;
        Ok(ws)
    }

    /// Creates a workspace over `base` without waiting for the disk: the caller
    /// must call [`Workspace::sync_files`] (e.g. on another thread, while a
    /// sandbox starts) before relying on the workspace surviving a power loss.
    pub fn create_workspace_unsynced(&self, base: &Path, chunk_size: u32) -> Result<Workspace> {
        self.create_in("workspace", "workspaces", base, chunk_size)
    }

    /// Starts the workspace of a new `cordon run` session
    /// (`sessions/<id>/workspace.db`; the session keeps its records beside it):
    /// every check, and the session's directory. The database is written by
    /// [`Unbuilt::build`], which `cordon run` does on the mount's thread while
    /// it writes the session's records, without waiting for the disk (see
    /// [`Self::create_workspace_unsynced`]).
    pub fn begin_session(&self, base: &Path, chunk_size: u32) -> Result<Unbuilt> {
        self.begin_in("session", "sessions", base, chunk_size)
    }

    fn create_in(
        &self,
        kind: &'static str,
        subdir: &str,
        base: &Path,
        chunk_size: u32,
    ) -> Result<Workspace> {
        let unbuilt = self.begin_in(kind, subdir, base, chunk_size)?;
        let ws = unbuilt.workspace().clone();
        if let Err(e) = unbuilt.build() {
            let _ = std::fs::remove_dir_all(&ws.dir);
            return Err(e);
        }
        Ok(ws)
    }

    fn begin_in(
        &self,
        kind: &'static str,
        subdir: &str,
        base: &Path,
        chunk_size: u32,
    ) -> Result<Unbuilt> {
        if !schema::CHUNK_SIZE_RANGE.contains(&chunk_size) || !chunk_size.is_power_of_two() {
            return Err(Error::Invalid {
                what: "chunk size",
                reason: format!(
                    "{chunk_size} is not a power of two between {} and {}",
                    schema::CHUNK_SIZE_RANGE.start(),
                    schema::CHUNK_SIZE_RANGE.end()
                ),
            });
        }
        let base_dir = Base::open(base)?;
        let base_path = base_dir.path().to_path_buf();
        let parent = self.root.join(subdir);
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let data_canon = self
            .root
            .canonicalize()
            .map_err(|e| Error::io(&self.root, e))?;
        if data_canon.starts_with(&base_path) {
            return Err(Error::DataInsideBase {
                data: data_canon,
                base: base_path,
            });
        }
        let id = new_id();
        let dir = parent.join(&id);
        std::fs::create_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Unbuilt {
            ws: Workspace { id, kind, dir },
            base_path,
            chunk_size,
            templates: self.root.join("templates"),
        })
    }

    /// Finds a workspace or session by its exact id (for destructive commands).
    pub fn resolve_exact(&self, id: &str) -> Result<Workspace> {
        let ws = self.resolve(id)?;
        if ws.id != id {
            return Err(Error::Invalid {
                what: "workspace id",
                reason: format!(
                    "{id:?} is a prefix of {}; give the full id to discard it",
                    ws.id
                ),
            });
        }
        Ok(ws)
    }

    /// Finds a workspace or session by id or unique id prefix.
    pub fn resolve(&self, id: &str) -> Result<Workspace> {
        if id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::UnknownWorkspace { id: id.into() });
        }
        // A full id is found without listing every workspace (which grows with
        // each `cordon run`); an exact name wins over prefixes either way.
        for (kind, dir) in self.kinds() {
            let path = dir.join(id);
            if path.join(DB_FILE).is_file() {
                return Ok(Workspace {
                    id: id.into(),
                    kind,
                    dir: path,
                });
            }
        }
        let mut matches = Vec::new();
        for (kind, dir) in self.kinds() {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                // A directory without a database is debris of an interrupted
                // create; it is not a workspace.
                if !e.path().join(DB_FILE).is_file() {
                    continue;
                }
                let name = e.file_name().to_string_lossy().into_owned();
                if name == id {
                    return Ok(Workspace {
                        id: name,
                        kind,
                        dir: e.path(),
                    });
                }
                if name.starts_with(id) {
                    matches.push(Workspace {
                        id: name,
                        kind,
                        dir: e.path(),
                    });
                }
            }
        }
        match matches.len() {
            1 => Ok(matches.pop().expect("one match")),
            0 => Err(Error::UnknownWorkspace { id: id.into() }),
            _ => Err(Error::AmbiguousWorkspace {
                id: id.into(),
                matches: matches
                    .iter()
                    .map(|w| w.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Every workspace and session, oldest first. Unreadable ones are reported
    /// with an empty base rather than hiding the rest.
    pub fn list(&self) -> Result<Vec<WorkspaceInfo>> {
        let mut out = Vec::new();
        for (kind, dir) in self.kinds() {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                if !e.path().join(DB_FILE).exists() {
                    continue;
                }
                let ws = Workspace {
                    id: e.file_name().to_string_lossy().into_owned(),
                    kind,
                    dir: e.path(),
                };
                out.push(ws.info().unwrap_or_else(|_| WorkspaceInfo {
                    id: ws.id.clone(),
                    kind,
                    base: String::new(),
                    created_at: 0,
                    forked_from: None,
                    mounted_by: ws.mounted_by(),
                    db_path: ws.db_path(),
                    db_bytes: 0,
                    snapshots: 0,
                }));
            }
        }
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }
}

/// A random 12-hex-digit id.
fn new_id() -> String {
    let mut b = [0u8; 6];
    if getrandom::fill(&mut b).is_err() {
        // getrandom only fails without any entropy source; fall back to time and pid.
        let t = Timestamp::now();
        let v = (t.nsec as u64) ^ ((t.sec as u64) << 20) ^ u64::from(std::process::id());
        b.copy_from_slice(&v.to_le_bytes()[..6]);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Valid snapshot names: 1–64 of `[A-Za-z0-9._-]`, not starting with `.` or `-`.
pub fn check_snapshot_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::Snapshot {
            name: name.into(),
            reason: "names are 1-64 characters of letters, digits, '.', '_' and '-', not starting with '.' or '-'"
                .into(),
        })
    }
}

/// A workspace (or session) on disk.
#[derive(Clone, Debug)]
pub struct Workspace {
    pub id: String,
    pub kind: &'static str,
    pub dir: PathBuf,
}

/// Exclusive right to serve a workspace, held while mounted.
#[derive(Debug)]
pub struct MountLock {
    _file: File,
}

impl Workspace {
    /// Make a new workspace's files durable (database, its WAL, their directory).
    pub fn sync_files(&self) -> Result<()> {
        let db = self.db_path();
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        for p in [PathBuf::from(wal), db, self.dir.clone()] {
            match std::fs::File::open(&p) {
                Ok(f) => f.sync_all().map_err(|e| Error::io(&p, e))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&p, e)),
            }
        }
        Ok(())
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join(DB_FILE)
    }

    /// Opens the database read-write, validating it.
    pub fn connect(&self) -> Result<Connection> {
        schema::open(&self.db_path(), false)
    }

    /// Opens the database read-only (diff, list, export).
    pub fn connect_read_only(&self) -> Result<Connection> {
        schema::open(&self.db_path(), true)
    }

    /// Canonical base directory recorded at creation.
    pub fn base_path(&self, conn: &Connection) -> Result<PathBuf> {
        let db = self.db_path();
        let v = schema::meta(conn, "base_path")
            .map_err(|e| Error::sqlite(&db, e))?
            .ok_or_else(|| Error::ForeignDatabase {
                path: db.clone(),
                reason: "cordon_meta has no base_path".into(),
            })?;
        Ok(PathBuf::from(v))
    }

    /// Host changes after this instant (ns since the epoch) are apply conflicts.
    pub fn base_epoch_ns(&self, conn: &Connection) -> Result<i64> {
        let db = self.db_path();
        Ok(schema::meta(conn, "base_epoch_ns")
            .map_err(|e| Error::sqlite(&db, e))?
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0))
    }

    /// Opens the store and base for reading the merged view without a mount.
    pub fn open_view(&self, read_only: bool) -> Result<(Store, Base)> {
        let conn = schema::open(&self.db_path(), read_only)?;
        self.view_on(conn)
    }

    /// [`Self::open_view`] on a connection the caller already opened (from
    /// [`Self::connect`] or [`Self::connect_read_only`]): SQLite parses the
    /// schema once per connection, which costs more than the reads it serves.
    pub fn view_on(&self, conn: Connection) -> Result<(Store, Base)> {
        let db = self.db_path();
        let base_path = self.base_path(&conn)?;
        let base = Base::open(&base_path)?;
        let store = Store::new(conn, &db).map_err(|e| Error::sqlite(&db, e))?;
        Ok((store, base))
    }

    /// Summary for listings.
    pub fn info(&self) -> Result<WorkspaceInfo> {
        let db = self.db_path();
        let conn = self.connect_read_only()?;
        let q = |k: &str| schema::meta(&conn, k).map_err(|e| Error::sqlite(&db, e));
        let snapshots: i64 = conn
            .query_row("SELECT COUNT(*) FROM cordon_snapshot", [], |r| r.get(0))
            .map_err(|e| Error::sqlite(&db, e))?;
        let db_bytes = ["", "-wal"]
            .iter()
            .filter_map(|s| {
                let mut p = db.as_os_str().to_owned();
                p.push(s);
                std::fs::metadata(p).ok().map(|m| m.len())
            })
            .sum();
        Ok(WorkspaceInfo {
            id: self.id.clone(),
            kind: self.kind,
            base: q("base_path")?.unwrap_or_default(),
            created_at: q("created_at")?.and_then(|v| v.parse().ok()).unwrap_or(0),
            forked_from: q("forked_from")?,
            mounted_by: self.mounted_by(),
            db_path: db.clone(),
            db_bytes,
            snapshots: snapshots as u64,
        })
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join(LOCK_FILE)
    }

    /// Takes the mount lock, or says who holds it.
    pub fn lock(&self) -> Result<MountLock> {
        let path = self.lock_path();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                return Err(Error::Mounted {
                    id: self.id.clone(),
                    pid: pid.trim().to_string(),
                });
            }
            Err(e) => return Err(Error::io(&path, e.into())),
        }
        file.set_len(0).map_err(|e| Error::io(&path, e))?;
        write!(file, "{}", std::process::id()).map_err(|e| Error::io(&path, e))?;
        Ok(MountLock { _file: file })
    }

    /// Process id of the server holding the mount lock, if any.
    pub fn mounted_by(&self) -> Option<u32> {
        let path = self.lock_path();
        let mut file = File::open(&path).ok()?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared) {
            Ok(()) => None,
            Err(_) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                Some(pid.trim().parse().unwrap_or(0))
            }
        }
    }

    /// Builds the overlay for serving. The caller must hold the mount lock.
    pub fn overlay(&self, lock: &MountLock, opts: OverlayOptions) -> Result<Overlay> {
        self.overlay_on(self.connect()?, lock, opts)
    }

    /// [`Workspace::overlay`] on a connection the caller opened with
    /// [`Workspace::connect`] (opening one parses the whole schema, about half
    /// a millisecond that `cordon run` would otherwise pay twice).
    pub fn overlay_on(
        &self,
        conn: Connection,
        _lock: &MountLock,
        opts: OverlayOptions,
    ) -> Result<Overlay> {
        let db = self.db_path();
        let base_path = self.base_path(&conn)?;
        let base = Base::open(&base_path)?;
        let store = Store::new(conn, &db).map_err(|e| Error::sqlite(&db, e))?;
        Overlay::new(store, base, opts).map_err(|e| Error::Io {
            path: db,
            source: std::io::Error::from_raw_os_error(e.code()),
        })
    }

    /// Takes a named snapshot of the delta. Safe while mounted: it is one transaction.
    pub fn snapshot(&self, name: Option<&str>) -> Result<SnapshotInfo> {
        let db = self.db_path();
        let conn = self.connect()?;
        let sq = |e| Error::sqlite(&db, e);
        let tx =
            rusqlite::Transaction::new_unchecked(&conn, rusqlite::TransactionBehavior::Immediate)
                .map_err(sq)?;
        let name = match name {
            Some(n) => {
                check_snapshot_name(n)?;
                n.to_string()
            }
            None => {
                let n: i64 = tx
                    .query_row(
                        "SELECT COALESCE(MAX(id), 0) + 1 FROM cordon_snapshot",
                        [],
                        |r| r.get(0),
                    )
                    .map_err(sq)?;
                format!("snap-{n}")
            }
        };
        let exists: bool = tx
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM cordon_snapshot WHERE name = ?1)",
                [&name],
                |r| r.get(0),
            )
            .map_err(sq)?;
        if exists {
            return Err(Error::Snapshot {
                name,
                reason: "a snapshot with this name exists; pick another name".into(),
            });
        }
        let files: i64 = tx
            .query_row("SELECT COUNT(*) FROM fs_inode", [], |r| r.get(0))
            .map_err(sq)?;
        let bytes: i64 = tx
            .query_row(
                "SELECT COALESCE(SUM(length(data)), 0) FROM fs_data",
                [],
                |r| r.get(0),
            )
            .map_err(sq)?;
        let now = Timestamp::now().sec;
        tx.execute(
            "INSERT INTO cordon_snapshot (name, created_at, files, bytes) VALUES (?1, ?2, ?3, ?4)",
            params![name, now, files, bytes],
        )
        .map_err(sq)?;
        let snap_id = tx.last_insert_rowid();
        for (table, cols) in DELTA_TABLES {
            tx.execute(
                &format!(
                    "INSERT INTO {} (snap_id, {cols}) SELECT ?1, {cols} FROM {table}",
                    schema::snapshot_table(table)
                ),
                [snap_id],
            )
            .map_err(sq)?;
        }
        tx.commit().map_err(sq)?;
        Ok(SnapshotInfo {
            name,
            created_at: now,
            files: files as u64,
            bytes: bytes as u64,
        })
    }

    /// Snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        let db = self.db_path();
        let conn = self.connect_read_only()?;
        let mut stmt = conn
            .prepare("SELECT name, created_at, files, bytes FROM cordon_snapshot ORDER BY id")
            .map_err(|e| Error::sqlite(&db, e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(SnapshotInfo {
                    name: r.get(0)?,
                    created_at: r.get(1)?,
                    files: r.get::<_, i64>(2)? as u64,
                    bytes: r.get::<_, i64>(3)? as u64,
                })
            })
            .map_err(|e| Error::sqlite(&db, e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| Error::sqlite(&db, e))
    }

    /// Creates a new workspace over the same base whose delta is this one's
    /// current delta, or the delta of snapshot `snapshot`.
    pub fn fork(&self, data: &DataDir, snapshot: Option<&str>) -> Result<Workspace> {
        let src_db = self.db_path();
        let src = self.connect_read_only()?;
        let base = self.base_path(&src)?;
        let chunk = schema::chunk_size(&src).map_err(|e| Error::sqlite(&src_db, e))?;
        let snap_id: Option<i64> = match snapshot {
            Some(name) => Some(
                src.query_row(
                    "SELECT id FROM cordon_snapshot WHERE name = ?1",
                    [name],
                    |r| r.get(0),
                )
                .map_err(|_| Error::Snapshot {
                    name: name.into(),
                    reason: format!(
                        "workspace {} has no such snapshot (list them with `cordon snapshots {}`)",
                        self.id, self.id
                    ),
                })?,
            ),
            None => None,
        };
        drop(src);
        let new = data.create_workspace(&base, chunk)?;
        let new_db = new.db_path();
        let result = (|| {
            let conn = new.connect()?;
            let sq = |e| Error::sqlite(&new_db, e);
            conn.execute(
                "ATTACH DATABASE ?1 AS src",
                [src_db.to_string_lossy().as_ref()],
            )
            .map_err(sq)?;
            let tx = conn.unchecked_transaction().map_err(sq)?;
            for (table, cols) in DELTA_TABLES {
                tx.execute(&format!("DELETE FROM main.{table}"), [])
                    .map_err(sq)?;
                let from = match snap_id {
                    Some(id) => format!(
                        "SELECT {cols} FROM src.{} WHERE snap_id = {id}",
                        schema::snapshot_table(table)
                    ),
                    None => format!("SELECT {cols} FROM src.{table}"),
                };
                tx.execute(&format!("INSERT INTO main.{table} ({cols}) {from}"), [])
                    .map_err(sq)?;
            }
            let origin = match snapshot {
                Some(s) => format!("{}@{s}", self.id),
                None => self.id.clone(),
            };
            schema::set_meta(&tx, "forked_from", &origin).map_err(sq)?;
            // The fork sees the base as the original saw it: keep its epoch.
            let epoch: Option<String> = tx
                .query_row(
                    "SELECT value FROM src.cordon_meta WHERE key = 'base_epoch_ns'",
                    [],
                    |r| r.get(0),
                )
                .ok();
            if let Some(epoch) = epoch {
                schema::set_meta(&tx, "base_epoch_ns", &epoch).map_err(sq)?;
            }
            tx.commit().map_err(sq)?;
            conn.execute("DETACH DATABASE src", []).map_err(sq)?;
            Ok(())
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&new.dir);
            return Err(e);
        }
        Ok(new)
    }

    /// Deletes the workspace and everything in it. Refused while mounted.
    pub fn discard(self) -> Result<()> {
        let _lock = self.lock()?;
        std::fs::remove_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))
    }

    /// Checks the database: SQLite's integrity check plus the store's own rules.
    /// Returns the problems found (empty when healthy).
    pub fn check(&self) -> Result<Vec<String>> {
        let db = self.db_path();
        let conn = self.connect_read_only()?;
        let sq = |e| Error::sqlite(&db, e);
        let mut problems = Vec::new();
        let mut stmt = conn.prepare("PRAGMA integrity_check").map_err(sq)?;
        for r in stmt.query_map([], |r| r.get::<_, String>(0)).map_err(sq)? {
            let r = r.map_err(sq)?;
            if r != "ok" {
                problems.push(format!("sqlite: {r}"));
            }
        }
        let checks: &[(&str, &str)] = &[
            (
                "directory entries pointing at missing inodes",
                "SELECT COUNT(*) FROM fs_dentry d LEFT JOIN fs_inode i ON i.ino = d.ino WHERE i.ino IS NULL",
            ),
            (
                "directory entries inside non-directories",
                "SELECT COUNT(*) FROM fs_dentry d JOIN fs_inode p ON p.ino = d.parent_ino \
                 WHERE (p.mode & 61440) != 16384",
            ),
            (
                "files whose link count differs from their entries",
                "SELECT COUNT(*) FROM fs_inode i WHERE (i.mode & 61440) != 16384 AND i.ino != 1 \
                 AND i.nlink != (SELECT COUNT(*) FROM fs_dentry d WHERE d.ino = i.ino)",
            ),
            (
                "data chunks of missing inodes",
                "SELECT COUNT(*) FROM fs_data f LEFT JOIN fs_inode i ON i.ino = f.ino WHERE i.ino IS NULL",
            ),
            (
                "data chunks past the end of their file",
                "SELECT COUNT(*) FROM fs_data f JOIN fs_inode i ON i.ino = f.ino \
                 WHERE f.chunk_index * (SELECT CAST(value AS INTEGER) FROM fs_config WHERE key = 'chunk_size') >= i.size",
            ),
            (
                "symbolic links without a target",
                "SELECT COUNT(*) FROM fs_inode i LEFT JOIN fs_symlink s ON s.ino = i.ino \
                 WHERE (i.mode & 61440) = 40960 AND s.ino IS NULL",
            ),
        ];
        for (what, sql) in checks {
            let n: i64 = conn.query_row(sql, [], |r| r.get(0)).map_err(sq)?;
            if n > 0 {
                problems.push(format!("{n} {what}"));
            }
        }
        Ok(problems)
    }
}

/// Whether `path` is itself a mount point (per /proc/self/mountinfo).
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(canon) = path.canonicalize() else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .map(unescape_mountinfo)
            .is_some_and(|p| Path::new(&p) == canon)
    })
}

fn unescape_mountinfo(s: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    std::ffi::OsString::from_vec(out)
}

/// A workspace whose directory exists but whose database is not written yet
/// (see [`DataDir::begin_session`]).
#[derive(Debug)]
pub struct Unbuilt {
    ws: Workspace,
    base_path: PathBuf,
    chunk_size: u32,
    /// The data directory's `templates/` (see [`schema::write_template`]).
    templates: PathBuf,
}

impl Unbuilt {
    /// The workspace it will be.
    pub fn workspace(&self) -> &Workspace {
        &self.ws
    }

    /// Writes the database (schema and root, without syncing: see
    /// [`Workspace::sync_files`]). On failure the directory stays for the
    /// caller to remove.
    pub fn build(self) -> Result<()> {
        self.write().map(drop)
    }

    /// [`Self::build`], returning the connection that wrote it, set up to serve
    /// a mount (see [`crate::mount::mount_on`]): its schema is parsed already.
    pub fn build_for_serving(self) -> Result<Connection> {
        let db = self.ws.db_path();
        let conn = self.write()?;
        schema::configure(&conn)
            .and_then(|()| {
                conn.set_db_config(
                    rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                    false,
                )
            })
            .map(drop)
            .map_err(|e| Error::sqlite(&db, e))?;
        Ok(conn)
    }

    fn write(self) -> Result<Connection> {
        let Unbuilt {
            ws,
            base_path,
            chunk_size,
            templates,
        } = self;
        let db_path = ws.db_path();
        let st = rustix::fs::stat(&base_path).map_err(|e| Error::io(&base_path, e.into()))?;
        let now = Timestamp::now();
        let new = schema::NewDatabase {
            workspace_id: &ws.id,
            base_path: &base_path,
            chunk_size,
            root_mode: st.st_mode,
            root_uid: st.st_uid,
            root_gid: st.st_gid,
            root_nlink: (st.st_nlink as u32).max(2),
            now: (now.sec, now.nsec),
        };
        if let Some(conn) = from_template(&templates, &db_path, &new) {
            return Ok(conn);
        }
        let conn = Connection::open(&db_path).map_err(|e| Error::sqlite(&db_path, e))?;
        schema::prepare_new(&conn).map_err(|e| Error::sqlite(&db_path, e))?;
        building(&conn).map_err(|e| Error::sqlite(&db_path, e))?;
        schema::initialize(&conn, &new).map_err(|e| Error::sqlite(&db_path, e))?;
        Ok(conn)
    }
}

/// Settings of a connection that writes a new database. Creation is one
/// transaction into a fresh WAL; SQLite's own syncs (and the checkpoint when
/// this connection closes) would cost more than everything else `cordon run`
/// does before the agent starts. Instead: no syncs while building, no
/// checkpoint on close (the mount's checkpointer folds the WAL in), and one
/// explicit sync of each file and the directory at the end
/// ([`Workspace::sync_files`]).
fn building(conn: &Connection) -> rusqlite::Result<()> {
    schema::configure(conn)?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .map(drop)
}

/// Makes a new workspace database as a copy of the data directory's template
/// (written first if there is none for this schema yet): a file copy instead
/// of creating 28 tables and 24 indexes. `None` sends the caller to the full
/// build; a template that turns out unusable is removed, with a warning.
fn from_template(dir: &Path, db: &Path, new: &schema::NewDatabase<'_>) -> Option<Connection> {
    let template = dir.join(format!("workspace-{}.db", schema::template_key()));
    if !template.exists()
        && let Err(e) = write_template(dir, &template)
    {
        tracing::warn!(template = %template.display(), error = %e,
            "could not write the workspace template; building the database in full");
        return None;
    }
    let copied = (|| -> std::result::Result<Connection, String> {
        std::fs::copy(&template, db).map_err(|e| e.to_string())?;
        let conn = Connection::open(db).map_err(|e| e.to_string())?;
        building(&conn).map_err(|e| e.to_string())?;
        schema::fill_template(&conn, new)
            .map_err(|e| format!("not a template of this schema ({e})"))?;
        Ok(conn)
    })();
    match copied {
        Ok(conn) => Some(conn),
        Err(e) => {
            tracing::warn!(template = %template.display(), error = %e,
                "the workspace template is unusable; removing it and building the database in full");
            let _ = std::fs::remove_file(&template);
            remove_database(db);
            None
        }
    }
}

/// Removes a database file with its WAL and shared-memory files, if any.
fn remove_database(db: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

/// Writes `template` (see [`schema::write_template`]) through a temporary
/// file and a rename, so a reader never sees half of one, and removes the
/// templates of other schemas.
fn write_template(dir: &Path, template: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let name = template.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    remove_database(&tmp);
    schema::write_template(&tmp).map_err(std::io::Error::other)?;
    File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, template)?;
    File::open(dir)?.sync_all()?;
    for entry in std::fs::read_dir(dir)?.flatten() {
        let n = entry.file_name();
        let n = n.to_string_lossy();
        if n.starts_with("workspace-") && n.ends_with(".db") && *n != *name {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dir_inside_base_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let data = DataDir::at(base.path().join(".cordon"));
        std::fs::create_dir_all(data.root()).unwrap();
        let e = data.create_workspace(base.path(), 65536).unwrap_err();
        assert!(matches!(e, Error::DataInsideBase { .. }), "{e}");
    }

    /// Everything of a workspace database but the id and the times.
    fn fingerprint(ws: &Workspace) -> Vec<String> {
        let conn = ws.connect_read_only().unwrap();
        let mut out = Vec::new();
        let queries = [
            "SELECT type || ' ' || name || ' ' || ifnull(sql, '') FROM sqlite_master ORDER BY name",
            "SELECT key || '=' || value FROM fs_config ORDER BY key",
            "SELECT key || '=' || value FROM fs_overlay_config ORDER BY key",
            "SELECT key FROM cordon_meta ORDER BY key",
            "SELECT ino || ' ' || mode || ' ' || nlink || ' ' || uid FROM fs_inode",
            "SELECT name || '=' || seq FROM sqlite_sequence",
            "SELECT 'user_version ' || user_version FROM pragma_user_version",
            "SELECT 'page_size ' || page_size FROM pragma_page_size",
            "SELECT 'journal_mode ' || journal_mode FROM pragma_journal_mode",
        ];
        for q in queries {
            let mut stmt = conn.prepare(q).unwrap();
            let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
            out.extend(rows.map(|r| r.unwrap()));
        }
        out
    }

    #[test]
    fn a_database_copied_from_the_template_equals_one_built_in_full() {
        let base = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        let data = DataDir::at(home.path());
        let templates = home.path().join("templates");
        // The first creation writes the template; the second copies it.
        let first = data.create_workspace(base.path(), 65536).unwrap();
        let written: Vec<_> = std::fs::read_dir(&templates).unwrap().flatten().collect();
        assert_eq!(written.len(), 1, "one template file, no leftovers");
        let copied = data.create_workspace(base.path(), 65536).unwrap();
        assert_eq!(fingerprint(&first), fingerprint(&copied));
        let meta = fingerprint(&copied);
        assert!(!meta.iter().any(|m| m == "template"), "{meta:?}");
        assert!(meta.iter().any(|m| m == "chunk_size=65536"), "{meta:?}");

        // Built in full, with no template to copy: the same database.
        let plain = tempfile::tempdir().unwrap();
        let full = {
            let u = DataDir::at(plain.path())
                .begin_session(base.path(), 65536)
                .unwrap();
            let ws = u.workspace().clone();
            let conn = Connection::open(ws.db_path()).unwrap();
            schema::prepare_new(&conn).unwrap();
            building(&conn).unwrap();
            let st = std::fs::metadata(base.path()).unwrap();
            use std::os::unix::fs::MetadataExt;
            schema::initialize(
                &conn,
                &schema::NewDatabase {
                    workspace_id: &ws.id,
                    base_path: &base.path().canonicalize().unwrap(),
                    chunk_size: 65536,
                    root_mode: st.mode(),
                    root_uid: st.uid(),
                    root_gid: st.gid(),
                    root_nlink: (st.nlink() as u32).max(2),
                    now: (1, 0),
                },
            )
            .unwrap();
            drop(conn);
            ws
        };
        assert_eq!(fingerprint(&full), fingerprint(&copied));
    }

    #[test]
    fn a_damaged_template_is_replaced_and_the_workspace_built_in_full() {
        let base = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        let data = DataDir::at(home.path());
        let good = data.create_workspace(base.path(), 65536).unwrap();
        let template = home
            .path()
            .join(format!("templates/workspace-{}.db", schema::template_key()));
        // A row the template must not have: a workspace copied from it would
        // carry it.
        Connection::open(&template)
            .unwrap()
            .execute(
                "INSERT INTO cordon_meta (key, value) VALUES ('planted', 'x')",
                [],
            )
            .unwrap();
        let ws = data.create_workspace(base.path(), 65536).unwrap();
        assert_eq!(fingerprint(&ws), fingerprint(&good));
        assert!(!template.exists(), "the damaged template was removed");
        // Garbage instead of a database: the same.
        std::fs::create_dir_all(template.parent().unwrap()).unwrap();
        std::fs::write(&template, vec![0x42u8; 4096]).unwrap();
        let ws = data.create_workspace(base.path(), 65536).unwrap();
        assert_eq!(fingerprint(&ws), fingerprint(&good));
        // And the next creation writes a good template again.
        let ws = data.create_workspace(base.path(), 65536).unwrap();
        assert_eq!(fingerprint(&ws), fingerprint(&good));
        assert!(template.exists());
    }

    #[test]
    fn ids_resolve_by_unique_prefix() {
        let base = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        let data = DataDir::at(home.path());
        let a = data.create_workspace(base.path(), 65536).unwrap();
        assert_eq!(data.resolve(&a.id[..6]).unwrap().id, a.id);
        assert!(matches!(
            data.resolve("zzzz").unwrap_err(),
            Error::UnknownWorkspace { .. }
        ));
        assert!(matches!(
            data.resolve("../etc").unwrap_err(),
            Error::UnknownWorkspace { .. }
        ));
        assert_eq!(data.list().unwrap().len(), 1);
        let page: u32 = a
            .connect_read_only()
            .unwrap()
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        assert_eq!(page, schema::PAGE_SIZE);
    }

    #[test]
    fn foreign_and_corrupt_files_are_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, vec![0x42u8; 8192]).unwrap();
        assert!(matches!(
            schema::open(&junk, true).unwrap_err(),
            Error::NotADatabase { .. }
        ));
        let foreign = dir.path().join("foreign.db");
        Connection::open(&foreign)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        let e = schema::open(&foreign, false).unwrap_err();
        assert!(matches!(e, Error::ForeignDatabase { .. }), "{e}");
    }

    #[test]
    fn lock_is_exclusive_and_names_the_holder() {
        let base = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        let ws = DataDir::at(home.path())
            .create_workspace(base.path(), 65536)
            .unwrap();
        let lock = ws.lock().unwrap();
        assert_eq!(ws.mounted_by(), Some(std::process::id()));
        let e = ws.lock().unwrap_err();
        assert!(
            e.to_string().contains(&std::process::id().to_string()),
            "{e}"
        );
        assert!(matches!(
            ws.clone().discard().unwrap_err(),
            Error::Mounted { .. }
        ));
        drop(lock);
        assert_eq!(ws.mounted_by(), None);
        ws.discard().unwrap();
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(
            unescape_mountinfo(r"/a\040b"),
            std::ffi::OsString::from("/a b")
        );
        assert!(is_mount_point(Path::new("/")));
    }
}
