//! The conformance suite every [`EventStore`] backend runs (feature
//! `conformance`; always on in this crate's own tests).
//!
//! # How a backend uses it
//! Implement [`Backend`]: `create` makes a new, empty storage location (a temp
//! directory, a fresh database schema...) and `open` opens a store on a
//! location; the suite opens a location again after `close` to check
//! durability. Then, in an integration test:
//!
//! ```no_run
//! use std::sync::Arc;
//! use dialtone_eventlog::conformance::Backend;
//! use dialtone_eventlog::sqlite::{SqliteOptions, SqliteStore};
//! use dialtone_eventlog::SharedStore;
//!
//! struct Sqlite;
//!
//! #[async_trait::async_trait]
//! impl Backend for Sqlite {
//!     type Location = tempfile::TempDir;
//!     async fn create(&self) -> Self::Location {
//!         tempfile::tempdir().unwrap()
//!     }
//!     async fn open(&self, dir: &Self::Location) -> SharedStore {
//!         let path = dir.path().join("events.db");
//!         Arc::new(SqliteStore::open(&path, SqliteOptions::default()).unwrap())
//!     }
//! }
//!
//! dialtone_eventlog::conformance_tests!(Sqlite);
//! # fn main() {}
//! ```
//!
//! which expands to one `#[tokio::test]` per case (the calling crate needs
//! `tokio` with the `macros` and `rt-multi-thread` features), or call
//! [`run_all`] from a single test.
//!
//! Cases panic on failure, like any test. Each one works on its own fresh
//! location and assumes nothing else writes to it.

// A test suite: panicking with a message is how it reports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::Barrier;
use uuid::Uuid;

use crate::{
    subscribe_all, AppendOutcome, Error, ExpectedVersion, NewEvent, Position, RecordedEvent,
    SharedStore, Snapshot,
};

/// What the suite needs from a backend.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// A storage location that can be opened several times in a row (it must
    /// outlive the stores opened on it; dropping it may delete the data).
    type Location: Send + Sync;

    /// A new, empty location.
    async fn create(&self) -> Self::Location;

    /// Opens a store on `location`. The suite closes a store before opening
    /// its location again.
    async fn open(&self, location: &Self::Location) -> SharedStore;
}

/// Generous bound on every wait, so that a broken backend fails instead of
/// hanging the test run.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Runs every case, one after the other, each on a fresh location.
pub async fn run_all<B: Backend>(backend: &B) {
    append_read_round_trip(backend).await;
    expected_version(backend).await;
    invalid_appends(backend).await;
    concurrent_writers_one_winner(backend).await;
    idempotent_retry(backend).await;
    read_your_writes(backend).await;
    gap_free_positions_under_concurrency(backend).await;
    paging(backend).await;
    list_streams(backend).await;
    snapshots(backend).await;
    subscribe_catch_up_then_live(backend).await;
    durability_across_reopen(backend).await;
    acknowledged_survive_close_under_load(backend).await;
    closed_after_close(backend).await;
}

/// One `#[tokio::test]` per conformance case, for the backend that `$backend`
/// (an expression, evaluated in each test) builds.
#[macro_export]
macro_rules! conformance_tests {
    ($backend:expr) => {
        $crate::conformance_tests!(@cases $backend;
            append_read_round_trip,
            expected_version,
            invalid_appends,
            concurrent_writers_one_winner,
            idempotent_retry,
            read_your_writes,
            gap_free_positions_under_concurrency,
            paging,
            list_streams,
            snapshots,
            subscribe_catch_up_then_live,
            durability_across_reopen,
            acknowledged_survive_close_under_load,
            closed_after_close,
        );
    };
    (@cases $backend:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let backend = $backend;
                $crate::conformance::$case(&backend).await;
            }
        )*
    };
}

/// A new event with a random id and the given type and data; optional fields
/// empty.
pub fn new_event(event_type: &str, data: &str) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: event_type.to_owned(),
        schema_version: 1,
        occurred_at_us: 1_700_000_000_000_000,
        domain_id: None,
        user_id: None,
        correlation_id: None,
        data: data.to_owned(),
    }
}

fn events(n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| new_event("Tested", &format!(r#"{{"i":{i}}}"#)))
        .collect()
}

async fn fresh<B: Backend>(backend: &B) -> (B::Location, SharedStore) {
    let location = backend.create().await;
    let store = backend.open(&location).await;
    assert_eq!(store.head_position(), 0, "a fresh store must be empty");
    (location, store)
}

/// Reads the whole log with `read_all`, page by page.
async fn read_everything(store: &SharedStore, page: usize) -> Vec<RecordedEvent> {
    let mut out: Vec<RecordedEvent> = Vec::new();
    loop {
        let from = out.last().map_or(1, |e| e.position + 1);
        let batch = store.read_all(from, page).await.expect("read_all");
        assert!(batch.len() <= page, "read_all returned more than max_count");
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

fn assert_wrong_version(
    result: Result<AppendOutcome, Error>,
    stream: &str,
    expected: ExpectedVersion,
    actual: Option<u64>,
) {
    match result {
        Err(Error::WrongExpectedVersion {
            stream: s,
            expected: e,
            actual: a,
        }) => {
            assert_eq!(s, stream);
            assert_eq!(e, expected);
            assert_eq!(a, actual, "actual version reported for {stream}");
        }
        other => panic!("expected WrongExpectedVersion for {stream} {expected:?}, got {other:?}"),
    }
}

/// Every envelope field survives the round trip through `append`,
/// `read_stream` and `read_all`.
pub async fn append_read_round_trip<B: Backend>(backend: &B) {
    let (_location, store) = fresh(backend).await;
    let full = NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "UserCreated".to_owned(),
        schema_version: 7,
        occurred_at_us: 1_712_345_678_901_234,
        domain_id: Some(Uuid::new_v4()),
        user_id: Some(Uuid::new_v4()),
        correlation_id: Some("req-42 / call-id a84b4c76e66710@pc33".to_owned()),
        data: r#"{"name":"Zoë","quote":"\"x\"","n":[1,2,3],"u":"日本"}"#.to_owned(),
    };
    let bare = NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "ContactExpired".to_owned(),
        schema_version: u32::MAX,
        occurred_at_us: -5,
        domain_id: None,
        user_id: None,
        correlation_id: None,
        data: "{}".to_owned(),
    };
    let stream = "user-ü-1";
    let outcome = store
        .append(
            stream,
            ExpectedVersion::NoStream,
            vec![full.clone(), bare.clone()],
        )
        .await
        .expect("append");
    assert_eq!(
        outcome,
        AppendOutcome {
            first_position: 1,
            last_position: 2,
            last_version: 1,
            deduplicated: false
        }
    );
    assert_eq!(store.head_position(), 2);
    assert_eq!(store.stream_version(stream).await.unwrap(), Some(1));

    let read = store.read_stream(stream, 0, 10).await.unwrap();
    assert_eq!(read.len(), 2);
    for (i, (got, sent)) in read.iter().zip([&full, &bare]).enumerate() {
        assert_eq!(got.position, i as u64 + 1);
        assert_eq!(got.version, i as u64);
        assert_eq!(got.stream, stream);
        assert_eq!(got.event_id, sent.event_id);
        assert_eq!(got.event_type, sent.event_type);
        assert_eq!(got.schema_version, sent.schema_version);
        assert_eq!(got.occurred_at_us, sent.occurred_at_us);
        assert_eq!(got.domain_id, sent.domain_id);
        assert_eq!(got.user_id, sent.user_id);
        assert_eq!(got.correlation_id, sent.correlation_id);
        assert_eq!(got.data, sent.data);
        assert!(!got.node.is_empty(), "the node name must be recorded");
    }
    assert_eq!(store.read_all(1, 10).await.unwrap(), read);

    assert!(store.read_stream("nope", 0, 10).await.unwrap().is_empty());
    assert_eq!(store.stream_version("nope").await.unwrap(), None);
    store.close().await.unwrap();
}

/// `ExpectedVersion` semantics, and a rejected append stores nothing.
pub async fn expected_version<B: Backend>(backend: &B) {
    let (_location, store) = fresh(backend).await;
    let s = "order-1";

    assert_wrong_version(
        store
            .append(s, ExpectedVersion::StreamExists, events(1))
            .await,
        s,
        ExpectedVersion::StreamExists,
        None,
    );
    assert_wrong_version(
        store.append(s, ExpectedVersion::Exact(0), events(1)).await,
        s,
        ExpectedVersion::Exact(0),
        None,
    );
    assert_eq!(store.head_position(), 0, "rejected appends store nothing");

    let o = store
        .append(s, ExpectedVersion::NoStream, events(1))
        .await
        .unwrap();
    assert_eq!(o.last_version, 0);
    assert_wrong_version(
        store.append(s, ExpectedVersion::NoStream, events(1)).await,
        s,
        ExpectedVersion::NoStream,
        Some(0),
    );
    let o = store
        .append(s, ExpectedVersion::Exact(0), events(2))
        .await
        .unwrap();
    assert_eq!(o.last_version, 2);
    assert_eq!((o.first_position, o.last_position), (2, 3));
    for stale in [0, 1, 3, 99] {
        assert_wrong_version(
            store
                .append(s, ExpectedVersion::Exact(stale), events(1))
                .await,
            s,
            ExpectedVersion::Exact(stale),
            Some(2),
        );
    }
    let o = store
        .append(s, ExpectedVersion::StreamExists, events(1))
        .await
        .unwrap();
    assert_eq!(o.last_version, 3);
    let o = store
        .append(s, ExpectedVersion::Any, events(1))
        .await
        .unwrap();
    assert_eq!(o.last_version, 4);
    let o = store
        .append("order-2", ExpectedVersion::Any, events(1))
        .await
        .unwrap();
    assert_eq!((o.last_version, o.first_position), (0, 6));

    assert_eq!(store.head_position(), 6);
    let versions: Vec<u64> = store
        .read_stream(s, 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(versions, vec![0, 1, 2, 3, 4]);
    store.close().await.unwrap();
}

/// Requests that can never succeed are `Invalid`, and store nothing.
pub async fn invalid_appends<B: Backend>(backend: &B) {
    let (_location, store) = fresh(backend).await;
    let r = store.append("s", ExpectedVersion::Any, Vec::new()).await;
    assert!(matches!(r, Err(Error::Invalid(_))), "no events: {r:?}");
    let r = store.append("", ExpectedVersion::Any, events(1)).await;
    assert!(matches!(r, Err(Error::Invalid(_))), "empty stream: {r:?}");
    let e = new_event("T", "{}");
    let r = store
        .append("s", ExpectedVersion::Any, vec![e.clone(), e])
        .await;
    assert!(matches!(r, Err(Error::Invalid(_))), "duplicate ids: {r:?}");
    assert_eq!(store.head_position(), 0);
    assert_eq!(store.stream_version("s").await.unwrap(), None);
    // The store still works.
    store
        .append("s", ExpectedVersion::NoStream, events(1))
        .await
        .unwrap();
    store.close().await.unwrap();
}

/// 8 writers race on the same expected version, round after round: exactly
/// one wins each round, the others get `WrongExpectedVersion`.
pub async fn concurrent_writers_one_winner<B: Backend>(backend: &B) {
    const WRITERS: usize = 8;
    const ROUNDS: u64 = 60;
    let (_location, store) = fresh(backend).await;
    let stream = "contested";
    let mut winners = Vec::new();
    for round in 0..ROUNDS {
        let expected = if round == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(round - 1)
        };
        let barrier = Arc::new(Barrier::new(WRITERS));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let store = store.clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    let event = new_event("Won", &format!(r#"{{"writer":{w}}}"#));
                    let id = event.event_id;
                    barrier.wait().await;
                    (id, store.append(stream, expected, vec![event]).await)
                })
            })
            .collect();
        let mut won = Vec::new();
        for task in tasks {
            let (id, result) = task.await.unwrap();
            match result {
                Ok(o) => {
                    assert_eq!(o.last_version, round);
                    assert!(!o.deduplicated);
                    won.push(id);
                }
                Err(e) => assert_wrong_version(Err(e), stream, expected, Some(round)),
            }
        }
        assert_eq!(won.len(), 1, "round {round}: exactly one writer must win");
        winners.push(won[0]);
    }
    let stored = store.read_stream(stream, 0, 1000).await.unwrap();
    let ids: Vec<Uuid> = stored.iter().map(|e| e.event_id).collect();
    assert_eq!(
        ids, winners,
        "the stream holds exactly the winners, in order"
    );
    assert_eq!(store.head_position(), ROUNDS);
    store.close().await.unwrap();
}

/// Invariant 5: a retried append is a no-op returning the first outcome; a
/// partial or reordered overlap is an `IdempotencyConflict`.
pub async fn idempotent_retry<B: Backend>(backend: &B) {
    let (_location, store) = fresh(backend).await;
    let s = "user-idem";
    let batch = events(2);
    let first = store
        .append(s, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    let again = AppendOutcome {
        deduplicated: true,
        ..first
    };
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(1),
        ExpectedVersion::Exact(0),
        ExpectedVersion::Any,
        ExpectedVersion::StreamExists,
    ] {
        let retry = store.append(s, expected, batch.clone()).await.unwrap();
        assert_eq!(retry, again, "retry with {expected:?}");
    }
    store
        .append(s, ExpectedVersion::Exact(1), events(1))
        .await
        .unwrap();
    // Still recognised after more events landed.
    let retry = store
        .append(s, ExpectedVersion::Exact(2), batch.clone())
        .await
        .unwrap();
    assert_eq!(retry, again);
    let head = store.head_position();

    let fresh_event = new_event("T", "{}");
    let partial = vec![batch[1].clone(), fresh_event.clone()];
    let reordered = vec![batch[1].clone(), batch[0].clone()];
    for (what, stream, attempt) in [
        ("partial overlap", s, partial),
        ("reordered", s, reordered),
        ("other stream", "user-other", batch.clone()),
        (
            "new then old",
            s,
            vec![fresh_event.clone(), batch[0].clone()],
        ),
    ] {
        let r = store.append(stream, ExpectedVersion::Any, attempt).await;
        assert!(
            matches!(&r, Err(Error::IdempotencyConflict { stream: st }) if st == stream),
            "{what}: {r:?}"
        );
    }
    assert_eq!(store.head_position(), head, "conflicts store nothing");
    assert_eq!(store.stream_version("user-other").await.unwrap(), None);

    // Two concurrent submissions of the same append: one writes, the other
    // gets the same outcome, deduplicated; stored once.
    let twin = events(3);
    let (a, b) = tokio::join!(
        store.append("user-twin", ExpectedVersion::Any, twin.clone()),
        store.append("user-twin", ExpectedVersion::Any, twin.clone()),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.deduplicated ^ b.deduplicated, "{a:?} {b:?}");
    assert_eq!(
        (a.first_position, a.last_position),
        (b.first_position, b.last_position)
    );
    assert_eq!(
        store.read_stream("user-twin", 0, 10).await.unwrap().len(),
        3
    );
    assert_eq!(
        read_everything(&store, 100).await.len() as u64,
        store.head_position()
    );
    store.close().await.unwrap();
}

/// What an acknowledged append wrote is visible at once to every read.
pub async fn read_your_writes<B: Backend>(backend: &B) {
    let (_location, store) = fresh(backend).await;
    let mut version = None;
    for i in 0..20u64 {
        let expected = version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
        let event = new_event("T", &format!(r#"{{"i":{i}}}"#));
        let o = store
            .append("ryw", expected, vec![event.clone()])
            .await
            .unwrap();
        version = Some(o.last_version);
        assert!(store.head_position() >= o.last_position);
        assert_eq!(store.stream_version("ryw").await.unwrap(), Some(i));
        let tail = store.read_stream("ryw", i, 10).await.unwrap();
        assert_eq!(tail.len(), 1);
        assert_eq!(tail[0].event_id, event.event_id);
        let all = store.read_all(o.first_position, 10).await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].event_id, event.event_id);
        let streams = store.list_streams("ryw", None, 10).await.unwrap();
        assert_eq!(streams.len(), 1);
        assert_eq!(streams[0].last_version, i);
    }
    store.close().await.unwrap();
}

/// Concurrent appends to many streams: global positions are 1..=N with no
/// gap, each append's events are contiguous, each stream's versions are
/// 0..n in position order.
pub async fn gap_free_positions_under_concurrency<B: Backend>(backend: &B) {
    const WRITERS: usize = 8;
    const APPENDS: usize = 150;
    let (_location, store) = fresh(backend).await;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut done = Vec::new();
                let mut versions: HashMap<String, u64> = HashMap::new();
                for i in 0..APPENDS {
                    let stream = format!("w{w}-s{}", i % 5);
                    let expected = versions
                        .get(&stream)
                        .map_or(ExpectedVersion::NoStream, |v| ExpectedVersion::Exact(*v));
                    let batch = events(1 + (i + w) % 3);
                    let ids: Vec<Uuid> = batch.iter().map(|e| e.event_id).collect();
                    let o = store.append(&stream, expected, batch).await.unwrap();
                    versions.insert(stream.clone(), o.last_version);
                    done.push((stream, ids, o));
                }
                done
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.extend(task.await.unwrap());
    }
    let all = read_everything(&store, 97).await;
    let total: usize = acknowledged.iter().map(|(_, ids, _)| ids.len()).sum();
    assert_eq!(all.len(), total);
    assert_eq!(store.head_position(), total as u64);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.position, i as u64 + 1, "positions must be gap-free");
    }
    for (stream, ids, o) in &acknowledged {
        assert_eq!(o.last_position - o.first_position + 1, ids.len() as u64);
        for (k, id) in ids.iter().enumerate() {
            let e = &all[(o.first_position - 1) as usize + k];
            assert_eq!(&e.event_id, id);
            assert_eq!(&e.stream, stream);
            assert_eq!(e.version, o.last_version + 1 + k as u64 - ids.len() as u64);
        }
    }
    let mut next_version: HashMap<&str, u64> = HashMap::new();
    for e in &all {
        let v = next_version.entry(e.stream.as_str()).or_insert(0);
        assert_eq!(e.version, *v, "stream {} out of order", e.stream);
        *v += 1;
    }
    store.close().await.unwrap();
}

/// `read_stream` and `read_all` windows and limits.
pub async fn paging<B: Backend>(backend: &B) {
    let (_location, store) = fresh(backend).await;
    for chunk in [7, 1, 9, 8] {
        store
            .append("paged", ExpectedVersion::Any, events(chunk))
            .await
            .unwrap();
        store
            .append("other", ExpectedVersion::Any, events(1))
            .await
            .unwrap();
    }
    // 25 events in "paged", 4 in "other", 29 in all.
    let full = store.read_stream("paged", 0, 1000).await.unwrap();
    assert_eq!(full.len(), 25);
    for (from, max) in [
        (0, 10),
        (10, 10),
        (20, 10),
        (24, 1),
        (3, 0),
        (25, 5),
        (1000, 5),
    ] {
        let page = store.read_stream("paged", from, max).await.unwrap();
        let want: Vec<_> = full.iter().skip(from as usize).take(max).cloned().collect();
        assert_eq!(page, want, "read_stream from {from} max {max}");
    }
    let all = read_everything(&store, 1000).await;
    assert_eq!(all.len(), 29);
    for page_size in [1, 4, 28, 29, 30] {
        assert_eq!(
            read_everything(&store, page_size).await,
            all,
            "page {page_size}"
        );
    }
    assert_eq!(
        store.read_all(0, 3).await.unwrap(),
        store.read_all(1, 3).await.unwrap()
    );
    assert_eq!(store.read_all(27, 10).await.unwrap(), all[26..].to_vec());
    assert!(store.read_all(30, 10).await.unwrap().is_empty());
    assert!(store.read_all(u64::MAX, 10).await.unwrap().is_empty());
    assert!(store.read_all(1, 0).await.unwrap().is_empty());
    assert!(store
        .read_stream("paged", u64::MAX, 10)
        .await
        .unwrap()
        .is_empty());
    store.close().await.unwrap();
}

/// `list_streams` with prefix, `after` and `limit`.
pub async fn list_streams<B: Backend>(backend: &B) {
    let (_location, store) = fresh(backend).await;
    for (stream, n) in [
        ("user-b", 2),
        ("domain-x", 1),
        ("user-a", 1),
        ("userx", 1),
        ("user-c", 3),
        ("user", 1),
    ] {
        store
            .append(stream, ExpectedVersion::Any, events(n))
            .await
            .unwrap();
    }
    let names = |v: Vec<crate::StreamInfo>| -> Vec<(String, u64)> {
        v.into_iter().map(|s| (s.stream, s.last_version)).collect()
    };
    let owned = |v: &[(&str, u64)]| -> Vec<(String, u64)> {
        v.iter().map(|(s, n)| ((*s).to_owned(), *n)).collect()
    };
    assert_eq!(
        names(store.list_streams("user-", None, 10).await.unwrap()),
        owned(&[("user-a", 0), ("user-b", 1), ("user-c", 2)])
    );
    assert_eq!(
        names(
            store
                .list_streams("user-", Some("user-a"), 10)
                .await
                .unwrap()
        ),
        owned(&[("user-b", 1), ("user-c", 2)])
    );
    assert_eq!(
        names(store.list_streams("user-", None, 2).await.unwrap()),
        owned(&[("user-a", 0), ("user-b", 1)])
    );
    assert_eq!(
        names(
            store
                .list_streams("user-", Some("user-b"), 1)
                .await
                .unwrap()
        ),
        owned(&[("user-c", 2)])
    );
    // `after` before the prefix range, and after its end.
    assert_eq!(
        names(store.list_streams("user-", Some("a"), 10).await.unwrap()).len(),
        3
    );
    assert!(store
        .list_streams("user-", Some("user-c"), 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .list_streams("user-", Some("zzz"), 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .list_streams("nope", None, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .list_streams("user-", None, 0)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        names(store.list_streams("", None, 100).await.unwrap()),
        owned(&[
            ("domain-x", 0),
            ("user", 0),
            ("user-a", 0),
            ("user-b", 1),
            ("user-c", 2),
            ("userx", 0)
        ])
    );
    store.close().await.unwrap();
}

/// Snapshots: none, save, load, replace; per stream.
pub async fn snapshots<B: Backend>(backend: &B) {
    let (_location, store) = fresh(backend).await;
    assert_eq!(store.load_snapshot("user-1").await.unwrap(), None);
    let first = Snapshot {
        stream: "user-1".to_owned(),
        version: 3,
        schema_version: 1,
        data: r#"{"contacts":[]}"#.to_owned(),
    };
    store.save_snapshot(first.clone()).await.unwrap();
    assert_eq!(store.load_snapshot("user-1").await.unwrap(), Some(first));
    let second = Snapshot {
        stream: "user-1".to_owned(),
        version: 70,
        schema_version: 2,
        data: r#"{"contacts":["sip:a@b"]}"#.to_owned(),
    };
    store.save_snapshot(second.clone()).await.unwrap();
    assert_eq!(
        store.load_snapshot("user-1").await.unwrap(),
        Some(second.clone())
    );
    assert_eq!(store.load_snapshot("user-2").await.unwrap(), None);
    let other = Snapshot {
        stream: "user-2".to_owned(),
        version: 0,
        schema_version: 1,
        data: "{}".to_owned(),
    };
    store.save_snapshot(other.clone()).await.unwrap();
    assert_eq!(store.load_snapshot("user-1").await.unwrap(), Some(second));
    assert_eq!(store.load_snapshot("user-2").await.unwrap(), Some(other));
    // Snapshots are not events.
    assert_eq!(store.head_position(), 0);

    // `load_stream`: the snapshot and the events after it, in one call.
    let versions = |events: &[RecordedEvent]| events.iter().map(|e| e.version).collect::<Vec<_>>();
    let (none, empty) = store.load_stream("user-3", 10).await.unwrap();
    assert_eq!((none, empty.len()), (None, 0), "unknown stream");
    store
        .append("user-3", ExpectedVersion::NoStream, events(6))
        .await
        .unwrap();
    let (none, all) = store.load_stream("user-3", 10).await.unwrap();
    assert_eq!(none, None);
    assert_eq!(
        versions(&all),
        [0, 1, 2, 3, 4, 5],
        "no snapshot: from version 0"
    );
    let (_, first) = store.load_stream("user-3", 4).await.unwrap();
    assert_eq!(versions(&first), [0, 1, 2, 3], "at most max_count");
    let at_3 = Snapshot {
        stream: "user-3".to_owned(),
        version: 3,
        schema_version: 1,
        data: "{}".to_owned(),
    };
    store.save_snapshot(at_3.clone()).await.unwrap();
    let (snapshot, after) = store.load_stream("user-3", 10).await.unwrap();
    assert_eq!(snapshot, Some(at_3));
    assert_eq!(versions(&after), [4, 5], "the events after the snapshot");
    assert!(after.iter().all(|e| e.stream == "user-3"));
    let (snapshot, none_after) = store.load_stream("user-1", 10).await.unwrap();
    assert_eq!(snapshot.map(|s| s.version), Some(70));
    assert!(
        none_after.is_empty(),
        "a snapshot ahead of the (empty) stream"
    );
    store.close().await.unwrap();
}

/// Spawns a writer appending `total` events to its own streams in appends of
/// 1 to 8 events; returns the acknowledged (position, event id) pairs.
fn spawn_writer(
    store: SharedStore,
    w: usize,
    total: usize,
) -> tokio::task::JoinHandle<Vec<(Position, Uuid)>> {
    tokio::spawn(async move {
        let mut acked = Vec::with_capacity(total);
        let mut versions: HashMap<usize, u64> = HashMap::new();
        let mut i = 0;
        while acked.len() < total {
            let n = (1 + (i + w) % 8).min(total - acked.len());
            let s = i % 4;
            let stream = format!("live-{w}-{s}");
            let expected = versions
                .get(&s)
                .map_or(ExpectedVersion::NoStream, |v| ExpectedVersion::Exact(*v));
            let batch = events(n);
            let ids: Vec<Uuid> = batch.iter().map(|e| e.event_id).collect();
            let o = store.append(&stream, expected, batch).await.unwrap();
            versions.insert(s, o.last_version);
            acked.extend((o.first_position..=o.last_position).zip(ids));
            i += 1;
        }
        acked
    })
}

/// Reads `count` events from a subscription, checking the positions are
/// consecutive from `from`.
fn spawn_subscriber(
    store: SharedStore,
    from: Position,
    count: usize,
) -> tokio::task::JoinHandle<Vec<RecordedEvent>> {
    tokio::spawn(async move {
        let mut sub = Box::pin(subscribe_all(store, from));
        let mut got: Vec<RecordedEvent> = Vec::with_capacity(count);
        while got.len() < count {
            let event = tokio::time::timeout(TIMEOUT, sub.next())
                .await
                .expect("subscription stalled")
                .expect("subscription ended early")
                .expect("subscription failed");
            let want = from.max(1) + got.len() as u64;
            assert_eq!(event.position, want, "gap or duplicate in the subscription");
            got.push(event);
        }
        got
    })
}

/// Writer 3's events only (see [`spawn_writer`]'s stream names).
fn writer_3(event: &RecordedEvent) -> bool {
    event.stream.starts_with("live-3-")
}

/// A `subscribe_all_where(writer_3)` from `from` until it has `count`
/// events, each after the one before.
fn spawn_filtered_subscriber(
    store: SharedStore,
    from: Position,
    count: usize,
) -> tokio::task::JoinHandle<Vec<RecordedEvent>> {
    tokio::spawn(async move {
        let mut sub = Box::pin(crate::subscribe_all_where(store, from, writer_3));
        let mut got: Vec<RecordedEvent> = Vec::with_capacity(count);
        while got.len() < count {
            let event = tokio::time::timeout(TIMEOUT, sub.next())
                .await
                .expect("filtered subscription stalled")
                .expect("filtered subscription ended early")
                .expect("filtered subscription failed");
            assert!(writer_3(&event), "an event the filter refuses");
            if let Some(before) = got.last() {
                assert!(
                    event.position > before.position,
                    "out of order or duplicate"
                );
            }
            got.push(event);
        }
        got
    })
}

/// `subscribe_all` catches up, then follows live appends, with no gap and no
/// duplicate, while 8 writers append 2,000 events each (and so does
/// `subscribe_all_where`, for one writer's events); one subscriber starts
/// from the beginning once the writers are well under way, another from a
/// position in the middle.
pub async fn subscribe_catch_up_then_live<B: Backend>(backend: &B) {
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 2_000;
    const TOTAL: usize = WRITERS * PER_WRITER;
    let (_location, store) = fresh(backend).await;

    // Subscribed before anything exists: must wait, then see everything.
    let early = spawn_subscriber(store.clone(), 0, TOTAL);
    // And one that wants one writer's events only.
    let early_filtered = spawn_filtered_subscriber(store.clone(), 0, PER_WRITER);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| spawn_writer(store.clone(), w, PER_WRITER))
        .collect();

    let mut head = store.watch_head();
    tokio::time::timeout(TIMEOUT, head.wait_for(|h| *h >= (TOTAL / 4) as u64))
        .await
        .expect("writers too slow")
        .expect("store closed");
    let from_start = spawn_subscriber(store.clone(), 1, TOTAL);
    let middle = store.head_position() - 100;
    let from_middle = spawn_subscriber(store.clone(), middle, TOTAL - middle as usize + 1);

    let mut acknowledged = BTreeMap::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }
    assert_eq!(acknowledged.len(), TOTAL);
    let stored = read_everything(&store, 1000).await;
    for sub in [early, from_start] {
        let got = sub.await.unwrap();
        assert_eq!(got, stored, "subscription differs from the log");
    }
    let got = from_middle.await.unwrap();
    assert_eq!(got, stored[(middle - 1) as usize..].to_vec());
    let writer_3s: Vec<RecordedEvent> = stored.iter().filter(|e| writer_3(e)).cloned().collect();
    assert_eq!(writer_3s.len(), PER_WRITER);
    assert_eq!(early_filtered.await.unwrap(), writer_3s, "live, filtered");
    let caught_up = spawn_filtered_subscriber(store.clone(), 1, PER_WRITER);
    assert_eq!(caught_up.await.unwrap(), writer_3s, "catch-up, filtered");
    for event in &stored {
        assert_eq!(acknowledged.get(&event.position), Some(&event.event_id));
    }
    store.close().await.unwrap();
}

/// Everything acknowledged survives close and reopen; versions and positions
/// continue where they were; retries are still recognised.
pub async fn durability_across_reopen<B: Backend>(backend: &B) {
    let location = backend.create().await;
    let store = backend.open(&location).await;
    let mut outcomes = Vec::new();
    for i in 0..12u64 {
        let stream = format!("dur-{}", i % 3);
        let batch = events(1 + (i % 4) as usize);
        let o = store
            .append(&stream, ExpectedVersion::Any, batch.clone())
            .await
            .unwrap();
        outcomes.push((stream, batch, o));
    }
    let snapshot = Snapshot {
        stream: "dur-0".to_owned(),
        version: 2,
        schema_version: 1,
        data: r#"{"s":1}"#.to_owned(),
    };
    store.save_snapshot(snapshot.clone()).await.unwrap();
    let head = store.head_position();
    let before = read_everything(&store, 1000).await;
    let streams_before = store.list_streams("", None, 100).await.unwrap();
    store.close().await.unwrap();
    drop(store);

    for round in 0..2 {
        let store = backend.open(&location).await;
        assert_eq!(store.head_position(), head, "round {round}");
        assert_eq!(read_everything(&store, 1000).await, before);
        assert_eq!(
            store.list_streams("", None, 100).await.unwrap(),
            streams_before
        );
        assert_eq!(
            store.load_snapshot("dur-0").await.unwrap(),
            Some(snapshot.clone())
        );
        let (stream, batch, first) = &outcomes[1];
        let retry = store
            .append(stream, ExpectedVersion::Any, batch.clone())
            .await
            .unwrap();
        assert_eq!(
            retry,
            AppendOutcome {
                deduplicated: true,
                ..*first
            }
        );
        store.close().await.unwrap();
    }

    let store = backend.open(&location).await;
    let last = store.stream_version("dur-1").await.unwrap().unwrap();
    assert_wrong_version(
        store
            .append("dur-1", ExpectedVersion::NoStream, events(1))
            .await,
        "dur-1",
        ExpectedVersion::NoStream,
        Some(last),
    );
    let o = store
        .append("dur-1", ExpectedVersion::Exact(last), events(2))
        .await
        .unwrap();
    assert_eq!(o.first_position, head + 1, "positions continue");
    assert_eq!(o.last_version, last + 2, "versions continue");
    let o = store
        .append("dur-new", ExpectedVersion::NoStream, events(1))
        .await
        .unwrap();
    assert_eq!((o.first_position, o.last_version), (head + 3, 0));
    store.close().await.unwrap();
    drop(store);
    let store = backend.open(&location).await;
    assert_eq!(store.head_position(), head + 3);
    assert_eq!(read_everything(&store, 1000).await.len() as u64, head + 3);
    store.close().await.unwrap();
}

/// Closing while 8 writers append: each append either succeeds or fails with
/// `Closed`, and every acknowledged event is there after reopening.
pub async fn acknowledged_survive_close_under_load<B: Backend>(backend: &B) {
    let location = backend.create().await;
    let store = backend.open(&location).await;
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0u64.. {
                    let batch = events(1 + (i % 3) as usize);
                    let ids: Vec<Uuid> = batch.iter().map(|e| e.event_id).collect();
                    match store
                        .append(&format!("close-{w}"), ExpectedVersion::Any, batch)
                        .await
                    {
                        Ok(o) => acked.extend((o.first_position..=o.last_position).zip(ids)),
                        Err(Error::Closed) => break,
                        Err(e) => panic!("unexpected error while closing: {e}"),
                    }
                }
                acked
            })
        })
        .collect();
    let mut head = store.watch_head();
    tokio::time::timeout(TIMEOUT, head.wait_for(|h| *h >= 300))
        .await
        .expect("writers too slow")
        .expect("store closed");
    store.close().await.unwrap();
    let mut acked = Vec::new();
    for writer in writers {
        acked.extend(
            tokio::time::timeout(TIMEOUT, writer)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    drop(store);

    let store = backend.open(&location).await;
    let stored: HashMap<Position, Uuid> = read_everything(&store, 1000)
        .await
        .into_iter()
        .map(|e| (e.position, e.event_id))
        .collect();
    for (position, id) in &acked {
        assert_eq!(stored.get(position), Some(id), "acknowledged event lost");
    }
    let distinct: HashSet<Position> = acked.iter().map(|(p, _)| *p).collect();
    assert_eq!(distinct.len(), acked.len());
    store.close().await.unwrap();
}

/// After `close`, every call fails with `Closed`, subscriptions end with
/// `Closed`, and closing again is harmless.
pub async fn closed_after_close<B: Backend>(backend: &B) {
    let (_location, store) = fresh(backend).await;
    store
        .append("c", ExpectedVersion::NoStream, events(1))
        .await
        .unwrap();
    let mut live = Box::pin(subscribe_all(store.clone(), 1));
    let first = live.next().await.unwrap().unwrap();
    assert_eq!(first.position, 1);
    let waiting = tokio::spawn(async move {
        let end = tokio::time::timeout(TIMEOUT, live.next()).await.unwrap();
        let after = live.next().await;
        (end, after.is_none())
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut head = store.watch_head();
    store.close().await.unwrap();

    let (end, finished) = waiting.await.unwrap();
    assert!(
        matches!(end, Some(Err(Error::Closed))),
        "live subscription: {end:?}"
    );
    assert!(finished, "the subscription ends after Closed");
    let watch_ends = async { while head.changed().await.is_ok() {} };
    tokio::time::timeout(TIMEOUT, watch_ends)
        .await
        .expect("head watch must end");

    fn closed<T: std::fmt::Debug>(what: &str, r: Result<T, Error>) {
        assert!(matches!(r, Err(Error::Closed)), "{what} after close: {r:?}");
    }
    closed(
        "append",
        store.append("c", ExpectedVersion::Any, events(1)).await,
    );
    closed("read_stream", store.read_stream("c", 0, 10).await);
    closed("read_all", store.read_all(1, 10).await);
    closed("read_all beyond head", store.read_all(100, 10).await);
    closed("stream_version", store.stream_version("c").await);
    closed("list_streams", store.list_streams("", None, 10).await);
    closed(
        "save_snapshot",
        store
            .save_snapshot(Snapshot {
                stream: "c".to_owned(),
                version: 0,
                schema_version: 1,
                data: "{}".to_owned(),
            })
            .await,
    );
    closed("load_snapshot", store.load_snapshot("c").await);
    let mut late = Box::pin(subscribe_all(store.clone(), 1));
    let r = late.next().await;
    assert!(
        matches!(r, Some(Err(Error::Closed))),
        "new subscription: {r:?}"
    );
    assert!(late.next().await.is_none());
    store.close().await.unwrap();
}
