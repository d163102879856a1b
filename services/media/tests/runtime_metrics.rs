//! What the runtime counts for the metrics endpoint, over real UDP on
//! 127.0.0.1: a phone whose stream has gaps and a straggler is recorded,
//! and the counters say how many packets were lost, came too late, and
//! how many frames were concealed; every session tick's lateness is in
//! the histogram. A conference room counts the same under
//! `dialtone_conference_*`, and its clock's ticks, the RTP it sends, and
//! the live rooms and participants.
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dialtone_media::g711::{self, Law};
use dialtone_media::room::{RoomConfig, RoomHandle};
use dialtone_media::rtp::{write_packet, RtpHeader};
use dialtone_media::runtime::{MediaRuntime, RuntimeConfig, LATENESS_BOUNDS_US};
use dialtone_media::sdp::{
    self, Capabilities, Codec, Direction, LocalMedia, NegotiatedAudio, SessionDescription,
};
use dialtone_media::session::{RecordLimits, RecordingEnd};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use tokio::net::UdpSocket;
use tokio::time::{sleep_until, timeout, Instant};

const MS: Duration = Duration::from_millis(1);

/// Counters and gauges by name (labels as `name{k=v}`), readable by the
/// test while the runtime's tasks update them on any thread.
#[derive(Default)]
struct TestRecorder {
    values: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl TestRecorder {
    fn slot(&self, key: &Key) -> Arc<AtomicU64> {
        let mut name = key.name().to_owned();
        for label in key.labels() {
            name.push_str(&format!("{{{}={}}}", label.key(), label.value()));
        }
        self.values.lock().unwrap().entry(name).or_default().clone()
    }

    fn counter(&self, name: &str) -> u64 {
        let values = self.values.lock().unwrap();
        let value = values
            .get(name)
            .unwrap_or_else(|| panic!("{name} not registered"));
        value.load(Ordering::SeqCst)
    }

    fn gauge(&self, name: &str) -> f64 {
        f64::from_bits(self.counter(name))
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.slot(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.slot(key))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

fn localhost() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

fn tone_payload(frame: usize) -> Vec<u8> {
    let samples: Vec<i16> = (frame * 160..(frame + 1) * 160)
        .map(|n| {
            let phase = 2.0 * std::f64::consts::PI * 440.0 * n as f64 / 8000.0;
            (8000.0 * phase.sin()).round() as i16
        })
        .collect();
    let mut payload = Vec::new();
    g711::encode_into(Law::Mu, &samples, &mut payload);
    payload
}

fn tone_packet(frame: usize) -> Vec<u8> {
    tone_packet_from(0xBEEF, frame)
}

fn tone_packet_from(ssrc: u32, frame: usize) -> Vec<u8> {
    let header = RtpHeader {
        payload_type: 0,
        marker: frame == 0,
        sequence: 1000 + frame as u16,
        timestamp: 40_000 + 160 * frame as u32,
        ssrc,
    };
    let mut out = Vec::new();
    write_packet(&header, &tone_payload(frame), &mut out);
    out
}

fn audio_of(phone: &UdpSocket) -> NegotiatedAudio {
    let rtp = phone.local_addr().unwrap();
    NegotiatedAudio {
        remote_address: rtp.ip(),
        remote_rtp_port: rtp.port(),
        remote_rtcp_port: rtp.port() + 1,
        codec: Codec::Pcmu,
        payload_type: 0,
        telephone_event_payload_type: None,
        comfort_noise_payload_type: None,
        remote_ptime_ms: Some(20),
        direction: Direction::SendRecv,
        remote_on_hold: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_lateness_concealment_and_tick_lateness_reach_the_counters() {
    let recorder = Arc::new(TestRecorder::default());
    let media = metrics::with_local_recorder(recorder.as_ref(), || {
        MediaRuntime::new(RuntimeConfig {
            address: localhost(),
            advertised: None,
            ports: 41_900..=41_999,
            rtp_timeout: Duration::from_secs(30),
        })
        .unwrap()
    });
    let ports = media.allocate().await.unwrap();
    let to = SocketAddr::new(ports.address, ports.rtp_port);
    let phone = UdpSocket::bind((localhost(), 0)).await.unwrap();
    let handle = media.start(ports, audio_of(&phone));
    handle.start_recording(RecordLimits {
        max_duration_ms: 10_000,
        silence_ms: 0,
        stop_digits: String::new(),
    });

    // 100 frames (2 s) at 20 ms: frames 30, 31 and 80 never sent (lost;
    // each is concealed, as the frames after it arrive within the jitter
    // buffer's 60 ms), frame 60 sent 200 ms late, after frame 70 (far
    // past those 60 ms: too late for the recording).
    const FRAMES: usize = 100;
    const LOST: [usize; 3] = [30, 31, 80];
    const STRAGGLER: usize = 60;
    timeout(Duration::from_secs(10), async {
        let start = Instant::now();
        for frame in 0..FRAMES {
            sleep_until(start + 20 * MS * frame as u32).await;
            if LOST.contains(&frame) || frame == STRAGGLER {
                continue;
            }
            phone.send_to(&tone_packet(frame), to).await.unwrap();
            if frame == STRAGGLER + 10 {
                phone.send_to(&tone_packet(STRAGGLER), to).await.unwrap();
            }
        }
        // The last frame is in (stop comes before a packet waiting with
        // it), and the silent frame after it is not due yet (60 ms after
        // its time): the stop flushes exactly the 100 frames.
        sleep_until(start + 20 * MS * (FRAMES as u32 - 1) + 20 * MS).await;
    })
    .await
    .expect("the phone took too long");
    let recording = handle.stop_recording().await.expect("a recording");
    assert_eq!(recording.end, RecordingEnd::Stopped);
    assert_eq!(recording.samples.len(), FRAMES * 160);
    handle.close().await;
    assert_eq!(media.live_sessions(), 0);

    // The session published at its end: everything is in the counters.
    let counter = |name: &str| recorder.counter(name);
    assert_eq!(
        counter("dialtone_media_rtp_packets_received_total"),
        (FRAMES - LOST.len()) as u64
    );
    assert_eq!(counter("dialtone_media_rtp_packets_lost_total"), 3);
    assert_eq!(counter("dialtone_media_late_packets_total"), 1);
    // The three lost frames and the straggler's, each played as silence.
    assert_eq!(counter("dialtone_media_concealed_frames_total"), 4);
    assert_eq!(
        counter("dialtone_media_recorded_frames_total"),
        FRAMES as u64
    );

    // The recording's playout ticks every 20 ms for about 2.1 s: each one
    // that came due was measured once.
    let ticks = counter("dialtone_media_tick_lateness_us_count");
    assert!((50..=200).contains(&ticks), "{ticks} ticks");
    let mut previous = 0;
    for bound in LATENESS_BOUNDS_US {
        let cumulative = counter(&format!(
            "dialtone_media_tick_lateness_us_bucket{{le={bound}}}"
        ));
        assert!(cumulative >= previous, "buckets are cumulative");
        previous = cumulative;
    }
    assert_eq!(
        counter("dialtone_media_tick_lateness_us_bucket{le=+Inf}"),
        ticks
    );
    // An idle test machine runs a tick within tokio's 1-2 ms timer
    // resolution nearly always; a loaded one may not, hence the slack.
    let within_20_ms = counter("dialtone_media_tick_lateness_us_bucket{le=20000}");
    assert!(
        within_20_ms * 10 >= ticks * 9,
        "{within_20_ms} of {ticks} ticks within 20 ms"
    );
    let sum_us = counter("dialtone_media_tick_lateness_us_sum");
    let max_us = recorder.gauge("dialtone_media_tick_lateness_max_us");
    assert!(max_us <= sum_us as f64, "max {max_us} µs, sum {sum_us} µs");
    assert!(sum_us <= ticks * 250_000, "{sum_us} µs over {ticks} ticks");
}

/// A phone's SDP offer for its RTP socket: µ-law at 20 ms.
fn offer_of(phone: &UdpSocket) -> SessionDescription {
    let caps = Capabilities {
        codecs: vec![Codec::Pcmu],
        telephone_event: true,
        ptime_ms: 20,
    };
    let local = LocalMedia {
        address: localhost(),
        rtp_port: phone.local_addr().unwrap().port(),
        session_id: 7,
        session_version: 1,
    };
    SessionDescription::parse(&sdp::offer(&caps, &local, Direction::SendRecv)).unwrap()
}

/// Waits (up to 5 s) until `read` gives `want`.
async fn until<T: PartialEq + std::fmt::Debug>(what: &str, want: T, read: impl Fn() -> T) {
    let give_up = Instant::now() + Duration::from_secs(5);
    loop {
        let value = read();
        if value == want {
            return;
        }
        assert!(Instant::now() < give_up, "{what}: {value:?}, not {want:?}");
        tokio::time::sleep(10 * MS).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_counts_its_clock_its_rtp_and_its_participants() {
    let recorder = Arc::new(TestRecorder::default());
    let media = metrics::with_local_recorder(recorder.as_ref(), || {
        MediaRuntime::new(RuntimeConfig {
            address: localhost(),
            advertised: None,
            ports: 41_800..=41_899,
            rtp_timeout: Duration::from_secs(30),
        })
        .unwrap()
    });
    let counter = |name: &str| recorder.counter(name);
    let gauge = |name: &str| recorder.gauge(name);
    let room = RoomHandle::start(&media, RoomConfig::default());
    assert_eq!(gauge("dialtone_conference_rooms_live"), 1.0);

    // Two phones talk for 2 s; the first never sends frames 30 and 80
    // (lost, and concealed: the frames after each arrive within the
    // jitter buffer's 60 ms). Each reads what the room sends it.
    const FRAMES: usize = 100;
    const LOST: [usize; 2] = [30, 80];
    let phones = [
        Arc::new(UdpSocket::bind((localhost(), 0)).await.unwrap()),
        Arc::new(UdpSocket::bind((localhost(), 0)).await.unwrap()),
    ];
    let mut joined = Vec::new();
    for phone in &phones {
        joined.push(room.join(&offer_of(phone)).await.unwrap());
    }
    assert_eq!(gauge("dialtone_conference_media_participants"), 2.0);
    let heard = Arc::new(AtomicU64::new(0));
    let listeners: Vec<_> = phones
        .iter()
        .map(|phone| {
            let (phone, heard) = (phone.clone(), heard.clone());
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 2048];
                while phone.recv_from(&mut buffer).await.is_ok() {
                    heard.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    timeout(Duration::from_secs(10), async {
        let start = Instant::now();
        for frame in 0..FRAMES {
            sleep_until(start + 20 * MS * frame as u32).await;
            for (index, (phone, joined)) in phones.iter().zip(&joined).enumerate() {
                if index == 0 && LOST.contains(&frame) {
                    continue;
                }
                let to = SocketAddr::new(joined.local.address, joined.local.rtp_port);
                let packet = tone_packet_from(0xA000 + index as u32, frame);
                phone.send_to(&packet, to).await.unwrap();
            }
        }
        // The last frames are read and mixed.
        sleep_until(start + 20 * MS * (FRAMES as u32 + 5)).await;
    })
    .await
    .expect("the phones took too long");

    // The first phone leaves: its loss is published as it goes.
    room.leave(joined[0].participant);
    until("participants after one left", 1.0, || {
        gauge("dialtone_conference_media_participants")
    })
    .await;
    until("lost packets", 2, || {
        counter("dialtone_conference_rtp_packets_lost_total")
    })
    .await;
    room.close().await;
    assert_eq!(gauge("dialtone_conference_rooms_live"), 0.0);
    assert_eq!(gauge("dialtone_conference_media_participants"), 0.0);
    // What the room sent is all in the phones' buffers by now.
    tokio::time::sleep(50 * MS).await;
    for listener in listeners {
        listener.abort();
    }
    let mut buffer = vec![0u8; 2048];
    for phone in &phones {
        while phone.try_recv_from(&mut buffer).is_ok() {
            heard.fetch_add(1, Ordering::SeqCst);
        }
    }

    // The room published at its end: everything is in the counters.
    assert_eq!(
        counter("dialtone_conference_rtp_packets_received_total"),
        (2 * FRAMES - LOST.len()) as u64
    );
    assert_eq!(counter("dialtone_conference_foreign_packets_total"), 0);
    assert_eq!(counter("dialtone_conference_rtp_packets_lost_total"), 2);
    assert_eq!(counter("dialtone_conference_late_packets_total"), 0);
    assert_eq!(counter("dialtone_conference_concealed_frames_total"), 2);
    // Each phone's 100 frames were mixed (and silent frames after them
    // until it left).
    let mixed = counter("dialtone_conference_mixed_frames_total");
    assert!(mixed >= 2 * FRAMES as u64, "{mixed} frames mixed");
    // The room sent each phone a frame every tick from its join: every
    // one reached it, none was dropped.
    let sent = counter("dialtone_conference_rtp_packets_sent_total");
    assert_eq!(sent, heard.load(Ordering::SeqCst));
    assert!(sent >= 2 * FRAMES as u64, "{sent} packets sent");
    assert_eq!(counter("dialtone_conference_rtp_send_dropped_total"), 0);
    // The sessions' counters are not the room's.
    assert_eq!(counter("dialtone_media_rtp_packets_received_total"), 0);

    // The clock ticked every 20 ms for about 2.2 s, each tick measured.
    let ticks = counter("dialtone_conference_tick_lateness_us_count");
    assert!((100..=200).contains(&ticks), "{ticks} ticks");
    assert!(sent <= 2 * ticks, "{sent} packets in {ticks} ticks");
    let mut previous = 0;
    for bound in LATENESS_BOUNDS_US {
        let cumulative = counter(&format!(
            "dialtone_conference_tick_lateness_us_bucket{{le={bound}}}"
        ));
        assert!(cumulative >= previous, "buckets are cumulative");
        previous = cumulative;
    }
    assert_eq!(
        counter("dialtone_conference_tick_lateness_us_bucket{le=+Inf}"),
        ticks
    );
    // Late ticks are those over 5 ms: the histogram's ticks above its
    // 5,000 µs bucket; a skip (a tick 60 ms late or more) is one of them.
    let late = counter("dialtone_conference_ticks_late_total");
    let within_5_ms = counter("dialtone_conference_tick_lateness_us_bucket{le=5000}");
    assert_eq!(late, ticks - within_5_ms);
    let skipped = counter("dialtone_conference_frames_skipped_total");
    assert!(skipped == 0 || late > 0, "{skipped} frames skipped");
    let sum_us = counter("dialtone_conference_tick_lateness_us_sum");
    let max_us = gauge("dialtone_conference_tick_lateness_max_us");
    assert!(max_us <= sum_us as f64, "max {max_us} µs, sum {sum_us} µs");
}
