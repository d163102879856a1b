//! PIDF presence documents (RFC 3863) with RPID activities (RFC 4480)
//! for the `presence` package (RFC 3856).
//!
//! | availability     | `<basic>` | activity          | note             |
//! |------------------|-----------|-------------------|------------------|
//! | offline          | closed    | —                 | Offline          |
//! | online           | open      | —                 | Online           |
//! | ringing          | open      | —                 | Ringing          |
//! | on the phone     | open      | `on-the-phone`    | On the phone     |
//! | do not disturb   | open      | `busy`            | Do not disturb   |
//!
//! Do-not-disturb is the user's DND setting (`dialtone user dnd`), reported
//! by the backend as [`Availability::DoNotDisturb`] while a phone is
//! registered: reachable, not taking calls (RFC 4480 `busy`).

use crate::backend::Availability;

use super::package::xml_escape;

/// What a presence document says about one availability.
struct Shown {
    basic: &'static str,
    activity: Option<&'static str>,
    note: &'static str,
}

fn shown(a: Availability) -> Shown {
    match a {
        Availability::Offline => Shown {
            basic: "closed",
            activity: None,
            note: "Offline",
        },
        Availability::Online => Shown {
            basic: "open",
            activity: None,
            note: "Online",
        },
        Availability::Ringing => Shown {
            basic: "open",
            activity: None,
            note: "Ringing",
        },
        Availability::OnThePhone => Shown {
            basic: "open",
            activity: Some("on-the-phone"),
            note: "On the phone",
        },
        Availability::DoNotDisturb => Shown {
            basic: "open",
            activity: Some("busy"),
            note: "Do not disturb",
        },
    }
}

/// The PIDF document of `entity` (`user@domain`).
pub fn body(entity: &str, availability: Availability) -> String {
    let s = shown(availability);
    let mut out = String::with_capacity(512);
    out.push_str(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n\
<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" \
xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" \
xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\" entity=\"sip:",
    );
    xml_escape(&mut out, entity);
    out.push_str("\">\r\n<tuple id=\"t1\"><status><basic>");
    out.push_str(s.basic);
    out.push_str("</basic></status><contact>sip:");
    xml_escape(&mut out, entity);
    out.push_str("</contact><note>");
    out.push_str(s.note);
    out.push_str("</note></tuple>\r\n<dm:person id=\"p1\">");
    if let Some(activity) = s.activity {
        out.push_str("<rpid:activities><rpid:");
        out.push_str(activity);
        out.push_str("/></rpid:activities>");
    }
    out.push_str("<dm:note>");
    out.push_str(s.note);
    out.push_str("</dm:note></dm:person>\r\n</presence>\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_is_closed_and_online_open() {
        let off = body("alice@example.test", Availability::Offline);
        assert!(off.contains("entity=\"sip:alice@example.test\""));
        assert!(off.contains("<basic>closed</basic>"));
        assert!(!off.contains("rpid:activities"));
        let on = body("alice@example.test", Availability::Online);
        assert!(on.contains("<basic>open</basic>"));
        assert!(on.contains("<note>Online</note>"));
    }

    #[test]
    fn on_the_phone_and_dnd_are_activities() {
        let b = body("a@x.test", Availability::OnThePhone);
        assert!(b.contains("<basic>open</basic>"));
        assert!(b.contains("<rpid:on-the-phone/>"));
        let b = body("a@x.test", Availability::DoNotDisturb);
        assert!(b.contains("<rpid:busy/>"));
        assert!(b.contains("Do not disturb"));
    }

    #[test]
    fn entity_is_escaped() {
        let b = body("a\"<b>@x.test", Availability::Online);
        assert!(b.contains("entity=\"sip:a&quot;&lt;b&gt;@x.test\""));
    }
}
