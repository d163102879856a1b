//! `seed-log`: writes a large, valid history straight into the event log, the
//! way the actors would have (same event types, envelopes and streams), so
//! that recovery and memory can be measured on a node with many users
//! without waiting for hours of provisioning.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use dialtone_domain::credentials::{Credentials, PasswordPolicy};
use dialtone_domain::domain::{self, Settings};
use dialtone_domain::{user, DomainId, DomainName, Event, UserId, UserName};
use dialtone_eventlog::sqlite::{SqliteOptions, SqliteStore};
use dialtone_eventlog::{EventStore, ExpectedVersion, NewEvent};

fn encode(
    event: Event,
    domain_id: DomainId,
    user_id: Option<UserId>,
    now: i64,
) -> anyhow::Result<NewEvent> {
    Ok(NewEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: event.event_type().to_owned(),
        schema_version: event.schema_version(),
        occurred_at_us: now,
        domain_id: Some(domain_id.0),
        user_id: user_id.map(|u| u.0),
        correlation_id: None,
        data: event.to_data()?,
    })
}

pub async fn run(
    data_dir: &Path,
    domain: &str,
    users: usize,
    events_per_user: usize,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)?;
    let store = Arc::new(
        SqliteStore::open(&data_dir.join("events.db"), SqliteOptions::default())
            .context("opening the log")?,
    );
    let name = DomainName::parse(domain)?;
    let domain_id = DomainId::for_name(&name);
    let now = dialtone_actors_now();
    let created = Event::Domain(domain::Event::DomainCreated {
        domain_id,
        name: name.clone(),
        settings: Settings::default(),
        created_at: now,
    });
    store
        .append(
            &domain_id.stream(),
            ExpectedVersion::NoStream,
            vec![encode(created, domain_id, None, now)?],
        )
        .await
        .context("the domain exists already: seed an empty data directory")?;
    // HA1 derivation is the same for every user here: derive once.
    let template = Credentials::derive(
        &UserName::parse("seed")?,
        &name,
        "seed-password",
        PasswordPolicy::default(),
        now,
    )?;
    let started = Instant::now();
    let writers = 64;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let name = name.clone();
        let template = template.clone();
        tasks.push(tokio::spawn(async move {
            let mut claims = Vec::new();
            for i in (w..users).step_by(writers) {
                let user_id = UserId(uuid::Uuid::new_v4());
                let username = UserName::parse(&format!("user{i:07}"))?;
                let mut events = vec![encode(
                    Event::User(user::Event::UserCreated {
                        user_id,
                        domain_id,
                        domain: name.clone(),
                        username: username.clone(),
                        display_name: format!("User {i}"),
                        caller_id: String::new(),
                        max_contacts: 10,
                        enabled: true,
                        credentials: template.clone(),
                        created_at: now,
                    }),
                    domain_id,
                    Some(user_id),
                    now,
                )?];
                for k in 1..events_per_user {
                    let event = if k % 2 == 1 {
                        user::Event::UserUpdated {
                            display_name: format!("User {i} v{k}"),
                            caller_id: String::new(),
                            max_contacts: 10,
                        }
                    } else {
                        user::Event::PasswordChanged {
                            credentials: template.clone(),
                        }
                    };
                    events.push(encode(Event::User(event), domain_id, Some(user_id), now)?);
                }
                store
                    .append(&user_id.stream(), ExpectedVersion::NoStream, events)
                    .await?;
                claims.push((username, user_id));
            }
            Ok::<_, anyhow::Error>(claims)
        }));
    }
    let mut claims = Vec::with_capacity(users);
    for task in tasks {
        claims.extend(task.await??);
    }
    // The domain's claims, in chunks (one stream, so one writer).
    let mut version = 0u64;
    for chunk in claims.chunks(1000) {
        let events = chunk
            .iter()
            .map(|(username, user_id)| {
                encode(
                    Event::Domain(domain::Event::UserNameClaimed {
                        username: username.clone(),
                        user_id: *user_id,
                    }),
                    domain_id,
                    None,
                    now,
                )
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let outcome = store
            .append(&domain_id.stream(), ExpectedVersion::Exact(version), events)
            .await?;
        version = outcome.last_version;
    }
    store.close().await?;
    let total = users * events_per_user + users + 1;
    println!(
        "seeded {users} users, {total} events in {:.1} s ({:.0} events/s)",
        started.elapsed().as_secs_f64(),
        total as f64 / started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn dialtone_actors_now() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
