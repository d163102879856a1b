//! SDP: the parser never panics, what we write parses back, and the
//! offer/answer rules hold for realistic offers of real clients.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dialtone_media::sdp::{
    Attribute, Direction, Fmtp, MediaDescription, Origin, Protocol, Rtcp, Rtpmap,
    SessionDescription,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------
// Strategies

fn token() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9._-]{0,7}"
}

fn ip_address() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u16; 8]>().prop_map(|s| IpAddr::V6(Ipv6Addr::from(s))),
    ]
}

fn direction() -> impl Strategy<Value = Direction> {
    prop_oneof![
        Just(Direction::SendRecv),
        Just(Direction::SendOnly),
        Just(Direction::RecvOnly),
        Just(Direction::Inactive),
    ]
}

/// Attributes this module does not interpret: names outside the typed ones.
fn attribute() -> impl Strategy<Value = Attribute> {
    (
        "x-[a-z0-9-]{1,6}",
        proptest::option::of("[a-zA-Z0-9=;]{1,6}( [a-zA-Z0-9=;]{1,6})?"),
    )
        .prop_map(|(name, value)| Attribute { name, value })
}

fn media() -> impl Strategy<Value = MediaDescription> {
    let rtp = (
        prop_oneof![
            Just(Protocol::RtpAvp),
            Just(Protocol::RtpAvpf),
            Just(Protocol::RtpSavp),
            Just(Protocol::RtpSavpf),
            Just(Protocol::UdpTlsRtpSavpf),
        ],
        proptest::collection::vec((0u8..128).prop_map(|pt| pt.to_string()), 1..6),
    );
    let other = (
        "[A-Z]{2,4}/[A-Z]{2,5}".prop_map(Protocol::Other),
        proptest::collection::vec(token(), 1..4),
    );
    (
        (
            prop_oneof!["audio", "video", "application", token()],
            1u16..,
            proptest::option::of(1u16..8),
            prop_oneof![rtp, other],
            proptest::option::of(ip_address()),
        ),
        (
            proptest::collection::vec(
                (
                    0u8..128,
                    token(),
                    1u32..200_000,
                    proptest::option::of(1u8..3),
                ),
                0..4,
            ),
            proptest::collection::vec((0u8..128, "[a-z0-9=;-]{1,10}"), 0..3),
            proptest::option::of(1u32..200),
            proptest::option::of(1u32..200),
            proptest::option::of((any::<u16>(), proptest::option::of(ip_address()))),
            any::<bool>(),
            proptest::option::of(direction()),
            proptest::collection::vec(attribute(), 0..3),
        ),
    )
        .prop_map(
            |(
                (media, port, port_count, (protocol, formats), connection),
                (rtpmaps, fmtps, ptime_ms, maxptime_ms, rtcp, rtcp_mux, direction, attributes),
            )| MediaDescription {
                media,
                port,
                port_count,
                protocol,
                formats,
                connection,
                rtpmaps: rtpmaps
                    .into_iter()
                    .map(
                        |(payload_type, encoding_name, clock_rate_hz, channels)| Rtpmap {
                            payload_type,
                            encoding_name,
                            clock_rate_hz,
                            channels,
                        },
                    )
                    .collect(),
                fmtps: fmtps
                    .into_iter()
                    .map(|(payload_type, parameters)| Fmtp {
                        payload_type,
                        parameters,
                    })
                    .collect(),
                ptime_ms,
                maxptime_ms,
                rtcp: rtcp.map(|(port, address)| Rtcp { port, address }),
                rtcp_mux,
                direction,
                attributes,
            },
        )
}

fn session() -> impl Strategy<Value = SessionDescription> {
    (
        proptest::option::of((token(), "[0-9]{1,20}", "[0-9]{1,20}", token())),
        "[a-zA-Z0-9-][a-zA-Z0-9 -]{0,10}[a-zA-Z0-9-]",
        ip_address(),
        proptest::option::of(direction()),
        proptest::collection::vec(attribute(), 0..3),
        proptest::collection::vec(media(), 0..4),
    )
        .prop_map(
            |(origin, session_name, connection, direction, attributes, media)| SessionDescription {
                origin: origin.map(|(username, session_id, session_version, address)| Origin {
                    username,
                    session_id,
                    session_version,
                    address_type: "IP4".into(),
                    address,
                }),
                session_name,
                connection: Some(connection),
                direction,
                attributes,
                media,
            },
        )
}

/// Lines that look like SDP, some broken, in any order: reaches far more
/// of the parser than random text does.
fn sdp_like_line() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("v=0".to_owned()),
        "[a-z]=[ -~]{0,30}",
        "c=IN IP[46] [0-9a-f.:/]{0,20}",
        "m=(audio|video) [0-9/]{0,7} (RTP/AVP|RTP/SAVP|UDP/TLS/RTP/SAVPF|TCP)( [0-9a-z]{1,4}){0,4}",
        "a=(rtpmap|fmtp|ptime|maxptime|rtcp|rtcp-mux|sendonly|inactive)(:[ -~]{0,20})?",
        "a=rtpmap:[0-9]{1,4} [A-Za-z-]{1,8}/[0-9]{0,6}(/[0-9]{0,3})?",
        "a=rtcp:[0-9]{0,6}( IN IP4 [0-9.]{0,15})?",
    ]
}

proptest! {
    #[test]
    fn parse_never_panics_on_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = SessionDescription::parse(&body);
    }

    #[test]
    fn parse_never_panics_on_arbitrary_strings(body in "\\PC{0,300}") {
        let _ = SessionDescription::parse(&body);
    }

    #[test]
    fn parse_never_panics_on_sdp_like_lines(
        lines in proptest::collection::vec(sdp_like_line(), 0..16),
        crlf in any::<bool>(),
    ) {
        let body = lines.join(if crlf { "\r\n" } else { "\n" });
        let _ = SessionDescription::parse(&body);
        let _ = SessionDescription::parse(&format!("v=0\n{body}"));
    }

    #[test]
    fn what_is_written_parses_back_the_same(sdp in session()) {
        let written = sdp.to_string();
        let parsed = SessionDescription::parse(&written);
        prop_assert!(parsed.is_ok(), "{written}: {parsed:?}");
        prop_assert_eq!(parsed.ok(), Some(sdp));
    }
}
