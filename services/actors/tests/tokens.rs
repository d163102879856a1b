//! The token table's actor on a real SQLite log: every create and revoke is
//! durable and published for authentication before the reply, a restart
//! rebuilds the table from the log (with or without a snapshot), concurrent
//! creates all land, and a foreign append to the `tokens` stream is caught
//! by the expected version.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dialtone_actors::{
    ActorSystem, Directory, DirectoryConfig, Error, Meta, NewToken, Provisioning,
    ProvisioningConfig, TokenAccess,
};
use dialtone_domain::token::{self, Scope, STREAM};
use dialtone_domain::{DomainId, DomainName, Event};
use dialtone_eventlog::sqlite::{SqliteOptions, SqliteStore};
use dialtone_eventlog::{ExpectedVersion, NewEvent, SharedStore};
use uuid::Uuid;

struct Node {
    store: SharedStore,
    system: ActorSystem,
    directory: Directory,
    provisioning: Provisioning,
}

impl Node {
    /// Opens the log and loads the token table, as the node does before it
    /// serves the API.
    async fn open(path: &Path) -> Node {
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
        let provisioning = Provisioning::new(directory.clone(), ProvisioningConfig::default());
        provisioning.load_tokens().await.unwrap();
        Node {
            store,
            system,
            directory,
            provisioning,
        }
    }

    /// A clean stop: actors save their snapshots.
    async fn stop(self) {
        self.directory.passivate_all(Duration::from_secs(5)).await;
        self.crash().await;
    }

    /// A stop without snapshots (as after `kill -9`): only the log is left.
    async fn crash(self) {
        let system = self.system;
        tokio::task::spawn_blocking(move || system.shutdown())
            .await
            .unwrap();
        self.store.close().await.unwrap();
    }

    async fn create(&self, scope: Scope) -> Result<Uuid, Error> {
        let id = Uuid::new_v4();
        let info = self
            .provisioning
            .create_token(new_token(id, scope), Meta::default())
            .await?;
        assert_eq!(info.id, id);
        Ok(id)
    }

    /// The events of the `tokens` stream, in order.
    async fn events(&self) -> Vec<token::Event> {
        let recorded = self.store.read_stream(STREAM, 0, 10_000).await.unwrap();
        recorded
            .iter()
            .enumerate()
            .map(|(i, e)| {
                assert_eq!(e.version, i as u64);
                assert_eq!((e.domain_id, e.user_id), (None, None));
                match Event::from_stored(&e.event_type, e.schema_version, &e.data).unwrap() {
                    Event::Token(event) => event,
                    other => panic!("{other:?} in the tokens stream"),
                }
            })
            .collect()
    }
}

/// A distinct, well-formed hash per id (the actors never see a secret).
fn hash_of(id: Uuid) -> String {
    format!("{:032x}{:032x}", id.as_u128(), id.as_u128().rotate_left(7))
}

fn new_token(id: Uuid, scope: Scope) -> NewToken {
    NewToken {
        token_id: id,
        scope,
        secret_sha256: hash_of(id),
        description: "robot".into(),
    }
}

fn domain(name: &str) -> Scope {
    Scope::Domain(DomainName::parse(name).unwrap())
}

#[tokio::test]
async fn create_and_revoke_are_durable_and_published_before_the_reply() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(dir.path()).await;
    let facts = node.directory.facts();

    let id = node.create(domain("a.test")).await.unwrap();
    // Right after the reply: in the log and in the published table.
    assert!(matches!(
        node.events().await.as_slice(),
        [token::Event::TokenCreated { token_id, .. }] if *token_id == id
    ));
    let published = facts.token(id).expect("published before the reply");
    assert_eq!(
        published.access,
        TokenAccess::Domain(DomainId::for_name(&DomainName::parse("a.test").unwrap()))
    );
    assert_eq!(hex(&published.secret_sha256), hash_of(id));

    let admin = node.create(Scope::Admin).await.unwrap();
    assert_eq!(facts.token(admin).unwrap().access, TokenAccess::Admin);

    let revoked = node
        .provisioning
        .revoke_token(id, Meta::default())
        .await
        .unwrap();
    assert!(revoked.revoked_at.is_some());
    assert_eq!(facts.token(id), None, "still accepted after the reply");
    assert!(facts.token(admin).is_some());
    assert_eq!(node.events().await.len(), 3);
    // Revoking again writes nothing and answers the same.
    let again = node
        .provisioning
        .revoke_token(id, Meta::default())
        .await
        .unwrap();
    assert_eq!(again, revoked);
    assert_eq!(node.events().await.len(), 3);
    node.stop().await;
}

#[tokio::test]
async fn revoking_an_unknown_token_is_not_found_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(dir.path()).await;
    let err = node
        .provisioning
        .revoke_token(Uuid::new_v4(), Meta::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Domain(dialtone_domain::Error::NotFound(_))),
        "{err:?}"
    );
    assert!(node.events().await.is_empty());
    // Nor does a create the domain model refuses.
    let mut bad = new_token(Uuid::new_v4(), Scope::Admin);
    bad.secret_sha256 = "not a hash".into();
    let err = node
        .provisioning
        .create_token(bad, Meta::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Domain(dialtone_domain::Error::Invalid { .. })),
        "{err:?}"
    );
    assert!(node.events().await.is_empty());
    assert!(node.provisioning.list_tokens().await.unwrap().is_empty());
    node.stop().await;
}

#[tokio::test]
async fn a_restart_rebuilds_the_table_from_the_log_with_or_without_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(dir.path()).await;
    let kept = node.create(domain("a.test")).await.unwrap();
    let gone = node.create(Scope::Admin).await.unwrap();
    node.provisioning
        .revoke_token(gone, Meta::default())
        .await
        .unwrap();
    let before = node.provisioning.list_tokens().await.unwrap();
    // No snapshot: rebuilt from the events alone.
    node.crash().await;

    let node = Node::open(dir.path()).await;
    let facts = node.directory.facts();
    assert!(facts.token(kept).is_some());
    assert_eq!(facts.token(gone), None);
    assert_eq!(node.provisioning.list_tokens().await.unwrap(), before);
    let later = node.create(domain("b.test")).await.unwrap();
    // A clean stop saves a snapshot; the next start loads from it.
    node.stop().await;
    let node = Node::open(dir.path()).await;
    let snapshot = node.store.load_snapshot(STREAM).await.unwrap();
    assert_eq!(snapshot.map(|s| s.version), Some(3));
    let facts = node.directory.facts();
    assert!(facts.token(kept).is_some() && facts.token(later).is_some());
    assert_eq!(facts.token(gone), None);
    let listed = node.provisioning.list_tokens().await.unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[..2], before[..]);
    // The actor goes on from the snapshot's version.
    node.provisioning
        .revoke_token(kept, Meta::default())
        .await
        .unwrap();
    assert_eq!(node.events().await.len(), 5);
    node.stop().await;
}

#[tokio::test]
async fn concurrent_creates_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(dir.path()).await;
    let creates = (0..64).map(|i| {
        node.create(if i % 2 == 0 {
            Scope::Admin
        } else {
            domain("a.test")
        })
    });
    let ids: Vec<Uuid> = futures::future::join_all(creates)
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    let facts = node.directory.facts();
    assert!(ids.iter().all(|id| facts.token(*id).is_some()));
    // One event each, at consecutive versions (checked by `events`).
    assert_eq!(node.events().await.len(), ids.len());
    assert_eq!(node.provisioning.list_tokens().await.unwrap().len(), 64);
    node.stop().await;
}

#[tokio::test]
async fn a_foreign_append_to_the_stream_is_refused_by_the_expected_version() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(dir.path()).await;
    let first = node.create(Scope::Admin).await.unwrap();
    // Another writer (say a second node on the same log) appends behind
    // the actor's back.
    let foreign = Uuid::new_v4();
    let event = Event::Token(token::Event::TokenCreated {
        token_id: foreign,
        scope: Scope::Admin,
        secret_sha256: hash_of(foreign),
        description: String::new(),
        created_at: 1,
    });
    node.store
        .append(
            STREAM,
            ExpectedVersion::Exact(0),
            vec![NewEvent {
                event_id: Uuid::new_v4(),
                event_type: event.event_type().to_owned(),
                schema_version: event.schema_version(),
                occurred_at_us: 1,
                domain_id: None,
                user_id: None,
                correlation_id: None,
                data: event.to_data().unwrap(),
            }],
        )
        .await
        .unwrap();
    // The actor's next append expects version 0: refused, nothing written
    // twice, and the actor reloads.
    let err = node.create(Scope::Admin).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Store(dialtone_eventlog::Error::WrongExpectedVersion { .. })
        ),
        "{err:?}"
    );
    assert_eq!(node.events().await.len(), 2);
    // The next command meets a fresh actor that read the log again.
    let third = node.create(Scope::Admin).await.unwrap();
    let listed: Vec<Uuid> = node
        .provisioning
        .list_tokens()
        .await
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    assert!([first, foreign, third].iter().all(|id| listed.contains(id)));
    assert_eq!(listed.len(), 3);
    let facts = node.directory.facts();
    assert!(facts.token(foreign).is_some() && facts.token(third).is_some());
    node.stop().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
