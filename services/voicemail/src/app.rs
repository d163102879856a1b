//! What the node and a voicemail application say to each other: the
//! [`Input`]s the node feeds in (call, media and mailbox events) and the
//! [`Action`]s the application returns for the node to execute.
//!
//! The applications ([`crate::deposit::Deposit`], [`crate::menu::Menu`])
//! own the conversation: what is played, when a recording starts and
//! ends, which mailbox command follows. They hold no audio, no socket and
//! no clock: recordings stay in the node's media session (only their
//! length and how they ended come in), audio is named by id, and time
//! enters only as a [`Input::Timeout`] for a timer the application asked
//! for.
//!
//! # The node's side of the contract
//! - Actions are executed in order; several `Play*` actions queue their
//!   audio one after the other, and one [`Input::PlaybackDone`] comes when
//!   the queue has played out. [`Action::StopPlayback`] empties the queue
//!   and drops fetches not yet answered: no `PlaybackDone` and no
//!   `AudioReady` follow for what it stopped.
//! - [`Action::PlayMessage`] and [`Action::PlayGreeting`] fetch audio from
//!   the blob store: [`Input::AudioReady`] comes first (with `ok: false`
//!   and nothing queued when it cannot be read), then the audio is queued.
//! - One timer per call: [`Action::StartTimer`] replaces the one running;
//!   its [`Input::Timeout`] carries the timer's id, so that a timeout that
//!   fired while the application moved on is recognised and ignored.
//! - Each [`Action::Mailbox`], [`Action::SaveMessage`],
//!   [`Action::SaveGreeting`] and [`Action::LookUpMailbox`] is answered by
//!   one [`Input::MailboxUpdated`]: the mailbox after the command, or why
//!   it was refused. A `CheckPin` whose PIN is wrong (the domain records
//!   `MailboxPinRejected`) is answered with [`Refusal::WrongPin`], one that
//!   locks the mailbox (or finds it locked) with [`Refusal::Locked`].

use dialtone_domain::mailbox::{AudioId, Command, Mailbox, MessageId};

pub use crate::prompts::Prompt;

/// Why a recording ended (the node's media session says).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingEnd {
    /// It reached the `max_duration_ms` asked.
    MaxDuration,
    /// The caller said nothing for the `silence_ms` asked (trailing
    /// silence trimmed).
    Silence,
    /// The caller pressed one of the `stop_digits`.
    Digit(char),
    /// [`Action::StopRecording`] (or the call ending) stopped it.
    Stopped,
}

/// Why a mailbox command or look-up was not done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// PIN entry is locked (too many wrong PINs, across calls).
    Locked,
    /// The PIN entered is not the mailbox's.
    WrongPin,
    /// No such mailbox (a look-up), or no such message (deleted meanwhile).
    NotFound,
    /// The domain refused the command as invalid (the reason, for logs).
    Invalid(String),
    /// The node could not do it (storage or the user's actor failing):
    /// nothing was changed.
    Unavailable,
}

/// What happened on the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The caller hears us (the ACK arrived): start.
    Answered,
    /// What was asked to play has played out.
    PlaybackDone,
    /// A digit was pressed (the media session's `DtmfEvent::Began`).
    Dtmf(char),
    /// The recording asked for ended; its samples stay in the node.
    RecordingDone { duration_ms: u32, end: RecordingEnd },
    /// The answer to a mailbox command, save or look-up.
    MailboxUpdated(Result<Mailbox, Refusal>),
    /// The audio of a [`Action::PlayMessage`] or [`Action::PlayGreeting`]
    /// was fetched (`ok`) or could not be.
    AudioReady { audio: AudioId, ok: bool },
    /// The timer started with this id fired.
    Timeout(u32),
    /// The caller hung up (BYE) or the media stopped (RTP timeout).
    HungUp,
}

/// What the node is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Queue these prompts, in order.
    Play(Vec<Prompt>),
    /// Fetch this message's audio, answer [`Input::AudioReady`], queue it.
    PlayMessage(MessageId),
    /// Fetch the mailbox's own greeting, answer [`Input::AudioReady`],
    /// queue it.
    PlayGreeting(AudioId),
    /// Empty the playback queue and drop pending fetches (barge-in); no
    /// `PlaybackDone` or `AudioReady` follows for them.
    StopPlayback,
    /// Record the caller (after what is queued has played) until one of
    /// the limits; [`Input::RecordingDone`] follows.
    Record {
        max_duration_ms: u32,
        /// Silence that ends the recording; 0: none does.
        silence_ms: u32,
        stop_digits: &'static str,
    },
    /// End the recording now; its [`Input::RecordingDone`] (end
    /// `Stopped`) still follows, and the recording is kept until it is
    /// saved or discarded.
    StopRecording,
    /// Store the recording as a message: blob put and fsync, then
    /// `Command::Leave` with a fresh id, this `from` and `duration_ms`.
    SaveMessage { from: String, duration_ms: u32 },
    /// Store the recording as the mailbox's greeting: blob put and fsync,
    /// then `Command::SetGreeting`.
    SaveGreeting { duration_ms: u32 },
    /// Drop the recording (stopping it first if it is still running).
    DiscardRecording,
    /// Run this command on the mailbox (through the user's actor).
    Mailbox(Command),
    /// Find the mailbox with this number or name (`*98`): answered with
    /// the mailbox or [`Refusal::NotFound`].
    LookUpMailbox(String),
    /// Start the call's timer (replacing the one running): after
    /// `duration_ms`, [`Input::Timeout`] with this `id`.
    StartTimer { id: u32, duration_ms: u32 },
    /// End the call (BYE).
    HangUp,
}

/// The application's timer: which one is running, so that a stale
/// timeout is ignored.
#[derive(Debug, Default)]
pub(crate) struct Timer {
    next_id: u32,
    running: Option<u32>,
}

impl Timer {
    pub(crate) fn start(&mut self, duration_ms: u32) -> Action {
        self.next_id = self.next_id.wrapping_add(1);
        self.running = Some(self.next_id);
        Action::StartTimer {
            id: self.next_id,
            duration_ms,
        }
    }

    /// Forgets the running timer: its timeout, if it comes, is stale.
    pub(crate) fn cancel(&mut self) {
        self.running = None;
    }

    /// Whether `id` is the running timer's (which then stops running).
    pub(crate) fn fired(&mut self, id: u32) -> bool {
        if self.running == Some(id) {
            self.running = None;
            true
        } else {
            false
        }
    }
}
