//! `cordon mcp flags` end to end: a real flag server (`cordon flags serve`), the real
//! MCP server, and a real MCP client — the official Python SDK (`mcp`, pinned in
//! `tests/mcp/requirements.txt`, installed by `scripts/sdk-deps`) — over stdio and
//! over streamable HTTP. What the tools did is checked through the admin API (the
//! `cordon flags` CLI), not through the tools themselves.
//!
//! The last test is the intended deployment: the MCP server holds only an agent
//! token, production is protected, and the agent's proposals wait for a human.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{Value, json};

const ADMIN: &str = "*:*.mcp-test-admin-secret-0123456789";
const TOOLS: &[&str] = &[
    "create_flag",
    "get_flag_state",
    "list_flags",
    "evaluate",
    "set_rollout",
    "request_enable",
    "kill_flag",
    "wrap_change",
    "cleanup_flag",
];

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `cordon flags serve` on a fresh SQLite database; its URL.
fn flag_server(dir: &tempfile::TempDir) -> (Killed, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cordon"))
        .args(["flags", "serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(dir.path().join("flags.db"))
        .env("CORDON_FLAGS_INIT_ADMIN_TOKEN", ADMIN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = wait_for(&mut child, "serving on ");
    (Killed(child), url)
}

/// Read the child's stderr up to a line containing `marker`; the word after it.
/// Keeps draining stderr afterwards so the child never blocks on a full pipe.
fn wait_for(child: &mut Child, marker: &str) -> String {
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let found = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("the process exited before printing {marker:?}"))
            .unwrap();
        if let Some(rest) = line.split(marker).nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    found
}

/// `cordon flags ARGS` against the server as admin, answer as JSON.
fn admin(url: &str, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_cordon"))
        .arg("flags")
        .args(args)
        .env("CORDON_FLAGS_URL", url)
        .env("CORDON_FLAGS_TOKEN", ADMIN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cordon flags {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if args.contains(&"--json") {
        serde_json::from_slice(&out.stdout).unwrap()
    } else {
        Value::Null
    }
}

fn enabled_in(url: &str, flag: &str, env: &str) -> bool {
    let shown = admin(url, &["show", flag, "--json"]);
    let envs = shown["environments"]
        .as_array()
        .unwrap_or_else(|| panic!("no environments in {shown}"));
    envs.iter()
        .find(|e| e["name"] == env)
        .unwrap_or_else(|| panic!("{env} missing in {shown}"))["enabled"]
        == true
}

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("CORDON_MCP_PYTHON") {
        return p.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/.venv/bin/python");
    assert!(
        venv.exists(),
        "the MCP Python SDK is not installed at {}: run scripts/sdk-deps (or set CORDON_MCP_PYTHON)",
        venv.display()
    );
    venv
}

/// The Python MCP client, connected.
struct Client {
    _child: Killed,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Client {
    fn start(args: &[String]) -> Client {
        let driver = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/driver.py");
        let mut child = Command::new(python())
            .arg(driver)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut c = Client {
            _child: Killed(child),
            stdin,
            stdout,
        };
        let started = c.read();
        assert_eq!(started["event"], "started", "{started}");
        c
    }

    /// Over stdio: the client launches `cordon mcp flags` itself.
    fn stdio(flags_url: &str, token: &str) -> Client {
        Client::start(&[
            "stdio".into(),
            env!("CARGO_BIN_EXE_cordon").into(),
            "--".into(),
            "mcp".into(),
            "flags".into(),
            "--url".into(),
            flags_url.into(),
            "--token".into(),
            token.into(),
        ])
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "the MCP client driver exited");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    fn ask(&mut self, cmd: Value) -> Value {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.read()
    }

    /// A tool call that must succeed; its structured result.
    fn call(&mut self, tool: &str, arguments: Value) -> Value {
        let r = self.ask(json!({"cmd": "call", "tool": tool, "arguments": arguments}));
        assert!(
            r["ok"] == true && r["isError"] == false,
            "{tool} {arguments} failed: {r}"
        );
        r["structured"].clone()
    }
}

/// Start `cordon mcp flags --listen 127.0.0.1:0`; the process and its /mcp URL.
fn http_server(flags_url: &str, token: &str) -> (Killed, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cordon"))
        .args(["mcp", "flags", "--listen", "127.0.0.1:0"])
        .env("CORDON_FLAGS_URL", flags_url)
        .env("CORDON_FLAGS_TOKEN", token)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = wait_for(&mut child, "listening on ");
    (Killed(child), format!("http://{addr}/mcp"))
}

/// Everything a user of the tools would notice, through one connected client.
fn exercise(c: &mut Client, url: &str, flag: &str) {
    // tools/list: every tool, described, with an object schema.
    let listed = c.ask(json!({"cmd": "list_tools"}));
    let tools = listed["tools"].as_array().unwrap();
    for name in TOOLS {
        let t = tools
            .iter()
            .find(|t| t["name"] == *name)
            .unwrap_or_else(|| panic!("{name} not listed: {listed}"));
        assert!(t["description"].as_str().unwrap().len() > 30, "{t}");
        assert_eq!(t["inputSchema"]["type"], "object", "{t}");
        assert!(t["inputSchema"]["properties"].is_object(), "{t}");
    }
    let create = tools.iter().find(|t| t["name"] == "create_flag").unwrap();
    assert_eq!(create["inputSchema"]["required"], json!(["name"]));
    let rollout = tools.iter().find(|t| t["name"] == "set_rollout").unwrap();
    assert!(rollout["inputSchema"]["properties"]["percentage"].is_object());

    // create_flag: the flag exists on the server, off everywhere.
    let created = c.call(
        "create_flag",
        json!({"name": flag, "description": "made by an agent"}),
    );
    assert_eq!(created["created"]["name"], flag);
    let shown = admin(url, &["show", flag, "--json"]);
    assert_eq!(shown["description"], "made by an agent");
    assert!(!enabled_in(url, flag, "development") && !enabled_in(url, flag, "production"));

    // get_flag_state: per environment, not protected on this server.
    let state = c.call("get_flag_state", json!({"name": flag}));
    let envs = state["environments"].as_array().unwrap();
    assert_eq!(envs.len(), 2, "{state}");
    assert!(
        envs.iter()
            .all(|e| e["enabled"] == false && e["protected"] == false),
        "{state}"
    );

    // list_flags lists it.
    let listed = c.call("list_flags", json!({}));
    assert!(
        listed["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == flag),
        "{listed}"
    );

    // evaluate explains the failing constraint.
    admin(
        url,
        &[
            "strategy",
            "add",
            flag,
            "--env",
            "development",
            "--constraint",
            r#"{"contextName":"region","operator":"IN","values":["eu"]}"#,
        ],
    );
    admin(url, &["enable", flag, "--env", "development"]);
    let ctx = |region: &str| json!({"userId": "u1", "properties": {"region": region}});
    let out = c.call(
        "evaluate",
        json!({"flag": flag, "environment": "development", "context": ctx("us")}),
    );
    assert_eq!(out["enabled"], false, "{out}");
    assert_eq!(out["enabledInEnvironment"], true, "{out}");
    let s = &out["strategies"][0];
    assert_eq!(s["failedConstraints"][0]["contextName"], "region", "{out}");
    assert!(s["why"].as_str().unwrap().contains("region IN"), "{out}");
    assert!(
        out["why"].as_str().unwrap().contains("no strategy matched"),
        "{out}"
    );
    let out = c.call(
        "evaluate",
        json!({"flag": flag, "environment": "development", "context": ctx("eu")}),
    );
    assert_eq!(out["enabled"], true, "{out}");
    assert_eq!(out["matchedStrategy"]["name"], "default", "{out}");

    // set_rollout adds a flexibleRollout, then replaces it.
    let strategies = || -> Vec<Value> {
        admin(
            url,
            &["strategy", "list", flag, "--env", "production", "--json"],
        )
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] == "flexibleRollout")
        .cloned()
        .collect()
    };
    let out = c.call(
        "set_rollout",
        json!({"flag": flag, "environment": "production", "percentage": 30}),
    );
    assert_eq!(out["outcome"], "added", "{out}");
    let rollouts = strategies();
    assert_eq!(rollouts.len(), 1);
    assert_eq!(rollouts[0]["parameters"]["rollout"], "30");
    assert_eq!(rollouts[0]["parameters"]["groupId"], flag);
    let out = c.call(
        "set_rollout",
        json!({"flag": flag, "environment": "production", "percentage": 60, "stickiness": "userId"}),
    );
    assert_eq!(out["outcome"], "updated", "{out}");
    let rollouts = strategies();
    assert_eq!(rollouts.len(), 1);
    assert_eq!(rollouts[0]["parameters"]["rollout"], "60");
    assert_eq!(rollouts[0]["parameters"]["stickiness"], "userId");

    // request_enable in an unprotected environment switches it on directly.
    let out = c.call(
        "request_enable",
        json!({"flag": flag, "environment": "production", "reason": "tests pass"}),
    );
    assert_eq!(out["outcome"], "enabled", "{out}");
    assert!(enabled_in(url, flag, "production"));

    // kill_flag without an environment: off everywhere.
    let out = c.call("kill_flag", json!({"flag": flag}));
    assert_eq!(out["environments"], json!(["development", "production"]));
    assert!(!enabled_in(url, flag, "development") && !enabled_in(url, flag, "production"));

    // wrap_change picks the language from the path.
    let out = c.call(
        "wrap_change",
        json!({"flag": flag, "path": "app/pay.py", "code": "charge()"}),
    );
    assert_eq!(out["language"], "python");
    assert!(
        out["guard"]
            .as_str()
            .unwrap()
            .contains(&format!("client.is_enabled(\"{flag}\"")),
        "{out}"
    );

    // Bad arguments are tool errors (as the MCP specification asks, so the model
    // can correct the call) with a message that says what to do.
    let bad = |c: &mut Client, tool: &str, arguments: Value, says: &str| {
        let r = c.ask(json!({"cmd": "call", "tool": tool, "arguments": arguments}));
        assert!(r["ok"] == true && r["isError"] == true, "{tool}: {r}");
        let text = r["text"].as_str().unwrap();
        assert!(text.contains(says) && !text.contains('\n'), "{tool}: {r}");
    };
    bad(
        c,
        "set_rollout",
        json!({"flag": flag, "environment": "production", "percentage": 150}),
        "percentage 150 is outside 0-100",
    );
    bad(
        c,
        "create_flag",
        json!({"description": "x"}),
        "missing field `name`",
    );
    bad(
        c,
        "wrap_change",
        json!({"flag": flag, "language": "cobol"}),
        "use one of: typescript, javascript, python, go, rust, java",
    );
    bad(
        c,
        "create_flag",
        json!({"name": "no spaces"}),
        "not a valid name",
    );
    // An unknown tool is a protocol error.
    let r = c.ask(json!({"cmd": "call", "tool": "approve_everything", "arguments": {}}));
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["code"], -32602, "{r}");
    // A refusal by the flag server is a tool error carrying the server's message.
    let r = c.ask(
        json!({"cmd": "call", "tool": "get_flag_state", "arguments": {"name": "no-such-flag"}}),
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["isError"], true, "{r}");
    assert!(r["text"].as_str().unwrap().contains("404"), "{r}");

    // cleanup_flag: reports, then archives only when asked.
    let out = c.call("cleanup_flag", json!({"flag": flag}));
    assert_eq!(out["archived"], false);
    assert!(
        out["guidance"].as_str().unwrap().contains("off everywhere"),
        "{out}"
    );
    admin(url, &["show", flag, "--json"]);
    let out = c.call("cleanup_flag", json!({"flag": flag, "archive": true}));
    assert_eq!(out["archived"], true, "{out}");
    let list = admin(url, &["list", "--json"]);
    assert!(
        !list["features"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == flag),
        "{list}"
    );
}

/// A wrong token: the tools answer with the server's refusal and what to fix.
fn check_bad_token(c: &mut Client) {
    let r = c.ask(json!({"cmd": "call", "tool": "list_flags", "arguments": {}}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["isError"], true, "{r}");
    let text = r["text"].as_str().unwrap();
    assert!(
        text.contains("401") && text.contains("invalid API token") && text.contains("--token"),
        "{text}"
    );
    assert!(!text.contains('\n'), "{text}");
}

const BAD_TOKEN: &str = "*:*.not-the-admin-secret-0123456789";

#[test]
fn mcp_flags_over_stdio_with_the_python_sdk() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, url) = flag_server(&dir);
    let mut c = Client::stdio(&url, ADMIN);
    exercise(&mut c, &url, "mcp-stdio");
    check_bad_token(&mut Client::stdio(&url, BAD_TOKEN));
}

#[test]
fn mcp_flags_over_streamable_http_with_the_python_sdk() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, url) = flag_server(&dir);
    let (_mcp, mcp_url) = http_server(&url, ADMIN);
    let mut c = Client::start(&["http".into(), mcp_url]);
    exercise(&mut c, &url, "mcp-http");
    let (_bad, bad_url) = http_server(&url, BAD_TOKEN);
    check_bad_token(&mut Client::start(&["http".into(), bad_url]));
}

/// `cordon flags ARGS` with `token` and `stdin`; whether it succeeded, and its stdout
/// and stderr.
fn flags_as(url: &str, token: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    let out = common::flags_with_stdin(url, token, args, stdin);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_agent_proposes_through_mcp_and_only_a_human_turns_production_on() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, url) = flag_server(&dir);
    admin(&url, &["cr", "config", "--env", "production"]);
    let (ok, bot, err) = flags_as(
        &url,
        ADMIN,
        &["agent", "create", "claude", "--session", "run-9"],
        "",
    );
    assert!(ok, "{err}");
    let (ok, _, err) = flags_as(
        &url,
        ADMIN,
        &[
            "user",
            "add",
            "ann",
            "--role",
            "approver",
            "--password-stdin",
        ],
        "ann-long-password\n",
    );
    assert!(ok, "{err}");
    let (ok, ann, err) = flags_as(&url, "-", &["login", "ann"], "ann-long-password\n");
    assert!(ok, "{err}");

    let mut c = Client::stdio(&url, &bot);
    c.call("create_flag", json!({"name": "agent-flag"}));
    assert!(!enabled_in(&url, "agent-flag", "production"));
    let state = c.call("get_flag_state", json!({"name": "agent-flag"}));
    let prod = state["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "production")
        .unwrap()
        .clone();
    assert_eq!(prod["protected"], true, "{state}");

    // Both proposals wait for review; nothing changed in production.
    let out = c.call(
        "request_enable",
        json!({"flag": "agent-flag", "environment": "production", "reason": "tests pass"}),
    );
    assert_eq!(out["outcome"], "change-request", "{out}");
    assert_eq!(out["changeRequest"]["state"], "In review", "{out}");
    let enable_id = out["changeRequest"]["id"].to_string();
    let out = c.call(
        "set_rollout",
        json!({"flag": "agent-flag", "environment": "production", "percentage": 10}),
    );
    assert_eq!(out["outcome"], "change-request", "{out}");
    assert!(!enabled_in(&url, "agent-flag", "production"));
    let listed = admin(&url, &["cr", "list", "--json"]);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["createdBy"]["username"] == "agent:claude"),
        "{listed}"
    );

    // The agent's token cannot approve or apply, with or without MCP.
    let (ok, _, err) = flags_as(&url, &bot, &["cr", "approve", &enable_id], "");
    assert!(!ok && err.contains("agent"), "{err}");
    // A human approves and applies.
    let (ok, _, err) = flags_as(&url, &ann, &["cr", "approve", &enable_id], "");
    assert!(ok, "{err}");
    let (ok, _, err) = flags_as(&url, &bot, &["cr", "apply", &enable_id], "");
    assert!(!ok, "the agent applied: {err}");
    let (ok, _, err) = flags_as(&url, &ann, &["cr", "apply", &enable_id], "");
    assert!(ok, "{err}");
    assert!(enabled_in(&url, "agent-flag", "production"));

    // The kill switch is the agent's too, at once.
    let out = c.call(
        "kill_flag",
        json!({"flag": "agent-flag", "environment": "production"}),
    );
    assert_eq!(out["outcome"], "off", "{out}");
    assert!(!enabled_in(&url, "agent-flag", "production"));
    // Archiving in a protected project is a proposal too.
    let out = c.call(
        "cleanup_flag",
        json!({"flag": "agent-flag", "archive": true}),
    );
    assert_eq!(out["archived"], false, "{out}");
    assert_eq!(out["changeRequest"]["outcome"], "change-request", "{out}");
    admin(&url, &["audit", "verify"]);
}
