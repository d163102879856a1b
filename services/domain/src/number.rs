//! Phone numbers (DIDs): which domain and which of its extensions a number
//! from the outside reaches (ADR 0028).
//!
//! A number is an aggregate of its own, one stream per number
//! (`number-+15550001`, [`E164::stream`]): a number belongs to at most one
//! place in the whole system, and the one actor of the number's stream
//! decides that, with no index to race and no system-wide lock. A number
//! in another domain's hands is refused as already existing; the domains'
//! own aggregates are not involved (their actors never wait for each
//! other). The listing of a domain's numbers and the router's lookup are a
//! projection of these events ([`NumberTable`], folded by the actors'
//! number index).
//!
//! Targets are checked here for their form; that the user, group or room
//! exists in the domain is checked by the provisioning use case when the
//! number is set, and again by the router for each call (things change).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::names::UserAddress;
use crate::{DomainId, DomainName, Error, Result, Timestamp, UserName};

/// A number in E.164 form: `+`, a first digit 1-9 (country codes never
/// start with 0), 2 to 15 digits in all. Kept as its digits' value (no
/// leading zero, so the value is the number), which makes it `Copy`: it
/// is the number aggregate's id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct E164(u64);

impl E164 {
    pub const MIN_DIGITS: usize = 2;
    pub const MAX_DIGITS: usize = 15;
    /// The prefix of numbers' streams.
    pub const STREAM_PREFIX: &'static str = "number-";

    /// Parses `+` and 2 to 15 digits, the first not 0; nothing else (no
    /// spaces, dashes or brackets: the API takes numbers as stored).
    pub fn parse(input: &str) -> Result<Self> {
        let text = input.trim();
        let invalid = || {
            Error::invalid(
                "number",
                format!(
                    "'{text}' is not an E.164 number ('+', then {} to {} digits, the first not 0, no spaces)",
                    Self::MIN_DIGITS,
                    Self::MAX_DIGITS
                ),
            )
        };
        let digits = text.strip_prefix('+').ok_or_else(invalid)?;
        if !(Self::MIN_DIGITS..=Self::MAX_DIGITS).contains(&digits.len())
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || digits.starts_with('0')
        {
            return Err(invalid());
        }
        digits.parse::<u64>().map(E164).map_err(|_| invalid())
    }

    /// The stream holding this number's events.
    pub fn stream(&self) -> String {
        format!("{}{self}", Self::STREAM_PREFIX)
    }

    /// Parses a stream name back into the number.
    pub fn from_stream(stream: &str) -> Option<Self> {
        stream
            .strip_prefix(Self::STREAM_PREFIX)
            .and_then(|n| E164::parse(n).ok())
    }

    /// The digits after `+`.
    pub fn digits(&self) -> String {
        self.0.to_string()
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{}", self.0)
    }
}

impl fmt::Debug for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "E164(+{})", self.0)
    }
}

impl std::str::FromStr for E164 {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        E164::parse(s)
    }
}

impl TryFrom<String> for E164 {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        E164::parse(&s)
    }
}

impl From<E164> for String {
    fn from(n: E164) -> Self {
        n.to_string()
    }
}

/// Longest application name.
pub const MAX_APP_LEN: usize = 64;

/// Where a call to a number goes, inside the number's domain. Written
/// `alice`, `group:sales`, `conference:standup`, `voicemail:bob`,
/// `app:ivr`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum NumberTarget {
    /// A user's phones (and its forwarding rules).
    User(UserName),
    /// A ring group.
    Group(UserName),
    /// A conference room.
    Conference(UserName),
    /// A user's voicemail box, straight away.
    Voicemail(UserName),
    /// A call-control application attached over the API, by name.
    App(String),
}

impl NumberTarget {
    pub fn parse(input: &str) -> Result<Self> {
        let field = "target";
        let text = input.trim();
        if text.is_empty() {
            return Err(Error::invalid(
                field,
                "give a user, group:NAME, conference:NAME, voicemail:USER or app:NAME",
            ));
        }
        let (kind, rest) = match text.split_once(':') {
            Some((k, r)) => (Some(k.to_ascii_lowercase()), r),
            None => (None, text),
        };
        let name = |written: &str| -> Result<UserName> {
            if written.contains('@') {
                return Err(Error::invalid(
                    field,
                    format!("'{text}': a number's target is in the number's own domain; write the name without @domain"),
                ));
            }
            UserName::parse(written).map_err(|e| match e {
                Error::Invalid { reason, .. } => {
                    Error::invalid(field, format!("'{text}': {reason}"))
                }
                other => other,
            })
        };
        match kind.as_deref() {
            None => Ok(NumberTarget::User(name(rest)?)),
            Some("user") => Ok(NumberTarget::User(name(rest)?)),
            Some("group") => Ok(NumberTarget::Group(name(rest)?)),
            Some("conference") => Ok(NumberTarget::Conference(name(rest)?)),
            Some("voicemail") => Ok(NumberTarget::Voicemail(name(rest)?)),
            Some("app") => {
                let ok = !rest.is_empty()
                    && rest.len() <= MAX_APP_LEN
                    && rest
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
                if !ok {
                    return Err(Error::invalid(
                        field,
                        format!("'{text}': an application's name is 1 to {MAX_APP_LEN} letters, digits, '-', '_' or '.'"),
                    ));
                }
                Ok(NumberTarget::App(rest.to_owned()))
            }
            Some(other) => Err(Error::invalid(
                field,
                format!("'{text}': unknown kind '{other}:' (user, group:, conference:, voicemail:, app:)"),
            )),
        }
    }
}

impl fmt::Display for NumberTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NumberTarget::User(n) => write!(f, "{n}"),
            NumberTarget::Group(n) => write!(f, "group:{n}"),
            NumberTarget::Conference(n) => write!(f, "conference:{n}"),
            NumberTarget::Voicemail(n) => write!(f, "voicemail:{n}"),
            NumberTarget::App(n) => write!(f, "app:{n}"),
        }
    }
}

impl TryFrom<String> for NumberTarget {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        NumberTarget::parse(&s)
    }
}

impl From<NumberTarget> for String {
    fn from(t: NumberTarget) -> Self {
        t.to_string()
    }
}

/// Longest description of a number.
pub const MAX_DESCRIPTION_LEN: usize = 256;

/// A number's assignment: its domain and target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub domain_id: DomainId,
    pub domain: DomainName,
    pub target: NumberTarget,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub assigned_at: Timestamp,
}

/// The state of one number.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Number {
    pub number: Option<E164>,
    /// `None`: free (never assigned, or released).
    pub assignment: Option<Assignment>,
    /// The domain that held it last (kept after a release, so that the
    /// release's envelope names that domain and its token reads it).
    pub last_domain_id: Option<DomainId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Give the number to `domain`, ringing `target` (the use case checked
    /// that the target exists).
    Assign {
        number: E164,
        domain_id: DomainId,
        domain: DomainName,
        target: NumberTarget,
        description: String,
    },
    /// Change the target (or description) of a number `domain_id` holds.
    Update {
        domain_id: DomainId,
        target: Option<NumberTarget>,
        description: Option<String>,
    },
    /// Free a number `domain_id` holds.
    Release { domain_id: DomainId },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    NumberAssigned {
        number: E164,
        domain_id: DomainId,
        domain: DomainName,
        target: NumberTarget,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        description: String,
        assigned_at: Timestamp,
    },
    /// The number's target and description after the change.
    NumberUpdated {
        number: E164,
        domain_id: DomainId,
        target: NumberTarget,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        description: String,
    },
    NumberReleased {
        number: E164,
        domain_id: DomainId,
    },
}

fn check_description(description: &str) -> Result<()> {
    if description.chars().count() > MAX_DESCRIPTION_LEN {
        return Err(Error::invalid(
            "description",
            format!("at most {MAX_DESCRIPTION_LEN} characters"),
        ));
    }
    Ok(())
}

/// The refusal for a number `domain_id` does not hold: NOT_FOUND, with the
/// same words whether it is free or another domain's (a domain learns
/// nothing of the others').
fn not_held(number: E164) -> Error {
    Error::NotFound(format!("number {number}"))
}

/// Decides what a command does to a number. `now` is the caller's clock.
pub fn decide(state: &Number, command: &Command, now: Timestamp) -> Result<Vec<Event>> {
    match command {
        Command::Assign {
            number,
            domain_id,
            domain,
            target,
            description,
        } => {
            check_description(description)?;
            if let Some(held) = &state.assignment {
                if held.domain_id == *domain_id {
                    if held.target == *target && held.description == *description {
                        return Ok(vec![]);
                    }
                    return Err(Error::AlreadyExists(format!(
                        "number {number} (in {}, to {}; update it to change its target)",
                        held.domain, held.target
                    )));
                }
                return Err(Error::AlreadyExists(format!(
                    "number {number} (it belongs to another domain; a number is in one place only)"
                )));
            }
            Ok(vec![Event::NumberAssigned {
                number: *number,
                domain_id: *domain_id,
                domain: domain.clone(),
                target: target.clone(),
                description: description.clone(),
                assigned_at: now,
            }])
        }
        Command::Update {
            domain_id,
            target,
            description,
        } => {
            let number = state
                .number
                .ok_or_else(|| Error::NotFound("number".into()))?;
            let held = match &state.assignment {
                Some(a) if a.domain_id == *domain_id => a,
                _ => return Err(not_held(number)),
            };
            let target = target.clone().unwrap_or_else(|| held.target.clone());
            let description = description
                .clone()
                .unwrap_or_else(|| held.description.clone());
            check_description(&description)?;
            if target == held.target && description == held.description {
                return Ok(vec![]);
            }
            Ok(vec![Event::NumberUpdated {
                number,
                domain_id: *domain_id,
                target,
                description,
            }])
        }
        Command::Release { domain_id } => {
            let number = state
                .number
                .ok_or_else(|| Error::NotFound("number".into()))?;
            match &state.assignment {
                Some(a) if a.domain_id == *domain_id => Ok(vec![Event::NumberReleased {
                    number,
                    domain_id: *domain_id,
                }]),
                _ => Err(not_held(number)),
            }
        }
    }
}

/// Applies one event to the state.
pub fn evolve(mut state: Number, event: &Event) -> Number {
    match event {
        Event::NumberAssigned {
            number,
            domain_id,
            domain,
            target,
            description,
            assigned_at,
        } => {
            state.number = Some(*number);
            state.last_domain_id = Some(*domain_id);
            state.assignment = Some(Assignment {
                domain_id: *domain_id,
                domain: domain.clone(),
                target: target.clone(),
                description: description.clone(),
                assigned_at: *assigned_at,
            });
        }
        Event::NumberUpdated {
            target,
            description,
            ..
        } => {
            if let Some(a) = &mut state.assignment {
                a.target = target.clone();
                a.description = description.clone();
            }
        }
        Event::NumberReleased { number, domain_id } => {
            state.number = Some(*number);
            state.last_domain_id = Some(*domain_id);
            state.assignment = None;
        }
    }
    state
}

/// Every assigned number: what the router looks a called number up in
/// (number → domain and target), and what a domain's listing reads. A
/// pure fold of the numbers' events, in log order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumberTable {
    numbers: BTreeMap<E164, Assignment>,
}

impl NumberTable {
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::NumberAssigned {
                number,
                domain_id,
                domain,
                target,
                description,
                assigned_at,
            } => {
                self.numbers.insert(
                    *number,
                    Assignment {
                        domain_id: *domain_id,
                        domain: domain.clone(),
                        target: target.clone(),
                        description: description.clone(),
                        assigned_at: *assigned_at,
                    },
                );
            }
            Event::NumberUpdated {
                number,
                target,
                description,
                ..
            } => {
                if let Some(a) = self.numbers.get_mut(number) {
                    a.target = target.clone();
                    a.description = description.clone();
                }
            }
            Event::NumberReleased { number, .. } => {
                self.numbers.remove(number);
            }
        }
    }

    /// Where a call to `number` goes: its domain and the target there,
    /// written as an address for user-like targets.
    pub fn lookup(&self, number: E164) -> Option<&Assignment> {
        self.numbers.get(&number)
    }

    /// The numbers of `domain`, in numeric order.
    pub fn of_domain(&self, domain: DomainId) -> Vec<(E164, Assignment)> {
        self.numbers
            .iter()
            .filter(|(_, a)| a.domain_id == domain)
            .map(|(n, a)| (*n, a.clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.numbers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.numbers.is_empty()
    }
}

impl Assignment {
    /// The target's address in the number's domain (`sales@example.com`
    /// for `group:sales`); `None` for an application.
    pub fn address(&self) -> Option<UserAddress> {
        let name = match &self.target {
            NumberTarget::User(n)
            | NumberTarget::Group(n)
            | NumberTarget::Conference(n)
            | NumberTarget::Voicemail(n) => n.clone(),
            NumberTarget::App(_) => return None,
        };
        Some(UserAddress {
            username: name,
            domain: self.domain.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> E164 {
        E164::parse(s).unwrap()
    }

    fn dom(i: u128) -> DomainId {
        DomainId(uuid::Uuid::from_u128(i))
    }

    fn assign(number: E164, d: u128, target: &str) -> Command {
        Command::Assign {
            number,
            domain_id: dom(d),
            domain: DomainName::parse(if d == 1 { "example.com" } else { "other.test" }).unwrap(),
            target: NumberTarget::parse(target).unwrap(),
            description: String::new(),
        }
    }

    #[test]
    fn e164_numbers_are_checked() {
        assert_eq!(n("+15550001").to_string(), "+15550001");
        assert_eq!(n(" +442071234567 ").stream(), "number-+442071234567");
        assert_eq!(E164::from_stream("number-+15550001"), Some(n("+15550001")));
        for bad in [
            "15550001",
            "+",
            "+1",
            "+0123",
            "+1555 0001",
            "+1234567890123456",
            "+1-555",
        ] {
            assert!(
                matches!(
                    E164::parse(bad),
                    Err(Error::Invalid {
                        field: "number",
                        ..
                    })
                ),
                "{bad}"
            );
        }
        assert!(E164::parse("+123456789012345").is_ok());
    }

    #[test]
    fn targets_are_parsed_and_written_back() {
        for t in [
            "alice",
            "group:sales",
            "conference:standup",
            "voicemail:bob",
            "app:ivr-1",
        ] {
            assert_eq!(NumberTarget::parse(t).unwrap().to_string(), t);
        }
        assert_eq!(
            NumberTarget::parse("user:alice").unwrap(),
            NumberTarget::User(UserName::parse("alice").unwrap())
        );
        for bad in [
            "",
            "bob@other.test",
            "fax:x",
            "app:",
            "app:has space",
            "group:",
        ] {
            assert!(NumberTarget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_number_is_in_one_place_only() {
        let number = n("+15550001");
        let events = decide(&Number::default(), &assign(number, 1, "alice"), 5).unwrap();
        let state = events.iter().fold(Number::default(), evolve);
        // The same assignment again is a no-op (a retry).
        assert_eq!(
            decide(&state, &assign(number, 1, "alice"), 6).unwrap(),
            vec![]
        );
        let err = decide(&state, &assign(number, 2, "carol"), 6).unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(_)));
        assert!(err.to_string().contains("another domain"), "{err}");
        let err = decide(&state, &assign(number, 1, "group:sales"), 6).unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(_)));
        // Another domain can neither change nor release it.
        assert!(matches!(
            decide(&state, &Command::Release { domain_id: dom(2) }, 7),
            Err(Error::NotFound(_))
        ));
        let released = decide(&state, &Command::Release { domain_id: dom(1) }, 7).unwrap();
        let state = released.iter().fold(state, evolve);
        assert_eq!(state.assignment, None);
        assert_eq!(state.last_domain_id, Some(dom(1)));
        // Free again: the other domain takes it.
        assert_eq!(
            decide(&state, &assign(number, 2, "carol"), 8)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn the_table_looks_numbers_up() {
        let mut table = NumberTable::default();
        let (a, b) = (n("+15550001"), n("+15550002"));
        for (number, d, t) in [(a, 1, "alice"), (b, 2, "app:ivr")] {
            for e in decide(&Number::default(), &assign(number, d, t), 1).unwrap() {
                table.apply(&e);
            }
        }
        let found = table.lookup(a).unwrap();
        assert_eq!(found.domain_id, dom(1));
        assert_eq!(found.address().unwrap().to_string(), "alice@example.com");
        assert_eq!(table.lookup(b).unwrap().address(), None);
        assert_eq!(table.of_domain(dom(2)).len(), 1);
        table.apply(&Event::NumberReleased {
            number: a,
            domain_id: dom(1),
        });
        assert!(table.lookup(a).is_none());
        assert_eq!(table.len(), 1);
    }
}
