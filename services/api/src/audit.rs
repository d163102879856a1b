//! `AuditService`: the state of a user or domain at a version or a moment,
//! rebuilt by replaying its stream from the start with the aggregate's own
//! `evolve` (the log is the truth; snapshots are not used, as they only
//! hold the latest state).
//!
//! Call detail records (`ListCalls`) are read from the log too; see
//! [`crate::cdr`].

use std::sync::Arc;

use dialtone_actors::Provisioning;
use dialtone_domain::event::Upcasters;
use dialtone_domain::{domain, user, Event};
use dialtone_eventlog::{RecordedEvent, SharedStore};
use tonic::{Request, Response, Status};

use crate::payload::{binding, presence, settings, timestamp};
use crate::pb::audit_service_server::AuditService;
use crate::pb::{
    self, get_domain_state_at_request, get_user_state_at_request, DomainStateAt,
    GetDomainStateAtRequest, GetUserStateAtRequest, ListCallsRequest, ListCallsResponse,
    UserStateAt,
};
use crate::{auth, cdr, lookup, status};

/// Events read per call while replaying.
const REPLAY_PAGE: usize = 1000;
/// Most user names listed with a domain's state.
pub const MAX_LISTED_USERS: usize = 10_000;

pub struct AuditApi {
    store: SharedStore,
    provisioning: Option<Provisioning>,
    upcasters: Arc<Upcasters>,
}

impl AuditApi {
    pub fn new(store: SharedStore) -> Self {
        AuditApi {
            store,
            provisioning: None,
            upcasters: Arc::new(Upcasters::builtin().clone()),
        }
    }

    /// Resolves user addresses through the domain actors (without it, from
    /// the log).
    pub fn with_provisioning(mut self, provisioning: Provisioning) -> Self {
        self.provisioning = Some(provisioning);
        self
    }

    pub fn with_upcasters(mut self, upcasters: Arc<Upcasters>) -> Self {
        self.upcasters = upcasters;
        self
    }
}

/// Up to where a replay goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    Latest,
    /// Through the event with this stream version.
    Version(u64),
    /// Through the events that occurred at or before this time (µs): the
    /// replay stops at the first event after it.
    Time(i64),
}

/// The last event folded into a replayed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Folded {
    pub version: u64,
    pub position: u64,
    pub occurred_at_us: i64,
}

/// Replays `stream` from its first event up to `until`, decoding each event
/// with `upcasters` and folding it with `fold`. Returns the state and the
/// last event folded (`None` when none was). A version the stream has not
/// reached is `OUT_OF_RANGE`.
pub async fn replay<S: Default>(
    store: &SharedStore,
    upcasters: &Upcasters,
    stream: &str,
    until: Until,
    mut fold: impl FnMut(S, Event, &RecordedEvent) -> Result<S, Status>,
) -> Result<(S, Option<Folded>), Status> {
    let mut state = S::default();
    let mut folded = None;
    let mut from = 0;
    'replay: loop {
        let page = store
            .read_stream(stream, from, REPLAY_PAGE)
            .await
            .map_err(status::from_store)?;
        for e in &page {
            let past = match until {
                Until::Latest => false,
                Until::Version(v) => e.version > v,
                Until::Time(t) => e.occurred_at_us > t,
            };
            if past {
                break 'replay;
            }
            let event = upcasters
                .decode(&e.event_type, e.schema_version, &e.data)
                .map_err(|err| {
                    Status::internal(format!(
                        "stream {stream}: the event at version {} (position {}) cannot be \
                         read: {err}",
                        e.version, e.position
                    ))
                })?;
            state = fold(state, event, e)?;
            folded = Some(Folded {
                version: e.version,
                position: e.position,
                occurred_at_us: e.occurred_at_us,
            });
        }
        match page.last() {
            Some(last) if page.len() == REPLAY_PAGE => from = last.version + 1,
            _ => break,
        }
    }
    if let Until::Version(v) = until {
        if folded.map(|f| f.version) != Some(v) {
            let last = match folded {
                Some(f) => format!("its last version is {}", f.version),
                None => "it has no events".to_owned(),
            };
            return Err(Status::out_of_range(format!(
                "invalid version: stream {stream} has no version {v} ({last})"
            )));
        }
    }
    Ok((state, folded))
}

fn wrong_stream(stream: &str, e: &RecordedEvent) -> Status {
    Status::internal(format!(
        "stream {stream}: the event at version {} ({}) does not belong to this kind of stream",
        e.version, e.event_type
    ))
}

fn time_us(field: &str, ts: &prost_types::Timestamp) -> Result<i64, Status> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(status::invalid(
            field,
            format!("nanos must be between 0 and 999999999, got {}", ts.nanos),
        ));
    }
    ts.seconds
        .checked_mul(1_000_000)
        .and_then(|us| us.checked_add(i64::from(ts.nanos / 1000)))
        .ok_or_else(|| status::invalid(field, "out of range"))
}

fn point(stream: String, folded: Option<Folded>, current_version: Option<u64>) -> pb::StatePoint {
    pb::StatePoint {
        stream,
        has_events: folded.is_some(),
        version: folded.map(|f| f.version).unwrap_or_default(),
        position: folded.map(|f| f.position).unwrap_or_default(),
        occurred_at: folded.and_then(|f| timestamp(f.occurred_at_us)),
        current_version,
    }
}

/// A user's state as shown by the audit: credentials only as the time they
/// were set.
pub fn user_state(u: &user::User) -> pb::UserState {
    let status = match u.status {
        user::Status::Absent => pb::UserStatus::Absent,
        user::Status::Active => pb::UserStatus::Active,
        user::Status::Deleted => pb::UserStatus::Deleted,
    };
    pb::UserState {
        user_id: u.id.map(|id| id.to_string()).unwrap_or_default(),
        domain_id: u.domain_id.map(|id| id.to_string()).unwrap_or_default(),
        domain: u.domain.as_ref().map(|d| d.to_string()).unwrap_or_default(),
        username: u
            .username
            .as_ref()
            .map(|n| n.to_string())
            .unwrap_or_default(),
        address: if u.username.is_some() {
            u.address()
        } else {
            String::new()
        },
        status: status as i32,
        display_name: u.display_name.clone(),
        caller_id: u.caller_id.clone(),
        max_contacts: u.max_contacts,
        enabled: u.enabled,
        created_at: timestamp(u.created_at),
        password_set_at: u.credentials.as_ref().and_then(|c| timestamp(c.set_at)),
        contacts: u.bindings.iter().map(binding).collect(),
        presence: presence(u.presence) as i32,
        forwarding: Some(crate::convert::forwarding(&u.forwarding)),
        dnd: u.dnd,
        mailbox: Some(mailbox_state(&u.mailbox)),
    }
}

/// A mailbox as an audit shows it: settings, counts, messages, the PIN only
/// as whether there is one.
pub fn mailbox_state(m: &dialtone_domain::mailbox::Mailbox) -> pb::MailboxState {
    let (new, saved) = m.counts();
    pb::MailboxState {
        enabled: m.enabled,
        settings: Some(crate::payload::mailbox_settings(m.settings)),
        has_pin: m.pin.is_some(),
        failed_pin_attempts: m.failed_pin_attempts,
        locked_until: m.locked_until.and_then(timestamp),
        greeting: m.greeting.as_ref().map(|g| pb::Greeting {
            audio_id: g.audio.to_string(),
            duration_ms: g.duration_ms,
        }),
        new_messages: new,
        saved_messages: saved,
        messages: m.messages.iter().map(crate::voicemail::message).collect(),
    }
}

pub fn domain_state(d: &domain::Domain, include_users: bool) -> pb::DomainState {
    let status = match d.status {
        domain::Status::Absent => pb::DomainStatus::Unspecified,
        domain::Status::Active => pb::DomainStatus::Active,
        domain::Status::Suspended => pb::DomainStatus::Suspended,
        domain::Status::Deleted => pb::DomainStatus::Deleted,
    };
    let users = if include_users {
        d.users
            .iter()
            .take(MAX_LISTED_USERS)
            .map(|(name, id)| pb::UserNameHolder {
                username: name.to_string(),
                user_id: id.to_string(),
            })
            .collect()
    } else {
        Vec::new()
    };
    pb::DomainState {
        domain_id: d.id.map(|id| id.to_string()).unwrap_or_default(),
        name: d.name.as_ref().map(|n| n.to_string()).unwrap_or_default(),
        status: status as i32,
        settings: Some(settings(&d.settings)),
        suspend_reason: d.suspend_reason.clone().unwrap_or_default(),
        created_at: timestamp(d.created_at),
        user_count: u32::try_from(d.users.len()).unwrap_or(u32::MAX),
        users,
        users_truncated: include_users && d.users.len() > MAX_LISTED_USERS,
        ring_groups: d
            .ring_groups
            .iter()
            .map(|(name, group)| pb::RingGroup {
                address: d
                    .name
                    .as_ref()
                    .map(|domain| format!("{name}@{domain}"))
                    .unwrap_or_default(),
                ..crate::convert::ring_group_settings(group)
            })
            .collect(),
        conference_rooms: d
            .conference_rooms
            .iter()
            .map(|(name, room)| pb::ConferenceRoom {
                address: d
                    .name
                    .as_ref()
                    .map(|domain| format!("{name}@{domain}"))
                    .unwrap_or_default(),
                ..crate::convert::room_settings(room)
            })
            .collect(),
        trunks: d
            .trunks
            .iter()
            .map(|(name, trunk)| pb::Trunk {
                address: d
                    .name
                    .as_ref()
                    .map(|domain| format!("{name}@{domain}"))
                    .unwrap_or_default(),
                ..crate::payload::trunk_settings(trunk)
            })
            .collect(),
        dial_plan: Some(pb::DialPlan {
            domain: d.name.as_ref().map(|n| n.to_string()).unwrap_or_default(),
            ..crate::payload::dial_plan(&d.dial_plan)
        }),
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn get_user_state_at(
        &self,
        request: Request<GetUserStateAtRequest>,
    ) -> Result<Response<UserStateAt>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let until = match &req.at {
            None => Until::Latest,
            Some(get_user_state_at_request::At::Version(v)) => Until::Version(*v),
            Some(get_user_state_at_request::At::Time(t)) => Until::Time(time_us("time", t)?),
        };
        let id =
            lookup::user_id(self.provisioning.as_ref(), &self.store, "user", &req.user).await?;
        let stream = id.stream();
        if access.domain().is_some()
            && !access.sees_id(auth::stream_domain(&self.store, &stream).await?)
        {
            let user = crate::provisioning::user_ref(&req.user)?;
            return Err(auth::not_found_user(&user));
        }
        let (state, folded) = replay(
            &self.store,
            &self.upcasters,
            &stream,
            until,
            |state: user::User, event, e| match event {
                Event::User(event) => Ok(user::evolve(state, &event)),
                Event::Domain(_) | Event::Token(_) | Event::Conference(_) | Event::Number(_) => {
                    Err(wrong_stream(&stream, e))
                }
            },
        )
        .await?;
        let current = self
            .store
            .stream_version(&stream)
            .await
            .map_err(status::from_store)?;
        Ok(Response::new(UserStateAt {
            at: Some(point(stream, folded, current)),
            state: Some(user_state(&state)),
        }))
    }

    async fn get_domain_state_at(
        &self,
        request: Request<GetDomainStateAtRequest>,
    ) -> Result<Response<DomainStateAt>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let until = match &req.at {
            None => Until::Latest,
            Some(get_domain_state_at_request::At::Version(v)) => Until::Version(*v),
            Some(get_domain_state_at_request::At::Time(t)) => Until::Time(time_us("time", t)?),
        };
        let id = lookup::domain_id("domain", &req.domain)?;
        let stream = id.stream();
        let current = self
            .store
            .stream_version(&stream)
            .await
            .map_err(status::from_store)?;
        if current.is_none() || !access.sees(id) {
            return Err(Status::not_found(format!(
                "domain {} not found",
                req.domain.trim()
            )));
        }
        let (state, folded) = replay(
            &self.store,
            &self.upcasters,
            &stream,
            until,
            |state: domain::Domain, event, e| match event {
                Event::Domain(event) => Ok(domain::evolve(state, &event)),
                Event::User(_) | Event::Token(_) | Event::Conference(_) | Event::Number(_) => {
                    Err(wrong_stream(&stream, e))
                }
            },
        )
        .await?;
        Ok(Response::new(DomainStateAt {
            at: Some(point(stream, folded, current)),
            state: Some(domain_state(&state, req.include_users)),
        }))
    }

    async fn list_calls(
        &self,
        request: Request<ListCallsRequest>,
    ) -> Result<Response<ListCallsResponse>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let domain = lookup::domain_id("domain", &req.domain)?;
        if !access.sees(domain) {
            return Err(Status::not_found(format!(
                "domain {} not found",
                req.domain.trim()
            )));
        }
        let from = match &req.from_time {
            Some(t) => time_us("from_time", t)?,
            None => 0,
        };
        let to = match &req.to_time {
            Some(t) => time_us("to_time", t)?,
            None => i64::MAX,
        };
        if from > to {
            return Err(status::invalid(
                "from_time",
                "must not be after to_time (the range is [from_time, to_time))",
            ));
        }
        let page_size = match usize::try_from(req.page_size).unwrap_or(usize::MAX) {
            0 => cdr::DEFAULT_PAGE_SIZE,
            n if n > cdr::MAX_PAGE_SIZE => {
                return Err(status::invalid(
                    "page_size",
                    format!("at most {}, got {n}", cdr::MAX_PAGE_SIZE),
                ))
            }
            n => n,
        };
        let token = req.page_token.trim();
        let resume_at = if token.is_empty() {
            None
        } else {
            match token.parse::<u64>() {
                Ok(position) if position > 0 => Some(position),
                _ => {
                    return Err(status::invalid(
                        "page_token",
                        "not a token from a previous ListCalls response",
                    ))
                }
            }
        };
        // Records of a deleted domain stay listable: the domain must only
        // have existed.
        let exists = self
            .store
            .stream_version(&domain.stream())
            .await
            .map_err(status::from_store)?
            .is_some();
        if !exists {
            return Err(Status::not_found(format!(
                "domain {} not found",
                req.domain.trim()
            )));
        }
        let query = cdr::Query {
            domain,
            from,
            to,
            page_size,
            resume_at,
        };
        let page = cdr::list(&self.store, &self.upcasters, &query).await?;
        Ok(Response::new(ListCallsResponse {
            calls: page.calls,
            next_page_token: page.next.map(|p| p.to_string()).unwrap_or_default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use dialtone_domain::mailbox::{AudioId, Greeting, Mailbox, Message, PinHash};

    use super::*;

    #[test]
    fn an_audited_mailbox_shows_settings_counts_and_messages_but_never_the_pin_hash() {
        let pin = PinHash::derive("4321", [3; 16]).unwrap();
        let mailbox = Mailbox {
            enabled: true,
            pin: Some(pin.clone()),
            greeting: Some(Greeting {
                audio: AudioId::from_random([1; 16]),
                duration_ms: 3_000,
            }),
            failed_pin_attempts: 2,
            messages: vec![
                Message {
                    message_id: AudioId::from_random([2; 16]),
                    from: "bob@example.com".into(),
                    left_at: 1_800_000_000_000_000,
                    duration_ms: 4_000,
                    read: true,
                },
                Message {
                    message_id: AudioId::from_random([4; 16]),
                    from: "carol@example.com".into(),
                    left_at: 1_800_000_001_000_000,
                    duration_ms: 5_000,
                    read: false,
                },
            ],
            ..Mailbox::default()
        };
        let shown = mailbox_state(&mailbox);
        assert!(shown.enabled && shown.has_pin);
        assert_eq!(shown.failed_pin_attempts, 2);
        assert_eq!((shown.new_messages, shown.saved_messages), (1, 1));
        assert_eq!(shown.messages.len(), 2);
        assert_eq!(
            shown.messages[0].message_id,
            mailbox.messages[0].message_id.to_string()
        );
        assert_eq!(shown.greeting.as_ref().map(|g| g.duration_ms), Some(3_000));
        let debug = format!("{shown:?}");
        let hash = pin.as_str().rsplit('$').next().unwrap();
        assert!(!debug.contains(hash), "{debug}");
        assert!(!debug.contains("sha256$"), "{debug}");
    }
}
