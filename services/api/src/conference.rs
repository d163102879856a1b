//! `ConferenceService`: conference rooms (ADR 0025), over the rooms' use
//! cases in `actors` (`provisioning/conference.rs`). A room is domain
//! state, so a domain token manages its domain's rooms as it manages its
//! ring groups. PINs come in clear and are hashed by the use case; no reply
//! carries them, only whether each is set.
//!
//! And the conferences in progress: listed from the [`ConferenceIndex`]
//! projection (no conference actor is loaded to list), read and controlled
//! (mute, unmute, kick, mute all, kick all, lock, unlock) through the
//! conference's actor, each control durable before the reply. The API
//! never touches media: the node's conference application follows the
//! conference's events and applies them. Starting and stopping the
//! recording are requests the node running the room acts on (only it has
//! the audio, and a stop is written after the audio is stored): the reply
//! waits for its answer on the conference, at most `RECORDING_WAIT`. A conference belongs to its
//! room's domain: another domain's token gets NOT_FOUND, as for an id
//! nobody used. A conference's stopped recordings are listed with it and
//! streamed from the blob store (`GetRecordingAudio`).

use std::collections::hash_map::{Entry, HashMap};
use std::pin::Pin;
use std::time::Duration;

use dialtone_actors::{
    ConferenceIndex, ConferenceInfo, Control, DomainRef, LiveConference, Provisioning, RoomChange,
};
use dialtone_domain::mailbox::AudioId;
use dialtone_domain::names::{DomainName, UserAddress};
use dialtone_domain::{ConferenceId, DomainId};
use dialtone_eventlog::blob::SharedBlobStore;
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::auth::{self, Access};
use crate::payload::timestamp;
use crate::pb::conference_service_server::ConferenceService;
use crate::pb::*;
use crate::provisioning::{domain_ref, meta};
use crate::{convert, status};

/// How long `StartRecording` / `StopRecording` wait for the node running
/// the room to act on the request (it does within tens of milliseconds;
/// this bounds a node that is gone or failing).
const RECORDING_WAIT: Duration = Duration::from_secs(10);

/// How long a read waits for the conference index to fold in what the log
/// held when the request came (it follows the log's head within
/// milliseconds; this bounds a stall, after which it answers as it is).
const INDEX_WAIT: Duration = Duration::from_secs(2);

pub struct ConferenceApi {
    provisioning: Provisioning,
    conferences: ConferenceIndex,
    blobs: SharedBlobStore,
}

type RecordingStream = Pin<Box<dyn Stream<Item = Result<RecordingChunk, Status>> + Send + 'static>>;

impl ConferenceApi {
    pub fn new(
        provisioning: Provisioning,
        conferences: ConferenceIndex,
        blobs: SharedBlobStore,
    ) -> Self {
        ConferenceApi {
            provisioning,
            conferences,
            blobs,
        }
    }

    /// Waits until the index covers every event written before now, so
    /// that a conference started (or ended) before the request is seen.
    async fn index_caught_up(&self) {
        let head = self.provisioning.directory().store().head_position();
        if !self.conferences.caught_up(head, INDEX_WAIT).await {
            tracing::warn!(
                head,
                index = self.conferences.position(),
                "conference index behind the log; answering with what it has"
            );
        }
    }

    /// The name of domain `id`, or `None` if it does not exist.
    async fn domain_name(&self, id: DomainId) -> Result<Option<DomainName>, Status> {
        self.provisioning
            .directory()
            .query_domain(id, |r| {
                r.state.exists().then(|| r.state.name.clone()).flatten()
            })
            .await
            .map_err(status::from_actor)
    }

    /// The conference `input` names (its id, or a room's address for the
    /// room's conference in progress), if the caller may see it; with its
    /// room's address.
    async fn resolve(
        &self,
        access: Access,
        input: &str,
    ) -> Result<(ConferenceInfo, UserAddress), Status> {
        let input = input.trim();
        if input.is_empty() {
            return Err(status::invalid(
                "conference",
                "give a conference's id or a room's address (name@domain)",
            ));
        }
        if let Ok(id) = input.parse::<ConferenceId>() {
            let hidden = || Status::not_found(format!("conference {id} not found"));
            let info = self
                .provisioning
                .get_conference(id)
                .await
                .map_err(status::from_actor)?;
            let (Some(domain), Some(room)) =
                (info.conference.domain_id, info.conference.room.clone())
            else {
                return Err(hidden());
            };
            if !access.sees(domain) {
                return Err(hidden());
            }
            let domain = self.domain_name(domain).await?.ok_or_else(hidden)?;
            return Ok((
                info,
                UserAddress {
                    username: room,
                    domain,
                },
            ));
        }
        let address = conference_address(input, access)?;
        self.index_caught_up().await;
        let live = self
            .conferences
            .live_of_room(DomainId::for_name(&address.domain), &address.username)
            .ok_or_else(|| {
                Status::not_found(format!("no conference in progress in room {address}"))
            })?;
        let info = self
            .provisioning
            .get_conference(live.id)
            .await
            .map_err(status::from_actor)?;
        Ok((info, address))
    }

    /// Runs `control` on the conference the request names; the conference
    /// after it.
    async fn control(
        &self,
        access: Access,
        conference: &str,
        request_id: &str,
        control: impl FnOnce(&ConferenceInfo) -> Result<Control, Status>,
    ) -> Result<Response<Conference>, Status> {
        let meta = meta(request_id, None)?;
        let (current, address) = self.resolve(access, conference).await?;
        let control = control(&current)?;
        let after = self
            .provisioning
            .control_conference(&current, control, meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(conference_pb(&after, &address)))
    }

    async fn participant_control(
        &self,
        request: Request<ParticipantRequest>,
        control: fn(dialtone_domain::conference::ParticipantId) -> Control,
    ) -> Result<Response<Conference>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        if req.participant.trim().is_empty() {
            return Err(status::invalid(
                "participant",
                "give a participant's id (or its first characters, or its caller)",
            ));
        }
        self.control(access, &req.conference, &req.request_id, |current| {
            current
                .participant(&req.participant)
                .map(control)
                .map_err(status::from_actor)
        })
        .await
    }

    /// Writes an operator's recording request, then waits for the node
    /// running the room to act on it: the conference after.
    async fn recording_control(
        &self,
        request: Request<ConferenceControlRequest>,
        control: Control,
    ) -> Result<Response<Conference>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let meta = meta(&req.request_id, None)?;
        let (current, address) = self.resolve(access, &req.conference).await?;
        let requested = self
            .provisioning
            .control_conference(&current, control, meta)
            .await
            .map_err(status::from_actor)?;
        let acted = self
            .provisioning
            .await_recording(requested.id, RECORDING_WAIT)
            .await
            .map_err(status::from_actor)?;
        let Some(after) = acted else {
            return Err(Status::deadline_exceeded(format!(
                "no node acted on the recording request of conference {} within {} s \
                 (is the node running its room up?); the request stays pending",
                requested.id,
                RECORDING_WAIT.as_secs()
            )));
        };
        if control == Control::StartRecording
            && after.conference.recording.is_none()
            && after.conference.status == dialtone_domain::conference::Status::Ended
        {
            return Err(Status::failed_precondition(format!(
                "conference {} ended before its recording started",
                after.id
            )));
        }
        Ok(Response::new(conference_pb(&after, &address)))
    }

    async fn conference_control(
        &self,
        request: Request<ConferenceControlRequest>,
        control: Control,
    ) -> Result<Response<Conference>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        self.control(access, &req.conference, &req.request_id, |_| Ok(control))
            .await
    }
}

/// A room's address naming a conference, in a domain the caller may see
/// (the field is `conference`).
fn conference_address(input: &str, access: Access) -> Result<UserAddress, Status> {
    let address = UserAddress::parse(input).map_err(|e| match e {
        dialtone_domain::Error::Invalid { field, reason } => status::invalid(
            "conference",
            format!(
                "'{input}' is neither a conference id nor a room address (name@domain): {field}: {reason}"
            ),
        ),
        other => status::from_domain(other),
    })?;
    access.check_domain(&DomainRef::Name(address.domain.clone()))?;
    Ok(address)
}

/// A conference as the API shows it; `room` is its room's address.
fn conference_pb(info: &ConferenceInfo, room: &UserAddress) -> Conference {
    let c = &info.conference;
    let mut participants: Vec<_> = c.participants.iter().collect();
    participants.sort_by_key(|(id, p)| (p.joined_at, **id));
    Conference {
        conference_id: info.id.to_string(),
        room: room.to_string(),
        started_at: timestamp(c.started_at),
        ended_at: c.ended_at.and_then(timestamp),
        locked: c.locked,
        recording: c.recording.is_some(),
        max_participants: c.max_participants,
        end_with_moderator: c.end_with_moderator,
        muted_on_entry: c.muted_on_entry,
        participants: participants
            .into_iter()
            .map(|(id, p)| ConferenceParticipant {
                participant_id: id.to_string(),
                caller: p.caller.clone(),
                moderator: p.moderator,
                muted: p.muted,
                talking: p.talking,
                joined_at: timestamp(p.joined_at),
            })
            .collect(),
        version: info.version.unwrap_or_default(),
        recordings: c
            .recordings
            .iter()
            .map(|r| ConferenceRecording {
                audio_id: r.audio.to_string(),
                started_at: timestamp(r.started_at),
                duration_ms: r.duration_ms,
            })
            .collect(),
    }
}

fn summary_pb(live: &LiveConference, domain: &DomainName) -> ConferenceSummary {
    ConferenceSummary {
        conference_id: live.id.to_string(),
        room: format!("{}@{domain}", live.room),
        started_at: timestamp(live.started_at),
        participants: u32::try_from(live.participants.len()).unwrap_or(u32::MAX),
        locked: live.locked,
        recording: live.recording,
    }
}

/// A room's `name@domain`, in a domain the caller may manage.
fn room_address(input: &str, access: &Access) -> Result<UserAddress, Status> {
    let address = UserAddress::parse(input.trim()).map_err(|e| match e {
        dialtone_domain::Error::Invalid { field, reason } => status::invalid(
            "address",
            format!("'{input}' is not a room address (name@domain): {field}: {reason}"),
        ),
        other => status::from_domain(other),
    })?;
    access.check_domain(&DomainRef::Name(address.domain.clone()))?;
    Ok(address)
}

/// The request's settings (`pb::RoomChange`) as the use case takes them.
fn room_change(c: Option<crate::pb::RoomChange>) -> RoomChange {
    let c = c.unwrap_or_default();
    RoomChange {
        pin: c.pin,
        moderator_pin: c.moderator_pin,
        max_participants: c.max_participants,
        wait_for_moderator: c.wait_for_moderator,
        end_with_moderator: c.end_with_moderator,
        tones: c.tones,
        record: c.record,
        muted_on_entry: c.muted_on_entry,
    }
}

#[tonic::async_trait]
impl ConferenceService for ConferenceApi {
    async fn create_room(
        &self,
        request: Request<CreateRoomRequest>,
    ) -> Result<Response<ConferenceRoom>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let meta = meta(&req.request_id, req.expected_version)?;
        let address = room_address(&req.address, &access)?;
        let info = self
            .provisioning
            .create_conference_room(&address, room_change(req.settings), meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(convert::conference_room(&info)))
    }

    async fn get_room(
        &self,
        request: Request<GetRoomRequest>,
    ) -> Result<Response<ConferenceRoom>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let address = room_address(&req.address, &access)?;
        let info = self
            .provisioning
            .get_conference_room(&address)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(convert::conference_room(&info)))
    }

    async fn list_rooms(
        &self,
        request: Request<ListRoomsRequest>,
    ) -> Result<Response<ListRoomsResponse>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let domain = domain_ref(&req.domain)?;
        access.check_domain(&domain)?;
        let rooms = self
            .provisioning
            .list_conference_rooms(&domain)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(ListRoomsResponse {
            rooms: rooms.iter().map(convert::conference_room).collect(),
        }))
    }

    async fn update_room(
        &self,
        request: Request<UpdateRoomRequest>,
    ) -> Result<Response<ConferenceRoom>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let meta = meta(&req.request_id, req.expected_version)?;
        let address = room_address(&req.address, &access)?;
        let info = self
            .provisioning
            .update_conference_room(&address, room_change(req.settings), meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(convert::conference_room(&info)))
    }

    async fn delete_room(
        &self,
        request: Request<DeleteRoomRequest>,
    ) -> Result<Response<ConferenceRoom>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let meta = meta(&req.request_id, req.expected_version)?;
        let address = room_address(&req.address, &access)?;
        let info = self
            .provisioning
            .delete_conference_room(&address, meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(convert::conference_room(&info)))
    }

    async fn reset_pin_lockouts(
        &self,
        request: Request<ResetPinLockoutsRequest>,
    ) -> Result<Response<ConferenceRoom>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let meta = meta(&req.request_id, None)?;
        let address = room_address(&req.address, &access)?;
        let caller = Some(req.caller.trim().to_owned()).filter(|c| !c.is_empty());
        let info = self
            .provisioning
            .reset_conference_pin_lockouts(&address, caller, meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(convert::conference_room(&info)))
    }

    async fn list_conferences(
        &self,
        request: Request<ListConferencesRequest>,
    ) -> Result<Response<ListConferencesResponse>, Status> {
        let access = auth::access(&request);
        let input = request.into_inner().domain;
        let input = input.trim();
        self.index_caught_up().await;
        let live = if input.is_empty() {
            match access.domain() {
                None => self.conferences.all(),
                Some(domain) => self.conferences.live_in(domain, None),
            }
        } else if input.contains('@') {
            let address = room_address(input, &access)?;
            self.conferences
                .live_in(DomainId::for_name(&address.domain), Some(&address.username))
        } else {
            let domain = domain_ref(input)?;
            access.check_domain(&domain)?;
            if self.domain_name(domain.id()).await?.is_none() {
                return Err(auth::not_found_domain(&domain));
            }
            self.conferences.live_in(domain.id(), None)
        };
        let mut names: HashMap<DomainId, Option<DomainName>> = HashMap::new();
        let mut conferences = Vec::with_capacity(live.len());
        for conference in &live {
            let domain = match names.entry(conference.domain_id) {
                Entry::Occupied(known) => known.into_mut(),
                Entry::Vacant(new) => new.insert(self.domain_name(conference.domain_id).await?),
            };
            // A conference of a domain deleted since is not listed.
            if let Some(domain) = domain {
                conferences.push(summary_pb(conference, domain));
            }
        }
        Ok(Response::new(ListConferencesResponse { conferences }))
    }

    type GetRecordingAudioStream = RecordingStream;

    async fn get_recording_audio(
        &self,
        request: Request<GetRecordingAudioRequest>,
    ) -> Result<Response<RecordingStream>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let audio =
            AudioId::parse(req.audio_id.trim()).map_err(|e| status::invalid("audio_id", e))?;
        let (info, _) = self.resolve(access, &req.conference).await?;
        let not_found = || {
            Status::not_found(format!(
                "recording {audio} of conference {} not found",
                info.id
            ))
        };
        // Only a stopped recording of this conference: its audio was stored
        // before the stop was written (one in progress has none yet).
        if !info.conference.recordings.iter().any(|r| r.audio == audio) {
            return Err(not_found());
        }
        let bytes = self
            .blobs
            .get(audio.as_str())
            .await
            .map_err(|e| Status::unavailable(format!("blob store unavailable: {e}")))?
            .ok_or_else(not_found)?;
        Ok(Response::new(Box::pin(futures::stream::iter(
            crate::voicemail::chunks(bytes).map(|data| Ok(RecordingChunk { data })),
        ))))
    }

    async fn get_conference(
        &self,
        request: Request<GetConferenceRequest>,
    ) -> Result<Response<Conference>, Status> {
        let access = auth::access(&request);
        let (info, address) = self
            .resolve(access, &request.into_inner().conference)
            .await?;
        Ok(Response::new(conference_pb(&info, &address)))
    }

    async fn mute_participant(
        &self,
        request: Request<ParticipantRequest>,
    ) -> Result<Response<Conference>, Status> {
        self.participant_control(request, Control::Mute).await
    }

    async fn unmute_participant(
        &self,
        request: Request<ParticipantRequest>,
    ) -> Result<Response<Conference>, Status> {
        self.participant_control(request, Control::Unmute).await
    }

    async fn kick_participant(
        &self,
        request: Request<ParticipantRequest>,
    ) -> Result<Response<Conference>, Status> {
        self.participant_control(request, Control::Kick).await
    }

    async fn mute_all(
        &self,
        request: Request<ConferenceControlRequest>,
    ) -> Result<Response<Conference>, Status> {
        self.conference_control(request, Control::MuteAll).await
    }

    async fn kick_all(
        &self,
        request: Request<ConferenceControlRequest>,
    ) -> Result<Response<Conference>, Status> {
        self.conference_control(request, Control::KickAll).await
    }

    async fn lock_conference(
        &self,
        request: Request<ConferenceControlRequest>,
    ) -> Result<Response<Conference>, Status> {
        self.conference_control(request, Control::Lock).await
    }

    async fn unlock_conference(
        &self,
        request: Request<ConferenceControlRequest>,
    ) -> Result<Response<Conference>, Status> {
        self.conference_control(request, Control::Unlock).await
    }

    async fn start_recording(
        &self,
        request: Request<ConferenceControlRequest>,
    ) -> Result<Response<Conference>, Status> {
        self.recording_control(request, Control::StartRecording)
            .await
    }

    async fn stop_recording(
        &self,
        request: Request<ConferenceControlRequest>,
    ) -> Result<Response<Conference>, Status> {
        self.recording_control(request, Control::StopRecording)
            .await
    }
}
