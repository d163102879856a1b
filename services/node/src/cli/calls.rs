//! `dialtone calls`: a domain's call detail records, or with `--active` its
//! calls in progress.

use dialtone_api::pb;
use serde_json::{json, Value};

use super::connection::{status_error, Clients};
use super::output::{s, time, Output};

pub(super) async fn active(c: &mut Clients, out: &Output, domain: String) -> anyhow::Result<()> {
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
pub(super) async fn records(
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
                    "forwarded_to": l.forwarded_to,
                    "forward_reason": forward_reason_name(l.forward_reason),
                    "transferred_to_call_id": l.transferred_to_call_id,
                    "transferee": l.transferee,
                    "transfer_target": l.transfer_target,
                    "transfer_kind": transfer_kind_name(l.transfer_kind),
                    "transfer_replaced_call_id": l.transfer_replaced_call_id,
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
        // The path a forwarded call took: "-> carol@example.com (no_answer)".
        let forwards: String = v["legs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| !s(l, "forwarded_to").is_empty())
            .map(|l| format!(" -> {} ({})", s(l, "forwarded_to"), s(l, "forward_reason")))
            .collect();
        // A transfer: "transferred (blind) -> call <new call_id>".
        let transfers: String = v["legs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| !s(l, "transferred_to_call_id").is_empty())
            .map(|l| {
                format!(
                    " transferred ({}) -> call {}",
                    s(l, "transfer_kind"),
                    s(l, "transferred_to_call_id")
                )
            })
            .collect();
        // A call the node's application answered (ADR 0024): "answered
        // by voicemail:bob@example.com" (a phone's contact is left out).
        let contact = s(v, "answered_contact");
        let by_app = if contact.starts_with("voicemail") {
            format!(" answered by {contact}")
        } else {
            String::new()
        };
        format!(
            "{:<27} {:<32} {:<32} {:>9}s {:<22} {}{}{}{}",
            s(v, "started_at"),
            s(v, "caller"),
            s(v, "callee"),
            v["duration_ms"].as_u64().unwrap_or(0) / 1000,
            result,
            s(v, "call_id"),
            forwards,
            by_app,
            transfers
        )
    });
    Ok(())
}

fn forward_reason_name(reason: i32) -> &'static str {
    match pb::ForwardReason::try_from(reason) {
        Ok(pb::ForwardReason::Unconditional) => "unconditional",
        Ok(pb::ForwardReason::UserBusy) => "user_busy",
        Ok(pb::ForwardReason::NoAnswer) => "no_answer",
        Ok(pb::ForwardReason::Unavailable) => "unavailable",
        Ok(pb::ForwardReason::DoNotDisturb) => "do_not_disturb",
        _ => "",
    }
}

fn transfer_kind_name(kind: i32) -> &'static str {
    match pb::TransferKind::try_from(kind) {
        Ok(pb::TransferKind::Blind) => "blind",
        Ok(pb::TransferKind::Attended) => "attended",
        _ => "",
    }
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
        Ok(C::AnsweredElsewhere) => "answered_elsewhere",
        Ok(C::Transferred) => "transferred",
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
