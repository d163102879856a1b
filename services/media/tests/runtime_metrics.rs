//! What the runtime counts for the metrics endpoint, over real UDP on
//! 127.0.0.1: a phone whose stream has gaps and a straggler is recorded,
//! and the counters say how many packets were lost, came too late, and
//! how many frames were concealed; every session tick's lateness is in
//! the histogram.
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dialtone_media::g711::{self, Law};
use dialtone_media::rtp::{write_packet, RtpHeader};
use dialtone_media::runtime::{MediaRuntime, RuntimeConfig, LATENESS_BOUNDS_US};
use dialtone_media::sdp::{Codec, Direction, NegotiatedAudio};
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
    let header = RtpHeader {
        payload_type: 0,
        marker: frame == 0,
        sequence: 1000 + frame as u16,
        timestamp: 40_000 + 160 * frame as u32,
        ssrc: 0xBEEF,
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
