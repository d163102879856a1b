//! The SDP reader (RFC 4566 s.5): one pass over the lines, tolerant of
//! line ends, whitespace, unknown lines and attributes; strict about the
//! `m=` line, `c=` addresses and ports, which decide where audio goes.

use std::net::IpAddr;

use super::{
    Attribute, Direction, Fmtp, MediaDescription, Origin, Protocol, Rtcp, Rtpmap,
    SessionDescription, MAX_PAYLOAD_TYPE,
};
use crate::{Error, Result};

fn malformed(reason: impl Into<String>) -> Error {
    Error::Malformed {
        what: "SDP",
        reason: reason.into(),
    }
}

impl SessionDescription {
    /// Reads an SDP body.
    ///
    /// Tolerated: CRLF or LF line ends, whitespace around the body and
    /// around each line, empty lines, bytes that are not UTF-8 (in
    /// free-text lines like `s=`), any line type or attribute this module
    /// does not know, a missing or odd `o=`, attribute values it cannot
    /// read (`a=rtpmap:x`, `a=ptime:abc`: kept as plain attributes).
    ///
    /// Refused with [`Error::Malformed`]: a body that does not start with
    /// `v=0`, a line that is not `<letter>=<value>`, an `m=` line without
    /// its media, port, protocol and at least one format, a port or
    /// `a=rtcp` port outside 0..=65535, an RTP format that is not a payload
    /// type (0..=127), a `c=` that is not `IN IP4 <IPv4>` or
    /// `IN IP6 <IPv6>`, and an active stream (port not 0) with no `c=` at
    /// either level.
    pub fn parse<B: AsRef<[u8]> + ?Sized>(body: &B) -> Result<SessionDescription> {
        let text = String::from_utf8_lossy(body.as_ref());
        let mut lines = text
            .lines()
            .map(str::trim)
            .enumerate()
            .filter(|(_, line)| !line.is_empty());

        match lines.next() {
            Some((_, "v=0")) => {}
            Some((n, line)) => {
                return Err(malformed(format!(
                    "line {}: expected v=0 first, found {:?}",
                    n + 1,
                    shorten(line)
                )))
            }
            None => return Err(malformed("empty body")),
        }

        let mut session = SessionDescription {
            origin: None,
            session_name: String::new(),
            connection: None,
            direction: None,
            attributes: Vec::new(),
            media: Vec::new(),
        };
        for (n, line) in lines {
            let line_number = n + 1;
            let (kind, value) = split_line(line)
                .ok_or_else(|| malformed(format!("line {line_number}: not <type>=<value>")))?;
            let value = value.trim();
            let at = |e: Error| match e {
                Error::Malformed { what, reason } => Error::Malformed {
                    what,
                    reason: format!("line {line_number}: {reason}"),
                },
                other => other,
            };
            match (kind, session.media.last_mut()) {
                (b'm', _) => session.media.push(parse_media(value).map_err(at)?),
                (b'c', None) => session.connection = Some(parse_connection(value).map_err(at)?),
                (b'c', Some(media)) => {
                    // A stream may list several addresses (layered
                    // multicast, RFC 4566 s.5.7); unicast RTP uses the first.
                    let address = parse_connection(value).map_err(at)?;
                    media.connection.get_or_insert(address);
                }
                (b'a', None) => match Direction::parse(value) {
                    Some(direction) => session.direction = Some(direction),
                    None => session.attributes.push(parse_attribute(value)),
                },
                (b'a', Some(media)) => apply_media_attribute(media, value).map_err(at)?,
                (b'o', None) => session.origin = parse_origin(value),
                (b's', None) => session.session_name = value.to_owned(),
                // b=, t=, r=, z=, k=, i=, u=, e=, p= and unknown types: this
                // node has no use for them (RFC 4566 s.5 asks parsers to
                // ignore unknown types).
                _ => {}
            }
        }
        for (index, m) in session.media.iter().enumerate() {
            if m.port != 0 && session.connection_for(m).is_none() {
                return Err(malformed(format!(
                    "m-line {} ({} port {}) has no c= at media or session level",
                    index + 1,
                    m.media,
                    m.port
                )));
            }
        }
        Ok(session)
    }
}

impl std::str::FromStr for SessionDescription {
    type Err = Error;

    fn from_str(text: &str) -> Result<SessionDescription> {
        SessionDescription::parse(text)
    }
}

/// At most 40 characters of a line, for error messages: enough to
/// recognise it, not enough to flood a log with a hostile body.
fn shorten(line: &str) -> &str {
    match line.char_indices().nth(40) {
        Some((end, _)) => line.get(..end).unwrap_or(line),
        None => line,
    }
}

fn split_line(line: &str) -> Option<(u8, &str)> {
    let bytes = line.as_bytes();
    match bytes {
        [kind, b'=', ..] if kind.is_ascii_alphabetic() => Some((*kind, line.get(2..)?)),
        _ => None,
    }
}

fn parse_port(text: &str, what: &str) -> Result<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed(format!(
            "{what} {:?} is not a number",
            shorten(text)
        )));
    }
    text.parse::<u16>().map_err(|_| {
        malformed(format!(
            "{what} {} is out of range 0..=65535",
            shorten(text)
        ))
    })
}

/// `m=<media> <port>[/<number of ports>] <proto> <fmt> ...`
fn parse_media(value: &str) -> Result<MediaDescription> {
    let mut fields = value.split_ascii_whitespace();
    let (Some(media), Some(port_field), Some(protocol)) =
        (fields.next(), fields.next(), fields.next())
    else {
        return Err(malformed(
            "m= line needs <media> <port> <protocol> <formats>",
        ));
    };
    let formats: Vec<String> = fields.map(str::to_owned).collect();
    if formats.is_empty() {
        return Err(malformed("m= line has no formats"));
    }
    let (port, port_count) = match port_field.split_once('/') {
        Some((port, count)) => (
            parse_port(port, "m= port")?,
            Some(parse_port(count, "m= port count")?),
        ),
        None => (parse_port(port_field, "m= port")?, None),
    };
    let protocol = Protocol::parse(protocol);
    if protocol.is_rtp() {
        if let Some(bad) = formats.iter().find(|f| {
            f.parse::<u8>()
                .map_or(true, |pt| pt > MAX_PAYLOAD_TYPE || f.len() > 3)
        }) {
            return Err(malformed(format!(
                "m= format {:?} is not an RTP payload type (0..=127)",
                shorten(bad)
            )));
        }
    }
    Ok(MediaDescription {
        media: media.to_owned(),
        port,
        port_count,
        protocol,
        formats,
        connection: None,
        rtpmaps: Vec::new(),
        fmtps: Vec::new(),
        ptime_ms: None,
        maxptime_ms: None,
        rtcp: None,
        rtcp_mux: false,
        direction: None,
        attributes: Vec::new(),
    })
}

/// `c=IN IP4 <address>[/<ttl>][/<count>]` or `c=IN IP6 <address>[/<count>]`.
fn parse_connection(value: &str) -> Result<IpAddr> {
    let mut fields = value.split_ascii_whitespace();
    let (Some(network), Some(address_type), Some(address), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(malformed(format!(
            "c= {:?} is not IN <IP4|IP6> <address>",
            shorten(value)
        )));
    };
    let address = parse_address(network, address_type, address, "c=")?;
    Ok(address)
}

fn parse_address(network: &str, address_type: &str, address: &str, what: &str) -> Result<IpAddr> {
    if !network.eq_ignore_ascii_case("IN") {
        return Err(malformed(format!(
            "{what} network type {:?} is not IN",
            shorten(network)
        )));
    }
    // The TTL and address count of multicast (`/127/3`) say nothing about
    // where unicast RTP goes.
    let host = address.split('/').next().unwrap_or(address);
    let parsed: IpAddr = host.parse().map_err(|_| {
        malformed(format!(
            "{what} address {:?} is not an IP address (host names are not resolved)",
            shorten(host)
        ))
    })?;
    let type_matches = match parsed {
        IpAddr::V4(_) => address_type.eq_ignore_ascii_case("IP4"),
        IpAddr::V6(_) => address_type.eq_ignore_ascii_case("IP6"),
    };
    if !type_matches {
        return Err(malformed(format!(
            "{what} address {host} is not of type {:?}",
            shorten(address_type)
        )));
    }
    Ok(parsed)
}

/// `o=<username> <sess-id> <sess-version> <nettype> <addrtype> <address>`;
/// `None` unless all six fields are there.
fn parse_origin(value: &str) -> Option<Origin> {
    let mut fields = value.split_ascii_whitespace();
    let (
        Some(username),
        Some(id),
        Some(version),
        Some(_network),
        Some(address_type),
        Some(address),
    ) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    )
    else {
        return None;
    };
    Some(Origin {
        username: username.to_owned(),
        session_id: id.to_owned(),
        session_version: version.to_owned(),
        address_type: address_type.to_owned(),
        address: address.to_owned(),
    })
}

fn parse_attribute(value: &str) -> Attribute {
    match value.split_once(':') {
        Some((name, value)) => Attribute {
            name: name.trim().to_owned(),
            value: Some(value.trim().to_owned()),
        },
        None => Attribute {
            name: value.to_owned(),
            value: None,
        },
    }
}

fn apply_media_attribute(media: &mut MediaDescription, value: &str) -> Result<()> {
    if let Some(direction) = Direction::parse(value) {
        media.direction = Some(direction);
        return Ok(());
    }
    let attribute = parse_attribute(value);
    let name = attribute.name.to_ascii_lowercase();
    let typed = match (name.as_str(), attribute.value.as_deref()) {
        ("rtcp-mux", None) => {
            media.rtcp_mux = true;
            true
        }
        ("rtpmap", Some(v)) => parse_rtpmap(v).map(|r| media.rtpmaps.push(r)).is_some(),
        ("fmtp", Some(v)) => parse_fmtp(v).map(|p| media.fmtps.push(p)).is_some(),
        ("ptime", Some(v)) => v.parse().map(|ms| media.ptime_ms = Some(ms)).is_ok(),
        ("maxptime", Some(v)) => v.parse().map(|ms| media.maxptime_ms = Some(ms)).is_ok(),
        ("rtcp", Some(v)) => {
            media.rtcp = Some(parse_rtcp(v)?);
            true
        }
        _ => false,
    };
    if !typed {
        media.attributes.push(attribute);
    }
    Ok(())
}

fn parse_payload_type(text: &str) -> Option<u8> {
    text.parse::<u8>()
        .ok()
        .filter(|pt| *pt <= MAX_PAYLOAD_TYPE && text.len() <= 3)
}

/// `<payload type> <encoding name>/<clock rate>[/<channels>]`
fn parse_rtpmap(value: &str) -> Option<Rtpmap> {
    let (pt, encoding) = value.split_once(char::is_whitespace)?;
    let mut parts = encoding.trim().split('/');
    let (Some(name), Some(clock_rate)) = (parts.next(), parts.next()) else {
        return None;
    };
    let channels = match parts.next() {
        Some(channels) => Some(channels.trim().parse::<u8>().ok()?),
        None => None,
    };
    if parts.next().is_some() || name.trim().is_empty() {
        return None;
    }
    Some(Rtpmap {
        payload_type: parse_payload_type(pt)?,
        encoding_name: name.trim().to_owned(),
        clock_rate_hz: clock_rate.trim().parse().ok()?,
        channels,
    })
}

/// `<payload type> <format specific parameters>`
fn parse_fmtp(value: &str) -> Option<Fmtp> {
    let (pt, parameters) = value.split_once(char::is_whitespace)?;
    let parameters = parameters.trim();
    if parameters.is_empty() {
        return None;
    }
    Some(Fmtp {
        payload_type: parse_payload_type(pt)?,
        parameters: parameters.to_owned(),
    })
}

/// `<port> [IN IP4 <address>]` (RFC 3605 s.2.1)
fn parse_rtcp(value: &str) -> Result<Rtcp> {
    let mut fields = value.split_ascii_whitespace();
    let port = parse_port(fields.next().unwrap_or(""), "a=rtcp port")?;
    let address = match (fields.next(), fields.next(), fields.next(), fields.next()) {
        (None, ..) => None,
        (Some(network), Some(address_type), Some(address), None) => {
            Some(parse_address(network, address_type, address, "a=rtcp")?)
        }
        _ => {
            return Err(malformed(format!(
                "a=rtcp {:?} is not <port> [IN <IP4|IP6> <address>]",
                shorten(value)
            )))
        }
    };
    Ok(Rtcp { port, address })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn reason(body: &str) -> String {
        match SessionDescription::parse(body) {
            Err(Error::Malformed { what, reason }) => {
                assert_eq!(what, "SDP");
                reason
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn reads_lf_only_bodies_with_stray_whitespace() {
        let sdp = SessionDescription::parse(
            "\n  v=0\no=- 1 2 IN IP4 10.0.0.1 \n\ns=call\nc=IN IP4 10.0.0.1\nt=0 0\n\
             m=audio 4000 RTP/AVP 0\n a=ptime:20 \n\n",
        )
        .unwrap();
        assert_eq!(sdp.session_name, "call");
        assert_eq!(sdp.connection, Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))));
        assert_eq!(sdp.media.len(), 1);
        assert_eq!(sdp.media[0].port, 4000);
        assert_eq!(sdp.media[0].ptime_ms, Some(20));
        assert_eq!(sdp.origin.unwrap().session_version, "2");
    }

    #[test]
    fn media_direction_overrides_the_session_and_sendrecv_is_the_default() {
        let sdp = SessionDescription::parse(
            "v=0\r\nc=IN IP4 10.0.0.1\r\na=sendonly\r\nm=audio 4000 RTP/AVP 0\r\n\
             m=audio 4002 RTP/AVP 0\r\na=inactive\r\n",
        )
        .unwrap();
        assert_eq!(sdp.direction_for(&sdp.media[0]), Direction::SendOnly);
        assert_eq!(sdp.direction_for(&sdp.media[1]), Direction::Inactive);
        let plain =
            SessionDescription::parse("v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\n")
                .unwrap();
        assert_eq!(plain.direction_for(&plain.media[0]), Direction::SendRecv);
    }

    #[test]
    fn unreadable_attribute_values_are_kept_as_plain_attributes() {
        let sdp = SessionDescription::parse(
            "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 0 96\r\n\
             a=rtpmap:96\r\na=rtpmap:200 foo/8000\r\na=ptime:twenty\r\na=x-custom\r\n",
        )
        .unwrap();
        let m = &sdp.media[0];
        assert!(m.rtpmaps.is_empty());
        assert_eq!(m.ptime_ms, None);
        let names: Vec<&str> = m.attributes.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["rtpmap", "rtpmap", "ptime", "x-custom"]);
    }

    #[test]
    fn refuses_what_would_send_audio_to_the_wrong_place() {
        assert!(reason("").contains("empty"));
        assert!(reason("hello\r\n").contains("v=0"));
        assert!(
            reason("v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 65536 RTP/AVP 0\r\n")
                .contains("out of range")
        );
        assert!(reason("v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio RTP/AVP 0\r\n").contains("m= "));
        assert!(
            reason("v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP\r\n").contains("no formats")
        );
        assert!(
            reason("v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 128\r\n")
                .contains("payload type")
        );
        assert!(
            reason("v=0\r\nc=IN IP4 pbx.example.com\r\nm=audio 4000 RTP/AVP 0\r\n")
                .contains("not an IP address")
        );
        assert!(
            reason("v=0\r\nc=IN IP6 10.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\n")
                .contains("not of type")
        );
        assert!(reason("v=0\r\nm=audio 4000 RTP/AVP 0\r\n").contains("no c="));
        assert!(
            reason("v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\na=rtcp:70000\r\n")
                .contains("out of range")
        );
        assert!(reason("v=0\r\nc=IN IP4 10.0.0.1\r\n=oops\r\n").contains("line 3"));
    }

    #[test]
    fn a_disabled_stream_needs_no_address_and_other_protocols_any_format() {
        let sdp = SessionDescription::parse(
            "v=0\r\nm=video 0 RTP/AVP 96\r\nm=application 0 UDP/DTLS/SCTP webrtc-datachannel\r\n",
        )
        .unwrap();
        assert_eq!(
            sdp.media[1].protocol,
            Protocol::Other("UDP/DTLS/SCTP".into())
        );
        assert_eq!(sdp.media[1].formats, ["webrtc-datachannel"]);
    }

    #[test]
    fn multicast_ttl_and_rtcp_address_are_read() {
        let sdp = SessionDescription::parse(
            "v=0\r\nc=IN IP4 224.2.1.1/127\r\nm=audio 4000/2 RTP/AVP 0\r\n\
             a=rtcp:4005 IN IP4 10.0.0.9\r\n",
        )
        .unwrap();
        assert_eq!(
            sdp.connection,
            Some(IpAddr::V4(Ipv4Addr::new(224, 2, 1, 1)))
        );
        assert_eq!(sdp.media[0].port_count, Some(2));
        assert_eq!(
            sdp.media[0].rtcp,
            Some(Rtcp {
                port: 4005,
                address: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)))
            })
        );
    }

    #[test]
    fn what_display_writes_parses_back_the_same() {
        let body =
            "v=0\r\no=x 1 2 IN IP4 h\r\ns=-\r\nc=IN IP6 ::1\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
                    m=audio 4000/2 RTP/AVPF 0 101\r\nc=IN IP4 10.0.0.2\r\n\
                    a=rtpmap:101 telephone-event/8000/1\r\na=fmtp:101 0-16\r\na=ptime:30\r\n\
                    a=maxptime:60\r\na=rtcp:4001\r\na=rtcp-mux\r\na=x\r\na=recvonly\r\n";
        let sdp = SessionDescription::parse(body).unwrap();
        assert_eq!(sdp.to_string(), body);
        assert_eq!(SessionDescription::parse(&sdp.to_string()).unwrap(), sdp);
    }
}
