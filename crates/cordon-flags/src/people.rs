//! Who makes a request and what they may do: users (humans with a role), agents, and
//! service tokens, resolved from the presented API token into a [`Principal`].
//!
//! - Users log in to the console with a password (argon2id, PHC string at rest) or a
//!   personal token, and call the API with personal tokens.
//! - Agents get tokens minted for them, optionally bound to a `cordon run` session;
//!   every event they cause names the agent and the session. They can create flags and
//!   propose changes, never approve or apply.
//! - Service tokens are the admin API tokens of [`crate::token`] without an owner
//!   (the bootstrap token, CI): they administer, but are not a person, so they cannot
//!   approve a change request.
//!
//! What it does not do: check that two user accounts are two different people. An
//! admin who creates a second account can approve their own change; the audit log
//! records both accounts' creation by that admin.

use serde::{Deserialize, Serialize};

use crate::audit::Actor;
use crate::store::{StoreError, TokenRecord};

type Result<T> = std::result::Result<T, StoreError>;

/// Longest accepted password; argon2 hashes any length, but a bound keeps a login
/// request cheap to refuse.
pub const MAX_PASSWORD: usize = 1024;
/// Shortest password a user may set.
pub const MIN_PASSWORD: usize = 10;
/// The name of console session tokens.
pub const SESSION_TOKEN_NAME: &str = "console-session";
/// How long a console session lasts.
pub const SESSION_MS: i64 = 12 * 3600 * 1000;

/// A user's role. Each includes the permissions of the ones before it, except that
/// only approvers and admins approve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Editor,
    Approver,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "viewer" => Some(Role::Viewer),
            "editor" => Some(Role::Editor),
            "approver" => Some(Role::Approver),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// What kind of principal made a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// An admin API token without an owner.
    Service,
    /// A human.
    User,
    /// An AI agent.
    Agent,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "service",
            Kind::User => "user",
            Kind::Agent => "agent",
        }
    }
}

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read flags, change requests, events, metrics.
    Read,
    /// Create flags, change unprotected environments, open change requests.
    Edit,
    /// Turn a flag off anywhere (break-glass in protected environments).
    Kill,
    /// Approve or reject someone else's change request.
    Approve,
    /// Apply or schedule an approved change request.
    Apply,
    /// Users, agents, tokens, projects, environments, change-request settings, import.
    Administer,
}

impl Permission {
    fn describe(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Edit => "change flags",
            Permission::Kill => "kill flags",
            Permission::Approve => "approve or reject change requests",
            Permission::Apply => "apply change requests",
            Permission::Administer => "administer the server",
        }
    }
}

/// A stored user or agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub kind: Kind,
    /// Agents are stored as editors; [`Principal::may`] withholds the rest.
    pub role: Role,
    /// PHC string of the argon2id hash; `None` for token-only users and agents.
    pub password_hash: Option<String>,
    /// The `cordon run` session an agent is bound to.
    pub session: Option<String>,
    pub created_ms: i64,
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub kind: Kind,
    pub name: String,
    pub role: Role,
    pub session: Option<String>,
}

impl Principal {
    /// The identity change requests record as author and approver: `user:alice`,
    /// `agent:claude`, `admin:ci` (a service token).
    pub fn id(&self) -> String {
        match self.kind {
            Kind::Service => format!("admin:{}", self.name),
            Kind::User => format!("user:{}", self.name),
            Kind::Agent => format!("agent:{}", self.name),
        }
    }

    /// The actor of audit events: [`Self::id`], and the session of a bound agent.
    pub fn actor(&self) -> Actor {
        match &self.session {
            Some(s) => Actor(format!("{} session={s}", self.id())),
            None => Actor(self.id()),
        }
    }

    pub fn may(&self, p: Permission) -> bool {
        match self.kind {
            Kind::Agent => matches!(p, Permission::Read | Permission::Edit | Permission::Kill),
            // Not a person: cannot be one of the four eyes.
            Kind::Service => p != Permission::Approve,
            Kind::User => match p {
                Permission::Read => true,
                Permission::Edit | Permission::Kill | Permission::Apply => {
                    self.role >= Role::Editor
                }
                Permission::Approve => self.role >= Role::Approver,
                Permission::Administer => self.role == Role::Admin,
            },
        }
    }

    /// `Ok` when [`Self::may`], else the message a `403` carries.
    pub fn require(&self, p: Permission) -> std::result::Result<(), String> {
        if self.may(p) {
            return Ok(());
        }
        let what = match self.kind {
            Kind::Agent => format!("agent {:?}", self.name),
            Kind::Service => format!("service token {:?} (not a person)", self.name),
            Kind::User => format!("{} {:?}", self.role.as_str(), self.name),
        };
        Err(format!("{what} may not {}", p.describe()))
    }

    /// The principal a token stands for, given the stored users; `None` when the
    /// token's owner no longer exists or the token has expired.
    pub fn of_token(token: &TokenRecord, users: &[User], now_ms: i64) -> Option<Principal> {
        if token.expires_ms.is_some_and(|e| e <= now_ms) {
            return None;
        }
        match &token.owner {
            None => Some(Principal {
                kind: Kind::Service,
                name: token.name.clone(),
                role: Role::Admin,
                session: None,
            }),
            Some(owner) => {
                let u = users.iter().find(|u| &u.name == owner)?;
                Some(Principal {
                    kind: u.kind,
                    name: u.name.clone(),
                    role: u.role,
                    session: u.session.clone(),
                })
            }
        }
    }
}

/// User and agent names: what fits in a path segment and an audit actor.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

/// `cordon run` session ids as agents are bound to them.
pub fn valid_session(session: &str) -> bool {
    (1..=128).contains(&session.len())
        && session
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Hash a password with argon2id (the crate's defaults: OWASP's recommended
/// 19 MiB, 2 passes) and a random salt, as a PHC string.
pub fn hash_password(password: &str) -> Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    if password.chars().count() < MIN_PASSWORD || password.len() > MAX_PASSWORD {
        return Err(StoreError::Invalid(format!(
            "a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters"
        )));
    }
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(StoreError::Random)?;
    let salt = SaltString::encode_b64(&salt)
        .map_err(|e| StoreError::Invalid(format!("cannot encode a salt: {e}")))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| StoreError::Invalid(format!("cannot hash the password: {e}")))
}

/// Whether `password` matches the stored PHC string; `false` for a malformed one.
pub fn verify_password(password: &str, phc: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    if password.len() > MAX_PASSWORD {
        return false;
    }
    PasswordHash::new(phc).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A hash that matches no password, verified against when the user does not exist so
/// that a login for an unknown name takes as long as one with a wrong password.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("decoy-password-never-matches").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{TokenHash, TokenType};

    fn user(role: Role) -> Principal {
        Principal {
            kind: Kind::User,
            name: "u".into(),
            role,
            session: None,
        }
    }

    #[test]
    fn roles_grant_what_the_table_says() {
        use Permission::*;
        let all = [Read, Edit, Kill, Approve, Apply, Administer];
        let granted = |p: &Principal| -> Vec<Permission> {
            all.iter().copied().filter(|x| p.may(*x)).collect()
        };
        assert_eq!(granted(&user(Role::Viewer)), [Read]);
        assert_eq!(granted(&user(Role::Editor)), [Read, Edit, Kill, Apply]);
        assert_eq!(
            granted(&user(Role::Approver)),
            [Read, Edit, Kill, Approve, Apply]
        );
        assert_eq!(granted(&user(Role::Admin)), all);
        let agent = Principal {
            kind: Kind::Agent,
            role: Role::Admin,
            ..user(Role::Admin)
        };
        assert_eq!(granted(&agent), [Read, Edit, Kill]);
        let service = Principal {
            kind: Kind::Service,
            ..user(Role::Admin)
        };
        assert!(!service.may(Approve) && service.may(Apply) && service.may(Administer));
        assert!(agent.require(Approve).unwrap_err().contains("agent"));
    }

    #[test]
    fn tokens_resolve_to_their_owner_until_they_expire() {
        let users = vec![User {
            name: "ai".into(),
            kind: Kind::Agent,
            role: Role::Editor,
            password_hash: None,
            session: Some("s1".into()),
            created_ms: 0,
        }];
        let mut t = TokenRecord {
            name: "t".into(),
            token_type: TokenType::Admin,
            project: "*".into(),
            environment: "*".into(),
            hash: TokenHash::of("x"),
            owner: Some("ai".into()),
            expires_ms: Some(100),
        };
        let p = Principal::of_token(&t, &users, 99).unwrap();
        assert_eq!(p.actor().0, "agent:ai session=s1");
        assert!(Principal::of_token(&t, &users, 100).is_none());
        t.owner = Some("gone".into());
        t.expires_ms = None;
        assert!(Principal::of_token(&t, &users, 0).is_none());
        t.owner = None;
        assert_eq!(Principal::of_token(&t, &users, 0).unwrap().id(), "admin:t");
    }

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterY", &h));
        assert!(!verify_password("x", "not a phc string"));
        assert!(hash_password("short").is_err());
        assert!(!verify_password("anything", decoy_hash()));
    }
}
