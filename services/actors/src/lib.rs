//! actix actors hosting Dialtone's aggregates: where commands become durable
//! events, and where the clock is read ([`now_us`]) and passed to `domain`.
//!
//! # What it owns
//! - [`AggregateActor`]: one actor per aggregate instance, generic over an
//!   [`Aggregate`] ([`DomainAggregate`], [`UserAggregate`], and the node's
//!   one token table, [`TokensAggregate`]). Only this actor appends to its
//!   stream; the expected version makes that hold across nodes. It activates
//!   from the latest snapshot plus the tail of its stream, then handles
//!   commands in batches (one append in flight; commands arriving meanwhile
//!   are decided one after the other and appended together): request-id
//!   de-duplication, `decide`, append with the expected version (durable),
//!   `evolve`, reply. Queries ([`Query`]) see durable state only. Idle
//!   actors passivate, saving a snapshot when enough was folded since the
//!   last one.
//! - [`Directory`]: finds or activates the actor of a domain, a user or the
//!   token table (on an
//!   arbiter of the [`ActorSystem`] chosen by id), and runs aggregates'
//!   deadlines ([`Aggregate::next_deadline`], contact expiry) from a
//!   node-level queue, activating passivated actors on time.
//! - [`Facts`]: what actors publish after each commit for lock-light reads
//!   on hot paths (domain status and names, user credentials, the token
//!   table API authentication reads on every call).
//! - [`Provisioning`]: the use cases that span several actors (a user's
//!   creation claims its name in the domain), crash-safe between steps;
//!   and the API tokens' create, revoke and list.
//! - Checkpointed projections of the whole log: [`RegistrationIndex`]
//!   (users with contacts: woken at start-up, "who is online") and
//!   [`CallIndex`] (call legs in progress; at start-up it closes those a
//!   previous run left open), [`AudioIndex`] (the voicemail audio the
//!   mailboxes name: what the node's blob sweeper keeps) and
//!   [`ConferenceIndex`] (the conferences in progress, per domain and
//!   room), [`NumberIndex`] (every assigned phone number: the router's
//!   number → domain and target).
//! - [`secrets::SecretsKeyring`]: the operator's key that seals carrier
//!   passwords before they are written (ADR 0028).
//! - [`Error`]: domain refusals, version conflicts, event-log failures,
//!   corrupt data, unreachable actors, kept apart for the API's status codes.
//!
//! # What it must not do
//! No protobuf, no SIP wire formats, no configuration files, no knowledge of
//! how events are stored beyond the `EventStore` trait. Nothing but an
//! aggregate's own actor appends to its stream, and never without an
//! expected version (which would also fence a stale actor if two nodes
//! ever activated the same aggregate: its append fails and it reloads).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod aggregate;
mod audio_index;
mod calls;
mod conferences;
mod deadlines;
mod directory;
mod facts;
mod flows;
mod live;
mod numbers;
mod projection;
mod provisioning;
mod registrations;
pub mod secrets;
mod system;

pub use aggregate::{
    Aggregate, AggregateActor, ConferenceAggregate, DomainAggregate, Execute, Meta,
    NumberAggregate, Projection, Query, Reply, TokenTableId, TokensAggregate, UserAggregate, View,
};
pub use audio_index::AudioIndex;
pub use calls::{ActiveLeg, CallIndex};
pub use conferences::{ConferenceIndex, LiveConference};
pub use directory::{Directory, DirectoryConfig};
pub use facts::{
    CallFeatures, CallState, ContactFact, DomainFacts, Facts, TokenAccess, TokenFacts, UserFacts,
};
pub use flows::{FlowFact, Flows};
pub use numbers::NumberIndex;
pub use provisioning::conference::{
    ConferenceInfo, ConferenceRoomInfo, Control, RoomChange, MIN_ID_PREFIX,
};
pub use provisioning::trunk::{DialPlanInfo, NumberInfo, TrunkChange, TrunkInfo, NO_SECRETS_KEY};
pub use provisioning::voicemail::{new_audio_id, MailboxChange, UserMailbox};
pub use provisioning::{
    DomainInfo, DomainRef, ListPage, NewDomain, NewToken, NewUserRequest, Provisioning,
    ProvisioningConfig, RingGroupInfo, TokenInfo, UserRef, WrittenForwarding, WrittenRingGroup,
};
pub use registrations::RegistrationIndex;
pub use system::ActorSystem;

/// Errors of the actor layer. Domain refusals stay apart from
/// infrastructure failures so that the API can map each to the right code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The domain model refused the command.
    #[error(transparent)]
    Domain(#[from] dialtone_domain::Error),
    /// The caller's expected version is not the stream's version.
    #[error("version mismatch: expected {expected}, current {}", current.map(|v| v.to_string()).unwrap_or_else(|| "none (empty stream)".into()))]
    WrongVersion { expected: u64, current: Option<u64> },
    /// The event log failed (IO, disk full, closed): nothing was acknowledged.
    #[error("event log unavailable: {0}")]
    Store(#[from] dialtone_eventlog::Error),
    /// A stored event or snapshot could not be decoded.
    #[error("corrupt data in {stream}: {reason}")]
    Corrupt { stream: String, reason: String },
    /// The actor could not be reached (stopping, system shut down).
    #[error("actor unavailable: {0}")]
    Unavailable(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The wall clock in microseconds since the Unix epoch. Actors are the
/// boundary where the clock is read and passed into the pure domain.
pub fn now_us() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
