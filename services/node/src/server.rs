//! `dialtone serve`: opens the event log, starts the actors and the gRPC
//! API, and shuts them down in order on Ctrl-C / SIGTERM.

use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use dialtone_actors::{
    ActorSystem, AudioIndex, CallIndex, ConferenceIndex, Directory, DirectoryConfig, NumberIndex,
    Provisioning, ProvisioningConfig, RegistrationIndex,
};
use dialtone_domain::credentials::PasswordPolicy;
use dialtone_eventlog::sqlite::{SqliteOptions, SqliteStore};
use dialtone_eventlog::SharedStore;
use tokio::net::TcpListener;

use crate::admin_token;
use crate::config::Config;
use crate::demo;

/// Runs a node until a shutdown signal.
pub async fn run(config: Config, demo_mode: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    // One node per data directory: the writer's in-memory stream versions
    // assume it is the only writer of the file.
    let lock_path = config.data_dir.join("dialtone.lock");
    let lock = File::create(&lock_path).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::ReadOnlyFilesystem => "its file system is read-only",
            std::io::ErrorKind::PermissionDenied => "no permission to write there",
            _ => "cannot create files there",
        };
        anyhow::anyhow!(
            "data directory {} is not writable ({why}): cannot create {}: {e}; \
             the node keeps its event log there: make it writable or choose another --data-dir",
            config.data_dir.display(),
            lock_path.display()
        )
    })?;
    lock.try_lock().map_err(|_| {
        anyhow::anyhow!(
            "data directory {} is in use by another dialtone process",
            config.data_dir.display()
        )
    })?;

    if let Some(addr) = config.metrics_addr {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
    }

    let db_path = config.data_dir.join("events.db");
    let options = SqliteOptions {
        node: config.node_name.clone(),
        ..SqliteOptions::default()
    };
    let started = std::time::Instant::now();
    let store: SharedStore = Arc::new(
        SqliteStore::open(&db_path, options)
            .with_context(|| format!("cannot open event log {}", db_path.display()))?,
    );
    tracing::info!(path = %db_path.display(), head = store.head_position(), "event log open");

    let threads = match config.actor_threads {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
        n => n,
    };
    let system = ActorSystem::start(threads)?;
    let directory = Directory::new(
        store.clone(),
        system.arbiters().to_vec(),
        DirectoryConfig {
            idle_timeout: Duration::from_secs(config.actor_idle_secs),
        },
    )?;
    let provisioning = Provisioning::new(
        directory.clone(),
        ProvisioningConfig {
            password_policy: PasswordPolicy {
                min_length: config.min_password_length,
            },
            secrets: secrets_keyring(&config)?,
        },
    );

    let blobs = blob_store(&config)?;

    let registrations = RegistrationIndex::start(store.clone(), directory.clone()).await?;
    // Before the SIP gateway starts: closes the call legs a previous run
    // left in progress (their dialogs died with it), and only those.
    let calls = CallIndex::start(store.clone(), directory.clone()).await?;
    // The voicemail audio the mailboxes name: what the blob sweeper keeps.
    let audio = AudioIndex::start(store.clone()).await?;
    // The conferences in progress, per domain and room (for the API).
    let live_conferences = ConferenceIndex::start(store.clone()).await?;
    // Every assigned phone number (ADR 0028), for the API's listings.
    let numbers = NumberIndex::start(store.clone()).await?;
    // Before the SIP gateway starts, as for call legs: conferences a
    // previous run left running have no media any more. Only a node that
    // runs conferences (it serves SIP) ends them: an API-only node has
    // none of its own.
    if !config.sip_addrs.is_empty() {
        crate::conference::end_left_running(&live_conferences, &provisioning).await;
    }

    if config.sip_challenge_md5_first {
        tracing::warn!(
            "sip_challenge_md5_first (--sip-challenge-md5-first) is deprecated: each domain's \
             digest algorithms give the challenge order (`dialtone domain update NAME \
             --digest-algorithms md5,sha-256`; new domains get --sip-digest-algorithms, MD5 \
             by default). It still puts MD5 first for domains offering both."
        );
    }
    let sip = if config.sip_addrs.is_empty() {
        None
    } else {
        let secret = sip_secret(&config.data_dir)?;
        let media = media_runtime(&config)?;
        let voicemail = voicemail(media.clone(), provisioning.clone(), blobs.clone())?;
        let conferences = crate::conference::Conferences::new(
            media,
            Arc::new(dialtone_conference::prompts::Prompts::load().context("conference prompts")?),
            blobs.clone(),
            provisioning.clone(),
            Duration::from_secs(config.rtp_timeout_secs),
        );
        conferences.follow(store.clone());
        let gateway_config = dialtone_sip::GatewayConfig {
            listen: config.sip_addrs.clone(),
            advertised: config.sip_advertised.clone(),
            min_expires: config.sip_min_expires,
            max_expires: config.sip_max_expires,
            default_expires: config.sip_default_expires,
            nonce_lifetime: Duration::from_secs(config.sip_nonce_lifetime_secs),
            secret: secret.clone(),
            challenge_md5_first: config.sip_challenge_md5_first,
            no_answer_timeout: Duration::from_secs(config.sip_no_answer_secs.max(1)),
            max_call_duration: Duration::from_secs(config.sip_max_call_secs.max(1)),
            call_mode: config.sip_call_mode,
            guard: dialtone_sip::guard::GuardConfig {
                user_source_threshold: config.sip_lockout_user_failures,
                source_threshold: config.sip_lockout_source_failures,
                window: Duration::from_secs(config.sip_lockout_window_secs.max(1)),
                lockout: Duration::from_secs(config.sip_lockout_secs),
                source_rate: config.sip_source_rate,
                source_burst: config.sip_source_rate.saturating_mul(2),
                ..dialtone_sip::guard::GuardConfig::default()
            },
            server_header: Some(format!("Dialtone/{}", env!("CARGO_PKG_VERSION"))),
            subscriptions: dialtone_sip::subscription::SubscriptionConfig {
                min_expires: config.sip_subscribe_min_expires,
                max_expires: config.sip_subscribe_max_expires,
                default_expires: config.sip_subscribe_max_expires,
                max_per_subscriber: config.sip_subscribe_max_per_user,
                max_per_domain: config.sip_subscribe_max_per_domain,
                source_rate: config.sip_subscribe_rate,
                source_burst: config.sip_subscribe_rate.saturating_mul(4),
                ..dialtone_sip::subscription::SubscriptionConfig::default()
            },
            tls_listen: config.sip_tls_addr,
            ws_listen: config.sip_ws_addr,
            wss_listen: config.sip_wss_addr,
            tls: match (&config.sip_tls_cert, &config.sip_tls_key) {
                (Some(cert), Some(key)) => Some(dialtone_sip::config::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    ca: config.sip_tls_ca.clone(),
                }),
                _ => None,
            },
            tls_handshake_timeout: Duration::from_secs(config.sip_tls_handshake_secs.max(1)),
            max_connections_per_source: config.sip_max_connections_per_source,
            max_tcp_connections: config.sip_max_connections,
            ..dialtone_sip::GatewayConfig::default()
        };
        let registry = Arc::new(
            crate::sip_bridge::ActorBackend::new(provisioning.clone())
                .with_routing_limits(dialtone_domain::routing::Limits {
                    max_forward_hops: config.sip_max_forward_hops,
                })
                .with_schedule_clock(
                    config
                        .test_clock
                        .map(crate::sip_bridge::ScheduleClock::starting_at),
                )
                .with_voicemail(voicemail, secret)
                .with_conferences(conferences.clone()),
        );
        let gateway = dialtone_sip::Gateway::start(gateway_config, registry.clone())
            .await
            .context("cannot start the SIP gateway")?;
        if let Some(udp) = gateway.local_addrs().first() {
            registry.listening_on(*udp);
        }
        Some((gateway, conferences))
    };
    let (sip, conferences) = match sip {
        Some((gateway, conferences)) => (Some(gateway), Some(conferences)),
        None => (None, None),
    };
    let sip_addrs = sip
        .as_ref()
        .map(|g| {
            g.local_addrs()
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_else(|| "off".into());
    // The secure and WebSocket listeners, for the ready line (only those
    // that listen, after everything else: its older keys keep their place).
    let sip_more: String = sip
        .as_ref()
        .map(|g| {
            [
                ("sip_tls", g.tls_addr()),
                ("sip_ws", g.ws_addr()),
                ("sip_wss", g.wss_addr()),
            ]
            .iter()
            .filter_map(|(key, addr)| addr.map(|a| format!(" {key}={a}")))
            .collect()
        })
        .unwrap_or_default();

    let listener = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("cannot listen for gRPC on {}", config.grpc_addr))?;
    let grpc_addr = listener.local_addr()?;

    let admin_token = admin_token::load_or_create(&config)?;
    let tls = match (&config.grpc_tls_cert, &config.grpc_tls_key) {
        (Some(cert), Some(key)) => Some(dialtone_api::TlsIdentity {
            cert_pem: std::fs::read(cert).with_context(|| {
                format!("cannot read the gRPC TLS certificate {}", cert.display())
            })?,
            key_pem: std::fs::read(key)
                .with_context(|| format!("cannot read the gRPC TLS key {}", key.display()))?,
        }),
        _ => None,
    };
    let grpc_scheme = if tls.is_some() { "https" } else { "http" };

    if demo_mode {
        demo::provision(&provisioning).await?;
        admin_token.print_cli_use(grpc_scheme, grpc_addr);
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sweeper = (config.blob_sweep_interval_secs > 0).then(|| {
        crate::blob_sweeper::spawn(
            store.clone(),
            blobs.clone(),
            audio.clone(),
            crate::blob_sweeper::SweepConfig {
                delay: Duration::from_secs(config.blob_sweep_delay_secs),
                interval: Duration::from_secs(config.blob_sweep_interval_secs),
                grace: Duration::from_secs(config.blob_sweep_grace_secs),
            },
            stop_rx.clone(),
        )
    });
    let context = dialtone_api::ApiContext {
        provisioning: provisioning.clone(),
        store: store.clone(),
        registrations: registrations.clone(),
        calls: calls.clone(),
        conferences: live_conferences.clone(),
        numbers: numbers.clone(),
        blobs: blobs.clone(),
    };
    let mut grpc_stop = stop_rx.clone();
    let options = dialtone_api::ServeOptions {
        subscriptions: dialtone_api::subscription::SubscriptionConfig {
            max_lag: config.subscription_max_lag,
            ..Default::default()
        },
        admin_token: Some(admin_token.token.clone()),
        tls,
        default_digest_algorithms: config.sip_digest_algorithms,
    };
    let grpc = tokio::spawn(dialtone_api::serve_with(
        listener,
        context,
        options,
        async move {
            let _ = grpc_stop.wait_for(|stop| *stop).await;
        },
    ));

    // The line tests and scripts wait for; keep its format stable.
    println!(
        "dialtone ready grpc={grpc_addr} sip={sip_addrs} metrics={} data_dir={} startup_ms={}{sip_more}",
        config
            .metrics_addr
            .map(|a| a.to_string())
            .unwrap_or_else(|| "off".into()),
        config.data_dir.display(),
        started.elapsed().as_millis()
    );

    shutdown_signal().await;
    tracing::info!("shutting down: draining SIP and gRPC");
    if let Some(conferences) = &conferences {
        // Recorded as ended while the calls' BYEs can still go out.
        conferences.shutdown().await;
    }
    if let Some(sip) = sip {
        sip.shutdown().await;
    }
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(10), grpc).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "gRPC task failed"),
        Err(_) => tracing::warn!("gRPC calls still running after 10 s; closing anyway"),
    }
    if let Some(sweeper) = sweeper {
        // It stops at the stop signal, between two deletes at worst.
        let _ = sweeper.await;
    }
    registrations.checkpoint(&store).await;
    calls.checkpoint(&store).await;
    audio.checkpoint(&store).await;
    live_conferences.checkpoint(&store).await;
    numbers.checkpoint(&store).await;
    tracing::info!("stopping actors (saving snapshots)");
    directory.passivate_all(Duration::from_secs(10)).await;
    tokio::task::spawn_blocking(move || system.shutdown()).await?;
    blobs.close().await.context("closing the blob store")?;
    tracing::info!("closing the event log");
    store.close().await.context("closing the event log")?;
    drop(lock);
    println!("dialtone stopped");
    Ok(())
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

/// The blob store of voicemail audio, `<data-dir>/blobs.sqlite3` (ADR
/// 0023): opened once, shared by the API and the node's voicemail calls.
fn blob_store(config: &Config) -> anyhow::Result<dialtone_eventlog::SharedBlobStore> {
    use dialtone_eventlog::sqlite_blob::{SqliteBlobOptions, SqliteBlobStore};
    let path = config.data_dir.join("blobs.sqlite3");
    let blobs = SqliteBlobStore::open(&path, SqliteBlobOptions::default())
        .with_context(|| format!("cannot open the blob store {}", path.display()))?;
    Ok(Arc::new(blobs))
}

/// The media plane (RTP ports) of voicemail and conferences.
fn media_runtime(config: &Config) -> anyhow::Result<dialtone_media::runtime::MediaRuntime> {
    let address = config
        .media_addr
        .or_else(|| config.sip_addrs.first().map(|a| a.ip()))
        .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
    // Phones must be told an address they can send to: the SIP advertised
    // host when it is an IP address, else loopback (a node on 0.0.0.0
    // without --media-advertised is reached locally only).
    let advertised = config.media_advertised.or_else(|| {
        if !address.is_unspecified() {
            return None;
        }
        config
            .sip_advertised
            .as_deref()
            .and_then(|a| a.rsplit_once(':').map_or(Some(a), |(h, _)| Some(h)))
            .and_then(|h| h.trim_matches(['[', ']']).parse().ok())
            .or(Some(std::net::Ipv4Addr::LOCALHOST.into()))
    });
    let media =
        dialtone_media::runtime::MediaRuntime::new(dialtone_media::runtime::RuntimeConfig {
            address,
            advertised,
            ports: config.rtp_ports.clone(),
            rtp_timeout: Duration::from_secs(config.rtp_timeout_secs),
        })
        .context("media plane")?;
    Ok(media)
}

/// Voicemail: its media plane, prompts, and the blob store its audio goes
/// to.
fn voicemail(
    media: dialtone_media::runtime::MediaRuntime,
    provisioning: Provisioning,
    blobs: dialtone_eventlog::SharedBlobStore,
) -> anyhow::Result<crate::voicemail::Voicemail> {
    let prompts = dialtone_voicemail::prompts::Prompts::load().context("voicemail prompts")?;
    Ok(crate::voicemail::Voicemail::new(
        media,
        Arc::new(prompts),
        blobs,
        provisioning,
    ))
}

/// The secret SIP nonces are signed with: kept in the data directory (0600)
/// so that nonces stay valid across restarts; created on first start.
fn sip_secret(data_dir: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Write as _;
    let path = data_dir.join("sip.secret");
    match std::fs::read(&path) {
        Ok(secret) if secret.len() >= 32 => return Ok(secret),
        Ok(_) => anyhow::bail!(
            "{} is too short: delete it to make a new one",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let mut secret = Vec::with_capacity(64);
    for _ in 0..4 {
        secret.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(&secret)?;
    file.sync_all()?;
    Ok(secret)
}

/// The operator's secrets key (`--secrets-key-file`), read once at start:
/// a file that cannot be read or holds no valid key stops the node (a
/// typo must not make it run without the key it was given). A key file
/// others can read is warned about, as the admin token's is.
fn secrets_keyring(
    config: &Config,
) -> anyhow::Result<Option<std::sync::Arc<dialtone_actors::secrets::SecretsKeyring>>> {
    let Some(path) = &config.secrets_key_file else {
        return Ok(None);
    };
    let contents = std::fs::read(path).with_context(|| {
        format!(
            "cannot read the secrets key file {} (--secrets-key-file)",
            path.display()
        )
    })?;
    let keyring = dialtone_actors::secrets::SecretsKeyring::from_file_contents(&contents)
        .map_err(|e| anyhow::anyhow!("secrets key file {}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    "the secrets key file can be read by other users; chmod 600 it"
                );
            }
        }
    }
    tracing::info!(keys = ?keyring.key_ids(), "secrets key loaded (the first seals)");
    Ok(Some(std::sync::Arc::new(keyring)))
}
