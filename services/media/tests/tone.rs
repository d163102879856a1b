//! Tone detection on the signals later stages check: a phone's 440 Hz
//! tone, other tones, noise, silence, G.711 round trips.

use dialtone_media::g711::{decode_into, encode_into, Law};
use dialtone_media::tone::{goertzel_power, longest_tone_ms, sine, tone_presence, tone_spans};
use proptest::prelude::*;

/// A deterministic white noise (xorshift32), uniform in ±amplitude.
fn noise(count: usize, amplitude: i32, mut state: u32) -> Vec<i16> {
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let unit = (state % 65_536) as i32 - 32_768;
            (unit * amplitude / 32_768) as i16
        })
        .collect()
}

fn through(law: Law, samples: &[i16]) -> Vec<i16> {
    let mut bytes = Vec::new();
    encode_into(law, samples, &mut bytes);
    let mut decoded = Vec::new();
    decode_into(law, &bytes, &mut decoded);
    decoded
}

#[test]
fn a_440_hz_tone_is_present_in_every_window() {
    for amplitude in [300, 3000, 30_000] {
        let tone = sine(440.0, amplitude, 1000, 8000);
        let presence = tone_presence(&tone, 440.0, 8000, 20);
        assert_eq!(presence.len(), 50);
        assert!(presence.iter().all(|&p| p), "amplitude {amplitude}");
        assert_eq!(longest_tone_ms(&tone, 440.0, 8000, 20), 1000);
    }
}

#[test]
fn a_1_khz_tone_is_not_taken_for_440_hz() {
    let tone = sine(1000.0, 10_000, 1000, 8000);
    assert!(tone_presence(&tone, 440.0, 8000, 20).iter().all(|&p| !p));
    assert!(tone_presence(&tone, 1000.0, 8000, 20).iter().all(|&p| p));
    // Even 100 Hz away, with 50 ms windows (20 Hz bins).
    let near = sine(540.0, 10_000, 1000, 8000);
    assert!(tone_presence(&near, 440.0, 8000, 50).iter().all(|&p| !p));
}

#[test]
fn noise_and_silence_are_not_tones() {
    let loud_noise = noise(8000, 20_000, 0x1234_5678);
    assert!(tone_presence(&loud_noise, 440.0, 8000, 20)
        .iter()
        .all(|&p| !p));
    let silence = vec![0i16; 8000];
    assert!(tone_presence(&silence, 440.0, 8000, 20).iter().all(|&p| !p));
    // A very quiet tone is silence: no level means no tone heard.
    let whisper = sine(440.0, 50, 1000, 8000);
    assert!(tone_presence(&whisper, 440.0, 8000, 20).iter().all(|&p| !p));
    assert_eq!(longest_tone_ms(&loud_noise, 440.0, 8000, 20), 0);
}

#[test]
fn a_tone_in_moderate_noise_is_still_present() {
    let tone = sine(440.0, 10_000, 1000, 8000);
    let hiss = noise(8000, 2000, 99);
    let mixed: Vec<i16> = tone.iter().zip(&hiss).map(|(&t, &n)| t + n).collect();
    assert!(tone_presence(&mixed, 440.0, 8000, 20).iter().all(|&p| p));
}

/// 300 ms of silence, 700 ms of tone, 450 ms of silence, 1 s of tone.
fn tone_silence_tone() -> Vec<i16> {
    let mut signal = vec![0i16; 2400];
    signal.extend(sine(440.0, 8000, 700, 8000));
    signal.extend(vec![0i16; 3600]);
    signal.extend(sine(440.0, 8000, 1000, 8000));
    signal
}

fn assert_spans_near_truth(spans: &[(u32, u32)], window_ms: u32) {
    let truth = [(300, 1000), (1450, 2450)];
    assert_eq!(spans.len(), 2, "{spans:?}");
    for (&(start, end), &(true_start, true_end)) in spans.iter().zip(&truth) {
        assert!(start.abs_diff(true_start) <= window_ms, "{spans:?}");
        assert!(end.abs_diff(true_end) <= window_ms, "{spans:?}");
    }
}

#[test]
fn spans_of_tone_silence_tone_are_within_one_window_of_the_truth() {
    let signal = tone_silence_tone();
    for window_ms in [10, 20, 50] {
        assert_spans_near_truth(&tone_spans(&signal, 440.0, 8000, window_ms), window_ms);
    }
    assert!(longest_tone_ms(&signal, 440.0, 8000, 20).abs_diff(1000) <= 20);
}

#[test]
fn spans_survive_a_g711_round_trip() {
    let signal = tone_silence_tone();
    for law in [Law::Mu, Law::A] {
        let heard = through(law, &signal);
        assert_spans_near_truth(&tone_spans(&heard, 440.0, 8000, 20), 20);
        // The quantisation noise does not take the tone's dominance away.
        let tone = through(law, &sine(440.0, 3000, 20, 8000));
        let share = goertzel_power(&tone, 440.0, 8000)
            / (tone.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / tone.len() as f64);
        assert!(share > 0.95, "{law:?}: {share}");
    }
}

proptest! {
    #[test]
    fn detection_never_panics(
        samples in proptest::collection::vec(any::<i16>(), 0..2000),
        frequency_hz in 0.0f64..20_000.0,
        sample_rate_hz in 0u32..100_000,
        window_ms in 0u32..200,
    ) {
        let presence = tone_presence(&samples, frequency_hz, sample_rate_hz, window_ms);
        let spans = tone_spans(&samples, frequency_hz, sample_rate_hz, window_ms);
        prop_assert!(spans.len() <= presence.len());
        let _ = longest_tone_ms(&samples, frequency_hz, sample_rate_hz, window_ms);
        prop_assert!(goertzel_power(&samples, frequency_hz, sample_rate_hz) >= -1e-6);
    }

    #[test]
    fn a_pure_tone_is_found_whatever_its_frequency_and_level(
        frequency_hz in 300.0f64..3400.0,
        amplitude in 500i16..32_000,
    ) {
        let tone = sine(frequency_hz, amplitude, 200, 8000);
        prop_assert!(tone_presence(&tone, frequency_hz, 8000, 20).iter().all(|&p| p));
    }
}
