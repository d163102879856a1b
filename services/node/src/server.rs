//! `dialtone serve`: opens the event log, starts the actors and the gRPC
//! API, and shuts them down in order on Ctrl-C / SIGTERM.

use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use dialtone_actors::{ActorSystem, Directory, DirectoryConfig, Provisioning, ProvisioningConfig};
use dialtone_domain::credentials::PasswordPolicy;
use dialtone_eventlog::sqlite::{SqliteOptions, SqliteStore};
use dialtone_eventlog::SharedStore;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::demo;

/// Runs a node until a shutdown signal.
pub async fn run(config: Config, demo_mode: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    // One node per data directory: the writer's in-memory stream versions
    // assume it is the only writer of the file.
    let lock_path = config.data_dir.join("dialtone.lock");
    let lock = File::create(&lock_path)
        .with_context(|| format!("cannot create {}", lock_path.display()))?;
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
        },
    );

    let listener = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("cannot listen for gRPC on {}", config.grpc_addr))?;
    let grpc_addr = listener.local_addr()?;

    if demo_mode {
        demo::provision(&provisioning).await?;
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let context = dialtone_api::ApiContext {
        provisioning: provisioning.clone(),
        store: store.clone(),
    };
    let mut grpc_stop = stop_rx.clone();
    let grpc = tokio::spawn(dialtone_api::serve(listener, context, async move {
        let _ = grpc_stop.wait_for(|stop| *stop).await;
    }));

    // The line tests and scripts wait for; keep its format stable.
    println!(
        "dialtone ready grpc={grpc_addr} metrics={} data_dir={} startup_ms={}",
        config
            .metrics_addr
            .map(|a| a.to_string())
            .unwrap_or_else(|| "off".into()),
        config.data_dir.display(),
        started.elapsed().as_millis()
    );

    shutdown_signal().await;
    tracing::info!("shutting down: draining gRPC calls");
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(10), grpc).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "gRPC task failed"),
        Err(_) => tracing::warn!("gRPC calls still running after 10 s; closing anyway"),
    }
    tracing::info!("stopping actors");
    tokio::task::spawn_blocking(move || system.shutdown()).await?;
    tracing::info!("closing the event log");
    store.close().await.context("closing the event log")?;
    drop(lock);
    println!("dialtone stopped");
    Ok(())
}

async fn shutdown_signal() {
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
