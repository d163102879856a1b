//! A conference's actor on a real SQLite log: its events land in its own
//! stream (`conference-{uuid}`) with the room's domain on the envelope,
//! refusals come back as the domain's error kinds and write nothing, and
//! after a crash (no snapshot) the conference is rebuilt from the log and
//! goes on enforcing its maximum and its end. An operator's kick-all
//! ends a conference once whatever the order its kicks are decided in,
//! and the conference index lists it while it is live.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dialtone_actors::{
    ActorSystem, ConferenceIndex, Control, Directory, DirectoryConfig, Error, Meta, Provisioning,
    ProvisioningConfig,
};
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

/// Kick-all on a conference that ends with its moderators: the kicks go to
/// the actor together, and whichever is decided first, every participant
/// leaves exactly once, the conference ends exactly once, and the kicks
/// decided after the end count as done. The index lists the conference
/// until then, with its participants, and not after.
#[tokio::test]
async fn kick_all_ends_the_conference_once_and_the_index_follows() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(dir.path());
    let index = ConferenceIndex::start(node.store.clone()).await.unwrap();
    let provisioning = Provisioning::new(node.directory.clone(), ProvisioningConfig::default());
    let domain_id = DomainId::for_name(&DomainName::parse("example.com").unwrap());
    let id = ConferenceId(Uuid::from_u128(0xa11));
    let start = Command::Start(Start {
        domain_id,
        room: UserName::parse("board").unwrap(),
        max_participants: 10,
        end_with_moderator: true,
        muted_on_entry: false,
    });
    node.run(id, start).await.unwrap();
    node.run(
        id,
        Command::Join {
            participant: p(1),
            caller: "chair@example.com".into(),
            moderator: true,
        },
    )
    .await
    .unwrap();
    for n in 2..=6 {
        node.run(id, join(n)).await.unwrap();
    }
    assert!(
        index
            .caught_up(node.store.head_position(), Duration::from_secs(5))
            .await
    );
    let live = index.live_in(domain_id, None);
    assert_eq!(live.len(), 1);
    assert_eq!((live[0].id, live[0].participants.len()), (id, 6));
    assert_eq!(
        index
            .live_of_room(domain_id, &UserName::parse("board").unwrap())
            .map(|c| c.id),
        Some(id)
    );

    let current = provisioning.get_conference(id).await.unwrap();
    let meta = Meta {
        request_id: Some("kick-all-1".into()),
        ..Meta::default()
    };
    let after = provisioning
        .control_conference(&current, Control::KickAll, meta)
        .await
        .unwrap();
    assert_eq!(after.conference.status, Status::Ended);
    assert!(after.conference.participants.is_empty());
    let recorded = node.store.read_stream(&id.stream(), 7, 100).await.unwrap();
    let mut left = Vec::new();
    let mut ended = 0;
    for e in &recorded {
        match Event::from_stored(&e.event_type, e.schema_version, &e.data).unwrap() {
            Event::Conference(dialtone_domain::conference::Event::ParticipantLeft {
                participant,
                reason,
                ..
            }) => {
                assert!(
                    matches!(reason, LeaveReason::Kicked | LeaveReason::ConferenceEnded),
                    "{reason:?}"
                );
                left.push(participant);
            }
            Event::Conference(dialtone_domain::conference::Event::ConferenceEnded { .. }) => {
                ended += 1
            }
            other => panic!("{other:?}"),
        }
    }
    left.sort();
    assert_eq!(left, (1..=6).map(p).collect::<Vec<_>>(), "each left once");
    assert_eq!(ended, 1);
    assert_eq!(recorded.last().unwrap().event_type, "ConferenceEnded");

    // Ended: gone from the index; controls are refused naming it.
    assert!(
        index
            .caught_up(node.store.head_position(), Duration::from_secs(5))
            .await
    );
    assert!(index.live_in(domain_id, None).is_empty());
    assert!(index.all().is_empty());
    let current = provisioning.get_conference(id).await.unwrap();
    match provisioning
        .control_conference(&current, Control::Lock, Meta::default())
        .await
    {
        Err(Error::Domain(DomainError::FailedPrecondition(message))) => {
            assert_eq!(message, format!("conference {id} has ended"))
        }
        other => panic!("{other:?}"),
    }
    // An id nobody used is not found, and starts no actor's stream.
    let unknown = ConferenceId(Uuid::from_u128(0xdead));
    match provisioning.get_conference(unknown).await {
        Err(Error::Domain(DomainError::NotFound(what))) => {
            assert_eq!(what, format!("conference {unknown}"))
        }
        other => panic!("{other:?}"),
    }
    node.directory.passivate_all(Duration::from_secs(5)).await;
    node.crash().await;
}
