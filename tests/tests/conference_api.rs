//! Conference rooms over the API, black box: a real node, rooms created,
//! read, listed, changed and deleted over gRPC (`ConferenceService`) and
//! the CLI (`dialtone conference`); their events in the domain's stream;
//! their PINs in no export of the log (ReadAll, ReadStream, `dialtone
//! replay`) nor any reply; the audit of the domain showing its rooms at a
//! version; bad input refused with a message naming the field, nothing
//! written; a name that is a user, a group or a room, never two; a token
//! of another domain kept out. A conference held in a room (through its
//! actor on the stopped node's log, as there is no API to hold one yet) is
//! read back by its domain's token as `conference` events, and by no other.

mod support;

use dialtone_api::pb::audit_service_client::AuditServiceClient;
use dialtone_api::pb::conference_service_client::ConferenceServiceClient;
use dialtone_api::pb::*;
use support::sip::{create_domain, create_user, DOMAIN, PASSWORD};
use support::{channel_with, read_all, Channel, TestNode};
use tonic::Code;

const OTHER: &str = "other.test";

fn standup() -> String {
    format!("standup@{DOMAIN}")
}

async fn node(dir: &std::path::Path) -> TestNode {
    let node = TestNode::start(dir, &[]).await.unwrap();
    create_domain(&node, DOMAIN).await.unwrap();
    create_domain(&node, OTHER).await.unwrap();
    create_user(&node, DOMAIN, "alice", PASSWORD, 0)
        .await
        .unwrap();
    node.provisioning()
        .await
        .unwrap()
        .create_ring_group(CreateRingGroupRequest {
            address: format!("sales@{DOMAIN}"),
            settings: Some(RingGroupChange {
                members: Some(RingGroupMembers {
                    members: vec!["alice".into()],
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    node
}

async fn conference(node: &TestNode) -> ConferenceServiceClient<Channel> {
    ConferenceServiceClient::new(node.channel().await.unwrap())
}

fn create(address: &str, settings: RoomChange) -> CreateRoomRequest {
    CreateRoomRequest {
        address: address.into(),
        settings: Some(settings),
        ..Default::default()
    }
}

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The events of the domain's stream: (version, type, data).
async fn domain_events(node: &TestNode, domain: &str) -> Vec<(u64, String, String)> {
    let id = node
        .provisioning()
        .await
        .unwrap()
        .get_domain(GetDomainRequest {
            domain: domain.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .id;
    node.events()
        .await
        .unwrap()
        .read_stream(ReadStreamRequest {
            stream: format!("domain-{id}"),
            from_version: 0,
            max_count: 1000,
        })
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .map(|e| {
            if e.r#type.starts_with("ConferenceRoom") {
                assert_eq!(e.category, "provisioning", "{}", e.r#type);
            }
            (e.version, e.r#type, e.data_json)
        })
        .collect()
}

fn room_types(events: &[(u64, String, String)]) -> Vec<&str> {
    events
        .iter()
        .map(|(_, t, _)| t.as_str())
        .filter(|t| t.starts_with("ConferenceRoom"))
        .collect()
}

#[tokio::test]
async fn rooms_are_created_changed_listed_audited_and_deleted_without_showing_pins() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let mut api = conference(&node).await;

    // gRPC: a room with both PINs and a maximum; the rest defaults.
    let room = api
        .create_room(CreateRoomRequest {
            request_id: "create-standup".into(),
            ..create(
                &standup(),
                RoomChange {
                    pin: Some("2468".into()),
                    moderator_pin: Some("1357".into()),
                    max_participants: Some(10),
                    ..Default::default()
                },
            )
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(room.address, standup());
    assert!(room.has_pin && room.has_moderator_pin);
    assert_eq!(room.max_participants, 10);
    assert!(room.tones, "tones are on by default");
    assert!(!room.wait_for_moderator && !room.end_with_moderator);
    assert!(!room.record && !room.muted_on_entry);
    // The domain's stream: created, claimed alice, group, room.
    let events = domain_events(&node, DOMAIN).await;
    let (created_at, _, data) = events.last().unwrap().clone();
    assert_eq!(room.version, created_at);
    assert_eq!(room_types(&events), ["ConferenceRoomCreated"]);
    // The stored data as exported: settings, no PINs.
    let data: serde_json::Value = serde_json::from_str(&data).unwrap();
    assert_eq!(data["name"], "standup");
    assert_eq!(data["room"]["max_participants"], 10);
    assert!(data["room"].get("pin").is_none(), "{data}");
    assert!(data["room"].get("moderator_pin").is_none(), "{data}");

    // A retry with the same request id writes nothing.
    let again = api
        .create_room(CreateRoomRequest {
            request_id: "create-standup".into(),
            ..create(
                &standup(),
                RoomChange {
                    pin: Some("2468".into()),
                    moderator_pin: Some("1357".into()),
                    max_participants: Some(10),
                    ..Default::default()
                },
            )
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.version, room.version);

    let got = api
        .get_room(GetRoomRequest { address: standup() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, room);

    // Update: the participant PIN removed, recording on; the rest kept.
    let updated = api
        .update_room(UpdateRoomRequest {
            address: standup(),
            settings: Some(RoomChange {
                pin: Some(String::new()),
                record: Some(true),
                end_with_moderator: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!updated.has_pin && updated.has_moderator_pin);
    assert!(updated.record && updated.end_with_moderator);
    assert_eq!(updated.max_participants, 10);
    assert_eq!(updated.version, room.version + 1);
    // A change that changes nothing writes nothing.
    let same = api
        .update_room(UpdateRoomRequest {
            address: standup(),
            settings: Some(RoomChange {
                record: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(same.version, updated.version);
    // expected_version is checked against the domain's stream.
    let stale = api
        .update_room(UpdateRoomRequest {
            address: standup(),
            settings: Some(RoomChange {
                max_participants: Some(20),
                ..Default::default()
            }),
            expected_version: Some(room.version),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");

    // The CLI: create with every flag, show, change, list, delete.
    let weekly = format!("weekly@{DOMAIN}");
    let text = stdout(
        &node
            .cli(&[
                "conference",
                "create",
                &weekly,
                "--pin",
                "2468",
                "--moderator-pin",
                "1357",
                "--max",
                "50",
                "--wait-for-moderator",
                "--end-with-moderator",
                "--record",
            ])
            .await
            .unwrap(),
    );
    for line in [
        format!("conference room     {weekly}"),
        "PIN                 set".to_owned(),
        "moderator PIN       set".to_owned(),
        "max participants    50".to_owned(),
        "wait for moderator  yes".to_owned(),
        "end with moderator  yes".to_owned(),
        "tones               yes".to_owned(),
        "record              yes".to_owned(),
        "muted on entry      no".to_owned(),
    ] {
        assert!(text.contains(&line), "{line:?} not in\n{text}");
    }
    assert!(!text.contains("2468") && !text.contains("1357"), "{text}");
    let text = stdout(
        &node
            .cli(&[
                "conference",
                "update",
                &weekly,
                "--max",
                "5",
                "--tones",
                "false",
                "--muted-on-entry",
                "--pin",
                "none",
            ])
            .await
            .unwrap(),
    );
    assert!(text.contains("max participants    5"), "{text}");
    assert!(text.contains("tones               no"), "{text}");
    assert!(text.contains("muted on entry      yes"), "{text}");
    assert!(text.contains("PIN                 none"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&stdout(
        &node
            .cli(&["--json", "conference", "get", &weekly])
            .await
            .unwrap(),
    ))
    .unwrap();
    assert_eq!(json["address"], weekly.as_str());
    assert_eq!(json["has_pin"], false);
    assert_eq!(json["has_moderator_pin"], true);
    assert_eq!(json["max_participants"], 5);
    let text = stdout(
        &node
            .cli(&["conference", "list", "--domain", DOMAIN])
            .await
            .unwrap(),
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with(&standup()), "{text}");
    assert!(
        lines[0].contains("max 10")
            && lines[0].contains("moderator PIN, ends with the moderator, recorded"),
        "{text}"
    );
    assert!(lines[1].starts_with(&weekly), "{text}");
    let listed = api
        .list_rooms(ListRoomsRequest {
            domain: DOMAIN.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .rooms;
    assert_eq!(
        listed
            .iter()
            .map(|r| r.address.as_str())
            .collect::<Vec<_>>(),
        [standup().as_str(), weekly.as_str()]
    );
    let before_delete = listed[1].version;
    stdout(&node.cli(&["conference", "delete", &weekly]).await.unwrap());
    let err = api
        .get_room(GetRoomRequest {
            address: weekly.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), format!("conference room {weekly} not found"));

    // Every room event is in the domain's stream, in order.
    let events = domain_events(&node, DOMAIN).await;
    assert_eq!(
        room_types(&events),
        [
            "ConferenceRoomCreated",
            "ConferenceRoomUpdated",
            "ConferenceRoomCreated",
            "ConferenceRoomUpdated",
            "ConferenceRoomDeleted"
        ]
    );

    // No PIN in any export: the whole log read back, its typed payloads,
    // and the CLI's JSON export.
    let all = read_all(&node).await.unwrap();
    assert!(all.iter().any(|e| e.r#type == "ConferenceRoomCreated"));
    for e in &all {
        assert!(
            !e.data_json.contains("sha256$") && !e.data_json.contains("\"pin\""),
            "{}: {}",
            e.r#type,
            e.data_json
        );
    }
    let export = stdout(&node.cli(&["--json", "replay"]).await.unwrap());
    assert!(export.contains("ConferenceRoomUpdated"), "{export}");
    assert!(!export.contains("sha256$"), "{export}");
    assert!(!export.contains("moderator_pin"), "{export}");

    // The audit shows the rooms as they were at a version, and now.
    let mut audit = AuditServiceClient::new(node.channel().await.unwrap());
    let at = |version: Option<u64>| GetDomainStateAtRequest {
        domain: DOMAIN.into(),
        at: version.map(get_domain_state_at_request::At::Version),
        include_users: false,
    };
    let then = audit
        .get_domain_state_at(at(Some(before_delete)))
        .await
        .unwrap()
        .into_inner()
        .state
        .unwrap();
    let rooms: Vec<(&str, bool, u32)> = then
        .conference_rooms
        .iter()
        .map(|r| (r.address.as_str(), r.has_pin, r.max_participants))
        .collect();
    assert_eq!(
        rooms,
        [(standup().as_str(), false, 10), (weekly.as_str(), false, 5)]
    );
    let now = audit
        .get_domain_state_at(at(None))
        .await
        .unwrap()
        .into_inner()
        .state
        .unwrap();
    assert_eq!(now.conference_rooms.len(), 1);
    assert_eq!(now.conference_rooms[0].address, standup());
    assert!(now.conference_rooms[0].has_moderator_pin);
    let text = stdout(&node.cli(&["audit", "domain", DOMAIN]).await.unwrap());
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("room") && l.contains(&standup())),
        "{text}"
    );
    assert!(!text.contains(&weekly), "{text}");
    node.stop().await.unwrap();
}

#[tokio::test]
async fn bad_rooms_are_refused_naming_the_field_and_names_stay_unique() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let mut api = conference(&node).await;
    let before = domain_events(&node, DOMAIN).await.len();

    let cases: Vec<(&str, RoomChange, Code, String)> = vec![
        (
            "standup",
            RoomChange {
                pin: Some("12a4".into()),
                ..Default::default()
            },
            Code::InvalidArgument,
            "invalid pin: must be 4 to 12 digits".into(),
        ),
        (
            "standup",
            RoomChange {
                moderator_pin: Some("123".into()),
                ..Default::default()
            },
            Code::InvalidArgument,
            "invalid moderator_pin: must be 4 to 12 digits".into(),
        ),
        (
            "standup",
            RoomChange {
                max_participants: Some(1),
                ..Default::default()
            },
            Code::InvalidArgument,
            "invalid max_participants: must be 2 to 1000, got 1".into(),
        ),
        (
            "standup",
            RoomChange {
                max_participants: Some(1_001),
                ..Default::default()
            },
            Code::InvalidArgument,
            "invalid max_participants: must be 2 to 1000, got 1001".into(),
        ),
        (
            "standup",
            RoomChange {
                wait_for_moderator: Some(true),
                ..Default::default()
            },
            Code::InvalidArgument,
            format!(
                "invalid wait_for_moderator: room {} has no moderator PIN, so no moderator could ever join",
                standup()
            ),
        ),
        (
            "standup",
            RoomChange {
                pin: Some("2468".into()),
                moderator_pin: Some("2468".into()),
                ..Default::default()
            },
            Code::InvalidArgument,
            "invalid moderator_pin: must differ from the participant PIN".into(),
        ),
        (
            "alice",
            RoomChange::default(),
            Code::AlreadyExists,
            format!("user alice@{DOMAIN} (a conference room cannot take a user's name) already exists"),
        ),
        (
            "sales",
            RoomChange::default(),
            Code::AlreadyExists,
            format!("ring group sales@{DOMAIN} (a conference room cannot take a group's name) already exists"),
        ),
    ];
    for (name, settings, code, message) in cases {
        let err = api
            .create_room(create(&format!("{name}@{DOMAIN}"), settings))
            .await
            .unwrap_err();
        assert_eq!((err.code(), err.message()), (code, message.as_str()));
    }
    let err = api
        .create_room(create("standup", RoomChange::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("invalid address:"),
        "{}",
        err.message()
    );
    // The CLI says the same.
    let output = node
        .cli(&["conference", "create", &standup(), "--max", "1"])
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid max_participants: must be 2 to 1000, got 1"),
        "{stderr}"
    );
    // Nothing was written by any of them.
    assert_eq!(domain_events(&node, DOMAIN).await.len(), before);

    // Once the room exists, its name is not a user's or a group's, nor a
    // second room's.
    api.create_room(create(&standup(), RoomChange::default()))
        .await
        .unwrap();
    let err = create_user(&node, DOMAIN, "standup", PASSWORD, 0)
        .await
        .unwrap_err();
    let status = err.downcast_ref::<tonic::Status>().unwrap();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(
        status.message().contains("conference room standup@"),
        "{}",
        status.message()
    );
    let err = node
        .provisioning()
        .await
        .unwrap()
        .create_ring_group(CreateRingGroupRequest {
            address: standup(),
            settings: Some(RingGroupChange {
                members: Some(RingGroupMembers {
                    members: vec!["alice".into()],
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let err = api
        .create_room(create(&standup(), RoomChange::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    // An update's PIN checks: the moderator PIN may not be the PIN kept.
    api.update_room(UpdateRoomRequest {
        address: standup(),
        settings: Some(RoomChange {
            pin: Some("2468".into()),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = api
        .update_room(UpdateRoomRequest {
            address: standup(),
            settings: Some(RoomChange {
                moderator_pin: Some("2468".into()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        "invalid moderator_pin: must differ from the participant PIN"
    );

    // A token of another domain sees none of it, as if it were not there;
    // in its own domain it manages rooms.
    let secret = node
        .channel()
        .await
        .map(token_service_client::TokenServiceClient::new)
        .unwrap()
        .create_token(CreateTokenRequest {
            scope: OTHER.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    let mut other =
        ConferenceServiceClient::new(channel_with(&node.grpc_url, Some(&secret)).await.unwrap());
    let hidden = other
        .get_room(GetRoomRequest { address: standup() })
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
    assert_eq!(hidden.message(), format!("domain {DOMAIN} not found"));
    let hidden = other
        .list_rooms(ListRoomsRequest {
            domain: DOMAIN.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
    let hidden = other
        .delete_room(DeleteRoomRequest {
            address: standup(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
    let own = other
        .create_room(create(&format!("standup@{OTHER}"), RoomChange::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.address, format!("standup@{OTHER}"));
    assert_eq!(own.max_participants, 50);
    assert!(api
        .get_room(GetRoomRequest { address: standup() })
        .await
        .is_ok());
    node.stop().await.unwrap();
}

/// Runs each conference's commands through its actor on a stopped node's
/// log (as the node's conference application does), every one accepted.
async fn run_conferences(
    data_dir: &std::path::Path,
    conferences: Vec<(
        dialtone_domain::ConferenceId,
        Vec<dialtone_domain::conference::Command>,
    )>,
) {
    use dialtone_actors::{ActorSystem, Directory, DirectoryConfig, Meta};
    use dialtone_eventlog::sqlite::{SqliteOptions, SqliteStore};
    use dialtone_eventlog::SharedStore;

    let store: SharedStore = std::sync::Arc::new(
        SqliteStore::open(&data_dir.join("events.db"), SqliteOptions::new("test")).unwrap(),
    );
    let system = ActorSystem::start(1).unwrap();
    let directory = Directory::new(
        store.clone(),
        system.arbiters().to_vec(),
        DirectoryConfig::default(),
    )
    .unwrap();
    for (id, commands) in conferences {
        for command in commands {
            directory
                .execute_conference(id, command.clone(), Meta::default(), |_| ())
                .await
                .unwrap_or_else(|e| panic!("{command:?}: {e}"));
        }
    }
    directory
        .passivate_all(std::time::Duration::from_secs(5))
        .await;
    tokio::task::spawn_blocking(move || system.shutdown())
        .await
        .unwrap();
    store.close().await.unwrap();
}

fn participant(n: u128) -> dialtone_domain::conference::ParticipantId {
    dialtone_domain::conference::ParticipantId(uuid::Uuid::from_u128(n))
}

/// A conference's start in `room@domain`, with the rules given.
fn start(domain: &str, room: &str, max: u32) -> dialtone_domain::conference::Command {
    use dialtone_domain::{DomainId, DomainName, UserName};
    dialtone_domain::conference::Command::Start(dialtone_domain::conference::Start {
        domain_id: DomainId::for_name(&DomainName::parse(domain).unwrap()),
        room: UserName::parse(room).unwrap(),
        max_participants: max,
        end_with_moderator: false,
        muted_on_entry: false,
    })
}

fn join(n: u128, caller: &str, moderator: bool) -> dialtone_domain::conference::Command {
    dialtone_domain::conference::Command::Join {
        participant: participant(n),
        caller: caller.to_owned(),
        moderator,
    }
}

/// Holds a short conference in `room` on a stopped node's log, through the
/// conference's actor (as the conference application will): started, two
/// callers in, one turned away with a wrong PIN, one talks, both leave.
/// Returns the conference's stream.
async fn hold_conference(data_dir: &std::path::Path, room: &str) -> String {
    use dialtone_domain::conference::{Command, LeaveReason};
    use dialtone_domain::ConferenceId;

    let id = ConferenceId(uuid::Uuid::new_v4());
    let p = participant;
    let commands = vec![
        start(DOMAIN, room, 10),
        join(1, &format!("alice@{DOMAIN}"), true),
        Command::TurnAway {
            participant: p(2),
            caller: "mallory@elsewhere.test".into(),
            reason: LeaveReason::WrongPin,
        },
        join(3, &format!("bob@{DOMAIN}"), false),
        Command::Talking {
            participant: p(3),
            on: true,
        },
        Command::Leave {
            participant: p(3),
            reason: LeaveReason::HungUp,
        },
        Command::Leave {
            participant: p(1),
            reason: LeaveReason::HungUp,
        },
    ];
    run_conferences(data_dir, vec![(id, commands)]).await;
    id.stream()
}

/// The secrets of two new tokens, scoped to `DOMAIN` and to `OTHER`.
async fn domain_tokens(node: &TestNode) -> [String; 2] {
    let mut tokens = token_service_client::TokenServiceClient::new(node.channel().await.unwrap());
    let mut secrets = Vec::new();
    for domain in [DOMAIN, OTHER] {
        let request = CreateTokenRequest {
            scope: domain.into(),
            ..Default::default()
        };
        secrets.push(
            tokens
                .create_token(request)
                .await
                .unwrap()
                .into_inner()
                .secret,
        );
    }
    <[String; 2]>::try_from(secrets).unwrap()
}

#[tokio::test]
async fn a_conference_is_read_by_its_domain_and_hidden_from_others() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    conference(&node)
        .await
        .create_room(create(&standup(), RoomChange::default()))
        .await
        .unwrap();
    let [own, other] = domain_tokens(&node).await;
    node.stop().await.unwrap();
    let stream = hold_conference(dir.path(), "standup").await;
    let node = TestNode::start(dir.path(), &[]).await.unwrap();

    let read = |token: String| {
        let url = node.grpc_url.clone();
        async move {
            let mut events = dialtone_api::pb::event_service_client::EventServiceClient::new(
                channel_with(&url, Some(&token)).await.unwrap(),
            );
            events
                .read_all(ReadAllRequest {
                    from_position: 1,
                    max_count: 5000,
                })
                .await
                .unwrap()
                .into_inner()
                .events
        }
    };
    // The room's domain reads its conference, in order, as category
    // `conference`; the conference ended when the last one left.
    let seen: Vec<(String, String)> = read(own.clone())
        .await
        .into_iter()
        .filter(|e| e.stream == stream)
        .map(|e| (e.r#type, e.category))
        .collect();
    let conference = |t: &str| (t.to_owned(), "conference".to_owned());
    assert_eq!(
        seen,
        [
            conference("ConferenceStarted"),
            conference("ParticipantJoined"),
            conference("ParticipantLeft"),
            conference("ParticipantJoined"),
            conference("ParticipantTalking"),
            conference("ParticipantLeft"),
            conference("ParticipantLeft"),
            conference("ConferenceEnded"),
        ]
    );
    let all = read_all(&node).await.unwrap();
    let turned_away = all
        .iter()
        .find(|e| e.stream == stream && e.r#type == "ParticipantLeft")
        .unwrap();
    let data: serde_json::Value = serde_json::from_str(&turned_away.data_json).unwrap();
    assert_eq!(data["reason"], "wrong_pin");
    assert_eq!(data["caller"], "mallory@elsewhere.test");
    let ended = all
        .iter()
        .find(|e| e.stream == stream && e.r#type == "ConferenceEnded")
        .unwrap();
    assert!(
        ended.data_json.contains("\"reason\":\"empty\""),
        "{}",
        ended.data_json
    );
    // Another domain's token sees none of it, by ReadAll or by the stream.
    assert!(read(other.clone()).await.iter().all(|e| e.stream != stream));
    let mut events = dialtone_api::pb::event_service_client::EventServiceClient::new(
        channel_with(&node.grpc_url, Some(&other)).await.unwrap(),
    );
    let hidden = events
        .read_stream(ReadStreamRequest {
            stream: stream.clone(),
            from_version: 0,
            max_count: 100,
        })
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound, "{hidden:?}");
    node.stop().await.unwrap();
}

/// A participant id whose text starts with the 8 hex digits of `prefix`.
fn pid(prefix: u32) -> dialtone_domain::conference::ParticipantId {
    dialtone_domain::conference::ParticipantId(uuid::Uuid::from_u128(
        (u128::from(prefix) << 96) | 1,
    ))
}

/// The types of a stream's events from `from_version` on.
async fn stream_types(node: &TestNode, stream: &str, from_version: u64) -> Vec<String> {
    node.events()
        .await
        .unwrap()
        .read_stream(ReadStreamRequest {
            stream: stream.to_owned(),
            from_version,
            max_count: 1000,
        })
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .map(|e| e.r#type)
        .collect()
}

fn callers(conference: &Conference) -> Vec<(&str, bool, bool)> {
    conference
        .participants
        .iter()
        .map(|p| (p.caller.as_str(), p.moderator, p.muted))
        .collect()
}

#[tokio::test]
async fn live_conferences_are_listed_read_muted_locked_and_kicked_over_grpc_and_the_cli() {
    use dialtone_domain::conference::{Command, EndReason, LeaveReason};
    use dialtone_domain::ConferenceId;

    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let mut api = conference(&node).await;
    for room in [
        standup(),
        format!("weekly@{DOMAIN}"),
        format!("standup@{OTHER}"),
    ] {
        api.create_room(create(&room, RoomChange::default()))
            .await
            .unwrap();
    }
    let [own, other] = domain_tokens(&node).await;
    node.stop().await.unwrap();

    // On the stopped node's log, as the conference application writes
    // them: standup (alice moderating, bob, carol talking, mallory turned
    // away), weekly (dave), a weekly conference that ended, and other.test's
    // standup (erin).
    let (alice, bob, carol, mallory, dave, erin, frank) = (
        pid(0xa11ce000),
        pid(0xb0b00000),
        pid(0xca201000),
        pid(0x3a110000),
        pid(0xda7e0000),
        pid(0xe2140000),
        pid(0xf2a40000),
    );
    let ids: Vec<ConferenceId> = (0..4).map(|_| ConferenceId(uuid::Uuid::new_v4())).collect();
    let [standup_id, weekly_id, ended_id, other_id] = <[ConferenceId; 4]>::try_from(ids).unwrap();
    let joined = |p, caller: &str, moderator| Command::Join {
        participant: p,
        caller: caller.to_owned(),
        moderator,
    };
    run_conferences(
        dir.path(),
        vec![
            (
                ended_id,
                vec![
                    start(DOMAIN, "weekly", 10),
                    joined(frank, &format!("frank@{DOMAIN}"), false),
                    Command::End {
                        reason: EndReason::Requested,
                    },
                ],
            ),
            (
                standup_id,
                vec![
                    start(DOMAIN, "standup", 10),
                    joined(alice, &format!("alice@{DOMAIN}"), true),
                    joined(bob, &format!("bob@{DOMAIN}"), false),
                    joined(carol, &format!("carol@{DOMAIN}"), false),
                    Command::TurnAway {
                        participant: mallory,
                        caller: "mallory@elsewhere.test".into(),
                        reason: LeaveReason::WrongPin,
                    },
                    Command::Talking {
                        participant: carol,
                        on: true,
                    },
                ],
            ),
            (
                weekly_id,
                vec![
                    start(DOMAIN, "weekly", 10),
                    joined(dave, &format!("dave@{DOMAIN}"), false),
                ],
            ),
            (
                other_id,
                vec![
                    start(OTHER, "standup", 10),
                    joined(erin, &format!("erin@{OTHER}"), false),
                ],
            ),
        ],
    )
    .await;
    // An API-only node (no SIP, so no conferences of its own): it leaves
    // the conferences in the log running (a node that serves SIP ends
    // those its last run left, conference_calls.rs) and controls them
    // through their aggregates as the node running their rooms would see.
    let node = TestNode::start(dir.path(), &["--sip-addr", "off"])
        .await
        .unwrap();
    let mut api = conference(&node).await;
    let standup_stream = standup_id.stream();
    let version_before = stream_types(&node, &standup_stream, 0).await.len() as u64;
    assert_eq!(
        version_before, 6,
        "started, 3 joined, 1 turned away, talking"
    );

    // A subscriber of the `conference` category, with the domain's token,
    // from now on: it sees every control below as it is written.
    let mut subscription = dialtone_api::pb::event_service_client::EventServiceClient::new(
        channel_with(&node.grpc_url, Some(&own)).await.unwrap(),
    )
    .subscribe(SubscribeRequest {
        start: Some(subscribe_request::Start::FromNow(true)),
        filter: Some(EventFilter {
            categories: vec!["conference".into()],
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    let watched = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let message =
                tokio::time::timeout(std::time::Duration::from_secs(30), subscription.message())
                    .await
                    .expect("subscription stalled")
                    .unwrap();
            if let Some(subscribe_response::Message::Event(e)) = message.and_then(|m| m.message) {
                let e = e.envelope.unwrap();
                let end = e.r#type == "ConferenceEnded";
                seen.push((e.stream, e.r#type, e.category));
                if end {
                    return seen;
                }
            }
        }
    });

    // Listed: the domain's two live conferences, earliest first, with who
    // is in (mallory never was); the ended one is not.
    let list = |domain: &str| ListConferencesRequest {
        domain: domain.into(),
    };
    let live = api
        .list_conferences(list(DOMAIN))
        .await
        .unwrap()
        .into_inner()
        .conferences;
    let summary: Vec<(&str, &str, u32, bool)> = live
        .iter()
        .map(|c| {
            (
                c.conference_id.as_str(),
                c.room.as_str(),
                c.participants,
                c.locked,
            )
        })
        .collect();
    let (standup_text, weekly_text) = (standup_id.to_string(), weekly_id.to_string());
    let weekly = format!("weekly@{DOMAIN}");
    assert_eq!(
        summary,
        [
            (standup_text.as_str(), standup().as_str(), 3, false),
            (weekly_text.as_str(), weekly.as_str(), 1, false),
        ]
    );
    assert!(live.iter().all(|c| c.started_at.is_some() && !c.recording));
    // One room's; every domain's for the admin; the token's own domain's.
    let one = api
        .list_conferences(list(&weekly))
        .await
        .unwrap()
        .into_inner()
        .conferences;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].conference_id, weekly_text);
    let all = api.list_conferences(list("")).await.unwrap().into_inner();
    assert_eq!(all.conferences.len(), 3);
    assert_eq!(all.conferences[2].room, format!("standup@{OTHER}"));
    let mut own_api =
        ConferenceServiceClient::new(channel_with(&node.grpc_url, Some(&own)).await.unwrap());
    let mine = own_api
        .list_conferences(list(""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.conferences, live);
    // The CLI: a table, and JSON.
    let text = stdout(
        &node
            .cli(&["conference", "list-live", DOMAIN])
            .await
            .unwrap(),
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("CONFERENCE"), "{text}");
    assert!(
        lines[1].starts_with(&standup_text) && lines[1].contains(&standup()),
        "{text}"
    );
    assert!(lines[1].split_whitespace().nth(3) == Some("3"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&stdout(
        &node
            .cli(&["--json", "conference", "list-live"])
            .await
            .unwrap(),
    ))
    .unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3, "{json}");
    assert_eq!(json[1]["conference_id"], weekly_text.as_str());
    assert_eq!(json[1]["participants"], 1);

    // Read by room: the participants by joining time.
    let got = api
        .get_conference(GetConferenceRequest {
            conference: standup(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.conference_id, standup_text);
    assert_eq!(got.room, standup());
    assert_eq!(got.version, 5, "versions are 0-based");
    assert_eq!(got.max_participants, 10);
    assert!(got.ended_at.is_none() && !got.locked);
    assert_eq!(
        callers(&got),
        [
            (format!("alice@{DOMAIN}").as_str(), true, false),
            (format!("bob@{DOMAIN}").as_str(), false, false),
            (format!("carol@{DOMAIN}").as_str(), false, false),
        ]
    );
    assert_eq!(got.participants[0].participant_id, alice.to_string());
    assert!(got.participants[2].talking && !got.participants[1].talking);
    // By id, the same.
    let by_id = api
        .get_conference(GetConferenceRequest {
            conference: standup_text.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_id, got);
    let text = stdout(
        &node
            .cli(&["conference", "participants", &standup()])
            .await
            .unwrap(),
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(
        lines[0].starts_with(&format!("conference {standup_text} in {}", standup()))
            && lines[0].contains("3 of at most 10 participants"),
        "{text}"
    );
    assert!(lines[1].starts_with("PARTICIPANT"), "{text}");
    let cells: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        cells[..5],
        [
            alice.to_string().as_str(),
            format!("alice@{DOMAIN}").as_str(),
            "moderator",
            "no",
            "no"
        ],
        "{text}"
    );
    let cells: Vec<&str> = lines[4].split_whitespace().collect();
    assert_eq!(cells[2..5], ["-", "no", "yes"], "{text}");

    // Mute bob by his caller over gRPC; carol by the start of her id on
    // the CLI; unmute bob on the CLI; then mute all (not alice, the
    // moderator) with the domain's own token.
    let muted = api
        .mute_participant(ParticipantRequest {
            conference: standup(),
            participant: format!("bob@{DOMAIN}"),
            request_id: "mute-bob".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(muted.version, 6);
    assert!(muted.participants[1].muted);
    // A retry with the same request id writes nothing.
    let again = api
        .mute_participant(ParticipantRequest {
            conference: standup(),
            participant: format!("bob@{DOMAIN}"),
            request_id: "mute-bob".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.version, 6);
    let text = stdout(
        &node
            .cli(&["conference", "mute", &standup(), "ca20"])
            .await
            .unwrap(),
    );
    let carol_line = text
        .lines()
        .find(|l| l.starts_with(&carol.to_string()))
        .unwrap_or_else(|| panic!("no carol in\n{text}"));
    assert_eq!(
        carol_line.split_whitespace().collect::<Vec<_>>()[2..5],
        ["-", "yes", "yes"],
        "carol muted and still talking:\n{text}"
    );
    stdout(
        &node
            .cli(&["conference", "unmute", &standup(), &bob.to_string()])
            .await
            .unwrap(),
    );
    let json: serde_json::Value = serde_json::from_str(&stdout(
        &node
            .cli(&[
                "--token",
                &own,
                "--json",
                "conference",
                "mute",
                &standup(),
                "--all",
            ])
            .await
            .unwrap(),
    ))
    .unwrap();
    let muted: Vec<(&str, bool)> = json["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["caller"].as_str().unwrap(), p["muted"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        muted,
        [
            (format!("alice@{DOMAIN}").as_str(), false),
            (format!("bob@{DOMAIN}").as_str(), true),
            (format!("carol@{DOMAIN}").as_str(), true),
        ]
    );

    // Lock over gRPC (the listing shows it), unlock on the CLI.
    let locked = own_api
        .lock_conference(ConferenceControlRequest {
            conference: standup_text.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(locked.locked);
    let live = api
        .list_conferences(list(&standup()))
        .await
        .unwrap()
        .into_inner()
        .conferences;
    assert!(live[0].locked);
    let text = stdout(
        &node
            .cli(&["conference", "participants", &standup()])
            .await
            .unwrap(),
    );
    assert!(text.lines().next().unwrap().ends_with(", locked"), "{text}");
    let text = stdout(
        &node
            .cli(&["conference", "unlock", &standup()])
            .await
            .unwrap(),
    );
    assert!(!text.lines().next().unwrap().contains("locked"), "{text}");

    // Kick carol by id; kicking her again writes nothing; she cannot be
    // muted now.
    let kicked = api
        .kick_participant(ParticipantRequest {
            conference: standup(),
            participant: carol.to_string(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kicked.participants.len(), 2);
    let again = api
        .kick_participant(ParticipantRequest {
            conference: standup(),
            participant: carol.to_string(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.version, kicked.version);
    let gone = api
        .mute_participant(ParticipantRequest {
            conference: standup(),
            participant: carol.to_string(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (gone.code(), gone.message()),
        (
            Code::NotFound,
            format!("participant {carol} in conference {standup_id} not found").as_str()
        )
    );
    assert_eq!(
        api.list_conferences(list(&standup()))
            .await
            .unwrap()
            .into_inner()
            .conferences[0]
            .participants,
        2
    );

    // Bad input, nothing written.
    let version = kicked.version;
    let nobody = api
        .kick_participant(ParticipantRequest {
            conference: standup(),
            participant: "zzzz".into(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (nobody.code(), nobody.message()),
        (
            Code::NotFound,
            format!("participant zzzz in conference {standup_id} not found").as_str()
        )
    );
    let empty = api
        .mute_participant(ParticipantRequest {
            conference: standup(),
            participant: " ".into(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert!(
        empty.message().starts_with("invalid participant:"),
        "{}",
        empty.message()
    );
    let unknown = ConferenceId(uuid::Uuid::new_v4());
    let err = api
        .get_conference(GetConferenceRequest {
            conference: unknown.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (
            Code::NotFound,
            format!("conference {unknown} not found").as_str()
        )
    );
    let err = api
        .lock_conference(ConferenceControlRequest {
            conference: "standup".into(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .starts_with("invalid conference: 'standup' is neither"),
        "{}",
        err.message()
    );
    let err = api
        .get_conference(GetConferenceRequest {
            conference: format!("sales@{DOMAIN}"),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (
            Code::NotFound,
            format!("no conference in progress in room sales@{DOMAIN}").as_str()
        )
    );
    let output = node.cli(&["conference", "mute", &standup()]).await.unwrap();
    assert!(
        !output.status.success(),
        "mute needs a participant or --all"
    );
    let output = node
        .cli(&["conference", "kick", &standup(), "zzzz"])
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("participant zzzz in conference"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Another domain's token: the conference is not there, by id or by
    // room; in its own domain it reads its own.
    let mut other_api =
        ConferenceServiceClient::new(channel_with(&node.grpc_url, Some(&other)).await.unwrap());
    let hidden = other_api
        .get_conference(GetConferenceRequest {
            conference: standup_text.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (hidden.code(), hidden.message()),
        (
            Code::NotFound,
            format!("conference {standup_id} not found").as_str()
        )
    );
    let hidden = other_api
        .kick_all(ConferenceControlRequest {
            conference: standup(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (hidden.code(), hidden.message()),
        (
            Code::NotFound,
            format!("domain {DOMAIN} not found").as_str()
        )
    );
    let hidden = other_api.list_conferences(list(DOMAIN)).await.unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
    let theirs = other_api
        .list_conferences(list(""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(theirs.conferences.len(), 1);
    assert_eq!(theirs.conferences[0].conference_id, other_id.to_string());
    let output = node
        .cli(&[
            "--token",
            &other,
            "conference",
            "participants",
            &standup_text,
        ])
        .await
        .unwrap();
    assert!(!output.status.success());
    assert_eq!(
        stream_types(&node, &standup_stream, version + 1).await,
        Vec::<String>::new(),
        "nothing written by refused requests"
    );

    // Kick everyone on the CLI: the conference ends, empty.
    let text = stdout(
        &node
            .cli(&["conference", "kick", &standup(), "--all"])
            .await
            .unwrap(),
    );
    assert!(text.lines().next().unwrap().contains(", ended "), "{text}");
    assert_eq!(text.lines().count(), 2, "a heading and (none):\n{text}");
    // Gone from the live ones; by id it is read as ended; it accepts no
    // control.
    let live = api
        .list_conferences(list(DOMAIN))
        .await
        .unwrap()
        .into_inner()
        .conferences;
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].conference_id, weekly_text);
    let err = api
        .get_conference(GetConferenceRequest {
            conference: standup(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (
            Code::NotFound,
            format!("no conference in progress in room {}", standup()).as_str()
        )
    );
    let ended = api
        .get_conference(GetConferenceRequest {
            conference: standup_text.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ended.ended_at.is_some() && ended.participants.is_empty());
    let err = api
        .mute_all(ConferenceControlRequest {
            conference: standup_text.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (
            Code::FailedPrecondition,
            format!("conference {standup_id} has ended").as_str()
        )
    );
    let err = api
        .lock_conference(ConferenceControlRequest {
            conference: ended_id.to_string(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    // The conference's stream: every control, in order.
    let written = stream_types(&node, &standup_stream, version_before).await;
    assert_eq!(
        written,
        [
            "ParticipantMuted",   // bob
            "ParticipantMuted",   // carol
            "ParticipantUnmuted", // bob
            "ParticipantMuted",   // bob, by mute all
            "ConferenceLocked",
            "ConferenceUnlocked",
            "ParticipantLeft", // carol, kicked
            "ParticipantLeft", // kick all: alice
            "ParticipantLeft", // and bob
            "ConferenceEnded",
        ]
    );
    let all = read_all(&node).await.unwrap();
    let reasons: Vec<String> = all
        .iter()
        .filter(|e| e.stream == standup_stream && e.version >= version_before)
        .filter(|e| e.r#type == "ParticipantLeft" || e.r#type == "ConferenceEnded")
        .map(|e| {
            let data: serde_json::Value = serde_json::from_str(&e.data_json).unwrap();
            data["reason"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(reasons, ["kicked", "kicked", "kicked", "empty"]);
    // The subscriber saw the same, live, as `conference` events of that
    // stream only.
    let seen = watched.await.unwrap();
    let expected: Vec<(String, String, String)> = written
        .iter()
        .map(|t| (standup_stream.clone(), t.clone(), "conference".to_owned()))
        .collect();
    assert_eq!(seen, expected);
    node.stop().await.unwrap();
}
