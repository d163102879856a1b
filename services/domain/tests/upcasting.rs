//! Upcasting: a stream written while an event type had an older shape is
//! still read, and folds to the same state as if it had been written in the
//! current shape.
//!
//! No real type has a second version yet, so the test pretends one does:
//! in "version 1" of `UserUpdated` the display name was stored as `name`
//! and `max_contacts` did not exist; the registry below upgrades such data
//! to the shape the code has today (its "version 3").

use dialtone_domain::credentials::{Credentials, PasswordPolicy};
use dialtone_domain::event::{DecodeError, Upcasters};
use dialtone_domain::user::{self, User};
use dialtone_domain::{DomainId, DomainName, Event, UserId, UserName};
use serde_json::{json, Value};

fn v1_to_v2(mut data: Value) -> Result<Value, String> {
    let map = data.as_object_mut().ok_or("not an object")?;
    let name = map.remove("name").ok_or("version 1 data has a name")?;
    map.insert("display_name".into(), name);
    Ok(data)
}

fn v2_to_v3(mut data: Value) -> Result<Value, String> {
    let map = data.as_object_mut().ok_or("not an object")?;
    map.entry("max_contacts")
        .or_insert(json!(user::DEFAULT_MAX_CONTACTS));
    Ok(data)
}

fn registry() -> Upcasters {
    let mut upcasters = Upcasters::new();
    upcasters
        .register("UserUpdated", 1, v1_to_v2)
        .register("UserUpdated", 2, v2_to_v3);
    upcasters
}

fn created() -> user::Event {
    let domain = DomainName::parse("example.com").unwrap();
    let username = UserName::parse("alice").unwrap();
    let credentials = Credentials::derive(
        &username,
        &domain,
        "secret123",
        PasswordPolicy::default(),
        5,
    )
    .unwrap();
    user::Event::UserCreated {
        user_id: UserId(uuid::Uuid::from_u128(7)),
        domain_id: DomainId::for_name(&domain),
        domain,
        username,
        display_name: String::new(),
        caller_id: String::new(),
        max_contacts: 3,
        enabled: true,
        credentials,
        created_at: 5,
    }
}

#[test]
fn old_and_new_shapes_of_a_stream_fold_to_the_same_state() {
    let upcasters = registry();
    assert_eq!(upcasters.current_version("UserUpdated"), 3);

    // The stored form of a stream: (type, schema version, data).
    let created = Event::User(created());
    let stored = [
        ("UserCreated".to_owned(), 1, created.to_data().unwrap()),
        (
            "UserUpdated".to_owned(),
            1,
            json!({"name": "Alice", "caller_id": "+15551234"}).to_string(),
        ),
        (
            "UserUpdated".to_owned(),
            2,
            json!({"display_name": "Alice A.", "caller_id": ""}).to_string(),
        ),
        (
            "UserUpdated".to_owned(),
            3,
            json!({"display_name": "Alice B.", "caller_id": "", "max_contacts": 4}).to_string(),
        ),
    ];
    let mut state = User::default();
    let mut seen = Vec::new();
    for (event_type, version, data) in &stored {
        let event = upcasters.decode(event_type, *version, data).unwrap();
        let Event::User(event) = event else {
            panic!("a user event")
        };
        state = user::evolve(state, &event);
        seen.push(state.clone());
    }
    assert_eq!(seen[1].display_name, "Alice");
    assert_eq!(seen[1].caller_id, "+15551234");
    assert_eq!(seen[1].max_contacts, user::DEFAULT_MAX_CONTACTS);
    assert_eq!(seen[2].display_name, "Alice A.");
    assert_eq!(state.display_name, "Alice B.");
    assert_eq!(state.max_contacts, 4);

    // Without the steps (this build's registry), the old shapes are refused
    // with an error that names the type and version, never misread.
    let builtin = Upcasters::builtin();
    let (event_type, version, data) = &stored[1];
    let err = builtin.decode(event_type, *version, data).unwrap_err();
    assert!(matches!(err, DecodeError::Json { .. }), "{err}");
    let (event_type, version, data) = &stored[3];
    let err = builtin.decode(event_type, *version, data).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::FutureSchema {
                found: 3,
                known: 1,
                ..
            }
        ),
        "{err}"
    );
}
