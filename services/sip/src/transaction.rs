//! Sans-IO non-INVITE server transactions (RFC 3261 s.17.2.2).
//!
//! The table decides, for each received request, whether it starts a new
//! transaction, is a retransmission to absorb (the first copy is still being
//! processed) or one to answer with the last response sent. It never touches
//! a socket or a clock: the caller passes `now` and sends the bytes; in the
//! quinn-proto style, [`ServerTransactions::poll_timeout`] tells when
//! [`ServerTransactions::handle_timeout`] has work to do.
//!
//! Memory is bounded twice: by the number of transactions and by the bytes
//! of stored responses. When a bound is hit, the completed transaction closest
//! to its Timer J expiry goes first (a later retransmission of it is then
//! processed again, which the registrar tolerates: REGISTER is idempotent
//! within a Call-ID/CSeq, and a challenge is simply re-issued).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher as _, BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::wire::message::{Message, Method, ParseError, StartLine, Via};

/// RTT estimate (RFC 3261 s.17.1.1.1).
pub const T1: Duration = Duration::from_millis(500);
/// Maximum retransmit interval for non-INVITE requests and INVITE responses.
pub const T2: Duration = Duration::from_secs(4);
/// Maximum duration a message remains in the network.
pub const T4: Duration = Duration::from_secs(5);
/// Timer J over unreliable transports: 64*T1, how long a completed non-INVITE
/// server transaction keeps answering retransmissions.
pub const TIMER_J_UNRELIABLE: Duration = Duration::from_millis(64 * 500);
/// Timer J over reliable transports: the client does not retransmit.
pub const TIMER_J_RELIABLE: Duration = Duration::ZERO;

/// The RFC 3261 branch prefix ("magic cookie").
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// Identifies a server transaction (RFC 3261 s.17.2.3; RFC 2543 fallback).
///
/// The text is hashed once, when the key is built, with a per-process
/// random SipHash key (HashDoS resistance: branches come from the network);
/// the table and the shard choice reuse that hash.
#[derive(Debug, Clone)]
pub struct Key {
    hash: u64,
    text: Arc<str>,
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.hash == other.hash && self.text == other.text
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Longest key assembled on the stack (longer ones take a detour via a String).
const KEY_STACK: usize = 192;

impl Key {
    fn new(text: &str) -> Key {
        static SEED: OnceLock<RandomState> = OnceLock::new();
        let hash = SEED.get_or_init(RandomState::new).hash_one(text);
        Key {
            hash,
            text: Arc::from(text),
        }
    }

    /// The key for a request. For ACK the method is INVITE (an ACK matches
    /// the INVITE transaction it acknowledges).
    pub fn from_request(msg: &Message<'_>) -> Result<Key, ParseError> {
        let via = msg.top_via()?;
        Key::from_request_via(msg, &via)
    }

    /// [`Key::from_request`] with the top Via already parsed.
    pub fn from_request_via(msg: &Message<'_>, via: &Via<'_>) -> Result<Key, ParseError> {
        let StartLine::Request {
            method,
            method_text,
            uri,
        } = &msg.start
        else {
            return Err(ParseError::StartLine);
        };
        let m = if *method == Method::Ack {
            "INVITE"
        } else {
            method_text
        };
        match via.branch() {
            Some(b) if b.starts_with(MAGIC_COOKIE) => {
                // method NUL branch NUL sent-by (lower-case host[:port]).
                let mut buf = [0u8; KEY_STACK];
                let mut port = [0u8; 5];
                let port = match via.port {
                    Some(p) => {
                        let mut i = port.len();
                        let mut v = p;
                        loop {
                            i -= 1;
                            port[i] = b'0' + (v % 10) as u8;
                            v /= 10;
                            if v == 0 {
                                break;
                            }
                        }
                        &port[i..]
                    }
                    None => &[][..],
                };
                let len = m.len()
                    + b.len()
                    + via.host.len()
                    + 2
                    + port.len()
                    + usize::from(via.port.is_some());
                if len > KEY_STACK {
                    let mut s = String::with_capacity(len);
                    s.push_str(m);
                    s.push('\u{0}');
                    s.push_str(b);
                    s.push('\u{0}');
                    s.push_str(&via.sent_by());
                    return Ok(Key::new(&s));
                }
                fn put(buf: &mut [u8], n: &mut usize, bytes: &[u8]) {
                    buf[*n..*n + bytes.len()].copy_from_slice(bytes);
                    *n += bytes.len();
                }
                let mut n = 0;
                put(&mut buf, &mut n, m.as_bytes());
                put(&mut buf, &mut n, &[0]);
                put(&mut buf, &mut n, b.as_bytes());
                put(&mut buf, &mut n, &[0]);
                let host_at = n;
                put(&mut buf, &mut n, via.host.as_bytes());
                buf[host_at..n].make_ascii_lowercase();
                if via.port.is_some() {
                    put(&mut buf, &mut n, b":");
                    put(&mut buf, &mut n, port);
                }
                // Built from &strs and ASCII: always UTF-8.
                let text = std::str::from_utf8(&buf[..n]).map_err(|_| ParseError::Header("Via"))?;
                Ok(Key::new(text))
            }
            _ => {
                // RFC 2543 (s.17.2.3, last paragraphs): Request-URI, To tag,
                // From tag, Call-ID, CSeq and the top Via identify it.
                let to_tag = msg.to()?.tag().unwrap_or("");
                let from_tag = msg.from()?.tag().unwrap_or("");
                let cseq = msg.cseq()?;
                let top = msg
                    .list(crate::wire::message::Name::Via)
                    .next()
                    .unwrap_or("");
                let uri = if *method == Method::Ack { "" } else { uri };
                let s = format!(
                    "2543\u{0}{m}\u{0}{uri}\u{0}{to_tag}\u{0}{from_tag}\u{0}{}\u{0}{}\u{0}{top}",
                    msg.call_id()?,
                    cseq.seq,
                );
                Ok(Key::new(&s))
            }
        }
    }

    /// The key of the INVITE transaction a CANCEL cancels (RFC 3261 s.9.2:
    /// same branch and sent-by; RFC 2543 clients: same Call-ID, tags, CSeq
    /// number and top Via).
    pub fn invite_of_cancel(msg: &Message<'_>, via: &Via<'_>) -> Result<Key, ParseError> {
        let mut invite = msg.clone();
        if let StartLine::Request {
            method,
            method_text,
            ..
        } = &mut invite.start
        {
            *method = Method::Invite;
            *method_text = "INVITE";
        }
        Key::from_request_via(&invite, via)
    }

    /// The branch (or a stand-in) for tracing.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The key's hash (also used to pick a shard of the table).
    pub fn hash_value(&self) -> u64 {
        self.hash
    }
}

/// Passes a [`Key`]'s precomputed hash through.
#[derive(Default, Clone, Copy)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used by `Key`; a plain FNV-1a for completeness.
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type KeyMap<V> = HashMap<Key, V, BuildHasherDefault<KeyHasher>>;

/// What to do with a received request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// A new transaction: process it, then call [`ServerTransactions::respond`].
    New,
    /// A retransmission while the first copy is processed and nothing was
    /// answered yet: absorb it.
    Absorb,
    /// A retransmission: send this (the last response) again.
    Retransmit(Bytes),
    /// The table is full of transactions still being processed: answer 503
    /// without creating a transaction.
    Overloaded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Trying,
    Proceeding,
    Completed,
}

struct Entry {
    state: State,
    last: Option<Bytes>,
    /// Matches the expiry queue item that is current for this entry.
    generation: u64,
}

/// The non-INVITE server transaction table.
pub struct ServerTransactions {
    map: KeyMap<Entry>,
    expiries: VecDeque<(Instant, Key, u64)>,
    stored_bytes: usize,
    max_entries: usize,
    max_bytes: usize,
    next_generation: u64,
}

impl ServerTransactions {
    pub fn new(max_entries: usize, max_bytes: usize) -> ServerTransactions {
        ServerTransactions {
            map: KeyMap::default(),
            expiries: VecDeque::new(),
            stored_bytes: 0,
            max_entries: max_entries.max(1),
            max_bytes,
            next_generation: 0,
        }
    }

    /// A request arrived.
    pub fn handle_request(&mut self, key: &Key, now: Instant) -> Disposition {
        self.handle_timeout(now);
        if let Some(e) = self.map.get(key) {
            return match (&e.state, &e.last) {
                (State::Trying, _) | (_, None) => Disposition::Absorb,
                (_, Some(b)) => Disposition::Retransmit(b.clone()),
            };
        }
        if self.map.len() >= self.max_entries {
            self.evict_one();
            if self.map.len() >= self.max_entries {
                return Disposition::Overloaded;
            }
        }
        let generation = self.bump();
        self.map.insert(
            key.clone(),
            Entry {
                state: State::Trying,
                last: None,
                generation,
            },
        );
        Disposition::New
    }

    /// The transaction user sends a response (`bytes`) with `status`.
    /// Final responses complete the transaction: it keeps answering
    /// retransmissions for Timer J (`reliable` selects its value).
    pub fn respond(&mut self, key: &Key, status: u16, bytes: Bytes, reliable: bool, now: Instant) {
        let generation = self.bump();
        let Some(e) = self.map.get_mut(key) else {
            return;
        };
        if e.state == State::Completed {
            // RFC 3261 s.17.2.2: further final responses are discarded.
            return;
        }
        if let Some(old) = e.last.take() {
            self.stored_bytes -= old.len();
        }
        if status < 200 {
            e.state = State::Proceeding;
            self.stored_bytes += bytes.len();
            e.last = Some(bytes);
            return;
        }
        let timer_j = if reliable {
            TIMER_J_RELIABLE
        } else {
            TIMER_J_UNRELIABLE
        };
        if timer_j.is_zero() {
            self.map.remove(key);
            return;
        }
        e.state = State::Completed;
        e.generation = generation;
        self.stored_bytes += bytes.len();
        e.last = Some(bytes);
        self.expiries
            .push_back((now + timer_j, key.clone(), generation));
        while self.stored_bytes > self.max_bytes {
            if !self.evict_one() {
                break;
            }
        }
    }

    /// Whether a transaction with this key is live (an ACK for a final
    /// response we sent to an INVITE matches it and is absorbed).
    pub fn contains(&self, key: &Key) -> bool {
        self.map.contains_key(key)
    }

    /// The transaction user gave up without a response (e.g. it dropped the
    /// request): forget the transaction.
    pub fn abandon(&mut self, key: &Key) {
        if let Some(e) = self.map.get(key) {
            if e.state != State::Completed {
                if let Some(e) = self.map.remove(key) {
                    if let Some(b) = e.last {
                        self.stored_bytes -= b.len();
                    }
                }
            }
        }
    }

    /// When [`Self::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.expiries.front().map(|(t, _, _)| *t)
    }

    /// Terminates the transactions whose Timer J fired.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut evicted = false;
        while let Some((t, _, _)) = self.expiries.front() {
            if *t > now {
                break;
            }
            evicted |= self.evict_one();
        }
        if evicted {
            self.shrink_if_sparse();
        }
    }

    /// Gives back the memory of a burst once it is over: a hash map keeps
    /// the capacity of its largest size, so after 100,000 registrations in
    /// a minute the empty tables held ~25 MB (heaptrack, docs/performance.md
    /// session 4). Shrinking when a quarter full costs one rehash of what is
    /// left, at most once per halving.
    fn shrink_if_sparse(&mut self) {
        const KEEP: usize = 1024;
        if self.map.capacity() > KEEP && self.map.len() < self.map.capacity() / 4 {
            self.map.shrink_to((self.map.len() * 2).max(KEEP));
        }
        if self.expiries.capacity() > KEEP && self.expiries.len() < self.expiries.capacity() / 4 {
            self.expiries.shrink_to((self.expiries.len() * 2).max(KEEP));
        }
    }

    /// Removes the completed transaction that expires first. Returns false
    /// when there is none.
    fn evict_one(&mut self) -> bool {
        while let Some((_, key, generation)) = self.expiries.pop_front() {
            let current = self
                .map
                .get(&key)
                .is_some_and(|e| e.generation == generation && e.state == State::Completed);
            if current {
                if let Some(e) = self.map.remove(&key) {
                    if let Some(b) = e.last {
                        self.stored_bytes -= b.len();
                    }
                }
                return true;
            }
        }
        false
    }

    fn bump(&mut self) -> u64 {
        self.next_generation = self.next_generation.wrapping_add(1);
        self.next_generation
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn stored_bytes(&self) -> usize {
        self.stored_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(branch: &str, method: &str, host: &str) -> String {
        format!(
            "{method} sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP {host};branch={branch}\r\n\
             From: <sip:a@example.test>;tag=1\r\nTo: <sip:a@example.test>\r\nCall-ID: c\r\n\
             CSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
        )
    }

    fn key(raw: &str) -> Key {
        Key::from_request(&Message::parse(raw.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn matching_rules() {
        let a = key(&req("z9hG4bK1", "REGISTER", "h:5060"));
        assert_eq!(a, key(&req("z9hG4bK1", "REGISTER", "H:5060")));
        assert_ne!(a, key(&req("z9hG4bK2", "REGISTER", "h:5060")));
        assert_ne!(a, key(&req("z9hG4bK1", "OPTIONS", "h:5060")));
        assert_ne!(a, key(&req("z9hG4bK1", "REGISTER", "h:5061")));
        // RFC 2543 branch: matched on the other fields.
        let b = key(&req("old1", "REGISTER", "h:5060"));
        assert_eq!(b, key(&req("old1", "REGISTER", "h:5060")));
        assert_ne!(b, key(&req("old2", "REGISTER", "h:5060")));
    }

    #[test]
    fn lifecycle_unreliable() {
        let mut t = ServerTransactions::new(100, 1 << 20);
        let k = key(&req("z9hG4bK1", "REGISTER", "h"));
        let now = Instant::now();
        assert_eq!(t.handle_request(&k, now), Disposition::New);
        assert_eq!(t.handle_request(&k, now), Disposition::Absorb);
        t.respond(&k, 100, Bytes::from_static(b"100"), false, now);
        assert_eq!(
            t.handle_request(&k, now),
            Disposition::Retransmit(Bytes::from_static(b"100"))
        );
        t.respond(&k, 200, Bytes::from_static(b"200"), false, now);
        // A second final response is ignored.
        t.respond(&k, 500, Bytes::from_static(b"500"), false, now);
        assert_eq!(
            t.handle_request(&k, now + T4),
            Disposition::Retransmit(Bytes::from_static(b"200"))
        );
        assert_eq!(t.poll_timeout(), Some(now + TIMER_J_UNRELIABLE));
        t.handle_timeout(now + TIMER_J_UNRELIABLE);
        assert!(t.is_empty());
        assert_eq!(t.stored_bytes(), 0);
        assert_eq!(
            t.handle_request(&k, now + TIMER_J_UNRELIABLE),
            Disposition::New
        );
    }

    #[test]
    fn reliable_terminates_at_once() {
        let mut t = ServerTransactions::new(100, 1 << 20);
        let k = key(&req("z9hG4bK1", "REGISTER", "h"));
        let now = Instant::now();
        assert_eq!(t.handle_request(&k, now), Disposition::New);
        t.respond(&k, 401, Bytes::from_static(b"401"), true, now);
        assert!(t.is_empty());
    }

    #[test]
    fn bounded_by_entries_and_bytes() {
        let now = Instant::now();
        let mut t = ServerTransactions::new(10, 1 << 20);
        for i in 0..10 {
            let k = key(&req(&format!("z9hG4bK{i}"), "REGISTER", "h"));
            assert_eq!(t.handle_request(&k, now), Disposition::New);
        }
        // All ten are in progress: no room.
        let k = key(&req("z9hG4bKx", "REGISTER", "h"));
        assert_eq!(t.handle_request(&k, now), Disposition::Overloaded);
        let k0 = key(&req("z9hG4bK0", "REGISTER", "h"));
        t.respond(&k0, 200, Bytes::from_static(b"ok"), false, now);
        assert_eq!(t.handle_request(&k, now), Disposition::New);
        assert_eq!(t.len(), 10);

        let mut t = ServerTransactions::new(1000, 100);
        for i in 0..50 {
            let k = key(&req(&format!("z9hG4bK{i}"), "REGISTER", "h"));
            t.handle_request(&k, now);
            t.respond(&k, 200, Bytes::from(vec![b'x'; 30]), false, now);
            assert!(t.stored_bytes() <= 100);
        }
        assert!(t.len() <= 4);
    }

    #[test]
    fn a_burst_gives_its_memory_back_once_it_expired() {
        let now = Instant::now();
        let mut t = ServerTransactions::new(100_000, 1 << 30);
        for i in 0..20_000 {
            let k = key(&req(&format!("z9hG4bK{i}"), "REGISTER", "h"));
            assert_eq!(t.handle_request(&k, now), Disposition::New);
            t.respond(&k, 200, Bytes::from_static(b"ok"), false, now);
        }
        assert!(t.map.capacity() >= 20_000);
        // One transaction of the quiet time after the burst.
        let later = now + TIMER_J_UNRELIABLE;
        let k = key(&req("z9hG4bKquiet", "REGISTER", "h"));
        assert_eq!(t.handle_request(&k, later), Disposition::New);
        assert_eq!(t.len(), 1);
        assert!(t.map.capacity() <= 4096, "{}", t.map.capacity());
        assert!(t.expiries.capacity() <= 4096, "{}", t.expiries.capacity());
        // Still a working table.
        t.respond(&k, 200, Bytes::from_static(b"ok"), false, later);
        assert_eq!(
            t.handle_request(&k, later),
            Disposition::Retransmit(Bytes::from_static(b"ok"))
        );
    }

    #[test]
    fn abandon_forgets() {
        let mut t = ServerTransactions::new(10, 1000);
        let k = key(&req("z9hG4bK1", "REGISTER", "h"));
        let now = Instant::now();
        t.handle_request(&k, now);
        t.abandon(&k);
        assert_eq!(t.handle_request(&k, now), Disposition::New);
    }

    proptest! {
        // Model check: any sequence of operations keeps the byte accounting
        // exact and the bounds respected.
        #[test]
        fn accounting_holds(ops in proptest::collection::vec((0u8..4, 0u8..8, 0u64..40_000, 1usize..50), 1..200)) {
            let start = Instant::now();
            let mut t = ServerTransactions::new(5, 120);
            let keys: Vec<Key> = (0..8).map(|i| key(&req(&format!("z9hG4bK{i}"), "REGISTER", "h"))).collect();
            let mut clock = 0u64;
            for (op, k, dt, len) in ops {
                clock += dt;
                let now = start + Duration::from_millis(clock);
                let k = &keys[k as usize];
                match op {
                    0 => { t.handle_request(k, now); }
                    1 => t.respond(k, 200, Bytes::from(vec![0u8; len]), false, now),
                    2 => t.respond(k, 180, Bytes::from(vec![0u8; len]), false, now),
                    _ => t.handle_timeout(now),
                }
                prop_assert!(t.len() <= 5);
                let sum: usize = t.map.values().filter_map(|e| e.last.as_ref().map(|b| b.len())).sum();
                prop_assert_eq!(sum, t.stored_bytes());
            }
        }
    }
}
