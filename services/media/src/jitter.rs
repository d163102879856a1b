//! The jitter buffer where audio is consumed (recording, mixing): packets
//! arrive out of order, twice, late or never; frames leave in order at the
//! playout clock, with silence where audio is missing.
//!
//! # What it owns
//! [`JitterBuffer`] with its [`JitterConfig`]; the producer side
//! [`JitterBuffer::push`] (returning a [`Push`]), the consumer side
//! [`JitterBuffer::pop`] and [`JitterBuffer::flush`] (each returning a
//! [`Frame`]), and [`JitterStats`].
//!
//! Samples are stored by RTP timestamp (RFC 3550 s.5.1: the sampling
//! instant) in a ring of samples allocated once, so packets of any size
//! (10, 20, 30 ms, or mixed) land at their place and nothing is allocated
//! per packet. Positions are counted in samples on one timeline; the RTP
//! timestamp of each accepted packet re-anchors the mapping, so timestamps
//! may wrap freely.
//!
//! # The playout clock
//! The first packet's frame is played `target_delay_ms` after it arrived,
//! then one frame per `frame_samples` of wall time, whatever arrives: the
//! clock never waits for audio. So during silence suppression (DTX,
//! comfort noise, RFC 3389) or a hold, when no packets come at all,
//! [`JitterBuffer::pop`] still returns frames of silence at the clock, and
//! a recording keeps real time; the talkspurt that follows lands at its
//! timestamp's place. Missing samples are told apart in the statistics:
//! `samples_concealed` are holes that later audio has already passed
//! (loss, or a late packet), `samples_silent` are missing with nothing
//! after them yet (silence suppression, or the stream stopping) or in the
//! gap before a talkspurt's first packet (marker bit, RFC 3551 s.4.1) or a
//! re-based timeline.
//!
//! A packet whose frame has already been played is late: counted, not
//! played. Until the first frame is played, a packet earlier than the
//! first one to arrive moves the start back instead (reordering at the
//! start of a stream is not lateness). A timestamp more than
//! `max_delay_ms` ahead of the playout point, or more than `max_delay_ms`
//! behind it with the marker bit (or twice in a row), is a new timeline (a
//! new SSRC or a sender's clock jump): the buffer re-bases
//! ([`Push::Reset`]) and the new audio plays `target_delay_ms` after it
//! arrived, after what is still buffered. A lone packet far behind without
//! the marker is a straggler, counted late.
//!
//! # What it must not do
//! No clock reads (`arrival` and `now` are passed in), no allocation after
//! [`JitterBuffer::new`], no panic on any timestamp or packet size. It
//! does not adapt its delay to the measured jitter, nor stretch or shrink
//! audio for clock drift between the sender and this node: a drift that
//! empties or overfills the window shows as concealment, lateness, or a
//! reset.

use std::time::{Duration, Instant};

/// The buffer's shape: the clock rate, the frame it plays, how long it
/// waits before playing and how far a packet may be from the playout
/// point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    pub clock_rate_hz: u32,
    pub frame_samples: usize,
    /// How long after the first packet's arrival its frame is played: the
    /// jitter absorbed.
    pub target_delay_ms: u32,
    /// How far ahead of the playout point audio is kept; a timestamp
    /// further than this ahead or behind is a new timeline.
    pub max_delay_ms: u32,
}

impl Default for JitterConfig {
    /// G.711 at 20 ms with a 60 ms delay and a 300 ms window.
    fn default() -> Self {
        JitterConfig {
            clock_rate_hz: 8000,
            frame_samples: 160,
            target_delay_ms: 60,
            max_delay_ms: 300,
        }
    }
}

/// What became of a pushed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Stored (all of it, or the part not yet played or already held).
    Accepted,
    /// Every sample was already held: dropped, counted.
    Duplicate,
    /// Its time has already been played out: dropped, counted. (A
    /// duplicate of a packet already played counts here.)
    Late,
    /// A new timeline: the buffer re-based on this packet and stored it.
    Reset,
}

/// One frame of audio at the playout clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Exactly `frame_samples` samples.
    pub samples: &'a [i16],
    /// How many of them were missing and are silence (zero).
    pub missing_samples: usize,
}

/// Counters since the buffer was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    pub frames_played: u64,
    /// Missing samples with later audio already buffered: loss.
    pub samples_concealed: u64,
    /// Frames played with at least one concealed sample: what a listener
    /// hears as a glitch.
    pub frames_concealed: u64,
    /// Missing samples with nothing buffered after them (silence
    /// suppression, or the end of the stream), or just before a talkspurt.
    pub samples_silent: u64,
    pub late_packets: u64,
    pub duplicate_packets: u64,
    pub resets: u64,
}

/// Where the timeline stands once the first packet has come.
#[derive(Debug, Clone, Copy)]
struct Playout {
    /// The last accepted packet's RTP timestamp and position: the mapping
    /// from timestamps to positions.
    rtp_anchor: u32,
    position_anchor: i64,
    /// Position `clock_position` is due at `clock_time`.
    clock_time: Instant,
    clock_position: i64,
    /// The first sample of the next frame to play.
    read_position: i64,
    /// One past the last position written.
    written_end: i64,
    /// The hole before the latest talkspurt (marker bit) or re-based
    /// timeline: missing there is silence, not loss.
    silence_gap: (i64, i64),
    played_any: bool,
}

impl Playout {
    fn position_of(&self, rtp_timestamp: u32) -> i64 {
        // The signed difference: a timestamp just behind the anchor, across
        // a wrap or not, is behind it.
        let delta = rtp_timestamp.wrapping_sub(self.rtp_anchor) as i32;
        self.position_anchor + i64::from(delta)
    }
}

/// The jitter buffer of one incoming stream.
#[derive(Debug, Clone)]
pub struct JitterBuffer {
    clock_rate_hz: u32,
    frame_samples: usize,
    target_delay: Duration,
    /// `max_delay_ms` in samples.
    window_samples: i64,
    ring: Vec<i16>,
    received: Vec<bool>,
    frame: Vec<i16>,
    playout: Option<Playout>,
    /// A packet far behind without the marker: if the next one is far
    /// behind too and continues it, the timeline did jump.
    straggler: Option<u32>,
    stats: JitterStats,
}

impl JitterBuffer {
    /// An empty buffer; its ring holds `max_delay_ms` plus eight frames.
    /// Zero rates and frame sizes are taken as 1, a target beyond the
    /// maximum as the maximum.
    pub fn new(config: JitterConfig) -> Self {
        let clock_rate_hz = config.clock_rate_hz.max(1);
        let frame_samples = config.frame_samples.max(1);
        let max_delay_ms = config.max_delay_ms.max(1);
        let target_delay_ms = config.target_delay_ms.min(max_delay_ms);
        let window_samples = i64::from(max_delay_ms) * i64::from(clock_rate_hz) / 1000;
        // Room past the window for the packet that reaches its far edge.
        let capacity = usize::try_from(window_samples)
            .unwrap_or(0)
            .saturating_add(frame_samples.saturating_mul(8));
        JitterBuffer {
            clock_rate_hz,
            frame_samples,
            target_delay: Duration::from_millis(u64::from(target_delay_ms)),
            window_samples,
            ring: vec![0; capacity],
            received: vec![false; capacity],
            frame: vec![0; frame_samples],
            playout: None,
            straggler: None,
            stats: JitterStats::default(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    fn capacity(&self) -> i64 {
        self.ring.len() as i64
    }

    fn index(&self, position: i64) -> usize {
        position.rem_euclid(self.capacity().max(1)) as usize
    }

    /// The position whose sample is due at `time` (rounded down).
    fn clock_position_at(&self, playout: &Playout, time: Instant) -> i64 {
        let samples = |d: Duration| {
            i64::try_from(d.as_nanos() * u128::from(self.clock_rate_hz) / 1_000_000_000)
                .unwrap_or(i64::MAX / 2)
        };
        match time.checked_duration_since(playout.clock_time) {
            Some(after) => playout.clock_position + samples(after),
            None => {
                playout.clock_position - samples(playout.clock_time.saturating_duration_since(time))
            }
        }
    }

    /// When the sample at `position` is due.
    fn due_time(&self, playout: &Playout, position: i64) -> Instant {
        let offset = position - playout.clock_position;
        let nanos = |samples: i64| {
            Duration::from_nanos(
                u64::try_from(
                    u128::from(samples.unsigned_abs()) * 1_000_000_000
                        / u128::from(self.clock_rate_hz),
                )
                .unwrap_or(u64::MAX),
            )
        };
        if offset >= 0 {
            playout.clock_time.checked_add(nanos(offset))
        } else {
            playout.clock_time.checked_sub(nanos(offset))
        }
        .unwrap_or(playout.clock_time)
    }

    /// Stores a packet's samples at its timestamp's place.
    pub fn push(
        &mut self,
        rtp_timestamp: u32,
        samples: &[i16],
        marker: bool,
        arrival: Instant,
    ) -> Push {
        let Some(mut playout) = self.playout else {
            if samples.is_empty() {
                return Push::Accepted;
            }
            let playout = Playout {
                rtp_anchor: rtp_timestamp,
                position_anchor: 0,
                clock_time: arrival + self.target_delay,
                clock_position: 0,
                read_position: 0,
                written_end: 0,
                silence_gap: (0, 0),
                played_any: false,
            };
            self.playout = Some(playout);
            return self.store(playout, rtp_timestamp, 0, samples, marker, Push::Accepted);
        };
        let position = playout.position_of(rtp_timestamp);
        let ahead = position - playout.read_position;
        let end = position + samples.len() as i64;
        if ahead > self.window_samples {
            return self.reset(playout, rtp_timestamp, samples, arrival);
        }
        if -ahead > self.window_samples {
            let continues_straggler = self.straggler.is_some_and(|previous| {
                let step = i64::from(rtp_timestamp.wrapping_sub(previous) as i32);
                (0..=self.window_samples).contains(&step)
            });
            if marker || continues_straggler {
                return self.reset(playout, rtp_timestamp, samples, arrival);
            }
            self.straggler = Some(rtp_timestamp);
            self.stats.late_packets += 1;
            return Push::Late;
        }
        self.straggler = None;
        if position < playout.read_position && !playout.played_any {
            // Nothing played yet: start earlier, on the same frame grid, if
            // the ring still holds everything written.
            let behind = playout.read_position - position;
            let frame = self.frame_samples as i64;
            let start = playout.read_position - (behind + frame - 1) / frame * frame;
            if playout.written_end - start <= self.capacity() {
                playout.read_position = start;
            }
        }
        if end <= playout.read_position {
            self.stats.late_packets += 1;
            return Push::Late;
        }
        self.store(
            playout,
            rtp_timestamp,
            position,
            samples,
            marker,
            Push::Accepted,
        )
    }

    /// Re-bases the timeline on this packet: it plays `target_delay`
    /// after its arrival, and after what is still buffered.
    fn reset(
        &mut self,
        playout: Playout,
        rtp_timestamp: u32,
        samples: &[i16],
        arrival: Instant,
    ) -> Push {
        self.stats.resets += 1;
        self.straggler = None;
        let on_time = self.clock_position_at(&playout, arrival + self.target_delay);
        let position = on_time
            .max(playout.written_end)
            .max(playout.read_position)
            .min(playout.read_position + self.window_samples);
        self.store(playout, rtp_timestamp, position, samples, true, Push::Reset)
    }

    fn store(
        &mut self,
        mut playout: Playout,
        rtp_timestamp: u32,
        position: i64,
        samples: &[i16],
        talkspurt: bool,
        outcome: Push,
    ) -> Push {
        if talkspurt && position > playout.written_end {
            playout.silence_gap = (playout.written_end, position);
        }
        let ring_end = playout.read_position + self.capacity();
        let (mut stored, mut held) = (0usize, 0usize);
        let mut at = position;
        for &sample in samples {
            // The part already played, or beyond the ring, is dropped.
            if at >= ring_end {
                break;
            }
            if at >= playout.read_position {
                let index = self.index(at);
                if let (Some(slot), Some(flag)) =
                    (self.ring.get_mut(index), self.received.get_mut(index))
                {
                    if *flag {
                        held += 1;
                    } else {
                        *slot = sample;
                        *flag = true;
                        stored += 1;
                    }
                }
            }
            at += 1;
        }
        playout.written_end = playout.written_end.max(at);
        playout.rtp_anchor = rtp_timestamp;
        playout.position_anchor = position;
        self.playout = Some(playout);
        if stored == 0 && held > 0 && outcome == Push::Accepted {
            self.stats.duplicate_packets += 1;
            return Push::Duplicate;
        }
        outcome
    }

    /// The next frame, if its playout time has come (call in a loop until
    /// `None`). Before the first packet there is no clock and nothing is
    /// due; after it, a frame is due every `frame_samples` of wall time,
    /// silent where nothing arrived.
    pub fn pop(&mut self, now: Instant) -> Option<Frame<'_>> {
        let playout = self.playout?;
        if self.due_time(&playout, playout.read_position) > now {
            return None;
        }
        Some(self.play(playout))
    }

    /// The next buffered frame without waiting for its time, for the end of
    /// a call: call in a loop until `None`, which comes once everything
    /// received has been played.
    pub fn flush(&mut self) -> Option<Frame<'_>> {
        let playout = self.playout?;
        if playout.read_position >= playout.written_end {
            return None;
        }
        Some(self.play(playout))
    }

    fn play(&mut self, mut playout: Playout) -> Frame<'_> {
        let mut missing = 0usize;
        let mut concealed = 0usize;
        for offset in 0..self.frame_samples {
            let position = playout.read_position + offset as i64;
            let index = self.index(position);
            let (Some(&sample), Some(flag)) = (self.ring.get(index), self.received.get_mut(index))
            else {
                continue;
            };
            let out = if std::mem::take(flag) {
                sample
            } else {
                missing += 1;
                let (gap_start, gap_end) = playout.silence_gap;
                if position >= playout.written_end || (gap_start..gap_end).contains(&position) {
                    self.stats.samples_silent += 1;
                } else {
                    concealed += 1;
                }
                0
            };
            if let Some(slot) = self.frame.get_mut(offset) {
                *slot = out;
            }
        }
        self.stats.samples_concealed += concealed as u64;
        if concealed > 0 {
            self.stats.frames_concealed += 1;
        }
        playout.read_position += self.frame_samples as i64;
        playout.played_any = true;
        self.playout = Some(playout);
        self.stats.frames_played += 1;
        Frame {
            samples: &self.frame,
            missing_samples: missing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn frame_of(value: i16) -> Vec<i16> {
        vec![value; 160]
    }

    #[test]
    fn nothing_is_due_before_the_first_packet_nor_before_the_target_delay() {
        let mut buffer = JitterBuffer::new(JitterConfig::default());
        let t0 = Instant::now();
        assert!(buffer.pop(t0 + 1000 * MS).is_none());
        assert_eq!(buffer.push(1000, &frame_of(5), false, t0), Push::Accepted);
        assert!(buffer.pop(t0 + 59 * MS).is_none());
        let frame = buffer.pop(t0 + 60 * MS).unwrap();
        assert_eq!(frame.samples, &frame_of(5)[..]);
        assert_eq!(frame.missing_samples, 0);
        assert!(buffer.pop(t0 + 79 * MS).is_none());
        let silent = buffer.pop(t0 + 80 * MS).unwrap();
        assert_eq!(silent.missing_samples, 160);
        assert_eq!(buffer.stats().samples_silent, 160);
    }

    #[test]
    fn the_ring_is_the_window_plus_eight_frames() {
        let buffer = JitterBuffer::new(JitterConfig::default());
        assert_eq!(buffer.ring.len(), 2400 + 8 * 160);
    }

    #[test]
    fn an_empty_first_packet_starts_nothing() {
        let mut buffer = JitterBuffer::new(JitterConfig::default());
        let t0 = Instant::now();
        assert_eq!(buffer.push(0, &[], false, t0), Push::Accepted);
        assert!(buffer.pop(t0 + 1000 * MS).is_none());
        assert!(buffer.flush().is_none());
    }
}
