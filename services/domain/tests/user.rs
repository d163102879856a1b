//! Given/when/then tests of the `User` aggregate.
//!
//! Given: the events already in the stream (folded with `evolve`).
//! When: one command, decided at a given `now`.
//! Then: the events emitted, or the error.

use dialtone_domain::credentials::{Credentials, PasswordPolicy};
use dialtone_domain::user::{
    self, Command, Event, NewUser, Patch, Status, User, DEFAULT_MAX_CONTACTS, MAX_CALLER_ID_LEN,
    MAX_DISPLAY_NAME_LEN, MAX_MAX_CONTACTS, MAX_REASON_LEN,
};
use dialtone_domain::{DomainId, DomainName, Error, UserId, UserName};
use md5::{Digest as _, Md5};
use sha2::Sha256;
use uuid::Uuid;

/// A password that cannot appear by chance in hex digests, numbers or names.
const PASSWORD: &str = "Tr0ub4dor&3-horse";
const NEW_PASSWORD: &str = "correct horse battery staple";
const T0: i64 = 1_764_150_000_000_000;

fn domain() -> DomainName {
    DomainName::parse("example.com").unwrap()
}

fn user_id() -> UserId {
    UserId(Uuid::from_u128(0x42))
}

fn new_user() -> NewUser {
    let domain = domain();
    NewUser {
        user_id: user_id(),
        domain_id: DomainId::for_name(&domain),
        domain,
        username: UserName::parse("alice").unwrap(),
        password: PASSWORD.to_owned(),
        display_name: "Alice Liddell".to_owned(),
        caller_id: "+4930123456".to_owned(),
        max_contacts: None,
        enabled: true,
    }
}

fn create(user: NewUser) -> Command {
    Command::Create {
        user: Box::new(user),
        policy: PasswordPolicy::default(),
    }
}

fn set_password(password: &str) -> Command {
    Command::SetPassword {
        password: password.to_owned(),
        policy: PasswordPolicy::default(),
    }
}

fn update(patch: Patch) -> Command {
    Command::Update { patch }
}

fn given(events: &[Event]) -> User {
    events.iter().fold(User::default(), user::evolve)
}

/// The events of a freshly created user (`alice@example.com`, created at `T0`).
fn created() -> Vec<Event> {
    user::decide(&User::default(), &create(new_user()), T0).unwrap()
}

fn given_created() -> User {
    given(&created())
}

/// Decides `command` on `state` and returns the state after its events.
fn apply(state: User, command: &Command, now: i64) -> User {
    let events = user::decide(&state, command, now).unwrap();
    events.iter().fold(state, user::evolve)
}

#[track_caller]
fn assert_invalid(result: dialtone_domain::Result<Vec<Event>>, expected_field: &str) {
    match result {
        Err(Error::Invalid { field, .. }) => assert_eq!(field, expected_field),
        other => panic!("expected Invalid {{ field: {expected_field:?} }}, got {other:?}"),
    }
}

#[track_caller]
fn assert_not_found(result: dialtone_domain::Result<Vec<Event>>) {
    assert!(
        matches!(result, Err(Error::NotFound(_))),
        "expected NotFound, got {result:?}"
    );
}

fn ha1(input: &str) -> (String, String) {
    (
        hex::encode(Md5::digest(input.as_bytes())),
        hex::encode(Sha256::digest(input.as_bytes())),
    )
}

// ---------------------------------------------------------------- create

#[test]
fn create_emits_user_created_with_digests_and_defaults() {
    let events = user::decide(&User::default(), &create(new_user()), T0).unwrap();
    let [Event::UserCreated {
        user_id,
        domain_id,
        domain: realm,
        username,
        display_name,
        caller_id,
        max_contacts,
        enabled,
        credentials,
        created_at,
    }] = events.as_slice()
    else {
        panic!("expected one UserCreated, got {events:?}");
    };
    assert_eq!(*user_id, self::user_id());
    assert_eq!(*domain_id, DomainId::for_name(&domain()));
    assert_eq!(*realm, domain());
    assert_eq!(username.as_str(), "alice");
    assert_eq!(display_name, "Alice Liddell");
    assert_eq!(caller_id, "+4930123456");
    assert_eq!(*max_contacts, DEFAULT_MAX_CONTACTS);
    assert!(*enabled);
    assert_eq!(*created_at, T0);
    let (md5, sha256) = ha1(&format!("alice:example.com:{PASSWORD}"));
    assert_eq!(credentials.ha1_md5, md5);
    assert_eq!(credentials.ha1_sha256, sha256);
    assert_eq!(credentials.set_at, T0);

    let state = given(&events);
    assert_eq!(state.status, Status::Active);
    assert!(state.exists());
    assert_eq!(state.id, Some(self::user_id()));
    assert_eq!(state.address(), "alice@example.com");
    assert_eq!(state.max_contacts, DEFAULT_MAX_CONTACTS);
    assert_eq!(state.credentials.as_ref(), Some(credentials));
    assert_eq!(state.created_at, T0);
}

#[test]
fn create_keeps_explicit_max_contacts_and_disabled_flag() {
    let events = user::decide(
        &User::default(),
        &create(NewUser {
            max_contacts: Some(3),
            enabled: false,
            display_name: String::new(),
            caller_id: String::new(),
            ..new_user()
        }),
        T0,
    )
    .unwrap();
    let state = given(&events);
    assert_eq!(state.max_contacts, 3);
    assert!(!state.enabled);
    assert_eq!(state.display_name, "");
    assert_eq!(state.caller_id, "");
}

#[test]
fn create_validation_errors_name_the_field() {
    let absent = User::default();
    let attempt = |user: NewUser| user::decide(&absent, &create(user), T0);

    // display_name: length and control characters.
    let long = "x".repeat(MAX_DISPLAY_NAME_LEN + 1);
    assert_invalid(
        attempt(NewUser {
            display_name: long,
            ..new_user()
        }),
        "display_name",
    );
    let tab = "Alice\tLiddell".to_owned();
    assert_invalid(
        attempt(NewUser {
            display_name: tab,
            ..new_user()
        }),
        "display_name",
    );
    let nul = "Alice\u{0}".to_owned();
    assert_invalid(
        attempt(NewUser {
            display_name: nul,
            ..new_user()
        }),
        "display_name",
    );

    // caller_id: a telephone number or nothing.
    for bad in ["abc", "+49 30", "++49", "49+", "+", "-1", "٣"] {
        let user = NewUser {
            caller_id: bad.to_owned(),
            ..new_user()
        };
        assert_invalid(attempt(user), "caller_id");
    }
    let long = "1".repeat(MAX_CALLER_ID_LEN + 1);
    assert_invalid(
        attempt(NewUser {
            caller_id: long,
            ..new_user()
        }),
        "caller_id",
    );

    // max_contacts: 1..=MAX_MAX_CONTACTS.
    for bad in [0, MAX_MAX_CONTACTS + 1, u32::MAX] {
        let user = NewUser {
            max_contacts: Some(bad),
            ..new_user()
        };
        assert_invalid(attempt(user), "max_contacts");
    }

    // password: policy length, upper bound, control characters.
    for bad in ["", "short", "1234567", "pass\nword!", "password\u{7f}"] {
        let user = NewUser {
            password: bad.to_owned(),
            ..new_user()
        };
        assert_invalid(attempt(user), "password");
    }
    let long = "p".repeat(PasswordPolicy::MAX_LENGTH + 1);
    assert_invalid(
        attempt(NewUser {
            password: long,
            ..new_user()
        }),
        "password",
    );
    let strict = Command::Create {
        user: Box::new(new_user()),
        policy: PasswordPolicy {
            min_length: PASSWORD.len() + 1,
        },
    };
    assert_invalid(user::decide(&absent, &strict, T0), "password");
}

#[test]
fn create_accepts_values_on_the_bounds() {
    let absent = User::default();
    let ok = |user: NewUser| {
        let result = user::decide(&absent, &create(user), T0);
        assert!(
            matches!(result.as_deref(), Ok([Event::UserCreated { .. }])),
            "{result:?}"
        );
    };
    ok(NewUser {
        display_name: "é".repeat(MAX_DISPLAY_NAME_LEN),
        ..new_user()
    });
    ok(NewUser {
        caller_id: "1".repeat(MAX_CALLER_ID_LEN),
        ..new_user()
    });
    for good in ["", "+1", "*21#", "1001", "+4930123456"] {
        ok(NewUser {
            caller_id: good.to_owned(),
            ..new_user()
        });
    }
    ok(NewUser {
        max_contacts: Some(1),
        ..new_user()
    });
    ok(NewUser {
        max_contacts: Some(MAX_MAX_CONTACTS),
        ..new_user()
    });
    ok(NewUser {
        password: "8 chars!".to_owned(),
        ..new_user()
    });
    ok(NewUser {
        password: "ü".repeat(PasswordPolicy::MAX_LENGTH),
        ..new_user()
    });
}

#[test]
fn create_when_already_created_is_already_exists() {
    let state = given_created();
    let result = user::decide(&state, &create(new_user()), T0 + 1);
    assert!(matches!(result, Err(Error::AlreadyExists(ref what)) if what == "alice@example.com"));
    // Even with other fields: the stream is taken.
    let other = NewUser {
        username: UserName::parse("bob").unwrap(),
        ..new_user()
    };
    assert!(matches!(
        user::decide(&state, &create(other), T0 + 1),
        Err(Error::AlreadyExists(_))
    ));
}

// ---------------------------------------------------------------- update

#[test]
fn update_of_absent_user_is_not_found() {
    assert_not_found(user::decide(
        &User::default(),
        &update(Patch::default()),
        T0,
    ));
    assert_not_found(user::decide(
        &User::default(),
        &set_password(NEW_PASSWORD),
        T0,
    ));
    assert_not_found(user::decide(
        &User::default(),
        &Command::Delete { reason: None },
        T0,
    ));
}

#[test]
fn update_emits_the_full_new_settings() {
    let state = given_created();
    let patch = Patch {
        display_name: Some("Alice L.".to_owned()),
        ..Patch::default()
    };
    let events = user::decide(&state, &update(patch), T0 + 1).unwrap();
    assert_eq!(
        events,
        vec![Event::UserUpdated {
            display_name: "Alice L.".to_owned(),
            caller_id: "+4930123456".to_owned(),
            max_contacts: DEFAULT_MAX_CONTACTS,
        }]
    );
    let state = events.iter().fold(state, user::evolve);
    assert_eq!(state.display_name, "Alice L.");

    let patch = Patch {
        caller_id: Some(String::new()),
        max_contacts: Some(1),
        ..Patch::default()
    };
    let state = apply(state, &update(patch), T0 + 2);
    assert_eq!(state.display_name, "Alice L.");
    assert_eq!(state.caller_id, "");
    assert_eq!(state.max_contacts, 1);
}

#[test]
fn update_that_changes_nothing_emits_nothing() {
    let state = given_created();
    assert_eq!(
        user::decide(&state, &update(Patch::default()), T0 + 1),
        Ok(vec![])
    );
    let same = Patch {
        display_name: Some(state.display_name.clone()),
        caller_id: Some(state.caller_id.clone()),
        max_contacts: Some(state.max_contacts),
        enabled: Some(state.enabled),
    };
    assert_eq!(user::decide(&state, &update(same), T0 + 1), Ok(vec![]));
}

#[test]
fn disable_and_enable_are_events_and_idempotent() {
    let state = given_created();
    let disable = update(Patch {
        enabled: Some(false),
        ..Patch::default()
    });
    let enable = update(Patch {
        enabled: Some(true),
        ..Patch::default()
    });

    assert_eq!(user::decide(&state, &enable, T0 + 1), Ok(vec![]));
    assert_eq!(
        user::decide(&state, &disable, T0 + 1),
        Ok(vec![Event::UserDisabled {}])
    );
    let state = apply(state, &disable, T0 + 1);
    assert!(!state.enabled);
    assert_eq!(user::decide(&state, &disable, T0 + 2), Ok(vec![]));
    assert_eq!(
        user::decide(&state, &enable, T0 + 2),
        Ok(vec![Event::UserEnabled {}])
    );
    let state = apply(state, &enable, T0 + 2);
    assert!(state.enabled);
    // A disabled user still exists: it can be changed and deleted.
    assert!(state.exists());
}

#[test]
fn update_and_disable_in_one_patch_emit_both_in_order() {
    let state = given_created();
    let patch = Patch {
        max_contacts: Some(2),
        enabled: Some(false),
        ..Patch::default()
    };
    let events = user::decide(&state, &update(patch), T0 + 1).unwrap();
    assert!(
        matches!(
            events.as_slice(),
            [
                Event::UserUpdated {
                    max_contacts: 2,
                    ..
                },
                Event::UserDisabled {}
            ]
        ),
        "{events:?}"
    );
}

#[test]
fn update_validation_errors_name_the_field_and_emit_nothing() {
    let state = given_created();
    let attempt = |patch: Patch| user::decide(&state, &update(patch), T0 + 1);
    let long = "x".repeat(MAX_DISPLAY_NAME_LEN + 1);
    assert_invalid(
        attempt(Patch {
            display_name: Some(long),
            ..Patch::default()
        }),
        "display_name",
    );
    let bad = "Bob\r\nX-Injected: 1".to_owned();
    assert_invalid(
        attempt(Patch {
            display_name: Some(bad),
            ..Patch::default()
        }),
        "display_name",
    );
    let bad = "sip:1001".to_owned();
    assert_invalid(
        attempt(Patch {
            caller_id: Some(bad),
            ..Patch::default()
        }),
        "caller_id",
    );
    assert_invalid(
        attempt(Patch {
            max_contacts: Some(0),
            ..Patch::default()
        }),
        "max_contacts",
    );
    let too_many = Some(MAX_MAX_CONTACTS + 1);
    assert_invalid(
        attempt(Patch {
            max_contacts: too_many,
            ..Patch::default()
        }),
        "max_contacts",
    );
    // An invalid field refuses the whole patch, including a valid enable flag.
    let mixed = Patch {
        enabled: Some(false),
        max_contacts: Some(0),
        ..Patch::default()
    };
    assert_invalid(attempt(mixed), "max_contacts");
}

// ---------------------------------------------------------------- password

#[test]
fn set_password_changes_both_digests_and_records_when() {
    let state = given_created();
    let before = state.credentials.clone().unwrap();
    let now = T0 + 5_000_000;
    let events = user::decide(&state, &set_password(NEW_PASSWORD), now).unwrap();
    let [Event::PasswordChanged { credentials }] = events.as_slice() else {
        panic!("expected one PasswordChanged, got {events:?}");
    };
    let (md5, sha256) = ha1(&format!("alice:example.com:{NEW_PASSWORD}"));
    assert_eq!(credentials.ha1_md5, md5);
    assert_eq!(credentials.ha1_sha256, sha256);
    assert_ne!(credentials.ha1_md5, before.ha1_md5);
    assert_ne!(credentials.ha1_sha256, before.ha1_sha256);
    assert_eq!(credentials.set_at, now);

    let state = events.iter().fold(state, user::evolve);
    assert_eq!(state.credentials.as_ref(), Some(credentials));
    // Nothing else moved.
    assert_eq!(state.created_at, T0);
    assert_eq!(state.display_name, "Alice Liddell");
}

#[test]
fn set_password_to_the_same_password_still_records_a_change() {
    // Setting a password is an operator action worth recording (it also
    // moves `set_at`), even if the digests do not change.
    let state = given_created();
    let events = user::decide(&state, &set_password(PASSWORD), T0 + 7).unwrap();
    let [Event::PasswordChanged { credentials }] = events.as_slice() else {
        panic!("expected one PasswordChanged, got {events:?}");
    };
    let before = state.credentials.as_ref().unwrap();
    assert_eq!(credentials.ha1_md5, before.ha1_md5);
    assert_eq!(credentials.set_at, T0 + 7);
}

#[test]
fn set_password_is_checked_against_the_policy() {
    let state = given_created();
    assert_invalid(
        user::decide(&state, &set_password("short"), T0 + 1),
        "password",
    );
    assert_invalid(
        user::decide(&state, &set_password("new\tpassword"), T0 + 1),
        "password",
    );
    let strict = Command::SetPassword {
        password: NEW_PASSWORD.to_owned(),
        policy: PasswordPolicy { min_length: 64 },
    };
    assert_invalid(user::decide(&state, &strict, T0 + 1), "password");
}

#[test]
fn disabled_user_can_still_get_a_new_password() {
    let state = apply(
        given_created(),
        &update(Patch {
            enabled: Some(false),
            ..Patch::default()
        }),
        T0 + 1,
    );
    let state = apply(state, &set_password(NEW_PASSWORD), T0 + 2);
    assert_eq!(state.credentials.unwrap().set_at, T0 + 2);
}

// ---------------------------------------------------------------- delete

#[test]
fn delete_emits_user_deleted_with_its_reason() {
    let state = given_created();
    assert_eq!(
        user::decide(&state, &Command::Delete { reason: None }, T0 + 1),
        Ok(vec![Event::UserDeleted { reason: None }])
    );
    let reason = Some("left the company".to_owned());
    assert_eq!(
        user::decide(
            &state,
            &Command::Delete {
                reason: reason.clone()
            },
            T0 + 1
        ),
        Ok(vec![Event::UserDeleted { reason }])
    );
    let long = Some("x".repeat(MAX_REASON_LEN + 1));
    assert_invalid(
        user::decide(&state, &Command::Delete { reason: long }, T0 + 1),
        "reason",
    );
}

#[test]
fn after_delete_every_command_is_refused() {
    let state = apply(given_created(), &Command::Delete { reason: None }, T0 + 1);
    assert_eq!(state.status, Status::Deleted);
    assert!(!state.exists());

    let now = T0 + 2;
    assert_not_found(user::decide(&state, &update(Patch::default()), now));
    let disable = update(Patch {
        enabled: Some(false),
        ..Patch::default()
    });
    assert_not_found(user::decide(&state, &disable, now));
    let rename = update(Patch {
        display_name: Some("Ghost".to_owned()),
        ..Patch::default()
    });
    assert_not_found(user::decide(&state, &rename, now));
    assert_not_found(user::decide(&state, &set_password(NEW_PASSWORD), now));
    assert_not_found(user::decide(&state, &Command::Delete { reason: None }, now));
    // A user stream is never reused: creating on it again is refused too.
    assert!(matches!(
        user::decide(&state, &create(new_user()), now),
        Err(Error::AlreadyExists(_))
    ));
}

// ---------------------------------------------------------------- secrets

/// Every kind of user event, produced by `decide` from commands that carry a
/// password.
fn a_life_of_alice() -> Vec<Event> {
    let mut state = User::default();
    let mut all = Vec::new();
    let commands = [
        create(new_user()),
        set_password(NEW_PASSWORD),
        update(Patch {
            display_name: Some("A.".to_owned()),
            ..Patch::default()
        }),
        update(Patch {
            enabled: Some(false),
            ..Patch::default()
        }),
        update(Patch {
            enabled: Some(true),
            ..Patch::default()
        }),
        Command::Delete {
            reason: Some("test".to_owned()),
        },
    ];
    for (i, command) in commands.iter().enumerate() {
        let events = user::decide(&state, command, T0 + i as i64).unwrap();
        state = events.iter().fold(state, user::evolve);
        all.extend(events);
    }
    all
}

#[test]
fn passwords_never_appear_in_event_json() {
    let events = a_life_of_alice();
    let types: Vec<&str> = events
        .iter()
        .map(|e| dialtone_domain::Event::from(e.clone()).event_type())
        .collect();
    assert_eq!(
        types,
        [
            "UserCreated",
            "PasswordChanged",
            "UserUpdated",
            "UserDisabled",
            "UserEnabled",
            "UserDeleted"
        ]
    );
    for event in events {
        let event = dialtone_domain::Event::from(event);
        let json = event.to_data().unwrap();
        for secret in [PASSWORD, NEW_PASSWORD] {
            assert!(
                !json.contains(secret),
                "{} leaks the password: {json}",
                event.event_type()
            );
        }
        assert!(!json.to_lowercase().contains("password"), "{json}");
        let debug = format!("{event:?}");
        for secret in [PASSWORD, NEW_PASSWORD] {
            assert!(
                !debug.contains(secret),
                "Debug of {} leaks the password",
                event.event_type()
            );
        }
    }
}

#[test]
fn commands_do_not_print_passwords() {
    let printed = format!("{:?} {:?}", create(new_user()), set_password(NEW_PASSWORD));
    assert!(!printed.contains(PASSWORD), "{printed}");
    assert!(!printed.contains(NEW_PASSWORD), "{printed}");
    assert!(
        printed.contains("alice"),
        "the rest is still shown: {printed}"
    );
}

#[test]
fn credentials_in_state_are_not_printed() {
    let state = given_created();
    let Credentials {
        ha1_md5,
        ha1_sha256,
        ..
    } = state.credentials.clone().unwrap();
    let printed = format!("{state:?}");
    assert!(
        !printed.contains(&ha1_md5) && !printed.contains(&ha1_sha256),
        "{printed}"
    );
}

#[test]
fn user_events_survive_the_stored_form() {
    for event in a_life_of_alice() {
        let event = dialtone_domain::Event::from(event);
        let data = event.to_data().unwrap();
        let back =
            dialtone_domain::Event::from_stored(event.event_type(), event.schema_version(), &data)
                .unwrap();
        assert_eq!(back, event);
    }
}
