//! Which users have live contacts: a projection of the log with a
//! checkpoint, so that a node knows at start-up which user actors to wake
//! (their contacts may have expired while the node was down) and can list
//! who is online in a domain without loading every user.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use dialtone_domain::{DomainId, UserId};
use dialtone_eventlog::{Position, RecordedEvent, SharedStore};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::directory::Directory;
use crate::projection::Projected;
use crate::Result;

/// The snapshot stream of this projection (not an event stream).
const CHECKPOINT_STREAM: &str = "$projection-registrations";
const CHECKPOINT_SCHEMA: u32 = 1;
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
        let state: State = crate::projection::catch_up(&store).await?;
        let to_wake: Vec<UserId> = state.users.keys().copied().collect();
        let index = RegistrationIndex {
            state: Arc::new(RwLock::new(state)),
        };
        crate::projection::follow(index.state.clone(), store.clone());
        wake(directory, to_wake);
        Ok(index)
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
        crate::projection::save_checkpoint(store, &state).await;
    }

    /// Number of users with contacts, all domains.
    pub fn registered_users(&self) -> usize {
        self.read().users.len()
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

impl Projected for State {
    const NAME: &'static str = "registrations";
    const CHECKPOINT_STREAM: &'static str = CHECKPOINT_STREAM;
    const CHECKPOINT_SCHEMA: u32 = CHECKPOINT_SCHEMA;

    fn position(&self) -> Position {
        self.position
    }

    fn wants(event: &RecordedEvent) -> bool {
        matches!(
            event.event_type.as_str(),
            "ContactRegistered" | "ContactRemoved" | "ContactExpired" | "ContactReplaced"
        )
    }

    fn read_up_to(&mut self, position: Position) {
        self.position = self.position.max(position);
    }

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

    fn report(&self) {
        metrics::gauge!("dialtone_registrations_active").set(self.contacts as f64);
        metrics::gauge!("dialtone_registered_users").set(self.users.len() as f64);
    }
}
