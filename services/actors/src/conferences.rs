//! The conferences in progress: a projection of the log's conference events
//! with a checkpoint (`$projection-conferences`), in the style of
//! [`CallIndex`](crate::CallIndex).
//!
//! It answers "which conferences are live in this domain (or this room)?"
//! for the API's `ListConferences` and for finding the live conference of
//! a room, without loading any conference's actor: a conference is one
//! stream (ADR 0025), so the alternative would be to list every
//! `conference-*` stream the log ever had and load each, which grows with
//! the log's history instead of with what is live now. The index holds
//! only the live ones (a conference leaves it with `ConferenceEnded`), and
//! for each what a listing shows: room, start, participants in, locked,
//! recording. What a participant is doing (muted, talking) is not here:
//! [`Provisioning::get_conference`](crate::Provisioning::get_conference)
//! reads it from the conference's actor, and `ParticipantTalking`, the
//! most frequent event, is skipped without being decoded.
//!
//! Its answers are as of [`ConferenceIndex::position`]; a reader that must
//! see everything written before its request (the API, after a command it
//! just ran) waits with [`ConferenceIndex::caught_up`].

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dialtone_domain::conference::{self, ParticipantId};
use dialtone_domain::{ConferenceId, DomainId, Event, Timestamp, UserName};
use dialtone_eventlog::{Position, RecordedEvent, SharedStore};
use serde::{Deserialize, Serialize};

use crate::projection::Projected;
use crate::Result;

/// The snapshot stream of this projection (not an event stream).
const CHECKPOINT_STREAM: &str = "$projection-conferences";
const CHECKPOINT_SCHEMA: u32 = 1;

/// One conference in progress, as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveConference {
    pub id: ConferenceId,
    pub domain_id: DomainId,
    /// The room's name in its domain.
    pub room: UserName,
    pub started_at: Timestamp,
    pub locked: bool,
    pub recording: bool,
    /// Who is in it now (turned-away callers never are).
    pub participants: BTreeSet<ParticipantId>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct State {
    /// Last position folded in.
    position: Position,
    live: HashMap<ConferenceId, LiveConference>,
    /// The live conferences of each domain (derived from `live`, rebuilt
    /// after loading the checkpoint).
    #[serde(skip)]
    by_domain: HashMap<DomainId, BTreeSet<ConferenceId>>,
}

impl State {
    fn rebuild_by_domain(&mut self) {
        self.by_domain.clear();
        for conference in self.live.values() {
            self.by_domain
                .entry(conference.domain_id)
                .or_default()
                .insert(conference.id);
        }
    }

    fn end(&mut self, id: ConferenceId) {
        if let Some(ended) = self.live.remove(&id) {
            if let Some(ids) = self.by_domain.get_mut(&ended.domain_id) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.by_domain.remove(&ended.domain_id);
                }
            }
        }
    }

    fn apply(&mut self, id: ConferenceId, event: conference::Event) {
        use conference::Event as E;
        if let E::ConferenceStarted {
            domain_id,
            room,
            started_at,
            ..
        } = event
        {
            self.live.insert(
                id,
                LiveConference {
                    id,
                    domain_id,
                    room,
                    started_at,
                    locked: false,
                    recording: false,
                    participants: BTreeSet::new(),
                },
            );
            self.by_domain.entry(domain_id).or_default().insert(id);
            return;
        }
        if matches!(event, E::ConferenceEnded { .. }) {
            self.end(id);
            return;
        }
        let Some(live) = self.live.get_mut(&id) else {
            return;
        };
        match event {
            E::ParticipantJoined { participant, .. } => {
                live.participants.insert(participant);
            }
            E::ParticipantLeft { participant, .. } => {
                live.participants.remove(&participant);
            }
            E::ConferenceLocked { .. } => live.locked = true,
            E::ConferenceUnlocked { .. } => live.locked = false,
            E::ConferenceRecordingStarted { .. } => live.recording = true,
            E::ConferenceRecordingStopped { .. } => live.recording = false,
            _ => {}
        }
    }
}

/// The live projection. Cheap to clone.
#[derive(Clone)]
pub struct ConferenceIndex {
    state: Arc<RwLock<State>>,
}

impl ConferenceIndex {
    /// Loads the checkpoint, catches up with the log and keeps following it
    /// in the background.
    pub async fn start(store: SharedStore) -> Result<Self> {
        let state: State = crate::projection::catch_up(&store).await?;
        let index = ConferenceIndex {
            state: Arc::new(RwLock::new(state)),
        };
        crate::projection::follow(index.state.clone(), store);
        Ok(index)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The live conferences of `domain` (of its room `room` only, when
    /// given), earliest started first (then by id).
    pub fn live_in(&self, domain: DomainId, room: Option<&UserName>) -> Vec<LiveConference> {
        let state = self.read();
        let mut found: Vec<LiveConference> = state
            .by_domain
            .get(&domain)
            .into_iter()
            .flatten()
            .filter_map(|id| state.live.get(id))
            .filter(|c| room.is_none_or(|room| c.room == *room))
            .cloned()
            .collect();
        found.sort_by_key(|c| (c.started_at, c.id));
        found
    }

    /// The live conference of a room: the one started last, if a previous
    /// one has not ended yet (the node's application holds one conference
    /// per room; an older one still live is one it has not ended).
    pub fn live_of_room(&self, domain: DomainId, room: &UserName) -> Option<LiveConference> {
        self.live_in(domain, Some(room)).pop()
    }

    /// The conference `id`, if it is live.
    pub fn get(&self, id: ConferenceId) -> Option<LiveConference> {
        self.read().live.get(&id).cloned()
    }

    /// Every live conference (all domains), earliest started first: what
    /// a node that lost its media sessions must end at start-up.
    pub fn all(&self) -> Vec<LiveConference> {
        let mut all: Vec<LiveConference> = self.read().live.values().cloned().collect();
        all.sort_by_key(|c| (c.started_at, c.id));
        all
    }

    /// The last position folded in: the answers cover every event up to it.
    pub fn position(&self) -> Position {
        self.read().position
    }

    /// Waits until the index has folded in every event up to `position`;
    /// false if that takes longer than `timeout`.
    pub async fn caught_up(&self, position: Position, timeout: Duration) -> bool {
        let poll = Duration::from_millis(5);
        crate::projection::caught_up(&self.state, position, timeout, poll).await
    }

    /// Saves a checkpoint now (at shutdown, so that the next start reads
    /// little of the log).
    pub async fn checkpoint(&self, store: &SharedStore) {
        let state = self.read().clone();
        crate::projection::save_checkpoint(store, &state).await;
    }
}

impl Projected for State {
    const NAME: &'static str = "conferences";
    const CHECKPOINT_STREAM: &'static str = CHECKPOINT_STREAM;
    const CHECKPOINT_SCHEMA: u32 = CHECKPOINT_SCHEMA;

    fn position(&self) -> Position {
        self.position
    }

    /// Talking and mutes change nothing here, and talking is most of a
    /// conference's events: skipped before decoding (not even copied out
    /// of the log), as is the rest of the log.
    fn wants(recorded: &RecordedEvent) -> bool {
        matches!(
            recorded.event_type.as_str(),
            "ConferenceStarted"
                | "ConferenceEnded"
                | "ParticipantJoined"
                | "ParticipantLeft"
                | "ConferenceLocked"
                | "ConferenceUnlocked"
                | "ConferenceRecordingStarted"
                | "ConferenceRecordingStopped"
        )
    }

    fn read_up_to(&mut self, position: Position) {
        self.position = self.position.max(position);
    }

    fn fold(&mut self, recorded: &RecordedEvent) {
        self.position = recorded.position;
        if !Self::wants(recorded) {
            return;
        }
        let Some(id) = ConferenceId::from_stream(&recorded.stream) else {
            return;
        };
        match Event::from_stored(
            &recorded.event_type,
            recorded.schema_version,
            &recorded.data,
        ) {
            Ok(Event::Conference(event)) => self.apply(id, event),
            Ok(Event::Domain(_) | Event::User(_) | Event::Token(_) | Event::Number(_)) => {}
            Err(e) => {
                tracing::warn!(position = recorded.position, error = %e, "conferences projection: unreadable event skipped");
            }
        }
    }

    fn report(&self) {
        metrics::gauge!("dialtone_conferences_live").set(self.live.len() as f64);
        metrics::gauge!("dialtone_conference_participants").set(
            self.live
                .values()
                .map(|c| c.participants.len())
                .sum::<usize>() as f64,
        );
    }

    fn loaded(&mut self) {
        self.rebuild_by_domain();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conference::{EndReason, LeaveReason};
    use uuid::Uuid;

    fn recorded(position: Position, id: ConferenceId, event: conference::Event) -> RecordedEvent {
        let event = Event::Conference(event);
        RecordedEvent {
            position,
            stream: id.stream(),
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

    fn started(domain: u128, room: &str, at: Timestamp) -> conference::Event {
        conference::Event::ConferenceStarted {
            domain_id: DomainId(Uuid::from_u128(domain)),
            room: UserName::parse(room).unwrap(),
            max_participants: 10,
            end_with_moderator: false,
            muted_on_entry: false,
            started_at: at,
        }
    }

    fn p(n: u128) -> ParticipantId {
        ParticipantId(Uuid::from_u128(n))
    }

    fn joined(n: u128) -> conference::Event {
        conference::Event::ParticipantJoined {
            participant: p(n),
            caller: format!("user{n}@example.com"),
            moderator: false,
            muted: false,
            joined_at: 2,
        }
    }

    fn left(n: u128, reason: LeaveReason, caller: Option<&str>) -> conference::Event {
        conference::Event::ParticipantLeft {
            participant: p(n),
            reason,
            caller: caller.map(str::to_owned),
            left_at: 3,
        }
    }

    #[test]
    fn lists_the_live_conferences_per_domain_and_room_and_survives_its_checkpoint() {
        let (a, b, c) = (
            ConferenceId(Uuid::from_u128(1)),
            ConferenceId(Uuid::from_u128(2)),
            ConferenceId(Uuid::from_u128(3)),
        );
        let events = [
            (a, started(10, "standup", 100)),
            (a, joined(1)),
            (a, joined(2)),
            // Turned away: never in, so never counted.
            (a, left(3, LeaveReason::WrongPin, Some("mallory@x.test"))),
            (
                a,
                conference::Event::ParticipantTalking {
                    participant: p(1),
                    talking: true,
                    changed_at: 4,
                },
            ),
            (b, started(10, "weekly", 50)),
            (b, joined(4)),
            (a, conference::Event::ConferenceLocked { locked_at: 5 }),
            (c, started(20, "standup", 10)),
            (c, joined(5)),
            (c, left(5, LeaveReason::HungUp, None)),
            (
                c,
                conference::Event::ConferenceEnded {
                    reason: EndReason::Empty,
                    ended_at: 6,
                },
            ),
            (a, left(2, LeaveReason::Kicked, None)),
        ];
        let mut state = State::default();
        for (i, (id, event)) in events.into_iter().enumerate() {
            state.fold(&recorded(i as Position + 1, id, event));
        }
        assert_eq!(state.position, 13);
        let index = ConferenceIndex {
            state: Arc::new(RwLock::new(state.clone())),
        };
        let domain = DomainId(Uuid::from_u128(10));
        let live = index.live_in(domain, None);
        // By start: weekly (50) before standup (100).
        assert_eq!(
            live.iter().map(|c| c.id).collect::<Vec<_>>(),
            [b, a],
            "{live:?}"
        );
        assert_eq!(live[1].participants, [p(1)].into_iter().collect());
        assert!(live[1].locked && !live[1].recording);
        let standup = UserName::parse("standup").unwrap();
        assert_eq!(index.live_of_room(domain, &standup).map(|c| c.id), Some(a));
        // The other domain's conference ended: gone, and so is its domain.
        assert!(index
            .live_in(DomainId(Uuid::from_u128(20)), None)
            .is_empty());
        assert!(!state.by_domain.contains_key(&DomainId(Uuid::from_u128(20))));
        assert_eq!(index.get(c), None);

        let json = serde_json::to_string(&state).unwrap();
        let mut loaded: State = serde_json::from_str(&json).unwrap();
        assert!(loaded.by_domain.is_empty(), "derived, not stored");
        loaded.loaded();
        assert_eq!(loaded.by_domain, state.by_domain);
        assert_eq!(loaded.live, state.live);
    }
}
