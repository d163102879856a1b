//! gRPC authentication and scoping against a real node process: bearer
//! tokens on every service but health, the admin token's origins, domain
//! tokens that see nothing of other domains, revocation, secrets kept out
//! of the log, and TLS.

mod support;

use std::time::Duration;

use dialtone_api::pb::audit_service_client::AuditServiceClient;
use dialtone_api::pb::event_service_client::EventServiceClient;
use dialtone_api::pb::provisioning_service_client::ProvisioningServiceClient;
use dialtone_api::pb::status_service_client::StatusServiceClient;
use dialtone_api::pb::token_service_client::TokenServiceClient;
use dialtone_api::pb::*;
use support::{channel_with, read_all, TestNode, ADMIN_TOKEN};
use tonic::Code;

fn domain_req(name: &str) -> CreateDomainRequest {
    CreateDomainRequest {
        name: name.into(),
        ..Default::default()
    }
}

fn user_req(domain: &str, username: &str) -> CreateUserRequest {
    CreateUserRequest {
        domain: domain.into(),
        username: username.into(),
        password: "correct horse battery".into(),
        ..Default::default()
    }
}

/// One call to every service, each returning only its status code.
async fn one_call_per_service(url: &str, token: Option<&str>) -> Vec<(&'static str, Code)> {
    let channel = channel_with(url, token).await.unwrap();
    let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    vec![
        (
            "provisioning",
            code(
                ProvisioningServiceClient::new(channel.clone())
                    .list_domains(ListDomainsRequest::default())
                    .await
                    .map(drop),
            ),
        ),
        (
            "events.read_all",
            code(
                EventServiceClient::new(channel.clone())
                    .read_all(ReadAllRequest::default())
                    .await
                    .map(drop),
            ),
        ),
        (
            "events.subscribe",
            code(
                EventServiceClient::new(channel.clone())
                    .subscribe(SubscribeRequest::default())
                    .await
                    .map(drop),
            ),
        ),
        (
            "status",
            code(
                StatusServiceClient::new(channel.clone())
                    .list_online(ListOnlineRequest {
                        domain: "nowhere.test".into(),
                    })
                    .await
                    .map(drop),
            ),
        ),
        (
            "audit",
            code(
                AuditServiceClient::new(channel.clone())
                    .get_domain_state_at(GetDomainStateAtRequest {
                        domain: "nowhere.test".into(),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            ),
        ),
        (
            "tokens",
            code(
                TokenServiceClient::new(channel)
                    .list_tokens(ListTokensRequest {})
                    .await
                    .map(drop),
            ),
        ),
    ]
}

#[tokio::test]
async fn every_service_needs_a_valid_token_but_health_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]).await.unwrap();
    for token in [None, Some("wrong-token"), Some("dt_0123_abcd")] {
        for (service, code) in one_call_per_service(&node.grpc_url, token).await {
            assert_eq!(code, Code::Unauthenticated, "{service} with {token:?}");
        }
    }
    // The message says what to do.
    let err = ProvisioningServiceClient::new(channel_with(&node.grpc_url, None).await.unwrap())
        .list_domains(ListDomainsRequest::default())
        .await
        .unwrap_err();
    assert!(err.message().contains("authorization: Bearer"), "{err:?}");
    // With the admin token every service answers (NOT_FOUND for the
    // unknown domain is an answer).
    for (service, code) in one_call_per_service(&node.grpc_url, Some(ADMIN_TOKEN)).await {
        assert!(
            matches!(code, Code::Ok | Code::NotFound),
            "{service}: {code:?}"
        );
    }
    // Health needs no token.
    let channel = channel_with(&node.grpc_url, None).await.unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    // The CLI without a token says how to give one.
    let out = tokio::process::Command::new(support::binary())
        .args(["--server", &node.grpc_url, "domain", "list"])
        .env_remove("DIALTONE_TOKEN")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Unauthenticated") && stderr.contains("--token"),
        "{stderr}"
    );
    node.stop().await.unwrap();
}

#[tokio::test]
async fn a_generated_admin_token_is_kept_0600_and_printed_only_on_first_start() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start_with_token_file(dir.path(), &[])
        .await
        .unwrap();
    let token = node.token.clone().expect("admin.token written");
    assert!(token.len() >= 64, "{token}");
    let printed: Vec<&String> = node.stdout.iter().filter(|l| l.contains(&token)).collect();
    assert_eq!(printed.len(), 1, "{:?}", node.stdout);
    assert!(printed[0].starts_with("admin token"), "{printed:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    node.provisioning()
        .await
        .unwrap()
        .create_domain(domain_req("first.test"))
        .await
        .unwrap();
    node.stop().await.unwrap();

    let node = TestNode::start_with_token_file(dir.path(), &[])
        .await
        .unwrap();
    assert_eq!(node.token.as_deref(), Some(token.as_str()));
    assert!(
        node.stdout.iter().all(|l| !l.contains(&token)),
        "printed again: {:?}",
        node.stdout
    );
    let list = node
        .provisioning()
        .await
        .unwrap()
        .list_domains(ListDomainsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.domains.len(), 1);
    // The CLI with the token from the file.
    let out = node.cli(&["domain", "list"]).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    node.stop().await.unwrap();
}

#[tokio::test]
async fn the_admin_token_can_come_from_the_config_file_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dialtone.toml");
    std::fs::write(&config, "admin_token = \"from-the-config-file-0123\"\n").unwrap();
    let config_arg = config.to_str().unwrap();
    let mut node = TestNode::start_with_token_file(dir.path(), &["--config", config_arg])
        .await
        .unwrap();
    // Configured: no file is made, nothing is printed.
    assert!(!dir.path().join("admin.token").exists());
    assert_eq!(node.token, None);
    assert!(node.stdout.iter().all(|l| !l.contains("admin token")));
    node.token = Some("from-the-config-file-0123".into());
    node.provisioning()
        .await
        .unwrap()
        .list_domains(ListDomainsRequest::default())
        .await
        .unwrap();
    node.stop().await.unwrap();

    // DIALTONE_ADMIN_TOKEN wins over the file.
    let mut node = TestNode::start_with_env(
        dir.path(),
        &["--config", config_arg],
        &[("DIALTONE_ADMIN_TOKEN", "from-the-environment-0123")],
    )
    .await
    .unwrap();
    node.token = Some("from-the-config-file-0123".into());
    let err = node
        .provisioning()
        .await
        .unwrap()
        .list_domains(ListDomainsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    node.token = Some("from-the-environment-0123".into());
    node.provisioning()
        .await
        .unwrap()
        .list_domains(ListDomainsRequest::default())
        .await
        .unwrap();
    node.stop().await.unwrap();
}

fn assert_not_found<T: std::fmt::Debug>(what: &str, result: Result<T, tonic::Status>) {
    match result {
        Err(status) => assert_eq!(status.code(), Code::NotFound, "{what}: {status:?}"),
        Ok(v) => panic!("{what}: answered {v:?}"),
    }
}

/// Subscribes from the start and collects events until the subscription
/// is live.
async fn subscribe_all(
    client: &mut EventServiceClient<support::Channel>,
    filter: Option<EventFilter>,
) -> Result<Vec<EventEnvelope>, tonic::Status> {
    let mut stream = client
        .subscribe(SubscribeRequest {
            filter,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut events = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("subscription stalled")?;
        match message.and_then(|m| m.message) {
            Some(subscribe_response::Message::Event(e)) => events.extend(e.envelope),
            Some(subscribe_response::Message::Checkpoint(c)) if c.live => return Ok(events),
            Some(_) => {}
            None => return Ok(events),
        }
    }
}

#[tokio::test]
async fn a_domain_token_sees_and_changes_only_its_domain_until_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]).await.unwrap();
    let mut admin = node.provisioning().await.unwrap();
    for domain in ["a.test", "b.test"] {
        admin.create_domain(domain_req(domain)).await.unwrap();
    }
    let alice = admin
        .create_user(user_req("a.test", "alice"))
        .await
        .unwrap()
        .into_inner();
    let bob = admin
        .create_user(user_req("b.test", "bob"))
        .await
        .unwrap()
        .into_inner();
    admin
        .update_user(UpdateUserRequest {
            user: bob.id.clone(),
            display_name: Some("Bob B".into()),
            ..Default::default()
        })
        .await
        .unwrap();

    let mut tokens = TokenServiceClient::new(node.channel().await.unwrap());
    let created = tokens
        .create_token(CreateTokenRequest {
            scope: "a.test".into(),
            description: "a's robot".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let secret = created.secret.clone();
    let token_id = created.token.unwrap().token_id;
    // A token for a domain that does not exist is NOT_FOUND.
    let err = tokens
        .create_token(CreateTokenRequest {
            scope: "nowhere.test".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let channel = channel_with(&node.grpc_url, Some(&secret)).await.unwrap();
    let mut p = ProvisioningServiceClient::new(channel.clone());
    let mut status = StatusServiceClient::new(channel.clone());
    let mut audit = AuditServiceClient::new(channel.clone());
    let mut events = EventServiceClient::new(channel.clone());
    let mut its_tokens = TokenServiceClient::new(channel.clone());

    // Its own domain works.
    p.get_domain(GetDomainRequest {
        domain: "a.test".into(),
    })
    .await
    .unwrap();
    p.create_user(user_req("a.test", "carol")).await.unwrap();
    p.update_user(UpdateUserRequest {
        user: alice.id.clone(),
        display_name: Some("Alice A".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let users = p
        .list_users(ListUsersRequest {
            domain: "a.test".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(users.users.len(), 2);
    status
        .get_registrations(GetRegistrationsRequest {
            user: "alice@a.test".into(),
        })
        .await
        .unwrap();
    audit
        .get_user_state_at(GetUserStateAtRequest {
            user: alice.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    events
        .read_stream(ReadStreamRequest {
            stream: format!("user-{}", alice.id),
            ..Default::default()
        })
        .await
        .unwrap();

    // The other domain does not exist for it: the same answer as for a
    // domain that really does not exist.
    let foreign = p
        .get_domain(GetDomainRequest {
            domain: "b.test".into(),
        })
        .await
        .unwrap_err();
    let absent = p
        .get_domain(GetDomainRequest {
            domain: "c.test".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::NotFound);
    assert_eq!(
        foreign.message().replace("b.test", "X"),
        absent.message().replace("c.test", "X")
    );
    assert_not_found(
        "UpdateDomain",
        p.update_domain(UpdateDomainRequest {
            domain: "b.test".into(),
            description: Some("mine now".into()),
            ..Default::default()
        })
        .await,
    );
    assert_not_found(
        "SuspendDomain",
        p.suspend_domain(SuspendDomainRequest {
            domain: "b.test".into(),
            ..Default::default()
        })
        .await,
    );
    assert_not_found(
        "DeleteDomain",
        p.delete_domain(DeleteDomainRequest {
            domain: "b.test".into(),
            ..Default::default()
        })
        .await,
    );
    assert_not_found(
        "CreateUser",
        p.create_user(user_req("b.test", "mallory")).await,
    );
    assert_not_found(
        "ListUsers",
        p.list_users(ListUsersRequest {
            domain: "b.test".into(),
            ..Default::default()
        })
        .await,
    );
    for user in [bob.id.clone(), "bob@b.test".to_owned()] {
        assert_not_found(
            "GetUser",
            p.get_user(GetUserRequest { user: user.clone() }).await,
        );
        assert_not_found(
            "UpdateUser",
            p.update_user(UpdateUserRequest {
                user: user.clone(),
                enabled: Some(false),
                ..Default::default()
            })
            .await,
        );
        assert_not_found(
            "SetPassword",
            p.set_password(SetPasswordRequest {
                user: user.clone(),
                password: "taken over".into(),
                ..Default::default()
            })
            .await,
        );
        assert_not_found(
            "DeleteUser",
            p.delete_user(DeleteUserRequest {
                user: user.clone(),
                ..Default::default()
            })
            .await,
        );
        assert_not_found(
            "GetRegistrations",
            status
                .get_registrations(GetRegistrationsRequest { user: user.clone() })
                .await,
        );
        assert_not_found(
            "GetPresence",
            status
                .get_presence(GetPresenceRequest { user: user.clone() })
                .await,
        );
        assert_not_found(
            "GetUserStateAt",
            audit
                .get_user_state_at(GetUserStateAtRequest {
                    user: user.clone(),
                    ..Default::default()
                })
                .await,
        );
    }
    assert_not_found(
        "ListOnline",
        status
            .list_online(ListOnlineRequest {
                domain: "b.test".into(),
            })
            .await,
    );
    assert_not_found(
        "ListActiveCalls",
        status
            .list_active_calls(ListActiveCallsRequest {
                domain: "b.test".into(),
            })
            .await,
    );
    assert_not_found(
        "GetDomainStateAt",
        audit
            .get_domain_state_at(GetDomainStateAtRequest {
                domain: "b.test".into(),
                ..Default::default()
            })
            .await,
    );
    assert_not_found(
        "ListCalls",
        audit
            .list_calls(ListCallsRequest {
                domain: "b.test".into(),
                ..Default::default()
            })
            .await,
    );
    for stream in [
        format!("user-{}", bob.id),
        format!(
            "domain-{}",
            admin
                .get_domain(GetDomainRequest {
                    domain: "b.test".into()
                })
                .await
                .unwrap()
                .into_inner()
                .id
        ),
        "tokens".to_owned(),
    ] {
        assert_not_found(
            &format!("ReadStream {stream}"),
            events
                .read_stream(ReadStreamRequest {
                    stream,
                    ..Default::default()
                })
                .await,
        );
    }
    // Nothing changed in b.test.
    let b = admin
        .get_user(GetUserRequest {
            user: bob.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(b.enabled);

    // Admin-only operations.
    let err = p.create_domain(domain_req("c.test")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = its_tokens
        .list_tokens(ListTokensRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = its_tokens
        .create_token(CreateTokenRequest {
            scope: "admin".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // ListDomains: only its own.
    let list = p
        .list_domains(ListDomainsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = list.domains.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["a.test"]);
    let a_id = list.domains[0].id.clone();

    // ReadAll and Subscribe: only its domain's events, all of them.
    let everything = read_all(&node).await.unwrap();
    let expected: Vec<u64> = everything
        .iter()
        .filter(|e| e.domain_id == a_id)
        .map(|e| e.position)
        .collect();
    assert!(expected.len() >= 5, "{expected:?}");
    let mut seen = Vec::new();
    let mut from = 1;
    loop {
        let page = events
            .read_all(ReadAllRequest {
                from_position: from,
                max_count: 2,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.events.iter().all(|e| e.domain_id == a_id));
        seen.extend(page.events.iter().map(|e| e.position));
        if page.next_position > page.head_position {
            break;
        }
        from = page.next_position;
    }
    assert_eq!(seen, expected);
    let subscribed = subscribe_all(&mut events, None).await.unwrap();
    assert_eq!(
        subscribed.iter().map(|e| e.position).collect::<Vec<_>>(),
        expected
    );
    let only_users = subscribe_all(
        &mut events,
        Some(EventFilter {
            categories: vec!["provisioning".into()],
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    assert!(only_users.iter().all(|e| e.domain_id == a_id));
    for filter in [
        EventFilter {
            domains: vec!["b.test".into()],
            ..Default::default()
        },
        EventFilter {
            users: vec![bob.id.clone()],
            ..Default::default()
        },
        EventFilter {
            users: vec!["bob@b.test".into()],
            ..Default::default()
        },
    ] {
        let err = subscribe_all(&mut events, Some(filter.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{filter:?}");
    }

    // Revoked: refused from the next call on.
    let revoked = tokens
        .revoke_token(RevokeTokenRequest {
            token_id: token_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoked);
    let err = p
        .get_domain(GetDomainRequest {
            domain: "a.test".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let listed = tokens
        .list_tokens(ListTokensRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tokens.len(), 1);
    assert!(listed.tokens[0].revoked);
    assert_eq!(listed.tokens[0].scope, "a.test");

    // The secret (nor its hash) is nowhere in what the log shows.
    let secret_part = secret.rsplit('_').next().unwrap().to_owned();
    let log = read_all(&node).await.unwrap();
    let token_events: Vec<&EventEnvelope> =
        log.iter().filter(|e| e.category == "security").collect();
    assert_eq!(
        token_events
            .iter()
            .map(|e| e.r#type.as_str())
            .collect::<Vec<_>>(),
        ["TokenCreated", "TokenRevoked"]
    );
    for e in &log {
        let shown = format!("{e:?}");
        assert!(!shown.contains(&secret_part), "secret in {shown}");
        assert!(!shown.contains("secret_sha256"), "hash in {shown}");
    }
    // Nor in the database file itself (only its hash is).
    let db = std::fs::read(dir.path().join("events.db")).unwrap();
    let wal = std::fs::read(dir.path().join("events.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(!bytes
            .windows(secret_part.len())
            .any(|w| w == secret_part.as_bytes()));
    }
    // After a restart the revocation still holds.
    node.stop().await.unwrap();
    let node = TestNode::start(dir.path(), &[]).await.unwrap();
    let err =
        ProvisioningServiceClient::new(channel_with(&node.grpc_url, Some(&secret)).await.unwrap())
            .list_domains(ListDomainsRequest::default())
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    node.stop().await.unwrap();
}

#[tokio::test]
async fn a_domain_token_survives_a_restart_and_the_cli_manages_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]).await.unwrap();
    node.provisioning()
        .await
        .unwrap()
        .create_domain(domain_req("a.test"))
        .await
        .unwrap();
    let out = node
        .cli(&["--json", "token", "create", "a.test", "--description", "ci"])
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let created: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    let secret = created["secret"].as_str().unwrap().to_owned();
    node.stop().await.unwrap();

    let node = TestNode::start(dir.path(), &[]).await.unwrap();
    let out = tokio::process::Command::new(support::binary())
        .args(["--server", &node.grpc_url, "domain", "list"])
        .env("DIALTONE_TOKEN", &secret)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("a.test"));
    let out = node.cli(&["token", "list"]).await.unwrap();
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        listed.contains("a.test") && !listed.contains(&secret),
        "{listed}"
    );
    node.stop().await.unwrap();
}

#[tokio::test]
async fn grpc_over_tls_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let node = TestNode::start(
        &data,
        &[
            "--grpc-tls-cert",
            cert.to_str().unwrap(),
            "--grpc-tls-key",
            key.to_str().unwrap(),
        ],
    )
    .await
    .unwrap();
    let https = node.grpc_url.replace("http://", "https://");

    // The CLI with --ca-cert talks to it.
    let cli = |args: Vec<String>| {
        let mut command = tokio::process::Command::new(support::binary());
        command.env("DIALTONE_TOKEN", ADMIN_TOKEN).args(args);
        command
    };
    let out = cli(vec![
        "--server".into(),
        https.clone(),
        "--ca-cert".into(),
        cert.to_str().unwrap().into(),
        "domain".into(),
        "create".into(),
        "tls.test".into(),
    ])
    .output()
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = cli(vec![
        "--server".into(),
        https.clone(),
        "--ca-cert".into(),
        cert.to_str().unwrap().into(),
        "domain".into(),
        "list".into(),
    ])
    .output()
    .await
    .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("tls.test"));

    // Without the CA the certificate is not trusted.
    let out = cli(vec![
        "--server".into(),
        https.clone(),
        "domain".into(),
        "list".into(),
    ])
    .output()
    .await
    .unwrap();
    assert!(!out.status.success(), "{out:?}");

    // A plaintext client gets nowhere.
    let plain = tokio::time::timeout(Duration::from_secs(10), async {
        let channel = channel_with(&node.grpc_url, Some(ADMIN_TOKEN)).await?;
        ProvisioningServiceClient::new(channel)
            .list_domains(ListDomainsRequest::default())
            .await
            .map_err(anyhow::Error::from)
    })
    .await;
    assert!(!matches!(plain, Ok(Ok(_))), "plaintext call succeeded");
    node.kill9().await.unwrap();
}
