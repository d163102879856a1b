//! What makes a request acceptable before any work is done on it (RFC
//! 3261 s.8.2, RFC 4475's torture cases), and reading what can still be
//! answered from a message that does not parse.

use super::*;

/// Checks the headers every request needs (RFC 3261 s.8.1.1) beyond being
/// addressable.
pub(super) fn validate(msg: &Message<'_>, method_text: &str) -> Result<(), ParseError> {
    msg.call_id()?;
    msg.from()?;
    msg.to()?;
    let cseq = msg.cseq()?;
    if cseq.method != method_text {
        return Err(ParseError::Header("CSeq"));
    }
    // Single-valued header fields given more than once (RFC 4475 s.3.3.8).
    for (name, label) in [
        (Name::CallId, "Call-ID"),
        (Name::From, "From"),
        (Name::To, "To"),
        (Name::CSeq, "CSeq"),
        (Name::MaxForwards, "Max-Forwards"),
    ] {
        if msg.headers(name).nth(1).is_some() {
            return Err(ParseError::Header(label));
        }
    }
    // Empty Via values or parameters, `192.0.2.15;;,;,,` (RFC 4475 s.3.1.2.1).
    for value in msg.headers(Name::Via) {
        if !via_value_ok(value) {
            return Err(ParseError::Header("Via"));
        }
    }
    if let StartLine::Request { uri, .. } = msg.start {
        // A URI needs a scheme; other schemes than sip(s) are 416 later
        // where they matter.
        if !uri.bytes().any(|b| b == b':') || uri.bytes().any(|b| matches!(b, b'<' | b'>' | b'"')) {
            return Err(ParseError::RequestUri);
        }
        // Headers are not allowed in a SIP Request-URI (RFC 3261 s.19.1.1
        // table 1; RFC 4475 s.3.1.2.11).
        if Uri::parse(uri).is_some_and(|u| u.params.contains('?')) {
            return Err(ParseError::RequestUri);
        }
    }
    Ok(())
}

/// A Via header line: comma-separated values, none empty, each parsing,
/// with no empty `;` parameter.
pub(super) fn via_value_ok(value: &str) -> bool {
    value.split(',').all(|v| {
        let Ok(via) = Via::parse(v) else {
            return false;
        };
        via.params.split(';').skip(1).all(|p| !p.trim().is_empty())
    })
}

/// Whether the Request-URI is a SIP or SIPS URI.
pub(super) fn sip_request_uri(msg: &Message<'_>) -> bool {
    matches!(msg.start, StartLine::Request { uri, .. } if Uri::parse(uri).is_some())
}

pub(super) fn bad_request_reason(e: &ParseError) -> &'static str {
    match e {
        ParseError::Header("Via") => "Bad Via",
        ParseError::Header("From") => "Bad From",
        ParseError::Header("To") => "Bad To",
        ParseError::Header("Call-ID") => "Bad Call-ID",
        ParseError::Header("CSeq") => "Bad CSeq",
        ParseError::Header("Content-Length") => "Bad Content-Length",
        ParseError::Missing(_) => "Missing Header",
        ParseError::ShortBody => "Body Shorter Than Content-Length",
        ParseError::RequestUri => "Bad Request-URI",
        ParseError::Version => "Version Not Supported",
        _ => "Bad Request",
    }
}

/// Reads what a response needs from a message that failed to parse: the
/// start line must be a request line, and Via, From, To, Call-ID and CSeq
/// must be found among the header lines that can be read.
pub fn salvage(raw: &[u8]) -> Option<Message<'_>> {
    let end = header_end(raw).unwrap_or(raw.len());
    let mut lines = raw[..end]
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = std::str::from_utf8(lines.next()?).ok()?;
    if first.starts_with("SIP/") {
        return None;
    }
    let mut parts = first.split(' ');
    let method_text = parts.next().filter(|m| !m.is_empty())?;
    let uri = parts.next().unwrap_or("");
    let mut headers = Vec::with_capacity(8);
    for line in lines {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let n = Name::from_str_ci(name.trim());
        if matches!(
            n,
            Name::Via | Name::From | Name::To | Name::CallId | Name::CSeq
        ) {
            headers.push(crate::wire::message::Header {
                name: n,
                raw_name: name,
                value: std::borrow::Cow::Borrowed(value.trim()),
            });
        }
    }
    let msg = Message {
        start: StartLine::Request {
            method: Method::parse(method_text),
            method_text,
            uri,
        },
        headers,
        body: &[],
    };
    let via_ok = msg
        .list(Name::Via)
        .next()
        .is_some_and(|v| Via::parse(v).is_ok());
    let all = [Name::From, Name::To, Name::CallId, Name::CSeq]
        .iter()
        .all(|n| msg.header(*n).is_some());
    if via_ok && all && Method::parse(method_text) != Method::Ack {
        Some(msg)
    } else {
        None
    }
}
