//! Properties of the RTCP writers and reader: what is written reads back,
//! and nothing read panics.
use std::time::{Duration, Instant};

use dialtone_media::rtcp::{
    parse_compound, write_bye, write_receiver_report, write_sender_report, ReportBlock, RtcpPacket,
    SenderInfo,
};
use dialtone_media::rtp::ReceiveStats;
use proptest::prelude::*;

fn report_block() -> impl Strategy<Value = ReportBlock> {
    (
        any::<u32>(),
        any::<u8>(),
        -(1i32 << 23)..(1 << 23),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(ssrc, fraction_lost, cumulative_lost, highest_sequence, jitter, last_sr, delay)| {
                ReportBlock {
                    ssrc,
                    fraction_lost,
                    cumulative_lost,
                    highest_sequence,
                    jitter,
                    last_sr,
                    delay_since_last_sr: delay,
                }
            },
        )
}

/// RTCP-looking packets: version 2, a report, SDES or BYE type, a length
/// that fits what follows, arbitrary bodies; joined into a compound.
fn plausible_compound() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        (
            0u8..64,
            200u8..=204,
            proptest::collection::vec(any::<u8>(), 0..40),
        ),
        1..4,
    )
    .prop_map(|packets| {
        let mut out = Vec::new();
        for (flags, packet_type, mut body) in packets {
            body.truncate(body.len() / 4 * 4);
            out.push(0x80 | (flags & 0x3f));
            out.push(packet_type);
            out.extend_from_slice(&((body.len() / 4) as u16).to_be_bytes());
            out.extend_from_slice(&body);
        }
        out
    })
}

proptest! {
    #[test]
    fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_compound(&data);
    }

    #[test]
    fn parse_never_panics_on_plausible_packets(data in plausible_compound()) {
        let _ = parse_compound(&data);
    }

    #[test]
    fn sender_reports_round_trip(
        ssrc: u32,
        ntp_timestamp: u64,
        rtp_timestamp: u32,
        packet_count: u32,
        octet_count: u32,
        blocks in proptest::collection::vec(report_block(), 0..40),
        cname in "[a-z0-9@.\\-]{0,64}",
    ) {
        let info = SenderInfo { ntp_timestamp, rtp_timestamp, packet_count, octet_count };
        let mut out = Vec::new();
        write_sender_report(ssrc, &info, &blocks, &cname, &mut out);
        prop_assert_eq!(out.len() % 4, 0);
        let kept = blocks.len().min(31);
        prop_assert_eq!(
            parse_compound(&out).unwrap(),
            vec![
                RtcpPacket::SenderReport { ssrc, info, blocks: blocks[..kept].to_vec() },
                RtcpPacket::SourceDescription { cnames: vec![(ssrc, cname)] },
            ]
        );
    }

    #[test]
    fn receiver_reports_and_byes_round_trip(
        ssrc: u32,
        blocks in proptest::collection::vec(report_block(), 0..4),
        cname in "\\PC{0,40}",
        reason in proptest::option::of("\\PC{0,40}"),
    ) {
        let mut out = Vec::new();
        write_receiver_report(ssrc, &blocks, &cname, &mut out);
        write_bye(ssrc, reason.as_deref(), &cname, &mut out);
        let sdes = RtcpPacket::SourceDescription { cnames: vec![(ssrc, cname.clone())] };
        prop_assert_eq!(
            parse_compound(&out).unwrap(),
            vec![
                RtcpPacket::ReceiverReport { ssrc, blocks },
                sdes.clone(),
                RtcpPacket::ReceiverReport { ssrc, blocks: vec![] },
                sdes,
                RtcpPacket::Bye { ssrcs: vec![ssrc], reason },
            ]
        );
    }

    /// A prefix of a written compound that ends inside a packet is refused.
    #[test]
    fn cut_packets_are_malformed(cut in 0usize..200, cname in "[a-z]{1,30}") {
        let mut out = Vec::new();
        write_receiver_report(1, &[], &cname, &mut out);
        let cut = cut % out.len();
        prop_assert_eq!(parse_compound(&out[..cut]).is_ok(), cut == 8);
    }
}

/// Receive statistics become a receiver report that reads back with the
/// same numbers.
#[test]
fn statistics_reach_the_wire() {
    let mut stats = ReceiveStats::new(8000);
    let start = Instant::now();
    for sequence in 0..=50u16 {
        if sequence != 20 && sequence != 30 {
            let at = start + Duration::from_millis(u64::from(sequence) * 20);
            stats.on_packet(0xabc, sequence, u32::from(sequence) * 160, at);
        }
    }
    let block = stats.report_block(0x1111_2222, 6553).unwrap();
    let mut out = Vec::new();
    write_receiver_report(0xdef, &[block], "me", &mut out);
    let packets = parse_compound(&out).unwrap();
    let RtcpPacket::ReceiverReport { ssrc, blocks } = &packets[0] else {
        panic!("{packets:?}");
    };
    assert_eq!(*ssrc, 0xdef);
    assert_eq!(
        blocks[..],
        [ReportBlock {
            ssrc: 0xabc,
            // 2 of the 50 expected (1..=50): 2 * 256 / 50.
            fraction_lost: 10,
            cumulative_lost: 2,
            highest_sequence: 50,
            jitter: 0,
            last_sr: 0x1111_2222,
            delay_since_last_sr: 6553,
        }]
    );
}
