//! Dialtone's gRPC API (tonic): the only crate that compiles protobuf.
//!
//! # What it owns
//! - The generated types, servers and clients ([`pb`], compiled from
//!   `proto/dialtone/v1` by `build.rs` with `protox`).
//! - The services: [`provisioning::ProvisioningApi`] (domains, users),
//!   [`events::EventApi`] (`ReadAll`, `ReadStream`, `Subscribe`, delivered by
//!   the engine in [`subscription`]), [`status_api::StatusApi`]
//!   (registrations, presence, calls in progress), [`audit::AuditApi`]
//!   (state at a version or time; call detail records read from the log by
//!   [`cdr`]), [`tokens_api::TokenApi`], [`voicemail::VoicemailApi`]
//!   (voicemail boxes; their audio in the node's blob store) and
//!   [`conference::ConferenceApi`] (conference rooms; the conferences in
//!   progress, listed, read and controlled), [`trunks::TrunkApi`] (trunks
//!   and dial plans) and [`trunks::NumberApi`] (phone numbers).
//! - Authentication and scoping ([`auth`]): bearer tokens checked by an
//!   interceptor in front of every Dialtone service, the token table, a
//!   domain token kept to its domain.
//! - Conversions to protobuf ([`convert`]; [`payload`]: typed event
//!   payloads by an exhaustive match over the domain's events), name-to-
//!   stream lookups for the log readers ([`lookup`]), and the mapping of
//!   errors to gRPC status codes ([`status`]).
//!
//! # Main types
//! [`serve`] / [`serve_with`] run every service plus `grpc.health.v1` and
//! reflection (both open) on a listener, optionally over TLS
//! ([`ServeOptions`]), from an [`ApiContext`] (provisioning, the event log,
//! the indexes, the blob store). [`Error`] is for serving only; a request's errors are
//! `tonic::Status` values made by [`status`].
//!
//! # What it must not do
//! No business rules (they are in `domain`, run by `actors`); no SQL; no
//! reading of configuration (the node passes [`ServeOptions`]). Only this
//! crate sees protobuf types.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::future::Future;

use dialtone_actors::{CallIndex, ConferenceIndex, NumberIndex, Provisioning, RegistrationIndex};
use dialtone_eventlog::{SharedBlobStore, SharedStore};
use tokio::net::TcpListener;

/// Re-exported for clients of [`pb`] (timestamps).
pub use prost_types;

pub mod audit;
pub mod auth;
pub mod cdr;
pub mod conference;
pub mod convert;
pub mod events;
pub mod lookup;
pub mod payload;
pub mod provisioning;
pub mod status;
pub mod status_api;
pub mod subscription;
pub mod tokens_api;
pub mod trunks;
pub mod voicemail;

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
    #[error("event log: {0}")]
    Store(#[from] dialtone_eventlog::Error),
    #[error("actors: {0}")]
    Actors(#[from] dialtone_actors::Error),
    #[error("invalid token: {0}")]
    Token(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the services need.
#[derive(Clone)]
pub struct ApiContext {
    pub provisioning: Provisioning,
    pub store: SharedStore,
    pub registrations: RegistrationIndex,
    pub calls: CallIndex,
    /// The conferences in progress.
    pub conferences: ConferenceIndex,
    /// Every assigned phone number (ADR 0028).
    pub numbers: NumberIndex,
    /// Where voicemail audio is (the node's one blob store, shared with
    /// its voicemail calls).
    pub blobs: SharedBlobStore,
}

/// Settings of the services (the node fills them from its configuration).
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    pub subscriptions: subscription::SubscriptionConfig,
    /// The admin token (besides the admin tokens of the log). Without one,
    /// only tokens created earlier (in the log) get in.
    pub admin_token: Option<String>,
    /// Serve over TLS with this certificate chain and key (PEM).
    pub tls: Option<TlsIdentity>,
    /// The digest algorithms of a new domain whose request names none.
    pub default_digest_algorithms: dialtone_domain::domain::DigestAlgorithms,
}

/// A server certificate chain and its private key, PEM-encoded.
#[derive(Clone)]
pub struct TlsIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity").finish_non_exhaustive()
    }
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

/// The token table of `context`'s log with `admin_token`; [`serve_with`]
/// loads it itself, this is for callers that want it first.
pub async fn load_tokens(context: &ApiContext, admin_token: Option<&str>) -> Result<auth::Tokens> {
    auth::Tokens::load(context.provisioning.clone(), admin_token).await
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
    let tokens = load_tokens(&context, options.admin_token.as_deref()).await?;
    let authenticator = auth::Authenticator::new(tokens.clone());
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
    health_reporter
        .set_serving::<pb::token_service_server::TokenServiceServer<tokens_api::TokenApi>>()
        .await;
    health_reporter
        .set_serving::<pb::voicemail_service_server::VoicemailServiceServer<voicemail::VoicemailApi>>()
        .await;
    health_reporter
        .set_serving::<pb::conference_service_server::ConferenceServiceServer<conference::ConferenceApi>>()
        .await;
    health_reporter
        .set_serving::<pb::trunk_service_server::TrunkServiceServer<trunks::TrunkApi>>()
        .await;
    health_reporter
        .set_serving::<pb::number_service_server::NumberServiceServer<trunks::NumberApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // Without TCP_NODELAY (tonic sets it only on sockets it binds itself),
    // small streamed messages wait for Nagle's algorithm: tens of
    // milliseconds added to live subscriptions.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &options.tls {
        builder = builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem),
        ))?;
    }
    // Health and reflection are open (the contract is public: it is in
    // `proto/`); every Dialtone service is behind the authenticator.
    builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            pb::provisioning_service_server::ProvisioningServiceServer::with_interceptor(
                provisioning::ProvisioningApi::new(context.provisioning.clone())
                    .with_default_digest_algorithms(options.default_digest_algorithms),
                authenticator.clone(),
            ),
        )
        .add_service(tonic::service::interceptor::InterceptedService::new(
            events::EventServer::new(
                events::EventApi::new(context.store.clone())
                    .with_provisioning(context.provisioning.clone())
                    .with_config(options.subscriptions)
                    .with_stopping(stopping),
            ),
            authenticator.clone(),
        ))
        .add_service(
            pb::audit_service_server::AuditServiceServer::with_interceptor(
                audit::AuditApi::new(context.store.clone())
                    .with_provisioning(context.provisioning.clone()),
                authenticator.clone(),
            ),
        )
        .add_service(
            pb::status_service_server::StatusServiceServer::with_interceptor(
                status_api::StatusApi::new(
                    context.provisioning.clone(),
                    context.registrations.clone(),
                    context.calls.clone(),
                ),
                authenticator.clone(),
            ),
        )
        .add_service(
            pb::token_service_server::TokenServiceServer::with_interceptor(
                tokens_api::TokenApi::new(tokens, context.provisioning.clone()),
                authenticator.clone(),
            ),
        )
        .add_service(
            pb::voicemail_service_server::VoicemailServiceServer::with_interceptor(
                voicemail::VoicemailApi::new(context.provisioning.clone(), context.blobs.clone()),
                authenticator.clone(),
            ),
        )
        .add_service(
            pb::conference_service_server::ConferenceServiceServer::with_interceptor(
                conference::ConferenceApi::new(
                    context.provisioning.clone(),
                    context.conferences.clone(),
                    context.blobs.clone(),
                ),
                authenticator.clone(),
            ),
        )
        .add_service(
            pb::trunk_service_server::TrunkServiceServer::with_interceptor(
                trunks::TrunkApi::new(context.provisioning.clone()),
                authenticator.clone(),
            ),
        )
        .add_service(
            pb::number_service_server::NumberServiceServer::with_interceptor(
                trunks::NumberApi::new(context.provisioning.clone(), context.numbers.clone()),
                authenticator.clone(),
            ),
        )
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
