//! The stateful forking proxy for calls between users (RFC 3261 s.16).
//!
//! An authenticated initial INVITE becomes a *call task*: one tokio task
//! that owns the INVITE server transaction towards the caller and one
//! INVITE client transaction per contact of the callee (parallel forking),
//! with their timers (A, B, C, D, G, H). Everything that arrives for the
//! call (responses on a branch, INVITE retransmissions, CANCEL, the ACK of
//! a non-2xx final response) is handed to the task over a channel, so the
//! call's state needs no lock and is changed by one piece of code only.
//!
//! After the first 2xx the proxy keeps a *dialog* entry (Call-ID, tags and
//! the address of each side) so that requests inside the dialog, which the
//! phones send to us because of our Record-Route, are forwarded to the
//! other side's address (the address the REGISTER came from: NAT and TCP
//! connections) without keeping transaction state (RFC 3261 s.16.11).
//! Responses to those come back through our Via and are relayed by it.
//!
//! Call steps are recorded through [`Registry::record_call`] by a
//! [`Recorder`] per call that hands them over in order; terminal steps
//! (failed, ended) are awaited before the response or BYE they describe is
//! forwarded (ADR 0007).

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::backend::{
    BackendError, CallCause, CallDirection, CallRecord, CallStep, HangupSide, Registry,
    RouteTarget, Transport,
};
use crate::message::{Message, Name, NameAddr, StartLine, Uri};
use crate::response::{Response, Source};
use crate::transaction::{Key, T1, T2, T4};
use crate::wire::{self, Forward, SentInvite};

/// Sends bytes to a peer: what the proxy needs from the transports.
pub trait Outbound: Send + Sync + 'static {
    /// Sends `bytes` to `dest` over `transport` (TCP: on the connection to
    /// `dest`, opening one when there is none). Never blocks; failures are
    /// logged (SIP over UDP is lossy anyway and the timers cover it).
    fn send(&self, transport: Transport, dest: SocketAddr, bytes: Bytes);
}

/// An [`Outbound`] that sends nothing (a core without transports: tests).
pub struct Nowhere;

impl Outbound for Nowhere {
    fn send(&self, _: Transport, _: SocketAddr, _: Bytes) {}
}

/// Answered calls' durations, answer to end (seconds).
const CALL_DURATION: &str = "dialtone_sip_call_duration_seconds";

/// Counts a call attempt by the final status the caller got (bounded
/// labels: the status codes a proxy relays).
pub(crate) fn call_attempt(status: u16) {
    metrics::counter!(
        "dialtone_sip_call_attempts_total",
        "status" => crate::response::status_label(status)
    )
    .increment(1);
}

/// Timer B / F / H (64 * T1).
const TIMER_64T1: Duration = Duration::from_millis(64 * 500);
/// How long a dialog that is being torn down is remembered (BYE
/// retransmissions still find it).
const DIALOG_LINGER: Duration = Duration::from_secs(32);

/// Proxy settings, from the gateway's configuration.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// `host:port` of our Via and Record-Route.
    pub advertised: String,
    /// Every address we listen on (to recognise our own Route entries).
    pub local: Vec<SocketAddr>,
    /// An unanswered call is given up after this (`480`, cause `no_answer`).
    pub no_answer_timeout: Duration,
    /// An answered call is ended by the proxy after this (cause `timeout`).
    pub max_call_duration: Duration,
}

/// The legs of one call and their shared identity.
#[derive(Debug, Clone)]
pub(crate) struct Legs {
    pub call_id: String,
    pub sip_call_id: String,
    /// `(domain, user)` of the caller.
    pub caller: (String, String),
    /// `(domain, user)` of the callee, when the callee's leg is recorded
    /// (a user here).
    pub callee: Option<(String, String)>,
    /// `user@domain` dialled (the callee, also when it has no leg).
    pub dialled: String,
}

impl Legs {
    fn records(&self, step: impl Fn(CallDirection) -> CallStep) -> Vec<CallRecord> {
        let mut out = Vec::with_capacity(2);
        let mut push = |(domain, user): &(String, String), direction| {
            out.push(CallRecord {
                call_id: self.call_id.clone(),
                domain: domain.clone(),
                user: user.clone(),
                step: step(direction),
                sip_call_id: self.sip_call_id.clone(),
            });
        };
        push(&self.caller, CallDirection::Outbound);
        if let Some(callee) = &self.callee {
            push(callee, CallDirection::Inbound);
        }
        out
    }

    pub fn start(&self) -> Vec<CallRecord> {
        let from = format!("{}@{}", self.caller.1, self.caller.0);
        let to = self.dialled.clone();
        self.records(|direction| CallStep::Start {
            direction,
            from: from.clone(),
            to: to.clone(),
            sip_call_id: self.sip_call_id.clone(),
        })
    }

    pub fn fail(&self, sip_status: u16, cause: CallCause) -> Vec<CallRecord> {
        self.records(|_| CallStep::Fail { sip_status, cause })
    }

    fn end(&self, cause: CallCause, side: HangupSide) -> Vec<CallRecord> {
        self.records(|_| CallStep::End { cause, side })
    }
}

type RecordJob = (
    Vec<CallRecord>,
    Option<oneshot::Sender<Result<(), BackendError>>>,
);

/// Hands a call's steps to the backend one batch at a time, in order.
#[derive(Clone)]
pub(crate) struct Recorder {
    tx: mpsc::UnboundedSender<RecordJob>,
}

impl Recorder {
    pub fn spawn(registry: Arc<dyn Registry>) -> Recorder {
        let (tx, mut rx) = mpsc::unbounded_channel::<RecordJob>();
        tokio::spawn(async move {
            while let Some((records, ack)) = rx.recv().await {
                let result = registry.record_call(records).await;
                if let Err(e) = &result {
                    tracing::warn!(error = %e, "recording a call step failed");
                    metrics::counter!("dialtone_sip_call_record_failures_total").increment(1);
                }
                if let Some(ack) = ack {
                    let _ = ack.send(result);
                }
            }
        });
        Recorder { tx }
    }

    /// Queues steps without waiting for them.
    pub fn record(&self, records: Vec<CallRecord>) {
        if !records.is_empty() {
            let _ = self.tx.send((records, None));
        }
    }

    /// Queues steps and waits until they (and every step queued before
    /// them) are durable.
    pub async fn record_durable(&self, records: Vec<CallRecord>) -> Result<(), BackendError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send((records, Some(ack)))
            .map_err(|_| BackendError::Internal("call recorder stopped".into()))?;
        done.await
            .map_err(|_| BackendError::Internal("call recorder stopped".into()))?
    }
}

/// What the call task is told.
enum Input {
    /// A response on branch `usize`.
    Response(Bytes, usize),
    /// The caller retransmitted its INVITE.
    InviteAgain,
    /// The caller cancelled.
    Cancel,
    /// The caller acknowledged our non-2xx final response.
    Ack,
}

type CallSender = mpsc::UnboundedSender<Input>;

/// An answered call, for routing requests inside it. Once it ends only
/// what routes a retransmitted BYE is kept (the rest is `live`), so that
/// the 32 s of lingering cost ~150 bytes a call, not ~1 KB.
struct Dialog {
    live: Option<Box<LiveDialog>>,
    caller_tag: String,
    callee_tag: String,
    caller: (Transport, SocketAddr),
    callee: (Transport, SocketAddr),
    caller_cseq: u32,
    callee_cseq: u32,
    answered_at: Instant,
    /// Set once a BYE passed (or the proxy ended the call).
    ending_since: Option<Instant>,
}

/// What an answered call needs until it ends.
struct LiveDialog {
    legs: Legs,
    recorder: Recorder,
    caller_contact: String,
    callee_contact: String,
    /// From (caller, with tag) and To (callee, with tag) as in the INVITE
    /// and its 2xx, for the BYEs the proxy may send itself.
    from: String,
    to: String,
}

/// A new proxied INVITE (see [`Proxy::start_call`]).
pub(crate) struct NewCall<'a> {
    pub msg: &'a Message<'a>,
    pub raw: Bytes,
    pub key: Key,
    pub source: Source,
    pub transport: Transport,
    /// Where responses to the caller go.
    pub upstream: SocketAddr,
    pub legs: Legs,
    pub recorder: Recorder,
    pub targets: Vec<RouteTarget>,
    /// How many of the INVITE's leading Route elements are ours.
    pub pop_routes: usize,
    pub max_forwards: u32,
    pub received_at: Instant,
}

/// The proxy's shared tables.
pub struct Proxy {
    settings: ProxySettings,
    record_route: String,
    /// `advertised` split once (host without brackets, port), for
    /// recognising our own Route entries on every in-dialog request.
    advertised_host_port: (String, u16),
    out: Arc<dyn Outbound>,
    invites: Mutex<HashMap<Key, CallSender>>,
    branches: Mutex<HashMap<Box<str>, (CallSender, usize)>>,
    dialogs: Mutex<HashMap<Box<str>, Dialog>>,
    last_sweep: Mutex<Option<Instant>>,
    next_branch: AtomicU64,
    branch_salt: u64,
}

impl Proxy {
    pub fn new(settings: ProxySettings, out: Arc<dyn Outbound>) -> Proxy {
        let record_route = format!("<sip:{};lr>", settings.advertised);
        let a = settings.advertised.as_str();
        let (host, port) = match a.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') => match p.parse::<u16>() {
                Ok(port) => (h, port),
                Err(_) => (a, 5060),
            },
            _ => (a, 5060),
        };
        let advertised_host_port = (
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
        );
        Proxy {
            settings,
            record_route,
            advertised_host_port,
            out,
            invites: Mutex::new(HashMap::new()),
            branches: Mutex::new(HashMap::new()),
            dialogs: Mutex::new(HashMap::new()),
            last_sweep: Mutex::new(None),
            next_branch: AtomicU64::new(1),
            branch_salt: rand::random(),
        }
    }

    pub fn settings(&self) -> &ProxySettings {
        &self.settings
    }

    /// Calls being set up and calls answered (metrics, tests).
    pub fn counts(&self) -> (usize, usize) {
        let setting_up = self.invites.lock().map(|m| m.len()).unwrap_or(0);
        let answered = self.dialogs.lock().map(|m| m.len()).unwrap_or(0);
        (setting_up, answered)
    }

    fn via(&self, transport: Transport, branch: &str) -> String {
        format!(
            "SIP/2.0/{} {};branch={branch}",
            transport.as_str(),
            self.settings.advertised
        )
    }

    fn new_branch(&self) -> String {
        let n = self.next_branch.fetch_add(1, Ordering::Relaxed);
        format!(
            "z9hG4bK-dt{:016x}{n:x}",
            self.branch_salt ^ rand::random::<u64>()
        )
    }

    /// A branch for a request forwarded without state: the same for a
    /// retransmission, different for another request (RFC 3261 s.16.11).
    fn stateless_branch(&self, msg: &Message<'_>) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.branch_salt.hash(&mut h);
        msg.list(Name::Via).next().unwrap_or("").hash(&mut h);
        msg.header(Name::CSeq).unwrap_or("").hash(&mut h);
        if let StartLine::Request { uri, .. } = msg.start {
            uri.hash(&mut h);
        }
        format!("z9hG4bK-ds{:016x}", h.finish())
    }

    /// Is this URI (a Route entry) one of our addresses?
    pub fn is_ours(&self, uri: &str) -> bool {
        let Some(u) = Uri::parse(uri) else {
            return false;
        };
        let port = u.port.unwrap_or(5060);
        let host = u.host.trim_start_matches('[').trim_end_matches(']');
        let (ah, ap) = &self.advertised_host_port;
        let advertised_match = ah.eq_ignore_ascii_case(host) && *ap == port;
        advertised_match
            || self
                .settings
                .local
                .iter()
                .any(|l| l.port() == port && host.parse::<std::net::IpAddr>().ok() == Some(l.ip()))
    }

    /// How many leading Route elements of `msg` are ours.
    pub fn our_routes(&self, msg: &Message<'_>) -> usize {
        msg.list(Name::Route)
            .take_while(|r| NameAddr::parse(r).is_some_and(|n| self.is_ours(n.uri)))
            .count()
    }

    /// A retransmitted INVITE, CANCEL or ACK of a call being set up:
    /// handed to its task. False when no call has this key.
    pub(crate) fn to_call(&self, key: &Key, what: CallInput) -> bool {
        let Ok(map) = self.invites.lock() else {
            return false;
        };
        let Some(tx) = map.get(key) else {
            return false;
        };
        let input = match what {
            CallInput::InviteAgain => Input::InviteAgain,
            CallInput::Cancel => Input::Cancel,
            CallInput::Ack => Input::Ack,
        };
        tx.send(input).is_ok()
    }

    /// Forks the INVITE to every target and starts its call task.
    pub(crate) fn start_call(self: &Arc<Self>, call: NewCall<'_>) {
        let msg = call.msg;
        let (tx, rx) = mpsc::unbounded_channel();
        let from = msg.header(Name::From).unwrap_or("").to_owned();
        let to = msg.header(Name::To).unwrap_or("").to_owned();
        let call_id = msg.header(Name::CallId).unwrap_or("").to_owned();
        let cseq = msg.cseq().map(|c| c.seq).unwrap_or(1);
        let caller_contact = msg
            .list(Name::Contact)
            .next()
            .and_then(NameAddr::parse)
            .map(|n| n.uri.to_owned())
            .unwrap_or_default();
        let now = Instant::now();
        let mut branches = Vec::with_capacity(call.targets.len());
        for target in call.targets {
            let id = self.new_branch();
            let via = self.via(target.transport, &id);
            let request = wire::forward_request(
                msg,
                &Forward {
                    ruri: Some(&target.uri),
                    via: &via,
                    record_route: Some(&self.record_route),
                    source: call.source,
                    max_forwards: call.max_forwards,
                    pop_routes: call.pop_routes,
                    drop_proxy_authorization: true,
                },
            );
            let reliable = target.transport.is_reliable();
            branches.push(Branch {
                sent: SentInvite {
                    ruri: target.uri.clone(),
                    via,
                    from: from.clone(),
                    to: to.clone(),
                    call_id: call_id.clone(),
                    cseq,
                },
                id: id.into_boxed_str(),
                target,
                request,
                state: BranchState::Calling,
                retransmit_at: (!reliable).then_some(now + T1),
                interval: T1,
                timeout_at: Some(now + TIMER_64T1),
                cancel: CancelState::None,
            });
        }
        if let Ok(mut map) = self.branches.lock() {
            for (i, b) in branches.iter().enumerate() {
                map.insert(b.id.clone(), (tx.clone(), i));
            }
        }
        if let Ok(mut map) = self.invites.lock() {
            map.insert(call.key.clone(), tx);
        }
        for b in &branches {
            self.out
                .send(b.target.transport, b.target.dest, b.request.clone());
        }
        metrics::histogram!("dialtone_sip_invite_forward_seconds")
            .record(call.received_at.elapsed().as_secs_f64());
        let task = CallTask {
            proxy: self.clone(),
            key: call.key,
            invite: call.raw,
            source: call.source,
            upstream: (call.transport, call.upstream),
            to_tag: crate::response::random_tag(),
            legs: call.legs,
            recorder: call.recorder,
            branches,
            upstream_state: Upstream::Proceeding,
            last_response: None,
            ringing: false,
            caller_contact,
            no_answer_at: now + self.settings.no_answer_timeout,
            best: None,
        };
        let span = tracing::debug_span!("call", sip_call_id = %call_id);
        tokio::spawn(tracing::Instrument::instrument(task.run(rx), span));
    }

    /// A response arrived: to its call task (stateful branch), or relayed
    /// by its Via (a request we forwarded without state, or a 2xx
    /// retransmission after the call task ended).
    /// False when the response is not for us (dropped).
    pub(crate) fn on_response(&self, msg: &Message<'_>, raw: &[u8]) -> bool {
        let Ok(via) = msg.top_via() else {
            return false;
        };
        let Some(branch) = via.branch() else {
            return false;
        };
        if branch.starts_with("z9hG4bK-dt") {
            let found = self
                .branches
                .lock()
                .ok()
                .and_then(|m| m.get(branch).cloned());
            if let Some((tx, i)) = found {
                let _ = tx.send(Input::Response(Bytes::copy_from_slice(raw), i));
                return true;
            }
            // The call task is gone: only 2xx retransmissions still matter.
            let StartLine::Response { code, .. } = msg.start else {
                return false;
            };
            if !(200..300).contains(&code) {
                return true;
            }
        } else if !branch.starts_with("z9hG4bK-ds") {
            return false; // not ours
        }
        self.relay_response(msg);
        true
    }

    fn relay_response(&self, msg: &Message<'_>) {
        let Some(bytes) = wire::strip_top_via(msg) else {
            return;
        };
        let Some(next) = msg.list(Name::Via).nth(1) else {
            return;
        };
        let Ok(next) = crate::message::Via::parse(next) else {
            return;
        };
        if let Some((transport, dest)) = wire::response_destination(&next) {
            self.out.send(transport, dest, bytes);
        }
    }

    /// Forwards a request inside a dialog (it has a To tag) to the other
    /// side. Records the end of the call for a BYE first. Returns a
    /// response to send back when the request cannot be forwarded.
    pub(crate) async fn in_dialog(
        &self,
        msg: &Message<'_>,
        source: Source,
        method_is_ack: bool,
        method_is_bye: bool,
    ) -> Option<(u16, &'static str)> {
        let call_id = msg.call_id().ok()?;
        let from_tag = msg.from().ok().and_then(|f| f.tag()).unwrap_or("");
        let to_tag = msg.to().ok().and_then(|t| t.tag()).unwrap_or("");
        let cseq = msg.cseq().map(|c| c.seq).unwrap_or(0);
        let mut ending = None;
        let mut target = None;
        if let Ok(mut dialogs) = self.dialogs.lock() {
            if let Some(d) = dialogs.get_mut(call_id) {
                let from_caller = from_tag == d.caller_tag && to_tag == d.callee_tag;
                let from_callee = from_tag == d.callee_tag && to_tag == d.caller_tag;
                if from_caller || from_callee {
                    if from_caller {
                        d.caller_cseq = d.caller_cseq.max(cseq);
                        target = Some(d.callee);
                    } else {
                        d.callee_cseq = d.callee_cseq.max(cseq);
                        target = Some(d.caller);
                    }
                    if method_is_bye && d.ending_since.is_none() {
                        d.ending_since = Some(Instant::now());
                        metrics::histogram!(CALL_DURATION)
                            .record(d.answered_at.elapsed().as_secs_f64());
                        let side = if from_caller {
                            HangupSide::Caller
                        } else {
                            HangupSide::Callee
                        };
                        ending = d.live.take().map(|live| {
                            let records = live.legs.end(CallCause::NormalClearing, side);
                            (live.recorder, records)
                        });
                    }
                }
            }
        }
        if let Some((recorder, records)) = ending {
            if let Err(e) = recorder.record_durable(records).await {
                tracing::warn!(error = %e, "recording the end of a call failed");
            }
        }
        let pop_routes = self.our_routes(msg);
        // No dialog we know (never answered here, ended, or lost in a
        // restart): 481. Routing such a request by its own Route or
        // Request-URI would make the proxy an open relay for anyone who
        // adds a To tag.
        let Some((transport, dest)) = target else {
            return (!method_is_ack).then_some((481, "Call/Transaction Does Not Exist"));
        };
        let max_forwards = match msg.max_forwards() {
            Ok(Some(0)) => return (!method_is_ack).then_some((483, "Too Many Hops")),
            Ok(Some(n)) => n - 1,
            Ok(None) => 70,
            Err(_) => return (!method_is_ack).then_some((400, "Bad Max-Forwards")),
        };
        let branch = self.stateless_branch(msg);
        let via = self.via(transport, &branch);
        let bytes = wire::forward_request(
            msg,
            &Forward {
                ruri: None,
                via: &via,
                record_route: None,
                source,
                max_forwards,
                pop_routes,
                drop_proxy_authorization: false,
            },
        );
        self.out.send(transport, dest, bytes);
        None
    }

    /// Periodic work: forget dialogs that ended, end calls that went on
    /// beyond the maximum call duration (runs at most once a second).
    pub fn tick(&self, now: Instant) {
        if let Ok(mut last) = self.last_sweep.lock() {
            if last.is_some_and(|l| now.duration_since(l) < Duration::from_secs(1)) {
                return;
            }
            *last = Some(now);
        }
        let mut to_end = Vec::new();
        if let Ok(mut dialogs) = self.dialogs.lock() {
            dialogs.retain(|_, d| match d.ending_since {
                Some(since) => now.duration_since(since) < DIALOG_LINGER,
                None => true,
            });
            for (call_id, d) in dialogs.iter_mut() {
                if d.ending_since.is_none()
                    && now.duration_since(d.answered_at) >= self.settings.max_call_duration
                {
                    d.ending_since = Some(now);
                    metrics::histogram!(CALL_DURATION)
                        .record(now.duration_since(d.answered_at).as_secs_f64());
                    let byes = self.own_byes(call_id, d);
                    if let Some(live) = d.live.take() {
                        let records = live.legs.end(CallCause::Timeout, HangupSide::System);
                        to_end.push((call_id.to_string(), byes, live.recorder, records));
                    }
                }
            }
            metrics::gauge!("dialtone_sip_dialogs").set(dialogs.len() as f64);
            drop(dialogs);
            for (call_id, byes, recorder, records) in to_end {
                tracing::info!(sip_call_id = %call_id, "maximum call duration reached: ending the call");
                let out = self.out.clone();
                tokio::spawn(async move {
                    if let Err(e) = recorder.record_durable(records).await {
                        tracing::warn!(error = %e, "recording a call timeout failed");
                    }
                    for (transport, dest, bytes) in byes {
                        out.send(transport, dest, bytes);
                    }
                });
            }
        }
    }

    /// The BYEs that end dialog `d` on both sides.
    fn own_byes(&self, call_id: &str, d: &Dialog) -> Vec<(Transport, SocketAddr, Bytes)> {
        let mut out = Vec::with_capacity(2);
        let Some(live) = &d.live else {
            return out;
        };
        let (t, a) = d.callee;
        let via = self.via(t, &format!("z9hG4bK-ds{:016x}", rand::random::<u64>()));
        out.push((
            t,
            a,
            wire::bye(&wire::OwnBye {
                ruri: &live.callee_contact,
                via: &via,
                from: &live.from,
                to: &live.to,
                call_id,
                cseq: d.caller_cseq.saturating_add(1),
                route: None,
            }),
        ));
        let (t, a) = d.caller;
        let via = self.via(t, &format!("z9hG4bK-ds{:016x}", rand::random::<u64>()));
        out.push((
            t,
            a,
            wire::bye(&wire::OwnBye {
                ruri: &live.caller_contact,
                via: &via,
                from: &live.to,
                to: &live.from,
                call_id,
                cseq: d.callee_cseq.saturating_add(1),
                route: None,
            }),
        ));
        out
    }

    fn finish_call(&self, key: &Key, branches: &[Branch]) {
        if let Ok(mut map) = self.invites.lock() {
            map.remove(key);
        }
        if let Ok(mut map) = self.branches.lock() {
            for b in branches {
                map.remove(&b.id);
            }
        }
    }
}

/// What the gateway hands to a call task (see [`Proxy::to_call`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallInput {
    InviteAgain,
    Cancel,
    Ack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BranchState {
    /// INVITE sent, nothing heard.
    Calling,
    /// A provisional response came.
    Proceeding,
    /// A non-2xx final response came and was acknowledged; absorbing its
    /// retransmissions until `timeout_at` (Timer D).
    Completed,
    /// Answered (2xx) or given up: nothing more to do.
    Terminated,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CancelState {
    None,
    /// To be sent at the first provisional response (RFC 3261 s.9.1).
    Pending,
    /// Sent; retransmitted over UDP until answered (Timer E).
    Sent {
        bytes: Bytes,
        retransmit_at: Option<Instant>,
        interval: Duration,
    },
    Answered,
}

struct Branch {
    id: Box<str>,
    sent: SentInvite,
    target: RouteTarget,
    request: Bytes,
    state: BranchState,
    /// Timer A (UDP, while calling).
    retransmit_at: Option<Instant>,
    interval: Duration,
    /// Timer B while calling, the CANCEL's give-up time once cancelled,
    /// Timer D once completed.
    timeout_at: Option<Instant>,
    cancel: CancelState,
}

enum Upstream {
    /// No final response sent yet.
    Proceeding,
    /// A 2xx was forwarded: the server transaction is over (RFC 3261
    /// s.16.7 step 10).
    Accepted,
    /// A non-2xx final response was sent: retransmitted over UDP (Timer G)
    /// until the ACK or Timer H.
    Rejected {
        retransmit_at: Option<Instant>,
        interval: Duration,
        give_up_at: Instant,
    },
    /// The ACK came: absorbing retransmissions until the instant (Timer I).
    Confirmed(Instant),
}

struct CallTask {
    proxy: Arc<Proxy>,
    key: Key,
    invite: Bytes,
    source: Source,
    upstream: (Transport, SocketAddr),
    to_tag: String,
    legs: Legs,
    recorder: Recorder,
    branches: Vec<Branch>,
    upstream_state: Upstream,
    last_response: Option<Bytes>,
    ringing: bool,
    caller_contact: String,
    no_answer_at: Instant,
    /// The best final response of the branches so far (s.16.7 step 6):
    /// its status and, when it came from a branch, the relayed bytes.
    best: Option<(u16, Option<Bytes>)>,
}

impl CallTask {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Input>) {
        loop {
            if self.done() {
                break;
            }
            let deadline = self.next_deadline();
            let input = tokio::select! {
                i = rx.recv() => i,
                _ = tokio::time::sleep_until(deadline.into()) => {
                    self.on_timer(Instant::now()).await;
                    continue;
                }
            };
            match input {
                Some(Input::Response(bytes, i)) => self.on_response(&bytes, i).await,
                Some(Input::InviteAgain) => {
                    if let Some(b) = &self.last_response {
                        self.send_up(b.clone());
                    }
                }
                Some(Input::Cancel) => self.on_cancel().await,
                Some(Input::Ack) => {
                    if matches!(self.upstream_state, Upstream::Rejected { .. }) {
                        let linger = if self.upstream.0.is_reliable() {
                            Duration::ZERO
                        } else {
                            T4
                        };
                        self.upstream_state = Upstream::Confirmed(Instant::now() + linger);
                    }
                }
                None => break,
            }
        }
        self.proxy.finish_call(&self.key, &self.branches);
    }

    fn done(&self) -> bool {
        let now = Instant::now();
        let upstream_done = match self.upstream_state {
            Upstream::Proceeding => false,
            Upstream::Accepted => true,
            Upstream::Rejected { .. } => false,
            Upstream::Confirmed(until) => now >= until,
        };
        upstream_done
            && self
                .branches
                .iter()
                .all(|b| b.state == BranchState::Terminated)
    }

    fn next_deadline(&self) -> Instant {
        let mut next = Instant::now() + Duration::from_secs(3600);
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = next.min(t);
            }
        };
        if matches!(self.upstream_state, Upstream::Proceeding) {
            consider(Some(self.no_answer_at));
        }
        match &self.upstream_state {
            Upstream::Rejected {
                retransmit_at,
                give_up_at,
                ..
            } => {
                consider(*retransmit_at);
                consider(Some(*give_up_at));
            }
            Upstream::Confirmed(until) => consider(Some(*until)),
            _ => {}
        }
        for b in &self.branches {
            if b.state == BranchState::Terminated {
                continue;
            }
            consider(b.retransmit_at);
            consider(b.timeout_at);
            if let CancelState::Sent { retransmit_at, .. } = &b.cancel {
                consider(*retransmit_at);
            }
        }
        next
    }

    fn send_up(&self, bytes: Bytes) {
        self.proxy.out.send(self.upstream.0, self.upstream.1, bytes);
    }

    fn send_branch(&self, i: usize, bytes: Bytes) {
        let t = &self.branches[i].target;
        self.proxy.out.send(t.transport, t.dest, bytes);
    }

    /// A response we make ourselves for the caller's INVITE.
    fn own_response(&self, code: u16, reason: &str) -> Option<Bytes> {
        let msg = Message::parse(&self.invite).ok()?;
        let mut r = Response::with_reason(&msg, &self.source, code, reason, &self.to_tag);
        r.header("Server", "Dialtone");
        Some(r.finish())
    }

    async fn on_timer(&mut self, now: Instant) {
        if matches!(self.upstream_state, Upstream::Proceeding) && now >= self.no_answer_at {
            // Timer C / no-answer timeout: give up on every branch.
            for i in 0..self.branches.len() {
                self.cancel_branch(i, now);
            }
            self.reject(480, None, CallCause::NoAnswer).await;
        }
        if let Upstream::Rejected {
            retransmit_at,
            interval,
            give_up_at,
        } = &mut self.upstream_state
        {
            if now >= *give_up_at {
                self.upstream_state = Upstream::Confirmed(now);
            } else if retransmit_at.is_some_and(|t| now >= t) {
                *interval = (*interval * 2).min(T2);
                *retransmit_at = Some(now + *interval);
                if let Some(b) = self.last_response.clone() {
                    self.send_up(b);
                }
            }
        }
        for i in 0..self.branches.len() {
            let mut resend = None;
            let mut timed_out = false;
            {
                let b = &mut self.branches[i];
                if b.state == BranchState::Terminated {
                    continue;
                }
                if b.retransmit_at.is_some_and(|t| now >= t) {
                    // Timer A doubles without a cap until Timer B fires.
                    b.interval *= 2;
                    b.retransmit_at = Some(now + b.interval);
                    resend = Some(b.request.clone());
                }
                if let CancelState::Sent {
                    bytes,
                    retransmit_at,
                    interval,
                } = &mut b.cancel
                {
                    if retransmit_at.is_some_and(|t| now >= t) {
                        *interval = (*interval * 2).min(T2);
                        *retransmit_at = Some(now + *interval);
                        let bytes = bytes.clone();
                        let t = &b.target;
                        self.proxy.out.send(t.transport, t.dest, bytes);
                    }
                }
                if b.timeout_at.is_some_and(|t| now >= t) {
                    match b.state {
                        BranchState::Calling => timed_out = true,
                        _ => b.state = BranchState::Terminated,
                    }
                    b.state = BranchState::Terminated;
                    b.retransmit_at = None;
                    b.timeout_at = None;
                }
            }
            if let Some(bytes) = resend {
                self.send_branch(i, bytes);
            }
            if timed_out {
                // Timer B: the branch's result is a 408 (RFC 3261 s.16.8).
                self.branch_result(408, None);
            }
        }
        self.maybe_finish().await;
    }

    async fn on_cancel(&mut self) {
        if !matches!(self.upstream_state, Upstream::Proceeding) {
            return;
        }
        let now = Instant::now();
        for i in 0..self.branches.len() {
            self.cancel_branch(i, now);
        }
        self.reject(487, None, CallCause::OriginatorCancel).await;
    }

    fn cancel_branch(&mut self, i: usize, now: Instant) {
        let b = &mut self.branches[i];
        if b.cancel != CancelState::None {
            return;
        }
        match b.state {
            BranchState::Calling => {
                b.cancel = CancelState::Pending;
                // Give up retransmitting: the CANCEL goes when a
                // provisional response shows the INVITE arrived.
                b.retransmit_at = None;
            }
            BranchState::Proceeding => {
                let bytes = wire::cancel_for(&b.sent);
                let reliable = b.target.transport.is_reliable();
                b.cancel = CancelState::Sent {
                    bytes: bytes.clone(),
                    retransmit_at: (!reliable).then_some(now + T1),
                    interval: T1,
                };
                b.timeout_at = Some(now + TIMER_64T1);
                let t = &b.target;
                self.proxy.out.send(t.transport, t.dest, bytes);
            }
            BranchState::Completed | BranchState::Terminated => {}
        }
    }

    async fn on_response(&mut self, raw: &Bytes, i: usize) {
        let Ok(msg) = Message::parse(raw) else {
            return;
        };
        let StartLine::Response { code, .. } = msg.start else {
            return;
        };
        let now = Instant::now();
        if msg.cseq().is_ok_and(|c| c.method == "CANCEL") {
            if let CancelState::Sent { .. } = self.branches[i].cancel {
                self.branches[i].cancel = CancelState::Answered;
            }
            return;
        }
        match code {
            100..=199 => {
                {
                    let b = &mut self.branches[i];
                    if b.state == BranchState::Calling {
                        b.state = BranchState::Proceeding;
                        b.retransmit_at = None;
                        b.timeout_at = None;
                    }
                }
                if self.branches[i].cancel == CancelState::Pending {
                    self.branches[i].cancel = CancelState::None;
                    self.cancel_branch(i, now);
                }
                if code > 100 && matches!(self.upstream_state, Upstream::Proceeding) {
                    if let Some(b) = wire::strip_top_via(&msg) {
                        self.send_up(b.clone());
                        self.last_response = Some(b);
                    }
                    if (code == 180 || code == 183) && !self.ringing {
                        self.ringing = true;
                        self.recorder
                            .record(self.legs.records(|_| CallStep::Ringing));
                    }
                }
            }
            200..=299 => {
                let first_on_branch = self.branches[i].state != BranchState::Terminated;
                {
                    let b = &mut self.branches[i];
                    b.state = BranchState::Terminated;
                    b.retransmit_at = None;
                    b.timeout_at = None;
                }
                // Every 2xx goes upstream (RFC 3261 s.16.7 step 5), also
                // a second one from another branch: the caller ends that
                // dialog itself.
                let Some(up) = wire::strip_top_via(&msg) else {
                    return;
                };
                let first_answer =
                    first_on_branch && matches!(self.upstream_state, Upstream::Proceeding);
                if first_answer {
                    // The dialog exists before the caller can see the 2xx:
                    // its ACK must find it.
                    self.open_dialog(&msg, i, now);
                }
                self.send_up(up.clone());
                if first_answer {
                    call_attempt(code);
                    self.upstream_state = Upstream::Accepted;
                    self.last_response = Some(up);
                    let contact = self.branches[i].target.uri.clone();
                    self.recorder
                        .record(self.legs.records(|_| CallStep::Answer {
                            contact: contact.clone(),
                        }));
                    for j in 0..self.branches.len() {
                        if j != i {
                            self.cancel_branch(j, now);
                        }
                    }
                }
            }
            _ => {
                let to = msg.header(Name::To).unwrap_or("");
                let ack = wire::ack_for(&self.branches[i].sent, to);
                self.send_branch(i, ack);
                let state = self.branches[i].state;
                if matches!(state, BranchState::Completed | BranchState::Terminated) {
                    return; // a retransmission: acknowledged again
                }
                {
                    let b = &mut self.branches[i];
                    b.state = BranchState::Completed;
                    b.retransmit_at = None;
                    b.cancel = match b.cancel {
                        CancelState::Sent { .. } => CancelState::Answered,
                        ref c => c.clone(),
                    };
                    b.timeout_at = Some(if b.target.transport.is_reliable() {
                        now
                    } else {
                        now + TIMER_64T1
                    });
                }
                let relayed = wire::strip_top_via(&msg);
                self.branch_result(code, relayed);
                if code >= 600 {
                    // RFC 3261 s.16.7 step 5: a 6xx ends the search.
                    for j in 0..self.branches.len() {
                        if j != i {
                            self.cancel_branch(j, now);
                        }
                    }
                }
            }
        }
        self.maybe_finish().await;
    }

    /// Remembers the best final response so far (RFC 3261 s.16.7 step 6):
    /// a 6xx beats everything, otherwise the lowest class wins.
    fn branch_result(&mut self, code: u16, bytes: Option<Bytes>) {
        let better = match &self.best {
            None => true,
            Some((old, _)) => {
                let (old_class, new_class) = (old / 100, code / 100);
                if old_class == 6 {
                    false
                } else if new_class == 6 {
                    true
                } else {
                    new_class < old_class
                }
            }
        };
        if better {
            self.best = Some((code, bytes));
        }
    }

    async fn maybe_finish(&mut self) {
        if !matches!(self.upstream_state, Upstream::Proceeding) {
            return;
        }
        let all_final = self
            .branches
            .iter()
            .all(|b| matches!(b.state, BranchState::Completed | BranchState::Terminated));
        if !all_final {
            return;
        }
        let (code, bytes) = match self.best.take() {
            // A 503 from downstream becomes 500 (RFC 3261 s.16.7 step 6).
            Some((503, _)) => (500, None),
            Some((code, bytes)) => (code, bytes),
            None => (408, None),
        };
        self.reject(code, bytes, CallCause::for_status(code)).await;
    }

    /// Sends the final non-2xx response upstream after recording the
    /// failure durably.
    async fn reject(&mut self, code: u16, relayed: Option<Bytes>, cause: CallCause) {
        call_attempt(code);
        let bytes = match relayed {
            Some(b) => Some(b),
            None => self.own_response(code, crate::response::reason(code)),
        };
        self.upstream_state = Upstream::Rejected {
            retransmit_at: None,
            interval: T1,
            give_up_at: Instant::now() + TIMER_64T1,
        };
        if let Err(e) = self
            .recorder
            .record_durable(self.legs.fail(code, cause))
            .await
        {
            tracing::warn!(error = %e, "recording a failed call failed");
        }
        let Some(bytes) = bytes else {
            return;
        };
        self.send_up(bytes.clone());
        self.last_response = Some(bytes);
        if !self.upstream.0.is_reliable() {
            if let Upstream::Rejected { retransmit_at, .. } = &mut self.upstream_state {
                *retransmit_at = Some(Instant::now() + T1);
            }
        }
    }

    fn open_dialog(&self, msg: &Message<'_>, i: usize, now: Instant) {
        let Ok(call_id) = msg.call_id() else {
            return;
        };
        let Ok(invite) = Message::parse(&self.invite) else {
            return;
        };
        let caller_tag = invite
            .from()
            .ok()
            .and_then(|f| f.tag())
            .unwrap_or("")
            .to_owned();
        let callee_tag = msg.to().ok().and_then(|t| t.tag()).unwrap_or("").to_owned();
        let callee_contact = msg
            .list(Name::Contact)
            .next()
            .and_then(NameAddr::parse)
            .map(|n| n.uri.to_owned())
            .unwrap_or_else(|| self.branches[i].target.uri.clone());
        let target = &self.branches[i].target;
        let dialog = Dialog {
            live: Some(Box::new(LiveDialog {
                legs: self.legs.clone(),
                recorder: self.recorder.clone(),
                caller_contact: self.caller_contact.clone(),
                callee_contact,
                from: invite.header(Name::From).unwrap_or("").to_owned(),
                to: msg.header(Name::To).unwrap_or("").to_owned(),
            })),
            caller_tag,
            callee_tag,
            caller: self.upstream,
            callee: (target.transport, target.dest),
            caller_cseq: invite.cseq().map(|c| c.seq).unwrap_or(1),
            callee_cseq: 0,
            answered_at: now,
            ending_since: None,
        };
        if let Ok(mut dialogs) = self.proxy.dialogs.lock() {
            dialogs.insert(call_id.into(), dialog);
        }
    }
}

/// A fresh random UUID (version 4) as text: the `call_id` shared by the
/// legs of one call.
pub(crate) fn new_call_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
