//! End-to-end tests with the official Unleash SDKs: the Node SDK (npm `unleash-client`)
//! and the Python SDK (PyPI `UnleashClient`), each at the exact version pinned in
//! `tests/sdk/`, run as child processes against a real server. A small driver script
//! per SDK (`tests/sdk/node/driver.mjs`, `tests/sdk/python/driver.py`) turns JSON-line
//! commands on its stdin into SDK calls; `tests/sdk/README.md` describes that protocol.
//!
//! What a user would notice is asserted: that the SDKs evaluate the server's flags as
//! the server itself does (strategies, constraints, segments, variants), that their
//! metrics and registrations arrive, and how soon a kill reaches them, by polling and
//! by streaming.
//!
//! The SDKs are installed by `scripts/sdk-deps` (which `scripts/test` runs). A missing
//! SDK fails the test, saying so: these tests never skip. Overrides:
//! `CORDON_SDK_NODE` (the node binary), `CORDON_SDK_NODE_DIR` (a directory with
//! `driver.mjs` and `node_modules`), `CORDON_SDK_PYTHON` (an interpreter that has the
//! pinned `UnleashClient`).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::ADMIN;
use serde_json::{Value, json};
use tokio::sync::mpsc;

const BASE: &str = "/api/admin/projects/default/features";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Sdk {
    Node,
    Python,
}

fn sdk_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk")
}

const INSTALL_HINT: &str = "run scripts/sdk-deps (scripts/test runs it) to install the pinned SDKs";

impl Sdk {
    fn node_dir() -> PathBuf {
        std::env::var_os("CORDON_SDK_NODE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| sdk_dir().join("node"))
    }

    /// The `sdkVersion` the driver must report: what `tests/sdk/` pins.
    fn pinned(self) -> String {
        match self {
            Sdk::Node => {
                let path = sdk_dir().join("node/package.json");
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
                let manifest: Value = serde_json::from_str(&text).unwrap();
                let version = manifest["dependencies"]["unleash-client"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{} pins no unleash-client", path.display()));
                format!("unleash-node-sdk:{version}")
            }
            Sdk::Python => {
                let path = sdk_dir().join("python/requirements.txt");
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
                let version = text
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("UnleashClient=="))
                    .unwrap_or_else(|| panic!("{} pins no UnleashClient", path.display()));
                format!("unleash-python-sdk:{version}")
            }
        }
    }

    /// The driver's command line, after checking that the SDK is installed.
    fn command(self) -> Command {
        match self {
            Sdk::Node => {
                let dir = Self::node_dir();
                let installed = dir.join("node_modules/unleash-client/package.json");
                assert!(
                    installed.exists(),
                    "the Unleash Node SDK is not installed: {} is missing; {INSTALL_HINT} \
                     (or `npm ci` in {})",
                    installed.display(),
                    dir.display()
                );
                let node = std::env::var_os("CORDON_SDK_NODE").unwrap_or_else(|| "node".into());
                let mut c = Command::new(node);
                c.arg(dir.join("driver.mjs"));
                c
            }
            Sdk::Python => {
                let python = std::env::var_os("CORDON_SDK_PYTHON")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| sdk_dir().join("python/.venv/bin/python"));
                assert!(
                    python.exists(),
                    "the Unleash Python SDK is not installed: {} is missing; {INSTALL_HINT}",
                    python.display()
                );
                let mut c = Command::new(python);
                c.arg(sdk_dir().join("python/driver.py"));
                c
            }
        }
    }

    /// The shortest refresh interval the SDK takes: the Python SDK counts in seconds.
    fn fast_refresh_ms(self) -> u64 {
        match self {
            Sdk::Node => 200,
            Sdk::Python => 1000,
        }
    }
}

struct Options {
    mode: &'static str,
    refresh_ms: u64,
    metrics_ms: u64,
}

impl Options {
    fn polling(sdk: Sdk) -> Self {
        Options {
            mode: "polling",
            refresh_ms: sdk.fast_refresh_ms(),
            metrics_ms: 3_600_000,
        }
    }
}

/// One SDK driver process. Its stdout is read by a thread into a channel so that the
/// test can wait for an answer with a timeout; its stderr is kept to explain failures.
struct Driver {
    sdk: Sdk,
    app_name: String,
    instance_id: String,
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start(sdk: Sdk, server: &common::Server, token: &str, opts: Options) -> Driver {
        let tag = format!("{:?}-{}", sdk, opts.mode).to_lowercase();
        let app_name = format!("cordon-sdk-test-{tag}");
        let instance_id = format!("{tag}-{}", std::process::id());
        let mut cmd = sdk.command();
        cmd.args(["--url", &format!("http://{}/api", server.addr)])
            .args(["--token", token])
            .args(["--mode", opts.mode])
            .args(["--app-name", &app_name])
            .args(["--instance-id", &instance_id])
            .args(["--refresh-ms", &opts.refresh_ms.to_string()])
            .args(["--metrics-ms", &opts.metrics_ms.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("starting the {sdk:?} SDK driver ({cmd:?}) failed: {e}; {INSTALL_HINT}")
        });
        let stdin = child.stdin.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut d = Driver {
            sdk,
            app_name,
            instance_id,
            child,
            stdin,
            lines,
            stderr,
        };
        let hello = d.next_line(Duration::from_secs(30), "starting").await;
        assert_eq!(hello["event"], "started", "{hello}");
        let pinned = sdk.pinned();
        if hello["sdk"] != pinned.as_str() {
            d.fail(&format!(
                "the driver runs {} but tests/sdk pins {pinned}; {INSTALL_HINT}",
                hello["sdk"]
            ));
        }
        d
    }

    fn fail(&self, what: &str) -> ! {
        let stderr = self.stderr.lock().unwrap();
        let tail: String = {
            let start = stderr.len().saturating_sub(6000);
            let start = (start..stderr.len())
                .find(|&i| stderr.is_char_boundary(i))
                .unwrap_or(stderr.len());
            stderr[start..].to_owned()
        };
        panic!(
            "{:?} SDK: {what}\n--- driver stderr (tail) ---\n{tail}",
            self.sdk
        );
    }

    async fn next_line(&mut self, timeout: Duration, doing: &str) -> Value {
        match tokio::time::timeout(timeout, self.lines.recv()).await {
            Ok(Some(line)) => serde_json::from_str(&line)
                .unwrap_or_else(|e| self.fail(&format!("{doing}: not a JSON line ({e}): {line}"))),
            Ok(None) => {
                let status = self.child.wait().ok();
                self.fail(&format!("{doing}: the driver exited ({status:?})"))
            }
            Err(_) => self.fail(&format!("{doing}: no answer within {timeout:?}")),
        }
    }

    /// Sends one command and returns its answer, which may say `"ok": false`.
    async fn try_call(&mut self, cmd: Value) -> Value {
        let mut line = serde_json::to_vec(&cmd).unwrap();
        line.push(b'\n');
        if let Err(e) = self.stdin.write_all(&line).and_then(|_| self.stdin.flush()) {
            self.fail(&format!("sending {cmd}: {e}"));
        }
        let budget = cmd["timeout_ms"].as_u64().unwrap_or(0) + 15_000;
        self.next_line(Duration::from_millis(budget), &cmd.to_string())
            .await
    }

    async fn call(&mut self, cmd: Value) -> Value {
        let answer = self.try_call(cmd.clone()).await;
        if answer["ok"] != true {
            self.fail(&format!("{cmd} answered {answer}"));
        }
        answer
    }

    async fn ready(&mut self) -> Value {
        self.call(json!({"cmd": "ready", "timeout_ms": 10_000}))
            .await
    }

    async fn is_enabled(&mut self, flag: &str, context: &Value) -> bool {
        let a = self
            .call(json!({"cmd": "is_enabled", "flag": flag, "context": context}))
            .await;
        a["enabled"].as_bool().expect("enabled is a bool")
    }

    async fn get_variant(&mut self, flag: &str, context: &Value) -> Value {
        self.call(json!({"cmd": "get_variant", "flag": flag, "context": context}))
            .await["variant"]
            .take()
    }

    /// Waits until the SDK's answer for `flag` matches `expect` (`enabled` and/or
    /// `known`), without counting towards metrics; returns how long that took,
    /// measured from `since`, or fails after `limit`.
    async fn wait_for(
        &mut self,
        flag: &str,
        expect: Value,
        since: Instant,
        limit: Duration,
        what: &str,
    ) -> Duration {
        let mut cmd = json!({"cmd": "wait", "flag": flag, "context": {},
            "timeout_ms": limit.as_millis() as u64});
        for (k, v) in expect.as_object().unwrap() {
            cmd[k] = v.clone();
        }
        let a = self.call(cmd).await;
        let took = since.elapsed();
        if a["seen"] != true {
            self.fail(&format!(
                "{what}: {flag} still {a} after {took:?}, expected {expect}"
            ));
        }
        took
    }
}

/// Every kind of rule the SDKs must evaluate as the server means it.
fn flags() -> Value {
    json!({
        "version": 2,
        "features": [
            {"name": "sdk-on", "enabled": true,
             "strategies": [{"name": "default", "parameters": {}}]},
            {"name": "sdk-off", "enabled": false,
             "strategies": [{"name": "default", "parameters": {}}]},
            {"name": "sdk-users", "enabled": true,
             "strategies": [{"name": "userWithId", "parameters": {"userIds": "alice,bob"}}]},
            {"name": "sdk-rollout-none", "enabled": true,
             "strategies": [{"name": "flexibleRollout",
                 "parameters": {"rollout": "0", "stickiness": "default", "groupId": "sdk-rollout-none"}}]},
            {"name": "sdk-rollout-half", "enabled": true,
             "strategies": [{"name": "flexibleRollout",
                 "parameters": {"rollout": "50", "stickiness": "userId", "groupId": "sdk-rollout-half"}}]},
            {"name": "sdk-constrained", "enabled": true,
             "strategies": [{"name": "default", "parameters": {}, "constraints": [
                 {"contextName": "region", "operator": "IN", "values": ["eu", "uk"]},
                 {"contextName": "userId", "operator": "STR_STARTS_WITH", "values": ["staff-"]}
             ]}]},
            {"name": "sdk-segment", "enabled": true,
             "strategies": [{"name": "flexibleRollout",
                 "parameters": {"rollout": "100", "stickiness": "default", "groupId": "sdk-segment"},
                 "segments": [1]}]},
            {"name": "sdk-variant", "enabled": true,
             "strategies": [{"name": "default", "parameters": {}}],
             "variants": [
                 {"name": "blue", "weight": 500, "weightType": "variable", "stickiness": "userId",
                  "payload": {"type": "string", "value": "b"}},
                 {"name": "green", "weight": 500, "weightType": "variable", "stickiness": "userId",
                  "payload": {"type": "json", "value": "{\"g\":1}"},
                  "overrides": [{"contextName": "userId", "values": ["alice"]}]}
             ]}
        ],
        "segments": [{"id": 1, "constraints": [
            {"contextName": "plan", "operator": "IN", "values": ["pro"]}
        ]}]
    })
}

/// A server with [`flags`] in `development`, and a client token for it.
async fn server_with_flags() -> (common::Server, String) {
    let server = common::start().await;
    let r = server.import("development", &flags()).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let token = server
        .create_token("client", "default", "development")
        .await;
    (server, token)
}

/// The server's own answer for `flag` in `context`, through the frontend API:
/// whether it is enabled, and its variant.
async fn server_says(
    server: &common::Server,
    frontend: &str,
    flag: &str,
    context: &Value,
) -> (bool, Value) {
    let r = server
        .post_json("/api/frontend", frontend, &json!({"context": context}))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let toggles = r.json()["toggles"].as_array().unwrap().clone();
    match toggles.into_iter().find(|t| t["name"] == flag) {
        Some(t) => (t["enabled"] == true, t["variant"].clone()),
        None => (false, Value::Null),
    }
}

async fn evaluates_like_the_server(sdk: Sdk) {
    let (server, token) = server_with_flags().await;
    let frontend = server
        .create_token("frontend", "default", "development")
        .await;
    let mut d = Driver::start(sdk, &server, &token, Options::polling(sdk)).await;
    d.ready().await;

    let none = json!({});
    let user = |id: &str| json!({"userId": id});
    let table: Vec<(&str, Value, bool)> = vec![
        ("sdk-on", none.clone(), true),
        ("sdk-on", user("zed"), true),
        ("sdk-off", none.clone(), false),
        ("sdk-off", user("alice"), false),
        ("sdk-users", user("alice"), true),
        ("sdk-users", user("bob"), true),
        ("sdk-users", user("carol"), false),
        ("sdk-users", none.clone(), false),
        ("sdk-rollout-none", user("alice"), false),
        ("sdk-rollout-none", none.clone(), false),
        (
            "sdk-constrained",
            json!({"userId": "staff-1", "properties": {"region": "eu"}}),
            true,
        ),
        (
            "sdk-constrained",
            json!({"userId": "staff-2", "properties": {"region": "uk"}}),
            true,
        ),
        (
            "sdk-constrained",
            json!({"userId": "staff-1", "properties": {"region": "us"}}),
            false,
        ),
        (
            "sdk-constrained",
            json!({"userId": "guest", "properties": {"region": "eu"}}),
            false,
        ),
        ("sdk-constrained", none.clone(), false),
        ("sdk-segment", json!({"properties": {"plan": "pro"}}), true),
        (
            "sdk-segment",
            json!({"properties": {"plan": "free"}}),
            false,
        ),
        ("sdk-segment", none.clone(), false),
        ("sdk-never-created", user("alice"), false),
    ];
    let mut wrong = Vec::new();
    for (flag, context, expected) in &table {
        let got = d.is_enabled(flag, context).await;
        if got != *expected {
            wrong.push(format!(
                "{flag} {context}: SDK says {got}, expected {expected}"
            ));
        }
    }

    // A 50% rollout sticky on userId: the SDK splits users as the server does, and
    // really splits them.
    let mut enabled = 0;
    let mut colours = std::collections::BTreeMap::<String, u32>::new();
    for i in 0..100 {
        let ctx = user(&format!("user-{i}"));
        let got = d.is_enabled("sdk-rollout-half", &ctx).await;
        let (want, _) = server_says(&server, &frontend, "sdk-rollout-half", &ctx).await;
        if got != want {
            wrong.push(format!(
                "sdk-rollout-half {ctx}: SDK says {got}, server {want}"
            ));
        }
        enabled += u32::from(got);
        let v = d.get_variant("sdk-variant", &ctx).await;
        let (_, want) = server_says(&server, &frontend, "sdk-variant", &ctx).await;
        if v["name"] != want["name"] || v["payload"] != want["payload"] {
            wrong.push(format!("sdk-variant {ctx}: SDK says {v}, server {want}"));
        }
        *colours
            .entry(v["name"].as_str().unwrap_or("?").into())
            .or_default() += 1;
    }
    assert!(
        (25..=75).contains(&enabled),
        "{sdk:?}: a 50% rollout enabled {enabled} of 100 users"
    );
    assert_eq!(
        colours.keys().collect::<Vec<_>>(),
        ["blue", "green"],
        "{sdk:?}: two 50/50 variants gave {colours:?}"
    );

    let alice = d.get_variant("sdk-variant", &user("alice")).await;
    assert_eq!(alice["name"], "green", "{sdk:?}: the override for alice");
    assert_eq!(alice["enabled"], true);
    assert_eq!(alice["feature_enabled"], true);
    assert_eq!(
        alice["payload"],
        json!({"type": "json", "value": "{\"g\":1}"})
    );
    let off = d.get_variant("sdk-off", &user("alice")).await;
    assert_eq!(
        (&off["name"], &off["enabled"], &off["feature_enabled"]),
        (&json!("disabled"), &json!(false), &json!(false)),
        "{sdk:?}: variant of a disabled flag: {off}"
    );
    let plain = d.get_variant("sdk-on", &none).await;
    assert_eq!(
        (&plain["name"], &plain["enabled"], &plain["feature_enabled"]),
        (&json!("disabled"), &json!(false), &json!(true)),
        "{sdk:?}: variant of an enabled flag without variants: {plain}"
    );
    assert!(wrong.is_empty(), "{sdk:?} disagrees:\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn node_sdk_evaluates_every_strategy_like_the_server() {
    evaluates_like_the_server(Sdk::Node).await;
}

#[tokio::test]
async fn python_sdk_evaluates_every_strategy_like_the_server() {
    evaluates_like_the_server(Sdk::Python).await;
}

/// The host name the Node SDK matches `applicationHostname` against: `$HOSTNAME`, else
/// the kernel's, lower-cased (`unleash-client`'s `ApplicationHostnameStrategy`).
fn node_sdk_host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .expect("a host name")
        .trim()
        .to_lowercase()
}

/// `applicationHostname` is evaluated where the SDK runs, against the SDK's own host:
/// the server only has to store the strategy and serve its `hostNames` intact. A flag
/// listing this host (in upper case, among others) is on for the Node SDK here; one
/// listing only other hosts is off. (The pinned Python SDK is not checked: its engine,
/// yggdrasil-engine 2.0.0, is built without host-name support and answers false for
/// every `applicationHostname` strategy, so there is nothing of ours to observe.)
#[tokio::test]
async fn node_sdk_evaluates_application_hostname_against_its_own_host() {
    let host = node_sdk_host_name();
    let server = common::start().await;
    let hosts =
        |names: &str| json!([{"name": "applicationHostname", "parameters": {"hostNames": names}}]);
    let state = json!({"version": 2, "features": [
        {"name": "sdk-this-host", "enabled": true,
         "strategies": hosts(&format!("build-1.example, {}", host.to_uppercase()))},
        {"name": "sdk-other-hosts", "enabled": true,
         "strategies": hosts("build-1.example,build-2.example")}
    ]});
    let r = server.import("development", &state).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let token = server
        .create_token("client", "default", "development")
        .await;
    let mut d = Driver::start(Sdk::Node, &server, &token, Options::polling(Sdk::Node)).await;
    d.ready().await;
    assert!(
        d.is_enabled("sdk-this-host", &json!({})).await,
        "a flag for host {host:?} is on for an SDK running there"
    );
    assert!(
        !d.is_enabled("sdk-other-hosts", &json!({"userId": "alice"}))
            .await,
        "a flag for other hosts is off here"
    );
}

#[derive(Debug, Default, PartialEq, Clone)]
struct Counts {
    yes: u64,
    no: u64,
    variants: std::collections::BTreeMap<String, u64>,
}

/// What the metrics query endpoint has for `flag` from `app`, summed over its hourly
/// rows, and the environments those rows name.
async fn reported(server: &common::Server, flag: &str, app: &str) -> (Counts, Vec<String>) {
    let r = server
        .get(
            &format!("/api/admin/client-metrics/features/{flag}/raw"),
            ADMIN,
            &[],
        )
        .await;
    if r.status != 200 {
        return (Counts::default(), vec![format!("HTTP {}", r.status)]);
    }
    let body = r.json();
    assert_eq!(body["featureName"], flag, "{body}");
    let mut c = Counts::default();
    let mut envs = Vec::new();
    for row in body["data"].as_array().unwrap_or(&Vec::new()) {
        if row["appName"] != app {
            continue;
        }
        c.yes += row["yes"].as_u64().unwrap_or(0);
        c.no += row["no"].as_u64().unwrap_or(0);
        for (k, v) in row["variants"].as_object().into_iter().flatten() {
            *c.variants.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
        }
        envs.push(row["environment"].as_str().unwrap_or("?").to_owned());
    }
    (c, envs)
}

async fn metrics_and_registration_reach_the_server(sdk: Sdk) {
    let (server, token) = server_with_flags().await;
    let opts = Options {
        metrics_ms: if sdk == Sdk::Node { 500 } else { 1000 },
        ..Options::polling(sdk)
    };
    let metrics_ms = opts.metrics_ms;
    let mut d = Driver::start(sdk, &server, &token, opts).await;
    d.ready().await;

    // Tallied from what the SDK answered, so this checks the reporting, not the
    // evaluation (the test above does that).
    let mut expected = std::collections::BTreeMap::<&str, Counts>::new();
    let calls: [(&str, &str); 8] = [
        ("sdk-on", "a"),
        ("sdk-on", "b"),
        ("sdk-on", "c"),
        ("sdk-off", "a"),
        ("sdk-off", "b"),
        ("sdk-users", "alice"),
        ("sdk-users", "carol"),
        ("sdk-users", "dave"),
    ];
    for (flag, id) in calls {
        let on = d.is_enabled(flag, &json!({"userId": id})).await;
        let c = expected.entry(flag).or_default();
        if on { c.yes += 1 } else { c.no += 1 }
    }
    for _ in 0..2 {
        let v = d
            .get_variant("sdk-variant", &json!({"userId": "alice"}))
            .await;
        let c = expected.entry("sdk-variant").or_default();
        if v["feature_enabled"] == true {
            c.yes += 1
        } else {
            c.no += 1
        }
        *c.variants
            .entry(v["name"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(expected["sdk-on"].yes, 3);
    assert_eq!(expected["sdk-off"].no, 2);
    // The SDK sends on its own every metrics interval; a flush only hurries it.
    d.call(json!({"cmd": "flush_metrics"})).await;

    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = Vec::new();
    loop {
        last.clear();
        for (flag, want) in &expected {
            let (got, envs) = reported(&server, flag, &d.app_name).await;
            if got != *want || envs.iter().any(|e| e != "development") {
                last.push(format!(
                    "{flag}: server has {got:?} in {envs:?}, the SDK counted {want:?} in development"
                ));
            }
        }
        if last.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            d.fail(&format!(
                "metrics did not arrive within 15 s:\n{}",
                last.join("\n")
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Counted once: a few more send intervals add nothing.
    tokio::time::sleep(Duration::from_millis(3 * metrics_ms)).await;
    for (flag, want) in &expected {
        let (got, _) = reported(&server, flag, &d.app_name).await;
        assert_eq!(got, *want, "{sdk:?}: {flag} after more metric intervals");
    }

    let deadline = Instant::now() + Duration::from_secs(10);
    let instance = loop {
        let r = server
            .get("/api/admin/metrics/applications", ADMIN, &[])
            .await;
        let found = (r.status == 200).then(|| r.json()).and_then(|body| {
            body["applications"]
                .as_array()?
                .iter()
                .find(|a| a["appName"] == d.app_name.as_str())?["instances"]
                .as_array()?
                .iter()
                .find(|i| i["instanceId"] == d.instance_id.as_str())
                .cloned()
        });
        if let Some(i) = found {
            break i;
        }
        if Instant::now() > deadline {
            d.fail(&format!(
                "instance {} of {} is not in /api/admin/metrics/applications after 10 s \
                 (HTTP {}): {}",
                d.instance_id,
                d.app_name,
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(instance["sdkVersion"], sdk.pinned().as_str(), "{instance}");
    assert!(instance["lastSeen"].is_string(), "{instance}");
}

#[tokio::test]
async fn node_sdk_metrics_and_registration_reach_the_server() {
    metrics_and_registration_reach_the_server(Sdk::Node).await;
}

#[tokio::test]
async fn python_sdk_metrics_and_registration_reach_the_server() {
    metrics_and_registration_reach_the_server(Sdk::Python).await;
}

async fn switch(server: &common::Server, flag: &str, on: bool) {
    let path = format!(
        "{BASE}/{flag}/environments/development/{}",
        if on { "on" } else { "off" }
    );
    let r = server.post_json(&path, ADMIN, &json!({})).await;
    assert_eq!(
        r.status,
        200,
        "{path}: {}",
        String::from_utf8_lossy(&r.body)
    );
}

async fn polling_sees_a_kill(sdk: Sdk) {
    let (server, token) = server_with_flags().await;
    let opts = Options::polling(sdk);
    // One interval to the next poll, one more for a poll already in flight, and slack
    // for a loaded machine.
    let bound = Duration::from_millis(2 * opts.refresh_ms + 1500);
    let mut d = Driver::start(sdk, &server, &token, opts).await;
    d.ready().await;
    assert!(d.is_enabled("sdk-on", &json!({})).await);

    let t = Instant::now();
    switch(&server, "sdk-on", false).await;
    let took = d
        .wait_for("sdk-on", json!({"enabled": false}), t, bound, "kill")
        .await;
    eprintln!("{sdk:?} polling saw the kill after {took:?}");

    let t = Instant::now();
    switch(&server, "sdk-on", true).await;
    d.wait_for("sdk-on", json!({"enabled": true}), t, bound, "re-enable")
        .await;
}

#[tokio::test]
async fn node_sdk_polling_sees_a_kill_within_two_intervals() {
    polling_sees_a_kill(Sdk::Node).await;
}

#[tokio::test]
async fn python_sdk_polling_sees_a_kill_within_two_intervals() {
    polling_sees_a_kill(Sdk::Python).await;
}

/// With polling an hour apart, only the stream can bring a change within a second.
async fn streaming_delivers_changes(sdk: Sdk) {
    let (server, token) = server_with_flags().await;
    let opts = Options {
        mode: "streaming",
        refresh_ms: 3_600_000,
        metrics_ms: 3_600_000,
    };
    let bound = Duration::from_millis(1000);
    let mut d = Driver::start(sdk, &server, &token, opts).await;
    let ready = d
        .try_call(json!({"cmd": "ready", "timeout_ms": 10_000}))
        .await;
    if ready["ok"] != true || ready["mode"] != "streaming" {
        d.fail(&format!(
            "not synchronized through GET /api/client/streaming: {ready}"
        ));
    }
    assert!(d.is_enabled("sdk-on", &json!({})).await);
    assert!(
        d.is_enabled("sdk-segment", &json!({"properties": {"plan": "pro"}}))
            .await,
        "segments arrive with the hydration"
    );

    let t = Instant::now();
    switch(&server, "sdk-on", false).await;
    let took = d
        .wait_for("sdk-on", json!({"enabled": false}), t, bound, "kill")
        .await;
    eprintln!("{sdk:?} streaming saw the kill after {took:?}");
    let t = Instant::now();
    switch(&server, "sdk-on", true).await;
    d.wait_for("sdk-on", json!({"enabled": true}), t, bound, "re-enable")
        .await;

    // A flag created after the SDK connected arrives (dark), then turned on.
    let t = Instant::now();
    let r = server
        .post_json(BASE, ADMIN, &json!({"name": "sdk-late", "type": "release"}))
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    d.wait_for(
        "sdk-late",
        json!({"known": true, "enabled": false}),
        t,
        bound,
        "create",
    )
    .await;
    let t = Instant::now();
    switch(&server, "sdk-late", true).await;
    d.wait_for(
        "sdk-late",
        json!({"enabled": true}),
        t,
        bound,
        "enable new flag",
    )
    .await;

    // Archived: the SDK forgets it.
    let t = Instant::now();
    let r = server
        .request(
            "DELETE",
            &format!("{BASE}/sdk-late"),
            &[("Authorization", ADMIN)],
            None,
        )
        .await;
    assert!(r.status < 300, "{}", String::from_utf8_lossy(&r.body));
    d.wait_for("sdk-late", json!({"known": false}), t, bound, "archive")
        .await;

    let status = d.call(json!({"cmd": "status"})).await;
    assert_eq!(status["mode"], "streaming", "{status}");
}

#[tokio::test]
async fn node_sdk_streaming_delivers_changes_before_any_poll() {
    streaming_delivers_changes(Sdk::Node).await;
}

#[tokio::test]
async fn python_sdk_streaming_delivers_changes_before_any_poll() {
    streaming_delivers_changes(Sdk::Python).await;
}
