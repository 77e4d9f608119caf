//! The egress gateway end to end: real `cordon run` sessions on the native
//! backend whose only interface is the gateway, against upstream servers this
//! test starts on the host's loopback (their own CA, given to the gateway with
//! `upstream_ca`; names mapped with `[network.hosts]`).
//!
//! Real clients inside the sandbox: curl, Python (requests, ssl sockets, pip),
//! Node's fetch, git. The upstream records every request it receives, so the
//! tests see what really left the gateway, not only what the sandbox saw.

#[path = "../common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::prelude::*;
use common::Env;
use serde_json::Value;
use sha2::Digest;

/// The real value of the `API_TOKEN` secret: in cordon's environment only.
const REAL_TOKEN: &str = "real-token-4f9c2a7e51d0";
/// The real value of the `BASIC_CRED` secret (`user:password`).
const REAL_BASIC: &str = "alice:s3cret-pw-88a1";
/// Names the upstream answers for; all map to it.
const NAMES: &[&str] = &["api.test", "other.test", "git.test", "pypi.test"];

struct Net {
    env: Env,
    upstream: Child,
    /// Where the upstream records the requests it received (JSON lines).
    log: PathBuf,
    /// Files the upstream serves below /files/.
    root: PathBuf,
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = self.upstream.kill();
        let _ = self.upstream.wait();
    }
}

/// Certificates for the upstream: a CA and one leaf for every test name.
fn upstream_certs(dir: &Path, names: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "cordon test upstream CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
    let (ca_path, cert, key) = (
        dir.join("upstream-ca.pem"),
        dir.join("upstream-cert.pem"),
        dir.join("upstream-key.pem"),
    );
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    (ca_path, cert, key)
}

/// Starts the upstream and writes the policy; `extra` is appended to it.
fn setup(extra_names: &[&str], extra: &str) -> Option<Net> {
    let env = common::fuse_env(|base| {
        std::fs::write(base.join("a.txt"), "original\n").unwrap();
    })?;
    let dir = env.dir.path().to_path_buf();
    let mut names: Vec<&str> = NAMES.to_vec();
    names.extend_from_slice(extra_names);
    let (ca, cert, key) = upstream_certs(&dir, &names);
    let root = dir.join("upstream-root");
    std::fs::create_dir(&root).unwrap();
    let log = dir.join("upstream.jsonl");
    let mut upstream = Command::new("/usr/bin/python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/net/upstream.py"))
        .args([&cert, &key, &root, &log])
        .arg(REAL_TOKEN)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs the upstream server");
    let mut line = String::new();
    BufReader::new(upstream.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("upstream did not print its port: {line:?}"));
    let hosts: Vec<String> = names
        .iter()
        .map(|n| format!("\"{n}\" = \"127.0.0.1:{port}\""))
        .collect();
    let policy = format!(
        r#"
[network]
allow = ["api.test", "other.test", "git.test", "pypi.test"]
allow_private = ["127.0.0.0/8"]
upstream_ca = ["{ca}"]
hosts = {{ {hosts} }}

[secrets.API_TOKEN]
from = "env:CORDON_TEST_REAL_TOKEN"
hosts = ["api.test"]
inject = ["header:authorization", "header:x-api-key", "query:key"]

[secrets.BASIC_CRED]
from = "env:CORDON_TEST_REAL_BASIC"
hosts = ["api.test"]
inject = ["basic"]

# These tests send placeholders toward unbound hosts on purpose and check
# the gateway's answer; the monitor rule that ends the session for it is
# tested by placeholder_toward_an_unbound_host_kills_the_session.
[monitor]
disable = ["secret-to-unbound-host"]

[[rule]]
host = "api.test"
methods = ["DELETE"]
action = "deny"
{extra}
"#,
        ca = ca.display(),
        hosts = hosts.join(", "),
    );
    std::fs::write(env.base.join("cordon.toml"), policy).unwrap();
    Some(Net {
        env,
        upstream,
        log,
        root,
    })
}

impl Net {
    fn cmd(&self) -> Command {
        let mut c = self.env.cmd();
        c.current_dir(&self.env.base)
            .env("CORDON_TEST_REAL_TOKEN", REAL_TOKEN)
            .env("CORDON_TEST_REAL_BASIC", REAL_BASIC);
        c
    }

    /// Runs `script` with `sh -c` in a session; returns its output.
    fn run(&self, script: &str) -> Output {
        self.cmd()
            .args(["run", "--json", "--no-tty", "--", "sh", "-c", script])
            .output()
            .unwrap()
    }

    /// What the upstream received.
    fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn events(&self, id: &str) -> Vec<Value> {
        self.env
            .ok(&["log", id, "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn summary(out: &Output) -> Value {
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(|v| v["session"].is_string())
        })
        .unwrap_or_else(|| panic!("no JSON summary in:\n{err}"))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The agent's output, after checking that it exited 0.
fn agent_ok(out: &Output) -> String {
    let text = stdout(out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The value after `key=` on the line that starts with it.
fn field<'a>(text: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {key}= line in:\n{text}"))
}

fn kinds<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

fn sha256_hex(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn secrets_are_injected_in_flight_and_never_seen_inside() {
    let Some(net) = setup(&[], "") else { return };
    let out = net.run(
        r#"
echo "token=$API_TOKEN"
echo "echo=$(curl -sS --max-time 20 https://api.test/echo -H "Authorization: Bearer $API_TOKEN")"
echo "query=$(curl -sS --max-time 20 "https://api.test/echo?key=$API_TOKEN&x=1")"
echo "h2=$(curl -sS --http2 -o /dev/null -w '%{http_version}' --max-time 20 https://api.test/echo)"
echo "leak=$(curl -sS --max-time 20 -D - https://api.test/leak | tr -d '\r' | tr '\n' '|')"
echo "other=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 20 https://other.test/echo -H "Authorization: Bearer $API_TOKEN")"
echo "other_body=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 20 https://other.test/echo --data "t=$API_TOKEN")"
echo "delete=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 20 -X DELETE https://api.test/echo)"
echo "basic=$(python3 -c '
import base64, json, os, urllib.request
cred = base64.b64encode(os.environ["BASIC_CRED"].encode()).decode()
req = urllib.request.Request("https://api.test/echo", headers={"Authorization": "Basic " + cred})
print(json.load(urllib.request.urlopen(req, timeout=20))["auth_sha256"])
')"
"#,
    );
    let text = agent_ok(&out);
    assert!(
        !text.contains(REAL_TOKEN),
        "the real token reached the sandbox:\n{text}"
    );
    assert!(
        !text.contains("s3cret"),
        "the real password reached the sandbox:\n{text}"
    );
    let placeholder = field(&text, "token");
    assert!(
        placeholder.starts_with("cordon-placeholder-API_TOKEN-"),
        "{text}"
    );

    // Header injection: the upstream got the real value; the sandbox's copy of
    // the echo shows only the placeholder (scrubbed on the way back).
    let echo: Value = serde_json::from_str(field(&text, "echo")).unwrap();
    assert_eq!(
        echo["auth_sha256"],
        sha256_hex(&format!("Bearer {REAL_TOKEN}"))
    );
    assert_eq!(
        echo["headers"]["authorization"],
        format!("Bearer {placeholder}")
    );
    let received = net.received();
    assert!(
        received
            .iter()
            .any(|r| r["headers"]["authorization"] == format!("Bearer {REAL_TOKEN}")),
        "{received:?}"
    );
    // Query injection.
    assert!(
        received.iter().any(|r| r["path"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("key={REAL_TOKEN}"))),
        "{received:?}"
    );
    // Basic: the decoded user:password was the placeholder inside, the real
    // credential upstream.
    let basic = format!("Basic {}", BASE64_STANDARD.encode(REAL_BASIC));
    assert_eq!(field(&text, "basic"), sha256_hex(&basic), "{text}");
    // HTTP/2 between curl and the gateway (the upstream speaks HTTP/1.1).
    assert_eq!(field(&text, "h2"), "2", "{text}");
    // A real value in a response (body and header) is replaced by the placeholder.
    let leak = field(&text, "leak");
    assert!(
        leak.contains(&format!("the token is {placeholder}")),
        "{leak}"
    );
    assert!(
        leak.to_ascii_lowercase()
            .contains(&format!("x-echo-token: {placeholder}").to_ascii_lowercase()),
        "{leak}"
    );
    // The placeholder toward a host it is not bound to: blocked, in a header
    // and in a body; nothing reached the upstream for other.test.
    assert_eq!(field(&text, "other"), "403", "{text}");
    assert_eq!(field(&text, "other_body"), "403", "{text}");
    assert!(
        !received
            .iter()
            .any(|r| r["host"].as_str().unwrap_or("").starts_with("other.test")),
        "{received:?}"
    );
    // The request rule.
    assert_eq!(field(&text, "delete"), "403", "{text}");
    assert!(!received.iter().any(|r| r["method"] == "DELETE"));

    let s = summary(&out);
    let id = s["session"].as_str().unwrap();
    let events = net.events(id);
    let injected = kinds(&events, "secret.injected");
    assert!(
        injected.iter().any(|e| e["data"]["name"] == "API_TOKEN")
            && injected.iter().any(|e| e["data"]["name"] == "BASIC_CRED"),
        "{injected:?}"
    );
    let blocked = kinds(&events, "secret.blocked");
    assert!(
        blocked.len() >= 2 && blocked.iter().all(|e| e["data"]["name"] == "API_TOKEN"),
        "{blocked:?}"
    );
    let log_text =
        std::fs::read_to_string(net.env.home.join("sessions").join(id).join("events.jsonl"))
            .unwrap();
    assert!(!log_text.contains(REAL_TOKEN), "a secret value was logged");
    let requests = kinds(&events, "net.request");
    assert!(
        requests
            .iter()
            .any(|e| e["data"]["host"] == "api.test" && e["data"]["status"] == 200),
        "{requests:?}"
    );
    assert!(
        s["network"]["secrets_injected"].as_u64().unwrap() >= 3,
        "{s}"
    );
    assert!(
        s["network"]["requests_blocked"].as_u64().unwrap() >= 3,
        "{s}"
    );
    // Every request the upstream answered is counted as allowed, and no other.
    assert_eq!(
        s["network"]["requests_allowed"].as_u64().unwrap() as usize,
        received.len(),
        "{s}"
    );
    let verify: Value =
        serde_json::from_str(&net.env.ok(&["audit", "verify", id, "--json"])).unwrap();
    assert_eq!(verify["ok"], true, "{verify}");
}

#[test]
fn placeholder_toward_an_unbound_host_kills_the_session() {
    let Some(net) = setup(&[], "") else { return };
    let policy_path = net.env.base.join("cordon.toml");
    let policy = std::fs::read_to_string(&policy_path).unwrap();
    let policy = policy.replace("disable = [\"secret-to-unbound-host\"]", "");
    std::fs::write(&policy_path, policy).unwrap();
    let out = net.run(
        r#"curl -sS -o /dev/null --max-time 20 https://other.test/echo -H "Authorization: Bearer $API_TOKEN"; sleep 10; echo survived"#,
    );
    assert!(!stdout(&out).contains("survived"), "{}", stdout(&out));
    assert_eq!(out.status.code(), Some(137));
    let s = summary(&out);
    assert_eq!(
        s["stopped"],
        "killed by monitor rule secret-to-unbound-host: a secret's placeholder was sent toward \
         a host the secret is not bound to"
    );
    let events = net.events(s["session"].as_str().unwrap());
    let blocked = kinds(&events, "secret.blocked");
    assert_eq!(blocked[0]["data"]["host"], "other.test", "{blocked:?}");
    let anomaly = kinds(&events, "anomaly")
        .into_iter()
        .find(|e| e["data"]["rule"] == "secret-to-unbound-host")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(anomaly["data"]["action"], "kill");
    assert_eq!(anomaly["data"]["event"]["seq"], blocked[0]["seq"]);
    assert!(
        !net.received()
            .iter()
            .any(|r| r["host"].as_str().unwrap_or("").starts_with("other.test"))
    );
}

#[test]
fn only_allowed_names_resolve_and_nothing_else_leaves() {
    let Some(net) = setup(&[], "") else { return };
    let out = net.run(
        r#"
echo "api=$(getent hosts api.test | cut -d' ' -f1)"
getent hosts evil.test >/dev/null; echo "evil_dns=$?"
curl -sS --max-time 5 https://evil.test/ >/dev/null 2>&1; echo "evil=$?"
curl -sS --max-time 5 http://1.1.1.1/ >/dev/null 2>&1; echo "direct=$?"
curl -sS --max-time 5 http://169.254.169.254/latest/meta-data/ >/dev/null 2>&1; echo "metadata=$?"
curl -sS --max-time 5 -6 'http://[2606:4700:4700::1111]/' >/dev/null 2>&1; echo "ipv6=$?"
echo "udp=$(python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(bytes.fromhex("123401000001000000000000076578616d706c6503636f6d0000010001"), ("8.8.8.8", 53))
try:
    s.recvfrom(512)
    print("answered")
except OSError as e:
    print("no-answer")
')"
echo "ip_route=$(ip route 2>/dev/null | head -1)"
"#,
    );
    let text = agent_ok(&out);
    let api: std::net::Ipv4Addr = field(&text, "api")
        .parse()
        .unwrap_or_else(|_| panic!("{text}"));
    // Allowed names resolve to the gateway's own addresses (198.18.0.0/15).
    assert_eq!(api.octets()[0], 198, "{text}");
    assert_ne!(field(&text, "evil_dns"), "0", "{text}");
    // curl: 6 = could not resolve; 7 = refused; 28 = timed out. Never 0.
    assert_eq!(field(&text, "evil"), "6", "{text}");
    for key in ["direct", "metadata", "ipv6"] {
        assert_ne!(field(&text, key), "0", "{key}: {text}");
    }
    for key in ["direct", "metadata"] {
        assert_eq!(
            field(&text, key),
            "7",
            "{key}: a direct IP is refused at once: {text}"
        );
    }
    assert_eq!(field(&text, "udp"), "no-answer", "{text}");

    let s = summary(&out);
    let events = net.events(s["session"].as_str().unwrap());
    let dns = kinds(&events, "net.dns");
    assert!(
        dns.iter()
            .any(|e| e["data"]["name"] == "evil.test" && e["data"]["answer"] == "nxdomain"),
        "{dns:?}"
    );
    let blocked = kinds(&events, "net.blocked");
    assert!(
        blocked.iter().any(|e| e["data"]["dst"]
            .as_str()
            .is_some_and(|d| d.starts_with("1.1.1.1"))),
        "{blocked:?}"
    );
    assert!(
        blocked.iter().any(|e| e["data"]["proto"] == "udp"),
        "{blocked:?}"
    );
    assert!(
        blocked.iter().any(|e| e["data"]["proto"] == "tcp"
            && e["data"]["dst"] == "169.254.169.254:80"
            && e["data"]["reason"] == "direct-ip"),
        "the metadata address: {blocked:?}"
    );
    assert!(net.received().is_empty(), "nothing may reach the upstream");
    // The summary counts every refusal, though no request was ever made:
    // the two direct IPs, evil.test's lookups, the UDP datagram.
    let n = &s["network"];
    assert_eq!(n["connections_blocked"], 2, "{s}");
    assert!(n["names_refused"].as_u64().unwrap() >= 2, "{s}");
    assert!(n["packets_refused"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(n["requests_allowed"], 0, "{s}");
    assert_eq!(n["requests_blocked"], 0, "{s}");
}

/// A bare repository served over dumb HTTP, and a PyPI simple index with one wheel.
fn publish_repo_and_wheel(net: &Net) {
    let git = |args: &[&str], dir: &Path| {
        let st = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .status()
            .unwrap();
        assert!(st.success(), "git {args:?}");
    };
    let src = net.env.dir.path().join("src-repo");
    std::fs::create_dir(&src).unwrap();
    git(&["init", "-q", "-b", "main"], &src);
    std::fs::write(src.join("README"), "cloned through the gateway\n").unwrap();
    git(&["add", "README"], &src);
    git(&["commit", "-q", "-m", "first"], &src);
    let bare = net.root.join("repo.git");
    git(
        &[
            "clone",
            "-q",
            "--bare",
            src.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
        net.env.dir.path(),
    );
    git(&["update-server-info"], &bare);

    let simple = net.root.join("simple").join("demo-pkg");
    std::fs::create_dir_all(&simple).unwrap();
    let wheel = "demo_pkg-1.0-py3-none-any.whl";
    let st = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            r#"
import sys, zipfile, hashlib, base64
path = sys.argv[1]
files = {
    "demo_pkg/__init__.py": b"VALUE = 'installed through the gateway'\n",
    "demo_pkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\n",
    "demo_pkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
for name, data in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record.append(f"{name},sha256={digest},{len(data)}")
record.append("demo_pkg-1.0.dist-info/RECORD,,")
files["demo_pkg-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
with zipfile.ZipFile(path, "w") as z:
    for name, data in files.items():
        z.writestr(name, data)
"#,
        )
        .arg(net.root.join(wheel))
        .status()
        .unwrap();
    assert!(st.success());
    let digest = sha256_hex_bytes(&std::fs::read(net.root.join(wheel)).unwrap());
    std::fs::write(
        simple.join("index.html"),
        format!(
            "<!DOCTYPE html><html><body><a href=\"../../{wheel}#sha256={digest}\">{wheel}</a></body></html>\n"
        ),
    )
    .unwrap();
}

fn sha256_hex_bytes(b: &[u8]) -> String {
    sha2::Sha256::digest(b)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn real_clients_work_without_proxy_settings() {
    let Some(net) = setup(&[], "") else { return };
    publish_repo_and_wheel(&net);
    let out = net.run(
        r#"
env | grep -i _proxy && echo "proxy variables set!"
cd /tmp
echo "requests=$(python3 -c '
import os, requests
r = requests.get("https://api.test/echo", headers={"Authorization": "Bearer " + os.environ["API_TOKEN"]}, timeout=20)
print(r.status_code, r.json()["auth_sha256"])
')"
echo "node=$(node -e '
fetch("https://api.test/echo", {headers: {"x-api-key": process.env.API_TOKEN}})
  .then(r => r.json()).then(j => console.log(j.method, j.headers["x-api-key"] === process.env.API_TOKEN))
  .catch(e => { console.log("error", e.cause ? e.cause.code : e.message); })
')"
git clone -q https://git.test/files/repo.git clone 2>&1
echo "git=$(cat clone/README 2>&1)"
python3 -m pip install -q --no-cache-dir --disable-pip-version-check --break-system-packages \
  --index-url https://pypi.test/files/simple/ --target /tmp/pkgs demo-pkg 2>&1 | tail -3
echo "pip=$(PYTHONPATH=/tmp/pkgs python3 -c 'import demo_pkg; print(demo_pkg.VALUE)' 2>&1)"
"#,
    );
    let text = agent_ok(&out);
    assert!(!text.contains("proxy variables set"), "{text}");
    assert_eq!(
        field(&text, "requests"),
        format!("200 {}", sha256_hex(&format!("Bearer {REAL_TOKEN}"))),
        "{text}"
    );
    // Node sent the placeholder in x-api-key; the upstream saw the real value,
    // and the echo came back scrubbed to the placeholder.
    assert_eq!(field(&text, "node"), "GET true", "{text}");
    assert!(
        net.received()
            .iter()
            .any(|r| r["headers"]["x-api-key"] == REAL_TOKEN),
        "{:?}",
        net.received()
    );
    assert_eq!(field(&text, "git"), "cloned through the gateway", "{text}");
    assert_eq!(
        field(&text, "pip"),
        "installed through the gateway",
        "{text}"
    );
}

#[test]
fn hostile_requests_are_refused_and_the_gateway_keeps_serving() {
    let Some(net) = setup(&[], "") else { return };
    let out = net.run(
        r#"
python3 - <<'EOF'
import json, socket, ssl, threading, time

ctx = ssl.create_default_context()
api = socket.gethostbyname("api.test")

def tls(sni="api.test"):
    s = socket.create_connection((api, 443), timeout=10)
    return ctx.wrap_socket(s, server_hostname=sni)

def status(raw, sni="api.test"):
    try:
        s = tls(sni)
        s.sendall(raw)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
        line = data.split(b"\r\n", 1)[0].decode(errors="replace")
        return line.split(" ")[1] if line.startswith("HTTP/") else "closed"
    except (OSError, ssl.SSLError) as e:
        return "error:" + type(e).__name__

results = {}
ok = b"GET /echo HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n"
results["normal"] = status(ok)
results["host_mismatch"] = status(b"GET /echo HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n")
results["absolute_other"] = status(b"GET https://other.test/echo HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
results["connect"] = status(b"CONNECT other.test:443 HTTP/1.1\r\nHost: other.test:443\r\n\r\n")
results["cl_te"] = status(b"POST /echo HTTP/1.1\r\nHost: api.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n")
results["two_cl"] = status(b"POST /echo HTTP/1.1\r\nHost: api.test\r\nContent-Length: 4\r\nContent-Length: 5\r\nConnection: close\r\n\r\nabcde")
# 90 headers of 1 KiB: each line and their number within what the upstream
# (Python's http.server) takes, the whole over the gateway's 64 KiB.
pad = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1024) for i in range(90))
results["huge_header"] = status(b"GET /huge HTTP/1.1\r\nHost: api.test\r\n" + pad + b"Connection: close\r\n\r\n")
results["sni_mismatch"] = status(ok, sni="other.test")

# Slowloris: connections that trickle their headers do not stop others.
def trickle():
    try:
        s = tls()
        s.sendall(b"GET /echo HTTP/1.1\r\n")
        for _ in range(8):
            s.sendall(b"X-Slow: 1\r\n")
            time.sleep(0.5)
    except (OSError, ssl.SSLError):
        pass
slow = [threading.Thread(target=trickle) for _ in range(20)]
for t in slow:
    t.start()
time.sleep(0.5)
t0 = time.time()
results["during_slowloris"] = status(ok)
results["during_slowloris_s"] = round(time.time() - t0, 2)
for t in slow:
    t.join()
results["after"] = status(ok)
print("results=" + json.dumps(results))
EOF
"#,
    );
    let text = agent_ok(&out);
    let r: Value = serde_json::from_str(field(&text, "results")).unwrap();
    assert_eq!(r["normal"], "200", "{r}");
    assert_eq!(r["host_mismatch"], "421", "{r}");
    for key in ["absolute_other", "connect", "cl_te", "two_cl"] {
        let v = r[key].as_str().unwrap();
        assert!(
            v.starts_with('4') || v == "closed" || v.starts_with("error:"),
            "{key} was not refused: {r}"
        );
    }
    assert_eq!(r["cl_te"], "400", "{r}");
    assert_eq!(r["huge_header"], "431", "{r}");
    let sni = r["sni_mismatch"].as_str().unwrap();
    assert!(
        sni.starts_with("error:") || sni == "closed" || sni.starts_with('4'),
        "{r}"
    );
    assert_eq!(r["during_slowloris"], "200", "{r}");
    assert!(r["during_slowloris_s"].as_f64().unwrap() < 5.0, "{r}");
    assert_eq!(r["after"], "200", "{r}");
    // Only the normal requests reached the upstream.
    let received = net.received();
    assert!(
        received
            .iter()
            .all(|x| x["host"] == "api.test" && x["method"] == "GET" && x["path"] == "/echo"),
        "{received:?}"
    );
    let events = net.events(summary(&out)["session"].as_str().unwrap());
    assert!(
        kinds(&events, "net.blocked")
            .iter()
            .any(|e| e["data"]["reason"] == "sni-mismatch"
                && e["data"]["host"] == "api.test"
                && e["data"]["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("other.test"))),
        "{events:?}"
    );
}

#[test]
fn server_sent_events_stream_through() {
    let Some(net) = setup(&[], "") else { return };
    let out = net.run(
        r#"
python3 - <<'EOF'
import http.client, ssl, time
c = http.client.HTTPSConnection("api.test", 443, context=ssl.create_default_context(), timeout=20)
c.request("GET", "/sse")
r = c.getresponse()
t0 = time.time()
arrivals = []
while len(arrivals) < 3:
    line = r.readline()
    if not line:
        break
    if line.startswith(b"data:"):
        arrivals.append(round(time.time() - t0, 3))
print("arrivals=" + ",".join(map(str, arrivals)))
EOF
"#,
    );
    let text = agent_ok(&out);
    let arrivals: Vec<f64> = field(&text, "arrivals")
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(arrivals.len(), 3, "{text}");
    // The upstream sends an event every 300 ms: buffered, they would arrive together.
    assert!(
        arrivals[2] - arrivals[0] > 0.4,
        "events were buffered: {arrivals:?}"
    );
}

fn pending(net: &Net) -> Vec<Value> {
    let out = net.cmd().args(["pending", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn wait_pending(net: &Net, host: &str, child: &mut Child) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(p) = pending(net).into_iter().find(|p| p["host"] == host) {
            return p;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("the session ended ({st}) before {host} was pending");
        }
        assert!(Instant::now() < deadline, "{host} never became pending");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ask_waits_for_a_human() {
    let Some(net) = setup(&["ask.test", "nope.test"], "") else {
        return;
    };
    // Unknown names are asked about instead of refused.
    let policy = std::fs::read_to_string(net.env.base.join("cordon.toml")).unwrap();
    std::fs::write(
        net.env.base.join("cordon.toml"),
        policy.replace(
            "allow_private = [",
            "on_unknown = \"ask\"\nask_timeout = \"60s\"\nallow_private = [",
        ),
    )
    .unwrap();
    let mut child = net
        .cmd()
        .args(["run", "--json", "--no-tty", "--", "sh", "-c"])
        .arg(
            r#"
echo "ask=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 50 https://ask.test/echo)"
curl -sS -o /dev/null --max-time 50 https://nope.test/echo; echo "nope=$?"
"#,
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let p = wait_pending(&net, "ask.test", &mut child);
    let session = p["session"].as_str().unwrap().to_string();
    let req = p["id"].as_u64().unwrap().to_string();
    // Text listing names it too.
    let listing = net.env.ok(&["pending"]);
    assert!(listing.contains("ask.test"), "{listing}");
    net.env.ok(&["approve", &session, &req]);
    let p = wait_pending(&net, "nope.test", &mut child);
    net.env
        .ok(&["deny", &session, &p["id"].as_u64().unwrap().to_string()]);
    // A decided request cannot be decided again.
    let again = net
        .env
        .run(&["approve", &session, &p["id"].as_u64().unwrap().to_string()]);
    assert!(!again.status.success());
    let out = child.wait_with_output().unwrap();
    let text = stdout(&out);
    assert_eq!(field(&text, "ask"), "200", "{text}");
    assert_ne!(field(&text, "nope"), "0", "{text}");
    let received = net.received();
    assert!(
        received.iter().any(|r| r["host"] == "ask.test"),
        "{received:?}"
    );
    assert!(
        !received.iter().any(|r| r["host"] == "nope.test"),
        "{received:?}"
    );
    let events = net.events(&session);
    assert!(kinds(&events, "net.pending").len() >= 2);
}

#[test]
fn the_gateway_works_rootless() {
    let Some(net) = setup(&[], "") else { return };
    let out = net
        .env
        .rootless(&[
            ("CORDON_TEST_REAL_TOKEN", REAL_TOKEN),
            ("CORDON_TEST_REAL_BASIC", REAL_BASIC),
        ])
        .args(["run", "--json", "--no-tty", "--", "sh", "-c"])
        .arg(
            r#"id -u
echo "echo=$(curl -sS --max-time 20 https://api.test/echo -H "Authorization: Bearer $API_TOKEN")""#,
        )
        .output()
        .unwrap();
    if common::gvisor() {
        // runsc --rootless has no network namespace to join: refused up front,
        // never run without the gateway's rules.
        assert_eq!(out.status.code(), Some(125), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("the gateway network needs root on the gvisor backend"),
            "{err}"
        );
        assert!(String::from_utf8_lossy(&out.stdout).is_empty(), "{out:?}");
        return;
    }
    let text = agent_ok(&out);
    assert!(!text.starts_with("0\n"), "ran as root: {text}");
    let echo: Value = serde_json::from_str(field(&text, "echo")).unwrap();
    assert_eq!(
        echo["auth_sha256"],
        sha256_hex(&format!("Bearer {REAL_TOKEN}"))
    );
    assert!(!text.contains(REAL_TOKEN));
}

/// A TCP echo server on the host's loopback; returns its port.
fn tcp_echo() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
            });
        }
    });
    port
}

#[test]
fn passthrough_carries_raw_tcp_only_where_listed() {
    let port = tcp_echo();
    let Some(net) = setup(&["echo.test"], "") else {
        return;
    };
    let policy = std::fs::read_to_string(net.env.base.join("cordon.toml")).unwrap();
    let policy = policy
        .replace(
            "allow_private = [",
            "passthrough = [\"echo.test:7000\"]\nallow_private = [",
        )
        .replace(
            "\"echo.test\" = \"127.0.0.1:",
            &format!("\"echo.test\" = \"127.0.0.1:{port}\", \"unused.test\" = \"127.0.0.1:"),
        );
    std::fs::write(net.env.base.join("cordon.toml"), policy).unwrap();
    let out = net.run(
        r#"
python3 - <<'EOF'
import socket
def exchange(host, port, data):
    try:
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return "echo" if got == data else "got %d bytes" % len(got)
    except OSError as e:
        return "error:" + type(e).__name__
big = bytes(range(256)) * 4096
print("passthrough=" + exchange("echo.test", 7000, big))
print("other_port=" + exchange("echo.test", 7001, b"\x00\x01binary protocol"))
print("not_http=" + exchange("api.test", 443, b"\x00\x01binary protocol\r\n\r\n"))
EOF
"#,
    );
    let text = agent_ok(&out);
    assert_eq!(field(&text, "passthrough"), "echo", "{text}");
    assert_ne!(field(&text, "other_port"), "echo", "{text}");
    assert_ne!(field(&text, "not_http"), "echo", "{text}");
    let s = summary(&out);
    let events = net.events(s["session"].as_str().unwrap());
    assert!(
        kinds(&events, "net.connect")
            .iter()
            .any(|e| e["data"]["mode"] == "passthrough" && e["data"]["host"] == "echo.test"),
        "{events:?}"
    );
    assert!(
        kinds(&events, "net.blocked")
            .iter()
            .any(|e| e["data"]["reason"] == "not-http"),
        "{events:?}"
    );
}

#[test]
fn echoed_basic_credentials_and_clear_text_http_do_not_reveal_secrets() {
    let Some(net) = setup(&[], "") else { return };
    let out = net.run(
        r#"
echo "basic=$(curl -sS --max-time 20 -u "$BASIC_CRED" https://api.test/echo | python3 -c '
import base64, json, sys
auth = json.load(sys.stdin)["headers"]["authorization"].split(" ", 1)[1]
text = auth.rstrip("=")
for skip in range(4):
    run = text[skip:]
    run = run[: len(run) - len(run) % 4]
    try:
        decoded = base64.b64decode(run)
    except Exception:
        continue
    if b"s3cret" in decoded or b"alice:" in decoded:
        print("revealed", decoded)
        break
else:
    print("hidden")
')"
echo "clear=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 20 http://api.test/echo -H "Authorization: Bearer $API_TOKEN")"
"#,
    );
    let text = agent_ok(&out);
    // The server echoed the Authorization header it got; its base64 held the
    // real user:password until the gateway scrubbed it.
    assert_eq!(field(&text, "basic"), "hidden", "{text}");
    assert!(
        net.received().iter().any(|r| r["headers"]["authorization"]
            == format!("Basic {}", BASE64_STANDARD.encode(format!("{REAL_BASIC}:")))),
        "the upstream got the real credentials: {:?}",
        net.received()
    );
    // Plain HTTP: the placeholder is refused rather than replaced by the
    // real value in clear text.
    assert_eq!(field(&text, "clear"), "403", "{text}");
    let s = summary(&out);
    let events = net.events(s["session"].as_str().unwrap());
    assert!(
        kinds(&events, "secret.blocked")
            .iter()
            .any(|e| e["data"]["name"] == "API_TOKEN" && e["data"]["host"] == "api.test"),
        "{events:?}"
    );
}

#[test]
fn deny_rules_cannot_be_dodged_by_how_servers_read_paths() {
    let extra = r#"
[[rule]]
host = "api.test"
path = "/admin/*/secret"
action = "deny"
"#;
    let Some(net) = setup(&[], extra) else { return };
    let out = net.run(
        r#"
for p in /admin/x/secret /admin/x/secret/ //admin/x/secret /Admin/x/SECRET '/admin/x/secret;v=1'; do
  echo "$p=$(curl -sS --path-as-is -o /dev/null -w '%{http_code}' --max-time 20 "https://api.test$p")"
done
echo "override=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 20 -X POST -H 'X-HTTP-Method-Override: DELETE' https://api.test/echo)"
echo "fine=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 20 https://api.test/admin/x/public)"
"#,
    );
    let text = agent_ok(&out);
    for key in [
        "/admin/x/secret",
        "/admin/x/secret/",
        "//admin/x/secret",
        "/Admin/x/SECRET",
        "/admin/x/secret;v=1",
        "override",
    ] {
        assert_eq!(field(&text, key), "403", "{key}: {text}");
    }
    assert_eq!(field(&text, "fine"), "404", "{text}");
    let received = net.received();
    assert!(
        received.iter().all(|r| r["path"] == "/admin/x/public"),
        "{received:?}"
    );
}
