//! The conformance suite every blob backend ([`crate::BlobStore`]) runs
//! (feature `conformance`; always on in this crate's own tests), like
//! [`crate::conformance`] for event stores.
//!
//! # How a backend uses it
//! Implement [`BlobBackend`], then in an integration test:
//!
//! ```no_run
//! use std::sync::Arc;
//! use dialtone_eventlog::blob_conformance::BlobBackend;
//! use dialtone_eventlog::{SharedBlobStore, SqliteBlobOptions, SqliteBlobStore};
//!
//! struct Sqlite;
//!
//! #[async_trait::async_trait]
//! impl BlobBackend for Sqlite {
//!     type Location = tempfile::TempDir;
//!     async fn create(&self) -> Self::Location {
//!         tempfile::tempdir().unwrap()
//!     }
//!     fn location_name(&self, dir: &Self::Location) -> String {
//!         dir.path().display().to_string()
//!     }
//!     async fn open_named(&self, dir: &str) -> SharedBlobStore {
//!         let path = std::path::Path::new(dir).join("blobs.sqlite3");
//!         Arc::new(SqliteBlobStore::open(&path, SqliteBlobOptions::default()).unwrap())
//!     }
//! }
//!
//! dialtone_eventlog::blob_conformance_tests!(Sqlite);
//! # fn main() {}
//! ```
//!
//! which expands to one `#[tokio::test]` per case, plus the crash case: a
//! test that re-runs the test binary as a child process (its
//! `blob_crash_child` test, with [`CRASH_ENV`] naming the location), lets
//! it put blobs, kills it with SIGKILL mid-way and checks what survived.
//! [`run_all`] runs every case but the crash from a single test.
//!
//! Cases panic on failure, like any test. Each one works on its own fresh
//! location and assumes nothing else writes to it.

// A test suite: panicking with a message is how it reports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::blob::{sha256, MAX_BLOB_SIZE};
use crate::{BlobInfo, Error, SharedBlobStore};

/// What the suite needs from a backend.
#[async_trait]
pub trait BlobBackend: Send + Sync + 'static {
    /// A storage location that can be opened several times in a row (it must
    /// outlive the stores opened on it; dropping it may delete the data).
    type Location: Send + Sync;

    /// A new, empty location.
    async fn create(&self) -> Self::Location;

    /// The location as a string another process can open with
    /// [`BlobBackend::open_named`] (a directory, a connection string).
    fn location_name(&self, location: &Self::Location) -> String;

    /// Opens a store on the location named `name`. The suite closes a store
    /// before opening its location again.
    async fn open_named(&self, name: &str) -> SharedBlobStore;

    /// Opens a store on `location`.
    async fn open(&self, location: &Self::Location) -> SharedBlobStore {
        self.open_named(&self.location_name(location)).await
    }
}

/// The environment variable that makes `blob_crash_child` a child: it names
/// the location to put blobs into.
pub const CRASH_ENV: &str = "DIALTONE_BLOB_CRASH_LOCATION";

/// Generous bound on every wait, so that a broken backend fails instead of
/// hanging the test run.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Runs every case but the crash, one after the other, each on a fresh
/// location.
pub async fn run_all<B: BlobBackend>(backend: &B) {
    round_trip(backend).await;
    idempotent_retry(backend).await;
    conflict(backend).await;
    delete(backend).await;
    list_paging(backend).await;
    list_older_than(backend).await;
    invalid_ids(backend).await;
    too_large(backend).await;
    concurrent_puts(backend).await;
    durability_across_reopen(backend).await;
    closed_after_close(backend).await;
}

/// One `#[tokio::test]` per blob conformance case, for the backend that
/// `$backend` (an expression, evaluated in each test) builds, and the crash
/// case with its child.
#[macro_export]
macro_rules! blob_conformance_tests {
    ($backend:expr) => {
        $crate::blob_conformance_tests!(@cases $backend;
            round_trip,
            idempotent_retry,
            conflict,
            delete,
            list_paging,
            list_older_than,
            invalid_ids,
            too_large,
            concurrent_puts,
            durability_across_reopen,
            closed_after_close,
        );

        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn acknowledged_survive_kill() {
            let backend = $backend;
            // The child's test name as the harness knows it: this module's
            // path without the crate's name.
            let child = match module_path!().split_once("::") {
                Some((_, module)) => format!("{module}::blob_crash_child"),
                None => "blob_crash_child".to_owned(),
            };
            $crate::blob_conformance::acknowledged_survive_kill(&backend, &child).await;
        }

        /// The child process of `acknowledged_survive_kill` when
        /// `DIALTONE_BLOB_CRASH_LOCATION` is set; without it, it returns at
        /// once (the harness runs it as a test like any other).
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn blob_crash_child() {
            let backend = $backend;
            $crate::blob_conformance::crash_child(&backend).await;
        }
    };
    (@cases $backend:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let backend = $backend;
                $crate::blob_conformance::$case(&backend).await;
            }
        )*
    };
}

/// The bytes the crash case and others put under `id`: a size from 0 to
/// about 1.2 MB and pseudo-random contents, both derived from the id, so
/// that whoever knows an id can check its blob byte for byte.
pub fn content_of(id: &str) -> Bytes {
    // FNV-1a of the id seeds an xorshift generator.
    let mut seed = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let size = match next() % 8 {
        0 => 0,
        1 => (next() % 100) as usize,
        _ => (next() % 1_200_000) as usize,
    };
    let mut bytes = Vec::with_capacity(size + 8);
    while bytes.len() < size {
        bytes.extend_from_slice(&next().to_le_bytes());
    }
    bytes.truncate(size);
    Bytes::from(bytes)
}

fn pattern(size: usize, salt: u8) -> Bytes {
    (0..size)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect::<Vec<u8>>()
        .into()
}

async fn fresh<B: BlobBackend>(backend: &B) -> (B::Location, SharedBlobStore) {
    let location = backend.create().await;
    let store = backend.open(&location).await;
    assert!(
        store.list(None, 10).await.unwrap().is_empty(),
        "a fresh store must be empty"
    );
    (location, store)
}

/// Every blob, page by page.
async fn list_everything(store: &SharedBlobStore, page: usize) -> Vec<BlobInfo> {
    let mut out: Vec<BlobInfo> = Vec::new();
    loop {
        let after = out.last().map(|b| b.id.clone());
        let batch = store.list(after.as_deref(), page).await.expect("list");
        assert!(batch.len() <= page, "list returned more than limit");
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// 0 bytes, 1 byte and 5 MB come back exactly; `list` reports their sizes,
/// hashes and a creation time taken during the put; an unknown id reads as
/// `None`.
pub async fn round_trip<B: BlobBackend>(backend: &B) {
    let (_location, store) = fresh(backend).await;
    let cases = [
        ("empty", Bytes::new()),
        ("one", Bytes::from_static(b"\x00")),
        ("five-mb", pattern(5_000_000, 7)),
    ];
    let before = now_us();
    for (id, bytes) in &cases {
        store.put(id, bytes.clone()).await.unwrap();
    }
    let after = now_us();
    for (id, bytes) in &cases {
        let got = store.get(id).await.unwrap().expect("stored");
        assert_eq!(got.len(), bytes.len(), "{id}");
        assert!(got == *bytes, "{id} reads back other bytes");
    }
    assert_eq!(store.get("unknown").await.unwrap(), None);
    let listed = store.list(None, 10).await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids, ["empty", "five-mb", "one"]);
    for info in &listed {
        let (_, bytes) = cases.iter().find(|(id, _)| *id == info.id).unwrap();
        assert_eq!(info.size, bytes.len() as u64);
        assert_eq!(info.sha256, sha256(bytes));
        assert!(
            (before..=after).contains(&info.created_at_us),
            "created_at_us {} not within the puts ({before}..={after})",
            info.created_at_us
        );
    }
    store.close().await.unwrap();
}

/// Putting the same bytes again is `Ok`, stores one blob, and keeps its
/// creation time.
pub async fn idempotent_retry<B: BlobBackend>(backend: &B) {
    let (_location, store) = fresh(backend).await;
    for (id, bytes) in [("small", pattern(10, 1)), ("large", pattern(700_000, 2))] {
        store.put(id, bytes.clone()).await.unwrap();
        let first = store.list(Some(""), 10).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        store.put(id, bytes.clone()).await.unwrap();
        store.put(id, bytes.clone()).await.unwrap();
        assert_eq!(store.list(None, 10).await.unwrap(), first, "{id}");
        assert!(store.get(id).await.unwrap().unwrap() == bytes);
    }
    store.close().await.unwrap();
}

/// Other bytes under a stored id (same size or not, empty or not) are
/// refused with `BlobConflict` and change nothing.
pub async fn conflict<B: BlobBackend>(backend: &B) {
    let (_location, store) = fresh(backend).await;
    let original = pattern(300_000, 3);
    store.put("msg", original.clone()).await.unwrap();
    store.put("none", Bytes::new()).await.unwrap();
    let listed = store.list(None, 10).await.unwrap();
    let mut same_size = original.to_vec();
    same_size[299_999] ^= 1;
    for (id, other) in [
        ("msg", Bytes::from(same_size)),
        ("msg", pattern(300_001, 3)),
        ("msg", Bytes::new()),
        ("none", Bytes::from_static(b"x")),
    ] {
        match store.put(id, other).await {
            Err(Error::BlobConflict { id: reported }) => assert_eq!(reported, id),
            other => panic!("expected BlobConflict for {id}, got {other:?}"),
        }
    }
    assert!(store.get("msg").await.unwrap().unwrap() == original);
    assert_eq!(store.get("none").await.unwrap().unwrap().len(), 0);
    assert_eq!(store.list(None, 10).await.unwrap(), listed);
    store.close().await.unwrap();
}

/// `delete` removes a blob (true), then finds nothing (false); the id can
/// be used again; other blobs stay.
pub async fn delete<B: BlobBackend>(backend: &B) {
    let (_location, store) = fresh(backend).await;
    store.put("a", pattern(600_000, 4)).await.unwrap();
    store.put("b", pattern(5, 5)).await.unwrap();
    assert!(store.delete("a").await.unwrap());
    assert_eq!(store.get("a").await.unwrap(), None);
    assert!(!store.delete("a").await.unwrap());
    assert!(!store.delete("never").await.unwrap());
    let ids: Vec<String> = list_everything(&store, 10)
        .await
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(ids, ["b"]);
    // A deleted id is free again, for other bytes too.
    store.put("a", pattern(1000, 6)).await.unwrap();
    assert!(store.get("a").await.unwrap().unwrap() == pattern(1000, 6));
    assert!(store.get("b").await.unwrap().unwrap() == pattern(5, 5));
    store.close().await.unwrap();
}

/// `list` pages in bytewise id order from strictly after `after`, at most
/// `limit` at a time, also from an `after` that is no stored id.
pub async fn list_paging<B: BlobBackend>(backend: &B) {
    let (_location, store) = fresh(backend).await;
    // Put in an order unrelated to the ids' order; upper case, digits, '-'
    // and '_' sort bytewise ('-' < digits < upper < '_' < lower).
    let ids: Vec<String> = (0..25)
        .map(|i| {
            let prefix = ["a", "B", "0", "_", "-"][i % 5];
            format!("{prefix}{:02}", (i * 7) % 25)
        })
        .collect();
    for id in &ids {
        store.put(id, Bytes::from(id.clone())).await.unwrap();
    }
    let expected: Vec<String> = ids
        .iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for page in [1, 7, 25, 100] {
        let listed: Vec<String> = list_everything(&store, page)
            .await
            .into_iter()
            .map(|b| b.id)
            .collect();
        assert_eq!(listed, expected, "page size {page}");
    }
    let after_gap: Vec<String> = store
        .list(Some("B99"), 3)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .collect();
    let first_after: Vec<String> = expected
        .iter()
        .filter(|id| id.as_str() > "B99")
        .take(3)
        .cloned()
        .collect();
    assert_eq!(after_gap, first_after);
    assert!(store.list(None, 0).await.unwrap().is_empty());
    assert!(store.list(Some("zzz"), 10).await.unwrap().is_empty());
    store.close().await.unwrap();
}

/// `list_older_than` lists only blobs created strictly before the cutoff,
/// in id order, paged like `list` (young blobs between old ones in id
/// order are skipped, not counted against `limit`), and a deleted old blob
/// is gone from it.
pub async fn list_older_than<B: BlobBackend>(backend: &B) {
    let (_location, store) = fresh(backend).await;
    // Old and young ids alternate in id order.
    let old = ["a-old", "c-old", "e-old", "g-old"];
    let young = ["b-young", "d-young", "f-young"];
    for id in old {
        store.put(id, pattern(1000, 1)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let cutoff = now_us();
    tokio::time::sleep(Duration::from_millis(5)).await;
    for id in young {
        store.put(id, pattern(10, 2)).await.unwrap();
    }
    let all = list_everything(&store, 100).await;
    assert_eq!(all.len(), 7);
    for page in [1, 2, 3, 100] {
        let mut listed: Vec<BlobInfo> = Vec::new();
        loop {
            let after = listed.last().map(|b| b.id.clone());
            let batch = store
                .list_older_than(cutoff, after.as_deref(), page)
                .await
                .unwrap();
            assert!(batch.len() <= page, "more than limit");
            if batch.is_empty() {
                break;
            }
            listed.extend(batch);
        }
        let ids: Vec<&str> = listed.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, old, "page size {page}");
        // The same metadata as `list`.
        for info in &listed {
            assert_eq!(Some(info), all.iter().find(|b| b.id == info.id));
            assert!(info.created_at_us < cutoff);
        }
    }
    // Strictly before: a blob created at the cutoff is not listed.
    let c_old = all.iter().find(|b| b.id == "c-old").unwrap();
    let at_c: Vec<String> = store
        .list_older_than(c_old.created_at_us, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert!(!at_c.contains(&"c-old".to_owned()), "{at_c:?}");
    let after_c: Vec<String> = store
        .list_older_than(c_old.created_at_us + 1, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert!(after_c.contains(&"c-old".to_owned()), "{after_c:?}");
    // Everything is older than a cutoff in the future; nothing than one in
    // the past.
    assert_eq!(
        store
            .list_older_than(now_us() + 1_000_000, None, 100)
            .await
            .unwrap(),
        all
    );
    assert!(store
        .list_older_than(i64::MIN, None, 100)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .list_older_than(cutoff, None, 0)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .list_older_than(cutoff, Some("zzz"), 10)
        .await
        .unwrap()
        .is_empty());
    // From an `after` that is a young id: the next old one.
    let next: Vec<String> = store
        .list_older_than(cutoff, Some("b-young"), 1)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(next, ["c-old"]);
    // Deleted: gone from the listing, the others stay.
    assert!(store.delete("c-old").await.unwrap());
    let ids: Vec<String> = store
        .list_older_than(cutoff, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(ids, ["a-old", "e-old", "g-old"]);
    store.close().await.unwrap();
}

/// Ids outside `[A-Za-z0-9_-]{1,64}` are refused by every call that takes
/// one, and nothing is stored.
pub async fn invalid_ids<B: BlobBackend>(backend: &B) {
    let (_location, store) = fresh(backend).await;
    let long = "x".repeat(65);
    for id in [
        "",
        long.as_str(),
        "a/b",
        "../etc",
        "a b",
        "é",
        "a\0b",
        "a.wav",
        "a%20",
    ] {
        let put = store.put(id, Bytes::from_static(b"x")).await;
        assert!(
            matches!(put, Err(Error::InvalidBlobId { .. })),
            "put {id:?}: {put:?}"
        );
        let get = store.get(id).await;
        assert!(
            matches!(get, Err(Error::InvalidBlobId { .. })),
            "get {id:?}: {get:?}"
        );
        let delete = store.delete(id).await;
        assert!(
            matches!(delete, Err(Error::InvalidBlobId { .. })),
            "delete {id:?}: {delete:?}"
        );
    }
    store
        .put(&"y".repeat(64), Bytes::from_static(b"ok"))
        .await
        .unwrap();
    let ids: Vec<String> = list_everything(&store, 10)
        .await
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(ids, ["y".repeat(64)]);
    store.close().await.unwrap();
}

/// A blob over the limit is refused with `BlobTooLarge` naming both sizes,
/// and nothing is stored.
pub async fn too_large<B: BlobBackend>(backend: &B) {
    let (_location, store) = fresh(backend).await;
    let size = MAX_BLOB_SIZE as usize + 1;
    match store.put("big", Bytes::from(vec![0u8; size])).await {
        Err(Error::BlobTooLarge { size: s, limit }) => {
            assert_eq!((s, limit), (size as u64, MAX_BLOB_SIZE));
        }
        other => panic!("expected BlobTooLarge, got {other:?}"),
    }
    assert_eq!(store.get("big").await.unwrap(), None);
    assert!(store.list(None, 10).await.unwrap().is_empty());
    store.close().await.unwrap();
}

/// 100 tasks put at once (new blobs, retries of each other's and
/// conflicting puts of a shared id): every acknowledged blob reads back,
/// exactly one of the conflicting puts wins.
pub async fn concurrent_puts<B: BlobBackend>(backend: &B) {
    let (_location, store) = fresh(backend).await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(100));
    let tasks: Vec<_> = (0..100)
        .map(|t| {
            let store = store.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let id = format!("task-{t:03}");
                store.put(&id, content_of(&id)).await.unwrap();
                // Everyone retries task 0's blob (the same bytes: all Ok)...
                store.put("task-000", content_of("task-000")).await.unwrap();
                // ...and races for a shared id with its own bytes.
                store
                    .put("contested", pattern(1000 + t, t as u8))
                    .await
                    .map(|()| t)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match tokio::time::timeout(TIMEOUT, task).await.unwrap().unwrap() {
            Ok(t) => winners.push(t),
            Err(Error::BlobConflict { .. }) => {}
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one contested put wins: {winners:?}"
    );
    let winner = winners[0];
    assert!(store.get("contested").await.unwrap().unwrap() == pattern(1000 + winner, winner as u8));
    for t in 0..100 {
        let id = format!("task-{t:03}");
        assert!(
            store.get(&id).await.unwrap().unwrap() == content_of(&id),
            "{id}"
        );
    }
    assert_eq!(list_everything(&store, 30).await.len(), 101);
    store.close().await.unwrap();
}

/// What was acknowledged (puts and deletes) is there after close and
/// reopen, and the reopened store takes new blobs.
pub async fn durability_across_reopen<B: BlobBackend>(backend: &B) {
    let location = backend.create().await;
    let store = backend.open(&location).await;
    let ids: Vec<String> = (0..12).map(|i| format!("durable-{i}")).collect();
    for id in &ids {
        store.put(id, content_of(id)).await.unwrap();
    }
    store.put("three-mb", pattern(3_000_000, 9)).await.unwrap();
    assert!(store.delete("durable-3").await.unwrap());
    let listed = list_everything(&store, 5).await;
    store.close().await.unwrap();
    drop(store);

    let store = backend.open(&location).await;
    assert_eq!(list_everything(&store, 5).await, listed);
    for id in &ids {
        let got = store.get(id).await.unwrap();
        if id == "durable-3" {
            assert_eq!(got, None);
        } else {
            assert!(got.unwrap() == content_of(id), "{id}");
        }
    }
    assert!(store.get("three-mb").await.unwrap().unwrap() == pattern(3_000_000, 9));
    store.put("after", pattern(10, 10)).await.unwrap();
    assert!(store.get("after").await.unwrap().unwrap() == pattern(10, 10));
    store.close().await.unwrap();
}

/// After `close`, every call fails with `Closed`; `close` again is `Ok`.
pub async fn closed_after_close<B: BlobBackend>(backend: &B) {
    let (_location, store) = fresh(backend).await;
    store.put("a", pattern(10, 1)).await.unwrap();
    store.close().await.unwrap();
    assert!(matches!(
        store.put("b", pattern(10, 1)).await,
        Err(Error::Closed)
    ));
    assert!(matches!(store.get("a").await, Err(Error::Closed)));
    assert!(matches!(store.delete("a").await, Err(Error::Closed)));
    assert!(matches!(store.list(None, 10).await, Err(Error::Closed)));
    store.close().await.unwrap();
}

/// The child of [`acknowledged_survive_kill`]: with [`CRASH_ENV`] set, puts
/// blobs from four tasks until it is killed, printing `acked <id>` once each
/// put returned `Ok`. Without it, returns at once.
pub async fn crash_child<B: BlobBackend>(backend: &B) {
    let Ok(location) = std::env::var(CRASH_ENV) else {
        return;
    };
    let store = backend.open_named(&location).await;
    let tasks: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    let id = format!("w{w}-{i:06}");
                    store.put(&id, content_of(&id)).await.unwrap();
                    // One write per line: the parent reads acknowledgements
                    // as they come (stdout is line-buffered).
                    println!("acked {id}");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// A process putting blobs is killed with SIGKILL mid-way: after reopening,
/// every blob it had acknowledged reads back exactly, and every blob there
/// (acknowledged or caught mid-put) is whole.
/// `child_test` is the harness's name of the test that calls [`crash_child`].
pub async fn acknowledged_survive_kill<B: BlobBackend>(backend: &B, child_test: &str) {
    const ACKS_BEFORE_KILL: usize = 40;
    let location = backend.create().await;
    let name = backend.location_name(&location);
    let child_test = child_test.to_owned();
    let (acked, status) = tokio::time::timeout(
        TIMEOUT,
        tokio::task::spawn_blocking(move || {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args([&child_test, "--exact", "--nocapture", "--test-threads=1"])
                .env(CRASH_ENV, &name)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap();
            let stdout = BufReader::new(child.stdout.take().unwrap());
            let mut acked = Vec::new();
            let mut killed = false;
            // Lines already written when the kill lands are still read:
            // they were acknowledged before it.
            for line in stdout.lines() {
                let line = line.unwrap();
                if let Some(id) = line.strip_prefix("acked ") {
                    acked.push(id.to_owned());
                }
                if !killed && acked.len() >= ACKS_BEFORE_KILL {
                    // `kill` is SIGKILL on Unix: no destructor, no close.
                    child.kill().unwrap();
                    killed = true;
                }
            }
            (acked, child.wait().unwrap())
        }),
    )
    .await
    .expect("the child neither acknowledged enough puts nor exited")
    .unwrap();
    assert!(
        acked.len() >= ACKS_BEFORE_KILL,
        "the child stopped after {} acknowledgements ({status})",
        acked.len()
    );
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "the child was killed: {status}");
    }

    let store = backend.open(&location).await;
    for id in &acked {
        let got = store.get(id).await.unwrap();
        assert!(
            got.as_ref() == Some(&content_of(id)),
            "acknowledged blob {id} lost or changed"
        );
    }
    let listed = list_everything(&store, 50).await;
    assert!(listed.len() >= acked.len());
    for info in &listed {
        let expected = content_of(&info.id);
        assert_eq!(info.size, expected.len() as u64, "{}", info.id);
        assert_eq!(info.sha256, sha256(&expected), "{}", info.id);
        assert!(
            store.get(&info.id).await.unwrap().unwrap() == expected,
            "blob {} is only partly there",
            info.id
        );
    }
    store.close().await.unwrap();
}
