//! Call transfer, black box (ADR 0019): a real node, SIPp as every phone.
//!
//! Blind: alice calls bob, bob REFERs alice to carol, alice accepts and
//! reports (NOTIFY), bob hangs up, alice calls carol with Referred-By.
//! Attended: bob first calls carol (the consultation call), then REFERs
//! alice to carol with a Replaces naming that call; alice's INVITE to carol
//! carries it. Each test asserts what the phones saw, every leg's call
//! events (the original call ends `transferred`, bob's leg holds
//! `CallTransferred` naming the new call) and the call detail records.
//! SIPp matches messages to calls by Call-ID, so a phone that takes part in
//! two dialogs is two SIPp runs (see the scenarios' comments).
//!
//! SIPp 3.6.1 reads only the first `Proxy-Authenticate`, so the node offers
//! MD5 first (`--sip-challenge-md5-first`).

mod support;

use std::collections::HashMap;
use std::time::Duration;

use dialtone_api::pb::{CallRecord, ListCallsRequest, TransferKind, User};
use serde_json::{json, Value};
use support::calls::{answered, call_events, matches, maybe_ringing, started, Expected};
use support::sip::{
    bounded, create_domain, create_user, eventually, Sipp, SippRun, DOMAIN, PASSWORD,
};
use support::TestNode;

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
        for name in ["alice", "bob", "carol"] {
            let user = create_user(&node, DOMAIN, name, PASSWORD, 0).await.unwrap();
            users.insert(name, user);
        }
        Pbx { dir, node, users }
    }

    fn id(&self, user: &str) -> &str {
        &self.users[user].id
    }

    async fn register(&self, user: &str, port: u16) {
        Sipp::new("register_auth.xml", self.node.sip_addr(), self.dir.path())
            .users(&[(user.into(), PASSWORD.into())])
            .key("contact_hostport", &format!("127.0.0.1:{port}"))
            .run()
            .await
            .unwrap()
            .assert_all_successful(1);
    }

    /// A phone of `user`: a SIPp UAS running `scenario` for `calls` calls,
    /// registered as the user's only contact.
    async fn phone(
        &self,
        user: &str,
        scenario: &str,
        calls: usize,
        keys: &[(&str, &str)],
    ) -> tokio::task::JoinHandle<anyhow::Result<SippRun>> {
        let mut sipp = Sipp::new(scenario, self.node.sip_addr(), self.dir.path())
            .users(&vec![(user.to_owned(), PASSWORD.to_owned()); calls])
            .timeout_secs(30);
        for (k, v) in keys {
            sipp = sipp.key(k, v);
        }
        let mut uas = sipp.start().await.unwrap();
        assert!(
            uas.is_running(),
            "SIPp UAS {scenario} exited before it listened"
        );
        self.register(user, uas.port()).await;
        tokio::spawn(uas.finish())
    }

    /// `user` places one call with the UAC `scenario` to `callee`.
    fn call(&self, user: &str, scenario: &str, callee: &str, keys: &[(&str, &str)]) -> Sipp {
        let mut sipp = Sipp::new(scenario, self.node.sip_addr(), self.dir.path())
            .users(&[(user.into(), PASSWORD.into())])
            .key("callee", callee)
            .key("callee_domain", DOMAIN)
            .timeout_secs(30);
        for (k, v) in keys {
            sipp = sipp.key(k, v);
        }
        sipp
    }

    /// The call detail records of the domain once `n` are finished.
    async fn cdrs(&self, n: usize) -> Vec<CallRecord> {
        let list = || async {
            let mut audit = self.node.audit().await?;
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
        let found = eventually(Duration::from_secs(5), "finished call records", || async {
            let calls = list().await?;
            Ok((calls.len() == n && calls.iter().all(|c| !c.in_progress)).then_some(calls))
        })
        .await;
        match found {
            Ok(r) => r,
            Err(e) => panic!("{e}; listed: {:#?}", list().await.unwrap()),
        }
    }
}

fn ok(run: SippRun, who: &str) -> SippRun {
    assert!(
        run.exit_code == Some(0) && run.successful >= 1 && run.failed == 0,
        "{who}: SIPp failed; received {:#?}\n{}",
        run.received,
        run.output
    );
    run
}

async fn finished(phone: tokio::task::JoinHandle<anyhow::Result<SippRun>>, who: &str) -> SippRun {
    ok(phone.await.unwrap().unwrap(), who)
}

fn ended(cause: &str) -> Expected {
    ("CallEnded", json!({ "cause": cause }))
}

fn address(user: &str) -> String {
    format!("{user}@{DOMAIN}")
}

/// The `call_id`s of the legs `user` started, in order.
fn call_ids(events: &[(String, Value)]) -> Vec<String> {
    events
        .iter()
        .filter(|(t, _)| t == "CallStarted")
        .map(|(_, d)| d["call_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The events of one call (`call_id`) of `events`.
fn of_call(events: &[(String, Value)], call_id: &str) -> Vec<(String, Value)> {
    events
        .iter()
        .filter(|(_, d)| d["call_id"] == call_id)
        .cloned()
        .collect()
}

/// Waits until `user`'s call events, split by call, are `expected` (one
/// list per call, in the order the calls started); returns them.
async fn legs_of(pbx: &Pbx, user: &str, expected: &[Vec<Expected>]) -> Vec<Vec<(String, Value)>> {
    let id = pbx.id(user).to_owned();
    let split = |events: Vec<(String, Value)>| -> Vec<Vec<(String, Value)>> {
        call_ids(&events)
            .iter()
            .map(|c| of_call(&events, c))
            .collect()
    };
    let found = eventually(Duration::from_secs(5), "the call events", || async {
        let legs = split(call_events(&pbx.node, &id).await);
        Ok(
            (legs.len() == expected.len() && legs.iter().zip(expected).all(|(l, e)| matches(l, e)))
                .then_some(legs),
        )
    })
    .await;
    match found {
        Ok(legs) => legs,
        Err(_) => panic!(
            "{user}: expected {expected:#?}\nfound {:#?}",
            split(call_events(&pbx.node, &id).await)
        ),
    }
}

/// The one message of `run` starting with `start`.
fn received<'a>(run: &'a SippRun, start: &str) -> &'a str {
    run.received
        .iter()
        .find(|m| m.starts_with(start))
        .unwrap_or_else(|| panic!("no {start} in {:#?}", run.received))
}

fn header<'a>(message: &'a str, name: &str) -> &'a str {
    message
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .unwrap_or("")
}

/// Blind transfer in `mode`'s node: see the module comment.
async fn blind_transfer(extra_args: &[&str]) {
    let pbx = Pbx::start(extra_args).await;
    let carol = pbx.phone("carol", "transfer_uas_target.xml", 1, &[]).await;
    let bob = pbx
        .phone(
            "bob",
            "transfer_uas_transferor.xml",
            1,
            &[
                ("target", "carol"),
                ("transferor", "bob"),
                ("refer_params", ";transport=udp"),
            ],
        )
        .await;
    let alice = pbx
        .call("alice", "transfer_uac_transferee.xml", "bob", &[])
        .run()
        .await
        .unwrap();
    let alice = ok(alice, "alice (transferee)");
    let bob = finished(bob, "bob (transferor)").await;
    // The REFER reached alice with bob's Refer-To and Referred-By.
    let refer = received(&alice, "REFER ");
    assert!(
        header(refer, "Refer-To").contains(&format!("sip:carol@{DOMAIN}")),
        "{refer}"
    );
    assert!(header(refer, "Referred-By").contains("sip:bob@"), "{refer}");
    // Bob heard how it went.
    assert!(bob
        .received
        .iter()
        .any(|m| m.starts_with("NOTIFY ") && m.contains("SIP/2.0 200 OK")));

    let new_call = pbx
        .call(
            "alice",
            "transfer_uac_new_call.xml",
            "carol",
            &[
                ("transferor", "bob"),
                ("replaces_header", "X-Transfer: blind"),
            ],
        )
        .run()
        .await
        .unwrap();
    ok(new_call, "alice (new call)");
    finished(carol, "carol (target)").await;

    let alice_legs = legs_of(
        &pbx,
        "alice",
        &[
            vec![
                started("outbound"),
                maybe_ringing(),
                answered(),
                ended("transferred"),
            ],
            vec![
                started("outbound"),
                maybe_ringing(),
                answered(),
                ended("normal_clearing"),
            ],
        ],
    )
    .await;
    let original = alice_legs[0][0].1["call_id"].as_str().unwrap().to_owned();
    let new = alice_legs[1][0].1["call_id"].as_str().unwrap().to_owned();
    assert_ne!(original, new);
    let transferred = (
        "CallTransferred",
        json!({
            "call_id": original,
            "new_call_id": new,
            "transferor": address("bob"),
            "transferee": address("alice"),
            "target": address("carol"),
            "kind": "blind",
        }),
    );
    let bob_legs = legs_of(
        &pbx,
        "bob",
        &[vec![
            started("inbound"),
            maybe_ringing(),
            answered(),
            ended("transferred"),
            transferred,
        ]],
    )
    .await;
    assert!(bob_legs[0][4].1.get("replaced_call_id").is_none());
    legs_of(
        &pbx,
        "carol",
        &[vec![
            started("inbound"),
            maybe_ringing(),
            answered(),
            ended("normal_clearing"),
        ]],
    )
    .await;

    // The records: the original call's bob leg names the new call.
    let cdrs = pbx.cdrs(2).await;
    let orig = cdrs.iter().find(|c| c.call_id == original).unwrap();
    let leg = orig
        .legs
        .iter()
        .find(|l| l.user_id == pbx.id("bob"))
        .unwrap();
    assert_eq!(leg.transferred_to_call_id, new, "{orig:#?}");
    assert_eq!(leg.transfer_kind, TransferKind::Blind as i32);
    assert_eq!(leg.transferee, address("alice"));
    assert_eq!(leg.transfer_target, address("carol"));
    assert!(cdrs.iter().any(|c| c.call_id == new));
    // And so does `dialtone calls`.
    let out = pbx.node.cli(&["calls", DOMAIN]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(&format!("transferred (blind) -> call {new}")),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pbx.node.stop().await.unwrap();
}

#[tokio::test]
async fn blind_transfer_links_the_new_call_and_ends_the_original_as_transferred() {
    bounded(90, blind_transfer(&[])).await;
}

#[tokio::test]
async fn blind_transfer_works_in_b2bua_mode() {
    bounded(90, blind_transfer(&["--sip-call-mode", "b2bua"])).await;
}

/// `;` `=` `@` escaped for a URI header (RFC 3261 s.19.1.1).
fn escape(s: &str) -> String {
    s.replace('%', "%25")
        .replace(';', "%3B")
        .replace('=', "%3D")
        .replace('@', "%40")
}

#[tokio::test]
async fn attended_transfer_replaces_the_consultation_call() {
    bounded(90, async {
        let pbx = Pbx::start(&[]).await;
        // Carol takes the consultation call, then the transfer's.
        let carol = pbx.phone("carol", "transfer_uas_target.xml", 2, &[]).await;
        let consult = pbx
            .call("bob", "transfer_uac_consult.xml", "carol", &[])
            .spawn();
        // The consultation call is up: its Call-ID names it in Replaces.
        let carol_id = pbx.id("carol").to_owned();
        let consult_sip_call_id = eventually(Duration::from_secs(5), "carol answered", || async {
            let events = call_events(&pbx.node, &carol_id).await;
            Ok(events.iter().any(|(t, _)| t == "CallAnswered").then(|| {
                events[0].1["sip_call_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            }))
        })
        .await
        .unwrap();
        let replaces = format!("{consult_sip_call_id};to-tag=carolanswers;from-tag=bobconsult");
        let refer_params = format!("?Replaces={}", escape(&replaces));
        let bob = pbx
            .phone(
                "bob",
                "transfer_uas_transferor.xml",
                1,
                &[
                    ("target", "carol"),
                    ("transferor", "bob"),
                    ("refer_params", &refer_params),
                ],
            )
            .await;
        let alice = pbx
            .call("alice", "transfer_uac_transferee.xml", "bob", &[])
            .run()
            .await
            .unwrap();
        let alice = ok(alice, "alice (transferee)");
        finished(bob, "bob (transferor)").await;
        let refer = received(&alice, "REFER ");
        assert!(header(refer, "Refer-To").contains("Replaces="), "{refer}");

        let replaces_header = format!("Replaces: {replaces}");
        let new_call = pbx
            .call(
                "alice",
                "transfer_uac_new_call.xml",
                "carol",
                &[("transferor", "bob"), ("replaces_header", &replaces_header)],
            )
            .run()
            .await
            .unwrap();
        ok(new_call, "alice (new call)");
        // Carol's phone got the Replaces (RFC 3891: it is its to act on).
        ok(consult.await.unwrap().unwrap(), "bob (consultation)");
        let carol = finished(carol, "carol (target)").await;
        let invites: Vec<&String> = carol
            .received
            .iter()
            .filter(|m| m.starts_with("INVITE "))
            .collect();
        assert!(
            invites.iter().any(|m| header(m, "Replaces") == replaces),
            "{invites:#?}"
        );

        let alice_legs = legs_of(
            &pbx,
            "alice",
            &[
                vec![
                    started("outbound"),
                    maybe_ringing(),
                    answered(),
                    ended("transferred"),
                ],
                vec![
                    started("outbound"),
                    maybe_ringing(),
                    answered(),
                    ended("normal_clearing"),
                ],
            ],
        )
        .await;
        let original = alice_legs[0][0].1["call_id"].as_str().unwrap().to_owned();
        let new = alice_legs[1][0].1["call_id"].as_str().unwrap().to_owned();
        let carol_legs = legs_of(
            &pbx,
            "carol",
            &[
                // The consultation call: replaced by the transfer.
                vec![
                    started("inbound"),
                    maybe_ringing(),
                    answered(),
                    ended("transferred"),
                ],
                vec![
                    started("inbound"),
                    maybe_ringing(),
                    answered(),
                    ended("normal_clearing"),
                ],
            ],
        )
        .await;
        let consult_call_id = carol_legs[0][0].1["call_id"].as_str().unwrap().to_owned();
        assert_eq!(carol_legs[1][0].1["call_id"], new.as_str());
        let transferred = (
            "CallTransferred",
            json!({
                "call_id": original,
                "new_call_id": new,
                "transferor": address("bob"),
                "transferee": address("alice"),
                "target": address("carol"),
                "kind": "attended",
                "replaced_call_id": consult_call_id,
            }),
        );
        legs_of(
            &pbx,
            "bob",
            &[
                vec![
                    started("outbound"),
                    maybe_ringing(),
                    answered(),
                    ended("transferred"),
                ],
                vec![
                    started("inbound"),
                    maybe_ringing(),
                    answered(),
                    ended("transferred"),
                    transferred,
                ],
            ],
        )
        .await;
        let cdrs = pbx.cdrs(3).await;
        let orig = cdrs.iter().find(|c| c.call_id == original).unwrap();
        let leg = orig
            .legs
            .iter()
            .find(|l| l.user_id == pbx.id("bob"))
            .unwrap();
        assert_eq!(
            leg.transfer_kind,
            TransferKind::Attended as i32,
            "{orig:#?}"
        );
        assert_eq!(leg.transferred_to_call_id, new);
        assert_eq!(leg.transfer_replaced_call_id, consult_call_id);
        pbx.node.stop().await.unwrap();
    })
    .await;
}

// --- Bad REFERs --------------------------------------------------------------

/// Sends `request` from `sock` to the node and returns the status line of
/// its final response.
async fn status_of(
    sock: &tokio::net::UdpSocket,
    node: std::net::SocketAddr,
    request: &str,
) -> String {
    sock.send_to(request.as_bytes(), node).await.unwrap();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .expect("a response")
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let line = text.lines().next().unwrap_or_default().to_owned();
        if !line.starts_with("SIP/2.0 1") {
            return line;
        }
    }
}

fn refer(
    local: std::net::SocketAddr,
    n: u32,
    to_tag: Option<&str>,
    refer_to: Option<&str>,
) -> String {
    let to_tag = to_tag.map_or(String::new(), |t| format!(";tag={t}"));
    let refer_to = refer_to.map_or(String::new(), |r| format!("Refer-To: {r}\r\n"));
    format!(
        "REFER sip:alice@{DOMAIN} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK-bad-refer-{n}\r\n\
         From: <sip:bob@{DOMAIN}>;tag=b{n}\r\n\
         To: <sip:alice@{DOMAIN}>{to_tag}\r\n\
         Call-ID: bad-refer-{n}@test\r\n\
         CSeq: 1 REFER\r\n\
         Contact: <sip:bob@{local}>\r\n\
         Max-Forwards: 70\r\n\
         {refer_to}\
         Content-Length: 0\r\n\r\n"
    )
}

#[tokio::test]
async fn bad_refers_get_a_status_saying_what_is_wrong() {
    bounded(60, async {
        let pbx = Pbx::start(&[]).await;
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = sock.local_addr().unwrap();
        let node = pbx.node.sip_addr();
        let carol = format!("<sip:carol@{DOMAIN}>");
        for (n, to_tag, refer_to, expected) in [
            (
                1,
                Some("a1"),
                None,
                "SIP/2.0 400 Bad Request (REFER without Refer-To)",
            ),
            (
                2,
                Some("a1"),
                Some("<garbage"),
                "SIP/2.0 400 Bad Request (Refer-To is not a name-addr or addr-spec)",
            ),
            (
                3,
                Some("a1"),
                Some("<tel:+15551234567>"),
                "SIP/2.0 400 Bad Request (Refer-To is not a SIP URI)",
            ),
            (
                4,
                Some("a1"),
                Some(carol.as_str()),
                "SIP/2.0 481 Call/Transaction Does Not Exist",
            ),
            (
                5,
                None,
                Some(carol.as_str()),
                "SIP/2.0 403 Forbidden (REFER outside a dialog is not accepted)",
            ),
        ] {
            let line = status_of(&sock, node, &refer(local, n, to_tag, refer_to)).await;
            assert_eq!(line, expected, "REFER {n}");
        }
        // Nothing was recorded for anyone.
        for user in ["alice", "bob", "carol"] {
            assert!(call_events(&pbx.node, pbx.id(user)).await.is_empty());
        }
        pbx.node.stop().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn an_attended_refer_naming_no_call_is_refused_in_b2bua_mode_with_the_reason() {
    bounded(60, async {
        // In b2bua mode the Replaces is translated to the target's leg of
        // the call it names: one naming no answered call cannot be.
        let pbx = Pbx::start(&["--sip-call-mode", "b2bua"]).await;
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = sock.local_addr().unwrap();
        let refer_to = format!("<sip:carol@{DOMAIN}?Replaces=c%40h%3Bto-tag%3Da%3Bfrom-tag%3Db>");
        let line = status_of(
            &sock,
            pbx.node.sip_addr(),
            &refer(local, 1, Some("a1"), Some(&refer_to)),
        )
        .await;
        assert_eq!(
            line,
            "SIP/2.0 400 Bad Request (Refer-To Replaces names no answered call here)"
        );
        pbx.node.stop().await.unwrap();
    })
    .await;
}
