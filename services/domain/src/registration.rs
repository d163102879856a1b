//! Registration bindings and presence of a [`User`]: the registrar rules of
//! RFC 3261 s.10.3 steps 6–8, applied by [`user::decide`] to
//! [`Register`][user::Command::Register] and
//! [`ExpireContacts`][user::Command::ExpireContacts], and the helpers the
//! SIP gateway needs to answer a REGISTER.
//!
//! [`user::decide`]: crate::user::decide
//! [user::Command::Register]: crate::user::Command::Register
//! [user::Command::ExpireContacts]: crate::user::Command::ExpireContacts
//! [user::Command::FlowClosed]: crate::user::Command::FlowClosed
//!
//! The SIP gateway parses the REGISTER, authenticates it and applies the
//! expiry policy (minimum, maximum, default); what reaches the domain is a
//! [`Register`]: contact URIs with their granted expiry. Time is the `now`
//! the caller passes in (µs); the domain never reads the clock.
//!
//! # Binding identity
//!
//! Two contacts are the same binding when their [`Key`]s are equal:
//!
//! - when the contact parameters carry `+sip.instance` (RFC 5626; the
//!   parameter name is matched case-insensitively), the key is that
//!   instance value, compared ASCII-case-insensitively (it is a URN, usually
//!   `<urn:uuid:...>`, whose hex digits may come in either case), together
//!   with the RFC 5626 `reg-id` when the REGISTER used outbound (the
//!   gateway passes a reg-id only then): one binding per flow of an
//!   instance. The URI of such a binding may change on refresh (a phone
//!   that moved network keeps its binding), and so may its source and
//!   transport (a re-registration on a new flow replaces the old flow);
//! - otherwise the key is the contact URI, normalised simply: surrounding
//!   whitespace and `<>` dropped, the scheme and everything after the user
//!   part's `@` (host, port, URI parameters) lower-cased, the user part kept
//!   exactly. No other RFC 3261 s.19.1.4 rule is applied (no unescaping, no
//!   reordering of parameters, no default port): a phone sends its contact
//!   the same way each time.
//!
//! Registration events name the binding they change by `uri`, `instance`
//! and `reg_id`: [`Key::of`]`(uri, instance, reg_id)` is the binding's key.
//!
//! # Rules of a REGISTER
//!
//! - A disabled or deleted user is refused ([`Error::FailedPrecondition`]);
//!   an empty Call-ID or contact URI, a `q` above [`MAX_Q`], or `*` with
//!   other contacts are [`Error::Invalid`].
//! - A contact given twice in one request counts once, with its last values.
//! - Steps 6/7: if a binding the request addresses (every binding for
//!   `Contact: *`) was last written with the same Call-ID and a CSeq at or
//!   above the request's, the whole request is refused with
//!   [`Error::OutOfOrder`] and nothing changes. Another Call-ID (a rebooted
//!   phone) always may refresh or remove.
//! - Step 8: `remove_all` removes every binding. Otherwise the contacts of
//!   existing bindings come first, in request order: expiry 0 removes
//!   ([`Event::ContactRemoved`], reason `unregistered`), anything else
//!   refreshes ([`Event::ContactRefreshed`]). Then the new contacts, in
//!   request order: expiry 0 does nothing; otherwise, when the user already
//!   has `max_contacts` bindings, the oldest registered is replaced
//!   ([`Event::ContactReplaced`]) and the new one registered
//!   ([`Event::ContactRegistered`]) — a new contact is never refused.
//!   Removals going first means a REGISTER that removes one contact and adds
//!   another never replaces a third.
//! - `expires_at = now + expires_secs` seconds.
//!
//! Disabling or deleting a user drops every binding
//! ([`Event::ContactRemoved`] with reason `user_disabled`/`user_deleted`).
//! [`ExpireContacts`][user::Command::ExpireContacts] expires every binding
//! with `expires_at <= now` ([`Event::ContactExpired`]).
//! [`FlowClosed`][user::Command::FlowClosed] removes the named bindings the
//! user still has ([`Event::ContactRemoved`], reason `flow_closed`): the
//! connection they were registered over closed. Which bindings were on a
//! connection is known only in memory, to the node that held it (a
//! connection means nothing after a restart), so the command names them.
//!
//! A binding records `source`, `transport` and whether it is NATed (`nat`:
//! the contact does not name the source's address), as the gateway saw
//! them.
//!
//! # Presence
//!
//! Presence is a function of the bindings and the call legs in progress,
//! [`presence_of`], and every decision that changes either appends a
//! [`Event::PresenceChanged`] when the result changes. Without calls it
//! follows the binding set: [`Presence::Online`] when the first binding
//! appears and [`Presence::Offline`] when the last one goes, so
//! `presence == Offline` exactly when there is no binding and no call in
//! progress. `Ringing` and `OnCall` come from the legs ([`crate::call`]);
//! `Dnd` is reserved.

use serde::{Deserialize, Serialize};

use crate::call::{Direction, LegState, Legs};
use crate::user::{Event, Status, User};
use crate::{Error, Result, Timestamp};

/// Microseconds in a second (timestamps are µs, expiries are seconds).
pub const MICROS_PER_SEC: i64 = 1_000_000;

/// The largest `q` (1.0 in thousandths).
pub const MAX_Q: u16 = 1000;

/// The `reason` of [`Event::ContactRemoved`].
pub mod reason {
    /// The client removed the contact (`Expires: 0`, or `Contact: *`).
    pub const UNREGISTERED: &str = "unregistered";
    /// The connection the binding was registered over closed (RFC 5626
    /// s.5.3: a flow that fails takes its bindings with it; the phone
    /// re-registers on a new one).
    pub const FLOW_CLOSED: &str = "flow_closed";
    /// The user was disabled: every binding is dropped.
    pub const USER_DISABLED: &str = "user_disabled";
    /// The user was deleted: every binding is dropped.
    pub const USER_DELETED: &str = "user_deleted";
}

/// A user's availability, stored as snake_case (`on_call`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// No binding.
    #[default]
    Offline,
    /// At least one binding, no call.
    Online,
    Ringing,
    OnCall,
    Dnd,
}

impl Presence {
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Offline => "offline",
            Presence::Online => "online",
            Presence::Ringing => "ringing",
            Presence::OnCall => "on_call",
            Presence::Dnd => "dnd",
        }
    }
}

/// One registered contact of a user (a binding of its address-of-record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The contact URI as sent, without `<>`.
    pub uri: String,
    /// The other contact parameters, raw (e.g.
    /// `;+sip.instance="<urn:uuid:...>";reg-id=1`); may be empty.
    pub params: String,
    /// `q` in thousandths (q=0.5 is 500), when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<u16>,
    /// The `+sip.instance` value (RFC 5626) without its quotes, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The RFC 5626 `reg-id`, when the REGISTER used outbound (then the
    /// binding is keyed by instance and reg-id: one binding per flow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reg_id: Option<u32>,
    /// Call-ID and CSeq of the REGISTER that last registered or refreshed
    /// the binding.
    pub call_id: String,
    pub cseq: u32,
    /// `ip:port` the REGISTER came from, as seen by the server.
    pub source: String,
    /// `UDP`, `TCP`, ...
    pub transport: String,
    /// The contact's address is not the one the REGISTER came from (a
    /// phone behind NAT): it is reached at `source`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nat: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    pub registered_at: Timestamp,
    pub refreshed_at: Timestamp,
    pub expires_at: Timestamp,
}

impl Binding {
    /// The binding's identity (see the module documentation).
    pub fn key(&self) -> Key {
        Key::of(&self.uri, self.instance.as_deref(), self.reg_id)
    }

    /// Whether the binding's time has run out at `now` (`expires_at` is the
    /// first instant at which it no longer holds).
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at <= now
    }

    /// Whole seconds left at `now`, rounded up; 0 once expired.
    pub fn seconds_left(&self, now: Timestamp) -> u32 {
        let left = self.expires_at.saturating_sub(now);
        if left <= 0 {
            return 0;
        }
        let secs = (left - 1) / MICROS_PER_SEC + 1;
        u32::try_from(secs).unwrap_or(u32::MAX)
    }
}

/// The identity of a binding: two contacts with the same key are the same
/// binding.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// The `+sip.instance` value, ASCII-lower-cased, with the RFC 5626
    /// `reg-id` when the REGISTER used outbound.
    Instance(String, Option<u32>),
    /// The URI, normalised by [`normalize_uri`].
    Uri(String),
}

impl Key {
    /// The key of a contact `uri` with the given `+sip.instance` value and
    /// `reg-id` (the latter counts only with an instance).
    pub fn of(uri: &str, instance: Option<&str>, reg_id: Option<u32>) -> Key {
        match instance {
            Some(instance) => Key::Instance(instance.to_ascii_lowercase(), reg_id),
            None => Key::Uri(normalize_uri(uri)),
        }
    }
}

/// The comparison form of a contact URI: `<>` and surrounding whitespace
/// dropped, the scheme and everything after the user part lower-cased, the
/// user part (before the first `@`) kept exactly.
pub fn normalize_uri(uri: &str) -> String {
    let mut uri = uri.trim();
    if let Some(inner) = uri.strip_prefix('<').and_then(|u| u.strip_suffix('>')) {
        uri = inner.trim();
    }
    let Some((scheme, rest)) = uri.split_once(':') else {
        return uri.to_ascii_lowercase();
    };
    let mut normal = scheme.to_ascii_lowercase();
    normal.push(':');
    match rest.split_once('@') {
        Some((user, host)) => {
            normal.push_str(user);
            normal.push('@');
            normal.push_str(&host.to_ascii_lowercase());
        }
        None => normal.push_str(&rest.to_ascii_lowercase()),
    }
    normal
}

/// The `+sip.instance` value in raw contact parameters (`;name=value...`),
/// without its double quotes: `Some("<urn:uuid:...>")`. The name is matched
/// case-insensitively; the first occurrence counts; an empty value is none.
pub fn instance_of(params: &str) -> Option<String> {
    split_params(params).into_iter().find_map(|param| {
        let (name, value) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("+sip.instance") {
            return None;
        }
        let value = unquote(value.trim());
        (!value.is_empty()).then_some(value)
    })
}

/// Splits `;a=1;b="x;y"` at the semicolons outside double quotes.
fn split_params(params: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in params.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => {
                parts.push(&params[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&params[start..]);
    parts
}

/// The content of a quoted string (quoted pairs resolved); any other value
/// unchanged.
fn unquote(value: &str) -> String {
    let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return value.to_owned();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// One contact of a REGISTER, as the gateway normalised it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContactChange {
    /// The contact URI as sent, without `<>`.
    pub uri: String,
    /// Granted expiry in seconds (after the gateway's policy); 0 removes.
    pub expires_secs: u32,
    /// `q` in thousandths (at most [`MAX_Q`]), when given.
    pub q: Option<u16>,
    /// The other contact parameters, raw (may be empty).
    pub params: String,
    /// The RFC 5626 `reg-id`, when the REGISTER used outbound (the gateway
    /// sets it only then, and only with a `+sip.instance`).
    pub reg_id: Option<u32>,
    /// The contact's address is not the one the REGISTER came from.
    pub nat: bool,
}

impl ContactChange {
    /// The `+sip.instance` value of the contact, if any.
    pub fn instance(&self) -> Option<String> {
        instance_of(&self.params)
    }

    /// The `reg-id` that counts: only with an instance.
    fn effective_reg_id(&self) -> Option<u32> {
        self.instance().and(self.reg_id)
    }

    /// The identity of the binding this contact addresses.
    pub fn key(&self) -> Key {
        let instance = self.instance();
        let reg_id = instance.as_ref().and(self.reg_id);
        Key::of(&self.uri, instance.as_deref(), reg_id)
    }
}

/// An authenticated REGISTER, after the gateway's expiry policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Register {
    pub call_id: String,
    pub cseq: u32,
    /// Contacts to register, refresh (`expires_secs > 0`) or remove
    /// (`expires_secs == 0`). Empty and `remove_all == false`: a query,
    /// nothing changes.
    pub changes: Vec<ContactChange>,
    /// `Contact: *` with `Expires: 0`: remove every binding. `changes` must
    /// then be empty.
    pub remove_all: bool,
    /// `ip:port` the request came from, as seen by the server.
    pub source: String,
    /// `UDP`, `TCP`, ...
    pub transport: String,
    pub user_agent: Option<String>,
}

/// When the next binding of `user` expires (the earliest `expires_at`):
/// when to send the next
/// [`ExpireContacts`](crate::user::Command::ExpireContacts).
pub fn next_expiry(user: &User) -> Option<Timestamp> {
    user.bindings.iter().map(|b| b.expires_at).min()
}

// ---------------------------------------------------------------- decide

fn expiry(now: Timestamp, expires_secs: u32) -> Timestamp {
    now.saturating_add(i64::from(expires_secs) * MICROS_PER_SEC)
}

fn validate(request: &Register) -> Result<()> {
    if request.call_id.trim().is_empty() {
        return Err(Error::invalid("call_id", "must not be empty"));
    }
    if request.remove_all && !request.changes.is_empty() {
        return Err(Error::invalid(
            "contact",
            "'*' must be the only contact of a REGISTER",
        ));
    }
    for change in &request.changes {
        if change.uri.trim().is_empty() {
            return Err(Error::invalid("contact", "a contact URI must not be empty"));
        }
        if change.q.is_some_and(|q| q > MAX_Q) {
            return Err(Error::invalid(
                "q",
                format!("must be between 0 and {MAX_Q} thousandths"),
            ));
        }
    }
    Ok(())
}

/// RFC 3261 s.10.3 steps 6/7: a binding last written by the same Call-ID
/// with a CSeq at or above the request's refuses the whole request.
fn check_order(binding: &Binding, request: &Register) -> Result<()> {
    if binding.call_id == request.call_id && request.cseq <= binding.cseq {
        return Err(Error::OutOfOrder(format!(
            "CSeq {} of Call-ID {} is not above CSeq {} already seen for contact {} \
             (RFC 3261 s.10.3 step 7); nothing was changed",
            request.cseq, request.call_id, binding.cseq, binding.uri
        )));
    }
    Ok(())
}

/// The events of [`Register`](crate::user::Command::Register).
pub(crate) fn decide_register(
    state: &User,
    request: &Register,
    now: Timestamp,
) -> Result<Vec<Event>> {
    match state.status {
        Status::Absent => return Err(Error::NotFound(state.address())),
        Status::Deleted => {
            return Err(Error::FailedPrecondition(format!(
                "user {} is deleted and cannot register",
                state.address()
            )))
        }
        Status::Active if !state.enabled => {
            return Err(Error::FailedPrecondition(format!(
                "user {} is disabled and cannot register",
                state.address()
            )))
        }
        Status::Active => {}
    }
    validate(request)?;

    // Duplicates inside the request: the last one wins, at its position.
    let mut changes: Vec<(Key, &ContactChange)> = Vec::with_capacity(request.changes.len());
    for change in &request.changes {
        let key = change.key();
        changes.retain(|(k, _)| *k != key);
        changes.push((key, change));
    }

    // Ordering first, so that a refused request changes nothing.
    if request.remove_all {
        for binding in &state.bindings {
            check_order(binding, request)?;
        }
    } else {
        for (key, _) in &changes {
            if let Some(binding) = state.binding(key) {
                check_order(binding, request)?;
            }
        }
    }

    let mut decision = Decision::new(state);
    if request.remove_all {
        for binding in &state.bindings {
            decision.push(Event::ContactRemoved {
                uri: binding.uri.clone(),
                instance: binding.instance.clone(),
                reg_id: binding.reg_id,
                reason: reason::UNREGISTERED.to_owned(),
            });
        }
    }
    // First the contacts of existing bindings (removals free room), then
    // the new bindings, each in request order.
    let (existing, new): (Vec<_>, Vec<_>) = changes
        .into_iter()
        .partition(|(key, _)| decision.binding(key).is_some());
    for (key, change) in existing {
        let Some(binding) = decision.binding(&key) else {
            continue;
        };
        let event = if change.expires_secs == 0 {
            Event::ContactRemoved {
                uri: binding.uri.clone(),
                instance: binding.instance.clone(),
                reg_id: binding.reg_id,
                reason: reason::UNREGISTERED.to_owned(),
            }
        } else {
            Event::ContactRefreshed {
                uri: change.uri.clone(),
                instance: change.instance(),
                reg_id: change.effective_reg_id(),
                call_id: request.call_id.clone(),
                cseq: request.cseq,
                source: request.source.clone(),
                transport: request.transport.clone(),
                nat: change.nat,
                user_agent: request.user_agent.clone(),
                q: change.q,
                params: change.params.clone(),
                refreshed_at: now,
                expires_at: expiry(now, change.expires_secs),
            }
        };
        decision.push(event);
    }
    let max_contacts = usize::try_from(state.max_contacts.max(1)).unwrap_or(usize::MAX);
    for (_, change) in new {
        if change.expires_secs == 0 {
            continue;
        }
        // Full: the oldest binding makes room, never the new one.
        while decision.bindings.len() >= max_contacts {
            let Some(oldest) = decision.bindings.iter().min_by_key(|b| b.registered_at) else {
                break;
            };
            let event = Event::ContactReplaced {
                uri: oldest.uri.clone(),
                instance: oldest.instance.clone(),
                reg_id: oldest.reg_id,
                replaced_by: change.uri.clone(),
            };
            decision.push(event);
        }
        decision.push(Event::ContactRegistered {
            binding: Binding {
                uri: change.uri.clone(),
                params: change.params.clone(),
                q: change.q,
                instance: change.instance(),
                reg_id: change.effective_reg_id(),
                call_id: request.call_id.clone(),
                cseq: request.cseq,
                source: request.source.clone(),
                transport: request.transport.clone(),
                nat: change.nat,
                user_agent: request.user_agent.clone(),
                registered_at: now,
                refreshed_at: now,
                expires_at: expiry(now, change.expires_secs),
            },
        });
    }
    Ok(decision.finish(state))
}

/// `ContactExpired` for every binding expired at `now`.
pub(crate) fn decide_expire(state: &User, now: Timestamp) -> Vec<Event> {
    let mut decision = Decision::new(state);
    for binding in state.bindings.iter().filter(|b| b.is_expired(now)) {
        decision.push(Event::ContactExpired {
            uri: binding.uri.clone(),
            instance: binding.instance.clone(),
            reg_id: binding.reg_id,
            expired_at: binding.expires_at,
        });
    }
    decision.finish(state)
}

/// `ContactRemoved { reason }` for every binding (the user was disabled or
/// deleted), then presence offline.
pub(crate) fn drop_all(state: &User, reason: &str) -> Vec<Event> {
    let mut decision = Decision::new(state);
    for binding in &state.bindings {
        decision.push(Event::ContactRemoved {
            uri: binding.uri.clone(),
            instance: binding.instance.clone(),
            reg_id: binding.reg_id,
            reason: reason.to_owned(),
        });
    }
    decision.finish(state)
}

/// `ContactRemoved { reason: flow_closed }` for each of `bindings` the
/// user has: their flow closed (RFC 5626 s.5.3). Which bindings were on
/// the closed flow is known only to the node that held the connection
/// (connections live in memory); a key the user no longer has is skipped.
pub(crate) fn decide_flow_closed(state: &User, bindings: &[Key]) -> Vec<Event> {
    let mut decision = Decision::new(state);
    for binding in state
        .bindings
        .iter()
        .filter(|b| bindings.contains(&b.key()))
    {
        decision.push(Event::ContactRemoved {
            uri: binding.uri.clone(),
            instance: binding.instance.clone(),
            reg_id: binding.reg_id,
            reason: reason::FLOW_CLOSED.to_owned(),
        });
    }
    decision.finish(state)
}

/// Registration events being decided, with the bindings they lead to.
struct Decision {
    events: Vec<Event>,
    bindings: Vec<Binding>,
}

impl Decision {
    fn new(state: &User) -> Self {
        Decision {
            events: Vec::new(),
            bindings: state.bindings.clone(),
        }
    }

    fn binding(&self, key: &Key) -> Option<&Binding> {
        self.bindings.iter().find(|b| b.key() == *key)
    }

    fn push(&mut self, event: Event) {
        apply(&mut self.bindings, &event);
        self.events.push(event);
    }

    /// The events, plus `PresenceChanged` when the bindings they lead to
    /// (with the user's legs) give another presence.
    fn finish(mut self, state: &User) -> Vec<Event> {
        let presence = presence_of(&self.bindings, &state.calls, state.dnd);
        if presence != state.presence {
            self.events.push(Event::PresenceChanged {
                presence,
                previous: state.presence,
            });
        }
        self.events
    }
}

/// A user's presence, as a function of its bindings and its legs in
/// progress (the one place this is decided, for registrations and calls
/// alike): [`Presence::OnCall`] while any leg is answered,
/// [`Presence::Ringing`] while an inbound leg rings and none is answered,
/// otherwise, with a binding, [`Presence::Dnd`] when do-not-disturb is on
/// (`dnd`) and [`Presence::Online`] when not, and [`Presence::Offline`]
/// without one. A contact that expires during a call therefore leaves the user
/// on the call, and the user goes offline only when the call ends.
pub fn presence_of(bindings: &[Binding], calls: &Legs, dnd: bool) -> Presence {
    let legs = &calls.in_progress;
    if legs.iter().any(|l| l.state == LegState::Answered) {
        Presence::OnCall
    } else if legs
        .iter()
        .any(|l| l.direction == Direction::Inbound && l.state == LegState::Ringing)
    {
        Presence::Ringing
    } else if bindings.is_empty() {
        Presence::Offline
    } else if dnd {
        Presence::Dnd
    } else {
        Presence::Online
    }
}

// ---------------------------------------------------------------- evolve

/// Applies a registration event to a binding list (other events: nothing).
pub(crate) fn apply(bindings: &mut Vec<Binding>, event: &Event) {
    match event {
        Event::ContactRegistered { binding } => {
            let key = binding.key();
            match bindings.iter_mut().find(|b| b.key() == key) {
                Some(existing) => *existing = binding.clone(),
                None => bindings.push(binding.clone()),
            }
        }
        Event::ContactRefreshed {
            uri,
            instance,
            reg_id,
            call_id,
            cseq,
            source,
            transport,
            nat,
            user_agent,
            q,
            params,
            refreshed_at,
            expires_at,
        } => {
            let key = Key::of(uri, instance.as_deref(), *reg_id);
            if let Some(binding) = bindings.iter_mut().find(|b| b.key() == key) {
                binding.uri.clone_from(uri);
                binding.instance.clone_from(instance);
                binding.reg_id = *reg_id;
                binding.call_id.clone_from(call_id);
                binding.cseq = *cseq;
                binding.source.clone_from(source);
                binding.transport.clone_from(transport);
                // The flow the refresh came on is the binding's flow now (a
                // re-registration on a new flow replaces the old one).
                binding.nat = *nat;
                binding.user_agent.clone_from(user_agent);
                binding.q = *q;
                binding.params.clone_from(params);
                binding.refreshed_at = *refreshed_at;
                binding.expires_at = *expires_at;
            }
        }
        Event::ContactRemoved {
            uri,
            instance,
            reg_id,
            ..
        }
        | Event::ContactExpired {
            uri,
            instance,
            reg_id,
            ..
        }
        | Event::ContactReplaced {
            uri,
            instance,
            reg_id,
            ..
        } => {
            let key = Key::of(uri, instance.as_deref(), *reg_id);
            bindings.retain(|b| b.key() != key);
        }
        _ => {}
    }
}
