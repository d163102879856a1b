//! `VoicemailService`: a user's voicemail box (settings, PIN, greeting) and
//! its messages, over the provisioning use cases for the mailbox and the
//! node's blob store for the audio.
//!
//! Order of writes (ADR 0023): a greeting's audio is stored (fsynced)
//! before the event that names it is appended; a message's or replaced
//! greeting's audio is deleted only after the event that drops it is
//! durable. A failed delete leaves an orphan blob (logged; the node's blob
//! sweeper deletes it later), never an event naming missing audio.

use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use dialtone_actors::{MailboxChange, Provisioning, UserMailbox, UserRef};
use dialtone_domain::mailbox::{self, AudioId, Greeting, MessageId};
use dialtone_eventlog::SharedBlobStore;
use dialtone_media::wav::{self, WavLimits};
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth;
use crate::payload::timestamp;
use crate::pb::voicemail_service_server::VoicemailService;
use crate::pb::{self, *};
use crate::provisioning::{check_user, meta, user_ref};
use crate::status;

/// Size of the chunks a message's audio is streamed in.
pub const AUDIO_CHUNK_BYTES: usize = 64 * 1024;
/// The longest greeting, in milliseconds.
pub const MAX_GREETING_MS: u32 = 120_000;
/// The largest greeting upload: 120 s of 48 kHz stereo 16-bit PCM (the
/// largest file `read_wav` can take within the limit) is 23 MB; anything
/// bigger is refused before it is all held in memory.
pub const MAX_GREETING_UPLOAD_BYTES: usize = 24 << 20;

pub struct VoicemailApi {
    provisioning: Provisioning,
    blobs: SharedBlobStore,
}

impl VoicemailApi {
    pub fn new(provisioning: Provisioning, blobs: SharedBlobStore) -> Self {
        VoicemailApi {
            provisioning,
            blobs,
        }
    }

    /// The user named by a request, if the caller may see it (NOT_FOUND as
    /// for an absent user otherwise).
    async fn user<T>(&self, request: &Request<T>, user: &str) -> Result<UserRef, Status> {
        let access = auth::access(request);
        let user = user_ref(user)?;
        check_user(&self.provisioning, access, &user).await?;
        Ok(user)
    }

    /// Deletes audio the mailbox no longer names; a failure is logged (the
    /// blob is an orphan for the node's sweeper), not the caller's error: the
    /// change it follows is durable.
    async fn discard(&self, audio: &AudioId, what: &str) {
        if let Err(e) = self.blobs.delete(audio.as_str()).await {
            tracing::warn!(audio = %audio, error = %e, "voicemail: {what} audio not deleted");
        }
    }

    /// Sets or resets the greeting, then deletes the audio of the one it
    /// replaced (when the mailbox no longer names it).
    async fn change_greeting(
        &self,
        user: &UserRef,
        greeting: Option<Greeting>,
        request_id: &str,
    ) -> Result<UserMailbox, Status> {
        let meta = meta(request_id, None)?;
        let before = self
            .provisioning
            .get_mailbox(user)
            .await
            .map_err(status::from_actor)?;
        let new_audio = greeting.as_ref().map(|g| g.audio.clone());
        let after = self.provisioning.set_greeting(user, greeting, meta).await;
        let after = match after {
            Ok(after) => after,
            Err(e) => {
                if let Some(audio) = &new_audio {
                    self.discard(audio, "unused greeting").await;
                }
                return Err(status::from_actor(e));
            }
        };
        let named = after.mailbox.greeting.as_ref().map(|g| &g.audio);
        // A retry the actor recognised keeps the first upload's audio:
        // this one's is then unused.
        if let Some(audio) = &new_audio {
            if named != Some(audio) {
                self.discard(audio, "unused greeting").await;
            }
        }
        if let Some(old) = before.mailbox.greeting.as_ref().map(|g| &g.audio) {
            if named != Some(old) {
                self.discard(old, "replaced greeting").await;
            }
        }
        Ok(after)
    }
}

/// The mailbox as the API shows it (never the PIN's hash).
pub fn mailbox(m: &UserMailbox) -> pb::Mailbox {
    let b = &m.mailbox;
    let (new, saved) = b.counts();
    let now = dialtone_actors::now_us();
    pb::Mailbox {
        user: m.address.clone(),
        user_id: m.user_id.to_string(),
        enabled: b.enabled,
        has_pin: b.pin.is_some(),
        max_message_secs: b.settings.max_message_ms / 1000,
        max_messages: b.settings.max_messages,
        pin_from_own_phone: b.settings.pin_from_own_phone,
        unsolicited_mwi: b.settings.unsolicited_mwi,
        new_messages: new,
        saved_messages: saved,
        greeting: b.greeting.as_ref().map(|g| pb::Greeting {
            audio_id: g.audio.to_string(),
            duration_ms: g.duration_ms,
        }),
        locked_until: b
            .locked_until
            .filter(|_| b.is_locked(now))
            .and_then(timestamp),
    }
}

pub fn message(m: &mailbox::Message) -> pb::VoicemailMessage {
    pb::VoicemailMessage {
        message_id: m.message_id.to_string(),
        from: m.from.clone(),
        left_at: timestamp(m.left_at),
        duration_ms: m.duration_ms,
        read: m.read,
    }
}

/// A message id, or INVALID_ARGUMENT naming `message_id`.
fn message_id(input: &str) -> Result<MessageId, Status> {
    AudioId::parse(input.trim()).map_err(|_| {
        status::invalid(
            "message_id",
            format!("'{input}' is not a message id (vm- and 32 hex digits)"),
        )
    })
}

fn not_found_message(id: &MessageId) -> Status {
    Status::not_found(format!("message {id} not found"))
}

fn blobs_unavailable(e: dialtone_eventlog::Error) -> Status {
    Status::unavailable(format!("blob store unavailable, nothing was changed: {e}"))
}

/// Seconds (the API's unit) to the mailbox's milliseconds; errors name the
/// API's field.
fn max_message_ms(secs: Option<u32>) -> Result<Option<u32>, Status> {
    let Some(secs) = secs else { return Ok(None) };
    let (min, max) = (
        mailbox::MIN_MAX_MESSAGE_MS / 1000,
        mailbox::MAX_MAX_MESSAGE_MS / 1000,
    );
    if !(min..=max).contains(&secs) {
        return Err(status::invalid(
            "max_message_secs",
            format!("must be between {min} and {max}, got {secs}"),
        ));
    }
    Ok(Some(secs * 1000))
}

/// A greeting upload read into 8 kHz mono samples, or INVALID_ARGUMENT
/// with what is wrong and how to fix it.
fn greeting_samples(bytes: &[u8]) -> Result<Vec<i16>, Status> {
    wav::read_wav(
        bytes,
        WavLimits {
            max_duration_ms: MAX_GREETING_MS,
        },
    )
    .map_err(|e| match e {
        dialtone_media::Error::Malformed { reason, .. } => {
            status::invalid("greeting", format!("not a WAV file: {reason}"))
        }
        dialtone_media::Error::UnsupportedAudio(reason) => status::invalid("greeting", reason),
        other => status::invalid("greeting", other),
    })
}

type AudioStream = Pin<Box<dyn Stream<Item = Result<AudioChunk, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl VoicemailService for VoicemailApi {
    async fn configure_mailbox(
        &self,
        request: Request<ConfigureMailboxRequest>,
    ) -> Result<Response<pb::Mailbox>, Status> {
        let user = self.user(&request, &request.get_ref().user).await?;
        let req = request.into_inner();
        let meta = meta(&req.request_id, None)?;
        let change = MailboxChange {
            enabled: req.enabled,
            pin: req.pin,
            max_message_ms: max_message_ms(req.max_message_secs)?,
            max_messages: req.max_messages,
            pin_from_own_phone: req.pin_from_own_phone,
            unsolicited_mwi: req.unsolicited_mwi,
        };
        let after = self
            .provisioning
            .configure_mailbox(&user, change, meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(mailbox(&after)))
    }

    async fn get_mailbox(
        &self,
        request: Request<GetMailboxRequest>,
    ) -> Result<Response<pb::Mailbox>, Status> {
        let user = self.user(&request, &request.get_ref().user).await?;
        let found = self
            .provisioning
            .get_mailbox(&user)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(mailbox(&found)))
    }

    async fn list_messages(
        &self,
        request: Request<ListMessagesRequest>,
    ) -> Result<Response<ListMessagesResponse>, Status> {
        let user = self.user(&request, &request.get_ref().user).await?;
        let found = self
            .provisioning
            .get_mailbox(&user)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(ListMessagesResponse {
            messages: found.mailbox.messages.iter().map(message).collect(),
        }))
    }

    type GetMessageAudioStream = AudioStream;

    async fn get_message_audio(
        &self,
        request: Request<GetMessageAudioRequest>,
    ) -> Result<Response<AudioStream>, Status> {
        let user = self.user(&request, &request.get_ref().user).await?;
        let id = message_id(&request.get_ref().message_id)?;
        let found = self
            .provisioning
            .get_mailbox(&user)
            .await
            .map_err(status::from_actor)?;
        if found.mailbox.message(&id).is_none() {
            return Err(not_found_message(&id));
        }
        let audio = self
            .blobs
            .get(id.as_str())
            .await
            .map_err(|e| Status::unavailable(format!("blob store unavailable: {e}")))?
            .ok_or_else(|| Status::not_found(format!("the audio of message {id} not found")))?;
        Ok(Response::new(Box::pin(futures::stream::iter(
            chunks(audio).map(|data| Ok(AudioChunk { data })),
        ))))
    }

    async fn mark_message_read(
        &self,
        request: Request<MessageRequest>,
    ) -> Result<Response<pb::Mailbox>, Status> {
        let user = self.user(&request, &request.get_ref().user).await?;
        let req = request.into_inner();
        let id = message_id(&req.message_id)?;
        let meta = meta(&req.request_id, None)?;
        let after = self
            .provisioning
            .mark_message_read(&user, &id, meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(mailbox(&after)))
    }

    async fn delete_message(
        &self,
        request: Request<MessageRequest>,
    ) -> Result<Response<pb::Mailbox>, Status> {
        let user = self.user(&request, &request.get_ref().user).await?;
        let req = request.into_inner();
        let id = message_id(&req.message_id)?;
        let meta = meta(&req.request_id, None)?;
        let after = self
            .provisioning
            .delete_message(&user, &id, meta)
            .await
            .map_err(status::from_actor)?;
        // The deletion is durable: the audio can go.
        if after.mailbox.message(&id).is_none() {
            self.discard(&id, "deleted message").await;
        }
        Ok(Response::new(mailbox(&after)))
    }

    async fn set_greeting(
        &self,
        request: Request<Streaming<GreetingChunk>>,
    ) -> Result<Response<pb::Mailbox>, Status> {
        let access = auth::access(&request);
        let mut upload = request.into_inner();
        let first = upload
            .message()
            .await?
            .ok_or_else(|| status::invalid("user", "the upload is empty (no first chunk)"))?;
        let user = user_ref(&first.user)?;
        check_user(&self.provisioning, access, &user).await?;
        // The user exists before the upload is read.
        self.provisioning
            .get_mailbox(&user)
            .await
            .map_err(status::from_actor)?;
        let mut bytes = BytesMut::from(&first.data[..]);
        while let Some(chunk) = upload.message().await? {
            if bytes.len() + chunk.data.len() > MAX_GREETING_UPLOAD_BYTES {
                return Err(status::invalid(
                    "greeting",
                    format!(
                        "the file is over {} MiB; a greeting is at most {} s",
                        MAX_GREETING_UPLOAD_BYTES >> 20,
                        MAX_GREETING_MS / 1000
                    ),
                ));
            }
            bytes.extend_from_slice(&chunk.data);
        }
        let samples = greeting_samples(&bytes)?;
        drop(bytes);
        let duration_ms =
            u32::try_from(samples.len() as u64 * 1000 / u64::from(wav::SAMPLE_RATE_HZ))
                .unwrap_or(u32::MAX);
        let mut file = Vec::with_capacity(44 + samples.len() * 2);
        wav::write_wav(&samples, &mut file);
        let audio = dialtone_actors::new_audio_id();
        self.blobs
            .put(audio.as_str(), Bytes::from(file))
            .await
            .map_err(blobs_unavailable)?;
        let greeting = Greeting { audio, duration_ms };
        let after = self
            .change_greeting(&user, Some(greeting), &first.request_id)
            .await?;
        Ok(Response::new(mailbox(&after)))
    }

    async fn reset_greeting(
        &self,
        request: Request<ResetGreetingRequest>,
    ) -> Result<Response<pb::Mailbox>, Status> {
        let user = self.user(&request, &request.get_ref().user).await?;
        let req = request.into_inner();
        let after = self.change_greeting(&user, None, &req.request_id).await?;
        Ok(Response::new(mailbox(&after)))
    }
}

/// `bytes` in [`AUDIO_CHUNK_BYTES`] pieces (views of the same buffer).
pub(crate) fn chunks(bytes: Bytes) -> impl Iterator<Item = Bytes> + Send {
    let len = bytes.len();
    (0..len)
        .step_by(AUDIO_CHUNK_BYTES)
        .map(move |start| bytes.slice(start..len.min(start + AUDIO_CHUNK_BYTES)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_is_streamed_in_64_kib_chunks_that_add_up() {
        let bytes = Bytes::from((0..200_000u32).map(|i| i as u8).collect::<Vec<_>>());
        let parts: Vec<Bytes> = chunks(bytes.clone()).collect();
        assert_eq!(parts.len(), 4);
        assert!(parts[..3].iter().all(|p| p.len() == AUDIO_CHUNK_BYTES));
        assert_eq!(parts.concat(), bytes.to_vec());
        assert_eq!(chunks(Bytes::new()).count(), 0);
    }

    #[test]
    fn greetings_are_refused_with_what_to_do() {
        let err = greeting_samples(b"hello, not audio").unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("not a WAV file"),
            "{}",
            err.message()
        );
        // 44.1 kHz: refused with the conversion hint.
        let mut wav = Vec::new();
        wav_44k(&mut wav);
        let err = greeting_samples(&wav).unwrap_err();
        assert!(err.message().contains("44100 Hz"), "{}", err.message());
        assert!(err.message().contains("sox"), "{}", err.message());
    }

    #[test]
    fn max_message_secs_is_checked_in_seconds() {
        assert_eq!(max_message_ms(None).unwrap(), None);
        assert_eq!(max_message_ms(Some(60)).unwrap(), Some(60_000));
        let err = max_message_ms(Some(601)).unwrap_err();
        assert!(
            err.message().contains("max_message_secs"),
            "{}",
            err.message()
        );
        assert!(max_message_ms(Some(4)).is_err());
    }

    /// One second of silence as 44.1 kHz mono 16-bit PCM.
    fn wav_44k(out: &mut Vec<u8>) {
        let rate: u32 = 44_100;
        let data = rate * 2;
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + data).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&rate.to_le_bytes());
        out.extend_from_slice(&(rate * 2).to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&16u16.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&data.to_le_bytes());
        out.resize(out.len() + data as usize, 0);
    }
}
