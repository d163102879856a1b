//! The legs of one call, as the call events record them: one per user
//! taking part (the caller's outbound leg, the callee's inbound leg when
//! the callee is a user here), sharing the proxy's `call_id`.

use crate::backend::{CallCause, CallDirection, CallRecord, CallStep, HangupSide};

/// The legs of one call and their shared identity.
#[derive(Debug, Clone)]
pub struct Legs {
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
    pub fn records(&self, step: impl Fn(CallDirection) -> CallStep) -> Vec<CallRecord> {
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

    pub fn end(&self, cause: CallCause, side: HangupSide) -> Vec<CallRecord> {
        self.records(|_| CallStep::End { cause, side })
    }
}

/// Names a durable recording of call steps that the engine waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordToken(pub(super) u64);
