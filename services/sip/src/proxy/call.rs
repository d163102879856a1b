//! One proxied call while it is being set up: the INVITE server transaction
//! towards the caller and one INVITE client transaction per target of the
//! routing plan (RFC 3261 s.16, s.17), as a plain state machine.
//!
//! Sans-IO: every input ([`ProxyCall::on_response`], [`ProxyCall::on_timer`],
//! ...) takes `now` and pushes [`Effect`]s; the [`super::engine::Engine`]
//! applies them to its tables and turns them into actions for the shell.
//! The call never reads the clock, never sleeps and never sends.
//!
//! Every timer it reports through [`ProxyCall::next_deadline`] is consumed
//! when it fires: the state changes so that the same instant is never
//! reported again. (A timer that stayed armed in the past once made the
//! async version of this code spin on a core until Timer D.)

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::backend::{CallCause, CallRecord, CallStep, NextSteps, RouteStep, RouteTarget};
use crate::proxy::forward::{self, Forward, Retargeting, SentInvite};
use crate::transaction::{Key, T1, T2, T4};
use crate::transport::Flow;
use crate::wire::message::{Message, Name, NameAddr, StartLine};
use crate::wire::response::{Response, Source};

use super::dialog::{Dialog, DialogParties};
use super::legs::Legs;

/// Timer B / F / H (64 * T1).
pub(crate) const TIMER_64T1: Duration = Duration::from_millis(64 * 500);

/// What a call asks its engine to do.
pub(crate) enum Effect {
    /// Send bytes on a flow.
    Send(Flow, Bytes),
    /// Record call steps after the call's earlier ones (not awaited).
    Record(Vec<CallRecord>),
    /// Record call steps durably; the engine calls
    /// [`ProxyCall::on_recorded`] once they are.
    RecordDurable(Vec<CallRecord>),
    /// A new client transaction: responses with this Via branch are the
    /// call's, for branch index `usize`.
    NewBranch(Box<str>, usize),
    /// The call was answered: from now on requests inside the dialog are
    /// routed by the engine's dialog table.
    OpenDialog(Box<str>, Dialog),
    /// Another branch answered the call too (Call-ID, its To tag, flow).
    AlsoAnswered(Box<str>, String, Flow),
    /// A back-to-back call sent a request with this Via branch: its
    /// responses are the call's.
    B2buaBranch(Box<str>),
    /// A back-to-back call opened a leg with this Call-ID: requests in
    /// that dialog are the call's.
    B2buaCallId(Box<str>),
}

/// The fixed facts the call needs to build what it sends.
pub(crate) struct CallSetup {
    pub key: Key,
    pub invite: Bytes,
    pub source: Source,
    pub upstream: Flow,
    pub to_tag: String,
    pub legs: Legs,
    pub steps: Vec<RouteStep>,
    pub pop_routes: usize,
    pub max_forwards: u32,
    /// For our Via.
    pub advertised: super::engine::Advertised,
    /// Our Record-Route value.
    pub record_route: String,
    pub no_answer_timeout: Duration,
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
    /// The routing step this branch belongs to.
    step: usize,
    /// False once the branch was cancelled because its step stopped
    /// ringing: its final response (a 487) says nothing about the callee.
    counts: bool,
    /// The branch answered after the caller got its final non-2xx
    /// response: we acknowledged the 2xx and hung up on it ourselves. Its
    /// retransmissions get this ACK again.
    hung_up: Option<Bytes>,
}

impl Branch {
    fn flow(&self) -> Flow {
        self.target.flow
    }

    fn is_final(&self) -> bool {
        matches!(self.state, BranchState::Completed | BranchState::Terminated)
    }
}

#[derive(Debug)]
enum Upstream {
    /// No final response sent yet.
    Proceeding,
    /// A 2xx was forwarded: the server transaction is over (RFC 3261
    /// s.16.7 step 10).
    Accepted,
    /// A final non-2xx response is decided; it goes out once the failure
    /// is durable.
    Rejecting(Option<Bytes>),
    /// A non-2xx final response was sent: retransmitted over UDP (Timer G)
    /// until the ACK or Timer H.
    Rejected {
        retransmit_at: Option<Instant>,
        interval: Duration,
        give_up_at: Instant,
    },
    /// The ACK came: absorbing retransmissions until the instant (Timer I).
    Confirmed(Instant),
    /// Nothing left to do upstream.
    Terminated,
}

/// How a routing step ended without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StepOutcome {
    Busy,
    NoAnswer,
    Unavailable,
    /// A 6xx: the search ends (RFC 3261 s.16.7 step 5).
    Decline,
}

impl StepOutcome {
    pub(crate) fn of_status(code: u16) -> StepOutcome {
        match code {
            486 | 600 => StepOutcome::Busy,
            408 | 480 => StepOutcome::NoAnswer,
            600..=699 => StepOutcome::Decline,
            _ => StepOutcome::Unavailable,
        }
    }

    /// The step a plan goes on with after this outcome, if any.
    pub(crate) fn next_step(self, next: NextSteps) -> Option<usize> {
        match self {
            StepOutcome::Busy => next.busy,
            StepOutcome::NoAnswer => next.no_answer,
            StepOutcome::Unavailable => next.unavailable,
            StepOutcome::Decline => None,
        }
    }
}

/// The first step of `steps` to ring, from step `from` on: a step without
/// targets (its phones went away, or none is reachable over a transport
/// served here) ends at once as unavailable. `None`: nothing left to ring.
pub(crate) fn first_ringing_step(steps: &[RouteStep], from: usize) -> Option<usize> {
    let mut s = from;
    // Every `next` points forward, so this ends; the bound only guards
    // against a plan that breaks that rule.
    for _ in 0..=steps.len() {
        let step = steps.get(s)?;
        if !step.targets.is_empty() {
            return Some(s);
        }
        s = step.next.unavailable.filter(|&n| n > s)?;
    }
    None
}

/// One call being set up.
pub(crate) struct ProxyCall {
    setup: CallSetup,
    branches: Vec<Branch>,
    /// The routing step ringing now.
    step: usize,
    /// When the current step stops ringing (its ring timeout).
    step_timeout_at: Option<Instant>,
    /// The best final response of the current step's counted branches.
    step_best: Option<u16>,
    upstream: Upstream,
    last_response: Option<Bytes>,
    /// The current callee's leg has rung (the caller's leg rings with
    /// the first callee's).
    ringing: bool,
    /// The caller's leg has rung: a forwarded-to user's ringing is
    /// recorded on its own leg only.
    caller_rang: bool,
    caller_contact: String,
    no_answer_at: Instant,
    /// The best final response of the branches so far (s.16.7 step 6):
    /// its status and, when it came from a branch, the relayed bytes.
    best: Option<(u16, Option<Bytes>)>,
    from: String,
    to: String,
    sip_call_id: String,
    cseq: u32,
    branch_seq: u64,
    branch_salt: u64,
}

impl ProxyCall {
    /// Forks the INVITE to the first routing step with targets. The
    /// caller's `Start` step is recorded first.
    pub fn start(
        setup: CallSetup,
        msg: &Message<'_>,
        branch_salt: u64,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) -> ProxyCall {
        let caller_contact = msg
            .list(Name::Contact)
            .next()
            .and_then(NameAddr::parse)
            .map(|n| n.uri.to_owned())
            .unwrap_or_default();
        let mut call = ProxyCall {
            no_answer_at: now + setup.no_answer_timeout,
            branches: Vec::new(),
            step: 0,
            step_timeout_at: None,
            step_best: None,
            upstream: Upstream::Proceeding,
            last_response: None,
            ringing: false,
            caller_rang: false,
            caller_contact,
            best: None,
            from: msg.header(Name::From).unwrap_or("").to_owned(),
            to: msg.header(Name::To).unwrap_or("").to_owned(),
            sip_call_id: msg.header(Name::CallId).unwrap_or("").to_owned(),
            cseq: msg.cseq().map(|c| c.seq).unwrap_or(1),
            branch_seq: 0,
            branch_salt,
            setup,
        };
        fx.push(Effect::Record(call.setup.legs.start()));
        match first_ringing_step(&call.setup.steps, 0) {
            Some(step) => call.start_step(step, msg, now, fx),
            // Nothing to ring (the engine's caller checks the plan first).
            None => call.reject(480, None, CallCause::Unavailable, fx),
        }
        call
    }

    pub fn key(&self) -> &Key {
        &self.setup.key
    }

    /// Did the caller get a 2xx from us?
    pub fn was_answered(&self) -> bool {
        matches!(self.upstream, Upstream::Accepted)
    }

    pub fn legs(&self) -> &Legs {
        &self.setup.legs
    }

    pub fn branch_ids(&self) -> impl Iterator<Item = &str> {
        self.branches.iter().map(|b| &*b.id)
    }

    /// Nothing left to do: the engine forgets the call.
    pub fn is_done(&self) -> bool {
        matches!(self.upstream, Upstream::Accepted | Upstream::Terminated)
            && self
                .branches
                .iter()
                .all(|b| b.state == BranchState::Terminated)
    }

    /// The earliest armed timer. Every timer is consumed when it fires.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        match &self.upstream {
            Upstream::Proceeding => {
                consider(Some(self.no_answer_at));
                consider(self.step_timeout_at);
            }
            Upstream::Rejected {
                retransmit_at,
                give_up_at,
                ..
            } => {
                consider(*retransmit_at);
                consider(Some(*give_up_at));
            }
            Upstream::Confirmed(until) => consider(Some(*until)),
            Upstream::Accepted | Upstream::Rejecting(_) | Upstream::Terminated => {}
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

    /// The caller retransmitted its INVITE: it gets our last provisional
    /// or final non-2xx response again. Once a 2xx was relayed the
    /// retransmission is absorbed (RFC 6026 s.7.1: retransmitting the 2xx
    /// is the callee's job, and a caller that already has it would see it
    /// as an unexpected message).
    pub fn on_invite_again(&self, fx: &mut Vec<Effect>) {
        if matches!(self.upstream, Upstream::Accepted) {
            return;
        }
        if let Some(b) = &self.last_response {
            fx.push(Effect::Send(self.setup.upstream, b.clone()));
        }
    }

    /// The caller acknowledged our non-2xx final response.
    pub fn on_ack(&mut self, now: Instant) {
        if matches!(self.upstream, Upstream::Rejected { .. }) {
            self.upstream = if self.setup.upstream.is_reliable() {
                Upstream::Terminated
            } else {
                Upstream::Confirmed(now + T4)
            };
        }
    }

    /// The caller cancelled (RFC 3261 s.16.10): every branch is cancelled
    /// and the caller gets 487.
    pub fn on_cancel(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if !matches!(self.upstream, Upstream::Proceeding) {
            return;
        }
        for i in 0..self.branches.len() {
            self.cancel_branch(i, now, fx);
        }
        self.reject(487, None, CallCause::OriginatorCancel, fx);
    }

    /// The failure this call recorded durably is durable: the final
    /// response goes to the caller now.
    pub fn on_recorded(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let Upstream::Rejecting(bytes) = &mut self.upstream else {
            return;
        };
        let Some(bytes) = bytes.take() else {
            self.upstream = Upstream::Terminated;
            return;
        };
        fx.push(Effect::Send(self.setup.upstream, bytes.clone()));
        self.last_response = Some(bytes);
        self.upstream = Upstream::Rejected {
            retransmit_at: (!self.setup.upstream.is_reliable()).then_some(now + T1),
            interval: T1,
            give_up_at: now + TIMER_64T1,
        };
    }

    pub fn on_timer(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if matches!(self.upstream, Upstream::Proceeding) {
            if now >= self.no_answer_at {
                // The no-answer timeout (our Timer C): give up on every branch.
                for i in 0..self.branches.len() {
                    self.cancel_branch(i, now, fx);
                }
                self.reject(480, None, CallCause::NoAnswer, fx);
            } else if self.step_timeout_at.is_some_and(|t| now >= t) {
                self.step_timeout_at = None;
                self.end_step_unanswered(now, fx);
            }
        }
        match &mut self.upstream {
            Upstream::Rejected {
                retransmit_at,
                interval,
                give_up_at,
            } => {
                if now >= *give_up_at {
                    // Timer H: no ACK came.
                    self.upstream = Upstream::Terminated;
                } else if retransmit_at.is_some_and(|t| now >= t) {
                    // Timer G.
                    *interval = (*interval * 2).min(T2);
                    *retransmit_at = Some(now + *interval);
                    if let Some(b) = &self.last_response {
                        fx.push(Effect::Send(self.setup.upstream, b.clone()));
                    }
                }
            }
            Upstream::Confirmed(until) if now >= *until => self.upstream = Upstream::Terminated,
            _ => {}
        }
        for i in 0..self.branches.len() {
            let mut timed_out = false;
            {
                let b = &mut self.branches[i];
                if b.state == BranchState::Terminated {
                    continue;
                }
                let flow = b.flow();
                if b.retransmit_at.is_some_and(|t| now >= t) {
                    // Timer A doubles without a cap until Timer B fires.
                    b.interval *= 2;
                    b.retransmit_at = Some(now + b.interval);
                    fx.push(Effect::Send(flow, b.request.clone()));
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
                        fx.push(Effect::Send(flow, bytes.clone()));
                    }
                }
                if b.timeout_at.is_some_and(|t| now >= t) {
                    timed_out = b.state == BranchState::Calling && b.counts;
                    b.state = BranchState::Terminated;
                    b.retransmit_at = None;
                    b.timeout_at = None;
                    if let CancelState::Sent { .. } = b.cancel {
                        b.cancel = CancelState::Answered;
                    }
                }
            }
            if timed_out {
                // Timer B: the branch's result is a 408 (RFC 3261 s.16.8).
                self.branch_result(i, 408, None);
            }
        }
        self.maybe_finish_step(now, fx);
    }

    /// A response on branch `i`.
    pub fn on_response(&mut self, msg: &Message<'_>, i: usize, now: Instant, fx: &mut Vec<Effect>) {
        let StartLine::Response { code, .. } = msg.start else {
            return;
        };
        if i >= self.branches.len() {
            return;
        }
        if msg.cseq().is_ok_and(|c| c.method == "CANCEL") {
            if let CancelState::Sent { .. } = self.branches[i].cancel {
                self.branches[i].cancel = CancelState::Answered;
            }
            return;
        }
        match code {
            100..=199 => self.on_provisional(msg, code, i, now, fx),
            200..=299 => self.on_success(msg, i, now, fx),
            _ => self.on_failure(msg, code, i, now, fx),
        }
        self.maybe_finish_step(now, fx);
    }

    fn on_provisional(
        &mut self,
        msg: &Message<'_>,
        code: u16,
        i: usize,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
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
            self.cancel_branch(i, now, fx);
        }
        if code > 100
            && matches!(self.upstream, Upstream::Proceeding)
            && self.branches[i].cancel == CancelState::None
        {
            if let Some(b) = forward::strip_top_via(msg) {
                fx.push(Effect::Send(self.setup.upstream, b.clone()));
                self.last_response = Some(b);
            }
            if code == 180 || code == 183 {
                if let Some(records) = alerting(
                    &mut self.setup.legs,
                    self.branches[i].target.member.as_ref(),
                    &mut self.ringing,
                    &mut self.caller_rang,
                ) {
                    fx.push(Effect::Record(records));
                }
            }
        }
    }

    fn on_success(&mut self, msg: &Message<'_>, i: usize, now: Instant, fx: &mut Vec<Effect>) {
        if let Some(ack) = &self.branches[i].hung_up {
            fx.push(Effect::Send(self.branches[i].flow(), ack.clone()));
            return;
        }
        let late = !matches!(self.upstream, Upstream::Proceeding | Upstream::Accepted);
        if late && self.branches[i].state != BranchState::Terminated {
            self.hang_up_late_answer(msg, i, now, fx);
            return;
        }
        let first_on_branch = self.branches[i].state != BranchState::Terminated;
        {
            let b = &mut self.branches[i];
            b.state = BranchState::Terminated;
            b.retransmit_at = None;
            b.timeout_at = None;
        }
        // Every 2xx goes upstream (RFC 3261 s.16.7 step 5), also a second
        // one from another branch: the caller ends that dialog itself.
        let Some(up) = forward::strip_top_via(msg) else {
            return;
        };
        let first_answer = first_on_branch && matches!(self.upstream, Upstream::Proceeding);
        if first_on_branch && !first_answer && self.was_answered() {
            if let (Ok(call_id), Some(tag)) = (msg.call_id(), msg.to().ok().and_then(|t| t.tag())) {
                fx.push(Effect::AlsoAnswered(
                    call_id.into(),
                    tag.to_owned(),
                    self.branches[i].flow(),
                ));
            }
        }
        if first_answer {
            let member = self.branches[i].target.member.clone();
            let others = self.setup.legs.answered_by(member.as_ref());
            if !others.is_empty() {
                fx.push(Effect::Record(others));
            }
            // The dialog exists before the caller can see the 2xx: its ACK
            // must find it.
            if let Some((call_id, dialog)) = self.dialog_for(msg, i, now) {
                fx.push(Effect::OpenDialog(call_id, dialog));
            }
        }
        fx.push(Effect::Send(self.setup.upstream, up.clone()));
        if first_answer {
            call_attempt(200);
            self.upstream = Upstream::Accepted;
            self.last_response = Some(up);
            let contact = self
                .setup
                .legs
                .answered_contact(&self.branches[i].target.uri);
            let records = self.setup.legs.records(|_| CallStep::Answer {
                contact: contact.clone(),
            });
            fx.push(Effect::Record(records));
            for j in 0..self.branches.len() {
                if j != i {
                    self.cancel_branch(j, now, fx);
                }
            }
        }
    }

    /// A branch answered after the caller got its final non-2xx response
    /// (our no-answer timeout, or the caller's CANCEL crossing the answer).
    /// Relaying the 2xx would connect a call the log records as failed;
    /// instead the proxy acknowledges it and ends that dialog with a BYE,
    /// like a caller would (RFC 3261 s.9.1, s.15). The branch absorbs the
    /// 2xx's retransmissions for 64*T1.
    fn hang_up_late_answer(
        &mut self,
        msg: &Message<'_>,
        i: usize,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let to = msg.header(Name::To).unwrap_or("");
        let b = &mut self.branches[i];
        let contact = msg
            .list(Name::Contact)
            .next()
            .and_then(NameAddr::parse)
            .map(|n| n.uri.to_owned())
            .unwrap_or_else(|| b.target.uri.clone());
        self.branch_seq += 1;
        let ack_via = via(
            &self.setup.advertised,
            b.target.flow.transport,
            &format!("z9hG4bK-ds{:016x}a{:x}", self.branch_salt, self.branch_seq),
        );
        let bye_via = via(
            &self.setup.advertised,
            b.target.flow.transport,
            &format!("z9hG4bK-ds{:016x}b{:x}", self.branch_salt, self.branch_seq),
        );
        let ack = forward::ack_for(
            &SentInvite {
                ruri: contact.clone(),
                via: ack_via,
                ..b.sent.clone()
            },
            to,
        );
        let bye = forward::bye(&forward::OwnBye {
            ruri: &contact,
            via: &bye_via,
            from: &b.sent.from,
            to,
            call_id: &b.sent.call_id,
            cseq: b.sent.cseq.saturating_add(1),
            route: None,
        });
        b.state = BranchState::Completed;
        b.retransmit_at = None;
        b.timeout_at = Some(now + TIMER_64T1);
        if let CancelState::Sent { .. } = b.cancel {
            b.cancel = CancelState::Answered;
        }
        b.hung_up = Some(ack.clone());
        let flow = b.flow();
        fx.push(Effect::Send(flow, ack));
        fx.push(Effect::Send(flow, bye));
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
        let ack = forward::ack_for(&self.branches[i].sent, to);
        fx.push(Effect::Send(self.branches[i].flow(), ack));
        if self.branches[i].is_final() {
            return; // a retransmission: acknowledged again
        }
        {
            let b = &mut self.branches[i];
            b.state = BranchState::Completed;
            b.retransmit_at = None;
            if let CancelState::Sent { .. } = b.cancel {
                b.cancel = CancelState::Answered;
            }
            // Timer D: absorb retransmissions of the response over UDP.
            b.timeout_at = if b.target.flow.transport.is_reliable() {
                None
            } else {
                Some(now + TIMER_64T1)
            };
            if b.timeout_at.is_none() {
                b.state = BranchState::Terminated;
            }
        }
        self.branch_result(i, code, forward::strip_top_via(msg));
        if code >= 600 {
            // RFC 3261 s.16.7 step 5: a 6xx ends the search.
            for j in 0..self.branches.len() {
                if j != i {
                    self.cancel_branch(j, now, fx);
                }
            }
        }
    }

    fn cancel_branch(&mut self, i: usize, now: Instant, fx: &mut Vec<Effect>) {
        let b = &mut self.branches[i];
        if b.cancel != CancelState::None {
            return;
        }
        match b.state {
            BranchState::Calling => {
                b.cancel = CancelState::Pending;
                // Give up retransmitting: the CANCEL goes when a
                // provisional response shows the INVITE arrived. Timer B
                // still ends the branch if nothing ever comes.
                b.retransmit_at = None;
            }
            BranchState::Proceeding => {
                let bytes = forward::cancel_for(&b.sent);
                let reliable = b.target.flow.transport.is_reliable();
                b.cancel = CancelState::Sent {
                    bytes: bytes.clone(),
                    retransmit_at: (!reliable).then_some(now + T1),
                    interval: T1,
                };
                // Give up on the branch if no final response follows.
                b.timeout_at = Some(now + TIMER_64T1);
                fx.push(Effect::Send(b.flow(), bytes));
            }
            BranchState::Completed | BranchState::Terminated => {}
        }
    }

    /// Remembers a branch's final response (RFC 3261 s.16.7 step 6): a 6xx
    /// beats everything, otherwise the lowest class wins.
    fn branch_result(&mut self, i: usize, code: u16, bytes: Option<Bytes>) {
        let b = &self.branches[i];
        if !b.counts {
            return;
        }
        if b.step == self.step {
            self.step_best = Some(match self.step_best {
                Some(old) if !better(code, old) => old,
                _ => code,
            });
        }
        let replace = match &self.best {
            None => true,
            Some((old, _)) => better(code, *old),
        };
        if replace {
            self.best = Some((code, bytes));
        }
    }

    /// When every branch of the current step has a final response: the
    /// next step, or the caller's final response.
    fn maybe_finish_step(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if !matches!(self.upstream, Upstream::Proceeding) {
            return;
        }
        let step_done = self
            .branches
            .iter()
            .filter(|b| b.step == self.step)
            .all(Branch::is_final);
        if !step_done {
            return;
        }
        let outcome = StepOutcome::of_status(self.step_best.unwrap_or(408));
        self.after_step(outcome, now, fx);
    }

    /// The current step rang for its ring timeout without an answer.
    /// A phone the next step rings too goes on ringing into it (find-me:
    /// the own phones keep ringing while more targets join); the others
    /// are cancelled.
    fn end_step_unanswered(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let next = next_on_no_answer(&self.setup.steps, self.step);
        for i in 0..self.branches.len() {
            if self.branches[i].step == self.step && !self.branches[i].is_final() {
                if let Some(n) =
                    next.filter(|&n| rings(&self.setup.steps[n], &self.branches[i].target))
                {
                    if self.branches[i].cancel == CancelState::None {
                        self.branches[i].step = n;
                        continue;
                    }
                }
                self.cancel_branch(i, now, fx);
                self.branches[i].counts = false;
            }
        }
        let replace = self.best.as_ref().is_none_or(|(old, _)| better(480, *old));
        if replace {
            self.best = Some((480, None));
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
        let (code, bytes) = match self.best.take() {
            // A 503 from downstream becomes 500 (RFC 3261 s.16.7 step 6).
            Some((503, _)) => (500, None),
            Some((code, bytes)) => (code, bytes),
            None => (408, None),
        };
        let cause = match outcome {
            StepOutcome::NoAnswer if code == 480 && bytes.is_none() => CallCause::NoAnswer,
            _ => CallCause::for_status(code),
        };
        self.reject(code, bytes, cause, fx);
    }

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
        let retargeting = Retargeting::of(&self.setup.steps[step].diversions);
        let targets = self.setup.steps[step].targets.clone();
        for target in targets {
            // Still ringing from the step before.
            if self
                .branches
                .iter()
                .any(|b| b.step == step && same_phone(&b.target, &target))
            {
                continue;
            }
            let id = self.new_branch_id();
            let via = via(&self.setup.advertised, target.flow.transport, &id);
            let request = forward::forward_request(
                msg,
                &Forward {
                    ruri: Some(&target.uri),
                    via: &via,
                    record_route: Some(&self.setup.record_route),
                    source: self.setup.source,
                    max_forwards: self.setup.max_forwards,
                    pop_routes: self.setup.pop_routes,
                    drop_proxy_authorization: true,
                    retargeting: retargeting.as_ref(),
                },
            );
            let reliable = target.flow.transport.is_reliable();
            let branch = Branch {
                sent: SentInvite {
                    ruri: target.uri.clone(),
                    via,
                    from: self.from.clone(),
                    to: self.to.clone(),
                    call_id: self.sip_call_id.clone(),
                    cseq: self.cseq,
                },
                id: id.into_boxed_str(),
                target,
                request,
                state: BranchState::Calling,
                retransmit_at: (!reliable).then_some(now + T1),
                interval: T1,
                timeout_at: Some(now + TIMER_64T1),
                cancel: CancelState::None,
                step,
                counts: true,
                hung_up: None,
            };
            fx.push(Effect::NewBranch(branch.id.clone(), self.branches.len()));
            fx.push(Effect::Send(branch.flow(), branch.request.clone()));
            self.branches.push(branch);
        }
    }

    fn new_branch_id(&mut self) -> String {
        self.branch_seq += 1;
        format!(
            "z9hG4bK-dt{:016x}{:x}",
            self.branch_salt.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ self.branch_seq,
            self.branch_seq
        )
    }

    /// Decides the caller's final non-2xx response; it is sent once the
    /// failure is durable ([`ProxyCall::on_recorded`]).
    fn reject(
        &mut self,
        code: u16,
        relayed: Option<Bytes>,
        cause: CallCause,
        fx: &mut Vec<Effect>,
    ) {
        call_attempt(code);
        let bytes = relayed.or_else(|| self.own_response(code));
        self.step_timeout_at = None;
        self.upstream = Upstream::Rejecting(bytes);
        fx.push(Effect::RecordDurable(self.setup.legs.fail(code, cause)));
    }

    /// A response we make ourselves for the caller's INVITE.
    fn own_response(&self, code: u16) -> Option<Bytes> {
        let msg = Message::parse(&self.setup.invite).ok()?;
        let mut r = Response::with_reason(
            &msg,
            &self.setup.source,
            code,
            crate::wire::response::reason(code),
            &self.setup.to_tag,
        );
        r.header("Server", "Dialtone");
        Some(r.finish())
    }

    fn dialog_for(&self, msg: &Message<'_>, i: usize, now: Instant) -> Option<(Box<str>, Dialog)> {
        let call_id = msg.call_id().ok()?;
        let invite = Message::parse(&self.setup.invite).ok()?;
        let caller_tag = invite
            .from()
            .ok()
            .and_then(|f| f.tag())
            .unwrap_or("")
            .to_owned();
        let callee_tag = msg.to().ok().and_then(|t| t.tag()).unwrap_or("").to_owned();
        let target = &self.branches[i].target;
        let callee_contact = msg
            .list(Name::Contact)
            .next()
            .and_then(NameAddr::parse)
            .map(|n| n.uri.to_owned())
            .unwrap_or_else(|| target.uri.clone());
        let dialog = Dialog::new(
            self.setup.legs.clone(),
            DialogParties {
                caller_tag,
                callee_tag,
                caller: self.setup.upstream,
                callee: target.flow,
                caller_contact: self.caller_contact.clone(),
                callee_contact,
                from: invite.header(Name::From).unwrap_or("").to_owned(),
                to: msg.header(Name::To).unwrap_or("").to_owned(),
                caller_cseq: invite.cseq().map(|c| c.seq).unwrap_or(1),
            },
            now,
        );
        Some((call_id.into(), dialog))
    }
}

/// The step a plan goes on with when `step` is not answered in time (the
/// one whose phones may go on ringing).
pub(crate) fn next_on_no_answer(steps: &[RouteStep], step: usize) -> Option<usize> {
    steps
        .get(step)?
        .next
        .no_answer
        .filter(|&n| n > step)
        .and_then(|n| first_ringing_step(steps, n))
}

/// The same phone: contact and where it is reached.
pub(crate) fn same_phone(a: &RouteTarget, b: &RouteTarget) -> bool {
    a.uri == b.uri && a.flow == b.flow
}

/// Whether `step` rings `target`.
pub(crate) fn rings(step: &RouteStep, target: &RouteTarget) -> bool {
    step.targets.iter().any(|t| same_phone(t, target))
}

/// The `Ringing` records when a target alerts, if any are due: a ring
/// group member's leg (once per member), or the callee's while its leg has
/// not rung (`ringing`); the caller's with the first.
pub(crate) fn alerting(
    legs: &mut Legs,
    member: Option<&(String, String)>,
    ringing: &mut bool,
    caller_rang: &mut bool,
) -> Option<Vec<CallRecord>> {
    let records = match member {
        Some(member) => legs.member_ringing(member, *caller_rang),
        None if !*ringing => {
            *ringing = true;
            legs.ringing(*caller_rang)
        }
        None => return None,
    };
    *caller_rang = true;
    (!records.is_empty()).then_some(records)
}

/// The records of a step's ring group members when the step ends without
/// an answer and the call goes on: each member's leg fails with the
/// step's outcome (480 no answer for a ring timeout).
pub(crate) fn members_of_step_end(
    legs: &mut Legs,
    outcome: StepOutcome,
    step_best: Option<u16>,
) -> Vec<CallRecord> {
    if legs.members.is_empty() {
        return Vec::new();
    }
    match outcome {
        StepOutcome::NoAnswer => legs.step_ends(step_best.unwrap_or(480), CallCause::NoAnswer),
        _ => {
            let status = step_best.unwrap_or(480);
            legs.step_ends(status, CallCause::for_status(status))
        }
    }
}

/// Counts a call attempt by the final status the caller got (bounded
/// labels: the status codes a proxy relays).
pub(crate) fn call_attempt(status: u16) {
    metrics::counter!(
        "dialtone_sip_call_attempts_total",
        "status" => crate::wire::response::status_label(status)
    )
    .increment(1);
}

/// Is final response `new` better than `old` (RFC 3261 s.16.7 step 6)?
pub(crate) fn better(new: u16, old: u16) -> bool {
    let (old_class, new_class) = (old / 100, new / 100);
    if old_class == 6 {
        false
    } else if new_class == 6 {
        true
    } else {
        new_class < old_class
    }
}

/// Our Via for a request sent over `transport`.
pub(crate) fn via(
    advertised: &super::engine::Advertised,
    transport: crate::backend::Transport,
    branch: &str,
) -> String {
    format!(
        "SIP/2.0/{} {};branch={branch}",
        transport.as_str(),
        advertised.sent_by(transport)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::NextSteps;

    fn step(targets: usize, unavailable: Option<usize>) -> RouteStep {
        RouteStep {
            targets: (0..targets)
                .map(|i| RouteTarget {
                    uri: format!("sip:p{i}@192.0.2.1"),
                    flow: Flow::new(
                        crate::backend::Transport::Udp,
                        format!("192.0.2.1:{}", 5060 + i).parse().unwrap(),
                    ),
                    member: None,
                })
                .collect(),
            ring_timeout: None,
            next: NextSteps {
                busy: None,
                no_answer: None,
                unavailable,
            },
            diversions: Vec::new(),
            skipped: Vec::new(),
            group: None,
        }
    }

    #[test]
    fn a_step_without_targets_ends_at_once_as_unavailable() {
        // 0 (empty) -> 2 (empty) -> 3 (rings); 1 is never reached.
        let steps = [
            step(0, Some(2)),
            step(1, None),
            step(0, Some(3)),
            step(2, None),
        ];
        assert_eq!(first_ringing_step(&steps, 0), Some(3));
        assert_eq!(first_ringing_step(&steps, 1), Some(1));
        // An empty step with nowhere to go: nothing to ring.
        let steps = [step(0, None), step(1, None)];
        assert_eq!(first_ringing_step(&steps, 0), None);
        // A plan breaking the forward-only rule cannot loop.
        let steps = [step(0, Some(1)), step(0, Some(0))];
        assert_eq!(first_ringing_step(&steps, 0), None);
        assert_eq!(first_ringing_step(&steps, 5), None);
    }
}
