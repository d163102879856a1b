//! The embedded backend: one SQLite file in WAL mode with `synchronous=FULL`.
//!
//! # Layout
//! - One dedicated OS thread (the *writer*, see `writer.rs`; one request in
//!   its transaction: `writer/append.rs`) owns the only read-write
//!   connection. Appends reach it through a channel; it commits
//!   them in groups (group commit): one transaction, hence one fsync, for up to
//!   [`SqliteOptions::max_batch_events`] events. It alone assigns positions and
//!   checks expected versions, against an in-memory map of stream versions, so
//!   the check needs no query in the common case.
//! - The commit of a batch writes the events (position order) and nothing
//!   per stream: the per-stream index is written later, in sorted chunks
//!   that ride along with a later commit; meanwhile the readers find recent
//!   events through the in-memory tail (`tail.rs`, ADR 0008); the writing
//!   of the chunks is in `stream_index.rs`.
//! - The file's schema, its migrations and the durable pragmas are in
//!   `schema.rs`.
//! - Readers: a small pool of read-only connections used through
//!   `spawn_blocking`, each with its own cache of prepared statements. WAL lets
//!   them read while the writer writes.
//! - The writer thread's handle (stopping it on close or drop) and the
//!   reader pool are `sqlite_db.rs`'s [`Database`], shared with the blob
//!   store.
//! - A helper thread with its own connection checkpoints the WAL in the
//!   background, so that copying pages into the database file does not stall
//!   commits (see `checkpoint.rs` for when).
//! - The writer keeps the events of its last commits in memory
//!   (`recent.rs`), so that followers of the head read them without a
//!   query.
//! - The head position is published on a `watch` channel after each commit;
//!   `read_all` never reads beyond it, so nobody sees a position before every
//!   smaller one is committed (invariant 4 is trivial with a single writer).
//!
//! # What it must not do
//! Two processes must not open the same file: the writer's version map and
//! position counter assume it is the only writer. Acknowledgements are never
//! given before the commit returned, and `synchronous` is never lowered.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row};
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use crate::sqlite_db::Database;
pub(crate) use crate::sqlite_db::{
    fix_query_plans, optional_u64_column, storage_error, to_i64, u64_column, BUSY_TIMEOUT,
};

use crate::{
    AppendOutcome, Error, EventFilter, EventStore, ExpectedVersion, NewEvent, Position,
    RecordedEvent, Result, Snapshot, StreamInfo,
};

mod checkpoint;
mod recent;
mod schema;
mod stream_index;
mod tail;
mod writer;

use recent::SharedRecent;
use tail::SharedTail;
use writer::{AppendRequest, Msg};

/// In-memory state the writer changes and the readers read (the tail, the
/// recent events).
#[derive(Debug, Default)]
pub(crate) struct Shared<T>(Arc<RwLock<T>>);

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T> Shared<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(Arc::new(RwLock::new(value)))
    }

    pub(crate) fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub(crate) fn write<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.0.write().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Options of [`SqliteStore::open`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Name of this node, written into every appended event's `node` field.
    pub node: String,
    /// A commit holds at most this many events (a single larger append is
    /// still committed, alone). Bigger batches amortise the fsync further but
    /// make the slowest request of a batch wait longer.
    pub max_batch_events: usize,
    /// A commit holds at most this many append requests.
    pub max_batch_appends: usize,
    /// Number of read-only connections (reads run concurrently up to this).
    pub readers: usize,
    /// Upper bound of the *gather window*: after a commit, the writer may wait
    /// this long (and never more than half of the last batch's duration)
    /// for the writers it just answered to send their next append, so that
    /// they share the next fsync instead of splitting into two alternating
    /// half-size batches. The wait ends as soon as they are all back. This is
    /// PostgreSQL's `commit_delay` idea made adaptive; `Duration::ZERO`
    /// disables it.
    pub max_gather_delay: Duration,
    /// Events are added to the per-stream index after their commit, this
    /// many at a time (sorted by stream), once twice as many wait; until
    /// then readers find them through an in-memory map. Bigger chunks write
    /// each index page once for more events; smaller ones keep that map and
    /// the rebuild at open small.
    pub index_chunk_events: usize,
}

impl SqliteOptions {
    /// Default options with the given node name.
    pub fn new(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            ..Self::default()
        }
    }
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            node: "local".to_owned(),
            max_batch_events: 1024,
            max_batch_appends: 256,
            readers: 2,
            max_gather_delay: Duration::from_micros(500),
            index_chunk_events: stream_index::DEFAULT_INDEX_CHUNK,
        }
    }
}

/// Counters of the writer since the store was opened (the same figures also go
/// to the `metrics` recorder); used by benchmarks and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchStats {
    /// Transactions committed.
    pub commits: u64,
    /// Append requests acknowledged as written (deduplicated ones excluded).
    pub appends: u64,
    /// Events committed.
    pub events: u64,
    /// Largest number of events in one commit.
    pub max_batch_events: u64,
    /// Batches rolled back because the storage failed.
    pub failed_batches: u64,
    /// Time the writer spent running batches up to their COMMIT.
    pub write_time: Duration,
    /// Time the writer spent in COMMIT (writing the WAL and the fsync).
    pub commit_time: Duration,
    /// Time the writer itself spent checkpointing (the background
    /// checkpoints are not counted: they do not stop the writer).
    pub checkpoint_time: Duration,
    /// Time the writer spent adding committed events to the stream index.
    pub index_time: Duration,
    /// WAL frames (one page each) written by commits.
    pub wal_frames: u64,
    /// The database's page size in bytes (a WAL frame is that plus 24).
    pub page_size: u64,
}

#[derive(Default)]
struct StatsCells {
    commits: AtomicU64,
    appends: AtomicU64,
    events: AtomicU64,
    max_batch_events: AtomicU64,
    failed_batches: AtomicU64,
    write_nanos: AtomicU64,
    commit_nanos: AtomicU64,
    checkpoint_nanos: AtomicU64,
    index_nanos: AtomicU64,
    wal_frames: AtomicU64,
    page_size: AtomicU64,
}

impl StatsCells {
    fn snapshot(&self) -> BatchStats {
        BatchStats {
            commits: self.commits.load(Ordering::Relaxed),
            appends: self.appends.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
            max_batch_events: self.max_batch_events.load(Ordering::Relaxed),
            failed_batches: self.failed_batches.load(Ordering::Relaxed),
            write_time: Duration::from_nanos(self.write_nanos.load(Ordering::Relaxed)),
            commit_time: Duration::from_nanos(self.commit_nanos.load(Ordering::Relaxed)),
            checkpoint_time: Duration::from_nanos(self.checkpoint_nanos.load(Ordering::Relaxed)),
            index_time: Duration::from_nanos(self.index_nanos.load(Ordering::Relaxed)),
            wal_frames: self.wal_frames.load(Ordering::Relaxed),
            page_size: self.page_size.load(Ordering::Relaxed),
        }
    }
}

/// Metric handles, resolved once at open so that the hot path does no lookup.
/// They bind to the recorder installed at that time: install it first.
struct StoreMetrics {
    append_seconds: metrics::Histogram,
    appends_total: metrics::Counter,
    errors_wrong_version: metrics::Counter,
    errors_idempotency: metrics::Counter,
    errors_invalid: metrics::Counter,
    errors_storage: metrics::Counter,
    errors_closed: metrics::Counter,
    /// `read_all` calls answered from the last commits in memory...
    reads_from_memory: metrics::Counter,
    /// ...and from the database (behind the held events, or none held).
    reads_from_database: metrics::Counter,
}

impl StoreMetrics {
    fn new() -> Self {
        let errors = |kind: &'static str| metrics::counter!("dialtone_eventlog_append_errors_total", "kind" => kind);
        Self {
            append_seconds: metrics::histogram!("dialtone_eventlog_append_seconds"),
            appends_total: metrics::counter!("dialtone_eventlog_appends_total"),
            errors_wrong_version: errors("wrong_expected_version"),
            errors_idempotency: errors("idempotency_conflict"),
            errors_invalid: errors("invalid"),
            errors_storage: errors("storage"),
            errors_closed: errors("closed"),
            reads_from_memory: metrics::counter!("dialtone_eventlog_read_all_total", "source" => "memory"),
            reads_from_database: metrics::counter!("dialtone_eventlog_read_all_total", "source" => "database"),
        }
    }

    fn record(&self, started: Instant, result: &Result<AppendOutcome>) {
        self.append_seconds.record(started.elapsed().as_secs_f64());
        match result {
            Ok(_) => self.appends_total.increment(1),
            Err(Error::WrongExpectedVersion { .. }) => self.errors_wrong_version.increment(1),
            Err(Error::IdempotencyConflict { .. }) => self.errors_idempotency.increment(1),
            Err(Error::Invalid(_)) => self.errors_invalid.increment(1),
            Err(Error::Storage(_)) => self.errors_storage.increment(1),
            Err(Error::Closed) => self.errors_closed.increment(1),
            // Blob store errors; an append never returns them.
            Err(
                Error::BlobConflict { .. }
                | Error::InvalidBlobId { .. }
                | Error::BlobTooLarge { .. },
            ) => self.errors_invalid.increment(1),
        }
    }
}

/// The SQLite event store. Share it as a [`crate::SharedStore`]
/// (`Arc::new(store)`).
///
/// Dropping it stops the writer thread after it has committed what was already
/// queued, and joins it (this blocks for at most one commit). Prefer
/// [`EventStore::close`] in async code.
pub struct SqliteStore {
    /// The writer thread and the readers.
    db: Database<Msg>,
    head: watch::Receiver<Position>,
    /// Recent events not yet in `stream_index` (see `tail.rs`).
    tail: SharedTail,
    /// The last committed events (see `recent`).
    recent: SharedRecent,
    stats: Arc<StatsCells>,
    metrics: StoreMetrics,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.db.path())
            .field("head", &*self.head.borrow())
            .field("closed", &self.db.is_closed())
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the log at `path` and starts its writer
    /// thread. Blocking: it sets the file up and reads the last position, so
    /// call it at startup or from `spawn_blocking`.
    pub fn open(path: &Path, options: SqliteOptions) -> Result<SqliteStore> {
        let conn = schema::open_writer_connection(path)?;
        let last_position = schema::last_position(&conn)?;
        let (tail, unindexed) = stream_index::load_tail(&conn)?;
        let tail = SharedTail::new(tail);
        let recent = SharedRecent::default();
        let (head_tx, head_rx) = watch::channel(last_position);
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(StatsCells::default());
        let page_size: i64 = conn
            .pragma_query_value(None, "page_size", |row| row.get(0))
            .map_err(|e| storage_error("read page_size", &e))?;
        stats
            .page_size
            .store(u64::try_from(page_size).unwrap_or(0), Ordering::Relaxed);
        let writer = writer::Writer::new(
            conn,
            path,
            rx,
            head_tx,
            (last_position, tail.clone(), unindexed, recent.clone()),
            &options,
            Arc::clone(&stats),
        );
        let db = Database::start(
            path,
            "event log",
            "eventlog-writer",
            tx,
            options.readers,
            move || writer.run(),
        )?;
        tracing::debug!(path = %path.display(), last_position, "event log opened");
        Ok(SqliteStore {
            db,
            head: head_rx,
            tail,
            recent,
            stats,
            metrics: StoreMetrics::new(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.db.path()
    }

    /// Writer counters since open.
    pub fn stats(&self) -> BatchStats {
        self.stats.snapshot()
    }

    /// Test hook simulating a full disk: caps the database file at `pages`
    /// pages (`PRAGMA max_page_count`; SQLite never goes below the current
    /// size, so 0 means "no growth from now on"). Returns the cap in effect.
    /// Raise it again (e.g. `u32::MAX as u64`) to "free space".
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

    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.db.read(f).await
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome> {
        let started = Instant::now();
        let (reply, rx) = oneshot::channel();
        let request = AppendRequest {
            stream: stream.to_owned(),
            expected,
            events,
            reply,
            sent: started,
        };
        let result = match self.send(Msg::Append(request)) {
            // A dropped reply means the writer stopped before answering.
            Ok(()) => rx.await.unwrap_or(Err(Error::Closed)),
            Err(e) => Err(e),
        };
        self.metrics.record(started, &result);
        result
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>> {
        if max_count == 0 {
            return self.check_open().map(|()| Vec::new());
        }
        let stream = stream.to_owned();
        let tail = self.tail.clone();
        self.read(move |conn| read_stream_on(conn, &tail, &stream, from_version, max_count))
            .await
    }

    async fn load_stream(
        &self,
        stream: &str,
        max_count: usize,
    ) -> Result<(Option<Snapshot>, Vec<RecordedEvent>)> {
        let stream = stream.to_owned();
        let tail = self.tail.clone();
        // One trip to a reader thread instead of two: actors activate this way.
        self.read(move |conn| {
            let snapshot = load_snapshot_on(conn, &stream)?;
            let from = snapshot.as_ref().map_or(0, |s| s.version + 1);
            let events = if max_count == 0 {
                Vec::new()
            } else {
                read_stream_on(conn, &tail, &stream, from, max_count)?
            };
            Ok((snapshot, events))
        })
        .await
    }

    async fn read_all_where(
        &self,
        from_position: Position,
        max_count: usize,
        keep: EventFilter,
    ) -> Result<(Vec<RecordedEvent>, Position)> {
        let head = *self.head.borrow();
        if max_count > 0 && from_position <= head {
            // A follower of the head: only the kept events are copied.
            if let Some(found) = self
                .recent
                .read(|r| r.read_where(from_position, max_count, head, keep))
            {
                self.metrics.reads_from_memory.increment(1);
                return self.check_open().map(|()| found);
            }
        }
        let events = self.read_all(from_position, max_count).await?;
        let last = events.last().map_or(0, |e| e.position);
        Ok((events.into_iter().filter(keep).collect(), last))
    }

    async fn read_all(
        &self,
        from_position: Position,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>> {
        // Read the head before querying: everything up to it is committed, and
        // anything the query could see beyond it is not yet published.
        let head = *self.head.borrow();
        if max_count == 0 || from_position > head {
            // Caught-up subscribers land here on every wake-up: no query.
            return self.check_open().map(|()| Vec::new());
        }
        // A follower of the head: from memory, no query.
        if let Some(events) = self.recent.read(|r| r.read(from_position, max_count, head)) {
            self.metrics.reads_from_memory.increment(1);
            return self.check_open().map(|()| events);
        }
        self.metrics.reads_from_database.increment(1);
        self.read(move |conn| {
            // Position order first (CROSS JOIN fixes the loop order), each
            // stream's name by its id.
            let mut stmt = conn.prepare_cached(
                "SELECT e.position, s.name, e.version, e.event_id, e.type, e.schema_version,
                        e.occurred_at, e.domain_id, e.user_id, e.node, e.correlation_id, e.data
                 FROM events e CROSS JOIN streams s
                 WHERE e.position >= ?1 AND e.position <= ?2 AND s.id = e.stream_id
                 ORDER BY e.position LIMIT ?3",
            )?;
            let rows = stmt.query_map(
                rusqlite::params![
                    to_i64(from_position),
                    to_i64(head),
                    to_i64(max_count as u64)
                ],
                event_from_row,
            )?;
            rows.collect()
        })
        .await
    }

    async fn stream_version(&self, stream: &str) -> Result<Option<u64>> {
        if let Some(last) = self.tail.read(|t| t.last_version(stream)) {
            return self.check_open().map(|()| Some(last));
        }
        let stream = stream.to_owned();
        let tail = self.tail.clone();
        self.read(move |conn| {
            let indexed = conn
                .prepare_cached(schema::STREAM_VERSION)?
                .query_row([&stream], |row| optional_u64_column(row, 0))?;
            // Events committed since the check above are in the tail or
            // (indexed since) already counted.
            Ok(tail.read(|t| t.last_version(&stream)).max(indexed))
        })
        .await
    }

    async fn list_streams(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>> {
        let prefix = prefix.to_owned();
        let after = after.map(str::to_owned);
        let tail = self.tail.clone();
        self.read(move |conn| {
            // Unindexed last versions come from the tail, copied before the
            // database is read (see `tail.rs`).
            let tail = tail.read(|t| t.last_versions());
            // Names sharing a prefix are contiguous in SQLite's BINARY order
            // (bytewise, as Rust orders `str`): seek to the lower bound with the
            // name index, then stop at the first name outside the prefix. The
            // last version is one index seek per row, done as rows are read.
            let mut stmt = match after {
                Some(_) => conn.prepare_cached(
                    "SELECT name, (SELECT MAX(version) FROM stream_index i WHERE i.stream_id = s.id)
                     FROM streams s WHERE name >= ?1 AND name > ?2 ORDER BY name",
                )?,
                None => conn.prepare_cached(
                    "SELECT name, (SELECT MAX(version) FROM stream_index i WHERE i.stream_id = s.id)
                     FROM streams s WHERE name >= ?1 ORDER BY name",
                )?,
            };
            let mut rows = match &after {
                Some(after) => stmt.query(rusqlite::params![prefix, after])?,
                None => stmt.query([&prefix])?,
            };
            let mut out = Vec::new();
            while out.len() < limit {
                let Some(row) = rows.next()? else { break };
                let stream: String = row.get(0)?;
                if !stream.starts_with(prefix.as_str()) {
                    break;
                }
                let indexed = optional_u64_column(row, 1)?;
                // Neither: a stream named after the tail was copied.
                let Some(last_version) = tail.get(&stream).copied().max(indexed) else {
                    continue;
                };
                out.push(StreamInfo {
                    stream,
                    last_version,
                });
            }
            Ok(out)
        })
        .await
    }

    fn head_position(&self) -> Position {
        *self.head.borrow()
    }

    fn watch_head(&self) -> watch::Receiver<Position> {
        let mut head = self.head.clone();
        // Only commits after this call count as changes.
        head.mark_unchanged();
        head
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        // Through the writer: it owns the only read-write connection, and the
        // snapshot then shares the next group commit.
        let (reply, rx) = oneshot::channel();
        self.send(Msg::SaveSnapshot { snapshot, reply })?;
        rx.await.unwrap_or(Err(Error::Closed))
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>> {
        let stream = stream.to_owned();
        self.read(move |conn| load_snapshot_on(conn, &stream)).await
    }

    async fn close(&self) -> Result<()> {
        self.db.close(Msg::Shutdown).await
    }
}

/// A stream's events from `from_version` on (see `EventStore::read_stream`).
fn read_stream_on(
    conn: &Connection,
    tail: &SharedTail,
    stream: &str,
    from_version: u64,
    max_count: usize,
) -> rusqlite::Result<Vec<RecordedEvent>> {
    // The tail first (see `tail.rs`): whatever the database then
    // shows is indexed at least up to where this copy starts.
    let recent = tail.read(|t| t.events_from(stream, from_version, max_count));
    let mut out = Vec::with_capacity(max_count.min(1024));
    // All wanted events are recent (a live actor's usual read):
    // no index lookup.
    let from_tail = recent.first().is_some_and(|&(v, _)| v == from_version);
    if !from_tail {
        // The stream's id from its name, then the index from
        // `from_version` on, each event by its position.
        let mut stmt = conn.prepare_cached(
            "SELECT e.position, s.name, e.version, e.event_id, e.type, e.schema_version,
                    e.occurred_at, e.domain_id, e.user_id, e.node, e.correlation_id, e.data
             FROM streams s CROSS JOIN stream_index i CROSS JOIN events e
             WHERE s.name = ?1 AND i.stream_id = s.id AND i.version >= ?2
               AND e.position = i.position
             ORDER BY i.version LIMIT ?3",
        )?;
        let rows = stmt.query_map(
            rusqlite::params![stream, to_i64(from_version), to_i64(max_count as u64)],
            event_from_row,
        )?;
        for row in rows {
            out.push(row?);
        }
    }
    let next = out.last().map_or(from_version, |e| e.version + 1);
    let mut stmt = conn.prepare_cached(
        "SELECT e.position, s.name, e.version, e.event_id, e.type, e.schema_version,
                e.occurred_at, e.domain_id, e.user_id, e.node, e.correlation_id, e.data
         FROM events e CROSS JOIN streams s WHERE e.position = ?1 AND s.id = e.stream_id",
    )?;
    for &(_, position) in recent.iter().filter(|&&(v, _)| v >= next) {
        if out.len() >= max_count {
            break;
        }
        out.push(stmt.query_row([to_i64(position)], event_from_row)?);
    }
    Ok(out)
}

fn load_snapshot_on(conn: &Connection, stream: &str) -> rusqlite::Result<Option<Snapshot>> {
    conn.prepare_cached(
        "SELECT stream, version, schema_version, data FROM snapshots WHERE stream = ?1",
    )?
    .query_row([stream], |row| {
        Ok(Snapshot {
            stream: row.get(0)?,
            version: u64_column(row, 1)?,
            schema_version: row.get(2)?,
            data: row.get(3)?,
        })
    })
    .optional()
}

/// A duration in nanoseconds, for the stats counters (saturating).
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn uuid_column(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<Uuid>> {
    match row.get_ref(index)? {
        rusqlite::types::ValueRef::Null => Ok(None),
        value => {
            let bytes = value.as_blob()?;
            Uuid::from_slice(bytes).map(Some).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    index,
                    rusqlite::types::Type::Blob,
                    Box::new(e),
                )
            })
        }
    }
}

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<RecordedEvent> {
    Ok(RecordedEvent {
        position: u64_column(row, 0)?,
        stream: row.get(1)?,
        version: u64_column(row, 2)?,
        event_id: uuid_column(row, 3)?.ok_or(rusqlite::Error::InvalidColumnType(
            3,
            "event_id".to_owned(),
            rusqlite::types::Type::Null,
        ))?,
        event_type: row.get(4)?,
        schema_version: row.get(5)?,
        occurred_at_us: row.get(6)?,
        domain_id: uuid_column(row, 7)?,
        user_id: uuid_column(row, 8)?,
        node: row.get(9)?,
        correlation_id: row.get(10)?,
        data: row.get(11)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole conformance suite once, so that a plain `cargo test` (without
    /// the `conformance` feature, hence without the integration tests) runs it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_suite() {
        struct Sqlite;

        #[async_trait]
        impl crate::conformance::Backend for Sqlite {
            type Location = tempfile::TempDir;

            async fn create(&self) -> tempfile::TempDir {
                tempfile::tempdir().unwrap()
            }

            async fn open(&self, dir: &tempfile::TempDir) -> crate::SharedStore {
                let path = dir.path().join("events.db");
                Arc::new(SqliteStore::open(&path, SqliteOptions::new("unit")).unwrap())
            }
        }

        crate::conformance::run_all(&Sqlite).await;
    }

    /// `read_all` near the head is served from the writer's last commits
    /// (`recent`); it must return exactly what the database returns for the
    /// same positions: every envelope field, across streams, multi-event
    /// appends, a deduplicated retry and a rejected append in between.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_near_the_head_match_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let store = SqliteStore::open(&path, SqliteOptions::new("node-a")).unwrap();
        let event = |i: u32| NewEvent {
            event_id: Uuid::new_v4(),
            event_type: format!("Type{}", i % 3),
            schema_version: 1 + i % 2,
            occurred_at_us: 1_700_000_000_000_000 + i64::from(i),
            domain_id: i.is_multiple_of(2).then(Uuid::new_v4),
            user_id: i.is_multiple_of(3).then(Uuid::new_v4),
            correlation_id: (!i.is_multiple_of(4)).then(|| format!("call-{i}")),
            data: format!(r#"{{"i":{i},"text":"é\"x"}}"#),
        };
        let mut i = 0;
        for round in 0..20u32 {
            let stream = format!("user-{}", round % 4);
            let batch: Vec<NewEvent> = (0..=round % 3)
                .map(|_| {
                    i += 1;
                    event(i)
                })
                .collect();
            store
                .append(&stream, ExpectedVersion::Any, batch.clone())
                .await
                .unwrap();
            if round % 5 == 0 {
                // A retry of the same append writes nothing.
                let again = store
                    .append(&stream, ExpectedVersion::Any, batch)
                    .await
                    .unwrap();
                assert!(again.deduplicated);
                // A rejected append writes nothing either.
                let rejected = store
                    .append(&stream, ExpectedVersion::NoStream, vec![event(999)])
                    .await;
                assert!(rejected.is_err());
            }
        }
        let head = store.head_position();
        let ranges = [(1, 1000), (1, 3), (7, 5), (head, 10)];
        let mut from_memory = Vec::new();
        let type1: EventFilter = |e| e.event_type == "Type1";
        let mut filtered_from_memory = Vec::new();
        for (from, max) in ranges {
            from_memory.push(store.read_all(from, max).await.unwrap());
            filtered_from_memory.push(store.read_all_where(from, max, type1).await.unwrap());
        }
        // The filtered reads keep exactly the unfiltered reads' Type1 events
        // and report the last position those looked at.
        for (all, (kept, last)) in from_memory.iter().zip(&filtered_from_memory) {
            let expected: Vec<_> = all.iter().filter(|e| type1(e)).cloned().collect();
            assert_eq!(kept, &expected);
            assert_eq!(*last, all.last().map_or(0, |e| e.position));
        }
        assert!(filtered_from_memory[0].0.len() > 3, "some Type1 events");
        assert_eq!(from_memory[0].len() as u64, head);
        assert!(
            store.recent.read(|r| r.read(1, 1, head)).is_some(),
            "the first reads came from memory"
        );
        store.close().await.unwrap();

        // Reopened: nothing held in memory, everything from the database.
        let store = SqliteStore::open(&path, SqliteOptions::new("node-b")).unwrap();
        assert!(store.recent.read(|r| r.read(1, 1, head)).is_none());
        for ((from, max), expected) in ranges.into_iter().zip(&from_memory) {
            assert_eq!(&store.read_all(from, max).await.unwrap(), expected);
        }
        for ((from, max), expected) in ranges.into_iter().zip(&filtered_from_memory) {
            assert_eq!(
                &store.read_all_where(from, max, type1).await.unwrap(),
                expected
            );
        }
        store.close().await.unwrap();
    }
}

#[cfg(test)]
mod query_plan_tests {
    use rusqlite::StatementStatus;

    use super::*;

    /// The readers' statements are prepared once: re-running them with new
    /// values (a new LIMIT, a new range) must not re-parse the SQL.
    #[test]
    fn reader_statements_are_not_re_prepared_for_new_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        drop(schema::open_writer_connection(&path).unwrap());
        let conn = crate::sqlite_db::open_reader_connection(&path).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT e.position FROM events e CROSS JOIN streams s
                 WHERE e.position >= ?1 AND e.position <= ?2 AND s.id = e.stream_id
                 ORDER BY e.position LIMIT ?3",
            )
            .unwrap();
        for (from, to, limit) in [(1, 10, 5), (3, 90, 7), (10, 11, 500), (1, 2, 1)] {
            let rows: Vec<i64> = stmt
                .query_map([from, to, limit], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            assert!(rows.is_empty());
        }
        assert_eq!(stmt.get_status(StatementStatus::RePrepare), 0);
    }
}
