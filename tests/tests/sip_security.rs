//! SIP authentication abuse and floods, against a real node process: a
//! password guesser and an extension scanner are locked out (403) and
//! leave one security event each, a
//! locked-out source learns nothing new, and one flooding address does not
//! stop another address from registering.

mod support;

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dialtone_sip::test_ua::{Register, TestResponse, TestUa};
use support::sip::{
    bounded, create_domain, create_user, create_users, eventually, sipp_dir, spawn_sipp,
    with_password, Sipp, DOMAIN, PASSWORD,
};
use support::{read_all, TestNode};

async fn node(args: &[&str]) -> (tempfile::TempDir, TestNode) {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), args).await.unwrap();
    create_domain(&node, DOMAIN).await.unwrap();
    (dir, node)
}

/// The `SourceLockedOut` events of the log, as JSON data, once there are at
/// least `at_least` (they are appended right after the 403).
async fn lockouts(node: &TestNode, at_least: usize) -> Vec<serde_json::Value> {
    eventually(Duration::from_secs(5), "lock-out events", || async {
        let events = lockout_events(node).await;
        Ok((events.len() >= at_least).then_some(events))
    })
    .await
    .unwrap();
    // Give a duplicate a moment to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    lockout_events(node).await
}

async fn lockout_events(node: &TestNode) -> Vec<serde_json::Value> {
    read_all(node)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.r#type == "SourceLockedOut")
        .map(|e| {
            assert_eq!(e.category, "security");
            serde_json::from_str(&e.data_json).unwrap()
        })
        .collect()
}

/// A response with what differs between two otherwise equal answers
/// (tags, nonce, opaque, branch, Call-ID, Date) blanked out.
fn comparable(r: &TestResponse) -> String {
    let mut out = format!("{}\n", r.code);
    let mut names: Vec<String> = r
        .normalized()
        .lines()
        .map(|l| l.split(':').next().unwrap_or_default().to_owned())
        .collect();
    names.sort();
    out.push_str(&names.join(","));
    for ch in r.challenges() {
        out.push_str(&format!("\n{:?} {:?}", ch.algorithm, ch.realm));
    }
    out
}

/// A counter's value from the node's Prometheus endpoint.
async fn scrape_counter(addr: &str, series: &str) -> f64 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_password_guesser_is_locked_out_long_before_100_guesses() {
    bounded(60, async {
        let (_dir, node) = node(&[]).await;
        create_user(&node, DOMAIN, "alice", PASSWORD, 0)
            .await
            .unwrap();
        create_user(&node, DOMAIN, "bob", PASSWORD, 0)
            .await
            .unwrap();
        let mut ua = TestUa::udp(node.sip_addr()).await.unwrap();
        let mut codes = Vec::new();
        for i in 0..100 {
            let guess = Register::new("alice", DOMAIN).password(&format!("guess{i:03}"));
            codes.push(ua.register(&guess).await.unwrap().code);
        }
        assert!(codes.iter().all(|c| *c == 403), "{codes:?}");
        // The right password from the same address: still refused.
        let right = Register::new("alice", DOMAIN).password(PASSWORD);
        assert_eq!(ua.register(&right).await.unwrap().code, 403);
        // Refused without even a challenge: the guesser gets no nonce.
        assert_eq!(ua.register_once(&right).await.unwrap().code, 403);
        // Another user from the same address, and alice from another
        // address, are not affected.
        let bob = Register::new("bob", DOMAIN).password(PASSWORD);
        assert_eq!(ua.register(&bob).await.unwrap().code, 200);
        let mut other = TestUa::tcp(node.sip_addr()).await.unwrap();
        // (Same IP address over TCP: the lock is per address, so alice is
        // refused there too.)
        assert_eq!(other.register(&right).await.unwrap().code, 403);

        // One security event for the whole attack, not one per guess.
        let events = lockouts(&node, 1).await;
        assert_eq!(events.len(), 1, "{events:?}");
        let e = &events[0];
        assert_eq!(e["scope"], "user");
        assert_eq!(e["username"], "alice");
        assert_eq!(e["source"], "127.0.0.1");
        assert_eq!(e["failures"], 5);
        let locked_for = e["locked_until"].as_i64().unwrap() - e["locked_at"].as_i64().unwrap();
        assert_eq!(locked_for, 300_000_000);
        // The operator's view: `dialtone security DOMAIN`.
        let out = node.cli(&["security", DOMAIN, "--json"]).await.unwrap();
        assert!(out.status.success(), "{out:?}");
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let listed = listed.as_array().unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0]["source"], "127.0.0.1");
        assert_eq!(listed[0]["scope"], "user");
        assert_eq!(listed[0]["username"], "alice");
        assert!(listed[0]["locked_until"].as_str().unwrap().ends_with('Z'));
        let human = node.cli(&["security", DOMAIN]).await.unwrap();
        let text = String::from_utf8(human.stdout).unwrap();
        assert!(
            text.contains("127.0.0.1") && text.contains("alice"),
            "{text}"
        );
        node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn the_lockout_ends_after_the_cooling_off() {
    bounded(60, async {
        let (_dir, node) = node(&["--sip-lockout-secs", "2"]).await;
        create_user(&node, DOMAIN, "alice", PASSWORD, 0)
            .await
            .unwrap();
        let mut ua = TestUa::udp(node.sip_addr()).await.unwrap();
        for i in 0..5 {
            let guess = Register::new("alice", DOMAIN).password(&format!("wrong{i}"));
            assert_eq!(ua.register(&guess).await.unwrap().code, 403);
        }
        let right = Register::new("alice", DOMAIN).password(PASSWORD);
        assert_eq!(ua.register(&right).await.unwrap().code, 403);
        tokio::time::sleep(Duration::from_millis(2_200)).await;
        assert_eq!(ua.register(&right).await.unwrap().code, 200);
        node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn an_extension_scanner_learns_nothing_and_is_locked_out() {
    bounded(60, async {
        let (_dir, node) = node(&[]).await;
        create_user(&node, DOMAIN, "1001", PASSWORD, 0)
            .await
            .unwrap();
        let mut ua = TestUa::udp(node.sip_addr()).await.unwrap();
        // The first answers for a known and an unknown extension are the
        // same (apart from tags, nonce and branch), with and without a
        // (wrong) password.
        let known = Register::new("1001", DOMAIN).password("guess");
        let unknown = Register::new("1002", DOMAIN).password("guess");
        let (k1, u1) = (
            ua.register_once(&known).await.unwrap(),
            ua.register_once(&unknown).await.unwrap(),
        );
        assert_eq!(k1.code, 401);
        assert_eq!(comparable(&k1), comparable(&u1));
        let k2 = ua.answer(&known, &k1).await.unwrap();
        let u2 = ua.answer(&unknown, &u1).await.unwrap();
        assert_eq!(k2.code, 403);
        assert_eq!(comparable(&k2), comparable(&u2));

        // A scan over extensions: 20 failures from one address lock the
        // address out for every user.
        let mut last = 0;
        for ext in 2000..2040 {
            let guess = Register::new(&ext.to_string(), DOMAIN).password("1234");
            last = ua.register(&guess).await.unwrap().code;
        }
        assert_eq!(last, 403);
        let right = Register::new("1001", DOMAIN).password(PASSWORD);
        assert_eq!(ua.register(&right).await.unwrap().code, 403);
        let events = lockouts(&node, 1).await;
        assert!(events.iter().any(|e| e["scope"] == "source"), "{events:?}");
        // Bounded: one per lock, not one per guess.
        assert!(events.len() <= 2, "{events:?}");
        node.stop().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn a_flooding_address_does_not_stop_registrations_from_another() {
    bounded(120, async {
        // 500 messages/s per address; the flood sends 5,000 INVITE/s.
        let dir = tempfile::tempdir().unwrap();
        let args = ["--sip-source-rate", "500", "--sip-challenge-md5-first"];
        let (node, metrics) = TestNode::start_with_metrics(dir.path(), &args)
            .await
            .unwrap();
        create_domain(&node, DOMAIN).await.unwrap();
        let names: Vec<String> = (0..200).map(|i| format!("legit{i:03}")).collect();
        create_users(&node, DOMAIN, &names, PASSWORD, 8)
            .await
            .unwrap();

        let work = dir.path().join("flood");
        std::fs::create_dir_all(&work).unwrap();
        let flooder = Ipv4Addr::new(127, 0, 0, 2);
        let target = node.sip_addr().to_string();
        let mut flood = spawn_sipp(&work, flooder, |_| {
            let scenario = sipp_dir().join("flood_invite.xml");
            let mut args: Vec<OsString> =
                vec![target.clone().into(), "-sf".into(), scenario.into()];
            let rest = ["-key", "domain", DOMAIN, "-r", "5000", "-m", "40000"];
            args.extend(rest.map(OsString::from));
            args.extend(["-nostdin", "-timeout", "20s"].map(OsString::from));
            args
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(flood.is_running(), "the flood did not start");

        // Meanwhile 200 registrations from 127.0.0.1 (100/s).
        let credentials = with_password(&names);
        let started = Instant::now();
        let run = Sipp::new("register_auth.xml", node.sip_addr(), dir.path())
            .users(&credentials)
            .rate(100)
            .run()
            .await
            .unwrap();
        let during_flood = flood.is_running();
        flood.kill();
        assert!(during_flood, "the flood ended before the registrations");
        // At least 99% succeed (here: all, no retransmission needed).
        assert!(
            run.successful * 100 >= 99 * 200 && run.failed <= 2,
            "{} of 200 registrations succeeded during the flood ({:?})\n{}",
            run.successful,
            started.elapsed(),
            run.output
        );
        // The flood was real and was cut at the door.
        let dropped = scrape_counter(
            &metrics,
            "dialtone_sip_dropped_total{reason=\"rate_limited\"}",
        )
        .await;
        assert!(
            dropped > 10_000.0,
            "{dropped} messages dropped by the rate limit"
        );
        // And a phone on another address still registers at once.
        let mut ua = TestUa::udp(node.sip_addr()).await.unwrap();
        let r = Register::new("legit000", DOMAIN).password(PASSWORD);
        assert_eq!(ua.register(&r).await.unwrap().code, 200);
        node.stop().await.unwrap();
    })
    .await
}
