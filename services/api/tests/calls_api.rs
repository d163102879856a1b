//! Calls in the status and audit APIs, over real gRPC on loopback: the
//! directory and its actors run in-process on a real SQLite log, call legs
//! are recorded by executing `Command::Call` steps on the user actors (as
//! the SIP proxy does), and `ListActiveCalls`/`ListCalls` are asked through
//! a real tonic server and client.

use std::sync::Arc;
use std::time::Duration;

use dialtone_actors::{
    ActorSystem, CallIndex, Directory, DirectoryConfig, DomainRef, Meta, NewDomain, NewUserRequest,
    Provisioning, ProvisioningConfig, RegistrationIndex,
};
use dialtone_api::auth::Bearer;
use dialtone_api::pb::audit_service_client::AuditServiceClient;
use dialtone_api::pb::status_service_client::StatusServiceClient;
use dialtone_api::pb::{
    self, CallCause, CallDirection, CallState, HangupSide as PbSide, ListActiveCallsRequest,
    ListCallsRequest,
};
use dialtone_domain::call::{CallStep, Cause, Direction, HangupSide};
use dialtone_domain::user::Command;
use dialtone_domain::{DomainName, UserId, UserName};
use dialtone_eventlog::sqlite::{SqliteOptions, SqliteStore};
use dialtone_eventlog::SharedStore;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;

/// A channel that sends the test's admin token.
type Channel = InterceptedService<tonic::transport::Channel, Bearer>;

const ADMIN_TOKEN: &str = "calls-api-test-admin-token";
use tonic::Code;

struct Node {
    store: SharedStore,
    provisioning: Provisioning,
    calls: CallIndex,
    url: String,
    _stop: watch::Sender<bool>,
    _system: ActorSystem,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore = Arc::new(
            SqliteStore::open(
                &dir.path().join("events.db"),
                SqliteOptions::new("test-node"),
            )
            .unwrap(),
        );
        let system = ActorSystem::start(1).unwrap();
        let directory = Directory::new(
            store.clone(),
            system.arbiters().to_vec(),
            DirectoryConfig::default(),
        )
        .unwrap();
        let provisioning = Provisioning::new(directory.clone(), ProvisioningConfig::default());
        let registrations = RegistrationIndex::start(store.clone(), directory.clone())
            .await
            .unwrap();
        let calls = CallIndex::start(store.clone(), directory.clone())
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, mut stopping) = watch::channel(false);
        let context = dialtone_api::ApiContext {
            provisioning: provisioning.clone(),
            store: store.clone(),
            registrations,
            calls: calls.clone(),
            conferences: dialtone_actors::ConferenceIndex::start(store.clone())
                .await
                .unwrap(),
            numbers: dialtone_actors::NumberIndex::start(store.clone())
                .await
                .unwrap(),
            blobs: std::sync::Arc::new(
                dialtone_eventlog::SqliteBlobStore::open(
                    &dir.path().join("blobs.sqlite3"),
                    Default::default(),
                )
                .unwrap(),
            ),
        };
        let options = dialtone_api::ServeOptions {
            admin_token: Some(ADMIN_TOKEN.to_owned()),
            ..Default::default()
        };
        tokio::spawn(dialtone_api::serve_with(
            listener,
            context,
            options,
            async move {
                let _ = stopping.wait_for(|s| *s).await;
            },
        ));
        Node {
            store,
            provisioning,
            calls,
            url,
            _stop: stop,
            _system: system,
            _dir: dir,
        }
    }

    async fn channel(&self) -> Channel {
        let channel = tonic::transport::Channel::from_shared(self.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        InterceptedService::new(channel, Bearer::new(ADMIN_TOKEN).unwrap())
    }

    async fn domain(&self, name: &str) {
        self.provisioning
            .create_domain(
                NewDomain {
                    name: DomainName::parse(name).unwrap(),
                    settings: Default::default(),
                },
                Meta::default(),
            )
            .await
            .unwrap();
    }

    async fn user(&self, address: &str) -> UserId {
        let (name, domain) = address.split_once('@').unwrap();
        let view = self
            .provisioning
            .create_user(
                NewUserRequest {
                    domain: DomainRef::parse(domain).unwrap(),
                    username: UserName::parse(name).unwrap(),
                    password: "a good long password".to_owned(),
                    display_name: String::new(),
                    caller_id: String::new(),
                    max_contacts: None,
                    enabled: true,
                },
                Meta::default(),
            )
            .await
            .unwrap();
        view.state.id.unwrap()
    }

    async fn step(&self, user: UserId, step: CallStep) {
        let meta = Meta {
            correlation_id: Some(format!("{}@192.0.2.1", step.call_id())),
            ..Meta::default()
        };
        self.provisioning
            .directory()
            .execute_user(user, Command::Call(Box::new(step)), meta)
            .await
            .unwrap();
    }

    async fn caught_up(&self) {
        for _ in 0..300 {
            if self.calls.position() >= self.store.head_position() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the call index did not catch up");
    }
}

fn start(call_id: &str, direction: Direction, from: &str, to: &str) -> CallStep {
    CallStep::Start {
        call_id: call_id.to_owned(),
        direction,
        from: from.to_owned(),
        to: to.to_owned(),
        sip_call_id: format!("{call_id}@192.0.2.1"),
    }
}

fn ringing(call_id: &str) -> CallStep {
    CallStep::Ringing {
        call_id: call_id.to_owned(),
    }
}

fn answer(call_id: &str) -> CallStep {
    CallStep::Answer {
        call_id: call_id.to_owned(),
        contact: "sip:bob@192.0.2.20:5060".to_owned(),
    }
}

fn end(call_id: &str) -> CallStep {
    CallStep::End {
        call_id: call_id.to_owned(),
        cause: Cause::NormalClearing,
        side: HangupSide::Caller,
    }
}

fn fail(call_id: &str, sip_status: u16, cause: Cause) -> CallStep {
    CallStep::Fail {
        call_id: call_id.to_owned(),
        sip_status,
        cause,
    }
}

async fn list_calls(
    audit: &mut AuditServiceClient<Channel>,
    domain: &str,
    page_size: u32,
) -> Vec<pb::CallRecord> {
    let mut all = Vec::new();
    let mut token = String::new();
    for _ in 0..100 {
        let page = audit
            .list_calls(ListCallsRequest {
                domain: domain.to_owned(),
                page_size,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.calls.len() <= page_size as usize);
        all.extend(page.calls);
        if page.next_page_token.is_empty() {
            return all;
        }
        token = page.next_page_token;
    }
    panic!("ListCalls did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_calls_and_call_detail_records() {
    let node = Node::start().await;
    node.domain("example.com").await;
    node.domain("other.com").await;
    let alice = node.user("alice@example.com").await;
    let bob = node.user("bob@example.com").await;
    let carol = node.user("carol@example.com").await;
    let zed = node.user("zed@other.com").await;
    let mut status = StatusServiceClient::new(node.channel().await);
    let mut audit = AuditServiceClient::new(node.channel().await);

    // 1. alice calls bob: both legs ring and are answered.
    node.step(
        alice,
        start(
            "c1",
            Direction::Outbound,
            "alice@example.com",
            "bob@example.com",
        ),
    )
    .await;
    node.step(
        bob,
        start(
            "c1",
            Direction::Inbound,
            "alice@example.com",
            "bob@example.com",
        ),
    )
    .await;
    node.step(bob, ringing("c1")).await;
    node.step(alice, ringing("c1")).await;
    node.caught_up().await;
    let active = status
        .list_active_calls(ListActiveCallsRequest {
            domain: "example.com".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(active.calls.len(), 1, "{active:?}");
    let call = &active.calls[0];
    assert_eq!(call.call_id, "c1");
    assert_eq!(call.caller, "alice@example.com");
    assert_eq!(call.callee, "bob@example.com");
    assert_eq!(call.state, CallState::Ringing as i32);
    assert_eq!(call.legs.len(), 2);
    assert_eq!(call.legs[0].direction, CallDirection::Outbound as i32);
    assert_eq!(call.legs[0].address, "alice@example.com");
    assert_eq!(call.legs[1].address, "bob@example.com");
    assert!(call.answered_at.is_none());

    node.step(bob, answer("c1")).await;
    node.step(alice, answer("c1")).await;
    node.caught_up().await;
    let active = status
        .list_active_calls(ListActiveCallsRequest {
            domain: "example.com".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(active.calls[0].state, CallState::Answered as i32);
    assert!(active.calls[0].answered_at.is_some());
    tokio::time::sleep(Duration::from_millis(20)).await;
    node.step(alice, end("c1")).await;
    node.step(bob, end("c1")).await;

    // Later than the join window: the listing settles calls by time too.
    tokio::time::sleep(Duration::from_millis(2_100)).await;

    // 2. alice calls an unknown user: only her leg. 3. alice calls carol,
    // registered nowhere: both legs fail with 480. Carol's leg is
    // committed before alice's, even before call 2's (two actors' appends
    // commit in either order), so that a page starting after call 2 must
    // look back for it.
    node.step(
        carol,
        start(
            "c3",
            Direction::Inbound,
            "alice@example.com",
            "carol@example.com",
        ),
    )
    .await;
    node.step(
        alice,
        start(
            "c2",
            Direction::Outbound,
            "alice@example.com",
            "nobody@example.com",
        ),
    )
    .await;
    node.step(alice, fail("c2", 404, Cause::NotFound)).await;
    node.step(
        alice,
        start(
            "c3",
            Direction::Outbound,
            "alice@example.com",
            "carol@example.com",
        ),
    )
    .await;
    node.step(carol, fail("c3", 480, Cause::Unavailable)).await;
    node.step(alice, fail("c3", 480, Cause::Unavailable)).await;
    // 4. another domain's call.
    node.step(
        zed,
        start("c4", Direction::Outbound, "zed@other.com", "x@other.com"),
    )
    .await;
    node.step(zed, fail("c4", 404, Cause::NotFound)).await;
    // 5. a call still ringing.
    node.step(
        bob,
        start(
            "c5",
            Direction::Outbound,
            "bob@example.com",
            "alice@example.com",
        ),
    )
    .await;
    node.step(
        alice,
        start(
            "c5",
            Direction::Inbound,
            "bob@example.com",
            "alice@example.com",
        ),
    )
    .await;
    node.step(alice, ringing("c5")).await;
    node.caught_up().await;

    let active = status
        .list_active_calls(ListActiveCallsRequest {
            domain: "example.com".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = active.calls.iter().map(|c| c.call_id.as_str()).collect();
    assert_eq!(ids, ["c5"]);
    let other = status
        .list_active_calls(ListActiveCallsRequest {
            domain: "other.com".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(other.calls.is_empty(), "{other:?}");

    // Call detail records: the same whatever the page size.
    let records = list_calls(&mut audit, "example.com", 1000).await;
    let ids: Vec<&str> = records.iter().map(|c| c.call_id.as_str()).collect();
    assert_eq!(ids, ["c1", "c2", "c3", "c5"]);
    for page_size in [1, 2, 3] {
        let paged = list_calls(&mut audit, "example.com", page_size).await;
        assert_eq!(paged, records, "page size {page_size}");
    }

    let c1 = &records[0];
    assert_eq!(c1.caller, "alice@example.com");
    assert_eq!(c1.callee, "bob@example.com");
    assert_eq!(c1.sip_call_id, "c1@192.0.2.1");
    assert!(c1.answered_at.is_some() && c1.ended_at.is_some());
    assert!(c1.duration_ms >= 20, "{c1:?}");
    assert_eq!(c1.cause, CallCause::NormalClearing as i32);
    assert_eq!(c1.sip_status, 200);
    assert_eq!(c1.hangup_side, PbSide::Caller as i32);
    assert_eq!(c1.answered_contact, "sip:bob@192.0.2.20:5060");
    assert!(!c1.in_progress);
    assert_eq!(c1.legs.len(), 2);
    assert_eq!(c1.legs[1].user_id, bob.to_string());

    let c2 = &records[1];
    assert_eq!(c2.legs.len(), 1, "only the caller's leg: {c2:?}");
    assert_eq!(c2.sip_status, 404);
    assert_eq!(c2.cause, CallCause::NotFound as i32);
    assert!(c2.answered_at.is_none() && c2.ended_at.is_some());

    let c3 = &records[2];
    assert_eq!(
        c3.legs.len(),
        2,
        "both legs, the callee's first in the log: {c3:?}"
    );
    assert!(c3
        .legs
        .iter()
        .all(|l| l.sip_status == 480 && !l.in_progress));
    assert_eq!(c3.cause, CallCause::Unavailable as i32);
    assert_eq!(c3.legs[0].direction, CallDirection::Outbound as i32);

    let c5 = &records[3];
    assert!(c5.in_progress && c5.ended_at.is_none());
    assert_eq!(c5.cause, CallCause::Unspecified as i32);

    let other = list_calls(&mut audit, "other.com", 10).await;
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].call_id, "c4");

    // A time range: only c1 started before c2's leg.
    let c2_start = c2.started_at.unwrap();
    let before = audit
        .list_calls(ListCallsRequest {
            domain: "example.com".to_owned(),
            to_time: Some(c2_start),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = before.calls.iter().map(|c| c.call_id.as_str()).collect();
    assert_eq!(ids, ["c1"]);
    let after = audit
        .list_calls(ListCallsRequest {
            domain: "example.com".to_owned(),
            from_time: Some(c2_start),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = after.calls.iter().map(|c| c.call_id.as_str()).collect();
    assert_eq!(ids, ["c2", "c3", "c5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_are_refused_with_what_is_wrong() {
    let node = Node::start().await;
    node.domain("example.com").await;
    let mut status = StatusServiceClient::new(node.channel().await);
    let mut audit = AuditServiceClient::new(node.channel().await);

    let err = status
        .list_active_calls(ListActiveCallsRequest {
            domain: "nowhere.example".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = status
        .list_active_calls(ListActiveCallsRequest {
            domain: "not a domain".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    let ts = |seconds| dialtone_api::prost_types::Timestamp { seconds, nanos: 0 };
    let cases = [
        (
            ListCallsRequest {
                domain: "nowhere.example".to_owned(),
                ..Default::default()
            },
            Code::NotFound,
            "nowhere.example",
        ),
        (
            ListCallsRequest {
                domain: "example.com".to_owned(),
                from_time: Some(ts(2_000_000_000)),
                to_time: Some(ts(1_000_000_000)),
                ..Default::default()
            },
            Code::InvalidArgument,
            "from_time",
        ),
        (
            ListCallsRequest {
                domain: "example.com".to_owned(),
                page_size: 5000,
                ..Default::default()
            },
            Code::InvalidArgument,
            "page_size",
        ),
        (
            ListCallsRequest {
                domain: "example.com".to_owned(),
                page_token: "abc".to_owned(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "page_token",
        ),
        (
            ListCallsRequest {
                domain: "".to_owned(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "domain",
        ),
    ];
    for (request, code, mentions) in cases {
        let err = audit.list_calls(request.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{request:?}: {err:?}");
        assert!(err.message().contains(mentions), "{request:?}: {err:?}");
    }

    // A fresh domain lists nothing, in one page.
    let page = audit
        .list_calls(ListCallsRequest {
            domain: "example.com".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(page.calls.is_empty() && page.next_page_token.is_empty());
}
