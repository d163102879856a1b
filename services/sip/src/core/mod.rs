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
    BackendError, CallCause, CallRoute, CurrentContact, FeatureOutcome, Lookup, RegisterOutcome,
    RegisterRequest, SipBackend, UserCredentials,
};
use crate::config::GatewayConfig;
use crate::guard::{Guard, LockScope, Lockout};
use crate::proxy::{self, CallInput, Legs, NewCall, Outbound, Proxy, ProxySettings};
use crate::registrar::{self, ExpiresPolicy, Plan, Reject};
use crate::subscription::{SubId, Subscriptions, TagSide};
use crate::transaction::{Disposition, Key, ServerTransactions};
use crate::transport::Flow;
use crate::wire::message::{header_end, Message, Method, Name, ParseError, StartLine, Uri, Via};
use crate::wire::response::{
    self, random_tag_bytes, status_label, write_http_date, write_u64, Response, Source,
};

mod auth;
mod counters;
mod invite;
mod register;
mod subscribe;
mod validate;

use self::auth::*;
pub use self::counters::metric;
use self::counters::*;
pub use self::validate::salvage;
use self::validate::*;

/// Methods this server handles itself (the `Allow` header).
pub const ALLOW: &str = "REGISTER, OPTIONS, INVITE, ACK, CANCEL, BYE, SUBSCRIBE";
/// Methods we recognise but do not handle outside a dialog: 405 rather
/// than 501 (inside a dialog every method is forwarded).
const KNOWN_METHODS: &[&str] = &[
    "PRACK", "UPDATE", "INFO", "NOTIFY", "REFER", "MESSAGE", "PUBLISH",
];
/// Retry-After for 503 answers (seconds).
const RETRY_AFTER_SECS: &str = "5";
const TRANSACTION_SHARDS: usize = 16;

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
    /// Set by an accepted SUBSCRIBE: its 200 goes out through the
    /// subscriptions, before the NOTIFY it calls for.
    subscription: &'r OnceLock<SubId>,
    /// Set by a REGISTER that added bindings of a box asking for
    /// unsolicited message-waiting NOTIFYs: its 200 goes out first, then
    /// the NOTIFYs to the new contacts.
    message_waiting: &'r OnceLock<crate::subscription::MessageWaitingAfter>,
}

/// A response to send and, for UDP, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub bytes: Bytes,
    /// The UDP destination (RFC 3261 s.18.2.2 / RFC 3581); ignored on TCP,
    /// where the response goes back on the same connection.
    pub dest: SocketAddr,
}

/// The user a request is for, and its host: the Request-URI's, or the To
/// URI's when the phone put our address (an IP) in the Request-URI.
/// `None` when neither names a user.
fn addressed_user<'a>(ruri: &Uri<'a>, to_uri: &Uri<'a>) -> Option<(&'a str, &'a str)> {
    match ruri.user {
        Some(u) if crate::wire::message::host_ip(ruri.host).is_none() => Some((u, ruri.host)),
        Some(u) => Some((u, to_uri.host)),
        None => to_uri.user.map(|u| (u, to_uri.host)),
    }
}

/// Responses the proxy sends itself, on the request's flow, before what
/// the call sends next: a proxied INVITE's 100 (else the callee's 180,
/// relayed by another task, can overtake it) and a matched CANCEL's 200
/// (else the INVITE's 487 can). The transaction layer only keeps them
/// for retransmissions.
fn sent_by_proxy(method: Method, code: u16) -> bool {
    matches!(
        (method, code),
        (Method::Invite, 100) | (Method::Cancel, 200)
    )
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
    subscriptions: Arc<Subscriptions>,
    guard: Guard,
    /// Lock-outs reported to the backend in the current second (a cap, so
    /// that an attack from many addresses cannot flood the log).
    lockouts_reported: Mutex<(u64, u32)>,
    last_guard_sweep: Mutex<Option<Instant>>,
}

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
        let subscriptions =
            Subscriptions::new(cfg.subscriptions.clone(), advertised.clone(), out.clone());
        // Over TLS our Via names the TLS listener (see `Advertised::sent_by`).
        let advertised = proxy::Advertised {
            tls: cfg.tls_listen.filter(|a| a.port() != 0).map(|tls| {
                let host = advertised
                    .rsplit_once(':')
                    .map_or(advertised.as_str(), |(host, _)| host);
                format!("{host}:{}", tls.port())
            }),
            addr: advertised,
        };
        backend.set_watcher(subscriptions.clone());
        let proxy = Arc::new(Proxy::new(
            ProxySettings {
                advertised,
                local,
                no_answer_timeout: cfg.no_answer_timeout,
                max_call_duration: cfg.max_call_duration,
                call_mode: cfg.call_mode,
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
            // Unused: unknown users get their domain's algorithms.
            algorithms: crate::backend::DigestAlgorithms::default(),
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
            subscriptions,
            guard: Guard::new(guard_config),
            lockouts_reported: Mutex::new((0, 0)),
            last_guard_sweep: Mutex::new(None),
        }
    }

    /// The proxy's tables (calls being set up, answered calls).
    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// The SUBSCRIBE/NOTIFY subscriptions.
    pub fn subscriptions(&self) -> &Arc<Subscriptions> {
        &self.subscriptions
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
            // A response to one of our NOTIFYs, or to a request the
            // proxy forwarded.
            self.note_callee_tag(&msg);
            let ours = match (&msg.start, msg.top_via()) {
                (StartLine::Response { code, .. }, Ok(via)) => via
                    .branch()
                    .is_some_and(|b| self.subscriptions.on_response(b, *code)),
                _ => false,
            };
            if !ours && !self.proxy.on_response(&msg) {
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
        if method == Method::Invite && !in_dialog && self.subscriptions.dialogs_watched() {
            if let Some(tag) = msg.from().ok().and_then(|f| f.tag()) {
                self.subscriptions.note_tag(call_id, TagSide::Caller, tag);
            }
        }
        // A SUBSCRIBE inside a dialog refreshes one of our subscriptions:
        // answered here, never forwarded.
        let subscribe = method_text == "SUBSCRIBE";
        if method == Method::Ack
            || (in_dialog && !subscribe && !matches!(method, Method::Register | Method::Cancel))
        {
            // Inside a dialog (or an ACK for a 2xx): forwarded without
            // transaction state (RFC 3261 s.16.11). An ACK of a final
            // response we made ourselves (407, 404, ...) has no To tag of a
            // dialog we know and nowhere to go: dropped.
            if method == Method::Ack && !in_dialog {
                return None;
            }
            let (code, reason) = if method_text == "REFER" {
                // A transfer (RFC 3515): a Refer-To we can read, then
                // forwarded as any in-dialog request, and noted.
                let refer_to = match proxy::transfer::refer_to(&msg) {
                    Ok(r) => r,
                    Err(reason) => return Some(self.reply_now(cx, dest, 400, reason, |_| {})),
                };
                self.proxy.refer(&msg, source, refer_to)?
            } else {
                self.proxy.in_dialog(&msg, source)?
            };
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
        let subscription = OnceLock::new();
        let message_waiting = OnceLock::new();
        let reply_flow = Flow {
            remote: dest,
            ..flow
        };
        let upstream = Upstream {
            raw,
            key: &key,
            flow: reply_flow,
            received_at,
            subscription: &subscription,
            message_waiting: &message_waiting,
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
        if let Some(id) = subscription.get() {
            self.subscriptions.release(*id, reply_flow, bytes);
            return None;
        }
        if let Some(after) = message_waiting.into_inner() {
            self.subscriptions.after_register(reply_flow, bytes, after);
            return None;
        }
        // The proxy sent these itself, ahead of what the call sends next
        // (see `sent_by_proxy`).
        (!sent_by_proxy(method, code)).then_some(Reply { bytes, dest })
    }

    /// The callee's To tag in a response to an INVITE, for the `dialog`
    /// package (when anyone watches dialogs).
    fn note_callee_tag(&self, msg: &Message<'_>) {
        if !self.subscriptions.dialogs_watched() {
            return;
        }
        let StartLine::Response { code, .. } = msg.start else {
            return;
        };
        let side = match code {
            101..=199 => TagSide::CalleeEarly,
            200..=299 => TagSide::CalleeAnswered,
            _ => return,
        };
        let (Ok(cseq), Ok(to), Ok(call_id)) = (msg.cseq(), msg.to(), msg.call_id()) else {
            return;
        };
        if let (true, Some(tag)) = (cseq.method == "INVITE", to.tag()) {
            self.subscriptions.note_tag(call_id, side, tag);
        }
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
        // A 100 (Trying) carries no To tag (RFC 3261 s.8.2.6.2 allows one,
        // but a proxy's 100 is not the callee's): the caller would take it
        // for the dialog's remote tag when it arrives after the callee's
        // 2xx, and its BYE would then name a dialog nobody has (481).
        let tag = random_tag_bytes();
        let tag: &[u8] = if code == 100 { &[] } else { &tag };
        let mut r = Response::start(
            cx.msg,
            Some(cx.via),
            &cx.source,
            code,
            reason,
            tag,
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
        let msg = cx.msg;
        let max_forwards = match msg.max_forwards() {
            Ok(m) => m,
            Err(_) => return self.respond(cx, 400, "Bad Max-Forwards", |_| {}),
        };
        if method != Method::Cancel {
            // RFC 3261 s.8.2.2.3: we support no extension a client may require.
            // An INVITE's Replaces (RFC 3891) is for the phone it goes to,
            // which says whether it supports it: a proxy passes it on.
            let proxied = method == Method::Invite
                && self.proxy.settings().call_mode == proxy::CallMode::Proxy;
            let required: Vec<&str> = msg
                .list(Name::Require)
                .filter(|t| !(proxied && t.eq_ignore_ascii_case("replaces")))
                .collect();
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
                let out = self
                    .register(cx, method_text, upstream.flow, upstream.message_waiting)
                    .await;
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
                    .header("Allow-Events", crate::subscription::ALLOW_EVENTS)
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
                // same branch; answered 200 here, the INVITE gets 487. The
                // 200 goes out before the 487 the cancel may send at once.
                let call_id = cx.msg.call_id().unwrap_or("");
                let (_, ok) = self.respond(cx, 200, "OK", |_| {});
                let cancelled = Key::invite_of_cancel(cx.msg, cx.via)
                    .is_ok_and(|k| self.proxy.cancel(call_id, &k, upstream.flow, ok.clone()));
                if cancelled {
                    (200, ok)
                } else {
                    self.respond(cx, 481, response::reason(481), |_| {})
                }
            }
            Method::Other if method_text == "SUBSCRIBE" => {
                self.subscribe(cx, method_text, upstream).await
            }
            // A transfer is a REFER inside a call (those are forwarded
            // before they get here); one outside any dialog would make the
            // node call someone on a stranger's behalf.
            Method::Other if method_text == "REFER" => self.respond(
                cx,
                403,
                "Forbidden (REFER outside a dialog is not accepted)",
                |_| {},
            ),
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
