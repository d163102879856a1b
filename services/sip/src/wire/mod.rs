//! The SIP wire format: parsing and writing messages (RFC 3261 s.7, s.20,
//! s.25), stream framing for connection-oriented transports, WebSocket
//! framing (RFC 6455, the server side), and the responses this server
//! writes. Knows nothing of transactions, calls or sockets.

pub mod frame;
mod lexical;
pub mod message;
pub mod response;
mod values;
pub mod websocket;
