//! The thin tokio layer: UDP and TCP listeners feeding [`Core::handle`].
//!
//! UDP: several receive tasks share one socket per address (so both cores
//! work even when all traffic comes from one peer, as with SIPp, where
//! SO_REUSEPORT would hash everything to one socket). A receive task polls
//! [`Core::handle`] once itself: what completes at once (a 401 challenge, a
//! retransmission, OPTIONS, a backend answering from memory) is answered
//! right there, with no task and no hop to another thread; what waits for
//! the backend (a REGISTER being made durable) goes on in its own task.
//! TCP: one reader task per connection frames messages (see [`crate::wire::frame`])
//! and handles them the same way (a single connection may carry thousands
//! of concurrent REGISTERs); a writer task sends the responses back on the
//! same connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf as _, Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::backend::{SipBackend, Transport};
use crate::config::GatewayConfig;
use crate::core::{metric, salvage, Core, Reply};
use crate::transport::{ConnectionId, Flow};
use crate::wire::frame::{self, Frame, FrameError};
use crate::wire::response::{Response, Source};
use crate::{Error, Result};

/// The largest UDP payload (IPv4: 65535 - 20 - 8).
pub const UDP_MAX_DATAGRAM: usize = 65_507;

/// Counts tasks still handling a message, for a graceful shutdown.
#[derive(Default)]
struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

struct InFlightGuard(Arc<InFlight>);

impl InFlight {
    fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Entry point: see [`Gateway::start`].
pub struct Gateway;

/// A running gateway.
pub struct GatewayHandle {
    local_addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    in_flight: Arc<InFlight>,
    core: Arc<Core>,
}

impl Gateway {
    /// Binds every listen address (UDP and TCP on the same port) and starts
    /// serving on the current tokio runtime (use a multi-thread runtime to
    /// use several cores).
    pub async fn start(
        config: GatewayConfig,
        backend: Arc<dyn SipBackend>,
    ) -> Result<GatewayHandle> {
        config.validate()?;
        let (shutdown, rx) = watch::channel(false);
        let in_flight = Arc::new(InFlight::default());
        let mut tasks = Vec::new();
        let mut local_addrs = Vec::new();
        let mut bound = Vec::new();
        for addr in &config.listen {
            let (udp, tcp) = bind_pair(*addr, config.udp_recv_buffer).await?;
            local_addrs.push(udp.local_addr().map_err(Error::Io)?);
            bound.push((Arc::new(udp), tcp));
        }
        let transports = Arc::new_cyclic(|me| Transports {
            udp: bound.iter().map(|(u, _)| u.clone()).collect(),
            tcp: std::sync::Mutex::new(TcpConnections::default()),
            next_connection: std::sync::atomic::AtomicU64::new(1),
            core: std::sync::OnceLock::new(),
            shutdown: rx.clone(),
            in_flight: in_flight.clone(),
            me: me.clone(),
        });
        let core = Arc::new(Core::with_outbound(
            config.clone(),
            backend,
            transports.clone(),
            local_addrs.clone(),
        ));
        let _ = transports.core.set(Arc::downgrade(&core));
        let conns = Arc::new(Semaphore::new(config.max_tcp_connections));
        let udp_permits = Arc::new(Semaphore::new(config.max_udp_in_flight.max(1)));
        for (udp, tcp) in bound {
            for _ in 0..config.udp_receivers.max(1) {
                tasks.push(tokio::spawn(udp_loop(
                    core.clone(),
                    udp.clone(),
                    rx.clone(),
                    in_flight.clone(),
                    udp_permits.clone(),
                )));
            }
            tasks.push(tokio::spawn(tcp_accept_loop(
                core.clone(),
                tcp,
                rx.clone(),
                in_flight.clone(),
                conns.clone(),
                transports.clone(),
            )));
        }
        tasks.push(tokio::spawn(timer_loop(core.clone(), rx.clone())));
        tracing::info!(addrs = ?local_addrs, "SIP gateway listening (UDP+TCP)");
        Ok(GatewayHandle {
            local_addrs,
            shutdown,
            tasks,
            in_flight,
            core,
        })
    }
}

impl GatewayHandle {
    /// The bound addresses, one per configured listen address (UDP and TCP
    /// share the port).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Live server transactions (tests, metrics).
    pub fn transaction_count(&self) -> usize {
        self.core.transaction_count()
    }

    /// Stops receiving, then waits (up to the backend timeout plus a
    /// second) for messages being handled to be answered.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let deadline = self.core.config().backend_timeout + Duration::from_secs(1);
        let wait = async {
            loop {
                let notified = self.in_flight.idle.notified();
                if self.in_flight.count.load(Ordering::Acquire) == 0 {
                    break;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(deadline, wait).await;
    }
}

/// Binds UDP and TCP on the same address. With port 0, retries until both
/// get the same free port.
async fn bind_pair(addr: SocketAddr, recv_buffer: usize) -> Result<(UdpSocket, TcpListener)> {
    let mut last_err = None;
    for _ in 0..20 {
        let udp = match bind_udp(addr, recv_buffer) {
            Ok(u) => u,
            Err(e) => return Err(Error::Bind { addr, source: e }),
        };
        let local = udp.local_addr().map_err(Error::Io)?;
        match TcpListener::bind(local).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 => last_err = Some(e),
            Err(e) => return Err(Error::Bind { addr, source: e }),
        }
    }
    Err(Error::Bind {
        addr,
        source: last_err.unwrap_or_else(|| std::io::Error::other("no common free port")),
    })
}

fn bind_udp(addr: SocketAddr, recv_buffer: usize) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(recv_buffer);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// How many queued datagrams a receive loop takes before it looks at the
/// shutdown signal again.
const UDP_DRAIN_BATCH: usize = 64;

async fn udp_loop(
    core: Arc<Core>,
    socket: Arc<UdpSocket>,
    mut shutdown: watch::Receiver<bool>,
    in_flight: Arc<InFlight>,
    permits: Arc<Semaphore>,
) {
    // Larger than any datagram (the size limit is applied in Core::handle).
    let mut buf = vec![0u8; 65_536];
    let Ok(local) = socket.local_addr() else {
        return;
    };
    'recv: loop {
        let received = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            r = socket.recv_from(&mut buf) => r,
        };
        let mut received = Some(received);
        // Then whatever is already queued, without going through `select!`.
        for _ in 0..UDP_DRAIN_BATCH {
            let r = match received.take() {
                Some(r) => r,
                None => match socket.try_recv_from(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    r => r,
                },
            };
            let (n, peer) = match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP port unreachable from an earlier send shows up here
                    // on some systems; nothing to do but go on.
                    tracing::debug!(error = %e, "UDP receive error");
                    continue;
                }
            };
            let flow = Flow::received(Transport::Udp, peer, local, None);
            let data = Bytes::copy_from_slice(&buf[..n]);
            let c = core.clone();
            let mut fut = Box::pin(async move { c.handle(&data, flow).await });
            // Fast path: most requests (challenges, OPTIONS, retransmissions,
            // a backend answering from memory) complete without waiting;
            // answer them here, without a task and a hop to another thread.
            match poll_once(fut.as_mut()) {
                std::task::Poll::Ready(reply) => {
                    if let Some(reply) = reply {
                        udp_send(&socket, &reply).await;
                    }
                }
                std::task::Poll::Pending => {
                    // Waiting for the backend: go on in a task (polled again
                    // there with its own waker). Backpressure on the permits.
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        break 'recv; // closed: shutting down
                    };
                    let guard = in_flight.enter();
                    let socket = socket.clone();
                    tokio::spawn(async move {
                        let _guard = guard;
                        let _permit = permit;
                        if let Some(reply) = fut.await {
                            udp_send(&socket, &reply).await;
                        }
                    });
                }
            }
        }
    }
}

/// Polls `fut` once with a waker that does nothing. If it is pending, the
/// caller must poll it again with a real waker (spawn it): every future
/// registers the waker of its latest poll.
fn poll_once<F: std::future::Future + ?Sized>(
    fut: std::pin::Pin<&mut F>,
) -> std::task::Poll<F::Output> {
    fut.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
}

/// Sends a response without a wake-up when the socket can take it (almost
/// always for UDP), else waits for it.
async fn udp_send(socket: &UdpSocket, reply: &Reply) {
    let sent = match socket.try_send_to(&reply.bytes, reply.dest) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            socket.send_to(&reply.bytes, reply.dest).await
        }
        r => r,
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, dest = %reply.dest, "UDP send failed");
    }
}

async fn tcp_accept_loop(
    core: Arc<Core>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    in_flight: Arc<InFlight>,
    conns: Arc<Semaphore>,
    transports: Arc<Transports>,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "TCP accept failed");
                // e.g. EMFILE: back off a little instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            metrics::counter!(metric::DROPPED, "reason" => "tcp_connections").increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let core = core.clone();
        let shutdown = shutdown.clone();
        let in_flight = in_flight.clone();
        let transports = transports.clone();
        let (tx, rx) = mpsc::channel::<Bytes>(TCP_SEND_QUEUE);
        let id = transports.new_connection_id();
        tokio::spawn(async move {
            tcp_connection(
                core,
                NewConnection {
                    stream,
                    peer,
                    id,
                    queue: (tx, rx),
                },
                shutdown,
                in_flight,
                transports,
            )
            .await;
            drop(permit);
        });
    }
}

/// How many messages may wait to be written on one TCP connection.
const TCP_SEND_QUEUE: usize = 1024;

/// Serves one TCP connection. `(tx, rx)` is its send queue: the caller
/// made it, so that a connection we open ourselves can be given its first
/// message before the connection task runs.
/// A TCP connection about to be served.
struct NewConnection {
    stream: TcpStream,
    peer: SocketAddr,
    id: ConnectionId,
    /// Its send queue.
    queue: (mpsc::Sender<Bytes>, mpsc::Receiver<Bytes>),
}

async fn tcp_connection(
    core: Arc<Core>,
    NewConnection {
        stream,
        peer,
        id,
        queue: (tx, mut rx),
    }: NewConnection,
    mut shutdown: watch::Receiver<bool>,
    in_flight: Arc<InFlight>,
    transports: Arc<Transports>,
) {
    let local = stream.local_addr().unwrap_or(peer);
    let (mut reader, mut writer) = stream.into_split();
    // The proxy sends requests and relayed responses for this peer on
    // this connection (a phone registered over TCP is reached on it).
    if let Ok(mut map) = transports.tcp.lock() {
        map.by_id.insert(id, tx.clone());
        map.by_remote.insert(peer, id);
    }
    let flow = Flow::received(Transport::Tcp, peer, local, Some(id));
    let writer_task = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if writer.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    });
    let max = core.config().max_message_size;
    let idle = core.config().tcp_idle_timeout;
    let source = Source {
        addr: peer,
        reliable: true,
    };
    let permits = Arc::new(Semaphore::new(
        core.config().max_tcp_in_flight_per_connection.max(1),
    ));
    let mut buf = BytesMut::with_capacity(8 * 1024);
    'conn: loop {
        // Take every whole message out of the buffer.
        loop {
            match frame::check(&buf, max) {
                Ok(Some(Frame::KeepAlive(n))) => buf.advance(n),
                Ok(Some(Frame::Message(n))) => {
                    // Backpressure: stop reading while too many are in flight.
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        break 'conn;
                    };
                    let data = buf.split_to(n).freeze();
                    let c = core.clone();
                    let mut fut = Box::pin(async move { c.handle(&data, flow).await });
                    // As for UDP: answer here what completes at once.
                    match poll_once(fut.as_mut()) {
                        std::task::Poll::Ready(reply) => {
                            drop(permit);
                            if let Some(reply) = reply {
                                let _ = tx.send(reply.bytes).await;
                            }
                        }
                        std::task::Poll::Pending => {
                            let tx = tx.clone();
                            let guard = in_flight.enter();
                            tokio::spawn(async move {
                                let _guard = guard;
                                let _permit = permit;
                                if let Some(reply) = fut.await {
                                    let _ = tx.send(reply.bytes).await;
                                }
                            });
                        }
                    }
                }
                Ok(None) => break,
                Err(FrameError::TooLarge {
                    header_len: Some(h),
                }) => {
                    metrics::counter!(metric::PARSE_ERRORS).increment(1);
                    // Answer 513 if we can, then close: skipping the body
                    // of an oversize message is not worth it.
                    if let Some(msg) = salvage(&buf[..h]) {
                        let mut r = Response::with_reason(
                            &msg,
                            &source,
                            513,
                            "Message Too Large",
                            &crate::wire::response::random_tag(),
                        );
                        if let Some(s) = &core.config().server_header {
                            r.header("Server", s);
                        }
                        let _ = tx.send(r.finish()).await;
                    }
                    break 'conn;
                }
                Err(_) => {
                    metrics::counter!(metric::PARSE_ERRORS).increment(1);
                    metrics::counter!(metric::DROPPED, "reason" => "tcp_garbage").increment(1);
                    break 'conn;
                }
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(8 * 1024);
        }
        let read = tokio::select! {
            _ = shutdown.changed() => break,
            r = tokio::time::timeout(idle, reader.read_buf(&mut buf)) => r,
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(_)) => {}
        }
    }
    if let Ok(mut map) = transports.tcp.lock() {
        map.by_id.remove(&id);
        if map.by_remote.get(&peer) == Some(&id) {
            map.by_remote.remove(&peer);
        }
    }
    drop(tx);
    let _ = writer_task.await;
}

/// The open TCP connections: by id (the flow a message came on) and by
/// the peer's address (a flow that names no connection).
#[derive(Default)]
struct TcpConnections {
    by_id: std::collections::HashMap<ConnectionId, mpsc::Sender<Bytes>>,
    by_remote: std::collections::HashMap<SocketAddr, ConnectionId>,
}

impl TcpConnections {
    fn sender(&self, flow: &Flow) -> Option<mpsc::Sender<Bytes>> {
        flow.connection
            .and_then(|id| self.by_id.get(&id))
            .or_else(|| {
                self.by_remote
                    .get(&flow.remote)
                    .and_then(|id| self.by_id.get(id))
            })
            .cloned()
    }
}

/// The proxy's way out: the UDP socket of the flow's local address (else
/// the first), and the flow's TCP connection, else one to the peer (opened
/// when there is none).
struct Transports {
    udp: Vec<Arc<UdpSocket>>,
    tcp: std::sync::Mutex<TcpConnections>,
    next_connection: std::sync::atomic::AtomicU64,
    core: std::sync::OnceLock<std::sync::Weak<Core>>,
    shutdown: watch::Receiver<bool>,
    in_flight: Arc<InFlight>,
    me: std::sync::Weak<Transports>,
}

impl Transports {
    fn new_connection_id(&self) -> ConnectionId {
        ConnectionId(
            self.next_connection
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        )
    }
}

impl crate::proxy::Outbound for Transports {
    fn send(&self, flow: Flow, bytes: Bytes) {
        let dest = flow.remote;
        match flow.transport {
            Transport::Udp => {
                let by_local = flow.local.and_then(|local| {
                    self.udp
                        .iter()
                        .find(|s| s.local_addr().is_ok_and(|a| a == local))
                });
                let Some(socket) = by_local.or_else(|| self.udp.first()) else {
                    return;
                };
                match socket.try_send_to(&bytes, dest) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        let socket = socket.clone();
                        tokio::spawn(async move {
                            if let Err(e) = socket.send_to(&bytes, dest).await {
                                tracing::debug!(error = %e, %dest, "UDP send failed");
                            }
                        });
                    }
                    Err(e) => tracing::debug!(error = %e, %dest, "UDP send failed"),
                }
            }
            Transport::Tcp => {
                let existing = self.tcp.lock().ok().and_then(|m| m.sender(&flow));
                if let Some(tx) = existing {
                    if let Err(mpsc::error::TrySendError::Full(bytes)) = tx.try_send(bytes) {
                        tokio::spawn(async move {
                            let _ = tx.send(bytes).await;
                        });
                    }
                    return;
                }
                let Some(core) = self.core.get().and_then(std::sync::Weak::upgrade) else {
                    return;
                };
                let shutdown = self.shutdown.clone();
                let in_flight = self.in_flight.clone();
                let Some(transports) = self.me.upgrade() else {
                    return;
                };
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(
                        Duration::from_secs(5),
                        TcpStream::connect(dest),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        _ => {
                            tracing::debug!(%dest, "TCP connect failed");
                            return;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    // The message is queued before the connection task
                    // starts: it is the first thing written on it.
                    let (tx, rx) = mpsc::channel::<Bytes>(TCP_SEND_QUEUE);
                    if tx.try_send(bytes).is_err() {
                        tracing::debug!(%dest, "TCP send queue refused the first message");
                    }
                    let id = transports.new_connection_id();
                    tokio::spawn(async move {
                        tcp_connection(
                            core,
                            NewConnection {
                                stream,
                                peer: dest,
                                id,
                                queue: (tx, rx),
                            },
                            shutdown,
                            in_flight,
                            transports,
                        )
                        .await;
                    });
                });
            }
        }
    }
}

async fn timer_loop(core: Arc<Core>, mut shutdown: watch::Receiver<bool>) {
    // Transactions also expire on access; this sweeps idle shards so that
    // memory is released when traffic stops.
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => core.tick(Instant::now()),
        }
    }
}
