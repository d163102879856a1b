//! UDP: several receive tasks share one socket per address (so both cores
//! work even when all traffic comes from one peer, as with SIPp, where
//! SO_REUSEPORT would hash everything to one socket). A receive task polls
//! [`Core::handle`] once itself: what completes at once (a 401 challenge, a
//! retransmission, OPTIONS, a backend answering from memory) is answered
//! right there, with no task and no hop to another thread; what waits for
//! the backend (a REGISTER being made durable) goes on in its own task.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::{watch, Semaphore};

use super::gateway::{poll_once, InFlight};
use super::{Flow, Transport};
use crate::core::{Core, Reply};

pub(super) fn bind_udp(addr: SocketAddr, recv_buffer: usize) -> std::io::Result<UdpSocket> {
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

pub(super) async fn udp_loop(
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
            if super::stun::is_stun(&buf[..n]) {
                // RFC 5626 s.4.4.2 keep-alive: answered here, never parsed
                // as SIP.
                if !core.admit_keep_alive(peer.ip()) {
                    continue;
                }
                if let Some(response) = super::stun::binding_response(&buf[..n], peer) {
                    let _ = socket.try_send_to(&response, peer);
                }
                continue;
            }
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

/// Sends a response without a wake-up when the socket can take it (almost
/// always for UDP), else waits for it.
pub(super) async fn udp_send(socket: &UdpSocket, reply: &Reply) {
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
