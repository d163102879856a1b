//! A leg of a back-to-back call: one SIP dialog in which the node is a
//! user agent (RFC 3261 s.12), and the messages the node writes in it.
//!
//! A leg knows only its own dialog: its Call-ID, both tags, the remote
//! target and route set, both CSeq spaces and the flow its peer is reached
//! on. Nothing of another leg is ever written into it: that is what hides
//! one side's topology (Via, Record-Route, Contact, Call-ID, tags) from the
//! other.

use bytes::Bytes;

use crate::transport::Flow;
use crate::wire::message::{split_list, Message, Name, NameAddr};
use crate::wire::response::{write_u64, Response, Source};

/// Which side of a back-to-back call a leg faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LegId {
    /// The caller's leg: the node is its UAS.
    Caller,
    /// The leg to routing target `usize`: the node is its UAC.
    Callee(usize),
}

/// A dialog the node is a UA in.
#[derive(Debug, Clone)]
pub(crate) struct LegDialog {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
    /// Our name-addr with our tag: From of the requests we send.
    pub local: String,
    /// The peer's name-addr with its tag: To of the requests we send.
    pub remote: String,
    /// The peer's Contact: the Request-URI of the requests we send.
    pub remote_target: String,
    /// Route headers of the requests we send (RFC 3261 s.12.1).
    pub route_set: Vec<String>,
    /// The CSeq of the last request we sent.
    pub local_cseq: u32,
    /// Where the peer is reached.
    pub flow: Flow,
}

impl LegDialog {
    /// Is `msg` (a request) from the peer of this dialog?
    pub fn owns(&self, call_id: &str, from_tag: &str, to_tag: &str) -> bool {
        self.call_id == call_id && self.remote_tag == from_tag && self.local_tag == to_tag
    }

    /// A new request in this dialog (the next CSeq unless `cseq` is given:
    /// an ACK repeats its INVITE's).
    pub fn request(
        &mut self,
        method: &str,
        via: &str,
        cseq: Option<u32>,
        contact: Option<&str>,
        carried: &[(String, String)],
        body: &[u8],
    ) -> (u32, Bytes) {
        let cseq = match cseq {
            Some(n) => n,
            None => {
                self.local_cseq = self.local_cseq.wrapping_add(1);
                self.local_cseq
            }
        };
        let bytes = request(&Request {
            method,
            max_forwards: 70,
            ruri: &self.remote_target,
            via,
            route: &self.route_set,
            from: &self.local,
            to: &self.remote,
            call_id: &self.call_id,
            cseq,
            contact,
            carried,
            body,
        });
        (cseq, bytes)
    }
}

/// A request the node writes as a UA.
pub(crate) struct Request<'a> {
    pub method: &'a str,
    /// An initial INVITE carries the caller's, decremented: a contact that
    /// leads back to the node cannot make legs call each other forever.
    pub max_forwards: u32,
    pub ruri: &'a str,
    pub via: &'a str,
    pub route: &'a [String],
    pub from: &'a str,
    pub to: &'a str,
    pub call_id: &'a str,
    pub cseq: u32,
    pub contact: Option<&'a str>,
    pub carried: &'a [(String, String)],
    pub body: &'a [u8],
}

pub(crate) fn request(r: &Request<'_>) -> Bytes {
    let mut out = Vec::with_capacity(400 + r.body.len() + r.from.len() + r.to.len());
    let line = |out: &mut Vec<u8>, name: &str, value: &str| {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    };
    out.extend_from_slice(r.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(r.ruri.as_bytes());
    out.extend_from_slice(b" SIP/2.0\r\n");
    line(&mut out, "Via", r.via);
    out.extend_from_slice(b"Max-Forwards: ");
    write_u64(&mut out, u64::from(r.max_forwards));
    out.extend_from_slice(b"\r\n");
    for route in r.route {
        line(&mut out, "Route", route);
    }
    line(&mut out, "From", r.from);
    line(&mut out, "To", r.to);
    line(&mut out, "Call-ID", r.call_id);
    out.extend_from_slice(b"CSeq: ");
    write_u64(&mut out, u64::from(r.cseq));
    out.push(b' ');
    out.extend_from_slice(r.method.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(c) = r.contact {
        line(&mut out, "Contact", c);
    }
    for (name, value) in r.carried {
        line(&mut out, name, value);
    }
    finish(&mut out, r.body);
    Bytes::from(out)
}

fn finish(out: &mut Vec<u8>, body: &[u8]) {
    out.extend_from_slice(b"Content-Length: ");
    write_u64(out, body.len() as u64);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

/// A response the node writes as the UAS of `req` (its Via, From, To,
/// Call-ID and CSeq; `to_tag` added when To has none), with `headers`
/// and `body`.
pub(crate) fn response(
    req: &Message<'_>,
    source: &Source,
    code: u16,
    reason: &str,
    to_tag: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Bytes {
    let mut r = Response::with_reason(req, source, code, reason, to_tag);
    for (name, value) in headers {
        r.header(name, value);
    }
    let bytes = r.finish();
    if body.is_empty() {
        return bytes;
    }
    // `finish` ends with an empty body: replace its length and add ours.
    const EMPTY: &[u8] = b"Content-Length: 0\r\n\r\n";
    let head = bytes.strip_suffix(EMPTY).unwrap_or(&bytes);
    let mut out = Vec::with_capacity(head.len() + body.len() + 32);
    out.extend_from_slice(head);
    finish(&mut out, body);
    Bytes::from(out)
}

/// The headers of `msg` that say something about the session or the
/// peer's capabilities and nothing about its topology: carried from one
/// leg to the other. `100rel` is taken out of Supported: reliable
/// provisional responses (PRACK) are not relayed between legs.
pub(crate) fn carried(msg: &Message<'_>) -> Vec<(String, String)> {
    const OTHERS: &[&str] = &[
        "P-Asserted-Identity",
        "Content-Disposition",
        "Event",
        "Subscription-State",
        "Reason",
        "Info-Package",
        "Recv-Info",
        // Whom the call was for, when it was forwarded before it came
        // here (RFC 5806, RFC 7044).
        "Diversion",
        "History-Info",
        // A transfer (RFC 3515, RFC 3892) relayed between the legs: what
        // the REFER asks for, and who asked (also on the new INVITE).
        "Refer-To",
        "r",
        "Referred-By",
        "b",
        // A transfer's new INVITE names the dialog it replaces (RFC 3891);
        // the node translated it to the target's leg when it relayed the
        // REFER.
        "Replaces",
    ];
    let mut out = Vec::new();
    for h in &msg.headers {
        match h.name {
            Name::ContentType => out.push(("Content-Type".to_owned(), h.value.to_string())),
            Name::Allow => out.push(("Allow".to_owned(), h.value.to_string())),
            Name::Supported => {
                let kept: Vec<&str> = split_list(&h.value)
                    .filter(|t| !t.eq_ignore_ascii_case("100rel"))
                    .collect();
                if !kept.is_empty() {
                    out.push(("Supported".to_owned(), kept.join(", ")));
                }
            }
            Name::Other if OTHERS.iter().any(|n| n.eq_ignore_ascii_case(h.raw_name)) => {
                out.push((h.raw_name.to_owned(), h.value.to_string()));
            }
            _ => {}
        }
    }
    out
}

/// The URI of the first Contact of `msg`.
pub(crate) fn contact_uri(msg: &Message<'_>) -> Option<String> {
    msg.list(Name::Contact)
        .next()
        .and_then(NameAddr::parse)
        .map(|n| n.uri.to_owned())
}

/// `value` (a From or To name-addr) without its parameters, then `tag`.
pub(crate) fn with_own_tag(value: &str, tag: &str) -> String {
    match NameAddr::parse(value) {
        Some(n) => match n.display {
            Some(d) if !d.is_empty() => format!("{d} <{}>;tag={tag}", n.uri),
            _ => format!("<{}>;tag={tag}", n.uri),
        },
        None => format!("{value};tag={tag}"),
    }
}

/// The node's Contact for a leg reached over `flow`.
pub(crate) fn own_contact(advertised: &str, flow: Flow) -> String {
    if flow.transport.is_reliable() {
        format!(
            "<sip:{advertised};transport={}>",
            flow.transport.as_str().to_ascii_lowercase()
        )
    } else {
        format!("<sip:{advertised}>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_tag_replaces_the_parameters() {
        assert_eq!(
            with_own_tag("\"Alice\" <sip:alice@example.com>;tag=abc", "x1"),
            "\"Alice\" <sip:alice@example.com>;tag=x1"
        );
        assert_eq!(
            with_own_tag("<sip:bob@example.com>", "x2"),
            "<sip:bob@example.com>;tag=x2"
        );
    }

    #[test]
    fn carried_headers_keep_the_session_and_drop_the_topology() {
        let text = "INVITE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKa\r\n\
Record-Route: <sip:10.9.9.9;lr>\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: c\r\n\
CSeq: 1 INVITE\r\nContact: <sip:a@10.0.0.1>\r\nSupported: 100rel, replaces\r\n\
P-Asserted-Identity: <sip:a@x>\r\nc: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n";
        let msg = Message::parse(text.as_bytes()).unwrap();
        let c = carried(&msg);
        let names: Vec<&str> = c.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["Supported", "P-Asserted-Identity", "Content-Type"],
            "{c:?}"
        );
        assert_eq!(c[0].1, "replaces");
        let with_body = response(
            &msg,
            &Source {
                addr: "10.0.0.1:5060".parse().unwrap(),
                reliable: false,
            },
            200,
            "OK",
            "t",
            &c,
            msg.body,
        );
        let parsed = Message::parse(&with_body).unwrap();
        assert_eq!(parsed.body, b"v=0\n");
        assert_eq!(parsed.to().unwrap().tag(), Some("t"));
    }
}
