//! Shared harness for the end-to-end tests: they drive the real `cordon` binary
//! and real FUSE mounts.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest;

/// Fails loudly when the machine cannot mount FUSE. CI machines can; a developer
/// without FUSE may set CORDON_SKIP_FUSE_TESTS=1 to skip, and is told so.
pub fn require_fuse() -> bool {
    let ok = Path::new("/dev/fuse").exists() && rustix::process::geteuid().is_root();
    if ok {
        return true;
    }
    if std::env::var_os("CORDON_SKIP_FUSE_TESTS").is_some() {
        eprintln!("SKIPPED: FUSE tests need root and /dev/fuse (CORDON_SKIP_FUSE_TESTS is set)");
        return false;
    }
    panic!(
        "this test needs root and /dev/fuse (run scripts/test as root); \
         set CORDON_SKIP_FUSE_TESTS=1 to skip it on a machine without FUSE"
    );
}

/// The start of every FUSE test: `None` (after saying why) when FUSE tests are
/// skipped on this machine, else a scratch area whose base `fill` populated.
pub fn fuse_env(fill: impl FnOnce(&Path)) -> Option<Env> {
    if !require_fuse() {
        return None;
    }
    let env = Env::new();
    fill(&env.base);
    Some(env)
}

/// A scratch area: a base directory, a data directory and a mount point.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub base: PathBuf,
    pub home: PathBuf,
    pub mnt: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("cordon-test-")
            .tempdir()
            .unwrap();
        // Unprivileged users in some tests must reach the mount.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let base = dir.path().join("base");
        let home = dir.path().join("home");
        let mnt = dir.path().join("mnt");
        for d in [&base, &home, &mnt] {
            std::fs::create_dir(d).unwrap();
        }
        Env {
            dir,
            base,
            home,
            mnt,
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cordon"));
        c.env("CORDON_HOME", &self.home)
            .env("NO_COLOR", "1")
            .env_remove("CORDON_LOG");
        c
    }

    /// Runs cordon and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs cordon and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "cordon {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Creates a workspace over the base; returns its id.
    pub fn create(&self) -> String {
        self.ok(&["workspace", "create", "--base", self.base.to_str().unwrap()])
            .trim()
            .to_string()
    }

    /// Mounts workspace `id` at the default mount point.
    pub fn mount(&self, id: &str) -> Mount {
        Mount::start(self, id, &self.mnt, &[])
    }

    pub fn db(&self, id: &str) -> PathBuf {
        self.home.join("workspaces").join(id).join("workspace.db")
    }

    /// Runs a SQL query returning one integer against the workspace database.
    pub fn count(&self, id: &str, sql: &str) -> i64 {
        let conn = rusqlite::Connection::open_with_flags(
            self.db(id),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// `cordon` as the unprivileged user `tests`, with a clean environment
    /// (`CORDON_HOME`, `HOME`, `PATH`, the suite's `CORDON_BACKEND` and
    /// `CORDON_RUNSC`, plus `extra_env`), run from the base.
    /// The base and the data directory are handed to that user, and the
    /// binary is copied where it can reach it (the build directory may be
    /// under /root). Add cordon's arguments.
    pub fn rootless(&self, extra_env: &[(&str, &str)]) -> Command {
        let bin = self.dir.path().join("cordon");
        if !bin.exists() {
            std::fs::copy(env!("CARGO_BIN_EXE_cordon"), &bin).unwrap();
        }
        for p in [&self.base, &self.home] {
            let st = Command::new("chown")
                .args(["-R", "tests:tests"])
                .arg(p)
                .status()
                .unwrap();
            assert!(st.success(), "chown {}", p.display());
        }
        let mut c = Command::new("runuser");
        c.args(["-u", "tests", "--", "env", "-i"])
            .arg(format!("CORDON_HOME={}", self.home.display()))
            .arg(format!(
                "HOME={}",
                self.dir.path().join("tests-home").display()
            ))
            .arg("PATH=/usr/bin:/bin");
        // The suite's backend and runsc carry over; the rest of the environment does not.
        for k in ["CORDON_BACKEND", "CORDON_RUNSC"] {
            if let Ok(v) = std::env::var(k) {
                c.arg(format!("{k}={v}"));
            }
        }
        for (k, v) in extra_env {
            c.arg(format!("{k}={v}"));
        }
        c.arg(&bin).current_dir(&self.base);
        c
    }

    pub fn diff_json(&self, id: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["diff", id, "--json"])).unwrap()
    }
}

/// A running `cordon workspace mount`; unmounts on drop.
pub struct Mount {
    pub child: Option<Child>,
    pub path: PathBuf,
}

pub fn is_mounted(path: &Path) -> bool {
    let canon = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let needle = format!(" {} ", canon.display());
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|s| s.lines().any(|l| l.contains(&needle)))
        .unwrap_or(false)
}

impl Mount {
    pub fn start(env: &Env, id: &str, at: &Path, extra: &[&str]) -> Mount {
        let mut cmd = env.cmd();
        cmd.args(["workspace", "mount", id, at.to_str().unwrap()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let start = Instant::now();
        while !is_mounted(at) {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                use std::io::Read;
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                panic!("mount exited early ({status}): {err}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "mount did not appear"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Mount {
            child: Some(child),
            path: at.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Unmounts the way a user does (Ctrl-C) and waits for the server to exit.
    pub fn stop(mut self) -> String {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> String {
        let Some(mut child) = self.child.take() else {
            return String::new();
        };
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
            rustix::process::Signal::INT,
        )
        .ok();
        let start = Instant::now();
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if is_mounted(&self.path) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        err
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// A digest of a tree: every path, type, mode, owner, size, mtime, ctime,
/// content and link target (atime excluded: reads may update it).
pub fn tree_hash(root: &Path) -> String {
    let mut h = sha2::Sha256::new();
    let mut paths = Vec::new();
    collect(root, root, &mut paths);
    paths.sort();
    for rel in paths {
        let p = root.join(OsStr::from_bytes(&rel));
        let m = std::fs::symlink_metadata(&p).unwrap();
        h.update(&rel);
        h.update(format!(
            "|{:o}|{}|{}|{}|{}.{}|{}.{}|",
            m.mode(),
            m.uid(),
            m.gid(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        ));
        if m.file_type().is_symlink() {
            h.update(std::fs::read_link(&p).unwrap().as_os_str().as_bytes());
        } else if m.is_file() {
            h.update(std::fs::read(&p).unwrap());
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<Vec<u8>>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        out.push(
            p.strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec(),
        );
        if e.file_type().unwrap().is_dir() {
            collect(root, &p, out);
        }
    }
}

/// Runs a shell command in `dir`, asserting success; returns stdout.
pub fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("bash")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Agent")
        .env("GIT_AUTHOR_EMAIL", "agent@example.com")
        .env("GIT_COMMITTER_NAME", "Agent")
        .env("GIT_COMMITTER_EMAIL", "agent@example.com")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`{script}` failed in {}: {}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Writes a file, creating parent directories.
pub fn write(path: &Path, data: &[u8]) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, data).unwrap();
}

/// The paths of a diff --json result, by kind.
pub fn diff_paths(v: &serde_json::Value, kind: &str) -> Vec<String> {
    let mut out: Vec<String> = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == kind)
        .map(|c| c["path"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

/// `cordon flags ARGS` against the flag server at `url` with `token` (the admin API's
/// `CORDON_FLAGS_TOKEN`), with `stdin` as its standard input.
pub fn flags_with_stdin(url: &str, token: &str, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_cordon"))
        .arg("flags")
        .args(args)
        .env("CORDON_FLAGS_URL", url)
        .env("CORDON_FLAGS_TOKEN", token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The end-to-end suites run on the backend `CORDON_BACKEND` names (`scripts/test`
/// runs them on `native`, then the sandbox suites again on `gvisor`).
pub fn gvisor() -> bool {
    std::env::var("CORDON_BACKEND").as_deref() == Ok("gvisor")
}

/// The JSON summary `cordon run --json` prints last on standard error.
pub fn summary(out: &Output) -> serde_json::Value {
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON summary in:\n{err}"))
}

/// A session's events, from `cordon log ID --json`.
pub fn events(env: &Env, id: &str) -> Vec<serde_json::Value> {
    env.ok(&["log", id, "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
