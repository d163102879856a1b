//! Connecting to a node: the server address (TLS with `https://`, with
//! `--ca-cert` or the system's roots), the bearer token every call sends,
//! one client per service, and gRPC errors as messages.

use anyhow::Context as _;
use dialtone_api::auth::Bearer;
use dialtone_api::pb::audit_service_client::AuditServiceClient;
use dialtone_api::pb::conference_service_client::ConferenceServiceClient;
use dialtone_api::pb::event_service_client::EventServiceClient;
use dialtone_api::pb::number_service_client::NumberServiceClient;
use dialtone_api::pb::provisioning_service_client::ProvisioningServiceClient;
use dialtone_api::pb::status_service_client::StatusServiceClient;
use dialtone_api::pb::token_service_client::TokenServiceClient;
use dialtone_api::pb::trunk_service_client::TrunkServiceClient;
use dialtone_api::pb::voicemail_service_client::VoicemailServiceClient;
use tonic::service::interceptor::InterceptedService;

/// A connection that sends the token.
type Channel = InterceptedService<tonic::transport::Channel, Bearer>;

/// Where and as whom the client commands talk.
#[derive(Debug, Clone)]
pub struct Target {
    pub server: String,
    pub token: Option<String>,
    pub ca_cert: Option<std::path::PathBuf>,
}

pub(super) struct Clients {
    pub(super) provisioning: ProvisioningServiceClient<Channel>,
    pub(super) events: EventServiceClient<Channel>,
    pub(super) status: StatusServiceClient<Channel>,
    pub(super) audit: AuditServiceClient<Channel>,
    pub(super) tokens: TokenServiceClient<Channel>,
    pub(super) voicemail: VoicemailServiceClient<Channel>,
    pub(super) conference: ConferenceServiceClient<Channel>,
    pub(super) trunks: TrunkServiceClient<Channel>,
    pub(super) numbers: NumberServiceClient<Channel>,
}

pub(super) async fn connect(target: &Target) -> anyhow::Result<Clients> {
    let server = target.server.as_str();
    let mut endpoint = tonic::transport::Endpoint::from_shared(server.to_owned())
        .with_context(|| format!("invalid server address '{server}'"))?
        .connect_timeout(std::time::Duration::from_secs(5));
    if server.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new();
        tls = match &target.ca_cert {
            Some(path) => {
                let pem = std::fs::read(path).with_context(|| {
                    format!("cannot read the CA certificate {}", path.display())
                })?;
                tls.ca_certificate(tonic::transport::Certificate::from_pem(pem))
            }
            None => tls.with_native_roots(),
        };
        endpoint = endpoint.tls_config(tls).context("invalid TLS settings")?;
    } else if target.ca_cert.is_some() {
        anyhow::bail!("--ca-cert is for https:// servers; the server is {server}");
    }
    let bearer = match &target.token {
        Some(token) => Bearer::new(token).context("invalid --token / DIALTONE_TOKEN")?,
        None => Bearer::none(),
    };
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to {server}"))?;
    let channel = InterceptedService::new(channel, bearer);
    Ok(Clients {
        provisioning: ProvisioningServiceClient::new(channel.clone()),
        events: EventServiceClient::new(channel.clone()),
        status: StatusServiceClient::new(channel.clone()),
        audit: AuditServiceClient::new(channel.clone()),
        tokens: TokenServiceClient::new(channel.clone()),
        voicemail: VoicemailServiceClient::new(channel.clone()),
        conference: ConferenceServiceClient::new(channel.clone()),
        trunks: TrunkServiceClient::new(channel.clone()),
        numbers: NumberServiceClient::new(channel),
    })
}

/// Turns a gRPC error into a message that names the code.
pub(super) fn status_error(status: tonic::Status) -> anyhow::Error {
    if status.code() == tonic::Code::Unauthenticated {
        return anyhow::anyhow!(
            "{} ({:?}); give a token with --token or DIALTONE_TOKEN",
            status.message(),
            status.code()
        );
    }
    anyhow::anyhow!("{} ({:?})", status.message(), status.code())
}
