//! The media session driven by simulated phones on a simulated clock:
//! recording (tone, digit, silence, maximum), playback pacing, symmetric
//! RTP latching, RTP timeout, RTCP, hold; a seeded network simulation;
//! and arbitrary bytes on both ports.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dialtone_media::dtmf::{DtmfEvent, TelephoneEvent};
use dialtone_media::g711::{self, Law};
use dialtone_media::rtcp::{self, ReportBlock, RtcpPacket};
use dialtone_media::rtp::{write_packet, RtpHeader, RtpPacket};
use dialtone_media::sdp::{Codec, Direction, NegotiatedAudio};
use dialtone_media::session::{
    MediaSession, Packet, Received, RecordLimits, Recording, RecordingEnd, SessionConfig,
    SessionEvent,
};
use dialtone_media::tone;
use proptest::prelude::*;

const MS: Duration = Duration::from_millis(1);
const OUR_SSRC: u32 = 0x1234_5678;
const PHONE_SSRC: u32 = 0xCAFE_0001;
const TELEPHONE_EVENT_PT: u8 = 101;

/// Seeds that once failed stay here (none has yet).
const REGRESSIONS: &[u64] = &[];

fn sdp_address() -> SocketAddr {
    "10.0.0.1:4000".parse().unwrap()
}

/// Where the phone's packets really come from (its NAT).
fn phone_address() -> SocketAddr {
    "192.0.2.7:5555".parse().unwrap()
}

fn phone_rtcp_address() -> SocketAddr {
    "192.0.2.7:5556".parse().unwrap()
}

fn stranger_address() -> SocketAddr {
    "198.51.100.9:6000".parse().unwrap()
}

fn audio() -> NegotiatedAudio {
    NegotiatedAudio {
        remote_address: sdp_address().ip(),
        remote_rtp_port: sdp_address().port(),
        remote_rtcp_port: sdp_address().port() + 1,
        codec: Codec::Pcmu,
        payload_type: 0,
        telephone_event_payload_type: Some(TELEPHONE_EVENT_PT),
        comfort_noise_payload_type: Some(13),
        remote_ptime_ms: Some(20),
        direction: Direction::SendRecv,
        remote_on_hold: false,
    }
}

fn config() -> SessionConfig {
    SessionConfig {
        wall_clock_at_start: Duration::from_secs(1_750_000_000),
        ..SessionConfig::new(OUR_SSRC, 1000, 50_000, "test@dialtone")
    }
}

fn limits(max_duration_ms: u32, silence_ms: u32) -> RecordLimits {
    RecordLimits {
        max_duration_ms,
        silence_ms,
        stop_digits: "#".into(),
    }
}

/// A phone's outgoing stream: µ-law at 20 ms, and RFC 4733 digits.
struct Phone {
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
}

impl Phone {
    fn new() -> Self {
        Phone {
            ssrc: PHONE_SSRC,
            sequence: 7,
            timestamp: 90_000,
        }
    }

    /// One 20 ms packet of `samples` (160), advancing the timestamp.
    fn audio(&mut self, samples: &[i16], marker: bool) -> Vec<u8> {
        let mut payload = Vec::new();
        g711::encode_into(Law::Mu, samples, &mut payload);
        let packet = self.packet(0, marker, &payload);
        self.timestamp = self.timestamp.wrapping_add(samples.len() as u32);
        packet
    }

    fn packet(&mut self, payload_type: u8, marker: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let header = RtpHeader {
            payload_type,
            marker,
            sequence: self.sequence,
            timestamp: self.timestamp,
            ssrc: self.ssrc,
        };
        write_packet(&header, payload, &mut out);
        self.sequence = self.sequence.wrapping_add(1);
        out
    }

    /// The packets of one digit lasting `packets` × 20 ms, at 20 ms
    /// intervals, the end sent three times (RFC 4733 s.2.5.1); the audio
    /// clock moves past the digit.
    fn digit(&mut self, event: u8, packets: u16) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for index in 0..packets + 2 {
            let end = index + 1 >= packets;
            let payload_event = TelephoneEvent {
                event,
                end,
                volume: 10,
                duration: (index.min(packets - 1) + 1) * 160,
            };
            let mut payload = Vec::new();
            payload_event.write(&mut payload);
            out.push(self.packet(TELEPHONE_EVENT_PT, index == 0, &payload));
        }
        self.timestamp = self.timestamp.wrapping_add(u32::from(packets) * 160);
        out
    }
}

/// A 440 Hz frame (or any frequency), phase-continuous across frames.
fn tone_frame(frequency_hz: f64, frame: usize) -> Vec<i16> {
    let start = frame * 160;
    (start..start + 160)
        .map(|n| {
            let phase = 2.0 * std::f64::consts::PI * frequency_hz * n as f64 / 8000.0;
            (8000.0 * phase.sin()).round() as i16
        })
        .collect()
}

enum Input {
    Rtp(SocketAddr, Vec<u8>),
    Rtcp(SocketAddr, Vec<u8>),
    Play(Arc<[i16]>),
    Update(NegotiatedAudio),
    StartRecording(RecordLimits),
}

struct Sent {
    at: Instant,
    to: SocketAddr,
    kind: Packet,
    bytes: Vec<u8>,
}

/// The session on a simulated clock: inputs at their instants, polls at
/// every input and every deadline, as the runtime does.
struct Harness {
    session: MediaSession,
    t0: Instant,
    now: Instant,
    inputs: Vec<(Instant, usize, Input)>,
    sent: Vec<Sent>,
    events: Vec<(Instant, SessionEvent)>,
    received: Vec<Received>,
}

impl Harness {
    fn new(config: SessionConfig, audio: NegotiatedAudio) -> Self {
        let t0 = Instant::now();
        Harness {
            session: MediaSession::new(config, audio, t0),
            t0,
            now: t0,
            inputs: Vec::new(),
            sent: Vec::new(),
            events: Vec::new(),
            received: Vec::new(),
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + MS * ms as u32
    }

    fn input(&mut self, at: Instant, input: Input) {
        let order = self.inputs.len();
        self.inputs.push((at, order, input));
    }

    fn pump(&mut self) {
        let mut out = Vec::new();
        while let Some((to, kind)) = self.session.poll_transmit(self.now, &mut out) {
            self.sent.push(Sent {
                at: self.now,
                to,
                kind,
                bytes: out.clone(),
            });
        }
        while let Some(event) = self.session.poll_event(self.now) {
            self.events.push((self.now, event));
        }
    }

    fn run_until(&mut self, until: Instant) {
        self.inputs.sort_by_key(|(at, order, _)| (*at, *order));
        self.inputs.reverse();
        let mut stuck = 0;
        loop {
            let next_input = self.inputs.last().map(|(at, _, _)| (*at).max(self.now));
            let deadline = self.session.next_deadline().map(|d| d.max(self.now));
            let Some(next) = [next_input, deadline].into_iter().flatten().min() else {
                break;
            };
            if next > until {
                break;
            }
            if next == self.now && next_input != Some(next) {
                // A deadline at `now` that the last polls did not consume.
                stuck += 1;
                assert!(stuck < 3, "deadline stuck at {:?}", next - self.t0);
            } else {
                stuck = 0;
            }
            self.now = next;
            if next_input == Some(next) {
                let (_, _, input) = self.inputs.pop().unwrap();
                match input {
                    Input::Rtp(from, bytes) => {
                        let received = self.session.on_rtp(from, &bytes, self.now);
                        self.received.push(received);
                    }
                    Input::Rtcp(from, bytes) => self.session.on_rtcp(from, &bytes, self.now),
                    Input::Play(samples) => self.session.play(samples, self.now),
                    Input::Update(audio) => self.session.update(audio, self.now),
                    Input::StartRecording(limits) => self.session.start_recording(limits, self.now),
                }
            }
            self.pump();
        }
        self.now = until.max(self.now);
        self.pump();
    }

    fn recordings(&self) -> Vec<Recording> {
        self.events
            .iter()
            .filter_map(|(_, event)| match event {
                SessionEvent::RecordingDone(recording) => Some(recording.clone()),
                _ => None,
            })
            .collect()
    }

    fn count(&self, wanted: &SessionEvent) -> usize {
        self.events.iter().filter(|(_, e)| e == wanted).count()
    }

    fn rtp_sent(&self) -> Vec<&Sent> {
        self.sent.iter().filter(|s| s.kind == Packet::Rtp).collect()
    }

    fn rtcp_sent(&self) -> Vec<&Sent> {
        self.sent
            .iter()
            .filter(|s| s.kind == Packet::Rtcp)
            .collect()
    }
}

/// Deterministic xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// The phone sends `frames` frames of `frequency_hz` from `start_ms`, each
/// arriving 0..`max_delay_ms` after it was sent.
fn send_tone(
    harness: &mut Harness,
    phone: &mut Phone,
    rng: &mut Rng,
    start_ms: u64,
    frames: usize,
    frequency_hz: f64,
    max_delay_ms: u64,
) {
    for frame in 0..frames {
        let packet = phone.audio(&tone_frame(frequency_hz, frame), frame == 0);
        let delay_us = rng.below(max_delay_ms * 1000 + 1);
        let at = harness.at(start_ms + 20 * frame as u64) + Duration::from_micros(delay_us);
        harness.input(at, Input::Rtp(phone_address(), packet));
    }
}

fn send_digit(harness: &mut Harness, phone: &mut Phone, start_ms: u64, event: u8) {
    for (index, packet) in phone.digit(event, 5).into_iter().enumerate() {
        let at = harness.at(start_ms + 20 * index as u64) + MS * 3;
        harness.input(at, Input::Rtp(phone_address(), packet));
    }
}

fn assert_tone_for(samples: &[i16], frequency_hz: f64, duration_ms: u32) {
    let longest = tone::longest_tone_ms(samples, frequency_hz, 8000, 20);
    assert!(
        longest + 20 >= duration_ms && longest <= duration_ms + 20,
        "{frequency_hz} Hz for {longest} ms, expected {duration_ms} ms"
    );
}

#[test]
fn a_recording_holds_the_tone_for_its_duration_and_ends_at_the_digit() {
    let mut harness = Harness::new(config(), audio());
    let mut phone = Phone::new();
    let mut rng = Rng(42);
    harness.input(harness.t0, Input::StartRecording(limits(60_000, 0)));
    send_tone(&mut harness, &mut phone, &mut rng, 10, 100, 440.0, 40);
    send_digit(&mut harness, &mut phone, 2010, 11);
    // After the digit, a different tone that must not be recorded.
    send_tone(&mut harness, &mut phone, &mut rng, 2150, 50, 880.0, 40);
    harness.run_until(harness.at(4000));

    let recordings = harness.recordings();
    assert_eq!(recordings.len(), 1);
    let recording = &recordings[0];
    assert_eq!(recording.end, RecordingEnd::Digit('#'));
    let duration_ms = recording.duration_ms();
    assert!((1980..=2020).contains(&duration_ms), "{duration_ms} ms");
    assert_tone_for(&recording.samples, 440.0, 2000);
    assert_eq!(
        tone::longest_tone_ms(&recording.samples, 880.0, 8000, 20),
        0
    );

    let digits: Vec<DtmfEvent> = harness
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            SessionEvent::Dtmf(d) => Some(*d),
            _ => None,
        })
        .collect();
    assert_eq!(
        digits,
        [
            DtmfEvent::Began { digit: '#' },
            DtmfEvent::Ended {
                digit: '#',
                duration_ms: 100
            }
        ]
    );
    // The digit's start comes before the recording it ends.
    let began = harness
        .events
        .iter()
        .position(|(_, e)| matches!(e, SessionEvent::Dtmf(DtmfEvent::Began { .. })));
    let done = harness
        .events
        .iter()
        .position(|(_, e)| matches!(e, SessionEvent::RecordingDone(_)));
    assert!(began < done);
    let stats = harness.session.stats();
    assert_eq!(stats.rx_packets, 100 + 7 + 50);
    assert_eq!(stats.dtmf_events, 1);
    assert_eq!(stats.rx_lost, 0);
    assert_eq!(stats.concealed_samples, 0);
    assert_eq!(stats.late_packets, 0);
    assert!(stats.rx_jitter_ms > 0.0 && stats.rx_jitter_ms < 40.0);
    assert_eq!(stats.latched, Some(phone_address()));
}

#[test]
fn silence_ends_a_recording_and_is_cut_from_it() {
    for stops_sending in [false, true] {
        let mut harness = Harness::new(config(), audio());
        let mut phone = Phone::new();
        let mut rng = Rng(7);
        harness.input(harness.t0, Input::StartRecording(limits(60_000, 800)));
        send_tone(&mut harness, &mut phone, &mut rng, 0, 50, 440.0, 10);
        if !stops_sending {
            // Silence as audio, as most phones send it.
            for frame in 0..100u64 {
                let packet = phone.audio(&[0; 160], false);
                harness.input(
                    harness.at(1000 + 20 * frame),
                    Input::Rtp(phone_address(), packet),
                );
            }
        }
        harness.run_until(harness.at(5000));
        let recordings = harness.recordings();
        assert_eq!(recordings.len(), 1, "stops sending: {stops_sending}");
        let recording = &recordings[0];
        assert_eq!(recording.end, RecordingEnd::Silence);
        assert_eq!(
            recording.duration_ms(),
            1000,
            "stops sending: {stops_sending}"
        );
        assert_tone_for(&recording.samples, 440.0, 1000);
        // It ended 800 ms of audio after the tone, plus the buffer's delay.
        let (ended_at, _) = harness
            .events
            .iter()
            .find(|(_, e)| matches!(e, SessionEvent::RecordingDone(_)))
            .unwrap();
        let ended_ms = ended_at.duration_since(harness.t0).as_millis();
        assert!((1800..=1900).contains(&ended_ms), "ended at {ended_ms} ms");
    }
}

#[test]
fn the_maximum_duration_ends_a_recording_exactly() {
    let mut harness = Harness::new(config(), audio());
    let mut phone = Phone::new();
    let mut rng = Rng(3);
    harness.input(harness.t0, Input::StartRecording(limits(1000, 0)));
    send_tone(&mut harness, &mut phone, &mut rng, 0, 150, 440.0, 30);
    harness.run_until(harness.at(4000));
    let recordings = harness.recordings();
    assert_eq!(recordings.len(), 1);
    assert_eq!(recordings[0].end, RecordingEnd::MaxDuration);
    assert_eq!(recordings[0].samples.len(), 8000);
    assert_tone_for(&recordings[0].samples, 440.0, 1000);
}

#[test]
fn a_recording_with_nothing_received_ends_by_wall_time() {
    let mut harness = Harness::new(config(), audio());
    harness.input(harness.t0, Input::StartRecording(limits(3000, 1500)));
    harness.run_until(harness.at(5000));
    let recordings = harness.recordings();
    assert_eq!(recordings.len(), 1);
    assert_eq!(recordings[0].end, RecordingEnd::Silence);
    assert!(recordings[0].samples.is_empty());

    let mut harness = Harness::new(config(), audio());
    harness.input(harness.t0, Input::StartRecording(limits(3000, 0)));
    harness.run_until(harness.at(5000));
    let recordings = harness.recordings();
    assert_eq!(recordings[0].end, RecordingEnd::MaxDuration);
}

#[test]
fn stop_recording_flushes_what_was_received() {
    let mut harness = Harness::new(config(), audio());
    let mut phone = Phone::new();
    let mut rng = Rng(11);
    harness.input(harness.t0, Input::StartRecording(limits(60_000, 0)));
    send_tone(&mut harness, &mut phone, &mut rng, 0, 50, 440.0, 20);
    // Just after the last packet: the buffer's 60 ms are not played yet.
    harness.run_until(harness.at(1000));
    let recording = harness.session.stop_recording(harness.now).unwrap();
    assert_eq!(recording.end, RecordingEnd::Stopped);
    assert_eq!(recording.duration_ms(), 1000);
    assert!(harness.session.stop_recording(harness.now).is_none());
    assert!(harness.recordings().is_empty());
}

#[test]
fn playback_sends_fifty_paced_packets_per_second_then_playback_done_once() {
    let mut harness = Harness::new(config(), audio());
    let samples = tone::sine(440.0, 8000, 1000, 8000);
    let start = harness.at(100);
    harness.input(start, Input::Play(samples.clone().into()));
    harness.run_until(harness.at(2000));

    let rtp = harness.rtp_sent();
    assert_eq!(rtp.len(), 50);
    for (index, sent) in rtp.iter().enumerate() {
        assert_eq!(sent.at, start + 20 * MS * index as u32, "packet {index}");
        assert_eq!(sent.to, sdp_address());
        let packet = RtpPacket::parse(&sent.bytes).unwrap();
        assert_eq!(packet.payload_type(), 0);
        assert_eq!(packet.ssrc(), OUR_SSRC);
        assert_eq!(packet.sequence(), 1000 + index as u16);
        // The pacer's timestamps follow wall time from the start: 100 ms
        // of idle is 800 samples.
        assert_eq!(packet.timestamp(), 50_000 + 800 + 160 * index as u32);
        assert_eq!(packet.marker(), index == 0, "marker of packet {index}");
    }
    let mut decoded = Vec::new();
    for sent in &rtp {
        let packet = RtpPacket::parse(&sent.bytes).unwrap();
        g711::decode_into(Law::Mu, packet.payload(), &mut decoded);
    }
    let round_trip: Vec<i16> = samples
        .iter()
        .map(|&s| Law::Mu.decode(Law::Mu.encode(s)))
        .collect();
    assert_eq!(decoded, round_trip);
    assert_eq!(harness.count(&SessionEvent::PlaybackDone), 1);
    let (done_at, _) = harness
        .events
        .iter()
        .find(|(_, e)| *e == SessionEvent::PlaybackDone)
        .unwrap();
    assert_eq!(*done_at, rtp[49].at);
    let stats = harness.session.stats();
    assert_eq!((stats.tx_packets, stats.tx_octets), (50, 8000));
}

#[test]
fn queued_prompts_play_back_to_back_and_a_partial_frame_is_padded() {
    let mut harness = Harness::new(config(), audio());
    let first: Arc<[i16]> = vec![1000; 250].into();
    let second: Arc<[i16]> = vec![-1000; 100].into();
    harness.input(harness.t0, Input::Play(first));
    harness.input(harness.t0 + MS, Input::Play(second));
    harness.run_until(harness.at(1000));
    let rtp = harness.rtp_sent();
    // 350 samples: three frames, the last with 30 samples of silence.
    assert_eq!(rtp.len(), 3);
    let mut decoded = Vec::new();
    for sent in &rtp {
        g711::decode_into(
            Law::Mu,
            RtpPacket::parse(&sent.bytes).unwrap().payload(),
            &mut decoded,
        );
    }
    let one = Law::Mu.decode(Law::Mu.encode(1000));
    let minus_one = Law::Mu.decode(Law::Mu.encode(-1000));
    assert!(decoded[..250].iter().all(|&s| s == one));
    assert!(decoded[250..350].iter().all(|&s| s == minus_one));
    assert!(decoded[350..].iter().all(|&s| s == 0));
    assert_eq!(harness.count(&SessionEvent::PlaybackDone), 1);
}

#[test]
fn a_second_prompt_after_the_first_starts_a_new_talkspurt() {
    let mut harness = Harness::new(config(), audio());
    harness.input(harness.t0, Input::Play(vec![500; 1600].into()));
    harness.input(harness.at(1000), Input::Play(vec![500; 1600].into()));
    harness.run_until(harness.at(2000));
    let rtp = harness.rtp_sent();
    assert_eq!(rtp.len(), 20);
    let packets: Vec<RtpPacket> = rtp
        .iter()
        .map(|s| RtpPacket::parse(&s.bytes).unwrap())
        .collect();
    let markers: Vec<bool> = packets.iter().map(|p| p.marker()).collect();
    assert!(markers[0] && markers[10]);
    assert_eq!(markers.iter().filter(|&&m| m).count(), 2);
    // Sequence numbers continue; timestamps jump by the idle time.
    assert_eq!(packets[10].sequence(), packets[9].sequence() + 1);
    assert_eq!(packets[10].timestamp(), 50_000 + 8000);
    assert_eq!(rtp[10].at, harness.at(1000));
    assert_eq!(harness.count(&SessionEvent::PlaybackDone), 2);
}

#[test]
fn nothing_is_sent_while_held_but_playback_time_passes() {
    let held = NegotiatedAudio {
        remote_on_hold: true,
        direction: Direction::RecvOnly,
        ..audio()
    };
    let mut harness = Harness::new(config(), held);
    harness.input(
        harness.t0,
        Input::Play(tone::sine(440.0, 8000, 1000, 8000).into()),
    );
    harness.run_until(harness.at(3000));
    assert!(harness.rtp_sent().is_empty());
    assert_eq!(harness.count(&SessionEvent::PlaybackDone), 1);
    let (done_at, _) = harness
        .events
        .iter()
        .find(|(_, e)| *e == SessionEvent::PlaybackDone)
        .unwrap();
    assert_eq!(*done_at, harness.at(980));

    // Held in the middle of a prompt, resumed: only the frames of the
    // time outside the hold are sent.
    let mut harness = Harness::new(config(), audio());
    harness.input(
        harness.t0,
        Input::Play(tone::sine(440.0, 8000, 1000, 8000).into()),
    );
    harness.input(harness.at(310), Input::Update(held));
    harness.input(harness.at(710), Input::Update(audio()));
    harness.run_until(harness.at(3000));
    let rtp = harness.rtp_sent();
    // 0..=300 ms: 16 frames sent; 320..=700 ms: 20 frames played unsent;
    // from 710 ms: the 14 left, sent.
    assert_eq!(rtp.len(), 30);
    assert!(rtp
        .iter()
        .all(|s| s.at <= harness.at(300) || s.at >= harness.at(710)));
    assert_eq!(rtp[16].at, harness.at(710));
    assert_eq!(rtp[29].at, harness.at(970));
    let after = RtpPacket::parse(&rtp[16].bytes).unwrap();
    assert!(after.marker());
    assert_eq!(harness.count(&SessionEvent::PlaybackDone), 1);
}

#[test]
fn rtp_latches_onto_the_first_valid_source_and_ignores_others() {
    let mut harness = Harness::new(config(), audio());
    let mut phone = Phone::new();
    let mut stranger = Phone {
        ssrc: 0xBAD,
        ..Phone::new()
    };
    harness.input(harness.t0, Input::StartRecording(limits(60_000, 0)));
    harness.input(harness.t0, Input::Play(vec![100; 8000].into()));
    // Before the phone's first packet, a payload type nobody negotiated:
    // not a reason to latch.
    let junk = stranger.packet(96, false, &[0; 20]);
    harness.input(harness.at(50), Input::Rtp(stranger_address(), junk));
    let mut rng = Rng(5);
    send_tone(&mut harness, &mut phone, &mut rng, 200, 50, 440.0, 0);
    for frame in 0..20u64 {
        let packet = stranger.audio(&tone_frame(880.0, frame as usize), false);
        harness.input(
            harness.at(400 + 20 * frame),
            Input::Rtp(stranger_address(), packet),
        );
    }
    let unknown = phone.packet(96, false, &[0; 20]);
    harness.input(harness.at(700), Input::Rtp(phone_address(), unknown));
    harness.run_until(harness.at(1300));

    let rtp = harness.rtp_sent();
    assert!(rtp
        .iter()
        .filter(|s| s.at < harness.at(200))
        .all(|s| s.to == sdp_address()));
    assert!(rtp
        .iter()
        .filter(|s| s.at > harness.at(200))
        .all(|s| s.to == phone_address()));
    let stats = harness.session.stats();
    assert_eq!(stats.latched, Some(phone_address()));
    assert_eq!(stats.foreign_packets, 20);
    assert_eq!(stats.unknown_payload, 2);
    assert_eq!(
        harness
            .received
            .iter()
            .filter(|r| **r == Received::Foreign)
            .count(),
        20
    );
    let recording = harness.session.stop_recording(harness.now).unwrap();
    assert_tone_for(&recording.samples, 440.0, 1000);
    assert_eq!(
        tone::longest_tone_ms(&recording.samples, 880.0, 8000, 20),
        0
    );

    // A re-INVITE: the next valid source is latched, wherever it is.
    let new_phone: SocketAddr = "203.0.113.50:7000".parse().unwrap();
    harness.input(harness.at(1400), Input::Update(audio()));
    let packet = phone.audio(&[0; 160], false);
    harness.input(harness.at(1500), Input::Rtp(new_phone, packet));
    let old = phone.audio(&[0; 160], false);
    harness.input(harness.at(1520), Input::Rtp(phone_address(), old));
    harness.input(harness.at(1600), Input::Play(vec![100; 800].into()));
    harness.run_until(harness.at(2000));
    let stats = harness.session.stats();
    assert_eq!(stats.latched, Some(new_phone));
    assert_eq!(stats.foreign_packets, 21);
    let last = harness.rtp_sent().last().map(|s| s.to);
    assert_eq!(last, Some(new_phone));
}

#[test]
fn the_rtp_timeout_fires_once_and_not_while_held() {
    let config = SessionConfig {
        rtp_timeout: Duration::from_secs(1),
        ..config()
    };
    let mut harness = Harness::new(config.clone(), audio());
    let mut phone = Phone::new();
    let mut rng = Rng(9);
    send_tone(&mut harness, &mut phone, &mut rng, 0, 100, 440.0, 0);
    harness.run_until(harness.at(10_000));
    let timeouts: Vec<Instant> = harness
        .events
        .iter()
        .filter(|(_, e)| *e == SessionEvent::RtpTimeout)
        .map(|(at, _)| *at)
        .collect();
    // The last packet at 1980 ms.
    assert_eq!(timeouts, [harness.at(2980)]);

    let held = NegotiatedAudio {
        remote_on_hold: true,
        direction: Direction::RecvOnly,
        ..audio()
    };
    let mut harness = Harness::new(config.clone(), held);
    harness.run_until(harness.at(10_000));
    assert_eq!(harness.count(&SessionEvent::RtpTimeout), 0);
    harness.input(harness.at(10_000), Input::Update(audio()));
    harness.run_until(harness.at(20_000));
    let timeouts: Vec<Instant> = harness
        .events
        .iter()
        .filter(|(_, e)| *e == SessionEvent::RtpTimeout)
        .map(|(at, _)| *at)
        .collect();
    assert_eq!(timeouts, [harness.at(11_000)]);

    let inactive = NegotiatedAudio {
        direction: Direction::Inactive,
        ..audio()
    };
    let mut harness = Harness::new(config, inactive);
    harness.run_until(harness.at(10_000));
    assert_eq!(harness.count(&SessionEvent::RtpTimeout), 0);
}

#[test]
fn reports_are_sent_at_intervals_sr_after_sending_else_rr() {
    let mut harness = Harness::new(config(), audio());
    let mut phone = Phone::new();
    let mut rng = Rng(21);
    send_tone(&mut harness, &mut phone, &mut rng, 0, 1500, 440.0, 10);
    harness.input(
        harness.t0,
        Input::Play(tone::sine(440.0, 8000, 3000, 8000).into()),
    );
    harness.run_until(harness.at(30_000));

    let reports = harness.rtcp_sent();
    assert!(reports.len() >= 5, "{} reports in 30 s", reports.len());
    let mut previous = harness.t0;
    let mut kinds = Vec::new();
    for report in &reports {
        assert_eq!(report.to, "10.0.0.1:4001".parse().unwrap());
        let interval = report.at - previous;
        assert!(
            interval >= Duration::from_millis(2050) && interval <= Duration::from_millis(6170),
            "interval {interval:?}"
        );
        previous = report.at;
        let packets = rtcp::parse_compound(&report.bytes).unwrap();
        let block = match &packets[0] {
            RtcpPacket::SenderReport { ssrc, info, blocks } => {
                assert_eq!(*ssrc, OUR_SSRC);
                kinds.push('S');
                assert!(info.packet_count > 0 && info.packet_count <= 150);
                assert_eq!(info.octet_count, info.packet_count * 160);
                blocks.first().copied()
            }
            RtcpPacket::ReceiverReport { ssrc, blocks } => {
                assert_eq!(*ssrc, OUR_SSRC);
                kinds.push('R');
                blocks.first().copied()
            }
            other => panic!("starts with {other:?}"),
        };
        assert!(
            matches!(&packets[1], RtcpPacket::SourceDescription { cnames } if cnames[0] == (OUR_SSRC, "test@dialtone".to_string()))
        );
        if report.at > harness.at(200) && report.at < harness.at(30_000) {
            let block = block.expect("a report block about the phone");
            assert_eq!(block.ssrc, PHONE_SSRC);
            assert_eq!(block.cumulative_lost, 0);
        }
    }
    // We sent for the first 3 s only: an SR first, RRs after.
    assert_eq!(kinds[0], 'S');
    assert!(kinds[2..].iter().all(|&k| k == 'R'), "{kinds:?}");
}

#[test]
fn a_report_echoing_our_sr_gives_the_round_trip_time() {
    let mut harness = Harness::new(config(), audio());
    harness.input(
        harness.t0,
        Input::Play(tone::sine(440.0, 8000, 10_000, 8000).into()),
    );
    harness.run_until(harness.at(7000));
    let (sr_at, sr_bytes) = {
        let sr = harness.rtcp_sent()[0];
        (sr.at, sr.bytes.clone())
    };
    let RtcpPacket::SenderReport { info, .. } = &rtcp::parse_compound(&sr_bytes).unwrap()[0] else {
        panic!("not an SR");
    };
    // The phone's report arrives 10 ms from now, having held the SR for
    // all but 50 ms of the time since we sent it: a round trip of 50 ms.
    let answered = harness.now + 10 * MS;
    let block = ReportBlock {
        ssrc: OUR_SSRC,
        fraction_lost: 0,
        cumulative_lost: 0,
        highest_sequence: 0,
        jitter: 0,
        last_sr: rtcp::compact_ntp(info.ntp_timestamp),
        delay_since_last_sr: rtcp::delay_since_last_sr(answered - sr_at - 50 * MS),
    };
    let mut bytes = Vec::new();
    rtcp::write_receiver_report(PHONE_SSRC, &[block], "phone", &mut bytes);
    let mut bye = Vec::new();
    rtcp::write_bye(PHONE_SSRC, Some("hang-up"), "phone", &mut bye);
    harness.input(answered, Input::Rtcp(phone_rtcp_address(), bytes));
    harness.input(answered + MS, Input::Rtcp(stranger_address(), bye.clone()));
    harness.run_until(answered + 10 * MS);
    let stats = harness.session.stats();
    let rtt = stats.round_trip_time.unwrap();
    assert!(rtt >= 49 * MS && rtt <= 51 * MS, "{rtt:?}");
    assert_eq!(stats.rtcp_received, 1);
    assert_eq!(stats.foreign_packets, 1);
    assert!(!stats.remote_bye);
    // Later reports go to the latched RTCP source.
    harness.input(answered + 20 * MS, Input::Rtcp(phone_rtcp_address(), bye));
    harness.run_until(harness.at(20_000));
    assert!(harness.session.stats().remote_bye);
    assert_eq!(harness.rtcp_sent().last().unwrap().to, phone_rtcp_address());
}

#[test]
fn close_writes_a_bye_and_ends_everything() {
    let mut harness = Harness::new(config(), audio());
    harness.input(harness.t0, Input::Play(vec![100; 8000].into()));
    harness.run_until(harness.at(100));
    let mut out = Vec::new();
    let to = harness.session.close(&mut out).unwrap();
    assert_eq!(to, "10.0.0.1:4001".parse().unwrap());
    let packets = rtcp::parse_compound(&out).unwrap();
    assert!(matches!(&packets[2], RtcpPacket::Bye { ssrcs, .. } if ssrcs == &[OUR_SSRC]));
    assert_eq!(harness.session.next_deadline(), None);
    assert!(harness
        .session
        .poll_transmit(harness.at(500), &mut out)
        .is_none());
    assert!(out.is_empty());
    assert!(harness.session.close(&mut out).is_none());
    let mut phone = Phone::new();
    let packet = phone.audio(&[0; 160], false);
    assert_eq!(
        harness
            .session
            .on_rtp(phone_address(), &packet, harness.at(600)),
        Received::Closed
    );
}

#[test]
fn comfort_noise_is_accepted_as_silence() {
    let mut harness = Harness::new(config(), audio());
    let mut phone = Phone::new();
    harness.input(harness.t0, Input::StartRecording(limits(60_000, 0)));
    let mut rng = Rng(1);
    send_tone(&mut harness, &mut phone, &mut rng, 0, 25, 440.0, 0);
    let cn = phone.packet(13, false, &[40]);
    harness.input(harness.at(500), Input::Rtp(phone_address(), cn));
    phone.timestamp = phone.timestamp.wrapping_add(4000);
    for frame in 0..25u64 {
        let packet = phone.audio(&tone_frame(440.0, frame as usize), frame == 0);
        harness.input(
            harness.at(1000 + 20 * frame),
            Input::Rtp(phone_address(), packet),
        );
    }
    // Stopped just after the last packet: what the clock would play after
    // it is real time too, and would be recorded as silence.
    harness.run_until(harness.at(1490));
    let recording = harness.session.stop_recording(harness.now).unwrap();
    assert_eq!(recording.duration_ms(), 1500);
    let spans = tone::tone_spans(&recording.samples, 440.0, 8000, 20);
    assert_eq!(spans, [(0, 500), (1000, 1500)]);
    let stats = harness.session.stats();
    assert_eq!(stats.comfort_noise_packets, 1);
    assert_eq!(stats.concealed_samples, 0);
}

/// A phone over a network with delay, loss, duplication and reordering,
/// recorded until `#`: the recording is the audio that arrived, in order,
/// with silence where packets were lost.
#[test]
fn seeded_network_simulation() {
    let seeds: Vec<u64> = (1..=20).chain(REGRESSIONS.iter().copied()).collect();
    for seed in seeds {
        let result = std::panic::catch_unwind(|| simulate(seed));
        if result.is_err() {
            panic!("seed {seed} failed: add it to REGRESSIONS");
        }
    }
}

fn simulate(seed: u64) {
    let mut rng = Rng(seed);
    let mut harness = Harness::new(config(), audio());
    let mut phone = Phone::new();
    harness.input(harness.t0, Input::StartRecording(limits(60_000, 0)));
    let frames = 150usize;
    let mut lost = vec![false; frames];
    let mut delivered_packets = 0u64;
    for (frame, lost) in lost.iter_mut().enumerate() {
        let packet = phone.audio(&tone_frame(440.0, frame), frame == 0);
        // The first two and the last packet arrive: they fix the start
        // and the end of what is recorded.
        *lost = frame > 1 && frame + 1 < frames && rng.below(100) < 4;
        if *lost {
            continue;
        }
        let copies = if rng.below(100) < 3 { 2 } else { 1 };
        for _ in 0..copies {
            // The first three in order, so that the source validates on
            // the second (RFC 3550 A.1) and loss counts from there.
            let delay_us = if frame < 3 { 0 } else { rng.below(50_001) };
            let at = harness.at(20 * frame as u64) + Duration::from_micros(delay_us);
            harness.input(at, Input::Rtp(phone_address(), packet.clone()));
            delivered_packets += 1;
        }
    }
    send_digit(&mut harness, &mut phone, 20 * frames as u64, 11);
    harness.run_until(harness.at(20 * frames as u64 + 2000));

    let recordings = harness.recordings();
    assert_eq!(recordings.len(), 1);
    let recording = &recordings[0];
    assert_eq!(recording.end, RecordingEnd::Digit('#'));
    assert_eq!(recording.samples.len(), frames * 160);
    let lost_count = lost.iter().filter(|&&l| l).count();
    for (frame, samples) in recording.samples.chunks(160).enumerate() {
        if lost[frame] {
            assert!(samples.iter().all(|&s| s == 0), "frame {frame} was lost");
        } else {
            let expected: Vec<i16> = tone_frame(440.0, frame)
                .iter()
                .map(|&s| Law::Mu.decode(Law::Mu.encode(s)))
                .collect();
            assert_eq!(samples, &expected[..], "frame {frame}");
        }
    }
    let stats = harness.session.stats();
    assert_eq!(stats.rx_packets, delivered_packets + 7);
    // A lost frame played before the next packet arrived counts as
    // silence, not concealment (the jitter buffer cannot tell yet).
    assert!(stats.concealed_samples <= 160 * lost_count as u64);
    assert_eq!(stats.rx_lost, lost_count as i64);
    assert_eq!(stats.late_packets, 0);
}

proptest! {
    #[test]
    fn arbitrary_datagrams_are_counted_never_panic(
        datagrams in proptest::collection::vec(
            (any::<bool>(), any::<bool>(), proptest::collection::vec(any::<u8>(), 0..80)),
            0..60,
        )
    ) {
        let t0 = Instant::now();
        let mut session = MediaSession::new(config(), audio(), t0);
        session.start_recording(limits(5000, 300), t0);
        session.play(vec![1; 400].into(), t0);
        let mut rtp_count = 0u64;
        let mut out = Vec::new();
        for (index, (on_rtp, from_phone, mut bytes)) in datagrams.into_iter().enumerate() {
            let now = t0 + 7 * MS * index as u32;
            let from = if from_phone { phone_address() } else { stranger_address() };
            if on_rtp {
                // Half of them look like RTP from the start.
                if let Some(first) = bytes.first_mut() {
                    *first = (*first & 0x3f) | 0x80;
                }
                session.on_rtp(from, &bytes, now);
                rtp_count += 1;
            } else {
                session.on_rtcp(from, &bytes, now);
            }
            while session.poll_transmit(now, &mut out).is_some() {}
            while session.poll_event(now).is_some() {}
        }
        let stats = session.stats();
        let rtp_accounted = stats.rx_packets + stats.unknown_payload + stats.foreign_packets
            + stats.malformed_packets;
        prop_assert!(rtp_accounted >= rtp_count);
        let _ = session.stop_recording(t0 + Duration::from_secs(10));
    }

    #[test]
    fn arbitrary_bytes_on_the_rtp_port_are_each_counted_once(
        datagrams in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..60)
    ) {
        let t0 = Instant::now();
        let mut session = MediaSession::new(config(), audio(), t0);
        for (index, bytes) in datagrams.iter().enumerate() {
            session.on_rtp(phone_address(), bytes, t0 + MS * index as u32);
        }
        let stats = session.stats();
        // Short telephone-event payloads count as accepted and malformed.
        prop_assert!(stats.rx_packets + stats.unknown_payload + stats.malformed_packets >= datagrams.len() as u64);
        prop_assert!(stats.rx_packets + stats.unknown_payload + stats.malformed_packets + stats.foreign_packets
            <= 2 * datagrams.len() as u64);
    }
}

#[test]
fn in_a_room_audio_is_played_out_one_frame_per_tick_after_the_jitter_delay() {
    let t0 = Instant::now();
    let mut session = MediaSession::new(config(), audio(), t0);
    // Before mixing starts, nothing is kept for the mixer.
    let mut phone = Phone::new();
    session.on_rtp(
        phone_address(),
        &phone.audio(&tone_frame(440.0, 0), true),
        t0,
    );
    assert_eq!(session.mix_frame(t0 + 100 * MS), None);
    session.start_mixing();
    let first = t0 + 20 * MS;
    for frame in 1..=5 {
        let at = first + 20 * MS * (frame as u32 - 1);
        let packet = phone.audio(&tone_frame(440.0, frame), false);
        assert_eq!(
            session.on_rtp(phone_address(), &packet, at),
            Received::Audio
        );
    }
    // The first frame plays 60 ms after it arrived, then one every 20 ms.
    assert_eq!(session.mix_frame(first + 59 * MS), None);
    let mut played = Vec::new();
    for tick in 0..5u32 {
        let frame = session.mix_frame(first + 60 * MS + 20 * MS * tick).unwrap();
        assert_eq!(frame.len(), 160);
        played.extend_from_slice(frame);
        // At most one frame a tick: the next is not due yet.
        assert_eq!(session.mix_frame(first + 60 * MS + 20 * MS * tick), None);
    }
    assert_tone_for(&played, 440.0, 100);
    // Nothing more arrived: a frame of nothing is no frame.
    assert_eq!(session.mix_frame(first + 160 * MS), None);
}

#[test]
fn frames_from_the_room_are_sent_with_continuous_timestamps_and_a_marker_after_a_gap() {
    let t0 = Instant::now();
    let mut session = MediaSession::new(config(), audio(), t0);
    let mut out = Vec::new();
    let payload = [Law::Mu.encode(1000); 160];
    let mut sent = Vec::new();
    for (tick, skipped) in [(0u32, 0u32), (1, 0), (2, 0), (7, 4), (8, 0)] {
        let to = session
            .send_frame(&payload, skipped, t0 + 20 * MS * tick, &mut out)
            .unwrap();
        assert_eq!(to, sdp_address());
        let packet = RtpPacket::parse(&out).unwrap();
        assert_eq!(packet.payload(), &payload[..]);
        assert_eq!(packet.ssrc(), OUR_SSRC);
        sent.push((packet.sequence(), packet.timestamp(), packet.marker()));
    }
    assert_eq!(
        sent,
        [
            (1000, 50_000, true),
            (1001, 50_160, false),
            (1002, 50_320, false),
            // Four frames skipped: the timestamp jumps, the sequence
            // does not (nothing was lost), and a new talkspurt begins.
            (1003, 50_480 + 4 * 160, true),
            (1004, 50_480 + 5 * 160, false),
        ]
    );
    assert_eq!(session.stats().tx_packets, 5);
    assert_eq!(session.stats().tx_octets, 800);
    // While the phone holds the call nothing is sent, but time passes;
    // the first frame after the hold is a new talkspurt.
    session.update(
        NegotiatedAudio {
            remote_on_hold: true,
            ..audio()
        },
        t0 + 180 * MS,
    );
    assert_eq!(
        session.send_frame(&payload, 0, t0 + 180 * MS, &mut out),
        None
    );
    session.update(audio(), t0 + 200 * MS);
    session
        .send_frame(&payload, 0, t0 + 200 * MS, &mut out)
        .unwrap();
    let packet = RtpPacket::parse(&out).unwrap();
    assert_eq!(
        (packet.sequence(), packet.timestamp(), packet.marker()),
        (1005, 50_480 + 7 * 160, true)
    );
}
