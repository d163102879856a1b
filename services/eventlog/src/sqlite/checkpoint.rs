//! Checkpoints: copying the WAL's frames into the database file.
//!
//! SQLite's own automatic checkpoint runs inside COMMIT, where it would
//! stall every append queued behind it, so it is off (see
//! `schema::open_writer_connection`). Instead a background thread with its
//! own connection checkpoints as the WAL grows, and the writer checkpoints
//! itself, after answering its batch, only once the WAL is too long. The
//! WAL hook reports the WAL's size after each commit of the writer.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Instant;

use rusqlite::{Connection, OpenFlags};

use super::{nanos, storage_error, StatsCells, BUSY_TIMEOUT};
use crate::{Error, Result};

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

/// Frames appended to the WAL by this thread's commits since open (for the
/// stats).
pub(super) fn wal_frames_appended() -> u64 {
    WAL_APPENDED.with(std::cell::Cell::get)
}

/// When to checkpoint, and the background thread that does it. Lives on the
/// writer thread (the WAL hook's counts are that thread's).
pub(super) struct Checkpoints {
    /// `None` when the thread could not start: the writer then checkpoints
    /// every step itself.
    background: Option<Checkpointer>,
    /// WAL size (frames) at which to checkpoint next.
    next_checkpoint: i32,
}

impl Checkpoints {
    /// Installs the WAL hook on the writer's connection and starts the
    /// background checkpoint thread.
    pub(super) fn start(conn: &Connection, path: &Path) -> Self {
        conn.wal_hook(Some(record_wal_frames));
        let background = match Checkpointer::spawn(path) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "no background checkpoints; the writer will do them");
                None
            }
        };
        Self {
            background,
            next_checkpoint: CHECKPOINT_STEP_FRAMES,
        }
    }

    /// After a commit: nudges the background checkpointer, or, once the WAL
    /// is too long (or without a checkpointer), checkpoints here. A failure
    /// loses nothing (the frames stay in the WAL) and is retried later.
    pub(super) fn after_commit(&mut self, conn: &Connection, stats: &StatsCells) {
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
            if let Some(checkpointer) = &self.background {
                // Full means a nudge is already pending: nothing to add.
                let _ = checkpointer.nudge.try_send(());
                return;
            }
        }
        let started = Instant::now();
        match checkpoint(conn) {
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
        stats
            .checkpoint_nanos
            .fetch_add(nanos(started.elapsed()), Ordering::Relaxed);
    }

    /// Stops the background thread. Before the writer closes its
    /// connection, so that the writer's is the last one and its close can
    /// checkpoint and remove the WAL.
    pub(super) fn stop(self) {
        if let Some(checkpointer) = self.background {
            checkpointer.stop();
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
