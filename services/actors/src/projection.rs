//! Checkpointed projections that follow the whole log (the registrations
//! index, the call-leg index): one loop that folds every event in, and one
//! checkpoint format, shared by both.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use dialtone_eventlog::{Position, RecordedEvent, SharedStore, Snapshot};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Result;

/// Save a checkpoint at most this often...
const CHECKPOINT_EVERY: Duration = Duration::from_secs(30);
/// ...and once this many events were folded since the last one.
const CHECKPOINT_EVENTS: u64 = 50_000;
/// Events read per page while catching up at start.
const CATCH_UP_PAGE: usize = 10_000;
/// Events looked at per page while following the head.
const FOLLOW_PAGE: usize = 512;

/// The state of a projection.
pub(crate) trait Projected:
    Clone + Default + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// For logs ("registrations", "calls").
    const NAME: &'static str;
    /// The snapshot stream of the checkpoints (not an event stream).
    const CHECKPOINT_STREAM: &'static str;
    const CHECKPOINT_SCHEMA: u32;
    /// The last position folded in (or read past).
    fn position(&self) -> Position;
    /// Whether [`fold`](Self::fold) does anything with this event: the others
    /// are not copied out of the log for the projection (most of the log is
    /// calls' events, which most projections do not look at).
    fn wants(recorded: &RecordedEvent) -> bool;
    fn fold(&mut self, recorded: &RecordedEvent);
    /// The events up to `position` were read: those not wanted are past.
    fn read_up_to(&mut self, position: Position);
    /// Publishes the projection's gauges.
    fn report(&self);
    /// Rebuilds what the checkpoint does not store, after loading it.
    fn loaded(&mut self) {}
}

/// Loads the projection's checkpoint (one unreadable or of another schema is
/// ignored: the log is the truth) and folds the log in up to its current
/// head, so that start-up sees the whole log; a long catch-up is saved as a
/// checkpoint, so that the next start is quick.
pub(crate) async fn catch_up<S: Projected>(store: &SharedStore) -> Result<S> {
    let mut state = S::default();
    if let Some(snapshot) = store.load_snapshot(S::CHECKPOINT_STREAM).await? {
        if snapshot.schema_version == S::CHECKPOINT_SCHEMA {
            match serde_json::from_str::<S>(&snapshot.data) {
                Ok(loaded) => state = loaded,
                Err(e) => {
                    tracing::warn!(error = %e, projection = S::NAME, "ignoring unreadable checkpoint")
                }
            }
        }
    }
    state.loaded();
    let head = store.head_position();
    let from = state.position();
    while state.position() < head {
        let page = store.read_all(state.position() + 1, CATCH_UP_PAGE).await?;
        if page.is_empty() {
            break;
        }
        for event in &page {
            state.fold(event);
        }
    }
    if state.position() - from >= CHECKPOINT_EVENTS {
        save_checkpoint(store, &state).await;
    }
    state.report();
    Ok(state)
}

/// Folds every wanted event after the state's position into it, for ever
/// (until the store closes), a page at a time, checkpointing now and then.
/// The position moves past the events not wanted too, so that waiting for
/// the projection to reach the log's head ends.
pub(crate) fn follow<S: Projected>(state: Arc<RwLock<S>>, store: SharedStore) {
    let mut next = state.read().unwrap_or_else(|p| p.into_inner()).position() + 1;
    tokio::spawn(async move {
        let mut head = store.watch_head();
        let mut last_checkpoint = Instant::now();
        let mut since_checkpoint = 0u64;
        loop {
            // Seen before reading: a commit after this wakes the wait below.
            head.borrow_and_update();
            let (events, last) = match store.read_all_where(next, FOLLOW_PAGE, S::wants).await {
                Ok(page) => page,
                Err(dialtone_eventlog::Error::Closed) => return,
                Err(e) => {
                    tracing::warn!(error = %e, projection = S::NAME, "projection: read failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if last < next {
                // Caught up; the sender goes away when the store stops.
                if head.changed().await.is_err() {
                    return;
                }
                continue;
            }
            since_checkpoint += last + 1 - next;
            next = last + 1;
            // How far behind the head this follower is: one that falls out
            // of the writer's recent events reads the database instead.
            metrics::gauge!("dialtone_projection_lag_events", "projection" => S::NAME)
                .set(store.head_position().saturating_sub(last) as f64);
            let due_state = {
                let mut guard = state.write().unwrap_or_else(|p| p.into_inner());
                for event in &events {
                    guard.fold(event);
                }
                guard.read_up_to(last);
                guard.report();
                let due = since_checkpoint >= CHECKPOINT_EVENTS
                    || (since_checkpoint > 0 && last_checkpoint.elapsed() >= CHECKPOINT_EVERY);
                due.then(|| guard.clone())
            };
            if let Some(snapshot) = due_state {
                since_checkpoint = 0;
                last_checkpoint = Instant::now();
                save_checkpoint(&store, &snapshot).await;
            }
        }
    });
}

/// Waits until `state` has folded in (or read past) every event up to
/// `position`, looking every `poll`; false if that takes longer than
/// `timeout`. What an API call that wrote an event waits for before it
/// answers from the projection.
pub(crate) async fn caught_up<S: Projected>(
    state: &RwLock<S>,
    position: Position,
    timeout: Duration,
    poll: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if state.read().unwrap_or_else(|p| p.into_inner()).position() >= position {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(poll).await;
    }
}

/// Saves `state` as the projection's checkpoint (failures are logged: a
/// lost checkpoint only makes the next start-up read more of the log).
pub(crate) async fn save_checkpoint<S: Projected>(store: &SharedStore, state: &S) {
    let data = match serde_json::to_string(state) {
        Ok(data) => data,
        Err(e) => {
            tracing::warn!(error = %e, projection = S::NAME, "cannot serialise checkpoint");
            return;
        }
    };
    let snapshot = Snapshot {
        stream: S::CHECKPOINT_STREAM.to_owned(),
        version: state.position(),
        schema_version: S::CHECKPOINT_SCHEMA,
        data,
    };
    if let Err(e) = store.save_snapshot(snapshot).await {
        tracing::warn!(error = %e, projection = S::NAME, "cannot save checkpoint");
    }
}
