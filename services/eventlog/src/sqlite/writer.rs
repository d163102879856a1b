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
//!
//! What one request does inside the transaction is in [`append`]; the
//! writer also carries the stream index's slices in its batches
//! (`stream_index.rs`), publishes the committed events to `recent.rs`
//! before the head moves, and checkpoints after answering
//! (`checkpoint.rs`).

mod append;

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::{oneshot, watch};

use self::append::{AppendFailure, StreamState};
use super::checkpoint::{wal_frames_appended, Checkpoints};
use super::recent::SharedRecent;
use super::stream_index::{IndexEntry, StreamIndexer};
use super::tail::SharedTail;
use super::{nanos, storage_error, SqliteOptions, StatsCells};
use crate::{
    AppendOutcome, Error, ExpectedVersion, NewEvent, Position, RecordedEvent, Result, Snapshot,
};

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

pub(super) struct Writer {
    conn: Connection,
    path: std::path::PathBuf,
    rx: mpsc::Receiver<Msg>,
    head: watch::Sender<Position>,
    /// Id and last version of each stream seen since open. Filled lazily
    /// from the database; cleared after a failed batch.
    streams: HashMap<String, StreamState>,
    /// The unindexed tail, shared with the readers, and the chunk of it
    /// being written into `stream_index`.
    index: StreamIndexer,
    /// Appends of the current batch: (stream, id, first version, first
    /// position, count); they join the tail once committed.
    batch_written: Vec<(String, i64, u64, Position, u64)>,
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
            index: StreamIndexer::new(tail, unindexed, options.index_chunk_events),
            batch_written: Vec::new(),
            recent,
            batch_recent: Vec::new(),
            next_position: last_position + 1,
            node: options.node.clone(),
            max_events: options.max_batch_events.max(1),
            max_appends: options.max_batch_appends.max(1),
            max_gather: options.max_gather_delay,
            last_commit: Duration::ZERO,
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
        let mut checkpoints = Checkpoints::start(&self.conn, &self.path);
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
            checkpoints.after_commit(&self.conn, &self.stats);
        }
        self.index_everything();
        // The checkpoint connection goes first, so that the writer's is the
        // last one and its close can checkpoint and remove the WAL.
        checkpoints.stop();
        // Closing the connection checkpoints and removes the WAL when no
        // reader is left; errors here lose nothing (everything is committed).
        if let Err((_, e)) = self.conn.close() {
            tracing::warn!(error = %e, "closing the event log connection failed");
        }
        tracing::debug!("event log writer stopped");
    }

    /// At close: indexes the whole tail (own transactions), so that the next
    /// open has nothing to rebuild. A failure loses nothing.
    fn index_everything(&mut self) {
        while !self.index.is_empty() {
            let written = (|| -> rusqlite::Result<_> {
                self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
                let written = self.index.write_slice(&self.conn, true, &self.stats)?;
                self.conn.prepare_cached("COMMIT")?.execute([])?;
                Ok(written)
            })();
            match written {
                Ok(Some(upto)) => self.index.slice_committed(upto),
                Ok(None) => break,
                Err(e) => {
                    self.rollback();
                    tracing::warn!(error = %e, "indexing the event log tail failed");
                    break;
                }
            }
        }
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
        if outcome.is_ok() && self.index.wants_slice() {
            match self.index.write_slice(&self.conn, false, &self.stats) {
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
                    self.index.slice_committed(upto);
                }
                let committed = self.next_position - first_position;
                self.last_commit = done;
                if committed > 0 {
                    // The tail first: a reader who sees the new head must
                    // find these events in the tail or in the index.
                    self.index.committed_events(&self.batch_written);
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
                    .store(wal_frames_appended(), Ordering::Relaxed);
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
                    .pragma_update_and_check(
                        None,
                        "max_page_count",
                        super::to_i64(pages.max(1)),
                        |row| super::u64_column(row, 0),
                    )
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
