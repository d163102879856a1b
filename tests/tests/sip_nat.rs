//! Phones behind NAT and on connections, black box: a real node process.
//!
//! - a double-CRLF keep-alive on TCP gets a CRLF pong (RFC 5626 s.4.4.1);
//! - a STUN Binding request on the SIP UDP port gets the address it came
//!   from (RFC 5626 s.4.4.2);
//! - a phone registered over TCP with outbound is called on the very
//!   connection it registered on, and closing that connection removes its
//!   binding, as an event;
//! - a phone in a network namespace behind a masquerading router (network
//!   namespaces, veth pairs and nftables, all made and removed by the test)
//!   registers its private address, is called and answers.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use dialtone_sip::test_ua::{Register, TestUa};
use dialtone_sip::transport::stun;
use support::sip::{
    bounded, create_domain, create_user, eventually, registration_events, registrations, Sipp,
    DOMAIN, PASSWORD,
};
use support::TestNode;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const INSTANCE: &str = "<urn:uuid:00000000-0000-4000-8000-00000000a11c>";

/// A node with the users alice and bob in [`DOMAIN`].
async fn node(dir: &std::path::Path, extra: &[&str]) -> TestNode {
    let mut args = vec!["--sip-challenge-md5-first"];
    args.extend_from_slice(extra);
    let node = TestNode::start(dir, &args).await.unwrap();
    create_domain(&node, DOMAIN).await.unwrap();
    for user in ["alice", "bob"] {
        create_user(&node, DOMAIN, user, PASSWORD, 0).await.unwrap();
    }
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crlf_ping_on_tcp_gets_a_crlf_pong() {
    bounded(60, async {
        let dir = tempfile::tempdir().unwrap();
        let node = node(dir.path(), &[]).await;
        let mut tcp = tokio::net::TcpStream::connect(node.sip_addr())
            .await
            .unwrap();
        for ping in [&b"\r\n\r\n"[..], b"\r\n"] {
            tcp.write_all(ping).await.unwrap();
        }
        // The second ping arrives in two pieces.
        tokio::time::sleep(Duration::from_millis(50)).await;
        tcp.write_all(b"\r\n").await.unwrap();
        let mut pongs = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut pongs))
            .await
            .expect("no pong within 5 s")
            .unwrap();
        assert_eq!(&pongs, b"\r\n\r\n", "two pings, two CRLF pongs");
        // Nothing more: a pong per ping, not per line end.
        let mut more = [0u8; 1];
        let extra = tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut more)).await;
        assert!(extra.is_err(), "unexpected bytes after the pongs");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stun_binding_request_on_udp_gets_the_mapped_address() {
    bounded(60, async {
        let dir = tempfile::tempdir().unwrap();
        let node = node(dir.path(), &[]).await;
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let transaction = *b"dialtone-tx1";
        socket
            .send_to(&stun::binding_request(transaction), node.sip_addr())
            .await
            .unwrap();
        let mut buf = [0u8; 1500];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
            .await
            .expect("no STUN response within 5 s")
            .unwrap();
        assert_eq!(from, node.sip_addr());
        assert_eq!(&buf[8..20], &transaction, "the request's transaction id");
        assert_eq!(
            stun::mapped_address(&buf[..n]),
            Some(socket.local_addr().unwrap())
        );
    })
    .await;
}

/// The 200 answering `request` (INVITE or BYE) of a phone.
fn response_to(request: &str, status: &str, extra: &str, body: &str) -> String {
    let mut out = format!("SIP/2.0 {status}\r\n");
    for line in request.split("\r\n").skip(1) {
        if line.is_empty() {
            break;
        }
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match name.as_str() {
            "via" | "v" | "from" | "f" | "call-id" | "i" | "cseq" | "record-route" => {
                out.push_str(line);
                out.push_str("\r\n");
            }
            "to" | "t" => {
                out.push_str(line);
                if !line.contains(";tag=") {
                    out.push_str(";tag=phone");
                }
                out.push_str("\r\n");
            }
            _ => {}
        }
    }
    out.push_str(extra);
    out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    out
}

/// Answers one call on `ua` as a phone whose contact is `contact`: 200 to
/// the INVITE (again to a retransmission), then 200 to the BYE. The
/// methods of the requests it got, in order.
async fn answer_one_call(mut ua: TestUa, contact: String) -> (TestUa, Vec<String>) {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    while tokio::time::Instant::now() < deadline {
        let Ok(Some(raw)) = ua.recv_message(Duration::from_millis(500)).await else {
            continue;
        };
        let text = String::from_utf8_lossy(&raw).into_owned();
        let method = text.split(' ').next().unwrap_or("").to_owned();
        if method == "SIP/2.0" {
            continue;
        }
        seen.push(method.clone());
        match method.as_str() {
            "INVITE" => {
                // Answered as a person would, not within a millisecond: the
                // proxy's 100 Trying must not arrive at the caller after the
                // answer (SIPp counts it as unexpected).
                tokio::time::sleep(Duration::from_millis(300)).await;
                let body = "v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
                            t=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";
                let extra = format!("Contact: <{contact}>\r\nContent-Type: application/sdp\r\n");
                let ok = response_to(&text, "200 OK", &extra, body);
                ua.send_raw(ok.as_bytes()).await.unwrap();
            }
            "BYE" => {
                let ok = response_to(&text, "200 OK", "", "");
                ua.send_raw(ok.as_bytes()).await.unwrap();
                break;
            }
            _ => {}
        }
    }
    seen.dedup();
    (ua, seen)
}

/// bob calls alice (SIPp as the caller); the run must succeed.
async fn bob_calls_alice(node: &TestNode, dir: &std::path::Path) {
    Sipp::new("call_uac.xml", node.sip_addr(), dir)
        .users(&[("bob".into(), PASSWORD.into())])
        .key("callee", "alice")
        .key("callee_domain", DOMAIN)
        .timeout_secs(20)
        .run()
        .await
        .unwrap()
        .assert_all_successful(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_phone_is_called_on_its_connection_and_its_binding_dies_with_it() {
    bounded(120, async {
        let dir = tempfile::tempdir().unwrap();
        let node = node(dir.path(), &[]).await;
        let mut ua = TestUa::tcp(node.sip_addr()).await.unwrap();
        // The contact names an address nothing listens on: the phone is
        // reachable only on its connection.
        let contact = "sip:alice@127.0.0.2:5999;transport=tcp".to_owned();
        let r = Register::new("alice", DOMAIN)
            .password(PASSWORD)
            .header("Supported: outbound, path")
            .contact(&format!(
                "<{contact}>;+sip.instance=\"{INSTANCE}\";reg-id=1"
            ));
        let ok = ua.register(&r).await.unwrap();
        assert_eq!(ok.code, 200, "{}", ok.normalized());
        assert_eq!(ok.header("Require"), Some("outbound"));
        assert_eq!(ok.header("Flow-Timer"), Some("120"));

        let user = format!("alice@{DOMAIN}");
        let status = registrations(&node, &user).await.unwrap();
        let [k] = &status.contacts[..] else {
            panic!("{status:?}")
        };
        assert_eq!(
            (k.transport.as_str(), k.nat, k.reg_id, k.instance.as_str()),
            ("TCP", true, 1, INSTANCE)
        );
        assert_eq!(k.source, ua.local_addr().to_string());
        assert_ne!(k.connection_id, 0, "reached on its connection");
        // What an operator sees.
        let out = node.cli(&["status", &user]).await.unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        for shown in [
            "via TCP".to_owned(),
            format!("from {}", k.source),
            "NAT: yes".to_owned(),
            format!("flow: connection {}", k.connection_id),
            format!("outbound: instance {INSTANCE} reg-id 1"),
        ] {
            assert!(text.contains(&shown), "{shown:?} not in:\n{text}");
        }

        // The INVITE comes on the registration's connection.
        let phone = tokio::spawn(answer_one_call(ua, contact.clone()));
        bob_calls_alice(&node, dir.path()).await;
        let (ua, seen) = phone.await.unwrap();
        assert_eq!(seen, ["INVITE", "ACK", "BYE"]);

        // The phone goes away: its binding goes with its connection.
        drop(ua);
        eventually(Duration::from_secs(10), "the binding to go", || async {
            Ok(registrations(&node, &user)
                .await?
                .contacts
                .is_empty()
                .then_some(()))
        })
        .await
        .unwrap();
        let alice = status.user.clone();
        assert_eq!(alice, user);
        let id = support::sip::online(&node, DOMAIN).await.unwrap();
        assert!(id.iter().all(|u| u.address != user), "alice is offline");
        let uid = node
            .provisioning()
            .await
            .unwrap()
            .get_user(dialtone_api::pb::GetUserRequest { user: user.clone() })
            .await
            .unwrap()
            .into_inner()
            .id;
        let events = registration_events(&node, &uid).await.unwrap();
        assert!(
            events.contains(&format!("ContactRemoved {contact} flow_closed")),
            "{events:#?}"
        );
    })
    .await;
}

// ---------------------------------------------------------------- NAT

/// Runs `ip`/`nft` (etc.) and fails with what it said.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program} {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A phone network behind a masquerading router, removed when dropped
/// (also when the test fails):
///
/// ```text
///  root namespace (node)      router namespace           phone namespace
///  10.x.y.1/30 ──veth── 10.x.y.2/30  NAT  10.x.y.5/30 ──veth── 10.x.y.6/30
/// ```
///
/// The root namespace has no route to the phone's network: only the
/// router's masquerading gets the phone's packets to the node and back.
struct NatLab {
    router: String,
    phone: String,
    root_link: String,
    /// The node's address (root namespace).
    node_ip: Ipv4Addr,
    /// The router's address on the node's side (the phone's public one).
    public_ip: Ipv4Addr,
    /// The phone's private address.
    phone_ip: Ipv4Addr,
}

impl NatLab {
    fn create() -> Result<NatLab, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = (std::process::id() ^ nanos) & 0x3fff;
        let tag = format!("{n:04x}");
        let (a, b) = (200 + (n % 50) as u8, ((n / 50) % 250) as u8);
        let lab = NatLab {
            router: format!("dtnat-{tag}-router"),
            phone: format!("dtnat-{tag}-phone"),
            root_link: format!("dtA{tag}"),
            node_ip: Ipv4Addr::new(10, a, b, 1),
            public_ip: Ipv4Addr::new(10, a, b, 2),
            phone_ip: Ipv4Addr::new(10, a, b, 6),
        };
        // From here on, Drop cleans up whatever was made.
        lab.build(&tag, a, b)?;
        Ok(lab)
    }

    fn build(&self, tag: &str, a: u8, b: u8) -> Result<(), String> {
        let (r, p) = (self.router.as_str(), self.phone.as_str());
        let (la, lb, lc, ld) = (
            self.root_link.clone(),
            format!("dtB{tag}"),
            format!("dtC{tag}"),
            format!("dtD{tag}"),
        );
        let net = |host: u8| format!("10.{a}.{b}.{host}/30");
        run("ip", &["netns", "add", r])?;
        run("ip", &["netns", "add", p])?;
        run(
            "ip",
            &["link", "add", &la, "type", "veth", "peer", "name", &lb],
        )?;
        run("ip", &["link", "set", &lb, "netns", r])?;
        run(
            "ip",
            &["link", "add", &lc, "type", "veth", "peer", "name", &ld],
        )?;
        run("ip", &["link", "set", &lc, "netns", r])?;
        run("ip", &["link", "set", &ld, "netns", p])?;
        run("ip", &["addr", "add", &net(1), "dev", &la])?;
        run("ip", &["link", "set", &la, "up"])?;
        run("ip", &["-n", r, "addr", "add", &net(2), "dev", &lb])?;
        run("ip", &["-n", r, "addr", "add", &net(5), "dev", &lc])?;
        for link in ["lo", lb.as_str(), lc.as_str()] {
            run("ip", &["-n", r, "link", "set", link, "up"])?;
        }
        run("ip", &["-n", p, "addr", "add", &net(6), "dev", &ld])?;
        for link in ["lo", ld.as_str()] {
            run("ip", &["-n", p, "link", "set", link, "up"])?;
        }
        run(
            "ip",
            &[
                "-n",
                p,
                "route",
                "add",
                "default",
                "via",
                &format!("10.{a}.{b}.5"),
            ],
        )?;
        run(
            "ip",
            &["netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
        )?;
        // Masquerade what leaves towards the node: nftables, else iptables.
        let nft = run(
            "ip",
            &["netns", "exec", r, "nft", "add", "table", "ip", "nat"],
        )
        .and_then(|()| {
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    r,
                    "nft",
                    "add",
                    "chain",
                    "ip",
                    "nat",
                    "post",
                    "{ type nat hook postrouting priority 100 ; }",
                ],
            )
        })
        .and_then(|()| {
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    r,
                    "nft",
                    "add",
                    "rule",
                    "ip",
                    "nat",
                    "post",
                    "oifname",
                    &lb,
                    "masquerade",
                ],
            )
        });
        if let Err(nft) = nft {
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    r,
                    "iptables",
                    "-t",
                    "nat",
                    "-A",
                    "POSTROUTING",
                    "-o",
                    &lb,
                    "-j",
                    "MASQUERADE",
                ],
            )
            .map_err(|ipt| format!("no masquerading router: {nft}; {ipt}"))?;
        }
        Ok(())
    }

    /// A UDP socket bound to `addr` in the phone's namespace (setns(2) on a
    /// thread of its own: a socket stays in the namespace it was made in).
    fn phone_socket(&self, port: u16) -> std::io::Result<std::net::UdpSocket> {
        let path = format!("/var/run/netns/{}", self.phone);
        let addr = SocketAddr::from((self.phone_ip, port));
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path)?;
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            std::net::UdpSocket::bind(addr)
        })
        .join()
        .map_err(|_| std::io::Error::other("the setns thread panicked"))?
    }
}

impl Drop for NatLab {
    fn drop(&mut self) {
        // Deleting the namespaces deletes the links in them, and with them
        // their peers; the root end once more in case a namespace was never
        // made.
        let _ = run("ip", &["netns", "del", &self.phone]);
        let _ = run("ip", &["netns", "del", &self.router]);
        let _ = run("ip", &["link", "del", &self.root_link]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_behind_a_masquerading_nat_registers_is_called_and_answers() {
    let lab = NatLab::create().unwrap_or_else(|e| {
        panic!(
            "the NAT test needs network namespaces (run as root with iproute2 and nftables \
             or iptables): {e}"
        )
    });
    bounded(120, async {
        let dir = tempfile::tempdir().unwrap();
        let node_addr = format!("{}:0", lab.node_ip);
        let node = node(dir.path(), &["--sip-addr", &node_addr]).await;

        let socket = lab.phone_socket(5062).unwrap();
        let mut ua = TestUa::udp_from(socket, node.sip_addr()).unwrap();
        // The phone knows only its private address.
        let contact = format!("sip:alice@{}:5062", lab.phone_ip);
        let r = Register::new("alice", DOMAIN)
            .password(PASSWORD)
            .contact(&format!("<{contact}>"));
        let ok = ua.register(&r).await.unwrap();
        assert_eq!(ok.code, 200, "{}", ok.normalized());

        let status = registrations(&node, &format!("alice@{DOMAIN}"))
            .await
            .unwrap();
        let [k] = &status.contacts[..] else {
            panic!("{status:?}")
        };
        assert_eq!(k.uri, contact);
        assert!(k.nat, "a private contact behind NAT: {k:?}");
        assert_eq!(k.transport, "UDP");
        let source: SocketAddr = k.source.parse().unwrap();
        assert_eq!(
            source.ip(),
            lab.public_ip,
            "the REGISTER came through the NAT"
        );
        let out = node
            .cli(&["status", &format!("alice@{DOMAIN}")])
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("via UDP") && text.contains("NAT: yes") && text.contains("flow: udp"),
            "{text}"
        );

        let phone = tokio::spawn(answer_one_call(ua, contact));
        bob_calls_alice(&node, dir.path()).await;
        let (_ua, seen) = phone.await.unwrap();
        assert_eq!(seen, ["INVITE", "ACK", "BYE"]);
    })
    .await;
    drop(lab);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_a_tcp_binding_waits_unreachable_for_the_phone_to_register_again() {
    bounded(120, async {
        let dir = tempfile::tempdir().unwrap();
        let node = node(dir.path(), &[]).await;
        let mut ua = TestUa::tcp(node.sip_addr()).await.unwrap();
        let contact = "sip:alice@127.0.0.2:5999;transport=tcp";
        let r = Register::new("alice", DOMAIN)
            .password(PASSWORD)
            .contact(&format!("<{contact}>"));
        assert_eq!(ua.register(&r).await.unwrap().code, 200);
        // A graceful stop closes the connection, but the phone did not
        // lose its flow: the binding is not removed.
        node.stop().await.unwrap();
        drop(ua);

        let node = TestNode::start(dir.path(), &["--sip-challenge-md5-first"])
            .await
            .unwrap();
        let user = format!("alice@{DOMAIN}");
        let status = registrations(&node, &user).await.unwrap();
        let [k] = &status.contacts[..] else {
            panic!("{status:?}")
        };
        assert_eq!((k.uri.as_str(), k.connection_id), (contact, 0));
        // No connection to call it on: 480, and nothing was sent anywhere.
        let run = Sipp::new("call_uac_fails.xml", node.sip_addr(), dir.path())
            .users(&[("bob".into(), PASSWORD.into())])
            .key("callee", "alice")
            .key("callee_domain", DOMAIN)
            .timeout_secs(20)
            .run()
            .await
            .unwrap();
        run.assert_all_successful(1);
        assert!(
            run.received.iter().any(|m| m.contains("480")),
            "{:#?}",
            run.received
        );
    })
    .await;
}
