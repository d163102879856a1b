//! The legs of one call, as the call events record them: one per user
//! taking part (the caller's outbound leg, the callee's inbound leg when
//! the callee is a user here), sharing the proxy's `call_id`. When the
//! callee forwards the call, its leg ends with a `Forwarded` step and the
//! user the call went to gets an inbound leg of its own.
//!
//! A ring group has no leg: each member a step rings gets an inbound leg
//! (to the group's address) while the step rings. A member that answers
//! becomes the callee; the others' legs fail (`AnsweredElsewhere`), and
//! a step that ends unanswered fails its members' legs before the next
//! step starts.

use crate::backend::{
    CallCause, CallDirection, CallRecord, CallStep, Diversion, HangupSide, RouteStep,
};

/// A ring group member's leg while its step rings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberLeg {
    /// `(domain, user)`.
    pub user: (String, String),
    /// Its ringing is recorded.
    pub rang: bool,
}

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
    /// The ring group the call is at, when its last forward (or the
    /// dialled name) led to a group: it has no leg; `callee` is then
    /// `None` until a member answers.
    pub group: Option<(String, String)>,
    /// The legs of the members the current step rings.
    pub members: Vec<MemberLeg>,
    /// The node's own application the call is at (ADR 0022, 0024): the
    /// voicemail box a forward led to (`voicemail:bob@example.com`), the
    /// conference room one led to (`conference:standup@example.com`), or
    /// the mailbox menu a feature code dialled. It has no leg; its answer
    /// is recorded on the caller's leg with this as the contact (not the
    /// signed URI the proxy reached it at).
    pub app: Option<String>,
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
        for member in &self.members {
            push(&member.user, CallDirection::Inbound);
        }
        out
    }

    /// The `Ringing` records when the callee alerts: the callee's leg,
    /// and the caller's unless it `caller_rang` already (with a user the
    /// call was forwarded from).
    pub fn ringing(&self, caller_rang: bool) -> Vec<CallRecord> {
        let mut out = Vec::with_capacity(2);
        if !caller_rang {
            out.push(self.record(&self.caller, CallStep::Ringing));
        }
        if let Some(callee) = &self.callee {
            out.push(self.record(callee, CallStep::Ringing));
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
        let Some(current) = self.callee.as_ref().or(self.group.as_ref()) else {
            return Vec::new();
        };
        let Some(first) = diversions.iter().rposition(|d| same_user(&d.from, current)) else {
            return Vec::new();
        };
        let from = format!("{}@{}", self.caller.1, self.caller.0);
        let mut out = Vec::with_capacity(2 * (diversions.len() - first));
        for d in &diversions[first..] {
            let to = format!("{}@{}", d.to.1, d.to.0);
            // A group forwards without a leg of its own (its members'
            // legs ended with its steps).
            if self.group.is_none() {
                let to = if d.to_group {
                    format!("group:{to}")
                } else if d.to_voicemail {
                    format!("voicemail:{to}")
                } else if d.to_conference {
                    format!("conference:{to}")
                } else {
                    to.clone()
                };
                out.push(self.record(
                    &d.from,
                    CallStep::Forwarded {
                        to,
                        reason: d.reason,
                    },
                ));
            }
            if d.to_group {
                self.group = Some(d.to.clone());
                self.callee = None;
                continue;
            }
            if d.to_voicemail {
                // A box has no leg; the call ends there.
                self.group = None;
                self.callee = None;
                self.app = Some(format!("voicemail:{to}"));
                continue;
            }
            if d.to_conference {
                // Nor has a room: the caller joins it.
                self.group = None;
                self.callee = None;
                self.app = Some(format!("conference:{to}"));
                continue;
            }
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
            self.group = None;
        }
        out
    }

    /// Everything a step records when it starts ringing: the forwards
    /// that lead to it ([`Legs::forward`]), its owner's rules not taken
    /// ([`Legs::skipped`]) and, for a step of a ring group, a leg for each
    /// member it rings. The flag: a new leg rings (its ringing is still to
    /// be recorded).
    pub fn step_starts(&mut self, step: &RouteStep) -> (Vec<CallRecord>, bool) {
        let mut out = self.forward(&step.diversions);
        let mut new_leg = !out.is_empty();
        if step.group.is_some() && self.group.is_none() {
            // The dialled name is the group (no forward led here).
            self.group = step.group.clone();
            self.callee = None;
        }
        out.extend(self.skipped(&step.skipped));
        // Members' legs are to the group, or to the user whose find-me
        // targets they are.
        let to = self
            .group
            .as_ref()
            .filter(|_| step.group.is_some())
            .or(self.callee.as_ref())
            .map(|(domain, user)| format!("{user}@{domain}"));
        if let Some(to) = to {
            let from = format!("{}@{}", self.caller.1, self.caller.0);
            for target in &step.targets {
                let Some(member) = &target.member else {
                    continue;
                };
                if self.members.iter().any(|m| same_user(&m.user, member)) {
                    continue;
                }
                out.push(self.record(
                    member,
                    CallStep::Start {
                        direction: CallDirection::Inbound,
                        from: from.clone(),
                        to: to.clone(),
                        sip_call_id: self.sip_call_id.clone(),
                    },
                ));
                self.members.push(MemberLeg {
                    user: member.clone(),
                    rang: false,
                });
                new_leg = true;
            }
        }
        (out, new_leg)
    }

    /// The members' legs of a step that ended without an answer: each
    /// fails with the step's status.
    pub fn step_ends(&mut self, sip_status: u16, cause: CallCause) -> Vec<CallRecord> {
        let members = std::mem::take(&mut self.members);
        members
            .iter()
            .map(|m| self.record(&m.user, CallStep::Fail { sip_status, cause }))
            .collect()
    }

    /// The `Ringing` records when a target of `member` (a ring group
    /// member) alerts: its leg's, once, and the caller's unless it
    /// `caller_rang` already.
    pub fn member_ringing(
        &mut self,
        member: &(String, String),
        caller_rang: bool,
    ) -> Vec<CallRecord> {
        let mut out = Vec::with_capacity(2);
        if !caller_rang {
            out.push(self.record(&self.caller, CallStep::Ringing));
        }
        if let Some(m) = self
            .members
            .iter_mut()
            .find(|m| !m.rang && same_user(&m.user, member))
        {
            m.rang = true;
            let user = m.user.clone();
            out.push(self.record(&user, CallStep::Ringing));
        }
        out
    }

    /// A target of `member` answered (`None`: one of the callee's own
    /// phones): it is the callee from now on, and the legs of the other
    /// members, and of a callee whose find-me target answered, fail
    /// (answered elsewhere). The records of those failures; the answer
    /// itself is recorded with [`Legs::records`] afterwards, on the
    /// caller's and the callee's leg.
    pub fn answered_by(&mut self, member: Option<&(String, String)>) -> Vec<CallRecord> {
        let members = std::mem::take(&mut self.members);
        let mut out = Vec::with_capacity(members.len() + 1);
        let Some(member) = member else {
            for m in &members {
                out.push(self.record(
                    &m.user,
                    CallStep::Fail {
                        sip_status: 487,
                        cause: CallCause::AnsweredElsewhere,
                    },
                ));
            }
            return out;
        };
        if let Some(callee) = self.callee.take() {
            if !same_user(&callee, member) {
                out.push(self.record(
                    &callee,
                    CallStep::Fail {
                        sip_status: 487,
                        cause: CallCause::AnsweredElsewhere,
                    },
                ));
            }
        }
        for m in &members {
            if same_user(&m.user, member) {
                self.callee = Some(m.user.clone());
            } else {
                out.push(self.record(
                    &m.user,
                    CallStep::Fail {
                        sip_status: 487,
                        cause: CallCause::AnsweredElsewhere,
                    },
                ));
            }
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

    /// The contact an answer from `target_uri` is recorded with: the
    /// application's name when the call is at one of the node's own
    /// applications, else the URI that answered.
    pub fn answered_contact(&self, target_uri: &str) -> String {
        self.app.clone().unwrap_or_else(|| target_uri.to_owned())
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
            group: None,
            members: Vec::new(),
            app: None,
        }
    }

    fn diversion(from: &str, to: &str) -> Diversion {
        Diversion {
            from: party(from),
            to: party(to),
            reason: DiversionReason::NoAnswer,
            to_group: false,
            to_voicemail: false,
            to_conference: false,
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

    fn member_target(user: &str) -> crate::backend::RouteTarget {
        crate::backend::RouteTarget {
            uri: format!("sip:{user}@192.0.2.1"),
            flow: crate::transport::Flow::new(
                crate::backend::Transport::Udp,
                "192.0.2.1:5060".parse().unwrap(),
            ),
            member: Some(party(user)),
        }
    }

    fn group_step(members: &[&str]) -> RouteStep {
        RouteStep {
            targets: members.iter().map(|m| member_target(m)).collect(),
            ring_timeout: None,
            next: crate::backend::NextSteps::NONE,
            diversions: Vec::new(),
            skipped: Vec::new(),
            group: Some(party("sales")),
        }
    }

    #[test]
    fn a_group_has_no_leg_and_its_members_legs_end_once_each() {
        let mut legs = Legs {
            callee: None,
            group: Some(party("sales")),
            dialled: "sales@example.com".to_owned(),
            ..legs()
        };
        // Sequential: bob's turn, then carol's.
        let (records, new_leg) = legs.step_starts(&group_step(&["bob"]));
        assert!(new_leg);
        assert_eq!(
            steps(&records),
            [("bob".into(), "start Inbound sales@example.com".into())]
        );
        assert_eq!(
            steps(&legs.member_ringing(&party("bob"), false)),
            [
                ("alice".into(), "ringing".into()),
                ("bob".into(), "ringing".into())
            ]
        );
        assert!(legs.member_ringing(&party("bob"), true).is_empty());
        let ended = legs.step_ends(480, CallCause::NoAnswer);
        assert_eq!(ended.len(), 1);
        assert!(matches!(
            ended[0].step,
            CallStep::Fail {
                sip_status: 480,
                ..
            }
        ));
        // Simultaneous: carol and dave; dave answers, carol's leg fails.
        let (records, _) = legs.step_starts(&group_step(&["carol", "dave"]));
        assert_eq!(records.len(), 2);
        let others = legs.answered_by(Some(&party("dave")));
        assert_eq!(others.len(), 1);
        assert_eq!(others[0].user, "carol");
        assert!(matches!(
            others[0].step,
            CallStep::Fail {
                cause: CallCause::AnsweredElsewhere,
                ..
            }
        ));
        assert_eq!(legs.callee, Some(party("dave")));
        // The answer and the end are the caller's and dave's only.
        let users: Vec<String> = legs
            .end(CallCause::NormalClearing, HangupSide::Caller)
            .into_iter()
            .map(|r| r.user)
            .collect();
        assert_eq!(users, ["alice", "dave"]);
    }

    #[test]
    fn a_forward_to_a_voicemail_box_ends_the_leg_and_starts_none() {
        let mut legs = legs();
        let to_box = Diversion {
            to_voicemail: true,
            to_conference: false,
            ..diversion("bob", "bob")
        };
        let records = legs.forward(std::slice::from_ref(&to_box));
        assert_eq!(
            steps(&records),
            [("bob".into(), "forwarded voicemail:bob@example.com".into())]
        );
        assert_eq!(legs.callee, None, "a box has no leg");
        // The box answers under its name, not the signed URI it was
        // reached at.
        assert_eq!(
            legs.answered_contact("sip:127.0.0.1:5060;dt-app=vm-deposit.x;dt-sig=y"),
            "voicemail:bob@example.com"
        );
        // The answer and the end are the caller's only.
        let users: Vec<String> = legs
            .end(CallCause::NormalClearing, HangupSide::Caller)
            .into_iter()
            .map(|r| r.user)
            .collect();
        assert_eq!(users, ["alice"]);
    }

    #[test]
    fn a_forward_to_a_conference_room_ends_the_leg_and_the_room_answers() {
        let mut legs = legs();
        let to_room = Diversion {
            to_conference: true,
            ..diversion("bob", "standup")
        };
        let records = legs.forward(std::slice::from_ref(&to_room));
        assert_eq!(
            steps(&records),
            [(
                "bob".into(),
                "forwarded conference:standup@example.com".into()
            )]
        );
        assert_eq!(legs.callee, None, "a room has no leg");
        assert_eq!(
            legs.answered_contact("sip:app@127.0.0.1:5060;dt-app=conf-fwd.x;dt-sig=y"),
            "conference:standup@example.com"
        );
        let users: Vec<String> = legs
            .end(CallCause::NormalClearing, HangupSide::Caller)
            .into_iter()
            .map(|r| r.user)
            .collect();
        assert_eq!(users, ["alice"]);
    }

    #[test]
    fn a_group_forwards_without_a_leg_of_its_own() {
        let mut legs = legs();
        // bob forwards to the group; the group's no-answer target is carol.
        let to_group = Diversion {
            to_group: true,
            to_voicemail: false,
            to_conference: false,
            ..diversion("bob", "sales")
        };
        let records = legs.forward(std::slice::from_ref(&to_group));
        assert_eq!(
            steps(&records),
            [("bob".into(), "forwarded group:sales@example.com".into())]
        );
        assert_eq!(legs.callee, None);
        let records = legs.forward(&[to_group, diversion("sales", "carol")]);
        assert_eq!(
            steps(&records),
            [("carol".into(), "start Inbound carol@example.com".into())]
        );
        assert_eq!(legs.callee, Some(party("carol")));
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
