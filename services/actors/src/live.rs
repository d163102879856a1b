//! The live actors of one kind of aggregate, by id, with their deadline
//! queue.
//!
//! The `Directory` starts an actor and lists it here; the actor removes
//! itself when it stops and registers its next deadline in the queue. Both
//! depend on this module, and it depends on neither: it is generic over the
//! handle it keeps (the actor's address), so that module dependencies go one
//! way (`directory` -> `aggregate` -> `live` -> `deadlines`).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use crate::deadlines::Deadlines;

/// Live actors of one kind, by id (see the module documentation).
pub(crate) struct LiveActors<Id, Handle> {
    live: Mutex<HashMap<Id, Handle>>,
    pub(crate) deadlines: Arc<Deadlines<Id>>,
}

impl<Id: Copy + Ord + Hash, Handle: Clone + PartialEq> LiveActors<Id, Handle> {
    pub(crate) fn new() -> Self {
        LiveActors {
            live: Mutex::new(HashMap::new()),
            deadlines: Arc::new(Deadlines::new()),
        }
    }

    /// The handle of `id`'s live actor; when there is none that is `alive`,
    /// the one `start` makes. Under one lock, so that two callers never
    /// start two actors for one id.
    pub(crate) fn get_or_start(
        &self,
        id: Id,
        alive: impl FnOnce(&Handle) -> bool,
        start: impl FnOnce() -> Handle,
    ) -> Handle {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(handle) = live.get(&id) {
            if alive(handle) {
                return handle.clone();
            }
        }
        let handle = start();
        live.insert(id, handle.clone());
        handle
    }

    /// Removes `handle` for `id`, unless a newer actor has replaced it.
    pub(crate) fn forget(&self, id: Id, handle: &Handle) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.get(&id) == Some(handle) {
            live.remove(&id);
        }
    }

    /// Every live actor's handle.
    pub(crate) fn all(&self) -> Vec<Handle> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}
