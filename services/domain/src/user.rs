//! The `User` aggregate: a SIP user, its credentials and settings, its
//! registered contacts (bindings), its call legs and its presence. The
//! binding rules live in [`crate::registration`], the call-leg rules in
//! [`crate::call`].

use serde::{Deserialize, Serialize};

use crate::call::{
    self, CallStep, Cause, Direction, ForwardReason, HangupSide, Legs, TransferKind,
};
use crate::credentials::{Credentials, PasswordPolicy};
use crate::forwarding::{Forwarding, ForwardingPatch};
use crate::mailbox::{self, Greeting, Mailbox, MessageId, PinHash, RefusalReason};
use crate::names::UserAddress;
use crate::registration::{self, Binding, Key, Register};
use crate::routing::SkipReason;
use crate::{DomainId, DomainName, Error, Result, Timestamp, UserId, UserName};

/// Default and bounds of the number of simultaneous contacts (registrations).
pub const DEFAULT_MAX_CONTACTS: u32 = 10;
pub const MAX_MAX_CONTACTS: u32 = 100;
pub const MAX_DISPLAY_NAME_LEN: usize = 128;
pub const MAX_CALLER_ID_LEN: usize = 32;
/// Longest reason a `Delete` command may give (as for suspending a domain).
pub const MAX_REASON_LEN: usize = 256;

pub use crate::registration::Presence;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    Absent,
    Active,
    Deleted,
}

/// The state of a user, rebuilt by folding its events with [`evolve`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: Option<UserId>,
    pub domain_id: Option<DomainId>,
    pub domain: Option<DomainName>,
    pub username: Option<UserName>,
    pub status: Status,
    pub display_name: String,
    pub caller_id: String,
    pub max_contacts: u32,
    pub enabled: bool,
    pub credentials: Option<Credentials>,
    pub created_at: Timestamp,
    /// Registered contacts, oldest registered first; at most one per
    /// [`Key`]. (`default`: snapshots from before registration load.)
    #[serde(default)]
    pub bindings: Vec<Binding>,
    /// Always [`registration::presence_of`] the bindings and the legs.
    #[serde(default)]
    pub presence: Presence,
    /// Call legs in progress (and the last finished `call_id`s).
    /// (`default`: snapshots from before calls load.)
    #[serde(default)]
    pub calls: Legs,
    /// Call forwarding rules ([`crate::forwarding`]). (`default`: none, as
    /// in snapshots from before forwarding.)
    #[serde(default, skip_serializing_if = "Forwarding::is_off")]
    pub forwarding: Forwarding,
    /// Do-not-disturb: calls follow the busy rule (or get 486) and presence
    /// shows [`Presence::Dnd`] while a phone is registered.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dnd: bool,
    /// The voicemail box ([`crate::mailbox`]). (`default`: never
    /// configured, as in snapshots from before voicemail.)
    #[serde(default, skip_serializing_if = "Mailbox::is_default")]
    pub mailbox: Mailbox,
}

impl User {
    pub fn exists(&self) -> bool {
        self.status == Status::Active
    }

    /// `username@domain`, or a placeholder before creation.
    pub fn address(&self) -> String {
        match (&self.username, &self.domain) {
            (Some(u), Some(d)) => format!("{u}@{d}"),
            _ => "user".to_owned(),
        }
    }

    /// `username@domain` as a typed address (`None` before creation).
    pub fn user_address(&self) -> Option<UserAddress> {
        Some(UserAddress {
            username: self.username.clone()?,
            domain: self.domain.clone()?,
        })
    }

    /// The binding with identity `key`, if registered.
    pub fn binding(&self, key: &Key) -> Option<&Binding> {
        self.bindings.iter().find(|b| b.key() == *key)
    }

    /// The contacts still valid at `now` (`expires_at > now`, even before an
    /// `ExpireContacts` has run) with their whole seconds left, rounded up
    /// (so at least 1): the list a `200 OK` to REGISTER carries.
    pub fn contacts_at(&self, now: Timestamp) -> impl Iterator<Item = (&Binding, u32)> + '_ {
        self.bindings
            .iter()
            .filter(move |b| !b.is_expired(now))
            .map(move |b| (b, b.seconds_left(now)))
    }
}

/// Fields of a new user.
#[derive(Clone, PartialEq, Eq)]
pub struct NewUser {
    pub user_id: UserId,
    pub domain_id: DomainId,
    pub domain: DomainName,
    pub username: UserName,
    pub password: String,
    pub display_name: String,
    pub caller_id: String,
    /// `None`: [`DEFAULT_MAX_CONTACTS`].
    pub max_contacts: Option<u32>,
    pub enabled: bool,
}

impl std::fmt::Debug for NewUser {
    // The password is a secret: never print it (commands end up in logs).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUser")
            .field("user_id", &self.user_id)
            .field("domain_id", &self.domain_id)
            .field("domain", &self.domain)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("display_name", &self.display_name)
            .field("caller_id", &self.caller_id)
            .field("max_contacts", &self.max_contacts)
            .field("enabled", &self.enabled)
            .finish()
    }
}

/// A partial update: `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patch {
    pub display_name: Option<String>,
    pub caller_id: Option<String>,
    pub max_contacts: Option<u32>,
    pub enabled: Option<bool>,
}

#[derive(Clone, PartialEq, Eq)]
pub enum Command {
    Create {
        user: Box<NewUser>,
        policy: PasswordPolicy,
    },
    Update {
        patch: Patch,
    },
    SetPassword {
        password: String,
        policy: PasswordPolicy,
    },
    Delete {
        reason: Option<String>,
    },
    /// Changes the forwarding rules ([`crate::forwarding`]): the patch's
    /// targets are already parsed and checked against the other aggregates
    /// by the caller; here the result is validated as a whole.
    SetForwarding {
        patch: Box<ForwardingPatch>,
    },
    /// Turns do-not-disturb on or off.
    SetDnd {
        on: bool,
    },
    /// An authenticated REGISTER (RFC 3261 s.10.3 steps 6–8): registers,
    /// refreshes and removes bindings; see [`crate::registration`].
    /// Refused with [`Error::OutOfOrder`] (nothing changes) when a binding
    /// it addresses was last written by the same Call-ID with a CSeq at or
    /// above the request's; with [`Error::FailedPrecondition`] for a
    /// disabled or deleted user.
    Register(Box<Register>),
    /// Expires every binding with `expires_at <= now`. Never refused; emits
    /// nothing when nothing has expired.
    ExpireContacts,
    /// The flow (connection) these bindings were registered over closed:
    /// each that the user still has is removed (reason `flow_closed`,
    /// RFC 5626 s.5.3). Never refused; emits nothing when none is left.
    FlowClosed {
        bindings: Vec<Key>,
    },
    /// A step of one of the user's call legs, from the SIP proxy; see
    /// [`crate::call`] for the rules (repeated steps emit nothing).
    Call(Box<CallStep>),
    /// Several steps of the user's call legs, in order, decided one after
    /// the other (each sees the events of the ones before) and appended
    /// together: what the proxy hands over when steps queued up behind a
    /// slow append, so that an overloaded log gets fewer, larger appends.
    /// Refused as a whole when any step is.
    CallSteps(Vec<CallStep>),
    /// A command for the user's voicemail box ([`crate::mailbox`]).
    Mailbox(mailbox::Command),
}

impl std::fmt::Debug for Command {
    // As for `NewUser`: a password is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Create { user, policy } => f
                .debug_struct("Create")
                .field("user", user)
                .field("policy", policy)
                .finish(),
            Command::Update { patch } => f.debug_struct("Update").field("patch", patch).finish(),
            Command::SetPassword {
                password: _,
                policy,
            } => f
                .debug_struct("SetPassword")
                .field("password", &"<redacted>")
                .field("policy", policy)
                .finish(),
            Command::Delete { reason } => f.debug_struct("Delete").field("reason", reason).finish(),
            Command::SetForwarding { patch } => f
                .debug_struct("SetForwarding")
                .field("patch", patch)
                .finish(),
            Command::SetDnd { on } => f.debug_struct("SetDnd").field("on", on).finish(),
            Command::Register(register) => f.debug_tuple("Register").field(register).finish(),
            Command::ExpireContacts => f.write_str("ExpireContacts"),
            Command::FlowClosed { bindings } => f
                .debug_struct("FlowClosed")
                .field("bindings", bindings)
                .finish(),
            Command::Call(step) => f.debug_tuple("Call").field(step).finish(),
            Command::CallSteps(steps) => f.debug_tuple("CallSteps").field(steps).finish(),
            Command::Mailbox(command) => f.debug_tuple("Mailbox").field(command).finish(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    UserCreated {
        user_id: UserId,
        domain_id: DomainId,
        domain: DomainName,
        username: UserName,
        display_name: String,
        caller_id: String,
        max_contacts: u32,
        enabled: bool,
        credentials: Credentials,
        created_at: Timestamp,
    },
    PasswordChanged {
        credentials: Credentials,
    },
    UserUpdated {
        display_name: String,
        caller_id: String,
        max_contacts: u32,
    },
    UserEnabled {},
    UserDisabled {},
    UserDeleted {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A new binding.
    ContactRegistered {
        binding: Binding,
    },
    /// The binding with key `Key::of(uri, instance, reg_id)` was refreshed: every
    /// field but `registered_at` takes the new value (`uri` too: a binding
    /// keyed by instance may come back from another address).
    ContactRefreshed {
        uri: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instance: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reg_id: Option<u32>,
        call_id: String,
        cseq: u32,
        source: String,
        transport: String,
        /// Whether the contact's address differs from `source` (NAT).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        nat: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_agent: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        q: Option<u16>,
        params: String,
        refreshed_at: Timestamp,
        expires_at: Timestamp,
    },
    /// The binding `Key::of(uri, instance, reg_id)` was removed; `reason` is one of
    /// [`registration::reason`].
    ContactRemoved {
        uri: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instance: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reg_id: Option<u32>,
        reason: String,
    },
    /// The binding `Key::of(uri, instance, reg_id)` ran out of time at `expired_at`
    /// (its `expires_at`).
    ContactExpired {
        uri: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instance: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reg_id: Option<u32>,
        expired_at: Timestamp,
    },
    /// The binding `Key::of(uri, instance, reg_id)`, the oldest, made room for the
    /// new contact `replaced_by` (max contacts reached).
    ContactReplaced {
        uri: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instance: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reg_id: Option<u32>,
        replaced_by: String,
    },
    PresenceChanged {
        presence: Presence,
        previous: Presence,
    },
    /// The forwarding rules are now `forwarding` (all of them: a rule
    /// absent here is off).
    ForwardingChanged {
        forwarding: Box<Forwarding>,
    },
    /// Do-not-disturb was turned on (`dnd`) or off.
    DndChanged {
        dnd: bool,
    },
    /// A call leg began (see [`crate::call`]).
    CallStarted {
        call_id: String,
        direction: Direction,
        from: String,
        to: String,
        sip_call_id: String,
        started_at: Timestamp,
    },
    /// The callee of the leg's call alerts.
    CallRinging {
        call_id: String,
    },
    /// The leg's call was answered by `contact`.
    CallAnswered {
        call_id: String,
        contact: String,
        answered_at: Timestamp,
    },
    /// The leg ended; `duration_ms` runs from answer to end (0 if never
    /// answered).
    CallEnded {
        call_id: String,
        cause: Cause,
        hangup_side: HangupSide,
        duration_ms: u64,
        ended_at: Timestamp,
    },
    /// The leg failed with a final non-2xx status (0: none, e.g. a leg
    /// closed at start-up).
    CallFailed {
        call_id: String,
        sip_status: u16,
        cause: Cause,
        failed_at: Timestamp,
    },
    /// The leg ended because the user's forwarding sent the call on to
    /// `to` (`user@domain`), for `reason`.
    CallForwarded {
        call_id: String,
        to: String,
        reason: ForwardReason,
        forwarded_at: Timestamp,
    },
    /// The user's forwarding rule `rule` (to `to`) was not taken for the
    /// call, for `why` (a loop, the hop limit, a target that cannot ring);
    /// the leg goes on.
    CallForwardSkipped {
        call_id: String,
        to: String,
        rule: ForwardReason,
        why: SkipReason,
    },
    /// The user (`transferor`) transferred the call `call_id`: the other
    /// party (`transferee`) called `target` (`user@domain`) as asked, in
    /// call `new_call_id`; an attended transfer's new call replaced the
    /// transferor's call `replaced_call_id` with the target. The leg is
    /// unchanged (it ends, or ended, on its own).
    CallTransferred {
        call_id: String,
        new_call_id: String,
        transferor: String,
        transferee: String,
        target: String,
        kind: TransferKind,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replaced_call_id: Option<String>,
        transferred_at: Timestamp,
    },
    /// The mailbox was switched on or off, or its settings changed (all of
    /// them are given).
    MailboxConfigured {
        enabled: bool,
        settings: mailbox::Settings,
    },
    /// The mailbox's PIN is now `pin` (salted hash; redacted for display).
    MailboxPinChanged {
        pin: PinHash,
    },
    /// A right PIN after wrong ones: the count of wrong ones starts again.
    MailboxPinAccepted {},
    /// A wrong PIN, the `attempts`th in a row.
    MailboxPinRejected {
        attempts: u32,
    },
    /// After `attempts` wrong PINs in a row, PIN entry is refused until
    /// `locked_until`.
    MailboxLockedOut {
        attempts: u32,
        locked_until: Timestamp,
    },
    /// A caller (`from`) left a message of `duration_ms`; its audio was
    /// stored (fsynced) in the blob store under `message_id` before this
    /// was appended (ADR 0023).
    VoicemailLeft {
        message_id: MessageId,
        from: String,
        duration_ms: u32,
        left_at: Timestamp,
    },
    /// A caller (`from`) could not leave a message, and heard why.
    VoicemailRefused {
        from: String,
        reason: RefusalReason,
        refused_at: Timestamp,
    },
    /// The owner listened to the message (it is now saved, not new).
    VoicemailRead {
        message_id: MessageId,
        read_at: Timestamp,
    },
    /// The message is gone; its audio may be removed from the blob store.
    VoicemailDeleted {
        message_id: MessageId,
        deleted_at: Timestamp,
    },
    /// Callers now hear `greeting` (`None`: the default greeting).
    GreetingChanged {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        greeting: Option<Greeting>,
        changed_at: Timestamp,
    },
}

fn validate_display_name(value: &str) -> Result<()> {
    if value.chars().count() > MAX_DISPLAY_NAME_LEN {
        return Err(Error::invalid(
            "display_name",
            format!("at most {MAX_DISPLAY_NAME_LEN} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(
            "display_name",
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// A caller id is a telephone number: digits with an optional leading `+`
/// (E.164) and the dial-pad characters `*` and `#`; empty means "none".
fn validate_caller_id(value: &str) -> Result<()> {
    if value.len() > MAX_CALLER_ID_LEN {
        return Err(Error::invalid(
            "caller_id",
            format!("at most {MAX_CALLER_ID_LEN} characters"),
        ));
    }
    let digits = value.strip_prefix('+').unwrap_or(value);
    let bare_plus = digits.is_empty() && !value.is_empty();
    if bare_plus
        || digits
            .chars()
            .any(|c| !(c.is_ascii_digit() || c == '*' || c == '#'))
    {
        return Err(Error::invalid(
            "caller_id",
            format!("'{value}' is not a telephone number (digits, optional leading '+', '*', '#')"),
        ));
    }
    Ok(())
}

fn validate_max_contacts(value: u32) -> Result<()> {
    if value == 0 || value > MAX_MAX_CONTACTS {
        return Err(Error::invalid(
            "max_contacts",
            format!("must be between 1 and {MAX_MAX_CONTACTS}, got {value}"),
        ));
    }
    Ok(())
}

/// Decides what a command does to a user. `now` is the caller's clock.
pub fn decide(state: &User, command: &Command, now: Timestamp) -> Result<Vec<Event>> {
    match command {
        Command::Create { user, policy } => {
            if state.status != Status::Absent {
                // A user stream is never reused: ids are fresh per user.
                return Err(Error::AlreadyExists(state.address()));
            }
            validate_display_name(&user.display_name)?;
            validate_caller_id(&user.caller_id)?;
            let max_contacts = user.max_contacts.unwrap_or(DEFAULT_MAX_CONTACTS);
            validate_max_contacts(max_contacts)?;
            let credentials =
                Credentials::derive(&user.username, &user.domain, &user.password, *policy, now)?;
            Ok(vec![Event::UserCreated {
                user_id: user.user_id,
                domain_id: user.domain_id,
                domain: user.domain.clone(),
                username: user.username.clone(),
                display_name: user.display_name.clone(),
                caller_id: user.caller_id.clone(),
                max_contacts,
                enabled: user.enabled,
                credentials,
                created_at: now,
            }])
        }
        Command::Update { patch } => {
            require_exists(state)?;
            let display_name = patch
                .display_name
                .clone()
                .unwrap_or_else(|| state.display_name.clone());
            let caller_id = patch
                .caller_id
                .clone()
                .unwrap_or_else(|| state.caller_id.clone());
            let max_contacts = patch.max_contacts.unwrap_or(state.max_contacts);
            validate_display_name(&display_name)?;
            validate_caller_id(&caller_id)?;
            validate_max_contacts(max_contacts)?;
            let mut events = Vec::new();
            if display_name != state.display_name
                || caller_id != state.caller_id
                || max_contacts != state.max_contacts
            {
                events.push(Event::UserUpdated {
                    display_name,
                    caller_id,
                    max_contacts,
                });
            }
            match patch.enabled {
                Some(true) if !state.enabled => events.push(Event::UserEnabled {}),
                Some(false) if state.enabled => {
                    events.push(Event::UserDisabled {});
                    events.extend(registration::drop_all(
                        state,
                        registration::reason::USER_DISABLED,
                    ));
                }
                _ => {}
            }
            Ok(events)
        }
        Command::SetPassword { password, policy } => {
            require_exists(state)?;
            let (Some(username), Some(domain)) = (&state.username, &state.domain) else {
                return Err(Error::NotFound(state.address()));
            };
            let credentials = Credentials::derive(username, domain, password, *policy, now)?;
            Ok(vec![Event::PasswordChanged { credentials }])
        }
        Command::Delete { reason } => {
            require_exists(state)?;
            if reason
                .as_ref()
                .is_some_and(|r| r.chars().count() > MAX_REASON_LEN)
            {
                return Err(Error::invalid(
                    "reason",
                    format!("at most {MAX_REASON_LEN} characters"),
                ));
            }
            let mut events = vec![Event::UserDeleted {
                reason: reason.clone(),
            }];
            events.extend(registration::drop_all(
                state,
                registration::reason::USER_DELETED,
            ));
            Ok(events)
        }
        Command::SetForwarding { patch } => {
            require_exists(state)?;
            let owner = state
                .user_address()
                .ok_or_else(|| Error::NotFound(state.address()))?;
            let forwarding = patch.apply(&state.forwarding, &owner)?;
            Ok(if forwarding == state.forwarding {
                Vec::new()
            } else {
                vec![Event::ForwardingChanged {
                    forwarding: Box::new(forwarding),
                }]
            })
        }
        Command::SetDnd { on } => {
            require_exists(state)?;
            if *on == state.dnd {
                return Ok(Vec::new());
            }
            let mut events = vec![Event::DndChanged { dnd: *on }];
            let presence = registration::presence_of(&state.bindings, &state.calls, *on);
            if presence != state.presence {
                events.push(Event::PresenceChanged {
                    presence,
                    previous: state.presence,
                });
            }
            Ok(events)
        }
        Command::Register(register) => registration::decide_register(state, register, now),
        Command::ExpireContacts => Ok(registration::decide_expire(state, now)),
        Command::FlowClosed { bindings } => Ok(registration::decide_flow_closed(state, bindings)),
        Command::Call(step) => call::decide(state, step, now),
        Command::CallSteps(steps) => {
            // As each step alone: a user that never existed has no legs.
            if state.status == Status::Absent {
                return Err(Error::NotFound(state.address()));
            }
            let mut events = Vec::new();
            let mut after = None::<User>;
            for step in steps {
                let decided = call::decide(after.as_ref().unwrap_or(state), step, now)?;
                if !decided.is_empty() {
                    let mut next = after.take().unwrap_or_else(|| state.clone());
                    for event in &decided {
                        next = evolve(next, event);
                    }
                    after = Some(next);
                }
                events.extend(decided);
            }
            Ok(events)
        }
        Command::Mailbox(command) => {
            require_exists(state)?;
            mailbox::decide(&state.mailbox, command, now)
        }
    }
}

fn require_exists(state: &User) -> Result<()> {
    if state.exists() {
        Ok(())
    } else {
        Err(Error::NotFound(state.address()))
    }
}

/// Applies one event to the state.
pub fn evolve(mut state: User, event: &Event) -> User {
    match event {
        Event::UserCreated {
            user_id,
            domain_id,
            domain,
            username,
            display_name,
            caller_id,
            max_contacts,
            enabled,
            credentials,
            created_at,
        } => {
            state = User {
                id: Some(*user_id),
                domain_id: Some(*domain_id),
                domain: Some(domain.clone()),
                username: Some(username.clone()),
                status: Status::Active,
                display_name: display_name.clone(),
                caller_id: caller_id.clone(),
                max_contacts: *max_contacts,
                enabled: *enabled,
                credentials: Some(credentials.clone()),
                created_at: *created_at,
                bindings: Vec::new(),
                presence: Presence::Offline,
                calls: Legs::default(),
                forwarding: Forwarding::default(),
                dnd: false,
                mailbox: Mailbox::default(),
            };
        }
        Event::PasswordChanged { credentials } => state.credentials = Some(credentials.clone()),
        Event::UserUpdated {
            display_name,
            caller_id,
            max_contacts,
        } => {
            state.display_name = display_name.clone();
            state.caller_id = caller_id.clone();
            state.max_contacts = *max_contacts;
        }
        Event::UserEnabled {} => state.enabled = true,
        Event::UserDisabled {} => state.enabled = false,
        Event::UserDeleted { .. } => state.status = Status::Deleted,
        Event::ContactRegistered { .. }
        | Event::ContactRefreshed { .. }
        | Event::ContactRemoved { .. }
        | Event::ContactExpired { .. }
        | Event::ContactReplaced { .. } => registration::apply(&mut state.bindings, event),
        Event::PresenceChanged { presence, .. } => state.presence = *presence,
        Event::ForwardingChanged { forwarding } => state.forwarding = (**forwarding).clone(),
        Event::DndChanged { dnd } => state.dnd = *dnd,
        Event::CallStarted { .. }
        | Event::CallRinging { .. }
        | Event::CallAnswered { .. }
        | Event::CallEnded { .. }
        | Event::CallFailed { .. }
        | Event::CallForwarded { .. }
        | Event::CallForwardSkipped { .. }
        | Event::CallTransferred { .. } => state.calls.apply(event),
        Event::MailboxConfigured { .. }
        | Event::MailboxPinChanged { .. }
        | Event::MailboxPinAccepted {}
        | Event::MailboxPinRejected { .. }
        | Event::MailboxLockedOut { .. }
        | Event::VoicemailLeft { .. }
        | Event::VoicemailRefused { .. }
        | Event::VoicemailRead { .. }
        | Event::VoicemailDeleted { .. }
        | Event::GreetingChanged { .. } => mailbox::apply(&mut state.mailbox, event),
    }
    state
}
