//! A conference's actor on a real SQLite log: its events land in its own
//! stream (`conference-{uuid}`) with the room's domain on the envelope,
//! refusals come back as the domain's error kinds and write nothing, and
//! after a crash (no snapshot) the conference is rebuilt from the log and
//! goes on enforcing its maximum and its end.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dialtone_actors::{ActorSystem, Directory, DirectoryConfig, Error, Meta};
use dialtone_domain::conference::{Command, EndReason, LeaveReason, ParticipantId, Start, Status};
use dialtone_domain::{ConferenceId, DomainId, DomainName, Error as DomainError, Event, UserName};
use dialtone_eventlog::sqlite::{SqliteOptions, SqliteStore};
use dialtone_eventlog::SharedStore;
use uuid::Uuid;

struct Node {
    store: SharedStore,
    system: ActorSystem,
    directory: Directory,
}

impl Node {
    fn open(path: &Path) -> Node {
        let store: SharedStore = Arc::new(
            SqliteStore::open(&path.join("events.db"), SqliteOptions::new("test-node")).unwrap(),
        );
        let system = ActorSystem::start(2).unwrap();
        let directory = Directory::new(
            store.clone(),
            system.arbiters().to_vec(),
            DirectoryConfig::default(),
        )
        .unwrap();
        Node {
            store,
            system,
            directory,
        }
    }

    /// A stop without snapshots (as after `kill -9`): only the log is left.
    async fn crash(self) {
        let system = self.system;
        tokio::task::spawn_blocking(move || system.shutdown())
            .await
            .unwrap();
        self.store.close().await.unwrap();
    }

    async fn run(&self, id: ConferenceId, command: Command) -> Result<Option<u64>, Error> {
        self.directory
            .execute_conference(id, command, Meta::default(), |r| r.version)
            .await
    }
}

fn p(n: u128) -> ParticipantId {
    ParticipantId(Uuid::from_u128(n))
}

fn join(n: u128) -> Command {
    Command::Join {
        participant: p(n),
        caller: format!("user{n}@example.com"),
        moderator: false,
    }
}

#[tokio::test]
async fn a_conference_lives_in_its_own_stream_and_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let domain_id = DomainId::for_name(&DomainName::parse("example.com").unwrap());
    let id = ConferenceId(Uuid::from_u128(0xc0f));
    let node = Node::open(dir.path());
    let start = Command::Start(Start {
        domain_id,
        room: UserName::parse("standup").unwrap(),
        max_participants: 2,
        end_with_moderator: false,
        muted_on_entry: false,
    });
    assert_eq!(node.run(id, start).await.unwrap(), Some(0));
    assert_eq!(node.run(id, join(1)).await.unwrap(), Some(1));
    assert_eq!(node.run(id, join(2)).await.unwrap(), Some(2));
    // Full: refused as a failed precondition, nothing written.
    match node.run(id, join(3)).await {
        Err(Error::Domain(DomainError::FailedPrecondition(message))) => {
            assert_eq!(message, "the conference is full (2 participants)")
        }
        other => panic!("{other:?}"),
    }
    let turned_away = Command::TurnAway {
        participant: p(3),
        caller: "carol@example.com".into(),
        reason: LeaveReason::RoomFull,
    };
    assert_eq!(node.run(id, turned_away).await.unwrap(), Some(3));
    let recorded = node.store.read_stream(&id.stream(), 0, 100).await.unwrap();
    assert_eq!(
        recorded
            .iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        [
            "ConferenceStarted",
            "ParticipantJoined",
            "ParticipantJoined",
            "ParticipantLeft"
        ]
    );
    for e in &recorded {
        assert_eq!(e.stream, format!("conference-{}", id.0));
        assert_eq!((e.domain_id, e.user_id), (Some(domain_id.0), None));
        assert!(matches!(
            Event::from_stored(&e.event_type, e.schema_version, &e.data).unwrap(),
            Event::Conference(_)
        ));
    }
    // Nothing of it reached the domain's stream.
    assert!(node
        .store
        .read_stream(&domain_id.stream(), 0, 10)
        .await
        .unwrap()
        .is_empty());
    node.crash().await;

    // Rebuilt from the log alone: still full, and participants leave once.
    let node = Node::open(dir.path());
    let participants = node
        .directory
        .query_conference(id, |r| r.state.participants.len())
        .await
        .unwrap();
    assert_eq!(participants, 2);
    assert!(matches!(
        node.run(id, join(4)).await,
        Err(Error::Domain(DomainError::FailedPrecondition(_)))
    ));
    let leave = |n| Command::Leave {
        participant: p(n),
        reason: LeaveReason::HungUp,
    };
    assert_eq!(node.run(id, leave(1)).await.unwrap(), Some(4));
    // Again: a no-op (the version does not move).
    assert_eq!(node.run(id, leave(1)).await.unwrap(), Some(4));
    // The last one out ends the conference.
    assert_eq!(node.run(id, leave(2)).await.unwrap(), Some(6));
    let (status, version) = node
        .directory
        .query_conference(id, |r| (r.state.status, r.version))
        .await
        .unwrap();
    assert_eq!((status, version), (Status::Ended, Some(6)));
    let last = node.store.read_stream(&id.stream(), 6, 1).await.unwrap();
    assert_eq!(last[0].event_type, "ConferenceEnded");
    assert!(last[0].data.contains("\"empty\""), "{}", last[0].data);
    // An ended conference accepts nothing.
    assert!(matches!(
        node.run(
            id,
            Command::End {
                reason: EndReason::Requested
            }
        )
        .await,
        Err(Error::Domain(DomainError::FailedPrecondition(_)))
    ));
    node.directory.passivate_all(Duration::from_secs(5)).await;
    node.crash().await;
}
