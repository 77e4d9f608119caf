//! A session's network: the gateway behind the sandbox's only interface.
//!
//! With an empty `[network]` (nothing allowed, nothing to ask about, no
//! passthrough) the sandbox has loopback only and no gateway runs. Otherwise
//! the session prepares the gateway before the sandbox starts (its CA must be
//! in the sandbox's trust stores), and attaches the interface the backend
//! hands out.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cordon_net::l7::{GatewayConfig, SecretConfig};
use cordon_policy::{OnUnknown, Policy};

use crate::session::{LogSink, SessionError};
use crate::spec::BindMount;

/// Where the sandbox finds the session CA alone (for `NODE_EXTRA_CA_CERTS`).
pub const CA_FILE: &str = "/etc/cordon/ca.pem";
/// The system bundle (Debian's path), replaced by the host's roots plus the
/// session CA.
pub const BUNDLE_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Largest host bundle copied into the sandbox's.
const MAX_HOST_BUNDLE: u64 = 8 << 20;
/// How long the CA of one run is valid when the policy sets no longer
/// timeout. Every run makes a new CA (its key never leaves memory), so it only
/// has to outlive the run.
const CA_VALIDITY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Whether the policy lets anything out at all.
pub fn enabled(policy: &Policy) -> bool {
    let n = &policy.network;
    !n.allow.is_empty() || !n.passthrough.is_empty() || n.on_unknown == OnUnknown::Ask
}

/// A prepared gateway and what the sandbox needs to use it.
pub struct SessionNet {
    pub prepared: cordon_net::attach::Prepared,
    /// `/etc/resolv.conf`, `/etc/hosts`, the CA and the bundle.
    pub mounts: Vec<BindMount>,
    /// Variables pointing TLS clients at the bundle or the CA.
    pub env: Vec<(String, String)>,
    /// How many gateway events were not written.
    pub budget: Arc<EventBudget>,
}

/// Makes the gateway for a session whose files live in `dir`.
pub fn prepare(
    policy: &Policy,
    policy_dir: &Path,
    session: &str,
    placeholder_nonce: &str,
    dir: &Path,
    sink: Arc<LogSink>,
) -> Result<SessionNet, SessionError> {
    let mut network = policy.network.clone();
    network.upstream_ca = network
        .upstream_ca
        .iter()
        .map(|p| {
            if let Ok(rest) = p.strip_prefix("~")
                && let Some(home) = std::env::var_os("HOME")
            {
                PathBuf::from(home).join(rest)
            } else {
                policy_dir.join(p)
            }
        })
        .collect();
    let secrets = policy
        .secrets
        .iter()
        .map(|(name, secret)| SecretConfig {
            name: name.clone(),
            placeholder: secret.placeholder_or_default(name, placeholder_nonce.as_bytes()),
            secret: secret.clone(),
        })
        .collect();
    let cfg = GatewayConfig {
        session: session.to_string(),
        network,
        rules: policy.rules.clone(),
        secrets,
        // A run limited to more than a day gets its timeout plus an hour.
        ca_validity: policy.sandbox.timeout.map_or(CA_VALIDITY, |t| {
            CA_VALIDITY.max(t + std::time::Duration::from_secs(3600))
        }),
        ..Default::default()
    };
    let budget = Arc::new(EventBudget::default());
    let emit: cordon_net::Emit = {
        let budget = budget.clone();
        Arc::new(move |kind, data| {
            if let Some(data) = budget.admit(data) {
                sink.append(kind, data);
            }
        })
    };
    let prepared = cordon_net::attach::prepare(cfg, emit)
        .map_err(|e| SessionError::Invalid(format!("network gateway: {e}")))?;

    let net_dir = dir.join("net");
    let write = |name: &str, text: &[u8]| -> Result<PathBuf, SessionError> {
        let path = net_dir.join(name);
        std::fs::write(&path, text)
            .map_err(|e| SessionError::Invalid(format!("cannot write {}: {e}", path.display())))?;
        Ok(path)
    };
    std::fs::create_dir_all(&net_dir)
        .map_err(|e| SessionError::Invalid(format!("cannot create {}: {e}", net_dir.display())))?;
    let ca = prepared.ca_cert_pem();
    let mut bundle = Vec::new();
    if let Ok(f) = std::fs::File::open(BUNDLE_FILE) {
        use std::io::Read;
        let _ = f.take(MAX_HOST_BUNDLE).read_to_end(&mut bundle);
        if !bundle.ends_with(b"\n") && !bundle.is_empty() {
            bundle.push(b'\n');
        }
    }
    bundle.extend_from_slice(ca.as_bytes());
    let gw = cordon_net::stack::GATEWAY_IP;
    let files = [
        (
            "resolv.conf",
            format!("nameserver {gw}\noptions timeout:2 attempts:2\n").into_bytes(),
            "/etc/resolv.conf",
        ),
        (
            "hosts",
            b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n".to_vec(),
            "/etc/hosts",
        ),
        ("ca.pem", ca.into_bytes(), CA_FILE),
        ("ca-bundle.crt", bundle, BUNDLE_FILE),
    ];
    let mut mounts = Vec::new();
    for (name, text, target) in files {
        mounts.push(BindMount {
            source: write(name, &text)?,
            target: PathBuf::from(target),
            writable: false,
        });
    }
    let env = [
        ("SSL_CERT_FILE", BUNDLE_FILE),
        ("REQUESTS_CA_BUNDLE", BUNDLE_FILE),
        ("CURL_CA_BUNDLE", BUNDLE_FILE),
        ("GIT_SSL_CAINFO", BUNDLE_FILE),
        ("PIP_CERT", BUNDLE_FILE),
        ("NODE_EXTRA_CA_CERTS", CA_FILE),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Ok(SessionNet {
        prepared,
        mounts,
        env,
        budget,
    })
}

/// Most gateway events one session writes; the traffic of a busy agent (a
/// few thousand model and API calls) stays far below it, a sandbox flooding
/// refusals to fill the host's disk does not.
const NET_EVENT_LIMIT: u64 = 200_000;
/// Most bytes of gateway event data one session writes.
const NET_EVENT_BYTES: u64 = 128 << 20;
/// Longest string kept in a gateway event field (paths, names, details the
/// sandbox chose); longer ones are cut and say by how much.
const MAX_FIELD: usize = 1024;

/// The gateway's share of the session log: every event's strings are cut to
/// [`MAX_FIELD`], and past [`NET_EVENT_LIMIT`] events or [`NET_EVENT_BYTES`]
/// the rest are counted instead of written.
#[derive(Default)]
pub struct EventBudget {
    events: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
    /// Set when the session ends: nothing more goes into its log.
    closed: std::sync::atomic::AtomicBool,
}

impl EventBudget {
    fn admit(
        &self,
        mut data: serde_json::Map<String, serde_json::Value>,
    ) -> Option<serde_json::Map<String, serde_json::Value>> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let mut size = 0u64;
        for v in data.values_mut() {
            cut_strings(v);
            size += v.to_string().len() as u64;
        }
        let events = self.events.fetch_add(1, Relaxed) + 1;
        let bytes = self.bytes.fetch_add(size, Relaxed) + size;
        if events > NET_EVENT_LIMIT || bytes > NET_EVENT_BYTES {
            self.suppressed.fetch_add(1, Relaxed);
            return None;
        }
        Some(data)
    }

    /// No more events: the session's log is being closed.
    pub fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Events not written because the budget ran out.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn cut_strings(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) if s.len() > MAX_FIELD => {
            let mut end = MAX_FIELD;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            let cut = s.len() - end;
            s.truncate(end);
            s.push_str(&format!("…({cut} more bytes)"));
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(cut_strings),
        serde_json::Value::Object(o) => o.values_mut().for_each(cut_strings),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn long_fields_are_cut_and_say_so() {
        let b = EventBudget::default();
        let long = "é".repeat(3000);
        let out = b
            .admit(map(json!({ "path": long, "list": [long.clone()], "n": 1 })))
            .unwrap();
        let path = out["path"].as_str().unwrap();
        assert!(path.len() < MAX_FIELD + 40, "{}", path.len());
        assert!(path.ends_with("more bytes)"), "{path}");
        assert!(out["list"][0].as_str().unwrap().ends_with("more bytes)"));
        assert_eq!(out["n"], 1);
    }

    #[test]
    fn past_the_budget_events_are_counted_not_written() {
        let b = EventBudget::default();
        let mut written = 0;
        for _ in 0..NET_EVENT_LIMIT + 10 {
            written += u64::from(b.admit(map(json!({ "host": "a.test" }))).is_some());
        }
        assert_eq!(written, NET_EVENT_LIMIT);
        assert_eq!(b.suppressed(), 10);
        // Bytes count too: a few huge events exhaust it long before the count.
        let b = EventBudget::default();
        let big = "x".repeat(MAX_FIELD);
        let fields: serde_json::Map<_, _> = (0..64)
            .map(|i| (format!("f{i}"), json!(big.clone())))
            .collect();
        let per_event = 64 * (MAX_FIELD as u64 + 2);
        let fit = NET_EVENT_BYTES / per_event;
        let mut written = 0;
        for _ in 0..fit + 5 {
            written += u64::from(b.admit(fields.clone()).is_some());
        }
        assert_eq!(written, fit);
        assert_eq!(b.suppressed(), 5);
    }
}
