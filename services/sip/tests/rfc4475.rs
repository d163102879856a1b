//! RFC 4475 "SIP Torture Test Messages": all 49 messages, sent to a real
//! gateway (with the in-memory registry of `common`, domain `example.test`).
//!
//! The messages are the RFC's own bytes, in `tests/rfc4475/<name>.dat`,
//! decoded from the bit-exact archive of RFC 4475 Appendix A (the gzip CRC
//! of the archive checked; `test.dat` of the archive is described nowhere
//! in the RFC and is left out). Over UDP the only change is the sent-by of
//! the top Via, replaced by the test socket's address: the gateway answers
//! to the Via port (RFC 3261 s.18.2.2), so a response to `192.0.2.2` (port
//! 5060) would never reach the test. Over TCP the bytes are sent unchanged.
//!
//! Every test checks: no panic; the response, if any, is a well-formed SIP
//! response with the expected status (or nothing within a short wait); and
//! the gateway still answers an OPTIONS within 1 s afterwards.
//!
//! The server is a registrar and authenticating proxy for `example.test`;
//! the RFC's domains (`example.com`, ...) are not its own. So a valid
//! REGISTER for `example.com` is 404, a valid INVITE from and to foreign
//! domains is 403 (no relaying), a valid OPTIONS is answered 200 by the
//! server itself (as an endpoint, RFC 3261 s.11).
//!
//! | message    | RFC 4475     | RFC says                                | here (UDP)        | TCP  |
//! |------------|--------------|-----------------------------------------|-------------------|------|
//! | wsinv      | 3.1.1.1      | valid, processed                        | 481 (To tag: re-INVITE of an unknown dialog, RFC 3261 s.12.2.2) | |
//! | intmeth    | 3.1.1.2      | valid; unknown method: 501/404          | 501               | 501  |
//! | esc01      | 3.1.1.3      | valid                                   | 403 (INVITE, foreign domains) | |
//! | escnull    | 3.1.1.4      | valid REGISTER                          | 404 (unknown domain) | |
//! | esc02      | 3.1.1.5      | valid; unknown method: 501              | 501               | 501  |
//! | lwsdisp    | 3.1.1.6      | valid (no LWS before `<`)               | 200 (OPTIONS)     |      |
//! | longreq    | 3.1.1.7      | valid                                   | 403               | 403  |
//! | dblreq     | 3.1.1.8      | REGISTER handled, trailing INVITE ignored | 404, and nothing else |  |
//! | semiuri    | 3.1.1.9      | valid                                   | 200               |      |
//! | transports | 3.1.1.10     | valid                                   | 200               |      |
//! | mpart01    | 3.1.1.11     | valid MESSAGE                           | 405 (MESSAGE not handled) | |
//! | unreason   | 3.1.1.12     | valid response                          | dropped (no transaction) | |
//! | noreason   | 3.1.1.13     | valid response                          | dropped (no transaction) | |
//! | badinv01   | 3.1.2.1      | invalid: 400                            | 400               |      |
//! | clerr      | 3.1.2.2      | UDP: 400; TCP: wait for more            | 400               | nothing (waits) |
//! | ncl        | 3.1.2.3      | error; TCP: close                       | 400               | closed, no response |
//! | scalar02   | 3.1.2.4      | 400 (CSeq)                              | 400               | 400  |
//! | scalarlg   | 3.1.2.5      | response: discarded                     | dropped           |      |
//! | quotbal    | 3.1.2.6      | 400                                     | 400               |      |
//! | ltgtruri   | 3.1.2.7      | 400                                     | 400               |      |
//! | lwsruri    | 3.1.2.8      | 400                                     | 400               |      |
//! | lwsstart   | 3.1.2.9      | may be rejected                         | 400               |      |
//! | trws       | 3.1.2.10     | may be rejected                         | 400               | 400  |
//! | escruri    | 3.1.2.11     | 400 acceptable                          | 400               |      |
//! | baddate    | 3.1.2.12     | may be rejected, "shouldn't" unless the Date matters; may be ignored | 403 (Date ignored, INVITE refused as any) | |
//! | regbadct   | 3.1.2.13     | 400 reasonable, or infer the `<>`      | 404 (unknown domain: refused before the Contact is read) | |
//! | badaspec   | 3.1.2.14     | 400 reasonable, or ignore the spaces    | 200 (spaces ignored; OPTIONS answered by the server) | |
//! | baddn      | 3.1.2.15     | 400                                     | 400               |      |
//! | badvers    | 3.1.2.16     | 505                                     | dropped (its Via `SIP/7.0` cannot address a response) | |
//! | mismatch01 | 3.1.2.17     | 400                                     | 400               |      |
//! | mismatch02 | 3.1.2.18     | 501 (400 acceptable)                    | 400               |      |
//! | bigcode    | 3.1.2.19     | response: dropped                       | dropped           |      |
//! | badbranch  | 3.2.1        | 400, or fall back to RFC 2543 matching  | 200               |      |
//! | insuf      | 3.3.1        | must not break; ideally 400             | dropped (no From/To/Call-ID to answer with) | |
//! | unkscm     | 3.3.2        | 416                                     | 416               | 416  |
//! | novelsc    | 3.3.3        | 416 (or 404)                            | 416               | 416  |
//! | unksm2     | 3.3.4        | registrar: 400                          | 400               |      |
//! | bext01     | 3.3.5        | 420 with Unsupported                    | 420               | 420  |
//! | invut      | 3.3.6        | proxy: as any INVITE                    | 403               |      |
//! | regaut01   | 3.3.7        | registrar: 401 (or as if absent)        | 404 (unknown domain) | 404 |
//! | multi01    | 3.3.8        | 400                                     | 400               |      |
//! | mcl01      | 3.3.9        | error; TCP: close                       | 400               | closed, no response |
//! | bcast      | 3.3.10       | response: dropped                       | dropped           |      |
//! | zeromf     | 3.3.11       | endpoint: processed                     | 200 (OPTIONS to the server) | |
//! | cparam01   | 3.3.12       | REGISTER succeeds                       | 404 (unknown domain) | |
//! | cparam02   | 3.3.13       | REGISTER succeeds                       | 404 (unknown domain) | |
//! | regescrt   | 3.3.14       | REGISTER succeeds                       | 404 (unknown domain) | |
//! | sdp01      | 3.3.15       | 406 or 400                              | 403 (INVITE refused before its Accept matters) | |
//! | inv2543    | 3.4.1        | valid (RFC 2543)                        | 403               |      |

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{config, start, DOMAIN};
use dialtone_sip::test_ua::{TestResponse, TestUa};
use dialtone_sip::wire::message::Message;
use tokio::net::UdpSocket;

/// How long to wait for a response that should come.
const ANSWER: Duration = Duration::from_secs(2);
/// How long to wait to conclude that nothing comes.
const SILENCE: Duration = Duration::from_millis(300);
/// The liveness check after each message.
const ALIVE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Status(u16),
    Dropped,
    /// TCP: no response, and the server closes the connection.
    Closed,
}
use Expect::{Closed, Dropped, Status};

fn load(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/rfc4475/{name}.dat", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `bytes` with the first `host` at or after the first Via header line
/// replaced by `by` (the UDP response has to come back to the test).
fn with_via_host(bytes: &[u8], host: &str, by: &str) -> Vec<u8> {
    let mut at = 0;
    let mut via = None;
    for line in bytes.split(|b| *b == b'\n') {
        let name = line
            .split(|b| *b == b':')
            .next()
            .map(|n| String::from_utf8_lossy(n).trim().to_ascii_lowercase());
        if matches!(name.as_deref(), Some("via" | "v")) {
            via = Some(at);
            break;
        }
        at += line.len() + 1;
    }
    let from = via.expect("a Via header");
    let i = bytes[from..]
        .windows(host.len())
        .position(|w| w == host.as_bytes())
        .map(|i| from + i)
        .unwrap_or_else(|| panic!("{host} not in the Via"));
    let mut out = bytes[..i].to_vec();
    out.extend_from_slice(by.as_bytes());
    out.extend_from_slice(&bytes[i + host.len()..]);
    out
}

/// A well-formed response: parses both as a test response and with the
/// server's own parser, and carries Via, From, To, Call-ID and CSeq.
fn well_formed(raw: &[u8]) -> TestResponse {
    let r = TestResponse::parse(raw)
        .unwrap_or_else(|e| panic!("bad response {e:?}: {}", String::from_utf8_lossy(raw)));
    let m = Message::parse(raw)
        .unwrap_or_else(|e| panic!("bad response {e:?}: {}", String::from_utf8_lossy(raw)));
    assert!(!m.is_request());
    for h in ["Via", "From", "To", "Call-ID", "CSeq"] {
        assert!(
            r.header(h).is_some(),
            "no {h}: {}",
            String::from_utf8_lossy(raw)
        );
    }
    r
}

fn check(name: &str, how: &str, got: Option<TestResponse>, want: Expect) {
    match (got, want) {
        (None, Dropped) => {}
        (Some(r), Status(code)) => assert_eq!(
            r.code,
            code,
            "{name} over {how}: {}",
            String::from_utf8_lossy(&r.raw)
        ),
        (Some(r), Dropped) => panic!(
            "{name} over {how}: expected nothing, got {}",
            String::from_utf8_lossy(&r.raw)
        ),
        (None, Status(code)) => panic!("{name} over {how}: expected {code}, got nothing"),
        (got, Closed) => assert!(got.is_none(), "{name} over {how}: expected nothing"),
    }
}

async fn recv_udp(sock: &UdpSocket, wait: Duration) -> Option<TestResponse> {
    let mut buf = vec![0u8; 65_536];
    match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(well_formed(&buf[..n])),
        Ok(Err(e)) => panic!("recv: {e}"),
        Err(_) => None,
    }
}

/// The server still answers an OPTIONS (over UDP, and over TCP when asked).
async fn assert_alive(addr: SocketAddr, tcp: bool) {
    let opt = |b: &str, local: SocketAddr, t: &str| {
        format!(
            "OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/{t} {local};branch={b}\r\nMax-Forwards: 70\r\n\
             From: <sip:alive@{DOMAIN}>;tag=1\r\nTo: <sip:{DOMAIN}>\r\nCall-ID: {b}\r\n\
             CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let mut ua = TestUa::udp(addr).await.unwrap();
    let local = ua.local_addr();
    ua.send_raw(opt("z9hG4bKalive", local, "UDP").as_bytes())
        .await
        .unwrap();
    let r = ua.expect(ALIVE).await.expect("no answer to OPTIONS (UDP)");
    assert_eq!(r.code, 200);
    if tcp {
        let mut ua = TestUa::tcp(addr).await.unwrap();
        let local = ua.local_addr();
        ua.send_raw(opt("z9hG4bKalivetcp", local, "TCP").as_bytes())
            .await
            .unwrap();
        let r = ua.expect(ALIVE).await.expect("no answer to OPTIONS (TCP)");
        assert_eq!(r.code, 200);
    }
}

/// Sends message `name` over UDP (the top Via's `host` made the test
/// socket's address) and, when `tcp` is given, unchanged over TCP.
async fn run(name: &str, host: &str, udp: Expect, tcp: Option<Expect>) {
    let (gw, _reg, addr) = start(config()).await;
    let bytes = load(name);

    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = sock.local_addr().unwrap().to_string();
    let datagram = with_via_host(&bytes, host, &local);
    sock.send_to(&datagram, addr).await.unwrap();
    let wait = if udp == Dropped { SILENCE } else { ANSWER };
    check(name, "UDP", recv_udp(&sock, wait).await, udp);
    // One datagram, one answer at most (dblreq: the trailing INVITE is noise).
    check(name, "UDP (2nd)", recv_udp(&sock, SILENCE).await, Dropped);

    if let Some(want) = tcp {
        let mut ua = TestUa::tcp(addr).await.unwrap();
        ua.send_raw(&bytes).await.unwrap();
        let wait = if want == Dropped { SILENCE } else { ANSWER };
        let got = match ua.recv(wait).await {
            Ok(r) => r.map(|r| well_formed(&r.raw)),
            Err(e) if want == Closed && e.to_string().contains("closed") => None,
            Err(e) => panic!("{name} over TCP: {e}"),
        };
        check(name, "TCP", got, want);
        if want == Closed {
            assert!(ua.closed(ANSWER).await, "{name} over TCP: not closed");
        }
    }

    assert_alive(addr, tcp.is_some()).await;
    gw.shutdown().await;
}

macro_rules! torture {
    ($($name:ident, $host:literal, $udp:expr, $tcp:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            run(stringify!($name), $host, $udp, $tcp).await;
        }
    )*};
}

torture! {
    // 3.1.1 Valid messages.
    wsinv, "192.0.2.2", Status(481), None;
    intmeth, "host1.example.com", Status(501), Some(Status(501));
    esc01, "host5.example.net", Status(403), None;
    escnull, "host5.example.com", Status(404), None;
    esc02, "host.example.com", Status(501), Some(Status(501));
    lwsdisp, "funky.example.com", Status(200), None;
    longreq, "sip33.example.com", Status(403), Some(Status(403));
    dblreq, "192.0.2.125", Status(404), None;
    semiuri, "192.0.2.1", Status(200), None;
    transports, "t1.example.com", Status(200), None;
    mpart01, "127.0.0.1:5070", Status(405), None;
    unreason, "192.0.2.198", Dropped, None;
    noreason, "192.0.2.105", Dropped, None;
    // 3.1.2 Invalid messages.
    badinv01, "192.0.2.15", Status(400), None;
    clerr, "host5.example.com", Status(400), Some(Dropped);
    ncl, "192.0.2.53", Status(400), Some(Closed);
    scalar02, "host129.example.com", Status(400), Some(Status(400));
    scalarlg, "host129.example.com", Dropped, None;
    quotbal, "192.0.2.59:5050", Status(400), None;
    ltgtruri, "192.0.2.5", Status(400), None;
    lwsruri, "192.0.2.1:5060", Status(400), None;
    lwsstart, "host1.example.com", Status(400), None;
    // The RFC's bytes say `examle.com`.
    trws, "host1.examle.com", Status(400), Some(Status(400));
    escruri, "host-of-the-hour.example.com", Status(400), None;
    baddate, "host.example.com", Status(403), None;
    regbadct, "135.180.130.133:5060", Status(404), None;
    badaspec, "host4.example.com:5060", Status(200), None;
    baddn, "c.example.com:5060", Status(400), None;
    badvers, "c.example.com", Dropped, None;
    mismatch01, "host.example.com", Status(400), None;
    mismatch02, "host.example.net", Status(400), None;
    bigcode, "192.0.2.105", Dropped, None;
    // 3.2 Transaction layer.
    badbranch, "192.0.2.1", Status(200), None;
    // 3.3 Application layer.
    insuf, "192.0.2.95", Dropped, None;
    unkscm, "host9.example.com", Status(416), Some(Status(416));
    novelsc, "host9.example.com", Status(416), Some(Status(416));
    unksm2, "192.0.2.21:5060", Status(400), None;
    bext01, "fold-and-staple.example.com", Status(420), Some(Status(420));
    invut, "somehost.example.com", Status(403), None;
    regaut01, "192.0.2.253", Status(404), Some(Status(404));
    multi01, "192.0.2.25", Status(400), None;
    mcl01, "host5.example.net", Status(400), Some(Closed);
    bcast, "192.0.2.198", Dropped, None;
    zeromf, "host1.example.com", Status(200), None;
    cparam01, "saturn.example.com:5060", Status(404), None;
    cparam02, "saturn.example.com:5060", Status(404), None;
    regescrt, "host5.example.com", Status(404), None;
    sdp01, "192.0.2.15", Status(403), None;
    // 3.4 Backward compatibility.
    inv2543, "iftgw.example.com", Status(403), None;
}

/// Every message of the archive is covered by a test above.
#[test]
fn all_49_messages_are_here() {
    let dir = format!("{}/tests/rfc4475", env!("CARGO_MANIFEST_DIR"));
    let n = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "dat")
        })
        .count();
    assert_eq!(n, 49);
}

/// RFC 4475 s.3.3.5: the 420 lists the required extensions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bext01_lists_the_unsupported_extensions() {
    let (gw, _reg, addr) = start(config()).await;
    let mut ua = TestUa::tcp(addr).await.unwrap();
    ua.send_raw(&load("bext01")).await.unwrap();
    let r = ua.expect(ANSWER).await.unwrap();
    assert_eq!(r.code, 420);
    assert_eq!(
        r.header("Unsupported"),
        Some("nothingSupportsThis, nothingSupportsThisEither")
    );
    gw.shutdown().await;
}
