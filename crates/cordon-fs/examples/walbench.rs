//! Writes 256 MiB into a fresh SQLite database the way the workspace store
//! does (64 KiB rows, one transaction per 1 MiB, 16 KiB pages, WAL), once
//! through SQLite's `unix` VFS and once through Cordon's WAL-gathering VFS
//! (`cordon_fs::vfs`), alternating, and prints each time and the medians.
//!
//! `cargo run --release -p cordon-fs --example walbench -- [DIR] [ROUNDS]`
//! (default: the system's temporary directory, 5 rounds).

use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::{Connection, OpenFlags, params};

const TOTAL: usize = 256 << 20;
const CHUNK: usize = 64 << 10;
const PER_TX: usize = 1 << 20;

fn run(dir: &Path, vfs: Option<&std::ffi::CStr>) -> rusqlite::Result<f64> {
    let path = dir.join("walbench.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let conn = match vfs {
        Some(v) => Connection::open_with_flags_and_vfs(&path, OpenFlags::default(), v)?,
        None => Connection::open(&path)?,
    };
    conn.pragma_update(None, "page_size", 16384)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "cache_size", -65536)?;
    conn.pragma_update(None, "wal_autocheckpoint", 32768)?;
    conn.execute_batch(
        "CREATE TABLE fs_data (ino INTEGER NOT NULL, chunk_index INTEGER NOT NULL,
           data BLOB NOT NULL, PRIMARY KEY (ino, chunk_index));
         CREATE TABLE fs_inode (ino INTEGER PRIMARY KEY, size INTEGER, mtime INTEGER);
         INSERT INTO fs_inode VALUES (1, 0, 0);",
    )?;
    let data: Vec<u8> = (0..PER_TX).map(|i| (i * 7 + 3) as u8).collect();
    let start = Instant::now();
    let mut index = 0i64;
    for _ in 0..TOTAL / PER_TX {
        let tx = conn.unchecked_transaction()?;
        for chunk in data.chunks(CHUNK) {
            tx.prepare_cached("INSERT OR REPLACE INTO fs_data VALUES (1, ?1, ?2)")?
                .execute(params![index, chunk])?;
            index += 1;
        }
        tx.prepare_cached("UPDATE fs_inode SET size = ?1, mtime = ?1 WHERE ino = 1")?
            .execute([index * CHUNK as i64])?;
        tx.commit()?;
    }
    let ms = start.elapsed().as_secs_f64() * 1e3;
    // Not folding 256 MiB into the database at close keeps that copy's
    // writeback out of the next round's time.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )?;
    drop(conn);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(ms)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs one measurement in a fresh process, as the workspace server is one:
/// in one long-lived process the second of two runs came out slower
/// whichever VFS it used.
fn child(dir: &Path, vfs: &str) -> Result<f64, Box<dyn std::error::Error>> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .env("WALBENCH_CHILD", vfs)
        .arg(dir)
        .output()?;
    if !out.status.success() {
        return Err(format!("{vfs} run failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8(out.stdout)?.trim().parse()?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().map_or_else(std::env::temp_dir, PathBuf::from);
    if let Ok(which) = std::env::var("WALBENCH_CHILD") {
        let vfs = match which.as_str() {
            "unix" => None,
            _ => Some(cordon_fs::vfs::name().ok_or("the VFS could not be registered")?),
        };
        println!("{}", run(&dir, vfs)?);
        return Ok(());
    }
    let rounds: usize = args.next().map_or(Ok(5), |r| r.parse())?;
    let (mut unix, mut gathered) = (Vec::new(), Vec::new());
    for round in 1..=rounds.max(1) {
        let (a, b) = if round % 2 == 1 {
            let a = child(&dir, "unix")?;
            (a, child(&dir, "cordon-walbuf")?)
        } else {
            let b = child(&dir, "cordon-walbuf")?;
            (child(&dir, "unix")?, b)
        };
        println!("round {round}: unix {a:.1} ms, cordon-walbuf {b:.1} ms");
        unix.push(a);
        gathered.push(b);
    }
    let (a, b) = (median(unix), median(gathered));
    println!(
        "median: unix {a:.1} ms, cordon-walbuf {b:.1} ms, ratio {:.2}",
        b / a
    );
    Ok(())
}
