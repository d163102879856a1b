//! Browser phones: SIP.js (tests/browser) in headless Chromium, over WSS
//! to a node with the default digest settings. Two browser phones call
//! each other (ICE connected, audio received both ways), a browser phone
//! calls a UDP phone (SIPp), and a UDP phone calls a browser phone. The
//! SIPp side speaks WebRTC SDP (ICE, DTLS-SRTP) but no media: those two
//! calls are signalling only, as media between a browser and a plain RTP
//! phone needs a media relay.
//!
//! Needs Chromium, Node.js and `npm ci` in tests/browser (scripts/test
//! installs them); a missing piece fails the test, saying which.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use dialtone_api::pb::UpdateDomainRequest;
use support::sip::{bounded, create_domain, create_user, stream_events, Sipp, DOMAIN, PASSWORD};
use support::TestNode;

/// How long one browser scenario may take, start-up included.
const SCENARIO: Duration = Duration::from_secs(60);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// A node serving WSS with a self-signed certificate, its domain with the
/// default settings, and users alice, bob and carol.
struct Node {
    dir: tempfile::TempDir,
    node: TestNode,
    wss: std::net::SocketAddr,
    users: Vec<(String, String)>,
}

impl Node {
    async fn start() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        let cert = dir.path().join("sip.pem");
        let key = dir.path().join("sip.key");
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let node = TestNode::start(
            &data,
            &[
                "--sip-wss-addr",
                "127.0.0.1:0",
                "--sip-tls-cert",
                cert.to_str().unwrap(),
                "--sip-tls-key",
                key.to_str().unwrap(),
            ],
        )
        .await
        .unwrap();
        let wss = node
            .ready_addr("sip_wss")
            .expect("the ready line names sip_wss");
        // The domain as an operator creates it: no digest setting given.
        create_domain(&node, DOMAIN).await.unwrap();
        let mut users = Vec::new();
        for name in ["alice", "bob", "carol"] {
            let user = create_user(&node, DOMAIN, name, PASSWORD, 0).await.unwrap();
            users.push((name.to_owned(), user.id));
        }
        Node {
            dir,
            node,
            wss,
            users,
        }
    }

    fn user_id(&self, name: &str) -> &str {
        &self
            .users
            .iter()
            .find(|(n, _)| n == name)
            .expect("a provisioned user")
            .1
    }

    fn phone(name: &str) -> Value {
        json!({ "user": name, "password": PASSWORD })
    }

    fn scenario(&self, scenario: &str, phones: &[&str], target: Option<&str>) -> Value {
        json!({
            "scenario": scenario,
            // An IP address in the URL: Chromium, told to ignore
            // certificate errors, does not care what the certificate names.
            "server": format!("wss://{}", self.wss),
            "domain": DOMAIN,
            "phones": phones.iter().map(|p| Node::phone(p)).collect::<Vec<_>>(),
            "target": target,
            "timeoutMs": 20_000,
        })
    }

    /// Sets the domain's digest algorithms (challenge order).
    async fn set_digest_algorithms(&self, list: &[&str]) {
        self.node
            .provisioning()
            .await
            .unwrap()
            .update_domain(UpdateDomainRequest {
                domain: DOMAIN.into(),
                digest_algorithms: list.iter().map(|a| (*a).to_owned()).collect(),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    /// The types of the events of `user`'s stream in `category`.
    async fn events(&self, user: &str, category: &str) -> Vec<(String, Value)> {
        stream_events(&self.node, &format!("user-{}", self.user_id(user)))
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.category == category)
            .map(|e| {
                let data = serde_json::from_str(&e.data_json).unwrap_or(Value::Null);
                (e.r#type, data)
            })
            .collect()
    }

    /// Waits until `user`'s stream has a call that ended after an answer.
    async fn answered_and_ended(&self, user: &str) {
        support::sip::eventually(
            Duration::from_secs(10),
            "an answered call that ended",
            || async {
                let types: Vec<String> = self
                    .events(user, "call")
                    .await
                    .into_iter()
                    .map(|(t, _)| t)
                    .collect();
                let answered = types.iter().position(|t| t == "CallAnswered");
                let ended = types.iter().position(|t| t == "CallEnded");
                Ok(match (answered, ended) {
                    (Some(a), Some(e)) if a < e => Some(()),
                    _ => None,
                })
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{user}: {e:#}"));
    }
}

/// A run of tests/browser/run.mjs: its milestones are read as they come.
struct BrowserRun {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    seen: Vec<String>,
}

impl BrowserRun {
    async fn spawn(config: &Value) -> BrowserRun {
        let dir = browser_dir();
        assert!(
            dir.join("node_modules/sip.js").is_dir() && dir.join("node_modules/playwright-core").is_dir(),
            "tests/browser has no node_modules: run `npm ci --prefix tests/browser` (scripts/test does)"
        );
        assert!(
            Path::new("/usr/bin/chromium").exists() || std::env::var_os("CHROMIUM").is_some(),
            "no Chromium: install Debian's chromium (scripts/test does) or set CHROMIUM"
        );
        let mut child = Command::new("node")
            .arg(dir.join("run.mjs"))
            .arg(config.to_string())
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("running node (Node.js; scripts/test installs it)");
        let stdout = child.stdout.take().unwrap();
        BrowserRun {
            child,
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
        }
    }

    /// Reads lines until the milestone `name`; fails on the runner's
    /// failure line (printing the phones' logs) or its exit.
    async fn milestone(&mut self, name: &str) -> anyhow::Result<Value> {
        let wait = async {
            while let Some(line) = self.lines.next_line().await? {
                self.seen.push(line.clone());
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if v["milestone"] == name {
                    return Ok(v);
                }
                if v["ok"] == false {
                    bail!(
                        "browser scenario failed: {}\nphones' logs: {:#}",
                        v["error"],
                        v["logs"]
                    );
                }
            }
            bail!("the browser runner exited before {name}")
        };
        tokio::time::timeout(SCENARIO, wait)
            .await
            .with_context(|| format!("no {name} within {SCENARIO:?}; saw {:#?}", self.seen))?
    }

    /// Waits for the runner's verdict.
    async fn finish(mut self) -> anyhow::Result<()> {
        self.milestone("__end__").await.ok();
        let status = bounded(30, self.child.wait()).await?;
        let verdict = self.seen.iter().rev().find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(|v| v.get("ok").is_some())
        });
        match verdict {
            Some(v) if v["ok"] == true && status.success() => Ok(()),
            Some(v) => bail!("browser runner: {v:#}"),
            None => bail!(
                "browser runner exited {status} without a verdict; saw {:#?}",
                self.seen
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browser_phones_call_each_other_with_audio_both_ways() {
    let t = Node::start().await;
    let mut run =
        BrowserRun::spawn(&t.scenario("browser-to-browser", &["alice", "bob"], None)).await;
    run.milestone("registered").await.unwrap();
    run.milestone("registered").await.unwrap();
    run.milestone("established").await.unwrap();
    run.milestone("ice connected").await.unwrap();
    let audio = run.milestone("audio both ways").await.unwrap();
    assert!(audio["caller"].as_u64().unwrap_or(0) > 1000, "{audio}");
    assert!(audio["callee"].as_u64().unwrap_or(0) > 1000, "{audio}");
    run.milestone("ended").await.unwrap();
    run.finish().await.unwrap();

    // The node saw it as any call: both legs answered, then ended.
    t.answered_and_ended("alice").await;
    t.answered_and_ended("bob").await;
    // And recorded where the phones are: over WSS.
    let registered = t.events("bob", "registration").await;
    let (_, first) = registered
        .iter()
        .find(|(ty, _)| ty == "ContactRegistered")
        .expect("bob's registration");
    assert_eq!(first["binding"]["transport"], "WSS", "{first:#}");
    let uri = first["binding"]["uri"].as_str().unwrap_or("");
    assert!(uri.contains(".invalid"), "a browser's contact host: {uri}");
    drop(t.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_phone_calls_a_udp_phone() {
    let t = Node::start().await;
    // carol is a SIPp UAS on UDP, answering with WebRTC SDP.
    let mut uas = Sipp::new("webrtc_uas.xml", t.node.sip_addr(), t.dir.path())
        .users(&[("carol".into(), PASSWORD.into())])
        .timeout_secs(40)
        .start()
        .await
        .unwrap();
    assert!(uas.is_running(), "the SIPp UAS did not start");
    Sipp::new("register_auth.xml", t.node.sip_addr(), t.dir.path())
        .users(&[("carol".into(), PASSWORD.into())])
        .key("domain", DOMAIN)
        .key("contact_hostport", &format!("127.0.0.1:{}", uas.port()))
        .run()
        .await
        .unwrap()
        .assert_all_successful(1);

    let target = format!("sip:carol@{DOMAIN}");
    let mut run = BrowserRun::spawn(&t.scenario("browser-calls", &["alice"], Some(&target))).await;
    run.milestone("registered").await.unwrap();
    run.milestone("established").await.unwrap();
    run.milestone("ended").await.unwrap();
    run.finish().await.unwrap();
    let callee = bounded(30, uas.finish()).await.unwrap();
    assert_eq!(callee.successful, 1, "SIPp UAS: {}", callee.output);
    t.answered_and_ended("alice").await;
    t.answered_and_ended("carol").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_phone_calls_a_browser_phone() {
    let t = Node::start().await;
    let mut run = BrowserRun::spawn(&t.scenario("browser-answers", &["bob"], None)).await;
    run.milestone("registered").await.unwrap();
    // alice, a SIPp UAC on UDP with a WebRTC offer, calls the browser.
    let caller = Sipp::new("webrtc_uac.xml", t.node.sip_addr(), t.dir.path())
        .users(&[("alice".into(), PASSWORD.into())])
        .key("callee", "bob")
        .key("callee_domain", DOMAIN)
        .timeout_secs(30)
        .spawn();
    run.milestone("established").await.unwrap();
    run.milestone("ended").await.unwrap();
    run.finish().await.unwrap();
    let caller = caller.await.unwrap().unwrap();
    caller.assert_all_successful(1);
    t.answered_and_ended("alice").await;
    t.answered_and_ended("bob").await;
}

/// The SIP.js row of ADR 0012's client matrix, measured: SIP.js keeps
/// only the last challenge of a 401 (its parser replaces the header), and
/// answers only an MD5 one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_js_registers_when_md5_is_challenged_last() {
    let t = Node::start().await;
    let lists: [&[&str]; 4] = [
        &["MD5"],
        &["SHA-256"],
        &["SHA-256", "MD5"],
        &["MD5", "SHA-256"],
    ];
    let expected = [true, false, true, false];
    let mut measured = [false; 4];
    let mut notes = Vec::new();
    for (column, list) in lists.iter().enumerate() {
        t.set_digest_algorithms(list).await;
        let mut config = t.scenario("register", &["alice"], None);
        // A refused registration shows within a second; do not wait 20.
        config["timeoutMs"] = json!(5_000);
        let mut run = BrowserRun::spawn(&config).await;
        match run.milestone("registered").await {
            Ok(_) => measured[column] = true,
            Err(e) => notes.push(format!("{list:?}: {e:#}")),
        }
        run.finish().await.ok();
    }
    assert_eq!(
        measured,
        expected,
        "SIP.js with the challenge lists {lists:?}\n{}",
        notes.join("\n")
    );
}
