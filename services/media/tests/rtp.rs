//! Properties of the RTP view, writer and receive statistics.
use std::time::{Duration, Instant};

use dialtone_media::rtp::{write_packet, Arrival, ReceiveStats, RtpHeader, RtpPacket};
use proptest::prelude::*;

proptest! {
    #[test]
    fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = RtpPacket::parse(&data);
    }

    /// Version 2 forced, so that most inputs reach the CSRC, extension and
    /// padding checks.
    #[test]
    fn parse_never_panics_on_version_2(mut data in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Some(first) = data.first_mut() {
            *first = (*first & 0x3f) | 0x80;
        }
        if let Ok(packet) = RtpPacket::parse(&data) {
            prop_assert!(packet.payload().len() + 12 <= data.len());
        }
    }

    #[test]
    fn write_then_parse_round_trips(
        payload_type in 0u8..128,
        marker: bool,
        sequence: u16,
        timestamp: u32,
        ssrc: u32,
        payload in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let header = RtpHeader { payload_type, marker, sequence, timestamp, ssrc };
        let mut out = Vec::new();
        write_packet(&header, &payload, &mut out);
        let packet = RtpPacket::parse(&out).unwrap();
        prop_assert_eq!(packet.payload_type(), payload_type);
        prop_assert_eq!(packet.marker(), marker);
        prop_assert_eq!(packet.sequence(), sequence);
        prop_assert_eq!(packet.timestamp(), timestamp);
        prop_assert_eq!(packet.ssrc(), ssrc);
        prop_assert_eq!(packet.payload(), &payload[..]);
    }

    /// Two packets in order validate the source; then every later packet
    /// arrives at least once, at most 50 places from where it was sent,
    /// some of them twice or three times: at the end nothing is lost,
    /// every distinct packet is received once and every extra copy is a
    /// duplicate, across sequence-number wraps too.
    #[test]
    fn reordering_and_duplication_within_the_window_lose_nothing(
        first_sequence: u16,
        count in 3usize..400,
        offsets in proptest::collection::vec(0usize..50, 400),
        copies in proptest::collection::vec(prop_oneof![6 => Just(1usize), 1 => Just(2), 1 => Just(3)], 400),
    ) {
        let mut deliveries: Vec<(usize, usize)> = Vec::new();
        for index in 2..count {
            for copy in 0..copies[index] {
                deliveries.push((index + offsets[(index + 7 * copy) % 400], index));
            }
        }
        deliveries.sort();
        let mut stats = ReceiveStats::new(8000);
        let start = Instant::now();
        let send = |stats: &mut ReceiveStats, index: usize, at: usize| {
            let sequence = first_sequence.wrapping_add(index as u16);
            stats.on_packet(7, sequence, index as u32 * 160, start + Duration::from_millis(at as u64 * 20))
        };
        prop_assert_eq!(send(&mut stats, 0, 0), Arrival::Probation);
        let validated = matches!(send(&mut stats, 1, 1), Arrival::InOrder { .. });
        prop_assert!(validated);
        let mut duplicates = 0u64;
        for (at, index) in &deliveries {
            let arrival = send(&mut stats, *index, *at);
            let counted_or_duplicate = !matches!(arrival, Arrival::Probation | Arrival::Restarted { .. });
            prop_assert!(counted_or_duplicate, "{:?}", arrival);
            duplicates += u64::from(arrival == Arrival::Duplicate);
        }
        let result = stats.stats();
        let distinct = count as u64 - 1;
        prop_assert_eq!(result.packets_received, distinct);
        prop_assert_eq!(result.expected, distinct);
        prop_assert_eq!(result.lost, 0);
        prop_assert_eq!(result.duplicates, duplicates);
        prop_assert_eq!(duplicates, (deliveries.len() - (count - 2)) as u64);
        prop_assert_eq!(
            result.highest_extended_sequence,
            u64::from(first_sequence) + count as u64 - 1
        );
        let block = stats.report_block(0, 0).unwrap();
        prop_assert_eq!(block.fraction_lost, 0);
        prop_assert_eq!(block.cumulative_lost, 0);
    }

    /// Whatever arrives (SSRC changes, jumps, wraps, duplicates), a packet
    /// is counted as received at most once: loss never goes negative.
    #[test]
    fn arbitrary_arrivals_never_count_more_than_expected(
        packets in proptest::collection::vec((0u32..3, any::<u16>(), any::<u32>(), 0u64..100), 0..300),
        near in proptest::collection::vec((0u32..3, 0u16..200), 0..300),
    ) {
        let mut stats = ReceiveStats::new(8000);
        let mut at = Instant::now();
        // Arbitrary values, then values near each other so that the
        // in-window paths are exercised as well.
        let near = near.into_iter().map(|(ssrc, sequence)| (ssrc, sequence, u32::from(sequence) * 160, 20));
        for (ssrc, sequence, timestamp, gap_ms) in packets.into_iter().chain(near) {
            at += Duration::from_millis(gap_ms);
            stats.on_packet(ssrc, sequence, timestamp, at);
            let result = stats.stats();
            prop_assert!(result.packets_received <= result.expected, "{result:?}");
            prop_assert!(result.lost >= 0);
            prop_assert!(result.jitter_ms.is_finite());
        }
    }
}
