//! Given/when/then tests of registration (RFC 3261 s.10.3 steps 6–8) and
//! presence in the `User` aggregate.
//!
//! Given: the events already in the stream (folded with `evolve`).
//! When: one command, decided at a given `now`.
//! Then: the events emitted, or the error.

use dialtone_domain::credentials::PasswordPolicy;
use dialtone_domain::registration::{
    instance_of, next_expiry, normalize_uri, reason, Binding, ContactChange, Key, Presence,
    Register, MICROS_PER_SEC,
};
use dialtone_domain::user::{self, Command, Event, NewUser, Patch, User};
use dialtone_domain::{DomainId, DomainName, Error, UserId, UserName};
use uuid::Uuid;

const T0: i64 = 1_764_150_000_000_000;
const SEC: i64 = MICROS_PER_SEC;

const DESK: &str = "sip:alice@192.0.2.10:5060";
const MOBILE: &str = "sip:alice@198.51.100.7:40123;transport=tcp";
const LAPTOP: &str = "sip:alice@203.0.113.5:5062";
const INSTANCE: &str = "<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>";

// ---------------------------------------------------------------- helpers

fn created_with(max_contacts: Option<u32>, enabled: bool) -> Vec<Event> {
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
            max_contacts,
            enabled,
        }),
        policy: PasswordPolicy::default(),
    };
    user::decide(&User::default(), &create, T0).unwrap()
}

fn given(events: &[Event]) -> User {
    events.iter().fold(User::default(), user::evolve)
}

fn given_created() -> User {
    given(&created_with(None, true))
}

fn contact(uri: &str, expires_secs: u32) -> ContactChange {
    ContactChange {
        reg_id: None,
        nat: false,
        uri: uri.to_owned(),
        expires_secs,
        q: None,
        params: String::new(),
    }
}

fn with_params(uri: &str, expires_secs: u32, params: &str) -> ContactChange {
    ContactChange {
        params: params.to_owned(),
        ..contact(uri, expires_secs)
    }
}

fn request(call_id: &str, cseq: u32, changes: Vec<ContactChange>) -> Register {
    Register {
        call_id: call_id.to_owned(),
        cseq,
        changes,
        remove_all: false,
        source: "192.0.2.10:5060".to_owned(),
        transport: "UDP".to_owned(),
        user_agent: Some("Linphone/5.2".to_owned()),
    }
}

fn register(call_id: &str, cseq: u32, changes: Vec<ContactChange>) -> Command {
    Command::Register(Box::new(request(call_id, cseq, changes)))
}

fn remove_all(call_id: &str, cseq: u32) -> Command {
    Command::Register(Box::new(Register {
        remove_all: true,
        ..request(call_id, cseq, vec![])
    }))
}

fn decide(state: &User, command: &Command, now: i64) -> dialtone_domain::Result<Vec<Event>> {
    user::decide(state, command, now)
}

/// Decides `command` on `state` (it must succeed) and returns the state
/// after its events.
fn apply(state: User, command: &Command, now: i64) -> User {
    let events = decide(&state, command, now).unwrap();
    events.iter().fold(state, user::evolve)
}

fn uris(state: &User) -> Vec<&str> {
    state.bindings.iter().map(|b| b.uri.as_str()).collect()
}

fn online() -> Event {
    Event::PresenceChanged {
        presence: Presence::Online,
        previous: Presence::Offline,
    }
}

fn offline() -> Event {
    Event::PresenceChanged {
        presence: Presence::Offline,
        previous: Presence::Online,
    }
}

fn removed(uri: &str, why: &str) -> Event {
    Event::ContactRemoved {
        reg_id: None,
        uri: uri.to_owned(),
        instance: None,
        reason: why.to_owned(),
    }
}

#[track_caller]
fn assert_out_of_order(result: dialtone_domain::Result<Vec<Event>>) {
    match result {
        Err(Error::OutOfOrder(message)) => assert!(
            message.contains("CSeq") && message.contains("Call-ID"),
            "{message}"
        ),
        other => panic!("expected OutOfOrder, got {other:?}"),
    }
}

/// Alice with the desk phone registered at T0 (Call-ID `desk-1`, CSeq 1,
/// 3600 s).
fn given_desk() -> User {
    apply(
        given_created(),
        &register("desk-1", 1, vec![contact(DESK, 3600)]),
        T0,
    )
}

// ---------------------------------------------------------------- register

#[test]
fn first_contact_registers_a_binding_and_brings_the_user_online() {
    let state = given_created();
    let mut change = with_params(DESK, 3600, ";+sip.instance=\"<urn:uuid:1>\";reg-id=1");
    change.q = Some(500);
    let events = decide(&state, &register("c1", 7, vec![change]), T0 + 5).unwrap();
    let expected = Binding {
        reg_id: None,
        nat: false,
        uri: DESK.to_owned(),
        params: ";+sip.instance=\"<urn:uuid:1>\";reg-id=1".to_owned(),
        q: Some(500),
        instance: Some("<urn:uuid:1>".to_owned()),
        call_id: "c1".to_owned(),
        cseq: 7,
        source: "192.0.2.10:5060".to_owned(),
        transport: "UDP".to_owned(),
        user_agent: Some("Linphone/5.2".to_owned()),
        registered_at: T0 + 5,
        refreshed_at: T0 + 5,
        expires_at: T0 + 5 + 3600 * SEC,
    };
    assert_eq!(
        events,
        vec![
            Event::ContactRegistered {
                binding: expected.clone()
            },
            online()
        ]
    );
    let state = events.iter().fold(state, user::evolve);
    assert_eq!(state.bindings, vec![expected]);
    assert_eq!(state.presence, Presence::Online);
}

#[test]
fn several_contacts_in_one_request_are_registered_in_order() {
    let state = given_created();
    let command = register(
        "c1",
        1,
        vec![
            contact(DESK, 3600),
            contact(MOBILE, 600),
            contact(LAPTOP, 60),
        ],
    );
    let events = decide(&state, &command, T0).unwrap();
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(events[..3]
        .iter()
        .all(|e| matches!(e, Event::ContactRegistered { .. })));
    assert_eq!(events[3], online());
    let state = events.iter().fold(state, user::evolve);
    assert_eq!(uris(&state), [DESK, MOBILE, LAPTOP]);
    let expiries: Vec<i64> = state.bindings.iter().map(|b| b.expires_at).collect();
    assert_eq!(expiries, [T0 + 3600 * SEC, T0 + 600 * SEC, T0 + 60 * SEC]);
}

#[test]
fn a_second_device_adds_a_binding_without_presence_change() {
    let state = given_desk();
    let events = decide(
        &state,
        &register("mobile-1", 1, vec![contact(MOBILE, 600)]),
        T0,
    )
    .unwrap();
    assert!(matches!(&events[..], [Event::ContactRegistered { .. }]));
    let state = events.iter().fold(state, user::evolve);
    assert_eq!(uris(&state), [DESK, MOBILE]);
}

#[test]
fn an_empty_request_is_a_query_and_changes_nothing() {
    let state = given_desk();
    assert_eq!(decide(&state, &register("q", 1, vec![]), T0), Ok(vec![]));
    // Even with the Call-ID and CSeq of the binding: nothing is addressed.
    assert_eq!(
        decide(&state, &register("desk-1", 1, vec![]), T0),
        Ok(vec![])
    );
}

#[test]
fn new_contact_with_expires_zero_does_nothing() {
    let state = given_created();
    assert_eq!(
        decide(&state, &register("c1", 1, vec![contact(DESK, 0)]), T0),
        Ok(vec![])
    );
    let state = given_desk();
    assert_eq!(
        decide(&state, &register("c2", 1, vec![contact(MOBILE, 0)]), T0),
        Ok(vec![])
    );
}

#[test]
fn expires_zero_removes_the_binding_and_the_last_one_takes_presence_offline() {
    let state = apply(
        given_desk(),
        &register("mobile-1", 1, vec![contact(MOBILE, 600)]),
        T0,
    );
    let events = decide(
        &state,
        &register("desk-1", 2, vec![contact(DESK, 0)]),
        T0 + SEC,
    )
    .unwrap();
    assert_eq!(events, vec![removed(DESK, reason::UNREGISTERED)]);
    let state = events.iter().fold(state, user::evolve);
    assert_eq!(uris(&state), [MOBILE]);
    assert_eq!(state.presence, Presence::Online);

    let events = decide(
        &state,
        &register("mobile-1", 2, vec![contact(MOBILE, 0)]),
        T0,
    )
    .unwrap();
    assert_eq!(
        events,
        vec![removed(MOBILE, reason::UNREGISTERED), offline()]
    );
    let state = events.iter().fold(state, user::evolve);
    assert!(state.bindings.is_empty());
    assert_eq!(state.presence, Presence::Offline);
}

// ---------------------------------------------------------------- Call-ID / CSeq

#[test]
fn same_call_id_with_a_higher_cseq_refreshes() {
    let state = given_desk();
    let now = T0 + 1800 * SEC;
    let events = decide(
        &state,
        &register("desk-1", 2, vec![contact(DESK, 3600)]),
        now,
    )
    .unwrap();
    assert_eq!(
        events,
        vec![Event::ContactRefreshed {
            reg_id: None,
            nat: false,
            uri: DESK.to_owned(),
            instance: None,
            call_id: "desk-1".to_owned(),
            cseq: 2,
            source: "192.0.2.10:5060".to_owned(),
            transport: "UDP".to_owned(),
            user_agent: Some("Linphone/5.2".to_owned()),
            q: None,
            params: String::new(),
            refreshed_at: now,
            expires_at: now + 3600 * SEC,
        }]
    );
    let state = events.iter().fold(state, user::evolve);
    let [binding] = &state.bindings[..] else {
        panic!("{:?}", state.bindings)
    };
    assert_eq!(
        (binding.registered_at, binding.refreshed_at, binding.cseq),
        (T0, now, 2)
    );
    assert_eq!(binding.expires_at, now + 3600 * SEC);
}

#[test]
fn same_call_id_with_an_equal_or_lower_cseq_is_refused_and_changes_nothing() {
    let state = apply(
        given_desk(),
        &register("desk-1", 5, vec![contact(DESK, 3600)]),
        T0,
    );
    for cseq in [5, 4, 1, 0] {
        // Refresh, removal, and with another valid contact in the request.
        assert_out_of_order(decide(
            &state,
            &register("desk-1", cseq, vec![contact(DESK, 60)]),
            T0,
        ));
        assert_out_of_order(decide(
            &state,
            &register("desk-1", cseq, vec![contact(DESK, 0)]),
            T0,
        ));
        assert_out_of_order(decide(
            &state,
            &register("desk-1", cseq, vec![contact(MOBILE, 60), contact(DESK, 60)]),
            T0,
        ));
    }
}

#[test]
fn a_different_call_id_refreshes_or_removes_whatever_its_cseq() {
    let state = apply(
        given_desk(),
        &register("desk-1", 9, vec![contact(DESK, 3600)]),
        T0,
    );
    // A rebooted phone: new Call-ID, CSeq starting again at 1.
    let events = decide(
        &state,
        &register("desk-2", 1, vec![contact(DESK, 120)]),
        T0 + SEC,
    )
    .unwrap();
    assert!(
        matches!(&events[..], [Event::ContactRefreshed { call_id, cseq: 1, .. }] if call_id == "desk-2"),
        "{events:?}"
    );
    let state = events.iter().fold(state, user::evolve);
    assert_eq!(state.bindings[0].call_id, "desk-2");
    // The old Call-ID is no longer the binding's: even a higher CSeq of it
    // is just another Call-ID.
    let events = decide(&state, &register("desk-1", 10, vec![contact(DESK, 0)]), T0).unwrap();
    assert_eq!(events, vec![removed(DESK, reason::UNREGISTERED), offline()]);
}

#[test]
fn same_call_id_for_an_unrelated_contact_is_no_conflict() {
    // One Call-ID, CSeq 3, registered the desk; CSeq 1 of it for another
    // contact does not address the desk binding.
    let state = apply(
        given_created(),
        &register("c", 3, vec![contact(DESK, 3600)]),
        T0,
    );
    let events = decide(&state, &register("c", 1, vec![contact(MOBILE, 60)]), T0).unwrap();
    assert!(matches!(&events[..], [Event::ContactRegistered { .. }]));
}

// ---------------------------------------------------------------- Contact: *

#[test]
fn star_removes_every_binding_and_takes_presence_offline() {
    let state = apply(
        given_desk(),
        &register("other", 1, vec![contact(MOBILE, 600), contact(LAPTOP, 600)]),
        T0,
    );
    let events = decide(&state, &remove_all("bye", 1), T0 + SEC).unwrap();
    assert_eq!(
        events,
        vec![
            removed(DESK, reason::UNREGISTERED),
            removed(MOBILE, reason::UNREGISTERED),
            removed(LAPTOP, reason::UNREGISTERED),
            offline(),
        ]
    );
    let state = events.iter().fold(state, user::evolve);
    assert!(state.bindings.is_empty());
    assert_eq!(state.presence, Presence::Offline);
    // Nothing left: nothing to write.
    assert_eq!(decide(&state, &remove_all("bye", 2), T0), Ok(vec![]));
}

#[test]
fn star_is_refused_when_a_binding_has_the_same_call_id_and_a_cseq_not_lower() {
    let state = apply(
        given_desk(),
        &register("m", 4, vec![contact(MOBILE, 600)]),
        T0,
    );
    assert_out_of_order(decide(&state, &remove_all("m", 4), T0));
    assert_out_of_order(decide(&state, &remove_all("m", 3), T0));
    let events = decide(&state, &remove_all("m", 5), T0).unwrap();
    assert_eq!(events.len(), 3, "{events:?}");
}

#[test]
fn star_with_other_contacts_is_invalid() {
    let command = Command::Register(Box::new(Register {
        remove_all: true,
        ..request("x", 1, vec![contact(DESK, 0)])
    }));
    assert!(matches!(
        decide(&given_desk(), &command, T0),
        Err(Error::Invalid {
            field: "contact",
            ..
        })
    ));
}

// ---------------------------------------------------------------- max_contacts

#[test]
fn beyond_max_contacts_the_oldest_binding_is_replaced() {
    let state = given(&created_with(Some(2), true));
    let state = apply(state, &register("a", 1, vec![contact(DESK, 3600)]), T0);
    let state = apply(
        state,
        &register("b", 1, vec![contact(MOBILE, 3600)]),
        T0 + SEC,
    );
    // The desk refreshes later, but it stays the oldest registered.
    let state = apply(
        state,
        &register("a", 2, vec![contact(DESK, 3600)]),
        T0 + 2 * SEC,
    );

    let events = decide(
        &state,
        &register("c", 1, vec![contact(LAPTOP, 3600)]),
        T0 + 3 * SEC,
    )
    .unwrap();
    let [Event::ContactReplaced {
        uri,
        instance: None,
        replaced_by,
        ..
    }, Event::ContactRegistered { binding }] = &events[..]
    else {
        panic!("{events:?}")
    };
    assert_eq!((uri.as_str(), replaced_by.as_str()), (DESK, LAPTOP));
    assert_eq!(binding.uri, LAPTOP);
    let state = events.iter().fold(state, user::evolve);
    assert_eq!(uris(&state), [MOBILE, LAPTOP]);
}

#[test]
fn a_request_that_removes_one_and_adds_another_replaces_nothing() {
    let state = given(&created_with(Some(2), true));
    let state = apply(
        state,
        &register("a", 1, vec![contact(DESK, 3600), contact(MOBILE, 3600)]),
        T0,
    );
    // The new contact comes first in the request; the removal still frees
    // the room before it is registered.
    let command = register("a", 2, vec![contact(LAPTOP, 3600), contact(MOBILE, 0)]);
    let events = decide(&state, &command, T0 + SEC).unwrap();
    assert!(
        matches!(
            &events[..],
            [
                Event::ContactRemoved { .. },
                Event::ContactRegistered { .. }
            ]
        ),
        "{events:?}"
    );
    let state = events.iter().fold(state, user::evolve);
    assert_eq!(uris(&state), [DESK, LAPTOP]);
}

#[test]
fn new_contacts_beyond_max_in_one_request_replace_each_other_deterministically() {
    let state = given(&created_with(Some(1), true));
    let state = apply(state, &register("a", 1, vec![contact(DESK, 3600)]), T0);
    let command = register("b", 1, vec![contact(MOBILE, 60), contact(LAPTOP, 60)]);
    let events = decide(&state, &command, T0 + SEC).unwrap();
    assert_eq!(decide(&state, &command, T0 + SEC).unwrap(), events);
    assert_eq!(events.len(), 4, "{events:?}");
    let state = events.iter().fold(state, user::evolve);
    assert_eq!(uris(&state), [LAPTOP]);
    assert_eq!(state.presence, Presence::Online);
}

#[test]
fn lowered_max_contacts_keeps_bindings_until_the_next_new_one() {
    let state = apply(
        given_created(),
        &register(
            "a",
            1,
            vec![contact(DESK, 60), contact(MOBILE, 60), contact(LAPTOP, 60)],
        ),
        T0,
    );
    let patch = Patch {
        max_contacts: Some(1),
        ..Patch::default()
    };
    let state = apply(state, &Command::Update { patch }, T0);
    assert_eq!(state.bindings.len(), 3);
    // A refresh does not trim...
    let state = apply(state, &register("a", 2, vec![contact(MOBILE, 60)]), T0);
    assert_eq!(state.bindings.len(), 3);
    // ...a new binding replaces until it fits.
    let events = decide(
        &state,
        &register("b", 1, vec![contact("sip:alice@10.0.0.9", 60)]),
        T0,
    )
    .unwrap();
    let replaced = events
        .iter()
        .filter(|e| matches!(e, Event::ContactReplaced { .. }))
        .count();
    assert_eq!(replaced, 3);
    let state = events.iter().fold(state, user::evolve);
    assert_eq!(uris(&state), ["sip:alice@10.0.0.9"]);
}

// ---------------------------------------------------------------- identity

#[test]
fn the_instance_id_identifies_the_binding_across_uris() {
    let params = format!(";+sip.instance=\"{INSTANCE}\";reg-id=1");
    let state = apply(
        given_created(),
        &register("a", 1, vec![with_params(DESK, 3600, &params)]),
        T0,
    );
    assert_eq!(state.bindings[0].instance.as_deref(), Some(INSTANCE));
    // The phone moved network: new URI, new Call-ID, same instance (and the
    // parameter name and the UUID in other cases).
    let moved = format!(";reg-id=1;+SIP.Instance=\"{}\"", INSTANCE.to_uppercase());
    let events = decide(
        &state,
        &register("b", 1, vec![with_params(MOBILE, 3600, &moved)]),
        T0 + SEC,
    )
    .unwrap();
    assert!(
        matches!(&events[..], [Event::ContactRefreshed { uri, .. }] if uri == MOBILE),
        "{events:?}"
    );
    let state = events.iter().fold(state, user::evolve);
    assert_eq!(uris(&state), [MOBILE]);
    assert_eq!(state.bindings[0].registered_at, T0);

    // The same URI without the instance is another binding.
    let state = apply(state, &register("c", 1, vec![contact(MOBILE, 60)]), T0);
    assert_eq!(uris(&state), [MOBILE, MOBILE]);
    // Removing by instance removes the instance's binding only.
    let gone = with_params("sip:anything@192.0.2.99", 0, &moved);
    let events = decide(&state, &register("b", 2, vec![gone]), T0).unwrap();
    assert_eq!(
        events,
        vec![Event::ContactRemoved {
            reg_id: None,
            uri: MOBILE.to_owned(),
            instance: Some(INSTANCE.to_uppercase()),
            reason: reason::UNREGISTERED.to_owned(),
        }]
    );
    let state = events.iter().fold(state, user::evolve);
    assert_eq!(state.bindings.len(), 1);
    assert_eq!(state.bindings[0].instance, None);
}

#[test]
fn uris_match_case_insensitively_except_for_the_user_part() {
    let state = given_desk();
    // Scheme and host in other cases: the same binding.
    let same = "SIP:alice@192.0.2.10:5060";
    let events = decide(&state, &register("x", 1, vec![contact(same, 60)]), T0).unwrap();
    assert!(
        matches!(&events[..], [Event::ContactRefreshed { .. }]),
        "{events:?}"
    );
    let state2 = apply(
        apply(
            given_created(),
            &register(
                "a",
                1,
                vec![contact("sip:bob@PBX.Example.COM;Transport=TCP", 60)],
            ),
            T0,
        ),
        &register(
            "b",
            1,
            vec![contact("<sip:bob@pbx.example.com;transport=tcp>", 60)],
        ),
        T0,
    );
    assert_eq!(state2.bindings.len(), 1);
    // Another user part: another binding.
    let events = decide(
        &state,
        &register("x", 1, vec![contact("sip:Alice@192.0.2.10:5060", 60)]),
        T0,
    )
    .unwrap();
    assert!(
        matches!(&events[..], [Event::ContactRegistered { .. }]),
        "{events:?}"
    );
}

#[test]
fn duplicate_contacts_in_one_request_count_once_with_the_last_values() {
    let state = given_created();
    let command = register(
        "a",
        1,
        vec![
            contact(DESK, 60),
            contact(MOBILE, 60),
            contact("sip:alice@192.0.2.10:5060", 120),
        ],
    );
    let events = decide(&state, &command, T0).unwrap();
    let state = events.iter().fold(state, user::evolve);
    assert_eq!(uris(&state), [MOBILE, DESK]);
    assert_eq!(state.bindings[1].expires_at, T0 + 120 * SEC);
    // Last one wins also when it removes.
    let state = given_created();
    let command = register("a", 1, vec![contact(DESK, 60), contact(DESK, 0)]);
    assert_eq!(decide(&state, &command, T0), Ok(vec![]));
}

#[test]
fn key_helpers() {
    assert_eq!(
        normalize_uri("<SIP:Alice@Host.COM:5060;Transport=UDP>"),
        "sip:Alice@host.com:5060;transport=udp"
    );
    assert_eq!(
        normalize_uri("sip:HOST.example.com"),
        "sip:host.example.com"
    );
    assert_eq!(normalize_uri(" sip:a;b@X "), "sip:a;b@x");
    assert_eq!(instance_of(""), None);
    assert_eq!(instance_of(";reg-id=1"), None);
    assert_eq!(instance_of(";+sip.instance=\"\""), None);
    assert_eq!(
        instance_of(";q=0.5; +Sip.Instance = \"<urn:uuid:1;x=\\\"y\\\">\" ;reg-id=1"),
        Some("<urn:uuid:1;x=\"y\">".to_owned())
    );
    assert_eq!(
        instance_of(";+sip.instance=<urn:x>"),
        Some("<urn:x>".to_owned())
    );
    assert_eq!(
        Key::of("sip:a@b", Some("<URN:UUID:AB>"), None),
        Key::Instance("<urn:uuid:ab>".to_owned(), None)
    );
    assert_eq!(
        Key::of("sip:a@B", None, None),
        Key::Uri("sip:a@b".to_owned())
    );
}

// ---------------------------------------------------------------- refusals

#[test]
fn disabled_deleted_and_absent_users_cannot_register() {
    let command = register("a", 1, vec![contact(DESK, 60)]);
    let disabled = given(&created_with(None, false));
    assert!(matches!(
        decide(&disabled, &command, T0),
        Err(Error::FailedPrecondition(_))
    ));
    let deleted = apply(given_created(), &Command::Delete { reason: None }, T0);
    assert!(matches!(
        decide(&deleted, &command, T0),
        Err(Error::FailedPrecondition(_))
    ));
    assert!(matches!(
        decide(&User::default(), &command, T0),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn invalid_requests_name_the_field() {
    let state = given_created();
    let cases = [
        (register("", 1, vec![contact(DESK, 60)]), "call_id"),
        (register("a", 1, vec![contact(" ", 60)]), "contact"),
        (
            register(
                "a",
                1,
                vec![ContactChange {
                    q: Some(1001),
                    ..contact(DESK, 60)
                }],
            ),
            "q",
        ),
    ];
    for (command, expected) in cases {
        match decide(&state, &command, T0) {
            Err(Error::Invalid { field, .. }) => assert_eq!(field, expected),
            other => panic!("{command:?}: {other:?}"),
        }
    }
    let q_max = register(
        "a",
        1,
        vec![ContactChange {
            q: Some(1000),
            ..contact(DESK, 60)
        }],
    );
    assert!(decide(&state, &q_max, T0).is_ok());
}

// ---------------------------------------------------------------- expiry

#[test]
fn contacts_expire_exactly_at_their_expiry() {
    let state = apply(
        given_created(),
        &register("a", 1, vec![contact(DESK, 60), contact(MOBILE, 120)]),
        T0,
    );
    assert_eq!(next_expiry(&state), Some(T0 + 60 * SEC));
    // One microsecond before: nothing.
    assert_eq!(
        decide(&state, &Command::ExpireContacts, T0 + 60 * SEC - 1),
        Ok(vec![])
    );
    // At the boundary: expired.
    let events = decide(&state, &Command::ExpireContacts, T0 + 60 * SEC).unwrap();
    assert_eq!(
        events,
        vec![Event::ContactExpired {
            reg_id: None,
            uri: DESK.to_owned(),
            instance: None,
            expired_at: T0 + 60 * SEC,
        }]
    );
    let state = events.iter().fold(state, user::evolve);
    assert_eq!(next_expiry(&state), Some(T0 + 120 * SEC));
    // Long after (a restart): expired_at is the binding's own expiry, and
    // the last one takes presence offline.
    let events = decide(&state, &Command::ExpireContacts, T0 + 9999 * SEC).unwrap();
    assert_eq!(
        events,
        vec![
            Event::ContactExpired {
                reg_id: None,
                uri: MOBILE.to_owned(),
                instance: None,
                expired_at: T0 + 120 * SEC,
            },
            offline()
        ]
    );
    let state = events.iter().fold(state, user::evolve);
    assert_eq!(next_expiry(&state), None);
    assert_eq!(state.presence, Presence::Offline);
}

#[test]
fn expire_contacts_with_nothing_to_expire_writes_nothing_whatever_the_user() {
    for state in [User::default(), given_created(), given_desk()] {
        assert_eq!(decide(&state, &Command::ExpireContacts, T0), Ok(vec![]));
    }
}

#[test]
fn a_refresh_postpones_the_expiry() {
    let state = apply(
        given_desk(),
        &register("desk-1", 2, vec![contact(DESK, 60)]),
        T0 + 3590 * SEC,
    );
    assert_eq!(next_expiry(&state), Some(T0 + 3650 * SEC));
    assert_eq!(
        decide(&state, &Command::ExpireContacts, T0 + 3600 * SEC),
        Ok(vec![])
    );
}

#[test]
fn contacts_at_lists_live_bindings_with_seconds_rounded_up() {
    let state = apply(
        given_created(),
        &register("a", 1, vec![contact(DESK, 60), contact(MOBILE, 3600)]),
        T0,
    );
    let listed = |now| -> Vec<(String, u32)> {
        state
            .contacts_at(now)
            .map(|(b, secs)| (b.uri.clone(), secs))
            .collect()
    };
    assert_eq!(
        listed(T0),
        [(DESK.to_owned(), 60), (MOBILE.to_owned(), 3600)]
    );
    assert_eq!(
        listed(T0 + 1),
        [(DESK.to_owned(), 60), (MOBILE.to_owned(), 3600)]
    );
    assert_eq!(
        listed(T0 + SEC),
        [(DESK.to_owned(), 59), (MOBILE.to_owned(), 3599)]
    );
    assert_eq!(
        listed(T0 + 60 * SEC - 1),
        [(DESK.to_owned(), 1), (MOBILE.to_owned(), 3541)]
    );
    // At its expiry the desk is no longer listed, even before ExpireContacts.
    assert_eq!(listed(T0 + 60 * SEC), [(MOBILE.to_owned(), 3540)]);
    assert_eq!(state.bindings[0].seconds_left(T0 + 61 * SEC), 0);
}

// ---------------------------------------------------------------- disable / delete

#[test]
fn disabling_drops_every_binding_and_takes_presence_offline() {
    let state = apply(
        given_desk(),
        &register("m", 1, vec![contact(MOBILE, 60)]),
        T0,
    );
    let patch = Patch {
        display_name: Some("Alice L.".to_owned()),
        enabled: Some(false),
        ..Patch::default()
    };
    let events = decide(&state, &Command::Update { patch }, T0 + SEC).unwrap();
    assert!(matches!(events[0], Event::UserUpdated { .. }));
    assert_eq!(
        events[1..],
        [
            Event::UserDisabled {},
            removed(DESK, reason::USER_DISABLED),
            removed(MOBILE, reason::USER_DISABLED),
            offline(),
        ]
    );
    let state = events.iter().fold(state, user::evolve);
    assert!(state.bindings.is_empty());
    assert_eq!(state.presence, Presence::Offline);
    // Disabled again: nothing; enabling gives no contact back.
    let again = Patch {
        enabled: Some(false),
        ..Patch::default()
    };
    assert_eq!(
        decide(&state, &Command::Update { patch: again }, T0),
        Ok(vec![])
    );
    let enable = Patch {
        enabled: Some(true),
        ..Patch::default()
    };
    assert_eq!(
        decide(&state, &Command::Update { patch: enable }, T0),
        Ok(vec![Event::UserEnabled {}])
    );
}

#[test]
fn disabling_a_user_without_contacts_writes_no_presence() {
    let patch = Patch {
        enabled: Some(false),
        ..Patch::default()
    };
    assert_eq!(
        decide(&given_created(), &Command::Update { patch }, T0),
        Ok(vec![Event::UserDisabled {}])
    );
}

#[test]
fn deleting_drops_every_binding_and_takes_presence_offline() {
    let state = given_desk();
    let events = decide(&state, &Command::Delete { reason: None }, T0).unwrap();
    assert_eq!(
        events,
        vec![
            Event::UserDeleted { reason: None },
            removed(DESK, reason::USER_DELETED),
            offline()
        ]
    );
    let state = events.iter().fold(state, user::evolve);
    assert!(state.bindings.is_empty());
    assert_eq!(state.presence, Presence::Offline);
}

// ---------------------------------------------------------------- presence

#[test]
fn presence_follows_the_first_and_the_last_binding_only() {
    let state = given_created();
    assert_eq!(state.presence, Presence::Offline);
    let events = decide(&state, &register("a", 1, vec![contact(DESK, 60)]), T0).unwrap();
    assert_eq!(events.last(), Some(&online()));
    let state = events.iter().fold(state, user::evolve);
    // More and fewer bindings, not none: no presence event.
    let state = apply(state, &register("b", 1, vec![contact(MOBILE, 60)]), T0);
    let events = decide(&state, &register("a", 2, vec![contact(DESK, 0)]), T0).unwrap();
    assert!(!events
        .iter()
        .any(|e| matches!(e, Event::PresenceChanged { .. })));
}

#[test]
fn call_presences_are_not_overridden_by_bindings_coming_or_going() {
    // Ringing and OnCall come from the legs (see tests/calls.rs): the
    // registrar neither overrides them with more bindings nor with none;
    // presence is one function of bindings and legs.
    use dialtone_domain::call::{CallStep, Direction};
    for (answered, presence) in [(false, Presence::Ringing), (true, Presence::OnCall)] {
        let mut state = given_desk();
        let steps = [
            CallStep::Start {
                call_id: "call".to_owned(),
                direction: Direction::Inbound,
                from: "bob@example.com".to_owned(),
                to: "alice@example.com".to_owned(),
                sip_call_id: "sip".to_owned(),
            },
            CallStep::Ringing {
                call_id: "call".to_owned(),
            },
        ];
        for step in steps {
            state = apply(state, &Command::Call(Box::new(step)), T0);
        }
        if answered {
            let answer = CallStep::Answer {
                call_id: "call".to_owned(),
                contact: DESK.to_owned(),
            };
            state = apply(state, &Command::Call(Box::new(answer)), T0);
        }
        assert_eq!(state.presence, presence);
        let events = decide(&state, &register("b", 1, vec![contact(MOBILE, 60)]), T0).unwrap();
        assert!(!events
            .iter()
            .any(|e| matches!(e, Event::PresenceChanged { .. })));
        let events = decide(&state, &remove_all("z", 1), T0).unwrap();
        assert!(!events
            .iter()
            .any(|e| matches!(e, Event::PresenceChanged { .. })));
    }
    for presence in [Presence::Ringing, Presence::OnCall, Presence::Dnd] {
        let json = serde_json::to_string(&presence).unwrap();
        assert_eq!(json, format!("\"{}\"", presence.as_str()));
        assert_eq!(serde_json::from_str::<Presence>(&json).unwrap(), presence);
    }
    assert_eq!(
        serde_json::to_string(&Presence::OnCall).unwrap(),
        "\"on_call\""
    );
}

// ---------------------------------------------------------------- stored form

#[test]
fn registration_events_survive_the_stored_form_and_rebuild_the_state() {
    let mut state = given_created();
    let mut events = created_with(None, true);
    let params = format!(";+sip.instance=\"{INSTANCE}\"");
    for (command, now) in [
        (
            register(
                "a",
                1,
                vec![contact(DESK, 60), with_params(MOBILE, 60, &params)],
            ),
            T0,
        ),
        (register("a", 2, vec![contact(DESK, 120)]), T0 + SEC),
        (
            register("b", 1, vec![contact(LAPTOP, 30), contact(MOBILE, 0)]),
            T0 + SEC,
        ),
        (Command::ExpireContacts, T0 + 31 * SEC),
        (remove_all("c", 1), T0 + 32 * SEC),
    ] {
        let emitted = decide(&state, &command, now).unwrap();
        state = emitted.iter().fold(state, user::evolve);
        events.extend(emitted);
    }
    let mut replayed = User::default();
    for event in &events {
        let event = dialtone_domain::Event::from(event.clone());
        let data = event.to_data().unwrap();
        let back =
            dialtone_domain::Event::from_stored(event.event_type(), event.schema_version(), &data)
                .unwrap();
        assert_eq!(back, event);
        let dialtone_domain::Event::User(back) = back else {
            panic!("{data}")
        };
        replayed = user::evolve(replayed, &back);
    }
    assert_eq!(replayed, state);
    assert!(state.bindings.is_empty());
}

#[test]
fn snapshots_from_before_registration_still_load() {
    let state = given_created();
    let mut json = serde_json::to_value(&state).unwrap();
    let object = json.as_object_mut().unwrap();
    object.remove("bindings").unwrap();
    object.remove("presence").unwrap();
    let back: User = serde_json::from_value(json).unwrap();
    assert_eq!(back, state);
    let desk = given_desk();
    let back: User = serde_json::from_str(&serde_json::to_string(&desk).unwrap()).unwrap();
    assert_eq!(back, desk);
}

#[test]
fn binding_json_leaves_absent_optional_fields_out() {
    let command = Command::Register(Box::new(Register {
        user_agent: None,
        ..request("a", 1, vec![contact(DESK, 60)])
    }));
    let state = apply(given_created(), &command, T0);
    let json = serde_json::to_value(&state.bindings[0]).unwrap();
    for absent in ["q", "instance", "user_agent"] {
        assert!(json.get(absent).is_none(), "{json}");
    }
    assert_eq!(json["params"], "");
}

// ---------------------------------------------------------------- flows

/// A REGISTER over TCP from `source`.
fn over_tcp(call_id: &str, cseq: u32, changes: Vec<ContactChange>, source: &str) -> Command {
    Command::Register(Box::new(Register {
        source: source.to_owned(),
        transport: "TCP".to_owned(),
        ..request(call_id, cseq, changes)
    }))
}

fn outbound(uri: &str, reg_id: u32) -> ContactChange {
    ContactChange {
        reg_id: Some(reg_id),
        ..with_params(
            uri,
            3600,
            &format!(";+sip.instance=\"{INSTANCE}\";reg-id={reg_id}"),
        )
    }
}

#[test]
fn outbound_bindings_are_keyed_by_instance_and_reg_id() {
    // Two flows of one instance (RFC 5626 s.6): two bindings.
    let state = apply(
        given_created(),
        &over_tcp("c", 1, vec![outbound(MOBILE, 1)], "198.51.100.7:40123"),
        T0,
    );
    let state = apply(
        state,
        &over_tcp("c", 2, vec![outbound(MOBILE, 2)], "198.51.100.7:40124"),
        T0 + SEC,
    );
    assert_eq!(state.bindings.len(), 2);
    assert_eq!(
        state.bindings[0].key(),
        Key::Instance(INSTANCE.to_ascii_lowercase(), Some(1))
    );
    assert_eq!(
        state
            .bindings
            .iter()
            .map(|b| (b.reg_id, b.source.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (Some(1), "198.51.100.7:40123"),
            (Some(2), "198.51.100.7:40124")
        ]
    );
    // A reg-id without an instance keys nothing.
    let plain = ContactChange {
        reg_id: Some(1),
        ..contact(DESK, 3600)
    };
    assert_eq!(plain.key(), Key::Uri(DESK.to_owned()));
}

#[test]
fn a_re_registration_on_a_new_flow_replaces_the_old_flow() {
    let state = apply(
        given_created(),
        &over_tcp("c", 1, vec![outbound(MOBILE, 1)], "198.51.100.7:40123"),
        T0,
    );
    // The connection broke; the phone registers again on a new one.
    let events = decide(
        &state,
        &over_tcp("c", 2, vec![outbound(MOBILE, 1)], "198.51.100.7:40999"),
        T0 + SEC,
    )
    .unwrap();
    assert!(matches!(
        &events[..],
        [Event::ContactRefreshed {
            reg_id: Some(1),
            ..
        }]
    ));
    let state = events.iter().fold(state, user::evolve);
    assert_eq!(state.bindings.len(), 1);
    assert_eq!(state.bindings[0].source, "198.51.100.7:40999");
}

#[test]
fn a_closed_flow_takes_its_bindings_with_it() {
    let state = apply(
        given_created(),
        &over_tcp("c", 1, vec![contact(MOBILE, 3600)], "198.51.100.7:40123"),
        T0,
    );
    let state = apply(state, &register("d", 1, vec![contact(DESK, 3600)]), T0);
    let closed = Command::FlowClosed {
        bindings: vec![contact(MOBILE, 1).key(), contact(LAPTOP, 1).key()],
    };
    let events = decide(&state, &closed, T0 + SEC).unwrap();
    assert_eq!(events, vec![removed(MOBILE, reason::FLOW_CLOSED)]);
    let state = events.iter().fold(state, user::evolve);
    assert_eq!(uris(&state), vec![DESK]);
    // Nothing left of that flow: nothing happens.
    assert_eq!(decide(&state, &closed, T0 + 2 * SEC).unwrap(), vec![]);
    // The last binding on a closed flow: offline.
    let state = apply(
        given_created(),
        &over_tcp("c", 1, vec![contact(MOBILE, 3600)], "198.51.100.7:40123"),
        T0,
    );
    assert_eq!(
        decide(&state, &closed, T0 + SEC).unwrap(),
        vec![removed(MOBILE, reason::FLOW_CLOSED), offline()]
    );
}

#[test]
fn nat_and_reg_id_are_stored_and_old_events_read_without_them() {
    let mut change = outbound(MOBILE, 1);
    change.nat = true;
    let events = decide(
        &given_created(),
        &over_tcp("c", 1, vec![change], "198.51.100.7:40123"),
        T0,
    )
    .unwrap();
    let Event::ContactRegistered { binding } = &events[0] else {
        panic!("{events:?}")
    };
    let json = serde_json::to_value(binding).unwrap();
    assert_eq!(json["nat"], true);
    assert_eq!(json["reg_id"], 1);
    // Events written before these fields existed read as not NATed,
    // without reg-id.
    let old = serde_json::json!({
        "uri": DESK, "params": "", "call_id": "c", "cseq": 1, "source": "192.0.2.10:5060",
        "transport": "UDP", "registered_at": T0, "refreshed_at": T0, "expires_at": T0 + SEC
    });
    let old: Binding = serde_json::from_value(old).unwrap();
    assert_eq!((old.nat, old.reg_id), (false, None));
}
