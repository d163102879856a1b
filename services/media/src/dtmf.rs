//! RFC 4733 telephone-events: DTMF digits carried in RTP (s.2.3 for the
//! payload, s.2.5 for how senders and receivers use it, s.3.2 for the
//! DTMF event codes).
//!
//! # What it owns
//! - [`TelephoneEvent`]: the 4-byte payload, read and written;
//! - [`digit_of`] and [`event_of`]: event codes 0-15 to and from the
//!   characters `0-9 * # A-D`;
//! - [`DtmfReceiver`]: turns packets (start, refreshes, the three end
//!   packets, with loss, duplicates and reordering) into exactly one
//!   [`DtmfEvent::Began`] and one [`DtmfEvent::Ended`] per event, an event
//!   being identified by its RTP timestamp (s.2.5.2);
//! - [`DtmfSender`]: the packets of one digit, one per packet time, the
//!   final one sent three times (s.2.5.1.4).
//!
//! # What it must not do
//! It reads no clock and sends nothing: the caller passes arrival times,
//! paces the sender and writes the RTP headers (every packet of an event
//! carries the event's start timestamp, the first one the marker bit).
//!
//! # Simplifications
//! - Only DTMF events (0-15) are reported; others (flash, tones) are
//!   ignored, and do not end a digit in progress.
//! - Several events in one payload (s.2.5.1.5) are read as the first.
//! - The sender clamps a digit to 0xFFFF timestamp units (8.19 s at
//!   8 kHz) instead of sending long-duration segments (s.2.5.1.3); the
//!   receiver does join segments: a packet of the same digit whose
//!   timestamp is the previous segment's plus 0xFFFF, while that segment
//!   reached 0xFFFF without ending, continues the event.
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// An event whose end packets were all lost ends this long after its last
/// packet: senders refresh an event at least every 50 ms (s.2.5.1.2), so
/// ten refresh intervals without one mean it is over.
pub const END_TIMEOUT: Duration = Duration::from_millis(500);

/// A packet whose timestamp is older than the last event's, arriving this
/// soon after that event's last packet, is a late packet of an earlier
/// event; later, it is a new event from a sender whose timestamps
/// restarted.
const STALE_WINDOW: Duration = Duration::from_secs(2);

/// The longest duration one packet can carry, in timestamp units.
const MAX_SEGMENT_UNITS: u16 = u16::MAX;

/// The telephone-event payload (RFC 4733 s.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    pub event: u8,
    /// The E bit: this packet ends the event.
    pub end: bool,
    /// Power level in -dBm0, 0..=63; larger values are masked on writing.
    pub volume: u8,
    /// Since the event's start (its RTP timestamp), in timestamp units.
    pub duration: u16,
}

impl TelephoneEvent {
    /// The payload's size in bytes.
    pub const LEN: usize = 4;

    /// Reads the first 4 bytes of `payload`; bytes after them (more events,
    /// s.2.5.1.5) are ignored.
    pub fn parse(payload: &[u8]) -> Result<Self> {
        let Some(&[event, flags, duration_high, duration_low]) = payload.first_chunk::<4>() else {
            return Err(Error::Malformed {
                what: "telephone-event payload",
                reason: format!("{} bytes, fewer than 4", payload.len()),
            });
        };
        Ok(Self {
            event,
            end: flags & 0x80 != 0,
            volume: flags & 0x3f,
            duration: u16::from_be_bytes([duration_high, duration_low]),
        })
    }

    /// Appends the 4-byte payload (the reserved bit is 0).
    pub fn write(&self, out: &mut Vec<u8>) {
        out.push(self.event);
        out.push((u8::from(self.end) << 7) | (self.volume & 0x3f));
        out.extend_from_slice(&self.duration.to_be_bytes());
    }
}

/// The DTMF character of an event code (RFC 4733 s.3.2): 0-9, `*` = 10,
/// `#` = 11, A-D = 12-15.
pub fn digit_of(event: u8) -> Option<char> {
    match event {
        0..=9 => Some(char::from(b'0' + event)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + event - 12)),
        _ => None,
    }
}

/// The event code of a DTMF character; lower-case `a-d` are accepted.
pub fn event_of(digit: char) -> Option<u8> {
    match digit {
        '0'..='9' => Some(digit as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(digit as u8 - b'A' + 12),
        'a'..='d' => Some(digit as u8 - b'a' + 12),
        _ => None,
    }
}

/// What a [`DtmfReceiver`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtmfEvent {
    Began {
        digit: char,
    },
    /// `duration_ms` is the longest duration any of its packets carried
    /// (all segments together), which for an event ended by
    /// [`END_TIMEOUT`] is what was known of it.
    Ended {
        digit: char,
        duration_ms: u32,
    },
}

#[derive(Debug, Clone, Copy)]
struct Current {
    /// The RTP timestamp of the event (of its current segment).
    timestamp: u32,
    digit: char,
    ended: bool,
    /// The durations of segments before the current one.
    earlier_segments_units: u64,
    duration_units: u16,
    last_packet_at: Instant,
}

/// Receives one stream's telephone-events (RFC 4733 s.2.5.2).
///
/// After [`DtmfReceiver::on_packet`], call [`DtmfReceiver::poll`] until it
/// returns `None` (a packet can end one event and begin another); call
/// `poll` also from a timer, so that an event whose end packets were lost
/// ends after [`END_TIMEOUT`].
#[derive(Debug, Clone)]
pub struct DtmfReceiver {
    clock_rate_hz: u32,
    current: Option<Current>,
    /// At most three events per packet and one per poll: it stays small.
    ready: VecDeque<DtmfEvent>,
}

impl DtmfReceiver {
    /// A receiver for telephone-events at `clock_rate_hz` (that of the
    /// audio they go with, RFC 4733 s.2.1: 8000 for G.711).
    pub fn new(clock_rate_hz: u32) -> Self {
        Self {
            clock_rate_hz: clock_rate_hz.max(1),
            current: None,
            ready: VecDeque::with_capacity(4),
        }
    }

    /// Forgets the last event: call it when the stream's SSRC changes, so
    /// that the new source's timestamps are not compared with the old
    /// one's. An event in progress is ended first.
    pub fn reset(&mut self) {
        self.end_current();
        self.current = None;
    }

    /// Accounts for one packet of the telephone-event payload type, with
    /// its RTP timestamp, arriving at `now`.
    pub fn on_packet(
        &mut self,
        rtp_timestamp: u32,
        payload: &[u8],
        now: Instant,
    ) -> Result<Option<DtmfEvent>> {
        let packet = TelephoneEvent::parse(payload)?;
        if let Some(digit) = digit_of(packet.event) {
            self.accept(rtp_timestamp, digit, packet, now);
        }
        Ok(self.ready.pop_front())
    }

    /// The next event to report: one left by the last packet, or the end
    /// of an event that has had no packet for [`END_TIMEOUT`].
    pub fn poll(&mut self, now: Instant) -> Option<DtmfEvent> {
        if let Some(current) = &self.current {
            if !current.ended
                && now.saturating_duration_since(current.last_packet_at) >= END_TIMEOUT
            {
                self.end_current();
            }
        }
        self.ready.pop_front()
    }

    fn duration_ms(&self, current: &Current) -> u32 {
        let units = current.earlier_segments_units + u64::from(current.duration_units);
        u32::try_from(units * 1000 / u64::from(self.clock_rate_hz)).unwrap_or(u32::MAX)
    }

    fn end_current(&mut self) {
        let Some(current) = self.current.as_mut() else {
            return;
        };
        if current.ended {
            return;
        }
        current.ended = true;
        let current = *current;
        self.ready.push_back(DtmfEvent::Ended {
            digit: current.digit,
            duration_ms: self.duration_ms(&current),
        });
    }

    fn accept(&mut self, timestamp: u32, digit: char, packet: TelephoneEvent, now: Instant) {
        if let Some(current) = self.current.as_mut() {
            if timestamp == current.timestamp {
                // A refresh, a retransmitted start or end, or a late packet
                // of this event.
                if current.ended {
                    return;
                }
                current.duration_units = current.duration_units.max(packet.duration);
                current.last_packet_at = now;
                if packet.end {
                    self.end_current();
                }
                return;
            }
            let older = (timestamp.wrapping_sub(current.timestamp) as i32) < 0;
            if older && now.saturating_duration_since(current.last_packet_at) < STALE_WINDOW {
                return;
            }
            let next_segment = current.timestamp.wrapping_add(u32::from(MAX_SEGMENT_UNITS));
            if !current.ended
                && digit == current.digit
                && current.duration_units == MAX_SEGMENT_UNITS
                && timestamp == next_segment
            {
                current.earlier_segments_units += u64::from(MAX_SEGMENT_UNITS);
                current.timestamp = timestamp;
                current.duration_units = packet.duration;
                current.last_packet_at = now;
                if packet.end {
                    self.end_current();
                }
                return;
            }
        }
        // A new event; the previous one, if its end was lost, ends now.
        self.end_current();
        self.current = Some(Current {
            timestamp,
            digit,
            ended: false,
            earlier_segments_units: 0,
            duration_units: packet.duration,
            last_packet_at: now,
        });
        self.ready.push_back(DtmfEvent::Began { digit });
        if packet.end {
            self.end_current();
        }
    }
}

/// How many times the final packet of an event is sent (s.2.5.1.4).
const END_PACKETS: u32 = 3;

/// The packets of one event, one per packet time (RFC 4733 s.2.5.1).
#[derive(Debug, Clone)]
pub struct DtmfSender {
    event: u8,
    volume: u8,
    duration_units: u16,
    step_units: u16,
    /// Packets whose duration grows; the last of them is the first end
    /// packet.
    growing_packets: u32,
    packets_sent: u32,
}

impl DtmfSender {
    /// An event lasting `duration_ms` (at least one packet time, at most
    /// 0xFFFF timestamp units: no long-duration segments), sent every
    /// `ptime_ms`.
    pub fn new(event: u8, duration_ms: u32, volume: u8, clock_rate_hz: u32, ptime_ms: u32) -> Self {
        let units = |ms: u32| u64::from(ms) * u64::from(clock_rate_hz) / 1000;
        let step_units = units(ptime_ms).clamp(1, u64::from(MAX_SEGMENT_UNITS));
        let duration_units = units(duration_ms).clamp(step_units, u64::from(MAX_SEGMENT_UNITS));
        Self {
            event,
            volume: volume & 0x3f,
            duration_units: duration_units as u16,
            step_units: step_units as u16,
            growing_packets: duration_units.div_ceil(step_units) as u32,
            packets_sent: 0,
        }
    }

    /// The next packet's payload and marker bit, or `None` once the third
    /// end packet has been sent.
    pub fn next_packet(&mut self) -> Option<(TelephoneEvent, bool)> {
        if self.packets_sent >= self.growing_packets + END_PACKETS - 1 {
            return None;
        }
        let index = self.packets_sent;
        self.packets_sent += 1;
        let duration = (u64::from(index) + 1) * u64::from(self.step_units);
        let packet = TelephoneEvent {
            event: self.event,
            end: index + 1 >= self.growing_packets,
            volume: self.volume,
            duration: duration.min(u64::from(self.duration_units)) as u16,
        };
        Some((packet, index == 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(event: u8, end: bool, duration: u16) -> Vec<u8> {
        let mut out = Vec::new();
        TelephoneEvent {
            event,
            end,
            volume: 10,
            duration,
        }
        .write(&mut out);
        out
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Feeds `(timestamp, event, end, duration, arrival_ms)` packets and
    /// collects everything reported, polling after each.
    fn run(
        receiver: &mut DtmfReceiver,
        start: Instant,
        packets: &[(u32, u8, bool, u16, u64)],
    ) -> Vec<DtmfEvent> {
        let mut events = Vec::new();
        for &(timestamp, event, end, duration, at_ms) in packets {
            let now = start + ms(at_ms);
            events.extend(
                receiver
                    .on_packet(timestamp, &payload(event, end, duration), now)
                    .unwrap(),
            );
            events.extend(std::iter::from_fn(|| receiver.poll(now)));
        }
        events
    }

    #[test]
    fn the_payload_is_read_and_written() {
        let bytes = [11, 0x80 | 0x40 | 7, 0x03, 0x20, 0xff];
        let event = TelephoneEvent::parse(&bytes).unwrap();
        assert_eq!(
            event,
            TelephoneEvent {
                event: 11,
                end: true,
                volume: 7,
                duration: 800
            }
        );
        let mut out = Vec::new();
        event.write(&mut out);
        // The reserved bit is written as 0.
        assert_eq!(out, [11, 0x87, 0x03, 0x20]);
        assert!(TelephoneEvent::parse(&bytes[..3]).is_err());
    }

    #[test]
    fn digits_and_event_codes() {
        let all: String = (0..16).filter_map(digit_of).collect();
        assert_eq!(all, "0123456789*#ABCD");
        assert_eq!(digit_of(16), None);
        for (code, digit) in all.chars().enumerate() {
            assert_eq!(event_of(digit), Some(code as u8));
        }
        assert_eq!(event_of('d'), Some(15));
        assert_eq!(event_of('x'), None);
    }

    #[test]
    fn an_event_with_its_three_end_packets_is_reported_once() {
        let mut receiver = DtmfReceiver::new(8000);
        let start = Instant::now();
        let events = run(
            &mut receiver,
            start,
            &[
                (1000, 5, false, 160, 0),
                (1000, 5, false, 320, 20),
                (1000, 5, false, 480, 40),
                (1000, 5, true, 640, 60),
                (1000, 5, true, 640, 61),
                (1000, 5, true, 640, 62),
            ],
        );
        assert_eq!(
            events,
            [
                DtmfEvent::Began { digit: '5' },
                DtmfEvent::Ended {
                    digit: '5',
                    duration_ms: 80
                }
            ]
        );
        assert_eq!(receiver.poll(start + ms(5000)), None);
    }

    #[test]
    fn an_event_whose_end_is_lost_ends_after_the_timeout() {
        let mut receiver = DtmfReceiver::new(8000);
        let start = Instant::now();
        let events = run(
            &mut receiver,
            start,
            &[(1000, 1, false, 160, 0), (1000, 1, false, 320, 20)],
        );
        assert_eq!(events, [DtmfEvent::Began { digit: '1' }]);
        assert_eq!(receiver.poll(start + ms(519)), None);
        assert_eq!(
            receiver.poll(start + ms(520)),
            Some(DtmfEvent::Ended {
                digit: '1',
                duration_ms: 40
            })
        );
        // A late end packet after the timeout is not a second end.
        let late = receiver
            .on_packet(1000, &payload(1, true, 480), start + ms(600))
            .unwrap();
        assert_eq!(late, None);
        assert_eq!(receiver.poll(start + ms(2000)), None);
    }

    #[test]
    fn a_new_event_ends_one_whose_end_was_lost() {
        let mut receiver = DtmfReceiver::new(8000);
        let start = Instant::now();
        let events = run(
            &mut receiver,
            start,
            &[(1000, 1, false, 160, 0), (2000, 2, false, 160, 100)],
        );
        assert_eq!(
            events,
            [
                DtmfEvent::Began { digit: '1' },
                DtmfEvent::Ended {
                    digit: '1',
                    duration_ms: 20
                },
                DtmfEvent::Began { digit: '2' },
            ]
        );
    }

    #[test]
    fn duplicates_and_reordering_change_nothing() {
        let mut receiver = DtmfReceiver::new(8000);
        let start = Instant::now();
        let events = run(
            &mut receiver,
            start,
            &[
                (1000, 9, false, 160, 0),
                (1000, 9, false, 160, 1),
                (1000, 9, false, 480, 40),
                // The end overtakes a middle packet, which arrives late.
                (1000, 9, true, 640, 60),
                (1000, 9, false, 320, 61),
                (1000, 9, true, 640, 62),
                (1000, 9, false, 160, 63),
            ],
        );
        assert_eq!(
            events,
            [
                DtmfEvent::Began { digit: '9' },
                DtmfEvent::Ended {
                    digit: '9',
                    duration_ms: 80
                }
            ]
        );
    }

    #[test]
    fn an_event_seen_only_by_its_end_begins_and_ends_at_once() {
        let mut receiver = DtmfReceiver::new(8000);
        let start = Instant::now();
        let events = run(
            &mut receiver,
            start,
            &[(1000, 10, true, 800, 0), (1000, 10, true, 800, 20)],
        );
        assert_eq!(
            events,
            [
                DtmfEvent::Began { digit: '*' },
                DtmfEvent::Ended {
                    digit: '*',
                    duration_ms: 100
                }
            ]
        );
    }

    #[test]
    fn the_same_digit_twice_is_two_events() {
        let mut receiver = DtmfReceiver::new(8000);
        let start = Instant::now();
        let events = run(
            &mut receiver,
            start,
            &[
                (1000, 3, false, 160, 0),
                (1000, 3, true, 320, 20),
                (1000, 3, true, 320, 21),
                (3000, 3, false, 160, 250),
                (3000, 3, true, 320, 270),
                // A late end packet of the first press.
                (1000, 3, true, 320, 271),
            ],
        );
        let ended = DtmfEvent::Ended {
            digit: '3',
            duration_ms: 40,
        };
        let began = DtmfEvent::Began { digit: '3' };
        assert_eq!(events, [began, ended, began, ended]);
    }

    #[test]
    fn events_that_are_not_digits_are_ignored() {
        let mut receiver = DtmfReceiver::new(8000);
        let start = Instant::now();
        let events = run(
            &mut receiver,
            start,
            &[(1000, 16, false, 160, 0), (1000, 16, true, 320, 20)],
        );
        assert_eq!(events, []);
        assert!(receiver.on_packet(1000, &[16, 0], start).is_err());
    }

    #[test]
    fn long_events_in_segments_are_one_event() {
        let mut receiver = DtmfReceiver::new(8000);
        let start = Instant::now();
        let events = run(
            &mut receiver,
            start,
            &[
                (1000, 0, false, 160, 0),
                (1000, 0, false, 0xffff, 8190),
                (1000 + 0xffff, 0, false, 160, 8210),
                (1000 + 0xffff, 0, true, 8000, 9190),
            ],
        );
        // 0xffff + 8000 units at 8 kHz: 9191.875 ms.
        assert_eq!(
            events,
            [
                DtmfEvent::Began { digit: '0' },
                DtmfEvent::Ended {
                    digit: '0',
                    duration_ms: 9191
                }
            ]
        );
    }

    #[test]
    fn the_sender_grows_the_duration_and_repeats_the_end() {
        let mut sender = DtmfSender::new(5, 100, 10, 8000, 20);
        let packets: Vec<_> = std::iter::from_fn(|| sender.next_packet()).collect();
        let expected: Vec<_> = [
            (160, false, true),
            (320, false, false),
            (480, false, false),
            (640, false, false),
            (800, true, false),
            (800, true, false),
            (800, true, false),
        ]
        .into_iter()
        .map(|(duration, end, marker)| {
            (
                TelephoneEvent {
                    event: 5,
                    end,
                    volume: 10,
                    duration,
                },
                marker,
            )
        })
        .collect();
        assert_eq!(packets, expected);
        assert_eq!(sender.next_packet(), None);
    }

    #[test]
    fn a_short_event_is_one_packet_time_sent_three_times() {
        let mut sender = DtmfSender::new(11, 0, 70, 8000, 20);
        let packets: Vec<_> = std::iter::from_fn(|| sender.next_packet()).collect();
        assert_eq!(packets.len(), 3);
        assert!(packets[0].1 && !packets[1].1 && !packets[2].1);
        for (packet, _) in &packets {
            assert_eq!(
                *packet,
                TelephoneEvent {
                    event: 11,
                    end: true,
                    volume: 70 & 0x3f,
                    duration: 160
                }
            );
        }
    }

    #[test]
    fn what_the_sender_sends_the_receiver_hears() {
        let mut sender = DtmfSender::new(12, 250, 10, 8000, 20);
        let mut receiver = DtmfReceiver::new(8000);
        let start = Instant::now();
        let mut events = Vec::new();
        let mut at = start;
        while let Some((packet, _marker)) = sender.next_packet() {
            let mut bytes = Vec::new();
            packet.write(&mut bytes);
            events.extend(receiver.on_packet(4242, &bytes, at).unwrap());
            events.extend(std::iter::from_fn(|| receiver.poll(at)));
            at += ms(20);
        }
        assert_eq!(
            events,
            [
                DtmfEvent::Began { digit: 'A' },
                DtmfEvent::Ended {
                    digit: 'A',
                    duration_ms: 250
                }
            ]
        );
    }
}
