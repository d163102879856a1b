//! Feature codes dialled from a phone (ADR 0020), black box: a real node,
//! SIPp as the phone that dials `*78`, `*79`, `*72<target>`, `*73`, the
//! voicemail codes `*97` / `*98` and garbage, and as the phones calls then
//! reach. Each test asserts what the
//! phone saw (the node answers and hangs up, or a final response saying
//! what is wrong), the user's settings over gRPC, the events (the same
//! `DndChanged` / `ForwardingChanged` as the API's, correlated with the
//! SIP Call-ID) and what calls to the user do afterwards.
//!
//! SIPp 3.6.1 reads only the first `Proxy-Authenticate`, so the node offers
//! MD5 first (`--sip-challenge-md5-first`).

mod support;

use dialtone_api::pb::{EventEnvelope, GetUserRequest, UpdateDomainRequest, User};
use serde_json::{json, Value};
use support::sip::{
    bounded, create_domain, create_user, stream_events, Sipp, SippRun, DOMAIN, PASSWORD,
};
use support::TestNode;

struct Pbx {
    dir: tempfile::TempDir,
    node: TestNode,
}

impl Pbx {
    async fn start() -> Pbx {
        let dir = tempfile::tempdir().unwrap();
        let node = TestNode::start(dir.path(), &["--sip-challenge-md5-first"])
            .await
            .unwrap();
        create_domain(&node, DOMAIN).await.unwrap();
        for name in ["alice", "bob", "carol"] {
            create_user(&node, DOMAIN, name, PASSWORD, 0).await.unwrap();
        }
        Pbx { dir, node }
    }

    /// `user` dials `dialled` with the UAC `scenario`.
    async fn dial(&self, user: &str, dialled: &str, scenario: &str) -> SippRun {
        Sipp::new(scenario, self.node.sip_addr(), self.dir.path())
            .users(&[(user.into(), PASSWORD.into())])
            .key("callee", dialled)
            .key("callee_domain", DOMAIN)
            .timeout_secs(30)
            .run()
            .await
            .unwrap()
    }

    /// alice dials a code the node applies: it answers, she ACKs, the
    /// node hangs up. Returns the SIP Call-ID.
    async fn code(&self, dialled: &str) -> String {
        let run = self.dial("alice", dialled, "feature_uac.xml").await;
        run.assert_all_successful(1);
        let ok = run
            .received
            .iter()
            .find(|m| m.starts_with("SIP/2.0 200") && m.contains("INVITE"))
            .unwrap_or_else(|| panic!("no 200 to the INVITE: {:#?}", run.received));
        assert!(
            run.received.iter().any(|m| m.starts_with("BYE ")),
            "the node hangs up: {:#?}",
            run.received
        );
        header(ok, "Call-ID").to_owned()
    }

    /// `user` dials `dialled` and gets a final failure: its status line.
    async fn refused(&self, user: &str, dialled: &str) -> String {
        let run = self.dial(user, dialled, "call_uac_fails.xml").await;
        run.assert_all_successful(1);
        final_status(&run)
    }

    async fn user(&self, name: &str) -> User {
        self.node
            .provisioning()
            .await
            .unwrap()
            .get_user(GetUserRequest {
                user: format!("{name}@{DOMAIN}"),
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// The `DndChanged` and `ForwardingChanged` events of `user`.
    async fn setting_events(&self, user: &User) -> Vec<EventEnvelope> {
        stream_events(&self.node, &format!("user-{}", user.id))
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.r#type == "ForwardingChanged" || e.r#type == "DndChanged")
            .collect()
    }

    /// A SIPp phone of `user` (one call, `scenario`), registered as its
    /// only contact.
    async fn phone(&self, user: &str, scenario: &str) -> tokio::task::JoinHandle<SippRun> {
        let uas = Sipp::new(scenario, self.node.sip_addr(), self.dir.path())
            .users(&[(user.into(), PASSWORD.into())])
            .timeout_secs(20)
            .start()
            .await
            .unwrap();
        let port = uas.port();
        Sipp::new("register_auth.xml", self.node.sip_addr(), self.dir.path())
            .users(&[(user.into(), PASSWORD.into())])
            .key("domain", DOMAIN)
            .key("contact_hostport", &format!("127.0.0.1:{port}"))
            .run()
            .await
            .unwrap()
            .assert_all_successful(1);
        tokio::spawn(async move { uas.finish().await.unwrap() })
    }
}

/// The value of header `name` in `message` ("" when absent).
fn header<'a>(message: &'a str, name: &str) -> &'a str {
    message
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .unwrap_or("")
}

/// The status line of the last final response to an INVITE other than
/// the 407 challenge.
fn final_status(run: &SippRun) -> String {
    run.received
        .iter()
        .rfind(|m| {
            m.starts_with("SIP/2.0 ")
                && !m.starts_with("SIP/2.0 1")
                && !m.starts_with("SIP/2.0 407")
                && header(m, "CSeq").ends_with("INVITE")
        })
        .and_then(|m| m.lines().next())
        .unwrap_or_else(|| panic!("no final response: {:#?}", run.received))
        .trim()
        .to_owned()
}

fn data(e: &EventEnvelope) -> Value {
    serde_json::from_str(&e.data_json).unwrap()
}

#[tokio::test]
async fn codes_turn_dnd_and_forwarding_on_and_off_with_the_apis_events() {
    bounded(120, async {
        let pbx = Pbx::start().await;
        let alice = pbx.user("alice").await;

        // *78: DND on, durable before the phone hears the answer.
        let call_id = pbx.code("*78").await;
        assert!(pbx.user("alice").await.dnd);
        let events = pbx.setting_events(&alice).await;
        assert_eq!(events.len(), 1, "{events:#?}");
        assert_eq!(events[0].r#type, "DndChanged");
        assert_eq!(data(&events[0]), json!({ "dnd": true }));
        assert_eq!(events[0].correlation_id, call_id);
        // A call to alice now: busy.
        assert_eq!(pbx.refused("bob", "alice").await, "SIP/2.0 486 Busy Here");

        // *79: off again.
        pbx.code("*79").await;
        assert!(!pbx.user("alice").await.dnd);

        // *72carol: every call to alice goes to carol.
        let call_id = pbx.code("*72carol").await;
        let forwarding = pbx.user("alice").await.forwarding.unwrap();
        assert_eq!(forwarding.always, format!("carol@{DOMAIN}"));
        let events = pbx.setting_events(&alice).await;
        let last = events.last().unwrap();
        assert_eq!(last.r#type, "ForwardingChanged");
        assert_eq!(last.correlation_id, call_id);
        assert_eq!(
            data(last),
            json!({ "forwarding": { "always": format!("carol@{DOMAIN}") } })
        );
        let carol = pbx.phone("carol", "call_uas.xml").await;
        pbx.dial("bob", "alice", "call_uac.xml")
            .await
            .assert_all_successful(1);
        let carol = carol.await.unwrap();
        assert!(
            carol.exit_code == Some(0) && carol.successful == 1,
            "carol's phone took the call: {:#?}",
            carol.received
        );

        // *73: the rule is gone.
        pbx.code("*73").await;
        let forwarding = pbx.user("alice").await.forwarding.unwrap_or_default();
        assert_eq!(forwarding.always, "");
        let events = pbx.setting_events(&alice).await;
        let types: Vec<&str> = events.iter().map(|e| e.r#type.as_str()).collect();
        assert_eq!(
            types,
            [
                "DndChanged",
                "DndChanged",
                "ForwardingChanged",
                "ForwardingChanged"
            ]
        );
        assert_eq!(
            data(&events[3]).get("always"),
            None,
            "{:?}",
            data(&events[3])
        );
        pbx.node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn garbage_codes_get_clear_errors_and_change_nothing() {
    bounded(120, async {
        let pbx = Pbx::start().await;
        let alice = pbx.user("alice").await;

        assert_eq!(
            pbx.refused("alice", "*72").await,
            "SIP/2.0 484 Address Incomplete (dial the forward target after the code)"
        );
        assert_eq!(
            pbx.refused("alice", "*72nobody").await,
            format!(
                "SIP/2.0 404 Forward target not found (forwarding target user nobody@{DOMAIN})"
            )
        );
        let trunk = pbx.refused("alice", "*72+15551234567").await;
        assert!(
            trunk.starts_with("SIP/2.0 403 Forward target refused (") && trunk.contains("trunk"),
            "{trunk}"
        );
        let invalid = pbx.refused("alice", "*72+1").await;
        assert!(
            invalid.starts_with("SIP/2.0 404 Invalid forward target (")
                && invalid.contains("E.164"),
            "{invalid}"
        );
        let itself = pbx.refused("alice", "*72alice").await;
        assert!(itself.contains("itself"), "{itself}");
        // No code: routed as a call to a user that does not exist.
        for garbage in ["*7", "*99garbage", "*781"] {
            assert_eq!(
                pbx.refused("alice", garbage).await,
                "SIP/2.0 404 Not Found",
                "{garbage}"
            );
        }
        assert_eq!(pbx.setting_events(&alice).await, []);
        let user = pbx.user("alice").await;
        assert!(!user.dnd);
        assert_eq!(user.forwarding.unwrap_or_default().always, "");

        // The domain's own codes: *78 is nothing then, *55 is DND on.
        let out = pbx
            .node
            .cli(&["domain", "update", DOMAIN, "--feature-code-dnd-on", "*55"])
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("dnd-on *55"));
        assert_eq!(pbx.refused("alice", "*78").await, "SIP/2.0 404 Not Found");
        pbx.code("*55").await;
        assert!(pbx.user("alice").await.dnd);

        // Bad codes are refused with what is wrong, nothing applied.
        let mut p = pbx.node.provisioning().await.unwrap();
        let e = p
            .update_domain(UpdateDomainRequest {
                domain: DOMAIN.into(),
                feature_code_forward_always: Some("*5".into()),
                feature_code_dnd_off: Some("*1".into()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("prefix"), "{}", e.message());
        let e = p
            .update_domain(UpdateDomainRequest {
                domain: DOMAIN.into(),
                feature_code_dnd_off: Some("7x".into()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let codes = p
            .get_domain(dialtone_api::pb::GetDomainRequest {
                domain: DOMAIN.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .feature_codes
            .unwrap();
        assert_eq!(
            (
                codes.forward_always.as_str(),
                codes.dnd_on.as_str(),
                codes.dnd_off.as_str()
            ),
            ("*72", "*55", "*79")
        );

        // Off for the domain: every code is a call again.
        p.update_domain(UpdateDomainRequest {
            domain: DOMAIN.into(),
            feature_codes_enabled: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(pbx.refused("alice", "*79").await, "SIP/2.0 404 Not Found");
        assert!(pbx.user("alice").await.dnd, "still on");
        pbx.node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn the_phone_may_hang_up_first_and_b2bua_mode_and_tcp_work_alike() {
    bounded(120, async {
        let dir = tempfile::tempdir().unwrap();
        let node = TestNode::start(
            dir.path(),
            &["--sip-challenge-md5-first", "--sip-call-mode", "b2bua"],
        )
        .await
        .unwrap();
        create_domain(&node, DOMAIN).await.unwrap();
        for name in ["alice", "bob", "carol"] {
            create_user(&node, DOMAIN, name, PASSWORD, 0).await.unwrap();
        }
        let pbx = Pbx { dir, node };

        // Over TCP: answered and hung up, nothing retransmitted.
        let run = Sipp::new("feature_uac.xml", pbx.node.sip_addr(), pbx.dir.path())
            .users(&[("alice".into(), PASSWORD.into())])
            .key("callee", "*78")
            .key("callee_domain", DOMAIN)
            .tcp()
            .run()
            .await
            .unwrap();
        run.assert_all_successful(1);
        assert!(pbx.user("alice").await.dnd);

        // The phone hangs up before it acknowledges: its BYE gets a 200
        // and the node sends none (the scenario fails on one).
        let run = pbx.dial("alice", "*79", "feature_uac_bye_first.xml").await;
        run.assert_all_successful(1);
        assert!(
            !run.received.iter().any(|m| m.starts_with("BYE ")),
            "{:#?}",
            run.received
        );
        assert!(!pbx.user("alice").await.dnd);

        // A disabled user is refused as for any call; nothing applied.
        pbx.node
            .provisioning()
            .await
            .unwrap()
            .update_user(dialtone_api::pb::UpdateUserRequest {
                user: format!("bob@{DOMAIN}"),
                enabled: Some(false),
                ..Default::default()
            })
            .await
            .unwrap();
        let status = pbx.refused("bob", "*78").await;
        assert!(status.starts_with("SIP/2.0 403"), "{status}");
        let bob = pbx.user("bob").await;
        assert!(!bob.dnd);
        assert_eq!(pbx.setting_events(&bob).await, []);
        pbx.node.stop().await.unwrap();
    })
    .await
}

/// Enables the mailbox of `user` (PIN 1234) the way its actor would, on
/// the log of a node that is not running: the domain's own `decide`, the
/// events appended at the stream's version in their stored form (as
/// `calls_api.rs` records call legs). The gRPC API has no mailbox service
/// yet; this is the only way in from outside.
async fn enable_mailbox(dir: &std::path::Path, user: &User) {
    use dialtone_domain::mailbox::{self, PinHash};
    use dialtone_domain::user::{self, User as UserState};
    use dialtone_domain::Event;
    use dialtone_eventlog::sqlite::{SqliteOptions, SqliteStore};
    use dialtone_eventlog::{ExpectedVersion, NewEvent, SharedStore};

    let store: SharedStore = std::sync::Arc::new(
        SqliteStore::open(&dir.join("events.db"), SqliteOptions::new("test-mailbox")).unwrap(),
    );
    let stream = format!("user-{}", user.id);
    let recorded = store.read_stream(&stream, 0, 10_000).await.unwrap();
    let mut state = UserState::default();
    for e in &recorded {
        match Event::from_stored(&e.event_type, e.schema_version, &e.data).unwrap() {
            Event::User(event) => state = user::evolve(state, &event),
            other => panic!("not a user event in {stream}: {other:?}"),
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let command = user::Command::Mailbox(mailbox::Command::Configure(mailbox::Patch {
        enabled: Some(true),
        pin: Some(PinHash::derive("1234", [7; 16]).unwrap()),
        ..Default::default()
    }));
    let events = user::decide(&state, &command, now).unwrap();
    assert!(!events.is_empty());
    let new = events
        .into_iter()
        .map(|event| {
            let event = Event::User(event);
            NewEvent {
                event_id: uuid::Uuid::new_v4(),
                event_type: event.event_type().to_owned(),
                schema_version: event.schema_version(),
                occurred_at_us: now,
                domain_id: Some(user.domain_id.parse().unwrap()),
                user_id: Some(user.id.parse().unwrap()),
                correlation_id: None,
                data: event.to_data().unwrap(),
            }
        })
        .collect();
    let version = recorded.last().map(|e| e.version).unwrap();
    store
        .append(&stream, ExpectedVersion::Exact(version), new)
        .await
        .unwrap();
    store.close().await.unwrap();
}

/// The body of a SIP message (after the blank line).
fn body(message: &str) -> &str {
    message
        .split_once("\r\n\r\n")
        .or_else(|| message.split_once("\n\n"))
        .map_or("", |(_, b)| b)
}

#[tokio::test]
async fn voicemail_codes_start_the_mailbox_menus_and_are_settings_like_the_others() {
    bounded(180, async {
        let pbx = Pbx::start().await;
        let alice = pbx.user("alice").await;

        // alice has no box (none is enabled by default): *97 says so.
        assert_eq!(
            pbx.refused("alice", "*97").await,
            "SIP/2.0 404 Not Found (your voicemail box is not enabled)"
        );
        // Dialled alone only: anything after them is a call.
        assert_eq!(pbx.refused("alice", "*971").await, "SIP/2.0 404 Not Found");

        // The defaults, then codes of the domain's own over gRPC.
        let mut p = pbx.node.provisioning().await.unwrap();
        let codes = p
            .get_domain(dialtone_api::pb::GetDomainRequest {
                domain: DOMAIN.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .feature_codes
            .unwrap();
        assert_eq!(
            (codes.voicemail_own.as_str(), codes.voicemail_any.as_str()),
            ("*97", "*98")
        );
        // A prefix of an existing code, or equal to one: refused, naming
        // the fields, nothing changed.
        for (own, any, why) in [
            (Some("*7"), None, "feature_code_voicemail_own"),
            (None, Some("*78"), "feature_code_dnd_on"),
            (Some("*9"), None, "feature_code_voicemail_own"),
            (None, Some("*97"), "feature_code_voicemail_own"),
        ] {
            let e = p
                .update_domain(UpdateDomainRequest {
                    domain: DOMAIN.into(),
                    feature_code_voicemail_own: own.map(Into::into),
                    feature_code_voicemail_any: any.map(Into::into),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{own:?} {any:?}");
            assert!(
                e.message().contains(why) && e.message().contains("feature_code_voicemail"),
                "{own:?} {any:?}: {}",
                e.message()
            );
        }
        let updated = p
            .update_domain(UpdateDomainRequest {
                domain: DOMAIN.into(),
                feature_code_voicemail_own: Some("#97".into()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let codes = updated.feature_codes.unwrap();
        assert_eq!(
            (codes.voicemail_own.as_str(), codes.voicemail_any.as_str()),
            ("#97", "*98")
        );
        // The CLI sets and shows them too.
        let out = pbx
            .node
            .cli(&[
                "domain",
                "update",
                DOMAIN,
                "--feature-code-voicemail-any",
                "#98",
            ])
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = pbx.node.cli(&["domain", "get", DOMAIN]).await.unwrap();
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(
            shown.contains("voicemail-own #97") && shown.contains("voicemail-any #98"),
            "{shown}"
        );
        // The old codes are calls now; the new ones are the codes.
        assert_eq!(pbx.refused("alice", "*97").await, "SIP/2.0 404 Not Found");
        assert_eq!(
            pbx.refused("alice", "#97").await,
            "SIP/2.0 404 Not Found (your voicemail box is not enabled)"
        );
        // The domain's change is an ordinary DomainUpdated.
        let updates: Vec<_> = stream_events(&pbx.node, &format!("domain-{}", updated.id))
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.r#type == "DomainUpdated")
            .collect();
        let last = data(updates.last().unwrap());
        assert_eq!(
            last["settings"]["feature_codes"],
            json!({
                "enabled": true,
                "forward_always": "*72",
                "forwarding_off": "*73",
                "dnd_on": "*78",
                "dnd_off": "*79",
                "voicemail_own": "#97",
                "voicemail_any": "#98",
            })
        );

        // With alice's box enabled, #97 answers with an SDP answer of the
        // node's own: a real audio stream (not port 0), G.711 as offered.
        let Pbx { dir, node } = pbx;
        node.stop().await.unwrap();
        enable_mailbox(dir.path(), &alice).await;
        let node = TestNode::start(dir.path(), &["--sip-challenge-md5-first"])
            .await
            .unwrap();
        let pbx = Pbx { dir, node };
        let run = pbx.dial("alice", "#97", "feature_uac_app.xml").await;
        run.assert_all_successful(1);
        let ok = run
            .received
            .iter()
            .find(|m| m.starts_with("SIP/2.0 200") && header(m, "CSeq").ends_with("INVITE"))
            .unwrap_or_else(|| panic!("no 200 to the INVITE: {:#?}", run.received));
        assert_eq!(header(ok, "Content-Type"), "application/sdp");
        let sdp = body(ok);
        let m = sdp
            .lines()
            .find(|l| l.starts_with("m=audio "))
            .unwrap_or_else(|| panic!("no audio stream: {sdp}"));
        let port: u16 = m.split(' ').nth(1).unwrap().parse().unwrap();
        assert_ne!(port, 0, "{sdp}");
        assert!(
            m.ends_with("RTP/AVP 0") || m.contains("RTP/AVP 0 "),
            "{sdp}"
        );
        assert!(sdp.lines().any(|l| l.starts_with("c=IN IP4 ")), "{sdp}");
        // bob has no box: still refused.
        assert_eq!(
            pbx.refused("bob", "#97").await,
            "SIP/2.0 404 Not Found (your voicemail box is not enabled)"
        );
        // #98 (any box) needs no box of the caller's: answered the same way.
        let run = pbx.dial("bob", "#98", "feature_uac_app.xml").await;
        run.assert_all_successful(1);
        let ok = run
            .received
            .iter()
            .find(|m| m.starts_with("SIP/2.0 200") && header(m, "CSeq").ends_with("INVITE"))
            .unwrap_or_else(|| panic!("no 200 to the INVITE: {:#?}", run.received));
        assert!(body(ok).contains("m=audio "), "{ok}");
        assert!(!body(ok).contains("m=audio 0 "), "{ok}");
        pbx.node.stop().await.unwrap();
    })
    .await
}
