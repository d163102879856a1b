//! The blob conformance suite against [`SqliteBlobStore`] (the crash case
//! included: it re-runs this binary as the child it kills), plus what only
//! SQLite can show: group commit, a full disk, the file's settings.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use dialtone_eventlog::blob_conformance::{content_of, BlobBackend};
use dialtone_eventlog::{BlobStore, Error, SharedBlobStore, SqliteBlobOptions, SqliteBlobStore};
use tempfile::TempDir;

/// SQLite in a temp dir (on the real disk: fsync is part of what is tested).
struct Sqlite {
    options: SqliteBlobOptions,
}

fn blob_path(dir: &Path) -> PathBuf {
    dir.join("blobs.sqlite3")
}

#[async_trait::async_trait]
impl BlobBackend for Sqlite {
    type Location = TempDir;

    async fn create(&self) -> TempDir {
        tempfile::tempdir().expect("temp dir")
    }

    fn location_name(&self, dir: &TempDir) -> String {
        dir.path().to_str().expect("a UTF-8 temp dir").to_owned()
    }

    async fn open_named(&self, dir: &str) -> SharedBlobStore {
        let path = blob_path(Path::new(dir));
        Arc::new(SqliteBlobStore::open(&path, self.options.clone()).expect("open"))
    }
}

/// Default options.
mod default_options {
    use super::*;
    dialtone_eventlog::blob_conformance_tests!(Sqlite {
        options: SqliteBlobOptions::default()
    });
}

/// Batches of at most two requests and 100 KB, one reader: batch
/// boundaries fall everywhere, large puts commit alone.
mod tiny_batches {
    use super::*;
    dialtone_eventlog::blob_conformance_tests!(Sqlite {
        options: SqliteBlobOptions {
            readers: 1,
            max_batch_requests: 2,
            max_batch_bytes: 100_000,
        }
    });
}

/// Group commit groups: 100 concurrent small puts share commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteBlobStore::open(&blob_path(dir.path()), SqliteBlobOptions::default()).unwrap(),
    );
    let tasks: Vec<_> = (0..100)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..5 {
                    let id = format!("g{t}-{i}");
                    store.put(&id, Bytes::from(id.clone())).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let stats = store.stats();
    assert_eq!((stats.requests, stats.stored), (500, 500));
    assert!(
        stats.commits < stats.requests / 4,
        "expected group commits, got {stats:?}"
    );
    store.close().await.unwrap();
}

/// A full disk (simulated with `PRAGMA max_page_count`) fails the puts that
/// do not fit with `Storage` and stores nothing of them; a small put in the
/// same moment still succeeds; once space is back the same puts succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_fails_the_put_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteBlobStore::open(&blob_path(dir.path()), SqliteBlobOptions::default()).unwrap(),
    );
    store.put("before", Bytes::from_static(b"x")).await.unwrap();
    // A few pages of room: a 2 MB put does not fit, a 10-byte one does.
    // (1 is raised to the file's current size; 0 would change nothing.)
    let pages = store.set_max_page_count(1).await.unwrap();
    store.set_max_page_count(pages + 4).await.unwrap();
    let big = Bytes::from(vec![7u8; 2_000_000]);
    let (big_put, small_put) = tokio::join!(
        store.put("big", big.clone()),
        store.put("small", Bytes::from_static(b"0123456789")),
    );
    match big_put {
        Err(Error::Storage(message)) => assert!(message.contains("full"), "{message}"),
        other => panic!("expected a storage error, got {other:?}"),
    }
    small_put.unwrap();
    assert_eq!(store.get("big").await.unwrap(), None);
    let ids: Vec<String> = store
        .list(None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(ids, ["before", "small"]);

    store.set_max_page_count(1 << 30).await.unwrap();
    store.put("big", big.clone()).await.unwrap();
    store.close().await.unwrap();
    drop(store);
    let store =
        SqliteBlobStore::open(&blob_path(dir.path()), SqliteBlobOptions::default()).unwrap();
    assert!(store.get("big").await.unwrap().unwrap() == big);
    store.close().await.unwrap();
}

/// The durability settings and the layout are in force: WAL, 64 KiB pages,
/// schema version 1, a 1 MB blob in 4 chunks.
#[tokio::test]
async fn file_settings() {
    let dir = tempfile::tempdir().unwrap();
    let path = blob_path(dir.path());
    let store = SqliteBlobStore::open(&path, SqliteBlobOptions::default()).unwrap();
    store
        .put("m", Bytes::from(vec![1u8; 1 << 20]))
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let pragma = |name: &str| -> String {
        conn.pragma_query_value(None, name, |r| r.get::<_, rusqlite::types::Value>(0))
            .map(|v| format!("{v:?}"))
            .unwrap()
    };
    assert_eq!(pragma("journal_mode"), "Text(\"wal\")");
    assert_eq!(pragma("page_size"), "Integer(65536)");
    assert_eq!(pragma("user_version"), "Integer(1)");
    let chunks: i64 = conn
        .query_row("SELECT COUNT(*) FROM blob_chunks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(chunks, 4);
    drop(conn);
    store.close().await.unwrap();
}

/// Dropping the store without `close` commits what was queued and leaves a
/// file that opens again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_without_close_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let path = blob_path(dir.path());
    let store = SqliteBlobStore::open(&path, SqliteBlobOptions::default()).unwrap();
    store.put("kept", content_of("kept")).await.unwrap();
    drop(store);
    let store = SqliteBlobStore::open(&path, SqliteBlobOptions::default()).unwrap();
    assert!(store.get("kept").await.unwrap().unwrap() == content_of("kept"));
    store.close().await.unwrap();
}
