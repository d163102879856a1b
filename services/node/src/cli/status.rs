//! What is going on now: `dialtone status` (a user's registrations and
//! presence), `dialtone online` (who is registered in a domain) and
//! `dialtone security` (a domain's SIP lock-outs).

use dialtone_api::pb;
use serde_json::{json, Value};

use super::connection::{status_error, Clients};
use super::events::read_stream_through;
use super::output::{micros_text, s, time, Output};

pub(super) async fn status(c: &mut Clients, out: &Output, user: String) -> anyhow::Result<()> {
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
                "nat": k.nat,
                "flow": flow_text(k),
                "connection_id": k.connection_id,
                "local_address": k.local_address,
                "reg_id": k.reg_id,
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
                        "\n  {}  via {} from {}  NAT: {}  flow: {}  expires {}  ({})",
                        s(k, "uri"),
                        s(k, "transport"),
                        s(k, "source"),
                        if k["nat"].as_bool() == Some(true) {
                            "yes"
                        } else {
                            "no"
                        },
                        s(k, "flow"),
                        s(k, "expires_at"),
                        s(k, "user_agent")
                    ));
                    if k["reg_id"].as_u64().is_some_and(|r| r > 0) {
                        text.push_str(&format!(
                            "\n      outbound: instance {} reg-id {}",
                            s(k, "instance"),
                            s(k, "reg_id")
                        ));
                    }
                }
            }
            _ => text.push_str("\n  no registered contacts"),
        }
        text
    });
    Ok(())
}

/// How a contact is reached: `udp`, the connection it registered over
/// (`connection 17`), or none (a connection-oriented binding whose
/// connection closed or predates a restart: unreachable until the device
/// registers again).
fn flow_text(k: &pb::Contact) -> String {
    if k.connection_id != 0 {
        format!("connection {}", k.connection_id)
    } else if k.transport.eq_ignore_ascii_case("udp") {
        "udp".to_owned()
    } else {
        "none (until it registers again)".to_owned()
    }
}

pub(super) async fn online(c: &mut Clients, out: &Output, domain: String) -> anyhow::Result<()> {
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

pub(super) fn presence_name(state: i32) -> &'static str {
    match pb::PresenceState::try_from(state) {
        Ok(pb::PresenceState::Offline) => "offline",
        Ok(pb::PresenceState::Online) => "online",
        Ok(pb::PresenceState::Ringing) => "ringing",
        Ok(pb::PresenceState::OnCall) => "on_call",
        Ok(pb::PresenceState::Dnd) => "dnd",
        _ => "unknown",
    }
}

/// The SourceLockedOut events of a domain's stream.
pub(super) async fn security(c: &mut Clients, out: &Output, domain: String) -> anyhow::Result<()> {
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
