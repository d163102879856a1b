//! Fuzz target bodies, shared by the cargo-fuzz targets (`fuzz/`, libFuzzer,
//! long runs) and the short stable-toolchain run in the test suite
//! (`tests/fuzz_smoke.rs`), so both exercise exactly the same code.
//!
//! Each function takes arbitrary bytes and must return normally; a panic is
//! a finding. The `assert!`s below are the oracles (a response we write must
//! parse; framing must not depend on how the stream is chunked), so they
//! panic on purpose. Behind the `fuzzing` feature: production builds don't
//! carry this module.

use crate::auth::digest::{parse_params, Challenge, Credentials};
use crate::core::salvage;
use crate::registrar::{plan, ExpiresPolicy};
use crate::transaction::Key;
use crate::wire::frame::{check, Frame};
use crate::wire::message::{Message, Name, NameAddr, Uri};
use crate::wire::response::{Response, Source};

/// The SIP message parser and everything the gateway derives from a parsed
/// request without IO: typed headers, the transaction key, the registrar's
/// plan, a response, and the salvage path for unparsable input.
pub fn message(data: &[u8]) {
    let source = Source {
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], 5060)),
        reliable: false,
    };
    match Message::parse(data) {
        Ok(m) => {
            let _ = m.top_via().map(|v| (v.branch(), v.sent_by()));
            let _ = m.from().map(|f| f.tag());
            let _ = m.to().map(|t| Uri::parse(t.uri));
            let _ = m.cseq();
            let _ = m.call_id();
            let _ = m.max_forwards();
            for c in m.list(Name::Contact) {
                if let Some(n) = NameAddr::parse(c) {
                    let _ = Uri::parse(n.uri);
                    let _ = n.param("expires");
                }
            }
            let _ = plan(&m, &ExpiresPolicy::default());
            let _ = Key::from_request(&m);
            if m.top_via().is_ok() {
                let r = Response::to(&m, &source, 400, "tag").finish();
                // What we send must parse.
                assert!(
                    Message::parse(&r).is_ok(),
                    "{:?}",
                    String::from_utf8_lossy(&r)
                );
            }
        }
        Err(_) => {
            if let Some(m) = salvage(data) {
                let _ = Response::to(&m, &source, 400, "tag").finish();
            }
        }
    }
}

/// The digest header parameter parser (Authorization / WWW-Authenticate)
/// and verification.
pub fn digest(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_params(s);
    let _ = Challenge::parse(s);
    if let Ok(c) = Credentials::parse(s) {
        let _ = c.verify("00112233445566778899aabbccddeeff", "REGISTER");
        let _ = c.verify(
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
            "REGISTER",
        );
    }
}

/// The framer's size limit in [`frame`]: far below the gateway's default
/// (64 KiB) so that fuzzer-sized inputs also reach the too-large path.
const FRAME_MAX: usize = 4096;

/// The TCP framer: the first byte picks a chunk size (1..=256), the rest is
/// the stream. Feeding the stream in those chunks must frame the same
/// messages as feeding it whole, and never index out of bounds.
pub fn frame(data: &[u8]) {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first) + 1;
    let whole = frames(stream, usize::MAX / 2);
    let pieces = frames(stream, chunk);
    // Keep-alive runs may be split differently; compare the messages.
    let msgs = |v: &[Result<Frame, ()>]| {
        v.iter()
            .filter(|f| !matches!(f, Ok(Frame::KeepAlive(_))))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(msgs(&whole), msgs(&pieces));
}

/// What the framer makes of `stream` fed `chunk` bytes at a time; an error
/// ends the stream, as it closes the connection in the gateway.
fn frames(stream: &[u8], chunk: usize) -> Vec<Result<Frame, ()>> {
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    loop {
        match check(&buf, FRAME_MAX) {
            Ok(Some(f)) => {
                let n = match f {
                    Frame::Message(n) | Frame::KeepAlive(n) => n,
                };
                assert!(n > 0 && n <= buf.len());
                out.push(Ok(f));
                buf.drain(..n);
            }
            Ok(None) => {
                if fed >= stream.len() {
                    return out;
                }
                let end = fed.saturating_add(chunk).min(stream.len());
                buf.extend_from_slice(&stream[fed..end]);
                fed = end;
            }
            Err(_) => {
                out.push(Err(()));
                return out;
            }
        }
    }
}

/// The WebSocket deframer's size limit in [`websocket`]: small, so that
/// fuzzer-sized inputs reach the too-big path too.
const WEBSOCKET_MAX: usize = 1024;

/// The WebSocket deframer (RFC 6455, server side): the first byte picks a
/// chunk size (1..=256), the rest is what a client sends. Fed in those
/// chunks it must give the same events and the same error as fed whole,
/// and never panic; a text message is UTF-8, no message is over the limit,
/// no control payload over 125 bytes.
pub fn websocket(data: &[u8]) {
    use crate::wire::websocket::{Deframer, Event};
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first) + 1;
    let feed = |chunk: usize| {
        let mut deframer = Deframer::new(WEBSOCKET_MAX);
        let mut events = Vec::new();
        let mut result = Ok(());
        for piece in stream.chunks(chunk) {
            result = deframer.push(piece, &mut events);
            if result.is_err() {
                break;
            }
        }
        (events, result, deframer)
    };
    let (whole, whole_result, _) = feed(stream.len().max(1));
    let (pieces, pieces_result, _) = feed(chunk);
    assert_eq!(whole, pieces);
    assert_eq!(whole_result, pieces_result);
    for event in &whole {
        match event {
            Event::Text(m) => {
                assert!(std::str::from_utf8(m).is_ok());
                assert!(m.len() <= WEBSOCKET_MAX);
            }
            Event::Binary(m) => assert!(m.len() <= WEBSOCKET_MAX),
            Event::Ping(p) | Event::Pong(p) => assert!(p.len() <= 125),
            Event::Close { .. } => {}
        }
    }
}
