//! Dialog-info documents (RFC 4235) for the `dialog` package: what desk
//! phones light their busy-lamp fields from.
//!
//! Every NOTIFY carries the full state (`state="full"`): each call leg of
//! the watched user in progress, plus the legs that ended since the last
//! NOTIFY (as `terminated`, once). `version` counts the documents sent on
//! one subscription from 0 (RFC 4235 s.4.1). A dialog is identified by the
//! leg's `call_id` and carries the SIP `call-id`, the direction
//! (`initiator` when the watched user called, `recipient` when it is
//! called) and both parties' identities, which is what a phone shows and
//! what a directed pickup dials. The dialog tags are not recorded with the
//! call steps, so `local-tag`/`remote-tag` are not given (they are
//! optional in RFC 4235).

use crate::backend::{CallDirection, CallPhase, CallState};

use super::package::xml_escape;

fn phase_name(p: CallPhase) -> &'static str {
    match p {
        CallPhase::Trying => "trying",
        CallPhase::Early => "early",
        CallPhase::Confirmed => "confirmed",
        CallPhase::Terminated => "terminated",
    }
}

/// The dialog-info document number `version` of `entity`
/// (`user@domain`) listing `calls`.
pub fn body<'a>(entity: &str, version: u32, calls: impl Iterator<Item = &'a CallState>) -> String {
    let mut out = String::with_capacity(512);
    out.push_str(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n\
<dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"",
    );
    out.push_str(&version.to_string());
    out.push_str("\" state=\"full\" entity=\"sip:");
    xml_escape(&mut out, entity);
    out.push_str("\">\r\n");
    for c in calls {
        out.push_str("<dialog id=\"");
        xml_escape(&mut out, &c.call_id);
        out.push_str("\" call-id=\"");
        xml_escape(&mut out, &c.sip_call_id);
        out.push_str("\" direction=\"");
        out.push_str(match c.direction {
            CallDirection::Outbound => "initiator",
            CallDirection::Inbound => "recipient",
        });
        out.push_str("\"><state>");
        out.push_str(phase_name(c.phase));
        out.push_str("</state><local><identity>sip:");
        xml_escape(&mut out, entity);
        out.push_str("</identity><target uri=\"sip:");
        xml_escape(&mut out, entity);
        out.push_str("\"/></local><remote><identity>sip:");
        xml_escape(&mut out, &c.remote);
        out.push_str("</identity><target uri=\"sip:");
        xml_escape(&mut out, &c.remote);
        out.push_str("\"/></remote></dialog>\r\n");
    }
    out.push_str("</dialog-info>\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(phase: CallPhase, direction: CallDirection) -> CallState {
        CallState {
            call_id: "c-1".into(),
            sip_call_id: "abc@host".into(),
            direction,
            remote: "bob@example.test".into(),
            phase,
        }
    }

    #[test]
    fn no_call_is_an_empty_full_document() {
        let b = body("alice@example.test", 0, std::iter::empty());
        assert!(b.contains("version=\"0\" state=\"full\" entity=\"sip:alice@example.test\""));
        assert!(!b.contains("<dialog "));
    }

    #[test]
    fn a_ringing_inbound_call_is_an_early_recipient_dialog() {
        let c = call(CallPhase::Early, CallDirection::Inbound);
        let b = body("alice@example.test", 3, [&c].into_iter());
        assert!(b.contains("version=\"3\""));
        assert!(b.contains(
            "<dialog id=\"c-1\" call-id=\"abc@host\" direction=\"recipient\"><state>early</state>"
        ));
        assert!(b.contains("<remote><identity>sip:bob@example.test</identity>"));
        assert!(b.contains("<local><identity>sip:alice@example.test</identity>"));
    }

    #[test]
    fn every_phase_has_its_rfc_4235_name() {
        for (p, n) in [
            (CallPhase::Trying, "trying"),
            (CallPhase::Early, "early"),
            (CallPhase::Confirmed, "confirmed"),
            (CallPhase::Terminated, "terminated"),
        ] {
            let c = call(p, CallDirection::Outbound);
            let b = body("a@x.test", 0, [&c].into_iter());
            assert!(b.contains(&format!("<state>{n}</state>")), "{b}");
            assert!(b.contains("direction=\"initiator\""));
        }
    }
}
