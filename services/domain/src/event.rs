//! All of Dialtone's events, and their stored form: a type name, a schema
//! version and JSON data.
//!
//! The stored `data` is the JSON object of the variant's fields; the type
//! name is the variant's name. Reading accepts older schema versions and
//! upgrades them ([`upcast`]) before decoding.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{domain, user};

/// Any event of any aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Domain(domain::Event),
    User(user::Event),
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
}

impl EventCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            EventCategory::Provisioning => "provisioning",
            EventCategory::Registration => "registration",
            EventCategory::Presence => "presence",
            EventCategory::Call => "call",
            EventCategory::Security => "security",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "provisioning" => EventCategory::Provisioning,
            "registration" => EventCategory::Registration,
            "presence" => EventCategory::Presence,
            "call" => EventCategory::Call,
            "security" => EventCategory::Security,
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
    ("ContactRegistered", EventCategory::Registration),
    ("ContactRefreshed", EventCategory::Registration),
    ("ContactRemoved", EventCategory::Registration),
    ("ContactExpired", EventCategory::Registration),
    ("ContactReplaced", EventCategory::Registration),
    ("PresenceChanged", EventCategory::Presence),
];

/// The event types of the domain stream (`domain-{uuid}`); every other type
/// in [`EVENT_TYPES`] belongs to a user stream.
pub const DOMAIN_EVENT_TYPES: &[&str] = &[
    "DomainCreated",
    "DomainUpdated",
    "DomainSuspended",
    "DomainResumed",
    "DomainDeleted",
    "UserNameClaimed",
    "UserNameReleased",
];

/// The schema version this build writes for `event_type`.
pub fn current_schema_version(_event_type: &str) -> u32 {
    1
}

/// The category of a stored event type (`None` for unknown types).
pub fn category_of(event_type: &str) -> Option<EventCategory> {
    EVENT_TYPES
        .iter()
        .find(|(t, _)| *t == event_type)
        .map(|(_, c)| *c)
}

/// Upgrades stored data of an older schema version to the current one.
/// Each step upgrades by one version; there are none yet, as every type is
/// at version 1.
pub fn upcast(event_type: &str, schema_version: u32, data: Value) -> Result<Value, DecodeError> {
    let known = current_schema_version(event_type);
    if schema_version > known {
        return Err(DecodeError::FutureSchema {
            event_type: event_type.to_owned(),
            found: schema_version,
            known,
        });
    }
    Ok(data)
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
    pub fn to_data(&self) -> Result<String, serde_json::Error> {
        let tagged = match self {
            Event::Domain(e) => serde_json::to_value(e)?,
            Event::User(e) => serde_json::to_value(e)?,
        };
        let data = match tagged {
            Value::Object(mut map) => map
                .remove("data")
                .unwrap_or(Value::Object(Default::default())),
            other => other,
        };
        serde_json::to_string(&data)
    }

    /// Decodes a stored event, upcasting older schema versions.
    pub fn from_stored(
        event_type: &str,
        schema_version: u32,
        data: &str,
    ) -> Result<Self, DecodeError> {
        let json_err = |source| DecodeError::Json {
            event_type: event_type.to_owned(),
            source,
        };
        // Unknown types are refused before anything else, so that they are
        // reported as such (not as a JSON or schema-version error).
        if category_of(event_type).is_none() {
            return Err(DecodeError::UnknownType(event_type.to_owned()));
        }
        let data: Value = serde_json::from_str(data).map_err(json_err)?;
        let data = upcast(event_type, schema_version, data)?;
        let tagged = serde_json::json!({ "type": event_type, "data": data });
        if DOMAIN_EVENT_TYPES.contains(&event_type) {
            return serde_json::from_value(tagged)
                .map(Event::Domain)
                .map_err(json_err);
        }
        serde_json::from_value(tagged)
            .map(Event::User)
            .map_err(json_err)
    }
}

impl From<domain::Event> for Event {
    fn from(e: domain::Event) -> Self {
        Event::Domain(e)
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

/// The data of an event as it may be shown outside the node (API, CLI,
/// exports): digest HA1 values are password equivalents, so `credentials`
/// keeps only `set_at`. Everything else is unchanged.
pub fn redact_secrets(event_type: &str, mut data: Value) -> Value {
    if matches!(event_type, "UserCreated" | "PasswordChanged") {
        if let Some(Value::Object(credentials)) = data.get_mut("credentials") {
            credentials.retain(|key, _| key == "set_at");
        }
    }
    data
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

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
