//! `dialtone audit ...`: the state of a user or domain at a version or a
//! moment, with the history that led to it.

use dialtone_api::pb;
use serde_json::{json, Value};

use super::connection::{status_error, Clients};
use super::domain::domain_status;
use super::events::{envelope_json, event_line, read_stream_through};
use super::output::{parse_time_arg, s, time, Output};
use super::status::presence_name;

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

pub(super) async fn run(c: &mut Clients, out: &Output, cmd: AuditCommand) -> anyhow::Result<()> {
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
                "forwarding": super::user::forwarding_json(s.forwarding.as_ref()),
                "dnd": s.dnd,
                "mailbox": s.mailbox.as_ref().map(|m| {
                    let settings = m.settings.unwrap_or_default();
                    json!({
                        "enabled": m.enabled,
                        "has_pin": m.has_pin,
                        "failed_pin_attempts": m.failed_pin_attempts,
                        "locked_until": time(&m.locked_until),
                        "max_message_secs": settings.max_message_ms / 1000,
                        "max_messages": settings.max_messages,
                        "greeting_ms": m.greeting.as_ref().map(|g| g.duration_ms),
                        "new_messages": m.new_messages,
                        "saved_messages": m.saved_messages,
                        "message_ids": m.messages.iter().map(|x| x.message_id.clone()).collect::<Vec<_>>(),
                    })
                }),
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
                "digest_algorithms": settings.digest_algorithms,
                "md5_allowed": settings.md5_allowed,
                "suspend_reason": s.suspend_reason,
                "created_at": time(&s.created_at),
                "user_count": s.user_count,
                "users": users.then(|| s.users.iter().map(|u| json!({"username": u.username, "user_id": u.user_id})).collect::<Vec<_>>()),
                "users_truncated": s.users_truncated,
                "ring_groups": s.ring_groups.iter().map(super::group::group_json).collect::<Vec<_>>(),
                "conference_rooms": s.conference_rooms.iter().map(super::conference::room_json).collect::<Vec<_>>(),
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

/// An RFC 3339 time as a protobuf timestamp.
fn parse_time(input: &str) -> anyhow::Result<dialtone_api::prost_types::Timestamp> {
    parse_time_arg("--at", input)
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
            "\n  user          {}\n  id            {}\n  status        {}{}\n  display name  {}\n  caller id     {}\n  max contacts  {}\n  created       {}\n  password set  {}\n  presence      {}\n  forwarding    {}\n  dnd           {}",
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
            super::user::forwarding_line(state),
            if state["dnd"] == Value::Bool(true) { "on" } else { "off" },
        ));
        let mailbox = &state["mailbox"];
        if mailbox["enabled"] == Value::Bool(true) || mailbox["has_pin"] == Value::Bool(true) {
            text.push_str(&format!(
                "\n  voicemail     {}, PIN {}, {} new, {} saved, greeting {}",
                if mailbox["enabled"] == Value::Bool(true) {
                    "on"
                } else {
                    "off"
                },
                if mailbox["has_pin"] == Value::Bool(true) {
                    "set"
                } else {
                    "none"
                },
                s(mailbox, "new_messages"),
                s(mailbox, "saved_messages"),
                if mailbox["greeting_ms"].is_null() {
                    "default"
                } else {
                    "own"
                },
            ));
        }
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
            "\n  domain        {}\n  id            {}\n  status        {}\n  users         {}\n  created       {}\n  digest        {}\n  cross-domain  {}",
            s(state, "name"),
            s(state, "domain_id"),
            s(state, "status"),
            s(state, "user_count"),
            s(state, "created_at"),
            s(state, "digest_algorithms"),
            s(state, "allow_cross_domain_calls"),
        ));
        if !s(state, "suspend_reason").is_empty() {
            text.push_str(&format!(
                "\n  suspended because {}",
                s(state, "suspend_reason")
            ));
        }
        for g in state["ring_groups"].as_array().into_iter().flatten() {
            text.push_str(&format!(
                "\n  ring group    {}",
                super::group::group_line(g)
            ));
        }
        for r in state["conference_rooms"].as_array().into_iter().flatten() {
            text.push_str(&format!(
                "\n  room          {}",
                super::conference::room_line(r)
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
