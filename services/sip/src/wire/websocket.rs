//! WebSocket framing (RFC 6455 s.5), the server side, sans-IO: client
//! frames in, events out; server frames written as bytes.
//!
//! The gateway's WebSocket transport (RFC 7118) reads a connection into a
//! scratch buffer of its own and feeds what it read to a [`Deframer`], which
//! keeps only the bytes of a frame not complete yet and the payloads of a
//! fragmented message in progress. Between messages it holds no buffer: an
//! idle connection, the usual state of a registered browser phone, costs
//! the few words of the struct (a codec with a read buffer and a write
//! buffer kept their capacity on every idle connection).
//!
//! What the server side enforces, each with the close code it answers:
//! - every client frame is masked, no reserved bit is set (no extension is
//!   negotiated), the opcode is one RFC 6455 defines; control frames are
//!   not fragmented and carry at most 125 bytes; continuation frames come
//!   only inside a fragmented message and a new message only outside one;
//!   a 64-bit length has its top bit clear; a close frame's payload is
//!   empty or a valid code and a UTF-8 reason: else 1002 (protocol error);
//! - a text message is UTF-8 (checked on the whole message): else 1007;
//! - a message (all its fragments) is at most the configured size: else
//!   1009, as soon as a frame header announces more, before its payload is
//!   buffered.
//!
//! After an error or a close frame the deframer takes nothing more: the
//! connection is closing.

use bytes::Bytes;

/// Close code: normal closure.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code: the server is going away (shutting down).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: the peer broke the protocol.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code: a text message that is not UTF-8.
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// Close code: a message over the size limit.
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Largest payload of a control frame (RFC 6455 s.5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// What a client's frames amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete text message, valid UTF-8.
    Text(Bytes),
    /// A complete binary message.
    Binary(Bytes),
    /// A ping: answer with a pong carrying the same payload.
    Ping(Bytes),
    /// A pong (an answer to a ping, or unsolicited): nothing to do.
    Pong(Bytes),
    /// The peer closes: `code` is `None` for an empty close frame. Answer
    /// with a close frame and end the connection.
    Close { code: Option<u16>, reason: String },
}

/// Why a client's byte stream is refused; the connection is closed with
/// [`close_code`](Self::close_code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    #[error("WebSocket text message is not UTF-8")]
    InvalidUtf8,
    #[error("WebSocket message of {size} bytes over the limit of {max}")]
    TooBig { size: u64, max: usize },
}

impl FrameError {
    /// The close code that answers this error (RFC 6455 s.7.4.1).
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::Protocol(_) => CLOSE_PROTOCOL_ERROR,
            FrameError::InvalidUtf8 => CLOSE_INVALID_DATA,
            FrameError::TooBig { .. } => CLOSE_TOO_BIG,
        }
    }

    /// The close frame's reason: short, no detail of the peer's input.
    pub fn close_reason(&self) -> &'static str {
        match self {
            FrameError::Protocol(_) => "protocol error",
            FrameError::InvalidUtf8 => "invalid UTF-8",
            FrameError::TooBig { .. } => "message too big",
        }
    }
}

/// A frame's opcode (RFC 6455 s.5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// A parsed frame header.
struct Header {
    fin: bool,
    opcode: OpCode,
    mask: [u8; 4],
    /// Bytes of the header, mask included.
    header_len: usize,
    payload_len: usize,
}

/// What [`parse_header`] found at the start of a buffer.
enum Parsed {
    /// Not enough bytes for the header yet.
    Incomplete,
    Header(Header),
}

/// Turns a client's byte stream into [`Event`]s; see the module comment.
#[derive(Debug)]
pub struct Deframer {
    /// Largest message (all fragments together), in bytes.
    max_message: usize,
    /// The start of a frame whose bytes have not all come yet; empty (and
    /// unallocated) between frames.
    partial: Vec<u8>,
    /// The unmasked payloads of a fragmented message's frames so far;
    /// unallocated outside a fragmented message.
    fragments: Vec<u8>,
    /// The opcode of the fragmented message in progress (text or binary).
    fragmented: Option<OpCode>,
    /// A close frame came or an error was found: nothing more is read.
    done: bool,
}

impl Deframer {
    /// A deframer for messages of at most `max_message` bytes.
    pub fn new(max_message: usize) -> Deframer {
        Deframer {
            max_message,
            partial: Vec::new(),
            fragments: Vec::new(),
            fragmented: None,
            done: false,
        }
    }

    /// Whether the deframer holds no buffer (nothing partial is pending).
    pub fn is_idle(&self) -> bool {
        self.partial.capacity() == 0 && self.fragments.capacity() == 0
    }

    /// Feeds the next bytes of the stream; the events of the frames they
    /// complete are appended to `events`, in order. On an error, the events
    /// before the offending frame have been appended; the connection must
    /// then be closed with the error's code, and later input is ignored, as
    /// is input after a close frame.
    pub fn push(&mut self, input: &[u8], events: &mut Vec<Event>) -> Result<(), FrameError> {
        if self.done {
            return Ok(());
        }
        let result = if self.partial.is_empty() {
            let (used, result) = self.parse(input, events);
            if result.is_ok() && used < input.len() && !self.done {
                self.keep_partial(&input[used..]);
            }
            result
        } else {
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(input);
            let (used, result) = self.parse(&buf, events);
            if result.is_ok() && used < buf.len() && !self.done {
                buf.drain(..used);
                self.partial = buf;
            }
            // Else `buf` is dropped: no buffer between frames.
            result
        };
        if result.is_err() {
            self.done = true;
            self.partial = Vec::new();
            self.fragments = Vec::new();
        }
        result
    }

    /// Keeps the start of an incomplete frame. No room is reserved for
    /// the length its header announces: a header alone must not make the
    /// node allocate up to the limit.
    fn keep_partial(&mut self, rest: &[u8]) {
        self.partial = rest.to_vec();
    }

    /// Parses the complete frames at the start of `buf`: how many bytes
    /// they took, and whether a frame was refused.
    fn parse(&mut self, buf: &[u8], events: &mut Vec<Event>) -> (usize, Result<(), FrameError>) {
        let mut used = 0;
        while used < buf.len() && !self.done {
            let rest = &buf[used..];
            let header = match parse_header(rest) {
                Ok(Parsed::Incomplete) => break,
                Ok(Parsed::Header(h)) => h,
                Err(e) => return (used, Err(e)),
            };
            if let Err(e) = self.check_sequence(&header) {
                return (used, Err(e));
            }
            let end = header.header_len + header.payload_len;
            if rest.len() < end {
                break;
            }
            let mut payload = rest[header.header_len..end].to_vec();
            unmask(&mut payload, header.mask);
            used += end;
            if let Err(e) = self.frame(header, payload, events) {
                return (used, Err(e));
            }
        }
        (used, Ok(()))
    }

    /// The checks that depend on what came before: message order and the
    /// size of the message so far.
    fn check_sequence(&self, h: &Header) -> Result<(), FrameError> {
        match h.opcode {
            OpCode::Continuation if self.fragmented.is_none() => {
                return Err(FrameError::Protocol("continuation frame outside a message"))
            }
            OpCode::Text | OpCode::Binary if self.fragmented.is_some() => {
                return Err(FrameError::Protocol(
                    "new message inside a fragmented message",
                ))
            }
            _ => {}
        }
        if !h.opcode.is_control() {
            let size = self.fragments.len() as u64 + h.payload_len as u64;
            if size > self.max_message as u64 {
                return Err(FrameError::TooBig {
                    size,
                    max: self.max_message,
                });
            }
        }
        Ok(())
    }

    /// Acts on one complete, unmasked frame.
    fn frame(
        &mut self,
        h: Header,
        payload: Vec<u8>,
        events: &mut Vec<Event>,
    ) -> Result<(), FrameError> {
        match h.opcode {
            OpCode::Ping => events.push(Event::Ping(payload.into())),
            OpCode::Pong => events.push(Event::Pong(payload.into())),
            OpCode::Close => {
                events.push(close_event(&payload)?);
                self.done = true;
            }
            OpCode::Text | OpCode::Binary if h.fin => {
                events.push(message(h.opcode, payload)?);
            }
            OpCode::Text | OpCode::Binary => {
                self.fragmented = Some(h.opcode);
                self.fragments = payload;
            }
            OpCode::Continuation => {
                self.fragments.extend_from_slice(&payload);
                if h.fin {
                    let kind = self.fragmented.take().unwrap_or(OpCode::Binary);
                    let whole = std::mem::take(&mut self.fragments);
                    events.push(message(kind, whole)?);
                }
            }
        }
        Ok(())
    }
}

/// A complete message's event; a text message must be UTF-8.
fn message(kind: OpCode, payload: Vec<u8>) -> Result<Event, FrameError> {
    if kind == OpCode::Text {
        if std::str::from_utf8(&payload).is_err() {
            return Err(FrameError::InvalidUtf8);
        }
        return Ok(Event::Text(payload.into()));
    }
    Ok(Event::Binary(payload.into()))
}

/// A close frame's event: an empty payload, or a code a peer may send
/// (RFC 6455 s.7.4) and a UTF-8 reason.
fn close_event(payload: &[u8]) -> Result<Event, FrameError> {
    match payload {
        [] => Ok(Event::Close {
            code: None,
            reason: String::new(),
        }),
        [_] => Err(FrameError::Protocol("close frame with a 1-byte payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                return Err(FrameError::Protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| FrameError::InvalidUtf8)?;
            Ok(Event::Close {
                code: Some(code),
                reason: reason.to_owned(),
            })
        }
    }
}

/// The header at the start of `buf`, checked on its own: everything that
/// can be refused from the first two bytes is refused before the rest
/// comes.
fn parse_header(buf: &[u8]) -> Result<Parsed, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(Parsed::Incomplete);
    };
    let fin = b0 & 0x80 != 0;
    if b0 & 0x70 != 0 {
        return Err(FrameError::Protocol("reserved bits set"));
    }
    let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(FrameError::Protocol("unknown opcode"))?;
    if b1 & 0x80 == 0 {
        return Err(FrameError::Protocol("unmasked client frame"));
    }
    let len7 = b1 & 0x7F;
    if opcode.is_control() {
        if !fin {
            return Err(FrameError::Protocol("fragmented control frame"));
        }
        if usize::from(len7) > MAX_CONTROL_PAYLOAD {
            return Err(FrameError::Protocol("control frame over 125 bytes"));
        }
    }
    let (len_bytes, payload_len) = match len7 {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Ok(Parsed::Incomplete);
            };
            (2, u64::from(u16::from_be_bytes([b[0], b[1]])))
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(Parsed::Incomplete);
            };
            let mut be = [0u8; 8];
            be.copy_from_slice(b);
            let len = u64::from_be_bytes(be);
            if len >> 63 != 0 {
                return Err(FrameError::Protocol("64-bit length with the top bit set"));
            }
            (8, len)
        }
        n => (0, u64::from(n)),
    };
    // A length that does not fit in memory is over any limit: the
    // sequence check refuses it, as it refuses any length over the limit.
    let payload_len = usize::try_from(payload_len).unwrap_or(usize::MAX / 2);
    let mask_at = 2 + len_bytes;
    let Some(m) = buf.get(mask_at..mask_at + 4) else {
        return Ok(Parsed::Incomplete);
    };
    Ok(Parsed::Header(Header {
        fin,
        opcode,
        mask: [m[0], m[1], m[2], m[3]],
        header_len: mask_at + 4,
        payload_len,
    }))
}

/// Applies (or removes: the same operation) a frame's mask (RFC 6455
/// s.5.3).
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

/// A server frame (final, unmasked) of `opcode` carrying `payload`: the
/// header then the payload, ready to write.
pub fn encode(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = Vec::with_capacity(10 + len);
    out.push(0x80 | opcode.bits());
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

/// A SIP message as one server frame: text, but binary when the message
/// (a body) is not UTF-8.
pub fn encode_message(message: &[u8]) -> Vec<u8> {
    let opcode = if std::str::from_utf8(message).is_ok() {
        OpCode::Text
    } else {
        OpCode::Binary
    };
    encode(opcode, message)
}

/// A close frame with `code` and `reason` (cut to fit a control frame).
pub fn encode_close(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(OpCode::Close, &payload)
}

/// The close frame that answers a peer's close: its code echoed (RFC 6455
/// s.5.5.1), or an empty one for an empty close.
pub fn encode_close_reply(code: Option<u16>) -> Vec<u8> {
    match code {
        Some(code) => encode_close(code, ""),
        None => encode(OpCode::Close, &[]),
    }
}

/// A client frame (masked with `mask`), as a browser writes it: for tests
/// and fuzzing, which need the client side.
pub fn encode_client(fin: bool, opcode: OpCode, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = encode(opcode, payload);
    if !fin {
        out[0] &= 0x7F;
    }
    let header_len = out.len() - payload.len();
    out[1] |= 0x80;
    let mut masked = out.split_off(header_len);
    out.extend_from_slice(&mask);
    unmask(&mut masked, mask);
    out.extend_from_slice(&masked);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{
        Control, Data, OpCode as WsOpCode,
    };
    use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;

    const MAX: usize = 65_535;

    fn all(input: &[u8]) -> (Vec<Event>, Result<(), FrameError>) {
        let mut d = Deframer::new(MAX);
        let mut events = Vec::new();
        let r = d.push(input, &mut events);
        (events, r)
    }

    /// Feeds `input` in pieces of `chunk` bytes.
    fn chunked(input: &[u8], chunk: usize) -> (Vec<Event>, Result<(), FrameError>, Deframer) {
        let mut d = Deframer::new(MAX);
        let mut events = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            if let Err(e) = d.push(piece, &mut events) {
                return (events, Err(e), d);
            }
        }
        (events, Ok(()), d)
    }

    /// A frame as tungstenite's client writes it (masked).
    fn tungstenite_client(opcode: WsOpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let frame = match opcode {
            WsOpCode::Control(Control::Ping) => WsFrame::ping(payload.to_vec()),
            WsOpCode::Control(Control::Pong) => WsFrame::pong(payload.to_vec()),
            _ => WsFrame::message(payload.to_vec(), opcode, fin),
        };
        masked(frame)
    }

    /// Writes a tungstenite frame as a client does, masked.
    fn masked(mut frame: WsFrame) -> Vec<u8> {
        frame.header_mut().mask = Some([0xA5, 0x17, 0x3C, 0xE1]);
        let mut out = Vec::new();
        frame.format(&mut out).unwrap();
        out
    }

    /// RFC 6455 s.5.7, the examples with a mask (a server reads only
    /// masked frames).
    #[test]
    fn rfc6455_examples() {
        // A single-frame masked text message "Hello".
        let hello = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(
            all(&hello).0,
            vec![Event::Text(Bytes::from_static(b"Hello"))]
        );
        // The unmasked single-frame text message is what the server writes.
        assert_eq!(
            encode(OpCode::Text, b"Hello"),
            [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]
        );
        // ...and a client must not send it.
        assert_eq!(
            all(&[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]).1,
            Err(FrameError::Protocol("unmasked client frame"))
        );
        // A fragmented unmasked text message "Hel" + "lo", masked.
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut fragmented = encode_client(false, OpCode::Text, b"Hel", mask);
        fragmented.extend(encode_client(true, OpCode::Continuation, b"lo", mask));
        assert_eq!(fragmented[0], 0x01);
        assert_eq!(fragmented[9], 0x80);
        assert_eq!(
            all(&fragmented).0,
            vec![Event::Text(Bytes::from_static(b"Hello"))]
        );
        // Ping "Hello" (unmasked in the RFC, so the server's pong shape),
        // and the masked Pong of the RFC.
        assert_eq!(
            encode(OpCode::Ping, b"Hello"),
            [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]
        );
        let pong = [
            0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(
            all(&pong).0,
            vec![Event::Pong(Bytes::from_static(b"Hello"))]
        );
        // 256 bytes binary in one frame: 16-bit length.
        let data = vec![7u8; 256];
        let out = encode(OpCode::Binary, &data);
        assert_eq!(&out[..4], &[0x82, 0x7E, 0x01, 0x00]);
        let framed = encode_client(true, OpCode::Binary, &data, mask);
        assert_eq!(&framed[..4], &[0x82, 0xFE, 0x01, 0x00]);
        assert_eq!(all(&framed).0, vec![Event::Binary(data.into())]);
        // 64 KiB binary in one frame: 64-bit length (over this limit).
        let data = vec![9u8; 65_536];
        let out = encode(OpCode::Binary, &data);
        assert_eq!(
            &out[..10],
            &[0x82, 0x7F, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00]
        );
        let framed = encode_client(true, OpCode::Binary, &data, mask);
        assert_eq!(
            all(&framed[..14]).1,
            Err(FrameError::TooBig {
                size: 65_536,
                max: MAX
            })
        );
        let mut big = Deframer::new(1 << 20);
        let mut events = Vec::new();
        big.push(&framed, &mut events).unwrap();
        assert_eq!(events, vec![Event::Binary(data.into())]);
    }

    /// Frames tungstenite's client writes come out as what was sent,
    /// whatever the chunking; an idle deframer holds no buffer.
    #[test]
    fn tungstenite_frames_read_back_at_every_split() {
        let register = "REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/WSS a.invalid;branch=z9hG4bK1\r\nContent-Length: 0\r\n\r\n";
        let mut stream = tungstenite_client(WsOpCode::Data(Data::Text), true, register.as_bytes());
        stream.extend(tungstenite_client(
            WsOpCode::Control(Control::Ping),
            true,
            b"ka",
        ));
        stream.extend(tungstenite_client(
            WsOpCode::Data(Data::Binary),
            false,
            &[0xff, 0],
        ));
        stream.extend(tungstenite_client(
            WsOpCode::Control(Control::Pong),
            true,
            b"",
        ));
        stream.extend(tungstenite_client(
            WsOpCode::Data(Data::Continue),
            true,
            &[1, 2],
        ));
        let big = "x".repeat(70_000);
        let mut large = Deframer::new(100_000);
        let mut events = Vec::new();
        large
            .push(
                &tungstenite_client(WsOpCode::Data(Data::Text), true, big.as_bytes()),
                &mut events,
            )
            .unwrap();
        assert_eq!(events, vec![Event::Text(Bytes::from(big))]);
        let close = masked(WsFrame::close(Some(
            tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: 1000.into(),
                reason: "bye".into(),
            },
        )));
        stream.extend(&close);
        // Data after a close is not read.
        stream.extend(tungstenite_client(
            WsOpCode::Data(Data::Text),
            true,
            b"late",
        ));
        let expected = vec![
            Event::Text(Bytes::from(register)),
            Event::Ping(Bytes::from_static(b"ka")),
            Event::Pong(Bytes::new()),
            Event::Binary(Bytes::from_static(&[0xff, 0, 1, 2])),
            Event::Close {
                code: Some(1000),
                reason: "bye".into(),
            },
        ];
        for chunk in 1..=stream.len() {
            let (events, result, _) = chunked(&stream, chunk);
            assert_eq!(result, Ok(()), "chunk {chunk}");
            assert_eq!(events, expected, "chunk {chunk}");
        }
        // Without the close: idle (no buffer) after the last frame.
        let open = &stream[..stream.len() - close.len() - 10];
        let (_, _, d) = chunked(&open[..open.len() - 3], 5);
        assert!(!d.is_idle(), "a partial frame is kept");
        let (events, _, d) = chunked(open, 5);
        assert_eq!(events.len(), 4);
        assert!(d.is_idle());
    }

    /// Our frames read back by tungstenite's client.
    #[test]
    fn server_frames_are_read_by_tungstenite() {
        use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
        for (opcode, len) in [
            (OpCode::Text, 0),
            (OpCode::Text, 125),
            (OpCode::Binary, 126),
            (OpCode::Text, 65_535),
            (OpCode::Binary, 65_536),
            (OpCode::Ping, 5),
        ] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let framed = encode(opcode, &payload);
            let mut cursor = std::io::Cursor::new(&framed[..]);
            let (header, length) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert!(header.is_final);
            assert!(header.mask.is_none());
            assert_eq!(length, len as u64);
            assert_eq!(cursor.position() as usize + len, framed.len());
            assert_eq!(header.opcode, tungstenite_opcode(opcode));
        }
        let close = encode_close(1009, "message too big");
        assert_eq!(&close[..4], &[0x88, 17, 0x03, 0xF1]);
        assert_eq!(&close[4..], b"message too big");
        let long = "é".repeat(100);
        let close = encode_close(1000, &long);
        assert!(close.len() <= 2 + 125);
        assert!(std::str::from_utf8(&close[4..]).is_ok());
        assert_eq!(encode_close_reply(None), [0x88, 0]);
        assert_eq!(encode_message(&[0xC3, 0x28])[0], 0x82);
        assert_eq!(encode_message(b"OK")[0], 0x81);
    }

    fn tungstenite_opcode(op: OpCode) -> WsOpCode {
        match op {
            OpCode::Continuation => WsOpCode::Data(Data::Continue),
            OpCode::Text => WsOpCode::Data(Data::Text),
            OpCode::Binary => WsOpCode::Data(Data::Binary),
            OpCode::Close => WsOpCode::Control(Control::Close),
            OpCode::Ping => WsOpCode::Control(Control::Ping),
            OpCode::Pong => WsOpCode::Control(Control::Pong),
        }
    }

    #[test]
    fn malformed_frames_are_refused_with_their_close_code() {
        let m = [1, 2, 3, 4];
        let cases: Vec<(Vec<u8>, FrameError)> = vec![
            // RSV1 set (no extension negotiated).
            (
                vec![0xC1, 0x80, 1, 2, 3, 4],
                FrameError::Protocol("reserved bits set"),
            ),
            (vec![0x83, 0x80], FrameError::Protocol("unknown opcode")),
            (vec![0x8B, 0x80], FrameError::Protocol("unknown opcode")),
            (
                vec![0x81, 0x00],
                FrameError::Protocol("unmasked client frame"),
            ),
            (
                vec![0x09, 0x80],
                FrameError::Protocol("fragmented control frame"),
            ),
            (
                vec![0x89, 0xFE, 0, 126],
                FrameError::Protocol("control frame over 125 bytes"),
            ),
            (
                encode_client(true, OpCode::Continuation, b"x", m),
                FrameError::Protocol("continuation frame outside a message"),
            ),
            (
                [
                    encode_client(false, OpCode::Text, b"x", m),
                    encode_client(true, OpCode::Text, b"y", m),
                ]
                .concat(),
                FrameError::Protocol("new message inside a fragmented message"),
            ),
            (
                vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0],
                FrameError::Protocol("64-bit length with the top bit set"),
            ),
            (
                encode_client(true, OpCode::Close, &[3], m),
                FrameError::Protocol("close frame with a 1-byte payload"),
            ),
            (
                encode_client(true, OpCode::Close, &1005u16.to_be_bytes(), m),
                FrameError::Protocol("invalid close code"),
            ),
            (
                encode_client(true, OpCode::Close, &999u16.to_be_bytes(), m),
                FrameError::Protocol("invalid close code"),
            ),
            (
                encode_client(true, OpCode::Text, &[0xC3, 0x28], m),
                FrameError::InvalidUtf8,
            ),
            (
                [
                    encode_client(false, OpCode::Text, &[0xE2, 0x82], m),
                    encode_client(true, OpCode::Continuation, &[0x28], m),
                ]
                .concat(),
                FrameError::InvalidUtf8,
            ),
            (
                encode_client(true, OpCode::Close, &[0x03, 0xE8, 0xFF], m),
                FrameError::InvalidUtf8,
            ),
        ];
        for (input, expected) in cases {
            let (_, result) = all(&input);
            assert_eq!(result, Err(expected), "{input:02x?}");
        }
        assert_eq!(FrameError::Protocol("x").close_code(), CLOSE_PROTOCOL_ERROR);
        assert_eq!(FrameError::InvalidUtf8.close_code(), CLOSE_INVALID_DATA);
        // A text message split inside a UTF-8 sequence is fine.
        let mut ok = encode_client(false, OpCode::Text, &[0xE2, 0x82], m);
        ok.extend(encode_client(true, OpCode::Continuation, &[0xAC], m));
        assert_eq!(all(&ok).0, vec![Event::Text(Bytes::from("€"))]);
        // Control frames between fragments are allowed.
        let mut ok = encode_client(false, OpCode::Binary, b"a", m);
        ok.extend(encode_client(true, OpCode::Ping, b"p", m));
        ok.extend(encode_client(true, OpCode::Continuation, b"b", m));
        assert_eq!(
            all(&ok).0,
            vec![
                Event::Ping(Bytes::from_static(b"p")),
                Event::Binary(Bytes::from_static(b"ab"))
            ]
        );
    }

    /// Over the limit: refused from the header, before the payload comes,
    /// for one frame or for the sum of fragments.
    #[test]
    fn oversize_messages_are_refused_from_the_header() {
        let mut d = Deframer::new(1000);
        let mut events = Vec::new();
        let frame = encode_client(true, OpCode::Text, &[b'a'; 1001], [0; 4]);
        assert_eq!(
            d.push(&frame[..8], &mut events),
            Err(FrameError::TooBig {
                size: 1001,
                max: 1000
            })
        );
        assert!(d.is_idle());
        // Input after the error is ignored.
        d.push(
            &encode_client(true, OpCode::Text, b"a", [0; 4]),
            &mut events,
        )
        .unwrap();
        assert!(events.is_empty());

        let mut d = Deframer::new(1000);
        let first = encode_client(false, OpCode::Text, &[b'a'; 600], [9; 4]);
        let second = encode_client(true, OpCode::Continuation, &[b'a'; 401], [9; 4]);
        d.push(&first, &mut events).unwrap();
        let refused = d.push(&second, &mut events).unwrap_err();
        assert_eq!(refused.close_code(), CLOSE_TOO_BIG);
        // Exactly the limit is fine.
        let mut d = Deframer::new(1000);
        d.push(&first, &mut events).unwrap();
        let second = encode_client(true, OpCode::Continuation, &[b'a'; 400], [9; 4]);
        d.push(&second, &mut events).unwrap();
        assert_eq!(events.len(), 1);
    }

    proptest! {
        /// Any bytes: no panic, and the same events whatever the chunking.
        #[test]
        fn arbitrary_input_is_framed_the_same_in_any_chunks(
            input in proptest::collection::vec(any::<u8>(), 0..600),
            chunk in 1usize..64,
        ) {
            let (whole, whole_result) = all(&input);
            let (pieces, pieces_result, _) = chunked(&input, chunk);
            prop_assert_eq!(whole, pieces);
            prop_assert_eq!(whole_result, pieces_result);
        }

        /// Any sequence of valid client frames reads back as sent.
        #[test]
        fn valid_frames_read_back(
            messages in proptest::collection::vec(
                (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300), any::<[u8; 4]>()),
                1..8,
            ),
            chunk in 1usize..512,
        ) {
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            for (binary, payload, mask) in &messages {
                if *binary {
                    stream.extend(encode_client(true, OpCode::Binary, payload, *mask));
                    expected.push(Event::Binary(Bytes::from(payload.clone())));
                } else {
                    let text: String = payload.iter().map(|b| char::from(b'a' + b % 26)).collect();
                    stream.extend(encode_client(true, OpCode::Text, text.as_bytes(), *mask));
                    expected.push(Event::Text(Bytes::from(text)));
                }
            }
            let (events, result, d) = chunked(&stream, chunk);
            prop_assert_eq!(result, Ok(()));
            prop_assert_eq!(events, expected);
            prop_assert!(d.is_idle());
        }
    }
}
