//! Provisioning over real gRPC against a real node process.

mod support;

use std::collections::HashSet;

use dialtone_api::pb::*;
use support::{read_all, TestNode};
use tonic::Code;

async fn node() -> (tempfile::TempDir, TestNode) {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]).await.unwrap();
    (dir, node)
}

fn create_user_req(domain: &str, username: &str, password: &str) -> CreateUserRequest {
    CreateUserRequest {
        domain: domain.into(),
        username: username.into(),
        password: password.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn domains_can_be_created_read_listed_suspended_and_deleted() {
    let (_dir, node) = node().await;
    let mut p = node.provisioning().await.unwrap();

    let created = p
        .create_domain(CreateDomainRequest {
            name: "Example.COM".into(),
            description: "test".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.name, "example.com");
    assert_eq!(created.status, DomainStatus::Active as i32);
    assert!(created.md5_allowed);
    assert_eq!(created.version, 0);

    let err = p
        .create_domain(CreateDomainRequest {
            name: "example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    for bad in ["", "exa mple.com", "-x.com", "1.2.3.4"] {
        let err = p
            .create_domain(CreateDomainRequest {
                name: bad.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}: {err:?}");
        assert!(
            err.message().contains("name"),
            "message names the field: {}",
            err.message()
        );
    }

    let by_id = p
        .get_domain(GetDomainRequest {
            domain: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_id.name, "example.com");
    let err = p
        .get_domain(GetDomainRequest {
            domain: "nope.example".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let updated = p
        .update_domain(UpdateDomainRequest {
            domain: "example.com".into(),
            md5_allowed: Some(false),
            expected_version: Some(0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!updated.md5_allowed);
    assert_eq!(updated.version, 1);
    let err = p
        .update_domain(UpdateDomainRequest {
            domain: "example.com".into(),
            description: Some("stale".into()),
            expected_version: Some(0),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");

    let suspended = p
        .suspend_domain(SuspendDomainRequest {
            domain: "example.com".into(),
            reason: "unpaid".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(suspended.status, DomainStatus::Suspended as i32);
    let err = p
        .create_user(create_user_req("example.com", "alice", "secret123"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    p.resume_domain(ResumeDomainRequest {
        domain: "example.com".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    p.create_user(create_user_req("example.com", "alice", "secret123"))
        .await
        .unwrap();

    let err = p
        .delete_domain(DeleteDomainRequest {
            domain: "example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::FailedPrecondition,
        "domain with users: {err:?}"
    );
    p.delete_user(DeleteUserRequest {
        user: "alice@example.com".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let deleted = p
        .delete_domain(DeleteDomainRequest {
            domain: "example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.status, DomainStatus::Deleted as i32);
    let err = p
        .get_domain(GetDomainRequest {
            domain: "example.com".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = p
        .create_user(create_user_req("example.com", "bob", "secret123"))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::FailedPrecondition,
        "user in a deleted domain: {err:?}"
    );
}

#[tokio::test]
async fn domain_listing_is_paged() {
    let (_dir, node) = node().await;
    let mut p = node.provisioning().await.unwrap();
    let mut names: Vec<String> = (0..7).map(|i| format!("d{i}.example.com")).collect();
    for name in &names {
        p.create_domain(CreateDomainRequest {
            name: name.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = p
            .list_domains(ListDomainsRequest {
                page_size: 3,
                page_token: token.clone(),
                include_deleted: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.domains.len() <= 3);
        seen.extend(page.domains.into_iter().map(|d| d.name));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    seen.sort();
    names.sort();
    assert_eq!(seen, names);
    let err = p
        .list_domains(ListDomainsRequest {
            page_size: 5000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn users_lifecycle_and_validation() {
    let (_dir, node) = node().await;
    let mut p = node.provisioning().await.unwrap();
    p.create_domain(CreateDomainRequest {
        name: "example.com".into(),
        ..Default::default()
    })
    .await
    .unwrap();

    let alice = p
        .create_user(CreateUserRequest {
            domain: "example.com".into(),
            username: "alice".into(),
            password: "correct horse".into(),
            display_name: "Alice".into(),
            caller_id: "+4930123456".into(),
            max_contacts: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(alice.address, "alice@example.com");
    assert_eq!(alice.max_contacts, 3);
    assert!(alice.enabled);
    assert!(alice.password_set_at.is_some());

    let err = p
        .create_user(create_user_req("example.com", "alice", "another pw"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    let cases = [
        (
            create_user_req("example.com", "a b", "secret123"),
            "username",
        ),
        (create_user_req("example.com", "", "secret123"), "username"),
        (create_user_req("example.com", "bob", "short"), "password"),
        (create_user_req("example.com", "bob", ""), "password"),
        (create_user_req("bad domain", "bob", "secret123"), "domain"),
        (
            CreateUserRequest {
                caller_id: "call me".into(),
                ..create_user_req("example.com", "bob", "secret123")
            },
            "caller_id",
        ),
        (
            CreateUserRequest {
                max_contacts: 1000,
                ..create_user_req("example.com", "bob", "secret123")
            },
            "max_contacts",
        ),
    ];
    for (req, field) in cases {
        let err = p.create_user(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message().contains(field),
            "'{}' should name {field}",
            err.message()
        );
    }
    let err = p
        .create_user(create_user_req("nowhere.example", "bob", "secret123"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let by_id = p
        .get_user(GetUserRequest {
            user: alice.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_id.address, "alice@example.com");
    let err = p
        .get_user(GetUserRequest {
            user: "carol@example.com".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = p
        .get_user(GetUserRequest {
            user: "carol".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let updated = p
        .update_user(UpdateUserRequest {
            user: "alice@example.com".into(),
            display_name: Some("Alice A.".into()),
            enabled: Some(false),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.display_name, "Alice A.");
    assert!(!updated.enabled);
    assert_eq!(updated.version, 2, "UserUpdated + UserDisabled");

    let before = updated.password_set_at;
    let changed = p
        .set_password(SetPasswordRequest {
            user: "alice@example.com".into(),
            password: "new password".into(),
            expected_version: Some(2),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changed.version, 3);
    assert_ne!(changed.password_set_at, before);
    let err = p
        .set_password(SetPasswordRequest {
            user: "alice@example.com".into(),
            password: "another one".into(),
            expected_version: Some(2),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);

    for name in ["carol", "bob", "dave"] {
        p.create_user(create_user_req("example.com", name, "secret123"))
            .await
            .unwrap();
    }
    let page = p
        .list_users(ListUsersRequest {
            domain: "example.com".into(),
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page.users
            .iter()
            .map(|u| u.username.as_str())
            .collect::<Vec<_>>(),
        ["alice", "bob"]
    );
    let rest = p
        .list_users(ListUsersRequest {
            domain: "example.com".into(),
            page_size: 10,
            page_token: page.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rest.users
            .iter()
            .map(|u| u.username.as_str())
            .collect::<Vec<_>>(),
        ["carol", "dave"]
    );
    assert!(rest.next_page_token.is_empty());

    let deleted = p
        .delete_user(DeleteUserRequest {
            user: "alice@example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.deleted);
    for user in ["alice@example.com".to_owned(), alice.id.clone()] {
        let err = p.get_user(GetUserRequest { user }).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
    // The name is free again; the new alice is a new user with a new stream.
    let again = p
        .create_user(create_user_req("example.com", "alice", "secret123"))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(again.id, alice.id);
    assert_eq!(again.version, 0);
}

#[tokio::test]
async fn retries_with_the_same_request_id_append_nothing() {
    let (_dir, node) = node().await;
    let mut p = node.provisioning().await.unwrap();
    let req = CreateDomainRequest {
        name: "example.com".into(),
        request_id: "req-domain-1".into(),
        ..Default::default()
    };
    let first = p.create_domain(req.clone()).await.unwrap().into_inner();
    let again = p.create_domain(req).await.unwrap().into_inner();
    assert_eq!(first.id, again.id);
    assert_eq!(again.version, first.version);

    let req = CreateUserRequest {
        request_id: "req-user-1".into(),
        ..create_user_req("example.com", "alice", "secret123")
    };
    let first = p.create_user(req.clone()).await.unwrap().into_inner();
    let events_before = read_all(&node).await.unwrap().len();
    let again = p.create_user(req).await.unwrap().into_inner();
    assert_eq!(first.id, again.id);
    assert_eq!(read_all(&node).await.unwrap().len(), events_before);

    let set = SetPasswordRequest {
        user: "alice@example.com".into(),
        password: "a new password".into(),
        request_id: "req-pw-1".into(),
        expected_version: Some(0),
    };
    let first = p.set_password(set.clone()).await.unwrap().into_inner();
    // The retry carries a now-stale expected version: still the first result.
    let again = p.set_password(set).await.unwrap().into_inner();
    assert_eq!(first.version, 1);
    assert_eq!(again.version, 1);
    assert_eq!(read_all(&node).await.unwrap().len(), events_before + 1);
}

#[tokio::test]
async fn concurrent_creates_of_one_name_have_exactly_one_winner() {
    let (_dir, node) = node().await;
    let mut p = node.provisioning().await.unwrap();
    p.create_domain(CreateDomainRequest {
        name: "example.com".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let mut client = node.provisioning().await.unwrap();
        tasks.push(tokio::spawn(async move {
            client
                .create_user(create_user_req(
                    "example.com",
                    "alice",
                    &format!("password-{i}"),
                ))
                .await
        }));
    }
    let mut winners = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => winners += 1,
            Err(e) => assert_eq!(e.code(), Code::AlreadyExists, "{e:?}"),
        }
    }
    assert_eq!(winners, 1);
    let users = p
        .list_users(ListUsersRequest {
            domain: "example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .users;
    assert_eq!(users.len(), 1);
    let domain = p
        .get_domain(GetDomainRequest {
            domain: "example.com".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(domain.user_count, 1);
}

#[tokio::test]
async fn passwords_never_appear_in_events_responses_or_the_database() {
    let (dir, node) = node().await;
    let mut p = node.provisioning().await.unwrap();
    p.create_domain(CreateDomainRequest {
        name: "example.com".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let secret = "Sup3r-Secret-Passw0rd";
    let second = "An0ther-Secret-Passw0rd";
    let created = p
        .create_user(create_user_req("example.com", "alice", secret))
        .await
        .unwrap()
        .into_inner();
    let changed = p
        .set_password(SetPasswordRequest {
            user: "alice@example.com".into(),
            password: second.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for response in [format!("{created:?}"), format!("{changed:?}")] {
        assert!(!response.contains(secret) && !response.contains(second));
    }
    let events = read_all(&node).await.unwrap();
    let credential_events: Vec<_> = events
        .iter()
        .filter(|e| e.r#type == "UserCreated" || e.r#type == "PasswordChanged")
        .collect();
    assert_eq!(credential_events.len(), 2);
    for e in &events {
        assert!(!e.data_json.contains(secret) && !e.data_json.contains(second));
        // HA1 values are password equivalents: the API never shows them.
        assert!(!e.data_json.contains("ha1"), "{}", e.data_json);
    }
    node.stop().await.unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            for needle in [secret, second] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                    "{} contains a password",
                    path.display()
                );
            }
        }
    }
}

#[tokio::test]
async fn read_stream_and_read_all_return_envelopes_in_order() {
    let (_dir, node) = node().await;
    let mut p = node.provisioning().await.unwrap();
    let domain = p
        .create_domain(CreateDomainRequest {
            name: "example.com".into(),
            request_id: "corr-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for i in 0..5 {
        p.create_user(create_user_req(
            "example.com",
            &format!("u{i}"),
            "secret123",
        ))
        .await
        .unwrap();
    }
    let mut events = node.events().await.unwrap();
    let stream = format!("domain-{}", domain.id);
    let page = events
        .read_stream(ReadStreamRequest {
            stream: stream.clone(),
            from_version: 0,
            max_count: 4,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.events.len(), 4);
    assert!(!page.end_of_stream);
    let first = &page.events[0];
    assert_eq!(first.r#type, "DomainCreated");
    assert_eq!(first.version, 0);
    assert_eq!(first.correlation_id, "corr-1");
    assert_eq!(first.domain_id, domain.id);
    assert_eq!(first.category, "provisioning");
    assert_eq!(first.schema_version, 1);
    assert!(first.occurred_at.is_some());
    assert!(!first.node.is_empty());
    let rest = events
        .read_stream(ReadStreamRequest {
            stream,
            from_version: page.next_version,
            max_count: 100,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.events.len(), 2);
    assert!(rest.end_of_stream);
    let versions: Vec<u64> = page
        .events
        .iter()
        .chain(&rest.events)
        .map(|e| e.version)
        .collect();
    assert_eq!(versions, (0..6).collect::<Vec<_>>());

    let all = read_all(&node).await.unwrap();
    let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=all.len() as u64).collect::<Vec<_>>());
    let ids: HashSet<_> = all.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(ids.len(), all.len());

    let err = events
        .read_stream(ReadStreamRequest {
            stream: "  ".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}
