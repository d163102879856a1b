//! Deadlines of aggregates that may be passivated: a node-level timer
//! queue. A user with contacts does not need a live actor to have them
//! expired on time: its actor registers its next deadline here, may then be
//! passivated, and is activated again when the deadline passes.
//!
//! This module knows nothing of actors: [`run`] is given what to do when a
//! deadline passes (the `Directory` runs the aggregate's deadline command),
//! so that the actors and the directory depend on it, never the reverse.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Display;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use crate::{now_us, Result};
use dialtone_domain::Timestamp;

/// How many deadline commands run at once (e.g. at start-up, when many
/// contacts expired while the node was down).
const CONCURRENCY: usize = 256;

pub(crate) struct Deadlines<Id> {
    state: Mutex<State<Id>>,
    wake: Notify,
}

struct State<Id> {
    queue: BTreeSet<(Timestamp, Id)>,
    by_id: HashMap<Id, Timestamp>,
}

impl<Id: Copy + Ord + Hash> Deadlines<Id> {
    pub(crate) fn new() -> Self {
        Deadlines {
            state: Mutex::new(State {
                queue: BTreeSet::new(),
                by_id: HashMap::new(),
            }),
            wake: Notify::new(),
        }
    }

    /// Sets (or clears, with `None`) the next deadline of `id`.
    pub(crate) fn set(&self, id: Id, at: Option<Timestamp>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let current = state.by_id.get(&id).copied();
        if current == at {
            return;
        }
        if let Some(old) = current {
            state.queue.remove(&(old, id));
            state.by_id.remove(&id);
        }
        if let Some(at) = at {
            let earliest = state.queue.first().is_none_or(|(first, _)| at < *first);
            state.queue.insert((at, id));
            state.by_id.insert(id, at);
            if earliest {
                self.wake.notify_one();
            }
        }
    }

    /// Removes and returns the ids whose deadline is at or before `now`,
    /// and the next deadline after them.
    fn take_due(&self, now: Timestamp) -> (Vec<Id>, Option<Timestamp>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut due = Vec::new();
        while let Some(&(at, id)) = state.queue.first() {
            if at > now {
                return (due, Some(at));
            }
            state.queue.pop_first();
            state.by_id.remove(&id);
            due.push(id);
        }
        (due, None)
    }

    pub(crate) fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_id
            .len()
    }
}

/// Runs `fire` for each id whose deadline passes, forever. A failed run
/// is tried again a second later.
pub(crate) async fn run<Id, Fire, Done>(deadlines: Arc<Deadlines<Id>>, fire: Fire)
where
    Id: Copy + Ord + Hash + Display + Send + Sync + 'static,
    Fire: Fn(Id) -> Done,
    Done: Future<Output = Result<()>> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    loop {
        let (due, next) = deadlines.take_due(now_us());
        for id in due {
            let Ok(permit) = limit.clone().acquire_owned().await else {
                return;
            };
            let done = fire(id);
            let deadlines = deadlines.clone();
            tokio::spawn(async move {
                if let Err(e) = done.await {
                    tracing::warn!(%id, error = %e, "deadline command failed; retrying in 1 s");
                    let retry_at = now_us() + 1_000_000;
                    deadlines.set(id, Some(retry_at));
                }
                drop(permit);
            });
        }
        match next {
            Some(at) => {
                // A little after the deadline, so that `now >= deadline` holds.
                let wait = Duration::from_micros(u64::try_from(at - now_us()).unwrap_or(0))
                    + Duration::from_millis(1);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = deadlines.wake.notified() => {}
                }
            }
            None => deadlines.wake.notified().await,
        }
    }
}
