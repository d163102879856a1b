//! `dialtone conference ...`: create, show, list, change and delete
//! conference rooms (ADR 0025). PINs are sent as typed and never shown:
//! the server answers whether a room has them. And the conferences in
//! progress: `list-live`, `participants`, `mute`, `unmute`, `kick`,
//! `lock`, `unlock`, `start-recording`, `stop-recording`; each control is durable when the command returns,
//! and the node's conference application applies it to the call; and a
//! conference's recordings (`recordings`, `get-recording`).

use dialtone_api::pb;
use serde_json::{json, Value};

use super::connection::{status_error, Clients};
use super::output::{s, time, Output};

#[derive(clap::Subcommand, Debug)]
pub enum ConferenceCommand {
    /// Create a conference room:
    /// `dialtone conference create standup@example.com --pin 2468 --moderator-pin 1357 --max 50`.
    Create {
        /// name@domain (a name no user, ring group or room of the domain has)
        room: String,
        // Boxed: many options, and client commands stay small.
        #[command(flatten)]
        settings: Box<RoomSettings>,
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Show a conference room.
    Get { room: String },
    /// List the conference rooms of a domain.
    List {
        #[arg(long)]
        domain: String,
    },
    /// Change some settings of a room (the others are kept).
    Update {
        room: String,
        // Boxed: many options, and client commands stay small.
        #[command(flatten)]
        settings: Box<RoomSettings>,
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Delete a conference room.
    Delete { room: String },
    /// Clear a room's PIN lock-outs: one caller's (`--caller`, as `get`
    /// shows it: user@domain or an IP address), or every caller's and the
    /// room's.
    ResetPinLockouts {
        room: String,
        #[arg(long)]
        caller: Option<String>,
    },
    /// The conferences in progress of a domain (every domain's for an
    /// admin token, the token's own domain's for a domain token), or of a
    /// room (name@domain).
    ListLive {
        /// A domain, or a room's address
        domain: Option<String>,
    },
    /// A conference and who is in it:
    /// `dialtone conference participants standup@example.com`.
    Participants {
        /// A room's address (its conference in progress) or a conference id
        conference: String,
    },
    /// The stopped recordings of a conference:
    /// `dialtone conference recordings CONFERENCE_ID`.
    Recordings {
        /// A conference id (or a room's address: its conference in progress)
        conference: String,
    },
    /// Save a recording of a conference (WAV, 8 kHz mono 16-bit):
    /// `dialtone conference get-recording CONFERENCE_ID AUDIO_ID -o room.wav`.
    GetRecording {
        /// A conference id (or a room's address: its conference in progress)
        conference: String,
        audio_id: String,
        /// The file to write; `-` writes to standard output.
        #[arg(short, long)]
        output: std::path::PathBuf,
    },
    /// Mute a participant (heard by no one), or with --all every one who
    /// is not a moderator.
    Mute {
        /// A room's address (its conference in progress) or a conference id
        conference: String,
        #[command(flatten)]
        who: Who,
    },
    /// Unmute a participant.
    Unmute {
        /// A room's address (its conference in progress) or a conference id
        conference: String,
        /// The participant's id, its first characters, or its caller
        participant: String,
    },
    /// Remove a participant from the conference (the node hangs up its
    /// call), or with --all everyone (the conference then ends).
    Kick {
        /// A room's address (its conference in progress) or a conference id
        conference: String,
        #[command(flatten)]
        who: Who,
    },
    /// Lock a conference: it takes moderators only.
    Lock {
        /// A room's address (its conference in progress) or a conference id
        conference: String,
    },
    /// Unlock a conference.
    Unlock {
        /// A room's address (its conference in progress) or a conference id
        conference: String,
    },
    /// Start recording a conference's mix (the same recording a
    /// moderator's *2 starts and stops); returns once the node running
    /// the room has started it.
    StartRecording {
        /// A room's address (its conference in progress) or a conference id
        conference: String,
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Stop a conference's recording; returns once the node running the
    /// room has stored it (then listed by `recordings`).
    StopRecording {
        /// A room's address (its conference in progress) or a conference id
        conference: String,
        #[arg(long, default_value = "")]
        request_id: String,
    },
}

/// One participant, or all of them.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Who {
    /// The participant's id, its first characters (4 or more), or its
    /// caller (user@domain)
    participant: Option<String>,
    /// Every participant
    #[arg(long)]
    all: bool,
}

/// A room's settings; each one not given is kept (or defaults, on create).
#[derive(clap::Args)]
pub struct RoomSettings {
    /// The PIN participants enter, 4 to 12 digits; `none` removes it.
    #[arg(long)]
    pin: Option<String>,
    /// The PIN that makes a caller a moderator, 4 to 12 digits (not the
    /// participant PIN); `none` removes it.
    #[arg(long)]
    moderator_pin: Option<String>,
    /// Most participants at once, moderators included: 2 to 1000 (default 50).
    #[arg(long)]
    max: Option<u32>,
    /// Participants hear hold audio until a moderator joins (needs
    /// --moderator-pin). `--wait-for-moderator false` turns it off.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    wait_for_moderator: Option<bool>,
    /// The conference ends when its last moderator leaves (needs
    /// --moderator-pin).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    end_with_moderator: Option<bool>,
    /// A tone when someone joins or leaves (default on).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    tones: Option<bool>,
    /// Record the room's mix (default off).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    record: Option<bool>,
    /// Participants (not moderators) join muted (default off).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    muted_on_entry: Option<bool>,
}

// PINs are secrets: a debug print of the command line shows that they were
// given, not what they are.
impl std::fmt::Debug for RoomSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pin = |p: &Option<String>| p.as_ref().map(|_| "<redacted>");
        f.debug_struct("RoomSettings")
            .field("pin", &pin(&self.pin))
            .field("moderator_pin", &pin(&self.moderator_pin))
            .field("max", &self.max)
            .field("wait_for_moderator", &self.wait_for_moderator)
            .field("end_with_moderator", &self.end_with_moderator)
            .field("tones", &self.tones)
            .field("record", &self.record)
            .field("muted_on_entry", &self.muted_on_entry)
            .finish()
    }
}

impl RoomSettings {
    fn change(self) -> pb::RoomChange {
        // `none` removes a PIN: the API's empty string.
        let pin = |p: Option<String>| {
            p.map(|p| {
                if p.eq_ignore_ascii_case("none") {
                    String::new()
                } else {
                    p
                }
            })
        };
        pb::RoomChange {
            pin: pin(self.pin),
            moderator_pin: pin(self.moderator_pin),
            max_participants: self.max,
            wait_for_moderator: self.wait_for_moderator,
            end_with_moderator: self.end_with_moderator,
            tones: self.tones,
            record: self.record,
            muted_on_entry: self.muted_on_entry,
        }
    }
}

pub(super) async fn run(
    c: &mut Clients,
    out: &Output,
    cmd: ConferenceCommand,
) -> anyhow::Result<()> {
    let api = &mut c.conference;
    let result = match cmd {
        ConferenceCommand::Create {
            room,
            settings,
            request_id,
        } => {
            api.create_room(pb::CreateRoomRequest {
                address: room,
                settings: Some((*settings).change()),
                request_id,
                expected_version: None,
            })
            .await
        }
        ConferenceCommand::Get { room } => api.get_room(pb::GetRoomRequest { address: room }).await,
        ConferenceCommand::List { domain } => {
            let list = api
                .list_rooms(pb::ListRoomsRequest { domain })
                .await
                .map_err(status_error)?
                .into_inner();
            out.list(list.rooms.iter().map(room_json).collect(), room_line);
            return Ok(());
        }
        ConferenceCommand::Update {
            room,
            settings,
            expected_version,
        } => {
            api.update_room(pb::UpdateRoomRequest {
                address: room,
                settings: Some((*settings).change()),
                request_id: String::new(),
                expected_version,
            })
            .await
        }
        ConferenceCommand::Delete { room } => {
            api.delete_room(pb::DeleteRoomRequest {
                address: room,
                ..Default::default()
            })
            .await
        }
        ConferenceCommand::ResetPinLockouts { room, caller } => {
            api.reset_pin_lockouts(pb::ResetPinLockoutsRequest {
                address: room,
                caller: caller.unwrap_or_default(),
                request_id: String::new(),
            })
            .await
        }
        ConferenceCommand::ListLive { domain } => {
            let list = api
                .list_conferences(pb::ListConferencesRequest {
                    domain: domain.unwrap_or_default(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let values: Vec<Value> = list.conferences.iter().map(summary_json).collect();
            if !out.json && !values.is_empty() {
                println!(
                    "{:<36} {:<32} {:<27} {:>12}  FLAGS",
                    "CONFERENCE", "ROOM", "STARTED", "PARTICIPANTS"
                );
            }
            out.list(values, summary_line);
            return Ok(());
        }
        ConferenceCommand::Participants { conference } => {
            let found = api
                .get_conference(pb::GetConferenceRequest { conference })
                .await;
            return print_conference(out, found);
        }
        ConferenceCommand::Recordings { conference } => {
            let found = api
                .get_conference(pb::GetConferenceRequest { conference })
                .await
                .map_err(status_error)?
                .into_inner();
            let recordings = conference_json(&found)["recordings"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if !out.json && !recordings.is_empty() {
                println!("{:<35} {:<27} {:>11}", "AUDIO", "STARTED", "DURATION_MS");
            }
            out.list(recordings, |v| {
                format!(
                    "{:<35} {:<27} {:>11}",
                    s(v, "audio_id"),
                    s(v, "started_at"),
                    s(v, "duration_ms")
                )
            });
            return Ok(());
        }
        ConferenceCommand::GetRecording {
            conference,
            audio_id,
            output,
        } => {
            let mut stream = api
                .get_recording_audio(pb::GetRecordingAudioRequest {
                    conference,
                    audio_id: audio_id.clone(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            // All of it before anything is written: no partial file.
            let mut audio = Vec::new();
            while let Some(chunk) = stream.message().await.map_err(status_error)? {
                audio.extend_from_slice(&chunk.data);
            }
            return super::voicemail::save_audio(out, &output, &audio, ("audio_id", &audio_id));
        }
        ConferenceCommand::Mute { conference, who } => {
            let found = match who.participant {
                Some(participant) if !who.all => {
                    api.mute_participant(participant_request(conference, participant))
                        .await
                }
                _ => api.mute_all(control_request(conference)).await,
            };
            return print_conference(out, found);
        }
        ConferenceCommand::Unmute {
            conference,
            participant,
        } => {
            let found = api
                .unmute_participant(participant_request(conference, participant))
                .await;
            return print_conference(out, found);
        }
        ConferenceCommand::Kick { conference, who } => {
            let found = match who.participant {
                Some(participant) if !who.all => {
                    api.kick_participant(participant_request(conference, participant))
                        .await
                }
                _ => api.kick_all(control_request(conference)).await,
            };
            return print_conference(out, found);
        }
        ConferenceCommand::Lock { conference } => {
            let found = api.lock_conference(control_request(conference)).await;
            return print_conference(out, found);
        }
        ConferenceCommand::Unlock { conference } => {
            let found = api.unlock_conference(control_request(conference)).await;
            return print_conference(out, found);
        }
        ConferenceCommand::StartRecording {
            conference,
            request_id,
        } => {
            let found = api
                .start_recording(pb::ConferenceControlRequest {
                    conference,
                    request_id,
                })
                .await;
            return print_conference(out, found);
        }
        ConferenceCommand::StopRecording {
            conference,
            request_id,
        } => {
            let found = api
                .stop_recording(pb::ConferenceControlRequest {
                    conference,
                    request_id,
                })
                .await;
            return print_conference(out, found);
        }
    };
    let room = result.map_err(status_error)?.into_inner();
    out.one(room_json(&room), room_details);
    Ok(())
}

fn participant_request(conference: String, participant: String) -> pb::ParticipantRequest {
    pb::ParticipantRequest {
        conference,
        participant,
        request_id: String::new(),
    }
}

fn control_request(conference: String) -> pb::ConferenceControlRequest {
    pb::ConferenceControlRequest {
        conference,
        request_id: String::new(),
    }
}

/// A conference and its participants: the JSON object, or a heading and a
/// table of the participants.
fn print_conference(
    out: &Output,
    found: Result<tonic::Response<pb::Conference>, tonic::Status>,
) -> anyhow::Result<()> {
    let conference = found.map_err(status_error)?.into_inner();
    let value = conference_json(&conference);
    if out.json {
        out.one(value, |_| String::new());
        return Ok(());
    }
    println!("{}", conference_heading(&value));
    let participants = value["participants"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !participants.is_empty() {
        println!(
            "{:<36} {:<32} {:<9} {:<5} {:<7} JOINED",
            "PARTICIPANT", "CALLER", "ROLE", "MUTED", "TALKING"
        );
    }
    out.list(participants, participant_line);
    Ok(())
}

pub(super) fn conference_json(c: &pb::Conference) -> Value {
    json!({
        "conference_id": c.conference_id,
        "room": c.room,
        "started_at": time(&c.started_at),
        "ended_at": time(&c.ended_at),
        "locked": c.locked,
        "recording": c.recording,
        "max_participants": c.max_participants,
        "end_with_moderator": c.end_with_moderator,
        "muted_on_entry": c.muted_on_entry,
        "version": c.version,
        "participants": c.participants.iter().map(|p| json!({
            "participant_id": p.participant_id,
            "caller": p.caller,
            "moderator": p.moderator,
            "muted": p.muted,
            "talking": p.talking,
            "joined_at": time(&p.joined_at),
        })).collect::<Vec<_>>(),
        "recordings": c.recordings.iter().map(|r| json!({
            "audio_id": r.audio_id,
            "started_at": time(&r.started_at),
            "duration_ms": r.duration_ms,
        })).collect::<Vec<_>>(),
    })
}

/// `conference 0191... in standup@example.com, started ..., 3 of at most
/// 50, locked`.
fn conference_heading(v: &Value) -> String {
    let count = v["participants"].as_array().map_or(0, Vec::len);
    let mut text = format!(
        "conference {} in {}, started {}",
        s(v, "conference_id"),
        s(v, "room"),
        s(v, "started_at")
    );
    if v["ended_at"].is_null() {
        text.push_str(&format!(
            ", {count} of at most {} participants",
            s(v, "max_participants")
        ));
    } else {
        text.push_str(&format!(", ended {}", s(v, "ended_at")));
    }
    for (key, label) in [("locked", "locked"), ("recording", "recording")] {
        if v[key] == Value::Bool(true) {
            text.push_str(", ");
            text.push_str(label);
        }
    }
    text
}

fn participant_line(v: &Value) -> String {
    let role = if v["moderator"] == Value::Bool(true) {
        "moderator"
    } else {
        "-"
    };
    format!(
        "{:<36} {:<32} {:<9} {:<5} {:<7} {}",
        s(v, "participant_id"),
        s(v, "caller"),
        role,
        yes_no(v, "muted"),
        yes_no(v, "talking"),
        s(v, "joined_at")
    )
}

fn summary_json(c: &pb::ConferenceSummary) -> Value {
    json!({
        "conference_id": c.conference_id,
        "room": c.room,
        "started_at": time(&c.started_at),
        "participants": c.participants,
        "locked": c.locked,
        "recording": c.recording,
    })
}

fn summary_line(v: &Value) -> String {
    let flags: Vec<&str> = [("locked", "locked"), ("recording", "recording")]
        .into_iter()
        .filter(|(key, _)| v[*key] == Value::Bool(true))
        .map(|(_, label)| label)
        .collect();
    format!(
        "{:<36} {:<32} {:<27} {:>12}  {}",
        s(v, "conference_id"),
        s(v, "room"),
        s(v, "started_at"),
        s(v, "participants"),
        flags.join(", ")
    )
}

pub(super) fn room_json(r: &pb::ConferenceRoom) -> Value {
    json!({
        "address": r.address,
        "has_pin": r.has_pin,
        "has_moderator_pin": r.has_moderator_pin,
        "max_participants": r.max_participants,
        "wait_for_moderator": r.wait_for_moderator,
        "end_with_moderator": r.end_with_moderator,
        "tones": r.tones,
        "record": r.record,
        "muted_on_entry": r.muted_on_entry,
        "version": r.version,
        "pin_lockouts": r.pin_lockouts.iter().map(|l| json!({
            "caller": l.caller,
            "strikes": strikes_json(l.strikes.as_ref()),
        })).collect::<Vec<_>>(),
        "room_pin_strikes": strikes_json(r.room_pin_strikes.as_ref()),
    })
}

fn strikes_json(s: Option<&pb::PinStrikes>) -> Value {
    match s {
        None => Value::Null,
        Some(s) => json!({
            "failures": s.failures,
            "last_failure_at": time(&s.last_failure_at),
            "locked_until": time(&s.locked_until),
            "lockouts": s.lockouts,
        }),
    }
}

/// `3 wrong, locked until 2026-12-08T02:00:00Z` for a caller or the room.
fn strikes_line(v: &Value) -> String {
    let mut line = format!("{} wrong", s(v, "failures"));
    if !v["locked_until"].is_null() {
        line.push_str(&format!(", locked until {}", s(v, "locked_until")));
    }
    line
}

fn yes_no(v: &Value, key: &str) -> &'static str {
    if v[key] == Value::Bool(true) {
        "yes"
    } else {
        "no"
    }
}

/// `standup@example.com   max 50   PIN, moderator PIN, recorded`.
pub(super) fn room_line(v: &Value) -> String {
    let flags: Vec<&str> = [
        ("has_pin", "PIN"),
        ("has_moderator_pin", "moderator PIN"),
        ("wait_for_moderator", "waits for a moderator"),
        ("end_with_moderator", "ends with the moderator"),
        ("record", "recorded"),
        ("muted_on_entry", "muted on entry"),
    ]
    .into_iter()
    .filter(|(key, _)| v[*key] == Value::Bool(true))
    .map(|(_, label)| label)
    .collect();
    format!(
        "{:<40} max {:<5} {}",
        s(v, "address"),
        s(v, "max_participants"),
        flags.join(", ")
    )
}

fn room_details(v: &Value) -> String {
    let mut lockouts = String::new();
    if !v["room_pin_strikes"].is_null() {
        lockouts.push_str(&format!(
            "\nPIN strikes (room)  {}",
            strikes_line(&v["room_pin_strikes"])
        ));
    }
    for l in v["pin_lockouts"].as_array().into_iter().flatten() {
        lockouts.push_str(&format!(
            "\nPIN strikes         {}: {}",
            s(l, "caller"),
            strikes_line(&l["strikes"])
        ));
    }
    lockouts.insert_str(0, &room_summary(v));
    lockouts
}

fn room_summary(v: &Value) -> String {
    format!(
        "conference room     {}\nPIN                 {}\nmoderator PIN       {}\nmax participants    {}\nwait for moderator  {}\nend with moderator  {}\ntones               {}\nrecord              {}\nmuted on entry      {}\nversion             {}",
        s(v, "address"),
        if v["has_pin"] == Value::Bool(true) { "set" } else { "none" },
        if v["has_moderator_pin"] == Value::Bool(true) { "set" } else { "none" },
        s(v, "max_participants"),
        yes_no(v, "wait_for_moderator"),
        yes_no(v, "end_with_moderator"),
        yes_no(v, "tones"),
        yes_no(v, "record"),
        yes_no(v, "muted_on_entry"),
        s(v, "version"),
    )
}
