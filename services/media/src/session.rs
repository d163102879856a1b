//! One call leg's media, sans-IO: what voicemail and menus drive (play
//! prompts, record, read digits) over one RTP/RTCP stream pair.
//!
//! # What it owns
//! [`MediaSession`], made from a [`SessionConfig`] and the
//! [`NegotiatedAudio`] of the offer/answer, fed with datagrams
//! ([`MediaSession::on_rtp`], [`MediaSession::on_rtcp`]) and commands
//! ([`MediaSession::play`], [`MediaSession::start_recording`], ...), and
//! polled for datagrams to send ([`MediaSession::poll_transmit`]) and
//! [`SessionEvent`]s ([`MediaSession::poll_event`]) until
//! [`MediaSession::next_deadline`]. Also [`RecordLimits`], [`Recording`]
//! and [`SessionStats`].
//!
//! - **Symmetric RTP** (RFC 4961; "comedia" in rtpengine and Asterisk):
//!   RTP goes to the SDP's address until a valid packet (version 2, a
//!   negotiated payload type) arrives, then to that packet's source, so
//!   that a phone behind NAT hears us. Once latched, packets from any
//!   other address are counted ([`SessionStats::foreign_packets`]) and
//!   dropped: a stray or spoofed stream is never played nor recorded. A
//!   re-INVITE ([`MediaSession::update`]) allows latching again. RTCP
//!   latches the same way on its own port.
//! - **Receiving** (RFC 3550 s.5, RFC 3551): the negotiated G.711 payload
//!   type goes through [`ReceiveStats`] and, only while recording, is
//!   decoded into the [`JitterBuffer`] whose playout is the recording;
//!   telephone-events (RFC 4733) go to a [`DtmfReceiver`]; comfort noise
//!   (RFC 3389) is accepted as silence; anything else is counted and
//!   dropped. All three kinds share the stream's sequence numbers, so all
//!   three feed the statistics.
//! - **Recording**: audio time, not wall time. It ends at a stop digit
//!   (waiting the jitter buffer's delay for audio sent before the digit;
//!   audio from the digit's RTP timestamp on is not recorded), after
//!   `silence_ms` of frames under [`tone::SILENCE_RMS`] (that trailing
//!   silence is cut), at the maximum duration, or when stopped. Until the
//!   first packet, wall time stands in for audio time, so that a peer
//!   sending nothing still meets the limits.
//! - **Sending**: a [`Pacer`] clocks queued prompts out as 20 ms G.711
//!   frames with our SSRC (RFC 3550 s.5.1); it runs only while something
//!   is queued: an idle session sends no RTP at all (no silence stream:
//!   the cheapest idle call, and phones do not need one). While the peer
//!   holds us, queued audio plays out in time but is not sent, so a menu
//!   waiting for the end of a prompt never stalls.
//! - **RTCP** (RFC 3550 s.6): an SR when we sent RTP since the previous
//!   report, else an RR, every [`rtcp::report_interval`] with a random
//!   factor from a xorshift seeded by our SSRC; incoming reports give the
//!   round-trip time (s.6.4.1), a BYE is noted; [`MediaSession::close`]
//!   writes our BYE (s.6.6).
//! - **Mixing** (a conference room, [`crate::room`]): after
//!   [`MediaSession::start_mixing`] the peer's audio is also decoded into
//!   a jitter buffer that the room pops one frame per tick
//!   ([`MediaSession::mix_frame`]), and the room's clock, not the
//!   session's pacer, sends what the mixer made for this peer
//!   ([`MediaSession::send_frame`]); prompts then go through the mixer,
//!   not [`MediaSession::play`].
//! - **RTP timeout**: no packet from the peer for
//!   [`SessionConfig::rtp_timeout`] while it is expected to send (not on
//!   hold, not inactive) is [`SessionEvent::RtpTimeout`], once.
//!
//! # What it must not do
//! No socket, no clock, no randomness beyond its config: instants are
//! passed in, and the caller (the runtime) owns sockets and timers. The
//! per-packet paths do not allocate: decoding, encoding and framing reuse
//! buffers held by the session; a recording's samples are reserved for its
//! maximum duration when it starts. Malformed input is counted, never a
//! panic.
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dtmf::{self, DtmfEvent, DtmfReceiver};
use crate::g711::{self, Law};
use crate::jitter::{JitterBuffer, JitterConfig, JitterStats};
use crate::pacer::Pacer;
use crate::rtcp::{self, RtcpPacket, SenderInfo};
use crate::rtp::{self, Arrival, ReceiveStats, RtpHeader, RtpPacket, SendStats};
use crate::sdp::{Codec, NegotiatedAudio};
use crate::tone;

/// The static payload type of comfort noise (RFC 3551 s.6): taken as
/// comfort noise even when the offer did not list it, as phones send it
/// regardless.
const COMFORT_NOISE_STATIC_PAYLOAD_TYPE: u8 = 13;
/// The session's clock: G.711, telephone-events and CN all run at 8 kHz.
const CLOCK_RATE_HZ: u32 = Codec::CLOCK_RATE_HZ;
/// Recording frames: the jitter buffer plays 20 ms at a time, whatever
/// the peer's packet time.
const RECORD_FRAME_SAMPLES: usize = 160;
/// How often a recording is drained when no packet arrives (silence
/// suppression, or the peer stopped): one frame.
const RECORD_POLL: Duration = Duration::from_millis(20);
/// How long a stop digit waits for the audio sent before it (the jitter
/// buffer's target delay: what it waits for reordered packets).
const DIGIT_STOP_WAIT: Duration = Duration::from_millis(60);
/// Samples of silence a comfort-noise packet stands for in a recording,
/// so that a peer that opens with CN still starts the playout clock.
const SILENCE_FRAME: [i16; RECORD_FRAME_SAMPLES] = [0; RECORD_FRAME_SAMPLES];
/// Decode buffer capacity: the largest G.711 payload in a 1500-byte
/// datagram, so that decoding never grows it.
const MAX_PAYLOAD_SAMPLES: usize = 1500;

/// The session's identity on the wire and its timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Our RTP SSRC; random per session (RFC 3550 s.8).
    pub ssrc: u32,
    /// Random, like the SSRC (RFC 3550 s.5.1).
    pub first_sequence: u16,
    pub first_timestamp: u32,
    /// The SDES CNAME in our RTCP (RFC 7022: random per session is fine).
    pub cname: String,
    /// No RTP from the peer for this long is [`SessionEvent::RtpTimeout`];
    /// zero: never.
    pub rtp_timeout: Duration,
    /// The packet time of what we send.
    pub ptime_ms: u32,
    /// The wall-clock time (since the Unix epoch) at the `now` passed to
    /// [`MediaSession::new`]: our sender reports' NTP timestamps follow
    /// from it and the instants passed in, so the session reads no clock.
    pub wall_clock_at_start: Duration,
}

impl SessionConfig {
    /// A configuration with a 30 s RTP timeout and 20 ms packets.
    pub fn new(
        ssrc: u32,
        first_sequence: u16,
        first_timestamp: u32,
        cname: impl Into<String>,
    ) -> Self {
        SessionConfig {
            ssrc,
            first_sequence,
            first_timestamp,
            cname: cname.into(),
            rtp_timeout: Duration::from_secs(30),
            ptime_ms: 20,
            wall_clock_at_start: Duration::ZERO,
        }
    }
}

/// Which socket a datagram from [`MediaSession::poll_transmit`] leaves by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet {
    Rtp,
    Rtcp,
}

/// What [`MediaSession::on_rtp`] made of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// The negotiated codec's audio.
    Audio,
    /// A telephone-event packet (RFC 4733).
    Dtmf,
    /// Comfort noise (RFC 3389): silence.
    ComfortNoise,
    /// From an address other than the one latched onto: dropped.
    Foreign,
    /// A payload type not negotiated: dropped.
    UnknownPayload,
    /// Not RTP: dropped.
    Malformed,
    /// The session is closed: dropped.
    Closed,
}

/// When a recording ends by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordLimits {
    /// Audio time; at least one frame is recorded.
    pub max_duration_ms: u32,
    /// This much silence in a row ends the recording, and is cut from it;
    /// 0: silence never ends it.
    pub silence_ms: u32,
    /// Digits that end the recording (e.g. `"#"`); the digit's tone is
    /// not recorded.
    pub stop_digits: String,
}

/// Why a recording ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingEnd {
    MaxDuration,
    Silence,
    Digit(char),
    /// [`MediaSession::stop_recording`]: the caller hung up or the app
    /// stopped it.
    Stopped,
}

/// A finished recording: 8 kHz mono samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    pub samples: Vec<i16>,
    pub end: RecordingEnd,
}

impl Recording {
    /// Its length in audio time.
    pub fn duration_ms(&self) -> u32 {
        u32::try_from(self.samples.len() as u64 * 1000 / u64::from(CLOCK_RATE_HZ))
            .unwrap_or(u32::MAX)
    }
}

/// What the session tells its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    Dtmf(DtmfEvent),
    /// Everything queued by [`MediaSession::play`] has played (or was
    /// stopped); once per time the queue runs dry.
    PlaybackDone,
    /// A recording ended by itself (digit, silence, maximum duration).
    RecordingDone(Recording),
    /// The peer sent nothing for the configured timeout: the call is
    /// probably gone. Once per session.
    RtpTimeout,
}

/// Counters since the session started.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SessionStats {
    /// Packets accepted from the peer (audio, telephone-events, comfort
    /// noise), duplicates included.
    pub rx_packets: u64,
    /// Of the peer's current SSRC (RFC 3550 A.3).
    pub rx_lost: i64,
    pub rx_jitter_ms: f64,
    pub rx_duplicates: u64,
    /// Datagrams from an address other than the latched one (RTP and
    /// RTCP).
    pub foreign_packets: u64,
    pub unknown_payload: u64,
    /// Datagrams that are not RTP (or not RTCP, on the RTCP port), and
    /// telephone-event payloads too short to read.
    pub malformed_packets: u64,
    pub comfort_noise_packets: u64,
    /// Audio that came too late for a recording's or a room's playout.
    pub late_packets: u64,
    /// Samples missing from recordings and a room's mix (loss,
    /// lateness), played as silence.
    pub concealed_samples: u64,
    /// Recorded 20 ms frames with concealed samples in them.
    pub concealed_frames: u64,
    /// 20 ms frames played out of the jitter buffer into recordings,
    /// concealed ones included.
    pub recorded_frames: u64,
    pub tx_packets: u64,
    /// RTP payload octets sent (RFC 3550 s.6.4.1).
    pub tx_octets: u64,
    /// DTMF digits received (each once, however many packets).
    pub dtmf_events: u64,
    pub rtcp_received: u64,
    pub rtcp_sent: u64,
    /// From the last report block about our stream that echoed an SR.
    pub round_trip_time: Option<Duration>,
    /// The peer sent an RTCP BYE.
    pub remote_bye: bool,
    /// The RTP source address latched onto.
    pub latched: Option<SocketAddr>,
}

struct Recorder {
    limits: RecordLimits,
    samples: Vec<i16>,
    max_samples: usize,
    silence_samples: usize,
    /// Samples at the end of `samples` that are silence.
    silent_run: usize,
    jitter: JitterBuffer,
    /// Set until the first packet starts the jitter buffer's clock: till
    /// then wall time stands in for audio time, so that a peer sending
    /// nothing still meets the silence and duration limits.
    waiting_since: Option<Instant>,
    next_poll: Instant,
    /// A stop digit came: the recording ends when the audio sent before
    /// it has had the buffer's delay to arrive.
    digit_stop: Option<DigitStop>,
}

#[derive(Debug, Clone, Copy)]
struct DigitStop {
    digit: char,
    /// The digit's start on the stream's clock (RFC 4733 s.2.3): audio
    /// from there on is the digit's, or after it, and not recorded.
    rtp_timestamp: u32,
    at: Instant,
}

impl Recorder {
    /// Whether audio at `rtp_timestamp` belongs in the recording.
    fn takes(&self, rtp_timestamp: u32) -> bool {
        self.digit_stop
            .is_none_or(|stop| (rtp_timestamp.wrapping_sub(stop.rtp_timestamp) as i32) < 0)
    }
}

fn is_silent(samples: &[i16]) -> bool {
    if samples.is_empty() {
        return true;
    }
    let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    sum / (samples.len() as f64) < tone::SILENCE_RMS * tone::SILENCE_RMS
}

fn samples_of_ms(duration_ms: u32) -> usize {
    (u64::from(duration_ms) * u64::from(CLOCK_RATE_HZ) / 1000) as usize
}

fn law_of(codec: Codec) -> Law {
    match codec {
        Codec::Pcmu => Law::Mu,
        Codec::Pcma => Law::A,
    }
}

fn address_of(ip: IpAddr, port: u16) -> Option<SocketAddr> {
    (!ip.is_unspecified() && port != 0).then_some(SocketAddr::new(ip, port))
}

/// A call leg's media: see the module documentation.
pub struct MediaSession {
    config: SessionConfig,
    audio: NegotiatedAudio,
    law: Law,
    started_at: Instant,
    closed: bool,
    latched_rtp: Option<SocketAddr>,
    latched_rtcp: Option<SocketAddr>,

    receive_stats: ReceiveStats,
    dtmf: DtmfReceiver,
    /// When the DTMF receiver must be polled for an event whose end
    /// packets were lost.
    dtmf_deadline: Option<Instant>,
    /// The RTP timestamp of the last telephone-event packet: its event's.
    last_dtmf_timestamp: u32,
    decoded: Vec<i16>,
    last_rtp_at: Instant,
    timeout_fired: bool,
    recorder: Option<Recorder>,
    /// Jitter statistics of recordings that have ended.
    earlier_jitter: JitterStats,
    /// While in a room: the peer's audio at the playout clock, for the
    /// mixer.
    mixing: Option<JitterBuffer>,
    /// The next sequence number and timestamp of
    /// [`MediaSession::send_frame`], and whether its next packet starts a
    /// talkspurt.
    mix_sequence: u16,
    mix_timestamp: u32,
    mix_marker: bool,

    pacer: Pacer,
    queue: VecDeque<Arc<[i16]>>,
    /// How far into the queue's first buffer playback is.
    queue_offset: usize,
    playing: bool,
    /// While the peer holds us: when the next frame of queued audio is
    /// due to play out unsent.
    held_due: Option<Instant>,
    frame: Vec<i16>,
    encoded: Vec<u8>,
    send_stats: SendStats,
    /// The last RTP timestamp sent and when, for the SR's RTP timestamp.
    last_sent: Option<(u32, Instant)>,
    sent_since_report: bool,

    next_report_at: Instant,
    rng: u64,
    /// The last SR received: its compact NTP timestamp and arrival.
    last_sr: Option<(u32, Instant)>,
    events: VecDeque<SessionEvent>,
    stats: SessionStats,
}

impl MediaSession {
    /// A session starting at `now`, sending to the SDP's addresses until
    /// the peer's packets say otherwise.
    pub fn new(config: SessionConfig, audio: NegotiatedAudio, now: Instant) -> Self {
        let ptime_ms = config.ptime_ms.max(1);
        let frame_samples = samples_of_ms(ptime_ms).max(1);
        let mut pacer = Pacer::new(
            now,
            ptime_ms,
            CLOCK_RATE_HZ,
            config.first_sequence,
            config.first_timestamp,
        );
        // Idle: nothing is sent until something is played.
        pacer.pause();
        // xorshift needs a non-zero state; the SSRC is random already.
        let rng = (u64::from(config.ssrc) << 32 | u64::from(!config.ssrc)) | 1;
        let mut session = MediaSession {
            law: law_of(audio.codec),
            audio,
            started_at: now,
            closed: false,
            latched_rtp: None,
            latched_rtcp: None,
            receive_stats: ReceiveStats::new(CLOCK_RATE_HZ),
            dtmf: DtmfReceiver::new(CLOCK_RATE_HZ),
            dtmf_deadline: None,
            last_dtmf_timestamp: 0,
            decoded: Vec::with_capacity(MAX_PAYLOAD_SAMPLES),
            last_rtp_at: now,
            timeout_fired: false,
            recorder: None,
            earlier_jitter: JitterStats::default(),
            mixing: None,
            mix_sequence: config.first_sequence,
            mix_timestamp: config.first_timestamp,
            mix_marker: true,
            pacer,
            queue: VecDeque::new(),
            queue_offset: 0,
            playing: false,
            held_due: None,
            frame: Vec::with_capacity(frame_samples),
            encoded: Vec::with_capacity(frame_samples),
            send_stats: SendStats::default(),
            last_sent: None,
            sent_since_report: false,
            next_report_at: now,
            rng,
            last_sr: None,
            events: VecDeque::new(),
            stats: SessionStats::default(),
            config,
        };
        session.next_report_at = now + session.report_interval();
        session
    }

    /// A re-INVITE changed the peer's side (address, ports, codec, hold):
    /// the next valid packet may latch again, and the RTP timeout counts
    /// from now.
    pub fn update(&mut self, audio: NegotiatedAudio, now: Instant) {
        self.advance(now);
        self.audio = audio;
        self.law = law_of(audio.codec);
        self.latched_rtp = None;
        self.latched_rtcp = None;
        self.stats.latched = None;
        self.last_rtp_at = now;
    }

    fn rtp_target(&self) -> Option<SocketAddr> {
        self.latched_rtp
            .or_else(|| address_of(self.audio.remote_address, self.audio.remote_rtp_port))
    }

    fn rtcp_target(&self) -> Option<SocketAddr> {
        self.latched_rtcp
            .or_else(|| address_of(self.audio.remote_address, self.audio.remote_rtcp_port))
    }

    /// Whether the peer takes our audio now.
    fn can_send(&self) -> bool {
        self.audio.direction.sends() && !self.audio.remote_on_hold && self.rtp_target().is_some()
    }

    /// Whether the peer is expected to send: the RTP timeout runs.
    fn expects_rtp(&self) -> bool {
        !self.closed
            && !self.timeout_fired
            && !self.config.rtp_timeout.is_zero()
            && self.audio.direction.receives()
            && !self.audio.remote_on_hold
    }

    /// What kind of payload a negotiated payload type carries.
    fn kind_of(&self, payload_type: u8) -> Option<Received> {
        if payload_type == self.audio.payload_type {
            Some(Received::Audio)
        } else if Some(payload_type) == self.audio.telephone_event_payload_type {
            Some(Received::Dtmf)
        } else if Some(payload_type) == self.audio.comfort_noise_payload_type
            || payload_type == COMFORT_NOISE_STATIC_PAYLOAD_TYPE
        {
            Some(Received::ComfortNoise)
        } else {
            None
        }
    }

    /// A datagram received on the RTP port from `from`.
    pub fn on_rtp(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) -> Received {
        if self.closed {
            return Received::Closed;
        }
        if self.latched_rtp.is_some_and(|latched| latched != from) {
            self.stats.foreign_packets += 1;
            return Received::Foreign;
        }
        let Ok(packet) = RtpPacket::parse(bytes) else {
            self.stats.malformed_packets += 1;
            return Received::Malformed;
        };
        let Some(kind) = self.kind_of(packet.payload_type()) else {
            self.stats.unknown_payload += 1;
            return Received::UnknownPayload;
        };
        if self.latched_rtp.is_none() {
            self.latched_rtp = Some(from);
            self.stats.latched = Some(from);
        }
        self.stats.rx_packets += 1;
        self.last_rtp_at = now;
        let arrival =
            self.receive_stats
                .on_packet(packet.ssrc(), packet.sequence(), packet.timestamp(), now);
        match kind {
            Received::Audio if arrival != Arrival::Duplicate => self.take_audio(&packet, now),
            Received::Dtmf => {
                match self
                    .dtmf
                    .on_packet(packet.timestamp(), packet.payload(), now)
                {
                    Ok(event) => {
                        self.last_dtmf_timestamp = packet.timestamp();
                        if let Some(event) = event {
                            self.on_dtmf(event, now);
                        }
                        self.dtmf_deadline = Some(now + dtmf::END_TIMEOUT);
                    }
                    Err(_) => self.stats.malformed_packets += 1,
                }
            }
            Received::ComfortNoise => {
                self.stats.comfort_noise_packets += 1;
                if let Some(recorder) = self.recorder.as_mut() {
                    if recorder.takes(packet.timestamp()) {
                        recorder
                            .jitter
                            .push(packet.timestamp(), &SILENCE_FRAME, false, now);
                        recorder.waiting_since = None;
                    }
                }
                if let Some(mixing) = self.mixing.as_mut() {
                    mixing.push(packet.timestamp(), &SILENCE_FRAME, false, now);
                }
            }
            _ => {}
        }
        self.advance(now);
        kind
    }

    /// Decodes audio for the recording and the mixer, whichever is on.
    fn take_audio(&mut self, packet: &RtpPacket<'_>, now: Instant) {
        let recorded = self
            .recorder
            .as_ref()
            .is_some_and(|recorder| recorder.takes(packet.timestamp()));
        if !recorded && self.mixing.is_none() {
            return;
        }
        self.decoded.clear();
        g711::decode_into(self.law, packet.payload(), &mut self.decoded);
        if let Some(recorder) = self.recorder.as_mut().filter(|_| recorded) {
            recorder
                .jitter
                .push(packet.timestamp(), &self.decoded, packet.marker(), now);
            recorder.waiting_since = None;
        }
        if let Some(mixing) = self.mixing.as_mut() {
            mixing.push(packet.timestamp(), &self.decoded, packet.marker(), now);
        }
    }

    /// Puts the session in a room: from now on the peer's audio is also
    /// kept for [`MediaSession::mix_frame`] (a jitter buffer of 20 ms
    /// frames with the usual 60 ms delay).
    pub fn start_mixing(&mut self) {
        if self.mixing.is_none() {
            self.mixing = Some(JitterBuffer::new(JitterConfig {
                clock_rate_hz: CLOCK_RATE_HZ,
                frame_samples: RECORD_FRAME_SAMPLES,
                ..JitterConfig::default()
            }));
        }
    }

    /// The peer's next 20 ms frame for the mixer if its playout time has
    /// come: `None` before [`MediaSession::start_mixing`], before the first
    /// packet, when the frame is not due yet, and when the whole frame is
    /// missing (loss, silence suppression, the peer on hold): a frame of
    /// nothing is no contribution. The room takes at most one per tick.
    pub fn mix_frame(&mut self, now: Instant) -> Option<&[i16]> {
        if self.closed {
            return None;
        }
        let frame = self.mixing.as_mut()?.pop(now)?;
        (frame.missing_samples < frame.samples.len()).then_some(frame.samples)
    }

    /// Sends one frame the room mixed for this peer (`payload`: G.711 in
    /// the negotiated law), written into `out` (cleared first), with the
    /// next sequence number and a timestamp one frame after the last;
    /// `skipped_frames` frames the room's clock left out since the last
    /// one move the timestamp on, and the packet carries the marker bit (a
    /// new talkspurt for the peer's jitter buffer, as after a pause of the
    /// pacer). `None` when the peer does not take audio now (hold,
    /// `recvonly`, no address): the timestamps keep following the clock.
    pub fn send_frame(
        &mut self,
        payload: &[u8],
        skipped_frames: u32,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Option<SocketAddr> {
        out.clear();
        if self.closed {
            return None;
        }
        let frame_samples = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        let skipped_samples = skipped_frames.wrapping_mul(frame_samples);
        self.mix_timestamp = self.mix_timestamp.wrapping_add(skipped_samples);
        if skipped_frames > 0 {
            self.mix_marker = true;
        }
        let timestamp = self.mix_timestamp;
        self.mix_timestamp = self.mix_timestamp.wrapping_add(frame_samples);
        let target = self.rtp_target().filter(|_| self.can_send());
        let Some(target) = target else {
            // The next frame the peer takes starts a talkspurt.
            self.mix_marker = true;
            return None;
        };
        let header = RtpHeader {
            payload_type: self.audio.payload_type,
            marker: std::mem::take(&mut self.mix_marker),
            sequence: self.mix_sequence,
            timestamp,
            ssrc: self.config.ssrc,
        };
        self.mix_sequence = self.mix_sequence.wrapping_add(1);
        rtp::write_packet(&header, payload, out);
        self.send_stats.on_sent(payload.len());
        self.stats.tx_packets += 1;
        self.stats.tx_octets += payload.len() as u64;
        self.last_sent = Some((timestamp, now));
        self.sent_since_report = true;
        Some(target)
    }

    fn on_dtmf(&mut self, event: DtmfEvent, now: Instant) {
        if let DtmfEvent::Began { digit } = event {
            self.stats.dtmf_events += 1;
            self.events.push_back(SessionEvent::Dtmf(event));
            let rtp_timestamp = self.last_dtmf_timestamp;
            if let Some(recorder) = self.recorder.as_mut() {
                if recorder.limits.stop_digits.contains(digit) && recorder.digit_stop.is_none() {
                    recorder.digit_stop = Some(DigitStop {
                        digit,
                        rtp_timestamp,
                        at: now + DIGIT_STOP_WAIT,
                    });
                }
            }
        } else {
            self.events.push_back(SessionEvent::Dtmf(event));
        }
    }

    /// A datagram received on the RTCP port from `from`.
    pub fn on_rtcp(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) {
        if self.closed {
            return;
        }
        if self.latched_rtcp.is_some_and(|latched| latched != from) {
            self.stats.foreign_packets += 1;
            return;
        }
        let Ok(packets) = rtcp::parse_compound(bytes) else {
            self.stats.malformed_packets += 1;
            return;
        };
        self.latched_rtcp.get_or_insert(from);
        self.stats.rtcp_received += 1;
        let arrival_ntp = self.ntp_at(now);
        for packet in &packets {
            let blocks = match packet {
                RtcpPacket::SenderReport { info, blocks, .. } => {
                    self.last_sr = Some((rtcp::compact_ntp(info.ntp_timestamp), now));
                    blocks
                }
                RtcpPacket::ReceiverReport { blocks, .. } => blocks,
                RtcpPacket::Bye { .. } => {
                    self.stats.remote_bye = true;
                    continue;
                }
                _ => continue,
            };
            for block in blocks.iter().filter(|b| b.ssrc == self.config.ssrc) {
                if let Some(rtt) = rtcp::round_trip_time(arrival_ntp, block) {
                    self.stats.round_trip_time = Some(rtt);
                }
            }
        }
        self.advance(now);
    }

    /// Queues audio (8 kHz mono) to play after what is queued.
    pub fn play(&mut self, samples: Arc<[i16]>, now: Instant) {
        if self.closed {
            return;
        }
        self.advance(now);
        self.queue.push_back(samples);
        if !self.playing {
            self.playing = true;
            if self.can_send() {
                self.pacer.resume(now);
            } else {
                self.held_due = Some(now);
            }
        }
    }

    /// Drops what is queued; [`SessionEvent::PlaybackDone`] follows if
    /// anything was playing.
    pub fn stop_playback(&mut self) {
        self.queue.clear();
        self.queue_offset = 0;
        if self.playing {
            self.end_playback();
        }
    }

    fn end_playback(&mut self) {
        self.playing = false;
        self.held_due = None;
        self.pacer.pause();
        self.events.push_back(SessionEvent::PlaybackDone);
    }

    /// Starts recording what the peer says from now on; a recording in
    /// progress is dropped.
    pub fn start_recording(&mut self, limits: RecordLimits, now: Instant) {
        if self.closed {
            return;
        }
        self.advance(now);
        self.drop_recorder();
        let max_samples = samples_of_ms(limits.max_duration_ms).max(RECORD_FRAME_SAMPLES);
        self.recorder = Some(Recorder {
            silence_samples: samples_of_ms(limits.silence_ms),
            limits,
            samples: Vec::with_capacity(max_samples),
            max_samples,
            silent_run: 0,
            jitter: JitterBuffer::new(JitterConfig {
                clock_rate_hz: CLOCK_RATE_HZ,
                frame_samples: RECORD_FRAME_SAMPLES,
                ..JitterConfig::default()
            }),
            waiting_since: Some(now),
            next_poll: now + RECORD_POLL,
            digit_stop: None,
        });
    }

    /// Ends the recording in progress with what was received so far (the
    /// jitter buffer flushed), its end [`RecordingEnd::Stopped`] (or
    /// [`RecordingEnd::MaxDuration`] if the flushed audio filled it):
    /// `None` if there is none (it may have ended by itself: see
    /// [`SessionEvent::RecordingDone`]).
    pub fn stop_recording(&mut self, now: Instant) -> Option<Recording> {
        self.advance(now);
        self.take_recording(RecordingEnd::Stopped)
    }

    fn drop_recorder(&mut self) {
        if let Some(recorder) = self.recorder.take() {
            add_jitter_stats(&mut self.earlier_jitter, recorder.jitter.stats());
        }
    }

    /// Ends the recording and returns it; its end is `end` unless the
    /// flush filled it. A digit or a stop flushes the jitter buffer (what
    /// arrived before is kept, however long the buffer's delay held it);
    /// silence and the maximum end at the frame that met them, and what
    /// is buffered after that frame is not theirs.
    fn take_recording(&mut self, end: RecordingEnd) -> Option<Recording> {
        let mut recorder = self.recorder.take()?;
        let mut end = match (end, recorder.digit_stop) {
            (RecordingEnd::Stopped, Some(stop)) => RecordingEnd::Digit(stop.digit),
            _ => end,
        };
        let flush = matches!(end, RecordingEnd::Digit(_) | RecordingEnd::Stopped);
        while let Some(frame) = flush.then(|| recorder.jitter.flush()).flatten() {
            let room = recorder.max_samples.saturating_sub(recorder.samples.len());
            let taken = frame.samples.get(..room).unwrap_or(frame.samples);
            recorder.samples.extend_from_slice(taken);
            if recorder.samples.len() >= recorder.max_samples {
                end = RecordingEnd::MaxDuration;
                break;
            }
        }
        add_jitter_stats(&mut self.earlier_jitter, recorder.jitter.stats());
        Some(Recording {
            samples: recorder.samples,
            end,
        })
    }

    fn finish_recording(&mut self, end: RecordingEnd) {
        if let Some(recording) = self.take_recording(end) {
            self.events
                .push_back(SessionEvent::RecordingDone(recording));
        }
    }

    /// Runs the timers due at `now`: the recording's playout, lost DTMF
    /// ends, the RTP timeout, unsent playback while held.
    fn advance(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        if self.dtmf_deadline.is_some_and(|deadline| now >= deadline) {
            self.dtmf_deadline = None;
        }
        while let Some(event) = self.dtmf.poll(now) {
            self.on_dtmf(event, now);
        }
        if let Some(recorder) = self.recorder.as_mut() {
            if let Some(end) = drain(recorder, now) {
                self.finish_recording(end);
            }
        }
        if self.expects_rtp() && now >= self.last_rtp_at + self.config.rtp_timeout {
            self.timeout_fired = true;
            self.events.push_back(SessionEvent::RtpTimeout);
        }
        if self.playing && !self.can_send() {
            self.play_held(now);
        }
    }

    /// While the peer does not take our audio, queued frames play out at
    /// the frame clock, unsent.
    fn play_held(&mut self, now: Instant) {
        let ptime = Duration::from_millis(u64::from(self.config.ptime_ms.max(1)));
        if !self.pacer.is_paused() {
            self.held_due = Some(self.pacer.next_due());
            self.pacer.pause();
        }
        let mut due = self.held_due.unwrap_or(now);
        while self.playing && due <= now {
            self.next_frame();
            due += ptime;
        }
        self.held_due = self.playing.then_some(due);
    }

    /// Takes the next frame of queued audio into `self.frame` (the last
    /// one padded with silence); ends playback when the queue runs dry.
    fn next_frame(&mut self) {
        let frame_samples = samples_of_ms(self.config.ptime_ms.max(1)).max(1);
        self.frame.clear();
        while self.frame.len() < frame_samples {
            let Some(front) = self.queue.front() else {
                break;
            };
            let rest = front.get(self.queue_offset..).unwrap_or_default();
            let wanted = frame_samples - self.frame.len();
            let taken = rest.get(..wanted.min(rest.len())).unwrap_or_default();
            self.frame.extend_from_slice(taken);
            self.queue_offset += taken.len();
            if self.queue_offset >= front.len() {
                self.queue.pop_front();
                self.queue_offset = 0;
            }
        }
        self.frame.resize(frame_samples, 0);
        if self.queue.is_empty() {
            self.end_playback();
        }
    }

    /// The next datagram to send, written into `out` (cleared first), and
    /// where to send it: call until `None`.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Option<(SocketAddr, Packet)> {
        out.clear();
        if self.closed {
            return None;
        }
        self.advance(now);
        if self.playing && self.can_send() {
            if self.pacer.is_paused() {
                // The hold ended while a prompt was queued.
                self.held_due = None;
                self.pacer.resume(now);
            }
            if let (Some(slot), Some(target)) = (self.pacer.due(now), self.rtp_target()) {
                self.next_frame();
                self.encoded.clear();
                g711::encode_into(self.law, &self.frame, &mut self.encoded);
                let header = RtpHeader {
                    payload_type: self.audio.payload_type,
                    marker: slot.marker,
                    sequence: slot.sequence,
                    timestamp: slot.timestamp,
                    ssrc: self.config.ssrc,
                };
                rtp::write_packet(&header, &self.encoded, out);
                self.send_stats.on_sent(self.encoded.len());
                self.stats.tx_packets += 1;
                self.stats.tx_octets += self.encoded.len() as u64;
                self.last_sent = Some((slot.timestamp, now));
                self.sent_since_report = true;
                return Some((target, Packet::Rtp));
            }
        }
        if now >= self.next_report_at {
            self.next_report_at = now + self.report_interval();
            if let Some(target) = self.rtcp_target() {
                self.write_report(now, out);
                self.stats.rtcp_sent += 1;
                return Some((target, Packet::Rtcp));
            }
        }
        None
    }

    fn write_report(&mut self, now: Instant, out: &mut Vec<u8>) {
        let (last_sr, delay) = match self.last_sr {
            Some((lsr, at)) => (
                lsr,
                rtcp::delay_since_last_sr(now.saturating_duration_since(at)),
            ),
            None => (0, 0),
        };
        let block = self.receive_stats.report_block(last_sr, delay);
        let blocks = block.as_slice();
        if std::mem::take(&mut self.sent_since_report) {
            let rtp_timestamp = match self.last_sent {
                Some((timestamp, at)) => {
                    let elapsed = now.saturating_duration_since(at);
                    let units = elapsed.as_nanos() * u128::from(CLOCK_RATE_HZ) / 1_000_000_000;
                    timestamp.wrapping_add(units as u32)
                }
                None => self.config.first_timestamp,
            };
            let info = SenderInfo::from_stats(self.ntp_at(now), rtp_timestamp, &self.send_stats);
            rtcp::write_sender_report(self.config.ssrc, &info, blocks, &self.config.cname, out);
        } else {
            rtcp::write_receiver_report(self.config.ssrc, blocks, &self.config.cname, out);
        }
    }

    /// The NTP timestamp of `now`, from the wall clock at the start.
    fn ntp_at(&self, now: Instant) -> u64 {
        let since_start = now.saturating_duration_since(self.started_at);
        rtcp::ntp_timestamp(self.config.wall_clock_at_start + since_start)
    }

    /// The next report interval, randomised by a xorshift64 whose only
    /// seed is our SSRC (RFC 3550 s.6.3.1 wants the randomness; the
    /// session takes none from outside).
    fn report_interval(&mut self) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let unit = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        rtcp::report_interval(0.5 + unit)
    }

    /// The next event, if any.
    pub fn poll_event(&mut self, now: Instant) -> Option<SessionEvent> {
        self.advance(now);
        self.events.pop_front()
    }

    /// When the session next needs [`MediaSession::poll_transmit`] and
    /// [`MediaSession::poll_event`] without any input: `None` once closed.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let mut deadline = self.next_report_at;
        let mut consider = |at: Option<Instant>| {
            if let Some(at) = at {
                deadline = deadline.min(at);
            }
        };
        if self.playing {
            consider(if self.can_send() {
                Some(self.pacer.next_due())
            } else {
                self.held_due
            });
        }
        consider(self.dtmf_deadline);
        if self.expects_rtp() {
            consider(Some(self.last_rtp_at + self.config.rtp_timeout));
        }
        if let Some(recorder) = &self.recorder {
            consider(Some(
                recorder
                    .digit_stop
                    .map_or(recorder.next_poll, |stop| stop.at),
            ));
        }
        Some(deadline)
    }

    /// The counters so far.
    pub fn stats(&self) -> SessionStats {
        let stream = self.receive_stats.stats();
        let mut jitter = self.earlier_jitter;
        if let Some(recorder) = &self.recorder {
            add_jitter_stats(&mut jitter, recorder.jitter.stats());
        }
        if let Some(mixing) = &self.mixing {
            add_jitter_stats(&mut jitter, mixing.stats());
        }
        SessionStats {
            rx_lost: stream.lost,
            rx_jitter_ms: stream.jitter_ms,
            rx_duplicates: stream.duplicates,
            late_packets: jitter.late_packets,
            concealed_samples: jitter.samples_concealed,
            concealed_frames: jitter.frames_concealed,
            recorded_frames: jitter.frames_played,
            ..self.stats
        }
    }

    /// Ends the session: the RTCP BYE to send (RFC 3550 s.6.6) is written
    /// into `out` (cleared first) with where to send it. Afterwards the
    /// session sends nothing and ignores its input; a recording in
    /// progress is dropped (stop it first to keep it).
    pub fn close(&mut self, out: &mut Vec<u8>) -> Option<SocketAddr> {
        out.clear();
        if self.closed {
            return None;
        }
        self.closed = true;
        self.queue.clear();
        self.playing = false;
        self.drop_recorder();
        let target = self.rtcp_target()?;
        rtcp::write_bye(self.config.ssrc, None, &self.config.cname, out);
        Some(target)
    }

    /// What was agreed for the stream, as last updated.
    pub fn audio(&self) -> &NegotiatedAudio {
        &self.audio
    }
}

/// Drains the recording's jitter buffer up to `now`; says whether that
/// ends the recording.
fn drain(recorder: &mut Recorder, now: Instant) -> Option<RecordingEnd> {
    if let Some(stop) = recorder.digit_stop {
        // No playout meanwhile: its clock would run past the digit into
        // silence; the flush at the end takes what arrived before it.
        return (now >= stop.at).then_some(RecordingEnd::Digit(stop.digit));
    }
    if now >= recorder.next_poll {
        recorder.next_poll = now + RECORD_POLL;
    }
    if let Some(since) = recorder.waiting_since {
        // Nothing received yet: wall time is all there is.
        let waited = now.saturating_duration_since(since);
        let waited_ms = u32::try_from(waited.as_millis()).unwrap_or(u32::MAX);
        if recorder.limits.silence_ms > 0 && waited_ms >= recorder.limits.silence_ms {
            return Some(RecordingEnd::Silence);
        }
        if waited_ms >= recorder.limits.max_duration_ms.max(1) {
            return Some(RecordingEnd::MaxDuration);
        }
        return None;
    }
    while let Some(frame) = recorder.jitter.pop(now) {
        let room = recorder.max_samples.saturating_sub(recorder.samples.len());
        let taken = frame.samples.get(..room).unwrap_or(frame.samples);
        recorder.samples.extend_from_slice(taken);
        let (appended, silent) = (taken.len(), is_silent(taken));
        if let Some(end) = recorder.after_append(appended, silent) {
            return Some(end);
        }
    }
    None
}

impl Recorder {
    /// Accounts for `appended` samples just recorded.
    fn after_append(&mut self, appended: usize, silent: bool) -> Option<RecordingEnd> {
        if silent {
            self.silent_run += appended;
        } else {
            self.silent_run = 0;
        }
        if self.silence_samples > 0 && self.silent_run >= self.silence_samples {
            let keep = self.samples.len().saturating_sub(self.silent_run);
            self.samples.truncate(keep);
            return Some(RecordingEnd::Silence);
        }
        (self.samples.len() >= self.max_samples).then_some(RecordingEnd::MaxDuration)
    }
}

fn add_jitter_stats(total: &mut JitterStats, more: JitterStats) {
    total.frames_played += more.frames_played;
    total.samples_concealed += more.samples_concealed;
    total.frames_concealed += more.frames_concealed;
    total.samples_silent += more.samples_silent;
    total.late_packets += more.late_packets;
    total.duplicate_packets += more.duplicate_packets;
    total.resets += more.resets;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdp::Direction;

    fn audio() -> NegotiatedAudio {
        NegotiatedAudio {
            remote_address: "10.0.0.1".parse().unwrap(),
            remote_rtp_port: 4000,
            remote_rtcp_port: 4001,
            codec: Codec::Pcma,
            payload_type: 8,
            telephone_event_payload_type: None,
            comfort_noise_payload_type: None,
            remote_ptime_ms: None,
            direction: Direction::SendRecv,
            remote_on_hold: false,
        }
    }

    #[test]
    fn silence_is_an_rms_under_the_threshold() {
        assert!(is_silent(&[]));
        assert!(is_silent(&[99; 160]));
        assert!(!is_silent(&[100; 160]));
        assert!(!is_silent(&[0, 0, 0, 400]));
    }

    #[test]
    fn audio_from_the_digit_on_is_not_taken_across_a_wrap() {
        let t0 = Instant::now();
        let mut session = MediaSession::new(SessionConfig::new(1, 0, 0, "x"), audio(), t0);
        session.start_recording(
            RecordLimits {
                max_duration_ms: 1000,
                silence_ms: 0,
                stop_digits: "#".into(),
            },
            t0,
        );
        let recorder = session.recorder.as_mut().unwrap();
        assert!(recorder.takes(5));
        recorder.digit_stop = Some(DigitStop {
            digit: '#',
            rtp_timestamp: 100,
            at: t0,
        });
        assert!(recorder.takes(u32::MAX - 60));
        assert!(recorder.takes(99));
        assert!(!recorder.takes(100));
        assert!(!recorder.takes(260));
    }

    #[test]
    fn report_intervals_are_random_within_the_rfc_bounds_and_repeatable() {
        let t0 = Instant::now();
        let mut one = MediaSession::new(SessionConfig::new(7, 0, 0, "x"), audio(), t0);
        let mut two = MediaSession::new(SessionConfig::new(7, 0, 0, "x"), audio(), t0);
        let intervals: Vec<Duration> = (0..100).map(|_| one.report_interval()).collect();
        assert!(intervals
            .iter()
            .all(|i| (2.05..=6.17).contains(&i.as_secs_f64())));
        assert!(intervals.iter().any(|i| i.as_secs_f64() < 3.0));
        assert!(intervals.iter().any(|i| i.as_secs_f64() > 5.0));
        assert_eq!(intervals[0], two.report_interval());
    }

    #[test]
    fn a_law_is_sent_with_the_negotiated_payload_type() {
        let t0 = Instant::now();
        let mut session = MediaSession::new(SessionConfig::new(9, 0, 0, "x"), audio(), t0);
        session.play(vec![1000; 160].into(), t0);
        let mut out = Vec::new();
        let (to, kind) = session.poll_transmit(t0, &mut out).unwrap();
        assert_eq!((to, kind), ("10.0.0.1:4000".parse().unwrap(), Packet::Rtp));
        let packet = RtpPacket::parse(&out).unwrap();
        assert_eq!(packet.payload_type(), 8);
        assert!(packet
            .payload()
            .iter()
            .all(|&code| code == Law::A.encode(1000)));
        assert_eq!(session.poll_event(t0), Some(SessionEvent::PlaybackDone));
    }
}
