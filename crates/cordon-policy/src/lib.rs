//! Cordon's policy file: what a sandboxed agent may see, use and reach.
//!
//! This crate owns the policy model ([`Policy`] and its parts, plain data
//! that serializes to JSON), the TOML parser that reports *every* problem in
//! a file with its line and column ([`Policy::parse`], [`Diagnostics`]), the
//! commented default file ([`DEFAULT_POLICY_TOML`]), Ed25519 signing and
//! verification of policy files ([`sign`], [`verify`], [`verify_any`]), the
//! user's list of trusted signing keys ([`UserConfig`]), and the anomaly rule
//! language of `[monitor]` with its built-in rules ([`Monitor`],
//! [`compile_pattern`]).
//!
//! It deliberately does not enforce anything (the sandbox and gateway crates
//! do), generate randomness (callers pass seeds and nonces in), read the
//! environment, or write files: its only I/O is reading policy, config and
//! key files, each bounded to [`MAX_POLICY_BYTES`].

mod diag;
mod model;
mod monitor;
mod parse;
mod sign;
mod user_config;
pub mod values;

#[cfg(test)]
mod tests;

use std::io::Read;
use std::path::{Path, PathBuf};

pub use diag::{Diagnostic, Diagnostics, WithPath};
pub use model::{
    BackendKind, DEFAULT_ASK_TIMEOUT, DEFAULT_HIDDEN, DEFAULT_HOSTNAME, DEFAULT_MAX_REQUEST_BODY,
    DEFAULT_READ_ONLY, HTTP_METHODS, Injection, Monitor, MonitorAction, MonitorRule, Mount,
    Network, OnUnknown, Policy, Rule, RuleAction, Sandbox, Secret, SecretSource, SocketAddrOrIp,
    Workspace,
};
pub use monitor::{
    CREDENTIAL_PATH_PATTERN, MAX_COUNT, MAX_PATTERN_LEN, NETWORK_TOOLS_PATTERN, PATTERN_SIZE_LIMIT,
    PRIVILEGE_SYSCALL_PATTERN, compile_pattern, kind_matches,
};
pub use parse::{MAX_POLICY_BYTES, parse_injection, parse_secret_source};
pub use sign::{
    KeyError, KeyId, KeyKind, PublicKey, SIGNATURE_DOMAIN, SecretKey, Signature, SignatureError,
    sign, signature_path, verify, verify_any,
};
pub use user_config::{TrustEntry, UserConfig};
pub use values::{HostPattern, parse_host_address};

/// A commented policy file showing every section and key. It parses to
/// exactly [`Policy::default()`]: every line that would change something is
/// commented out.
pub const DEFAULT_POLICY_TOML: &str = include_str!("default_policy.toml");

/// Errors from reading policy, config and key files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_POLICY_BYTES`].
    #[error(
        "{} is larger than the 1 MiB limit for policy, config and key files ({size} bytes); check \
         that the path names the right file",
        path.display()
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size, or the number of bytes read before giving up.
        size: u64,
    },
    /// The file has problems; `diagnostics` lists all of them.
    #[error(
        "invalid {}:{}{}",
        path.display(),
        diagnostics.0.first().map(ToString::to_string).unwrap_or_default(),
        match diagnostics.len() { 0 | 1 => String::new(), n => format!(" (and {} more; `cordon policy check` lists them all)", n - 1) }
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem, in file order.
        diagnostics: Diagnostics,
    },
    /// A key file does not hold a usable key.
    #[error("{}: {source}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        source: KeyError,
    },
    /// A `~/` path cannot be expanded.
    #[error(
        "cannot find {}: HOME is not set; write the full path in `trust`",
        entry.display()
    )]
    NoHome {
        /// The path as written.
        entry: PathBuf,
    },
}

impl Error {
    /// True when the error is a file that does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

impl Policy {
    /// Parses and validates policy text. On failure, returns every problem
    /// found, each with its line and column.
    pub fn parse(text: &str) -> Result<Policy, Diagnostics> {
        parse::parse_policy(text)
    }

    /// Reads, parses and validates a policy file, returning the policy and
    /// the exact bytes read (the bytes a signature covers).
    pub fn load(path: &Path) -> Result<(Policy, Vec<u8>), Error> {
        let bytes = read_file(path)?;
        let text = utf8(path, &bytes)?;
        let policy = Policy::parse(text).map_err(|diagnostics| Error::Invalid {
            path: path.to_path_buf(),
            diagnostics,
        })?;
        Ok((policy, bytes))
    }
}

/// Reads a file of at most [`MAX_POLICY_BYTES`], refusing anything larger
/// without reading it all.
pub fn read_file(path: &Path) -> Result<Vec<u8>, Error> {
    let read_err = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    let limit = MAX_POLICY_BYTES as u64;
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > limit {
        let size = std::fs::metadata(path).map_or(bytes.len() as u64, |m| m.len());
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            size,
        });
    }
    Ok(bytes)
}

/// `bytes` as text, or an [`Error::Invalid`] pointing at the first bad byte.
fn utf8<'b>(path: &Path, bytes: &'b [u8]) -> Result<&'b str, Error> {
    std::str::from_utf8(bytes).map_err(|e| not_utf8(path, bytes, e))
}

fn not_utf8(path: &Path, bytes: &[u8], e: std::str::Utf8Error) -> Error {
    let valid = e.valid_up_to();
    // `valid_up_to` promises this prefix is UTF-8; the fallback is unreachable.
    let prefix = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
    let mut c = diag::Collector::new(prefix);
    c.error(
        Some(valid..valid),
        "the file is not valid UTF-8 here; policy, config and key files must be UTF-8 text",
    );
    Error::Invalid {
        path: path.to_path_buf(),
        diagnostics: c.finish(()).err().unwrap_or(Diagnostics(Vec::new())),
    }
}

pub(crate) fn read_text(path: &Path) -> Result<String, Error> {
    String::from_utf8(read_file(path)?).map_err(|e| not_utf8(path, e.as_bytes(), e.utf8_error()))
}

/// Reads a secret key file (`cordon-ed25519-secret ...`).
pub fn read_secret_key(path: &Path) -> Result<SecretKey, Error> {
    let text = read_text(path)?;
    SecretKey::parse(&text).map_err(|source| Error::Key {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a public key file (`cordon-ed25519-public ...`).
pub fn read_public_key(path: &Path) -> Result<PublicKey, Error> {
    let text = read_text(path)?;
    PublicKey::parse(&text).map_err(|source| Error::Key {
        path: path.to_path_buf(),
        source,
    })
}
