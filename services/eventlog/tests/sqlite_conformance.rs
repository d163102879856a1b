//! The conformance suite against [`SqliteStore`], plus what only SQLite can
//! show: a full disk, and dropping the store without closing it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dialtone_eventlog::conformance::{new_event, Backend};
use dialtone_eventlog::sqlite::{SqliteOptions, SqliteStore};
use dialtone_eventlog::{Error, EventStore, ExpectedVersion, SharedStore};
use tempfile::TempDir;

/// SQLite in a temp dir (on the real disk: fsync is part of what is tested).
struct Sqlite {
    options: SqliteOptions,
}

impl Sqlite {
    fn new(options: SqliteOptions) -> Self {
        Self { options }
    }
}

fn db_path(dir: &TempDir) -> PathBuf {
    dir.path().join("events.db")
}

#[async_trait]
impl Backend for Sqlite {
    type Location = TempDir;

    async fn create(&self) -> TempDir {
        tempfile::tempdir().expect("temp dir")
    }

    async fn open(&self, dir: &TempDir) -> SharedStore {
        Arc::new(SqliteStore::open(&db_path(dir), self.options.clone()).expect("open"))
    }
}

/// Default options: big batches, gather window on.
mod default_options {
    use super::*;
    dialtone_eventlog::conformance_tests!(Sqlite::new(SqliteOptions::new("node-a")));
}

/// Tiny batches and no gather window: many commits with several requests
/// each, one reader, so that batch boundaries fall everywhere; the stream
/// index is written every few events, so reads mix index and tail.
mod tiny_batches {
    use super::*;
    dialtone_eventlog::conformance_tests!(Sqlite::new(SqliteOptions {
        node: "node-b".to_owned(),
        max_batch_events: 3,
        max_batch_appends: 2,
        readers: 1,
        max_gather_delay: Duration::ZERO,
        index_chunk_events: 2,
    }));
}

/// A full disk (simulated with `PRAGMA max_page_count`) fails the batch with
/// `Storage`, loses nothing acknowledged, and the writer carries on once
/// space is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_fails_the_batch_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&db_path(&dir), SqliteOptions::new("n")).unwrap());
    for _ in 0..10 {
        store
            .append("before", ExpectedVersion::Any, vec![new_event("T", "{}")])
            .await
            .unwrap();
    }
    let head = store.head_position();
    store.set_max_page_count(0).await.unwrap();

    let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(300_000));
    let attempts: Vec<_> = (0..6)
        .map(|i| {
            let store = store.clone();
            let big = big.clone();
            tokio::spawn(async move {
                store
                    .append(
                        &format!("big-{i}"),
                        ExpectedVersion::NoStream,
                        vec![new_event("Big", &big)],
                    )
                    .await
            })
        })
        .collect();
    for attempt in attempts {
        match attempt.await.unwrap() {
            Err(Error::Storage(message)) => {
                assert!(message.contains("full"), "message: {message}")
            }
            other => panic!("expected a storage error, got {other:?}"),
        }
    }
    assert!(store.stats().failed_batches >= 1);
    assert_eq!(store.head_position(), head);
    assert_eq!(store.stream_version("big-0").await.unwrap(), None);
    assert_eq!(store.read_all(1, 100).await.unwrap().len() as u64, head);

    // Space is back: same appends succeed, positions and versions continue.
    store.set_max_page_count(1 << 30).await.unwrap();
    let o = store
        .append(
            "big-0",
            ExpectedVersion::NoStream,
            vec![new_event("Big", &big)],
        )
        .await
        .unwrap();
    assert_eq!((o.first_position, o.last_version), (head + 1, 0));
    let o = store
        .append(
            "before",
            ExpectedVersion::Exact(9),
            vec![new_event("T", "{}")],
        )
        .await
        .unwrap();
    assert_eq!((o.first_position, o.last_version), (head + 2, 10));
    store.close().await.unwrap();
    drop(store);

    let store = SqliteStore::open(&db_path(&dir), SqliteOptions::new("n")).unwrap();
    assert_eq!(store.head_position(), head + 2);
    let all = store.read_all(1, 100).await.unwrap();
    assert_eq!(all.len() as u64, head + 2);
    assert_eq!(all[head as usize].data, big);
    store.close().await.unwrap();
}

/// Dropping the last handle without `close` commits what was queued, stops
/// the writer thread, and leaves a file that opens again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_without_close_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&db_path(&dir), SqliteOptions::new("n")).unwrap();
    let o = store
        .append("s", ExpectedVersion::NoStream, vec![new_event("T", "{}")])
        .await
        .unwrap();
    let head = store.watch_head();
    drop(store);
    assert!(
        head.has_changed().is_err(),
        "the writer thread must be gone"
    );
    let store = SqliteStore::open(&db_path(&dir), SqliteOptions::new("n")).unwrap();
    assert_eq!(store.head_position(), o.last_position);
    store.close().await.unwrap();
}

/// The durability pragmas are in force.
#[tokio::test]
async fn wal_and_synchronous_full() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&db_path(&dir), SqliteOptions::new("n")).unwrap();
    store
        .append("s", ExpectedVersion::NoStream, vec![new_event("T", "{}")])
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(db_path(&dir)).unwrap();
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    store.close().await.unwrap();
}

/// Group commit actually groups: many concurrent appends share commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&db_path(&dir), SqliteOptions::new("n")).unwrap());
    let tasks: Vec<_> = (0..64)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    store
                        .append(
                            &format!("g-{w}"),
                            ExpectedVersion::Any,
                            vec![new_event("T", "{}")],
                        )
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let stats = store.stats();
    assert_eq!(stats.events, 64 * 20);
    assert_eq!(stats.appends, 64 * 20);
    assert!(
        stats.commits < stats.appends / 4,
        "expected group commits, got {stats:?}"
    );
    store.close().await.unwrap();
}

/// Under sustained appends the WAL is checkpointed (in the background, then
/// by the writer at the hard limit) and its file stays bounded; nothing is
/// lost on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_is_checkpointed_and_stays_bounded() {
    const WRITERS: usize = 32;
    const APPENDS: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&db_path(&dir), SqliteOptions::new("n")).unwrap());
    let data = format!(r#"{{"pad":"{}"}}"#, "y".repeat(3000));
    let wal = dir.path().join("events.db-wal");
    let mut largest_wal = 0;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            let data = data.clone();
            tokio::spawn(async move {
                for i in 0..APPENDS {
                    store
                        .append(
                            &format!("wal-{w}-{}", i % 7),
                            ExpectedVersion::Any,
                            vec![new_event("T", &data)],
                        )
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        while !task.is_finished() {
            largest_wal = largest_wal.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        task.await.unwrap();
    }
    let total = (WRITERS * APPENDS) as u64;
    let stats = store.stats();
    assert_eq!(stats.events, total);
    assert!(
        stats.checkpoint_time > Duration::ZERO,
        "the writer never had to checkpoint: {stats:?}"
    );
    assert!(largest_wal < 100 << 20, "WAL grew to {largest_wal} bytes");
    store.close().await.unwrap();
    drop(store);

    let store = SqliteStore::open(&db_path(&dir), SqliteOptions::new("n")).unwrap();
    assert_eq!(store.head_position(), total);
    let mut position = 1;
    loop {
        let page = store.read_all(position, 1000).await.unwrap();
        let Some(last) = page.last() else { break };
        assert!(page.iter().all(|e| e.data == data));
        position = last.position + 1;
    }
    assert_eq!(position, total + 1);
    store.close().await.unwrap();
}
