//! Crash safety: SIGKILL the FUSE server in the middle of a write storm, twenty
//! times. Every time, the database must pass SQLite's integrity check (and ours),
//! and every file whose fsync returned before the kill must read back intact.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// Deterministic content of file `n` of writer `w`.
fn content(w: u32, n: u32) -> Vec<u8> {
    let len = 1 + ((n as usize * 7919 + w as usize * 104729) % (300 * 1024));
    let mut v = Vec::with_capacity(len);
    let mut x = (w as u64) << 32 | n as u64 | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

#[test]
fn kill_9_during_a_write_storm_twenty_times() {
    let Some(env) = fuse_env(|b| write(&b.join("base.txt"), b"from the base\n")) else {
        return;
    };
    let id = env.create();
    // name -> expected bytes, for files whose fsync completed.
    let durable: Arc<Mutex<BTreeMap<String, Vec<u8>>>> = Arc::default();
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    for round in 0..20u32 {
        let m = env.mount(&id);
        // Everything acknowledged so far must have survived the previous kill.
        for (name, want) in durable.lock().unwrap().iter() {
            let got = fs::read(env.mnt.join(name))
                .unwrap_or_else(|e| panic!("round {round}: {name} lost: {e}"));
            assert!(got == *want, "round {round}: {name} corrupted");
        }
        let mut writers = Vec::new();
        for w in 0..3u32 {
            let dir = env.mnt.clone();
            let durable = durable.clone();
            writers.push(std::thread::spawn(move || {
                for n in 0.. {
                    let name = format!("r{round}-w{w}-{n}");
                    let data = content(w + round * 10, n);
                    let r = (|| -> std::io::Result<()> {
                        let mut f = fs::File::create(dir.join(&name))?;
                        // Two writes, so a kill can land between them.
                        let half = data.len() / 2;
                        f.write_all(&data[..half])?;
                        f.write_all(&data[half..])?;
                        if n % 3 != 0 {
                            f.sync_all()?;
                            durable.lock().unwrap().insert(name.clone(), data.clone());
                        }
                        // Overwrite an older file in place, unsynced.
                        if n > 2 {
                            let old = format!("r{round}-w{w}-{}", n - 3);
                            if n % 3 == 0 {
                                let _ = fs::remove_file(dir.join(old));
                            }
                        }
                        Ok(())
                    })();
                    if r.is_err() {
                        return;
                    }
                }
            }));
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(150 + seed % 500));
        let pid = rustix::process::Pid::from_raw(m.pid() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
        for t in writers {
            t.join().unwrap();
        }
        drop(m);
        let check = env.run(&["workspace", "check", &id, "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
        assert_eq!(report["ok"], true, "round {round}: {report}");
    }
    let n = durable.lock().unwrap().len();
    assert!(
        n > 60,
        "the storm wrote too little to mean anything ({n} durable files)"
    );
    let m = env.mount(&id);
    for (name, want) in durable.lock().unwrap().iter() {
        assert!(
            fs::read(env.mnt.join(name)).unwrap() == *want,
            "{name} corrupted at the end"
        );
    }
    assert_eq!(
        fs::read(env.mnt.join("base.txt")).unwrap(),
        b"from the base\n"
    );
    drop(m);
}
