//! Which voicemail audio the mailboxes name now: a projection of the log's
//! `VoicemailLeft`, `VoicemailDeleted` and `GreetingChanged` events with a
//! checkpoint (`$projection-voicemail-audio`), in the style of
//! [`RegistrationIndex`](crate::RegistrationIndex).
//!
//! It also names the recordings of conferences (`ConferenceRecordingStarted`,
//! from the moment a recording starts: its audio is stored when it stops,
//! and must never look like an orphan), which no event drops yet: a
//! recording is kept until an operator deletes it.
//!
//! It is what the node's blob sweeper asks "does any mailbox name this
//! audio?" (ADR 0023, "Sweeping orphans") without loading every user's
//! actor: one hash lookup per blob. It follows the mailbox's own `apply`
//! (`dialtone_domain::mailbox::apply`) for the audio it names: a message
//! left adds its id, a message deleted removes it, a greeting changed
//! replaces the greeting's id (or clears it), and a user created starts
//! from an empty mailbox (as `user::evolve` does). A user deleted keeps
//! its mailbox in its state, so its audio stays named here too.
//!
//! Its answer is as of [`AudioIndex::position`]; a caller that needs it to
//! cover every event up to some position waits with
//! [`AudioIndex::caught_up`].

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dialtone_domain::mailbox::AudioId;
use dialtone_domain::{conference, user, ConferenceId, Event, UserId};
use dialtone_eventlog::{Position, RecordedEvent, SharedStore};
use serde::{Deserialize, Serialize};

use crate::projection::Projected;
use crate::Result;

/// The snapshot stream of this projection (not an event stream).
const CHECKPOINT_STREAM: &str = "$projection-voicemail-audio";
/// 2: conference recordings (a checkpoint of 1 lacks those before it, so
/// it is replayed from the start).
const CHECKPOINT_SCHEMA: u32 = 2;

/// The audio one mailbox names.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Named {
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    messages: BTreeSet<AudioId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    greeting: Option<AudioId>,
}

impl Named {
    fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.greeting.is_none()
    }

    fn ids(&self) -> impl Iterator<Item = &AudioId> {
        self.messages.iter().chain(&self.greeting)
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct State {
    /// Last position folded in.
    position: Position,
    /// Users whose mailbox names some audio.
    users: HashMap<UserId, Named>,
    /// Recordings of conferences, with their conference.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    recordings: HashMap<AudioId, ConferenceId>,
    /// Every named audio id and the user whose mailbox names it (derived
    /// from `users`, rebuilt after loading the checkpoint).
    #[serde(skip)]
    owners: HashMap<AudioId, UserId>,
}

impl State {
    fn rebuild_owners(&mut self) {
        self.owners = self
            .users
            .iter()
            .flat_map(|(user, named)| named.ids().map(|id| (id.clone(), *user)))
            .collect();
    }

    fn change(&mut self, user: UserId, f: impl FnOnce(&mut Named)) {
        let named = self.users.entry(user).or_default();
        for id in named.ids() {
            self.owners.remove(id);
        }
        f(named);
        for id in named.ids() {
            self.owners.insert(id.clone(), user);
        }
        if named.is_empty() {
            self.users.remove(&user);
        }
    }
}

/// The live projection. Cheap to clone.
#[derive(Clone)]
pub struct AudioIndex {
    state: Arc<RwLock<State>>,
}

impl AudioIndex {
    /// Loads the checkpoint, catches up with the log and keeps following it
    /// in the background.
    pub async fn start(store: SharedStore) -> Result<Self> {
        let state: State = crate::projection::catch_up(&store).await?;
        let index = AudioIndex {
            state: Arc::new(RwLock::new(state)),
        };
        crate::projection::follow(index.state.clone(), store);
        Ok(index)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The last position folded in: the answers cover every event up to it.
    pub fn position(&self) -> Position {
        self.read().position
    }

    /// The user whose mailbox names `audio` (a message or the greeting),
    /// if any does.
    pub fn owner(&self, audio: &str) -> Option<UserId> {
        let audio = AudioId::parse(audio).ok()?;
        self.read().owners.get(&audio).copied()
    }

    /// Whether a mailbox or a conference names `audio`: what the blob
    /// sweeper keeps.
    pub fn names(&self, audio: &str) -> bool {
        let Ok(audio) = AudioId::parse(audio) else {
            return false;
        };
        let state = self.read();
        state.owners.contains_key(&audio) || state.recordings.contains_key(&audio)
    }

    /// The conference whose recording `audio` is, if it is one.
    pub fn recording_of(&self, audio: &str) -> Option<ConferenceId> {
        let audio = AudioId::parse(audio).ok()?;
        self.read().recordings.get(&audio).copied()
    }

    /// Number of audio ids the mailboxes name.
    pub fn named(&self) -> usize {
        self.read().owners.len()
    }

    /// Waits until the index has folded in every event up to `position`;
    /// false if that takes longer than `timeout`.
    pub async fn caught_up(&self, position: Position, timeout: Duration) -> bool {
        let poll = Duration::from_millis(20);
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
    const NAME: &'static str = "voicemail audio";
    const CHECKPOINT_STREAM: &'static str = CHECKPOINT_STREAM;
    const CHECKPOINT_SCHEMA: u32 = CHECKPOINT_SCHEMA;

    fn position(&self) -> Position {
        self.position
    }

    fn wants(recorded: &RecordedEvent) -> bool {
        matches!(
            recorded.event_type.as_str(),
            "ConferenceRecordingStarted"
                | "VoicemailLeft"
                | "VoicemailDeleted"
                | "GreetingChanged"
                | "UserCreated"
        )
    }

    fn read_up_to(&mut self, position: Position) {
        self.position = self.position.max(position);
    }

    fn fold(&mut self, recorded: &RecordedEvent) {
        self.position = recorded.position;
        // Most events are none of these: no decoding for them.
        if recorded.event_type == "ConferenceRecordingStarted" {
            let Some(conference) = ConferenceId::from_stream(&recorded.stream) else {
                return;
            };
            if let Ok(Event::Conference(conference::Event::ConferenceRecordingStarted {
                audio,
                ..
            })) = Event::from_stored(
                &recorded.event_type,
                recorded.schema_version,
                &recorded.data,
            ) {
                self.recordings.insert(audio, conference);
            }
            return;
        }
        if !matches!(
            recorded.event_type.as_str(),
            "VoicemailLeft" | "VoicemailDeleted" | "GreetingChanged" | "UserCreated"
        ) {
            return;
        }
        let Some(user) = recorded.user_id.map(UserId) else {
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
                tracing::warn!(position = recorded.position, error = %e, "voicemail audio projection: unreadable event skipped");
                return;
            }
        };
        match event {
            user::Event::VoicemailLeft { message_id, .. } => self.change(user, |named| {
                named.messages.insert(message_id);
            }),
            user::Event::VoicemailDeleted { message_id, .. } => self.change(user, |named| {
                named.messages.remove(&message_id);
            }),
            user::Event::GreetingChanged { greeting, .. } => self.change(user, |named| {
                named.greeting = greeting.map(|g| g.audio);
            }),
            // `user::evolve` starts a created user with an empty mailbox.
            user::Event::UserCreated { .. } => self.change(user, |named| *named = Named::default()),
            _ => {}
        }
    }

    fn report(&self) {
        metrics::gauge!("dialtone_voicemail_audio_named").set(self.owners.len() as f64);
    }

    fn loaded(&mut self) {
        self.rebuild_owners();
    }
}

#[cfg(test)]
mod tests {
    use dialtone_domain::mailbox::{self, Greeting, Mailbox};
    use uuid::Uuid;

    use super::*;

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

    fn id(n: u8) -> AudioId {
        AudioId::from_random([n; 16])
    }

    fn left(n: u8) -> user::Event {
        user::Event::VoicemailLeft {
            message_id: id(n),
            from: "bob@example.com".to_owned(),
            duration_ms: 2_000,
            left_at: 1,
        }
    }

    fn deleted(n: u8) -> user::Event {
        user::Event::VoicemailDeleted {
            message_id: id(n),
            deleted_at: 2,
        }
    }

    fn greeting(n: Option<u8>) -> user::Event {
        user::Event::GreetingChanged {
            greeting: n.map(|n| Greeting {
                audio: id(n),
                duration_ms: 1_000,
            }),
            changed_at: 3,
        }
    }

    /// The ids a mailbox names after `mailbox::apply` of `events`: what the
    /// index must agree with.
    fn named_by_the_domain(events: &[user::Event]) -> BTreeSet<AudioId> {
        let mut mailbox = Mailbox::default();
        for event in events {
            mailbox::apply(&mut mailbox, event);
        }
        mailbox
            .messages
            .iter()
            .map(|m| m.message_id.clone())
            .chain(mailbox.greeting.map(|g| g.audio))
            .collect()
    }

    #[test]
    fn names_what_the_mailboxes_name_and_survives_its_checkpoint() {
        let (alice, bob) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let alice_events = vec![
            left(1),
            left(2),
            greeting(Some(10)),
            deleted(1),
            greeting(Some(11)),
            left(3),
            user::Event::VoicemailRead {
                message_id: id(3),
                read_at: 4,
            },
        ];
        let bob_events = vec![left(20), greeting(Some(21)), greeting(None), deleted(20)];
        let mut state = State::default();
        let mut position = 0;
        for event in &alice_events {
            position += 1;
            state.fold(&recorded(position, alice, event.clone()));
        }
        for event in &bob_events {
            position += 1;
            state.fold(&recorded(position, bob, event.clone()));
        }
        assert_eq!(state.position, 11);
        let named: BTreeSet<AudioId> = state.owners.keys().cloned().collect();
        assert_eq!(named, named_by_the_domain(&alice_events));
        assert_eq!(named, [id(2), id(3), id(11)].into_iter().collect());
        assert!(named_by_the_domain(&bob_events).is_empty());
        assert!(!state.users.contains_key(&UserId(bob)), "bob names nothing");
        assert_eq!(state.owners[&id(3)], UserId(alice));

        let json = serde_json::to_string(&state).unwrap();
        let mut loaded: State = serde_json::from_str(&json).unwrap();
        assert!(loaded.owners.is_empty(), "derived, not stored");
        loaded.loaded();
        assert_eq!(loaded.owners, state.owners);
        assert_eq!(loaded.users, state.users);
    }

    /// Events of other types move the position and change nothing.
    #[test]
    fn names_conference_recordings_from_their_start() {
        let conference = ConferenceId(Uuid::from_u128(5));
        let event = Event::Conference(conference::Event::ConferenceRecordingStarted {
            audio: id(30),
            started_at: 1,
        });
        let mut state = State::default();
        state.fold(&RecordedEvent {
            stream: conference.stream(),
            user_id: None,
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            data: event.to_data().unwrap(),
            ..recorded(1, Uuid::from_u128(1), left(1))
        });
        assert_eq!(state.position, 1);
        assert_eq!(state.recordings.get(&id(30)), Some(&conference));
        let index = AudioIndex {
            state: Arc::new(RwLock::new(state.clone())),
        };
        assert!(index.names(id(30).as_str()));
        assert_eq!(index.recording_of(id(30).as_str()), Some(conference));
        assert_eq!(index.owner(id(30).as_str()), None, "no mailbox's");
        assert!(!index.names(id(31).as_str()));
        let json = serde_json::to_string(&state).unwrap();
        let loaded: State = serde_json::from_str(&json).unwrap();
        assert_eq!(loaded.recordings, state.recordings);
    }

    #[test]
    fn other_events_only_move_the_position() {
        let alice = Uuid::from_u128(1);
        let mut state = State::default();
        state.fold(&recorded(1, alice, left(1)));
        state.fold(&recorded(2, alice, user::Event::DndChanged { dnd: true }));
        assert_eq!(state.position, 2);
        assert_eq!(state.owners.len(), 1);
    }
}
