//! G.711 properties: exhaustive over every sample and every code.

use dialtone_media::g711::{
    alaw_decode, alaw_encode, decode_into, encode_into, ulaw_decode, ulaw_encode, Law,
};
use proptest::prelude::*;

/// Half the quantisation step of the interval a µ-law code stands for, in
/// 16-bit units: codes decode to the middle of their interval.
fn ulaw_half_step(code: u8) -> i32 {
    let exponent = i32::from((!code >> 4) & 0x07);
    2 << (exponent + 1)
}

fn alaw_half_step(code: u8) -> i32 {
    let exponent = i32::from(((code ^ 0x55) >> 4) & 0x07);
    8 << (exponent.max(1) - 1)
}

#[test]
fn ulaw_round_trip_of_every_sample_is_within_the_quantisation_error() {
    let mut worst = 0;
    for sample in i16::MIN..=i16::MAX {
        let code = ulaw_encode(sample);
        let decoded = i32::from(ulaw_decode(code));
        let error = (i32::from(sample) - decoded).abs();
        // Beyond full scale (±32124 plus half the top step) µ-law clips.
        let clipped = i32::from(sample).abs() > 32124 + 512;
        if clipped {
            assert_eq!(decoded.abs(), 32124, "{sample} must clip to full scale");
        } else {
            assert!(
                error <= ulaw_half_step(code),
                "{sample} -> {code:#04x} -> {decoded}: error {error}"
            );
            worst = worst.max(error);
        }
        // The sign is kept (zero excepted).
        assert!(
            decoded == 0 || (decoded > 0) == (sample > 0),
            "{sample} -> {decoded}"
        );
    }
    assert_eq!(worst, 512, "the top segment's half step");
}

#[test]
fn alaw_round_trip_of_every_sample_is_within_the_quantisation_error() {
    let mut worst = 0;
    for sample in i16::MIN..=i16::MAX {
        let code = alaw_encode(sample);
        let decoded = i32::from(alaw_decode(code));
        let error = (i32::from(sample) - decoded).abs();
        assert!(
            error <= alaw_half_step(code),
            "{sample} -> {code:#04x} -> {decoded}: error {error}"
        );
        worst = worst.max(error);
    }
    assert_eq!(
        worst, 512,
        "A-law does not clip: the top half step is the worst"
    );
}

#[test]
fn every_code_survives_decode_then_encode() {
    for code in 0..=u8::MAX {
        let expected_ulaw = if code == 0x7F { 0xFF } else { code };
        // 0x7F is µ-law's negative zero: it decodes to 0, which encodes as
        // the positive zero 0xFF.
        assert_eq!(
            ulaw_encode(ulaw_decode(code)),
            expected_ulaw,
            "µ {code:#04x}"
        );
        assert_eq!(alaw_encode(alaw_decode(code)), code, "A {code:#04x}");
    }
}

#[test]
fn decoding_is_monotonic_in_the_sample_order() {
    // Larger samples never encode to a smaller decoded value.
    for law in [Law::Mu, Law::A] {
        let mut previous = i16::MIN;
        for sample in i16::MIN..=i16::MAX {
            let decoded = law.decode(law.encode(sample));
            assert!(decoded >= previous, "{law:?} at {sample}");
            previous = decoded;
        }
    }
}

#[test]
fn known_vectors() {
    // The first entries of the widely published decoding tables.
    let ulaw_head = [
        -32124, -31100, -30076, -29052, -28028, -27004, -25980, -24956,
    ];
    let alaw_head = [-5504, -5248, -6016, -5760, -4480, -4224, -4992, -4736];
    for code in 0..8u8 {
        assert_eq!(ulaw_decode(code), ulaw_head[usize::from(code)]);
        assert_eq!(ulaw_decode(code | 0x80), -ulaw_head[usize::from(code)]);
        assert_eq!(alaw_decode(code), alaw_head[usize::from(code)]);
        assert_eq!(alaw_decode(code | 0x80), -alaw_head[usize::from(code)]);
    }
    // Segment 0 of µ-law: 0, 8, .., 120 in steps of 8; segment 1 from 132.
    assert_eq!(ulaw_decode(0xFE), 8);
    assert_eq!(ulaw_decode(0xF0), 120);
    assert_eq!(ulaw_decode(0xEF), 132);
    assert_eq!(ulaw_encode(0), 0xFF);
    assert_eq!(ulaw_encode(-1), 0x7F);
    assert_eq!(ulaw_encode(8), 0xFE);
    assert_eq!(alaw_encode(0), 0xD5);
    assert_eq!(alaw_encode(-1), 0x55);
    assert_eq!(alaw_decode(0xD4), 24);
    assert_eq!(alaw_encode(i16::MAX), 0xAA);
}

proptest! {
    #[test]
    fn payload_writers_match_the_per_sample_functions(samples in proptest::collection::vec(any::<i16>(), 0..400)) {
        for law in [Law::Mu, Law::A] {
            let mut bytes = Vec::new();
            encode_into(law, &samples, &mut bytes);
            prop_assert_eq!(bytes.len(), samples.len());
            let mut decoded = Vec::new();
            decode_into(law, &bytes, &mut decoded);
            prop_assert_eq!(decoded.len(), samples.len());
            for ((&s, &b), &d) in samples.iter().zip(&bytes).zip(&decoded) {
                prop_assert_eq!(b, law.encode(s));
                prop_assert_eq!(d, law.decode(b));
            }
        }
    }
}
