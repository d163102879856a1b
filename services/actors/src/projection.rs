//! Checkpointed projections that follow the whole log (the registrations
//! index, the call-leg index): one loop that folds every event in, and one
//! checkpoint format, shared by both.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use dialtone_eventlog::{subscribe_all, Position, RecordedEvent, SharedStore, Snapshot};
use futures::StreamExt;
use serde::Serialize;

/// Save a checkpoint at most this often...
const CHECKPOINT_EVERY: Duration = Duration::from_secs(30);
/// ...and once this many events were folded since the last one.
pub(crate) const CHECKPOINT_EVENTS: u64 = 50_000;

/// The state of a projection.
pub(crate) trait Projected: Clone + Serialize + Send + Sync + 'static {
    /// For logs ("registrations", "calls").
    const NAME: &'static str;
    /// The snapshot stream of the checkpoints (not an event stream).
    const CHECKPOINT_STREAM: &'static str;
    const CHECKPOINT_SCHEMA: u32;
    /// The last position folded in.
    fn position(&self) -> Position;
    fn fold(&mut self, recorded: &RecordedEvent);
    /// Publishes the projection's gauges.
    fn report(&self);
}

/// Folds every event after the state's position into it, for ever (until
/// the store closes), checkpointing now and then.
pub(crate) fn follow<S: Projected>(state: Arc<RwLock<S>>, store: SharedStore) {
    let from = state.read().unwrap_or_else(|p| p.into_inner()).position() + 1;
    tokio::spawn(async move {
        let mut events = std::pin::pin!(subscribe_all(store.clone(), from));
        let mut last_checkpoint = Instant::now();
        let mut since_checkpoint = 0u64;
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(dialtone_eventlog::Error::Closed) => return,
                Err(e) => {
                    tracing::warn!(error = %e, projection = S::NAME, "projection: read failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let due_state = {
                let mut guard = state.write().unwrap_or_else(|p| p.into_inner());
                guard.fold(&event);
                guard.report();
                since_checkpoint += 1;
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
