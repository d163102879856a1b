//! What the runtime counts about the media's health, for the node's
//! metrics endpoint: whether calls lose frames, and whether sessions run
//! when their clock says (a recording's playout, a prompt's pacer).
//!
//! # What it owns
//! - [`LatenessCounts`]: a session's own histogram of the lateness of its
//!   timer work (when a deadline of [`MediaSession::next_deadline`] was
//!   due, against when the task ran after it), in fixed microsecond
//!   buckets ([`LATENESS_BOUNDS_US`]);
//! - [`Published`]: how much of a session's loss, lateness and
//!   concealment its counters already carry, so that each publication
//!   adds only what is new;
//! - [`HealthMetrics`]: the runtime's counters and gauges they are added
//!   to;
//! - [`RoomCounts`] and [`RoomMetrics`]: the same for conference rooms
//!   (`crate::room`), under `dialtone_conference_*`: each room's clock
//!   (the lateness of its 20 ms ticks, late ticks, skipped frames), the
//!   RTP it takes in and sends, its participants' loss, lateness and
//!   concealment, and how many rooms and participants are live.
//!
//! # Why sessions count locally
//! A recording session has a deadline every 20 ms and a packet every 20
//! ms: recording each tick straight into a shared histogram would touch
//! shared memory (and, with the Prometheus exporter's histograms, allocate)
//! on the media path. Each task counts into plain integers instead and
//! adds them to the shared counters about once a second
//! ([`PUBLISH_INTERVAL`]) and at its end, which costs a dozen atomic
//! additions per session per second and no allocation.
//!
//! A room works the same way: one task counts its ticks and packets into
//! a [`RoomCounts`], added every few ticks (`crate::room` says how
//! often), and each participant's news into its [`Published`], added once
//! a second and when the participant leaves; everything at the room's
//! end.
//!
//! The lateness histograms are exported in Prometheus's histogram layout
//! as counters: `dialtone_media_tick_lateness_us_bucket{le="..."}`
//! (cumulative), `_sum` and `_count` (and `dialtone_conference_...` for
//! rooms); `histogram_quantile` works on them as on a native histogram.
//!
//! [`MediaSession::next_deadline`]: crate::session::MediaSession::next_deadline
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge};

use crate::session::SessionStats;

/// How often a live session adds its counts to the shared metrics: often
/// enough for a scrape every few seconds, rarely enough to cost nothing.
pub(crate) const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// Upper bounds (inclusive, µs) of the lateness buckets; one more bucket
/// (`+Inf`) takes the rest. tokio's timers count whole milliseconds (a
/// sleep ends at the next millisecond tick or the one after), so an idle
/// node shows lateness up to about 2 ms; a frame is 20 ms and the
/// recording's jitter buffer waits 60 ms.
pub const LATENESS_BOUNDS_US: [u64; 11] = [
    100, 250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 250_000,
];
const BUCKETS: usize = LATENESS_BOUNDS_US.len() + 1;
/// The `le` label of each bucket.
const BUCKET_LABELS: [&str; BUCKETS] = [
    "100", "250", "500", "1000", "2000", "5000", "10000", "20000", "50000", "100000", "250000",
    "+Inf",
];

/// One session's lateness counts since its last publication.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatenessCounts {
    /// Per bucket, not cumulative: `counts[i]` are the ticks with lateness
    /// in (`LATENESS_BOUNDS_US[i - 1]`, `LATENESS_BOUNDS_US[i]`].
    counts: [u64; BUCKETS],
    sum_us: u64,
    max_us: u64,
}

impl LatenessCounts {
    /// Counts one tick that ran `lateness` after it was due.
    pub fn record(&mut self, lateness: Duration) {
        let us = u64::try_from(lateness.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENESS_BOUNDS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(BUCKETS - 1);
        if let Some(count) = self.counts.get_mut(bucket) {
            *count += 1;
        }
        self.sum_us = self.sum_us.saturating_add(us);
        self.max_us = self.max_us.max(us);
    }

    /// Ticks counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum_us(&self) -> u64 {
        self.sum_us
    }

    pub fn max_us(&self) -> u64 {
        self.max_us
    }

    /// The ticks at most each bound late, the last one all of them:
    /// Prometheus's cumulative buckets.
    pub fn cumulative(&self) -> [u64; BUCKETS] {
        let mut running = 0;
        self.counts.map(|count| {
            running += count;
            running
        })
    }
}

/// What a session's counters carry already.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    lost: i64,
    late_packets: u64,
    concealed_frames: u64,
    recorded_frames: u64,
}

/// What a session adds to the counters at one publication.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsDelta {
    pub lost: u64,
    pub late_packets: u64,
    pub concealed_frames: u64,
    pub recorded_frames: u64,
}

impl Published {
    /// What is new in `stats` since the last call, which it now counts as
    /// published. The loss of RFC 3550 A.3 (expected minus received)
    /// falls when a late packet fills a gap, and a counter cannot: only
    /// a loss above the highest one published is added.
    pub fn advance(&mut self, stats: &SessionStats) -> StatsDelta {
        let lost = stats.rx_lost.max(self.lost);
        let delta = StatsDelta {
            lost: u64::try_from(lost - self.lost).unwrap_or(0),
            late_packets: stats.late_packets.saturating_sub(self.late_packets),
            concealed_frames: stats.concealed_frames.saturating_sub(self.concealed_frames),
            recorded_frames: stats.recorded_frames.saturating_sub(self.recorded_frames),
        };
        *self = Published {
            lost,
            late_packets: stats.late_packets.max(self.late_packets),
            concealed_frames: stats.concealed_frames.max(self.concealed_frames),
            recorded_frames: stats.recorded_frames.max(self.recorded_frames),
        };
        delta
    }
}

/// The runtime's health counters, made once per runtime (one set for
/// sessions, one for rooms).
#[derive(Clone)]
pub(crate) struct HealthMetrics {
    lost: Counter,
    late_packets: Counter,
    concealed_frames: Counter,
    recorded_frames: Counter,
    lateness_buckets: [Counter; BUCKETS],
    lateness_sum_us: Counter,
    lateness_count: Counter,
    lateness_max_us: Gauge,
    /// The largest lateness any session of the runtime published.
    max_seen_us: Arc<AtomicU64>,
}

impl HealthMetrics {
    /// The sessions' counters: `dialtone_media_*`, frames played out of
    /// a recording's jitter buffer as `..._recorded_frames_total`.
    pub(super) fn new() -> Self {
        Self::named("dialtone_media", "recorded")
    }

    /// The rooms' counters: `dialtone_conference_*`, frames played out
    /// of the participants' jitter buffers into the mix as
    /// `..._mixed_frames_total`.
    fn for_rooms() -> Self {
        Self::named("dialtone_conference", "mixed")
    }

    fn named(prefix: &str, frames: &str) -> Self {
        let name = |suffix: &str| format!("{prefix}_{suffix}");
        let bucket = name("tick_lateness_us_bucket");
        HealthMetrics {
            lost: metrics::counter!(name("rtp_packets_lost_total")),
            late_packets: metrics::counter!(name("late_packets_total")),
            concealed_frames: metrics::counter!(name("concealed_frames_total")),
            recorded_frames: metrics::counter!(name(&format!("{frames}_frames_total"))),
            lateness_buckets: BUCKET_LABELS.map(|le| metrics::counter!(bucket.clone(), "le" => le)),
            lateness_sum_us: metrics::counter!(name("tick_lateness_us_sum")),
            lateness_count: metrics::counter!(name("tick_lateness_us_count")),
            lateness_max_us: metrics::gauge!(name("tick_lateness_max_us")),
            max_seen_us: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Adds a session's news: what its stats say beyond `published`, and
    /// its lateness counts (which start again from zero).
    pub(super) fn publish(
        &self,
        stats: &SessionStats,
        published: &mut Published,
        lateness: &mut LatenessCounts,
    ) {
        self.publish_stats(stats, published);
        self.publish_lateness(lateness);
    }

    /// Adds what `stats` say beyond `published`: loss, late packets,
    /// concealed and played frames.
    fn publish_stats(&self, stats: &SessionStats, published: &mut Published) {
        let delta = published.advance(stats);
        for (counter, value) in [
            (&self.lost, delta.lost),
            (&self.late_packets, delta.late_packets),
            (&self.concealed_frames, delta.concealed_frames),
            (&self.recorded_frames, delta.recorded_frames),
        ] {
            if value > 0 {
                counter.increment(value);
            }
        }
    }

    /// Adds the lateness counts, which start again from zero.
    fn publish_lateness(&self, lateness: &mut LatenessCounts) {
        let counts = std::mem::take(lateness);
        if counts.count() == 0 {
            return;
        }
        for (counter, value) in self.lateness_buckets.iter().zip(counts.cumulative()) {
            counter.increment(value);
        }
        self.lateness_sum_us.increment(counts.sum_us());
        self.lateness_count.increment(counts.count());
        let before = self
            .max_seen_us
            .fetch_max(counts.max_us(), Ordering::Relaxed);
        if counts.max_us() > before {
            self.lateness_max_us.set(counts.max_us() as f64);
        }
    }
}

/// What one room counted since its last publication: its ticks and its
/// RTP, in plain integers (its participants' loss and concealment are in
/// their sessions' stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RoomCounts {
    pub(crate) lateness: LatenessCounts,
    /// Ticks later than the room's bound (`crate::room::LATE_TICK`).
    pub(crate) late_ticks: u64,
    /// Frames left out by a tick too late to catch up.
    pub(crate) skipped_frames: u64,
    /// RTP from participants' peers (audio, telephone-events, comfort
    /// noise).
    pub(crate) rtp_received: u64,
    /// RTP datagrams from an address other than the latched one.
    pub(crate) rtp_foreign: u64,
    pub(crate) rtp_sent: u64,
    /// Frames the socket would not take at once (dropped: the clock does
    /// not wait).
    pub(crate) send_dropped: u64,
}

impl RoomCounts {
    /// Counts one tick: `lateness` after it was due, `late` if over the
    /// room's bound, `skipped` frames left out before it.
    pub(crate) fn tick(&mut self, lateness: Duration, late: bool, skipped: u32) {
        self.lateness.record(lateness);
        self.late_ticks += u64::from(late);
        self.skipped_frames += u64::from(skipped);
    }
}

/// The rooms' counters and gauges, made once per runtime
/// (`dialtone_conference_*`, docs/operations.md).
#[derive(Clone)]
pub(crate) struct RoomMetrics {
    health: HealthMetrics,
    late_ticks: Counter,
    skipped_frames: Counter,
    received: Counter,
    foreign: Counter,
    sent: Counter,
    send_dropped: Counter,
    rooms: Gauge,
    participants: Gauge,
    rooms_live: Arc<AtomicI64>,
    participants_live: Arc<AtomicI64>,
}

impl RoomMetrics {
    pub(super) fn new() -> Self {
        RoomMetrics {
            health: HealthMetrics::for_rooms(),
            late_ticks: metrics::counter!("dialtone_conference_ticks_late_total"),
            skipped_frames: metrics::counter!("dialtone_conference_frames_skipped_total"),
            received: metrics::counter!("dialtone_conference_rtp_packets_received_total"),
            foreign: metrics::counter!("dialtone_conference_foreign_packets_total"),
            sent: metrics::counter!("dialtone_conference_rtp_packets_sent_total"),
            send_dropped: metrics::counter!("dialtone_conference_rtp_send_dropped_total"),
            rooms: metrics::gauge!("dialtone_conference_rooms_live"),
            participants: metrics::gauge!("dialtone_conference_media_participants"),
            rooms_live: Arc::new(AtomicI64::new(0)),
            participants_live: Arc::new(AtomicI64::new(0)),
        }
    }

    /// Adds a room's counts, which start again from zero.
    pub(crate) fn publish(&self, counts: &mut RoomCounts) {
        let mut counts = std::mem::take(counts);
        for (counter, value) in [
            (&self.late_ticks, counts.late_ticks),
            (&self.skipped_frames, counts.skipped_frames),
            (&self.received, counts.rtp_received),
            (&self.foreign, counts.rtp_foreign),
            (&self.sent, counts.rtp_sent),
            (&self.send_dropped, counts.send_dropped),
        ] {
            if value > 0 {
                counter.increment(value);
            }
        }
        self.health.publish_lateness(&mut counts.lateness);
    }

    /// Adds a participant's news since `published`.
    pub(crate) fn publish_participant(&self, stats: &SessionStats, published: &mut Published) {
        self.health.publish_stats(stats, published);
    }

    /// Counts a live room (and its participants) until the guard is
    /// dropped: at the room's end, or by the unwinding of a panic in it.
    pub(crate) fn live_room(&self) -> LiveRoom {
        let rooms = self.rooms_live.fetch_add(1, Ordering::SeqCst) + 1;
        self.rooms.set(rooms as f64);
        LiveRoom {
            metrics: self.clone(),
            participants: 0,
        }
    }

    fn add_participants(&self, delta: i64) {
        let now = self.participants_live.fetch_add(delta, Ordering::SeqCst) + delta;
        self.participants.set(now as f64);
    }
}

/// A live room in the gauges; see [`RoomMetrics::live_room`].
pub(crate) struct LiveRoom {
    metrics: RoomMetrics,
    participants: i64,
}

impl LiveRoom {
    /// The room has `participants` now.
    pub(crate) fn set_participants(&mut self, participants: usize) {
        let participants = i64::try_from(participants).unwrap_or(i64::MAX);
        let delta = participants - self.participants;
        if delta != 0 {
            self.participants = participants;
            self.metrics.add_participants(delta);
        }
    }

    pub(crate) fn metrics(&self) -> &RoomMetrics {
        &self.metrics
    }
}

impl Drop for LiveRoom {
    fn drop(&mut self) {
        self.set_participants(0);
        let rooms = self.metrics.rooms_live.fetch_sub(1, Ordering::SeqCst) - 1;
        self.metrics.rooms.set(rooms as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn lateness_lands_in_the_bucket_of_its_upper_bound() {
        let mut counts = LatenessCounts::default();
        for us in [
            0, 100, 101, 999, 1_000, 1_001, 20_000, 250_000, 250_001, 9_000_000,
        ] {
            counts.record(us * US);
        }
        assert_eq!(counts.count(), 10);
        assert_eq!(counts.counts, [2, 1, 0, 2, 1, 0, 0, 1, 0, 0, 1, 2]);
        assert_eq!(counts.cumulative(), [2, 3, 3, 5, 6, 6, 6, 7, 7, 7, 8, 10]);
        assert_eq!(
            counts.sum_us(),
            100 + 101 + 999 + 1_000 + 1_001 + 20_000 + 250_000 + 250_001 + 9_000_000
        );
        assert_eq!(counts.max_us(), 9_000_000);
    }

    #[test]
    fn sub_microsecond_lateness_is_zero_and_the_labels_match_the_bounds() {
        let mut counts = LatenessCounts::default();
        counts.record(Duration::from_nanos(999));
        assert_eq!(
            (counts.count(), counts.sum_us(), counts.max_us()),
            (1, 0, 0)
        );
        for (label, bound) in BUCKET_LABELS.iter().zip(LATENESS_BOUNDS_US) {
            assert_eq!(label.parse::<u64>().unwrap(), bound);
        }
        assert_eq!(BUCKET_LABELS[BUCKETS - 1], "+Inf");
    }

    #[test]
    fn a_room_counts_each_tick_its_lateness_late_ones_and_skipped_frames() {
        let mut counts = RoomCounts::default();
        counts.tick(300 * US, false, 0);
        counts.tick(6_000 * US, true, 0);
        counts.tick(70_000 * US, true, 3);
        assert_eq!(counts.lateness.count(), 3);
        assert_eq!(
            counts.lateness.cumulative(),
            [0, 0, 1, 1, 1, 1, 2, 2, 2, 3, 3, 3]
        );
        assert_eq!(counts.lateness.sum_us(), 76_300);
        assert_eq!(counts.lateness.max_us(), 70_000);
        assert_eq!((counts.late_ticks, counts.skipped_frames), (2, 3));
    }

    fn stats(lost: i64, late: u64, concealed: u64, recorded: u64) -> SessionStats {
        SessionStats {
            rx_lost: lost,
            late_packets: late,
            concealed_frames: concealed,
            recorded_frames: recorded,
            ..SessionStats::default()
        }
    }

    #[test]
    fn each_publication_adds_only_what_is_new() {
        let mut published = Published::default();
        assert_eq!(
            published.advance(&stats(3, 1, 2, 50)),
            StatsDelta {
                lost: 3,
                late_packets: 1,
                concealed_frames: 2,
                recorded_frames: 50
            }
        );
        assert_eq!(
            published.advance(&stats(3, 1, 2, 50)),
            StatsDelta::default()
        );
        assert_eq!(
            published.advance(&stats(5, 4, 2, 100)),
            StatsDelta {
                lost: 2,
                late_packets: 3,
                concealed_frames: 0,
                recorded_frames: 50
            }
        );
    }

    #[test]
    fn a_loss_that_falls_back_is_not_counted_again() {
        let mut published = Published::default();
        assert_eq!(published.advance(&stats(4, 0, 0, 0)).lost, 4);
        // A late packet filled a gap: A.3's loss falls to 3 ...
        assert_eq!(published.advance(&stats(3, 0, 0, 0)).lost, 0);
        // ... and only a loss above the 4 already counted is new.
        assert_eq!(published.advance(&stats(4, 0, 0, 0)).lost, 0);
        assert_eq!(published.advance(&stats(6, 0, 0, 0)).lost, 2);
        // Duplicates make it negative: nothing to count.
        let mut fresh = Published::default();
        assert_eq!(fresh.advance(&stats(-2, 0, 0, 0)).lost, 0);
    }
}
