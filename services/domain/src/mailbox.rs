//! A user's voicemail box (ADR 0023): its settings, PIN, greeting and
//! messages, part of the `User` aggregate, so that a user's calls, its
//! forwarding to `voicemail` and its messages are one stream and one
//! writer (and the erasure of a user covers its mailbox).
//!
//! The audio of a message or greeting is never in an event: events carry an
//! [`AudioId`], the key of the bytes in the node's blob store, written and
//! fsynced before the event that names them is appended. `decide` here only
//! checks and records; it neither stores nor reads audio.
//!
//! A PIN is kept as a salted SHA-256 ([`PinHash`]); the salt is made by the
//! caller (the domain takes no randomness). A PIN of a few digits can be
//! guessed from its hash by trying them all, so the hash only keeps it
//! out of sight: what protects a mailbox is the lock-out after
//! [`PIN_ATTEMPTS_BEFORE_LOCKOUT`] wrong PINs in a row, which holds for
//! [`PIN_LOCKOUT_US`], twice as long for each lock-out in a row (at most
//! [`MAX_PIN_LOCKOUT_US`]).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle_free::constant_time_eq;

use crate::{Error, Result, Timestamp};

/// Default and bounds of a message's length.
pub const DEFAULT_MAX_MESSAGE_MS: u32 = 180_000;
pub const MAX_MAX_MESSAGE_MS: u32 = 600_000;
pub const MIN_MAX_MESSAGE_MS: u32 = 5_000;
/// Default and bounds of the number of messages a mailbox keeps.
pub const DEFAULT_MAX_MESSAGES: u32 = 100;
pub const MAX_MAX_MESSAGES: u32 = 1_000;
/// A recording shorter than this is not a message (a caller who hung up at
/// the beep): it is dropped, with no event.
pub const MIN_MESSAGE_MS: u32 = 1_000;
/// PIN length bounds, in digits.
pub const MIN_PIN_DIGITS: usize = 4;
pub const MAX_PIN_DIGITS: usize = 12;
/// Wrong PINs in a row that lock the mailbox, and for how long.
pub const PIN_ATTEMPTS_BEFORE_LOCKOUT: u32 = 5;
pub const PIN_LOCKOUT_US: i64 = 15 * 60 * 1_000_000;
/// Each lock-out that follows another without a right PIN in between lasts
/// twice as long as the one before, up to this: a guesser gets about 30
/// tries a day instead of 480, while the owner who mistyped once waits 15
/// minutes.
pub const MAX_PIN_LOCKOUT_US: i64 = 24 * 60 * 60 * 1_000_000;
/// Longest `from` (the caller's address) recorded with a message.
pub const MAX_FROM_LEN: usize = 256;

/// The key of an audio file (a message or a greeting) in the blob store:
/// `vm-` and 32 lowercase hex digits, made by the node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AudioId(String);

impl AudioId {
    pub fn parse(value: &str) -> Result<Self> {
        let hex = value.strip_prefix("vm-").unwrap_or("");
        if hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(value.to_owned()))
        } else {
            Err(Error::invalid(
                "audio_id",
                format!("'{value}' is not an audio id (vm- and 32 hex digits)"),
            ))
        }
    }

    /// The id for 16 random bytes (the caller's randomness).
    pub fn from_random(bytes: [u8; 16]) -> Self {
        Self(format!("vm-{}", hex::encode(bytes)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for AudioId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A message's id within its mailbox: its audio's id (a message has exactly
/// one recording, and an id made once is never reused).
pub type MessageId = AudioId;

/// A PIN as stored: `sha256$<salt hex>$<hash hex>`, the SHA-256 of the salt
/// followed by the PIN's digits.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PinHash(String);

impl std::fmt::Debug for PinHash {
    // A hash of a few digits is nearly the PIN itself: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinHash(<redacted>)")
    }
}

impl PinHash {
    /// Checks the PIN (digits only, [`MIN_PIN_DIGITS`]..=[`MAX_PIN_DIGITS`])
    /// and hashes it with `salt`.
    pub fn derive(pin: &str, salt: [u8; 16]) -> Result<Self> {
        validate_pin(pin)?;
        Ok(Self(format!(
            "sha256${}${}",
            hex::encode(salt),
            hex::encode(digest(&salt, pin))
        )))
    }

    /// Whether `pin` is the PIN this was derived from (in constant time
    /// over the hash).
    pub fn matches(&self, pin: &str) -> bool {
        let mut parts = self.0.split('$');
        let (Some("sha256"), Some(salt), Some(hash), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let (Ok(salt), Ok(hash)) = (hex::decode(salt), hex::decode(hash)) else {
            return false;
        };
        constant_time_eq(&digest(&salt, pin), &hash)
    }

    /// The stored form (for events; redacted when displayed).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn digest(salt: &[u8], pin: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(pin.as_bytes());
    hasher.finalize().into()
}

mod subtle_free {
    /// Equality whose time does not depend on where two equal-length
    /// slices first differ.
    pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

fn validate_pin(pin: &str) -> Result<()> {
    let digits = pin.len();
    if !(MIN_PIN_DIGITS..=MAX_PIN_DIGITS).contains(&digits)
        || !pin.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(Error::invalid(
            "pin",
            format!("must be {MIN_PIN_DIGITS} to {MAX_PIN_DIGITS} digits"),
        ));
    }
    Ok(())
}

/// One message in a mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub message_id: MessageId,
    /// The caller, as `user@domain` or the From URI's user part and host.
    pub from: String,
    pub left_at: Timestamp,
    pub duration_ms: u32,
    /// Listened to (a "saved" message) rather than new.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read: bool,
}

/// The greeting callers hear: the user's recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Greeting {
    pub audio: AudioId,
    pub duration_ms: u32,
}

/// A mailbox: off until enabled. (`Default` is a mailbox never configured.)
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mailbox {
    pub enabled: bool,
    pub settings: Settings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<PinHash>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub greeting: Option<Greeting>,
    /// Wrong PINs since the last right one (or the last lock-out).
    #[serde(default)]
    pub failed_pin_attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_until: Option<Timestamp>,
    /// Lock-outs since the last right PIN (or PIN change): the next one
    /// lasts [`Mailbox::lockout_us`].
    #[serde(default)]
    pub lockouts: u32,
    /// Oldest first.
    #[serde(default)]
    pub messages: Vec<Message>,
}

/// A mailbox's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub max_message_ms: u32,
    pub max_messages: u32,
    /// Whether the owner's own registered phone must give the PIN too when
    /// it dials its mailbox (`*97`); another phone (`*98`) always must.
    #[serde(default)]
    pub pin_from_own_phone: bool,
    /// NOTIFY `message-summary` to the owner's registered phones even when
    /// they did not subscribe (RFC 3842 s.3: some phones expect it).
    #[serde(default)]
    pub unsolicited_mwi: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_message_ms: DEFAULT_MAX_MESSAGE_MS,
            max_messages: DEFAULT_MAX_MESSAGES,
            pin_from_own_phone: false,
            unsolicited_mwi: false,
        }
    }
}

impl Mailbox {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// New (unread) and saved (read) message counts: what RFC 3842's
    /// `Voice-Message: new/old` and the menu say.
    pub fn counts(&self) -> (u32, u32) {
        let new = self.messages.iter().filter(|m| !m.read).count();
        let total = self.messages.len();
        (count(new), count(total - new))
    }

    pub fn is_full(&self) -> bool {
        self.messages.len() >= usize::try_from(self.settings.max_messages).unwrap_or(usize::MAX)
    }

    pub fn message(&self, id: &MessageId) -> Option<&Message> {
        self.messages.iter().find(|m| &m.message_id == id)
    }

    /// Whether PIN entry is refused at `now` (locked out).
    pub fn is_locked(&self, now: Timestamp) -> bool {
        self.locked_until.is_some_and(|until| now < until)
    }

    /// How long the next lock-out lasts: [`PIN_LOCKOUT_US`], doubled for
    /// each lock-out before it since the last right PIN, at most
    /// [`MAX_PIN_LOCKOUT_US`].
    pub fn lockout_us(&self) -> i64 {
        let doublings = self.lockouts.min(16);
        PIN_LOCKOUT_US
            .saturating_mul(1i64 << doublings)
            .min(MAX_PIN_LOCKOUT_US)
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A partial change of a mailbox's settings: `None` keeps the value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patch {
    pub enabled: Option<bool>,
    pub max_message_ms: Option<u32>,
    pub max_messages: Option<u32>,
    pub pin_from_own_phone: Option<bool>,
    pub unsolicited_mwi: Option<bool>,
    /// A new PIN, already hashed by the caller with a fresh salt.
    pub pin: Option<PinHash>,
}

/// A mailbox command the mailbox's state refuses, as a value the caller
/// can act on (the voicemail driver tells a locked caller so) rather than
/// text to search. Carried as [`Error::Mailbox`]; nothing is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// PIN entry is locked out after too many wrong PINs, until `until`.
    #[error("the mailbox is locked after too many wrong PINs; try again later")]
    Locked { until: Timestamp },
    /// The mailbox has no PIN, so no PIN can be checked.
    #[error("the mailbox has no PIN")]
    NoPin,
}

/// Why a caller could not leave a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// The mailbox holds its maximum number of messages.
    MailboxFull,
    /// The mailbox is not enabled.
    MailboxDisabled,
}

impl RefusalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::MailboxFull => "mailbox_full",
            RefusalReason::MailboxDisabled => "mailbox_disabled",
        }
    }
}

/// What a mailbox command asks.
#[derive(Clone, PartialEq, Eq)]
pub enum Command {
    /// Changes settings and/or the PIN. Enabling a mailbox without a PIN is
    /// refused: `*98` and the owner's other phones would have no way in.
    Configure(Patch),
    /// A caller finished recording: the audio is stored (fsynced) under
    /// `message_id`. Refused as invalid when shorter than
    /// [`MIN_MESSAGE_MS`] or longer than the mailbox allows (plus a second
    /// of slack for the end of the recording); a full or disabled mailbox
    /// records a [`Event::VoicemailRefused`] instead (the caller was told).
    Leave {
        message_id: MessageId,
        from: String,
        duration_ms: u32,
    },
    /// A caller reached a mailbox that cannot take a message, and was told.
    Refuse {
        from: String,
        reason: RefusalReason,
    },
    /// The owner listened to a message (or marked it read).
    MarkRead {
        message_id: MessageId,
    },
    Delete {
        message_id: MessageId,
    },
    /// A new greeting (stored under `audio`), or back to the default one.
    SetGreeting {
        greeting: Option<Greeting>,
    },
    /// Someone entered `pin` for this mailbox: right resets the count of
    /// wrong ones; wrong counts, and the [`PIN_ATTEMPTS_BEFORE_LOCKOUT`]th
    /// in a row locks the mailbox. While locked, refused with
    /// [`Refusal::Locked`] (nothing is recorded: the lock-out was).
    CheckPin {
        pin: String,
    },
}

impl std::fmt::Debug for Command {
    // A PIN entered is a secret: commands end up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Configure(patch) => f.debug_tuple("Configure").field(patch).finish(),
            Command::Leave {
                message_id,
                from,
                duration_ms,
            } => f
                .debug_struct("Leave")
                .field("message_id", message_id)
                .field("from", from)
                .field("duration_ms", duration_ms)
                .finish(),
            Command::Refuse { from, reason } => f
                .debug_struct("Refuse")
                .field("from", from)
                .field("reason", reason)
                .finish(),
            Command::MarkRead { message_id } => f
                .debug_struct("MarkRead")
                .field("message_id", message_id)
                .finish(),
            Command::Delete { message_id } => f
                .debug_struct("Delete")
                .field("message_id", message_id)
                .finish(),
            Command::SetGreeting { greeting } => f
                .debug_struct("SetGreeting")
                .field("greeting", greeting)
                .finish(),
            Command::CheckPin { .. } => f
                .debug_struct("CheckPin")
                .field("pin", &"<redacted>")
                .finish(),
        }
    }
}

/// A mailbox's events (variants of the user's event enum: see
/// [`crate::user::Event`], where they are documented).
pub use crate::user::Event;

/// Decides a mailbox command for the user's mailbox `mailbox`.
pub fn decide(mailbox: &Mailbox, command: &Command, now: Timestamp) -> Result<Vec<Event>> {
    match command {
        Command::Configure(patch) => decide_configure(mailbox, patch),
        Command::Leave {
            message_id,
            from,
            duration_ms,
        } => {
            validate_from(from)?;
            if mailbox.message(message_id).is_some() {
                // A retried Leave (its event ids differ only without a
                // request id): the message is there already.
                return Ok(Vec::new());
            }
            if !mailbox.enabled {
                return Ok(vec![Event::VoicemailRefused {
                    from: from.clone(),
                    reason: RefusalReason::MailboxDisabled,
                    refused_at: now,
                }]);
            }
            if mailbox.is_full() {
                return Ok(vec![Event::VoicemailRefused {
                    from: from.clone(),
                    reason: RefusalReason::MailboxFull,
                    refused_at: now,
                }]);
            }
            if *duration_ms < MIN_MESSAGE_MS {
                return Err(Error::invalid(
                    "duration_ms",
                    format!("{duration_ms} ms is under the {MIN_MESSAGE_MS} ms a message needs"),
                ));
            }
            let limit = mailbox.settings.max_message_ms.saturating_add(1_000);
            if *duration_ms > limit {
                return Err(Error::invalid(
                    "duration_ms",
                    format!(
                        "{duration_ms} ms is over the mailbox's {} ms",
                        mailbox.settings.max_message_ms
                    ),
                ));
            }
            Ok(vec![Event::VoicemailLeft {
                message_id: message_id.clone(),
                from: from.clone(),
                duration_ms: *duration_ms,
                left_at: now,
            }])
        }
        Command::Refuse { from, reason } => {
            validate_from(from)?;
            Ok(vec![Event::VoicemailRefused {
                from: from.clone(),
                reason: *reason,
                refused_at: now,
            }])
        }
        Command::MarkRead { message_id } => {
            let message = mailbox
                .message(message_id)
                .ok_or_else(|| Error::NotFound(format!("message {message_id}")))?;
            Ok(if message.read {
                Vec::new()
            } else {
                vec![Event::VoicemailRead {
                    message_id: message_id.clone(),
                    read_at: now,
                }]
            })
        }
        Command::Delete { message_id } => {
            mailbox
                .message(message_id)
                .ok_or_else(|| Error::NotFound(format!("message {message_id}")))?;
            Ok(vec![Event::VoicemailDeleted {
                message_id: message_id.clone(),
                deleted_at: now,
            }])
        }
        Command::SetGreeting { greeting } => {
            if *greeting == mailbox.greeting {
                return Ok(Vec::new());
            }
            Ok(vec![Event::GreetingChanged {
                greeting: greeting.clone(),
                changed_at: now,
            }])
        }
        Command::CheckPin { pin } => {
            if let Some(until) = mailbox.locked_until.filter(|until| now < *until) {
                return Err(Error::Mailbox(Refusal::Locked { until }));
            }
            let Some(stored) = &mailbox.pin else {
                return Err(Error::Mailbox(Refusal::NoPin));
            };
            if stored.matches(pin) {
                return Ok(if mailbox.failed_pin_attempts > 0 || mailbox.lockouts > 0 {
                    vec![Event::MailboxPinAccepted {}]
                } else {
                    Vec::new()
                });
            }
            let attempts = mailbox.failed_pin_attempts.saturating_add(1);
            let mut events = vec![Event::MailboxPinRejected { attempts }];
            if attempts >= PIN_ATTEMPTS_BEFORE_LOCKOUT {
                events.push(Event::MailboxLockedOut {
                    attempts,
                    locked_until: now.saturating_add(mailbox.lockout_us()),
                });
            }
            Ok(events)
        }
    }
}

fn decide_configure(mailbox: &Mailbox, patch: &Patch) -> Result<Vec<Event>> {
    let settings = Settings {
        max_message_ms: patch
            .max_message_ms
            .unwrap_or(mailbox.settings.max_message_ms),
        max_messages: patch.max_messages.unwrap_or(mailbox.settings.max_messages),
        pin_from_own_phone: patch
            .pin_from_own_phone
            .unwrap_or(mailbox.settings.pin_from_own_phone),
        unsolicited_mwi: patch
            .unsolicited_mwi
            .unwrap_or(mailbox.settings.unsolicited_mwi),
    };
    if !(MIN_MAX_MESSAGE_MS..=MAX_MAX_MESSAGE_MS).contains(&settings.max_message_ms) {
        return Err(Error::invalid(
            "max_message_ms",
            format!(
                "must be between {MIN_MAX_MESSAGE_MS} and {MAX_MAX_MESSAGE_MS}, got {}",
                settings.max_message_ms
            ),
        ));
    }
    if !(1..=MAX_MAX_MESSAGES).contains(&settings.max_messages) {
        return Err(Error::invalid(
            "max_messages",
            format!(
                "must be between 1 and {MAX_MAX_MESSAGES}, got {}",
                settings.max_messages
            ),
        ));
    }
    let enabled = patch.enabled.unwrap_or(mailbox.enabled);
    if enabled && patch.pin.is_none() && mailbox.pin.is_none() {
        return Err(Error::invalid(
            "pin",
            "a mailbox needs a PIN to be enabled (its owner dials in with it)",
        ));
    }
    let mut events = Vec::new();
    if enabled != mailbox.enabled || settings != mailbox.settings {
        events.push(Event::MailboxConfigured { enabled, settings });
    }
    if let Some(pin) = &patch.pin {
        events.push(Event::MailboxPinChanged { pin: pin.clone() });
    }
    Ok(events)
}

fn validate_from(from: &str) -> Result<()> {
    if from.len() > MAX_FROM_LEN || from.chars().any(char::is_control) {
        return Err(Error::invalid(
            "from",
            format!("at most {MAX_FROM_LEN} bytes without control characters"),
        ));
    }
    Ok(())
}

/// Applies a mailbox event to the mailbox (the user's [`crate::user::evolve`]
/// hands them here; other events are ignored).
pub fn apply(mailbox: &mut Mailbox, event: &Event) {
    match event {
        Event::MailboxConfigured { enabled, settings } => {
            mailbox.enabled = *enabled;
            mailbox.settings = *settings;
        }
        Event::MailboxPinChanged { pin } => {
            mailbox.pin = Some(pin.clone());
            mailbox.failed_pin_attempts = 0;
            mailbox.locked_until = None;
            mailbox.lockouts = 0;
        }
        Event::MailboxPinAccepted {} => {
            mailbox.failed_pin_attempts = 0;
            mailbox.lockouts = 0;
        }
        Event::MailboxPinRejected { attempts } => mailbox.failed_pin_attempts = *attempts,
        Event::MailboxLockedOut { locked_until, .. } => {
            mailbox.failed_pin_attempts = 0;
            mailbox.locked_until = Some(*locked_until);
            mailbox.lockouts = mailbox.lockouts.saturating_add(1);
        }
        Event::VoicemailLeft {
            message_id,
            from,
            duration_ms,
            left_at,
        } => mailbox.messages.push(Message {
            message_id: message_id.clone(),
            from: from.clone(),
            left_at: *left_at,
            duration_ms: *duration_ms,
            read: false,
        }),
        Event::VoicemailRead { message_id, .. } => {
            if let Some(m) = mailbox
                .messages
                .iter_mut()
                .find(|m| &m.message_id == message_id)
            {
                m.read = true;
            }
        }
        Event::VoicemailDeleted { message_id, .. } => {
            mailbox.messages.retain(|m| &m.message_id != message_id);
        }
        Event::GreetingChanged { greeting, .. } => mailbox.greeting = greeting.clone(),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = 1_800_000_000_000_000;

    fn id(n: u8) -> AudioId {
        AudioId::from_random([n; 16])
    }

    fn enabled() -> Mailbox {
        let mut mailbox = Mailbox::default();
        let events = decide(
            &mailbox,
            &Command::Configure(Patch {
                enabled: Some(true),
                pin: Some(PinHash::derive("4321", [7; 16]).unwrap()),
                ..Patch::default()
            }),
            NOW,
        )
        .unwrap();
        for e in &events {
            apply(&mut mailbox, e);
        }
        mailbox
    }

    fn run(mailbox: &mut Mailbox, command: Command, now: Timestamp) -> Vec<Event> {
        let events = decide(mailbox, &command, now).unwrap();
        for e in &events {
            apply(mailbox, e);
        }
        events
    }

    #[test]
    fn a_pin_hash_matches_only_its_pin_and_is_never_printed() {
        let hash = PinHash::derive("4321", [1; 16]).unwrap();
        assert!(hash.matches("4321"));
        assert!(!hash.matches("4322"));
        assert!(!hash.matches(""));
        assert_ne!(hash, PinHash::derive("4321", [2; 16]).unwrap(), "salted");
        assert!(!format!("{hash:?}").contains(hash.as_str()));
        assert!(PinHash::derive("12a4", [1; 16]).is_err());
        assert!(PinHash::derive("123", [1; 16]).is_err());
        assert!(PinHash::derive("1234567890123", [1; 16]).is_err());
    }

    #[test]
    fn enabling_needs_a_pin_and_settings_are_bounded() {
        let mailbox = Mailbox::default();
        let err = decide(
            &mailbox,
            &Command::Configure(Patch {
                enabled: Some(true),
                ..Patch::default()
            }),
            NOW,
        )
        .unwrap_err();
        assert!(matches!(err, Error::Invalid { field: "pin", .. }), "{err}");
        let err = decide(
            &enabled(),
            &Command::Configure(Patch {
                max_messages: Some(0),
                ..Patch::default()
            }),
            NOW,
        )
        .unwrap_err();
        assert!(matches!(
            err,
            Error::Invalid {
                field: "max_messages",
                ..
            }
        ));
        let err = decide(
            &enabled(),
            &Command::Configure(Patch {
                max_message_ms: Some(MAX_MAX_MESSAGE_MS + 1),
                ..Patch::default()
            }),
            NOW,
        )
        .unwrap_err();
        assert!(matches!(
            err,
            Error::Invalid {
                field: "max_message_ms",
                ..
            }
        ));
        // The same settings again change nothing.
        let mut mailbox = enabled();
        assert!(run(&mut mailbox, Command::Configure(Patch::default()), NOW).is_empty());
    }

    #[test]
    fn messages_are_left_read_and_deleted_and_counted() {
        let mut mailbox = enabled();
        for n in 1..=3 {
            let events = run(
                &mut mailbox,
                Command::Leave {
                    message_id: id(n),
                    from: "bob@example.com".into(),
                    duration_ms: 5_000,
                },
                NOW + i64::from(n),
            );
            assert!(matches!(events[..], [Event::VoicemailLeft { .. }]));
        }
        assert_eq!(mailbox.counts(), (3, 0));
        // A repeated Leave (a retry) records nothing.
        assert!(run(
            &mut mailbox,
            Command::Leave {
                message_id: id(1),
                from: "bob@example.com".into(),
                duration_ms: 5_000,
            },
            NOW,
        )
        .is_empty());
        run(&mut mailbox, Command::MarkRead { message_id: id(2) }, NOW);
        assert_eq!(mailbox.counts(), (2, 1));
        assert!(run(&mut mailbox, Command::MarkRead { message_id: id(2) }, NOW).is_empty());
        run(&mut mailbox, Command::Delete { message_id: id(1) }, NOW);
        assert_eq!(mailbox.counts(), (1, 1));
        let err = decide(&mailbox, &Command::Delete { message_id: id(1) }, NOW).unwrap_err();
        assert!(matches!(err, Error::NotFound(_)));
    }

    #[test]
    fn a_full_or_disabled_mailbox_records_the_refusal() {
        let mut mailbox = enabled();
        run(
            &mut mailbox,
            Command::Configure(Patch {
                max_messages: Some(1),
                ..Patch::default()
            }),
            NOW,
        );
        let leave = |n| Command::Leave {
            message_id: id(n),
            from: "bob@example.com".into(),
            duration_ms: 2_000,
        };
        run(&mut mailbox, leave(1), NOW);
        let events = run(&mut mailbox, leave(2), NOW);
        assert!(matches!(
            events[..],
            [Event::VoicemailRefused {
                reason: RefusalReason::MailboxFull,
                ..
            }]
        ));
        assert_eq!(mailbox.messages.len(), 1);
        let events = run(&mut Mailbox::default(), leave(3), NOW);
        assert!(matches!(
            events[..],
            [Event::VoicemailRefused {
                reason: RefusalReason::MailboxDisabled,
                ..
            }]
        ));
    }

    #[test]
    fn too_short_or_too_long_recordings_are_not_messages() {
        let mailbox = enabled();
        for duration_ms in [0, MIN_MESSAGE_MS - 1, DEFAULT_MAX_MESSAGE_MS + 1_001] {
            let err = decide(
                &mailbox,
                &Command::Leave {
                    message_id: id(1),
                    from: "bob@example.com".into(),
                    duration_ms,
                },
                NOW,
            )
            .unwrap_err();
            assert!(matches!(
                err,
                Error::Invalid {
                    field: "duration_ms",
                    ..
                }
            ));
        }
    }

    #[test]
    fn five_wrong_pins_lock_the_mailbox_until_the_lock_expires() {
        let mut mailbox = enabled();
        for attempt in 1..PIN_ATTEMPTS_BEFORE_LOCKOUT {
            let events = run(&mut mailbox, Command::CheckPin { pin: "0000".into() }, NOW);
            assert_eq!(
                events,
                vec![Event::MailboxPinRejected { attempts: attempt }]
            );
        }
        // A right PIN in between resets the count.
        let events = run(&mut mailbox, Command::CheckPin { pin: "4321".into() }, NOW);
        assert_eq!(events, vec![Event::MailboxPinAccepted {}]);
        assert!(run(&mut mailbox, Command::CheckPin { pin: "4321".into() }, NOW).is_empty());
        let mut last = Vec::new();
        for _ in 0..PIN_ATTEMPTS_BEFORE_LOCKOUT {
            last = run(&mut mailbox, Command::CheckPin { pin: "9999".into() }, NOW);
        }
        assert_eq!(
            last,
            vec![
                Event::MailboxPinRejected {
                    attempts: PIN_ATTEMPTS_BEFORE_LOCKOUT
                },
                Event::MailboxLockedOut {
                    attempts: PIN_ATTEMPTS_BEFORE_LOCKOUT,
                    locked_until: NOW + PIN_LOCKOUT_US,
                },
            ]
        );
        // Locked: even the right PIN is refused, and nothing is recorded.
        // The refusal is typed and says until when.
        let err = decide(&mailbox, &Command::CheckPin { pin: "4321".into() }, NOW + 1).unwrap_err();
        assert_eq!(
            err,
            Error::Mailbox(Refusal::Locked {
                until: NOW + PIN_LOCKOUT_US
            })
        );
        let err = decide(
            &mailbox,
            &Command::CheckPin { pin: "9999".into() },
            NOW + PIN_LOCKOUT_US - 1,
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::Mailbox(Refusal::Locked { .. })),
            "{err}"
        );
        // After the lock, the right PIN works again, and ends the run of
        // lock-outs.
        let events = run(
            &mut mailbox,
            Command::CheckPin { pin: "4321".into() },
            NOW + PIN_LOCKOUT_US,
        );
        assert_eq!(events, vec![Event::MailboxPinAccepted {}]);
        assert_eq!(mailbox.lockouts, 0);
    }

    #[test]
    fn lock_outs_in_a_row_double_up_to_a_day_and_a_right_pin_resets_them() {
        let mut mailbox = enabled();
        let mut now = NOW;
        let lock = |mailbox: &mut Mailbox, now: i64| -> i64 {
            let mut until = 0;
            for _ in 0..PIN_ATTEMPTS_BEFORE_LOCKOUT {
                for e in run(mailbox, Command::CheckPin { pin: "9999".into() }, now) {
                    if let Event::MailboxLockedOut { locked_until, .. } = e {
                        until = locked_until;
                    }
                }
            }
            until - now
        };
        let mut seen = Vec::new();
        for _ in 0..9 {
            let lasted = lock(&mut mailbox, now);
            seen.push(lasted);
            now += lasted;
        }
        let minutes: Vec<i64> = seen.iter().map(|us| us / 60_000_000).collect();
        assert_eq!(minutes, [15, 30, 60, 120, 240, 480, 960, 1440, 1440]);
        // The owner gets in: the next lock-out is short again.
        assert!(
            run(&mut mailbox, Command::CheckPin { pin: "4321".into() }, now)
                .contains(&Event::MailboxPinAccepted {})
        );
        assert_eq!(lock(&mut mailbox, now), PIN_LOCKOUT_US);
    }

    #[test]
    fn greetings_change_and_go_back_to_the_default() {
        let mut mailbox = enabled();
        let greeting = Greeting {
            audio: id(9),
            duration_ms: 4_000,
        };
        run(
            &mut mailbox,
            Command::SetGreeting {
                greeting: Some(greeting.clone()),
            },
            NOW,
        );
        assert_eq!(mailbox.greeting, Some(greeting));
        run(&mut mailbox, Command::SetGreeting { greeting: None }, NOW);
        assert_eq!(mailbox.greeting, None);
    }

    #[test]
    fn an_entered_pin_is_never_printed() {
        let shown = format!("{:?}", Command::CheckPin { pin: "4321".into() });
        assert!(!shown.contains("4321"), "{shown}");
    }

    #[test]
    fn audio_ids_are_checked() {
        assert!(AudioId::parse(id(3).as_str()).is_ok());
        assert!(AudioId::parse("vm-xyz").is_err());
        assert!(AudioId::parse("../../etc/passwd").is_err());
    }
}
