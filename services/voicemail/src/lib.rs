//! Dialtone's voicemail (ADR 0023): what a caller who leaves a message and
//! an owner who dials their mailbox hear and can do, as sans-IO
//! applications on the media plane.
//!
//! # What it owns
//! - [`prompts`]: the shipped prompts (WAV files in `prompts/`, decoded
//!   once) and how counts are spoken: [`prompts::Prompt`] names a
//!   recording, [`prompts::Prompts`] holds them all decoded,
//!   [`prompts::number`] says a count;
//! - [`app`]: what the node and an application say to each other
//!   ([`app::Input`], [`app::Action`]) and the node's side of that
//!   contract;
//! - [`deposit`]: leaving a message ([`deposit::Deposit`]);
//! - [`menu`]: the owner's mailbox menu ([`menu::Menu`]): getting in,
//!   listening, saving, deleting, recording the greeting.
//!
//! # What it must not do
//! It touches no socket, reads no clock and stores nothing: the node runs
//! a media session for each call, feeds its events in, plays what the
//! application asks and records the mailbox commands it returns through
//! the user's actor.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod app;
pub mod deposit;
pub mod menu;
pub mod prompts;

/// What can go wrong in voicemail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A shipped prompt could not be read (a build packaging mistake).
    #[error("prompt {name}: {source}")]
    Prompt {
        name: &'static str,
        #[source]
        source: dialtone_media::Error,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
