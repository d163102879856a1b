//! The tokio shell around [`MediaSession`]: the crate's only I/O.
//!
//! # What it owns
//! [`MediaRuntime`] (from a [`RuntimeConfig`]) allocates RTP/RTCP port
//! pairs ([`MediaPorts`], RFC 3550 s.11: even and odd) from a range,
//! round-robin, binding being the only check that a pair is free; and
//! starts one task per session ([`MediaRuntime::start`]) that owns the
//! pair's sockets. The task waits on both sockets, its command channel,
//! the runtime's shutdown and a timer at the session's
//! [`MediaSession::next_deadline`]; after each of them it sends what the
//! session has to send and hands its events to the [`MediaHandle`].
//!
//! # It cannot leak
//! A session ends, its RTCP BYE sent, its sockets closed and its ports
//! free again, when its handle is dropped or closed, when the peer times
//! out (after [`SessionEvent::RtpTimeout`] is delivered), when nobody
//! reads its events, and at [`MediaRuntime::shutdown`] or when the last
//! clone of the runtime is dropped. The live count
//! ([`MediaRuntime::live_sessions`], gauge `dialtone_media_sessions_live`)
//! is held by a guard the task drops, which a panic drops too.
//!
//! # What it counts
//! Packets received and sent, packets from foreign sources and RTP
//! timeouts as they happen; and, published by each session about once a
//! second and at its end (`counting`): packets lost (sequence gaps, RFC
//! 3550 A.3), audio too late for a recording's playout, recorded frames
//! and concealed ones, and the lateness of each session's ticks: how long
//! after a [`MediaSession::next_deadline`] the task ran (a histogram in
//! µs, and its maximum). Conference rooms (`crate::room`) take their
//! ports from the runtime and count the same things, and their clock's
//! ticks, under `dialtone_conference_*`. Names and meanings:
//! docs/operations.md.
//!
//! # What it must not do
//! No media logic: latching, pacing, recording and reports are the
//! session's. It reads the clock (the one place the crate does) and
//! passes it in. Per packet it allocates nothing: one receive buffer per
//! socket and one send buffer per session, reused.
pub(crate) mod counting;
mod ports;
mod task;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch, Notify};
use tracing::Instrument as _;

pub use counting::LATENESS_BOUNDS_US;
pub use ports::MediaPorts;

use crate::sdp::NegotiatedAudio;
use crate::session::{
    MediaSession, RecordLimits, Recording, SessionConfig, SessionEvent, SessionStats,
};
use crate::Result;
use counting::{LatenessCounts, Published, RoomMetrics};
use ports::PortAllocator;
use task::{Command, LiveGuard, Metrics, Task};

/// Events waiting for the app: far more than a session makes between two
/// reads by an app that is reading (a digit is two).
const EVENT_CAPACITY: usize = 64;

/// Where the runtime binds and what it advertises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// The address sockets are bound to (e.g. `127.0.0.1`, or `0.0.0.0`
    /// with `advertised` set).
    pub address: IpAddr,
    /// The address SDP gives peers; `address` when `None`.
    pub advertised: Option<IpAddr>,
    /// RTP ports are the even ones, RTCP the odd ones after them.
    pub ports: RangeInclusive<u16>,
    /// See [`SessionConfig::rtp_timeout`].
    pub rtp_timeout: Duration,
}

impl Default for RuntimeConfig {
    /// Loopback, ports 20000-30000, a 30 s RTP timeout.
    fn default() -> Self {
        RuntimeConfig {
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            advertised: None,
            ports: 20_000..=30_000,
            rtp_timeout: Duration::from_secs(30),
        }
    }
}

struct Shared {
    config: RuntimeConfig,
    allocator: PortAllocator,
    live: Arc<AtomicUsize>,
    ended: Arc<Notify>,
    shutdown: watch::Sender<bool>,
    metrics: Metrics,
    /// The conference rooms' counters (`crate::room`).
    rooms: RoomMetrics,
    /// Mixed into each session's random numbers.
    sessions_started: AtomicU64,
}

/// Allocates ports and runs sessions; cheap to clone (one shared state).
#[derive(Clone)]
pub struct MediaRuntime {
    shared: Arc<Shared>,
}

impl MediaRuntime {
    /// Checks the configuration: a port range that starts even and holds
    /// at least one pair, and an address to advertise that a peer can
    /// send to (not `0.0.0.0`).
    pub fn new(config: RuntimeConfig) -> Result<MediaRuntime> {
        let advertised = config.advertised.unwrap_or(config.address);
        if advertised.is_unspecified() {
            return Err(crate::Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "media address {} cannot be advertised in SDP: set the advertised address",
                    config.address
                ),
            )));
        }
        let allocator = PortAllocator::new(config.address, advertised, &config.ports)?;
        let (shutdown, _) = watch::channel(false);
        Ok(MediaRuntime {
            shared: Arc::new(Shared {
                config,
                allocator,
                live: Arc::new(AtomicUsize::new(0)),
                ended: Arc::new(Notify::new()),
                shutdown,
                metrics: Metrics::new(),
                rooms: RoomMetrics::new(),
                sessions_started: AtomicU64::new(0),
            }),
        })
    }

    /// Binds an RTP/RTCP pair from the range: the next pair round-robin
    /// that binds. An error (`AddrInUse`) when none does.
    pub async fn allocate(&self) -> Result<MediaPorts> {
        self.shared.allocator.allocate().await
    }

    /// Starts the session on `ports` with what the offer/answer agreed.
    /// Call it inside a tokio runtime (it spawns the session's task).
    pub fn start(&self, ports: MediaPorts, audio: NegotiatedAudio) -> MediaHandle {
        let shared = &self.shared;
        let guard = LiveGuard::new(
            shared.live.clone(),
            shared.ended.clone(),
            shared.metrics.live.clone(),
        );
        let started = shared.sessions_started.fetch_add(1, Ordering::Relaxed);
        let random = random_u64(started);
        let mut config = SessionConfig::new(
            random as u32,
            (random >> 32) as u16,
            random_u64(!started) as u32,
            format!("{:016x}@dialtone", random_u64(started ^ 0x5555)),
        );
        config.rtp_timeout = shared.config.rtp_timeout;
        config.wall_clock_at_start = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let session = MediaSession::new(config, audio, Instant::now());
        let (commands, command_receiver) = mpsc::unbounded_channel();
        let (event_sender, events) = mpsc::channel(EVENT_CAPACITY);
        let rtp_port = ports.rtp_port;
        let task = Task {
            session,
            rtp: ports.rtp,
            rtcp: ports.rtcp,
            commands: command_receiver,
            events: event_sender,
            shutdown: shared.shutdown.subscribe(),
            metrics: shared.metrics.clone(),
            guard,
            published: Published::default(),
            lateness: LatenessCounts::default(),
        };
        let span = tracing::debug_span!("media_session", rtp_port);
        tokio::spawn(task.run().instrument(span));
        MediaHandle {
            commands,
            events,
            rtp_port,
        }
    }

    /// The counters the runtime's conference rooms add to.
    pub(crate) fn room_metrics(&self) -> &RoomMetrics {
        &self.shared.rooms
    }

    /// Sessions whose task has not ended yet.
    pub fn live_sessions(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// Ends every session, now and any started later, and waits until
    /// their tasks are gone.
    pub async fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        loop {
            let ended = self.shared.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.live_sessions() == 0 {
                return;
            }
            ended.await;
        }
    }
}

/// Random enough for SSRCs, first sequence numbers and timestamps (RFC
/// 3550 s.5.1, s.8: unpredictable, not secret): std's randomly keyed
/// hasher, so that no random-number crate is needed.
pub(crate) fn random_u64(salt: u64) -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(salt);
    hasher.finish()
}

/// The app's side of one session. Dropping it ends the session.
pub struct MediaHandle {
    commands: mpsc::UnboundedSender<Command>,
    events: mpsc::Receiver<SessionEvent>,
    rtp_port: u16,
}

impl MediaHandle {
    /// The session's RTP port.
    pub fn rtp_port(&self) -> u16 {
        self.rtp_port
    }

    fn send(&self, command: Command) {
        // The session ended: there is nothing to command, and
        // `next_event` says so.
        let _ = self.commands.send(command);
    }

    /// Queues audio (8 kHz mono) after what is queued.
    pub fn play(&self, samples: Arc<[i16]>) {
        self.send(Command::Play(samples));
    }

    pub fn stop_playback(&self) {
        self.send(Command::StopPlayback);
    }

    pub fn start_recording(&self, limits: RecordLimits) {
        self.send(Command::StartRecording(limits));
    }

    /// See [`MediaSession::stop_recording`]; `None` also once the session
    /// has ended.
    pub async fn stop_recording(&self) -> Option<Recording> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::StopRecording(reply));
        answer.await.ok().flatten()
    }

    /// A re-INVITE's new agreement.
    pub fn update(&self, audio: NegotiatedAudio) {
        self.send(Command::Update(audio));
    }

    /// The next event; `None` once the session has ended.
    pub async fn next_event(&mut self) -> Option<SessionEvent> {
        self.events.recv().await
    }

    /// `None` once the session has ended.
    pub async fn stats(&self) -> Option<SessionStats> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Stats(reply));
        answer.await.ok()
    }

    /// Ends the session and waits until it is gone: its BYE sent, its
    /// ports free. (Dropping the handle ends it too, without waiting.)
    pub async fn close(self) {
        let MediaHandle {
            commands,
            mut events,
            ..
        } = self;
        drop(commands);
        while events.recv().await.is_some() {}
    }
}
