//! The `Domain` aggregate: one SIP domain, its settings, its status and the
//! uniqueness of user names inside it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{DomainId, DomainName, Error, Result, Timestamp, UserId, UserName};

/// Settings an operator can change on a domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Free text for operators.
    #[serde(default)]
    pub description: String,
    /// Whether users of this domain may call users of other domains.
    #[serde(default)]
    pub allow_cross_domain_calls: bool,
    /// Whether MD5 digest authentication is offered (SHA-256 always is).
    #[serde(default = "default_true")]
    pub md5_allowed: bool,
}

fn default_true() -> bool {
    true
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            description: String::new(),
            allow_cross_domain_calls: false,
            md5_allowed: true,
        }
    }
}

impl Settings {
    pub const MAX_DESCRIPTION_LEN: usize = 1024;

    fn validate(&self) -> Result<()> {
        if self.description.chars().count() > Self::MAX_DESCRIPTION_LEN {
            return Err(Error::invalid(
                "description",
                format!("at most {} characters", Self::MAX_DESCRIPTION_LEN),
            ));
        }
        Ok(())
    }
}

/// A partial update of [`Settings`]: `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingsPatch {
    pub description: Option<String>,
    pub allow_cross_domain_calls: Option<bool>,
    pub md5_allowed: Option<bool>,
}

impl SettingsPatch {
    fn apply(&self, current: &Settings) -> Settings {
        Settings {
            description: self
                .description
                .clone()
                .unwrap_or_else(|| current.description.clone()),
            allow_cross_domain_calls: self
                .allow_cross_domain_calls
                .unwrap_or(current.allow_cross_domain_calls),
            md5_allowed: self.md5_allowed.unwrap_or(current.md5_allowed),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Never created (an empty stream).
    #[default]
    Absent,
    Active,
    Suspended,
    Deleted,
}

/// The state of a domain, rebuilt by folding its events with [`evolve`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    pub id: Option<DomainId>,
    pub name: Option<DomainName>,
    pub status: Status,
    pub settings: Settings,
    pub suspend_reason: Option<String>,
    /// User names claimed in this domain and the user holding each.
    pub users: BTreeMap<UserName, UserId>,
    pub created_at: Timestamp,
}

impl Domain {
    /// True while the domain exists (active or suspended).
    pub fn exists(&self) -> bool {
        matches!(self.status, Status::Active | Status::Suspended)
    }

    fn label(&self) -> String {
        match &self.name {
            Some(name) => format!("domain {name}"),
            None => "domain".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Create {
        name: DomainName,
        settings: Settings,
    },
    Update {
        patch: SettingsPatch,
    },
    Suspend {
        reason: Option<String>,
    },
    Resume,
    Delete,
    /// Reserve `username` for `user_id` (the user stream exists already).
    ClaimUserName {
        username: UserName,
        user_id: UserId,
    },
    /// Free `username` after its user was deleted.
    ReleaseUserName {
        username: UserName,
        user_id: UserId,
    },
    /// The SIP gateway locked a source address out after failed digest
    /// authentications against this domain (a security event).
    RecordLockout(Lockout),
}

/// What a lock-out covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockoutScope {
    /// One user name from one source address.
    User,
    /// Every request from the source address.
    Source,
}

/// A lock-out of a source address by the SIP gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockout {
    /// The source IP address, as text.
    pub source: String,
    pub scope: LockoutScope,
    /// The user name tried (for [`LockoutScope::User`]); as sent, it need
    /// not be a user of the domain (a scanner's guess).
    pub username: Option<String>,
    /// Failures counted in the gateway's window.
    pub failures: u32,
    /// How long the source is refused.
    pub duration_secs: u32,
}

/// Longest user name recorded in a lock-out (longer guesses are cut).
pub const MAX_LOCKOUT_USERNAME_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    DomainCreated {
        domain_id: DomainId,
        name: DomainName,
        settings: Settings,
        created_at: Timestamp,
    },
    DomainUpdated {
        settings: Settings,
    },
    DomainSuspended {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    DomainResumed {},
    DomainDeleted {},
    UserNameClaimed {
        username: UserName,
        user_id: UserId,
    },
    UserNameReleased {
        username: UserName,
        user_id: UserId,
    },
    /// A source address is refused by the SIP gateway until `locked_until`
    /// after `failures` failed authentications (category `security`).
    SourceLockedOut {
        source: String,
        scope: LockoutScope,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        failures: u32,
        locked_at: Timestamp,
        locked_until: Timestamp,
    },
}

/// Decides what a command does to a domain. `now` is the caller's clock.
pub fn decide(state: &Domain, command: &Command, now: Timestamp) -> Result<Vec<Event>> {
    use Command as C;
    match command {
        C::Create { name, settings } => {
            if state.exists() {
                return Err(Error::AlreadyExists(format!("domain {name}")));
            }
            settings.validate()?;
            Ok(vec![Event::DomainCreated {
                domain_id: DomainId::for_name(name),
                name: name.clone(),
                settings: settings.clone(),
                created_at: now,
            }])
        }
        C::Update { patch } => {
            require_exists(state)?;
            let settings = patch.apply(&state.settings);
            settings.validate()?;
            if settings == state.settings {
                return Ok(vec![]);
            }
            Ok(vec![Event::DomainUpdated { settings }])
        }
        C::Suspend { reason } => {
            require_exists(state)?;
            if state.status == Status::Suspended {
                return Ok(vec![]);
            }
            if reason.as_ref().is_some_and(|r| r.chars().count() > 256) {
                return Err(Error::invalid("reason", "at most 256 characters"));
            }
            Ok(vec![Event::DomainSuspended {
                reason: reason.clone(),
            }])
        }
        C::Resume => {
            require_exists(state)?;
            if state.status == Status::Active {
                return Ok(vec![]);
            }
            Ok(vec![Event::DomainResumed {}])
        }
        C::Delete => {
            require_exists(state)?;
            if !state.users.is_empty() {
                return Err(Error::FailedPrecondition(format!(
                    "{} still has {} user(s); delete them first",
                    state.label(),
                    state.users.len()
                )));
            }
            Ok(vec![Event::DomainDeleted {}])
        }
        C::ClaimUserName { username, user_id } => {
            match state.status {
                Status::Absent => return Err(Error::NotFound(state.label())),
                Status::Deleted => {
                    return Err(Error::FailedPrecondition(format!(
                        "{} is deleted",
                        state.label()
                    )))
                }
                Status::Suspended => {
                    return Err(Error::FailedPrecondition(format!(
                        "{} is suspended",
                        state.label()
                    )))
                }
                Status::Active => {}
            }
            match state.users.get(username) {
                Some(holder) if holder == user_id => Ok(vec![]),
                Some(_) => Err(Error::AlreadyExists(format!(
                    "user {}@{}",
                    username,
                    state.name.as_ref().map(DomainName::as_str).unwrap_or("?")
                ))),
                None => Ok(vec![Event::UserNameClaimed {
                    username: username.clone(),
                    user_id: *user_id,
                }]),
            }
        }
        C::ReleaseUserName { username, user_id } => match state.users.get(username) {
            Some(holder) if holder == user_id => Ok(vec![Event::UserNameReleased {
                username: username.clone(),
                user_id: *user_id,
            }]),
            _ => Ok(vec![]),
        },
        C::RecordLockout(lockout) => {
            require_exists(state)?;
            if lockout.source.parse::<std::net::IpAddr>().is_err() {
                return Err(Error::invalid("source", "must be an IP address"));
            }
            // The user name comes from the network: keep it short and
            // printable.
            let username = lockout.username.as_ref().map(|u| {
                u.chars()
                    .filter(|c| !c.is_control())
                    .take(MAX_LOCKOUT_USERNAME_LEN)
                    .collect::<String>()
            });
            Ok(vec![Event::SourceLockedOut {
                source: lockout.source.clone(),
                scope: lockout.scope,
                username,
                failures: lockout.failures,
                locked_at: now,
                locked_until: now + i64::from(lockout.duration_secs) * 1_000_000,
            }])
        }
    }
}

fn require_exists(state: &Domain) -> Result<()> {
    if state.exists() {
        Ok(())
    } else {
        Err(Error::NotFound(state.label()))
    }
}

/// Applies one event to the state.
pub fn evolve(mut state: Domain, event: &Event) -> Domain {
    match event {
        Event::DomainCreated {
            domain_id,
            name,
            settings,
            created_at,
        } => {
            state.id = Some(*domain_id);
            state.name = Some(name.clone());
            state.status = Status::Active;
            state.settings = settings.clone();
            state.suspend_reason = None;
            state.users.clear();
            state.created_at = *created_at;
        }
        Event::DomainUpdated { settings } => state.settings = settings.clone(),
        Event::DomainSuspended { reason } => {
            state.status = Status::Suspended;
            state.suspend_reason = reason.clone();
        }
        Event::DomainResumed {} => {
            state.status = Status::Active;
            state.suspend_reason = None;
        }
        Event::DomainDeleted {} => {
            state.status = Status::Deleted;
            // The reason of a suspension ends with it, as on resume.
            state.suspend_reason = None;
        }
        Event::UserNameClaimed { username, user_id } => {
            state.users.insert(username.clone(), *user_id);
        }
        Event::UserNameReleased { username, user_id } => {
            if state.users.get(username) == Some(user_id) {
                state.users.remove(username);
            }
        }
        // A record for audits; the domain's state does not change.
        Event::SourceLockedOut { .. } => {}
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> DomainName {
        DomainName::parse(s).unwrap()
    }

    fn given(events: &[Event]) -> Domain {
        events.iter().fold(Domain::default(), evolve)
    }

    fn created() -> Vec<Event> {
        decide(
            &Domain::default(),
            &Command::Create {
                name: name("example.com"),
                settings: Settings::default(),
            },
            1,
        )
        .unwrap()
    }

    #[test]
    fn create_then_create_again_is_already_exists() {
        let state = given(&created());
        assert_eq!(state.status, Status::Active);
        let err = decide(
            &state,
            &Command::Create {
                name: name("example.com"),
                settings: Settings::default(),
            },
            2,
        )
        .unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(_)));
    }

    #[test]
    fn claims_are_unique_and_idempotent() {
        let state = given(&created());
        let alice = UserName::parse("alice").unwrap();
        let (u1, u2) = (
            UserId(uuid::Uuid::from_u128(1)),
            UserId(uuid::Uuid::from_u128(2)),
        );
        let claim = |u| Command::ClaimUserName {
            username: alice.clone(),
            user_id: u,
        };
        let events = decide(&state, &claim(u1), 2).unwrap();
        let state = events.iter().fold(state, evolve);
        assert_eq!(decide(&state, &claim(u1), 3).unwrap(), vec![]);
        assert!(matches!(
            decide(&state, &claim(u2), 3),
            Err(Error::AlreadyExists(_))
        ));
    }

    #[test]
    fn suspended_domain_refuses_claims_and_delete_needs_no_users() {
        let mut events = created();
        events.push(Event::DomainSuspended { reason: None });
        let state = given(&events);
        let cmd = Command::ClaimUserName {
            username: UserName::parse("bob").unwrap(),
            user_id: UserId(uuid::Uuid::from_u128(9)),
        };
        assert!(matches!(
            decide(&state, &cmd, 5),
            Err(Error::FailedPrecondition(_))
        ));
        let mut events = created();
        events.push(Event::UserNameClaimed {
            username: UserName::parse("bob").unwrap(),
            user_id: UserId(uuid::Uuid::from_u128(9)),
        });
        let state = given(&events);
        assert!(matches!(
            decide(&state, &Command::Delete, 5),
            Err(Error::FailedPrecondition(_))
        ));
    }

    #[test]
    fn deleted_domain_can_be_created_again() {
        let mut events = created();
        events.push(Event::DomainDeleted {});
        let state = given(&events);
        assert!(matches!(
            decide(&state, &Command::Resume, 3),
            Err(Error::NotFound(_))
        ));
        let again = decide(
            &state,
            &Command::Create {
                name: name("example.com"),
                settings: Settings::default(),
            },
            4,
        )
        .unwrap();
        assert_eq!(again.len(), 1);
    }
}
