//! Facts that actors publish for fast, lock-light reads on hot paths (the
//! SIP gateway asks for a user's credentials twice per registration).
//!
//! Only an aggregate's own actor writes its facts, right after loading and
//! right after each commit, before replying: a caller that got a reply reads
//! facts at least as new as that reply. Facts survive passivation (only the
//! actor changes the aggregate, so they stay true); a reader that finds none
//! asks the actor, which loads and publishes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use dialtone_domain::{domain, user, DomainId, DomainName, UserId, UserName};

/// What the SIP path needs of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainFacts {
    pub name: Option<DomainName>,
    pub status: domain::Status,
    pub md5_allowed: bool,
    pub allow_cross_domain_calls: bool,
    /// The user names claimed in the domain.
    pub users: HashMap<UserName, UserId>,
}

/// What the SIP path needs of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFacts {
    pub exists: bool,
    pub enabled: bool,
    pub domain_id: Option<DomainId>,
    pub username: Option<UserName>,
    pub ha1_md5: String,
    pub ha1_sha256: String,
    /// The registered contacts, for routing a call without a message to
    /// the actor (post-dial delay). May include contacts that expired since
    /// the last commit: readers check `expires_at`.
    pub contacts: Vec<ContactFact>,
}

/// Where a registered contact is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactFact {
    pub uri: String,
    /// `ip:port` the REGISTER came from.
    pub source: String,
    /// `UDP`, `TCP`.
    pub transport: String,
    pub expires_at: dialtone_domain::Timestamp,
}

impl UserFacts {
    pub fn of(state: &user::User) -> Self {
        UserFacts {
            exists: state.exists(),
            enabled: state.enabled,
            domain_id: state.domain_id,
            username: state.username.clone(),
            ha1_md5: state
                .credentials
                .as_ref()
                .map(|c| c.ha1_md5.clone())
                .unwrap_or_default(),
            ha1_sha256: state
                .credentials
                .as_ref()
                .map(|c| c.ha1_sha256.clone())
                .unwrap_or_default(),
            contacts: state
                .bindings
                .iter()
                .map(|b| ContactFact {
                    uri: b.uri.clone(),
                    source: b.source.clone(),
                    transport: b.transport.clone(),
                    expires_at: b.expires_at,
                })
                .collect(),
        }
    }
}

/// The published facts of every aggregate that was loaded on this node.
#[derive(Default)]
pub struct Facts {
    domains: RwLock<HashMap<DomainId, DomainFacts>>,
    users: RwLock<HashMap<UserId, Arc<UserFacts>>>,
}

impl Facts {
    /// Publishes a domain's whole state (after loading). A domain that was
    /// never created is not published, so that requests for made-up domains
    /// cannot grow this map.
    pub fn publish_domain(&self, id: DomainId, state: &domain::Domain) {
        if state.status == domain::Status::Absent {
            return;
        }
        let facts = DomainFacts {
            name: state.name.clone(),
            status: state.status,
            md5_allowed: state.settings.md5_allowed,
            allow_cross_domain_calls: state.settings.allow_cross_domain_calls,
            users: state.users.iter().map(|(n, u)| (n.clone(), *u)).collect(),
        };
        self.domains
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, facts);
    }

    /// Applies a domain's committed events (cheaper than a full copy for a
    /// domain with many users).
    pub fn apply_domain_events(
        &self,
        id: DomainId,
        state: &domain::Domain,
        events: &[domain::Event],
    ) {
        let mut domains = self.domains.write().unwrap_or_else(|p| p.into_inner());
        let Some(facts) = domains.get_mut(&id) else {
            drop(domains);
            self.publish_domain(id, state);
            return;
        };
        facts.name = state.name.clone();
        facts.status = state.status;
        facts.md5_allowed = state.settings.md5_allowed;
        facts.allow_cross_domain_calls = state.settings.allow_cross_domain_calls;
        for event in events {
            match event {
                domain::Event::UserNameClaimed { username, user_id } => {
                    facts.users.insert(username.clone(), *user_id);
                }
                domain::Event::UserNameReleased { username, user_id }
                    if facts.users.get(username) == Some(user_id) =>
                {
                    facts.users.remove(username);
                }
                domain::Event::DomainCreated { .. } => facts.users.clear(),
                _ => {}
            }
        }
    }

    pub fn publish_user(&self, id: UserId, state: &user::User) {
        let facts = Arc::new(UserFacts::of(state));
        let mut users = self.users.write().unwrap_or_else(|p| p.into_inner());
        match users.get(&id) {
            Some(current) if **current == *facts => {}
            _ => {
                users.insert(id, facts);
            }
        }
    }

    /// The domain's status and settings, and the id `username` has in it:
    /// `None` when the domain's actor has not published yet.
    pub fn domain_and_user(
        &self,
        id: DomainId,
        username: Option<&UserName>,
    ) -> Option<(domain::Status, bool, bool, Option<UserId>)> {
        let domains = self.domains.read().unwrap_or_else(|p| p.into_inner());
        let facts = domains.get(&id)?;
        Some((
            facts.status,
            facts.md5_allowed,
            facts.allow_cross_domain_calls,
            username.and_then(|u| facts.users.get(u).copied()),
        ))
    }

    pub fn user(&self, id: UserId) -> Option<Arc<UserFacts>> {
        self.users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }
}
