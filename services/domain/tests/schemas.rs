//! The JSON Schemas in `schemas/` (one per stored event type) against the
//! code: every type has exactly one schema, every event this crate writes
//! validates against its schema, and malformed documents do not.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::LazyLock;

use dialtone_domain::call::{CallStep, Cause, Direction, ForwardReason, HangupSide, TransferKind};
use dialtone_domain::conference::{
    self, Conference, EndReason, LeaveReason, ParticipantId, RecordingAction,
};
use dialtone_domain::conference_pin::Strikes;
use dialtone_domain::conference_room::{Room, RoomPatch};
use dialtone_domain::credentials::{Credentials, PasswordPolicy};
use dialtone_domain::domain::{self, Domain, Settings, SettingsPatch};
use dialtone_domain::event::{
    current_schema_version, redact_secrets, CONFERENCE_EVENT_TYPES, DOMAIN_EVENT_TYPES,
    EVENT_TYPES, NUMBER_EVENT_TYPES,
};
use dialtone_domain::forwarding::{ForwardTarget, Forwarding, ForwardingPatch, RuleTimesPatch};
use dialtone_domain::mailbox::{self, AudioId, Greeting, PinHash, RefusalReason};
use dialtone_domain::names::UserAddress;
use dialtone_domain::registration::{Binding, ContactChange, Presence, Register};
use dialtone_domain::routing::SkipReason;
use dialtone_domain::schedule::{TimeCondition, TimeZone};
use dialtone_domain::token::{self, Scope, Tokens};
use dialtone_domain::user::{self, NewUser, Patch, User};
use dialtone_domain::{DomainId, DomainName, Event, UserId, UserName};
use jsonschema::Validator;
use proptest::prelude::*;
use serde_json::{json, Value};
use uuid::Uuid;

const T0: i64 = 1_764_150_000_000_000;

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

/// Every `*.json` file in `schemas/`, by file stem.
static SCHEMAS: LazyLock<BTreeMap<String, Value>> = LazyLock::new(|| {
    let mut schemas = BTreeMap::new();
    for entry in std::fs::read_dir(schema_dir()).expect("schemas/ exists") {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let schema: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        schemas.insert(stem, schema);
    }
    schemas
});

/// A validator per schema, with `format` (uuid) asserted.
static VALIDATORS: LazyLock<BTreeMap<String, Validator>> = LazyLock::new(|| {
    SCHEMAS
        .iter()
        .map(|(name, schema)| {
            let validator = jsonschema::draft202012::options()
                .should_validate_formats(true)
                .build(schema)
                .unwrap_or_else(|e| panic!("schemas/{name}.json does not compile: {e}"));
            (name.clone(), validator)
        })
        .collect()
});

fn validator(event_type: &str) -> &'static Validator {
    VALIDATORS
        .get(event_type)
        .unwrap_or_else(|| panic!("no schema for {event_type}"))
}

/// The errors of `data` against the schema of `event_type` (empty: valid).
fn errors(event_type: &str, data: &Value) -> Vec<String> {
    validator(event_type)
        .iter_errors(data)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect()
}

#[track_caller]
fn assert_valid(event: &Event) {
    let data: Value = serde_json::from_str(&event.to_data().unwrap()).unwrap();
    let errors = errors(event.event_type(), &data);
    assert!(
        errors.is_empty(),
        "{} {data} is refused by its schema: {errors:#?}",
        event.event_type()
    );
}

#[track_caller]
fn assert_rejected(event_type: &str, data: Value) {
    assert!(
        !validator(event_type).is_valid(&data),
        "{event_type} schema accepts the invalid document {data}"
    );
}

// ================================================================ files

#[test]
fn every_event_type_has_a_schema_and_every_schema_a_type() {
    let types: BTreeSet<&str> = EVENT_TYPES.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        types.len(),
        EVENT_TYPES.len(),
        "EVENT_TYPES lists a type twice"
    );
    let files: BTreeSet<&str> = SCHEMAS.keys().map(String::as_str).collect();
    let missing: Vec<_> = types.difference(&files).collect();
    let orphans: Vec<_> = files.difference(&types).collect();
    assert!(
        missing.is_empty(),
        "event types without schemas/<type>.json: {missing:?}"
    );
    assert!(
        orphans.is_empty(),
        "schemas without an event type: {orphans:?}"
    );
}

/// Calls `f` on every subschema that is a JSON object.
fn walk<'a>(
    schema: &'a Value,
    path: &str,
    f: &mut impl FnMut(&str, &'a serde_json::Map<String, Value>),
) {
    match schema {
        Value::Object(map) => {
            f(path, map);
            for (key, value) in map {
                walk(value, &format!("{path}/{key}"), f);
            }
        }
        Value::Array(items) => {
            for (i, value) in items.iter().enumerate() {
                walk(value, &format!("{path}/{i}"), f);
            }
        }
        _ => {}
    }
}

#[test]
fn schemas_are_draft_2020_12_closed_and_versioned() {
    for (name, schema) in SCHEMAS.iter() {
        if let Err(e) = jsonschema::draft202012::meta::validate(schema) {
            panic!("schemas/{name}.json is not a valid draft 2020-12 schema: {e}");
        }
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "schemas/{name}.json: $schema"
        );
        assert_eq!(schema["title"], name.as_str(), "schemas/{name}.json: title");
        assert_eq!(
            schema["x-dialtone-schema-version"],
            current_schema_version(name),
            "schemas/{name}.json: x-dialtone-schema-version must be the version this build writes"
        );
        let stream = if DOMAIN_EVENT_TYPES.contains(&name.as_str()) {
            "domain"
        } else if CONFERENCE_EVENT_TYPES.contains(&name.as_str()) {
            "conference"
        } else if NUMBER_EVENT_TYPES.contains(&name.as_str()) {
            "number"
        } else if name.starts_with("Token") {
            "tokens"
        } else {
            "user"
        };
        assert_eq!(
            schema["x-dialtone-stream"], stream,
            "schemas/{name}.json: x-dialtone-stream"
        );
        assert_eq!(
            schema["type"], "object",
            "schemas/{name}.json: data is an object"
        );

        walk(schema, "", &mut |path, map| {
            if map.get("type").and_then(Value::as_str) != Some("object") {
                return;
            }
            assert_eq!(
                map.get("additionalProperties"),
                Some(&Value::Bool(false)),
                "schemas/{name}.json{path}: objects must have additionalProperties: false"
            );
            let properties = map
                .get("properties")
                .and_then(Value::as_object)
                .unwrap_or_else(|| panic!("schemas/{name}.json{path}: properties missing"));
            let required = map
                .get("required")
                .and_then(Value::as_array)
                .unwrap_or_else(|| panic!("schemas/{name}.json{path}: required missing"));
            for field in required {
                let field = field.as_str().unwrap();
                assert!(
                    properties.contains_key(field),
                    "schemas/{name}.json{path}: required {field} is not a property"
                );
            }
        });
    }
}

#[test]
fn the_event_catalog_documents_every_type_with_its_stream_and_category() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/events.md");
    let text = std::fs::read_to_string(&path).expect("docs/events.md exists");
    let mut documented = BTreeMap::new();
    let mut stream = "";
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(section) = line.strip_prefix("## ") {
            stream = if section.contains("`domain-") {
                "domain"
            } else if section.contains("`user-") {
                "user"
            } else if section.contains("`tokens`") {
                "tokens"
            } else if section.contains("`conference-") {
                "conference"
            } else if section.contains("`number-") {
                "number"
            } else {
                ""
            };
        } else if let Some(name) = line.strip_prefix("### ") {
            let first = lines.find(|l| !l.trim().is_empty()).unwrap_or_default();
            let category = first
                .strip_prefix("Category `")
                .and_then(|rest| rest.split('`').next())
                .unwrap_or_else(|| {
                    panic!("docs/events.md: {name} does not start with its category")
                });
            documented.insert(name.trim().to_owned(), (stream, category.to_owned()));
        }
    }
    for (event_type, category) in EVENT_TYPES {
        let Some((stream, documented_category)) = documented.remove(*event_type) else {
            panic!("docs/events.md does not document {event_type}");
        };
        assert_eq!(
            documented_category,
            category.as_str(),
            "docs/events.md: category of {event_type}"
        );
        assert_eq!(
            Some(&json!(stream)),
            SCHEMAS[*event_type].get("x-dialtone-stream"),
            "docs/events.md: stream of {event_type}"
        );
    }
    assert!(
        documented.is_empty(),
        "docs/events.md documents unknown types: {documented:?}"
    );
}

// ================================================================ samples

fn dn(s: &str) -> DomainName {
    DomainName::parse(s).unwrap()
}

fn un(s: &str) -> UserName {
    UserName::parse(s).unwrap()
}

fn credentials(password: &str, now: i64) -> Credentials {
    Credentials::derive(
        &un("alice"),
        &dn("example.com"),
        password,
        PasswordPolicy::default(),
        now,
    )
    .unwrap()
}

/// Events produced by `decide`, covering every domain variant.
fn domain_events_from_decide() -> Vec<Event> {
    use domain::Command as C;
    let alice = un("alice");
    let id = UserId(Uuid::from_u128(0xa11ce));
    let commands = [
        C::Create {
            name: dn("Example.COM."),
            settings: Settings {
                description: "Büro ✓ \"quoted\"\n".to_owned(),
                ..Settings::default()
            },
        },
        C::Update {
            patch: SettingsPatch {
                allow_cross_domain_calls: Some(true),
                md5_allowed: Some(false),
                ..SettingsPatch::default()
            },
        },
        C::Suspend { reason: None },
        C::Resume,
        C::Suspend {
            reason: Some("unpaid invoice".to_owned()),
        },
        C::Resume,
        C::ClaimUserName {
            username: alice.clone(),
            user_id: id,
        },
        C::CreateRingGroup {
            name: UserName::parse("sales").unwrap(),
            patch: dialtone_domain::ring_group::RingGroupPatch {
                members: Some(vec![
                    dialtone_domain::ring_group::Member::parse("alice").unwrap()
                ]),
                ..Default::default()
            },
        },
        C::UpdateRingGroup {
            name: UserName::parse("sales").unwrap(),
            patch: dialtone_domain::ring_group::RingGroupPatch {
                strategy: Some(dialtone_domain::ring_group::Strategy::Sequential),
                timeout_secs: Some(30),
                ..Default::default()
            },
        },
        C::DeleteRingGroup {
            name: UserName::parse("sales").unwrap(),
        },
        C::CreateConferenceRoom {
            name: un("standup"),
            patch: RoomPatch {
                pin: Some(Some(PinHash::derive("2468", [1; 16]).unwrap())),
                moderator_pin: Some(Some(PinHash::derive("135791357913", [2; 16]).unwrap())),
                wait_for_moderator: Some(true),
                ..Default::default()
            },
        },
        C::UpdateConferenceRoom {
            name: un("standup"),
            patch: RoomPatch {
                pin: Some(None),
                max_participants: Some(1_000),
                record: Some(true),
                tones: Some(false),
                muted_on_entry: Some(true),
                end_with_moderator: Some(true),
                ..Default::default()
            },
        },
        C::ConferencePin {
            name: un("standup"),
            command: dialtone_domain::conference_pin::Command::Entered {
                caller: dialtone_domain::conference_pin::PinCaller {
                    key: "192.0.2.7".into(),
                    authenticated: false,
                },
                right: false,
            },
        },
        C::ConferencePin {
            name: un("standup"),
            command: dialtone_domain::conference_pin::Command::Entered {
                caller: dialtone_domain::conference_pin::PinCaller {
                    key: "192.0.2.7".into(),
                    authenticated: false,
                },
                right: true,
            },
        },
        C::ConferencePin {
            name: un("standup"),
            command: dialtone_domain::conference_pin::Command::Entered {
                caller: dialtone_domain::conference_pin::PinCaller {
                    key: "alice\u{7}@example.com".into(),
                    authenticated: true,
                },
                right: false,
            },
        },
        C::ConferencePin {
            name: un("standup"),
            command: dialtone_domain::conference_pin::Command::Clear { caller: None },
        },
        C::DeleteConferenceRoom {
            name: un("standup"),
        },
        C::ReleaseUserName {
            username: alice,
            user_id: id,
        },
        C::RecordLockout(domain::Lockout {
            source: "198.51.100.7".to_owned(),
            scope: domain::LockoutScope::User,
            username: Some("100\u{7}\"<scan>".to_owned()),
            failures: 5,
            duration_secs: 300,
        }),
        C::Delete,
    ];
    let mut state = Domain::default();
    let mut events = Vec::new();
    for (i, command) in commands.iter().enumerate() {
        let emitted = domain::decide(&state, command, T0 + i as i64).unwrap();
        assert!(!emitted.is_empty(), "{command:?} emitted nothing");
        state = emitted.iter().fold(state, domain::evolve);
        events.extend(emitted.into_iter().map(Event::Domain));
    }
    events
}

/// Events produced by `decide`, covering every user variant.
fn user_events_from_decide() -> Vec<Event> {
    use user::Command as C;
    let domain = dn("example.com");
    let create = C::Create {
        user: Box::new(NewUser {
            user_id: UserId(Uuid::from_u128(0xa11ce)),
            domain_id: DomainId::for_name(&domain),
            domain,
            username: un("alice"),
            password: "secret password".to_owned(),
            display_name: "Alice".to_owned(),
            caller_id: "+4930123456".to_owned(),
            max_contacts: None,
            enabled: true,
        }),
        policy: PasswordPolicy::default(),
    };
    let commands = [
        create,
        C::SetPassword {
            password: "another password".to_owned(),
            policy: PasswordPolicy::default(),
        },
        C::Update {
            patch: Patch {
                display_name: Some("Alice \u{1F600}".to_owned()),
                caller_id: Some(String::new()),
                max_contacts: Some(100),
                enabled: Some(false),
            },
        },
        C::Update {
            patch: Patch {
                enabled: Some(true),
                ..Patch::default()
            },
        },
        C::SetForwarding {
            patch: Box::new(forwarding_patch_of_every_kind()),
        },
        C::SetForwarding {
            patch: Box::new(ForwardingPatch {
                clear: true,
                ..ForwardingPatch::default()
            }),
        },
        C::SetDnd { on: true },
        C::SetDnd { on: false },
        C::Delete {
            reason: Some("left".to_owned()),
        },
    ];
    let mut state = User::default();
    let mut events = Vec::new();
    for (i, command) in commands.iter().enumerate() {
        let emitted = user::decide(&state, command, T0 + i as i64).unwrap();
        assert!(!emitted.is_empty(), "{command:?} emitted nothing");
        state = emitted.iter().fold(state, user::evolve);
        events.extend(emitted.into_iter().map(Event::User));
    }
    // A deletion without a reason, on another user.
    let state = user::evolve(
        User::default(),
        match &events[0] {
            Event::User(e) => e,
            _ => unreachable!(),
        },
    );
    let emitted = user::decide(&state, &C::Delete { reason: None }, T0 + 10).unwrap();
    events.extend(emitted.into_iter().map(Event::User));
    events.extend(registration_events_from_decide(&state));
    events.extend(call_events_from_decide(&state));
    events.extend(mailbox_events_from_decide(&state));
    events
}

fn audio_id(n: u8) -> AudioId {
    AudioId::from_random([n; 16])
}

/// Voicemail events produced by `decide` for `created` (a user whose
/// mailbox was never configured), covering every mailbox variant and
/// refusal reason.
fn mailbox_events_from_decide(created: &User) -> Vec<Event> {
    use mailbox::{Command as M, Patch as P};
    let sec = 1_000_000;
    let mailbox = |c: M| user::Command::Mailbox(c);
    let leave = |n: u8, from: &str, duration_ms| {
        mailbox(M::Leave {
            message_id: audio_id(n),
            from: from.to_owned(),
            duration_ms,
        })
    };
    let check_pin = |pin: &str| {
        mailbox(M::CheckPin {
            pin: pin.to_owned(),
        })
    };
    let mut commands = vec![
        // Never configured: disabled.
        leave(1, "bob@example.com", 5_000),
        mailbox(M::Configure(P {
            enabled: Some(true),
            pin: Some(PinHash::derive("4321", [7; 16]).unwrap()),
            ..P::default()
        })),
        mailbox(M::Configure(P {
            max_message_ms: Some(mailbox::MAX_MAX_MESSAGE_MS),
            max_messages: Some(1),
            pin_from_own_phone: Some(true),
            unsolicited_mwi: Some(true),
            ..P::default()
        })),
        // The longest a mailbox takes: its maximum and a second of slack.
        leave(
            2,
            "+4930123456@example.com",
            mailbox::MAX_MAX_MESSAGE_MS + 1_000,
        ),
        // Full.
        leave(3, "\"Bob\" ✓@example.com", mailbox::MIN_MESSAGE_MS),
        mailbox(M::Refuse {
            from: String::new(),
            reason: RefusalReason::MailboxDisabled,
        }),
        mailbox(M::MarkRead {
            message_id: audio_id(2),
        }),
        mailbox(M::Delete {
            message_id: audio_id(2),
        }),
        mailbox(M::SetGreeting {
            greeting: Some(Greeting {
                audio: audio_id(9),
                duration_ms: 4_000,
            }),
        }),
        mailbox(M::SetGreeting { greeting: None }),
        check_pin("0000"),
        check_pin("4321"),
    ];
    // Wrong PINs up to the lock-out.
    commands.extend((0..mailbox::PIN_ATTEMPTS_BEFORE_LOCKOUT).map(|_| check_pin("99999")));
    commands.push(mailbox(M::Configure(P {
        enabled: Some(false),
        max_message_ms: Some(mailbox::MIN_MAX_MESSAGE_MS),
        max_messages: Some(mailbox::MAX_MAX_MESSAGES),
        pin: Some(PinHash::derive("123456789012", [0xff; 16]).unwrap()),
        ..P::default()
    })));
    let mut state = created.clone();
    let mut now = T0 + 20_000 * sec;
    let mut events = Vec::new();
    for command in commands {
        let emitted = user::decide(&state, &command, now).unwrap();
        assert!(!emitted.is_empty(), "{command:?} emitted nothing");
        state = emitted.iter().fold(state, user::evolve);
        events.extend(emitted.into_iter().map(Event::User));
        now += sec;
    }
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::User(user::Event::MailboxLockedOut { .. }))),
        "the wrong PINs lock the mailbox"
    );
    events
}

/// A patch setting every rule, with every kind of target.
fn forwarding_patch_of_every_kind() -> ForwardingPatch {
    let alice = UserAddress::parse("alice@example.com").unwrap();
    let target = |t: &str| Some(Some(ForwardTarget::parse(t, &alice).unwrap()));
    ForwardingPatch {
        always: target("+4930123456"),
        busy: target("bob@other.example"),
        no_answer: target("voicemail"),
        no_answer_after_secs: Some(300),
        unavailable: target("group:sales"),
        when: RuleTimesPatch {
            always: Some(Some(
                TimeCondition::parse("outside mon-fri 09:00-17:00; holidays 2026-12-25").unwrap(),
            )),
            busy: Some(Some(
                TimeCondition::parse("inside sat,sun 00:00-24:00").unwrap(),
            )),
            no_answer: None,
            unavailable: Some(None),
        },
        clear: false,
        follow_me: Some(Some(dialtone_domain::forwarding::FollowMePatch {
            targets: Some(vec![
                ForwardTarget::parse("bob", &alice).unwrap(),
                ForwardTarget::parse("carol@other.example", &alice).unwrap(),
            ]),
            after_secs: Some(0),
            sequential: Some(true),
            ring_secs: Some(300),
        })),
    }
}

/// Call-leg and presence events produced by `decide` for `created`,
/// covering every call variant, cause and hang-up side.
fn call_events_from_decide(created: &User) -> Vec<Event> {
    use user::Command as C;
    let sec = 1_000_000;
    let step = |s: CallStep| C::Call(Box::new(s));
    let start = |call_id: &str, direction| {
        step(CallStep::Start {
            call_id: call_id.to_owned(),
            direction,
            from: "alice@example.com".to_owned(),
            to: "bob@example.com".to_owned(),
            sip_call_id: format!("{call_id}@192.0.2.10"),
        })
    };
    let mut commands = vec![
        start("6f1c2b8e-5d7a-4c3e-9a41-2f0d8b6e1c57", Direction::Inbound),
        step(CallStep::Ringing {
            call_id: "6f1c2b8e-5d7a-4c3e-9a41-2f0d8b6e1c57".to_owned(),
        }),
        step(CallStep::Answer {
            call_id: "6f1c2b8e-5d7a-4c3e-9a41-2f0d8b6e1c57".to_owned(),
            contact: "sip:alice@192.0.2.10:5060".to_owned(),
        }),
        step(CallStep::End {
            call_id: "6f1c2b8e-5d7a-4c3e-9a41-2f0d8b6e1c57".to_owned(),
            cause: Cause::NormalClearing,
            side: HangupSide::Callee,
        }),
    ];
    let sides = [HangupSide::Caller, HangupSide::Callee, HangupSide::System];
    for (i, cause) in Cause::ALL.into_iter().enumerate() {
        let call_id = format!("call-{i}");
        commands.push(start(&call_id, Direction::Outbound));
        commands.push(if i % 2 == 0 {
            step(CallStep::End {
                call_id,
                cause,
                side: sides[i % 3],
            })
        } else {
            step(CallStep::Fail {
                call_id,
                sip_status: if i == 1 { 0 } else { 400 + i as u16 },
                cause,
            })
        });
    }
    commands.push(start("skips", Direction::Inbound));
    for (i, why) in SkipReason::ALL.into_iter().enumerate() {
        commands.push(step(CallStep::ForwardSkipped {
            call_id: "skips".to_owned(),
            to: if i % 2 == 0 {
                "carol@example.com".to_owned()
            } else {
                "+15551234567".to_owned()
            },
            rule: ForwardReason::ALL[i % ForwardReason::ALL.len()],
            why,
        }));
    }
    for (i, reason) in ForwardReason::ALL.into_iter().enumerate() {
        let call_id = format!("forwarded-{i}");
        commands.push(start(&call_id, Direction::Inbound));
        commands.push(step(CallStep::Forward {
            call_id,
            to: "carol@example.com".to_owned(),
            reason,
        }));
    }
    commands.push(start("transferred", Direction::Outbound));
    for (i, kind) in TransferKind::ALL.into_iter().enumerate() {
        commands.push(step(CallStep::Transferred {
            call_id: "transferred".to_owned(),
            new_call_id: format!("new-{i}"),
            transferor: "alice@example.com".to_owned(),
            transferee: "bob@example.com".to_owned(),
            target: "carol@example.com".to_owned(),
            kind,
            replaced_call_id: (kind == TransferKind::Attended).then(|| "consult".to_owned()),
        }));
    }
    let mut state = created.clone();
    let mut now = T0 + 10_000 * sec;
    let mut events = Vec::new();
    for command in commands {
        let emitted = user::decide(&state, &command, now).unwrap();
        assert!(!emitted.is_empty(), "{command:?} emitted nothing");
        state = emitted.iter().fold(state, user::evolve);
        events.extend(emitted.into_iter().map(Event::User));
        now += sec;
    }
    events
}

/// Registration and presence events produced by `decide` for `created` (an
/// enabled user with the default max_contacts), covering every variant.
fn registration_events_from_decide(created: &User) -> Vec<Event> {
    use user::Command as C;
    let sec = 1_000_000;
    let contact = |uri: &str, expires_secs, q, params: &str| ContactChange {
        reg_id: None,
        nat: false,
        uri: uri.to_owned(),
        expires_secs,
        q,
        params: params.to_owned(),
    };
    let register = |call_id: &str, cseq, changes, remove_all, user_agent: Option<&str>| {
        C::Register(Box::new(Register {
            call_id: call_id.to_owned(),
            cseq,
            changes,
            remove_all,
            source: "192.0.2.10:5060".to_owned(),
            transport: "TCP".to_owned(),
            user_agent: user_agent.map(str::to_owned),
        }))
    };
    let instance = ";+sip.instance=\"<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>\";reg-id=1";
    let desk = "sip:alice@192.0.2.10:5060";
    let mobile = "sip:alice@198.51.100.7:40123;transport=tcp";
    let commands = [
        register(
            "reg-1@192.0.2.10",
            1,
            vec![
                contact(desk, 3600, Some(1000), ""),
                contact(mobile, 60, None, instance),
            ],
            false,
            Some("Yealink SIP-T46U 66.86.0.15"),
        ),
        register(
            "reg-1@192.0.2.10",
            2,
            vec![contact(desk, 600, Some(0), "")],
            false,
            None,
        ),
        register(
            "other",
            1,
            vec![contact("sip:x@10.1.1.1", 0, None, instance)],
            false,
            None,
        ),
        C::Update {
            patch: Patch {
                max_contacts: Some(1),
                ..Patch::default()
            },
        },
        register(
            "laptop",
            u32::MAX,
            vec![contact(mobile, 30, None, "")],
            false,
            None,
        ),
        C::ExpireContacts,
        register("again", 0, vec![contact(desk, 60, None, "")], false, None),
        register("again", 1, vec![], true, None),
        register("again", 2, vec![contact(desk, 60, None, "")], false, None),
        C::Update {
            patch: Patch {
                enabled: Some(false),
                ..Patch::default()
            },
        },
        C::Update {
            patch: Patch {
                enabled: Some(true),
                ..Patch::default()
            },
        },
        register("again", 3, vec![contact(desk, 60, None, "")], false, None),
        C::Delete { reason: None },
    ];
    let mut state = created.clone();
    let mut now = T0 + 100 * sec;
    let mut events = Vec::new();
    for command in commands {
        if matches!(command, C::ExpireContacts) {
            now += 3600 * sec;
        }
        let emitted = user::decide(&state, &command, now).unwrap();
        assert!(!emitted.is_empty(), "{command:?} emitted nothing");
        state = emitted.iter().fold(state, user::evolve);
        events.extend(emitted.into_iter().map(Event::User));
        now += sec;
    }
    events
}

fn binding(instance: Option<&str>) -> Binding {
    Binding {
        reg_id: None,
        nat: false,
        uri: "sip:alice@[2001:db8::1]:5060;transport=tls;ob".to_owned(),
        params: instance
            .map(|i| format!(";+sip.instance=\"{i}\";reg-id=1;expires=3600"))
            .unwrap_or_default(),
        q: Some(user::MAX_MAX_CONTACTS as u16 * 10),
        instance: instance.map(str::to_owned),
        call_id: "a84b4c76e66710@pc33.atlanta.example.com".to_owned(),
        cseq: u32::MAX,
        source: "[2001:db8::1]:5060".to_owned(),
        transport: "TLS".to_owned(),
        user_agent: Some("Zoiper rv2.10 \"quoted\" ✓".to_owned()),
        registered_at: T0,
        refreshed_at: T0 + 1,
        expires_at: i64::MAX,
    }
}

/// Hand-made events of every variant, with values on the edges of what is
/// allowed.
fn hand_made_events() -> Vec<Event> {
    let mut events = hand_made_events_before_trunks();
    events.extend(hand_made_trunk_events());
    events
}

fn hand_made_events_before_trunks() -> Vec<Event> {
    use domain::Event as D;
    use user::Event as U;
    let longest_domain = dn(&format!(
        "{}.{}.{}.{}",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(61)
    ));
    assert_eq!(longest_domain.as_str().len(), DomainName::MAX_LEN);
    let odd_user = un("%41lice.o'neil+1(x)~*!&=$,;?/_-");
    let longest_user = un(&"z".repeat(UserName::MAX_LEN));
    let nil = UserId(Uuid::nil());
    let max = UserId(Uuid::max());
    vec![
        D::DomainCreated {
            domain_id: DomainId::for_name(&longest_domain),
            name: longest_domain.clone(),
            settings: Settings {
                description: "é".repeat(Settings::MAX_DESCRIPTION_LEN),
                allow_cross_domain_calls: true,
                digest_algorithms: domain::DigestAlgorithms::new(&[
                    domain::DigestAlgorithm::Md5,
                    domain::DigestAlgorithm::Sha256,
                ])
                .unwrap(),
                time_zone: TimeZone::parse("America/Argentina/ComodRivadavia").unwrap(),
                feature_codes: dialtone_domain::feature_codes::FeatureCodes {
                    enabled: false,
                    forward_always: "#*123456".into(),
                    forwarding_off: "*0".into(),
                    dnd_on: "##".into(),
                    dnd_off: "*1#".into(),
                    voicemail_own: "#*#*#*#*".into(),
                    voicemail_any: "*2".into(),
                },
            },
            created_at: 0,
        }
        .into(),
        D::DomainCreated {
            domain_id: DomainId(Uuid::nil()),
            name: dn("pbx"),
            settings: Settings::default(),
            created_at: i64::MAX,
        }
        .into(),
        D::DomainCreated {
            domain_id: DomainId::for_name(&dn("1.example.com")),
            name: dn("1-2.3com"),
            settings: Settings::default(),
            created_at: T0,
        }
        .into(),
        D::DomainUpdated {
            settings: Settings {
                feature_codes: dialtone_domain::feature_codes::FeatureCodes {
                    enabled: true,
                    forward_always: "*72".into(),
                    forwarding_off: "*73".into(),
                    dnd_on: "*78".into(),
                    dnd_off: "*1#".into(),
                    voicemail_own: "#*#*#*#*".into(),
                    voicemail_any: "*98".into(),
                },
                ..Settings::default()
            },
        }
        .into(),
        D::DomainUpdated {
            settings: Settings::default(),
        }
        .into(),
        D::DomainSuspended { reason: None }.into(),
        D::DomainSuspended {
            reason: Some(String::new()),
        }
        .into(),
        D::DomainSuspended {
            reason: Some("ß".repeat(256)),
        }
        .into(),
        D::DomainResumed {}.into(),
        D::DomainDeleted {}.into(),
        D::UserNameClaimed {
            username: odd_user.clone(),
            user_id: nil,
        }
        .into(),
        D::UserNameClaimed {
            username: longest_user.clone(),
            user_id: max,
        }
        .into(),
        D::UserNameReleased {
            username: odd_user.clone(),
            user_id: max,
        }
        .into(),
        D::UserNameReleased {
            username: un("1"),
            user_id: nil,
        }
        .into(),
        D::SourceLockedOut {
            source: "2001:db8::1".into(),
            scope: domain::LockoutScope::User,
            username: Some("ß".repeat(64)),
            failures: 5,
            locked_at: 0,
            locked_until: 300_000_000,
        }
        .into(),
        D::RingGroupCreated {
            name: UserName::parse("sales").unwrap(),
            group: Box::new(
                dialtone_domain::ring_group::RingGroupPatch {
                    members: Some(vec![
                        dialtone_domain::ring_group::Member::parse("alice").unwrap(),
                        dialtone_domain::ring_group::Member::parse("bob:15").unwrap(),
                    ]),
                    strategy: Some(dialtone_domain::ring_group::Strategy::RoundRobin),
                    forwarding: ForwardingPatch {
                        no_answer_after_secs: None,
                        follow_me: None,
                        unavailable: Some(Some(
                            ForwardTarget::parse(
                                "group:support",
                                &UserAddress::parse("sales@example.com").unwrap(),
                            )
                            .unwrap(),
                        )),
                        ..forwarding_patch_of_every_kind()
                    },
                    ..Default::default()
                }
                .apply(None, &UserAddress::parse("sales@example.com").unwrap())
                .unwrap(),
            ),
        }
        .into(),
        D::RingGroupUpdated {
            name: UserName::parse("support").unwrap(),
            group: Box::new(
                dialtone_domain::ring_group::RingGroupPatch {
                    members: Some(vec![
                        dialtone_domain::ring_group::Member::parse("carol").unwrap()
                    ]),
                    strategy: Some(dialtone_domain::ring_group::Strategy::LongestIdle),
                    skip_busy: Some(false),
                    ..Default::default()
                }
                .apply(None, &UserAddress::parse("support@example.com").unwrap())
                .unwrap(),
            ),
        }
        .into(),
        D::RingGroupDeleted {
            name: UserName::parse("sales").unwrap(),
        }
        .into(),
        D::SourceLockedOut {
            source: "192.0.2.1".into(),
            scope: domain::LockoutScope::Source,
            username: None,
            failures: u32::MAX,
            locked_at: i64::MAX - 1,
            locked_until: i64::MAX,
        }
        .into(),
        U::UserCreated {
            user_id: max,
            domain_id: DomainId::for_name(&longest_domain),
            domain: longest_domain,
            username: longest_user,
            display_name: "x".repeat(user::MAX_DISPLAY_NAME_LEN),
            caller_id: "1".repeat(user::MAX_CALLER_ID_LEN),
            max_contacts: 1,
            enabled: false,
            credentials: credentials("edge of the world", 0),
            created_at: 0,
        }
        .into(),
        U::UserCreated {
            user_id: nil,
            domain_id: DomainId(Uuid::nil()),
            domain: dn("pbx"),
            username: odd_user,
            display_name: String::new(),
            caller_id: String::new(),
            max_contacts: user::MAX_MAX_CONTACTS,
            enabled: true,
            credentials: credentials("another password", i64::MAX),
            created_at: i64::MAX,
        }
        .into(),
        U::PasswordChanged {
            credentials: credentials("a new password", T0),
        }
        .into(),
        U::UserUpdated {
            display_name: "Ådmin «the» 管理员".to_owned(),
            caller_id: "*31#".to_owned(),
            max_contacts: 7,
        }
        .into(),
        U::UserUpdated {
            display_name: String::new(),
            caller_id: "+1".to_owned(),
            max_contacts: 1,
        }
        .into(),
        U::UserEnabled {}.into(),
        U::UserDisabled {}.into(),
        U::UserDeleted { reason: None }.into(),
        U::UserDeleted {
            reason: Some("x".repeat(user::MAX_REASON_LEN)),
        }
        .into(),
        U::ContactRegistered {
            binding: binding(Some("<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>")),
        }
        .into(),
        U::ContactRegistered {
            binding: Binding {
                reg_id: Some(1),
                nat: true,
                uri: "x".to_owned(),
                params: String::new(),
                q: Some(0),
                instance: None,
                call_id: "1".to_owned(),
                cseq: 0,
                source: String::new(),
                transport: String::new(),
                user_agent: None,
                registered_at: 0,
                refreshed_at: 0,
                expires_at: 1,
            },
        }
        .into(),
        U::ContactRefreshed {
            reg_id: Some(1),
            nat: true,
            uri: "sip:alice@192.0.2.10".to_owned(),
            instance: Some("<urn:uuid:1>".to_owned()),
            call_id: "c".to_owned(),
            cseq: u32::MAX,
            source: "192.0.2.10:5060".to_owned(),
            transport: "UDP".to_owned(),
            user_agent: Some(String::new()),
            q: Some(1000),
            params: ";+sip.instance=\"<urn:uuid:1>\"".to_owned(),
            refreshed_at: T0,
            expires_at: T0 + 1,
        }
        .into(),
        U::ContactRefreshed {
            reg_id: None,
            nat: false,
            uri: "sip:alice@192.0.2.10".to_owned(),
            instance: None,
            call_id: "c".to_owned(),
            cseq: 0,
            source: String::new(),
            transport: String::new(),
            user_agent: None,
            q: None,
            params: String::new(),
            refreshed_at: 0,
            expires_at: i64::MAX,
        }
        .into(),
        U::ContactRemoved {
            reg_id: Some(2),
            uri: "sip:alice@192.0.2.10".to_owned(),
            instance: None,
            reason: "unregistered".to_owned(),
        }
        .into(),
        U::ContactRemoved {
            reg_id: None,
            uri: "sip:alice@192.0.2.10".to_owned(),
            instance: Some("<urn:uuid:1>".to_owned()),
            reason: "user_disabled".to_owned(),
        }
        .into(),
        U::ContactRemoved {
            reg_id: None,
            uri: "s".to_owned(),
            instance: None,
            reason: "user_deleted".to_owned(),
        }
        .into(),
        U::ContactExpired {
            reg_id: None,
            uri: "sip:alice@192.0.2.10".to_owned(),
            instance: None,
            expired_at: T0,
        }
        .into(),
        U::ContactExpired {
            reg_id: None,
            uri: "sip:alice@192.0.2.10".to_owned(),
            instance: Some("<urn:uuid:1>".to_owned()),
            expired_at: 0,
        }
        .into(),
        U::ContactReplaced {
            reg_id: None,
            uri: "sip:alice@192.0.2.10".to_owned(),
            instance: None,
            replaced_by: "sip:alice@192.0.2.11".to_owned(),
        }
        .into(),
        U::ContactReplaced {
            reg_id: None,
            uri: "sip:alice@192.0.2.10".to_owned(),
            instance: Some("<urn:uuid:1>".to_owned()),
            replaced_by: "sips:alice@example.com".to_owned(),
        }
        .into(),
        U::PresenceChanged {
            presence: Presence::Online,
            previous: Presence::Offline,
        }
        .into(),
        U::PresenceChanged {
            presence: Presence::OnCall,
            previous: Presence::Ringing,
        }
        .into(),
        U::PresenceChanged {
            presence: Presence::Offline,
            previous: Presence::Dnd,
        }
        .into(),
        U::ForwardingChanged {
            forwarding: Box::new(
                forwarding_patch_of_every_kind()
                    .apply(
                        &Forwarding::default(),
                        &UserAddress::parse("alice@example.com").unwrap(),
                    )
                    .unwrap(),
            ),
        }
        .into(),
        U::ForwardingChanged {
            forwarding: Box::default(),
        }
        .into(),
        U::DndChanged { dnd: true }.into(),
        U::CallStarted {
            call_id: "6f1c2b8e-5d7a-4c3e-9a41-2f0d8b6e1c57".to_owned(),
            direction: Direction::Outbound,
            from: "%41lice@pbx".to_owned(),
            to: "+4930123456@example.com".to_owned(),
            sip_call_id: "a84b4c76e66710@pc33.atlanta.example.com".to_owned(),
            started_at: 0,
        }
        .into(),
        U::CallStarted {
            call_id: "x".repeat(1024),
            direction: Direction::Inbound,
            from: "é".repeat(1024),
            to: "b@c".to_owned(),
            sip_call_id: "1".to_owned(),
            started_at: i64::MAX,
        }
        .into(),
        U::CallRinging {
            call_id: "c".to_owned(),
        }
        .into(),
        U::CallAnswered {
            call_id: "c".to_owned(),
            contact: String::new(),
            answered_at: T0,
        }
        .into(),
        U::CallAnswered {
            call_id: "c".to_owned(),
            contact: "sip:bob@[2001:db8::1]:5060;transport=tls;ob".to_owned(),
            answered_at: 0,
        }
        .into(),
        U::CallEnded {
            call_id: "c".to_owned(),
            cause: Cause::NodeRestart,
            hangup_side: HangupSide::System,
            duration_ms: 0,
            ended_at: T0,
        }
        .into(),
        U::CallEnded {
            call_id: "c".to_owned(),
            cause: Cause::NormalClearing,
            hangup_side: HangupSide::Caller,
            duration_ms: u64::MAX,
            ended_at: i64::MAX,
        }
        .into(),
        U::CallFailed {
            call_id: "c".to_owned(),
            sip_status: 0,
            cause: Cause::NodeRestart,
            failed_at: T0,
        }
        .into(),
        U::CallFailed {
            call_id: "c".to_owned(),
            sip_status: 699,
            cause: Cause::CallRejected,
            failed_at: 0,
        }
        .into(),
        U::CallForwarded {
            call_id: "c".to_owned(),
            to: "bob@a.example".to_owned(),
            reason: ForwardReason::NoAnswer,
            forwarded_at: T0,
        }
        .into(),
        U::CallForwarded {
            call_id: "c".to_owned(),
            to: "b@b.example".to_owned(),
            reason: ForwardReason::DoNotDisturb,
            forwarded_at: 0,
        }
        .into(),
        U::CallForwardSkipped {
            call_id: "c".to_owned(),
            to: "voicemail:b@b.example".to_owned(),
            rule: ForwardReason::NoAnswer,
            why: SkipReason::NotRoutable,
        }
        .into(),
        U::CallTransferred {
            call_id: "c".to_owned(),
            new_call_id: "n".to_owned(),
            transferor: "a@a.example".to_owned(),
            transferee: "b@a.example".to_owned(),
            target: "c@a.example".to_owned(),
            kind: TransferKind::Attended,
            replaced_call_id: Some("r".repeat(1024)),
            transferred_at: i64::MAX,
        }
        .into(),
        U::CallTransferred {
            call_id: "c".to_owned(),
            new_call_id: "n".to_owned(),
            transferor: "a@a.example".to_owned(),
            transferee: "b@a.example".to_owned(),
            target: "c@a.example".to_owned(),
            kind: TransferKind::Blind,
            replaced_call_id: None,
            transferred_at: 0,
        }
        .into(),
        U::MailboxConfigured {
            enabled: true,
            settings: mailbox::Settings {
                max_message_ms: mailbox::MAX_MAX_MESSAGE_MS,
                max_messages: mailbox::MAX_MAX_MESSAGES,
                pin_from_own_phone: true,
                unsolicited_mwi: true,
            },
        }
        .into(),
        U::MailboxConfigured {
            enabled: false,
            settings: mailbox::Settings {
                max_message_ms: mailbox::MIN_MAX_MESSAGE_MS,
                max_messages: 1,
                pin_from_own_phone: false,
                unsolicited_mwi: false,
            },
        }
        .into(),
        U::MailboxPinChanged {
            pin: PinHash::derive("0000", [0; 16]).unwrap(),
        }
        .into(),
        U::MailboxPinChanged {
            pin: PinHash::derive(&"9".repeat(mailbox::MAX_PIN_DIGITS), [0xff; 16]).unwrap(),
        }
        .into(),
        U::MailboxPinAccepted {}.into(),
        U::MailboxPinRejected { attempts: 1 }.into(),
        U::MailboxPinRejected { attempts: u32::MAX }.into(),
        U::MailboxLockedOut {
            attempts: mailbox::PIN_ATTEMPTS_BEFORE_LOCKOUT,
            locked_until: T0 + mailbox::PIN_LOCKOUT_US,
        }
        .into(),
        U::MailboxLockedOut {
            attempts: u32::MAX,
            locked_until: i64::MAX,
        }
        .into(),
        U::VoicemailLeft {
            message_id: audio_id(0xab),
            from: "bob@example.com".to_owned(),
            duration_ms: mailbox::MIN_MESSAGE_MS,
            left_at: T0,
        }
        .into(),
        U::VoicemailLeft {
            message_id: AudioId::parse("vm-00000000000000000000000000000000").unwrap(),
            // 256 bytes: the longest `from`.
            from: "é".repeat(mailbox::MAX_FROM_LEN / 2),
            duration_ms: mailbox::MAX_MAX_MESSAGE_MS + 1_000,
            left_at: i64::MAX,
        }
        .into(),
        U::VoicemailLeft {
            message_id: AudioId::parse("vm-ffffffffffffffffffffffffffffffff").unwrap(),
            from: String::new(),
            duration_ms: mailbox::MIN_MESSAGE_MS,
            left_at: 0,
        }
        .into(),
        U::VoicemailRefused {
            from: "+15551234567@example.com".to_owned(),
            reason: RefusalReason::MailboxFull,
            refused_at: T0,
        }
        .into(),
        U::VoicemailRefused {
            from: String::new(),
            reason: RefusalReason::MailboxDisabled,
            refused_at: 0,
        }
        .into(),
        U::VoicemailRead {
            message_id: audio_id(1),
            read_at: T0,
        }
        .into(),
        U::VoicemailDeleted {
            message_id: audio_id(1),
            deleted_at: i64::MAX,
        }
        .into(),
        U::GreetingChanged {
            greeting: Some(Greeting {
                audio: audio_id(9),
                duration_ms: 4_000,
            }),
            changed_at: T0,
        }
        .into(),
        U::GreetingChanged {
            greeting: Some(Greeting {
                audio: audio_id(0),
                duration_ms: u32::MAX,
            }),
            changed_at: 0,
        }
        .into(),
        U::GreetingChanged {
            greeting: None,
            changed_at: i64::MAX,
        }
        .into(),
        token::Event::TokenCreated {
            token_id: Uuid::max(),
            scope: Scope::Domain(dn("a.example")),
            secret_sha256: HASH.into(),
            description: "é".repeat(token::MAX_DESCRIPTION_LEN),
            created_at: 0,
        }
        .into(),
        token::Event::TokenRevoked {
            token_id: Uuid::nil(),
            revoked_at: i64::MAX,
        }
        .into(),
    ]
    .into_iter()
    .chain(hand_made_conference_events())
    .collect()
}

/// Conference rooms and conferences at the edges of their fields.
fn hand_made_conference_events() -> Vec<Event> {
    use conference::Event as C;
    use domain::Event as D;
    let participant = ParticipantId(Uuid::max());
    let room = Room {
        pin: Some(PinHash::derive("000000000000", [0xff; 16]).unwrap()),
        moderator_pin: Some(PinHash::derive("0000", [0; 16]).unwrap()),
        max_participants: 2,
        wait_for_moderator: true,
        end_with_moderator: true,
        tones: false,
        record: true,
        muted_on_entry: true,
    };
    vec![
        D::ConferenceRoomCreated {
            name: un("x%41y"),
            room: Box::new(room.clone()),
        }
        .into(),
        D::ConferenceRoomUpdated {
            name: un(&"r".repeat(64)),
            room: Box::new(Room {
                max_participants: 1_000,
                ..Room::default()
            }),
        }
        .into(),
        D::ConferenceRoomDeleted { name: un("9") }.into(),
        D::ConferencePinRejected {
            name: un("standup"),
            caller: "2001:db8::7".into(),
            authenticated: false,
            strikes: Strikes {
                failures: 0,
                last_failure_at: T0,
                locked_until: Some(T0 + 900_000_000),
                lockouts: 1,
            },
            room_strikes: Some(Strikes {
                failures: u32::MAX,
                last_failure_at: i64::MAX,
                locked_until: None,
                lockouts: u32::MAX,
            }),
            rejected_at: T0,
        }
        .into(),
        D::ConferencePinRejected {
            name: un("standup"),
            caller: "ß".repeat(256),
            authenticated: true,
            strikes: Strikes::default(),
            room_strikes: None,
            rejected_at: 0,
        }
        .into(),
        D::ConferencePinAccepted {
            name: un("x%41y"),
            caller: "alice@example.com".into(),
        }
        .into(),
        D::ConferencePinLockoutsCleared {
            name: un("standup"),
            caller: None,
            cleared_at: 0,
        }
        .into(),
        D::ConferencePinLockoutsCleared {
            name: un("standup"),
            caller: Some("192.0.2.1".into()),
            cleared_at: i64::MAX,
        }
        .into(),
        C::ConferenceStarted {
            domain_id: DomainId(Uuid::nil()),
            room: un("standup"),
            max_participants: 1_000,
            end_with_moderator: false,
            muted_on_entry: true,
            started_at: 0,
        }
        .into(),
        C::ParticipantJoined {
            participant,
            caller: "é".repeat(conference::MAX_CALLER_LEN),
            moderator: true,
            muted: false,
            joined_at: i64::MAX,
        }
        .into(),
        C::ParticipantJoined {
            participant: ParticipantId(Uuid::nil()),
            caller: String::new(),
            moderator: false,
            muted: true,
            joined_at: 0,
        }
        .into(),
        C::ParticipantLeft {
            participant,
            reason: LeaveReason::WrongPin,
            caller: Some("\"quoted\" <sip:x@y>".into()),
            left_at: 0,
        }
        .into(),
        C::ParticipantMuted {
            participant,
            muted_at: 0,
        }
        .into(),
        C::ParticipantUnmuted {
            participant,
            unmuted_at: i64::MAX,
        }
        .into(),
        C::ParticipantTalking {
            participant,
            talking: false,
            changed_at: 1,
        }
        .into(),
        C::ConferenceLocked { locked_at: 0 }.into(),
        C::ConferenceUnlocked {
            unlocked_at: i64::MAX,
        }
        .into(),
        C::ConferenceRecordingStarted {
            audio: audio_id(0xff),
            started_at: 0,
        }
        .into(),
        C::ConferenceRecordingStopped {
            audio: audio_id(0),
            duration_ms: u32::MAX,
            stopped_at: 0,
        }
        .into(),
        C::ConferenceRecordingRequested {
            action: RecordingAction::Start,
            requested_at: 0,
        }
        .into(),
        C::ConferenceRecordingRequested {
            action: RecordingAction::Stop,
            requested_at: i64::MAX,
        }
        .into(),
    ]
    .into_iter()
    .chain(EndReason::ALL.into_iter().map(|reason| {
        C::ConferenceEnded {
            reason,
            ended_at: T0,
        }
        .into()
    }))
    .chain(LeaveReason::ALL.into_iter().map(|reason| {
        C::ParticipantLeft {
            participant,
            reason,
            caller: None,
            left_at: T0,
        }
        .into()
    }))
    .collect()
}

/// Events produced by `decide`, covering every conference variant.
fn conference_events_from_decide() -> Vec<Event> {
    use conference::Command as C;
    let p = |n: u128| ParticipantId(Uuid::from_u128(n));
    let commands = [
        C::Start(conference::Start {
            domain_id: DomainId::for_name(&dn("example.com")),
            room: un("standup"),
            max_participants: 3,
            end_with_moderator: true,
            muted_on_entry: true,
        }),
        C::Join {
            participant: p(1),
            caller: "alice@example.com".into(),
            moderator: true,
        },
        C::Join {
            participant: p(2),
            caller: "bob@example.com".into(),
            moderator: false,
        },
        C::TurnAway {
            participant: p(3),
            caller: "mallory@example.com".into(),
            reason: LeaveReason::WrongPin,
        },
        C::Unmute { participant: p(2) },
        C::Talking {
            participant: p(2),
            on: true,
        },
        C::Mute { participant: p(2) },
        C::Lock,
        C::Unlock,
        C::RequestRecording {
            action: RecordingAction::Start,
        },
        C::StartRecording { audio: audio_id(7) },
        C::RequestRecording {
            action: RecordingAction::Stop,
        },
        C::StopRecording {
            duration_ms: 12_345,
        },
        C::StartRecording { audio: audio_id(8) },
        C::Join {
            participant: p(4),
            caller: "carol@example.com".into(),
            moderator: false,
        },
        C::Kick { participant: p(4) },
        C::Leave {
            participant: p(1),
            reason: LeaveReason::HungUp,
        },
    ];
    let mut state = Conference::default();
    let mut events = Vec::new();
    for (i, command) in commands.iter().enumerate() {
        let emitted = conference::decide(&state, command, T0 + i as i64).unwrap();
        assert!(!emitted.is_empty(), "{command:?} emitted nothing");
        state = emitted.iter().fold(state, conference::evolve);
        events.extend(emitted.into_iter().map(Event::Conference));
    }
    assert_eq!(state.status, conference::Status::Ended);
    events
}

#[test]
fn malformed_conference_values_are_rejected() {
    for bad in [json!(0), json!(1), json!(1_001), json!("50"), json!(null)] {
        assert_rejected(
            "ConferenceRoomCreated",
            with(
                sample("ConferenceRoomCreated"),
                "/room/max_participants",
                bad.clone(),
            ),
        );
        assert_rejected(
            "ConferenceStarted",
            with(sample("ConferenceStarted"), "/max_participants", bad),
        );
    }
    for bad in [json!("2468"), json!("sha256$00$11"), json!(""), json!(2468)] {
        assert_rejected(
            "ConferenceRoomUpdated",
            with(sample("ConferenceRoomCreated"), "/room/pin", bad.clone()),
        );
        assert_rejected(
            "ConferenceRoomCreated",
            with(sample("ConferenceRoomCreated"), "/room/moderator_pin", bad),
        );
    }
    for bad in [json!("left"), json!("HUNG_UP"), json!(null), json!(3)] {
        assert_rejected(
            "ParticipantLeft",
            with(sample("ParticipantLeft"), "/reason", bad),
        );
    }
    for bad in [json!("ended"), json!("timeout"), json!("")] {
        assert_rejected(
            "ConferenceEnded",
            with(sample("ConferenceEnded"), "/reason", bad),
        );
    }
    assert_rejected(
        "ParticipantJoined",
        with(sample("ParticipantJoined"), "/caller", json!("a\u{0007}b")),
    );
    assert_rejected(
        "ParticipantJoined",
        with(
            sample("ParticipantJoined"),
            "/caller",
            json!("x".repeat(257)),
        ),
    );
    assert_rejected(
        "ConferenceRecordingStarted",
        with(
            sample("ConferenceRecordingStarted"),
            "/audio",
            json!("vm-12"),
        ),
    );
    assert_rejected(
        "ConferenceRecordingStopped",
        with(
            sample("ConferenceRecordingStopped"),
            "/duration_ms",
            json!(-1),
        ),
    );
    assert_rejected(
        "ConferenceRecordingRequested",
        with(
            sample("ConferenceRecordingRequested"),
            "/action",
            json!("pause"),
        ),
    );
}

#[test]
fn the_room_pins_never_leave_the_node() {
    let samples = [domain_events_from_decide(), hand_made_events()].concat();
    let mut seen = 0;
    for event in &samples {
        let Event::Domain(
            domain::Event::ConferenceRoomCreated { room, .. }
            | domain::Event::ConferenceRoomUpdated { room, .. },
        ) = event
        else {
            continue;
        };
        seen += 1;
        let stored = event.to_data().unwrap();
        let data: Value = serde_json::from_str(&stored).unwrap();
        for (field, pin) in [("pin", &room.pin), ("moderator_pin", &room.moderator_pin)] {
            match pin {
                Some(pin) => assert_eq!(data["room"][field], json!(pin.as_str())),
                None => assert!(data["room"].get(field).is_none()),
            }
        }
        let shown = redact_secrets(event.event_type(), data).to_string();
        assert!(!shown.contains("sha256$"), "{shown}");
        assert!(!shown.contains("pin\""), "{shown}");
        assert!(!format!("{event:?}").contains("sha256$"));
    }
    assert!(seen >= 4, "{seen} room samples");
}

const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn token_events_from_decide() -> Vec<Event> {
    let commands = [
        token::Command::Create {
            token_id: Uuid::from_u128(1),
            scope: Scope::Admin,
            secret_sha256: HASH.into(),
            description: String::new(),
        },
        token::Command::Create {
            token_id: Uuid::from_u128(2),
            scope: Scope::Domain(dn("example.com")),
            secret_sha256: HASH.into(),
            description: "provisioning robot".into(),
        },
        token::Command::Revoke {
            token_id: Uuid::from_u128(2),
        },
    ];
    let mut state = Tokens::default();
    let mut events = Vec::new();
    for command in commands {
        let emitted = token::decide(&state, &command, T0).unwrap();
        state = emitted.iter().fold(state, token::evolve);
        events.extend(emitted.into_iter().map(Event::Token));
    }
    events
}

#[test]
fn events_from_decide_validate() {
    for event in domain_events_from_decide()
        .iter()
        .chain(&user_events_from_decide())
        .chain(&token_events_from_decide())
        .chain(&conference_events_from_decide())
        .chain(&trunk_events_from_decide())
    {
        assert_valid(event);
    }
}

#[test]
fn hand_made_events_validate() {
    for event in hand_made_events() {
        assert_valid(&event);
    }
}

/// The stored data cut out of the tagged serialisation is the same JSON as
/// the slower `Value` path gives (keys then come in field order instead of
/// sorted), for every sample of every event type.
#[test]
fn stored_data_is_the_same_as_through_a_value_tree() {
    let samples = [
        domain_events_from_decide(),
        user_events_from_decide(),
        token_events_from_decide(),
        conference_events_from_decide(),
        trunk_events_from_decide(),
        hand_made_events(),
    ]
    .concat();
    for event in &samples {
        let direct: Value = serde_json::from_str(&event.to_data().unwrap()).unwrap();
        let via_value: Value = serde_json::from_str(&event.to_data_via_value().unwrap()).unwrap();
        assert!(direct.is_object(), "{}", event.event_type());
        assert_eq!(direct, via_value, "{}", event.event_type());
    }
}

#[test]
fn samples_cover_every_event_type() {
    for (name, samples) in [
        (
            "decide",
            [
                domain_events_from_decide(),
                user_events_from_decide(),
                token_events_from_decide(),
                conference_events_from_decide(),
                trunk_events_from_decide(),
            ]
            .concat(),
        ),
        ("hand-made", hand_made_events()),
    ] {
        let covered: BTreeSet<&str> = samples.iter().map(Event::event_type).collect();
        let missing: Vec<&str> = EVENT_TYPES
            .iter()
            .map(|(t, _)| *t)
            .filter(|t| !covered.contains(t))
            .collect();
        assert!(missing.is_empty(), "{name} samples miss {missing:?}");
    }
}

// ================================================================ invalid

/// The stored data of a valid sample of `event_type`, to be broken.
fn sample(event_type: &str) -> Value {
    let event = hand_made_events()
        .into_iter()
        .find(|e| e.event_type() == event_type)
        .unwrap();
    serde_json::from_str(&event.to_data().unwrap()).unwrap()
}

fn with(mut data: Value, pointer: &str, value: Value) -> Value {
    let Some(slot) = data.pointer_mut(pointer) else {
        panic!("no {pointer} in the sample")
    };
    *slot = value;
    data
}

fn without(mut data: Value, field: &str) -> Value {
    data.as_object_mut().unwrap().remove(field).unwrap();
    data
}

fn with_extra(mut data: Value, pointer: &str, key: &str, value: Value) -> Value {
    data.pointer_mut(pointer)
        .unwrap()
        .as_object_mut()
        .unwrap()
        .insert(key.to_owned(), value);
    data
}

#[test]
fn extra_properties_are_rejected_at_every_level() {
    for (event_type, _) in EVENT_TYPES {
        assert_rejected(
            event_type,
            with_extra(sample(event_type), "", "extra", json!(1)),
        );
    }
    // The plaintext password has no place in any event.
    assert_rejected(
        "UserCreated",
        with_extra(sample("UserCreated"), "", "password", json!("x")),
    );
    assert_rejected(
        "UserCreated",
        with_extra(
            sample("UserCreated"),
            "/credentials",
            "password",
            json!("secret password"),
        ),
    );
    assert_rejected(
        "DomainCreated",
        with_extra(sample("DomainCreated"), "/settings", "colour", json!("red")),
    );
    assert_rejected(
        "ContactRegistered",
        with_extra(
            sample("ContactRegistered"),
            "/binding",
            "expires",
            json!(60),
        ),
    );
    assert_rejected(
        "MailboxConfigured",
        with_extra(
            sample("MailboxConfigured"),
            "/settings",
            "pin",
            json!("1234"),
        ),
    );
    assert_rejected(
        "GreetingChanged",
        with_extra(
            sample("GreetingChanged"),
            "/greeting",
            "audio_bytes",
            json!("UklGRg=="),
        ),
    );
    // Neither a message's nor a greeting's audio has a place in an event.
    assert_rejected(
        "VoicemailLeft",
        with_extra(sample("VoicemailLeft"), "", "audio", json!("UklGRg==")),
    );
}

#[test]
fn missing_required_fields_are_rejected() {
    for (event_type, field) in [
        ("DomainCreated", "domain_id"),
        ("DomainCreated", "created_at"),
        ("DomainUpdated", "settings"),
        ("UserNameClaimed", "user_id"),
        ("UserNameReleased", "username"),
        ("SourceLockedOut", "source"),
        ("SourceLockedOut", "locked_until"),
        ("RingGroupCreated", "group"),
        ("RingGroupUpdated", "name"),
        ("RingGroupDeleted", "name"),
        ("ConferenceRoomCreated", "room"),
        ("ConferenceRoomUpdated", "name"),
        ("ConferenceRoomDeleted", "name"),
        ("ConferencePinRejected", "strikes"),
        ("ConferencePinAccepted", "caller"),
        ("ConferencePinLockoutsCleared", "cleared_at"),
        ("ConferenceStarted", "domain_id"),
        ("ConferenceStarted", "max_participants"),
        ("ParticipantJoined", "caller"),
        ("ParticipantJoined", "moderator"),
        ("ParticipantLeft", "reason"),
        ("ParticipantMuted", "participant"),
        ("ParticipantUnmuted", "unmuted_at"),
        ("ParticipantTalking", "talking"),
        ("ConferenceLocked", "locked_at"),
        ("ConferenceUnlocked", "unlocked_at"),
        ("ConferenceRecordingStarted", "audio"),
        ("ConferenceRecordingStopped", "duration_ms"),
        ("ConferenceRecordingRequested", "action"),
        ("ConferenceEnded", "reason"),
        ("UserCreated", "credentials"),
        ("UserCreated", "enabled"),
        ("PasswordChanged", "credentials"),
        ("UserUpdated", "max_contacts"),
        ("ContactRegistered", "binding"),
        ("ContactRefreshed", "uri"),
        ("ContactRefreshed", "call_id"),
        ("ContactRefreshed", "cseq"),
        ("ContactRefreshed", "params"),
        ("ContactRefreshed", "expires_at"),
        ("ContactRemoved", "uri"),
        ("ContactRemoved", "reason"),
        ("ContactExpired", "expired_at"),
        ("ContactReplaced", "replaced_by"),
        ("PresenceChanged", "previous"),
        ("CallStarted", "direction"),
        ("CallStarted", "sip_call_id"),
        ("CallStarted", "started_at"),
        ("CallRinging", "call_id"),
        ("CallAnswered", "answered_at"),
        ("CallEnded", "cause"),
        ("CallEnded", "hangup_side"),
        ("CallEnded", "duration_ms"),
        ("CallFailed", "sip_status"),
        ("CallFailed", "failed_at"),
        ("CallForwarded", "to"),
        ("CallForwarded", "reason"),
        ("CallForwarded", "forwarded_at"),
        ("CallForwardSkipped", "to"),
        ("CallForwardSkipped", "rule"),
        ("CallForwardSkipped", "why"),
        ("CallTransferred", "new_call_id"),
        ("CallTransferred", "transferor"),
        ("CallTransferred", "transferee"),
        ("CallTransferred", "target"),
        ("CallTransferred", "kind"),
        ("CallTransferred", "transferred_at"),
        ("MailboxConfigured", "enabled"),
        ("MailboxConfigured", "settings"),
        ("MailboxPinChanged", "pin"),
        ("MailboxPinRejected", "attempts"),
        ("MailboxLockedOut", "attempts"),
        ("MailboxLockedOut", "locked_until"),
        ("VoicemailLeft", "message_id"),
        ("VoicemailLeft", "from"),
        ("VoicemailLeft", "duration_ms"),
        ("VoicemailLeft", "left_at"),
        ("VoicemailRefused", "from"),
        ("VoicemailRefused", "reason"),
        ("VoicemailRefused", "refused_at"),
        ("VoicemailRead", "message_id"),
        ("VoicemailRead", "read_at"),
        ("VoicemailDeleted", "message_id"),
        ("VoicemailDeleted", "deleted_at"),
        ("GreetingChanged", "changed_at"),
        ("TokenCreated", "secret_sha256"),
        ("TokenCreated", "scope"),
        ("TokenRevoked", "token_id"),
    ] {
        assert_rejected(event_type, without(sample(event_type), field));
    }
    let settings = without(sample("DomainCreated")["settings"].clone(), "md5_allowed");
    assert_rejected("DomainUpdated", json!({ "settings": settings }));
    for field in [
        "uri",
        "params",
        "call_id",
        "cseq",
        "source",
        "transport",
        "registered_at",
        "refreshed_at",
        "expires_at",
    ] {
        let binding = without(sample("ContactRegistered")["binding"].clone(), field);
        assert_rejected("ContactRegistered", json!({ "binding": binding }));
    }
    for field in [
        "max_message_ms",
        "max_messages",
        "pin_from_own_phone",
        "unsolicited_mwi",
    ] {
        let settings = without(sample("MailboxConfigured")["settings"].clone(), field);
        assert_rejected(
            "MailboxConfigured",
            json!({ "enabled": true, "settings": settings }),
        );
    }
    for field in ["audio", "duration_ms"] {
        let greeting = without(sample("GreetingChanged")["greeting"].clone(), field);
        assert_rejected(
            "GreetingChanged",
            json!({ "greeting": greeting, "changed_at": 0 }),
        );
    }
    let credentials = without(
        sample("PasswordChanged")["credentials"].clone(),
        "ha1_sha256",
    );
    assert_rejected("PasswordChanged", json!({ "credentials": credentials }));
}

#[test]
fn malformed_values_are_rejected() {
    let bad_uuids = [
        json!("not-a-uuid"),
        json!("1234"),
        json!("00000000-0000-0000-0000-00000000000g"),
        json!("00000000000000000000000000000000"),
        json!("{00000000-0000-0000-0000-000000000000}"),
        json!("6F1C2B8E-5D7A-4C3E-9A41-2F0D8B6E1C57"),
        json!(42),
        json!(null),
    ];
    for bad in &bad_uuids {
        assert_rejected(
            "ParticipantJoined",
            with(sample("ParticipantJoined"), "/participant", bad.clone()),
        );
        assert_rejected(
            "ConferenceStarted",
            with(sample("ConferenceStarted"), "/domain_id", bad.clone()),
        );
        assert_rejected(
            "DomainCreated",
            with(sample("DomainCreated"), "/domain_id", bad.clone()),
        );
        assert_rejected(
            "UserNameClaimed",
            with(sample("UserNameClaimed"), "/user_id", bad.clone()),
        );
        assert_rejected(
            "UserCreated",
            with(sample("UserCreated"), "/domain_id", bad.clone()),
        );
    }
    for bad in [
        json!(-1),
        json!(1.5),
        json!("1764150000000000"),
        json!(null),
    ] {
        assert_rejected(
            "DomainCreated",
            with(sample("DomainCreated"), "/created_at", bad.clone()),
        );
        assert_rejected(
            "PasswordChanged",
            with(
                sample("PasswordChanged"),
                "/credentials/set_at",
                bad.clone(),
            ),
        );
    }
    let md5 = "0123456789abcdef0123456789abcdef";
    let sha256 = md5.repeat(2);
    for bad in [
        &md5[1..],
        &format!("{md5}0"),
        &md5.to_uppercase(),
        &md5.replace('a', "g"),
        &sha256,
    ] {
        let data = with(
            sample("PasswordChanged"),
            "/credentials/ha1_md5",
            json!(bad),
        );
        assert_rejected("PasswordChanged", data);
    }
    for bad in [
        md5,
        &sha256[1..],
        &sha256.to_uppercase(),
        &format!(" {sha256}"),
    ] {
        let data = with(
            sample("PasswordChanged"),
            "/credentials/ha1_sha256",
            json!(bad),
        );
        assert_rejected("PasswordChanged", data);
    }
    for bad in [
        "",
        "Example.com",
        "example.com.",
        "1.2.3.4",
        "a..b",
        "-a.com",
        "a_b.com",
        "é.com",
    ] {
        assert_rejected(
            "DomainCreated",
            with(sample("DomainCreated"), "/name", json!(bad)),
        );
        assert_rejected(
            "UserCreated",
            with(sample("UserCreated"), "/domain", json!(bad)),
        );
    }
    let too_long = format!(
        "{}.{}.{}.{}",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(62)
    );
    assert_rejected(
        "DomainCreated",
        with(sample("DomainCreated"), "/name", json!(too_long)),
    );
    for bad in [
        "".to_owned(),
        "a b".into(),
        "a@b".into(),
        "%4".into(),
        "%zz".into(),
        "z".repeat(65),
    ] {
        assert_rejected(
            "UserNameClaimed",
            with(sample("UserNameClaimed"), "/username", json!(bad)),
        );
    }
    for bad in [json!(0), json!(101), json!(-1), json!(1.5), json!("10")] {
        assert_rejected(
            "UserUpdated",
            with(sample("UserUpdated"), "/max_contacts", bad),
        );
    }
    for bad in ["+", "abc", "+49 30", &"1".repeat(33)] {
        assert_rejected(
            "UserUpdated",
            with(sample("UserUpdated"), "/caller_id", json!(bad)),
        );
    }
    for bad in [
        "tab\there".to_owned(),
        "nul\u{0}".into(),
        "c1\u{85}".into(),
        "x".repeat(129),
    ] {
        assert_rejected(
            "UserUpdated",
            with(sample("UserUpdated"), "/display_name", json!(bad)),
        );
    }
    assert_rejected(
        "UserCreated",
        with(sample("UserCreated"), "/enabled", json!("true")),
    );
    assert_rejected("DomainSuspended", json!({ "reason": null }));
    assert_rejected("DomainSuspended", json!({ "reason": "x".repeat(257) }));
    assert_rejected("UserDeleted", json!({ "reason": 1 }));
    assert_rejected("DomainResumed", json!([]));
    assert_rejected("UserEnabled", json!(null));

    // Registration and presence.
    for bad in [json!(-1), json!(4_294_967_296_u64), json!(1.5), json!("1")] {
        assert_rejected(
            "ContactRefreshed",
            with(sample("ContactRefreshed"), "/cseq", bad.clone()),
        );
        assert_rejected(
            "ContactRegistered",
            with(sample("ContactRegistered"), "/binding/cseq", bad),
        );
    }
    for bad in [json!(1001), json!(-1), json!(0.5), json!(null)] {
        assert_rejected(
            "ContactRefreshed",
            with(sample("ContactRefreshed"), "/q", bad.clone()),
        );
        assert_rejected(
            "ContactRegistered",
            with(sample("ContactRegistered"), "/binding/q", bad),
        );
    }
    for bad in [json!(""), json!(null), json!(1)] {
        assert_rejected(
            "ContactRemoved",
            with(sample("ContactRemoved"), "/uri", bad.clone()),
        );
        assert_rejected(
            "ContactRegistered",
            with(sample("ContactRegistered"), "/binding/call_id", bad.clone()),
        );
        assert_rejected(
            "ContactReplaced",
            with_extra(sample("ContactReplaced"), "", "instance", bad),
        );
    }
    for bad in [json!(-1), json!("0"), json!(null)] {
        assert_rejected(
            "ContactExpired",
            with(sample("ContactExpired"), "/expired_at", bad.clone()),
        );
        assert_rejected(
            "ContactRegistered",
            with(sample("ContactRegistered"), "/binding/expires_at", bad),
        );
    }
    for bad in ["expired", "", "Unregistered"] {
        assert_rejected(
            "ContactRemoved",
            with(sample("ContactRemoved"), "/reason", json!(bad)),
        );
    }
    for bad in ["away", "OnCall", "on-call", "Online", ""] {
        assert_rejected(
            "PresenceChanged",
            with(sample("PresenceChanged"), "/presence", json!(bad)),
        );
    }
    assert_rejected(
        "ContactRegistered",
        with(
            sample("ContactRegistered"),
            "/binding/user_agent",
            json!(null),
        ),
    );
    for bad in ["NormalClearing", "busy", "", "node-restart"] {
        assert_rejected("CallEnded", with(sample("CallEnded"), "/cause", json!(bad)));
        assert_rejected(
            "CallFailed",
            with(sample("CallFailed"), "/cause", json!(bad)),
        );
    }
    for bad in ["no-answer", "busy", ""] {
        assert_rejected(
            "CallForwarded",
            with(sample("CallForwarded"), "/reason", json!(bad)),
        );
    }
    assert_rejected(
        "CallForwarded",
        with(sample("CallForwarded"), "/to", json!("")),
    );
    assert_rejected(
        "CallStarted",
        with(sample("CallStarted"), "/direction", json!("in")),
    );
    assert_rejected(
        "CallStarted",
        with(sample("CallStarted"), "/call_id", json!("")),
    );
    assert_rejected(
        "CallEnded",
        with(sample("CallEnded"), "/hangup_side", json!("both")),
    );
    assert_rejected(
        "CallEnded",
        with(sample("CallEnded"), "/duration_ms", json!(-1)),
    );
    for bad in [700, 200, 180, 1] {
        assert_rejected(
            "CallFailed",
            with(sample("CallFailed"), "/sip_status", json!(bad)),
        );
    }
}

/// Feature codes written before the voicemail codes existed (the
/// samples' custom codes without `voicemail_own` and `voicemail_any`): their
/// schema still accepts them and they read as `*97` and `*98`; malformed
/// voicemail codes are refused like the others.
#[test]
fn feature_codes_without_the_voicemail_codes_validate_and_read_as_the_defaults() {
    for event_type in ["DomainCreated", "DomainUpdated"] {
        let mut data = sample(event_type);
        let codes = data
            .pointer_mut("/settings/feature_codes")
            .unwrap()
            .as_object_mut()
            .unwrap();
        assert_eq!(codes["voicemail_own"], "#*#*#*#*");
        codes.remove("voicemail_own");
        codes.remove("voicemail_any");
        let errors = errors(event_type, &data);
        assert!(errors.is_empty(), "{data}: {errors:#?}");
        let event = Event::from_stored(
            event_type,
            current_schema_version(event_type),
            &data.to_string(),
        )
        .unwrap();
        let settings = match event {
            Event::Domain(domain::Event::DomainCreated { settings, .. })
            | Event::Domain(domain::Event::DomainUpdated { settings }) => settings,
            other => panic!("{other:?}"),
        };
        assert_eq!(settings.feature_codes.voicemail_own, "*97");
        assert_eq!(settings.feature_codes.voicemail_any, "*98");
        assert_eq!(settings.feature_codes.dnd_off, "*1#");

        for field in ["voicemail_own", "voicemail_any"] {
            let pointer = format!("/settings/feature_codes/{field}");
            for bad in [
                json!(""),
                json!("*9a"),
                json!("*123456789"),
                json!(97),
                json!(null),
            ] {
                assert_rejected(event_type, with(sample(event_type), &pointer, bad));
            }
        }
        assert_rejected(
            event_type,
            with_extra(
                sample(event_type),
                "/settings/feature_codes",
                "voicemail_other",
                json!("*99"),
            ),
        );
    }
}

// ================================================================ patterns

/// A tiny `UserNameClaimed` whose only variable part is the user name.
fn claim_with(username: &str) -> Value {
    json!({ "username": username, "user_id": "00000000-0000-0000-0000-000000000001" })
}

fn created_with(name: &str) -> Value {
    with(sample("DomainCreated"), "/name", json!(name))
}

/// A created user, to try display names and caller ids on.
static ALICE: LazyLock<User> = LazyLock::new(|| {
    let Event::User(created) = user_events_from_decide().remove(0) else {
        unreachable!()
    };
    user::evolve(User::default(), &created)
});

fn domain_name_candidate() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9.-]{1,20}",
        "[a-zA-Z0-9._ -]{1,12}",
        proptest::collection::vec("[a-z0-9-]{1,63}", 1..6).prop_map(|labels| labels.join(".")),
    ]
}

fn username_candidate() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9%._~!*'()&=+$,;?/@: <>\"-]{1,70}",
        "(%[0-9a-fA-Fg]{0,2}|[a-z]){1,10}",
        "\\PC{1,4}",
    ]
}

proptest! {
    /// The domain-name pattern accepts exactly the names `DomainName` writes.
    #[test]
    fn domain_name_schema_agrees_with_domain_name(s in domain_name_candidate()) {
        let written = DomainName::parse(&s).is_ok_and(|n| n.as_str() == s);
        prop_assert_eq!(validator("DomainCreated").is_valid(&created_with(&s)), written, "{:?}", s);
    }

    /// The user-name pattern accepts exactly the names `UserName` accepts.
    #[test]
    fn username_schema_agrees_with_user_name(s in username_candidate()) {
        let accepted = UserName::parse(&s).is_ok();
        prop_assert_eq!(validator("UserNameClaimed").is_valid(&claim_with(&s)), accepted, "{:?}", s);
    }

    /// The display-name and caller-id schemas accept exactly what an update
    /// accepts.
    #[test]
    fn user_field_schemas_agree_with_decide(
        display_name in prop_oneof!["\\PC{0,12}", "[\\x00-\\x{a0}]{0,4}", ".{120,130}"],
        caller_id in prop_oneof!["\\+?[0-9*#]{0,34}", "[0-9+*# a]{0,5}"],
    ) {
        let patch = Patch {
            display_name: Some(display_name.clone()),
            caller_id: Some(caller_id.clone()),
            ..Patch::default()
        };
        let accepted = user::decide(&ALICE, &user::Command::Update { patch }, T0).is_ok();
        let data = json!({ "display_name": display_name, "caller_id": caller_id, "max_contacts": 1 });
        prop_assert_eq!(validator("UserUpdated").is_valid(&data), accepted, "{}", data);
    }
}

#[test]
fn token_events_hold_no_secret_and_a_well_formed_scope() {
    assert_rejected(
        "TokenCreated",
        with_extra(sample("TokenCreated"), "", "secret", json!("x")),
    );
    for bad in [json!("root"), json!({"domain": "Not A Name"}), json!({})] {
        assert_rejected("TokenCreated", with(sample("TokenCreated"), "/scope", bad));
    }
    for bad in [json!(HASH.to_uppercase()), json!(&HASH[1..]), json!(1)] {
        assert_rejected(
            "TokenCreated",
            with(sample("TokenCreated"), "/secret_sha256", bad),
        );
    }
}

#[test]
fn mailbox_events_are_well_formed() {
    let hex32 = "0123456789abcdef0123456789abcdef";
    let bad_audio_ids = [
        json!(""),
        json!("vm-"),
        json!(format!("vm-{}", &hex32[1..])),
        json!(format!("vm-{hex32}0")),
        json!(format!("vm-{}", hex32.to_uppercase())),
        json!(format!("VM-{hex32}")),
        json!(format!("vm_{hex32}")),
        json!(format!(" vm-{hex32}")),
        json!(format!("vm-{hex32}\n")),
        json!(hex32),
        json!("vm-xyz"),
        json!("../../etc/passwd"),
        json!(42),
        json!(null),
    ];
    for bad in &bad_audio_ids {
        assert!(AudioId::parse(bad.as_str().unwrap_or("")).is_err(), "{bad}");
        for event_type in ["VoicemailLeft", "VoicemailRead", "VoicemailDeleted"] {
            assert_rejected(
                event_type,
                with(sample(event_type), "/message_id", bad.clone()),
            );
        }
        assert_rejected(
            "GreetingChanged",
            with(sample("GreetingChanged"), "/greeting/audio", bad.clone()),
        );
    }
    // Settings out of their bounds (or not integers).
    for bad in [
        json!(mailbox::MIN_MAX_MESSAGE_MS - 1),
        json!(mailbox::MAX_MAX_MESSAGE_MS + 1),
        json!(0),
        json!(-1),
        json!(60_000.5),
        json!("60000"),
    ] {
        assert_rejected(
            "MailboxConfigured",
            with(sample("MailboxConfigured"), "/settings/max_message_ms", bad),
        );
    }
    for bad in [
        json!(0),
        json!(mailbox::MAX_MAX_MESSAGES + 1),
        json!(-1),
        json!(1.5),
        json!(null),
    ] {
        assert_rejected(
            "MailboxConfigured",
            with(sample("MailboxConfigured"), "/settings/max_messages", bad),
        );
    }
    for pointer in [
        "/enabled",
        "/settings/pin_from_own_phone",
        "/settings/unsolicited_mwi",
    ] {
        assert_rejected(
            "MailboxConfigured",
            with(sample("MailboxConfigured"), pointer, json!("true")),
        );
    }
    assert_rejected(
        "MailboxConfigured",
        with(sample("MailboxConfigured"), "/settings", json!(null)),
    );
    // A message's length: at least a second, at most the longest mailbox
    // setting and a second of slack.
    for bad in [
        json!(mailbox::MIN_MESSAGE_MS - 1),
        json!(mailbox::MAX_MAX_MESSAGE_MS + 1_001),
        json!(0),
        json!(-1),
        json!(2_000.5),
        json!("5000"),
    ] {
        assert_rejected(
            "VoicemailLeft",
            with(sample("VoicemailLeft"), "/duration_ms", bad),
        );
    }
    for bad in [json!(-1), json!(4_294_967_296_u64), json!(1.5), json!(null)] {
        assert_rejected(
            "GreetingChanged",
            with(sample("GreetingChanged"), "/greeting/duration_ms", bad),
        );
    }
    // The caller: at most 256 characters, no control characters (what
    // decide refuses too).
    for bad in [
        "x".repeat(mailbox::MAX_FROM_LEN + 1),
        "bob\r\nX-Injected: 1".to_owned(),
        "nul\u{0}".to_owned(),
        "c1\u{85}".to_owned(),
    ] {
        let refuse = mailbox::Command::Refuse {
            from: bad.clone(),
            reason: RefusalReason::MailboxFull,
        };
        assert!(mailbox::decide(&mailbox::Mailbox::default(), &refuse, T0).is_err());
        for event_type in ["VoicemailLeft", "VoicemailRefused"] {
            assert_rejected(event_type, with(sample(event_type), "/from", json!(bad)));
        }
    }
    for bad in [json!(null), json!(1)] {
        for event_type in ["VoicemailLeft", "VoicemailRefused"] {
            assert_rejected(event_type, with(sample(event_type), "/from", bad.clone()));
        }
    }
    for bad in ["full", "MailboxFull", "mailbox-full", "", "disabled"] {
        assert_rejected(
            "VoicemailRefused",
            with(sample("VoicemailRefused"), "/reason", json!(bad)),
        );
    }
    // The PIN only ever as its salted hash, in the one form this build
    // writes.
    let hash = |salt: &str, digest: &str| json!(format!("sha256${salt}${digest}"));
    let digest = hex32.repeat(2);
    for bad in [
        json!("4321"),
        json!(digest),
        hash(hex32, &digest[1..]),
        hash(&hex32[1..], &digest),
        hash(&hex32.to_uppercase(), &digest),
        hash(hex32, &digest.to_uppercase()),
        hash(hex32, &format!("{digest}0")),
        hash("", &digest),
        json!(format!("md5${hex32}${hex32}")),
        json!(format!("sha256${hex32}${digest}$")),
        json!(format!("SHA256${hex32}${digest}")),
        json!(null),
    ] {
        assert_rejected(
            "MailboxPinChanged",
            with(sample("MailboxPinChanged"), "/pin", bad),
        );
    }
    assert_rejected(
        "MailboxPinChanged",
        with_extra(sample("MailboxPinChanged"), "", "pin_digits", json!("4321")),
    );
    for bad in [
        json!(0),
        json!(-1),
        json!(1.5),
        json!("5"),
        json!(4_294_967_296_u64),
    ] {
        assert_rejected(
            "MailboxPinRejected",
            with(sample("MailboxPinRejected"), "/attempts", bad.clone()),
        );
        assert_rejected(
            "MailboxLockedOut",
            with(sample("MailboxLockedOut"), "/attempts", bad),
        );
    }
    for bad in [json!(-1), json!("0"), json!(null)] {
        assert_rejected(
            "MailboxLockedOut",
            with(sample("MailboxLockedOut"), "/locked_until", bad.clone()),
        );
        assert_rejected(
            "VoicemailRead",
            with(sample("VoicemailRead"), "/read_at", bad),
        );
    }
    // No greeting is written as no field, never as null.
    assert_rejected(
        "GreetingChanged",
        with(sample("GreetingChanged"), "/greeting", json!(null)),
    );
    assert_rejected("MailboxPinAccepted", json!({ "attempts": 0 }));
    assert_rejected("MailboxPinAccepted", json!(null));
}

/// What the API and exports show of the PIN events (`redact_secrets`):
/// never the hash, from decide or hand-made.
#[test]
fn the_mailbox_pin_hash_never_leaves_the_node() {
    let samples = [user_events_from_decide(), hand_made_events()].concat();
    let mut seen = 0;
    for event in &samples {
        let Event::User(user::Event::MailboxPinChanged { pin }) = event else {
            continue;
        };
        seen += 1;
        let data: Value = serde_json::from_str(&event.to_data().unwrap()).unwrap();
        assert_eq!(data["pin"], json!(pin.as_str()), "stored as the hash");
        let shown = redact_secrets(event.event_type(), data);
        assert_eq!(shown, json!({}));
        assert!(!shown.to_string().contains("sha256$"));
        assert!(!format!("{event:?}").contains(pin.as_str()));
    }
    assert!(seen >= 3, "{seen} MailboxPinChanged samples");
}

fn audio_id_candidate() -> impl Strategy<Value = String> {
    prop_oneof![
        "vm-[0-9a-f]{32}",
        "vm-[0-9a-fA-F]{30,34}",
        "[a-z-]{0,4}[0-9a-f]{0,33}",
        "vm-[0-9a-g./]{32}",
        "\\PC{0,40}",
    ]
}

proptest! {
    /// The audio-id pattern accepts exactly the ids `AudioId` accepts.
    #[test]
    fn audio_id_schema_agrees_with_audio_id(s in audio_id_candidate()) {
        let accepted = AudioId::parse(&s).is_ok();
        let data = json!({ "message_id": s, "read_at": 0 });
        prop_assert_eq!(validator("VoicemailRead").is_valid(&data), accepted, "{}", data);
    }
}

// ================================================================ trunks

/// Events produced by `decide` for trunks, dial plans and numbers, every
/// variant, from a domain with users `alice` and `bob`.
fn trunk_events_from_decide() -> Vec<Event> {
    use dialtone_domain::dial_plan::{DialPlan, WrittenRule};
    use dialtone_domain::number::{self, NumberTarget, E164};
    use dialtone_domain::trunk::{CredentialsPatch, Gateway, SealedSecret, TrunkPatch};
    use domain::Command as C;
    let mut state = Domain::default();
    let mut out = Vec::new();
    let mut run = |state: &mut Domain, command: C| {
        for e in domain::decide(state, &command, T0).unwrap() {
            *state = domain::evolve(std::mem::take(state), &e);
            out.push(Event::Domain(e));
        }
    };
    run(
        &mut state,
        C::Create {
            name: dn("example.com"),
            settings: Settings::default(),
        },
    );
    for (i, u) in ["alice", "bob"].into_iter().enumerate() {
        run(
            &mut state,
            C::ClaimUserName {
                username: un(u),
                user_id: UserId(Uuid::from_u128(i as u128 + 1)),
            },
        );
    }
    let full = TrunkPatch {
        gateways: Some(vec![
            Gateway::parse_written("sip:gw1.carrier.example:5060").unwrap(),
            Gateway::parse_written("sip:[2001:db8::1];transport=tcp").unwrap(),
            Gateway::parse_written("sips:gw3.carrier.example").unwrap(),
        ]),
        credentials: Some(Some(CredentialsPatch {
            username: Some("acct-1".into()),
            password: Some(SealedSecret::new("0123abcd", vec![1; 12], vec![0xfe; 24]).unwrap()),
            realm: Some(Some("carrier.example".into())),
        })),
        register: Some(true),
        register_expiry_secs: Some(600),
        from_domain: Some(Some("pbx.example.com".into())),
        from_user: Some(dialtone_domain::trunk::FromUser::Fixed("main".into())),
        caller_id: Some(dialtone_domain::trunk::CallerIdPolicy::parse("+15550100").unwrap()),
        codecs: Some(vec![dialtone_domain::trunk::Codec::Pcma]),
        max_calls: Some(Some(30)),
        inbound_sources: Some(vec![
            dialtone_domain::trunk::Cidr::parse("203.0.113.0/24").unwrap(),
            dialtone_domain::trunk::Cidr::parse("2001:db8::/32").unwrap(),
        ]),
    };
    run(
        &mut state,
        C::CreateTrunk {
            name: un("carrier"),
            patch: full,
        },
    );
    run(
        &mut state,
        C::CreateTrunk {
            name: un("backup"),
            patch: TrunkPatch {
                gateways: Some(vec![Gateway::parse_written("sip:192.0.2.7").unwrap()]),
                ..Default::default()
            },
        },
    );
    run(
        &mut state,
        C::UpdateTrunk {
            name: un("backup"),
            patch: TrunkPatch {
                caller_id: Some(dialtone_domain::trunk::CallerIdPolicy::Anonymous),
                from_user: Some(dialtone_domain::trunk::FromUser::Username),
                ..Default::default()
            },
        },
    );
    let classes = BTreeMap::from([("intl".to_owned(), vec!["alice".to_owned()])]);
    let rules = [
        WrittenRule {
            pattern: "_00Z.".into(),
            strip: 2,
            prefix: "+".into(),
            trunk: "carrier".into(),
            allow: "class:intl".into(),
        },
        WrittenRule {
            pattern: "_NXXNXXXXXX".into(),
            strip: 0,
            prefix: "+1".into(),
            trunk: "carrier".into(),
            allow: "users:alice,bob".into(),
        },
        WrittenRule {
            pattern: "_+X.".into(),
            trunk: "carrier".into(),
            ..Default::default()
        },
    ];
    run(
        &mut state,
        C::SetDialPlan {
            plan: DialPlan::compile(&classes, &rules).unwrap(),
        },
    );
    run(&mut state, C::DeleteTrunk { name: un("backup") });
    let number = E164::parse("+15550001").unwrap();
    let domain_id = DomainId::for_name(&dn("example.com"));
    let mut n = number::Number::default();
    for command in [
        number::Command::Assign {
            number,
            domain_id,
            domain: dn("example.com"),
            target: NumberTarget::parse("alice").unwrap(),
            description: "main line ✓".into(),
        },
        number::Command::Update {
            domain_id,
            target: Some(NumberTarget::parse("app:ivr.v2").unwrap()),
            description: None,
        },
        number::Command::Release { domain_id },
    ] {
        for e in number::decide(&n, &command, T0).unwrap() {
            n = number::evolve(n, &e);
            out.push(Event::Number(e));
        }
    }
    out
}

/// Hand-made trunk, dial plan and number events at the edges.
fn hand_made_trunk_events() -> Vec<Event> {
    let mut events: Vec<Event> = trunk_events_from_decide()
        .into_iter()
        .filter(|e| {
            !matches!(
                e,
                Event::Domain(
                    domain::Event::DomainCreated { .. } | domain::Event::UserNameClaimed { .. }
                )
            )
        })
        .collect();
    events.push(Event::Number(
        dialtone_domain::number::Event::NumberAssigned {
            number: dialtone_domain::number::E164::parse("+123456789012345").unwrap(),
            domain_id: DomainId(Uuid::nil()),
            domain: dn("x.test"),
            target: dialtone_domain::number::NumberTarget::parse("voicemail:%41b").unwrap(),
            description: String::new(),
            assigned_at: 0,
        },
    ));
    events
}

#[test]
fn malformed_trunk_and_number_values_are_rejected() {
    let created = sample("TrunkCreated");
    assert_rejected(
        "TrunkCreated",
        with(created.clone(), "/trunk/gateways", json!([])),
    );
    assert_rejected(
        "TrunkCreated",
        with(
            created.clone(),
            "/trunk/gateways/0/transport",
            json!("sctp"),
        ),
    );
    assert_rejected(
        "TrunkCreated",
        with(
            created.clone(),
            "/trunk/credentials/password",
            json!("hunter2"),
        ),
    );
    assert_rejected(
        "TrunkCreated",
        with(created.clone(), "/trunk/codecs", json!(["G729"])),
    );
    assert_rejected(
        "TrunkCreated",
        with(created.clone(), "/trunk/max_calls", json!(0)),
    );
    assert_rejected(
        "TrunkCreated",
        with_extra(created.clone(), "/trunk/credentials", "ha1", json!("x")),
    );
    assert_rejected("TrunkCreated", without(created, "trunk"));
    let plan = sample("DialPlanChanged");
    assert_rejected(
        "DialPlanChanged",
        with(plan.clone(), "/plan/rules/0/prefix", json!("1")),
    );
    assert_rejected(
        "DialPlanChanged",
        with(plan, "/plan/rules/0/allow", json!({"kind": "everyone"})),
    );
    let assigned = sample("NumberAssigned");
    for bad in ["15550001", "+0123", "+1234567890123456", "+1 555"] {
        assert_rejected(
            "NumberAssigned",
            with(assigned.clone(), "/number", json!(bad)),
        );
    }
    assert_rejected(
        "NumberAssigned",
        with(assigned.clone(), "/target", json!("fax:1")),
    );
    assert_rejected("NumberAssigned", without(assigned, "domain_id"));
    assert_rejected("NumberReleased", json!({"number": "+15550001"}));
}

#[test]
fn the_trunk_password_never_leaves_the_node() {
    for event in trunk_events_from_decide() {
        let data: Value = serde_json::from_str(&event.to_data().unwrap()).unwrap();
        let shown = redact_secrets(event.event_type(), data).to_string();
        assert!(!shown.contains("aead$"), "{}: {shown}", event.event_type());
        assert!(!shown.contains("fefefe"), "{}: {shown}", event.event_type());
    }
}
