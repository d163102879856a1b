//! The stateful forking proxy for calls between users (RFC 3261 s.16).
//!
//! The logic is the sans-IO call [`engine`]: an authenticated initial
//! INVITE becomes a [`call::ProxyCall`] that owns the INVITE server
//! transaction towards the caller and one INVITE client transaction per
//! target of the routing plan (parallel forking within a step, steps one
//! after the other), with their timers (A, B, D, G, H, I, the no-answer
//! timeout and the steps' ring timeouts). After the first 2xx the engine
//! keeps a *dialog* entry (Call-ID, tags and the flow of each side) so
//! that requests inside the dialog, which the phones send to us because of
//! our Record-Route, are forwarded to the other side without transaction
//! state (RFC 3261 s.16.11). Responses to those come back through our Via
//! and are relayed by it.
//!
//! This module is the thin async shell around it: [`Proxy`] splits the
//! calls over shards by Call-ID (every message of a call, responses and
//! in-dialog requests included, carries it), runs each shard's engine under
//! a mutex, executes the actions it returns (sends through [`Outbound`],
//! call steps through a [`Recorder`] per call) and wakes each shard at the
//! instant its engine asks for. Terminal call steps (failed, ended) are
//! durable before the response or BYE they describe is forwarded (ADR
//! 0007): the engine parks that message until the shell reports the
//! recording done.

mod b2bua;
pub(crate) mod call;
mod dialog;
pub mod engine;
mod feature;
pub(crate) mod forward;
mod leg;
pub mod legs;
pub(crate) mod transfer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::backend::{BackendError, CallRecord, CallStep, SipBackend, Transfer, TransferKind};
use crate::transaction::Key;
use crate::transport::Flow;
use crate::wire::message::{Message, NameAddr, Uri};
use crate::wire::response::Source;

pub use engine::{
    shard_key, Action, Advertised, CallInput, CallMode, Engine, EngineStats, NewCall,
    NewFeatureCall, ProxySettings,
};
pub use legs::{Legs, RecordToken};

/// Sends bytes to a peer: what the proxy needs from the transports.
pub trait Outbound: Send + Sync + 'static {
    /// Sends `bytes` on `flow` (TCP: on the connection to the flow's
    /// remote address, opening one when there is none). Never blocks;
    /// failures are logged (SIP over UDP is lossy anyway and the timers
    /// cover it).
    fn send(&self, flow: Flow, bytes: Bytes);
}

/// An [`Outbound`] that sends nothing (a core without transports: tests).
pub struct Nowhere;

impl Outbound for Nowhere {
    fn send(&self, _: Flow, _: Bytes) {}
}

pub(crate) use call::call_attempt;

/// How a recording job reports back.
enum Done {
    /// Nobody waits.
    None,
    /// A task awaits it.
    Oneshot(oneshot::Sender<Result<(), BackendError>>),
    /// The engine of shard `usize` waits for `RecordToken`.
    Engine(Weak<Shared>, usize, RecordToken),
}

type RecordJob = (Vec<CallRecord>, Done);

/// At most this many queued batches of one call are written together.
const MAX_MERGED_BATCHES: usize = 8;

/// Hands a call's steps to the backend one batch at a time, in order.
#[derive(Clone)]
pub(crate) struct Recorder {
    tx: mpsc::UnboundedSender<RecordJob>,
}

impl Recorder {
    pub fn spawn(backend: Arc<dyn SipBackend>) -> Recorder {
        let (tx, mut rx) = mpsc::unbounded_channel::<RecordJob>();
        tokio::spawn(async move {
            while let Some((mut records, done)) = rx.recv().await {
                // Steps that queued up while the last batch was being
                // written go together: one append per leg instead of one
                // per step, when the log is slow (at low load nothing
                // queues and each step goes alone, at once).
                let mut dones = vec![done];
                while dones.len() < MAX_MERGED_BATCHES {
                    match rx.try_recv() {
                        Ok((more, done)) => {
                            records.extend(more);
                            dones.push(done);
                        }
                        Err(_) => break,
                    }
                }
                if dones.len() > 1 {
                    metrics::counter!("dialtone_sip_call_record_batches_merged_total")
                        .increment(dones.len() as u64 - 1);
                }
                let result = backend.record_call(records).await;
                if let Err(e) = &result {
                    tracing::warn!(error = %e, "recording a call step failed");
                    metrics::counter!("dialtone_sip_call_record_failures_total").increment(1);
                }
                for done in dones {
                    match done {
                        Done::None => {}
                        Done::Oneshot(ack) => {
                            let _ = ack.send(result.clone());
                        }
                        Done::Engine(shared, shard, token) => {
                            if let Some(shared) = shared.upgrade() {
                                shared.run(shard, |engine, now| engine.record_done(token, now));
                            }
                        }
                    }
                }
            }
        });
        Recorder { tx }
    }

    /// Queues steps and waits until they (and every step queued before
    /// them) are durable.
    pub async fn record_durable(&self, records: Vec<CallRecord>) -> Result<(), BackendError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send((records, Done::Oneshot(ack)))
            .map_err(|_| BackendError::Internal("call recorder stopped".into()))?;
        done.await
            .map_err(|_| BackendError::Internal("call recorder stopped".into()))?
    }

    /// Queues steps without waiting for them.
    pub fn record(&self, records: Vec<CallRecord>) {
        self.send(records, Done::None);
    }

    fn send(&self, records: Vec<CallRecord>, done: Done) {
        let _ = self.tx.send((records, done));
    }
}

/// How many engines the calls are spread over (by Call-ID): enough that
/// the tokio workers rarely wait for each other's lock.
const SHARDS: usize = 16;

/// A shard's longest sleep: also how soon its timer task notices that the
/// proxy is gone.
const MAX_SLEEP: Duration = Duration::from_secs(1);

struct Shard {
    engine: Mutex<ShardState>,
    wake: Notify,
}

struct ShardState {
    engine: Engine,
    /// The instant the shard's timer task sleeps until.
    armed: Option<Instant>,
}

struct Shared {
    shards: Vec<Shard>,
    out: Arc<dyn Outbound>,
    backend: Arc<dyn SipBackend>,
    /// The recorder of every call that may still record a step.
    recorders: Mutex<HashMap<String, Recorder>>,
    /// REFERs that passed in answered calls, waiting for the new call
    /// they ask for (every shard's: the new call has another Call-ID).
    referrals: Mutex<transfer::Referrals>,
    timers_started: OnceLock<()>,
}

impl Shared {
    /// Runs `f` on shard `i`'s engine, then executes what it asked for
    /// and wakes the shard's timer task if its next deadline moved closer.
    fn run<R>(self: &Arc<Self>, i: usize, f: impl FnOnce(&mut Engine, Instant) -> R) -> R {
        self.run_then(i, f, |_| {})
    }

    /// [`Shared::run`], with `first` called on `f`'s result before the
    /// engine's actions are executed.
    fn run_then<R>(
        self: &Arc<Self>,
        i: usize,
        f: impl FnOnce(&mut Engine, Instant) -> R,
        first: impl FnOnce(&R),
    ) -> R {
        let now = Instant::now();
        let (result, actions, wake) = {
            // A panic while holding the lock left the engine as it was
            // before the failed input: carry on with it.
            let mut state = self.shards[i]
                .engine
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let result = f(&mut state.engine, now);
            let mut actions = Vec::new();
            while let Some(a) = state.engine.poll_action() {
                actions.push(a);
            }
            let next = state.engine.poll_timeout();
            let wake = next.is_some_and(|t| state.armed.is_none_or(|armed| t < armed));
            (result, actions, wake)
        };
        if wake {
            self.shards[i].wake.notify_one();
        }
        first(&result);
        for action in actions {
            self.execute(i, action);
        }
        result
    }

    fn execute(self: &Arc<Self>, shard: usize, action: Action) {
        match action {
            Action::Send(flow, bytes) => self.out.send(flow, bytes),
            Action::Record {
                call_id,
                records,
                done,
                last,
            } => {
                let recorder = {
                    let Ok(mut map) = self.recorders.lock() else {
                        return;
                    };
                    let recorder = map
                        .entry(call_id.clone())
                        .or_insert_with(|| Recorder::spawn(self.backend.clone()))
                        .clone();
                    if last {
                        map.remove(&call_id);
                    }
                    recorder
                };
                let done = match done {
                    Some(token) => Done::Engine(Arc::downgrade(self), shard, token),
                    None => Done::None,
                };
                recorder.send(records, done);
            }
        }
    }

    /// Records steps of call `call_id` outside the engine's flow of
    /// actions: after its other steps when the call still records, else
    /// on a recorder of their own (which ends once they are written).
    fn record_aside(&self, call_id: &str, records: Vec<CallRecord>) {
        let recorder = self
            .recorders
            .lock()
            .ok()
            .and_then(|m| m.get(call_id).cloned())
            .unwrap_or_else(|| Recorder::spawn(self.backend.clone()));
        recorder.send(records, Done::None);
    }

    fn start_timers(self: &Arc<Self>) {
        self.timers_started.get_or_init(|| {
            for i in 0..self.shards.len() {
                tokio::spawn(shard_timer(Arc::downgrade(self), i));
            }
        });
    }
}

/// Wakes shard `i` when its engine asks for it.
async fn shard_timer(shared: Weak<Shared>, i: usize) {
    let mut gauge_at = Instant::now();
    loop {
        let Some(s) = shared.upgrade() else {
            return;
        };
        let now = Instant::now();
        let sleep_until = {
            let Ok(mut state) = s.shards[i].engine.lock() else {
                return;
            };
            let until = state
                .engine
                .poll_timeout()
                .map_or(now + MAX_SLEEP, |t| t.min(now + MAX_SLEEP));
            state.armed = Some(until);
            until
        };
        tokio::select! {
            _ = s.shards[i].wake.notified() => {}
            _ = tokio::time::sleep_until(sleep_until.into()) => {}
        }
        s.run(i, |engine, now| engine.handle_timeout(now));
        // Shard 0 also reports every shard's dialogs, once a second (it
        // may wake far more often: every call sets a timer).
        if i == 0 && gauge_at.elapsed() >= MAX_SLEEP {
            gauge_at = Instant::now();
            let dialogs: usize = s
                .shards
                .iter()
                .filter_map(|sh| sh.engine.lock().ok().map(|st| st.engine.counts().1))
                .sum();
            metrics::gauge!("dialtone_sip_dialogs").set(dialogs as f64);
        }
    }
}

/// The proxy: the call engines and what connects them to the network and
/// the backend.
/// How an application hangs up the call it answered (ADR 0022). Holds no
/// strong reference: a call of a gateway that shut down is over already.
#[derive(Clone)]
pub struct AppControl {
    shared: std::sync::Weak<Shared>,
    shard: usize,
    call_id: Arc<str>,
}

impl std::fmt::Debug for AppControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppControl")
            .field("call_id", &self.call_id)
            .finish()
    }
}

impl AppControl {
    /// Sends the BYE that ends the call (the session then hears `ended`
    /// with [`crate::AppEnd::HungUp`]). False when the call is over
    /// already. Never call it from inside an [`crate::AppSession`] method:
    /// those run under the engine's lock.
    pub fn hang_up(&self) -> bool {
        self.end(crate::AppEnd::HungUp)
    }

    /// Hangs up because no media came from the caller (an RTP timeout):
    /// as [`AppControl::hang_up`], with a BYE whose `Reason` says so, so
    /// that the call is recorded as ended by a timeout (the session hears
    /// [`crate::AppEnd::MediaTimeout`]).
    pub fn media_timed_out(&self) -> bool {
        self.end(crate::AppEnd::MediaTimeout)
    }

    fn end(&self, end: crate::AppEnd) -> bool {
        let Some(shared) = self.shared.upgrade() else {
            return false;
        };
        shared.run(self.shard, |engine, now| {
            engine.hang_up_app(&self.call_id, end, now)
        })
    }

    /// The SIP Call-ID of the call.
    pub fn call_id(&self) -> &str {
        &self.call_id
    }
}

pub struct Proxy {
    settings: ProxySettings,
    /// `advertised` split once (host without brackets, port), for
    /// recognising our own Route entries on every in-dialog request.
    advertised_host_port: (String, u16),
    shared: Arc<Shared>,
}

impl Proxy {
    pub fn new(
        settings: ProxySettings,
        out: Arc<dyn Outbound>,
        backend: Arc<dyn SipBackend>,
    ) -> Proxy {
        let a = settings.advertised.addr.as_str();
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
        let shards = (0..SHARDS)
            .map(|_| Shard {
                engine: Mutex::new(ShardState {
                    engine: Engine::new(settings.clone(), rand::random()),
                    armed: None,
                }),
                wake: Notify::new(),
            })
            .collect();
        Proxy {
            settings,
            advertised_host_port,
            shared: Arc::new(Shared {
                shards,
                out,
                backend,
                recorders: Mutex::new(HashMap::new()),
                referrals: Mutex::new(transfer::Referrals::default()),
                timers_started: OnceLock::new(),
            }),
        }
    }

    pub fn settings(&self) -> &ProxySettings {
        &self.settings
    }

    /// Calls being set up and calls answered (metrics, tests).
    pub fn counts(&self) -> (usize, usize) {
        self.shared
            .shards
            .iter()
            .filter_map(|s| s.engine.lock().ok().map(|st| st.engine.counts()))
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
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
        msg.list(crate::wire::message::Name::Route)
            .take_while(|r| NameAddr::parse(r).is_some_and(|n| self.is_ours(n.uri)))
            .count()
    }

    fn shard_of(&self, call_id: &str) -> usize {
        // Stable for every message of a call, on every leg (SHARDS
        // divides 65,536: see `shard_key`).
        (shard_key(call_id) % SHARDS as u64) as usize
    }

    /// A retransmitted INVITE, CANCEL or ACK of a call being set up:
    /// handed to its call. False when no call has this key.
    pub(crate) fn to_call(&self, call_id: &str, key: &Key, input: CallInput) -> bool {
        let shard = self.shard_of(call_id);
        self.shared
            .run(shard, |engine, now| engine.to_call(key, input, now))
    }

    /// A CANCEL of the INVITE `key`. When it matches a call being set up,
    /// `ok` (the CANCEL's 200) is sent on `flow` before anything the
    /// cancel makes the call send (RFC 3261 s.9.2: the 200, then the
    /// INVITE's 487). False when nothing matched.
    pub(crate) fn cancel(&self, call_id: &str, key: &Key, flow: Flow, ok: Bytes) -> bool {
        let shard = self.shard_of(call_id);
        self.shared.run_then(
            shard,
            |engine, now| engine.to_call(key, CallInput::Cancel, now),
            |matched| {
                if *matched {
                    self.shared.out.send(flow, ok);
                }
            },
        )
    }

    /// Forks an authenticated INVITE as its routing plan says.
    pub(crate) fn start_call(&self, call: NewCall<'_>, received_at: Instant) {
        self.shared.start_timers();
        let call_id = call.legs.sip_call_id.clone();
        let span =
            tracing::debug_span!("call", sip_call_id = %call_id, call_id = %call.legs.call_id);
        let _entered = span.enter();
        let shard = self.shard_of(&call_id);
        self.shared
            .run(shard, |engine, now| engine.start_call(call, now));
        metrics::histogram!("dialtone_sip_invite_forward_seconds")
            .record(received_at.elapsed().as_secs_f64());
    }

    /// The handle through which the application answering the call
    /// `sip_call_id` will hang up (ADR 0022).
    pub(crate) fn app_control(&self, sip_call_id: &str) -> AppControl {
        AppControl {
            shared: Arc::downgrade(&self.shared),
            shard: self.shard_of(sip_call_id),
            call_id: sip_call_id.into(),
        }
    }

    /// Answers a feature code's INVITE and hangs up (ADR 0020), or answers
    /// for an application (ADR 0022).
    pub(crate) fn start_feature_call(&self, call: NewFeatureCall<'_>) {
        self.shared.start_timers();
        let shard = self.shard_of(call.msg.call_id().unwrap_or(""));
        self.shared
            .run(shard, |engine, now| engine.start_feature_call(call, now));
    }

    /// A response arrived. False when it is not for us (dropped).
    pub(crate) fn on_response(&self, msg: &Message<'_>) -> bool {
        let Ok(call_id) = msg.call_id() else {
            return false;
        };
        let shard = self.shard_of(call_id);
        self.shared
            .run(shard, |engine, now| engine.on_response(msg, now))
    }

    /// Forwards a request inside a dialog (it has a To tag) to the other
    /// side. Returns a response to send back when the request cannot be
    /// forwarded.
    pub(crate) fn in_dialog(
        &self,
        msg: &Message<'_>,
        source: Source,
    ) -> Option<(u16, &'static str)> {
        let call_id = msg.call_id().ok()?;
        let shard = self.shard_of(call_id);
        let pop_routes = self.our_routes(msg);
        self.shared.run(shard, |engine, now| {
            engine.in_dialog(msg, source, pop_routes, now)
        })
    }

    /// A REFER inside a dialog (its Refer-To read: `refer_to`): forwarded
    /// like any request in the dialog. When it goes to the other party of
    /// an answered call between users, the referral is noted, so that the
    /// new call it asks for is recognised ([`Proxy::link_transfer`]).
    pub(crate) fn refer(
        &self,
        msg: &Message<'_>,
        source: Source,
        mut refer_to: transfer::ReferTo,
    ) -> Option<(u16, &'static str)> {
        let call_id = msg.call_id().ok()?;
        let mut rewritten = None;
        if let (CallMode::B2bua, Some(replaces)) =
            (self.settings.call_mode, refer_to.replaces.as_ref())
        {
            // The Replaces names the consultation call as the transferor
            // knows it; the target knows its own leg of it (another
            // Call-ID and tags). That call is in the shard of its
            // Call-ID (its legs' Call-IDs carry the same shard key).
            let shard = self.shard_of(&replaces.call_id);
            let Some(theirs) = self
                .shared
                .run(shard, |engine, _| engine.translate_replaces(replaces))
            else {
                return Some((
                    400,
                    "Bad Request (Refer-To Replaces names no answered call here)",
                ));
            };
            rewritten = Some(transfer::refer_to_value(&refer_to.target, &theirs));
            refer_to.replaces = Some(theirs);
        }
        let shard = self.shard_of(call_id);
        let pop_routes = self.our_routes(msg);
        let (refusal, parties, now) = self.shared.run(shard, |engine, now| {
            // Read before forwarding: a REFER of a dialog being torn down
            // is forwarded (or refused) but links nothing.
            let parties = engine.referral_parties(msg);
            let refusal = engine.in_dialog_with(msg, source, pop_routes, now, rewritten);
            (refusal, parties, now)
        });
        if let (None, Some(p)) = (refusal, parties) {
            tracing::debug!(call_id = %p.call_id, target = ?refer_to.target, "REFER noted");
            if let Ok(mut referrals) = self.shared.referrals.lock() {
                referrals.note(transfer::Referral {
                    call_id: p.call_id,
                    sip_call_id: p.sip_call_id,
                    transferor: p.transferor,
                    transferee: p.transferee,
                    refer_to,
                    at: now,
                });
            }
        }
        refusal
    }

    /// When the authenticated INVITE `msg` of the new call `legs` is the
    /// one a noted REFER asked for, records the transfer on the
    /// transferor's leg of the original call (`CallTransferred`), and
    /// marks the dialog an attended transfer replaces so that its end is
    /// recorded as `transferred`. Returns the transfer recorded.
    pub(crate) fn link_transfer(&self, msg: &Message<'_>, legs: &Legs) -> Option<Transfer> {
        let callee = legs.callee.as_ref()?;
        let replaces = transfer::replaces_of(msg);
        let referred_by = transfer::referred_by(msg);
        let referral = self.shared.referrals.lock().ok()?.take(
            transfer::NewInvite {
                caller: &legs.caller,
                callee,
                replaces: replaces.as_ref(),
                referred_by: referred_by.as_ref(),
            },
            Instant::now(),
        )?;
        let replaced_call_id = replaces.as_ref().and_then(|r| {
            let shard = self.shard_of(&r.call_id);
            self.shared.run(shard, |engine, _| engine.mark_replaced(r))
        });
        let address = |(domain, user): &transfer::Party| format!("{user}@{domain}");
        let t = Transfer {
            new_call_id: legs.call_id.clone(),
            transferor: address(&referral.transferor),
            transferee: address(&referral.transferee),
            target: address(&referral.refer_to.target),
            kind: if referral.refer_to.replaces.is_some() {
                TransferKind::Attended
            } else {
                TransferKind::Blind
            },
            replaced_call_id,
        };
        let (domain, user) = referral.transferor;
        self.shared.record_aside(
            &referral.call_id,
            vec![CallRecord {
                call_id: referral.call_id.clone(),
                domain,
                user,
                step: CallStep::Transferred(t.clone()),
                sip_call_id: referral.sip_call_id,
            }],
        );
        Some(t)
    }

    /// A recorder for steps of a call the proxy does not set up (refused
    /// before forking: 403, 404, 480).
    /// Sends `bytes` on `flow` (a response the core builds itself).
    pub(crate) fn send(&self, flow: Flow, bytes: Bytes) {
        self.shared.out.send(flow, bytes);
    }

    pub(crate) fn recorder(&self) -> Recorder {
        Recorder::spawn(self.shared.backend.clone())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{
        CallCause, CallRoute, CallStep, ConnectionId, CurrentContact, HangupSide, Lookup,
        RegisterOutcome, RegisterRequest, ResourceWatcher, Watch,
    };

    /// Records what `record_call` was given; the first call waits until
    /// `release` is notified (a slow append).
    #[derive(Default)]
    struct SlowLog {
        batches: Mutex<Vec<Vec<(String, CallStep)>>>,
        release: Notify,
    }

    #[async_trait::async_trait]
    impl SipBackend for SlowLog {
        async fn credentials(&self, _: &str, _: &str) -> Result<Lookup, BackendError> {
            Err(BackendError::Internal("not in this test".into()))
        }
        async fn register(&self, _: RegisterRequest) -> Result<RegisterOutcome, BackendError> {
            Err(BackendError::Internal("not in this test".into()))
        }
        async fn contacts(&self, _: &str, _: &str) -> Result<Vec<CurrentContact>, BackendError> {
            Ok(Vec::new())
        }
        async fn route_call(&self, _: &str, _: &str, _: &str) -> Result<CallRoute, BackendError> {
            Ok(CallRoute::UnknownUser)
        }
        async fn record_call(&self, records: Vec<CallRecord>) -> Result<(), BackendError> {
            let first = self.batches.lock().unwrap().is_empty();
            self.batches
                .lock()
                .unwrap()
                .push(records.into_iter().map(|r| (r.user, r.step)).collect());
            if first {
                self.release.notified().await;
            }
            Ok(())
        }
        async fn watch(&self, _: &str, _: &str) -> Result<Watch, BackendError> {
            Ok(Watch::UnknownUser)
        }
        fn set_watcher(&self, _: Arc<dyn ResourceWatcher>) {}
        fn lockout(&self, _: crate::guard::Lockout) {}
        fn flow_closed(&self, _: ConnectionId) {}
    }

    fn legs() -> Legs {
        Legs {
            call_id: "c1".into(),
            sip_call_id: "s1".into(),
            caller: ("example.test".into(), "alice".into()),
            callee: Some(("example.test".into(), "bob".into())),
            dialled: "bob@example.test".into(),
            group: None,
            members: Vec::new(),
            app: None,
        }
    }

    #[tokio::test]
    async fn steps_queued_behind_a_slow_batch_are_recorded_together_in_order() {
        let log = Arc::new(SlowLog::default());
        let recorder = Recorder::spawn(log.clone());
        let legs = legs();
        recorder.record(legs.start());
        // The first batch is being written; three more queue behind it.
        while log.batches.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        recorder.record(legs.records(|_| CallStep::Ringing));
        recorder.record(legs.records(|_| CallStep::Answer {
            contact: "sip:bob@192.0.2.2".into(),
        }));
        let end = {
            let recorder = recorder.clone();
            let records = legs.end(CallCause::NormalClearing, HangupSide::Caller);
            tokio::spawn(async move { recorder.record_durable(records).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        log.release.notify_one();
        end.await.unwrap().unwrap();
        let batches = log.batches.lock().unwrap().clone();
        assert_eq!(batches.len(), 2, "{batches:?}");
        let steps = |user: &str, batch: &[(String, CallStep)]| -> Vec<&'static str> {
            batch
                .iter()
                .filter(|(u, _)| u == user)
                .map(|(_, s)| match s {
                    CallStep::Start { .. } => "start",
                    CallStep::Ringing => "ringing",
                    CallStep::Answer { .. } => "answer",
                    CallStep::End { .. } => "end",
                    CallStep::Fail { .. } => "fail",
                    CallStep::Forwarded { .. } => "forwarded",
                    CallStep::ForwardSkipped(_) => "forward skipped",
                    CallStep::Transferred(_) => "transferred",
                })
                .collect()
        };
        for user in ["alice", "bob"] {
            assert_eq!(steps(user, &batches[0]), ["start"]);
            assert_eq!(steps(user, &batches[1]), ["ringing", "answer", "end"]);
        }
    }
}
