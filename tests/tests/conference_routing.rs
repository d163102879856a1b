//! Calls routed to conference rooms, black box (issue 16's targets, issue
//! 18's rooms): a forward to `conference:standup` (always, on no answer,
//! and by the `*72` feature code), the checks when the rule is set, a room
//! deleted after its rule was set, and rooms created and deleted seen by
//! the router at once. SIPp is the caller and every phone (as in
//! `forwarding_calls.rs`), baresip the caller that enters a room's PIN.
//!
//! What is checked: the caller ends up in the room (`ParticipantJoined`
//! with the caller's address, in the conference's stream), and the call's
//! events show the path (the forwarding user's leg ends `CallForwarded`
//! to `conference:standup@…`, the caller's is answered with that name).

mod softphones;
mod support;

use std::time::Duration;

use dialtone_api::pb::conference_service_client::ConferenceServiceClient;
use dialtone_api::pb::{
    CreateRoomRequest, DeleteRoomRequest, EventEnvelope, RoomChange, SetForwardingRequest,
};
use serde_json::json;
use support::calls::{maybe_ringing, started};
use support::pbx::{assert_legs, ended, header, invite, invite_statuses, Pbx};
use support::sip::{bounded, eventually, DOMAIN};
use support::{read_all, TestNode};

const STEP: Duration = Duration::from_secs(10);

async fn rooms(node: &TestNode) -> ConferenceServiceClient<support::Channel> {
    ConferenceServiceClient::new(node.channel().await.unwrap())
}

async fn create_room(node: &TestNode, name: &str, settings: RoomChange) {
    rooms(node)
        .await
        .create_room(CreateRoomRequest {
            address: format!("{name}@{DOMAIN}"),
            settings: Some(settings),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn delete_room(node: &TestNode, name: &str) {
    rooms(node)
        .await
        .delete_room(DeleteRoomRequest {
            address: format!("{name}@{DOMAIN}"),
            ..Default::default()
        })
        .await
        .unwrap();
}

fn data(event: &EventEnvelope) -> serde_json::Value {
    serde_json::from_str(&event.data_json).unwrap()
}

/// The data of every `ty` event of every conference so far.
async fn conference_events(node: &TestNode, ty: &str) -> Vec<serde_json::Value> {
    read_all(node)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.stream.starts_with("conference-") && e.r#type == ty)
        .map(data)
        .collect()
}

/// Waits until `caller` (`user@domain`) joined a conference of `room`.
async fn joined(node: &TestNode, caller: &str) -> serde_json::Value {
    eventually(STEP, "the caller to join the room", || async {
        Ok(conference_events(node, "ParticipantJoined")
            .await
            .into_iter()
            .find(|d| d["caller"] == caller))
    })
    .await
    .unwrap()
}

fn forwarded_to_room(reason: &str) -> support::calls::Expected {
    (
        "CallForwarded",
        json!({ "to": format!("conference:standup@{DOMAIN}"), "reason": reason }),
    )
}

fn answered_by_room() -> support::calls::Expected {
    (
        "CallAnswered",
        json!({ "contact": format!("conference:standup@{DOMAIN}") }),
    )
}

/// bob forwards every call to the room: alice's call to bob is answered
/// by the room and alice joins it. Set-time checks refuse a room that
/// does not exist; once the room is deleted, bob's rule is a forward not
/// taken (his phone rings, his leg says why).
#[tokio::test]
async fn a_call_forwarded_always_to_a_room_joins_it() {
    bounded(90, async {
        let pbx = Pbx::start(&[]).await;
        create_room(&pbx.node, "standup", RoomChange::default()).await;

        // Checked when set: a room that does not exist, a malformed one.
        let mut provisioning = pbx.node.provisioning().await.unwrap();
        let refused = provisioning
            .set_forwarding(SetForwardingRequest {
                user: pbx.users["bob"].address.clone(),
                always: Some("conference:nosuch".into()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::FailedPrecondition,
            "{refused:?}"
        );
        assert!(
            refused
                .message()
                .contains(&format!("conference:nosuch@{DOMAIN}"))
                && refused.message().contains("no conference room nosuch"),
            "{}",
            refused.message()
        );
        let invalid = provisioning
            .set_forwarding(SetForwardingRequest {
                user: pbx.users["bob"].address.clone(),
                always: Some("conference:".into()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(invalid.code(), tonic::Code::InvalidArgument, "{invalid:?}");

        pbx.forward(
            "bob",
            SetForwardingRequest {
                always: Some("conference:standup".into()),
                ..Default::default()
            },
        )
        .await;
        let run = pbx.call_bob("call_uac_app_holds_3s.xml").await;
        run.assert_all_successful(1);
        assert_eq!(invite_statuses(&run), [407, 200], "{:#?}", run.received);
        let join = joined(&pbx.node, &format!("alice@{DOMAIN}")).await;
        assert_eq!(join["moderator"], false, "{join}");
        assert_legs(
            &pbx,
            &[
                (
                    "alice",
                    vec![
                        started("outbound"),
                        maybe_ringing(),
                        answered_by_room(),
                        ended(),
                    ],
                ),
                (
                    "bob",
                    vec![started("inbound"), forwarded_to_room("unconditional")],
                ),
            ],
        )
        .await;
        // The room emptied when alice hung up.
        eventually(STEP, "the conference to end", || async {
            Ok((!conference_events(&pbx.node, "ConferenceEnded")
                .await
                .is_empty())
            .then_some(()))
        })
        .await
        .unwrap();

        // The room is deleted: bob's rule is not taken, his phone rings.
        delete_room(&pbx.node, "standup").await;
        let bob = pbx.phone("bob", "call_uas.xml").await;
        let run = pbx.call_bob("call_uac.xml").await;
        run.assert_all_successful(1);
        let bob = bob.finish().await;
        assert_eq!(header(invite(&bob), "Diversion"), "");
        let events = support::calls::call_events(&pbx.node, pbx.id("bob")).await;
        let skipped: Vec<&serde_json::Value> = events
            .iter()
            .filter(|(ty, _)| ty == "CallForwardSkipped")
            .map(|(_, d)| d)
            .collect();
        assert_eq!(skipped.len(), 1, "{events:?}");
        assert_eq!(skipped[0]["to"], format!("conference:standup@{DOMAIN}"));
        assert_eq!(skipped[0]["why"], "unknown_target");
        assert_eq!(
            conference_events(&pbx.node, "ConferenceStarted")
                .await
                .len(),
            1,
            "no conference for the second call"
        );
        pbx.node.stop().await.unwrap();
    })
    .await
}

/// bob's phone rings 2 s unanswered (cancelled), then the room answers
/// and alice joins it.
#[tokio::test]
async fn no_answer_forwards_to_a_room_after_the_set_time() {
    bounded(90, async {
        let pbx = Pbx::start(&[]).await;
        create_room(&pbx.node, "standup", RoomChange::default()).await;
        pbx.forward(
            "bob",
            SetForwardingRequest {
                no_answer: Some("conference:standup".into()),
                no_answer_after_secs: Some(2),
                ..Default::default()
            },
        )
        .await;
        let bob = pbx.phone("bob", "call_uas_rings.xml").await;
        let began = std::time::Instant::now();
        let run = pbx.call_bob("call_uac_app_holds_3s.xml").await;
        run.assert_all_successful(1);
        let bob = bob.finish().await;
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
        // 2 s of ringing, then 3 s in the room.
        assert!(
            began.elapsed() >= Duration::from_secs(5),
            "{:?}",
            began.elapsed()
        );
        joined(&pbx.node, &format!("alice@{DOMAIN}")).await;
        assert_legs(
            &pbx,
            &[
                (
                    "alice",
                    vec![
                        started("outbound"),
                        maybe_ringing(),
                        answered_by_room(),
                        ended(),
                    ],
                ),
                (
                    "bob",
                    vec![
                        started("inbound"),
                        ("CallRinging", json!({})),
                        forwarded_to_room("no_answer"),
                    ],
                ),
            ],
        )
        .await;
        pbx.node.stop().await.unwrap();
    })
    .await
}

/// The router reads rooms from the published facts: a room is called
/// right after it is created, and a deleted one is a 404 at once.
#[tokio::test]
async fn a_room_is_routed_as_soon_as_it_is_created_and_not_once_deleted() {
    bounded(60, async {
        let pbx = Pbx::start(&[]).await;
        create_room(&pbx.node, "standup", RoomChange::default()).await;
        let run = pbx.call("standup", "call_uac_app_holds_3s.xml").await;
        run.assert_all_successful(1);
        joined(&pbx.node, &format!("alice@{DOMAIN}")).await;
        delete_room(&pbx.node, "standup").await;
        let run = pbx.call("standup", "call_uac_fails.xml").await;
        assert_eq!(invite_statuses(&run), [407, 404], "{:#?}", run.received);
        // A name that is no user's, group's or room's: 404 too.
        let run = pbx.call("nothing", "call_uac_fails.xml").await;
        assert_eq!(invite_statuses(&run), [407, 404], "{:#?}", run.received);
        assert_eq!(
            conference_events(&pbx.node, "ConferenceStarted")
                .await
                .len(),
            1
        );
        pbx.node.stop().await.unwrap();
    })
    .await
}

/// `*72conference%3Astandup` (a colon is escaped in a URI's user part)
/// sets bob's forward to the room, as the API does.
#[tokio::test]
async fn the_forward_feature_code_takes_a_room() {
    bounded(60, async {
        let pbx = Pbx::start(&[]).await;
        create_room(&pbx.node, "standup", RoomChange::default()).await;
        let run = support::sip::Sipp::new("feature_uac.xml", pbx.node.sip_addr(), pbx.dir.path())
            .users(&[("bob".into(), support::sip::PASSWORD.into())])
            .key("callee", "*72conference%3Astandup")
            .key("callee_domain", DOMAIN)
            .timeout_secs(30)
            .run()
            .await
            .unwrap();
        run.assert_all_successful(1);
        let user = pbx
            .node
            .provisioning()
            .await
            .unwrap()
            .get_user(dialtone_api::pb::GetUserRequest {
                user: pbx.users["bob"].address.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let always = user.forwarding.map(|f| f.always).unwrap_or_default();
        assert_eq!(always, format!("conference:standup@{DOMAIN}"));
        pbx.node.stop().await.unwrap();
    })
    .await
}

/// A room with a PIN: a caller forwarded there is asked for it like one
/// that dialled the room, and joins once it is entered (baresip sends the
/// digits as RFC 4733 events).
#[tokio::test]
async fn a_caller_forwarded_to_a_room_with_a_pin_enters_it_and_joins() {
    bounded(60, async {
        let pbx = Pbx::start(&[]).await;
        create_room(
            &pbx.node,
            "standup",
            RoomChange {
                pin: Some("2468".into()),
                ..Default::default()
            },
        )
        .await;
        pbx.forward(
            "bob",
            SetForwardingRequest {
                always: Some("conference:standup".into()),
                ..Default::default()
            },
        )
        .await;
        // baresip's account has the softphones' password.
        let erin = support::sip::create_user(&pbx.node, DOMAIN, "erin", softphones::PASSWORD, 0)
            .await
            .unwrap();
        let mut phone = softphones::Phone::baresip(&erin, &pbx.node, softphones::Transport::Udp)
            .await
            .unwrap();
        phone
            .registered(&pbx.node, softphones::Transport::Udp)
            .await
            .unwrap();
        phone.command(&format!("dial bob@{DOMAIN}")).await.unwrap();
        softphones::answered(&phone).await.unwrap();
        // Not in the room before the PIN.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(conference_events(&pbx.node, "ParticipantJoined")
            .await
            .is_empty());
        phone.command("sndcode 2468#").await.unwrap();
        joined(&pbx.node, &format!("erin@{DOMAIN}")).await;
        phone.command("hangup").await.unwrap();
        phone.quit().await;
        pbx.node.stop().await.unwrap();
    })
    .await
}
