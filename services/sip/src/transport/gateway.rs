//! The thin tokio layer: listeners feeding [`Core::handle`], and the
//! [`Transports`] the proxy sends through. UDP is in [`super::udp`],
//! connection-oriented transports in [`super::stream`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::task::JoinHandle;

use super::stream::{self, Connections, StreamContext};
use super::udp;
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
            connections: std::sync::Mutex::new(Connections::default()),
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
                tasks.push(tokio::spawn(udp::udp_loop(
                    core.clone(),
                    udp.clone(),
                    rx.clone(),
                    in_flight.clone(),
                    udp_permits.clone(),
                )));
            }
            tasks.push(tokio::spawn(stream::tcp_accept_loop(
                StreamContext {
                    core: core.clone(),
                    shutdown: rx.clone(),
                    in_flight: in_flight.clone(),
                    transports: transports.clone(),
                },
                tcp,
                conns.clone(),
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
        if let Err(mpsc::error::TrySendError::Full(bytes)) = tx.try_send(bytes) {
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
