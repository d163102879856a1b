//! A user's call forwarding rules and do-not-disturb: what they are, how a
//! target is written, and what makes a setting valid. What the rules do to
//! a call is decided in [`crate::routing`].
//!
//! # Targets
//!
//! Written the same way everywhere (API, CLI, stored events):
//!
//! | written              | meaning                                          |
//! |----------------------|--------------------------------------------------|
//! | `bob`                | the user `bob` of the forwarding user's domain    |
//! | `bob@other.example`  | a user of another domain                         |
//! | `+15551234567`       | an external number (E.164: `+`, 2 to 15 digits)   |
//! | `voicemail`          | the forwarding user's own voicemail box          |
//! | `voicemail:bob`      | another user's voicemail box                     |
//! | `group:sales`        | a ring group of the forwarding user's domain      |
//! | `conference:standup` | a conference room of the forwarding user's domain |
//!
//! `group:` and `conference:` take another domain's names as users do
//! (`conference:standup@other.example`).
//!
//! A target is stored in its complete form ([`ForwardTarget`]'s
//! `Display`): `bob` set by `alice@example.com` is stored as
//! `bob@example.com`, so a stored rule never depends on where it is read.
//! `voicemail`, `group:` and `conference:` are reserved words: a user
//! actually named `voicemail` is written `voicemail@example.com`.
//!
//! Only the form is checked here. Whether a target can be called (the user
//! exists, its domain is active and the forwarding user's domain may call
//! it, a trunk exists for numbers) depends on other aggregates: the
//! provisioning use case checks it when a rule is set, and routing checks
//! it again for every call (things change).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::names::UserAddress;
use crate::schedule::{LocalTime, TimeCondition, TimeZone};
use crate::{DomainName, Error, Result, Timestamp, UserName};

/// Ring time before a no-answer rule forwards, when none is given.
pub const DEFAULT_NO_ANSWER_SECS: u32 = 20;
/// Bounds of a no-answer rule's ring time, in seconds.
pub const MIN_NO_ANSWER_SECS: u32 = 1;
pub const MAX_NO_ANSWER_SECS: u32 = 300;
/// Longest written target accepted, in bytes.
pub const MAX_TARGET_LEN: usize = 320;

/// Where a forwarded call goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ForwardTarget {
    /// A user, in this domain or another.
    User(UserAddress),
    /// An external number in E.164 form, `+` included.
    Number(String),
    /// A user's voicemail box.
    Voicemail(UserAddress),
    /// A ring group: `name` in `domain`.
    Group(UserAddress),
    /// A conference room: `name` in `domain` (ADR 0025). The forwarded
    /// caller joins the room as if it had dialled it (its PIN included).
    Conference(UserAddress),
}

impl ForwardTarget {
    /// Parses a target as written by a user of `home` (the domain that
    /// completes `bob`, `voicemail` and `group:sales`); `owner` is the user
    /// whose box plain `voicemail` means.
    pub fn parse(input: &str, owner: &UserAddress) -> Result<Self> {
        let field = "target";
        let text = input.trim();
        if text.is_empty() {
            return Err(Error::invalid(field, "must not be empty"));
        }
        if text.len() > MAX_TARGET_LEN {
            return Err(Error::invalid(
                field,
                format!("at most {MAX_TARGET_LEN} characters"),
            ));
        }
        let home = &owner.domain;
        let address = |written: &str| -> Result<UserAddress> {
            if written.contains('@') {
                UserAddress::parse(written)
            } else {
                Ok(UserAddress {
                    username: UserName::parse(written)?,
                    domain: home.clone(),
                })
            }
        };
        if text.eq_ignore_ascii_case("voicemail") {
            return Ok(ForwardTarget::Voicemail(owner.clone()));
        }
        if let Some(rest) = strip_prefix_ignore_case(text, "voicemail:") {
            return Ok(ForwardTarget::Voicemail(address(rest)?));
        }
        if let Some(rest) = strip_prefix_ignore_case(text, "group:") {
            return Ok(ForwardTarget::Group(address(rest)?));
        }
        if let Some(rest) = strip_prefix_ignore_case(text, "conference:") {
            return Ok(ForwardTarget::Conference(address(rest)?));
        }
        if let Some(digits) = text.strip_prefix('+') {
            if !digits.contains('@') {
                if !(2..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(Error::invalid(
                        field,
                        format!(
                            "'{text}' is not an E.164 number ('+' and 2 to 15 digits, no spaces)"
                        ),
                    ));
                }
                return Ok(ForwardTarget::Number(text.to_owned()));
            }
        }
        address(text).map(ForwardTarget::User).map_err(|e| match e {
            Error::Invalid { reason, .. } => Error::invalid(
                field,
                format!(
                    "'{text}' is not a target (a user, user@domain, +E.164 number, \
                     voicemail[:user], group:name or conference:room): {reason}"
                ),
            ),
            other => other,
        })
    }

    /// The user this target rings directly, if it is one.
    pub fn user(&self) -> Option<&UserAddress> {
        match self {
            ForwardTarget::User(a) => Some(a),
            _ => None,
        }
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

impl fmt::Display for ForwardTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardTarget::User(a) => write!(f, "{a}"),
            ForwardTarget::Number(n) => f.write_str(n),
            ForwardTarget::Voicemail(a) => write!(f, "voicemail:{a}"),
            ForwardTarget::Group(a) => write!(f, "group:{a}"),
            ForwardTarget::Conference(a) => write!(f, "conference:{a}"),
        }
    }
}

impl TryFrom<String> for ForwardTarget {
    type Error = Error;
    /// The stored (complete) form: every address has its domain.
    fn try_from(value: String) -> Result<Self> {
        let complete = |rest: &str| UserAddress::parse(rest);
        if let Some(rest) = value.strip_prefix("voicemail:") {
            return complete(rest).map(ForwardTarget::Voicemail);
        }
        if let Some(rest) = value.strip_prefix("group:") {
            return complete(rest).map(ForwardTarget::Group);
        }
        if let Some(rest) = value.strip_prefix("conference:") {
            return complete(rest).map(ForwardTarget::Conference);
        }
        if value.starts_with('+') && !value.contains('@') {
            // Re-validated with any owner: a number does not use it.
            let anyone = UserAddress {
                username: UserName::parse("x")?,
                domain: DomainName::parse("invalid")?,
            };
            return ForwardTarget::parse(&value, &anyone);
        }
        complete(&value).map(ForwardTarget::User)
    }
}

impl From<ForwardTarget> for String {
    fn from(value: ForwardTarget) -> Self {
        value.to_string()
    }
}

/// Forward when nobody answers within `after_secs`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NoAnswerRule {
    pub target: ForwardTarget,
    pub after_secs: u32,
}

/// A user's forwarding rules. Each condition has at most one target.
///
/// - `always`: the user's phones are not rung; every call goes to the
///   target.
/// - `busy`: every phone rung answered busy (486/600), or the user has
///   do-not-disturb on.
/// - `no_answer`: the phones rang `after_secs` without an answer (their
///   ringing is cancelled).
/// - `unavailable`: no phone is registered, or none could be reached.
///
/// A rule with a time condition in `when` applies only while the condition
/// holds, in the time zone of the forwarding user's domain (e.g. forward
/// always to a mobile outside business hours); outside it the rule is as
/// if it did not exist.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forwarding {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub always: Option<ForwardTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy: Option<ForwardTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_answer: Option<NoAnswerRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<ForwardTarget>,
    #[serde(default, skip_serializing_if = "RuleTimes::is_empty")]
    pub when: RuleTimes,
    /// Find-me/follow-me: after the user's own phones rang alone for a
    /// while, other users' phones ring too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_me: Option<FollowMe>,
}

/// Most targets of a follow-me list.
pub const MAX_FOLLOW_ME_TARGETS: usize = 10;
/// How long the own phones ring alone first, when not given.
pub const DEFAULT_FOLLOW_ME_AFTER_SECS: u32 = 10;
/// Each target's ring time in a sequential follow-me, when not given.
pub const DEFAULT_FOLLOW_ME_RING_SECS: u32 = 20;

/// Find-me/follow-me: a user's ring plan. The user's own phones ring
/// alone for `after_secs`, then keep ringing while the `targets` ring
/// too: all at once, or (`sequential`) one after the other for
/// `ring_secs` each. The first phone to answer takes the call. The
/// targets' own forwarding rules are not followed (their phones ring or
/// they are skipped), as for ring group members.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FollowMe {
    pub targets: Vec<ForwardTarget>,
    /// 0: the targets ring with the own phones from the start.
    pub after_secs: u32,
    pub sequential: bool,
    pub ring_secs: u32,
}

/// The time conditions of a user's forwarding rules, by rule; a rule
/// without one always applies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleTimes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub always: Option<TimeCondition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy: Option<TimeCondition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_answer: Option<TimeCondition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<TimeCondition>,
}

impl RuleTimes {
    pub fn is_empty(&self) -> bool {
        *self == RuleTimes::default()
    }

    /// Every condition, with the rule it is for.
    pub fn conditions(&self) -> impl Iterator<Item = (&'static str, &TimeCondition)> {
        [
            ("always", self.always.as_ref()),
            ("busy", self.busy.as_ref()),
            ("no_answer", self.no_answer.as_ref()),
            ("unavailable", self.unavailable.as_ref()),
        ]
        .into_iter()
        .filter_map(|(name, c)| c.map(|c| (name, c)))
    }
}

/// One of a user's forwarding rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    Always,
    Busy,
    NoAnswer,
    Unavailable,
}

impl Forwarding {
    /// The target of `rule` when the user has that rule and it applies at
    /// `now` in `tz` (the forwarding user's domain's time zone): it has no
    /// time condition, or its condition holds.
    pub fn target_at(&self, rule: Rule, now: Timestamp, tz: &TimeZone) -> Option<&ForwardTarget> {
        self.target_when(rule, || LocalTime::new(now, tz))
    }

    /// [`Forwarding::target_at`] with the moment read on the wall clock of
    /// the zone by `local`, which is called only when the rule has a time
    /// condition: a caller testing several rules at one moment reads the
    /// clock at most once.
    pub fn target_when(
        &self,
        rule: Rule,
        local: impl FnOnce() -> LocalTime,
    ) -> Option<&ForwardTarget> {
        let (target, when) = match rule {
            Rule::Always => (self.always.as_ref(), &self.when.always),
            Rule::Busy => (self.busy.as_ref(), &self.when.busy),
            Rule::NoAnswer => (
                self.no_answer.as_ref().map(|r| &r.target),
                &self.when.no_answer,
            ),
            Rule::Unavailable => (self.unavailable.as_ref(), &self.when.unavailable),
        };
        target.filter(|_| when.as_ref().is_none_or(|c| c.holds_local(&local())))
    }

    /// No rule at all.
    pub fn is_off(&self) -> bool {
        *self == Forwarding::default()
    }

    /// Every target of the rules, with the condition it is for (follow-me
    /// targets are in [`Forwarding::follow_me`]).
    pub fn targets(&self) -> impl Iterator<Item = (&'static str, &ForwardTarget)> {
        [
            ("always", self.always.as_ref()),
            ("busy", self.busy.as_ref()),
            ("no_answer", self.no_answer.as_ref().map(|r| &r.target)),
            ("unavailable", self.unavailable.as_ref()),
        ]
        .into_iter()
        .filter_map(|(name, t)| t.map(|t| (name, t)))
    }
}

/// A change of some rules: `None` keeps a rule, `Some(None)` removes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardingPatch {
    pub always: Option<Option<ForwardTarget>>,
    pub busy: Option<Option<ForwardTarget>>,
    /// A new target for the no-answer rule (keeping its ring time, or the
    /// default for a new rule), or its removal.
    pub no_answer: Option<Option<ForwardTarget>>,
    /// A new ring time for the no-answer rule; refused when the result has
    /// no no-answer rule.
    pub no_answer_after_secs: Option<u32>,
    pub unavailable: Option<Option<ForwardTarget>>,
    /// New time conditions, by rule: `Some(None)` removes a rule's
    /// condition (the rule then always applies). Removing a rule removes
    /// its condition; a condition for a rule that does not exist is
    /// refused.
    pub when: RuleTimesPatch,
    /// Remove every rule first (then apply the rest of the patch).
    pub clear: bool,
    /// Follow-me: `Some(None)` removes it.
    pub follow_me: Option<Option<FollowMePatch>>,
}

/// A new follow-me, or a change of the one in force: `None` keeps a
/// setting (or takes its default for a new one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FollowMePatch {
    pub targets: Option<Vec<ForwardTarget>>,
    pub after_secs: Option<u32>,
    pub sequential: Option<bool>,
    pub ring_secs: Option<u32>,
}

impl FollowMePatch {
    fn apply(&self, current: Option<&FollowMe>, owner: &UserAddress) -> Result<FollowMe> {
        let mut next = current.cloned().unwrap_or(FollowMe {
            targets: Vec::new(),
            after_secs: DEFAULT_FOLLOW_ME_AFTER_SECS,
            sequential: false,
            ring_secs: DEFAULT_FOLLOW_ME_RING_SECS,
        });
        if let Some(t) = &self.targets {
            next.targets = t.clone();
        }
        if let Some(s) = self.after_secs {
            next.after_secs = s;
        }
        if let Some(b) = self.sequential {
            next.sequential = b;
        }
        if let Some(s) = self.ring_secs {
            next.ring_secs = s;
        }
        let field = "follow_me";
        if next.targets.is_empty() {
            return Err(Error::invalid(
                field,
                "needs at least one target (to remove follow-me, turn it off)",
            ));
        }
        if next.targets.len() > MAX_FOLLOW_ME_TARGETS {
            return Err(Error::invalid(
                field,
                format!(
                    "at most {MAX_FOLLOW_ME_TARGETS} targets, got {}",
                    next.targets.len()
                ),
            ));
        }
        for (i, t) in next.targets.iter().enumerate() {
            if next.targets[..i].contains(t) {
                return Err(Error::invalid(field, format!("{t} is listed twice")));
            }
            if t.user() == Some(owner) {
                return Err(Error::invalid(
                    field,
                    format!("{owner} cannot follow itself: its own phones always ring"),
                ));
            }
        }
        if next.after_secs > MAX_NO_ANSWER_SECS {
            return Err(Error::invalid(
                "follow_me_after_secs",
                format!(
                    "must be between 0 and {MAX_NO_ANSWER_SECS} seconds, got {}",
                    next.after_secs
                ),
            ));
        }
        ring_time("follow_me_ring_secs", next.ring_secs)?;
        Ok(next)
    }
}

/// A ring time (`field`, in seconds) within
/// [`MIN_NO_ANSWER_SECS`]..=[`MAX_NO_ANSWER_SECS`]: forwarding's, follow-me's
/// and ring groups'.
pub(crate) fn ring_time(field: &'static str, secs: u32) -> Result<()> {
    if (MIN_NO_ANSWER_SECS..=MAX_NO_ANSWER_SECS).contains(&secs) {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!(
                "must be between {MIN_NO_ANSWER_SECS} and {MAX_NO_ANSWER_SECS} seconds, got {secs}"
            ),
        ))
    }
}

/// A change of the rules' time conditions: `None` keeps one,
/// `Some(None)` removes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleTimesPatch {
    pub always: Option<Option<TimeCondition>>,
    pub busy: Option<Option<TimeCondition>>,
    pub no_answer: Option<Option<TimeCondition>>,
    pub unavailable: Option<Option<TimeCondition>>,
}

impl ForwardingPatch {
    /// The rules after the patch, validated; `owner` is the user whose
    /// rules they are (a rule may not forward to that user's own phones).
    pub fn apply(&self, current: &Forwarding, owner: &UserAddress) -> Result<Forwarding> {
        let mut next = if self.clear {
            Forwarding::default()
        } else {
            current.clone()
        };
        if let Some(f) = &self.follow_me {
            next.follow_me = match f {
                None => None,
                Some(patch) => Some(patch.apply(next.follow_me.as_ref(), owner)?),
            };
        }
        if let Some(t) = &self.always {
            next.always = t.clone();
        }
        if let Some(t) = &self.busy {
            next.busy = t.clone();
        }
        if let Some(t) = &self.unavailable {
            next.unavailable = t.clone();
        }
        if let Some(t) = &self.no_answer {
            next.no_answer = t.clone().map(|target| NoAnswerRule {
                target,
                after_secs: next
                    .no_answer
                    .as_ref()
                    .map_or(DEFAULT_NO_ANSWER_SECS, |r| r.after_secs),
            });
        }
        if let Some(secs) = self.no_answer_after_secs {
            ring_time("no_answer_after_secs", secs)?;
            match &mut next.no_answer {
                Some(rule) => rule.after_secs = secs,
                None => {
                    return Err(Error::invalid(
                        "no_answer_after_secs",
                        "there is no no-answer rule to apply it to (give a no-answer target)",
                    ))
                }
            }
        }
        let w = &self.when;
        for (patch, current) in [
            (&w.always, &mut next.when.always),
            (&w.busy, &mut next.when.busy),
            (&w.no_answer, &mut next.when.no_answer),
            (&w.unavailable, &mut next.when.unavailable),
        ] {
            if let Some(c) = patch {
                *current = c.clone();
            }
        }
        // A removed rule takes its condition with it.
        let t = &mut next.when;
        if next.always.is_none() {
            t.always = None;
        }
        if next.busy.is_none() {
            t.busy = None;
        }
        if next.no_answer.is_none() {
            t.no_answer = None;
        }
        if next.unavailable.is_none() {
            t.unavailable = None;
        }
        for (rule, given) in [
            ("always", &w.always),
            ("busy", &w.busy),
            ("no_answer", &w.no_answer),
            ("unavailable", &w.unavailable),
        ] {
            let exists = next.targets().any(|(name, _)| name == rule);
            if matches!(given, Some(Some(_))) && !exists {
                return Err(Error::invalid(
                    "when",
                    format!(
                        "there is no {rule} rule to apply a time condition to (give its target)"
                    ),
                ));
            }
        }
        for (condition, target) in next.targets() {
            if target.user() == Some(owner) {
                return Err(Error::invalid(
                    "target",
                    format!("the {condition} rule of {owner} forwards to {owner} itself"),
                ));
            }
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> UserAddress {
        UserAddress::parse("alice@example.com").unwrap()
    }

    fn parse(text: &str) -> Result<ForwardTarget> {
        ForwardTarget::parse(text, &alice())
    }

    #[test]
    fn follow_me_takes_defaults_and_refuses_what_cannot_work() {
        let owner = alice();
        let patch = |targets: &[&str], after: Option<u32>, ring: Option<u32>| ForwardingPatch {
            follow_me: Some(Some(FollowMePatch {
                targets: Some(targets.iter().map(|t| parse(t).unwrap()).collect()),
                after_secs: after,
                sequential: None,
                ring_secs: ring,
            })),
            ..Default::default()
        };
        let f = patch(&["bob", "carol"], None, None)
            .apply(&Forwarding::default(), &owner)
            .unwrap();
        let fm = f.follow_me.as_ref().unwrap();
        assert_eq!(
            (fm.after_secs, fm.ring_secs, fm.sequential),
            (10, 20, false)
        );
        assert_eq!(fm.targets[1].to_string(), "carol@example.com");
        // A change keeps what it does not name; off removes it.
        let changed = ForwardingPatch {
            follow_me: Some(Some(FollowMePatch {
                sequential: Some(true),
                ..Default::default()
            })),
            ..Default::default()
        }
        .apply(&f, &owner)
        .unwrap();
        assert!(changed.follow_me.as_ref().unwrap().sequential);
        assert_eq!(changed.follow_me.as_ref().unwrap().targets.len(), 2);
        let off = ForwardingPatch {
            follow_me: Some(None),
            ..Default::default()
        }
        .apply(&changed, &owner)
        .unwrap();
        assert!(off.is_off());
        for (bad, why) in [
            (patch(&[], None, None), "at least one target"),
            (patch(&["bob", "bob"], None, None), "listed twice"),
            (patch(&["alice"], None, None), "cannot follow itself"),
            (patch(&["bob"], Some(301), None), "follow_me_after_secs"),
            (patch(&["bob"], None, Some(0)), "follow_me_ring_secs"),
        ] {
            let err = bad.apply(&Forwarding::default(), &owner).unwrap_err();
            assert!(err.to_string().contains(why), "{err}");
        }
    }

    #[test]
    fn targets_are_completed_with_the_owners_domain_and_round_trip() {
        for (written, stored) in [
            ("bob", "bob@example.com"),
            ("bob@Other.Example", "bob@other.example"),
            ("+15551234567", "+15551234567"),
            ("voicemail", "voicemail:alice@example.com"),
            ("VoiceMail:bob", "voicemail:bob@example.com"),
            ("group:sales", "group:sales@example.com"),
            ("conference:standup", "conference:standup@example.com"),
            (
                "Conference:standup@Other.Example",
                "conference:standup@other.example",
            ),
            ("+4930@example.com", "+4930@example.com"),
        ] {
            let target = parse(written).unwrap();
            assert_eq!(target.to_string(), stored, "{written}");
            let back = ForwardTarget::try_from(stored.to_owned()).unwrap();
            assert_eq!(back, target, "{stored}");
            let json = serde_json::to_string(&target).unwrap();
            assert_eq!(json, format!("\"{stored}\""));
        }
    }

    #[test]
    fn garbage_targets_are_refused_with_what_a_target_is() {
        for bad in [
            "",
            "  ",
            "+1",
            "+1555x",
            "+1234567890123456",
            "a b",
            "bob@",
            "group:",
            "conference:",
            "conference:a b",
            "@x",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(matches!(err, Error::Invalid { .. }), "{bad:?}: {err:?}");
        }
        let err = parse("bob smith").unwrap_err().to_string();
        assert!(err.contains("is not a target"), "{err}");
    }

    #[test]
    fn a_patch_sets_keeps_and_removes_rules() {
        let bob = parse("bob").unwrap();
        let carol = parse("carol").unwrap();
        let rules = ForwardingPatch {
            busy: Some(Some(bob.clone())),
            no_answer: Some(Some(carol.clone())),
            ..Default::default()
        }
        .apply(&Forwarding::default(), &alice())
        .unwrap();
        assert_eq!(rules.busy, Some(bob.clone()));
        assert_eq!(
            rules.no_answer,
            Some(NoAnswerRule {
                target: carol.clone(),
                after_secs: DEFAULT_NO_ANSWER_SECS
            })
        );
        let rules = ForwardingPatch {
            no_answer_after_secs: Some(15),
            busy: Some(None),
            ..Default::default()
        }
        .apply(&rules, &alice())
        .unwrap();
        assert_eq!(rules.busy, None);
        assert_eq!(rules.no_answer.as_ref().unwrap().after_secs, 15);
        let off = ForwardingPatch {
            clear: true,
            ..Default::default()
        }
        .apply(&rules, &alice())
        .unwrap();
        assert!(off.is_off());
    }

    #[test]
    fn bad_patches_are_refused() {
        let err = ForwardingPatch {
            no_answer_after_secs: Some(15),
            ..Default::default()
        }
        .apply(&Forwarding::default(), &alice())
        .unwrap_err();
        assert!(err.to_string().contains("no no-answer rule"), "{err}");
        let err = ForwardingPatch {
            no_answer: Some(Some(parse("bob").unwrap())),
            no_answer_after_secs: Some(0),
            ..Default::default()
        }
        .apply(&Forwarding::default(), &alice())
        .unwrap_err();
        assert!(err.to_string().contains("between 1 and 300"), "{err}");
        let err = ForwardingPatch {
            always: Some(Some(parse("alice").unwrap())),
            ..Default::default()
        }
        .apply(&Forwarding::default(), &alice())
        .unwrap_err();
        assert!(err.to_string().contains("itself"), "{err}");
    }
}
