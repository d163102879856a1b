//! Criterion benches of the conference mixer's tick, G.711 included: each
//! participant's payload decoded ([`Mixer::push_payload`]), the N−1 mix,
//! and every payload to send encoded (inside [`Mixer::tick`]); the
//! outputs are read as a sender would. Two shapes from issue 18: 50
//! rooms of 10 (500 participants) and one room of 200.
//!
//! Every participant talks (a different tone each) in the `all_talking`
//! cases, the worst case: each one is sent its own N−1 payload. In the
//! `three_talking` cases three per room talk and the rest share one
//! encoded full mix per law, as in a real meeting.
//!
//! ```text
//! cargo bench -p dialtone-media --bench mixer
//! ```
//!
//! The figure to read is the time per iteration divided by the
//! participants (criterion's throughput, in elements/s, is participants
//! mixed per second of one core): one tick every 20 ms must take well
//! under 20 ms for all of them.
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dialtone_media::g711::{self, Law};
use dialtone_media::mixer::{Mixer, ParticipantId, FRAME_SAMPLES};
use dialtone_media::tone;

struct Room {
    mixer: Mixer,
    members: Vec<(ParticipantId, Law, Vec<u8>)>,
}

/// A room of `size`, alternating µ-law and A-law, the first `talkers`
/// sending a tone each (the others send nothing this tick).
fn room(size: usize, talkers: usize, seed: usize) -> Room {
    let mut mixer = Mixer::new();
    let members = (0..size)
        .map(|n| {
            let law = if n % 2 == 0 { Law::Mu } else { Law::A };
            let id = mixer.add(law);
            let samples = tone::sine(300.0 + (seed * 7 + n) as f64 * 13.0, 4000, 20, 8000);
            let mut payload = Vec::with_capacity(FRAME_SAMPLES);
            g711::encode_into(law, &samples, &mut payload);
            (id, law, if n < talkers { payload } else { Vec::new() })
        })
        .collect();
    Room { mixer, members }
}

/// One tick of a room: push, mix, read every output.
fn tick(room: &mut Room) -> u64 {
    for (id, law, payload) in &room.members {
        if !payload.is_empty() {
            room.mixer.push_payload(*id, *law, payload);
        }
    }
    room.mixer.tick();
    let mut check = 0u64;
    for (id, _, _) in &room.members {
        if let Some(output) = room.mixer.output(*id) {
            check += u64::from(output[0]);
        }
    }
    check += room.mixer.mix()[0] as u64;
    check
}

fn bench_ticks(c: &mut Criterion) {
    let mut group = c.benchmark_group("mixer_tick");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    for (name, rooms, size, talkers) in [
        ("50x10_all_talking", 50, 10, 10),
        ("50x10_three_talking", 50, 10, 3),
        ("1x200_all_talking", 1, 200, 200),
        ("1x200_three_talking", 1, 200, 3),
    ] {
        let mut all: Vec<Room> = (0..rooms).map(|r| room(size, talkers, r)).collect();
        // Warm-up: the first tick sizes nothing, but let it run once.
        for room in &mut all {
            tick(room);
        }
        group.throughput(Throughput::Elements((rooms * size) as u64));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                let mut check = 0u64;
                for room in &mut all {
                    check += tick(room);
                }
                black_box(check)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_ticks);
criterion_main!(benches);
