//! Ring groups: a domain-level extension (`sales@example.com`) that rings
//! its members' phones by a strategy. What a group is and what makes one
//! valid; how a call to it is rung is decided in [`crate::routing`].
//!
//! A group lives in its domain's aggregate ([`crate::domain`]): its name
//! shares the domain's namespace with user names (a name is a user or a
//! group, never both, decided by the one actor that owns the namespace),
//! and its members are users of the same domain, checked against the
//! names the domain has claimed when the group is set.
//!
//! # Strategies
//!
//! | strategy      | who rings                                                  |
//! |---------------|------------------------------------------------------------|
//! | simultaneous  | every available member at once                             |
//! | sequential    | one member after the other, in the listed order            |
//! | round-robin   | in order, starting after the member who started last time  |
//! | longest-idle  | in order of the time since each member's last call ended   |
//!
//! Each member rings for its own ring time (or the group's) in the
//! sequential strategies; the whole group rings at most `timeout_secs`,
//! after which the call goes to the group's no-answer target, if any.
//! Members with do-not-disturb on, or on a call, are skipped unless the
//! group says otherwise; members without a registered phone are skipped.
//! The group's own forwarding rules ([`Forwarding`]) say where a call goes
//! instead: `always` (with a time condition: e.g. after hours, to a mobile
//! number), `busy` (every member skipped as busy or do-not-disturb),
//! `unavailable` (no member can ring) and `no_answer` (nobody answered
//! within the timeout). Members' own forwarding rules are not followed: a
//! group call rings the member's phones or skips the member.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::forwarding::{ring_time, Forwarding, ForwardingPatch};
use crate::names::UserAddress;
use crate::{Error, Result, UserName};

/// Most members of one group.
pub const MAX_MEMBERS: usize = 64;
/// A member's ring time in the sequential strategies, when none is given.
pub const DEFAULT_RING_SECS: u32 = 20;
/// How long a group rings in all, when not given.
pub const DEFAULT_TIMEOUT_SECS: u32 = 60;

/// How a group's members are rung.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Every available member at once.
    #[default]
    Simultaneous,
    /// One after the other, in the listed order.
    Sequential,
    /// One after the other, starting with the member after the one the
    /// previous call started with.
    RoundRobin,
    /// One after the other, the member whose last call ended longest ago
    /// (or who never had one) first.
    LongestIdle,
}

impl Strategy {
    pub const ALL: [Strategy; 4] = [
        Strategy::Simultaneous,
        Strategy::Sequential,
        Strategy::RoundRobin,
        Strategy::LongestIdle,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Simultaneous => "simultaneous",
            Strategy::Sequential => "sequential",
            Strategy::RoundRobin => "round_robin",
            Strategy::LongestIdle => "longest_idle",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = Error;
    /// `round_robin` and `round-robin` alike, any case.
    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        Strategy::ALL
            .into_iter()
            .find(|k| k.as_str() == wanted)
            .ok_or_else(|| {
                Error::invalid(
                    "strategy",
                    format!(
                        "'{s}' is not a strategy (simultaneous, sequential, round-robin, longest-idle)"
                    ),
                )
            })
    }
}

/// One member: a user of the group's domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    pub user: UserName,
    /// How long this member rings in the sequential strategies; `None`:
    /// the group's `ring_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_secs: Option<u32>,
}

impl Member {
    /// Parses `bob` or `bob:15` (15 seconds of ringing).
    pub fn parse(text: &str) -> Result<Member> {
        let text = text.trim();
        let (name, secs) = match text.split_once(':') {
            Some((name, secs)) => {
                let secs: u32 = secs.trim().parse().map_err(|_| {
                    Error::invalid(
                        "members",
                        format!("'{text}': the ring time after ':' must be a number of seconds"),
                    )
                })?;
                (name, Some(secs))
            }
            None => (text, None),
        };
        let user = UserName::parse(name.trim()).map_err(|e| match e {
            Error::Invalid { reason, .. } => {
                Error::invalid("members", format!("'{text}' is not a member: {reason}"))
            }
            other => other,
        })?;
        Ok(Member {
            user,
            ring_secs: secs,
        })
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ring_secs {
            Some(s) => write!(f, "{}:{s}", self.user),
            None => write!(f, "{}", self.user),
        }
    }
}

/// A ring group's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingGroup {
    /// In order (the order of the sequential strategies). Never empty.
    pub members: Vec<Member>,
    pub strategy: Strategy,
    /// A member's ring time in the sequential strategies, unless the
    /// member has its own.
    pub ring_secs: u32,
    /// How long the group rings in all before the call counts as not
    /// answered (and goes to the no-answer target, if any).
    pub timeout_secs: u32,
    /// Skip members on a call.
    pub skip_busy: bool,
    /// Skip members with do-not-disturb on.
    pub skip_dnd: bool,
    /// Where calls go instead: `always` (with its time condition), `busy`,
    /// `no_answer` (its `after_secs` is always `timeout_secs`) and
    /// `unavailable`.
    #[serde(default, skip_serializing_if = "Forwarding::is_off")]
    pub forwarding: Forwarding,
}

impl RingGroup {
    /// The ring time of `member` in the sequential strategies.
    pub fn ring_secs_of(&self, member: &Member) -> u32 {
        member.ring_secs.unwrap_or(self.ring_secs)
    }
}

/// A change of a group: `None` keeps a setting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RingGroupPatch {
    pub members: Option<Vec<Member>>,
    pub strategy: Option<Strategy>,
    pub ring_secs: Option<u32>,
    pub timeout_secs: Option<u32>,
    pub skip_busy: Option<bool>,
    pub skip_dnd: Option<bool>,
    /// The group's forwarding rules (its `no_answer_after_secs` is refused:
    /// the group's timeout is that time).
    pub forwarding: ForwardingPatch,
}

impl RingGroupPatch {
    /// The group after the patch, validated: `current` is `None` for a new
    /// group (whose settings not given take their defaults); `address` is
    /// the group's own.
    pub fn apply(&self, current: Option<&RingGroup>, address: &UserAddress) -> Result<RingGroup> {
        let mut next = match current {
            Some(g) => g.clone(),
            None => RingGroup {
                members: Vec::new(),
                strategy: Strategy::default(),
                ring_secs: DEFAULT_RING_SECS,
                timeout_secs: DEFAULT_TIMEOUT_SECS,
                skip_busy: true,
                skip_dnd: true,
                forwarding: Forwarding::default(),
            },
        };
        if let Some(m) = &self.members {
            next.members = m.clone();
        }
        if let Some(s) = self.strategy {
            next.strategy = s;
        }
        if let Some(s) = self.ring_secs {
            next.ring_secs = s;
        }
        if let Some(s) = self.timeout_secs {
            next.timeout_secs = s;
        }
        if let Some(b) = self.skip_busy {
            next.skip_busy = b;
        }
        if let Some(b) = self.skip_dnd {
            next.skip_dnd = b;
        }
        if self.forwarding.no_answer_after_secs.is_some() {
            return Err(Error::invalid(
                "no_answer_after_secs",
                "a ring group's no-answer target takes the call after the group's timeout (give timeout_secs)",
            ));
        }
        next.forwarding = self.forwarding.apply(&next.forwarding, address)?;
        if let Some(rule) = &mut next.forwarding.no_answer {
            rule.after_secs = next.timeout_secs;
        }
        validate(&next, address)?;
        Ok(next)
    }
}

/// What any group must be (checked on every change).
fn validate(group: &RingGroup, address: &UserAddress) -> Result<()> {
    if group.members.is_empty() {
        return Err(Error::invalid(
            "members",
            format!("ring group {address} needs at least one member"),
        ));
    }
    if group.members.len() > MAX_MEMBERS {
        return Err(Error::invalid(
            "members",
            format!("at most {MAX_MEMBERS} members, got {}", group.members.len()),
        ));
    }
    for (i, m) in group.members.iter().enumerate() {
        if group.members[..i].iter().any(|o| o.user == m.user) {
            return Err(Error::invalid(
                "members",
                format!("{} is listed twice", m.user),
            ));
        }
        if m.user == address.username {
            return Err(Error::invalid(
                "members",
                format!("{} cannot be a member of itself", m.user),
            ));
        }
        if let Some(s) = m.ring_secs {
            ring_time("members", s)?;
        }
    }
    if group.forwarding.follow_me.is_some() {
        return Err(Error::invalid(
            "follow_me",
            "a ring group has no follow-me: make the targets members",
        ));
    }
    ring_time("ring_secs", group.ring_secs)?;
    ring_time("timeout_secs", group.timeout_secs)?;
    for (rule, target) in group.forwarding.targets() {
        if matches!(target, crate::forwarding::ForwardTarget::Group(a) if a == address) {
            return Err(Error::invalid(
                "target",
                format!("the {rule} target of ring group {address} is the group itself"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forwarding::ForwardTarget;

    fn sales() -> UserAddress {
        UserAddress::parse("sales@example.com").unwrap()
    }

    fn members(list: &[&str]) -> Option<Vec<Member>> {
        Some(list.iter().map(|m| Member::parse(m).unwrap()).collect())
    }

    #[test]
    fn a_new_group_takes_the_defaults() {
        let g = RingGroupPatch {
            members: members(&["alice", "bob:15"]),
            ..Default::default()
        }
        .apply(None, &sales())
        .unwrap();
        assert_eq!(g.strategy, Strategy::Simultaneous);
        assert_eq!((g.ring_secs, g.timeout_secs), (20, 60));
        assert!(g.skip_busy && g.skip_dnd);
        assert_eq!(g.ring_secs_of(&g.members[0]), 20);
        assert_eq!(g.ring_secs_of(&g.members[1]), 15);
    }

    #[test]
    fn an_empty_group_is_refused_with_its_name() {
        let err = RingGroupPatch {
            members: Some(Vec::new()),
            ..Default::default()
        }
        .apply(None, &sales())
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid members: ring group sales@example.com needs at least one member"
        );
        // And a new group without members at all.
        assert!(RingGroupPatch::default().apply(None, &sales()).is_err());
    }

    #[test]
    fn bad_members_and_times_are_refused() {
        for text in ["bob:x", "a b", "", "bob:"] {
            assert!(Member::parse(text).is_err(), "{text:?}");
        }
        for list in [
            &["alice", "alice"][..],
            &["sales"],
            &["bob:0"],
            &["bob:301"],
        ] {
            let patch = RingGroupPatch {
                members: members(list),
                ..Default::default()
            };
            assert!(patch.apply(None, &sales()).is_err(), "{list:?}");
        }
        for (ring, timeout) in [(Some(0), None), (None, Some(0)), (None, Some(301))] {
            let patch = RingGroupPatch {
                members: members(&["alice"]),
                ring_secs: ring,
                timeout_secs: timeout,
                ..Default::default()
            };
            assert!(patch.apply(None, &sales()).is_err());
        }
    }

    #[test]
    fn the_no_answer_rule_rings_for_the_group_timeout() {
        let owner = sales();
        let g = RingGroupPatch {
            members: members(&["alice"]),
            timeout_secs: Some(45),
            forwarding: ForwardingPatch {
                no_answer: Some(Some(ForwardTarget::parse("bob", &owner).unwrap())),
                ..Default::default()
            },
            ..Default::default()
        }
        .apply(None, &owner)
        .unwrap();
        assert_eq!(g.forwarding.no_answer.as_ref().unwrap().after_secs, 45);
        let g = RingGroupPatch {
            timeout_secs: Some(30),
            ..Default::default()
        }
        .apply(Some(&g), &owner)
        .unwrap();
        assert_eq!(g.forwarding.no_answer.as_ref().unwrap().after_secs, 30);
    }

    #[test]
    fn strategies_parse_in_either_spelling() {
        assert_eq!(
            "round-robin".parse::<Strategy>().unwrap(),
            Strategy::RoundRobin
        );
        assert_eq!(
            "LONGEST_IDLE".parse::<Strategy>().unwrap(),
            Strategy::LongestIdle
        );
        assert!("random".parse::<Strategy>().is_err());
    }
}
