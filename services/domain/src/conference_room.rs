//! Conference rooms: a domain-level extension (`standup@example.com`) that
//! callers dial to meet. What a room's settings are and what makes them
//! valid; a conference held in a room is its own aggregate
//! ([`crate::conference`], ADR 0025).
//!
//! A room lives in its domain's aggregate ([`crate::domain`]), as a ring
//! group does: its name shares the domain's namespace with user and group
//! names (a name is a user, a group or a room, never two), decided by the
//! one actor that owns the namespace. Rooms are few and change rarely, so
//! their whole-value events (`ConferenceRoomCreated/Updated/Deleted`) keep
//! the domain stream small; what happens in a conference never goes there.
//!
//! PINs are kept as salted hashes ([`PinHash`], as a voicemail box's; the
//! salt is made by the caller, the domain takes no randomness) and are
//! redacted from every export ([`crate::event::redact_secrets`]).

use serde::{Deserialize, Serialize};

use crate::mailbox::{PinHash, MAX_PIN_DIGITS, MIN_PIN_DIGITS};
use crate::names::UserAddress;
use crate::{Error, Result};

/// Most participants of a room when not given.
pub const DEFAULT_MAX_PARTICIPANTS: u32 = 50;
/// Bounds of a room's maximum participants: a conference of one is not
/// one, and a room of more than 1,000 is beyond what one node mixes.
pub const MIN_MAX_PARTICIPANTS: u32 = 2;
pub const MAX_MAX_PARTICIPANTS: u32 = 1_000;

/// A conference room's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Room {
    /// The PIN a participant enters; `None`: anyone who dials joins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<PinHash>,
    /// The PIN that makes a caller a moderator; `None`: the room has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moderator_pin: Option<PinHash>,
    /// Most participants at once (moderators included).
    pub max_participants: u32,
    /// Participants hear hold audio until a moderator joins.
    pub wait_for_moderator: bool,
    /// The conference ends when its last moderator leaves.
    pub end_with_moderator: bool,
    /// A tone when someone joins or leaves.
    pub tones: bool,
    /// The room's mix is recorded from the start.
    pub record: bool,
    /// Participants (not moderators) join muted.
    pub muted_on_entry: bool,
}

impl Default for Room {
    fn default() -> Self {
        Room {
            pin: None,
            moderator_pin: None,
            max_participants: DEFAULT_MAX_PARTICIPANTS,
            wait_for_moderator: false,
            end_with_moderator: false,
            tones: true,
            record: false,
            muted_on_entry: false,
        }
    }
}

/// A change of a room: `None` keeps a setting; for the PINs, `Some(None)`
/// removes it. PINs come hashed (see [`check_pin`] for the check of the
/// digits, which the caller runs before hashing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomPatch {
    pub pin: Option<Option<PinHash>>,
    pub moderator_pin: Option<Option<PinHash>>,
    pub max_participants: Option<u32>,
    pub wait_for_moderator: Option<bool>,
    pub end_with_moderator: Option<bool>,
    pub tones: Option<bool>,
    pub record: Option<bool>,
    pub muted_on_entry: Option<bool>,
}

impl RoomPatch {
    /// The room after the patch, validated: `current` is `None` for a new
    /// room (whose settings not given take their defaults); `address` is
    /// the room's own, for messages.
    pub fn apply(&self, current: Option<&Room>, address: &UserAddress) -> Result<Room> {
        let mut next = current.cloned().unwrap_or_default();
        if let Some(pin) = &self.pin {
            next.pin = pin.clone();
        }
        if let Some(pin) = &self.moderator_pin {
            next.moderator_pin = pin.clone();
        }
        if let Some(n) = self.max_participants {
            next.max_participants = n;
        }
        if let Some(b) = self.wait_for_moderator {
            next.wait_for_moderator = b;
        }
        if let Some(b) = self.end_with_moderator {
            next.end_with_moderator = b;
        }
        if let Some(b) = self.tones {
            next.tones = b;
        }
        if let Some(b) = self.record {
            next.record = b;
        }
        if let Some(b) = self.muted_on_entry {
            next.muted_on_entry = b;
        }
        validate(&next, address)?;
        Ok(next)
    }
}

/// Checks a PIN as typed (digits only, 4 to 12 of them), naming `field`
/// (`pin`, `moderator_pin`) in the refusal.
pub fn check_pin(field: &'static str, pin: &str) -> Result<()> {
    if !(MIN_PIN_DIGITS..=MAX_PIN_DIGITS).contains(&pin.len())
        || !pin.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(Error::invalid(
            field,
            format!("must be {MIN_PIN_DIGITS} to {MAX_PIN_DIGITS} digits"),
        ));
    }
    Ok(())
}

/// What any room must be (checked on every change).
fn validate(room: &Room, address: &UserAddress) -> Result<()> {
    if !(MIN_MAX_PARTICIPANTS..=MAX_MAX_PARTICIPANTS).contains(&room.max_participants) {
        return Err(Error::invalid(
            "max_participants",
            format!(
                "must be {MIN_MAX_PARTICIPANTS} to {MAX_MAX_PARTICIPANTS}, got {}",
                room.max_participants
            ),
        ));
    }
    // Without a moderator PIN nobody becomes a moderator: a room waiting
    // for one would never start, and "ends with the last moderator" would
    // never apply.
    if room.moderator_pin.is_none() {
        if room.wait_for_moderator {
            return Err(Error::invalid(
                "wait_for_moderator",
                format!("room {address} has no moderator PIN, so no moderator could ever join"),
            ));
        }
        if room.end_with_moderator {
            return Err(Error::invalid(
                "end_with_moderator",
                format!("room {address} has no moderator PIN, so it has no moderators"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standup() -> UserAddress {
        UserAddress::parse("standup@example.com").unwrap()
    }

    fn pin(digits: &str) -> PinHash {
        PinHash::derive(digits, [7; 16]).unwrap()
    }

    #[test]
    fn a_new_room_takes_the_defaults() {
        let room = RoomPatch::default().apply(None, &standup()).unwrap();
        assert_eq!(room, Room::default());
        assert_eq!(room.max_participants, 50);
        assert!(room.tones);
        assert!(!room.wait_for_moderator && !room.end_with_moderator);
        assert!(!room.record && !room.muted_on_entry);
        assert!(room.pin.is_none() && room.moderator_pin.is_none());
    }

    #[test]
    fn max_participants_is_bounded_and_named() {
        for n in [0, 1, 1_001, u32::MAX] {
            let err = RoomPatch {
                max_participants: Some(n),
                ..Default::default()
            }
            .apply(None, &standup())
            .unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("invalid max_participants: must be 2 to 1000, got {n}")
            );
        }
        for n in [2, 50, 1_000] {
            let room = RoomPatch {
                max_participants: Some(n),
                ..Default::default()
            }
            .apply(None, &standup())
            .unwrap();
            assert_eq!(room.max_participants, n);
        }
    }

    #[test]
    fn moderator_settings_need_a_moderator_pin() {
        let err = RoomPatch {
            wait_for_moderator: Some(true),
            ..Default::default()
        }
        .apply(None, &standup())
        .unwrap_err();
        assert!(matches!(
            err,
            Error::Invalid {
                field: "wait_for_moderator",
                ..
            }
        ));
        let room = RoomPatch {
            moderator_pin: Some(Some(pin("1357"))),
            wait_for_moderator: Some(true),
            end_with_moderator: Some(true),
            ..Default::default()
        }
        .apply(None, &standup())
        .unwrap();
        assert!(room.moderator_pin.as_ref().unwrap().matches("1357"));
        // Removing the moderator PIN while the room ends with its
        // moderators is refused.
        let err = RoomPatch {
            moderator_pin: Some(None),
            wait_for_moderator: Some(false),
            ..Default::default()
        }
        .apply(Some(&room), &standup())
        .unwrap_err();
        assert!(matches!(
            err,
            Error::Invalid {
                field: "end_with_moderator",
                ..
            }
        ));
    }

    #[test]
    fn a_patch_keeps_what_it_does_not_name_and_removes_a_pin() {
        let room = RoomPatch {
            pin: Some(Some(pin("2468"))),
            record: Some(true),
            ..Default::default()
        }
        .apply(None, &standup())
        .unwrap();
        let next = RoomPatch {
            max_participants: Some(10),
            ..Default::default()
        }
        .apply(Some(&room), &standup())
        .unwrap();
        assert_eq!(next.pin, room.pin);
        assert!(next.record);
        assert_eq!(next.max_participants, 10);
        let next = RoomPatch {
            pin: Some(None),
            ..Default::default()
        }
        .apply(Some(&next), &standup())
        .unwrap();
        assert!(next.pin.is_none());
    }

    #[test]
    fn pins_are_digits_of_the_right_length() {
        for bad in ["", "123", "1234567890123", "12a4", "12 34", "١٢٣٤"] {
            let err = check_pin("moderator_pin", bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                "invalid moderator_pin: must be 4 to 12 digits",
                "{bad:?}"
            );
        }
        for good in ["0000", "2468", "123456789012"] {
            check_pin("pin", good).unwrap();
        }
    }

    #[test]
    fn a_pin_hash_never_shows_in_debug_output() {
        let room = RoomPatch {
            pin: Some(Some(pin("2468"))),
            moderator_pin: Some(Some(pin("1357"))),
            ..Default::default()
        }
        .apply(None, &standup())
        .unwrap();
        let shown = format!("{room:?}");
        assert!(!shown.contains("sha256$"), "{shown}");
    }
}
