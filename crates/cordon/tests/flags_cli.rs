//! `cordon flags ...` end to end: the real binary serving, and the real binary as the
//! admin client against it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

const ADMIN: &str = "*:*.cli-test-admin-secret-0123456789";

struct Served {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve() -> Served {
    serve_in(tempfile::tempdir().unwrap())
}

/// Start `cordon flags serve` with `configure`'s database options; wait for its
/// "serving on" line.
fn launch(configure: impl FnOnce(&mut Command), dir: tempfile::TempDir) -> Served {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cordon"));
    cmd.args(["flags", "serve", "--listen", "127.0.0.1:0"])
        .env("CORDON_FLAGS_INIT_ADMIN_TOKEN", ADMIN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    configure(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("the server said where it listens")
            .unwrap();
        if let Some(rest) = line.split("serving on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Served {
        child,
        url,
        _dir: dir,
    }
}

/// Start a server on the SQLite database in `dir` (created if missing).
fn serve_in(dir: tempfile::TempDir) -> Served {
    let db = dir.path().join("flags.db");
    launch(
        |c| {
            c.arg("--db").arg(db);
        },
        dir,
    )
}

impl Served {
    fn cordon(&self, args: &[&str]) -> Output {
        self.cordon_as(ADMIN, args)
    }

    fn cordon_as(&self, token: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cordon"))
            .arg("flags")
            .args(args)
            .env("CORDON_FLAGS_URL", &self.url)
            .env("CORDON_FLAGS_TOKEN", token)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cordon(args);
        assert!(
            out.status.success(),
            "cordon flags {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }
}

fn flag_state(s: &Served, flag: &str, env: &str) -> bool {
    let list = s.json(&["list", "--json"]);
    let f = list["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == flag)
        .unwrap_or_else(|| panic!("{flag} not listed: {list}"))
        .clone();
    f["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == env)
        .map(|e| e["enabled"] == true)
        .unwrap()
}

#[test]
fn the_flags_cli_drives_a_real_server() {
    let s = serve();
    s.ok(&[
        "create",
        "agent-refactor",
        "--description",
        "written by an agent",
    ]);
    assert!(
        !flag_state(&s, "agent-refactor", "production"),
        "created dark"
    );

    let id = s.ok(&[
        "strategy",
        "add",
        "agent-refactor",
        "--env",
        "production",
        "--name",
        "flexibleRollout",
        "--param",
        "rollout=10",
        "--param",
        "stickiness=userId",
        "--constraint",
        r#"{"contextName":"region","operator":"IN","values":["eu"]}"#,
    ]);
    let id = id.trim().to_owned();
    assert_eq!(id.len(), 36, "{id}");
    let listed = s.ok(&["strategy", "list", "agent-refactor"]);
    assert!(
        listed.contains(&id) && listed.contains("rollout=10") && listed.contains("region IN eu"),
        "{listed}"
    );

    s.ok(&["enable", "agent-refactor", "--env", "production"]);
    assert!(flag_state(&s, "agent-refactor", "production"));
    let shown = s.ok(&["show", "agent-refactor"]);
    assert!(shown.contains("production: ON"), "{shown}");
    assert!(shown.contains("flexibleRollout"), "{shown}");
    let shown = s.json(&["show", "agent-refactor", "--json"]);
    assert_eq!(shown["description"], "written by an agent");

    // A client token made by the CLI reads the flag; `token delete` revokes it.
    let client = s.ok(&["token", "create", "--type", "client", "--env", "production"]);
    let client = client.trim().to_owned();
    let tokens = s.json(&["token", "list", "--json"]);
    assert_eq!(tokens["tokens"].as_array().unwrap().len(), 2);

    // Kill switch.
    s.ok(&["kill", "agent-refactor"]);
    assert!(!flag_state(&s, "agent-refactor", "production"));

    // Export, change, import the export back: the state returns.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("production.json");
    s.ok(&[
        "export",
        "--env",
        "production",
        "-o",
        file.to_str().unwrap(),
    ]);
    s.ok(&["enable", "agent-refactor"]);
    s.ok(&["import", "--env", "production", file.to_str().unwrap()]);
    assert!(!flag_state(&s, "agent-refactor", "production"));

    s.ok(&["strategy", "remove", "agent-refactor", &id]);
    assert!(
        s.ok(&["strategy", "list", "agent-refactor"])
            .trim()
            .is_empty()
    );

    // Bad input: a clear one-line error and a non-zero exit; nothing changes.
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, "{not json").unwrap();
    let out = s.cordon(&["import", "--env", "production", junk.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not JSON"), "{err}");
    let out = s.cordon(&["strategy", "add", "agent-refactor", "--param", "rollout"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("KEY=VALUE"));
    let out = s.cordon(&[
        "strategy",
        "add",
        "agent-refactor",
        "--name",
        "flexibleRollout",
        "--param",
        "rollout=250",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("400"));
    let out = s.cordon(&["kill", "no-such-flag"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
    let out = s.cordon_as(&client, &["list"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "a client token is not an admin token"
    );

    let mut revoke = Command::new(env!("CARGO_BIN_EXE_cordon"))
        .args(["flags", "token", "delete", "-"])
        .env("CORDON_FLAGS_URL", &s.url)
        .env("CORDON_FLAGS_TOKEN", ADMIN)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(revoke.stdin.take().unwrap(), "{client}").unwrap();
    assert!(revoke.wait().unwrap().success());
    let tokens = s.json(&["token", "list", "--json"]);
    assert_eq!(tokens["tokens"].as_array().unwrap().len(), 1);

    let verified = s.ok(&["audit", "verify"]);
    assert!(verified.contains("audit chain intact"), "{verified}");
}

#[test]
fn kill_9_under_write_load_loses_no_acknowledged_change() {
    use cordon_flags::client::AdminClient;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let mut s = serve_in(tempfile::tempdir().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    // Per flag: the last acknowledged state, and whether a later change was in
    // flight (sent, not answered) when the server died.
    type Ledger = Arc<Mutex<Vec<(String, bool, bool)>>>;
    let ledger: Ledger = Arc::default();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (stop, ledger, url) = (stop.clone(), ledger.clone(), s.url.clone());
            std::thread::spawn(move || {
                let client = AdminClient::new(&url, ADMIN).unwrap();
                let base = "/api/admin/projects/default/features";
                for j in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let name = format!("w{w}-{j}");
                    let body = serde_json::json!({ "name": name });
                    if client.send("POST", base, Some(&body)).is_err() {
                        return;
                    }
                    let i = {
                        let mut l = ledger.lock().unwrap();
                        l.push((name.clone(), false, false));
                        l.len() - 1
                    };
                    for on in [true, false, true] {
                        ledger.lock().unwrap()[i].2 = true;
                        let path = format!(
                            "{base}/{name}/environments/production/{}",
                            if on { "on" } else { "off" }
                        );
                        if client.send("POST", &path, None).is_err() {
                            return;
                        }
                        let mut l = ledger.lock().unwrap();
                        l[i].1 = on;
                        l[i].2 = false;
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // SIGKILL: no chance to flush or clean up.
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let ledger = ledger.lock().unwrap().clone();
    assert!(
        ledger.len() >= 8,
        "the load did some work: {}",
        ledger.len()
    );

    // Same database, new process.
    let dir = std::mem::replace(&mut s._dir, tempfile::tempdir().unwrap());
    drop(s);
    let s = serve_in(dir);
    let list = s.json(&["list", "--json"]);
    let stored: std::collections::HashMap<String, bool> = list["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let on = f["environments"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "production" && e["enabled"] == true);
            (f["name"].as_str().unwrap().to_owned(), on)
        })
        .collect();
    for (name, acked, in_flight) in &ledger {
        let Some(on) = stored.get(name) else {
            panic!("acknowledged flag {name} was lost");
        };
        if !in_flight {
            assert_eq!(on, acked, "{name}: the last acknowledged state was lost");
        }
    }
    let verified = s.ok(&["audit", "verify"]);
    assert!(verified.contains("audit chain intact"), "{verified}");
}

/// A fresh PostgreSQL database for this test, made with `psql`; dropped on drop.
struct PgDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl PgDatabase {
    fn new() -> Self {
        let admin_url = std::env::var("CORDON_TEST_POSTGRES_URL").expect(
            "CORDON_TEST_POSTGRES_URL is not set: run scripts/test, which starts PostgreSQL \
             and sets it (postgres://USER:PASS@127.0.0.1/postgres)",
        );
        let name = format!("cordon_cli_{}", std::process::id());
        let psql = |sql: &str| {
            let out = Command::new("psql")
                .arg(&admin_url)
                .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
                .output()
                .expect("psql");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        psql(&format!("DROP DATABASE IF EXISTS {name}"));
        psql(&format!("CREATE DATABASE {name}"));
        let (base, _) = admin_url.rsplit_once('/').unwrap();
        let url = format!("{base}/{name}");
        Self {
            admin_url,
            name,
            url,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .arg(&self.admin_url)
            .args([
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

fn serve_pg(url: &str) -> Served {
    launch(
        |c| {
            c.env("CORDON_FLAGS_DATABASE_URL", url);
        },
        tempfile::tempdir().unwrap(),
    )
}

#[test]
fn two_replicas_on_postgresql_share_flags_and_the_chain() {
    let db = PgDatabase::new();
    let a = serve_pg(&db.url);
    let b = serve_pg(&db.url);
    a.ok(&["create", "shared-flag"]);
    b.ok(&["enable", "shared-flag"]);
    assert!(
        flag_state(&a, "shared-flag", "production"),
        "A sees B's change"
    );
    a.ok(&["kill", "shared-flag"]);
    assert!(
        !flag_state(&b, "shared-flag", "production"),
        "B sees A's kill"
    );
    let verified = b.ok(&["audit", "verify"]);
    assert!(verified.contains("audit chain intact"), "{verified}");

    // A wrong password: one clear line, non-zero, and the password is not echoed.
    let (base, rest) = db.url.split_once("://").unwrap();
    let (_, host) = rest.split_once('@').unwrap();
    let wrong = format!("{base}://cordon_test:not-the-password-xyz@{host}");
    let out = Command::new(env!("CARGO_BIN_EXE_cordon"))
        .args([
            "flags",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &wrong,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("not-the-password-xyz"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// Run `cordon flags ARGS` with `stdin` as standard input.
fn cordon_stdin(s: &Served, token: &str, args: &[&str], stdin: &str) -> Output {
    common::flags_with_stdin(&s.url, token, args, stdin)
}

fn stdout_ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn four_eyes_from_the_command_line() {
    let s = serve();
    s.ok(&["cr", "config", "--env", "production", "--approvals", "1"]);
    for (name, role) in [("ed", "editor"), ("ann", "approver")] {
        let out = cordon_stdin(
            &s,
            ADMIN,
            &["user", "add", name, "--role", role, "--password-stdin"],
            &format!("{name}-long-password\n"),
        );
        stdout_ok(out, "user add");
    }
    let login = |name: &str| {
        stdout_ok(
            cordon_stdin(
                &s,
                "-",
                &["login", name],
                &format!("{name}-long-password\n"),
            ),
            "login",
        )
    };
    let (ed, ann) = (login("ed"), login("ann"));
    // A personal token with an end says when it stops working.
    let out = s.cordon_as(&ed, &["user", "token", "--expires", "30d"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let pat = stdout_ok(out, "user token --expires");
    assert!(err.contains("it stops working at 20"), "{err}");
    stdout_ok(s.cordon_as(&pat, &["list"]), "list with the personal token");
    let out = cordon_stdin(&s, "-", &["login", "ed"], "wrong-password\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong user name or password"));

    // An agent creates a flag; it starts off everywhere.
    let bot = stdout_ok(
        s.cordon(&["agent", "create", "claude", "--session", "run-1"]),
        "agent create",
    );
    stdout_ok(s.cordon_as(&bot, &["create", "new-checkout"]), "create");
    assert!(!flag_state(&s, "new-checkout", "production"));
    // Direct enable in production is refused with the way forward.
    let out = s.cordon_as(&ed, &["enable", "new-checkout"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("change request"));

    let id = stdout_ok(
        s.cordon_as(&ed, &["cr", "enable", "new-checkout"]),
        "cr enable",
    );
    let out = s.cordon_as(&ed, &["cr", "approve", &id]);
    assert!(
        !out.status.success(),
        "the author approved their own request"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("may not approve"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout_ok(
        s.cordon_as(&ann, &["cr", "approve", &id, "--comment", "lgtm"]),
        "approve",
    );
    let shown = stdout_ok(s.cordon_as(&ed, &["cr", "show", &id]), "cr show");
    assert!(shown.contains("[Approved]"), "{shown}");
    assert!(
        shown.contains("-  \"enabled\": false") && shown.contains("+  \"enabled\": true"),
        "{shown}"
    );
    assert!(shown.contains("approved by user:ann"), "{shown}");
    let listed = stdout_ok(s.cordon_as(&ed, &["cr", "list", "--json"]), "cr list");
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["state"], "Approved");
    // Agents never apply; the author does.
    assert!(!s.cordon_as(&bot, &["cr", "apply", &id]).status.success());
    stdout_ok(s.cordon_as(&ed, &["cr", "apply", &id]), "apply");
    assert!(flag_state(&s, "new-checkout", "production"));
    // The kill switch needs no request, even for the agent.
    stdout_ok(s.cordon_as(&bot, &["kill", "new-checkout"]), "kill");
    assert!(!flag_state(&s, "new-checkout", "production"));

    // An approver rejects a request; the author cannot reject their own.
    let id = stdout_ok(
        s.cordon_as(&ed, &["cr", "enable", "new-checkout"]),
        "cr enable",
    );
    assert!(!s.cordon_as(&ed, &["cr", "reject", &id]).status.success());
    stdout_ok(
        s.cordon_as(&ann, &["cr", "reject", &id, "--comment", "not today"]),
        "reject",
    );
    let shown = stdout_ok(s.cordon_as(&ed, &["cr", "show", &id]), "cr show");
    assert!(shown.contains("[Rejected]"), "{shown}");
    // Only the author (or an admin) cancels.
    let id = stdout_ok(
        s.cordon_as(&ed, &["cr", "enable", "new-checkout"]),
        "cr enable",
    );
    let out = s.cordon_as(&ann, &["cr", "cancel", &id]);
    assert!(!out.status.success(), "an approver cancelled ed's request");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only the author"), "{err}");
    stdout_ok(s.cordon_as(&ed, &["cr", "cancel", &id]), "cancel");
    let shown = stdout_ok(s.cordon_as(&ed, &["cr", "show", &id]), "cr show");
    assert!(shown.contains("[Cancelled]"), "{shown}");
    assert!(!flag_state(&s, "new-checkout", "production"));
    s.ok(&["audit", "verify"]);
}

/// Stop a server and return everything it wrote to standard output (the launcher
/// pipes it only when asked to).
fn stop(mut s: Served) -> String {
    let _ = s.child.kill();
    let _ = s.child.wait();
    let mut out = String::new();
    if let Some(mut pipe) = s.child.stdout.take() {
        std::io::Read::read_to_string(&mut pipe, &mut out).unwrap();
    }
    out
}

/// `cordon flags serve` on the SQLite file `db` with no initial token from the
/// environment, standard output captured, and `args` added.
fn serve_without_env_token(db: &std::path::Path, args: &[&str]) -> Served {
    launch(
        |c| {
            c.arg("--db")
                .arg(db)
                .args(args)
                .env_remove("CORDON_FLAGS_INIT_ADMIN_TOKEN")
                .stdout(Stdio::piped());
        },
        tempfile::tempdir().unwrap(),
    )
}

/// Every file the SQLite store keeps beside `db` (the database, its WAL, the audit
/// anchor), read whole.
fn database_bytes(db: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let dir = db.parent().unwrap();
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn first_start_prints_a_generated_admin_token_once_and_stores_only_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("flags.db");

    let s = serve_without_env_token(&db, &[]);
    let url = s.url.clone();
    let listed = s.cordon_as(ADMIN, &["list"]);
    assert!(
        !listed.status.success(),
        "no token was given, so the test's usual one must not work"
    );
    let printed = stop(s);
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 1, "exactly the token on stdout: {printed:?}");
    let token = lines[0].trim().to_owned();
    let secret = token
        .strip_prefix("*:*.")
        .unwrap_or_else(|| panic!("an admin token reads *:*.SECRET: {token}"));
    assert!(secret.len() >= 32, "a long random secret: {token}");

    // Only the SHA-256 of the token is stored: not the text, not the secret, in no
    // file the store keeps.
    for (file, bytes) in database_bytes(&db) {
        assert!(
            !contains(&bytes, secret.as_bytes()),
            "{file} holds the admin token's secret"
        );
    }
    let conn = rusqlite::Connection::open(&db).unwrap();
    let hashes: Vec<Vec<u8>> = conn
        .prepare("SELECT hash FROM api_tokens WHERE type = 'admin'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    drop(conn);
    let want: Vec<u8> = <sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()).to_vec();
    assert_eq!(hashes, [want], "one admin token, stored as its SHA-256");

    // A second start on the same database prints nothing and creates nothing; the
    // printed token is the admin token.
    let s = serve_without_env_token(&db, &[]);
    assert_ne!(s.url, url, "a new server");
    let out = s.cordon_as(&token, &["list"]);
    assert!(
        out.status.success(),
        "the printed token administers the server: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stop(s), "", "a second start prints no token");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let admins: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM api_tokens WHERE type = 'admin'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(admins, 1);
}

#[test]
fn init_admin_token_flag_creates_that_token_on_first_start_only() {
    const GIVEN: &str = "*:*.given-on-the-command-line-0123456789";
    const LATER: &str = "*:*.given-on-a-later-start-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("flags.db");

    let s = serve_without_env_token(&db, &["--init-admin-token", GIVEN]);
    assert!(
        s.cordon_as(GIVEN, &["create", "from-the-flag"])
            .status
            .success()
    );
    let out = s.cordon_as(GIVEN, &["list"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("from-the-flag"),
        "the given token administers the server: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stop(s), "", "a given token is not printed");
    for (file, bytes) in database_bytes(&db) {
        assert!(
            !contains(&bytes, b"given-on-the-command-line"),
            "{file} holds the given token's text"
        );
    }

    // Once an admin token exists the option is ignored.
    let s = serve_without_env_token(&db, &["--init-admin-token", LATER]);
    assert!(!s.cordon_as(LATER, &["list"]).status.success());
    assert!(s.cordon_as(GIVEN, &["list"]).status.success());
    drop(s);

    // A token that is not `*:*.SECRET` with a long enough secret: one clear line, a
    // non-zero exit, and no server.
    let fresh = tempfile::tempdir().unwrap();
    for bad in [
        "*:*.short",
        "default:production.0123456789abcdef0123",
        "nonsense",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_cordon"))
            .args(["flags", "serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(fresh.path().join("flags.db"))
            .args(["--init-admin-token", bad])
            .env_remove("CORDON_FLAGS_INIT_ADMIN_TOKEN")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("initial admin token must look like `*:*.SECRET`"),
            "{bad}: {err}"
        );
        assert!(
            !err.contains(bad),
            "{bad}: the rejected token is not echoed: {err}"
        );
    }
}

#[test]
fn disable_turns_a_flag_off_in_one_environment() {
    let s = serve();
    s.ok(&["create", "reports"]);
    s.ok(&["enable", "reports"]);
    s.ok(&["enable", "reports", "--env", "development"]);
    assert!(flag_state(&s, "reports", "production"));
    assert!(flag_state(&s, "reports", "development"));

    s.ok(&["disable", "reports"]);
    assert!(
        !flag_state(&s, "reports", "production"),
        "production by default"
    );
    assert!(flag_state(&s, "reports", "development"), "only that one");
    s.ok(&["disable", "reports", "--env", "development"]);
    assert!(!flag_state(&s, "reports", "development"));
    // Disabling what is off changes nothing and is not an error.
    s.ok(&["disable", "reports"]);
    assert!(!flag_state(&s, "reports", "production"));

    let out = s.cordon(&["disable", "no-such-flag"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
    let out = s.cordon(&["disable", "reports", "--env", "no-such-env"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-env"));
}

#[test]
fn audit_verify_fails_from_the_cli_and_names_a_tampered_event() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("flags.db");
    let s = serve_in(dir);
    s.ok(&["create", "audited"]);
    s.ok(&["enable", "audited"]);
    s.ok(&["kill", "audited"]);
    let verified = s.ok(&["audit", "verify"]);
    assert!(
        verified.contains("audit chain intact: 4 events"),
        "{verified}"
    );

    // Someone with the database file rewrites who turned the flag on (event 3:
    // 1 is the admin token, 2 the flag's creation), dropping the triggers that
    // refuse it first.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let action: String = conn
        .query_row("SELECT action FROM audit_events WHERE seq = 3", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(action, "feature-environment-enabled");
    conn.execute_batch(
        "DROP TRIGGER IF EXISTS audit_events_no_update;
         DROP TRIGGER IF EXISTS audit_events_no_delete;
         UPDATE audit_events SET actor = 'admin:somebody-else' WHERE seq = 3;",
    )
    .unwrap();
    drop(conn);

    let out = s.cordon(&["audit", "verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("event 3 was edited"), "{stdout}");
    assert!(!stdout.contains("intact"), "{stdout}");
}
