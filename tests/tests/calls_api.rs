//! Calls after a crash, black-box: the node is killed (`kill -9`) while
//! call legs are in progress in the log; after the restart they are closed
//! with cause `node_restart`, as the status and audit APIs show.
//!
//! The SIP proxy is not part of this test: the legs are recorded while the
//! node is down, by deciding the same `Command::Call` steps the proxy sends
//! with the domain's own `decide` and appending the events to the node's
//! log exactly as a user actor would (expected version, same stored form).

mod support;

use std::sync::Arc;

use dialtone_api::pb::*;
use dialtone_domain::call::{CallStep, Direction};
use dialtone_domain::user::{self, User};
use dialtone_domain::Event;
use dialtone_eventlog::sqlite::{SqliteOptions, SqliteStore};
use dialtone_eventlog::{ExpectedVersion, NewEvent, SharedStore};
use support::TestNode;
use uuid::Uuid;

/// Runs `steps` on the user `id` the way its actor would, on a log the
/// node is not running on.
async fn record(store: &SharedStore, id: &str, domain_id: &str, steps: Vec<CallStep>) {
    let stream = format!("user-{id}");
    let recorded = store.read_stream(&stream, 0, 10_000).await.unwrap();
    let mut state = User::default();
    for e in &recorded {
        match Event::from_stored(&e.event_type, e.schema_version, &e.data).unwrap() {
            Event::User(event) => state = user::evolve(state, &event),
            Event::Domain(_) | Event::Token(_) | Event::Conference(_) | Event::Number(_) => {
                panic!("not a user event in {stream}")
            }
        }
    }
    let mut version = recorded.last().map(|e| e.version);
    for step in steps {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        let events = user::decide(&state, &user::Command::Call(Box::new(step)), now).unwrap();
        let mut new = Vec::new();
        for event in events {
            state = user::evolve(state, &event);
            let event = Event::User(event);
            new.push(NewEvent {
                event_id: Uuid::new_v4(),
                event_type: event.event_type().to_owned(),
                schema_version: event.schema_version(),
                occurred_at_us: now,
                domain_id: Some(domain_id.parse().unwrap()),
                user_id: Some(id.parse().unwrap()),
                correlation_id: Some("sip-call@192.0.2.1".to_owned()),
                data: event.to_data().unwrap(),
            });
        }
        let expected = match version {
            Some(v) => ExpectedVersion::Exact(v),
            None => ExpectedVersion::NoStream,
        };
        let outcome = store.append(&stream, expected, new).await.unwrap();
        version = Some(outcome.last_version);
    }
}

fn start(call_id: &str, direction: Direction) -> CallStep {
    CallStep::Start {
        call_id: call_id.to_owned(),
        direction,
        from: "alice@example.com".to_owned(),
        to: "bob@example.com".to_owned(),
        sip_call_id: format!("{call_id}@192.0.2.1"),
    }
}

fn answer(call_id: &str) -> CallStep {
    CallStep::Answer {
        call_id: call_id.to_owned(),
        contact: "sip:bob@192.0.2.2:5060".to_owned(),
    }
}

#[tokio::test]
async fn legs_in_progress_at_a_crash_are_closed_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]).await.unwrap();
    let mut p = node.provisioning().await.unwrap();
    p.create_domain(CreateDomainRequest {
        name: "example.com".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut users = Vec::new();
    for name in ["alice", "bob"] {
        let user = p
            .create_user(CreateUserRequest {
                domain: "example.com".into(),
                username: name.into(),
                password: "secret123".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        users.push(user);
    }
    node.kill9().await.unwrap();

    // While the node is down: an answered call between alice and bob, and
    // one that bob's phone is still ringing for.
    {
        let store: SharedStore = Arc::new(
            SqliteStore::open(
                &dir.path().join("events.db"),
                SqliteOptions::new("test-recorder"),
            )
            .unwrap(),
        );
        for (user, direction) in [
            (&users[0], Direction::Outbound),
            (&users[1], Direction::Inbound),
        ] {
            let steps = vec![
                start("answered", direction),
                answer("answered"),
                start("ringing", direction),
                CallStep::Ringing {
                    call_id: "ringing".to_owned(),
                },
            ];
            record(&store, &user.id, &user.domain_id, steps).await;
        }
        store.close().await.unwrap();
    }

    let node = TestNode::start(dir.path(), &[]).await.unwrap();
    let mut status = node.status().await.unwrap();
    let active = status
        .list_active_calls(ListActiveCallsRequest {
            domain: "example.com".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(active.calls.is_empty(), "{active:?}");
    let presence = status
        .get_presence(GetPresenceRequest {
            user: "bob@example.com".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(presence.state, PresenceState::Offline as i32);

    let mut audit = node.audit().await.unwrap();
    let records = audit
        .list_calls(ListCallsRequest {
            domain: "example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = records.calls.iter().map(|c| c.call_id.as_str()).collect();
    assert_eq!(ids, ["answered", "ringing"], "{records:?}");
    let answered = &records.calls[0];
    assert!(!answered.in_progress);
    assert_eq!(answered.cause, CallCause::NodeRestart as i32);
    assert_eq!(answered.hangup_side, HangupSide::System as i32);
    assert_eq!(answered.sip_status, 200);
    assert_eq!(answered.legs.len(), 2);
    let ringing = &records.calls[1];
    assert!(!ringing.in_progress);
    assert_eq!(ringing.cause, CallCause::NodeRestart as i32);
    assert_eq!(ringing.sip_status, 0);
    assert!(ringing
        .legs
        .iter()
        .all(|l| l.cause == CallCause::NodeRestart as i32 && !l.in_progress));
    node.stop().await.unwrap();
}
