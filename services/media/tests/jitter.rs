//! The jitter buffer under simulated networks (seeded, deterministic):
//! delay, loss, duplication, reordering, late packets, timeline jumps,
//! silence suppression; and arbitrary arrival orders.

use dialtone_media::jitter::{JitterBuffer, JitterConfig, JitterStats, Push};
use proptest::prelude::*;
use std::time::{Duration, Instant};

const MS: Duration = Duration::from_millis(1);
const US: Duration = Duration::from_micros(1);
const FRAME: usize = 160;

/// Seeds that once failed stay here (none has yet).
const REGRESSIONS: &[u64] = &[];

/// The value of the stream's sample number `index`: never zero, so that a
/// zero in the output is a missing sample, and each value says where it
/// belongs.
fn value(index: usize) -> i16 {
    (index % 30_000 + 1) as i16
}

fn packet(number: usize, samples: usize) -> Vec<i16> {
    (number * samples..(number + 1) * samples)
        .map(value)
        .collect()
}

/// Deterministic xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn chance_percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

struct Run {
    output: Vec<i16>,
    stats: JitterStats,
    delivered: Vec<bool>,
    duplicates_sent: u64,
}

/// Sends `count` 20 ms packets over a network with 0-`max_delay_ms`
/// delay, 5% loss and 2% duplication (each copy with its own delay, so
/// packets also reorder); a consumer pops every 5 ms and flushes at the end.
fn simulate(seed: u64, count: usize, max_delay_ms: u64, first_timestamp: u32) -> Run {
    let mut rng = Rng(seed.max(1));
    let t0 = Instant::now();
    let mut events = Vec::new();
    let mut delivered = vec![false; count];
    let mut duplicates_sent = 0;
    for (number, delivered) in delivered.iter_mut().enumerate() {
        let sent = t0 + 20 * MS * number as u32;
        if rng.chance_percent(5) {
            continue;
        }
        *delivered = true;
        events.push((
            sent + US * rng.below(max_delay_ms * 1000 + 1) as u32,
            number,
        ));
        if rng.chance_percent(2) {
            duplicates_sent += 1;
            events.push((
                sent + US * rng.below(max_delay_ms * 1000 + 1) as u32,
                number,
            ));
        }
    }
    events.sort();
    let mut buffer = JitterBuffer::new(JitterConfig::default());
    let mut output = Vec::new();
    let mut next_event = events.iter().peekable();
    let mut now = t0;
    let end = t0 + 20 * MS * count as u32 + 200 * MS;
    while now <= end {
        while let Some(&&(arrival, number)) = next_event.peek() {
            if arrival > now {
                break;
            }
            let timestamp = first_timestamp.wrapping_add((number * FRAME) as u32);
            let outcome = buffer.push(timestamp, &packet(number, FRAME), false, arrival);
            assert!(
                matches!(outcome, Push::Accepted | Push::Duplicate),
                "seed {seed}: packet {number}: {outcome:?}"
            );
            next_event.next();
        }
        while let Some(frame) = buffer.pop(now) {
            assert_eq!(frame.samples.len(), FRAME);
            output.extend_from_slice(frame.samples);
        }
        now += 5 * MS;
    }
    while let Some(frame) = buffer.flush() {
        output.extend_from_slice(frame.samples);
    }
    Run {
        output,
        stats: buffer.stats(),
        delivered,
        duplicates_sent,
    }
}

/// Where sample 0 of the stream is in the output, from the first sample
/// heard; and a check that every sample heard is at its place.
fn check_positions(output: &[i16]) -> i64 {
    let (first_at, &first) = output.iter().enumerate().find(|(_, &s)| s != 0).unwrap();
    let lead = first_at as i64 - i64::from(first - 1);
    for (at, &sample) in output.iter().enumerate() {
        if sample != 0 {
            let index = at as i64 - lead;
            assert!(index >= 0, "sample {sample} at {at} before the stream");
            assert_eq!(sample, value(index as usize), "output position {at}");
        }
    }
    lead
}

fn check_run(seed: u64, run: &Run) {
    let lead = check_positions(&run.output);
    let first = run.delivered.iter().position(|&d| d).unwrap();
    let last = run.delivered.iter().rposition(|&d| d).unwrap();
    for (number, &delivered) in run.delivered.iter().enumerate() {
        let at = (number * FRAME) as i64 + lead;
        let heard = usize::try_from(at)
            .ok()
            .and_then(|at| run.output.get(at..at + FRAME));
        if delivered {
            // Played, exactly once (values are unique within the output),
            // at its place.
            assert_eq!(
                heard,
                Some(&packet(number, FRAME)[..]),
                "seed {seed}: packet {number}"
            );
        } else if (first..last).contains(&number) {
            assert_eq!(
                heard,
                Some(&[0i16; FRAME][..]),
                "seed {seed}: lost {number}"
            );
        }
    }
    let lost_inside = (first..last).filter(|&n| !run.delivered[n]).count() as u64;
    // A lost packet is concealment when the next one had come by its
    // playout time (always, with delays below the target); in a burst of
    // losses the first ones may be taken for silence.
    let lost_before_delivered = (first..last)
        .filter(|&n| !run.delivered[n] && run.delivered[n + 1])
        .count() as u64;
    let delivered = run.delivered.iter().filter(|&&d| d).count() as u64;
    let stats = run.stats;
    assert!(
        stats.samples_concealed >= lost_before_delivered * FRAME as u64,
        "seed {seed}"
    );
    assert!(
        stats.samples_concealed <= lost_inside * FRAME as u64,
        "seed {seed}"
    );
    assert_eq!(stats.late_packets, 0, "seed {seed}");
    assert_eq!(stats.duplicate_packets, run.duplicates_sent, "seed {seed}");
    assert_eq!(stats.resets, 0, "seed {seed}");
    assert_eq!(stats.frames_played as usize * FRAME, run.output.len());
    assert_eq!(
        stats.frames_played * FRAME as u64,
        delivered * FRAME as u64 + stats.samples_concealed + stats.samples_silent,
        "seed {seed}: every sample played is heard, concealed or silent"
    );
}

#[test]
fn delay_loss_duplication_and_reordering_within_the_target() {
    let seeds: Vec<u64> = (1..=20).chain(REGRESSIONS.iter().copied()).collect();
    for seed in seeds {
        // Timestamps start near the wrap: the stream crosses it.
        let run = simulate(seed, 500, 40, u32::MAX - 160 * 200);
        assert!(
            run.delivered.iter().filter(|&&d| !d).count() > 5,
            "seed {seed}: losses"
        );
        check_run(seed, &run);
    }
}

#[test]
fn the_output_keeps_wall_time() {
    let run = simulate(7, 500, 40, 0);
    // Popped every 5 ms for 10.2 s from the first arrival's frame (due at
    // 60-100 ms): every 20 ms of it is one frame.
    let frames = run.stats.frames_played;
    assert!((502..=507).contains(&frames), "{frames}");
}

#[test]
fn a_packet_later_than_its_playout_is_counted_late_not_played() {
    let t0 = Instant::now();
    let mut buffer = JitterBuffer::new(JitterConfig::default());
    let mut output = Vec::new();
    let mut outcomes = Vec::new();
    for tick in 0..200u32 {
        let now = t0 + 5 * MS * tick;
        if tick % 4 == 0 && tick / 4 < 40 {
            let number = (tick / 4) as usize;
            if number != 10 && number != 20 {
                outcomes.push(buffer.push(
                    (number * FRAME) as u32,
                    &packet(number, FRAME),
                    false,
                    now,
                ));
            }
        }
        // Packet 10 comes 200 ms late (its frame played at 260 ms), packet
        // 20 400 ms late: beyond the window, a straggler, not a new
        // timeline.
        if now == t0 + 400 * MS {
            outcomes.push(buffer.push(10 * FRAME as u32, &packet(10, FRAME), false, now));
        }
        if now == t0 + 800 * MS {
            outcomes.push(buffer.push(20 * FRAME as u32, &packet(20, FRAME), false, now));
        }
        while let Some(frame) = buffer.pop(now) {
            output.extend_from_slice(frame.samples);
        }
    }
    assert_eq!(outcomes.iter().filter(|&&o| o == Push::Late).count(), 2);
    assert!(outcomes
        .iter()
        .all(|&o| o == Push::Accepted || o == Push::Late));
    let lead = check_positions(&output);
    assert_eq!(lead, 0);
    assert_eq!(&output[10 * FRAME..11 * FRAME], &[0; FRAME][..]);
    assert_eq!(&output[20 * FRAME..21 * FRAME], &[0; FRAME][..]);
    assert_eq!(&output[11 * FRAME..12 * FRAME], &packet(11, FRAME)[..]);
    let stats = buffer.stats();
    assert_eq!(stats.late_packets, 2);
    assert_eq!(stats.samples_concealed, 2 * FRAME as u64);
    assert_eq!(stats.resets, 0);
}

#[test]
fn packets_of_any_size_land_at_their_place() {
    // 10, 20 and 30 ms packets mixed, pushed out of order.
    let t0 = Instant::now();
    let mut buffer = JitterBuffer::new(JitterConfig::default());
    let sizes = [80usize, 240, 160, 80, 240, 160, 160, 80];
    let mut starts = Vec::new();
    let mut at = 0;
    for size in sizes {
        starts.push(at);
        at += size;
    }
    let total = at;
    for i in [1usize, 0, 3, 2, 5, 4, 7, 6] {
        let samples: Vec<i16> = (starts[i]..starts[i] + sizes[i]).map(value).collect();
        assert_eq!(
            buffer.push(starts[i] as u32 + 1000, &samples, false, t0),
            Push::Accepted
        );
    }
    let mut output = Vec::new();
    let mut missing = 0;
    while let Some(frame) = buffer.flush() {
        missing += frame.missing_samples;
        output.extend_from_slice(frame.samples);
    }
    // The first packet to arrive was the second one, 80 samples in: the
    // start moved back by one frame, on the frame grid, so the stream
    // starts 80 samples into the first frame.
    let expected: Vec<i16> = (0..total).map(value).collect();
    assert_eq!(total, 1200);
    assert_eq!(output.len(), 8 * FRAME);
    assert_eq!(&output[80..], &expected[..]);
    assert_eq!(missing, 80);
    assert_eq!(&output[..80], &[0; 80][..]);
}

#[test]
fn silence_suppression_plays_silence_at_the_clock_and_keeps_real_time() {
    let t0 = Instant::now();
    let mut buffer = JitterBuffer::new(JitterConfig::default());
    let mut output = Vec::new();
    let mut silent_frames_in_gap = 0;
    let mut outcomes = Vec::new();
    for tick in 0..=200u32 {
        let now = t0 + 20 * MS * tick;
        // Talk for 1 s, nothing for 2 s (DTX: the timestamps go on), talk
        // again from 3 s with the marker bit.
        let talking = tick < 50 || (150..190).contains(&tick);
        if talking {
            let number = tick as usize;
            outcomes.push(buffer.push(
                (number * FRAME) as u32,
                &packet(number, FRAME),
                tick == 150,
                now,
            ));
        }
        while let Some(frame) = buffer.pop(now) {
            if (50..150).contains(&(output.len() / FRAME)) {
                assert_eq!(frame.missing_samples, FRAME);
                silent_frames_in_gap += 1;
            }
            output.extend_from_slice(frame.samples);
        }
    }
    assert!(
        outcomes.iter().all(|&o| o == Push::Accepted),
        "no reset: {outcomes:?}"
    );
    assert_eq!(silent_frames_in_gap, 100);
    assert_eq!(check_positions(&output), 0);
    // The second talkspurt is exactly 3 s in.
    assert_eq!(&output[150 * FRAME..151 * FRAME], &packet(150, FRAME)[..]);
    let stats = buffer.stats();
    // The gap, and the 8 frames after the second talkspurt ended.
    assert_eq!(stats.samples_silent, 108 * FRAME as u64);
    assert_eq!(stats.samples_concealed, 0);
    // 200 ticks of 20 ms from the first frame at 60 ms: 198 frames.
    assert_eq!(stats.frames_played, 198);
}

/// One second of stream A from 0 s, then a stream B whose timestamps are
/// elsewhere, from 1 s; each packet on time, popped every 20 ms.
fn jump(b_first_timestamp: u32, marker: bool) -> (Vec<i16>, Vec<Push>, JitterStats) {
    let t0 = Instant::now();
    let mut buffer = JitterBuffer::new(JitterConfig::default());
    let mut output = Vec::new();
    let mut outcomes = Vec::new();
    for tick in 0..100u32 {
        let now = t0 + 20 * MS * tick;
        let number = tick as usize;
        let timestamp = if tick < 50 {
            50_000 + (number * FRAME) as u32
        } else {
            b_first_timestamp.wrapping_add(((number - 50) * FRAME) as u32)
        };
        outcomes.push(buffer.push(timestamp, &packet(number, FRAME), marker && tick == 50, now));
        while let Some(frame) = buffer.pop(now) {
            output.extend_from_slice(frame.samples);
        }
    }
    while let Some(frame) = buffer.flush() {
        output.extend_from_slice(frame.samples);
    }
    (output, outcomes, buffer.stats())
}

#[test]
fn a_jump_far_ahead_resets_and_the_new_timeline_follows_in_wall_time() {
    let (output, outcomes, stats) = jump(50_000 + 8000 + 10_000_000, false);
    assert_eq!(outcomes[50], Push::Reset);
    assert_eq!(outcomes.iter().filter(|&&o| o == Push::Reset).count(), 1);
    assert_eq!(stats.resets, 1);
    // B's first packet arrived at 1 s and plays 60 ms later, right after
    // A's last sample: nothing of A is lost, B is continuous.
    assert_eq!(check_positions(&output), 0);
    assert_eq!(output.len(), 100 * FRAME);
    assert!(output.iter().all(|&s| s != 0));
    assert_eq!(stats.samples_concealed + stats.samples_silent, 0);
}

#[test]
fn a_jump_far_behind_resets_with_the_marker_or_when_confirmed() {
    let (output, outcomes, stats) = jump(50_000u32.wrapping_sub(100_000), true);
    assert_eq!(outcomes[50], Push::Reset);
    assert_eq!(stats.resets, 1);
    assert_eq!(stats.late_packets, 0);
    assert_eq!(check_positions(&output), 0);
    assert!(output.iter().all(|&s| s != 0));

    // Without the marker the first packet is a straggler; the second,
    // continuing it, confirms the jump.
    let (output, outcomes, stats) = jump(50_000u32.wrapping_sub(100_000), false);
    assert_eq!((outcomes[50], outcomes[51]), (Push::Late, Push::Reset));
    assert_eq!((stats.resets, stats.late_packets), (1, 1));
    check_positions(&output);
    assert_eq!(&output[51 * FRAME..52 * FRAME], &packet(51, FRAME)[..]);
    assert_eq!(&output[50 * FRAME..51 * FRAME], &[0; FRAME][..]);
    assert_eq!(
        stats.samples_silent, FRAME as u64,
        "the gap before the new timeline"
    );
}

#[test]
fn a_small_jump_within_the_window_is_not_a_reset() {
    // 200 ms ahead (a sender that skipped frames, like our pacer does).
    let (output, outcomes, stats) = jump(50_000 + 8000 + 1600, false);
    assert!(outcomes.iter().all(|&o| o == Push::Accepted));
    assert_eq!(stats.resets, 0);
    assert_eq!(&output[49 * FRAME..50 * FRAME], &packet(49, FRAME)[..]);
    assert_eq!(&output[50 * FRAME..60 * FRAME], &[0; 10 * FRAME][..]);
    assert_eq!(&output[60 * FRAME..61 * FRAME], &packet(50, FRAME)[..]);
    assert_eq!(&output[109 * FRAME..110 * FRAME], &packet(99, FRAME)[..]);
}

proptest! {
    #[test]
    fn any_arrival_order_of_a_window_plays_the_stream_once_in_order(
        order in proptest::collection::vec(0usize..10, 1..40),
        // Ten packets of up to 30 ms: the window (300 ms) holds them all.
        sizes in proptest::collection::vec(prop::sample::select(vec![80usize, 160, 240]), 10),
        first_timestamp in any::<u32>(),
    ) {
        let t0 = Instant::now();
        let mut buffer = JitterBuffer::new(JitterConfig::default());
        let mut starts = Vec::new();
        let mut at = 0;
        for &size in &sizes {
            starts.push(at);
            at += size;
        }
        let mut pushed = vec![false; sizes.len()];
        for &i in &order {
            let samples: Vec<i16> = (starts[i]..starts[i] + sizes[i]).map(value).collect();
            let timestamp = first_timestamp.wrapping_add(starts[i] as u32);
            let outcome = buffer.push(timestamp, &samples, false, t0);
            let expected = if pushed[i] { Push::Duplicate } else { Push::Accepted };
            prop_assert_eq!(outcome, expected);
            pushed[i] = true;
        }
        let mut output = Vec::new();
        while let Some(frame) = buffer.flush() {
            prop_assert_eq!(frame.samples.len(), FRAME);
            output.extend_from_slice(frame.samples);
        }
        let lead = check_positions(&output);
        for (i, _) in pushed.iter().enumerate().filter(|(_, &p)| p) {
            let place = usize::try_from(starts[i] as i64 + lead).unwrap();
            let expected: Vec<i16> = (starts[i]..starts[i] + sizes[i]).map(value).collect();
            prop_assert_eq!(output.get(place..place + sizes[i]), Some(&expected[..]));
        }
        let stats = buffer.stats();
        prop_assert_eq!(stats.late_packets + stats.resets, 0);
        prop_assert_eq!(stats.duplicate_packets as usize, order.len() - pushed.iter().filter(|&&p| p).count());
    }

    #[test]
    fn arbitrary_packets_never_panic_and_frames_are_whole(
        packets in proptest::collection::vec(
            (any::<u32>(), 0usize..1000, any::<bool>(), 0u64..2_000_000, 0u64..100_000),
            0..60,
        ),
    ) {
        let t0 = Instant::now();
        let mut buffer = JitterBuffer::new(JitterConfig::default());
        let samples = vec![1i16; 1000];
        let mut now = t0;
        let mut played = 0u64;
        for (timestamp, len, marker, arrival_jitter_us, gap_us) in packets {
            now += Duration::from_micros(gap_us);
            let arrival = now.checked_sub(Duration::from_micros(arrival_jitter_us)).unwrap_or(now);
            let _ = buffer.push(timestamp, &samples[..len], marker, arrival);
            while let Some(frame) = buffer.pop(now) {
                prop_assert_eq!(frame.samples.len(), FRAME);
                prop_assert!(frame.missing_samples <= FRAME);
                prop_assert_eq!(
                    frame.samples.iter().filter(|&&s| s == 0).count(),
                    frame.missing_samples
                );
                played += 1;
            }
        }
        let mut flushed = 0;
        while let Some(frame) = buffer.flush() {
            prop_assert_eq!(frame.samples.len(), FRAME);
            flushed += 1;
            prop_assert!(flushed <= 100, "flush ends");
        }
        let stats = buffer.stats();
        prop_assert_eq!(stats.frames_played, played + flushed);
    }
}
