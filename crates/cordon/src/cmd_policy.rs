//! `cordon policy`: write, check, sign and verify policy files, and make
//! signing keys.
//!
//! The policy model, validation and cryptography live in `cordon-policy`,
//! which reads files but never writes them. This module does the writing the
//! library will not: the default policy, key files (the secret key with mode
//! 0600, never overwritten), and detached signatures (replaced atomically).
//! It prints diagnostics as `PATH:LINE:COL: MESSAGE` on stderr and returns
//! the exit code: 0 when all is well, 1 when a check or verification failed.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use clap::Subcommand;
use cordon_policy::{
    DEFAULT_POLICY_TOML, Diagnostics, Policy, SecretKey, SignatureError, read_file,
    read_public_key, read_secret_key, sign, signature_path, verify,
};
use serde::Serialize;

/// Write, check, sign and verify policy files.
#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Write a commented default cordon.toml.
    ///
    /// The file shows every setting with an explanation; as written it is the
    /// default policy (no network, .env files hidden, shell startup files and
    /// git hooks read-only).
    Init {
        /// Where to write the policy.
        #[arg(default_value = "cordon.toml")]
        path: PathBuf,
        /// Overwrite the file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Check a policy file; prints every error with line and column.
    ///
    /// Errors go to stderr as PATH:LINE:COL: MESSAGE, one per line. Exits with
    /// 1 if there are any.
    Check {
        /// The policy file.
        path: PathBuf,
        /// Print JSON on stdout: the parsed policy, or the list of errors.
        #[arg(long)]
        json: bool,
    },
    /// Generate an ed25519 key pair for signing policies.
    ///
    /// Writes OUT.key (the secret key, readable only by you) and OUT.pub (the
    /// public key, to share with the people who should trust your policies).
    /// Never overwrites an existing key.
    Keygen {
        /// Path prefix of the key files: writes OUT.key and OUT.pub.
        #[arg(long, default_value = "cordon-policy")]
        out: PathBuf,
        /// Print JSON on stdout: key id, public key and file paths.
        #[arg(long)]
        json: bool,
    },
    /// Sign a policy file (detached signature next to it, FILE.sig).
    ///
    /// The policy is checked first; an invalid policy is not signed. The
    /// signature covers the file's exact bytes, so any later edit breaks it.
    Sign {
        /// The secret key file written by `cordon policy keygen` (OUT.key).
        #[arg(long)]
        key: PathBuf,
        /// The policy file to sign.
        file: PathBuf,
    },
    /// Verify a policy file's detached signature.
    ///
    /// Exits with 1, saying why, if the signature is missing, malformed, made
    /// by another key, or does not match the file's contents.
    Verify {
        /// The signer's public key file (OUT.pub from `cordon policy keygen`).
        #[arg(long)]
        key: PathBuf,
        /// The policy file.
        file: PathBuf,
        /// The signature file [default: FILE.sig].
        #[arg(long)]
        sig: Option<PathBuf>,
        /// Print JSON on stdout: whether the signature is valid, and why not.
        #[arg(long)]
        json: bool,
    },
}

/// Errors that end a `cordon policy` command before it could decide.
#[derive(Debug, thiserror::Error)]
pub enum PolicyCliError {
    /// `init` would overwrite a file.
    #[error("{} already exists; pass --force to overwrite it", path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// `keygen` would overwrite a key.
    #[error(
        "{} already exists; refusing to overwrite a key (move it away, or choose another --out)",
        path.display()
    )]
    KeyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Reading or parsing a policy or key file failed.
    #[error(transparent)]
    Policy(#[from] cordon_policy::Error),
    /// The operating system's random source failed.
    #[error("cannot generate a key: the operating system's random source failed: {0}")]
    Random(getrandom::Error),
    /// Writing to stdout failed.
    #[error("writing output: {0}")]
    Output(#[from] io::Error),
}

impl PolicyCliError {
    /// True when stdout's reader went away (exit quietly, as for SIGPIPE).
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, PolicyCliError::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// Runs a `cordon policy` command; returns the exit code (0 ok, 1 check or
/// verification failed).
pub fn run(cmd: PolicyCmd) -> Result<i32, PolicyCliError> {
    match cmd {
        PolicyCmd::Init { path, force } => init(&path, force),
        PolicyCmd::Check { path, json } => check(&path, json),
        PolicyCmd::Keygen { out, json } => keygen(&out, json),
        PolicyCmd::Sign { key, file } => sign_file(&key, &file),
        PolicyCmd::Verify {
            key,
            file,
            sig,
            json,
        } => verify_file(&key, &file, sig, json),
    }
}

fn init(path: &Path, force: bool) -> Result<i32, PolicyCliError> {
    let mut opts = OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let write_err = |source: io::Error| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            PolicyCliError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            PolicyCliError::Write {
                path: path.to_path_buf(),
                source,
            }
        }
    };
    let mut file = opts.open(path).map_err(write_err)?;
    file.write_all(DEFAULT_POLICY_TOML.as_bytes())
        .map_err(write_err)?;
    println!(
        "wrote {0}; edit it, then run `cordon policy check {0}`",
        path.display()
    );
    Ok(0)
}

/// Prints diagnostics as `PATH:LINE:COL: MESSAGE` lines on stderr.
fn print_diagnostics(path: &Path, diagnostics: &Diagnostics) {
    eprintln!("{}", diagnostics.with_path(path));
    let n = diagnostics.len();
    eprintln!(
        "{}: {n} error{}",
        path.display(),
        if n == 1 { "" } else { "s" }
    );
}

fn print_json<T: Serialize>(value: &T) -> Result<(), PolicyCliError> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value).map_err(io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

#[derive(Serialize)]
struct CheckReport<'a> {
    path: &'a Path,
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<&'a Policy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a Diagnostics>,
}

fn check(path: &Path, json: bool) -> Result<i32, PolicyCliError> {
    match Policy::load(path) {
        Ok((policy, _)) => {
            if json {
                print_json(&CheckReport {
                    path,
                    valid: true,
                    policy: Some(&policy),
                    errors: None,
                })?;
            } else {
                println!("{}: ok ({})", path.display(), summary(&policy));
            }
            Ok(0)
        }
        Err(cordon_policy::Error::Invalid { diagnostics, .. }) => {
            if json {
                print_json(&CheckReport {
                    path,
                    valid: false,
                    policy: None,
                    errors: Some(&diagnostics),
                })?;
            }
            print_diagnostics(path, &diagnostics);
            Ok(1)
        }
        Err(e) => Err(e.into()),
    }
}

/// One line saying what the policy allows, so a glance shows whether it is
/// the file you meant.
fn summary(p: &Policy) -> String {
    let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let network = if p.network.allow.is_empty() && p.network.passthrough.is_empty() {
        "no network".to_string()
    } else {
        count(p.network.allow.len(), "allowed host")
    };
    format!(
        "{} sandbox, {network}, {}, {}, {}",
        p.sandbox.backend.name(),
        count(p.secrets.len(), "secret"),
        count(p.mounts.len(), "mount"),
        count(p.rules.len(), "rule"),
    )
}

/// `OUT` with `suffix` appended, so `team.v2` becomes `team.v2.key`.
fn with_suffix(out: &Path, suffix: &str) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Creates `path` with `mode`, failing if it exists.
fn create_new(path: &Path, mode: u32, contents: &str) -> Result<(), PolicyCliError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                PolicyCliError::KeyExists {
                    path: path.to_path_buf(),
                }
            } else {
                PolicyCliError::Write {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| PolicyCliError::Write {
            path: path.to_path_buf(),
            source,
        })
}

#[derive(Serialize)]
struct KeygenReport<'a> {
    key_id: String,
    public_key: String,
    secret_key_path: &'a Path,
    public_key_path: &'a Path,
}

fn keygen(out: &Path, json: bool) -> Result<i32, PolicyCliError> {
    let key_path = with_suffix(out, ".key");
    let pub_path = with_suffix(out, ".pub");
    // Check both first so a refusal leaves nothing half-written.
    for path in [&key_path, &pub_path] {
        if fs::symlink_metadata(path).is_ok() {
            return Err(PolicyCliError::KeyExists { path: path.clone() });
        }
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(PolicyCliError::Random)?;
    let secret = SecretKey::from_seed(seed);
    seed.fill(0);
    let public = secret.public_key();

    create_new(&key_path, 0o600, &format!("{}\n", secret.to_text()))?;
    if let Err(e) = create_new(&pub_path, 0o644, &format!("{}\n", public.to_text())) {
        // Do not leave a secret key without its public half.
        let _ = fs::remove_file(&key_path);
        return Err(e);
    }

    let report = KeygenReport {
        key_id: public.key_id().to_string(),
        public_key: public.to_text(),
        secret_key_path: &key_path,
        public_key_path: &pub_path,
    };
    if json {
        print_json(&report)?;
    } else {
        let mut o = io::stdout().lock();
        writeln!(
            o,
            "wrote {} (secret: keep it private) and {}",
            key_path.display(),
            pub_path.display()
        )?;
        writeln!(o, "key id:     {}", report.key_id)?;
        writeln!(o, "public key: {}", report.public_key)?;
        writeln!(
            o,
            "To trust it, add the public key (or the path of {}) to `trust = [...]` in \
             ~/.config/cordon/config.toml.",
            pub_path.display()
        )?;
    }
    Ok(0)
}

fn sign_file(key: &Path, file: &Path) -> Result<i32, PolicyCliError> {
    let secret = read_secret_key(key)?;
    if let Ok(meta) = fs::metadata(key)
        && meta.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "cordon: warning: {} can be read by other users (mode {:o}); run `chmod 600 {}`",
            key.display(),
            meta.permissions().mode() & 0o777,
            key.display()
        );
    }
    let bytes = match Policy::load(file) {
        Ok((_, bytes)) => bytes,
        Err(cordon_policy::Error::Invalid { diagnostics, .. }) => {
            print_diagnostics(file, &diagnostics);
            eprintln!("{}: not signed: fix the errors first", file.display());
            return Ok(1);
        }
        Err(e) => return Err(e.into()),
    };
    let signature = sign(&secret, &bytes);
    let sig_path = signature_path(file);
    write_atomically(&sig_path, signature.to_text().as_bytes())?;
    println!(
        "signed {} with key {}; wrote {}",
        file.display(),
        signature.key_id,
        sig_path.display()
    );
    Ok(0)
}

/// Writes `path` through a temporary file and a rename, so readers see the
/// old signature or the new one, never half of one.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), PolicyCliError> {
    let tmp = with_suffix(path, &format!(".tmp-{}", std::process::id()));
    let err = |source| PolicyCliError::Write {
        path: path.to_path_buf(),
        source,
    };
    let result = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut f| f.write_all(contents).and_then(|()| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

#[derive(Serialize)]
struct VerifyReport<'a> {
    path: &'a Path,
    signature_path: &'a Path,
    valid: bool,
    /// Id of the key the signature was checked against.
    key_id: String,
    /// Machine-readable reason for failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn verify_file(
    key: &Path,
    file: &Path,
    sig: Option<PathBuf>,
    json: bool,
) -> Result<i32, PolicyCliError> {
    let public = read_public_key(key)?;
    let bytes = read_file(file)?;
    let sig_path = sig.unwrap_or_else(|| signature_path(file));
    let outcome: Result<(), (&'static str, String)> = match read_file(&sig_path) {
        Ok(sig_bytes) => {
            verify(&public, &bytes, &String::from_utf8_lossy(&sig_bytes)).map_err(|e| {
                let reason = match e {
                    SignatureError::Malformed { .. } => "malformed",
                    SignatureError::KeyMismatch { .. } => "key_mismatch",
                    SignatureError::BadSignature { .. } => "bad_signature",
                    SignatureError::Untrusted { .. } => "untrusted",
                    SignatureError::NoTrustedKeys => "no_trusted_keys",
                };
                (reason, e.to_string())
            })
        }
        Err(e) if e.is_not_found() => Err((
            "missing",
            format!(
                "no signature at {}; sign the policy with `cordon policy sign --key KEY {}`",
                sig_path.display(),
                file.display()
            ),
        )),
        Err(e) => return Err(e.into()),
    };
    let key_id = public.key_id().to_string();
    if json {
        print_json(&VerifyReport {
            path: file,
            signature_path: &sig_path,
            valid: outcome.is_ok(),
            key_id: key_id.clone(),
            reason: outcome.as_ref().err().map(|(r, _)| *r),
            error: outcome.as_ref().err().map(|(_, m)| m.clone()),
        })?;
    }
    match outcome {
        Ok(()) => {
            if !json {
                println!(
                    "{}: good signature by key {key_id} ({})",
                    file.display(),
                    sig_path.display()
                );
            }
            Ok(0)
        }
        Err((_, message)) => {
            eprintln!("{}: {message}", file.display());
            Ok(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_ok(cmd: PolicyCmd) -> i32 {
        run(cmd).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn init_keygen_sign_verify_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("cordon.toml");
        let out = dir.path().join("team");

        assert_eq!(
            run_ok(PolicyCmd::Init {
                path: policy.clone(),
                force: false
            }),
            0
        );
        assert_eq!(fs::read_to_string(&policy).unwrap(), DEFAULT_POLICY_TOML);
        assert!(matches!(
            run(PolicyCmd::Init {
                path: policy.clone(),
                force: false
            }),
            Err(PolicyCliError::Exists { .. })
        ));

        assert_eq!(
            run_ok(PolicyCmd::Keygen {
                out: out.clone(),
                json: true
            }),
            0
        );
        let key = dir.path().join("team.key");
        let public = dir.path().join("team.pub");
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(
            run(PolicyCmd::Keygen {
                out: out.clone(),
                json: false
            }),
            Err(PolicyCliError::KeyExists { .. })
        ));

        assert_eq!(
            run_ok(PolicyCmd::Sign {
                key: key.clone(),
                file: policy.clone()
            }),
            0
        );
        assert!(dir.path().join("cordon.toml.sig").exists());
        let verify_cmd = || PolicyCmd::Verify {
            key: public.clone(),
            file: policy.clone(),
            sig: None,
            json: false,
        };
        assert_eq!(run_ok(verify_cmd()), 0);

        // Any edit breaks the signature.
        let mut text = fs::read_to_string(&policy).unwrap();
        text.push_str("\n# edited\n");
        fs::write(&policy, &text).unwrap();
        assert_eq!(run_ok(verify_cmd()), 1);

        // A missing signature is a failed verification, not a crash.
        fs::remove_file(dir.path().join("cordon.toml.sig")).unwrap();
        assert_eq!(run_ok(verify_cmd()), 1);
    }

    #[test]
    fn check_and_sign_refuse_invalid_policies() {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("bad.toml");
        fs::write(&policy, "[sandbox]\nmemory = \"lots\"\n").unwrap();
        assert_eq!(
            run_ok(PolicyCmd::Check {
                path: policy.clone(),
                json: false
            }),
            1
        );
        let key = dir.path().join("k.key");
        fs::write(
            &key,
            format!("{}\n", SecretKey::from_seed([5; 32]).to_text()),
        )
        .unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            run_ok(PolicyCmd::Sign {
                key,
                file: policy.clone()
            }),
            1
        );
        assert!(!dir.path().join("bad.toml.sig").exists());
    }
}
