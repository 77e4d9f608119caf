//! Ed25519 keys and detached signatures for policy files.
//!
//! Everything is one line of text so it can be pasted into chat or a config
//! file:
//!
//! ```text
//! cordon-ed25519-secret <base64 of the 32-byte seed>
//! cordon-ed25519-public <base64 of the 32-byte public key>
//! cordon-ed25519-signature <key id> <base64 of the 64-byte signature>
//! ```
//!
//! A key id is the first 16 hex digits of SHA-256 of the public key bytes.
//!
//! A signature covers [`SIGNATURE_DOMAIN`] followed by the exact bytes of the
//! policy file, so a cordon policy signature can never be replayed as a
//! signature over anything else made with the same key, and vice versa.
//! Verification is strict (RFC 8032 with the checks of `verify_strict`).
//!
//! This module generates no randomness: a new key comes from a 32-byte seed
//! the caller obtained from the operating system.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::model::hex;

/// Prefix of every signed message: the signature is over
/// `SIGNATURE_DOMAIN || file bytes`.
pub const SIGNATURE_DOMAIN: &[u8] = b"cordon-policy-v1\0";

const SECRET_PREFIX: &str = "cordon-ed25519-secret";
const PUBLIC_PREFIX: &str = "cordon-ed25519-public";
const SIGNATURE_PREFIX: &str = "cordon-ed25519-signature";

/// Which kind of key text was expected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// `cordon-ed25519-secret ...`
    Secret,
    /// `cordon-ed25519-public ...`
    Public,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyKind::Secret => "secret key",
            KeyKind::Public => "public key",
        })
    }
}

impl KeyKind {
    fn prefix(self) -> &'static str {
        match self {
            KeyKind::Secret => SECRET_PREFIX,
            KeyKind::Public => PUBLIC_PREFIX,
        }
    }
}

/// Key text that cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A cordon key of the other kind.
    #[error(
        "this is a cordon {found}, but a {expected} is needed{}",
        if *.expected == KeyKind::Public { " (use the .pub file, not the .key file)" } else { " (use the .key file, not the .pub file)" }
    )]
    WrongKind {
        /// What was needed.
        expected: KeyKind,
        /// What was given.
        found: KeyKind,
    },
    /// Not a cordon key line at all.
    #[error(
        "not a cordon {expected}: expected one line `{} <base64>`, found {found}",
        .expected.prefix()
    )]
    WrongFormat {
        /// What was needed.
        expected: KeyKind,
        /// A description of what was given (its first word when that is
        /// safe to show).
        found: String,
    },
    /// The base64 part does not decode.
    #[error("the {kind} is damaged: its base64 does not decode ({reason})")]
    BadBase64 {
        /// Which key.
        kind: KeyKind,
        /// The decoder's complaint.
        reason: String,
    },
    /// The base64 decodes to the wrong number of bytes.
    #[error("the {kind} is damaged: it decodes to {found} bytes instead of 32")]
    WrongLength {
        /// Which key.
        kind: KeyKind,
        /// Bytes found.
        found: usize,
    },
    /// 32 bytes that are not an Ed25519 public key.
    #[error("the public key is damaged: its 32 bytes are not a valid Ed25519 point")]
    InvalidPoint,
}

/// Why a signature was not accepted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The signature text is not in the expected form.
    #[error(
        "malformed signature file: {reason}; expected one line `{SIGNATURE_PREFIX} <key id> <base64>` \
         as written by `cordon policy sign`"
    )]
    Malformed {
        /// What is wrong with it.
        reason: String,
    },
    /// The signature names a different key than the one given.
    #[error(
        "signed by a different key: the signature is by key {signed_by}, but the key to check with is \
         {expected}"
    )]
    KeyMismatch {
        /// Key id written in the signature.
        signed_by: KeyId,
        /// Id of the key given for verification.
        expected: KeyId,
    },
    /// The signature does not match the bytes: the file changed after signing.
    #[error(
        "bad signature: the file does not match the signature by key {key_id}; it was changed \
         after it was signed (sign it again with `cordon policy sign` if the change is yours)"
    )]
    BadSignature {
        /// Key the signature claims.
        key_id: KeyId,
    },
    /// None of the trusted keys made the signature.
    #[error(
        "signed by key {signed_by}, which is not trusted (trusted: {}); add its public key to \
         `trust` in your cordon config if you trust the signer",
        fmt_ids(.trusted)
    )]
    Untrusted {
        /// Key id written in the signature.
        signed_by: KeyId,
        /// Ids of the trusted keys.
        trusted: Vec<KeyId>,
    },
    /// There was nothing to verify against.
    #[error(
        "no trusted keys: add public keys to `trust = [...]` in your cordon config \
         (~/.config/cordon/config.toml)"
    )]
    NoTrustedKeys,
}

fn fmt_ids(ids: &[KeyId]) -> String {
    ids.iter()
        .map(KeyId::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// First 8 bytes of SHA-256 of a public key; shown as 16 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// The id of the public key `bytes`.
    pub fn of(public_key_bytes: &[u8; 32]) -> KeyId {
        let digest = Sha256::digest(public_key_bytes);
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        KeyId(id)
    }

    /// Parses 16 hex digits.
    pub fn parse(s: &str) -> Option<KeyId> {
        if s.len() != 16 || !s.is_ascii() {
            return None;
        }
        let mut id = [0u8; 8];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(KeyId(id))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A key that signs policies. Its `Debug` shows only the key id.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// The key for a 32-byte seed. Take the seed from the operating system's
    /// random source (`getrandom`); anyone who knows it can sign.
    pub fn from_seed(seed: [u8; 32]) -> SecretKey {
        SecretKey(SigningKey::from_bytes(&seed))
    }

    /// Parses `cordon-ed25519-secret <base64>` (surrounding whitespace allowed).
    pub fn parse(text: &str) -> Result<SecretKey, KeyError> {
        let seed = parse_key_text(text, KeyKind::Secret)?;
        Ok(SecretKey::from_seed(seed))
    }

    /// The one-line text form, without a newline.
    pub fn to_text(&self) -> String {
        format!("{SECRET_PREFIX} {}", BASE64.encode(self.0.to_bytes()))
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Id of the matching public key.
    pub fn key_id(&self) -> KeyId {
        self.public_key().key_id()
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("key_id", &self.key_id())
            .finish_non_exhaustive()
    }
}

/// A key that verifies policy signatures.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// The key with these 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<PublicKey, KeyError> {
        VerifyingKey::from_bytes(bytes)
            .map(PublicKey)
            .map_err(|_| KeyError::InvalidPoint)
    }

    /// Parses `cordon-ed25519-public <base64>` (surrounding whitespace allowed).
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        PublicKey::from_bytes(&parse_key_text(text, KeyKind::Public)?)
    }

    /// The one-line text form, without a newline.
    pub fn to_text(&self) -> String {
        format!("{PUBLIC_PREFIX} {}", BASE64.encode(self.0.as_bytes()))
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// First 16 hex digits of SHA-256 of the key bytes.
    pub fn key_id(&self) -> KeyId {
        KeyId::of(self.0.as_bytes())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

fn parse_key_text(text: &str, kind: KeyKind) -> Result<[u8; 32], KeyError> {
    let mut words = text.split_whitespace();
    let prefix = words.next().unwrap_or("");
    let other = match kind {
        KeyKind::Secret => KeyKind::Public,
        KeyKind::Public => KeyKind::Secret,
    };
    if prefix == other.prefix() {
        return Err(KeyError::WrongKind {
            expected: kind,
            found: other,
        });
    }
    let (Some(b64), None) = (words.next(), words.next()) else {
        return Err(wrong_format(text, kind));
    };
    if prefix != kind.prefix() {
        return Err(wrong_format(text, kind));
    }
    let bytes = BASE64.decode(b64).map_err(|e| KeyError::BadBase64 {
        kind,
        reason: e.to_string(),
    })?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError::WrongLength {
        kind,
        found: bytes.len(),
    })
}

fn wrong_format(text: &str, expected: KeyKind) -> KeyError {
    KeyError::WrongFormat {
        expected,
        found: describe_first_word(text),
    }
}

/// The first word of `text` for an error message, but only when it looks like
/// a format tag: the file may be some other secret, and its contents must not
/// end up on the terminal.
fn describe_first_word(text: &str) -> String {
    let word = text.split_whitespace().next().unwrap_or("");
    let looks_like_tag = word.len() <= 32
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if word.is_empty() {
        "an empty file".to_string()
    } else if looks_like_tag {
        format!("text starting with `{word}`")
    } else {
        "something else".to_string()
    }
}

/// A detached signature over one policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// Id of the key that made it (as the signature file claims).
    pub key_id: KeyId,
    bytes: [u8; 64],
}

impl Signature {
    /// Parses `cordon-ed25519-signature <key id> <base64>` (surrounding
    /// whitespace allowed).
    pub fn parse(text: &str) -> Result<Signature, SignatureError> {
        let malformed = |reason: String| SignatureError::Malformed { reason };
        let words: Vec<&str> = text.split_whitespace().collect();
        let [prefix, id, b64] = words.as_slice() else {
            return Err(malformed(format!(
                "it has {} words instead of 3",
                words.len()
            )));
        };
        if *prefix != SIGNATURE_PREFIX {
            return Err(malformed(format!("found {}", describe_first_word(text))));
        }
        let key_id = KeyId::parse(id)
            .ok_or_else(|| malformed(format!("the key id {id:?} is not 16 hex digits")))?;
        let bytes = BASE64
            .decode(b64)
            .map_err(|e| malformed(format!("its base64 does not decode ({e})")))?;
        let bytes = <[u8; 64]>::try_from(bytes.as_slice()).map_err(|_| {
            malformed(format!(
                "the signature is {} bytes instead of 64",
                bytes.len()
            ))
        })?;
        Ok(Signature { key_id, bytes })
    }

    /// The one-line text form, with a trailing newline (the signature file's contents).
    pub fn to_text(&self) -> String {
        format!(
            "{SIGNATURE_PREFIX} {} {}\n",
            self.key_id,
            BASE64.encode(self.bytes)
        )
    }
}

fn signed_message(bytes: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNATURE_DOMAIN.len() + bytes.len());
    msg.extend_from_slice(SIGNATURE_DOMAIN);
    msg.extend_from_slice(bytes);
    msg
}

/// Signs the exact bytes of a policy file.
pub fn sign(secret: &SecretKey, bytes: &[u8]) -> Signature {
    let sig = secret.0.sign(&signed_message(bytes));
    Signature {
        key_id: secret.key_id(),
        bytes: sig.to_bytes(),
    }
}

/// Checks that `sig_text` is `public`'s signature over exactly `bytes`.
pub fn verify(public: &PublicKey, bytes: &[u8], sig_text: &str) -> Result<(), SignatureError> {
    let sig = Signature::parse(sig_text)?;
    if sig.key_id != public.key_id() {
        return Err(SignatureError::KeyMismatch {
            signed_by: sig.key_id,
            expected: public.key_id(),
        });
    }
    check(public, bytes, &sig)
}

/// Checks `sig_text` against every trusted key with the id it names, and
/// returns the key that made it.
pub fn verify_any<'k>(
    trusted: &'k [PublicKey],
    bytes: &[u8],
    sig_text: &str,
) -> Result<&'k PublicKey, SignatureError> {
    let sig = Signature::parse(sig_text)?;
    if trusted.is_empty() {
        return Err(SignatureError::NoTrustedKeys);
    }
    let mut candidates = trusted
        .iter()
        .filter(|k| k.key_id() == sig.key_id)
        .peekable();
    if candidates.peek().is_none() {
        return Err(SignatureError::Untrusted {
            signed_by: sig.key_id,
            trusted: trusted.iter().map(PublicKey::key_id).collect(),
        });
    }
    // Ids are 64 bits, so two trusted keys could share one; try each.
    let mut last = SignatureError::BadSignature { key_id: sig.key_id };
    for key in candidates {
        match check(key, bytes, &sig) {
            Ok(()) => return Ok(key),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn check(public: &PublicKey, bytes: &[u8], sig: &Signature) -> Result<(), SignatureError> {
    let s = ed25519_dalek::Signature::from_bytes(&sig.bytes);
    public
        .0
        .verify_strict(&signed_message(bytes), &s)
        .map_err(|_| SignatureError::BadSignature { key_id: sig.key_id })
}

/// Where the detached signature of `policy_path` lives: the same path with
/// `.sig` appended (`cordon.toml` → `cordon.toml.sig`).
pub fn signature_path(policy_path: &Path) -> PathBuf {
    let mut s = policy_path.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_seed([n; 32])
    }

    const POLICY: &[u8] = b"[network]\nallow = [\"github.com\"]\n";

    #[test]
    fn sign_then_verify() {
        let k = key(1);
        let sig = sign(&k, POLICY).to_text();
        assert!(sig.starts_with("cordon-ed25519-signature "));
        assert!(sig.ends_with('\n') && sig.lines().count() == 1);
        assert_eq!(verify(&k.public_key(), POLICY, &sig), Ok(()));
    }

    #[test]
    fn every_flipped_byte_is_a_bad_signature() {
        let k = key(1);
        let sig = sign(&k, POLICY).to_text();
        for i in 0..POLICY.len() {
            let mut altered = POLICY.to_vec();
            altered[i] ^= 0x01;
            assert_eq!(
                verify(&k.public_key(), &altered, &sig),
                Err(SignatureError::BadSignature { key_id: k.key_id() }),
                "byte {i}"
            );
        }
        let mut longer = POLICY.to_vec();
        longer.push(b'\n');
        assert!(verify(&k.public_key(), &longer, &sig).is_err());
    }

    #[test]
    fn signature_is_domain_separated() {
        // A plain Ed25519 signature over the bytes (no domain prefix) must not verify.
        let k = key(1);
        let raw = k.0.sign(POLICY);
        let forged = Signature {
            key_id: k.key_id(),
            bytes: raw.to_bytes(),
        };
        assert!(matches!(
            verify(&k.public_key(), POLICY, &forged.to_text()),
            Err(SignatureError::BadSignature { .. })
        ));
    }

    #[test]
    fn other_key_is_a_key_mismatch_naming_both_ids() {
        let (a, b) = (key(1), key(2));
        let sig = sign(&a, POLICY).to_text();
        let err = verify(&b.public_key(), POLICY, &sig).unwrap_err();
        assert_eq!(
            err,
            SignatureError::KeyMismatch {
                signed_by: a.key_id(),
                expected: b.key_id()
            }
        );
        let msg = err.to_string();
        assert!(msg.contains(&a.key_id().to_string()) && msg.contains(&b.key_id().to_string()));
    }

    #[test]
    fn forged_key_id_still_fails() {
        // A signature by key a relabelled with key b's id must not pass as b's.
        let (a, b) = (key(1), key(2));
        let mut sig = sign(&a, POLICY);
        sig.key_id = b.key_id();
        assert_eq!(
            verify(&b.public_key(), POLICY, &sig.to_text()),
            Err(SignatureError::BadSignature { key_id: b.key_id() })
        );
    }

    #[test]
    fn malformed_signature_files() {
        let k = key(1);
        let good = sign(&k, POLICY).to_text();
        let words: Vec<&str> = good.split_whitespace().collect();
        let cases = [
            String::new(),
            "garbage".to_string(),
            format!("cordon-ed25519-public {} {}", words[1], words[2]),
            format!("{} {} {}", words[0], "xyz", words[2]),
            format!("{} {} {}", words[0], words[1], "!!!notbase64"),
            format!("{} {} {}", words[0], words[1], BASE64.encode([0u8; 32])),
            format!("{} {} {} extra", words[0], words[1], words[2]),
        ];
        for text in cases {
            assert!(
                matches!(
                    verify(&k.public_key(), POLICY, &text),
                    Err(SignatureError::Malformed { .. })
                ),
                "{text:?}"
            );
        }
    }

    #[test]
    fn verify_any_picks_the_signer() {
        let (a, b, c) = (key(1), key(2), key(3));
        let trusted = [a.public_key(), b.public_key()];
        let sig = sign(&b, POLICY).to_text();
        assert_eq!(verify_any(&trusted, POLICY, &sig), Ok(&trusted[1]));
        let by_c = sign(&c, POLICY).to_text();
        assert_eq!(
            verify_any(&trusted, POLICY, &by_c),
            Err(SignatureError::Untrusted {
                signed_by: c.key_id(),
                trusted: vec![a.key_id(), b.key_id()]
            })
        );
        assert_eq!(
            verify_any(&[], POLICY, &sig),
            Err(SignatureError::NoTrustedKeys)
        );
        assert!(matches!(
            verify_any(&trusted, b"changed", &sig),
            Err(SignatureError::BadSignature { .. })
        ));
    }

    #[test]
    fn key_text_round_trips() {
        let k = key(7);
        let parsed = SecretKey::parse(&format!("  {}\n", k.to_text())).unwrap();
        assert_eq!(parsed.key_id(), k.key_id());
        let p = PublicKey::parse(&k.public_key().to_text()).unwrap();
        assert_eq!(p, k.public_key());
        assert_eq!(k.key_id().to_string().len(), 16);
        assert_eq!(KeyId::parse(&k.key_id().to_string()), Some(k.key_id()));
        // Debug must not print the seed.
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(&BASE64.encode([7u8; 32])), "{dbg}");
    }

    #[test]
    fn key_text_errors() {
        let k = key(7);
        assert_eq!(
            PublicKey::parse(&k.to_text()),
            Err(KeyError::WrongKind {
                expected: KeyKind::Public,
                found: KeyKind::Secret
            })
        );
        assert_eq!(
            SecretKey::parse(&k.public_key().to_text()).unwrap_err(),
            KeyError::WrongKind {
                expected: KeyKind::Secret,
                found: KeyKind::Public
            }
        );
        let err = PublicKey::parse("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA").unwrap_err();
        assert!(matches!(err, KeyError::WrongFormat { .. }));
        assert!(
            err.to_string().contains("starting with `ssh-ed25519`"),
            "{err}"
        );
        // Some other secret passed by mistake is not echoed.
        let err = PublicKey::parse("GITHUB_TOKEN=ghp_abcdef123 x").unwrap_err();
        assert!(!err.to_string().contains("ghp_"), "{err}");
        assert!(matches!(
            PublicKey::parse("cordon-ed25519-public"),
            Err(KeyError::WrongFormat { .. })
        ));
        assert!(matches!(
            PublicKey::parse("cordon-ed25519-public a b"),
            Err(KeyError::WrongFormat { .. })
        ));
        assert!(matches!(
            PublicKey::parse("cordon-ed25519-public %%%%"),
            Err(KeyError::BadBase64 { .. })
        ));
        assert_eq!(
            SecretKey::parse(&format!(
                "cordon-ed25519-secret {}",
                BASE64.encode([1u8; 31])
            ))
            .unwrap_err(),
            KeyError::WrongLength {
                kind: KeyKind::Secret,
                found: 31
            }
        );
        // Some 32-byte strings do not decode to a curve point; find one.
        let bad_point = (0u8..=255)
            .map(|b| [b; 32])
            .find(|bytes| VerifyingKey::from_bytes(bytes).is_err())
            .expect("some 32-byte string is not a curve point");
        assert_eq!(
            PublicKey::parse(&format!(
                "cordon-ed25519-public {}",
                BASE64.encode(bad_point)
            )),
            Err(KeyError::InvalidPoint)
        );
    }

    #[test]
    fn signature_path_appends_sig() {
        assert_eq!(
            signature_path(Path::new("/p/cordon.toml")),
            PathBuf::from("/p/cordon.toml.sig")
        );
        assert_eq!(signature_path(Path::new("a.b")), PathBuf::from("a.b.sig"));
    }
}
