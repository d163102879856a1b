//! Identifiers of aggregates and the names of their streams.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($name:ident, $prefix:literal, $what:literal) => {
        #[doc = concat!("Identifier of a ", $what, "; its stream is `", $prefix, "-{uuid}`.")]
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// The stream holding this aggregate's events.
            pub fn stream(&self) -> String {
                format!(concat!($prefix, "-{}"), self.0)
            }

            /// Parses a stream name back into the id.
            pub fn from_stream(stream: &str) -> Option<Self> {
                let rest = stream.strip_prefix(concat!($prefix, "-"))?;
                Uuid::parse_str(rest).ok().map($name)
            }

            /// The stream-name prefix shared by all aggregates of this kind.
            pub const STREAM_PREFIX: &'static str = concat!($prefix, "-");
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map($name)
            }
        }
    };
}

id_type!(DomainId, "domain", "SIP domain");
id_type!(UserId, "user", "SIP user");
id_type!(
    ConferenceId,
    "conference",
    "conference: one meeting held in a room, from its start to its end"
);

/// Namespace for name-derived ids (UUID v5). A domain's id is derived from its
/// name so that the name alone finds the stream, and creating the same name
/// twice collides on the stream's expected version (no separate index).
const DIALTONE_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2b8e_5d7a_4c3e_9a41_2f0d_8b6e_1c57);

impl DomainId {
    /// The id of the domain called `name` (which must be normalised).
    pub fn for_name(name: &crate::DomainName) -> Self {
        DomainId(Uuid::new_v5(&DIALTONE_NAMESPACE, name.as_str().as_bytes()))
    }
}

impl UserId {
    /// The id a create request gets when it carries a client request id, so
    /// that a retry lands on the same stream.
    pub fn for_request(domain: DomainId, request_id: &str) -> Self {
        let mut key = Vec::with_capacity(16 + request_id.len());
        key.extend_from_slice(domain.0.as_bytes());
        key.extend_from_slice(request_id.as_bytes());
        UserId(Uuid::new_v5(&DIALTONE_NAMESPACE, &key))
    }
}
