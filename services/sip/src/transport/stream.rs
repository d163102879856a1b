//! Connection-oriented transports: one reader task per connection frames
//! messages (see [`crate::wire::frame`]) and handles them as UDP does (a
//! single connection may carry thousands of concurrent REGISTERs); a writer
//! task sends what the node has for the peer — responses, and requests of
//! the proxy for a phone reached on this connection.
//!
//! [`serve_stream`] is generic over the byte stream: TCP passes the halves
//! of a `TcpStream`, TLS (`super::tls`) the halves of its encrypted
//! stream. WebSocket (`super::ws`) has its own message framing and serves
//! a connection in one task (reads and writes) but shares [`dispatch`],
//! the send queue and the [`Connections`] table.
//! The [`Connections`] table finds a flow's connection by id, else by
//! transport and peer address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::gateway::{poll_once, InFlight, Transports};
use super::limits::{ConnectionLimits, ConnectionPermit};
use super::send_queue::{send_queue, QueueReceiver, QueueSender};
use super::{ConnectionId, Flow, Transport};
use crate::core::{metric, salvage, Core};
use crate::wire::frame::{self, Frame, FrameError};
use crate::wire::response::{Response, Source};

/// How many messages may wait to be written on one connection.
pub(super) const SEND_QUEUE: usize = 1024;

/// The open connections of every connection-oriented transport: by id
/// (the flow a message came on) and by transport and peer address (a flow
/// that names no connection).
#[derive(Default)]
pub(super) struct Connections {
    by_id: HashMap<ConnectionId, QueueSender>,
    by_remote: HashMap<(Transport, SocketAddr), ConnectionId>,
}

impl Connections {
    /// Where to queue bytes for `flow`: its own connection while it is
    /// open, else the latest connection of the same transport to its peer.
    pub(super) fn sender(&self, flow: &Flow) -> Option<QueueSender> {
        flow.connection
            .and_then(|id| self.by_id.get(&id))
            .or_else(|| {
                self.by_remote
                    .get(&(flow.transport, flow.remote))
                    .and_then(|id| self.by_id.get(id))
            })
            .cloned()
    }

    pub(super) fn insert(
        &mut self,
        transport: Transport,
        peer: SocketAddr,
        id: ConnectionId,
        tx: QueueSender,
    ) {
        self.by_id.insert(id, tx);
        self.by_remote.insert((transport, peer), id);
    }

    pub(super) fn remove(&mut self, transport: Transport, peer: SocketAddr, id: ConnectionId) {
        self.by_id.remove(&id);
        if self.by_remote.get(&(transport, peer)) == Some(&id) {
            self.by_remote.remove(&(transport, peer));
        }
    }
}

/// One connection about to be served.
pub(super) struct NewConnection {
    pub transport: Transport,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub id: ConnectionId,
    /// Its send queue. The opener makes it, so that a connection we open
    /// ourselves can be given its first message before it is served.
    pub queue: (QueueSender, QueueReceiver),
}

impl NewConnection {
    pub(super) fn new(
        transport: Transport,
        peer: SocketAddr,
        local: SocketAddr,
        transports: &Transports,
    ) -> NewConnection {
        NewConnection {
            transport,
            peer,
            local,
            id: transports.new_connection_id(),
            queue: send_queue(SEND_QUEUE),
        }
    }
}

/// The shared state a connection task needs.
#[derive(Clone)]
pub(super) struct StreamContext {
    pub core: Arc<Core>,
    pub shutdown: watch::Receiver<bool>,
    pub in_flight: Arc<InFlight>,
    pub transports: Arc<Transports>,
}

/// A connection accepted and admitted by the connection limits.
pub(super) struct Admitted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Its place in the limits, given back when dropped.
    pub permit: ConnectionPermit,
}

/// The next connection on `listener` that the limits admit for
/// `transport` (Nagle off: SIP messages are small and latency counts);
/// `None` once the node shuts down. Refused ones are closed at once.
pub(super) async fn accept_admitted(
    listener: &TcpListener,
    shutdown: &mut watch::Receiver<bool>,
    limits: &Arc<ConnectionLimits>,
    transport: Transport,
) -> Option<Admitted> {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return None,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, transport = transport.as_str(), "accept failed");
                // e.g. EMFILE: back off a little instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(permit) = limits.admit(peer.ip(), transport.as_str()) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(peer);
        return Some(Admitted {
            stream,
            peer,
            local,
            permit,
        });
    }
}

pub(super) async fn tcp_accept_loop(
    cx: StreamContext,
    listener: TcpListener,
    limits: Arc<ConnectionLimits>,
) {
    let mut shutdown = cx.shutdown.clone();
    while let Some(Admitted {
        stream,
        peer,
        local,
        permit,
    }) = accept_admitted(&listener, &mut shutdown, &limits, Transport::Tcp).await
    {
        let conn = NewConnection::new(Transport::Tcp, peer, local, &cx.transports);
        let cx = cx.clone();
        tokio::spawn(async move {
            let (reader, writer) = stream.into_split();
            serve_stream(cx, conn, reader, writer).await;
            drop(permit);
        });
    }
}

/// Hands one message of a connection to the core. As for UDP, what
/// completes at once is answered at once: its reply is returned, for the
/// caller to write. The rest goes on in its own task, holding `permit`
/// (the connection's backpressure) until it is answered on `tx`.
pub(super) fn dispatch(
    core: &Arc<Core>,
    data: Bytes,
    flow: Flow,
    permit: OwnedSemaphorePermit,
    tx: &QueueSender,
    in_flight: &Arc<InFlight>,
) -> Option<Bytes> {
    let c = core.clone();
    let mut fut = Box::pin(async move { c.handle(&data, flow).await });
    match poll_once(fut.as_mut()) {
        std::task::Poll::Ready(reply) => {
            drop(permit);
            reply.map(|reply| reply.bytes)
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
            None
        }
    }
}

/// Opens a TCP connection to `dest` for a message of ours (a request to a
/// phone, a response whose connection is gone) and serves it; `first` is
/// the first thing written on it.
pub(super) async fn connect_tcp(cx: StreamContext, dest: SocketAddr, first: Bytes) {
    let stream = match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(dest)).await
    {
        Ok(Ok(s)) => s,
        _ => {
            tracing::debug!(%dest, "TCP connect failed");
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(dest);
    let conn = NewConnection::new(Transport::Tcp, dest, local, &cx.transports);
    // Queued before the connection is served: it is written first.
    if conn.queue.0.try_send(first).is_err() {
        tracing::debug!(%dest, "TCP send queue refused the first message");
    }
    let (reader, writer) = stream.into_split();
    serve_stream(cx, conn, reader, writer).await;
}

/// Serves one connection until the peer closes it, it stays idle for the
/// configured time, it sends garbage, or the node shuts down.
pub(super) async fn serve_stream<R, W>(
    cx: StreamContext,
    NewConnection {
        transport,
        peer,
        local,
        id,
        queue: (tx, mut rx),
    }: NewConnection,
    mut reader: R,
    mut writer: W,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let StreamContext {
        core,
        mut shutdown,
        in_flight,
        transports,
    } = cx;
    // The proxy sends requests and relayed responses for this peer on
    // this connection (a phone registered over it is reached on it).
    transports.connection_opened(transport, peer, id, tx.clone());
    let flow = Flow::received(transport, peer, local, Some(id));
    let writer_task = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if writer.write_all(&b).await.is_err() {
                break;
            }
            // TLS may keep encrypted bytes back when the socket is full
            // (a write returns once its plaintext is taken): flush when
            // nothing else is queued. A no-op for TCP.
            if rx.is_empty() && writer.flush().await.is_err() {
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
    // CR/LF bytes seen since the last message: a double CRLF (which may
    // come in pieces) is a keep-alive ping.
    let mut line_ends = 0usize;
    'conn: loop {
        // Take every whole message out of the buffer.
        loop {
            match frame::check(&buf, max) {
                Ok(Some(Frame::KeepAlive(n))) => {
                    line_ends += n;
                    buf.advance(n);
                    // RFC 5626 s.4.4.1: a double CRLF ping is answered with
                    // a single CRLF pong (one per ping, however it arrived).
                    while line_ends >= 4 {
                        line_ends -= 4;
                        let _ = tx.send(Bytes::from_static(b"\r\n")).await;
                    }
                }
                Ok(Some(Frame::Message(n))) => {
                    line_ends = 0;
                    // Backpressure: stop reading while too many are in flight.
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        break 'conn;
                    };
                    let data = buf.split_to(n).freeze();
                    if let Some(reply) = dispatch(&core, data, flow, permit, &tx, &in_flight) {
                        let _ = tx.send(reply).await;
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
    transports.connection_closed(transport, peer, id);
    drop(tx);
    let _ = writer_task.await;
}
