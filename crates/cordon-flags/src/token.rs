//! API tokens: their Unleash text format, hashing, generation and lookup.
//!
//! A token reads `project:environment.secret` (client and frontend tokens) or
//! `*:*.secret` (admin). Only the SHA-256 of the whole token text is stored. Lookup
//! hashes the presented text once and compares it against every known hash with a
//! constant-time comparison, so neither the answer nor its timing depends on how much
//! of a guess was right. Text that cannot be a token is rejected before hashing.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::TokenRecord;

/// Longest token text accepted; anything longer is rejected without hashing.
pub const MAX_TOKEN_LEN: usize = 512;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// Everything, on every project and environment.
    Admin,
    /// Server-side SDKs: the client API of one environment.
    Client,
    /// Browser and mobile SDKs: the frontend API of one environment.
    Frontend,
}

impl TokenType {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenType::Admin => "admin",
            TokenType::Client => "client",
            TokenType::Frontend => "frontend",
        }
    }

    /// Parse the stored or requested name (case-insensitive, as Unleash accepts).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "admin" => Some(TokenType::Admin),
            "client" | "backend" => Some(TokenType::Client),
            "frontend" => Some(TokenType::Frontend),
            _ => None,
        }
    }
}

/// SHA-256 of a token's full text.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash(pub [u8; 32]);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

impl TokenHash {
    pub fn of(token: &str) -> Self {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }
}

/// Split `project:environment.secret`; `None` when the text is not in that shape.
pub fn parse_scope(token: &str) -> Option<(&str, &str, &str)> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let (project, rest) = token.split_once(':')?;
    let (environment, secret) = rest.split_once('.')?;
    if project.is_empty() || environment.is_empty() || secret.is_empty() {
        return None;
    }
    Some((project, environment, secret))
}

/// A fresh token text for the given scope: `project:environment.` and 32 random bytes
/// in hex.
pub fn generate(project: &str, environment: &str) -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{project}:{environment}.{secret}"))
}

/// Find the stored token whose hash matches `presented`.
///
/// Every candidate is compared, with no early exit, so the time taken depends only on
/// the number of tokens.
pub fn find<'a>(tokens: &'a [TokenRecord], presented: &str) -> Option<&'a TokenRecord> {
    parse_scope(presented)?;
    let hash = TokenHash::of(presented);
    let mut found = None;
    for t in tokens {
        if bool::from(t.hash.0.ct_eq(&hash.0)) {
            found = Some(t);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(text: &str, ty: TokenType) -> TokenRecord {
        let (project, environment, _) = parse_scope(text).unwrap();
        TokenRecord {
            name: "t".into(),
            token_type: ty,
            project: project.into(),
            environment: environment.into(),
            hash: TokenHash::of(text),
            owner: None,
            expires_ms: None,
        }
    }

    #[test]
    fn finds_only_the_exact_token() {
        let tokens = vec![
            record("*:*.abc", TokenType::Admin),
            record("default:development.xyz", TokenType::Client),
        ];
        assert_eq!(
            find(&tokens, "default:development.xyz").map(|t| t.token_type),
            Some(TokenType::Client)
        );
        assert!(find(&tokens, "default:development.xy").is_none());
        assert!(find(&tokens, "default:production.xyz").is_none());
        assert!(find(&tokens, "abc").is_none());
        assert!(find(&tokens, &"a".repeat(MAX_TOKEN_LEN + 1)).is_none());
    }

    #[test]
    fn generated_tokens_parse_and_differ() {
        let a = generate("*", "*").unwrap();
        let b = generate("*", "*").unwrap();
        assert_ne!(a, b);
        assert_eq!(
            parse_scope(&a).map(|(p, e, s)| (p, e, s.len())),
            Some(("*", "*", 64))
        );
    }
}
