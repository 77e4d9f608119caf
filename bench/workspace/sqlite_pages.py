#!/usr/bin/env python3
"""SQLite page size trade-off for the workspace store, outside FUSE.

For each page size: 10,000 create-like transactions (insert an inode, a
directory entry, update the parent inode, write 100 bytes of data), then 256 MiB
of 64 KiB chunks in 256 transactions (what a 1 MiB-per-request sequential write
does), then an fdatasync of the WAL. Uses the workspace's own table shapes, WAL
and synchronous=NORMAL. Prints the median of --repeat runs as a markdown table.

    python3 bench/workspace/sqlite_pages.py [--repeat 3] [--dir /var/tmp]
"""
import argparse
import os
import sqlite3
import statistics
import time

SCHEMA = """
CREATE TABLE fs_inode (ino INTEGER PRIMARY KEY AUTOINCREMENT, mode INTEGER NOT NULL,
  nlink INTEGER NOT NULL DEFAULT 0, uid INTEGER NOT NULL DEFAULT 0, gid INTEGER NOT NULL DEFAULT 0,
  size INTEGER NOT NULL DEFAULT 0, atime INTEGER NOT NULL, mtime INTEGER NOT NULL, ctime INTEGER NOT NULL,
  rdev INTEGER NOT NULL DEFAULT 0, atime_nsec INTEGER NOT NULL DEFAULT 0,
  mtime_nsec INTEGER NOT NULL DEFAULT 0, ctime_nsec INTEGER NOT NULL DEFAULT 0);
CREATE TABLE fs_dentry (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL,
  parent_ino INTEGER NOT NULL, ino INTEGER NOT NULL, UNIQUE(parent_ino, name));
CREATE INDEX idx_fs_dentry_parent ON fs_dentry(parent_ino, name);
CREATE TABLE fs_data (ino INTEGER NOT NULL, chunk_index INTEGER NOT NULL, data BLOB NOT NULL,
  PRIMARY KEY (ino, chunk_index));
INSERT INTO fs_inode (ino, mode, nlink, atime, mtime, ctime) VALUES (1, 16877, 2, 0, 0, 0);
"""


def one_run(directory, page):
    path = os.path.join(directory, f"cordon-pages-{page}.db")
    for f in (path, path + "-wal", path + "-shm"):
        if os.path.exists(f):
            os.remove(f)
    c = sqlite3.connect(path, isolation_level=None)
    c.execute(f"PRAGMA page_size={page}")
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=NORMAL")
    # No automatic checkpoints: each phase pays only for its own WAL writes
    # (the workspace checkpoints in the background, outside the agent's time).
    c.execute("PRAGMA wal_autocheckpoint=0")
    c.executescript(SCHEMA)
    t0 = time.monotonic()
    for i in range(10_000):
        c.execute("BEGIN IMMEDIATE")
        c.execute("INSERT INTO fs_inode (mode, nlink, atime, mtime, ctime, size) VALUES (33188, 1, 1, 1, 1, 100)")
        ino = c.execute("SELECT last_insert_rowid()").fetchone()[0]
        c.execute("INSERT INTO fs_dentry (name, parent_ino, ino) VALUES (?, 1, ?)", (f"file-{i:06d}", ino))
        c.execute("UPDATE fs_inode SET mtime = ?, ctime = ? WHERE ino = 1", (i, i))
        c.execute("INSERT OR REPLACE INTO fs_data VALUES (?, 0, ?)", (ino, b"x" * 100))
        c.execute("COMMIT")
    t1 = time.monotonic()
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    blob = os.urandom(65536)
    t1 = time.monotonic()
    for tx in range(256):
        c.execute("BEGIN IMMEDIATE")
        for i in range(16):
            c.execute("INSERT OR REPLACE INTO fs_data VALUES (2, ?, ?)", (tx * 16 + i, blob))
        c.execute("COMMIT")
    t2 = time.monotonic()
    fd = os.open(path + "-wal", os.O_RDONLY)
    os.fdatasync(fd)
    os.close(fd)
    t3 = time.monotonic()
    c.close()
    for f in (path, path + "-wal", path + "-shm"):
        if os.path.exists(f):
            os.remove(f)
    return (t1 - t0) * 1000, (t2 - t1) * 1000, (t3 - t2) * 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default="/var/tmp")
    args = ap.parse_args()
    pages = (16384, 32768, 65536)
    runs = {p: [] for p in pages}
    for _ in range(args.repeat):
        for p in pages:
            runs[p].append(one_run(args.dir, p))
    print(f"median of {args.repeat}; `python3 bench/workspace/sqlite_pages.py --repeat {args.repeat}`\n")
    print("| page size | create-like, 10k transactions | bulk 256 MiB | WAL fdatasync |")
    print("|---|---:|---:|---:|")
    for p in pages:
        med = [statistics.median(r[i] for r in runs[p]) for i in range(3)]
        print(f"| {p >> 10} KiB | {med[0]:,.0f} ms | {med[1]:,.0f} ms | {med[2]:,.0f} ms |")


if __name__ == "__main__":
    main()
