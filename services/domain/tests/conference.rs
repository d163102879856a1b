//! Property tests of the `Conference` aggregate: random command sequences
//! (valid and invalid, repeated, in any order) are decided and their events
//! folded; after every step the participants never exceed the maximum, a
//! participant joins at most once and leaves at most once (and only after
//! joining, unless it was turned away), a locked conference lets no one
//! but moderators in, an ended conference accepts nothing, and the events
//! rebuild the same state when replayed through their stored JSON form.

use std::collections::{BTreeMap, BTreeSet};

use dialtone_domain::conference::{
    self, Command, Conference, EndReason, Event as E, LeaveReason, ParticipantId, Refusal, Start,
    Status,
};
use dialtone_domain::mailbox::AudioId;
use dialtone_domain::{DomainId, Event, UserName};
use proptest::prelude::*;
use proptest::sample::select;
use uuid::Uuid;

const T0: i64 = 1_765_000_000_000_000;

fn participant() -> impl Strategy<Value = ParticipantId> {
    (1u128..=6).prop_map(|n| ParticipantId(Uuid::from_u128(n)))
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        2 => (1u32..=5, any::<bool>(), any::<bool>()).prop_map(|(max, end, muted)| {
            Command::Start(Start {
                domain_id: DomainId(Uuid::from_u128(7)),
                room: UserName::parse("standup").unwrap(),
                max_participants: max,
                end_with_moderator: end,
                muted_on_entry: muted,
            })
        }),
        8 => (participant(), any::<bool>()).prop_map(|(participant, moderator)| Command::Join {
            participant,
            caller: format!("{participant}@example.com"),
            moderator,
        }),
        2 => (participant(), select(&LeaveReason::ALL[..])).prop_map(|(participant, reason)| {
            Command::TurnAway {
                participant,
                caller: "someone@example.com".into(),
                reason,
            }
        }),
        4 => (participant(), select(&LeaveReason::ALL[..]))
            .prop_map(|(participant, reason)| Command::Leave { participant, reason }),
        1 => participant().prop_map(|participant| Command::Kick { participant }),
        2 => participant().prop_map(|participant| Command::Mute { participant }),
        2 => participant().prop_map(|participant| Command::Unmute { participant }),
        1 => Just(Command::MuteAll),
        1 => Just(Command::Lock),
        1 => Just(Command::Unlock),
        1 => (0u8..3).prop_map(|n| Command::StartRecording {
            audio: AudioId::from_random([n; 16]),
        }),
        1 => (0u32..100_000).prop_map(|duration_ms| Command::StopRecording { duration_ms }),
        3 => (participant(), any::<bool>())
            .prop_map(|(participant, on)| Command::Talking { participant, on }),
        1 => select(&EndReason::ALL[..]).prop_map(|reason| Command::End { reason }),
    ]
}

/// What the log says of each participant, checked event by event.
#[derive(Default)]
struct Seen {
    joined: BTreeSet<ParticipantId>,
    left: BTreeSet<ParticipantId>,
    events: Vec<E>,
    ended: bool,
}

impl Seen {
    fn record(&mut self, before: &Conference, event: &E) {
        assert!(!self.ended, "{event:?} after the conference ended");
        match event {
            E::ParticipantJoined {
                participant,
                moderator,
                muted,
                ..
            } => {
                assert!(
                    self.joined.insert(*participant),
                    "{participant} joined twice"
                );
                assert!(
                    !self.left.contains(participant),
                    "{participant} joined after leaving"
                );
                assert!(!before.locked || *moderator, "joined a locked conference");
                assert_eq!(*muted, before.muted_on_entry && !moderator);
            }
            E::ParticipantLeft {
                participant,
                reason,
                caller,
                ..
            } => {
                assert!(self.left.insert(*participant), "{participant} left twice");
                // Only a participant that joined leaves, except a caller
                // turned away, who never joined.
                assert_eq!(
                    self.joined.contains(participant),
                    !reason.is_refusal(),
                    "{participant} left ({reason:?})"
                );
                assert_eq!(caller.is_some(), reason.is_refusal());
            }
            E::ConferenceEnded { .. } => {
                // Everyone still in left, and a recording stopped, just
                // before (in the same decision).
                assert!(before.participants.is_empty());
                assert!(before.recording.is_none());
                assert!(self.joined.iter().all(|p| self.left.contains(p)));
                self.ended = true;
            }
            _ => {}
        }
        self.events.push(event.clone());
    }
}

fn check_state(state: &Conference) {
    match state.status {
        Status::NotStarted => assert_eq!(*state, Conference::default()),
        Status::Running => {
            assert!(state.participants.len() <= state.max_participants as usize);
            assert!((2..=1_000).contains(&state.max_participants));
            assert!(state
                .participants
                .keys()
                .all(|p| !state.departed.contains(p)));
        }
        Status::Ended => {
            assert!(
                state.participants.is_empty(),
                "an ended conference is empty"
            );
            assert!(state.recording.is_none());
            assert!(state.ended_at.is_some());
        }
    }
}

fn stored_round_trip(event: &E) -> E {
    let event = Event::Conference(event.clone());
    let data = event.to_data().expect("event serialises");
    match Event::from_stored(event.event_type(), event.schema_version(), &data) {
        Ok(Event::Conference(back)) => back,
        other => panic!("{} came back as {other:?}", event.event_type()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_commands_keep_the_invariants(
        commands in proptest::collection::vec((command(), 0i64..3_000_000), 0..60)
    ) {
        let mut state = Conference::default();
        let mut seen = Seen::default();
        let mut now = T0;
        for (command, delta) in &commands {
            now += delta;
            let result = conference::decide(&state, command, now);
            if state.status == Status::Ended {
                prop_assert_eq!(result, Err(Refusal::Ended));
                continue;
            }
            match (&result, command) {
                (Err(Refusal::Full { max }), Command::Join { .. }) => {
                    prop_assert_eq!(state.participants.len(), *max as usize);
                }
                (Err(Refusal::Locked), Command::Join { moderator, .. }) => {
                    prop_assert!(state.locked && !moderator);
                }
                _ => {}
            }
            let Ok(events) = result else { continue };
            for event in &events {
                seen.record(&state, event);
                prop_assert_eq!(&stored_round_trip(event), event);
                state = conference::evolve(state, event);
            }
            check_state(&state);
            // Deciding the same command again is refused or writes nothing
            // new of the same kind for the same participant: repeats of
            // leaves, mutes, locks, talking changes are no-ops.
            if matches!(
                command,
                Command::Leave { .. }
                    | Command::Kick { .. }
                    | Command::Mute { .. }
                    | Command::Unmute { .. }
                    | Command::MuteAll
                    | Command::Lock
                    | Command::Unlock
                    | Command::Talking { .. }
            ) && state.status == Status::Running
            {
                let again = conference::decide(&state, command, now);
                prop_assert!(
                    matches!(&again, Ok(e) if e.is_empty()) || again.is_err(),
                    "{:?} repeated gave {:?}", command, again
                );
            }
        }
        // The events rebuild the state.
        let replayed = seen.events.iter().fold(Conference::default(), conference::evolve);
        prop_assert_eq!(replayed, state);
    }
}

/// A conference full of moderators and participants that ends with its
/// moderators: every participant leaves exactly once however it ends.
#[test]
fn every_participant_leaves_exactly_once_when_the_moderators_go() {
    let start = Command::Start(Start {
        domain_id: DomainId(Uuid::from_u128(7)),
        room: UserName::parse("standup").unwrap(),
        max_participants: 5,
        end_with_moderator: true,
        muted_on_entry: false,
    });
    let p = |n: u128| ParticipantId(Uuid::from_u128(n));
    let mut state = Conference::default();
    let mut events = Vec::new();
    let mut commands = vec![start];
    for n in 1..=5 {
        commands.push(Command::Join {
            participant: p(n),
            caller: format!("user{n}@example.com"),
            moderator: n <= 2,
        });
    }
    commands.push(Command::Kick { participant: p(1) });
    commands.push(Command::Leave {
        participant: p(2),
        reason: LeaveReason::RtpTimeout,
    });
    for (i, c) in commands.iter().enumerate() {
        let new = conference::decide(&state, c, T0 + i as i64).unwrap();
        state = new.iter().fold(state, conference::evolve);
        events.extend(new);
    }
    let mut left: BTreeMap<ParticipantId, LeaveReason> = BTreeMap::new();
    for e in &events {
        if let E::ParticipantLeft {
            participant,
            reason,
            ..
        } = e
        {
            assert!(left.insert(*participant, *reason).is_none());
        }
    }
    assert_eq!(
        left.into_iter().collect::<Vec<_>>(),
        vec![
            (p(1), LeaveReason::Kicked),
            (p(2), LeaveReason::RtpTimeout),
            (p(3), LeaveReason::ConferenceEnded),
            (p(4), LeaveReason::ConferenceEnded),
            (p(5), LeaveReason::ConferenceEnded),
        ]
    );
    assert_eq!(
        events.last(),
        Some(&E::ConferenceEnded {
            reason: EndReason::LastModeratorLeft,
            ended_at: T0 + 7
        })
    );
}
