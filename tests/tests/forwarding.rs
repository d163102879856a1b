//! Call forwarding and do-not-disturb, black box: the settings over real
//! gRPC and the CLI against a real node (what is stored, the events, every
//! kind of bad input refused with nothing applied).

mod support;

use dialtone_api::pb::*;
use serde_json::Value;
use support::sip::{create_domain, create_user, stream_events, DOMAIN, PASSWORD};
use support::TestNode;
use tonic::Code;

const OTHER: &str = "other.test";

async fn node() -> (tempfile::TempDir, TestNode) {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]).await.unwrap();
    create_domain(&node, DOMAIN).await.unwrap();
    create_domain(&node, OTHER).await.unwrap();
    for user in ["alice", "bob", "carol"] {
        create_user(&node, DOMAIN, user, PASSWORD, 0).await.unwrap();
    }
    create_user(&node, OTHER, "dave", PASSWORD, 0)
        .await
        .unwrap();
    (dir, node)
}

fn alice() -> String {
    format!("alice@{DOMAIN}")
}

fn set(user: &str) -> SetForwardingRequest {
    SetForwardingRequest {
        user: user.into(),
        ..Default::default()
    }
}

/// The `ForwardingChanged` and `DndChanged` events of a user, as JSON data.
async fn setting_events(node: &TestNode, user: &User) -> Vec<(String, Value)> {
    stream_events(node, &format!("user-{}", user.id))
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.r#type == "ForwardingChanged" || e.r#type == "DndChanged")
        .map(|e| (e.r#type, serde_json::from_str(&e.data_json).unwrap()))
        .collect()
}

#[tokio::test]
async fn forwarding_rules_are_set_completed_kept_and_removed_as_events() {
    let (_dir, node) = node().await;
    let mut p = node.provisioning().await.unwrap();

    let user = p
        .set_forwarding(SetForwardingRequest {
            busy: Some("bob".into()),
            no_answer: Some("carol".into()),
            no_answer_after_secs: Some(15),
            ..set(&alice())
        })
        .await
        .unwrap()
        .into_inner();
    let f = user.forwarding.clone().unwrap();
    assert_eq!(
        f.busy,
        format!("bob@{DOMAIN}"),
        "targets are stored complete"
    );
    assert_eq!(f.no_answer, format!("carol@{DOMAIN}"));
    assert_eq!(f.no_answer_after_secs, 15);
    assert_eq!(f.always, "");

    // Rules not named are kept; "" removes one.
    let user = p
        .set_forwarding(SetForwardingRequest {
            busy: Some(String::new()),
            unavailable: Some(format!("bob@{DOMAIN}")),
            ..set(&alice())
        })
        .await
        .unwrap()
        .into_inner();
    let f = user.forwarding.clone().unwrap();
    assert_eq!(
        (
            f.busy.as_str(),
            f.no_answer.as_str(),
            f.unavailable.as_str()
        ),
        ("", "carol@example.test", "bob@example.test")
    );

    // The same rules again write nothing.
    let again = p
        .set_forwarding(SetForwardingRequest {
            unavailable: Some("bob".into()),
            ..set(&alice())
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.version, user.version);

    // Read back.
    let got = p
        .get_user(GetUserRequest { user: alice() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.forwarding, user.forwarding);

    // Off.
    let off = p
        .set_forwarding(SetForwardingRequest {
            clear: true,
            ..set(&alice())
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(off.forwarding, Some(Forwarding::default()));

    let events = setting_events(&node, &off).await;
    let rules: Vec<&Value> = events.iter().map(|(_, data)| &data["forwarding"]).collect();
    assert_eq!(
        rules,
        [
            &serde_json::json!({"busy": "bob@example.test", "no_answer": {"target": "carol@example.test", "after_secs": 15}}),
            &serde_json::json!({"no_answer": {"target": "carol@example.test", "after_secs": 15}, "unavailable": "bob@example.test"}),
            &serde_json::json!({}),
        ]
    );
}

#[tokio::test]
async fn bad_forwarding_targets_are_refused_with_what_is_wrong_and_nothing_applied() {
    let (_dir, node) = node().await;
    let mut p = node.provisioning().await.unwrap();
    let before = p
        .get_user(GetUserRequest { user: alice() })
        .await
        .unwrap()
        .into_inner();

    let cases: Vec<(SetForwardingRequest, Code, &str)> = vec![
        (
            SetForwardingRequest {
                busy: Some("bob smith".into()),
                ..set(&alice())
            },
            Code::InvalidArgument,
            "is not a target",
        ),
        (
            SetForwardingRequest {
                always: Some("+1 555".into()),
                ..set(&alice())
            },
            Code::InvalidArgument,
            "is not",
        ),
        (
            SetForwardingRequest {
                busy: Some("nobody".into()),
                ..set(&alice())
            },
            Code::NotFound,
            "nobody@example.test",
        ),
        (
            SetForwardingRequest {
                busy: Some("bob@nowhere.test".into()),
                ..set(&alice())
            },
            Code::NotFound,
            "nowhere.test",
        ),
        (
            SetForwardingRequest {
                always: Some("alice".into()),
                ..set(&alice())
            },
            Code::InvalidArgument,
            "itself",
        ),
        (
            SetForwardingRequest {
                always: Some("+15551234567".into()),
                ..set(&alice())
            },
            Code::FailedPrecondition,
            "trunk",
        ),
        (
            // A box is its user's: one that does not exist is refused.
            SetForwardingRequest {
                no_answer: Some("voicemail:nobody".into()),
                ..set(&alice())
            },
            Code::NotFound,
            "nobody@example.test",
        ),
        (
            SetForwardingRequest {
                busy: Some("group:sales".into()),
                ..set(&alice())
            },
            Code::NotFound,
            "ring group",
        ),
        (
            SetForwardingRequest {
                busy: Some(format!("dave@{OTHER}")),
                ..set(&alice())
            },
            Code::FailedPrecondition,
            "does not allow calls to other domains",
        ),
        (
            SetForwardingRequest {
                no_answer_after_secs: Some(15),
                ..set(&alice())
            },
            Code::InvalidArgument,
            "no no-answer rule",
        ),
        (
            SetForwardingRequest {
                no_answer: Some("bob".into()),
                no_answer_after_secs: Some(0),
                ..set(&alice())
            },
            Code::InvalidArgument,
            "between 1 and 300",
        ),
        (
            // One good rule and one bad one: neither is applied.
            SetForwardingRequest {
                busy: Some("bob".into()),
                no_answer: Some("nobody".into()),
                ..set(&alice())
            },
            Code::NotFound,
            "nobody",
        ),
        (
            SetForwardingRequest {
                busy: Some("bob".into()),
                ..set("nobody@example.test")
            },
            Code::NotFound,
            "nobody@example.test",
        ),
    ];
    for (request, code, needle) in cases {
        let err = p.set_forwarding(request.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{request:?}: {err:?}");
        assert!(
            err.message().contains(needle),
            "{request:?}: {}",
            err.message()
        );
    }

    // A target in a suspended domain.
    p.update_domain(UpdateDomainRequest {
        domain: DOMAIN.into(),
        allow_cross_domain_calls: Some(true),
        ..Default::default()
    })
    .await
    .unwrap();
    p.suspend_domain(SuspendDomainRequest {
        domain: OTHER.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = p
        .set_forwarding(SetForwardingRequest {
            busy: Some(format!("dave@{OTHER}")),
            ..set(&alice())
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("suspended"), "{}", err.message());

    let after = p
        .get_user(GetUserRequest { user: alice() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.forwarding, before.forwarding);
    assert!(setting_events(&node, &after).await.is_empty());
}

#[tokio::test]
async fn dnd_is_a_setting_and_shows_in_presence() {
    let (_dir, node) = node().await;
    let mut p = node.provisioning().await.unwrap();
    let on = p
        .set_dnd(SetDndRequest {
            user: alice(),
            dnd: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(on.dnd);
    // Already on: nothing written.
    let again = p
        .set_dnd(SetDndRequest {
            user: alice(),
            dnd: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.version, on.version);
    let off = p
        .set_dnd(SetDndRequest {
            user: alice(),
            dnd: false,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!off.dnd);
    let events = setting_events(&node, &off).await;
    assert_eq!(
        events,
        [
            ("DndChanged".to_owned(), serde_json::json!({"dnd": true})),
            ("DndChanged".to_owned(), serde_json::json!({"dnd": false})),
        ]
    );
    let err = p
        .set_dnd(SetDndRequest {
            user: "nobody@example.test".into(),
            dnd: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn the_cli_sets_forwarding_and_dnd() {
    let (_dir, node) = node().await;
    let run = |args: Vec<String>| {
        let node = &node;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            node.cli(&args).await.unwrap()
        }
    };
    let out = run(vec![
        "user".into(),
        "forward".into(),
        alice(),
        "--busy".into(),
        "bob".into(),
        "--no-answer".into(),
        "carol".into(),
        "--after".into(),
        "15".into(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("busy -> bob@example.test, no answer (15 s) -> carol@example.test"),
        "{text}"
    );

    let out = run(vec![
        "user".into(),
        "forward".into(),
        alice(),
        "--busy".into(),
        "none".into(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("forwarding    no answer (15 s) -> carol@example.test\n"));

    let out = run(vec!["user".into(), "dnd".into(), alice(), "on".into()]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("dnd           on"));

    let out = run(vec![
        "user".into(),
        "forward".into(),
        alice(),
        "--off".into(),
    ])
    .await;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("forwarding    off"));

    // Garbage: a clear message, exit status non-zero.
    let out = run(vec![
        "user".into(),
        "forward".into(),
        alice(),
        "--always".into(),
        "+1 555".into(),
    ])
    .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("E.164"), "{err}");
    let out = run(vec!["user".into(), "dnd".into(), alice(), "maybe".into()]).await;
    assert!(!out.status.success());
}

#[tokio::test]
async fn time_conditions_and_time_zones_are_set_shown_and_checked() {
    let (_dir, node) = node().await;
    let mut p = node.provisioning().await.unwrap();

    // The domain's zone.
    let domain = p
        .update_domain(UpdateDomainRequest {
            domain: DOMAIN.into(),
            time_zone: Some("europe/berlin".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        domain.time_zone, "Europe/Berlin",
        "stored in the database's spelling"
    );
    for (bad, needle) in [
        ("Europe/Berln", "Europe/Berln"),
        ("", "must not be empty"),
        ("UTC+2", "UTC+2"),
    ] {
        let err = p
            .update_domain(UpdateDomainRequest {
                domain: DOMAIN.into(),
                time_zone: Some(bad.into()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}: {err:?}");
        assert!(err.message().contains(needle), "{bad:?}: {}", err.message());
    }

    // A rule with a condition, shown in canonical form.
    let user = p
        .set_forwarding(SetForwardingRequest {
            always: Some("bob".into()),
            always_when: Some("Outside Mon-Fri 09:00-17:00 ; holidays 2026-12-25".into()),
            ..set(&alice())
        })
        .await
        .unwrap()
        .into_inner();
    let f = user.forwarding.clone().unwrap();
    assert_eq!(
        f.always_when,
        "outside mon-fri 09:00-17:00; holidays 2026-12-25"
    );

    // Bad conditions: garbage, one that never holds, one for a rule that
    // does not exist. Nothing is applied.
    let cases: Vec<(SetForwardingRequest, &str)> = vec![
        (
            SetForwardingRequest {
                busy: Some("carol".into()),
                busy_when: Some("mon-fri 25:00-26:00".into()),
                ..set(&alice())
            },
            "25:00",
        ),
        (
            SetForwardingRequest {
                busy: Some("carol".into()),
                busy_when: Some("someday".into()),
                ..set(&alice())
            },
            "someday",
        ),
        (
            SetForwardingRequest {
                busy: Some("carol".into()),
                busy_when: Some("outside daily 00:00-24:00".into()),
                ..set(&alice())
            },
            "never holds",
        ),
        (
            SetForwardingRequest {
                unavailable_when: Some("inside sat,sun 00:00-24:00".into()),
                ..set(&alice())
            },
            "no unavailable rule",
        ),
    ];
    for (request, needle) in cases {
        let err = p.set_forwarding(request.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{request:?}: {err:?}");
        assert!(
            err.message().contains(needle),
            "{request:?}: {}",
            err.message()
        );
    }
    let after = p
        .get_user(GetUserRequest { user: alice() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.forwarding, user.forwarding);

    // Removing the rule removes its condition.
    let off = p
        .set_forwarding(SetForwardingRequest {
            always: Some(String::new()),
            ..set(&alice())
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(off.forwarding, Some(Forwarding::default()));

    // The CLI: --when with the rules given, shown on the user's line.
    let out = node
        .cli(&[
            "user",
            "forward",
            &alice(),
            "--always",
            "carol",
            "--when",
            "outside mon-fri 08:00-18:00",
        ])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("always -> carol@example.test (outside mon-fri 08:00-18:00)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = node
        .cli(&[
            "user",
            "forward",
            &alice(),
            "--when",
            "inside sat 10:00-12:00",
        ])
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--when applies to the rules given with it"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = node
        .cli(&[
            "domain",
            "update",
            DOMAIN,
            "--time-zone",
            "America/New_York",
        ])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("time zone America/New_York"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn the_audit_shows_the_rules_in_force_at_a_moment() {
    let (_dir, node) = node().await;
    let mut p = node.provisioning().await.unwrap();
    p.set_forwarding(SetForwardingRequest {
        busy: Some("bob".into()),
        ..set(&alice())
    })
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let between = time::OffsetDateTime::now_utc();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    p.set_forwarding(SetForwardingRequest {
        busy: Some("carol".into()),
        ..set(&alice())
    })
    .await
    .unwrap();
    p.set_dnd(SetDndRequest {
        user: alice(),
        dnd: true,
        ..Default::default()
    })
    .await
    .unwrap();

    let mut audit = node.audit().await.unwrap();
    let state_at = |at: time::OffsetDateTime| GetUserStateAtRequest {
        user: alice(),
        at: Some(get_user_state_at_request::At::Time(
            dialtone_api::prost_types::Timestamp {
                seconds: at.unix_timestamp(),
                nanos: i32::try_from(at.nanosecond()).unwrap(),
            },
        )),
    };
    let then = audit
        .get_user_state_at(state_at(between))
        .await
        .unwrap()
        .into_inner()
        .state
        .unwrap();
    assert_eq!(then.forwarding.unwrap().busy, "bob@example.test");
    assert!(!then.dnd);
    let now = audit
        .get_user_state_at(state_at(time::OffsetDateTime::now_utc()))
        .await
        .unwrap()
        .into_inner()
        .state
        .unwrap();
    assert_eq!(now.forwarding.unwrap().busy, "carol@example.test");
    assert!(now.dnd);

    let at = between
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let out = node
        .cli(&["audit", "user", &alice(), "--at", &at])
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("forwarding    busy -> bob@example.test"),
        "{text}"
    );
    assert!(text.contains("dnd           off"), "{text}");
}
