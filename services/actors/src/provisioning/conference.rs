//! The conference rooms' use cases: a room is domain state (ADR 0025), so
//! each is one command to, or one query of, the room's domain actor.
//! And the operator's control of a conference in progress (read it, mute,
//! unmute, kick, lock): commands to the conference's own actor, durable
//! before the reply. The media follows the conference's events (the
//! node's conference application applies them); nothing here touches it.
//!
//! What the domain takes from outside is made here, at the actors'
//! boundary: the PINs' random salts. A PIN is checked as typed (digits,
//! 4 to 12, the field named) before it is hashed, and is never printed.

use dialtone_domain::conference::{self, Conference, ParticipantId};
use dialtone_domain::conference_pin::{self, PinGuard};
use dialtone_domain::conference_room::{check_pin, Room, RoomPatch};
use dialtone_domain::domain;
use dialtone_domain::mailbox::PinHash;
use dialtone_domain::names::UserAddress;
use dialtone_domain::{ConferenceId, DomainId, Error as DomainError};
use uuid::Uuid;

use super::{DomainRef, Provisioning};
use crate::aggregate::Meta;
use crate::{Error, Result};

/// A change of a room's settings as a request gives it: `None` keeps a
/// value (or takes its default, for a new room). A PIN is in clear here:
/// `Some("")` removes it, anything else must be 4 to 12 digits.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RoomChange {
    pub pin: Option<String>,
    pub moderator_pin: Option<String>,
    pub max_participants: Option<u32>,
    pub wait_for_moderator: Option<bool>,
    pub end_with_moderator: Option<bool>,
    pub tones: Option<bool>,
    pub record: Option<bool>,
    pub muted_on_entry: Option<bool>,
}

impl std::fmt::Debug for RoomChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pin = |p: &Option<String>| p.as_ref().map(|_| "<redacted>");
        f.debug_struct("RoomChange")
            .field("pin", &pin(&self.pin))
            .field("moderator_pin", &pin(&self.moderator_pin))
            .field("max_participants", &self.max_participants)
            .field("wait_for_moderator", &self.wait_for_moderator)
            .field("end_with_moderator", &self.end_with_moderator)
            .field("tones", &self.tones)
            .field("record", &self.record)
            .field("muted_on_entry", &self.muted_on_entry)
            .finish()
    }
}

/// A conference room and the version of its domain's stream when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConferenceRoomInfo {
    pub address: UserAddress,
    pub room: Room,
    /// Wrong PINs entered by phone and lock-outs (read by
    /// [`Provisioning::get_conference_room`] and the commands; empty in
    /// listings).
    pub pin_guard: PinGuard,
    /// The domain stream's version (`None`: empty stream).
    pub version: Option<u64>,
}

/// A conference (in progress or ended) and its stream's version when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConferenceInfo {
    pub id: ConferenceId,
    pub conference: Conference,
    pub version: Option<u64>,
}

impl ConferenceInfo {
    /// The participant in the conference now that `input` names: its id,
    /// the start of its id (at least [`MIN_ID_PREFIX`] characters), or its
    /// caller, each when only one participant matches. A full id is taken
    /// as it is, in or not (kicking one who left is a no-op, a race of the
    /// kick with the hang-up).
    pub fn participant(&self, input: &str) -> Result<ParticipantId> {
        let input = input.trim();
        if let Ok(id) = uuid::Uuid::parse_str(input) {
            return Ok(ParticipantId(id));
        }
        let lower = input.to_ascii_lowercase();
        let matches: Vec<ParticipantId> = self
            .conference
            .participants
            .iter()
            .filter(|(id, p)| {
                (lower.len() >= MIN_ID_PREFIX && id.to_string().starts_with(&lower))
                    || p.caller.eq_ignore_ascii_case(input)
            })
            .map(|(id, _)| *id)
            .collect();
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(Error::Domain(DomainError::NotFound(format!(
                "participant {input} in conference {}",
                self.id
            )))),
            _ => Err(Error::Domain(DomainError::Invalid {
                field: "participant",
                reason: format!(
                    "'{input}' names {} participants of conference {}; give the id",
                    matches.len(),
                    self.id
                ),
            })),
        }
    }
}

/// Shortest start of a participant's id that names it.
pub const MIN_ID_PREFIX: usize = 4;

/// What an operator does to a conference in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Mute(ParticipantId),
    Unmute(ParticipantId),
    Kick(ParticipantId),
    /// Mutes every participant who is not a moderator.
    MuteAll,
    /// Kicks everyone in the conference (which then ends, empty).
    KickAll,
    Lock,
    Unlock,
    /// Asks the node running the room to start recording its mix
    /// (`ConferenceRecordingRequested`): durable when it returns, acted on
    /// by that node (see [`Provisioning::await_recording`]).
    StartRecording,
    /// Asks the node running the room to stop the recording, store it and
    /// then record it as stopped.
    StopRecording,
}

/// A PIN as a patch takes it: `None` keeps it, `""` removes it, digits are
/// checked (naming `field`) and hashed with a fresh random salt.
fn hashed_pin(field: &'static str, pin: Option<&str>) -> Result<Option<Option<PinHash>>> {
    match pin.map(str::trim) {
        None => Ok(None),
        Some("") => Ok(Some(None)),
        Some(pin) => {
            check_pin(field, pin)?;
            Ok(Some(Some(PinHash::derive(
                pin,
                *Uuid::new_v4().as_bytes(),
            )?)))
        }
    }
}

impl Provisioning {
    /// Creates the room `address` (a name of its domain no user, group or
    /// room holds); settings not given take their defaults.
    pub async fn create_conference_room(
        &self,
        address: &UserAddress,
        change: RoomChange,
        meta: Meta,
    ) -> Result<ConferenceRoomInfo> {
        let patch = self.room_patch(None, &change)?;
        let command = domain::Command::CreateConferenceRoom {
            name: address.username.clone(),
            patch,
        };
        self.room_command(address, command, meta).await
    }

    /// Changes some settings of the room `address`.
    pub async fn update_conference_room(
        &self,
        address: &UserAddress,
        change: RoomChange,
        meta: Meta,
    ) -> Result<ConferenceRoomInfo> {
        let current = self.get_conference_room(address).await?;
        let patch = self.room_patch(Some(&current.room), &change)?;
        let command = domain::Command::UpdateConferenceRoom {
            name: address.username.clone(),
            patch,
        };
        self.room_command(address, command, meta).await
    }

    /// Deletes the room `address`; what it was.
    pub async fn delete_conference_room(
        &self,
        address: &UserAddress,
        meta: Meta,
    ) -> Result<ConferenceRoomInfo> {
        let before = self.get_conference_room(address).await?;
        let command = domain::Command::DeleteConferenceRoom {
            name: address.username.clone(),
        };
        let version = self
            .directory
            .execute_domain(DomainId::for_name(&address.domain), command, meta, |r| {
                r.version
            })
            .await?;
        Ok(ConferenceRoomInfo { version, ..before })
    }

    pub async fn get_conference_room(&self, address: &UserAddress) -> Result<ConferenceRoomInfo> {
        // The room and its wrong-PIN counts in one query: one version.
        let ((room, pin_guard), version) = self
            .domain_extension_with(
                address,
                |d, name| {
                    let room = d.conference_rooms.get(name)?.clone();
                    let guard = d.conference_pin_guards.get(name).cloned();
                    Some((room, guard.unwrap_or_default()))
                },
                || not_found_room(address),
            )
            .await?;
        Ok(ConferenceRoomInfo {
            address: address.clone(),
            room,
            pin_guard,
            version,
        })
    }

    /// Clears the PIN lock-out of one caller of the room `address` (its
    /// key: `user@domain` or an IP address), or (`None`) every caller's and
    /// the room's. Clearing what is not there writes nothing.
    pub async fn reset_conference_pin_lockouts(
        &self,
        address: &UserAddress,
        caller: Option<String>,
        meta: Meta,
    ) -> Result<ConferenceRoomInfo> {
        let command = domain::Command::ConferencePin {
            name: address.username.clone(),
            command: conference_pin::Command::Clear { caller },
        };
        self.room_command(address, command, meta).await
    }

    /// The conference rooms of a domain, by name.
    pub async fn list_conference_rooms(
        &self,
        domain: &DomainRef,
    ) -> Result<Vec<ConferenceRoomInfo>> {
        let rooms = self
            .domain_extensions(domain, |d| &d.conference_rooms)
            .await?;
        Ok(rooms
            .into_iter()
            .map(|(address, room, version)| ConferenceRoomInfo {
                address,
                room,
                pin_guard: PinGuard::default(),
                version,
            })
            .collect())
    }

    /// The patch of `change`: PINs checked and hashed; a moderator PIN
    /// equal to the participant PIN (given now, or kept from `current`)
    /// is refused, since it would make every participant a moderator.
    fn room_patch(&self, current: Option<&Room>, change: &RoomChange) -> Result<RoomPatch> {
        let pin = hashed_pin("pin", change.pin.as_deref())?;
        let moderator_pin = hashed_pin("moderator_pin", change.moderator_pin.as_deref())?;
        let same = match (clear(&change.pin), clear(&change.moderator_pin)) {
            (Some(p), Some(m)) => p == m,
            (Some(p), None) if change.moderator_pin.is_none() => current
                .and_then(|r| r.moderator_pin.as_ref())
                .is_some_and(|h| h.matches(p)),
            (None, Some(m)) if change.pin.is_none() => current
                .and_then(|r| r.pin.as_ref())
                .is_some_and(|h| h.matches(m)),
            _ => false,
        };
        if same {
            return Err(Error::Domain(DomainError::Invalid {
                field: "moderator_pin",
                reason: "must differ from the participant PIN".into(),
            }));
        }
        Ok(RoomPatch {
            pin,
            moderator_pin,
            max_participants: change.max_participants,
            wait_for_moderator: change.wait_for_moderator,
            end_with_moderator: change.end_with_moderator,
            tones: change.tones,
            record: change.record,
            muted_on_entry: change.muted_on_entry,
        })
    }

    async fn room_command(
        &self,
        address: &UserAddress,
        command: domain::Command,
        meta: Meta,
    ) -> Result<ConferenceRoomInfo> {
        let name = address.username.clone();
        let found = self
            .directory
            .execute_domain(
                DomainId::for_name(&address.domain),
                command,
                meta,
                move |r| {
                    let guard = r.state.conference_pin_guards.get(&name).cloned();
                    r.state
                        .conference_rooms
                        .get(&name)
                        .cloned()
                        .map(|room| (room, guard.unwrap_or_default(), r.version))
                },
            )
            .await?;
        let (room, pin_guard, version) = found.ok_or_else(|| not_found_room(address))?;
        Ok(ConferenceRoomInfo {
            address: address.clone(),
            room,
            pin_guard,
            version,
        })
    }
}

impl Provisioning {
    /// The conference `id`, in progress or ended; NOT_FOUND when its
    /// stream is empty (no actor is started for an id nobody used).
    pub async fn get_conference(&self, id: ConferenceId) -> Result<ConferenceInfo> {
        let exists = self
            .directory
            .store()
            .stream_version(&id.stream())
            .await?
            .is_some();
        if !exists {
            return Err(not_found_conference(id));
        }
        let info = self
            .directory
            .query_conference(id, move |r| ConferenceInfo {
                id,
                conference: r.state.clone(),
                version: r.version,
            })
            .await?;
        if info.conference.status == conference::Status::NotStarted {
            return Err(not_found_conference(id));
        }
        Ok(info)
    }

    /// Runs an operator's `control` on the conference `current` (as read
    /// by [`Provisioning::get_conference`], after the caller checked it may
    /// see its domain); the conference after it, durable.
    ///
    /// Refusals name the conference and the participant: an ended
    /// conference is a failed precondition, a participant not in it is not
    /// found. `KickAll` kicks the participants in at the read, each its
    /// own command, sent together so that the actor batches them (the
    /// first kick's append, then the others decided together while it is
    /// written: typically two appends, not one per participant); each kick
    /// is idempotent (with the request id
    /// suffixed by the participant's id, and a second leave writes
    /// nothing), so a retry after a failure half-way finishes the job. The
    /// last kick ends the conference (`empty`), or the last moderator's
    /// does when the conference ends with its moderators: kicks after that
    /// find it ended, which is what they were for.
    pub async fn control_conference(
        &self,
        current: &ConferenceInfo,
        control: Control,
        meta: Meta,
    ) -> Result<ConferenceInfo> {
        let id = current.id;
        if current.conference.status == conference::Status::Ended {
            return Err(ended_conference(id));
        }
        let command = match control {
            Control::Mute(p) => conference::Command::Mute { participant: p },
            Control::Unmute(p) => conference::Command::Unmute { participant: p },
            Control::Kick(p) => conference::Command::Kick { participant: p },
            Control::MuteAll => conference::Command::MuteAll,
            Control::Lock => conference::Command::Lock,
            Control::Unlock => conference::Command::Unlock,
            Control::StartRecording => conference::Command::RequestRecording {
                action: conference::RecordingAction::Start,
            },
            Control::StopRecording => conference::Command::RequestRecording {
                action: conference::RecordingAction::Stop,
            },
            Control::KickAll => return self.kick_all(current, meta).await,
        };
        let participant = match control {
            Control::Mute(p) | Control::Unmute(p) | Control::Kick(p) => Some(p),
            _ => None,
        };
        self.conference_command(id, command, meta)
            .await
            .map_err(|e| named(e, id, participant))
    }

    /// Waits until the node running the conference has acted on the
    /// recording request pending in it (it wrote the recording's start, or
    /// its stop after storing the audio, or the conference ended): the
    /// conference then, or `None` when `deadline` passed first (no node
    /// acted: none runs the room, or it failed to). The request stays
    /// pending then, for the node to act on if it can.
    pub async fn await_recording(
        &self,
        id: ConferenceId,
        deadline: std::time::Duration,
    ) -> Result<Option<ConferenceInfo>> {
        // The node acts within a log round trip and, for a stop, one
        // fsync of the audio: tens of milliseconds. Polling the actor
        // (in memory) every 20 ms costs nothing beside that.
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let info = self.get_conference(id).await?;
            if info.conference.recording_requested.is_none() {
                return Ok(Some(info));
            }
            if tokio::time::Instant::now() >= until {
                return Ok(None);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    async fn kick_all(&self, current: &ConferenceInfo, meta: Meta) -> Result<ConferenceInfo> {
        let id = current.id;
        let kicks = current.conference.participants.keys().map(|p| {
            let meta = Meta {
                request_id: meta.request_id.as_ref().map(|r| format!("{r}/kick/{p}")),
                ..meta.clone()
            };
            let command = conference::Command::Kick { participant: *p };
            async move { self.conference_command(id, command, meta).await }
        });
        for result in futures::future::join_all(kicks).await {
            match result {
                Ok(_) => {}
                // An earlier kick ended it: everyone is out.
                Err(Error::Domain(DomainError::FailedPrecondition(_))) => {}
                Err(e) => return Err(named(e, id, None)),
            }
        }
        self.get_conference(id).await
    }

    async fn conference_command(
        &self,
        id: ConferenceId,
        command: conference::Command,
        meta: Meta,
    ) -> Result<ConferenceInfo> {
        self.directory
            .execute_conference(id, command, meta, move |r| ConferenceInfo {
                id,
                conference: r.state.clone(),
                version: r.version,
            })
            .await
    }
}

/// An operator command's refusal with the conference (and participant)
/// named. The commands an operator sends can be refused only as not found
/// (the participant is not in the conference) or as a failed precondition
/// (the conference ended meanwhile).
fn named(error: Error, id: ConferenceId, participant: Option<ParticipantId>) -> Error {
    match error {
        Error::Domain(DomainError::NotFound(_)) => match participant {
            Some(p) => Error::Domain(DomainError::NotFound(format!(
                "participant {p} in conference {id}"
            ))),
            None => not_found_conference(id),
        },
        Error::Domain(DomainError::FailedPrecondition(reason))
            if reason != conference::Refusal::Ended.to_string() =>
        {
            // "is being recorded already", "is not being recorded".
            let what = reason.strip_prefix("the conference ").unwrap_or(&reason);
            Error::Domain(DomainError::FailedPrecondition(format!(
                "conference {id} {what}"
            )))
        }
        Error::Domain(DomainError::FailedPrecondition(_)) => ended_conference(id),
        other => other,
    }
}

fn not_found_conference(id: ConferenceId) -> Error {
    Error::Domain(DomainError::NotFound(format!("conference {id}")))
}

fn ended_conference(id: ConferenceId) -> Error {
    Error::Domain(DomainError::FailedPrecondition(format!(
        "conference {id} has ended"
    )))
}

/// A PIN given and not empty (not a removal), trimmed.
fn clear(pin: &Option<String>) -> Option<&str> {
    pin.as_deref().map(str::trim).filter(|p| !p.is_empty())
}

fn not_found_room(address: &UserAddress) -> Error {
    Error::Domain(DomainError::NotFound(format!("conference room {address}")))
}
