//! Dialtone's media plane: everything that knows audio and its wire formats
//! (ADR 0022).
//!
//! # What it owns, layer by layer
//! Each module uses only the ones above it.
//! - [`g711`]: G.711 µ-law and A-law (ITU-T G.711), by hand-written tables;
//! - [`rtp`]: RTP packets (RFC 3550 s.5) as zero-copy views and a writer,
//!   and a receiver's per-stream statistics (extended sequence numbers
//!   across wraps, duplicates, reordering, loss and interarrival jitter,
//!   RFC 3550 appendix A);
//! - [`rtcp`]: RTCP sender and receiver reports, SDES and BYE (RFC 3550
//!   s.6), written from those statistics and read tolerantly;
//! - [`dtmf`]: RFC 4733 telephone-events, received (end bit,
//!   retransmissions, duration) and sent (with the end packet's
//!   redundancy);
//! - [`sdp`]: SDP (RFC 4566) for audio and the offer/answer rules (RFC
//!   3264): G.711 at 20 ms, telephone-event, comfort noise accepted, hold
//!   and resume; no common codec is a value the caller turns into a 488;
//! - [`wav`]: WAV files in and out (8 kHz mono; other inputs converted or
//!   refused with a reason);
//! - [`jitter`]: the jitter buffer where audio is consumed (recording,
//!   mixing): reordering, duplicates, late packets and gaps at a playout
//!   clock;
//! - [`pacer`]: the clocked sender where audio is produced (prompts): one
//!   20 ms frame per tick with continuous RTP timestamps, whatever the
//!   scheduler does;
//! - [`tone`]: tones and their detection (Goertzel), for beeps and for
//!   tests that check what was heard;
//! - [`mixer`]: a conference room's N−1 mixer at 20 ms frames, with the
//!   room's full mix for its recording and talk detection per
//!   participant;
//! - [`session`]: one call leg's media, [`session::MediaSession`]:
//!   symmetric RTP (latching onto the peer's source), receiving into
//!   statistics, DTMF and recordings, playing prompts at the pacer's
//!   clock, RTCP reports, the RTP timeout; what voicemail and menus drive;
//! - [`runtime`]: the thin tokio shell that runs sessions,
//!   [`runtime::MediaRuntime`]: RTP/RTCP port pairs, one task per session
//!   owning its sockets, [`runtime::MediaHandle`] for the app;
//! - [`room`]: a conference room's tokio task, [`room::RoomHandle`]:
//!   participants' sessions, the mixer at a 20 ms clock, prompts, the
//!   room's recording.
//!
//! # What it must not do
//! It knows no SIP, no actors and no storage: the call engine hands it SDP
//! bodies and takes SDP answers back; what is recorded leaves it as
//! samples. Every module but [`runtime`] and [`room`] is sans-IO: time
//! is passed in, and nothing touches a socket or reads the clock;
//! `runtime` is the async shell around [`session`], and `room` around
//! [`mixer`] and the sessions of its participants (as `dialtone-sip`'s
//! transports are around its sans-IO core), where sockets, the clock and
//! tasks live.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod dtmf;
pub mod g711;
pub mod jitter;
pub mod mixer;
pub mod pacer;
pub mod room;
pub mod rtcp;
pub mod rtp;
pub mod runtime;
pub mod sdp;
pub mod session;
pub mod tone;
pub mod wav;

/// What can go wrong in the media plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bytes from the network or a file that are not what they claim to be
    /// (an RTP or RTCP packet, an SDP body, a telephone-event payload, a
    /// WAV file); `what` names the thing, `reason` says what is wrong.
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    /// An SDP offer (or answer) with no audio stream this node can take:
    /// the SIP side answers 488 with this text as the reason.
    #[error("no common codec: {0}")]
    NoCommonCodec(String),
    /// Well-formed audio that this node does not take (a WAV file's
    /// format, rate or length), with the reason a user can act on.
    #[error("unsupported audio: {0}")]
    UnsupportedAudio(String),
    /// The conference room was closed before the request reached it.
    #[error("the room has ended")]
    RoomEnded,
    /// Reading or writing a file or socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
