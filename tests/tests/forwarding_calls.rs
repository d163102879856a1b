//! Forwarded calls, black box: a real node, users and their forwarding
//! rules provisioned over gRPC, SIPp as the caller and as every phone (a
//! UAS in server mode on the port its user's registered contact points
//! at). Each test asserts what the phones saw (who rang, when, and the
//! Diversion and History-Info headers that tell the phone that finally
//! rings whom the call was for), the call events of every user the call
//! passed, and the call detail record with its chain of legs.
//!
//! SIPp 3.6.1 reads only the first `Proxy-Authenticate`, so the node offers
//! MD5 first (`--sip-challenge-md5-first`).

mod support;

use std::time::{Duration, Instant};

use dialtone_api::pb::{CallRecord, ForwardReason, ListCallsRequest, SetForwardingRequest};
use serde_json::json;
use support::calls::{answered, failed, maybe_ringing, started};
use support::pbx::{
    assert_legs, ended, forwarded, header, invite, invite_statuses, requests, started_for, Pbx,
};
use support::sip::{bounded, eventually, DOMAIN};

/// The one call detail record of the domain, once all `legs` legs are in
/// it and finished.
async fn the_cdr(pbx: &Pbx, legs: usize) -> CallRecord {
    let list = || async {
        let mut audit = pbx.node.audit().await?;
        let page = audit
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
            let calls = list().await?;
            Ok(match calls.as_slice() {
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

// --- Tests -----------------------------------------------------------------

#[tokio::test]
async fn a_busy_phone_forwards_to_another_user_who_sees_whom_the_call_was_for() {
    bounded(90, async {
        let pbx = Pbx::start(&[]).await;
        pbx.forward(
            "bob",
            SetForwardingRequest {
                busy: Some("carol".into()),
                ..Default::default()
            },
        )
        .await;
        let bob = pbx.phone("bob", "call_uas_busy.xml").await;
        let carol = pbx.phone("carol", "call_uas.xml").await;

        let caller = pbx.call_bob("call_uac.xml").await;
        caller.assert_all_successful(1);
        assert_eq!(
            invite_statuses(&caller),
            [407, 200],
            "{:#?}",
            caller.received
        );
        bob.finish().await;
        let carol = carol.finish().await;

        // Carol's phone is told the call was for bob, and why it came to
        // her: RFC 5806 and RFC 7044.
        let invite = invite(&carol);
        assert!(invite.starts_with("INVITE sip:"), "{invite}");
        assert_eq!(
            header(invite, "Diversion"),
            format!("<sip:bob@{DOMAIN}>;reason=user-busy;counter=1"),
            "{invite}"
        );
        assert_eq!(
            header(invite, "History-Info"),
            format!("<sip:bob@{DOMAIN}>;index=1, <sip:carol@{DOMAIN};cause=486>;index=1.1;mp=1"),
            "{invite}"
        );
        assert_eq!(header(invite, "To"), format!("<sip:bob@{DOMAIN}>"));

        assert_legs(
            &pbx,
            &[
                (
                    "alice",
                    vec![started("outbound"), maybe_ringing(), answered(), ended()],
                ),
                (
                    "bob",
                    vec![
                        started("inbound"),
                        maybe_ringing(),
                        forwarded("carol", "user_busy"),
                    ],
                ),
                (
                    "carol",
                    vec![started("inbound"), maybe_ringing(), answered(), ended()],
                ),
            ],
        )
        .await;

        // One record: the caller's leg, bob's (forwarded to carol), carol's.
        let cdr = the_cdr(&pbx, 3).await;
        let users: Vec<&str> = cdr.legs.iter().map(|l| l.user_id.as_str()).collect();
        assert_eq!(
            users,
            [pbx.id("alice"), pbx.id("bob"), pbx.id("carol")],
            "{cdr:#?}"
        );
        assert_eq!(cdr.callee, format!("bob@{DOMAIN}"), "{cdr:#?}");
        assert_eq!(cdr.sip_status, 200, "{cdr:#?}");
        assert_eq!(cdr.legs[1].forwarded_to, format!("carol@{DOMAIN}"));
        assert_eq!(cdr.legs[1].forward_reason(), ForwardReason::UserBusy);
        assert!(cdr.legs[1].answered_at.is_none(), "{cdr:#?}");
        assert!(cdr.legs[2].answered_at.is_some(), "{cdr:#?}");
        assert_eq!(cdr.legs[2].forwarded_to, "", "{cdr:#?}");
        // The CLI shows the path.
        let out = pbx.node.cli(&["calls", DOMAIN]).await.unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("-> carol@{DOMAIN} (user_busy)")),
            "{text}"
        );
        pbx.node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn no_answer_forwards_after_the_set_time_and_cancels_the_first_phone() {
    bounded(90, async {
        let pbx = Pbx::start(&[]).await;
        pbx.forward(
            "bob",
            SetForwardingRequest {
                no_answer: Some("carol".into()),
                // Beyond the 2 s in which a call's legs are joined by time
                // alone: the record finds carol's leg through bob's forward.
                no_answer_after_secs: Some(3),
                ..Default::default()
            },
        )
        .await;
        let bob = pbx.phone("bob", "call_uas_rings.xml").await;
        let carol = pbx.phone("carol", "call_uas.xml").await;

        let began = Instant::now();
        let caller = pbx.call_bob("call_uac.xml").await;
        caller.assert_all_successful(1);
        assert_eq!(
            invite_statuses(&caller),
            [407, 200],
            "{:#?}",
            caller.received
        );
        let bob = bob.finish().await;
        let carol = carol.finish().await;
        let bob_saw: Vec<&str> = bob
            .received
            .iter()
            .filter_map(|m| m.split_whitespace().next())
            .collect();
        assert_eq!(
            bob_saw,
            ["INVITE", "CANCEL", "ACK"],
            "bob's phone is cancelled"
        );
        // Bob's phone rang its 2 s before carol's was called (the caller's
        // scenario then holds the call about 1 s).
        assert!(
            began.elapsed() >= Duration::from_secs(2),
            "{:?}",
            began.elapsed()
        );
        assert_eq!(
            header(invite(&carol), "Diversion"),
            format!("<sip:bob@{DOMAIN}>;reason=no-answer;counter=1")
        );

        assert_legs(
            &pbx,
            &[
                (
                    "alice",
                    vec![started("outbound"), maybe_ringing(), answered(), ended()],
                ),
                (
                    "bob",
                    vec![
                        started("inbound"),
                        ("CallRinging", json!({})),
                        forwarded("carol", "no_answer"),
                    ],
                ),
                (
                    "carol",
                    vec![started("inbound"), maybe_ringing(), answered(), ended()],
                ),
            ],
        )
        .await;
        let cdr = the_cdr(&pbx, 3).await;
        let users: Vec<&str> = cdr.legs.iter().map(|l| l.user_id.as_str()).collect();
        assert_eq!(
            users,
            [pbx.id("alice"), pbx.id("bob"), pbx.id("carol")],
            "{cdr:#?}"
        );
        assert_eq!(cdr.legs[1].forward_reason(), ForwardReason::NoAnswer);
        assert!(cdr.answered_at.is_some(), "{cdr:#?}");
        pbx.node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn a_chain_of_forwards_unregistered_then_busy_ends_at_the_third_user() {
    bounded(90, async {
        let pbx = Pbx::start(&[]).await;
        // bob has no phone registered: to carol; carol's phone is busy:
        // to dave, who answers.
        pbx.forward(
            "bob",
            SetForwardingRequest {
                unavailable: Some("carol".into()),
                ..Default::default()
            },
        )
        .await;
        pbx.forward(
            "carol",
            SetForwardingRequest {
                busy: Some("dave".into()),
                ..Default::default()
            },
        )
        .await;
        let carol = pbx.phone("carol", "call_uas_busy.xml").await;
        let dave = pbx.phone("dave", "call_uas.xml").await;

        let caller = pbx.call_bob("call_uac.xml").await;
        caller.assert_all_successful(1);
        carol.finish().await;
        let dave = dave.finish().await;
        let invite = invite(&dave);
        assert_eq!(
            header(invite, "Diversion"),
            format!(
                "<sip:carol@{DOMAIN}>;reason=user-busy;counter=1, \
                 <sip:bob@{DOMAIN}>;reason=unavailable;counter=1"
            ),
            "{invite}"
        );
        assert_eq!(
            header(invite, "History-Info"),
            format!(
                "<sip:bob@{DOMAIN}>;index=1, <sip:carol@{DOMAIN};cause=404>;index=1.1;mp=1, \
                 <sip:dave@{DOMAIN};cause=486>;index=1.1.1;mp=1.1"
            ),
            "{invite}"
        );
        assert_legs(
            &pbx,
            &[
                (
                    "alice",
                    vec![started("outbound"), maybe_ringing(), answered(), ended()],
                ),
                (
                    "bob",
                    vec![started("inbound"), forwarded("carol", "unavailable")],
                ),
                (
                    "carol",
                    vec![
                        started("inbound"),
                        maybe_ringing(),
                        forwarded("dave", "user_busy"),
                    ],
                ),
                (
                    "dave",
                    vec![started("inbound"), maybe_ringing(), answered(), ended()],
                ),
            ],
        )
        .await;
        let cdr = the_cdr(&pbx, 4).await;
        let users: Vec<&str> = cdr.legs.iter().map(|l| l.user_id.as_str()).collect();
        assert_eq!(
            users,
            [
                pbx.id("alice"),
                pbx.id("bob"),
                pbx.id("carol"),
                pbx.id("dave")
            ],
            "{cdr:#?}"
        );
        pbx.node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn do_not_disturb_refuses_with_486_or_follows_the_busy_rule() {
    bounded(90, async {
        // DND without a forward: 486, and bob's phone never rings.
        let pbx = Pbx::start(&[]).await;
        pbx.dnd("bob").await;
        pbx.register("bob", 9).await;
        let caller = pbx.call_bob("call_uac_fails.xml").await;
        caller.assert_all_successful(1);
        assert_eq!(
            invite_statuses(&caller),
            [407, 486],
            "{:#?}",
            caller.received
        );
        assert_legs(
            &pbx,
            &[
                ("alice", vec![started("outbound"), failed(486, "user_busy")]),
                ("bob", vec![started("inbound"), failed(486, "user_busy")]),
            ],
        )
        .await;
        pbx.node.stop().await.unwrap();

        // DND with a busy rule: straight to carol, bob's phone never rings.
        let pbx = Pbx::start(&[]).await;
        pbx.dnd("bob").await;
        pbx.forward(
            "bob",
            SetForwardingRequest {
                busy: Some("carol".into()),
                ..Default::default()
            },
        )
        .await;
        pbx.register("bob", 9).await;
        let carol = pbx.phone("carol", "call_uas.xml").await;
        let caller = pbx.call_bob("call_uac.xml").await;
        caller.assert_all_successful(1);
        let carol = carol.finish().await;
        assert_eq!(
            header(invite(&carol), "Diversion"),
            format!("<sip:bob@{DOMAIN}>;reason=do-not-disturb;counter=1")
        );
        assert_legs(
            &pbx,
            &[
                (
                    "bob",
                    vec![started("inbound"), forwarded("carol", "do_not_disturb")],
                ),
                (
                    "carol",
                    vec![started("inbound"), maybe_ringing(), answered(), ended()],
                ),
            ],
        )
        .await;
        pbx.node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn always_forwards_without_ringing_and_loops_are_cut() {
    bounded(90, async {
        let pbx = Pbx::start(&[]).await;
        // bob -> carol always, carol -> bob always: carol's rule would
        // loop back, so it is not taken and carol's phone rings.
        pbx.forward(
            "bob",
            SetForwardingRequest {
                always: Some("carol".into()),
                ..Default::default()
            },
        )
        .await;
        pbx.forward(
            "carol",
            SetForwardingRequest {
                always: Some("bob".into()),
                ..Default::default()
            },
        )
        .await;
        // bob's contact points at a port nobody listens on: ringing it
        // would fail the call.
        pbx.register("bob", 9).await;
        let carol = pbx.phone("carol", "call_uas.xml").await;
        let caller = pbx.call_bob("call_uac.xml").await;
        caller.assert_all_successful(1);
        let carol = carol.finish().await;
        assert_eq!(
            header(invite(&carol), "Diversion"),
            format!("<sip:bob@{DOMAIN}>;reason=unconditional;counter=1")
        );
        // Carol's leg says why her own rule was not used.
        assert_legs(
            &pbx,
            &[
                (
                    "bob",
                    vec![started("inbound"), forwarded("carol", "unconditional")],
                ),
                (
                    "carol",
                    vec![
                        started("inbound"),
                        (
                            "CallForwardSkipped",
                            json!({"to": format!("bob@{DOMAIN}"), "rule": "unconditional", "why": "loop"}),
                        ),
                        maybe_ringing(),
                        answered(),
                        ended(),
                    ],
                ),
            ],
        )
        .await;
        pbx.node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn the_b2bua_forwards_too() {
    bounded(90, async {
        let pbx = Pbx::start(&["--sip-call-mode", "b2bua"]).await;
        pbx.forward(
            "bob",
            SetForwardingRequest {
                busy: Some("carol".into()),
                ..Default::default()
            },
        )
        .await;
        let bob = pbx.phone("bob", "call_uas_busy.xml").await;
        let carol = pbx.phone("carol", "b2bua_uas.xml").await;
        let caller = pbx.call_bob("b2bua_uac.xml").await;
        caller.assert_all_successful(1);
        bob.finish().await;
        let carol = carol.finish().await;
        let invite = invite(&carol);
        assert_eq!(
            header(invite, "Diversion"),
            format!("<sip:bob@{DOMAIN}>;reason=user-busy;counter=1"),
            "{invite}"
        );
        assert!(
            header(invite, "History-Info").starts_with(&format!("<sip:bob@{DOMAIN}>;index=1")),
            "{invite}"
        );
        assert_legs(
            &pbx,
            &[
                (
                    "alice",
                    vec![started("outbound"), maybe_ringing(), answered(), ended()],
                ),
                (
                    "bob",
                    vec![
                        started("inbound"),
                        maybe_ringing(),
                        forwarded("carol", "user_busy"),
                    ],
                ),
                (
                    "carol",
                    vec![started("inbound"), maybe_ringing(), answered(), ended()],
                ),
            ],
        )
        .await;
        pbx.node.stop().await.unwrap();
    })
    .await
}

/// Sets the time zone of [`DOMAIN`].
async fn domain_time_zone(pbx: &Pbx, zone: &str) {
    pbx.node
        .provisioning()
        .await
        .unwrap()
        .update_domain(dialtone_api::pb::UpdateDomainRequest {
            domain: DOMAIN.into(),
            time_zone: Some(zone.into()),
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn an_after_hours_rule_forwards_only_outside_business_hours_in_the_domains_zone() {
    bounded(120, async {
        // bob forwards everything to carol outside business hours in
        // Berlin. The node's schedule clock says Tuesday 2026-12-08.
        let rules = SetForwardingRequest {
            always: Some("carol".into()),
            always_when: Some(
                "outside mon-fri 09:00-17:00; holidays 2026-12-24..2026-12-26".into(),
            ),
            ..Default::default()
        };

        // 18:05 UTC is 19:05 in Berlin: after hours, carol's phone rings.
        let pbx = Pbx::start(&["--test-clock", "2026-12-08T18:05:00Z"]).await;
        domain_time_zone(&pbx, "Europe/Berlin").await;
        pbx.forward("bob", rules.clone()).await;
        pbx.register("bob", 9).await;
        let carol = pbx.phone("carol", "call_uas.xml").await;
        pbx.call_bob("call_uac.xml").await.assert_all_successful(1);
        let carol = carol.finish().await;
        assert_eq!(
            header(invite(&carol), "Diversion"),
            format!("<sip:bob@{DOMAIN}>;reason=unconditional;counter=1")
        );
        assert_legs(
            &pbx,
            &[(
                "bob",
                vec![started("inbound"), forwarded("carol", "unconditional")],
            )],
        )
        .await;
        pbx.node.stop().await.unwrap();

        // 15:30 UTC is 16:30 in Berlin (but 15:30 would be too in UTC):
        // business hours, bob's own phone rings and nothing is forwarded.
        let pbx = Pbx::start(&["--test-clock", "2026-12-08T15:30:00Z"]).await;
        domain_time_zone(&pbx, "Europe/Berlin").await;
        pbx.forward("bob", rules.clone()).await;
        let bob = pbx.phone("bob", "call_uas.xml").await;
        pbx.call_bob("call_uac.xml").await.assert_all_successful(1);
        let bob = bob.finish().await;
        assert_eq!(header(invite(&bob), "Diversion"), "", "not forwarded");
        assert_legs(
            &pbx,
            &[(
                "bob",
                vec![started("inbound"), maybe_ringing(), answered(), ended()],
            )],
        )
        .await;
        pbx.node.stop().await.unwrap();

        // 16:30 UTC is 17:30 in Berlin: after hours again, although it
        // would be business hours in UTC: the domain's zone decides.
        let pbx = Pbx::start(&["--test-clock", "2026-12-08T16:30:00Z"]).await;
        domain_time_zone(&pbx, "Europe/Berlin").await;
        pbx.forward("bob", rules).await;
        pbx.register("bob", 9).await;
        let carol = pbx.phone("carol", "call_uas.xml").await;
        pbx.call_bob("call_uac.xml").await.assert_all_successful(1);
        carol.finish().await;
        pbx.node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn follow_me_rings_more_phones_after_a_while_and_the_first_answer_takes_the_call() {
    bounded(90, async {
        let pbx = Pbx::start(&[]).await;
        pbx.forward(
            "bob",
            SetForwardingRequest {
                follow_me: Some(dialtone_api::pb::FollowMeTargets {
                    targets: vec!["carol".into()],
                }),
                follow_me_after_secs: Some(2),
                ..Default::default()
            },
        )
        .await;
        let bob = pbx.phone("bob", "call_uas_rings.xml").await;
        let carol = pbx.phone("carol", "call_uas.xml").await;
        let began = Instant::now();
        let caller = pbx.call_bob("call_uac.xml").await;
        caller.assert_all_successful(1);
        assert_eq!(
            invite_statuses(&caller),
            [407, 200],
            "{:#?}",
            caller.received
        );
        assert!(
            began.elapsed() >= Duration::from_secs(2),
            "{:?}",
            began.elapsed()
        );
        // Bob's phone rang on (one INVITE) while carol's joined, and was
        // cancelled when carol answered.
        let bob = bob.finish().await;
        assert_eq!(requests(&bob), ["INVITE", "CANCEL", "ACK"]);
        carol.finish().await;
        assert_legs(
            &pbx,
            &[
                (
                    "alice",
                    vec![started("outbound"), maybe_ringing(), answered(), ended()],
                ),
                (
                    "bob",
                    vec![
                        started("inbound"),
                        ("CallRinging", json!({})),
                        failed(487, "answered_elsewhere"),
                    ],
                ),
                (
                    "carol",
                    vec![started_for("bob"), maybe_ringing(), answered(), ended()],
                ),
            ],
        )
        .await;
        pbx.node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn sequential_follow_me_tries_each_target_in_turn_while_the_own_phone_rings_on() {
    bounded(90, async {
        let pbx = Pbx::start(&[]).await;
        pbx.forward(
            "bob",
            SetForwardingRequest {
                follow_me: Some(dialtone_api::pb::FollowMeTargets {
                    targets: vec!["carol".into(), "dave".into()],
                }),
                follow_me_after_secs: Some(1),
                follow_me_sequential: Some(true),
                follow_me_ring_secs: Some(2),
                ..Default::default()
            },
        )
        .await;
        let bob = pbx.phone("bob", "call_uas_rings.xml").await;
        let carol = pbx.phone("carol", "call_uas_rings.xml").await;
        let dave = pbx.phone("dave", "call_uas.xml").await;
        let caller = pbx.call_bob("call_uac.xml").await;
        caller.assert_all_successful(1);
        assert_eq!(requests(&bob.finish().await), ["INVITE", "CANCEL", "ACK"]);
        assert_eq!(requests(&carol.finish().await), ["INVITE", "CANCEL", "ACK"]);
        dave.finish().await;
        assert_legs(
            &pbx,
            &[
                (
                    "bob",
                    vec![
                        started("inbound"),
                        ("CallRinging", json!({})),
                        failed(487, "answered_elsewhere"),
                    ],
                ),
                (
                    "carol",
                    vec![started_for("bob"), ("CallRinging", json!({})), failed(480, "no_answer")],
                ),
                (
                    "dave",
                    vec![started_for("bob"), maybe_ringing(), answered(), ended()],
                ),
            ],
        )
        .await;
        // Bad follow-me settings are refused and change nothing.
        let mut api = pbx.node.provisioning().await.unwrap();
        for (targets, code, text) in [
            (vec!["+15551234567"], tonic::Code::FailedPrecondition, "follow-me rings users' phones"),
            (vec!["nobody"], tonic::Code::NotFound, "nobody@"),
            (vec!["carol", "carol"], tonic::Code::InvalidArgument, "listed twice"),
            (vec!["bob"], tonic::Code::InvalidArgument, "cannot follow itself"),
        ] {
            let err = api
                .set_forwarding(SetForwardingRequest {
                    user: format!("bob@{DOMAIN}"),
                    follow_me: Some(dialtone_api::pb::FollowMeTargets {
                        targets: targets.iter().map(|t| (*t).to_owned()).collect(),
                    }),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), code, "{}", err.message());
            assert!(err.message().contains(text), "{}", err.message());
        }
        let out = pbx
            .node
            .cli(&["user", "get", &format!("bob@{DOMAIN}")])
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!(
                "follow me after 1 s -> carol@{DOMAIN}, dave@{DOMAIN} (one after the other, 2 s each)"
            )),
            "{text}"
        );
        let out = pbx
            .node
            .cli(&["user", "forward", &format!("bob@{DOMAIN}"), "--follow-me", "none"])
            .await
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("forwarding    off"));
        pbx.node.stop().await.unwrap();
    })
    .await
}
