//! Call legs through the real actors on a real SQLite log: `Command::Call`
//! through the generic aggregate actor, and the `CallIndex` closing, at
//! start-up, the legs a previous run left in progress.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dialtone_actors::{
    ActorSystem, CallIndex, Directory, DirectoryConfig, DomainRef, Meta, NewDomain, NewUserRequest,
    Provisioning, ProvisioningConfig,
};
use dialtone_domain::call::{CallStep, Cause, Direction, HangupSide, LegState};
use dialtone_domain::registration::Presence;
use dialtone_domain::user::{self, Command};
use dialtone_domain::{DomainId, DomainName, Event, UserId, UserName};
use dialtone_eventlog::sqlite::{SqliteOptions, SqliteStore};
use dialtone_eventlog::SharedStore;

struct Node {
    store: SharedStore,
    system: ActorSystem,
    directory: Directory,
    provisioning: Provisioning,
}

impl Node {
    fn open(path: &Path) -> Node {
        let store: SharedStore = Arc::new(
            SqliteStore::open(&path.join("events.db"), SqliteOptions::new("test-node")).unwrap(),
        );
        let system = ActorSystem::start(1).unwrap();
        let directory = Directory::new(
            store.clone(),
            system.arbiters().to_vec(),
            DirectoryConfig::default(),
        )
        .unwrap();
        let provisioning = Provisioning::new(directory.clone(), ProvisioningConfig::default());
        Node {
            store,
            system,
            directory,
            provisioning,
        }
    }

    async fn stop(self) {
        self.directory.passivate_all(Duration::from_secs(5)).await;
        let system = self.system;
        tokio::task::spawn_blocking(move || system.shutdown())
            .await
            .unwrap();
        self.store.close().await.unwrap();
    }

    async fn user(&self, name: &str) -> UserId {
        let view = self
            .provisioning
            .create_user(
                NewUserRequest {
                    domain: DomainRef::parse("example.com").unwrap(),
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

    async fn step(&self, user: UserId, step: CallStep) -> user::User {
        let meta = Meta {
            correlation_id: Some("sip-call-id@192.0.2.1".to_owned()),
            ..Meta::default()
        };
        self.directory
            .execute_user(user, Command::Call(Box::new(step)), meta)
            .await
            .unwrap()
            .state
    }

    /// The call events of `user`'s stream.
    async fn call_events(&self, user: UserId) -> Vec<user::Event> {
        let events = self
            .store
            .read_stream(&format!("user-{user}"), 0, 1000)
            .await
            .unwrap();
        events
            .iter()
            .filter_map(|e| {
                match Event::from_stored(&e.event_type, e.schema_version, &e.data).unwrap() {
                    Event::User(
                        event @ (user::Event::CallStarted { .. }
                        | user::Event::CallRinging { .. }
                        | user::Event::CallAnswered { .. }
                        | user::Event::CallEnded { .. }
                        | user::Event::CallFailed { .. }),
                    ) => Some(event),
                    _ => None,
                }
            })
            .collect()
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

async fn wait_caught_up(index: &CallIndex, store: &SharedStore) {
    for _ in 0..200 {
        if index.position() >= store.head_position() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the call index did not catch up with the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legs_left_in_progress_are_closed_at_start_and_new_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(dir.path());
    node.provisioning
        .create_domain(
            NewDomain {
                name: DomainName::parse("example.com").unwrap(),
                settings: Default::default(),
            },
            Meta::default(),
        )
        .await
        .unwrap();
    let alice = node.user("alice").await;
    let bob = node.user("bob").await;
    let index = CallIndex::start(node.store.clone(), node.directory.clone())
        .await
        .unwrap();

    // "answered": both legs answered; "ringing": the callee alerting;
    // "done": a call that ended normally before the crash.
    for (user, direction) in [(alice, Direction::Outbound), (bob, Direction::Inbound)] {
        node.step(user, start("answered", direction)).await;
        node.step(user, answer("answered")).await;
        node.step(user, start("ringing", direction)).await;
        node.step(
            user,
            CallStep::Ringing {
                call_id: "ringing".to_owned(),
            },
        )
        .await;
        node.step(user, start("done", direction)).await;
        node.step(
            user,
            CallStep::End {
                call_id: "done".to_owned(),
                cause: Cause::NormalClearing,
                side: HangupSide::Caller,
            },
        )
        .await;
    }
    let bob_state = node.directory.user_view(bob).await.unwrap().state;
    assert_eq!(bob_state.presence, Presence::OnCall);
    wait_caught_up(&index, &node.store).await;
    let domain = DomainId::for_name(&DomainName::parse("example.com").unwrap());
    let active = index.active_in(domain);
    assert_eq!(active.len(), 2, "{active:?}");
    assert!(active.iter().all(|legs| legs.len() == 2));
    assert_eq!(index.calls_in_progress(), 2);
    node.stop().await;

    // The restart: the legs in progress are closed before start returns.
    let node = Node::open(dir.path());
    let index = CallIndex::start(node.store.clone(), node.directory.clone())
        .await
        .unwrap();
    for user in [alice, bob] {
        let events = node.call_events(user).await;
        let closing: Vec<_> = events
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    user::Event::CallEnded {
                        cause: Cause::NodeRestart,
                        ..
                    } | user::Event::CallFailed {
                        cause: Cause::NodeRestart,
                        ..
                    }
                )
            })
            .collect();
        assert_eq!(closing.len(), 2, "{events:?}");
        assert!(closing.iter().any(|e| matches!(e,
            user::Event::CallEnded { call_id, hangup_side: HangupSide::System, .. } if call_id == "answered")));
        assert!(closing.iter().any(|e| matches!(e,
            user::Event::CallFailed { call_id, sip_status: 0, .. } if call_id == "ringing")));
        let state = node.directory.user_view(user).await.unwrap().state;
        assert!(state.calls.is_empty(), "{:?}", state.calls);
        assert_eq!(state.presence, Presence::Offline);
    }

    // A leg started after the start is left alone.
    node.step(alice, start("after", Direction::Outbound)).await;
    wait_caught_up(&index, &node.store).await;
    let active = index.active_in(domain);
    assert_eq!(active.len(), 1, "{active:?}");
    assert_eq!(active[0][0].call_id, "after");
    assert_eq!(active[0][0].state, LegState::Trying);
    let state = node.directory.user_view(alice).await.unwrap().state;
    assert!(state.calls.get("after").is_some());
    node.stop().await;
}
