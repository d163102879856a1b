//! Writing `stream_index` (stream id, version → position), the table that
//! finds a stream's events, behind the commits of the events themselves.
//!
//! Committed events wait in the unindexed tail (in memory: `tail.rs`, shared
//! with the readers; here as [`IndexEntry`]s in position order). Once the
//! tail holds two chunks' worth, its oldest chunk is sorted by stream and
//! written in slices, one slice inside each following batch's transaction
//! (so it shares that batch's fsync). `meta.indexed_through` moves past the
//! chunk with its last slice; `meta.index_partial` marks a chunk whose
//! slices are only partly committed, so that a crash between two slices is
//! repaired at the next open (`load_tail`).

use std::sync::atomic::Ordering;
use std::time::Instant;

use rusqlite::{params, Connection, OptionalExtension};

use super::tail::{SharedTail, Tail};
use super::{nanos, storage_error, to_i64, u64_column, StatsCells};
use crate::{Position, Result};

/// A committed event not yet in `stream_index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct IndexEntry {
    stream_id: i64,
    version: u64,
    position: Position,
}

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

/// The unindexed tail, as the writer keeps it, and the chunk of it being
/// written into `stream_index`. Only the writer thread has one.
pub(super) struct StreamIndexer {
    /// Committed events not yet in `stream_index`, in position order, and
    /// the same shared with the readers by stream name.
    unindexed: Vec<IndexEntry>,
    tail: SharedTail,
    index_chunk: usize,
    /// The chunk being written in slices (the first `chunk.len()` entries of
    /// `unindexed`, sorted by stream), and how many of its entries are
    /// committed so far.
    chunk: Vec<IndexEntry>,
    chunk_done: usize,
}

impl StreamIndexer {
    /// The tail as `load_tail` found it (`tail` shared with the readers),
    /// indexed in chunks of `index_chunk` events.
    pub(super) fn new(tail: SharedTail, unindexed: Vec<IndexEntry>, index_chunk: usize) -> Self {
        Self {
            unindexed,
            tail,
            index_chunk: index_chunk.max(1),
            chunk: Vec::new(),
            chunk_done: 0,
        }
    }

    /// Whether every committed event is in `stream_index`.
    pub(super) fn is_empty(&self) -> bool {
        self.unindexed.is_empty()
    }

    /// The last version of `stream` among unindexed events.
    pub(super) fn last_version(&self, stream: &str) -> Option<u64> {
        self.tail.read(|tail| tail.last_version(stream))
    }

    /// Whether the next batch should carry a slice: a chunk is being
    /// written, or enough waits to start one.
    pub(super) fn wants_slice(&self) -> bool {
        !self.chunk.is_empty() || self.unindexed.len() >= 2 * self.index_chunk
    }

    /// Adds the events of a commit to the tail, given per append as
    /// `(stream, stream id, first version, first position, count)`. The
    /// shared tail first: a reader who sees the new head must find these
    /// events in the tail or in the index.
    pub(super) fn committed_events(&mut self, written: &[(String, i64, u64, Position, u64)]) {
        self.tail.write(|tail| {
            for (stream, _, version, position, count) in written {
                tail.push(stream, *version, *position, *count);
            }
        });
        for (_, stream_id, version, position, count) in written {
            self.unindexed.extend((0..*count).map(|i| IndexEntry {
                stream_id: *stream_id,
                version: version + i,
                position: position + i,
            }));
        }
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
    pub(super) fn write_slice(
        &mut self,
        conn: &Connection,
        all: bool,
        stats: &StatsCells,
    ) -> rusqlite::Result<Option<usize>> {
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
            let mut insert = conn.prepare_cached(INSERT_INDEX)?;
            for entry in &self.chunk[self.chunk_done..upto] {
                insert.execute(params![
                    entry.stream_id,
                    to_i64(entry.version),
                    to_i64(entry.position)
                ])?;
            }
        }
        if upto == self.chunk.len() {
            conn.prepare_cached(SET_INDEXED_THROUGH)?
                .execute([to_i64(self.chunk_last_position())])?;
            if self.chunk_done > 0 {
                conn.prepare_cached(SET_INDEX_PARTIAL)?.execute([0])?;
            }
        } else if self.chunk_done == 0 {
            conn.prepare_cached(SET_INDEX_PARTIAL)?.execute([1])?;
        }
        stats
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

    /// The slice written by `write_slice` is committed.
    pub(super) fn slice_committed(&mut self, upto: usize) {
        self.chunk_done = upto;
        if upto == self.chunk.len() {
            let last = self.chunk_last_position();
            self.unindexed.drain(..self.chunk.len());
            self.tail.write(|tail| tail.indexed(last));
            self.chunk.clear();
            self.chunk_done = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::conformance::new_event;
    use crate::{Error, ExpectedVersion};

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
}
