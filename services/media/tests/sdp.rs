//! SDP: the parser never panics, what we write parses back, and the
//! offer/answer rules hold for realistic offers of real clients.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dialtone_media::sdp::{
    accept_answer, answer, offer, Attribute, Capabilities, Codec, Direction, Fmtp, LocalMedia,
    MediaDescription, NegotiatedAudio, Origin, Protocol, Rtcp, Rtpmap, SessionDescription,
};
use dialtone_media::Error;
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

/// Audio streams such as phones offer: G.711 and other codecs at static or
/// dynamic payload types, telephone-event and CN at several rates, plain
/// RTP or SRTP, any direction, sometimes `c=0.0.0.0`.
fn audio_stream() -> impl Strategy<Value = MediaDescription> {
    let format = (
        prop_oneof![Just(0u8), Just(8), Just(9), Just(13), Just(18), 96u8..128],
        prop_oneof!["PCMU", "pcma", "opus", "telephone-event", "CN", "G722"],
        prop_oneof![Just(8000u32), Just(16000), Just(48000)],
        any::<bool>(),
    );
    (
        prop_oneof![
            4 => Just(Protocol::RtpAvp),
            1 => Just(Protocol::RtpAvpf),
            1 => Just(Protocol::RtpSavp),
        ],
        0u16..4,
        proptest::collection::vec(format, 1..6),
        proptest::option::of(direction()),
        proptest::option::of(prop_oneof![
            Just(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            ip_address()
        ]),
        proptest::option::of(any::<u16>()),
        proptest::option::of(1u32..100),
    )
        .prop_map(
            |(protocol, port_choice, formats, direction, connection, rtcp_port, ptime_ms)| {
                let mut rtpmaps: Vec<Rtpmap> = Vec::new();
                let mut payload_types: Vec<String> = Vec::new();
                for (pt, name, clock_rate_hz, mapped) in formats {
                    if payload_types.contains(&pt.to_string()) {
                        continue;
                    }
                    payload_types.push(pt.to_string());
                    // Static types are often listed without a mapping.
                    if mapped || pt >= 96 {
                        rtpmaps.push(Rtpmap {
                            payload_type: pt,
                            encoding_name: name.clone(),
                            clock_rate_hz,
                            channels: None,
                        });
                    }
                }
                MediaDescription {
                    media: "audio".into(),
                    port: if port_choice == 0 {
                        0
                    } else {
                        2000 + 2 * port_choice
                    },
                    port_count: None,
                    protocol,
                    formats: payload_types,
                    connection,
                    rtpmaps,
                    fmtps: Vec::new(),
                    ptime_ms,
                    maxptime_ms: None,
                    rtcp: rtcp_port.map(|port| Rtcp {
                        port,
                        address: None,
                    }),
                    rtcp_mux: false,
                    direction,
                    attributes: Vec::new(),
                }
            },
        )
}

/// Offers: any session whose streams are a mix of anything and audio.
fn offer_session() -> impl Strategy<Value = SessionDescription> {
    (
        session(),
        proptest::collection::vec(prop_oneof![media(), audio_stream()], 0..4),
    )
        .prop_map(|(mut sdp, media)| {
            sdp.media = media;
            sdp
        })
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

// ---------------------------------------------------------------------
// Offers of real clients, written from what each sends (versions named);
// the lines that matter are theirs, identifiers and addresses made up.

/// baresip 1.0 with its default audio modules.
const BARESIP: &str = "v=0\r
o=- 1595438516 1595438517 IN IP4 192.168.1.50\r
s=-\r
c=IN IP4 192.168.1.50\r
t=0 0\r
a=tool:baresip 1.0.0\r
m=audio 10780 RTP/AVP 96 9 0 8 101\r
b=AS:64\r
a=rtpmap:96 opus/48000/2\r
a=fmtp:96 stereo=1;sprop-stereo=1\r
a=rtpmap:9 G722/8000\r
a=rtpmap:0 PCMU/8000\r
a=rtpmap:8 PCMA/8000\r
a=rtpmap:101 telephone-event/8000\r
a=fmtp:101 0-15\r
a=ptime:20\r
a=sendrecv\r
";

/// linphone 5 (desktop): AVPF, ICE candidates, telephone-event at three
/// rates, RTCP on its own port and rtcp-mux offered.
const LINPHONE: &str = "v=0\r
o=alice 2143 1023 IN IP4 192.168.1.20\r
s=Talk\r
c=IN IP4 192.168.1.20\r
t=0 0\r
a=ice-pwd:31ec21eb38b2ec6d36e8dc7b\r
a=ice-ufrag:0ba0b7e2\r
a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics\r
a=record:off\r
m=audio 7078 RTP/AVPF 96 97 98 0 8 18 101 99 100\r
c=IN IP4 192.168.1.20\r
a=rtpmap:96 opus/48000/2\r
a=fmtp:96 useinbandfec=1\r
a=rtpmap:97 speex/16000\r
a=fmtp:97 vbr=on\r
a=rtpmap:98 speex/8000\r
a=fmtp:98 vbr=on\r
a=fmtp:18 annexb=yes\r
a=rtpmap:101 telephone-event/48000\r
a=rtpmap:99 telephone-event/16000\r
a=rtpmap:100 telephone-event/8000\r
a=rtcp:7079\r
a=rtcp-mux\r
a=candidate:1 1 UDP 2130706431 192.168.1.20 7078 typ host\r
a=candidate:1 2 UDP 2130706430 192.168.1.20 7079 typ host\r
a=candidate:2 1 UDP 1694498815 203.0.113.7 7078 typ srflx raddr 192.168.1.20 rport 7078\r
a=rtcp-fb:* trr-int 1000\r
a=rtcp-fb:* ccm tmmbr\r
";

/// SIPp's uac_pcap scenario: PCMU and telephone-event 101, LF line ends
/// as its scenario file is written.
const SIPP_UAC_PCAP: &str = "v=0
o=user1 53655765 2353687637 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 6000 RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-11,16
";

/// A desk phone set to A-law first and 30 ms (as Yealink and Snom phones
/// are in much of Europe).
const DESK_PHONE: &str = "v=0\r
o=- 20001 20001 IN IP4 10.1.2.3\r
s=SDP data\r
c=IN IP4 10.1.2.3\r
t=0 0\r
m=audio 11780 RTP/AVP 8 0 18 9 101\r
a=rtpmap:8 PCMA/8000\r
a=rtpmap:0 PCMU/8000\r
a=rtpmap:18 G729/8000\r
a=fmtp:18 annexb=no\r
a=rtpmap:9 G722/8000\r
a=fmtp:101 0-15\r
a=rtpmap:101 telephone-event/8000\r
a=ptime:30\r
a=sendrecv\r
";

/// Chrome through SIP.js: DTLS-SRTP, ICE, BUNDLE, rtcp-mux.
const CHROME_SIPJS: &str = "v=0\r
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r
s=-\r
t=0 0\r
a=group:BUNDLE 0\r
a=extmap-allow-mixed\r
a=msid-semantic: WMS 3c4e5a\r
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r
c=IN IP4 0.0.0.0\r
a=rtcp:9 IN IP4 0.0.0.0\r
a=candidate:842163049 1 udp 1677729535 203.0.113.9 53190 typ srflx raddr 0.0.0.0 rport 0 generation 0\r
a=ice-ufrag:Xw4f\r
a=ice-pwd:pKd3xg0R5Q0bXmYp0kF7yJzT\r
a=ice-options:trickle\r
a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08\r
a=setup:actpass\r
a=mid:0\r
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r
a=sendrecv\r
a=msid:3c4e5a 9a1b\r
a=rtcp-mux\r
a=rtpmap:111 opus/48000/2\r
a=rtcp-fb:111 transport-cc\r
a=fmtp:111 minptime=10;useinbandfec=1\r
a=rtpmap:63 red/48000/2\r
a=fmtp:63 111/111\r
a=rtpmap:9 G722/8000\r
a=rtpmap:0 PCMU/8000\r
a=rtpmap:8 PCMA/8000\r
a=rtpmap:13 CN/8000\r
a=rtpmap:110 telephone-event/48000\r
a=rtpmap:126 telephone-event/8000\r
a=ssrc:1001 cname:abc\r
";

fn local() -> LocalMedia {
    LocalMedia {
        address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
        rtp_port: 30_000,
        session_id: 42,
        session_version: 1,
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn answer_to(offer_text: &str) -> (SessionDescription, NegotiatedAudio) {
    answer_with(offer_text, Direction::SendRecv)
}

fn answer_with(offer_text: &str, wanted: Direction) -> (SessionDescription, NegotiatedAudio) {
    let offer = SessionDescription::parse(offer_text).unwrap();
    let answer = answer(&offer, &Capabilities::default(), &local(), wanted).unwrap();
    let sdp = SessionDescription::parse(&answer.sdp).unwrap();
    assert_eq!(sdp.media.len(), offer.media.len(), "{}", answer.sdp);
    (sdp, answer.audio)
}

fn refusal(offer_text: &str) -> String {
    let offer = SessionDescription::parse(offer_text).unwrap();
    match answer(
        &offer,
        &Capabilities::default(),
        &local(),
        Direction::SendRecv,
    ) {
        Err(e @ Error::NoCommonCodec(_)) => e.to_string(),
        other => panic!("expected NoCommonCodec, got {other:?}"),
    }
}

#[test]
fn baresip_gets_pcmu_the_first_of_ours_in_its_order() {
    let (sdp, audio) = answer_to(BARESIP);
    assert_eq!(
        audio,
        NegotiatedAudio {
            remote_address: ip("192.168.1.50"),
            remote_rtp_port: 10780,
            remote_rtcp_port: 10781,
            codec: Codec::Pcmu,
            payload_type: 0,
            telephone_event_payload_type: Some(101),
            comfort_noise_payload_type: None,
            remote_ptime_ms: Some(20),
            direction: Direction::SendRecv,
            remote_on_hold: false,
        }
    );
    let m = &sdp.media[0];
    assert_eq!(m.port, 30_000);
    assert_eq!(m.formats, ["0", "101"]);
    assert_eq!(m.fmtp(101), Some("0-16"));
    assert_eq!(m.ptime_ms, Some(20));
    assert_eq!(sdp.connection, Some(ip("192.0.2.10")));
    let origin = sdp.origin.unwrap();
    assert_eq!(
        (origin.username.as_str(), origin.session_id.as_str()),
        ("dialtone", "42")
    );
}

#[test]
fn linphone_gets_avpf_pcmu_telephone_event_at_8000_and_no_ice_or_mux() {
    let (sdp, audio) = answer_to(LINPHONE);
    assert_eq!(audio.codec, Codec::Pcmu);
    assert_eq!(audio.payload_type, 0);
    assert_eq!(audio.telephone_event_payload_type, Some(100));
    assert_eq!(audio.remote_rtp_port, 7078);
    assert_eq!(audio.remote_rtcp_port, 7079);
    let m = &sdp.media[0];
    assert_eq!(m.protocol, Protocol::RtpAvpf);
    assert_eq!(m.formats, ["0", "100"]);
    assert!(!m.rtcp_mux);
    assert!(m.attributes.is_empty() && sdp.attributes.is_empty());
}

#[test]
fn sipp_uac_pcap_with_lf_line_ends() {
    let (_, audio) = answer_to(SIPP_UAC_PCAP);
    assert_eq!(audio.remote_address, ip("127.0.0.1"));
    assert_eq!(audio.remote_rtp_port, 6000);
    assert_eq!((audio.codec, audio.payload_type), (Codec::Pcmu, 0));
    assert_eq!(audio.telephone_event_payload_type, Some(101));
    assert_eq!(audio.remote_ptime_ms, None);
}

#[test]
fn a_desk_phone_with_pcma_first_gets_pcma_and_we_still_ask_for_20_ms() {
    let (sdp, audio) = answer_to(DESK_PHONE);
    assert_eq!((audio.codec, audio.payload_type), (Codec::Pcma, 8));
    assert_eq!(audio.remote_ptime_ms, Some(30));
    assert_eq!(sdp.media[0].ptime_ms, Some(20));
    assert_eq!(sdp.media[0].formats, ["8", "101"]);
}

#[test]
fn chrome_through_sipjs_is_refused_for_srtp() {
    assert_eq!(
        refusal(CHROME_SIPJS),
        "no common codec: audio only over SRTP (UDP/TLS/RTP/SAVPF); this node takes plain RTP"
    );
    let savp = "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/SAVP 0\r\n\
                a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n";
    assert_eq!(
        refusal(savp),
        "no common codec: audio only over SRTP (RTP/SAVP); this node takes plain RTP"
    );
}

#[test]
fn no_common_codec_names_both_sides() {
    let offer = "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 96 9 101\r\n\
                 a=rtpmap:96 opus/48000/2\r\na=rtpmap:101 telephone-event/8000\r\n";
    assert_eq!(
        refusal(offer),
        "no common codec: offered opus, G722; this node takes PCMU, PCMA"
    );
    let video_only =
        "v=0\r\nc=IN IP4 10.0.0.1\r\nm=video 4000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n";
    assert_eq!(
        refusal(video_only),
        "no common codec: offer has no audio stream"
    );
}

#[test]
fn video_is_refused_with_port_0_and_the_order_is_kept() {
    let offer = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n\
                 m=video 5006 RTP/AVP 96 97\r\na=rtpmap:96 H264/90000\r\na=rtpmap:97 VP8/90000\r\n\
                 m=audio 5004 RTP/AVP 0 8\r\n";
    let (sdp, audio) = answer_to(offer);
    assert_eq!(sdp.media[0].media, "video");
    assert_eq!(sdp.media[0].port, 0);
    assert_eq!(sdp.media[0].formats, ["96", "97"]);
    assert!(sdp.media[0].rtpmaps.is_empty());
    assert_eq!(sdp.media[1].port, 30_000);
    assert_eq!(audio.remote_rtp_port, 5004);
}

#[test]
fn static_payload_types_need_no_rtpmap_and_dynamic_ones_resolve_by_name() {
    let (_, audio) = answer_to("v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 8 0\r\n");
    assert_eq!((audio.codec, audio.payload_type), (Codec::Pcma, 8));
    assert_eq!(audio.telephone_event_payload_type, None);
    let (sdp, audio) = answer_to(
        "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 112 113\r\n\
         a=rtpmap:112 pcmu/8000/1\r\na=rtpmap:113 telephone-event/48000\r\n",
    );
    assert_eq!((audio.codec, audio.payload_type), (Codec::Pcmu, 112));
    assert_eq!(audio.telephone_event_payload_type, None);
    assert_eq!(sdp.media[0].formats, ["112"]);
    assert_eq!(sdp.media[0].rtpmap(112).unwrap().encoding_name, "PCMU");
}

#[test]
fn the_second_audio_stream_is_taken_when_the_first_has_no_common_codec() {
    let offer = "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/SAVP 0\r\n\
                 m=audio 4002 RTP/AVP 9\r\nm=audio 4004 RTP/AVP 8\r\nm=audio 4006 RTP/AVP 0\r\n";
    let (sdp, audio) = answer_to(offer);
    let ports: Vec<u16> = sdp.media.iter().map(|m| m.port).collect();
    assert_eq!(ports, [0, 0, 30_000, 0]);
    assert_eq!((audio.codec, audio.remote_rtp_port), (Codec::Pcma, 4004));
}

#[test]
fn hold_by_sendonly_inactive_and_c_0_0_0_0() {
    let held = SIPP_UAC_PCAP.replace("t=0 0\n", "t=0 0\na=sendonly\n");
    let (sdp, audio) = answer_to(&held);
    assert_eq!(audio.direction, Direction::RecvOnly);
    assert!(audio.remote_on_hold);
    assert_eq!(sdp.media[0].direction, Some(Direction::RecvOnly));

    let inactive = format!("{SIPP_UAC_PCAP}a=inactive\n");
    let (_, audio) = answer_to(&inactive);
    assert_eq!(audio.direction, Direction::Inactive);
    assert!(audio.remote_on_hold);

    let rfc2543 = SIPP_UAC_PCAP.replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0");
    let (_, audio) = answer_to(&rfc2543);
    assert_eq!(audio.remote_address, ip("0.0.0.0"));
    assert_eq!(audio.direction, Direction::RecvOnly);
    assert!(audio.remote_on_hold);

    let recvonly = format!("{SIPP_UAC_PCAP}a=recvonly\n");
    let (_, audio) = answer_to(&recvonly);
    assert_eq!(audio.direction, Direction::SendOnly);
    assert!(!audio.remote_on_hold);
}

#[test]
fn when_we_hold_a_sendrecv_offer_is_answered_sendonly_or_inactive() {
    let (_, audio) = answer_with(BARESIP, Direction::SendOnly);
    assert_eq!(audio.direction, Direction::SendOnly);
    assert!(!audio.remote_on_hold);
    let (sdp, audio) = answer_with(BARESIP, Direction::Inactive);
    assert_eq!(audio.direction, Direction::Inactive);
    assert_eq!(sdp.media[0].direction, Some(Direction::Inactive));
}

#[test]
fn a_reinvite_moving_the_stream_and_resuming_shows_in_the_result() {
    let offer = SessionDescription::parse(SIPP_UAC_PCAP).unwrap();
    let first = answer(
        &offer,
        &Capabilities::default(),
        &local(),
        Direction::SendRecv,
    )
    .unwrap();
    let moved = SIPP_UAC_PCAP
        .replace("c=IN IP4 127.0.0.1", "c=IN IP4 10.9.8.7")
        .replace("m=audio 6000", "m=audio 6100")
        .replace("t=0 0\n", "t=0 0\na=sendonly\n");
    let second_local = LocalMedia {
        session_version: 2,
        ..local()
    };
    let held = answer(
        &SessionDescription::parse(&moved).unwrap(),
        &Capabilities::default(),
        &second_local,
        Direction::SendRecv,
    )
    .unwrap();
    assert_eq!(held.audio.remote_address, ip("10.9.8.7"));
    assert_eq!(held.audio.remote_rtp_port, 6100);
    assert!(held.audio.remote_on_hold && !first.audio.remote_on_hold);
    let origin = SessionDescription::parse(&held.sdp)
        .unwrap()
        .origin
        .unwrap();
    assert_eq!(
        (origin.session_id.as_str(), origin.session_version.as_str()),
        ("42", "2")
    );
    let resumed = moved.replace("a=sendonly\n", "a=sendrecv\n");
    let resumed = answer(
        &SessionDescription::parse(&resumed).unwrap(),
        &Capabilities::default(),
        &second_local,
        Direction::SendRecv,
    )
    .unwrap();
    assert!(!resumed.audio.remote_on_hold);
    assert_eq!(resumed.audio.direction, Direction::SendRecv);
}

#[test]
fn malformed_bodies_are_malformed_not_refusals() {
    for (body, expected) in [
        (
            "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio x RTP/AVP 0\r\n",
            "not a number",
        ),
        ("v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio\r\n", "m= line needs"),
        ("v=0\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n", "no c="),
        (
            "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 99999 RTP/AVP 0\r\n",
            "out of range",
        ),
        (
            "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP opus\r\n",
            "payload type",
        ),
        (
            "v=0\r\nc=IN IP4 999.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\n",
            "not an IP address",
        ),
    ] {
        match SessionDescription::parse(body) {
            Err(Error::Malformed {
                what: "SDP",
                reason,
            }) => {
                assert!(reason.contains(expected), "{body:?}: {reason}")
            }
            other => panic!("{body:?}: {other:?}"),
        }
    }
}

#[test]
fn our_offer_is_what_phones_expect() {
    let text = offer(&Capabilities::default(), &local(), Direction::SendRecv);
    assert_eq!(
        text,
        "v=0\r\no=dialtone 42 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
         m=audio 30000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
    );
    let hold = offer(&Capabilities::default(), &local(), Direction::SendOnly);
    assert!(hold.ends_with("a=sendonly\r\n"));
}

#[test]
fn accept_answer_takes_what_the_phone_picked_from_our_offer() {
    // The desk phone's answer to our offer: A-law, its own DTMF number.
    let phone_answer =
        "v=0\r\no=- 20002 20002 IN IP4 10.1.2.3\r\ns=SDP data\r\nc=IN IP4 10.1.2.3\r\n\
                        t=0 0\r\nm=audio 11782 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\n\
                        a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\n\
                        a=recvonly\r\n";
    let audio = accept_answer(
        &Capabilities::default(),
        &SessionDescription::parse(phone_answer).unwrap(),
    )
    .unwrap();
    assert_eq!((audio.codec, audio.payload_type), (Codec::Pcma, 8));
    assert_eq!(audio.telephone_event_payload_type, Some(101));
    assert_eq!(
        (audio.remote_rtp_port, audio.remote_rtcp_port),
        (11782, 11783)
    );
    assert_eq!(audio.direction, Direction::SendOnly);
    assert!(!audio.remote_on_hold);

    let refused = |body: &str| match accept_answer(
        &Capabilities::default(),
        &SessionDescription::parse(body).unwrap(),
    ) {
        Err(e @ Error::NoCommonCodec(_)) => e.to_string(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        refused("v=0\r\nc=IN IP4 10.1.2.3\r\nm=audio 11782 RTP/AVP 18\r\n"),
        "no common codec: the answer picked G729, which this node did not offer (it offered PCMU, PCMA)"
    );
    assert_eq!(
        refused("v=0\r\nc=IN IP4 10.1.2.3\r\nm=audio 0 RTP/AVP 0\r\n"),
        "no common codec: the answer refused the audio stream (port 0)"
    );
}

// ---------------------------------------------------------------------
// Offer/answer properties

fn capabilities() -> impl Strategy<Value = Capabilities> {
    (
        prop_oneof![
            Just(vec![Codec::Pcmu]),
            Just(vec![Codec::Pcma]),
            Just(vec![Codec::Pcmu, Codec::Pcma]),
            Just(vec![Codec::Pcma, Codec::Pcmu]),
        ],
        any::<bool>(),
        prop_oneof![Just(10u32), Just(20), Just(30)],
    )
        .prop_map(|(codecs, telephone_event, ptime_ms)| Capabilities {
            codecs,
            telephone_event,
            ptime_ms,
        })
}

fn local_media() -> impl Strategy<Value = LocalMedia> {
    (ip_address(), 1024u16..65000, any::<u64>(), any::<u64>()).prop_map(
        |(address, rtp_port, session_id, session_version)| LocalMedia {
            address,
            rtp_port: rtp_port & !1,
            session_id,
            session_version,
        },
    )
}

proptest! {
    #[test]
    fn answer_never_panics_and_what_it_writes_parses_with_the_offers_streams(
        sdp in offer_session(),
        caps in capabilities(),
        local in local_media(),
        wanted in direction(),
    ) {
        if let Ok(answered) = answer(&sdp, &caps, &local, wanted) {
            let parsed = SessionDescription::parse(&answered.sdp);
            prop_assert!(parsed.is_ok(), "{}", answered.sdp);
            let parsed = parsed.unwrap();
            prop_assert_eq!(parsed.media.len(), sdp.media.len());
            prop_assert_eq!(parsed.media.iter().filter(|m| m.port != 0).count(), 1);
            prop_assert!(caps.codecs.contains(&answered.audio.codec));
            // The stream taken is the one answered with a port (RFC 3264 s.6).
            let index = parsed.media.iter().position(|m| m.port != 0);
            let taken = index.and_then(|i| sdp.media.get(i));
            prop_assert!(
                taken.is_some_and(|m| m.is_audio() && m.protocol.is_plain_rtp()
                    && m.payload_types().any(|pt| pt == answered.audio.payload_type)),
                "{:?}", answered.audio
            );
            prop_assert_eq!(taken.map(|m| m.port), Some(answered.audio.remote_rtp_port));
            let on_hold = taken.map(|m| {
                !sdp.direction_for(m).receives()
                    || sdp.connection_for(m).is_some_and(|a| a.is_unspecified())
            });
            prop_assert_eq!(on_hold, Some(answered.audio.remote_on_hold));
            prop_assert!(!answered.audio.direction.sends() || wanted.sends());
            prop_assert!(!answered.audio.direction.receives() || wanted.receives());
            // The answer re-read as an answer gives back what it agreed.
            let agreed = accept_answer(&caps, &parsed);
            prop_assert!(agreed.is_ok(), "{:?}", agreed);
            if let Ok(agreed) = agreed {
                prop_assert_eq!(agreed.codec, answered.audio.codec);
                prop_assert_eq!(agreed.remote_rtp_port, local.rtp_port);
            }
        }
    }

    #[test]
    fn answer_never_panics_on_sdp_like_offers(
        lines in proptest::collection::vec(sdp_like_line(), 0..16),
        caps in capabilities(),
    ) {
        if let Ok(sdp) = SessionDescription::parse(&format!("v=0\nc=IN IP4 10.0.0.1\n{}", lines.join("\n"))) {
            let _ = answer(&sdp, &caps, &local(), Direction::SendRecv);
            let _ = accept_answer(&caps, &sdp);
        }
    }

    #[test]
    fn both_ends_agree_on_codec_and_ports(
        offerer_caps in capabilities(),
        answerer_caps in capabilities(),
        offerer in local_media(),
        answerer in local_media(),
        offered_direction in direction(),
    ) {
        let offered = SessionDescription::parse(&offer(&offerer_caps, &offerer, offered_direction)).unwrap();
        let common = offerer_caps.codecs.iter().find(|c| answerer_caps.codecs.contains(c)).copied();
        match answer(&offered, &answerer_caps, &answerer, Direction::SendRecv) {
            Ok(answered) => {
                // The offer's order decides (RFC 3264 s.6.1).
                prop_assert_eq!(Some(answered.audio.codec), common);
                let accepted = accept_answer(
                    &offerer_caps,
                    &SessionDescription::parse(&answered.sdp).unwrap(),
                ).unwrap();
                prop_assert_eq!(accepted.codec, answered.audio.codec);
                prop_assert_eq!(accepted.payload_type, answered.audio.payload_type);
                prop_assert_eq!(accepted.remote_address, answerer.address);
                prop_assert_eq!(accepted.remote_rtp_port, answerer.rtp_port);
                prop_assert_eq!(accepted.remote_rtcp_port, answerer.rtp_port + 1);
                prop_assert_eq!(answered.audio.remote_address, offerer.address);
                prop_assert_eq!(answered.audio.remote_rtp_port, offerer.rtp_port);
                prop_assert_eq!(
                    accepted.telephone_event_payload_type.is_some(),
                    offerer_caps.telephone_event && answerer_caps.telephone_event
                );
                // What one sends the other receives.
                prop_assert_eq!(accepted.direction.sends(), answered.audio.direction.receives());
                prop_assert_eq!(accepted.direction.receives(), answered.audio.direction.sends());
                prop_assert_eq!(accepted.direction, offered_direction.and(accepted.direction));
            }
            Err(Error::NoCommonCodec(_)) => prop_assert_eq!(common, None),
            Err(other) => prop_assert!(false, "{other:?}"),
        }
    }
}

/// Found by `answer_never_panics_and_what_it_writes_parses_with_the_offers_streams`:
/// our answer to an offer whose first audio stream we refused put port 0
/// first, and accept_answer read only that one.
#[test]
fn regression_accept_answer_skips_refused_audio_streams() {
    let offer = "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 9\r\nm=audio 4002 RTP/AVP 8\r\n";
    let answered = answer(
        &SessionDescription::parse(offer).unwrap(),
        &Capabilities::default(),
        &local(),
        Direction::SendRecv,
    )
    .unwrap();
    let agreed = accept_answer(
        &Capabilities::default(),
        &SessionDescription::parse(&answered.sdp).unwrap(),
    )
    .unwrap();
    assert_eq!((agreed.codec, agreed.payload_type), (Codec::Pcma, 8));
    assert_eq!(agreed.remote_rtp_port, 30_000);
}
