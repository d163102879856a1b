//! One append (and one snapshot) inside the writer's open transaction:
//! validation, the expected-version check, the inserts, and idempotency
//! (invariant 5: a retry of a stored append gets the original outcome).
//!
//! A request rejected on its own ([`AppendFailure::Rejected`]) is undone
//! without disturbing the rest of the batch; a storage failure
//! ([`AppendFailure::Fatal`]) aborts the whole batch.

use rusqlite::{params, ErrorCode, OptionalExtension};

use super::{AppendRequest, Fatal, Writer};
use crate::sqlite::{optional_u64_column, to_i64, u64_column};
use crate::{AppendOutcome, Error, ExpectedVersion, NewEvent, RecordedEvent, Result, Snapshot};

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

const UPSERT_SNAPSHOT: &str = "INSERT INTO snapshots (stream, version, schema_version, data)
    VALUES (?1, ?2, ?3, ?4)
    ON CONFLICT (stream) DO UPDATE SET version = excluded.version,
        schema_version = excluded.schema_version, data = excluded.data";

impl Writer {
    /// Keeps the events of an append that went into the open batch, moved
    /// out of its request, for `recent` once the batch commits.
    pub(super) fn hold_recent(
        &mut self,
        stream: String,
        events: Vec<NewEvent>,
        outcome: &AppendOutcome,
    ) {
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

    pub(super) fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), AppendFailure> {
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
            last: self.index.last_version(stream).or(state.last),
            ..state
        };
        self.streams.insert(stream.to_owned(), state);
        Ok(state)
    }

    pub(super) fn append(&mut self, req: &AppendRequest) -> Result<AppendOutcome, AppendFailure> {
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
pub(super) struct StreamState {
    id: Option<i64>,
    /// Last version, `None` without events.
    last: Option<u64>,
}

/// Why one append was not written: rejected on its own, or a storage failure
/// that aborts the batch.
pub(super) enum AppendFailure {
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

fn is_constraint_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::sync::oneshot;

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
}
