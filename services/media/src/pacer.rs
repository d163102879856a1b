//! The clocked sender where audio is produced (prompts, beeps): one frame
//! slot every `ptime` with continuous RTP sequence numbers and timestamps
//! (RFC 3550 s.5.1), whatever the scheduler that calls it does.
//!
//! # What it owns
//! [`Pacer`] hands out [`Slot`]s: slot n is due at `start + n × ptime`
//! exactly, computed from the start rather than from the previous call, so
//! a caller that wakes late never makes the stream drift. A caller that is
//! late by up to [`MAX_BURST`] frames gets them all at once (the
//! receiver's jitter buffer absorbs a short burst); later than that, the
//! missed slots are skipped: their timestamps are left out but the
//! sequence numbers stay continuous, so that the receiver sees a jump in
//! time, not lost packets, and plays from the new time on. The first frame
//! of the stream, after a skip, and after [`Pacer::pause`] /
//! [`Pacer::resume`] carries the marker bit (a new talkspurt, RFC 3551
//! s.4.1), which tells the receiver to re-anchor its playout.
//!
//! # What it must not do
//! It does not read the clock, sleep or send: the caller passes `now`,
//! arms a timer for [`Pacer::next_due`] and sends what [`Pacer::due`]
//! returns. It knows nothing of the payload.

use std::time::{Duration, Instant};

/// The most frames handed out at once to a late caller; later than that,
/// the missed slots are skipped.
pub const MAX_BURST: u64 = 3;

/// One frame to send: its RTP sequence number, timestamp and marker bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub sequence: u16,
    pub timestamp: u32,
    pub marker: bool,
}

/// The frame clock of one outgoing stream.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// When slot 0 of the current grid is due; the grid is moved only by
    /// [`Pacer::resume`].
    grid_start: Instant,
    /// The RTP timestamp of slot 0 of the current grid.
    grid_timestamp: u32,
    /// The index in the grid of the next slot to hand out.
    next_slot: u64,
    ptime_ns: u64,
    samples_per_frame: u32,
    next_sequence: u16,
    marker_pending: bool,
    paused: bool,
    skipped_frames: u64,
}

impl Pacer {
    /// A pacer whose first slot is due at `start`, with sequence number
    /// `first_sequence` and timestamp `first_timestamp` (both random for a
    /// new stream, RFC 3550 s.5.1). A `ptime_ms` of 0 is taken as 1.
    pub fn new(
        start: Instant,
        ptime_ms: u32,
        clock_rate_hz: u32,
        first_sequence: u16,
        first_timestamp: u32,
    ) -> Self {
        let ptime_ms = ptime_ms.max(1);
        let samples_per_frame = u64::from(ptime_ms) * u64::from(clock_rate_hz) / 1000;
        Pacer {
            grid_start: start,
            grid_timestamp: first_timestamp,
            next_slot: 0,
            ptime_ns: u64::from(ptime_ms) * 1_000_000,
            samples_per_frame: u32::try_from(samples_per_frame).unwrap_or(u32::MAX),
            next_sequence: first_sequence,
            marker_pending: true,
            paused: false,
            skipped_frames: 0,
        }
    }

    fn slot_time(&self, slot: u64) -> Instant {
        let offset = Duration::from_nanos(slot.saturating_mul(self.ptime_ns));
        self.grid_start
            .checked_add(offset)
            .unwrap_or(self.grid_start)
    }

    fn slot_timestamp(&self, slot: u64) -> u32 {
        // RTP timestamps wrap modulo 2^32; so does this product.
        let advance = slot.wrapping_mul(u64::from(self.samples_per_frame)) as u32;
        self.grid_timestamp.wrapping_add(advance)
    }

    /// The next slot if its time has come (call in a loop until `None`:
    /// a late caller gets up to [`MAX_BURST`] slots). Nothing is due while
    /// paused.
    pub fn due(&mut self, now: Instant) -> Option<Slot> {
        if self.paused || now < self.slot_time(self.next_slot) {
            return None;
        }
        let elapsed_ns = now.saturating_duration_since(self.grid_start).as_nanos();
        let latest = u64::try_from(elapsed_ns / u128::from(self.ptime_ns)).unwrap_or(u64::MAX);
        let due_count = latest.saturating_sub(self.next_slot).saturating_add(1);
        if due_count > MAX_BURST {
            self.skipped_frames += latest - self.next_slot;
            self.next_slot = latest;
            self.marker_pending = true;
        }
        let slot = Slot {
            sequence: self.next_sequence,
            timestamp: self.slot_timestamp(self.next_slot),
            marker: std::mem::take(&mut self.marker_pending),
        };
        self.next_slot += 1;
        self.next_sequence = self.next_sequence.wrapping_add(1);
        Some(slot)
    }

    /// When the next slot is due, for the caller's timer. While paused,
    /// nothing is due: this is when the next slot would have been.
    pub fn next_due(&self) -> Instant {
        self.slot_time(self.next_slot)
    }

    /// Stops handing out slots (the prompt has ended, or the call is on
    /// hold); the timestamps keep following wall time meanwhile.
    pub fn pause(&mut self) {
        self.paused = true;
    }

    /// Hands out slots again, the first one with the marker bit. If the
    /// pause outlasted the next slot's time, that slot is due at `now` and
    /// its timestamp has advanced by the whole frames of wall time that
    /// passed (RFC 3550 s.5.1: the timestamp follows the sampling clock,
    /// silence included); the slots of the pause are not counted as skipped.
    pub fn resume(&mut self, now: Instant) {
        if !self.paused {
            return;
        }
        self.paused = false;
        self.marker_pending = true;
        let due = self.slot_time(self.next_slot);
        if now > due {
            let paused_ns = now.saturating_duration_since(due).as_nanos();
            let passed = u64::try_from(paused_ns / u128::from(self.ptime_ns)).unwrap_or(u64::MAX);
            self.grid_timestamp = self.slot_timestamp(self.next_slot.saturating_add(passed));
            self.grid_start = now;
            self.next_slot = 0;
        }
    }

    /// Whether [`Pacer::pause`] was called without a [`Pacer::resume`].
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// The slots left out because the caller was late by more than
    /// [`MAX_BURST`] frames.
    pub fn skipped_frames(&self) -> u64 {
        self.skipped_frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn slots_are_due_on_the_grid() {
        let start = Instant::now();
        let mut pacer = Pacer::new(start, 20, 8000, 100, 1000);
        assert_eq!(pacer.next_due(), start);
        let first = pacer.due(start).unwrap();
        assert_eq!(
            (first.sequence, first.timestamp, first.marker),
            (100, 1000, true)
        );
        assert_eq!(pacer.due(start + 19 * MS), None);
        assert_eq!(pacer.next_due(), start + 20 * MS);
        let second = pacer.due(start + 20 * MS).unwrap();
        assert_eq!(
            (second.sequence, second.timestamp, second.marker),
            (101, 1160, false)
        );
    }

    #[test]
    fn sequence_and_timestamp_wrap() {
        let start = Instant::now();
        let mut pacer = Pacer::new(start, 20, 8000, u16::MAX, u32::MAX - 100);
        let first = pacer.due(start).unwrap();
        let second = pacer.due(start + 20 * MS).unwrap();
        assert_eq!((first.sequence, second.sequence), (u16::MAX, 0));
        assert_eq!(second.timestamp, 59);
    }
}
