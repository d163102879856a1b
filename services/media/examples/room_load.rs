//! Load on the room runtime in one process: `ROOMS` rooms of `SIZE` fake
//! phones each, every phone sending a 20 ms G.711 tone frame every 20 ms
//! over loopback UDP for `SECONDS`, and reading what its room sends it.
//! Prints the rooms' tick lateness (p50, p99, max), skipped frames, the
//! packets each way, and the process's CPU time per participant.
//!
//! ```text
//! cargo run -p dialtone-media --example room_load -- 50 10 20
//! cargo run -p dialtone-media --example room_load -- 1 200 20
//! ```
//!
//! The fake phones run in the same process (one task sends for all of
//! them, on the same 20 ms grid), so the CPU time includes theirs: a
//! bound on the room runtime's own cost, not its exact figure.
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use dialtone_media::g711::{self, Law};
use dialtone_media::room::{RoomConfig, RoomHandle, RoomStats};
use dialtone_media::rtp::{write_packet, RtpHeader};
use dialtone_media::runtime::{MediaRuntime, RuntimeConfig};
use dialtone_media::sdp::{self, Capabilities, Codec, Direction, LocalMedia, SessionDescription};
use dialtone_media::tone;

struct FakePhone {
    socket: UdpSocket,
    room: SocketAddr,
    law: Law,
    payload_type: u8,
    ssrc: u32,
}

/// User and system CPU time of this process so far, from /proc (Linux).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command's closing parenthesis; utime and stime are
    // the 12th and 13th of them, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let rooms = *args.first().unwrap_or(&50) as usize;
    let size = *args.get(1).unwrap_or(&10) as usize;
    let seconds = *args.get(2).unwrap_or(&20);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(rooms, size, seconds))
}

async fn run(rooms: usize, size: usize, seconds: u64) -> Result<(), Box<dyn std::error::Error>> {
    let media = MediaRuntime::new(RuntimeConfig {
        ports: 30_000..=39_999,
        ..RuntimeConfig::default()
    })?;
    let mut handles = Vec::new();
    let mut phones = Vec::new();
    for r in 0..rooms {
        let room = RoomHandle::start(&media, RoomConfig::default());
        for p in 0..size {
            let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            socket.set_nonblocking(true)?;
            let codec = if p % 2 == 0 { Codec::Pcmu } else { Codec::Pcma };
            let caps = Capabilities {
                codecs: vec![codec],
                ..Capabilities::default()
            };
            let local = LocalMedia {
                address: Ipv4Addr::LOCALHOST.into(),
                rtp_port: socket.local_addr()?.port(),
                session_id: 1,
                session_version: 1,
            };
            let offer = SessionDescription::parse(&sdp::offer(&caps, &local, Direction::SendRecv))?;
            let joined = room.join(&offer).await?;
            phones.push(FakePhone {
                socket,
                room: SocketAddr::new(joined.local.address, joined.local.rtp_port),
                law: if codec == Codec::Pcmu {
                    Law::Mu
                } else {
                    Law::A
                },
                payload_type: codec.static_payload_type(),
                ssrc: (r * size + p) as u32,
            });
        }
        handles.push(room);
    }
    let participants = rooms * size;
    eprintln!("{rooms} rooms of {size}: {participants} participants; sending for {seconds} s");
    // One second of tone per phone, looped; each phone its own frequency.
    let tones: Vec<Vec<u8>> = phones
        .iter()
        .enumerate()
        .map(|(n, phone)| {
            let samples = tone::sine(300.0 + (n % 40) as f64 * 50.0, 4000, 1000, 8000);
            let mut payload = Vec::new();
            g711::encode_into(phone.law, &samples, &mut payload);
            payload
        })
        .collect();
    let cpu_start = cpu_time();
    let wall_start = Instant::now();
    let mut clock = tokio::time::interval(Duration::from_millis(20));
    let frames = seconds * 50;
    let (mut sent, mut received) = (0u64, 0u64);
    let mut packet = Vec::with_capacity(200);
    let mut buffer = [0u8; 2048];
    for frame in 0..frames {
        clock.tick().await;
        for (phone, tone) in phones.iter().zip(&tones) {
            let at = (frame as usize % 50) * 160;
            let header = RtpHeader {
                payload_type: phone.payload_type,
                marker: frame == 0,
                sequence: frame as u16,
                timestamp: (frame as u32).wrapping_mul(160),
                ssrc: phone.ssrc,
            };
            packet.clear();
            write_packet(&header, &tone[at..at + 160], &mut packet);
            if phone.socket.send_to(&packet, phone.room).is_ok() {
                sent += 1;
            }
            while phone.socket.recv_from(&mut buffer).is_ok() {
                received += 1;
            }
        }
    }
    let wall = wall_start.elapsed();
    let cpu = cpu_time().zip(cpu_start).map(|(end, start)| end - start);
    let mut total = RoomStats::default();
    for room in &handles {
        let Some(stats) = room.stats().await else {
            continue;
        };
        total.ticks += stats.ticks;
        total.skipped_frames += stats.skipped_frames;
        total.late_ticks += stats.late_ticks;
        total.max_lateness_us = total.max_lateness_us.max(stats.max_lateness_us);
        total.rtp_sent += stats.rtp_sent;
        total.send_dropped += stats.send_dropped;
        for (sum, count) in total
            .lateness_ms_histogram
            .iter_mut()
            .zip(stats.lateness_ms_histogram)
        {
            *sum += count;
        }
    }
    println!(
        "{rooms} rooms x {size} = {participants} participants, {:.1} s: \
         tick lateness p50 {} ms, p99 {} ms, max {:.1} ms; ticks {}, late (>5 ms) {}, skipped frames {}; \
         RTP to rooms {sent}, from rooms {} ({received} read by the phones), dropped {}",
        wall.as_secs_f64(),
        total.lateness_percentile_ms(50.0),
        total.lateness_percentile_ms(99.0),
        total.max_lateness_us as f64 / 1000.0,
        total.ticks,
        total.late_ticks,
        total.skipped_frames,
        total.rtp_sent,
        total.send_dropped,
    );
    if let Some(cpu) = cpu {
        let share = cpu.as_secs_f64() / wall.as_secs_f64();
        println!(
            "CPU (rooms and fake phones together) {:.2} s over {:.1} s: {:.0} % of one core, {:.1} µs per participant per 20 ms tick",
            cpu.as_secs_f64(),
            wall.as_secs_f64(),
            share * 100.0,
            cpu.as_secs_f64() * 1e6 / (participants as f64 * frames as f64),
        );
    }
    for room in handles {
        room.close().await;
    }
    Ok(())
}
