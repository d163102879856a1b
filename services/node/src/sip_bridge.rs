//! The SIP gateway's view of Dialtone: `dialtone_sip::Registry` implemented
//! over the domain and user actors.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

use dialtone_actors::{Meta, Provisioning};
use dialtone_domain::registration::{ContactChange, Register};
use dialtone_domain::{domain, user, DomainId, DomainName, UserId, UserName};
use dialtone_sip::backend::{
    BackendError, CurrentContact, Lookup, RegisterOutcome, RegisterRequest, Registry,
    UserCredentials,
};

/// Resolves `user@domain` to user ids (cached: a claim never points
/// elsewhere while it exists; a deleted user is found out through its actor
/// and evicted) and runs REGISTERs on the user actors.
pub struct ActorRegistry {
    provisioning: Provisioning,
    ids: RwLock<HashMap<(String, String), UserId>>,
}

/// Cached ids beyond this are dropped all at once (simple bound).
const ID_CACHE_CAPACITY: usize = 1_000_000;

impl ActorRegistry {
    pub fn new(provisioning: Provisioning) -> Self {
        ActorRegistry {
            provisioning,
            ids: RwLock::new(HashMap::new()),
        }
    }

    /// The domain's status and MD5 setting, and the id of `user` in it.
    async fn resolve(&self, domain: &str, user: &str) -> Result<Resolved, BackendError> {
        let Ok(domain_name) = DomainName::parse(domain) else {
            return Ok(Resolved::UnknownDomain);
        };
        let Ok(username) = UserName::parse(user) else {
            return Ok(Resolved::DomainOnly(self.domain_state(&domain_name).await?));
        };
        let key = (domain_name.as_str().to_owned(), user.to_owned());
        let cached = self
            .ids
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .copied();
        let domain_id = DomainId::for_name(&domain_name);
        let (state, id) = self
            .provisioning
            .directory()
            .query_domain(domain_id, move |r| {
                let state = DomainState {
                    status: r.state.status,
                    md5_allowed: r.state.settings.md5_allowed,
                };
                let id = match cached {
                    Some(id) => Some(id),
                    None => r.state.users.get(&username).copied(),
                };
                (state, id)
            })
            .await
            .map_err(unavailable)?;
        match id {
            Some(id) => {
                if cached.is_none() {
                    let mut ids = self.ids.write().unwrap_or_else(|p| p.into_inner());
                    if ids.len() >= ID_CACHE_CAPACITY {
                        ids.clear();
                    }
                    ids.insert(key, id);
                }
                Ok(Resolved::User(state, id))
            }
            None => Ok(Resolved::DomainOnly(state)),
        }
    }

    async fn domain_state(&self, name: &DomainName) -> Result<DomainState, BackendError> {
        self.provisioning
            .directory()
            .query_domain(DomainId::for_name(name), |r| DomainState {
                status: r.state.status,
                md5_allowed: r.state.settings.md5_allowed,
            })
            .await
            .map_err(unavailable)
    }

    fn evict(&self, domain: &str, user: &str) {
        self.ids
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(domain.to_ascii_lowercase(), user.to_owned()));
    }
}

#[derive(Debug, Clone, Copy)]
struct DomainState {
    status: domain::Status,
    md5_allowed: bool,
}

enum Resolved {
    UnknownDomain,
    DomainOnly(DomainState),
    User(DomainState, UserId),
}

fn unavailable(e: dialtone_actors::Error) -> BackendError {
    BackendError::Unavailable(e.to_string())
}

fn contacts_of(state: &user::User, now: i64) -> Vec<CurrentContact> {
    state
        .bindings
        .iter()
        .filter(|b| !b.is_expired(now))
        .map(|b| CurrentContact {
            uri: b.uri.clone(),
            expires_in_secs: b.seconds_left(now),
            q: b.q,
        })
        .collect()
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[async_trait::async_trait]
impl Registry for ActorRegistry {
    async fn credentials(&self, domain: &str, user: &str) -> Result<Lookup, BackendError> {
        let (state, id) = match self.resolve(domain, user).await? {
            Resolved::UnknownDomain => return Ok(Lookup::UnknownDomain),
            Resolved::DomainOnly(state) => (state, None),
            Resolved::User(state, id) => (state, Some(id)),
        };
        match state.status {
            domain::Status::Absent | domain::Status::Deleted => return Ok(Lookup::UnknownDomain),
            domain::Status::Suspended => return Ok(Lookup::DomainSuspended),
            domain::Status::Active => {}
        }
        let Some(id) = id else {
            return Ok(Lookup::UnknownUser);
        };
        let found = self
            .provisioning
            .directory()
            .query_user(id, move |r| {
                let u = r.state;
                match (&u.credentials, u.exists()) {
                    (Some(c), true) => Some(UserCredentials {
                        ha1_md5: state.md5_allowed.then(|| c.ha1_md5.clone()),
                        ha1_sha256: c.ha1_sha256.clone(),
                        disabled: !u.enabled,
                    }),
                    _ => None,
                }
            })
            .await
            .map_err(unavailable)?;
        match found {
            Some(credentials) => Ok(Lookup::Found(credentials)),
            None => {
                self.evict(domain, user);
                Ok(Lookup::UnknownUser)
            }
        }
    }

    async fn register(&self, request: RegisterRequest) -> Result<RegisterOutcome, BackendError> {
        let Resolved::User(_, id) = self.resolve(&request.domain, &request.user).await? else {
            return Err(BackendError::Internal(format!(
                "{}@{} is gone",
                request.user, request.domain
            )));
        };
        let command = user::Command::Register(Box::new(Register {
            call_id: request.call_id.clone(),
            cseq: request.cseq,
            changes: request
                .changes
                .into_iter()
                .map(|c| ContactChange {
                    uri: c.uri,
                    expires_secs: c.expires_secs,
                    q: c.q,
                    params: c.params,
                })
                .collect(),
            remove_all: request.remove_all,
            source: request.source.to_string(),
            transport: request.transport.as_str().to_owned(),
            user_agent: request.user_agent,
        }));
        // The SIP Call-ID is the events' correlation id, not a request id:
        // REGISTER retransmissions are absorbed by the transaction layer.
        let result = self
            .provisioning
            .directory()
            .execute_user(
                id,
                command,
                Meta {
                    correlation_id: Some(request.call_id),
                    ..Meta::default()
                },
            )
            .await;
        match result {
            Ok(view) => Ok(RegisterOutcome::Ok {
                contacts: contacts_of(&view.state, micros(SystemTime::now())),
            }),
            Err(dialtone_actors::Error::Domain(dialtone_domain::Error::OutOfOrder(_))) => {
                Ok(RegisterOutcome::CSeqOutOfOrder)
            }
            Err(dialtone_actors::Error::Domain(e)) => {
                self.evict(&request.domain, &request.user);
                Err(BackendError::Internal(e.to_string()))
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn contacts(
        &self,
        domain: &str,
        user: &str,
    ) -> Result<Vec<CurrentContact>, BackendError> {
        let Resolved::User(_, id) = self.resolve(domain, user).await? else {
            return Ok(Vec::new());
        };
        self.provisioning
            .directory()
            .query_user(id, |r| contacts_of(r.state, micros(SystemTime::now())))
            .await
            .map_err(unavailable)
    }
}
