//! Dialog-info documents (RFC 4235) for the `dialog` package: what desk
//! phones light their busy-lamp fields from.
//!
//! Every NOTIFY carries the full state (`state="full"`): each call leg of
//! the watched user in progress, plus the legs that ended since the last
//! NOTIFY (as `terminated`, once). `version` counts the documents sent on
//! one subscription from 0 (RFC 4235 s.4.1). A dialog is identified by the
//! leg's `call_id` and carries the SIP `call-id`, the direction
//! (`initiator` when the watched user called, `recipient` when it is
//! called), both parties' identities, and the dialog's tags as the
//! gateway saw them pass (the caller's From tag in the INVITE, the callee's
//! To tag in its 1xx/2xx): `local-tag` is the watched user's side,
//! `remote-tag` the other's. Call-ID and tags are what a phone needs to
//! pick the call up with `Replaces`; a tag not seen (yet) is left out
//! (both are optional in RFC 4235).

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

/// The tags of a call's dialog as the gateway saw them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tags {
    /// The caller's From tag.
    pub caller: Option<String>,
    /// The callee's To tag (the answering one's, once answered).
    pub callee: Option<String>,
}

/// The dialog-info document number `version` of `entity`
/// (`user@domain`) listing `calls` with their tags.
pub fn body<'a>(
    entity: &str,
    version: u32,
    calls: impl Iterator<Item = (&'a CallState, Option<&'a Tags>)>,
) -> String {
    let mut out = String::with_capacity(512);
    out.push_str(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n\
<dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"",
    );
    out.push_str(&version.to_string());
    out.push_str("\" state=\"full\" entity=\"sip:");
    xml_escape(&mut out, entity);
    out.push_str("\">\r\n");
    for (c, tags) in calls {
        out.push_str("<dialog id=\"");
        xml_escape(&mut out, &c.call_id);
        out.push_str("\" call-id=\"");
        xml_escape(&mut out, &c.sip_call_id);
        out.push_str("\" direction=\"");
        out.push_str(match c.direction {
            CallDirection::Outbound => "initiator",
            CallDirection::Inbound => "recipient",
        });
        out.push('"');
        if let Some(t) = tags {
            let (local, remote) = match c.direction {
                CallDirection::Outbound => (&t.caller, &t.callee),
                CallDirection::Inbound => (&t.callee, &t.caller),
            };
            for (name, tag) in [("local-tag", local), ("remote-tag", remote)] {
                if let Some(tag) = tag {
                    out.push(' ');
                    out.push_str(name);
                    out.push_str("=\"");
                    xml_escape(&mut out, tag);
                    out.push('"');
                }
            }
        }
        out.push_str("><state>");
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
        let b = body("alice@example.test", 3, [(&c, None)].into_iter());
        assert!(b.contains("version=\"3\""));
        assert!(b.contains(
            "<dialog id=\"c-1\" call-id=\"abc@host\" direction=\"recipient\"><state>early</state>"
        ));
        assert!(b.contains("<remote><identity>sip:bob@example.test</identity>"));
        assert!(b.contains("<local><identity>sip:alice@example.test</identity>"));
    }

    #[test]
    fn tags_are_the_watched_sides_local_and_the_other_remote() {
        let tags = Tags {
            caller: Some("from-1".into()),
            callee: Some("to-2".into()),
        };
        let c = call(CallPhase::Confirmed, CallDirection::Inbound);
        let b = body("alice@example.test", 0, [(&c, Some(&tags))].into_iter());
        assert!(
            b.contains("direction=\"recipient\" local-tag=\"to-2\" remote-tag=\"from-1\">"),
            "{b}"
        );
        let c = call(CallPhase::Early, CallDirection::Outbound);
        let half = Tags {
            caller: Some("from-1".into()),
            callee: None,
        };
        let b = body("alice@example.test", 0, [(&c, Some(&half))].into_iter());
        assert!(
            b.contains("direction=\"initiator\" local-tag=\"from-1\">"),
            "{b}"
        );
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
            let b = body("a@x.test", 0, [(&c, None)].into_iter());
            assert!(b.contains(&format!("<state>{n}</state>")), "{b}");
            assert!(b.contains("direction=\"initiator\""));
        }
    }
}
