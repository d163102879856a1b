//! Calls through the back-to-back user agent, black box: a node started
//! with `--sip-call-mode b2bua`, users provisioned over gRPC, SIPp as the
//! caller and as the callee (as in `calls_sipp.rs`). The node answers the
//! caller itself and calls the callee in a dialog of its own: each side
//! sees only the node (another Call-ID, the node's tags, Via and Contact),
//! and the call events are those of proxy mode.

mod support;

use std::time::Duration;

use dialtone_api::pb::User;
use serde_json::{json, Value};
use support::sip::{
    bounded, create_domain, create_user, eventually, stream_events, Sipp, SippRun, DOMAIN, PASSWORD,
};
use support::TestNode;

/// A node in B2BUA mode with [`DOMAIN`], the caller alice and the callee bob.
struct Calls {
    dir: tempfile::TempDir,
    node: TestNode,
    alice: User,
    bob: User,
}

impl Calls {
    async fn start() -> Calls {
        let dir = tempfile::tempdir().unwrap();
        // SIPp 3.6.1 reads only the first Proxy-Authenticate: MD5 first.
        let args = ["--sip-challenge-md5-first", "--sip-call-mode", "b2bua"];
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

    /// Starts a SIPp UAS running `scenario` once, registered as bob's only
    /// contact.
    async fn callee(&self, scenario: &str) -> tokio::task::JoinHandle<anyhow::Result<SippRun>> {
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
        Sipp::new("register_auth.xml", self.node.sip_addr(), self.dir.path())
            .users(&[("bob".into(), PASSWORD.into())])
            .key("domain", DOMAIN)
            .key("contact_hostport", &format!("127.0.0.1:{}", uas.port()))
            .run()
            .await
            .unwrap()
            .assert_all_successful(1);
        tokio::spawn(uas.finish())
    }

    /// alice calls bob with the UAC `scenario`.
    async fn call_bob(&self, scenario: &str) -> SippRun {
        Sipp::new(scenario, self.node.sip_addr(), self.dir.path())
            .users(&[("alice".into(), PASSWORD.into())])
            .key("callee", "bob")
            .key("callee_domain", DOMAIN)
            .timeout_secs(20)
            .run()
            .await
            .unwrap()
    }
}

/// Waits for the UAS and checks that its one call succeeded.
async fn finished(uas: tokio::task::JoinHandle<anyhow::Result<SippRun>>) -> SippRun {
    let run = uas.await.unwrap().unwrap();
    assert!(
        run.exit_code == Some(0) && run.successful == 1,
        "SIPp UAS failed; received {:#?}\n{}",
        run.received,
        run.output
    );
    run
}

/// The messages SIPp received, one word each (`"<status> <method>"` or the
/// request's method), without 100s and repeated retransmissions.
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
                let method = header(m, "CSeq")
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("?")
                    .to_owned();
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

/// The value of header `name` (or its compact form) in `message`.
fn header(message: &str, name: &str) -> String {
    let compact = match name {
        "Call-ID" => "i",
        "From" => "f",
        "To" => "t",
        "Via" => "v",
        _ => name,
    };
    message
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            let n = n.trim();
            (n.eq_ignore_ascii_case(name) || n.eq_ignore_ascii_case(compact))
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default()
}

/// The first message SIPp received that starts with `start_line`.
fn received<'a>(run: &'a SippRun, start_line: &str) -> &'a str {
    run.received
        .iter()
        .find(|m| m.starts_with(start_line))
        .unwrap_or_else(|| panic!("no {start_line} in {:#?}", run.received))
}

fn tag(header_value: &str) -> &str {
    header_value
        .split(";tag=")
        .nth(1)
        .map_or("", |t| t.split(';').next().unwrap_or(""))
}

/// The caller's and the callee's views of the call share nothing but the
/// node: another Call-ID, the node's tags, the node's Via only.
fn assert_hidden(caller: &SippRun, callee: &SippRun) {
    let invite = received(callee, "INVITE ");
    let ok = received(caller, "SIP/2.0 200 OK");
    let (caller_call_id, callee_call_id) = (header(ok, "Call-ID"), header(invite, "Call-ID"));
    assert!(!caller_call_id.is_empty() && !callee_call_id.is_empty());
    assert_ne!(caller_call_id, callee_call_id, "{invite}");
    // The callee sees the node's From tag, not the caller's; the caller
    // the node's To tag, not the callee's.
    let caller_tag = tag(&header(ok, "From")).to_owned();
    let callee_tag = tag(&header(received(callee, "ACK "), "To")).to_owned();
    assert_ne!(tag(&header(invite, "From")), caller_tag, "{invite}");
    assert_ne!(tag(&header(ok, "To")), callee_tag, "{ok}");
    for m in &callee.received {
        assert!(
            !m.contains(&caller_call_id) && !m.contains(&caller_tag),
            "{m}"
        );
    }
    for m in &caller.received {
        assert!(
            !m.contains(&callee_call_id) && !m.contains(&callee_tag),
            "{m}"
        );
    }
    // One Via (the node's), no Record-Route: the node is the callee's peer.
    assert_eq!(
        invite.lines().filter(|l| l.starts_with("Via:")).count(),
        1,
        "{invite}"
    );
    assert!(!invite.contains("Record-Route"), "{invite}");
    // The caller's session description was carried across.
    assert!(invite.contains("o=uac "), "{invite}");
    assert!(ok.contains("o=uas "), "{ok}");
}

/// The `Call*` events of `user-{id}` as `(type, data)`.
async fn call_events(node: &TestNode, user_id: &str) -> Vec<(String, Value)> {
    stream_events(node, &format!("user-{user_id}"))
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.r#type.starts_with("Call"))
        .map(|e| {
            let data = serde_json::from_str(&e.data_json).unwrap_or(Value::Null);
            (e.r#type, data)
        })
        .collect()
}

/// Waits until both users' call events are exactly `expected` (types, and
/// the given fields of the last one), sharing one `call_id`.
async fn assert_call_events(t: &Calls, expected: &[&str], last: Value) {
    for user in [&t.alice.id, &t.bob.id] {
        let found = eventually(
            Duration::from_secs(5),
            &format!("the call events of user-{user}"),
            || async {
                let events = call_events(&t.node, user).await;
                let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
                let last_ok = events.last().is_some_and(|(_, data)| {
                    last.as_object()
                        .is_some_and(|f| f.iter().all(|(k, v)| data.get(k) == Some(v)))
                });
                Ok((types == expected && last_ok).then_some(events))
            },
        )
        .await;
        if found.is_err() {
            panic!(
                "user-{user}: expected {expected:?} ending with {last}, found {:#?}",
                call_events(&t.node, user).await
            );
        }
    }
    let mut ids = Vec::new();
    for user in [&t.alice.id, &t.bob.id] {
        for (_, data) in call_events(&t.node, user).await {
            ids.push(data["call_id"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert!(
        !ids[0].is_empty() && ids.iter().all(|id| *id == ids[0]),
        "the legs do not share one call_id: {ids:#?}"
    );
}

const ANSWERED_AND_ENDED: &[&str] = &["CallStarted", "CallRinging", "CallAnswered", "CallEnded"];

#[tokio::test]
async fn the_caller_hangs_up_a_call_answered_through_the_b2bua() {
    bounded(60, async {
        let t = Calls::start().await;
        let uas = t.callee("b2bua_uas.xml").await;
        let caller = t.call_bob("b2bua_uac.xml").await;
        caller.assert_all_successful(1);
        assert_eq!(
            summary(&caller),
            ["407 INVITE", "180 INVITE", "200 INVITE", "200 BYE"]
        );
        let callee = finished(uas).await;
        assert_eq!(summary(&callee), ["INVITE", "ACK", "BYE"]);
        assert_hidden(&caller, &callee);
        // The node's own BYE on the callee's leg: its CSeq, its Call-ID.
        let bye = received(&callee, "BYE ");
        assert_eq!(header(bye, "CSeq"), "2 BYE", "{bye}");
        assert_call_events(
            &t,
            ANSWERED_AND_ENDED,
            json!({ "cause": "normal_clearing", "hangup_side": "caller" }),
        )
        .await;
        t.node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn the_callee_hangs_up_a_call_answered_through_the_b2bua() {
    bounded(60, async {
        let t = Calls::start().await;
        let uas = t.callee("call_uas_hangs_up.xml").await;
        let caller = t.call_bob("call_uac_callee_hangs_up.xml").await;
        caller.assert_all_successful(1);
        assert_eq!(
            summary(&caller),
            ["407 INVITE", "180 INVITE", "200 INVITE", "BYE"]
        );
        let callee = finished(uas).await;
        assert_eq!(summary(&callee), ["INVITE", "ACK", "200 BYE"]);
        assert_hidden(&caller, &callee);
        // The caller got the node's BYE in its own dialog.
        let bye = received(&caller, "BYE ");
        assert_eq!(
            header(bye, "Call-ID"),
            header(received(&caller, "SIP/2.0 200 OK"), "Call-ID")
        );
        assert_call_events(
            &t,
            ANSWERED_AND_ENDED,
            json!({ "cause": "normal_clearing", "hangup_side": "callee" }),
        )
        .await;
        t.node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn a_busy_callee_is_relayed_as_the_nodes_own_486() {
    bounded(60, async {
        let t = Calls::start().await;
        let uas = t.callee("call_uas_busy.xml").await;
        let caller = t.call_bob("call_uac_fails.xml").await;
        caller.assert_all_successful(1);
        assert_eq!(summary(&caller), ["407 INVITE", "486 INVITE"]);
        let callee = finished(uas).await;
        // The node acknowledged the 486 on its own leg.
        assert_eq!(summary(&callee), ["INVITE", "ACK"]);
        let busy = received(&caller, "SIP/2.0 486");
        let invite = received(&callee, "INVITE ");
        assert_ne!(header(busy, "Call-ID"), header(invite, "Call-ID"));
        assert!(!busy.contains(&header(invite, "Call-ID")), "{busy}");
        for user in [&t.alice.id, &t.bob.id] {
            let found = eventually(Duration::from_secs(5), "the failed call", || async {
                let events = call_events(&t.node, user).await;
                Ok(events
                    .last()
                    .is_some_and(|(ty, data)| {
                        ty == "CallFailed"
                            && data["sip_status"] == json!(486)
                            && data["cause"] == json!("user_busy")
                    })
                    .then_some(()))
            })
            .await;
            assert!(found.is_ok(), "{:#?}", call_events(&t.node, user).await);
        }
        t.node.stop().await.unwrap();
    })
    .await
}
