//! Properties of RFC 4733 telephone-events: the payload reader never
//! panics and round-trips, and whatever the network does to a sender's
//! packets, the receiver reports each digit once.
use std::time::{Duration, Instant};

use dialtone_media::dtmf::{
    digit_of, DtmfEvent, DtmfReceiver, DtmfSender, TelephoneEvent, END_TIMEOUT,
};
use proptest::prelude::*;

proptest! {
    #[test]
    fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..16)) {
        let parsed = TelephoneEvent::parse(&data);
        prop_assert_eq!(parsed.is_ok(), data.len() >= 4);
    }

    #[test]
    fn write_then_parse_round_trips(event: u8, end: bool, volume in 0u8..64, duration: u16) {
        let written = TelephoneEvent { event, end, volume, duration };
        let mut out = Vec::new();
        written.write(&mut out);
        prop_assert_eq!(out.len(), TelephoneEvent::LEN);
        prop_assert_eq!(TelephoneEvent::parse(&out).unwrap(), written);
    }

    /// The receiver never panics and never reports an end without a
    /// beginning, whatever packets arrive.
    #[test]
    fn arbitrary_packets_report_balanced_events(
        packets in proptest::collection::vec((0u32..4, any::<[u8; 4]>(), 0u64..700), 0..200),
    ) {
        let mut receiver = DtmfReceiver::new(8000);
        let mut now = Instant::now();
        let mut open: Option<char> = None;
        for (timestamp_slot, payload, gap_ms) in packets {
            now += Duration::from_millis(gap_ms);
            let first = receiver.on_packet(timestamp_slot * 1000, &payload, now).unwrap();
            for event in first.into_iter().chain(std::iter::from_fn(|| receiver.poll(now))) {
                match event {
                    DtmfEvent::Began { digit } => {
                        prop_assert_eq!(open, None);
                        open = Some(digit);
                    }
                    DtmfEvent::Ended { digit, .. } => {
                        prop_assert_eq!(open, Some(digit));
                        open = None;
                    }
                }
            }
        }
    }

    /// A few digits, each sent by a `DtmfSender` (every 20 ms), each packet
    /// lost, duplicated or delayed by up to 60 ms at random: every digit
    /// with at least one packet through is reported Began then Ended,
    /// exactly once, in order; when one of its end packets got through,
    /// with its full duration.
    #[test]
    fn each_digit_is_reported_once_whatever_the_network_does(
        digits in proptest::collection::vec((0u8..16, 40u32..400), 1..5),
        fates in proptest::collection::vec((0u8..10, 0u64..60), 200),
    ) {
        let start = Instant::now();
        let mut fate = fates.iter().cycle();
        // (arrival_ms, send order, timestamp, payload)
        let mut deliveries = Vec::new();
        let mut through = Vec::new();
        let mut slot_ms = 0u64;
        for (index, &(event, duration_ms)) in digits.iter().enumerate() {
            let timestamp = 10_000 + index as u32 * 8000;
            let mut sender = DtmfSender::new(event, duration_ms, 10, 8000, 20);
            let mut any_through = false;
            let mut end_through = false;
            while let Some((packet, _marker)) = sender.next_packet() {
                let &(chance, delay_ms) = fate.next().unwrap();
                // 0-1: lost, 2: duplicated, else delivered once.
                let copies = match chance { 0 | 1 => 0, 2 => 2, _ => 1 };
                for copy in 0..copies {
                    let mut payload = Vec::new();
                    packet.write(&mut payload);
                    deliveries.push((slot_ms + delay_ms + copy, deliveries.len(), timestamp, payload));
                }
                any_through |= copies > 0;
                end_through |= copies > 0 && packet.end;
                slot_ms += 20;
            }
            through.push((any_through, end_through));
            // A pause between digits, longer than the reordering.
            slot_ms += 200;
        }
        deliveries.sort();
        let mut receiver = DtmfReceiver::new(8000);
        let mut events = Vec::new();
        for (arrival_ms, _, timestamp, payload) in &deliveries {
            let now = start + Duration::from_millis(*arrival_ms);
            events.extend(std::iter::from_fn(|| receiver.poll(now)));
            events.extend(receiver.on_packet(*timestamp, payload, now).unwrap());
            events.extend(std::iter::from_fn(|| receiver.poll(now)));
        }
        let end = start + Duration::from_millis(slot_ms) + END_TIMEOUT;
        events.extend(std::iter::from_fn(|| receiver.poll(end)));

        let mut expected = Vec::new();
        for (&(event, duration_ms), &(any_through, _)) in digits.iter().zip(&through) {
            if any_through {
                let digit = digit_of(event).unwrap();
                expected.push(DtmfEvent::Began { digit });
                expected.push(DtmfEvent::Ended { digit, duration_ms });
            }
        }
        prop_assert_eq!(events.len(), expected.len(), "{:?}", events);
        let mut through_digits = digits.iter().zip(&through).filter(|(_, (any, _))| *any);
        for pair in events.chunks(2).zip(expected.chunks(2)) {
            let ((_, &(_, end_through)), (got, want)) = (through_digits.next().unwrap(), pair);
            prop_assert_eq!(got[0], want[0]);
            match (got[1], want[1]) {
                (DtmfEvent::Ended { digit, duration_ms }, DtmfEvent::Ended { digit: want_digit, duration_ms: full_ms }) => {
                    prop_assert_eq!(digit, want_digit);
                    prop_assert!(duration_ms <= full_ms);
                    if end_through {
                        prop_assert_eq!(duration_ms, full_ms);
                    }
                }
                (got, _) => prop_assert!(false, "expected an end, got {:?}", got),
            }
        }
    }
}
