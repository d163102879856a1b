//! The conference mixer on synthetic frames: N−1 exactly on small integer
//! signals, saturation, participants without a frame, µ-law and A-law
//! together, mute, prompts, talk detection's hysteresis; and, as a
//! property, every output is the clamped sum of the others within G.711's
//! quantisation.
use dialtone_media::g711::{self, Law};
use dialtone_media::mixer::{
    Mixer, ParticipantId, Talk, FRAME_SAMPLES, TALK_START_FRAMES, TALK_STOP_FRAMES,
};
use proptest::prelude::*;

fn decoded(mixer: &Mixer, id: ParticipantId) -> Vec<i16> {
    let law = mixer.law(id).unwrap();
    let mut out = Vec::new();
    g711::decode_into(law, mixer.output(id).unwrap(), &mut out);
    out
}

/// What a law makes of a sample: the exact output for an exact input.
fn through(law: Law, sample: i32) -> i16 {
    let clamped = sample.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
    law.decode(law.encode(clamped))
}

fn constant(value: i16) -> [i16; FRAME_SAMPLES] {
    [value; FRAME_SAMPLES]
}

#[test]
fn each_participant_hears_the_others_and_not_itself() {
    // Small integers a law keeps exactly would need no quantisation at
    // all; these go through it, so each output is compared with the
    // sum of the others through the same law.
    let mut mixer = Mixer::new();
    let ids: Vec<ParticipantId> = (0..4).map(|_| mixer.add(Law::Mu)).collect();
    let levels = [1000i16, 2000, 4000, 8000];
    for (&id, &level) in ids.iter().zip(&levels) {
        assert!(mixer.push_frame(id, &constant(level)));
    }
    mixer.tick();
    let total: i32 = levels.iter().map(|&l| i32::from(l)).sum();
    for (&id, &level) in ids.iter().zip(&levels) {
        let expected = through(Law::Mu, total - i32::from(level));
        assert!(
            decoded(&mixer, id).iter().all(|&s| s == expected),
            "{id}: expected {expected}"
        );
    }
    assert_eq!(mixer.mix(), &constant(15_000)[..]);
}

#[test]
fn n_minus_one_is_exact_on_small_signals_per_sample() {
    // Every sample differs, and the A-law codes of these small values
    // are 16 apart: each output sample is the others' sum, coded.
    let mut mixer = Mixer::new();
    let a = mixer.add(Law::A);
    let b = mixer.add(Law::A);
    let c = mixer.add(Law::A);
    let ramp: Vec<i16> = (0..FRAME_SAMPLES as i16).map(|n| n * 3).collect();
    let negative: Vec<i16> = ramp.iter().map(|&s| -s).collect();
    mixer.push_frame(a, &ramp);
    mixer.push_frame(b, &negative);
    mixer.push_frame(c, &constant(5));
    mixer.tick();
    // a and b cancel: c hears exact silence, a hears b + c, b hears a + c.
    assert!(decoded(&mixer, c)
        .iter()
        .all(|&s| s == Law::A.decode(Law::A.encode(0))));
    for n in 0..FRAME_SAMPLES {
        let expected_a = through(Law::A, i32::from(negative[n]) + 5);
        let expected_b = through(Law::A, i32::from(ramp[n]) + 5);
        assert_eq!(decoded(&mixer, a)[n], expected_a, "a at {n}");
        assert_eq!(decoded(&mixer, b)[n], expected_b, "b at {n}");
        assert_eq!(mixer.mix()[n], 5, "the mix at {n}");
    }
}

#[test]
fn loud_sums_saturate_and_never_wrap() {
    let mut mixer = Mixer::new();
    let ids: Vec<ParticipantId> = (0..3).map(|_| mixer.add(Law::Mu)).collect();
    for &id in &ids {
        mixer.push_frame(id, &constant(30_000));
    }
    let quiet = mixer.add(Law::Mu);
    mixer.push_frame(quiet, &constant(-20_000));
    mixer.tick();
    // 90 000 - 20 000 = 70 000: the mix saturates at i16::MAX.
    assert!(mixer.mix().iter().all(|&s| s == i16::MAX));
    // Each loud one hears 60 000 - 20 000 = 40 000: saturated, positive.
    for &id in &ids {
        assert!(decoded(&mixer, id).iter().all(|&s| s == 32_124), "{id}");
    }
    // The quiet one hears 90 000: positive full scale, not a wrap to
    // -(2^16 - 90 000).
    assert!(decoded(&mixer, quiet).iter().all(|&s| s == 32_124));

    let mut mixer = Mixer::new();
    let ids: Vec<ParticipantId> = (0..3).map(|_| mixer.add(Law::A)).collect();
    for &id in &ids {
        mixer.push_frame(id, &constant(-30_000));
    }
    mixer.tick();
    assert!(mixer.mix().iter().all(|&s| s == i16::MIN));
    for &id in &ids {
        assert!(decoded(&mixer, id).iter().all(|&s| s == -32_256), "{id}");
    }
}

#[test]
fn a_participant_without_a_frame_contributes_nothing_and_hears_everyone() {
    let mut mixer = Mixer::new();
    let talker = mixer.add(Law::Mu);
    let other = mixer.add(Law::Mu);
    let silent = mixer.add(Law::Mu);
    mixer.push_frame(talker, &constant(1000));
    mixer.push_frame(other, &constant(3000));
    mixer.tick();
    assert_eq!(decoded(&mixer, talker), constant(through(Law::Mu, 3000)));
    assert_eq!(decoded(&mixer, other), constant(through(Law::Mu, 1000)));
    assert_eq!(decoded(&mixer, silent), constant(through(Law::Mu, 4000)));
    // The next tick without any frame: silence for everyone, and no
    // frame of the last tick is reused.
    mixer.tick();
    for id in [talker, other, silent] {
        assert_eq!(decoded(&mixer, id), constant(0), "{id}");
    }
    assert_eq!(mixer.mix(), &constant(0)[..]);
    assert_eq!(mixer.ticks(), 2);
}

#[test]
fn participants_that_contributed_nothing_share_one_payload_per_law() {
    let mut mixer = Mixer::new();
    let talker = mixer.add(Law::Mu);
    let listeners_mu = [mixer.add(Law::Mu), mixer.add(Law::Mu)];
    let listeners_a = [mixer.add(Law::A), mixer.add(Law::A)];
    mixer.push_frame(talker, &constant(2500));
    mixer.tick();
    let shared_mu = mixer.output(listeners_mu[0]).unwrap().as_ptr();
    assert_eq!(mixer.output(listeners_mu[1]).unwrap().as_ptr(), shared_mu);
    let shared_a = mixer.output(listeners_a[0]).unwrap().as_ptr();
    assert_eq!(mixer.output(listeners_a[1]).unwrap().as_ptr(), shared_a);
    assert_ne!(shared_a, shared_mu);
    assert_ne!(mixer.output(talker).unwrap().as_ptr(), shared_mu);
}

#[test]
fn mu_law_and_a_law_participants_mix_in_one_room() {
    let mut mixer = Mixer::new();
    let mu = mixer.add(Law::Mu);
    let a = mixer.add(Law::A);
    let listener_a = mixer.add(Law::A);
    // What each sends is coded in its own law: the room decodes it.
    let mu_payload = [Law::Mu.encode(1200); FRAME_SAMPLES];
    let a_payload = [Law::A.encode(-700); FRAME_SAMPLES];
    mixer.push_payload(mu, Law::Mu, &mu_payload);
    mixer.push_payload(a, Law::A, &a_payload);
    mixer.tick();
    let from_mu = i32::from(Law::Mu.decode(mu_payload[0]));
    let from_a = i32::from(Law::A.decode(a_payload[0]));
    assert_eq!(decoded(&mixer, mu), constant(through(Law::Mu, from_a)));
    assert_eq!(decoded(&mixer, a), constant(through(Law::A, from_mu)));
    assert_eq!(
        decoded(&mixer, listener_a),
        constant(through(Law::A, from_mu + from_a))
    );
    // The µ-law participant's payload is µ-law codes, the others' A-law.
    assert_eq!(mixer.output(mu).unwrap()[0], Law::Mu.encode(from_a as i16));
    assert_eq!(mixer.output(a).unwrap()[0], Law::A.encode(from_mu as i16));
}

#[test]
fn a_muted_participant_is_heard_by_no_one_and_still_hears() {
    let mut mixer = Mixer::new();
    let muted = mixer.add(Law::Mu);
    let other = mixer.add(Law::Mu);
    assert!(mixer.set_heard(muted, false));
    assert_eq!(mixer.is_heard(muted), Some(false));
    mixer.push_frame(muted, &constant(5000));
    mixer.push_frame(other, &constant(700));
    mixer.tick();
    assert_eq!(decoded(&mixer, other), constant(0));
    assert_eq!(decoded(&mixer, muted), constant(through(Law::Mu, 700)));
    assert_eq!(mixer.mix(), &constant(700)[..]);
    mixer.set_heard(muted, true);
    mixer.push_frame(muted, &constant(5000));
    mixer.tick();
    assert_eq!(decoded(&mixer, other), constant(through(Law::Mu, 5000)));
}

#[test]
fn a_private_frame_is_heard_only_by_its_participant_and_room_audio_by_all() {
    let mut mixer = Mixer::new();
    let joining = mixer.add(Law::Mu);
    let talker = mixer.add(Law::Mu);
    let listener = mixer.add(Law::Mu);
    mixer.push_frame(talker, &constant(1000));
    mixer.push_private(joining, &constant(2000));
    mixer.push_room(&constant(-300));
    mixer.tick();
    assert_eq!(decoded(&mixer, joining), constant(through(Law::Mu, 2700)));
    assert_eq!(decoded(&mixer, talker), constant(through(Law::Mu, -300)));
    assert_eq!(decoded(&mixer, listener), constant(through(Law::Mu, 700)));
    // The recording holds the room's audio, not the private prompt.
    assert_eq!(mixer.mix(), &constant(700)[..]);
}

#[test]
fn a_participant_that_does_not_hear_the_room_hears_only_its_private_frames() {
    // A caller in the lobby (entering a PIN): muted and deaf to the room,
    // hearing its prompt alone; back in the room it hears everyone.
    let mut mixer = Mixer::new();
    let lobby = mixer.add(Law::Mu);
    let talker = mixer.add(Law::Mu);
    assert!(mixer.set_hears(lobby, false));
    mixer.set_heard(lobby, false);
    mixer.push_frame(talker, &constant(1000));
    mixer.push_frame(lobby, &constant(3000));
    mixer.tick();
    assert_eq!(decoded(&mixer, lobby), constant(through(Law::Mu, 0)));
    assert_eq!(decoded(&mixer, talker), constant(0));
    mixer.push_frame(talker, &constant(1000));
    mixer.push_private(lobby, &constant(2000));
    mixer.push_room(&constant(-300));
    mixer.tick();
    assert_eq!(decoded(&mixer, lobby), constant(through(Law::Mu, 2000)));
    assert_eq!(decoded(&mixer, talker), constant(through(Law::Mu, -300)));
    assert!(mixer.set_hears(lobby, true));
    mixer.set_heard(lobby, true);
    mixer.push_frame(talker, &constant(1000));
    mixer.push_frame(lobby, &constant(3000));
    mixer.tick();
    assert_eq!(decoded(&mixer, lobby), constant(through(Law::Mu, 1000)));
    assert_eq!(decoded(&mixer, talker), constant(through(Law::Mu, 3000)));
}

#[test]
fn short_frames_are_padded_with_silence() {
    let mut mixer = Mixer::new();
    let a = mixer.add(Law::Mu);
    let b = mixer.add(Law::Mu);
    mixer.push_frame(a, &[4000; 80]);
    mixer.tick();
    let heard = decoded(&mixer, b);
    assert!(heard[..80].iter().all(|&s| s == through(Law::Mu, 4000)));
    assert!(heard[80..].iter().all(|&s| s == 0));
    // Too long: cut at a frame.
    mixer.push_frame(a, &[4000; 400]);
    mixer.tick();
    assert_eq!(decoded(&mixer, b).len(), FRAME_SAMPLES);
}

fn talk_run(mixer: &mut Mixer, id: ParticipantId, level: i16, frames: u32) -> Vec<(u32, Talk)> {
    let mut events = Vec::new();
    for frame in 0..frames {
        mixer.push_frame(id, &constant(level));
        mixer.tick();
        while let Some(event) = mixer.poll_talk() {
            events.push((frame, event));
        }
    }
    events
}

#[test]
fn talk_detection_starts_after_three_loud_frames_and_stops_after_half_a_second() {
    let mut mixer = Mixer::new();
    let id = mixer.add(Law::Mu);
    // Two loud frames (a click) and quiet ones: no event.
    assert!(talk_run(&mut mixer, id, 3000, TALK_START_FRAMES - 1).is_empty());
    assert!(talk_run(&mut mixer, id, 10, 5).is_empty());
    // Speech: started at the third frame.
    assert_eq!(
        talk_run(&mut mixer, id, 3000, 50),
        [(TALK_START_FRAMES - 1, Talk::Started(id))]
    );
    assert_eq!(mixer.is_talking(id), Some(true));
    // A 200 ms pause between words does not stop it.
    assert!(talk_run(&mut mixer, id, 10, 10).is_empty());
    assert!(talk_run(&mut mixer, id, 3000, 10).is_empty());
    // Half a second of quiet does, at the 25th quiet frame.
    assert_eq!(
        talk_run(&mut mixer, id, 10, 40),
        [(TALK_STOP_FRAMES - 1, Talk::Stopped(id))]
    );
    // Missing frames count as quiet.
    talk_run(&mut mixer, id, 3000, 3);
    assert_eq!(mixer.is_talking(id), Some(true));
    let mut stopped_at = None;
    for tick in 0..30 {
        mixer.tick();
        if let Some(event) = mixer.poll_talk() {
            assert_eq!(event, Talk::Stopped(id));
            stopped_at = Some(tick);
        }
    }
    assert_eq!(stopped_at, Some(TALK_STOP_FRAMES - 1));
}

#[test]
fn a_muted_participant_talking_is_still_detected() {
    let mut mixer = Mixer::new();
    let id = mixer.add(Law::A);
    mixer.set_heard(id, false);
    assert_eq!(talk_run(&mut mixer, id, 2000, 3), [(2, Talk::Started(id))]);
}

#[test]
fn removing_a_talking_participant_stops_its_talk() {
    let mut mixer = Mixer::new();
    let id = mixer.add(Law::Mu);
    talk_run(&mut mixer, id, 3000, 3);
    assert!(mixer.remove(id));
    assert_eq!(mixer.poll_talk(), Some(Talk::Stopped(id)));
    assert_eq!(mixer.poll_talk(), None);
    assert!(mixer.is_empty());
}

#[derive(Debug, Clone)]
struct Member {
    law: Law,
    heard: bool,
    frame: Option<Vec<i16>>,
}

fn member() -> impl Strategy<Value = Member> {
    (
        prop::sample::select(vec![Law::Mu, Law::A]),
        prop::bool::weighted(0.8),
        prop::option::weighted(
            0.8,
            prop::collection::vec(any::<i16>(), FRAME_SAMPLES..=FRAME_SAMPLES),
        ),
    )
        .prop_map(|(law, heard, frame)| Member { law, heard, frame })
}

/// Half a G.711 quantisation step around `sample`, with room for µ-law's
/// clipping at ±32124 (A-law's at ±32256): codes sit at the middle of
/// their interval, and intervals are at most 1/16 of the magnitude wide
/// (plus the smallest segment's step).
fn quantisation_bound(sample: i32) -> i32 {
    let clipped = sample.clamp(-32_124, 32_124);
    (sample - clipped).abs() + clipped.abs() / 32 + 16
}

proptest! {
    #[test]
    fn every_output_is_the_clamped_sum_of_the_others(
        ticks in prop::collection::vec(prop::collection::vec(member(), 1..12), 1..4),
    ) {
        // The same room across ticks, so that buffers reused between
        // ticks are covered too; members beyond the first tick's count
        // join later.
        let mut mixer = Mixer::new();
        let mut ids: Vec<ParticipantId> = Vec::new();
        let mut laws: Vec<Law> = Vec::new();
        for members in &ticks {
            while ids.len() < members.len() {
                let law = members[ids.len()].law;
                ids.push(mixer.add(law));
                laws.push(law);
            }
            for (i, id) in ids.iter().enumerate() {
                let Some(m) = members.get(i) else { continue };
                mixer.set_heard(*id, m.heard);
                if let Some(frame) = &m.frame {
                    mixer.push_frame(*id, frame);
                }
            }
            mixer.tick();
            let heard_frame = |i: usize, n: usize| -> i32 {
                members.get(i).filter(|m| m.heard).and_then(|m| m.frame.as_ref())
                    .map_or(0, |f| i32::from(f[n]))
            };
            for n in 0..FRAME_SAMPLES {
                let total: i32 = (0..ids.len()).map(|i| heard_frame(i, n)).sum();
                prop_assert_eq!(
                    i32::from(mixer.mix()[n]),
                    total.clamp(i32::from(i16::MIN), i32::from(i16::MAX))
                );
                for (i, id) in ids.iter().enumerate() {
                    let others = total - heard_frame(i, n);
                    let clamped = others.clamp(i32::from(i16::MIN), i32::from(i16::MAX));
                    let code = mixer.output(*id).unwrap()[n];
                    // Exactly the clamped sum, coded in its own law ...
                    prop_assert_eq!(code, laws[i].encode(clamped as i16), "{} at {}", id, n);
                    // ... which decodes to it within the quantisation.
                    let back = i32::from(laws[i].decode(code));
                    prop_assert!(
                        (back - others.clamp(-32_768, 32_767)).abs() <= quantisation_bound(clamped),
                        "{} at {}: {} heard as {}", id, n, others, back
                    );
                }
            }
        }
    }
}
