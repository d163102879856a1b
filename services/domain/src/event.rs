//! All of Dialtone's events, and their stored form: a type name, a schema
//! version and JSON data.
//!
//! The stored `data` is the JSON object of the variant's fields; the type
//! name is the variant's name. Reading accepts older schema versions and
//! upgrades them before decoding, with the upcasting steps registered in
//! [`Upcasters`] (keyed by type and version; see [`Upcasters::builtin`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{conference, domain, number, token, user};

/// Any event of any aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Domain(domain::Event),
    User(user::Event),
    Token(token::Event),
    Conference(conference::Event),
    Number(number::Event),
}

/// Coarse groups of event types, for subscription filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventCategory {
    Provisioning,
    Registration,
    Presence,
    Call,
    Security,
    /// A voicemail box's messages (left, refused, read, deleted) and
    /// greetings.
    Voicemail,
    /// What happens in a conference (started, joined, left, muted,
    /// talking, locked, recorded, ended).
    Conference,
}

impl EventCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            EventCategory::Provisioning => "provisioning",
            EventCategory::Registration => "registration",
            EventCategory::Presence => "presence",
            EventCategory::Call => "call",
            EventCategory::Security => "security",
            EventCategory::Voicemail => "voicemail",
            EventCategory::Conference => "conference",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "provisioning" => EventCategory::Provisioning,
            "registration" => EventCategory::Registration,
            "presence" => EventCategory::Presence,
            "call" => EventCategory::Call,
            "security" => EventCategory::Security,
            "voicemail" => EventCategory::Voicemail,
            "conference" => EventCategory::Conference,
            _ => return None,
        })
    }
}

/// Why stored data could not become an [`Event`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type {0}")]
    UnknownType(String),
    #[error(
        "event {event_type} has schema version {found}, newer than this build knows ({known})"
    )]
    FutureSchema {
        event_type: String,
        found: u32,
        known: u32,
    },
    /// An upcasting step is missing or refused the stored data.
    #[error("event {event_type} at schema version {from_version}: {reason}")]
    Upcast {
        event_type: String,
        from_version: u32,
        reason: String,
    },
    #[error("event {event_type}: {source}")]
    Json {
        event_type: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Every event type with its category: the one list the rest of the system
/// (schemas, filters, documentation) is checked against.
pub const EVENT_TYPES: &[(&str, EventCategory)] = &[
    ("DomainCreated", EventCategory::Provisioning),
    ("DomainUpdated", EventCategory::Provisioning),
    ("DomainSuspended", EventCategory::Provisioning),
    ("DomainResumed", EventCategory::Provisioning),
    ("DomainDeleted", EventCategory::Provisioning),
    ("UserNameClaimed", EventCategory::Provisioning),
    ("UserNameReleased", EventCategory::Provisioning),
    ("UserCreated", EventCategory::Provisioning),
    ("PasswordChanged", EventCategory::Provisioning),
    ("UserUpdated", EventCategory::Provisioning),
    ("UserEnabled", EventCategory::Provisioning),
    ("UserDisabled", EventCategory::Provisioning),
    ("UserDeleted", EventCategory::Provisioning),
    ("ForwardingChanged", EventCategory::Provisioning),
    ("DndChanged", EventCategory::Provisioning),
    ("RingGroupCreated", EventCategory::Provisioning),
    ("RingGroupUpdated", EventCategory::Provisioning),
    ("RingGroupDeleted", EventCategory::Provisioning),
    ("MailboxConfigured", EventCategory::Provisioning),
    ("MailboxPinChanged", EventCategory::Provisioning),
    ("ContactRegistered", EventCategory::Registration),
    ("ContactRefreshed", EventCategory::Registration),
    ("ContactRemoved", EventCategory::Registration),
    ("ContactExpired", EventCategory::Registration),
    ("ContactReplaced", EventCategory::Registration),
    ("PresenceChanged", EventCategory::Presence),
    ("CallStarted", EventCategory::Call),
    ("CallRinging", EventCategory::Call),
    ("CallAnswered", EventCategory::Call),
    ("CallEnded", EventCategory::Call),
    ("CallFailed", EventCategory::Call),
    ("CallForwarded", EventCategory::Call),
    ("CallForwardSkipped", EventCategory::Call),
    ("CallTransferred", EventCategory::Call),
    ("SourceLockedOut", EventCategory::Security),
    ("ConferencePinRejected", EventCategory::Security),
    ("ConferencePinAccepted", EventCategory::Security),
    ("ConferencePinLockoutsCleared", EventCategory::Security),
    ("TokenCreated", EventCategory::Security),
    ("TokenRevoked", EventCategory::Security),
    ("MailboxPinAccepted", EventCategory::Security),
    ("MailboxPinRejected", EventCategory::Security),
    ("MailboxLockedOut", EventCategory::Security),
    ("VoicemailLeft", EventCategory::Voicemail),
    ("VoicemailRefused", EventCategory::Voicemail),
    ("VoicemailRead", EventCategory::Voicemail),
    ("VoicemailDeleted", EventCategory::Voicemail),
    ("GreetingChanged", EventCategory::Voicemail),
    ("ConferenceRoomCreated", EventCategory::Provisioning),
    ("ConferenceRoomUpdated", EventCategory::Provisioning),
    ("ConferenceRoomDeleted", EventCategory::Provisioning),
    ("ConferenceStarted", EventCategory::Conference),
    ("ParticipantJoined", EventCategory::Conference),
    ("ParticipantLeft", EventCategory::Conference),
    ("ParticipantMuted", EventCategory::Conference),
    ("ParticipantUnmuted", EventCategory::Conference),
    ("ParticipantTalking", EventCategory::Conference),
    ("ConferenceLocked", EventCategory::Conference),
    ("ConferenceUnlocked", EventCategory::Conference),
    ("ConferenceRecordingStarted", EventCategory::Conference),
    ("ConferenceRecordingStopped", EventCategory::Conference),
    ("ConferenceRecordingRequested", EventCategory::Conference),
    ("ConferenceEnded", EventCategory::Conference),
    ("TrunkCreated", EventCategory::Provisioning),
    ("TrunkUpdated", EventCategory::Provisioning),
    ("TrunkDeleted", EventCategory::Provisioning),
    ("DialPlanChanged", EventCategory::Provisioning),
    ("NumberAssigned", EventCategory::Provisioning),
    ("NumberUpdated", EventCategory::Provisioning),
    ("NumberReleased", EventCategory::Provisioning),
];

/// The event types of the domain stream (`domain-{uuid}`); every type in
/// [`EVENT_TYPES`] not here, in [`TOKEN_EVENT_TYPES`] or in
/// [`CONFERENCE_EVENT_TYPES`] or [`NUMBER_EVENT_TYPES`] belongs to a user
/// stream.
pub const DOMAIN_EVENT_TYPES: &[&str] = &[
    "DomainCreated",
    "DomainUpdated",
    "DomainSuspended",
    "DomainResumed",
    "DomainDeleted",
    "UserNameClaimed",
    "UserNameReleased",
    "SourceLockedOut",
    "RingGroupCreated",
    "RingGroupUpdated",
    "RingGroupDeleted",
    "ConferenceRoomCreated",
    "ConferenceRoomUpdated",
    "ConferenceRoomDeleted",
    "TrunkCreated",
    "TrunkUpdated",
    "TrunkDeleted",
    "DialPlanChanged",
    "ConferencePinRejected",
    "ConferencePinAccepted",
    "ConferencePinLockoutsCleared",
];

/// The event types of the token stream ([`token::STREAM`]).
pub const TOKEN_EVENT_TYPES: &[&str] = &["TokenCreated", "TokenRevoked"];

/// The event types of a conference's stream (`conference-{uuid}`).
pub const CONFERENCE_EVENT_TYPES: &[&str] = &[
    "ConferenceStarted",
    "ParticipantJoined",
    "ParticipantLeft",
    "ParticipantMuted",
    "ParticipantUnmuted",
    "ParticipantTalking",
    "ConferenceLocked",
    "ConferenceUnlocked",
    "ConferenceRecordingStarted",
    "ConferenceRecordingStopped",
    "ConferenceRecordingRequested",
    "ConferenceEnded",
];

/// The event types of a number's stream (`number-+15550001`).
pub const NUMBER_EVENT_TYPES: &[&str] = &["NumberAssigned", "NumberUpdated", "NumberReleased"];

/// The schema version this build writes for `event_type`: one more than
/// the last upcasting step registered for it in [`Upcasters::builtin`]
/// (1 when it has none).
pub fn current_schema_version(event_type: &str) -> u32 {
    Upcasters::builtin().current_version(event_type)
}

/// The category of a stored event type (`None` for unknown types).
pub fn category_of(event_type: &str) -> Option<EventCategory> {
    EVENT_TYPES
        .iter()
        .find(|(t, _)| *t == event_type)
        .map(|(_, c)| *c)
}

/// Upgrades stored data of an older schema version to the current one with
/// the built-in upcasters ([`Upcasters::builtin`]).
pub fn upcast(event_type: &str, schema_version: u32, data: Value) -> Result<Value, DecodeError> {
    Upcasters::builtin().upcast(event_type, schema_version, data)
}

/// One upcasting step: the data of an event at schema version `n` becomes
/// its data at version `n + 1`. A step is a plain function of the JSON
/// data; it fails with a message when the data is not of the old shape.
pub type UpcastStep = fn(Value) -> Result<Value, String>;

/// The upcasting steps this build knows: `(event type, from version, step)`.
///
/// Changing the stored shape of an event type means: bump nothing by hand,
/// add the step from the old version here (the type's current version is
/// then one more), give the new shape its JSON Schema in `schemas/`, and
/// keep the step forever — old events stay in the log as they were written.
/// Every type is at version 1 so far, so the list is empty.
const BUILTIN_STEPS: &[(&str, u32, UpcastStep)] = &[];

/// A registry of upcasting steps keyed by `(event type, from version)`.
///
/// Reading an event of an older schema version runs its steps in order, one
/// version at a time, up to the type's current version (one more than its
/// highest step). [`Upcasters::builtin`] holds the steps of this build
/// (`BUILTIN_STEPS` in this module) and is what [`Event::from_stored`], [`upcast`] and
/// [`current_schema_version`] use; other registries (e.g. tests that pretend
/// a type has a newer shape) are built with [`Upcasters::register`].
#[derive(Clone, Default)]
pub struct Upcasters {
    steps: std::collections::HashMap<(String, u32), UpcastStep>,
    /// Current version per type that has steps: highest `from` + 1.
    current: std::collections::HashMap<String, u32>,
}

/// Whether `data` looks like one JSON object, so that it can be embedded in
/// a larger document as it is: the parse of that document checks the rest
/// (stored data is what `Event::to_data` wrote).
fn is_json_object(data: &str) -> bool {
    let data = data.trim();
    data.starts_with('{') && data.ends_with('}')
}

impl std::fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut keys: Vec<_> = self.steps.keys().collect();
        keys.sort();
        f.debug_struct("Upcasters").field("steps", &keys).finish()
    }
}

impl Upcasters {
    /// No steps: every type is at version 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// The steps of this build.
    pub fn builtin() -> &'static Upcasters {
        static BUILTIN: std::sync::LazyLock<Upcasters> = std::sync::LazyLock::new(|| {
            let mut upcasters = Upcasters::new();
            for (event_type, from, step) in BUILTIN_STEPS {
                upcasters.register(event_type, *from, *step);
            }
            upcasters
        });
        &BUILTIN
    }

    /// Adds (or replaces) the step that upgrades `event_type` from
    /// `from_version` to `from_version + 1`. The type's current version
    /// becomes at least `from_version + 1`; a missing step in between makes
    /// reading the versions before it fail with [`DecodeError::Upcast`].
    pub fn register(&mut self, event_type: &str, from_version: u32, step: UpcastStep) -> &mut Self {
        self.steps
            .insert((event_type.to_owned(), from_version), step);
        let to = from_version.saturating_add(1);
        let current = self.current.entry(event_type.to_owned()).or_insert(1);
        *current = (*current).max(to);
        self
    }

    /// The schema version written for `event_type` (1 without steps).
    pub fn current_version(&self, event_type: &str) -> u32 {
        self.current.get(event_type).copied().unwrap_or(1)
    }

    /// Upgrades `data`, stored at `schema_version`, to the current version
    /// of `event_type`. Data already current is returned as it is; data from
    /// a newer version than this registry knows is refused.
    pub fn upcast(
        &self,
        event_type: &str,
        schema_version: u32,
        mut data: Value,
    ) -> Result<Value, DecodeError> {
        let known = self.current_version(event_type);
        if schema_version > known {
            return Err(DecodeError::FutureSchema {
                event_type: event_type.to_owned(),
                found: schema_version,
                known,
            });
        }
        let mut version = schema_version;
        while version < known {
            let Some(step) = self.steps.get(&(event_type.to_owned(), version)) else {
                return Err(DecodeError::Upcast {
                    event_type: event_type.to_owned(),
                    from_version: version,
                    reason: format!("no upcaster from version {version} to {}", version + 1),
                });
            };
            data = step(data).map_err(|reason| DecodeError::Upcast {
                event_type: event_type.to_owned(),
                from_version: version,
                reason,
            })?;
            version += 1;
        }
        Ok(data)
    }

    /// Decodes a stored event with this registry's steps: the data is
    /// upcast to the current version, then read as that version's shape.
    pub fn decode(
        &self,
        event_type: &str,
        schema_version: u32,
        data: &str,
    ) -> Result<Event, DecodeError> {
        let json_err = |source| DecodeError::Json {
            event_type: event_type.to_owned(),
            source,
        };
        // Unknown types are refused before anything else, so that they are
        // reported as such (not as a JSON or schema-version error).
        if category_of(event_type).is_none() {
            return Err(DecodeError::UnknownType(event_type.to_owned()));
        }
        if schema_version == self.current_version(event_type) && is_json_object(data) {
            // Nothing to upcast: read the variant straight from the text
            // (the type tag first, so serde needs no intermediate value).
            let tagged = format!(r#"{{"type":"{event_type}","data":{data}}}"#);
            return if DOMAIN_EVENT_TYPES.contains(&event_type) {
                serde_json::from_str(&tagged)
                    .map(Event::Domain)
                    .map_err(json_err)
            } else if TOKEN_EVENT_TYPES.contains(&event_type) {
                serde_json::from_str(&tagged)
                    .map(Event::Token)
                    .map_err(json_err)
            } else if CONFERENCE_EVENT_TYPES.contains(&event_type) {
                serde_json::from_str(&tagged)
                    .map(Event::Conference)
                    .map_err(json_err)
            } else if NUMBER_EVENT_TYPES.contains(&event_type) {
                serde_json::from_str(&tagged)
                    .map(Event::Number)
                    .map_err(json_err)
            } else {
                serde_json::from_str(&tagged)
                    .map(Event::User)
                    .map_err(json_err)
            };
        }
        let data: Value = serde_json::from_str(data).map_err(json_err)?;
        self.decode_value(event_type, schema_version, data)
    }

    /// As [`Upcasters::decode`], for data already parsed.
    pub fn decode_value(
        &self,
        event_type: &str,
        schema_version: u32,
        data: Value,
    ) -> Result<Event, DecodeError> {
        let json_err = |source| DecodeError::Json {
            event_type: event_type.to_owned(),
            source,
        };
        if category_of(event_type).is_none() {
            return Err(DecodeError::UnknownType(event_type.to_owned()));
        }
        let data = self.upcast(event_type, schema_version, data)?;
        let tagged = serde_json::json!({ "type": event_type, "data": data });
        if DOMAIN_EVENT_TYPES.contains(&event_type) {
            return serde_json::from_value(tagged)
                .map(Event::Domain)
                .map_err(json_err);
        }
        if TOKEN_EVENT_TYPES.contains(&event_type) {
            return serde_json::from_value(tagged)
                .map(Event::Token)
                .map_err(json_err);
        }
        if CONFERENCE_EVENT_TYPES.contains(&event_type) {
            return serde_json::from_value(tagged)
                .map(Event::Conference)
                .map_err(json_err);
        }
        if NUMBER_EVENT_TYPES.contains(&event_type) {
            return serde_json::from_value(tagged)
                .map(Event::Number)
                .map_err(json_err);
        }
        serde_json::from_value(tagged)
            .map(Event::User)
            .map_err(json_err)
    }
}

impl Event {
    /// The stored type name (the variant's name).
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::Domain(e) => match e {
                domain::Event::DomainCreated { .. } => "DomainCreated",
                domain::Event::DomainUpdated { .. } => "DomainUpdated",
                domain::Event::DomainSuspended { .. } => "DomainSuspended",
                domain::Event::DomainResumed { .. } => "DomainResumed",
                domain::Event::DomainDeleted { .. } => "DomainDeleted",
                domain::Event::UserNameClaimed { .. } => "UserNameClaimed",
                domain::Event::UserNameReleased { .. } => "UserNameReleased",
                domain::Event::SourceLockedOut { .. } => "SourceLockedOut",
                domain::Event::RingGroupCreated { .. } => "RingGroupCreated",
                domain::Event::RingGroupUpdated { .. } => "RingGroupUpdated",
                domain::Event::RingGroupDeleted { .. } => "RingGroupDeleted",
                domain::Event::ConferenceRoomCreated { .. } => "ConferenceRoomCreated",
                domain::Event::ConferenceRoomUpdated { .. } => "ConferenceRoomUpdated",
                domain::Event::ConferenceRoomDeleted { .. } => "ConferenceRoomDeleted",
                domain::Event::TrunkCreated { .. } => "TrunkCreated",
                domain::Event::TrunkUpdated { .. } => "TrunkUpdated",
                domain::Event::TrunkDeleted { .. } => "TrunkDeleted",
                domain::Event::DialPlanChanged { .. } => "DialPlanChanged",
                domain::Event::ConferencePinRejected { .. } => "ConferencePinRejected",
                domain::Event::ConferencePinAccepted { .. } => "ConferencePinAccepted",
                domain::Event::ConferencePinLockoutsCleared { .. } => {
                    "ConferencePinLockoutsCleared"
                }
            },
            Event::User(e) => match e {
                user::Event::UserCreated { .. } => "UserCreated",
                user::Event::PasswordChanged { .. } => "PasswordChanged",
                user::Event::UserUpdated { .. } => "UserUpdated",
                user::Event::UserEnabled { .. } => "UserEnabled",
                user::Event::UserDisabled { .. } => "UserDisabled",
                user::Event::UserDeleted { .. } => "UserDeleted",
                user::Event::ContactRegistered { .. } => "ContactRegistered",
                user::Event::ContactRefreshed { .. } => "ContactRefreshed",
                user::Event::ContactRemoved { .. } => "ContactRemoved",
                user::Event::ContactExpired { .. } => "ContactExpired",
                user::Event::ContactReplaced { .. } => "ContactReplaced",
                user::Event::PresenceChanged { .. } => "PresenceChanged",
                user::Event::ForwardingChanged { .. } => "ForwardingChanged",
                user::Event::DndChanged { .. } => "DndChanged",
                user::Event::CallStarted { .. } => "CallStarted",
                user::Event::CallRinging { .. } => "CallRinging",
                user::Event::CallAnswered { .. } => "CallAnswered",
                user::Event::CallEnded { .. } => "CallEnded",
                user::Event::CallFailed { .. } => "CallFailed",
                user::Event::CallForwarded { .. } => "CallForwarded",
                user::Event::CallForwardSkipped { .. } => "CallForwardSkipped",
                user::Event::CallTransferred { .. } => "CallTransferred",
                user::Event::MailboxConfigured { .. } => "MailboxConfigured",
                user::Event::MailboxPinChanged { .. } => "MailboxPinChanged",
                user::Event::MailboxPinAccepted { .. } => "MailboxPinAccepted",
                user::Event::MailboxPinRejected { .. } => "MailboxPinRejected",
                user::Event::MailboxLockedOut { .. } => "MailboxLockedOut",
                user::Event::VoicemailLeft { .. } => "VoicemailLeft",
                user::Event::VoicemailRefused { .. } => "VoicemailRefused",
                user::Event::VoicemailRead { .. } => "VoicemailRead",
                user::Event::VoicemailDeleted { .. } => "VoicemailDeleted",
                user::Event::GreetingChanged { .. } => "GreetingChanged",
            },
            Event::Token(e) => match e {
                token::Event::TokenCreated { .. } => "TokenCreated",
                token::Event::TokenRevoked { .. } => "TokenRevoked",
            },
            Event::Conference(e) => match e {
                conference::Event::ConferenceStarted { .. } => "ConferenceStarted",
                conference::Event::ParticipantJoined { .. } => "ParticipantJoined",
                conference::Event::ParticipantLeft { .. } => "ParticipantLeft",
                conference::Event::ParticipantMuted { .. } => "ParticipantMuted",
                conference::Event::ParticipantUnmuted { .. } => "ParticipantUnmuted",
                conference::Event::ParticipantTalking { .. } => "ParticipantTalking",
                conference::Event::ConferenceLocked { .. } => "ConferenceLocked",
                conference::Event::ConferenceUnlocked { .. } => "ConferenceUnlocked",
                conference::Event::ConferenceRecordingStarted { .. } => {
                    "ConferenceRecordingStarted"
                }
                conference::Event::ConferenceRecordingStopped { .. } => {
                    "ConferenceRecordingStopped"
                }
                conference::Event::ConferenceRecordingRequested { .. } => {
                    "ConferenceRecordingRequested"
                }
                conference::Event::ConferenceEnded { .. } => "ConferenceEnded",
            },
            Event::Number(e) => match e {
                number::Event::NumberAssigned { .. } => "NumberAssigned",
                number::Event::NumberUpdated { .. } => "NumberUpdated",
                number::Event::NumberReleased { .. } => "NumberReleased",
            },
        }
    }

    pub fn category(&self) -> EventCategory {
        category_of(self.event_type()).unwrap_or(EventCategory::Provisioning)
    }

    pub fn schema_version(&self) -> u32 {
        current_schema_version(self.event_type())
    }

    /// The JSON data stored for this event (the variant's fields).
    ///
    /// The events are adjacently tagged, and serde writes such an enum as
    /// `{"type":"<variant>","data":<fields>}`, tag first, or `{"type":"..."}`
    /// for a variant without fields. The data is cut out of that one
    /// serialisation: building a `Value` tree first (and serialising again)
    /// cost more than the rest of an actor's decision. Anything else falls
    /// back to the tree (`to_data_via_value`, also what tests compare with).
    pub fn to_data(&self) -> Result<String, serde_json::Error> {
        let whole = match self {
            Event::Domain(e) => serde_json::to_string(e)?,
            Event::User(e) => serde_json::to_string(e)?,
            Event::Token(e) => serde_json::to_string(e)?,
            Event::Conference(e) => serde_json::to_string(e)?,
            Event::Number(e) => serde_json::to_string(e)?,
        };
        match data_of_tagged(&whole) {
            Some(data) => Ok(data.to_owned()),
            None => self.to_data_via_value(),
        }
    }

    /// [`Event::to_data`] through a `serde_json::Value`: slower, and
    /// independent of the layout serde writes.
    pub fn to_data_via_value(&self) -> Result<String, serde_json::Error> {
        let tagged = match self {
            Event::Domain(e) => serde_json::to_value(e)?,
            Event::User(e) => serde_json::to_value(e)?,
            Event::Token(e) => serde_json::to_value(e)?,
            Event::Conference(e) => serde_json::to_value(e)?,
            Event::Number(e) => serde_json::to_value(e)?,
        };
        let data = match tagged {
            Value::Object(mut map) => map
                .remove("data")
                .unwrap_or(Value::Object(Default::default())),
            other => other,
        };
        serde_json::to_string(&data)
    }

    /// Decodes a stored event, upcasting older schema versions with the
    /// built-in steps ([`Upcasters::builtin`]).
    pub fn from_stored(
        event_type: &str,
        schema_version: u32,
        data: &str,
    ) -> Result<Self, DecodeError> {
        Upcasters::builtin().decode(event_type, schema_version, data)
    }
}

impl From<domain::Event> for Event {
    fn from(e: domain::Event) -> Self {
        Event::Domain(e)
    }
}

impl From<token::Event> for Event {
    fn from(e: token::Event) -> Self {
        Event::Token(e)
    }
}

impl From<conference::Event> for Event {
    fn from(e: conference::Event) -> Self {
        Event::Conference(e)
    }
}

impl From<number::Event> for Event {
    fn from(e: number::Event) -> Self {
        Event::Number(e)
    }
}

impl From<user::Event> for Event {
    fn from(e: user::Event) -> Self {
        Event::User(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_types_are_reported_as_unknown() {
        // Even when the name looks like a domain event, or the version is
        // from the future.
        for (event_type, version) in [("DomainRenamed", 1), ("UserNameFoo", 1), ("Nope", 99)] {
            let err = Event::from_stored(event_type, version, "{}").unwrap_err();
            assert!(
                matches!(err, DecodeError::UnknownType(ref t) if t == event_type),
                "{event_type}: {err}"
            );
        }
    }

    #[test]
    fn future_versions_and_bad_data_are_refused() {
        let err = Event::from_stored("UserEnabled", 2, "{}").unwrap_err();
        assert!(matches!(
            err,
            DecodeError::FutureSchema {
                found: 2,
                known: 1,
                ..
            }
        ));
        let err = Event::from_stored("UserNameClaimed", 1, "{\"username\":\"a b\"}").unwrap_err();
        assert!(matches!(err, DecodeError::Json { .. }));
        let err = Event::from_stored("DomainResumed", 1, "not json").unwrap_err();
        assert!(matches!(err, DecodeError::Json { .. }));
    }

    #[test]
    fn domain_types_are_listed_types_and_route_to_the_domain_enum() {
        for event_type in DOMAIN_EVENT_TYPES {
            assert!(category_of(event_type).is_some(), "{event_type}");
        }
        let event = Event::from_stored("DomainResumed", 1, "{}").unwrap();
        assert!(matches!(event, Event::Domain(_)));
        let data = r#"{"presence":"online","previous":"offline"}"#;
        let event = Event::from_stored("PresenceChanged", 1, data).unwrap();
        assert_eq!(event.category(), EventCategory::Presence);
        assert!(matches!(event, Event::User(_)));
        let data = r#"{"uri":"sip:a@b","reason":"unregistered"}"#;
        let event = Event::from_stored("ContactRemoved", 1, data).unwrap();
        assert_eq!(event.category(), EventCategory::Registration);
        assert!(matches!(event, Event::User(_)));
    }

    #[test]
    fn every_listed_type_decodes_to_itself() {
        for (event_type, category) in EVENT_TYPES {
            assert_eq!(category_of(event_type), Some(*category));
            // Field-less data decodes for the field-less types only; for the
            // others the error must be about the data, not the type.
            match Event::from_stored(event_type, 1, "{}") {
                Ok(event) => assert_eq!(event.event_type(), *event_type),
                Err(err) => assert!(matches!(err, DecodeError::Json { .. }), "{err}"),
            }
        }
    }
}

/// Whether [`redact_secrets`] changes the stored data of `event_type`:
/// readers that show stored JSON as it is (the API's fast path) must
/// redact these types first.
pub fn has_secrets(event_type: &str) -> bool {
    matches!(
        event_type,
        "UserCreated"
            | "PasswordChanged"
            | "TokenCreated"
            | "MailboxPinChanged"
            | "ConferenceRoomCreated"
            | "ConferenceRoomUpdated"
            | "TrunkCreated"
            | "TrunkUpdated"
    )
}

/// The data of an event as it may be shown outside the node (API, CLI,
/// exports): digest HA1 values are password equivalents, so `credentials`
/// keeps only `set_at`; a token's `secret_sha256` is left out (it is not
/// the secret, but nobody outside needs it), and so is a mailbox PIN's
/// salted hash (`pin`), and a conference room's PINs (`room.pin`,
/// `room.moderator_pin`), and a trunk's carrier password
/// (`trunk.credentials.password`: sealed, but nobody outside the node needs
/// even the ciphertext). Everything else is unchanged.
pub fn redact_secrets(event_type: &str, mut data: Value) -> Value {
    if event_type == "TokenCreated" {
        if let Value::Object(map) = &mut data {
            map.remove("secret_sha256");
        }
    }
    if event_type == "MailboxPinChanged" {
        // A salted hash of a few digits gives the PIN away to anyone who
        // tries them all.
        if let Value::Object(map) = &mut data {
            map.remove("pin");
        }
    }
    if matches!(
        event_type,
        "ConferenceRoomCreated" | "ConferenceRoomUpdated"
    ) {
        // As a mailbox's: the hash of a few digits gives them away.
        if let Some(Value::Object(room)) = data.get_mut("room") {
            room.remove("pin");
            room.remove("moderator_pin");
        }
    }
    if matches!(event_type, "TrunkCreated" | "TrunkUpdated") {
        if let Some(Value::Object(credentials)) =
            data.get_mut("trunk").and_then(|t| t.get_mut("credentials"))
        {
            credentials.remove("password");
        }
    }
    if matches!(event_type, "UserCreated" | "PasswordChanged") {
        if let Some(Value::Object(credentials)) = data.get_mut("credentials") {
            credentials.retain(|key, _| key == "set_at");
        }
    }
    data
}

#[cfg(test)]
mod upcaster_tests {
    use super::*;
    use serde_json::json;

    fn rename_name(mut data: Value) -> Result<Value, String> {
        let map = data.as_object_mut().ok_or("data is not an object")?;
        let name = map.remove("name").ok_or("no name")?;
        map.insert("display_name".into(), name);
        Ok(data)
    }

    fn add_max_contacts(mut data: Value) -> Result<Value, String> {
        let map = data.as_object_mut().ok_or("data is not an object")?;
        map.entry("max_contacts").or_insert(json!(10));
        Ok(data)
    }

    #[test]
    fn builtin_registry_has_every_type_at_version_1() {
        for (event_type, _) in EVENT_TYPES {
            assert_eq!(current_schema_version(event_type), 1, "{event_type}");
        }
        let data = json!({"x": 1});
        assert_eq!(upcast("UserEnabled", 1, data.clone()).unwrap(), data);
    }

    #[test]
    fn steps_run_in_order_up_to_the_current_version() {
        let mut upcasters = Upcasters::new();
        upcasters
            .register("UserUpdated", 2, add_max_contacts)
            .register("UserUpdated", 1, rename_name);
        assert_eq!(upcasters.current_version("UserUpdated"), 3);
        assert_eq!(upcasters.current_version("UserEnabled"), 1);
        let v1 = json!({"name": "Alice", "caller_id": ""});
        let event = upcasters.decode("UserUpdated", 1, &v1.to_string()).unwrap();
        assert_eq!(
            event,
            Event::User(user::Event::UserUpdated {
                display_name: "Alice".into(),
                caller_id: String::new(),
                max_contacts: 10,
            })
        );
        // Version 2 data only goes through the second step.
        let v2 = json!({"display_name": "Bob", "caller_id": "+1"});
        let data = upcasters.upcast("UserUpdated", 2, v2).unwrap();
        assert_eq!(
            data,
            json!({"display_name": "Bob", "caller_id": "+1", "max_contacts": 10})
        );
        // Current data is left alone; future data is refused.
        let v3 = json!({"display_name": "C", "caller_id": "", "max_contacts": 2});
        assert_eq!(upcasters.upcast("UserUpdated", 3, v3.clone()).unwrap(), v3);
        assert!(matches!(
            upcasters.upcast("UserUpdated", 4, v3),
            Err(DecodeError::FutureSchema {
                found: 4,
                known: 3,
                ..
            })
        ));
    }

    #[test]
    fn a_missing_or_failing_step_is_an_upcast_error() {
        let mut upcasters = Upcasters::new();
        upcasters.register("UserUpdated", 2, add_max_contacts);
        let err = upcasters
            .upcast("UserUpdated", 1, json!({"name": "A"}))
            .unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Upcast {
                    from_version: 1,
                    ..
                }
            ),
            "{err}"
        );
        upcasters.register("UserUpdated", 1, rename_name);
        let err = upcasters
            .upcast("UserUpdated", 1, json!({"display_name": "A"}))
            .unwrap_err();
        assert!(err.to_string().contains("no name"), "{err}");
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    #[test]
    fn the_mailbox_pin_hash_is_removed() {
        let pin = crate::mailbox::PinHash::derive("4321", [3; 16]).unwrap();
        let event = Event::User(user::Event::MailboxPinChanged { pin: pin.clone() });
        let data: Value = serde_json::from_str(&event.to_data().unwrap()).unwrap();
        assert_eq!(data["pin"], pin.as_str());
        let shown = redact_secrets("MailboxPinChanged", data);
        assert_eq!(shown, serde_json::json!({}));
    }

    #[test]
    fn a_conference_rooms_pins_are_removed() {
        let pin = crate::mailbox::PinHash::derive("2468", [3; 16]).unwrap();
        let moderator = crate::mailbox::PinHash::derive("1357", [4; 16]).unwrap();
        let room = crate::conference_room::Room {
            pin: Some(pin),
            moderator_pin: Some(moderator),
            ..Default::default()
        };
        let name = crate::UserName::parse("standup").unwrap();
        for event in [
            domain::Event::ConferenceRoomCreated {
                name: name.clone(),
                room: Box::new(room.clone()),
            },
            domain::Event::ConferenceRoomUpdated {
                name: name.clone(),
                room: Box::new(room.clone()),
            },
        ] {
            let event = Event::Domain(event);
            let stored = event.to_data().unwrap();
            assert!(stored.contains("sha256$"), "{stored}");
            let data: Value = serde_json::from_str(&stored).unwrap();
            let shown = redact_secrets(event.event_type(), data).to_string();
            assert!(!shown.contains("sha256$"), "{shown}");
            assert!(!shown.contains("pin"), "{shown}");
            assert!(shown.contains("\"max_participants\":50"), "{shown}");
        }
    }

    /// `has_secrets` names exactly the types whose data `redact_secrets`
    /// changes (tried on data holding every secret field there is).
    #[test]
    fn has_secrets_names_the_types_redact_secrets_changes() {
        let data = serde_json::json!({
            "credentials": {"ha1_md5": "aa", "ha1_sha256": "bb", "set_at": 5},
            "secret_sha256": "cc",
            "pin": "sha256$00$11",
            "room": {"pin": "sha256$00$22", "moderator_pin": "sha256$00$33"},
            "trunk": {"credentials": {"username": "acct", "password": "aead$k$00$11"}},
        });
        for (event_type, _) in EVENT_TYPES {
            let changed = redact_secrets(event_type, data.clone()) != data;
            assert_eq!(has_secrets(event_type), changed, "{event_type}");
        }
    }

    #[test]
    fn ha1_values_are_removed() {
        let data = serde_json::json!({"credentials": {"ha1_md5": "aa", "ha1_sha256": "bb", "set_at": 5}, "username": "alice"});
        let shown = redact_secrets("UserCreated", data);
        assert_eq!(
            shown,
            serde_json::json!({"credentials": {"set_at": 5}, "username": "alice"})
        );
    }
}

/// `<fields>` of `{"type":"<name>","data":<fields>}`, `{}` of
/// `{"type":"<name>"}`; `None` for any other shape. Variant names are plain
/// identifiers, so the tag's string has no escapes.
fn data_of_tagged(whole: &str) -> Option<&str> {
    let rest = whole.strip_prefix("{\"type\":\"")?;
    let (name, rest) = rest.split_once('"')?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    if rest == "}" {
        return Some("{}");
    }
    rest.strip_prefix(",\"data\":")?.strip_suffix('}')
}

#[cfg(test)]
mod trunk_redaction_tests {
    use super::*;
    use crate::trunk::{Credentials, Gateway, SealedSecret, TrunkPatch};

    #[test]
    fn a_trunks_sealed_password_is_removed() {
        let mut trunk = TrunkPatch {
            gateways: Some(vec![Gateway::parse("sip:gw.example", None).unwrap()]),
            ..Default::default()
        }
        .apply(None, "t@x")
        .unwrap();
        trunk.credentials = Some(Credentials {
            username: "acct".into(),
            password: SealedSecret::new("k1", vec![9; 12], vec![0xab; 20]).unwrap(),
            realm: None,
        });
        let event = Event::Domain(domain::Event::TrunkCreated {
            name: crate::UserName::parse("carrier").unwrap(),
            trunk: Box::new(trunk),
        });
        let stored = event.to_data().unwrap();
        assert!(stored.contains("aead$k1$"), "{stored}");
        let data: Value = serde_json::from_str(&stored).unwrap();
        let shown = redact_secrets(event.event_type(), data).to_string();
        assert!(!shown.contains("aead$"), "{shown}");
        assert!(!shown.contains("abab"), "{shown}");
        assert!(shown.contains("\"username\":\"acct\""), "{shown}");
    }
}
