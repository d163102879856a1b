//! Restarts, clean and `kill -9`: every acknowledged change survives, exactly
//! once, and the actors rebuild the same state from the log.

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dialtone_api::pb::*;
use support::{read_all, TestNode};

#[tokio::test]
async fn state_survives_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]).await.unwrap();
    let mut p = node.provisioning().await.unwrap();
    p.create_domain(CreateDomainRequest {
        name: "example.com".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut before = Vec::new();
    for i in 0..20 {
        let user = p
            .create_user(CreateUserRequest {
                domain: "example.com".into(),
                username: format!("user{i:02}"),
                password: "secret123".into(),
                display_name: format!("User {i}"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        before.push(user);
    }
    p.update_user(UpdateUserRequest {
        user: "user03@example.com".into(),
        enabled: Some(false),
        ..Default::default()
    })
    .await
    .unwrap();
    p.suspend_domain(SuspendDomainRequest {
        domain: "example.com".into(),
        reason: "maintenance".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let events_before = read_all(&node).await.unwrap();
    node.stop().await.unwrap();

    let node = TestNode::start(dir.path(), &[]).await.unwrap();
    let mut p = node.provisioning().await.unwrap();
    let domain = p
        .get_domain(GetDomainRequest {
            domain: "example.com".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(domain.status, DomainStatus::Suspended as i32);
    assert_eq!(domain.suspend_reason, "maintenance");
    assert_eq!(domain.user_count, 20);
    for user in &before {
        let now = p
            .get_user(GetUserRequest {
                user: user.address.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(now.id, user.id);
        assert_eq!(now.display_name, user.display_name);
        assert_eq!(now.enabled, user.address != "user03@example.com");
    }
    assert_eq!(read_all(&node).await.unwrap(), events_before);
    node.stop().await.unwrap();
}

#[tokio::test]
async fn kill_9_during_a_burst_of_creates_loses_no_acknowledged_user() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]).await.unwrap();
    let mut p = node.provisioning().await.unwrap();
    p.create_domain(CreateDomainRequest {
        name: "example.com".into(),
        ..Default::default()
    })
    .await
    .unwrap();

    let acknowledged = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let mut writers = Vec::new();
    for w in 0..8 {
        let mut client = node.provisioning().await.unwrap();
        let acknowledged = acknowledged.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..10_000 {
                let username = format!("w{w}u{i}");
                let result = client
                    .create_user(CreateUserRequest {
                        domain: "example.com".into(),
                        username: username.clone(),
                        password: "secret123".into(),
                        request_id: format!("create-{username}"),
                        ..Default::default()
                    })
                    .await;
                match result {
                    Ok(user) => acknowledged
                        .lock()
                        .unwrap()
                        .push((username, user.into_inner().id)),
                    // The node died: stop this writer.
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.kill9().await.unwrap();
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 50,
        "only {} creates before the kill",
        acknowledged.len()
    );

    let node = TestNode::start(dir.path(), &[]).await.unwrap();
    let mut p = node.provisioning().await.unwrap();
    for (username, id) in &acknowledged {
        let user = p
            .get_user(GetUserRequest {
                user: format!("{username}@example.com"),
            })
            .await
            .unwrap_or_else(|e| panic!("acknowledged {username} lost: {e:?}"))
            .into_inner();
        assert_eq!(&user.id, id);
    }
    // Listing shows each name once; nothing is duplicated.
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = p
            .list_users(ListUsersRequest {
                domain: "example.com".into(),
                page_size: 1000,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        names.extend(page.users.into_iter().map(|u| u.username));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let unique: HashSet<_> = names.iter().collect();
    assert_eq!(unique.len(), names.len());
    assert!(names.len() >= acknowledged.len());

    // The log has no gap and no event twice.
    let events = read_all(&node).await.unwrap();
    let positions: Vec<u64> = events.iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=events.len() as u64).collect::<Vec<_>>());
    let ids: HashSet<_> = events.iter().map(|e| &e.event_id).collect();
    assert_eq!(ids.len(), events.len());
    let claims = events
        .iter()
        .filter(|e| e.r#type == "UserNameClaimed")
        .count();
    assert_eq!(claims, names.len());

    // A retried create of an acknowledged user returns it and appends nothing.
    let (username, id) = &acknowledged[0];
    let again = p
        .create_user(CreateUserRequest {
            domain: "example.com".into(),
            username: username.clone(),
            password: "secret123".into(),
            request_id: format!("create-{username}"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&again.id, id);
    assert_eq!(read_all(&node).await.unwrap().len(), events.len());
    node.stop().await.unwrap();
}
