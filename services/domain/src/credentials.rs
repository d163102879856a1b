//! Digest credentials: only HA1 values are ever kept, never a password.

use md5::{Digest as _, Md5};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::{DomainName, Error, Result, Timestamp, UserName};

/// The digest HA1 values of a user: `H(username:realm:password)` for MD5 and
/// SHA-256 (RFC 7616 / RFC 8760). The realm is the domain name.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub ha1_md5: String,
    pub ha1_sha256: String,
    /// When these credentials were set.
    pub set_at: Timestamp,
}

impl std::fmt::Debug for Credentials {
    // HA1 values are password equivalents: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("set_at", &self.set_at)
            .finish_non_exhaustive()
    }
}

/// Rules a new password must meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordPolicy {
    pub min_length: usize,
}

impl PasswordPolicy {
    pub const DEFAULT_MIN_LENGTH: usize = 8;
    pub const MAX_LENGTH: usize = 256;
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        PasswordPolicy {
            min_length: Self::DEFAULT_MIN_LENGTH,
        }
    }
}

impl Credentials {
    /// Checks `password` against `policy` and derives the HA1 values.
    pub fn derive(
        username: &UserName,
        realm: &DomainName,
        password: &str,
        policy: PasswordPolicy,
        now: Timestamp,
    ) -> Result<Self> {
        let length = password.chars().count();
        if length < policy.min_length {
            return Err(Error::invalid(
                "password",
                format!("must be at least {} characters long", policy.min_length),
            ));
        }
        if length > PasswordPolicy::MAX_LENGTH {
            return Err(Error::invalid(
                "password",
                format!(
                    "must be at most {} characters long",
                    PasswordPolicy::MAX_LENGTH
                ),
            ));
        }
        if password.chars().any(char::is_control) {
            return Err(Error::invalid(
                "password",
                "must not contain control characters",
            ));
        }
        let input = format!("{}:{}:{}", username.as_str(), realm.as_str(), password);
        Ok(Credentials {
            ha1_md5: hex::encode(Md5::digest(input.as_bytes())),
            ha1_sha256: hex::encode(Sha256::digest(input.as_bytes())),
            set_at: now,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ha1_matches_rfc_definition() {
        let user = UserName::parse("alice").unwrap();
        let realm = DomainName::parse("example.com").unwrap();
        let c =
            Credentials::derive(&user, &realm, "secret123", PasswordPolicy::default(), 7).unwrap();
        assert_eq!(
            c.ha1_md5,
            hex::encode(Md5::digest(b"alice:example.com:secret123"))
        );
        assert_eq!(
            c.ha1_sha256,
            hex::encode(Sha256::digest(b"alice:example.com:secret123"))
        );
        assert!(!format!("{c:?}").contains(&c.ha1_md5));
    }

    #[test]
    fn short_passwords_are_refused() {
        let user = UserName::parse("alice").unwrap();
        let realm = DomainName::parse("example.com").unwrap();
        let err =
            Credentials::derive(&user, &realm, "short", PasswordPolicy::default(), 0).unwrap_err();
        assert!(matches!(
            err,
            Error::Invalid {
                field: "password",
                ..
            }
        ));
    }
}
