//! Calls to voicemail boxes over SIP with SIPp phones (ADR 0022): what a
//! call that cannot reach a box gets, and how calls answered by a box or
//! the mailbox menu are recorded (ADR 0024: call events, call detail
//! records through the API and the CLI). Real phones leaving messages and
//! the box surviving `kill -9` are in `phones.rs`; real phones driving the
//! menus with their digits, the PIN lock-out and a full box in
//! `voicemail_phones.rs`.

mod support;

use std::time::Duration;

use dialtone_api::pb::voicemail_service_client::VoicemailServiceClient;
use dialtone_api::pb::{
    CallCause, CallRecord, ConfigureMailboxRequest, ForwardReason, HangupSide, ListCallsRequest,
    SetForwardingRequest,
};
use serde_json::{json, Value};
use support::calls::{call_events, matches, Expected};
use support::pbx::{invite_statuses, Pbx};
use support::sip::{bounded, eventually, DOMAIN};

/// How long the SIPp callers of `call_uac_app_holds_3s.xml` hold the call.
const HELD_MS: i64 = 3_000;

/// The one finished call detail record of the domain, with `legs` legs.
async fn the_cdr(pbx: &Pbx, legs: usize) -> CallRecord {
    let list = || async {
        let page = pbx
            .node
            .audit()
            .await?
            .list_calls(ListCallsRequest {
                domain: DOMAIN.to_owned(),
                page_size: 100,
                ..Default::default()
            })
            .await?
            .into_inner();
        anyhow::Ok(page.calls)
    };
    let found = eventually(
        Duration::from_secs(5),
        "one finished call detail record",
        || async {
            Ok(match list().await?.as_slice() {
                [c] if !c.in_progress && c.legs.len() == legs => Some(c.clone()),
                _ => None,
            })
        },
    )
    .await;
    match found {
        Ok(r) => r,
        Err(e) => panic!("{e}; listed: {:#?}", list().await.unwrap()),
    }
}

/// Microseconds since the epoch of a set timestamp.
fn micros(ts: &Option<dialtone_api::prost_types::Timestamp>) -> i64 {
    let ts = ts.as_ref().expect("a timestamp");
    ts.seconds * 1_000_000 + i64::from(ts.nanos / 1000)
}

/// Asserts that `ms` is within a second of what the SIPp caller held.
fn held(what: &str, ms: i64, expected_ms: i64) {
    eprintln!("{what}: {ms} ms (expected {expected_ms} ms, ± 1 s)");
    assert!(
        (ms - expected_ms).abs() <= 1_000,
        "{what}: {ms} ms, expected {expected_ms} ms ± 1 s"
    );
}

/// The call events of `user`, waiting until they are `expected`.
async fn events_of(pbx: &Pbx, user: &str, expected: &[Expected]) -> Vec<(String, Value)> {
    let id = pbx.id(user).to_owned();
    let found = eventually(Duration::from_secs(5), "the call events", || async {
        let events = call_events(&pbx.node, &id).await;
        Ok(matches(&events, expected).then_some(events))
    })
    .await;
    match found {
        Ok(events) => events,
        Err(_) => panic!(
            "{user}: expected {expected:#?}\nfound {:#?}",
            call_events(&pbx.node, &id).await
        ),
    }
}

/// The data of the event of type `ty` among `events`.
fn data<'a>(events: &'a [(String, Value)], ty: &str) -> &'a Value {
    &events.iter().find(|(t, _)| t == ty).expect(ty).1
}

/// The `dialtone calls` table's line of the domain's one call.
async fn cli_line(pbx: &Pbx) -> String {
    let out = pbx.node.cli(&["calls", DOMAIN]).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "a header and one call: {text}");
    lines[1].to_owned()
}

/// bob has a box and no phone: his calls go to voicemail when he is
/// unavailable.
async fn bob_forwards_to_his_box(pbx: &Pbx) {
    enable_box(pbx, "bob").await;
    pbx.forward(
        "bob",
        SetForwardingRequest {
            unavailable: Some("voicemail".into()),
            ..Default::default()
        },
    )
    .await;
}

async fn enable_box(pbx: &Pbx, user: &str) {
    VoicemailServiceClient::new(pbx.node.channel().await.unwrap())
        .configure_mailbox(ConfigureMailboxRequest {
            user: format!("{user}@{}", support::sip::DOMAIN),
            enabled: Some(true),
            pin: Some("4321".into()),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// A caller that offers only opus reaches bob's box (bob has no phone;
/// his calls go to voicemail when unavailable): 488 with the reason, and
/// the call is not answered.
#[tokio::test]
async fn an_offer_without_a_common_codec_gets_488_from_the_box() {
    bounded(60, async {
        let pbx = Pbx::start(&[]).await;
        enable_box(&pbx, "bob").await;
        pbx.forward(
            "bob",
            SetForwardingRequest {
                unavailable: Some("voicemail".into()),
                ..Default::default()
            },
        )
        .await;
        let run = pbx.call_bob("call_uac_opus_only.xml").await;
        assert_eq!(invite_statuses(&run), [407, 488], "{:#?}", run.received);
        let refusal = run
            .received
            .iter()
            .find(|m| m.starts_with("SIP/2.0 488"))
            .unwrap();
        assert!(
            refusal.lines().next().unwrap().contains("opus"),
            "the reason names what was offered: {refusal}"
        );
        pbx.node.stop().await.unwrap();
    })
    .await
}

/// A box that is off is no forward target: the call to bob (no phone) is
/// refused as unavailable, as without the rule.
#[tokio::test]
async fn a_box_that_is_off_is_not_a_target() {
    bounded(60, async {
        let pbx = Pbx::start(&[]).await;
        pbx.forward(
            "bob",
            SetForwardingRequest {
                unavailable: Some("voicemail".into()),
                ..Default::default()
            },
        )
        .await;
        let run = pbx.call_bob("call_uac_fails.xml").await;
        assert_eq!(invite_statuses(&run), [407, 480], "{:#?}", run.received);
        pbx.node.stop().await.unwrap();
    })
    .await
}

/// alice calls bob, whose calls go to his box: her leg is an answered
/// call — answered by `voicemail:bob`, with the duration she held it —
/// in her events, the call detail record (API and CLI); bob's leg says
/// the call went to his box.
#[tokio::test]
async fn a_call_forwarded_to_voicemail_is_answered_by_the_box_in_the_records() {
    forwarded_to_voicemail(&[]).await;
}

/// The same in b2bua mode (ADR 0013): the node calls the box on a leg of
/// its own.
#[tokio::test]
async fn a_call_forwarded_to_voicemail_in_b2bua_mode_is_answered_by_the_box_in_the_records() {
    forwarded_to_voicemail(&["--sip-call-mode", "b2bua"]).await;
}

async fn forwarded_to_voicemail(args: &[&str]) {
    bounded(90, async {
        let pbx = Pbx::start(args).await;
        bob_forwards_to_his_box(&pbx).await;
        let run = pbx.call_bob("call_uac_app_holds_3s.xml").await;
        run.assert_all_successful(1);
        assert_eq!(invite_statuses(&run), [407, 200], "{:#?}", run.received);

        let box_name = format!("voicemail:bob@{DOMAIN}");
        let alice = events_of(
            &pbx,
            "alice",
            &[
                (
                    "CallStarted",
                    json!({ "direction": "outbound", "to": format!("bob@{DOMAIN}") }),
                ),
                ("CallAnswered", json!({ "contact": box_name })),
                (
                    "CallEnded",
                    json!({ "cause": "normal_clearing", "hangup_side": "caller" }),
                ),
            ],
        )
        .await;
        let ended = data(&alice, "CallEnded");
        held(
            "alice's CallEnded",
            ended["duration_ms"].as_i64().unwrap(),
            HELD_MS,
        );
        events_of(
            &pbx,
            "bob",
            &[
                ("CallStarted", json!({ "direction": "inbound" })),
                (
                    "CallForwarded",
                    json!({ "to": box_name, "reason": "unavailable" }),
                ),
            ],
        )
        .await;

        let cdr = the_cdr(&pbx, 2).await;
        assert_eq!(cdr.caller, format!("alice@{DOMAIN}"), "{cdr:#?}");
        assert_eq!(cdr.callee, format!("bob@{DOMAIN}"), "{cdr:#?}");
        assert_eq!(cdr.sip_status, 200, "{cdr:#?}");
        assert_eq!(cdr.answered_contact, box_name, "{cdr:#?}");
        assert_eq!(cdr.cause(), CallCause::NormalClearing, "{cdr:#?}");
        assert_eq!(cdr.hangup_side(), HangupSide::Caller, "{cdr:#?}");
        held("the record's duration", cdr.duration_ms as i64, HELD_MS);
        held(
            "answer to end",
            (micros(&cdr.ended_at) - micros(&cdr.answered_at)) / 1000,
            HELD_MS,
        );
        assert_eq!(cdr.legs[0].user_id, pbx.id("alice"), "{cdr:#?}");
        assert_eq!(cdr.legs[1].user_id, pbx.id("bob"), "{cdr:#?}");
        assert_eq!(cdr.legs[1].forwarded_to, box_name, "{cdr:#?}");
        assert_eq!(cdr.legs[1].forward_reason(), ForwardReason::Unavailable);

        let line = cli_line(&pbx).await;
        assert!(
            line.contains(&format!(" {}s ", cdr.duration_ms / 1000)),
            "{line}"
        );
        assert!(line.contains("200 normal_clearing"), "{line}");
        assert!(
            line.contains(&format!("-> {box_name} (unavailable)")),
            "{line}"
        );
        assert!(line.contains(&format!("answered by {box_name}")), "{line}");
        pbx.node.stop().await.unwrap();
    })
    .await
}

/// The caller sends no RTP: the box hangs up at the RTP timeout (2 s
/// here), and alice's call is recorded as ended by a timeout of the
/// node's, not as the box hanging up.
#[tokio::test]
async fn a_voicemail_call_ended_by_the_rtp_timeout_is_recorded_as_a_timeout() {
    ended_by_rtp_timeout(&[]).await;
}

#[tokio::test]
async fn a_voicemail_call_in_b2bua_mode_ended_by_the_rtp_timeout_is_recorded_as_a_timeout() {
    ended_by_rtp_timeout(&["--sip-call-mode", "b2bua"]).await;
}

async fn ended_by_rtp_timeout(args: &[&str]) {
    bounded(90, async {
        let mut all = vec!["--rtp-timeout-secs", "2"];
        all.extend_from_slice(args);
        let pbx = Pbx::start(&all).await;
        bob_forwards_to_his_box(&pbx).await;
        let run = pbx.call_bob("call_uac_callee_hangs_up.xml").await;
        run.assert_all_successful(1);
        let bye = run
            .received
            .iter()
            .find(|m| m.starts_with("BYE "))
            .unwrap_or_else(|| panic!("no BYE: {:#?}", run.received));
        assert!(bye.contains("RTP timeout"), "the BYE says why: {bye}");

        let alice = events_of(
            &pbx,
            "alice",
            &[
                ("CallStarted", json!({ "direction": "outbound" })),
                (
                    "CallAnswered",
                    json!({ "contact": format!("voicemail:bob@{DOMAIN}") }),
                ),
                (
                    "CallEnded",
                    json!({ "cause": "timeout", "hangup_side": "system" }),
                ),
            ],
        )
        .await;
        held(
            "alice's CallEnded",
            data(&alice, "CallEnded")["duration_ms"].as_i64().unwrap(),
            2_000,
        );
        let cdr = the_cdr(&pbx, 2).await;
        assert_eq!(cdr.cause(), CallCause::Timeout, "{cdr:#?}");
        assert_eq!(cdr.hangup_side(), HangupSide::System, "{cdr:#?}");
        held("the record's duration", cdr.duration_ms as i64, 2_000);
        pbx.node.stop().await.unwrap();
    })
    .await
}

/// alice dials `*97` and holds her mailbox's menu for 3 s: one outbound
/// leg to `*97`, answered by her mailbox's menu, ended by her, with the
/// duration she held it (events, API record, CLI).
#[tokio::test]
async fn a_mailbox_menu_call_is_a_call_of_the_caller() {
    bounded(90, async {
        let pbx = Pbx::start(&[]).await;
        enable_box(&pbx, "alice").await;
        let run = pbx.call("*97", "call_uac_app_holds_3s.xml").await;
        run.assert_all_successful(1);

        let menu = format!("voicemail-menu:alice@{DOMAIN}");
        let alice = events_of(
            &pbx,
            "alice",
            &[
                (
                    "CallStarted",
                    json!({
                        "direction": "outbound",
                        "from": format!("alice@{DOMAIN}"),
                        "to": format!("*97@{DOMAIN}"),
                    }),
                ),
                ("CallAnswered", json!({ "contact": menu })),
                (
                    "CallEnded",
                    json!({ "cause": "normal_clearing", "hangup_side": "caller" }),
                ),
            ],
        )
        .await;
        let ended = data(&alice, "CallEnded");
        held(
            "alice's CallEnded",
            ended["duration_ms"].as_i64().unwrap(),
            HELD_MS,
        );

        let cdr = the_cdr(&pbx, 1).await;
        assert_eq!(cdr.callee, format!("*97@{DOMAIN}"), "{cdr:#?}");
        assert_eq!(cdr.sip_status, 200, "{cdr:#?}");
        assert_eq!(cdr.answered_contact, menu, "{cdr:#?}");
        assert_eq!(cdr.cause(), CallCause::NormalClearing, "{cdr:#?}");
        assert_eq!(cdr.hangup_side(), HangupSide::Caller, "{cdr:#?}");
        held("the record's duration", cdr.duration_ms as i64, HELD_MS);
        let line = cli_line(&pbx).await;
        assert!(line.contains(&format!("*97@{DOMAIN}")), "{line}");
        assert!(line.contains("200 normal_clearing"), "{line}");
        assert!(line.contains(&format!("answered by {menu}")), "{line}");
        pbx.node.stop().await.unwrap();
    })
    .await
}

/// The menu's caller sends no RTP: the menu hangs up at the RTP timeout
/// and the call is recorded as a timeout of the node's.
#[tokio::test]
async fn a_mailbox_menu_call_ended_by_the_rtp_timeout_is_recorded_as_a_timeout() {
    bounded(90, async {
        let pbx = Pbx::start(&["--rtp-timeout-secs", "2"]).await;
        enable_box(&pbx, "alice").await;
        let run = pbx.call("*97", "call_uac_callee_hangs_up.xml").await;
        run.assert_all_successful(1);
        let alice = events_of(
            &pbx,
            "alice",
            &[
                (
                    "CallStarted",
                    json!({ "direction": "outbound", "to": format!("*97@{DOMAIN}") }),
                ),
                (
                    "CallAnswered",
                    json!({ "contact": format!("voicemail-menu:alice@{DOMAIN}") }),
                ),
                (
                    "CallEnded",
                    json!({ "cause": "timeout", "hangup_side": "system" }),
                ),
            ],
        )
        .await;
        held(
            "alice's CallEnded",
            data(&alice, "CallEnded")["duration_ms"].as_i64().unwrap(),
            2_000,
        );
        pbx.node.stop().await.unwrap();
    })
    .await
}

/// The SDP body of the 200 to the INVITE with CSeq number `cseq`.
fn answer_to(run: &support::sip::SippRun, cseq: u32) -> String {
    let ok = run
        .received
        .iter()
        .find(|m| {
            m.starts_with("SIP/2.0 200")
                && m.lines().any(|l| {
                    l.trim()
                        .eq_ignore_ascii_case(&format!("CSeq: {cseq} INVITE"))
                })
        })
        .unwrap_or_else(|| panic!("no 200 to INVITE {cseq}: {:#?}", run.received));
    let (_, body) = ok
        .split_once("\r\n\r\n")
        .or_else(|| ok.split_once("\n\n"))
        .unwrap_or((ok, ""));
    body.replace('\r', "")
}

/// A mailbox menu call held and resumed by re-INVITEs (RFC 3264 s.8.4,
/// RFC 6337 s.5): the hold (`sendonly`) is answered `recvonly`; the
/// resume moves the phone's audio to another port, answered `sendrecv` on
/// the same session, and the menu's prompts go on at the new address until
/// the hang-up.
#[tokio::test]
async fn a_mailbox_menu_call_is_held_and_resumed_at_another_address() {
    bounded(90, async {
        let pbx = Pbx::start(&[]).await;
        enable_box(&pbx, "alice").await;
        let resumed = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let resume_port = resumed.local_addr().unwrap().port();
        // Every packet that reaches the new address, with when it came.
        let listener = tokio::spawn(async move {
            let mut arrivals = Vec::new();
            let mut buf = [0u8; 2048];
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(8), resumed.recv(&mut buf)).await
            {
                arrivals.push((std::time::Instant::now(), buf[..n].to_vec()));
            }
            arrivals
        });
        let run = support::sip::Sipp::new(
            "call_uac_app_reinvite.xml",
            pbx.node.sip_addr(),
            pbx.dir.path(),
        )
        .users(&[("alice".into(), support::sip::PASSWORD.into())])
        .key("callee", "*97")
        .key("callee_domain", DOMAIN)
        .key("resume_port", &resume_port.to_string())
        .timeout_secs(30)
        .run()
        .await
        .unwrap();
        run.assert_all_successful(1);

        let first = answer_to(&run, 2);
        let hold = answer_to(&run, 3);
        let resume = answer_to(&run, 4);
        let m_line = |sdp: &str| {
            sdp.lines()
                .find(|l| l.starts_with("m=audio "))
                .map(str::to_owned)
                .unwrap_or_else(|| panic!("no audio stream: {sdp}"))
        };
        // One media session all along: the same port answers each offer.
        assert_eq!(m_line(&hold), m_line(&first), "{hold}");
        assert_eq!(m_line(&resume), m_line(&first), "{resume}");
        assert!(hold.lines().any(|l| l == "a=recvonly"), "{hold}");
        assert!(
            !resume
                .lines()
                .any(|l| matches!(l, "a=recvonly" | "a=sendonly" | "a=inactive")),
            "{resume}"
        );

        // The scenario resumes 1 s + 1.5 s after its ACK (plus the round
        // trips) and hangs up 2.5 s later: the new address hears the menu
        // for most of those 2.5 s, as PCMU RTP (version 2, type 0).
        let arrivals = listener.await.unwrap();
        assert!(
            arrivals.len() >= 60,
            "{} packets at the new address in 2.5 s",
            arrivals.len()
        );
        for (_, packet) in &arrivals {
            assert!(packet.len() >= 12, "{packet:?}");
            if packet[1] & 0x7f < 64 {
                assert_eq!(packet[0] >> 6, 2, "RTP version");
                assert_eq!(packet[1] & 0x7f, 0, "PCMU");
            }
        }
        let flowing = arrivals[arrivals.len() - 1].0 - arrivals[0].0;
        assert!(
            flowing >= Duration::from_millis(1_500),
            "audio at the new address for {flowing:?} of the 2.5 s before the hang-up"
        );
        pbx.node.stop().await.unwrap();
    })
    .await
}
