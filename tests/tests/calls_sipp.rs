//! Calls through the stateful forking proxy, black box: a real node
//! process, users provisioned over gRPC, SIPp as the caller (a UAC run
//! against the node) and as the callee (a UAS in server mode on the port
//! that the callee's registered contact points at). Each test asserts what
//! SIPp saw (its exit code and statistics, and the message trace), then
//! the call events in both users' streams, then the call detail record
//! that `AuditService.ListCalls` returns for the call.
//!
//! SIPp 3.6.1 reads only the first `Proxy-Authenticate`, so the node offers
//! MD5 first (`--sip-challenge-md5-first`).

mod support;

use std::time::{Duration, Instant};

use dialtone_api::pb::{CallCause, CallDirection, CallRecord, HangupSide, ListCallsRequest, User};
use dialtone_api::prost_types::Timestamp;
use serde_json::json;
use support::calls::{
    answered, assert_call_events, failed, maybe_ringing, ringing, started, Expected,
};
use support::sip::{
    bounded, create_domain, create_user, eventually, Sipp, SippRun, DOMAIN, PASSWORD,
};
use support::TestNode;

/// A second domain, for the cross-domain call.
const OTHER_DOMAIN: &str = "other.test";

/// A node with [`DOMAIN`], the caller alice and the callee bob.
struct Calls {
    dir: tempfile::TempDir,
    node: TestNode,
    alice: User,
    bob: User,
}

impl Calls {
    async fn start(extra_args: &[&str]) -> Calls {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["--sip-challenge-md5-first"];
        args.extend_from_slice(extra_args);
        let node = TestNode::start(dir.path(), &args).await.unwrap();
        create_domain(&node, DOMAIN).await.unwrap();
        let alice = create_user(&node, DOMAIN, "alice", PASSWORD, 0)
            .await
            .unwrap();
        let bob = create_user(&node, DOMAIN, "bob", PASSWORD, 0)
            .await
            .unwrap();
        Calls {
            dir,
            node,
            alice,
            bob,
        }
    }

    /// Registers `user@domain` with a contact on `127.0.0.1:port`.
    async fn register(&self, user: &str, domain: &str, port: u16) {
        Sipp::new("register_auth.xml", self.node.sip_addr(), self.dir.path())
            .users(&[(user.into(), PASSWORD.into())])
            .key("domain", domain)
            .key("contact_hostport", &format!("127.0.0.1:{port}"))
            .run()
            .await
            .unwrap()
            .assert_all_successful(1);
    }

    /// Starts a SIPp UAS running `scenario` once (`-m 1`) on a fresh port
    /// and waits until it listens.
    async fn uas(&self, scenario: &str) -> Uas {
        let mut uas = Sipp::new(scenario, self.node.sip_addr(), self.dir.path())
            .users(&[("bob".into(), PASSWORD.into())])
            .timeout_secs(20)
            .start()
            .await
            .unwrap();
        if !uas.is_running() {
            panic!(
                "SIPp UAS {scenario} exited before it listened: {:#?}",
                uas.finish().await
            );
        }
        Uas {
            port: uas.port(),
            run: tokio::spawn(uas.finish()),
        }
    }

    /// Starts a SIPp UAS, registered as bob's (only) contact.
    async fn callee(&self, scenario: &str) -> Uas {
        let uas = self.uas(scenario).await;
        self.register("bob", DOMAIN, uas.port).await;
        uas
    }

    /// alice calls `callee@callee_domain` with the UAC `scenario`.
    async fn call(&self, scenario: &str, callee: &str, callee_domain: &str) -> SippRun {
        Sipp::new(scenario, self.node.sip_addr(), self.dir.path())
            .users(&[("alice".into(), PASSWORD.into())])
            .key("callee", callee)
            .key("callee_domain", callee_domain)
            .timeout_secs(20)
            .run()
            .await
            .unwrap()
    }

    /// alice calls bob.
    async fn call_bob(&self, scenario: &str) -> SippRun {
        self.call(scenario, "bob", DOMAIN).await
    }
}

/// A SIPp UAS running in the background.
struct Uas {
    port: u16,
    run: tokio::task::JoinHandle<anyhow::Result<SippRun>>,
}

impl Uas {
    /// Waits for the UAS to exit (it does after its one call, or fails at
    /// its `-timeout`) and checks that its call succeeded.
    async fn finish(self) -> SippRun {
        let run = self.run.await.unwrap().unwrap();
        assert!(
            run.exit_code == Some(0) && run.successful == 1,
            "SIPp UAS failed; received {:#?}\n{}",
            run.received,
            run.output
        );
        run
    }
}

/// The messages SIPp received, one word each: a response as
/// `"<status> <CSeq method>"`, a request as its method. `100 Trying` is left
/// out and retransmissions (the same message twice in a row) appear once.
fn summary(run: &SippRun) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut previous: Option<&String> = None;
    for m in &run.received {
        if previous.replace(m) == Some(m) {
            continue;
        }
        let first = m.lines().next().unwrap_or_default();
        let item = match first.strip_prefix("SIP/2.0 ") {
            Some(rest) => {
                let code = rest.split_whitespace().next().unwrap_or_default();
                if code == "100" {
                    continue;
                }
                let method = m
                    .lines()
                    .find_map(|l| l.strip_prefix("CSeq:"))
                    .and_then(|c| c.split_whitespace().nth(1))
                    .unwrap_or("?");
                format!("{code} {method}")
            }
            None => first
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned(),
        };
        out.push(item);
    }
    out
}

/// How many Via headers `message` has.
fn vias(message: &str) -> usize {
    message.lines().filter(|l| l.starts_with("Via:")).count()
}

/// The first received message that starts with `start_line`.
fn received<'a>(run: &'a SippRun, start_line: &str) -> &'a str {
    run.received
        .iter()
        .find(|m| m.starts_with(start_line))
        .unwrap_or_else(|| panic!("no {start_line} in {:#?}", run.received))
}

// --- Call events -----------------------------------------------------------

/// Answered by the contact `contact`.
fn answered_by(contact: &str) -> Expected {
    ("CallAnswered", json!({ "contact": contact }))
}

fn ended(hangup_side: &str) -> Expected {
    (
        "CallEnded",
        json!({ "cause": "normal_clearing", "hangup_side": hangup_side }),
    )
}

// --- Call detail records --------------------------------------------------

/// The SIP Call-ID of the call SIPp `run` made (from the responses it
/// received).
fn sip_call_id(run: &SippRun) -> String {
    run.received
        .iter()
        .flat_map(|m| m.lines())
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            let name = name.trim();
            (name.eq_ignore_ascii_case("Call-ID") || name.eq_ignore_ascii_case("i"))
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no Call-ID in {:#?}", run.received))
}

/// How an answered call must be recorded.
struct Answer {
    /// Who hung up.
    side: HangupSide,
    /// The contact URI that answered.
    contact: String,
    /// How long the scenarios hold the call between answer and BYE.
    hold: Duration,
}

/// What the call detail record of a test's call must say.
struct ExpectedCdr<'a> {
    /// `user@domain`.
    caller: String,
    callee: String,
    sip_call_id: String,
    cause: CallCause,
    sip_status: u32,
    /// `None`: the call failed before an answer.
    answer: Option<Answer>,
    /// The user ids of the legs, the caller's first.
    legs: Vec<&'a str>,
}

impl<'a> ExpectedCdr<'a> {
    /// alice's call (made by SIPp `caller`) to `callee`, answered by
    /// `contact` and hung up normally by `side` after about `hold`.
    fn answered(
        caller: &SippRun,
        callee: &str,
        legs: Vec<&'a str>,
        side: HangupSide,
        contact: String,
        hold: Duration,
    ) -> Self {
        ExpectedCdr {
            caller: format!("alice@{DOMAIN}"),
            callee: callee.to_owned(),
            sip_call_id: sip_call_id(caller),
            cause: CallCause::NormalClearing,
            sip_status: 200,
            answer: Some(Answer {
                side,
                contact,
                hold,
            }),
            legs,
        }
    }

    /// alice's call (made by SIPp `caller`) to `callee`, failed with
    /// `sip_status` and `cause`.
    fn failed(
        caller: &SippRun,
        callee: &str,
        legs: Vec<&'a str>,
        sip_status: u32,
        cause: CallCause,
    ) -> Self {
        ExpectedCdr {
            caller: format!("alice@{DOMAIN}"),
            callee: callee.to_owned(),
            sip_call_id: sip_call_id(caller),
            cause,
            sip_status,
            answer: None,
            legs,
        }
    }
}

/// Every call detail record of `domain`, all pages.
async fn list_calls(node: &TestNode, domain: &str) -> anyhow::Result<Vec<CallRecord>> {
    let mut audit = node.audit().await?;
    let mut calls = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = audit
            .list_calls(ListCallsRequest {
                domain: domain.to_owned(),
                from_time: None,
                to_time: None,
                page_size: 100,
                page_token,
            })
            .await?
            .into_inner();
        calls.extend(page.calls);
        if page.next_page_token.is_empty() {
            return Ok(calls);
        }
        page_token = page.next_page_token;
    }
}

/// Microseconds since the epoch of a set timestamp.
fn micros(what: &str, ts: Option<&Timestamp>) -> i64 {
    let ts = ts.unwrap_or_else(|| panic!("{what} is not set"));
    ts.seconds * 1_000_000 + i64::from(ts.nanos / 1000)
}

/// Asserts that `domain` lists exactly one call detail record, the test's
/// call, as `expected` says (waiting for the legs' outcomes, which are
/// appended asynchronously, to be recorded).
async fn assert_cdr(node: &TestNode, domain: &str, expected: &ExpectedCdr<'_>) {
    let settled = eventually(
        Duration::from_secs(5),
        &format!("one finished call detail record in {domain}"),
        || async {
            let calls = list_calls(node, domain).await?;
            Ok(match calls.as_slice() {
                [c] if !c.in_progress && c.legs.len() == expected.legs.len() => Some(c.clone()),
                _ => None,
            })
        },
    )
    .await;
    let r = match settled {
        Ok(r) => r,
        Err(e) => panic!(
            "{e}; listed: {:#?}",
            list_calls(node, domain).await.unwrap()
        ),
    };
    let ctx = format!("{r:#?}");
    assert!(!r.call_id.is_empty(), "{ctx}");
    assert_eq!(r.caller, expected.caller, "{ctx}");
    assert_eq!(r.callee, expected.callee, "{ctx}");
    assert_eq!(r.sip_call_id, expected.sip_call_id, "{ctx}");
    assert_eq!(r.cause(), expected.cause, "{ctx}");
    assert_eq!(r.sip_status, expected.sip_status, "{ctx}");
    assert!(!r.in_progress, "{ctx}");
    let started = micros("started_at", r.started_at.as_ref());
    let ended = micros("ended_at", r.ended_at.as_ref());
    assert!(ended >= started, "ended before it started: {ctx}");
    match &expected.answer {
        Some(a) => {
            let answered = micros("answered_at", r.answered_at.as_ref());
            assert!(
                started <= answered && answered <= ended,
                "answered outside [started, ended]: {ctx}"
            );
            assert_eq!(r.hangup_side(), a.side, "{ctx}");
            assert_eq!(r.answered_contact, a.contact, "{ctx}");
            // From answer to end, as the timestamps say (to the ms)...
            let span_ms = (ended - answered) / 1000;
            assert!(
                i64::try_from(r.duration_ms).unwrap().abs_diff(span_ms) <= 1,
                "duration_ms is not ended_at - answered_at ({span_ms} ms): {ctx}"
            );
            // ... and about the time the scenarios hold the call.
            let duration = Duration::from_millis(r.duration_ms);
            assert!(
                duration >= a.hold / 2 && duration <= a.hold + Duration::from_secs(3),
                "duration {duration:?} for a call held {:?}: {ctx}",
                a.hold
            );
        }
        None => {
            assert_eq!(r.answered_at, None, "{ctx}");
            assert_eq!(r.hangup_side(), HangupSide::Unspecified, "{ctx}");
            assert_eq!(r.answered_contact, "", "{ctx}");
            assert_eq!(r.duration_ms, 0, "{ctx}");
        }
    }
    // The legs: the caller's first, then the callee's, each finished with
    // the call's outcome.
    let users: Vec<&str> = r.legs.iter().map(|l| l.user_id.as_str()).collect();
    assert_eq!(users, expected.legs, "{ctx}");
    for (i, leg) in r.legs.iter().enumerate() {
        let direction = if i == 0 {
            CallDirection::Outbound
        } else {
            CallDirection::Inbound
        };
        assert_eq!(leg.direction(), direction, "leg {i}: {ctx}");
        assert!(!leg.in_progress, "leg {i}: {ctx}");
        assert_eq!(leg.cause(), expected.cause, "leg {i}: {ctx}");
        assert_eq!(leg.sip_status, expected.sip_status, "leg {i}: {ctx}");
        assert_eq!(
            leg.answered_at.is_some(),
            expected.answer.is_some(),
            "leg {i}: {ctx}"
        );
        let side = expected
            .answer
            .as_ref()
            .map_or(HangupSide::Unspecified, |a| a.side);
        assert_eq!(leg.hangup_side(), side, "leg {i}: {ctx}");
    }
}

// --- Tests -----------------------------------------------------------------

#[tokio::test]
async fn answered_call_hung_up_by_the_caller() {
    bounded(60, async {
        let t = Calls::start(&[]).await;
        let uas = t.callee("call_uas.xml").await;
        let uas_port = uas.port;

        let caller = t.call_bob("call_uac.xml").await;
        caller.assert_all_successful(1);
        assert_eq!(
            summary(&caller),
            ["407 INVITE", "180 INVITE", "200 INVITE", "200 BYE"]
        );
        let callee = uas.finish().await;
        assert_eq!(summary(&callee), ["INVITE", "ACK", "BYE"]);
        // The proxy stays in the dialog: the ACK and BYE came through it.
        for request in ["ACK ", "BYE "] {
            assert_eq!(
                vias(received(&callee, request)),
                2,
                "{:#?}",
                callee.received
            );
        }

        assert_call_events(
            &t.node,
            &[
                (
                    &t.alice.id,
                    vec![started("outbound"), ringing(), answered(), ended("caller")],
                ),
                (
                    &t.bob.id,
                    vec![started("inbound"), ringing(), answered(), ended("caller")],
                ),
            ],
        )
        .await;
        // call_uac.xml hangs up 200 ms after its ACK.
        assert_cdr(
            &t.node,
            DOMAIN,
            &ExpectedCdr::answered(
                &caller,
                &format!("bob@{DOMAIN}"),
                vec![&t.alice.id, &t.bob.id],
                HangupSide::Caller,
                format!("sip:bob@127.0.0.1:{uas_port}"),
                Duration::from_millis(200),
            ),
        )
        .await;
        t.node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn answered_call_hung_up_by_the_callee() {
    bounded(60, async {
        let t = Calls::start(&[]).await;
        let uas = t.callee("call_uas_hangs_up.xml").await;
        let uas_port = uas.port;

        let caller = t.call_bob("call_uac_callee_hangs_up.xml").await;
        caller.assert_all_successful(1);
        assert_eq!(
            summary(&caller),
            ["407 INVITE", "180 INVITE", "200 INVITE", "BYE"]
        );
        // The callee's BYE reached the caller through the proxy, which
        // popped its own Route.
        let bye = received(&caller, "BYE ");
        assert!(!bye.contains("\nRoute:"), "{bye}");
        let callee = uas.finish().await;
        assert_eq!(summary(&callee), ["INVITE", "ACK", "200 BYE"]);

        assert_call_events(
            &t.node,
            &[
                (
                    &t.alice.id,
                    vec![started("outbound"), ringing(), answered(), ended("callee")],
                ),
                (
                    &t.bob.id,
                    vec![started("inbound"), ringing(), answered(), ended("callee")],
                ),
            ],
        )
        .await;
        // call_uas_hangs_up.xml hangs up 200 ms after the ACK.
        assert_cdr(
            &t.node,
            DOMAIN,
            &ExpectedCdr::answered(
                &caller,
                &format!("bob@{DOMAIN}"),
                vec![&t.alice.id, &t.bob.id],
                HangupSide::Callee,
                format!("sip:bob@127.0.0.1:{uas_port}"),
                Duration::from_millis(200),
            ),
        )
        .await;
        t.node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn a_call_beyond_the_maximum_duration_is_ended_by_the_proxy() {
    bounded(60, async {
        // Both phones wait for the other to hang up, forever: the proxy
        // ends the call after 2 s with a BYE to each side.
        let t = Calls::start(&["--sip-max-call-secs", "2"]).await;
        let uas = t.callee("call_uas.xml").await;
        let uas_port = uas.port;
        let began = Instant::now();
        let caller = t.call_bob("call_uac_callee_hangs_up.xml").await;
        let took = began.elapsed();
        caller.assert_all_successful(1);
        assert_eq!(
            summary(&caller),
            ["407 INVITE", "180 INVITE", "200 INVITE", "BYE"]
        );
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(6),
            "ended after {took:?}"
        );
        let bye = received(&caller, "BYE ");
        assert!(bye.contains("Maximum call duration"), "{bye}");
        let callee = uas.finish().await;
        assert_eq!(summary(&callee), ["INVITE", "ACK", "BYE"]);

        let timeout = || {
            (
                "CallEnded",
                json!({ "cause": "timeout", "hangup_side": "system" }),
            )
        };
        assert_call_events(
            &t.node,
            &[
                (
                    &t.alice.id,
                    vec![started("outbound"), ringing(), answered(), timeout()],
                ),
                (
                    &t.bob.id,
                    vec![started("inbound"), ringing(), answered(), timeout()],
                ),
            ],
        )
        .await;
        let mut expected = ExpectedCdr::answered(
            &caller,
            &format!("bob@{DOMAIN}"),
            vec![&t.alice.id, &t.bob.id],
            HangupSide::System,
            format!("sip:bob@127.0.0.1:{uas_port}"),
            Duration::from_secs(2),
        );
        expected.cause = CallCause::Timeout;
        assert_cdr(&t.node, DOMAIN, &expected).await;
        t.node.stop().await.unwrap();
    })
    .await
}

/// The callee (`scenario`) answers `status reason`: the caller sees that
/// status (and ACKs it), the callee gets the proxy's ACK; then the events.
async fn rejected_call(
    scenario: &str,
    status: u16,
    reason: &str,
    cause: &str,
    cdr_cause: CallCause,
) {
    let t = Calls::start(&[]).await;
    let uas = t.callee(scenario).await;

    let caller = t.call_bob("call_uac_fails.xml").await;
    caller.assert_all_successful(1);
    assert_eq!(
        summary(&caller),
        ["407 INVITE".to_owned(), format!("{status} INVITE")]
    );
    assert!(
        received(&caller, &format!("SIP/2.0 {status} {reason}")).contains(";tag="),
        "{:#?}",
        caller.received
    );
    let callee = uas.finish().await;
    assert_eq!(summary(&callee), ["INVITE", "ACK"]);

    assert_call_events(
        &t.node,
        &[
            (
                &t.alice.id,
                vec![started("outbound"), maybe_ringing(), failed(status, cause)],
            ),
            (
                &t.bob.id,
                vec![started("inbound"), maybe_ringing(), failed(status, cause)],
            ),
        ],
    )
    .await;
    assert_cdr(
        &t.node,
        DOMAIN,
        &ExpectedCdr::failed(
            &caller,
            &format!("bob@{DOMAIN}"),
            vec![&t.alice.id, &t.bob.id],
            u32::from(status),
            cdr_cause,
        ),
    )
    .await;
    t.node.stop().await.unwrap();
}

#[tokio::test]
async fn busy_callee_486() {
    bounded(
        60,
        rejected_call(
            "call_uas_busy.xml",
            486,
            "Busy Here",
            "user_busy",
            CallCause::UserBusy,
        ),
    )
    .await
}

#[tokio::test]
async fn callee_declines_603() {
    bounded(
        60,
        rejected_call(
            "call_uas_declines.xml",
            603,
            "Decline",
            "call_rejected",
            CallCause::CallRejected,
        ),
    )
    .await
}

#[tokio::test]
async fn caller_cancels_while_ringing_487() {
    bounded(60, async {
        let t = Calls::start(&[]).await;
        let uas = t.callee("call_uas_rings.xml").await;

        let caller = t.call_bob("call_uac_cancel.xml").await;
        caller.assert_all_successful(1);
        assert_eq!(
            summary(&caller),
            ["407 INVITE", "180 INVITE", "200 CANCEL", "487 INVITE"]
        );
        let callee = uas.finish().await;
        assert_eq!(summary(&callee), ["INVITE", "CANCEL", "ACK"]);

        assert_call_events(
            &t.node,
            &[
                (
                    &t.alice.id,
                    vec![
                        started("outbound"),
                        ringing(),
                        failed(487, "originator_cancel"),
                    ],
                ),
                (
                    &t.bob.id,
                    vec![
                        started("inbound"),
                        ringing(),
                        failed(487, "originator_cancel"),
                    ],
                ),
            ],
        )
        .await;
        assert_cdr(
            &t.node,
            DOMAIN,
            &ExpectedCdr::failed(
                &caller,
                &format!("bob@{DOMAIN}"),
                vec![&t.alice.id, &t.bob.id],
                487,
                CallCause::OriginatorCancel,
            ),
        )
        .await;
        t.node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn no_answer_times_out_with_480_and_cancels_the_callee() {
    bounded(60, async {
        let t = Calls::start(&["--sip-no-answer-secs", "2"]).await;
        let uas = t.callee("call_uas_rings.xml").await;

        let began = Instant::now();
        let caller = t.call_bob("call_uac_fails.xml").await;
        // The run: the auth round trip, 2 s ringing, then 0.5 s of the
        // scenario's timewait after the ACK.
        let took = began.elapsed();
        caller.assert_all_successful(1);
        assert_eq!(summary(&caller), ["407 INVITE", "180 INVITE", "480 INVITE"]);
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_millis(4000),
            "480 after {took:?}"
        );
        let callee = uas.finish().await;
        assert_eq!(summary(&callee), ["INVITE", "CANCEL", "ACK"]);

        assert_call_events(
            &t.node,
            &[
                (
                    &t.alice.id,
                    vec![started("outbound"), ringing(), failed(480, "no_answer")],
                ),
                (
                    &t.bob.id,
                    vec![started("inbound"), ringing(), failed(480, "no_answer")],
                ),
            ],
        )
        .await;
        assert_cdr(
            &t.node,
            DOMAIN,
            &ExpectedCdr::failed(
                &caller,
                &format!("bob@{DOMAIN}"),
                vec![&t.alice.id, &t.bob.id],
                480,
                CallCause::NoAnswer,
            ),
        )
        .await;
        t.node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn unknown_callee_404() {
    bounded(60, async {
        let t = Calls::start(&[]).await;

        let caller = t.call("call_uac_fails.xml", "nobody", DOMAIN).await;
        caller.assert_all_successful(1);
        assert_eq!(summary(&caller), ["407 INVITE", "404 INVITE"]);
        assert!(
            received(&caller, "SIP/2.0 404 Not Found\n").contains("CSeq: 2 INVITE"),
            "{:#?}",
            caller.received
        );

        assert_call_events(
            &t.node,
            &[(
                &t.alice.id,
                vec![started("outbound"), failed(404, "not_found")],
            )],
        )
        .await;
        // nobody has no leg.
        assert_cdr(
            &t.node,
            DOMAIN,
            &ExpectedCdr::failed(
                &caller,
                &format!("nobody@{DOMAIN}"),
                vec![&t.alice.id],
                404,
                CallCause::NotFound,
            ),
        )
        .await;
        t.node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn an_external_number_gets_404_saying_no_trunk_routes_it() {
    bounded(60, async {
        let t = Calls::start(&[]).await;
        let number = t.call("call_uac_fails.xml", "+15551234567", DOMAIN).await;
        number.assert_all_successful(1);
        assert_eq!(summary(&number), ["407 INVITE", "404 INVITE"]);
        received(
            &number,
            "SIP/2.0 404 Not Found (no trunk routes external numbers)\n",
        );
        assert_call_events(
            &t.node,
            &[(
                &t.alice.id,
                vec![started("outbound"), failed(404, "not_found")],
            )],
        )
        .await;
        t.node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn unregistered_callee_480() {
    bounded(60, async {
        let t = Calls::start(&[]).await;

        let caller = t.call_bob("call_uac_fails.xml").await;
        caller.assert_all_successful(1);
        assert_eq!(summary(&caller), ["407 INVITE", "480 INVITE"]);

        assert_call_events(
            &t.node,
            &[
                (
                    &t.alice.id,
                    vec![started("outbound"), failed(480, "unavailable")],
                ),
                (
                    &t.bob.id,
                    vec![started("inbound"), failed(480, "unavailable")],
                ),
            ],
        )
        .await;
        assert_cdr(
            &t.node,
            DOMAIN,
            &ExpectedCdr::failed(
                &caller,
                &format!("bob@{DOMAIN}"),
                vec![&t.alice.id, &t.bob.id],
                480,
                CallCause::Unavailable,
            ),
        )
        .await;
        t.node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn cross_domain_call_403() {
    bounded(60, async {
        let t = Calls::start(&[]).await;
        create_domain(&t.node, OTHER_DOMAIN).await.unwrap();
        let carol = create_user(&t.node, OTHER_DOMAIN, "carol", PASSWORD, 0)
            .await
            .unwrap();
        // carol is reachable (her contact's port is held for the test): only
        // the domain boundary refuses the call.
        let carol_phone = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let carol_port = carol_phone.local_addr().unwrap().port();
        t.register("carol", OTHER_DOMAIN, carol_port).await;

        let caller = t.call("call_uac_fails.xml", "carol", OTHER_DOMAIN).await;
        caller.assert_all_successful(1);
        assert_eq!(summary(&caller), ["407 INVITE", "403 INVITE"]);

        assert_call_events(
            &t.node,
            &[
                (
                    &t.alice.id,
                    vec![started("outbound"), failed(403, "call_rejected")],
                ),
                (&carol.id, vec![]),
            ],
        )
        .await;
        // The record is the caller's domain's: carol has no leg, so her
        // domain has no call.
        assert_cdr(
            &t.node,
            DOMAIN,
            &ExpectedCdr::failed(
                &caller,
                &format!("carol@{OTHER_DOMAIN}"),
                vec![&t.alice.id],
                403,
                CallCause::CallRejected,
            ),
        )
        .await;
        let theirs = list_calls(&t.node, OTHER_DOMAIN).await.unwrap();
        assert!(theirs.is_empty(), "{theirs:#?}");
        t.node.stop().await.unwrap();
        drop(carol_phone);
    })
    .await
}

#[tokio::test]
async fn forked_call_answered_by_one_contact_cancels_the_other() {
    bounded(60, async {
        let t = Calls::start(&[]).await;
        // bob has two contacts: one rings forever, the other answers
        // after 300 ms.
        let ringer = t.uas("call_uas_rings.xml").await;
        let answerer = t.uas("call_uas.xml").await;
        t.register("bob", DOMAIN, ringer.port).await;
        t.register("bob", DOMAIN, answerer.port).await;

        let caller = t.call_bob("call_uac.xml").await;
        caller.assert_all_successful(1);
        let seen = summary(&caller);
        // A 180 from each branch (or one), then the answer, then the BYE's.
        assert_eq!(seen.first().map(String::as_str), Some("407 INVITE"));
        assert!(
            seen.len() >= 4
                && seen[1..seen.len() - 2].iter().all(|s| s == "180 INVITE")
                && seen[seen.len() - 2..] == ["200 INVITE", "200 BYE"],
            "{seen:?}"
        );
        // The answer is the answering branch's.
        let ok = received(&caller, "SIP/2.0 200 OK");
        assert!(
            ok.contains(&format!("Contact: <sip:127.0.0.1:{};", answerer.port)),
            "{ok}"
        );

        let answerer_port = answerer.port;
        let answering = answerer.finish().await;
        assert_eq!(summary(&answering), ["INVITE", "ACK", "BYE"]);
        // The other branch was cancelled, and its 487 ACKed by the proxy.
        let cancelled = ringer.finish().await;
        assert_eq!(summary(&cancelled), ["INVITE", "CANCEL", "ACK"]);

        // Recorded as answered by the contact that answered.
        let contact = format!("sip:bob@127.0.0.1:{answerer_port}");
        let leg = |direction| {
            vec![
                started(direction),
                ringing(),
                maybe_ringing(),
                answered_by(&contact),
                ended("caller"),
            ]
        };
        assert_call_events(
            &t.node,
            &[(&t.alice.id, leg("outbound")), (&t.bob.id, leg("inbound"))],
        )
        .await;
        // One record, one leg for bob (not one per branch), answered by
        // the contact that answered; call_uac.xml hangs up 200 ms after
        // its ACK.
        assert_cdr(
            &t.node,
            DOMAIN,
            &ExpectedCdr::answered(
                &caller,
                &format!("bob@{DOMAIN}"),
                vec![&t.alice.id, &t.bob.id],
                HangupSide::Caller,
                contact,
                Duration::from_millis(200),
            ),
        )
        .await;
        t.node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn re_invite_passes_through_the_proxy() {
    bounded(60, async {
        let t = Calls::start(&[]).await;
        let uas = t.callee("call_uas_reinvite.xml").await;
        let uas_port = uas.port;

        let caller = t.call_bob("call_uac_reinvite.xml").await;
        caller.assert_all_successful(1);
        assert_eq!(
            summary(&caller),
            [
                "407 INVITE",
                "180 INVITE",
                "200 INVITE",
                "200 INVITE",
                "200 BYE"
            ]
        );
        let callee = uas.finish().await;
        assert_eq!(summary(&callee), ["INVITE", "ACK", "INVITE", "ACK", "BYE"]);
        // The re-INVITE is the caller's CSeq 3, routed by the dialog.
        let reinvite = callee
            .received
            .iter()
            .filter(|m| m.starts_with("INVITE "))
            .nth(1)
            .unwrap();
        assert!(reinvite.contains("CSeq: 3 INVITE"), "{reinvite}");

        // The re-INVITE changes nothing in the call's record.
        assert_call_events(
            &t.node,
            &[
                (
                    &t.alice.id,
                    vec![started("outbound"), ringing(), answered(), ended("caller")],
                ),
                (
                    &t.bob.id,
                    vec![started("inbound"), ringing(), answered(), ended("caller")],
                ),
            ],
        )
        .await;
        // Still one call, answered once; call_uac_reinvite.xml holds it
        // 100 ms, re-INVITEs, then 100 ms more.
        assert_cdr(
            &t.node,
            DOMAIN,
            &ExpectedCdr::answered(
                &caller,
                &format!("bob@{DOMAIN}"),
                vec![&t.alice.id, &t.bob.id],
                HangupSide::Caller,
                format!("sip:bob@127.0.0.1:{uas_port}"),
                Duration::from_millis(200),
            ),
        )
        .await;
        t.node.stop().await.unwrap();
    })
    .await
}
