//! Which call legs are in progress: a projection of the log's `call`
//! events with a checkpoint (`$projection-calls`), in the style of
//! [`RegistrationIndex`](crate::RegistrationIndex).
//!
//! It answers "which calls are in progress in a domain" without loading
//! every user, and at start-up it closes the legs the log still shows in
//! progress: the SIP proxy keeps its dialogs in memory, so after a restart
//! (a crash or not) nobody will ever end those legs. Each is closed through
//! its user actor with cause `node_restart` and hang-up side `system`
//! (`CallEnded` if it was answered, else `CallFailed` with SIP status 0).
//! Only legs in progress before the start are closed: the list is taken
//! when the index has caught up with the log, before the SIP gateway runs,
//! and a leg is addressed by its `call_id`, fresh for every call.
//!
//! One node per log (the single-node deployment): a second node sharing
//! the log would close the first one's live legs at its start.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use dialtone_domain::call::{CallStep, Cause, Direction, HangupSide, LegState};
use dialtone_domain::event::{category_of, EventCategory};
use dialtone_domain::{user, DomainId, Event, Timestamp, UserId};
use dialtone_eventlog::{Position, RecordedEvent, SharedStore};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::aggregate::Meta;
use crate::directory::Directory;
use crate::projection::Projected;
use crate::Result;

/// The snapshot stream of this projection (not an event stream).
const CHECKPOINT_STREAM: &str = "$projection-calls";
const CHECKPOINT_SCHEMA: u32 = 1;
/// Legs closed at the same time at start-up.
const CLOSE_CONCURRENCY: usize = 64;

/// A leg in progress, as the log shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveLeg {
    pub user_id: UserId,
    pub domain_id: DomainId,
    pub call_id: String,
    pub direction: Direction,
    /// The caller, `user@domain`.
    pub from: String,
    /// The callee, `user@domain`.
    pub to: String,
    pub sip_call_id: String,
    pub state: LegState,
    pub started_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<String>,
}

impl ActiveLeg {
    /// The step that closes this leg after a restart.
    fn closing_step(&self) -> CallStep {
        if self.state == LegState::Answered {
            CallStep::End {
                call_id: self.call_id.clone(),
                cause: Cause::NodeRestart,
                side: HangupSide::System,
            }
        } else {
            CallStep::Fail {
                call_id: self.call_id.clone(),
                sip_status: 0,
                cause: Cause::NodeRestart,
            }
        }
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct State {
    /// Last position folded in.
    position: Position,
    /// Legs in progress by user.
    legs: HashMap<UserId, Vec<ActiveLeg>>,
    /// Legs in progress by `call_id` (for the gauge of calls, which counts
    /// a call with two legs once). Rebuilt from `legs` after loading.
    #[serde(skip)]
    calls: HashMap<String, u32>,
}

impl State {
    fn rebuild_calls(&mut self) {
        self.calls.clear();
        for leg in self.legs.values().flatten() {
            *self.calls.entry(leg.call_id.clone()).or_default() += 1;
        }
    }

    fn leg_mut(&mut self, user: UserId, call_id: &str) -> Option<&mut ActiveLeg> {
        self.legs
            .get_mut(&user)?
            .iter_mut()
            .find(|l| l.call_id == call_id)
    }

    fn remove(&mut self, user: UserId, call_id: &str) {
        let Some(legs) = self.legs.get_mut(&user) else {
            return;
        };
        let before = legs.len();
        legs.retain(|l| l.call_id != call_id);
        if legs.len() < before {
            if let Some(count) = self.calls.get_mut(call_id) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.calls.remove(call_id);
                }
            }
        }
        if legs.is_empty() {
            self.legs.remove(&user);
        }
    }
}

/// The live projection. Cheap to clone.
#[derive(Clone)]
pub struct CallIndex {
    state: Arc<RwLock<State>>,
}

impl CallIndex {
    /// Loads the checkpoint, catches up with the log, keeps following it in
    /// the background, then closes every leg that was in progress (see the
    /// module documentation) and returns once they are closed. Run it
    /// before the SIP gateway starts.
    pub async fn start(store: SharedStore, directory: Directory) -> Result<Self> {
        let state: State = crate::projection::catch_up(&store).await?;
        let stale: Vec<ActiveLeg> = state.legs.values().flatten().cloned().collect();
        let index = CallIndex {
            state: Arc::new(RwLock::new(state)),
        };
        crate::projection::follow(index.state.clone(), store);
        close_stale(&directory, stale).await;
        Ok(index)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The calls in progress with a leg in `domain`, each with all its legs
    /// in progress (a cross-domain call's other leg included), ordered by
    /// start (then `call_id`); legs of a call by start.
    pub fn active_in(&self, domain: DomainId) -> Vec<Vec<ActiveLeg>> {
        let state = self.read();
        let mut calls: HashMap<&str, Vec<ActiveLeg>> = HashMap::new();
        for leg in state.legs.values().flatten() {
            if leg.domain_id == domain {
                calls.entry(leg.call_id.as_str()).or_default();
            }
        }
        for leg in state.legs.values().flatten() {
            if let Some(legs) = calls.get_mut(leg.call_id.as_str()) {
                legs.push(leg.clone());
            }
        }
        let mut calls: Vec<Vec<ActiveLeg>> = calls
            .into_values()
            .map(|mut legs| {
                legs.sort_by_key(|l| (l.started_at, l.direction == Direction::Inbound));
                legs
            })
            .collect();
        calls.sort_by(|a, b| {
            let key = |legs: &[ActiveLeg]| {
                legs.first()
                    .map(|l| (l.started_at, l.call_id.clone()))
                    .unwrap_or_default()
            };
            key(a).cmp(&key(b))
        });
        calls
    }

    /// Number of calls in progress (all domains; a call counts once).
    pub fn calls_in_progress(&self) -> usize {
        self.read().calls.len()
    }

    /// The position the index has folded up to.
    pub fn position(&self) -> Position {
        self.read().position
    }

    /// Saves a checkpoint now (at shutdown).
    pub async fn checkpoint(&self, store: &SharedStore) {
        let state = self.read().clone();
        crate::projection::save_checkpoint(store, &state).await;
    }
}

/// Closes the legs left in progress by the previous run, a few at a time,
/// through their user actors (which write nothing for a leg they no longer
/// have in progress).
async fn close_stale(directory: &Directory, legs: Vec<ActiveLeg>) {
    if legs.is_empty() {
        return;
    }
    let started = Instant::now();
    let count = legs.len();
    futures::stream::iter(legs)
        .for_each_concurrent(CLOSE_CONCURRENCY, |leg| async move {
            let command = user::Command::Call(Box::new(leg.closing_step()));
            let meta = Meta {
                correlation_id: Some(leg.sip_call_id.clone()),
                ..Meta::default()
            };
            if let Err(e) = directory.execute_user(leg.user_id, command, meta).await {
                tracing::warn!(user = %leg.user_id, call_id = %leg.call_id, error = %e,
                    "cannot close a call leg left in progress by the previous run");
            }
        })
        .await;
    tracing::info!(
        count,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "closed call legs left in progress by the previous run (cause node_restart)"
    );
}

impl Projected for State {
    const NAME: &'static str = "calls";
    const CHECKPOINT_STREAM: &'static str = CHECKPOINT_STREAM;
    const CHECKPOINT_SCHEMA: u32 = CHECKPOINT_SCHEMA;

    fn position(&self) -> Position {
        self.position
    }

    fn wants(recorded: &RecordedEvent) -> bool {
        category_of(&recorded.event_type) == Some(EventCategory::Call)
    }

    fn read_up_to(&mut self, position: Position) {
        self.position = self.position.max(position);
    }

    fn fold(&mut self, recorded: &RecordedEvent) {
        self.position = recorded.position;
        if !Self::wants(recorded) {
            return;
        }
        let (Some(user), Some(domain)) = (recorded.user_id, recorded.domain_id) else {
            return;
        };
        let event = match Event::from_stored(
            &recorded.event_type,
            recorded.schema_version,
            &recorded.data,
        ) {
            Ok(Event::User(event)) => event,
            Ok(Event::Domain(_) | Event::Token(_) | Event::Conference(_) | Event::Number(_)) => {
                return
            }
            Err(e) => {
                tracing::warn!(position = recorded.position, error = %e, "calls projection: unreadable event skipped");
                return;
            }
        };
        let user = UserId(user);
        match event {
            user::Event::CallStarted {
                call_id,
                direction,
                from,
                to,
                sip_call_id,
                started_at,
            } => {
                let legs = self.legs.entry(user).or_default();
                if !legs.iter().any(|l| l.call_id == call_id) {
                    *self.calls.entry(call_id.clone()).or_default() += 1;
                    legs.push(ActiveLeg {
                        user_id: user,
                        domain_id: DomainId(domain),
                        call_id,
                        direction,
                        from,
                        to,
                        sip_call_id,
                        state: LegState::Trying,
                        started_at,
                        answered_at: None,
                        contact: None,
                    });
                }
            }
            user::Event::CallRinging { call_id } => {
                if let Some(leg) = self.leg_mut(user, &call_id) {
                    if leg.state == LegState::Trying {
                        leg.state = LegState::Ringing;
                    }
                }
            }
            user::Event::CallAnswered {
                call_id,
                contact,
                answered_at,
            } => {
                if let Some(leg) = self.leg_mut(user, &call_id) {
                    leg.state = LegState::Answered;
                    leg.answered_at = Some(answered_at);
                    leg.contact = Some(contact);
                }
            }
            user::Event::CallEnded { call_id, .. }
            | user::Event::CallFailed { call_id, .. }
            | user::Event::CallForwarded { call_id, .. } => self.remove(user, &call_id),
            _ => {}
        }
    }

    fn report(&self) {
        metrics::gauge!("dialtone_calls_active").set(self.calls.len() as f64);
    }

    fn loaded(&mut self) {
        self.rebuild_calls();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn recorded(position: Position, user: Uuid, event: user::Event) -> RecordedEvent {
        let event = Event::User(event);
        RecordedEvent {
            position,
            stream: format!("user-{user}"),
            version: position - 1,
            event_id: Uuid::new_v4(),
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            occurred_at_us: 1,
            domain_id: Some(Uuid::from_u128(9)),
            user_id: Some(user),
            node: "n".to_owned(),
            correlation_id: None,
            data: event.to_data().unwrap(),
        }
    }

    fn started(call_id: &str) -> user::Event {
        user::Event::CallStarted {
            call_id: call_id.to_owned(),
            direction: Direction::Outbound,
            from: "a@example.com".to_owned(),
            to: "b@example.com".to_owned(),
            sip_call_id: "s".to_owned(),
            started_at: 1,
        }
    }

    #[test]
    fn folds_legs_and_survives_its_checkpoint() {
        let (alice, bob) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut state = State::default();
        state.fold(&recorded(1, alice, started("c1")));
        state.fold(&recorded(2, bob, started("c1")));
        state.fold(&recorded(
            3,
            bob,
            user::Event::CallAnswered {
                call_id: "c1".to_owned(),
                contact: "sip:b@h".to_owned(),
                answered_at: 2,
            },
        ));
        state.fold(&recorded(4, alice, started("c2")));
        state.fold(&recorded(
            5,
            alice,
            user::Event::CallFailed {
                call_id: "c2".to_owned(),
                sip_status: 486,
                cause: Cause::UserBusy,
                failed_at: 3,
            },
        ));
        assert_eq!(state.position, 5);
        assert_eq!(state.calls.len(), 1, "{:?}", state.calls);
        assert_eq!(state.legs.values().flatten().count(), 2);

        let json = serde_json::to_string(&state).unwrap();
        let mut loaded: State = serde_json::from_str(&json).unwrap();
        loaded.rebuild_calls();
        assert_eq!(loaded.legs, state.legs);
        assert_eq!(loaded.calls, state.calls);
        let bob_leg = &loaded.legs[&UserId(bob)][0];
        assert_eq!(bob_leg.state, LegState::Answered);
        assert!(matches!(bob_leg.closing_step(), CallStep::End { .. }));
        let alice_leg = &loaded.legs[&UserId(alice)][0];
        assert!(matches!(
            alice_leg.closing_step(),
            CallStep::Fail { sip_status: 0, .. }
        ));

        loaded.fold(&recorded(
            6,
            alice,
            user::Event::CallEnded {
                call_id: "c1".to_owned(),
                cause: Cause::NormalClearing,
                hangup_side: HangupSide::Caller,
                duration_ms: 5,
                ended_at: 4,
            },
        ));
        assert_eq!(loaded.calls.len(), 1, "bob's leg is still in progress");
        assert!(!loaded.legs.contains_key(&UserId(alice)));
    }
}
