//! One simulated phone for the connection and subscription benchmarks
//! (`hold-clients`, `notify-fanout`): a UDP socket of its own or one WSS
//! connection (RFC 7118, subprotocol `sip`), bound to a chosen loopback
//! source address, that sends SIP text, receives SIP messages, answers
//! digest challenges and sends the keep-alives a real phone sends on its
//! transport (ADR 0016):
//!
//! - UDP: a STUN Binding request (RFC 5626 s.4.4.2), answered by the node
//!   with a Binding success response on the SIP port;
//! - WSS: a WebSocket Ping frame, answered by the node's codec with a Pong
//!   (RFC 6455). RFC 7118 gives no CRLF keep-alive inside WebSocket
//!   messages; the node ignores a message of white space without
//!   answering, so a Ping is the keep-alive whose answer proves the whole
//!   path (TCP, TLS, WebSocket) is alive.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use dialtone_sip::auth::digest::{self, Algorithm, Challenge};
use dialtone_sip::transport::stun;
use futures::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The transport of a simulated phone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Udp,
    Wss,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Udp => "UDP",
            Kind::Wss => "WSS",
        }
    }
}

/// The loopback source address of client `i` of `sources`: 127.1.x.y, so
/// that clients are spread over several addresses as phones are over many
/// (the node limits connections and messages per source address).
pub fn source_ip(i: usize, sources: usize) -> IpAddr {
    let s = i % sources.max(1);
    IpAddr::V4(Ipv4Addr::new(127, 1, (s / 250) as u8, (s % 250 + 1) as u8))
}

/// Raises this process's open-file limit to its hard limit (each client
/// is one socket); returns the soft limit in force afterwards.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 0,
    }
}

/// The TLS client configuration trusting the PEM `ca` (none: the system's
/// roots).
pub fn tls_config(ca: Option<&[u8]>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(pem) => {
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
                roots.add(cert.context("a certificate of the CA file")?)?;
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    ))
}

/// A SIP message received, with when this client saw it and, for UDP
/// with kernel timestamps, when the kernel queued it (on loopback: when
/// the node sent it).
#[derive(Debug, Clone)]
pub struct Msg {
    pub text: String,
    pub at: Instant,
    pub wire_at: Option<SystemTime>,
}

impl Msg {
    fn start_line(&self) -> &str {
        self.text.lines().next().unwrap_or_default()
    }

    /// The status code of a response; `None` for a request.
    pub fn code(&self) -> Option<u16> {
        self.start_line()
            .strip_prefix("SIP/2.0 ")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|c| c.parse().ok())
    }

    pub fn is_request(&self, method: &str) -> bool {
        self.start_line()
            .strip_prefix(method)
            .is_some_and(|r| r.starts_with(' '))
    }

    /// Every value of header `name` (full name, case-insensitive; the
    /// node writes full names).
    pub fn headers<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.text
            .split("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .lines()
            .skip(1)
            .filter_map(move |l| {
                let (n, v) = l.split_once(':')?;
                n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
            })
    }

    pub fn header<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.headers(name).next()
    }

    pub fn body(&self) -> &str {
        self.text.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }

    /// The `tag` parameter of header `name` (From, To).
    pub fn tag_of(&self, name: &str) -> Option<String> {
        let v = self.header(name)?;
        let t = v.split(";tag=").nth(1)?;
        Some(t.split(';').next().unwrap_or(t).to_owned())
    }

    /// The digest challenge to answer (the first usable one).
    pub fn challenge(&self) -> Option<Challenge> {
        self.headers("WWW-Authenticate")
            .filter_map(|v| Challenge::parse(v).ok())
            .find(|c| c.algorithm.is_some())
    }

    /// A response to this request with `code`, copying what RFC 3261
    /// s.8.2.6 says a response copies.
    pub fn response(&self, code: u16, reason: &str) -> String {
        let mut r = format!("SIP/2.0 {code} {reason}\r\n");
        for v in self.headers("Via") {
            r.push_str("Via: ");
            r.push_str(v);
            r.push_str("\r\n");
        }
        for h in ["From", "To", "Call-ID", "CSeq"] {
            r.push_str(h);
            r.push_str(": ");
            r.push_str(self.header(h).unwrap_or_default());
            r.push_str("\r\n");
        }
        r.push_str("Content-Length: 0\r\n\r\n");
        r
    }
}

/// What arrived on a phone's transport.
pub enum Incoming {
    Sip(Msg),
    /// The answer to a keep-alive (STUN Binding success, WebSocket Pong,
    /// or a CRLF).
    KeepAliveAnswer,
    /// The connection ended (WSS only): closed, reset, or a protocol error.
    Closed(String),
}

type Wss = WebSocketStream<TlsStream<TcpStream>>;

enum Wire {
    Udp {
        sock: UdpSocket,
        server: SocketAddr,
        buf: Vec<u8>,
        timestamps: bool,
    },
    Wss(Box<Wss>),
}

/// One simulated phone.
pub struct Phone {
    wire: Wire,
    /// The host this phone writes in its Via and Contact: its address on
    /// UDP, a made-up `.invalid` name on WSS (RFC 7118 s.5.2).
    pub via_host: String,
    nc: u32,
}

impl Phone {
    /// A UDP phone on its own socket at `source` (any port).
    /// A phone of `kind` from `source` to `server`: UDP (with kernel
    /// receive timestamps when asked) or WSS (needs `tls`).
    pub async fn connect(
        kind: Kind,
        server: SocketAddr,
        source: IpAddr,
        tls: Option<Arc<rustls::ClientConfig>>,
        kernel_timestamps: bool,
    ) -> anyhow::Result<Phone> {
        match kind {
            Kind::Udp => Phone::udp(server, source, kernel_timestamps).await,
            Kind::Wss => {
                let tls = tls.ok_or_else(|| anyhow::anyhow!("no TLS config"))?;
                Phone::wss(server, source, tls).await
            }
        }
    }

    pub async fn udp(
        server: SocketAddr,
        source: IpAddr,
        kernel_timestamps: bool,
    ) -> anyhow::Result<Phone> {
        let sock = UdpSocket::bind(SocketAddr::new(source, 0))
            .await
            .with_context(|| format!("bind a UDP socket on {source}"))?;
        if kernel_timestamps {
            nix::sys::socket::setsockopt(
                &sock,
                nix::sys::socket::sockopt::ReceiveTimestampns,
                &true,
            )
            .map_err(std::io::Error::from)
            .context("turn on kernel receive timestamps")?;
        }
        let local = sock.local_addr()?;
        Ok(Phone {
            wire: Wire::Udp {
                sock,
                server,
                buf: vec![0; 65_536],
                timestamps: kernel_timestamps,
            },
            via_host: local.to_string(),
            nc: 0,
        })
    }

    /// A WSS phone: TCP from `source`, TLS (the server's IP address must
    /// be in its certificate), the WebSocket upgrade offering `sip`. The
    /// WebSocket codec reads through a small buffer (its default is
    /// 128 KiB per connection, too much for 10,000 of them in one process).
    pub async fn wss(
        server: SocketAddr,
        source: IpAddr,
        tls: Arc<rustls::ClientConfig>,
    ) -> anyhow::Result<Phone> {
        let socket = TcpSocket::new_v4()?;
        socket
            .bind(SocketAddr::new(source, 0))
            .with_context(|| format!("bind a TCP socket on {source}"))?;
        let tcp = socket.connect(server).await.context("TCP connect")?;
        let _ = tcp.set_nodelay(true);
        let name = rustls_pki_types::ServerName::IpAddress(server.ip().into());
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .context("TLS handshake")?;
        let mut request = format!("wss://{server}/").into_client_request()?;
        request
            .headers_mut()
            .insert("sec-websocket-protocol", "sip".parse()?);
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (ws, response) =
            tokio_tungstenite::client_async_with_config(request, tls, Some(config))
                .await
                .context("WebSocket upgrade")?;
        anyhow::ensure!(
            response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                == Some("sip"),
            "the node did not choose the sip subprotocol"
        );
        Ok(Phone {
            wire: Wire::Wss(Box::new(ws)),
            via_host: format!("{:012x}.invalid", rand_u64() & 0xffff_ffff_ffff),
            nc: 0,
        })
    }

    pub fn kind(&self) -> Kind {
        match self.wire {
            Wire::Udp { .. } => Kind::Udp,
            Wire::Wss(_) => Kind::Wss,
        }
    }

    /// The Via line for a new request of ours.
    pub fn via(&self) -> String {
        let rport = if self.kind() == Kind::Udp {
            ";rport"
        } else {
            ""
        };
        format!(
            "Via: SIP/2.0/{} {};branch=z9hG4bK{:016x}{rport}",
            self.kind().as_str(),
            self.via_host,
            rand_u64()
        )
    }

    /// The Contact URI of `user` on this phone.
    pub fn contact_uri(&self, user: &str) -> String {
        match self.kind() {
            Kind::Udp => format!("sip:{user}@{}", self.via_host),
            Kind::Wss => format!("sip:{user}@{};transport=ws", self.via_host),
        }
    }

    pub async fn send(&mut self, text: &str) -> anyhow::Result<()> {
        match &mut self.wire {
            Wire::Udp { sock, server, .. } => {
                sock.send_to(text.as_bytes(), *server).await?;
            }
            Wire::Wss(ws) => ws.send(Message::text(text)).await?,
        }
        Ok(())
    }

    /// Sends the keep-alive of this phone's transport (see the module
    /// comment).
    pub async fn send_keepalive(&mut self) -> anyhow::Result<()> {
        match &mut self.wire {
            Wire::Udp { sock, server, .. } => {
                let request = stun::binding_request(rand::random());
                sock.send_to(&request, *server).await?;
            }
            Wire::Wss(ws) => ws.send(Message::Ping(Vec::new().into())).await?,
        }
        Ok(())
    }

    /// The next thing that arrives (cancel safe: usable in `select!` and
    /// under a timeout).
    pub async fn recv(&mut self) -> Incoming {
        match &mut self.wire {
            Wire::Udp {
                sock,
                buf,
                timestamps,
                ..
            } => loop {
                let received = if *timestamps {
                    use std::os::fd::AsRawFd as _;
                    let fd = sock.as_raw_fd();
                    sock.async_io(tokio::io::Interest::READABLE, || {
                        dialtone_sip::test_ua::recv_timestamped(fd, buf)
                    })
                    .await
                } else {
                    sock.recv_from(buf).await.map(|(n, _)| (n, None))
                };
                let (n, wire_at) = match received {
                    Ok(r) => r,
                    // e.g. ICMP port unreachable reported on a later
                    // receive: not the end of a UDP "connection".
                    Err(_) => continue,
                };
                let data = &buf[..n];
                if stun::mapped_address(data).is_some() || data.iter().all(u8::is_ascii_whitespace)
                {
                    return Incoming::KeepAliveAnswer;
                }
                return Incoming::Sip(Msg {
                    text: String::from_utf8_lossy(data).into_owned(),
                    at: Instant::now(),
                    wire_at,
                });
            },
            Wire::Wss(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        return Incoming::Sip(Msg {
                            text: t.as_str().to_owned(),
                            at: Instant::now(),
                            wire_at: None,
                        })
                    }
                    Some(Ok(Message::Binary(b))) => {
                        return Incoming::Sip(Msg {
                            text: String::from_utf8_lossy(&b).into_owned(),
                            at: Instant::now(),
                            wire_at: None,
                        })
                    }
                    Some(Ok(Message::Pong(_))) => return Incoming::KeepAliveAnswer,
                    Some(Ok(Message::Close(frame))) => {
                        return Incoming::Closed(format!("closed by the node: {frame:?}"))
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Incoming::Closed(e.to_string()),
                    None => return Incoming::Closed("connection ended".to_owned()),
                }
            },
        }
    }

    /// The next response within `timeout`. Requests arriving meanwhile
    /// are handed to `on_request` (which may answer them later);
    /// keep-alive answers are skipped.
    pub async fn response(
        &mut self,
        timeout: Duration,
        on_request: &mut (dyn FnMut(Msg) + Send),
    ) -> anyhow::Result<Msg> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.recv()).await {
                Err(_) => anyhow::bail!("no response within {timeout:?}"),
                Ok(Incoming::Sip(m)) if m.code().is_some() => return Ok(m),
                Ok(Incoming::Sip(m)) => on_request(m),
                Ok(Incoming::KeepAliveAnswer) => {}
                Ok(Incoming::Closed(why)) => anyhow::bail!("connection lost: {why}"),
            }
        }
    }

    /// The final response (provisional ones skipped).
    pub async fn final_response(
        &mut self,
        timeout: Duration,
        on_request: &mut (dyn FnMut(Msg) + Send),
    ) -> anyhow::Result<Msg> {
        loop {
            let r = self.response(timeout, on_request).await?;
            if r.code().is_some_and(|c| c >= 200) {
                return Ok(r);
            }
        }
    }

    /// The `Authorization` value answering `challenge` for `method` on
    /// `uri` (MD5 or SHA-256, whichever the challenge names).
    pub fn authorization(
        &mut self,
        challenge: &Challenge,
        user: &str,
        password: &str,
        method: &str,
        uri: &str,
    ) -> String {
        self.nc += 1;
        digest::authorization(
            challenge.algorithm.unwrap_or(Algorithm::Md5),
            user,
            &challenge.realm,
            password,
            &challenge.nonce,
            challenge.opaque.as_deref(),
            method,
            uri,
            self.nc,
            &format!("{:08x}", rand::random::<u32>()),
        )
    }
}

/// A REGISTER of one phone, as a real phone sends it: one contact on its
/// flow with RFC 5626 outbound (`+sip.instance`, `reg-id=1`, `Supported:
/// outbound`), the same Call-ID for every registration of the phone, CSeq
/// counting up.
pub struct Registration {
    pub user: String,
    pub password: String,
    pub domain: String,
    pub call_id: String,
    pub from_tag: String,
    pub instance: String,
    pub cseq: u32,
}

/// When the REGISTER that carried the credentials was sent and when its
/// final response arrived.
pub struct Registered {
    pub sent: Instant,
    pub sent_system: SystemTime,
    pub answered: Instant,
}

impl Registration {
    pub fn new(user: &str, password: &str, domain: &str) -> Registration {
        Registration {
            user: user.to_owned(),
            password: password.to_owned(),
            domain: domain.to_owned(),
            call_id: format!("{:016x}@dialtone-load", rand_u64()),
            from_tag: format!("{:08x}", rand::random::<u32>()),
            instance: format!(
                "urn:uuid:{}",
                uuid::Uuid::from_u128(u128::from(rand_u64()) << 64 | u128::from(rand_u64()))
            ),
            cseq: 0,
        }
    }

    fn text(&mut self, phone: &Phone, expires: u32, authorization: Option<&str>) -> String {
        self.cseq += 1;
        let auth = authorization
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        format!(
            "REGISTER sip:{domain} SIP/2.0\r\n{via}\r\nMax-Forwards: 70\r\n\
             From: <sip:{user}@{domain}>;tag={tag}\r\nTo: <sip:{user}@{domain}>\r\n\
             Call-ID: {cid}\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <{contact}>;+sip.instance=\"<{instance}>\";reg-id=1;expires={expires}\r\n\
             Supported: outbound, path\r\nExpires: {expires}\r\n{auth}\
             User-Agent: dialtone-load\r\nContent-Length: 0\r\n\r\n",
            domain = self.domain,
            via = phone.via(),
            user = self.user,
            tag = self.from_tag,
            cid = self.call_id,
            cseq = self.cseq,
            contact = phone.contact_uri(&self.user),
            instance = self.instance,
        )
    }

    /// REGISTER → 401 → REGISTER with credentials → 200 (`expires` 0
    /// unregisters). Requests arriving meanwhile go to `on_request`.
    pub async fn run(
        &mut self,
        phone: &mut Phone,
        expires: u32,
        timeout: Duration,
        on_request: &mut (dyn FnMut(Msg) + Send),
    ) -> anyhow::Result<Registered> {
        let first = self.text(phone, expires, None);
        phone.send(&first).await?;
        let challenge = phone.final_response(timeout, on_request).await?;
        anyhow::ensure!(
            challenge.code() == Some(401),
            "REGISTER got {} instead of 401",
            challenge.start_line()
        );
        let ch = challenge
            .challenge()
            .context("no usable digest challenge in the 401")?;
        let uri = format!("sip:{}", self.domain);
        let (user, password) = (self.user.clone(), self.password.clone());
        let auth = phone.authorization(&ch, &user, &password, "REGISTER", &uri);
        let second = self.text(phone, expires, Some(&auth));
        let sent_system = SystemTime::now();
        let sent = Instant::now();
        phone.send(&second).await?;
        let done = phone.final_response(timeout, on_request).await?;
        anyhow::ensure!(
            done.code() == Some(200),
            "authenticated REGISTER got {}",
            done.start_line()
        );
        Ok(Registered {
            sent,
            sent_system,
            answered: done.at,
        })
    }
}

pub fn rand_u64() -> u64 {
    rand::random()
}

/// VmRSS and VmHWM of process `pid`, in KiB (from /proc/PID/status).
pub fn rss_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}
