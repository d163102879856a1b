//! WAV files in and out: prompts uploaded by users are read into 8 kHz mono
//! 16-bit samples, recordings are written as 8 kHz mono 16-bit PCM.
//!
//! # What it owns
//! [`read_wav`] reads a RIFF/WAVE file (Microsoft's RIFF specification and
//! RFC 2361 for the format codes): a `fmt ` chunk with PCM 16-bit, PCM
//! 8-bit unsigned, G.711 A-law (6) or µ-law (7), plain or as
//! `WAVE_FORMAT_EXTENSIBLE` (0xFFFE) with one of those as its subformat;
//! one or two channels (two are mixed down); 8000 Hz as it is, or 16, 24,
//! 32 or 48 kHz decimated by their integer factor after a low-pass FIR
//! filter. Chunks it does not know (`LIST`, `fact`, `cue `, ...) are
//! skipped, with RIFF's pad byte after odd-sized ones. [`write_wav`] and
//! [`wav_header`] write the one format this node records.
//!
//! Well-formed audio it does not take (another rate, float samples, more
//! channels, too long, empty) is [`Error::UnsupportedAudio`] with what was
//! found and what to do; bytes that are not a WAV file are
//! [`Error::Malformed`].
//!
//! The decimation filter is a Blackman-windowed sinc with its cut-off at
//! 3.7 kHz and `56 × factor + 1` taps: flat to about 3.3 kHz (the
//! telephone band ends at 3.4 kHz), at least 70 dB down from 4.1 kHz, so
//! nothing above the new 4 kHz Nyquist frequency folds back into the band
//! a caller hears.
//!
//! # What it must not do
//! No file access (bytes in, bytes out) and no panic on any input; the
//! length limit is checked before any sample is converted.

use crate::{Error, Result};

/// The only rate the media plane plays and records.
pub const SAMPLE_RATE_HZ: u32 = 8000;

/// What a caller tells the user to do with a file this module refuses.
const CONVERT_HINT: &str = "convert to 8000 Hz mono, e.g. `sox in.wav -r 8000 -c 1 -b 16 out.wav`";

const FORMAT_PCM: u16 = 1;
const FORMAT_FLOAT: u16 = 3;
const FORMAT_ALAW: u16 = 6;
const FORMAT_MULAW: u16 = 7;
const FORMAT_EXTENSIBLE: u16 = 0xFFFE;

/// The decimation filter's cut-off, between the telephone band's 3.4 kHz
/// and the 4 kHz Nyquist frequency of the output.
const CUTOFF_HZ: f64 = 3700.0;
/// Taps per unit of decimation factor: a Blackman window's transition is
/// about 5.5 × rate / taps wide, which makes it about 790 Hz at every rate.
const TAPS_PER_FACTOR: usize = 56;

/// Limits on what [`read_wav`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavLimits {
    /// The longest audio accepted, in milliseconds.
    pub max_duration_ms: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Pcm8,
    Pcm16,
    MuLaw,
    ALaw,
}

impl Encoding {
    fn bytes_per_sample(self) -> usize {
        match self {
            Encoding::Pcm16 => 2,
            Encoding::Pcm8 | Encoding::MuLaw | Encoding::ALaw => 1,
        }
    }

    /// One sample at the start of `bytes` (which holds at least
    /// `bytes_per_sample` bytes; 0 otherwise).
    fn sample(self, bytes: &[u8]) -> i32 {
        match (self, bytes) {
            (Encoding::Pcm16, [low, high, ..]) => i32::from(i16::from_le_bytes([*low, *high])),
            (Encoding::Pcm8, [byte, ..]) => (i32::from(*byte) - 128) << 8,
            (Encoding::MuLaw, [byte, ..]) => i32::from(crate::g711::ulaw_decode(*byte)),
            (Encoding::ALaw, [byte, ..]) => i32::from(crate::g711::alaw_decode(*byte)),
            _ => 0,
        }
    }
}

struct Format {
    encoding: Encoding,
    channels: usize,
    sample_rate_hz: u32,
}

fn malformed(reason: impl Into<String>) -> Error {
    Error::Malformed {
        what: "WAV file",
        reason: reason.into(),
    }
}

fn unsupported(found: impl std::fmt::Display) -> Error {
    Error::UnsupportedAudio(format!("{found}; {CONVERT_HINT}"))
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    let pair = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([pair[0], pair[1]]))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let quad = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([quad[0], quad[1], quad[2], quad[3]]))
}

fn format_name(tag: u16) -> String {
    match tag {
        FORMAT_FLOAT => "floating-point samples".to_owned(),
        0x0002 => "ADPCM".to_owned(),
        0x0011 => "IMA ADPCM".to_owned(),
        0x0031 => "GSM 6.10".to_owned(),
        0x0055 => "MP3".to_owned(),
        other => format!("audio format {other:#06x}"),
    }
}

fn parse_format(body: &[u8]) -> Result<Format> {
    let (Some(mut tag), Some(channels), Some(sample_rate_hz), Some(bits)) = (
        u16_at(body, 0),
        u16_at(body, 2),
        u32_at(body, 4),
        u16_at(body, 14),
    ) else {
        return Err(malformed(format!(
            "fmt chunk of {} bytes, at least 16 expected",
            body.len()
        )));
    };
    if tag == FORMAT_EXTENSIBLE {
        // The subformat GUID's first two bytes are the format code.
        tag = u16_at(body, 24).ok_or_else(|| {
            malformed(format!(
                "extensible fmt chunk of {} bytes, 40 expected",
                body.len()
            ))
        })?;
    }
    if channels == 0 {
        return Err(malformed("zero channels"));
    }
    let encoding = match (tag, bits) {
        (FORMAT_PCM, 16) => Encoding::Pcm16,
        (FORMAT_PCM, 8) => Encoding::Pcm8,
        (FORMAT_PCM, other) => return Err(unsupported(format!("{other}-bit PCM"))),
        (FORMAT_MULAW, 8) => Encoding::MuLaw,
        (FORMAT_ALAW, 8) => Encoding::ALaw,
        (FORMAT_MULAW | FORMAT_ALAW, other) => {
            return Err(malformed(format!("G.711 with {other} bits per sample")))
        }
        (other, _) => return Err(unsupported(format_name(other))),
    };
    if channels > 2 {
        return Err(unsupported(format!("{channels} channels")));
    }
    Ok(Format {
        encoding,
        channels: usize::from(channels),
        sample_rate_hz,
    })
}

fn decimation_factor(sample_rate_hz: u32) -> Result<usize> {
    match sample_rate_hz {
        8000 => Ok(1),
        16_000 => Ok(2),
        24_000 => Ok(3),
        32_000 => Ok(4),
        48_000 => Ok(6),
        other => Err(unsupported(format!("{other} Hz"))),
    }
}

fn seconds(ms_times_rate: u64, rate: u64) -> String {
    // Tenths of a second, rounded: "312.4 s", and "120 s" when whole.
    let tenths = (ms_times_rate * 10 + rate * 500) / (rate * 1000);
    if tenths.is_multiple_of(10) {
        format!("{} s", tenths / 10)
    } else {
        format!("{}.{} s", tenths / 10, tenths % 10)
    }
}

/// Reads a WAV file into 8 kHz mono 16-bit samples (see the module doc for
/// what is accepted).
pub fn read_wav(bytes: &[u8], limits: WavLimits) -> Result<Vec<i16>> {
    if bytes.get(0..4) != Some(b"RIFF") || bytes.get(8..12) != Some(b"WAVE") {
        return Err(malformed("no RIFF/WAVE header"));
    }
    let mut format = None;
    let mut data = None;
    let mut offset = 12usize;
    // The RIFF size field is not trusted: writers that stream often leave
    // it wrong, and each chunk carries its own size anyway.
    while format.is_none() || data.is_none() {
        let (Some(id), Some(size)) = (bytes.get(offset..offset + 4), u32_at(bytes, offset + 4))
        else {
            let missing = if format.is_none() { "fmt" } else { "data" };
            return Err(malformed(format!("no {missing} chunk")));
        };
        let start = offset + 8;
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        let Some(body) = bytes.get(start..start.saturating_add(size)) else {
            return Err(malformed(format!(
                "chunk '{}' of {size} bytes runs past the end of the file ({} bytes left)",
                String::from_utf8_lossy(id),
                bytes.len().saturating_sub(start)
            )));
        };
        match id {
            b"fmt " if format.is_none() => format = Some(parse_format(body)?),
            b"data" if data.is_none() => data = Some(body),
            _ => {}
        }
        // Chunks are word-aligned: an odd-sized one is followed by a pad
        // byte that its size does not count.
        offset = start + size + (size & 1);
    }
    let (Some(format), Some(data)) = (format, data) else {
        return Err(malformed("no fmt or data chunk"));
    };
    let factor = decimation_factor(format.sample_rate_hz)?;
    let frame_bytes = format.encoding.bytes_per_sample() * format.channels;
    let frames = data.len() / frame_bytes;
    if frames == 0 {
        return Err(Error::UnsupportedAudio(
            "the WAV file holds no audio".to_owned(),
        ));
    }
    let rate = u64::from(format.sample_rate_hz);
    let duration_ms_times_rate = frames as u64 * 1000;
    if duration_ms_times_rate > u64::from(limits.max_duration_ms) * rate {
        return Err(Error::UnsupportedAudio(format!(
            "{} long; the limit is {}",
            seconds(duration_ms_times_rate, rate),
            seconds(u64::from(limits.max_duration_ms) * rate, rate)
        )));
    }
    let width = format.encoding.bytes_per_sample();
    let mono = data.chunks_exact(frame_bytes).map(|frame| {
        let sum: i32 = frame
            .chunks_exact(width)
            .map(|sample| format.encoding.sample(sample))
            .sum();
        // Two channels are averaged: the sum of two full-scale channels
        // would clip.
        sum / format.channels as i32
    });
    if factor == 1 {
        return Ok(mono.map(clamp_i16).collect());
    }
    let input: Vec<f32> = mono.map(|sample| sample as f32).collect();
    Ok(decimate(&input, factor))
}

fn clamp_i16(sample: i32) -> i16 {
    sample.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16
}

/// The low-pass filter for decimation by `factor`, normalised to unity
/// gain at 0 Hz.
fn low_pass(factor: usize) -> Vec<f32> {
    let taps = TAPS_PER_FACTOR * factor + 1;
    let middle = (taps / 2) as f64;
    let input_rate_hz = f64::from(SAMPLE_RATE_HZ) * factor as f64;
    let normalised_cutoff = 2.0 * CUTOFF_HZ / input_rate_hz;
    let span = (taps - 1) as f64;
    let mut filter: Vec<f64> = (0..taps)
        .map(|n| {
            let x = n as f64 - middle;
            let sinc = if x == 0.0 {
                normalised_cutoff
            } else {
                let arg = std::f64::consts::PI * normalised_cutoff * x;
                arg.sin() / (std::f64::consts::PI * x)
            };
            let phase = 2.0 * std::f64::consts::PI * n as f64 / span;
            let blackman = 0.42 - 0.5 * phase.cos() + 0.08 * (2.0 * phase).cos();
            sinc * blackman
        })
        .collect();
    let gain: f64 = filter.iter().sum();
    for tap in &mut filter {
        *tap /= gain;
    }
    filter.into_iter().map(|tap| tap as f32).collect()
}

/// Filters and keeps every `factor`-th sample; only the kept samples are
/// computed. The filter is centred, so the output is not delayed.
fn decimate(input: &[f32], factor: usize) -> Vec<i16> {
    let filter = low_pass(factor);
    let half = filter.len() / 2;
    let outputs = input.len().div_ceil(factor);
    (0..outputs)
        .map(|k| {
            let centre = k * factor;
            // Taps that would reach before the start or past the end meet
            // zeros (the file is silent outside itself).
            let first_tap = half.saturating_sub(centre);
            let first_input = centre.saturating_sub(half);
            let taps = filter.get(first_tap..).unwrap_or_default();
            let samples = input.get(first_input..).unwrap_or_default();
            let sum: f32 = taps.iter().zip(samples).map(|(h, x)| h * x).sum();
            sum.round().clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16
        })
        .collect()
}

/// The 44-byte header of an 8 kHz mono 16-bit PCM WAV file with
/// `data_bytes` bytes of samples, for writers that stream the samples and
/// patch the sizes at the end.
pub fn wav_header(data_bytes: u32) -> [u8; 44] {
    let mut header = [0u8; 44];
    let fields: [&[u8]; 13] = [
        b"RIFF",
        &data_bytes.saturating_add(36).to_le_bytes(),
        b"WAVE",
        b"fmt ",
        &16u32.to_le_bytes(),
        &FORMAT_PCM.to_le_bytes(),
        &1u16.to_le_bytes(),
        &SAMPLE_RATE_HZ.to_le_bytes(),
        &(SAMPLE_RATE_HZ * 2).to_le_bytes(),
        &2u16.to_le_bytes(),
        &16u16.to_le_bytes(),
        b"data",
        &data_bytes.to_le_bytes(),
    ];
    let mut at = 0;
    for field in fields {
        if let Some(slot) = header.get_mut(at..at + field.len()) {
            slot.copy_from_slice(field);
        }
        at += field.len();
    }
    header
}

/// Appends `samples` to `out` as an 8 kHz mono 16-bit PCM WAV file. (Past
/// 2³¹ samples, 74 hours, the sizes in the header saturate.)
pub fn write_wav(samples: &[i16], out: &mut Vec<u8>) {
    let data_bytes = u32::try_from(samples.len().saturating_mul(2)).unwrap_or(u32::MAX);
    out.reserve(44 + samples.len() * 2);
    out.extend_from_slice(&wav_header(data_bytes));
    for sample in samples {
        out.extend_from_slice(&sample.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: WavLimits = WavLimits {
        max_duration_ms: 120_000,
    };

    #[test]
    fn header_fields() {
        let header = wav_header(320);
        assert_eq!(&header[0..4], b"RIFF");
        assert_eq!(u32_at(&header, 4), Some(356));
        assert_eq!(u16_at(&header, 22), Some(1), "mono");
        assert_eq!(u32_at(&header, 24), Some(8000));
        assert_eq!(u32_at(&header, 28), Some(16_000), "byte rate");
        assert_eq!(u16_at(&header, 34), Some(16), "bits");
        assert_eq!(&header[36..40], b"data");
        assert_eq!(u32_at(&header, 40), Some(320));
    }

    #[test]
    fn round_trip() {
        let samples = [0, 1, -1, i16::MAX, i16::MIN, 1234];
        let mut file = Vec::new();
        write_wav(&samples, &mut file);
        assert_eq!(file.len(), 44 + 12);
        assert_eq!(read_wav(&file, LIMITS).unwrap(), samples);
    }

    #[test]
    fn durations_are_told_in_tenths_of_seconds() {
        assert_eq!(seconds(312_400 * 8000, 8000), "312.4 s");
        assert_eq!(seconds(120_000 * 8000, 8000), "120 s");
        assert_eq!(seconds(125, 8000), "0 s");
    }

    #[test]
    fn the_filter_has_unity_gain_and_is_symmetric() {
        for factor in [2, 3, 4, 6] {
            let filter = low_pass(factor);
            assert_eq!(filter.len(), 56 * factor + 1);
            let sum: f32 = filter.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5);
            for (a, b) in filter.iter().zip(filter.iter().rev()) {
                assert!((a - b).abs() < 1e-7);
            }
        }
    }
}
