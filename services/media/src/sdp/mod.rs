//! SDP (RFC 4566) for audio, and the offer/answer rules (RFC 3264) that
//! turn a phone's offer into this node's answer.
//!
//! # What it owns
//! - [`SessionDescription`]: an owned, parsed SDP body
//!   ([`SessionDescription::parse`]), tolerant of what real phones send
//!   (CRLF or LF, stray whitespace, unknown lines and attributes, which are
//!   kept or skipped) and strict where a mistake would send audio to the
//!   wrong place: the `m=` line's syntax and port (RFC 4566 s.5.14), the
//!   `c=` address (s.5.7), the `a=rtcp` port (RFC 3605). Its `Display`
//!   writes it back as SDP, so that what we write and what we read are one
//!   model.
//! - [`MediaDescription`] with the attributes audio needs typed:
//!   `a=rtpmap`, `a=fmtp` (RFC 4566 s.6), `a=ptime`, `a=maxptime`,
//!   `a=rtcp` (RFC 3605), `a=rtcp-mux` (RFC 5761) and the direction
//!   ([`Direction`], RFC 3264 s.5.1; the media level overrides the
//!   session level).
//! - The offer/answer rules in [`answer()`], [`offer()`] and
//!   [`accept_answer()`]: G.711 ([`Codec`]) at 20 ms, telephone-event
//!   (RFC 4733) and comfort noise (RFC 3389) accepted, static payload types
//!   of RFC 3551 s.6 understood without `a=rtpmap`, hold and resume (RFC
//!   3264 s.8.4, and the older `c=0.0.0.0` of RFC 2543). What was agreed
//!   is a [`NegotiatedAudio`].
//!
//! # What it must not do
//! It knows no SIP: no common codec is an [`Error::NoCommonCodec`] whose
//! text the SIP side puts in its 488. It resolves no names (a `c=` with a
//! host name is refused: a sans-IO parser cannot look it up), does no ICE
//! and no SRTP: an offer whose audio is only over SRTP is refused with a
//! reason that says so.
//!
//! [`Error::NoCommonCodec`]: crate::Error::NoCommonCodec

mod answer;
mod parse;

use std::fmt;
use std::net::IpAddr;

pub use answer::{
    accept_answer, answer, offer, Answer, Capabilities, Codec, LocalMedia, NegotiatedAudio,
};

/// A parsed SDP body (RFC 4566 s.5): the session level, then one
/// [`MediaDescription`] per `m=` line in the order written.
///
/// Lines this node has no use for (`b=`, `t=`, `i=`, `k=`, ...) are
/// skipped; attributes it does not interpret are kept in `attributes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    /// The `o=` line, `None` when it is missing or does not have its six
    /// fields (nothing here depends on it).
    pub origin: Option<Origin>,
    /// The `s=` line's text, empty when it is missing.
    pub session_name: String,
    /// The session-level `c=` address, used by media without their own.
    pub connection: Option<IpAddr>,
    /// The session-level direction attribute, if any.
    pub direction: Option<Direction>,
    /// The other session-level attributes, in order.
    pub attributes: Vec<Attribute>,
    /// The media descriptions, in the order of their `m=` lines.
    pub media: Vec<MediaDescription>,
}

/// The `o=` line (RFC 4566 s.5.2), its fields as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub username: String,
    /// Kept as text: some implementations write more digits than a `u64`.
    pub session_id: String,
    pub session_version: String,
    /// `IP4` or `IP6` (or whatever the sender wrote).
    pub address_type: String,
    /// An address or a host name; only informative.
    pub address: String,
}

/// One `m=` line and the lines under it (RFC 4566 s.5.14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDescription {
    /// `audio`, `video`, `application`, ... as written.
    pub media: String,
    /// The transport port; 0 is a disabled (offered) or rejected
    /// (answered) stream (RFC 3264 s.5.1, s.6).
    pub port: u16,
    /// The `/<number of ports>` after the port, if written.
    pub port_count: Option<u16>,
    pub protocol: Protocol,
    /// The formats as written: payload type numbers for the RTP
    /// protocols (checked to be 0..=127), anything for the others.
    pub formats: Vec<String>,
    /// The media-level `c=` address, if any.
    pub connection: Option<IpAddr>,
    pub rtpmaps: Vec<Rtpmap>,
    pub fmtps: Vec<Fmtp>,
    pub ptime_ms: Option<u32>,
    pub maxptime_ms: Option<u32>,
    /// `a=rtcp` (RFC 3605): where the sender wants its RTCP, when it is not
    /// the RTP port plus one.
    pub rtcp: Option<Rtcp>,
    /// `a=rtcp-mux` (RFC 5761): RTP and RTCP on one port.
    pub rtcp_mux: bool,
    /// The media-level direction attribute, if any.
    pub direction: Option<Direction>,
    /// The other media-level attributes, in order.
    pub attributes: Vec<Attribute>,
}

/// The transport protocol of an `m=` line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `RTP/AVP` (RFC 3551): plain RTP.
    RtpAvp,
    /// `RTP/AVPF` (RFC 4585): plain RTP with feedback.
    RtpAvpf,
    /// `RTP/SAVP` (RFC 3711): SRTP.
    RtpSavp,
    /// `RTP/SAVPF` (RFC 5124): SRTP with feedback.
    RtpSavpf,
    /// `UDP/TLS/RTP/SAVPF` (RFC 5764): DTLS-SRTP, as browsers offer.
    UdpTlsRtpSavpf,
    /// Anything else, as written.
    Other(String),
}

impl Protocol {
    /// The protocol named by `text`, its known names matched without
    /// regard to case.
    pub fn parse(text: &str) -> Protocol {
        const KNOWN: [(&str, Protocol); 5] = [
            ("RTP/AVP", Protocol::RtpAvp),
            ("RTP/AVPF", Protocol::RtpAvpf),
            ("RTP/SAVP", Protocol::RtpSavp),
            ("RTP/SAVPF", Protocol::RtpSavpf),
            ("UDP/TLS/RTP/SAVPF", Protocol::UdpTlsRtpSavpf),
        ];
        KNOWN
            .into_iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(text))
            .map_or_else(|| Protocol::Other(text.to_owned()), |(_, p)| p)
    }

    pub fn as_str(&self) -> &str {
        match self {
            Protocol::RtpAvp => "RTP/AVP",
            Protocol::RtpAvpf => "RTP/AVPF",
            Protocol::RtpSavp => "RTP/SAVP",
            Protocol::RtpSavpf => "RTP/SAVPF",
            Protocol::UdpTlsRtpSavpf => "UDP/TLS/RTP/SAVPF",
            Protocol::Other(name) => name,
        }
    }

    /// Whether the formats are RTP payload types.
    pub fn is_rtp(&self) -> bool {
        !matches!(self, Protocol::Other(_))
    }

    /// Whether this is RTP without SRTP, the only media this node takes.
    pub fn is_plain_rtp(&self) -> bool {
        matches!(self, Protocol::RtpAvp | Protocol::RtpAvpf)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The direction of a stream as its sender states it (RFC 3264 s.5.1):
/// whether the sender will send, and whether it wants to receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// The direction named by an attribute (`sendrecv`, ...), if it is one.
    pub fn parse(name: &str) -> Option<Direction> {
        [
            Direction::SendRecv,
            Direction::SendOnly,
            Direction::RecvOnly,
            Direction::Inactive,
        ]
        .into_iter()
        .find(|d| d.as_str().eq_ignore_ascii_case(name))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    fn from_flags(sends: bool, receives: bool) -> Direction {
        match (sends, receives) {
            (true, true) => Direction::SendRecv,
            (true, false) => Direction::SendOnly,
            (false, true) => Direction::RecvOnly,
            (false, false) => Direction::Inactive,
        }
    }

    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    /// The same stream seen from the other end: what one side sends the
    /// other receives (sendonly ↔ recvonly).
    pub fn reversed(self) -> Direction {
        Direction::from_flags(self.receives(), self.sends())
    }

    /// What both allow: sends only if both send, receives only if both
    /// receive.
    pub fn and(self, other: Direction) -> Direction {
        Direction::from_flags(
            self.sends() && other.sends(),
            self.receives() && other.receives(),
        )
    }
}

/// `a=rtpmap:<payload type> <encoding name>/<clock rate>[/<channels>]`
/// (RFC 4566 s.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rtpmap {
    pub payload_type: u8,
    /// As written; compare without regard to case (RFC 4855 s.3).
    pub encoding_name: String,
    pub clock_rate_hz: u32,
    /// The encoding parameters, for audio the number of channels.
    pub channels: Option<u8>,
}

/// `a=fmtp:<payload type> <parameters>` (RFC 4566 s.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fmtp {
    pub payload_type: u8,
    pub parameters: String,
}

/// `a=rtcp:<port> [IN IP4 <address>]` (RFC 3605).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rtcp {
    pub port: u16,
    pub address: Option<IpAddr>,
}

/// An attribute this module does not interpret: `a=<name>[:<value>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub name: String,
    pub value: Option<String>,
}

impl SessionDescription {
    /// Where the stream's RTP goes: its own `c=`, else the session's.
    pub fn connection_for(&self, media: &MediaDescription) -> Option<IpAddr> {
        media.connection.or(self.connection)
    }

    /// The stream's direction as its sender states it: the media level's,
    /// else the session level's, else `sendrecv` (RFC 3264 s.5.1).
    pub fn direction_for(&self, media: &MediaDescription) -> Direction {
        media
            .direction
            .or(self.direction)
            .unwrap_or(Direction::SendRecv)
    }
}

impl MediaDescription {
    pub fn is_audio(&self) -> bool {
        self.media.eq_ignore_ascii_case("audio")
    }

    /// The formats that are payload type numbers, in the order offered.
    pub fn payload_types(&self) -> impl Iterator<Item = u8> + '_ {
        self.formats
            .iter()
            .filter_map(|f| f.parse::<u8>().ok())
            .filter(|pt| *pt <= MAX_PAYLOAD_TYPE)
    }

    pub fn rtpmap(&self, payload_type: u8) -> Option<&Rtpmap> {
        self.rtpmaps.iter().find(|r| r.payload_type == payload_type)
    }

    pub fn fmtp(&self, payload_type: u8) -> Option<&str> {
        self.fmtps
            .iter()
            .find(|f| f.payload_type == payload_type)
            .map(|f| f.parameters.as_str())
    }
}

/// RTP's payload type field has 7 bits (RFC 3550 s.5.1).
const MAX_PAYLOAD_TYPE: u8 = 127;

fn write_connection(f: &mut fmt::Formatter<'_>, address: IpAddr) -> fmt::Result {
    match address {
        IpAddr::V4(v4) => write!(f, "c=IN IP4 {v4}\r\n"),
        IpAddr::V6(v6) => write!(f, "c=IN IP6 {v6}\r\n"),
    }
}

fn write_attribute(f: &mut fmt::Formatter<'_>, attribute: &Attribute) -> fmt::Result {
    match &attribute.value {
        Some(value) => write!(f, "a={}:{}\r\n", attribute.name, value),
        None => write!(f, "a={}\r\n", attribute.name),
    }
}

/// Writes SDP with CRLF line ends: `v=`, `o=` (when known), `s=`, `c=`,
/// `t=0 0`, the session's attributes, then each stream with its `c=`,
/// `a=rtpmap`s, `a=fmtp`s, `a=ptime`, `a=maxptime`, `a=rtcp`,
/// `a=rtcp-mux`, the other attributes and the direction last. Parsing
/// what it writes gives the same value.
impl fmt::Display for SessionDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("v=0\r\n")?;
        if let Some(o) = &self.origin {
            write!(
                f,
                "o={} {} {} IN {} {}\r\n",
                o.username, o.session_id, o.session_version, o.address_type, o.address
            )?;
        }
        write!(f, "s={}\r\n", self.session_name)?;
        if let Some(address) = self.connection {
            write_connection(f, address)?;
        }
        f.write_str("t=0 0\r\n")?;
        for attribute in &self.attributes {
            write_attribute(f, attribute)?;
        }
        if let Some(direction) = self.direction {
            write!(f, "a={}\r\n", direction.as_str())?;
        }
        for m in &self.media {
            write!(f, "m={} {}", m.media, m.port)?;
            if let Some(count) = m.port_count {
                write!(f, "/{count}")?;
            }
            write!(f, " {}", m.protocol)?;
            for format in &m.formats {
                write!(f, " {format}")?;
            }
            f.write_str("\r\n")?;
            if let Some(address) = m.connection {
                write_connection(f, address)?;
            }
            for r in &m.rtpmaps {
                write!(
                    f,
                    "a=rtpmap:{} {}/{}",
                    r.payload_type, r.encoding_name, r.clock_rate_hz
                )?;
                if let Some(channels) = r.channels {
                    write!(f, "/{channels}")?;
                }
                f.write_str("\r\n")?;
            }
            for p in &m.fmtps {
                write!(f, "a=fmtp:{} {}\r\n", p.payload_type, p.parameters)?;
            }
            if let Some(ptime_ms) = m.ptime_ms {
                write!(f, "a=ptime:{ptime_ms}\r\n")?;
            }
            if let Some(maxptime_ms) = m.maxptime_ms {
                write!(f, "a=maxptime:{maxptime_ms}\r\n")?;
            }
            if let Some(rtcp) = m.rtcp {
                write!(f, "a=rtcp:{}", rtcp.port)?;
                match rtcp.address {
                    Some(IpAddr::V4(v4)) => write!(f, " IN IP4 {v4}")?,
                    Some(IpAddr::V6(v6)) => write!(f, " IN IP6 {v6}")?,
                    None => {}
                }
                f.write_str("\r\n")?;
            }
            if m.rtcp_mux {
                f.write_str("a=rtcp-mux\r\n")?;
            }
            for attribute in &m.attributes {
                write_attribute(f, attribute)?;
            }
            if let Some(direction) = m.direction {
                write!(f, "a={}\r\n", direction.as_str())?;
            }
        }
        Ok(())
    }
}
