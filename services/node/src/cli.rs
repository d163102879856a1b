//! The CLI client: `dialtone domain|user|history|events|audit|replay|calls
//! ...` over gRPC.

use anyhow::Context as _;
use dialtone_api::auth::Bearer;
use dialtone_api::pb;
use dialtone_api::pb::audit_service_client::AuditServiceClient;
use dialtone_api::pb::event_service_client::EventServiceClient;
use dialtone_api::pb::provisioning_service_client::ProvisioningServiceClient;
use dialtone_api::pb::status_service_client::StatusServiceClient;
use dialtone_api::pb::token_service_client::TokenServiceClient;
use serde_json::{json, Value};
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

#[derive(clap::Subcommand, Debug)]
pub enum ClientCommand {
    /// Manage SIP domains.
    #[command(subcommand)]
    Domain(DomainCommand),
    /// Manage SIP users.
    #[command(subcommand)]
    User(UserCommand),
    /// Print the event history of a user or domain.
    #[command(subcommand)]
    History(HistoryCommand),
    /// Show a user's registrations (contacts) and presence.
    Status {
        /// username@domain or user id
        user: String,
    },
    /// List the users of a domain that are registered now.
    Online {
        /// Domain name or id
        domain: String,
    },
    /// List the calls of a domain: call detail records (one per call,
    /// oldest first), or with --active the calls in progress.
    Calls {
        /// Domain name or id
        domain: String,
        /// The calls in progress now instead of the records.
        #[arg(long)]
        active: bool,
        /// Records of calls started at or after this RFC 3339 time.
        #[arg(long, conflicts_with = "active")]
        from: Option<String>,
        /// Records of calls started before this RFC 3339 time.
        #[arg(long, conflicts_with = "active")]
        to: Option<String>,
    },
    /// The SIP lock-outs of a domain (sources refused after failed digest
    /// authentications), oldest first.
    Security {
        /// Domain name or id
        domain: String,
    },
    /// Follow the event log.
    #[command(subcommand)]
    Events(EventsCommand),
    /// The state of a user or domain at a version or a moment, with the
    /// history that led to it.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Manage API tokens (admin token needed).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Export the events between two positions (JSON lines with --json):
    /// `dialtone replay --from 1 --to 5000 --json > events.jsonl`.
    Replay {
        /// First position (inclusive).
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Last position (inclusive); default: the head when the export
        /// starts.
        #[arg(long)]
        to: Option<u64>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token and print its secret (shown only this once).
    Create {
        /// `admin`, or the domain the token is limited to.
        scope: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Revoke a token: it is refused from the next call on.
    Revoke { token_id: String },
    /// List tokens (never their secrets).
    List,
}

#[derive(clap::Subcommand, Debug)]
pub enum EventsCommand {
    /// Print events as they are committed (history first with --from);
    /// Ctrl-C ends and prints, on stderr, the position to resume from.
    Tail {
        /// `now` (default), `start`, or the first position to print (to
        /// resume, the position printed on exit).
        #[arg(long, default_value = "now")]
        from: String,
        /// Only events of this domain (name or id); may be repeated.
        #[arg(long)]
        domain: Vec<String>,
        /// Only events of this user (username@domain or id); may be repeated.
        #[arg(long)]
        user: Vec<String>,
        /// Only events of this type (e.g. PresenceChanged); may be repeated.
        #[arg(long = "type")]
        event_type: Vec<String>,
        /// Only events of this category (provisioning, registration,
        /// presence, call, security); may be repeated.
        #[arg(long)]
        category: Vec<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum AuditCommand {
    /// A user's history and the state it implied.
    User {
        /// username@domain or user id
        user: String,
        #[command(flatten)]
        at: AuditAt,
    },
    /// A domain's history and the state it implied.
    Domain {
        /// Domain name or id
        name: String,
        #[command(flatten)]
        at: AuditAt,
        /// Also list the user names claimed at that point.
        #[arg(long)]
        users: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct AuditAt {
    /// A moment (RFC 3339, e.g. 2026-11-26T10:00:00Z): the state after the
    /// events that occurred at or before it.
    #[arg(long, conflicts_with = "version")]
    at: Option<String>,
    /// A stream version: the state right after that event.
    #[arg(long)]
    version: Option<u64>,
}

#[derive(clap::Subcommand, Debug)]
pub enum DomainCommand {
    /// Create a domain (its name is also the SIP realm).
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Allow calls to and from other domains.
        #[arg(long)]
        allow_cross_domain_calls: bool,
        /// Do not offer MD5 digest authentication (SHA-256 only).
        #[arg(long)]
        no_md5: bool,
        /// Idempotency key: a retry with the same id does nothing twice.
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Show a domain.
    Get { name: String },
    /// List domains.
    List {
        /// Include deleted domains.
        #[arg(long)]
        include_deleted: bool,
    },
    /// Change a domain's settings.
    Update {
        name: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        allow_cross_domain_calls: Option<bool>,
        #[arg(long)]
        md5_allowed: Option<bool>,
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Suspend a domain: its users can no longer register or call.
    Suspend {
        name: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Resume a suspended domain.
    Resume { name: String },
    /// Delete a domain (it must have no users).
    Delete { name: String },
}

#[derive(clap::Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user: `dialtone user create alice@example.com --password ...`.
    Create {
        /// username@domain
        user: String,
        #[arg(long, env = "DIALTONE_USER_PASSWORD", hide_env_values = true)]
        password: String,
        #[arg(long, default_value = "")]
        display_name: String,
        #[arg(long, default_value = "")]
        caller_id: String,
        /// Maximum simultaneous registrations (default 10).
        #[arg(long)]
        max_contacts: Option<u32>,
        /// Create the user disabled.
        #[arg(long)]
        disabled: bool,
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Show a user (by username@domain or id).
    Get { user: String },
    /// List the users of a domain.
    List {
        #[arg(long)]
        domain: String,
    },
    /// Change a user's settings.
    Update {
        user: String,
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long)]
        caller_id: Option<String>,
        #[arg(long)]
        max_contacts: Option<u32>,
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Set a user's SIP password.
    SetPassword {
        user: String,
        #[arg(long, env = "DIALTONE_USER_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// Disable a user: it can no longer register or call.
    Disable { user: String },
    /// Enable a disabled user.
    Enable { user: String },
    /// Delete a user.
    Delete { user: String },
}

#[derive(clap::Subcommand, Debug)]
pub enum HistoryCommand {
    /// The event stream of a user.
    User { user: String },
    /// The event stream of a domain.
    Domain { name: String },
}

struct Clients {
    provisioning: ProvisioningServiceClient<Channel>,
    events: EventServiceClient<Channel>,
    status: StatusServiceClient<Channel>,
    audit: AuditServiceClient<Channel>,
    tokens: TokenServiceClient<Channel>,
}

async fn connect(target: &Target) -> anyhow::Result<Clients> {
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
        tokens: TokenServiceClient::new(channel),
    })
}

/// Turns a gRPC error into a message that names the code.
fn status_error(status: tonic::Status) -> anyhow::Error {
    if status.code() == tonic::Code::Unauthenticated {
        return anyhow::anyhow!(
            "{} ({:?}); give a token with --token or DIALTONE_TOKEN",
            status.message(),
            status.code()
        );
    }
    anyhow::anyhow!("{} ({:?})", status.message(), status.code())
}

pub async fn run(target: &Target, json_output: bool, command: ClientCommand) -> anyhow::Result<()> {
    let mut clients = connect(target).await?;
    let out = Output { json: json_output };
    match command {
        ClientCommand::Domain(cmd) => domain(&mut clients, &out, cmd).await,
        ClientCommand::User(cmd) => user(&mut clients, &out, cmd).await,
        ClientCommand::History(cmd) => history(&mut clients, &out, cmd).await,
        ClientCommand::Status { user } => status(&mut clients, &out, user).await,
        ClientCommand::Online { domain } => online(&mut clients, &out, domain).await,
        ClientCommand::Security { domain } => security(&mut clients, &out, domain).await,
        ClientCommand::Calls {
            domain,
            active: true,
            ..
        } => active_calls(&mut clients, &out, domain).await,
        ClientCommand::Calls {
            domain, from, to, ..
        } => {
            let from = from
                .as_deref()
                .map(|t| parse_time_arg("--from", t))
                .transpose()?;
            let to = to
                .as_deref()
                .map(|t| parse_time_arg("--to", t))
                .transpose()?;
            calls(&mut clients, &out, domain, from, to).await
        }
        ClientCommand::Events(EventsCommand::Tail {
            from,
            domain,
            user,
            event_type,
            category,
        }) => {
            let filter = pb::EventFilter {
                domains: domain,
                users: user,
                event_types: event_type,
                categories: category,
            };
            tail(&mut clients, &out, &from, filter).await
        }
        ClientCommand::Audit(cmd) => audit(&mut clients, &out, cmd).await,
        ClientCommand::Replay { from, to } => replay(&mut clients, &out, from, to).await,
        ClientCommand::Token(cmd) => token(&mut clients, &out, cmd).await,
    }
}

fn token_json(t: &pb::Token) -> Value {
    json!({
        "token_id": t.token_id,
        "scope": t.scope,
        "description": t.description,
        "created_at": t.created_at.as_ref().map(rfc3339),
        "revoked": t.revoked,
        "revoked_at": t.revoked_at.as_ref().map(rfc3339),
    })
}

fn rfc3339(t: &dialtone_api::prost_types::Timestamp) -> String {
    time::OffsetDateTime::from_unix_timestamp(t.seconds)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

async fn token(c: &mut Clients, out: &Output, cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create { scope, description } => {
            let created = c
                .tokens
                .create_token(pb::CreateTokenRequest { scope, description })
                .await
                .map_err(status_error)?
                .into_inner();
            let info = created.token.unwrap_or_default();
            if out.json {
                let mut value = token_json(&info);
                value["secret"] = json!(created.secret);
                println!("{value}");
            } else {
                println!("token {} (scope {})", info.token_id, info.scope);
                println!("secret (shown only now): {}", created.secret);
            }
        }
        TokenCommand::Revoke { token_id } => {
            let info = c
                .tokens
                .revoke_token(pb::RevokeTokenRequest { token_id })
                .await
                .map_err(status_error)?
                .into_inner();
            if out.json {
                println!("{}", token_json(&info));
            } else {
                println!("token {} revoked", info.token_id);
            }
        }
        TokenCommand::List => {
            let list = c
                .tokens
                .list_tokens(pb::ListTokensRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            for t in &list.tokens {
                if out.json {
                    println!("{}", token_json(t));
                } else {
                    println!(
                        "{}  {:<24} {}{}",
                        t.token_id,
                        t.scope,
                        t.created_at.as_ref().map(rfc3339).unwrap_or_default(),
                        if t.revoked { "  revoked" } else { "" }
                    );
                }
            }
        }
    }
    Ok(())
}

/// How `events tail` ended.
enum TailEnd {
    Interrupted,
    Failed(tonic::Status),
    Closed,
}

async fn tail(
    c: &mut Clients,
    out: &Output,
    from: &str,
    filter: pb::EventFilter,
) -> anyhow::Result<()> {
    use pb::subscribe_request::Start;
    use pb::subscribe_response::Message;
    let start = match from.trim() {
        "now" => Some(Start::FromNow(true)),
        "start" | "0" => None,
        position => Some(Start::FromPosition(position.parse().with_context(
            || format!("--from must be now, start or a position, not '{position}'"),
        )?)),
    };
    let request = pb::SubscribeRequest {
        start,
        filter: Some(filter),
        // Printing needs the envelope and its JSON data only.
        payload: pb::PayloadFormat::Json as i32,
        checkpoint_interval_ms: 0,
    };
    let mut stream = c
        .events
        .subscribe(request)
        .await
        .map_err(status_error)?
        .into_inner();
    // The last position seen (event or checkpoint): everything up to it
    // was printed if it matched.
    let mut last: Option<u64> = None;
    let interrupted = interrupted();
    tokio::pin!(interrupted);
    let end = loop {
        let message = tokio::select! {
            () = &mut interrupted => break TailEnd::Interrupted,
            message = stream.message() => message,
        };
        match message {
            Ok(Some(pb::SubscribeResponse {
                message: Some(Message::Event(event)),
            })) => {
                let Some(envelope) = event.envelope else {
                    continue;
                };
                last = Some(envelope.position);
                let value = envelope_json(&envelope);
                if out.json {
                    println!("{value}");
                } else {
                    println!("{}", event_line(&value));
                }
            }
            Ok(Some(pb::SubscribeResponse {
                message: Some(Message::Checkpoint(checkpoint)),
            })) => last = Some(checkpoint.position),
            Ok(Some(_)) => {}
            Ok(None) => break TailEnd::Closed,
            Err(status) => break TailEnd::Failed(status),
        }
    };
    match last {
        Some(position) => eprintln!(
            "last position {position}; resume with --from {}",
            position + 1
        ),
        None => eprintln!("no position reached; resume with the same --from"),
    }
    match end {
        TailEnd::Interrupted => Ok(()),
        TailEnd::Closed => Err(anyhow::anyhow!("the server ended the subscription")),
        TailEnd::Failed(status) => Err(status_error(status)),
    }
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM.
async fn interrupted() {
    crate::server::shutdown_signal().await;
}

async fn replay(c: &mut Clients, out: &Output, from: u64, to: Option<u64>) -> anyhow::Result<()> {
    let mut next = from.max(1);
    let mut to = to;
    loop {
        let page = c
            .events
            .read_all(pb::ReadAllRequest {
                from_position: next,
                max_count: 5000,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        // Without --to, stop at the head seen by the first page.
        let to = *to.get_or_insert(page.head_position);
        let mut done = page.events.is_empty();
        for envelope in &page.events {
            if envelope.position > to {
                done = true;
                break;
            }
            let value = envelope_json(envelope);
            if out.json {
                println!("{value}");
            } else {
                println!("{}", event_line(&value));
            }
        }
        if done || page.next_position > to {
            return Ok(());
        }
        next = page.next_position;
    }
}

/// An RFC 3339 time as a protobuf timestamp.
fn parse_time(input: &str) -> anyhow::Result<dialtone_api::prost_types::Timestamp> {
    parse_time_arg("--at", input)
}

/// As [`parse_time`], for the option `flag`.
fn parse_time_arg(flag: &str, input: &str) -> anyhow::Result<dialtone_api::prost_types::Timestamp> {
    let t = time::OffsetDateTime::parse(input, &time::format_description::well_known::Rfc3339)
        .with_context(|| {
            format!("{flag} must be an RFC 3339 time such as 2026-11-26T10:00:00Z, not '{input}'")
        })?;
    Ok(dialtone_api::prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: i32::try_from(t.nanosecond()).unwrap_or(0),
    })
}

fn point_json(at: &Option<pb::StatePoint>) -> Value {
    let Some(at) = at else {
        return Value::Null;
    };
    json!({
        "stream": at.stream,
        "has_events": at.has_events,
        "version": at.has_events.then_some(at.version),
        "position": at.has_events.then_some(at.position),
        "occurred_at": time(&at.occurred_at),
        "current_version": at.current_version,
    })
}

fn binding_json(b: &pb::Binding) -> Value {
    json!({
        "uri": b.uri,
        "source": b.source,
        "transport": b.transport,
        "user_agent": b.user_agent,
        "instance": b.instance,
        "registered_at": time(&b.registered_at),
        "refreshed_at": time(&b.refreshed_at),
        "expires_at": time(&b.expires_at),
    })
}

fn user_status(status: i32) -> &'static str {
    match pb::UserStatus::try_from(status) {
        Ok(pb::UserStatus::Absent) => "absent",
        Ok(pb::UserStatus::Active) => "active",
        Ok(pb::UserStatus::Deleted) => "deleted",
        _ => "unknown",
    }
}

/// The events of `stream` from version 0 through `through`.
async fn stream_prefix(
    c: &mut Clients,
    stream: &str,
    through: Option<u64>,
) -> anyhow::Result<Vec<Value>> {
    let Some(through) = through else {
        return Ok(Vec::new());
    };
    Ok(read_stream_through(c, stream, Some(through))
        .await?
        .iter()
        .map(envelope_json)
        .collect())
}

async fn audit(c: &mut Clients, out: &Output, cmd: AuditCommand) -> anyhow::Result<()> {
    let (at_arg, version_arg) = match &cmd {
        AuditCommand::User { at, .. } | AuditCommand::Domain { at, .. } => {
            (at.at.clone(), at.version)
        }
    };
    let time_at = at_arg.as_deref().map(parse_time).transpose()?;
    let (point, state) = match cmd {
        AuditCommand::User { user, .. } => {
            use pb::get_user_state_at_request::At;
            let at = match (version_arg, time_at) {
                (Some(v), _) => Some(At::Version(v)),
                (None, Some(t)) => Some(At::Time(t)),
                (None, None) => None,
            };
            let reply = c
                .audit
                .get_user_state_at(pb::GetUserStateAtRequest { user, at })
                .await
                .map_err(status_error)?
                .into_inner();
            let s = reply.state.unwrap_or_default();
            let state = json!({
                "kind": "user",
                "user_id": s.user_id,
                "address": s.address,
                "domain_id": s.domain_id,
                "status": user_status(s.status),
                "display_name": s.display_name,
                "caller_id": s.caller_id,
                "max_contacts": s.max_contacts,
                "enabled": s.enabled,
                "created_at": time(&s.created_at),
                "password_set_at": time(&s.password_set_at),
                "presence": presence_name(s.presence),
                "contacts": s.contacts.iter().map(binding_json).collect::<Vec<_>>(),
            });
            (reply.at, state)
        }
        AuditCommand::Domain { name, users, .. } => {
            use pb::get_domain_state_at_request::At;
            let at = match (version_arg, time_at) {
                (Some(v), _) => Some(At::Version(v)),
                (None, Some(t)) => Some(At::Time(t)),
                (None, None) => None,
            };
            let reply = c
                .audit
                .get_domain_state_at(pb::GetDomainStateAtRequest {
                    domain: name,
                    at,
                    include_users: users,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let s = reply.state.unwrap_or_default();
            let settings = s.settings.unwrap_or_default();
            let state = json!({
                "kind": "domain",
                "domain_id": s.domain_id,
                "name": s.name,
                "status": match domain_status(s.status) { "unknown" => "absent", other => other },
                "description": settings.description,
                "allow_cross_domain_calls": settings.allow_cross_domain_calls,
                "md5_allowed": settings.md5_allowed,
                "suspend_reason": s.suspend_reason,
                "created_at": time(&s.created_at),
                "user_count": s.user_count,
                "users": users.then(|| s.users.iter().map(|u| json!({"username": u.username, "user_id": u.user_id})).collect::<Vec<_>>()),
                "users_truncated": s.users_truncated,
            });
            (reply.at, state)
        }
    };
    let stream = point.as_ref().map(|p| p.stream.clone()).unwrap_or_default();
    let through = point
        .as_ref()
        .and_then(|p| p.has_events.then_some(p.version));
    let history = stream_prefix(c, &stream, through).await?;
    let value = json!({
        "at": point_json(&point),
        "state": state,
        "history": history,
    });
    out.one(value, audit_text);
    Ok(())
}

fn audit_text(v: &Value) -> String {
    let mut text = format!("history of {}", s(&v["at"], "stream"));
    match v["history"].as_array() {
        Some(events) if !events.is_empty() => {
            for event in events {
                text.push_str(&format!("\n  {}", event_line(event)));
            }
        }
        _ => text.push_str("\n  (no events at that point)"),
    }
    let at = &v["at"];
    if at["has_events"] == Value::Bool(true) {
        text.push_str(&format!(
            "\nstate at version {} (position {}, {}); the stream is now at version {}",
            s(at, "version"),
            s(at, "position"),
            s(at, "occurred_at"),
            s(at, "current_version")
        ));
    } else {
        text.push_str("\nstate before the first event");
    }
    let state = &v["state"];
    if state["kind"] == "user" {
        text.push_str(&format!(
            "\n  user          {}\n  id            {}\n  status        {}{}\n  display name  {}\n  caller id     {}\n  max contacts  {}\n  created       {}\n  password set  {}\n  presence      {}",
            s(state, "address"),
            s(state, "user_id"),
            s(state, "status"),
            if state["enabled"] == Value::Bool(false) && state["status"] == "active" {
                " (disabled)"
            } else {
                ""
            },
            s(state, "display_name"),
            s(state, "caller_id"),
            s(state, "max_contacts"),
            s(state, "created_at"),
            s(state, "password_set_at"),
            s(state, "presence"),
        ));
        match state["contacts"].as_array() {
            Some(contacts) if !contacts.is_empty() => {
                text.push_str("\n  contacts");
                for k in contacts {
                    text.push_str(&format!(
                        "\n    {}  via {} from {}  expires {}",
                        s(k, "uri"),
                        s(k, "transport"),
                        s(k, "source"),
                        s(k, "expires_at")
                    ));
                }
            }
            _ => text.push_str("\n  contacts      none"),
        }
    } else {
        text.push_str(&format!(
            "\n  domain        {}\n  id            {}\n  status        {}\n  users         {}\n  created       {}\n  md5           {}\n  cross-domain  {}",
            s(state, "name"),
            s(state, "domain_id"),
            s(state, "status"),
            s(state, "user_count"),
            s(state, "created_at"),
            s(state, "md5_allowed"),
            s(state, "allow_cross_domain_calls"),
        ));
        if !s(state, "suspend_reason").is_empty() {
            text.push_str(&format!(
                "\n  suspended because {}",
                s(state, "suspend_reason")
            ));
        }
        if let Some(users) = state["users"].as_array() {
            for u in users {
                text.push_str(&format!("\n    {}  {}", s(u, "username"), s(u, "user_id")));
            }
        }
    }
    text
}

fn presence_name(state: i32) -> &'static str {
    match pb::PresenceState::try_from(state) {
        Ok(pb::PresenceState::Offline) => "offline",
        Ok(pb::PresenceState::Online) => "online",
        Ok(pb::PresenceState::Ringing) => "ringing",
        Ok(pb::PresenceState::OnCall) => "on_call",
        Ok(pb::PresenceState::Dnd) => "dnd",
        _ => "unknown",
    }
}

async fn status(c: &mut Clients, out: &Output, user: String) -> anyhow::Result<()> {
    let reply = c
        .status
        .get_registrations(pb::GetRegistrationsRequest { user })
        .await
        .map_err(status_error)?
        .into_inner();
    let contacts: Vec<Value> = reply
        .contacts
        .iter()
        .map(|k| {
            json!({
                "uri": k.uri,
                "source": k.source,
                "transport": k.transport,
                "user_agent": k.user_agent,
                "registered_at": time(&k.registered_at),
                "refreshed_at": time(&k.refreshed_at),
                "expires_at": time(&k.expires_at),
                "instance": k.instance,
                "call_id": k.call_id,
                "cseq": k.cseq,
            })
        })
        .collect();
    let value = json!({
        "user": reply.user,
        "presence": presence_name(reply.presence),
        "contacts": contacts,
    });
    out.one(value, |v| {
        let mut text = format!("{}  presence: {}", s(v, "user"), s(v, "presence"));
        match v["contacts"].as_array() {
            Some(contacts) if !contacts.is_empty() => {
                for k in contacts {
                    text.push_str(&format!(
                        "\n  {}  via {} from {}  expires {}  ({})",
                        s(k, "uri"),
                        s(k, "transport"),
                        s(k, "source"),
                        s(k, "expires_at"),
                        s(k, "user_agent")
                    ));
                }
            }
            _ => text.push_str("\n  no registered contacts"),
        }
        text
    });
    Ok(())
}

async fn online(c: &mut Clients, out: &Output, domain: String) -> anyhow::Result<()> {
    let reply = c
        .status
        .list_online(pb::ListOnlineRequest { domain })
        .await
        .map_err(status_error)?
        .into_inner();
    let users: Vec<Value> = reply
        .users
        .iter()
        .map(|u| {
            json!({
                "user_id": u.user_id,
                "address": u.address,
                "presence": presence_name(u.presence),
                "contacts": u.contacts,
            })
        })
        .collect();
    out.list(users, |v| {
        format!(
            "{:<48} {:<8} contacts={}",
            s(v, "address"),
            s(v, "presence"),
            s(v, "contacts")
        )
    });
    Ok(())
}

fn call_state_name(state: i32) -> &'static str {
    match pb::CallState::try_from(state) {
        Ok(pb::CallState::Trying) => "trying",
        Ok(pb::CallState::Ringing) => "ringing",
        Ok(pb::CallState::Answered) => "answered",
        _ => "unknown",
    }
}

fn direction_name(direction: i32) -> &'static str {
    match pb::CallDirection::try_from(direction) {
        Ok(pb::CallDirection::Outbound) => "outbound",
        Ok(pb::CallDirection::Inbound) => "inbound",
        _ => "unknown",
    }
}

/// The stored name of a cause (as in the events), `null` when unset.
fn cause_name(cause: i32) -> Value {
    use pb::CallCause as C;
    let name = match C::try_from(cause) {
        Ok(C::NormalClearing) => "normal_clearing",
        Ok(C::OriginatorCancel) => "originator_cancel",
        Ok(C::UserBusy) => "user_busy",
        Ok(C::NoAnswer) => "no_answer",
        Ok(C::CallRejected) => "call_rejected",
        Ok(C::NotFound) => "not_found",
        Ok(C::Unavailable) => "unavailable",
        Ok(C::Timeout) => "timeout",
        Ok(C::NodeRestart) => "node_restart",
        _ => return Value::Null,
    };
    Value::String(name.to_owned())
}

fn hangup_side_name(side: i32) -> Value {
    match pb::HangupSide::try_from(side) {
        Ok(pb::HangupSide::Caller) => json!("caller"),
        Ok(pb::HangupSide::Callee) => json!("callee"),
        Ok(pb::HangupSide::System) => json!("system"),
        _ => Value::Null,
    }
}

async fn active_calls(c: &mut Clients, out: &Output, domain: String) -> anyhow::Result<()> {
    let reply = c
        .status
        .list_active_calls(pb::ListActiveCallsRequest { domain })
        .await
        .map_err(status_error)?
        .into_inner();
    let calls: Vec<Value> = reply
        .calls
        .iter()
        .map(|call| {
            json!({
                "call_id": call.call_id,
                "caller": call.caller,
                "callee": call.callee,
                "state": call_state_name(call.state),
                "started_at": time(&call.started_at),
                "answered_at": time(&call.answered_at),
                "sip_call_id": call.sip_call_id,
                "legs": call.legs.iter().map(|l| json!({
                    "user_id": l.user_id,
                    "address": l.address,
                    "direction": direction_name(l.direction),
                    "state": call_state_name(l.state),
                    "started_at": time(&l.started_at),
                    "answered_at": time(&l.answered_at),
                    "contact": l.contact,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    if !out.json && !calls.is_empty() {
        println!(
            "{:<27} {:<32} {:<32} {:<9} CALL-ID",
            "STARTED", "CALLER", "CALLEE", "STATE"
        );
    }
    out.list(calls, |v| {
        format!(
            "{:<27} {:<32} {:<32} {:<9} {}",
            s(v, "started_at"),
            s(v, "caller"),
            s(v, "callee"),
            s(v, "state"),
            s(v, "call_id")
        )
    });
    Ok(())
}

/// Call detail records: every page, printed together.
async fn calls(
    c: &mut Clients,
    out: &Output,
    domain: String,
    from_time: Option<dialtone_api::prost_types::Timestamp>,
    to_time: Option<dialtone_api::prost_types::Timestamp>,
) -> anyhow::Result<()> {
    let mut records = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = c
            .audit
            .list_calls(pb::ListCallsRequest {
                domain: domain.clone(),
                from_time,
                to_time,
                page_size: 1000,
                page_token,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        records.extend(page.calls.iter().map(|r| {
            json!({
                "call_id": r.call_id,
                "caller": r.caller,
                "callee": r.callee,
                "sip_call_id": r.sip_call_id,
                "started_at": time(&r.started_at),
                "answered_at": time(&r.answered_at),
                "ended_at": time(&r.ended_at),
                "duration_ms": r.duration_ms,
                "cause": cause_name(r.cause),
                "sip_status": r.sip_status,
                "hangup_side": hangup_side_name(r.hangup_side),
                "answered_contact": r.answered_contact,
                "in_progress": r.in_progress,
                "legs": r.legs.iter().map(|l| json!({
                    "user_id": l.user_id,
                    "direction": direction_name(l.direction),
                    "started_at": time(&l.started_at),
                    "answered_at": time(&l.answered_at),
                    "ended_at": time(&l.ended_at),
                    "duration_ms": l.duration_ms,
                    "cause": cause_name(l.cause),
                    "sip_status": l.sip_status,
                    "hangup_side": hangup_side_name(l.hangup_side),
                    "contact": l.contact,
                    "in_progress": l.in_progress,
                })).collect::<Vec<_>>(),
            })
        }));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    if !out.json && !records.is_empty() {
        println!(
            "{:<27} {:<32} {:<32} {:>10} {:<22} CALL-ID",
            "STARTED", "CALLER", "CALLEE", "DURATION", "RESULT"
        );
    }
    out.list(records, |v| {
        let result = if v["in_progress"] == json!(true) {
            "in progress".to_owned()
        } else {
            format!("{} {}", s(v, "sip_status"), s(v, "cause"))
        };
        format!(
            "{:<27} {:<32} {:<32} {:>9}s {:<22} {}",
            s(v, "started_at"),
            s(v, "caller"),
            s(v, "callee"),
            v["duration_ms"].as_u64().unwrap_or(0) / 1000,
            result,
            s(v, "call_id")
        )
    });
    Ok(())
}

async fn domain(c: &mut Clients, out: &Output, cmd: DomainCommand) -> anyhow::Result<()> {
    let p = &mut c.provisioning;
    let result = match cmd {
        DomainCommand::Create {
            name,
            description,
            allow_cross_domain_calls,
            no_md5,
            request_id,
        } => {
            p.create_domain(pb::CreateDomainRequest {
                name,
                description,
                allow_cross_domain_calls,
                md5_allowed: Some(!no_md5),
                request_id,
            })
            .await
        }
        DomainCommand::Get { name } => p.get_domain(pb::GetDomainRequest { domain: name }).await,
        DomainCommand::List { include_deleted } => {
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = p
                    .list_domains(pb::ListDomainsRequest {
                        page_size: 500,
                        page_token: page_token.clone(),
                        include_deleted,
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                all.extend(page.domains);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            out.list(all.iter().map(domain_json).collect(), domain_line);
            return Ok(());
        }
        DomainCommand::Update {
            name,
            description,
            allow_cross_domain_calls,
            md5_allowed,
            expected_version,
        } => {
            p.update_domain(pb::UpdateDomainRequest {
                domain: name,
                description,
                allow_cross_domain_calls,
                md5_allowed,
                request_id: String::new(),
                expected_version,
            })
            .await
        }
        DomainCommand::Suspend { name, reason } => {
            p.suspend_domain(pb::SuspendDomainRequest {
                domain: name,
                reason,
                ..Default::default()
            })
            .await
        }
        DomainCommand::Resume { name } => {
            p.resume_domain(pb::ResumeDomainRequest {
                domain: name,
                ..Default::default()
            })
            .await
        }
        DomainCommand::Delete { name } => {
            p.delete_domain(pb::DeleteDomainRequest {
                domain: name,
                ..Default::default()
            })
            .await
        }
    };
    let domain = result.map_err(status_error)?.into_inner();
    out.one(domain_json(&domain), domain_details);
    Ok(())
}

async fn user(c: &mut Clients, out: &Output, cmd: UserCommand) -> anyhow::Result<()> {
    let p = &mut c.provisioning;
    let result = match cmd {
        UserCommand::Create {
            user,
            password,
            display_name,
            caller_id,
            max_contacts,
            disabled,
            request_id,
        } => {
            let (username, domain) = user
                .rsplit_once('@')
                .with_context(|| format!("'{user}' is not username@domain"))?;
            p.create_user(pb::CreateUserRequest {
                domain: domain.to_owned(),
                username: username.to_owned(),
                password,
                display_name,
                caller_id,
                max_contacts: max_contacts.unwrap_or(0),
                enabled: Some(!disabled),
                request_id,
            })
            .await
        }
        UserCommand::Get { user } => p.get_user(pb::GetUserRequest { user }).await,
        UserCommand::List { domain } => {
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = p
                    .list_users(pb::ListUsersRequest {
                        domain: domain.clone(),
                        page_size: 1000,
                        page_token: page_token.clone(),
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                all.extend(page.users);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            out.list(all.iter().map(user_json).collect(), user_line);
            return Ok(());
        }
        UserCommand::Update {
            user,
            display_name,
            caller_id,
            max_contacts,
            expected_version,
        } => {
            p.update_user(pb::UpdateUserRequest {
                user,
                display_name,
                caller_id,
                max_contacts,
                enabled: None,
                request_id: String::new(),
                expected_version,
            })
            .await
        }
        UserCommand::SetPassword { user, password } => {
            p.set_password(pb::SetPasswordRequest {
                user,
                password,
                ..Default::default()
            })
            .await
        }
        UserCommand::Disable { user } => {
            p.update_user(pb::UpdateUserRequest {
                user,
                enabled: Some(false),
                ..Default::default()
            })
            .await
        }
        UserCommand::Enable { user } => {
            p.update_user(pb::UpdateUserRequest {
                user,
                enabled: Some(true),
                ..Default::default()
            })
            .await
        }
        UserCommand::Delete { user } => {
            p.delete_user(pb::DeleteUserRequest {
                user,
                ..Default::default()
            })
            .await
        }
    };
    let user = result.map_err(status_error)?.into_inner();
    out.one(user_json(&user), user_details);
    Ok(())
}

async fn history(c: &mut Clients, out: &Output, cmd: HistoryCommand) -> anyhow::Result<()> {
    let stream = match cmd {
        HistoryCommand::User { user } => {
            let user = c
                .provisioning
                .get_user(pb::GetUserRequest { user })
                .await
                .map_err(status_error)?
                .into_inner();
            format!("user-{}", user.id)
        }
        HistoryCommand::Domain { name } => {
            let domain = c
                .provisioning
                .get_domain(pb::GetDomainRequest { domain: name })
                .await
                .map_err(status_error)?
                .into_inner();
            format!("domain-{}", domain.id)
        }
    };
    let events = read_stream_through(c, &stream, None).await?;
    out.list(events.iter().map(envelope_json).collect(), |v| {
        event_line(v)
    });
    Ok(())
}

/// The SourceLockedOut events of a domain's stream.
async fn security(c: &mut Clients, out: &Output, domain: String) -> anyhow::Result<()> {
    let domain = c
        .provisioning
        .get_domain(pb::GetDomainRequest { domain })
        .await
        .map_err(status_error)?
        .into_inner();
    let events = read_stream_through(c, &format!("domain-{}", domain.id), None).await?;
    let lockouts: Vec<Value> = events
        .iter()
        .filter(|e| e.category == "security")
        .map(|e| {
            let data: Value = serde_json::from_str(&e.data_json).unwrap_or(Value::Null);
            json!({
                "position": e.position,
                "type": e.r#type,
                "source": data["source"],
                "scope": data["scope"],
                "username": data["username"],
                "failures": data["failures"],
                "locked_at": micros_text(&data["locked_at"]),
                "locked_until": micros_text(&data["locked_until"]),
            })
        })
        .collect();
    if !out.json && !lockouts.is_empty() {
        println!(
            "{:<27} {:<27} {:<40} {:<7} {:>8} USER",
            "LOCKED AT", "UNTIL", "SOURCE", "SCOPE", "FAILURES"
        );
    }
    out.list(lockouts, |v| {
        format!(
            "{:<27} {:<27} {:<40} {:<7} {:>8} {}",
            s(v, "locked_at"),
            s(v, "locked_until"),
            s(v, "source"),
            s(v, "scope"),
            s(v, "failures"),
            s(v, "username")
        )
    });
    Ok(())
}

/// A µs timestamp as RFC 3339 text (null when absent).
fn micros_text(v: &Value) -> Value {
    v.as_i64()
        .map(|us| Value::String(format_time(us)))
        .unwrap_or(Value::Null)
}

struct Output {
    json: bool,
}

impl Output {
    fn one(&self, value: Value, human: impl Fn(&Value) -> String) {
        if self.json {
            println!("{value}");
        } else {
            println!("{}", human(&value));
        }
    }

    fn list(&self, values: Vec<Value>, human: impl Fn(&Value) -> String) {
        if self.json {
            println!("{}", Value::Array(values));
        } else if values.is_empty() {
            println!("(none)");
        } else {
            for value in &values {
                println!("{}", human(value));
            }
        }
    }
}

fn time(ts: &Option<dialtone_api::prost_types::Timestamp>) -> Value {
    match ts {
        Some(ts) => {
            let us = ts.seconds * 1_000_000 + i64::from(ts.nanos) / 1000;
            Value::String(format_time(us))
        }
        None => Value::Null,
    }
}

/// RFC 3339 UTC with microseconds.
fn format_time(us: i64) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| us.to_string())
}

fn domain_status(status: i32) -> &'static str {
    match pb::DomainStatus::try_from(status) {
        Ok(pb::DomainStatus::Active) => "active",
        Ok(pb::DomainStatus::Suspended) => "suspended",
        Ok(pb::DomainStatus::Deleted) => "deleted",
        _ => "unknown",
    }
}

fn domain_json(d: &pb::Domain) -> Value {
    json!({
        "id": d.id,
        "name": d.name,
        "status": domain_status(d.status),
        "description": d.description,
        "allow_cross_domain_calls": d.allow_cross_domain_calls,
        "md5_allowed": d.md5_allowed,
        "suspend_reason": d.suspend_reason,
        "user_count": d.user_count,
        "created_at": time(&d.created_at),
        "version": d.version,
    })
}

fn user_json(u: &pb::User) -> Value {
    json!({
        "id": u.id,
        "address": u.address,
        "username": u.username,
        "domain": u.domain,
        "domain_id": u.domain_id,
        "display_name": u.display_name,
        "caller_id": u.caller_id,
        "max_contacts": u.max_contacts,
        "enabled": u.enabled,
        "deleted": u.deleted,
        "created_at": time(&u.created_at),
        "password_set_at": time(&u.password_set_at),
        "version": u.version,
    })
}

fn envelope_json(e: &pb::EventEnvelope) -> Value {
    json!({
        "position": e.position,
        "stream": e.stream,
        "version": e.version,
        "event_id": e.event_id,
        "type": e.r#type,
        "schema_version": e.schema_version,
        "occurred_at": time(&e.occurred_at),
        "domain_id": e.domain_id,
        "user_id": e.user_id,
        "node": e.node,
        "correlation_id": e.correlation_id,
        "category": e.category,
        "data": serde_json::from_str::<Value>(&e.data_json).unwrap_or(Value::String(e.data_json.clone())),
    })
}

fn s(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn domain_line(v: &Value) -> String {
    format!(
        "{:<40} {:<10} users={:<6} version={}",
        s(v, "name"),
        s(v, "status"),
        s(v, "user_count"),
        s(v, "version")
    )
}

fn domain_details(v: &Value) -> String {
    let mut text = format!(
        "domain   {}\nid       {}\nstatus   {}\nusers    {}\ncreated  {}\nversion  {}\nmd5      {}\ncross-domain calls {}",
        s(v, "name"),
        s(v, "id"),
        s(v, "status"),
        s(v, "user_count"),
        s(v, "created_at"),
        s(v, "version"),
        s(v, "md5_allowed"),
        s(v, "allow_cross_domain_calls"),
    );
    if !s(v, "description").is_empty() {
        text.push_str(&format!("\ndescription {}", s(v, "description")));
    }
    if !s(v, "suspend_reason").is_empty() {
        text.push_str(&format!("\nsuspended because {}", s(v, "suspend_reason")));
    }
    text
}

fn user_line(v: &Value) -> String {
    format!(
        "{:<48} {:<8} {:<24} version={}",
        s(v, "address"),
        if v["enabled"] == Value::Bool(true) {
            "enabled"
        } else {
            "disabled"
        },
        s(v, "display_name"),
        s(v, "version")
    )
}

fn user_details(v: &Value) -> String {
    format!(
        "user          {}\nid            {}\nstatus        {}\ndisplay name  {}\ncaller id     {}\nmax contacts  {}\ncreated       {}\npassword set  {}\nversion       {}",
        s(v, "address"),
        s(v, "id"),
        if v["deleted"] == Value::Bool(true) {
            "deleted"
        } else if v["enabled"] == Value::Bool(true) {
            "enabled"
        } else {
            "disabled"
        },
        s(v, "display_name"),
        s(v, "caller_id"),
        s(v, "max_contacts"),
        s(v, "created_at"),
        s(v, "password_set_at"),
        s(v, "version"),
    )
}

fn event_line(v: &Value) -> String {
    format!(
        "#{:<6} v{:<4} {}  {:<18} {}",
        s(v, "position"),
        s(v, "version"),
        s(v, "occurred_at"),
        s(v, "type"),
        v["data"]
    )
}

/// The events of a stream up to version `through` (all when `None`), page
/// by page.
async fn read_stream_through(
    c: &mut Clients,
    stream: &str,
    through: Option<u64>,
) -> anyhow::Result<Vec<pb::EventEnvelope>> {
    let mut from_version = 0;
    let mut events = Vec::new();
    loop {
        let page = c
            .events
            .read_stream(pb::ReadStreamRequest {
                stream: stream.to_owned(),
                from_version,
                max_count: 1000,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        for envelope in page.events.iter() {
            if through.is_some_and(|t| envelope.version > t) {
                return Ok(events);
            }
            events.push(envelope.clone());
        }
        if page.end_of_stream || page.events.is_empty() {
            return Ok(events);
        }
        from_version = page.next_version;
    }
}
