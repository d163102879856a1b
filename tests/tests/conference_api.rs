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

/// Holds a short conference in `room` on a stopped node's log, through the
/// conference's actor (as the conference application will): started, two
/// callers in, one turned away with a wrong PIN, one talks, both leave.
/// Returns the conference's stream.
async fn hold_conference(data_dir: &std::path::Path, room: &str) -> String {
    use dialtone_actors::{ActorSystem, Directory, DirectoryConfig, Meta};
    use dialtone_domain::conference::{Command, LeaveReason, ParticipantId, Start};
    use dialtone_domain::{ConferenceId, DomainId, DomainName, UserName};
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
    let id = ConferenceId(uuid::Uuid::new_v4());
    let p = |n: u128| ParticipantId(uuid::Uuid::from_u128(n));
    let commands = [
        Command::Start(Start {
            domain_id: DomainId::for_name(&DomainName::parse(DOMAIN).unwrap()),
            room: UserName::parse(room).unwrap(),
            max_participants: 10,
            end_with_moderator: false,
            muted_on_entry: false,
        }),
        Command::Join {
            participant: p(1),
            caller: format!("alice@{DOMAIN}"),
            moderator: true,
        },
        Command::TurnAway {
            participant: p(2),
            caller: "mallory@elsewhere.test".into(),
            reason: LeaveReason::WrongPin,
        },
        Command::Join {
            participant: p(3),
            caller: format!("bob@{DOMAIN}"),
            moderator: false,
        },
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
    for command in commands {
        directory
            .execute_conference(id, command, Meta::default(), |_| ())
            .await
            .unwrap();
    }
    directory
        .passivate_all(std::time::Duration::from_secs(5))
        .await;
    tokio::task::spawn_blocking(move || system.shutdown())
        .await
        .unwrap();
    store.close().await.unwrap();
    id.stream()
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
    let [own, other] = <[String; 2]>::try_from(secrets).unwrap();
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
