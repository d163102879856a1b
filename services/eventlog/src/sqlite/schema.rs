//! The file's layout: the schema, its version, the migrations from older
//! versions, and opening the read-write connection with the pragmas that make
//! a commit durable.
//!
//! Opening checks the schema version (`PRAGMA user_version`) and creates or
//! migrates the tables in one transaction, so a file is always entirely of
//! one version. Everything else in the backend assumes the current layout.

use std::path::Path;
use std::time::Instant;

use rusqlite::Connection;

use super::{storage_error, u64_column};
use crate::{Error, Position, Result};

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

/// Last indexed version of a stream by name, `NULL` if none.
pub(super) const STREAM_VERSION: &str = "SELECT MAX(version) FROM stream_index
    WHERE stream_id = (SELECT id FROM streams WHERE name = ?1)";

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

/// Opens the read-write connection and sets the file up. The pragmas are the
/// durability contract: WAL, and `synchronous=FULL` so that a commit returns
/// only once the WAL is fsynced.
pub(super) fn open_writer_connection(path: &Path) -> Result<Connection> {
    let ctx = |what: &str| format!("open {}: {what}", path.display());
    let conn = crate::sqlite_db::open_durable(path, None)?;
    super::fix_query_plans(&conn).map_err(|e| storage_error(&ctx("query planner"), &e))?;
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

/// The last position in the log, 0 when it is empty.
pub(super) fn last_position(conn: &Connection) -> Result<Position> {
    conn.query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |row| {
        u64_column(row, 0)
    })
    .map_err(|e| storage_error("read last position", &e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::new_event;
    use crate::sqlite::optional_u64_column;
    use crate::sqlite::stream_index::load_tail;
    use crate::ExpectedVersion;

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

    #[test]
    fn open_fails_with_a_storage_error_in_a_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let err = open_writer_connection(&dir.path().join("nope/events.db")).unwrap_err();
        assert!(matches!(err, Error::Storage(_)), "{err}");
    }
}
