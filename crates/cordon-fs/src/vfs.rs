//! A SQLite VFS that gathers the WAL's small writes into large ones.
//!
//! SQLite appends each WAL frame as two `pwrite`s: a 24-byte header, then the
//! page. A large file write in the workspace is some 70 frames per MiB, so
//! 140 small `pwrite`s, each landing across page-cache pages the kernel
//! allocates and accounts for one at a time. Handing the kernel the same
//! bytes in large aligned writes lets it work on large folios instead: on
//! ext4, 256 MiB of WAL frames written frame by frame costs about three times
//! the kernel time of the same bytes in 1 MiB writes (`docs/BENCHMARKS.md`,
//! "WAL writes gathered").
//!
//! The VFS is the system's default one (`unix`) with one change: a file
//! SQLite opens as a WAL (`SQLITE_OPEN_WAL`) gets a write buffer. Contiguous
//! appends collect in it; it goes to the real file in 64 KiB-aligned pieces:
//!
//! - right after the page of a *commit frame* (a frame header whose "database
//!   size after commit" field is not zero), and at every write after it until
//!   the next transaction's first frame: SQLite publishes a commit in the
//!   shared WAL index only after writing that frame returns, so every
//!   committed frame is in the file (the page cache) before any other
//!   connection can read it, and an error writing it fails the commit, as it
//!   would without the buffer;
//! - when it is full, and before any write that is not an append to it;
//! - before every other operation on the file (read, truncate, sync, size,
//!   file control, close), so SQLite never observes the difference.
//!
//! Nothing else changes: locks and the shared-memory index are the real
//! VFS's, so connections through this VFS and through plain `unix` (other
//! processes, other tools) work on the same database as always. Frames of an
//! uncommitted transaction may sit in memory instead of the page cache, which
//! is no change for a crash either: SQLite discards an uncommitted tail.

use std::ffi::{CStr, c_int, c_void};
use std::ptr;
use std::sync::OnceLock;

use rusqlite::ffi;

/// Name the VFS is registered under.
pub const NAME: &CStr = c"cordon-walbuf";

/// Bytes gathered before the buffer is written out: a 1 MiB file write's
/// frames (about 1.1 MiB with the b-tree pages) in one go.
const BUFFER: usize = 2 << 20;

/// Size of a WAL frame header; its bytes 4..8 hold the database size after a
/// commit, zero in every other frame (see SQLite's `wal.c`, "WAL frame
/// header").
const FRAME_HEADER: usize = 24;

/// Largest write handed to the real VFS at once: its `xWrite` takes at most
/// 128 KiB - 1 bytes per call (`seekAndWrite` in SQLite's `os_unix.c`).
const PIECE: usize = 64 << 10;

/// Registers the VFS once per process; returns its name for
/// `Connection::open_with_flags_and_vfs`, or `None` when SQLite has no
/// default VFS to wrap (then connections use the default).
pub fn name() -> Option<&'static CStr> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    REGISTERED.get_or_init(register).then_some(NAME)
}

/// The real VFS. Ours is leaked: SQLite keeps (and links, through `pNext`)
/// a registered VFS for the life of the process.
struct Registered {
    real: *mut ffi::sqlite3_vfs,
}

// SAFETY: the pointer is written once, before registration, and only read
// after; SQLite's VFS objects are shared between threads by design.
unsafe impl Send for Registered {}
// SAFETY: as for `Send`.
unsafe impl Sync for Registered {}

static VFS: OnceLock<Registered> = OnceLock::new();

/// Our part of a WAL file's `sqlite3_file`; the real VFS's file follows it
/// in the same allocation, at [`real_offset`].
#[repr(C)]
struct WalFile {
    /// Must be first: SQLite reads `pMethods` through a `sqlite3_file *`.
    base: ffi::sqlite3_file,
    real: *mut ffi::sqlite3_file,
    /// Gathered bytes, to be written at `start`. Allocated on first use.
    buf: *mut Vec<u8>,
    start: i64,
    /// Since a commit frame's header: every write goes out at once, until
    /// the header of a frame that is not a commit.
    write_through: bool,
}

fn real_offset() -> usize {
    std::mem::size_of::<WalFile>().next_multiple_of(16)
}

fn register() -> bool {
    // SAFETY: `sqlite3_vfs_find(NULL)` returns the default VFS, which SQLite
    // keeps for the life of the process; we copy it and never modify it.
    let real = unsafe { ffi::sqlite3_vfs_find(ptr::null()) };
    if real.is_null() {
        return false;
    }
    // SAFETY: `real` is a valid, registered VFS (checked above).
    let mut vfs = unsafe { ptr::read(real) };
    let Ok(real_size) = usize::try_from(vfs.szOsFile) else {
        return false;
    };
    let Ok(size) = c_int::try_from(real_offset() + real_size) else {
        return false;
    };
    vfs.szOsFile = size;
    vfs.zName = NAME.as_ptr();
    vfs.pNext = ptr::null_mut();
    vfs.xOpen = Some(x_open);
    VFS.get_or_init(|| Registered { real });
    let ours = Box::into_raw(Box::new(vfs));
    // SAFETY: `ours` is leaked, so it lives for the rest of the process, and
    // only SQLite touches it from here on (under its own mutex).
    let rc = unsafe { ffi::sqlite3_vfs_register(ours, 0) };
    rc == ffi::SQLITE_OK
}

fn real_vfs() -> *mut ffi::sqlite3_vfs {
    VFS.get().map_or(ptr::null_mut(), |r| r.real)
}

static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let real = real_vfs();
    // SAFETY: `real` is the registered default VFS; SQLite gave us `file`
    // with room for `szOsFile` bytes, of which the real VFS's file needs the
    // first `real.szOsFile`. Its `xOpen` is always set.
    unsafe {
        let Some(open) = (*real).xOpen else {
            return ffi::SQLITE_CANTOPEN;
        };
        if flags & ffi::SQLITE_OPEN_WAL == 0 {
            // Anything but a WAL is the real VFS's file, unwrapped.
            return open(real, name, file, flags, out_flags);
        }
        let w = file.cast::<WalFile>();
        let inner = file
            .cast::<u8>()
            .add(real_offset())
            .cast::<ffi::sqlite3_file>();
        ptr::write(
            w,
            WalFile {
                base: ffi::sqlite3_file {
                    pMethods: ptr::null(),
                },
                real: inner,
                buf: ptr::null_mut(),
                start: 0,
                write_through: false,
            },
        );
        let rc = open(real, name, inner, flags, out_flags);
        let opened = !(*inner).pMethods.is_null();
        if rc == ffi::SQLITE_OK && opened {
            (*w).base.pMethods = &WAL_METHODS;
            return rc;
        }
        if opened {
            // A failed open that left methods set must still be closed.
            if let Some(close) = (*(*inner).pMethods).xClose {
                close(inner);
            }
        }
        // Our methods stay unset, so SQLite never calls `xClose` on it.
        if rc == ffi::SQLITE_OK {
            ffi::SQLITE_CANTOPEN
        } else {
            rc
        }
    }
}

/// # Safety
/// `file` must be a [`WalFile`] opened by [`x_open`].
unsafe fn wal<'a>(file: *mut ffi::sqlite3_file) -> &'a mut WalFile {
    // SAFETY: per the function's contract.
    unsafe { &mut *file.cast::<WalFile>() }
}

/// The real file's methods.
fn methods(w: &WalFile) -> &ffi::sqlite3_io_methods {
    // SAFETY: `x_open` installs our methods only after the real open set
    // the real file's, which stay valid until its `xClose`.
    unsafe { &*(*w.real).pMethods }
}

/// Writes the gathered bytes to the real file.
fn flush(w: &mut WalFile) -> c_int {
    if w.buf.is_null() {
        return ffi::SQLITE_OK;
    }
    // SAFETY: `buf` was made by `Box::into_raw` in `x_write` and is only
    // used by the thread holding this connection.
    let buf = unsafe { &mut *w.buf };
    if buf.is_empty() {
        return ffi::SQLITE_OK;
    }
    let Some(write) = methods(w).xWrite else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    // The real VFS writes at most 128 KiB - 1 per call; pieces that end on
    // 64 KiB boundaries of the file let the kernel use 64 KiB folios.
    let mut rc = ffi::SQLITE_OK;
    let (mut at, mut rest) = (w.start, &buf[..]);
    while !rest.is_empty() && rc == ffi::SQLITE_OK {
        let to_boundary = PIECE - (at.rem_euclid(PIECE as i64) as usize);
        let (piece, tail) = rest.split_at(to_boundary.min(rest.len()));
        // SAFETY: `piece` is at most 64 KiB of initialised bytes; the real
        // `xWrite` copies them before returning.
        rc = unsafe { write(w.real, piece.as_ptr().cast(), piece.len() as c_int, at) };
        at += piece.len() as i64;
        rest = tail;
    }
    // Dropped either way: on an error SQLite rolls the transaction back and
    // rewrites what it needs from its own copies.
    buf.clear();
    rc
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite calls `xClose` once, on a file `x_open` set up.
    let w = unsafe { wal(file) };
    let rc = flush(w);
    if !w.buf.is_null() {
        // SAFETY: made by `Box::into_raw` in `x_write`, freed only here.
        drop(unsafe { Box::from_raw(w.buf) });
        w.buf = ptr::null_mut();
    }
    let close = methods(w).xClose;
    // SAFETY: the real file is open; this closes it exactly once.
    let closed = close.map_or(ffi::SQLITE_OK, |c| unsafe { c(w.real) });
    if rc == ffi::SQLITE_OK { closed } else { rc }
}

unsafe extern "C" fn x_write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: SQLite passes a file `x_open` set up and `amount` readable bytes.
    let w = unsafe { wal(file) };
    let Ok(len) = usize::try_from(amount) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    // SAFETY: as above.
    let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) };
    if w.buf.is_null() {
        w.buf = Box::into_raw(Box::new(Vec::with_capacity(BUFFER)));
    }
    // SAFETY: made just above or by an earlier call; this connection's thread only.
    let pending = unsafe { (*w.buf).len() };
    let appends = pending == 0 || i64::try_from(pending).is_ok_and(|l| w.start + l == offset);
    if !appends || pending + len > BUFFER {
        let rc = flush(w);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    // The page after a commit frame's header goes out with it, before SQLite
    // publishes the commit, and so does anything else up to the next
    // transaction's first frame: with `synchronous=FULL` on a device without
    // power-safe overwrites SQLite pads a commit with more commit frames.
    // (A frame header's bytes 4..8 are zero except in a commit frame.)
    let header_of_commit = (len == FRAME_HEADER).then(|| bytes[4..8] != [0; 4]);
    if header_of_commit == Some(false) {
        w.write_through = false;
    }
    let now = w.write_through;
    if header_of_commit == Some(true) {
        w.write_through = true;
    }
    // SAFETY: as above.
    let buf = unsafe { &mut *w.buf };
    if buf.is_empty() {
        w.start = offset;
    }
    buf.extend_from_slice(bytes);
    if now { flush(w) } else { ffi::SQLITE_OK }
}

/// Runs `call` with the real file and its methods, after writing out the
/// buffer when `flush` is set; `missing` if the real VFS lacks the method.
///
/// # Safety
/// `file` must be a [`WalFile`] opened by [`x_open`].
unsafe fn forward(
    file: *mut ffi::sqlite3_file,
    flush_first: bool,
    missing: c_int,
    call: impl FnOnce(*mut ffi::sqlite3_file, &ffi::sqlite3_io_methods) -> Option<c_int>,
) -> c_int {
    // SAFETY: per the function's contract.
    let w = unsafe { wal(file) };
    if flush_first {
        let rc = flush(w);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    call(w.real, methods(w)).unwrap_or(missing)
}

// Every other operation on the WAL sees the file with the buffer written out
// first. Locks, sector size and device flags are the real file's, unchanged
// (a WAL has no locks of its own). In each, the SAFETY argument is the same:
// SQLite passes a file `x_open` set up, and the real, open file gets SQLite's
// own arguments.

unsafe extern "C" fn x_read(
    file: *mut ffi::sqlite3_file,
    data: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: see above.
    unsafe {
        forward(file, true, ffi::SQLITE_IOERR_READ, |real, m| {
            m.xRead.map(|f| f(real, data, amount, offset))
        })
    }
}

unsafe extern "C" fn x_truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    // SAFETY: see above.
    unsafe {
        forward(file, true, ffi::SQLITE_IOERR_TRUNCATE, |real, m| {
            m.xTruncate.map(|f| f(real, size))
        })
    }
}

unsafe extern "C" fn x_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    // SAFETY: see above.
    unsafe {
        forward(file, true, ffi::SQLITE_IOERR_FSYNC, |real, m| {
            m.xSync.map(|f| f(real, flags))
        })
    }
}

unsafe extern "C" fn x_file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: see above.
    unsafe {
        forward(file, true, ffi::SQLITE_IOERR_FSTAT, |real, m| {
            m.xFileSize.map(|f| f(real, size))
        })
    }
}

unsafe extern "C" fn x_file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: see above.
    unsafe {
        forward(file, true, ffi::SQLITE_NOTFOUND, |real, m| {
            m.xFileControl.map(|f| f(real, op, arg))
        })
    }
}

unsafe extern "C" fn x_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: see above.
    unsafe {
        forward(file, false, ffi::SQLITE_OK, |real, m| {
            m.xLock.map(|f| f(real, level))
        })
    }
}

unsafe extern "C" fn x_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: see above.
    unsafe {
        forward(file, false, ffi::SQLITE_OK, |real, m| {
            m.xUnlock.map(|f| f(real, level))
        })
    }
}

unsafe extern "C" fn x_check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    // SAFETY: see above; `out` is SQLite's valid out pointer.
    unsafe {
        forward(file, false, ffi::SQLITE_OK, |real, m| {
            Some(match m.xCheckReservedLock {
                Some(f) => f(real, out),
                None => {
                    *out = 0;
                    ffi::SQLITE_OK
                }
            })
        })
    }
}

unsafe extern "C" fn x_sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: see above.
    unsafe { forward(file, false, 4096, |real, m| m.xSectorSize.map(|f| f(real))) }
}

unsafe extern "C" fn x_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: see above.
    unsafe {
        forward(file, false, 0, |real, m| {
            m.xDeviceCharacteristics.map(|f| f(real))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{Connection, OpenFlags, params};
    use std::path::Path;

    fn writer(path: &Path) -> Connection {
        writer_with_pages(path, 16384)
    }

    fn writer_with_pages(path: &Path, page_size: u32) -> Connection {
        let conn = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), name().unwrap())
            .unwrap();
        conn.pragma_update(None, "page_size", page_size).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
        conn.execute_batch("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v BLOB NOT NULL)")
            .unwrap();
        conn
    }

    /// Deterministic contents that differ per key and per version.
    fn blob(k: i64, version: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| {
                (i as u64)
                    .wrapping_mul(2654435761)
                    .wrapping_add(k as u64 * 31 + u64::from(version)) as u8
            })
            .collect()
    }

    fn read(conn: &Connection, k: i64) -> Option<Vec<u8>> {
        conn.query_row("SELECT v FROM t WHERE k = ?1", [k], |r| r.get(0))
            .ok()
    }

    #[test]
    fn a_commit_is_in_the_file_before_another_connection_can_see_it() {
        // 16 KiB is the workspaces' page size; a database made elsewhere
        // may have SQLite's default 4 KiB or its largest, 64 KiB.
        for page_size in [16384, 4096, 65536] {
            commits_are_visible(page_size, "NORMAL");
        }
        // FULL syncs the WAL at every commit.
        commits_are_visible(16384, "FULL");
    }

    fn commits_are_visible(page_size: u32, synchronous: &str) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let w = writer_with_pages(&path, page_size);
        w.pragma_update(None, "synchronous", synchronous).unwrap();
        let r = Connection::open(&path).unwrap();
        for k in 0..48i64 {
            // Sizes from one page to many, so commits end mid-buffer, on a
            // piece boundary, and after the buffer filled.
            let len = [100, 16_000, 70_000, 300_000, 1_300_000, 5_000_000][k as usize % 6];
            let tx = w.unchecked_transaction().unwrap();
            tx.execute(
                "INSERT INTO t (k, v) VALUES (?1, ?2)",
                params![k, blob(k, 0, len)],
            )
            .unwrap();
            // Rewriting a row in the same transaction makes SQLite overwrite
            // frames it already wrote: writes that do not append.
            tx.execute(
                "UPDATE t SET v = ?2 WHERE k = ?1",
                params![k, blob(k, 1, len)],
            )
            .unwrap();
            tx.commit().unwrap();
            // Another connection reads the frames from the file itself.
            assert_eq!(
                read(&r, k),
                Some(blob(k, 1, len)),
                "row {k} of {len} bytes, {page_size}-byte pages"
            );
            if k % 16 == 15 {
                r.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                    .unwrap();
            }
        }
        let check: String = r
            .query_row("PRAGMA integrity_check", [], |x| x.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }

    #[test]
    fn a_copy_of_the_files_recovers_exactly_the_commits() {
        for page_size in [16384, 4096, 65536] {
            recovers_commits(page_size);
        }
    }

    fn recovers_commits(page_size: u32) {
        // A crash keeps what the process had handed to the kernel: a copy of
        // the database and WAL files, opened afresh, is what a restart sees.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let w = writer_with_pages(&path, page_size);
        for k in 0..6i64 {
            w.execute(
                "INSERT INTO t (k, v) VALUES (?1, ?2)",
                params![k, blob(k, 0, 700_000)],
            )
            .unwrap();
        }
        // Right after a commit, and in the middle of the next transaction.
        let at_rest = copy_files(&path, "at-rest");
        let tx = w.unchecked_transaction().unwrap();
        for k in 6..12i64 {
            tx.execute(
                "INSERT INTO t (k, v) VALUES (?1, ?2)",
                params![k, blob(k, 0, 700_000)],
            )
            .unwrap();
        }
        let mid = copy_files(&path, "mid");
        tx.rollback().unwrap();
        for copy in [at_rest, mid] {
            let c = Connection::open(&copy).unwrap();
            let n: i64 = c
                .query_row("SELECT count(*) FROM t", [], |x| x.get(0))
                .unwrap();
            assert_eq!(n, 6, "{page_size}-byte pages, {}", copy.display());
            for k in 0..6 {
                assert_eq!(read(&c, k), Some(blob(k, 0, 700_000)), "row {k}");
            }
            let check: String = c
                .query_row("PRAGMA integrity_check", [], |x| x.get(0))
                .unwrap();
            assert_eq!(check, "ok");
        }
    }

    /// Copies a database and its WAL (not the shared index, which a restart
    /// rebuilds from the WAL) to `name` beside it.
    fn copy_files(path: &Path, name: &str) -> std::path::PathBuf {
        let copy = path.with_file_name(name);
        std::fs::copy(path, &copy).unwrap();
        let wal = |p: &Path| {
            p.with_file_name(format!("{}-wal", p.file_name().unwrap().to_str().unwrap()))
        };
        std::fs::copy(wal(path), wal(&copy)).unwrap();
        copy
    }

    #[test]
    fn rolled_back_and_spilled_frames_never_show() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let w = writer(&path);
        // A small cache makes SQLite spill dirty pages into the WAL before
        // the commit and read them back from it.
        w.pragma_update(None, "cache_size", 8).unwrap();
        let r = Connection::open(&path).unwrap();
        let tx = w.unchecked_transaction().unwrap();
        for k in 0..8i64 {
            tx.execute(
                "INSERT INTO t (k, v) VALUES (?1, ?2)",
                params![k, blob(k, 0, 200_000)],
            )
            .unwrap();
        }
        for k in 0..8i64 {
            assert_eq!(read(&tx, k), Some(blob(k, 0, 200_000)), "spilled row {k}");
        }
        tx.rollback().unwrap();
        assert_eq!(read(&r, 0), None);
        let tx = w.unchecked_transaction().unwrap();
        for k in 0..8i64 {
            tx.execute(
                "INSERT INTO t (k, v) VALUES (?1, ?2)",
                params![k, blob(k, 2, 150_000)],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        for k in 0..8i64 {
            assert_eq!(read(&r, k), Some(blob(k, 2, 150_000)), "row {k}");
        }
        r.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        drop(w);
        let check: String = r
            .query_row("PRAGMA integrity_check", [], |x| x.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }
}
