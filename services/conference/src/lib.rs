//! Dialtone's conference application (issue 18, ADR 0025): what a caller
//! who dials a conference room hears and can do, as a sans-IO state
//! machine per call, on the media plane's rooms.
//!
//! # What it owns
//! - [`caller`]: one call to a room ([`caller::Caller`]): the PIN (a
//!   participant's or a moderator's, three tries), waiting for a
//!   moderator, joining, being turned away (full, locked, wrong PIN), and
//!   the keys pressed in the room (`*6` mute or unmute oneself, and a
//!   moderator's `*1` lock, `*2` record, `*3` mute all), each confirmed
//!   by a prompt. What the node and a call say to each other is
//!   [`caller::Input`] and [`caller::Action`].
//! - [`prompts`]: the shipped prompts (WAV files in `prompts/`, decoded
//!   once) and the tones the room plays ([`prompts::Tone`]).
//!
//! # What it must not do
//! It touches no socket, reads no clock and stores nothing: the node's
//! driver runs the room (a `dialtone_media::room::RoomHandle`), feeds each
//! call's events in, plays what it asks, and runs the conference's
//! commands on its aggregate. Who is in the room and its lock and
//! recording are the aggregate's; a call knows only itself.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod caller;
pub mod prompts;

/// What can go wrong in the conference application.
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
