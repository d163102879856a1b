//! An SQLite file as both embedded backends run it: the event log
//! (`sqlite.rs`) and the blob store (`sqlite_blob.rs`) each own one
//! [`Database`], the plumbing they share, so that closing, dropping and
//! reading behave the same in both and are fixed in one place.
//!
//! # What it owns
//! - The *writer thread* handle: the channel to the thread that owns the
//!   file's only read-write connection, the thread's `JoinHandle`, and the
//!   `closed` flag. [`Database::close`] (async) and `Drop` (blocking, for a
//!   store dropped without closing) both stop it the same way: the readers
//!   go first (so that the writer's last close can checkpoint and remove
//!   the WAL), then the writer commits what is queued and exits, and is
//!   joined.
//! - The pool of read-only connections ([`Readers`]), used through
//!   `spawn_blocking`.
//! - Opening a read-write connection with the durability contract both
//!   files keep (WAL, `synchronous=FULL`, checked, not just asked for):
//!   [`open_durable`].
//! - The small conversions between SQLite's integers and ours.
//!
//! # What it must not do
//! It knows nothing of what the writer does with its messages (group
//! commit, schemas): a backend's writer loop and its schema stay in the
//! backend. It never lowers `synchronous`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Row};
use tokio::sync::Semaphore;

use crate::{Error, Result};

/// How long a connection waits on a lock before failing. The writer is the
/// only writer, so this only matters while SQLite recovers a WAL or
/// checkpoints.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// One SQLite file: its writer thread, which takes messages `M`, and its
/// readers.
pub(crate) struct Database<M: Send + 'static> {
    path: PathBuf,
    /// What the file is, for logs and errors ("event log", "blob store").
    what: &'static str,
    /// `Option` only so that `Drop` can disconnect the writer.
    tx: Option<mpsc::Sender<M>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    readers: Readers,
}

impl<M: Send + 'static> Database<M> {
    /// Starts the writer thread, named `thread_name`, running `run` (the
    /// backend's loop over the receiving end of `tx`), and sets up a pool
    /// of `readers` read-only connections (at least one) to `path`.
    ///
    /// The writer must return once every sender is gone (that is how `Drop`
    /// stops it), after committing what it still holds.
    pub(crate) fn start(
        path: &Path,
        what: &'static str,
        thread_name: &str,
        tx: mpsc::Sender<M>,
        readers: usize,
        run: impl FnOnce() + Send + 'static,
    ) -> Result<Self> {
        let handle = std::thread::Builder::new()
            .name(thread_name.to_owned())
            .spawn(run)
            .map_err(|e| Error::Storage(format!("cannot start the {what} writer thread: {e}")))?;
        Ok(Self {
            path: path.to_owned(),
            what,
            tx: Some(tx),
            writer: Mutex::new(Some(handle)),
            closed: AtomicBool::new(false),
            readers: Readers::new(path, readers.max(1)),
        })
    }

    /// The database file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// [`Error::Closed`] once closing began.
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Hands `msg` to the writer ([`Error::Closed`] once closing began or
    /// the writer is gone).
    pub(crate) fn send(&self, msg: M) -> Result<()> {
        self.check_open()?;
        match &self.tx {
            Some(tx) => tx.send(msg).map_err(|_| Error::Closed),
            None => Err(Error::Closed),
        }
    }

    /// Runs `f` on a read-only connection, on a blocking thread.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.check_open()?;
        self.readers.run(&self.closed, f).await
    }

    /// Stops accepting requests, sends `shutdown` (the writer commits what
    /// is queued, then stops) and waits for the writer to exit. A second
    /// call does nothing.
    pub(crate) async fn close(&self, shutdown: M) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Readers first, so that the writer's final close can checkpoint and
        // remove the WAL file.
        self.readers.close();
        if let Some(tx) = &self.tx {
            // Err means the writer is already gone: nothing left to drain.
            let _ = tx.send(shutdown);
        }
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            let joined = tokio::task::spawn_blocking(move || handle.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                return Err(Error::Storage(format!(
                    "the {} writer thread failed while closing",
                    self.what
                )));
            }
        }
        tracing::debug!(path = %self.path.display(), "{} closed", self.what);
        Ok(())
    }
}

impl<M: Send + 'static> Drop for Database<M> {
    /// Blocks for at most one commit: the writer commits what was queued.
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        self.readers.close();
        // Disconnecting makes the writer commit what is queued, then exit.
        drop(self.tx.take());
        let handle = self
            .writer
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!("{} writer thread panicked", self.what);
            }
        }
    }
}

/// The pool of read-only connections. Connections are opened lazily, at most
/// one per permit, and carry their prepared statements with them.
pub(crate) struct Readers {
    path: Arc<PathBuf>,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl Readers {
    pub(crate) fn new(path: &Path, size: usize) -> Self {
        Self {
            path: Arc::new(path.to_owned()),
            idle: Mutex::new(Vec::with_capacity(size)),
            permits: Semaphore::new(size),
        }
    }

    /// Refuses new reads and drops the idle connections (those in use are
    /// dropped when their read ends).
    pub(crate) fn close(&self) {
        self.permits.close();
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    pub(crate) async fn run<T, F>(&self, closed: &AtomicBool, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let _permit = self.permits.acquire().await.map_err(|_| Error::Closed)?;
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let path = Arc::clone(&self.path);
        let joined = tokio::task::spawn_blocking(move || {
            let conn = match idle {
                Some(conn) => conn,
                None => open_reader_connection(&path)?,
            };
            let result = f(&conn);
            Ok::<_, Error>((conn, result))
        })
        .await
        .map_err(|e| Error::Storage(format!("read task failed: {e}")))?;
        let (conn, result) = joined?;
        if !closed.load(Ordering::Acquire) {
            self.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
        }
        result.map_err(|e| storage_error("read", &e))
    }
}

pub(crate) fn open_reader_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| storage_error("open read connection", &e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| storage_error("configure read connection", &e))?;
    fix_query_plans(&conn).map_err(|e| storage_error("configure read connection", &e))?;
    conn.set_prepared_statement_cache_capacity(16);
    Ok(conn)
}

/// Opens (creating if needed) the read-write connection of `path` with the
/// durability contract: WAL and `synchronous=FULL` (a commit returns once
/// the WAL is fsynced), both read back and refused if SQLite did not take
/// them. `page_size` applies to a file without pages yet only (before WAL
/// mode writes the header); an existing file keeps its own. The backend
/// sets its other pragmas and its schema after this.
pub(crate) fn open_durable(path: &Path, page_size: Option<i64>) -> Result<Connection> {
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
    if let Some(page_size) = page_size {
        conn.pragma_update(None, "page_size", page_size)
            .map_err(|e| storage_error(&ctx("page_size"), &e))?;
    }
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
    Ok(conn)
}

/// Plans that never depend on bound values (SQLite's "query planner
/// stability guarantee"). Without it SQLite re-prepares a statement whenever
/// a value it peeked at while planning changes, e.g. every `LIMIT ?` with a
/// new page size: a profile of CreateUser load showed 8 % of the node's CPU
/// re-parsing SQL. Our queries are written for their indexes; no plan here
/// gains from looking at the values.
pub(crate) fn fix_query_plans(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map(drop)
}

/// A storage error with what was being done, so that an operator can act on
/// it ("disk is full", "readonly database", ...).
pub(crate) fn storage_error(context: &str, e: &rusqlite::Error) -> Error {
    Error::Storage(format!("{context}: {e}"))
}

/// SQLite integers are i64; our positions and versions never come near the
/// limit, and a caller's "from" beyond it means "nothing", which `i64::MAX`
/// gives as well.
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn optional_u64_column(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<u64>> {
    match row.get::<_, Option<i64>>(index)? {
        None => Ok(None),
        Some(_) => u64_column(row, index).map(Some),
    }
}

pub(crate) fn u64_column(row: &Row<'_>, index: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(index)?;
    u64::try_from(value).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Integer,
            Box::new(e),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_i64_saturates() {
        assert_eq!(to_i64(5), 5);
        assert_eq!(to_i64(u64::MAX), i64::MAX);
    }

    /// Dropping a database without closing it still lets its writer drain
    /// what was queued before it returns, and joins the thread.
    #[test]
    fn drop_drains_the_writer_and_joins_it() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel::<u32>();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let db = Database::start(
            &dir.path().join("x.db"),
            "test file",
            "test-writer",
            tx,
            1,
            move || {
                // Slow, so that messages are still queued at the drop.
                while let Ok(n) = rx.recv() {
                    std::thread::sleep(Duration::from_millis(5));
                    sink.lock().unwrap().push(n);
                }
            },
        )
        .unwrap();
        for n in 0..10 {
            db.send(n).unwrap();
        }
        drop(db);
        assert_eq!(*seen.lock().unwrap(), (0..10).collect::<Vec<_>>());
    }

    /// `close` sends the shutdown message, waits for the writer, and makes
    /// every later call `Closed`; a second close is a no-op.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_stops_the_writer_and_refuses_later_calls() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        drop(open_durable(&path, None).unwrap());
        let (tx, rx) = mpsc::channel::<Option<u32>>();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let db = Database::start(&path, "test file", "test-writer", tx, 1, move || {
            while let Ok(Some(n)) = rx.recv() {
                sink.lock().unwrap().push(n);
            }
        })
        .unwrap();
        db.send(Some(1)).unwrap();
        let one: i64 = db
            .read(|c| c.query_row("SELECT 1", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(one, 1);
        db.close(None).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), [1]);
        assert!(db.is_closed());
        assert!(matches!(db.send(Some(2)), Err(Error::Closed)));
        assert!(matches!(
            db.read(|c| c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)))
                .await,
            Err(Error::Closed)
        ));
        db.close(None).await.unwrap();
    }

    /// The durable connection refuses nothing on a normal file and reads
    /// back WAL, FULL and the page size asked for a new file.
    #[test]
    fn durable_connection_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let conn = open_durable(&path, Some(65_536)).unwrap();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        let sync: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        let page: i64 = conn
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .unwrap();
        assert_eq!((mode.as_str(), sync, page), ("wal", 2, 65_536));
        drop(conn);
        // An existing file keeps its page size.
        let conn = open_durable(&path, Some(4096)).unwrap();
        let page: i64 = conn
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .unwrap();
        assert_eq!(page, 65_536);
    }
}
