//! The user's own cordon settings (`~/.config/cordon/config.toml`): for now,
//! which public keys the user trusts to sign policies.
//!
//! ```toml
//! trust = [
//!     "~/.config/cordon/team.pub",                   # a key file
//!     "cordon-ed25519-public 3pX...=",               # or the key itself
//! ]
//! ```
//!
//! Parsing is pure; [`UserConfig::trusted_keys`] reads the listed key files.
//! Locating the file takes the environment as arguments, so callers and
//! tests decide where it comes from.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::Error;
use crate::diag::Diagnostics;
use crate::parse::{Walker, entry};
use crate::sign::PublicKey;

/// One entry of `trust`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustEntry {
    /// A public key file: an absolute path, or one starting with `~/`.
    File(PathBuf),
    /// A public key written inline.
    Key(PublicKey),
}

/// The user config file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserConfig {
    /// Keys whose policy signatures the user accepts.
    pub trust: Vec<TrustEntry>,
}

impl UserConfig {
    /// Parses config text, reporting every problem with its position.
    pub fn parse(text: &str) -> Result<UserConfig, Diagnostics> {
        let (mut w, doc) = Walker::start(text)?;
        let root = doc.as_table();
        w.check_keys(root, "the user config", &["trust"]);
        let mut config = UserConfig::default();
        if let Some((item, span)) = entry(root, "trust") {
            for (s, span) in w.strings(item, span, "trust").unwrap_or_default() {
                if s.starts_with("cordon-ed25519-") {
                    match PublicKey::parse(&s) {
                        Ok(k) => config.trust.push(TrustEntry::Key(k)),
                        Err(e) => w.error(span, format!("trust: {e}")),
                    }
                } else if s.starts_with('/') || s.starts_with("~/") {
                    config.trust.push(TrustEntry::File(PathBuf::from(s)));
                } else {
                    w.error(
                        span,
                        format!(
                            "trust: {s:?} must be a public key file (an absolute path or one \
                             starting with ~/) or a key `cordon-ed25519-public ...`"
                        ),
                    );
                }
            }
        }
        w.c.finish(config)
    }

    /// Reads and parses the config file at `path`.
    ///
    /// A missing file is an [`Error::Read`] whose source has kind `NotFound`;
    /// see [`Error::is_not_found`] to treat that as an empty config.
    pub fn load(path: &Path) -> Result<UserConfig, Error> {
        let text = crate::read_text(path)?;
        UserConfig::parse(&text).map_err(|diagnostics| Error::Invalid {
            path: path.to_path_buf(),
            diagnostics,
        })
    }

    /// `$XDG_CONFIG_HOME/cordon/config.toml`, else `$HOME/.config/cordon/config.toml`;
    /// `None` when neither variable is usable. As the XDG spec says, a
    /// relative or empty `XDG_CONFIG_HOME` is ignored.
    pub fn default_path(xdg_config_home: Option<&OsStr>, home: Option<&OsStr>) -> Option<PathBuf> {
        if let Some(xdg) = xdg_config_home.map(Path::new)
            && xdg.is_absolute()
        {
            return Some(xdg.join("cordon").join("config.toml"));
        }
        let home = home.filter(|h| !h.is_empty())?;
        Some(Path::new(home).join(".config/cordon/config.toml"))
    }

    /// Every trusted key, reading key files (with `~/` meaning `home`).
    pub fn trusted_keys(&self, home: Option<&Path>) -> Result<Vec<PublicKey>, Error> {
        let mut keys = Vec::new();
        for entry in &self.trust {
            match entry {
                TrustEntry::Key(k) => keys.push(k.clone()),
                TrustEntry::File(path) => {
                    let path = match path.strip_prefix("~") {
                        Ok(rest) => match home {
                            Some(home) => home.join(rest),
                            None => {
                                return Err(Error::NoHome {
                                    entry: path.clone(),
                                });
                            }
                        },
                        Err(_) => path.clone(),
                    };
                    keys.push(crate::read_public_key(&path)?);
                }
            }
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::SecretKey;

    #[test]
    fn parses_files_and_inline_keys() {
        let key = SecretKey::from_seed([9; 32]).public_key();
        let text = format!(
            "trust = [\"~/.config/cordon/team.pub\", \"/etc/cordon/ops.pub\", \"{}\"]\n",
            key.to_text()
        );
        let c = UserConfig::parse(&text).unwrap();
        assert_eq!(
            c.trust,
            vec![
                TrustEntry::File("~/.config/cordon/team.pub".into()),
                TrustEntry::File("/etc/cordon/ops.pub".into()),
                TrustEntry::Key(key),
            ]
        );
        assert_eq!(UserConfig::parse("").unwrap(), UserConfig::default());
    }

    #[test]
    fn reports_unknown_keys_and_bad_entries() {
        let text = "trust = [\"team.pub\", \"cordon-ed25519-public AAAA\", 3]\ntrusts = []\n";
        let d = UserConfig::parse(text).unwrap_err();
        let got: Vec<(usize, usize)> = d.iter().map(|d| (d.line, d.column)).collect();
        assert_eq!(got, vec![(1, 10), (1, 22), (1, 52), (2, 1)], "{d}");
        assert!(d.0[0].message.contains("absolute path"), "{d}");
        assert!(d.0[1].message.contains("decodes to 3 bytes"), "{d}");
        assert!(d.0[3].message.contains("unknown key `trusts`"), "{d}");
        assert!(d.0[3].message.contains("did you mean `trust`"), "{d}");
    }

    #[test]
    fn default_path_prefers_absolute_xdg() {
        let p = |x: Option<&str>, h: Option<&str>| {
            UserConfig::default_path(x.map(OsStr::new), h.map(OsStr::new))
        };
        assert_eq!(
            p(Some("/x"), Some("/home/u")),
            Some("/x/cordon/config.toml".into())
        );
        assert_eq!(
            p(Some("rel"), Some("/home/u")),
            Some("/home/u/.config/cordon/config.toml".into())
        );
        assert_eq!(
            p(Some(""), Some("/home/u")),
            Some("/home/u/.config/cordon/config.toml".into())
        );
        assert_eq!(p(None, Some("")), None);
        assert_eq!(p(None, None), None);
    }

    #[test]
    fn trusted_keys_reads_files_and_expands_home() {
        let dir = tempfile::tempdir().unwrap();
        let a = SecretKey::from_seed([1; 32]).public_key();
        let b = SecretKey::from_seed([2; 32]).public_key();
        std::fs::write(dir.path().join("team.pub"), format!("{}\n", a.to_text())).unwrap();
        let c = UserConfig {
            trust: vec![
                TrustEntry::File("~/team.pub".into()),
                TrustEntry::Key(b.clone()),
            ],
        };
        assert_eq!(c.trusted_keys(Some(dir.path())).unwrap(), vec![a, b]);
        assert!(matches!(c.trusted_keys(None), Err(Error::NoHome { .. })));

        let missing = UserConfig {
            trust: vec![TrustEntry::File(dir.path().join("nope.pub"))],
        };
        let err = missing.trusted_keys(None).unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(err.to_string().contains("nope.pub"), "{err}");

        std::fs::write(dir.path().join("bad.pub"), "hello\n").unwrap();
        let bad = UserConfig {
            trust: vec![TrustEntry::File(dir.path().join("bad.pub"))],
        };
        let err = bad.trusted_keys(None).unwrap_err();
        assert!(matches!(err, Error::Key { .. }), "{err}");
        assert!(err.to_string().contains("bad.pub"), "{err}");
    }
}
