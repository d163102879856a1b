//! Conference rooms over real phones (issue 18, ADR 0025): baresip 1.0
//! (the Debian package) dials a room, enters PINs and presses keys with
//! RFC 4733 digits (`/sndcode`), and records what it hears.
//!
//! What is checked, and how:
//! - the mix: each phone sends its own tone (baresip's `ausine` source at
//!   440, 660 or 880 Hz) and records what it decodes (the `sndfile`
//!   filter). In every 100 ms window of a recording, the share of the
//!   window's power at each tone (Goertzel) says whether it was heard: a
//!   phone must hear the other two and never its own (N−1 mixing), and,
//!   once one phone muted itself (`*6`), the others must stop hearing it;
//! - the room's recording (room setting `record`): the WAV stored in the
//!   blob store under the `ConferenceRecordingStarted` audio id holds all
//!   three tones;
//! - what the node recorded: the conference's stream, in order;
//! - being turned away: a wrong PIN three times, a full room: the caller
//!   hears a prompt (speech, by loudness), its call ends, and
//!   `ParticipantLeft` says why, with who called.
//!
//! Three baresips at once are a light load: `ps` 8 s into the three-phone
//! test on the 2-core test machine showed each baresip at 1.4 % of a core
//! (its average since it started) and the node at 5 %; the six tests run
//! together in about 35 s.

mod softphones;
mod support;

use std::time::Duration;

use dialtone_api::pb::conference_service_client::ConferenceServiceClient;
use dialtone_api::pb::{CreateRoomRequest, EventEnvelope, RoomChange, User};
use dialtone_media::tone::goertzel_power;
use softphones::*;
use support::sip::{bounded, create_domain, create_user, eventually};
use support::{read_all, TestNode};

const TONES: [u32; 3] = [440, 660, 880];

/// Share of a window's power a tone must hold to count as heard: two
/// tones at equal level share it about half and half, and the join and
/// leave tones or a prompt take their part for a moment.
const HEARD_SHARE: f64 = 0.15;

/// Below this share a tone is not there (G.711's noise and the other
/// tones' leakage stay under 1 %).
const ABSENT_SHARE: f64 = 0.03;

/// Windows quieter than this RMS are silence.
const SILENT_RMS: f64 = 200.0;

/// The share of each 100 ms window's power at `hz` (`None`: silence).
fn shares(samples: &[i16], hz: u32) -> Vec<Option<f64>> {
    samples
        .chunks_exact(800)
        .map(|window| {
            let power: f64 =
                window.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / window.len() as f64;
            (power >= SILENT_RMS * SILENT_RMS)
                .then(|| goertzel_power(window, f64::from(hz), 8000) / power)
        })
        .collect()
}

/// Milliseconds of `samples` where `hz` was heard.
fn heard_ms(samples: &[i16], hz: u32) -> u32 {
    shares(samples, hz)
        .iter()
        .filter(|s| s.is_some_and(|s| s >= HEARD_SHARE))
        .count() as u32
        * 100
}

/// Milliseconds of `samples` where `hz` was more than a trace.
fn present_ms(samples: &[i16], hz: u32) -> u32 {
    shares(samples, hz)
        .iter()
        .filter(|s| s.is_some_and(|s| s >= ABSENT_SHARE))
        .count() as u32
        * 100
}

/// Milliseconds of `samples` where `hz` alone was heard (speech, whose
/// power spreads over many frequencies, never is).
fn alone_ms(samples: &[i16], hz: u32) -> u32 {
    shares(samples, hz)
        .iter()
        .filter(|s| s.is_some_and(|s| s >= 0.8))
        .count() as u32
        * 100
}

async fn conferences(node: &TestNode) -> ConferenceServiceClient<support::Channel> {
    ConferenceServiceClient::new(node.channel().await.unwrap())
}

async fn create_room(node: &TestNode, name: &str, settings: RoomChange) {
    create_room_in(node, DOMAIN, name, settings).await
}

async fn create_room_in(node: &TestNode, domain: &str, name: &str, settings: RoomChange) {
    conferences(node)
        .await
        .create_room(CreateRoomRequest {
            address: format!("{name}@{domain}"),
            settings: Some(settings),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// The events of the (only) conference held so far.
async fn conference_events(node: &TestNode) -> Vec<EventEnvelope> {
    let all = read_all(node).await.unwrap();
    let Some(stream) = all
        .iter()
        .find(|e| e.r#type == "ConferenceStarted")
        .map(|e| e.stream.clone())
    else {
        return Vec::new();
    };
    all.into_iter().filter(|e| e.stream == stream).collect()
}

fn types(events: &[EventEnvelope]) -> Vec<&str> {
    events
        .iter()
        .filter(|e| e.r#type != "ParticipantTalking")
        .map(|e| e.r#type.as_str())
        .collect()
}

fn data(event: &EventEnvelope) -> serde_json::Value {
    serde_json::from_str(&event.data_json).unwrap()
}

/// Waits until the conference's stream holds an event `ty` (whose data
/// `matches`).
async fn wait_for_event(
    node: &TestNode,
    ty: &str,
    matches: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    eventually(STEP, ty, || async {
        Ok(conference_events(node)
            .await
            .iter()
            .filter(|e| e.r#type == ty)
            .map(data)
            .find(|d| matches(d)))
    })
    .await
    .unwrap()
}

async fn users(node: &TestNode, names: &[&str]) -> Vec<User> {
    let mut users = Vec::new();
    for name in names {
        users.push(create_user(node, DOMAIN, name, PASSWORD, 0).await.unwrap());
    }
    users
}

async fn dial(phone: &mut Phone, room: &str) {
    phone
        .command(&format!("dial {room}@{DOMAIN}"))
        .await
        .unwrap_or_else(|e| panic!("{}", phone.fail(e)));
    answered(phone).await.unwrap();
}

async fn hang_up(phone: &mut Phone) {
    let over = phone.calls_over();
    phone.command("hangup").await.unwrap();
    ended(phone, over).await;
}

/// Waits until the phone's call is over (it counted `over` before).
async fn ended(phone: &Phone, over: usize) {
    eventually(STEP, "the call to end", || async {
        Ok((phone.calls_over() > over).then_some(()))
    })
    .await
    .map_err(|e| phone.fail(e))
    .unwrap();
}

fn recording(phone: &Phone) -> Vec<i16> {
    let path = phone
        .recording()
        .ok_or_else(|| phone.fail("no recording of what it heard"))
        .unwrap();
    wav_samples(&std::fs::read(path).unwrap())
}

/// Three phones in one room hear each other and never themselves; one
/// mutes itself with `*6` and is heard no more; the room's recording
/// holds all three; the conference's events say so, in order.
#[tokio::test]
async fn three_phones_in_a_room_hear_the_others_and_not_themselves() {
    bounded(60, async {
        let dir = tempfile::tempdir().unwrap();
        let node = TestNode::start(dir.path(), &[]).await.unwrap();
        create_domain(&node, DOMAIN).await.unwrap();
        let people = users(&node, &["alice", "bob", "carol"]).await;
        create_room(
            &node,
            "standup",
            RoomChange {
                record: Some(true),
                ..Default::default()
            },
        )
        .await;
        let mut phones = Vec::new();
        for (user, hz) in people.iter().zip(TONES) {
            let mut phone = Phone::baresip_with_tone(user, &node, Transport::Udp, hz)
                .await
                .unwrap();
            phone.registered(&node, Transport::Udp).await.unwrap();
            phones.push(phone);
        }
        for phone in &mut phones {
            dial(phone, "standup").await;
        }
        wait_for_event(&node, "ConferenceRecordingStarted", |_| true).await;
        // Everyone hears everyone for a while.
        tokio::time::sleep(Duration::from_secs(5)).await;
        // alice (440 Hz) mutes herself.
        let alice_id = conference_events(&node)
            .await
            .iter()
            .filter(|e| e.r#type == "ParticipantJoined")
            .map(data)
            .find(|d| d["caller"].as_str().unwrap_or("").starts_with("alice@"))
            .unwrap()["participant"]
            .clone();
        phones[0].command("sndcode *6").await.unwrap();
        wait_for_event(&node, "ParticipantMuted", |d| d["participant"] == alice_id).await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        for phone in &mut phones {
            hang_up(phone).await;
        }
        wait_for_event(&node, "ConferenceEnded", |d| d["reason"] == "empty").await;

        for (phone, own) in phones.iter().zip(TONES) {
            let heard = recording(phone);
            let length_ms = heard.len() as u32 / 8;
            eprintln!(
                "{}: {length_ms} ms heard; 440/660/880 Hz heard {:?} ms, present {:?} ms",
                phone.label(),
                TONES.map(|hz| heard_ms(&heard, hz)),
                TONES.map(|hz| present_ms(&heard, hz)),
            );
            assert!(length_ms >= 8_000, "{}: {length_ms} ms", phone.label());
            assert!(
                present_ms(&heard, own) <= 300,
                "{} heard its own {own} Hz for {} ms",
                phone.label(),
                present_ms(&heard, own)
            );
            for other in TONES.into_iter().filter(|&hz| hz != own) {
                let ms = heard_ms(&heard, other);
                // alice's tone only until she muted (5 s and more).
                let expected_ms = if other == 440 { 4_000 } else { 7_000 };
                assert!(
                    ms >= expected_ms,
                    "{} heard {other} Hz for {ms} ms of {length_ms}",
                    phone.label()
                );
            }
            if own != 440 {
                // The last 3 s: alice muted.
                let tail = &heard[heard.len() - 24_000..];
                assert!(
                    present_ms(tail, 440) <= 200,
                    "{} still heard the muted 440 Hz for {} ms",
                    phone.label(),
                    present_ms(tail, 440)
                );
            }
        }

        let events = conference_events(&node).await;
        let order = types(&events);
        assert_eq!(
            order,
            [
                "ConferenceStarted",
                "ParticipantJoined",
                "ConferenceRecordingStarted",
                "ParticipantJoined",
                "ParticipantJoined",
                "ParticipantMuted",
                "ParticipantLeft",
                "ParticipantLeft",
                "ConferenceRecordingStopped",
                "ParticipantLeft",
                "ConferenceEnded",
            ],
            "{order:?}"
        );
        assert!(events
            .iter()
            .filter(|e| e.r#type == "ParticipantLeft")
            .all(|e| data(e)["reason"] == "hung_up"));
        // Each phone's tone made a talking span.
        assert!(events.iter().any(|e| e.r#type == "ParticipantTalking"));
        let started = events
            .iter()
            .find(|e| e.r#type == "ConferenceRecordingStarted")
            .map(data)
            .unwrap();
        let stopped = events
            .iter()
            .find(|e| e.r#type == "ConferenceRecordingStopped")
            .map(data)
            .unwrap();
        let audio = started["audio"].as_str().unwrap().to_owned();
        let duration_ms = stopped["duration_ms"].as_u64().unwrap();
        for phone in phones {
            phone.quit().await;
        }
        node.stop().await.unwrap();

        let blobs = dialtone_eventlog::SqliteBlobStore::open(
            &dir.path().join("blobs.sqlite3"),
            Default::default(),
        )
        .unwrap();
        let stored = dialtone_eventlog::BlobStore::get(&blobs, &audio)
            .await
            .unwrap()
            .expect("the recording is in the blob store");
        let mix = wav_samples(&stored);
        eprintln!(
            "recording: {duration_ms} ms; 440/660/880 Hz heard {:?} ms",
            TONES.map(|hz| heard_ms(&mix, hz))
        );
        assert_eq!(mix.len() as u64 / 8, duration_ms);
        for hz in TONES {
            let ms = heard_ms(&mix, hz);
            assert!(ms >= 4_000, "the recording holds {hz} Hz for {ms} ms");
        }
        dialtone_eventlog::BlobStore::close(&blobs).await.unwrap();
        drop(blobs);

        // The blob sweeper keeps it: two hours old (past the grace
        // period), named by no mailbox, but by its conference.
        let blob_path = dir.path().join("blobs.sqlite3");
        let conn = rusqlite::Connection::open(&blob_path).unwrap();
        let aged = conn
            .execute(
                "UPDATE blobs SET created_at_us = created_at_us - 7200000000",
                [],
            )
            .unwrap();
        assert_eq!(aged, 1);
        drop(conn);
        let (node, metrics) =
            TestNode::start_with_metrics(dir.path(), &["--blob-sweep-delay-secs", "0"])
                .await
                .unwrap();
        eventually(STEP, "a sweep", || async {
            let sweeps = scrape_metric(&metrics, r#"dialtone_blobs_sweeps_total{outcome="ok"}"#);
            Ok((sweeps.await >= 1.0).then_some(()))
        })
        .await
        .unwrap();
        assert_eq!(
            scrape_metric(&metrics, "dialtone_blobs_swept_total").await,
            0.0
        );
        node.stop().await.unwrap();
        let blobs =
            dialtone_eventlog::SqliteBlobStore::open(&blob_path, Default::default()).unwrap();
        let kept = dialtone_eventlog::BlobStore::get(&blobs, &audio)
            .await
            .unwrap();
        assert_eq!(kept, Some(stored), "the recording survived the sweep");
    })
    .await
}

/// One phone speaks A-law (it offers PCMA only), two µ-law: the room
/// mixes them together, and each hears the other two and not itself,
/// the A-law phone included (the mixer's unit tests mix both laws; this
/// is a real PCMA phone's RTP, decoded and encoded by the room).
#[tokio::test]
async fn an_a_law_phone_and_two_mu_law_phones_hear_each_other() {
    bounded(60, async {
        let dir = tempfile::tempdir().unwrap();
        let node = TestNode::start(dir.path(), &[]).await.unwrap();
        create_domain(&node, DOMAIN).await.unwrap();
        let people = users(&node, &["alice", "bob", "carol"]).await;
        create_room(&node, "standup", RoomChange::default()).await;
        let mut phones = Vec::new();
        for ((user, hz), codec) in people.iter().zip(TONES).zip(["PCMA", "PCMU", "PCMU"]) {
            let mut phone =
                Phone::baresip_with_tone_and_codec(user, &node, Transport::Udp, hz, codec)
                    .await
                    .unwrap();
            phone.registered(&node, Transport::Udp).await.unwrap();
            phones.push(phone);
        }
        for phone in &mut phones {
            dial(phone, "standup").await;
        }
        tokio::time::sleep(Duration::from_secs(6)).await;
        // alice's call is A-law both ways and the others' µ-law, as
        // baresip says when each call's audio starts.
        for (phone, codec) in phones.iter().zip(["PCMA", "PCMU", "PCMU"]) {
            let log = phone.output.text();
            for way in ["decoder", "encoder"] {
                let line = format!("Set audio {way}: {codec} 8000Hz");
                assert!(
                    log.contains(&line),
                    "{}: no '{line}':\n{log}",
                    phone.label()
                );
            }
        }
        for phone in &mut phones {
            hang_up(phone).await;
        }
        wait_for_event(&node, "ConferenceEnded", |d| d["reason"] == "empty").await;
        for (phone, own) in phones.iter().zip(TONES) {
            let heard = recording(phone);
            let length_ms = heard.len() as u32 / 8;
            eprintln!(
                "{}: {length_ms} ms heard; 440/660/880 Hz heard {:?} ms, present {:?} ms",
                phone.label(),
                TONES.map(|hz| heard_ms(&heard, hz)),
                TONES.map(|hz| present_ms(&heard, hz)),
            );
            assert!(length_ms >= 5_000, "{}: {length_ms} ms", phone.label());
            assert!(
                present_ms(&heard, own) <= 300,
                "{} heard its own {own} Hz for {} ms",
                phone.label(),
                present_ms(&heard, own)
            );
            for other in TONES.into_iter().filter(|&hz| hz != own) {
                let ms = heard_ms(&heard, other);
                assert!(
                    ms >= 4_000,
                    "{} heard {other} Hz for {ms} ms of {length_ms}",
                    phone.label()
                );
            }
        }
        for phone in phones {
            phone.quit().await;
        }
        node.stop().await.unwrap();
    })
    .await
}

/// The value of the metric line `name` (with its labels) in a scrape of
/// the node's metrics endpoint at `addr` (0 when it is not there yet).
async fn scrape_metric(addr: &str, name: &str) -> f64 {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return 0.0;
    };
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .is_err()
    {
        return 0.0;
    }
    let mut text = String::new();
    let _ = tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut text).await;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// A room with a PIN: the right one joins; a caller that gets it wrong
/// three times hears why, is hung up on, and is recorded as turned away
/// (`wrong_pin`, with who called).
#[tokio::test]
async fn a_wrong_pin_three_times_ends_the_call() {
    bounded(60, async {
        let dir = tempfile::tempdir().unwrap();
        let node = TestNode::start(dir.path(), &[]).await.unwrap();
        create_domain(&node, DOMAIN).await.unwrap();
        let people = users(&node, &["alice", "bob"]).await;
        create_room(
            &node,
            "board",
            RoomChange {
                pin: Some("2468".into()),
                ..Default::default()
            },
        )
        .await;
        let mut bob = Phone::baresip_with_tone(&people[1], &node, Transport::Udp, 660)
            .await
            .unwrap();
        bob.registered(&node, Transport::Udp).await.unwrap();
        dial(&mut bob, "board").await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        bob.command("sndcode 2468#").await.unwrap();
        wait_for_event(&node, "ParticipantJoined", |d| {
            d["caller"].as_str().unwrap_or("").starts_with("bob@")
        })
        .await;

        let mut alice = Phone::baresip(&people[0], &node, Transport::Udp)
            .await
            .unwrap();
        alice.registered(&node, Transport::Udp).await.unwrap();
        let over = alice.calls_over();
        dial(&mut alice, "board").await;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            alice.command("sndcode 1111#").await.unwrap();
        }
        let left = wait_for_event(&node, "ParticipantLeft", |d| d["reason"] == "wrong_pin").await;
        assert!(
            left["caller"].as_str().unwrap().starts_with("alice@"),
            "{left}"
        );
        // Told, then hung up on.
        ended(&alice, over).await;
        let heard = recording(&alice);
        // Three prompts and "too many tries": seconds of speech.
        let loud = heard.iter().filter(|s| s.unsigned_abs() > 2000).count();
        assert!(
            loud > 8_000,
            "alice heard the prompts ({loud} loud samples)"
        );
        // She never heard bob's room (his 660 Hz).
        let room_ms = alone_ms(&heard, 660);
        assert_eq!(room_ms, 0, "alice heard the room for {room_ms} ms");

        hang_up(&mut bob).await;
        wait_for_event(&node, "ConferenceEnded", |_| true).await;
        let events = conference_events(&node).await;
        assert_eq!(
            types(&events),
            [
                "ConferenceStarted",
                "ParticipantJoined",
                "ParticipantLeft",
                "ParticipantLeft",
                "ConferenceEnded",
            ]
        );
        alice.quit().await;
        bob.quit().await;
        node.stop().await.unwrap();
    })
    .await
}

/// A room for two: the third caller is told the room is full, hung up on,
/// and recorded as turned away (`room_full`).
#[tokio::test]
async fn a_full_room_tells_the_third_caller_and_hangs_up() {
    bounded(60, async {
        let dir = tempfile::tempdir().unwrap();
        let node = TestNode::start(dir.path(), &[]).await.unwrap();
        create_domain(&node, DOMAIN).await.unwrap();
        let people = users(&node, &["alice", "bob", "carol"]).await;
        create_room(
            &node,
            "pair",
            RoomChange {
                max_participants: Some(2),
                ..Default::default()
            },
        )
        .await;
        let mut phones = Vec::new();
        for (user, hz) in people.iter().zip(TONES) {
            let mut phone = Phone::baresip_with_tone(user, &node, Transport::Udp, hz)
                .await
                .unwrap();
            phone.registered(&node, Transport::Udp).await.unwrap();
            phones.push(phone);
        }
        dial(&mut phones[0], "pair").await;
        dial(&mut phones[1], "pair").await;
        let over = phones[2].calls_over();
        dial(&mut phones[2], "pair").await;
        let left = wait_for_event(&node, "ParticipantLeft", |d| d["reason"] == "room_full").await;
        assert!(
            left["caller"].as_str().unwrap().starts_with("carol@"),
            "{left}"
        );
        ended(&phones[2], over).await;
        let heard = recording(&phones[2]);
        // "This conference is full..." (4.4 s of speech).
        let loud = heard.iter().filter(|s| s.unsigned_abs() > 2000).count();
        assert!(loud > 4_000, "carol heard the prompt ({loud} loud samples)");
        let room_ms = alone_ms(&heard, 440) + alone_ms(&heard, 660);
        assert_eq!(room_ms, 0, "carol heard the room for {room_ms} ms");
        for phone in &mut phones[..2] {
            hang_up(phone).await;
        }
        wait_for_event(&node, "ConferenceEnded", |_| true).await;
        let events = conference_events(&node).await;
        assert_eq!(
            types(&events),
            [
                "ConferenceStarted",
                "ParticipantJoined",
                "ParticipantJoined",
                "ParticipantLeft",
                "ParticipantLeft",
                "ParticipantLeft",
                "ConferenceEnded",
            ]
        );
        for phone in phones {
            phone.quit().await;
        }
        node.stop().await.unwrap();
    })
    .await
}

/// A room that waits for its moderator: a participant hears hold audio
/// until the moderator's PIN brings them in; the moderator's keys lock the
/// room (the next caller is turned away, `room_locked`), mute everyone
/// else (`*3`: the moderator no longer hears them) and start and stop a
/// recording (`*2`); a node stopping ends the conference (`node_restart`)
/// and hangs up its calls.
#[tokio::test]
async fn a_moderator_brings_the_room_in_locks_it_mutes_all_and_records() {
    bounded(60, async {
        let dir = tempfile::tempdir().unwrap();
        let node = TestNode::start(dir.path(), &[]).await.unwrap();
        create_domain(&node, DOMAIN).await.unwrap();
        let people = users(&node, &["alice", "bob", "carol"]).await;
        create_room(
            &node,
            "review",
            RoomChange {
                moderator_pin: Some("1357".into()),
                wait_for_moderator: Some(true),
                ..Default::default()
            },
        )
        .await;
        let mut phones = Vec::new();
        for (user, hz) in people.iter().zip(TONES) {
            let mut phone = Phone::baresip_with_tone(user, &node, Transport::Udp, hz)
                .await
                .unwrap();
            phone.registered(&node, Transport::Udp).await.unwrap();
            phones.push(phone);
        }
        let caller_is = |name: &'static str| {
            move |d: &serde_json::Value| d["caller"].as_str().unwrap_or("").starts_with(name)
        };
        // bob: no PIN (the room has only a moderator's): in, waiting.
        dial(&mut phones[1], "review").await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        phones[1].command("sndcode #").await.unwrap();
        let bob = wait_for_event(&node, "ParticipantJoined", caller_is("bob@")).await;
        assert_eq!(bob["moderator"], false);
        tokio::time::sleep(Duration::from_secs(5)).await;
        // alice, the moderator.
        dial(&mut phones[0], "review").await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        phones[0].command("sndcode 1357#").await.unwrap();
        let alice = wait_for_event(&node, "ParticipantJoined", caller_is("alice@")).await;
        assert_eq!(alice["moderator"], true);
        tokio::time::sleep(Duration::from_secs(3)).await;

        phones[0].command("sndcode *1").await.unwrap();
        wait_for_event(&node, "ConferenceLocked", |_| true).await;
        let over = phones[2].calls_over();
        dial(&mut phones[2], "review").await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        phones[2].command("sndcode #").await.unwrap();
        let turned =
            wait_for_event(&node, "ParticipantLeft", |d| d["reason"] == "room_locked").await;
        assert!(caller_is("carol@")(&turned), "{turned}");
        ended(&phones[2], over).await;

        phones[0].command("sndcode *3").await.unwrap();
        wait_for_event(&node, "ParticipantMuted", |d| {
            d["participant"] == bob["participant"]
        })
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        phones[0].command("sndcode *2").await.unwrap();
        wait_for_event(&node, "ConferenceRecordingStarted", |_| true).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        phones[0].command("sndcode *2").await.unwrap();
        let stopped = wait_for_event(&node, "ConferenceRecordingStopped", |_| true).await;
        let duration_ms = stopped["duration_ms"].as_u64().unwrap();
        assert!((1_500..4_000).contains(&duration_ms), "{stopped}");

        // What bob heard: the waiting prompt (4.2 s) and hold audio (400 ms
        // of 520 Hz every 3 s) while he waited, then alice.
        let overs: Vec<usize> = phones[..2].iter().map(Phone::calls_over).collect();
        node.stop().await.unwrap();
        for (phone, over) in phones[..2].iter().zip(overs) {
            ended(phone, over).await;
        }
        let heard = recording(&phones[1]);
        let hold_ms = heard_ms(&heard, 520);
        assert!(hold_ms >= 300, "bob heard {hold_ms} ms of hold audio");
        let alice_ms = heard_ms(&heard, 440);
        assert!(alice_ms >= 3_000, "bob heard alice for {alice_ms} ms");
        // Before alice came, bob heard no room (nobody else was in it),
        // and after *3 alice heard bob no more.
        let heard = recording(&phones[0]);
        let tail = &heard[heard.len().saturating_sub(16_000)..];
        assert!(
            present_ms(tail, 660) <= 200,
            "alice still heard the muted bob for {} ms",
            present_ms(tail, 660)
        );
        assert!(heard_ms(&heard, 660) >= 2_000, "alice heard bob before *3");

        // The node's stop ended the conference.
        let node = TestNode::start(dir.path(), &[]).await.unwrap();
        let events = conference_events(&node).await;
        let order = types(&events);
        assert_eq!(
            order,
            [
                "ConferenceStarted",
                "ParticipantJoined",
                "ParticipantJoined",
                "ConferenceLocked",
                "ParticipantLeft",
                "ParticipantMuted",
                "ConferenceRecordingStarted",
                "ConferenceRecordingStopped",
                "ParticipantLeft",
                "ParticipantLeft",
                "ConferenceEnded",
            ],
            "{order:?}"
        );
        let end = data(events.last().unwrap());
        assert_eq!(end["reason"], "node_restart");

        // The recording is listed with the conference (which has ended)
        // and streamed from the blob store over the API and the CLI.
        let conference_id = events[0]
            .stream
            .trim_start_matches("conference-")
            .to_owned();
        let mut api = conferences(&node).await;
        let found = api
            .get_conference(dialtone_api::pb::GetConferenceRequest {
                conference: conference_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(found.recordings.len(), 1, "{found:?}");
        let listed = &found.recordings[0];
        assert_eq!(
            listed.audio_id,
            stopped["audio"].as_str().unwrap(),
            "{found:?}"
        );
        assert_eq!(u64::from(listed.duration_ms), duration_ms);
        let mut stream = api
            .get_recording_audio(dialtone_api::pb::GetRecordingAudioRequest {
                conference: conference_id.clone(),
                audio_id: listed.audio_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut wav = Vec::new();
        while let Some(chunk) = stream.message().await.unwrap() {
            wav.extend_from_slice(&chunk.data);
        }
        let samples = dialtone_media::wav::read_wav(
            &wav,
            dialtone_media::wav::WavLimits {
                max_duration_ms: 60_000,
            },
        )
        .unwrap();
        let stored_ms = samples.len() as u64 / 8;
        assert!(
            stored_ms.abs_diff(duration_ms) <= 40,
            "{stored_ms} ms stored for a recording of {duration_ms} ms"
        );
        // alice (440 Hz) was heard in the room while it recorded.
        assert!(
            heard_ms(&samples, 440) >= 1_000,
            "the recording misses alice"
        );
        let out = node
            .cli(&["conference", "recordings", &conference_id])
            .await
            .unwrap();
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && shown.contains(&listed.audio_id),
            "{shown}"
        );
        let file = dir.path().join("room.wav");
        let out = node
            .cli(&[
                "conference",
                "get-recording",
                &conference_id,
                &listed.audio_id,
                "-o",
                file.to_str().unwrap(),
            ])
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(std::fs::read(&file).unwrap(), wav);
        // Bad input: an id that is not an audio id, and one this
        // conference never recorded.
        for (audio_id, code) in [
            ("room.wav", tonic::Code::InvalidArgument),
            ("vm-00000000000000000000000000000000", tonic::Code::NotFound),
        ] {
            let e = api
                .get_recording_audio(dialtone_api::pb::GetRecordingAudioRequest {
                    conference: conference_id.clone(),
                    audio_id: audio_id.into(),
                })
                .await
                .err()
                .unwrap_or_else(|| panic!("{audio_id} was not refused"));
            assert_eq!(e.code(), code, "{audio_id}: {}", e.message());
        }
        for phone in phones {
            phone.quit().await;
        }
        node.stop().await.unwrap();
    })
    .await
}

/// A caller that sends no RTP (SIPp, no media) is dropped from the room at
/// the RTP timeout (2 s here): `ParticipantLeft` with `rtp_timeout`, the
/// conference ended, the BYE saying why, and the caller's call recorded as
/// answered by the room and ended by a timeout of the node's (ADR 0024).
#[tokio::test]
async fn a_caller_that_sends_no_rtp_is_dropped_at_the_rtp_timeout() {
    use support::pbx::Pbx;
    bounded(60, async {
        let pbx = Pbx::start(&["--rtp-timeout-secs", "2"]).await;
        create_room_in(
            &pbx.node,
            support::sip::DOMAIN,
            "standup",
            RoomChange::default(),
        )
        .await;
        let run = pbx.call("standup", "call_uac_callee_hangs_up.xml").await;
        run.assert_all_successful(1);
        let left = wait_for_event(&pbx.node, "ParticipantLeft", |_| true).await;
        assert_eq!(left["reason"], "rtp_timeout");
        let ended = wait_for_event(&pbx.node, "ConferenceEnded", |_| true).await;
        assert_eq!(ended["reason"], "empty");
        let alice = pbx.id("alice").to_owned();
        let calls = eventually(STEP, "alice's call to end", || async {
            let events = support::calls::call_events(&pbx.node, &alice).await;
            Ok(events
                .iter()
                .any(|(t, _)| t == "CallEnded")
                .then_some(events))
        })
        .await
        .unwrap();
        let answered = &calls.iter().find(|(t, _)| t == "CallAnswered").unwrap().1;
        assert_eq!(
            answered["contact"],
            format!("conference:standup@{}", support::sip::DOMAIN)
        );
        let end = &calls.iter().find(|(t, _)| t == "CallEnded").unwrap().1;
        assert_eq!(end["cause"], "timeout", "{end}");
        assert_eq!(end["hangup_side"], "system", "{end}");
        pbx.node.stop().await.unwrap();
    })
    .await
}

/// Controls written over the API reach the call in the room (ADR 0025: the
/// API writes to the conference, the node running the room follows its
/// stream): a participant kicked with `KickParticipant` is hung up by the
/// node, its leg ends as hung up by the conference, and the conference
/// ends empty.
#[tokio::test]
async fn a_participant_kicked_over_the_api_is_hung_up() {
    use support::pbx::Pbx;
    bounded(60, async {
        let pbx = Pbx::start(&[]).await;
        create_room_in(
            &pbx.node,
            support::sip::DOMAIN,
            "standup",
            RoomChange::default(),
        )
        .await;
        let room = format!("standup@{}", support::sip::DOMAIN);
        let alice_address = format!("alice@{}", support::sip::DOMAIN);
        // The caller waits for the other side's BYE (or fails at SIPp's
        // 30 s timeout, before the node's RTP timeout of 30 s could end it).
        let call = pbx.call("standup", "call_uac_callee_hangs_up.xml");
        let kick = async {
            wait_for_event(&pbx.node, "ParticipantJoined", |d| {
                d["caller"] == alice_address.as_str()
            })
            .await;
            let kicked = conferences(&pbx.node)
                .await
                .kick_participant(dialtone_api::pb::ParticipantRequest {
                    conference: room.clone(),
                    participant: alice_address.clone(),
                    request_id: "kick-alice".into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert!(kicked.participants.is_empty(), "{kicked:?}");
        };
        let (run, ()) = tokio::join!(call, kick);
        run.assert_all_successful(1);
        let left = wait_for_event(&pbx.node, "ParticipantLeft", |_| true).await;
        assert_eq!(left["reason"], "kicked", "{left}");
        let ended = wait_for_event(&pbx.node, "ConferenceEnded", |_| true).await;
        assert_eq!(ended["reason"], "empty", "{ended}");
        let alice = pbx.id("alice").to_owned();
        let calls = eventually(STEP, "alice's call to end", || async {
            let events = support::calls::call_events(&pbx.node, &alice).await;
            Ok(events
                .iter()
                .any(|(t, _)| t == "CallEnded")
                .then_some(events))
        })
        .await
        .unwrap();
        let end = &calls.iter().find(|(t, _)| t == "CallEnded").unwrap().1;
        assert_eq!(end["hangup_side"], "callee", "{end}");
        pbx.node.stop().await.unwrap();
    })
    .await
}

/// A room that ends with its moderator: when the last moderator hangs up,
/// the conference ends (`last_moderator_left`) and the others' calls end
/// with it.
#[tokio::test]
async fn the_last_moderator_leaving_ends_a_room_that_ends_with_them() {
    bounded(60, async {
        let dir = tempfile::tempdir().unwrap();
        let node = TestNode::start(dir.path(), &[]).await.unwrap();
        create_domain(&node, DOMAIN).await.unwrap();
        let people = users(&node, &["alice", "bob"]).await;
        create_room(
            &node,
            "class",
            RoomChange {
                moderator_pin: Some("1357".into()),
                end_with_moderator: Some(true),
                ..Default::default()
            },
        )
        .await;
        let mut alice = Phone::baresip(&people[0], &node, Transport::Udp)
            .await
            .unwrap();
        let mut bob = Phone::baresip_with_tone(&people[1], &node, Transport::Udp, 660)
            .await
            .unwrap();
        alice.registered(&node, Transport::Udp).await.unwrap();
        bob.registered(&node, Transport::Udp).await.unwrap();
        dial(&mut alice, "class").await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        alice.command("sndcode 1357#").await.unwrap();
        wait_for_event(&node, "ParticipantJoined", |d| d["moderator"] == true).await;
        dial(&mut bob, "class").await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        bob.command("sndcode #").await.unwrap();
        wait_for_event(&node, "ParticipantJoined", |d| d["moderator"] == false).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let over = bob.calls_over();
        hang_up(&mut alice).await;
        let end = wait_for_event(&node, "ConferenceEnded", |_| true).await;
        assert_eq!(end["reason"], "last_moderator_left");
        ended(&bob, over).await;
        let events = conference_events(&node).await;
        let left: Vec<String> = events
            .iter()
            .filter(|e| e.r#type == "ParticipantLeft")
            .map(|e| data(e)["reason"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(left, ["hung_up", "conference_ended"]);
        alice.quit().await;
        bob.quit().await;
        node.stop().await.unwrap();
    })
    .await
}

/// A node killed (`kill -9`) with a conference running ends it at its next
/// start (`node_restart`: its media died with it), before it takes calls;
/// the room then holds a new conference.
#[tokio::test]
async fn a_conference_left_running_by_a_crash_is_ended_at_the_next_start() {
    bounded(60, async {
        let dir = tempfile::tempdir().unwrap();
        let node = TestNode::start(dir.path(), &[]).await.unwrap();
        create_domain(&node, DOMAIN).await.unwrap();
        let people = users(&node, &["alice"]).await;
        create_room(&node, "standup", RoomChange::default()).await;
        let mut alice = Phone::baresip(&people[0], &node, Transport::Udp)
            .await
            .unwrap();
        alice.registered(&node, Transport::Udp).await.unwrap();
        dial(&mut alice, "standup").await;
        wait_for_event(&node, "ParticipantJoined", |_| true).await;
        node.kill9().await.unwrap();
        alice.quit().await;

        let node = TestNode::start(dir.path(), &[]).await.unwrap();
        let events = conference_events(&node).await;
        assert_eq!(
            types(&events),
            [
                "ConferenceStarted",
                "ParticipantJoined",
                "ParticipantLeft",
                "ConferenceEnded",
            ]
        );
        let left = events
            .iter()
            .find(|e| e.r#type == "ParticipantLeft")
            .map(data)
            .unwrap();
        assert_eq!(left["reason"], "conference_ended");
        assert_eq!(data(events.last().unwrap())["reason"], "node_restart");
        node.stop().await.unwrap();
        // A clean stop ends nothing more, and the next start neither.
        let node = TestNode::start(dir.path(), &[]).await.unwrap();
        assert_eq!(conference_events(&node).await.len(), events.len());
        node.stop().await.unwrap();
    })
    .await
}

/// How many events `ty` the conference's stream holds.
async fn count_events(node: &TestNode, ty: &str) -> usize {
    conference_events(node)
        .await
        .iter()
        .filter(|e| e.r#type == ty)
        .count()
}

/// Waits until the conference's stream holds `n` events `ty`.
async fn wait_for_count(node: &TestNode, ty: &str, n: usize) {
    eventually(STEP, ty, || async {
        Ok((count_events(node, ty).await >= n).then_some(()))
    })
    .await
    .unwrap();
}

fn control(conference: &str, request_id: &str) -> dialtone_api::pb::ConferenceControlRequest {
    dialtone_api::pb::ConferenceControlRequest {
        conference: conference.into(),
        request_id: request_id.into(),
    }
}

/// The stored WAV of a recording, over `GetRecordingAudio`.
async fn recording_samples(node: &TestNode, conference: &str, audio_id: &str) -> Vec<i16> {
    let mut stream = conferences(node)
        .await
        .get_recording_audio(dialtone_api::pb::GetRecordingAudioRequest {
            conference: conference.into(),
            audio_id: audio_id.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut wav = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        wav.extend_from_slice(&chunk.data);
    }
    dialtone_media::wav::read_wav(
        &wav,
        dialtone_media::wav::WavLimits {
            max_duration_ms: 60_000,
        },
    )
    .unwrap()
}

/// An operator starts a live room's recording over gRPC and stops it with
/// the CLI: each answers once the node running the room acted (started;
/// stored, then recorded as stopped), so the recording is listed and
/// downloads at once, as long as it ran and with both phones' tones in
/// it. Starting twice, stopping what is not recording and either on an
/// ended conference are FAILED_PRECONDITION; a retried request id writes
/// nothing. A moderator's `*2` and the API switch the same recording.
#[tokio::test]
async fn an_operator_starts_and_stops_a_rooms_recording_over_grpc_and_the_cli() {
    bounded(120, async {
        let dir = tempfile::tempdir().unwrap();
        let node = TestNode::start(dir.path(), &[]).await.unwrap();
        create_domain(&node, DOMAIN).await.unwrap();
        let people = users(&node, &["alice", "bob"]).await;
        create_room(
            &node,
            "rec",
            RoomChange {
                moderator_pin: Some("1357".into()),
                ..Default::default()
            },
        )
        .await;
        let mut phones = Vec::new();
        for (user, hz) in people.iter().zip(TONES) {
            let mut phone = Phone::baresip_with_tone(user, &node, Transport::Udp, hz)
                .await
                .unwrap();
            phone.registered(&node, Transport::Udp).await.unwrap();
            phones.push(phone);
        }
        // alice the moderator (440 Hz), bob a participant (660 Hz).
        for (phone, (keys, name)) in phones.iter_mut().zip([("1357#", "alice@"), ("#", "bob@")]) {
            dial(phone, "rec").await;
            tokio::time::sleep(Duration::from_millis(800)).await;
            phone.command(&format!("sndcode {keys}")).await.unwrap();
            wait_for_event(&node, "ParticipantJoined", |d| {
                d["caller"].as_str().unwrap_or("").starts_with(name)
            })
            .await;
        }
        let room = format!("rec@{DOMAIN}");
        let mut api = conferences(&node).await;
        let e = api.stop_recording(control(&room, "")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("is not being recorded"), "{e:?}");

        // Started over gRPC: running when the reply comes.
        let asked = std::time::Instant::now();
        let started = api
            .start_recording(control(&room, "record-1"))
            .await
            .unwrap()
            .into_inner();
        let start_ms = asked.elapsed().as_millis();
        assert!(started.recording, "{started:?}");
        let order = types(&conference_events(&node).await)
            .into_iter()
            .filter(|t| t.starts_with("ConferenceRecording"))
            .map(str::to_owned)
            .collect::<Vec<_>>();
        assert_eq!(
            order,
            ["ConferenceRecordingRequested", "ConferenceRecordingStarted"]
        );
        let e = api.start_recording(control(&room, "")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("is being recorded already"), "{e:?}");
        // The first request again (a client's retry): the same outcome,
        // nothing written.
        let written = conference_events(&node).await.len();
        let again = api
            .start_recording(control(&room, "record-1"))
            .await
            .unwrap()
            .into_inner();
        assert!(again.recording);
        assert_eq!(conference_events(&node).await.len(), written);

        // Stopped with the CLI: stored and listed when it returns.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let asked = std::time::Instant::now();
        let out = node
            .cli(&["conference", "stop-recording", &room])
            .await
            .unwrap();
        let stop_ms = asked.elapsed().as_millis();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let found = api
            .get_conference(dialtone_api::pb::GetConferenceRequest {
                conference: room.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!found.recording);
        assert_eq!(found.recordings.len(), 1, "{found:?}");
        let first = found.recordings[0].clone();
        assert!(
            (2_900..4_500).contains(&first.duration_ms),
            "{} ms recorded",
            first.duration_ms
        );
        let samples = recording_samples(&node, &found.conference_id, &first.audio_id).await;
        let stored_ms = samples.len() as u64 / 8;
        assert!(
            stored_ms.abs_diff(u64::from(first.duration_ms)) <= 40,
            "{stored_ms} ms stored for a recording of {} ms",
            first.duration_ms
        );
        for hz in [440, 660] {
            let ms = heard_ms(&samples, hz);
            assert!(ms >= 2_000, "the recording holds {hz} Hz for {ms} ms");
        }
        eprintln!(
            "start answered in {start_ms} ms, stop (CLI, with its process) in {stop_ms} ms; \
             {} ms recorded, {stored_ms} ms stored",
            first.duration_ms
        );

        // Started over the API, stopped by the moderator's *2 ...
        api.start_recording(control(&room, "")).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        phones[0].command("sndcode *2").await.unwrap();
        wait_for_count(&node, "ConferenceRecordingStopped", 2).await;
        // ... and started by *2, stopped over the API.
        tokio::time::sleep(Duration::from_secs(2)).await;
        phones[0].command("sndcode *2").await.unwrap();
        wait_for_count(&node, "ConferenceRecordingStarted", 3).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let stopped = api
            .stop_recording(control(&room, ""))
            .await
            .unwrap()
            .into_inner();
        assert!(!stopped.recording);
        assert_eq!(stopped.recordings.len(), 3, "{stopped:?}");
        assert!(stopped.recordings.iter().all(|r| r.duration_ms >= 500));

        // Over: both hang up, the conference ends.
        for phone in phones.iter_mut() {
            hang_up(phone).await;
        }
        wait_for_event(&node, "ConferenceEnded", |_| true).await;
        for e in [
            api.start_recording(control(&found.conference_id, ""))
                .await
                .unwrap_err(),
            api.stop_recording(control(&found.conference_id, ""))
                .await
                .unwrap_err(),
        ] {
            assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
            assert!(e.message().contains("has ended"), "{e:?}");
        }
        let e = api
            .start_recording(control("0191d3c6-0000-7000-8000-000000000000", ""))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
        let e = api.start_recording(control(&room, "")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
        for phone in phones {
            phone.quit().await;
        }
        node.stop().await.unwrap();
    })
    .await
}

/// The data of every event `ty` in the log, any stream.
async fn all_of(node: &TestNode, ty: &str) -> Vec<serde_json::Value> {
    read_all(node)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.r#type == ty)
        .map(data)
        .collect()
}

/// Waits until an event `ty` of any conference names a caller starting
/// with `caller`.
async fn wait_for_any(node: &TestNode, ty: &str, caller: &str) {
    eventually(STEP, ty, || async {
        Ok(all_of(node, ty)
            .await
            .iter()
            .any(|d| d["caller"].as_str().unwrap_or("").starts_with(caller))
            .then_some(()))
    })
    .await
    .unwrap();
}

/// Wrong PINs count across calls: alice (authenticated) gets three tries
/// on her first call and two on her second, whose fifth wrong PIN locks
/// her out (she hears so and is hung up on); her next call is refused
/// (403) before any PIN, so not even the right one gets in; the room
/// shows the lock-out over gRPC; an operator clears it with the CLI and
/// the right PIN then joins. bob, another caller, is never locked out.
#[tokio::test]
async fn wrong_pins_over_several_calls_lock_the_caller_out_until_an_operator_resets_it() {
    bounded(120, async {
        let dir = tempfile::tempdir().unwrap();
        let node = TestNode::start(dir.path(), &[]).await.unwrap();
        create_domain(&node, DOMAIN).await.unwrap();
        let people = users(&node, &["alice", "bob"]).await;
        create_room(
            &node,
            "board",
            RoomChange {
                pin: Some("2468".into()),
                ..Default::default()
            },
        )
        .await;
        let room = format!("board@{DOMAIN}");
        let alice_key = format!("alice@{DOMAIN}");
        let mut alice = Phone::baresip(&people[0], &node, Transport::Udp)
            .await
            .unwrap();
        alice.registered(&node, Transport::Udp).await.unwrap();
        // Call 1: three wrong PINs, hung up on.
        let over = alice.calls_over();
        dial(&mut alice, "board").await;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            alice.command("sndcode 1111#").await.unwrap();
        }
        ended(&alice, over).await;
        // Call 2: the second wrong PIN is her fifth: locked out.
        let over = alice.calls_over();
        dial(&mut alice, "board").await;
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            alice.command("sndcode 9999#").await.unwrap();
        }
        ended(&alice, over).await;
        let strikes = all_of(&node, "ConferencePinRejected").await;
        assert_eq!(strikes.len(), 5, "{strikes:?}");
        assert!(strikes.iter().all(|s| s["caller"] == alice_key.as_str()));
        assert!(strikes.iter().all(|s| s["authenticated"] == true));
        let failures: Vec<u64> = strikes
            .iter()
            .map(|s| s["strikes"]["failures"].as_u64().unwrap())
            .collect();
        assert_eq!(
            failures,
            [1, 2, 3, 4, 0],
            "the fifth locks (and restarts the count)"
        );
        let locked_until = strikes[4]["strikes"]["locked_until"].as_i64().unwrap();
        let rejected_at = strikes[4]["rejected_at"].as_i64().unwrap();
        assert_eq!(locked_until - rejected_at, 15 * 60 * 1_000_000);
        assert!(strikes[..4]
            .iter()
            .all(|s| s["strikes"].get("locked_until").is_none()));
        // What she heard on call 2 ends with the lock-out prompt (4.3 s of
        // speech), not the "three times" one (call 2 had only two tries).
        let heard = recording(&alice);
        let loud = heard.iter().filter(|s| s.unsigned_abs() > 2000).count();
        assert!(
            loud > 8_000,
            "alice heard the prompts ({loud} loud samples)"
        );
        // Only the two turned-away calls are in conferences: each
        // `wrong_pin`.
        let turned: Vec<_> = all_of(&node, "ParticipantLeft")
            .await
            .iter()
            .map(|d| d["reason"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(turned, ["wrong_pin", "wrong_pin"]);

        // Call 3: refused before any PIN (403), nothing written.
        let conferences_held = all_of(&node, "ConferenceStarted").await.len();
        alice
            .command(&format!("dial board@{DOMAIN}"))
            .await
            .unwrap();
        eventually(STEP, "the call to be refused", || async {
            Ok(alice.output.text().contains("403").then_some(()))
        })
        .await
        .map_err(|e| alice.fail(e))
        .unwrap();
        // No conference started for it, no strike written.
        assert_eq!(
            all_of(&node, "ConferenceStarted").await.len(),
            conferences_held
        );
        assert_eq!(all_of(&node, "ConferencePinRejected").await.len(), 5);

        // The room shows it.
        let mut api = conferences(&node).await;
        let shown = api
            .get_room(dialtone_api::pb::GetRoomRequest {
                address: room.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(shown.pin_lockouts.len(), 1, "{shown:?}");
        assert_eq!(shown.pin_lockouts[0].caller, alice_key);
        let strikes = shown.pin_lockouts[0].strikes.unwrap();
        assert_eq!(strikes.lockouts, 1);
        assert!(strikes.locked_until.is_some());
        assert!(shown.room_pin_strikes.is_none(), "alice authenticated");
        let out = node.cli(&["conference", "get", &room]).await.unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&alice_key) && text.contains("locked until"),
            "{text}"
        );

        // bob, another caller, is not locked out: the right PIN joins.
        let mut bob = Phone::baresip_with_tone(&people[1], &node, Transport::Udp, 660)
            .await
            .unwrap();
        bob.registered(&node, Transport::Udp).await.unwrap();
        dial(&mut bob, "board").await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        bob.command("sndcode 2468#").await.unwrap();
        wait_for_any(&node, "ParticipantJoined", "bob@").await;

        // An operator clears alice's lock-out; the right PIN gets her in.
        let out = node
            .cli(&[
                "conference",
                "reset-pin-lockouts",
                &room,
                "--caller",
                &alice_key,
            ])
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cleared = all_of(&node, "ConferencePinLockoutsCleared").await;
        assert_eq!(cleared.len(), 1);
        assert_eq!(cleared[0]["caller"], alice_key.as_str());
        let shown = api
            .get_room(dialtone_api::pb::GetRoomRequest {
                address: room.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(shown.pin_lockouts.is_empty(), "{shown:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let over = alice.calls_over();
        dial(&mut alice, "board").await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        alice.command("sndcode 2468#").await.unwrap();
        wait_for_any(&node, "ParticipantJoined", "alice@").await;
        // A right PIN after no strikes writes nothing more.
        assert_eq!(all_of(&node, "ConferencePinRejected").await.len(), 5);
        hang_up(&mut alice).await;
        assert!(alice.calls_over() > over);
        alice.quit().await;
        bob.quit().await;
        node.stop().await.unwrap();
    })
    .await
}
