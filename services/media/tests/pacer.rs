//! The pacer under a simulated scheduler: jittery and late callers, stalls,
//! pauses, ten simulated minutes.

use dialtone_media::pacer::{Pacer, Slot, MAX_BURST};
use proptest::prelude::*;
use std::time::{Duration, Instant};

const MS: Duration = Duration::from_millis(1);
const US: Duration = Duration::from_micros(1);

/// Deterministic xorshift32 for the simulated scheduler's lateness.
struct Rng(u32);

impl Rng {
    fn below(&mut self, bound: u32) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0 % bound
    }
}

/// Everything due at `now`, as a caller's loop takes it.
fn drain(pacer: &mut Pacer, now: Instant) -> Vec<Slot> {
    std::iter::from_fn(|| pacer.due(now)).collect()
}

#[test]
fn a_thousand_frames_with_jittery_calls_have_exact_timestamps() {
    let start = Instant::now();
    let mut pacer = Pacer::new(start, 20, 8000, 40_000, 7);
    let mut rng = Rng(0xDEAD_BEEF);
    let mut sent = Vec::new();
    while sent.len() < 1000 {
        // The timer fires up to 15 ms late.
        let now = pacer.next_due() + US * rng.below(15_000);
        for slot in drain(&mut pacer, now) {
            sent.push((slot, now));
        }
    }
    for (n, (slot, at)) in sent.iter().enumerate() {
        assert_eq!(slot.timestamp, 7 + 160 * n as u32);
        assert_eq!(slot.sequence, 40_000u16.wrapping_add(n as u16));
        assert_eq!(slot.marker, n == 0);
        let due = start + 20 * MS * n as u32;
        assert!(*at >= due && *at < due + 15 * MS, "frame {n}");
    }
    assert_eq!(pacer.skipped_frames(), 0);
}

#[test]
fn a_caller_that_sleeps_20_ms_each_time_does_not_drift_over_ten_minutes() {
    // The classic bug: sleeping one ptime after each send adds the
    // scheduler's lateness to every frame. Here each sleep oversleeps by
    // 0.3-1.3 ms; the frames still follow the wall clock.
    let start = Instant::now();
    let mut pacer = Pacer::new(start, 20, 8000, 0, 0);
    let mut rng = Rng(42);
    let mut now = start;
    let mut sent = 0u64;
    let mut catch_ups = 0;
    let end = start + Duration::from_secs(600);
    while now <= end {
        let slots = drain(&mut pacer, now);
        if slots.len() > 1 {
            catch_ups += 1;
        }
        for slot in slots {
            assert_eq!(u64::from(slot.timestamp), sent * 160);
            assert!(!slot.marker || sent == 0);
            // Never ahead of the grid.
            assert!(start + 20 * MS * sent as u32 <= now);
            sent += 1;
        }
        // Every frame due by now has been handed out: no drift.
        let due_by_now = (now - start).as_micros() as u64 / 20_000 + 1;
        assert_eq!(sent, due_by_now);
        now += 20 * MS + 300 * US + US * rng.below(1000);
    }
    // The oversleeping was caught up in pairs, and the last call, within
    // 21.3 ms of the ten minutes, had every frame up to then.
    assert!(catch_ups > 400, "{catch_ups}");
    assert!(sent >= 29_999, "{sent}");
    assert_eq!(pacer.skipped_frames(), 0);
}

#[test]
fn a_50_ms_stall_is_caught_up_in_a_burst() {
    let start = Instant::now();
    let mut pacer = Pacer::new(start, 20, 8000, 10, 0);
    for n in 0..3u32 {
        assert_eq!(drain(&mut pacer, start + 20 * MS * n).len(), 1);
    }
    // The slot at 60 ms is missed; the caller comes back at 110 ms.
    let burst = drain(&mut pacer, start + 110 * MS);
    assert_eq!(burst.len(), 3);
    let stamps: Vec<(u16, u32, bool)> = burst
        .iter()
        .map(|s| (s.sequence, s.timestamp, s.marker))
        .collect();
    assert_eq!(
        stamps,
        [(13, 480, false), (14, 640, false), (15, 800, false)]
    );
    assert_eq!(pacer.next_due(), start + 120 * MS);
    assert_eq!(pacer.skipped_frames(), 0);
}

#[test]
fn a_500_ms_stall_skips_the_missed_timestamps_but_not_sequence_numbers() {
    let start = Instant::now();
    let mut pacer = Pacer::new(start, 20, 8000, 10, 0);
    for n in 0..3u32 {
        assert_eq!(drain(&mut pacer, start + 20 * MS * n).len(), 1);
    }
    // Slots 3..=28 (60..560 ms) are due at 565 ms: 26 > MAX_BURST.
    let after = drain(&mut pacer, start + 565 * MS);
    assert_eq!(after.len(), 1);
    assert_eq!(
        after[0],
        Slot {
            sequence: 13,
            timestamp: 28 * 160,
            marker: true
        }
    );
    assert_eq!(pacer.skipped_frames(), 25);
    assert_eq!(pacer.next_due(), start + 580 * MS);
    let next = pacer.due(start + 580 * MS).unwrap();
    assert_eq!(
        (next.sequence, next.timestamp, next.marker),
        (14, 29 * 160, false)
    );
    // Late by exactly MAX_BURST frames is still a burst.
    let burst = drain(&mut pacer, start + (580 + 20 * MAX_BURST as u32) * MS);
    assert_eq!(burst.len() as u64, MAX_BURST);
    assert_eq!(pacer.skipped_frames(), 25);
}

#[test]
fn pause_and_resume() {
    let start = Instant::now();
    let mut pacer = Pacer::new(start, 20, 8000, 500, 1000);
    assert_eq!(drain(&mut pacer, start + 45 * MS).len(), 3);
    pacer.pause();
    assert!(pacer.is_paused());
    assert_eq!(pacer.due(start + 500 * MS), None);
    // 1 s after the slot that was next (60 ms): 50 whole frames passed.
    let resumed_at = start + 1065 * MS;
    pacer.resume(resumed_at);
    assert!(!pacer.is_paused());
    let first = pacer.due(resumed_at).unwrap();
    assert_eq!(
        first,
        Slot {
            sequence: 503,
            timestamp: 1000 + (3 + 50) * 160,
            marker: true
        }
    );
    assert_eq!(pacer.skipped_frames(), 0, "a pause is not a skip");
    assert_eq!(pacer.next_due(), resumed_at + 20 * MS);
    let second = pacer.due(resumed_at + 20 * MS).unwrap();
    assert_eq!(
        (second.sequence, second.timestamp, second.marker),
        (504, 1000 + 54 * 160, false)
    );
}

#[test]
fn a_pause_shorter_than_a_frame_keeps_the_grid() {
    let start = Instant::now();
    let mut pacer = Pacer::new(start, 20, 8000, 0, 0);
    assert_eq!(drain(&mut pacer, start).len(), 1);
    pacer.pause();
    pacer.resume(start + 5 * MS);
    assert_eq!(pacer.due(start + 10 * MS), None);
    let next = pacer.due(start + 20 * MS).unwrap();
    assert_eq!((next.sequence, next.timestamp, next.marker), (1, 160, true));
    // Resuming what is not paused changes nothing.
    pacer.resume(start + 30 * MS);
    assert!(!pacer.due(start + 40 * MS).unwrap().marker);
}

proptest! {
    #[test]
    fn any_call_pattern_keeps_the_stream_continuous(
        gaps_us in proptest::collection::vec(0u64..200_000, 1..300),
        ptime_ms in prop::sample::select(vec![10u32, 20, 30]),
        first_sequence in any::<u16>(),
        first_timestamp in any::<u32>(),
    ) {
        let start = Instant::now();
        let samples = ptime_ms * 8;
        let mut pacer = Pacer::new(start, ptime_ms, 8000, first_sequence, first_timestamp);
        let mut now = start;
        let mut previous: Option<Slot> = None;
        let mut count = 0u16;
        for gap in gaps_us {
            now += Duration::from_micros(gap);
            let slots = drain(&mut pacer, now);
            prop_assert!(slots.len() as u64 <= MAX_BURST);
            for slot in slots {
                prop_assert_eq!(slot.sequence, first_sequence.wrapping_add(count));
                let frames = slot.timestamp.wrapping_sub(first_timestamp) / samples;
                prop_assert_eq!(slot.timestamp.wrapping_sub(first_timestamp) % samples, 0);
                // Never before its time on the grid.
                prop_assert!(start + Duration::from_millis(u64::from(frames * ptime_ms)) <= now);
                if let Some(before) = previous {
                    let step = slot.timestamp.wrapping_sub(before.timestamp);
                    prop_assert!(step >= samples);
                    // A timing jump comes with the marker, and only then.
                    prop_assert_eq!(slot.marker, step > samples);
                } else {
                    prop_assert!(slot.marker);
                }
                previous = Some(slot);
                count = count.wrapping_add(1);
            }
            prop_assert!(pacer.next_due() > now);
        }
    }
}
