//! Conferences on this node (issue 18, ADR 0025): calls to a room are
//! mixed by a `dialtone_media` room, each call's conversation is a
//! `dialtone_conference::caller::Caller`, and what happens is recorded on
//! the conference's aggregate.
//!
//! # One task per live room
//! [`Conferences`] is the node's registry of live rooms: room (domain and
//! name) → the room's task. The first call to a room spawns its task,
//! which starts the conference (`Start`, a new `conference-{uuid}`
//! stream) before it takes anyone in, and owns the media room
//! ([`RoomHandle`]) and every call in it. Calls reach it as messages
//! ([`RoomMsg`]); the media room's events (DTMF, talking, RTP timeouts,
//! playbacks) come on its handle. One task decides everything about a
//! room, so joins, the maximum and the lock are checked without races,
//! and a call's events reach the aggregate in the order they happened.
//!
//! # Durable first
//! A join is recorded (`ParticipantJoined`) before the caller is let into
//! the mix and hears the join tone; a recording is in the blob store
//! (fsynced) before `ConferenceRecordingStopped` names its length; the
//! last one out is recorded before the room closes.
//!
//! # Others' commands
//! The API mutes, kicks, locks and records through the aggregate. The
//! node follows the log ([`follow`]) and tells a room's task when another
//! writer changed its conference; the task reads the conference and
//! applies it: a muted participant is muted in the mix (and told), a
//! kicked one hung up on, a recording started or stopped, an ended
//! conference closed. An operator's start or stop of the recording is a
//! request (`ConferenceRecordingRequested`) that this node, running the
//! room and holding its audio, carries out and answers itself: started,
//! or stored then recorded as stopped (durable before the API replies).
//!
//! # It ends
//! The last participant out ends the conference (the aggregate writes
//! `ConferenceEnded`), the room closes and leaves the registry. A node
//! shutdown ends every running conference (`node_restart`: its media is
//! gone) and hangs up its calls; the next start ends those a crash left
//! running ([`end_left_running`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dialtone_actors::{Meta, Provisioning};
use dialtone_conference::caller::{self, Action, Caller, Input, Op, Outcome, PinVerdict, Settings};
use dialtone_conference::prompts::{Prompts, Tone};
use dialtone_domain::conference::{
    self, Command, Conference, EndReason, LeaveReason, ParticipantId, RecordingAction, Start,
    Status,
};
use dialtone_domain::conference_pin::{self, PinCaller};
use dialtone_domain::conference_room::Room;
use dialtone_domain::mailbox::AudioId;
use dialtone_domain::{ConferenceId, DomainId, DomainName, UserName};
use dialtone_eventlog::blob::SharedBlobStore;
use dialtone_eventlog::SharedStore;
use dialtone_media::dtmf::DtmfEvent;
use dialtone_media::mixer::ParticipantId as MediaId;
use dialtone_media::room::{PlayTo, RoomConfig, RoomEvent, RoomHandle, RoomRecordLimits};
use dialtone_media::runtime::MediaRuntime;
use dialtone_media::sdp::{self, Capabilities, Direction, LocalMedia, SessionDescription};
use dialtone_media::wav;
use dialtone_sip::proxy::AppControl;
use dialtone_sip::{AppCall, AppEnd, AppSession, AppStart, BackendError};
use futures::StreamExt as _;
use tokio::sync::{mpsc, oneshot};

/// The application name of a room: `conf.<room name>@<domain name>`.
pub const ROOM: &str = "conf.";

/// At most one `ParticipantTalking` per participant per this long. The
/// mixer's hangover already keeps a voice to one start and one stop per
/// sentence, but each change is an append (fsynced) to the log that calls
/// and registrations share: a noisy line in a room of fifty flapping at
/// the mixer's fastest (one change per 560 ms) would write close to a
/// hundred events a second. A change held back is written when the
/// second is up, if it still holds then.
pub const TALKING_INTERVAL: Duration = Duration::from_secs(1);

/// The longest recording of a room (a recording that reaches it stops,
/// and is stored): four hours, 230 MB of 16-bit samples in memory.
pub const MAX_RECORDING_MS: u32 = 4 * 3600 * 1000;

/// The application of the room `name` of `domain`.
pub fn room_route(domain: &DomainName, name: &UserName) -> String {
    format!("{ROOM}{}@{}", name.as_str(), domain.as_str())
}

type RoomKey = (DomainId, UserName);

/// The node's live rooms, and what their tasks need.
#[derive(Clone)]
pub struct Conferences {
    inner: Arc<Inner>,
}

struct Inner {
    media: MediaRuntime,
    prompts: Arc<Prompts>,
    blobs: SharedBlobStore,
    provisioning: Provisioning,
    rtp_timeout: Duration,
    rooms: Mutex<HashMap<RoomKey, Live>>,
}

/// A live room in the registry.
#[derive(Clone)]
struct Live {
    conference: ConferenceId,
    tx: mpsc::UnboundedSender<RoomMsg>,
    /// Tells apart a room's task from its successor under the same key.
    generation: u64,
}

/// What reaches a room's task.
enum RoomMsg {
    Join {
        offer: Box<SessionDescription>,
        caller: String,
        pin_caller: PinCaller,
        control: AppControl,
        reply: oneshot::Sender<Result<Joined, AppStart>>,
    },
    Confirmed(MediaId),
    Update(MediaId, sdp::NegotiatedAudio),
    Ended(MediaId),
    /// Someone else wrote to the conference: read it and apply it.
    Changed,
    /// The node stops: end the conference.
    Shutdown(oneshot::Sender<()>),
}

struct Joined {
    participant: MediaId,
    answer: Vec<u8>,
    local: LocalMedia,
}

/// The call engine's side of a call in a room.
struct Signals {
    tx: mpsc::UnboundedSender<RoomMsg>,
    participant: MediaId,
    local: LocalMedia,
}

impl AppSession for Signals {
    fn confirmed(&mut self) {
        let _ = self.tx.send(RoomMsg::Confirmed(self.participant));
    }

    fn reoffer(&mut self, offer: &[u8]) -> Result<Vec<u8>, u16> {
        let offer = SessionDescription::parse(offer).map_err(|_| 488u16)?;
        self.local.session_version += 1;
        let answer = sdp::answer(
            &offer,
            &Capabilities::default(),
            &self.local,
            Direction::SendRecv,
        )
        .map_err(|_| 488u16)?;
        let _ = self
            .tx
            .send(RoomMsg::Update(self.participant, answer.audio));
        Ok(answer.sdp.into_bytes())
    }

    fn ended(&mut self, _end: AppEnd) {
        let _ = self.tx.send(RoomMsg::Ended(self.participant));
    }
}

fn refuse(status: u16, reason: impl Into<String>) -> AppStart {
    AppStart::Refuse {
        status,
        reason: reason.into(),
    }
}

impl Conferences {
    pub fn new(
        media: MediaRuntime,
        prompts: Arc<Prompts>,
        blobs: SharedBlobStore,
        provisioning: Provisioning,
        rtp_timeout: Duration,
    ) -> Conferences {
        Conferences {
            inner: Arc::new(Inner {
                media,
                prompts,
                blobs,
                provisioning,
                rtp_timeout,
                rooms: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Whether `app` names a room.
    pub fn serves(app: &str) -> bool {
        app.starts_with(ROOM)
    }

    /// The room `name` of `domain`, if there is one (its domain's actor
    /// is read: rooms are not among the facts the actors publish).
    pub async fn room(
        &self,
        domain: DomainId,
        name: &UserName,
    ) -> Result<Option<Room>, BackendError> {
        let name = name.clone();
        match self
            .inner
            .provisioning
            .directory()
            .query_domain(domain, move |r| {
                r.state.conference_rooms.get(&name).cloned()
            })
            .await
        {
            Ok(room) => Ok(room),
            Err(dialtone_actors::Error::Domain(_)) => Ok(None),
            Err(e) => Err(BackendError::Unavailable(e.to_string())),
        }
    }

    /// Answers `call` to the room `app` names: into the room's media (in
    /// its lobby: hearing only its own prompts until it joins).
    pub async fn start(
        &self,
        app: &str,
        call: AppCall<'_>,
        control: AppControl,
    ) -> Result<AppStart, BackendError> {
        let Some((domain_name, name)) = parse_route(app) else {
            return Ok(refuse(404, "Not Found (no such conference room)"));
        };
        let domain = DomainId::for_name(&domain_name);
        let Some(room) = self.room(domain, &name).await? else {
            return Ok(refuse(404, "Not Found (no such conference room)"));
        };
        if call.offer.is_empty() {
            return Ok(refuse(
                488,
                "Not Acceptable Here (an INVITE without an SDP offer)",
            ));
        }
        let offer = match SessionDescription::parse(call.offer) {
            Ok(offer) => offer,
            Err(e) => return Ok(refuse(488, format!("Not Acceptable Here ({e})"))),
        };
        let caller = caller_of(&call);
        let pin_caller = pin_caller_of(&call);
        // A caller locked out of the room's PIN entry is refused before it
        // costs a media session (and an attacker's redial costs nothing).
        if room.pin.is_some() || room.moderator_pin.is_some() {
            if let Some(until) = self.pin_locked_until(domain, &name, &pin_caller).await? {
                let minutes = (until - dialtone_actors::now_us()).max(0) / 60_000_000 + 1;
                return Ok(refuse(
                    403,
                    format!(
                        "Forbidden (too many wrong PINs for this room: try again in {minutes} min)"
                    ),
                ));
            }
        }
        // The caller's call record names what answered (ADR 0024).
        let answered_by = format!("conference:{}@{}", name.as_str(), domain_name.as_str());
        // A room's task that is ending may drop the message: the next try
        // starts a new one.
        for _ in 0..3 {
            let tx = self.live_room(domain, &name, &room);
            let (reply, joined) = oneshot::channel();
            if tx
                .send(RoomMsg::Join {
                    offer: Box::new(offer.clone()),
                    caller: caller.clone(),
                    pin_caller: pin_caller.clone(),
                    control: control.clone(),
                    reply,
                })
                .is_err()
            {
                continue;
            }
            match joined.await {
                Ok(Ok(joined)) => {
                    return Ok(AppStart::Answer {
                        sdp: joined.answer,
                        session: Box::new(Signals {
                            tx,
                            participant: joined.participant,
                            local: joined.local,
                        }),
                        answered_by,
                    })
                }
                Ok(Err(refusal)) => return Ok(refusal),
                Err(_) => continue,
            }
        }
        Ok(refuse(
            503,
            "Service Unavailable (the conference is ending)",
        ))
    }

    /// Until when `caller` may not enter the PIN of the room `name`, if it
    /// is locked out now.
    async fn pin_locked_until(
        &self,
        domain: DomainId,
        name: &UserName,
        caller: &PinCaller,
    ) -> Result<Option<i64>, BackendError> {
        let name = name.clone();
        let caller = caller.clone();
        let now = dialtone_actors::now_us();
        match self
            .inner
            .provisioning
            .directory()
            .query_domain(domain, move |r| {
                r.state
                    .conference_pin_guards
                    .get(&name)
                    .and_then(|guard| guard.locked_until(&caller, now))
            })
            .await
        {
            Ok(until) => Ok(until),
            Err(dialtone_actors::Error::Domain(_)) => Ok(None),
            Err(e) => Err(BackendError::Unavailable(e.to_string())),
        }
    }

    /// Records a PIN entered in the room (`right` or not) against its
    /// lock-out: what the caller is told.
    async fn check_pin(
        &self,
        domain: DomainId,
        name: &UserName,
        caller: &PinCaller,
        right: bool,
    ) -> PinVerdict {
        let command = dialtone_domain::domain::Command::ConferencePin {
            name: name.clone(),
            command: conference_pin::Command::Entered {
                caller: caller.clone(),
                right,
            },
        };
        let now = dialtone_actors::now_us();
        let query = name.clone();
        let probe = caller.clone();
        let result = self
            .inner
            .provisioning
            .directory()
            .execute_domain(domain, command, Meta::default(), move |r| {
                r.state
                    .conference_pin_guards
                    .get(&query)
                    .and_then(|guard| guard.locked_until(&probe, now))
            })
            .await;
        match result {
            Err(dialtone_actors::Error::Domain(
                dialtone_domain::Error::ConferencePinLockedOut { .. },
            )) => PinVerdict::LockedOut,
            // This wrong PIN locked the caller out.
            Ok(Some(_)) if !right => PinVerdict::LockedOut,
            Ok(_) if right => PinVerdict::Accepted,
            Ok(_) => PinVerdict::Rejected,
            Err(e) => {
                tracing::warn!(error = %e, "conference PIN not checked");
                PinVerdict::Unavailable
            }
        }
    }

    /// The task of the live room, started if there is none.
    fn live_room(
        &self,
        domain: DomainId,
        name: &UserName,
        room: &Room,
    ) -> mpsc::UnboundedSender<RoomMsg> {
        let mut rooms = self.inner.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let key = (domain, name.clone());
        if let Some(live) = rooms.get(&key) {
            if !live.tx.is_closed() {
                return live.tx.clone();
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let generation = rand_u64();
        let conference = ConferenceId(uuid::Uuid::now_v7());
        rooms.insert(
            key.clone(),
            Live {
                conference,
                tx: tx.clone(),
                generation,
            },
        );
        let handle = RoomHandle::start(
            &self.inner.media,
            RoomConfig {
                capabilities: Capabilities::default(),
                rtp_timeout: self.inner.rtp_timeout,
            },
        );
        let task = RoomTask {
            conferences: self.clone(),
            key,
            generation,
            conference,
            settings: Settings::of(room),
            room: room.clone(),
            handle,
            members: HashMap::new(),
            recording: None,
            started: false,
            ended: false,
        };
        let span = tracing::debug_span!("conference", room = %name.as_str(), %conference);
        tokio::spawn(tracing::Instrument::instrument(task.run(rx), span));
        tx
    }

    /// The room task of a conference, if it is live here.
    fn of_conference(&self, id: ConferenceId) -> Option<mpsc::UnboundedSender<RoomMsg>> {
        let rooms = self.inner.rooms.lock().unwrap_or_else(|p| p.into_inner());
        rooms
            .values()
            .find(|live| live.conference == id)
            .map(|live| live.tx.clone())
    }

    /// Ends every running conference (the node stops): each recorded as
    /// ended, its calls hung up, its room closed.
    pub async fn shutdown(&self) {
        let rooms: Vec<mpsc::UnboundedSender<RoomMsg>> = {
            let rooms = self.inner.rooms.lock().unwrap_or_else(|p| p.into_inner());
            rooms.values().map(|live| live.tx.clone()).collect()
        };
        for tx in rooms {
            let (done, wait) = oneshot::channel();
            if tx.send(RoomMsg::Shutdown(done)).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
            }
        }
    }

    /// Follows the log from its head: a conference event of a room live
    /// here, written by anyone, makes its task read and apply the
    /// conference (its own writes are applied already, and reading again
    /// changes nothing). Only conferences' events are read, and not their
    /// talking events (the room wrote them and they change nothing it
    /// applies).
    pub fn follow(&self, store: SharedStore) {
        let conferences = self.clone();
        tokio::spawn(async move {
            let mut next = store.head_position() + 1;
            loop {
                let mut events = std::pin::pin!(dialtone_eventlog::subscribe_all_where(
                    store.clone(),
                    next,
                    |e| e.stream.starts_with(ConferenceId::STREAM_PREFIX)
                        && e.event_type != "ParticipantTalking"
                ));
                while let Some(item) = events.next().await {
                    let recorded = match item {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(error = %e, "conferences: reading the log failed, retrying");
                            break;
                        }
                    };
                    next = recorded.position + 1;
                    let Some(id) = ConferenceId::from_stream(&recorded.stream) else {
                        continue;
                    };
                    if let Some(tx) = conferences.of_conference(id) {
                        let _ = tx.send(RoomMsg::Changed);
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}

/// Ends the conferences a previous run of the node left running (a crash,
/// a `kill -9`: no shutdown ended them), as `node_restart`: their media
/// died with that run. Run at start-up, before calls are taken, so that no
/// conference of this run is among them. Returns how many it ended (one
/// that cannot be ended is logged and stays listed until the next start).
pub async fn end_left_running(
    conferences: &dialtone_actors::ConferenceIndex,
    provisioning: &Provisioning,
) -> usize {
    let mut ended = 0;
    // The index has read the whole log: what it holds live is exactly what
    // the last run left running (a cost of the conferences live, not of
    // every conference ever held).
    for live in conferences.all() {
        let result = provisioning
            .directory()
            .execute_conference(
                live.id,
                Command::End {
                    reason: EndReason::NodeRestart,
                },
                Meta::default(),
                |_| (),
            )
            .await;
        match result {
            Ok(()) => ended += 1,
            Err(e) => {
                tracing::warn!(conference = %live.id, error = %e, "conference left running not ended")
            }
        }
    }
    if ended > 0 {
        tracing::info!(ended, "ended the conferences the last run left running");
    }
    ended
}

fn rand_u64() -> u64 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    u64::from_be_bytes(bytes[..8].try_into().unwrap_or([0; 8]))
}

/// `conf.<room name>@<domain name>` → the domain and the room's name.
fn parse_route(app: &str) -> Option<(DomainName, UserName)> {
    let rest = app.strip_prefix(ROOM)?;
    let (name, domain) = rest.rsplit_once('@')?;
    Some((DomainName::parse(domain).ok()?, UserName::parse(name).ok()?))
}

/// `user@host` of the caller, from the authenticated caller or the From
/// URI.
fn caller_of(call: &AppCall<'_>) -> String {
    if let Some((user, domain)) = call.caller {
        return format!("{user}@{domain}");
    }
    let uri = call.from.trim();
    let uri = uri
        .strip_prefix("sips:")
        .or_else(|| uri.strip_prefix("sip:"))
        .unwrap_or(uri);
    let end = uri.find([';', '?', '>']).unwrap_or(uri.len());
    uri[..end]
        .chars()
        .filter(|c| !c.is_control())
        .take(conference::MAX_CALLER_LEN)
        .collect()
}

/// Who enters a PIN, for the room's lock-out: the authenticated user, or
/// the source IP address (not the port: a redial may come from another;
/// not the From header, which the caller writes).
fn pin_caller_of(call: &AppCall<'_>) -> PinCaller {
    match call.caller {
        Some((user, domain)) => PinCaller {
            key: format!("{user}@{domain}"),
            authenticated: true,
        },
        None => PinCaller {
            key: call.source.ip().to_canonical().to_string(),
            authenticated: false,
        },
    }
}

/// One call in a room.
struct Member {
    id: ParticipantId,
    caller: String,
    pin_caller: PinCaller,
    app: Caller,
    control: AppControl,
    /// In the conference (its join recorded, its leave not yet).
    joined: bool,
    /// Muted in the mix (as the aggregate says, once joined).
    muted: bool,
    playing: bool,
    /// Reports still to come of playbacks it stopped (see the voicemail
    /// driver: a stopped playback is reported done too).
    stopped_playbacks: u32,
    timer: Option<(Instant, u32)>,
    talk: TalkLimiter,
}

/// Talking as written to the aggregate and as the mixer says it is now.
#[derive(Debug, Default)]
struct TalkLimiter {
    written: bool,
    now: bool,
    written_at: Option<Instant>,
}

impl TalkLimiter {
    /// Whether the change (if any) may be written at `at`.
    fn due(&self, at: Instant) -> bool {
        self.now != self.written
            && self
                .written_at
                .is_none_or(|w| at.duration_since(w) >= TALKING_INTERVAL)
    }
}

struct RoomTask {
    conferences: Conferences,
    key: RoomKey,
    generation: u64,
    conference: ConferenceId,
    settings: Settings,
    room: Room,
    handle: RoomHandle,
    members: HashMap<MediaId, Member>,
    /// The recording in progress and its audio id.
    recording: Option<AudioId>,
    started: bool,
    ended: bool,
}

/// Why a command on the conference failed.
enum Failed {
    Refused(conference::Refusal),
    Other(String),
}

impl RoomTask {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<RoomMsg>) {
        let mut talk_clock = tokio::time::interval(Duration::from_millis(250));
        let mut shutdown: Option<oneshot::Sender<()>> = None;
        loop {
            let timer = self
                .members
                .iter()
                .filter_map(|(pid, m)| m.timer.map(|(at, id)| (at, *pid, id)))
                .min_by_key(|(at, ..)| *at);
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(RoomMsg::Shutdown(done)) => {
                        shutdown = Some(done);
                        self.end(EndReason::NodeRestart).await;
                    }
                    Some(msg) => self.on_msg(msg).await,
                    None => break,
                },
                event = self.handle.next_event() => match event {
                    Some(event) => self.on_room(event).await,
                    None => {
                        // The media room died: nothing can be heard.
                        self.end(EndReason::Requested).await;
                    }
                },
                _ = sleep_until(timer.map(|(at, ..)| at)) => {
                    if let Some((_, pid, id)) = timer {
                        if let Some(member) = self.members.get_mut(&pid) {
                            member.timer = None;
                        }
                        self.feed(pid, Input::Timeout(id)).await;
                    }
                }
                _ = talk_clock.tick() => self.flush_talking().await,
            }
            if self.ended || (self.started && self.members.is_empty()) {
                break;
            }
        }
        self.close(&mut rx).await;
        if let Some(done) = shutdown {
            let _ = done.send(());
        }
    }

    /// Leaves the registry, refuses what is still queued, ends the
    /// conference if it is running, closes the room.
    async fn close(mut self, rx: &mut mpsc::UnboundedReceiver<RoomMsg>) {
        {
            let mut rooms = self
                .conferences
                .inner
                .rooms
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if rooms
                .get(&self.key)
                .is_some_and(|live| live.generation == self.generation)
            {
                rooms.remove(&self.key);
            }
        }
        rx.close();
        // Joins that came too late are dropped (their callers start a new
        // room); a call that ended meanwhile is gone already.
        while let Ok(msg) = rx.try_recv() {
            if let RoomMsg::Shutdown(done) = msg {
                let _ = done.send(());
            }
        }
        if self.started && !self.ended {
            self.end(EndReason::Empty).await;
        }
        for member in self.members.values() {
            member.control.hang_up();
        }
        self.handle.close().await;
    }

    /// Runs a command on the conference: its state after.
    async fn execute(&self, command: Command) -> Result<Conference, Failed> {
        let result = self
            .conferences
            .inner
            .provisioning
            .directory()
            .execute_conference(self.conference, command.clone(), Meta::default(), |r| {
                r.state.clone()
            })
            .await;
        match result {
            Ok(state) => Ok(state),
            Err(dialtone_actors::Error::Domain(e)) => {
                // The actors map a refusal to the domain's error kinds;
                // the state tells which refusal it was.
                let state = self.state().await;
                Err(match (state, &command) {
                    (Some(s), _) if s.status == Status::Ended => {
                        Failed::Refused(conference::Refusal::Ended)
                    }
                    (Some(s), Command::Join { moderator, .. }) if s.locked && !moderator => {
                        Failed::Refused(conference::Refusal::Locked)
                    }
                    (Some(s), Command::Join { .. })
                        if s.participants.len() >= s.max_participants as usize =>
                    {
                        Failed::Refused(conference::Refusal::Full {
                            max: s.max_participants,
                        })
                    }
                    _ => Failed::Other(e.to_string()),
                })
            }
            Err(e) => Err(Failed::Other(e.to_string())),
        }
    }

    async fn state(&self) -> Option<Conference> {
        self.conferences
            .inner
            .provisioning
            .directory()
            .query_conference(self.conference, |r| r.state.clone())
            .await
            .ok()
    }

    /// Starts the conference (before the first caller is let in).
    async fn start(&mut self) -> bool {
        if self.started {
            return true;
        }
        let (domain_id, room) = self.key.clone();
        match self
            .execute(Command::Start(Start {
                domain_id,
                room,
                max_participants: self.room.max_participants,
                end_with_moderator: self.room.end_with_moderator,
                muted_on_entry: self.room.muted_on_entry,
            }))
            .await
        {
            Ok(_) => {
                self.started = true;
                true
            }
            Err(Failed::Refused(r)) => {
                tracing::warn!(refusal = %r, "conference not started");
                false
            }
            Err(Failed::Other(e)) => {
                tracing::warn!(error = %e, "conference not started");
                false
            }
        }
    }

    async fn on_msg(&mut self, msg: RoomMsg) {
        match msg {
            RoomMsg::Join {
                offer,
                caller,
                pin_caller,
                control,
                reply,
            } => {
                if !self.start().await {
                    let _ = reply.send(Err(refuse(503, "Service Unavailable (conference)")));
                    self.ended = self.members.is_empty();
                    return;
                }
                // In the lobby until its join is recorded.
                let joined = match self.handle.join_lobby(&offer).await {
                    Ok(joined) => joined,
                    Err(dialtone_media::Error::NoCommonCodec(e)) => {
                        let _ = reply.send(Err(refuse(488, format!("Not Acceptable Here ({e})"))));
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "no media for a conference call");
                        let _ = reply
                            .send(Err(refuse(503, "Service Unavailable (no media port free)")));
                        return;
                    }
                };
                let pid = joined.participant;
                let member = Member {
                    id: ParticipantId(uuid::Uuid::now_v7()),
                    caller,
                    pin_caller,
                    app: Caller::new(self.settings.clone()),
                    control,
                    joined: false,
                    muted: true,
                    playing: false,
                    stopped_playbacks: 0,
                    timer: None,
                    talk: TalkLimiter::default(),
                };
                if reply
                    .send(Ok(Joined {
                        participant: pid,
                        answer: joined.answer.sdp.into_bytes(),
                        local: joined.local,
                    }))
                    .is_err()
                {
                    self.handle.leave(pid);
                    return;
                }
                self.members.insert(pid, member);
            }
            RoomMsg::Confirmed(pid) => self.feed(pid, Input::Answered).await,
            RoomMsg::Update(pid, audio) => self.handle.update(pid, audio),
            RoomMsg::Ended(pid) => self.gone(pid, LeaveReason::HungUp).await,
            RoomMsg::Changed => self.apply().await,
            RoomMsg::Shutdown(done) => {
                let _ = done.send(());
            }
        }
    }

    async fn on_room(&mut self, event: RoomEvent) {
        match event {
            RoomEvent::Dtmf {
                participant,
                event: DtmfEvent::Began { digit },
            } => self.feed(participant, Input::Dtmf(digit)).await,
            RoomEvent::Dtmf { .. } => {}
            RoomEvent::PlaybackDone(PlayTo::Participant(pid)) => {
                let Some(member) = self.members.get_mut(&pid) else {
                    return;
                };
                if member.stopped_playbacks > 0 {
                    member.stopped_playbacks -= 1;
                    return;
                }
                member.playing = false;
                self.feed(pid, Input::PlaybackDone).await;
            }
            RoomEvent::PlaybackDone(PlayTo::All) => {}
            RoomEvent::Talking {
                participant,
                talking,
            } => {
                if let Some(member) = self.members.get_mut(&participant) {
                    member.talk.now = talking;
                }
                self.flush_talking().await;
            }
            RoomEvent::RtpTimeout { participant } => {
                if let Some(member) = self.members.get(&participant) {
                    // The call ends with the media, recorded as a timeout
                    // (ADR 0024).
                    member.control.media_timed_out();
                }
                self.gone(participant, LeaveReason::RtpTimeout).await;
            }
            RoomEvent::RecordingDone(recording) => {
                if let Some(audio) = self.recording.take() {
                    self.store_recording(audio, recording.samples).await;
                }
            }
        }
    }

    /// Writes the talking changes that are due.
    async fn flush_talking(&mut self) {
        let now = Instant::now();
        let due: Vec<(MediaId, ParticipantId, bool)> = self
            .members
            .iter()
            .filter(|(_, m)| m.joined && m.talk.due(now))
            .map(|(pid, m)| (*pid, m.id, m.talk.now))
            .collect();
        for (pid, id, on) in due {
            if let Some(member) = self.members.get_mut(&pid) {
                member.talk.written = on;
                member.talk.written_at = Some(now);
            }
            if let Err(Failed::Other(e)) = self
                .execute(Command::Talking {
                    participant: id,
                    on,
                })
                .await
            {
                tracing::debug!(error = %e, "talking not recorded");
            }
        }
    }

    /// A call left the room (hung up, or its RTP stopped).
    async fn gone(&mut self, pid: MediaId, reason: LeaveReason) {
        let Some(member) = self.members.remove(&pid) else {
            return;
        };
        self.handle.leave(pid);
        if !member.joined {
            return;
        }
        let last = !self.members.values().any(|m| m.joined);
        if last {
            // Stored before the aggregate stops the recording by itself.
            self.stop_recording().await;
        }
        match self
            .execute(Command::Leave {
                participant: member.id,
                reason,
            })
            .await
        {
            Ok(state) => {
                if state.status == Status::Ended {
                    self.ended = true;
                    for other in self.members.values() {
                        other.control.hang_up();
                    }
                } else if self.settings.tones && member.app.is_in_room() {
                    self.handle
                        .play(PlayTo::All, self.conferences.inner.prompts.tone(Tone::Left));
                }
                self.sync(&state).await;
            }
            Err(Failed::Refused(_)) => {}
            Err(Failed::Other(e)) => tracing::warn!(error = %e, "leave not recorded"),
        }
    }

    /// Feeds `input` to the call, and executes what it asks.
    async fn feed(&mut self, pid: MediaId, input: Input) {
        let mut queue = std::collections::VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            let Some(member) = self.members.get_mut(&pid) else {
                return;
            };
            for action in member.app.on(input) {
                if let Some(next) = self.execute_action(pid, action).await {
                    queue.push_back(next);
                }
            }
        }
    }

    async fn execute_action(&mut self, pid: MediaId, action: Action) -> Option<Input> {
        let prompts = Arc::clone(&self.conferences.inner.prompts);
        match action {
            Action::Play(list) => {
                for prompt in list {
                    self.handle
                        .play(PlayTo::Participant(pid), prompts.get(prompt));
                }
                self.member(pid)?.playing = true;
                None
            }
            Action::PlayTone(tone) => {
                self.handle
                    .play(PlayTo::Participant(pid), prompts.tone(tone));
                self.member(pid)?.playing = true;
                None
            }
            Action::PlayToRoom(tone) => {
                self.handle.play(PlayTo::All, prompts.tone(tone));
                None
            }
            Action::StopPlayback => {
                self.handle.stop_playback(PlayTo::Participant(pid));
                let member = self.member(pid)?;
                if member.playing {
                    member.stopped_playbacks += 1;
                }
                member.playing = false;
                None
            }
            Action::StartTimer { id, duration_ms } => {
                self.member(pid)?.timer = Some((
                    Instant::now() + Duration::from_millis(u64::from(duration_ms)),
                    id,
                ));
                None
            }
            Action::HangUp => {
                let member = self.members.remove(&pid)?;
                member.control.hang_up();
                self.handle.leave(pid);
                None
            }
            Action::Join { moderator } => Some(self.join(pid, moderator).await),
            Action::EnterRoom => {
                let muted = self.member(pid)?.muted;
                self.handle.set_muted(pid, muted);
                self.handle.set_hearing(pid, true);
                None
            }
            Action::TurnAway(reason) => {
                let member = self.members.get(&pid)?;
                let command = Command::TurnAway {
                    participant: member.id,
                    caller: member.caller.clone(),
                    reason,
                };
                if let Err(Failed::Other(e)) = self.execute(command).await {
                    tracing::warn!(error = %e, "turning away not recorded");
                }
                None
            }
            Action::Moderate(op) => Some(Input::Moderated(self.moderate(pid, op).await)),
            Action::CheckPin { right } => {
                let caller = self.members.get(&pid)?.pin_caller.clone();
                let (domain, name) = &self.key;
                let verdict = self
                    .conferences
                    .check_pin(*domain, name, &caller, right)
                    .await;
                Some(Input::PinChecked(verdict))
            }
        }
    }

    fn member(&mut self, pid: MediaId) -> Option<&mut Member> {
        self.members.get_mut(&pid)
    }

    /// Records the join: the answer the call is fed.
    async fn join(&mut self, pid: MediaId, moderator: bool) -> Input {
        let Some(member) = self.members.get(&pid) else {
            return Input::Refused(caller::Refusal::Unavailable);
        };
        let command = Command::Join {
            participant: member.id,
            caller: member.caller.clone(),
            moderator,
        };
        let id = member.id;
        match self.execute(command).await {
            Ok(state) => {
                let muted = state.participants.get(&id).is_some_and(|p| p.muted);
                if let Some(member) = self.members.get_mut(&pid) {
                    member.joined = true;
                    member.muted = muted;
                }
                let moderator_present = state.moderators() > 0;
                if moderator {
                    // Those waiting for a moderator come in.
                    let waiting: Vec<MediaId> = self
                        .members
                        .iter()
                        .filter(|(other, m)| **other != pid && m.app.is_waiting())
                        .map(|(other, _)| *other)
                        .collect();
                    for other in waiting {
                        Box::pin(self.feed(other, Input::ModeratorArrived)).await;
                    }
                }
                if self.room.record && self.recording.is_none() && state.recording.is_none() {
                    self.start_recording().await;
                }
                Input::Joined {
                    moderator,
                    muted,
                    moderator_present,
                }
            }
            Err(Failed::Refused(conference::Refusal::Full { .. })) => {
                Input::Refused(caller::Refusal::Full)
            }
            Err(Failed::Refused(conference::Refusal::Locked)) => {
                Input::Refused(caller::Refusal::Locked)
            }
            Err(Failed::Refused(r)) => {
                tracing::warn!(refusal = %r, "join refused");
                Input::Refused(caller::Refusal::Unavailable)
            }
            Err(Failed::Other(e)) => {
                tracing::warn!(error = %e, "join not recorded");
                Input::Refused(caller::Refusal::Unavailable)
            }
        }
    }

    /// A key pressed in the room: the outcome, `None` if it failed.
    async fn moderate(&mut self, pid: MediaId, op: Op) -> Option<Outcome> {
        let member = self.members.get(&pid)?;
        let id = member.id;
        let outcome = match op {
            Op::ToggleMuteSelf => {
                let (command, outcome) = if member.muted {
                    (Command::Unmute { participant: id }, Outcome::Unmuted)
                } else {
                    (Command::Mute { participant: id }, Outcome::Muted)
                };
                let state = self.execute(command).await.ok()?;
                // Applied here and not told again by `sync`.
                let muted = state.participants.get(&id).is_some_and(|p| p.muted);
                self.member(pid)?.muted = muted;
                self.handle.set_muted(pid, muted);
                self.sync(&state).await;
                outcome
            }
            Op::ToggleLock => {
                let locked = self.state().await?.locked;
                let (command, outcome) = if locked {
                    (Command::Unlock, Outcome::Unlocked)
                } else {
                    (Command::Lock, Outcome::Locked)
                };
                self.execute(command).await.ok()?;
                outcome
            }
            Op::ToggleRecording => {
                if self.recording.is_some() {
                    self.stop_recording()
                        .await
                        .then_some(Outcome::RecordingStopped)?
                } else {
                    self.start_recording()
                        .await
                        .then_some(Outcome::RecordingStarted)?
                }
            }
            Op::MuteAll => {
                let state = self.execute(Command::MuteAll).await.ok()?;
                self.sync(&state).await;
                Outcome::AllMuted
            }
        };
        Some(outcome)
    }

    /// Starts recording the room's mix under a fresh audio id, recorded
    /// on the conference first.
    async fn start_recording(&mut self) -> bool {
        let audio = AudioId::from_random(*uuid::Uuid::new_v4().as_bytes());
        if self
            .execute(Command::StartRecording {
                audio: audio.clone(),
            })
            .await
            .is_err()
        {
            return false;
        }
        self.handle.start_recording(RoomRecordLimits {
            max_duration_ms: MAX_RECORDING_MS,
        });
        self.recording = Some(audio);
        true
    }

    /// Stops the recording in progress: stored, then recorded as stopped.
    async fn stop_recording(&mut self) -> bool {
        let Some(audio) = self.recording.take() else {
            return false;
        };
        let samples = self
            .handle
            .stop_recording()
            .await
            .map(|r| r.samples)
            .unwrap_or_default();
        self.store_recording(audio, samples).await
    }

    /// Writes the recording as a WAV file (durable when the blob store
    /// returns), then `StopRecording` with its length.
    async fn store_recording(&mut self, audio: AudioId, samples: Vec<i16>) -> bool {
        let duration_ms =
            u32::try_from(samples.len() as u64 * 1000 / u64::from(wav::SAMPLE_RATE_HZ))
                .unwrap_or(u32::MAX);
        let mut file = Vec::with_capacity(44 + samples.len() * 2);
        wav::write_wav(&samples, &mut file);
        if let Err(e) = self
            .conferences
            .inner
            .blobs
            .put(audio.as_str(), Bytes::from(file))
            .await
        {
            tracing::warn!(%audio, error = %e, "conference recording not stored");
            return false;
        }
        match self.execute(Command::StopRecording { duration_ms }).await {
            Ok(_) | Err(Failed::Refused(_)) => true,
            Err(Failed::Other(e)) => {
                tracing::warn!(%audio, error = %e, "recording stop not recorded");
                false
            }
        }
    }

    /// Reads the conference and applies what others changed.
    async fn apply(&mut self) {
        if let Some(state) = self.state().await {
            self.sync(&state).await;
        }
    }

    /// Makes the room what the conference says: mutes, kicks, recording,
    /// the end.
    async fn sync(&mut self, state: &Conference) {
        if state.status == Status::Ended {
            if let Some(audio) = self.recording.take() {
                let samples = self
                    .handle
                    .stop_recording()
                    .await
                    .map(|r| r.samples)
                    .unwrap_or_default();
                self.store_blob(&audio, samples).await;
            }
            self.ended = true;
            for member in self.members.values() {
                member.control.hang_up();
            }
            return;
        }
        let mut kicked = Vec::new();
        let mut told = Vec::new();
        for (pid, member) in &mut self.members {
            if !member.joined {
                continue;
            }
            match state.participants.get(&member.id) {
                None => kicked.push(*pid),
                Some(p) if p.muted != member.muted => {
                    member.muted = p.muted;
                    if member.app.is_in_room() {
                        self.handle.set_muted(*pid, p.muted);
                    }
                    told.push((*pid, p.muted));
                }
                Some(_) => {}
            }
        }
        for pid in kicked {
            if let Some(member) = self.members.remove(&pid) {
                member.control.hang_up();
                self.handle.leave(pid);
            }
        }
        for (pid, muted) in told {
            Box::pin(self.feed(pid, Input::MutedByOthers(muted))).await;
        }
        match (&state.recording, &self.recording) {
            (Some(r), None) => {
                // Started by someone else: the audio id is theirs.
                self.handle.start_recording(RoomRecordLimits {
                    max_duration_ms: MAX_RECORDING_MS,
                });
                self.recording = Some(r.audio.clone());
            }
            (None, Some(_)) => {
                // Stopped by someone else: stored now, under its id.
                if let Some(audio) = self.recording.take() {
                    let samples = self
                        .handle
                        .stop_recording()
                        .await
                        .map(|r| r.samples)
                        .unwrap_or_default();
                    self.store_blob(&audio, samples).await;
                }
            }
            _ => {}
        }
        // An operator's request (the API): this node runs the room, so it
        // acts, and its `ConferenceRecordingStarted` / `...Stopped` (the
        // latter after the audio is stored) answers the request.
        let failed = match state.recording_requested {
            Some(RecordingAction::Start) if self.recording.is_none() => {
                (!self.start_recording().await).then_some("requested recording not started")
            }
            Some(RecordingAction::Stop) if self.recording.is_some() => {
                (!self.stop_recording().await).then_some("requested recording stop not recorded")
            }
            _ => None,
        };
        if let Some(failed) = failed {
            tracing::warn!("{failed}");
        }
    }

    async fn store_blob(&self, audio: &AudioId, samples: Vec<i16>) {
        let mut file = Vec::with_capacity(44 + samples.len() * 2);
        wav::write_wav(&samples, &mut file);
        if let Err(e) = self
            .conferences
            .inner
            .blobs
            .put(audio.as_str(), Bytes::from(file))
            .await
        {
            tracing::warn!(%audio, error = %e, "conference recording not stored");
        }
    }

    /// Ends the conference now (the node stops, the media died).
    async fn end(&mut self, reason: EndReason) {
        if self.started && !self.ended {
            self.stop_recording().await;
            if let Err(Failed::Other(e)) = self.execute(Command::End { reason }).await {
                tracing::warn!(error = %e, "conference end not recorded");
            }
        }
        self.ended = true;
        for member in self.members.values() {
            member.control.hang_up();
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_route_names_its_domain_and_room() {
        let domain = DomainName::parse("example.com").unwrap();
        let name = UserName::parse("standup").unwrap();
        let route = room_route(&domain, &name);
        assert_eq!(route, "conf.standup@example.com");
        assert!(Conferences::serves(&route));
        assert_eq!(parse_route(&route), Some((domain, name)));
        assert_eq!(parse_route("conf.standup"), None);
        assert_eq!(parse_route("vm-own.x"), None);
    }

    #[test]
    fn talking_is_written_at_most_once_a_second() {
        let start = Instant::now();
        let mut talk = TalkLimiter::default();
        assert!(!talk.due(start));
        talk.now = true;
        assert!(talk.due(start));
        talk.written = true;
        talk.written_at = Some(start);
        talk.now = false;
        assert!(!talk.due(start + Duration::from_millis(999)));
        assert!(talk.due(start + Duration::from_millis(1000)));
        // A change that flipped back meanwhile is nothing to write.
        talk.now = true;
        assert!(!talk.due(start + Duration::from_secs(5)));
    }
}
