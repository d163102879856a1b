//! The gateway's request handling, independent of sockets: bytes in, bytes
//! (and where to send them) out. The transports in [`crate::transport::gateway`] call
//! [`Core::handle`] for every received message.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use metrics::{Counter, Histogram};
use tracing::Instrument as _;

use crate::auth::digest::{write_challenge, Algorithm, CredentialsRef, DigestError};
use crate::auth::nonce::{NcCheck, NonceCheck, Nonces, NONCE_LEN};
use crate::backend::{
    BackendError, CallCause, CallRoute, CurrentContact, Lookup, RegisterOutcome, RegisterRequest,
    SipBackend, Transport, UserCredentials,
};
use crate::config::GatewayConfig;
use crate::guard::{Guard, LockScope, Lockout};
use crate::proxy::{self, CallInput, Legs, NewCall, Outbound, Proxy, ProxySettings};
use crate::registrar::{self, ExpiresPolicy, Plan, Reject};
use crate::transaction::{Disposition, Key, ServerTransactions};
use crate::transport::Flow;
use crate::wire::message::{header_end, Message, Method, Name, ParseError, StartLine, Uri, Via};
use crate::wire::response::{
    self, random_tag_bytes, status_label, write_http_date, write_u64, Response, Source,
};

/// Methods this server handles itself (the `Allow` header).
pub const ALLOW: &str = "REGISTER, OPTIONS, INVITE, ACK, CANCEL, BYE";
/// Methods we recognise but do not handle outside a dialog: 405 rather
/// than 501 (inside a dialog every method is forwarded).
const KNOWN_METHODS: &[&str] = &[
    "PRACK",
    "UPDATE",
    "INFO",
    "SUBSCRIBE",
    "NOTIFY",
    "REFER",
    "MESSAGE",
    "PUBLISH",
];
/// Retry-After for 503 answers (seconds).
const RETRY_AFTER_SECS: &str = "5";
const TRANSACTION_SHARDS: usize = 16;

/// Metric names (`dialtone_<area>_<what>_<unit>`).
pub mod metric {
    pub const REQUESTS: &str = "dialtone_sip_requests_total";
    pub const RESPONSES: &str = "dialtone_sip_responses_total";
    pub const AUTH_FAILURES: &str = "dialtone_sip_auth_failures_total";
    pub const PARSE_ERRORS: &str = "dialtone_sip_parse_errors_total";
    pub const DROPPED: &str = "dialtone_sip_dropped_total";
    pub const RETRANSMISSIONS: &str = "dialtone_sip_retransmissions_total";
    pub const REGISTER_SECONDS: &str = "dialtone_sip_register_seconds";
    pub const LOCKOUTS: &str = "dialtone_sip_lockouts_total";
    pub const LOCKED_OUT: &str = "dialtone_sip_locked_out";
}

/// Status codes with their own `status` label (see [`status_label`]); the
/// last slot is "other".
const STATUS_CODES: [u16; 24] = [
    100, 200, 400, 401, 403, 404, 405, 407, 408, 416, 420, 423, 480, 481, 483, 486, 487, 500, 501,
    503, 505, 513, 600, 603,
];
const METHODS: [Method; 7] = [
    Method::Register,
    Method::Options,
    Method::Invite,
    Method::Ack,
    Method::Bye,
    Method::Cancel,
    Method::Other,
];
const AUTH_FAILURE_REASONS: [&str; 5] = [
    "unsupported",
    "nonce",
    "credentials",
    "replay",
    "locked_out",
];

/// Metric handles, registered on first use and then reused: the `metrics`
/// macros build the key (and a label vector) and look it up in the recorder
/// on every call. The series and their labels are the macros' own.
#[derive(Default)]
struct Metrics {
    requests: [OnceLock<Counter>; METHODS.len()],
    responses: [OnceLock<Counter>; STATUS_CODES.len() + 1],
    auth_failures: [OnceLock<Counter>; AUTH_FAILURE_REASONS.len()],
    parse_errors: OnceLock<Counter>,
    dropped_response: OnceLock<Counter>,
    dropped_unaddressable: OnceLock<Counter>,
    retransmissions: OnceLock<Counter>,
    register_seconds: OnceLock<Histogram>,
}

impl Metrics {
    fn request(&self, method: Method) {
        let i = METHODS
            .iter()
            .position(|m| *m == method)
            .unwrap_or(METHODS.len() - 1);
        self.requests[i]
            .get_or_init(|| metrics::counter!(metric::REQUESTS, "method" => method.label()))
            .increment(1);
    }

    fn response(&self, code: u16) {
        let i = STATUS_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(STATUS_CODES.len());
        self.responses[i]
            .get_or_init(|| metrics::counter!(metric::RESPONSES, "status" => status_label(code)))
            .increment(1);
    }

    /// `reason` is one of [`AUTH_FAILURE_REASONS`].
    fn auth_failure(&self, reason: &'static str) {
        let i = AUTH_FAILURE_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.auth_failures[i]
            .get_or_init(|| metrics::counter!(metric::AUTH_FAILURES, "reason" => reason))
            .increment(1);
    }

    fn parse_error(&self) {
        self.parse_errors
            .get_or_init(|| metrics::counter!(metric::PARSE_ERRORS))
            .increment(1);
    }

    fn dropped_response(&self) {
        self.dropped_response
            .get_or_init(|| metrics::counter!(metric::DROPPED, "reason" => "response"))
            .increment(1);
    }

    fn dropped_unaddressable(&self) {
        self.dropped_unaddressable
            .get_or_init(|| metrics::counter!(metric::DROPPED, "reason" => "unaddressable"))
            .increment(1);
    }

    fn retransmission(&self) {
        self.retransmissions
            .get_or_init(|| metrics::counter!(metric::RETRANSMISSIONS))
            .increment(1);
    }

    fn register_seconds(&self, secs: f64) {
        self.register_seconds
            .get_or_init(|| metrics::histogram!(metric::REGISTER_SECONDS))
            .record(secs);
    }
}

/// The request being answered: what every response needs.
#[derive(Clone, Copy)]
struct Cx<'r> {
    msg: &'r Message<'r>,
    /// The top Via of `msg`, parsed once.
    via: &'r Via<'r>,
    source: Source,
}

/// Where the request being handled came from, for the proxy.
#[derive(Clone, Copy)]
struct Upstream<'r> {
    raw: &'r [u8],
    key: &'r Key,
    /// Where responses go: the flow the request came on, with the
    /// destination Via and RFC 3581 name for UDP.
    flow: Flow,
    received_at: Instant,
}

/// A response to send and, for UDP, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub bytes: Bytes,
    /// The UDP destination (RFC 3261 s.18.2.2 / RFC 3581); ignored on TCP,
    /// where the response goes back on the same connection.
    pub dest: SocketAddr,
}

/// Request handling shared by every transport task.
pub struct Core {
    cfg: GatewayConfig,
    backend: Arc<dyn SipBackend>,
    nonces: Nonces,
    transactions: Vec<Mutex<ServerTransactions>>,
    /// Stand-in credentials for unknown users: the digest is computed against
    /// them so that the time taken does not reveal whether a user exists.
    dummy: UserCredentials,
    dummy_md5: String,
    policy: ExpiresPolicy,
    metrics: Metrics,
    proxy: Arc<Proxy>,
    guard: Guard,
    /// Lock-outs reported to the backend in the current second (a cap, so
    /// that an attack from many addresses cannot flood the log).
    lockouts_reported: Mutex<(u64, u32)>,
    last_guard_sweep: Mutex<Option<Instant>>,
}

/// At most this many lock-outs per second become security events; the
/// others are counted in metrics only.
const MAX_LOCKOUT_EVENTS_PER_SEC: u32 = 20;

/// Which challenge a request gets: `401`/`WWW-Authenticate` for REGISTER,
/// `407`/`Proxy-Authenticate` for requests to proxy (RFC 3261 s.22.3).
#[derive(Clone, Copy)]
struct Challenge {
    code: u16,
    header: &'static str,
    credentials: Name,
}

const REGISTRAR: Challenge = Challenge {
    code: 401,
    header: "WWW-Authenticate",
    credentials: Name::Authorization,
};
const PROXY: Challenge = Challenge {
    code: 407,
    header: "Proxy-Authenticate",
    credentials: Name::ProxyAuthorization,
};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Core {
    /// A core whose proxy sends nothing (benchmarks and tests of the
    /// registrar); [`Core::with_outbound`] is the real one.
    pub fn new(cfg: GatewayConfig, backend: Arc<dyn SipBackend>) -> Core {
        let local = cfg.listen.clone();
        Core::with_outbound(cfg, backend, Arc::new(proxy::Nowhere), local)
    }

    /// A core that sends proxied requests and responses through `out`;
    /// `local` are the bound addresses (the first one is advertised in Via
    /// and Record-Route unless the configuration names another).
    pub fn with_outbound(
        cfg: GatewayConfig,
        backend: Arc<dyn SipBackend>,
        out: Arc<dyn Outbound>,
        local: Vec<SocketAddr>,
    ) -> Core {
        let advertised = cfg.advertised.clone().unwrap_or_else(|| {
            let first = local
                .first()
                .copied()
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5060)));
            let ip = if first.ip().is_unspecified() {
                // Listening on every interface: advertise the address of
                // the interface of the default route (found by "connecting"
                // a UDP socket, which sends nothing), else loopback.
                let ip = primary_ip(first.is_ipv6())
                    .unwrap_or_else(|| std::net::IpAddr::from([127, 0, 0, 1]));
                tracing::warn!(%ip, "SIP listens on an unspecified address and no advertised address is configured: advertising {ip} in Via and Record-Route (set --sip-advertised)");
                ip
            } else {
                first.ip()
            };
            SocketAddr::new(ip, first.port()).to_string()
        });
        let guard_config = cfg.guard.clone();
        let proxy = Arc::new(Proxy::new(
            ProxySettings {
                advertised,
                local,
                no_answer_timeout: cfg.no_answer_timeout,
                max_call_duration: cfg.max_call_duration,
            },
            out,
            backend.clone(),
        ));
        let nonces = Nonces::new(&cfg.secret, cfg.nonce_lifetime, cfg.nonce_table_capacity);
        let per_shard_entries = (cfg.transaction_capacity / TRANSACTION_SHARDS).max(1);
        let per_shard_bytes = cfg.transaction_memory / TRANSACTION_SHARDS;
        let transactions = (0..TRANSACTION_SHARDS)
            .map(|_| Mutex::new(ServerTransactions::new(per_shard_entries, per_shard_bytes)))
            .collect();
        let dummy_md5 = hex::encode(rand::random::<[u8; 16]>());
        let dummy = UserCredentials {
            ha1_md5: Some(dummy_md5.clone()),
            ha1_sha256: hex::encode(rand::random::<[u8; 32]>()),
            disabled: false,
        };
        let policy = ExpiresPolicy {
            min: cfg.min_expires,
            max: cfg.max_expires,
            default: cfg.default_expires,
        };
        Core {
            cfg,
            backend,
            nonces,
            transactions,
            dummy,
            dummy_md5,
            policy,
            metrics: Metrics::default(),
            proxy,
            guard: Guard::new(guard_config),
            lockouts_reported: Mutex::new((0, 0)),
            last_guard_sweep: Mutex::new(None),
        }
    }

    /// The proxy's tables (calls being set up, answered calls).
    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.cfg
    }

    fn shard(&self, key: &Key) -> &Mutex<ServerTransactions> {
        // The high bits: the table's buckets use the low ones.
        &self.transactions[((key.hash_value() >> 40) as usize) % TRANSACTION_SHARDS]
    }

    /// Expires transactions whose timers fired (called periodically).
    pub fn tick(&self, now: Instant) {
        for t in &self.transactions {
            if let Ok(mut t) = t.lock() {
                t.handle_timeout(now);
            }
        }
        let sweep = match self.last_guard_sweep.lock() {
            Ok(mut last)
                if last.is_none_or(|l| now.duration_since(l) >= Duration::from_secs(10)) =>
            {
                *last = Some(now);
                true
            }
            _ => false,
        };
        if sweep {
            self.guard.sweep(now);
            metrics::gauge!(metric::LOCKED_OUT).set(self.guard.locked_count(now) as f64);
        }
    }

    /// Number of live server transactions (tests, metrics).
    pub fn transaction_count(&self) -> usize {
        self.transactions
            .iter()
            .map(|t| t.lock().map(|t| t.len()).unwrap_or(0))
            .sum()
    }

    /// Handles one received message. Returns the response to send, if any.
    pub async fn handle(&self, raw: &[u8], flow: Flow) -> Option<Reply> {
        let source = Source {
            addr: flow.remote,
            reliable: flow.is_reliable(),
        };
        let start = raw
            .iter()
            .take_while(|b| **b == b'\r' || **b == b'\n')
            .count();
        let raw = &raw[start..];
        if raw.is_empty() {
            return None; // keep-alive
        }
        if !self.guard.admit(source.addr.ip(), Instant::now()) {
            metrics::counter!(metric::DROPPED, "reason" => "rate_limited").increment(1);
            return None;
        }
        if raw.len() > self.cfg.max_message_size {
            self.metrics.parse_error();
            return self.stateless(raw, source, 513, "Message Too Large");
        }
        let msg = match Message::parse(raw) {
            Ok(m) => m,
            Err(e) => {
                self.metrics.parse_error();
                tracing::debug!(error = %e, peer = %source.addr, "unparsable SIP message");
                return self.stateless(raw, source, 400, bad_request_reason(&e));
            }
        };
        let StartLine::Request {
            method,
            method_text,
            ..
        } = msg.start
        else {
            // A response to a request the proxy forwarded.
            if !self.proxy.on_response(&msg) {
                self.metrics.dropped_response();
            }
            return None;
        };
        let received_at = Instant::now();
        self.metrics.request(method);
        let Ok(via) = msg.top_via() else {
            self.metrics.parse_error();
            self.metrics.dropped_unaddressable();
            return None;
        };
        let dest = if source.reliable {
            source.addr
        } else {
            response::udp_destination(&via, source.addr)
        };
        let addressable = [Name::From, Name::To, Name::CallId, Name::CSeq]
            .iter()
            .all(|n| msg.header(*n).is_some());
        if !addressable {
            self.metrics.parse_error();
            self.metrics.dropped_unaddressable();
            return None;
        }
        let cx = Cx {
            msg: &msg,
            via: &via,
            source,
        };
        if let Err(e) = validate(&msg, method_text) {
            self.metrics.parse_error();
            return Some(self.reply_now(cx, dest, 400, bad_request_reason(&e), |_| {}));
        }
        let key = match Key::from_request_via(&msg, &via) {
            Ok(k) => k,
            Err(e) => {
                self.metrics.parse_error();
                if method == Method::Ack {
                    return None;
                }
                return Some(self.reply_now(cx, dest, 400, bad_request_reason(&e), |_| {}));
            }
        };
        let call_id = msg.call_id().unwrap_or("");
        // The proxy's INVITE server transactions: an ACK for a non-2xx
        // final response and INVITE retransmissions go to the call task.
        match method {
            Method::Ack if self.proxy.to_call(call_id, &key, CallInput::Ack) => return None,
            Method::Ack
                if self
                    .shard(&key)
                    .lock()
                    .map(|t| t.contains(&key))
                    .unwrap_or(false) =>
            {
                // The ACK of a final response we made (407, 404, 480, ...).
                return None;
            }
            Method::Invite if self.proxy.to_call(call_id, &key, CallInput::InviteAgain) => {
                self.metrics.retransmission();
                return None;
            }
            _ => {}
        }
        let in_dialog = msg.to().ok().and_then(|t| t.tag()).is_some();
        if method == Method::Ack
            || (in_dialog && !matches!(method, Method::Register | Method::Cancel))
        {
            // Inside a dialog (or an ACK for a 2xx): forwarded without
            // transaction state (RFC 3261 s.16.11). An ACK of a final
            // response we made ourselves (407, 404, ...) has no To tag of a
            // dialog we know and nowhere to go: dropped.
            if method == Method::Ack && !in_dialog {
                return None;
            }
            let (code, reason) = self.proxy.in_dialog(&msg, source)?;
            return Some(self.reply_now(cx, dest, code, reason, |_| {}));
        }
        let disposition = match self.shard(&key).lock() {
            Ok(mut t) => t.handle_request(&key, Instant::now()),
            Err(_) => Disposition::Overloaded,
        };
        match disposition {
            Disposition::New => {}
            Disposition::Absorb => {
                self.metrics.retransmission();
                return None;
            }
            Disposition::Retransmit(bytes) => {
                self.metrics.retransmission();
                return Some(Reply { bytes, dest });
            }
            Disposition::Overloaded => {
                return Some(self.reply_now(cx, dest, 503, "Service Unavailable", |r| {
                    r.header("Retry-After", RETRY_AFTER_SECS);
                }));
            }
        }
        // If this future is dropped before answering (shutdown), forget the
        // transaction instead of absorbing its retransmissions forever.
        let mut guard = AbandonOnDrop {
            core: self,
            key: Some(&key),
        };
        // A debug span: at the usual `info` level it is disabled and costs
        // one check, instead of a span (with formatted fields) per request.
        let span = tracing::debug_span!(
            "sip_transaction",
            branch = via.branch().unwrap_or(""),
            method = method_text
        );
        let upstream = Upstream {
            raw,
            key: &key,
            flow: Flow {
                remote: dest,
                ..flow
            },
            received_at,
        };
        let (code, bytes) = self
            .process(cx, method, method_text, upstream)
            .instrument(span)
            .await;
        self.metrics.response(code);
        guard.key = None;
        if let Ok(mut t) = self.shard(&key).lock() {
            if method == Method::Invite && code == 100 {
                // Proxied: the call task owns the INVITE transaction now.
                t.abandon(&key);
            } else {
                t.respond(&key, code, bytes.clone(), source.reliable, Instant::now());
            }
        }
        Some(Reply { bytes, dest })
    }

    /// A response outside any transaction (malformed requests, overload).
    fn reply_now(
        &self,
        cx: Cx<'_>,
        dest: SocketAddr,
        code: u16,
        reason: &str,
        extra: impl FnOnce(&mut Response),
    ) -> Reply {
        let (_, bytes) = self.respond_sized(cx, code, reason, 0, extra);
        self.metrics.response(code);
        Reply { bytes, dest }
    }

    /// Answers an unparsable message with `code` when Via, From, To, Call-ID
    /// and CSeq can still be read from it; otherwise drops it.
    fn stateless(&self, raw: &[u8], source: Source, code: u16, reason: &str) -> Option<Reply> {
        let Some(msg) = salvage(raw) else {
            self.metrics.dropped_unaddressable();
            return None;
        };
        let via = msg.top_via().ok()?;
        let dest = if source.reliable {
            source.addr
        } else {
            response::udp_destination(&via, source.addr)
        };
        let cx = Cx {
            msg: &msg,
            via: &via,
            source,
        };
        Some(self.reply_now(cx, dest, code, reason, |_| {}))
    }

    fn respond(
        &self,
        cx: Cx<'_>,
        code: u16,
        reason: &str,
        extra: impl FnOnce(&mut Response),
    ) -> (u16, Bytes) {
        self.respond_sized(cx, code, reason, 0, extra)
    }

    /// [`Self::respond`] with room for `extra_len` bytes of `extra` headers.
    fn respond_sized(
        &self,
        cx: Cx<'_>,
        code: u16,
        reason: &str,
        extra_len: usize,
        extra: impl FnOnce(&mut Response),
    ) -> (u16, Bytes) {
        let server_len = self.cfg.server_header.as_ref().map_or(0, |s| s.len() + 10);
        let mut r = Response::start(
            cx.msg,
            Some(cx.via),
            &cx.source,
            code,
            reason,
            &random_tag_bytes(),
            server_len + extra_len,
        );
        if let Some(s) = &self.cfg.server_header {
            r.header("Server", s);
        }
        extra(&mut r);
        (code, r.finish())
    }

    async fn process(
        &self,
        cx: Cx<'_>,
        method: Method,
        method_text: &str,
        upstream: Upstream<'_>,
    ) -> (u16, Bytes) {
        let transport = upstream.flow.transport;
        let msg = cx.msg;
        let max_forwards = match msg.max_forwards() {
            Ok(m) => m,
            Err(_) => return self.respond(cx, 400, "Bad Max-Forwards", |_| {}),
        };
        if method != Method::Cancel {
            // RFC 3261 s.8.2.2.3: we support no extension a client may require.
            let required: Vec<&str> = msg.list(Name::Require).collect();
            if !required.is_empty() {
                let unsupported = required.join(", ");
                return self.respond(cx, 420, "Bad Extension", |r| {
                    r.header("Unsupported", &unsupported);
                });
            }
        }
        match method {
            Method::Register => {
                let started = Instant::now();
                let out = self.register(cx, method_text, transport).await;
                self.metrics
                    .register_seconds(started.elapsed().as_secs_f64());
                out
            }
            Method::Options if !sip_request_uri(msg) => {
                // RFC 3261 s.8.2.2.1; RFC 4475 s.3.3.2 and s.3.3.3.
                self.respond(cx, 416, response::reason(416), |_| {})
            }
            Method::Options => self.respond(cx, 200, "OK", |r| {
                r.header("Allow", ALLOW)
                    .header("Accept", "application/sdp")
                    .header("Accept-Encoding", "identity")
                    .header("Accept-Language", "en")
                    .header("Supported", "");
            }),
            Method::Invite => {
                if max_forwards == Some(0) {
                    return self.respond(cx, 483, response::reason(483), |_| {});
                }
                self.invite(cx, method_text, upstream, max_forwards).await
            }
            // Not in a dialog we know (those are forwarded before they get
            // here): RFC 3261 s.15.1.2.
            Method::Bye => self.respond(cx, 481, response::reason(481), |_| {}),
            Method::Cancel => {
                // RFC 3261 s.9.2: the CANCEL matches the INVITE with the
                // same branch; answered 200 here, the INVITE gets 487.
                let call_id = cx.msg.call_id().unwrap_or("");
                let cancelled = Key::invite_of_cancel(cx.msg, cx.via)
                    .is_ok_and(|k| self.proxy.to_call(call_id, &k, CallInput::Cancel));
                if cancelled {
                    self.respond(cx, 200, "OK", |_| {})
                } else {
                    self.respond(cx, 481, response::reason(481), |_| {})
                }
            }
            _ => {
                if max_forwards == Some(0) {
                    // We would have to forward it (RFC 3261 s.16.3 step 3).
                    return self.respond(cx, 483, response::reason(483), |_| {});
                }
                let known = KNOWN_METHODS.contains(&method_text);
                let code = if known { 405 } else { 501 };
                self.respond(cx, code, response::reason(code), |r| {
                    r.header("Allow", ALLOW);
                })
            }
        }
    }

    async fn call<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        // A backend answering at once (from memory) needs no timer: poll it
        // once before arming the timeout.
        let mut fut = std::pin::pin!(fut);
        if let std::task::Poll::Ready(r) =
            std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await
        {
            return r;
        }
        match tokio::time::timeout(self.cfg.backend_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::Unavailable("backend timed out".into())),
        }
    }

    fn backend_failure(&self, cx: Cx<'_>, e: &BackendError) -> (u16, Bytes) {
        tracing::warn!(error = %e, "SIP backend failed");
        match e {
            BackendError::Unavailable(_) => self.respond(cx, 503, response::reason(503), |r| {
                r.header("Retry-After", RETRY_AFTER_SECS);
            }),
            BackendError::Internal(_) => self.respond(cx, 500, response::reason(500), |_| {}),
        }
    }

    fn challenge_with(
        &self,
        cx: Cx<'_>,
        kind: Challenge,
        realm: &str,
        offer_md5: bool,
        stale: bool,
    ) -> (u16, Bytes) {
        let mut nonce = [0u8; NONCE_LEN];
        let nonce = self.nonces.issue_into(realm, now_ms(), &mut nonce);
        let opaque = self.nonces.opaque();
        // RFC 8760 s.2.4: the preferred (strongest) algorithm first,
        // unless configured for clients that read only the first one.
        let order: &[Algorithm] = match (offer_md5, self.cfg.challenge_md5_first) {
            (false, _) => &[Algorithm::Sha256],
            (true, false) => &[Algorithm::Sha256, Algorithm::Md5],
            (true, true) => &[Algorithm::Md5, Algorithm::Sha256],
        };
        let each = 96 + realm.len() + nonce.len() + opaque.len();
        self.respond_sized(
            cx,
            kind.code,
            response::reason(kind.code),
            order.len() * each,
            |r| {
                for alg in order {
                    r.header_with(kind.header, |b| {
                        write_challenge(b, realm, nonce, opaque, *alg, stale)
                    });
                }
            },
        )
    }

    fn forbidden(&self, cx: Cx<'_>) -> (u16, Bytes) {
        // One response for wrong password, unknown user, wrong username and
        // disabled user: nothing to tell them apart.
        self.respond(cx, 403, response::reason(403), |_| {})
    }

    /// Checks the digest credentials of `user@domain` in `cx` (RFC 7616,
    /// qop=auth, stateless nonce, nonce-count replay). `None`: the request
    /// is authenticated (and the user enabled); otherwise the response to
    /// send (a challenge, or 403 for wrong credentials, unknown users and
    /// disabled users alike).
    #[allow(clippy::too_many_arguments)]
    fn authenticate(
        &self,
        cx: Cx<'_>,
        kind: Challenge,
        domain: &str,
        user: &str,
        creds: &UserCredentials,
        known: bool,
        method_text: &str,
    ) -> Option<(u16, Bytes)> {
        // Unknown users are offered what a default user is offered.
        let offer_md5 = creds.ha1_md5.is_some();
        let ip = cx.source.addr.ip();
        if self.guard.locked(ip, domain, user, Instant::now()) {
            self.metrics.auth_failure("locked_out");
            return Some(self.forbidden(cx));
        }

        let mut given = None;
        for h in cx.msg.headers(kind.credentials) {
            match CredentialsRef::parse(h) {
                Ok(c) if c.realm.eq_ignore_ascii_case(domain) => {
                    given = Some(c);
                    break;
                }
                Ok(_) | Err(DigestError::NotDigest) => {}
                Err(_) => return Some(self.respond(cx, 400, "Bad Authorization", |_| {})),
            }
        }
        let Some(c) = given else {
            return Some(self.challenge_with(cx, kind, domain, offer_md5, false));
        };
        let acceptable = c.algorithm.is_some()
            && c.qop
                .as_deref()
                .is_some_and(|q| q.eq_ignore_ascii_case("auth"))
            && c.cnonce.is_some()
            && c.nc.is_some();
        if !acceptable {
            self.metrics.auth_failure("unsupported");
            return Some(self.challenge_with(cx, kind, domain, offer_md5, false));
        }
        let now = now_ms();
        let nonce = self.nonces.check(&c.nonce, domain, now);
        if nonce == NonceCheck::Invalid {
            // Not ours (or from before a secret change): a fresh challenge.
            self.metrics.auth_failure("nonce");
            return Some(self.challenge_with(cx, kind, domain, offer_md5, false));
        }
        let alg = c.algorithm.unwrap_or(Algorithm::Md5);
        let ha1 = match alg {
            Algorithm::Md5 => creds.ha1_md5.as_deref().unwrap_or(&self.dummy_md5),
            Algorithm::Sha256 => creds.ha1_sha256.as_str(),
        };
        // Always compute the digest, whoever the user is (timing).
        let digest_ok = c.verify(ha1, method_text);
        let md5_refused = alg == Algorithm::Md5 && creds.ha1_md5.is_none();
        let ok = digest_ok && known && !md5_refused && c.username == user;
        if !ok {
            self.metrics.auth_failure("credentials");
            if let Some(lockout) = self.guard.failure(ip, domain, user, Instant::now()) {
                self.report_lockout(lockout);
            }
            return Some(self.forbidden(cx));
        }
        let id = match nonce {
            NonceCheck::Fresh(id) => id,
            _ => return Some(self.challenge_with(cx, kind, domain, offer_md5, true)),
        };
        let nc = c.nc.as_ref().map_or(0, |n| n.1);
        match self.nonces.use_nc(id, nc, now) {
            NcCheck::Ok => {}
            NcCheck::Replay | NcCheck::Forgotten => {
                self.metrics.auth_failure("replay");
                return Some(self.challenge_with(cx, kind, domain, offer_md5, true));
            }
        }
        if creds.disabled {
            return Some(self.forbidden(cx));
        }

        None
    }

    /// An initial INVITE (no To tag): authenticate the caller (407), ask
    /// the backend where the callee is, then fork (100 Trying here, the
    /// rest from the call task) or refuse with the leg(s) recorded.
    async fn invite(
        &self,
        cx: Cx<'_>,
        method_text: &str,
        upstream: Upstream<'_>,
        max_forwards: Option<u32>,
    ) -> (u16, Bytes) {
        let msg = cx.msg;
        let StartLine::Request { uri, .. } = msg.start else {
            return self.respond(cx, 400, "Bad Request", |_| {});
        };
        let Some(ruri) = Uri::parse(uri) else {
            return self.respond(cx, 416, response::reason(416), |_| {});
        };
        let (Ok(from), Ok(to)) = (msg.from(), msg.to()) else {
            return self.respond(cx, 400, "Bad Request", |_| {});
        };
        let (Some(from_uri), Some(to_uri)) = (Uri::parse(from.uri), Uri::parse(to.uri)) else {
            return self.respond(cx, 400, "Bad From or To URI", |_| {});
        };
        let Some(caller_user) = from_uri.user else {
            return self.forbidden(cx);
        };
        let caller_domain = lowercase(from_uri.host);
        let caller_domain = caller_domain.as_ref();
        // The callee: the Request-URI, or the To URI when the phone put
        // our address in the Request-URI.
        let (callee_user, callee_host) = match ruri.user {
            Some(u) if crate::wire::message::host_ip(ruri.host).is_none() => (u, ruri.host),
            Some(u) => (u, to_uri.host),
            None => match to_uri.user {
                Some(u) => (u, to_uri.host),
                None => return self.respond(cx, 404, response::reason(404), |_| {}),
            },
        };
        let callee_domain = lowercase(callee_host);
        let callee_domain = callee_domain.as_ref();

        let lookup = match self
            .call(self.backend.credentials(caller_domain, caller_user))
            .await
        {
            Ok(l) => l,
            Err(e) => return self.backend_failure(cx, &e),
        };
        let (creds, known) = match lookup {
            // Not a domain of ours: we relay for no one.
            Lookup::UnknownDomain | Lookup::DomainSuspended => return self.forbidden(cx),
            Lookup::UnknownUser => (&self.dummy, false),
            Lookup::Found(ref c) => (c, true),
        };
        if let Some(refused) = self.authenticate(
            cx,
            PROXY,
            caller_domain,
            caller_user,
            creds,
            known,
            method_text,
        ) {
            return refused;
        }
        let route = match self
            .call(
                self.backend
                    .route_call(caller_domain, callee_domain, callee_user),
            )
            .await
        {
            Ok(r) => r,
            Err(e) => return self.backend_failure(cx, &e),
        };
        let sip_call_id = msg.call_id().unwrap_or("").to_owned();
        let caller = (caller_domain.to_owned(), caller_user.to_owned());
        let callee = Some((callee_domain.to_owned(), callee_user.to_owned()));
        let mut legs = Legs {
            call_id: proxy::new_call_id(),
            sip_call_id,
            caller,
            callee,
            dialled: format!("{callee_user}@{callee_domain}"),
        };
        let (code, cause) = match route {
            CallRoute::Plan(plan) if !plan.is_empty() => {
                self.proxy.start_call(
                    NewCall {
                        msg,
                        raw: Bytes::copy_from_slice(upstream.raw),
                        key: upstream.key.clone(),
                        source: cx.source,
                        upstream: upstream.flow,
                        legs,
                        plan,
                        pop_routes: self.proxy.our_routes(msg),
                        max_forwards: max_forwards.map_or(70, |m| m.saturating_sub(1)),
                    },
                    upstream.received_at,
                );
                return self.respond(cx, 100, "Trying", |_| {});
            }
            CallRoute::UnknownDomain | CallRoute::UnknownUser => {
                // The callee has no leg: only the caller's is recorded.
                legs.callee = None;
                (404, CallCause::NotFound)
            }
            CallRoute::CrossDomainForbidden => {
                legs.callee = None;
                (403, CallCause::CallRejected)
            }
            CallRoute::Unavailable | CallRoute::NotRegistered | CallRoute::Plan(_) => {
                (480, CallCause::Unavailable)
            }
        };
        proxy::call_attempt(code);
        // Both steps durable before the response that reports them.
        let recorder = self.proxy.recorder();
        recorder.record(legs.start());
        if let Err(e) = recorder.record_durable(legs.fail(code, cause)).await {
            return self.backend_failure(cx, &e);
        }
        self.respond(cx, code, response::reason(code), |_| {})
    }

    fn report_lockout(&self, lockout: Lockout) {
        let scope = match lockout.scope {
            LockScope::Source => "source",
            LockScope::User { .. } => "user",
        };
        metrics::counter!(metric::LOCKOUTS, "scope" => scope).increment(1);
        tracing::warn!(source = %lockout.source, realm = %lockout.realm, scope, failures = lockout.failures, "locked out after failed authentications");
        let second = now_ms() / 1000;
        let report = match self.lockouts_reported.lock() {
            Ok(mut r) => {
                if r.0 != second {
                    *r = (second, 0);
                }
                r.1 += 1;
                r.1 <= MAX_LOCKOUT_EVENTS_PER_SEC
            }
            Err(_) => false,
        };
        if report {
            self.backend.lockout(lockout);
        } else {
            metrics::counter!(metric::DROPPED, "reason" => "lockout_event_rate").increment(1);
        }
    }

    async fn register(&self, cx: Cx<'_>, method_text: &str, transport: Transport) -> (u16, Bytes) {
        let (msg, source) = (cx.msg, cx.source);
        let StartLine::Request { uri, .. } = msg.start else {
            return self.respond(cx, 400, "Bad Request", |_| {});
        };
        let Some(ruri) = Uri::parse(uri) else {
            return self.respond(cx, 416, response::reason(416), |_| {});
        };
        let to = match msg.to() {
            Ok(t) => t,
            Err(_) => return self.respond(cx, 400, "Bad To", |_| {}),
        };
        let Some(to_uri) = Uri::parse(to.uri) else {
            return self.respond(cx, 400, "Bad To URI", |_| {});
        };
        let Some(user) = to_uri.user else {
            return self.respond(cx, 400, "No user in To", |_| {});
        };
        // The domain is the Request-URI's (RFC 3261 s.10.3 step 1). Phones
        // configured with the registrar's IP address put that IP there: then
        // the address-of-record's domain is the one meant.
        let domain = lowercase(if crate::wire::message::host_ip(ruri.host).is_some() {
            to_uri.host
        } else {
            ruri.host
        });
        let domain = domain.as_ref();
        // RFC 3261 s.10.3 step 3: the address-of-record must belong to the
        // domain.
        if !to_uri.host.eq_ignore_ascii_case(domain) {
            return self.respond(cx, 404, response::reason(404), |_| {});
        }
        let lookup = match self.call(self.backend.credentials(domain, user)).await {
            Ok(l) => l,
            Err(e) => return self.backend_failure(cx, &e),
        };
        let (creds, known) = match lookup {
            Lookup::UnknownDomain => return self.respond(cx, 404, response::reason(404), |_| {}),
            Lookup::DomainSuspended => return self.forbidden(cx),
            Lookup::UnknownUser => (&self.dummy, false),
            Lookup::Found(ref c) => (c, true),
        };
        if let Some(refused) =
            self.authenticate(cx, REGISTRAR, domain, user, creds, known, method_text)
        {
            return refused;
        }
        let now = now_ms();

        let plan = match registrar::plan(msg, &self.policy) {
            Ok(p) => p,
            Err(Reject::BadRequest(reason)) => return self.respond(cx, 400, reason, |_| {}),
            Err(Reject::IntervalTooBrief { min_expires }) => {
                return self.respond(cx, 423, response::reason(423), |r| {
                    r.header_with("Min-Expires", |b| write_u64(b, u64::from(min_expires)));
                })
            }
        };
        let contacts = match plan {
            Plan::Query => match self.call(self.backend.contacts(domain, user)).await {
                Ok(c) => c,
                Err(e) => return self.backend_failure(cx, &e),
            },
            Plan::RemoveAll | Plan::Update(_) => {
                let (changes, remove_all) = match plan {
                    Plan::Update(c) => (c, false),
                    _ => (Vec::new(), true),
                };
                let (call_id, cseq) = match (msg.call_id(), msg.cseq()) {
                    (Ok(c), Ok(s)) => (c, s.seq),
                    _ => return self.respond(cx, 400, "Bad Request", |_| {}),
                };
                let request = RegisterRequest {
                    domain: domain.to_owned(),
                    user: user.to_owned(),
                    call_id: call_id.to_owned(),
                    cseq,
                    changes,
                    remove_all,
                    source: source.addr,
                    transport,
                    user_agent: msg.header(Name::UserAgent).map(str::to_owned),
                    received_at: SystemTime::now(),
                };
                match self.call(self.backend.register(request)).await {
                    Ok(RegisterOutcome::Ok { contacts }) => contacts,
                    Ok(RegisterOutcome::CSeqOutOfOrder) => {
                        return self.respond(cx, 500, "CSeq Out Of Order", |_| {})
                    }
                    Err(e) => return self.backend_failure(cx, &e),
                }
            }
        };
        let contacts_len: usize = contacts.iter().map(|c| c.uri.len() + 40).sum();
        self.respond_sized(cx, 200, "OK", contacts_len + 40, |r| {
            write_contacts(r, &contacts);
            r.header_with("Date", |b| write_http_date(b, now / 1000));
        })
    }
}

fn write_contacts(r: &mut Response, contacts: &[CurrentContact]) {
    for c in contacts {
        r.header_with("Contact", |b| {
            b.push(b'<');
            b.extend_from_slice(c.uri.as_bytes());
            b.extend_from_slice(b">;expires=");
            write_u64(b, u64::from(c.expires_in_secs));
            if let Some(q) = c.q {
                b.extend_from_slice(b";q=");
                b.extend_from_slice(registrar::format_q(q).as_bytes());
            }
        });
    }
}

/// Checks the headers every request needs (RFC 3261 s.8.1.1) beyond being
/// addressable.
fn validate(msg: &Message<'_>, method_text: &str) -> Result<(), ParseError> {
    msg.call_id()?;
    msg.from()?;
    msg.to()?;
    let cseq = msg.cseq()?;
    if cseq.method != method_text {
        return Err(ParseError::Header("CSeq"));
    }
    // Single-valued header fields given more than once (RFC 4475 s.3.3.8).
    for (name, label) in [
        (Name::CallId, "Call-ID"),
        (Name::From, "From"),
        (Name::To, "To"),
        (Name::CSeq, "CSeq"),
        (Name::MaxForwards, "Max-Forwards"),
    ] {
        if msg.headers(name).nth(1).is_some() {
            return Err(ParseError::Header(label));
        }
    }
    // Empty Via values or parameters, `192.0.2.15;;,;,,` (RFC 4475 s.3.1.2.1).
    for value in msg.headers(Name::Via) {
        if !via_value_ok(value) {
            return Err(ParseError::Header("Via"));
        }
    }
    if let StartLine::Request { uri, .. } = msg.start {
        // A URI needs a scheme; other schemes than sip(s) are 416 later
        // where they matter.
        if !uri.bytes().any(|b| b == b':') || uri.bytes().any(|b| matches!(b, b'<' | b'>' | b'"')) {
            return Err(ParseError::RequestUri);
        }
        // Headers are not allowed in a SIP Request-URI (RFC 3261 s.19.1.1
        // table 1; RFC 4475 s.3.1.2.11).
        if Uri::parse(uri).is_some_and(|u| u.params.contains('?')) {
            return Err(ParseError::RequestUri);
        }
    }
    Ok(())
}

/// A Via header line: comma-separated values, none empty, each parsing,
/// with no empty `;` parameter.
fn via_value_ok(value: &str) -> bool {
    value.split(',').all(|v| {
        let Ok(via) = Via::parse(v) else {
            return false;
        };
        via.params.split(';').skip(1).all(|p| !p.trim().is_empty())
    })
}

/// Whether the Request-URI is a SIP or SIPS URI.
fn sip_request_uri(msg: &Message<'_>) -> bool {
    matches!(msg.start, StartLine::Request { uri, .. } if Uri::parse(uri).is_some())
}

fn bad_request_reason(e: &ParseError) -> &'static str {
    match e {
        ParseError::Header("Via") => "Bad Via",
        ParseError::Header("From") => "Bad From",
        ParseError::Header("To") => "Bad To",
        ParseError::Header("Call-ID") => "Bad Call-ID",
        ParseError::Header("CSeq") => "Bad CSeq",
        ParseError::Header("Content-Length") => "Bad Content-Length",
        ParseError::Missing(_) => "Missing Header",
        ParseError::ShortBody => "Body Shorter Than Content-Length",
        ParseError::RequestUri => "Bad Request-URI",
        ParseError::Version => "Version Not Supported",
        _ => "Bad Request",
    }
}

/// Reads what a response needs from a message that failed to parse: the
/// start line must be a request line, and Via, From, To, Call-ID and CSeq
/// must be found among the header lines that can be read.
pub fn salvage(raw: &[u8]) -> Option<Message<'_>> {
    let end = header_end(raw).unwrap_or(raw.len());
    let mut lines = raw[..end]
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = std::str::from_utf8(lines.next()?).ok()?;
    if first.starts_with("SIP/") {
        return None;
    }
    let mut parts = first.split(' ');
    let method_text = parts.next().filter(|m| !m.is_empty())?;
    let uri = parts.next().unwrap_or("");
    let mut headers = Vec::with_capacity(8);
    for line in lines {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let n = Name::from_str_ci(name.trim());
        if matches!(
            n,
            Name::Via | Name::From | Name::To | Name::CallId | Name::CSeq
        ) {
            headers.push(crate::wire::message::Header {
                name: n,
                raw_name: name,
                value: std::borrow::Cow::Borrowed(value.trim()),
            });
        }
    }
    let msg = Message {
        start: StartLine::Request {
            method: Method::parse(method_text),
            method_text,
            uri,
        },
        headers,
        body: &[],
    };
    let via_ok = msg
        .list(Name::Via)
        .next()
        .is_some_and(|v| Via::parse(v).is_ok());
    let all = [Name::From, Name::To, Name::CallId, Name::CSeq]
        .iter()
        .all(|n| msg.header(*n).is_some());
    if via_ok && all && Method::parse(method_text) != Method::Ack {
        Some(msg)
    } else {
        None
    }
}

struct AbandonOnDrop<'a> {
    core: &'a Core,
    key: Option<&'a Key>,
}

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            if let Ok(mut t) = self.core.shard(key).lock() {
                t.abandon(key);
            }
        }
    }
}

/// The local address of the default route's interface, if there is one.
fn primary_ip(v6: bool) -> Option<std::net::IpAddr> {
    let (bind, probe): (SocketAddr, SocketAddr) = if v6 {
        ("[::]:0".parse().ok()?, "[2001:db8::1]:9".parse().ok()?)
    } else {
        ("0.0.0.0:0".parse().ok()?, "192.0.2.1:9".parse().ok()?)
    };
    let socket = std::net::UdpSocket::bind(bind).ok()?;
    socket.connect(probe).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// ASCII lower case, borrowed when it already is.
fn lowercase(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

#[allow(dead_code)]
fn assert_send_sync() {
    fn f<T: Send + Sync>() {}
    f::<Core>();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counted_status_has_its_own_label() {
        // A code in STATUS_CODES shares no metric slot with another one, so
        // its label must be its own (not "other").
        let labels: std::collections::HashSet<&str> =
            STATUS_CODES.iter().map(|c| status_label(*c)).collect();
        assert_eq!(labels.len(), STATUS_CODES.len());
        assert!(!labels.contains("other"));
    }

    const OPTIONS: &str = "OPTIONS sip:a@example.test SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
From: <sip:b@example.test>;tag=1\r\n\
To: <sip:a@example.test>\r\n\
Call-ID: c1\r\n\
CSeq: 1 OPTIONS\r\n\
Max-Forwards: 70\r\n\
Content-Length: 0\r\n\r\n";

    fn check(raw: &str) -> Result<(), ParseError> {
        let msg = Message::parse(raw.as_bytes()).unwrap();
        validate(&msg, "OPTIONS")
    }

    /// RFC 4475 s.3.1.2.1, s.3.1.2.11 and s.3.3.8.
    #[test]
    fn validate_refuses_torture_cases() {
        assert_eq!(check(OPTIONS), Ok(()));
        let folded = OPTIONS.replace(
            "branch=z9hG4bK1",
            "branch=z9hG4bK1 ,\r\n SIP / 2.0 / TCP h2 ; branch = z9hG4bK2",
        );
        assert_eq!(check(&folded), Ok(()));
        for (from, to, err) in [
            (
                "192.0.2.1;branch=z9hG4bK1",
                "192.0.2.15;;,;,,",
                ParseError::Header("Via"),
            ),
            (
                "192.0.2.1;branch=z9hG4bK1",
                "192.0.2.1;branch=z9hG4bK1;",
                ParseError::Header("Via"),
            ),
            (
                "Call-ID: c1\r\n",
                "Call-ID: c1\r\nCall-ID: c2\r\n",
                ParseError::Header("Call-ID"),
            ),
            (
                "Max-Forwards: 70\r\n",
                "Max-Forwards: 70\r\nMax-Forwards: 5\r\n",
                ParseError::Header("Max-Forwards"),
            ),
            (
                "To: <sip:a@example.test>\r\n",
                "To: <sip:a@example.test>\r\nt: sip:c@example.net\r\n",
                ParseError::Header("To"),
            ),
            (
                "OPTIONS sip:a@example.test SIP",
                "OPTIONS sip:a@example.test?Route=%3Csip:x%3E SIP",
                ParseError::RequestUri,
            ),
        ] {
            let raw = OPTIONS.replace(from, to);
            assert_eq!(check(&raw), Err(err), "{raw}");
        }
    }
}
