//! The pure domain model of Dialtone: what each command means, as events.
//!
//! # What it owns
//! - Identifiers and names ([`ids`], [`names`]): [`DomainId`] derived from
//!   the domain name, [`UserId`]s chosen by the caller (random, or derived
//!   from a request id); validated
//!   [`DomainName`], [`UserName`] and addresses.
//! - Digest credentials ([`credentials`]): HA1 values only, never a password.
//! - The aggregates, each with its `Command`, `Event`, `decide` and `evolve`:
//!   [`domain::Domain`] (settings, status, the uniqueness of user names in
//!   it; its stream also records SIP lock-outs), [`user::User`] (credentials, settings, contacts
//!   with the binding rules of [`registration`], call legs with the rules of
//!   [`call`], presence), [`token::Tokens`] (the API's token table),
//!   [`conference::Conference`] and [`number::Number`] (one phone number:
//!   the one place in the system it belongs to). A domain's trunks
//!   ([`trunk`]) and dial plan ([`dial_plan`], with its pure
//!   [`dial_plan::DialPlan::route`]) are domain state.
//! - Who is rung when a user is called ([`routing`]): [`routing::route`], a
//!   pure function of the call, what is known of the callee and `now`,
//!   returning a refusal or a plan of steps.
//! - When a routing rule applies ([`schedule`]): weekly times less
//!   holidays in an IANA time zone, evaluated at a `now` passed in.
//! - The stored form of events ([`event`]): type names, categories, schema
//!   versions and upcasters, JSON `data`, redaction of secrets for display.
//!   The JSON Schemas of `schemas/` describe that form (checked by tests).
//!
//! # Main types
//! `decide(&State, &Command, now) -> Result<Vec<Event>>` says what happens;
//! `evolve(State, &Event) -> State` applies it; replaying a stream through
//! `evolve` rebuilds the state. [`Event`] is the union of every aggregate's
//! events; [`Error`] holds refusals only (invalid, already exists, not
//! found, failed precondition, out of order), never infrastructure errors.
//! [`Timestamp`] is microseconds since the Unix epoch.
//!
//! # What it must not do
//! No IO, no async, no clock, no randomness (time and new ids are passed
//! in), no SIP wire types, no protobuf, no knowledge of how or where events
//! are stored (only of their stored `(type, schema_version, data)` form).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod call;
pub mod conference;
pub mod conference_pin;
pub mod conference_room;
pub mod credentials;
pub mod dial_plan;
pub mod domain;
pub mod event;
pub mod feature_codes;
pub mod forwarding;
pub mod ids;
pub mod mailbox;
pub mod names;
pub mod number;
pub mod registration;
pub mod ring_group;
pub mod routing;
pub mod schedule;
pub mod token;
pub mod trunk;
pub mod user;

pub use event::{Event, EventCategory};
pub use ids::{ConferenceId, DomainId, UserId};
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
    /// A mailbox command its mailbox's state refuses (locked, no PIN):
    /// a precondition, typed so that the caller can act on it.
    #[error(transparent)]
    Mailbox(#[from] mailbox::Refusal),
    /// A caller may not enter a conference room's PIN until `until`
    /// (too many wrong PINs: `conference_pin`): typed so that the
    /// conference application can tell the caller.
    #[error("PIN entry is locked after too many wrong PINs; try again later")]
    ConferencePinLockedOut { until: Timestamp },
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
