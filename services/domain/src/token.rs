//! The `Tokens` aggregate: the API tokens of the node, in one stream
//! ([`STREAM`]).
//!
//! A token is a random secret the API hands out once; only its SHA-256
//! hash is ever recorded (`secret_sha256`), so the log never holds anything
//! a client could present. The secret, the hash and the token id are made
//! by the caller (the domain has no randomness); `decide` only checks that
//! the command makes sense against the table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{DomainName, Error, Result, Timestamp};

/// The one stream of the token table.
pub const STREAM: &str = "tokens";

/// Longest accepted description.
pub const MAX_DESCRIPTION_LEN: usize = 256;

/// What a token may see and change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Everything, including the management of tokens.
    Admin,
    /// One domain and its users, nothing else.
    Domain(DomainName),
}

/// One token as the table knows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub scope: Scope,
    /// SHA-256 of the secret, lower-case hex (64 digits).
    pub secret_sha256: String,
    pub description: String,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("scope", &self.scope)
            .field("description", &self.description)
            .field("created_at", &self.created_at)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

/// The token table: every token ever created, by id. Serialisable for the
/// actor's snapshots, which hold hashes only, as the stream does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub tokens: BTreeMap<Uuid, Token>,
}

/// What an administrator asks of the table.
#[derive(Clone, PartialEq, Eq)]
pub enum Command {
    Create {
        token_id: Uuid,
        scope: Scope,
        secret_sha256: String,
        description: String,
    },
    Revoke {
        token_id: Uuid,
    },
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Create {
                token_id, scope, ..
            } => f
                .debug_struct("Create")
                .field("token_id", token_id)
                .field("scope", scope)
                .finish_non_exhaustive(),
            Command::Revoke { token_id } => f
                .debug_struct("Revoke")
                .field("token_id", token_id)
                .finish(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    TokenCreated {
        token_id: Uuid,
        scope: Scope,
        /// SHA-256 of the secret, lower-case hex. Never the secret.
        secret_sha256: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        description: String,
        created_at: Timestamp,
    },
    TokenRevoked {
        token_id: Uuid,
        revoked_at: Timestamp,
    },
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What `command` means for the table at `now`. Revoking a revoked token
/// writes nothing.
pub fn decide(state: &Tokens, command: &Command, now: Timestamp) -> Result<Vec<Event>> {
    match command {
        Command::Create {
            token_id,
            scope,
            secret_sha256,
            description,
        } => {
            if state.tokens.contains_key(token_id) {
                return Err(Error::AlreadyExists(format!("token {token_id}")));
            }
            if !is_sha256_hex(secret_sha256) {
                return Err(Error::invalid(
                    "secret_sha256",
                    "must be 64 lower-case hex digits",
                ));
            }
            if description.chars().count() > MAX_DESCRIPTION_LEN {
                return Err(Error::invalid(
                    "description",
                    format!("at most {MAX_DESCRIPTION_LEN} characters"),
                ));
            }
            Ok(vec![Event::TokenCreated {
                token_id: *token_id,
                scope: scope.clone(),
                secret_sha256: secret_sha256.clone(),
                description: description.clone(),
                created_at: now,
            }])
        }
        Command::Revoke { token_id } => match state.tokens.get(token_id) {
            None => Err(Error::NotFound(format!("token {token_id}"))),
            Some(token) if token.revoked_at.is_some() => Ok(vec![]),
            Some(_) => Ok(vec![Event::TokenRevoked {
                token_id: *token_id,
                revoked_at: now,
            }]),
        },
    }
}

/// Applies `event` to the table.
pub fn evolve(mut state: Tokens, event: &Event) -> Tokens {
    match event {
        Event::TokenCreated {
            token_id,
            scope,
            secret_sha256,
            description,
            created_at,
        } => {
            state.tokens.insert(
                *token_id,
                Token {
                    scope: scope.clone(),
                    secret_sha256: secret_sha256.clone(),
                    description: description.clone(),
                    created_at: *created_at,
                    revoked_at: None,
                },
            );
        }
        Event::TokenRevoked {
            token_id,
            revoked_at,
        } => {
            if let Some(token) = state.tokens.get_mut(token_id) {
                token.revoked_at.get_or_insert(*revoked_at);
            }
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn create(id: u128, scope: Scope) -> Command {
        Command::Create {
            token_id: Uuid::from_u128(id),
            scope,
            secret_sha256: HASH.into(),
            description: "ci".into(),
        }
    }

    fn run(state: Tokens, command: &Command, now: Timestamp) -> (Tokens, Vec<Event>) {
        let events = decide(&state, command, now).unwrap();
        (events.iter().fold(state, evolve), events)
    }

    #[test]
    fn create_then_revoke_once() {
        let scope = Scope::Domain(DomainName::parse("example.com").unwrap());
        let (state, events) = run(Tokens::default(), &create(1, scope.clone()), 10);
        assert_eq!(events.len(), 1);
        let token = &state.tokens[&Uuid::from_u128(1)];
        assert_eq!(token.scope, scope);
        assert_eq!(token.revoked_at, None);
        assert!(matches!(
            decide(&state, &create(1, Scope::Admin), 11),
            Err(Error::AlreadyExists(_))
        ));
        let revoke = Command::Revoke {
            token_id: Uuid::from_u128(1),
        };
        let (state, events) = run(state, &revoke, 12);
        assert_eq!(
            events,
            vec![Event::TokenRevoked {
                token_id: Uuid::from_u128(1),
                revoked_at: 12
            }]
        );
        let (state, events) = run(state, &revoke, 13);
        assert!(events.is_empty());
        assert_eq!(state.tokens[&Uuid::from_u128(1)].revoked_at, Some(12));
        assert!(matches!(
            decide(
                &state,
                &Command::Revoke {
                    token_id: Uuid::from_u128(2)
                },
                14
            ),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn refuses_a_malformed_hash_and_long_descriptions() {
        let mut bad = create(1, Scope::Admin);
        if let Command::Create { secret_sha256, .. } = &mut bad {
            *secret_sha256 = HASH.to_uppercase();
        }
        assert!(matches!(
            decide(&Tokens::default(), &bad, 1),
            Err(Error::Invalid { .. })
        ));
        let mut long = create(1, Scope::Admin);
        if let Command::Create { description, .. } = &mut long {
            *description = "x".repeat(MAX_DESCRIPTION_LEN + 1);
        }
        assert!(decide(&Tokens::default(), &long, 1).is_err());
    }

    #[test]
    fn debug_output_leaves_the_hash_out() {
        let (state, _) = run(Tokens::default(), &create(1, Scope::Admin), 1);
        assert!(!format!("{state:?}").contains(HASH));
        assert!(!format!("{:?}", create(1, Scope::Admin)).contains(HASH));
    }

    #[test]
    fn scope_is_stored_as_admin_or_a_domain_object() {
        let json = serde_json::to_value(Scope::Admin).unwrap();
        assert_eq!(json, serde_json::json!("admin"));
        let json =
            serde_json::to_value(Scope::Domain(DomainName::parse("a.example").unwrap())).unwrap();
        assert_eq!(json, serde_json::json!({"domain": "a.example"}));
    }
}
