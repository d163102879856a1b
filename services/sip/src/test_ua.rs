//! A tiny SIP user agent for black-box tests (feature `test-ua`).
//!
//! It sends raw bytes or REGISTERs it builds (with or without digest
//! credentials computed from a password) over real UDP, TCP or TLS, and waits for
//! responses with a timeout.
//!
//! ```no_run
//! # async fn demo(server: std::net::SocketAddr) -> dialtone_sip::Result<()> {
//! use dialtone_sip::test_ua::{TestUa, Register};
//! let mut ua = TestUa::udp(server).await?;
//! let reg = Register::new("alice", "example.test").password("secret").contact("sip:alice@127.0.0.1:5090");
//! let ok = ua.register(&reg).await?; // 401, then 200
//! assert_eq!(ok.code, 200);
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};

use crate::auth::digest::{self, Algorithm, Challenge};
use crate::backend::Transport;
use crate::wire::frame::{self, Frame};
use crate::wire::message::{Message, Name, StartLine};
use crate::{Error, Result};

/// Default wait for a response.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A received response, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResponse {
    pub raw: Vec<u8>,
    pub code: u16,
    pub reason: String,
    /// `(name as written, value)` in order.
    pub headers: Vec<(String, String)>,
}

impl TestResponse {
    pub fn parse(raw: &[u8]) -> Result<TestResponse> {
        let m = Message::parse(raw)?;
        let StartLine::Response { code, reason } = m.start else {
            return Err(Error::Protocol("expected a response".into()));
        };
        Ok(TestResponse {
            raw: raw.to_vec(),
            code,
            reason: reason.to_owned(),
            headers: m
                .headers
                .iter()
                .map(|h| (h.raw_name.to_owned(), h.value.to_string()))
                .collect(),
        })
    }

    /// First value of a header (full or compact name, case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }

    /// Every value of a header, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        let want = Name::from_str_ci(name);
        self.headers
            .iter()
            .filter(|(n, _)| {
                if want == Name::Other {
                    n.eq_ignore_ascii_case(name)
                } else {
                    Name::from_str_ci(n) == want
                }
            })
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The digest challenges, in order.
    pub fn challenges(&self) -> Vec<Challenge> {
        self.all("WWW-Authenticate")
            .into_iter()
            .chain(self.all("Proxy-Authenticate"))
            .filter_map(|v| Challenge::parse(v).ok())
            .collect()
    }

    /// `(uri, expires)` of every Contact (header lists split).
    pub fn contacts(&self) -> Vec<(String, Option<u32>)> {
        self.all("Contact")
            .into_iter()
            .flat_map(crate::wire::message::split_list)
            .filter_map(crate::wire::message::NameAddr::parse)
            .map(|c| {
                let e = c
                    .param("expires")
                    .flatten()
                    .and_then(crate::wire::message::parse_u32);
                (c.uri.to_owned(), e)
            })
            .collect()
    }

    /// The text with the parts that legitimately differ between two
    /// otherwise identical answers blanked out: nonce, To tag, branch.
    pub fn normalized(&self) -> String {
        let text = String::from_utf8_lossy(&self.raw).into_owned();
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        'outer: while !rest.is_empty() {
            for key in ["nonce=\"", ";tag=", "branch="] {
                if let Some(r) = rest.strip_prefix(key) {
                    out.push_str(key);
                    out.push('*');
                    let end = r.find(['"', ';', ',', '\r', ' ']).unwrap_or(r.len());
                    rest = &r[end..];
                    continue 'outer;
                }
            }
            let mut chars = rest.chars();
            if let Some(c) = chars.next() {
                out.push(c);
            }
            rest = chars.as_str();
        }
        out
    }
}

enum Conn {
    Udp(UdpSocket),
    Tcp {
        stream: TcpStream,
        buf: BytesMut,
    },
    /// One TLS connection, reused for every request (as phones do).
    Tls {
        stream: Box<tokio_rustls::client::TlsStream<TcpStream>>,
        buf: BytesMut,
    },
}

/// A test client bound to one server address.
pub struct TestUa {
    conn: Conn,
    server: SocketAddr,
    local: SocketAddr,
    nc: u32,
    /// Reused for every UDP receive.
    rx_buf: Vec<u8>,
    /// Kernel receive timestamps are on (see [`TestUa::kernel_timestamps`]).
    timestamps: bool,
    /// When the last request was handed to the kernel.
    sent_at: Option<SystemTime>,
    /// When the kernel queued the last response for us.
    received_at: Option<SystemTime>,
}

/// A REGISTER to build. Defaults: one Contact at the UA's address, no
/// Expires header, a fresh Call-ID, CSeq 1, SHA-256 when offered.
#[derive(Debug, Clone)]
pub struct Register {
    pub user: String,
    pub domain: String,
    pub password: Option<String>,
    /// Contact header values (e.g. `<sip:a@1.2.3.4>;expires=60` or `*`);
    /// `None`: one contact at the UA's own address; `Some(vec![])`: none.
    pub contacts: Option<Vec<String>>,
    pub expires: Option<u32>,
    pub call_id: String,
    pub cseq: u32,
    /// Preferred algorithm when the challenge offers several.
    pub algorithm: Algorithm,
    /// Digest `uri` (default: the Request-URI `sip:domain`).
    pub digest_uri: Option<String>,
    /// The digest username (default: `user`).
    pub auth_user: Option<String>,
    pub extra_headers: Vec<String>,
}

impl Register {
    pub fn new(user: &str, domain: &str) -> Register {
        Register {
            user: user.to_owned(),
            domain: domain.to_owned(),
            password: None,
            contacts: None,
            expires: None,
            call_id: format!("{:016x}@test-ua", rand::random::<u64>()),
            cseq: 1,
            algorithm: Algorithm::Sha256,
            digest_uri: None,
            auth_user: None,
            extra_headers: Vec::new(),
        }
    }
    pub fn password(mut self, p: &str) -> Self {
        self.password = Some(p.to_owned());
        self
    }
    pub fn contact(mut self, c: &str) -> Self {
        let v = if c == "*" || c.contains('<') {
            c.to_owned()
        } else {
            format!("<{c}>")
        };
        self.contacts.get_or_insert_with(Vec::new).push(v);
        self
    }
    pub fn no_contact(mut self) -> Self {
        self.contacts = Some(Vec::new());
        self
    }
    pub fn expires(mut self, e: u32) -> Self {
        self.expires = Some(e);
        self
    }
    pub fn algorithm(mut self, a: Algorithm) -> Self {
        self.algorithm = a;
        self
    }
    pub fn call_id(mut self, c: &str) -> Self {
        self.call_id = c.to_owned();
        self
    }
    pub fn cseq(mut self, c: u32) -> Self {
        self.cseq = c;
        self
    }
    pub fn digest_uri(mut self, u: &str) -> Self {
        self.digest_uri = Some(u.to_owned());
        self
    }
    pub fn header(mut self, h: &str) -> Self {
        self.extra_headers.push(h.to_owned());
        self
    }
}

impl TestUa {
    /// A UDP client on 127.0.0.1 (or [::1] for an IPv6 server), any port.
    pub async fn udp(server: SocketAddr) -> Result<TestUa> {
        let bind: SocketAddr = if server.is_ipv6() {
            "[::1]:0"
                .parse()
                .map_err(|_| Error::Protocol("addr".into()))?
        } else {
            SocketAddr::from(([127, 0, 0, 1], 0))
        };
        let s = UdpSocket::bind(bind).await?;
        let local = s.local_addr()?;
        Ok(TestUa::new(Conn::Udp(s), server, local))
    }

    /// A TCP client connected to `server`.
    pub async fn tcp(server: SocketAddr) -> Result<TestUa> {
        let stream = TcpStream::connect(server).await?;
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr()?;
        Ok(TestUa::new(
            Conn::Tcp {
                stream,
                buf: BytesMut::new(),
            },
            server,
            local,
        ))
    }

    /// A TLS client connected to `server` (an IP address: its certificate
    /// must name it), trusting the certificates of the PEM `ca` (none: the
    /// system's roots).
    pub async fn tls(server: SocketAddr, ca: Option<&[u8]>) -> Result<TestUa> {
        use rustls_pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(pem) => {
                for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| Error::Protocol(format!("CA: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| Error::Protocol(format!("CA: {e}")))?;
                }
            }
            None => {
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Protocol(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = TcpStream::connect(server).await?;
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr()?;
        let name = rustls_pki_types::ServerName::IpAddress(server.ip().into());
        let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await?;
        Ok(TestUa::new(
            Conn::Tls {
                stream: Box::new(stream),
                buf: BytesMut::new(),
            },
            server,
            local,
        ))
    }

    /// A UDP client on a socket the caller bound (in another network
    /// namespace, say: a phone behind a NAT).
    pub fn udp_from(socket: std::net::UdpSocket, server: SocketAddr) -> Result<TestUa> {
        socket.set_nonblocking(true)?;
        let s = UdpSocket::from_std(socket)?;
        let local = s.local_addr()?;
        Ok(TestUa::new(Conn::Udp(s), server, local))
    }

    /// The next message of any kind, raw: how a test sees the requests the
    /// server sends to this UA (an INVITE on the flow it registered on).
    /// `Ok(None)` on timeout.
    pub async fn recv_message(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>> {
        let next = async {
            match &mut self.conn {
                Conn::Udp(s) => {
                    let mut buf = vec![0u8; 65_536];
                    let n = s.recv_from(&mut buf).await?.0;
                    buf.truncate(n);
                    Ok(buf)
                }
                Conn::Tcp { stream, buf } => loop {
                    match frame::check(buf, 1 << 20) {
                        Ok(Some(Frame::KeepAlive(n))) => buf.advance(n),
                        Ok(Some(Frame::Message(n))) => return Ok(buf.split_to(n).to_vec()),
                        Ok(None) => {
                            if stream.read_buf(buf).await? == 0 {
                                return Err(Error::Protocol("connection closed".into()));
                            }
                        }
                        Err(e) => return Err(Error::Protocol(e.to_string())),
                    }
                },
                Conn::Tls { stream, buf } => loop {
                    match frame::check(buf, 1 << 20) {
                        Ok(Some(Frame::KeepAlive(n))) => buf.advance(n),
                        Ok(Some(Frame::Message(n))) => return Ok(buf.split_to(n).to_vec()),
                        Ok(None) => {
                            if stream.read_buf(buf).await? == 0 {
                                return Err(Error::Protocol("connection closed".into()));
                            }
                        }
                        Err(e) => return Err(Error::Protocol(e.to_string())),
                    }
                },
            }
        };
        match tokio::time::timeout(timeout, next).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }

    fn new(conn: Conn, server: SocketAddr, local: SocketAddr) -> TestUa {
        TestUa {
            conn,
            server,
            local,
            nc: 0,
            rx_buf: Vec::new(),
            timestamps: false,
            sent_at: None,
            received_at: None,
        }
    }

    /// Asks the kernel to stamp every datagram this (UDP) client receives
    /// with the time it was queued (SO_TIMESTAMPNS). On loopback that is
    /// the moment the server sent it, so [`TestUa::wire_time`] is the
    /// server's response time without this client's own scheduling delay,
    /// as a packet capture would show it.
    pub fn kernel_timestamps(&mut self) -> Result<()> {
        let Conn::Udp(s) = &self.conn else {
            return Err(Error::Protocol("kernel timestamps need UDP".into()));
        };
        nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::ReceiveTimestampns, &true)
            .map_err(std::io::Error::from)?;
        self.timestamps = true;
        Ok(())
    }

    /// From the last request's send to the kernel's receive timestamp of
    /// the last response (`None` without [`TestUa::kernel_timestamps`]).
    pub fn wire_time(&self) -> Option<Duration> {
        self.received_at?.duration_since(self.sent_at?).ok()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    pub fn transport(&self) -> Transport {
        match self.conn {
            Conn::Udp(_) => Transport::Udp,
            Conn::Tcp { .. } => Transport::Tcp,
            Conn::Tls { .. } => Transport::Tls,
        }
    }

    /// Sends bytes as they are (one datagram on UDP; one write on TCP).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        match &mut self.conn {
            Conn::Udp(s) => {
                self.sent_at = Some(SystemTime::now());
                s.send_to(bytes, self.server).await?;
            }
            Conn::Tcp { stream, .. } => {
                stream.write_all(bytes).await?;
                stream.flush().await?;
            }
            Conn::Tls { stream, .. } => {
                stream.write_all(bytes).await?;
                stream.flush().await?;
            }
        }
        Ok(())
    }

    /// Waits for the next response; `Ok(None)` on timeout.
    pub async fn recv(&mut self, timeout: Duration) -> Result<Option<TestResponse>> {
        match tokio::time::timeout(timeout, self.recv_inner()).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Waits for the next response; a timeout is an error.
    pub async fn expect(&mut self, timeout: Duration) -> Result<TestResponse> {
        self.recv(timeout).await?.ok_or(Error::Timeout)
    }

    async fn recv_inner(&mut self) -> Result<TestResponse> {
        match &mut self.conn {
            Conn::Udp(s) => {
                let buf = &mut self.rx_buf;
                buf.resize(65_536, 0);
                loop {
                    let n = if self.timestamps {
                        use std::os::fd::AsRawFd as _;
                        let fd = s.as_raw_fd();
                        let (n, at) = s
                            .async_io(tokio::io::Interest::READABLE, || recv_timestamped(fd, buf))
                            .await?;
                        self.received_at = at;
                        n
                    } else {
                        s.recv_from(buf).await?.0
                    };
                    if let Ok(r) = TestResponse::parse(&buf[..n]) {
                        return Ok(r);
                    }
                }
            }
            Conn::Tcp { stream, buf } => read_framed(stream, buf).await,
            Conn::Tls { stream, buf } => read_framed(stream, buf).await,
        }
    }

    /// Whether the server closed a TCP connection (within `timeout`).
    pub async fn closed(&mut self, timeout: Duration) -> bool {
        let Conn::Tcp { stream, buf } = &mut self.conn else {
            return false;
        };
        let fut = async {
            loop {
                match stream.read_buf(buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => buf.clear(),
                }
            }
        };
        tokio::time::timeout(timeout, fut).await.unwrap_or(false)
    }

    /// The REGISTER text for `r`, with `authorization` if given, and
    /// `branch`.
    pub fn register_text(&self, r: &Register, branch: &str, authorization: Option<&str>) -> String {
        let t = self.transport().as_str();
        let local = self.local;
        let mut s = format!(
            "REGISTER sip:{domain} SIP/2.0\r\n\
             Via: SIP/2.0/{t} {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{user}@{domain}>;tag={tag}\r\n\
             To: <sip:{user}@{domain}>\r\n\
             Call-ID: {cid}\r\n\
             CSeq: {cseq} REGISTER\r\n",
            domain = r.domain,
            user = r.user,
            tag = crate::wire::response::random_tag(),
            cid = r.call_id,
            cseq = r.cseq,
        );
        match &r.contacts {
            None => s.push_str(&format!("Contact: <sip:{}@{}>\r\n", r.user, local)),
            Some(cs) => {
                for c in cs {
                    s.push_str(&format!("Contact: {c}\r\n"));
                }
            }
        }
        if let Some(e) = r.expires {
            s.push_str(&format!("Expires: {e}\r\n"));
        }
        if let Some(a) = authorization {
            s.push_str(&format!("Authorization: {a}\r\n"));
        }
        for h in &r.extra_headers {
            s.push_str(h);
            s.push_str("\r\n");
        }
        s.push_str("User-Agent: dialtone-test-ua\r\nContent-Length: 0\r\n\r\n");
        s
    }

    /// A fresh RFC 3261 branch.
    pub fn branch() -> String {
        format!("z9hG4bK{:016x}", rand::random::<u64>())
    }

    /// The `Authorization` value answering `ch` for `r` (nc counts up per UA).
    pub fn authorization(&mut self, r: &Register, ch: &Challenge) -> Result<String> {
        let alg = ch
            .algorithm
            .ok_or(Error::Protocol("unsupported algorithm".into()))?;
        let password = r
            .password
            .as_deref()
            .ok_or(Error::Protocol("no password".into()))?;
        self.nc += 1;
        let uri = r
            .digest_uri
            .clone()
            .unwrap_or_else(|| format!("sip:{}", r.domain));
        Ok(digest::authorization(
            alg,
            r.auth_user.as_deref().unwrap_or(&r.user),
            &ch.realm,
            password,
            &ch.nonce,
            ch.opaque.as_deref(),
            "REGISTER",
            &uri,
            self.nc,
            &format!("{:08x}", rand::random::<u32>()),
        ))
    }

    /// Picks the challenge for the preferred algorithm, else the first one.
    pub fn pick<'c>(r: &Register, challenges: &'c [Challenge]) -> Option<&'c Challenge> {
        challenges
            .iter()
            .find(|c| c.algorithm == Some(r.algorithm))
            .or_else(|| challenges.iter().find(|c| c.algorithm.is_some()))
    }

    /// Sends `r` without credentials and returns the response.
    pub async fn register_once(&mut self, r: &Register) -> Result<TestResponse> {
        let text = self.register_text(r, &Self::branch(), None);
        self.send_raw(text.as_bytes()).await?;
        self.expect(DEFAULT_TIMEOUT).await
    }

    /// The whole flow: REGISTER; on 401 answer the challenge (CSeq + 1) and
    /// return the final response.
    pub async fn register(&mut self, r: &Register) -> Result<TestResponse> {
        let first = self.register_once(r).await?;
        if first.code != 401 {
            return Ok(first);
        }
        self.answer(r, &first).await
    }

    /// Answers the 401 `challenge` for `r` with CSeq + 1.
    pub async fn answer(&mut self, r: &Register, challenge: &TestResponse) -> Result<TestResponse> {
        let chs = challenge.challenges();
        let ch = Self::pick(r, &chs).ok_or(Error::Protocol("no usable challenge".into()))?;
        let auth = self.authorization(r, ch)?;
        let mut next = r.clone();
        next.cseq = r.cseq + 1;
        let text = self.register_text(&next, &Self::branch(), Some(&auth));
        self.send_raw(text.as_bytes()).await?;
        self.expect(DEFAULT_TIMEOUT).await
    }
}

/// The next response on a stream (Content-Length framing).
async fn read_framed<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<TestResponse> {
    loop {
        match frame::check(buf, 1 << 20) {
            Ok(Some(Frame::KeepAlive(n))) => buf.advance(n),
            Ok(Some(Frame::Message(n))) => {
                let m = buf.split_to(n);
                return TestResponse::parse(&m);
            }
            Ok(None) => {
                if stream.read_buf(buf).await? == 0 {
                    return Err(Error::Protocol("connection closed".into()));
                }
            }
            Err(e) => return Err(Error::Protocol(e.to_string())),
        }
    }
}

/// One datagram and its kernel receive timestamp (SO_TIMESTAMPNS), from
/// a non-blocking UDP socket with `ReceiveTimestampns` set (also the load
/// client's phones).
pub fn recv_timestamped(
    fd: std::os::fd::RawFd,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<SystemTime>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};
    let mut control = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut control), MsgFlags::MSG_DONTWAIT)
        .map_err(std::io::Error::from)?;
    let mut at = None;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmTimestampns(ts) = c {
            let since_epoch = Duration::new(
                u64::try_from(ts.tv_sec()).unwrap_or(0),
                u32::try_from(ts.tv_nsec()).unwrap_or(0),
            );
            at = SystemTime::UNIX_EPOCH.checked_add(since_epoch);
        }
    }
    Ok((msg.bytes, at))
}
