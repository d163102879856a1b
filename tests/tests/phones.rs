//! Real softphones against a node with its default settings, black box:
//! baresip 1.0 and linphone-cli 5.1 (the Debian packages) register over
//! each transport, call each other, the callee answers, audio flows both
//! ways and the caller hangs up.
//!
//! Each phone runs in a throwaway directory with its own configuration,
//! bound to 127.0.0.1 on ports the kernel picks, and is driven through its
//! console on stdin. What is checked, and how:
//! - registration: the node's `GetRegistrations` lists the phone's contact
//!   over the expected transport;
//! - the call: both users' streams hold `CallAnswered` and, after the hang
//!   up, `CallEnded`;
//! - audio both ways: each phone records what it hears to a WAV file
//!   (baresip's `sndfile` filter, linphone's file mode) while the other
//!   sends a tone (baresip's `ausine` source, a WAV file linphone plays);
//!   both recordings must hold a second of audio with non-silent samples.
//!
//! The transport is a parameter ([`Transport`]); a failure names the
//! phone and shows the tail of its log. `the_client_matrix_of_adr_0012`
//! measures which of baresip, linphone and SIPp registers with which list
//! of digest algorithms (the table of ADR 0012). The transfer tests (ADR
//! 0019) have a third phone: a blind transfer (baresip `/transfer`,
//! linphone as the transferee) and an attended one (three linphones,
//! `transfer 1 --to-call 2`). The phone launchers and the voicemail box
//! checks are in `softphones/` (shared with `voicemail_phones.rs`).
//! `scripts/test` installs both phones; without them these tests fail
//! saying which is missing.

mod softphones;
mod support;

use std::time::Duration;

use anyhow::bail;
use dialtone_api::pb::{SetForwardingRequest, UpdateDomainRequest, User};
use softphones::*;
use support::sip::{
    bounded, create_domain, create_user, eventually, registration_events, stream_events, Sipp,
};
use support::TestNode;

/// Audio each side must have recorded: one second of 8 kHz 16-bit mono.
const MIN_RECORDED_BYTES: u64 = 16_000;

/// `caller` calls `callee`; the callee answers by itself; both hear the
/// other; the caller hangs up.
async fn call(node: &TestNode, caller: &mut Phone, callee: &mut Phone) -> anyhow::Result<()> {
    let dialled = callee.user.address.clone();
    call_via(node, caller, &dialled, callee).await
}

/// `caller` dials `dialled`, and the call reaches `callee` (its own user,
/// or the user the call is forwarded to), which answers by itself; both
/// hear the other; the caller hangs up.
async fn call_via(
    node: &TestNode,
    caller: &mut Phone,
    dialled: &str,
    callee: &mut Phone,
) -> anyhow::Result<()> {
    let before = call_events(node, &callee.user).await?.len();
    let over_before = [caller.calls_over(), callee.calls_over()];
    let target = format!("sip:{dialled}");
    match caller.kind {
        Kind::Baresip => caller.command(&format!("dial {target}")).await?,
        Kind::Linphone => caller.command(&format!("call {target}")).await?,
    }
    let answered = eventually(STEP, "the call to be answered", || async {
        let events = call_events(node, &callee.user).await?;
        Ok(events[before.min(events.len())..]
            .iter()
            .any(|t| t == "CallAnswered")
            .then_some(()))
    })
    .await;
    if let Err(e) = answered {
        let log = std::fs::read_to_string(node.data_dir.join("node.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        bail!(
            "{e}\n{}\n{}\n--- the node's log (DIALTONE_TEST_NODE_LOG=debug for more) ---\n{}",
            caller.fail("calling"),
            callee.fail("being called"),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    // Audio both ways: each recording grows past a second of sound.
    for phone in [&*caller, &*callee] {
        let heard = eventually(STEP, "a second of audio", || async {
            Ok(phone
                .recording()
                .and_then(|p| std::fs::metadata(p).ok())
                .filter(|m| m.len() >= 44 + MIN_RECORDED_BYTES)
                .map(|_| ()))
        })
        .await;
        heard.map_err(|e| phone.fail(format!("recorded no audio: {e}")))?;
    }
    match caller.kind {
        Kind::Baresip => caller.command("hangup").await?,
        Kind::Linphone => caller.command("terminate").await?,
    }
    for phone in [&*caller, &*callee] {
        let ended = eventually(STEP, "CallEnded", || async {
            let events = call_events(node, &phone.user).await?;
            Ok(events
                .last()
                .is_some_and(|t| t == "CallEnded")
                .then_some(()))
        })
        .await;
        ended.map_err(|e| phone.fail(format!("call not ended: {e}")))?;
        let events = call_events(node, &phone.user).await?;
        assert!(
            events.iter().any(|t| t == "CallAnswered"),
            "{}: {events:?}",
            phone.label()
        );
    }
    for (phone, before) in [&*caller, &*callee].into_iter().zip(over_before) {
        let idle = eventually(STEP, "the phone to release the call", || async {
            Ok((phone.calls_over() > before).then_some(()))
        })
        .await;
        idle.map_err(|e| phone.fail(format!("call not released: {e}")))?;
    }
    // The recordings are complete once the call is over: what each side
    // heard is the other's tone, not silence.
    for phone in [&*caller, &*callee] {
        let loud = eventually(STEP, "the recording to hold the tone", || async {
            Ok(phone
                .recording()
                .map(|p| loud_samples(&p))
                .filter(|n| *n >= 4000)
                .map(|_| ()))
        })
        .await;
        loud.map_err(|e| {
            phone.fail(format!(
                "heard silence ({} loud samples in {:?}): {e}",
                phone.recording().map_or(0, |p| loud_samples(&p)),
                phone.recording()
            ))
        })?;
        // The next call records afresh.
        if let Some(recording) = phone.recording() {
            let _ = std::fs::remove_file(recording);
        }
    }
    Ok(())
}

/// Both phones register over `transport` with the node's defaults and call
/// each other, each way.
async fn phones_call_each_other(transport: Transport) -> anyhow::Result<()> {
    let (_dir, node, alice, bob) = node_with_two_users().await?;
    let tone_dir = tempfile::tempdir()?;
    let tone = tone_dir.path().join("tone.wav");
    write_tone(&tone)?;
    let mut baresip = Phone::baresip(&alice, &node, transport).await?;
    let mut linphone = Phone::linphone(&bob, &node, transport, &tone).await?;
    baresip.registered(&node, transport).await?;
    linphone.registered(&node, transport).await?;

    call(&node, &mut baresip, &mut linphone).await?;
    // linphone records each call to the file set before it.
    let heard = linphone.dir.path().join("heard.wav");
    linphone
        .command(&format!("record {}", heard.display()))
        .await?;
    call(&node, &mut linphone, &mut baresip).await?;

    baresip.quit().await;
    linphone.quit().await;
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_and_linphone_register_and_call_each_other_over_udp() {
    bounded(90, phones_call_each_other(Transport::Udp))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_and_linphone_register_and_call_each_other_over_tcp() {
    bounded(90, phones_call_each_other(Transport::Tcp))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_and_linphone_register_and_call_each_other_over_tls() {
    bounded(90, phones_call_each_other(Transport::Tls))
        .await
        .unwrap();
}

/// How many times `user` registered a contact so far.
async fn registrations_so_far(node: &TestNode, user: &User) -> anyhow::Result<usize> {
    Ok(registration_events(node, &user.id)
        .await?
        .iter()
        .filter(|e| e.starts_with("ContactRegistered"))
        .count())
}

/// Whether baresip, just started, registers (a new `ContactRegistered`
/// after `before`) or gives up (its `reg:` line says why).
async fn baresip_registers(
    node: &TestNode,
    phone: &Phone,
    before: usize,
) -> anyhow::Result<Result<(), String>> {
    let outcome = eventually(STEP, "registration or refusal", || async {
        if registrations_so_far(node, &phone.user).await? > before {
            return Ok(Some(Ok(())));
        }
        let output = phone.output.text();
        Ok(output
            .lines()
            .find(|l| l.contains("Register: "))
            .map(|l| Err(l.to_owned())))
    })
    .await;
    outcome.map_err(|e| phone.fail(e))
}

/// The client matrix of ADR 0012, measured: which client registers with
/// which list of digest algorithms. A client that changes its behaviour
/// makes this fail; then update the ADR (and maybe the default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_matrix_of_adr_0012() {
    bounded(110, async {
        let dir = tempfile::tempdir().unwrap();
        let node = TestNode::start(dir.path(), &[]).await.unwrap();
        // SIPp's scenario authenticates for the support module's domain.
        let domain = support::sip::DOMAIN;
        create_domain(&node, domain).await.unwrap();
        let alice = create_user(&node, domain, "alice", PASSWORD, 0)
            .await
            .unwrap();
        let bob = create_user(&node, domain, "bob", PASSWORD, 0)
            .await
            .unwrap();
        create_user(&node, domain, "carol", PASSWORD, 0)
            .await
            .unwrap();
        let lists: [&[&str]; 4] = [
            &["MD5"],
            &["SHA-256"],
            &["SHA-256", "MD5"],
            &["MD5", "SHA-256"],
        ];
        // Rows: baresip, linphone, SIPp; columns: the lists above.
        let expected = [
            [true, false, false, false],
            [true, true, true, true],
            [true, false, false, true],
        ];
        let mut measured = [[false; 4]; 3];
        let mut notes = Vec::new();
        for (column, list) in lists.iter().enumerate() {
            node.provisioning()
                .await
                .unwrap()
                .update_domain(UpdateDomainRequest {
                    domain: domain.into(),
                    digest_algorithms: list.iter().map(|a| (*a).to_owned()).collect(),
                    ..Default::default()
                })
                .await
                .unwrap();

            let before = registrations_so_far(&node, &alice).await.unwrap();
            let baresip = Phone::baresip(&alice, &node, Transport::Udp).await.unwrap();
            match baresip_registers(&node, &baresip, before).await.unwrap() {
                Ok(()) => measured[0][column] = true,
                Err(why) => notes.push(format!("baresip {list:?}: {why}")),
            }
            baresip.quit().await;

            let tone = dir.path().join("tone.wav");
            write_tone(&tone).unwrap();
            let before = registrations_so_far(&node, &bob).await.unwrap();
            let linphone = Phone::linphone(&bob, &node, Transport::Udp, &tone)
                .await
                .unwrap();
            let registered = eventually(STEP, "linphone's registration", || async {
                Ok((registrations_so_far(&node, &bob).await? > before).then_some(()))
            })
            .await;
            match registered {
                Ok(()) => measured[1][column] = true,
                Err(e) => notes.push(format!("linphone {list:?}: {}", linphone.fail(e))),
            }
            linphone.quit().await;

            let run = Sipp::new("register_auth.xml", node.sip_addr(), dir.path())
                .users(&[("carol".to_owned(), PASSWORD.to_owned())])
                .timeout_secs(10)
                .run()
                .await
                .unwrap();
            if run.exit_code == Some(0) && run.successful == 1 {
                measured[2][column] = true;
            } else {
                notes.push(format!("SIPp {list:?}: exit {:?}", run.exit_code));
            }
        }
        assert_eq!(
            measured,
            expected,
            "rows baresip, linphone, SIPp; columns {lists:?}\n{}",
            notes.join("\n")
        );
        node.stop().await.unwrap();
    })
    .await;
}

/// Call forwarding with real phones: baresip dials bob, who has no phone
/// registered and forwards to carol's linphone; then bob forwards
/// everything to alice and linphone dials bob: baresip answers. Each
/// forwarded INVITE carries Diversion and History-Info, and both phones
/// take it, answer and talk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_phones_answer_forwarded_calls() {
    let (_dir, node, alice, bob) = node_with_two_users().await.unwrap();
    let carol = create_user(&node, DOMAIN, "carol", PASSWORD, 0)
        .await
        .unwrap();
    let mut p = node.provisioning().await.unwrap();
    p.set_forwarding(SetForwardingRequest {
        user: bob.address.clone(),
        unavailable: Some("carol".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let tone_dir = tempfile::tempdir().unwrap();
    let tone = tone_dir.path().join("tone.wav");
    write_tone(&tone).unwrap();
    let transport = Transport::Udp;
    let mut baresip = Phone::baresip(&alice, &node, transport).await.unwrap();
    let mut linphone = Phone::linphone(&carol, &node, transport, &tone)
        .await
        .unwrap();
    baresip.registered(&node, transport).await.unwrap();
    linphone.registered(&node, transport).await.unwrap();

    call_via(&node, &mut baresip, &bob.address, &mut linphone)
        .await
        .unwrap();
    let bob_events = call_events(&node, &bob).await.unwrap();
    assert_eq!(
        bob_events,
        ["CallStarted", "CallForwarded"],
        "{bob_events:?}"
    );

    p.set_forwarding(SetForwardingRequest {
        user: bob.address.clone(),
        always: Some("alice".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let heard = linphone.dir.path().join("heard.wav");
    linphone
        .command(&format!("record {}", heard.display()))
        .await
        .unwrap();
    call_via(&node, &mut linphone, &bob.address, &mut baresip)
        .await
        .unwrap();
    let bob_events = call_events(&node, &bob).await.unwrap();
    assert_eq!(
        bob_events,
        [
            "CallStarted",
            "CallForwarded",
            "CallStarted",
            "CallForwarded"
        ],
        "{bob_events:?}"
    );

    baresip.quit().await;
    linphone.quit().await;
    node.stop().await.unwrap();
}

/// Real phones answer calls to ring groups: baresip calls a group whose
/// only available member is linphone (the other member has no phone and is
/// skipped), then linphone calls a group whose member is baresip. Each
/// answering phone's leg is a member's leg, to the group's address.
#[tokio::test]
async fn real_phones_answer_ring_group_calls() {
    let (_dir, node, alice, bob) = node_with_two_users().await.unwrap();
    let carol = create_user(&node, DOMAIN, "carol", PASSWORD, 0)
        .await
        .unwrap();
    let mut p = node.provisioning().await.unwrap();
    for (name, members) in [("sales", vec!["bob", "carol"]), ("support", vec!["alice"])] {
        p.create_ring_group(dialtone_api::pb::CreateRingGroupRequest {
            address: format!("{name}@{DOMAIN}"),
            settings: Some(dialtone_api::pb::RingGroupChange {
                members: Some(dialtone_api::pb::RingGroupMembers {
                    members: members.iter().map(|m| (*m).to_owned()).collect(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let tone_dir = tempfile::tempdir().unwrap();
    let tone = tone_dir.path().join("tone.wav");
    write_tone(&tone).unwrap();
    let transport = Transport::Udp;
    let mut baresip = Phone::baresip(&alice, &node, transport).await.unwrap();
    let mut linphone = Phone::linphone(&carol, &node, transport, &tone)
        .await
        .unwrap();
    baresip.registered(&node, transport).await.unwrap();
    linphone.registered(&node, transport).await.unwrap();

    call_via(
        &node,
        &mut baresip,
        &format!("sales@{DOMAIN}"),
        &mut linphone,
    )
    .await
    .unwrap();
    assert_eq!(
        call_events(&node, &bob).await.unwrap(),
        Vec::<String>::new(),
        "bob has no phone: skipped"
    );
    let heard = linphone.dir.path().join("heard.wav");
    linphone
        .command(&format!("record {}", heard.display()))
        .await
        .unwrap();
    call_via(
        &node,
        &mut linphone,
        &format!("support@{DOMAIN}"),
        &mut baresip,
    )
    .await
    .unwrap();
    // Each answering leg was started to the group's address.
    for (user, group) in [(&carol, "sales"), (&alice, "support")] {
        let started: Vec<String> = stream_events(&node, &format!("user-{}", user.id))
            .await
            .unwrap()
            .iter()
            .filter(|e| e.r#type == "CallStarted")
            .filter_map(|e| {
                let data: serde_json::Value = serde_json::from_str(&e.data_json).ok()?;
                (data["direction"] == "inbound")
                    .then(|| data["to"].as_str().unwrap_or("").to_owned())
            })
            .collect();
        assert_eq!(started, [format!("{group}@{DOMAIN}")], "{}", user.address);
    }
    baresip.quit().await;
    linphone.quit().await;
    node.stop().await.unwrap();
}

/// A real phone dials a feature code (ADR 0020): baresip dials `*78`, the
/// node records the user's do-not-disturb on (the API's event) before it
/// answers, then hangs up; baresip shows the call established and over.
#[tokio::test]
async fn baresip_dials_a_feature_code() {
    bounded(90, async {
        let (_dir, node, alice, _bob) = node_with_two_users().await.unwrap();
        let transport = Transport::Udp;
        let mut baresip = Phone::baresip(&alice, &node, transport).await.unwrap();
        baresip.registered(&node, transport).await.unwrap();
        // A call shorter than a second has no "terminated (duration ...)"
        // line in baresip 1.0: the end of the session is what it prints
        // when the node's BYE closes it.
        let closed = |p: &Phone| p.output.text().matches("session closed").count();
        let over = closed(&baresip);
        baresip
            .command(&format!("dial sip:*78@{DOMAIN}"))
            .await
            .unwrap();
        let dnd = eventually(STEP, "DndChanged", || async {
            let events = stream_events(&node, &format!("user-{}", alice.id)).await?;
            Ok(events
                .iter()
                .find(|e| e.r#type == "DndChanged")
                .map(|e| e.data_json.clone()))
        })
        .await
        .map_err(|e| baresip.fail(e))
        .unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&dnd).unwrap(),
            serde_json::json!({ "dnd": true })
        );
        eventually(STEP, "baresip to see the call end", || async {
            Ok((closed(&baresip) > over).then_some(()))
        })
        .await
        .map_err(|e| baresip.fail(e))
        .unwrap();
        let console = baresip.output.text();
        assert!(
            console.contains("Call established"),
            "{}",
            baresip.fail("the call was not answered")
        );
        let user = node
            .provisioning()
            .await
            .unwrap()
            .get_user(dialtone_api::pb::GetUserRequest {
                user: alice.address.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(user.dnd);
        baresip.quit().await;
        node.stop().await.unwrap();
    })
    .await
}

// --- Transfer (ADR 0019) ---------------------------------------------------

/// `(type, data)` of a user's call events.
async fn call_events_with_data(
    node: &TestNode,
    user: &User,
) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
    Ok(stream_events(node, &format!("user-{}", user.id))
        .await?
        .into_iter()
        .filter(|e| e.category == "call")
        .map(|e| {
            let data = serde_json::from_str(&e.data_json).unwrap_or_default();
            (e.r#type, data)
        })
        .collect())
}

/// Waits until one of `user`'s call events is `ty` and its data has
/// `fields`; returns its data.
async fn wait_for_event(
    node: &TestNode,
    user: &User,
    ty: &str,
    fields: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    eventually(STEP, &format!("{ty} of {}", user.address), || async {
        Ok(call_events_with_data(node, user)
            .await?
            .into_iter()
            .find(|(t, d)| {
                t == ty
                    && fields
                        .as_object()
                        .is_some_and(|f| f.iter().all(|(k, v)| d.get(k) == Some(v)))
            })
            .map(|(_, d)| d))
    })
    .await
}

/// Blind transfer between real phones: linphone (alice) calls baresip
/// (bob), who transfers her with `/transfer` to carol (another baresip);
/// linphone accepts the REFER, calls carol (authenticated as every call)
/// and carol answers. Bob's leg of the first call records
/// `CallTransferred` naming alice's new call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_phones_transfer_a_call_blind() {
    let (_dir, node, alice, bob) = node_with_two_users().await.unwrap();
    let carol = create_user(&node, DOMAIN, "carol", PASSWORD, 0)
        .await
        .unwrap();
    let tone_dir = tempfile::tempdir().unwrap();
    let tone = tone_dir.path().join("tone.wav");
    write_tone(&tone).unwrap();
    let transport = Transport::Udp;
    let mut linphone = Phone::linphone(&alice, &node, transport, &tone)
        .await
        .unwrap();
    let mut transferor = Phone::baresip(&bob, &node, transport).await.unwrap();
    let mut target = Phone::baresip(&carol, &node, transport).await.unwrap();
    for phone in [&mut linphone, &mut transferor, &mut target] {
        phone.registered(&node, transport).await.unwrap();
    }

    linphone
        .command(&format!("call sip:{}", bob.address))
        .await
        .unwrap();
    let first = wait_for_event(&node, &bob, "CallAnswered", serde_json::json!({}))
        .await
        .map_err(|e| transferor.fail(format!("not answered: {e}")))
        .unwrap();
    let original = first["call_id"].as_str().unwrap().to_owned();

    transferor
        .command(&format!("transfer sip:{}", carol.address))
        .await
        .unwrap();
    wait_for_event(&node, &carol, "CallAnswered", serde_json::json!({}))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{e}\n{}\n{}",
                linphone.fail("transferee"),
                transferor.fail("transferor")
            )
        })
        .unwrap();
    let transferred = wait_for_event(
        &node,
        &bob,
        "CallTransferred",
        serde_json::json!({
            "call_id": original,
            "transferor": bob.address,
            "transferee": alice.address,
            "target": carol.address,
            "kind": "blind",
        }),
    )
    .await
    .unwrap();
    // The new call is alice's second leg, to carol.
    let alice_events = call_events_with_data(&node, &alice).await.unwrap();
    let new_call: Vec<&serde_json::Value> = alice_events
        .iter()
        .filter(|(t, d)| t == "CallStarted" && d["call_id"] != original.as_str())
        .map(|(_, d)| d)
        .collect();
    assert_eq!(new_call.len(), 1, "{alice_events:#?}");
    assert_eq!(new_call[0]["to"], carol.address.as_str());
    assert_eq!(transferred["new_call_id"], new_call[0]["call_id"]);

    // The first call ends (the transferor hangs up once the transferee
    // reports the new call answered); then the new call is hung up.
    let ended = wait_for_event(
        &node,
        &bob,
        "CallEnded",
        serde_json::json!({ "call_id": original }),
    )
    .await;
    if ended.is_err() {
        transferor.command("hangup").await.unwrap();
    }
    let ended = wait_for_event(
        &node,
        &bob,
        "CallEnded",
        serde_json::json!({ "call_id": original }),
    )
    .await
    .unwrap();
    assert_eq!(ended["cause"], "transferred", "{ended}");
    linphone.command("terminate").await.unwrap();
    wait_for_event(
        &node,
        &carol,
        "CallEnded",
        serde_json::json!({ "call_id": new_call[0]["call_id"] }),
    )
    .await
    .unwrap();

    linphone.quit().await;
    transferor.quit().await;
    target.quit().await;
    node.stop().await.unwrap();
}

/// Fails with `what` and the log tails of the transferee, transferor and
/// target.
fn all_logs(phones: [&Phone; 3], what: &str, e: anyhow::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "{what}: {e}\n{}\n{}\n{}",
        phones[0].fail("transferee"),
        phones[1].fail("transferor"),
        phones[2].fail("target")
    )
}

/// Attended transfer between real phones, three linphones: alice calls
/// bob; bob calls carol (the consultation call: linphone holds alice) and
/// then transfers alice to carol with `transfer 1 --to-call 2`; alice's
/// INVITE carries the Replaces, carol's phone swaps the consultation call
/// for it and ends the consultation call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_phones_transfer_a_call_attended() {
    attended_transfer(&[]).await;
}

/// The same in b2bua call mode: each phone has its own dialog with the
/// node, and the node translates the Replaces of bob's REFER to carol's
/// leg of the consultation call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_phones_transfer_a_call_attended_in_b2bua_mode() {
    attended_transfer(&["--sip-call-mode", "b2bua"]).await;
}

async fn attended_transfer(extra_args: &[&str]) {
    let (_dir, node, alice, bob) = node_with_two_users_and(extra_args).await.unwrap();
    let carol = create_user(&node, DOMAIN, "carol", PASSWORD, 0)
        .await
        .unwrap();
    let tone_dir = tempfile::tempdir().unwrap();
    let tone = tone_dir.path().join("tone.wav");
    write_tone(&tone).unwrap();
    let transport = Transport::Udp;
    let mut transferee = Phone::linphone(&alice, &node, transport, &tone)
        .await
        .unwrap();
    let mut transferor = Phone::linphone(&bob, &node, transport, &tone)
        .await
        .unwrap();
    let mut target = Phone::linphone(&carol, &node, transport, &tone)
        .await
        .unwrap();
    for phone in [&mut transferee, &mut transferor, &mut target] {
        phone.registered(&node, transport).await.unwrap();
    }

    transferee
        .command(&format!("call sip:{}", bob.address))
        .await
        .unwrap();
    let first = wait_for_event(&node, &bob, "CallAnswered", serde_json::json!({}))
        .await
        .map_err(|e| all_logs([&transferee, &transferor, &target], "first call", e))
        .unwrap();
    let original = first["call_id"].as_str().unwrap().to_owned();
    // linphonec holds one call at a time: alice's call is put on hold
    // (a re-INVITE through the node) before bob calls carol.
    // A hold sent the instant the call is up may meet the node still
    // waiting for alice's ACK (b2bua mode: 491, RFC 3261 s.14.1, and
    // linphonec then loses track of its current call), so bob, like a
    // user, talks a moment before pressing hold.
    tokio::time::sleep(Duration::from_millis(500)).await;
    transferor.command("pause 1").await.unwrap();
    eventually(STEP, "linphone to hold the first call", || async {
        Ok(transferor
            .output
            .text()
            .contains("is now paused")
            .then_some(()))
    })
    .await
    .map_err(|e| all_logs([&transferee, &transferor, &target], "hold", e))
    .unwrap();
    transferor
        .command(&format!("call sip:{}", carol.address))
        .await
        .unwrap();
    let consult = wait_for_event(&node, &carol, "CallAnswered", serde_json::json!({}))
        .await
        .map_err(|e| all_logs([&transferee, &transferor, &target], "consultation call", e))
        .unwrap();
    let consult = consult["call_id"].as_str().unwrap().to_owned();

    // linphone transfers only a call whose media is up.
    eventually(STEP, "the consultation call's media", || async {
        Ok(transferor
            .output
            .text()
            .contains(&format!(
                "Media streams established with sip:{}",
                carol.address
            ))
            .then_some(()))
    })
    .await
    .map_err(|e| all_logs([&transferee, &transferor, &target], "consultation media", e))
    .unwrap();
    transferor.command("transfer 1 --to-call 2").await.unwrap();
    let transferred = wait_for_event(
        &node,
        &bob,
        "CallTransferred",
        serde_json::json!({
            "call_id": original,
            "transferor": bob.address,
            "transferee": alice.address,
            "target": carol.address,
            "kind": "attended",
            "replaced_call_id": consult,
        }),
    )
    .await
    .map_err(|e| all_logs([&transferee, &transferor, &target], "transfer", e))
    .unwrap();
    // Carol's phone took the new call and ended the consultation call.
    wait_for_event(
        &node,
        &carol,
        "CallAnswered",
        serde_json::json!({ "call_id": transferred["new_call_id"] }),
    )
    .await
    .map_err(|e| all_logs([&transferee, &transferor, &target], "the new call", e))
    .unwrap();
    let consult_end = wait_for_event(
        &node,
        &carol,
        "CallEnded",
        serde_json::json!({ "call_id": consult }),
    )
    .await
    .map_err(|e| {
        all_logs(
            [&transferee, &transferor, &target],
            "the consultation call's end",
            e,
        )
    })
    .unwrap();
    assert_eq!(consult_end["cause"], "transferred", "{consult_end}");
    // Bob's phone hears that it worked, then hangs up on alice.
    eventually(STEP, "linphone to report the transfer", || async {
        Ok(transferor
            .output
            .text()
            .contains("has been transfered")
            .then_some(()))
    })
    .await
    .map_err(|e| {
        all_logs(
            [&transferee, &transferor, &target],
            "the transferor's report",
            e,
        )
    })
    .unwrap();
    transferor.command("terminate all").await.unwrap();
    let ended = wait_for_event(
        &node,
        &bob,
        "CallEnded",
        serde_json::json!({ "call_id": original }),
    )
    .await
    .unwrap();
    assert_eq!(ended["cause"], "transferred", "{ended}");
    transferee.command("terminate all").await.unwrap();
    wait_for_event(
        &node,
        &carol,
        "CallEnded",
        serde_json::json!({ "call_id": transferred["new_call_id"] }),
    )
    .await
    .unwrap();

    transferee.quit().await;
    transferor.quit().await;
    target.quit().await;
    node.stop().await.unwrap();
}

// --- Voicemail (ADR 0022, ADR 0023) ----------------------------------------

/// The value of the metric line `name` (with its labels) in a scrape of
/// the node's metrics endpoint at `addr`.
async fn scrape_metric(addr: &str, name: &str) -> f64 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut stream,
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut text)
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// baresip (its microphone a 440 Hz tone) calls bob, whose only phone
/// never answers; after the no-answer time the call goes to bob's
/// voicemail box: baresip hears the greeting and the beep, then "speaks"
/// for a few seconds and hangs up. The box holds one new message whose
/// stored audio is the 440 Hz tone for as long as baresip sent it after
/// the beep (±0.3 s); bob's leg ended forwarded to `voicemail:bob`. The
/// node's media counters saw that call: the message's frames recorded,
/// none lost on loopback, and every session tick measured.
#[tokio::test]
async fn baresip_leaves_a_message_in_a_voicemail_box_after_no_answer() {
    bounded(150, async {
        let dir = tempfile::tempdir().unwrap();
        let tls = tls_args(dir.path()).unwrap();
        let args: Vec<&str> = tls.iter().map(String::as_str).collect();
        let (node, metrics) = TestNode::start_with_metrics(dir.path(), &args)
            .await
            .unwrap();
        create_domain(&node, DOMAIN).await.unwrap();
        let alice = create_user(&node, DOMAIN, "alice", PASSWORD, 0)
            .await
            .unwrap();
        let bob = create_user(&node, DOMAIN, "bob", PASSWORD, 0)
            .await
            .unwrap();
        let mut vm = box_with_forward(
            &node,
            &bob,
            SetForwardingRequest {
                no_answer: Some("voicemail".into()),
                no_answer_after_secs: Some(2),
                ..Default::default()
            },
        )
        .await;
        // bob's phone: registered, silent (never answers, never rings).
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let contact = format!("<sip:bob@{}>", silent.local_addr().unwrap());
        let mut ua = dialtone_sip::test_ua::TestUa::udp(node.sip_addr())
            .await
            .unwrap();
        let registered = ua
            .register(
                &dialtone_sip::test_ua::Register::new("bob", DOMAIN)
                    .password(PASSWORD)
                    .contact(&contact),
            )
            .await
            .unwrap();
        assert_eq!(registered.code, 200);

        // bob's desk phone watches his box (RFC 3842).
        let mwi = message_summary_subscriber(&node, "bob").await.unwrap();
        notified(&mwi, "0/0").await.unwrap();

        let transport = Transport::Udp;
        let mut baresip = Phone::baresip(&alice, &node, transport).await.unwrap();
        baresip.registered(&node, transport).await.unwrap();
        let over = baresip.calls_over();
        baresip
            .command(&format!("dial {}", bob.address))
            .await
            .unwrap();
        // The greeting (about 7 s) and the beep, then 3 s of tone.
        answered(&baresip).await.unwrap();
        tokio::time::sleep(Duration::from_secs(11)).await;
        baresip.command("hangup").await.unwrap();
        eventually(STEP, "baresip to end the call", || async {
            Ok((baresip.calls_over() > over).then_some(()))
        })
        .await
        .map_err(|e| baresip.fail(e))
        .unwrap();

        // What baresip heard: the greeting, then the 1 kHz beep. What it
        // sent: 440 Hz from the answer to the hang-up.
        let heard_path = baresip
            .recording()
            .ok_or_else(|| baresip.fail("no recording of what it heard"))
            .unwrap();
        let heard = wav_samples(&std::fs::read(&heard_path).unwrap());
        let beep = tone_spans(&heard, 1000.0);
        let &(_, beep_end_ms) = beep
            .iter()
            .find(|(start, end)| end - start >= 150)
            .ok_or_else(|| baresip.fail(format!("no beep in what it heard: {beep:?}")))
            .unwrap();
        let speech_before_beep = heard[..(beep_end_ms as usize * 8).min(heard.len())]
            .iter()
            .filter(|s| s.unsigned_abs() > 1000)
            .count();
        assert!(
            speech_before_beep > 8000,
            "the greeting was heard before the beep ({speech_before_beep} loud samples)"
        );
        let sent_path = heard_path.with_file_name(
            heard_path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .replace("-dec.wav", "-enc.wav"),
        );
        let sent_ms = (wav_samples(&std::fs::read(&sent_path).unwrap()).len() / 8) as i64;
        let expected_ms = sent_ms - i64::from(beep_end_ms);

        let message = eventually(STEP, "the message in bob's box", || async {
            let list = voicemail_client(&node)
                .await
                .list_messages(dialtone_api::pb::ListMessagesRequest {
                    user: bob.address.clone(),
                })
                .await?
                .into_inner();
            Ok(list.messages.into_iter().next())
        })
        .await
        .unwrap();
        assert!(!message.read);
        assert!(message.from.starts_with("alice@"), "{}", message.from);
        // The waiting message lit bob's lamp; listening to it moves it to
        // the saved ones.
        notified(&mwi, "1/0").await.unwrap();
        assert!(mwi
            .lock()
            .unwrap()
            .iter()
            .any(|b| b.starts_with("Messages-Waiting: yes")));
        vm.mark_message_read(dialtone_api::pb::MessageRequest {
            user: bob.address.clone(),
            message_id: message.message_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        notified(&mwi, "0/1").await.unwrap();
        let stored = wav_samples(&message_audio(&mut vm, &bob, &message.message_id).await);
        let tone_ms: u32 = tone_spans(&stored, 440.0).iter().map(|(s, e)| e - s).sum();
        assert!(
            (i64::from(tone_ms) - expected_ms).abs() <= 300,
            "stored {tone_ms} ms of 440 Hz; baresip sent {expected_ms} ms after the beep \
             (message {} ms)",
            message.duration_ms
        );
        assert!((i64::from(message.duration_ms) - expected_ms).abs() <= 300);

        // The media plane's own account of the call (the session ended and
        // published its counts before the message was saved).
        let metric = |name: &'static str| scrape_metric(&metrics, name);
        let recorded = metric("dialtone_media_recorded_frames_total").await;
        assert_eq!(
            recorded * 20.0,
            f64::from(message.duration_ms),
            "the message is the recorded frames"
        );
        let received = metric("dialtone_media_rtp_packets_received_total").await;
        assert!(
            received >= recorded,
            "{received} packets received for {recorded} frames recorded"
        );
        assert_eq!(metric("dialtone_media_rtp_packets_lost_total").await, 0.0);
        // Loopback and one call: baresip's 20 ms packets come in time,
        // give or take the stalls of a busy test machine (the tone's
        // ±0.3 s above).
        let late = metric("dialtone_media_late_packets_total").await;
        let concealed = metric("dialtone_media_concealed_frames_total").await;
        assert!(
            (late + concealed) * 20.0 <= 300.0,
            "{late} late packets, {concealed} concealed frames"
        );
        // A tick a frame while recording at least, and the greeting's
        // packets before.
        let ticks = metric("dialtone_media_tick_lateness_us_count").await;
        assert!(ticks >= recorded, "{ticks} ticks for {recorded} frames");
        assert_eq!(
            metric("dialtone_media_tick_lateness_us_bucket{le=\"+Inf\"}").await,
            ticks
        );
        let box_now = vm
            .get_mailbox(dialtone_api::pb::GetMailboxRequest {
                user: bob.address.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((box_now.new_messages, box_now.saved_messages), (0, 1));
        // bob's leg rang his phone, then went to his box (which has no leg).
        let bob_calls = call_events(&node, &bob).await.unwrap();
        assert_eq!(bob_calls, ["CallStarted", "CallForwarded"], "{bob_calls:?}");
        let events = stream_events(&node, &format!("user-{}", bob.id))
            .await
            .unwrap();
        let forwarded = events.iter().find(|e| e.r#type == "CallForwarded").unwrap();
        assert!(
            forwarded.data_json.contains("voicemail:bob@"),
            "{}",
            forwarded.data_json
        );
        assert_eq!(
            events
                .iter()
                .filter(|e| e.r#type == "VoicemailLeft")
                .count(),
            1
        );
        drop(silent);
        baresip.quit().await;
        node.stop().await.unwrap();
    })
    .await
}

/// `kill -9` of the node 3 s into a message (after the greeting and the
/// beep): after the restart the box holds the message whole or not at all
/// (ADR 0023: the audio is stored when the recording ends), never a
/// message whose audio is missing or broken; and the box takes the next
/// caller's message as before.
#[tokio::test]
async fn a_node_killed_during_a_message_keeps_it_whole_or_not_at_all() {
    bounded(150, async {
        let (dir, node, alice, bob) = node_with_two_users().await.unwrap();
        box_with_forward(
            &node,
            &bob,
            SetForwardingRequest {
                unavailable: Some("voicemail".into()),
                ..Default::default()
            },
        )
        .await;
        let transport = Transport::Udp;
        let mut baresip = Phone::baresip(&alice, &node, transport).await.unwrap();
        baresip.registered(&node, transport).await.unwrap();
        baresip
            .command(&format!("dial {}", bob.address))
            .await
            .unwrap();
        answered(&baresip).await.unwrap();
        // The shipped greeting and beep, then 3 s of the phone's tone.
        let prompts = dialtone_voicemail::prompts::Prompts::load().unwrap();
        let greeting_ms = prompts
            .get(dialtone_voicemail::prompts::Prompt::GreetingDefault)
            .len() as u64
            / 8;
        tokio::time::sleep(Duration::from_millis(greeting_ms + 250 + 3_000)).await;
        let data_dir = node.data_dir.clone();
        node.kill9().await.unwrap();
        baresip.quit().await;

        let tls = tls_args(dir.path()).unwrap();
        let args: Vec<&str> = tls.iter().map(String::as_str).collect();
        let node = TestNode::start(&data_dir, &args).await.unwrap();
        let mut vm = voicemail_client(&node).await;
        let after_crash = messages_are_whole(&mut vm, &bob).await;
        assert!(after_crash <= 1, "{after_crash} messages");

        // The box works after the restart.
        let mut baresip = Phone::baresip(&alice, &node, transport).await.unwrap();
        baresip.registered(&node, transport).await.unwrap();
        let over = baresip.calls_over();
        baresip
            .command(&format!("dial {}", bob.address))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(greeting_ms + 250 + 2_500)).await;
        baresip.command("hangup").await.unwrap();
        eventually(STEP, "baresip to end the call", || async {
            Ok((baresip.calls_over() > over).then_some(()))
        })
        .await
        .map_err(|e| baresip.fail(e))
        .unwrap();
        eventually(STEP, "the new message", || async {
            let n = voicemail_client(&node)
                .await
                .list_messages(dialtone_api::pb::ListMessagesRequest {
                    user: bob.address.clone(),
                })
                .await?
                .into_inner()
                .messages
                .len();
            Ok((n == after_crash + 1).then_some(()))
        })
        .await
        .unwrap();
        assert_eq!(messages_are_whole(&mut vm, &bob).await, after_crash + 1);
        baresip.quit().await;
        node.stop().await.unwrap();
    })
    .await
}
