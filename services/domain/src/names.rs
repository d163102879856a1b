//! Validated names: SIP domain names (DNS names) and SIP user names.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A SIP domain name: a DNS name, lower-cased. It is also the digest realm.
///
/// Rules (RFC 1035 / RFC 1123 host names): 1–253 characters, labels of 1–63
/// characters of `a-z`, `0-9` and `-`, not starting or ending with `-`, and a
/// last label that is not all digits (so that an IPv4 address is refused).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DomainName(String);

impl DomainName {
    pub const MAX_LEN: usize = 253;

    /// Validates and normalises (lower-cases, drops one trailing dot).
    pub fn parse(input: &str) -> Result<Self> {
        let field = "domain name";
        let trimmed = input.trim();
        let name = trimmed
            .strip_suffix('.')
            .unwrap_or(trimmed)
            .to_ascii_lowercase();
        if name.is_empty() {
            return Err(Error::invalid(field, "must not be empty"));
        }
        if name.len() > Self::MAX_LEN {
            return Err(Error::invalid(
                field,
                format!(
                    "{} characters, at most {} allowed",
                    name.len(),
                    Self::MAX_LEN
                ),
            ));
        }
        let labels: Vec<&str> = name.split('.').collect();
        for label in &labels {
            if label.is_empty() {
                return Err(Error::invalid(
                    field,
                    format!("'{input}' has an empty label"),
                ));
            }
            if label.len() > 63 {
                return Err(Error::invalid(
                    field,
                    format!("label '{label}' is longer than 63 characters"),
                ));
            }
            if let Some(bad) = label
                .chars()
                .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
            {
                return Err(Error::invalid(
                    field,
                    format!(
                        "'{input}' contains '{bad}'; only letters, digits, '-' and '.' are allowed"
                    ),
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(Error::invalid(
                    field,
                    format!("label '{label}' must not start or end with '-'"),
                ));
            }
        }
        if labels
            .last()
            .is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()))
        {
            return Err(Error::invalid(
                field,
                format!("'{input}' looks like an IP address; a DNS name is required"),
            ));
        }
        Ok(DomainName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for DomainName {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        DomainName::parse(&value)
    }
}

impl From<DomainName> for String {
    fn from(value: DomainName) -> Self {
        value.0
    }
}

/// A SIP user name: the user part of a SIP URI (RFC 3261 `user`), 1–64
/// characters of unreserved, user-unreserved or `%HH`-escaped characters.
/// Case-sensitive, as the user part of a SIP URI is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserName(String);

impl UserName {
    pub const MAX_LEN: usize = 64;

    pub fn parse(input: &str) -> Result<Self> {
        let field = "username";
        if input.is_empty() {
            return Err(Error::invalid(field, "must not be empty"));
        }
        if input.len() > Self::MAX_LEN {
            return Err(Error::invalid(
                field,
                format!(
                    "{} characters, at most {} allowed",
                    input.len(),
                    Self::MAX_LEN
                ),
            ));
        }
        let bytes = input.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b == b'%' {
                let escaped = bytes
                    .get(i + 1..i + 3)
                    .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
                if !escaped {
                    return Err(Error::invalid(
                        field,
                        "'%' must be followed by two hex digits",
                    ));
                }
                i += 3;
                continue;
            }
            if !is_user_char(b) {
                return Err(Error::invalid(
                    field,
                    format!(
                        "'{input}' contains '{}'; allowed are letters, digits and -_.!~*'()&=+$,;?/",
                        char::from(b).escape_default()
                    ),
                ));
            }
            i += 1;
        }
        Ok(UserName(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// RFC 3261 `unreserved` / `user-unreserved` characters.
fn is_user_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')' // mark
                | b'&' | b'=' | b'+' | b'$' | b',' | b';' | b'?' | b'/' // user-unreserved
        )
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for UserName {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        UserName::parse(&value)
    }
}

impl From<UserName> for String {
    fn from(value: UserName) -> Self {
        value.0
    }
}

/// `username@domain`, the address operators use for a user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserAddress {
    pub username: UserName,
    pub domain: DomainName,
}

impl UserAddress {
    /// Parses `user@domain` (an optional `sip:` prefix is accepted). The
    /// domain is the part after the last `@`.
    pub fn parse(input: &str) -> Result<Self> {
        let trimmed = input.trim();
        let without_scheme = trimmed
            .strip_prefix("sip:")
            .or_else(|| trimmed.strip_prefix("sips:"))
            .unwrap_or(trimmed);
        let Some((user, domain)) = without_scheme.rsplit_once('@') else {
            return Err(Error::invalid(
                "user",
                format!("'{input}' is neither a user id nor username@domain"),
            ));
        };
        Ok(UserAddress {
            username: UserName::parse(user)?,
            domain: DomainName::parse(domain)?,
        })
    }
}

impl fmt::Display for UserAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.username, self.domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_names_are_normalised_and_validated() {
        assert_eq!(
            DomainName::parse("Example.COM.").unwrap().as_str(),
            "example.com"
        );
        assert_eq!(DomainName::parse("pbx").unwrap().as_str(), "pbx");
        for bad in [
            "", ".", "a..b", "-a.com", "a-.com", "a_b.com", "1.2.3.4", "é.com", "a b",
        ] {
            assert!(DomainName::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(DomainName::parse(&format!("{}.com", "a".repeat(64))).is_err());
        assert!(DomainName::parse(&format!("{}.com", "a".repeat(63))).is_ok());
    }

    #[test]
    fn user_names_follow_rfc3261_user() {
        for good in ["alice", "1001", "a.b-c_d", "+4930123", "x%41y", "o'neil"] {
            assert!(UserName::parse(good).is_ok(), "{good:?} should be accepted");
        }
        for bad in ["", "a b", "a@b", "a:b", "%4", "%zz", "é", "<a>"] {
            assert!(UserName::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(UserName::parse(&"a".repeat(64)).is_ok());
        assert!(UserName::parse(&"a".repeat(65)).is_err());
    }

    #[test]
    fn user_address_parses() {
        let a = UserAddress::parse("sip:Alice@Example.com").unwrap();
        assert_eq!(a.username.as_str(), "Alice");
        assert_eq!(a.domain.as_str(), "example.com");
        assert!(UserAddress::parse("alice").is_err());
    }
}
