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

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dialtone_api::pb::{
    CallRecord, ForwardReason, ListCallsRequest, SetDndRequest, SetForwardingRequest, User,
};
use serde_json::json;
use support::calls::{answered, assert_call_events, failed, maybe_ringing, started, Expected};
use support::sip::{
    bounded, create_domain, create_user, eventually, Sipp, SippRun, DOMAIN, PASSWORD,
};
use support::TestNode;

/// A node with [`DOMAIN`] and the users alice (the caller), bob (the
/// dialled user), carol and dave (where calls are forwarded to).
struct Pbx {
    dir: tempfile::TempDir,
    node: TestNode,
    users: HashMap<&'static str, User>,
}

impl Pbx {
    async fn start(extra_args: &[&str]) -> Pbx {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["--sip-challenge-md5-first"];
        args.extend_from_slice(extra_args);
        let node = TestNode::start(dir.path(), &args).await.unwrap();
        create_domain(&node, DOMAIN).await.unwrap();
        let mut users = HashMap::new();
        for name in ["alice", "bob", "carol", "dave"] {
            let user = create_user(&node, DOMAIN, name, PASSWORD, 0).await.unwrap();
            users.insert(name, user);
        }
        Pbx { dir, node, users }
    }

    fn id(&self, user: &str) -> &str {
        &self.users[user].id
    }

    /// Registers `user` with a contact on `127.0.0.1:port`.
    async fn register(&self, user: &str, port: u16) {
        Sipp::new("register_auth.xml", self.node.sip_addr(), self.dir.path())
            .users(&[(user.into(), PASSWORD.into())])
            .key("domain", DOMAIN)
            .key("contact_hostport", &format!("127.0.0.1:{port}"))
            .run()
            .await
            .unwrap()
            .assert_all_successful(1);
    }

    /// A phone of `user`: a SIPp UAS running `scenario` once, registered
    /// as the user's only contact.
    async fn phone(&self, user: &str, scenario: &str) -> Phone {
        let mut uas = Sipp::new(scenario, self.node.sip_addr(), self.dir.path())
            .users(&[(user.into(), PASSWORD.into())])
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
        let port = uas.port();
        self.register(user, port).await;
        Phone {
            run: tokio::spawn(uas.finish()),
        }
    }

    /// alice calls bob with the UAC `scenario`.
    async fn call_bob(&self, scenario: &str) -> SippRun {
        Sipp::new(scenario, self.node.sip_addr(), self.dir.path())
            .users(&[("alice".into(), PASSWORD.into())])
            .key("callee", "bob")
            .key("callee_domain", DOMAIN)
            .timeout_secs(30)
            .run()
            .await
            .unwrap()
    }

    async fn forward(&self, user: &str, rules: SetForwardingRequest) {
        self.node
            .provisioning()
            .await
            .unwrap()
            .set_forwarding(SetForwardingRequest {
                user: format!("{user}@{DOMAIN}"),
                ..rules
            })
            .await
            .unwrap();
    }

    async fn dnd(&self, user: &str) {
        self.node
            .provisioning()
            .await
            .unwrap()
            .set_dnd(SetDndRequest {
                user: format!("{user}@{DOMAIN}"),
                dnd: true,
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

/// A SIPp UAS running in the background.
struct Phone {
    run: tokio::task::JoinHandle<anyhow::Result<SippRun>>,
}

impl Phone {
    /// Waits for the phone's one call to end and checks it went as its
    /// scenario says.
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

/// The final statuses of the INVITEs a SIPp caller received, in order
/// (`100` and `180` left out).
fn invite_statuses(run: &SippRun) -> Vec<u16> {
    let mut out = Vec::new();
    for m in &run.received {
        let Some(rest) = m.strip_prefix("SIP/2.0 ") else {
            continue;
        };
        let code: u16 = rest
            .split_whitespace()
            .next()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let invite = m
            .lines()
            .any(|l| l.starts_with("CSeq:") && l.ends_with("INVITE"));
        if invite && code >= 200 && out.last() != Some(&code) {
            out.push(code);
        }
    }
    out
}

/// The first INVITE a phone received.
fn invite(run: &SippRun) -> &str {
    run.received
        .iter()
        .find(|m| m.starts_with("INVITE "))
        .unwrap_or_else(|| panic!("no INVITE in {:#?}", run.received))
}

/// The value of header `name` in `message` ("" when absent).
fn header<'a>(message: &'a str, name: &str) -> &'a str {
    message
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .unwrap_or("")
}

// --- Call events -----------------------------------------------------------

fn ended() -> Expected {
    ("CallEnded", json!({ "cause": "normal_clearing" }))
}

fn forwarded(to: &str, reason: &str) -> Expected {
    (
        "CallForwarded",
        json!({ "to": format!("{to}@{DOMAIN}"), "reason": reason }),
    )
}

/// Asserts the call events of each user's leg (by name), as
/// [`assert_call_events`] does.
async fn assert_legs(pbx: &Pbx, legs: &[(&str, Vec<Expected>)]) {
    let by_id: Vec<(&str, Vec<Expected>)> = legs
        .iter()
        .map(|(user, expected)| (pbx.id(user), expected.clone()))
        .collect();
    assert_call_events(&pbx.node, &by_id).await;
}

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
