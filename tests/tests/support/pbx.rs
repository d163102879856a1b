//! A small PBX for black-box call tests: a real node with one domain and
//! the users alice, bob, carol and dave, SIPp phones registered for them,
//! and what the tests read of the calls (the statuses a caller got, the
//! INVITE a phone got, each user's call events).
//!
//! SIPp 3.6.1 reads only the first `Proxy-Authenticate`, so the node offers
//! MD5 first (`--sip-challenge-md5-first`).

use std::collections::HashMap;

use dialtone_api::pb::{SetDndRequest, SetForwardingRequest, User};
use serde_json::json;

use super::calls::{assert_call_events, Expected};
use super::sip::{create_domain, create_user, Sipp, SippRun, DOMAIN, PASSWORD};
use super::TestNode;

/// A node with [`DOMAIN`] and the users alice (the caller), bob (the
/// dialled user), carol and dave (where calls are forwarded to).
pub struct Pbx {
    pub dir: tempfile::TempDir,
    pub node: TestNode,
    pub users: HashMap<&'static str, User>,
}

impl Pbx {
    pub async fn start(extra_args: &[&str]) -> Pbx {
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

    pub fn id(&self, user: &str) -> &str {
        &self.users[user].id
    }

    /// Registers `user` with a contact on `127.0.0.1:port`.
    pub async fn register(&self, user: &str, port: u16) {
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
    pub async fn phone(&self, user: &str, scenario: &str) -> Phone {
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
    pub async fn call_bob(&self, scenario: &str) -> SippRun {
        self.call("bob", scenario).await
    }

    /// alice calls `callee` (a name of the domain) with the UAC `scenario`.
    pub async fn call(&self, callee: &str, scenario: &str) -> SippRun {
        Sipp::new(scenario, self.node.sip_addr(), self.dir.path())
            .users(&[("alice".into(), PASSWORD.into())])
            .key("callee", callee)
            .key("callee_domain", DOMAIN)
            .timeout_secs(30)
            .run()
            .await
            .unwrap()
    }

    pub async fn forward(&self, user: &str, rules: SetForwardingRequest) {
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

    pub async fn dnd(&self, user: &str) {
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
pub struct Phone {
    pub run: tokio::task::JoinHandle<anyhow::Result<SippRun>>,
}

impl Phone {
    /// Waits for the phone's one call to end and checks it went as its
    /// scenario says.
    pub async fn finish(self) -> SippRun {
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
pub fn invite_statuses(run: &SippRun) -> Vec<u16> {
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
pub fn invite(run: &SippRun) -> &str {
    run.received
        .iter()
        .find(|m| m.starts_with("INVITE "))
        .unwrap_or_else(|| panic!("no INVITE in {:#?}", run.received))
}

/// The value of header `name` in `message` ("" when absent).
pub fn header<'a>(message: &'a str, name: &str) -> &'a str {
    message
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .unwrap_or("")
}

pub fn ended() -> Expected {
    ("CallEnded", json!({ "cause": "normal_clearing" }))
}

pub fn forwarded(to: &str, reason: &str) -> Expected {
    (
        "CallForwarded",
        json!({ "to": format!("{to}@{DOMAIN}"), "reason": reason }),
    )
}

/// Asserts the call events of each user's leg (by name), as
/// [`assert_call_events`] does.
pub async fn assert_legs(pbx: &Pbx, legs: &[(&str, Vec<Expected>)]) {
    let by_id: Vec<(&str, Vec<Expected>)> = legs
        .iter()
        .map(|(user, expected)| (pbx.id(user), expected.clone()))
        .collect();
    assert_call_events(&pbx.node, &by_id).await;
}

/// The methods of the requests a phone received, in order.
pub fn requests(run: &SippRun) -> Vec<&str> {
    run.received
        .iter()
        .filter(|m| !m.starts_with("SIP/2.0"))
        .filter_map(|m| m.split_whitespace().next())
        .collect()
}

/// A leg started by a call to `user` (a ring group member's, or a
/// follow-me target's: its `to` is not its own user).
pub fn started_for(user: &str) -> Expected {
    (
        "CallStarted",
        json!({ "direction": "inbound", "to": format!("{user}@{DOMAIN}") }),
    )
}
