//! `dialtone conference ...`: create, show, list, change and delete
//! conference rooms (ADR 0025). PINs are sent as typed and never shown:
//! the server answers whether a room has them.

use dialtone_api::pb;
use serde_json::{json, Value};

use super::connection::{status_error, Clients};
use super::output::{s, Output};

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
    };
    let room = result.map_err(status_error)?.into_inner();
    out.one(room_json(&room), room_details);
    Ok(())
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
    })
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
