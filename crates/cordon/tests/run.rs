//! `cordon run` end to end on the native backend: exit codes, signals, the
//! terminal, sessions (resume, list, rm), the event log (follow, verify,
//! tampering), policy-driven mounts and environment, and rootless runs.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Env;
use serde_json::Value;

fn env() -> Option<Env> {
    common::fuse_env(|base| {
        std::fs::write(base.join("a.txt"), "original\n").unwrap();
    })
}

fn summary(out: &Output) -> Value {
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON summary in:\n{err}"))
}

fn run(env: &Env, flags: &[&str], script: &str) -> Output {
    env.cmd()
        .current_dir(&env.base)
        .args(["run", "--json", "--no-tty"])
        .args(flags)
        .args(["--", "sh", "-c", script])
        .output()
        .unwrap()
}

fn events(env: &Env, id: &str) -> Vec<Value> {
    env.ok(&["log", id, "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn exit_codes_are_the_agents() {
    let Some(env) = env() else { return };
    let out = run(&env, &[], "echo hello; exit 7");
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    let s = summary(&out);
    assert_eq!(s["exit_code"], 7);
    // Killed by a signal: 128 + N.
    let out = run(&env, &[], "kill -TERM $$");
    assert_eq!(out.status.code(), Some(143));
    assert_eq!(summary(&out)["signal"], 15);
    // An exit code above 128 is an exit code, not a signal.
    let out = run(&env, &[], "exit 130");
    assert_eq!(out.status.code(), Some(130));
    assert_eq!(summary(&out)["signal"], Value::Null);
    // A command that does not exist: 127, with a clear message.
    let out = env
        .cmd()
        .current_dir(&env.base)
        .args(["run", "--no-tty", "--", "no-such-agent-binary"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot run no-such-agent-binary"));
}

#[test]
fn identity_and_view_inside() {
    let Some(env) = env() else { return };
    let out = run(
        &env,
        &[],
        "hostname; pwd; echo $HOME; ls -A $HOME | wc -l; cat /proc/self/status | grep -E '^(CapEff|NoNewPrivs|Seccomp):'; \
         ls /proc | grep -c '^[0-9]'; ip -o link 2>/dev/null | wc -l || true",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "cordon");
    assert_eq!(Path::new(lines[1]), env.base.canonicalize().unwrap());
    assert_eq!(lines[3], "0", "the private home is empty");
    assert!(text.contains("CapEff:\t0000000000000000"), "{text}");
    // gVisor's /proc/self/status has no NoNewPrivs or Seccomp line (both are set:
    // the OCI spec asks for them and the escape suite checks their effect).
    if !common::gvisor() {
        assert!(text.contains("NoNewPrivs:\t1"), "{text}");
        assert!(text.contains("Seccomp:\t2"), "{text}");
    }
    let procs: u32 = lines[7].trim().parse().unwrap();
    assert!(procs <= 6, "the sandbox sees {procs} processes");
}

#[test]
fn init_reaps_orphans() {
    let Some(env) = env() else { return };
    let out = run(
        &env,
        &[],
        "for i in 1 2 3 4 5; do (sleep 0.05 &) ; done; sleep 0.5; \
         grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
}

/// The `proc.exit` events for processes a signal ended: reported by the init
/// natively (`by: signal`), by the sentry's task-exit point on gVisor.
fn killed(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| {
            e["kind"] == "proc.exit"
                && if common::gvisor() {
                    e["data"]["signal"].is_number()
                } else {
                    e["data"]["by"] == "signal"
                }
        })
        .collect()
}

#[test]
fn processes_killed_by_a_signal_have_an_exit_event() {
    // A killed process never calls exit_group, which is what the seccomp
    // supervisor sees: the init reports it when it reaps it. Here an orphan
    // (the init's to reap) gets SIGKILL, a second one SIGSEGV, then the
    // agent kills itself.
    let Some(env) = env() else { return };
    let out = run(
        &env,
        &[],
        "(sleep 30 & echo $! > /tmp/p1); (sleep 31 & echo $! > /tmp/p2); sleep 0.2; \
         kill -9 $(cat /tmp/p1); kill -SEGV $(cat /tmp/p2); sleep 0.3; kill -9 $$",
    );
    assert_eq!(out.status.code(), Some(137));
    let id = summary(&out)["session"].as_str().unwrap().to_string();
    let events = events(&env, &id);
    let killed = killed(&events);
    let by = |comm: &str, signal: i64| {
        killed
            .iter()
            .filter(|e| e["data"]["comm"] == comm && e["data"]["signal"] == signal)
            .count()
    };
    assert_eq!(by("sleep", 9), 1, "{killed:?}");
    assert_eq!(by("sleep", 11), 1, "{killed:?}");
    assert_eq!(by("sh", 9), 1, "the agent's own death: {killed:?}");
    // Natively the init knows only the sandbox's pid; gVisor's pids are the
    // sandbox's own.
    let pid_field = if common::gvisor() {
        "pid"
    } else {
        "sandbox_pid"
    };
    assert!(
        killed
            .iter()
            .filter(|e| e["data"]["comm"] == "sleep")
            .all(|e| e["data"][pid_field].as_i64() > Some(1)),
        "{killed:?}"
    );
    // Those that called exit_group (the subshells, cat, the short sleeps) are
    // reported by the supervisor alone, not again by the init.
    assert_eq!(killed.len(), 3, "{killed:?}");
    let exited = events
        .iter()
        .filter(|e| e["kind"] == "proc.exit" && e["data"]["code"] == 0)
        .count();
    assert_eq!(exited, 6, "{events:?}");
}

#[test]
fn processes_left_running_are_killed_and_reported() {
    // When the agent ends, the init kills what is left, and says so.
    let Some(env) = env() else { return };
    let out = run(&env, &[], "sleep 30 & sleep 31 & sleep 0.3; exit 3");
    assert_eq!(out.status.code(), Some(3));
    let id = summary(&out)["session"].as_str().unwrap().to_string();
    let events = events(&env, &id);
    let left: Vec<_> = killed(&events)
        .into_iter()
        .filter(|e| e["data"]["comm"] == "sleep" && e["data"]["signal"] == 9)
        .collect();
    assert_eq!(left.len(), 2, "{events:?}");
    // The agent itself exited: its exit_group event, not a signal one.
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "proc.exit" && e["data"]["code"] == 3)
    );
}

#[test]
fn scratch_space_shares_the_disk_quota() {
    // /tmp, /run, /dev/shm and $HOME are one tmpfs the size of the quota:
    // filling one leaves no room in the others, and /dev/shm is bounded too.
    let Some(env) = env() else { return };
    let out = run(
        &env,
        &["--disk-quota", "8M"],
        "head -c 12000000 /dev/zero > /dev/shm/fill; echo shm=$?; \
         head -c 100000 /dev/zero > /tmp/more; echo tmp=$?; \
         rm /dev/shm/fill; head -c 4000000 /dev/zero > $HOME/ok; echo home=$?",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // gVisor's sentry cannot bind one tmpfs in several places: there each
    // scratch tmpfs holds the quota on its own.
    let expected = if common::gvisor() {
        "shm=1\ntmp=0\nhome=0\n"
    } else {
        "shm=1\ntmp=1\nhome=0\n"
    };
    assert_eq!(stdout, expected, "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
}

#[test]
fn signals_are_forwarded_to_the_agent() {
    let Some(env) = env() else { return };
    let mut child = env
        .cmd()
        .current_dir(&env.base)
        .args(["run", "--json", "--no-tty", "--", "sh", "-c"])
        .arg("trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.05; done")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    stdout.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(rest, "got-term\n");
    assert_eq!(out.status.code(), Some(42));
}

#[test]
fn terminal_with_size() {
    // A real pty around `cordon run`, 37 rows by 101 columns: the agent gets its
    // own pty of that size as its controlling terminal.
    let Some(env) = env() else { return };
    let (text, status) = under_pty(
        &env,
        &[
            "run",
            "--",
            "sh",
            "-c",
            "tty; stty size; test -t 0 && echo is-a-tty",
        ],
        "winsize(37, 101)",
    );
    assert!(status.success(), "{text}");
    // Debian's runsc (2022-12) refuses statx(AT_NO_AUTOMOUNT), so `tty` cannot name
    // the terminal there; `stty` and `test -t` show it is one.
    if !common::gvisor() {
        assert!(text.contains("/dev/pts/"), "{text}");
    }
    assert!(text.contains("37 101"), "{text}");
    assert!(text.contains("is-a-tty"), "{text}");
}

#[test]
fn sessions_resume_list_and_remove() {
    let Some(env) = env() else { return };
    let out = run(&env, &[], "echo one > b.txt");
    let id = summary(&out)["session"].as_str().unwrap().to_string();
    // Resume: the earlier change is there; the host is untouched.
    let out = run(&env, &["--session", &id], "cat b.txt; echo two >> b.txt");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\n");
    assert_eq!(summary(&out)["session"], id.as_str());
    assert!(!env.base.join("b.txt").exists());
    let list: Value = serde_json::from_str(&env.ok(&["sessions", "--json"])).unwrap();
    let me = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id.as_str())
        .unwrap();
    assert_eq!(me["runs"].as_array().unwrap().len(), 2);
    // diff works on the session id.
    let diff = env.ok(&["diff", &id]);
    assert!(diff.contains("+one") && diff.contains("+two"), "{diff}");
    // The log is one chain across both runs.
    let ev = events(&env, &id);
    assert_eq!(
        ev.iter().filter(|e| e["kind"] == "session.start").count(),
        2
    );
    env.ok(&["audit", "verify", &id]);
    env.ok(&["rm", &id]);
    assert!(!env.home.join("sessions").join(&id).exists());
    assert!(env.run(&["log", &id]).status.code() != Some(0));
}

#[test]
fn log_follow_streams_while_running() {
    let Some(env) = env() else { return };
    let mut agent = env
        .cmd()
        .current_dir(&env.base)
        .args([
            "run",
            "--no-tty",
            "--",
            "sh",
            "-c",
            "echo started; sleep 1; /bin/true; sleep 1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 8];
    agent
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    let sessions: Value = serde_json::from_str(&env.ok(&["sessions", "--json"])).unwrap();
    let id = sessions[0]["id"].as_str().unwrap().to_string();
    let t = Instant::now();
    let follow = env
        .cmd()
        .args(["log", &id, "--follow", "--json"])
        .output()
        .unwrap();
    agent.wait().unwrap();
    let text = String::from_utf8_lossy(&follow.stdout);
    // It returned only once the session ended, with everything in between.
    assert!(
        t.elapsed() >= Duration::from_millis(800),
        "follow returned early"
    );
    assert!(text.contains("\"path\":\"/bin/true\""), "{text}");
    assert!(
        text.lines().last().unwrap().contains("session.end"),
        "{text}"
    );
}

#[test]
fn audit_detects_tampering() {
    let Some(env) = env() else { return };
    let out = run(&env, &[], "true; true; true");
    let id = summary(&out)["session"].as_str().unwrap().to_string();
    let log = env.home.join("sessions").join(&id).join("events.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let edited = text.replacen("\"code\":0", "\"code\":1", 1);
    assert_ne!(edited, text);
    std::fs::write(&log, edited).unwrap();
    let v = env.run(&["audit", "verify", &id]);
    assert_eq!(v.status.code(), Some(1));
    let report = String::from_utf8_lossy(&v.stdout);
    assert!(report.contains("edited"), "{report}");
    // Resuming the session is refused before the agent runs, and the broken
    // log gets nothing appended (its end is intact, so it is verified while
    // the sandbox is set up).
    let edited = std::fs::read(&log).unwrap();
    let out = run(&env, &["--session", &id], "echo AGENT-RAN");
    assert_ne!(out.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("AGENT-RAN"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 1") || err.contains("edited"), "{err}");
    assert_eq!(std::fs::read(&log).unwrap(), edited, "nothing appended");
    // Deleting the last event is caught by the anchor.
    let mut lines: Vec<&str> = text.lines().collect();
    lines.pop();
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let v = env.run(&["audit", "verify", &id, "--json"]);
    assert_eq!(v.status.code(), Some(1));
    let r: Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(r["ok"], false);
    assert!(
        r["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["kind"] == "truncated"),
        "{r}"
    );
}

#[test]
fn policy_mounts_env_and_writable_overrides() {
    let Some(env) = env() else { return };
    let shared = env.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("data.txt"), "shared\n").unwrap();
    let single = env.dir.path().join("tool.conf");
    std::fs::write(&single, "conf\n").unwrap();
    let out_dir = env.dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    std::fs::create_dir_all(env.base.join(".git")).unwrap();
    std::fs::write(env.base.join(".git/config"), "[core]\n").unwrap();
    let policy = format!(
        "[sandbox]\nenv = [\"CORDON_PASS_*\"]\n[sandbox.set_env]\nFIXED = \"yes\"\n\
         [workspace]\nwritable = [\".git/config\"]\n\
         [[mount]]\nsource = {shared:?}\n\
         [[mount]]\nsource = {single:?}\ntarget = \"/etc/tool.conf\"\n\
         [[mount]]\nsource = {out:?}\nwritable = true\n",
        shared = shared.to_str().unwrap(),
        single = single.to_str().unwrap(),
        out = out_dir.to_str().unwrap(),
    );
    std::fs::write(env.base.join("cordon.toml"), policy).unwrap();
    let out = env
        .cmd()
        .current_dir(&env.base)
        .env("CORDON_PASS_A", "passed")
        .env("CORDON_OTHER", "kept-out")
        .args(["run", "--json", "--no-tty", "--", "sh", "-c"])
        .arg(format!(
            "echo $CORDON_PASS_A $FIXED ${{CORDON_OTHER:-none}}; cat {s}/data.txt /etc/tool.conf; \
             echo x > {s}/new 2>/dev/null || echo ro-mount; echo y > {o}/made && echo rw-mount; \
             echo '[x]' >> .git/config && echo git-config-writable; echo z >> cordon.toml 2>/dev/null || echo policy-ro",
            s = shared.to_str().unwrap(),
            o = out_dir.to_str().unwrap()
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text,
        "passed yes none\nshared\nconf\nro-mount\nrw-mount\ngit-config-writable\npolicy-ro\n"
    );
    assert!(!shared.join("new").exists());
    assert_eq!(
        std::fs::read_to_string(out_dir.join("made")).unwrap(),
        "y\n"
    );
}

#[test]
fn bad_policy_is_refused_with_line_and_column() {
    let Some(env) = env() else { return };
    std::fs::write(env.base.join("cordon.toml"), "[sandbox]\nmemroy = \"1G\"\n").unwrap();
    let out = run(&env, &[], "true");
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cordon.toml:2:1"), "{err}");
    assert!(err.contains("memroy"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn doctor_reports_native_ready() {
    let Some(env) = env() else { return };
    let v: Value = serde_json::from_str(&env.ok(&["doctor", "--json"])).unwrap();
    let native = v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backend"] == "native")
        .unwrap();
    assert_eq!(native["available"], true, "{v}");
    let names: Vec<&str> = v["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    for n in [
        "user namespaces",
        "landlock",
        "seccomp user notification",
        "cgroups",
    ] {
        assert!(names.contains(&n), "{names:?}");
    }
}

/// Runs `cordon run` as the unprivileged test user.
fn rootless(env: &Env, flags: &[&str], script: &str) -> Output {
    env.rootless(&[])
        .args(["run", "--json", "--no-tty"])
        .args(flags)
        .args(["--", "sh", "-c", script])
        .output()
        .unwrap()
}

#[test]
fn rootless_run() {
    let Some(env) = env() else { return };
    // gVisor's memory limit needs a cgroup (refused rootless: see
    // `unenforceable_limits_fail_closed`); its process limit is the sentry's.
    let limits: &[&str] = if common::gvisor() {
        &["--pids", "200"]
    } else {
        &["--memory", "512M", "--pids", "200"]
    };
    let out = rootless(
        &env,
        limits,
        "id -u; echo changed > a.txt; cat /proc/self/status | grep CapEff; \
         python3 -c 'import ctypes; l=ctypes.CDLL(None, use_errno=True); print(\"ptrace\", l.ptrace(16, 1, 0, 0), ctypes.get_errno())'; \
         echo x > /etc/x 2>/dev/null || echo etc-ro; \
         head -c1 /etc/shadow 2>/dev/null && echo shadow-read || echo shadow-refused",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}{err}");
    // Natively the agent keeps the invoker's uid; gVisor's sentry runs it as uid 0
    // of the sandbox's own user namespace (mapped to the invoker on the host).
    let uid = Command::new("id").args(["-u", "tests"]).output().unwrap();
    let expected_uid = if common::gvisor() {
        "0\n".to_string()
    } else {
        String::from_utf8_lossy(&uid.stdout).into_owned()
    };
    assert!(text.starts_with(&expected_uid), "{text}");
    assert!(text.contains("shadow-refused"), "{text}");
    assert!(text.contains("CapEff:\t0000000000000000"));
    assert!(
        text.contains(&format!("ptrace -1 {}", libc::EPERM)),
        "{text}"
    );
    assert!(text.contains("etc-ro"));
    assert_eq!(
        std::fs::read_to_string(env.base.join("a.txt")).unwrap(),
        "original\n"
    );
    let s = summary(&out);
    assert_eq!(s["files_changed"], 1);
    let enforcement = s["limit_enforcement"].as_str().unwrap();
    if common::gvisor() {
        assert!(
            enforcement.contains("pids 200 by RLIMIT_NPROC in the sentry"),
            "{s}"
        );
        return;
    }
    // Without a delegated cgroup the limits fall back to rlimits, and say so.
    assert!(enforcement.starts_with("rlimits"), "{s}");
    let id = s["session"].as_str().unwrap();
    let ev = events(&env, id);
    assert!(
        ev.iter()
            .any(|e| e["kind"] == "syscall.denied" && e["data"]["syscall"] == "ptrace")
    );
}

#[test]
fn rootless_fork_bomb_meets_the_rlimit() {
    let Some(env) = env() else { return };
    let out = rootless(
        &env,
        &["--pids", "32", "--timeout", "20s"],
        "n=0; while [ $n -lt 200 ]; do sleep 5 & n=$((n+1)); done; echo done",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("fork") || err.contains("Resource temporarily unavailable"),
        "{err}"
    );
    // The refused forks are the agent's own errors; what is reported is the
    // limit reached, in the summary and the log.
    let s = summary(&out);
    let id = s["session"].as_str().unwrap();
    assert!(
        events(&env, id).iter().any(|e| e["kind"] == "limit.pids"),
        "no limit.pids event"
    );
    if common::gvisor() {
        return;
    }
    assert_eq!(s["limits_hit"], serde_json::json!(["pids"]), "{s}");
    assert!(
        s["limit_enforcement"]
            .as_str()
            .unwrap()
            .contains("pids 32 (RLIMIT_NPROC; reaching it is observed"),
        "{s}"
    );
}

#[test]
fn rootless_memory_rlimit_says_hits_are_not_observed() {
    // RLIMIT_AS refuses the allocation inside the agent, and nothing outside
    // can tell; the summary must not read as "no limit was hit" without
    // saying so.
    let Some(env) = env() else { return };
    if common::gvisor() {
        // gVisor refuses a memory limit without a cgroup (unenforceable_limits_fail_closed).
        return;
    }
    let out = rootless(
        &env,
        &["--memory", "64M"],
        "python3 -c 'b = bytearray(200 << 20)' 2>&1 | tail -1",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("MemoryError"), "{text}");
    let s = summary(&out);
    let enforcement = s["limit_enforcement"].as_str().unwrap();
    assert!(
        enforcement.starts_with("rlimits")
            && enforcement.contains("memory 64 MiB per process (RLIMIT_AS;")
            && enforcement.contains("a hit is not observed"),
        "{s}"
    );
    let id = s["session"].as_str().unwrap();
    let ready = events(&env, id)
        .into_iter()
        .find(|e| e["kind"] == "sandbox.ready")
        .expect("no sandbox.ready event");
    assert_eq!(ready["data"]["limits"], enforcement, "{ready}");
}

#[allow(dead_code)]
fn write_stdin(child: &mut std::process::Child, data: &[u8]) {
    child.stdin.as_mut().unwrap().write_all(data).unwrap();
}

#[test]
fn signed_policies_with_a_trust_key() {
    let Some(env) = env() else { return };
    let keys = env.dir.path().join("team");
    env.ok(&["policy", "keygen", "--out", keys.to_str().unwrap()]);
    let key = format!("{}.key", keys.display());
    let public = format!("{}.pub", keys.display());
    let policy = env.base.join("cordon.toml");
    // The suite's backend in the policy: under a trust key $CORDON_BACKEND may
    // only agree with the signed policy.
    let backend = if common::gvisor() { "gvisor" } else { "native" };
    let signed_text = format!("[sandbox]\nbackend = \"{backend}\"\ntimeout = \"5m\"\n");
    std::fs::write(&policy, &signed_text).unwrap();
    let trust_with = |env: &Env, flags: &[&str], script: &str| {
        env.cmd()
            .current_dir(&env.base)
            .env("SECRETX", "leaked-value")
            .args(["run", "--json", "--no-tty", "--trust", &public])
            .args(flags)
            .args(["--", "sh", "-c", script])
            .output()
            .unwrap()
    };
    let trust = |env: &Env| trust_with(env, &[], "true");
    // Unsigned: refused, and nothing ran.
    let out = trust(&env);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not signed") && err.contains("cordon policy sign"),
        "{err}"
    );
    assert!(!env.home.join("sessions").exists());
    // Signed: runs.
    env.ok(&["policy", "sign", "--key", &key, policy.to_str().unwrap()]);
    env.ok(&[
        "policy",
        "verify",
        "--key",
        &public,
        policy.to_str().unwrap(),
    ]);
    let out = trust(&env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A flag cannot loosen the signed policy: each one that would change it is
    // refused, by name, before anything runs.
    let sessions_before = std::fs::read_dir(env.home.join("sessions"))
        .unwrap()
        .count();
    let out = trust_with(
        &env,
        &["--timeout", "9h", "--env", "SECRETX"],
        "echo ran; echo \"[$SECRETX]\"",
    );
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--timeout, --env") && err.contains("signed policy"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ran"));
    for flags in [
        &["--backend", "native"][..],
        &["--workspace", env.base.to_str().unwrap()],
        &["--memory", "8G"],
        &["--cpus", "4"],
        &["--pids", "100000"],
        &["--disk-quota", "100G"],
        &["--output-limit", "1G"],
    ] {
        let out = trust_with(&env, flags, "echo ran");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{flags:?}: {err}");
        assert!(err.contains(&format!("refusing {}:", flags[0])), "{err}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("ran"));
    }
    // Nor can the environment's default backend pick another one.
    let other = if common::gvisor() { "native" } else { "gvisor" };
    let out = env
        .cmd()
        .current_dir(&env.base)
        .env("CORDON_BACKEND", other)
        .args([
            "run", "--json", "--no-tty", "--trust", &public, "--", "true",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("refusing CORDON_BACKEND"), "{err}");
    assert_eq!(
        std::fs::read_dir(env.home.join("sessions"))
            .unwrap()
            .count(),
        sessions_before,
        "a refused run left a session behind"
    );
    // Altered after signing: refused with a clear message.
    std::fs::write(&policy, signed_text.replace("5m", "9h")).unwrap();
    let out = trust(&env);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not verify"), "{err}");
    assert_eq!(
        env.run(&[
            "policy",
            "verify",
            "--key",
            &public,
            policy.to_str().unwrap()
        ])
        .status
        .code(),
        Some(1)
    );
    // The same through the user config file instead of --trust.
    let cfg = env.dir.path().join("xdg/cordon");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(cfg.join("config.toml"), format!("trust = [{public:?}]\n")).unwrap();
    let out = env
        .cmd()
        .current_dir(&env.base)
        .env("XDG_CONFIG_HOME", env.dir.path().join("xdg"))
        .args(["run", "--no-tty", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(125),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pipe_mode_never_hands_over_the_users_terminal() {
    // `cordon run --no-tty` from a terminal: the agent's stdin is a pipe fed
    // from the terminal, not the terminal itself (which it could resize or
    // retitle behind the relay's back).
    let Some(env) = env() else { return };
    let (text, _) = under_pty(
        &env,
        &[
            "run",
            "--no-tty",
            "--",
            "sh",
            "-c",
            "for f in 0 1 2; do test -t $f && echo tty$f; done; read line; echo got:$line",
        ],
        "os.write(fd, b'typed\\n')",
    );
    assert!(text.contains("got:typed"), "{text}");
    assert!(
        !text.contains("tty0") && !text.contains("tty1") && !text.contains("tty2"),
        "{text}"
    );
}

#[test]
fn unenforceable_limits_fail_closed() {
    // Without a cgroup (an unprivileged user here), a CPU limit cannot hold:
    // the run is refused rather than run unlimited.
    let Some(env) = env() else { return };
    let out = rootless(&env, &["--cpus", "1"], "echo should-not-run");
    assert_eq!(out.status.code(), Some(125));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("should-not-run"));
    let err = String::from_utf8_lossy(&out.stderr);
    if common::gvisor() {
        assert!(
            err.contains("the memory and cpu limits need a cgroup on the gvisor backend"),
            "{err}"
        );
        // So is a memory limit, which only a cgroup holds for the whole sentry.
        let out = rootless(&env, &["--memory", "512M"], "echo should-not-run");
        assert_eq!(out.status.code(), Some(125));
        assert!(!String::from_utf8_lossy(&out.stdout).contains("should-not-run"));
    } else {
        assert!(err.contains("cpus limit cannot be enforced"), "{err}");
    }
}

#[test]
fn cpu_limit_throttles_and_is_reported() {
    let Some(env) = env() else { return };
    let out = run(
        &env,
        &["--cpus", "0.2"],
        "python3 -c 'import time\nt=time.time()\nwhile time.time()-t<1.5: pass'",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = summary(&out);
    assert!(
        s["limits_hit"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l == "cpu"),
        "{s}"
    );
    assert!(
        s["limit_enforcement"]
            .as_str()
            .unwrap()
            .starts_with("cgroup"),
        "{s}"
    );
}

#[test]
fn terminal_resize_reaches_the_agent() {
    let Some(env) = env() else { return };
    let (text, _) = under_pty(
        &env,
        &[
            "run",
            "--",
            "sh",
            "-c",
            "trap 'stty size; exit 0' WINCH; echo ready; while :; do sleep 0.05; done",
        ],
        "winsize(20, 60)\n\
         while b'ready' not in out:\n\
         \x20   out += os.read(fd, 4096)\n\
         winsize(33, 77)",
    );
    assert!(text.contains("33 77"), "{text}");
}

/// Runs `cordon ARGS` in the project directory under a real pty (Python's
/// `pty.fork`); `drive` is Python run in the parent first (`fd` is the master,
/// `out` the bytes read so far, `winsize(rows, cols)` resizes). Returns
/// everything cordon wrote to the terminal and its exit status.
fn under_pty(env: &Env, args: &[&str], drive: &str) -> (String, std::process::ExitStatus) {
    let args = serde_json::to_string(args).unwrap();
    let script = format!(
        "import os, pty, fcntl, termios, struct, sys\n\
         pid, fd = pty.fork()\n\
         if pid == 0:\n\
         \x20   os.chdir({base:?})\n\
         \x20   os.execv({bin:?}, [{bin:?}] + {args})\n\
         def winsize(r, c):\n\
         \x20   fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack('HHHH', r, c, 0, 0))\n\
         out = b''\n\
         {drive}\n\
         while True:\n\
         \x20   try:\n\
         \x20       b = os.read(fd, 4096)\n\
         \x20   except OSError:\n\
         \x20       break\n\
         \x20   if not b: break\n\
         \x20   out += b\n\
         _, st = os.waitpid(pid, 0)\n\
         sys.stdout.write(out.decode(errors='replace'))\n\
         sys.exit(os.waitstatus_to_exitcode(st))\n",
        base = env.base.to_str().unwrap(),
        bin = env!("CARGO_BIN_EXE_cordon"),
    );
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(&script)
        .env("CORDON_HOME", &env.home)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status,
    )
}

#[test]
fn secrets_sources_never_pass_through_and_placeholders_are_per_session() {
    let Some(env) = env() else { return };
    std::fs::write(
        env.base.join("cordon.toml"),
        "[sandbox]\nenv = [\"REAL_*\"]\n\
         [secrets.API_TOKEN]\nfrom = \"env:REAL_TOKEN\"\nhosts = [\"api.example.com\"]\n\
         inject = [\"header:authorization\"]\n",
    )
    .unwrap();
    let go = |flags: &[&str]| {
        env.cmd()
            .current_dir(&env.base)
            .env("REAL_TOKEN", "s3cr3t-value")
            .env("REAL_OTHER", "passed")
            .args(["run", "--json", "--no-tty"])
            .args(flags)
            .args([
                "--",
                "sh",
                "-c",
                "echo ${REAL_TOKEN:-absent} $REAL_OTHER $API_TOKEN",
            ])
            .output()
            .unwrap()
    };
    let out = go(&[]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("s3cr3t-value"), "{text}");
    let words: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(words[..2], ["absent", "passed"], "{text}");
    let placeholder = words[2].to_string();
    assert!(placeholder.contains("API_TOKEN"), "{text}");
    // The same placeholder when the session is resumed, a different one in a
    // new session.
    let id = summary(&out)["session"].as_str().unwrap().to_string();
    let again = go(&["--session", &id]);
    assert!(String::from_utf8_lossy(&again.stdout).contains(&placeholder));
    let other = go(&[]);
    assert!(!String::from_utf8_lossy(&other.stdout).contains(&placeholder));
}

#[test]
fn sandbox_ready_records_the_isolation_in_force() {
    let Some(env) = env() else { return };
    let out = run(&env, &[], "true");
    let id = summary(&out)["session"].as_str().unwrap().to_string();
    let ev = events(&env, &id);
    let ready = ev
        .iter()
        .find(|e| e["kind"] == "sandbox.ready")
        .expect("sandbox.ready");
    if common::gvisor() {
        // No Landlock under gVisor: the sentry is the boundary, and the platform
        // it runs on is recorded.
        assert_eq!(ready["data"]["backend"], "gvisor", "{ready}");
        assert!(ready["data"]["platform"].is_string(), "{ready}");
        return;
    }
    assert!(
        ["full", "partial"].contains(&ready["data"]["landlock"].as_str().unwrap()),
        "{ready}"
    );
}
