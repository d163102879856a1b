//! Deterministic simulation of the call engine (the quinn-proto style).
//!
//! Each scenario is one seed: a few calls at once between simulated phones
//! (a caller and one to three callees each) and one [`Engine`], over a
//! simulated network that loses, duplicates, delays and reorders
//! datagrams, with a simulated event log that makes call steps durable
//! after a random delay. Time is simulated too: nothing sleeps, so a
//! scenario that covers minutes of calls runs in microseconds.
//!
//! The phones do what real ones do: INVITE with Timer A/B, CANCEL, 180 then
//! an answer, busy, decline, an error or silence, 2xx retransmission until
//! the ACK, re-INVITE from either side (491 on glare), BYE from either side
//! with retransmissions. The routing plans fork in parallel or ring in
//! steps with ring timeouts.
//!
//! Even seeds run the engine as a back-to-back user agent, odd ones as a
//! proxy (`DIALTONE_SIM_MODE=proxy|b2bua` runs one mode only).
//!
//! After every scenario: every call ended and the engine holds nothing
//! (no call, transaction, dialog, timer or parked message); no call's
//! timer stayed in the past and no call was woken more than a bound (a
//! busy loop fails here); each leg's durable steps are well formed; the
//! steps match what the phones saw (the caller's final response, who
//! answered); a failure was durable before the caller saw it, and the end
//! of a call before its BYE reached the other phone. In B2BUA mode also:
//! no callee ever sees the caller's address, Call-ID, tag or branch, nor a
//! caller a callee's (checked on every message the engine sends); the
//! recorded answer is a target that answered; both dialogs of every
//! answered call (the caller's with the node, the answering callee's)
//! ended, and the end was durable before either got its BYE; session
//! descriptions (an offer in the INVITE, or a delayed offer: offer in the
//! 2xx, answer in the ACK) reach the other side unchanged.
//!
//! A failing seed is printed; add it to `REGRESSIONS` to keep it.
//! `DIALTONE_SIM_SCENARIOS=200000 cargo test -p dialtone-sip --test
//! call_simulation --release` runs a longer search (default 3,000).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dialtone_sip::backend::{
    CallRecord, CallStep, Diversion, DiversionReason, HangupSide, NextSteps, RoutePlan, RouteStep,
    RouteTarget, Transport,
};
use dialtone_sip::proxy::{
    Action, CallInput, CallMode, Engine, Legs, NewCall, ProxySettings, RecordToken,
};
use dialtone_sip::transaction::Key;
use dialtone_sip::transport::Flow;
use dialtone_sip::wire::message::{Message, Method, Name, StartLine};
use dialtone_sip::wire::response::{Response, Source};

/// Seeds that once failed, kept as regression tests.
/// 0x5eed01db: a callee answered after the no-answer timeout had rejected
/// the call; the 2xx was relayed to a caller the log said had failed.
/// 0x5eed0203: a ring group member answered after its turn had ended.
const REGRESSIONS: &[u64] = &[0x5eed_01db, 0x5eed_0203];

const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
const PROXY: &str = "127.0.0.1:5060";
const DOMAIN: &str = "example.test";
/// A call is woken at most this often (retransmission timers included).
const MAX_WAKEUPS_PER_CALL: u64 = 120;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

fn proxy_addr() -> SocketAddr {
    PROXY.parse().expect("proxy address")
}

// ---------------------------------------------------------------- phones

/// A client transaction a phone retransmits until it gets a response.
struct ClientTx {
    branch: String,
    method: &'static str,
    bytes: Bytes,
    retransmit_at: Option<Instant>,
    interval: Duration,
    give_up_at: Instant,
    /// A provisional response stops INVITE retransmissions.
    provisional: bool,
    final_code: Option<u16>,
}

impl ClientTx {
    fn new(branch: String, method: &'static str, bytes: Bytes, now: Instant) -> ClientTx {
        ClientTx {
            branch,
            method,
            bytes,
            retransmit_at: Some(now + T1),
            interval: T1,
            give_up_at: now + 64 * T1,
            provisional: false,
            final_code: None,
        }
    }
    fn pending(&self) -> bool {
        self.final_code.is_none()
    }
}

/// A final response a phone retransmits until the ACK (RFC 3261 s.13.3.1.4,
/// s.17.2.1).
struct ResponseRetx {
    bytes: Bytes,
    at: Instant,
    interval: Duration,
    give_up_at: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CalleeScript {
    Answer(Duration),
    Busy(Duration),
    Decline(Duration),
    NotFound(Duration),
    ServerError(Duration),
    /// Rings and never answers.
    Silent,
    /// Unreachable: drops everything (Timer B at the proxy).
    Dead,
}

/// An incoming INVITE at a callee.
struct ServerInvite {
    invite: Bytes,
    to_tag: String,
    last: Option<Bytes>,
    final_code: Option<u16>,
    retx: Option<ResponseRetx>,
    answer_at: Option<Instant>,
}

struct Dialog {
    call_id: String,
    local_tag: String,
    remote_tag: String,
    /// From/To as this side sends them.
    local_uri: String,
    remote_uri: String,
    remote_contact: String,
    cseq: u32,
    ended: bool,
    hangup_at: Option<Instant>,
    reinvite_at: Option<Instant>,
}

struct Phone {
    addr: SocketAddr,
    user: String,
    role: Role,
    txs: Vec<ClientTx>,
    /// Incoming INVITEs by the proxy's branch.
    incoming: HashMap<String, ServerInvite>,
    dialogs: Vec<Dialog>,
    /// 2xx to re-INVITEs answered, and BYE 200s, by request branch: sent
    /// again for a retransmitted request.
    answered: HashMap<String, Bytes>,
    /// The first BYE of each dialog that reached this phone: (Call-ID,
    /// this side's tag, the other side's tag, when), for the durability
    /// check.
    byes_seen: Vec<(String, String, String, Instant)>,
    /// Re-INVITEs this phone received inside a dialog.
    reinvites_received: u64,
    /// Session descriptions received: (what carried it, the body) for
    /// initial INVITEs and ACKs at callees, the 2xx of the INVITE at
    /// callers.
    bodies: Vec<(&'static str, String)>,
    seq: u64,
}

enum Role {
    Caller {
        call_id: String,
        from_tag: String,
        invite_branch: String,
        cancel_at: Option<Instant>,
        hangup_after: Option<Duration>,
        reinvite_after: Option<Duration>,
        answered_by: Option<String>,
        /// The To tag of the phone that answered first.
        answered_tag: Option<String>,
        /// A 2xx retransmission must get the same ACK again.
        acks: HashMap<String, Bytes>,
        /// The INVITE carries an SDP offer; otherwise (a delayed offer)
        /// the 2xx carries the offer and the ACK the answer.
        offers: bool,
    },
    Callee {
        script: CalleeScript,
        hangup_after: Option<Duration>,
        reinvite_after: Option<Duration>,
    },
}

impl Phone {
    fn contact(&self) -> String {
        format!("sip:{}@{}", self.user, self.addr)
    }

    fn branch(&mut self) -> String {
        self.seq += 1;
        format!("z9hG4bK-ua{}-{}", self.addr.port(), self.seq)
    }

    fn via(&self, branch: &str) -> String {
        format!("SIP/2.0/UDP {};branch={branch};rport", self.addr)
    }

    fn next_timer(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut c = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        for tx in &self.txs {
            if tx.pending() {
                c(tx.retransmit_at);
                c(Some(tx.give_up_at));
            }
        }
        for inv in self.incoming.values() {
            c(inv.answer_at);
            if let Some(r) = &inv.retx {
                c(Some(r.at));
            }
        }
        for d in &self.dialogs {
            if !d.ended {
                c(d.hangup_at);
                c(d.reinvite_at);
            }
        }
        if let Role::Caller { cancel_at, .. } = &self.role {
            c(*cancel_at);
        }
        t
    }
}

/// A request as a phone writes it (the arguments are the request's own
/// fields, in the order they appear in it).
#[allow(clippy::too_many_arguments)]
fn request(
    method: &str,
    ruri: &str,
    via: &str,
    from: &str,
    to: &str,
    call_id: &str,
    cseq: u32,
    contact: Option<&str>,
) -> Bytes {
    let mut s = format!(
        "{method} {ruri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
    );
    if let Some(c) = contact {
        s.push_str(&format!("Contact: <{c}>\r\n"));
    }
    s.push_str("Content-Length: 0\r\n\r\n");
    Bytes::from(s)
}

fn respond(
    req: &Message<'_>,
    from: SocketAddr,
    code: u16,
    tag: &str,
    contact: Option<&str>,
) -> Bytes {
    let source = Source {
        addr: from,
        reliable: false,
    };
    let mut r = Response::with_reason(
        req,
        &source,
        code,
        dialtone_sip::wire::response::reason(code),
        tag,
    );
    if let Some(c) = contact {
        r.header("Contact", &format!("<{c}>"));
    }
    r.finish()
}

// ------------------------------------------------------------- the world

#[derive(Debug)]
enum Event {
    Deliver {
        from: SocketAddr,
        to: SocketAddr,
        bytes: Bytes,
    },
    /// The simulated event log finished the head batch of a call.
    Recorded(String),
}

struct RecordQueue {
    batches: std::collections::VecDeque<(Vec<CallRecord>, Option<RecordToken>)>,
    busy: bool,
}

struct Sim {
    rng: Rng,
    base: Instant,
    now: Instant,
    events: BTreeMap<(Instant, u64), Event>,
    seq: u64,
    engine: Engine,
    phones: HashMap<SocketAddr, Phone>,
    plans: HashMap<String, RoutePlan>,
    started: HashSet<String>,
    recorder: HashMap<String, RecordQueue>,
    /// Durable steps in order, with the instant they became durable.
    log: Vec<(Instant, CallRecord)>,
    loss: u64,
    dup: u64,
    max_delay: u64,
    failures: Vec<String>,
    /// `DIALTONE_SIM_TRACE=1`: print every delivery and durable step.
    trace: bool,
    /// How the engine connects calls (chosen per seed).
    mode: CallMode,
}

fn trace(sim: &Sim, event: &Event) {
    let t = (sim.now - sim.base).as_secs_f64();
    match event {
        Event::Deliver { from, to, bytes } => {
            let text = String::from_utf8_lossy(bytes);
            let first = text.lines().next().unwrap_or("");
            let cseq = text.lines().find(|l| l.starts_with("CSeq")).unwrap_or("");
            let name = |a: &SocketAddr| {
                sim.phones
                    .get(a)
                    .map_or_else(|| "proxy".to_owned(), |p| p.user.clone())
            };
            eprintln!("{t:>9.3} {} -> {}: {first} ({cseq})", name(from), name(to));
        }
        Event::Recorded(call_id) => eprintln!("{t:>9.3} log batch for {call_id}"),
    }
}

impl Sim {
    fn send(&mut self, from: SocketAddr, to: SocketAddr, bytes: Bytes) {
        if self.rng.chance(self.loss) {
            return;
        }
        let copies = if self.rng.chance(self.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = self.rng.millis(1, self.max_delay);
            let at = self.now + delay;
            self.seq += 1;
            self.events.insert(
                (at, self.seq),
                Event::Deliver {
                    from,
                    to,
                    bytes: bytes.clone(),
                },
            );
        }
    }

    fn fail(&mut self, what: String) {
        self.failures.push(what);
    }

    fn drain_engine(&mut self) {
        let mut sent_now: Vec<(SocketAddr, Bytes)> = Vec::new();
        while let Some(action) = self.engine.poll_action() {
            match action {
                Action::Send(flow, bytes) => {
                    assert_eq!(flow.transport, Transport::Udp);
                    // Copies of one message at once: retransmissions that
                    // were queued behind a slow recording instead of being
                    // absorbed (work that grows with the overload).
                    if sent_now.contains(&(flow.remote, bytes.clone())) {
                        let text = String::from_utf8_lossy(&bytes).into_owned();
                        self.fail(format!(
                            "the engine sent one message twice at once:\n{text}"
                        ));
                    }
                    sent_now.push((flow.remote, bytes.clone()));
                    if self.mode == CallMode::B2bua {
                        self.check_hidden(flow.remote, &bytes);
                    }
                    self.send(proxy_addr(), flow.remote, bytes);
                }
                Action::Record {
                    call_id,
                    records,
                    done,
                    last: _,
                } => {
                    let legs: HashSet<_> = records.iter().map(|r| (&r.domain, &r.user)).collect();
                    if legs.len() != records.len() {
                        self.fail(format!("one batch has two steps of one leg: {records:?}"));
                    }
                    let q = self.recorder.entry(call_id.clone()).or_insert(RecordQueue {
                        batches: Default::default(),
                        busy: false,
                    });
                    q.batches.push_back((records, done));
                    if !q.busy {
                        q.busy = true;
                        let at = self.now + self.record_delay();
                        self.seq += 1;
                        self.events.insert((at, self.seq), Event::Recorded(call_id));
                    }
                }
            }
        }
    }

    /// Topology hiding (B2BUA): a callee never sees anything of the
    /// caller's dialog (its address, Call-ID, tag or branch), nor a
    /// caller anything of a callee's.
    fn check_hidden(&mut self, to: SocketAddr, bytes: &Bytes) {
        let Some(p) = self.phones.get(&to) else {
            return;
        };
        let Ok(msg) = Message::parse(bytes) else {
            self.fail("the engine sent an unparsable message".into());
            return;
        };
        let text = String::from_utf8_lossy(bytes);
        let call_id = msg.call_id().unwrap_or("");
        let tags = [
            msg.from().ok().and_then(|f| f.tag()).unwrap_or(""),
            msg.to().ok().and_then(|t| t.tag()).unwrap_or(""),
        ];
        let leak = match p.role {
            Role::Callee { .. } => {
                text.contains("127.0.1.1")
                    || call_id.starts_with("sim")
                    || tags.iter().any(|t| t.starts_with("ft"))
                    || text.contains("z9hG4bK-inv")
            }
            Role::Caller { .. } => {
                text.contains("127.0.2.1")
                    || !call_id.starts_with("sim")
                    || tags.iter().any(|t| t.starts_with("tag-"))
            }
        };
        if leak {
            let who = p.user.clone();
            self.fail(format!("{who} was shown the other side's dialog:\n{text}"));
        }
    }

    /// How long the simulated log takes to make a batch durable: mostly a
    /// few milliseconds, sometimes as long as an overloaded log does (longer
    /// than T1, so that phones retransmit what waits for it).
    fn record_delay(&mut self) -> Duration {
        if self.rng.chance(3) {
            self.rng.millis(400, 2_500)
        } else {
            self.rng.millis(1, 8)
        }
    }

    fn on_recorded(&mut self, call_id: String) {
        let Some(q) = self.recorder.get_mut(&call_id) else {
            return;
        };
        let Some((records, done)) = q.batches.pop_front() else {
            q.busy = false;
            return;
        };
        let more = !q.batches.is_empty();
        q.busy = more;
        for r in records {
            if self.trace {
                eprintln!(
                    "{:>9.3} durable {} {:?}",
                    (self.now - self.base).as_secs_f64(),
                    r.user,
                    r.step
                );
            }
            self.log.push((self.now, r));
        }
        if let Some(token) = done {
            self.engine.record_done(token, self.now);
        }
        if more {
            let at = self.now + self.record_delay();
            self.seq += 1;
            self.events.insert((at, self.seq), Event::Recorded(call_id));
        }
    }

    /// What the gateway does with a datagram for the proxy (the order of
    /// `Core::handle`), minus authentication.
    fn at_proxy(&mut self, from: SocketAddr, bytes: Bytes) {
        let Ok(msg) = Message::parse(&bytes) else {
            self.fail(format!("the proxy got an unparsable message from {from}"));
            return;
        };
        let now = self.now;
        let StartLine::Request { method, .. } = msg.start else {
            self.engine.on_response(&msg, now);
            return;
        };
        let source = Source {
            addr: from,
            reliable: false,
        };
        let Ok(key) = Key::from_request(&msg) else {
            self.fail("a phone sent a request without a usable Via".into());
            return;
        };
        let has_to_tag = msg.to().ok().and_then(|t| t.tag()).is_some();
        let call_id = msg.call_id().unwrap_or("").to_owned();
        match method {
            Method::Ack => {
                if !self.engine.to_call(&key, CallInput::Ack, now) && has_to_tag {
                    self.engine.in_dialog(&msg, source, 0, now);
                }
            }
            Method::Cancel => {
                let via = msg.top_via().expect("via");
                let cancelled = Key::invite_of_cancel(&msg, &via)
                    .is_ok_and(|k| self.engine.to_call(&k, CallInput::Cancel, now));
                let code = if cancelled { 200 } else { 481 };
                let r = respond(&msg, from, code, "proxy", None);
                self.send(proxy_addr(), from, r);
            }
            Method::Invite if self.engine.to_call(&key, CallInput::InviteAgain, now) => {}
            _ if has_to_tag => {
                if let Some((code, _)) = self.engine.in_dialog(&msg, source, 0, now) {
                    let r = respond(&msg, from, code, "proxy", None);
                    self.send(proxy_addr(), from, r);
                }
            }
            Method::Invite => {
                let key_text = key.as_str().to_owned();
                if !self.started.insert(key_text) {
                    self.fail(format!(
                        "a retransmitted INVITE started call {call_id} again"
                    ));
                    return;
                }
                let trying = respond(&msg, from, 100, "", None);
                self.send(proxy_addr(), from, trying);
                let Some(plan) = self.plans.get(&call_id).cloned() else {
                    self.fail(format!("no plan for {call_id}"));
                    return;
                };
                let caller_user = self.phones[&from].user.clone();
                let dialled = (DOMAIN.to_owned(), format!("callee-of-{call_id}"));
                // A ring group has no leg; its members get theirs when rung.
                let (callee, group) = if plan.dialled_group {
                    (None, Some(dialled))
                } else {
                    (Some(dialled), None)
                };
                let legs = Legs {
                    call_id: format!("call-{call_id}"),
                    sip_call_id: call_id.clone(),
                    caller: (DOMAIN.into(), caller_user),
                    callee,
                    dialled: format!("callee-of-{call_id}@{DOMAIN}"),
                    group,
                    members: Vec::new(),
                    app: None,
                };
                self.engine.start_call(
                    NewCall {
                        msg: &msg,
                        raw: bytes.clone(),
                        key,
                        source,
                        upstream: Flow::new(Transport::Udp, from),
                        legs,
                        plan,
                        pop_routes: 0,
                        max_forwards: 69,
                    },
                    now,
                );
            }
            _ => {
                let r = respond(&msg, from, 481, "proxy", None);
                self.send(proxy_addr(), from, r);
            }
        }
    }

    fn at_phone(&mut self, to: SocketAddr, bytes: Bytes) {
        let Some(mut phone) = self.phones.remove(&to) else {
            return;
        };
        if !matches!(
            phone.role,
            Role::Callee {
                script: CalleeScript::Dead,
                ..
            }
        ) {
            self.phone_message(&mut phone, &bytes);
        }
        self.phones.insert(to, phone);
    }

    fn phone_message(&mut self, p: &mut Phone, bytes: &Bytes) {
        let Ok(msg) = Message::parse(bytes) else {
            self.fail(format!("{} got an unparsable message", p.addr));
            return;
        };
        let now = self.now;
        let call_id = msg.call_id().unwrap_or("").to_owned();
        match msg.start {
            StartLine::Response { code, .. } => {
                let branch = msg
                    .top_via()
                    .ok()
                    .and_then(|v| v.branch().map(str::to_owned))
                    .unwrap_or_default();
                let method = msg.cseq().map(|c| c.method.to_owned()).unwrap_or_default();
                let to_tag = msg.to().ok().and_then(|t| t.tag()).unwrap_or("").to_owned();
                let to_header = msg.header(Name::To).unwrap_or("").to_owned();
                let contact = msg
                    .list(Name::Contact)
                    .next()
                    .map(|c| c.trim_matches(|ch| ch == '<' || ch == '>').to_owned())
                    .unwrap_or_default();
                let Some(tx) = p
                    .txs
                    .iter_mut()
                    .find(|t| t.branch == branch && t.method == method)
                else {
                    return;
                };
                if code < 200 {
                    tx.provisional = true;
                    if tx.method == "INVITE" {
                        tx.retransmit_at = None;
                    }
                    return;
                }
                let first_final = tx.final_code.is_none();
                if first_final {
                    tx.final_code = Some(code);
                    tx.retransmit_at = None;
                }
                if method != "INVITE" {
                    return;
                }
                let is_initial = matches!(&p.role, Role::Caller { invite_branch, .. } if *invite_branch == branch);
                if code >= 300 {
                    // The ACK of a non-2xx goes in the transaction (same branch).
                    let ack = ack_of(&tx.bytes, &to_header);
                    self.send(p.addr, proxy_addr(), ack);
                    if is_initial && first_final {
                        self.caller_saw_final(p, code, &call_id);
                    }
                    return;
                }
                // 2xx: ACK end to end (a new branch each time, RFC 3261 s.13.2.2.4).
                let from_header = msg.header(Name::From).unwrap_or("").to_owned();
                let cseq = msg.cseq().map(|c| c.seq).unwrap_or(1);
                let ack_key = format!("{to_tag}/{cseq}");
                let existing_ack = match &p.role {
                    Role::Caller { acks, .. } => acks.get(&ack_key).cloned(),
                    Role::Callee { .. } => None,
                };
                let ack = match existing_ack {
                    Some(a) => a,
                    None => {
                        let b = p.branch();
                        let mut ack = request(
                            "ACK",
                            &contact,
                            &p.via(&b),
                            &from_header,
                            &to_header,
                            &call_id,
                            cseq,
                            None,
                        );
                        let delayed_offer = matches!(&p.role, Role::Caller { offers: false, .. });
                        if is_initial && delayed_offer {
                            ack = with_body(&ack, &sdp(&format!("answer-{call_id}")));
                        }
                        if let Role::Caller { acks, .. } = &mut p.role {
                            acks.insert(ack_key, ack.clone());
                        }
                        ack
                    }
                };
                self.send(p.addr, proxy_addr(), ack);
                if !is_initial {
                    return;
                }
                p.bodies
                    .push(("200 INVITE", String::from_utf8_lossy(msg.body).into_owned()));
                if first_final {
                    self.caller_saw_final(p, code, &call_id);
                }
                let known = p.dialogs.iter().any(|d| d.remote_tag == to_tag);
                if known {
                    return;
                }
                let (hangup_after, reinvite_after, first_answer, from_tag) = match &mut p.role {
                    Role::Caller {
                        hangup_after,
                        reinvite_after,
                        answered_by,
                        answered_tag,
                        from_tag,
                        ..
                    } => {
                        let first = answered_by.is_none();
                        if first {
                            *answered_by = Some(contact.clone());
                            *answered_tag = Some(to_tag.clone());
                        }
                        (*hangup_after, *reinvite_after, first, from_tag.clone())
                    }
                    Role::Callee { .. } => return,
                };
                let mut d = Dialog {
                    call_id: call_id.clone(),
                    local_tag: from_tag,
                    remote_tag: to_tag,
                    local_uri: from_header,
                    remote_uri: to_header,
                    remote_contact: contact,
                    cseq: 1,
                    ended: false,
                    hangup_at: hangup_after.map(|h| now + h),
                    reinvite_at: reinvite_after.map(|h| now + h),
                };
                if self.trace {
                    eprintln!(
                        "   caller {} keeps dialog with {} (first: {first_answer})",
                        p.user, d.remote_tag
                    );
                }
                if !first_answer {
                    // A second phone answered the forked call: end that
                    // dialog at once (RFC 3261 s.13.2.2.4).
                    d.hangup_at = Some(now);
                    d.reinvite_at = None;
                }
                p.dialogs.push(d);
            }
            StartLine::Request { method, .. } => {
                let branch = msg
                    .top_via()
                    .ok()
                    .and_then(|v| v.branch().map(str::to_owned))
                    .unwrap_or_default();
                let has_to_tag = msg.to().ok().and_then(|t| t.tag()).is_some();
                match method {
                    Method::Invite if !has_to_tag => self.incoming_invite(p, &msg, bytes, branch),
                    Method::Cancel => {
                        let tag = p
                            .incoming
                            .get(&branch)
                            .map(|i| i.to_tag.clone())
                            .unwrap_or_default();
                        let ok = respond(&msg, p.addr, 200, &tag, None);
                        self.send(p.addr, proxy_addr(), ok);
                        if let Some(inv) = p.incoming.get_mut(&branch) {
                            if inv.final_code.is_none() {
                                let invite = inv.invite.clone();
                                let m = Message::parse(&invite).expect("stored invite");
                                let r = respond(&m, p.addr, 487, &inv.to_tag, None);
                                inv.final_code = Some(487);
                                inv.answer_at = None;
                                inv.last = Some(r.clone());
                                inv.retx = Some(ResponseRetx {
                                    bytes: r.clone(),
                                    at: now + T1,
                                    interval: T1,
                                    give_up_at: now + 64 * T1,
                                });
                                self.send(p.addr, proxy_addr(), r);
                            }
                        }
                    }
                    Method::Ack => {
                        p.bodies
                            .push(("ACK", String::from_utf8_lossy(msg.body).into_owned()));
                        // Stops the retransmission of a final response:
                        // non-2xx by branch, 2xx by dialog.
                        if let Some(inv) = p.incoming.get_mut(&branch) {
                            inv.retx = None;
                        }
                        let to_tag = msg.to().ok().and_then(|t| t.tag()).unwrap_or("").to_owned();
                        for inv in p.incoming.values_mut() {
                            if inv.to_tag == to_tag && inv.final_code == Some(200) {
                                inv.retx = None;
                            }
                        }
                    }
                    Method::Bye | Method::Invite => {
                        if let Some(r) = p.answered.get(&branch).cloned() {
                            self.send(p.addr, proxy_addr(), r);
                            return;
                        }
                        let local_tag =
                            msg.to().ok().and_then(|t| t.tag()).unwrap_or("").to_owned();
                        let remote_tag = msg
                            .from()
                            .ok()
                            .and_then(|t| t.tag())
                            .unwrap_or("")
                            .to_owned();
                        let Some(i) = p.dialogs.iter().position(|d| {
                            d.call_id == call_id
                                && d.local_tag == local_tag
                                && d.remote_tag == remote_tag
                        }) else {
                            let r = respond(&msg, p.addr, 481, "", None);
                            self.send(p.addr, proxy_addr(), r);
                            return;
                        };
                        if method == Method::Invite {
                            p.reinvites_received += 1;
                        }
                        let code = if method == Method::Bye {
                            p.dialogs[i].ended = true;
                            let remote = p.dialogs[i].remote_tag.clone();
                            let local = p.dialogs[i].local_tag.clone();
                            if !p
                                .byes_seen
                                .iter()
                                .any(|(c, _, r, _)| *c == call_id && *r == remote)
                            {
                                p.byes_seen.push((call_id.clone(), local, remote, now));
                            }
                            200
                        } else if p.txs.iter().any(|t| {
                            t.method == "INVITE"
                                && t.pending()
                                && t.branch != branch
                                && is_reinvite(t)
                        }) {
                            491
                        } else {
                            200
                        };
                        let r = respond(&msg, p.addr, code, "", Some(&p.contact()));
                        p.answered.insert(branch, r.clone());
                        self.send(p.addr, proxy_addr(), r);
                    }
                    _ => {}
                }
            }
        }
    }

    fn incoming_invite(&mut self, p: &mut Phone, msg: &Message<'_>, bytes: &Bytes, branch: String) {
        let now = self.now;
        if let Some(inv) = p.incoming.get(&branch) {
            if let Some(last) = inv.last.clone() {
                self.send(p.addr, proxy_addr(), last);
            }
            return;
        }
        let Role::Callee { script, .. } = p.role else {
            return;
        };
        p.bodies
            .push(("INVITE", String::from_utf8_lossy(msg.body).into_owned()));
        let to_tag = format!("tag-{}-{}", p.addr.port(), p.seq);
        p.seq += 1;
        let ringing = respond(msg, p.addr, 180, &to_tag, Some(&p.contact()));
        self.send(p.addr, proxy_addr(), ringing.clone());
        let answer_at = match script {
            CalleeScript::Answer(d)
            | CalleeScript::Busy(d)
            | CalleeScript::Decline(d)
            | CalleeScript::NotFound(d)
            | CalleeScript::ServerError(d) => Some(now + d),
            CalleeScript::Silent | CalleeScript::Dead => None,
        };
        p.incoming.insert(
            branch,
            ServerInvite {
                invite: bytes.clone(),
                to_tag,
                last: Some(ringing),
                final_code: None,
                retx: None,
                answer_at,
            },
        );
    }

    fn caller_saw_final(&mut self, p: &Phone, code: u16, call_id: &str) {
        if code >= 300 {
            // The failure must be durable before the caller hears of it.
            let durable = self.log.iter().any(|(_, r)| {
                r.sip_call_id == call_id
                    && r.user == p.user
                    && matches!(r.step, CallStep::Fail { sip_status, .. } if sip_status == code)
            });
            if !durable {
                self.fail(format!(
                    "caller of {call_id} got {code} before the failure was durable"
                ));
            }
        }
    }

    fn phone_timers(&mut self, addr: SocketAddr) {
        let Some(mut p) = self.phones.remove(&addr) else {
            return;
        };
        let now = self.now;
        let mut sends = Vec::new();
        for tx in &mut p.txs {
            if !tx.pending() {
                continue;
            }
            if now >= tx.give_up_at {
                tx.final_code = Some(408);
                tx.retransmit_at = None;
                continue;
            }
            if tx.retransmit_at.is_some_and(|t| now >= t) {
                tx.interval = if tx.method == "INVITE" {
                    tx.interval * 2
                } else {
                    (tx.interval * 2).min(T2)
                };
                tx.retransmit_at = Some(now + tx.interval);
                sends.push(tx.bytes.clone());
            }
        }
        // A caller whose INVITE timed out saw a local 408.
        let mut cancel = None;
        if let Role::Caller {
            cancel_at,
            invite_branch,
            call_id,
            from_tag,
            ..
        } = &mut p.role
        {
            if cancel_at.is_some_and(|t| now >= t) {
                *cancel_at = None;
                let inv = p.txs.iter().find(|t| t.branch == *invite_branch);
                if inv.is_some_and(|t| t.pending()) {
                    cancel = Some((invite_branch.clone(), call_id.clone(), from_tag.clone()));
                }
            }
        }
        if let Some((b, call_id, from_tag)) = cancel {
            let c = request(
                "CANCEL",
                &format!("sip:callee-of-{call_id}@{DOMAIN}"),
                &p.via(&b),
                &format!("<sip:{}@{DOMAIN}>;tag={from_tag}", p.user),
                &format!("<sip:callee-of-{call_id}@{DOMAIN}>"),
                &call_id,
                1,
                None,
            );
            p.txs.push(ClientTx::new(b, "CANCEL", c.clone(), now));
            sends.push(c);
        }
        let script_of = match &p.role {
            Role::Callee {
                script,
                hangup_after,
                reinvite_after,
                ..
            } => Some((*script, *hangup_after, *reinvite_after)),
            Role::Caller { .. } => None,
        };
        let contact = p.contact();
        let user = p.user.clone();
        let mut new_dialogs = Vec::new();
        for inv in p.incoming.values_mut() {
            if let Some(r) = &mut inv.retx {
                if now >= r.give_up_at {
                    inv.retx = None;
                } else if now >= r.at {
                    r.interval = (r.interval * 2).min(T2);
                    r.at = now + r.interval;
                    sends.push(r.bytes.clone());
                }
            }
            if inv.answer_at.is_some_and(|t| now >= t) {
                inv.answer_at = None;
                let Some((script, hangup_after, reinvite_after)) = script_of else {
                    continue;
                };
                let code = match script {
                    CalleeScript::Answer(_) => 200,
                    CalleeScript::Busy(_) => 486,
                    CalleeScript::Decline(_) => 603,
                    CalleeScript::NotFound(_) => 404,
                    CalleeScript::ServerError(_) => 503,
                    CalleeScript::Silent | CalleeScript::Dead => continue,
                };
                let m = Message::parse(&inv.invite).expect("stored invite");
                let mut r = respond(&m, addr, code, &inv.to_tag, Some(&contact));
                if code == 200 {
                    r = with_body(&r, &sdp(&format!("callee-{user}")));
                }
                inv.final_code = Some(code);
                inv.last = Some(r.clone());
                inv.retx = Some(ResponseRetx {
                    bytes: r.clone(),
                    at: now + T1,
                    interval: T1,
                    give_up_at: now + 64 * T1,
                });
                sends.push(r);
                if code == 200 {
                    let caller_contact = m
                        .list(Name::Contact)
                        .next()
                        .map(|c| c.trim_matches(|ch| ch == '<' || ch == '>').to_owned())
                        .unwrap_or_default();
                    new_dialogs.push(Dialog {
                        call_id: m.call_id().unwrap_or("").to_owned(),
                        local_tag: inv.to_tag.clone(),
                        remote_tag: m.from().ok().and_then(|f| f.tag()).unwrap_or("").to_owned(),
                        local_uri: format!(
                            "{};tag={}",
                            m.header(Name::To).unwrap_or(""),
                            inv.to_tag
                        ),
                        remote_uri: m.header(Name::From).unwrap_or("").to_owned(),
                        remote_contact: caller_contact,
                        cseq: 100,
                        ended: false,
                        hangup_at: hangup_after.map(|h| now + h),
                        reinvite_at: reinvite_after.map(|h| now + h),
                    });
                }
            }
        }
        p.dialogs.extend(new_dialogs);
        // Hang-ups and re-INVITEs.
        let mut new_txs = Vec::new();
        for i in 0..p.dialogs.len() {
            if p.dialogs[i].ended {
                continue;
            }
            let bye_due = p.dialogs[i].hangup_at.is_some_and(|t| now >= t);
            let reinvite_due = p.dialogs[i].reinvite_at.is_some_and(|t| now >= t);
            if !(bye_due || reinvite_due) {
                continue;
            }
            let method = if bye_due { "BYE" } else { "INVITE" };
            p.seq += 1;
            let b = format!("z9hG4bK-ua{}-{}", p.addr.port(), p.seq);
            let via = p.via(&b);
            let d = &mut p.dialogs[i];
            if bye_due {
                d.ended = true;
                d.hangup_at = None;
            } else {
                d.reinvite_at = None;
            }
            d.cseq += 1;
            let req = request(
                method,
                &d.remote_contact,
                &via,
                &with_tag(&d.local_uri, &d.local_tag),
                &with_tag(&d.remote_uri, &d.remote_tag),
                &d.call_id,
                d.cseq,
                Some(&contact),
            );
            new_txs.push(ClientTx::new(
                b,
                if bye_due { "BYE" } else { "INVITE" },
                req.clone(),
                now,
            ));
            sends.push(req);
        }
        p.txs.extend(new_txs);
        for s in sends {
            self.send(addr, proxy_addr(), s);
        }
        self.phones.insert(addr, p);
    }
}

/// The ACK of a non-2xx final response: the INVITE's Request-URI, Via,
/// From, Call-ID and CSeq number, the response's To (RFC 3261 s.17.1.1.3).
fn ack_of(invite: &Bytes, to_header: &str) -> Bytes {
    let m = Message::parse(invite).expect("own INVITE");
    let StartLine::Request { uri, .. } = m.start else {
        unreachable!("own INVITE is a request")
    };
    request(
        "ACK",
        uri,
        m.header(Name::Via).unwrap_or(""),
        m.header(Name::From).unwrap_or(""),
        to_header,
        m.call_id().unwrap_or(""),
        m.cseq().map(|c| c.seq).unwrap_or(1),
        None,
    )
}

/// A session description the phones exchange, naming what it is.
fn sdp(what: &str) -> String {
    format!("v=0\r\ns={what}\r\n")
}

/// `message` (written with an empty body) carrying `body`.
fn with_body(message: &Bytes, body: &str) -> Bytes {
    let text = String::from_utf8_lossy(message).replace(
        "Content-Length: 0\r\n\r\n",
        &format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    Bytes::from(text)
}

fn is_reinvite(t: &ClientTx) -> bool {
    // Our re-INVITEs carry a To tag; the initial INVITE does not.
    Message::parse(&t.bytes)
        .ok()
        .is_some_and(|m| m.to().ok().and_then(|to| to.tag()).is_some())
}

fn with_tag(uri: &str, tag: &str) -> String {
    if uri.contains(";tag=") {
        uri.to_owned()
    } else {
        format!("{uri};tag={tag}")
    }
}

// -------------------------------------------------------------- scenarios

/// Even seeds run the calls through a back-to-back user agent, odd ones
/// through the proxy (the seeds kept in `REGRESSIONS` were found in proxy
/// mode and are odd). `DIALTONE_SIM_MODE=proxy|b2bua` runs every seed in
/// one mode.
fn mode_of(seed: u64) -> CallMode {
    match std::env::var("DIALTONE_SIM_MODE").ok().as_deref() {
        Some("proxy") => CallMode::Proxy,
        Some("b2bua") => CallMode::B2bua,
        _ if seed.is_multiple_of(2) => CallMode::B2bua,
        _ => CallMode::Proxy,
    }
}

fn build(seed: u64) -> Sim {
    let mut rng = Rng(seed);
    let base = Instant::now();
    let mode = mode_of(seed);
    let max_call = if rng.chance(15) { 20 } else { 300 };
    let settings = ProxySettings {
        advertised: PROXY.into(),
        local: vec![proxy_addr()],
        no_answer_timeout: Duration::from_secs(if rng.chance(50) { 30 } else { 60 }),
        max_call_duration: Duration::from_secs(max_call),
        call_mode: mode,
    };
    let loss = [0, 0, 5, 10, 20][rng.below(5) as usize];
    let dup = [0, 5, 20][rng.below(3) as usize];
    let max_delay = [2, 30, 300][rng.below(3) as usize];
    let mut sim = Sim {
        engine: Engine::new(settings, rng.next()),
        rng: Rng(rng.next()),
        base,
        now: base,
        events: BTreeMap::new(),
        seq: 0,
        phones: HashMap::new(),
        plans: HashMap::new(),
        started: HashSet::new(),
        recorder: HashMap::new(),
        log: Vec::new(),
        loss,
        dup,
        max_delay,
        failures: Vec::new(),
        trace: std::env::var_os("DIALTONE_SIM_TRACE").is_some(),
        mode,
    };
    let calls = 1 + rng.below(3);
    let mut port = 20_000u16;
    for c in 0..calls {
        let call_id = format!("sim{seed:x}-{c}");
        let caller_addr: SocketAddr = format!("127.0.1.1:{port}").parse().expect("addr");
        port += 1;
        let callees = 1 + rng.below(3) as usize;
        let mut targets = Vec::new();
        for k in 0..callees {
            let addr: SocketAddr = format!("127.0.2.1:{port}").parse().expect("addr");
            port += 1;
            let d = rng.millis(0, 15_000);
            let script = match rng.below(10) {
                0..=3 => CalleeScript::Answer(d),
                4 => CalleeScript::Busy(d),
                5 => CalleeScript::Decline(d),
                6 => CalleeScript::NotFound(d),
                7 => CalleeScript::ServerError(d),
                8 => CalleeScript::Silent,
                _ => CalleeScript::Dead,
            };
            let user = format!("callee{c}-{k}");
            sim.phones.insert(
                addr,
                Phone {
                    addr,
                    user: user.clone(),
                    role: Role::Callee {
                        script,
                        hangup_after: rng.chance(40).then(|| rng.millis(0, 10_000)),
                        reinvite_after: rng.chance(20).then(|| rng.millis(0, 5_000)),
                    },
                    txs: Vec::new(),
                    incoming: HashMap::new(),
                    dialogs: Vec::new(),
                    answered: HashMap::new(),
                    byes_seen: Vec::new(),
                    reinvites_received: 0,
                    bodies: Vec::new(),
                    seq: 0,
                },
            );
            targets.push(RouteTarget {
                uri: format!("sip:{user}@{addr}"),
                flow: Flow::new(Transport::Udp, addr),
                member: None,
            });
        }
        let maybe = |rng: &mut Rng, to: usize, percent: u64| rng.chance(percent).then_some(to);
        let plan = if targets.len() > 1 && rng.chance(25) {
            // A ring group: each phone a member of its own, rung all at
            // once or one after the other.
            let group = Some((DOMAIN.to_owned(), format!("callee-of-{call_id}")));
            for t in &mut targets {
                let user = sim.phones[&t.flow.remote].user.clone();
                t.member = Some((DOMAIN.to_owned(), user));
            }
            let steps = if rng.chance(50) {
                vec![RouteStep {
                    targets,
                    ring_timeout: Some(rng.millis(2_000, 20_000)),
                    next: NextSteps::NONE,
                    diversions: Vec::new(),
                    skipped: Vec::new(),
                    group,
                }]
            } else {
                let n = targets.len();
                targets
                    .into_iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let next = (i + 1 < n).then_some(i + 1);
                        RouteStep {
                            targets: vec![t],
                            ring_timeout: Some(rng.millis(1_000, 10_000)),
                            next: NextSteps {
                                busy: next,
                                no_answer: next,
                                unavailable: next,
                            },
                            diversions: Vec::new(),
                            skipped: Vec::new(),
                            group: group.clone(),
                        }
                    })
                    .collect()
            };
            RoutePlan {
                steps,
                dialled_group: true,
            }
        } else if targets.len() > 2 && rng.chance(50) {
            // The dialled user's phone, then forwards: to a second user,
            // whose call may go on to a third (a chain of forwards).
            let first = targets.remove(0);
            let second = targets.remove(0);
            let dialled = (DOMAIN.to_owned(), format!("callee-of-{call_id}"));
            let fwd1 = (DOMAIN.to_owned(), format!("fwd1-of-{call_id}"));
            let fwd2 = (DOMAIN.to_owned(), format!("fwd2-of-{call_id}"));
            let reasons = [
                DiversionReason::UserBusy,
                DiversionReason::NoAnswer,
                DiversionReason::Unavailable,
            ];
            let to_fwd1 = Diversion {
                from: dialled,
                to: fwd1.clone(),
                reason: reasons[rng.below(3) as usize],
                to_group: false,
                to_voicemail: false,
                to_conference: false,
            };
            let to_fwd2 = Diversion {
                from: fwd1,
                to: fwd2,
                reason: reasons[rng.below(3) as usize],
                to_group: false,
                to_voicemail: false,
                to_conference: false,
            };
            RoutePlan {
                steps: vec![
                    RouteStep {
                        targets: vec![first],
                        ring_timeout: Some(rng.millis(2_000, 20_000)),
                        next: NextSteps {
                            busy: maybe(&mut rng, 1, 70),
                            no_answer: maybe(&mut rng, 1, 70),
                            unavailable: maybe(&mut rng, 1, 50),
                        },
                        diversions: Vec::new(),
                        skipped: Vec::new(),
                        group: None,
                    },
                    RouteStep {
                        targets: vec![second],
                        ring_timeout: Some(rng.millis(2_000, 20_000)),
                        next: NextSteps {
                            busy: maybe(&mut rng, 2, 70),
                            no_answer: maybe(&mut rng, 2, 70),
                            unavailable: maybe(&mut rng, 2, 50),
                        },
                        diversions: vec![to_fwd1.clone()],
                        skipped: Vec::new(),
                        group: None,
                    },
                    RouteStep {
                        targets,
                        ring_timeout: None,
                        next: NextSteps::NONE,
                        diversions: vec![to_fwd1, to_fwd2],
                        skipped: Vec::new(),
                        group: None,
                    },
                ],
                dialled_group: false,
            }
        } else if targets.len() > 1 && rng.chance(50) {
            // Ring the first target, then the others, or skip to the last
            // ones on some outcomes (the steps' jumps).
            let first = targets.remove(0);
            let last = if targets.len() > 1 && rng.chance(50) {
                vec![targets.remove(0)]
            } else {
                Vec::new()
            };
            let ends = if last.is_empty() { 1 } else { 2 };
            let mut steps = vec![
                RouteStep {
                    targets: vec![first],
                    ring_timeout: Some(rng.millis(2_000, 20_000)),
                    next: NextSteps {
                        busy: maybe(&mut rng, ends, 70),
                        no_answer: maybe(&mut rng, 1, 70),
                        unavailable: maybe(&mut rng, 1, 50),
                    },
                    diversions: Vec::new(),
                    skipped: Vec::new(),
                    group: None,
                },
                RouteStep {
                    targets,
                    ring_timeout: None,
                    next: NextSteps::NONE,
                    diversions: Vec::new(),
                    skipped: Vec::new(),
                    group: None,
                },
            ];
            if !last.is_empty() {
                steps.push(RouteStep {
                    targets: last,
                    ring_timeout: None,
                    next: NextSteps::NONE,
                    diversions: Vec::new(),
                    skipped: Vec::new(),
                    group: None,
                });
            }
            RoutePlan {
                steps,
                dialled_group: false,
            }
        } else {
            RoutePlan::parallel(targets)
        };
        sim.plans.insert(call_id.clone(), plan);
        let from_tag = format!("ft{c}");
        let invite_branch = format!("z9hG4bK-inv{c}-{seed:x}");
        let user = format!("caller{c}");
        let start = base + rng.millis(0, 2_000);
        let mut phone = Phone {
            addr: caller_addr,
            user: user.clone(),
            role: Role::Caller {
                call_id: call_id.clone(),
                from_tag: from_tag.clone(),
                invite_branch: invite_branch.clone(),
                cancel_at: rng.chance(25).then(|| start + rng.millis(0, 20_000)),
                hangup_after: rng.chance(80).then(|| rng.millis(0, 10_000)),
                reinvite_after: rng.chance(20).then(|| rng.millis(0, 5_000)),
                answered_by: None,
                answered_tag: None,
                acks: HashMap::new(),
                offers: c % 2 == 0,
            },
            txs: Vec::new(),
            incoming: HashMap::new(),
            dialogs: Vec::new(),
            answered: HashMap::new(),
            byes_seen: Vec::new(),
            reinvites_received: 0,
            bodies: Vec::new(),
            seq: 0,
        };
        let mut invite = request(
            "INVITE",
            &format!("sip:callee-of-{call_id}@{DOMAIN}"),
            &phone.via(&invite_branch),
            &format!("<sip:{user}@{DOMAIN}>;tag={from_tag}"),
            &format!("<sip:callee-of-{call_id}@{DOMAIN}>"),
            &call_id,
            1,
            Some(&phone.contact()),
        );
        if c % 2 == 0 {
            invite = with_body(&invite, &sdp(&format!("offer-{call_id}")));
        }
        // The INVITE leaves the phone at `start`.
        phone.txs.push(ClientTx::new(
            invite_branch,
            "INVITE",
            invite.clone(),
            start,
        ));
        sim.seq += 1;
        sim.events.insert(
            (start, sim.seq),
            Event::Deliver {
                from: caller_addr,
                to: proxy_addr(),
                bytes: invite,
            },
        );
        sim.phones.insert(caller_addr, phone);
    }
    sim
}

/// Runs the world until nothing is left to happen.
fn settle(sim: &mut Sim) {
    let limit = sim.base + Duration::from_secs(900);
    let mut steps = 0u64;
    loop {
        steps += 1;
        if steps > 200_000 {
            sim.fail("the scenario does not settle (200,000 steps)".into());
            return;
        }
        let next_event = sim.events.keys().next().map(|(t, _)| *t);
        let next_engine = sim.engine.poll_timeout();
        let next_phone = sim
            .phones
            .values()
            .filter_map(|p| p.next_timer().map(|t| (t, p.addr)))
            .min();
        let candidates = [next_event, next_engine, next_phone.map(|(t, _)| t)];
        let Some(next) = candidates.iter().flatten().min().copied() else {
            return;
        };
        if next > limit {
            sim.fail("still busy after 15 simulated minutes".into());
            return;
        }
        sim.now = sim.now.max(next);
        if next_engine == Some(next) {
            sim.engine.handle_timeout(sim.now);
        } else if next_event == Some(next) {
            let Some((_, event)) = sim.events.pop_first() else {
                return;
            };
            if sim.trace {
                trace(sim, &event);
            }
            match event {
                Event::Deliver { from, to, bytes } if to == proxy_addr() => {
                    sim.at_proxy(from, bytes)
                }
                Event::Deliver { to, bytes, .. } => sim.at_phone(to, bytes),
                Event::Recorded(call_id) => sim.on_recorded(call_id),
            }
        } else if let Some((_, addr)) = next_phone {
            sim.phone_timers(addr);
        }
        sim.drain_engine();
    }
}

/// Runs one scenario to its end; returns what failed.
fn run(seed: u64) -> Vec<String> {
    run_counting(seed, &mut Coverage::default())
}

/// What the scenarios covered: a run whose scenarios never answered,
/// cancelled or timed out would prove nothing.
#[derive(Debug, Default)]
struct Coverage {
    calls: u64,
    answered: u64,
    ended_by_caller: u64,
    ended_by_callee: u64,
    ended_by_proxy: u64,
    failed: BTreeMap<u16, u64>,
    reinvites: u64,
    second_step: u64,
    lost_or_duplicated: u64,
    /// Scenarios run through the back-to-back user agent, and re-INVITEs
    /// it relayed from one leg to the other.
    b2bua_scenarios: u64,
    b2bua_reinvites_relayed: u64,
    /// Delayed offers whose answer (in the caller's ACK) reached the
    /// callee in the node's ACK.
    b2bua_delayed_answers: u64,
    /// Legs that ended forwarded, and answers on a forwarded-to leg.
    forwarded: u64,
    forwarded_answered: u64,
    /// Ring group calls; member legs that failed because another member
    /// answered, and members that answered.
    group_calls: u64,
    answered_elsewhere: u64,
    members_answered: u64,
}

fn run_counting(seed: u64, cov: &mut Coverage) -> Vec<String> {
    let mut sim = build(seed);
    if sim.loss > 0 || sim.dup > 0 {
        cov.lost_or_duplicated += 1;
    }
    if sim.mode == CallMode::B2bua {
        cov.b2bua_scenarios += 1;
    }
    settle(&mut sim);
    check_end(&mut sim);
    for (_, r) in &sim.log {
        if !r.user.starts_with("caller") {
            continue;
        }
        match &r.step {
            CallStep::Start { .. } => cov.calls += 1,
            CallStep::Answer { contact } => {
                cov.answered += 1;
                let plan = &sim.plans[&r.sip_call_id];
                if plan.steps.len() > 1 && plan.steps[1].targets.iter().any(|t| t.uri == *contact) {
                    cov.second_step += 1;
                }
            }
            CallStep::End { side, .. } => match side {
                HangupSide::Caller => cov.ended_by_caller += 1,
                HangupSide::Callee => cov.ended_by_callee += 1,
                HangupSide::System => cov.ended_by_proxy += 1,
            },
            CallStep::Fail { sip_status, .. } => *cov.failed.entry(*sip_status).or_default() += 1,
            CallStep::Ringing
            | CallStep::Forwarded { .. }
            | CallStep::ForwardSkipped(_)
            | CallStep::Transferred(_) => {}
        }
    }
    cov.group_calls += sim.plans.values().filter(|p| p.dialled_group).count() as u64;
    for (_, r) in &sim.log {
        let member = sim
            .plans
            .get(&r.sip_call_id)
            .is_some_and(|p| p.dialled_group)
            && r.user.starts_with("callee");
        match &r.step {
            CallStep::Fail {
                cause: dialtone_sip::backend::CallCause::AnsweredElsewhere,
                ..
            } => cov.answered_elsewhere += 1,
            CallStep::Answer { .. } if member => cov.members_answered += 1,
            _ => {}
        }
        match &r.step {
            CallStep::Forwarded { .. } => cov.forwarded += 1,
            CallStep::Answer { .. } if r.user.starts_with("fwd") => cov.forwarded_answered += 1,
            _ => {}
        }
    }
    cov.reinvites += sim
        .phones
        .values()
        .flat_map(|p| &p.txs)
        .filter(|t| t.method == "INVITE" && is_reinvite(t))
        .count() as u64;
    if sim.mode == CallMode::B2bua {
        cov.b2bua_reinvites_relayed += sim
            .phones
            .values()
            .map(|p| p.reinvites_received)
            .sum::<u64>();
        cov.b2bua_delayed_answers += sim
            .phones
            .values()
            .flat_map(|p| &p.bodies)
            .filter(|(what, body)| *what == "ACK" && !body.is_empty())
            .count() as u64;
    }
    sim.failures
}

/// The invariants once nothing is left to happen.
fn check_end(sim: &mut Sim) {
    let stats = sim.engine.stats();
    if !sim.engine.is_idle() {
        let (calls, dialogs) = sim.engine.counts();
        sim.fail(format!(
            "the engine still holds state: {calls} calls, {dialogs} dialogs, {} parked",
            sim.engine.parked()
        ));
    }
    if stats.stuck_timers > 0 {
        sim.fail(format!(
            "{} timer expiries left a timer in the past",
            stats.stuck_timers
        ));
    }
    if stats.calls > 0 && stats.call_wakeups > MAX_WAKEUPS_PER_CALL * stats.calls {
        sim.fail(format!(
            "{} wake-ups for {} calls: a call is polling instead of sleeping",
            stats.call_wakeups, stats.calls
        ));
    }
    // Every leg's steps are well formed and match what the phones saw.
    let mut by_leg: BTreeMap<(String, String), Vec<CallStep>> = BTreeMap::new();
    for (_, r) in &sim.log {
        by_leg
            .entry((r.sip_call_id.clone(), r.user.clone()))
            .or_default()
            .push(r.step.clone());
    }
    let mut failures = Vec::new();
    for ((call_id, user), steps) in &by_leg {
        let ok_shape = matches!(steps.first(), Some(CallStep::Start { .. }))
            && steps
                .iter()
                .filter(|s| matches!(s, CallStep::Start { .. }))
                .count()
                == 1
            && steps
                .iter()
                .filter(|s| matches!(s, CallStep::Ringing))
                .count()
                <= 1
            && steps
                .iter()
                .filter(|s| matches!(s, CallStep::Answer { .. }))
                .count()
                <= 1
            && steps
                .iter()
                .filter(|s| {
                    matches!(
                        s,
                        CallStep::End { .. } | CallStep::Fail { .. } | CallStep::Forwarded { .. }
                    )
                })
                .count()
                == 1
            && matches!(
                steps.last(),
                Some(CallStep::End { .. } | CallStep::Fail { .. } | CallStep::Forwarded { .. })
            );
        if !ok_shape {
            failures.push(format!("leg {user} of {call_id} recorded {steps:?}"));
        }
        let answered = steps.iter().any(|s| matches!(s, CallStep::Answer { .. }));
        let ended = steps.iter().any(|s| matches!(s, CallStep::End { .. }));
        if answered != ended {
            failures.push(format!(
                "leg {user} of {call_id}: answered={answered} but ended={ended}"
            ));
        }
        // A forward names the user whose leg starts next, and that user's
        // leg is a forward target of the plan.
        for s in steps {
            if let CallStep::Forwarded { to, .. } = s {
                let user = to.split('@').next().unwrap_or("");
                if !by_leg.contains_key(&(call_id.clone(), user.to_owned())) {
                    failures.push(format!(
                        "leg {user} of {call_id}: forwarded to {to}, which has no leg"
                    ));
                }
            }
        }
    }
    check_forwards(sim, &by_leg, &mut failures);
    check_groups(sim, &by_leg, &mut failures);
    for p in sim.phones.values() {
        let Role::Caller {
            call_id,
            invite_branch,
            answered_by,
            ..
        } = &p.role
        else {
            continue;
        };
        let Some(steps) = by_leg.get(&(call_id.clone(), p.user.clone())) else {
            failures.push(format!("call {call_id} recorded nothing for its caller"));
            continue;
        };
        let seen = p
            .txs
            .iter()
            .find(|t| t.branch == *invite_branch && t.method == "INVITE")
            .and_then(|t| t.final_code);
        let answer = steps.iter().find_map(|s| match s {
            CallStep::Answer { contact } => Some(contact.clone()),
            _ => None,
        });
        let fail = steps.iter().find_map(|s| match s {
            CallStep::Fail { sip_status, .. } => Some(*sip_status),
            _ => None,
        });
        match (seen, answer, fail) {
            (Some(200), Some(contact), None) => {
                // When two phones answered the forked call, the caller keeps
                // the 2xx it got first and the proxy records the one it
                // relayed first; loss and reordering may make them differ.
                let answering: Vec<String> = sim
                    .phones
                    .values()
                    .filter(|c| {
                        c.incoming.values().any(|i| {
                            i.final_code == Some(200)
                                && Message::parse(&i.invite)
                                    .is_ok_and(|m| m.call_id().ok() == Some(call_id.as_str()))
                        })
                    })
                    .map(|c| c.contact())
                    .collect();
                let raced = answering.len() > 1 && answering.contains(&contact);
                if sim.mode == CallMode::B2bua {
                    // The caller's dialog is with the node; the recorded
                    // answer must be a target of this call that answered.
                    let answered_here = sim.phones.values().any(|c| {
                        c.contact() == contact
                            && sim.plans[call_id]
                                .steps
                                .iter()
                                .any(|s| s.targets.iter().any(|t| t.flow.remote == c.addr))
                            && c.incoming.values().any(|i| i.final_code == Some(200))
                    });
                    if !answered_here {
                        failures.push(format!(
                            "call {call_id}: recorded answer by {contact}, which never answered it"
                        ));
                    }
                } else if !raced && answered_by.as_deref() != Some(contact.as_str()) {
                    failures.push(format!(
                        "call {call_id}: recorded answer by {contact}, the caller's dialog is with {answered_by:?}"
                    ));
                }
            }
            (Some(code), None, Some(status)) if code >= 300 && code == status => {}
            // The caller never heard a final response (every copy lost and
            // its Timer B fired: 408 locally): any recorded outcome.
            (Some(408), _, _) => {}
            other => failures.push(format!(
                "call {call_id}: the caller saw {seen:?}, the log says {other:?}"
            )),
        }
    }
    // The end of a call was durable before its BYE reached a phone of
    // the dialog that answered it (a second answering phone's dialog
    // records nothing).
    let answering: HashMap<String, (String, String)> = sim
        .phones
        .values()
        .filter_map(|p| match &p.role {
            Role::Caller {
                call_id,
                answered_tag: Some(tag),
                from_tag,
                ..
            } => Some((call_id.clone(), (from_tag.clone(), tag.clone()))),
            _ => None,
        })
        .collect();
    if sim.mode == CallMode::B2bua {
        check_end_b2bua(sim, &mut failures);
        sim.failures.extend(failures);
        return;
    }
    for p in sim.phones.values() {
        for (call_id, local_tag, remote_tag, at) in &p.byes_seen {
            let Some((caller_tag, callee_tag)) = answering.get(call_id) else {
                continue;
            };
            let tags = [local_tag, remote_tag];
            if !(tags.contains(&caller_tag) && tags.contains(&callee_tag)) {
                continue;
            }
            let end = sim
                .log
                .iter()
                .find(|(_, r)| r.sip_call_id == *call_id && matches!(r.step, CallStep::End { .. }));
            match end {
                Some((durable_at, _)) if durable_at <= at => {}
                Some(_) => failures.push(format!(
                    "call {call_id}: a BYE reached {} before the end was durable",
                    p.user
                )),
                None => failures.push(format!(
                    "call {call_id}: a BYE reached {} and no end was recorded",
                    p.user
                )),
            }
        }
    }
    sim.failures.extend(failures);
}

/// Forwarded calls: a forwarded-to user's leg exists exactly when a step
/// of its was rung, and every INVITE that reached one of its phones told
/// whom the call was for (Diversion and History-Info naming the dialled
/// user). Phones of the dialled user's own step saw neither.
fn check_forwards(
    sim: &Sim,
    by_leg: &BTreeMap<(String, String), Vec<CallStep>>,
    failures: &mut Vec<String>,
) {
    for (call_id, plan) in &sim.plans {
        for step in &plan.steps {
            let phones: Vec<&Phone> = sim
                .phones
                .values()
                .filter(|p| step.targets.iter().any(|t| t.flow.remote == p.addr))
                .collect();
            let invites: Vec<String> = phones
                .iter()
                .flat_map(|p| p.incoming.values())
                .filter_map(|i| {
                    let msg = Message::parse(&i.invite).ok()?;
                    let ours =
                        msg.call_id().ok() == Some(call_id.as_str()) || sim.mode == CallMode::B2bua;
                    ours.then(|| String::from_utf8_lossy(&i.invite).into_owned())
                })
                .collect();
            let Some(last) = step.diversions.last() else {
                for invite in &invites {
                    if invite.contains("\r\nDiversion:") || invite.contains("\r\nHistory-Info:") {
                        failures.push(format!(
                            "call {call_id}: the dialled user's phone got a forwarded INVITE: {invite}"
                        ));
                    }
                }
                continue;
            };
            let rung = !invites.is_empty();
            let has_leg = by_leg.contains_key(&(call_id.clone(), last.to.1.clone()));
            if rung && !has_leg {
                failures.push(format!(
                    "call {call_id}: {} was rung without a leg",
                    last.to.1
                ));
            }
            let dialled = format!("<sip:callee-of-{call_id}@{DOMAIN}>");
            for invite in &invites {
                let diversion = invite
                    .lines()
                    .find(|l| l.starts_with("Diversion: "))
                    .unwrap_or("");
                let history = invite
                    .lines()
                    .find(|l| l.starts_with("History-Info: "))
                    .unwrap_or("");
                // The oldest forward (from the dialled user) is the last
                // Diversion entry; History-Info starts with the dialled.
                let entries = diversion.matches("counter=1").count();
                if !diversion.contains(&format!("{dialled};reason="))
                    || entries != step.diversions.len()
                    || !history.starts_with(&format!("History-Info: {dialled};index=1"))
                {
                    failures.push(format!(
                        "call {call_id}: a forwarded INVITE to {} says {diversion:?} {history:?}",
                        last.to.1
                    ));
                }
            }
        }
    }
}

/// Ring group calls: the group has no leg; a member has a leg exactly
/// when one of its phones was sent the INVITE; at most one member
/// answered, and a member's leg fails as answered elsewhere only when the
/// call was answered.
fn check_groups(
    sim: &Sim,
    by_leg: &BTreeMap<(String, String), Vec<CallStep>>,
    failures: &mut Vec<String>,
) {
    use dialtone_sip::backend::CallCause;
    for (call_id, plan) in sim.plans.iter().filter(|(_, p)| p.dialled_group) {
        if by_leg.contains_key(&(call_id.clone(), format!("callee-of-{call_id}"))) {
            failures.push(format!("call {call_id}: the ring group has a leg"));
        }
        let mut answered = 0;
        let mut elsewhere = 0;
        for t in plan.steps.iter().flat_map(|s| &s.targets) {
            let Some((_, member)) = &t.member else {
                failures.push(format!("call {call_id}: a group target without a member"));
                continue;
            };
            let phone = &sim.phones[&t.flow.remote];
            let rung = phone.incoming.values().any(|i| {
                Message::parse(&i.invite).is_ok_and(|m| {
                    m.call_id().ok() == Some(call_id.as_str()) || sim.mode == CallMode::B2bua
                })
            });
            let leg = by_leg.get(&(call_id.clone(), member.clone()));
            // A member whose INVITE was lost on the way has a leg but no
            // incoming call; one rung must have a leg.
            if rung && leg.is_none() {
                failures.push(format!(
                    "call {call_id}: member {member} rang without a leg"
                ));
            }
            let Some(steps) = leg else {
                continue;
            };
            if steps.iter().any(|s| matches!(s, CallStep::Answer { .. })) {
                answered += 1;
            }
            if steps.iter().any(|s| {
                matches!(
                    s,
                    CallStep::Fail {
                        cause: CallCause::AnsweredElsewhere,
                        ..
                    }
                )
            }) {
                elsewhere += 1;
            }
        }
        if answered > 1 {
            failures.push(format!("call {call_id}: {answered} members answered"));
        }
        // (A member of an earlier step may answer after its turn ended,
        // its CANCEL crossing the 2xx: the call is answered by a member
        // whose leg already failed. The caller's leg records the answer.)
        let call_answered = by_leg.iter().any(|((c, user), steps)| {
            c == call_id
                && !user.starts_with("callee")
                && steps.iter().any(|s| matches!(s, CallStep::Answer { .. }))
        });
        if elsewhere > 0 && !call_answered {
            failures.push(format!(
                "call {call_id}: {elsewhere} members answered elsewhere, but the call was not answered"
            ));
        }
    }
}

/// B2BUA: the end of a call was durable before a BYE reached the caller
/// or the callee that answered, and both of their dialogs ended.
fn check_end_b2bua(sim: &Sim, failures: &mut Vec<String>) {
    for p in sim.phones.values() {
        let (call_id, is_caller) = match &p.role {
            Role::Caller { call_id, .. } => (call_id.clone(), true),
            Role::Callee { .. } => {
                let Some(call_id) = sim.plans.iter().find_map(|(id, plan)| {
                    plan.steps
                        .iter()
                        .any(|s| s.targets.iter().any(|t| t.flow.remote == p.addr))
                        .then(|| id.clone())
                }) else {
                    continue;
                };
                (call_id, false)
            }
        };
        // Session descriptions crossed the node unchanged, each to the
        // side it was meant for.
        let offers = sim.phones.values().any(
            |c| matches!(&c.role, Role::Caller { call_id: id, offers: true, .. } if *id == call_id),
        );
        for (what, body) in &p.bodies {
            let ok = match *what {
                "INVITE" if offers => *body == sdp(&format!("offer-{call_id}")),
                "INVITE" => body.is_empty(),
                "ACK" => body.is_empty() || *body == sdp(&format!("answer-{call_id}")),
                _ => body.starts_with("v=0\r\ns=callee-"),
            };
            if !ok {
                failures.push(format!(
                    "call {call_id}: {} got the session description {body:?} in a {what}",
                    p.user
                ));
            }
        }
        let answer = sim.log.iter().find_map(|(_, r)| match &r.step {
            CallStep::Answer { contact } if r.sip_call_id == call_id => Some(contact.clone()),
            _ => None,
        });
        let in_call = is_caller || answer.as_deref() == Some(p.contact().as_str());
        if !in_call {
            continue;
        }
        let end = sim
            .log
            .iter()
            .find(|(_, r)| r.sip_call_id == call_id && matches!(r.step, CallStep::End { .. }));
        for (_, _, _, at) in &p.byes_seen {
            match end {
                Some((durable_at, _)) if durable_at <= at => {}
                Some(_) => failures.push(format!(
                    "call {call_id}: a BYE reached {} before the end was durable",
                    p.user
                )),
                None => failures.push(format!(
                    "call {call_id}: a BYE reached {} and no end was recorded",
                    p.user
                )),
            }
        }
        if answer.is_some() {
            for d in &p.dialogs {
                if !d.ended {
                    failures.push(format!(
                        "call {call_id}: the dialog of {} with {} never ended",
                        p.user, d.remote_tag
                    ));
                }
            }
        }
    }
}

fn scenarios() -> u64 {
    std::env::var("DIALTONE_SIM_SCENARIOS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000)
}

#[test]
fn regression_seeds_pass() {
    for &seed in REGRESSIONS {
        let failures = run(seed);
        assert!(failures.is_empty(), "seed {seed:#x}: {failures:#?}");
    }
}

#[test]
fn random_call_scenarios_keep_the_invariants() {
    let first = std::env::var("DIALTONE_SIM_SEED")
        .ok()
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0x5eed_0000);
    let n = scenarios();
    let mut cov = Coverage::default();
    for seed in first..first + n {
        let failures = run_counting(seed, &mut cov);
        assert!(
            failures.is_empty(),
            "seed {seed:#x} failed (keep it in REGRESSIONS; rerun alone with DIALTONE_SIM_SEED={seed:x} DIALTONE_SIM_SCENARIOS=1): {failures:#?}"
        );
    }
    eprintln!("{n} scenarios: {cov:?}");
    if n >= 1_000 {
        // Every path the scenarios are meant to drive was driven.
        assert!(cov.calls >= n, "{cov:?}");
        assert!(cov.answered * 5 >= cov.calls, "{cov:?}");
        assert!(
            cov.ended_by_caller > 0 && cov.ended_by_callee > 0 && cov.ended_by_proxy > 0,
            "{cov:?}"
        );
        for code in [404, 408, 480, 486, 487, 500, 603] {
            assert!(
                cov.failed.get(&code).is_some_and(|n| *n > 0),
                "no call failed with {code}: {cov:?}"
            );
        }
        assert!(
            cov.reinvites > 0 && cov.second_step > 0 && cov.lost_or_duplicated > 0,
            "{cov:?}"
        );
        assert!(cov.forwarded > 0 && cov.forwarded_answered > 0, "{cov:?}");
        assert!(
            cov.group_calls > 0 && cov.answered_elsewhere > 0 && cov.members_answered > 0,
            "{cov:?}"
        );
        if std::env::var_os("DIALTONE_SIM_MODE").is_none() {
            assert!(
                cov.b2bua_scenarios > 0 && cov.b2bua_scenarios < n,
                "both modes run: {cov:?}"
            );
        }
        if cov.b2bua_scenarios > 0 {
            assert!(
                cov.b2bua_reinvites_relayed > 0 && cov.b2bua_delayed_answers > 0,
                "{cov:?}"
            );
        }
    }
}

/// The simulation catches a call that polls instead of sleeping: a call
/// rejected with a busy (the 486 path that once spun until Timer D) is
/// woken only by its real timers.
#[test]
fn a_busy_callee_costs_a_bounded_number_of_wakeups() {
    for seed in 0..200u64 {
        let mut sim = build(seed);
        for p in sim.phones.values_mut() {
            if let Role::Callee { script, .. } = &mut p.role {
                *script = CalleeScript::Busy(Duration::from_millis(100));
            }
        }
        settle(&mut sim);
        check_end(&mut sim);
        let stats = sim.engine.stats();
        assert!(
            stats.call_wakeups <= 40 * stats.calls.max(1),
            "seed {seed}: {} wake-ups for {} busy calls",
            stats.call_wakeups,
            stats.calls
        );
        let failures = sim.failures;
        assert!(failures.is_empty(), "seed {seed}: {failures:#?}");
    }
}
