//! Dialtone's gRPC API (tonic).
//!
//! # What it owns
//! The generated protobuf types and clients ([`pb`], compiled from
//! `proto/dialtone/v1` by `build.rs`), the service implementations
//! ([`provisioning::ProvisioningApi`], [`events::EventApi`] with the
//! subscription engine in [`subscription`], [`status_api::StatusApi`],
//! [`audit::AuditApi`]), the typed event payloads ([`payload`], an
//! exhaustive mapping from the domain's events), the mapping of errors to
//! gRPC status codes ([`status`]), and [`serve`], which runs them with
//! health and reflection on a listener.
//!
//! # What it must not do
//! No business rules (they are in `domain`, run by `actors`); no SQL; no
//! reading of configuration. It is the only crate that compiles protobuf.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::future::Future;

use dialtone_actors::{CallIndex, Provisioning, RegistrationIndex};
use dialtone_eventlog::SharedStore;
use tokio::net::TcpListener;

/// Re-exported for clients of [`pb`] (timestamps).
pub use prost_types;

pub mod audit;
pub mod cdr;
pub mod convert;
pub mod events;
pub mod lookup;
pub mod payload;
pub mod provisioning;
pub mod status;
pub mod status_api;
pub mod subscription;

/// Generated protobuf types, servers and clients of `dialtone.v1`.
#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("dialtone.v1");

    /// The encoded descriptor set of the contract, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/dialtone_descriptor.bin"));
}

/// Errors of the API crate (serving, not per-request errors: those are
/// `tonic::Status`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the services need.
#[derive(Clone)]
pub struct ApiContext {
    pub provisioning: Provisioning,
    pub store: SharedStore,
    pub registrations: RegistrationIndex,
    pub calls: CallIndex,
}

/// Settings of the services (the node fills them from its configuration).
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    pub subscriptions: subscription::SubscriptionConfig,
}

/// Serves every Dialtone service plus `grpc.health.v1` and reflection on
/// `listener` until `shutdown` completes; in-flight calls are drained.
pub async fn serve(
    listener: TcpListener,
    context: ApiContext,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    serve_with(listener, context, ServeOptions::default(), shutdown).await
}

/// As [`serve`], with settings. When `shutdown` completes, subscriptions
/// end first (UNAVAILABLE, with the position to resume from), then
/// in-flight calls are drained.
pub async fn serve_with(
    listener: TcpListener,
    context: ApiContext,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stopping_tx.send(true);
    };
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::provisioning_service_server::ProvisioningServiceServer<provisioning::ProvisioningApi>>()
        .await;
    health_reporter
        .set_serving::<pb::event_service_server::EventServiceServer<events::EventApi>>()
        .await;
    health_reporter
        .set_serving::<pb::status_service_server::StatusServiceServer<status_api::StatusApi>>()
        .await;
    health_reporter
        .set_serving::<pb::audit_service_server::AuditServiceServer<audit::AuditApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // Without TCP_NODELAY (tonic sets it only on sockets it binds itself),
    // small streamed messages wait for Nagle's algorithm: tens of
    // milliseconds added to live subscriptions.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            pb::provisioning_service_server::ProvisioningServiceServer::new(
                provisioning::ProvisioningApi::new(context.provisioning.clone()),
            ),
        )
        .add_service(events::EventServer::new(
            events::EventApi::new(context.store.clone())
                .with_provisioning(context.provisioning.clone())
                .with_config(options.subscriptions)
                .with_stopping(stopping),
        ))
        .add_service(pb::audit_service_server::AuditServiceServer::new(
            audit::AuditApi::new(context.store.clone())
                .with_provisioning(context.provisioning.clone()),
        ))
        .add_service(pb::status_service_server::StatusServiceServer::new(
            status_api::StatusApi::new(
                context.provisioning.clone(),
                context.registrations.clone(),
                context.calls.clone(),
            ),
        ))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
