//! Unsolicited message-waiting NOTIFYs (RFC 3842 as PBXs send them to
//! phones that do not subscribe), black box: a real node, SIPp phones over
//! UDP, messages left by a SIPp caller that plays a tone into the box.
//!
//! - A box with `unsolicited_mwi` on: its owner's phone (a SIPp UAS that
//!   never subscribes) hears the counts when it registers, within 1 s of a
//!   message being left, and again after MarkMessageRead and
//!   DeleteMessage, each an out-of-dialog NOTIFY with
//!   `Subscription-State: active` and the right body.
//! - A box with the setting off: its owner's phone hears nothing.
//! - A phone that subscribes to its own `message-summary`: only its
//!   subscription's NOTIFYs, never an unsolicited one besides.
//! - Over TCP, the NOTIFY goes on the connection the phone registered on,
//!   once for a new binding (not for a refresh) and when the box's
//!   settings change.

mod support;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dialtone_api::pb::voicemail_service_client::VoicemailServiceClient;
use dialtone_api::pb::{
    ConfigureMailboxRequest, ListMessagesRequest, MessageRequest, SetForwardingRequest,
};
use dialtone_media::g711::Law;
use support::pbx::Pbx;
use support::sip::{
    bounded, create_domain, create_user, eventually, stream_events, Sipp, DOMAIN, PASSWORD,
};
use support::{Channel, TestNode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long the caller of `voicemail_uac_message.xml` talks: the greeting
/// (about 7 s), the beep, then about 3 s of tone.
const TALK_MS: u64 = 11_000;

/// A PBX (see `support::pbx`) whose node serves metrics, at the returned
/// address.
async fn pbx() -> (Pbx, String) {
    let dir = tempfile::tempdir().unwrap();
    let (node, metrics) = TestNode::start_with_metrics(dir.path(), &["--sip-challenge-md5-first"])
        .await
        .unwrap();
    create_domain(&node, DOMAIN).await.unwrap();
    let mut users = std::collections::HashMap::new();
    for name in ["alice", "bob", "carol", "dave"] {
        let user = create_user(&node, DOMAIN, name, PASSWORD, 0).await.unwrap();
        users.insert(name, user);
    }
    write_tone_pcap(&dir.path().join("tone.pcap"), TALK_MS + 4_000);
    (Pbx { dir, node, users }, metrics)
}

async fn voicemail(node: &TestNode) -> VoicemailServiceClient<Channel> {
    VoicemailServiceClient::new(node.channel().await.unwrap())
}

/// Enables `user`'s box, with unsolicited NOTIFYs on or off, and sends
/// all its calls there.
async fn box_for(pbx: &Pbx, user: &str, unsolicited_mwi: bool) {
    voicemail(&pbx.node)
        .await
        .configure_mailbox(ConfigureMailboxRequest {
            user: format!("{user}@{DOMAIN}"),
            enabled: Some(true),
            pin: Some("4321".into()),
            unsolicited_mwi: Some(unsolicited_mwi),
            ..Default::default()
        })
        .await
        .unwrap();
    pbx.forward(
        user,
        SetForwardingRequest {
            always: Some("voicemail".into()),
            ..Default::default()
        },
    )
    .await;
}

/// carol calls `user` (whose calls go to the box) and talks into it.
async fn leave_message(pbx: &Pbx, user: &str) {
    Sipp::new(
        "voicemail_uac_message.xml",
        pbx.node.sip_addr(),
        pbx.dir.path(),
    )
    .users(&[("carol".into(), PASSWORD.into())])
    .key("callee", user)
    .key("callee_domain", DOMAIN)
    .timeout_secs(40)
    .run()
    .await
    .unwrap()
    .assert_all_successful(1);
}

/// The ids of `user`'s messages, once it holds `count`.
async fn messages(pbx: &Pbx, user: &str, count: usize) -> Vec<String> {
    let vm = voicemail(&pbx.node).await;
    eventually(Duration::from_secs(10), "the messages to be listed", || {
        let mut vm = vm.clone();
        async move {
            let list = vm
                .list_messages(ListMessagesRequest {
                    user: format!("{user}@{DOMAIN}"),
                })
                .await?
                .into_inner();
            Ok((list.messages.len() == count)
                .then(|| list.messages.into_iter().map(|m| m.message_id).collect()))
        }
    })
    .await
    .unwrap()
}

/// When `user`'s last `VoicemailLeft` happened.
async fn left_at(node: &TestNode, user_id: &str) -> SystemTime {
    let events = stream_events(node, &format!("user-{user_id}"))
        .await
        .unwrap();
    let left = events
        .iter()
        .rev()
        .find(|e| e.r#type == "VoicemailLeft")
        .expect("a VoicemailLeft event");
    let at = left.occurred_at.as_ref().expect("occurred_at");
    UNIX_EPOCH + Duration::new(at.seconds as u64, at.nanos as u32)
}

async fn scrape(addr: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The messages a SIPp run listening on `port` received, each with the
/// time SIPp logged it at: `-trace_msg` stamps each one with its local
/// wall-clock time to the microsecond (`2026-12-07 22:29:44.696579`),
/// UTC since the harness runs SIPp with `TZ=UTC`.
fn received_at(dir: &Path, port: u16) -> Vec<(SystemTime, String)> {
    let suffix = format!("-{port}.log");
    let log = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("messages-") && name.ends_with(&suffix)
        })
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .expect("SIPp's message trace");
    let format = time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond]"
    );
    let log = log.replace('\r', "");
    let mut out = Vec::new();
    for block in log.split("----------------------------------------------- ") {
        let mut lines = block.lines();
        let Some(stamp) = lines.next() else { continue };
        let Ok(at) = time::PrimitiveDateTime::parse(stamp.trim(), &format) else {
            continue;
        };
        let Some(title) = lines.next() else { continue };
        if !title.contains("message received") {
            continue;
        }
        let text: Vec<&str> = lines.collect();
        out.push((
            SystemTime::from(at.assume_utc()),
            text.join("\n").trim().to_owned(),
        ));
    }
    out
}

fn header<'a>(message: &'a str, name: &str) -> &'a str {
    message
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
        .unwrap_or("")
}

/// `Messages-Waiting` and `Voice-Message` of a message-summary NOTIFY.
fn summary(notify: &str) -> (String, String) {
    (
        header(notify, "Messages-Waiting").to_owned(),
        header(notify, "Voice-Message").to_owned(),
    )
}

fn within(at: SystemTime, after: SystemTime, limit: Duration) -> Duration {
    let took = at
        .duration_since(after)
        .unwrap_or_else(|e| panic!("the NOTIFY came {:?} before the change", e.duration()));
    assert!(took < limit, "the NOTIFY came {took:?} after the change");
    took
}

#[tokio::test]
async fn a_phone_that_does_not_subscribe_hears_every_change_of_its_box_within_a_second() {
    bounded(150, async {
        let (pbx, metrics) = pbx().await;
        box_for(&pbx, "alice", true).await;
        // alice's phone: answers each unsolicited NOTIFY, four expected.
        let alice = vec![("alice".to_owned(), PASSWORD.to_owned()); 4];
        let mut phone = Sipp::new("mwi_uas.xml", pbx.node.sip_addr(), pbx.dir.path())
            .users(&alice)
            .timeout_secs(100)
            .start()
            .await
            .unwrap();
        assert!(phone.is_running());
        let port = phone.port();

        // A new binding hears the counts once, after its 200.
        let registering = SystemTime::now();
        pbx.register("alice", port).await;
        let registered = SystemTime::now();
        // A refresh does not.
        pbx.register("alice", port).await;

        leave_message(&pbx, "alice").await;
        let ids = messages(&pbx, "alice", 1).await;
        let left = left_at(&pbx.node, pbx.id("alice")).await;

        let mut vm = voicemail(&pbx.node).await;
        let read = SystemTime::now();
        vm.mark_message_read(MessageRequest {
            user: format!("alice@{DOMAIN}"),
            message_id: ids[0].clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let deleted = SystemTime::now();
        vm.delete_message(MessageRequest {
            user: format!("alice@{DOMAIN}"),
            message_id: ids[0].clone(),
            ..Default::default()
        })
        .await
        .unwrap();

        let run = phone.finish().await.unwrap();
        run.assert_all_successful(4);
        let notifies = received_at(pbx.dir.path(), port);
        assert_eq!(notifies.len(), 4, "{notifies:#?}");
        let bodies: Vec<(String, String)> = notifies.iter().map(|(_, m)| summary(m)).collect();
        let expect = |w: &str, v: &str| (w.to_owned(), v.to_owned());
        assert_eq!(
            bodies,
            vec![
                expect("no", "0/0 (0/0)"),
                expect("yes", "1/0 (0/0)"),
                expect("no", "0/1 (0/0)"),
                expect("no", "0/0 (0/0)"),
            ],
            "{notifies:#?}"
        );
        for (_, n) in &notifies {
            assert!(n.starts_with("NOTIFY sip:alice@127.0.0.1:"), "{n}");
            assert_eq!(
                header(n, "Message-Account").to_owned(),
                format!("sip:alice@{DOMAIN}").as_str()
            );
            assert_eq!(header(n, "CSeq"), "1 NOTIFY");
            // Out of any dialog: no To tag, a Call-ID of its own.
            assert!(!header(n, "To").contains("tag="), "{n}");
        }
        let call_ids: std::collections::HashSet<&str> =
            notifies.iter().map(|(_, n)| header(n, "Call-ID")).collect();
        assert_eq!(call_ids.len(), 4);

        assert!(
            notifies[0].0 >= registering && notifies[0].0 <= registered + Duration::from_secs(1)
        );
        let took = [
            within(notifies[1].0, left, Duration::from_secs(1)),
            within(notifies[2].0, read, Duration::from_secs(1)),
            within(notifies[3].0, deleted, Duration::from_secs(1)),
        ];
        println!("NOTIFY after the message was left, read, deleted: {took:?}");

        let text = scrape(&metrics).await;
        assert_eq!(
            series(&text, "dialtone_sip_unsolicited_mwi_total{outcome=\"ok\"}"),
            4.0
        );
        pbx.node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn no_unsolicited_notify_without_the_setting_nor_to_a_phone_that_subscribes() {
    bounded(150, async {
        let (pbx, metrics) = pbx().await;
        // alice's box does not ask for unsolicited NOTIFYs; her phone
        // would answer any, and must get none before its run times out.
        box_for(&pbx, "alice", false).await;
        let mut quiet = Sipp::new("mwi_uas.xml", pbx.node.sip_addr(), pbx.dir.path())
            .users(&[("alice".into(), PASSWORD.into())])
            .timeout_secs(40)
            .start()
            .await
            .unwrap();
        assert!(quiet.is_running());
        let quiet_port = quiet.port();
        pbx.register("alice", quiet_port).await;

        // dave's box asks for them, but his phone subscribes to its own
        // message-summary before it registers.
        box_for(&pbx, "dave", true).await;
        let mut subscriber = Sipp::new("mwi_subscriber.xml", pbx.node.sip_addr(), pbx.dir.path())
            .users(&[("dave".into(), PASSWORD.into())])
            .key("watched", "dave")
            .key("event", "message-summary")
            .key("accept", "application/simple-message-summary")
            .key("expect", "Voice-Message: 0/0")
            .key("expect_next", "Voice-Message: 1/0")
            .timeout_secs(90)
            .start()
            .await
            .unwrap();
        assert!(subscriber.is_running());
        let subscriber_port = subscriber.port();
        eventually(Duration::from_secs(10), "dave's subscription", || async {
            let text = scrape(&metrics).await;
            Ok((series(&text, "dialtone_sip_subscriptions") == 1.0).then_some(()))
        })
        .await
        .unwrap();
        pbx.register("dave", subscriber_port).await;

        tokio::join!(leave_message(&pbx, "alice"), leave_message(&pbx, "dave"));
        let alice_ids = messages(&pbx, "alice", 1).await;
        messages(&pbx, "dave", 1).await;
        voicemail(&pbx.node)
            .await
            .mark_message_read(MessageRequest {
                user: format!("alice@{DOMAIN}"),
                message_id: alice_ids[0].clone(),
                ..Default::default()
            })
            .await
            .unwrap();

        // dave's phone: its subscription's three NOTIFYs (the state, the
        // message, the end), all in its dialog.
        let run = subscriber.finish().await.unwrap();
        run.assert_all_successful(1);
        let received = received_at(pbx.dir.path(), subscriber_port);
        let notifies: Vec<&str> = received
            .iter()
            .map(|(_, m)| m.as_str())
            .filter(|m| m.starts_with("NOTIFY "))
            .collect();
        assert_eq!(notifies.len(), 3, "{received:#?}");
        let dialog = header(notifies[0], "Call-ID");
        assert!(
            notifies.iter().all(|n| header(n, "Call-ID") == dialog),
            "{notifies:#?}"
        );
        assert_eq!(summary(notifies[1]).1, "1/0 (0/0)");

        // alice's phone: nothing at all, so its run timed out waiting.
        let run = quiet.finish().await.unwrap();
        assert_eq!(run.successful, 0, "{}", run.output);
        assert!(run.received.is_empty(), "{:#?}", run.received);

        let text = scrape(&metrics).await;
        for outcome in ["ok", "rejected", "timeout", "dropped"] {
            assert_eq!(
                series(
                    &text,
                    &format!("dialtone_sip_unsolicited_mwi_total{{outcome=\"{outcome}\"}}")
                ),
                0.0,
                "{outcome}"
            );
        }
        pbx.node.stop().await.unwrap();
    })
    .await
}

/// The 200 a phone answers a request with (its Via, From, To, Call-ID,
/// CSeq).
fn ok_for(request: &str) -> String {
    let mut out = String::from("SIP/2.0 200 OK\r\n");
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        out.push_str(&format!("{name}: {}\r\n", header(request, name)));
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

#[tokio::test]
async fn over_tcp_the_notify_goes_on_the_connection_the_phone_registered_on() {
    use dialtone_sip::test_ua::{Register, TestUa};
    bounded(60, async {
        let (pbx, metrics) = pbx().await;
        box_for(&pbx, "alice", true).await;
        let mut phone = TestUa::tcp(pbx.node.sip_addr()).await.unwrap();
        let register = || {
            Register::new("alice", DOMAIN)
                .password(PASSWORD)
                .call_id("mwi-over-tcp")
        };
        assert_eq!(phone.register(&register()).await.unwrap().code, 200);

        // The new binding's NOTIFY, on the phone's own connection, after
        // the 200.
        let raw = phone
            .recv_message(Duration::from_secs(1))
            .await
            .unwrap()
            .expect("a NOTIFY within 1 s of the 200");
        let notify = String::from_utf8(raw).unwrap().replace('\r', "");
        assert!(notify.starts_with("NOTIFY sip:alice@"), "{notify}");
        assert!(
            header(&notify, "Via").starts_with("SIP/2.0/TCP "),
            "{notify}"
        );
        assert_eq!(header(&notify, "Subscription-State"), "active");
        assert_eq!(summary(&notify), ("no".into(), "0/0 (0/0)".into()));
        phone.send_raw(ok_for(&notify).as_bytes()).await.unwrap();

        // A refresh on the same connection: no NOTIFY.
        let refresh = register().cseq(10);
        assert_eq!(phone.register(&refresh).await.unwrap().code, 200);
        assert_eq!(
            phone
                .recv_message(Duration::from_millis(700))
                .await
                .unwrap(),
            None
        );

        // The box's settings change (the setting stays on): the counts
        // again, on the connection, found through the node's flows.
        let changed = SystemTime::now();
        voicemail(&pbx.node)
            .await
            .configure_mailbox(ConfigureMailboxRequest {
                user: format!("alice@{DOMAIN}"),
                max_messages: Some(50),
                ..Default::default()
            })
            .await
            .unwrap();
        let raw = phone
            .recv_message(Duration::from_secs(1))
            .await
            .unwrap()
            .expect("a NOTIFY within 1 s of the change");
        within(SystemTime::now(), changed, Duration::from_secs(1));
        let notify = String::from_utf8(raw).unwrap().replace('\r', "");
        assert_eq!(summary(&notify), ("no".into(), "0/0 (0/0)".into()));
        phone.send_raw(ok_for(&notify).as_bytes()).await.unwrap();

        eventually(
            Duration::from_secs(5),
            "two answered NOTIFYs counted",
            || async {
                let text = scrape(&metrics).await;
                Ok(
                    (series(&text, "dialtone_sip_unsolicited_mwi_total{outcome=\"ok\"}") == 2.0)
                        .then_some(()),
                )
            },
        )
        .await
        .unwrap();
        pbx.node.stop().await.unwrap();
    })
    .await
}

/// A capture of `ms` of RTP (PCMU, 20 ms packets) carrying a 440 Hz tone,
/// as SIPp's `play_pcap_audio` replays it: Ethernet, IPv4, UDP, RTP.
fn write_tone_pcap(path: &Path, ms: u64) {
    let mut out = Vec::new();
    // Global header: microsecond timestamps, Ethernet.
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&65_535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    let packets = ms / 20;
    for i in 0..packets {
        let mut rtp = Vec::with_capacity(172);
        rtp.push(0x80);
        rtp.push(if i == 0 { 0x80 } else { 0x00 });
        rtp.extend_from_slice(&(i as u16).to_be_bytes());
        rtp.extend_from_slice(&((i * 160) as u32).to_be_bytes());
        rtp.extend_from_slice(&0x4d57_4931u32.to_be_bytes());
        for n in 0..160u64 {
            let t = (i * 160 + n) as f64 / 8000.0;
            let sample = ((t * 440.0 * std::f64::consts::TAU).sin() * 8000.0) as i16;
            rtp.push(Law::Mu.encode(sample));
        }
        let udp_len = 8 + rtp.len();
        let ip_len = 20 + udp_len;
        let mut frame = Vec::with_capacity(14 + ip_len);
        frame.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 1, 0x08, 0x00]);
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&(ip_len as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1]);
        let checksum = !ip
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .fold(0u32, |a, w| {
                let s = a + w;
                (s & 0xffff) + (s >> 16)
            }) as u16;
        ip[10..12].copy_from_slice(&checksum.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&6000u16.to_be_bytes());
        frame.extend_from_slice(&6000u16.to_be_bytes());
        frame.extend_from_slice(&(udp_len as u16).to_be_bytes());
        frame.extend_from_slice(&0u16.to_be_bytes());
        frame.extend_from_slice(&rtp);
        let at_us = i * 20_000;
        out.extend_from_slice(&((at_us / 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&((at_us % 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&frame);
    }
    std::fs::write(path, out).unwrap();
}
