//! The SIP gateway's view of Dialtone: `dialtone_sip::SipBackend` implemented
//! over the domain and user actors.
//!
//! It also feeds the gateway's subscriptions (presence, dialog,
//! message-summary): a task follows the event log live and hands every
//! recorded `PresenceChanged` and call step of a watched user to the
//! gateway's `ResourceWatcher`, so a NOTIFY shows what is recorded, never
//! more; and a box's new counts, with its owner's bindings, when the box
//! asks for unsolicited message-waiting NOTIFYs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dialtone_actors::{FlowFact, Flows, Meta, Provisioning, UserFacts};
use dialtone_domain::call::{self, CallStep as Step};
use dialtone_domain::event::{category_of, EventCategory};
use dialtone_domain::names::UserAddress;
use dialtone_domain::registration::{ContactChange, Key, Register};
use dialtone_domain::routing::Unrouted;
use dialtone_domain::schedule::TimeZone;
use dialtone_domain::user::Presence;
use dialtone_domain::{domain, routing, user, DomainId, DomainName, UserId, UserName};
use dialtone_eventlog::{RecordedEvent, SharedStore};
use dialtone_sip::auth::digest::Algorithm;
use dialtone_sip::backend::{
    Availability, BackendError, CallCause, CallDirection, CallPhase, CallRecord, CallRoute,
    CallState, CallStep, CurrentContact, DigestAlgorithms, Diversion, DiversionReason,
    FeatureOutcome, HangupSide, Lookup, MessageCounts, MessageWaiting, NextSteps, RegisterOutcome,
    RegisterRequest, ResourceChange, ResourceState, ResourceWatcher, RoutePlan, RouteStep,
    RouteTarget, SipBackend, SkippedForward, Transport, UserCredentials, Watch,
};
use dialtone_sip::{ConnectionId, Flow};
use futures::StreamExt;

mod feature_codes;

/// Resolves `user@domain` and reads credentials from the facts the actors
/// publish (no actor message on the hot path once an aggregate was loaded),
/// and runs REGISTERs on the user actors.
pub struct ActorBackend {
    provisioning: Provisioning,
    watched: Arc<Watched>,
    routing_limits: routing::Limits,
    schedule_clock: Option<ScheduleClock>,
    /// How many calls each round-robin ring group has started: where its
    /// next call starts. In memory only (a restart starts each group at
    /// its first member again), as in Asterisk's `rrmemory`: an append
    /// per call to remember it would cost more than the order is worth.
    rotations: std::sync::Mutex<HashMap<(DomainId, UserName), usize>>,
    /// Voicemail (ADR 0022), when the node runs it.
    voicemail: Option<crate::voicemail::Voicemail>,
    /// Conference rooms (issue 18), when the node runs them.
    conferences: Option<crate::conference::Conferences>,
    /// The SIP secret that signs the URIs of the node's own applications.
    app_secret: Vec<u8>,
    /// Where the node's own SIP UDP listener is: the address a voicemail
    /// step's INVITE goes to (set once the gateway listens).
    app_loop: OnceLock<SocketAddr>,
}

/// A clock that starts at a given moment and runs at the wall clock's
/// pace: the node's `test_clock`, on which forwarding schedules are
/// evaluated.
#[derive(Debug, Clone, Copy)]
pub struct ScheduleClock {
    start_us: i64,
    started: std::time::Instant,
}

impl ScheduleClock {
    pub fn starting_at(start_us: i64) -> Self {
        ScheduleClock {
            start_us,
            started: std::time::Instant::now(),
        }
    }

    pub fn now(&self) -> i64 {
        let elapsed = i64::try_from(self.started.elapsed().as_micros()).unwrap_or(i64::MAX);
        self.start_us.saturating_add(elapsed)
    }
}

/// The users some SUBSCRIBE asked about, and where their changes go.
#[derive(Default)]
struct Watched {
    watcher: OnceLock<Arc<dyn ResourceWatcher>>,
    /// `(domain, user)` as the gateway names them, by user id. Kept for
    /// the node's life: one entry per user ever watched (bounded by the
    /// users), and a watched user's events are few.
    users: RwLock<HashMap<UserId, (String, String)>>,
}

impl ActorBackend {
    pub fn new(provisioning: Provisioning) -> Self {
        ActorBackend {
            provisioning,
            watched: Arc::default(),
            routing_limits: routing::Limits::default(),
            schedule_clock: None,
            rotations: Default::default(),
            voicemail: None,
            conferences: None,
            app_secret: Vec::new(),
            app_loop: OnceLock::new(),
        }
    }

    /// Runs voicemail on this node: calls forwarded to a box are sent,
    /// with URIs signed by `secret` (the gateway's), to the node's own SIP
    /// address once [`ActorBackend::listening_on`] names it.
    pub fn with_voicemail(
        mut self,
        voicemail: crate::voicemail::Voicemail,
        secret: Vec<u8>,
    ) -> Self {
        self.voicemail = Some(voicemail);
        self.app_secret = secret;
        self
    }

    /// Answers calls to the domains' conference rooms on this node.
    pub fn with_conferences(mut self, conferences: crate::conference::Conferences) -> Self {
        self.conferences = Some(conferences);
        self
    }

    /// The gateway's UDP listener (an unspecified address is reached on
    /// loopback).
    pub fn listening_on(&self, mut addr: SocketAddr) {
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = self.app_loop.set(addr);
    }

    /// The target of a voicemail step for the box of `owner`: the node
    /// itself, at a signed URI naming the box. `None` without voicemail
    /// (the step then ends at once, as unavailable).
    fn voicemail_target(&self, owner: UserId) -> Option<RouteTarget> {
        self.voicemail.as_ref()?;
        let addr = *self.app_loop.get()?;
        let uri = dialtone_sip::app_uri::app_uri(
            &self.app_secret,
            &crate::voicemail::deposit_route(owner),
            &addr.to_string(),
        )?;
        Some(RouteTarget {
            uri,
            flow: Flow::new(dialtone_sip::Transport::Udp, addr),
            member: None,
        })
    }

    /// The target of a conference step for the room `room` (a forward to
    /// `conference:room`): the node itself, at a signed URI naming the
    /// room, as for a voicemail box. `None` without conferences (the step
    /// then ends at once, as unavailable).
    fn conference_target(&self, room: routing::Party<'_>) -> Option<RouteTarget> {
        self.conferences.as_ref()?;
        let addr = *self.app_loop.get()?;
        let uri = dialtone_sip::app_uri::app_uri(
            &self.app_secret,
            &forwarded_room_route(room.domain, room.user),
            &addr.to_string(),
        )?;
        Some(RouteTarget {
            uri,
            flow: Flow::new(dialtone_sip::Transport::Udp, addr),
            member: None,
        })
    }

    /// Bounds call forwarding (the longest chain of forwards).
    pub fn with_routing_limits(mut self, limits: routing::Limits) -> Self {
        self.routing_limits = limits;
        self
    }

    /// Evaluates the time conditions of forwarding rules on `clock`
    /// instead of the wall clock (tests of schedules).
    pub fn with_schedule_clock(mut self, clock: Option<ScheduleClock>) -> Self {
        self.schedule_clock = clock;
        self
    }

    /// The domain's status and settings, and the id of `user` in it.
    async fn resolve(&self, domain: &str, user: &str) -> Result<Resolved, BackendError> {
        let Ok(domain_name) = DomainName::parse(domain) else {
            return Ok(Resolved::UnknownDomain);
        };
        let username = UserName::parse(user).ok();
        let domain_id = DomainId::for_name(&domain_name);
        let directory = self.provisioning.directory();
        let facts = match directory
            .facts()
            .domain_and_user(domain_id, username.as_ref())
        {
            Some(facts) => Some(facts),
            None => {
                // Not loaded on this node yet: loading publishes the facts.
                directory
                    .query_domain(domain_id, |_| ())
                    .await
                    .map_err(unavailable)?;
                directory
                    .facts()
                    .domain_and_user(domain_id, username.as_ref())
            }
        };
        let Some((status, digest_algorithms, cross_domain_calls, id)) = facts else {
            return Ok(Resolved::UnknownDomain);
        };
        let state = DomainState {
            status,
            digest_algorithms,
            cross_domain_calls,
        };
        Ok(match id {
            Some(id) => Resolved::User(state, id),
            None => Resolved::DomainOnly(state),
        })
    }

    /// What routing needs of a forward target.
    async fn look_up(&self, address: &UserAddress) -> Result<Looked, BackendError> {
        let (status, calls_out, id) = match self
            .resolve(address.domain.as_str(), address.username.as_str())
            .await?
        {
            Resolved::UnknownDomain => (domain::Status::Absent, false, None),
            Resolved::DomainOnly(state) => (state.status, state.cross_domain_calls, None),
            Resolved::User(state, id) => (state.status, state.cross_domain_calls, Some(id)),
        };
        let user = match id {
            Some(id) => self
                .user_facts(id)
                .await?
                .filter(|u| u.exists)
                .map(|u| (u, id)),
            None => None,
        };
        let group = match user {
            None => self.ring_group(&address.domain, &address.username),
            Some(_) => None,
        };
        let room = user.is_none()
            && group.is_none()
            && self
                .provisioning
                .directory()
                .facts()
                .conference_room(DomainId::for_name(&address.domain), &address.username)
                .is_some();
        let timed = user.as_ref().is_some_and(|(u, _)| has_timed_rules(u))
            || group
                .as_ref()
                .is_some_and(|(g, _)| !g.forwarding.when.is_empty());
        let calls = user
            .as_ref()
            .map(|(_, id)| self.provisioning.directory().facts().call_state(*id))
            .unwrap_or_default();
        Ok(Looked {
            status,
            calls_out,
            time_zone: timed.then(|| self.time_zone_of(&address.domain)).flatten(),
            user,
            calls,
            group,
            room,
        })
    }

    /// The ring group `name` of `domain`, if the name is a group's, with
    /// the number of calls its round-robin strategy started (counted here:
    /// a group is looked up once per call).
    fn ring_group(
        &self,
        domain: &DomainName,
        name: &UserName,
    ) -> Option<(Arc<dialtone_domain::ring_group::RingGroup>, usize)> {
        let id = DomainId::for_name(domain);
        let group = self.provisioning.directory().facts().ring_group(id, name)?;
        let rotation = match group.strategy {
            dialtone_domain::ring_group::Strategy::RoundRobin => {
                let mut rotations = self.rotations.lock().unwrap_or_else(|p| p.into_inner());
                let next = rotations.entry((id, name.clone())).or_insert(0);
                let this = *next;
                *next = next.wrapping_add(1);
                this
            }
            _ => 0,
        };
        Some((group, rotation))
    }

    /// The time zone of a domain's schedules (`None`: UTC).
    fn time_zone_of(&self, domain: &DomainName) -> Option<TimeZone> {
        self.provisioning
            .directory()
            .facts()
            .time_zone(DomainId::for_name(domain))
    }

    async fn user_facts(
        &self,
        id: UserId,
    ) -> Result<Option<std::sync::Arc<UserFacts>>, BackendError> {
        let directory = self.provisioning.directory();
        if let Some(facts) = directory.facts().user(id) {
            return Ok(Some(facts));
        }
        directory
            .query_user(id, |_| ())
            .await
            .map_err(unavailable)?;
        Ok(directory.facts().user(id))
    }
}

/// A proxy's call step as the user aggregate's command step.
fn step_of(record: CallRecord) -> Step {
    let call_id = record.call_id;
    match record.step {
        CallStep::Start {
            direction,
            from,
            to,
            sip_call_id,
        } => Step::Start {
            call_id,
            direction: match direction {
                CallDirection::Outbound => call::Direction::Outbound,
                CallDirection::Inbound => call::Direction::Inbound,
            },
            from,
            to,
            sip_call_id,
        },
        CallStep::Ringing => Step::Ringing { call_id },
        CallStep::Answer { contact } => Step::Answer { call_id, contact },
        CallStep::End { cause, side } => Step::End {
            call_id,
            cause: cause_of(cause),
            side: match side {
                HangupSide::Caller => call::HangupSide::Caller,
                HangupSide::Callee => call::HangupSide::Callee,
                HangupSide::System => call::HangupSide::System,
            },
        },
        CallStep::Fail { sip_status, cause } => Step::Fail {
            call_id,
            sip_status,
            cause: cause_of(cause),
        },
        CallStep::Forwarded { to, reason } => Step::Forward {
            call_id,
            to,
            reason: forward_reason(reason),
        },
        CallStep::ForwardSkipped(skipped) => Step::ForwardSkipped {
            call_id,
            to: skipped.to,
            rule: forward_reason(skipped.rule),
            // The name `route_plan` gave it from a `SkipReason`.
            why: routing::SkipReason::ALL
                .into_iter()
                .find(|r| r.as_str() == skipped.why)
                .unwrap_or(routing::SkipReason::NotRoutable),
        },
        CallStep::Transferred(t) => transfer_step(call_id, t),
    }
}

/// A transfer the proxy recognised, as the transferor's step.
fn transfer_step(call_id: String, t: dialtone_sip::Transfer) -> Step {
    Step::Transferred {
        call_id,
        new_call_id: t.new_call_id,
        transferor: t.transferor,
        transferee: t.transferee,
        target: t.target,
        kind: match t.kind {
            dialtone_sip::TransferKind::Blind => call::TransferKind::Blind,
            dialtone_sip::TransferKind::Attended => call::TransferKind::Attended,
        },
        replaced_call_id: t.replaced_call_id,
    }
}

impl ActorBackend {
    /// Records steps of one leg, in order, on the user's actor (durable
    /// when it returns): one command, so one append, however many steps.
    /// A user deleted meanwhile has no leg to record.
    async fn record_leg(&self, records: Vec<CallRecord>) -> Result<(), BackendError> {
        let Some(first) = records.first() else {
            return Ok(());
        };
        let Resolved::User(_, id) = self.resolve(&first.domain, &first.user).await? else {
            return Ok(());
        };
        let correlation_id = first.sip_call_id.clone();
        let mut steps: Vec<Step> = records.into_iter().map(step_of).collect();
        if steps.len() == 1 {
            let command = user::Command::Call(Box::new(steps.remove(0)));
            return self
                .execute_call(id, command, &correlation_id)
                .await
                .map(drop);
        }
        let command = user::Command::CallSteps(steps.clone());
        if self.execute_call(id, command, &correlation_id).await? {
            return Ok(());
        }
        // One refused step refuses the batch: the others are recorded one
        // by one, as they would have been without it.
        for step in steps {
            let command = user::Command::Call(Box::new(step));
            self.execute_call(id, command, &correlation_id).await?;
        }
        Ok(())
    }

    /// Runs a call command on the user's actor: `Ok(false)` when the domain
    /// refused it (the user was deleted or hit a limit meanwhile): the
    /// call goes on, the step is not recorded, and that is logged.
    async fn execute_call(
        &self,
        id: dialtone_domain::UserId,
        command: user::Command,
        correlation_id: &str,
    ) -> Result<bool, BackendError> {
        let result = self
            .provisioning
            .directory()
            .execute_user_with(
                id,
                command,
                Meta {
                    correlation_id: Some(correlation_id.to_owned()),
                    ..Meta::default()
                },
                |_| (),
            )
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(dialtone_actors::Error::Domain(e)) => {
                tracing::warn!(error = %e, "call step not recorded");
                Ok(false)
            }
            Err(e) => Err(unavailable(e)),
        }
    }
}

fn availability_of(p: Presence) -> Availability {
    match p {
        Presence::Offline => Availability::Offline,
        Presence::Online => Availability::Online,
        Presence::Ringing => Availability::Ringing,
        Presence::OnCall => Availability::OnThePhone,
        Presence::Dnd => Availability::DoNotDisturb,
    }
}

fn call_state_of(leg: &call::CallLeg) -> CallState {
    CallState {
        call_id: leg.call_id.clone(),
        sip_call_id: leg.sip_call_id.clone(),
        direction: match leg.direction {
            call::Direction::Outbound => CallDirection::Outbound,
            call::Direction::Inbound => CallDirection::Inbound,
        },
        remote: match leg.direction {
            call::Direction::Outbound => leg.to.clone(),
            call::Direction::Inbound => leg.from.clone(),
        },
        phase: match leg.state {
            call::LegState::Trying => CallPhase::Trying,
            call::LegState::Ringing => CallPhase::Early,
            call::LegState::Answered => CallPhase::Confirmed,
        },
    }
}

/// What a recorded event of a user changes for its subscribers.
fn resource_change(recorded: &RecordedEvent) -> Option<ResourceChange> {
    if !matches!(
        category_of(&recorded.event_type),
        Some(EventCategory::Presence | EventCategory::Call)
    ) {
        return None;
    }
    let event = dialtone_domain::Event::from_stored(
        &recorded.event_type,
        recorded.schema_version,
        &recorded.data,
    );
    let dialtone_domain::Event::User(event) = event.ok()? else {
        return None;
    };
    let phase = |call_id: String, phase| Some(ResourceChange::CallPhase { call_id, phase });
    match event {
        user::Event::PresenceChanged { presence, .. } => {
            Some(ResourceChange::Availability(availability_of(presence)))
        }
        user::Event::CallStarted {
            call_id,
            direction,
            from,
            to,
            sip_call_id,
            ..
        } => Some(ResourceChange::Call(call_state_of(&call::CallLeg {
            call_id,
            direction,
            from,
            to,
            sip_call_id,
            state: call::LegState::Trying,
            started_at: 0,
            answered_at: None,
            contact: None,
        }))),
        user::Event::CallRinging { call_id } => phase(call_id, CallPhase::Early),
        user::Event::CallAnswered { call_id, .. } => phase(call_id, CallPhase::Confirmed),
        user::Event::CallEnded { call_id, .. }
        | user::Event::CallFailed { call_id, .. }
        | user::Event::CallForwarded { call_id, .. } => phase(call_id, CallPhase::Terminated),
        _ => None,
    }
}

/// A box's counts for `message-summary` (RFC 3842).
fn message_counts(mailbox: &dialtone_domain::mailbox::Mailbox) -> MessageCounts {
    let (new, old) = mailbox.counts();
    MessageCounts { new, old }
}

/// A box's counts when it asks for unsolicited message-waiting NOTIFYs.
fn unsolicited_counts(mailbox: &dialtone_domain::mailbox::Mailbox) -> Option<MessageCounts> {
    mailbox
        .settings
        .unsolicited_mwi
        .then(|| message_counts(mailbox))
}

/// Whether a recorded event changes a user's voicemail counts.
fn changes_messages(event_type: &str) -> bool {
    matches!(
        event_type,
        "VoicemailLeft" | "VoicemailRead" | "VoicemailDeleted"
    )
}

/// A box's counts as one recorded event left them, and who is told.
struct MailboxNow {
    version: u64,
    counts: MessageCounts,
    /// `(domain, user)`, when the box asks for unsolicited NOTIFYs.
    unsolicited: Option<(String, String)>,
    /// The user's live bindings: `(uri, key, source, transport)`.
    bindings: Vec<(String, Key, String, String)>,
}

impl MailboxNow {
    fn of(state: &user::User, version: u64, now: i64) -> MailboxNow {
        let unsolicited = match (&state.domain, &state.username) {
            (Some(d), Some(u)) if state.mailbox.settings.unsolicited_mwi => {
                Some((d.as_str().to_owned(), u.as_str().to_owned()))
            }
            _ => None,
        };
        let bindings = if unsolicited.is_some() {
            state
                .bindings
                .iter()
                .filter(|b| !b.is_expired(now))
                .map(|b| {
                    (
                        b.uri.clone(),
                        b.key(),
                        b.source.clone(),
                        b.transport.clone(),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        MailboxNow {
            version,
            counts: message_counts(&state.mailbox),
            unsolicited,
            bindings,
        }
    }

    /// Each binding reached as a call to it would be (`flow_of`,
    /// `RouteTarget::for_binding`); one whose flow is gone is left out.
    fn targets(&self, user: UserId, flows: &Flows) -> Vec<RouteTarget> {
        self.bindings
            .iter()
            .filter_map(|(uri, key, source, transport)| {
                let reach = Reach {
                    source: source.parse().ok()?,
                    transport,
                    flow: flows.of(user, key),
                };
                Some(RouteTarget::for_binding(uri, flow_of(&reach)?))
            })
            .collect()
    }
}

/// Follows the log from its head and hands the watched users' changes to
/// the watcher, in log order (which is each user's stream order). A box's
/// counts are read from the user's actor when a message event passes (the
/// events alone do not say whether a deleted message was new); the
/// state's version labels them, so the watcher skips what it includes.
/// For any user (watched or not) whose box asks for unsolicited
/// message-waiting NOTIFYs, the same read gives the counts and the
/// bindings to tell (also when the box's settings change).
async fn follow(store: SharedStore, watched: Arc<Watched>, provisioning: Provisioning) {
    let mut next = store.head_position() + 1;
    loop {
        let mut events = std::pin::pin!(dialtone_eventlog::subscribe_all(store.clone(), next));
        while let Some(item) = events.next().await {
            let recorded = match item {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "presence feed: reading the log failed, retrying");
                    break;
                }
            };
            next = recorded.position + 1;
            let Some(user_id) = recorded.user_id.map(UserId) else {
                continue;
            };
            let name = watched
                .users
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&user_id)
                .cloned();
            let Some(watcher) = watched.watcher.get() else {
                continue;
            };
            let messages = changes_messages(&recorded.event_type);
            // Decoded only for a watched user: most calls' events have no
            // watcher, and decoding each of them cost the node about 4 % of
            // its CPU in the calls/s benchmark.
            let change = name
                .as_ref()
                .and_then(|named| Some((named, resource_change(&recorded)?)));
            if let Some(((domain, user), change)) = change {
                watcher.changed(domain, user, recorded.version, change);
            } else if messages || recorded.event_type == "MailboxConfigured" {
                // The box's counts changed (or its settings: turning
                // unsolicited NOTIFYs on tells the phones the counts at
                // once).
                let read = provisioning
                    .directory()
                    .query_user(user_id, |r| {
                        MailboxNow::of(r.state, r.version.unwrap_or(0), micros(SystemTime::now()))
                    })
                    .await;
                let Ok(now) = read else {
                    continue;
                };
                // Unsolicited first: a phone that unsubscribes as soon as
                // its subscription's NOTIFY arrives would otherwise be told
                // twice.
                if let Some((domain, user)) = &now.unsolicited {
                    let flows = provisioning.directory().facts().flows();
                    let targets = now.targets(user_id, flows);
                    if !targets.is_empty() {
                        watcher.message_waiting(domain, user, now.counts, targets);
                    }
                }
                if let (true, Some((domain, user))) = (messages, &name) {
                    watcher.changed(
                        domain,
                        user,
                        now.version,
                        ResourceChange::Messages(now.counts),
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The SIP gateway's form of a domain's digest algorithms.
fn digest_algorithms(list: domain::DigestAlgorithms) -> DigestAlgorithms {
    // No allocation: this runs twice per registration.
    let mut gateway = [Algorithm::Md5; 2];
    let mut len = 0;
    for (slot, a) in gateway.iter_mut().zip(list.as_slice()) {
        *slot = match a {
            domain::DigestAlgorithm::Md5 => Algorithm::Md5,
            domain::DigestAlgorithm::Sha256 => Algorithm::Sha256,
        };
        len += 1;
    }
    // The domain's list is checked (not empty, no duplicates) as the
    // gateway's is; MD5 only is the domain's default too.
    DigestAlgorithms::new(gateway.get(..len).unwrap_or_default()).unwrap_or_default()
}

fn cause_of(cause: CallCause) -> call::Cause {
    match cause {
        CallCause::NormalClearing => call::Cause::NormalClearing,
        CallCause::OriginatorCancel => call::Cause::OriginatorCancel,
        CallCause::UserBusy => call::Cause::UserBusy,
        CallCause::NoAnswer => call::Cause::NoAnswer,
        CallCause::CallRejected => call::Cause::CallRejected,
        CallCause::NotFound => call::Cause::NotFound,
        CallCause::Unavailable => call::Cause::Unavailable,
        CallCause::Timeout => call::Cause::Timeout,
        CallCause::AnsweredElsewhere => call::Cause::AnsweredElsewhere,
        CallCause::Transferred => call::Cause::Transferred,
    }
}

#[derive(Debug, Clone, Copy)]
struct DomainState {
    status: domain::Status,
    digest_algorithms: domain::DigestAlgorithms,
    cross_domain_calls: bool,
}

/// A user as routing reads it: its domain's status and cross-domain
/// setting, and its facts when it exists.
struct Looked {
    status: domain::Status,
    calls_out: bool,
    time_zone: Option<TimeZone>,
    user: Option<(Arc<UserFacts>, UserId)>,
    /// The user's calls (read for ring group members).
    calls: dialtone_actors::CallState,
    /// The ring group of that name (when no user has it), and its
    /// round-robin rotation.
    group: Option<(Arc<dialtone_domain::ring_group::RingGroup>, usize)>,
    /// The name is a conference room's (read for forward targets only: a
    /// dialled room is answered before routing).
    room: bool,
}

impl Looked {
    /// `voicemail`: this node runs voicemail (forwards to boxes are taken);
    /// `conferences`: it runs conference rooms (forwards to rooms are).
    fn callee<'a>(
        &'a self,
        flows: &'a Flows,
        voicemail: bool,
        conferences: bool,
    ) -> routing::Callee<'a, Reach<'a>> {
        routing::Callee {
            domain: self.status,
            domain_calls_out: self.calls_out,
            time_zone: self.time_zone.as_ref(),
            user: self.user.as_ref().map(|(user, id)| routing::CalleeUser {
                enabled: user.enabled,
                // Not in the facts; no rule reads it yet.
                presence: None,
                bindings: user
                    .contacts
                    .iter()
                    .map(|c| routing::CalleeBinding {
                        uri: &c.uri,
                        q: None,
                        expires_at: c.expires_at,
                        reach: Reach {
                            source: c.source,
                            transport: &c.transport,
                            flow: flows.of(*id, &c.key),
                        },
                    })
                    .collect(),
                forwarding: user.features.as_ref().map(|f| &f.forwarding),
                dnd: user.features.as_ref().is_some_and(|f| f.dnd),
                on_call: self.calls.on_call,
                last_call_ended: self.calls.last_call_ended,
                // A box is taken only when this node runs voicemail.
                voicemail: voicemail && user.features.as_ref().is_some_and(|f| f.voicemail),
            }),
            group: self
                .group
                .as_ref()
                .map(|(group, rotation)| routing::CalleeGroup {
                    group,
                    rotation: *rotation,
                }),
            room: conferences && self.room,
        }
    }
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

/// How a callee's binding is reached, as the user's facts hold it: what
/// the domain's routing passes through to each target.
#[derive(Debug, Clone, Copy)]
struct Reach<'a> {
    /// Where the REGISTER came from.
    source: SocketAddr,
    /// `UDP`, `TCP`.
    transport: &'a str,
    /// The connection its REGISTER came on, while this node knows it.
    flow: Option<FlowFact>,
}

/// The flow a binding is reached on: UDP from its source; a
/// connection-oriented transport only on the connection its REGISTER came
/// on. Without one (it closed, or the node restarted since) the binding is
/// unreachable until the phone registers again, which it does when its
/// flow breaks (RFC 5626 s.4.2): a connection of ours to the source
/// address would not get through a NAT.
fn flow_of(reach: &Reach<'_>) -> Option<Flow> {
    let transport = Transport::parse(reach.transport)?;
    if !transport.is_reliable() {
        return Some(Flow::new(transport, reach.source));
    }
    let flow = reach.flow?;
    Some(Flow {
        transport,
        remote: flow.remote,
        local: flow.local,
        connection: Some(ConnectionId(flow.connection)),
    })
}

/// The SIP gateway's form of the domain's plan: each target's flow by
/// `RouteTarget::for_binding`, as for any binding.
fn route_plan(
    plan: routing::Plan<routing::Target<'_, Reach<'_>>>,
    voicemail: impl Fn(routing::Party<'_>) -> Option<RouteTarget>,
    conference: impl Fn(routing::Party<'_>) -> Option<RouteTarget>,
) -> RoutePlan {
    let party = |p: routing::Party<'_>| (p.domain.to_owned(), p.user.to_owned());
    RoutePlan {
        steps: plan
            .steps
            .into_iter()
            .map(|step| {
                // Each forward went to the user the next one is from, the
                // last to the step's owner.
                let diversions = step
                    .diversions
                    .iter()
                    .enumerate()
                    .map(|(i, d)| Diversion {
                        from: party(d.from),
                        to: party(step.diversions.get(i + 1).map_or(step.owner, |n| n.from)),
                        reason: diversion_reason(d.reason),
                        to_group: matches!(
                            d.to,
                            dialtone_domain::forwarding::ForwardTarget::Group(_)
                        ),
                        to_voicemail: matches!(
                            d.to,
                            dialtone_domain::forwarding::ForwardTarget::Voicemail(_)
                        ),
                        to_conference: matches!(
                            d.to,
                            dialtone_domain::forwarding::ForwardTarget::Conference(_)
                        ),
                    })
                    .collect();
                // A voicemail step rings the node itself (ADR 0022).
                let targets = if step.voicemail {
                    voicemail(step.owner).into_iter().collect()
                } else if step.conference {
                    // So does a conference room's (ADR 0025).
                    conference(step.owner).into_iter().collect()
                } else {
                    // A binding registered over a transport this node does
                    // not serve cannot be rung (it is not taken for UDP).
                    step.targets
                        .into_iter()
                        .filter_map(|t| {
                            Some(RouteTarget {
                                member: t.member.map(party),
                                ..RouteTarget::for_binding(t.uri, flow_of(&t.reach)?)
                            })
                        })
                        .collect()
                };
                RouteStep {
                    targets,
                    ring_timeout: step.ring_timeout,
                    next: NextSteps {
                        busy: step.next.busy,
                        no_answer: step.next.no_answer,
                        unavailable: step.next.unavailable,
                    },
                    diversions,
                    skipped: step
                        .skipped
                        .iter()
                        .map(|s| SkippedForward {
                            rule: diversion_reason(s.rule),
                            to: s.to.to_string(),
                            why: s.why.as_str(),
                        })
                        .collect(),
                    group: step.group.map(party),
                }
            })
            .collect(),
        dialled_group: false,
    }
}

/// The application name of the room `name` of `domain` reached by a
/// forward (a signed URI's `dt-app`): `conf-fwd.<room name in hex>.<domain>`.
/// A room's own name (`conf.standup@example.com`) does not fit in a URI
/// parameter (`@`, and a name may hold `;` or `%`); the hex does, and a
/// domain name is letters, digits, `-` and `.` already.
fn forwarded_room_route(domain: &str, name: &str) -> String {
    use std::fmt::Write as _;
    let mut route = String::with_capacity(FORWARDED_ROOM.len() + 2 * name.len() + 1 + domain.len());
    route.push_str(FORWARDED_ROOM);
    for b in name.bytes() {
        let _ = write!(route, "{b:02x}");
    }
    route.push('.');
    route.push_str(&domain.to_ascii_lowercase());
    route
}

/// The prefix of [`forwarded_room_route`].
const FORWARDED_ROOM: &str = "conf-fwd.";

/// The room application (`conf.<room>@<domain>`) a forwarded room's route
/// names, if it is one.
fn room_of_forwarded_route(app: &str) -> Option<String> {
    let rest = app.strip_prefix(FORWARDED_ROOM)?;
    let (hex, domain) = rest.split_once('.')?;
    if hex.is_empty() || hex.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    let name = UserName::parse(std::str::from_utf8(&bytes).ok()?).ok()?;
    let domain = DomainName::parse(domain).ok()?;
    Some(crate::conference::room_route(&domain, &name))
}

fn forward_reason(reason: DiversionReason) -> call::ForwardReason {
    match reason {
        DiversionReason::Unconditional => call::ForwardReason::Unconditional,
        DiversionReason::UserBusy => call::ForwardReason::UserBusy,
        DiversionReason::NoAnswer => call::ForwardReason::NoAnswer,
        DiversionReason::Unavailable => call::ForwardReason::Unavailable,
        DiversionReason::DoNotDisturb => call::ForwardReason::DoNotDisturb,
    }
}

fn diversion_reason(reason: call::ForwardReason) -> DiversionReason {
    match reason {
        call::ForwardReason::Unconditional => DiversionReason::Unconditional,
        call::ForwardReason::UserBusy => DiversionReason::UserBusy,
        call::ForwardReason::NoAnswer => DiversionReason::NoAnswer,
        call::ForwardReason::Unavailable => DiversionReason::Unavailable,
        call::ForwardReason::DoNotDisturb => DiversionReason::DoNotDisturb,
    }
}

/// The SIP gateway's form of a refusal; the statuses it answers with are
/// the ones `Refusal::sip_status` names.
fn call_route_of(refusal: routing::Refusal) -> CallRoute {
    match refusal {
        routing::Refusal::UnknownDomain => CallRoute::UnknownDomain,
        routing::Refusal::UnknownUser => CallRoute::UnknownUser,
        routing::Refusal::CrossDomainForbidden => CallRoute::CrossDomainForbidden,
        routing::Refusal::DomainSuspended | routing::Refusal::UserDisabled => {
            CallRoute::Unavailable
        }
        routing::Refusal::NotRegistered => CallRoute::NotRegistered,
        routing::Refusal::Busy => CallRoute::Busy,
    }
}

/// Whether some forwarding rule of the user has a time condition (only
/// those read the domain's time zone).
fn has_timed_rules(user: &UserFacts) -> bool {
    user.features
        .as_ref()
        .is_some_and(|f| !f.forwarding.when.is_empty())
}

/// `+` and 2 to 15 digits (E.164), as a dialled number is written.
fn is_e164(user: &str) -> bool {
    user.strip_prefix('+')
        .is_some_and(|d| (2..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[async_trait::async_trait]
impl SipBackend for ActorBackend {
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
        let algorithms = digest_algorithms(state.digest_algorithms);
        let Some(id) = id else {
            return Ok(Lookup::UnknownUser(algorithms));
        };
        match self.user_facts(id).await? {
            // Every user keeps both HA1 values, so a domain can turn MD5 on
            // or off at any time without its users setting passwords again.
            Some(user) if user.exists && !user.ha1_sha256().is_empty() => {
                Ok(Lookup::Found(UserCredentials {
                    algorithms,
                    ha1_md5: (!user.ha1_md5().is_empty()).then(|| user.ha1_md5().to_owned()),
                    ha1_sha256: user.ha1_sha256().to_owned(),
                    disabled: !user.enabled,
                }))
            }
            _ => Ok(Lookup::UnknownUser(algorithms)),
        }
    }

    async fn register(&self, request: RegisterRequest) -> Result<RegisterOutcome, BackendError> {
        let Resolved::User(_, id) = self.resolve(&request.domain, &request.user).await? else {
            return Err(BackendError::Internal(format!(
                "{}@{} is gone",
                request.user, request.domain
            )));
        };
        let changes: Vec<ContactChange> = request
            .changes
            .into_iter()
            .map(|c| ContactChange {
                uri: c.uri,
                expires_secs: c.expires_secs,
                q: c.q,
                params: c.params,
                reg_id: c.reg_id,
                nat: c.nat,
            })
            .collect();
        // Which bindings this REGISTER puts on its flow, and which it
        // takes off any.
        let touched: Vec<(Key, bool)> = changes
            .iter()
            .map(|c| (c.key(), c.expires_secs > 0))
            .collect();
        // The contacts it adds (not refreshes): the live bindings before
        // it, as the user's facts hold them.
        let added = {
            let before = self.provisioning.directory().facts().user(id);
            let now = micros(SystemTime::now());
            let live = |key: &Key| {
                before.as_ref().is_some_and(|u| {
                    u.contacts
                        .iter()
                        .any(|c| &c.key == key && c.expires_at > now)
                })
            };
            changes
                .iter()
                .filter(|c| c.expires_secs > 0 && !live(&c.key()))
                .map(|c| c.uri.clone())
                .collect::<Vec<_>>()
        };
        let flow = request.flow;
        let remove_all = request.remove_all;
        let command = user::Command::Register(Box::new(Register {
            call_id: request.call_id.clone(),
            cseq: request.cseq,
            changes,
            remove_all,
            source: flow.remote.to_string(),
            transport: flow.transport.as_str().to_owned(),
            user_agent: request.user_agent,
        }));
        // The SIP Call-ID is the events' correlation id, not a request id:
        // REGISTER retransmissions are absorbed by the transaction layer.
        let result = self
            .provisioning
            .directory()
            .execute_user_with(
                id,
                command,
                Meta {
                    correlation_id: Some(request.call_id),
                    ..Meta::default()
                },
                |reply| {
                    (
                        contacts_of(reply.state, micros(SystemTime::now())),
                        unsolicited_counts(&reply.state.mailbox),
                    )
                },
            )
            .await;
        if result.is_ok() {
            let flows = self.provisioning.directory().facts().flows();
            if remove_all {
                flows.forget_user(id);
            }
            for (key, kept) in touched {
                match flow.connection {
                    Some(connection) if kept => flows.registered(
                        id,
                        key,
                        FlowFact {
                            connection: connection.0,
                            local: flow.local,
                            remote: flow.remote,
                        },
                    ),
                    _ => flows.forget(id, &key),
                }
            }
        }
        match result {
            // A new binding hears the box's counts once, whatever they
            // are (a phone that rebooted may show a stale lamp); a refresh
            // does not (see `docs/operations.md`, "Message waiting").
            Ok((contacts, counts)) => Ok(RegisterOutcome::Ok {
                contacts,
                message_waiting: counts.filter(|_| !added.is_empty()).map(|counts| {
                    MessageWaiting {
                        counts,
                        new_contacts: added,
                    }
                }),
            }),
            Err(dialtone_actors::Error::Domain(dialtone_domain::Error::OutOfOrder(_))) => {
                Ok(RegisterOutcome::CSeqOutOfOrder)
            }
            Err(dialtone_actors::Error::Domain(e)) => Err(BackendError::Internal(e.to_string())),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn route_call(
        &self,
        caller_domain: &str,
        callee_domain: &str,
        callee_user: &str,
    ) -> Result<CallRoute, BackendError> {
        // The rules are the domain's (`routing::route`); this gathers what
        // they read, from the facts the actors publish: no message to an
        // actor on the call path once the aggregates are loaded.
        let (status, cross_domain_calls, id) =
            match self.resolve(callee_domain, callee_user).await? {
                Resolved::UnknownDomain => (domain::Status::Absent, false, None),
                Resolved::DomainOnly(state) => (state.status, state.cross_domain_calls, None),
                Resolved::User(state, id) => (state.status, state.cross_domain_calls, Some(id)),
            };
        let mut call = routing::Call {
            caller_domain,
            caller_may_call_other_domains: false,
            callee_domain,
            callee_user,
            schedule_time: self.schedule_clock.map(|c| c.now()),
        };
        // The caller's domain setting is read only when it can decide: the
        // call crosses domains into one that takes calls.
        let if_allowed = routing::Call {
            caller_may_call_other_domains: true,
            ..call
        };
        if call.crosses_domains() && routing::admit(&if_allowed, status).is_ok() {
            call.caller_may_call_other_domains = match self.resolve(caller_domain, "").await? {
                Resolved::DomainOnly(s) | Resolved::User(s, _) => s.cross_domain_calls,
                Resolved::UnknownDomain => false,
            };
        }
        // Nor is the user read when the domains refuse the call.
        let user = match id {
            Some(id) if routing::admit(&call, status).is_ok() => {
                self.user_facts(id).await?.filter(|user| user.exists)
            }
            _ => None,
        };
        // A name no user holds may be a ring group's.
        let group = match (&user, id) {
            (None, None) if routing::admit(&call, status).is_ok() => {
                match (
                    DomainName::parse(callee_domain),
                    UserName::parse(callee_user),
                ) {
                    (Ok(domain), Ok(name)) => self.ring_group(&domain, &name),
                    _ => None,
                }
            }
            _ => None,
        };
        // A name that is neither a user's nor a group's may be a room's:
        // the node answers it. Rooms are among the domain's published
        // facts, so a name that is nothing costs no message to its actor.
        if let (None, None, None, Some(_)) = (&user, id, &group, &self.conferences) {
            if routing::admit(&call, status).is_ok() {
                if let (Ok(domain), Ok(name)) = (
                    DomainName::parse(callee_domain),
                    UserName::parse(callee_user),
                ) {
                    if self
                        .provisioning
                        .directory()
                        .facts()
                        .conference_room(DomainId::for_name(&domain), &name)
                        .is_some()
                    {
                        return Ok(CallRoute::App(dialtone_sip::AppRoute(
                            crate::conference::room_route(&domain, &name),
                        )));
                    }
                }
            }
        }
        let dialled_group = group.is_some();
        let timed = user.as_ref().is_some_and(|u| has_timed_rules(u))
            || group
                .as_ref()
                .is_some_and(|(g, _)| !g.forwarding.when.is_empty());
        let dialled = Looked {
            status,
            calls_out: cross_domain_calls,
            // Read only for rules with time conditions: most calls have none.
            time_zone: timed
                .then(|| DomainName::parse(callee_domain).ok())
                .flatten()
                .and_then(|d| self.time_zone_of(&d)),
            user: user.zip(id),
            // Only ring group members' calls are read.
            calls: dialtone_actors::CallState::default(),
            group,
            // A dialled room was answered above.
            room: false,
        };
        // Forward targets are looked up as routing asks for them: route,
        // look up the user it needs, route again (once per forward).
        let mut forwarded: Vec<(UserAddress, Looked)> = Vec::new();
        let now = micros(SystemTime::now());
        loop {
            let needed = {
                let flows = self.provisioning.directory().facts().flows();
                let (voicemail, conferences) =
                    (self.voicemail.is_some(), self.conferences.is_some());
                let callee = dialled.callee(flows, voicemail, conferences);
                let others: HashMap<UserAddress, routing::Callee<'_, Reach<'_>>> = forwarded
                    .iter()
                    .map(|(address, looked)| {
                        (
                            address.clone(),
                            looked.callee(flows, voicemail, conferences),
                        )
                    })
                    .collect();
                match routing::route(&call, &callee, &others, now, self.routing_limits) {
                    Ok(plan) => {
                        // The user id of a box's owner: the dialled user or
                        // one that a forward led to.
                        let id_of = |p: routing::Party<'_>| -> Option<UserId> {
                            let same = |a: &UserAddress| {
                                a.username.as_str() == p.user
                                    && a.domain.as_str().eq_ignore_ascii_case(p.domain)
                            };
                            if p.user == callee_user && p.domain.eq_ignore_ascii_case(callee_domain)
                            {
                                return dialled.user.as_ref().map(|(_, id)| *id);
                            }
                            forwarded
                                .iter()
                                .find(|(a, _)| same(a))
                                .and_then(|(_, l)| l.user.as_ref().map(|(_, id)| *id))
                        };
                        let mut plan = route_plan(
                            plan,
                            |owner| id_of(owner).and_then(|id| self.voicemail_target(id)),
                            |room| self.conference_target(room),
                        );
                        plan.dialled_group = dialled_group;
                        return Ok(CallRoute::Plan(plan));
                    }
                    Err(Unrouted::Refused(
                        refusal @ (routing::Refusal::Busy | routing::Refusal::NotRegistered),
                    )) if dialled_group => {
                        return Ok(CallRoute::GroupRefused {
                            busy: refusal == routing::Refusal::Busy,
                        })
                    }
                    // An external number is no user: it needs a trunk,
                    // and none exists yet.
                    Err(Unrouted::Refused(routing::Refusal::UnknownUser))
                        if is_e164(callee_user) =>
                    {
                        return Ok(CallRoute::NoTrunk)
                    }
                    Err(Unrouted::Refused(refusal)) => return Ok(call_route_of(refusal)),
                    Err(Unrouted::NeedsUser(address)) => address,
                }
            };
            // Routing asks for each user once (a property test holds it
            // to that); a bug here must fail the call, not spin on it.
            if forwarded.len() >= routing::MAX_LOOKUPS
                || forwarded.iter().any(|(a, _)| *a == needed)
            {
                return Err(BackendError::Internal(format!(
                    "routing asked again for {needed} after {} lookups",
                    forwarded.len()
                )));
            }
            let looked = self.look_up(&needed).await?;
            forwarded.push((needed, looked));
        }
    }

    async fn watch(&self, domain: &str, user: &str) -> Result<Watch, BackendError> {
        let Resolved::User(state, id) = self.resolve(domain, user).await? else {
            return Ok(Watch::UnknownUser);
        };
        if state.status != domain::Status::Active {
            return Ok(Watch::UnknownUser);
        }
        // Changes are forwarded from now on, before the state is read:
        // none falls in between (the version tells which are included).
        self.watched
            .users
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (domain.to_owned(), user.to_owned()));
        let found = self
            .provisioning
            .directory()
            .query_user(id, |r| {
                (r.state.exists() && r.state.enabled).then(|| ResourceState {
                    version: r.version.unwrap_or(0),
                    availability: availability_of(r.state.presence),
                    calls: r
                        .state
                        .calls
                        .in_progress
                        .iter()
                        .map(call_state_of)
                        .collect(),
                    messages: message_counts(&r.state.mailbox),
                })
            })
            .await
            .map_err(unavailable)?;
        Ok(found.map_or(Watch::UnknownUser, Watch::Found))
    }

    fn set_watcher(&self, watcher: Arc<dyn ResourceWatcher>) {
        if self.watched.watcher.set(watcher).is_ok() {
            let store = self.provisioning.directory().store().clone();
            tokio::spawn(follow(
                store,
                self.watched.clone(),
                self.provisioning.clone(),
            ));
        }
    }

    fn lockout(&self, lockout: dialtone_sip::guard::Lockout) {
        let Ok(name) = DomainName::parse(&lockout.realm) else {
            return;
        };
        let id = DomainId::for_name(&name);
        let (scope, username) = match lockout.scope {
            dialtone_sip::guard::LockScope::User { user, .. } => {
                (domain::LockoutScope::User, Some(user))
            }
            dialtone_sip::guard::LockScope::Source => (domain::LockoutScope::Source, None),
        };
        let command = domain::Command::RecordLockout(domain::Lockout {
            source: lockout.source.to_string(),
            scope,
            username,
            failures: lockout.failures,
            duration_secs: u32::try_from(lockout.duration.as_secs()).unwrap_or(u32::MAX),
        });
        let directory = self.provisioning.directory().clone();
        tokio::spawn(async move {
            if let Err(e) = directory
                .execute_domain(id, command, Meta::default(), |_| ())
                .await
            {
                tracing::warn!(error = %e, "recording a SIP lock-out failed");
            }
        });
    }

    fn flow_closed(&self, connection: ConnectionId) {
        let directory = self.provisioning.directory();
        let gone = directory.facts().flows().closed(connection.0);
        if gone.is_empty() {
            return;
        }
        let directory = directory.clone();
        tokio::spawn(async move {
            for (id, bindings) in gone {
                let result = directory
                    .execute_user_with(
                        id,
                        user::Command::FlowClosed { bindings },
                        Meta::default(),
                        |_| (),
                    )
                    .await;
                if let Err(e) = result {
                    tracing::warn!(error = %e, "removing the bindings of a closed flow failed");
                }
            }
        });
    }

    async fn feature_code(
        &self,
        caller_domain: &str,
        caller_user: &str,
        dialled: &str,
        sip_call_id: &str,
    ) -> Result<FeatureOutcome, BackendError> {
        feature_codes::apply(
            &self.provisioning,
            self.voicemail.is_some(),
            caller_domain,
            caller_user,
            dialled,
            sip_call_id,
        )
        .await
    }

    async fn start_app(
        &self,
        route: &dialtone_sip::AppRoute,
        call: dialtone_sip::AppCall<'_>,
        control: dialtone_sip::proxy::AppControl,
    ) -> Result<dialtone_sip::AppStart, BackendError> {
        if let Some(conferences) = &self.conferences {
            if crate::conference::Conferences::serves(&route.0) {
                return conferences.start(&route.0, call, control).await;
            }
            // A call forwarded to a room comes back to the node at a
            // signed URI naming the room in a form a URI parameter holds.
            if let Some(room) = room_of_forwarded_route(&route.0) {
                return conferences.start(&room, call, control).await;
            }
        }
        match &self.voicemail {
            Some(vm) if crate::voicemail::Voicemail::serves(&route.0) => {
                vm.start(&route.0, call, control).await
            }
            _ => Ok(dialtone_sip::AppStart::Refuse {
                status: 404,
                reason: "Not Found (no such application on this node)".to_owned(),
            }),
        }
    }

    async fn record_call(&self, records: Vec<CallRecord>) -> Result<(), BackendError> {
        // Each leg is one user's actor: its steps in order in one command,
        // the legs concurrently, each awaited; the first failure is
        // reported.
        let mut legs: Vec<Vec<CallRecord>> = Vec::with_capacity(2);
        for record in records {
            match legs
                .iter_mut()
                .find(|l| l[0].domain == record.domain && l[0].user == record.user)
            {
                Some(leg) => leg.push(record),
                None => legs.push(vec![record]),
            }
        }
        let results = futures::future::join_all(legs.into_iter().map(|l| self.record_leg(l))).await;
        results.into_iter().collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_rooms_route_fits_a_uri_parameter_and_names_the_room() {
        for (domain, name) in [
            ("example.com", "standup"),
            ("Example.COM", "a;b%41=c"),
            ("x.example", &"r".repeat(UserName::MAX_LEN)),
        ] {
            let route = forwarded_room_route(domain, name);
            let uri = dialtone_sip::app_uri::app_uri(b"k", &route, "127.0.0.1:5060");
            assert!(uri.is_some(), "{route}");
            assert_eq!(
                room_of_forwarded_route(&route),
                Some(format!("conf.{name}@{}", domain.to_ascii_lowercase()))
            );
        }
        for bad in [
            "conf-fwd.",
            "conf-fwd.7.example.com",
            "conf-fwd.zz.example.com",
            "conf.x@y",
        ] {
            assert_eq!(room_of_forwarded_route(bad), None, "{bad}");
        }
    }
}
