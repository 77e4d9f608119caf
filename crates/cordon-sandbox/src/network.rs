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
/// How long the session CA is valid: generous for long agent runs, short
/// enough that a leaked key soon stops mattering.
const CA_VALIDITY: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

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
        ca_validity: CA_VALIDITY,
        ..Default::default()
    };
    let emit: cordon_net::Emit = Arc::new(move |kind, data| sink.append(kind, data));
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
    })
}
