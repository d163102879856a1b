//! Black-box tests of the registrar over real sockets on 127.0.0.1.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{config, start, DOMAIN};
use dialtone_sip::auth::digest::{self, Algorithm};
use dialtone_sip::test_ua::{Register, TestResponse, TestUa};

const T: Duration = Duration::from_secs(5);

async fn flow(ua: &mut TestUa, r: &Register) -> (TestResponse, TestResponse) {
    let first = ua.register_once(r).await.unwrap();
    assert_eq!(first.code, 401, "{}", String::from_utf8_lossy(&first.raw));
    let second = ua.answer(r, &first).await.unwrap();
    (first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_over_udp_sha256_and_md5() {
    let (gw, reg, addr) = start(config()).await;
    let mut ua = TestUa::udp(addr).await.unwrap();
    let r = Register::new("alice", DOMAIN)
        .password("alice-pw")
        .contact("sip:alice@192.0.2.1:5090");
    let (first, ok) = flow(&mut ua, &r).await;
    // SHA-256 offered first, then MD5; qop=auth; opaque; realm = domain.
    let ch = first.challenges();
    assert_eq!(ch.len(), 2);
    assert_eq!(ch[0].algorithm, Some(Algorithm::Sha256));
    assert_eq!(ch[1].algorithm, Some(Algorithm::Md5));
    assert_eq!(ch[0].realm, DOMAIN);
    assert_eq!(ch[0].qop.as_deref(), Some("auth"));
    assert!(ch[0].opaque.is_some());
    assert!(!ch[0].stale);
    assert_eq!(ok.code, 200, "{}", String::from_utf8_lossy(&ok.raw));
    assert_eq!(
        ok.contacts(),
        vec![("sip:alice@192.0.2.1:5090".to_owned(), Some(3600))]
    );
    assert!(ok.header("Date").is_some_and(|d| d.ends_with(" GMT")));
    assert!(ok.header("To").unwrap().contains(";tag="));
    assert_eq!(ok.header("Call-ID"), Some(r.call_id.as_str()));
    assert_eq!(ok.header("CSeq"), Some("2 REGISTER"));
    let req = reg.last_request.lock().unwrap().clone().unwrap();
    assert_eq!(req.user, "alice");
    assert_eq!(req.domain, DOMAIN);
    assert_eq!(req.cseq, 2);
    assert_eq!(req.flow.remote, ua.local_addr());
    assert_eq!(req.flow.transport, dialtone_sip::Transport::Udp);
    assert_eq!(req.flow.connection, None);
    assert_eq!(req.user_agent.as_deref(), Some("dialtone-test-ua"));

    let r = Register::new("bob", DOMAIN)
        .password("bob-pw")
        .algorithm(Algorithm::Md5)
        .contact("sip:bob@192.0.2.2");
    let (_, ok) = flow(&mut ua, &r).await;
    assert_eq!(ok.code, 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_over_tcp() {
    let (gw, reg, addr) = start(config()).await;
    let mut ua = TestUa::tcp(addr).await.unwrap();
    for (i, alg) in [Algorithm::Sha256, Algorithm::Md5].into_iter().enumerate() {
        let r = Register::new("alice", DOMAIN)
            .password("alice-pw")
            .algorithm(alg)
            .contact(&format!("sip:alice@192.0.2.1:{}", 5000 + i));
        let (_, ok) = flow(&mut ua, &r).await;
        assert_eq!(ok.code, 200);
        assert_eq!(ok.contacts().len(), i + 1);
    }
    let req = reg.last_request.lock().unwrap().clone().unwrap();
    assert_eq!(req.flow.transport, dialtone_sip::Transport::Tcp);
    let connection = req
        .flow
        .connection
        .expect("a TCP flow names its connection");
    // The connection closing is reported to the backend.
    drop(ua);
    for _ in 0..100 {
        if reg.closed_flows.lock().unwrap().contains(&connection) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(reg.closed_flows.lock().unwrap().contains(&connection));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_not_offered_when_not_allowed() {
    let (gw, _reg, addr) = start(config()).await;
    let mut ua = TestUa::udp(addr).await.unwrap();
    let r = Register::new("sha", DOMAIN).password("sha-pw");
    let first = ua.register_once(&r).await.unwrap();
    let ch = first.challenges();
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0].algorithm, Some(Algorithm::Sha256));
    assert_eq!(ua.answer(&r, &first).await.unwrap().code, 200);
    // An MD5 answer is refused even with the right password.
    let mut md5 = ch[0].clone();
    md5.algorithm = Some(Algorithm::Md5);
    let r2 = r.clone().algorithm(Algorithm::Md5);
    let auth = ua.authorization(&r2, &md5).unwrap();
    let text = ua.register_text(&r2.clone().cseq(9), &TestUa::branch(), Some(&auth));
    ua.send_raw(text.as_bytes()).await.unwrap();
    assert_eq!(ua.expect(T).await.unwrap().code, 403);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_user_look_the_same() {
    let r = Register::new("alice", DOMAIN)
        .password("nope")
        .call_id("same-call-id");
    // Alice exists, wrong password.
    let (gw, _reg, addr) = start(config()).await;
    let mut ua1 = TestUa::udp(addr).await.unwrap();
    let (c1, f1) = flow(&mut ua1, &r).await;
    gw.shutdown().await;
    // The same request to a server where alice does not exist.
    let reg = std::sync::Arc::new(common::FakeBackend::default());
    reg.add_domain(DOMAIN, false);
    let gw = dialtone_sip::Gateway::start(config(), reg.clone())
        .await
        .unwrap();
    let mut ua2 = TestUa::udp(gw.local_addrs()[0]).await.unwrap();
    let (c2, f2) = flow(&mut ua2, &r).await;
    gw.shutdown().await;

    assert_eq!(f1.code, 403);
    assert_eq!(f2.code, 403);
    // Byte-identical apart from nonce, tags and branch (and the UA's port).
    let norm = |r: &TestResponse, ua: &TestUa| {
        r.normalized()
            .replace(&ua.local_addr().port().to_string(), "PORT")
    };
    assert_eq!(norm(&c1, &ua1), norm(&c2, &ua2));
    assert_eq!(norm(&f1, &ua1), norm(&f2, &ua2));
    assert_eq!(reg.register_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_domain_disabled_user_suspended_domain() {
    let (gw, _reg, addr) = start(config()).await;
    let mut ua = TestUa::udp(addr).await.unwrap();
    let r = Register::new("alice", "nowhere.test").password("alice-pw");
    assert_eq!(ua.register_once(&r).await.unwrap().code, 404);
    // Disabled user: wrong password -> 403 like anyone; right one -> 403.
    let r = Register::new("dave", DOMAIN).password("wrong");
    let (_, f) = flow(&mut ua, &r).await;
    assert_eq!(f.code, 403);
    let r = Register::new("dave", DOMAIN).password("dave-pw");
    let (_, f) = flow(&mut ua, &r).await;
    assert_eq!(f.code, 403);
    let r = Register::new("carol", "suspended.test").password("carol-pw");
    assert_eq!(ua.register_once(&r).await.unwrap().code, 403);
    // A Request-URI with the server's IP: the To domain is the realm.
    let text = ua
        .register_text(&Register::new("alice", DOMAIN), &TestUa::branch(), None)
        .replace(
            &format!("REGISTER sip:{DOMAIN} "),
            "REGISTER sip:127.0.0.1 ",
        );
    ua.send_raw(text.as_bytes()).await.unwrap();
    let ch = ua.expect(T).await.unwrap();
    assert_eq!(ch.code, 401);
    assert_eq!(ch.challenges()[0].realm, DOMAIN);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_policy_423_clamp_and_removal() {
    let (gw, reg, addr) = start(config()).await;
    let mut ua = TestUa::udp(addr).await.unwrap();
    let r = Register::new("alice", DOMAIN)
        .password("alice-pw")
        .contact("sip:alice@192.0.2.1")
        .expires(30);
    let (_, f) = flow(&mut ua, &r).await;
    assert_eq!(f.code, 423);
    assert_eq!(f.header("Min-Expires"), Some("60"));

    let r = Register::new("alice", DOMAIN)
        .password("alice-pw")
        .contact("<sip:alice@192.0.2.1>;expires=7200")
        .contact("sip:alice@192.0.2.2")
        .expires(120);
    let (_, f) = flow(&mut ua, &r).await;
    assert_eq!(f.code, 200);
    let mut c = f.contacts();
    c.sort();
    assert_eq!(
        c,
        vec![
            ("sip:alice@192.0.2.1".to_owned(), Some(3600)),
            ("sip:alice@192.0.2.2".to_owned(), Some(120))
        ]
    );

    // Expires: 0 on one contact removes it.
    let r = Register::new("alice", DOMAIN)
        .password("alice-pw")
        .contact("sip:alice@192.0.2.2")
        .expires(0);
    let (_, f) = flow(&mut ua, &r).await;
    assert_eq!(
        f.contacts(),
        vec![("sip:alice@192.0.2.1".to_owned(), Some(3600))]
    );

    // Query: REGISTER without Contact lists the bindings, changes nothing.
    let calls = reg.register_calls.load(Ordering::SeqCst);
    let r = Register::new("alice", DOMAIN)
        .password("alice-pw")
        .no_contact();
    let (_, f) = flow(&mut ua, &r).await;
    assert_eq!(f.code, 200);
    assert_eq!(f.contacts().len(), 1);
    assert_eq!(reg.register_calls.load(Ordering::SeqCst), calls);

    // "*" needs Expires: 0.
    let r = Register::new("alice", DOMAIN)
        .password("alice-pw")
        .contact("*");
    let (_, f) = flow(&mut ua, &r).await;
    assert_eq!(f.code, 400);
    let r = Register::new("alice", DOMAIN)
        .password("alice-pw")
        .contact("*")
        .expires(0);
    let (_, f) = flow(&mut ua, &r).await;
    assert_eq!(f.code, 200);
    assert!(f.contacts().is_empty());
    assert!(
        reg.last_request
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .remove_all
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_nonce_gets_stale_true() {
    let mut cfg = config();
    cfg.nonce_lifetime = Duration::from_millis(300);
    let (gw, _reg, addr) = start(cfg).await;
    let mut ua = TestUa::udp(addr).await.unwrap();
    let r = Register::new("alice", DOMAIN).password("alice-pw");
    let first = ua.register_once(&r).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let again = ua.answer(&r, &first).await.unwrap();
    assert_eq!(again.code, 401);
    assert!(again.challenges().iter().all(|c| c.stale));
    // Answering the new challenge works.
    let ok = ua.answer(&r.clone().cseq(5), &again).await.unwrap();
    assert_eq!(ok.code, 200);
    // A stale nonce with a wrong password is just a wrong password.
    let bad = Register::new("alice", DOMAIN).password("bad");
    let first = ua.register_once(&bad).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(ua.answer(&bad, &first).await.unwrap().code, 403);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_nonce_count_is_refused() {
    let (gw, reg, addr) = start(config()).await;
    let mut ua = TestUa::udp(addr).await.unwrap();
    let r = Register::new("alice", DOMAIN).password("alice-pw");
    let first = ua.register_once(&r).await.unwrap();
    let chs = first.challenges();
    let auth = ua.authorization(&r, &chs[0]).unwrap();
    let send = |cseq: u32| ua.register_text(&r.clone().cseq(cseq), &TestUa::branch(), Some(&auth));
    let t1 = send(2);
    let t2 = send(3);
    ua.send_raw(t1.as_bytes()).await.unwrap();
    assert_eq!(ua.expect(T).await.unwrap().code, 200);
    // Same Authorization (same nc) in a new transaction: a replay.
    ua.send_raw(t2.as_bytes()).await.unwrap();
    let replay = ua.expect(T).await.unwrap();
    assert_eq!(replay.code, 401);
    assert!(replay.challenges()[0].stale);
    assert_eq!(reg.register_calls.load(Ordering::SeqCst), 1);
    // With the nonce reused at a higher nc it is accepted (RFC 7616 s.3.4).
    let auth2 = ua.authorization(&r, &chs[0]).unwrap();
    let t3 = ua.register_text(&r.clone().cseq(4), &TestUa::branch(), Some(&auth2));
    ua.send_raw(t3.as_bytes()).await.unwrap();
    assert_eq!(ua.expect(T).await.unwrap().code, 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retransmission_is_absorbed_and_answered_from_the_transaction() {
    let (gw, reg, addr) = start(config()).await;
    *reg.delay.lock().unwrap() = Duration::from_millis(300);
    let mut ua = TestUa::udp(addr).await.unwrap();
    let r = Register::new("alice", DOMAIN).password("alice-pw");
    let first = ua.register_once(&r).await.unwrap();
    let auth = ua.authorization(&r, &first.challenges()[0]).unwrap();
    let text = ua.register_text(&r.clone().cseq(2), &TestUa::branch(), Some(&auth));
    // Three copies while the backend is busy: one answer.
    for _ in 0..3 {
        ua.send_raw(text.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ok = ua.expect(T).await.unwrap();
    assert_eq!(ok.code, 200);
    assert!(ua.recv(Duration::from_millis(500)).await.unwrap().is_none());
    // A late retransmission gets the very same bytes again.
    ua.send_raw(text.as_bytes()).await.unwrap();
    let again = ua.expect(T).await.unwrap();
    assert_eq!(again.raw, ok.raw);
    assert_eq!(reg.register_calls.load(Ordering::SeqCst), 1);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_headers_multi_contact_ipv6_and_other_digest_uri() {
    let (gw, reg, addr) = start(config()).await;
    let mut ua = TestUa::udp(addr).await.unwrap();
    let local = ua.local_addr();
    let compact = |branch: &str, cseq: u32, auth: Option<&str>| {
        let mut s = format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\nv: SIP/2.0/UDP {local};branch={branch}\r\n\
             f: <sip:alice@{DOMAIN}>;tag=c1\r\nt: <sip:alice@{DOMAIN}>\r\ni: compact-1\r\n\
             CSeq: {cseq} REGISTER\r\n\
             m: <sip:alice@[2001:db8::1]:5070;transport=tcp>;q=0.5, <sip:alice@192.0.2.9>;expires=600\r\n"
        );
        if let Some(a) = auth {
            s.push_str(&format!("Authorization: {a}\r\n"));
        }
        s.push_str("l: 0\r\n\r\n");
        s
    };
    ua.send_raw(compact(&TestUa::branch(), 1, None).as_bytes())
        .await
        .unwrap();
    let first = ua.expect(T).await.unwrap();
    assert_eq!(first.code, 401);
    let ch = &first.challenges()[0];
    // The digest uri is the server's address, not the Request-URI (SIPp).
    let r = Register::new("alice", DOMAIN)
        .password("alice-pw")
        .digest_uri(&format!("sip:{addr}"));
    let auth = ua.authorization(&r, ch).unwrap();
    ua.send_raw(compact(&TestUa::branch(), 2, Some(&auth)).as_bytes())
        .await
        .unwrap();
    let ok = ua.expect(T).await.unwrap();
    assert_eq!(ok.code, 200, "{}", String::from_utf8_lossy(&ok.raw));
    let mut c = ok.contacts();
    c.sort();
    assert_eq!(
        c,
        vec![
            ("sip:alice@192.0.2.9".to_owned(), Some(600)),
            (
                "sip:alice@[2001:db8::1]:5070;transport=tcp".to_owned(),
                Some(3600)
            ),
        ]
    );
    assert!(String::from_utf8_lossy(&ok.raw).contains(";q=0.5"));
    let req = reg.last_request.lock().unwrap().clone().unwrap();
    assert_eq!(req.changes.len(), 2);
    assert_eq!(req.changes[0].q, Some(500));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rport_and_received() {
    let (gw, _reg, addr) = start(config()).await;
    let mut ua = TestUa::udp(addr).await.unwrap();
    let port = ua.local_addr().port();
    // rport requested: filled in, received added, answer to the source.
    let req = format!(
        "OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 10.9.9.9:1234;rport;branch=z9hG4bKr1\r\n\
         From: <sip:a@{DOMAIN}>;tag=1\r\nTo: <sip:{DOMAIN}>\r\nCall-ID: r1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    ua.send_raw(req.as_bytes()).await.unwrap();
    let resp = ua.expect(T).await.unwrap();
    assert_eq!(
        resp.header("Via").unwrap(),
        format!("SIP/2.0/UDP 10.9.9.9:1234;rport={port};branch=z9hG4bKr1;received=127.0.0.1")
    );
    // Without rport, a Via host that differs from the source gets received,
    // and the response goes to the source IP and the Via port.
    let req = format!(
        "OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP host.invalid:{port};branch=z9hG4bKr2\r\n\
         From: <sip:a@{DOMAIN}>;tag=1\r\nTo: <sip:{DOMAIN}>\r\nCall-ID: r2\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    ua.send_raw(req.as_bytes()).await.unwrap();
    let resp = ua.expect(T).await.unwrap();
    assert_eq!(
        resp.header("Via").unwrap(),
        format!("SIP/2.0/UDP host.invalid:{port};branch=z9hG4bKr2;received=127.0.0.1")
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_failures_and_cseq_order() {
    let (gw, reg, addr) = start(config()).await;
    let mut ua = TestUa::udp(addr).await.unwrap();
    let r = Register::new("alice", DOMAIN).password("alice-pw").cseq(10);
    let (_, ok) = flow(&mut ua, &r).await;
    assert_eq!(ok.code, 200);
    // Same Call-ID, older CSeq: refused by the backend -> 500.
    let older = r.clone().cseq(3);
    let (_, f) = flow(&mut ua, &older).await;
    assert_eq!(f.code, 500);
    // Store down: 503 with Retry-After, never 200.
    let first = ua.register_once(&r.clone().cseq(20)).await.unwrap();
    reg.fail.store(true, Ordering::SeqCst);
    let f = ua.answer(&r.clone().cseq(20), &first).await.unwrap();
    assert_eq!(f.code, 503);
    assert!(f.header("Retry-After").is_some());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_and_other_methods() {
    let (gw, _reg, addr) = start(config()).await;
    let mut ua = TestUa::udp(addr).await.unwrap();
    let local = ua.local_addr();
    let req = |m: &str, extra: &str| {
        format!(
            "{m} sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={}\r\nMax-Forwards: 70\r\n\
             From: <sip:a@{DOMAIN}>;tag=1\r\nTo: <sip:{DOMAIN}>\r\nCall-ID: {}\r\nCSeq: 1 {m}\r\n{extra}Content-Length: 0\r\n\r\n",
            TestUa::branch(),
            TestUa::branch()
        )
    };
    ua.send_raw(req("OPTIONS", "").as_bytes()).await.unwrap();
    let r = ua.expect(T).await.unwrap();
    assert_eq!(r.code, 200);
    assert_eq!(
        r.header("Allow"),
        Some("REGISTER, OPTIONS, INVITE, ACK, CANCEL, BYE, SUBSCRIBE")
    );
    assert_eq!(
        r.header("Allow-Events"),
        Some("presence, dialog, message-summary")
    );
    assert!(r.header("Accept").is_some());
    assert!(r.header("Supported").is_some());
    // An INVITE for the domain itself names no one to call; a BYE outside
    // any dialog has no dialog to end (RFC 3261 s.15.1.2).
    for (m, code) in [("INVITE", 404), ("BYE", 481)] {
        ua.send_raw(req(m, "").as_bytes()).await.unwrap();
        assert_eq!(ua.expect(T).await.unwrap().code, code, "{m}");
    }
    // A NOTIFY outside a dialog: we subscribe to no one.
    for (m, code) in [("NOTIFY", 405), ("FOO", 501)] {
        ua.send_raw(req(m, "").as_bytes()).await.unwrap();
        let r = ua.expect(T).await.unwrap();
        assert_eq!(r.code, code, "{m}");
        assert_eq!(
            r.header("Allow"),
            Some("REGISTER, OPTIONS, INVITE, ACK, CANCEL, BYE, SUBSCRIBE")
        );
    }
    // A SUBSCRIBE without an Event header names no package we serve.
    ua.send_raw(req("SUBSCRIBE", "").as_bytes()).await.unwrap();
    let r = ua.expect(T).await.unwrap();
    assert_eq!(r.code, 489);
    assert_eq!(
        r.header("Allow-Events"),
        Some("presence, dialog, message-summary")
    );
    ua.send_raw(req("CANCEL", "").as_bytes()).await.unwrap();
    assert_eq!(ua.expect(T).await.unwrap().code, 481);
    ua.send_raw(
        req("INVITE", "")
            .replace("Max-Forwards: 70", "Max-Forwards: 0")
            .as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(ua.expect(T).await.unwrap().code, 483);
    ua.send_raw(req("OPTIONS", "Require: foo\r\n").as_bytes())
        .await
        .unwrap();
    let r = ua.expect(T).await.unwrap();
    assert_eq!(r.code, 420);
    assert_eq!(r.header("Unsupported"), Some("foo"));
    // ACK never gets a response.
    ua.send_raw(req("ACK", "").as_bytes()).await.unwrap();
    assert!(ua.recv(Duration::from_millis(300)).await.unwrap().is_none());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_framing() {
    let mut cfg = config();
    cfg.max_message_size = 2048;
    let (gw, _reg, addr) = start(cfg).await;
    let opt = |i: u32| {
        format!(
            "OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bKt{i}\r\n\
             From: <sip:a@{DOMAIN}>;tag=1\r\nTo: <sip:{DOMAIN}>\r\nCall-ID: t{i}\r\nCSeq: {i} OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
    };
    // Two messages in one write, with keep-alive CRLFs around them.
    let mut ua = TestUa::tcp(addr).await.unwrap();
    let both = format!("\r\n\r\n{}{}\r\n\r\n", opt(1), opt(2));
    ua.send_raw(both.as_bytes()).await.unwrap();
    let mut cseqs = vec![
        ua.expect(T)
            .await
            .unwrap()
            .header("CSeq")
            .unwrap()
            .to_owned(),
        ua.expect(T)
            .await
            .unwrap()
            .header("CSeq")
            .unwrap()
            .to_owned(),
    ];
    cseqs.sort();
    assert_eq!(cseqs, vec!["1 OPTIONS", "2 OPTIONS"]);
    // One message split over many writes.
    let m = opt(3);
    for chunk in m.as_bytes().chunks(7) {
        ua.send_raw(chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(
        ua.expect(T).await.unwrap().header("CSeq"),
        Some("3 OPTIONS")
    );
    // A body larger than the limit: 513, then the connection is closed.
    let big = format!(
        "{}{}",
        opt(4).replace("Content-Length: 0", "Content-Length: 4000"),
        "x".repeat(4000)
    );
    ua.send_raw(big.as_bytes()).await.unwrap();
    let r = ua.expect(T).await.unwrap();
    assert_eq!(r.code, 513);
    assert!(ua.closed(T).await);
    // Garbage without an end of headers beyond the limit: closed, no answer.
    let mut ua = TestUa::tcp(addr).await.unwrap();
    ua.send_raw(&vec![b'a'; 3000]).await.unwrap();
    assert!(ua.closed(T).await);
    // The server still works.
    let mut ua = TestUa::tcp(addr).await.unwrap();
    ua.send_raw(opt(5).as_bytes()).await.unwrap();
    assert_eq!(ua.expect(T).await.unwrap().code, 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_udp_gets_513() {
    let mut cfg = config();
    cfg.max_message_size = 1000;
    let (gw, _reg, addr) = start(cfg).await;
    let mut ua = TestUa::udp(addr).await.unwrap();
    let local = ua.local_addr();
    let m = format!(
        "OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKbig\r\n\
         From: <sip:a@{DOMAIN}>;tag=1\r\nTo: <sip:{DOMAIN}>\r\nCall-ID: big\r\nCSeq: 1 OPTIONS\r\nX-Pad: {}\r\nContent-Length: 0\r\n\r\n",
        "p".repeat(2000)
    );
    ua.send_raw(m.as_bytes()).await.unwrap();
    assert_eq!(ua.expect(T).await.unwrap().code, 513);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_helpers_match_the_server() {
    // The test UA's digest is the crate's: check a known vector end to end.
    let h = digest::ha1(Algorithm::Md5, "alice", DOMAIN, "alice-pw");
    assert_eq!(h.len(), 32);
}
