//! The append-only event log of Dialtone.
//!
//! # What it owns
//! How events are stored: the [`EventStore`] trait with its invariants, the
//! embedded SQLite backend ([`sqlite::SqliteStore`]) and the conformance suite
//! ([`conformance`], behind the `conformance` feature) that every backend runs.
//! And how the large byte strings events name are stored (voicemail audio):
//! the [`BlobStore`] trait, its SQLite backend ([`SqliteBlobStore`], a file
//! of its own) and its suite ([`blob_conformance`]).
//!
//! # Main types
//! - [`EventStore`] (shared as [`SharedStore`]): append with an expected
//!   version, read a stream, read all by position, list streams, snapshots,
//!   the head position and its watch, and `load_stream` (the latest
//!   snapshot plus the events after it: what an actor reads to activate).
//! - [`NewEvent`]: what a writer hands in (already serialised JSON data).
//! - [`RecordedEvent`]: the stored envelope (fields described in
//!   `docs/events.md`): global `position`, per-stream `version`, ids, type,
//!   schema version, time, node, correlation id, data.
//! - [`ExpectedVersion`]: optimistic concurrency, EventStoreDB semantics.
//! - [`subscribe_all`]: catch-up from any position, then live, built only on
//!   [`EventStore::read_all`] and the head watch: no channel that could drop
//!   events is part of delivery.
//! - [`BlobStore`] (shared as [`SharedBlobStore`]): put (durable, written
//!   once per id), get, delete, list in id order ([`BlobInfo`]: size,
//!   SHA-256, creation time), all or only those created before a cutoff
//!   (`list_older_than`), for sweeping blobs no event names.
//!
//! # Layout
//! - `lib.rs`: the contract (this trait, its types and invariants).
//! - `sqlite.rs`, `sqlite/writer.rs`: the SQLite backend. One writer thread
//!   owns the only read-write connection and group-commits appends (one
//!   transaction and one fsync for many appends, see [`sqlite::SqliteOptions`];
//!   one request in it: `sqlite/writer/append.rs`); reads go through a small
//!   pool of read-only connections; a helper thread checkpoints the WAL in
//!   the background (`sqlite/checkpoint.rs`). `sqlite/schema.rs`: the file's
//!   layout and migrations. `sqlite/tail.rs`: recent events not yet in the
//!   per-stream index, shared by writer and readers; `sqlite/stream_index.rs`
//!   writes that index behind the commits. `sqlite/recent.rs`: the last
//!   committed events, in memory, for readers following the head.
//!   `docs/adr/0001-event-store.md` and `docs/adr/0008-event-log-schema-v3.md`
//!   say why, and `docs/performance.md` what it does on our machine.
//! - `subscription.rs`: [`subscribe_all`], for any backend.
//! - `conformance.rs`: the suite, with `conformance::Backend` as the hook a
//!   backend implements and `conformance_tests!` to run it.
//! - `blob.rs`: the blob contract ([`BlobStore`], id and size checks).
//!   `sqlite_blob.rs`: its SQLite backend, in a file of its own next to the
//!   log's (`blobs.sqlite3`), so that multi-MB writes never sit in the
//!   log's group commit: one writer thread group-commits puts and deletes,
//!   reads use a reader pool on its own file (the writer handle and the
//!   pool are `sqlite_db.rs`, shared with the log); a blob is a row of
//!   metadata and rows of 256 KiB chunks. `blob_conformance.rs`: the blob
//!   suite (`blob_conformance::BlobBackend`, `blob_conformance_tests!`),
//!   with a crash case that kills a child process putting blobs.
//!
//! # Invariants every backend keeps (checked by the conformance suite)
//! 1. An `append` is atomic: all its events are stored or none.
//! 2. Acknowledged means durable: `append` returns `Ok` only once the events
//!    are fsynced (SQLite: WAL + `synchronous=FULL`, one commit per batch).
//! 3. Stream versions are 0-based and gap-free; `ExpectedVersion` is checked
//!    against the last version under the writer's serialisation, so of N
//!    concurrent appends expecting the same version exactly one wins.
//! 4. Global positions start at 1, strictly increase in commit order and have
//!    no gaps; an event is visible to `read_all` only once every smaller
//!    position is visible too (a reader never skips an event).
//! 5. Idempotency: appending events whose ids are already stored, in the same
//!    stream at consecutive versions, returns the first outcome with
//!    `deduplicated = true` and stores nothing, whatever the expected version.
//!
//! # Invariants every blob backend keeps (checked by the blob suite)
//! 1. Acknowledged means durable: `put` and `delete` return `Ok` only once
//!    fsynced. Callers put a blob *before* appending the event that names
//!    it, so an event never names a missing blob; a crash between the two
//!    leaves a blob no event names, which `list_older_than` lets a sweeper
//!    find.
//! 2. All or nothing: after a crash a blob reads back exactly as put, or not
//!    at all.
//! 3. Written once: the same bytes again under an id is `Ok` (a retry),
//!    other bytes are [`Error::BlobConflict`]; neither changes anything.
//! 4. Ids are `[A-Za-z0-9_-]{1,64}` ([`Error::InvalidBlobId`]) and blobs at
//!    most [`blob::MAX_BLOB_SIZE`] ([`Error::BlobTooLarge`]), checked before
//!    anything is stored.
//!
//! # What it must not do
//! It knows nothing of Dialtone's event types: `event_type` and `data` are
//! opaque strings here, and blobs opaque bytes (it does not know they are
//! audio). It never reads configuration. No other crate writes SQL or
//! touches the database files: this crate is the only way in.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::sync::Arc;

use async_trait::async_trait;
use uuid::Uuid;

pub mod blob;
pub mod sqlite;
pub mod sqlite_blob;
mod sqlite_db;
mod subscription;

#[cfg(any(test, feature = "conformance"))]
pub mod blob_conformance;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use blob::{BlobId, BlobInfo, BlobStore, SharedBlobStore};
pub use sqlite_blob::{SqliteBlobOptions, SqliteBlobStore};
pub use subscription::{subscribe_all, subscribe_all_where};

/// A global position in the log: 1 for the first event ever appended.
pub type Position = u64;

/// Errors of the event log. Concurrency conflicts stay apart from storage
/// failures: the first is a normal outcome for a writer, the second is not.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The stream's current version is not the one the writer expected.
    #[error(
        "wrong expected version for stream {stream}: expected {expected:?}, actual {actual:?}"
    )]
    WrongExpectedVersion {
        stream: String,
        expected: ExpectedVersion,
        /// The stream's last version, `None` when the stream has no events.
        actual: Option<u64>,
    },
    /// Some, but not all, of the event ids were already stored, or they were
    /// stored in another stream / order: the retry does not match the original.
    #[error("event ids of this append were partly stored before (stream {stream})")]
    IdempotencyConflict { stream: String },
    /// The request itself is invalid (empty stream name, no events, ...).
    #[error("invalid append: {0}")]
    Invalid(String),
    /// The storage failed (IO error, disk full, read-only file system...).
    #[error("storage error: {0}")]
    Storage(String),
    /// The store is shut down.
    #[error("event store is closed")]
    Closed,
    /// Other bytes are already stored under this blob id (blobs are written
    /// once; a retry must carry the same bytes). Nothing was changed.
    #[error("blob {id} already exists with other contents")]
    BlobConflict { id: String },
    /// A blob id that is not 1 to 64 characters of `[A-Za-z0-9_-]` (the id
    /// given, cut after 65 characters).
    #[error("invalid blob id {id:?}: ids are 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'")]
    InvalidBlobId { id: String },
    /// The blob is larger than the store accepts ([`blob::MAX_BLOB_SIZE`]).
    #[error("blob of {size} bytes is larger than the limit of {limit} bytes")]
    BlobTooLarge { size: u64, limit: u64 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Optimistic concurrency for an append (EventStoreDB semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must have no events.
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream's last event must have exactly this version.
    Exact(u64),
}

/// An event handed to [`EventStore::append`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Unique id, used for idempotent retries.
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    /// Microseconds since the Unix epoch.
    pub occurred_at_us: i64,
    pub domain_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    /// gRPC request id or SIP Call-ID that caused the event.
    pub correlation_id: Option<String>,
    /// The event's data, serialised JSON.
    pub data: String,
}

/// A stored event: its envelope and its data (`docs/events.md`, "Stored form").
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    pub position: Position,
    pub stream: String,
    /// 0-based version inside the stream.
    pub version: u64,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub occurred_at_us: i64,
    pub domain_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    /// Name of the node that appended the event.
    pub node: String,
    pub correlation_id: Option<String>,
    pub data: String,
}

/// Which events a follower of the whole log wants (see
/// [`EventStore::read_all_where`]).
pub type EventFilter = fn(&RecordedEvent) -> bool;

/// What a successful append returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    pub first_position: Position,
    pub last_position: Position,
    /// Version of the last event appended (the stream's new current version).
    pub last_version: u64,
    /// True when every event id was already stored and nothing was written.
    pub deduplicated: bool,
}

/// A stream and its current (last) version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    pub stream: String,
    pub last_version: u64,
}

/// A snapshot of an aggregate's state at a stream version. The log stays the
/// truth: a snapshot only shortens recovery and may be dropped at any time.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub stream: String,
    /// Version of the last event folded into `data`.
    pub version: u64,
    /// Version of the state's serialised shape, so that old snapshots can be
    /// ignored after a change of shape.
    pub schema_version: u32,
    pub data: String,
}

/// The event log. See the crate documentation for the invariants.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` atomically to `stream` if its version matches
    /// `expected`. Returns once the events are durable.
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome>;

    /// Events of `stream` with `version >= from_version`, in version order,
    /// at most `max_count`. An unknown stream reads as empty.
    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>>;

    /// Events with `position >= from_position`, in position order, at most
    /// `max_count`, never beyond the visible head (invariant 4).
    async fn read_all(
        &self,
        from_position: Position,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>>;

    /// As [`read_all`](Self::read_all), but only the events `keep` accepts
    /// are returned; `max_count` bounds the events examined. Also returns
    /// the position of the last event examined (0 when none was), so that a
    /// follower moves past the events it skipped. A follower that wants a
    /// small part of the log (one category of events) uses it so that the
    /// rest is never copied for it.
    async fn read_all_where(
        &self,
        from_position: Position,
        max_count: usize,
        keep: EventFilter,
    ) -> Result<(Vec<RecordedEvent>, Position)> {
        let events = self.read_all(from_position, max_count).await?;
        let last = events.last().map_or(0, |e| e.position);
        Ok((events.into_iter().filter(keep).collect(), last))
    }

    /// The stream's last version, `None` if it has no events.
    async fn stream_version(&self, stream: &str) -> Result<Option<u64>>;

    /// Streams whose name starts with `prefix`, ordered by name, starting
    /// strictly after `after`, at most `limit`.
    async fn list_streams(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>>;

    /// The last committed and visible position (0 when the log is empty).
    fn head_position(&self) -> Position;

    /// Watches the head position; it changes after each commit. Readers use
    /// it only to wake up, then read the log.
    fn watch_head(&self) -> tokio::sync::watch::Receiver<Position>;

    /// Stores (replaces) the snapshot of a stream.
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()>;

    /// The latest snapshot of a stream, if any.
    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>>;

    /// What an actor reads to activate: the stream's latest snapshot and the
    /// first `max_count` events after it (after version `snapshot.version`,
    /// or from version 0 without a snapshot). Backends that can answer both
    /// in one round trip override this.
    async fn load_stream(
        &self,
        stream: &str,
        max_count: usize,
    ) -> Result<(Option<Snapshot>, Vec<RecordedEvent>)> {
        let snapshot = self.load_snapshot(stream).await?;
        let from = snapshot.as_ref().map_or(0, |s| s.version + 1);
        let events = self.read_stream(stream, from, max_count).await?;
        Ok((snapshot, events))
    }

    /// Stops accepting appends, waits for pending ones to be committed or
    /// failed, and closes the storage. Later calls return [`Error::Closed`].
    async fn close(&self) -> Result<()>;
}

/// A shareable handle to any backend.
pub type SharedStore = Arc<dyn EventStore>;
