//! The task of one session: its two sockets, its commands, its timer.
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::counting::{HealthMetrics, LatenessCounts, Published, PUBLISH_INTERVAL};
use crate::sdp::NegotiatedAudio;
use crate::session::{
    MediaSession, Packet, Received, RecordLimits, Recording, SessionEvent, SessionStats,
};

/// Larger than any datagram a phone sends us (1500-byte MTU), so that
/// nothing is cut.
const DATAGRAM_CAPACITY: usize = 2048;
/// When nothing is due, the timer still fires this often: a session never
/// waits on a timer that cannot fire.
const IDLE_WAKE: Duration = Duration::from_secs(3600);

pub(super) enum Command {
    Play(Arc<[i16]>),
    StopPlayback,
    StartRecording(RecordLimits),
    StopRecording(oneshot::Sender<Option<Recording>>),
    Update(NegotiatedAudio),
    Stats(oneshot::Sender<SessionStats>),
}

/// The metric handles, made once per runtime.
#[derive(Clone)]
pub(super) struct Metrics {
    pub(super) live: Gauge,
    pub(super) received: Counter,
    pub(super) sent: Counter,
    pub(super) foreign: Counter,
    pub(super) timeouts: Counter,
    pub(super) health: HealthMetrics,
}

impl Metrics {
    pub(super) fn new() -> Self {
        Metrics {
            live: metrics::gauge!("dialtone_media_sessions_live"),
            received: metrics::counter!("dialtone_media_rtp_packets_received_total"),
            sent: metrics::counter!("dialtone_media_rtp_packets_sent_total"),
            foreign: metrics::counter!("dialtone_media_foreign_packets_total"),
            timeouts: metrics::counter!("dialtone_media_rtp_timeouts_total"),
            health: HealthMetrics::new(),
        }
    }
}

/// Counts a live session from its start until it is dropped: by the end
/// of its task, or by the unwinding of a panic in it, so the count is
/// right either way.
pub(super) struct LiveGuard {
    live: Arc<std::sync::atomic::AtomicUsize>,
    ended: Arc<Notify>,
    gauge: Gauge,
}

impl LiveGuard {
    pub(super) fn new(
        live: Arc<std::sync::atomic::AtomicUsize>,
        ended: Arc<Notify>,
        gauge: Gauge,
    ) -> Self {
        let count = live.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        gauge.set(count as f64);
        LiveGuard { live, ended, gauge }
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let count = self.live.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) - 1;
        self.gauge.set(count as f64);
        self.ended.notify_waiters();
    }
}

pub(super) struct Task {
    pub(super) session: MediaSession,
    pub(super) rtp: UdpSocket,
    pub(super) rtcp: UdpSocket,
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
    pub(super) events: mpsc::Sender<SessionEvent>,
    pub(super) shutdown: watch::Receiver<bool>,
    pub(super) metrics: Metrics,
    pub(super) guard: LiveGuard,
    /// What the health counters already carry of this session's stats.
    pub(super) published: Published,
    /// The lateness of this session's ticks since the last publication.
    pub(super) lateness: LatenessCounts,
}

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The handle was dropped or closed.
    Closed,
    Shutdown,
    RtpTimeout,
    /// Nobody reads the events any more.
    AppGone,
}

impl Task {
    pub(super) async fn run(mut self) {
        let end = self.run_loop().await;
        self.publish();
        tracing::debug!(?end, stats = ?self.session.stats(), "media session ended");
        let mut out = Vec::new();
        if let Some(to) = self.session.close(&mut out) {
            if let Err(error) = self.rtcp.send_to(&out, to).await {
                tracing::debug!(%error, %to, "RTCP BYE not sent");
            }
        }
        // Sockets and the live count before the event channel, so that
        // the pair is free and the session no longer counted by the time
        // the handle sees the channel close (`MediaHandle::close`).
        let Task {
            rtp,
            rtcp,
            events,
            guard,
            ..
        } = self;
        drop((rtp, rtcp));
        drop(guard);
        drop(events);
    }

    async fn run_loop(&mut self) -> End {
        if *self.shutdown.borrow() {
            return End::Shutdown;
        }
        let mut rtp_buffer = vec![0u8; DATAGRAM_CAPACITY];
        let mut rtcp_buffer = vec![0u8; DATAGRAM_CAPACITY];
        let mut out = Vec::with_capacity(DATAGRAM_CAPACITY);
        let sleep = tokio::time::sleep(IDLE_WAKE);
        tokio::pin!(sleep);
        // The last deadline whose lateness was counted: a deadline that
        // several wakes find passed is counted once.
        let mut measured = None;
        let mut next_publish = Instant::now() + PUBLISH_INTERVAL;
        loop {
            let deadline = self
                .session
                .next_deadline()
                .unwrap_or_else(|| Instant::now() + IDLE_WAKE);
            sleep
                .as_mut()
                .reset(tokio::time::Instant::from_std(deadline));
            tokio::select! {
                biased;
                changed = self.shutdown.changed() => {
                    // An error: the runtime is gone, which ends its sessions too.
                    if changed.is_err() || *self.shutdown.borrow() {
                        return End::Shutdown;
                    }
                }
                command = self.commands.recv() => {
                    let Some(command) = command else {
                        return End::Closed;
                    };
                    self.on_command(command);
                }
                received = self.rtp.recv_from(&mut rtp_buffer) => match received {
                    Ok((len, from)) => {
                        let bytes = rtp_buffer.get(..len).unwrap_or_default();
                        match self.session.on_rtp(from, bytes, Instant::now()) {
                            Received::Audio | Received::Dtmf | Received::ComfortNoise => {
                                self.metrics.received.increment(1);
                            }
                            Received::Foreign => self.metrics.foreign.increment(1),
                            _ => {}
                        }
                    }
                    // ICMP errors of earlier sends surface here on some
                    // systems: not a reason to end the call.
                    Err(error) => tracing::debug!(%error, "RTP receive failed"),
                },
                received = self.rtcp.recv_from(&mut rtcp_buffer) => match received {
                    Ok((len, from)) => {
                        let bytes = rtcp_buffer.get(..len).unwrap_or_default();
                        self.session.on_rtcp(from, bytes, Instant::now());
                    }
                    Err(error) => tracing::debug!(%error, "RTCP receive failed"),
                },
                () = &mut sleep => {}
            }
            // A tick: the session's timer work (the recording's playout,
            // the pacer's next frame, a report) was due at `deadline` and
            // runs now, whether the timer or a packet woke the task.
            let woke = Instant::now();
            if woke >= deadline && measured != Some(deadline) {
                self.lateness.record(woke - deadline);
                measured = Some(deadline);
            }
            if let Some(end) = self.flush(&mut out).await {
                return end;
            }
            if woke >= next_publish {
                self.publish();
                next_publish = woke + PUBLISH_INTERVAL;
            }
        }
    }

    /// Adds what is new in the session's loss, lateness and concealment
    /// to the runtime's counters.
    fn publish(&mut self) {
        self.metrics.health.publish(
            &self.session.stats(),
            &mut self.published,
            &mut self.lateness,
        );
    }

    fn on_command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Play(samples) => self.session.play(samples, now),
            Command::StopPlayback => self.session.stop_playback(),
            Command::StartRecording(limits) => self.session.start_recording(limits, now),
            Command::StopRecording(reply) => {
                // The caller may have stopped waiting: nothing to do then.
                let _ = reply.send(self.session.stop_recording(now));
            }
            Command::Update(audio) => self.session.update(audio, now),
            Command::Stats(reply) => {
                let _ = reply.send(self.session.stats());
            }
        }
    }

    /// Sends what is due and hands over the events; says whether the
    /// session ends.
    async fn flush(&mut self, out: &mut Vec<u8>) -> Option<End> {
        let now = Instant::now();
        while let Some((to, kind)) = self.session.poll_transmit(now, out) {
            match self.socket(kind).send_to(out, to).await {
                Ok(_) if kind == Packet::Rtp => self.metrics.sent.increment(1),
                Ok(_) => {}
                Err(error) => tracing::debug!(%error, %to, ?kind, "send failed"),
            }
        }
        let mut end = None;
        while let Some(event) = self.session.poll_event(now) {
            if event == SessionEvent::RtpTimeout {
                self.metrics.timeouts.increment(1);
                end = Some(End::RtpTimeout);
            }
            match self.events.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => return Some(End::AppGone),
                // The media clock does not wait for a slow app: an app
                // that lets this many events pile up has stopped reading.
                Err(mpsc::error::TrySendError::Full(event)) => {
                    tracing::warn!(?event, "media event dropped: the app is not reading events");
                }
            }
        }
        end
    }

    fn socket(&self, kind: Packet) -> &UdpSocket {
        match kind {
            Packet::Rtp => &self.rtp,
            Packet::Rtcp => &self.rtcp,
        }
    }
}
