//! Event subscriptions against a real node process: subscribers that live
//! through a graceful restart and a `kill -9` and end with exactly the
//! sequence in the log, and the `events tail` / `replay` commands.
//!
//! (The engine under 200,000 concurrent appends, slow subscribers and the
//! lag limit are tested at the API level, in
//! `services/api/tests/event_api.rs`.)

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dialtone_api::pb::event_service_client::EventServiceClient;
use dialtone_api::pb::provisioning_service_client::ProvisioningServiceClient;
use dialtone_api::pb::subscribe_request::Start;
use dialtone_api::pb::subscribe_response::Message;
use dialtone_api::pb::{EventFilter, ReadAllRequest, SubscribeRequest, UpdateUserRequest};
use support::sip::{bounded, create_domain, create_users, DOMAIN, PASSWORD};
use support::TestNode;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::sync::watch;

/// The head position of the node's log.
async fn head(url: &str) -> anyhow::Result<u64> {
    let mut client = EventServiceClient::new(support::client(url).await?);
    let page = client
        .read_all(ReadAllRequest {
            from_position: 1,
            max_count: 1,
        })
        .await?
        .into_inner();
    Ok(page.head_position)
}

async fn wait_for_head(url: &str, position: u64) {
    while head(url).await.unwrap_or(0) < position {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Updates users' display names in a loop, following the node's address
/// across restarts; failed calls (the node is down) are simply retried.
fn writer(
    url: watch::Receiver<String>,
    users: Vec<String>,
    offset: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = offset;
        while !stop.load(Ordering::SeqCst) {
            let address = url.borrow().clone();
            let Ok(mut client) = support::client(&address)
                .await
                .map(ProvisioningServiceClient::new)
            else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            while !stop.load(Ordering::SeqCst) {
                let request = UpdateUserRequest {
                    user: users[n % users.len()].clone(),
                    display_name: Some(format!("name {n}")),
                    ..Default::default()
                };
                n += 7;
                if client.update_user(request).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    break;
                }
            }
        }
    })
}

/// What a subscriber saw.
#[derive(Debug, Default)]
struct Seen {
    /// (position, event id) of every event, in order of arrival.
    events: Vec<(u64, String)>,
    /// Where a "from now" subscription started (its first live checkpoint).
    started_at: Option<u64>,
    /// Subscriptions opened (1 + reconnections).
    subscriptions: u32,
    /// Resume positions the server gave when it ended a subscription.
    resume_trailers: Vec<u64>,
}

/// Subscribes with `first`, and after any failure subscribes again from the
/// last position seen + 1 on whatever address the node has now, until it
/// has seen `target` (once that is set).
fn subscriber(
    url: watch::Receiver<String>,
    first: SubscribeRequest,
    target: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Seen> {
    tokio::spawn(async move {
        let mut seen = Seen::default();
        let mut last: Option<u64> = None;
        loop {
            let reached = |last: Option<u64>| {
                let target = target.load(Ordering::SeqCst);
                target != 0 && last.is_some_and(|l| l >= target)
            };
            if reached(last) {
                return seen;
            }
            let address = url.borrow().clone();
            let Ok(mut client) = support::client(&address).await.map(EventServiceClient::new)
            else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let request = match last {
                None => first.clone(),
                Some(position) => SubscribeRequest {
                    start: Some(Start::FromPosition(position + 1)),
                    ..first.clone()
                },
            };
            let Ok(response) = client.subscribe(request).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            seen.subscriptions += 1;
            let mut stream = response.into_inner();
            loop {
                if reached(last) {
                    return seen;
                }
                let message = match tokio::time::timeout(
                    Duration::from_millis(100),
                    stream.message(),
                )
                .await
                {
                    Err(_) => continue,
                    Ok(Ok(Some(message))) => message,
                    Ok(Ok(None)) => break,
                    Ok(Err(status)) => {
                        // A server that stops says where to resume: at
                        // or after what was seen (a filtered subscriber
                        // may have been told less than was scanned).
                        if let Some(p) = status.metadata().get("dialtone-resume-position") {
                            let p: u64 = p.to_str().unwrap().parse().unwrap();
                            assert!(p >= last.map_or(1, |l| l + 1), "resume trailer {p}");
                            seen.resume_trailers.push(p);
                            last = Some(p - 1);
                        }
                        break;
                    }
                };
                match message.message {
                    Some(Message::Event(e)) => {
                        let envelope = e.envelope.unwrap();
                        assert!(
                            last.is_none_or(|l| envelope.position > l),
                            "out of order or duplicate"
                        );
                        last = Some(envelope.position);
                        seen.events.push((envelope.position, envelope.event_id));
                    }
                    Some(Message::Checkpoint(c)) => {
                        if seen.started_at.is_none() && c.live {
                            seen.started_at = Some(c.position);
                        }
                        last = Some(last.map_or(c.position, |l| l.max(c.position)));
                    }
                    None => {}
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribers_resume_across_a_restart_and_a_kill_9_with_the_full_sequence() {
    bounded(120, async {
        let dir = tempfile::tempdir().unwrap();
        let node = TestNode::start(dir.path(), &[]).await.unwrap();
        create_domain(&node, DOMAIN).await.unwrap();
        let names: Vec<String> = (0..8).map(|i| format!("u{i}")).collect();
        let users = create_users(&node, DOMAIN, &names, PASSWORD, 8)
            .await
            .unwrap();
        let watched = users[3].clone();
        let addresses: Vec<String> = users.iter().map(|u| u.address.clone()).collect();
        let (url_tx, url) = watch::channel(node.grpc_url.clone());
        let target = Arc::new(AtomicU64::new(0));

        let from_start = subscriber(url.clone(), SubscribeRequest::default(), target.clone());
        let filtered = subscriber(
            url.clone(),
            SubscribeRequest {
                filter: Some(EventFilter {
                    users: vec![watched.address.clone()],
                    ..Default::default()
                }),
                checkpoint_interval_ms: 100,
                ..Default::default()
            },
            target.clone(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|w| writer(url.clone(), addresses.clone(), w, stop.clone()))
            .collect();

        let middle = head(&node.grpc_url).await.unwrap() + 200;
        wait_for_head(&node.grpc_url, middle).await;
        let from_middle = subscriber(
            url.clone(),
            SubscribeRequest {
                start: Some(Start::FromPosition(middle)),
                ..Default::default()
            },
            target.clone(),
        );
        let from_now = subscriber(
            url.clone(),
            SubscribeRequest {
                start: Some(Start::FromNow(true)),
                ..Default::default()
            },
            target.clone(),
        );

        // A graceful restart: subscriptions end at once with where to
        // resume, so they do not hold the shutdown up.
        wait_for_head(&node.grpc_url, middle + 300).await;
        let stopping = Instant::now();
        node.stop().await.unwrap();
        let stop_secs = stopping.elapsed().as_secs_f64();
        assert!(stop_secs < 8.0, "stopping took {stop_secs:.1} s");
        let node = TestNode::start(dir.path(), &[]).await.unwrap();
        url_tx.send(node.grpc_url.clone()).unwrap();

        // A crash.
        let before_crash = head(&node.grpc_url).await.unwrap();
        wait_for_head(&node.grpc_url, before_crash + 300).await;
        node.kill9().await.unwrap();
        let node = TestNode::start(dir.path(), &[]).await.unwrap();
        url_tx.send(node.grpc_url.clone()).unwrap();

        let after_crash = head(&node.grpc_url).await.unwrap();
        wait_for_head(&node.grpc_url, after_crash + 300).await;
        stop.store(true, Ordering::SeqCst);
        for w in writers {
            w.await.unwrap();
        }
        let log = support::read_all(&node).await.unwrap();
        let last = log.last().unwrap().position;
        assert_eq!(log.len() as u64, last, "the log has no gaps");
        target.store(last, Ordering::SeqCst);

        let expected = |keep: &dyn Fn(&dialtone_api::pb::EventEnvelope) -> bool| {
            log.iter()
                .filter(|e| keep(e))
                .map(|e| (e.position, e.event_id.clone()))
                .collect::<Vec<_>>()
        };
        let seen = from_start.await.unwrap();
        assert_same(&seen, &expected(&|_| true), "from the start");
        assert!(seen.subscriptions >= 3, "{seen:?}");
        assert!(
            !seen.resume_trailers.is_empty(),
            "the graceful stop gave a resume position"
        );
        let seen = from_middle.await.unwrap();
        assert_eq!(
            seen.events,
            expected(&|e| e.position >= middle),
            "from the middle"
        );
        let seen = from_now.await.unwrap();
        let start = seen.started_at.unwrap();
        assert!(start >= middle);
        assert_same(&seen, &expected(&|e| e.position > start), "from now");
        let seen = filtered.await.unwrap();
        let mine = expected(&|e| e.user_id == watched.id);
        assert!(mine.len() > 10);
        assert_same(&seen, &mine, "filtered by user");
        eprintln!("{} events; {} for the watched user", log.len(), mine.len());
        node.stop().await.unwrap();
    })
    .await
}

/// Asserts that a subscriber saw exactly `expected`, reporting the first
/// difference (the sequences are long).
fn assert_same(seen: &Seen, expected: &[(u64, String)], what: &str) {
    let first_difference = seen
        .events
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(seen.events.len().min(expected.len()));
    assert!(
        seen.events.len() == expected.len() && first_difference == expected.len(),
        "{what}: saw {} events, expected {}; first difference at index {first_difference}: \
         saw {:?}, expected {:?}; started at {:?}, {} subscriptions, trailers {:?}",
        seen.events.len(),
        expected.len(),
        seen.events.get(first_difference),
        expected.get(first_difference),
        seen.started_at,
        seen.subscriptions,
        seen.resume_trailers,
    );
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `dialtone events tail ...` until `lines` lines are printed, then
/// interrupts it (Ctrl-C); returns the lines and what it printed on stderr.
async fn tail(
    node: &TestNode,
    args: &[&str],
    lines: usize,
    meanwhile: impl std::future::Future<Output = ()>,
) -> (Vec<String>, String) {
    let mut child = tokio::process::Command::new(support::binary())
        .env("DIALTONE_TOKEN", support::ADMIN_TOKEN)
        .args(["--server", &node.grpc_url])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    // Give the subscription a moment to be set up (for --from now).
    tokio::time::sleep(Duration::from_millis(500)).await;
    meanwhile.await;
    let mut out = Vec::new();
    while out.len() < lines {
        let line = tokio::time::timeout(Duration::from_secs(10), stdout.next_line())
            .await
            .expect("a line within 10 s")
            .unwrap()
            .expect("tail still running");
        out.push(line);
    }
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let output = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("tail exits on Ctrl-C")
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    (out, stderr(&output))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_events_tail_follows_filters_and_says_where_to_resume() {
    bounded(90, async {
        let dir = tempfile::tempdir().unwrap();
        let node = TestNode::start(dir.path(), &[]).await.unwrap();
        assert!(node
            .cli(&["domain", "create", "example.com"])
            .await
            .unwrap()
            .status
            .success());

        // From the start, as JSON lines, while a user is created.
        let (lines, err) = tail(
            &node,
            &["--json", "events", "tail", "--from", "start"],
            3,
            async {
                let out = node
                    .cli(&[
                        "user",
                        "create",
                        "alice@example.com",
                        "--password",
                        "secret123",
                    ])
                    .await
                    .unwrap();
                assert!(out.status.success(), "{}", stderr(&out));
            },
        )
        .await;
        let events: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["DomainCreated", "UserCreated", "UserNameClaimed"]);
        assert!(events.iter().all(|e| !e.to_string().contains("ha1")));
        assert!(
            err.contains("last position 3; resume with --from 4"),
            "{err}"
        );

        // Resuming there with a filter: only alice's updates, as text.
        let (lines, err) = tail(
            &node,
            &[
                "events",
                "tail",
                "--from",
                "4",
                "--user",
                "alice@example.com",
                "--type",
                "UserUpdated",
            ],
            2,
            async {
                for args in [
                    &["domain", "update", "example.com", "--description", "x"][..],
                    &["user", "update", "alice@example.com", "--display-name", "A"][..],
                    &["user", "disable", "alice@example.com"][..],
                    &["user", "update", "alice@example.com", "--display-name", "B"][..],
                ] {
                    assert!(node.cli(args).await.unwrap().status.success());
                }
            },
        )
        .await;
        assert!(lines.iter().all(|l| l.contains("UserUpdated")), "{lines:?}");
        assert!(
            lines[0].contains("\"A\"") && lines[1].contains("\"B\""),
            "{lines:?}"
        );
        // Checkpoints carry the position past the events that did not match.
        assert!(err.contains("resume with --from"), "{err}");

        // Bad arguments are reported with the field.
        let out = node
            .cli(&["events", "tail", "--type", "Nope"])
            .await
            .unwrap();
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("filter.event_types[0]"),
            "{}",
            stderr(&out)
        );
        node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn cli_replay_exports_a_range_as_json_lines() {
    bounded(60, async {
        let dir = tempfile::tempdir().unwrap();
        let node = TestNode::start(dir.path(), &[]).await.unwrap();
        for args in [
            &["domain", "create", "example.com"][..],
            &[
                "user",
                "create",
                "alice@example.com",
                "--password",
                "secret123",
            ][..],
            &[
                "user",
                "set-password",
                "alice@example.com",
                "--password",
                "another-1",
            ][..],
            &["user", "disable", "alice@example.com"][..],
        ] {
            let out = node.cli(args).await.unwrap();
            assert!(out.status.success(), "{}", stderr(&out));
        }
        let log = support::read_all(&node).await.unwrap();
        assert_eq!(log.len(), 5);

        let out = node
            .cli(&["--json", "replay", "--from", "2", "--to", "4"])
            .await
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let text = String::from_utf8(out.stdout).unwrap();
        let events: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let positions: Vec<u64> = events
            .iter()
            .map(|e| e["position"].as_u64().unwrap())
            .collect();
        assert_eq!(positions, [2, 3, 4]);
        for (e, envelope) in events.iter().zip(&log[1..4]) {
            assert_eq!(e["event_id"], envelope.event_id.as_str());
            assert_eq!(e["type"], envelope.r#type.as_str());
        }
        assert_eq!(events[2]["type"], "PasswordChanged");
        assert!(events[2]["data"]["credentials"]["set_at"].is_number());
        assert!(!text.contains("ha1"), "{text}");

        // Without bounds: everything, as text.
        let out = node.cli(&["replay"]).await.unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(text.lines().count(), 5, "{text}");
        assert!(text.lines().last().unwrap().contains("UserDisabled"));
        node.stop().await.unwrap();
    })
    .await
}
