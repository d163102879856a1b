//! Auditing against a real node: the state of a user at each version of its
//! stream is what its events up to that version say, a moment between two
//! events gives the earlier state, and the `audit` command prints history
//! and state without ever showing credentials.

mod support;

use std::time::Duration;

use dialtone_api::pb::get_user_state_at_request::At;
use dialtone_api::pb::{
    EventEnvelope, GetDomainStateAtRequest, GetUserStateAtRequest, PresenceState, UserStatus,
};
use dialtone_sip::test_ua::{Register, TestUa};
use serde_json::Value;
use support::sip::{bounded, create_domain, create_user, stream_events, DOMAIN, PASSWORD};
use support::TestNode;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn micros(ts: &Option<dialtone_api::prost_types::Timestamp>) -> i64 {
    let ts = ts.as_ref().unwrap();
    ts.seconds * 1_000_000 + i64::from(ts.nanos) / 1000
}

/// RFC 3339 UTC with microseconds, from microseconds since the epoch
/// (civil-from-days, as in H. Hinnant's date algorithms).
fn rfc3339(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// What the events of a stream up to (and including) `version` say about a
/// user, folded by hand from their JSON data.
#[derive(Debug, PartialEq)]
struct Expected {
    display_name: String,
    password_set_at: i64,
    contacts: usize,
    presence: String,
    enabled: bool,
}

fn fold(events: &[EventEnvelope], version: u64) -> Expected {
    let mut x = Expected {
        display_name: String::new(),
        password_set_at: 0,
        contacts: 0,
        presence: "offline".into(),
        enabled: false,
    };
    for e in events.iter().filter(|e| e.version <= version) {
        let data: Value = serde_json::from_str(&e.data_json).unwrap();
        match e.r#type.as_str() {
            "UserCreated" => {
                x.display_name = data["display_name"].as_str().unwrap().into();
                x.password_set_at = data["credentials"]["set_at"].as_i64().unwrap();
                x.enabled = data["enabled"].as_bool().unwrap();
            }
            "UserUpdated" => x.display_name = data["display_name"].as_str().unwrap().into(),
            "PasswordChanged" => {
                x.password_set_at = data["credentials"]["set_at"].as_i64().unwrap()
            }
            "UserEnabled" => x.enabled = true,
            "UserDisabled" => x.enabled = false,
            "ContactRegistered" => x.contacts += 1,
            "ContactRemoved" | "ContactExpired" => x.contacts -= 1,
            "PresenceChanged" => x.presence = data["presence"].as_str().unwrap().into(),
            other => panic!("unexpected {other}"),
        }
    }
    x
}

fn presence_name(p: i32) -> &'static str {
    match PresenceState::try_from(p).unwrap() {
        PresenceState::Offline => "offline",
        PresenceState::Online => "online",
        _ => "other",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_at_every_version_and_between_events_matches_the_history() {
    bounded(90, async {
        let dir = tempfile::tempdir().unwrap();
        let node = TestNode::start(dir.path(), &[]).await.unwrap();
        create_domain(&node, DOMAIN).await.unwrap();
        let alice = create_user(&node, DOMAIN, "alice", PASSWORD, 0)
            .await
            .unwrap();
        let pause = || tokio::time::sleep(Duration::from_millis(20));

        // A history: renamed, registered (a contact, online), password
        // changed, renamed, unregistered (offline), disabled.
        let cli = |args: Vec<String>| {
            let node = &node;
            async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let out = node.cli(&args).await.unwrap();
                assert!(out.status.success(), "{}", stderr(&out));
            }
        };
        let address = alice.address.clone();
        let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        pause().await;
        cli(args(&[
            "user",
            "update",
            &address,
            "--display-name",
            "Alice",
        ]))
        .await;
        pause().await;
        let mut ua = TestUa::udp(node.sip_addr()).await.unwrap();
        let contact = "sip:alice@10.0.0.7:5060".to_owned();
        let register = Register::new("alice", DOMAIN)
            .password(PASSWORD)
            .contact(&contact);
        let r = ua.register(&register.clone().expires(600)).await.unwrap();
        assert_eq!(r.code, 200);
        pause().await;
        cli(args(&[
            "user",
            "set-password",
            &address,
            "--password",
            "another-secret",
        ]))
        .await;
        pause().await;
        cli(args(&[
            "user",
            "update",
            &address,
            "--display-name",
            "Alice L.",
        ]))
        .await;
        pause().await;
        let r = ua
            .register(
                &Register::new("alice", DOMAIN)
                    .password("another-secret")
                    .contact(&contact)
                    .expires(0),
            )
            .await
            .unwrap();
        assert_eq!(r.code, 200);
        pause().await;
        cli(args(&["user", "disable", &address])).await;

        let history = stream_events(&node, &format!("user-{}", alice.id))
            .await
            .unwrap();
        let types: Vec<&str> = history.iter().map(|e| e.r#type.as_str()).collect();
        assert_eq!(
            types,
            [
                "UserCreated",
                "UserUpdated",
                "ContactRegistered",
                "PresenceChanged",
                "PasswordChanged",
                "UserUpdated",
                "ContactRemoved",
                "PresenceChanged",
                "UserDisabled",
            ]
        );

        // Every version, over gRPC.
        let mut audit = node.audit().await.unwrap();
        for e in &history {
            let reply = audit
                .get_user_state_at(GetUserStateAtRequest {
                    user: address.clone(),
                    at: Some(At::Version(e.version)),
                })
                .await
                .unwrap()
                .into_inner();
            let at = reply.at.unwrap();
            assert_eq!((at.version, at.position), (e.version, e.position));
            assert_eq!(at.current_version, Some(history.len() as u64 - 1));
            let state = reply.state.unwrap();
            let got = Expected {
                display_name: state.display_name.clone(),
                password_set_at: micros(&state.password_set_at),
                contacts: state.contacts.len(),
                presence: presence_name(state.presence).into(),
                enabled: state.enabled,
            };
            assert_eq!(got, fold(&history, e.version), "version {}", e.version);
            assert_eq!(state.status, UserStatus::Active as i32);
            assert_eq!(state.address, address);
            if let Some(contact) = state.contacts.first() {
                assert_eq!(contact.uri, "sip:alice@10.0.0.7:5060");
                assert_eq!(contact.transport, "UDP");
            }
        }

        // Between two events (the password change and the rename after it),
        // with the CLI: the earlier state.
        let (before, after) = (&history[4], &history[5]);
        let (t4, t5) = (micros(&before.occurred_at), micros(&after.occurred_at));
        assert!(t5 - t4 > 2, "the events are apart in time");
        let between = rfc3339(t4 + (t5 - t4) / 2);
        let out = node
            .cli(&["--json", "audit", "user", &address, "--at", &between])
            .await
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(!text.contains("ha1"), "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["at"]["version"], 4);
        assert_eq!(v["at"]["current_version"], 8);
        assert_eq!(v["history"].as_array().unwrap().len(), 5);
        assert_eq!(v["state"]["display_name"], "Alice");
        assert_eq!(v["state"]["presence"], "online");
        assert_eq!(v["state"]["contacts"].as_array().unwrap().len(), 1);
        assert!(v["state"]["password_set_at"]
            .as_str()
            .unwrap()
            .starts_with("20"));
        // Exactly at an event's time: that event is included.
        let out = node
            .cli(&["--json", "audit", "user", &address, "--at", &rfc3339(t5)])
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["at"]["version"], 5);
        assert_eq!(v["state"]["display_name"], "Alice L.");

        // Human output: history, then the state; credentials only as a time.
        let out = node
            .cli(&["audit", "user", &address, "--version", "3"])
            .await
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("state at version 3"), "{text}");
        assert!(text.contains("PresenceChanged"), "{text}");
        assert!(!text.contains("UserUpdated\" \"Alice L."), "{text}");
        assert!(text.contains("password set"), "{text}");
        assert!(text.contains("sip:alice@10.0.0.7:5060"), "{text}");
        assert!(!text.to_lowercase().contains("ha1"), "{text}");

        // Errors say what is wrong.
        let out = node
            .cli(&["audit", "user", &address, "--version", "99"])
            .await
            .unwrap();
        assert!(!out.status.success());
        assert!(stderr(&out).contains("OutOfRange"), "{}", stderr(&out));
        let out = node
            .cli(&["audit", "user", &address, "--at", "yesterday"])
            .await
            .unwrap();
        assert!(stderr(&out).contains("RFC 3339"), "{}", stderr(&out));
        node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn deleted_users_and_domains_are_audited_from_their_streams() {
    bounded(60, async {
        let dir = tempfile::tempdir().unwrap();
        let node = TestNode::start(dir.path(), &[]).await.unwrap();
        create_domain(&node, DOMAIN).await.unwrap();
        let bob = create_user(&node, DOMAIN, "bob", PASSWORD, 0)
            .await
            .unwrap();
        let out = node.cli(&["user", "delete", &bob.address]).await.unwrap();
        assert!(out.status.success(), "{}", stderr(&out));

        // The name is free now; the address still finds its last holder.
        let out = node
            .cli(&["--json", "audit", "user", &bob.address])
            .await
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["state"]["status"], "deleted");
        assert_eq!(v["state"]["user_id"], bob.id.as_str());
        let out = node
            .cli(&["--json", "audit", "user", &bob.address, "--version", "0"])
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["state"]["status"], "active");

        // The domain at its version 1 (bob's claim) and now (released).
        let mut audit = node.audit().await.unwrap();
        let at = |version| GetDomainStateAtRequest {
            domain: DOMAIN.into(),
            at: Some(dialtone_api::pb::get_domain_state_at_request::At::Version(
                version,
            )),
            include_users: true,
        };
        let state = audit.get_domain_state_at(at(1)).await.unwrap().into_inner();
        let users = state.state.unwrap().users;
        assert_eq!(users.len(), 1);
        assert_eq!(
            (users[0].username.as_str(), users[0].user_id.as_str()),
            ("bob", bob.id.as_str())
        );
        let out = node
            .cli(&["--json", "audit", "domain", DOMAIN, "--users"])
            .await
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["state"]["status"], "active");
        assert_eq!(v["state"]["user_count"], 0);
        assert_eq!(v["history"].as_array().unwrap().len(), 3);
        let out = node
            .cli(&["audit", "domain", "nowhere.example"])
            .await
            .unwrap();
        assert!(stderr(&out).contains("NotFound"), "{}", stderr(&out));
        node.stop().await.unwrap();
    })
    .await
}
