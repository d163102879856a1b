//! The runtime over real UDP on 127.0.0.1, with a fake phone (tokio
//! sockets): port pairs, recording to a digit, paced playback, foreign
//! sources, the RTP timeout, and that sessions end and free their ports
//! however they end.
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use dialtone_media::dtmf::{DtmfEvent, TelephoneEvent};
use dialtone_media::g711::{self, Law};
use dialtone_media::rtcp::{self, RtcpPacket};
use dialtone_media::rtp::{write_packet, RtpHeader, RtpPacket};
use dialtone_media::runtime::{MediaPorts, MediaRuntime, RuntimeConfig};
use dialtone_media::sdp::{Codec, Direction, NegotiatedAudio};
use dialtone_media::session::{RecordLimits, RecordingEnd, SessionEvent};
use dialtone_media::tone;
use tokio::net::UdpSocket;
use tokio::time::{sleep, sleep_until, timeout, Instant};

const MS: Duration = Duration::from_millis(1);

fn localhost() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

fn runtime(ports: RangeInclusive<u16>, rtp_timeout: Duration) -> MediaRuntime {
    MediaRuntime::new(RuntimeConfig {
        address: localhost(),
        advertised: None,
        ports,
        rtp_timeout,
    })
    .unwrap()
}

async fn within<F: std::future::Future>(seconds: u64, future: F) -> F::Output {
    timeout(Duration::from_secs(seconds), future)
        .await
        .expect("timed out")
}

/// A phone: its RTP and RTCP sockets, and its outgoing stream's state.
struct Phone {
    rtp: UdpSocket,
    rtcp: UdpSocket,
    sequence: u16,
    timestamp: u32,
}

impl Phone {
    async fn new() -> Phone {
        Phone {
            rtp: UdpSocket::bind((localhost(), 0)).await.unwrap(),
            rtcp: UdpSocket::bind((localhost(), 0)).await.unwrap(),
            sequence: 300,
            timestamp: 16_000,
        }
    }

    /// What the phone's SDP said: send to its sockets.
    fn audio(&self) -> NegotiatedAudio {
        let rtp = self.rtp.local_addr().unwrap();
        NegotiatedAudio {
            remote_address: rtp.ip(),
            remote_rtp_port: rtp.port(),
            remote_rtcp_port: self.rtcp.local_addr().unwrap().port(),
            codec: Codec::Pcmu,
            payload_type: 0,
            telephone_event_payload_type: Some(101),
            comfort_noise_payload_type: None,
            remote_ptime_ms: Some(20),
            direction: Direction::SendRecv,
            remote_on_hold: false,
        }
    }

    fn packet(&mut self, payload_type: u8, marker: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let header = RtpHeader {
            payload_type,
            marker,
            sequence: self.sequence,
            timestamp: self.timestamp,
            ssrc: 0xFEED,
        };
        write_packet(&header, payload, &mut out);
        self.sequence = self.sequence.wrapping_add(1);
        out
    }

    fn tone_packet(&mut self, frame: usize) -> Vec<u8> {
        let samples: Vec<i16> = (frame * 160..(frame + 1) * 160)
            .map(|n| {
                let phase = 2.0 * std::f64::consts::PI * 440.0 * n as f64 / 8000.0;
                (8000.0 * phase.sin()).round() as i16
            })
            .collect();
        let mut payload = Vec::new();
        g711::encode_into(Law::Mu, &samples, &mut payload);
        let packet = self.packet(0, frame == 0, &payload);
        self.timestamp = self.timestamp.wrapping_add(160);
        packet
    }

    /// Sends `frames` 20 ms frames of 440 Hz to `to`, on a fixed schedule.
    async fn send_tone(&mut self, to: SocketAddr, frames: usize) {
        let start = Instant::now();
        for frame in 0..frames {
            sleep_until(start + 20 * MS * frame as u32).await;
            let packet = self.tone_packet(frame);
            self.rtp.send_to(&packet, to).await.unwrap();
        }
    }

    /// Sends one digit (100 ms: five packets, then the end twice more).
    async fn send_digit(&mut self, to: SocketAddr, event: u8) {
        for index in 0..7u16 {
            let payload_event = TelephoneEvent {
                event,
                end: index >= 4,
                volume: 10,
                duration: (index.min(4) + 1) * 160,
            };
            let mut payload = Vec::new();
            payload_event.write(&mut payload);
            let packet = self.packet(101, index == 0, &payload);
            self.rtp.send_to(&packet, to).await.unwrap();
            sleep(20 * MS).await;
        }
        self.timestamp = self.timestamp.wrapping_add(800);
    }
}

fn session_rtp(ports: &MediaPorts) -> SocketAddr {
    SocketAddr::new(ports.address, ports.rtp_port)
}

#[tokio::test]
async fn allocate_binds_even_odd_pairs_round_robin() {
    let media = runtime(41_000..=41_099, Duration::from_secs(30));
    let first = media.allocate().await.unwrap();
    let second = media.allocate().await.unwrap();
    for ports in [&first, &second] {
        assert_eq!(ports.rtp_port % 2, 0);
        assert!((41_000..=41_098).contains(&ports.rtp_port));
        assert_eq!(ports.rtcp_port(), ports.rtp_port + 1);
        assert_eq!(ports.address, localhost());
        // Both are really bound: binding them again fails.
        assert!(std::net::UdpSocket::bind((localhost(), ports.rtp_port)).is_err());
        assert!(std::net::UdpSocket::bind((localhost(), ports.rtcp_port())).is_err());
    }
    assert_ne!(first.rtp_port, second.rtp_port);
    let local = first.local_media(7, 8);
    assert_eq!(
        (local.address, local.rtp_port),
        (localhost(), first.rtp_port)
    );

    let advertised: IpAddr = "192.0.2.10".parse().unwrap();
    let media = MediaRuntime::new(RuntimeConfig {
        address: "0.0.0.0".parse().unwrap(),
        advertised: Some(advertised),
        ports: 41_100..=41_199,
        rtp_timeout: Duration::from_secs(30),
    })
    .unwrap();
    assert_eq!(media.allocate().await.unwrap().address, advertised);
}

#[test]
fn bad_configurations_are_refused_with_what_to_change() {
    let refused = |config: RuntimeConfig| MediaRuntime::new(config).err().unwrap().to_string();
    let odd = refused(RuntimeConfig {
        ports: 20_001..=30_000,
        ..RuntimeConfig::default()
    });
    assert!(odd.contains("even"), "{odd}");
    let single = refused(RuntimeConfig {
        ports: 20_000..=20_000,
        ..RuntimeConfig::default()
    });
    assert!(single.contains("at least one"), "{single}");
    let unspecified = refused(RuntimeConfig {
        address: "0.0.0.0".parse().unwrap(),
        ..RuntimeConfig::default()
    });
    assert!(unspecified.contains("advertised"), "{unspecified}");
}

#[tokio::test]
async fn a_recording_of_two_seconds_of_tone_ends_at_the_digit() {
    let media = runtime(41_200..=41_299, Duration::from_secs(30));
    let ports = media.allocate().await.unwrap();
    let to = session_rtp(&ports);
    let mut phone = Phone::new().await;
    let mut handle = media.start(ports, phone.audio());
    handle.start_recording(RecordLimits {
        max_duration_ms: 10_000,
        silence_ms: 0,
        stop_digits: "#".into(),
    });
    within(10, async {
        phone.send_tone(to, 100).await;
        phone.send_digit(to, 11).await;
    })
    .await;
    let mut digits = Vec::new();
    let recording = within(5, async {
        loop {
            match handle.next_event().await.expect("the session ended") {
                SessionEvent::RecordingDone(recording) => break recording,
                SessionEvent::Dtmf(digit) => digits.push(digit),
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(recording.end, RecordingEnd::Digit('#'));
    assert_eq!(digits, [DtmfEvent::Began { digit: '#' }]);
    let duration_ms = recording.duration_ms();
    assert!((1980..=2100).contains(&duration_ms), "{duration_ms} ms");
    let tone_ms = tone::longest_tone_ms(&recording.samples, 440.0, 8000, 20);
    assert!(tone_ms >= 1900, "440 Hz for {tone_ms} ms");
    let stats = handle.stats().await.unwrap();
    assert_eq!(stats.rx_packets, 107);
    assert_eq!(stats.dtmf_events, 1);
    assert_eq!(stats.latched, Some(phone.rtp.local_addr().unwrap()));
    handle.close().await;
    assert_eq!(media.live_sessions(), 0);
}

#[tokio::test]
async fn a_second_of_playback_reaches_the_phone_as_fifty_paced_packets() {
    let media = runtime(41_300..=41_399, Duration::from_secs(30));
    let ports = media.allocate().await.unwrap();
    let rtp_port = ports.rtp_port;
    let phone = Phone::new().await;
    let mut handle = media.start(ports, phone.audio());
    handle.play(tone::sine(440.0, 8000, 1000, 8000).into());
    let mut arrivals = Vec::new();
    let mut buffer = [0u8; 2048];
    within(5, async {
        while arrivals.len() < 50 {
            let (len, from) = phone.rtp.recv_from(&mut buffer).await.unwrap();
            assert_eq!(from, SocketAddr::new(localhost(), rtp_port));
            let packet = RtpPacket::parse(&buffer[..len]).unwrap();
            arrivals.push((
                Instant::now(),
                packet.sequence(),
                packet.timestamp(),
                packet.marker(),
                packet.payload().len(),
            ));
        }
    })
    .await;
    let event = within(2, handle.next_event()).await;
    assert_eq!(event, Some(SessionEvent::PlaybackDone));
    for (index, window) in arrivals.windows(2).enumerate() {
        let (_, sequence, timestamp, marker, len) = window[1];
        assert_eq!(
            sequence,
            window[0].1.wrapping_add(1),
            "packet {}",
            index + 1
        );
        assert_eq!(timestamp, window[0].2.wrapping_add(160));
        assert!(!marker);
        assert_eq!(len, 160);
    }
    assert!(arrivals[0].3, "marker on the first packet");
    let span = arrivals[49].0 - arrivals[0].0;
    assert!(
        span >= 850 * MS && span <= 1150 * MS,
        "50 packets over {span:?}, expected 980 ms"
    );
    // Nothing more: the session does not send while idle.
    assert!(timeout(200 * MS, phone.rtp.recv_from(&mut buffer))
        .await
        .is_err());
    let stats = handle.stats().await.unwrap();
    assert_eq!((stats.tx_packets, stats.tx_octets), (50, 8000));
}

#[tokio::test]
async fn packets_from_a_third_address_are_ignored_and_counted() {
    let media = runtime(41_400..=41_499, Duration::from_secs(30));
    let ports = media.allocate().await.unwrap();
    let to = session_rtp(&ports);
    let mut phone = Phone::new().await;
    let handle = media.start(ports, phone.audio());
    within(5, phone.send_tone(to, 5)).await;
    sleep(50 * MS).await;
    let stranger = UdpSocket::bind((localhost(), 0)).await.unwrap();
    for frame in 0..10 {
        let packet = phone.tone_packet(frame);
        stranger.send_to(&packet, to).await.unwrap();
    }
    sleep(100 * MS).await;
    let stats = handle.stats().await.unwrap();
    assert_eq!(stats.latched, Some(phone.rtp.local_addr().unwrap()));
    assert_eq!(stats.rx_packets, 5);
    assert_eq!(stats.foreign_packets, 10);
    // Our audio still goes to the phone, not the stranger.
    handle.play(vec![0; 160].into());
    let mut buffer = [0u8; 2048];
    within(2, phone.rtp.recv_from(&mut buffer)).await.unwrap();
    assert!(timeout(100 * MS, stranger.recv_from(&mut buffer))
        .await
        .is_err());
}

#[tokio::test]
async fn the_rtp_timeout_ends_the_session_and_frees_it() {
    let media = runtime(41_500..=41_599, 300 * MS);
    let ports = media.allocate().await.unwrap();
    let phone = Phone::new().await;
    let started = Instant::now();
    let mut handle = media.start(ports, phone.audio());
    assert_eq!(media.live_sessions(), 1);
    let event = within(3, handle.next_event()).await;
    assert_eq!(event, Some(SessionEvent::RtpTimeout));
    let waited = started.elapsed();
    assert!(waited >= 300 * MS && waited < 1000 * MS, "{waited:?}");
    assert_eq!(within(2, handle.next_event()).await, None);
    assert_eq!(media.live_sessions(), 0);
    assert!(handle.stats().await.is_none());
    // Its BYE reached the phone's RTCP socket.
    let mut buffer = [0u8; 2048];
    let (len, _) = within(2, phone.rtcp.recv_from(&mut buffer)).await.unwrap();
    let packets = rtcp::parse_compound(&buffer[..len]).unwrap();
    assert!(packets.iter().any(|p| matches!(p, RtcpPacket::Bye { .. })));
}

/// A range of exactly two pairs, all four ports free: found by binding
/// (other processes may hold ports), never assumed.
async fn tiny_runtime() -> (MediaRuntime, MediaPorts, MediaPorts) {
    for start in (42_000..43_000).step_by(4) {
        let media = runtime(start..=start + 3, Duration::from_secs(30));
        let (Ok(first), Ok(second)) = (media.allocate().await, media.allocate().await) else {
            continue;
        };
        return (media, first, second);
    }
    panic!("no four free ports in 42000..43000");
}

#[tokio::test]
async fn a_range_of_four_ports_holds_two_sessions() {
    let (media, first, second) = tiny_runtime().await;
    let mut pair_ports = [first.rtp_port, second.rtp_port];
    pair_ports.sort();
    assert_eq!(pair_ports[1], pair_ports[0] + 2);
    let error = media.allocate().await.unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(&error, dialtone_media::Error::Io(io) if io.kind() == std::io::ErrorKind::AddrInUse),
        "{error:?}"
    );
    assert!(message.contains("no free RTP/RTCP port pair"), "{message}");
    drop(first);
    // Freed by dropping the sockets: nothing to release by hand.
    let again = media.allocate().await.unwrap();
    drop((again, second));
}

#[tokio::test]
async fn dropping_or_closing_the_handle_ends_the_session_and_frees_its_ports() {
    let (media, first, second) = tiny_runtime().await;
    let phone = Phone::new().await;
    let dropped = media.start(first, phone.audio());
    let closed = media.start(second, phone.audio());
    assert_eq!(media.live_sessions(), 2);
    assert!(media.allocate().await.is_err());
    drop(dropped);
    within(2, closed.close()).await;
    within(2, async {
        while media.live_sessions() > 0 {
            sleep(5 * MS).await;
        }
    })
    .await;
    let first = media.allocate().await.unwrap();
    let second = media.allocate().await.unwrap();
    assert_ne!(first.rtp_port, second.rtp_port);
}

#[tokio::test]
async fn shutdown_ends_every_session() {
    let media = runtime(41_600..=41_699, Duration::from_secs(30));
    let phone = Phone::new().await;
    let mut handles = Vec::new();
    for _ in 0..3 {
        let ports = media.allocate().await.unwrap();
        handles.push(media.start(ports, phone.audio()));
    }
    assert_eq!(media.live_sessions(), 3);
    within(2, media.shutdown()).await;
    assert_eq!(media.live_sessions(), 0);
    for handle in &mut handles {
        assert_eq!(within(2, handle.next_event()).await, None);
    }
    // A session started after the shutdown ends at once.
    let ports = media.allocate().await.unwrap();
    let mut late = media.start(ports, phone.audio());
    assert_eq!(within(2, late.next_event()).await, None);
    assert_eq!(media.live_sessions(), 0);
}
