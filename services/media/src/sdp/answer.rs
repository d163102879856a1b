//! The offer/answer rules (RFC 3264) for one audio stream of G.711 (RFC
//! 3551 s.4.5.14), with telephone-event (RFC 4733) and comfort noise (RFC
//! 3389): which stream and codec an offer's answer takes, the answer's
//! text, and what was agreed.

use std::net::IpAddr;

use super::{Direction, Fmtp, MediaDescription, Origin, Protocol, Rtpmap, SessionDescription};
use crate::{Error, Result};

/// The codecs this node sends and receives: G.711 at 8000 Hz, one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 µ-law, static payload type 0.
    Pcmu,
    /// G.711 A-law, static payload type 8.
    Pcma,
}

impl Codec {
    pub const CLOCK_RATE_HZ: u32 = 8000;

    /// The name in `a=rtpmap` (RFC 3551 s.6).
    pub fn encoding_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    /// The payload type RFC 3551 s.6 assigns it.
    pub fn static_payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }
}

/// What this node takes, and how it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// The codecs it takes, in its order of preference (used when it
    /// offers; when it answers, the offer's order decides, RFC 3264 s.6.1).
    pub codecs: Vec<Codec>,
    /// Whether it takes telephone-event/8000 (RFC 4733 DTMF).
    pub telephone_event: bool,
    /// The packet time it asks for (`a=ptime`).
    pub ptime_ms: u32,
}

impl Default for Capabilities {
    /// PCMU, PCMA, telephone-event, 20 ms: what every phone takes.
    fn default() -> Capabilities {
        Capabilities {
            codecs: vec![Codec::Pcmu, Codec::Pcma],
            telephone_event: true,
            ptime_ms: 20,
        }
    }
}

/// Where this node receives the call's audio, and its `o=` line's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalMedia {
    pub address: IpAddr,
    /// RTP's port; RTCP is on the next one (RFC 3550 s.11).
    pub rtp_port: u16,
    /// The same for the whole dialog.
    pub session_id: u64,
    /// One more than the last one sent in this dialog, for each new offer
    /// or answer that changes something (RFC 3264 s.8): the caller keeps it.
    pub session_version: u64,
}

/// An answer to an offer: the SDP to send back, and what it agreed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub sdp: String,
    pub audio: NegotiatedAudio,
}

/// The audio stream both sides agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NegotiatedAudio {
    /// Where to send RTP; `0.0.0.0` when the peer holds the old way (RFC
    /// 2543's `c=0.0.0.0`).
    pub remote_address: IpAddr,
    pub remote_rtp_port: u16,
    /// `a=rtcp` if given (RFC 3605), else the RTP port plus one. This
    /// node does not take `a=rtcp-mux`, so RTCP never shares RTP's port.
    pub remote_rtcp_port: u16,
    pub codec: Codec,
    /// The codec's payload type number, both ways: the offer's number is
    /// the answer's (RFC 3264 s.6.1).
    pub payload_type: u8,
    pub telephone_event_payload_type: Option<u8>,
    /// Comfort noise (RFC 3389) to expect from the peer, when it offered it.
    pub comfort_noise_payload_type: Option<u8>,
    /// The packet time the peer asked for, if it did.
    pub remote_ptime_ms: Option<u32>,
    /// Our direction, as answered: whether this node sends and receives.
    pub direction: Direction,
    /// The peer does not take our audio: it said `sendonly` or `inactive`,
    /// or gave `c=0.0.0.0`.
    pub remote_on_hold: bool,
}

const TELEPHONE_EVENT: &str = "telephone-event";
/// What a telephone-event answer or offer takes: the 16 DTMF events
/// (RFC 4733 s.3.2) and flash.
const TELEPHONE_EVENTS: &str = "0-16";
const COMFORT_NOISE: &str = "CN";
const COMFORT_NOISE_PAYLOAD_TYPE: u8 = 13;
/// The conventional dynamic payload type for telephone-event in our offers.
const TELEPHONE_EVENT_PAYLOAD_TYPE: u8 = 101;

fn malformed(reason: impl Into<String>) -> Error {
    Error::Malformed {
        what: "SDP",
        reason: reason.into(),
    }
}

/// What a payload type of a stream stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Format {
    Codec(Codec),
    TelephoneEvent,
    ComfortNoise,
    /// Telephone-event or comfort noise at a rate this node does not take:
    /// not named among the codecs offered.
    Ignored,
    /// Anything else, by the name to tell the user.
    Other(String),
}

/// The names of RFC 3551 s.6's static audio and video payload types, for
/// streams that list them without `a=rtpmap`.
fn static_name(payload_type: u8) -> Option<&'static str> {
    Some(match payload_type {
        0 => "PCMU",
        3 => "GSM",
        4 => "G723",
        5 | 6 | 16 | 17 => "DVI4",
        7 => "LPC",
        8 => "PCMA",
        9 => "G722",
        10 | 11 => "L16",
        12 => "QCELP",
        13 => COMFORT_NOISE,
        14 => "MPA",
        15 => "G728",
        18 => "G729",
        25 => "CelB",
        26 => "JPEG",
        28 => "nv",
        31 => "H261",
        32 => "MPV",
        33 => "MP2T",
        34 => "H263",
        _ => return None,
    })
}

fn resolve(media: &MediaDescription, payload_type: u8) -> Format {
    let Some(rtpmap) = media.rtpmap(payload_type) else {
        return match payload_type {
            0 => Format::Codec(Codec::Pcmu),
            8 => Format::Codec(Codec::Pcma),
            COMFORT_NOISE_PAYLOAD_TYPE => Format::ComfortNoise,
            _ => Format::Other(
                static_name(payload_type)
                    .map_or_else(|| format!("payload type {payload_type}"), str::to_owned),
            ),
        };
    };
    let name = rtpmap.encoding_name.as_str();
    let at_8000_mono =
        rtpmap.clock_rate_hz == Codec::CLOCK_RATE_HZ && rtpmap.channels.is_none_or(|c| c == 1);
    let is = |wanted: &str| name.eq_ignore_ascii_case(wanted);
    match (
        at_8000_mono,
        [Codec::Pcmu, Codec::Pcma]
            .into_iter()
            .find(|c| is(c.encoding_name())),
    ) {
        (true, Some(codec)) => Format::Codec(codec),
        (false, Some(_)) => Format::Other(format!("{name}/{}", rtpmap.clock_rate_hz)),
        (true, None) if is(TELEPHONE_EVENT) => Format::TelephoneEvent,
        (true, None) if is(COMFORT_NOISE) => Format::ComfortNoise,
        (false, None) if is(TELEPHONE_EVENT) || is(COMFORT_NOISE) => Format::Ignored,
        _ => Format::Other(name.to_owned()),
    }
}

/// What this node takes of one audio stream.
struct Choice {
    codec: Codec,
    payload_type: u8,
    telephone_event_payload_type: Option<u8>,
    comfort_noise_payload_type: Option<u8>,
}

fn choose(media: &MediaDescription, caps: &Capabilities) -> Option<Choice> {
    let mut payload_types = media.payload_types();
    let (codec, payload_type) = payload_types.find_map(|pt| match resolve(media, pt) {
        Format::Codec(codec) if caps.codecs.contains(&codec) => Some((codec, pt)),
        _ => None,
    })?;
    let first = |wanted: Format| {
        media
            .payload_types()
            .find(|pt| resolve(media, *pt) == wanted)
    };
    Some(Choice {
        codec,
        payload_type,
        telephone_event_payload_type: caps
            .telephone_event
            .then(|| first(Format::TelephoneEvent))
            .flatten(),
        comfort_noise_payload_type: first(Format::ComfortNoise),
    })
}

/// The offered codecs' names, each once, for a refusal's reason.
fn offered_names(media: &[&MediaDescription]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for m in media {
        for pt in m.payload_types() {
            let name = match resolve(m, pt) {
                Format::Codec(codec) => codec.encoding_name().to_owned(),
                Format::Other(name) => name,
                Format::TelephoneEvent | Format::ComfortNoise | Format::Ignored => continue,
            };
            if !names.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
                names.push(name);
            }
        }
    }
    names
}

fn codec_names(caps: &Capabilities) -> String {
    if caps.codecs.is_empty() {
        return "no codec".to_owned();
    }
    let names: Vec<&str> = caps.codecs.iter().map(|c| c.encoding_name()).collect();
    names.join(", ")
}

/// The peer's direction with `c=0.0.0.0` taken into account: an
/// unspecified address asks for no media (RFC 3264 s.8.4, RFC 2543), the
/// same as not receiving.
fn effective_direction(sdp: &SessionDescription, media: &MediaDescription) -> Direction {
    let stated = sdp.direction_for(media);
    match sdp.connection_for(media) {
        Some(address) if address.is_unspecified() => stated.and(Direction::SendOnly),
        _ => stated,
    }
}

fn negotiated(
    sdp: &SessionDescription,
    media: &MediaDescription,
    choice: &Choice,
    direction: Direction,
) -> Result<NegotiatedAudio> {
    let remote_address = sdp
        .connection_for(media)
        .ok_or_else(|| malformed("the audio stream has no c= address"))?;
    let remote_direction = effective_direction(sdp, media);
    Ok(NegotiatedAudio {
        remote_address,
        remote_rtp_port: media.port,
        // Port 65535 has no next port; RTP ports are even, so only a broken
        // peer sends it, and it gets its RTCP on the same port.
        remote_rtcp_port: media
            .rtcp
            .map_or(media.port.saturating_add(1), |rtcp| rtcp.port),
        codec: choice.codec,
        payload_type: choice.payload_type,
        telephone_event_payload_type: choice.telephone_event_payload_type,
        comfort_noise_payload_type: choice.comfort_noise_payload_type,
        remote_ptime_ms: media.ptime_ms,
        direction,
        remote_on_hold: !remote_direction.receives(),
    })
}

fn local_session(local: &LocalMedia, media: Vec<MediaDescription>) -> SessionDescription {
    SessionDescription {
        origin: Some(Origin {
            username: "dialtone".to_owned(),
            session_id: local.session_id.to_string(),
            session_version: local.session_version.to_string(),
            address_type: match local.address {
                IpAddr::V4(_) => "IP4",
                IpAddr::V6(_) => "IP6",
            }
            .to_owned(),
            address: local.address.to_string(),
        }),
        session_name: "-".to_owned(),
        connection: Some(local.address),
        direction: None,
        attributes: Vec::new(),
        media,
    }
}

/// An audio stream of this node's: the formats with their `a=rtpmap`
/// (static ones too: some phones want them), telephone-event's events,
/// the packet time and the direction.
fn audio_media(
    protocol: Protocol,
    port: u16,
    codecs: &[(Codec, u8)],
    telephone_event_payload_type: Option<u8>,
    comfort_noise_payload_type: Option<u8>,
    ptime_ms: u32,
    direction: Direction,
) -> MediaDescription {
    let mut rtpmaps: Vec<Rtpmap> = codecs
        .iter()
        .map(|(codec, pt)| Rtpmap {
            payload_type: *pt,
            encoding_name: codec.encoding_name().to_owned(),
            clock_rate_hz: Codec::CLOCK_RATE_HZ,
            channels: None,
        })
        .collect();
    let mut fmtps = Vec::new();
    if let Some(pt) = telephone_event_payload_type {
        rtpmaps.push(Rtpmap {
            payload_type: pt,
            encoding_name: TELEPHONE_EVENT.to_owned(),
            clock_rate_hz: Codec::CLOCK_RATE_HZ,
            channels: None,
        });
        fmtps.push(Fmtp {
            payload_type: pt,
            parameters: TELEPHONE_EVENTS.to_owned(),
        });
    }
    if let Some(pt) = comfort_noise_payload_type {
        rtpmaps.push(Rtpmap {
            payload_type: pt,
            encoding_name: COMFORT_NOISE.to_owned(),
            clock_rate_hz: Codec::CLOCK_RATE_HZ,
            channels: None,
        });
    }
    MediaDescription {
        media: "audio".to_owned(),
        port,
        port_count: None,
        protocol,
        formats: rtpmaps.iter().map(|r| r.payload_type.to_string()).collect(),
        connection: None,
        rtpmaps,
        fmtps,
        ptime_ms: Some(ptime_ms),
        maxptime_ms: None,
        rtcp: None,
        rtcp_mux: false,
        direction: Some(direction),
        attributes: Vec::new(),
    }
}

/// A stream refused (RFC 3264 s.6): port 0, its formats as offered.
fn rejected(media: &MediaDescription) -> MediaDescription {
    MediaDescription {
        media: media.media.clone(),
        port: 0,
        port_count: None,
        protocol: media.protocol.clone(),
        formats: media.formats.clone(),
        connection: None,
        rtpmaps: Vec::new(),
        fmtps: Vec::new(),
        ptime_ms: None,
        maxptime_ms: None,
        rtcp: None,
        rtcp_mux: false,
        direction: None,
        attributes: Vec::new(),
    }
}

/// Answers an offer (RFC 3264 s.6), for a new call or a re-INVITE in the
/// same dialog (with `local.session_version` one more than last time).
///
/// The first audio stream over plain RTP (`RTP/AVP`, `RTP/AVPF`) that
/// lists a codec of `caps` is taken: the first such codec in the offer's
/// order (RFC 3264 s.6.1: the answerer should follow the offerer's
/// preference), with telephone-event/8000 and comfort noise if offered, at
/// the offer's payload type numbers. Every other stream is refused with
/// port 0, so the answer has the offer's streams in the offer's order.
///
/// `wanted` is this node's own direction: `SendRecv` normally, `SendOnly`
/// when it holds the call with music, `Inactive` when it holds without.
/// The answer's direction is the offer's reversed, limited to `wanted`
/// (offer `sendonly` → `recvonly`; `sendrecv` while we hold → `sendonly`).
///
/// No usable audio is an [`Error::NoCommonCodec`] whose reason says why
/// (no audio stream, audio only over SRTP, no common codec with the
/// codecs on each side).
pub fn answer(
    offer: &SessionDescription,
    caps: &Capabilities,
    local: &LocalMedia,
    wanted: Direction,
) -> Result<Answer> {
    let active_audio: Vec<(usize, &MediaDescription)> = offer
        .media
        .iter()
        .enumerate()
        .filter(|(_, m)| m.is_audio() && m.port != 0)
        .collect();
    let plain: Vec<(usize, &MediaDescription)> = active_audio
        .iter()
        .copied()
        .filter(|(_, m)| m.protocol.is_plain_rtp())
        .collect();
    let Some((index, media, choice)) = plain
        .iter()
        .find_map(|(index, m)| choose(m, caps).map(|choice| (*index, *m, choice)))
    else {
        return Err(Error::NoCommonCodec(refusal(caps, &active_audio, &plain)));
    };

    let direction = effective_direction(offer, media).reversed().and(wanted);
    let audio = negotiated(offer, media, &choice, direction)?;
    let answered = offer
        .media
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if i == index {
                audio_media(
                    media.protocol.clone(),
                    local.rtp_port,
                    &[(choice.codec, choice.payload_type)],
                    choice.telephone_event_payload_type,
                    choice.comfort_noise_payload_type,
                    caps.ptime_ms,
                    direction,
                )
            } else {
                rejected(m)
            }
        })
        .collect();
    Ok(Answer {
        sdp: local_session(local, answered).to_string(),
        audio,
    })
}

/// Why no audio stream of an offer could be taken, in words a user can
/// act on.
fn refusal(
    caps: &Capabilities,
    active_audio: &[(usize, &MediaDescription)],
    plain: &[(usize, &MediaDescription)],
) -> String {
    if !plain.is_empty() {
        let media: Vec<&MediaDescription> = plain.iter().map(|(_, m)| *m).collect();
        let names = offered_names(&media);
        let offered = if names.is_empty() {
            "no codec offered (only telephone-event or comfort noise)".to_owned()
        } else {
            format!("offered {}", names.join(", "))
        };
        return format!("{offered}; this node takes {}", codec_names(caps));
    }
    match active_audio.first() {
        None => "offer has no audio stream".to_owned(),
        Some((_, m)) if m.protocol.is_rtp() => format!(
            "audio only over SRTP ({}); this node takes plain RTP",
            m.protocol
        ),
        Some((_, m)) => format!(
            "audio only over {}; this node takes plain RTP (RTP/AVP)",
            m.protocol
        ),
    }
}

/// An offer of this node's audio (RFC 3264 s.5): for an INVITE that came
/// without SDP (its answer comes in the ACK) and for this node's
/// re-INVITEs (hold with `SendOnly` or `Inactive`, resume with
/// `SendRecv`; `local.session_version` one more each time).
///
/// One `RTP/AVP` audio stream with `caps`' codecs in its order at their
/// static payload types, telephone-event at 101 if taken, `caps`' packet
/// time. With no codec in `caps` the stream is offered disabled (port 0),
/// which any answer refuses.
pub fn offer(caps: &Capabilities, local: &LocalMedia, direction: Direction) -> String {
    let mut codecs: Vec<(Codec, u8)> = Vec::new();
    for codec in &caps.codecs {
        if !codecs.iter().any(|(c, _)| c == codec) {
            codecs.push((*codec, codec.static_payload_type()));
        }
    }
    let port = if codecs.is_empty() { 0 } else { local.rtp_port };
    let mut media = audio_media(
        Protocol::RtpAvp,
        port,
        &codecs,
        caps.telephone_event.then_some(TELEPHONE_EVENT_PAYLOAD_TYPE),
        None,
        caps.ptime_ms,
        direction,
    );
    if media.formats.is_empty() {
        media
            .formats
            .push(Codec::Pcmu.static_payload_type().to_string());
    }
    local_session(local, vec![media]).to_string()
}

/// Reads the answer to an [`offer()`] made with the same `caps` (RFC 3264
/// s.7): the first audio stream it accepts (port not 0) must be over plain
/// RTP and list one of the codecs offered; the first such one is used, at
/// the answer's payload type number (the one the peer receives). Comfort
/// noise was not offered, so it is never taken.
///
/// `direction` in the result is ours: the answer's reversed. A refusal is
/// an [`Error::NoCommonCodec`] saying what the answer did.
pub fn accept_answer(caps: &Capabilities, answer: &SessionDescription) -> Result<NegotiatedAudio> {
    let mut audio = answer.media.iter().filter(|m| m.is_audio()).peekable();
    if audio.peek().is_none() {
        return Err(Error::NoCommonCodec(
            "the answer has no audio stream".to_owned(),
        ));
    }
    // Our offers have one audio stream, but an answer to someone else's
    // offer (one we relay, or our own answer read back) may refuse some
    // before the one it takes.
    let Some(media) = audio.find(|m| m.port != 0) else {
        return Err(Error::NoCommonCodec(
            "the answer refused the audio stream (port 0)".to_owned(),
        ));
    };
    if !media.protocol.is_plain_rtp() {
        return Err(Error::NoCommonCodec(format!(
            "the answer's audio is over {}; this node offered RTP/AVP",
            media.protocol
        )));
    }
    let Some(mut choice) = choose(media, caps) else {
        return Err(Error::NoCommonCodec(format!(
            "the answer picked {}, which this node did not offer (it offered {})",
            offered_names(&[media]).join(", "),
            codec_names(caps)
        )));
    };
    choice.comfort_noise_payload_type = None;
    let direction = effective_direction(answer, media).reversed();
    negotiated(answer, media, &choice, direction)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn local() -> LocalMedia {
        LocalMedia {
            address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
            rtp_port: 30_000,
            session_id: 7,
            session_version: 1,
        }
    }

    fn media(body: &str) -> MediaDescription {
        let sdp =
            SessionDescription::parse(&format!("v=0\r\nc=IN IP4 10.0.0.1\r\n{body}")).unwrap();
        sdp.media.into_iter().next().unwrap()
    }

    #[test]
    fn static_types_resolve_without_rtpmap_and_rtpmap_names_ignore_case() {
        let m = media(
            "m=audio 4000 RTP/AVP 0 8 13 18 96 97 98 99\r\na=rtpmap:96 pcmu/8000/1\r\n\
                       a=rtpmap:97 telephone-event/48000\r\na=rtpmap:98 PCMA/16000\r\n\
                       a=rtpmap:99 Telephone-Event/8000\r\n",
        );
        assert_eq!(resolve(&m, 0), Format::Codec(Codec::Pcmu));
        assert_eq!(resolve(&m, 8), Format::Codec(Codec::Pcma));
        assert_eq!(resolve(&m, 13), Format::ComfortNoise);
        assert_eq!(resolve(&m, 18), Format::Other("G729".into()));
        assert_eq!(resolve(&m, 96), Format::Codec(Codec::Pcmu));
        assert_eq!(resolve(&m, 97), Format::Ignored);
        assert_eq!(resolve(&m, 98), Format::Other("PCMA/16000".into()));
        assert_eq!(resolve(&m, 99), Format::TelephoneEvent);
        assert_eq!(resolve(&m, 120), Format::Other("payload type 120".into()));
    }

    #[test]
    fn directions_follow_rfc_3264_and_our_hold() {
        use Direction::*;
        let cases = [
            (SendRecv, SendRecv, SendRecv),
            (SendOnly, SendRecv, RecvOnly),
            (RecvOnly, SendRecv, SendOnly),
            (Inactive, SendRecv, Inactive),
            (SendRecv, SendOnly, SendOnly),
            (SendOnly, SendOnly, Inactive),
            (SendRecv, Inactive, Inactive),
        ];
        for (offered, wanted, answered) in cases {
            assert_eq!(
                offered.reversed().and(wanted),
                answered,
                "{offered:?} {wanted:?}"
            );
        }
    }

    #[test]
    fn answer_takes_the_offer_order_and_only_the_chosen_codec() {
        let offer = SessionDescription::parse(
            "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 8 0 101 13\r\n\
             a=rtpmap:101 telephone-event/8000\r\n",
        )
        .unwrap();
        let answer = answer(
            &offer,
            &Capabilities::default(),
            &local(),
            Direction::SendRecv,
        )
        .unwrap();
        assert_eq!(answer.audio.codec, Codec::Pcma);
        assert_eq!(answer.audio.payload_type, 8);
        assert_eq!(answer.audio.telephone_event_payload_type, Some(101));
        assert_eq!(answer.audio.comfort_noise_payload_type, Some(13));
        assert_eq!(answer.audio.remote_rtcp_port, 4001);
        assert_eq!(
            answer.sdp,
            "v=0\r\no=dialtone 7 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\n\
             t=0 0\r\nm=audio 30000 RTP/AVP 8 101 13\r\na=rtpmap:8 PCMA/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\na=rtpmap:13 CN/8000\r\n\
             a=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
        );
    }
}
