//! actix actors hosting Dialtone's aggregates.
//!
//! # What it owns
//! - [`AggregateActor`]: one actor per aggregate instance (a domain, a
//!   user, or the node's one token table). It rebuilds its state from the latest snapshot plus the tail of
//!   its stream, then handles commands one at a time: expected-version check,
//!   request-id de-duplication, `decide`, append (durable), `evolve`, reply.
//!   Only this actor appends to its stream; the stream's expected version
//!   makes that single-writer rule hold even across nodes.
//! - [`Directory`]: finds the live actor of a domain, a user or the token
//!   table, activating it on demand (on an arbiter chosen by id) and
//!   forgetting it when it passivates after being idle.
//! - [`Provisioning`]: the use cases, notably those that span several
//!   actors (a user's creation claims its name in the domain), written so
//!   that a crash between steps never leaves a half-created user visible;
//!   and the API tokens' create, revoke and list.
//! - [`Facts`]: what actors publish after each commit for lock-light reads
//!   on hot paths (SIP credentials, the token table API authentication
//!   reads on every call).
//! - [`ActorSystem`]: the actix system and its arbiters, one per core.
//! - Projections of the log with a checkpoint: [`RegistrationIndex`] (users
//!   with contacts) and [`CallIndex`] (call legs in progress; closes those
//!   a previous run left open).
//!
//! # What it must not do
//! No protobuf, no SIP wire formats, no configuration files, no knowledge of
//! how events are stored beyond the `EventStore` trait.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod aggregate;
mod calls;
mod deadlines;
mod directory;
mod facts;
mod live;
mod projection;
mod provisioning;
mod registrations;
mod system;

pub use aggregate::{
    Aggregate, AggregateActor, DomainAggregate, Execute, Meta, Projection, Query, Reply,
    TokenTableId, TokensAggregate, UserAggregate, View,
};
pub use calls::{ActiveLeg, CallIndex};
pub use directory::{Directory, DirectoryConfig};
pub use facts::{DomainFacts, Facts, TokenAccess, TokenFacts, UserFacts};
pub use provisioning::{
    DomainInfo, DomainRef, ListPage, NewDomain, NewToken, NewUserRequest, Provisioning,
    ProvisioningConfig, TokenInfo, UserRef,
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
