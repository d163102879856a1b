//! The writer thread: the only read-write connection, group commit.
//!
//! One loop iteration is one batch: open a transaction, run every queued
//! message in it (up to the limits), keep running those that arrive during a
//! short wait for the writers just answered (the gather window), commit (the
//! fsync), publish the new head, answer. Each message is inserted as soon as
//! it is taken, not after the window: with many writers each waiting for its
//! answer, the inserts then overlap the time those writers take to come back
//! instead of adding to it.
//!
//! Requests rejected on their own (wrong expected version, idempotency
//! conflict, invalid) are answered without disturbing the rest of the batch. A
//! storage failure rolls the whole batch back and fails every request in it;
//! the in-memory state is then rebuilt from the database lazily, so the next
//! batch starts from what is really stored.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};
use tokio::sync::{oneshot, watch};

use super::recent::SharedRecent;
use super::tail::{SharedTail, Tail};
use super::{
    optional_u64_column, storage_error, to_i64, u64_column, SqliteOptions, StatsCells, BUSY_TIMEOUT,
};
use crate::{
    AppendOutcome, Error, ExpectedVersion, NewEvent, Position, RecordedEvent, Result, Snapshot,
};

/// A committed event not yet in `stream_index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct IndexEntry {
    stream_id: i64,
    version: u64,
    position: Position,
}

/// Checkpoints. Copying WAL frames into the database file (and fsyncing it)
/// takes tens of milliseconds; done by the writer it would stall every append
/// queued meanwhile (SQLite's automatic checkpoint runs inside COMMIT). So a
/// helper thread with its own connection checkpoints in the background each
/// time the WAL has grown by `CHECKPOINT_STEP_FRAMES` frames; a PASSIVE
/// checkpoint never blocks the writer nor waits for readers. A page changed
/// by many commits in between (a stream's last index page, the table's last
/// page) is written to the database file once per step, so a longer step
/// writes fewer bytes; but the writer's own checkpoint (below) copies up to
/// one step while appends wait. 1,024 frames (4 MiB): against 4,096, the
/// same append throughput within noise, 2 % more bytes written per event,
/// and REGISTER latency at 8,000/s p99.9 8.5 ms instead of 11.8 ms, max 15
/// instead of 27 ms (docs/performance.md, 2026-11-26 session 3).
///
/// The WAL starts over from its beginning only when a write transaction
/// begins while every frame is copied. Under sustained load the background
/// checkpoint never quite catches up with the writer, so once the WAL holds
/// `CHECKPOINT_HARD_FRAMES` frames the writer checkpoints itself, after
/// answering its batch: nobody writes meanwhile, so it copies the frames left
/// (at most about one step) and the next batch starts the WAL over. With 4 KiB pages
/// the WAL stays under about 64 MiB (`journal_size_limit` keeps the file at
/// that size instead of shrinking and regrowing it).
const CHECKPOINT_STEP_FRAMES: i32 = 1024;
const CHECKPOINT_HARD_FRAMES: i32 = 16384;

thread_local! {
    /// Frames in the WAL after the last commit on this thread, reported by
    /// SQLite's WAL hook (a plain `fn`, hence a thread-local: the writer
    /// connection only ever commits on the writer thread).
    static WAL_FRAMES: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
    /// Frames appended to the WAL since open (for the stats).
    static WAL_APPENDED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn record_wal_frames(_: &rusqlite::hooks::Wal, frames: std::ffi::c_int) -> rusqlite::Result<()> {
    let before = WAL_FRAMES.with(|cell| cell.replace(frames));
    // Fewer frames than before: the WAL started over with this commit.
    let appended = if frames >= before {
        frames - before
    } else {
        frames
    };
    WAL_APPENDED.with(|cell| cell.set(cell.get() + u64::try_from(appended).unwrap_or(0)));
    Ok(())
}

/// Bumped when the schema changes; checked at open.
const SCHEMA_VERSION: i64 = 3;

/// Schema 3. What an append writes is what limits throughput (disk write
/// bandwidth and one `pwrite` per WAL page, see ADR 0008), so a commit
/// should dirty as few pages as possible:
/// - `events` is ordered by position (the rowid): a batch appends to the
///   table's last pages. Events carry their stream's integer id, named once
///   in `streams`.
/// - `stream_index` (stream id, version → position) is not written by the
///   commit of the events but later, in large sorted chunks (see `tail.rs`),
///   each written in slices over several batches; `meta.indexed_through`
///   says how far it is complete, `meta.index_partial` that a chunk's
///   slices are only partly written.
/// - `event_id` stays `UNIQUE`: idempotency (invariant 5) must recognise ids
///   stored in any stream. With time-ordered (v7) ids it appends too.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS streams (
    id   INTEGER PRIMARY KEY,
    name TEXT    NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS events (
    position       INTEGER PRIMARY KEY,
    stream_id      INTEGER NOT NULL,
    version        INTEGER NOT NULL,
    event_id       BLOB    NOT NULL,
    type           TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    occurred_at    INTEGER NOT NULL,
    domain_id      BLOB,
    user_id        BLOB,
    node           TEXT    NOT NULL,
    correlation_id TEXT,
    data           TEXT    NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_id ON events (event_id);
CREATE TABLE IF NOT EXISTS stream_index (
    stream_id INTEGER NOT NULL,
    version   INTEGER NOT NULL,
    position  INTEGER NOT NULL,
    PRIMARY KEY (stream_id, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT    PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('indexed_through', 0) ON CONFLICT DO NOTHING;
INSERT INTO meta (key, value) VALUES ('index_partial', 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS snapshots (
    stream         TEXT    PRIMARY KEY,
    version        INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    data           TEXT    NOT NULL
);
";

const INSERT_EVENT: &str = "INSERT INTO events (position, stream_id, version, event_id, type,
    schema_version, occurred_at, domain_id, user_id, node, correlation_id, data)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";

/// A new stream gets the next id (SQLite's rowid: max + 1).
const INSERT_STREAM: &str = "INSERT INTO streams (name) VALUES (?1) RETURNING id";

/// A stream's id and last *indexed* version (`NULL` if none); no row for an
/// unknown stream. The unindexed tail may hold later versions.
const STREAM_STATE: &str =
    "SELECT id, (SELECT MAX(version) FROM stream_index WHERE stream_id = s.id)
    FROM streams s WHERE name = ?1";

/// Last indexed version of a stream by name, `NULL` if none.
pub(super) const STREAM_VERSION: &str = "SELECT MAX(version) FROM stream_index
    WHERE stream_id = (SELECT id FROM streams WHERE name = ?1)";

/// A plain INSERT: the events table no longer has a `(stream, version)`
/// constraint, so this is where a duplicate version (a bug in the writer's
/// version map) would show up, and it must not be papered over.
const INSERT_INDEX: &str =
    "INSERT INTO stream_index (stream_id, version, position) VALUES (?1, ?2, ?3)";

const SET_INDEXED_THROUGH: &str = "UPDATE meta SET value = ?1 WHERE key = 'indexed_through'";

/// 1 while a chunk is partly written (some of its slices committed), 0 once
/// it is whole. An upsert: files made before this row existed lack it.
const SET_INDEX_PARTIAL: &str = "INSERT INTO meta (key, value) VALUES ('index_partial', ?1)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/// A chunk is written in slices of at most this many entries, one slice per
/// batch: a slice of the sorted chunk covers a range of streams, so the
/// slices together dirty about as many index pages as the whole chunk at
/// once, while no single commit carries it all (with 4,096 entries spread
/// over many streams that one commit stalled every append queued behind it
/// for milliseconds: the p99 of REGISTERs, docs/performance.md session 3).
const INDEX_SLICE_ENTRIES: usize = 512;
/// ... and in at least this many slices (small chunks, in tests).
const MIN_INDEX_SLICES: usize = 8;

/// The tail is indexed in chunks of this many events (sorted by stream, so
/// that a stream's entries share its leaf), once it holds twice as many.
/// Larger chunks dirty fewer index pages per event: a stream's entries in a
/// chunk land on one leaf whether it has 2 or 32 of them. 16,384 instead of
/// 4,096 cut the WAL bytes per event by a third and raised the append bench
/// by about a tenth (docs/performance.md session 4); the price is a larger
/// in-memory tail (up to twice this many entries) and more to re-read at open.
pub(super) const DEFAULT_INDEX_CHUNK: usize = 16_384;

/// Schema 1 kept `last_version` in `streams` (files made by early builds).
const MIGRATE_1_TO_2: &str = "
CREATE TABLE streams_v2 (stream TEXT PRIMARY KEY) WITHOUT ROWID;
INSERT INTO streams_v2 (stream) SELECT stream FROM streams;
DROP TABLE streams;
ALTER TABLE streams_v2 RENAME TO streams;
";

/// Schema 2 stored each event's stream name (text) in `events`, indexed with
/// the version. Streams get ids in name order; the events are copied in
/// position order, so positions, versions and ids stay as they were.
const MIGRATE_2_TO_3: &str = "
CREATE TABLE streams_v3 (
    id   INTEGER PRIMARY KEY,
    name TEXT    NOT NULL UNIQUE
);
INSERT INTO streams_v3 (name)
    SELECT stream FROM streams UNION SELECT DISTINCT stream FROM events ORDER BY 1;
CREATE TABLE events_v3 (
    position       INTEGER PRIMARY KEY,
    stream_id      INTEGER NOT NULL,
    version        INTEGER NOT NULL,
    event_id       BLOB    NOT NULL,
    type           TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    occurred_at    INTEGER NOT NULL,
    domain_id      BLOB,
    user_id        BLOB,
    node           TEXT    NOT NULL,
    correlation_id TEXT,
    data           TEXT    NOT NULL
);
INSERT INTO events_v3 (position, stream_id, version, event_id, type, schema_version,
        occurred_at, domain_id, user_id, node, correlation_id, data)
    SELECT e.position, s.id, e.version, e.event_id, e.type, e.schema_version,
        e.occurred_at, e.domain_id, e.user_id, e.node, e.correlation_id, e.data
    FROM events e JOIN streams_v3 s ON s.name = e.stream ORDER BY e.position;
DROP TABLE events;
DROP TABLE streams;
ALTER TABLE streams_v3 RENAME TO streams;
ALTER TABLE events_v3 RENAME TO events;
CREATE UNIQUE INDEX events_by_id ON events (event_id);
CREATE TABLE stream_index (
    stream_id INTEGER NOT NULL,
    version   INTEGER NOT NULL,
    position  INTEGER NOT NULL,
    PRIMARY KEY (stream_id, version)
) WITHOUT ROWID;
INSERT INTO stream_index (stream_id, version, position)
    SELECT stream_id, version, position FROM events ORDER BY stream_id, version;
CREATE TABLE meta (
    key   TEXT    PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value)
    VALUES ('indexed_through', (SELECT COALESCE(MAX(position), 0) FROM events));
";

const UPSERT_SNAPSHOT: &str = "INSERT INTO snapshots (stream, version, schema_version, data)
    VALUES (?1, ?2, ?3, ?4)
    ON CONFLICT (stream) DO UPDATE SET version = excluded.version,
        schema_version = excluded.schema_version, data = excluded.data";

/// Opens the read-write connection and sets the file up. The pragmas are the
/// durability contract: WAL, and `synchronous=FULL` so that a commit returns
/// only once the WAL is fsynced.
pub(super) fn open_writer_connection(path: &Path) -> Result<Connection> {
    let ctx = |what: &str| format!("open {}: {what}", path.display());
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| storage_error(&ctx("open"), &e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| storage_error(&ctx("busy_timeout"), &e))?;
    super::fix_query_plans(&conn).map_err(|e| storage_error(&ctx("query planner"), &e))?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(|e| storage_error(&ctx("journal_mode"), &e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Storage(ctx(&format!(
            "WAL mode refused (journal_mode is {mode})"
        ))));
    }
    // FULL (2): in WAL mode the WAL is synced at every commit.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| storage_error(&ctx("synchronous"), &e))?;
    let synchronous: i64 = conn
        .pragma_query_value(None, "synchronous", |row| row.get(0))
        .map_err(|e| storage_error(&ctx("synchronous"), &e))?;
    if synchronous != 2 {
        return Err(Error::Storage(ctx("synchronous=FULL refused")));
    }
    // The writer checkpoints by itself, after answering (see `Writer::run`),
    // so SQLite's automatic checkpoint inside COMMIT is off. The WAL file is
    // kept (not truncated) up to the size limit, so that commits overwrite
    // allocated blocks instead of growing the file. A modest page cache: SQLite
    // walks it at the end of every transaction, and the OS caches the rest.
    conn.execute_batch(
        "PRAGMA wal_autocheckpoint = 0;
         PRAGMA journal_size_limit = 100663296;
         PRAGMA cache_size = -8192;
         PRAGMA temp_store = MEMORY;",
    )
    .map_err(|e| storage_error(&ctx("pragmas"), &e))?;
    conn.set_prepared_statement_cache_capacity(32);

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
        1 | 2 => {
            let started = Instant::now();
            tracing::info!(path = %path.display(), from = version, to = SCHEMA_VERSION,
                "migrating the event log schema (copies every event once)");
            let steps = if version == 1 { MIGRATE_1_TO_2 } else { "" };
            conn.execute_batch(&format!(
                "BEGIN; {steps} {MIGRATE_2_TO_3} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
            .map_err(|e| {
                // Nothing was changed: the transaction is rolled back.
                let _ = conn.execute_batch("ROLLBACK");
                storage_error(
                    &ctx(&format!("migrate schema {version} to {SCHEMA_VERSION}")),
                    &e,
                )
            })?;
            tracing::info!(path = %path.display(),
                millis = started.elapsed().as_millis() as u64, "event log schema migrated");
        }
        other => {
            return Err(Error::Storage(ctx(&format!(
                "unknown schema version {other} (this build knows {SCHEMA_VERSION})"
            ))))
        }
    }
    Ok(conn)
}

/// A value of the `meta` table; `None` when the row is missing (files made
/// before it existed).
fn meta_value(conn: &Connection, key: &str) -> rusqlite::Result<Option<u64>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
        u64_column(row, 0)
    })
    .optional()
}

/// After a crash in the middle of a chunk's slices, `stream_index` holds
/// rows beyond `indexed_through`: they go, and the chunk is written again
/// from the tail (rows are never inserted twice: `INSERT_INDEX` must fail
/// on a duplicate). Only then does `stream_index` need a full scan, as there
/// is no index by position.
fn drop_partial_chunk(conn: &Connection) -> rusqlite::Result<()> {
    if meta_value(conn, "index_partial")?.unwrap_or(0) == 0 {
        return Ok(());
    }
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         DELETE FROM stream_index
             WHERE position > (SELECT value FROM meta WHERE key = 'indexed_through');
         UPDATE meta SET value = 0 WHERE key = 'index_partial';
         COMMIT;",
    )
}

/// Rebuilds the unindexed tail: the events after `meta.indexed_through`.
/// Returns it with the same events as `(stream id, version, position)`.
pub(super) fn load_tail(conn: &Connection) -> Result<(Tail, Vec<IndexEntry>)> {
    drop_partial_chunk(conn).map_err(|e| storage_error("drop a partly written index chunk", &e))?;
    let through = meta_value(conn, "indexed_through")
        .and_then(|value| value.ok_or(rusqlite::Error::QueryReturnedNoRows))
        .map_err(|e| storage_error("read indexed_through", &e))?;
    let mut tail = Tail::new(through);
    let mut entries = Vec::new();
    let mut stmt = conn
        .prepare(
            "SELECT e.position, e.stream_id, e.version, s.name
             FROM events e CROSS JOIN streams s
             WHERE e.position > ?1 AND s.id = e.stream_id ORDER BY e.position",
        )
        .map_err(|e| storage_error("read the unindexed tail", &e))?;
    let mut rows = stmt
        .query([to_i64(through)])
        .map_err(|e| storage_error("read the unindexed tail", &e))?;
    while let Some(row) = rows
        .next()
        .map_err(|e| storage_error("read the unindexed tail", &e))?
    {
        let read = || -> rusqlite::Result<_> {
            Ok((
                u64_column(row, 0)?,
                row.get::<_, i64>(1)?,
                u64_column(row, 2)?,
                row.get_ref(3)?.as_str()?.to_owned(),
            ))
        };
        let (position, stream_id, version, name) =
            read().map_err(|e| storage_error("read the unindexed tail", &e))?;
        tail.push(&name, version, position, 1);
        entries.push(IndexEntry {
            stream_id,
            version,
            position,
        });
    }
    Ok((tail, entries))
}

pub(super) fn last_position(conn: &Connection) -> Result<Position> {
    conn.query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |row| {
        u64_column(row, 0)
    })
    .map_err(|e| storage_error("read last position", &e))
}

/// A message to the writer.
pub(super) enum Msg {
    Append(AppendRequest),
    SaveSnapshot {
        snapshot: Snapshot,
        reply: oneshot::Sender<Result<()>>,
    },
    #[cfg(any(test, feature = "conformance"))]
    SetMaxPageCount {
        pages: u64,
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Commit what is queued, then stop.
    Shutdown,
}

pub(super) struct AppendRequest {
    pub stream: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
    pub reply: oneshot::Sender<Result<AppendOutcome>>,
    /// When the caller sent it: the time until the writer takes it is the
    /// queue wait (`dialtone_eventlog_queue_seconds`).
    pub sent: Instant,
}

/// An answer waiting for the commit.
enum Reply {
    Append(
        oneshot::Sender<Result<AppendOutcome>>,
        Result<AppendOutcome>,
    ),
    Unit(oneshot::Sender<Result<()>>, Result<()>),
    #[cfg(any(test, feature = "conformance"))]
    Pages(oneshot::Sender<Result<u64>>, Result<u64>),
}

impl Reply {
    fn fail(&mut self, message: &str) {
        match self {
            Reply::Append(_, r) => *r = Err(Error::Storage(message.to_owned())),
            Reply::Unit(_, r) => *r = Err(Error::Storage(message.to_owned())),
            // The pragma is not transactional: it took effect regardless.
            #[cfg(any(test, feature = "conformance"))]
            Reply::Pages(..) => {}
        }
    }

    /// Sends the answer; true for an append request.
    fn send(self) -> bool {
        // A failed send means the caller went away (its future was dropped):
        // nothing to do, the outcome is stored or not regardless.
        match self {
            Reply::Append(tx, r) => {
                let _ = tx.send(r);
                true
            }
            Reply::Unit(tx, r) => {
                let _ = tx.send(r);
                false
            }
            #[cfg(any(test, feature = "conformance"))]
            Reply::Pages(tx, r) => {
                let _ = tx.send(r);
                false
            }
        }
    }
}

/// The open transaction: what it holds so far.
struct Batch {
    events: usize,
    appends: usize,
    /// The first storage failure aborts the batch: later messages are only
    /// answered (with that failure).
    outcome: Result<(), Fatal>,
    first_position: Position,
    /// Time spent running messages (not waiting for them).
    insert_time: Duration,
}

/// A failure that aborts the whole batch.
struct Fatal(String);

impl Fatal {
    fn new(context: &str, e: &rusqlite::Error) -> Self {
        match storage_error(context, e) {
            Error::Storage(message) => Fatal(message),
            other => Fatal(other.to_string()),
        }
    }
}

/// The background checkpoint thread; stops when `nudge` is dropped.
struct Checkpointer {
    nudge: mpsc::SyncSender<()>,
    handle: std::thread::JoinHandle<()>,
}

impl Checkpointer {
    fn spawn(path: &Path) -> Result<Self> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| storage_error("open checkpoint connection", &e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| storage_error("open checkpoint connection", &e))?;
        // One pending nudge is enough: a checkpoint copies everything there is.
        let (nudge, rx) = mpsc::sync_channel::<()>(1);
        let handle = std::thread::Builder::new()
            .name("eventlog-checkpoint".to_owned())
            .spawn(move || {
                while rx.recv().is_ok() {
                    if let Err(e) = checkpoint(&conn) {
                        tracing::warn!(error = %e, "background checkpoint failed");
                    }
                }
            })
            .map_err(|e| Error::Storage(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Self { nudge, handle })
    }

    fn stop(self) {
        drop(self.nudge);
        if self.handle.join().is_err() {
            tracing::error!("event log checkpoint thread panicked");
        }
    }
}

/// Runs a PASSIVE checkpoint (it copies what it can without waiting for
/// anyone); returns whether every WAL frame is now in the database file.
fn checkpoint(conn: &Connection) -> rusqlite::Result<bool> {
    let started = Instant::now();
    let (busy, frames, copied) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, i64>(2)?,
        ))
    })?;
    tracing::debug!(
        busy,
        frames,
        copied,
        micros = started.elapsed().as_micros() as u64,
        "checkpoint"
    );
    Ok(busy == 0 && copied >= frames)
}

pub(super) struct Writer {
    conn: Connection,
    path: std::path::PathBuf,
    rx: mpsc::Receiver<Msg>,
    head: watch::Sender<Position>,
    /// Id and last version of each stream seen since open. Filled lazily
    /// from the database; cleared after a failed batch.
    streams: HashMap<String, StreamState>,
    /// Committed events not yet in `stream_index`, in position order, and
    /// the same shared with the readers by stream name.
    unindexed: Vec<IndexEntry>,
    tail: SharedTail,
    /// Appends of the current batch: (stream, id, first version, first
    /// position, count); they join the tail once committed.
    batch_written: Vec<(String, i64, u64, Position, u64)>,
    index_chunk: usize,
    /// The chunk being written in slices (the first `chunk.len()` entries of
    /// `unindexed`, sorted by stream), and how many of its entries are
    /// committed so far.
    chunk: Vec<IndexEntry>,
    chunk_done: usize,
    next_position: Position,
    node: String,
    /// The last committed events, for readers following the head.
    recent: SharedRecent,
    /// The events of the open batch, for `recent` once committed.
    batch_recent: Vec<RecordedEvent>,
    max_events: usize,
    max_appends: usize,
    max_gather: Duration,
    last_commit: Duration,
    /// WAL size (frames) at which to checkpoint next.
    next_checkpoint: i32,
    /// Appends written by the current batch (for the stats).
    batch_appends: u64,
    /// Set once a `Shutdown` arrived: drain the queue, then stop.
    stopping: bool,
    replies: Vec<Reply>,
    stats: Arc<StatsCells>,
    batch_events: metrics::Histogram,
    commit_seconds: metrics::Histogram,
    queue_seconds: metrics::Histogram,
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        path: &Path,
        rx: mpsc::Receiver<Msg>,
        head: watch::Sender<Position>,
        // What the log holds: its last position and unindexed tail; and
        // the last committed events, shared with the readers.
        (last_position, tail, unindexed, recent): (
            Position,
            SharedTail,
            Vec<IndexEntry>,
            SharedRecent,
        ),
        options: &SqliteOptions,
        stats: Arc<StatsCells>,
    ) -> Self {
        Self {
            conn,
            path: path.to_owned(),
            rx,
            head,
            streams: HashMap::new(),
            unindexed,
            tail,
            batch_written: Vec::new(),
            recent,
            batch_recent: Vec::new(),
            index_chunk: options.index_chunk_events.max(1),
            chunk: Vec::new(),
            chunk_done: 0,
            next_position: last_position + 1,
            node: options.node.clone(),
            max_events: options.max_batch_events.max(1),
            max_appends: options.max_batch_appends.max(1),
            max_gather: options.max_gather_delay,
            last_commit: Duration::ZERO,
            next_checkpoint: CHECKPOINT_STEP_FRAMES,
            batch_appends: 0,
            stopping: false,
            replies: Vec::new(),
            stats,
            batch_events: metrics::histogram!("dialtone_eventlog_batch_events"),
            commit_seconds: metrics::histogram!("dialtone_eventlog_commit_seconds"),
            queue_seconds: metrics::histogram!("dialtone_eventlog_queue_seconds"),
        }
    }

    pub(super) fn run(mut self) {
        self.conn.wal_hook(Some(record_wal_frames));
        let checkpointer = match Checkpointer::spawn(&self.path) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "no background checkpoints; the writer will do them");
                None
            }
        };
        // Messages taken off the queue during a commit, for the next batch.
        let mut pending: VecDeque<Msg> = VecDeque::new();
        // How many appends we expect in the next batch: those just answered
        // (their writers usually come straight back) plus those pending.
        let mut expected = 0;
        loop {
            let first = match pending.pop_front() {
                Some(msg) => msg,
                // Last drain: appends sent before the senders saw `closed`.
                None if self.stopping => match self.rx.try_recv() {
                    Ok(msg) => msg,
                    Err(_) => break,
                },
                None => match self.rx.recv() {
                    Ok(msg) => msg,
                    // Every sender is gone: the store was dropped.
                    Err(mpsc::RecvError) => break,
                },
            };
            if self.take_shutdown(&first) {
                continue;
            }
            let mut batch = self.begin_batch();
            self.add(&mut batch, first);
            while !self.is_full(&batch) {
                let Some(msg) = pending.pop_front() else {
                    break;
                };
                self.add(&mut batch, msg);
            }
            self.fill(&mut batch);
            self.gather(&mut batch, expected);
            self.finish_batch(batch);
            // Take what queued up during the commit *before* answering, so that
            // `expected` counts those and the ones about to be answered.
            while pending.len() < self.max_appends {
                match self.rx.try_recv() {
                    Ok(msg) => pending.push_back(msg),
                    Err(_) => break,
                }
            }
            let mut answered = 0;
            for reply in self.replies.drain(..) {
                answered += usize::from(reply.send());
            }
            let queued = pending
                .iter()
                .filter(|msg| matches!(msg, Msg::Append(_)))
                .count();
            expected = answered + queued;
            // After answering, so that no acknowledgement waits for it.
            self.maybe_checkpoint(checkpointer.as_ref());
        }
        self.index_everything();
        // The checkpoint connection goes first, so that the writer's is the
        // last one and its close can checkpoint and remove the WAL.
        if let Some(checkpointer) = checkpointer {
            checkpointer.stop();
        }
        // Closing the connection checkpoints and removes the WAL when no
        // reader is left; errors here lose nothing (everything is committed).
        if let Err((_, e)) = self.conn.close() {
            tracing::warn!(error = %e, "closing the event log connection failed");
        }
        tracing::debug!("event log writer stopped");
    }

    /// Inserts the next slice of the chunk being indexed into `stream_index`
    /// inside the open transaction, so that it shares the batch's commit (and
    /// fsync); with `all`, the rest of the chunk. A chunk is the oldest
    /// `index_chunk` entries of the tail, sorted by stream; `indexed_through`
    /// moves past it in the transaction of its last slice. Returns how much
    /// of the chunk is written once that commit succeeds. Each event is
    /// indexed exactly once: the tail only holds events after
    /// `indexed_through`, and a chunk cut short by a crash is removed at the
    /// next open (`drop_partial_chunk`) before it is written again.
    fn write_index_slice(&mut self, all: bool) -> rusqlite::Result<Option<usize>> {
        let started = Instant::now();
        if self.chunk.is_empty() {
            let n = self.unindexed.len().min(self.index_chunk);
            if n == 0 {
                return Ok(None);
            }
            self.chunk = self.unindexed[..n].to_vec();
            self.chunk.sort_unstable();
            self.chunk_done = 0;
        }
        let slice = if all {
            self.chunk.len()
        } else {
            self.index_chunk
                .div_ceil(MIN_INDEX_SLICES)
                .min(INDEX_SLICE_ENTRIES)
        };
        let upto = (self.chunk_done + slice).min(self.chunk.len());
        {
            let mut insert = self.conn.prepare_cached(INSERT_INDEX)?;
            for entry in &self.chunk[self.chunk_done..upto] {
                insert.execute(params![
                    entry.stream_id,
                    to_i64(entry.version),
                    to_i64(entry.position)
                ])?;
            }
        }
        if upto == self.chunk.len() {
            self.conn
                .prepare_cached(SET_INDEXED_THROUGH)?
                .execute([to_i64(self.chunk_last_position())])?;
            if self.chunk_done > 0 {
                self.conn.prepare_cached(SET_INDEX_PARTIAL)?.execute([0])?;
            }
        } else if self.chunk_done == 0 {
            self.conn.prepare_cached(SET_INDEX_PARTIAL)?.execute([1])?;
        }
        self.stats
            .index_nanos
            .fetch_add(nanos(started.elapsed()), Ordering::Relaxed);
        Ok(Some(upto))
    }

    /// The position `indexed_through` takes once the chunk is whole: that of
    /// its last entry in log order (the chunk is a prefix of `unindexed`,
    /// which only grows at its end until the chunk is drained).
    fn chunk_last_position(&self) -> Position {
        self.chunk
            .len()
            .checked_sub(1)
            .map_or(0, |i| self.unindexed[i].position)
    }

    /// The slice written by `write_index_slice` is committed.
    fn index_committed(&mut self, upto: usize) {
        self.chunk_done = upto;
        if upto == self.chunk.len() {
            let last = self.chunk_last_position();
            self.unindexed.drain(..self.chunk.len());
            self.tail.write(|tail| tail.indexed(last));
            self.chunk.clear();
            self.chunk_done = 0;
        }
    }

    /// At close: indexes the whole tail (own transactions), so that the next
    /// open has nothing to rebuild. A failure loses nothing.
    fn index_everything(&mut self) {
        while !self.unindexed.is_empty() {
            let written = (|| -> rusqlite::Result<_> {
                self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
                let written = self.write_index_slice(true)?;
                self.conn.prepare_cached("COMMIT")?.execute([])?;
                Ok(written)
            })();
            match written {
                Ok(Some(upto)) => self.index_committed(upto),
                Ok(None) => break,
                Err(e) => {
                    self.rollback();
                    tracing::warn!(error = %e, "indexing the event log tail failed");
                    break;
                }
            }
        }
    }

    /// After a commit: nudges the background checkpointer, or, once the WAL
    /// is too long (or without a checkpointer), checkpoints here. A failure
    /// loses nothing (the frames stay in the WAL) and is retried later.
    fn maybe_checkpoint(&mut self, checkpointer: Option<&Checkpointer>) {
        let frames = WAL_FRAMES.with(std::cell::Cell::get);
        if frames < self.next_checkpoint - CHECKPOINT_STEP_FRAMES {
            // The WAL started over.
            self.next_checkpoint = CHECKPOINT_STEP_FRAMES;
        }
        if frames < self.next_checkpoint {
            return;
        }
        if frames < CHECKPOINT_HARD_FRAMES {
            self.next_checkpoint = (frames / CHECKPOINT_STEP_FRAMES + 1) * CHECKPOINT_STEP_FRAMES;
            if let Some(checkpointer) = checkpointer {
                // Full means a nudge is already pending: nothing to add.
                let _ = checkpointer.nudge.try_send(());
                return;
            }
        }
        let started = Instant::now();
        match checkpoint(&self.conn) {
            // The next commit starts the WAL over; until then, don't retry.
            Ok(true) => {
                WAL_FRAMES.with(|cell| cell.set(0));
                self.next_checkpoint = CHECKPOINT_STEP_FRAMES;
            }
            // Readers on old snapshots, or the background checkpoint busy:
            // retried after the next commit.
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "event log checkpoint failed"),
        }
        self.stats
            .checkpoint_nanos
            .fetch_add(nanos(started.elapsed()), Ordering::Relaxed);
    }

    /// A `Shutdown` is never part of a batch: it only says to drain the
    /// queue and stop. True if `msg` was one.
    fn take_shutdown(&mut self, msg: &Msg) -> bool {
        if let Msg::Shutdown = msg {
            self.stopping = true;
            true
        } else {
            false
        }
    }

    /// Runs one message in the open transaction (or, once the batch failed,
    /// only queues its answer).
    fn add(&mut self, batch: &mut Batch, msg: Msg) {
        if self.take_shutdown(&msg) {
            return;
        }
        if let Msg::Append(req) = &msg {
            batch.events += req.events.len();
            batch.appends += 1;
            self.queue_seconds.record(req.sent.elapsed().as_secs_f64());
        }
        if batch.outcome.is_ok() {
            let started = Instant::now();
            batch.outcome = self.apply(msg);
            batch.insert_time += started.elapsed();
        } else {
            // Every request still gets its answer (the failure, at the end).
            self.skip(msg);
        }
    }

    fn is_full(&self, batch: &Batch) -> bool {
        batch.events >= self.max_events || batch.appends >= self.max_appends
    }

    /// Runs queued messages without waiting.
    fn fill(&mut self, batch: &mut Batch) {
        while !self.is_full(batch) {
            match self.rx.try_recv() {
                Ok(msg) => self.add(batch, msg),
                Err(_) => break,
            }
        }
    }

    /// The gather window: waits briefly for the writers we expect back.
    fn gather(&mut self, batch: &mut Batch, expected: usize) {
        if self.stopping || batch.appends >= expected || self.max_gather.is_zero() {
            return;
        }
        let window = self.max_gather.min(self.last_commit / 2);
        let deadline = Instant::now() + window;
        while batch.appends < expected && !self.is_full(batch) && !self.stopping {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            match self.rx.recv_timeout(left) {
                Ok(msg) => {
                    self.add(batch, msg);
                    self.fill(batch);
                }
                Err(_) => break,
            }
        }
    }

    /// Opens the transaction of a new batch.
    fn begin_batch(&mut self) -> Batch {
        self.batch_appends = 0;
        self.batch_written.clear();
        self.batch_recent.clear();
        Batch {
            events: 0,
            appends: 0,
            outcome: self.begin(),
            first_position: self.next_position,
            insert_time: Duration::ZERO,
        }
    }

    /// Commits the batch (or rolls it back) and leaves the answers in
    /// `self.replies`.
    fn finish_batch(&mut self, batch: Batch) {
        let Batch {
            mut outcome,
            first_position,
            insert_time,
            ..
        } = batch;
        let started = Instant::now();
        // A slice of a chunk of the tail joins this commit once enough waits.
        let mut indexed = None;
        if outcome.is_ok()
            && (!self.chunk.is_empty() || self.unindexed.len() >= 2 * self.index_chunk)
        {
            match self.write_index_slice(false) {
                Ok(upto) => indexed = upto,
                Err(e) => outcome = Err(Fatal::new("index the tail", &e)),
            }
        }
        let written = insert_time + started.elapsed();
        let commit_started = Instant::now();
        if outcome.is_ok() {
            outcome = self.commit();
        }
        let committing = commit_started.elapsed();
        let done = written + committing;
        self.stats
            .write_nanos
            .fetch_add(nanos(written), Ordering::Relaxed);
        self.stats
            .commit_nanos
            .fetch_add(nanos(committing), Ordering::Relaxed);
        self.commit_seconds.record(committing.as_secs_f64());

        match outcome {
            Ok(()) => {
                if let Some(upto) = indexed {
                    self.index_committed(upto);
                }
                let committed = self.next_position - first_position;
                self.last_commit = done;
                if committed > 0 {
                    // The tail first: a reader who sees the new head must
                    // find these events in the tail or in the index.
                    let written = std::mem::take(&mut self.batch_written);
                    self.tail.write(|tail| {
                        for (stream, _, version, position, count) in &written {
                            tail.push(stream, *version, *position, *count);
                        }
                    });
                    for (_, stream_id, version, position, count) in &written {
                        self.unindexed.extend((0..*count).map(|i| IndexEntry {
                            stream_id: *stream_id,
                            version: version + i,
                            position: position + i,
                        }));
                    }
                    self.batch_written = written;
                    // Before the head moves, like the tail.
                    self.recent.write(|r| r.push(self.batch_recent.drain(..)));
                    let head = self.next_position - 1;
                    self.head.send_replace(head);
                    self.batch_events.record(committed as f64);
                    self.stats.events.fetch_add(committed, Ordering::Relaxed);
                    self.stats
                        .max_batch_events
                        .fetch_max(committed, Ordering::Relaxed);
                }
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .wal_frames
                    .store(WAL_APPENDED.with(std::cell::Cell::get), Ordering::Relaxed);
                self.stats
                    .appends
                    .fetch_add(self.batch_appends, Ordering::Relaxed);
                tracing::debug!(
                    events = committed,
                    requests = self.replies.len(),
                    micros = self.last_commit.as_micros() as u64,
                    "batch committed"
                );
            }
            Err(Fatal(message)) => {
                let message = explain_storage_failure(&self.path, message);
                self.rollback();
                // The database is the truth again: forget what this batch did.
                self.batch_recent.clear();
                self.next_position = first_position;
                self.streams.clear();
                self.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %message, requests = self.replies.len(),
                    "event log batch rolled back");
                for reply in &mut self.replies {
                    reply.fail(&message);
                }
            }
        }
    }

    fn begin(&mut self) -> Result<(), Fatal> {
        self.conn
            .prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut stmt| stmt.execute([]))
            .map(drop)
            .map_err(|e| Fatal::new("begin transaction", &e))
    }

    fn commit(&mut self) -> Result<(), Fatal> {
        self.conn
            .prepare_cached("COMMIT")
            .and_then(|mut stmt| stmt.execute([]))
            .map(drop)
            .map_err(|e| Fatal::new("commit", &e))
    }

    fn rollback(&mut self) {
        // SQLite may already have rolled back by itself (disk full, IO error).
        if !self.conn.is_autocommit() {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::error!(error = %e, "event log rollback failed");
            }
        }
    }

    /// Applies one message inside the open transaction; queues its answer.
    /// An `Err` aborts the batch (the answers queued so far get replaced).
    fn apply(&mut self, msg: Msg) -> Result<(), Fatal> {
        match msg {
            Msg::Append(req) => {
                let result = self.append(&req);
                if let Ok(outcome) = &result {
                    if !outcome.deduplicated {
                        self.hold_recent(req.stream, req.events, outcome);
                    }
                }
                self.answer(result, |answer| Reply::Append(req.reply, answer))
            }
            Msg::SaveSnapshot { snapshot, reply } => {
                let result = self.save_snapshot(&snapshot);
                self.answer(result, |answer| Reply::Unit(reply, answer))
            }
            #[cfg(any(test, feature = "conformance"))]
            Msg::SetMaxPageCount { pages, reply } => {
                let answer = self
                    .conn
                    // SQLite reads 0 as "just tell me"; 1 is raised to the
                    // current size, which is what 0 means to our caller.
                    .pragma_update_and_check(None, "max_page_count", to_i64(pages.max(1)), |row| {
                        u64_column(row, 0)
                    })
                    .map_err(|e| storage_error("max_page_count", &e));
                self.replies.push(Reply::Pages(reply, answer));
                Ok(())
            }
            // Handled in `push`; never queued in a batch.
            Msg::Shutdown => Ok(()),
        }
    }

    /// Queues an answer for a request not run because the batch already
    /// failed; `fail` fills in the error.
    fn skip(&mut self, msg: Msg) {
        let failed = || Error::Storage(String::new());
        match msg {
            Msg::Append(req) => self.replies.push(Reply::Append(req.reply, Err(failed()))),
            Msg::SaveSnapshot { reply, .. } => self.replies.push(Reply::Unit(reply, Err(failed()))),
            // Not transactional: run it anyway.
            #[cfg(any(test, feature = "conformance"))]
            msg @ Msg::SetMaxPageCount { .. } => {
                let _ = self.apply(msg);
            }
            Msg::Shutdown => {}
        }
    }

    /// Keeps the events of an append that went into the open batch, moved
    /// out of its request, for `recent` once the batch commits.
    fn hold_recent(&mut self, stream: String, events: Vec<NewEvent>, outcome: &AppendOutcome) {
        let first_version = outcome.last_version + 1 - events.len() as u64;
        let node = &self.node;
        self.batch_recent
            .extend(events.into_iter().enumerate().map(|(i, ev)| RecordedEvent {
                position: outcome.first_position + i as u64,
                stream: stream.clone(),
                version: first_version + i as u64,
                event_id: ev.event_id,
                event_type: ev.event_type,
                schema_version: ev.schema_version,
                occurred_at_us: ev.occurred_at_us,
                domain_id: ev.domain_id,
                user_id: ev.user_id,
                node: node.clone(),
                correlation_id: ev.correlation_id,
                data: ev.data,
            }));
    }

    /// Queues the answer of one request; a storage failure is also returned,
    /// to abort the batch.
    fn answer<T>(
        &mut self,
        result: Result<T, AppendFailure>,
        reply: impl FnOnce(Result<T>) -> Reply,
    ) -> Result<(), Fatal> {
        let (answer, fatal) = match result {
            Ok(value) => (Ok(value), None),
            Err(AppendFailure::Rejected(e)) => (Err(e), None),
            Err(AppendFailure::Fatal(message)) => {
                (Err(Error::Storage(message.clone())), Some(Fatal(message)))
            }
        };
        self.replies.push(reply(answer));
        fatal.map_or(Ok(()), Err)
    }

    fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), AppendFailure> {
        if snapshot.stream.is_empty() {
            return Err(AppendFailure::Rejected(Error::Invalid(
                "snapshot of an empty stream name".to_owned(),
            )));
        }
        self.conn
            .prepare_cached(UPSERT_SNAPSHOT)
            .and_then(|mut stmt| {
                stmt.execute(params![
                    snapshot.stream,
                    to_i64(snapshot.version),
                    snapshot.schema_version,
                    snapshot.data
                ])
            })
            .map(drop)
            .map_err(|e| AppendFailure::fatal("save snapshot", &e))
    }

    fn stream_state(&mut self, stream: &str) -> Result<StreamState, AppendFailure> {
        if let Some(state) = self.streams.get(stream) {
            return Ok(*state);
        }
        let state = self
            .conn
            .prepare_cached(STREAM_STATE)
            .and_then(|mut stmt| {
                stmt.query_row([stream], |row| {
                    Ok(StreamState {
                        id: Some(row.get(0)?),
                        last: optional_u64_column(row, 1)?,
                    })
                })
                .optional()
            })
            .map_err(|e| AppendFailure::fatal("read stream version", &e))?
            .unwrap_or_default();
        let state = StreamState {
            last: self
                .tail
                .read(|tail| tail.last_version(stream))
                .or(state.last),
            ..state
        };
        self.streams.insert(stream.to_owned(), state);
        Ok(state)
    }

    fn append(&mut self, req: &AppendRequest) -> Result<AppendOutcome, AppendFailure> {
        validate(req).map_err(AppendFailure::Rejected)?;
        let state = self.stream_state(&req.stream)?;
        let current = state.last;
        let version_ok = match req.expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current.is_none(),
            ExpectedVersion::StreamExists => current.is_some(),
            ExpectedVersion::Exact(v) => current == Some(v),
        };
        if !version_ok {
            // A retry of an append that went through carries an expected
            // version that no longer matches: idempotency comes first.
            return match self.find_duplicate(req, state.id)? {
                Some(result) => result,
                None => Err(AppendFailure::Rejected(Error::WrongExpectedVersion {
                    stream: req.stream.clone(),
                    expected: req.expected,
                    actual: current,
                })),
            };
        }

        // A new stream is named first (its id is needed by every row); the
        // name is removed again if the events turn out to be duplicates.
        let (stream_id, new_stream) = match state.id {
            Some(id) => (id, false),
            None => {
                let id = self
                    .conn
                    .prepare_cached(INSERT_STREAM)
                    .and_then(|mut stmt| stmt.query_row([&req.stream], |row| row.get::<_, i64>(0)))
                    .map_err(|e| AppendFailure::fatal("record new stream", &e))?;
                (id, true)
            }
        };
        let first_position = self.next_position;
        let first_version = current.map_or(0, |v| v + 1);
        // The fast path does not look the event ids up: the UNIQUE index does
        // it while inserting, and only a violation sends us to the slow path.
        let mut violation = None;
        {
            let mut stmt = self
                .conn
                .prepare_cached(INSERT_EVENT)
                .map_err(|e| AppendFailure::fatal("prepare insert", &e))?;
            for (i, ev) in req.events.iter().enumerate() {
                let offset = i as u64;
                let inserted = stmt.execute(params![
                    to_i64(first_position + offset),
                    stream_id,
                    to_i64(first_version + offset),
                    ev.event_id.as_bytes().as_slice(),
                    ev.event_type,
                    ev.schema_version,
                    ev.occurred_at_us,
                    ev.domain_id.as_ref().map(|id| id.as_bytes().as_slice()),
                    ev.user_id.as_ref().map(|id| id.as_bytes().as_slice()),
                    self.node,
                    ev.correlation_id,
                    ev.data,
                ]);
                match inserted {
                    Ok(_) => {}
                    Err(e) if is_constraint_violation(&e) => {
                        violation = Some((i, e));
                        break;
                    }
                    Err(e) => return Err(AppendFailure::fatal("insert event", &e)),
                }
            }
        }
        if let Some((inserted, error)) = violation {
            if inserted > 0 {
                // Undo this request's rows; earlier requests of the batch stay.
                self.conn
                    .prepare_cached("DELETE FROM events WHERE position >= ?1")
                    .and_then(|mut stmt| stmt.execute([to_i64(first_position)]))
                    .map_err(|e| AppendFailure::fatal("undo partial insert", &e))?;
            }
            if new_stream {
                self.conn
                    .prepare_cached("DELETE FROM streams WHERE id = ?1")
                    .and_then(|mut stmt| stmt.execute([stream_id]))
                    .map_err(|e| AppendFailure::fatal("undo new stream", &e))?;
            }
            return match self.find_duplicate(req, state.id)? {
                Some(result) => result,
                // Not an event id: a position already taken, which means the
                // file changed under us. Fail the batch; the map is reloaded
                // afterwards.
                None => Err(AppendFailure::fatal("insert event", &error)),
            };
        }

        let count = req.events.len() as u64;
        let last_version = first_version + count - 1;
        if let Some(slot) = self.streams.get_mut(req.stream.as_str()) {
            *slot = StreamState {
                id: Some(stream_id),
                last: Some(last_version),
            };
        }
        self.batch_written.push((
            req.stream.clone(),
            stream_id,
            first_version,
            first_position,
            count,
        ));
        self.next_position += count;
        self.batch_appends += 1;
        Ok(AppendOutcome {
            first_position,
            last_position: first_position + count - 1,
            last_version,
            deduplicated: false,
        })
    }

    /// Invariant 5. `None`: none of the ids is stored. Otherwise either the
    /// original outcome (every id stored, in this stream, at consecutive
    /// versions, in this order) or an idempotency conflict.
    /// `stream_id`: the request's stream, `None` if it has no id yet.
    fn find_duplicate(
        &self,
        req: &AppendRequest,
        stream_id: Option<i64>,
    ) -> Result<Option<Result<AppendOutcome, AppendFailure>>, AppendFailure> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT position, stream_id, version FROM events WHERE event_id = ?1")
            .map_err(|e| AppendFailure::fatal("look up event id", &e))?;
        let mut missing = 0usize;
        // (first position, last position, last version) of the stored ids.
        let mut found: Option<(u64, u64, u64)> = None;
        let mut consistent = true;
        for ev in &req.events {
            let row = stmt
                .query_row([ev.event_id.as_bytes().as_slice()], |row| {
                    let same_stream = Some(row.get::<_, i64>(1)?) == stream_id;
                    Ok((u64_column(row, 0)?, same_stream, u64_column(row, 2)?))
                })
                .optional()
                .map_err(|e| AppendFailure::fatal("look up event id", &e))?;
            match (row, found) {
                (None, _) => missing += 1,
                (Some((position, same_stream, version)), None) => {
                    consistent &= same_stream && missing == 0;
                    found = Some((position, position, version));
                }
                (Some((position, same_stream, version)), Some((first, _, previous))) => {
                    consistent &= same_stream && version == previous + 1;
                    found = Some((first, position, version));
                }
            }
        }
        Ok(match found {
            None => None,
            Some((first_position, last_position, last_version)) if consistent && missing == 0 => {
                Some(Ok(AppendOutcome {
                    first_position,
                    last_position,
                    last_version,
                    deduplicated: true,
                }))
            }
            Some(_) => Some(Err(AppendFailure::Rejected(Error::IdempotencyConflict {
                stream: req.stream.clone(),
            }))),
        })
    }
}

/// What the writer knows of a stream. `id: None`: no such stream yet.
#[derive(Debug, Clone, Copy, Default)]
struct StreamState {
    id: Option<i64>,
    /// Last version, `None` without events.
    last: Option<u64>,
}

/// Why one append was not written: rejected on its own, or a storage failure
/// that aborts the batch.
enum AppendFailure {
    Rejected(Error),
    Fatal(String),
}

impl AppendFailure {
    fn fatal(context: &str, e: &rusqlite::Error) -> Self {
        AppendFailure::Fatal(Fatal::new(context, e).0)
    }
}

fn validate(req: &AppendRequest) -> Result<()> {
    if req.stream.is_empty() {
        return Err(Error::Invalid("stream name is empty".to_owned()));
    }
    if req.events.is_empty() {
        return Err(Error::Invalid(format!(
            "no events to append to {}",
            req.stream
        )));
    }
    // Two events with one id can never both be stored; say so instead of
    // reporting it as an idempotency conflict. Most appends hold one event.
    if req.events.len() > 1 {
        let mut seen = std::collections::HashSet::with_capacity(req.events.len());
        for ev in &req.events {
            if !seen.insert(ev.event_id) {
                return Err(Error::Invalid(format!(
                    "event id {} appears twice in one append",
                    ev.event_id
                )));
            }
        }
    }
    Ok(())
}

/// SQLite reports a failed write as "disk I/O error" whatever the cause; an
/// operator needs to know whether the disk is read-only (a file system
/// remounted read-only after errors, a wrong mount) or not ours to write.
/// Opening the log for writing (without writing) tells, and costs nothing
/// on the success path.
fn explain_storage_failure(path: &Path, message: String) -> String {
    if !message.contains("I/O error") {
        return message;
    }
    match std::fs::OpenOptions::new().append(true).open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::ReadOnlyFilesystem => {
            format!("{message} (the data directory's file system is read-only: {e})")
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            format!("{message} (no permission to write the event log: {e})")
        }
        _ => message,
    }
}

fn is_constraint_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::new_event;

    fn request(stream: &str, events: Vec<NewEvent>) -> AppendRequest {
        AppendRequest {
            stream: stream.to_owned(),
            expected: ExpectedVersion::Any,
            events,
            reply: oneshot::channel().0,
            sent: Instant::now(),
        }
    }

    #[test]
    fn validate_rejects_what_can_never_be_stored() {
        assert!(validate(&request("s", vec![new_event("T", "{}")])).is_ok());
        assert!(matches!(
            validate(&request("", vec![new_event("T", "{}")])),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            validate(&request("s", Vec::new())),
            Err(Error::Invalid(_))
        ));
        let e = new_event("T", "{}");
        let twice = vec![e.clone(), new_event("T", "{}"), e];
        assert!(matches!(
            validate(&request("s", twice)),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn schema_is_created_once_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let conn = open_writer_connection(&path).unwrap();
        assert_eq!(last_position(&conn).unwrap(), 0);
        drop(conn);
        // Reopening finds the schema; an unknown version is refused.
        let conn = open_writer_connection(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = open_writer_connection(&path).unwrap_err();
        assert!(
            err.to_string().contains("unknown schema version 99"),
            "{err}"
        );
    }

    /// Schema 2, as the builds before schema 3 created it.
    const SCHEMA_2: &str = "
        CREATE TABLE events (
            position       INTEGER PRIMARY KEY,
            stream         TEXT    NOT NULL,
            version        INTEGER NOT NULL,
            event_id       BLOB    NOT NULL UNIQUE,
            type           TEXT    NOT NULL,
            schema_version INTEGER NOT NULL,
            occurred_at    INTEGER NOT NULL,
            domain_id      BLOB,
            user_id        BLOB,
            node           TEXT    NOT NULL,
            correlation_id TEXT,
            data           TEXT    NOT NULL,
            UNIQUE (stream, version)
        );
        CREATE TABLE streams (
            stream TEXT PRIMARY KEY
        ) WITHOUT ROWID;
        CREATE TABLE snapshots (
            stream         TEXT    PRIMARY KEY,
            version        INTEGER NOT NULL,
            schema_version INTEGER NOT NULL,
            data           TEXT    NOT NULL
        );
    ";

    /// Events of two streams, interleaved, and a snapshot, in the old layout.
    const OLD_ROWS: &str = "
        INSERT INTO events VALUES (1, 'user-b', 0, x'00000000000000000000000000000001', 'T', 1,
            10, NULL, NULL, 'n', NULL, '{\"i\":1}');
        INSERT INTO events VALUES (2, 'user-a', 0, x'00000000000000000000000000000002', 'T', 1,
            20, x'0000000000000000000000000000000d', NULL, 'n', 'corr', '{\"i\":2}');
        INSERT INTO events VALUES (3, 'user-b', 1, x'00000000000000000000000000000003', 'U', 2,
            30, NULL, x'0000000000000000000000000000000e', 'm', NULL, '{\"i\":3}');
        INSERT INTO snapshots VALUES ('user-b', 1, 1, '{}');
    ";

    fn names(conn: &Connection) -> Vec<String> {
        conn.prepare("SELECT name FROM streams ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    fn user_version(conn: &Connection) -> i64 {
        conn.pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn schema_1_files_are_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let old = Connection::open(&path).unwrap();
        let schema_1 = SCHEMA_2.replace(
            "stream TEXT PRIMARY KEY\n        ) WITHOUT ROWID;",
            "stream TEXT PRIMARY KEY, last_version INTEGER NOT NULL\n        ) WITHOUT ROWID;",
        );
        assert_ne!(schema_1, SCHEMA_2);
        old.execute_batch(&schema_1).unwrap();
        old.execute_batch(
            "INSERT INTO events VALUES (1, 's', 0, x'00112233445566778899aabbccddeeff', 'T', 1, 0,
                 NULL, NULL, 'n', NULL, '{}');
             INSERT INTO streams VALUES ('s', 0);
             PRAGMA user_version = 1;",
        )
        .unwrap();
        drop(old);

        let conn = open_writer_connection(&path).unwrap();
        assert_eq!(user_version(&conn), SCHEMA_VERSION);
        assert_eq!(names(&conn), vec!["s".to_owned()]);
        let last: Option<u64> = conn
            .query_row(STREAM_VERSION, ["s"], |r| optional_u64_column(r, 0))
            .unwrap();
        assert_eq!(last, Some(0));
    }

    #[test]
    fn schema_2_files_are_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let old = Connection::open(&path).unwrap();
        old.execute_batch("PRAGMA journal_mode = WAL;").unwrap();
        old.execute_batch(SCHEMA_2).unwrap();
        old.execute_batch(OLD_ROWS).unwrap();
        old.execute_batch("PRAGMA user_version = 2;").unwrap();
        drop(old);

        let conn = open_writer_connection(&path).unwrap();
        assert_eq!(user_version(&conn), SCHEMA_VERSION);
        assert_eq!(names(&conn), vec!["user-a".to_owned(), "user-b".to_owned()]);
        assert_eq!(last_position(&conn).unwrap(), 3);
        let rows: Vec<(i64, String, i64, Vec<u8>, String)> = conn
            .prepare(
                "SELECT e.position, s.name, e.version, e.event_id, e.data
                 FROM events e JOIN streams s ON s.id = e.stream_id ORDER BY e.position",
            )
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let id = |n: u8| {
            let mut bytes = vec![0u8; 16];
            bytes[15] = n;
            bytes
        };
        assert_eq!(
            rows,
            vec![
                (1, "user-b".into(), 0, id(1), r#"{"i":1}"#.into()),
                (2, "user-a".into(), 0, id(2), r#"{"i":2}"#.into()),
                (3, "user-b".into(), 1, id(3), r#"{"i":3}"#.into()),
            ]
        );
        let last: Option<u64> = conn
            .query_row(STREAM_VERSION, ["user-b"], |r| optional_u64_column(r, 0))
            .unwrap();
        assert_eq!(last, Some(1));
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(indexes, vec!["events_by_id"]);
        // Every migrated event is indexed: no tail to rebuild.
        let (tail, unindexed) = load_tail(&conn).unwrap();
        assert!(unindexed.is_empty());
        assert_eq!(tail.last_version("user-b"), None);
        let index: Vec<(i64, i64, i64)> = conn
            .prepare("SELECT stream_id, version, position FROM stream_index")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        // user-a is stream 1, user-b stream 2 (ids in name order).
        assert_eq!(index, vec![(1, 0, 2), (2, 0, 1), (2, 1, 3)]);
        // Reopening a migrated file changes nothing.
        drop(conn);
        let conn = open_writer_connection(&path).unwrap();
        assert_eq!(user_version(&conn), SCHEMA_VERSION);
        assert_eq!(last_position(&conn).unwrap(), 3);
    }

    /// A v2 file behind the whole store: reads, list, snapshots, idempotent
    /// retry of an old event, and appends that continue its positions and
    /// versions.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn store_opens_a_schema_2_file() {
        use crate::sqlite::{SqliteOptions, SqliteStore};
        use crate::EventStore;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let old = Connection::open(&path).unwrap();
        old.execute_batch("PRAGMA journal_mode = WAL;").unwrap();
        old.execute_batch(SCHEMA_2).unwrap();
        old.execute_batch(OLD_ROWS).unwrap();
        old.execute_batch("PRAGMA user_version = 2;").unwrap();
        drop(old);

        let store = SqliteStore::open(&path, SqliteOptions::new("new-node")).unwrap();
        assert_eq!(store.head_position(), 3);
        let b = store.read_stream("user-b", 0, 10).await.unwrap();
        assert_eq!(
            b.iter()
                .map(|e| (
                    e.position,
                    e.version,
                    e.event_type.as_str(),
                    e.node.as_str()
                ))
                .collect::<Vec<_>>(),
            vec![(1, 0, "T", "n"), (3, 1, "U", "m")]
        );
        assert_eq!(b[1].schema_version, 2);
        assert_eq!(b[1].user_id, Some(uuid::Uuid::from_u128(0xe)));
        let all = store.read_all(1, 10).await.unwrap();
        assert_eq!(
            all.iter().map(|e| e.stream.as_str()).collect::<Vec<_>>(),
            vec!["user-b", "user-a", "user-b"]
        );
        assert_eq!(all[1].domain_id, Some(uuid::Uuid::from_u128(0xd)));
        assert_eq!(all[1].correlation_id.as_deref(), Some("corr"));
        assert_eq!(
            store.list_streams("user-", None, 10).await.unwrap(),
            vec![
                crate::StreamInfo {
                    stream: "user-a".into(),
                    last_version: 0
                },
                crate::StreamInfo {
                    stream: "user-b".into(),
                    last_version: 1
                },
            ]
        );
        assert_eq!(store.stream_version("user-b").await.unwrap(), Some(1));
        assert_eq!(
            store
                .load_snapshot("user-b")
                .await
                .unwrap()
                .map(|s| s.version),
            Some(1)
        );

        // A retry of the old append to user-a is recognised.
        let mut old_event = new_event("T", r#"{"i":2}"#);
        old_event.event_id = uuid::Uuid::from_u128(2);
        let retry = store
            .append("user-a", ExpectedVersion::NoStream, vec![old_event.clone()])
            .await
            .unwrap();
        assert_eq!((retry.first_position, retry.deduplicated), (2, true));
        // The same id in another stream is a conflict, and names nothing.
        let conflict = store
            .append("user-c", ExpectedVersion::Any, vec![old_event])
            .await;
        assert!(
            matches!(conflict, Err(Error::IdempotencyConflict { .. })),
            "{conflict:?}"
        );
        assert_eq!(store.stream_version("user-c").await.unwrap(), None);
        assert_eq!(
            store.list_streams("user-c", None, 10).await.unwrap(),
            vec![]
        );

        let next = store
            .append(
                "user-b",
                ExpectedVersion::Exact(1),
                vec![new_event("T", "{}")],
            )
            .await
            .unwrap();
        assert_eq!((next.first_position, next.last_version), (4, 2));
        let new = store
            .append(
                "user-c",
                ExpectedVersion::NoStream,
                vec![new_event("T", "{}")],
            )
            .await
            .unwrap();
        assert_eq!((new.first_position, new.last_version), (5, 0));
        store.close().await.unwrap();
        drop(store);

        let store = SqliteStore::open(&path, SqliteOptions::new("new-node")).unwrap();
        assert_eq!(store.head_position(), 5);
        assert_eq!(store.stream_version("user-c").await.unwrap(), Some(0));
        assert_eq!(store.read_all(1, 10).await.unwrap().len(), 5);
        store.close().await.unwrap();
    }

    /// A crash between committing events and indexing them leaves events
    /// after `indexed_through`: the next open rebuilds the tail from them,
    /// and every read and append sees them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unindexed_events_are_found_after_reopen() {
        use crate::sqlite::{SqliteOptions, SqliteStore};
        use crate::{EventStore, StreamInfo};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let store = SqliteStore::open(&path, SqliteOptions::new("n")).unwrap();
        for i in 0..5u64 {
            for s in ["s-a", "s-b"] {
                let expected = i
                    .checked_sub(1)
                    .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                store
                    .append(s, expected, vec![new_event("T", "{}")])
                    .await
                    .unwrap();
            }
        }
        store.close().await.unwrap();
        drop(store);
        // Undo part of the indexing, as if the process died before it.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "DELETE FROM stream_index WHERE position > 3;
             UPDATE meta SET value = 3 WHERE key = 'indexed_through';",
        )
        .unwrap();
        drop(conn);

        let store = SqliteStore::open(&path, SqliteOptions::new("n")).unwrap();
        assert_eq!(store.stream_version("s-a").await.unwrap(), Some(4));
        let a = store.read_stream("s-a", 0, 100).await.unwrap();
        assert_eq!(
            a.iter().map(|e| e.version).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
        assert_eq!(
            a.iter().map(|e| e.position).collect::<Vec<_>>(),
            vec![1, 3, 5, 7, 9]
        );
        let b = store.read_stream("s-b", 1, 2).await.unwrap();
        assert_eq!(b.iter().map(|e| e.version).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(
            store.list_streams("s-", None, 10).await.unwrap(),
            vec![
                StreamInfo {
                    stream: "s-a".into(),
                    last_version: 4
                },
                StreamInfo {
                    stream: "s-b".into(),
                    last_version: 4
                },
            ]
        );
        let stale = store
            .append("s-b", ExpectedVersion::Exact(3), vec![new_event("T", "{}")])
            .await;
        assert!(
            matches!(
                stale,
                Err(Error::WrongExpectedVersion {
                    actual: Some(4),
                    ..
                })
            ),
            "{stale:?}"
        );
        let o = store
            .append("s-b", ExpectedVersion::Exact(4), vec![new_event("T", "{}")])
            .await
            .unwrap();
        assert_eq!((o.first_position, o.last_version), (11, 5));
        store.close().await.unwrap();
        drop(store);
        // Closing indexed everything.
        let conn = Connection::open(&path).unwrap();
        let (_, unindexed) = load_tail(&conn).unwrap();
        assert!(unindexed.is_empty());
    }

    /// A crash between two slices of a chunk leaves index rows beyond
    /// `indexed_through` (and `index_partial` set): the next open removes
    /// them, reads are right, the chunk is written again without a
    /// duplicate, and every event ends up indexed exactly once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chunk_cut_short_by_a_crash_is_written_again() {
        use crate::sqlite::{SqliteOptions, SqliteStore};
        use crate::EventStore;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let options = SqliteOptions {
            index_chunk_events: 8,
            max_gather_delay: Duration::ZERO,
            ..SqliteOptions::new("n")
        };
        let store = SqliteStore::open(&path, options.clone()).unwrap();
        // One event per batch: a chunk of 8 starts once 16 wait, and is
        // written one slice of 1 per batch.
        for i in 0..20u64 {
            store
                .append(
                    &format!("s-{}", i % 3),
                    ExpectedVersion::Any,
                    vec![new_event("T", "{}")],
                )
                .await
                .unwrap();
        }
        // Mid-chunk now: some of its rows are in the index, not all.
        let conn = Connection::open(&path).unwrap();
        let partial = meta_value(&conn, "index_partial").unwrap();
        let through = meta_value(&conn, "indexed_through").unwrap().unwrap();
        let beyond: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM stream_index WHERE position > ?1",
                [to_i64(through)],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(partial, Some(1), "a chunk is being written in slices");
        assert!(beyond > 0, "slices committed beyond indexed_through");
        // The crash: the state as it is now, without the clean close (which
        // would finish the chunk). Copy the files while the store is open:
        // the WAL holds the commits.
        let crashed = dir.path().join("crashed");
        std::fs::create_dir(&crashed).unwrap();
        conn.execute_batch(&format!(
            "VACUUM INTO '{}'",
            crashed.join("events.db").display()
        ))
        .unwrap();
        drop(conn);
        store.close().await.unwrap();
        drop(store);

        let path = crashed.join("events.db");
        let store = SqliteStore::open(&path, options.clone()).unwrap();
        for s in 0..3 {
            let events = store.read_stream(&format!("s-{s}"), 0, 100).await.unwrap();
            let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
            let want: Vec<u64> = (0..(20u64 - s).div_ceil(3)).collect();
            assert_eq!(versions, want, "stream s-{s}");
        }
        for _ in 0..20 {
            store
                .append("s-0", ExpectedVersion::Any, vec![new_event("T", "{}")])
                .await
                .unwrap();
        }
        store.close().await.unwrap();
        drop(store);
        let conn = Connection::open(&path).unwrap();
        let (rows, distinct, events): (i64, i64, i64) = conn
            .query_row(
                "SELECT (SELECT COUNT(*) FROM stream_index),
                        (SELECT COUNT(DISTINCT position) FROM stream_index),
                        (SELECT COUNT(*) FROM events)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(
            (rows, distinct),
            (events, events),
            "every event indexed once"
        );
        assert_eq!(meta_value(&conn, "index_partial").unwrap(), Some(0));
    }

    #[test]
    fn open_fails_with_a_storage_error_in_a_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let err = open_writer_connection(&dir.path().join("nope/events.db")).unwrap_err();
        assert!(matches!(err, Error::Storage(_)), "{err}");
    }
}
