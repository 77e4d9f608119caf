//! Mounting a workspace: the checks before the mount and the session after it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, Result};
use crate::fuse::{Negotiated, OverlayFs, ServeOptions, fuse_config};
use crate::overlay::OverlayOptions;
use crate::workspace::{MountLock, Workspace, is_mount_point};

/// A mounted workspace whose requests are not served yet.
pub struct Mounted {
    session: fuser::Session<OverlayFs>,
    negotiated: Arc<Mutex<Negotiated>>,
    mountpoint: PathBuf,
    db: PathBuf,
    _lock: MountLock,
}

/// Copies the WAL into the database in the background while the workspace is
/// idle, so writes only ever append to the WAL. A busy workspace is still
/// checkpointed every few seconds (passive checkpoints never block the server).
struct Checkpointer {
    /// Dropping the sender wakes the thread at once (no waiting out a tick).
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    const TICK: Duration = Duration::from_millis(250);
    const MAX_BUSY: Duration = Duration::from_secs(5);
    /// A WAL this long is folded in even while writes continue: past
    /// [`crate::schema::WAL_AUTOCHECKPOINT_PAGES`] (512 MiB) the writer
    /// itself would checkpoint, stalling the agent's write for all of it.
    const BUSY_WAL: u64 = 320 << 20;

    fn start(db: &Path) -> Option<Checkpointer> {
        let conn = rusqlite::Connection::open(db).ok()?;
        conn.busy_timeout(Duration::from_secs(5)).ok()?;
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        let reserve = crate::store::SpaceReserve::for_db(db);
        let (stop, wake) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("cordon-checkpoint".into())
            .spawn(move || {
                let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
                let mut seen: Option<SystemTime> = modified(&wal);
                let mut dirty = false;
                let mut busy_since: Option<Instant> = None;
                let mut short = false;
                reserve.refill();
                while wake.recv_timeout(Self::TICK)
                    == Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                {
                    let meta = std::fs::metadata(&wal).ok();
                    let now = meta.as_ref().and_then(|m| m.modified().ok());
                    let changed = now != seen;
                    seen = now;
                    if changed {
                        dirty = true;
                        busy_since.get_or_insert_with(Instant::now);
                    }
                    let long_busy = busy_since.is_some_and(|t| t.elapsed() > Self::MAX_BUSY)
                        || meta.is_some_and(|m| m.len() >= Self::BUSY_WAL);
                    if dirty && (!changed || long_busy) {
                        if !room_to_checkpoint(&wal, crate::store::SpaceReserve::SIZE) {
                            // A checkpoint that runs out of room stops half way,
                            // having used up what a delete needs; wait for room.
                            if !short {
                                tracing::warn!(wal = %wal.display(),
                                    "the disk is too full to fold the WAL into the database; waiting for room");
                                short = true;
                            }
                            continue;
                        }
                        short = false;
                        let r: rusqlite::Result<(i64, i64, i64)> =
                            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                            });
                        match r {
                            Err(e) => tracing::warn!(error = %e, "background checkpoint failed"),
                            // A delete on a full disk may have used the reserve.
                            Ok((_, log, done)) => {
                                if !changed && log == done {
                                    Self::shrink_idle_wal(&conn, &wal);
                                }
                                reserve.refill();
                            }
                        }
                        dirty = changed;
                        busy_since = None;
                    }
                }
                // Only a mounted workspace needs the reserve.
                reserve.release();
                // The server's connection is closed by now: fold the WAL in and
                // truncate it, leaving one compact file.
                if room_to_checkpoint(&wal, 0) {
                    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
                }
            })
            .ok()?;
        Some(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Checkpointer {
    /// Restarts and empties a WAL that is all copied into the database while
    /// the workspace is idle. Otherwise the next write (often the first file
    /// the agent opens, which records what it read) restarts the WAL and cuts
    /// it down to the size limit itself: truncating a few hundred MiB of WAL
    /// took 130 ms on the project's VM, spent inside one `open` while the
    /// overlay waited. `TRUNCATE` keeps writers out while it runs, so it is
    /// tried with a short busy timeout: if the workspace is in use it gives
    /// up, and the writer does the work as before.
    fn shrink_idle_wal(conn: &rusqlite::Connection, wal: &Path) {
        const LIMIT: u64 = crate::schema::JOURNAL_SIZE_LIMIT as u64;
        if std::fs::metadata(wal).map_or(true, |m| m.len() <= LIMIT) {
            return;
        }
        let _ = conn.busy_timeout(Duration::from_millis(20));
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        let _ = conn.busy_timeout(Duration::from_secs(5));
    }
}

/// Whether the database's file system has room for a checkpoint to finish
/// (the WAL's size, an upper bound of what the database file can grow by)
/// with `keep` bytes to spare.
fn room_to_checkpoint(wal: &Path, keep: u64) -> bool {
    let Ok(len) = std::fs::metadata(wal).map(|m| m.len()) else {
        return true;
    };
    let dir = wal.parent().unwrap_or(Path::new("/"));
    rustix::fs::statvfs(dir)
        .is_ok_and(|s| s.f_bavail.saturating_mul(s.f_frsize) >= len.saturating_add(keep))
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Checks that `mountpoint` can take a mount of a workspace over `base`.
pub fn check_mountpoint(mountpoint: &Path, base: &Path) -> Result<PathBuf> {
    let meta = match std::fs::metadata(mountpoint) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::MountpointMissing {
                path: mountpoint.to_path_buf(),
            });
        }
        Err(e) => {
            return Err(Error::MountpointBusy {
                path: mountpoint.to_path_buf(),
                reason: e.to_string(),
            });
        }
    };
    if !meta.is_dir() {
        return Err(Error::MountpointBusy {
            path: mountpoint.to_path_buf(),
            reason: "it is not a directory".into(),
        });
    }
    let canon = mountpoint
        .canonicalize()
        .map_err(|e| Error::io(mountpoint, e))?;
    if is_mount_point(&canon) {
        return Err(Error::MountpointBusy {
            path: canon,
            reason:
                "something is already mounted there; unmount it first (umount or fusermount3 -u)"
                    .into(),
        });
    }
    let non_empty = std::fs::read_dir(&canon)
        .map_err(|e| Error::io(&canon, e))?
        .next()
        .is_some();
    if non_empty {
        return Err(Error::MountpointBusy {
            path: canon,
            reason: "the directory is not empty; mount on an empty directory".into(),
        });
    }
    if canon.starts_with(base) {
        return Err(Error::MountpointInsideBase {
            mountpoint: canon,
            base: base.to_path_buf(),
        });
    }
    Ok(canon)
}

/// Mounts `ws` at `mountpoint`. Requests are served by [`Mounted::run`].
pub fn mount(ws: &Workspace, mountpoint: &Path, opts: &ServeOptions) -> Result<Mounted> {
    // The connection that will serve the mount, opened once: it tells the base too.
    mount_on(ws, ws.connect()?, mountpoint, opts)
}

/// [`mount`] served by `conn`, a read-write connection to `ws`'s database set
/// up as [`Workspace::connect`] does (or as
/// [`crate::workspace::Unbuilt::build_for_serving`] returns it).
pub fn mount_on(
    ws: &Workspace,
    conn: rusqlite::Connection,
    mountpoint: &Path,
    opts: &ServeOptions,
) -> Result<Mounted> {
    let base = ws.base_path(&conn)?;
    if !base.is_dir() {
        return Err(Error::BaseMissing { path: base });
    }
    let mountpoint = check_mountpoint(mountpoint, &base)?;
    let lock = ws.lock()?;
    let overlay = ws.overlay_on(
        conn,
        &lock,
        OverlayOptions {
            passthrough: opts.passthrough,
            quota: opts.quota.clone(),
        },
    )?;
    let fs = OverlayFs::new(overlay, opts);
    let negotiated = fs.negotiated();
    let notifier = fs.notifier_slot();
    let mut opts = opts.clone();
    if opts.fs_name == "cordon" {
        opts.fs_name = format!("cordon:{}", ws.id);
    }
    let session = fuser::Session::new(fs, &mountpoint, &fuse_config(&opts)).map_err(|e| {
        let hint = match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => {
                "; mounting needs root, or the fuse3 package (fusermount3) and access to /dev/fuse"
            }
            Some(libc::ENOENT) | Some(libc::ENODEV) => {
                "; the fuse kernel module or /dev/fuse is missing (modprobe fuse)"
            }
            _ => "",
        };
        Error::Mount {
            path: mountpoint.clone(),
            source: e,
            hint,
        }
    })?;
    // Set once, before any request is served.
    let _ = notifier.set(session.notifier());
    Ok(Mounted {
        session,
        negotiated,
        mountpoint,
        db: ws.db_path(),
        _lock: lock,
    })
}

impl Mounted {
    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Features the kernel agreed to (valid once the first request arrived).
    pub fn negotiated(&self) -> Arc<Mutex<Negotiated>> {
        self.negotiated.clone()
    }

    /// A handle that unmounts from another thread (e.g. a signal handler thread).
    pub fn unmounter(&mut self) -> fuser::SessionUnmounter {
        self.session.unmount_callable()
    }

    /// Serves requests on this thread until the file system is unmounted.
    pub fn run(self) -> Result<()> {
        let mountpoint = self.mountpoint.clone();
        let lock = self._lock;
        let checkpointer = Checkpointer::start(&self.db);
        // run() consumes the session and drops the file system (and its database
        // connection) when the kernel ends the session.
        let r = self.session.run();
        drop(checkpointer);
        drop(lock);
        r.map_err(|e| Error::io(mountpoint, e))
    }

    /// Serves requests on a background thread; dropping the handle unmounts.
    pub fn spawn(self) -> Result<BackgroundMount> {
        let mountpoint = self.mountpoint.clone();
        let checkpointer = Checkpointer::start(&self.db);
        let session = self
            .session
            .spawn()
            .map_err(|e| Error::io(&mountpoint, e))?;
        Ok(BackgroundMount {
            session: Some(session),
            mountpoint,
            checkpointer,
            _lock: self._lock,
        })
    }
}

/// A mount served by a background thread.
pub struct BackgroundMount {
    session: Option<fuser::BackgroundSession>,
    mountpoint: PathBuf,
    checkpointer: Option<Checkpointer>,
    _lock: MountLock,
}

impl BackgroundMount {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts and waits for the server thread.
    pub fn unmount(mut self) -> Result<()> {
        if let Some(s) = self.session.take() {
            s.umount_and_join()
                .map_err(|e| Error::io(&self.mountpoint, e))?;
        }
        self.checkpointer.take();
        Ok(())
    }
}

impl Drop for BackgroundMount {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = s.umount_and_join();
        }
        self.checkpointer.take();
    }
}
