//! The escape suite: attacks run inside `cordon run`, on the native backend or
//! (with `CORDON_BACKEND=gvisor`) on gVisor.
//!
//! Every test runs a real session (real namespaces, real FUSE workspace, real
//! seccomp and Landlock) with one attack from `attacks.py`, then asserts three
//! things: the attack reports `BLOCKED` and never `ESCAPED`; the host is
//! unchanged (the project directory's tree hash, and any host path the attack
//! aimed at); and the attack is visible in the session's event log — a
//! `syscall.denied` naming the refused call where seccomp stopped it, an
//! `fs.open` naming the path of a refused write (native), or at least the
//! `proc.exec` of the attacking process plus its `proc.exit`.

#[path = "../common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Output;

use common::{Env, tree_hash};
use serde_json::Value;

const ATTACKS: &str = include_str!("attacks.py");

/// The suite runs on the backend `CORDON_BACKEND` names (`scripts/test` runs it on
/// `native` and again on `gvisor`).
fn gvisor() -> bool {
    std::env::var("CORDON_BACKEND").as_deref() == Ok("gvisor")
}

struct Run {
    stdout: String,
    stderr: String,
    summary: Value,
    events: Vec<Value>,
    code: Option<i32>,
}

fn env() -> Option<Env> {
    common::fuse_env(|base| {
        std::fs::write(base.join("attacks.py"), ATTACKS).unwrap();
        std::fs::write(base.join("a.txt"), "original\n").unwrap();
        std::fs::write(base.join(".env"), "API_KEY=host-secret\n").unwrap();
        std::fs::create_dir_all(base.join(".git/hooks")).unwrap();
        std::fs::write(base.join(".git/config"), "[core]\n").unwrap();
        std::fs::write(base.join(".git/hooks/pre-commit.sample"), "#!/bin/sh\n").unwrap();
    })
}

fn parse(env: &Env, out: Output) -> Run {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let summary: Value = stderr
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON summary on stderr:\n{stderr}\nstdout:\n{stdout}"));
    let id = summary["session"].as_str().unwrap().to_string();
    let log = env.ok(&["log", &id, "--json"]);
    let events = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let verify = env.run(&["audit", "verify", &id]);
    assert!(verify.status.success(), "audit verify failed for {id}");
    Run {
        stdout,
        stderr,
        summary,
        events,
        code: out.status.code(),
    }
}

fn agent(env: &Env, flags: &[&str], attack: &str, args: &[&str]) -> Run {
    let mut cmd = env.cmd();
    cmd.current_dir(&env.base)
        .env("CORDON_CANARY_SECRET", "do-not-leak")
        .args(["run", "--json", "--no-tty"])
        .args(flags)
        .args(["--", "python3", "attacks.py", attack])
        .args(args);
    let out = cmd.output().unwrap();
    parse(env, out)
}

/// Calls the gVisor bundle leaves to the sentry (which refuses them for want of a
/// capability) rather than to its seccomp filter, so that its trace points see them.
const TRACED_ON_GVISOR: &[&str] = cordon_sandbox::gvisor::bundle::LEFT_TO_THE_SENTRY;

impl Run {
    /// The refused call is in the log: as `syscall.denied` on the native backend
    /// (its seccomp supervisor), as `proc.privilege` on gVisor for the calls its
    /// sentry refuses itself. The rest are refused on gVisor by the seccomp filter
    /// the sentry applies to the agent, which runs before gVisor's trace points, so
    /// no event can name them: there the attacking process's exec and exit
    /// (asserted for every attack) are what the log shows, and the attack's own
    /// report says the call failed.
    fn denied(&self, syscall: &str) -> bool {
        let kind = match gvisor() {
            false => "syscall.denied",
            true if TRACED_ON_GVISOR.contains(&syscall) => "proc.privilege",
            true => return self.has("proc.exec") && self.has("proc.exit"),
        };
        self.events
            .iter()
            .any(|e| e["kind"] == kind && e["data"]["syscall"] == syscall)
    }

    fn has(&self, kind: &str) -> bool {
        self.events.iter().any(|e| e["kind"] == kind)
    }

    fn exec_of(&self, attack: &str) -> bool {
        self.events.iter().any(|e| {
            e["kind"] == "proc.exec"
                && e["data"]["argv"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == attack))
        }) && self.has("proc.exit")
    }

    /// The write-open of `path` (absolute, or relative to the workspace) is
    /// in the log as `fs.open`, marked `outside` when it aimed outside every
    /// place the agent may write. Native only: the seccomp supervisor
    /// reports these; gVisor's trace points report opens by their own rules
    /// (gvisor.md), and there the exec is what the log is asserted to show.
    fn write_logged(&self, path: &str, outside: bool) -> bool {
        if gvisor() {
            return self.exec_of_anything();
        }
        let relative = format!("/{path}");
        self.events.iter().any(|e| {
            let d = &e["data"];
            e["kind"] == "fs.open"
                && d["write"] == true
                && (d["outside"] == true) == outside
                && d["path"].as_str().is_some_and(|p| {
                    p == path || (!path.starts_with('/') && p.ends_with(&relative))
                })
        })
    }

    fn exec_of_anything(&self) -> bool {
        self.has("proc.exec") && self.has("proc.exit")
    }

    fn assert_blocked(&self) {
        assert!(
            !self.stdout.contains("ESCAPED"),
            "attack escaped:\n{}\n{}",
            self.stdout,
            self.stderr
        );
        assert!(
            self.stdout.contains("BLOCKED"),
            "attack did not report:\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
    }
}

/// Runs `attack`, asserts it was blocked, the project is unchanged on the host,
/// and the log shows it: a `syscall.denied` for each of `syscalls`, else the
/// attacking process's exec.
fn attack(attack: &str, args: &[&str], syscalls: &[&str]) -> Option<Run> {
    let env = env()?;
    let before = tree_hash(&env.base);
    let run = agent(&env, &[], attack, args);
    run.assert_blocked();
    assert_eq!(
        tree_hash(&env.base),
        before,
        "the project changed on the host"
    );
    assert!(run.exec_of(attack), "no proc.exec/proc.exit for {attack}");
    for s in syscalls {
        assert!(
            run.denied(s),
            "no syscall.denied event for {s}: {:?}",
            run.events
        );
    }
    assert!(
        gvisor()
            || syscalls.is_empty()
            || run.summary["violations"].as_u64().unwrap() >= syscalls.len() as u64
    );
    Some(run)
}

#[test]
fn read_etc_shadow() {
    attack("read_shadow", &[], &[]);
}

#[test]
fn read_another_users_home() {
    let home = Path::new("/home/cordon-escape-victim");
    std::fs::create_dir_all(home).unwrap();
    std::fs::write(home.join("secret.txt"), "victim's secret").unwrap();
    attack(
        "read_other_home",
        &["/home/cordon-escape-victim/secret.txt"],
        &[],
    );
    let _ = std::fs::remove_dir_all(home);
}

#[test]
fn read_ssh_aws_and_config_of_the_host_home() {
    let Some(env) = env() else { return };
    let home = env.dir.path().join("userhome");
    for (rel, body) in [
        (".ssh/id_rsa", "PRIVATE KEY"),
        (".aws/credentials", "aws_secret"),
        (".config/gh/hosts.yml", "token"),
    ] {
        common::write(&home.join(rel), body.as_bytes());
    }
    let out = env
        .cmd()
        .current_dir(&env.base)
        .env("HOME", &home)
        .args(["run", "--json", "--no-tty", "--", "python3", "attacks.py"])
        .arg("read_host_home_secrets")
        .output()
        .unwrap();
    let run = parse(&env, out);
    run.assert_blocked();
    assert_eq!(run.stdout.matches("BLOCKED").count(), 3, "{}", run.stdout);
}

#[test]
fn write_outside_the_workspace() {
    let Some(run) = attack("write_outside", &[], &[]) else {
        return;
    };
    for p in [
        "/etc/cordon-pwned",
        "/usr/bin/cordon-pwned",
        "/cordon-pwned",
        "/var/cordon-pwned",
        "/opt/cordon-pwned",
    ] {
        assert!(!Path::new(p).exists(), "{p} was created on the host");
        assert!(run.write_logged(p, true), "no fs.open event for {p}");
    }
}

#[test]
fn write_next_to_the_project_on_the_host() {
    let Some(env) = env() else { return };
    let target = env.dir.path().join("sibling.txt");
    // The project's parent directories exist inside the sandbox only as empty
    // directories on its private tmpfs: a write there may "succeed" but lands
    // in memory that vanishes with the sandbox.
    let run = agent(
        &env,
        &[],
        "write_host_path_of_workspace_parent",
        &[target.to_str().unwrap()],
    );
    assert!(run.exec_of("write_host_path_of_workspace_parent"));
    assert!(
        !target.exists(),
        "the agent created a file next to the project on the host"
    );
}

#[test]
fn change_base_files_behind_the_overlay() {
    // Writes land in the workspace store; unmounting the overlay to reach the
    // real files underneath is refused.
    let Some(env) = env() else { return };
    let run = agent(&env, &[], "unmount_workspace", &[]);
    run.assert_blocked();
    assert!(run.denied("umount2"));
    let out = env
        .cmd()
        .current_dir(&env.base)
        .args([
            "run",
            "--json",
            "--no-tty",
            "--",
            "sh",
            "-c",
            "echo changed > a.txt; cat a.txt",
        ])
        .output()
        .unwrap();
    let r = parse(&env, out);
    assert_eq!(r.stdout, "changed\n");
    assert_eq!(
        std::fs::read_to_string(env.base.join("a.txt")).unwrap(),
        "original\n"
    );
    assert_eq!(r.summary["files_changed"], 1);
}

#[test]
fn see_host_processes() {
    attack(
        "see_host_processes",
        &[&std::process::id().to_string()],
        &[],
    );
}

#[test]
fn signal_host_processes() {
    attack(
        "signal_host_process",
        &[&std::process::id().to_string()],
        &[],
    );
}

#[test]
fn ptrace() {
    attack("ptrace", &[], &["ptrace"]);
}

#[test]
fn mount() {
    attack("mount", &[], &["mount"]);
}

#[test]
fn nested_user_namespace_by_unshare() {
    attack("nested_userns", &[], &["unshare"]);
}

#[test]
fn nested_user_namespace_by_clone() {
    attack("clone_newuser", &[], &["clone"]);
}

#[test]
fn setns() {
    attack("setns", &[], &["setns"]);
}

#[test]
fn module_load() {
    attack("module_load", &[], &["init_module", "finit_module"]);
}

#[test]
fn raw_socket() {
    attack("raw_socket", &[], &["socket"]);
}

#[test]
fn packet_socket() {
    attack("packet_socket", &[], &["socket"]);
}

#[test]
fn tcp_service_on_the_host_loopback() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    attack("host_loopback_tcp", &[&port], &[]);
    assert!(
        listener.accept().is_err(),
        "the host service got a connection"
    );
}

#[test]
fn no_route_to_the_internet() {
    attack("internet", &[], &[]);
}

#[test]
fn abstract_unix_socket_of_the_host() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("cordon-escape-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    attack("host_abstract_socket", &[&name], &[]);
    assert!(
        listener.accept().is_err(),
        "the host socket got a connection"
    );
}

#[test]
fn proc_sys_writes() {
    let before = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let run = attack("proc_sys_write", &[], &[]);
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        before
    );
    let Some(run) = run else { return };
    for p in ["/proc/sys/kernel/core_pattern", "/proc/sys/vm/drop_caches"] {
        assert!(run.write_logged(p, true), "no fs.open event for {p}");
    }
}

#[test]
fn sysrq_trigger() {
    attack("sysrq", &[], &[]);
}

#[test]
fn cgroup_release_agent() {
    let Some(run) = attack("cgroup_release_agent", &[], &["mount"]) else {
        return;
    };
    assert!(
        run.events.iter().any(|e| e["kind"] == "fs.open"
            && e["data"]["outside"] == true
            && e["data"]["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("/release_agent")))
            || gvisor(),
        "no fs.open event for a release_agent: {:?}",
        run.events
    );
}

#[test]
fn keyctl() {
    attack("keyctl", &[], &["keyctl", "add_key"]);
}

#[test]
fn bpf() {
    attack("bpf", &[], &["bpf"]);
}

#[test]
fn io_uring() {
    attack("io_uring", &[], &["io_uring_setup"]);
}

#[test]
fn mknod_devices() {
    attack("mknod", &[], &["mknodat"]);
}

#[test]
fn setuid_binaries_gain_nothing() {
    attack("setuid_binary", &[], &[]);
}

#[test]
fn tiocsti_and_tioclinux() {
    attack("tiocsti", &[], &["ioctl"]);
}

#[test]
fn open_by_handle_at() {
    attack("open_by_handle_at", &[], &["open_by_handle_at"]);
}

#[test]
fn perf_event_open() {
    attack("perf_event_open", &[], &["perf_event_open"]);
}

#[test]
fn kexec() {
    attack("kexec", &[], &["kexec_load"]);
}

#[test]
fn userfaultfd() {
    attack("userfaultfd", &[], &["userfaultfd"]);
}

#[test]
fn process_vm_readv() {
    attack("process_vm_readv", &[], &["process_vm_readv"]);
}

#[test]
fn chroot() {
    attack("chroot", &[], &["chroot"]);
}

#[test]
fn pivot_root() {
    attack("pivot_root", &[], &["pivot_root"]);
}

#[test]
fn proc_kcore() {
    attack("kcore", &[], &[]);
}

#[test]
fn minimal_dev() {
    attack("dev_disk", &[], &[]);
}

#[test]
fn host_environment_does_not_leak() {
    attack("host_env", &[], &[]);
}

/// Dotenv files the defaults hide (`**/.env`, `**/.env.*`): at the root and at
/// any depth.
const ENV_FILES: &[&str] = &[
    ".env",
    "services/api/.env",
    "services/api/.env.local",
    "a/b/c/d/.env.production",
];

#[test]
fn env_files_are_hidden() {
    // In a new session (patterns matched against the project) and again in
    // the resumed one (matched against the workspace's stored view).
    let Some(env) = env() else { return };
    for rel in ENV_FILES {
        let p = env.base.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "API_KEY=host-secret\n").unwrap();
    }
    std::fs::write(env.base.join("services/api/app.py"), "print('hi')\n").unwrap();
    let before = tree_hash(&env.base);
    let first = agent(&env, &[], "hidden_env_file", ENV_FILES);
    let id = first.summary["session"].as_str().unwrap().to_string();
    let resumed = agent(&env, &["--session", &id], "hidden_env_file", ENV_FILES);
    for run in [first, resumed] {
        run.assert_blocked();
        assert!(run.exec_of("hidden_env_file"), "{:?}", run.events);
        for rel in ENV_FILES {
            assert!(run.write_logged(rel, false), "no fs.open event for {rel}");
        }
        // Covered (an empty file natively, one that cannot be opened on
        // gVisor), not merely missing from the tree the agent was given.
        for rel in ENV_FILES {
            assert!(
                run.stdout
                    .contains(&format!("BLOCKED: {rel} holds 0 bytes"))
                    || run
                        .stdout
                        .contains(&format!("BLOCKED: {rel}: Permission denied")),
                "{rel}: {}",
                run.stdout
            );
        }
    }
    assert_eq!(
        tree_hash(&env.base),
        before,
        "the project changed on the host"
    );
}

#[test]
fn git_hooks_and_config_are_read_only() {
    // This test is about the read-only mounts: both writes must be tried and
    // refused, so the monitor rule that ends the session at the first one is
    // off here (tests/monitor.rs covers it).
    let Some(env) = env() else { return };
    std::fs::write(
        env.base.join("cordon.toml"),
        "[monitor]\ndisable = [\"git-hooks-write\"]\n",
    )
    .unwrap();
    let before = tree_hash(&env.base);
    let run = agent(&env, &[], "git_hooks", &[]);
    run.assert_blocked();
    assert_eq!(
        tree_hash(&env.base),
        before,
        "the project changed on the host"
    );
    assert!(
        run.exec_of("git_hooks"),
        "no proc.exec/proc.exit for git_hooks"
    );
    assert_eq!(run.stdout.matches("BLOCKED").count(), 2, "{}", run.stdout);
    for p in [".git/hooks/pre-commit", ".git/config"] {
        assert!(run.write_logged(p, false), "no fs.open event for {p}");
    }
}

#[test]
fn rename_race_against_protected_paths() {
    // Moving `.git` aside carries the read-only mount with it, so a new
    // `.git/hooks` can be planted in the workspace. It must never reach the
    // host: the diff shows it and `apply` refuses hook changes.
    let Some(env) = env() else { return };
    let run = agent(&env, &[], "rename_race_hooks", &[]);
    let id = run.summary["session"].as_str().unwrap();
    let out = env.run(&["apply", id]);
    assert!(!out.status.success(), "apply accepted a planted git hook");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(".git"), "{err}");
    assert!(!env.base.join(".git/hooks/pre-commit").exists());
    assert!(!env.base.join(".git-moved").exists());
}

#[test]
fn symlinks_out_of_the_workspace() {
    let Some(env) = env() else { return };
    let target = env.dir.path().join("host-target.txt");
    std::fs::write(&target, "host file\n").unwrap();
    // A link to /etc/shadow resolves inside the sandbox (where there is no
    // shadow file); a link to a host file next to the project resolves to the
    // sandbox's private, empty copy of that directory.
    let run = agent(&env, &[], "symlink_out", &[target.to_str().unwrap()]);
    assert!(
        run.stdout.contains("BLOCKED: read shadow-link"),
        "{}",
        run.stdout
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "host file\n");
    // The links themselves are workspace changes for review, pointing nowhere on apply.
    assert_eq!(run.summary["added"], 2, "{:?}", run.summary);
}

#[test]
fn fork_bomb() {
    let Some(env) = env() else { return };
    let run = agent(
        &env,
        &["--pids", "64", "--timeout", "20s"],
        "fork_bomb",
        &[],
    );
    run.assert_blocked();
    let hit: Vec<&str> = run.summary["limits_hit"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(hit.contains(&"pids"), "{:?} {}", run.summary, run.stderr);
    assert!(run.has("limit.pids"));
}

#[test]
fn memory_bomb() {
    let Some(env) = env() else { return };
    let run = agent(
        &env,
        &["--memory", "256M", "--timeout", "60s"],
        "memory_bomb",
        &[],
    );
    assert!(!run.stdout.contains("ESCAPED"), "{}", run.stdout);
    assert_eq!(run.code, Some(137), "{}", run.stderr);
    assert!(
        run.summary["limits_hit"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "memory"),
        "{:?}",
        run.summary
    );
    assert!(run.has("limit.memory"));
}

#[test]
fn disk_fill() {
    let Some(env) = env() else { return };
    let run = agent(&env, &["--disk-quota", "20M"], "disk_fill", &[]);
    run.assert_blocked();
    assert!(run.stdout.contains("quota"), "{}", run.stdout);
    assert!(run.has("limit.disk"));
}

#[test]
fn cpu_spin_past_the_timeout() {
    let Some(env) = env() else { return };
    let t = std::time::Instant::now();
    let run = agent(&env, &["--timeout", "2s"], "cpu_spin", &[]);
    assert!(t.elapsed() < std::time::Duration::from_secs(20));
    assert_eq!(run.code, Some(143), "{}", run.stderr);
    assert!(
        run.summary["stopped"]
            .as_str()
            .unwrap()
            .contains("timed out")
    );
    assert!(run.has("limit.timeout"));
}

#[test]
fn output_flood() {
    let Some(env) = env() else { return };
    let run = agent(&env, &["--output-limit", "100K"], "output_flood", &[]);
    assert!(
        run.stdout.len() <= 100 * 1024,
        "{} bytes got through",
        run.stdout.len()
    );
    assert!(!run.stdout.contains("ESCAPED"));
    assert!(run.has("limit.output"));
    assert_eq!(run.code, Some(137));
}

#[test]
fn inherited_descriptors_do_not_reach_the_agent() {
    // cordon started with descriptors 7 (a host file, for append) and 8 (a
    // host directory) open: the agent must hold neither.
    let Some(env) = env() else { return };
    let victim = env.dir.path().join("outside.txt");
    std::fs::write(&victim, "host\n").unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 7>>{v} 8</etc; exec {bin} run --json --no-tty -- python3 attacks.py inherited_fds",
            v = victim.display(),
            bin = env!("CARGO_BIN_EXE_cordon")
        ))
        .current_dir(&env.base)
        .env("CORDON_HOME", &env.home)
        .output()
        .unwrap();
    let run = parse(&env, out);
    run.assert_blocked();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host\n");
}

#[test]
fn vsock_is_refused() {
    attack("vsock", &[], &["socket"]);
}

#[test]
fn host_device_nodes_cannot_be_chmod() {
    use std::os::unix::fs::PermissionsExt;
    let before = std::fs::metadata("/dev/full").unwrap().permissions().mode();
    attack("dev_chmod", &[], &[]);
    assert_eq!(
        std::fs::metadata("/dev/full").unwrap().permissions().mode(),
        before
    );
}

#[test]
fn hidden_files_behind_a_symlink() {
    let Some(env) = env() else { return };
    std::fs::remove_file(env.base.join(".env")).unwrap();
    common::write(&env.base.join("config/app.env"), b"DB_PASSWORD=hunter2\n");
    std::os::unix::fs::symlink("config/app.env", env.base.join(".env")).unwrap();
    let run = agent(&env, &[], "hidden_through_symlink", &[]);
    run.assert_blocked();
    assert_eq!(run.stdout.matches("BLOCKED").count(), 3, "{}", run.stdout);
    assert!(
        run.write_logged("config/app.env", false),
        "no fs.open event for config/app.env: {:?}",
        run.events
    );
}

#[test]
fn mount_targets_through_workspace_symlinks_are_refused() {
    // A link planted in the project must not steer setup (which runs before
    // pivot_root) into creating files on the host.
    let Some(env) = env() else { return };
    let victim = env.dir.path().join("victim-dir");
    std::fs::create_dir(&victim).unwrap();
    std::os::unix::fs::symlink(&victim, env.base.join("build")).unwrap();
    let tool = env.dir.path().join("tool.cfg");
    std::fs::write(&tool, "x").unwrap();
    std::fs::write(
        env.base.join("cordon.toml"),
        format!(
            "[[mount]]\nsource = {:?}\ntarget = {:?}\n",
            tool.to_str().unwrap(),
            env.base.join("build/tool.cfg").to_str().unwrap()
        ),
    )
    .unwrap();
    let out = env
        .cmd()
        .current_dir(&env.base)
        .args(["run", "--no-tty", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(
        std::fs::read_dir(&victim).unwrap().count(),
        0,
        "setup wrote through the link"
    );
}

#[test]
fn root_only_files_in_etc_are_absent_or_empty() {
    // The agent of a root invoker is host uid 0 without capabilities: files only
    // root may read must not be readable in the sandbox. Root is needed (to
    // plant them, and to be that invoker), as for every FUSE test here: fail,
    // or skip saying so, the same way.
    if !common::require_fuse() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let top = Path::new("/etc/cordon-escape-private.key");
    let dir = Path::new("/etc/cordon-escape-dir");
    std::fs::write(top, "top secret").unwrap();
    std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("server.key"), "nested secret").unwrap();
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let result = std::panic::catch_unwind(|| {
        attack(
            "etc_private",
            &[
                "/etc/cordon-escape-private.key",
                "/etc/cordon-escape-dir/server.key",
            ],
            &[],
        )
        .map(|r| r.stdout)
    });
    let _ = std::fs::remove_file(top);
    let _ = std::fs::remove_dir_all(dir);
    let stdout = result
        .unwrap()
        .expect("FUSE was usable a moment ago but the attack was skipped");
    // Absent (top level) or empty (nested, masked): never the bytes.
    assert!(!stdout.contains("secret"), "{stdout}");
}

#[test]
fn odd_syscalls_are_refused() {
    attack(
        "odd_syscalls",
        &[],
        &["modify_ldt", "personality", "open_tree_attr"],
    );
}

#[test]
fn exec_events_are_bounded() {
    let Some(env) = env() else { return };
    let run = agent(&env, &[], "flood_exec_args", &[]);
    let found = run
        .events
        .iter()
        .find(|e| e["kind"] == "proc.exec" && e["data"]["path"] == "/bin/true");
    if gvisor() && found.is_none() {
        // 400 KB of arguments do not fit in gVisor's trace socket buffer: gVisor
        // drops that point, and the loss must be in the log, live and in the summary.
        assert!(run.has("trace.dropped"), "{:?}", run.events);
        assert!(run.summary["events_suppressed"].as_u64().unwrap() >= 1);
        return;
    }
    let exec = found.expect("exec of /bin/true logged");
    let argv = exec["data"]["argv"].as_array().unwrap();
    assert!(argv.len() <= 32, "{} arguments logged", argv.len());
    assert!(argv.iter().all(|a| a.as_str().unwrap().len() <= 256));
}
