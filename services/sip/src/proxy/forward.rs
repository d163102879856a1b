//! Building the messages a proxy sends: forwarded requests (RFC 3261
//! s.16.6), relayed responses (s.16.7), and the ACK and CANCEL a proxy
//! makes itself (s.17.1.1.3, s.9.1). Everything writes bytes straight from
//! a parsed [`Message`], copying the headers it does not touch verbatim.

use bytes::Bytes;

use crate::wire::message::{split_list, Message, Name, StartLine, Via};
use crate::wire::response::{write_top_via, write_u64, Source};

/// How a request is rewritten when forwarded.
pub(crate) struct Forward<'a> {
    /// The new Request-URI (`None`: keep it).
    pub ruri: Option<&'a str>,
    /// The value of our own Via, put on top.
    pub via: &'a str,
    /// A Record-Route value to add first (initial INVITEs).
    pub record_route: Option<&'a str>,
    /// Where the request came from: the previous hop's Via gets `received`
    /// and `rport` so that responses can be relayed without state.
    pub source: Source,
    /// The decremented Max-Forwards.
    pub max_forwards: u32,
    /// How many leading Route elements are ours and are removed
    /// (loose routing, RFC 3261 s.16.4).
    pub pop_routes: usize,
    /// Drop Proxy-Authorization (credentials for our realm, consumed here).
    pub drop_proxy_authorization: bool,
    /// The forwards of a forwarded call, for the phone that rings.
    pub retargeting: Option<&'a Retargeting>,
}

/// How a forwarded call tells the phone that rings whom the call was for:
/// a Diversion header (RFC 5806, what most deployed phones show) and a
/// History-Info header (RFC 7044, its standards-track successor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Retargeting {
    /// The Diversion value: one entry per forward, the most recent first
    /// (RFC 5806 s.4: a diverting proxy adds its entry on top).
    pub diversion: String,
    /// The History-Info value: the dialled user (index 1), then each user
    /// the call was forwarded to as a child of the one before it, with
    /// the forward's `cause` (RFC 4458) in its URI and `mp` naming the
    /// entry it was retargeted from.
    pub history_info: String,
}

impl Retargeting {
    /// `None` for a call that was not forwarded.
    pub(crate) fn of(diversions: &[crate::backend::Diversion]) -> Option<Retargeting> {
        let first = diversions.first()?;
        let mut diversion = String::with_capacity(64 * diversions.len());
        for (i, d) in diversions.iter().rev().enumerate() {
            if i > 0 {
                diversion.push_str(", ");
            }
            diversion.push_str(&format!(
                "<sip:{}@{}>;reason={};counter=1",
                d.from.1,
                d.from.0,
                d.reason.diversion_reason()
            ));
        }
        let mut index = String::from("1");
        let mut history_info = format!("<sip:{}@{}>;index=1", first.from.1, first.from.0);
        for d in diversions {
            let parent = index.clone();
            index.push_str(".1");
            history_info.push_str(&format!(
                ", <sip:{}@{};cause={}>;index={index};mp={parent}",
                d.to.1,
                d.to.0,
                d.reason.history_cause()
            ));
        }
        Some(Retargeting {
            diversion,
            history_info,
        })
    }
}

fn is_named(h: &crate::wire::message::Header<'_>, name: &str) -> bool {
    h.name == Name::Other && h.raw_name.eq_ignore_ascii_case(name)
}

/// Writes the forwarded copy of request `msg`.
pub(crate) fn forward_request(msg: &Message<'_>, f: &Forward<'_>) -> Bytes {
    let StartLine::Request {
        method_text, uri, ..
    } = msg.start
    else {
        return Bytes::new();
    };
    let size: usize = msg
        .headers
        .iter()
        .map(|h| h.raw_name.len() + h.value.len() + 4)
        .sum::<usize>()
        + msg.body.len()
        + 256
        + f.via.len()
        + f.record_route.map_or(0, str::len)
        + f.retargeting
            .map_or(0, |r| r.diversion.len() + r.history_info.len() + 32);
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(method_text.as_bytes());
    out.push(b' ');
    out.extend_from_slice(f.ruri.unwrap_or(uri).as_bytes());
    out.extend_from_slice(b" SIP/2.0\r\nVia: ");
    out.extend_from_slice(f.via.as_bytes());
    out.extend_from_slice(b"\r\n");
    // Our Record-Route goes after the Via block (some UAs expect the Via
    // lines together) and before any other Record-Route (ours is the top
    // one, RFC 3261 s.16.6 step 4).
    let mut record_route = f.record_route;
    let mut write_record_route = |out: &mut Vec<u8>| {
        if let Some(rr) = record_route.take() {
            out.extend_from_slice(b"Record-Route: ");
            out.extend_from_slice(rr.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    };
    let mut first_via = true;
    let mut routes_to_pop = f.pop_routes;
    let mut wrote_max_forwards = false;
    // Our Diversion entries go on top of any the request carries already;
    // our History-Info only when it carries none (its indexes are the
    // previous hops' to extend, which this proxy does not do).
    let mut diversion = f.retargeting.map(|r| r.diversion.as_str());
    let history_info = f
        .retargeting
        .filter(|_| !msg.headers.iter().any(|h| is_named(h, "History-Info")))
        .map(|r| r.history_info.as_str());
    for h in &msg.headers {
        if h.name != Name::Via {
            write_record_route(&mut out);
        }
        if is_named(h, "Diversion") {
            if let Some(ours) = diversion.take() {
                out.extend_from_slice(b"Diversion: ");
                out.extend_from_slice(ours.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        match h.name {
            Name::Via if first_via => {
                first_via = false;
                let mut elements = split_list(&h.value);
                out.extend_from_slice(b"Via: ");
                if let Some(top) = elements.next() {
                    match Via::parse(top) {
                        Ok(v) => write_top_via(&mut out, &v, &f.source),
                        Err(_) => out.extend_from_slice(top.as_bytes()),
                    }
                }
                for e in elements {
                    out.extend_from_slice(b", ");
                    out.extend_from_slice(e.as_bytes());
                }
                out.extend_from_slice(b"\r\n");
            }
            Name::Route if routes_to_pop > 0 => {
                let mut kept = Vec::new();
                for e in split_list(&h.value) {
                    if routes_to_pop > 0 {
                        routes_to_pop -= 1;
                    } else {
                        kept.push(e);
                    }
                }
                if !kept.is_empty() {
                    out.extend_from_slice(b"Route: ");
                    out.extend_from_slice(kept.join(", ").as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
            }
            Name::MaxForwards => {
                if !wrote_max_forwards {
                    wrote_max_forwards = true;
                    out.extend_from_slice(b"Max-Forwards: ");
                    write_u64(&mut out, u64::from(f.max_forwards));
                    out.extend_from_slice(b"\r\n");
                }
            }
            Name::ProxyAuthorization if f.drop_proxy_authorization => {}
            Name::ContentLength => {}
            _ => {
                out.extend_from_slice(h.raw_name.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(h.value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    write_record_route(&mut out);
    for (name, value) in [("Diversion", diversion), ("History-Info", history_info)] {
        if let Some(value) = value {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    if !wrote_max_forwards {
        out.extend_from_slice(b"Max-Forwards: ");
        write_u64(&mut out, u64::from(f.max_forwards));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Content-Length: ");
    write_u64(&mut out, msg.body.len() as u64);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(msg.body);
    Bytes::from(out)
}

/// Writes response `msg` without its top Via element (ours), for the
/// previous hop. `None` when there is no Via left (a response to a request
/// we made ourselves).
pub(crate) fn strip_top_via(msg: &Message<'_>) -> Option<Bytes> {
    let StartLine::Response { code, reason } = msg.start else {
        return None;
    };
    let mut out = Vec::with_capacity(
        msg.headers
            .iter()
            .map(|h| h.raw_name.len() + h.value.len() + 4)
            .sum::<usize>()
            + msg.body.len()
            + 64,
    );
    out.extend_from_slice(b"SIP/2.0 ");
    write_u64(&mut out, u64::from(code));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut stripped = false;
    let mut vias_left = false;
    for h in &msg.headers {
        match h.name {
            Name::Via if !stripped => {
                stripped = true;
                let rest: Vec<&str> = split_list(&h.value).skip(1).collect();
                if !rest.is_empty() {
                    vias_left = true;
                    out.extend_from_slice(b"Via: ");
                    out.extend_from_slice(rest.join(", ").as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
            }
            Name::ContentLength => {}
            _ => {
                if h.name == Name::Via {
                    vias_left = true;
                }
                out.extend_from_slice(h.raw_name.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(h.value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    if !vias_left {
        return None;
    }
    out.extend_from_slice(b"Content-Length: ");
    write_u64(&mut out, msg.body.len() as u64);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(msg.body);
    Some(Bytes::from(out))
}

/// What a proxy needs to repeat about the INVITE it forwarded on a branch
/// to build that branch's ACK and CANCEL.
#[derive(Debug, Clone)]
pub(crate) struct SentInvite {
    pub ruri: String,
    pub via: String,
    pub from: String,
    pub to: String,
    pub call_id: String,
    pub cseq: u32,
}

/// The ACK for a non-2xx final response `to_header` (its To, with the
/// tag) on a branch (RFC 3261 s.17.1.1.3).
pub(crate) fn ack_for(sent: &SentInvite, to_header: &str) -> Bytes {
    in_transaction_request("ACK", sent, to_header)
}

/// The CANCEL of a branch (RFC 3261 s.9.1): the same Request-URI, Via
/// branch, From, To (without a tag), Call-ID and CSeq number.
pub(crate) fn cancel_for(sent: &SentInvite) -> Bytes {
    in_transaction_request("CANCEL", sent, &sent.to)
}

fn in_transaction_request(method: &str, sent: &SentInvite, to: &str) -> Bytes {
    let mut out = Vec::with_capacity(256 + sent.ruri.len() + sent.via.len() + sent.from.len());
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(sent.ruri.as_bytes());
    out.extend_from_slice(b" SIP/2.0\r\nVia: ");
    out.extend_from_slice(sent.via.as_bytes());
    out.extend_from_slice(b"\r\nMax-Forwards: 70\r\nFrom: ");
    out.extend_from_slice(sent.from.as_bytes());
    out.extend_from_slice(b"\r\nTo: ");
    out.extend_from_slice(to.as_bytes());
    out.extend_from_slice(b"\r\nCall-ID: ");
    out.extend_from_slice(sent.call_id.as_bytes());
    out.extend_from_slice(b"\r\nCSeq: ");
    write_u64(&mut out, u64::from(sent.cseq));
    out.push(b' ');
    out.extend_from_slice(method.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
    Bytes::from(out)
}

/// A BYE the proxy sends itself (maximum call duration) inside a dialog.
pub(crate) struct OwnBye<'a> {
    pub ruri: &'a str,
    pub via: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub call_id: &'a str,
    pub cseq: u32,
    pub route: Option<&'a str>,
}

pub(crate) fn bye(b: &OwnBye<'_>) -> Bytes {
    let mut out = Vec::with_capacity(320 + b.ruri.len() + b.from.len() + b.to.len());
    out.extend_from_slice(b"BYE ");
    out.extend_from_slice(b.ruri.as_bytes());
    out.extend_from_slice(b" SIP/2.0\r\nVia: ");
    out.extend_from_slice(b.via.as_bytes());
    out.extend_from_slice(b"\r\nMax-Forwards: 70\r\nFrom: ");
    out.extend_from_slice(b.from.as_bytes());
    out.extend_from_slice(b"\r\nTo: ");
    out.extend_from_slice(b.to.as_bytes());
    out.extend_from_slice(b"\r\nCall-ID: ");
    out.extend_from_slice(b.call_id.as_bytes());
    out.extend_from_slice(b"\r\nCSeq: ");
    write_u64(&mut out, u64::from(b.cseq));
    out.extend_from_slice(b" BYE\r\n");
    if let Some(r) = b.route {
        out.extend_from_slice(b"Route: ");
        out.extend_from_slice(r.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Reason: SIP;cause=408;text=\"Maximum call duration\"\r\n");
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Diversion, DiversionReason};
    use crate::transport::{response_destination, uri_destination, Transport};

    const INVITE: &str = "INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bKabc;rport, SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKold\r\n\
Route: <sip:192.0.2.1:5060;lr>, <sip:192.0.2.7;lr>\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@example.com>;tag=a1\r\n\
To: <sip:bob@example.com>\r\n\
Call-ID: c1\r\n\
CSeq: 2 INVITE\r\n\
Proxy-Authorization: Digest username=\"alice\"\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\
\r\n\
v=0\n";

    #[test]
    fn forwarded_invite_is_rewritten_and_parses() {
        let msg = Message::parse(INVITE.as_bytes()).unwrap();
        let out = forward_request(
            &msg,
            &Forward {
                ruri: Some("sip:bob@10.0.0.2:5070"),
                via: "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-dtx",
                record_route: Some("<sip:192.0.2.1:5060;lr>"),
                source: Source {
                    addr: "203.0.113.5:40000".parse().unwrap(),
                    reliable: false,
                },
                max_forwards: 69,
                pop_routes: 1,
                drop_proxy_authorization: true,
                retargeting: None,
            },
        );
        let text = std::str::from_utf8(&out).unwrap();
        let fwd = Message::parse(&out).unwrap();
        assert!(text.starts_with("INVITE sip:bob@10.0.0.2:5070 SIP/2.0\r\n"));
        let vias: Vec<&str> = fwd.list(Name::Via).collect();
        assert_eq!(vias.len(), 3);
        assert!(vias[0].contains("z9hG4bK-dtx"));
        assert!(vias[1].contains("received=203.0.113.5"), "{}", vias[1]);
        assert!(vias[1].contains("rport=40000"), "{}", vias[1]);
        assert_eq!(
            fwd.list(Name::Route).collect::<Vec<_>>(),
            ["<sip:192.0.2.7;lr>"]
        );
        assert_eq!(fwd.max_forwards().unwrap(), Some(69));
        assert!(fwd.header(Name::ProxyAuthorization).is_none());
        assert_eq!(
            fwd.header(Name::RecordRoute),
            Some("<sip:192.0.2.1:5060;lr>")
        );
        assert_eq!(fwd.body, b"v=0\n");
    }

    fn diversion(from: &str, to: &str, reason: DiversionReason) -> Diversion {
        Diversion {
            from: ("example.com".to_owned(), from.to_owned()),
            to: ("example.com".to_owned(), to.to_owned()),
            reason,
            to_group: false,
            to_voicemail: false,
            to_conference: false,
        }
    }

    #[test]
    fn a_forwarded_invite_says_whom_the_call_was_for() {
        assert_eq!(Retargeting::of(&[]), None);
        let chain = [
            diversion("bob", "carol", DiversionReason::NoAnswer),
            diversion("carol", "dave", DiversionReason::UserBusy),
        ];
        let r = Retargeting::of(&chain).unwrap();
        // RFC 5806: the most recent diversion first.
        assert_eq!(
            r.diversion,
            "<sip:carol@example.com>;reason=user-busy;counter=1, \
             <sip:bob@example.com>;reason=no-answer;counter=1"
        );
        // RFC 7044: the dialled user, then each retarget as a child of
        // the entry before it, with RFC 4458's cause.
        assert_eq!(
            r.history_info,
            "<sip:bob@example.com>;index=1, \
             <sip:carol@example.com;cause=408>;index=1.1;mp=1, \
             <sip:dave@example.com;cause=486>;index=1.1.1;mp=1.1"
        );

        let forward = |raw: &str| {
            let msg = Message::parse(raw.as_bytes()).unwrap();
            let out = forward_request(
                &msg,
                &Forward {
                    ruri: Some("sip:dave@10.0.0.2:5070"),
                    via: "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-dtx",
                    record_route: None,
                    source: Source {
                        addr: "203.0.113.5:40000".parse().unwrap(),
                        reliable: false,
                    },
                    max_forwards: 69,
                    pop_routes: 0,
                    drop_proxy_authorization: true,
                    retargeting: Some(&r),
                },
            );
            String::from_utf8(out.to_vec()).unwrap()
        };
        let text = forward(INVITE);
        let fwd = Message::parse(text.as_bytes()).unwrap();
        assert_eq!(fwd.body, b"v=0\n");
        assert!(text.contains(&format!("\r\nDiversion: {}\r\n", r.diversion)));
        assert!(text.contains(&format!("\r\nHistory-Info: {}\r\n", r.history_info)));

        // The caller's own Diversion stays below ours; its History-Info is
        // kept and ours not added.
        let diverted = INVITE.replace(
            "Call-ID: c1\r\n",
            "Call-ID: c1\r\nDiversion: <sip:x@elsewhere>;reason=unconditional\r\n\
             History-Info: <sip:x@elsewhere>;index=1\r\n",
        );
        let text = forward(&diverted);
        let ours = text.find(&r.diversion).unwrap();
        let theirs = text.find("<sip:x@elsewhere>;reason").unwrap();
        assert!(ours < theirs, "{text}");
        assert_eq!(text.matches("History-Info:").count(), 1, "{text}");
        assert!(Message::parse(text.as_bytes()).is_ok());
    }

    #[test]
    fn relayed_response_loses_the_top_via_and_finds_the_next_hop() {
        let resp = "SIP/2.0 180 Ringing\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-dtx, SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bKabc;rport=40000;received=203.0.113.5\r\n\
From: <sip:alice@example.com>;tag=a1\r\n\
To: <sip:bob@example.com>;tag=b1\r\n\
Call-ID: c1\r\n\
CSeq: 2 INVITE\r\n\
Content-Length: 0\r\n\r\n";
        let msg = Message::parse(resp.as_bytes()).unwrap();
        let out = strip_top_via(&msg).unwrap();
        let relayed = Message::parse(&out).unwrap();
        let top = relayed.top_via().unwrap();
        assert_eq!(top.branch(), Some("z9hG4bKabc"));
        assert_eq!(
            response_destination(&top),
            Some((Transport::Udp, "203.0.113.5:40000".parse().unwrap()))
        );
        // A response to our own request has nowhere to go.
        let own = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-ds1\r\n\
From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: c\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n";
        assert!(strip_top_via(&Message::parse(own.as_bytes()).unwrap()).is_none());
    }

    #[test]
    fn ack_and_cancel_repeat_the_branch() {
        let sent = SentInvite {
            ruri: "sip:bob@10.0.0.2:5070".into(),
            via: "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-dtx".into(),
            from: "<sip:alice@example.com>;tag=a1".into(),
            to: "<sip:bob@example.com>".into(),
            call_id: "c1".into(),
            cseq: 2,
        };
        let cancel = cancel_for(&sent);
        let m = Message::parse(&cancel).unwrap();
        assert_eq!(m.cseq().unwrap().method, "CANCEL");
        assert_eq!(m.top_via().unwrap().branch(), Some("z9hG4bK-dtx"));
        let ack = ack_for(&sent, "<sip:bob@example.com>;tag=b9");
        let m = Message::parse(&ack).unwrap();
        assert_eq!(m.to().unwrap().tag(), Some("b9"));
        assert_eq!(m.cseq().unwrap().seq, 2);
        assert_eq!(
            uri_destination("sip:bob@10.0.0.2:5070;transport=tcp"),
            Some((Transport::Tcp, "10.0.0.2:5070".parse().unwrap()))
        );
        assert_eq!(uri_destination("sip:bob@example.com"), None);
    }
}
