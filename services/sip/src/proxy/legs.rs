//! The legs of one call, as the call events record them: one per user
//! taking part (the caller's outbound leg, the callee's inbound leg when
//! the callee is a user here), sharing the proxy's `call_id`. When the
//! callee forwards the call, its leg ends with a `Forwarded` step and the
//! user the call went to gets an inbound leg of its own.

use crate::backend::{CallCause, CallDirection, CallRecord, CallStep, Diversion, HangupSide};

/// The legs of one call and their shared identity.
#[derive(Debug, Clone)]
pub struct Legs {
    pub call_id: String,
    pub sip_call_id: String,
    /// `(domain, user)` of the caller.
    pub caller: (String, String),
    /// `(domain, user)` of the callee whose inbound leg is in progress,
    /// when the callee is a user here: the dialled user, or the user the
    /// call was last forwarded to.
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

    /// The `Ringing` records when the callee alerts: the callee's leg,
    /// and the caller's unless it `caller_rang` already (with a user the
    /// call was forwarded from).
    pub fn ringing(&self, caller_rang: bool) -> Vec<CallRecord> {
        let mut out = self.records(|_| CallStep::Ringing);
        if caller_rang {
            // `records` puts the caller's first.
            out.remove(0);
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

    /// The records of the forwards in `diversions` (the forwards that lead
    /// to the step about to ring) that are not recorded yet: each
    /// forwarding user's leg ends with `Forwarded`, the user it went to
    /// starts an inbound leg. Afterwards the last `to` is the callee.
    /// Forwards already taken are recognised by the current callee: the
    /// list is recorded from the forward made by it.
    pub fn forward(&mut self, diversions: &[Diversion]) -> Vec<CallRecord> {
        let Some(current) = &self.callee else {
            return Vec::new();
        };
        let Some(first) = diversions.iter().rposition(|d| same_user(&d.from, current)) else {
            return Vec::new();
        };
        let from = format!("{}@{}", self.caller.1, self.caller.0);
        let mut out = Vec::with_capacity(2 * (diversions.len() - first));
        for d in &diversions[first..] {
            let to = format!("{}@{}", d.to.1, d.to.0);
            out.push(self.record(
                &d.from,
                CallStep::Forwarded {
                    to: to.clone(),
                    reason: d.reason,
                },
            ));
            out.push(self.record(
                &d.to,
                CallStep::Start {
                    direction: CallDirection::Inbound,
                    from: from.clone(),
                    to,
                    sip_call_id: self.sip_call_id.clone(),
                },
            ));
            self.callee = Some(d.to.clone());
        }
        out
    }

    /// The records of `skipped` on the current callee's leg.
    pub fn skipped(&self, skipped: &[crate::backend::SkippedForward]) -> Vec<CallRecord> {
        let Some(callee) = &self.callee else {
            return Vec::new();
        };
        skipped
            .iter()
            .map(|s| self.record(callee, CallStep::ForwardSkipped(s.clone())))
            .collect()
    }

    fn record(&self, (domain, user): &(String, String), step: CallStep) -> CallRecord {
        CallRecord {
            call_id: self.call_id.clone(),
            domain: domain.clone(),
            user: user.clone(),
            step,
            sip_call_id: self.sip_call_id.clone(),
        }
    }

    pub fn fail(&self, sip_status: u16, cause: CallCause) -> Vec<CallRecord> {
        self.records(|_| CallStep::Fail { sip_status, cause })
    }

    pub fn end(&self, cause: CallCause, side: HangupSide) -> Vec<CallRecord> {
        self.records(|_| CallStep::End { cause, side })
    }
}

/// The same user: domains compare case-insensitively, user names exactly
/// (RFC 3261 s.19.1.4).
fn same_user(a: &(String, String), b: &(String, String)) -> bool {
    a.1 == b.1 && a.0.eq_ignore_ascii_case(&b.0)
}

/// Names a durable recording of call steps that the engine waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordToken(pub(super) u64);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::DiversionReason;

    fn party(user: &str) -> (String, String) {
        ("example.com".to_owned(), user.to_owned())
    }

    fn legs() -> Legs {
        Legs {
            call_id: "c1".to_owned(),
            sip_call_id: "s1".to_owned(),
            caller: party("alice"),
            callee: Some(party("bob")),
            dialled: "bob@example.com".to_owned(),
        }
    }

    fn diversion(from: &str, to: &str) -> Diversion {
        Diversion {
            from: party(from),
            to: party(to),
            reason: DiversionReason::NoAnswer,
        }
    }

    /// (user, step) of each record.
    fn steps(records: &[CallRecord]) -> Vec<(String, String)> {
        records
            .iter()
            .map(|r| {
                let step = match &r.step {
                    CallStep::Start { direction, to, .. } => format!("start {direction:?} {to}"),
                    CallStep::Forwarded { to, .. } => format!("forwarded {to}"),
                    CallStep::Ringing => "ringing".to_owned(),
                    other => format!("{other:?}"),
                };
                (r.user.clone(), step)
            })
            .collect()
    }

    #[test]
    fn forwards_are_recorded_once_each_from_the_current_callee() {
        let mut legs = legs();
        // The dialled user's own step: nothing to record.
        assert!(legs.forward(&[]).is_empty());
        let chain = [diversion("bob", "carol"), diversion("carol", "dave")];
        // A step two forwards away records both, in order.
        assert_eq!(
            steps(&legs.forward(&chain)),
            [
                ("bob".into(), "forwarded carol@example.com".into()),
                ("carol".into(), "start Inbound carol@example.com".into()),
                ("carol".into(), "forwarded dave@example.com".into()),
                ("dave".into(), "start Inbound dave@example.com".into()),
            ]
        );
        assert_eq!(legs.callee, Some(party("dave")));
        // The same chain again (another step of dave's): nothing new.
        assert!(legs.forward(&chain).is_empty());
        // Ringing after a forward: the new callee's leg only.
        assert_eq!(
            steps(&legs.ringing(true)),
            [("dave".into(), "ringing".into())]
        );
        assert_eq!(
            steps(&legs.ringing(false)),
            [
                ("alice".into(), "ringing".into()),
                ("dave".into(), "ringing".into())
            ]
        );
    }

    #[test]
    fn a_step_one_forward_further_records_only_the_new_forward() {
        let mut legs = legs();
        legs.forward(&[diversion("bob", "carol")]);
        let records = legs.forward(&[diversion("bob", "carol"), diversion("carol", "dave")]);
        assert_eq!(
            steps(&records),
            [
                ("carol".into(), "forwarded dave@example.com".into()),
                ("dave".into(), "start Inbound dave@example.com".into()),
            ]
        );
    }
}
