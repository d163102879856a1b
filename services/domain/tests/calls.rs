//! Given/when/then tests of call legs and the presence they imply in the
//! `User` aggregate.
//!
//! Given: the events already in the stream (folded with `evolve`).
//! When: one command, decided at a given `now`.
//! Then: the events emitted, or the error.

use dialtone_domain::call::{
    CallStep, Cause, Direction, ForwardReason, HangupSide, LegState, TransferKind,
    FINISHED_REMEMBERED, MAX_LEGS_IN_PROGRESS,
};
use dialtone_domain::credentials::PasswordPolicy;
use dialtone_domain::registration::{ContactChange, Presence, Register, MICROS_PER_SEC};
use dialtone_domain::user::{self, Command, Event, NewUser, Patch, User};
use dialtone_domain::{DomainId, DomainName, Error, UserId, UserName};
use uuid::Uuid;

const T0: i64 = 1_764_150_000_000_000;
const SEC: i64 = MICROS_PER_SEC;
const CALL: &str = "6f1c2b8e-5d7a-4c3e-9a41-2f0d8b6e1c57";
const DESK: &str = "sip:alice@192.0.2.10:5060";
const BOB_PHONE: &str = "sip:bob@192.0.2.20:5060";

// ---------------------------------------------------------------- helpers

fn created() -> Vec<Event> {
    let domain = DomainName::parse("example.com").unwrap();
    let create = Command::Create {
        user: Box::new(NewUser {
            user_id: UserId(Uuid::from_u128(0x42)),
            domain_id: DomainId::for_name(&domain),
            domain,
            username: UserName::parse("alice").unwrap(),
            password: "correct horse battery staple".to_owned(),
            display_name: "Alice".to_owned(),
            caller_id: String::new(),
            max_contacts: None,
            enabled: true,
        }),
        policy: PasswordPolicy::default(),
    };
    user::decide(&User::default(), &create, T0).unwrap()
}

fn given(events: &[Event]) -> User {
    events.iter().fold(User::default(), user::evolve)
}

/// Decides `command` on `state` and folds the result in.
fn then(state: User, command: &Command, now: i64) -> (User, Vec<Event>) {
    let events = user::decide(&state, command, now).unwrap();
    (events.iter().fold(state, user::evolve), events)
}

fn registered_at(now: i64, expires_secs: u32) -> Command {
    Command::Register(Box::new(Register {
        call_id: "reg-1".to_owned(),
        cseq: u32::try_from(now / SEC % 1_000_000).unwrap(),
        changes: vec![ContactChange {
            reg_id: None,
            nat: false,
            uri: DESK.to_owned(),
            expires_secs,
            q: None,
            params: String::new(),
        }],
        remove_all: false,
        source: "192.0.2.10:5060".to_owned(),
        transport: "UDP".to_owned(),
        user_agent: None,
    }))
}

/// A created user with one contact (online).
fn given_online() -> User {
    let state = given(&created());
    then(state, &registered_at(T0, 3600), T0).0
}

fn call(step: CallStep) -> Command {
    Command::Call(Box::new(step))
}

fn start(call_id: &str, direction: Direction) -> Command {
    call(CallStep::Start {
        call_id: call_id.to_owned(),
        direction,
        from: "bob@example.com".to_owned(),
        to: "alice@example.com".to_owned(),
        sip_call_id: format!("{call_id}@192.0.2.20"),
    })
}

fn ringing(call_id: &str) -> Command {
    call(CallStep::Ringing {
        call_id: call_id.to_owned(),
    })
}

fn answer(call_id: &str) -> Command {
    call(CallStep::Answer {
        call_id: call_id.to_owned(),
        contact: BOB_PHONE.to_owned(),
    })
}

fn end(call_id: &str, side: HangupSide) -> Command {
    call(CallStep::End {
        call_id: call_id.to_owned(),
        cause: Cause::NormalClearing,
        side,
    })
}

fn fail(call_id: &str, sip_status: u16, cause: Cause) -> Command {
    call(CallStep::Fail {
        call_id: call_id.to_owned(),
        sip_status,
        cause,
    })
}

fn presence(presence: Presence, previous: Presence) -> Event {
    Event::PresenceChanged { presence, previous }
}

// ---------------------------------------------------------------- life of a leg

#[test]
fn an_inbound_call_rings_is_answered_and_ends_with_presence_following() {
    let state = given_online();

    let (state, events) = then(state, &start(CALL, Direction::Inbound), T0 + SEC);
    assert_eq!(
        events,
        vec![Event::CallStarted {
            call_id: CALL.to_owned(),
            direction: Direction::Inbound,
            from: "bob@example.com".to_owned(),
            to: "alice@example.com".to_owned(),
            sip_call_id: format!("{CALL}@192.0.2.20"),
            started_at: T0 + SEC,
        }],
        "a leg trying does not change presence"
    );
    assert_eq!(state.calls.get(CALL).unwrap().state, LegState::Trying);

    let (state, events) = then(state, &ringing(CALL), T0 + 2 * SEC);
    assert_eq!(
        events,
        vec![
            Event::CallRinging {
                call_id: CALL.to_owned()
            },
            presence(Presence::Ringing, Presence::Online),
        ]
    );

    let (state, events) = then(state, &answer(CALL), T0 + 3 * SEC);
    assert_eq!(
        events,
        vec![
            Event::CallAnswered {
                call_id: CALL.to_owned(),
                contact: BOB_PHONE.to_owned(),
                answered_at: T0 + 3 * SEC,
            },
            presence(Presence::OnCall, Presence::Ringing),
        ]
    );

    let (state, events) = then(state, &end(CALL, HangupSide::Caller), T0 + 63 * SEC + 500);
    assert_eq!(
        events,
        vec![
            Event::CallEnded {
                call_id: CALL.to_owned(),
                cause: Cause::NormalClearing,
                hangup_side: HangupSide::Caller,
                duration_ms: 60_000,
                ended_at: T0 + 63 * SEC + 500,
            },
            presence(Presence::Online, Presence::OnCall),
        ]
    );
    assert!(state.calls.is_empty());
    assert!(state.calls.is_finished(CALL));
}

#[test]
fn an_outbound_leg_ringing_leaves_the_caller_online() {
    let state = given_online();
    let (state, _) = then(state, &start(CALL, Direction::Outbound), T0 + SEC);
    let (state, events) = then(state, &ringing(CALL), T0 + 2 * SEC);
    assert_eq!(
        events,
        vec![Event::CallRinging {
            call_id: CALL.to_owned()
        }]
    );
    assert_eq!(state.presence, Presence::Online);
    let (_, events) = then(state, &answer(CALL), T0 + 3 * SEC);
    assert_eq!(events[1], presence(Presence::OnCall, Presence::Online));
}

#[test]
fn a_failed_inbound_leg_goes_back_to_online() {
    let state = given_online();
    let (state, _) = then(state, &start(CALL, Direction::Inbound), T0 + SEC);
    let (state, _) = then(state, &ringing(CALL), T0 + 2 * SEC);
    let (state, events) = then(state, &fail(CALL, 486, Cause::UserBusy), T0 + 3 * SEC);
    assert_eq!(
        events,
        vec![
            Event::CallFailed {
                call_id: CALL.to_owned(),
                sip_status: 486,
                cause: Cause::UserBusy,
                failed_at: T0 + 3 * SEC,
            },
            presence(Presence::Online, Presence::Ringing),
        ]
    );
    assert!(state.calls.is_empty());
}

#[test]
fn end_of_a_leg_never_answered_is_recorded_with_duration_zero() {
    let state = given_online();
    let (state, _) = then(state, &start(CALL, Direction::Outbound), T0 + SEC);
    let (_, events) = then(state, &end(CALL, HangupSide::Caller), T0 + 9 * SEC);
    assert!(matches!(
        &events[..],
        [Event::CallEnded { duration_ms: 0, .. }]
    ));
}

#[test]
fn a_user_without_contacts_can_have_a_leg_and_is_on_call_while_answered() {
    // The proxy records a failed leg for a callee registered nowhere; an
    // answered leg of a user whose contacts are gone still means on_call.
    let state = given(&created());
    let (state, _) = then(state, &start(CALL, Direction::Inbound), T0 + SEC);
    let (state, events) = then(state, &ringing(CALL), T0 + 2 * SEC);
    assert_eq!(events[1], presence(Presence::Ringing, Presence::Offline));
    let (_, events) = then(state, &fail(CALL, 480, Cause::Unavailable), T0 + 3 * SEC);
    assert_eq!(events[1], presence(Presence::Offline, Presence::Ringing));
}

// ---------------------------------------------------------------- repetitions

#[test]
fn repeated_and_late_steps_write_nothing() {
    let state = given_online();
    let (state, _) = then(state, &start(CALL, Direction::Inbound), T0 + SEC);
    // A repeated start.
    assert_eq!(
        user::decide(&state, &start(CALL, Direction::Inbound), T0 + 2 * SEC),
        Ok(vec![])
    );
    let (state, _) = then(state, &ringing(CALL), T0 + 2 * SEC);
    assert_eq!(
        user::decide(&state, &ringing(CALL), T0 + 3 * SEC),
        Ok(vec![])
    );
    let (state, _) = then(state, &answer(CALL), T0 + 3 * SEC);
    // Ringing after the answer, a second answer.
    assert_eq!(
        user::decide(&state, &ringing(CALL), T0 + 4 * SEC),
        Ok(vec![])
    );
    assert_eq!(
        user::decide(&state, &answer(CALL), T0 + 4 * SEC),
        Ok(vec![])
    );
    let (state, _) = then(state, &end(CALL, HangupSide::Callee), T0 + 5 * SEC);
    // Everything after the end, including a new start of the same call.
    for command in [
        start(CALL, Direction::Inbound),
        ringing(CALL),
        answer(CALL),
        end(CALL, HangupSide::Caller),
        fail(CALL, 487, Cause::OriginatorCancel),
    ] {
        assert_eq!(
            user::decide(&state, &command, T0 + 6 * SEC),
            Ok(vec![]),
            "{command:?}"
        );
    }
}

#[test]
fn steps_for_a_leg_never_started_write_nothing() {
    let state = given_online();
    for command in [
        ringing("other"),
        answer("other"),
        end("other", HangupSide::System),
        fail("other", 404, Cause::NotFound),
    ] {
        assert_eq!(
            user::decide(&state, &command, T0),
            Ok(vec![]),
            "{command:?}"
        );
    }
}

fn transferred(call_id: &str, kind: TransferKind, replaced: Option<&str>) -> Command {
    call(CallStep::Transferred {
        call_id: call_id.to_owned(),
        new_call_id: "new-call".to_owned(),
        transferor: "alice@example.com".to_owned(),
        transferee: "bob@example.com".to_owned(),
        target: "carol@example.com".to_owned(),
        kind,
        replaced_call_id: replaced.map(str::to_owned),
    })
}

#[test]
fn a_transfer_is_noted_on_a_leg_in_progress_or_just_ended_and_changes_nothing_else() {
    let state = given_online();
    let (state, _) = then(state, &start(CALL, Direction::Inbound), T0 + SEC);
    let (state, _) = then(state, &answer(CALL), T0 + 2 * SEC);
    let before = state.clone();
    let (state, events) = then(
        state,
        &transferred(CALL, TransferKind::Attended, Some("consult")),
        T0 + 3 * SEC,
    );
    assert_eq!(
        events,
        [Event::CallTransferred {
            call_id: CALL.to_owned(),
            new_call_id: "new-call".to_owned(),
            transferor: "alice@example.com".to_owned(),
            transferee: "bob@example.com".to_owned(),
            target: "carol@example.com".to_owned(),
            kind: TransferKind::Attended,
            replaced_call_id: Some("consult".to_owned()),
            transferred_at: T0 + 3 * SEC,
        }]
    );
    // The leg and presence are as they were.
    assert_eq!(state.calls, before.calls);
    assert_eq!(state.presence, before.presence);
    // The transferor hung up first: the note still lands on the leg.
    let (state, ended) = then(state, &end(CALL, HangupSide::Callee), T0 + 4 * SEC);
    assert!(matches!(ended[0], Event::CallEnded { .. }));
    let (_, events) = then(
        state,
        &transferred(CALL, TransferKind::Blind, None),
        T0 + 5 * SEC,
    );
    assert!(matches!(
        events.as_slice(),
        [Event::CallTransferred {
            kind: TransferKind::Blind,
            replaced_call_id: None,
            ..
        }]
    ));
}

#[test]
fn a_transfer_of_a_leg_the_user_never_had_writes_nothing_and_a_blind_one_replaces_nothing() {
    let state = given_online();
    assert_eq!(
        user::decide(&state, &transferred("other", TransferKind::Blind, None), T0),
        Ok(vec![])
    );
    let (state, _) = then(state, &start(CALL, Direction::Outbound), T0 + SEC);
    assert!(matches!(
        user::decide(
            &state,
            &transferred(CALL, TransferKind::Blind, Some("consult")),
            T0 + 2 * SEC
        ),
        Err(Error::Invalid { .. })
    ));
}

#[test]
fn only_the_last_finished_calls_are_remembered() {
    let mut state = given_online();
    let mut now = T0;
    for i in 0..=FINISHED_REMEMBERED {
        now += SEC;
        let id = format!("call-{i}");
        state = then(state, &start(&id, Direction::Outbound), now).0;
        state = then(state, &fail(&id, 486, Cause::UserBusy), now).0;
    }
    assert_eq!(state.calls.finished.len(), FINISHED_REMEMBERED);
    assert!(!state.calls.is_finished("call-0"));
    assert!(state
        .calls
        .is_finished(&format!("call-{FINISHED_REMEMBERED}")));
}

// ---------------------------------------------------------------- refusals

#[test]
fn a_deleted_user_cannot_start_a_leg_but_its_legs_in_progress_can_end() {
    let state = given_online();
    let (state, _) = then(state, &start(CALL, Direction::Inbound), T0 + SEC);
    let (state, _) = then(state, &answer(CALL), T0 + 2 * SEC);
    let (state, events) = then(state, &Command::Delete { reason: None }, T0 + 3 * SEC);
    // The contact goes; the user stays on the call.
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(state.presence, Presence::OnCall);
    assert!(matches!(
        user::decide(&state, &start("new", Direction::Outbound), T0 + 4 * SEC),
        Err(Error::FailedPrecondition(m)) if m.contains("deleted")
    ));
    let (state, events) = then(state, &end(CALL, HangupSide::Callee), T0 + 5 * SEC);
    assert_eq!(events[1], presence(Presence::Offline, Presence::OnCall));
    assert!(state.calls.is_empty());
}

#[test]
fn a_disabled_user_still_records_its_legs() {
    let state = given_online();
    let (state, _) = then(
        state,
        &Command::Update {
            patch: Patch {
                enabled: Some(false),
                ..Patch::default()
            },
        },
        T0 + SEC,
    );
    let (state, _) = then(state, &start(CALL, Direction::Inbound), T0 + 2 * SEC);
    let (state, events) = then(state, &fail(CALL, 480, Cause::Unavailable), T0 + 3 * SEC);
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(state.calls.is_empty());
}

#[test]
fn an_unknown_user_has_no_legs() {
    assert!(matches!(
        user::decide(&User::default(), &start(CALL, Direction::Inbound), T0),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn legs_in_progress_are_bounded() {
    let mut state = given_online();
    for i in 0..MAX_LEGS_IN_PROGRESS {
        state = then(state, &start(&format!("call-{i}"), Direction::Outbound), T0).0;
    }
    let refused = user::decide(&state, &start("one-more", Direction::Outbound), T0);
    assert!(
        matches!(&refused, Err(Error::FailedPrecondition(m)) if m.contains("calls in progress")),
        "{refused:?}"
    );
    // A repetition of a leg in progress is still no error.
    assert_eq!(
        user::decide(&state, &start("call-0", Direction::Outbound), T0),
        Ok(vec![])
    );
}

#[test]
fn malformed_steps_are_invalid() {
    let state = given_online();
    let bad = [
        (start("", Direction::Inbound), "call_id"),
        (
            call(CallStep::Start {
                call_id: CALL.to_owned(),
                direction: Direction::Inbound,
                from: " ".to_owned(),
                to: "alice@example.com".to_owned(),
                sip_call_id: "x".to_owned(),
            }),
            "from",
        ),
        (
            call(CallStep::Start {
                call_id: CALL.to_owned(),
                direction: Direction::Inbound,
                from: "bob@example.com".to_owned(),
                to: "alice@example.com".to_owned(),
                sip_call_id: "x\r\ny".to_owned(),
            }),
            "sip_call_id",
        ),
        (fail(CALL, 700, Cause::CallRejected), "sip_status"),
        (fail(CALL, 200, Cause::CallRejected), "sip_status"),
        (
            call(CallStep::Answer {
                call_id: CALL.to_owned(),
                contact: "x".repeat(2000),
            }),
            "contact",
        ),
    ];
    for (command, field) in bad {
        match user::decide(&state, &command, T0) {
            Err(Error::Invalid { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{command:?}: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------- registration during calls

#[test]
fn a_contact_expiring_during_a_call_leaves_the_user_on_the_call() {
    let state = given(&created());
    let (state, _) = then(state, &registered_at(T0, 60), T0);
    let (state, _) = then(state, &start(CALL, Direction::Inbound), T0 + SEC);
    let (state, _) = then(state, &answer(CALL), T0 + 2 * SEC);
    let (state, events) = then(state, &Command::ExpireContacts, T0 + 61 * SEC);
    assert_eq!(events.len(), 1, "only ContactExpired: {events:?}");
    assert_eq!(state.presence, Presence::OnCall);
    // A new REGISTER during the call does not change presence either.
    let (state, events) = then(state, &registered_at(T0 + 70 * SEC, 60), T0 + 70 * SEC);
    assert_eq!(events.len(), 1, "only ContactRegistered: {events:?}");
    // The call ends: back to online (the new contact), not offline.
    let (_, events) = then(state, &end(CALL, HangupSide::Callee), T0 + 80 * SEC);
    assert_eq!(events[1], presence(Presence::Online, Presence::OnCall));
}

#[test]
fn the_last_contact_expiring_during_a_call_means_offline_after_it() {
    let state = given(&created());
    let (state, _) = then(state, &registered_at(T0, 60), T0);
    let (state, _) = then(state, &start(CALL, Direction::Outbound), T0 + SEC);
    let (state, _) = then(state, &answer(CALL), T0 + 2 * SEC);
    let (state, _) = then(state, &Command::ExpireContacts, T0 + 61 * SEC);
    let (_, events) = then(state, &end(CALL, HangupSide::Caller), T0 + 62 * SEC);
    assert_eq!(
        events[0],
        Event::CallEnded {
            call_id: CALL.to_owned(),
            cause: Cause::NormalClearing,
            hangup_side: HangupSide::Caller,
            duration_ms: 60_000,
            ended_at: T0 + 62 * SEC,
        }
    );
    assert_eq!(events[1], presence(Presence::Offline, Presence::OnCall));
}

#[test]
fn snapshots_from_before_calls_load() {
    let state = given_online();
    let mut json: serde_json::Value = serde_json::to_value(&state).unwrap();
    json.as_object_mut().unwrap().remove("calls");
    let loaded: User = serde_json::from_value(json).unwrap();
    assert_eq!(loaded, state);
}

// ---------------------------------------------------------------- several steps at once

fn steps_of(commands: &[Command]) -> Vec<CallStep> {
    commands
        .iter()
        .map(|c| match c {
            Command::Call(step) => (**step).clone(),
            other => panic!("not a call step: {other:?}"),
        })
        .collect()
}

#[test]
fn steps_decided_together_write_what_they_write_one_by_one() {
    let life = [
        start(CALL, Direction::Inbound),
        ringing(CALL),
        ringing(CALL), // repeated: nothing
        answer(CALL),
        end(CALL, HangupSide::Caller),
    ];
    let now = T0 + SEC;
    // Every split of the leg's life into a batch and single steps.
    for split in 0..=life.len() {
        let mut one_by_one = given_online();
        let mut expected = Vec::new();
        for command in &life {
            let (next, events) = then(one_by_one, command, now);
            one_by_one = next;
            expected.extend(events);
        }
        let (first, rest) = life.split_at(split);
        let (mut state, mut events) =
            then(given_online(), &Command::CallSteps(steps_of(first)), now);
        for command in rest {
            let (next, more) = then(state, command, now);
            state = next;
            events.extend(more);
        }
        assert_eq!(events, expected, "batch of the first {split} steps");
        assert_eq!(state, one_by_one, "batch of the first {split} steps");
    }
}

#[test]
fn a_batch_with_a_refused_step_is_refused_whole() {
    let state = given_online();
    let malformed = CallStep::Answer {
        call_id: String::new(),
        contact: BOB_PHONE.to_owned(),
    };
    let batch = Command::CallSteps(vec![
        steps_of(&[start(CALL, Direction::Inbound)]).remove(0),
        malformed,
    ]);
    assert!(matches!(
        user::decide(&state, &batch, T0),
        Err(Error::Invalid { .. })
    ));
    // An empty batch writes nothing.
    assert_eq!(
        user::decide(&state, &Command::CallSteps(Vec::new()), T0).unwrap(),
        Vec::<Event>::new()
    );
}

// ---------------------------------------------------------------- forwarded legs

fn forward(call_id: &str, to: &str, reason: ForwardReason) -> Command {
    call(CallStep::Forward {
        call_id: call_id.to_owned(),
        to: to.to_owned(),
        reason,
    })
}

#[test]
fn a_forward_ends_a_ringing_leg_once_and_presence_follows() {
    let state = given_online();
    let (state, _) = then(state, &start(CALL, Direction::Inbound), T0 + SEC);
    let (state, events) = then(state, &ringing(CALL), T0 + 2 * SEC);
    assert!(events.contains(&presence(Presence::Ringing, Presence::Online)));

    let (state, events) = then(
        state,
        &forward(CALL, "carol@example.com", ForwardReason::NoAnswer),
        T0 + 22 * SEC,
    );
    assert_eq!(
        events,
        vec![
            Event::CallForwarded {
                call_id: CALL.to_owned(),
                to: "carol@example.com".to_owned(),
                reason: ForwardReason::NoAnswer,
                forwarded_at: T0 + 22 * SEC,
            },
            presence(Presence::Online, Presence::Ringing),
        ]
    );
    assert!(state.calls.is_empty());
    assert!(state.calls.is_finished(CALL));

    // Repeated, or any later step of the finished leg: nothing.
    for repeated in [
        forward(CALL, "carol@example.com", ForwardReason::NoAnswer),
        answer(CALL),
        fail(CALL, 487, Cause::OriginatorCancel),
        start(CALL, Direction::Inbound),
    ] {
        assert_eq!(user::decide(&state, &repeated, T0 + 23 * SEC).unwrap(), []);
    }
}

#[test]
fn a_forward_of_no_leg_writes_nothing_and_a_bad_target_is_refused() {
    let state = given_online();
    assert_eq!(
        user::decide(
            &state,
            &forward("unknown", "carol@example.com", ForwardReason::UserBusy),
            T0
        )
        .unwrap(),
        []
    );
    let (state, _) = then(state, &start(CALL, Direction::Inbound), T0 + SEC);
    for bad in ["", "carol\n@example.com", &"x".repeat(2000)] {
        let err = user::decide(
            &state,
            &forward(CALL, bad, ForwardReason::Unconditional),
            T0,
        )
        .unwrap_err();
        assert!(
            matches!(&err, Error::Invalid { field, .. } if *field == "to"),
            "{bad:?}: {err:?}"
        );
    }
}

// ---------------------------------------------------------------- calls the node's applications answer (ADR 0024)

/// alice's call to bob went to bob's voicemail box: alice's leg is an
/// ordinary answered call whose contact names the box, with its duration
/// from the box's answer to the end, and ends for an RTP timeout as a
/// timeout of the system's.
#[test]
fn a_call_answered_by_a_voicemail_box_has_the_box_as_contact_and_its_duration() {
    let state = given_online();
    let (state, _) = then(
        state,
        &call(CallStep::Start {
            call_id: CALL.to_owned(),
            direction: Direction::Outbound,
            from: "alice@example.com".to_owned(),
            to: "bob@example.com".to_owned(),
            sip_call_id: "vm-1@192.0.2.10".to_owned(),
        }),
        T0 + SEC,
    );
    let (state, events) = then(
        state,
        &call(CallStep::Answer {
            call_id: CALL.to_owned(),
            contact: "voicemail:bob@example.com".to_owned(),
        }),
        T0 + 21 * SEC,
    );
    assert_eq!(
        events[0],
        Event::CallAnswered {
            call_id: CALL.to_owned(),
            contact: "voicemail:bob@example.com".to_owned(),
            answered_at: T0 + 21 * SEC,
        }
    );
    assert_eq!(state.presence, Presence::OnCall);
    let leg = state.calls.get(CALL).unwrap();
    assert_eq!(leg.contact.as_deref(), Some("voicemail:bob@example.com"));
    let (state, events) = then(
        state,
        &call(CallStep::End {
            call_id: CALL.to_owned(),
            cause: Cause::Timeout,
            side: HangupSide::System,
        }),
        T0 + 51 * SEC + 250_000,
    );
    assert_eq!(
        events,
        vec![
            Event::CallEnded {
                call_id: CALL.to_owned(),
                cause: Cause::Timeout,
                hangup_side: HangupSide::System,
                duration_ms: 30_250,
                ended_at: T0 + 51 * SEC + 250_000,
            },
            presence(Presence::Online, Presence::OnCall),
        ]
    );
    assert!(state.calls.is_empty());
}

/// alice dials her mailbox's menu (`*97`): one outbound leg to what she
/// dialled, answered by the menu, ended when she hangs up.
#[test]
fn a_mailbox_menu_call_is_an_outbound_leg_answered_by_the_menu() {
    let state = given_online();
    let (state, events) = then(
        state,
        &call(CallStep::Start {
            call_id: CALL.to_owned(),
            direction: Direction::Outbound,
            from: "alice@example.com".to_owned(),
            to: "*97@example.com".to_owned(),
            sip_call_id: "menu-1@192.0.2.10".to_owned(),
        }),
        T0 + SEC,
    );
    assert!(matches!(
        &events[0],
        Event::CallStarted { to, direction: Direction::Outbound, .. } if to == "*97@example.com"
    ));
    let (state, _) = then(
        state,
        &call(CallStep::Answer {
            call_id: CALL.to_owned(),
            contact: "voicemail-menu:alice@example.com".to_owned(),
        }),
        T0 + SEC,
    );
    let (_, events) = then(state, &end(CALL, HangupSide::Caller), T0 + 13 * SEC);
    assert_eq!(
        events[0],
        Event::CallEnded {
            call_id: CALL.to_owned(),
            cause: Cause::NormalClearing,
            hangup_side: HangupSide::Caller,
            duration_ms: 12_000,
            ended_at: T0 + 13 * SEC,
        }
    );
}
