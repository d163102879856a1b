//! SIP over WebSocket (RFC 7118), plain (WS) and over TLS (WSS), for
//! browser phones.
//!
//! The upgrade is accepted only for the `sip` subprotocol
//! (`Sec-WebSocket-Protocol: sip`); anything else, or none, gets an HTTP
//! 400 saying so. Each WebSocket message (text or binary) is one SIP
//! message (RFC 7118 s.5.1): no stream framing. A message or frame larger
//! than the SIP maximum message size closes the connection with 1009
//! (message too big). Pings are answered with pongs by the codec; a
//! connection with no traffic for the idle time is closed.
//!
//! A WebSocket client cannot be connected to: it is reached only on the
//! connection it opened, which the [`Connections`](super::stream) table
//! finds by id or by (transport, peer address) — the address a
//! registration records as its source. Its Via and Contact hosts are
//! made-up `.invalid` names and are never used.
//!
//! tokio-tungstenite is the codec, configured for many idle connections:
//! a 1 KiB read buffer (it defaults to 128 KiB, allocated up front; it
//! grows to fit a longer message) and no write buffering (each SIP message
//! is written at once). The TLS handshake and the upgrade run in a boxed
//! future of their own, freed once the connection is up: a future is as
//! large as its largest state, and the connection's long-lived task would
//! otherwise keep their space (the TLS stream inline, twice) for as long
//! as the connection lives. One task serves a connection, reading and
//! writing (a second task for writes, and the split halves' shared lock,
//! cost memory on every idle connection), and its send queue holds no
//! buffer while empty (`super::send_queue`). `loadtest/transport-memory.sh`
//! measures what a held connection costs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::limits::ConnectionLimits;
use super::stream::{accept_admitted, dispatch, Admitted, NewConnection, StreamContext};
use super::tls::SecureListener;
use super::{Flow, Transport};
use crate::core::metric;

/// The read buffer of one WebSocket connection (see the module comment):
/// most SIP messages fit, and it stays allocated on every idle connection.
const READ_BUFFER: usize = 1024;

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
/// `handshake_timeout`; `None` when refused, failed or timed out. Boxed:
/// see the module comment.
async fn upgrade<S>(
    stream: S,
    peer: SocketAddr,
    max: usize,
    handshake_timeout: Duration,
) -> Option<Box<WebSocketStream<S>>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let upgrade =
        tokio_tungstenite::accept_hdr_async_with_config(stream, choose_subprotocol, Some(config));
    match tokio::time::timeout(handshake_timeout, upgrade).await {
        Ok(Ok(ws)) => Some(Box::new(ws)),
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

/// Serves SIP on the upgraded `ws` until the peer closes it, it stays idle
/// for the configured time, it breaks the protocol or a limit, or the node
/// shuts down.
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
    mut ws: Box<WebSocketStream<S>>,
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
    let permits = Arc::new(Semaphore::new(
        core.config().max_tcp_in_flight_per_connection.max(1),
    ));
    // The idle time counts from the last message read; writes do not
    // restart it.
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    let mut close = None;
    'conn: loop {
        let next = tokio::select! {
            _ = shutdown.changed() => break,
            _ = &mut idle_timer => break,
            queued = rx.recv() => {
                // `None` cannot come while `tx` is held here.
                let Some(bytes) = queued else { break };
                if !write(&mut ws, bytes, idle_timer.as_mut(), &mut shutdown).await {
                    break;
                }
                continue;
            }
            next = ws.next() => next,
        };
        idle_timer
            .as_mut()
            .reset(tokio::time::Instant::now() + idle);
        let data: Bytes = match next {
            None => break,
            Some(Ok(Message::Text(text))) => text.into(),
            Some(Ok(Message::Binary(data))) => data,
            // Pings are answered by the codec; a close is answered by it
            // too, and the stream then ends.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_)))
            | Some(Ok(Message::Frame(_))) => continue,
            Some(Err(WsError::Capacity(e))) => {
                metrics::counter!(metric::PARSE_ERRORS).increment(1);
                metrics::counter!(metric::DROPPED, "reason" => "ws_too_large").increment(1);
                tracing::debug!(%peer, error = %e, "WebSocket message over the size limit");
                close = Some(CloseFrame {
                    code: CloseCode::Size,
                    reason: Utf8Bytes::from_static("message too big"),
                });
                break;
            }
            Some(Err(e)) => {
                metrics::counter!(metric::DROPPED, "reason" => "ws_protocol").increment(1);
                tracing::debug!(%peer, error = %e, "WebSocket protocol error");
                break;
            }
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
                    Err(_) => break 'conn,
                },
                queued = rx.recv() => {
                    let Some(bytes) = queued else { break 'conn };
                    if !write(&mut ws, bytes, idle_timer.as_mut(), &mut shutdown).await {
                        break 'conn;
                    }
                }
            }
        };
        if let Some(reply) = dispatch(&core, data, flow, permit, &tx, &in_flight) {
            // After what was queued before it, as if it went through the
            // queue too.
            while let Some(bytes) = rx.try_recv() {
                if !write(&mut ws, bytes, idle_timer.as_mut(), &mut shutdown).await {
                    break 'conn;
                }
            }
            if !write(&mut ws, reply, idle_timer.as_mut(), &mut shutdown).await {
                break;
            }
        }
    }
    transports.connection_closed(transport, peer, id);
    drop(tx);
    match close {
        Some(frame) => {
            let _ = ws.send(Message::Close(Some(frame))).await;
        }
        // Ended without a close of ours: write what is queued, and the
        // replies of the messages still in flight.
        None => {
            while let Some(bytes) = rx.recv().await {
                if ws.send(message_of(bytes)).await.is_err() {
                    break;
                }
            }
        }
    }
    drop(rx);
    let _ = SinkExt::close(&mut *ws).await;
}

/// A SIP message as a WebSocket message: text, but binary when a body is
/// not UTF-8.
fn message_of(bytes: Bytes) -> Message {
    match Utf8Bytes::try_from(bytes.clone()) {
        Ok(text) => Message::Text(text),
        Err(_) => Message::Binary(bytes),
    }
}

/// Writes one SIP message on `ws`; `false` when the connection is done:
/// the write failed, or the peer took nothing until the connection went
/// idle or the node shut down.
async fn write<S>(
    ws: &mut WebSocketStream<S>,
    bytes: Bytes,
    idle_timer: std::pin::Pin<&mut tokio::time::Sleep>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::select! {
        sent = ws.send(message_of(bytes)) => sent.is_ok(),
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
