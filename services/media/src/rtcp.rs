//! RTCP (RFC 3550 s.6): the compound packets this node sends about its
//! streams and a tolerant reader for the ones it receives.
//!
//! # What it owns
//! - [`ReportBlock`] (s.6.4.1) and [`SenderInfo`] (s.6.4.1): the numbers
//!   of sender and receiver reports;
//! - writers of compound packets that start with an SR or RR and carry an
//!   SDES CNAME, as s.6.1 requires: [`write_sender_report`],
//!   [`write_receiver_report`], and [`write_bye`] (RR, SDES, BYE: s.6.6);
//! - [`parse_compound`]: SR (s.6.4.1), RR (s.6.4.2), SDES CNAMEs (s.6.5),
//!   BYE (s.6.6); other packet types (APP, feedback) are named and skipped;
//! - NTP timestamps (s.4), their compact middle 32 bits (LSR) and delays in
//!   1/65536 s (DLSR), and the round-trip time they give (s.6.4.1);
//! - [`report_interval`]: when to send the next report (s.6.2, s.6.3.1),
//!   simplified for two-party calls.
//!
//! # What it must not do
//! It reads no clock and draws no random numbers: the caller passes the
//! wall-clock time and the random factor. Reading allocates (a `Vec` of
//! packets, CNAME strings): RTCP arrives about once per 5 s per call, far
//! from the RTP hot path; writing appends to the caller's buffer.
use std::time::Duration;

use crate::rtp::{u16_at, u32_at, SendStats};
use crate::{Error, Result};

/// RTCP packet types (RFC 3550 s.12.1).
const SENDER_REPORT: u8 = 200;
const RECEIVER_REPORT: u8 = 201;
const SOURCE_DESCRIPTION: u8 = 202;
const BYE: u8 = 203;
/// SDES item types (s.6.5).
const SDES_END: u8 = 0;
const SDES_CNAME: u8 = 1;

/// A report's 5-bit count field holds at most this many blocks; writers
/// send the first 31 they are given (a two-party call has one).
pub const MAX_REPORT_BLOCKS: usize = 31;
/// An SDES item's or a BYE reason's length is one octet.
const MAX_TEXT_LEN: usize = 255;
const REPORT_BLOCK_LEN: usize = 24;
const SENDER_INFO_LEN: usize = 20;
/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET_SECONDS: u64 = 2_208_988_800;
/// s.6.2: the minimum interval between reports.
const MIN_REPORT_INTERVAL_SECONDS: f64 = 5.0;
const CUMULATIVE_LOST_MAX: i32 = (1 << 23) - 1;
const CUMULATIVE_LOST_MIN: i32 = -(1 << 23);

fn malformed(reason: impl Into<String>) -> Error {
    Error::Malformed {
        what: "RTCP packet",
        reason: reason.into(),
    }
}

/// One report block: what a receiver says about one source (s.6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlock {
    pub ssrc: u32,
    /// Lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// 24 bits signed on the wire; clamped when written.
    pub cumulative_lost: i32,
    /// The highest extended sequence number (cycles in the upper 16 bits).
    pub highest_sequence: u32,
    /// Interarrival jitter, in timestamp units.
    pub jitter: u32,
    /// The middle 32 bits of the last SR's NTP timestamp (0: none yet).
    pub last_sr: u32,
    /// Since that SR arrived, in 1/65536 s.
    pub delay_since_last_sr: u32,
}

/// The sender information of an SR (s.6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderInfo {
    /// Wall-clock time of the report (see [`ntp_timestamp`]).
    pub ntp_timestamp: u64,
    /// The same instant in the stream's RTP clock.
    pub rtp_timestamp: u32,
    pub packet_count: u32,
    pub octet_count: u32,
}

impl SenderInfo {
    /// The sender information for `sent` at `ntp_timestamp`, which is
    /// `rtp_timestamp` in the stream's clock; the counts keep their low 32
    /// bits, wrapping as s.6.4.1 says.
    pub fn from_stats(ntp_timestamp: u64, rtp_timestamp: u32, sent: &SendStats) -> Self {
        Self {
            ntp_timestamp,
            rtp_timestamp,
            packet_count: sent.packets as u32,
            octet_count: sent.octets as u32,
        }
    }
}

/// One packet of a compound RTCP packet, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtcpPacket {
    SenderReport {
        ssrc: u32,
        info: SenderInfo,
        blocks: Vec<ReportBlock>,
    },
    ReceiverReport {
        ssrc: u32,
        blocks: Vec<ReportBlock>,
    },
    /// Each chunk's SSRC and CNAME; chunks without one and other items
    /// (TOOL, NAME...) are skipped.
    SourceDescription {
        cnames: Vec<(u32, String)>,
    },
    Bye {
        ssrcs: Vec<u32>,
        reason: Option<String>,
    },
    /// Read no further than its type: APP, feedback (RFC 4585), XR...
    Other {
        packet_type: u8,
    },
}

/// Starts a packet: writes its header with a length to be patched by
/// [`finish`]; returns where it starts.
fn begin(count: usize, packet_type: u8, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.push(0x80 | (count as u8 & 0x1f));
    out.push(packet_type);
    out.extend_from_slice(&[0, 0]);
    start
}

/// Pads the packet begun at `start` with zeros to a multiple of 4 bytes
/// (what SDES and BYE need, and a no-op for reports), and writes its
/// length in 32-bit words minus one.
fn finish(start: usize, out: &mut Vec<u8>) {
    while !(out.len() - start).is_multiple_of(4) {
        out.push(0);
    }
    let words = ((out.len() - start) / 4 - 1) as u16;
    if let Some(length) = out.get_mut(start + 2..start + 4) {
        length.copy_from_slice(&words.to_be_bytes());
    }
}

/// The longest prefix of `text` that fits an octet length, cut at a
/// character boundary.
fn truncated(text: &str) -> &[u8] {
    let mut end = text.len().min(MAX_TEXT_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.as_bytes().get(..end).unwrap_or_default()
}

fn write_block(block: &ReportBlock, out: &mut Vec<u8>) {
    let lost = block
        .cumulative_lost
        .clamp(CUMULATIVE_LOST_MIN, CUMULATIVE_LOST_MAX);
    let lost = (lost as u32 & 0x00ff_ffff).to_be_bytes();
    out.extend_from_slice(&block.ssrc.to_be_bytes());
    out.push(block.fraction_lost);
    out.extend_from_slice(&lost[1..]);
    out.extend_from_slice(&block.highest_sequence.to_be_bytes());
    out.extend_from_slice(&block.jitter.to_be_bytes());
    out.extend_from_slice(&block.last_sr.to_be_bytes());
    out.extend_from_slice(&block.delay_since_last_sr.to_be_bytes());
}

fn write_blocks(blocks: &[ReportBlock], out: &mut Vec<u8>) {
    for block in blocks.iter().take(MAX_REPORT_BLOCKS) {
        write_block(block, out);
    }
}

fn write_receiver_report_only(ssrc: u32, blocks: &[ReportBlock], out: &mut Vec<u8>) {
    let start = begin(blocks.len().min(MAX_REPORT_BLOCKS), RECEIVER_REPORT, out);
    out.extend_from_slice(&ssrc.to_be_bytes());
    write_blocks(blocks, out);
    finish(start, out);
}

/// An SDES packet with one chunk: `ssrc`'s CNAME (at most 255 bytes).
fn write_cname(ssrc: u32, cname: &str, out: &mut Vec<u8>) {
    let start = begin(1, SOURCE_DESCRIPTION, out);
    out.extend_from_slice(&ssrc.to_be_bytes());
    let cname = truncated(cname);
    out.push(SDES_CNAME);
    out.push(cname.len() as u8);
    out.extend_from_slice(cname);
    // The item list ends with at least one null octet, then pads to 32
    // bits (s.6.5), which `finish` does with more nulls.
    out.push(SDES_END);
    finish(start, out);
}

/// Appends a compound packet: an SR (the first 31 blocks) and an SDES
/// with `cname` (truncated to 255 bytes).
pub fn write_sender_report(
    ssrc: u32,
    info: &SenderInfo,
    blocks: &[ReportBlock],
    cname: &str,
    out: &mut Vec<u8>,
) {
    let start = begin(blocks.len().min(MAX_REPORT_BLOCKS), SENDER_REPORT, out);
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(&info.ntp_timestamp.to_be_bytes());
    out.extend_from_slice(&info.rtp_timestamp.to_be_bytes());
    out.extend_from_slice(&info.packet_count.to_be_bytes());
    out.extend_from_slice(&info.octet_count.to_be_bytes());
    write_blocks(blocks, out);
    finish(start, out);
    write_cname(ssrc, cname, out);
}

/// Appends a compound packet: an RR (the first 31 blocks; none is valid
/// before anything was received) and an SDES with `cname`.
pub fn write_receiver_report(ssrc: u32, blocks: &[ReportBlock], cname: &str, out: &mut Vec<u8>) {
    write_receiver_report_only(ssrc, blocks, out);
    write_cname(ssrc, cname, out);
}

/// Appends a compound packet saying `ssrc` leaves (s.6.6): an empty RR,
/// an SDES with `cname`, and a BYE with `reason` (truncated to 255 bytes).
pub fn write_bye(ssrc: u32, reason: Option<&str>, cname: &str, out: &mut Vec<u8>) {
    write_receiver_report(ssrc, &[], cname, out);
    let start = begin(1, BYE, out);
    out.extend_from_slice(&ssrc.to_be_bytes());
    if let Some(reason) = reason {
        let reason = truncated(reason);
        out.push(reason.len() as u8);
        out.extend_from_slice(reason);
    }
    finish(start, out);
}

fn read_block(data: &[u8]) -> Option<ReportBlock> {
    let lost_word = u32_at(data, 4)?;
    Some(ReportBlock {
        ssrc: u32_at(data, 0)?,
        fraction_lost: (lost_word >> 24) as u8,
        // Shifting the 24 bits to the top then back sign-extends them.
        cumulative_lost: ((lost_word << 8) as i32) >> 8,
        highest_sequence: u32_at(data, 8)?,
        jitter: u32_at(data, 12)?,
        last_sr: u32_at(data, 16)?,
        delay_since_last_sr: u32_at(data, 20)?,
    })
}

/// `count` report blocks from `body` at `at`, which must hold them.
fn read_blocks(body: &[u8], at: usize, count: usize, kind: &str) -> Result<Vec<ReportBlock>> {
    let needed = at + count * REPORT_BLOCK_LEN;
    if body.len() < needed {
        return Err(malformed(format!(
            "{kind} with {count} report blocks needs {needed} bytes after its header, has {}",
            body.len()
        )));
    }
    (0..count)
        .map(|index| {
            body.get(at + index * REPORT_BLOCK_LEN..)
                .and_then(read_block)
                .ok_or_else(|| malformed(format!("{kind}: report block {index} truncated")))
        })
        .collect()
}

fn read_sender_report(body: &[u8], count: usize) -> Result<RtcpPacket> {
    let (Some(ssrc), Some(ntp_high), Some(ntp_low), Some(rtp_timestamp)) = (
        u32_at(body, 0),
        u32_at(body, 4),
        u32_at(body, 8),
        u32_at(body, 12),
    ) else {
        return Err(malformed("SR shorter than its sender information"));
    };
    let (Some(packet_count), Some(octet_count)) = (u32_at(body, 16), u32_at(body, 20)) else {
        return Err(malformed("SR shorter than its sender information"));
    };
    Ok(RtcpPacket::SenderReport {
        ssrc,
        info: SenderInfo {
            ntp_timestamp: (u64::from(ntp_high) << 32) | u64::from(ntp_low),
            rtp_timestamp,
            packet_count,
            octet_count,
        },
        blocks: read_blocks(body, 4 + SENDER_INFO_LEN, count, "SR")?,
    })
}

fn read_receiver_report(body: &[u8], count: usize) -> Result<RtcpPacket> {
    let Some(ssrc) = u32_at(body, 0) else {
        return Err(malformed("RR without its SSRC"));
    };
    Ok(RtcpPacket::ReceiverReport {
        ssrc,
        blocks: read_blocks(body, 4, count, "RR")?,
    })
}

fn read_source_description(body: &[u8], count: usize) -> Result<RtcpPacket> {
    let mut cnames = Vec::new();
    let mut at = 0;
    for chunk in 0..count {
        let Some(ssrc) = u32_at(body, at) else {
            return Err(malformed(format!("SDES chunk {chunk} of {count} missing")));
        };
        at += 4;
        // Items until a null octet; a chunk that runs to the packet's end
        // without one is taken as ended there.
        while let Some(&item_type) = body.get(at) {
            if item_type == SDES_END {
                // The chunk is padded to 32 bits (chunks start aligned).
                at = (at + 4) & !3;
                break;
            }
            let Some(&len) = body.get(at + 1) else {
                return Err(malformed("SDES item without its length"));
            };
            let text_start = at + 2;
            let Some(text) = body.get(text_start..text_start + usize::from(len)) else {
                return Err(malformed(format!(
                    "SDES item of {len} bytes overruns the packet"
                )));
            };
            if item_type == SDES_CNAME {
                cnames.push((ssrc, String::from_utf8_lossy(text).into_owned()));
            }
            at = text_start + usize::from(len);
        }
    }
    Ok(RtcpPacket::SourceDescription { cnames })
}

fn read_bye(body: &[u8], count: usize) -> Result<RtcpPacket> {
    let ssrcs_len = 4 * count;
    if body.len() < ssrcs_len {
        return Err(malformed(format!(
            "BYE with {count} SSRCs in {} bytes",
            body.len()
        )));
    }
    let ssrcs = (0..count)
        .filter_map(|index| u32_at(body, 4 * index))
        .collect();
    let reason = match body.get(ssrcs_len) {
        None => None,
        Some(&len) => {
            let start = ssrcs_len + 1;
            let Some(text) = body.get(start..start + usize::from(len)) else {
                return Err(malformed(format!(
                    "BYE reason of {len} bytes overruns the packet"
                )));
            };
            Some(String::from_utf8_lossy(text).into_owned())
        }
    };
    Ok(RtcpPacket::Bye { ssrcs, reason })
}

/// Reads a compound RTCP packet (s.6.1). Every packet must be version 2
/// and its length must fit what is left, padding (P bit) must fit, and a
/// packet must hold what its count field claims: otherwise the whole is
/// malformed. Tolerant otherwise: unknown types are [`RtcpPacket::Other`],
/// bytes after what a packet's count needs (profile extensions) are
/// ignored, and the compound need not start with SR or RR (RFC 5506's
/// reduced-size RTCP does not).
pub fn parse_compound(data: &[u8]) -> Result<Vec<RtcpPacket>> {
    if data.is_empty() {
        return Err(malformed("empty"));
    }
    let mut packets = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let (Some(&first), Some(&packet_type), Some(length_words)) =
            (rest.first(), rest.get(1), u16_at(rest, 2))
        else {
            return Err(malformed(format!(
                "{} bytes left, shorter than a header",
                rest.len()
            )));
        };
        let version = first >> 6;
        if version != 2 {
            return Err(malformed(format!("version {version}, not 2")));
        }
        let packet_len = (usize::from(length_words) + 1) * 4;
        let Some(packet) = rest.get(..packet_len) else {
            return Err(malformed(format!(
                "length field says {packet_len} bytes, {} left",
                rest.len()
            )));
        };
        rest = rest.get(packet_len..).unwrap_or_default();
        let mut body = packet.get(4..).unwrap_or_default();
        if first & 0x20 != 0 {
            let padding = usize::from(packet.last().copied().unwrap_or(0));
            if padding == 0 || padding > body.len() {
                return Err(malformed(format!(
                    "padding of {padding} bytes in a {packet_len}-byte packet"
                )));
            }
            body = body.get(..body.len() - padding).unwrap_or_default();
        }
        let count = usize::from(first & 0x1f);
        packets.push(match packet_type {
            SENDER_REPORT => read_sender_report(body, count)?,
            RECEIVER_REPORT => read_receiver_report(body, count)?,
            SOURCE_DESCRIPTION => read_source_description(body, count)?,
            BYE => read_bye(body, count)?,
            packet_type => RtcpPacket::Other { packet_type },
        });
    }
    Ok(packets)
}

/// The 64-bit NTP timestamp (s.4: seconds since 1900 in the upper 32 bits,
/// the fraction in the lower) of a wall-clock time given since the Unix
/// epoch. The seconds wrap in 2036, as NTP's do.
pub fn ntp_timestamp(since_unix_epoch: Duration) -> u64 {
    let seconds = (since_unix_epoch.as_secs() + NTP_UNIX_OFFSET_SECONDS) & 0xffff_ffff;
    let fraction = (u64::from(since_unix_epoch.subsec_nanos()) << 32) / 1_000_000_000;
    (seconds << 32) | fraction
}

/// The middle 32 bits of an NTP timestamp: an SR's identity in the next
/// report block's LSR, and the unit of round-trip arithmetic (1/65536 s).
pub fn compact_ntp(ntp_timestamp: u64) -> u32 {
    (ntp_timestamp >> 16) as u32
}

/// A delay in units of 1/65536 s, for a report block's DLSR (saturating).
pub fn delay_since_last_sr(delay: Duration) -> u32 {
    u32::try_from(delay.as_nanos() * 65_536 / 1_000_000_000).unwrap_or(u32::MAX)
}

/// The round-trip time a received report block shows (s.6.4.1): its
/// arrival (`arrival_ntp`, this node's wall clock) minus the LSR it
/// echoes minus the DLSR it waited. `None` when it echoes no SR (LSR 0)
/// or when the result would be negative (clocks and rounding).
pub fn round_trip_time(arrival_ntp: u64, block: &ReportBlock) -> Option<Duration> {
    if block.last_sr == 0 {
        return None;
    }
    let units = compact_ntp(arrival_ntp)
        .wrapping_sub(block.last_sr)
        .wrapping_sub(block.delay_since_last_sr);
    if units > i32::MAX as u32 {
        return None;
    }
    Some(Duration::from_nanos(
        u64::from(units) * 1_000_000_000 / 65_536,
    ))
}

/// When to send the next report (s.6.2, s.6.3.1), simplified for a
/// two-party call: its RTCP bandwidth (5% of a 64 kb/s stream, two
/// members, reports of ~100 bytes) gives a deterministic interval far
/// under s.6.2's 5 s minimum, so the minimum is used, times the caller's
/// `random_factor` in [0.5, 1.5] (clamped; NaN counts as 1), divided by
/// e - 3/2 to compensate for timer reconsideration (s.6.3.1): 2.05 s to
/// 6.16 s, 4.10 s on average. Not done: the halved minimum before the
/// first report, reconsideration, and BYE's back-off for large sessions.
pub fn report_interval(random_factor: f64) -> Duration {
    let factor = if random_factor.is_nan() {
        1.0
    } else {
        random_factor.clamp(0.5, 1.5)
    };
    Duration::from_secs_f64(MIN_REPORT_INTERVAL_SECONDS * factor / (std::f64::consts::E - 1.5))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(ssrc: u32) -> ReportBlock {
        ReportBlock {
            ssrc,
            fraction_lost: 64,
            cumulative_lost: -3,
            highest_sequence: 0x0001_0005,
            jitter: 38,
            last_sr: 0xaabb_ccdd,
            delay_since_last_sr: 0x0001_8000,
        }
    }

    fn info() -> SenderInfo {
        SenderInfo {
            ntp_timestamp: 0xe000_0000_8000_0000,
            rtp_timestamp: 160_000,
            packet_count: 1000,
            octet_count: 160_000,
        }
    }

    #[test]
    fn a_sender_report_round_trips() {
        let mut out = Vec::new();
        write_sender_report(
            7,
            &info(),
            &[block(9), block(10)],
            "dialtone@node-1",
            &mut out,
        );
        // SR: 4 + 4 + 20 + 2 * 24 = 76; SDES: 4 + 4 + 2 + 15 + 1 = 26 -> 28.
        assert_eq!(out.len(), 76 + 28);
        assert_eq!(&out[..4], &[0x82, 200, 0, 18]);
        assert_eq!(&out[76..80], &[0x81, 202, 0, 6]);
        let packets = parse_compound(&out).unwrap();
        assert_eq!(
            packets,
            [
                RtcpPacket::SenderReport {
                    ssrc: 7,
                    info: info(),
                    blocks: vec![block(9), block(10)],
                },
                RtcpPacket::SourceDescription {
                    cnames: vec![(7, "dialtone@node-1".to_owned())]
                },
            ]
        );
    }

    #[test]
    fn a_receiver_report_round_trips_and_clamps_cumulative_loss() {
        let mut huge = block(9);
        huge.cumulative_lost = 10_000_000;
        let mut out = Vec::new();
        write_receiver_report(7, &[huge], "abcd", &mut out);
        // RR 32; SDES 4 + 4 + 2 + 4 + 1 = 15 -> 16.
        assert_eq!(out.len(), 48);
        let packets = parse_compound(&out).unwrap();
        let RtcpPacket::ReceiverReport { ssrc, blocks } = &packets[0] else {
            panic!("{packets:?}");
        };
        assert_eq!(*ssrc, 7);
        assert_eq!(blocks[0].cumulative_lost, (1 << 23) - 1);
        assert_eq!(blocks[0].fraction_lost, 64);
        huge.cumulative_lost = -10_000_000;
        out.clear();
        write_receiver_report(7, &[huge], "abcd", &mut out);
        let packets = parse_compound(&out).unwrap();
        let RtcpPacket::ReceiverReport { blocks, .. } = &packets[0] else {
            panic!("{packets:?}");
        };
        assert_eq!(blocks[0].cumulative_lost, -(1 << 23));
    }

    #[test]
    fn a_bye_round_trips() {
        let mut out = Vec::new();
        write_bye(7, Some("call ended"), "c", &mut out);
        let packets = parse_compound(&out).unwrap();
        assert_eq!(
            packets,
            [
                RtcpPacket::ReceiverReport {
                    ssrc: 7,
                    blocks: vec![]
                },
                RtcpPacket::SourceDescription {
                    cnames: vec![(7, "c".to_owned())]
                },
                RtcpPacket::Bye {
                    ssrcs: vec![7],
                    reason: Some("call ended".to_owned())
                },
            ]
        );
        out.clear();
        write_bye(7, None, "c", &mut out);
        assert_eq!(
            parse_compound(&out).unwrap()[2],
            RtcpPacket::Bye {
                ssrcs: vec![7],
                reason: None
            }
        );
    }

    #[test]
    fn long_texts_are_cut_at_255_bytes_on_a_character_boundary() {
        let cname = "é".repeat(200);
        let mut out = Vec::new();
        write_receiver_report(1, &[], &cname, &mut out);
        let packets = parse_compound(&out).unwrap();
        let RtcpPacket::SourceDescription { cnames } = &packets[1] else {
            panic!("{packets:?}");
        };
        assert_eq!(cnames[0].1, "é".repeat(127));
    }

    /// What a desk phone sends: an SR with one report block, then an SDES
    /// with CNAME and TOOL items, written byte by byte from s.6.4.1 and
    /// s.6.5.
    #[test]
    fn a_phones_compound_packet_is_read() {
        let bytes: Vec<u8> = [
            // SR, RC=1, length 12 words (52 bytes).
            &[0x81, 200, 0x00, 0x0c][..],
            &[0x5e, 0xed, 0x1d, 0x42],                         // SSRC
            &[0xe9, 0x3b, 0x6c, 0x10, 0x40, 0x00, 0x00, 0x00], // NTP
            &[0x00, 0x01, 0xf4, 0x00],                         // RTP timestamp 128000
            &[0x00, 0x00, 0x03, 0x20],                         // 800 packets
            &[0x00, 0x01, 0xf4, 0x00],                         // 128000 octets
            &[0x00, 0x00, 0x30, 0x39],                         // block: SSRC 12345
            &[0x05, 0xff, 0xff, 0xfe],                         // 5/256 lost, cumulative -2
            &[0x00, 0x00, 0x02, 0x58],                         // highest 600
            &[0x00, 0x00, 0x00, 0x11],                         // jitter 17
            &[0xe9, 0x3b, 0x6c, 0x0f],                         // LSR
            &[0x00, 0x00, 0x80, 0x00],                         // DLSR 0.5 s
            // SDES, SC=1, length 9 words (40 bytes).
            &[0x81, 202, 0x00, 0x09],
            &[0x5e, 0xed, 0x1d, 0x42],
            &[1, 15],
            b"ext1001@10.0.0.",
            &[6, 12],
            b"Yealink T46U",
            &[0],
        ]
        .concat();
        assert_eq!(bytes.len(), 52 + 40);
        let packets = parse_compound(&bytes).unwrap();
        assert_eq!(
            packets,
            [
                RtcpPacket::SenderReport {
                    ssrc: 0x5eed_1d42,
                    info: SenderInfo {
                        ntp_timestamp: 0xe93b_6c10_4000_0000,
                        rtp_timestamp: 128_000,
                        packet_count: 800,
                        octet_count: 128_000,
                    },
                    blocks: vec![ReportBlock {
                        ssrc: 12345,
                        fraction_lost: 5,
                        cumulative_lost: -2,
                        highest_sequence: 600,
                        jitter: 17,
                        last_sr: 0xe93b_6c0f,
                        delay_since_last_sr: 0x8000,
                    }],
                },
                RtcpPacket::SourceDescription {
                    cnames: vec![(0x5eed_1d42, "ext1001@10.0.0.".to_owned())]
                },
            ]
        );
    }

    #[test]
    fn truncation_and_lying_lengths_are_malformed() {
        let mut out = Vec::new();
        write_sender_report(7, &info(), &[block(9)], "cname", &mut out);
        // Every cut inside a packet (not at the boundary between them).
        let boundary = 52;
        for len in 0..out.len() {
            if len != boundary {
                assert!(parse_compound(&out[..len]).is_err(), "cut at {len}");
            }
        }
        assert!(parse_compound(&out[..boundary]).is_ok());
        // The SR claims two blocks but its length holds one.
        let mut lying = out.clone();
        lying[0] = 0x82;
        assert!(parse_compound(&lying).is_err());
        // The SR's length claims more than there is.
        let mut lying = out.clone();
        lying[3] = 200;
        assert!(parse_compound(&lying).is_err());
        // An SDES item longer than its packet.
        let mut lying = out.clone();
        lying[boundary + 9] = 100;
        assert!(parse_compound(&lying).is_err());
        // Version 1.
        let mut lying = out.clone();
        lying[0] = 0x41;
        assert!(parse_compound(&lying).is_err());
        // Padding bit with a count larger than the body.
        let mut lying = out.clone();
        lying[boundary] |= 0x20;
        *lying.last_mut().unwrap() = 200;
        assert!(parse_compound(&lying).is_err());
    }

    #[test]
    fn other_packet_types_are_named_and_skipped() {
        let mut out = vec![0x81, 205, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2];
        write_receiver_report(3, &[], "x", &mut out);
        let packets = parse_compound(&out).unwrap();
        assert_eq!(packets[0], RtcpPacket::Other { packet_type: 205 });
        assert!(matches!(
            packets[1],
            RtcpPacket::ReceiverReport { ssrc: 3, .. }
        ));
    }

    #[test]
    fn ntp_timestamps_and_round_trip_time() {
        // 2024-01-01T00:00:00.5Z.
        let ntp = ntp_timestamp(Duration::from_millis(1_704_067_200_500));
        assert_eq!(ntp >> 32, 1_704_067_200 + 2_208_988_800);
        assert_eq!(ntp & 0xffff_ffff, 0x8000_0000);
        assert_eq!(compact_ntp(0x1234_5678_9abc_def0), 0x5678_9abc);
        assert_eq!(delay_since_last_sr(Duration::from_millis(1500)), 98_304);
        assert_eq!(delay_since_last_sr(Duration::from_secs(100_000)), u32::MAX);

        // An SR sent at t, echoed after 1.5 s at the peer, back at t + 1.62 s.
        let sent = Duration::from_secs(1_700_000_000);
        let echoed = ReportBlock {
            last_sr: compact_ntp(ntp_timestamp(sent)),
            delay_since_last_sr: delay_since_last_sr(Duration::from_millis(1500)),
            ..block(1)
        };
        let arrival = ntp_timestamp(sent + Duration::from_millis(1620));
        let rtt = round_trip_time(arrival, &echoed).unwrap();
        assert!(
            rtt.abs_diff(Duration::from_millis(120)) < Duration::from_micros(50),
            "{rtt:?}"
        );
        assert_eq!(
            round_trip_time(
                arrival,
                &ReportBlock {
                    last_sr: 0,
                    ..echoed
                }
            ),
            None
        );
        let early = ntp_timestamp(sent + Duration::from_millis(1400));
        assert_eq!(round_trip_time(early, &echoed), None);
    }

    #[test]
    fn the_report_interval_is_five_seconds_compensated() {
        let average = report_interval(1.0).as_secs_f64();
        assert!((average - 4.1042).abs() < 0.001, "{average}");
        assert!((report_interval(0.5).as_secs_f64() - 2.0521).abs() < 0.001);
        assert!((report_interval(1.5).as_secs_f64() - 6.1563).abs() < 0.001);
        assert_eq!(report_interval(0.0), report_interval(0.5));
        assert_eq!(report_interval(9.0), report_interval(1.5));
        assert_eq!(report_interval(f64::NAN), report_interval(1.0));
    }

    #[test]
    fn sender_info_keeps_the_counts_low_32_bits() {
        let sent = SendStats {
            packets: (1 << 32) + 5,
            octets: 800,
        };
        let info = SenderInfo::from_stats(1, 2, &sent);
        assert_eq!((info.packet_count, info.octet_count), (5, 800));
    }
}
