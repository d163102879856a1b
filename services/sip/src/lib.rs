//! Dialtone's SIP gateway: everything that knows the SIP wire format.
//!
//! # What it owns, layer by layer
//! Each module uses only the ones above it.
//! - [`wire`]: the codec — a small zero-copy parser and response writer
//!   (RFC 3261 s.7, s.20; compact headers, folded lines, header lists,
//!   IPv6) and Content-Length framing for streams;
//! - [`auth`]: digest authentication, RFC 7616/8760 with MD5 and SHA-256,
//!   qop=auth, stateless HMAC nonces and a bounded nonce-count replay table;
//! - [`transaction`]: the sans-IO non-INVITE server transaction table (RFC
//!   3261 s.17.2.2, timers as named constants);
//! - [`transport`]: the seam to sockets — [`Flow`] (transport, local and
//!   remote address, connection id) and [`Transport`] — and the UDP, TCP,
//!   TLS and WebSocket (WS, WSS) listeners ([`transport::gateway`]) with
//!   RFC 3581 `rport`/`received`;
//! - [`registrar`] and [`core`]: request handling (validation, the
//!   [`guard`] against floods and guessers, challenges, the registrar flow:
//!   contacts, expiry policy, `*`);
//! - [`proxy`]: the forking proxy as a sans-IO call engine
//!   ([`proxy::Engine`]: inputs with `now`, actions and a next deadline
//!   out) in a thin async shell ([`proxy::Proxy`]), executing the backend's
//!   [`RoutePlan`]s, and answering and hanging up the INVITEs of feature
//!   codes the backend applied ([`FeatureOutcome`], ADR 0020);
//! - [`subscription`]: SUBSCRIBE/NOTIFY (RFC 6665) for `presence`,
//!   `dialog` and `message-summary`, a sans-IO table
//!   ([`subscription::Engine`]) in a thin shell, fed with the watched
//!   users' recorded changes through [`backend::ResourceWatcher`].
//!
//! # Main types
//! [`Gateway::start`] takes a [`GatewayConfig`] and an `Arc<dyn` [`SipBackend`]`>`
//! and returns a [`GatewayHandle`] (`local_addrs()`, `shutdown().await`).
//! [`SipBackend`] is the only way to the rest of the system: credentials
//! ([`Lookup`]), durable binding changes ([`RegisterRequest`] ->
//! [`RegisterOutcome`]), contact queries ([`CurrentContact`]), call routing
//! ([`CallRoute`], [`RoutePlan`]), call steps ([`CallRecord`]) and
//! lock-outs. With the `test-ua` feature, [`test_ua`] is a tiny SIP client
//! for black-box tests; with the `fuzzing` feature, [`fuzzing`] holds the
//! fuzz target bodies (cargo-fuzz in `fuzz/`, and `tests/fuzz_smoke.rs`).
//!
//! # What it must not do
//! It does not know actors, protobuf, events or how anything is stored, and
//! it does not decide binding rules (maximum contacts, CSeq ordering,
//! refresh versus new) or who is rung: the [`SipBackend`] implementation
//! does. It depends on no other Dialtone crate. It never reads
//! configuration files: `node` builds the [`GatewayConfig`]. Nothing in
//! `core`, `registrar`, `proxy` or `subscription` touches a socket: they
//! hand bytes to a [`Flow`]. The call engine, the subscription table and
//! the transaction table take `now` as an input; only the shells around
//! them read the clock. It keeps no subscription across a restart (ADR
//! 0014).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod app_uri;
pub mod auth;
pub mod backend;
pub mod config;
pub mod core;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod guard;
pub mod proxy;
pub mod registrar;
pub mod subscription;
#[cfg(feature = "test-ua")]
pub mod test_ua;
pub mod transaction;
pub mod transport;
pub mod wire;

pub use backend::{
    AppCall, AppEnd, AppRoute, AppSession, AppStart, Availability, BackendError, CallCause,
    CallDirection, CallPhase, CallRecord, CallRoute, CallState, CallStep, ContactChange,
    CurrentContact, DigestAlgorithms, Diversion, DiversionReason, FeatureOutcome, HangupSide,
    Lookup, MessageCounts, MessageWaiting, NextSteps, RegisterOutcome, RegisterRequest,
    RegistrarBackend, RegistrarOnly, ResourceChange, ResourceState, ResourceWatcher, RoutePlan,
    RouteStep, RouteTarget, SipBackend, SkippedForward, Transfer, TransferKind, UserCredentials,
    Watch,
};
pub use config::GatewayConfig;
pub use transport::gateway::{Gateway, GatewayHandle};
pub use transport::{ConnectionId, Flow, Transport};

/// Errors of this crate's public API (starting the gateway, the test UA).
/// Malformed SIP input is not an `Error`: it becomes a 400 or is dropped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid gateway configuration: {0}")]
    Config(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("SIP parse error: {0}")]
    Parse(#[from] wire::message::ParseError),
    #[error("digest error: {0}")]
    Digest(#[from] auth::digest::DigestError),
    #[error("timed out")]
    Timeout,
    #[error("protocol error: {0}")]
    Protocol(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
