//! RTP data packets (RFC 3550 s.5.1) and a receiver's statistics about one
//! incoming stream (RFC 3550 appendix A.1, A.3 and A.8).
//!
//! # What it owns
//! - [`RtpPacket`]: a zero-copy view over a received packet; CSRCs, the
//!   header extension and padding are understood, and a packet that lies
//!   about any of them is [`Error::Malformed`];
//! - [`RtpHeader`] and [`write_packet`]: the 12-byte header this node
//!   sends (no CSRC, no extension, no padding), appended to a caller's
//!   buffer;
//! - [`looks_like_rtcp`]: RFC 5761 s.4's test for a port that receives both
//!   RTP and RTCP;
//! - [`ReceiveStats`]: source validation and sequence-number bookkeeping
//!   (A.1: probation, dropouts, misordering, re-sync after a large jump),
//!   duplicates (which A.1 alone counts as received), loss and fraction
//!   lost for receiver reports (A.3), interarrival jitter (A.8);
//! - [`SendStats`]: the counters a sender report carries (s.6.4.1).
//!
//! # What it must not do
//! Nothing here allocates per packet, reads the clock or touches a socket:
//! arrival times are passed in. It does not reorder or play audio (that is
//! [`crate::jitter`]'s job); it only says how each packet arrived.
use std::time::Instant;

use crate::rtcp::ReportBlock;
use crate::{Error, Result};

/// The fixed part of an RTP header, in bytes (RFC 3550 s.5.1).
pub const HEADER_LEN: usize = 12;

/// A.1: a source is valid once this many packets arrived in sequence.
const MIN_SEQUENTIAL: u8 = 2;
/// A.1: the largest forward gap still taken as loss rather than a jump.
const MAX_DROPOUT: u16 = 3000;
/// A.1: how far behind the highest sequence number a packet may arrive and
/// still be taken as reordered rather than a jump.
const MAX_MISORDER: u16 = 100;
const SEQ_MOD: u32 = 1 << 16;
/// How many recent extended sequence numbers the duplicate bitmap covers;
/// larger than [`MAX_MISORDER`], so every packet A.1 accepts as reordered
/// can be told from a duplicate.
const DUPLICATE_WINDOW: u64 = 128;

fn malformed(reason: impl Into<String>) -> Error {
    Error::Malformed {
        what: "RTP packet",
        reason: reason.into(),
    }
}

pub(crate) fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    let bytes = data.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]))
}

pub(crate) fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = data.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

/// A received RTP packet: its header fields, read once, and views of its
/// CSRC list, header extension and payload in the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    payload_type: u8,
    marker: bool,
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
    csrcs: &'a [u8],
    extension: Option<(u16, &'a [u8])>,
    payload: &'a [u8],
}

impl<'a> RtpPacket<'a> {
    /// Reads a packet (RFC 3550 s.5.1, s.5.3.1 for the extension): version
    /// 2, the CSRC list and the extension must fit, and the padding count
    /// (the last byte, when the P bit is set) must be at least 1 and fit
    /// after the header.
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        let Some(fixed) = data.get(..HEADER_LEN) else {
            return Err(malformed(format!(
                "{} bytes, shorter than the 12-byte header",
                data.len()
            )));
        };
        let (Some(&first), Some(&second)) = (fixed.first(), fixed.get(1)) else {
            return Err(malformed("shorter than the 12-byte header"));
        };
        let version = first >> 6;
        if version != 2 {
            return Err(malformed(format!("version {version}, not 2")));
        }
        let has_padding = first & 0x20 != 0;
        let has_extension = first & 0x10 != 0;
        let csrc_count = usize::from(first & 0x0f);
        let (Some(sequence), Some(timestamp), Some(ssrc)) =
            (u16_at(data, 2), u32_at(data, 4), u32_at(data, 8))
        else {
            return Err(malformed("shorter than the 12-byte header"));
        };

        let csrc_end = HEADER_LEN + 4 * csrc_count;
        let Some(csrcs) = data.get(HEADER_LEN..csrc_end) else {
            return Err(malformed(format!(
                "{csrc_count} CSRCs do not fit in {} bytes",
                data.len()
            )));
        };
        let mut header_end = csrc_end;
        let mut extension = None;
        if has_extension {
            let (Some(profile), Some(length_words)) =
                (u16_at(data, csrc_end), u16_at(data, csrc_end + 2))
            else {
                return Err(malformed("header extension's header truncated"));
            };
            let body_start = csrc_end + 4;
            let body_end = body_start + 4 * usize::from(length_words);
            let Some(body) = data.get(body_start..body_end) else {
                return Err(malformed(format!(
                    "header extension of {length_words} words does not fit"
                )));
            };
            extension = Some((profile, body));
            header_end = body_end;
        }

        let mut payload_end = data.len();
        if has_padding {
            let padding = usize::from(data.last().copied().unwrap_or(0));
            if padding == 0 || padding > data.len() - header_end {
                return Err(malformed(format!(
                    "padding of {padding} bytes does not fit after a {header_end}-byte header in {} bytes",
                    data.len()
                )));
            }
            payload_end -= padding;
        }
        let payload = data.get(header_end..payload_end).unwrap_or_default();
        Ok(Self {
            payload_type: second & 0x7f,
            marker: second & 0x80 != 0,
            sequence,
            timestamp,
            ssrc,
            csrcs,
            extension,
            payload,
        })
    }

    /// The payload type (7 bits).
    pub fn payload_type(&self) -> u8 {
        self.payload_type
    }

    /// The marker bit: for audio, the first packet of a talkspurt (RFC
    /// 3551 s.4.1); for telephone-events, an event's first packet.
    pub fn marker(&self) -> bool {
        self.marker
    }

    /// The 16-bit sequence number.
    pub fn sequence(&self) -> u16 {
        self.sequence
    }

    /// The RTP timestamp, in the payload's clock units.
    pub fn timestamp(&self) -> u32 {
        self.timestamp
    }

    /// The synchronisation source.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The contributing sources (set by mixers), in order.
    pub fn csrcs(&self) -> impl Iterator<Item = u32> + 'a {
        self.csrcs
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }

    /// The header extension (s.5.3.1): its profile-defined 16 bits and its
    /// body, which this node skips.
    pub fn extension(&self) -> Option<(u16, &'a [u8])> {
        self.extension
    }

    /// The payload, without padding.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }
}

/// The header of a packet this node sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    /// 7 bits; a larger value is masked.
    pub payload_type: u8,
    pub marker: bool,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

/// Appends a packet to `out`: the 12-byte header (version 2, no padding,
/// no extension, no CSRC) and `payload`.
pub fn write_packet(header: &RtpHeader, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(HEADER_LEN + payload.len());
    out.push(0x80);
    out.push((u8::from(header.marker) << 7) | (header.payload_type & 0x7f));
    out.extend_from_slice(&header.sequence.to_be_bytes());
    out.extend_from_slice(&header.timestamp.to_be_bytes());
    out.extend_from_slice(&header.ssrc.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Whether a packet received on a port shared by RTP and RTCP (RFC 5761)
/// is RTCP: its second byte, RTP's marker and payload type, is in
/// 192..=223, which s.4 keeps free of RTP payload types for this test.
pub fn looks_like_rtcp(data: &[u8]) -> bool {
    matches!(data.get(1), Some(192..=223))
}

/// How one packet arrived, as [`ReceiveStats::on_packet`] saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// After every packet received so far: counted.
    InOrder { extended_sequence: u64 },
    /// Behind the highest sequence number received, not seen before:
    /// counted.
    Reordered { extended_sequence: u64 },
    /// Seen before: counted as a duplicate, not as received.
    Duplicate,
    /// Not counted: the source is not validated yet (A.1 wants two
    /// packets in sequence, after a new SSRC too), or
    /// the packet is far from the expected sequence number (a large jump
    /// that the next packet must confirm, or a very late packet), or it
    /// predates the packet that validated the source. The caller may
    /// still play it.
    Probation,
    /// The packet after a large jump followed it: the sender restarted its
    /// sequence numbers (A.1); counting starts again here.
    Restarted { extended_sequence: u64 },
}

/// A receiver's statistics about one stream, as RTCP reports them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamStats {
    /// The stream's current SSRC (0 before any packet).
    pub ssrc: u32,
    /// Distinct packets received since the source was validated (or
    /// restarted), duplicates not included.
    pub packets_received: u64,
    /// Packets expected since then: highest minus first extended sequence
    /// number, plus one (A.3).
    pub expected: u64,
    /// `expected - packets_received`. RFC 3550 lets it go negative with
    /// duplicates; here duplicates are not counted, so only a packet lost
    /// from the duplicate window could make it so. Clamped when written
    /// into a report block.
    pub lost: i64,
    pub duplicates: u64,
    pub reordered: u64,
    /// How many times the stream's SSRC changed (each resets the rest).
    pub ssrc_changes: u64,
    pub highest_extended_sequence: u64,
    /// Interarrival jitter (A.8), in RTP timestamp units.
    pub jitter_timestamp_units: u32,
    /// The same jitter, in milliseconds.
    pub jitter_ms: f64,
}

/// Per-stream receive statistics (RFC 3550 A.1, A.3, A.8).
#[derive(Debug, Clone)]
pub struct ReceiveStats {
    clock_rate_hz: u32,
    ssrc: Option<u32>,
    ssrc_changes: u64,
    /// Packets still to see in sequence before the source is valid.
    probation: u8,
    /// A.1's `max_seq`: the highest sequence number seen.
    max_seq: u16,
    /// A.1's `cycles`, already shifted: `cycles + max_seq` is the highest
    /// extended sequence number.
    cycles: u64,
    base_extended: u64,
    /// A.1's `bad_seq`: after a large jump, the sequence number that would
    /// confirm it. Out of range (> 0xFFFF) when there is none.
    bad_seq: u32,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    duplicates: u64,
    reordered: u64,
    /// Bit `i` set: extended sequence number `highest - i` was received.
    recent: u128,
    /// Arrival times are converted to timestamp units from this instant
    /// (the first packet's arrival): only differences matter to A.8.
    epoch: Option<Instant>,
    /// The previous counted packet's relative transit time (A.8).
    transit: Option<u32>,
    jitter: f64,
}

impl ReceiveStats {
    /// Statistics for a stream whose payload clock runs at `clock_rate_hz`
    /// (8000 for G.711); jitter is measured in that clock's units.
    pub fn new(clock_rate_hz: u32) -> Self {
        Self {
            clock_rate_hz: clock_rate_hz.max(1),
            ssrc: None,
            ssrc_changes: 0,
            probation: MIN_SEQUENTIAL,
            max_seq: 0,
            cycles: 0,
            base_extended: 0,
            bad_seq: SEQ_MOD + 1,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            duplicates: 0,
            reordered: 0,
            recent: 0,
            epoch: None,
            transit: None,
            jitter: 0.0,
        }
    }

    fn highest_extended(&self) -> u64 {
        self.cycles + u64::from(self.max_seq)
    }

    /// A.1's `init_seq`: counting starts at `sequence`, which is received.
    fn init_sequence(&mut self, sequence: u16) {
        self.max_seq = sequence;
        self.cycles = 0;
        self.base_extended = u64::from(sequence);
        self.bad_seq = SEQ_MOD + 1;
        self.received = 1;
        self.expected_prior = 0;
        self.received_prior = 0;
        self.recent = 1;
    }

    /// A new source: everything but the count of SSRC changes starts over,
    /// on probation, as if `sequence - 1` had been the last one seen.
    fn start_source(&mut self, ssrc: u32, sequence: u16) {
        let ssrc_changes = self.ssrc_changes + u64::from(self.ssrc.is_some());
        *self = Self::new(self.clock_rate_hz);
        self.ssrc = Some(ssrc);
        self.ssrc_changes = ssrc_changes;
        self.max_seq = sequence.wrapping_sub(1);
    }

    /// Accounts for one received packet and says how it arrived.
    pub fn on_packet(
        &mut self,
        ssrc: u32,
        sequence: u16,
        rtp_timestamp: u32,
        arrival: Instant,
    ) -> Arrival {
        if self.ssrc != Some(ssrc) {
            self.start_source(ssrc, sequence);
        }
        let arrival_kind = self.update_sequence(sequence);
        if matches!(
            arrival_kind,
            Arrival::InOrder { .. } | Arrival::Reordered { .. } | Arrival::Restarted { .. }
        ) {
            self.update_jitter(rtp_timestamp, arrival);
        }
        arrival_kind
    }

    /// A.1's `update_seq`, plus the duplicate window.
    fn update_sequence(&mut self, sequence: u16) -> Arrival {
        let forward = sequence.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if forward == 1 {
                self.probation -= 1;
                self.max_seq = sequence;
                if self.probation == 0 {
                    self.init_sequence(sequence);
                    return Arrival::InOrder {
                        extended_sequence: self.highest_extended(),
                    };
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = sequence;
            }
            return Arrival::Probation;
        }
        if forward == 0 {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        if forward < MAX_DROPOUT {
            if sequence < self.max_seq {
                self.cycles += u64::from(SEQ_MOD);
            }
            self.max_seq = sequence;
            self.recent = if u64::from(forward) >= DUPLICATE_WINDOW {
                1
            } else {
                (self.recent << forward) | 1
            };
            self.received += 1;
            return Arrival::InOrder {
                extended_sequence: self.highest_extended(),
            };
        }
        if u32::from(forward) <= SEQ_MOD - u32::from(MAX_MISORDER) {
            if u32::from(sequence) == self.bad_seq {
                self.init_sequence(sequence);
                return Arrival::Restarted {
                    extended_sequence: self.highest_extended(),
                };
            }
            self.bad_seq = (u32::from(sequence) + 1) & (SEQ_MOD - 1);
            return Arrival::Probation;
        }
        // Behind the highest sequence number by fewer than MAX_MISORDER.
        let behind = u64::from(self.max_seq.wrapping_sub(sequence));
        let Some(extended_sequence) = self.highest_extended().checked_sub(behind) else {
            return Arrival::Probation;
        };
        if extended_sequence < self.base_extended {
            return Arrival::Probation;
        }
        let bit = 1u128 << behind;
        if self.recent & bit != 0 {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        self.recent |= bit;
        self.received += 1;
        self.reordered += 1;
        Arrival::Reordered { extended_sequence }
    }

    /// A.8: the jitter estimate moves by 1/16 of each difference between
    /// consecutive transit times, so a constant network delay (or a
    /// silence gap whose timestamps match its arrival) adds nothing.
    fn update_jitter(&mut self, rtp_timestamp: u32, arrival: Instant) {
        let epoch = *self.epoch.get_or_insert(arrival);
        let elapsed_us = arrival.saturating_duration_since(epoch).as_micros();
        // Wrapping, like RTP timestamps themselves: only differences count.
        let arrival_units = (elapsed_us * u128::from(self.clock_rate_hz) / 1_000_000) as u64 as u32;
        let transit = arrival_units.wrapping_sub(rtp_timestamp);
        if let Some(previous) = self.transit {
            let difference = f64::from((transit.wrapping_sub(previous) as i32).unsigned_abs());
            self.jitter += (difference - self.jitter) / 16.0;
        }
        self.transit = Some(transit);
    }

    /// The statistics so far.
    pub fn stats(&self) -> StreamStats {
        let valid = self.ssrc.is_some() && self.probation == 0;
        let expected = if valid {
            self.highest_extended() + 1 - self.base_extended
        } else {
            0
        };
        StreamStats {
            ssrc: self.ssrc.unwrap_or(0),
            packets_received: self.received,
            expected,
            lost: expected as i64 - self.received as i64,
            duplicates: self.duplicates,
            reordered: self.reordered,
            ssrc_changes: self.ssrc_changes,
            highest_extended_sequence: if valid { self.highest_extended() } else { 0 },
            jitter_timestamp_units: self.jitter as u32,
            jitter_ms: self.jitter * 1000.0 / f64::from(self.clock_rate_hz),
        }
    }

    /// The report block about this stream for the next SR or RR (RFC 3550
    /// s.6.4.1, A.3), `None` until the source is validated. The fraction
    /// lost covers the interval since the previous call, which this call
    /// closes; `last_sr` and `delay_since_last_sr` are the caller's (see
    /// [`crate::rtcp::compact_ntp`] and
    /// [`crate::rtcp::delay_since_last_sr`]).
    pub fn report_block(&mut self, last_sr: u32, delay_since_last_sr: u32) -> Option<ReportBlock> {
        let stats = self.stats();
        if stats.expected == 0 {
            return None;
        }
        let expected_interval = stats.expected.saturating_sub(self.expected_prior);
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.expected_prior = stats.expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval as i64 - received_interval as i64;
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            // At most 255: lost_interval <= expected_interval.
            ((lost_interval as u64 * 256) / expected_interval).min(255) as u8
        };
        Some(ReportBlock {
            ssrc: stats.ssrc,
            fraction_lost,
            cumulative_lost: stats.lost.clamp(-(1 << 23), (1 << 23) - 1) as i32,
            // The wire keeps the cycle count's low 16 bits (s.6.4.1).
            highest_sequence: stats.highest_extended_sequence as u32,
            jitter: stats.jitter_timestamp_units,
            last_sr,
            delay_since_last_sr,
        })
    }
}

/// What a sender report says about the packets sent (RFC 3550 s.6.4.1);
/// the report carries the low 32 bits of each, which wrap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendStats {
    pub packets: u64,
    /// Payload octets only: no header, no padding (s.6.4.1).
    pub octets: u64,
}

impl SendStats {
    /// Accounts for one packet sent with a payload of `payload_len` bytes.
    pub fn on_sent(&mut self, payload_len: usize) {
        self.packets += 1;
        self.octets += payload_len as u64;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const PTIME_UNITS: u32 = 160;

    /// One source's packets at 8 kHz, arrivals in ms from `start`.
    struct Stream {
        stats: ReceiveStats,
        start: Instant,
    }

    impl Stream {
        fn new() -> Self {
            Self {
                stats: ReceiveStats::new(8000),
                start: Instant::now(),
            }
        }

        fn packet(&mut self, sequence: u16, timestamp: u32, arrival_ms: u64) -> Arrival {
            self.stats.on_packet(
                0x1234,
                sequence,
                timestamp,
                self.start + Duration::from_millis(arrival_ms),
            )
        }
    }

    fn header() -> RtpHeader {
        RtpHeader {
            payload_type: 0,
            marker: true,
            sequence: 0xfffe,
            timestamp: 0x1122_3344,
            ssrc: 0xdead_beef,
        }
    }

    #[test]
    fn a_written_packet_parses_back() {
        let mut out = vec![0xaa];
        write_packet(&header(), &[1, 2, 3], &mut out);
        assert_eq!(out.len(), 1 + 12 + 3);
        let packet = RtpPacket::parse(&out[1..]).unwrap();
        assert_eq!(packet.payload_type(), 0);
        assert!(packet.marker());
        assert_eq!(packet.sequence(), 0xfffe);
        assert_eq!(packet.timestamp(), 0x1122_3344);
        assert_eq!(packet.ssrc(), 0xdead_beef);
        assert_eq!(packet.payload(), &[1, 2, 3]);
        assert_eq!(packet.csrcs().count(), 0);
        assert_eq!(packet.extension(), None);
    }

    #[test]
    fn csrcs_extension_and_padding_are_skipped() {
        let mut data = vec![0x80 | 0x20 | 0x10 | 2, 8];
        data.extend_from_slice(&7u16.to_be_bytes());
        data.extend_from_slice(&1000u32.to_be_bytes());
        data.extend_from_slice(&42u32.to_be_bytes());
        data.extend_from_slice(&1u32.to_be_bytes());
        data.extend_from_slice(&2u32.to_be_bytes());
        data.extend_from_slice(&[0xbe, 0xde, 0, 1, 9, 9, 9, 9]);
        data.extend_from_slice(&[5, 6]);
        data.extend_from_slice(&[0, 0, 3]);
        let packet = RtpPacket::parse(&data).unwrap();
        assert_eq!(packet.payload_type(), 8);
        assert!(!packet.marker());
        assert_eq!(packet.csrcs().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(packet.extension(), Some((0xbede, &[9u8, 9, 9, 9][..])));
        assert_eq!(packet.payload(), &[5, 6]);
    }

    #[test]
    fn lies_are_malformed() {
        let mut ok = Vec::new();
        write_packet(&header(), &[1, 2, 3, 4], &mut ok);
        assert!(RtpPacket::parse(&ok[..11]).is_err(), "too short");
        let mut v1 = ok.clone();
        v1[0] = 0x40;
        assert!(RtpPacket::parse(&v1).is_err(), "version 1");
        let mut csrcs = ok.clone();
        csrcs[0] |= 2;
        assert!(RtpPacket::parse(&csrcs).is_err(), "2 CSRCs in 4 bytes");
        let mut extension = ok.clone();
        extension[0] |= 0x10;
        assert!(
            RtpPacket::parse(&extension).is_err(),
            "extension of 4 bytes claimed, none there"
        );
        let mut padding = ok.clone();
        padding[0] |= 0x20;
        *padding.last_mut().unwrap() = 5;
        assert!(
            RtpPacket::parse(&padding).is_err(),
            "5 bytes of padding in a 4-byte payload"
        );
        *padding.last_mut().unwrap() = 0;
        assert!(RtpPacket::parse(&padding).is_err(), "a padding count of 0");
        *padding.last_mut().unwrap() = 4;
        assert_eq!(RtpPacket::parse(&padding).unwrap().payload(), &[] as &[u8]);
    }

    #[test]
    fn rtcp_is_told_from_rtp_by_its_second_byte() {
        assert!(looks_like_rtcp(&[0x80, 200, 0, 6]));
        assert!(looks_like_rtcp(&[0x81, 201]));
        assert!(!looks_like_rtcp(&[0x80, 0]));
        // Payload type 8 with the marker: 136.
        assert!(!looks_like_rtcp(&[0x80, 0x88]));
        assert!(!looks_like_rtcp(&[0x80, 224]));
        assert!(!looks_like_rtcp(&[0x80]));
    }

    #[test]
    fn the_first_packet_is_on_probation_and_the_second_validates() {
        let mut stream = Stream::new();
        assert_eq!(stream.packet(10, 0, 0), Arrival::Probation);
        assert_eq!(stream.stats.stats().expected, 0);
        assert_eq!(stream.stats.report_block(0, 0), None);
        assert_eq!(
            stream.packet(11, 160, 20),
            Arrival::InOrder {
                extended_sequence: 11
            }
        );
        let stats = stream.stats.stats();
        assert_eq!(
            (stats.packets_received, stats.expected, stats.lost),
            (1, 1, 0)
        );
    }

    #[test]
    fn probation_restarts_when_packets_are_not_in_sequence() {
        let mut stream = Stream::new();
        assert_eq!(stream.packet(10, 0, 0), Arrival::Probation);
        assert_eq!(stream.packet(12, 320, 40), Arrival::Probation);
        assert_eq!(
            stream.packet(13, 480, 60),
            Arrival::InOrder {
                extended_sequence: 13
            }
        );
    }

    #[test]
    fn the_sequence_wraps_without_loss() {
        let mut stream = Stream::new();
        let mut sequence: u16 = 65530;
        let mut last = Arrival::Probation;
        for i in 0..12u32 {
            last = stream.packet(sequence, i * PTIME_UNITS, u64::from(i) * 20);
            sequence = sequence.wrapping_add(1);
        }
        // 65530 (probation), 65531..=65535, 0..=5.
        assert_eq!(
            last,
            Arrival::InOrder {
                extended_sequence: 65536 + 5
            }
        );
        let stats = stream.stats.stats();
        assert_eq!(stats.packets_received, 11);
        assert_eq!(stats.expected, 11);
        assert_eq!(stats.lost, 0);
        assert_eq!(stats.highest_extended_sequence, 65541);
        let block = stream.stats.report_block(0, 0).unwrap();
        assert_eq!(block.highest_sequence, 0x0001_0005);
        assert_eq!(block.fraction_lost, 0);
        assert_eq!(block.cumulative_lost, 0);
    }

    #[test]
    fn duplicates_are_counted_apart_and_reordered_packets_are_received() {
        let mut stream = Stream::new();
        stream.packet(1, 0, 0);
        stream.packet(2, 160, 20);
        assert!(matches!(stream.packet(4, 480, 60), Arrival::InOrder { .. }));
        assert_eq!(stream.packet(4, 480, 61), Arrival::Duplicate);
        assert_eq!(
            stream.packet(3, 320, 62),
            Arrival::Reordered {
                extended_sequence: 3
            }
        );
        assert_eq!(stream.packet(3, 320, 63), Arrival::Duplicate);
        assert_eq!(stream.packet(2, 160, 64), Arrival::Duplicate);
        // Before the validating packet: not part of the stream's count.
        assert_eq!(stream.packet(1, 0, 65), Arrival::Probation);
        let stats = stream.stats.stats();
        assert_eq!(stats.packets_received, 3);
        assert_eq!(stats.expected, 3);
        assert_eq!(stats.lost, 0);
        assert_eq!(stats.duplicates, 3);
        assert_eq!(stats.reordered, 1);
    }

    #[test]
    fn loss_and_fraction_lost_per_interval() {
        let mut stream = Stream::new();
        stream.packet(0, 0, 0);
        // Validated at 1; 1..=100 sent, every fourth (2, 6, ..., 98) lost.
        for sequence in 1..=100u16 {
            if sequence % 4 != 2 {
                stream.packet(
                    sequence,
                    u32::from(sequence) * 160,
                    u64::from(sequence) * 20,
                );
            }
        }
        let stats = stream.stats.stats();
        assert_eq!(stats.expected, 100);
        assert_eq!(stats.packets_received, 75);
        assert_eq!(stats.lost, 25);
        let block = stream.stats.report_block(0x1234_5678, 65536).unwrap();
        assert_eq!(block.ssrc, 0x1234);
        // 25 of 100: 64/256.
        assert_eq!(block.fraction_lost, 64);
        assert_eq!(block.cumulative_lost, 25);
        assert_eq!(block.highest_sequence, 100);
        assert_eq!(block.last_sr, 0x1234_5678);
        assert_eq!(block.delay_since_last_sr, 65536);
        // Next interval: 101..=110, all received.
        for sequence in 101..=110u16 {
            stream.packet(
                sequence,
                u32::from(sequence) * 160,
                u64::from(sequence) * 20,
            );
        }
        let block = stream.stats.report_block(0, 0).unwrap();
        assert_eq!(block.fraction_lost, 0);
        assert_eq!(block.cumulative_lost, 25);
        // Then 111..=120 with 5 lost: 128/256.
        for sequence in (112..=120u16).step_by(2) {
            stream.packet(
                sequence,
                u32::from(sequence) * 160,
                u64::from(sequence) * 20,
            );
        }
        let block = stream.stats.report_block(0, 0).unwrap();
        assert_eq!(block.fraction_lost, 128);
        assert_eq!(block.cumulative_lost, 30);
    }

    #[test]
    fn a_large_jump_restarts_when_the_next_packet_follows_it() {
        let mut stream = Stream::new();
        stream.packet(100, 0, 0);
        stream.packet(101, 160, 20);
        stream.packet(102, 320, 40);
        assert_eq!(stream.packet(20_000, 480, 60), Arrival::Probation);
        // A late packet from the old numbering does not confirm it.
        assert_eq!(
            stream.packet(103, 480, 61),
            Arrival::InOrder {
                extended_sequence: 103
            }
        );
        assert_eq!(stream.packet(20_000, 640, 80), Arrival::Probation);
        assert_eq!(
            stream.packet(20_001, 800, 100),
            Arrival::Restarted {
                extended_sequence: 20_001
            }
        );
        let stats = stream.stats.stats();
        assert_eq!(
            (stats.packets_received, stats.expected, stats.lost),
            (1, 1, 0)
        );
        assert_eq!(
            stream.packet(20_002, 960, 120),
            Arrival::InOrder {
                extended_sequence: 20_002
            }
        );
    }

    #[test]
    fn a_gap_under_the_dropout_limit_is_loss() {
        let mut stream = Stream::new();
        stream.packet(0, 0, 0);
        stream.packet(1, 160, 20);
        assert_eq!(
            stream.packet(2001, 2001 * 160, 40),
            Arrival::InOrder {
                extended_sequence: 2001
            }
        );
        assert_eq!(stream.stats.stats().lost, 1999);
        // Behind by more than MAX_MISORDER: taken for a jump, not counted.
        assert_eq!(stream.packet(1500, 1500 * 160, 41), Arrival::Probation);
        assert_eq!(stream.stats.stats().packets_received, 2);
    }

    #[test]
    fn a_new_ssrc_resets_the_stream() {
        let mut stream = Stream::new();
        for sequence in 0..10u16 {
            stream.packet(
                sequence,
                u32::from(sequence) * 160,
                u64::from(sequence) * 20,
            );
        }
        let at = stream.start + Duration::from_millis(200);
        assert_eq!(stream.stats.on_packet(99, 5000, 0, at), Arrival::Probation);
        let stats = stream.stats.stats();
        assert_eq!(stats.ssrc, 99);
        assert_eq!(stats.ssrc_changes, 1);
        assert_eq!(stats.packets_received, 0);
        assert_eq!(
            stream
                .stats
                .on_packet(99, 5001, 160, at + Duration::from_millis(20)),
            Arrival::InOrder {
                extended_sequence: 5001
            }
        );
        assert_eq!(stream.stats.stats().packets_received, 1);
    }

    #[test]
    fn constant_transit_gives_no_jitter_even_across_a_silence_gap() {
        let mut stream = Stream::new();
        // Network delay 37 ms on every packet; 2 s of silence after 10 packets
        // (a new talkspurt: timestamps jump by 16,000 units, arrival by 2 s).
        for i in 0..10u32 {
            stream.packet(i as u16, i * 160, u64::from(i) * 20 + 37);
        }
        for i in 10..20u32 {
            let timestamp = i * 160 + 16_000;
            stream.packet(i as u16, timestamp, u64::from(i) * 20 + 2000 + 37);
        }
        let stats = stream.stats.stats();
        assert_eq!(stats.jitter_timestamp_units, 0);
        assert_eq!(stats.jitter_ms, 0.0);
    }

    #[test]
    fn alternating_delay_matches_a_hand_computation() {
        let mut stream = Stream::new();
        // Delays 0, 10 ms, 0, 10 ms...: each transit differs from the
        // previous by 80 units. J(n) = J(n-1) + (80 - J(n-1)) / 16, J = 0
        // after the first counted packet (the second sent), so after k
        // differences J = 80 (1 - (15/16)^k).
        let packets = 12u32;
        for i in 0..packets {
            let delay_ms = if i % 2 == 0 { 0 } else { 10 };
            stream.packet(i as u16, i * 160, u64::from(i) * 20 + delay_ms);
        }
        // Counted packets: 1..=11, so 10 differences.
        let expected = 80.0 * (1.0 - (15.0f64 / 16.0).powi(10));
        let stats = stream.stats.stats();
        assert!((expected - 38.0432).abs() < 0.0001, "{expected}");
        assert_eq!(stats.jitter_timestamp_units, 38);
        assert!(
            (stats.jitter_ms - expected / 8.0).abs() < 1e-9,
            "{}",
            stats.jitter_ms
        );
    }

    #[test]
    fn send_stats_count_payload_octets() {
        let mut send = SendStats::default();
        send.on_sent(160);
        send.on_sent(160);
        send.on_sent(4);
        assert_eq!(
            send,
            SendStats {
                packets: 3,
                octets: 324
            }
        );
    }
}
