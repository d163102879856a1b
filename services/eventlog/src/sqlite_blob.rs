//! The embedded blob backend: its own SQLite file (e.g.
//! `<data-dir>/blobs.sqlite3`) in WAL mode with `synchronous=FULL`.
//!
//! # Layout
//! - A file of its own, next to the event log's: a multi-MB put then never
//!   sits in the log's group commit (its WAL, its fsync) and never delays an
//!   append.
//! - One dedicated OS thread (the *writer*) owns the only read-write
//!   connection. Puts and deletes reach it through a channel; it takes every
//!   request waiting (up to [`SqliteBlobOptions::max_batch_requests`] and
//!   [`SqliteBlobOptions::max_batch_bytes`]) into one transaction, so that
//!   one fsync acknowledges them all. Each request runs in a savepoint: one
//!   failing (a full disk) is undone alone and the others still commit.
//! - Reads (`get`, `list`) go through a small pool of read-only connections
//!   on `spawn_blocking`; WAL lets them read while the writer writes. The
//!   writer thread's handle (stopping it on close or drop) and the pool are
//!   the event log's too: `sqlite_db.rs`'s `Database`. Hashing a large put runs on `spawn_blocking` too: nothing
//!   here blocks the tokio runtime (only [`SqliteBlobStore::open`] does, like
//!   the log's).
//! - A blob is one row in `blobs` (id, size, SHA-256, creation time) and its
//!   bytes are rows of [`CHUNK_SIZE`] in `blob_chunks`, written in the same
//!   transaction (the schema's comment says why chunks).
//!
//! # What it must not do
//! Two processes must not open the same file (the writer assumes it is the
//! only one). An acknowledgement is never given before the commit returned,
//! and `synchronous` is never lowered.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::oneshot;

use crate::blob::{check_size, sha256, validate_id, BlobInfo, BlobStore};
use crate::sqlite_db::{open_durable, storage_error, to_i64, u64_column, Database};
use crate::{Error, Result};

/// Bumped when the schema changes; checked at open.
const SCHEMA_VERSION: i64 = 1;

/// Schema 1.
/// - `blobs`: one row per blob, looked up by `id` (unique index); `key` is
///   the short integer the chunks refer to, so that their index does not
///   repeat the id.
/// - `blob_chunks`: the bytes, in rows of [`CHUNK_SIZE`] (the last one
///   shorter; none for an empty blob). SQLite would take a 10 MB value in
///   one row, but reading any part of such a row walks its overflow pages
///   from the start, and the row is read whole into memory; chunks let a
///   later ranged or streamed read (playing a message as it is read, seeking
///   in it) fetch only the rows it needs, and keep each bound value small.
///   A rowid table (not `WITHOUT ROWID`): SQLite advises against large rows
///   in index b-trees; the chunks of a put append to the table's end.
const SCHEMA: &str = "
CREATE TABLE blobs (
    key           INTEGER PRIMARY KEY,
    id            TEXT    NOT NULL UNIQUE,
    size          INTEGER NOT NULL,
    sha256        BLOB    NOT NULL,
    created_at_us INTEGER NOT NULL
);
CREATE TABLE blob_chunks (
    blob INTEGER NOT NULL,
    n    INTEGER NOT NULL,
    data BLOB    NOT NULL,
    PRIMARY KEY (blob, n)
);
";

/// Bytes per row of `blob_chunks`: 256 KiB, four 64 KiB pages, about 16 s
/// of voicemail audio (8 kHz, 16-bit mono); a typical message is 4 to 12
/// chunks.
pub const CHUNK_SIZE: usize = 256 << 10;

/// The file's page size, set when it is created. Blob bytes live in overflow
/// pages, each written to the WAL as one frame (one `pwrite`) and chained
/// from the previous one: 64 KiB pages (SQLite's largest) make a 5 MB put
/// about 80 frames instead of 1,280. Measured in a debug build on the
/// development VM: a 3 MB put took 33-38 ms with 64 KiB pages, 54-70 ms
/// with 4 KiB ones; a 2 KB put about 4 ms either way (the fsync).
const PAGE_SIZE: i64 = 65_536;

/// Checkpoint the WAL once it holds this many pages (32 MiB at 64 KiB).
/// SQLite runs it in the committing connection, the writer, after the
/// commit; the WAL is truncated back to [`JOURNAL_SIZE_LIMIT`] after it.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 512;
const JOURNAL_SIZE_LIMIT: i64 = 64 << 20;

/// Above this size a put's SHA-256 is computed on `spawn_blocking` (a 10 MB
/// blob takes tens of ms); below it, inline (microseconds).
const HASH_INLINE_MAX: usize = 64 << 10;

/// Options of [`SqliteBlobStore::open`].
#[derive(Debug, Clone)]
pub struct SqliteBlobOptions {
    /// Number of read-only connections (reads run concurrently up to this).
    pub readers: usize,
    /// A commit holds at most this many puts and deletes.
    pub max_batch_requests: usize,
    /// A commit holds puts of at most this many bytes in all (a single
    /// larger put is still committed, alone): a commit writes its bytes to
    /// the WAL before its fsync, and every request in it waits for that.
    pub max_batch_bytes: usize,
}

impl Default for SqliteBlobOptions {
    fn default() -> Self {
        Self {
            readers: 2,
            max_batch_requests: 64,
            max_batch_bytes: 16 << 20,
        }
    }
}

/// Counters of the writer since the store was opened; used by tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BlobStats {
    /// Transactions committed.
    pub commits: u64,
    /// Puts and deletes answered `Ok` (retries included).
    pub requests: u64,
    /// Puts that stored a new blob (retries excluded).
    pub stored: u64,
}

#[derive(Default)]
struct StatsCells {
    commits: AtomicU64,
    requests: AtomicU64,
    stored: AtomicU64,
}

/// Metric handles, resolved once at open (bound to the recorder installed
/// then).
struct BlobMetrics {
    /// Put latency: hashing, waiting for the writer, the commit and fsync.
    put_seconds: metrics::Histogram,
    /// Bytes of newly stored blobs (a retry stores nothing).
    bytes_total: metrics::Counter,
}

impl BlobMetrics {
    fn new() -> Self {
        Self {
            put_seconds: metrics::histogram!("dialtone_blobs_put_seconds"),
            bytes_total: metrics::counter!("dialtone_blobs_bytes_total"),
        }
    }
}

struct PutRequest {
    id: String,
    bytes: Bytes,
    sha256: [u8; 32],
    /// `Ok(true)` when the blob was stored, `Ok(false)` for a retry.
    reply: oneshot::Sender<Result<bool>>,
}

struct DeleteRequest {
    id: String,
    reply: oneshot::Sender<Result<bool>>,
}

enum Msg {
    Put(PutRequest),
    Delete(DeleteRequest),
    #[cfg(any(test, feature = "conformance"))]
    SetMaxPageCount {
        pages: u64,
        reply: oneshot::Sender<Result<u64>>,
    },
    Shutdown,
}

/// The SQLite blob store. Share it as a [`crate::SharedBlobStore`]
/// (`Arc::new(store)`).
///
/// Dropping it stops the writer after it has committed what was queued, and
/// joins it (this blocks for at most one commit). Prefer
/// [`BlobStore::close`] in async code.
pub struct SqliteBlobStore {
    /// The writer thread and the readers.
    db: Database<Msg>,
    stats: Arc<StatsCells>,
    metrics: BlobMetrics,
}

impl std::fmt::Debug for SqliteBlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBlobStore")
            .field("path", &self.db.path())
            .field("closed", &self.db.is_closed())
            .finish_non_exhaustive()
    }
}

impl SqliteBlobStore {
    /// Opens (creating if needed) the blob file at `path` and starts its
    /// writer thread. Blocking: call it at startup or from `spawn_blocking`.
    pub fn open(path: &Path, options: SqliteBlobOptions) -> Result<SqliteBlobStore> {
        let conn = open_writer_connection(path)?;
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(StatsCells::default());
        let writer = Writer {
            conn,
            rx,
            max_requests: options.max_batch_requests.max(1),
            max_bytes: options.max_batch_bytes,
            stats: Arc::clone(&stats),
        };
        let db = Database::start(
            path,
            "blob store",
            "blobs-writer",
            tx,
            options.readers,
            move || writer.run(),
        )?;
        tracing::debug!(path = %path.display(), "blob store opened");
        Ok(SqliteBlobStore {
            db,
            stats,
            metrics: BlobMetrics::new(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.db.path()
    }

    /// Writer counters since open.
    pub fn stats(&self) -> BlobStats {
        BlobStats {
            commits: self.stats.commits.load(Ordering::Relaxed),
            requests: self.stats.requests.load(Ordering::Relaxed),
            stored: self.stats.stored.load(Ordering::Relaxed),
        }
    }

    /// Test hook simulating a full disk: caps the file at `pages` pages
    /// (`PRAGMA max_page_count`; never below the current size, so 1 means "no
    /// growth from now on"; 0 changes nothing). Returns the cap in effect.
    #[cfg(any(test, feature = "conformance"))]
    pub async fn set_max_page_count(&self, pages: u64) -> Result<u64> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::SetMaxPageCount { pages, reply })?;
        rx.await.map_err(|_| Error::Closed)?
    }

    fn check_open(&self) -> Result<()> {
        self.db.check_open()
    }

    fn send(&self, msg: Msg) -> Result<()> {
        self.db.send(msg)
    }

    async fn put_inner(&self, id: &str, bytes: Bytes) -> Result<()> {
        validate_id(id)?;
        check_size(bytes.len())?;
        self.check_open()?;
        let sha256 = if bytes.len() <= HASH_INLINE_MAX {
            sha256(&bytes)
        } else {
            let bytes = bytes.clone();
            tokio::task::spawn_blocking(move || sha256(&bytes))
                .await
                .map_err(|e| Error::Storage(format!("hashing a blob failed: {e}")))?
        };
        let size = bytes.len() as u64;
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Put(PutRequest {
            id: id.to_owned(),
            bytes,
            sha256,
            reply,
        }))?;
        // A dropped reply means the writer stopped before answering.
        let stored = rx.await.unwrap_or(Err(Error::Closed))?;
        if stored {
            self.metrics.bytes_total.increment(size);
        }
        Ok(())
    }
}

impl SqliteBlobStore {
    /// Blobs created before `cutoff_us`, in id order after `after`, at most
    /// `limit`: `list` is this with no cutoff (`i64::MAX`, as no blob is
    /// created then).
    ///
    /// It walks the unique index of `id` and filters on the creation time:
    /// no index on `created_at_us`, since a sweep wants nearly every blob
    /// anyway (all but those of the last grace period), and an index would
    /// be one more b-tree written by every put. A page costs the rows it
    /// returns plus the young ones it skips.
    async fn list_before(
        &self,
        cutoff_us: i64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<BlobInfo>> {
        self.check_open()?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        // An empty `after` is below every id (ids are never empty).
        let after = after.unwrap_or("").to_owned();
        // SQLite's BINARY order is bytewise, as Rust orders `str`.
        self.db
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT id, size, sha256, created_at_us FROM blobs
                     WHERE id > ?1 AND created_at_us < ?2 ORDER BY id LIMIT ?3",
                )?;
                let rows = stmt.query_map(
                    rusqlite::params![after, cutoff_us, to_i64(limit as u64)],
                    |row| {
                        let sha: Vec<u8> = row.get(2)?;
                        Ok(BlobInfo {
                            id: row.get(0)?,
                            size: u64_column(row, 1)?,
                            sha256: sha.try_into().map_err(|_| {
                                rusqlite::Error::InvalidColumnType(
                                    2,
                                    "sha256".to_owned(),
                                    rusqlite::types::Type::Blob,
                                )
                            })?,
                            created_at_us: row.get(3)?,
                        })
                    },
                )?;
                rows.collect()
            })
            .await
    }
}

#[async_trait]
impl BlobStore for SqliteBlobStore {
    async fn put(&self, id: &str, bytes: Bytes) -> Result<()> {
        let started = Instant::now();
        let result = self.put_inner(id, bytes).await;
        self.metrics
            .put_seconds
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn get(&self, id: &str) -> Result<Option<Bytes>> {
        validate_id(id)?;
        self.check_open()?;
        let id = id.to_owned();
        // One statement, hence one snapshot: the size and hash belong to the
        // very chunks read, even if the blob is deleted and put again
        // meanwhile. `blob_chunks`' primary key yields them in order.
        self.db
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT b.size, b.sha256, c.data
                     FROM blobs b LEFT JOIN blob_chunks c ON c.blob = b.key
                     WHERE b.id = ?1 ORDER BY c.n",
                )?;
                let mut rows = stmt.query([&id])?;
                let Some(first) = rows.next()? else {
                    return Ok(Ok(None));
                };
                let size = u64_column(first, 0)?;
                let expected: Vec<u8> = first.get(1)?;
                let mut bytes =
                    Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(CHUNK_SIZE * 64));
                let mut row = Some(first);
                while let Some(r) = row {
                    if let Some(data) = r.get_ref(2)?.as_blob_or_null()? {
                        bytes.extend_from_slice(data);
                    }
                    row = rows.next()?;
                }
                // SQLite has no checksums of its own: a blob that does not
                // match what was put is reported, never served.
                if bytes.len() as u64 != size || sha256(&bytes)[..] != expected[..] {
                    return Ok(Err(Error::Storage(format!(
                        "blob {id} is corrupt: {} bytes read, {size} stored, or its SHA-256 differs",
                        bytes.len()
                    ))));
                }
                Ok(Ok(Some(Bytes::from(bytes))))
            })
            .await?
    }

    async fn delete(&self, id: &str) -> Result<bool> {
        validate_id(id)?;
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Delete(DeleteRequest {
            id: id.to_owned(),
            reply,
        }))?;
        rx.await.unwrap_or(Err(Error::Closed))
    }

    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<BlobInfo>> {
        self.list_before(i64::MAX, after, limit).await
    }

    async fn list_older_than(
        &self,
        cutoff_us: i64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<BlobInfo>> {
        self.list_before(cutoff_us, after, limit).await
    }

    async fn close(&self) -> Result<()> {
        self.db.close(Msg::Shutdown).await
    }
}

/// Opens the read-write connection and sets the file up: page size (new
/// files only), WAL and `synchronous=FULL` (the durability contract: a
/// commit returns once the WAL is fsynced), the schema.
fn open_writer_connection(path: &Path) -> Result<Connection> {
    let ctx = |what: &str| format!("open {}: {what}", path.display());
    // The page size only takes effect on a file without pages yet; an
    // existing file keeps its own.
    let conn = open_durable(path, Some(PAGE_SIZE))?;
    conn.execute_batch(&format!(
        "PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES};
         PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT};"
    ))
    .map_err(|e| storage_error(&ctx("pragmas"), &e))?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|e| storage_error(&ctx("user_version"), &e))?;
    match version {
        0 => conn
            .execute_batch(&format!(
                "BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
            .map_err(|e| storage_error(&ctx("create schema"), &e))?,
        SCHEMA_VERSION => {}
        other => {
            return Err(Error::Storage(ctx(&format!(
                "unknown blob schema version {other} (this build knows {SCHEMA_VERSION})"
            ))))
        }
    }
    Ok(conn)
}

/// A request in a batch, with the answer it gets if the batch commits.
enum Request {
    Put(PutRequest),
    Delete(DeleteRequest),
}

struct Writer {
    conn: Connection,
    rx: mpsc::Receiver<Msg>,
    max_requests: usize,
    max_bytes: usize,
    stats: Arc<StatsCells>,
}

impl Writer {
    fn run(mut self) {
        // After `Shutdown` (or once every sender is gone) the writer still
        // commits what is queued, without waiting for more.
        let mut stopping = false;
        loop {
            let first = if stopping {
                self.rx.try_recv().ok()
            } else {
                self.rx.recv().ok()
            };
            let Some(first) = first else { break };
            // Group commit: every request already waiting shares this
            // transaction and its fsync; those arriving during the commit
            // form the next batch.
            let mut batch = Vec::new();
            let mut bytes = 0;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Put(put) => {
                        bytes += put.bytes.len();
                        batch.push(Request::Put(put));
                    }
                    Msg::Delete(delete) => batch.push(Request::Delete(delete)),
                    #[cfg(any(test, feature = "conformance"))]
                    Msg::SetMaxPageCount { pages, reply } => {
                        let _ = reply.send(self.set_max_page_count(pages));
                    }
                    Msg::Shutdown => stopping = true,
                }
                if batch.len() >= self.max_requests || bytes >= self.max_bytes {
                    break;
                }
                next = self.rx.try_recv().ok();
            }
            if !batch.is_empty() {
                self.commit(batch);
            }
        }
        // Checkpoints and removes the WAL when no reader is left.
        if let Err((_, e)) = self.conn.close() {
            tracing::warn!(error = %e, "closing the blob store");
        }
    }

    #[cfg(any(test, feature = "conformance"))]
    fn set_max_page_count(&self, pages: u64) -> Result<u64> {
        self.conn
            .pragma_update_and_check(None, "max_page_count", to_i64(pages), |row| {
                u64_column(row, 0)
            })
            .map_err(|e| storage_error("set max_page_count", &e))
    }

    fn commit(&mut self, batch: Vec<Request>) {
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let mut outcomes: Vec<Option<Result<bool>>> = batch.iter().map(|_| None).collect();
        // Each round either answers every request still open or takes one
        // out (see `Aborted`), so this ends.
        loop {
            let open: Vec<usize> = (0..batch.len())
                .filter(|&i| outcomes[i].is_none())
                .collect();
            if open.is_empty() {
                break;
            }
            match self.write(&batch, &open, now_us) {
                Ok(written) => {
                    self.stats.commits.fetch_add(1, Ordering::Relaxed);
                    for (i, outcome) in open.into_iter().zip(written) {
                        outcomes[i] = Some(outcome);
                    }
                }
                Err(Failure::Aborted { index, error }) => {
                    tracing::warn!(%error, "a blob request aborted its batch; the others are retried");
                    outcomes[index] = Some(Err(error));
                }
                // Nothing of the batch is stored (the transaction was rolled
                // back when dropped): every open request fails with the reason.
                Err(Failure::Batch(error)) => {
                    tracing::warn!(%error, requests = open.len(), "blob commit failed");
                    for i in open {
                        outcomes[i] = Some(Err(clone_error(&error)));
                    }
                }
            }
        }
        for (request, outcome) in batch.into_iter().zip(outcomes) {
            let outcome = outcome.unwrap_or(Err(Error::Closed));
            if outcome.is_ok() {
                self.stats.requests.fetch_add(1, Ordering::Relaxed);
            }
            match request {
                Request::Put(put) => {
                    if matches!(outcome, Ok(true)) {
                        self.stats.stored.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = put.reply.send(outcome);
                }
                Request::Delete(delete) => {
                    let _ = delete.reply.send(outcome);
                }
            }
        }
    }

    /// One transaction for the requests `open` of `batch`, one savepoint per
    /// request, so that a request failing (a conflict, a full disk) is undone
    /// alone. The outcomes are in the order of `open`.
    fn write(
        &mut self,
        batch: &[Request],
        open: &[usize],
        now_us: i64,
    ) -> Result<Vec<Result<bool>>, Failure> {
        let mut tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| Failure::Batch(storage_error("begin", &e)))?;
        let mut outcomes = Vec::with_capacity(open.len());
        for &index in open {
            let savepoint = tx
                .savepoint()
                .map_err(|e| Failure::Batch(storage_error("savepoint", &e)))?;
            let outcome = match &batch[index] {
                Request::Put(put) => put_on(&savepoint, put, now_us),
                Request::Delete(delete) => delete_on(&savepoint, &delete.id),
            };
            match outcome {
                Ok(_) => savepoint
                    .commit()
                    .map_err(|e| Failure::Batch(storage_error("release savepoint", &e)))?,
                // SQLite rolls the whole transaction back by itself on some
                // errors (SQLITE_FULL, SQLITE_IOERR, ...): the savepoint is
                // gone with it.
                Err(error) if savepoint.is_autocommit() => {
                    return Err(Failure::Aborted { index, error });
                }
                // Undo this request alone (roll back to the savepoint and
                // release it); the others stay in the batch.
                Err(_) => savepoint
                    .finish()
                    .map_err(|e| Failure::Batch(storage_error("rollback to savepoint", &e)))?,
            }
            outcomes.push(outcome);
        }
        tx.commit()
            .map_err(|e| Failure::Batch(storage_error("commit", &e)))?;
        Ok(outcomes)
    }
}

/// Why [`Writer::write`] stored nothing.
enum Failure {
    /// The request at `index` failed and SQLite rolled the transaction back
    /// with it: that request is answered with `error`, the others are
    /// written again without it.
    Aborted { index: usize, error: Error },
    /// Beginning or committing the transaction failed: every request fails.
    Batch(Error),
}

/// Stores one blob unless its id is taken; `Ok(false)` for a retry of the
/// same bytes.
fn put_on(conn: &Connection, put: &PutRequest, now_us: i64) -> Result<bool> {
    let fail = |e: rusqlite::Error| storage_error(&format!("put blob {}", put.id), &e);
    let size = put.bytes.len() as u64;
    let existing = conn
        .prepare_cached("SELECT size, sha256 FROM blobs WHERE id = ?1")
        .map_err(fail)?
        .query_row([&put.id], |row| {
            Ok((u64_column(row, 0)?, row.get::<_, Vec<u8>>(1)?))
        })
        .optional()
        .map_err(fail)?;
    if let Some((stored_size, stored_sha)) = existing {
        return if stored_size == size && stored_sha[..] == put.sha256[..] {
            Ok(false)
        } else {
            Err(Error::BlobConflict { id: put.id.clone() })
        };
    }
    conn.prepare_cached(
        "INSERT INTO blobs (id, size, sha256, created_at_us) VALUES (?1, ?2, ?3, ?4)",
    )
    .map_err(fail)?
    .execute(rusqlite::params![
        put.id,
        to_i64(size),
        &put.sha256[..],
        now_us
    ])
    .map_err(fail)?;
    let key = conn.last_insert_rowid();
    let mut insert = conn
        .prepare_cached("INSERT INTO blob_chunks (blob, n, data) VALUES (?1, ?2, ?3)")
        .map_err(fail)?;
    for (n, chunk) in put.bytes.chunks(CHUNK_SIZE).enumerate() {
        insert
            .execute(rusqlite::params![key, to_i64(n as u64), chunk])
            .map_err(fail)?;
    }
    Ok(true)
}

/// Deletes one blob; `Ok(true)` if it existed.
fn delete_on(conn: &Connection, id: &str) -> Result<bool> {
    let fail = |e: rusqlite::Error| storage_error(&format!("delete blob {id}"), &e);
    let key: Option<i64> = conn
        .prepare_cached("SELECT key FROM blobs WHERE id = ?1")
        .map_err(fail)?
        .query_row([id], |row| row.get(0))
        .optional()
        .map_err(fail)?;
    let Some(key) = key else { return Ok(false) };
    conn.prepare_cached("DELETE FROM blob_chunks WHERE blob = ?1")
        .map_err(fail)?
        .execute([key])
        .map_err(fail)?;
    conn.prepare_cached("DELETE FROM blobs WHERE key = ?1")
        .map_err(fail)?
        .execute([key])
        .map_err(fail)?;
    Ok(true)
}

/// The batch's error for each of its requests (`Error` is not `Clone`: it
/// may one day carry a source that is not).
fn clone_error(e: &Error) -> Error {
    match e {
        Error::Closed => Error::Closed,
        Error::Storage(message) => Error::Storage(message.clone()),
        other => Error::Storage(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sqlite;

    #[async_trait]
    impl crate::blob_conformance::BlobBackend for Sqlite {
        type Location = tempfile::TempDir;

        async fn create(&self) -> tempfile::TempDir {
            tempfile::tempdir().unwrap()
        }

        fn location_name(&self, dir: &tempfile::TempDir) -> String {
            dir.path().to_str().unwrap().to_owned()
        }

        async fn open_named(&self, dir: &str) -> crate::SharedBlobStore {
            let path = Path::new(dir).join("blobs.sqlite3");
            Arc::new(SqliteBlobStore::open(&path, SqliteBlobOptions::default()).unwrap())
        }
    }

    /// The blob suite once (but the crash case, which needs its child test),
    /// so that a plain `cargo test` runs it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blob_conformance_suite() {
        crate::blob_conformance::run_all(&Sqlite).await;
    }

    /// Bytes changed behind SQLite's back are reported, never served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn corrupt_blob_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blobs.sqlite3");
        let store = SqliteBlobStore::open(&path, SqliteBlobOptions::default()).unwrap();
        store
            .put("m", Bytes::from(vec![5u8; CHUNK_SIZE + 10]))
            .await
            .unwrap();
        store.put("n", Bytes::from_static(b"abc")).await.unwrap();
        let conn = Connection::open(&path).unwrap();
        conn.execute(
            "UPDATE blob_chunks SET data = zeroblob(10) WHERE n = 1 AND blob = (SELECT key FROM blobs WHERE id = 'm')",
            [],
        )
        .unwrap();
        conn.execute(
            "DELETE FROM blob_chunks WHERE blob = (SELECT key FROM blobs WHERE id = 'n')",
            [],
        )
        .unwrap();
        drop(conn);
        for id in ["m", "n"] {
            match store.get(id).await {
                Err(Error::Storage(message)) => assert!(message.contains("corrupt"), "{message}"),
                other => panic!("expected a corruption error for {id}, got {other:?}"),
            }
        }
        store.close().await.unwrap();
    }

    /// `get` reads the chunks through `blob_chunks`' primary key, in order,
    /// without sorting them in a temporary b-tree (a copy of every byte).
    #[test]
    fn get_reads_chunks_in_index_order() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_writer_connection(&dir.path().join("blobs.sqlite3")).unwrap();
        let plan: Vec<String> = conn
            .prepare(
                "EXPLAIN QUERY PLAN SELECT b.size, b.sha256, c.data
                 FROM blobs b LEFT JOIN blob_chunks c ON c.blob = b.key
                 WHERE b.id = ?1 ORDER BY c.n",
            )
            .unwrap()
            .query_map(["x"], |row| row.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(
            !plan.iter().any(|step| step.contains("TEMP B-TREE")),
            "{plan:?}"
        );
    }

    /// `list_older_than` walks the unique index of `id` in order (no sort
    /// of the whole table in a temporary b-tree).
    #[test]
    fn list_older_than_walks_the_id_index() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_writer_connection(&dir.path().join("blobs.sqlite3")).unwrap();
        let plan: Vec<String> = conn
            .prepare(
                "EXPLAIN QUERY PLAN SELECT id, size, sha256, created_at_us FROM blobs
                 WHERE id > ?1 AND created_at_us < ?2 ORDER BY id LIMIT ?3",
            )
            .unwrap()
            .query_map(rusqlite::params!["", 0, 10], |row| row.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(
            !plan.iter().any(|step| step.contains("TEMP B-TREE")),
            "{plan:?}"
        );
        assert!(
            plan.iter().any(|step| step.contains("USING INDEX")),
            "{plan:?}"
        );
    }

    /// A file of an unknown schema version is refused.
    #[test]
    fn unknown_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blobs.sqlite3");
        let conn = open_writer_connection(&path).unwrap();
        conn.pragma_update(None, "user_version", 7).unwrap();
        drop(conn);
        let err = open_writer_connection(&path).unwrap_err();
        assert!(
            err.to_string().contains("unknown blob schema version 7"),
            "{err}"
        );
    }
}
