//! Malformed input never panics: it is answered 400 (when a response can be
//! addressed) or dropped, and the server keeps answering afterwards.

mod common;

use std::time::Duration;

use common::{config, start, FakeBackend, DOMAIN};
use dialtone_sip::core::Core;
use dialtone_sip::test_ua::{TestResponse, TestUa};
use dialtone_sip::wire::message::Message;
use dialtone_sip::wire::response::Source;
use dialtone_sip::Transport;
use proptest::prelude::*;
use proptest::strategy::ValueTree as _;

const VALID: &str = "REGISTER sip:example.test SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-77;rport\r\n\
Max-Forwards: 70\r\n\
From: \"Alice\" <sip:alice@example.test>;tag=a1\r\n\
To: <sip:alice@example.test>\r\n\
Call-ID: mut-1@127.0.0.1\r\n\
CSeq: 2 REGISTER\r\n\
Contact: <sip:alice@[2001:db8::1]:5090>;expires=60, <sip:alice@10.0.0.1>;q=0.5\r\n\
Authorization: Digest username=\"alice\",realm=\"example.test\",cnonce=\"6b8b4567\",nc=00000001,qop=auth,uri=\"sip:example.test\",nonce=\"00\",response=\"00\",algorithm=SHA-256\r\n\
Expires: 3600\r\n\
Content-Length: 0\r\n\r\n";

/// Status codes the gateway may legitimately send for some input.
const ALLOWED: &[u16] = &[
    200, 400, 401, 403, 404, 405, 416, 420, 423, 481, 483, 500, 501, 503, 513,
];

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let special = prop::sample::select(b"<>;:,@[]\"\\ \t\r\n=/0\xff".to_vec());
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), special).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1usize..40).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

fn apply(base: &[u8], ms: &[Mutation]) -> Vec<u8> {
    let mut v = base.to_vec();
    for m in ms {
        if v.is_empty() {
            v.push(b'x');
        }
        let len = v.len();
        match *m {
            Mutation::Flip(i, b) => v[i % len] = b,
            Mutation::Insert(i, b) => v.insert(i % (len + 1), b),
            Mutation::Delete(i) => {
                v.remove(i % len);
            }
            Mutation::Truncate(i) => v.truncate(i % len),
            Mutation::Duplicate(i, n) => {
                let s = i % len;
                let e = (s + n).min(len);
                let chunk = v[s..e].to_vec();
                v.splice(s..s, chunk);
            }
        }
    }
    v
}

fn core() -> Core {
    Core::new(config(), FakeBackend::new())
}

fn check(core: &Core, rt: &tokio::runtime::Runtime, input: &[u8]) -> Result<(), TestCaseError> {
    let src = Source {
        addr: "127.0.0.1:5061".parse().unwrap(),
        reliable: false,
    };
    let reply = rt.block_on(core.handle(input, dialtone_sip::Flow::new(Transport::Udp, src.addr)));
    let parsed = Message::parse(input);
    if let Some(r) = reply {
        let resp = TestResponse::parse(&r.bytes);
        prop_assert!(
            resp.is_ok(),
            "unparsable response {:?}",
            String::from_utf8_lossy(&r.bytes)
        );
        let resp = resp.unwrap();
        prop_assert!(ALLOWED.contains(&resp.code), "code {}", resp.code);
        if parsed.is_err() {
            prop_assert!(resp.code == 400 || resp.code == 513, "code {}", resp.code);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn mutated_registers_are_answered_or_dropped(ms in proptest::collection::vec(mutation(), 1..6)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let core = core();
        let input = apply(VALID.as_bytes(), &ms);
        check(&core, &rt, &input)?;
    }

    #[test]
    fn garbage_is_answered_or_dropped(input in proptest::collection::vec(any::<u8>(), 0..400)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        check(&core(), &rt, &input)?;
    }

    #[test]
    fn sip_like_text_is_answered_or_dropped(input in "(REGISTER|OPTIONS|INVITE|SIP/2.0) [ -~]{0,30}\r\n((Via|v|From|f|To|t|Call-ID|i|CSeq|Contact|m|Expires|l|Content-Length|Authorization): [ -~]{0,60}\r\n){0,8}\r\n") {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        check(&core(), &rt, input.as_bytes())?;
    }
}

/// Truncations of a valid message at every position.
#[test]
fn every_truncation() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let core = core();
    for i in 0..VALID.len() {
        check(&core, &rt, &VALID.as_bytes()[..i]).unwrap();
    }
}

/// A message that is malformed but addressable gets a 400 with the request's
/// Via/From/To/Call-ID/CSeq.
#[test]
fn addressable_garbage_gets_400() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let core = core();
    let src = Source {
        addr: "127.0.0.1:5061".parse().unwrap(),
        reliable: false,
    };
    let mut cases: Vec<Vec<u8>> = [
        VALID.replace("Max-Forwards: 70", "Max-Forwards 70"),
        VALID.replace("Content-Length: 0", "Content-Length: 10"),
        VALID.replace("CSeq: 2 REGISTER", "CSeq: 2 INVITE"),
        VALID.replace("Max-Forwards: 70", "Max-Forwards: lots"),
        VALID.replace("Expires: 3600", "Expires: 3600\r\n: no name"),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    // Invalid UTF-8 in a header.
    let mut utf8 = VALID.as_bytes().to_vec();
    let p = utf8.windows(6).position(|w| w == b"Expire").unwrap();
    utf8[p] = 0xff;
    cases.push(utf8);
    for bytes in cases {
        let r = rt
            .block_on(core.handle(&bytes, dialtone_sip::Flow::new(Transport::Udp, src.addr)))
            .unwrap();
        let resp = TestResponse::parse(&r.bytes).unwrap();
        assert_eq!(resp.code, 400);
        assert_eq!(resp.header("Call-ID"), Some("mut-1@127.0.0.1"));
        assert_eq!(resp.header("CSeq").map(|c| c.starts_with("2 ")), Some(true));
    }
    // Without a Via nothing can be addressed: dropped.
    let no_via = VALID.replace(
        "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-77;rport\r\n",
        "",
    );
    assert!(rt
        .block_on(core.handle(
            no_via.as_bytes(),
            dialtone_sip::Flow::new(Transport::Udp, src.addr)
        ))
        .is_none());
}

/// Over real sockets: 150 mutated messages over UDP and TCP, then the
/// server still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_survives_mutated_input_over_sockets() {
    let (gw, _reg, addr) = start(config()).await;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strat = proptest::collection::vec(mutation(), 1..5);
    let inputs: Vec<Vec<u8>> = (0..150)
        .map(|_| {
            apply(
                VALID.as_bytes(),
                &strat.new_tree(&mut runner).unwrap().current(),
            )
        })
        .collect();
    let mut ua = TestUa::udp(addr).await.unwrap();
    for i in &inputs {
        ua.send_raw(i).await.unwrap();
    }
    for i in inputs.iter().take(50) {
        let mut tcp = TestUa::tcp(addr).await.unwrap();
        tcp.send_raw(i).await.unwrap();
        // Whatever comes back must be a response; then close.
        if let Ok(Some(r)) = tcp.recv(Duration::from_millis(50)).await {
            assert!(ALLOWED.contains(&r.code));
        }
    }
    let opt = |b: &str, local: std::net::SocketAddr| {
        format!(
            "OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={b}\r\nFrom: <sip:a@{DOMAIN}>;tag=1\r\n\
             To: <sip:{DOMAIN}>\r\nCall-ID: {b}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let mut fresh = TestUa::udp(addr).await.unwrap();
    let local = fresh.local_addr();
    fresh
        .send_raw(opt("z9hG4bKafter", local).as_bytes())
        .await
        .unwrap();
    assert_eq!(
        fresh.expect(Duration::from_secs(5)).await.unwrap().code,
        200
    );
    let mut tcp = TestUa::tcp(addr).await.unwrap();
    let local = tcp.local_addr();
    tcp.send_raw(opt("z9hG4bKaftertcp", local).as_bytes())
        .await
        .unwrap();
    assert_eq!(tcp.expect(Duration::from_secs(5)).await.unwrap().code, 200);
    gw.shutdown().await;
}
