//! What only the gVisor backend does, end to end with the real `runsc` (Debian's
//! package, installed by `scripts/test`; a machine without it fails these tests):
//! its trace session turned into the same event kinds the native backend logs, the
//! monitor's rules firing on them, the platform in the summary, and edits of
//! existing files through gVisor's gofer. The shared suites (escape, gateway, run,
//! monitor) also run on gVisor: `scripts/test` runs them with `CORDON_BACKEND=gvisor`.

mod common;

use std::process::Output;

use common::{Env, events, summary};
use serde_json::Value;

fn env() -> Option<Env> {
    common::fuse_env(|base| {
        std::fs::write(base.join("a.txt"), "original\n").unwrap();
        std::fs::write(base.join(".env"), "API_KEY=host-secret\n").unwrap();
    })
}

fn run(env: &Env, script: &str) -> Output {
    assert!(
        cordon_sandbox::gvisor::find_runsc().is_some(),
        "runsc is not installed: scripts/test installs Debian's runsc package"
    );
    env.cmd()
        .current_dir(&env.base)
        .args([
            "run",
            "--backend",
            "gvisor",
            "--json",
            "--no-tty",
            "--",
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap()
}

fn find<'a>(events: &'a [Value], kind: &str, f: impl Fn(&Value) -> bool) -> Option<&'a Value> {
    events.iter().find(|e| e["kind"] == kind && f(&e["data"]))
}

#[test]
fn the_trace_session_becomes_session_events_and_rules_fire_on_them() {
    let Some(env) = env() else { return };
    let out = run(
        &env,
        r#"curl --version >/dev/null
cat /etc/shadow 2>/dev/null
python3 - <<'PY'
import os, socket
try:
    os.setuid(4242)
except OSError:
    pass
s = socket.socket()
s.settimeout(0.5)
s.connect_ex(("10.1.2.3", 8080))
b = socket.socket()
b.bind(("127.0.0.1", 0))
# A name relative to a directory descriptor: resolved by default.
etc = os.open("/etc", os.O_RDONLY | os.O_DIRECTORY)
try:
    os.open("gshadow", os.O_RDONLY, dir_fd=etc)
except OSError:
    pass
PY
exit 3"#,
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = summary(&out);
    assert_eq!(s["signal"], Value::Null, "exit 3 is an exit code");
    assert!(
        s["limit_enforcement"]
            .as_str()
            .unwrap()
            .contains("gVisor platform"),
        "{s}"
    );
    let id = s["session"].as_str().unwrap();
    let ev = events(&env, id);
    let ready = find(&ev, "sandbox.ready", |_| true).expect("sandbox.ready");
    assert!(
        ["systrap", "kvm", "ptrace"].contains(&ready["data"]["platform"].as_str().unwrap()),
        "{ready}"
    );
    assert!(
        find(&ev, "proc.exec", |d| d["argv"][0] == "curl").is_some(),
        "no exec of curl: {ev:?}"
    );
    assert!(
        find(&ev, "fs.open", |d| d["path"] == "/etc/shadow"
            && d["write"] == false)
        .is_some()
    );
    assert!(
        find(&ev, "fs.open", |d| d["path"] == "/etc/gshadow").is_some(),
        "the open relative to a directory descriptor was not resolved: {ev:?}"
    );
    assert!(
        find(&ev, "proc.privilege", |d| d["syscall"] == "setuid"
            && d["args"][0] == 4242)
        .is_some(),
        "no setuid: {ev:?}"
    );
    assert!(
        find(&ev, "proc.connect", |d| d["address"] == "10.1.2.3"
            && d["port"] == 8080)
        .is_some()
    );
    assert!(find(&ev, "proc.bind", |d| d["address"] == "127.0.0.1").is_some());
    assert!(find(&ev, "proc.exit", |d| d["pid"] == 1 && d["code"] == 3).is_some());
    let trace = find(&ev, "trace.summary", |_| true).expect("trace.summary");
    assert!(trace["data"]["messages"].as_u64().unwrap() > 0);
    assert_eq!(trace["data"]["malformed"], 0);
    // The default rules see gVisor's events as they see the native backend's.
    for rule in ["network-tools", "credential-read", "privilege-syscall"] {
        assert!(
            find(&ev, "anomaly", |d| d["rule"] == rule).is_some(),
            "rule {rule} did not fire: {ev:?}"
        );
    }
    assert!(
        !ev.iter().any(|e| e["kind"] == "session.error"),
        "the trace session did not come up: {ev:?}"
    );
    assert!(env.run(&["audit", "verify", id]).status.success());
}

#[test]
fn existing_files_are_edited_through_the_gofer_and_the_host_is_untouched() {
    // gVisor's gofer keeps a read-only descriptor on every file it walks; writing
    // such a file must still work (it copies up into the workspace store).
    let Some(env) = env() else { return };
    let out = run(
        &env,
        "echo changed > a.txt && echo more >> a.txt && cat a.txt && cat .env 2>&1 | head -c 40; echo",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("changed\nmore\n"), "{stdout}");
    assert!(
        !stdout.contains("host-secret"),
        "the hidden .env was read: {stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(env.base.join("a.txt")).unwrap(),
        "original\n"
    );
    let s = summary(&out);
    assert_eq!(s["files_changed"], 1, "{s}");
    let diff = env.ok(&["diff", s["session"].as_str().unwrap()]);
    assert!(
        diff.contains("+changed") && diff.contains("-original"),
        "{diff}"
    );
}

#[test]
fn a_missing_program_and_signals_end_as_on_the_native_backend() {
    let Some(env) = env() else { return };
    let out = env
        .cmd()
        .current_dir(&env.base)
        .args([
            "run",
            "--backend",
            "gvisor",
            "--no-tty",
            "--",
            "no-such-agent",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot run no-such-agent: ENOENT"));
    let out = run(&env, "kill -KILL $$");
    assert_eq!(out.status.code(), Some(137));
    assert_eq!(summary(&out)["signal"], 9);
}
