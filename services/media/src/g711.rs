//! G.711 (ITU-T G.711): µ-law and A-law companding of 16-bit linear PCM to
//! 8-bit codes, the only codecs the media plane speaks (RTP payload types 0
//! and 8, RFC 3551 s.4.5.14).
//!
//! # What it owns
//! [`ulaw_encode`], [`ulaw_decode`], [`alaw_encode`], [`alaw_decode`] for
//! one sample, and [`Law`] with [`decode_into`] and [`encode_into`] for a
//! payload. Decoding is a lookup in one of two 256-entry tables built at
//! compile time; encoding is the standard segment search (a few shifts, no
//! table of 64 KiB to keep in cache for thousands of calls).
//!
//! The arithmetic is that of the ITU-T G.191 reference implementation: a
//! 16-bit sample is taken as the standard's 14-bit (µ-law) or 13-bit
//! (A-law) value left-justified, negative values in one's complement so
//! that small negative values fall on the negative zero code, and each code
//! decodes to the middle of its quantisation interval. µ-law therefore
//! clips at ±32124 (its full scale) and has two codes for zero (0xFF and
//! 0x7F; the encoder produces 0xFF for 0); A-law has no zero code (0 is
//! 0xD5, decoded as +8).
//!
//! # What it must not do
//! Nothing here allocates except growing the caller's `Vec` in the
//! `_into` writers (reused across packets, it stops growing after the
//! first); nothing panics on any byte or sample.

/// µ-law's bias (33 in the 14-bit domain), added before the segment
/// search so that segments start at powers of two.
const ULAW_BIAS: i32 = 33;
/// The largest biased 14-bit µ-law magnitude; beyond it the encoder clips.
const ULAW_MAX_BIASED: i32 = 0x1FFF;

/// The two companding laws of G.711.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Law {
    /// µ-law (PCMU, RTP payload type 0): North America and Japan.
    Mu,
    /// A-law (PCMA, RTP payload type 8): the rest of the world.
    A,
}

impl Law {
    /// The code a silent (zero) sample encodes to: 0xFF in µ-law, 0xD5 in
    /// A-law. A payload filled with it is silence, not a click.
    pub const fn silence(self) -> u8 {
        match self {
            Law::Mu => 0xFF,
            Law::A => 0xD5,
        }
    }

    /// Encodes one sample.
    pub fn encode(self, sample: i16) -> u8 {
        match self {
            Law::Mu => ulaw_encode(sample),
            Law::A => alaw_encode(sample),
        }
    }

    /// Decodes one code.
    pub fn decode(self, code: u8) -> i16 {
        match self {
            Law::Mu => ulaw_decode(code),
            Law::A => alaw_decode(code),
        }
    }
}

/// Decodes a G.711 payload, appending one sample per byte to `out` (which
/// the caller clears and reuses between packets).
pub fn decode_into(law: Law, payload: &[u8], out: &mut Vec<i16>) {
    let table = match law {
        Law::Mu => &ULAW_TO_LINEAR,
        Law::A => &ALAW_TO_LINEAR,
    };
    out.extend(payload.iter().map(|&code| table[usize::from(code)]));
}

/// Encodes samples, appending one byte per sample to `out` (which the
/// caller clears and reuses between packets).
pub fn encode_into(law: Law, samples: &[i16], out: &mut Vec<u8>) {
    match law {
        Law::Mu => out.extend(samples.iter().map(|&s| ulaw_encode(s))),
        Law::A => out.extend(samples.iter().map(|&s| alaw_encode(s))),
    }
}

/// Encodes one 16-bit sample as µ-law.
pub const fn ulaw_encode(sample: i16) -> u8 {
    let linear = sample as i32;
    // One's complement for negatives: -1..-4 land on the negative zero
    // code, as in the reference implementation, instead of on -8.
    let magnitude = if linear < 0 { !linear } else { linear };
    let mut biased = (magnitude >> 2) + ULAW_BIAS;
    if biased > ULAW_MAX_BIASED {
        biased = ULAW_MAX_BIASED;
    }
    // The segment is the position of the highest set bit above bit 5:
    // one instruction instead of a loop (the conference mixer encodes
    // every participant's 160 samples each tick).
    let segment = 1 + (32 - (biased >> 6).leading_zeros() as i32);
    let high_nibble = 8 - segment;
    let low_nibble = 0x0F - ((biased >> segment) & 0x0F);
    let code = (high_nibble << 4) | low_nibble;
    if linear >= 0 {
        (code | 0x80) as u8
    } else {
        code as u8
    }
}

/// Decodes one µ-law code to a 16-bit sample (±32124 at full scale).
pub const fn ulaw_decode(code: u8) -> i16 {
    ULAW_TO_LINEAR[code as usize]
}

/// Encodes one 16-bit sample as A-law.
pub const fn alaw_encode(sample: i16) -> u8 {
    let linear = sample as i32;
    let mut magnitude = if linear < 0 {
        !linear >> 4
    } else {
        linear >> 4
    };
    if magnitude > 15 {
        // The exponent that brings the magnitude into 16..=31, from its
        // bit length (5..=11) rather than a shifting loop.
        let exponent = (32 - magnitude.leading_zeros() as i32) - 4;
        magnitude = (magnitude >> (exponent - 1)) - 16 + (exponent << 4);
    }
    if linear >= 0 {
        magnitude |= 0x80;
    }
    // Even bits are inverted on the wire so that idle lines carry
    // transitions (G.711 s.3.2).
    (magnitude ^ 0x55) as u8
}

/// Decodes one A-law code to a 16-bit sample (±32256 at full scale).
pub const fn alaw_decode(code: u8) -> i16 {
    ALAW_TO_LINEAR[code as usize]
}

const fn ulaw_expand(code: u8) -> i16 {
    let inverted = !code;
    let exponent = ((inverted >> 4) & 0x07) as i32;
    let mantissa = (inverted & 0x0F) as i32;
    let step = 4 << (exponent + 1);
    let magnitude = (0x80 << exponent) + step * mantissa + step / 2 - 4 * ULAW_BIAS;
    if code < 0x80 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

const fn alaw_expand(code: u8) -> i16 {
    let value = (code ^ 0x55) & 0x7F;
    let exponent = (value >> 4) as i32;
    let mut mantissa = (value & 0x0F) as i32;
    if exponent > 0 {
        mantissa += 16;
    }
    mantissa = (mantissa << 4) + 8;
    if exponent > 1 {
        mantissa <<= exponent - 1;
    }
    if code > 0x7F {
        mantissa as i16
    } else {
        -mantissa as i16
    }
}

const ULAW_TO_LINEAR: [i16; 256] = table_ulaw();
const ALAW_TO_LINEAR: [i16; 256] = table_alaw();

// Function pointers cannot be called in const context, hence one builder
// per law.
const fn table_ulaw() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut code = 0;
    while code < 256 {
        table[code] = ulaw_expand(code as u8);
        code += 1;
    }
    table
}

const fn table_alaw() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut code = 0;
    while code < 256 {
        table[code] = alaw_expand(code as u8);
        code += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encoders_match_the_reference_segment_search_for_every_sample() {
        // G.191's loops, as the encoders were written before they used
        // the bit length.
        fn ulaw_reference(sample: i16) -> u8 {
            let linear = i32::from(sample);
            let magnitude = if linear < 0 { !linear } else { linear };
            let biased = ((magnitude >> 2) + ULAW_BIAS).min(ULAW_MAX_BIASED);
            let mut segment = 1;
            let mut rest = biased >> 6;
            while rest != 0 {
                segment += 1;
                rest >>= 1;
            }
            let code = ((8 - segment) << 4) | (0x0F - ((biased >> segment) & 0x0F));
            (if linear >= 0 { code | 0x80 } else { code }) as u8
        }
        fn alaw_reference(sample: i16) -> u8 {
            let linear = i32::from(sample);
            let mut magnitude = if linear < 0 {
                !linear >> 4
            } else {
                linear >> 4
            };
            if magnitude > 15 {
                let mut exponent = 1;
                while magnitude > 16 + 15 {
                    magnitude >>= 1;
                    exponent += 1;
                }
                magnitude = magnitude - 16 + (exponent << 4);
            }
            if linear >= 0 {
                magnitude |= 0x80;
            }
            (magnitude ^ 0x55) as u8
        }
        for sample in i16::MIN..=i16::MAX {
            assert_eq!(
                ulaw_encode(sample),
                ulaw_reference(sample),
                "µ-law {sample}"
            );
            assert_eq!(
                alaw_encode(sample),
                alaw_reference(sample),
                "A-law {sample}"
            );
        }
    }

    #[test]
    fn zero_encodes_to_the_silence_code() {
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(Law::Mu.silence(), 0xFF);
        assert_eq!(Law::A.silence(), 0xD5);
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_decode(0x7F), 0);
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0x55), -8);
    }

    #[test]
    fn full_scale_codes() {
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(alaw_encode(i16::MAX), 0xAA);
        assert_eq!(alaw_encode(i16::MIN), 0x2A);
        assert_eq!(alaw_decode(0xAA), 32256);
        assert_eq!(alaw_decode(0x2A), -32256);
    }

    #[test]
    fn payload_writers_append() {
        let mut bytes = vec![0x12];
        encode_into(Law::Mu, &[0, 1000, -1000], &mut bytes);
        assert_eq!(bytes, [0x12, 0xFF, 0xCE, 0x4E]);
        let mut samples = vec![7];
        decode_into(Law::Mu, &bytes[1..], &mut samples);
        assert_eq!(samples, [7, 0, 988, -988]);
    }
}
