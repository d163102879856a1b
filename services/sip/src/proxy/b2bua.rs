//! A back-to-back user agent call: the caller's INVITE is answered by the
//! node itself (the *caller leg*, a UAS dialog) and every routing target is
//! rung by the node (one *callee leg* each, a UAC dialog with its own
//! Call-ID, tags, branch, CSeq, Via and Contact). The call joins the caller
//! leg to the callee leg that answered first; what one leg's peer sends in
//! its dialog becomes a new request or response in the other's. Neither
//! peer ever sees the other's Call-ID, tags, Via, Record-Route or Contact.
//!
//! Sans-IO, like [`super::call::ProxyCall`]: every input takes `now` and
//! pushes [`Effect`]s; the [`super::engine::Engine`] routes messages to the
//! call by its caller's INVITE key, its Via branches (`z9hG4bK-db`) and its
//! legs' Call-IDs, and turns the effects into actions. Every timer is
//! consumed when it fires.
//!
//! Durability is as in proxy mode: the failure is recorded durably before
//! the caller's final non-2xx response leaves, the end of the call before
//! any BYE or the 200 to a BYE does; while such a recording is pending,
//! everything the call sends waits with it (`held`).

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::backend::{CallCause, CallStep, HangupSide, RouteStep, RouteTarget};
use crate::proxy::forward::{self, Retargeting, SentInvite};
use crate::transaction::{Key, T1, T2, T4};
use crate::transport::Flow;
use crate::wire::message::{Message, Name, StartLine};
use crate::wire::response::{self, Source};

use super::call::{better, first_ringing_step, via, Effect, StepOutcome, TIMER_64T1};
use super::engine::DIALOG_LINGER;
use super::leg::{self, LegDialog, LegId};
use super::legs::Legs;
use super::transfer;

/// The Via branch prefix of every request a back-to-back call sends.
pub(crate) const BRANCH_PREFIX: &str = "z9hG4bK-db";

/// The prefix of the Call-IDs of callee legs. The four hex digits after
/// it are the low 16 bits of the caller's Call-ID's shard key, so that the
/// shell routes both legs of a call to the same engine (see
/// [`super::engine::shard_key`]).
pub(crate) const CALL_ID_PREFIX: &str = "dtb2b-";

/// The fixed facts a back-to-back call starts from.
pub(crate) struct B2buaSetup {
    pub key: Key,
    pub invite: Bytes,
    pub source: Source,
    pub upstream: Flow,
    /// Our tag in the caller's dialog.
    pub to_tag: String,
    pub legs: Legs,
    pub steps: Vec<RouteStep>,
    pub advertised: super::engine::Advertised,
    pub no_answer_timeout: Duration,
    pub max_call_duration: Duration,
    /// The caller's Max-Forwards, decremented.
    pub max_forwards: u32,
    /// The low 16 bits of the caller's Call-ID's shard key.
    pub shard_key: u16,
}

/// The caller leg's INVITE server transaction (RFC 3261 s.17.2.1, RFC
/// 6026 s.8).
#[derive(Debug)]
enum CallerInvite {
    /// No final response yet.
    Proceeding,
    /// Our 2xx was sent: retransmitted over UDP until the ACK, given up
    /// after 64*T1 (s.13.3.1.4).
    Accepted {
        retransmit_at: Option<Instant>,
        interval: Duration,
        give_up_at: Instant,
    },
    /// The ACK of our 2xx came.
    Confirmed,
    /// A final non-2xx response waits for the failure to be durable.
    Rejecting(Bytes),
    /// A final non-2xx response was sent: retransmitted (Timer G) until
    /// the ACK or Timer H.
    Rejected {
        retransmit_at: Option<Instant>,
        interval: Duration,
        give_up_at: Instant,
    },
    /// The ACK came: absorbing retransmissions until Timer I.
    AckedFailure(Instant),
    Terminated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InviteState {
    Calling,
    Proceeding,
    /// A non-2xx final response came (ACKed); Timer D over UDP.
    Completed,
    Terminated,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CancelState {
    None,
    Pending,
    Sent {
        bytes: Bytes,
        retransmit_at: Option<Instant>,
        interval: Duration,
    },
    Answered,
}

/// A callee leg: the INVITE client transaction towards one routing target
/// and, once it answered, its dialog.
struct CalleeLeg {
    target: RouteTarget,
    branch: Box<str>,
    call_id: String,
    local_tag: String,
    /// Our From (with our tag).
    local: String,
    invite: Bytes,
    sent: SentInvite,
    state: InviteState,
    retransmit_at: Option<Instant>,
    interval: Duration,
    timeout_at: Option<Instant>,
    cancel: CancelState,
    step: usize,
    counts: bool,
    /// Set by its first 2xx: the dialog (of the call, or one the node hung
    /// up because another leg answered first or the caller had failed).
    dialog: Option<LegDialog>,
    /// The ACK of its 2xx, sent again for each retransmission of the 2xx.
    ack: Option<Bytes>,
    /// Its 2xx carries the offer of an offerless INVITE: its ACK waits for
    /// the caller's, which carries the answer.
    ack_waits_for_caller: bool,
}

impl CalleeLeg {
    fn flow(&self) -> Flow {
        self.target.flow
    }

    fn is_final(&self) -> bool {
        matches!(self.state, InviteState::Completed | InviteState::Terminated)
    }
}

/// A request a peer sent inside its leg's dialog, answered by the node.
struct ServerTx {
    leg: LegId,
    cseq: u32,
    method: String,
    request: Bytes,
    source: Source,
    /// Where its responses go.
    reply_to: Flow,
    /// Our final response (sent again for a retransmitted request).
    response: Option<Bytes>,
    /// The branch of the request relaying it to the other leg.
    relayed_as: Option<Box<str>>,
    /// A final response to an INVITE: retransmitted until the ACK.
    retransmit_at: Option<Instant>,
    interval: Duration,
    /// When the transaction is forgotten.
    forget_at: Option<Instant>,
}

/// A request the node sent inside a leg's dialog (a relayed request, or
/// its own BYE).
struct ClientTx {
    leg: LegId,
    branch: Box<str>,
    method: String,
    cseq: u32,
    bytes: Bytes,
    retransmit_at: Option<Instant>,
    interval: Duration,
    give_up_at: Instant,
    /// The final response came; an INVITE's ACK, sent again for each
    /// retransmission of that response until `give_up_at`.
    done: Option<Option<Bytes>>,
    /// An INVITE without an offer: the ACK of its 2xx waits for the ACK
    /// (with the answer) of the request it relays.
    offerless: bool,
    /// That ACK is due and not sent yet.
    ack_waits: bool,
}

/// One back-to-back call.
pub(crate) struct B2buaCall {
    setup: B2buaSetup,
    /// The caller leg's dialog (from the INVITE; our tag).
    caller: LegDialog,
    /// The CSeq of the caller's INVITE.
    invite_cseq: u32,
    caller_invite: CallerInvite,
    /// Our last response to the caller's INVITE (provisional or final).
    last_response: Option<Bytes>,
    callees: Vec<CalleeLeg>,
    step: usize,
    step_timeout_at: Option<Instant>,
    step_best: Option<u16>,
    best: Option<u16>,
    no_answer_at: Instant,
    /// The current callee's leg has rung (the caller's leg rings with
    /// the first callee's).
    ringing: bool,
    /// The caller's leg has rung: a forwarded-to user's ringing is
    /// recorded on its own leg only.
    caller_rang: bool,
    /// The callee leg that answered, and when.
    answered: Option<(usize, Instant)>,
    /// The maximum call duration's deadline, once answered.
    max_duration_at: Option<Instant>,
    /// The call ended (after an answer): lingers until the instant for
    /// retransmissions, then `lingered`.
    ended: Option<Instant>,
    lingered: bool,
    /// The call ended before the caller acknowledged our 2xx: its BYE
    /// waits for that ACK (RFC 3261 s.15) or for our 2xx to time out.
    bye_caller_after_ack: bool,
    /// What our BYEs say about why the call ended (a Reason header).
    bye_headers: Vec<(String, String)>,
    /// The call was handed on by a transfer (see `Dialog::transferred`):
    /// its end is recorded with cause `transferred`.
    transferred: bool,
    servers: Vec<ServerTx>,
    clients: Vec<ClientTx>,
    /// Sends waiting for a durable recording.
    held: Option<Vec<(Flow, Bytes)>>,
    /// Every branch and Call-ID the engine routes to this call.
    branch_ids: Vec<Box<str>>,
    call_ids: Vec<Box<str>>,
    salt: u64,
    seq: u64,
}

impl B2buaCall {
    /// Answers the caller's INVITE as a UA and rings the first routing
    /// step. The caller's `Start` step is recorded first.
    pub fn start(
        setup: B2buaSetup,
        msg: &Message<'_>,
        salt: u64,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) -> B2buaCall {
        let from = msg.header(Name::From).unwrap_or("");
        let to = msg.header(Name::To).unwrap_or("");
        let caller = LegDialog {
            call_id: msg.call_id().unwrap_or("").to_owned(),
            local_tag: setup.to_tag.clone(),
            remote_tag: msg
                .from()
                .ok()
                .and_then(|f| f.tag())
                .unwrap_or("")
                .to_owned(),
            local: leg::with_own_tag(to, &setup.to_tag),
            remote: from.to_owned(),
            // No Contact (a broken phone): the address it sent from.
            remote_target: leg::contact_uri(msg)
                .unwrap_or_else(|| format!("sip:{}", setup.upstream.remote)),
            // A UAS keeps the Record-Route order (RFC 3261 s.12.1.1).
            route_set: msg.list(Name::RecordRoute).map(str::to_owned).collect(),
            local_cseq: 0,
            flow: setup.upstream,
        };
        let mut call = B2buaCall {
            invite_cseq: msg.cseq().map(|c| c.seq).unwrap_or(1),
            caller,
            caller_invite: CallerInvite::Proceeding,
            last_response: None,
            callees: Vec::new(),
            step: 0,
            step_timeout_at: None,
            step_best: None,
            best: None,
            no_answer_at: now + setup.no_answer_timeout,
            ringing: false,
            caller_rang: false,
            answered: None,
            max_duration_at: None,
            ended: None,
            lingered: false,
            bye_caller_after_ack: false,
            bye_headers: Vec::new(),
            transferred: false,
            servers: Vec::new(),
            clients: Vec::new(),
            held: None,
            branch_ids: Vec::new(),
            call_ids: Vec::new(),
            salt,
            seq: 0,
            setup,
        };
        fx.push(Effect::Record(call.setup.legs.start()));
        match first_ringing_step(&call.setup.steps, 0) {
            Some(step) => call.start_step(step, msg, now, fx),
            None => call.reject(480, CallCause::Unavailable, fx),
        }
        call
    }

    pub fn key(&self) -> &Key {
        &self.setup.key
    }

    pub fn legs(&self) -> &Legs {
        &self.setup.legs
    }

    /// The parties of a REFER from the peer of one of this call's legs
    /// (by Call-ID and tags), once answered, with a user at each end.
    pub fn referral_parties(
        &self,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
    ) -> Option<super::engine::ReferralParties> {
        self.answered?;
        let legs = &self.setup.legs;
        let callee = legs.callee.clone()?;
        let (transferor, transferee) = if self.caller.owns(call_id, from_tag, to_tag) {
            (legs.caller.clone(), callee)
        } else if self.callees.iter().any(|c| {
            c.dialog
                .as_ref()
                .is_some_and(|d| d.owns(call_id, from_tag, to_tag))
        }) {
            (callee, legs.caller.clone())
        } else {
            return None;
        };
        Some(super::engine::ReferralParties {
            call_id: legs.call_id.clone(),
            sip_call_id: legs.sip_call_id.clone(),
            transferor,
            transferee,
        })
    }

    /// The dialog `replaces` names, as the phone at the other end of this
    /// call knows it: a Replaces naming the caller's leg becomes one
    /// naming the answered callee leg, and the other way round (RFC 3891
    /// tags are the receiver's: `to-tag` its own, `from-tag` ours). `None`
    /// when `replaces` names no leg of this answered call.
    pub fn translate(&self, replaces: &transfer::Replaces) -> Option<transfer::Replaces> {
        let (winner, _) = self.answered?;
        let callee = self.callees.get(winner)?.dialog.as_ref()?;
        let names = |d: &LegDialog| replaces.names(&d.call_id, &d.local_tag, &d.remote_tag);
        let other = if names(&self.caller) {
            callee
        } else if names(callee) {
            &self.caller
        } else {
            return None;
        };
        Some(transfer::Replaces {
            call_id: other.call_id.clone(),
            to_tag: other.remote_tag.clone(),
            from_tag: other.local_tag.clone(),
        })
    }

    /// A transfer's new call replaces this call: its end is recorded as
    /// `transferred`.
    pub fn mark_transferred(&mut self) {
        self.transferred = true;
    }

    pub fn is_answered(&self) -> bool {
        self.answered.is_some() && self.ended.is_none()
    }

    pub fn branch_ids(&self) -> impl Iterator<Item = &str> {
        self.branch_ids.iter().map(|b| &**b)
    }

    pub fn call_ids(&self) -> impl Iterator<Item = &str> {
        self.call_ids.iter().map(|c| &**c)
    }

    /// Nothing left to do: the engine forgets the call.
    pub fn is_done(&self) -> bool {
        let caller_done = match self.caller_invite {
            CallerInvite::Terminated => true,
            CallerInvite::Confirmed => self.ended.is_some(),
            _ => false,
        };
        caller_done
            && (self.answered.is_none() || self.lingered)
            && self
                .callees
                .iter()
                .all(|c| c.state == InviteState::Terminated)
            && self.servers.is_empty()
            && self.clients.is_empty()
            && self.held.is_none()
    }

    /// The earliest armed timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        match &self.caller_invite {
            CallerInvite::Proceeding => {
                consider(Some(self.no_answer_at));
                consider(self.step_timeout_at);
            }
            CallerInvite::Accepted {
                retransmit_at,
                give_up_at,
                ..
            }
            | CallerInvite::Rejected {
                retransmit_at,
                give_up_at,
                ..
            } => {
                consider(*retransmit_at);
                consider(Some(*give_up_at));
            }
            CallerInvite::AckedFailure(t) => consider(Some(*t)),
            CallerInvite::Confirmed | CallerInvite::Rejecting(_) | CallerInvite::Terminated => {}
        }
        if self.ended.is_none() {
            consider(self.max_duration_at);
        } else if !self.lingered {
            consider(self.ended.map(|t| t + DIALOG_LINGER));
        }
        for c in &self.callees {
            if c.state == InviteState::Terminated {
                continue;
            }
            consider(c.retransmit_at);
            consider(c.timeout_at);
            if let CancelState::Sent { retransmit_at, .. } = &c.cancel {
                consider(*retransmit_at);
            }
        }
        for s in &self.servers {
            consider(s.retransmit_at);
            consider(s.forget_at);
        }
        for c in &self.clients {
            consider(c.retransmit_at);
            consider(Some(c.give_up_at));
        }
        next
    }

    // ------------------------------------------------------------ sending

    fn send(&mut self, flow: Flow, bytes: Bytes, fx: &mut Vec<Effect>) {
        match &mut self.held {
            // A copy of a message already held (a retransmission by our
            // timers, or a response repeated for the peer's retransmitted
            // request) adds nothing: the held one goes out once the
            // recording is durable, and the timers go on from there.
            Some(held) if held.contains(&(flow, bytes.clone())) => {}
            Some(held) => held.push((flow, bytes)),
            None => fx.push(Effect::Send(flow, bytes)),
        }
    }

    fn next_id(&mut self) -> u64 {
        self.seq += 1;
        let mut z = self.salt ^ self.seq.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A new branch for a request the call sends; `routed`: responses to
    /// it come back to this call.
    fn new_branch(&mut self, routed: bool, fx: &mut Vec<Effect>) -> Box<str> {
        let id: Box<str> = format!("{BRANCH_PREFIX}{:016x}{:x}", self.next_id(), self.seq).into();
        if routed {
            self.branch_ids.push(id.clone());
            fx.push(Effect::B2buaBranch(id.clone()));
        }
        id
    }

    fn leg_dialog(&self, leg: LegId) -> Option<&LegDialog> {
        match leg {
            LegId::Caller => Some(&self.caller),
            LegId::Callee(i) => self.callees.get(i).and_then(|c| c.dialog.as_ref()),
        }
    }

    fn leg_dialog_mut(&mut self, leg: LegId) -> Option<&mut LegDialog> {
        match leg {
            LegId::Caller => Some(&mut self.caller),
            LegId::Callee(i) => self.callees.get_mut(i).and_then(|c| c.dialog.as_mut()),
        }
    }

    /// The leg joined to `leg` while the call is up.
    fn other(&self, leg: LegId) -> Option<LegId> {
        let (winner, _) = self.answered?;
        if self.ended.is_some() {
            return None;
        }
        match leg {
            LegId::Caller => Some(LegId::Callee(winner)),
            LegId::Callee(i) if i == winner => Some(LegId::Caller),
            LegId::Callee(_) => None,
        }
    }

    /// Sends a new request in `leg`'s dialog as a client transaction.
    fn send_in_dialog(
        &mut self,
        leg: LegId,
        method: &str,
        carried: &[(String, String)],
        body: &[u8],
        now: Instant,
        fx: &mut Vec<Effect>,
    ) -> Option<Box<str>> {
        let branch = self.new_branch(true, fx);
        let advertised = self.setup.advertised.clone();
        let d = self.leg_dialog_mut(leg)?;
        let flow = d.flow;
        let via = via(&advertised, flow.transport, &branch);
        let contact =
            matches!(method, "INVITE" | "UPDATE").then(|| leg::own_contact(&advertised, flow));
        let (cseq, bytes) = d.request(method, &via, None, contact.as_deref(), carried, body);
        self.clients.push(ClientTx {
            leg,
            branch: branch.clone(),
            method: method.to_owned(),
            cseq,
            bytes: bytes.clone(),
            retransmit_at: (!flow.is_reliable()).then_some(now + T1),
            interval: T1,
            give_up_at: now + TIMER_64T1,
            done: None,
            offerless: method == "INVITE" && body.is_empty(),
            ack_waits: false,
        });
        self.send(flow, bytes, fx);
        Some(branch)
    }

    // ------------------------------------------------------ caller's INVITE

    /// The caller retransmitted its INVITE.
    pub fn on_invite_again(&mut self, fx: &mut Vec<Effect>) {
        let again = match self.caller_invite {
            CallerInvite::Proceeding | CallerInvite::Rejected { .. } => self.last_response.clone(),
            CallerInvite::AckedFailure(_) => self.last_response.clone(),
            // Our 2xx is retransmitted by its own timer.
            _ => None,
        };
        if let Some(b) = again {
            self.send(self.setup.upstream, b, fx);
        }
    }

    /// The caller acknowledged our non-2xx final response.
    pub fn on_ack(&mut self, now: Instant) {
        if matches!(self.caller_invite, CallerInvite::Rejected { .. }) {
            self.caller_invite = if self.setup.upstream.is_reliable() {
                CallerInvite::Terminated
            } else {
                CallerInvite::AckedFailure(now + T4)
            };
        }
    }

    /// The caller cancelled: every callee leg is cancelled and the caller
    /// gets 487.
    pub fn on_cancel(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if !matches!(self.caller_invite, CallerInvite::Proceeding) {
            return;
        }
        for i in 0..self.callees.len() {
            self.cancel_leg(i, now, fx);
        }
        self.reject(487, CallCause::OriginatorCancel, fx);
    }

    /// The recording the call waited for is durable: what waited goes out.
    pub fn on_recorded(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let held = self.held.take().unwrap_or_default();
        if let CallerInvite::Rejecting(bytes) = &self.caller_invite {
            let bytes = bytes.clone();
            fx.push(Effect::Send(self.setup.upstream, bytes.clone()));
            self.last_response = Some(bytes);
            self.caller_invite = CallerInvite::Rejected {
                retransmit_at: (!self.setup.upstream.is_reliable()).then_some(now + T1),
                interval: T1,
                give_up_at: now + TIMER_64T1,
            };
        }
        for (flow, bytes) in held {
            fx.push(Effect::Send(flow, bytes));
        }
    }

    /// Decides the caller's final non-2xx response; it is sent once the
    /// failure is durable.
    fn reject(&mut self, code: u16, cause: CallCause, fx: &mut Vec<Effect>) {
        super::call::call_attempt(code);
        self.step_timeout_at = None;
        let bytes = self.caller_response(code, response::reason(code), None);
        self.caller_invite = CallerInvite::Rejecting(bytes);
        fx.push(Effect::RecordDurable(self.setup.legs.fail(code, cause)));
        self.held.get_or_insert_with(Vec::new);
    }

    /// Our response to the caller's INVITE: our tag, and for 1xx/2xx our
    /// Contact, the caller's Record-Route and what `from` (the callee's
    /// response) says about the session.
    fn caller_response(&self, code: u16, reason: &str, from: Option<&Message<'_>>) -> Bytes {
        let Ok(invite) = Message::parse(&self.setup.invite) else {
            return Bytes::new();
        };
        let mut headers = Vec::new();
        let mut body: &[u8] = &[];
        if code < 300 {
            for rr in invite.list(Name::RecordRoute) {
                headers.push(("Record-Route".to_owned(), rr.to_owned()));
            }
            headers.push((
                "Contact".to_owned(),
                leg::own_contact(&self.setup.advertised, self.setup.upstream),
            ));
        }
        if let Some(m) = from {
            headers.extend(leg::carried(m));
            body = m.body;
        }
        headers.push(("Server".to_owned(), "Dialtone".to_owned()));
        leg::response(
            &invite,
            &self.setup.source,
            code,
            reason,
            &self.setup.to_tag,
            &headers,
            body,
        )
    }

    // ------------------------------------------------------------- forking

    fn start_step(&mut self, step: usize, msg: &Message<'_>, now: Instant, fx: &mut Vec<Effect>) {
        self.step = step;
        self.step_best = None;
        self.step_timeout_at = self.setup.steps[step].ring_timeout.map(|t| now + t);
        let (records, new_leg) = self.setup.legs.step_starts(&self.setup.steps[step]);
        if new_leg {
            // The user the call went to (or a group's members) has a leg
            // of its own to ring.
            self.ringing = false;
        }
        if !records.is_empty() {
            fx.push(Effect::Record(records));
        }
        let mut carried = leg::carried(msg);
        if let Some(r) = Retargeting::of(&self.setup.steps[step].diversions) {
            // Ours on top of the caller's Diversion entries (RFC 5806
            // s.4); our History-Info only when the caller sent none.
            let theirs = carried
                .iter()
                .position(|(name, _)| name.eq_ignore_ascii_case("Diversion"));
            carried.insert(
                theirs.unwrap_or(carried.len()),
                ("Diversion".to_owned(), r.diversion),
            );
            if !carried
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case("History-Info"))
            {
                carried.push(("History-Info".to_owned(), r.history_info));
            }
        }
        let from = msg.header(Name::From).unwrap_or("");
        let to = msg.header(Name::To).unwrap_or("");
        let targets = self.setup.steps[step].targets.clone();
        for target in targets {
            // Still ringing from the step before.
            if self
                .callees
                .iter()
                .any(|c| c.step == step && super::call::same_phone(&c.target, &target))
            {
                continue;
            }
            let branch = self.new_branch(true, fx);
            let (a, b) = (self.next_id(), self.next_id());
            let call_id = format!(
                "{CALL_ID_PREFIX}{:04x}-{a:016x}{b:016x}",
                self.setup.shard_key
            );
            let local_tag = format!("{:016x}", self.next_id());
            let local = leg::with_own_tag(from, &local_tag);
            let flow = target.flow;
            let via = via(&self.setup.advertised, target.flow.transport, &branch);
            let contact = leg::own_contact(&self.setup.advertised, flow);
            let invite = leg::request(&leg::Request {
                method: "INVITE",
                max_forwards: self.setup.max_forwards,
                ruri: &target.uri,
                via: &via,
                route: &[],
                from: &local,
                to,
                call_id: &call_id,
                cseq: 1,
                contact: Some(&contact),
                carried: &carried,
                body: msg.body,
            });
            self.call_ids.push(call_id.clone().into_boxed_str());
            fx.push(Effect::B2buaCallId(call_id.clone().into_boxed_str()));
            let reliable = target.flow.is_reliable();
            let leg = CalleeLeg {
                sent: SentInvite {
                    ruri: target.uri.clone(),
                    via,
                    from: local.clone(),
                    to: to.to_owned(),
                    call_id: call_id.clone(),
                    cseq: 1,
                },
                target,
                branch,
                call_id,
                local_tag,
                local,
                invite: invite.clone(),
                state: InviteState::Calling,
                retransmit_at: (!reliable).then_some(now + T1),
                interval: T1,
                timeout_at: Some(now + TIMER_64T1),
                cancel: CancelState::None,
                step,
                counts: true,
                dialog: None,
                ack: None,
                ack_waits_for_caller: false,
            };
            self.send(flow, invite, fx);
            self.callees.push(leg);
        }
    }

    fn invite_has_no_body(&self) -> bool {
        Message::parse(&self.setup.invite).is_ok_and(|m| m.body.is_empty())
    }

    /// ACKs callee leg `i`'s 2xx (with the caller's answer, when the
    /// INVITE had no offer).
    fn ack_callee(
        &mut self,
        i: usize,
        carried: &[(String, String)],
        body: &[u8],
        fx: &mut Vec<Effect>,
    ) {
        self.callees[i].ack_waits_for_caller = false;
        let branch = self.new_branch(false, fx);
        let advertised = self.setup.advertised.clone();
        let cseq = self.callees[i].sent.cseq;
        let Some(d) = self.callees[i].dialog.as_mut() else {
            return;
        };
        let v = via(&advertised, d.flow.transport, &branch);
        let (_, ack) = d.request("ACK", &v, Some(cseq), None, carried, body);
        let flow = d.flow;
        self.callees[i].ack = Some(ack.clone());
        self.send(flow, ack, fx);
    }

    fn cancel_leg(&mut self, i: usize, now: Instant, fx: &mut Vec<Effect>) {
        let c = &mut self.callees[i];
        if c.cancel != CancelState::None {
            return;
        }
        match c.state {
            InviteState::Calling => {
                c.cancel = CancelState::Pending;
                c.retransmit_at = None;
            }
            InviteState::Proceeding => {
                let bytes = forward::cancel_for(&c.sent);
                let reliable = c.target.flow.is_reliable();
                c.cancel = CancelState::Sent {
                    bytes: bytes.clone(),
                    retransmit_at: (!reliable).then_some(now + T1),
                    interval: T1,
                };
                c.timeout_at = Some(now + TIMER_64T1);
                let flow = c.flow();
                self.send(flow, bytes, fx);
            }
            InviteState::Completed | InviteState::Terminated => {}
        }
    }

    fn leg_result(&mut self, i: usize, code: u16) {
        let c = &self.callees[i];
        if !c.counts {
            return;
        }
        if c.step == self.step {
            self.step_best = Some(match self.step_best {
                Some(old) if !better(code, old) => old,
                _ => code,
            });
        }
        if self.best.is_none_or(|old| better(code, old)) {
            self.best = Some(code);
        }
    }

    fn maybe_finish_step(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if !matches!(self.caller_invite, CallerInvite::Proceeding) {
            return;
        }
        let step_done = self
            .callees
            .iter()
            .filter(|c| c.step == self.step)
            .all(CalleeLeg::is_final);
        if step_done {
            let outcome = StepOutcome::of_status(self.step_best.unwrap_or(408));
            self.after_step(outcome, now, fx);
        }
    }

    /// The current step rang for its ring timeout without an answer: a
    /// phone the next step rings too goes on ringing into it, the others
    /// are cancelled.
    fn end_step_unanswered(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let next = super::call::next_on_no_answer(&self.setup.steps, self.step);
        for i in 0..self.callees.len() {
            if self.callees[i].step == self.step && !self.callees[i].is_final() {
                let goes_on = next
                    .filter(|&n| super::call::rings(&self.setup.steps[n], &self.callees[i].target));
                if let Some(n) = goes_on {
                    if self.callees[i].cancel == CancelState::None {
                        self.callees[i].step = n;
                        continue;
                    }
                }
                self.cancel_leg(i, now, fx);
                self.callees[i].counts = false;
            }
        }
        if self.best.is_none_or(|old| better(480, old)) {
            self.best = Some(480);
        }
        self.after_step(StepOutcome::NoAnswer, now, fx);
    }

    fn after_step(&mut self, outcome: StepOutcome, now: Instant, fx: &mut Vec<Effect>) {
        let next = outcome
            .next_step(self.setup.steps[self.step].next)
            .filter(|&n| n > self.step)
            .and_then(|n| first_ringing_step(&self.setup.steps, n));
        if let Some(next) = next {
            let invite = self.setup.invite.clone();
            if let Ok(msg) = Message::parse(&invite) {
                let ended =
                    super::call::members_of_step_end(&mut self.setup.legs, outcome, self.step_best);
                if !ended.is_empty() {
                    fx.push(Effect::Record(ended));
                }
                self.start_step(next, &msg, now, fx);
                return;
            }
        }
        let code = match self.best.take() {
            Some(503) => 500,
            Some(code) => code,
            None => 408,
        };
        let cause = match outcome {
            StepOutcome::NoAnswer if code == 480 => CallCause::NoAnswer,
            _ => CallCause::for_status(code),
        };
        self.reject(code, cause, fx);
    }

    // ----------------------------------------------------------- responses

    /// A response to one of the call's requests (by its Via branch).
    pub fn on_response(&mut self, msg: &Message<'_>, now: Instant, fx: &mut Vec<Effect>) {
        let StartLine::Response { code, reason } = msg.start else {
            return;
        };
        let Some(branch) = msg.top_via().ok().and_then(|v| v.branch()) else {
            return;
        };
        let method = msg.cseq().map(|c| c.method).unwrap_or("");
        if let Some(i) = self.callees.iter().position(|c| &*c.branch == branch) {
            if method == "CANCEL" {
                if let CancelState::Sent { .. } = self.callees[i].cancel {
                    self.callees[i].cancel = CancelState::Answered;
                }
                return;
            }
            match code {
                100..=199 => self.on_provisional(msg, code, reason, i, now, fx),
                200..=299 => self.on_success(msg, i, now, fx),
                _ => self.on_failure(msg, code, i, now, fx),
            }
            self.maybe_finish_step(now, fx);
            return;
        }
        if let Some(t) = self.clients.iter().position(|c| &*c.branch == branch) {
            self.on_client_response(msg, code, reason, t, now, fx);
        }
    }

    fn on_provisional(
        &mut self,
        msg: &Message<'_>,
        code: u16,
        reason: &str,
        i: usize,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        {
            let c = &mut self.callees[i];
            if c.state == InviteState::Calling {
                c.state = InviteState::Proceeding;
                c.retransmit_at = None;
                c.timeout_at = None;
            }
        }
        if self.callees[i].cancel == CancelState::Pending {
            self.callees[i].cancel = CancelState::None;
            self.cancel_leg(i, now, fx);
        }
        if code > 100
            && matches!(self.caller_invite, CallerInvite::Proceeding)
            && self.callees[i].cancel == CancelState::None
        {
            let ours = self.caller_response(code, reason, Some(msg));
            self.send(self.setup.upstream, ours.clone(), fx);
            self.last_response = Some(ours);
            if code == 180 || code == 183 {
                if let Some(records) = super::call::alerting(
                    &mut self.setup.legs,
                    self.callees[i].target.member.as_ref(),
                    &mut self.ringing,
                    &mut self.caller_rang,
                ) {
                    fx.push(Effect::Record(records));
                }
            }
        }
    }

    fn on_success(&mut self, msg: &Message<'_>, i: usize, now: Instant, fx: &mut Vec<Effect>) {
        if self.callees[i].dialog.is_some() {
            // A retransmission of the 2xx: our ACK was lost (or still
            // waits for the caller's).
            if let Some(ack) = self.callees[i].ack.clone() {
                let flow = self.callees[i].flow();
                self.send(flow, ack, fx);
            }
            return;
        }
        let first =
            self.answered.is_none() && matches!(self.caller_invite, CallerInvite::Proceeding);
        let dialog = {
            let c = &self.callees[i];
            let mut route_set: Vec<String> =
                msg.list(Name::RecordRoute).map(str::to_owned).collect();
            // A UAC reverses the Record-Route (RFC 3261 s.12.1.2).
            route_set.reverse();
            LegDialog {
                call_id: c.call_id.clone(),
                local_tag: c.local_tag.clone(),
                remote_tag: msg.to().ok().and_then(|t| t.tag()).unwrap_or("").to_owned(),
                local: c.local.clone(),
                remote: msg.header(Name::To).unwrap_or("").to_owned(),
                remote_target: leg::contact_uri(msg).unwrap_or_else(|| c.target.uri.clone()),
                route_set,
                local_cseq: c.sent.cseq,
                flow: c.flow(),
            }
        };
        {
            let c = &mut self.callees[i];
            c.state = InviteState::Terminated;
            c.retransmit_at = None;
            c.timeout_at = None;
            if let CancelState::Sent { .. } = c.cancel {
                c.cancel = CancelState::Answered;
            }
            c.dialog = Some(dialog);
        }
        // Delayed offer: the caller's INVITE had no SDP, so the 2xx carries
        // the offer and the caller's ACK the answer, which the callee gets
        // in ours.
        let offerless = first && self.invite_has_no_body();
        if offerless {
            self.callees[i].ack_waits_for_caller = true;
        } else {
            self.ack_callee(i, &[], &[], fx);
        }
        if !first {
            // Another leg answered first, or the caller already got its
            // final response: this dialog is ended at once (RFC 3261
            // s.13.2.2.4); nothing is recorded for it.
            self.send_in_dialog(LegId::Callee(i), "BYE", &[], &[], now, fx);
            return;
        }
        super::call::call_attempt(200);
        self.answered = Some((i, now));
        self.max_duration_at = Some(now + self.setup.max_call_duration);
        let ok = self.caller_response(200, "OK", Some(msg));
        self.send(self.setup.upstream, ok.clone(), fx);
        self.last_response = Some(ok);
        self.caller_invite = CallerInvite::Accepted {
            retransmit_at: (!self.setup.upstream.is_reliable()).then_some(now + T1),
            interval: T1,
            give_up_at: now + TIMER_64T1,
        };
        self.step_timeout_at = None;
        let member = self.callees[i].target.member.clone();
        let others = self.setup.legs.answered_by(member.as_ref());
        if !others.is_empty() {
            fx.push(Effect::Record(others));
        }
        let contact = self
            .setup
            .legs
            .answered_contact(&self.callees[i].target.uri);
        fx.push(Effect::Record(self.setup.legs.records(|_| {
            CallStep::Answer {
                contact: contact.clone(),
            }
        })));
        for j in 0..self.callees.len() {
            if j != i {
                self.cancel_leg(j, now, fx);
            }
        }
    }

    fn on_failure(
        &mut self,
        msg: &Message<'_>,
        code: u16,
        i: usize,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let to = msg.header(Name::To).unwrap_or("");
        let ack = forward::ack_for(&self.callees[i].sent, to);
        let flow = self.callees[i].flow();
        self.send(flow, ack, fx);
        if self.callees[i].is_final() {
            return;
        }
        {
            let c = &mut self.callees[i];
            c.retransmit_at = None;
            if let CancelState::Sent { .. } = c.cancel {
                c.cancel = CancelState::Answered;
            }
            if c.target.flow.is_reliable() {
                c.state = InviteState::Terminated;
                c.timeout_at = None;
            } else {
                c.state = InviteState::Completed;
                c.timeout_at = Some(now + TIMER_64T1);
            }
        }
        self.leg_result(i, code);
        if code >= 600 {
            for j in 0..self.callees.len() {
                if j != i {
                    self.cancel_leg(j, now, fx);
                }
            }
        }
    }

    fn on_client_response(
        &mut self,
        msg: &Message<'_>,
        code: u16,
        reason: &str,
        t: usize,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let leg = self.clients[t].leg;
        let Some(flow) = self.leg_dialog(leg).map(|d| d.flow) else {
            return;
        };
        let is_invite = self.clients[t].method == "INVITE";
        if code < 200 {
            if is_invite {
                self.clients[t].retransmit_at = None;
            }
            return;
        }
        if let Some(ack) = &self.clients[t].done {
            if let Some(ack) = ack.clone() {
                self.send(flow, ack, fx);
            }
            return;
        }
        let branch = self.clients[t].branch.clone();
        let cseq = self.clients[t].cseq;
        let relays = self
            .servers
            .iter()
            .any(|s| s.relayed_as.as_deref() == Some(&*branch) && s.response.is_none());
        if is_invite && code < 300 && self.clients[t].offerless && relays {
            // Its 2xx carries an offer: our ACK waits for the answer in
            // the ACK of the request we relay (`ack_relayed`).
            if let Some(target) = leg::contact_uri(msg) {
                if let Some(d) = self.leg_dialog_mut(leg) {
                    d.remote_target = target;
                }
            }
            let c = &mut self.clients[t];
            c.done = Some(None);
            c.ack_waits = true;
            c.retransmit_at = None;
            c.give_up_at = now + TIMER_64T1;
        } else if is_invite {
            let ack = if code < 300 {
                if let Some(target) = leg::contact_uri(msg) {
                    if let Some(d) = self.leg_dialog_mut(leg) {
                        d.remote_target = target;
                    }
                }
                self.dialog_ack(leg, cseq, &[], &[], fx)
            } else {
                // The ACK of a non-2xx is part of the transaction.
                let sent = self.leg_dialog(leg).map(|d| SentInvite {
                    ruri: d.remote_target.clone(),
                    via: via(&self.setup.advertised, d.flow.transport, &branch),
                    from: d.local.clone(),
                    to: d.remote.clone(),
                    call_id: d.call_id.clone(),
                    cseq,
                });
                sent.map(|s| forward::ack_for(&s, msg.header(Name::To).unwrap_or("")))
            };
            if let Some(ack) = &ack {
                self.send(flow, ack.clone(), fx);
            }
            if flow.is_reliable() {
                self.clients.remove(t);
            } else {
                // Absorb (and ACK again) retransmissions of the final
                // response.
                let c = &mut self.clients[t];
                c.done = Some(ack);
                c.retransmit_at = None;
                c.give_up_at = now + TIMER_64T1;
            }
        } else {
            self.clients.remove(t);
        }
        if let Some(s) = self
            .servers
            .iter()
            .position(|s| s.relayed_as.as_deref() == Some(&*branch) && s.response.is_none())
        {
            let contact = is_invite && (200..300).contains(&code);
            let mut headers = leg::carried(msg);
            if contact {
                let peer = self.servers[s].leg;
                if let Some(f) = self.leg_dialog(peer).map(|d| d.flow) {
                    headers.push((
                        "Contact".to_owned(),
                        leg::own_contact(&self.setup.advertised, f),
                    ));
                }
            }
            self.respond(s, code, reason, &headers, msg.body, now, fx);
        }
    }

    // ----------------------------------------------- requests in a dialog

    /// A request inside one of the call's dialogs (it has a To tag).
    /// Answered here; relayed to the other leg when the call is up.
    pub fn on_request(
        &mut self,
        msg: &Message<'_>,
        source: Source,
        now: Instant,
        fx: &mut Vec<Effect>,
        refer_to: Option<String>,
    ) -> Option<(u16, &'static str)> {
        let StartLine::Request {
            method_text: method,
            ..
        } = msg.start
        else {
            return None;
        };
        let call_id = msg.call_id().unwrap_or("");
        let from_tag = msg.from().ok().and_then(|f| f.tag()).unwrap_or("");
        let to_tag = msg.to().ok().and_then(|t| t.tag()).unwrap_or("");
        let cseq = msg.cseq().map(|c| c.seq).unwrap_or(0);
        let leg = if self.caller.owns(call_id, from_tag, to_tag) {
            Some(LegId::Caller)
        } else {
            self.callees
                .iter()
                .position(|c| {
                    c.dialog
                        .as_ref()
                        .is_some_and(|d| d.owns(call_id, from_tag, to_tag))
                })
                .map(LegId::Callee)
        };
        let Some(leg) = leg else {
            return (method != "ACK").then_some((481, "Call/Transaction Does Not Exist"));
        };
        if method == "ACK" {
            self.on_dialog_ack(leg, msg, now, fx);
            return None;
        }
        // A retransmission: our response again.
        if let Some(s) = self
            .servers
            .iter()
            .position(|s| s.leg == leg && s.cseq == cseq && s.method == method)
        {
            if let Some(r) = self.servers[s].response.clone() {
                let to = self.servers[s].reply_to;
                self.send(to, r, fx);
            }
            return None;
        }
        let reply_to = {
            let flow = self.leg_dialog(leg).map_or(self.setup.upstream, |d| d.flow);
            let dest = if source.reliable {
                source.addr
            } else {
                msg.top_via()
                    .map_or(source.addr, |v| response::udp_destination(&v, source.addr))
            };
            // The leg's connection only if the request came from its peer
            // address; otherwise the transport finds one to `dest`.
            Flow {
                remote: dest,
                connection: flow.connection.filter(|_| dest == flow.remote),
                ..flow
            }
        };
        self.servers.push(ServerTx {
            leg,
            cseq,
            method: method.to_owned(),
            request: skeleton(msg),
            source,
            reply_to,
            response: None,
            relayed_as: None,
            retransmit_at: None,
            interval: T1,
            forget_at: None,
        });
        let s = self.servers.len() - 1;
        let Some(other) = self.other(leg) else {
            // The call is over (or this leg lost the race): a BYE crossing
            // ours is answered 200, anything else 481.
            if method == "BYE" {
                self.respond(s, 200, "OK", &[], &[], now, fx);
            } else {
                self.respond(s, 481, response::reason(481), &[], &[], now, fx);
            }
            return None;
        };
        match method {
            "BYE" => {
                let side = match leg {
                    LegId::Caller => HangupSide::Caller,
                    LegId::Callee(_) => HangupSide::Callee,
                };
                // The peer's Reason, if any, goes on to the other side.
                let reason = leg::carried(msg)
                    .into_iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case("Reason"))
                    .collect();
                let (cause, side) = if self.transferred {
                    (CallCause::Transferred, side)
                } else if side == HangupSide::Callee
                    && self.setup.legs.app.is_some()
                    && super::feature::ends_for_media_timeout(msg)
                {
                    // The node's application hung up because the caller's
                    // media stopped (ADR 0024).
                    (CallCause::Timeout, HangupSide::System)
                } else {
                    (CallCause::NormalClearing, side)
                };
                self.end_call(cause, side, Some(leg), reason, now, fx);
                self.respond(s, 200, "OK", &[], &[], now, fx);
            }
            "INVITE" if self.invite_pending(s) => {
                self.respond(s, 491, response::reason(491), &[], &[], now, fx);
            }
            _ => {
                if method == "NOTIFY" && transfer::reports_success(msg) {
                    self.transferred = true;
                }
                if method == "INVITE" || method == "UPDATE" {
                    if let Some(target) = leg::contact_uri(msg) {
                        if let Some(d) = self.leg_dialog_mut(leg) {
                            d.remote_target = target;
                        }
                    }
                }
                if method == "INVITE" {
                    // Stops the peer's retransmissions while the other
                    // side decides.
                    let trying = leg::response(msg, &source, 100, "Trying", "", &[], &[]);
                    self.send(reply_to, trying, fx);
                }
                let mut carried = leg::carried(msg);
                if let Some(refer_to) = refer_to {
                    // A REFER whose Replaces the node translated for the
                    // other leg's phone.
                    for (name, value) in carried.iter_mut() {
                        if name.eq_ignore_ascii_case("Refer-To") || name.eq_ignore_ascii_case("r") {
                            value.clone_from(&refer_to);
                        }
                    }
                }
                match self.send_in_dialog(other, method, &carried, msg.body, now, fx) {
                    Some(branch) => self.servers[s].relayed_as = Some(branch),
                    // Not reachable while joined (both legs have a dialog);
                    // answered rather than left open.
                    None => self.respond(s, 481, response::reason(481), &[], &[], now, fx),
                }
            }
        }
        None
    }

    /// Is an INVITE transaction other than server transaction `s` still
    /// open on either leg (a re-INVITE now would be glare: 491)?
    fn invite_pending(&self, s: usize) -> bool {
        // Open: not answered yet, or a 2xx not acknowledged yet (its ACK
        // may carry the answer). A non-2xx waiting for its ACK is over.
        let server = self.servers.iter().enumerate().any(|(j, t)| {
            j != s
                && t.method == "INVITE"
                && match &t.response {
                    None => true,
                    Some(r) => t.retransmit_at.is_some() && r.starts_with(b"SIP/2.0 2"),
                }
        });
        let client = self
            .clients
            .iter()
            .any(|c| c.method == "INVITE" && c.done.is_none());
        let unacked = matches!(self.caller_invite, CallerInvite::Accepted { .. });
        server || client || unacked
    }

    /// The ACK of a 2xx to our request `cseq` in `leg`'s dialog.
    fn dialog_ack(
        &mut self,
        leg: LegId,
        cseq: u32,
        carried: &[(String, String)],
        body: &[u8],
        fx: &mut Vec<Effect>,
    ) -> Option<Bytes> {
        let branch = self.new_branch(false, fx);
        let advertised = self.setup.advertised.clone();
        self.leg_dialog_mut(leg).map(|d| {
            let v = via(&advertised, d.flow.transport, &branch);
            d.request("ACK", &v, Some(cseq), None, carried, body).1
        })
    }

    /// Sends the ACK that client transaction `c` (an offerless INVITE we
    /// relayed) waited for, with the answer its requester's ACK carried.
    fn ack_relayed(
        &mut self,
        c: usize,
        carried: &[(String, String)],
        body: &[u8],
        fx: &mut Vec<Effect>,
    ) {
        let (leg, cseq) = (self.clients[c].leg, self.clients[c].cseq);
        self.clients[c].ack_waits = false;
        let ack = self.dialog_ack(leg, cseq, carried, body, fx);
        if let (Some(ack), Some(flow)) = (&ack, self.leg_dialog(leg).map(|d| d.flow)) {
            self.send(flow, ack.clone(), fx);
        }
        self.clients[c].done = Some(ack);
    }

    /// The BYE to the caller that waited for its ACK of our 2xx.
    fn bye_caller_after_acknowledgement(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if std::mem::take(&mut self.bye_caller_after_ack) {
            let headers = self.bye_headers.clone();
            self.send_in_dialog(LegId::Caller, "BYE", &headers, &[], now, fx);
        }
    }

    fn on_dialog_ack(&mut self, leg: LegId, msg: &Message<'_>, now: Instant, fx: &mut Vec<Effect>) {
        let cseq = msg.cseq().map(|c| c.seq).unwrap_or(0);
        if leg == LegId::Caller && cseq == self.invite_cseq {
            if let CallerInvite::Accepted { .. } = self.caller_invite {
                self.caller_invite = CallerInvite::Confirmed;
                if let Some((winner, _)) = self.answered {
                    if self.callees[winner].ack_waits_for_caller {
                        self.ack_callee(winner, &leg::carried(msg), msg.body, fx);
                    }
                }
                self.bye_caller_after_acknowledgement(now, fx);
            }
        }
        if let Some(s) = self
            .servers
            .iter()
            .position(|s| s.leg == leg && s.cseq == cseq && s.method == "INVITE")
        {
            // An offerless re-INVITE relayed: its 2xx carried the offer,
            // this ACK the answer, for the other side's ACK.
            let relayed = self.servers[s].relayed_as.clone();
            if let Some(c) = self
                .clients
                .iter()
                .position(|c| c.ack_waits && Some(&c.branch) == relayed.as_ref())
            {
                self.ack_relayed(c, &leg::carried(msg), msg.body, fx);
            }
            let t = &mut self.servers[s];
            t.retransmit_at = None;
            t.forget_at = Some(now);
            if t.response.is_some() {
                self.servers.remove(s);
            }
        }
    }

    /// Answers server transaction `s`.
    #[allow(clippy::too_many_arguments)]
    fn respond(
        &mut self,
        s: usize,
        code: u16,
        reason: &str,
        headers: &[(String, String)],
        body: &[u8],
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let (bytes, to, invite) = {
            let t = &self.servers[s];
            let Ok(req) = Message::parse(&t.request) else {
                return;
            };
            let bytes = leg::response(&req, &t.source, code, reason, "", headers, body);
            (bytes, t.reply_to, t.method == "INVITE")
        };
        let reliable = to.is_reliable();
        let t = &mut self.servers[s];
        t.response = Some(bytes.clone());
        if invite {
            // Retransmitted until the ACK (2xx: s.13.3.1.4; others: Timer G).
            t.retransmit_at = (!reliable).then_some(now + T1);
            t.forget_at = Some(now + TIMER_64T1);
        } else if reliable {
            // No retransmission to absorb (Timer J is zero).
            self.servers.remove(s);
        } else {
            t.forget_at = Some(now + TIMER_64T1);
        }
        self.send(to, bytes, fx);
    }

    /// Ends an answered call: its end is recorded durably, then every
    /// live leg but `except` (whose peer sent the BYE) gets a BYE.
    fn end_call(
        &mut self,
        cause: CallCause,
        side: HangupSide,
        except: Option<LegId>,
        bye_headers: Vec<(String, String)>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let Some((winner, answered_at)) = self.answered else {
            return;
        };
        if self.ended.is_some() {
            return;
        }
        metrics::histogram!("dialtone_sip_call_duration_seconds")
            .record(now.duration_since(answered_at).as_secs_f64());
        self.ended = Some(now);
        self.bye_headers = bye_headers;
        if self.callees[winner].ack_waits_for_caller {
            // No answer will come from the caller now: the callee's 2xx is
            // acknowledged as it is, then the BYE follows.
            self.ack_callee(winner, &[], &[], fx);
        }
        fx.push(Effect::RecordDurable(self.setup.legs.end(cause, side)));
        self.held.get_or_insert_with(Vec::new);
        for leg in [LegId::Caller, LegId::Callee(winner)] {
            if Some(leg) == except {
                continue;
            }
            if leg == LegId::Caller && matches!(self.caller_invite, CallerInvite::Accepted { .. }) {
                self.bye_caller_after_ack = true;
                continue;
            }
            let headers = self.bye_headers.clone();
            self.send_in_dialog(leg, "BYE", &headers, &[], now, fx);
        }
    }

    // --------------------------------------------------------------- timers

    pub fn on_timer(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if matches!(self.caller_invite, CallerInvite::Proceeding) {
            if now >= self.no_answer_at {
                for i in 0..self.callees.len() {
                    self.cancel_leg(i, now, fx);
                }
                self.reject(480, CallCause::NoAnswer, fx);
            } else if self.step_timeout_at.is_some_and(|t| now >= t) {
                self.step_timeout_at = None;
                self.end_step_unanswered(now, fx);
            }
        }
        self.caller_invite_timers(now, fx);
        if self.ended.is_none() && self.max_duration_at.is_some_and(|t| now >= t) {
            self.max_duration_at = None;
            let reason = reason_header("Maximum call duration");
            self.end_call(
                CallCause::Timeout,
                HangupSide::System,
                None,
                reason,
                now,
                fx,
            );
        }
        if self
            .ended
            .is_some_and(|t| !self.lingered && now >= t + DIALOG_LINGER)
        {
            self.lingered = true;
        }
        self.callee_timers(now, fx);
        self.dialog_timers(now, fx);
        self.maybe_finish_step(now, fx);
    }

    fn caller_invite_timers(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let upstream = self.setup.upstream;
        let mut resend = false;
        let mut no_ack = false;
        match &mut self.caller_invite {
            CallerInvite::Accepted {
                retransmit_at,
                interval,
                give_up_at,
            } => {
                if now >= *give_up_at {
                    no_ack = true;
                } else if retransmit_at.is_some_and(|t| now >= t) {
                    *interval = (*interval * 2).min(T2);
                    *retransmit_at = Some(now + *interval);
                    resend = true;
                }
            }
            CallerInvite::Rejected {
                retransmit_at,
                interval,
                give_up_at,
            } => {
                if now >= *give_up_at {
                    self.caller_invite = CallerInvite::Terminated;
                } else if retransmit_at.is_some_and(|t| now >= t) {
                    *interval = (*interval * 2).min(T2);
                    *retransmit_at = Some(now + *interval);
                    resend = true;
                }
            }
            CallerInvite::AckedFailure(until) if now >= *until => {
                self.caller_invite = CallerInvite::Terminated;
            }
            _ => {}
        }
        if resend {
            if let Some(b) = self.last_response.clone() {
                self.send(upstream, b, fx);
            }
        }
        if no_ack {
            // The caller never acknowledged our 2xx: the session is ended
            // (RFC 3261 s.13.3.1.4).
            self.caller_invite = CallerInvite::Confirmed;
            if self.ended.is_some() {
                self.bye_caller_after_acknowledgement(now, fx);
            } else {
                let reason = reason_header("No ACK");
                self.end_call(
                    CallCause::Timeout,
                    HangupSide::System,
                    None,
                    reason,
                    now,
                    fx,
                );
            }
        }
    }

    fn callee_timers(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        for i in 0..self.callees.len() {
            let mut sends = Vec::new();
            let mut timed_out = false;
            let flow = self.callees[i].flow();
            {
                let c = &mut self.callees[i];
                if c.state == InviteState::Terminated {
                    continue;
                }
                if c.retransmit_at.is_some_and(|t| now >= t) {
                    c.interval *= 2;
                    c.retransmit_at = Some(now + c.interval);
                    sends.push(c.invite.clone());
                }
                if let CancelState::Sent {
                    bytes,
                    retransmit_at,
                    interval,
                } = &mut c.cancel
                {
                    if retransmit_at.is_some_and(|t| now >= t) {
                        *interval = (*interval * 2).min(T2);
                        *retransmit_at = Some(now + *interval);
                        sends.push(bytes.clone());
                    }
                }
                if c.timeout_at.is_some_and(|t| now >= t) {
                    timed_out = c.state == InviteState::Calling && c.counts;
                    c.state = InviteState::Terminated;
                    c.retransmit_at = None;
                    c.timeout_at = None;
                    if let CancelState::Sent { .. } = c.cancel {
                        c.cancel = CancelState::Answered;
                    }
                }
            }
            for b in sends {
                self.send(flow, b, fx);
            }
            if timed_out {
                self.leg_result(i, 408);
            }
        }
    }

    fn dialog_timers(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let mut i = 0;
        while i < self.clients.len() {
            if now >= self.clients[i].give_up_at {
                if self.clients[i].ack_waits {
                    // The requester never acknowledged: ACK without answer.
                    self.ack_relayed(i, &[], &[], fx);
                }
                let c = self.clients.remove(i);
                if c.done.is_none() {
                    // Timer B / F: the other side gets a 408 for what we
                    // relayed.
                    if let Some(s) = self.servers.iter().position(|s| {
                        s.relayed_as.as_deref() == Some(&*c.branch) && s.response.is_none()
                    }) {
                        self.respond(s, 408, response::reason(408), &[], &[], now, fx);
                    }
                }
                continue;
            }
            let c = &mut self.clients[i];
            if c.retransmit_at.is_some_and(|t| now >= t) {
                c.interval = if c.method == "INVITE" {
                    c.interval * 2
                } else {
                    (c.interval * 2).min(T2)
                };
                c.retransmit_at = Some(now + c.interval);
                let (bytes, leg) = (c.bytes.clone(), c.leg);
                if let Some(flow) = self.leg_dialog(leg).map(|d| d.flow) {
                    self.send(flow, bytes, fx);
                }
            }
            i += 1;
        }
        let mut i = 0;
        while i < self.servers.len() {
            let s = &mut self.servers[i];
            if s.forget_at.is_some_and(|t| now >= t) {
                self.servers.remove(i);
                continue;
            }
            if s.retransmit_at.is_some_and(|t| now >= t) {
                s.interval = (s.interval * 2).min(T2);
                s.retransmit_at = Some(now + s.interval);
                if let Some(r) = s.response.clone() {
                    let to = s.reply_to;
                    self.send(to, r, fx);
                }
            }
            i += 1;
        }
    }
}

/// A Reason header (RFC 3326) for a BYE the node decides itself.
fn reason_header(text: &str) -> Vec<(String, String)> {
    vec![(
        "Reason".to_owned(),
        format!("SIP;cause=408;text=\"{text}\""),
    )]
}

/// What a response to `msg` is built from (start line, Via, From, To,
/// Call-ID, CSeq): kept by a server transaction that answers later.
fn skeleton(msg: &Message<'_>) -> Bytes {
    let StartLine::Request {
        method_text, uri, ..
    } = msg.start
    else {
        return Bytes::new();
    };
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(method_text.as_bytes());
    out.push(b' ');
    out.extend_from_slice(uri.as_bytes());
    out.extend_from_slice(b" SIP/2.0\r\n");
    for h in &msg.headers {
        if matches!(
            h.name,
            Name::Via | Name::From | Name::To | Name::CallId | Name::CSeq
        ) {
            out.extend_from_slice(h.raw_name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::backend::{RoutePlan, Transport};
    use crate::proxy::engine::{shard_key, Action, CallInput, CallMode, Engine, NewCall};
    use crate::proxy::ProxySettings;

    const CALLER: &str = "10.0.0.1:5062";
    const SDP: &str = "v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\n";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn engine() -> Engine {
        Engine::new(
            ProxySettings {
                advertised: crate::proxy::Advertised::new("192.0.2.1:5060"),
                local: vec![addr("192.0.2.1:5060")],
                no_answer_timeout: Duration::from_secs(60),
                max_call_duration: Duration::from_secs(3600),
                call_mode: CallMode::B2bua,
            },
            7,
        )
    }

    fn invite() -> String {
        format!(
            "INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP {CALLER};branch=z9hG4bKcaller1;rport\r\n\
Max-Forwards: 70\r\n\
From: \"Alice\" <sip:alice@example.com>;tag=alicetag\r\n\
To: <sip:bob@example.com>\r\n\
Call-ID: caller-call-id\r\n\
CSeq: 10 INVITE\r\n\
Contact: <sip:alice@{CALLER}>\r\n\
P-Asserted-Identity: <sip:alice@example.com>\r\n\
Supported: replaces, 100rel\r\n\
Content-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{SDP}",
            SDP.len()
        )
    }

    fn target(port: u16) -> RouteTarget {
        RouteTarget {
            uri: format!("sip:bob@10.0.0.{port}:5070"),
            flow: Flow::new(Transport::Udp, addr(&format!("10.0.0.{port}:5070"))),
            member: None,
        }
    }

    fn legs() -> Legs {
        Legs {
            call_id: "legs-1".into(),
            sip_call_id: "caller-call-id".into(),
            caller: ("example.com".into(), "alice".into()),
            callee: Some(("example.com".into(), "bob".into())),
            dialled: "bob@example.com".into(),
            group: None,
            members: Vec::new(),
            app: None,
        }
    }

    struct Out {
        sends: Vec<(Flow, String)>,
        records: Vec<(Vec<CallStep>, Option<crate::proxy::RecordToken>)>,
    }

    fn drain(e: &mut Engine) -> Out {
        let mut out = Out {
            sends: Vec::new(),
            records: Vec::new(),
        };
        while let Some(a) = e.poll_action() {
            match a {
                Action::Send(flow, bytes) => out
                    .sends
                    .push((flow, String::from_utf8_lossy(&bytes).into_owned())),
                Action::Record { records, done, .. } => out
                    .records
                    .push((records.into_iter().map(|r| r.step).collect(), done)),
            }
        }
        out
    }

    fn start(e: &mut Engine, targets: Vec<RouteTarget>, now: Instant) -> Out {
        start_with(e, targets, &invite(), now)
    }

    fn start_with(e: &mut Engine, targets: Vec<RouteTarget>, raw: &str, now: Instant) -> Out {
        start_on(e, targets, raw, Transport::Udp, now)
    }

    fn start_on(
        e: &mut Engine,
        targets: Vec<RouteTarget>,
        raw: &str,
        transport: Transport,
        now: Instant,
    ) -> Out {
        let raw = raw.to_owned();
        let msg = Message::parse(raw.as_bytes()).unwrap();
        e.start_call(
            NewCall {
                msg: &msg,
                raw: Bytes::from(raw.clone()),
                key: Key::from_request(&msg).unwrap(),
                source: Source {
                    addr: addr(CALLER),
                    reliable: transport.is_reliable(),
                },
                upstream: Flow::new(transport, addr(CALLER)),
                legs: legs(),
                plan: RoutePlan::parallel(targets),
                pop_routes: 0,
                max_forwards: 69,
            },
            now,
        );
        drain(e)
    }

    /// The callee's response to request `req` (the node's), with `tag`.
    fn answer(req: &str, code: u16, tag: &str, body: &str) -> String {
        let msg = Message::parse(req.as_bytes()).unwrap();
        let mut headers = vec![("Contact".to_owned(), "<sip:bob@10.0.0.2:5070>".to_owned())];
        if !body.is_empty() {
            headers.push(("Content-Type".to_owned(), "application/sdp".to_owned()));
        }
        let src = Source {
            addr: addr("192.0.2.1:5060"),
            reliable: false,
        };
        let b = leg::response(
            &msg,
            &src,
            code,
            response::reason(code),
            tag,
            &headers,
            body.as_bytes(),
        );
        String::from_utf8_lossy(&b).into_owned()
    }

    fn respond_to(
        e: &mut Engine,
        req: &str,
        code: u16,
        tag: &str,
        body: &str,
        now: Instant,
    ) -> Out {
        let r = answer(req, code, tag, body);
        assert!(e.on_response(&Message::parse(r.as_bytes()).unwrap(), now));
        drain(e)
    }

    fn header<'a>(msg: &'a str, name: &str) -> &'a str {
        msg.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or("")
    }

    fn in_dialog(e: &mut Engine, req: &str, from: &str, now: Instant) -> Out {
        let msg = Message::parse(req.as_bytes()).unwrap();
        let refusal = e.in_dialog(
            &msg,
            Source {
                addr: addr(from),
                reliable: false,
            },
            0,
            now,
        );
        assert_eq!(refusal, None);
        drain(e)
    }

    /// Sets up a call answered by one callee; returns the INVITE the callee
    /// got and the caller's 200.
    fn answered(e: &mut Engine, now: Instant) -> (String, String) {
        let out = start(e, vec![target(2)], now);
        let inv = out.sends[0].1.clone();
        respond_to(e, &inv, 180, "bobtag", "", now);
        let out = respond_to(e, &inv, 200, "bobtag", SDP, now);
        let ok = out
            .sends
            .iter()
            .find(|(f, _)| f.remote == addr(CALLER))
            .unwrap()
            .1
            .clone();
        (inv, ok)
    }

    fn caller_request(method: &str, our_tag: &str, cseq: u32, branch: &str) -> String {
        format!(
            "{method} sip:192.0.2.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP {CALLER};branch={branch};rport\r\n\
Max-Forwards: 70\r\n\
From: \"Alice\" <sip:alice@example.com>;tag=alicetag\r\n\
To: <sip:bob@example.com>;tag={our_tag}\r\n\
Call-ID: caller-call-id\r\n\
CSeq: {cseq} {method}\r\n\
Contact: <sip:alice@{CALLER}>\r\n\
Content-Length: 0\r\n\r\n"
        )
    }

    /// `req` (written with an empty body) with an SDP body.
    fn with_body(req: &str, body: &str) -> String {
        req.replace(
            "Content-Length: 0\r\n\r\n",
            &format!(
                "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    }

    fn tag_of(header_value: &str) -> &str {
        header_value.split(";tag=").nth(1).unwrap_or("")
    }

    #[test]
    fn a_replaces_is_translated_to_the_other_leg_of_the_call_it_names() {
        let mut e = engine();
        let now = Instant::now();
        let (inv, ok) = answered(&mut e, now);
        let our_caller_tag = tag_of(header(&ok, "To")).to_owned();
        let callee_call_id = header(&inv, "Call-ID").to_owned();
        let our_callee_tag = tag_of(header(&inv, "From")).to_owned();
        let replaces = |call_id: &str, to: &str, from: &str| transfer::Replaces {
            call_id: call_id.into(),
            to_tag: to.into(),
            from_tag: from.into(),
        };
        // As the caller (alice) knows the dialog: to its callee's leg, with
        // bob's tag as the receiver's own.
        assert_eq!(
            e.translate_replaces(&replaces("caller-call-id", &our_caller_tag, "alicetag")),
            Some(replaces(&callee_call_id, "bobtag", &our_callee_tag))
        );
        // As bob knows it: to alice's leg; tags in either order.
        assert_eq!(
            e.translate_replaces(&replaces(&callee_call_id, "bobtag", &our_callee_tag)),
            Some(replaces("caller-call-id", "alicetag", &our_caller_tag))
        );
        // Wrong tags, or a call the node does not have: nothing.
        assert_eq!(
            e.translate_replaces(&replaces("caller-call-id", "x", "alicetag")),
            None
        );
        assert_eq!(e.translate_replaces(&replaces("other", "a", "b")), None);

        // A REFER relayed with a rewritten Refer-To carries it, and
        // Referred-By as it came.
        let refer = caller_request("REFER", &our_caller_tag, 11, "z9hG4bKrefer1").replace(
            "Content-Length: 0",
            "Refer-To: <sip:carol@example.com?Replaces=a%3Bto-tag%3Db%3Bfrom-tag%3Dc>\r\n\
Referred-By: <sip:alice@example.com>\r\nContent-Length: 0",
        );
        let msg = Message::parse(refer.as_bytes()).unwrap();
        let src = Source {
            addr: addr(CALLER),
            reliable: false,
        };
        let rewritten = "<sip:carol@example.com?Replaces=y%3Bto-tag%3Dz%3Bfrom-tag%3Dw>";
        assert_eq!(
            e.in_dialog_with(&msg, src, 0, now, Some(rewritten.to_owned())),
            None
        );
        let out = drain(&mut e);
        let relayed = &out
            .sends
            .iter()
            .find(|(_, m)| m.starts_with("REFER "))
            .unwrap()
            .1;
        assert_eq!(header(relayed, "Refer-To"), rewritten, "{relayed}");
        assert_eq!(header(relayed, "Referred-By"), "<sip:alice@example.com>");
    }

    #[test]
    fn the_callee_leg_is_a_new_dialog_that_carries_the_session() {
        let now = Instant::now();
        let mut e = engine();
        let out = start(&mut e, vec![target(2)], now);
        assert_eq!(out.records[0].0.len(), 2, "Start for both users");
        let [(flow, inv)] = &out.sends[..] else {
            panic!("{:?}", out.sends)
        };
        assert_eq!(flow.remote, addr("10.0.0.2:5070"));
        assert!(inv.starts_with("INVITE sip:bob@10.0.0.2:5070 SIP/2.0\r\n"));
        let call_id = header(inv, "Call-ID");
        assert!(call_id.starts_with(CALL_ID_PREFIX), "{inv}");
        assert_eq!(shard_key(call_id) % 16, shard_key("caller-call-id") % 16);
        for hidden in ["caller-call-id", "alicetag", "z9hG4bKcaller1", "10.0.0.1"] {
            assert!(!inv.contains(hidden), "{hidden} leaked: {inv}");
        }
        assert_eq!(header(inv, "Contact"), "<sip:192.0.2.1:5060>");
        assert_eq!(header(inv, "CSeq"), "1 INVITE");
        assert_eq!(
            header(inv, "Max-Forwards"),
            "69",
            "the caller's, decremented"
        );
        assert!(header(inv, "From").starts_with("\"Alice\" <sip:alice@example.com>;tag="));
        assert_eq!(
            header(inv, "P-Asserted-Identity"),
            "<sip:alice@example.com>"
        );
        assert_eq!(header(inv, "Supported"), "replaces");
        assert_eq!(header(inv, "Content-Type"), "application/sdp");
        assert!(inv.ends_with(SDP));
        // 18x with SDP: the caller gets our own 183 with our tag and Contact.
        let out = respond_to(&mut e, inv, 183, "bobtag", SDP, now);
        let (flow, early) = &out.sends[0];
        assert_eq!(flow.remote, addr(CALLER));
        assert!(early.starts_with("SIP/2.0 183 "));
        assert_eq!(header(early, "Call-ID"), "caller-call-id");
        assert!(
            !early.contains("bobtag") && !early.contains("10.0.0.2"),
            "{early}"
        );
        assert_eq!(header(early, "Contact"), "<sip:192.0.2.1:5060>");
        assert!(early.ends_with(SDP));
        assert!(matches!(out.records[0].0[0], CallStep::Ringing));
    }

    #[test]
    fn an_answered_call_ends_on_the_callers_bye_once_durable() {
        let now = Instant::now();
        let mut e = engine();
        let out = start(&mut e, vec![target(2)], now);
        let inv = out.sends[0].1.clone();
        let out = respond_to(&mut e, &inv, 200, "bobtag", SDP, now);
        let ack = &out
            .sends
            .iter()
            .find(|(f, _)| f.remote.port() == 5070)
            .unwrap()
            .1;
        assert!(ack.starts_with("ACK sip:bob@10.0.0.2:5070 "), "{ack}");
        assert_eq!(header(ack, "CSeq"), "1 ACK");
        let ok = &out
            .sends
            .iter()
            .find(|(f, _)| f.remote == addr(CALLER))
            .unwrap()
            .1;
        assert!(ok.starts_with("SIP/2.0 200 OK"));
        assert!(ok.ends_with(SDP));
        let our_tag = tag_of(header(ok, "To")).to_owned();
        assert!(!our_tag.is_empty() && our_tag != "bobtag");
        assert!(matches!(out.records[0].0[0], CallStep::Answer { .. }));
        assert_eq!(e.counts(), (0, 1));
        // Unacknowledged, our 2xx is retransmitted (T1)...
        e.handle_timeout(now + T1);
        let out = drain(&mut e);
        assert!(out.sends[0].1.starts_with("SIP/2.0 200 OK"));
        // ... until the ACK.
        let t = now + T1;
        in_dialog(
            &mut e,
            &caller_request("ACK", &our_tag, 10, "z9hG4bKack"),
            CALLER,
            t,
        );
        e.handle_timeout(t + T2 * 2);
        assert!(drain(&mut e).sends.is_empty());
        // The caller's BYE: recorded durably before anything is sent.
        let out = in_dialog(
            &mut e,
            &caller_request("BYE", &our_tag, 11, "z9hG4bKbye"),
            CALLER,
            t,
        );
        assert!(out.sends.is_empty());
        let (steps, token) = &out.records[0];
        assert!(matches!(
            steps[0],
            CallStep::End {
                side: HangupSide::Caller,
                ..
            }
        ));
        e.record_done(token.unwrap(), t);
        let out = drain(&mut e);
        let bye = &out
            .sends
            .iter()
            .find(|(f, _)| f.remote.port() == 5070)
            .unwrap()
            .1;
        assert!(bye.starts_with("BYE sip:bob@10.0.0.2:5070 "), "{bye}");
        assert_eq!(header(bye, "CSeq"), "2 BYE");
        assert_eq!(tag_of(header(bye, "To")), "bobtag");
        let ok = &out
            .sends
            .iter()
            .find(|(f, _)| f.remote == addr(CALLER))
            .unwrap()
            .1;
        assert!(ok.starts_with("SIP/2.0 200 OK") && header(ok, "CSeq") == "11 BYE");
        // A retransmitted BYE gets the same 200.
        let out = in_dialog(
            &mut e,
            &caller_request("BYE", &our_tag, 11, "z9hG4bKbye"),
            CALLER,
            t,
        );
        assert_eq!(out.sends[0].1, *ok);
        respond_to(&mut e, bye, 200, "", "", t);
        // Everything is forgotten after the linger, one wake-up at a time.
        for _ in 0..10 {
            let Some(next) = e.poll_timeout() else { break };
            e.handle_timeout(next);
            drain(&mut e);
        }
        assert!(e.is_idle(), "{:?}", e.counts());
        assert_eq!(e.stats().stuck_timers, 0);
    }

    #[test]
    fn a_callee_bye_ends_both_dialogs() {
        let now = Instant::now();
        let mut e = engine();
        let (inv, ok) = answered(&mut e, now);
        let our_tag = tag_of(header(&ok, "To")).to_owned();
        let callee_call_id = header(&inv, "Call-ID").to_owned();
        let our_callee_tag = tag_of(header(&inv, "From")).to_owned();
        let bye = format!(
            "BYE sip:192.0.2.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5070;branch=z9hG4bKb1\r\n\
From: <sip:bob@example.com>;tag=bobtag\r\nTo: <sip:alice@example.com>;tag={our_callee_tag}\r\n\
Call-ID: {callee_call_id}\r\nCSeq: 5 BYE\r\nContent-Length: 0\r\n\r\n"
        );
        let out = in_dialog(&mut e, &bye, "10.0.0.2:5070", now);
        assert!(out.sends.is_empty());
        assert!(matches!(
            out.records[0].0[0],
            CallStep::End {
                side: HangupSide::Callee,
                ..
            }
        ));
        e.record_done(out.records[0].1.unwrap(), now);
        let out = drain(&mut e);
        let to_callee = &out
            .sends
            .iter()
            .find(|(f, _)| f.remote.port() == 5070)
            .unwrap()
            .1;
        assert!(to_callee.starts_with("SIP/2.0 200 OK"));
        // The caller has not acknowledged our 2xx yet: its BYE waits for
        // the ACK (RFC 3261 s.15).
        assert!(out.sends.iter().all(|(f, _)| f.remote != addr(CALLER)));
        let out = in_dialog(
            &mut e,
            &caller_request("ACK", &our_tag, 10, "z9hG4bKa"),
            CALLER,
            now,
        );
        let to_caller = &out
            .sends
            .iter()
            .find(|(f, _)| f.remote == addr(CALLER))
            .unwrap()
            .1;
        assert!(
            to_caller.starts_with("BYE sip:alice@10.0.0.1:5062 "),
            "{to_caller}"
        );
        assert_eq!(header(to_caller, "Call-ID"), "caller-call-id");
        assert_eq!(tag_of(header(to_caller, "From")), our_tag);
        assert_eq!(header(to_caller, "CSeq"), "1 BYE");
        // A request of the ended call on the caller leg: 481.
        let out = in_dialog(
            &mut e,
            &caller_request("INFO", &our_tag, 12, "z9hG4bKi"),
            CALLER,
            now,
        );
        assert!(out.sends[0].1.starts_with("SIP/2.0 481"));
    }

    #[test]
    fn a_reinvite_is_relayed_as_a_new_request_and_glare_gets_491() {
        let now = Instant::now();
        let mut e = engine();
        let (inv, ok) = answered(&mut e, now);
        let our_tag = tag_of(header(&ok, "To")).to_owned();
        in_dialog(
            &mut e,
            &caller_request("ACK", &our_tag, 10, "z9hG4bKa"),
            CALLER,
            now,
        );
        let out = in_dialog(
            &mut e,
            &with_body(&caller_request("INVITE", &our_tag, 11, "z9hG4bKr1"), SDP),
            CALLER,
            now,
        );
        let trying = &out
            .sends
            .iter()
            .find(|(f, _)| f.remote == addr(CALLER))
            .unwrap()
            .1;
        assert!(trying.starts_with("SIP/2.0 100"));
        let reinvite = out
            .sends
            .iter()
            .find(|(f, _)| f.remote.port() == 5070)
            .unwrap()
            .1
            .clone();
        assert!(
            reinvite.starts_with("INVITE sip:bob@10.0.0.2:5070 "),
            "{reinvite}"
        );
        assert_eq!(header(&reinvite, "CSeq"), "2 INVITE");
        assert_eq!(header(&reinvite, "Call-ID"), header(&inv, "Call-ID"));
        // Another re-INVITE while this one is open: 491.
        let out = in_dialog(
            &mut e,
            &caller_request("INVITE", &our_tag, 12, "z9hG4bKr2"),
            CALLER,
            now,
        );
        assert!(
            out.sends[0].1.starts_with("SIP/2.0 491"),
            "{}",
            out.sends[0].1
        );
        // The callee's 200: ACKed on its leg, relayed as our 200.
        let out = respond_to(&mut e, &reinvite, 200, "", SDP, now);
        let ack = &out
            .sends
            .iter()
            .find(|(f, _)| f.remote.port() == 5070)
            .unwrap()
            .1;
        assert!(
            ack.starts_with("ACK ") && header(ack, "CSeq") == "2 ACK",
            "{ack}"
        );
        let ok = &out
            .sends
            .iter()
            .find(|(f, _)| f.remote == addr(CALLER))
            .unwrap()
            .1;
        assert!(ok.starts_with("SIP/2.0 200") && header(ok, "CSeq") == "11 INVITE");
        assert!(ok.ends_with(SDP));
        assert_eq!(header(ok, "Contact"), "<sip:192.0.2.1:5060>");
        // A retransmitted 200 from the callee gets the same ACK.
        let out = respond_to(&mut e, &reinvite, 200, "", SDP, now);
        assert_eq!(out.sends[0].1, *ack);
        in_dialog(
            &mut e,
            &caller_request("ACK", &our_tag, 11, "z9hG4bKa11"),
            CALLER,
            now,
        );
        // An offerless re-INVITE: the callee's 2xx carries the offer, the
        // caller's ACK the answer, which reaches the callee in our ACK.
        let out = in_dialog(
            &mut e,
            &caller_request("INVITE", &our_tag, 13, "z9hG4bKr3"),
            CALLER,
            now,
        );
        let reinvite = out
            .sends
            .iter()
            .find(|(f, _)| f.remote.port() == 5070)
            .unwrap()
            .1
            .clone();
        assert_eq!(header(&reinvite, "CSeq"), "3 INVITE");
        let out = respond_to(&mut e, &reinvite, 200, "", SDP, now);
        assert!(
            out.sends.iter().all(|(f, _)| f.remote == addr(CALLER)),
            "no ACK before the caller's: {:?}",
            out.sends
        );
        let answer = "v=0\r\no=- 2 2 IN IP4 198.51.100.7\r\n";
        let out = in_dialog(
            &mut e,
            &with_body(&caller_request("ACK", &our_tag, 13, "z9hG4bKa13"), answer),
            CALLER,
            now,
        );
        let [(flow, ack)] = &out.sends[..] else {
            panic!("{:?}", out.sends)
        };
        assert_eq!(flow.remote.port(), 5070);
        assert!(
            ack.starts_with("ACK ") && header(ack, "CSeq") == "3 ACK",
            "{ack}"
        );
        assert!(ack.ends_with(answer), "{ack}");
        let out = respond_to(&mut e, &reinvite, 200, "", SDP, now);
        assert_eq!(out.sends[0].1, *ack);
    }

    #[test]
    fn a_delayed_offer_is_answered_in_the_callee_legs_ack() {
        let now = Instant::now();
        let mut e = engine();
        let raw = invite()
            .replace("Content-Type: application/sdp\r\n", "")
            .replace(
                &format!("Content-Length: {}\r\n\r\n{SDP}", SDP.len()),
                "Content-Length: 0\r\n\r\n",
            );
        let out = start_with(&mut e, vec![target(2)], &raw, now);
        let inv = out.sends[0].1.clone();
        assert!(inv.ends_with("Content-Length: 0\r\n\r\n"), "{inv}");
        let out = respond_to(&mut e, &inv, 200, "bobtag", SDP, now);
        let [(flow, ok)] = &out.sends[..] else {
            panic!("only our 200, no ACK yet: {:?}", out.sends)
        };
        assert_eq!(flow.remote, addr(CALLER));
        assert!(ok.ends_with(SDP), "the offer reaches the caller");
        let our_tag = tag_of(header(ok, "To")).to_owned();
        // The callee retransmits its 2xx meanwhile: nothing to send yet.
        assert!(respond_to(&mut e, &inv, 200, "bobtag", SDP, now)
            .sends
            .is_empty());
        let answer = "v=0\r\no=- 3 3 IN IP4 198.51.100.7\r\n";
        let out = in_dialog(
            &mut e,
            &with_body(&caller_request("ACK", &our_tag, 10, "z9hG4bKa"), answer),
            CALLER,
            now,
        );
        let [(flow, ack)] = &out.sends[..] else {
            panic!("{:?}", out.sends)
        };
        assert_eq!(flow.remote.port(), 5070);
        assert!(
            ack.starts_with("ACK ") && header(ack, "CSeq") == "1 ACK",
            "{ack}"
        );
        assert_eq!(header(ack, "Content-Type"), "application/sdp");
        assert!(ack.ends_with(answer), "{ack}");
        let out = respond_to(&mut e, &inv, 200, "bobtag", SDP, now);
        assert_eq!(out.sends[0].1, *ack);
    }

    #[test]
    fn a_busy_callee_is_relayed_after_the_failure_is_durable() {
        let now = Instant::now();
        let mut e = engine();
        let out = start(&mut e, vec![target(2)], now);
        let inv = out.sends[0].1.clone();
        let out = respond_to(&mut e, &inv, 486, "bobtag", "", now);
        let [(flow, ack)] = &out.sends[..] else {
            panic!("{:?}", out.sends)
        };
        assert_eq!(flow.remote.port(), 5070);
        assert!(ack.starts_with("ACK ") && header(ack, "CSeq") == "1 ACK");
        let (steps, token) = &out.records[0];
        assert!(matches!(
            steps[0],
            CallStep::Fail {
                sip_status: 486,
                ..
            }
        ));
        e.record_done(token.unwrap(), now);
        let out = drain(&mut e);
        let busy = &out.sends[0].1;
        assert!(busy.starts_with("SIP/2.0 486"), "{busy}");
        assert!(!busy.contains("bobtag"));
        // The caller's ACK (same branch) and Timer I: done.
        let raw = invite();
        let key = Key::from_request(&Message::parse(raw.as_bytes()).unwrap()).unwrap();
        assert!(e.to_call(&key, CallInput::Ack, now));
        while let Some(next) = e.poll_timeout() {
            e.handle_timeout(next);
            drain(&mut e);
        }
        assert!(e.is_idle());
        assert!(e.stats().call_wakeups <= 4, "{:?}", e.stats());
    }

    #[test]
    fn cancel_cancels_every_callee_leg_and_a_late_answer_is_hung_up() {
        let now = Instant::now();
        let mut e = engine();
        let out = start(&mut e, vec![target(2), target(3)], now);
        let (a, b) = (out.sends[0].1.clone(), out.sends[1].1.clone());
        assert_ne!(header(&a, "Call-ID"), header(&b, "Call-ID"));
        respond_to(&mut e, &a, 180, "ta", "", now);
        respond_to(&mut e, &b, 180, "tb", "", now);
        let raw = invite();
        let key = Key::from_request(&Message::parse(raw.as_bytes()).unwrap()).unwrap();
        assert!(e.to_call(&key, CallInput::Cancel, now));
        let out = drain(&mut e);
        let cancels: Vec<_> = out
            .sends
            .iter()
            .filter(|(_, m)| m.starts_with("CANCEL"))
            .collect();
        assert_eq!(cancels.len(), 2);
        let (steps, token) = &out.records[0];
        assert!(matches!(
            steps[0],
            CallStep::Fail {
                sip_status: 487,
                ..
            }
        ));
        e.record_done(token.unwrap(), now);
        assert!(drain(&mut e).sends[0].1.starts_with("SIP/2.0 487"));
        // One callee answered anyway: ACK and BYE on its leg, nothing for
        // the caller, nothing recorded.
        let out = respond_to(&mut e, &a, 200, "ta", SDP, now);
        let methods: Vec<&str> = out.sends.iter().map(|(_, m)| &m[..3]).collect();
        assert_eq!(methods, ["ACK", "BYE"]);
        assert!(out.sends.iter().all(|(f, _)| f.remote.port() == 5070));
        assert!(out.records.is_empty());
    }

    #[test]
    fn over_tcp_nothing_is_retransmitted_and_nothing_is_left() {
        let now = Instant::now();
        let mut e = engine();
        let tcp_target = RouteTarget {
            flow: Flow::new(Transport::Tcp, addr("10.0.0.2:5070")),
            ..target(2)
        };
        let raw = invite().replace("SIP/2.0/UDP", "SIP/2.0/TCP");
        let out = start_on(&mut e, vec![tcp_target], &raw, Transport::Tcp, now);
        let inv = out.sends[0].1.clone();
        assert!(header(&inv, "Contact").contains("transport=tcp"), "{inv}");
        let out = respond_to(&mut e, &inv, 200, "bobtag", SDP, now);
        let ok = &out
            .sends
            .iter()
            .find(|(f, _)| f.remote == addr(CALLER))
            .unwrap()
            .1;
        let our_tag = tag_of(header(ok, "To")).to_owned();
        // No retransmission of our 2xx over TCP: the next timer is the
        // give-up (64*T1) at the earliest.
        assert!(e.poll_timeout().is_some_and(|t| t >= now + TIMER_64T1));
        let tcp = |req: String| req.replace("SIP/2.0/UDP", "SIP/2.0/TCP");
        let request = |e: &mut Engine, req: String| {
            let msg = Message::parse(req.as_bytes()).unwrap();
            let source = Source {
                addr: addr(CALLER),
                reliable: true,
            };
            assert_eq!(e.in_dialog(&msg, source, 0, now), None);
            drain(e)
        };
        request(&mut e, tcp(caller_request("ACK", &our_tag, 10, "z9hG4bKa")));
        let out = request(&mut e, tcp(caller_request("BYE", &our_tag, 11, "z9hG4bKb")));
        e.record_done(out.records[0].1.unwrap(), now);
        let out = drain(&mut e);
        let bye = &out
            .sends
            .iter()
            .find(|(f, _)| f.remote.port() == 5070)
            .unwrap()
            .1;
        respond_to(&mut e, bye, 200, "", "", now);
        let mut wakeups = 0;
        while let Some(next) = e.poll_timeout() {
            wakeups += 1;
            e.handle_timeout(next);
            drain(&mut e);
            assert!(wakeups < 10, "{:?}", e.counts());
        }
        assert!(e.is_idle());
        assert_eq!(e.stats().stuck_timers, 0);
    }

    #[test]
    fn unknown_dialogs_get_481() {
        let now = Instant::now();
        let mut e = engine();
        answered(&mut e, now);
        let msg_text = caller_request("BYE", "not-our-tag", 11, "z9hG4bKx");
        let msg = Message::parse(msg_text.as_bytes()).unwrap();
        let refusal = e.in_dialog(
            &msg,
            Source {
                addr: addr(CALLER),
                reliable: false,
            },
            0,
            now,
        );
        assert_eq!(refusal.map(|r| r.0), Some(481));
    }

    #[test]
    fn an_unacknowledged_answer_ends_the_call() {
        let now = Instant::now();
        let mut e = engine();
        answered(&mut e, now);
        let mut t = now;
        let mut resent = 0;
        let mut end = None;
        while t < now + TIMER_64T1 + Duration::from_secs(1) {
            let Some(next) = e.poll_timeout() else { break };
            t = next;
            e.handle_timeout(t);
            let out = drain(&mut e);
            resent += out
                .sends
                .iter()
                .filter(|(_, m)| m.starts_with("SIP/2.0 200"))
                .count();
            if let Some((steps, token)) = out.records.first() {
                end = Some((steps[0].clone(), *token));
                break;
            }
        }
        assert!((5..=12).contains(&resent), "{resent} retransmissions");
        let (step, token) = end.expect("the call ended");
        assert!(matches!(
            step,
            CallStep::End {
                side: HangupSide::System,
                cause: CallCause::Timeout
            }
        ));
        e.record_done(token.unwrap(), t);
        let out = drain(&mut e);
        assert_eq!(
            out.sends
                .iter()
                .filter(|(_, m)| m.starts_with("BYE"))
                .count(),
            2
        );
    }
}
