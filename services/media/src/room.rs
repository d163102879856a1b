//! The tokio shell around a conference room: one task per room owning its
//! [`Mixer`], its participants' [`MediaSession`]s and sockets, and a
//! 20 ms clock.
//!
//! # What it owns
//! [`RoomHandle::start`] spawns the room's task; through the handle an app
//! [`RoomHandle::join`]s a participant from its SDP offer (ports from the
//! [`MediaRuntime`], the answer by [`sdp::answer`]), makes it leave, mutes
//! it, plays prompts or tones to one participant or to all
//! ([`PlayTo`]), records the room's mix ([`RoomRecording`]), and reads
//! [`RoomEvent`]s: each participant's DTMF, talking and not talking, and
//! RTP timeout.
//!
//! # One clock, no wake-up per packet
//! Every 20 ms the task wakes once, and for each participant reads every
//! datagram waiting on its sockets (non-blocking, until none is left)
//! into its session (latching, statistics, DTMF, the jitter buffer: the
//! same code as a voicemail call's), takes at most one frame from its
//! jitter buffer into the mixer, mixes, and sends each participant its
//! frame, then the RTCP reports due. Its sockets are not registered with
//! tokio's reactor: a room of 200 costs one timer wake-up per 20 ms, not
//! 10 000 socket wake-ups per second. A packet waits at most one tick in
//! the kernel's buffer before it is read, which the jitter buffer's 60 ms
//! absorbs (and DTMF is reported up to 20 ms later than a lone session
//! would).
//!
//! # Late ticks
//! The clock is a tokio interval with [`MissedTickBehavior::Burst`]: a
//! tick that comes late (a busy scheduler) is followed at once by the
//! ones it missed, so a hiccup of a frame or two loses no audio, the
//! participants' jitter buffers (which keep wall time) stay in step with
//! the mix, and each peer gets a short burst its own jitter buffer
//! absorbs. Later than [`MAX_BURST_FRAMES`] frames, a burst would be more
//! than a phone's buffer takes, so those frames are skipped instead: the
//! interval is reset, each input drops the frames of the gap, and each
//! output's RTP timestamps jump over it with the marker bit (as the
//! [`crate::pacer::Pacer`] does for prompts). Each tick's lateness (the
//! time between its due instant and its start) is measured
//! ([`RoomStats`]). Each room ticks at its own random phase of the frame,
//! so that many rooms do not all wake at once.
//!
//! # What it counts
//! Besides [`RoomStats`] (one room's, for its app and tests), every room
//! adds to the runtime's `dialtone_conference_*` metrics, counted in plain
//! integers in between: every 5 ticks its ticks' lateness (a histogram in
//! µs), late ticks and skipped frames, RTP received and sent (and sends
//! dropped); once a second and when one leaves, its participants' lost
//! and late packets and concealed and mixed frames; everything at its
//! end. And the gauges of live rooms and participants. Names and
//! meanings: docs/operations.md.
//!
//! # It cannot leak
//! The room ends, every participant's RTCP BYE sent and every socket
//! closed, when its handle is dropped or closed. A participant that sends
//! nothing for the RTP timeout is removed ([`RoomEvent::RtpTimeout`]).
//!
//! # What it must not do
//! No mixing logic (the [`Mixer`]'s), no RTP logic (the sessions'), no
//! SIP and no storage: a recording leaves it as samples.
use std::collections::VecDeque;
use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;
use tracing::Instrument as _;

use crate::dtmf::DtmfEvent;
use crate::g711::Law;
use crate::mixer::{Mixer, ParticipantId, Talk, FRAME_SAMPLES};
use crate::runtime::counting::{LiveRoom, Published, RoomCounts, PUBLISH_INTERVAL};
use crate::runtime::{random_u64, MediaRuntime};
use crate::sdp::{self, Answer, Capabilities, Codec, Direction, LocalMedia, NegotiatedAudio};
use crate::session::{MediaSession, Packet, Received, SessionConfig, SessionEvent, SessionStats};
use crate::{Error, Result};

/// The room's frame: 20 ms.
pub const FRAME: Duration = Duration::from_millis(20);

/// A tick this late or later is not caught up by a burst; its missed
/// frames are skipped. Three frames, as the pacer's burst: a phone's
/// jitter buffer (typically 40-100 ms) takes a burst of 60 ms.
pub const MAX_BURST_FRAMES: u32 = 3;

/// A tick later than this counts as late in [`RoomStats::late_ticks`]:
/// issue 18's bound on the clock's jitter (p99 under 5 ms).
pub const LATE_TICK: Duration = Duration::from_millis(5);

/// A room adds its ticks and RTP to the runtime's counters every this
/// many ticks (100 ms): a counter read every second is then off by at
/// most a tenth of a second's traffic, close enough to compare the rate
/// sent with participants x 50/s; a dozen atomic additions per room every
/// 100 ms cost nothing. Its participants' loss and concealment are added
/// once a second ([`PUBLISH_INTERVAL`]).
const PUBLISH_TICKS: u32 = 5;

/// Events waiting for the app: a room of 200 talking at once makes 200
/// talk events in one tick; more than that between two reads means the
/// app has stopped reading.
const EVENT_CAPACITY: usize = 1024;

/// Larger than any datagram a phone sends (1500-byte MTU).
const DATAGRAM_CAPACITY: usize = 2048;

/// What a room is set up with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomConfig {
    /// What the room takes in participants' offers (G.711 µ-law and A-law
    /// at 20 ms, telephone-event, by default).
    pub capabilities: Capabilities,
    /// No RTP from a participant for this long removes it
    /// ([`RoomEvent::RtpTimeout`]); zero: never.
    pub rtp_timeout: Duration,
}

impl Default for RoomConfig {
    /// The default capabilities and a 30 s RTP timeout.
    fn default() -> Self {
        RoomConfig {
            capabilities: Capabilities::default(),
            rtp_timeout: Duration::from_secs(30),
        }
    }
}

/// Who hears a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlayTo {
    /// This participant alone, over what it hears of the room; not in the
    /// recording.
    Participant(ParticipantId),
    /// Everyone, as a voice of the room (join and leave tones); in the
    /// recording.
    All,
}

/// Limits of a room's recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomRecordLimits {
    /// The recording ends by itself after this much audio (at least one
    /// frame).
    pub max_duration_ms: u32,
}

/// Why a room's recording ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomRecordingEnd {
    MaxDuration,
    /// [`RoomHandle::stop_recording`].
    Stopped,
}

/// A room's recording: its mix, 8 kHz mono, in real time (a frame skipped
/// by a late clock is silence in it). Write it with
/// [`crate::wav::write_wav`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRecording {
    pub samples: Vec<i16>,
    pub end: RoomRecordingEnd,
}

impl RoomRecording {
    pub fn duration_ms(&self) -> u32 {
        u32::try_from(self.samples.len() as u64 * 1000 / u64::from(Codec::CLOCK_RATE_HZ))
            .unwrap_or(u32::MAX)
    }
}

/// What the room tells its app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    Dtmf {
        participant: ParticipantId,
        event: DtmfEvent,
    },
    /// Talk detection (see [`crate::mixer`]): started (`true`) or stopped.
    Talking {
        participant: ParticipantId,
        talking: bool,
    },
    /// Everything queued for them has played (or was stopped).
    PlaybackDone(PlayTo),
    /// The participant sent nothing for the RTP timeout and has been
    /// removed from the room.
    RtpTimeout { participant: ParticipantId },
    /// The recording reached its maximum duration.
    RecordingDone(RoomRecording),
}

/// The room's clock and traffic since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoomStats {
    pub participants: usize,
    /// Frames mixed.
    pub ticks: u64,
    /// Frames left out because a tick came [`MAX_BURST_FRAMES`] or more
    /// late.
    pub skipped_frames: u64,
    /// Ticks later than [`LATE_TICK`].
    pub late_ticks: u64,
    pub max_lateness_us: u64,
    /// Ticks by lateness: bucket n counts those late by n to n+1 ms, the
    /// last one those late by 20 ms or more.
    pub lateness_ms_histogram: [u64; 21],
    pub rtp_sent: u64,
    /// Datagrams the socket would not take at once: dropped, as the
    /// room's clock does not wait.
    pub send_dropped: u64,
}

impl RoomStats {
    /// The lateness (ms, to the bucket's upper bound) that `percentile`
    /// (0-100) of ticks were within; 0 before the first tick.
    pub fn lateness_percentile_ms(&self, percentile: f64) -> u32 {
        let total: u64 = self.lateness_ms_histogram.iter().sum();
        if total == 0 {
            return 0;
        }
        let wanted = (total as f64 * percentile.clamp(0.0, 100.0) / 100.0).ceil() as u64;
        let mut seen = 0;
        for (bucket, count) in self.lateness_ms_histogram.iter().enumerate() {
            seen += count;
            if seen >= wanted {
                return bucket as u32 + 1;
            }
        }
        self.lateness_ms_histogram.len() as u32
    }
}

/// A participant that joined: its id in the room, the SDP answer for its
/// offer, and what a re-INVITE's answer needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub participant: ParticipantId,
    pub answer: Answer,
    pub local: LocalMedia,
}

enum Command {
    Join {
        member: Box<Member>,
        reply: oneshot::Sender<ParticipantId>,
    },
    Leave(ParticipantId),
    Mute(ParticipantId, bool),
    Hear(ParticipantId, bool),
    Update(ParticipantId, NegotiatedAudio),
    Play(PlayTo, Arc<[i16]>),
    StopPlayback(PlayTo),
    StartRecording(RoomRecordLimits),
    StopRecording(oneshot::Sender<Option<RoomRecording>>),
    Stats(oneshot::Sender<RoomStats>),
    ParticipantStats(ParticipantId, oneshot::Sender<Option<SessionStats>>),
}

/// The app's side of a room. Dropping it ends the room.
pub struct RoomHandle {
    commands: mpsc::UnboundedSender<Command>,
    events: mpsc::Receiver<RoomEvent>,
    runtime: MediaRuntime,
    config: RoomConfig,
}

impl RoomHandle {
    /// Starts an empty room whose participants take their ports from
    /// `runtime`. Call it inside a tokio runtime (it spawns the room's
    /// task).
    pub fn start(runtime: &MediaRuntime, config: RoomConfig) -> RoomHandle {
        let (commands, command_receiver) = mpsc::unbounded_channel();
        let (event_sender, events) = mpsc::channel(EVENT_CAPACITY);
        let task = RoomTask {
            mixer: Mixer::new(),
            members: Vec::new(),
            room_prompts: Prompts::default(),
            recording: None,
            events: event_sender,
            stats: RoomStats::default(),
            receive_buffer: vec![0; DATAGRAM_CAPACITY],
            out: Vec::with_capacity(DATAGRAM_CAPACITY),
            prompt_frame: [0; FRAME_SAMPLES],
            app_gone: false,
            live: runtime.room_metrics().live_room(),
            counts: RoomCounts::default(),
            next_publish: Instant::now() + PUBLISH_INTERVAL,
            ticks_unpublished: 0,
        };
        let span = tracing::debug_span!("media_room");
        tokio::spawn(task.run(command_receiver).instrument(span));
        RoomHandle {
            commands,
            events,
            runtime: runtime.clone(),
            config,
        }
    }

    fn send(&self, command: Command) {
        // The room ended: there is nothing to command, and `next_event`
        // says so.
        let _ = self.commands.send(command);
    }

    /// Takes a participant in from its SDP offer: binds its ports, answers
    /// (an [`Error::NoCommonCodec`] the SIP side turns into a 488), and
    /// adds it to the mix, heard by everyone. [`Error::RoomEnded`] if the
    /// room has ended, an I/O error if no port pair is free.
    pub async fn join(&self, offer: &sdp::SessionDescription) -> Result<Joined> {
        self.join_as(offer, false).await
    }

    /// [`RoomHandle::join`] into the room's lobby: from its first frame
    /// the participant neither hears the room nor is heard (muted), until
    /// [`RoomHandle::set_hearing`] and [`RoomHandle::set_muted`] let it in.
    /// A caller entering a PIN must not hear a frame of the meeting.
    pub async fn join_lobby(&self, offer: &sdp::SessionDescription) -> Result<Joined> {
        self.join_as(offer, true).await
    }

    async fn join_as(&self, offer: &sdp::SessionDescription, lobby: bool) -> Result<Joined> {
        let ports = self.runtime.allocate().await?;
        // The o= line's session id: random, below 2^63 (RFC 4566 s.5.2
        // wants it to fit NTP-format numbers).
        let session_id = random_u64(u64::from(ports.rtp_port)) >> 1;
        let local = ports.local_media(session_id, 1);
        let answer = sdp::answer(
            offer,
            &self.config.capabilities,
            &local,
            Direction::SendRecv,
        )?;
        let (rtp, rtcp) = ports.into_std()?;
        let random = random_u64(session_id);
        let mut config = SessionConfig::new(
            random as u32,
            (random >> 32) as u16,
            random_u64(!random) as u32,
            format!("{:016x}@dialtone", random_u64(random ^ 0x5555)),
        );
        config.rtp_timeout = self.config.rtp_timeout;
        config.wall_clock_at_start = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let mut session = MediaSession::new(config, answer.audio, Instant::now());
        session.start_mixing();
        let member = Box::new(Member {
            // Set by the room when it adds the participant.
            id: None,
            lobby,
            law: law_of(answer.audio.codec),
            session,
            rtp,
            rtcp,
            prompts: Prompts::default(),
            published: Published::default(),
        });
        let (reply, joined) = oneshot::channel();
        self.send(Command::Join { member, reply });
        let participant = joined.await.map_err(|_| Error::RoomEnded)?;
        Ok(Joined {
            participant,
            answer,
            local,
        })
    }

    /// Takes the participant out: its BYE sent, its ports free.
    pub fn leave(&self, participant: ParticipantId) {
        self.send(Command::Leave(participant));
    }

    /// A muted participant is heard by no one (and not recorded); it
    /// still hears the room, and its talk detection still runs.
    pub fn set_muted(&self, participant: ParticipantId, muted: bool) {
        self.send(Command::Mute(participant, muted));
    }

    /// Whether the participant hears the room (it does from its join):
    /// one that does not hears only what is played to it alone
    /// ([`PlayTo::Participant`]), as a caller entering a PIN or waiting
    /// for a moderator in the room's lobby.
    pub fn set_hearing(&self, participant: ParticipantId, hears: bool) {
        self.send(Command::Hear(participant, hears));
    }

    /// A re-INVITE's new agreement for a participant (hold, a new
    /// address).
    pub fn update(&self, participant: ParticipantId, audio: NegotiatedAudio) {
        self.send(Command::Update(participant, audio));
    }

    /// Queues audio (8 kHz mono) for `to` after what is queued for it.
    pub fn play(&self, to: PlayTo, samples: Arc<[i16]>) {
        self.send(Command::Play(to, samples));
    }

    pub fn stop_playback(&self, to: PlayTo) {
        self.send(Command::StopPlayback(to));
    }

    /// Starts recording the room's mix; a recording in progress is
    /// dropped.
    pub fn start_recording(&self, limits: RoomRecordLimits) {
        self.send(Command::StartRecording(limits));
    }

    /// Ends the recording in progress and returns it (`None` if there is
    /// none, or the room has ended).
    pub async fn stop_recording(&self) -> Option<RoomRecording> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::StopRecording(reply));
        answer.await.ok().flatten()
    }

    /// `None` once the room has ended.
    pub async fn stats(&self) -> Option<RoomStats> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Stats(reply));
        answer.await.ok()
    }

    /// A participant's session counters; `None` if it is not in the room.
    pub async fn participant_stats(&self, participant: ParticipantId) -> Option<SessionStats> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::ParticipantStats(participant, reply));
        answer.await.ok().flatten()
    }

    /// The next event; `None` once the room has ended.
    pub async fn next_event(&mut self) -> Option<RoomEvent> {
        self.events.recv().await
    }

    /// Ends the room and waits until it is gone: every BYE sent, every
    /// port free.
    pub async fn close(self) {
        let RoomHandle {
            commands,
            mut events,
            ..
        } = self;
        drop(commands);
        while events.recv().await.is_some() {}
    }
}

fn law_of(codec: Codec) -> Law {
    match codec {
        Codec::Pcmu => Law::Mu,
        Codec::Pcma => Law::A,
    }
}

/// Prompts queued for one listener (or the room), taken a frame a tick.
#[derive(Default)]
struct Prompts {
    queue: VecDeque<Arc<[i16]>>,
    /// How far into the first buffer playback is.
    offset: usize,
}

impl Prompts {
    /// The next frame into `frame` (the last one padded with silence):
    /// `None` if nothing is queued, else whether the queue ran dry.
    fn next_frame(&mut self, frame: &mut [i16; FRAME_SAMPLES]) -> Option<bool> {
        if self.queue.is_empty() {
            return None;
        }
        let mut filled = 0;
        while filled < FRAME_SAMPLES {
            let Some(front) = self.queue.front() else {
                break;
            };
            let rest = front.get(self.offset..).unwrap_or_default();
            let taken = rest.len().min(FRAME_SAMPLES - filled);
            frame[filled..filled + taken].copy_from_slice(&rest[..taken]);
            filled += taken;
            self.offset += taken;
            if self.offset >= front.len() {
                self.queue.pop_front();
                self.offset = 0;
            }
        }
        frame[filled..].fill(0);
        Some(self.queue.is_empty())
    }

    /// Drops what is queued; whether anything was.
    fn clear(&mut self) -> bool {
        self.offset = 0;
        let was_playing = !self.queue.is_empty();
        self.queue.clear();
        was_playing
    }
}

/// One participant: its session, sockets and prompts.
struct Member {
    /// `None` until the room adds it to the mixer.
    id: Option<ParticipantId>,
    /// Added neither hearing nor heard.
    lobby: bool,
    law: Law,
    session: MediaSession,
    rtp: UdpSocket,
    rtcp: UdpSocket,
    prompts: Prompts,
    /// What the runtime's counters carry of its session's stats.
    published: Published,
}

struct RoomRecorder {
    samples: Vec<i16>,
    max_samples: usize,
}

/// Recording buffers grow as a meeting goes on; reserving the whole
/// maximum (hours) up front would hold memory a short meeting never uses.
/// One minute is reserved, the rest grows by doubling.
const RECORDING_RESERVE_SAMPLES: usize = 60 * 8000;

struct RoomTask {
    /// The room in the runtime's gauges, and its counters. First, as
    /// fields drop in order: the gauges count the room out before its
    /// event channel closes, which [`RoomHandle::close`] waits for.
    live: LiveRoom,
    mixer: Mixer,
    members: Vec<Member>,
    room_prompts: Prompts,
    recording: Option<RoomRecorder>,
    events: mpsc::Sender<RoomEvent>,
    stats: RoomStats,
    receive_buffer: Vec<u8>,
    out: Vec<u8>,
    prompt_frame: [i16; FRAME_SAMPLES],
    app_gone: bool,
    /// Ticks and packets since the last publication.
    counts: RoomCounts,
    /// When the participants' news is next added.
    next_publish: Instant,
    /// Ticks since the room's counts were last added.
    ticks_unpublished: u32,
}

impl RoomTask {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        // Rooms tick at random phases of the 20 ms frame: rooms started
        // together (a node's restart, a load test) would otherwise all
        // wake at the same instant, and the last one run would be late by
        // the work of all the others.
        let phase_us = random_u64(self.receive_buffer.as_ptr() as u64) % FRAME.as_micros() as u64;
        let start = tokio::time::Instant::now() + FRAME + Duration::from_micros(phase_us);
        let mut clock = tokio::time::interval_at(start, FRAME);
        // See the module documentation: catch up short delays, skip long
        // ones by hand.
        clock.set_missed_tick_behavior(MissedTickBehavior::Burst);
        loop {
            tokio::select! {
                biased;
                command = commands.recv() => {
                    let Some(command) = command else { break };
                    self.on_command(command);
                }
                due = clock.tick() => {
                    let now = tokio::time::Instant::now();
                    let lateness = now.saturating_duration_since(due);
                    let skipped = frames_to_skip(lateness);
                    if skipped > 0 {
                        clock.reset();
                    }
                    self.measure(lateness, skipped);
                    // The sessions see the tick's due instant, not the
                    // wall clock: packets read at a tick arrive then, and
                    // the jitter buffers' frames fall due on the grid, so
                    // a tick's few hundred µs of lateness never makes a
                    // frame miss its tick. A skip starts a new grid at now.
                    let tick_time = if skipped > 0 { now } else { due };
                    self.tick(tick_time.into_std(), skipped);
                }
            }
            if self.app_gone {
                break;
            }
        }
        tracing::debug!(stats = ?self.stats, "media room ended");
        let ids: Vec<ParticipantId> = self.members.iter().filter_map(|m| m.id).collect();
        for id in ids {
            self.remove(id);
        }
        self.live.metrics().publish(&mut self.counts);
    }

    /// Adds each participant's news to the runtime's metrics.
    fn publish_participants(&mut self) {
        let metrics = self.live.metrics();
        for member in &mut self.members {
            metrics.publish_participant(&member.session.stats(), &mut member.published);
        }
    }

    fn measure(&mut self, lateness: Duration, skipped: u32) {
        let stats = &mut self.stats;
        stats.ticks += 1;
        stats.skipped_frames += u64::from(skipped);
        let lateness_us = u64::try_from(lateness.as_micros()).unwrap_or(u64::MAX);
        stats.max_lateness_us = stats.max_lateness_us.max(lateness_us);
        // In whole µs, as the metrics' histogram buckets count it.
        let late = lateness_us > LATE_TICK.as_micros() as u64;
        if late {
            stats.late_ticks += 1;
        }
        let last = stats.lateness_ms_histogram.len() - 1;
        let bucket = usize::try_from(lateness_us / 1000).map_or(last, |ms| ms.min(last));
        if let Some(count) = stats.lateness_ms_histogram.get_mut(bucket) {
            *count += 1;
        }
        self.counts.tick(lateness, late, skipped);
    }

    fn emit(&mut self, event: RoomEvent) {
        emit_to(&self.events, &mut self.app_gone, event);
    }

    fn member_mut(&mut self, id: ParticipantId) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.id == Some(id))
    }

    fn on_command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Join { mut member, reply } => {
                let id = self.mixer.add(member.law);
                if member.lobby {
                    self.mixer.set_hears(id, false);
                    self.mixer.set_heard(id, false);
                }
                member.id = Some(id);
                self.members.push(*member);
                self.stats.participants = self.members.len();
                self.live.set_participants(self.members.len());
                if reply.send(id).is_err() {
                    // The app stopped waiting: nobody knows the participant.
                    self.remove(id);
                }
            }
            Command::Leave(id) => self.remove(id),
            Command::Mute(id, muted) => {
                self.mixer.set_heard(id, !muted);
            }
            Command::Hear(id, hears) => {
                self.mixer.set_hears(id, hears);
            }
            Command::Update(id, audio) => {
                if let Some(member) = self.member_mut(id) {
                    member.session.update(audio, now);
                }
            }
            Command::Play(PlayTo::All, samples) => self.room_prompts.queue.push_back(samples),
            Command::Play(PlayTo::Participant(id), samples) => {
                if let Some(member) = self.member_mut(id) {
                    member.prompts.queue.push_back(samples);
                }
            }
            Command::StopPlayback(to) => {
                let was_playing = match to {
                    PlayTo::All => self.room_prompts.clear(),
                    PlayTo::Participant(id) => self
                        .member_mut(id)
                        .is_some_and(|member| member.prompts.clear()),
                };
                if was_playing {
                    self.emit(RoomEvent::PlaybackDone(to));
                }
            }
            Command::StartRecording(limits) => {
                let max_samples =
                    (u64::from(limits.max_duration_ms) * u64::from(Codec::CLOCK_RATE_HZ) / 1000)
                        .max(FRAME_SAMPLES as u64);
                let max_samples = usize::try_from(max_samples).unwrap_or(usize::MAX);
                self.recording = Some(RoomRecorder {
                    samples: Vec::with_capacity(max_samples.min(RECORDING_RESERVE_SAMPLES)),
                    max_samples,
                });
            }
            Command::StopRecording(reply) => {
                let recording = self.recording.take().map(|recorder| RoomRecording {
                    samples: recorder.samples,
                    end: RoomRecordingEnd::Stopped,
                });
                let _ = reply.send(recording);
            }
            Command::Stats(reply) => {
                let _ = reply.send(self.stats);
            }
            Command::ParticipantStats(id, reply) => {
                let stats = self.member_mut(id).map(|member| member.session.stats());
                let _ = reply.send(stats);
            }
        }
    }

    /// Takes a participant out of the room: its BYE sent, its sockets
    /// closed.
    fn remove(&mut self, id: ParticipantId) {
        let Some(index) = self.members.iter().position(|m| m.id == Some(id)) else {
            return;
        };
        let mut member = self.members.swap_remove(index);
        self.mixer.remove(id);
        self.stats.participants = self.members.len();
        self.live.set_participants(self.members.len());
        self.live
            .metrics()
            .publish_participant(&member.session.stats(), &mut member.published);
        if let Some(to) = member.session.close(&mut self.out) {
            if let Err(error) = member.rtcp.send_to(&self.out, to) {
                tracing::debug!(%error, %to, "RTCP BYE not sent");
            }
        }
        self.forward_talk();
    }

    /// Hands the mixer's talk transitions to the app.
    fn forward_talk(&mut self) {
        while let Some(talk) = self.mixer.poll_talk() {
            let (participant, talking) = match talk {
                Talk::Started(id) => (id, true),
                Talk::Stopped(id) => (id, false),
            };
            self.emit(RoomEvent::Talking {
                participant,
                talking,
            });
        }
    }

    /// One frame of the room: receive, mix, send; `skipped` frames before
    /// it were left out by a late clock.
    fn tick(&mut self, now: Instant, skipped: u32) {
        let mut done: Vec<PlayTo> = Vec::new();
        let mut timed_out: Vec<ParticipantId> = Vec::new();
        for member in &mut self.members {
            let Some(id) = member.id else { continue };
            receive(member, &mut self.receive_buffer, now, &mut self.counts);
            // The gap's frames are dropped: the mix jumps over it too.
            for _ in 0..skipped {
                if member.session.mix_frame(now).is_none() {
                    break;
                }
            }
            if let Some(frame) = member.session.mix_frame(now) {
                self.mixer.push_frame(id, frame);
            }
            if let Some(ran_dry) = member.prompts.next_frame(&mut self.prompt_frame) {
                self.mixer.push_private(id, &self.prompt_frame);
                if ran_dry {
                    done.push(PlayTo::Participant(id));
                }
            }
        }
        if let Some(ran_dry) = self.room_prompts.next_frame(&mut self.prompt_frame) {
            self.mixer.push_room(&self.prompt_frame);
            if ran_dry {
                done.push(PlayTo::All);
            }
        }
        self.mixer.tick();
        self.record(skipped);
        for member in &mut self.members {
            let Some(id) = member.id else { continue };
            let payload = self.mixer.output(id).unwrap_or_default();
            if let Some(to) = member
                .session
                .send_frame(payload, skipped, now, &mut self.out)
            {
                match member.rtp.send_to(&self.out, to) {
                    Ok(_) => {
                        self.stats.rtp_sent += 1;
                        self.counts.rtp_sent += 1;
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        self.stats.send_dropped += 1;
                        self.counts.send_dropped += 1;
                    }
                    Err(error) => tracing::debug!(%error, %to, "RTP send failed"),
                }
            }
            while let Some((to, kind)) = member.session.poll_transmit(now, &mut self.out) {
                let socket = match kind {
                    Packet::Rtp => &member.rtp,
                    Packet::Rtcp => &member.rtcp,
                };
                match socket.send_to(&self.out, to) {
                    Ok(_) if kind == Packet::Rtp => self.counts.rtp_sent += 1,
                    Ok(_) => {}
                    Err(error) => tracing::debug!(%error, %to, ?kind, "send failed"),
                }
            }
            while let Some(event) = member.session.poll_event(now) {
                match event {
                    SessionEvent::Dtmf(event) => emit_to(
                        &self.events,
                        &mut self.app_gone,
                        RoomEvent::Dtmf {
                            participant: id,
                            event,
                        },
                    ),
                    SessionEvent::RtpTimeout => timed_out.push(id),
                    // Prompts go through the mixer and recordings are the
                    // room's: a member's session makes neither event.
                    SessionEvent::PlaybackDone | SessionEvent::RecordingDone(_) => {}
                }
            }
        }
        for to in done {
            self.emit(RoomEvent::PlaybackDone(to));
        }
        self.forward_talk();
        for participant in timed_out {
            self.remove(participant);
            self.emit(RoomEvent::RtpTimeout { participant });
        }
        self.ticks_unpublished += 1;
        if self.ticks_unpublished >= PUBLISH_TICKS {
            self.live.metrics().publish(&mut self.counts);
            self.ticks_unpublished = 0;
        }
        if now >= self.next_publish {
            self.publish_participants();
            self.next_publish = now + PUBLISH_INTERVAL;
        }
    }

    /// Appends the tick's mix (after silence for skipped frames) to the
    /// recording; ends it at its maximum.
    fn record(&mut self, skipped: u32) {
        let Some(recorder) = self.recording.as_mut() else {
            return;
        };
        let gap = (skipped as usize).saturating_mul(FRAME_SAMPLES);
        let room = recorder.max_samples.saturating_sub(recorder.samples.len());
        let silence = gap.min(room);
        recorder.samples.resize(recorder.samples.len() + silence, 0);
        let room = recorder.max_samples.saturating_sub(recorder.samples.len());
        let mix = self.mixer.mix();
        let taken = mix.get(..room.min(mix.len())).unwrap_or_default();
        recorder.samples.extend_from_slice(taken);
        if recorder.samples.len() >= recorder.max_samples {
            if let Some(recorder) = self.recording.take() {
                self.emit(RoomEvent::RecordingDone(RoomRecording {
                    samples: recorder.samples,
                    end: RoomRecordingEnd::MaxDuration,
                }));
            }
        }
    }
}

/// The frames a tick late by `lateness` skips: none while the burst
/// that follows catches it up, all the whole frames of its lateness from
/// [`MAX_BURST_FRAMES`] on.
fn frames_to_skip(lateness: Duration) -> u32 {
    if lateness < FRAME * MAX_BURST_FRAMES {
        return 0;
    }
    u32::try_from(lateness.as_nanos() / FRAME.as_nanos()).unwrap_or(u32::MAX)
}

/// Reads every datagram waiting on a member's sockets into its session,
/// and counts them.
fn receive(member: &mut Member, buffer: &mut [u8], now: Instant, counts: &mut RoomCounts) {
    loop {
        match member.rtp.recv_from(buffer) {
            Ok((len, from)) => {
                let bytes = buffer.get(..len).unwrap_or_default();
                match member.session.on_rtp(from, bytes, now) {
                    Received::Audio | Received::Dtmf | Received::ComfortNoise => {
                        counts.rtp_received += 1;
                    }
                    Received::Foreign => counts.rtp_foreign += 1,
                    Received::UnknownPayload | Received::Malformed | Received::Closed => {}
                }
            }
            // Nothing left (WouldBlock), or an ICMP error of an earlier
            // send surfacing on some systems: not a reason to leave; the
            // next tick reads again.
            Err(error) => {
                if error.kind() != std::io::ErrorKind::WouldBlock {
                    tracing::debug!(%error, "RTP receive failed");
                }
                break;
            }
        }
    }
    while let Ok((len, from)) = member.rtcp.recv_from(buffer) {
        let bytes = buffer.get(..len).unwrap_or_default();
        member.session.on_rtcp(from, bytes, now);
    }
}

/// Hands an event to the app; a closed channel means the app is gone.
fn emit_to(events: &mpsc::Sender<RoomEvent>, app_gone: &mut bool, event: RoomEvent) {
    match events.try_send(event) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Closed(_)) => *app_gone = true,
        // The room's clock does not wait for a slow app.
        Err(mpsc::error::TrySendError::Full(event)) => {
            tracing::warn!(?event, "room event dropped: the app is not reading events");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn short_delays_are_caught_up_and_long_ones_skipped() {
        assert_eq!(frames_to_skip(Duration::ZERO), 0);
        assert_eq!(frames_to_skip(59 * MS), 0);
        assert_eq!(frames_to_skip(60 * MS), 3);
        assert_eq!(frames_to_skip(119 * MS), 5);
        assert_eq!(frames_to_skip(Duration::from_secs(2)), 100);
    }

    #[test]
    fn lateness_percentiles_come_from_the_histogram() {
        let mut stats = RoomStats::default();
        assert_eq!(stats.lateness_percentile_ms(99.0), 0);
        stats.lateness_ms_histogram[0] = 98;
        stats.lateness_ms_histogram[3] = 1;
        stats.lateness_ms_histogram[20] = 1;
        assert_eq!(stats.lateness_percentile_ms(50.0), 1);
        assert_eq!(stats.lateness_percentile_ms(99.0), 4);
        assert_eq!(stats.lateness_percentile_ms(100.0), 21);
    }

    #[test]
    fn prompts_are_taken_a_frame_at_a_time_across_buffers() {
        let mut prompts = Prompts::default();
        let mut frame = [7; FRAME_SAMPLES];
        assert_eq!(prompts.next_frame(&mut frame), None);
        prompts.queue.push_back(Arc::from(vec![1; 100]));
        prompts.queue.push_back(Arc::from(vec![2; 100]));
        assert_eq!(prompts.next_frame(&mut frame), Some(false));
        assert!(frame[..100].iter().all(|&s| s == 1));
        assert!(frame[100..].iter().all(|&s| s == 2));
        // The last 40 samples, padded with silence; the queue ran dry.
        assert_eq!(prompts.next_frame(&mut frame), Some(true));
        assert!(frame[..40].iter().all(|&s| s == 2));
        assert!(frame[40..].iter().all(|&s| s == 0));
        assert!(!prompts.clear());
    }
}
