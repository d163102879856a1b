//! Every assigned phone number: a projection of the numbers' events with a
//! checkpoint (`$projection-numbers`), in the style of
//! [`ConferenceIndex`](crate::ConferenceIndex).
//!
//! A number is its own stream (ADR 0028), so "which numbers does this
//! domain have?" and "where does a call to +15550001 go?" would otherwise
//! mean loading every `number-*` stream the log ever had. The index holds
//! the [`NumberTable`] (number → domain and target), which is what the
//! router will read for each call from a trunk and what the API lists.
//! Its answers are as of [`NumberIndex::position`]; a reader that must see
//! everything written before its request waits with
//! [`NumberIndex::caught_up`].

use std::sync::{Arc, RwLock};
use std::time::Duration;

use dialtone_domain::event::NUMBER_EVENT_TYPES;
use dialtone_domain::number::{Assignment, NumberTable, E164};
use dialtone_domain::{DomainId, Event};
use dialtone_eventlog::{Position, RecordedEvent, SharedStore};
use serde::{Deserialize, Serialize};

use crate::projection::Projected;
use crate::Result;

const CHECKPOINT_STREAM: &str = "$projection-numbers";
const CHECKPOINT_SCHEMA: u32 = 1;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct State {
    position: Position,
    table: NumberTable,
}

/// The live projection. Cheap to clone.
#[derive(Clone)]
pub struct NumberIndex {
    state: Arc<RwLock<State>>,
}

impl NumberIndex {
    /// Loads the checkpoint, catches up with the log and keeps following it
    /// in the background.
    pub async fn start(store: SharedStore) -> Result<Self> {
        let state: State = crate::projection::catch_up(&store).await?;
        let index = NumberIndex {
            state: Arc::new(RwLock::new(state)),
        };
        crate::projection::follow(index.state.clone(), store);
        Ok(index)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Where a call to `number` goes (the router's lookup).
    pub fn lookup(&self, number: E164) -> Option<Assignment> {
        self.read().table.lookup(number).cloned()
    }

    /// The numbers of `domain`, in numeric order.
    pub fn of_domain(&self, domain: DomainId) -> Vec<(E164, Assignment)> {
        self.read().table.of_domain(domain)
    }

    pub fn position(&self) -> Position {
        self.read().position
    }

    /// Waits until the index has folded in every event up to `position`;
    /// false if that takes longer than `timeout`.
    pub async fn caught_up(&self, position: Position, timeout: Duration) -> bool {
        let poll = Duration::from_millis(5);
        crate::projection::caught_up(&self.state, position, timeout, poll).await
    }

    /// Saves a checkpoint now (at shutdown).
    pub async fn checkpoint(&self, store: &SharedStore) {
        let state = self.read().clone();
        crate::projection::save_checkpoint(store, &state).await;
    }
}

impl Projected for State {
    const NAME: &'static str = "numbers";
    const CHECKPOINT_STREAM: &'static str = CHECKPOINT_STREAM;
    const CHECKPOINT_SCHEMA: u32 = CHECKPOINT_SCHEMA;

    fn position(&self) -> Position {
        self.position
    }

    fn wants(recorded: &RecordedEvent) -> bool {
        NUMBER_EVENT_TYPES.contains(&recorded.event_type.as_str())
    }

    fn read_up_to(&mut self, position: Position) {
        self.position = self.position.max(position);
    }

    fn fold(&mut self, recorded: &RecordedEvent) {
        self.position = recorded.position;
        if !Self::wants(recorded) {
            return;
        }
        match Event::from_stored(
            &recorded.event_type,
            recorded.schema_version,
            &recorded.data,
        ) {
            Ok(Event::Number(event)) => self.table.apply(&event),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(position = recorded.position, error = %e, "numbers projection: unreadable event skipped");
            }
        }
    }

    fn report(&self) {
        metrics::gauge!("dialtone_numbers_assigned").set(self.table.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dialtone_domain::number::{self, NumberTarget};
    use dialtone_domain::DomainName;
    use uuid::Uuid;

    fn recorded(position: Position, event: number::Event) -> RecordedEvent {
        let event = Event::Number(event);
        RecordedEvent {
            position,
            stream: "number-+15550001".into(),
            version: position - 1,
            event_id: Uuid::new_v4(),
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            occurred_at_us: 1,
            domain_id: Some(Uuid::from_u128(9)),
            user_id: None,
            node: "n".to_owned(),
            correlation_id: None,
            data: event.to_data().unwrap(),
        }
    }

    #[test]
    fn folds_assignments_updates_and_releases() {
        let n = E164::parse("+15550001").unwrap();
        let d = DomainId(Uuid::from_u128(9));
        let mut state = State::default();
        state.fold(&recorded(
            1,
            number::Event::NumberAssigned {
                number: n,
                domain_id: d,
                domain: DomainName::parse("example.com").unwrap(),
                target: NumberTarget::parse("alice").unwrap(),
                description: String::new(),
                assigned_at: 5,
            },
        ));
        assert_eq!(state.table.lookup(n).unwrap().target.to_string(), "alice");
        state.fold(&recorded(
            2,
            number::Event::NumberUpdated {
                number: n,
                domain_id: d,
                target: NumberTarget::parse("group:sales").unwrap(),
                description: "main line".into(),
            },
        ));
        let a = state.table.lookup(n).unwrap();
        assert_eq!(
            (a.target.to_string().as_str(), a.description.as_str()),
            ("group:sales", "main line")
        );
        state.fold(&recorded(
            3,
            number::Event::NumberReleased {
                number: n,
                domain_id: d,
            },
        ));
        assert!(state.table.lookup(n).is_none());
        assert_eq!(state.position, 3);
    }
}
