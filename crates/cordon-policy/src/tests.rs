//! Tests of whole policy files: defaults, diagnostics and their positions,
//! cross-field checks, loading.

use std::time::Duration;

use crate::parse::{
    MOUNT_KEYS, NETWORK_KEYS, RULE_KEYS, SANDBOX_KEYS, SECRET_KEYS, TOP_KEYS, WORKSPACE_KEYS,
};
use crate::*;

/// `(line, column)` of every diagnostic, in order.
fn positions(d: &Diagnostics) -> Vec<(usize, usize)> {
    d.iter().map(|d| (d.line, d.column)).collect()
}

fn errors(text: &str) -> Diagnostics {
    match Policy::parse(text) {
        Ok(p) => panic!("expected errors, parsed {p:?}"),
        Err(d) => d,
    }
}

/// Asserts there is exactly one diagnostic, at `pos`, containing every one of `needles`.
fn one_error(text: &str, pos: (usize, usize), needles: &[&str]) {
    let d = errors(text);
    assert_eq!(positions(&d), vec![pos], "{d}");
    for n in needles {
        assert!(d.0[0].message.contains(n), "{n:?} not in {d}");
    }
}

/// The default file with every setting line (`#key`, `#[table]`) uncommented.
fn uncommented_default() -> String {
    DEFAULT_POLICY_TOML
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if !rest.is_empty() && !rest.starts_with(' ') => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn default_toml_is_the_default_policy() {
    assert_eq!(Policy::parse(DEFAULT_POLICY_TOML), Ok(Policy::default()));
    assert_eq!(Policy::parse(""), Ok(Policy::default()));
}

#[test]
fn default_toml_examples_are_valid_and_cover_every_key() {
    let text = uncommented_default();
    let p = Policy::parse(&text).unwrap_or_else(|d| panic!("{d}\n---\n{text}"));
    assert_ne!(p, Policy::default());
    assert_eq!(p.sandbox.memory, Some(4 << 30));
    assert_eq!(p.sandbox.timeout, Some(Duration::from_secs(7200)));
    assert_eq!(p.sandbox.set_env.get("CI").map(String::as_str), Some("1"));
    assert_eq!(p.workspace.effective_read_only().len(), 7);
    assert_eq!(p.mounts.len(), 1);
    assert_eq!(p.network.allow.len(), 5);
    assert_eq!(p.network.passthrough[0].port, Some(5432));
    assert_eq!(
        p.secrets["GITHUB_TOKEN"].from,
        SecretSource::Command("gh auth token".into())
    );
    assert_eq!(p.rules[0].action, RuleAction::Deny);
    assert_eq!(p.rules[0].max_body, Some(1 << 20));
    assert_eq!(p.rules[0].requests_per_minute, Some(60));
    assert_eq!(
        p.network.hosts["api.internal.test"].to_string(),
        "10.1.2.3:8443"
    );
    assert_eq!(p.network.max_request_body, 64 << 20);
    assert_eq!(p.network.requests_per_minute, Some(600));

    let root = toml_edit::Document::parse(text.as_str()).unwrap();
    let keys_of = |path: &[&str]| -> Vec<String> {
        let mut item = root.as_item();
        for k in path {
            item = &item[k];
        }
        let table = match item {
            toml_edit::Item::ArrayOfTables(a) => a.get(0).map(|t| t as &dyn toml_edit::TableLike),
            other => other.as_table_like(),
        };
        table
            .map(|t| t.iter().map(|(k, _)| k.to_string()).collect())
            .unwrap_or_default()
    };
    for (path, keys) in [
        (&[][..], TOP_KEYS),
        (&["sandbox"][..], SANDBOX_KEYS),
        (&["workspace"][..], WORKSPACE_KEYS),
        (&["mount"][..], MOUNT_KEYS),
        (&["network"][..], NETWORK_KEYS),
        (&["secrets", "GITHUB_TOKEN"][..], SECRET_KEYS),
        (&["rule"][..], RULE_KEYS),
    ] {
        let shown = keys_of(path);
        for k in keys {
            assert!(
                shown.iter().any(|s| s == k),
                "default policy does not show {path:?}.{k}"
            );
        }
    }
}

#[test]
fn every_error_in_a_file_is_reported_at_its_position() {
    let text = r#"[sandbox]
memroy = "2G"
memory = "12X"
timeout = "soon"

[network]
allow = ["github.com", "bad host", 7]
colour = 1
on_unknown = "maybe"
"#;
    let d = errors(text);
    assert_eq!(
        positions(&d),
        vec![(2, 1), (3, 10), (4, 11), (7, 24), (7, 36), (8, 1), (9, 14)],
        "{d}"
    );
    let m: Vec<&str> = d.iter().map(|d| d.message.as_str()).collect();
    assert!(m[0].contains("unknown key `memroy` in [sandbox] (did you mean `memory`?)"));
    assert!(m[0].contains("valid keys are: backend, timeout, memory"));
    assert!(m[1].starts_with("sandbox.memory: invalid size \"12X\""));
    assert!(m[2].starts_with("sandbox.timeout: invalid duration \"soon\""));
    assert!(m[3].contains("invalid host pattern \"bad host\""));
    assert!(m[4].contains("must be a string, not an integer"));
    assert!(m[5].contains("unknown key `colour` in [network]"));
    assert!(m[6].contains("\"deny\" or \"ask\", not \"maybe\""));
    assert_eq!(
        d.to_string().lines().next(),
        Some(format!("2:1: {}", m[0]).as_str())
    );
}

#[test]
fn unknown_keys_at_every_level() {
    let text = r#"version = 1
[sandbox]
cpu = 2
[workspace]
paths = "."
[[mount]]
sorce = "/x"
[network]
allows = []
[secrets.TOKEN]
from = "env:TOKEN"
hosts = ["example.com"]
inject = ["basic"]
ttl_seconds = 5
[[rule]]
host = "example.com"
action = "deny"
verb = "GET"
"#;
    let d = errors(text);
    assert_eq!(
        positions(&d),
        vec![
            (1, 1),
            (3, 1),
            (5, 1),
            (6, 1),
            (7, 1),
            (9, 1),
            (14, 1),
            (18, 1)
        ],
        "{d}"
    );
    let m: Vec<&str> = d.iter().map(|d| d.message.as_str()).collect();
    assert!(m[0].contains("unknown key `version` in the top level"));
    assert!(m[0].contains("sandbox, workspace, mount, network, secrets, rule"));
    assert!(m[1].contains("(did you mean `cpus`?)"));
    assert!(m[2].contains("in [workspace] (did you mean `path`?)"));
    assert!(m[3].contains("[[mount]] needs `source`"));
    assert!(m[4].contains("unknown key `sorce` in [[mount]] (did you mean `source`?)"));
    assert!(m[5].contains("(did you mean `allow`?)"));
    assert!(m[6].contains("in [secrets.TOKEN]"));
    assert!(m[7].contains("unknown key `verb` in [[rule]]"));
    assert!(m[7].contains("host, methods, path, action"));
}

#[test]
fn wrong_types_name_what_was_expected() {
    let text = "sandbox = 3\n[network]\nallow = \"github.com\"\nask_timeout = true\n";
    let d = errors(text);
    assert_eq!(positions(&d), vec![(1, 11), (3, 9), (4, 15)], "{d}");
    assert!(d.0[0].message.contains("sandbox must be a table"));
    assert!(
        d.0[1]
            .message
            .contains("network.allow must be an array of strings")
    );
    assert!(d.0[2].message.contains("must be a duration"));

    one_error(
        "[sandbox]\nmemory = true\n",
        (2, 10),
        &["must be a size", "not a boolean"],
    );
    one_error("[sandbox]\ncpus = \"two\"\n", (2, 8), &["number of cores"]);
    one_error("[sandbox]\npids = 0\n", (2, 8), &["at least 1"]);
    one_error(
        "[sandbox]\nenv = [\"*\"]\n",
        (2, 8),
        &["whole host environment"],
    );
    one_error(
        "[sandbox]\nbackend = \"docker\"\n",
        (2, 11),
        &["native, gvisor, microvm, wasm"],
    );
    one_error("[sandbox]\nhostname = \"a_b\"\n", (2, 12), &["hostname"]);
    one_error(
        "[sandbox.set_env]\n1X = \"y\"\n",
        (2, 1),
        &["not an environment variable name"],
    );
    one_error("[sandbox.set_env]\nX = 1\n", (2, 5), &["must be a string"]);
    one_error("mount = 1\n", (1, 9), &["[[mount]] sections"]);
}

#[test]
fn sizes_durations_and_limits() {
    let p = Policy::parse(
        "[sandbox]\nmemory = \"512M\"\ndisk_quota = 1024\noutput_limit = \"1GB\"\ntimeout = 90\ncpus = 0.5\n\
         [network]\nask_timeout = \"2m\"\n",
    )
    .unwrap();
    assert_eq!(p.sandbox.memory, Some(512 << 20));
    assert_eq!(p.sandbox.disk_quota, Some(1024));
    assert_eq!(p.sandbox.output_limit, Some(1_000_000_000));
    assert_eq!(p.sandbox.timeout, Some(Duration::from_secs(90)));
    assert_eq!(p.sandbox.cpus, Some(0.5));
    assert_eq!(p.network.ask_timeout, Duration::from_secs(120));

    one_error(
        "[sandbox]\nmemory = 0\n",
        (2, 10),
        &["greater than zero", "no limit"],
    );
    one_error("[sandbox]\nmemory = -5\n", (2, 10), &["negative"]);
    one_error("[sandbox]\ncpus = 2000\n", (2, 8), &["at most 1024"]);
    one_error("[sandbox]\ncpus = 0\n", (2, 8), &["greater than 0"]);
    one_error(
        "[sandbox]\ntimeout = \"500ms\"\n",
        (2, 11),
        &["whole seconds"],
    );
    one_error(
        "[network]\nask_timeout = 0\n",
        (2, 15),
        &["greater than zero"],
    );
}

#[test]
fn network_lists() {
    let p = Policy::parse(
        "[network]\nallow = [\"GitHub.com\", \"*.npmjs.org:443\"]\npassthrough = [\"db:5432\"]\n\
         allow_private = [\"10.0.0.0/8\", \"fd00::/8\"]\non_unknown = \"ask\"\n",
    )
    .unwrap();
    assert_eq!(p.network.allow[0].host, "github.com");
    assert!(p.network.allow[1].matches("registry.npmjs.org", 443));
    assert_eq!(p.network.on_unknown, OnUnknown::Ask);
    assert_eq!(p.network.allow_private.len(), 2);

    one_error(
        "[network]\npassthrough = [\"db\"]\n",
        (2, 16),
        &["needs a port"],
    );
    one_error(
        "[network]\nallow_private = [\"10.1.0.0/8\"]\n",
        (2, 18),
        &["did you mean \"10.0.0.0/8\""],
    );
    one_error(
        "[network]\ndeny = [\"https://x.com\"]\n",
        (2, 9),
        &["not a URL"],
    );
}

#[test]
fn workspace_patterns_and_path() {
    let p = Policy::parse(
        "[workspace]\npath = \"..\"\nwritable = [\".envrc\"]\nhidden = [\"secrets/**\"]\n",
    )
    .unwrap();
    assert_eq!(
        p.workspace.resolve_path(std::path::Path::new("/repo/sub")),
        Some("/repo/sub/..".into())
    );
    assert_eq!(p.workspace.effective_hidden(), vec!["secrets/**"]);
    assert!(!p.workspace.effective_read_only().contains(&".envrc"));

    one_error(
        "[workspace]\nhidden = [\"/etc/passwd\"]\n",
        (2, 11),
        &["relative to the workspace root"],
    );
    one_error(
        "[workspace]\nread_only = [\"../x\"]\n",
        (2, 14),
        &["outside the workspace"],
    );
    one_error("[workspace]\npath = \"\"\n", (2, 8), &["directory path"]);
    one_error(
        "[workspace]\npath = \"~/src/app\"\n",
        (2, 8),
        &["~ is not expanded"],
    );
}

#[test]
fn mounts() {
    let p = Policy::parse(
        "[[mount]]\nsource = \"/opt/sdk\"\n[[mount]]\nsource = \"/data\"\ntarget = \"/mnt/data\"\nwritable = true\noptional = true\n",
    )
    .unwrap();
    assert_eq!(p.mounts.len(), 2);
    assert_eq!(p.mounts[0].target_path(), std::path::Path::new("/opt/sdk"));
    assert!(!p.mounts[0].writable && !p.mounts[0].optional);
    assert!(p.mounts[1].writable && p.mounts[1].optional);

    one_error(
        "[[mount]]\nsource = \"relative/dir\"\n",
        (2, 10),
        &["must be an absolute path"],
    );
    one_error(
        "[[mount]]\nsource = \"~/.cargo\"\n",
        (2, 10),
        &["~ is not expanded"],
    );
    one_error("[[mount]]\nsource = \"/a/../b\"\n", (2, 10), &[".."]);
    one_error(
        "[[mount]]\nsource = \"/a\"\ntarget = \"b\"\n",
        (3, 10),
        &["absolute"],
    );
    one_error(
        "[[mount]]\nsource = \"/a\"\ntarget = \"/\"\n",
        (3, 10),
        &["root"],
    );
    one_error(
        "[[mount]]\nsource = \"/a\"\nwritable = \"yes\"\n",
        (3, 12),
        &["true or false"],
    );
    one_error(
        "[[mount]]\nsource = \"/a\"\n[[mount]]\nsource = \"/b\"\ntarget = \"/a\"\n",
        (3, 1),
        &["another mount already has the target /a"],
    );
    // Inline arrays of tables work too.
    let p = Policy::parse("mount = [{ source = \"/x\" }, { source = \"/y\", writable = true }]\n")
        .unwrap();
    assert_eq!(p.mounts.len(), 2);
    one_error(
        "mount = [{ source = \"/x\" }, \"/y\"]\n",
        (1, 29),
        &["must be a table"],
    );
}

const GOOD_SECRET: &str = r#"[secrets.GITHUB_TOKEN]
from = "env:GH_TOKEN"
hosts = ["api.github.com"]
inject = ["header:Authorization", "query:access_token", "basic"]
"#;

#[test]
fn secrets_parse() {
    let p = Policy::parse(GOOD_SECRET).unwrap();
    let s = &p.secrets["GITHUB_TOKEN"];
    assert_eq!(s.from, SecretSource::Env("GH_TOKEN".into()));
    assert_eq!(
        s.inject,
        vec![
            Injection::Header("authorization".into()),
            Injection::Query("access_token".into()),
            Injection::Basic
        ]
    );
    assert!(
        s.placeholder_or_default("GITHUB_TOKEN", b"n")
            .starts_with("cordon-placeholder-GITHUB_TOKEN-")
    );

    let p = Policy::parse(
        "[secrets.A]\nfrom = \"command:vault read -field=token x\"\nhosts = [\"a.com\"]\ninject = [\"basic\"]\nttl = \"15m\"\n\
         [secrets.B]\nfrom = \"file:~/.npmrc-token\"\nhosts = [\"registry.npmjs.org\"]\ninject = [\"header:x-token\"]\n\
         placeholder = \"npm-token-placeholder-0001\"\n",
    )
    .unwrap();
    assert_eq!(p.secrets["A"].ttl, Some(Duration::from_secs(900)));
    assert_eq!(
        p.secrets["B"].from,
        SecretSource::File("~/.npmrc-token".into())
    );
    assert_eq!(
        p.secrets["B"].placeholder_or_default("B", b"n"),
        "npm-token-placeholder-0001"
    );
}

#[test]
fn secrets_validation() {
    one_error(
        "[secrets.\"1BAD\"]\nfrom = \"env:X\"\nhosts = [\"a.com\"]\ninject = [\"basic\"]\n",
        (1, 10),
        &["environment variable name"],
    );
    one_error(
        "[secrets.T]\nfrom = \"env:X\"\nhosts = []\ninject = [\"basic\"]\n",
        (3, 9),
        &["hosts is empty"],
    );
    one_error(
        "[secrets.T]\nfrom = \"env:X\"\nhosts = [\"a.com\"]\ninject = []\n",
        (4, 10),
        &["inject is empty"],
    );
    one_error(
        "[secrets.T]\nhosts = [\"a.com\"]\ninject = [\"basic\"]\n",
        (1, 1),
        &["[secrets.T] needs `from`"],
    );
    one_error(
        "[secrets.T]\nfrom = \"vault:x\"\nhosts = [\"a.com\"]\ninject = [\"basic\"]\n",
        (2, 8),
        &["env:, file: or command:"],
    );
    one_error(
        "[secrets.T]\nfrom = \"file:relative\"\nhosts = [\"a.com\"]\ninject = [\"basic\"]\n",
        (2, 8),
        &["absolute path"],
    );
    one_error(
        "[secrets.T]\nfrom = \"env:X\"\nhosts = [\"a.com\"]\ninject = [\"basic\"]\nttl = \"1h\"\n",
        (5, 7),
        &["ttl only applies to secrets read with command:"],
    );
    one_error(
        "[secrets.T]\nfrom = \"env:X\"\nhosts = [\"a.com\"]\ninject = [\"header:host\"]\n",
        (4, 11),
        &["cannot carry a secret"],
    );
    one_error(
        "[secrets.T]\nfrom = \"env:X\"\nhosts = [\"a.com\"]\ninject = [\"cookie\"]\n",
        (4, 11),
        &["header:NAME, query:NAME or basic"],
    );
    one_error(
        "[secrets.T]\nfrom = \"env:X\"\nhosts = [\"a.com\"]\ninject = [\"basic\"]\nplaceholder = \"short\"\n",
        (5, 15),
        &["16 to 128 characters"],
    );
    one_error("secrets = [1]\n", (1, 11), &["secrets must be a table"]);
    one_error(
        "[secrets]\nT = \"env:X\"\n",
        (2, 5),
        &["secrets.T must be a table"],
    );

    // Everything missing at once: three diagnostics at the table header.
    let d = errors("[secrets.T]\n");
    assert_eq!(positions(&d), vec![(1, 1), (1, 1), (1, 1)], "{d}");
}

#[test]
fn secrets_cross_checks() {
    let text = format!(
        "[sandbox]\nenv = [\"TERM\", \"GITHUB_TOKEN\"]\n[sandbox.set_env]\nGITHUB_TOKEN = \"x\"\n{GOOD_SECRET}"
    );
    let d = errors(&text);
    assert_eq!(positions(&d), vec![(2, 16), (4, 1)], "{d}");
    assert!(d.0[0].message.contains("remove it from sandbox.env"));
    assert!(d.0[1].message.contains("also a secret's name"));

    let dup = "[secrets.A]\nfrom = \"env:A\"\nhosts = [\"a.com\"]\ninject = [\"basic\"]\nplaceholder = \"same-placeholder-000\"\n\
               [secrets.B]\nfrom = \"env:B\"\nhosts = [\"b.com\"]\ninject = [\"basic\"]\nplaceholder = \"same-placeholder-000\"\n";
    one_error(dup, (6, 10), &["secrets A and B have the same placeholder"]);
}

#[test]
fn rules() {
    let p = Policy::parse(
        "[[rule]]\nhost = \"api.github.com\"\nmethods = [\"delete\", \"PUT\"]\npath = \"/repos/*/hooks\"\naction = \"ask\"\n\
         [[rule]]\nhost = \"*.github.com\"\naction = \"allow\"\n",
    )
    .unwrap();
    assert_eq!(p.rules.len(), 2);
    assert_eq!(p.rules[0].methods, vec!["DELETE", "PUT"]);
    assert_eq!(p.rules[0].path.as_deref(), Some("/repos/*/hooks"));
    assert_eq!(p.rules[0].action, RuleAction::Ask);
    assert!(p.rules[1].methods.is_empty() && p.rules[1].path.is_none());

    one_error(
        "[[rule]]\nhost = \"a.com\"\nmethods = [\"FETCH\"]\naction = \"deny\"\n",
        (3, 12),
        &["not an HTTP method"],
    );
    one_error(
        "[[rule]]\nhost = \"a.com\"\npath = \"repos\"\naction = \"deny\"\n",
        (3, 8),
        &["starting with /"],
    );
    one_error(
        "[[rule]]\nhost = \"a.com\"\naction = \"block\"\n",
        (3, 10),
        &["\"allow\", \"deny\" or \"ask\""],
    );
    one_error(
        "[[rule]]\naction = \"deny\"\n",
        (1, 1),
        &["[[rule]] needs `host`"],
    );
    one_error(
        "[[rule]]\nhost = \"a.*.com\"\naction = \"deny\"\n",
        (2, 8),
        &["leftmost label"],
    );
}

#[test]
fn dotted_keys_and_inline_tables_get_positions() {
    one_error("sandbox.memory = \"lots\"\n", (1, 18), &["invalid size"]);
    one_error(
        "sandbox = { memroy = 1 }\n",
        (1, 13),
        &["unknown key `memroy`"],
    );
}

#[test]
fn toml_syntax_error_is_one_diagnostic_with_position() {
    let d = errors("[sandbox]\nmemory = \"2G\"\nenv = [\"A\",\n[network]\n");
    assert_eq!(d.len(), 1, "{d}");
    assert!(d.0[0].message.starts_with("TOML syntax error:"), "{d}");
    assert_eq!(d.0[0].line, 4, "{d}");

    let d = errors("[sandbox]\nmemory = \"1G\"\nmemory = \"2G\"\n");
    assert_eq!(d.len(), 1, "{d}");
    assert_eq!(d.0[0].line, 3, "{d}");
}

#[test]
fn oversize_input_is_refused() {
    let big = format!("# {}\n", "x".repeat(MAX_POLICY_BYTES));
    let d = errors(&big);
    assert_eq!(d.len(), 1);
    assert!(d.0[0].message.contains("1 MiB"), "{d}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.toml");
    std::fs::write(&path, &big).unwrap();
    match Policy::load(&path) {
        Err(Error::TooLarge { size, .. }) => assert_eq!(size, big.len() as u64),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // Exactly at the limit is fine (as far as size goes).
    let at_limit = format!("#{}\n", "x".repeat(MAX_POLICY_BYTES - 2));
    assert_eq!(at_limit.len(), MAX_POLICY_BYTES);
    std::fs::write(&path, &at_limit).unwrap();
    assert!(Policy::load(&path).is_ok());
}

#[test]
fn load_returns_exact_bytes_and_names_the_file_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cordon.toml");
    let text = "[network]\r\nallow = [\"github.com\"]  # CRLF, comment\r\n";
    std::fs::write(&path, text).unwrap();
    let (p, bytes) = Policy::load(&path).unwrap();
    assert_eq!(bytes, text.as_bytes());
    assert_eq!(p.network.allow.len(), 1);

    std::fs::write(&path, "[sandbox]\nmemory = \"x\"\nfoo = 1\n").unwrap();
    let err = Policy::load(&path).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("invalid {}:2:10: sandbox.memory", path.display())),
        "{msg}"
    );
    assert!(msg.contains("(and 1 more"), "{msg}");
    match err {
        Error::Invalid { diagnostics, .. } => {
            assert_eq!(positions(&diagnostics), vec![(2, 10), (3, 1)])
        }
        other => panic!("{other:?}"),
    }

    std::fs::write(&path, b"[sandbox]\nhostname = \"a\xffb\"\n").unwrap();
    match Policy::load(&path) {
        Err(Error::Invalid { diagnostics, .. }) => {
            assert_eq!(positions(&diagnostics), vec![(2, 14)]);
            assert!(diagnostics.0[0].message.contains("UTF-8"));
        }
        other => panic!("{other:?}"),
    }

    let missing = Policy::load(&dir.path().join("nope.toml")).unwrap_err();
    assert!(missing.is_not_found());
    assert!(missing.to_string().contains("nope.toml"));
}

#[test]
fn json_uses_the_file_names_and_units() {
    let p = Policy::parse(&uncommented_default()).unwrap();
    let v = serde_json::to_value(&p).unwrap();
    assert_eq!(v["sandbox"]["backend"], "native");
    assert_eq!(v["sandbox"]["timeout"], 7200);
    assert_eq!(v["sandbox"]["memory"], 4u64 << 30);
    assert_eq!(v["network"]["ask_timeout"], 60);
    assert_eq!(v["network"]["allow"][1], "*.github.com");
    assert_eq!(v["network"]["passthrough"][0], "db.internal:5432");
    assert_eq!(v["mount"][0]["source"], "/opt/android-sdk");
    assert_eq!(
        v["secrets"]["GITHUB_TOKEN"]["from"],
        "command:gh auth token"
    );
    assert_eq!(
        v["secrets"]["GITHUB_TOKEN"]["inject"][0],
        "header:authorization"
    );
    assert_eq!(v["rule"][0]["action"], "deny");
    let d = errors("foo = 1\n");
    assert_eq!(
        serde_json::to_value(&d).unwrap()[0],
        serde_json::json!({"line": 1, "column": 1, "message": d.0[0].message})
    );
}

#[test]
fn many_errors_on_one_long_line_are_all_reported_quickly() {
    let n = 50_000;
    let text = format!("[network]\nallow = [{}]\n", vec!["\"a b\""; n].join(","));
    let start = std::time::Instant::now();
    let d = errors(&text);
    assert_eq!(d.len(), n);
    // Entry i starts at column 10 + 6 * i.
    assert_eq!(positions(&d)[n - 1], (2, 10 + 6 * (n - 1)));
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn workspace_patterns_the_sandbox_would_ignore_are_errors() {
    for bad in ["secrets/", "./.env", "a//b", "config/./x"] {
        let text = format!("[workspace]\nhidden = [{bad:?}]\n");
        let err = Policy::parse(&text).expect_err(bad);
        assert_eq!(err.len(), 1, "{bad}: {err}");
        assert!(err.to_string().contains("empty or"), "{bad}: {err}");
    }
    assert!(Policy::parse("[workspace]\nhidden = [\"secrets\", \"config/*.key\"]\n").is_ok());
    let p =
        Policy::parse("[workspace]\nhidden = [\"**/.env\", \"keys/**\", \"a/**/b\"]\n").unwrap();
    assert_eq!(p.workspace.hidden, ["**/.env", "keys/**", "a/**/b"]);
    // The defaults hide dotenv files at any depth.
    assert_eq!(Policy::default().workspace.hidden, ["**/.env", "**/.env.*"]);
}

#[test]
fn network_hosts_and_rates_are_checked() {
    one_error(
        "[network]\nhosts = { \"api.test\" = \"localhost:80\" }\n",
        (2, 24),
        &["network.hosts.api.test", "not an address"],
    );
    one_error(
        "[network]\nhosts = { \"*.test\" = \"127.0.0.1\" }\n",
        (2, 11),
        &["one host name"],
    );
    one_error(
        "[network]\nrequests_per_minute = 0\n",
        (2, 23),
        &["at least 1"],
    );
    one_error(
        "[[rule]]\nhost = \"a.test\"\naction = \"allow\"\nmax_body = \"1Q\"\n",
        (4, 12),
        &["max_body"],
    );
    let p = Policy::parse(
        "[network]\nallow = [\"api.test\"]\nhosts = { \"API.test\" = \"[::1]:8443\", \"b.test\" = \"10.0.0.1\" }\n",
    )
    .unwrap();
    assert_eq!(p.network.hosts["api.test"].port, Some(8443));
    assert_eq!(p.network.hosts["b.test"].port, None);
}
