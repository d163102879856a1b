//! Voicemail boxes over the API, black box: a real node, its mailbox
//! settings, PIN and greetings over real gRPC and the CLI, every kind of
//! bad input refused with a message naming what is wrong (and, for audio,
//! how to fix it), a domain token kept to its domain. Messages are left by
//! callers through SIP; there is no API for that, so the message test
//! leaves one through the user actor itself on the stopped node's log and
//! blob store (as the node's voicemail calls do: audio first, then the
//! event), restarts the node and works on it over gRPC and the CLI.
//! The sweeper test ages the stopped node's blobs in `blobs.sqlite3` and
//! adds orphans there, then lets the restarted node sweep.

mod support;

use std::sync::Arc;

use dialtone_api::pb::voicemail_service_client::VoicemailServiceClient;
use dialtone_api::pb::*;
use support::sip::{create_domain, create_user, DOMAIN, PASSWORD};
use support::{channel_with, Channel, TestNode};
use tonic::Code;

const OTHER: &str = "other.test";

fn alice() -> String {
    format!("alice@{DOMAIN}")
}

async fn node(dir: &std::path::Path) -> TestNode {
    let node = TestNode::start(dir, &[]).await.unwrap();
    create_domain(&node, DOMAIN).await.unwrap();
    create_domain(&node, OTHER).await.unwrap();
    create_user(&node, DOMAIN, "alice", PASSWORD, 0)
        .await
        .unwrap();
    node
}

async fn voicemail(node: &TestNode) -> VoicemailServiceClient<Channel> {
    VoicemailServiceClient::new(node.channel().await.unwrap())
}

fn configure(user: &str) -> ConfigureMailboxRequest {
    ConfigureMailboxRequest {
        user: user.into(),
        ..Default::default()
    }
}

/// A WAV file of 16-bit PCM: a 440 Hz tone of `ms` milliseconds.
fn wav(rate: u32, channels: u16, ms: u32) -> Vec<u8> {
    let frames = u64::from(rate) * u64::from(ms) / 1000;
    let data = u32::try_from(frames * u64::from(channels) * 2).unwrap();
    let mut out = Vec::with_capacity(44 + data as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * u32::from(channels) * 2).to_le_bytes());
    out.extend_from_slice(&(channels * 2).to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data.to_le_bytes());
    for i in 0..frames {
        let t = i as f64 / f64::from(rate);
        let sample = ((t * 440.0 * std::f64::consts::TAU).sin() * 8000.0) as i16;
        for _ in 0..channels {
            out.extend_from_slice(&sample.to_le_bytes());
        }
    }
    out
}

/// Uploads `bytes` as `user`'s greeting in 64 KiB chunks.
async fn upload(
    client: &mut VoicemailServiceClient<Channel>,
    user: &str,
    bytes: &[u8],
) -> Result<Mailbox, tonic::Status> {
    let mut chunks: Vec<GreetingChunk> = bytes
        .chunks(64 * 1024)
        .map(|data| GreetingChunk {
            data: data.to_vec(),
            ..Default::default()
        })
        .collect();
    chunks[0].user = user.into();
    client
        .set_greeting(futures::stream::iter(chunks))
        .await
        .map(|r| r.into_inner())
}

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn mailbox_settings_pins_and_greetings_are_checked_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let mut vm = voicemail(&node).await;

    // A mailbox needs a PIN to be enabled, and a PIN is digits.
    let err = vm
        .configure_mailbox(ConfigureMailboxRequest {
            enabled: Some(true),
            ..configure(&alice())
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("pin"), "{}", err.message());
    let err = vm
        .configure_mailbox(ConfigureMailboxRequest {
            enabled: Some(true),
            pin: Some("12a4".into()),
            ..configure(&alice())
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "invalid pin: must be 4 to 12 digits");
    let err = vm
        .configure_mailbox(ConfigureMailboxRequest {
            max_message_secs: Some(601),
            ..configure(&alice())
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("max_message_secs"),
        "{}",
        err.message()
    );
    // Nothing of it was applied.
    let mailbox = vm
        .get_mailbox(GetMailboxRequest { user: alice() })
        .await
        .unwrap()
        .into_inner();
    assert!(!mailbox.enabled && !mailbox.has_pin);

    // Enabled with the CLI, shown over gRPC and by the CLI.
    stdout(
        &node
            .cli(&[
                "voicemail",
                "enable",
                &alice(),
                "--pin",
                "4321",
                "--max-messages",
                "50",
                "--unsolicited-mwi",
                "true",
            ])
            .await
            .unwrap(),
    );
    let mailbox = vm
        .get_mailbox(GetMailboxRequest { user: alice() })
        .await
        .unwrap()
        .into_inner();
    assert!(mailbox.enabled && mailbox.has_pin && mailbox.unsolicited_mwi);
    assert_eq!(mailbox.user, alice());
    assert_eq!((mailbox.max_messages, mailbox.max_message_secs), (50, 180));
    assert_eq!((mailbox.new_messages, mailbox.saved_messages), (0, 0));
    assert_eq!(mailbox.greeting, None);
    let shown: serde_json::Value = serde_json::from_str(&stdout(
        &node
            .cli(&["--json", "voicemail", "show", &alice()])
            .await
            .unwrap(),
    ))
    .unwrap();
    assert_eq!(shown["enabled"], true);
    assert_eq!(shown["has_pin"], true);
    assert_eq!(shown["max_messages"], 50);
    assert!(!shown.to_string().contains("4321"));
    let text = stdout(&node.cli(&["voicemail", "show", &alice()]).await.unwrap());
    assert!(text.contains("enabled       yes"), "{text}");
    // The PIN is in no event and no answer.
    let audit = node
        .audit()
        .await
        .unwrap()
        .get_user_state_at(GetUserStateAtRequest {
            user: alice(),
            at: None,
        })
        .await
        .unwrap()
        .into_inner();
    let audited = audit.state.unwrap().mailbox.unwrap();
    assert!(audited.enabled && audited.has_pin);
    assert_eq!(audited.settings.unwrap().max_messages, 50);
    let log = support::read_all(&node).await.unwrap();
    assert!(log.iter().any(|e| e.r#type == "MailboxPinChanged"));
    assert!(
        log.iter().all(|e| !e.data_json.contains("sha256$")),
        "a PIN hash left the node"
    );

    // Greetings: an 8 kHz WAV as it is; 48 kHz stereo converted.
    let mailbox = upload(&mut vm, &alice(), &wav(8000, 1, 3_000))
        .await
        .unwrap();
    assert_eq!(mailbox.greeting.map(|g| g.duration_ms), Some(3_000));
    let file = dir.path().join("greeting-48k.wav");
    std::fs::write(&file, wav(48_000, 2, 2_500)).unwrap();
    stdout(
        &node
            .cli(&["voicemail", "greeting", &alice(), file.to_str().unwrap()])
            .await
            .unwrap(),
    );
    let mailbox = vm
        .get_mailbox(GetMailboxRequest { user: alice() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mailbox.greeting.map(|g| g.duration_ms), Some(2_500));

    // Refused, saying why and what to do; the greeting stays.
    let err = upload(&mut vm, &alice(), &wav(44_100, 1, 1_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("44100 Hz"), "{}", err.message());
    assert!(
        err.message().contains("sox in.wav -r 8000"),
        "{}",
        err.message()
    );
    let err = upload(&mut vm, &alice(), b"Hello, I am not a sound.\n")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("not a WAV file"),
        "{}",
        err.message()
    );
    let err = upload(&mut vm, &alice(), &wav(8000, 1, 130_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("130 s long; the limit is 120 s"),
        "{}",
        err.message()
    );
    let text = dir.path().join("greeting.txt");
    std::fs::write(&text, "not audio").unwrap();
    let output = node
        .cli(&["voicemail", "greeting", &alice(), text.to_str().unwrap()])
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a WAV file"));
    let mailbox = vm
        .get_mailbox(GetMailboxRequest { user: alice() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mailbox.greeting.map(|g| g.duration_ms), Some(2_500));
    // Back to the default.
    stdout(
        &node
            .cli(&["voicemail", "greeting", &alice(), "--default"])
            .await
            .unwrap(),
    );
    let mailbox = vm
        .get_mailbox(GetMailboxRequest { user: alice() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mailbox.greeting, None);

    // Unknown messages are NOT_FOUND; a malformed id names the field.
    let unknown = format!("vm-{}", "0".repeat(32));
    let message = || MessageRequest {
        user: alice(),
        message_id: unknown.clone(),
        ..Default::default()
    };
    let err = vm.mark_message_read(message()).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = vm.delete_message(message()).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = vm
        .get_message_audio(GetMessageAudioRequest {
            user: alice(),
            message_id: unknown.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = vm
        .delete_message(MessageRequest {
            message_id: "../etc/passwd".into(),
            ..message()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("message_id"), "{}", err.message());
    let listed = vm
        .list_messages(ListMessagesRequest { user: alice() })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.messages.is_empty());
    let output = node
        .cli(&["voicemail", "get", &alice(), &unknown, "-o", "-"])
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("NotFound"));

    // A token of another domain sees nothing of alice's, as if she were
    // not there (the same answer as for a user that does not exist).
    let secret = node
        .channel()
        .await
        .map(dialtone_api::pb::token_service_client::TokenServiceClient::new)
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
        VoicemailServiceClient::new(channel_with(&node.grpc_url, Some(&secret)).await.unwrap());
    let err = other
        .get_mailbox(GetMailboxRequest { user: alice() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let absent = vm
        .get_mailbox(GetMailboxRequest {
            user: format!("nobody@{DOMAIN}"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.message(), format!("user {} not found", alice()));
    assert_eq!(absent.code(), Code::NotFound);
    let err = other
        .configure_mailbox(ConfigureMailboxRequest {
            enabled: Some(false),
            ..configure(&alice())
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = upload(&mut other, &alice(), &wav(8000, 1, 1_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = other
        .list_messages(ListMessagesRequest { user: alice() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    node.stop().await.unwrap();
}

/// Leaves a message of `ms` milliseconds in `user`'s mailbox on a stopped
/// node's data directory, as the node's voicemail calls do: the audio is
/// stored first, then `VoicemailLeft` is appended by the user's actor.
async fn leave_message(data_dir: &std::path::Path, user: &str, ms: u32) -> (String, Vec<u8>) {
    use dialtone_actors::{
        ActorSystem, Directory, DirectoryConfig, Meta, Provisioning, ProvisioningConfig, UserRef,
    };
    use dialtone_domain::mailbox::Command;
    use dialtone_domain::user;
    use dialtone_eventlog::sqlite::{SqliteOptions, SqliteStore};
    use dialtone_eventlog::{BlobStore, SharedStore, SqliteBlobStore};

    let store: SharedStore = Arc::new(
        SqliteStore::open(&data_dir.join("events.db"), SqliteOptions::new("test")).unwrap(),
    );
    let blobs = SqliteBlobStore::open(&data_dir.join("blobs.sqlite3"), Default::default()).unwrap();
    let system = ActorSystem::start(1).unwrap();
    let directory = Directory::new(
        store.clone(),
        system.arbiters().to_vec(),
        DirectoryConfig::default(),
    )
    .unwrap();
    let provisioning = Provisioning::new(directory.clone(), ProvisioningConfig::default());
    let view = provisioning
        .get_user(&UserRef::parse(user).unwrap())
        .await
        .unwrap();
    let id = dialtone_actors::new_audio_id();
    let audio = wav(8000, 1, ms);
    blobs
        .put(id.as_str(), bytes::Bytes::from(audio.clone()))
        .await
        .unwrap();
    directory
        .execute_user(
            view.state.id.unwrap(),
            user::Command::Mailbox(Command::Leave {
                message_id: id.clone(),
                from: format!("bob@{DOMAIN}"),
                duration_ms: ms,
            }),
            Meta::default(),
        )
        .await
        .unwrap();
    directory
        .passivate_all(std::time::Duration::from_secs(5))
        .await;
    tokio::task::spawn_blocking(move || system.shutdown())
        .await
        .unwrap();
    store.close().await.unwrap();
    blobs.close().await.unwrap();
    (id.to_string(), audio)
}

#[tokio::test]
async fn a_message_is_listed_streamed_saved_by_the_cli_marked_read_and_deleted_with_its_audio() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    stdout(
        &node
            .cli(&[
                "voicemail",
                "enable",
                &alice(),
                "--pin",
                "4321",
                "--max-message-secs",
                "600",
            ])
            .await
            .unwrap(),
    );
    node.stop().await.unwrap();
    // The longest message: 600 s, 9.6 MB, beyond gRPC's 4 MB messages.
    let (id, audio) = leave_message(dir.path(), &alice(), 600_000).await;
    let node = TestNode::start(dir.path(), &[]).await.unwrap();
    let mut vm = voicemail(&node).await;

    let listed = vm
        .list_messages(ListMessagesRequest { user: alice() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.messages.len(), 1);
    let message = &listed.messages[0];
    assert_eq!(message.message_id, id);
    assert_eq!(message.from, format!("bob@{DOMAIN}"));
    assert_eq!(message.duration_ms, 600_000);
    assert!(!message.read);
    let text = stdout(&node.cli(&["voicemail", "list", &alice()]).await.unwrap());
    assert!(text.contains(&id) && text.contains("new"), "{text}");

    // Streamed in 64 KiB chunks that add up to the stored file.
    let mut stream = vm
        .get_message_audio(GetMessageAudioRequest {
            user: alice(),
            message_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut received = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = stream.message().await.unwrap() {
        assert!(chunk.data.len() <= 64 * 1024);
        received.extend_from_slice(&chunk.data);
        chunks += 1;
    }
    assert_eq!(received.len(), audio.len());
    assert!(received == audio, "the audio differs from what was stored");
    assert_eq!(chunks, audio.len().div_ceil(64 * 1024));

    // The CLI writes it to a file.
    let file = dir.path().join("msg.wav");
    let text = stdout(
        &node
            .cli(&[
                "voicemail",
                "get",
                &alice(),
                &id,
                "-o",
                file.to_str().unwrap(),
            ])
            .await
            .unwrap(),
    );
    assert!(text.contains("msg.wav"), "{text}");
    assert!(std::fs::read(&file).unwrap() == audio);

    let mailbox = vm
        .mark_message_read(MessageRequest {
            user: alice(),
            message_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((mailbox.new_messages, mailbox.saved_messages), (0, 1));
    stdout(
        &node
            .cli(&["voicemail", "delete", &alice(), &id])
            .await
            .unwrap(),
    );
    let mailbox = vm
        .get_mailbox(GetMailboxRequest { user: alice() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((mailbox.new_messages, mailbox.saved_messages), (0, 0));
    let err = vm
        .get_message_audio(GetMessageAudioRequest {
            user: alice(),
            message_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    node.stop().await.unwrap();
    // The audio went with the message.
    let blobs = dialtone_eventlog::SqliteBlobStore::open(
        &dir.path().join("blobs.sqlite3"),
        Default::default(),
    )
    .unwrap();
    use dialtone_eventlog::BlobStore as _;
    assert_eq!(blobs.get(&id).await.unwrap(), None);
}

/// A counter's value from the node's Prometheus endpoint (0 when absent).
async fn scrape_counter(addr: &str, series: &str) -> f64 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Orphaned audio older than the grace period (a put whose event never
/// came) is swept by the node's first sweep; a young orphan, a blob that
/// is not voicemail audio, both messages and the greeting are kept, and
/// the replaced greeting's audio went when it was replaced.
#[tokio::test]
async fn orphaned_audio_older_than_the_grace_period_is_swept_and_named_audio_kept() {
    use dialtone_eventlog::{BlobStore as _, SqliteBlobStore};

    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    stdout(
        &node
            .cli(&["voicemail", "enable", &alice(), "--pin", "4321"])
            .await
            .unwrap(),
    );
    let mut vm = voicemail(&node).await;
    let first = upload(&mut vm, &alice(), &wav(8000, 1, 1000))
        .await
        .unwrap()
        .greeting
        .unwrap()
        .audio_id;
    let greeting = upload(&mut vm, &alice(), &wav(8000, 1, 1500))
        .await
        .unwrap()
        .greeting
        .unwrap()
        .audio_id;
    assert_ne!(first, greeting);
    node.stop().await.unwrap();
    let (m1, audio1) = leave_message(dir.path(), &alice(), 2_000).await;
    let (m2, audio2) = leave_message(dir.path(), &alice(), 3_000).await;

    // Orphans: audio put without its event (a crash between the two).
    let blob_path = dir.path().join("blobs.sqlite3");
    let old_orphan = format!("vm-{}", uuid::Uuid::new_v4().simple());
    let young_orphan = format!("vm-{}", uuid::Uuid::new_v4().simple());
    let foreign = "not-voicemail-audio";
    let blobs = SqliteBlobStore::open(&blob_path, Default::default()).unwrap();
    blobs
        .put(&old_orphan, bytes::Bytes::from(vec![7u8; 100_000]))
        .await
        .unwrap();
    blobs
        .put(&young_orphan, bytes::Bytes::from(vec![8u8; 5_000]))
        .await
        .unwrap();
    blobs
        .put(foreign, bytes::Bytes::from_static(b"someone else's"))
        .await
        .unwrap();
    blobs.close().await.unwrap();
    drop(blobs);
    // Two hours older, all but the young orphan: past the default grace
    // period of an hour.
    let conn = rusqlite::Connection::open(&blob_path).unwrap();
    let aged = conn
        .execute(
            "UPDATE blobs SET created_at_us = created_at_us - 7200000000 WHERE id <> ?1",
            [&young_orphan],
        )
        .unwrap();
    drop(conn);
    assert_eq!(aged, 5, "two messages, the greeting, two orphans");

    let (node, metrics) =
        TestNode::start_with_metrics(dir.path(), &["--blob-sweep-delay-secs", "0"])
            .await
            .unwrap();
    let sweeps = r#"dialtone_blobs_sweeps_total{outcome="ok"}"#;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while scrape_counter(&metrics, sweeps).await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no sweep within 60 s (see {}/node.log)",
            dir.path().display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        scrape_counter(&metrics, r#"dialtone_blobs_sweeps_total{outcome="failed"}"#).await,
        0.0
    );
    assert_eq!(
        scrape_counter(&metrics, "dialtone_blobs_swept_total").await,
        1.0
    );
    assert_eq!(
        scrape_counter(&metrics, "dialtone_blobs_swept_bytes_total").await,
        100_000.0
    );

    // The messages still play, the greeting is still the box's.
    let mut vm = voicemail(&node).await;
    for (id, audio) in [(&m1, &audio1), (&m2, &audio2)] {
        let mut stream = vm
            .get_message_audio(GetMessageAudioRequest {
                user: alice(),
                message_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut received = Vec::new();
        while let Some(chunk) = stream.message().await.unwrap() {
            received.extend_from_slice(&chunk.data);
        }
        assert!(received == *audio, "message {id} reads back other bytes");
    }
    let mailbox = vm
        .get_mailbox(GetMailboxRequest { user: alice() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mailbox.greeting.unwrap().audio_id, greeting);
    assert_eq!(mailbox.new_messages, 2);
    node.stop().await.unwrap();

    let blobs = SqliteBlobStore::open(&blob_path, Default::default()).unwrap();
    assert_eq!(blobs.get(&old_orphan).await.unwrap(), None, "swept");
    assert_eq!(
        blobs.get(&first).await.unwrap(),
        None,
        "deleted when replaced"
    );
    assert_eq!(
        blobs.get(&young_orphan).await.unwrap().unwrap().len(),
        5_000,
        "within the grace period"
    );
    assert!(blobs.get(foreign).await.unwrap().is_some(), "not audio");
    let greeting_wav = blobs.get(&greeting).await.unwrap().unwrap();
    assert_eq!(greeting_wav.len(), 44 + 1500 * 16, "1.5 s of 8 kHz 16-bit");
    assert_eq!(blobs.list(None, 100).await.unwrap().len(), 5);
    blobs.close().await.unwrap();
}
