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
//!   to.
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
//! The lateness histogram is exported in Prometheus's histogram layout as
//! counters: `dialtone_media_tick_lateness_us_bucket{le="..."}`
//! (cumulative), `_sum` and `_count`; `histogram_quantile` works on them
//! as on a native histogram.
//!
//! [`MediaSession::next_deadline`]: crate::session::MediaSession::next_deadline
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge};

use crate::session::SessionStats;

/// How often a live session adds its counts to the shared metrics: often
/// enough for a scrape every few seconds, rarely enough to cost nothing.
pub(super) const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

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

/// The runtime's health counters, made once per runtime.
#[derive(Clone)]
pub(super) struct HealthMetrics {
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
    pub(super) fn new() -> Self {
        HealthMetrics {
            lost: metrics::counter!("dialtone_media_rtp_packets_lost_total"),
            late_packets: metrics::counter!("dialtone_media_late_packets_total"),
            concealed_frames: metrics::counter!("dialtone_media_concealed_frames_total"),
            recorded_frames: metrics::counter!("dialtone_media_recorded_frames_total"),
            lateness_buckets: BUCKET_LABELS
                .map(|le| metrics::counter!("dialtone_media_tick_lateness_us_bucket", "le" => le)),
            lateness_sum_us: metrics::counter!("dialtone_media_tick_lateness_us_sum"),
            lateness_count: metrics::counter!("dialtone_media_tick_lateness_us_count"),
            lateness_max_us: metrics::gauge!("dialtone_media_tick_lateness_max_us"),
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
