//! SIP over WebSocket (RFC 7118), plain (WS) and over TLS (WSS), for
//! browser phones.
//!
//! The upgrade is accepted only for the `sip` subprotocol
//! (`Sec-WebSocket-Protocol: sip`); anything else, or none, gets an HTTP
//! 400 saying so. Each WebSocket message (text or binary) is one SIP
//! message (RFC 7118 s.5.1): no stream framing. A message larger than the
//! SIP maximum message size closes the connection with 1009 (message too
//! big), a frame that breaks RFC 6455 with 1002 (protocol error), a text
//! message that is not UTF-8 with 1007. Pings are answered with pongs, a
//! close with a close; a connection with no traffic for the idle time is
//! closed (1000), and the node's shutdown closes every one (1001).
//!
//! A WebSocket client cannot be connected to: it is reached only on the
//! connection it opened, which the [`Connections`](super::stream) table
//! finds by id or by (transport, peer address) — the address a
//! registration records as its source. Its Via and Contact hosts are
//! made-up `.invalid` names and are never used.
//!
//! tokio-tungstenite does the upgrade (the HTTP handshake) and nothing
//! more: it refuses bytes after the request, so the stream it gives back
//! holds nothing unread. The frames are ours ([`crate::wire::websocket`]),
//! because an idle connection must cost little: a codec's read buffer and
//! write buffer (tungstenite keeps the capacity of the largest frame
//! written) and its stream structure stayed allocated on every registered
//! browser phone. Here a connection is read into a scratch buffer on the
//! stack, only while a read is being polled (never in the task's future),
//! and the deframer keeps only an incomplete frame; each frame written is
//! built, written and freed. The TLS handshake and the upgrade run in a
//! boxed future of their own, freed once the connection is up: a future is
//! as large as its largest state, and the connection's long-lived task
//! would otherwise keep their space for as long as the connection lives.
//! One task serves a connection, reading and writing (a second task for
//! writes cost memory on every idle connection), and its send queue holds
//! no buffer while empty (`super::send_queue`).
//! `loadtest/transport-memory.sh` measures what a held connection costs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::task::Poll;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::limits::ConnectionLimits;
use super::stream::{accept_admitted, dispatch, Admitted, NewConnection, StreamContext};
use super::tls::SecureListener;
use super::{Flow, Transport};
use crate::core::metric;
use crate::wire::websocket::{
    encode, encode_close, encode_close_reply, encode_message, Deframer, Event, FrameError, OpCode,
    CLOSE_GOING_AWAY, CLOSE_NORMAL,
};

/// The read buffer of the upgrade (tungstenite's, freed with the upgrade).
const UPGRADE_READ_BUFFER: usize = 1024;

/// The scratch buffer a connection is read into, on the stack while a
/// read is polled: what TLS has decrypted or TCP has received, at most.
const READ_SCRATCH: usize = 4096;

/// How long the closing frame may take to be written.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an upgrade without the `sip` subprotocol is refused (the body of
/// the 400).
pub const SUBPROTOCOL_REQUIRED: &str = "WebSocket subprotocol 'sip' required (RFC 7118)";

/// Accepts SIP over WS (`secure` = `None`) or WSS: the connection limits
/// first, then (in the connection's task) the TLS handshake and the
/// upgrade, both within the handshake timeout.
pub(super) async fn ws_accept_loop(
    cx: StreamContext,
    listener: TcpListener,
    limits: Arc<ConnectionLimits>,
    secure: Option<SecureListener>,
    handshake_timeout: Duration,
) {
    let transport = if secure.is_some() {
        Transport::Wss
    } else {
        Transport::Ws
    };
    let mut shutdown = cx.shutdown.clone();
    while let Some(Admitted {
        stream,
        peer,
        local,
        permit,
    }) = accept_admitted(&listener, &mut shutdown, &limits, transport).await
    {
        let cx = cx.clone();
        let secure = secure.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let max = cx.core.config().max_message_size;
            match secure {
                None => {
                    let ws = Box::pin(upgrade(stream, peer, max, handshake_timeout)).await;
                    if let Some(ws) = ws {
                        serve_websocket(cx, transport, peer, local, ws).await;
                    }
                }
                Some(secure) => {
                    let mut stop = cx.shutdown.clone();
                    let ws = Box::pin(async move {
                        let started = tokio::time::Instant::now();
                        let tls = tokio::select! {
                            _ = stop.changed() => return None,
                            s = secure.handshake(stream, peer) => s?,
                        };
                        // The upgrade gets what is left of the same budget.
                        let left = handshake_timeout.saturating_sub(started.elapsed());
                        upgrade(tls, peer, max, left).await
                    })
                    .await;
                    if let Some(ws) = ws {
                        serve_websocket(cx, transport, peer, local, ws).await;
                    }
                }
            }
        });
    }
}

/// Whether a `Sec-WebSocket-Protocol` request header offers `sip`.
fn offers_sip(request: &Request) -> bool {
    request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("sip"))
}

/// The upgrade's answer: `sip` chosen, or a 400 that says why not.
#[allow(clippy::result_large_err)] // the shape tungstenite's callback has
fn choose_subprotocol(
    request: &Request,
    mut response: Response,
) -> std::result::Result<Response, ErrorResponse> {
    if offers_sip(request) {
        response
            .headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static("sip"));
        return Ok(response);
    }
    metrics::counter!(metric::DROPPED, "reason" => "ws_subprotocol").increment(1);
    let mut refusal = ErrorResponse::new(Some(SUBPROTOCOL_REQUIRED.to_owned()));
    *refusal.status_mut() = StatusCode::BAD_REQUEST;
    refusal
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain"));
    Err(refusal)
}

/// The WebSocket upgrade of `stream` (messages up to `max` bytes), within
/// `handshake_timeout`: the stream, upgraded, or `None` when refused,
/// failed or timed out. Boxed: the TLS stream is about 1.2 KB, and a
/// stream held inline would take its space in the connection's future
/// once for each place it passes through (the accept task's local, the
/// serving future's argument).
async fn upgrade<S>(
    stream: S,
    peer: SocketAddr,
    max: usize,
    handshake_timeout: Duration,
) -> Option<Box<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .read_buffer_size(UPGRADE_READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let upgrade =
        tokio_tungstenite::accept_hdr_async_with_config(stream, choose_subprotocol, Some(config));
    match tokio::time::timeout(handshake_timeout, upgrade).await {
        // Nothing of the stream is left in tungstenite: its handshake
        // refuses bytes after the request (no frame can come before the
        // 101), and it has buffered no frame.
        Ok(Ok(ws)) => Some(Box::new(ws.into_inner())),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "WebSocket upgrade refused or failed");
            None
        }
        Err(_) => {
            metrics::counter!(metric::DROPPED, "reason" => "ws_handshake_timeout").increment(1);
            tracing::debug!(%peer, "WebSocket upgrade timed out");
            None
        }
    }
}

/// How a connection ends, and what is written before it closes.
enum Ending {
    /// The peer sent a close: answer it.
    PeerClosed(Option<u16>),
    /// The peer broke the protocol or a limit: close with its code.
    Refused(FrameError),
    /// Idle, shutdown (the close code to send), or the peer went away:
    /// write what is queued and the replies still in flight first.
    Drain(u16),
}

/// What one read of a connection gave.
enum Read {
    /// The events of the frames the bytes completed (maybe none), and the
    /// error that ends the connection after them.
    Frames(Vec<Event>, Option<FrameError>),
    /// End of stream, or the stream failed.
    Closed,
}

/// Reads what the connection has and frames it: into a scratch buffer on
/// the stack of this poll, so that an idle connection's task keeps no read
/// buffer. Cancel-safe: bytes read are framed in the same poll.
fn read_frames<'a, S>(
    stream: &'a mut S,
    deframer: &'a mut Deframer,
) -> impl std::future::Future<Output = Read> + 'a
where
    S: AsyncRead + Unpin,
{
    std::future::poll_fn(move |cx| {
        let mut scratch = [0u8; READ_SCRATCH];
        let mut buf = ReadBuf::new(&mut scratch);
        match std::pin::Pin::new(&mut *stream).poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(_)) => Poll::Ready(Read::Closed),
            Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Read::Closed),
            Poll::Ready(Ok(())) => {
                let mut events = Vec::new();
                let error = deframer.push(buf.filled(), &mut events).err();
                Poll::Ready(Read::Frames(events, error))
            }
        }
    })
}

/// Serves SIP on the upgraded `stream` until the peer closes it, it stays
/// idle for the configured time, it breaks the protocol or a limit, or the
/// node shuts down.
///
/// One task reads and writes (see the module comment). It never waits on
/// its own send queue: what is answered at once is written at once, and
/// while it waits for the connection's backpressure (a permit) it keeps
/// writing what the queue holds, so the tasks that hold the permits can
/// always queue their replies.
async fn serve_websocket<S>(
    cx: StreamContext,
    transport: Transport,
    peer: SocketAddr,
    local: SocketAddr,
    mut stream: Box<S>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let NewConnection {
        id,
        queue: (tx, mut rx),
        ..
    } = NewConnection::new(transport, peer, local, &cx.transports);
    let StreamContext {
        core,
        mut shutdown,
        in_flight,
        transports,
    } = cx;
    // Requests of the proxy for a phone registered over this connection
    // come here: it is the only way to a WebSocket client.
    transports.connection_opened(transport, peer, id, tx.clone());
    let flow = Flow::received(transport, peer, local, Some(id));
    let idle = core.config().tcp_idle_timeout;
    let mut deframer = Deframer::new(core.config().max_message_size);
    let permits = Arc::new(Semaphore::new(
        core.config().max_tcp_in_flight_per_connection.max(1),
    ));
    // The idle time counts from the last frame read; writes do not
    // restart it.
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    let ending = 'conn: loop {
        let read = tokio::select! {
            _ = shutdown.changed() => break Ending::Drain(CLOSE_GOING_AWAY),
            _ = &mut idle_timer => break Ending::Drain(CLOSE_NORMAL),
            queued = rx.recv() => {
                // `None` cannot come while `tx` is held here.
                let Some(bytes) = queued else { break Ending::Drain(CLOSE_NORMAL) };
                let frame = encode_message(&bytes);
                if !write(&mut stream, &frame, idle_timer.as_mut(), &mut shutdown).await {
                    break Ending::Drain(CLOSE_NORMAL);
                }
                continue;
            }
            read = read_frames(&mut stream, &mut deframer) => read,
        };
        let (events, error) = match read {
            Read::Closed => break Ending::Drain(CLOSE_NORMAL),
            Read::Frames(events, error) => (events, error),
        };
        if !events.is_empty() {
            idle_timer
                .as_mut()
                .reset(tokio::time::Instant::now() + idle);
        }
        for event in events {
            let data = match event {
                Event::Text(data) | Event::Binary(data) => data,
                Event::Ping(payload) => {
                    let pong = encode(OpCode::Pong, &payload);
                    if !write(&mut stream, &pong, idle_timer.as_mut(), &mut shutdown).await {
                        break 'conn Ending::Drain(CLOSE_NORMAL);
                    }
                    continue;
                }
                Event::Pong(_) => continue,
                Event::Close { code, .. } => break 'conn Ending::PeerClosed(code),
            };
            // A message of white space only is a keep-alive of some clients.
            if data.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            // As for TCP: backpressure by permits, what completes at once is
            // answered here, the rest in its own task.
            let permit = loop {
                tokio::select! {
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => break permit,
                        Err(_) => break 'conn Ending::Drain(CLOSE_NORMAL),
                    },
                    queued = rx.recv() => {
                        let Some(bytes) = queued else { break 'conn Ending::Drain(CLOSE_NORMAL) };
                        let frame = encode_message(&bytes);
                        if !write(&mut stream, &frame, idle_timer.as_mut(), &mut shutdown).await {
                            break 'conn Ending::Drain(CLOSE_NORMAL);
                        }
                    }
                }
            };
            if let Some(reply) = dispatch(&core, data, flow, permit, &tx, &in_flight) {
                // After what was queued before it, as if it went through the
                // queue too.
                while let Some(bytes) = rx.try_recv() {
                    let frame = encode_message(&bytes);
                    if !write(&mut stream, &frame, idle_timer.as_mut(), &mut shutdown).await {
                        break 'conn Ending::Drain(CLOSE_NORMAL);
                    }
                }
                let frame = encode_message(&reply);
                if !write(&mut stream, &frame, idle_timer.as_mut(), &mut shutdown).await {
                    break 'conn Ending::Drain(CLOSE_NORMAL);
                }
            }
        }
        if let Some(error) = error {
            if let FrameError::TooBig { .. } = error {
                metrics::counter!(metric::PARSE_ERRORS).increment(1);
                metrics::counter!(metric::DROPPED, "reason" => "ws_too_large").increment(1);
            } else {
                metrics::counter!(metric::DROPPED, "reason" => "ws_protocol").increment(1);
            }
            tracing::debug!(%peer, %error, "WebSocket connection refused");
            break Ending::Refused(error);
        }
    };
    transports.connection_closed(transport, peer, id);
    drop(tx);
    let close = match ending {
        Ending::PeerClosed(code) => encode_close_reply(code),
        Ending::Refused(error) => encode_close(error.close_code(), error.close_reason()),
        Ending::Drain(code) => {
            // What is queued, and the replies of the messages still in
            // flight, before the close.
            while let Some(bytes) = rx.recv().await {
                if stream.write_all(&encode_message(&bytes)).await.is_err() {
                    break;
                }
            }
            encode_close(code, "")
        }
    };
    drop(rx);
    // The close, then the end of the stream (for TLS its close_notify):
    // bounded, for a peer that reads nothing any more.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        stream.write_all(&close).await?;
        stream.shutdown().await
    })
    .await;
}

/// Writes one frame on `stream`; `false` when the connection is done: the
/// write failed, or the peer took nothing until the connection went idle
/// or the node shut down.
async fn write<S>(
    stream: &mut S,
    frame: &[u8],
    idle_timer: std::pin::Pin<&mut tokio::time::Sleep>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> bool
where
    S: AsyncWrite + Unpin,
{
    let send = async {
        stream.write_all(frame).await?;
        stream.flush().await
    };
    tokio::select! {
        sent = send => sent.is_ok(),
        _ = idle_timer => false,
        _ = shutdown.changed() => false,
    }
}

/// Counts a message for a WebSocket peer that has no open connection: it
/// cannot be delivered (the client must reconnect and register again).
pub(super) fn undeliverable(flow: &Flow) {
    metrics::counter!(metric::DROPPED, "reason" => "ws_no_connection").increment(1);
    tracing::debug!(remote = %flow.remote, transport = flow.transport.as_str(), "no open WebSocket connection for the message");
}
