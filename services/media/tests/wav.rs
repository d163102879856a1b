//! WAV reading on files shaped like the ones users upload (written here,
//! chunk by chunk), conversions, refusals, and arbitrary bytes.

use dialtone_media::g711::{alaw_encode, ulaw_encode};
use dialtone_media::tone::{goertzel_power, sine};
use dialtone_media::wav::{read_wav, wav_header, write_wav, WavLimits};
use dialtone_media::Error;
use proptest::prelude::*;

const LIMITS: WavLimits = WavLimits {
    max_duration_ms: 120_000,
};

fn chunk(id: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut out = id.to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    if body.len() % 2 == 1 {
        out.push(0);
    }
    out
}

fn riff(chunks: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = chunks.concat();
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32 + 4).to_le_bytes());
    out.extend_from_slice(b"WAVE");
    out.extend_from_slice(&body);
    out
}

fn fmt(tag: u16, channels: u16, rate_hz: u32, bits: u16) -> Vec<u8> {
    let block = channels * bits / 8;
    let mut body = Vec::new();
    body.extend_from_slice(&tag.to_le_bytes());
    body.extend_from_slice(&channels.to_le_bytes());
    body.extend_from_slice(&rate_hz.to_le_bytes());
    body.extend_from_slice(&(rate_hz * u32::from(block)).to_le_bytes());
    body.extend_from_slice(&block.to_le_bytes());
    body.extend_from_slice(&bits.to_le_bytes());
    chunk(b"fmt ", &body)
}

fn extensible(subformat: u16, channels: u16, rate_hz: u32, bits: u16) -> Vec<u8> {
    let block = channels * bits / 8;
    let mut body = Vec::new();
    body.extend_from_slice(&0xFFFEu16.to_le_bytes());
    body.extend_from_slice(&channels.to_le_bytes());
    body.extend_from_slice(&rate_hz.to_le_bytes());
    body.extend_from_slice(&(rate_hz * u32::from(block)).to_le_bytes());
    body.extend_from_slice(&block.to_le_bytes());
    body.extend_from_slice(&bits.to_le_bytes());
    body.extend_from_slice(&22u16.to_le_bytes());
    body.extend_from_slice(&bits.to_le_bytes());
    body.extend_from_slice(&4u32.to_le_bytes()); // front centre
                                                 // KSDATAFORMAT_SUBTYPE_*: the format code, then the fixed GUID tail.
    body.extend_from_slice(&subformat.to_le_bytes());
    body.extend_from_slice(&[
        0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71,
    ]);
    chunk(b"fmt ", &body)
}

fn pcm16(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

fn list_chunk() -> Vec<u8> {
    // As written by common editors: an INFO list with an odd-sized name.
    chunk(b"LIST", b"INFOINAM\x05\x00\x00\x00beep\x00\x00")
}

fn unsupported_text(result: Result<Vec<i16>, Error>) -> String {
    match result {
        Err(Error::UnsupportedAudio(text)) => text,
        other => panic!("expected UnsupportedAudio, got {other:?}"),
    }
}

fn malformed_reason(result: Result<Vec<i16>, Error>) -> String {
    match result {
        Err(Error::Malformed { what, reason }) => {
            assert_eq!(what, "WAV file");
            reason
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
}

fn mean_square(samples: &[i16]) -> f64 {
    samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len() as f64
}

#[test]
fn written_files_read_back_exactly() {
    let samples = sine(440.0, 12_000, 500, 8000);
    let mut file = Vec::new();
    write_wav(&samples, &mut file);
    assert_eq!(&file[..44], &wav_header(8000)[..]);
    assert_eq!(read_wav(&file, LIMITS).unwrap(), samples);
}

#[test]
fn a_list_chunk_before_the_data_is_skipped() {
    let samples = [100i16, -200, 300, -400];
    let file = riff(&[
        fmt(1, 1, 8000, 16),
        list_chunk(),
        chunk(b"data", &pcm16(&samples)),
    ]);
    assert_eq!(read_wav(&file, LIMITS).unwrap(), samples);
}

#[test]
fn odd_sized_chunks_are_followed_by_their_pad_byte() {
    let samples = [7i16, 8, 9];
    let odd = chunk(b"junk", &[1, 2, 3]);
    assert_eq!(odd.len(), 12, "8 + 3 + 1 pad");
    let file = riff(&[
        odd,
        fmt(1, 1, 8000, 16),
        chunk(b"cue ", &[0; 5]),
        chunk(b"data", &pcm16(&samples)),
    ]);
    assert_eq!(read_wav(&file, LIMITS).unwrap(), samples);
}

#[test]
fn mu_law_with_a_fact_chunk() {
    let samples = [0i16, 1000, -1000, 32_000];
    let coded: Vec<u8> = samples.iter().map(|&s| ulaw_encode(s)).collect();
    let fact = chunk(b"fact", &(samples.len() as u32).to_le_bytes());
    let file = riff(&[fmt(7, 1, 8000, 8), fact, chunk(b"data", &coded)]);
    assert_eq!(read_wav(&file, LIMITS).unwrap(), [0, 988, -988, 32_124]);
}

#[test]
fn a_law_and_8_bit_unsigned_pcm() {
    let coded: Vec<u8> = [0i16, 1000].iter().map(|&s| alaw_encode(s)).collect();
    let file = riff(&[fmt(6, 1, 8000, 8), chunk(b"data", &coded)]);
    assert_eq!(read_wav(&file, LIMITS).unwrap(), [8, 1008]);
    // 8-bit PCM is unsigned with 128 as zero; the odd data size is padded.
    let file = riff(&[fmt(1, 1, 8000, 8), chunk(b"data", &[128, 255, 0])]);
    assert_eq!(read_wav(&file, LIMITS).unwrap(), [0, 127 << 8, -128 << 8]);
}

#[test]
fn extensible_format_with_pcm_and_mu_law_subformats() {
    let samples = [5i16, -5, 500];
    let file = riff(&[extensible(1, 1, 8000, 16), chunk(b"data", &pcm16(&samples))]);
    assert_eq!(read_wav(&file, LIMITS).unwrap(), samples);
    let file = riff(&[extensible(7, 1, 8000, 8), chunk(b"data", &[0xFF, 0x80])]);
    assert_eq!(read_wav(&file, LIMITS).unwrap(), [0, 32_124]);
    let file = riff(&[extensible(3, 1, 8000, 32), chunk(b"data", &[0; 8])]);
    let text = unsupported_text(read_wav(&file, LIMITS));
    assert!(
        text.starts_with("floating-point samples; convert to 8000 Hz mono"),
        "{text}"
    );
}

#[test]
fn stereo_is_mixed_down_to_mono() {
    let interleaved = [1000i16, 3000, -32768, -32768, 32767, 32767, 10, -10];
    let file = riff(&[fmt(1, 2, 8000, 16), chunk(b"data", &pcm16(&interleaved))]);
    assert_eq!(read_wav(&file, LIMITS).unwrap(), [2000, -32768, 32767, 0]);
}

#[test]
fn stereo_48_khz_1_khz_sine_becomes_8_khz_mono_at_1_khz() {
    let left = sine(1000.0, 10_000, 1000, 48_000);
    let interleaved: Vec<i16> = left.iter().flat_map(|&s| [s, s]).collect();
    let file = riff(&[fmt(1, 2, 48_000, 16), chunk(b"data", &pcm16(&interleaved))]);
    let out = read_wav(&file, LIMITS).unwrap();
    assert_eq!(out.len(), 8000);
    // Away from the edges (the filter meets silence there), the tone is
    // as loud as before and nothing else is there.
    let middle = &out[400..7600];
    let tone = goertzel_power(middle, 1000.0, 8000);
    assert!(
        (tone / 50_000_000.0 - 1.0).abs() < 0.01,
        "tone power {tone}"
    );
    assert!(tone / mean_square(middle) > 0.999);
    for elsewhere in [440.0, 2000.0, 3000.0, 3900.0] {
        assert!(
            goertzel_power(middle, elsewhere, 8000) < tone * 1e-6,
            "{elsewhere} Hz"
        );
    }
}

#[test]
fn tones_above_4_khz_do_not_fold_back_into_the_band() {
    // Decimated without a filter, 7 kHz at 48 kHz would come out at 1 kHz,
    // 5 kHz at 3 kHz and 9 kHz at 1 kHz.
    for (rate_hz, frequency_hz, alias_hz) in [
        (48_000, 7000.0, 1000.0),
        (48_000, 5000.0, 3000.0),
        (48_000, 9000.0, 1000.0),
        (16_000, 5000.0, 3000.0),
        (16_000, 4600.0, 3400.0),
        (24_000, 7000.0, 1000.0),
        (32_000, 6000.0, 2000.0),
    ] {
        let high = sine(frequency_hz, 20_000, 500, rate_hz);
        let file = riff(&[fmt(1, 1, rate_hz, 16), chunk(b"data", &pcm16(&high))]);
        let out = read_wav(&file, LIMITS).unwrap();
        assert_eq!(out.len(), 4000);
        let middle = &out[400..3600];
        let input_power = 20_000.0f64.powi(2) / 2.0;
        // 70 dB down.
        let alias = goertzel_power(middle, alias_hz, 8000);
        assert!(
            alias < input_power * 1e-7,
            "{rate_hz} Hz, {frequency_hz} Hz: {alias}"
        );
        assert!(mean_square(middle) < input_power * 1e-7);
    }
}

#[test]
fn the_telephone_band_passes_every_supported_rate() {
    for rate_hz in [16_000, 24_000, 32_000, 48_000] {
        for frequency_hz in [300.0, 1000.0, 3000.0] {
            let tone = sine(frequency_hz, 10_000, 500, rate_hz);
            let file = riff(&[fmt(1, 1, rate_hz, 16), chunk(b"data", &pcm16(&tone))]);
            let out = read_wav(&file, LIMITS).unwrap();
            let gain = goertzel_power(&out[400..3600], frequency_hz, 8000) / 50_000_000.0;
            // Within 0.1 dB.
            assert!(
                (gain - 1.0).abs() < 0.025,
                "{rate_hz} Hz, {frequency_hz} Hz: {gain}"
            );
        }
    }
}

#[test]
fn other_rates_and_formats_are_refused_with_what_to_do() {
    let file = riff(&[fmt(1, 1, 44_100, 16), chunk(b"data", &[0; 4])]);
    assert_eq!(
        unsupported_text(read_wav(&file, LIMITS)),
        "44100 Hz; convert to 8000 Hz mono, e.g. `sox in.wav -r 8000 -c 1 -b 16 out.wav`"
    );
    let file = riff(&[fmt(1, 1, 8000, 24), chunk(b"data", &[0; 6])]);
    assert!(unsupported_text(read_wav(&file, LIMITS)).starts_with("24-bit PCM; "));
    let file = riff(&[fmt(1, 6, 8000, 16), chunk(b"data", &[0; 12])]);
    assert!(unsupported_text(read_wav(&file, LIMITS)).starts_with("6 channels; "));
    let file = riff(&[fmt(0x55, 1, 8000, 0), chunk(b"data", &[0; 12])]);
    assert!(unsupported_text(read_wav(&file, LIMITS)).starts_with("MP3; "));
}

#[test]
fn too_long_and_empty_are_refused() {
    let mut file = Vec::new();
    write_wav(&vec![0; 8000 * 121], &mut file);
    assert_eq!(
        unsupported_text(read_wav(&file, LIMITS)),
        "121 s long; the limit is 120 s"
    );
    // 312.4 s of µ-law, refused from its header alone.
    let frames = 312_400 * 8;
    let mut data = b"data".to_vec();
    data.extend_from_slice(&(frames as u32).to_le_bytes());
    let mut file = riff(&[fmt(7, 1, 8000, 8)]);
    file.extend_from_slice(&data);
    file.resize(file.len() + frames, 0xFF);
    assert_eq!(
        unsupported_text(read_wav(&file, LIMITS)),
        "312.4 s long; the limit is 120 s"
    );
    let exact = WavLimits {
        max_duration_ms: 121_000,
    };
    let mut file = Vec::new();
    write_wav(&vec![0; 8000 * 121], &mut file);
    assert_eq!(read_wav(&file, exact).unwrap().len(), 8000 * 121);
    let file = riff(&[fmt(1, 1, 8000, 16), chunk(b"data", &[])]);
    assert_eq!(
        unsupported_text(read_wav(&file, LIMITS)),
        "the WAV file holds no audio"
    );
    // One byte of a 2-byte sample is no sample.
    let file = riff(&[fmt(1, 1, 8000, 16), chunk(b"data", &[1])]);
    assert_eq!(
        unsupported_text(read_wav(&file, LIMITS)),
        "the WAV file holds no audio"
    );
}

#[test]
fn what_is_not_a_wav_file_is_malformed() {
    assert_eq!(
        malformed_reason(read_wav(b"", LIMITS)),
        "no RIFF/WAVE header"
    );
    assert_eq!(
        malformed_reason(read_wav(b"RIFF\0\0\0\0AVI LIST", LIMITS)),
        "no RIFF/WAVE header"
    );
    let samples = pcm16(&[1, 2, 3, 4]);
    let mut lying = riff(&[fmt(1, 1, 8000, 16), chunk(b"data", &samples)]);
    let data_size_at = lying.len() - samples.len() - 4;
    lying[data_size_at..data_size_at + 4].copy_from_slice(&1000u32.to_le_bytes());
    assert_eq!(
        malformed_reason(read_wav(&lying, LIMITS)),
        "chunk 'data' of 1000 bytes runs past the end of the file (8 bytes left)"
    );
    let no_data = riff(&[fmt(1, 1, 8000, 16), list_chunk()]);
    assert_eq!(
        malformed_reason(read_wav(&no_data, LIMITS)),
        "no data chunk"
    );
    let no_fmt = riff(&[chunk(b"data", &samples)]);
    assert_eq!(malformed_reason(read_wav(&no_fmt, LIMITS)), "no fmt chunk");
    let zero_channels = riff(&[fmt(1, 0, 8000, 16), chunk(b"data", &samples)]);
    assert_eq!(
        malformed_reason(read_wav(&zero_channels, LIMITS)),
        "zero channels"
    );
    let short_fmt = riff(&[chunk(b"fmt ", &[1, 0, 1, 0]), chunk(b"data", &samples)]);
    assert!(malformed_reason(read_wav(&short_fmt, LIMITS)).starts_with("fmt chunk of 4 bytes"));
    let mut truncated = Vec::new();
    write_wav(&[1, 2, 3], &mut truncated);
    truncated.truncate(40);
    assert_eq!(
        malformed_reason(read_wav(&truncated, LIMITS)),
        "no data chunk"
    );
}

#[test]
fn data_before_fmt_and_trailing_chunks_are_fine() {
    let samples = [42i16, -42];
    let file = riff(&[
        chunk(b"data", &pcm16(&samples)),
        fmt(1, 1, 8000, 16),
        list_chunk(),
    ]);
    assert_eq!(read_wav(&file, LIMITS).unwrap(), samples);
    // A truncated chunk after the two that matter is not read at all.
    let mut file = riff(&[fmt(1, 1, 8000, 16), chunk(b"data", &pcm16(&samples))]);
    file.extend_from_slice(b"LIST\xff\xff");
    assert_eq!(read_wav(&file, LIMITS).unwrap(), samples);
}

fn valid_files() -> Vec<Vec<u8>> {
    let samples = sine(440.0, 9000, 30, 8000);
    let mut plain = Vec::new();
    write_wav(&samples, &mut plain);
    vec![
        plain,
        riff(&[
            fmt(7, 1, 8000, 8),
            chunk(b"fact", &[0; 4]),
            chunk(b"data", &[0x55; 99]),
        ]),
        riff(&[
            extensible(1, 2, 48_000, 16),
            list_chunk(),
            chunk(b"data", &[7; 400]),
        ]),
        riff(&[fmt(1, 1, 16_000, 8), chunk(b"data", &[200; 33])]),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = read_wav(&bytes, LIMITS);
        let mut prefixed = b"RIFF\0\0\0\0WAVE".to_vec();
        prefixed.extend_from_slice(&bytes);
        let _ = read_wav(&prefixed, LIMITS);
    }

    #[test]
    fn mutated_valid_files_never_panic(
        which in 0usize..4,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut file = valid_files().swap_remove(which);
        for (at, byte) in edits {
            let at = at % file.len();
            file[at] = byte;
        }
        let _ = read_wav(&file, LIMITS);
        file.truncate(cut % (file.len() + 1));
        let _ = read_wav(&file, LIMITS);
    }

    #[test]
    fn write_then_read_is_the_identity(samples in proptest::collection::vec(any::<i16>(), 1..2000)) {
        let mut file = Vec::new();
        write_wav(&samples, &mut file);
        prop_assert_eq!(file.len(), 44 + 2 * samples.len());
        prop_assert_eq!(read_wav(&file, LIMITS).unwrap(), samples);
    }
}
