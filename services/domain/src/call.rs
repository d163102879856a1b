//! Call legs of a [`User`]: what the SIP proxy tells a user actor about a
//! call ([`CallStep`], sent as [`user::Command::Call`]) and the events that
//! record it.
//!
//! [`user::Command::Call`]: crate::user::Command::Call
//!
//! # Legs
//!
//! A call between two users is recorded twice, once in each user's stream:
//! the caller's leg ([`Direction::Outbound`]) and the callee's leg
//! ([`Direction::Inbound`]). Both legs share the `call_id` the proxy
//! generated for the call (a UUID string); the SIP Call-ID is kept as
//! `sip_call_id`. A call to an unknown user has only the caller's leg.
//!
//! A leg is [`LegState::Trying`] when started, [`LegState::Ringing`] once
//! the callee alerts, [`LegState::Answered`] once a 2xx arrived, and then
//! ends exactly once: [`Event::CallEnded`] (hung up, with the duration from
//! answer to end), [`Event::CallFailed`] (a final non-2xx status) or
//! [`Event::CallForwarded`] (the user's forwarding sent the call on to
//! another user, whose own inbound leg then starts with the same
//! `call_id`). A
//! finished leg leaves the state; its `call_id` is remembered among the
//! last [`FINISHED_REMEMBERED`] finished legs so that a repeated step of
//! the proxy (a retransmission) never starts or ends it again.
//!
//! # Rules of a step
//!
//! - `Start` with the `call_id` of a leg in progress or recently finished:
//!   nothing (idempotent). For a deleted user: [`Error::FailedPrecondition`]
//!   (a disabled user's legs are recorded: the proxy answers 480 and
//!   records why). With [`MAX_LEGS_IN_PROGRESS`] legs in progress:
//!   [`Error::FailedPrecondition`].
//! - `ForwardSkipped` notes, on a leg in progress, a forwarding rule that
//!   was not taken ([`Event::CallForwardSkipped`]); the leg is unchanged.
//!   A repeated one is written again (the proxy sends each once).
//! - `Transferred` notes, on a leg in progress or among the recently
//!   finished ones, that the user transferred the call
//!   ([`Event::CallTransferred`]); the leg is unchanged. For a leg the
//!   user never had (or forgot): nothing.
//! - `Ringing`, `Answer`, `End`, `Fail`, `Forward`, `ForwardSkipped` for a leg not in progress: nothing,
//!   and no error (the proxy may repeat itself). `Ringing` of a leg already
//!   ringing or answered, and `Answer` of an answered leg: nothing.
//! - `End` of a leg never answered is recorded as [`Event::CallEnded`] with
//!   `duration_ms` 0 (the proxy normally sends `Fail` for those).
//!
//! # Presence
//!
//! Every step that changes a leg is followed, in the same decision, by a
//! [`Event::PresenceChanged`] when the user's presence changes; presence is
//! always [`registration::presence_of`] the bindings and legs.
//!
//! [`registration::presence_of`]: crate::registration::presence_of

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::registration::presence_of;
use crate::routing::SkipReason;
use crate::user::{Event, Status, User};
use crate::{Error, Result, Timestamp};

/// The most legs a user may have in progress at once; a `Start` beyond it
/// is refused. (A phone rarely has more than a handful of lines; this only
/// bounds the state of a misbehaving or attacked user.)
pub const MAX_LEGS_IN_PROGRESS: usize = 64;

/// How many finished `call_id`s a user remembers to ignore repeated steps.
pub const FINISHED_REMEMBERED: usize = 64;

/// Longest `call_id`, address, SIP Call-ID or contact accepted, in bytes.
pub const MAX_FIELD_LEN: usize = 1024;

/// Which side of the call a leg is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The caller's leg.
    Outbound,
    /// The callee's leg.
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// Who ended an answered call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HangupSide {
    Caller,
    Callee,
    /// Dialtone itself (timeout, node restart).
    System,
}

impl HangupSide {
    pub fn as_str(self) -> &'static str {
        match self {
            HangupSide::Caller => "caller",
            HangupSide::Callee => "callee",
            HangupSide::System => "system",
        }
    }
}

/// Why a leg ended or failed; `docs/events.md` says when each is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    NormalClearing,
    OriginatorCancel,
    UserBusy,
    NoAnswer,
    CallRejected,
    NotFound,
    Unavailable,
    Timeout,
    /// The leg's dialog state was lost by a crash of the node; the leg was
    /// closed when the node started again.
    NodeRestart,
    /// A ring group member's leg: another member answered the call.
    AnsweredElsewhere,
    /// The call was handed on by a transfer (REFER, RFC 3515): the
    /// transferor hung up after the transferee reported the new call
    /// answered, or the dialog was replaced by the transfer's new call
    /// (Replaces, RFC 3891).
    Transferred,
}

impl Cause {
    pub const ALL: [Cause; 11] = [
        Cause::NormalClearing,
        Cause::OriginatorCancel,
        Cause::UserBusy,
        Cause::NoAnswer,
        Cause::CallRejected,
        Cause::NotFound,
        Cause::Unavailable,
        Cause::Timeout,
        Cause::NodeRestart,
        Cause::AnsweredElsewhere,
        Cause::Transferred,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::NormalClearing => "normal_clearing",
            Cause::OriginatorCancel => "originator_cancel",
            Cause::UserBusy => "user_busy",
            Cause::NoAnswer => "no_answer",
            Cause::CallRejected => "call_rejected",
            Cause::NotFound => "not_found",
            Cause::Unavailable => "unavailable",
            Cause::Timeout => "timeout",
            Cause::NodeRestart => "node_restart",
            Cause::AnsweredElsewhere => "answered_elsewhere",
            Cause::Transferred => "transferred",
        }
    }
}

/// Why a call to a user went on to another target instead of ringing (or
/// after ringing) that user's phones: the condition of the forwarding rule
/// that fired. The names are RFC 5806's Diversion reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardReason {
    /// Forward always: the user's phones were not rung.
    Unconditional,
    /// Every phone of the user was busy (486/600), or the user was on
    /// another call and busy rules say so.
    UserBusy,
    /// Nobody answered within the rule's ring time.
    NoAnswer,
    /// No phone of the user was registered, or none could be reached.
    Unavailable,
    /// The user had do-not-disturb on.
    DoNotDisturb,
}

impl ForwardReason {
    pub const ALL: [ForwardReason; 5] = [
        ForwardReason::Unconditional,
        ForwardReason::UserBusy,
        ForwardReason::NoAnswer,
        ForwardReason::Unavailable,
        ForwardReason::DoNotDisturb,
    ];

    /// The stored name, and RFC 5806's `reason` token with `_` for `-`.
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardReason::Unconditional => "unconditional",
            ForwardReason::UserBusy => "user_busy",
            ForwardReason::NoAnswer => "no_answer",
            ForwardReason::Unavailable => "unavailable",
            ForwardReason::DoNotDisturb => "do_not_disturb",
        }
    }
}

/// How a call was transferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferKind {
    /// REFER to a target the transferor had not called (RFC 5589 s.6).
    Blind,
    /// REFER naming the transferor's call with the target, which the new
    /// call replaces (Refer-To with Replaces, RFC 3891; RFC 5589 s.7).
    Attended,
}

impl TransferKind {
    pub const ALL: [TransferKind; 2] = [TransferKind::Blind, TransferKind::Attended];

    pub fn as_str(self) -> &'static str {
        match self {
            TransferKind::Blind => "blind",
            TransferKind::Attended => "attended",
        }
    }
}

/// What the SIP proxy tells a user actor about one of its legs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallStep {
    /// A leg begins: the caller's INVITE was accepted (outbound), or is
    /// being routed to the callee (inbound). `from`/`to` are `user@domain`.
    Start {
        call_id: String,
        direction: Direction,
        from: String,
        to: String,
        sip_call_id: String,
    },
    /// The callee alerts (180/183).
    Ringing { call_id: String },
    /// A 2xx: `contact` is the callee's contact that answered.
    Answer { call_id: String, contact: String },
    /// The dialog ended (BYE, timeout, restart).
    End {
        call_id: String,
        cause: Cause,
        side: HangupSide,
    },
    /// A final non-2xx status (0 when there was none, e.g. a restart).
    Fail {
        call_id: String,
        sip_status: u16,
        cause: Cause,
    },
    /// The user's forwarding sent the call on to `to` (`user@domain`):
    /// the leg is over (its phones stopped ringing, or never rang), the
    /// call goes on with a leg of `to`'s.
    Forward {
        call_id: String,
        to: String,
        reason: ForwardReason,
    },
    /// A forwarding rule of the user (`rule`, to `to`) was not taken for
    /// this call, for `why`; the leg goes on.
    ForwardSkipped {
        call_id: String,
        to: String,
        rule: ForwardReason,
        why: SkipReason,
    },
    /// The user (`transferor`) transferred the call: the other party
    /// (`transferee`) called `target` as it asked, and that is call
    /// `new_call_id`. For an attended transfer, `replaced_call_id` is the
    /// transferor's call with the target that the new call replaced.
    /// Recorded on the transferor's leg of the original call, also just
    /// after that leg ended (a transferor may hang up first).
    Transferred {
        call_id: String,
        new_call_id: String,
        transferor: String,
        transferee: String,
        target: String,
        kind: TransferKind,
        replaced_call_id: Option<String>,
    },
}

impl CallStep {
    pub fn call_id(&self) -> &str {
        match self {
            CallStep::Start { call_id, .. }
            | CallStep::Ringing { call_id }
            | CallStep::Answer { call_id, .. }
            | CallStep::End { call_id, .. }
            | CallStep::Fail { call_id, .. }
            | CallStep::Forward { call_id, .. }
            | CallStep::ForwardSkipped { call_id, .. }
            | CallStep::Transferred { call_id, .. } => call_id,
        }
    }
}

/// Where a leg in progress is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LegState {
    Trying,
    Ringing,
    Answered,
}

impl LegState {
    pub fn as_str(self) -> &'static str {
        match self {
            LegState::Trying => "trying",
            LegState::Ringing => "ringing",
            LegState::Answered => "answered",
        }
    }
}

/// A leg in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallLeg {
    pub call_id: String,
    pub direction: Direction,
    pub from: String,
    pub to: String,
    pub sip_call_id: String,
    pub state: LegState,
    pub started_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_at: Option<Timestamp>,
    /// The contact that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<String>,
}

/// The legs of a user: those in progress, and the `call_id`s of the last
/// finished ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Legs {
    /// In progress, oldest started first; at most [`MAX_LEGS_IN_PROGRESS`].
    #[serde(default)]
    pub in_progress: Vec<CallLeg>,
    /// The last [`FINISHED_REMEMBERED`] finished `call_id`s, oldest first.
    #[serde(default)]
    pub finished: VecDeque<String>,
    /// When the user's last answered call ended: how long the user has
    /// been idle (ring groups' longest-idle strategy). (`default`: none, as
    /// in snapshots from before ring groups.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ended_at: Option<Timestamp>,
}

impl Legs {
    pub fn get(&self, call_id: &str) -> Option<&CallLeg> {
        self.in_progress.iter().find(|l| l.call_id == call_id)
    }

    pub fn is_finished(&self, call_id: &str) -> bool {
        self.finished.iter().any(|c| c == call_id)
    }

    pub fn is_empty(&self) -> bool {
        self.in_progress.is_empty()
    }

    /// Applies a call event (other events: nothing).
    pub(crate) fn apply(&mut self, event: &Event) {
        match event {
            Event::CallStarted {
                call_id,
                direction,
                from,
                to,
                sip_call_id,
                started_at,
            } if self.get(call_id).is_none() => {
                self.in_progress.push(CallLeg {
                    call_id: call_id.clone(),
                    direction: *direction,
                    from: from.clone(),
                    to: to.clone(),
                    sip_call_id: sip_call_id.clone(),
                    state: LegState::Trying,
                    started_at: *started_at,
                    answered_at: None,
                    contact: None,
                });
            }
            Event::CallRinging { call_id } => {
                if let Some(leg) = self
                    .leg_mut(call_id)
                    .filter(|l| l.state == LegState::Trying)
                {
                    leg.state = LegState::Ringing;
                }
            }
            Event::CallAnswered {
                call_id,
                contact,
                answered_at,
            } => {
                if let Some(leg) = self.leg_mut(call_id) {
                    leg.state = LegState::Answered;
                    leg.answered_at = Some(*answered_at);
                    leg.contact = Some(contact.clone());
                }
            }
            Event::CallEnded { call_id, .. }
            | Event::CallFailed { call_id, .. }
            | Event::CallForwarded { call_id, .. } => {
                if let Event::CallEnded { ended_at, .. } = event {
                    if self.get(call_id).is_some() {
                        self.last_ended_at = Some(*ended_at);
                    }
                }
                self.in_progress.retain(|l| l.call_id != *call_id);
                if !self.is_finished(call_id) {
                    self.finished.push_back(call_id.clone());
                    while self.finished.len() > FINISHED_REMEMBERED {
                        self.finished.pop_front();
                    }
                }
            }
            _ => {}
        }
    }

    fn leg_mut(&mut self, call_id: &str) -> Option<&mut CallLeg> {
        self.in_progress.iter_mut().find(|l| l.call_id == call_id)
    }
}

fn validate_text(field: &'static str, value: &str, allow_empty: bool) -> Result<()> {
    if !allow_empty && value.trim().is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.len() > MAX_FIELD_LEN {
        return Err(Error::invalid(
            field,
            format!("at most {MAX_FIELD_LEN} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

fn validate(step: &CallStep) -> Result<()> {
    validate_text("call_id", step.call_id(), false)?;
    match step {
        CallStep::Start {
            from,
            to,
            sip_call_id,
            ..
        } => {
            validate_text("from", from, false)?;
            validate_text("to", to, false)?;
            validate_text("sip_call_id", sip_call_id, false)
        }
        CallStep::Answer { contact, .. } => validate_text("contact", contact, true),
        CallStep::Forward { to, .. } | CallStep::ForwardSkipped { to, .. } => {
            validate_text("to", to, false)
        }
        CallStep::Transferred {
            new_call_id,
            transferor,
            transferee,
            target,
            kind,
            replaced_call_id,
            ..
        } => {
            validate_text("new_call_id", new_call_id, false)?;
            validate_text("transferor", transferor, false)?;
            validate_text("transferee", transferee, false)?;
            validate_text("target", target, false)?;
            match (kind, replaced_call_id) {
                (TransferKind::Blind, Some(_)) => Err(Error::invalid(
                    "replaced_call_id",
                    "a blind transfer replaces no call",
                )),
                (_, Some(replaced)) => validate_text("replaced_call_id", replaced, false),
                _ => Ok(()),
            }
        }
        CallStep::Fail { sip_status, .. }
            if *sip_status != 0 && !(300..=699).contains(sip_status) =>
        {
            Err(Error::invalid(
                "sip_status",
                format!("{sip_status} is not a final failure status (300 to 699, or 0 for none)"),
            ))
        }
        _ => Ok(()),
    }
}

/// The events of [`Command::Call`](crate::user::Command::Call).
pub(crate) fn decide(state: &User, step: &CallStep, now: Timestamp) -> Result<Vec<Event>> {
    if state.status == Status::Absent {
        return Err(Error::NotFound(state.address()));
    }
    validate(step)?;
    let legs = &state.calls;
    let event = match step {
        CallStep::Start {
            call_id,
            direction,
            from,
            to,
            sip_call_id,
        } => {
            if legs.get(call_id).is_some() || legs.is_finished(call_id) {
                return Ok(Vec::new());
            }
            if state.status == Status::Deleted {
                return Err(Error::FailedPrecondition(format!(
                    "user {} is deleted and cannot take part in calls",
                    state.address()
                )));
            }
            if legs.in_progress.len() >= MAX_LEGS_IN_PROGRESS {
                return Err(Error::FailedPrecondition(format!(
                    "user {} already has {MAX_LEGS_IN_PROGRESS} calls in progress, the most \
                     allowed; call {call_id} is refused",
                    state.address()
                )));
            }
            Event::CallStarted {
                call_id: call_id.clone(),
                direction: *direction,
                from: from.clone(),
                to: to.clone(),
                sip_call_id: sip_call_id.clone(),
                started_at: now,
            }
        }
        // Every other step addresses a leg in progress; anything else is a
        // repetition (or a step for a leg this user never had): nothing.
        CallStep::Ringing { call_id } => match legs.get(call_id) {
            Some(leg) if leg.state == LegState::Trying => Event::CallRinging {
                call_id: call_id.clone(),
            },
            _ => return Ok(Vec::new()),
        },
        CallStep::Answer { call_id, contact } => match legs.get(call_id) {
            Some(leg) if leg.state != LegState::Answered => Event::CallAnswered {
                call_id: call_id.clone(),
                contact: contact.clone(),
                answered_at: now,
            },
            _ => return Ok(Vec::new()),
        },
        CallStep::End {
            call_id,
            cause,
            side,
        } => match legs.get(call_id) {
            Some(leg) => Event::CallEnded {
                call_id: call_id.clone(),
                cause: *cause,
                hangup_side: *side,
                duration_ms: duration_ms(leg.answered_at, now),
                ended_at: now,
            },
            None => return Ok(Vec::new()),
        },
        CallStep::Fail {
            call_id,
            sip_status,
            cause,
        } => match legs.get(call_id) {
            Some(_) => Event::CallFailed {
                call_id: call_id.clone(),
                sip_status: *sip_status,
                cause: *cause,
                failed_at: now,
            },
            None => return Ok(Vec::new()),
        },
        CallStep::Forward {
            call_id,
            to,
            reason,
        } => match legs.get(call_id) {
            Some(_) => Event::CallForwarded {
                call_id: call_id.clone(),
                to: to.clone(),
                reason: *reason,
                forwarded_at: now,
            },
            None => return Ok(Vec::new()),
        },
        // Noted on a leg in progress; it changes nothing of the leg (so
        // no presence change either).
        CallStep::ForwardSkipped {
            call_id,
            to,
            rule,
            why,
        } => {
            return Ok(match legs.get(call_id) {
                Some(_) => vec![Event::CallForwardSkipped {
                    call_id: call_id.clone(),
                    to: to.clone(),
                    rule: *rule,
                    why: *why,
                }],
                None => Vec::new(),
            })
        }
        // Noted on the transferor's leg, which may have ended just before
        // (it hung up once the transferee accepted the REFER): a leg
        // remembered as finished takes it too. It changes nothing of the
        // leg.
        CallStep::Transferred {
            call_id,
            new_call_id,
            transferor,
            transferee,
            target,
            kind,
            replaced_call_id,
        } => {
            let known = legs.get(call_id).is_some() || legs.is_finished(call_id);
            return Ok(if known {
                vec![Event::CallTransferred {
                    call_id: call_id.clone(),
                    new_call_id: new_call_id.clone(),
                    transferor: transferor.clone(),
                    transferee: transferee.clone(),
                    target: target.clone(),
                    kind: *kind,
                    replaced_call_id: replaced_call_id.clone(),
                    transferred_at: now,
                }]
            } else {
                Vec::new()
            });
        }
    };
    let mut after = legs.clone();
    after.apply(&event);
    let mut events = vec![event];
    let presence = presence_of(&state.bindings, &after, state.dnd);
    if presence != state.presence {
        events.push(Event::PresenceChanged {
            presence,
            previous: state.presence,
        });
    }
    Ok(events)
}

/// Milliseconds from `answered_at` to `now`; 0 for a leg never answered
/// (or a clock that went back).
fn duration_ms(answered_at: Option<Timestamp>, now: Timestamp) -> u64 {
    answered_at
        .map(|at| u64::try_from(now.saturating_sub(at) / 1000).unwrap_or(0))
        .unwrap_or(0)
}
