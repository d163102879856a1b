//! Reading the log: `dialtone history` (one stream), `dialtone events tail`
//! (follow the log live) and `dialtone replay` (export a range of
//! positions), and how an event is printed.

use anyhow::Context as _;
use dialtone_api::pb;
use serde_json::{json, Value};

use super::connection::{status_error, Clients};
use super::output::{s, time, Output};

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
        /// presence, call, security, voicemail, conference); may be repeated.
        #[arg(long)]
        category: Vec<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum HistoryCommand {
    /// The event stream of a user.
    User { user: String },
    /// The event stream of a domain.
    Domain { name: String },
}

/// How `events tail` ended.
enum TailEnd {
    Interrupted,
    Failed(tonic::Status),
    Closed,
}

pub(super) async fn tail(
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

pub(super) async fn replay(
    c: &mut Clients,
    out: &Output,
    from: u64,
    to: Option<u64>,
) -> anyhow::Result<()> {
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

pub(super) async fn history(
    c: &mut Clients,
    out: &Output,
    cmd: HistoryCommand,
) -> anyhow::Result<()> {
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

/// The events of a stream up to version `through` (all when `None`), page
/// by page.
pub(super) async fn read_stream_through(
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

pub(super) fn envelope_json(e: &pb::EventEnvelope) -> Value {
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

pub(super) fn event_line(v: &Value) -> String {
    format!(
        "#{:<6} v{:<4} {}  {:<18} {}",
        s(v, "position"),
        s(v, "version"),
        s(v, "occurred_at"),
        s(v, "type"),
        v["data"]
    )
}
