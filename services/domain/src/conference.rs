//! The `Conference` aggregate: one conference held in a room, from its
//! start to its end (ADR 0025). Its stream is `conference-{uuid}`
//! ([`ConferenceId`](crate::ConferenceId)), one per conference, so that
//! the high-rate participant events (joins, leaves, mutes, who is talking)
//! never reach the domain's stream, and a conference that ended is a
//! closed stream nobody loads again.
//!
//! The room's settings ([`crate::conference_room::Room`]) are domain
//! state; the conference application copies what the aggregate enforces
//! (maximum participants, ending with the last moderator, muting on entry)
//! into [`Start`], so a conference keeps the rules it started with when the
//! room changes meanwhile. PINs, tones, hold audio and mixing are the
//! application's: the aggregate records who is in the conference and what
//! happened to them, and refuses what cannot happen ([`Refusal`]).
//!
//! # Rules
//! - A conference starts once and ends once; an ended conference accepts
//!   nothing (a new conference in the same room is a new aggregate).
//! - A participant id is used once: it joins at most once and leaves at
//!   most once (leaving again is a no-op: a kick and the caller's hang-up
//!   may cross). A caller turned away before joining (wrong PIN, room full,
//!   room locked) is recorded as a `ParticipantLeft` of an id that never
//!   joined.
//! - The participants never exceed the maximum; a locked conference takes
//!   moderators only.
//! - When the last participant leaves, or the last moderator of a
//!   conference that ends with its moderators, the conference ends: the
//!   others leave with `conference_ended`, a recording in progress stops.
//! - Talking is recorded as it changes; how often the mixer reports it
//!   (energy over a threshold, with hangover, rate-limited) is the
//!   application's, not the aggregate's.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::mailbox::AudioId;
use crate::{DomainId, Error, Timestamp, UserName};

/// Longest `caller` recorded (longer ones are cut).
pub const MAX_CALLER_LEN: usize = 256;

/// A participant of one conference: the application's id of the call that
/// joined (made once, never reused in the conference).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ParticipantId(pub Uuid);

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a participant left (or never got in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// The caller hung up.
    HungUp,
    /// A moderator or an operator removed the participant.
    Kicked,
    /// The participant's RTP stopped for longer than the application's
    /// timeout.
    RtpTimeout,
    /// Turned away: the PIN was wrong (every try).
    WrongPin,
    /// Turned away: the conference was full.
    RoomFull,
    /// Turned away: the conference was locked.
    RoomLocked,
    /// The conference ended while the participant was in it.
    ConferenceEnded,
}

impl LeaveReason {
    pub const ALL: [LeaveReason; 7] = [
        LeaveReason::HungUp,
        LeaveReason::Kicked,
        LeaveReason::RtpTimeout,
        LeaveReason::WrongPin,
        LeaveReason::RoomFull,
        LeaveReason::RoomLocked,
        LeaveReason::ConferenceEnded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::HungUp => "hung_up",
            LeaveReason::Kicked => "kicked",
            LeaveReason::RtpTimeout => "rtp_timeout",
            LeaveReason::WrongPin => "wrong_pin",
            LeaveReason::RoomFull => "room_full",
            LeaveReason::RoomLocked => "room_locked",
            LeaveReason::ConferenceEnded => "conference_ended",
        }
    }

    /// A reason of a participant that was in the conference ([`Command::Leave`]).
    pub fn is_departure(self) -> bool {
        matches!(
            self,
            LeaveReason::HungUp | LeaveReason::Kicked | LeaveReason::RtpTimeout
        )
    }

    /// A reason of a caller turned away before joining ([`Command::TurnAway`]).
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            LeaveReason::WrongPin | LeaveReason::RoomFull | LeaveReason::RoomLocked
        )
    }
}

/// Why a conference ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Ended by a moderator, an operator or the application.
    Requested,
    /// The last moderator left a conference that ends with its moderators.
    LastModeratorLeft,
    /// The last participant left.
    Empty,
    /// The node restarted: its media sessions are gone.
    NodeRestart,
}

impl EndReason {
    pub const ALL: [EndReason; 4] = [
        EndReason::Requested,
        EndReason::LastModeratorLeft,
        EndReason::Empty,
        EndReason::NodeRestart,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Requested => "requested",
            EndReason::LastModeratorLeft => "last_moderator_left",
            EndReason::Empty => "empty",
            EndReason::NodeRestart => "node_restart",
        }
    }
}

/// Where a conference is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Never started (an empty stream).
    #[default]
    NotStarted,
    Running,
    Ended,
}

/// One participant in the conference now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    /// Who called: `user@domain`, or the From URI's user and host.
    pub caller: String,
    pub moderator: bool,
    /// Heard by no one.
    pub muted: bool,
    /// Talking, as the application last reported it.
    pub talking: bool,
    pub joined_at: Timestamp,
}

/// What an operator asked of the room's recording: the node that runs the
/// room acts on it (it alone holds the audio) and writes
/// `ConferenceRecordingStarted` or `ConferenceRecordingStopped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingAction {
    Start,
    Stop,
}

impl RecordingAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingAction::Start => "start",
            RecordingAction::Stop => "stop",
        }
    }
}

/// A recording in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recording {
    /// The key of its audio in the blob store.
    pub audio: AudioId,
    pub started_at: Timestamp,
}

/// A recording that stopped: its audio is in the blob store (stored
/// before `ConferenceRecordingStopped` was written).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRecording {
    pub audio: AudioId,
    pub started_at: Timestamp,
    pub duration_ms: u32,
}

/// The state of a conference, rebuilt by folding its events with [`evolve`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conference {
    pub status: Status,
    pub domain_id: Option<DomainId>,
    /// The room's name in its domain.
    pub room: Option<UserName>,
    pub max_participants: u32,
    pub end_with_moderator: bool,
    pub muted_on_entry: bool,
    pub locked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<Recording>,
    /// An operator's request to start or stop the recording that the node
    /// running the room has not acted on yet: cleared by the next
    /// `ConferenceRecordingStarted`, `ConferenceRecordingStopped` (whoever
    /// wrote it: a moderator's `*2` answers it as well) or the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_requested: Option<RecordingAction>,
    /// The recordings made in it, in the order they stopped (read with a
    /// default from snapshots taken before they were kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recordings: Vec<StoredRecording>,
    /// Who is in the conference now.
    pub participants: BTreeMap<ParticipantId, Participant>,
    /// Who left or was turned away: an id is used once.
    pub departed: BTreeSet<ParticipantId>,
    pub started_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
}

impl Conference {
    /// How many moderators are in the conference.
    pub fn moderators(&self) -> usize {
        self.participants.values().filter(|p| p.moderator).count()
    }
}

/// What a conference starts with: its room and the room's rules that the
/// aggregate enforces, as they were when it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub domain_id: DomainId,
    pub room: UserName,
    pub max_participants: u32,
    pub end_with_moderator: bool,
    pub muted_on_entry: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Start(Start),
    /// A caller got in (its PIN, if any, was right).
    Join {
        participant: ParticipantId,
        caller: String,
        moderator: bool,
    },
    /// A caller was turned away before joining (`wrong_pin`, `room_full`,
    /// `room_locked`): recorded as it leaving.
    TurnAway {
        participant: ParticipantId,
        caller: String,
        reason: LeaveReason,
    },
    /// A participant left (`hung_up`, `kicked`, `rtp_timeout`).
    Leave {
        participant: ParticipantId,
        reason: LeaveReason,
    },
    /// The same as leaving with `kicked`.
    Kick {
        participant: ParticipantId,
    },
    Mute {
        participant: ParticipantId,
    },
    Unmute {
        participant: ParticipantId,
    },
    /// Mutes every participant who is not a moderator.
    MuteAll,
    Lock,
    Unlock,
    StartRecording {
        audio: AudioId,
    },
    /// An operator asks the node running the room to start or stop the
    /// recording (only that node has the audio, and the stop must be
    /// written after the audio is stored): refused when the recording
    /// already is what is asked; a request like the one pending writes
    /// nothing.
    RequestRecording {
        action: RecordingAction,
    },
    /// The recording stopped; `duration_ms` is the length of the audio
    /// stored.
    StopRecording {
        duration_ms: u32,
    },
    /// The application's talk detection changed its mind.
    Talking {
        participant: ParticipantId,
        on: bool,
    },
    End {
        reason: EndReason,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    ConferenceStarted {
        domain_id: DomainId,
        room: UserName,
        max_participants: u32,
        end_with_moderator: bool,
        muted_on_entry: bool,
        started_at: Timestamp,
    },
    ParticipantJoined {
        participant: ParticipantId,
        caller: String,
        moderator: bool,
        /// Joined muted (the room mutes participants on entry).
        muted: bool,
        joined_at: Timestamp,
    },
    /// A participant left, or a caller was turned away (then `caller` says
    /// who: it never joined).
    ParticipantLeft {
        participant: ParticipantId,
        reason: LeaveReason,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caller: Option<String>,
        left_at: Timestamp,
    },
    ParticipantMuted {
        participant: ParticipantId,
        muted_at: Timestamp,
    },
    ParticipantUnmuted {
        participant: ParticipantId,
        unmuted_at: Timestamp,
    },
    ParticipantTalking {
        participant: ParticipantId,
        talking: bool,
        changed_at: Timestamp,
    },
    ConferenceLocked {
        locked_at: Timestamp,
    },
    ConferenceUnlocked {
        unlocked_at: Timestamp,
    },
    ConferenceRecordingStarted {
        audio: AudioId,
        started_at: Timestamp,
    },
    ConferenceRecordingStopped {
        audio: AudioId,
        duration_ms: u32,
        stopped_at: Timestamp,
    },
    /// An operator asked for the recording to start or stop; the node that
    /// runs the room answers with `ConferenceRecordingStarted` or
    /// `ConferenceRecordingStopped`.
    ConferenceRecordingRequested {
        action: RecordingAction,
        requested_at: Timestamp,
    },
    ConferenceEnded {
        reason: EndReason,
        ended_at: Timestamp,
    },
}

/// Why a conference refused a command: normal outcomes, typed so that the
/// application can tell the caller (a full room, a locked one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the conference has not started")]
    NotStarted,
    #[error("the conference has started already")]
    AlreadyStarted,
    #[error("the conference has ended")]
    Ended,
    #[error("the conference is full ({max} participants)")]
    Full { max: u32 },
    #[error("the conference is locked")]
    Locked,
    #[error("participant {0} is not in the conference")]
    UnknownParticipant(ParticipantId),
    #[error("participant {0} has joined already")]
    AlreadyJoined(ParticipantId),
    #[error("the conference is being recorded already")]
    AlreadyRecording,
    #[error("the conference is not being recorded")]
    NotRecording,
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::NotStarted => Error::NotFound("conference".to_owned()),
            Refusal::UnknownParticipant(id) => Error::NotFound(format!("participant {id}")),
            Refusal::AlreadyStarted => Error::AlreadyExists("conference".to_owned()),
            Refusal::AlreadyJoined(id) => Error::AlreadyExists(format!("participant {id}")),
            Refusal::Invalid { field, reason } => Error::Invalid { field, reason },
            other => Error::FailedPrecondition(other.to_string()),
        }
    }
}

/// Decides what a command does to a conference. `now` is the caller's
/// clock.
pub fn decide(
    state: &Conference,
    command: &Command,
    now: Timestamp,
) -> Result<Vec<Event>, Refusal> {
    use Command as C;
    match state.status {
        Status::Ended => return Err(Refusal::Ended),
        Status::NotStarted if !matches!(command, C::Start(_)) => return Err(Refusal::NotStarted),
        Status::Running if matches!(command, C::Start(_)) => return Err(Refusal::AlreadyStarted),
        _ => {}
    }
    match command {
        C::Start(start) => {
            if !(crate::conference_room::MIN_MAX_PARTICIPANTS
                ..=crate::conference_room::MAX_MAX_PARTICIPANTS)
                .contains(&start.max_participants)
            {
                return Err(Refusal::Invalid {
                    field: "max_participants",
                    reason: format!(
                        "must be {} to {}, got {}",
                        crate::conference_room::MIN_MAX_PARTICIPANTS,
                        crate::conference_room::MAX_MAX_PARTICIPANTS,
                        start.max_participants
                    ),
                });
            }
            Ok(vec![Event::ConferenceStarted {
                domain_id: start.domain_id,
                room: start.room.clone(),
                max_participants: start.max_participants,
                end_with_moderator: start.end_with_moderator,
                muted_on_entry: start.muted_on_entry,
                started_at: now,
            }])
        }
        C::Join {
            participant,
            caller,
            moderator,
        } => {
            require_new(state, *participant)?;
            if state.locked && !moderator {
                return Err(Refusal::Locked);
            }
            if state.participants.len() >= state.max_participants as usize {
                return Err(Refusal::Full {
                    max: state.max_participants,
                });
            }
            Ok(vec![Event::ParticipantJoined {
                participant: *participant,
                caller: clean_caller(caller),
                moderator: *moderator,
                muted: state.muted_on_entry && !moderator,
                joined_at: now,
            }])
        }
        C::TurnAway {
            participant,
            caller,
            reason,
        } => {
            if !reason.is_refusal() {
                return Err(Refusal::Invalid {
                    field: "reason",
                    reason: format!(
                        "a caller is turned away for wrong_pin, room_full or room_locked, not {}",
                        reason.as_str()
                    ),
                });
            }
            if state.departed.contains(participant) {
                return Ok(vec![]);
            }
            require_new(state, *participant)?;
            Ok(vec![Event::ParticipantLeft {
                participant: *participant,
                reason: *reason,
                caller: Some(clean_caller(caller)),
                left_at: now,
            }])
        }
        C::Leave {
            participant,
            reason,
        } => {
            if !reason.is_departure() {
                return Err(Refusal::Invalid {
                    field: "reason",
                    reason: format!(
                        "a participant leaves for hung_up, kicked or rtp_timeout, not {}",
                        reason.as_str()
                    ),
                });
            }
            leave(state, *participant, *reason, now)
        }
        C::Kick { participant } => leave(state, *participant, LeaveReason::Kicked, now),
        C::Mute { participant } => {
            let p = present(state, *participant)?;
            Ok(if p.muted {
                vec![]
            } else {
                vec![Event::ParticipantMuted {
                    participant: *participant,
                    muted_at: now,
                }]
            })
        }
        C::Unmute { participant } => {
            let p = present(state, *participant)?;
            Ok(if p.muted {
                vec![Event::ParticipantUnmuted {
                    participant: *participant,
                    unmuted_at: now,
                }]
            } else {
                vec![]
            })
        }
        C::MuteAll => Ok(state
            .participants
            .iter()
            .filter(|(_, p)| !p.moderator && !p.muted)
            .map(|(id, _)| Event::ParticipantMuted {
                participant: *id,
                muted_at: now,
            })
            .collect()),
        C::Lock => Ok(if state.locked {
            vec![]
        } else {
            vec![Event::ConferenceLocked { locked_at: now }]
        }),
        C::Unlock => Ok(if state.locked {
            vec![Event::ConferenceUnlocked { unlocked_at: now }]
        } else {
            vec![]
        }),
        C::StartRecording { audio } => {
            if state.recording.is_some() {
                return Err(Refusal::AlreadyRecording);
            }
            Ok(vec![Event::ConferenceRecordingStarted {
                audio: audio.clone(),
                started_at: now,
            }])
        }
        C::RequestRecording { action } => {
            match action {
                RecordingAction::Start if state.recording.is_some() => {
                    return Err(Refusal::AlreadyRecording)
                }
                RecordingAction::Stop if state.recording.is_none() => {
                    return Err(Refusal::NotRecording)
                }
                _ => {}
            }
            Ok(if state.recording_requested == Some(*action) {
                vec![]
            } else {
                vec![Event::ConferenceRecordingRequested {
                    action: *action,
                    requested_at: now,
                }]
            })
        }
        C::StopRecording { duration_ms } => {
            let recording = state.recording.as_ref().ok_or(Refusal::NotRecording)?;
            Ok(vec![Event::ConferenceRecordingStopped {
                audio: recording.audio.clone(),
                duration_ms: *duration_ms,
                stopped_at: now,
            }])
        }
        C::Talking { participant, on } => {
            let p = present(state, *participant)?;
            Ok(if p.talking == *on {
                vec![]
            } else {
                vec![Event::ParticipantTalking {
                    participant: *participant,
                    talking: *on,
                    changed_at: now,
                }]
            })
        }
        C::End { reason } => Ok(end(state, &[], *reason, now)),
    }
}

/// A participant id that was never used in this conference.
fn require_new(state: &Conference, participant: ParticipantId) -> Result<(), Refusal> {
    if state.participants.contains_key(&participant) || state.departed.contains(&participant) {
        return Err(Refusal::AlreadyJoined(participant));
    }
    Ok(())
}

fn present(state: &Conference, participant: ParticipantId) -> Result<&Participant, Refusal> {
    state
        .participants
        .get(&participant)
        .ok_or(Refusal::UnknownParticipant(participant))
}

/// `participant` leaves; the conference ends when it was the last one, or
/// its last moderator and the conference ends with them.
fn leave(
    state: &Conference,
    participant: ParticipantId,
    reason: LeaveReason,
    now: Timestamp,
) -> Result<Vec<Event>, Refusal> {
    if state.departed.contains(&participant) {
        return Ok(vec![]);
    }
    let leaving = present(state, participant)?;
    let mut events = vec![Event::ParticipantLeft {
        participant,
        reason,
        caller: None,
        left_at: now,
    }];
    let others = state.participants.len() - 1;
    let moderators_left = state.moderators() - usize::from(leaving.moderator);
    if others == 0 {
        events.extend(end(state, &[participant], EndReason::Empty, now));
    } else if state.end_with_moderator && leaving.moderator && moderators_left == 0 {
        events.extend(end(
            state,
            &[participant],
            EndReason::LastModeratorLeft,
            now,
        ));
    }
    Ok(events)
}

/// Everyone still in (but `gone`) leaves, a recording stops (its length by
/// the clock: the application stops it first when it knows better), and
/// the conference ends.
fn end(
    state: &Conference,
    gone: &[ParticipantId],
    reason: EndReason,
    now: Timestamp,
) -> Vec<Event> {
    let mut events: Vec<Event> = state
        .participants
        .keys()
        .filter(|id| !gone.contains(id))
        .map(|id| Event::ParticipantLeft {
            participant: *id,
            reason: LeaveReason::ConferenceEnded,
            caller: None,
            left_at: now,
        })
        .collect();
    if let Some(recording) = &state.recording {
        let elapsed_ms = (now - recording.started_at).max(0) / 1_000;
        events.push(Event::ConferenceRecordingStopped {
            audio: recording.audio.clone(),
            duration_ms: u32::try_from(elapsed_ms).unwrap_or(u32::MAX),
            stopped_at: now,
        });
    }
    events.push(Event::ConferenceEnded {
        reason,
        ended_at: now,
    });
    events
}

/// The caller as recorded: printable, at most [`MAX_CALLER_LEN`] characters
/// (it comes from the network).
fn clean_caller(caller: &str) -> String {
    caller
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_CALLER_LEN)
        .collect()
}

/// Applies one event to the state.
pub fn evolve(mut state: Conference, event: &Event) -> Conference {
    match event {
        Event::ConferenceStarted {
            domain_id,
            room,
            max_participants,
            end_with_moderator,
            muted_on_entry,
            started_at,
        } => {
            state.status = Status::Running;
            state.domain_id = Some(*domain_id);
            state.room = Some(room.clone());
            state.max_participants = *max_participants;
            state.end_with_moderator = *end_with_moderator;
            state.muted_on_entry = *muted_on_entry;
            state.started_at = *started_at;
        }
        Event::ParticipantJoined {
            participant,
            caller,
            moderator,
            muted,
            joined_at,
        } => {
            state.participants.insert(
                *participant,
                Participant {
                    caller: caller.clone(),
                    moderator: *moderator,
                    muted: *muted,
                    talking: false,
                    joined_at: *joined_at,
                },
            );
        }
        Event::ParticipantLeft { participant, .. } => {
            state.participants.remove(participant);
            state.departed.insert(*participant);
        }
        Event::ParticipantMuted { participant, .. } => {
            if let Some(p) = state.participants.get_mut(participant) {
                p.muted = true;
            }
        }
        Event::ParticipantUnmuted { participant, .. } => {
            if let Some(p) = state.participants.get_mut(participant) {
                p.muted = false;
            }
        }
        Event::ParticipantTalking {
            participant,
            talking,
            ..
        } => {
            if let Some(p) = state.participants.get_mut(participant) {
                p.talking = *talking;
            }
        }
        Event::ConferenceLocked { .. } => state.locked = true,
        Event::ConferenceUnlocked { .. } => state.locked = false,
        Event::ConferenceRecordingRequested { action, .. } => {
            state.recording_requested = Some(*action);
        }
        Event::ConferenceRecordingStarted { audio, started_at } => {
            state.recording_requested = None;
            state.recording = Some(Recording {
                audio: audio.clone(),
                started_at: *started_at,
            });
        }
        Event::ConferenceRecordingStopped {
            audio, duration_ms, ..
        } => {
            state.recording_requested = None;
            let started_at = state
                .recording
                .take()
                .filter(|r| &r.audio == audio)
                .map_or(state.started_at, |r| r.started_at);
            state.recordings.push(StoredRecording {
                audio: audio.clone(),
                started_at,
                duration_ms: *duration_ms,
            });
        }
        Event::ConferenceEnded { ended_at, .. } => {
            state.recording_requested = None;
            state.status = Status::Ended;
            state.ended_at = Some(*ended_at);
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = 1_765_000_000_000_000;

    fn id(n: u128) -> ParticipantId {
        ParticipantId(Uuid::from_u128(n))
    }

    fn start(max: u32, end_with_moderator: bool, muted_on_entry: bool) -> Command {
        Command::Start(Start {
            domain_id: DomainId(Uuid::from_u128(99)),
            room: UserName::parse("standup").unwrap(),
            max_participants: max,
            end_with_moderator,
            muted_on_entry,
        })
    }

    fn join(n: u128, moderator: bool) -> Command {
        Command::Join {
            participant: id(n),
            caller: format!("user{n}@example.com"),
            moderator,
        }
    }

    /// Runs the commands, each of which must be accepted; the state and
    /// every event.
    fn run(commands: &[Command]) -> (Conference, Vec<Event>) {
        let mut state = Conference::default();
        let mut all = Vec::new();
        for (i, c) in commands.iter().enumerate() {
            let events = decide(&state, c, T0 + i as i64 * 1_000_000)
                .unwrap_or_else(|e| panic!("{c:?}: {e}"));
            state = events.iter().fold(state, evolve);
            all.extend(events);
        }
        (state, all)
    }

    #[test]
    fn a_full_conference_refuses_the_next_caller_who_is_then_turned_away() {
        let (state, _) = run(&[start(2, false, false), join(1, false), join(2, false)]);
        assert_eq!(state.participants.len(), 2);
        assert_eq!(
            decide(&state, &join(3, false), T0),
            Err(Refusal::Full { max: 2 })
        );
        let turned_away = Command::TurnAway {
            participant: id(3),
            caller: "carol@example.com".into(),
            reason: LeaveReason::RoomFull,
        };
        let events = decide(&state, &turned_away, T0 + 5).unwrap();
        assert_eq!(
            events,
            vec![Event::ParticipantLeft {
                participant: id(3),
                reason: LeaveReason::RoomFull,
                caller: Some("carol@example.com".into()),
                left_at: T0 + 5,
            }]
        );
        let state = events.iter().fold(state, evolve);
        // The id is spent: it cannot join now, and a second refusal
        // records nothing.
        assert_eq!(
            decide(&state, &join(3, false), T0),
            Err(Refusal::AlreadyJoined(id(3)))
        );
        assert_eq!(decide(&state, &turned_away, T0), Ok(vec![]));
    }

    #[test]
    fn a_locked_conference_takes_moderators_only() {
        let (state, events) = run(&[start(10, false, false), join(1, true), Command::Lock]);
        assert!(matches!(
            events.last(),
            Some(Event::ConferenceLocked { .. })
        ));
        assert_eq!(decide(&state, &join(2, false), T0), Err(Refusal::Locked));
        assert!(decide(&state, &join(2, true), T0).is_ok());
        // Locking again writes nothing; unlocking lets participants in.
        assert_eq!(decide(&state, &Command::Lock, T0), Ok(vec![]));
        let state = decide(&state, &Command::Unlock, T0)
            .unwrap()
            .iter()
            .fold(state, evolve);
        assert!(decide(&state, &join(2, false), T0).is_ok());
    }

    #[test]
    fn the_last_moderator_leaving_ends_the_conference_for_everyone() {
        let (state, events) = run(&[
            start(10, true, true),
            join(1, true),
            join(2, false),
            join(3, false),
            Command::StartRecording {
                audio: AudioId::from_random([1; 16]),
            },
            Command::Leave {
                participant: id(1),
                reason: LeaveReason::HungUp,
            },
        ]);
        assert_eq!(state.status, Status::Ended);
        assert!(state.participants.is_empty());
        let tail: Vec<_> = events.iter().rev().take(5).rev().cloned().collect();
        let leave_at = T0 + 5_000_000;
        assert_eq!(
            tail,
            vec![
                Event::ParticipantLeft {
                    participant: id(1),
                    reason: LeaveReason::HungUp,
                    caller: None,
                    left_at: leave_at,
                },
                Event::ParticipantLeft {
                    participant: id(2),
                    reason: LeaveReason::ConferenceEnded,
                    caller: None,
                    left_at: leave_at,
                },
                Event::ParticipantLeft {
                    participant: id(3),
                    reason: LeaveReason::ConferenceEnded,
                    caller: None,
                    left_at: leave_at,
                },
                // Recording started at T0 + 4 s: one second of it.
                Event::ConferenceRecordingStopped {
                    audio: AudioId::from_random([1; 16]),
                    duration_ms: 1_000,
                    stopped_at: leave_at,
                },
                Event::ConferenceEnded {
                    reason: EndReason::LastModeratorLeft,
                    ended_at: leave_at,
                },
            ]
        );
        // Participants joined muted, the moderator did not.
        let joined: Vec<bool> = events
            .iter()
            .filter_map(|e| match e {
                Event::ParticipantJoined { muted, .. } => Some(*muted),
                _ => None,
            })
            .collect();
        assert_eq!(joined, vec![false, true, true]);
        // An ended conference accepts nothing.
        for c in [
            join(9, true),
            Command::Leave {
                participant: id(2),
                reason: LeaveReason::HungUp,
            },
            Command::End {
                reason: EndReason::Requested,
            },
            start(5, false, false),
        ] {
            assert_eq!(decide(&state, &c, T0), Err(Refusal::Ended), "{c:?}");
        }
    }

    #[test]
    fn the_last_participant_leaving_ends_an_ordinary_conference() {
        let (state, events) = run(&[
            start(10, false, false),
            join(1, true),
            join(2, false),
            Command::Kick { participant: id(1) },
        ]);
        assert_eq!(state.status, Status::Running);
        assert_eq!(state.participants.len(), 1);
        assert!(matches!(
            events.last(),
            Some(Event::ParticipantLeft {
                reason: LeaveReason::Kicked,
                ..
            })
        ));
        // A kick and a hang-up may cross: the second leave writes nothing.
        let hang_up = Command::Leave {
            participant: id(1),
            reason: LeaveReason::HungUp,
        };
        assert_eq!(decide(&state, &hang_up, T0), Ok(vec![]));
        let events = decide(
            &state,
            &Command::Leave {
                participant: id(2),
                reason: LeaveReason::RtpTimeout,
            },
            T0 + 9,
        )
        .unwrap();
        assert_eq!(
            events.last(),
            Some(&Event::ConferenceEnded {
                reason: EndReason::Empty,
                ended_at: T0 + 9
            })
        );
    }

    #[test]
    fn mute_all_spares_moderators_and_repeats_write_nothing() {
        let (state, _) = run(&[
            start(10, false, false),
            join(1, true),
            join(2, false),
            join(3, false),
            Command::Mute { participant: id(3) },
        ]);
        let events = decide(&state, &Command::MuteAll, T0).unwrap();
        assert_eq!(
            events,
            vec![Event::ParticipantMuted {
                participant: id(2),
                muted_at: T0
            }]
        );
        let state = events.iter().fold(state, evolve);
        assert_eq!(decide(&state, &Command::MuteAll, T0), Ok(vec![]));
        assert_eq!(
            decide(&state, &Command::Mute { participant: id(2) }, T0),
            Ok(vec![])
        );
        assert_eq!(
            decide(&state, &Command::Unmute { participant: id(1) }, T0),
            Ok(vec![])
        );
        assert_eq!(
            decide(&state, &Command::Mute { participant: id(7) }, T0),
            Err(Refusal::UnknownParticipant(id(7)))
        );
    }

    #[test]
    fn talking_is_recorded_when_it_changes() {
        let (state, _) = run(&[start(10, false, false), join(1, false)]);
        let talk = |on| Command::Talking {
            participant: id(1),
            on,
        };
        assert_eq!(decide(&state, &talk(false), T0), Ok(vec![]));
        let events = decide(&state, &talk(true), T0 + 20_000).unwrap();
        assert_eq!(
            events,
            vec![Event::ParticipantTalking {
                participant: id(1),
                talking: true,
                changed_at: T0 + 20_000
            }]
        );
        let state = events.iter().fold(state, evolve);
        assert_eq!(decide(&state, &talk(true), T0), Ok(vec![]));
    }

    #[test]
    fn refusals_before_the_start_and_of_wrong_reasons() {
        let empty = Conference::default();
        assert_eq!(
            decide(&empty, &join(1, false), T0),
            Err(Refusal::NotStarted)
        );
        assert_eq!(
            decide(
                &empty,
                &Command::End {
                    reason: EndReason::Requested
                },
                T0
            ),
            Err(Refusal::NotStarted)
        );
        assert!(matches!(
            decide(&empty, &start(1, false, false), T0),
            Err(Refusal::Invalid {
                field: "max_participants",
                ..
            })
        ));
        let (state, _) = run(&[start(10, false, false), join(1, false)]);
        assert_eq!(
            decide(&state, &start(10, false, false), T0),
            Err(Refusal::AlreadyStarted)
        );
        let bad_leave = Command::Leave {
            participant: id(1),
            reason: LeaveReason::WrongPin,
        };
        assert!(matches!(
            decide(&state, &bad_leave, T0),
            Err(Refusal::Invalid {
                field: "reason",
                ..
            })
        ));
        let bad_refusal = Command::TurnAway {
            participant: id(2),
            caller: "x".into(),
            reason: LeaveReason::HungUp,
        };
        assert!(matches!(
            decide(&state, &bad_refusal, T0),
            Err(Refusal::Invalid {
                field: "reason",
                ..
            })
        ));
        assert_eq!(
            decide(&state, &Command::StopRecording { duration_ms: 5 }, T0),
            Err(Refusal::NotRecording)
        );
        // Refusals map onto the crate's error kinds.
        assert!(matches!(
            Error::from(Refusal::Full { max: 2 }),
            Error::FailedPrecondition(m) if m == "the conference is full (2 participants)"
        ));
        assert!(matches!(
            Error::from(Refusal::UnknownParticipant(id(4))),
            Error::NotFound(_)
        ));
    }

    #[test]
    fn a_recording_stops_with_the_length_the_application_gives() {
        let audio = AudioId::from_random([2; 16]);
        let (state, events) = run(&[
            start(10, false, false),
            join(1, false),
            Command::StartRecording {
                audio: audio.clone(),
            },
            Command::StopRecording {
                duration_ms: 61_234,
            },
        ]);
        assert!(state.recording.is_none());
        assert!(matches!(
            events.last(),
            Some(Event::ConferenceRecordingStopped { audio: a, duration_ms: 61_234, .. }) if *a == audio
        ));
        // The stopped recording is kept, with when it started.
        let started_at = events
            .iter()
            .find_map(|e| match e {
                Event::ConferenceRecordingStarted { started_at, .. } => Some(*started_at),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            state.recordings,
            vec![StoredRecording {
                audio: audio.clone(),
                started_at,
                duration_ms: 61_234,
            }]
        );
        let events = decide(
            &state,
            &Command::StartRecording {
                audio: audio.clone(),
            },
            T0,
        )
        .unwrap();
        let state = events.iter().fold(state, evolve);
        assert_eq!(
            decide(&state, &Command::StartRecording { audio }, T0),
            Err(Refusal::AlreadyRecording)
        );
    }

    #[test]
    fn an_operators_recording_request_waits_for_the_room_and_any_start_or_stop_answers_it() {
        let audio = AudioId::from_random([3; 16]);
        let start_request = Command::RequestRecording {
            action: RecordingAction::Start,
        };
        let stop_request = Command::RequestRecording {
            action: RecordingAction::Stop,
        };
        let (state, events) = run(&[start(10, false, false), join(1, false)]);
        assert!(events.len() == 2 && state.recording_requested.is_none());
        assert_eq!(
            decide(&state, &stop_request, T0),
            Err(Refusal::NotRecording)
        );
        let requested = decide(&state, &start_request, T0 + 5).unwrap();
        assert_eq!(
            requested,
            vec![Event::ConferenceRecordingRequested {
                action: RecordingAction::Start,
                requested_at: T0 + 5
            }]
        );
        let state = requested.iter().fold(state, evolve);
        assert_eq!(state.recording_requested, Some(RecordingAction::Start));
        assert!(state.recording.is_none(), "nothing records before the node");
        // A second request while the first waits writes nothing.
        assert_eq!(decide(&state, &start_request, T0 + 6), Ok(vec![]));
        // The node starts it: the request is answered.
        let started = decide(
            &state,
            &Command::StartRecording {
                audio: audio.clone(),
            },
            T0 + 7,
        )
        .unwrap();
        let state = started.iter().fold(state, evolve);
        assert!(state.recording_requested.is_none());
        assert_eq!(
            decide(&state, &start_request, T0 + 8),
            Err(Refusal::AlreadyRecording)
        );
        let state = decide(&state, &stop_request, T0 + 9)
            .unwrap()
            .iter()
            .fold(state, evolve);
        assert_eq!(state.recording_requested, Some(RecordingAction::Stop));
        assert!(state.recording.is_some(), "still recording until stored");
        let state = decide(
            &state,
            &Command::StopRecording { duration_ms: 1_500 },
            T0 + 10,
        )
        .unwrap()
        .iter()
        .fold(state, evolve);
        assert!(state.recording_requested.is_none() && state.recording.is_none());
        assert_eq!(state.recordings.len(), 1);
        assert_eq!(state.recordings[0].duration_ms, 1_500);
        // A request pending when the conference ends is dropped with it.
        let state = decide(&state, &start_request, T0 + 11)
            .unwrap()
            .iter()
            .fold(state, evolve);
        let state = decide(
            &state,
            &Command::End {
                reason: EndReason::Requested,
            },
            T0 + 12,
        )
        .unwrap()
        .iter()
        .fold(state, evolve);
        assert!(state.recording_requested.is_none());
        assert_eq!(decide(&state, &start_request, T0 + 13), Err(Refusal::Ended));
    }

    #[test]
    fn callers_are_cleaned_and_cut() {
        let (state, _) = run(&[start(10, false, false)]);
        let long = format!("a\u{0}b\n{}", "x".repeat(400));
        let events = decide(
            &state,
            &Command::Join {
                participant: id(1),
                caller: long,
                moderator: false,
            },
            T0,
        )
        .unwrap();
        match &events[0] {
            Event::ParticipantJoined { caller, .. } => {
                assert_eq!(caller.chars().count(), MAX_CALLER_LEN);
                assert!(caller.starts_with("abxx"));
            }
            other => panic!("{other:?}"),
        }
    }
}
