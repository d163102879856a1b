//! The thin tokio layer: listeners feeding [`Core::handle`], and the
//! [`Transports`] the proxy sends through. UDP is in [`super::udp`],
//! connection-oriented transports in [`super::stream`] (TCP, and the
//! serving of any byte stream), [`super::tls`] and [`super::ws`]; the
//! connection limits they share in [`super::limits`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;

use super::limits::ConnectionLimits;
use super::send_queue::{QueueSender, TrySendError};
use super::stream::{self, Connections, StreamContext};
use super::tls::{self, CertificateStore, SecureListener};
use super::{udp, ws};
use crate::backend::{SipBackend, Transport};
use crate::config::GatewayConfig;
use crate::core::Core;
use crate::transport::{ConnectionId, Flow};
use crate::{Error, Result};

/// The largest UDP payload (IPv4: 65535 - 20 - 8).
pub const UDP_MAX_DATAGRAM: usize = 65_507;

/// Counts tasks still handling a message, for a graceful shutdown.
#[derive(Default)]
pub(super) struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

pub(super) struct InFlightGuard(Arc<InFlight>);

impl InFlight {
    pub(super) fn enter(self: &Arc<Self>) -> InFlightGuard {
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
    tls_addr: Option<SocketAddr>,
    ws_addr: Option<SocketAddr>,
    wss_addr: Option<SocketAddr>,
    certificate: Option<Arc<CertificateStore>>,
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
        let certificate = match &config.tls {
            Some(files) => Some(CertificateStore::load(files)?),
            None => None,
        };
        let secure = match &certificate {
            Some(store) => Some(SecureListener {
                acceptor: tls::acceptor(store.clone())?,
                handshake_timeout: config.tls_handshake_timeout,
            }),
            None => None,
        };
        let tls_connector = match &config.tls {
            Some(files) => Some(tls::connector(files.ca.as_deref())?),
            None => None,
        };
        let tls_listener = bind_stream(config.tls_listen).await?;
        let ws_listener = bind_stream(config.ws_listen).await?;
        let wss_listener = bind_stream(config.wss_listen).await?;
        let bound_addr = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
        let (tls_addr, ws_addr, wss_addr) = (
            bound_addr(&tls_listener),
            bound_addr(&ws_listener),
            bound_addr(&wss_listener),
        );
        let transports = Arc::new_cyclic(|me| Transports {
            tls_connector,
            tls_handshake_timeout: config.tls_handshake_timeout,
            udp: bound.iter().map(|(u, _)| u.clone()).collect(),
            connections: std::sync::Mutex::new(Connections::default()),
            next_connection: std::sync::atomic::AtomicU64::new(1),
            core: std::sync::OnceLock::new(),
            shutdown: rx.clone(),
            in_flight: in_flight.clone(),
            me: me.clone(),
        });
        // The core advertises the TLS listener as bound (port 0 resolved).
        let core_config = GatewayConfig {
            tls_listen: tls_addr,
            ..config.clone()
        };
        let core = Arc::new(Core::with_outbound(
            core_config,
            backend,
            transports.clone(),
            local_addrs.clone(),
        ));
        let _ = transports.core.set(Arc::downgrade(&core));
        let limits = ConnectionLimits::new(
            config.max_tcp_connections,
            config.max_connections_per_source,
        );
        let stream_context = || StreamContext {
            core: core.clone(),
            shutdown: rx.clone(),
            in_flight: in_flight.clone(),
            transports: transports.clone(),
        };
        let udp_permits = Arc::new(Semaphore::new(config.max_udp_in_flight.max(1)));
        for (udp, tcp) in bound {
            for _ in 0..config.udp_receivers.max(1) {
                tasks.push(tokio::spawn(udp::udp_loop(
                    core.clone(),
                    udp.clone(),
                    rx.clone(),
                    in_flight.clone(),
                    udp_permits.clone(),
                )));
            }
            tasks.push(tokio::spawn(stream::tcp_accept_loop(
                stream_context(),
                tcp,
                limits.clone(),
            )));
        }
        if let (Some(listener), Some(secure)) = (tls_listener, &secure) {
            tasks.push(tokio::spawn(tls::tls_accept_loop(
                stream_context(),
                listener,
                limits.clone(),
                secure.clone(),
            )));
        }
        if let Some(listener) = ws_listener {
            tasks.push(tokio::spawn(ws::ws_accept_loop(
                stream_context(),
                listener,
                limits.clone(),
                None,
                config.tls_handshake_timeout,
            )));
        }
        if let (Some(listener), Some(secure)) = (wss_listener, &secure) {
            tasks.push(tokio::spawn(ws::ws_accept_loop(
                stream_context(),
                listener,
                limits.clone(),
                Some(secure.clone()),
                config.tls_handshake_timeout,
            )));
        }
        if let Some(store) = &certificate {
            tasks.push(tokio::spawn(tls::watch_certificate(
                store.clone(),
                config.tls_reload_interval,
                rx.clone(),
            )));
        }
        tasks.push(tokio::spawn(timer_loop(core.clone(), rx.clone())));
        tracing::info!(
            addrs = ?local_addrs,
            tls = ?tls_addr,
            ws = ?ws_addr,
            wss = ?wss_addr,
            "SIP gateway listening (UDP+TCP)"
        );
        Ok(GatewayHandle {
            tls_addr,
            ws_addr,
            wss_addr,
            certificate,
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

    /// The SIP over TLS listener's bound address, when it listens.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The SIP over WebSocket listener's bound address, when it listens.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws_addr
    }

    /// The SIP over secure WebSocket listener's bound address, when it
    /// listens.
    pub fn wss_addr(&self) -> Option<SocketAddr> {
        self.wss_addr
    }

    /// Reads the TLS certificate files again now (what SIGHUP does); an
    /// error keeps the current certificate. `Ok` without TLS.
    pub fn reload_certificate(&self) -> std::result::Result<(), String> {
        self.certificate.as_ref().map_or(Ok(()), |c| c.reload())
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
        let udp = match udp::bind_udp(addr, recv_buffer) {
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

/// Binds a listener for a connection-oriented transport, when configured.
async fn bind_stream(addr: Option<SocketAddr>) -> Result<Option<TcpListener>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| Error::Bind { addr, source })
}

/// Polls `fut` once with a waker that does nothing. If it is pending, the
/// caller must poll it again with a real waker (spawn it): every future
/// registers the waker of its latest poll.
pub(super) fn poll_once<F: std::future::Future + ?Sized>(
    fut: std::pin::Pin<&mut F>,
) -> std::task::Poll<F::Output> {
    fut.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
}

/// The proxy's way out: the UDP socket of the flow's local address (else
/// the first), and the flow's connection, else one to the peer (opened
/// when there is none and the transport can open one).
pub(super) struct Transports {
    /// For TLS connections the node opens itself (`None`: no TLS).
    tls_connector: Option<tokio_rustls::TlsConnector>,
    tls_handshake_timeout: Duration,
    udp: Vec<Arc<UdpSocket>>,
    pub(super) connections: std::sync::Mutex<Connections>,
    next_connection: std::sync::atomic::AtomicU64,
    core: std::sync::OnceLock<std::sync::Weak<Core>>,
    shutdown: watch::Receiver<bool>,
    in_flight: Arc<InFlight>,
    me: std::sync::Weak<Transports>,
}

impl Transports {
    pub(super) fn new_connection_id(&self) -> ConnectionId {
        ConnectionId(
            self.next_connection
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Lists a connection being served: messages for its flow, or for its
    /// transport and peer, go on it from now on.
    pub(super) fn connection_opened(
        &self,
        transport: Transport,
        peer: SocketAddr,
        id: ConnectionId,
        tx: QueueSender,
    ) {
        if let Ok(mut map) = self.connections.lock() {
            map.insert(transport, peer, id, tx);
        }
    }

    /// Forgets a connection that is no longer served. The bindings
    /// registered over it go with it, unless the node is shutting down:
    /// then the phone did not lose its flow, and after the restart its
    /// binding waits, unreachable, for the phone to register again (RFC
    /// 5626) instead of being removed by us.
    pub(super) fn connection_closed(
        &self,
        transport: Transport,
        peer: SocketAddr,
        id: ConnectionId,
    ) {
        if let Ok(mut map) = self.connections.lock() {
            map.remove(transport, peer, id);
        }
        if !*self.shutdown.borrow() {
            if let Some(core) = self.core.get().and_then(std::sync::Weak::upgrade) {
                core.flow_closed(id);
            }
        }
    }

    /// What a task serving a connection of ours needs, while the node runs.
    fn stream_context(&self) -> Option<StreamContext> {
        Some(StreamContext {
            core: self.core.get().and_then(std::sync::Weak::upgrade)?,
            shutdown: self.shutdown.clone(),
            in_flight: self.in_flight.clone(),
            transports: self.me.upgrade()?,
        })
    }

    fn send_udp(&self, flow: Flow, bytes: Bytes) {
        let dest = flow.remote;
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

    /// Queues `bytes` on the flow's connection; `Err` gives them back when
    /// no connection of the flow is open.
    fn send_on_connection(&self, flow: &Flow, bytes: Bytes) -> std::result::Result<(), Bytes> {
        let existing = self.connections.lock().ok().and_then(|m| m.sender(flow));
        let Some(tx) = existing else {
            return Err(bytes);
        };
        if let Err(TrySendError::Full(bytes)) = tx.try_send(bytes) {
            tokio::spawn(async move {
                let _ = tx.send(bytes).await;
            });
        }
        Ok(())
    }
}

impl crate::proxy::Outbound for Transports {
    fn send(&self, flow: Flow, bytes: Bytes) {
        match flow.transport {
            Transport::Udp => self.send_udp(flow, bytes),
            Transport::Tcp => {
                let Err(bytes) = self.send_on_connection(&flow, bytes) else {
                    return;
                };
                let Some(cx) = self.stream_context() else {
                    return;
                };
                tokio::spawn(stream::connect_tcp(cx, flow.remote, bytes));
            }
            Transport::Tls => {
                let Err(bytes) = self.send_on_connection(&flow, bytes) else {
                    return;
                };
                // No connection: open one (a `sips:` Record-Route, a TLS
                // server whose connection dropped). A phone registered over
                // TLS is usually behind NAT and cannot be reached this way;
                // it re-registers on a new connection (RFC 5626).
                let (Some(connector), Some(cx)) = (&self.tls_connector, self.stream_context())
                else {
                    metrics::counter!(crate::core::metric::DROPPED, "reason" => "tls_no_connection")
                        .increment(1);
                    return;
                };
                tokio::spawn(tls::connect_tls(
                    cx,
                    connector.clone(),
                    self.tls_handshake_timeout,
                    flow.remote,
                    bytes,
                ));
            }
            // A WebSocket client is reached only on its own connection.
            Transport::Ws | Transport::Wss => {
                if self.send_on_connection(&flow, bytes).is_err() {
                    ws::undeliverable(&flow);
                }
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
