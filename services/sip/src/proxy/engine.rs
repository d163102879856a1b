//! The call engine: every call being set up and every answered dialog of
//! one shard of the proxy, as a sans-IO state machine (the quinn-proto
//! shape).
//!
//! Inputs are parsed messages, timer expiries and "these call steps are
//! durable" notices, each with `now`; outputs are [`Action`]s the shell
//! polls ([`Engine::poll_action`]) and the next instant it must be woken at
//! ([`Engine::poll_timeout`]). It never reads the clock, never sleeps,
//! never sends and has no randomness of its own (branch ids and tags come
//! from a seeded generator), so a simulation can drive it
//! deterministically (`tests/call_simulation.rs`).
//!
//! Durability: a step that a message reports (a failure before the final
//! response, the end of a call before the BYE is forwarded) is handed out
//! as [`Action::Record`] with a [`RecordToken`]; what depends on it is
//! parked until the shell calls [`Engine::record_done`].

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{Hash as _, Hasher as _};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::backend::{AppSession, CallCause, CallRecord, HangupSide, RoutePlan};
use crate::proxy::forward::{self, Forward};
use crate::transaction::Key;
use crate::transport::Flow;
use crate::wire::message::{Message, Method, Name, StartLine};
use crate::wire::response::Source;

use super::b2bua::{B2buaCall, B2buaSetup, BRANCH_PREFIX, CALL_ID_PREFIX};
use super::call::{via, CallSetup, Effect, ProxyCall};
use super::dialog::{Dialog, LiveDialog};
use super::feature::{self, FeatureCall, FeatureSetup};
use super::legs::{Legs, RecordToken};
use super::transfer::{self, Party};

/// Who refers whom in an answered call (see [`Engine::referral_parties`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReferralParties {
    pub call_id: String,
    pub sip_call_id: String,
    pub transferor: Party,
    pub transferee: Party,
}

/// How long a dialog that is being torn down is remembered (BYE
/// retransmissions still find it).
pub(crate) const DIALOG_LINGER: Duration = Duration::from_secs(32);
/// How often answered dialogs are checked for their maximum duration and
/// forgotten after their linger.
const DIALOG_SWEEP: Duration = Duration::from_secs(1);

/// Answered calls' durations, answer to end (seconds).
const CALL_DURATION: &str = "dialtone_sip_call_duration_seconds";

/// Where peers reach us, as our Via and Record-Route say: `host:port` of
/// the UDP/TCP listener, and of the TLS listener when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertised {
    /// `host:port` of our UDP and TCP listener.
    pub addr: String,
    /// `host:port` of our TLS listener (same host).
    pub tls: Option<String>,
}

impl Advertised {
    /// UDP/TCP only.
    pub fn new(addr: impl Into<String>) -> Advertised {
        Advertised {
            addr: addr.into(),
            tls: None,
        }
    }

    /// The sent-by of our Via on a request sent over `transport`. A phone
    /// may open a connection to it for its responses (belle-sip, linphone's
    /// SIP stack, does over TLS, RFC 3261 s.18.2.2), so over TLS it must
    /// be the TLS listener, not the UDP/TCP port.
    pub fn sent_by(&self, transport: crate::backend::Transport) -> &str {
        match (transport, &self.tls) {
            (crate::backend::Transport::Tls, Some(tls)) => tls,
            _ => &self.addr,
        }
    }
}

impl From<&str> for Advertised {
    fn from(addr: &str) -> Advertised {
        Advertised::new(addr)
    }
}

impl std::ops::Deref for Advertised {
    type Target = str;

    /// The UDP/TCP address (Record-Route, Contact).
    fn deref(&self) -> &str {
        &self.addr
    }
}

impl std::fmt::Display for Advertised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr)
    }
}

/// Proxy settings, from the gateway's configuration.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Our Via and Record-Route addresses.
    pub advertised: Advertised,
    /// Every address we listen on (to recognise our own Route entries).
    pub local: Vec<SocketAddr>,
    /// An unanswered call is given up after this (`480`, cause `no_answer`).
    pub no_answer_timeout: Duration,
    /// An answered call is ended by the proxy after this (cause `timeout`).
    pub max_call_duration: Duration,
    /// How calls are connected.
    pub call_mode: CallMode,
}

/// How the engine connects a caller to the phones it rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CallMode {
    /// A forking proxy (RFC 3261 s.16): the caller's dialog is the
    /// callee's, the node only record-routes it.
    #[default]
    Proxy,
    /// A back-to-back user agent: the node answers the caller itself and
    /// calls each target in a dialog of its own, joining the two
    /// (`b2bua.rs`).
    B2bua,
}

impl CallMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CallMode::Proxy => "proxy",
            CallMode::B2bua => "b2bua",
        }
    }
}

impl std::str::FromStr for CallMode {
    type Err = String;

    fn from_str(s: &str) -> Result<CallMode, String> {
        match s.to_ascii_lowercase().as_str() {
            "proxy" => Ok(CallMode::Proxy),
            "b2bua" => Ok(CallMode::B2bua),
            other => Err(format!("unknown SIP call mode {other:?} (proxy or b2bua)")),
        }
    }
}

/// What the shell shards calls by: every message of one call, on any of
/// its legs, has the same key. A Call-ID is hashed (FNV-1a), except a
/// back-to-back callee leg's, which carries the low 16 bits of its
/// caller's key (`b2bua::CALL_ID_PREFIX`); shard counts that divide
/// 65,536 therefore route both legs of a call alike.
pub fn shard_key(call_id: &str) -> u64 {
    if let Some(rest) = call_id.strip_prefix(CALL_ID_PREFIX) {
        if let Some(key) = rest.get(..4).and_then(|h| u64::from_str_radix(h, 16).ok()) {
            return key;
        }
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in call_id.as_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// What the engine asks the shell to do.
#[derive(Debug)]
pub enum Action {
    /// Send `bytes` on `flow`.
    Send(Flow, Bytes),
    /// Record call steps after every earlier step of the same call (by
    /// `call_id`). With `done`, call [`Engine::record_done`] once they are
    /// durable (or failed: the call goes on either way). `last`: the call
    /// records nothing after this.
    Record {
        call_id: String,
        records: Vec<CallRecord>,
        done: Option<RecordToken>,
        last: bool,
    },
}

/// What the gateway hands to a call being set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallInput {
    /// The caller retransmitted its INVITE.
    InviteAgain,
    /// The caller cancelled (the CANCEL itself is answered by the caller
    /// of [`Engine::to_call`]).
    Cancel,
    /// The caller acknowledged our non-2xx final response.
    Ack,
}

/// A new proxied INVITE (see [`Engine::start_call`]).
pub struct NewCall<'a> {
    pub msg: &'a Message<'a>,
    pub raw: Bytes,
    pub key: Key,
    pub source: Source,
    /// Where responses to the caller go.
    pub upstream: Flow,
    pub legs: Legs,
    pub plan: RoutePlan,
    /// How many of the INVITE's leading Route elements are ours.
    pub pop_routes: usize,
    pub max_forwards: u32,
}

/// A feature call or an application's call to answer (see
/// [`Engine::start_feature_call`]).
pub struct NewFeatureCall<'a> {
    pub msg: &'a Message<'a>,
    pub key: Key,
    pub source: Source,
    /// Where responses to the caller go.
    pub upstream: Flow,
    /// An application's SDP answer and session; `None`: a feature code.
    pub app: Option<(Vec<u8>, Box<dyn AppSession>)>,
    /// The caller's leg when the call is one (an application a user
    /// dialled, ADR 0024), started and answered already: its end is
    /// recorded durably before what the end sends (the 200 to the
    /// caller's BYE, our BYE).
    pub legs: Option<Legs>,
}

/// Counters a simulation checks (and the shell may export).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    /// Calls started.
    pub calls: u64,
    /// Timer expiries handled for calls (one per call per expiry).
    pub call_wakeups: u64,
    /// Expiries after which the call still had a timer at or before
    /// `now`: a call that would spin. Always 0 unless there is a bug.
    pub stuck_timers: u64,
    /// In-dialog retransmissions absorbed while their original waited for
    /// a durable recording (a BYE waiting for the end of its call).
    pub absorbed_while_parked: u64,
}

/// What waits for a durable recording.
enum Parked {
    /// A call's final response.
    Call(u64),
    /// Messages to send (a BYE to forward, the proxy's own BYEs).
    Sends(Vec<(Flow, Bytes)>),
}

/// SplitMix64: branch ids and BYE branches, seeded by the shell (random)
/// or by a simulation (its seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// One shard of the proxy's state.
pub struct Engine {
    settings: ProxySettings,
    record_route: String,
    rng: Rng,
    branch_salt: u64,
    next_call: u64,
    calls: HashMap<u64, ProxyCall>,
    invites: HashMap<Key, u64>,
    /// INVITEs answered with a 2xx whose call is forgotten: their
    /// retransmissions are absorbed until the instant (Timer L, RFC 6026
    /// s.7.1) instead of starting a second call.
    accepted: HashMap<Key, Instant>,
    branches: HashMap<Box<str>, (u64, usize)>,
    /// Each call's next deadline, ordered.
    timers: BTreeSet<(Instant, u64)>,
    scheduled: HashMap<u64, Instant>,
    dialogs: HashMap<Box<str>, Dialog>,
    /// Back-to-back calls (set up or answered), by handle; their Via
    /// branches and their legs' Call-IDs (the caller's included).
    b2bua: HashMap<u64, B2buaCall>,
    b2bua_branches: HashMap<Box<str>, u64>,
    b2bua_call_ids: HashMap<Box<str>, u64>,
    /// Feature calls (ADR 0020), by handle; their Call-IDs and BYE
    /// branches.
    features: HashMap<u64, FeatureCall>,
    feature_call_ids: HashMap<Box<str>, u64>,
    feature_branches: HashMap<Box<str>, u64>,
    next_sweep: Option<Instant>,
    parked: HashMap<RecordToken, Parked>,
    next_token: u64,
    actions: VecDeque<Action>,
    stats: EngineStats,
}

impl Engine {
    /// An engine whose branch ids and tags derive from `seed`.
    pub fn new(settings: ProxySettings, seed: u64) -> Engine {
        let mut rng = Rng(seed);
        let branch_salt = rng.next();
        Engine {
            record_route: format!("<sip:{};lr>", settings.advertised),
            settings,
            rng,
            branch_salt,
            next_call: 1,
            calls: HashMap::new(),
            invites: HashMap::new(),
            accepted: HashMap::new(),
            branches: HashMap::new(),
            timers: BTreeSet::new(),
            scheduled: HashMap::new(),
            dialogs: HashMap::new(),
            b2bua: HashMap::new(),
            b2bua_branches: HashMap::new(),
            b2bua_call_ids: HashMap::new(),
            features: HashMap::new(),
            feature_call_ids: HashMap::new(),
            feature_branches: HashMap::new(),
            next_sweep: None,
            parked: HashMap::new(),
            next_token: 1,
            actions: VecDeque::new(),
            stats: EngineStats::default(),
        }
    }

    /// Calls being set up and answered calls (including those lingering
    /// after their BYE).
    pub fn counts(&self) -> (usize, usize) {
        let answered = self.b2bua.values().filter(|c| c.is_answered()).count();
        (
            self.calls.len() + self.b2bua.len() - answered,
            self.dialogs.len() + answered + self.features.len(),
        )
    }

    /// Is anything at all still held: calls, dialogs, branches, answered
    /// INVITEs' tombstones, recordings waited for, timers?
    pub fn is_idle(&self) -> bool {
        self.calls.is_empty()
            && self.dialogs.is_empty()
            && self.invites.is_empty()
            && self.accepted.is_empty()
            && self.branches.is_empty()
            && self.timers.is_empty()
            && self.scheduled.is_empty()
            && self.parked.is_empty()
            && self.b2bua.is_empty()
            && self.b2bua_branches.is_empty()
            && self.b2bua_call_ids.is_empty()
            && self.features.is_empty()
            && self.feature_call_ids.is_empty()
            && self.feature_branches.is_empty()
    }

    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// Recordings the engine still waits for.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// The next action for the shell.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Engine::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let call = self.timers.first().map(|(t, _)| *t);
        match (call, self.next_sweep) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Forks a new INVITE as its routing plan says. The caller's `Start`
    /// step is recorded first.
    pub fn start_call(&mut self, call: NewCall<'_>, now: Instant) {
        let handle = self.next_call;
        self.next_call += 1;
        self.stats.calls += 1;
        let to_tag = format!("{:016x}", self.rng.next());
        if self.settings.call_mode == CallMode::B2bua {
            let call_id: Box<str> = call.legs.sip_call_id.clone().into();
            let setup = B2buaSetup {
                key: call.key.clone(),
                invite: call.raw,
                source: call.source,
                upstream: call.upstream,
                to_tag,
                shard_key: (shard_key(&call_id) & 0xffff) as u16,
                legs: call.legs,
                steps: call.plan.steps,
                advertised: self.settings.advertised.clone(),
                no_answer_timeout: self.settings.no_answer_timeout,
                max_call_duration: self.settings.max_call_duration,
                max_forwards: call.max_forwards,
            };
            let salt = self.branch_salt ^ self.rng.next();
            let mut fx = Vec::new();
            let b2bua = B2buaCall::start(setup, call.msg, salt, now, &mut fx);
            self.invites.insert(call.key, handle);
            self.b2bua_call_ids.insert(call_id, handle);
            self.b2bua.insert(handle, b2bua);
            self.apply(handle, fx, now);
            return;
        }
        let setup = CallSetup {
            key: call.key.clone(),
            invite: call.raw,
            source: call.source,
            upstream: call.upstream,
            to_tag,
            legs: call.legs,
            steps: call.plan.steps,
            pop_routes: call.pop_routes,
            max_forwards: call.max_forwards,
            advertised: self.settings.advertised.clone(),
            record_route: self.record_route.clone(),
            no_answer_timeout: self.settings.no_answer_timeout,
        };
        let salt = self.branch_salt ^ self.rng.next();
        let mut fx = Vec::new();
        let proxy_call = ProxyCall::start(setup, call.msg, salt, now, &mut fx);
        self.invites.insert(call.key, handle);
        self.calls.insert(handle, proxy_call);
        self.apply(handle, fx, now);
    }

    /// Answers a feature code's INVITE and hangs up (ADR 0020): the change
    /// it asked for is durable already. With `app`, answers for an
    /// application instead and keeps the call up (ADR 0022).
    pub fn start_feature_call(&mut self, call: NewFeatureCall<'_>, now: Instant) {
        let handle = self.next_call;
        self.next_call += 1;
        let setup = FeatureSetup {
            key: call.key.clone(),
            source: call.source,
            upstream: call.upstream,
            to_tag: format!("{:016x}", self.rng.next()),
            bye_branch: format!("{}{:016x}", feature::BRANCH_PREFIX, self.rng.next()).into(),
            advertised: self.settings.advertised.clone(),
            kind: match call.app {
                Some((answer, session)) => feature::Kind::App { answer, session },
                None => feature::Kind::Feature,
            },
            legs: call.legs,
        };
        let mut out = Vec::new();
        let fc = FeatureCall::start(setup, call.msg, now, &mut out);
        self.invites.insert(call.key, handle);
        self.feature_call_ids.insert(fc.call_id().into(), handle);
        self.feature_branches.insert(fc.bye_branch().into(), handle);
        self.features.insert(handle, fc);
        self.apply_feature(handle, out, now);
    }

    /// The application answering the call `call_id` hangs up. False when no
    /// such call is up (it ended already).
    pub fn hang_up_app(&mut self, call_id: &str, end: crate::AppEnd, now: Instant) -> bool {
        let Some(&handle) = self.feature_call_ids.get(call_id) else {
            return false;
        };
        let mut out = Vec::new();
        if let Some(fc) = self.features.get_mut(&handle) {
            fc.hang_up_app(end, now, &mut out);
        }
        let hung_up = !out.is_empty();
        self.apply_feature(handle, out, now);
        hung_up
    }

    /// Sends what a feature call asked for, then forgets it when it is
    /// done or reschedules its timer.
    fn apply_feature(&mut self, handle: u64, out: Vec<(Flow, Bytes)>, now: Instant) {
        let ended = self
            .features
            .get_mut(&handle)
            .and_then(FeatureCall::take_end_records);
        match ended {
            // The leg's end is durable before the caller hears of it.
            Some((call_id, records)) => {
                self.record_then_send(call_id, records, out);
            }
            None => {
                for (flow, bytes) in out {
                    self.actions.push_back(Action::Send(flow, bytes));
                }
            }
        }
        if let Some(old) = self.scheduled.remove(&handle) {
            self.timers.remove(&(old, handle));
        }
        let Some(fc) = self.features.get(&handle) else {
            return;
        };
        if fc.is_done() {
            if let Some(fc) = self.features.remove(&handle) {
                self.invites.remove(fc.key());
                self.feature_call_ids.remove(fc.call_id());
                self.feature_branches.remove(fc.bye_branch());
            }
            return;
        }
        let next = fc.next_deadline();
        self.schedule(handle, next, now);
    }

    /// A retransmitted INVITE, CANCEL or ACK of a call being set up. False
    /// when no call has this key.
    pub fn to_call(&mut self, key: &Key, input: CallInput, now: Instant) -> bool {
        let Some(&handle) = self.invites.get(key) else {
            // An answered INVITE's retransmission is absorbed; its ACK and
            // CANCEL are not ours (the ACK of a 2xx is routed in the dialog).
            return input == CallInput::InviteAgain && self.accepted.contains_key(key);
        };
        if let Some(fc) = self.features.get_mut(&handle) {
            // Answered already: a CANCEL is too late (its 200 is all it
            // gets, RFC 3261 s.9.2); an ACK reusing the INVITE's branch
            // acknowledges the 2xx.
            let mut out = Vec::new();
            match input {
                CallInput::InviteAgain => fc.on_invite_again(&mut out),
                CallInput::Cancel => {}
                CallInput::Ack => fc.on_ack(now, &mut out),
            }
            self.apply_feature(handle, out, now);
            return true;
        }
        let mut fx = Vec::new();
        if let Some(call) = self.b2bua.get_mut(&handle) {
            match input {
                CallInput::InviteAgain => call.on_invite_again(&mut fx),
                CallInput::Cancel => call.on_cancel(now, &mut fx),
                CallInput::Ack => call.on_ack(now),
            }
            self.apply(handle, fx, now);
            return true;
        }
        let Some(call) = self.calls.get_mut(&handle) else {
            return false;
        };
        match input {
            CallInput::InviteAgain => call.on_invite_again(&mut fx),
            CallInput::Cancel => call.on_cancel(now, &mut fx),
            CallInput::Ack => call.on_ack(now),
        }
        self.apply(handle, fx, now);
        true
    }

    /// A response arrived: to its call (a branch we keep state for), or
    /// relayed by its Via (a request forwarded without state, or a 2xx
    /// retransmission after the call was forgotten). False when it is not
    /// for us (dropped).
    pub fn on_response(&mut self, msg: &Message<'_>, now: Instant) -> bool {
        let Ok(top) = msg.top_via() else {
            return false;
        };
        let Some(branch) = top.branch() else {
            return false;
        };
        if branch.starts_with(feature::BRANCH_PREFIX) {
            // A feature call's BYE.
            if let Some(&handle) = self.feature_branches.get(branch) {
                if let Some(fc) = self.features.get_mut(&handle) {
                    fc.on_response(msg, now);
                }
                self.apply_feature(handle, Vec::new(), now);
            }
            return true;
        }
        if branch.starts_with(BRANCH_PREFIX) {
            // A back-to-back call's own request; nothing is relayed.
            if let Some(&handle) = self.b2bua_branches.get(branch) {
                let mut fx = Vec::new();
                if let Some(call) = self.b2bua.get_mut(&handle) {
                    call.on_response(msg, now, &mut fx);
                }
                self.apply(handle, fx, now);
            }
            return true;
        }
        if branch.starts_with("z9hG4bK-dt") {
            if let Some(&(handle, i)) = self.branches.get(branch) {
                let mut fx = Vec::new();
                if let Some(call) = self.calls.get_mut(&handle) {
                    call.on_response(msg, i, now, &mut fx);
                }
                self.apply(handle, fx, now);
                return true;
            }
            // The call is forgotten: only 2xx retransmissions still matter.
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

    fn relay_response(&mut self, msg: &Message<'_>) {
        let Some(bytes) = forward::strip_top_via(msg) else {
            return;
        };
        let Some(next) = msg.list(Name::Via).nth(1) else {
            return;
        };
        let Ok(next) = crate::wire::message::Via::parse(next) else {
            return;
        };
        if let Some((transport, dest)) = crate::transport::response_destination(&next) {
            self.actions
                .push_back(Action::Send(Flow::new(transport, dest), bytes));
        }
    }

    /// Forwards a request inside a dialog (it has a To tag) to the other
    /// side; for the first BYE, only once the end of the call is durable.
    /// Returns a response to send back when the request cannot be
    /// forwarded.
    pub fn in_dialog(
        &mut self,
        msg: &Message<'_>,
        source: Source,
        pop_routes: usize,
        now: Instant,
    ) -> Option<(u16, &'static str)> {
        self.in_dialog_with(msg, source, pop_routes, now, None)
    }

    /// [`Engine::in_dialog`]; a REFER relayed by a b2bua call carries
    /// `refer_to` as its Refer-To instead of the one received (a Replaces
    /// translated to the other leg's dialog).
    pub(crate) fn in_dialog_with(
        &mut self,
        msg: &Message<'_>,
        source: Source,
        pop_routes: usize,
        now: Instant,
        refer_to: Option<String>,
    ) -> Option<(u16, &'static str)> {
        let method_is_ack = matches!(
            msg.start,
            StartLine::Request {
                method: Method::Ack,
                ..
            }
        );
        let method_is_bye = matches!(
            msg.start,
            StartLine::Request {
                method: Method::Bye,
                ..
            }
        );
        let call_id = msg.call_id().ok()?;
        let from_tag = msg.from().ok().and_then(|f| f.tag()).unwrap_or("");
        let to_tag = msg.to().ok().and_then(|t| t.tag()).unwrap_or("");
        // An application's call reached through the proxy (a voicemail
        // step, ADR 0022) shares its Call-ID with the proxied dialog (or,
        // in b2bua mode, with the b2bua's callee leg). What the caller
        // sends goes through the proxy first (it carries our Route), then
        // comes back to the application; what the application sends is
        // the callee's side of that dialog. Only a request from the
        // application's peer that is not for the proxy is the
        // application's (ADR 0024: the proxied dialog records the end).
        let for_app = self
            .feature_call_ids
            .get(call_id)
            .copied()
            .filter(|handle| {
                let peer = self
                    .features
                    .get(handle)
                    .is_some_and(|fc| fc.is_from_peer(call_id, from_tag, to_tag));
                let proxied = pop_routes > 0 && self.dialogs.contains_key(call_id);
                peer && !proxied
            });
        let own_dialog = self.feature_call_ids.contains_key(call_id)
            && !self.dialogs.contains_key(call_id)
            && !self.b2bua_call_ids.contains_key(call_id);
        if let Some(handle) = for_app.or_else(|| {
            // Nobody else knows the Call-ID: the application answers
            // (481 for a stranger's request).
            own_dialog
                .then(|| self.feature_call_ids.get(call_id).copied())
                .flatten()
        }) {
            let mut out = Vec::new();
            let refusal = self
                .features
                .get_mut(&handle)
                .and_then(|fc| fc.on_request(msg, source, now, &mut out));
            self.apply_feature(handle, out, now);
            return refusal;
        }
        if let Some(&handle) = self.b2bua_call_ids.get(call_id) {
            // A dialog the node is a UA in: answered here.
            let mut fx = Vec::new();
            let refusal = self
                .b2bua
                .get_mut(&handle)
                .and_then(|call| call.on_request(msg, source, now, &mut fx, refer_to));
            self.apply(handle, fx, now);
            return refusal;
        }
        let cseq = msg.cseq().map(|c| c.seq).unwrap_or(0);
        let mut ending = None;
        let mut target = None;
        let mut waits_for = None;
        if let Some(d) = self.dialogs.get_mut(call_id) {
            waits_for = d.ending_token;
            let from_caller = from_tag == d.caller_tag && to_tag == d.callee_tag;
            let from_callee = from_tag == d.callee_tag && to_tag == d.caller_tag;
            if from_caller || from_callee {
                if !method_is_bye && transfer::reports_success(msg) {
                    if let Some(live) = d.live.as_mut() {
                        live.transferred = true;
                    }
                }
                if from_caller {
                    d.caller_cseq = d.caller_cseq.max(cseq);
                    target = Some(d.callee);
                } else {
                    d.callee_cseq = d.callee_cseq.max(cseq);
                    target = Some(d.caller);
                }
                if method_is_bye && d.ending_since.is_none() {
                    d.ending_since = Some(now);
                    metrics::histogram!(CALL_DURATION)
                        .record(now.duration_since(d.answered_at).as_secs_f64());
                    let side = if from_caller {
                        HangupSide::Caller
                    } else {
                        HangupSide::Callee
                    };
                    ending = d.live.take().map(|live| {
                        let (cause, side) = if live.transferred {
                            (CallCause::Transferred, side)
                        } else if from_callee
                            && live.legs.app.is_some()
                            && feature::ends_for_media_timeout(msg)
                        {
                            // The node's application hung up because the
                            // caller's media stopped (ADR 0024).
                            (CallCause::Timeout, HangupSide::System)
                        } else {
                            (CallCause::NormalClearing, side)
                        };
                        let records = live.legs.end(cause, side);
                        (live.legs.call_id, records)
                    });
                }
            } else if from_tag == d.caller_tag {
                // To another phone that answered the same forked INVITE:
                // the caller ends that dialog (RFC 3261 s.13.2.2.4).
                target = d
                    .others
                    .iter()
                    .find(|(tag, _)| tag == to_tag)
                    .map(|(_, f)| *f);
            } else if to_tag == d.caller_tag && d.others.iter().any(|(tag, _)| tag == from_tag) {
                target = Some(d.caller);
            }
        }
        // What to send, and what to answer instead when it cannot be
        // forwarded. No dialog we know (never answered here, ended, or lost
        // in a restart): 481. Routing such a request by its own Route or
        // Request-URI would make the proxy an open relay for anyone who
        // adds a To tag.
        let mut sends = Vec::new();
        let refusal = match target {
            None => (!method_is_ack).then_some((481, "Call/Transaction Does Not Exist")),
            Some(flow) => match msg.max_forwards() {
                Ok(Some(0)) => (!method_is_ack).then_some((483, "Too Many Hops")),
                Err(_) => (!method_is_ack).then_some((400, "Bad Max-Forwards")),
                Ok(max) => {
                    let branch = self.stateless_branch(msg);
                    let via = via(&self.settings.advertised, flow.transport, &branch);
                    let bytes = forward::forward_request(
                        msg,
                        &Forward {
                            ruri: None,
                            via: &via,
                            record_route: None,
                            source,
                            max_forwards: max.map_or(70, |n| n - 1),
                            pop_routes,
                            drop_proxy_authorization: false,
                            retargeting: None,
                        },
                    );
                    sends.push((flow, bytes));
                    None
                }
            },
        };
        if let Some((sip_call_id, (legs_call_id, records))) = ending.map(|e| (call_id, e)) {
            let token = self.record_then_send(legs_call_id, records, sends);
            if let Some(d) = self.dialogs.get_mut(sip_call_id) {
                d.ending_token = Some(token);
            }
        } else {
            match waits_for.and_then(|t| self.parked.get_mut(&t)) {
                Some(Parked::Sends(waiting)) => {
                    for send in sends {
                        // A retransmission of a request that already waits
                        // (the same bytes: the stateless branch is the
                        // same) is absorbed: the waiting one goes out once
                        // the end of the call is durable, and the peer
                        // retransmits again if that one is lost. Queueing
                        // each copy would forward every retransmission of
                        // a slow recording at once, and the other side
                        // would answer each: work that grows with the
                        // delay it is caused by.
                        if waiting.contains(&send) {
                            self.stats.absorbed_while_parked += 1;
                        } else {
                            waiting.push(send);
                        }
                    }
                }
                _ => {
                    for (flow, bytes) in sends {
                        self.actions.push_back(Action::Send(flow, bytes));
                    }
                }
            }
        }
        refusal
    }

    /// The parties of a REFER's dialog, when it is an answered call this
    /// shard knows with a user at each end: the original call's `call_id`
    /// and SIP Call-ID, the transferor (who sent it) and the transferee.
    pub(crate) fn referral_parties(&self, msg: &Message<'_>) -> Option<ReferralParties> {
        let call_id = msg.call_id().ok()?;
        let from_tag = msg.from().ok().and_then(|f| f.tag())?;
        let to_tag = msg.to().ok().and_then(|t| t.tag())?;
        if let Some(handle) = self.b2bua_call_ids.get(call_id) {
            return self
                .b2bua
                .get(handle)?
                .referral_parties(call_id, from_tag, to_tag);
        }
        let d = self.dialogs.get(call_id)?;
        let live = d.live.as_ref()?;
        let callee = live.legs.callee.clone()?;
        let caller = live.legs.caller.clone();
        let (transferor, transferee) = if from_tag == d.caller_tag && to_tag == d.callee_tag {
            (caller, callee)
        } else if from_tag == d.callee_tag && to_tag == d.caller_tag {
            (callee, caller)
        } else {
            return None;
        };
        Some(ReferralParties {
            call_id: live.legs.call_id.clone(),
            sip_call_id: call_id.to_owned(),
            transferor,
            transferee,
        })
    }

    /// The dialog a Replaces names, as the phone at the other end of its
    /// b2bua call knows it (see `B2buaCall::translate`).
    pub(crate) fn translate_replaces(
        &self,
        replaces: &transfer::Replaces,
    ) -> Option<transfer::Replaces> {
        let handle = self.b2bua_call_ids.get(replaces.call_id.as_str())?;
        self.b2bua.get(handle)?.translate(replaces)
    }

    /// A transfer's new call replaces the dialog `replaces` names (RFC
    /// 3891): its end will be recorded as `transferred`. Returns the
    /// replaced call's `call_id` when this shard knows the dialog.
    pub(crate) fn mark_replaced(&mut self, replaces: &transfer::Replaces) -> Option<String> {
        let call_id = replaces.call_id.as_str();
        if let Some(handle) = self.b2bua_call_ids.get(call_id) {
            let call = self.b2bua.get_mut(handle)?;
            call.mark_transferred();
            return Some(call.legs().call_id.clone());
        }
        let d = self.dialogs.get_mut(call_id)?;
        if !replaces.names(call_id, &d.caller_tag, &d.callee_tag) {
            return None;
        }
        let live = d.live.as_mut()?;
        live.transferred = true;
        Some(live.legs.call_id.clone())
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

    /// Records `records` durably, then sends `sends`.
    fn record_then_send(
        &mut self,
        call_id: String,
        records: Vec<CallRecord>,
        sends: Vec<(Flow, Bytes)>,
    ) -> RecordToken {
        let token = self.token();
        self.parked.insert(token, Parked::Sends(sends));
        self.record_call_steps(call_id, records, Some(token), true);
        token
    }

    /// Where every call's state changes leave the engine, in both call
    /// modes: `Start` (trying), `Ringing` (early), `Answer` (confirmed),
    /// `Fail` and `End` (terminated), as [`Action::Record`]. An observer
    /// of call state (the dialog event package) taps here.
    fn record_call_steps(
        &mut self,
        call_id: String,
        records: Vec<CallRecord>,
        done: Option<RecordToken>,
        last: bool,
    ) {
        self.actions.push_back(Action::Record {
            call_id,
            records,
            done,
            last,
        });
    }

    fn token(&mut self) -> RecordToken {
        let t = RecordToken(self.next_token);
        self.next_token += 1;
        t
    }

    /// Recording `token` finished (durably, or it failed and was logged:
    /// the call goes on either way, as a phone would).
    pub fn record_done(&mut self, token: RecordToken, now: Instant) {
        match self.parked.remove(&token) {
            Some(Parked::Call(handle)) => {
                let mut fx = Vec::new();
                if let Some(call) = self.calls.get_mut(&handle) {
                    call.on_recorded(now, &mut fx);
                } else if let Some(call) = self.b2bua.get_mut(&handle) {
                    call.on_recorded(now, &mut fx);
                }
                self.apply(handle, fx, now);
            }
            Some(Parked::Sends(sends)) => {
                for (flow, bytes) in sends {
                    self.actions.push_back(Action::Send(flow, bytes));
                }
            }
            None => {}
        }
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<u64> = self
            .timers
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, h)| *h)
            .collect();
        for handle in due {
            self.stats.call_wakeups += 1;
            if let Some(fc) = self.features.get_mut(&handle) {
                let mut out = Vec::new();
                fc.on_timer(now, &mut out);
                self.apply_feature(handle, out, now);
                continue;
            }
            let mut fx = Vec::new();
            let stuck = if let Some(call) = self.calls.get_mut(&handle) {
                call.on_timer(now, &mut fx);
                call.next_deadline().is_some_and(|t| t <= now) && !call.is_done()
            } else if let Some(call) = self.b2bua.get_mut(&handle) {
                call.on_timer(now, &mut fx);
                call.next_deadline().is_some_and(|t| t <= now) && !call.is_done()
            } else {
                false
            };
            if stuck {
                self.stats.stuck_timers += 1;
                tracing::error!("a call kept a timer in the past: not rescheduled at once");
            }
            self.apply(handle, fx, now);
        }
        if self.next_sweep.is_some_and(|t| t <= now) {
            self.next_sweep = None;
            self.sweep_dialogs(now);
            self.schedule_sweep(now);
        }
    }

    fn schedule_sweep(&mut self, now: Instant) {
        if self.next_sweep.is_none() && !(self.dialogs.is_empty() && self.accepted.is_empty()) {
            self.next_sweep = Some(now + DIALOG_SWEEP);
        }
    }

    /// Forgets dialogs that ended, ends calls that went on beyond the
    /// maximum call duration.
    fn sweep_dialogs(&mut self, now: Instant) {
        self.accepted.retain(|_, until| *until > now);
        self.dialogs.retain(|_, d| match d.ending_since {
            Some(since) => now.duration_since(since) < DIALOG_LINGER,
            None => true,
        });
        let max = self.settings.max_call_duration;
        let expired: Vec<Box<str>> = self
            .dialogs
            .iter()
            .filter(|(_, d)| d.ending_since.is_none() && now.duration_since(d.answered_at) >= max)
            .map(|(k, _)| k.clone())
            .collect();
        for call_id in expired {
            let Some(d) = self.dialogs.get_mut(&call_id) else {
                continue;
            };
            d.ending_since = Some(now);
            metrics::histogram!(CALL_DURATION)
                .record(now.duration_since(d.answered_at).as_secs_f64());
            let Some(live) = d.live.take() else {
                continue;
            };
            tracing::info!(sip_call_id = %call_id, "maximum call duration reached: ending the call");
            let byes = own_byes(&self.settings.advertised, &mut self.rng, &call_id, d, &live);
            let records = live.legs.end(CallCause::Timeout, HangupSide::System);
            let token = self.record_then_send(live.legs.call_id, records, byes);
            if let Some(d) = self.dialogs.get_mut(&call_id) {
                d.ending_token = Some(token);
            }
        }
    }

    /// Applies a call's effects, then forgets the call if it is done or
    /// reschedules its timer.
    fn apply(&mut self, handle: u64, fx: Vec<Effect>, now: Instant) {
        for effect in fx {
            match effect {
                Effect::Send(flow, bytes) => self.actions.push_back(Action::Send(flow, bytes)),
                Effect::Record(records) => {
                    if let Some(call_id) = self.legs_call_id(handle) {
                        self.record_call_steps(call_id, records, None, false);
                    }
                }
                Effect::RecordDurable(records) => {
                    let token = self.token();
                    self.parked.insert(token, Parked::Call(handle));
                    if let Some(call_id) = self.legs_call_id(handle) {
                        self.record_call_steps(call_id, records, Some(token), true);
                    }
                }
                Effect::B2buaBranch(id) => {
                    self.b2bua_branches.insert(id, handle);
                }
                Effect::B2buaCallId(id) => {
                    self.b2bua_call_ids.insert(id, handle);
                }
                Effect::NewBranch(id, i) => {
                    self.branches.insert(id, (handle, i));
                }
                Effect::OpenDialog(call_id, dialog) => {
                    self.dialogs.insert(call_id, dialog);
                    self.schedule_sweep(now);
                }
                Effect::AlsoAnswered(call_id, tag, flow) => {
                    if let Some(d) = self.dialogs.get_mut(&call_id) {
                        if !d.others.iter().any(|(t, _)| *t == tag) {
                            d.others.push((tag, flow));
                        }
                    }
                }
            }
        }
        if let Some(old) = self.scheduled.remove(&handle) {
            self.timers.remove(&(old, handle));
        }
        if let Some(call) = self.b2bua.get(&handle) {
            if call.is_done() {
                if let Some(call) = self.b2bua.remove(&handle) {
                    self.invites.remove(call.key());
                    for id in call.branch_ids() {
                        self.b2bua_branches.remove(id);
                    }
                    self.b2bua_call_ids.remove(call.legs().sip_call_id.as_str());
                    for id in call.call_ids() {
                        self.b2bua_call_ids.remove(id);
                    }
                }
                return;
            }
            let next = call.next_deadline();
            self.schedule(handle, next, now);
            return;
        }
        let Some(call) = self.calls.get(&handle) else {
            return;
        };
        if call.is_done() {
            if let Some(call) = self.calls.remove(&handle) {
                if call.was_answered() {
                    self.accepted
                        .insert(call.key().clone(), now + super::call::TIMER_64T1);
                    self.schedule_sweep(now);
                }
                self.invites.remove(call.key());
                for id in call.branch_ids() {
                    self.branches.remove(id);
                }
            }
            return;
        }
        let next = call.next_deadline();
        self.schedule(handle, next, now);
    }

    fn schedule(&mut self, handle: u64, at: Option<Instant>, now: Instant) {
        if let Some(at) = at {
            // Never in the past: a timer the call failed to consume is
            // retried a millisecond later instead of at once.
            let at = if at <= now {
                now + Duration::from_millis(1)
            } else {
                at
            };
            self.timers.insert((at, handle));
            self.scheduled.insert(handle, at);
        }
    }

    /// The `call_id` of the legs of call `handle` (either kind).
    fn legs_call_id(&self, handle: u64) -> Option<String> {
        match self.calls.get(&handle) {
            Some(call) => Some(call.legs().call_id.clone()),
            None => self.b2bua.get(&handle).map(|c| c.legs().call_id.clone()),
        }
    }
}

/// The BYEs that end dialog `d` on both sides.
fn own_byes(
    advertised: &Advertised,
    rng: &mut Rng,
    call_id: &str,
    d: &Dialog,
    live: &LiveDialog,
) -> Vec<(Flow, Bytes)> {
    let mut out = Vec::with_capacity(2);
    let callee_via = via(
        advertised,
        d.callee.transport,
        &format!("z9hG4bK-ds{:016x}", rng.next()),
    );
    out.push((
        d.callee,
        forward::bye(&forward::OwnBye {
            ruri: &live.callee_contact,
            via: &callee_via,
            from: &live.from,
            to: &live.to,
            call_id,
            cseq: d.caller_cseq.saturating_add(1),
            route: None,
        }),
    ));
    let caller_via = via(
        advertised,
        d.caller.transport,
        &format!("z9hG4bK-ds{:016x}", rng.next()),
    );
    out.push((
        d.caller,
        forward::bye(&forward::OwnBye {
            ruri: &live.caller_contact,
            via: &caller_via,
            from: &live.to,
            to: &live.from,
            call_id,
            cseq: d.callee_cseq.saturating_add(1),
            route: None,
        }),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::AppEnd;
    use crate::transport::Transport;
    use crate::wire::response;

    struct Silent;

    impl AppSession for Silent {
        fn confirmed(&mut self) {}
        fn reoffer(&mut self, _: &[u8]) -> Result<Vec<u8>, u16> {
            Err(488)
        }
        fn ended(&mut self, _: AppEnd) {}
    }

    fn drain(e: &mut Engine) -> Vec<Action> {
        std::iter::from_fn(|| e.poll_action()).collect()
    }

    fn sends(actions: &[Action]) -> Vec<(Flow, Bytes)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(flow, bytes) => Some((*flow, bytes.clone())),
                Action::Record { .. } => None,
            })
            .collect()
    }

    /// A call forwarded to an application of this node (voicemail): the
    /// proxy's dialog joins the phone and the node itself, and the
    /// application's call, reached through that loop, has the same
    /// Call-ID. The application's BYE comes back through the loop: the
    /// proxy relays it to the phone, as any callee's BYE, rather than hand
    /// it back to the application that sent it (which refused it, and the
    /// phone never heard that the call was over).
    #[test]
    fn an_applications_bye_through_the_proxy_reaches_the_caller() {
        let node: SocketAddr = "192.0.2.10:5060".parse().unwrap();
        let phone: SocketAddr = "10.0.0.1:5062".parse().unwrap();
        let flow_to = |remote| Flow {
            transport: Transport::Udp,
            remote,
            local: None,
            connection: None,
        };
        let mut e = Engine::new(
            ProxySettings {
                advertised: Advertised::new("192.0.2.10:5060"),
                local: vec![node],
                no_answer_timeout: Duration::from_secs(60),
                max_call_duration: Duration::from_secs(3600),
                call_mode: CallMode::Proxy,
            },
            5,
        );
        let t0 = Instant::now();
        // The proxy's INVITE to the application, as the node receives it.
        let invite = "INVITE sip:vm@192.0.2.10:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-dp1\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bKinv1;rport\r\n\
Max-Forwards: 69\r\n\
Record-Route: <sip:192.0.2.10:5060;lr>\r\n\
From: <sip:alice@example.com>;tag=a1\r\n\
To: <sip:bob@example.com>\r\n\
Call-ID: looped1\r\n\
CSeq: 7 INVITE\r\n\
Contact: <sip:alice@10.0.0.1:5062>\r\n\
Content-Length: 0\r\n\r\n";
        let msg = Message::parse(invite.as_bytes()).unwrap();
        let looped = Source {
            addr: node,
            reliable: false,
        };
        e.start_feature_call(
            NewFeatureCall {
                msg: &msg,
                key: Key::from_request_via(&msg, &msg.top_via().unwrap()).unwrap(),
                source: looped,
                upstream: flow_to(node),
                app: Some((b"v=0".to_vec(), Box::new(Silent))),
                legs: None,
            },
            t0,
        );
        let ok = sends(&drain(&mut e));
        let app_tag = Message::parse(&ok[0].1)
            .unwrap()
            .to()
            .unwrap()
            .tag()
            .unwrap()
            .to_owned();
        // The 200 relayed to the phone opened the proxy's dialog.
        let legs = Legs {
            call_id: "c1".into(),
            sip_call_id: "looped1".into(),
            caller: ("example.com".into(), "alice".into()),
            callee: Some(("example.com".into(), "bob".into())),
            dialled: "bob@example.com".into(),
            group: None,
            members: Vec::new(),
            app: None,
        };
        let parties = super::super::dialog::DialogParties {
            caller_tag: "a1".into(),
            callee_tag: app_tag.clone(),
            caller: flow_to(phone),
            callee: flow_to(node),
            caller_contact: "sip:alice@10.0.0.1:5062".into(),
            callee_contact: "sip:192.0.2.10:5060".into(),
            from: "<sip:alice@example.com>;tag=a1".into(),
            to: format!("<sip:bob@example.com>;tag={app_tag}"),
            caller_cseq: 7,
        };
        e.dialogs
            .insert("looped1".into(), Dialog::new(legs, parties, t0));

        assert!(e.hang_up_app("looped1", crate::AppEnd::HungUp, t0));
        let bye = sends(&drain(&mut e));
        assert_eq!(bye.len(), 1);
        assert_eq!(bye[0].0.remote, node, "through the proxy's Record-Route");
        let bye = Message::parse(&bye[0].1).unwrap();
        assert_eq!(
            e.in_dialog(&bye, looped, 1, t0),
            None,
            "relayed, not refused"
        );
        // The end of the call is recorded first, then the BYE goes on.
        let actions = drain(&mut e);
        let token = actions
            .iter()
            .find_map(|a| match a {
                Action::Record { done, .. } => *done,
                Action::Send(..) => None,
            })
            .expect("the end of the call recorded");
        assert!(sends(&actions).is_empty());
        e.record_done(token, t0);
        let relayed = sends(&drain(&mut e));
        assert_eq!(relayed.len(), 1, "{relayed:?}");
        assert_eq!(relayed[0].0.remote, phone);
        assert!(relayed[0].1.starts_with(b"BYE sip:alice@10.0.0.1:5062 "));

        // The phone's 200 comes back to the application's BYE by its Via.
        let to_phone = Message::parse(&relayed[0].1).unwrap();
        let ok = crate::proxy::leg::response(
            &to_phone,
            &Source {
                addr: phone,
                reliable: false,
            },
            200,
            response::reason(200),
            "",
            &[],
            &[],
        );
        assert!(e.on_response(&Message::parse(&ok).unwrap(), t0));
    }
}
