//! Tones and their detection: sine generation for beeps and tests, and the
//! Goertzel algorithm (a single DFT bin at any frequency) to tell whether a
//! recording holds a tone, where, and for how long.
//!
//! # What it owns
//! [`sine`] makes a tone; [`goertzel_power`] measures one frequency's
//! power; [`tone_presence`] decides per window whether a tone dominates;
//! [`tone_spans`] and [`longest_tone_ms`] turn that into time spans.
//!
//! A window holds the tone when it is not silence (its RMS is at least
//! [`SILENCE_RMS`]) and the tone's power is at least
//! [`DOMINANCE`] of the window's whole power. A pure tone scores close to
//! 1 whatever its level, white noise about 2/N for N samples, another tone
//! a few hundred Hz away almost 0; G.711's quantisation noise (about 38 dB
//! below the signal) leaves a tone's score above 0.95.
//!
//! # What it must not do
//! Detection reads samples and allocates only its result; it knows no
//! RTP and no codec. It does not detect DTMF (that is signalled as RFC 4733
//! events in [`crate::dtmf`]).

use std::f64::consts::PI;

/// Below this RMS (about -50 dBFS) a window is silence, whatever its
/// spectrum: quantisation noise alone must not count as a tone.
pub const SILENCE_RMS: f64 = 100.0;

/// The share of a window's power the tone must hold to be taken as present.
pub const DOMINANCE: f64 = 0.5;

/// A sine at `frequency_hz` with peak `amplitude`, `duration_ms` long at
/// `sample_rate_hz`, starting at phase 0.
pub fn sine(frequency_hz: f64, amplitude: i16, duration_ms: u32, sample_rate_hz: u32) -> Vec<i16> {
    let count = u64::from(duration_ms) * u64::from(sample_rate_hz) / 1000;
    let step = 2.0 * PI * frequency_hz / f64::from(sample_rate_hz.max(1));
    (0..count)
        .map(|n| {
            let value = f64::from(amplitude) * (step * n as f64).sin();
            value
                .round()
                .clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16
        })
        .collect()
}

/// The power of `frequency_hz` in `samples`, as a mean square in the same
/// unit as the samples' own mean square: a sine of peak A at that
/// frequency gives about A²/2, as its mean square does. The frequency need
/// not fall on a DFT bin (the generalised Goertzel recurrence).
pub fn goertzel_power(samples: &[i16], frequency_hz: f64, sample_rate_hz: u32) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let omega = 2.0 * PI * frequency_hz / f64::from(sample_rate_hz.max(1));
    let coefficient = 2.0 * omega.cos();
    let (mut previous, mut before_previous) = (0.0f64, 0.0f64);
    for &sample in samples {
        let current = f64::from(sample) + coefficient * previous - before_previous;
        before_previous = previous;
        previous = current;
    }
    let magnitude_squared = previous * previous + before_previous * before_previous
        - coefficient * previous * before_previous;
    let count = samples.len() as f64;
    2.0 * magnitude_squared / (count * count)
}

fn mean_square(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    sum / samples.len() as f64
}

/// Whether the tone dominates each whole window of `window_ms` (a last
/// partial window is left out).
pub fn tone_presence(
    samples: &[i16],
    frequency_hz: f64,
    sample_rate_hz: u32,
    window_ms: u32,
) -> Vec<bool> {
    let window_samples = (u64::from(window_ms) * u64::from(sample_rate_hz) / 1000) as usize;
    if window_samples == 0 {
        return Vec::new();
    }
    samples
        .chunks_exact(window_samples)
        .map(|window| {
            let power = mean_square(window);
            power >= SILENCE_RMS * SILENCE_RMS
                && goertzel_power(window, frequency_hz, sample_rate_hz) >= DOMINANCE * power
        })
        .collect()
}

/// The spans `(start_ms, end_ms)` where the tone is present, to a window's
/// precision: consecutive windows that hold it are one span.
pub fn tone_spans(
    samples: &[i16],
    frequency_hz: f64,
    sample_rate_hz: u32,
    window_ms: u32,
) -> Vec<(u32, u32)> {
    let mut spans = Vec::new();
    let mut start = None;
    let presence = tone_presence(samples, frequency_hz, sample_rate_hz, window_ms);
    let mut index = 0u32;
    for present in presence {
        let at_ms = index.saturating_mul(window_ms);
        match (present, start) {
            (true, None) => start = Some(at_ms),
            (false, Some(begin)) => {
                spans.push((begin, at_ms));
                start = None;
            }
            _ => {}
        }
        index += 1;
    }
    if let Some(begin) = start {
        spans.push((begin, index.saturating_mul(window_ms)));
    }
    spans
}

/// The length of the longest span where the tone is present (0 if none).
pub fn longest_tone_ms(
    samples: &[i16],
    frequency_hz: f64,
    sample_rate_hz: u32,
    window_ms: u32,
) -> u32 {
    tone_spans(samples, frequency_hz, sample_rate_hz, window_ms)
        .iter()
        .map(|(start, end)| end - start)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sine_has_the_asked_length_and_peak() {
        let tone = sine(1000.0, 10_000, 20, 8000);
        assert_eq!(tone.len(), 160);
        assert_eq!(tone[0], 0);
        // 1 kHz at 8 kHz: a quarter period is 2 samples.
        assert_eq!(tone[2], 10_000);
        assert_eq!(tone[6], -10_000);
    }

    #[test]
    fn goertzel_power_of_a_sine_is_its_mean_square() {
        let tone = sine(440.0, 8000, 100, 8000);
        let power = goertzel_power(&tone, 440.0, 8000);
        let expected = 8000.0 * 8000.0 / 2.0;
        assert!(
            (power / expected - 1.0).abs() < 0.02,
            "{power} vs {expected}"
        );
        assert_eq!(goertzel_power(&[], 440.0, 8000), 0.0);
    }

    #[test]
    fn spans_of_an_empty_signal_are_empty() {
        assert!(tone_spans(&[], 440.0, 8000, 20).is_empty());
        assert_eq!(longest_tone_ms(&[0; 800], 440.0, 8000, 20), 0);
        assert!(tone_presence(&[0; 800], 440.0, 8000, 0).is_empty());
    }
}
