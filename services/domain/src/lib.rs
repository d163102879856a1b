//! The pure domain model of Dialtone.
//!
//! # What it owns
//! Identifiers and names ([`ids`], [`names`]), digest credentials
//! ([`credentials`]), the two aggregates — [`domain::Domain`] (a SIP domain
//! and the uniqueness of user names inside it) and [`user::User`] (a SIP
//! user: credentials, settings, registered contacts, call legs and presence,
//! with the registrar's binding rules in [`registration`] and the call-leg
//! rules in [`call`]) — with their commands and events, and the
//! mapping of events to stored `(type, schema_version, data)` triples
//! ([`event`]). The API's token table is a third, small aggregate
//! ([`token::Tokens`], one stream) with the same shape. Who is rung when
//! a user is called is decided by [`routing::route`], a pure function of
//! the call, what is known of the callee and `now`.
//!
//! Every aggregate follows the same shape:
//! `decide(&State, &Command, now) -> Result<Vec<Event>, Error>` says what
//! happens; `evolve(State, &Event) -> State` applies it. Replaying the events
//! of a stream through `evolve` rebuilds the state.
//!
//! # What it must not do
//! No IO, no async, no clock, no randomness (time and new ids are passed in),
//! no SIP wire types, no protobuf, no knowledge of how events are stored.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod call;
pub mod credentials;
pub mod domain;
pub mod event;
pub mod ids;
pub mod names;
pub mod registration;
pub mod routing;
pub mod token;
pub mod user;

pub use event::{Event, EventCategory};
pub use ids::{DomainId, UserId};
pub use names::{DomainName, UserName};

/// Microseconds since the Unix epoch. The domain never reads the clock: the
/// caller passes `now` in.
pub type Timestamp = i64;

/// Why a command was refused. These are normal outcomes of `decide`, not
/// infrastructure failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A field of the command is invalid; `field` names it.
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The thing to create exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The thing addressed does not exist (or is deleted).
    #[error("{0} not found")]
    NotFound(String),
    /// The command is valid but the current state does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A REGISTER arrived out of order: same Call-ID as a binding it
    /// addresses, with a CSeq not above the one stored (RFC 3261 s.10.3
    /// step 7). Nothing was changed; the message says which binding.
    #[error("{0}")]
    OutOfOrder(String),
}

impl Error {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
