//! Ring groups, black box: a real node, users and a group provisioned over
//! gRPC and the CLI, SIPp as the caller and as every member's phone. Each
//! test asserts which phones rang and in which order, what the caller got,
//! and the call events of every member: a leg for each member rung (to the
//! group's address), failed with `answered_elsewhere` or `no_answer` when
//! another member took the call or the member's turn passed.

mod support;

use std::time::{Duration, Instant};

use dialtone_api::pb::{
    CreateRingGroupRequest, DeleteRingGroupRequest, GetRingGroupRequest, ListCallsRequest,
    RingGroupChange, RingGroupMembers, RingStrategy, UpdateRingGroupRequest,
};
use serde_json::json;
use support::calls::{answered, call_events, failed, maybe_ringing, started};
use support::pbx::{
    assert_legs, ended, header, invite, invite_statuses, requests, started_for, Pbx,
};
use support::sip::{bounded, create_user, eventually, DOMAIN, PASSWORD};

const SALES: &str = "sales";

fn members(list: &[&str]) -> Option<RingGroupMembers> {
    Some(RingGroupMembers {
        members: list.iter().map(|m| (*m).to_owned()).collect(),
    })
}

async fn create_group(pbx: &Pbx, settings: RingGroupChange) {
    pbx.node
        .provisioning()
        .await
        .unwrap()
        .create_ring_group(CreateRingGroupRequest {
            address: format!("{SALES}@{DOMAIN}"),
            settings: Some(settings),
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn simultaneous_rings_every_member_and_the_first_answer_takes_the_call() {
    bounded(90, async {
        let pbx = Pbx::start(&[]).await;
        // dave has no phone registered: he is skipped, not rung.
        create_group(
            &pbx,
            RingGroupChange {
                members: members(&["bob", "carol", "dave"]),
                ..Default::default()
            },
        )
        .await;
        let bob = pbx.phone("bob", "call_uas_rings.xml").await;
        let carol = pbx.phone("carol", "call_uas.xml").await;

        let caller = pbx.call(SALES, "call_uac.xml").await;
        caller.assert_all_successful(1);
        assert_eq!(
            invite_statuses(&caller),
            [407, 200],
            "{:#?}",
            caller.received
        );
        let bob = bob.finish().await;
        let carol = carol.finish().await;
        // Bob's phone rang until carol answered, then was cancelled.
        assert_eq!(requests(&bob), ["INVITE", "CANCEL", "ACK"]);
        assert_eq!(
            header(invite(&carol), "To"),
            format!("<sip:{SALES}@{DOMAIN}>")
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
                        started_for(SALES),
                        maybe_ringing(),
                        failed(487, "answered_elsewhere"),
                    ],
                ),
                (
                    "carol",
                    vec![started_for(SALES), maybe_ringing(), answered(), ended()],
                ),
                ("dave", vec![]),
            ],
        )
        .await;
        pbx.node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn sequential_rings_one_member_after_the_other_for_their_ring_times() {
    bounded(90, async {
        let pbx = Pbx::start(&[]).await;
        create_group(
            &pbx,
            RingGroupChange {
                // bob rings 3 s (beyond the 2 s in which a call's legs are
                // joined by time alone), then carol (the group's ring time).
                members: members(&["bob:3", "carol"]),
                strategy: Some("sequential".into()),
                ..Default::default()
            },
        )
        .await;
        let bob = pbx.phone("bob", "call_uas_rings.xml").await;
        let carol = pbx.phone("carol", "call_uas.xml").await;

        let began = Instant::now();
        let caller = pbx.call(SALES, "call_uac.xml").await;
        caller.assert_all_successful(1);
        assert_eq!(
            invite_statuses(&caller),
            [407, 200],
            "{:#?}",
            caller.received
        );
        let bob = bob.finish().await;
        carol.finish().await;
        assert_eq!(requests(&bob), ["INVITE", "CANCEL", "ACK"]);
        assert!(
            began.elapsed() >= Duration::from_secs(3),
            "{:?}",
            began.elapsed()
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
                        started_for(SALES),
                        ("CallRinging", json!({})),
                        failed(480, "no_answer"),
                    ],
                ),
                (
                    "carol",
                    vec![started_for(SALES), maybe_ringing(), answered(), ended()],
                ),
            ],
        )
        .await;
        // The record has every member's leg, carol's found although it
        // started after bob's turn.
        let cdr = eventually(Duration::from_secs(5), "the call's record", || async {
            let calls = pbx
                .node
                .audit()
                .await?
                .list_calls(ListCallsRequest {
                    domain: DOMAIN.to_owned(),
                    page_size: 10,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .calls;
            Ok(match calls.as_slice() {
                [c] if !c.in_progress && c.legs.len() == 3 => Some(c.clone()),
                _ => None,
            })
        })
        .await
        .unwrap();
        let users: Vec<&str> = cdr.legs.iter().map(|l| l.user_id.as_str()).collect();
        assert_eq!(users, [pbx.id("alice"), pbx.id("bob"), pbx.id("carol")]);
        assert_eq!(cdr.callee, format!("{SALES}@{DOMAIN}"));
        assert!(cdr.legs[1].answered_at.is_none() && cdr.legs[2].answered_at.is_some());
        pbx.node.stop().await.unwrap();
    })
    .await
}

/// The number of call legs (started) of `user`.
async fn legs_of(pbx: &Pbx, user: &str) -> usize {
    call_events(&pbx.node, pbx.id(user))
        .await
        .iter()
        .filter(|(t, _)| t == "CallStarted")
        .count()
}

#[tokio::test]
async fn round_robin_starts_each_call_with_the_next_member() {
    bounded(120, async {
        let pbx = Pbx::start(&[]).await;
        create_group(
            &pbx,
            RingGroupChange {
                members: members(&["bob", "carol"]),
                strategy: Some("round-robin".into()),
                ring_secs: Some(10),
                ..Default::default()
            },
        )
        .await;
        // Each phone answers one call: the first call must start with
        // bob, the second with carol (a second call to bob would ring a
        // phone that is gone, for 10 s).
        let bob = pbx.phone("bob", "call_uas.xml").await;
        let carol = pbx.phone("carol", "call_uas.xml").await;
        for _ in 0..2 {
            let began = Instant::now();
            let caller = pbx.call(SALES, "call_uac.xml").await;
            caller.assert_all_successful(1);
            assert!(
                began.elapsed() < Duration::from_secs(8),
                "{:?}",
                began.elapsed()
            );
        }
        bob.finish().await;
        carol.finish().await;
        eventually(Duration::from_secs(5), "a leg each", || async {
            Ok(
                (legs_of(&pbx, "bob").await == 1 && legs_of(&pbx, "carol").await == 1)
                    .then_some(()),
            )
        })
        .await
        .unwrap();
        pbx.node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn longest_idle_rings_the_member_idle_longest_first() {
    bounded(120, async {
        let pbx = Pbx::start(&[]).await;
        // carol is listed first but has just had a call; bob never had one.
        create_group(
            &pbx,
            RingGroupChange {
                members: members(&["carol", "bob"]),
                strategy: Some("longest-idle".into()),
                ring_secs: Some(10),
                ..Default::default()
            },
        )
        .await;
        let carol = pbx.phone("carol", "call_uas.xml").await;
        pbx.call("carol", "call_uac.xml")
            .await
            .assert_all_successful(1);
        carol.finish().await;
        // carol's phone is gone: ringing her first would take 10 s.
        let bob = pbx.phone("bob", "call_uas.xml").await;
        let began = Instant::now();
        let caller = pbx.call(SALES, "call_uac.xml").await;
        caller.assert_all_successful(1);
        assert!(
            began.elapsed() < Duration::from_secs(8),
            "{:?}",
            began.elapsed()
        );
        bob.finish().await;
        assert_legs(
            &pbx,
            &[(
                "bob",
                vec![started_for(SALES), maybe_ringing(), answered(), ended()],
            )],
        )
        .await;
        assert_eq!(legs_of(&pbx, "carol").await, 1, "carol was not rung again");
        pbx.node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn members_with_dnd_are_skipped_and_an_unanswered_call_goes_to_the_no_answer_target() {
    bounded(90, async {
        let pbx = Pbx::start(&[]).await;
        create_group(
            &pbx,
            RingGroupChange {
                members: members(&["bob", "carol"]),
                timeout_secs: Some(2),
                no_answer: Some("dave".into()),
                ..Default::default()
            },
        )
        .await;
        pbx.dnd("bob").await;
        pbx.register("bob", 9).await;
        let carol = pbx.phone("carol", "call_uas_rings.xml").await;
        let dave = pbx.phone("dave", "call_uas.xml").await;

        let caller = pbx.call(SALES, "call_uac.xml").await;
        caller.assert_all_successful(1);
        assert_eq!(
            invite_statuses(&caller),
            [407, 200],
            "{:#?}",
            caller.received
        );
        let carol = carol.finish().await;
        assert_eq!(requests(&carol), ["INVITE", "CANCEL", "ACK"]);
        let dave = dave.finish().await;
        // Dave's phone is told the call was for the group, and why.
        assert_eq!(
            header(invite(&dave), "Diversion"),
            format!("<sip:{SALES}@{DOMAIN}>;reason=no-answer;counter=1")
        );
        assert_legs(
            &pbx,
            &[
                ("bob", vec![]),
                (
                    "carol",
                    vec![
                        started_for(SALES),
                        ("CallRinging", json!({})),
                        failed(480, "no_answer"),
                    ],
                ),
                (
                    "dave",
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
async fn a_forward_to_a_group_rings_its_members_in_the_b2bua_too() {
    bounded(90, async {
        let pbx = Pbx::start(&["--sip-call-mode", "b2bua"]).await;
        create_group(
            &pbx,
            RingGroupChange {
                members: members(&["carol"]),
                ..Default::default()
            },
        )
        .await;
        pbx.forward(
            "bob",
            dialtone_api::pb::SetForwardingRequest {
                always: Some(format!("group:{SALES}")),
                ..Default::default()
            },
        )
        .await;
        let carol = pbx.phone("carol", "b2bua_uas.xml").await;
        let caller = pbx.call_bob("b2bua_uac.xml").await;
        caller.assert_all_successful(1);
        carol.finish().await;
        assert_legs(
            &pbx,
            &[
                (
                    "bob",
                    vec![
                        started("inbound"),
                        (
                            "CallForwarded",
                            json!({ "to": format!("group:{SALES}@{DOMAIN}"), "reason": "unconditional" }),
                        ),
                    ],
                ),
                (
                    "carol",
                    vec![started_for(SALES), maybe_ringing(), answered(), ended()],
                ),
            ],
        )
        .await;
        pbx.node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn a_group_nobody_can_answer_is_refused_with_486_or_480() {
    bounded(90, async {
        let pbx = Pbx::start(&[]).await;
        create_group(
            &pbx,
            RingGroupChange {
                members: members(&["bob", "carol"]),
                ..Default::default()
            },
        )
        .await;
        // Nobody registered: 480; the caller's leg records it, the
        // members have none.
        let caller = pbx.call(SALES, "call_uac_fails.xml").await;
        caller.assert_all_successful(1);
        assert_eq!(
            invite_statuses(&caller),
            [407, 480],
            "{:#?}",
            caller.received
        );
        assert_legs(
            &pbx,
            &[
                (
                    "alice",
                    vec![started("outbound"), failed(480, "unavailable")],
                ),
                ("bob", vec![]),
                ("carol", vec![]),
            ],
        )
        .await;
        // Everyone registered has do-not-disturb on: 486.
        pbx.register("bob", 9).await;
        pbx.dnd("bob").await;
        let caller = pbx.call(SALES, "call_uac_fails.xml").await;
        caller.assert_all_successful(1);
        assert_eq!(
            invite_statuses(&caller),
            [407, 486],
            "{:#?}",
            caller.received
        );
        eventually(
            Duration::from_secs(5),
            "the second call's failure",
            || async {
                let events = call_events(&pbx.node, pbx.id("alice")).await;
                Ok(events
                    .iter()
                    .any(|(t, d)| {
                        t == "CallFailed" && d["sip_status"] == 486 && d["cause"] == "user_busy"
                    })
                    .then_some(()))
            },
        )
        .await
        .unwrap();
        assert_eq!(legs_of(&pbx, "bob").await, 0);
        pbx.node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn bad_ring_groups_are_refused_with_what_is_wrong_and_nothing_is_applied() {
    bounded(90, async {
        let pbx = Pbx::start(&[]).await;
        let mut api = pbx.node.provisioning().await.unwrap();
        let create = |address: &str, settings: RingGroupChange| CreateRingGroupRequest {
            address: address.to_owned(),
            settings: Some(settings),
            ..Default::default()
        };
        let refused = |r: Result<tonic::Response<_>, tonic::Status>| match r {
            Ok(ok) => panic!("accepted: {ok:?}"),
            Err(status) => (status.code(), status.message().to_owned()),
        };
        let sales = format!("{SALES}@{DOMAIN}");
        let cases: Vec<(RingGroupChange, tonic::Code, &str)> = vec![
            (
                RingGroupChange::default(),
                tonic::Code::InvalidArgument,
                "needs at least one member",
            ),
            (
                RingGroupChange {
                    members: members(&[]),
                    ..Default::default()
                },
                tonic::Code::InvalidArgument,
                "needs at least one member",
            ),
            (
                RingGroupChange {
                    members: members(&["bob", "zed"]),
                    ..Default::default()
                },
                tonic::Code::NotFound,
                "zed@example.test (listed as a member",
            ),
            (
                RingGroupChange {
                    members: members(&["bob", "bob"]),
                    ..Default::default()
                },
                tonic::Code::InvalidArgument,
                "bob is listed twice",
            ),
            (
                RingGroupChange {
                    members: members(&["bob"]),
                    strategy: Some("random".into()),
                    ..Default::default()
                },
                tonic::Code::InvalidArgument,
                "'random' is not a strategy",
            ),
            (
                RingGroupChange {
                    members: members(&["bob:x"]),
                    ..Default::default()
                },
                tonic::Code::InvalidArgument,
                "must be a number of seconds",
            ),
            (
                RingGroupChange {
                    members: members(&["bob"]),
                    timeout_secs: Some(0),
                    ..Default::default()
                },
                tonic::Code::InvalidArgument,
                "timeout_secs",
            ),
            (
                RingGroupChange {
                    members: members(&["bob"]),
                    no_answer: Some("nobody".into()),
                    ..Default::default()
                },
                tonic::Code::NotFound,
                "forwarding target user nobody@example.test",
            ),
        ];
        for (settings, code, text) in cases {
            let (got, message) = refused(api.create_ring_group(create(&sales, settings)).await);
            assert_eq!(got, code, "{message}");
            assert!(message.contains(text), "{message:?} does not say {text:?}");
        }
        // A user's name is not a group's, and the other way round.
        let (code, message) = refused(
            api.create_ring_group(create(
                &format!("bob@{DOMAIN}"),
                RingGroupChange {
                    members: members(&["carol"]),
                    ..Default::default()
                },
            ))
            .await,
        );
        assert_eq!(code, tonic::Code::AlreadyExists, "{message}");
        // Nothing was created.
        let missing = api
            .get_ring_group(GetRingGroupRequest {
                address: sales.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);

        // Over the CLI: create, show, change, list, delete.
        let cli = |args: &[&str]| {
            let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
            let node = &pbx.node;
            async move {
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                node.cli(&refs).await.unwrap()
            }
        };
        let out = cli(&[
            "group",
            "create",
            &sales,
            "--members",
            "bob,carol:15",
            "--strategy",
            "sequential",
            "--no-answer",
            "dave",
            "--timeout",
            "45",
        ])
        .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(text.contains("bob, carol (15 s)"), "{text}");
        assert!(
            text.contains(&format!("no answer after (45 s) -> dave@{DOMAIN}")),
            "{text}"
        );
        let out = cli(&["group", "update", &sales, "--strategy", "round-robin"]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let group = api
            .get_ring_group(GetRingGroupRequest {
                address: sales.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(group.strategy(), RingStrategy::RoundRobin);
        assert_eq!(group.members.len(), 2);
        assert_eq!(group.timeout_secs, 45);
        // A user cannot take the group's name now.
        let taken = create_user(&pbx.node, DOMAIN, SALES, PASSWORD, 0).await;
        assert!(taken.is_err(), "{taken:?}");
        let out = cli(&["group", "list", "--domain", DOMAIN]).await;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            text.contains(&sales) && text.contains("round_robin"),
            "{text}"
        );
        // An audit of the domain shows its groups.
        let out = cli(&["audit", "domain", DOMAIN]).await;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            text.contains(&format!("ring group    {sales}")) && text.contains("round_robin"),
            "{text}"
        );
        // An update that empties the group is refused; the group is kept.
        let (code, _) = refused(
            api.update_ring_group(UpdateRingGroupRequest {
                address: sales.clone(),
                settings: Some(RingGroupChange {
                    members: members(&[]),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await,
        );
        assert_eq!(code, tonic::Code::InvalidArgument);
        let out = cli(&[
            "group",
            "create",
            &sales,
            "--members",
            "bob",
            "--when",
            "outside mon-fri 09:00-17:00",
        ])
        .await;
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--when applies to the targets"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        api.delete_ring_group(DeleteRingGroupRequest {
            address: sales.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        let out = cli(&["group", "get", &sales]).await;
        assert!(!out.status.success());
        // The name is free again.
        create_user(&pbx.node, DOMAIN, SALES, PASSWORD, 0)
            .await
            .unwrap();
        pbx.node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn after_hours_a_group_sends_its_calls_elsewhere_on_the_nodes_test_clock() {
    bounded(90, async {
        // Saturday 2026-12-12, 11:00 UTC (12:00 in Berlin): outside the
        // group's hours, its calls go to dave; the members do not ring.
        let pbx = Pbx::start(&["--test-clock", "2026-12-12T11:00:00Z"]).await;
        pbx.node
            .provisioning()
            .await
            .unwrap()
            .update_domain(dialtone_api::pb::UpdateDomainRequest {
                domain: DOMAIN.to_owned(),
                time_zone: Some("Europe/Berlin".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        create_group(
            &pbx,
            RingGroupChange {
                members: members(&["bob"]),
                always: Some("dave".into()),
                always_when: Some("outside mon-fri 09:00-17:00".into()),
                ..Default::default()
            },
        )
        .await;
        // bob's contact points at a port nobody listens on.
        pbx.register("bob", 9).await;
        let dave = pbx.phone("dave", "call_uas.xml").await;
        pbx.call(SALES, "call_uac.xml")
            .await
            .assert_all_successful(1);
        let dave = dave.finish().await;
        assert_eq!(
            header(invite(&dave), "Diversion"),
            format!("<sip:{SALES}@{DOMAIN}>;reason=unconditional;counter=1")
        );
        assert_legs(
            &pbx,
            &[
                ("bob", vec![]),
                (
                    "dave",
                    vec![started("inbound"), maybe_ringing(), answered(), ended()],
                ),
            ],
        )
        .await;
        pbx.node.stop().await.unwrap();
    })
    .await
}
