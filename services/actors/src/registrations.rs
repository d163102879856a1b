//! Which users have live contacts: a projection of the log with a
//! checkpoint, so that a node knows at start-up which user actors to wake
//! (their contacts may have expired while the node was down) and can list
//! who is online in a domain without loading every user.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use dialtone_domain::{DomainId, UserId};
use dialtone_eventlog::{subscribe_all, Position, RecordedEvent, SharedStore, Snapshot};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::directory::Directory;
use crate::Result;

/// The snapshot stream of this projection (not an event stream).
const CHECKPOINT_STREAM: &str = "$projection-registrations";
const CHECKPOINT_SCHEMA: u32 = 1;
/// Save a checkpoint at most this often...
const CHECKPOINT_EVERY: Duration = Duration::from_secs(30);
/// ...and once this many events were folded since the last one.
const CHECKPOINT_EVENTS: u64 = 50_000;
/// User actors woken at the same time at start-up.
const WAKE_CONCURRENCY: usize = 64;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct State {
    /// Last position folded in.
    position: Position,
    /// Users with at least one contact: their domain and number of contacts.
    users: HashMap<UserId, (DomainId, u32)>,
    /// Contacts over all users.
    #[serde(default)]
    contacts: i64,
}

impl State {
    fn report(&self) {
        metrics::gauge!("dialtone_registrations_active").set(self.contacts as f64);
        metrics::gauge!("dialtone_registered_users").set(self.users.len() as f64);
    }
}

impl State {
    fn fold(&mut self, event: &RecordedEvent) {
        self.position = event.position;
        let delta: i64 = match event.event_type.as_str() {
            "ContactRegistered" => 1,
            "ContactRemoved" | "ContactExpired" | "ContactReplaced" => -1,
            _ => return,
        };
        let (Some(user), Some(domain)) = (event.user_id, event.domain_id) else {
            return;
        };
        let key = UserId(user);
        let entry = self.users.entry(key).or_insert((DomainId(domain), 0));
        let before = entry.1;
        let count = (i64::from(entry.1) + delta).max(0);
        entry.1 = u32::try_from(count).unwrap_or(u32::MAX);
        let after = entry.1;
        if after == 0 {
            self.users.remove(&key);
        }
        self.contacts = (self.contacts + i64::from(after) - i64::from(before)).max(0);
    }
}

/// The live projection. Cheap to clone.
#[derive(Clone)]
pub struct RegistrationIndex {
    state: Arc<RwLock<State>>,
}

impl RegistrationIndex {
    /// Loads the checkpoint, catches up with the log, keeps following it in
    /// the background, and wakes every user that has contacts (their actors
    /// expire overdue contacts on load and arm expiry timers).
    pub async fn start(store: SharedStore, directory: Directory) -> Result<Self> {
        let mut state = State::default();
        if let Some(snapshot) = store.load_snapshot(CHECKPOINT_STREAM).await? {
            if snapshot.schema_version == CHECKPOINT_SCHEMA {
                match serde_json::from_str::<State>(&snapshot.data) {
                    Ok(loaded) => state = loaded,
                    Err(e) => {
                        tracing::warn!(error = %e, "ignoring unreadable registrations checkpoint")
                    }
                }
            }
        }
        // Catch up to the head now, so that start-up knows every user.
        let head = store.head_position();
        let from = state.position;
        while state.position < head {
            let page = store.read_all(state.position + 1, 10_000).await?;
            if page.is_empty() {
                break;
            }
            for event in &page {
                state.fold(event);
            }
        }
        if state.position - from >= CHECKPOINT_EVENTS {
            // A long catch-up: save it, so that the next start is quick.
            save_checkpoint(&store, &state).await;
        }
        state.report();
        let to_wake: Vec<UserId> = state.users.keys().copied().collect();
        let index = RegistrationIndex {
            state: Arc::new(RwLock::new(state)),
        };
        index.follow(store.clone());
        wake(directory, to_wake);
        Ok(index)
    }

    fn follow(&self, store: SharedStore) {
        let state = self.state.clone();
        let from = self.read().position + 1;
        tokio::spawn(async move {
            let mut events = std::pin::pin!(subscribe_all(store.clone(), from));
            let mut last_checkpoint = Instant::now();
            let mut since_checkpoint = 0u64;
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(dialtone_eventlog::Error::Closed) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "registrations projection: read failed; retrying");
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

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Users of `domain` with at least one contact, and how many.
    pub fn online_in(&self, domain: DomainId) -> Vec<(UserId, u32)> {
        let mut users: Vec<(UserId, u32)> = self
            .read()
            .users
            .iter()
            .filter(|(_, (d, _))| *d == domain)
            .map(|(u, (_, n))| (*u, *n))
            .collect();
        users.sort();
        users
    }

    /// Saves a checkpoint now (at shutdown, so that the next start reads
    /// little of the log).
    pub async fn checkpoint(&self, store: &SharedStore) {
        let state = self.read().clone();
        save_checkpoint(store, &state).await;
    }

    /// Number of users with contacts, all domains.
    pub fn registered_users(&self) -> usize {
        self.read().users.len()
    }
}

async fn save_checkpoint(store: &SharedStore, state: &State) {
    let data = match serde_json::to_string(state) {
        Ok(data) => data,
        Err(e) => {
            tracing::warn!(error = %e, "cannot serialise registrations checkpoint");
            return;
        }
    };
    let snapshot = Snapshot {
        stream: CHECKPOINT_STREAM.to_owned(),
        version: state.position,
        schema_version: CHECKPOINT_SCHEMA,
        data,
    };
    if let Err(e) = store.save_snapshot(snapshot).await {
        tracing::warn!(error = %e, "cannot save registrations checkpoint");
    }
}

/// Activates the actors of users with contacts, a few at a time.
fn wake(directory: Directory, users: Vec<UserId>) {
    if users.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let started = Instant::now();
        let count = users.len();
        futures::stream::iter(users)
            .for_each_concurrent(WAKE_CONCURRENCY, |user| {
                let directory = directory.clone();
                async move {
                    if let Err(e) = directory.query_user(user, |_| ()).await {
                        tracing::warn!(%user, error = %e, "cannot wake user with contacts");
                    }
                }
            })
            .await;
        tracing::info!(
            count,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "woke users with contacts"
        );
    });
}
