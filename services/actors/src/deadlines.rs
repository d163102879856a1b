//! Deadlines of aggregates that may be passivated: a node-level timer
//! queue. A user with contacts does not need a live actor to have them
//! expired on time: its actor registers its next deadline here, may then be
//! passivated, and is activated again when the deadline passes.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use crate::aggregate::{Aggregate, Meta};
use crate::directory::{Directory, Registry};
use crate::now_us;
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

/// Runs the deadline commands of one kind of aggregate, forever.
pub(crate) async fn run<A: Aggregate>(directory: Directory, registry: Arc<Registry<A>>) {
    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    loop {
        let (due, next) = registry.deadlines.take_due(now_us());
        for id in due {
            let Some(command) = A::deadline_command() else {
                continue;
            };
            let Ok(permit) = limit.clone().acquire_owned().await else {
                return;
            };
            let directory = directory.clone();
            let registry = registry.clone();
            tokio::spawn(async move {
                let result = directory
                    .execute(&registry, id, command, Meta::default(), |_| ())
                    .await;
                if let Err(e) = result {
                    tracing::warn!(%id, error = %e, "deadline command failed; retrying in 1 s");
                    let retry_at = now_us() + 1_000_000;
                    registry.deadlines.set(id, Some(retry_at));
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
                    _ = registry.deadlines.wake.notified() => {}
                }
            }
            None => registry.deadlines.wake.notified().await,
        }
    }
}
