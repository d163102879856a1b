//! SIP over TLS and over WebSocket (WS, WSS), black box: a real node with
//! `--sip-tls-addr`, `--sip-ws-addr` and `--sip-wss-addr`, certificates
//! made with rcgen in a temp dir, and independent clients: tokio-rustls
//! for TLS, tokio-tungstenite (subprotocol `sip`) for WebSocket, SIPp on
//! UDP for the other side of calls.
//!
//! What is checked: REGISTER with digest over each transport and the
//! transport recorded in the binding's event; a call from a TLS phone to a
//! UDP phone; a call from a UDP phone to a browser phone registered over
//! WS with an `.invalid` contact, delivered on its connection; a stalled
//! TLS handshake closed after the timeout while others are served; an
//! upgrade without the `sip` subprotocol refused; an oversize WebSocket
//! message closing that connection only (1009); the certificate reloaded
//! on SIGHUP for new connections while an old one keeps working.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf as _, BytesMut};
use dialtone_sip::auth::digest::{self, Algorithm};
use dialtone_sip::test_ua::TestResponse;
use dialtone_sip::wire::frame::{self, Frame};
use futures::{SinkExt as _, StreamExt as _};
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use support::sip::{
    bounded, create_domain, create_user, eventually, stream_events, Sipp, DOMAIN, PASSWORD,
};
use support::TestNode;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const WAIT: Duration = Duration::from_secs(5);

/// Any byte stream a client talks over.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A self-signed certificate for 127.0.0.1 and its key, as PEM files.
struct Cert {
    der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

fn make_cert() -> Cert {
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    Cert {
        der: made.cert.der().clone(),
        cert_pem: made.cert.pem(),
        key_pem: made.signing_key.serialize_pem(),
    }
}

/// A node with TLS, WS and WSS listeners, the domain and alice and bob.
struct Node {
    dir: tempfile::TempDir,
    node: TestNode,
    tls: SocketAddr,
    ws: SocketAddr,
    wss: SocketAddr,
    cert_path: PathBuf,
    key_path: PathBuf,
    /// Trusts every certificate made for this node (the first and any
    /// later one written for a reload).
    roots: rustls::RootCertStore,
    first_cert: CertificateDer<'static>,
    bob_id: String,
    alice_id: String,
}

impl Node {
    async fn start() -> Node {
        Node::start_with(&[]).await
    }

    async fn start_with(extra_args: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let cert = make_cert();
        let cert_path = dir.path().join("sip-cert.pem");
        let key_path = dir.path().join("sip-key.pem");
        std::fs::write(&cert_path, &cert.cert_pem).unwrap();
        std::fs::write(&key_path, &cert.key_pem).unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let mut args = vec![
            // SIPp 3.6 reads only the first challenge.
            "--sip-challenge-md5-first",
            "--sip-tls-addr",
            "127.0.0.1:0",
            "--sip-ws-addr",
            "127.0.0.1:0",
            "--sip-wss-addr",
            "127.0.0.1:0",
            "--sip-tls-cert",
            cert_path.to_str().unwrap(),
            "--sip-tls-key",
            key_path.to_str().unwrap(),
            "--sip-tls-handshake-secs",
            "2",
        ];
        args.extend_from_slice(extra_args);
        let node = TestNode::start(&data, &args).await.unwrap();
        let tls = node
            .ready_addr("sip_tls")
            .expect("sip_tls in the ready line");
        let ws = node.ready_addr("sip_ws").expect("sip_ws in the ready line");
        let wss = node
            .ready_addr("sip_wss")
            .expect("sip_wss in the ready line");
        create_domain(&node, DOMAIN).await.unwrap();
        let alice = create_user(&node, DOMAIN, "alice", PASSWORD, 0)
            .await
            .unwrap();
        let bob = create_user(&node, DOMAIN, "bob", PASSWORD, 0)
            .await
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der.clone()).unwrap();
        Node {
            dir,
            node,
            tls,
            ws,
            wss,
            cert_path,
            key_path,
            roots,
            first_cert: cert.der,
            bob_id: bob.id,
            alice_id: alice.id,
        }
    }

    fn tls_config(&self) -> Arc<rustls::ClientConfig> {
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth(),
        )
    }

    /// A TLS connection to `addr`, and the certificate the node served.
    async fn tls_stream(
        &self,
        addr: SocketAddr,
    ) -> (
        tokio_rustls::client::TlsStream<TcpStream>,
        CertificateDer<'static>,
    ) {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(self.tls_config());
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        let served = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        (tls, served)
    }

    async fn tls_client(&self) -> SipClient {
        let (tls, _) = self.tls_stream(self.tls).await;
        let local = tls.get_ref().0.local_addr().unwrap();
        SipClient {
            wire: Wire::Stream(Box::new(tls), BytesMut::new()),
            transport: "TLS",
            via_host: local.to_string(),
            local,
        }
    }

    async fn ws_client(&self, secure: bool) -> SipClient {
        let (addr, scheme, transport) = if secure {
            (self.wss, "wss", "WSS")
        } else {
            (self.ws, "ws", "WS")
        };
        let tcp = TcpStream::connect(addr).await.unwrap();
        let local = tcp.local_addr().unwrap();
        let io: Box<dyn Io> = if secure {
            let connector = tokio_rustls::TlsConnector::from(self.tls_config());
            let name = ServerName::try_from("127.0.0.1").unwrap();
            Box::new(connector.connect(name, tcp).await.unwrap())
        } else {
            Box::new(tcp)
        };
        let ws = ws_upgrade(
            io,
            &format!("{scheme}://127.0.0.1:{}/", addr.port()),
            Some("sip"),
        )
        .await
        .unwrap();
        SipClient {
            wire: Wire::WebSocket(Box::new(ws)),
            transport,
            // RFC 7118 s.5.2: a browser makes up its Via host.
            via_host: format!("{:012x}.invalid", rand_u64() & 0xffff_ffff_ffff),
            local,
        }
    }

    /// The `transport` of bob's (or alice's) latest registered binding.
    async fn registered_transport(&self, user_id: &str) -> String {
        let events = stream_events(&self.node, &format!("user-{user_id}"))
            .await
            .unwrap();
        let data: Value = events
            .iter()
            .rev()
            .find(|e| e.r#type == "ContactRegistered")
            .map(|e| serde_json::from_str(&e.data_json).unwrap())
            .expect("a ContactRegistered event");
        data["binding"]["transport"].as_str().unwrap().to_owned()
    }

    /// Registers `user` over UDP with SIPp, its contact on 127.0.0.1:port.
    async fn register_udp(&self, user: &str, port: u16) {
        Sipp::new("register_auth.xml", self.node.sip_addr(), self.dir.path())
            .users(&[(user.into(), PASSWORD.into())])
            .key("domain", DOMAIN)
            .key("contact_hostport", &format!("127.0.0.1:{port}"))
            .run()
            .await
            .unwrap()
            .assert_all_successful(1);
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    h.finish()
}

/// The WebSocket upgrade on `io`, offering `subprotocol`.
async fn ws_upgrade(
    io: Box<dyn Io>,
    url: &str,
    subprotocol: Option<&str>,
) -> Result<WebSocketStream<Box<dyn Io>>, tokio_tungstenite::tungstenite::Error> {
    let mut request = url.into_client_request()?;
    if let Some(p) = subprotocol {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", p.parse().unwrap());
    }
    let (ws, response) = tokio_tungstenite::client_async_with_config(request, io, None).await?;
    if subprotocol.is_some() {
        assert_eq!(
            response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some("sip"),
            "the node chose the sip subprotocol"
        );
    }
    Ok(ws)
}

enum Wire {
    /// SIP stream framing (TLS).
    Stream(Box<dyn Io>, BytesMut),
    /// One SIP message per WebSocket message.
    WebSocket(Box<WebSocketStream<Box<dyn Io>>>),
}

/// A SIP phone on one connection.
struct SipClient {
    wire: Wire,
    transport: &'static str,
    via_host: String,
    local: SocketAddr,
}

impl SipClient {
    async fn send(&mut self, text: &str) {
        match &mut self.wire {
            Wire::Stream(io, _) => {
                io.write_all(text.as_bytes()).await.unwrap();
                io.flush().await.unwrap();
            }
            Wire::WebSocket(ws) => ws.send(Message::text(text)).await.unwrap(),
        }
    }

    /// The next SIP message (request or response) as text; `None` when the
    /// connection ends or nothing comes within `timeout`.
    async fn recv(&mut self, timeout: Duration) -> Option<String> {
        let next = async {
            match &mut self.wire {
                Wire::Stream(io, buf) => loop {
                    match frame::check(buf, 1 << 20) {
                        Ok(Some(Frame::KeepAlive(n))) => buf.advance(n),
                        Ok(Some(Frame::Message(n))) => {
                            let m = buf.split_to(n);
                            return Some(String::from_utf8_lossy(&m).into_owned());
                        }
                        Ok(None) => match io.read_buf(buf).await {
                            Ok(0) | Err(_) => return None,
                            Ok(_) => {}
                        },
                        Err(_) => return None,
                    }
                },
                Wire::WebSocket(ws) => loop {
                    match ws.next().await? {
                        Ok(Message::Text(t)) => return Some(t.as_str().to_owned()),
                        Ok(Message::Binary(b)) => {
                            return Some(String::from_utf8_lossy(&b).into_owned())
                        }
                        Ok(Message::Close(_)) | Err(_) => return None,
                        Ok(_) => {}
                    }
                },
            }
        };
        tokio::time::timeout(timeout, next).await.ok().flatten()
    }

    async fn response(&mut self) -> TestResponse {
        loop {
            let text = self.recv(WAIT).await.expect("a response");
            if text.starts_with("SIP/2.0 ") {
                return TestResponse::parse(text.as_bytes()).unwrap();
            }
        }
    }

    /// A final response, skipping provisional ones.
    async fn final_response(&mut self) -> TestResponse {
        loop {
            let r = self.response().await;
            if r.code >= 200 {
                return r;
            }
        }
    }

    fn via(&self, branch: &str) -> String {
        format!(
            "Via: SIP/2.0/{} {};branch={branch}",
            self.transport, self.via_host
        )
    }

    fn contact(&self, user: &str) -> String {
        match self.transport {
            "WS" | "WSS" => format!(
                "<sip:{user}@{};transport={}>",
                self.via_host,
                self.transport.to_ascii_lowercase()
            ),
            _ => format!("<sip:{user}@{};transport=tls>", self.local),
        }
    }

    fn register_text(&self, user: &str, cseq: u32, call_id: &str, auth: Option<&str>) -> String {
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\n{via}\r\nMax-Forwards: 70\r\n\
             From: <sip:{user}@{DOMAIN}>;tag=r{cseq}\r\nTo: <sip:{user}@{DOMAIN}>\r\n\
             Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nContact: {contact}\r\n\
             Expires: 600\r\n{auth}Content-Length: 0\r\n\r\n",
            via = self.via(&branch()),
            contact = self.contact(user),
        )
    }

    /// REGISTER, 401, REGISTER with credentials: the final response.
    async fn register(&mut self, user: &str) -> TestResponse {
        let call_id = format!("{:x}@reg", rand_u64());
        self.send(&self.register_text(user, 1, &call_id, None))
            .await;
        let challenge = self.final_response().await;
        assert_eq!(challenge.code, 401, "{}", text(&challenge));
        let auth = answer(&challenge, user, "REGISTER", &format!("sip:{DOMAIN}"));
        self.send(&self.register_text(user, 2, &call_id, Some(&auth)))
            .await;
        self.final_response().await
    }
}

fn branch() -> String {
    format!("z9hG4bK{:016x}", rand_u64())
}

fn text(r: &TestResponse) -> String {
    String::from_utf8_lossy(&r.raw).into_owned()
}

/// The `Authorization` (or `Proxy-Authorization`) answering `challenge`.
fn answer(challenge: &TestResponse, user: &str, method: &str, uri: &str) -> String {
    let challenges = challenge.challenges();
    let ch = challenges
        .iter()
        .find(|c| c.algorithm == Some(Algorithm::Sha256))
        .or_else(|| challenges.iter().find(|c| c.algorithm.is_some()))
        .expect("a usable challenge");
    digest::authorization(
        ch.algorithm.unwrap(),
        user,
        &ch.realm,
        PASSWORD,
        &ch.nonce,
        ch.opaque.as_deref(),
        method,
        uri,
        1,
        "0a4f113b",
    )
}

/// The header lines of a SIP message named `name` (full name, any case).
fn header_lines<'a>(message: &'a str, name: &str) -> Vec<&'a str> {
    let head = message.split("\r\n\r\n").next().unwrap_or_default();
    head.split("\r\n")
        .skip(1)
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        })
        .collect()
}

fn header_value<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    header_lines(message, name)
        .first()
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim())
}

/// A UAS's response to `request`: its Vias, From, Call-ID, CSeq and
/// Record-Routes copied, the To with `to_tag`, our Contact, and `body`.
fn response_to(
    request: &str,
    code: u16,
    reason: &str,
    to_tag: &str,
    contact: &str,
    body: &str,
) -> String {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for name in ["Via", "Record-Route"] {
        for line in header_lines(request, name) {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    for name in ["From", "Call-ID", "CSeq"] {
        for line in header_lines(request, name) {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    let to = header_value(request, "To").unwrap();
    if to.contains(";tag=") {
        out.push_str(&format!("To: {to}\r\n"));
    } else {
        out.push_str(&format!("To: {to};tag={to_tag}\r\n"));
    }
    out.push_str(&format!("Contact: {contact}\r\n"));
    if !body.is_empty() {
        out.push_str("Content-Type: application/sdp\r\n");
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    out
}

const SDP: &str = "v=0\r\no=ws 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_with_digest_over_tls_ws_and_wss_records_the_transport() {
    bounded(60, async {
        let node = Node::start().await;
        let mut tls = node.tls_client().await;
        let ok = tls.register("alice").await;
        assert_eq!(ok.code, 200, "{}", text(&ok));
        assert_eq!(node.registered_transport(&node.alice_id).await, "TLS");

        for secure in [false, true] {
            let mut ws = node.ws_client(secure).await;
            let ok = ws.register("bob").await;
            assert_eq!(ok.code, 200, "{}", text(&ok));
            let expected = if secure { "WSS" } else { "WS" };
            eventually(WAIT, "the binding's transport", || async {
                Ok((node.registered_transport(&node.bob_id).await == expected).then_some(()))
            })
            .await
            .unwrap();
            // The node answers pings (and stays open) between messages.
            if let Wire::WebSocket(w) = &mut ws.wire {
                w.send(Message::Ping("are you there".into())).await.unwrap();
                let pong = tokio::time::timeout(WAIT, w.next()).await.unwrap();
                assert!(
                    matches!(pong, Some(Ok(Message::Pong(ref p))) if &p[..] == b"are you there"),
                    "{pong:?}"
                );
            }
        }
        // The TLS connection is still served after the others came.
        let again = tls.register("alice").await;
        assert_eq!(again.code, 200);

        // The test UA (and so dialtone-load) over TLS, trusting the node's
        // certificate file.
        let ca = std::fs::read(&node.cert_path).unwrap();
        let mut ua = dialtone_sip::test_ua::TestUa::tls(node.tls, Some(&ca))
            .await
            .unwrap();
        for _ in 0..3 {
            let register = dialtone_sip::test_ua::Register::new("alice", DOMAIN).password(PASSWORD);
            let ok = ua.register(&register).await.unwrap();
            assert_eq!(ok.code, 200, "{}", text(&ok));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_phone_calls_a_udp_phone() {
    bounded(90, async {
        let node = Node::start().await;
        let alice = node.tls_client().await;
        call_udp_bob(&node, alice).await;
    })
    .await;
}

/// A browser phone as the caller: its BYE is forwarded without state and
/// the callee's 200 is relayed by its Via, whose host is `.invalid` and
/// which asked for no `rport`: the connection is found all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_phone_over_wss_calls_a_udp_phone() {
    bounded(90, async {
        let node = Node::start().await;
        let alice = node.ws_client(true).await;
        call_udp_bob(&node, alice).await;
    })
    .await;
}

/// `alice` calls bob, a SIPp UAS on UDP, and hangs up.
async fn call_udp_bob(node: &Node, mut alice: SipClient) {
    {
        // bob: a SIPp UAS on UDP, registered over UDP.
        let mut uas = Sipp::new("call_uas.xml", node.node.sip_addr(), node.dir.path())
            .users(&[("bob".into(), PASSWORD.into())])
            .timeout_secs(20)
            .start()
            .await
            .unwrap();
        assert!(uas.is_running(), "SIPp UAS exited before it listened");
        node.register_udp("bob", uas.port()).await;
        let uas = tokio::spawn(uas.finish());

        let call_id = format!("{:x}@tls-call", rand_u64());
        let target = format!("sip:bob@{DOMAIN}");
        let invite = |alice: &SipClient, cseq: u32, branch: &str, auth: Option<&str>| {
            let auth = auth
                .map(|a| format!("Proxy-Authorization: {a}\r\n"))
                .unwrap_or_default();
            format!(
                "INVITE {target} SIP/2.0\r\n{via}\r\nMax-Forwards: 70\r\n\
                 From: <sip:alice@{DOMAIN}>;tag=alice1\r\nTo: <{target}>\r\n\
                 Call-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nContact: {contact}\r\n{auth}\
                 Content-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{SDP}",
                via = alice.via(branch),
                contact = alice.contact("alice"),
                len = SDP.len(),
            )
        };
        let b1 = branch();
        alice.send(&invite(&alice, 1, &b1, None)).await;
        let challenge = alice.final_response().await;
        assert_eq!(challenge.code, 407, "{}", text(&challenge));
        let to_407 = challenge.header("To").unwrap().to_owned();
        alice
            .send(&format!(
                "ACK {target} SIP/2.0\r\n{via}\r\nMax-Forwards: 70\r\n\
                 From: <sip:alice@{DOMAIN}>;tag=alice1\r\nTo: {to_407}\r\n\
                 Call-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
                via = alice.via(&b1),
            ))
            .await;
        let auth = answer(&challenge, "alice", "INVITE", &target);
        alice.send(&invite(&alice, 2, &branch(), Some(&auth))).await;
        let ok = alice.final_response().await;
        assert_eq!(ok.code, 200, "{}", text(&ok));
        let to = ok.header("To").unwrap().to_owned();
        let routes: Vec<String> = ok
            .all("Record-Route")
            .into_iter()
            .map(str::to_owned)
            .collect();
        assert!(!routes.is_empty(), "the proxy records its route");
        let remote_target = ok.contacts()[0].0.clone();
        let in_dialog = |alice: &SipClient, method: &str, cseq: u32| {
            format!(
                "{method} {remote_target} SIP/2.0\r\n{via}\r\nMax-Forwards: 70\r\n\
                 Route: {route}\r\nFrom: <sip:alice@{DOMAIN}>;tag=alice1\r\nTo: {to}\r\n\
                 Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
                via = alice.via(&branch()),
                route = routes.join(", "),
            )
        };
        alice.send(&in_dialog(&alice, "ACK", 2)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        alice.send(&in_dialog(&alice, "BYE", 3)).await;
        let bye_ok = alice.final_response().await;
        assert_eq!(bye_ok.code, 200, "{}", text(&bye_ok));
        assert!(bye_ok.header("CSeq").unwrap().contains("BYE"));

        let run = uas.await.unwrap().unwrap();
        assert!(
            run.exit_code == Some(0) && run.successful == 1,
            "SIPp UAS failed: {:#?}\n{}",
            run.received,
            run.output
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_phone_calls_a_browser_registered_over_websocket() {
    bounded(90, async {
        let node = Node::start().await;
        let mut bob = node.ws_client(false).await;
        let ok = bob.register("bob").await;
        assert_eq!(ok.code, 200, "{}", text(&ok));
        let contact = bob.contact("bob");
        assert!(contact.contains(".invalid;transport=ws"), "{contact}");

        // alice: SIPp on UDP, calls bob and hangs up 200 ms after the ACK.
        let caller = tokio::spawn(
            Sipp::new("call_uac.xml", node.node.sip_addr(), node.dir.path())
                .users(&[("alice".into(), PASSWORD.into())])
                .key("callee", "bob")
                .key("callee_domain", DOMAIN)
                .timeout_secs(20)
                .run(),
        );

        // bob answers on his WebSocket connection: the only way to him.
        let invite = loop {
            let m = bob
                .recv(Duration::from_secs(10))
                .await
                .expect("the INVITE over WS");
            if m.starts_with("INVITE ") {
                break m;
            }
        };
        assert!(
            invite.starts_with("INVITE sip:bob@") && invite.contains(".invalid;transport=ws"),
            "the INVITE goes to the registered contact: {invite}"
        );
        bob.send(&response_to(&invite, 180, "Ringing", "bob1", &contact, ""))
            .await;
        bob.send(&response_to(&invite, 200, "OK", "bob1", &contact, SDP))
            .await;
        let mut saw_ack = false;
        let bye = loop {
            let m = bob
                .recv(Duration::from_secs(10))
                .await
                .expect("ACK and BYE over WS");
            if m.starts_with("ACK ") {
                saw_ack = true;
            } else if m.starts_with("BYE ") {
                break m;
            }
        };
        assert!(saw_ack, "the ACK came before the BYE");
        bob.send(&response_to(&bye, 200, "OK", "bob1", &contact, ""))
            .await;

        let run = caller.await.unwrap().unwrap();
        assert!(
            run.exit_code == Some(0) && run.successful == 1,
            "SIPp UAC failed: {:#?}\n{}",
            run.received,
            run.output
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_handshake_is_closed_while_others_are_served() {
    bounded(60, async {
        let node = Node::start().await;
        // Connects and never says a word; another sends half a ClientHello.
        let mut silent = TcpStream::connect(node.tls).await.unwrap();
        let mut partial = TcpStream::connect(node.tls).await.unwrap();
        partial
            .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .await
            .unwrap();
        let started = std::time::Instant::now();

        let mut tls = node.tls_client().await;
        let ok = tls.register("alice").await;
        assert_eq!(ok.code, 200, "served while others stall");

        for stalled in [&mut silent, &mut partial] {
            let mut buf = [0u8; 64];
            let closed = tokio::time::timeout(Duration::from_secs(6), async {
                loop {
                    match stalled.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            assert!(closed.is_ok(), "a stalled handshake is closed");
        }
        // --sip-tls-handshake-secs 2: not before, and not much after.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(1500), "closed after {took:?}");
        // The node still serves TLS.
        let mut again = node.tls_client().await;
        assert_eq!(again.register("alice").await.code, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_without_sip_are_refused_and_oversize_messages_close_their_connection() {
    bounded(60, async {
        let node = Node::start().await;
        let url = format!("ws://127.0.0.1:{}/", node.ws.port());
        for offered in [None, Some("chat")] {
            let tcp = TcpStream::connect(node.ws).await.unwrap();
            let refused = ws_upgrade(Box::new(tcp), &url, offered).await;
            match refused {
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                    assert_eq!(response.status(), 400);
                    let body =
                        String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                            .into_owned();
                    assert!(body.contains("subprotocol 'sip' required"), "{body}");
                }
                Err(other) => panic!("offering {offered:?}: expected a 400, got {other:?}"),
                Ok(_) => panic!("offering {offered:?}: the upgrade was accepted"),
            }
        }

        let mut bystander = node.ws_client(false).await;
        let mut big = node.ws_client(false).await;
        // 2 fragments of 40,000 bytes: each frame is under the limit
        // (64 KiB, the SIP maximum message size), the message is not.
        let Wire::WebSocket(ws) = &mut big.wire else {
            unreachable!()
        };
        let chunk = vec![b'a'; 40_000];
        ws.send(Message::Frame(WsFrame::message(
            chunk.clone(),
            OpCode::Data(Data::Text),
            false,
        )))
        .await
        .unwrap();
        ws.send(Message::Frame(WsFrame::message(
            chunk,
            OpCode::Data(Data::Continue),
            true,
        )))
        .await
        .unwrap();
        let closing = tokio::time::timeout(WAIT, async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(frame))) => return frame,
                    Some(Ok(_)) => {}
                    other => panic!("expected a close frame, got {other:?}"),
                }
            }
        })
        .await
        .expect("the node closes the oversize connection");
        assert_eq!(closing.map(|f| f.code), Some(CloseCode::Size));

        // Only that connection: the other one still registers.
        let ok = bystander.register("bob").await;
        assert_eq!(ok.code, 200);
    })
    .await;
}

/// The node's own WebSocket framing (RFC 6455) against a real client over
/// WSS: pings answered with their payload, a frame that breaks the
/// protocol closed with 1002, a text message that is not UTF-8 with 1007,
/// a close answered with the same code — each on its own connection only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_are_checked_pings_answered_and_bad_frames_closed_with_their_code() {
    bounded(60, async {
        let node = Node::start().await;
        let mut bystander = node.ws_client(true).await;

        // Ping with a payload: the pong carries it back.
        let mut pinger = node.ws_client(true).await;
        let Wire::WebSocket(ws) = &mut pinger.wire else {
            unreachable!()
        };
        ws.send(Message::Ping(b"keep-alive 1".to_vec().into()))
            .await
            .unwrap();
        let pong = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a pong")
            .unwrap()
            .unwrap();
        assert_eq!(pong, Message::Pong(b"keep-alive 1".to_vec().into()));
        // And the connection still carries SIP afterwards.
        assert_eq!(pinger.register("alice").await.code, 200);

        // Raw frames written under the client's codec: what the node
        // answers is a close with the code.
        let unmasked_text = b"\x81\x05hello".to_vec();
        let reserved_bit = b"\xC1\x80\x01\x02\x03\x04".to_vec();
        // "(" after a 2-byte lead byte: not UTF-8, masked with zeros.
        let bad_utf8 = b"\x81\x82\x00\x00\x00\x00\xC3\x28".to_vec();
        for (raw, code) in [
            (unmasked_text, CloseCode::Protocol),
            (reserved_bit, CloseCode::Protocol),
            (bad_utf8, CloseCode::Invalid),
        ] {
            let mut client = node.ws_client(true).await;
            let Wire::WebSocket(ws) = &mut client.wire else {
                unreachable!()
            };
            ws.get_mut().write_all(&raw).await.unwrap();
            ws.get_mut().flush().await.unwrap();
            let closing = tokio::time::timeout(WAIT, async {
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Close(frame))) => return frame,
                        Some(Ok(_)) => {}
                        other => panic!("expected a close frame, got {other:?}"),
                    }
                }
            })
            .await
            .expect("the node closes the connection");
            assert_eq!(closing.map(|f| f.code), Some(code), "{raw:02x?}");
        }

        // A close from the client: answered with the same code.
        let mut leaving = node.ws_client(false).await;
        let Wire::WebSocket(ws) = &mut leaving.wire else {
            unreachable!()
        };
        ws.send(Message::Close(Some(
            tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Away,
                reason: "bye".into(),
            },
        )))
        .await
        .unwrap();
        let answer = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("the close is answered");
        match answer {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
            other => panic!("expected the close echoed, got {other:?}"),
        }

        assert_eq!(bystander.register("bob").await.code, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_is_reloaded_on_sighup_and_open_connections_stay() {
    bounded(60, async {
        let mut node = Node::start().await;
        let mut old = node.tls_client().await;
        let (_, served) = node.tls_stream(node.tls).await;
        assert_eq!(served, node.first_cert);

        // A bad file first: the node keeps serving the certificate it has.
        std::fs::write(&node.key_path, "not a key").unwrap();
        signal_hup(&node.node);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (_, served) = node.tls_stream(node.tls).await;
        assert_eq!(
            served, node.first_cert,
            "a bad key keeps the old certificate"
        );

        let next = make_cert();
        node.roots.add(next.der.clone()).unwrap();
        write_pair(&node.cert_path, &node.key_path, &next);
        signal_hup(&node.node);
        let new_der = next.der.clone();
        eventually(WAIT, "the new certificate on a new connection", || async {
            let (_, served) = node.tls_stream(node.tls).await;
            Ok((served == new_der).then_some(()))
        })
        .await
        .unwrap();
        // The same on WSS, which shares it.
        let (_, served) = node.tls_stream(node.wss).await;
        assert_eq!(served, new_der);

        // The connection made before the reload is untouched.
        let ok = old.register("alice").await;
        assert_eq!(ok.code, 200);
        assert!(node.node.is_running(), "SIGHUP does not stop the node");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_source_are_limited_over_every_connection_transport() {
    bounded(60, async {
        let node = Node::start_with(&["--sip-max-connections-per-source", "3"]).await;
        let mut tls = node.tls_client().await;
        let mut ws = node.ws_client(false).await;
        // Answered, so admitted (a connect alone may still be in the
        // node's accept queue when the next one comes).
        let mut tcp = dialtone_sip::test_ua::TestUa::tcp(node.node.sip_addr())
            .await
            .unwrap();
        let register = dialtone_sip::test_ua::Register::new("alice", DOMAIN).password(PASSWORD);
        assert_eq!(tcp.register(&register).await.unwrap().code, 200);
        // A fourth connection from 127.0.0.1, whatever its transport, is
        // closed at once, before any handshake.
        for addr in [node.wss, node.tls, node.node.sip_addr()] {
            let mut refused = TcpStream::connect(addr).await.unwrap();
            let mut buf = [0u8; 16];
            let read = tokio::time::timeout(WAIT, refused.read(&mut buf)).await;
            assert!(
                matches!(read, Ok(Ok(0)) | Ok(Err(_))),
                "over the limit on {addr}: {read:?}"
            );
        }
        // The three admitted are served.
        assert_eq!(tls.register("alice").await.code, 200);
        assert_eq!(ws.register("bob").await.code, 200);
        // One closed gives its place back.
        drop(tcp);
        let served = eventually(WAIT, "a place given back", || async {
            let Ok(tcp) = TcpStream::connect(node.tls).await else {
                return Ok(None);
            };
            let connector = tokio_rustls::TlsConnector::from(node.tls_config());
            let name = ServerName::try_from("127.0.0.1").unwrap();
            Ok(connector.connect(name, tcp).await.ok().map(|_| ()))
        })
        .await;
        assert!(served.is_ok());
    })
    .await;
}

fn write_pair(cert_path: &Path, key_path: &Path, cert: &Cert) {
    std::fs::write(cert_path, &cert.cert_pem).unwrap();
    std::fs::write(key_path, &cert.key_pem).unwrap();
}

fn signal_hup(node: &TestNode) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &node.pid().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
