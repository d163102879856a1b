//! Call events as black-box tests expect them: what a leg's events must
//! be, read from the node and compared with what the test expects.

use std::time::Duration;

use serde_json::{json, Value};

use super::sip::{eventually, stream_events};
use super::TestNode;

/// One expected call event: its type (with a trailing `?` when it may be
/// missing) and fields its JSON data must have.
pub type Expected = (&'static str, Value);

pub fn started(direction: &str) -> Expected {
    ("CallStarted", json!({ "direction": direction }))
}

pub fn ringing() -> Expected {
    ("CallRinging", json!({}))
}

pub fn maybe_ringing() -> Expected {
    ("CallRinging?", json!({}))
}

pub fn answered() -> Expected {
    ("CallAnswered", json!({}))
}

pub fn failed(sip_status: u16, cause: &str) -> Expected {
    (
        "CallFailed",
        json!({ "sip_status": sip_status, "cause": cause }),
    )
}

/// The events of `user-{id}` whose type starts with `Call`, as
/// `(type, data)`.
pub async fn call_events(node: &TestNode, user_id: &str) -> Vec<(String, Value)> {
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

/// Whether `actual` is `expected` in order (optional entries may be
/// missing), each with at least the expected data fields.
pub fn matches(actual: &[(String, Value)], expected: &[Expected]) -> bool {
    let mut i = 0;
    for (ty, fields) in expected {
        let (ty, optional) = match ty.strip_suffix('?') {
            Some(t) => (t, true),
            None => (*ty, false),
        };
        let hit = actual.get(i).is_some_and(|(t, data)| {
            t == ty
                && fields
                    .as_object()
                    .is_some_and(|f| f.iter().all(|(k, v)| data.get(k) == Some(v)))
        });
        if hit {
            i += 1;
        } else if !optional {
            return false;
        }
    }
    i == actual.len()
}

/// Asserts the call events of each `(user id, expected)` leg, waiting for
/// asynchronously appended ones, and that all of them share one `call_id`.
/// An empty expectation means that the stream gets no call event at all.
pub async fn assert_call_events(node: &TestNode, legs: &[(&str, Vec<Expected>)]) {
    for (user_id, expected) in legs {
        if expected.is_empty() {
            // Nothing should come: give a wrong event a moment to arrive.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let found = eventually(
            Duration::from_secs(5),
            &format!("the call events of user-{user_id}"),
            || async { Ok(matches(&call_events(node, user_id).await, expected).then_some(())) },
        )
        .await;
        if found.is_err() {
            panic!(
                "user-{user_id}: expected call events {expected:#?}\nfound {:#?}",
                call_events(node, user_id).await
            );
        }
    }
    let mut ids = Vec::new();
    for (user_id, _) in legs {
        for (ty, data) in call_events(node, user_id).await {
            ids.push((ty, data["call_id"].as_str().unwrap_or_default().to_owned()));
        }
    }
    if let Some((_, first)) = ids.first() {
        assert!(
            !first.is_empty() && ids.iter().all(|(_, id)| id == first),
            "the legs do not share one call_id: {ids:#?}"
        );
    }
}
