//! The registrar against SIPp, an independent SIP client: a real node
//! process, users provisioned over gRPC, `sipp` run as a subprocess with the
//! scenarios in `tests/sipp/`, and the result read from SIPp's exit code,
//! statistics file and message trace, then from `StatusService` and the
//! users' event streams.
//!
//! SIPp 3.6.1 reads only the first `WWW-Authenticate`, so the node offers
//! MD5 first (`--sip-challenge-md5-first`).

mod support;

use std::collections::HashSet;
use std::time::Duration;

use dialtone_api::pb::PresenceState;
use support::sip::{
    bounded, create_domain, create_user, create_users, eventually, normalize_response, online,
    registration_events, registrations, Sipp, DOMAIN, PASSWORD,
};
use support::TestNode;

const SIPP_ARGS: &[&str] = &["--sip-challenge-md5-first"];

async fn node() -> (tempfile::TempDir, TestNode) {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), SIPP_ARGS).await.unwrap();
    create_domain(&node, DOMAIN).await.unwrap();
    (dir, node)
}

fn credentials(users: &[String], password: &str) -> Vec<(String, String)> {
    users
        .iter()
        .map(|u| (u.clone(), password.to_owned()))
        .collect()
}

#[tokio::test]
async fn a_hundred_users_register_with_digest_auth_over_udp_then_tcp() {
    bounded(90, async {
        let (dir, node) = node().await;
        let names: Vec<String> = (0..100).map(|i| format!("sipp{i:03}")).collect();
        let users = create_users(&node, DOMAIN, &names, PASSWORD, 8)
            .await
            .unwrap();

        for (transport, tcp) in [("UDP", false), ("TCP", true)] {
            let mut sipp = Sipp::new("register_auth.xml", node.sip_addr(), dir.path())
                .users(&credentials(&names, PASSWORD));
            if tcp {
                sipp = sipp.tcp();
            }
            let run = sipp.run().await.unwrap();
            run.assert_all_successful(100);

            if tcp {
                // SIPp has exited, closing its connection: a binding
                // registered over a connection goes with it (flow_closed).
                eventually(Duration::from_secs(10), "nobody online", || async {
                    Ok(online(&node, DOMAIN).await?.is_empty().then_some(()))
                })
                .await
                .unwrap();
                continue;
            }
            // Every user has exactly the one contact, seen on this transport.
            for user in &users {
                let regs = registrations(&node, &user.address).await.unwrap();
                assert_eq!(regs.contacts.len(), 1, "{}: {regs:?}", user.address);
                let c = &regs.contacts[0];
                assert_eq!(c.uri, format!("sip:{}@127.0.0.1:5090", user.username));
                assert_eq!(c.transport, transport, "{}", user.address);
                assert!(c.source.starts_with("127.0.0.1:"), "{c:?}");
                assert_eq!(c.user_agent, "sipp-dialtone-tests");
                assert_eq!(regs.presence, PresenceState::Online as i32);
            }
            // The online index follows the log a moment behind.
            let listed = eventually(Duration::from_secs(5), "100 users online", || async {
                let users = online(&node, DOMAIN).await?;
                Ok((users.len() == 100).then_some(users))
            })
            .await
            .unwrap();
            let addresses: HashSet<&str> = listed.iter().map(|u| u.address.as_str()).collect();
            assert_eq!(addresses.len(), 100);
            assert!(listed.iter().all(|u| u.contacts == 1), "{listed:?}");
        }

        // Per user: registered over UDP (and online), refreshed over TCP,
        // removed when that connection closed.
        for user in &users {
            let uri = format!("sip:{}@127.0.0.1:5090", user.username);
            assert_eq!(
                registration_events(&node, &user.id).await.unwrap(),
                [
                    format!("ContactRegistered {uri}"),
                    "PresenceChanged offline->online".to_owned(),
                    format!("ContactRefreshed {uri}"),
                    format!("ContactRemoved {uri} flow_closed"),
                    "PresenceChanged online->offline".to_owned(),
                ],
                "{}",
                user.address
            );
        }
        node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_401_then_the_same_403() {
    bounded(60, async {
        let (dir, node) = node().await;
        let alice = create_user(&node, DOMAIN, "alice", PASSWORD, 0)
            .await
            .unwrap();

        // One SIPp run, two calls from the same port: alice with a wrong
        // password, then zelda, who does not exist.
        let run = Sipp::new("register_forbidden.xml", node.sip_addr(), dir.path())
            .users(&[
                ("alice".into(), "wrong-password".into()),
                ("zelda".into(), PASSWORD.into()),
            ])
            .rate(10)
            .run()
            .await
            .unwrap();
        run.assert_all_successful(2);

        // 401 then 403 for each: compare them apart from what must differ.
        assert_eq!(run.received.len(), 4, "{:#?}", run.received);
        let of = |user: &str| -> Vec<&String> {
            let to = format!("To: <sip:{user}@");
            run.received.iter().filter(|m| m.contains(&to)).collect()
        };
        let (from_alice, from_zelda) = (of("alice"), of("zelda"));
        assert_eq!(
            (from_alice.len(), from_zelda.len()),
            (2, 2),
            "{:#?}",
            run.received
        );
        let call_id = |m: &str| {
            m.lines()
                .find_map(|l| l.strip_prefix("Call-ID: "))
                .unwrap_or_default()
                .to_owned()
        };
        let norm = |m: &str, user: &str| normalize_response(m, user, &call_id(m));
        for (a, z, status) in [
            (from_alice[0], from_zelda[0], "SIP/2.0 401 Unauthorized"),
            (from_alice[1], from_zelda[1], "SIP/2.0 403 Forbidden"),
        ] {
            assert!(a.starts_with(status), "{a}");
            assert_eq!(norm(a, "alice"), norm(z, "zelda"));
            // The same length too: no hint either way.
            assert_eq!(a.len(), z.len(), "{a}\n{z}");
        }

        // Nothing was registered.
        assert!(registration_events(&node, &alice.id)
            .await
            .unwrap()
            .is_empty());
        assert!(registrations(&node, "alice@example.test")
            .await
            .unwrap()
            .contacts
            .is_empty());
        assert!(online(&node, DOMAIN).await.unwrap().is_empty());
        node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn unregister_with_expires_0_removes_the_contact() {
    bounded(60, async {
        let (dir, node) = node().await;
        let bob = create_user(&node, DOMAIN, "bob", PASSWORD, 0)
            .await
            .unwrap();

        let run = Sipp::new("unregister.xml", node.sip_addr(), dir.path())
            .users(&[("bob".into(), PASSWORD.into())])
            .run()
            .await
            .unwrap();
        run.assert_all_successful(1);
        // 401, 200 (with the contact), 401, 200 (without).
        let codes: Vec<&str> = run
            .received
            .iter()
            .map(|m| m.lines().next().unwrap_or_default())
            .collect();
        assert_eq!(
            codes,
            [
                "SIP/2.0 401 Unauthorized",
                "SIP/2.0 200 OK",
                "SIP/2.0 401 Unauthorized",
                "SIP/2.0 200 OK"
            ]
        );
        assert!(run.received[1].contains("Contact: <sip:bob@127.0.0.1:5090>;expires="));
        assert!(!run.received[3].contains("Contact:"), "{}", run.received[3]);

        let regs = registrations(&node, "bob@example.test").await.unwrap();
        assert!(regs.contacts.is_empty(), "{regs:?}");
        assert_eq!(regs.presence, PresenceState::Offline as i32);
        assert_eq!(
            registration_events(&node, &bob.id).await.unwrap(),
            [
                "ContactRegistered sip:bob@127.0.0.1:5090",
                "PresenceChanged offline->online",
                "ContactRemoved sip:bob@127.0.0.1:5090 unregistered",
                "PresenceChanged online->offline",
            ]
        );
        eventually(Duration::from_secs(5), "nobody online", || async {
            Ok(online(&node, DOMAIN).await?.is_empty().then_some(()))
        })
        .await
        .unwrap();
        node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn an_expiry_below_the_minimum_gets_423_with_min_expires() {
    bounded(60, async {
        let (dir, node) = node().await;
        let carol = create_user(&node, DOMAIN, "carol", PASSWORD, 0)
            .await
            .unwrap();

        let run = Sipp::new("register_too_brief.xml", node.sip_addr(), dir.path())
            .users(&[("carol".into(), PASSWORD.into())])
            .key("expires", "30")
            .run()
            .await
            .unwrap();
        run.assert_all_successful(1);
        let last = run.received.last().unwrap();
        assert!(last.starts_with("SIP/2.0 423 Interval Too Brief"), "{last}");
        assert!(last.lines().any(|l| l == "Min-Expires: 60"), "{last}");

        assert!(registration_events(&node, &carol.id)
            .await
            .unwrap()
            .is_empty());
        assert!(registrations(&node, "carol@example.test")
            .await
            .unwrap()
            .contacts
            .is_empty());
        node.stop().await.unwrap();
    })
    .await
}
