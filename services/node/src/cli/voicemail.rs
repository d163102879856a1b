//! `dialtone voicemail ...`: a user's voicemail box (enable, disable,
//! settings, PIN, greeting) and its messages (list, get the audio, mark
//! read, delete).

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use dialtone_api::pb;
use serde_json::{json, Value};

use super::connection::{status_error, Clients};
use super::output::{s, time, Output};

/// Size of the chunks a greeting is uploaded in (well under gRPC's 4 MB
/// message limit).
const UPLOAD_CHUNK_BYTES: usize = 64 * 1024;

#[derive(clap::Subcommand, Debug)]
pub enum VoicemailCommand {
    /// Switch a user's mailbox on (a PIN is needed the first time):
    /// `dialtone voicemail enable alice@example.com --pin 4321`.
    Enable {
        /// username@domain or user id
        user: String,
        #[command(flatten)]
        settings: MailboxSettings,
    },
    /// Switch a user's mailbox off (its messages and settings are kept).
    Disable { user: String },
    /// Change some settings of a mailbox (the others are kept).
    Set {
        user: String,
        #[command(flatten)]
        settings: MailboxSettings,
    },
    /// Show a mailbox: settings, message counts, greeting.
    Show { user: String },
    /// List a mailbox's messages, oldest first.
    List { user: String },
    /// Save a message's audio (WAV, 8 kHz mono 16-bit):
    /// `dialtone voicemail get alice@example.com MESSAGE_ID -o msg.wav`.
    Get {
        user: String,
        message_id: String,
        /// The file to write; `-` writes to standard output.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Mark a message read (saved).
    MarkRead { user: String, message_id: String },
    /// Delete a message and its audio.
    Delete { user: String, message_id: String },
    /// Set the greeting from a WAV file (at most 120 s; 8 to 48 kHz, mono
    /// or stereo, converted to 8 kHz), or go back to the default one:
    /// `dialtone voicemail greeting alice@example.com greeting.wav`,
    /// `dialtone voicemail greeting alice@example.com --default`.
    Greeting {
        user: String,
        /// The WAV file.
        #[arg(required_unless_present = "default", conflicts_with = "default")]
        file: Option<PathBuf>,
        /// The default greeting instead of the user's own.
        #[arg(long)]
        default: bool,
    },
}

/// A mailbox's settings; each one not given is kept.
#[derive(clap::Args, Debug)]
pub struct MailboxSettings {
    /// The PIN its owner dials in with: 4 to 12 digits (stored only as a
    /// salted hash).
    #[arg(long)]
    pin: Option<String>,
    /// The longest message a caller may leave, 5 to 600 s (default 180).
    #[arg(long)]
    max_message_secs: Option<u32>,
    /// How many messages the mailbox keeps, 1 to 1000 (default 100).
    #[arg(long)]
    max_messages: Option<u32>,
    /// Whether the owner's own phone must give the PIN too (*97).
    #[arg(long)]
    pin_from_own_phone: Option<bool>,
    /// Message-waiting NOTIFYs to the owner's phones without a
    /// subscription (for phones that expect them).
    #[arg(long)]
    unsolicited_mwi: Option<bool>,
}

impl MailboxSettings {
    fn request(self, user: String, enabled: Option<bool>) -> pb::ConfigureMailboxRequest {
        pb::ConfigureMailboxRequest {
            user,
            enabled,
            pin: self.pin,
            max_message_secs: self.max_message_secs,
            max_messages: self.max_messages,
            pin_from_own_phone: self.pin_from_own_phone,
            unsolicited_mwi: self.unsolicited_mwi,
            request_id: String::new(),
        }
    }
}

pub(super) async fn run(
    c: &mut Clients,
    out: &Output,
    cmd: VoicemailCommand,
) -> anyhow::Result<()> {
    let v = &mut c.voicemail;
    let result = match cmd {
        VoicemailCommand::Enable { user, settings } => {
            v.configure_mailbox(settings.request(user, Some(true)))
                .await
        }
        VoicemailCommand::Disable { user } => {
            v.configure_mailbox(pb::ConfigureMailboxRequest {
                user,
                enabled: Some(false),
                ..Default::default()
            })
            .await
        }
        VoicemailCommand::Set { user, settings } => {
            v.configure_mailbox(settings.request(user, None)).await
        }
        VoicemailCommand::Show { user } => v.get_mailbox(pb::GetMailboxRequest { user }).await,
        VoicemailCommand::List { user } => {
            let list = v
                .list_messages(pb::ListMessagesRequest { user })
                .await
                .map_err(status_error)?
                .into_inner();
            out.list(
                list.messages.iter().map(message_json).collect(),
                message_line,
            );
            return Ok(());
        }
        VoicemailCommand::Get {
            user,
            message_id,
            output,
        } => return get(c, out, user, message_id, output).await,
        VoicemailCommand::MarkRead { user, message_id } => {
            v.mark_message_read(pb::MessageRequest {
                user,
                message_id,
                request_id: String::new(),
            })
            .await
        }
        VoicemailCommand::Delete { user, message_id } => {
            v.delete_message(pb::MessageRequest {
                user,
                message_id,
                request_id: String::new(),
            })
            .await
        }
        VoicemailCommand::Greeting {
            user,
            file: Some(file),
            ..
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            v.set_greeting(tokio_stream::iter(upload(user, bytes)))
                .await
        }
        VoicemailCommand::Greeting { user, .. } => {
            v.reset_greeting(pb::ResetGreetingRequest {
                user,
                request_id: String::new(),
            })
            .await
        }
    };
    let mailbox = result.map_err(status_error)?.into_inner();
    out.one(mailbox_json(&mailbox), mailbox_details);
    Ok(())
}

/// A greeting upload's chunks: the first names the user (and is sent even
/// for an empty file, so that the server says what is wrong with it).
fn upload(user: String, bytes: Vec<u8>) -> Vec<pb::GreetingChunk> {
    let mut chunks: Vec<pb::GreetingChunk> = bytes
        .chunks(UPLOAD_CHUNK_BYTES)
        .map(|data| pb::GreetingChunk {
            data: data.to_vec(),
            ..Default::default()
        })
        .collect();
    if chunks.is_empty() {
        chunks.push(pb::GreetingChunk::default());
    }
    chunks[0].user = user;
    chunks
}

async fn get(
    c: &mut Clients,
    out: &Output,
    user: String,
    message_id: String,
    output: PathBuf,
) -> anyhow::Result<()> {
    let mut stream = c
        .voicemail
        .get_message_audio(pb::GetMessageAudioRequest {
            user,
            message_id: message_id.clone(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    // Everything is received before anything is written: a failed
    // download leaves no partial file.
    let mut audio = Vec::new();
    while let Some(chunk) = stream.message().await.map_err(status_error)? {
        audio.extend_from_slice(&chunk.data);
    }
    save_audio(out, &output, &audio, ("message_id", &message_id))
}

/// Writes downloaded audio to `output` (`-`: standard output) and says
/// what was written, naming it by `id` (its key and value).
pub(super) fn save_audio(
    out: &Output,
    output: &std::path::Path,
    audio: &[u8],
    id: (&str, &str),
) -> anyhow::Result<()> {
    if output.as_os_str() == "-" {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(audio)?;
        stdout.flush()?;
        return Ok(());
    }
    std::fs::write(output, audio).with_context(|| format!("cannot write {}", output.display()))?;
    out.one(
        json!({
            id.0: id.1,
            "file": output.display().to_string(),
            "bytes": audio.len(),
        }),
        |v| format!("wrote {} ({} bytes)", s(v, "file"), s(v, "bytes")),
    );
    Ok(())
}

fn mailbox_json(m: &pb::Mailbox) -> Value {
    json!({
        "user": m.user,
        "user_id": m.user_id,
        "enabled": m.enabled,
        "has_pin": m.has_pin,
        "max_message_secs": m.max_message_secs,
        "max_messages": m.max_messages,
        "pin_from_own_phone": m.pin_from_own_phone,
        "unsolicited_mwi": m.unsolicited_mwi,
        "new_messages": m.new_messages,
        "saved_messages": m.saved_messages,
        "greeting_ms": m.greeting.as_ref().map(|g| g.duration_ms),
        "locked_until": time(&m.locked_until),
    })
}

fn mailbox_details(v: &Value) -> String {
    let on_off = |key: &str| {
        if v[key] == Value::Bool(true) {
            "on"
        } else {
            "off"
        }
    };
    let greeting = match v["greeting_ms"].as_u64() {
        Some(ms) => format!("own ({}.{} s)", ms / 1000, ms % 1000 / 100),
        None => "default".to_owned(),
    };
    let mut text = format!(
        "mailbox       {}\nenabled       {}\npin           {}\nmessages      {} new, {} saved (at most {}, each up to {} s)\ngreeting      {greeting}\nown phone     {}\nunsolicited   MWI {}",
        s(v, "user"),
        if v["enabled"] == Value::Bool(true) { "yes" } else { "no" },
        if v["has_pin"] == Value::Bool(true) { "set" } else { "none" },
        s(v, "new_messages"),
        s(v, "saved_messages"),
        s(v, "max_messages"),
        s(v, "max_message_secs"),
        if v["pin_from_own_phone"] == Value::Bool(true) {
            "PIN asked"
        } else {
            "no PIN asked"
        },
        on_off("unsolicited_mwi"),
    );
    if !v["locked_until"].is_null() {
        text.push_str(&format!(
            "\nlocked until  {} (too many wrong PINs)",
            s(v, "locked_until")
        ));
    }
    text
}

fn message_json(m: &pb::VoicemailMessage) -> Value {
    json!({
        "message_id": m.message_id,
        "from": m.from,
        "left_at": time(&m.left_at),
        "duration_ms": m.duration_ms,
        "read": m.read,
    })
}

fn message_line(v: &Value) -> String {
    let ms = v["duration_ms"].as_u64().unwrap_or(0);
    format!(
        "{}  {}  {:>5}.{} s  {:<5}  {}",
        s(v, "message_id"),
        s(v, "left_at"),
        ms / 1000,
        ms % 1000 / 100,
        if v["read"] == Value::Bool(true) {
            "saved"
        } else {
            "new"
        },
        s(v, "from"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_names_the_user_in_its_first_chunk_only() {
        let chunks = upload("alice@example.com".into(), vec![7; UPLOAD_CHUNK_BYTES + 10]);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].user, "alice@example.com");
        assert!(chunks[1].user.is_empty());
        assert_eq!(
            chunks[0].data.len() + chunks[1].data.len(),
            UPLOAD_CHUNK_BYTES + 10
        );
        let empty = upload("alice@example.com".into(), Vec::new());
        assert_eq!(empty.len(), 1);
        assert_eq!(empty[0].user, "alice@example.com");
    }
}
