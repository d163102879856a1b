//! Building responses to requests (RFC 3261 s.8.2.6), straight into bytes.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

use crate::wire::message::{host_ip, Message, Name, NameAddr, Via};

/// How the transport saw the request: used for Via `received`/`rport`
/// (RFC 3261 s.18.2.1, RFC 3581) and to route the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    pub addr: SocketAddr,
    pub reliable: bool,
}

/// The standard reason phrase of the status codes we send.
pub fn reason(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        423 => "Interval Too Brief",
        481 => "Call/Transaction Does Not Exist",
        480 => "Temporarily Unavailable",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        _ => "Unknown",
    }
}

/// A bounded metrics label for a status code.
pub fn status_label(code: u16) -> &'static str {
    match code {
        100 => "100",
        200 => "200",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        407 => "407",
        408 => "408",
        416 => "416",
        420 => "420",
        423 => "423",
        480 => "480",
        481 => "481",
        483 => "483",
        486 => "486",
        487 => "487",
        500 => "500",
        501 => "501",
        503 => "503",
        505 => "505",
        513 => "513",
        600 => "600",
        603 => "603",
        _ => "other",
    }
}

/// Where a UDP response goes (RFC 3261 s.18.2.2, RFC 3581 s.4): to the source
/// address and port when the top Via asked for `rport`, else to the source
/// address (the `received` address) and the port in sent-by (default 5060).
pub fn udp_destination(via: &Via<'_>, source: SocketAddr) -> SocketAddr {
    if via.param("rport").is_some() {
        return source;
    }
    SocketAddr::new(source.ip(), via.port.unwrap_or(5060))
}

pub(crate) fn write_top_via(out: &mut Vec<u8>, via: &Via<'_>, source: &Source) {
    out.extend_from_slice(via.head.as_bytes());
    let mut wants_rport = false;
    for (name, value) in crate::wire::message::params(via.params) {
        if name.eq_ignore_ascii_case("received") {
            continue; // rewritten below
        }
        if name.eq_ignore_ascii_case("rport") {
            wants_rport = true;
            out.extend_from_slice(b";rport=");
            write_u64(out, u64::from(source.addr.port()));
            continue;
        }
        out.push(b';');
        out.extend_from_slice(name.as_bytes());
        if let Some(v) = value {
            out.push(b'=');
            out.extend_from_slice(v.as_bytes());
        }
    }
    // A WebSocket client cannot be connected to and its sent-by is a
    // made-up `.invalid` name (RFC 7118 s.5.2): record the connection's
    // port as if it had asked for `rport`, so that a response relayed by
    // this Via finds the connection the request came on.
    let websocket =
        via.transport.eq_ignore_ascii_case("WS") || via.transport.eq_ignore_ascii_case("WSS");
    if !wants_rport && source.reliable && websocket {
        wants_rport = true;
        out.extend_from_slice(b";rport=");
        write_u64(out, u64::from(source.addr.port()));
    }
    let same_host = host_ip(via.host).is_some_and(|ip| same_ip(ip, source.addr.ip()));
    if wants_rport || !same_host {
        // IPv6 in `received` is written without brackets (RFC 3261 s.20.42
        // grammar: via-received = "received" EQUAL (IPv4address / IPv6address)).
        out.extend_from_slice(b";received=");
        write_ip(out, canonical_ip(source.addr.ip()));
    }
}

/// Writes `v` in decimal (no `fmt` machinery).
pub(crate) fn write_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut b = [0u8; 20];
    let mut i = b.len();
    loop {
        i -= 1;
        b[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&b[i..]);
}

/// Writes an IP address as `Display` does.
fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                write_u64(out, u64::from(*o));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    canonical_ip(a) == canonical_ip(b)
}

/// A response being written. Create with [`Response::to`], add headers, then
/// [`Response::finish`].
pub struct Response {
    buf: Vec<u8>,
}

impl Response {
    /// Starts a response to `req`: status line, then Via (the top one with
    /// `received`/`rport`), From, To (with `to_tag` added when it has no tag),
    /// Call-ID and CSeq copied from the request (RFC 3261 s.8.2.6.2).
    pub fn to(req: &Message<'_>, source: &Source, code: u16, to_tag: &str) -> Response {
        Response::with_reason(req, source, code, reason(code), to_tag)
    }

    /// Like [`Response::to`] with a reason phrase of our choice.
    pub fn with_reason(
        req: &Message<'_>,
        source: &Source,
        code: u16,
        reason: &str,
        to_tag: &str,
    ) -> Response {
        Response::start(req, None, source, code, reason, to_tag.as_bytes(), 0)
    }

    /// [`Response::with_reason`] with the request's top Via already parsed
    /// (`top`, which must be the first Via element of `req`) and room for
    /// `extra` more bytes of headers.
    pub(crate) fn start(
        req: &Message<'_>,
        top: Option<&Via<'_>>,
        source: &Source,
        code: u16,
        reason: &str,
        to_tag: &[u8],
        extra: usize,
    ) -> Response {
        // Copied headers, the status line, Content-Length and some slack.
        let copied: usize = req
            .headers
            .iter()
            .filter(|h| {
                matches!(
                    h.name,
                    Name::Via | Name::From | Name::To | Name::CallId | Name::CSeq
                )
            })
            .map(|h| h.value.len() + 16)
            .sum();
        let mut buf = Vec::with_capacity(copied + reason.len() + to_tag.len() + extra + 96);
        buf.extend_from_slice(b"SIP/2.0 ");
        write_u64(&mut buf, u64::from(code));
        buf.push(b' ');
        buf.extend_from_slice(reason.as_bytes());
        buf.extend_from_slice(b"\r\n");
        for (i, v) in req.list(Name::Via).enumerate() {
            buf.extend_from_slice(b"Via: ");
            if i == 0 {
                let parsed;
                let via = match top {
                    Some(t) => Ok(t),
                    None => {
                        parsed = Via::parse(v);
                        parsed.as_ref()
                    }
                };
                match via {
                    Ok(via) => write_top_via(&mut buf, via, source),
                    Err(_) => buf.extend_from_slice(v.as_bytes()),
                }
            } else {
                buf.extend_from_slice(v.as_bytes());
            }
            buf.extend_from_slice(b"\r\n");
        }
        if let Some(f) = req.header(Name::From) {
            header(&mut buf, "From", f);
        }
        if let Some(t) = req.header(Name::To) {
            buf.extend_from_slice(b"To: ");
            buf.extend_from_slice(t.as_bytes());
            let has_tag = NameAddr::parse(t).is_some_and(|n| n.tag().is_some());
            if !has_tag && !to_tag.is_empty() {
                buf.extend_from_slice(b";tag=");
                buf.extend_from_slice(to_tag);
            }
            buf.extend_from_slice(b"\r\n");
        }
        if let Some(c) = req.header(Name::CallId) {
            header(&mut buf, "Call-ID", c);
        }
        if let Some(c) = req.header(Name::CSeq) {
            header(&mut buf, "CSeq", c);
        }
        Response { buf }
    }

    /// Adds a header line.
    pub fn header(&mut self, name: &str, value: &str) -> &mut Self {
        header(&mut self.buf, name, value);
        self
    }

    /// Adds a header whose value is written by `f`.
    pub fn header_with(&mut self, name: &str, f: impl FnOnce(&mut Vec<u8>)) -> &mut Self {
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b": ");
        f(&mut self.buf);
        self.buf.extend_from_slice(b"\r\n");
        self
    }

    /// Ends the header section with `Content-Length: 0`.
    pub fn finish(mut self) -> Bytes {
        self.buf.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        Bytes::from(self.buf)
    }
}

fn header(buf: &mut Vec<u8>, name: &str, value: &str) {
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value.as_bytes());
    buf.extend_from_slice(b"\r\n");
}

/// A random To tag / token: 16 hex digits.
pub fn random_tag() -> String {
    String::from_utf8_lossy(&random_tag_bytes()).into_owned()
}

/// [`random_tag`] without the heap.
pub(crate) fn random_tag_bytes() -> [u8; 16] {
    let mut out = [0u8; 16];
    let _ = hex::encode_to_slice(rand::random::<u64>().to_be_bytes(), &mut out);
    out
}

/// An RFC 1123 date (`Sun, 06 Nov 1994 08:49:37 GMT`) for the Date header
/// (RFC 3261 s.20.17), from Unix seconds.
pub fn http_date(unix_secs: u64) -> String {
    let mut out = Vec::with_capacity(29);
    write_http_date(&mut out, unix_secs);
    String::from_utf8_lossy(&out).into_owned()
}

/// [`http_date`] appended to `out`.
pub(crate) fn write_http_date(out: &mut Vec<u8>, unix_secs: u64) {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    fn two(out: &mut Vec<u8>, v: u64) {
        out.push(b'0' + (v / 10 % 10) as u8);
        out.push(b'0' + (v % 10) as u8);
    }
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    let weekday = DAYS[(days % 7) as usize];
    // Civil-from-days (H. Hinnant's algorithm), for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    out.extend_from_slice(weekday.as_bytes());
    out.extend_from_slice(b", ");
    two(out, day as u64);
    out.push(b' ');
    out.extend_from_slice(MONTHS[(month - 1) as usize].as_bytes());
    out.push(b' ');
    if (0..10_000).contains(&year) {
        // {year} pads nothing: years below 1000 are written as they are.
        write_u64(out, year as u64);
    } else {
        let _ = write!(out, "{year}");
    }
    out.push(b' ');
    two(out, secs / 3600);
    out.push(b':');
    two(out, (secs / 60) % 60);
    out.push(b':');
    two(out, secs % 60);
    out.extend_from_slice(b" GMT");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(http_date(1_798_761_599), "Thu, 31 Dec 2026 23:59:59 GMT");
        assert_eq!(random_tag().len(), 16);
    }

    #[test]
    fn numbers_and_addresses_as_display_writes_them() {
        for v in [0u64, 7, 10, 65_535, u64::MAX] {
            let mut out = Vec::new();
            write_u64(&mut out, v);
            assert_eq!(out, v.to_string().into_bytes());
        }
        for ip in [
            "0.0.0.0",
            "192.0.2.7",
            "255.255.255.255",
            "2001:db8::1",
            "::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            write_ip(&mut out, ip);
            assert_eq!(out, ip.to_string().into_bytes());
        }
    }

    fn respond(req: &str, src: &str) -> String {
        let m = Message::parse(req.as_bytes()).unwrap();
        let s = Source {
            addr: src.parse().unwrap(),
            reliable: false,
        };
        let r = Response::to(&m, &s, 200, "xyz").finish();
        String::from_utf8(r.to_vec()).unwrap()
    }

    #[test]
    fn copies_headers_and_fixes_via() {
        let req = "REGISTER sip:e SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bK1;received=1.1.1.1, SIP/2.0/UDP p\r\nVia: SIP/2.0/TCP q\r\n\
                   f: <sip:a@e>;tag=1\r\nt: <sip:a@e>\r\ni: cid\r\nCSeq: 7 REGISTER\r\n\r\n";
        let r = respond(req, "192.0.2.7:40000");
        assert_eq!(
            r,
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;rport=40000;branch=z9hG4bK1;received=192.0.2.7\r\n\
             Via: SIP/2.0/UDP p\r\nVia: SIP/2.0/TCP q\r\nFrom: <sip:a@e>;tag=1\r\nTo: <sip:a@e>;tag=xyz\r\n\
             Call-ID: cid\r\nCSeq: 7 REGISTER\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn a_websocket_via_records_the_connection_even_without_rport() {
        let via = |v: &str, reliable: bool| {
            let v = Via::parse(v).unwrap();
            let source = Source {
                addr: "192.0.2.7:40001".parse().unwrap(),
                reliable,
            };
            let mut out = Vec::new();
            write_top_via(&mut out, &v, &source);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            via("SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKx", true),
            "SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKx;rport=40001;received=192.0.2.7"
        );
        // TCP and TLS keep RFC 3261: no rport unless asked for.
        assert_eq!(
            via("SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bKx", true),
            "SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bKx;received=192.0.2.7"
        );
    }

    #[test]
    fn received_only_when_host_differs() {
        let req = "OPTIONS sip:e SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK1\r\nFrom: <sip:a@e>;tag=1\r\nTo: <sip:a@e>;tag=2\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n";
        let r = respond(req, "127.0.0.1:5061");
        assert!(r.contains("Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK1\r\n"));
        assert!(r.contains("To: <sip:a@e>;tag=2\r\n"));
        let r = respond(req, "127.0.0.2:5061");
        assert!(r.contains(";branch=z9hG4bK1;received=127.0.0.2\r\n"));
        let v6 = req.replace("127.0.0.1", "[::1]");
        let r = respond(&v6, "[::1]:5061");
        assert!(r.contains("Via: SIP/2.0/UDP [::1]:5061;branch=z9hG4bK1\r\n"));
    }

    #[test]
    fn udp_destinations() {
        let via = Via::parse("SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK1").unwrap();
        let src: SocketAddr = "192.0.2.1:3333".parse().unwrap();
        assert_eq!(
            udp_destination(&via, src),
            "192.0.2.1:5070".parse().unwrap()
        );
        let via = Via::parse("SIP/2.0/UDP 10.0.0.1;rport;branch=z9hG4bK1").unwrap();
        assert_eq!(udp_destination(&via, src), src);
        let via = Via::parse("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1").unwrap();
        assert_eq!(
            udp_destination(&via, src),
            "192.0.2.1:5060".parse().unwrap()
        );
    }
}
