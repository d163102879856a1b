//! A domain's dial plan: which trunk a number its users dial leaves by, and
//! as which E.164 number (ADR 0028). [`DialPlan::route`] is the pure
//! function the B2BUA asks; nothing here sends anything.
//!
//! # Rules
//!
//! Ordered; the first rule whose pattern matches the dialled string and
//! that the caller may use decides. A rule normalises the dialled string
//! to E.164 (drop `strip` leading characters, put `prefix` before the
//! rest) and names the trunk. A rule whose result is not an E.164 number
//! is passed over (a pattern ending in `.` can match strings of any
//! length).
//!
//! # Pattern syntax (Asterisk's extension patterns)
//!
//! Without a leading `_`, a pattern is a literal: it matches exactly that
//! string (`911`). With `_`, each character matches one dialled character:
//!
//! | pattern  | matches                                      |
//! |----------|----------------------------------------------|
//! | `X`      | a digit 0-9                                   |
//! | `Z`      | a digit 1-9                                   |
//! | `N`      | a digit 2-9                                   |
//! | `[15-7]` | one of the characters listed (ranges allowed) |
//! | `0`-`9`, `*`, `#`, `+` | that character                  |
//! | `.`      | (last only) one or more characters            |
//! | `!`      | (last only) zero or more characters           |
//!
//! `_1NXXNXXXXXX` is a North American number dialled with its 1,
//! `_00Z.` an international call from a European PBX, `_+X.` a number
//! dialled in E.164 already. Why this syntax rather than regular
//! expressions: it is what PBX administrators write, every pattern is
//! matched in one pass over the dialled string (no backtracking: a rule
//! cannot be made slow), it needs no regex engine in the pure domain, and
//! a pattern can only say things about digits.
//!
//! # Who may use a rule
//!
//! Every user of the domain, a list of users, or a class: a named list of
//! users kept in the plan (`international: alice, bob`), so that several
//! rules can share one list.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::number::E164;
use crate::{Error, Result, UserName};

/// Most rules in one plan.
pub const MAX_RULES: usize = 200;
/// Most classes in one plan, and users in one class or rule.
pub const MAX_CLASSES: usize = 64;
pub const MAX_USERS: usize = 1_000;
/// Longest pattern, prefix and class name.
pub const MAX_PATTERN_LEN: usize = 64;
pub const MAX_PREFIX_LEN: usize = 16;
pub const MAX_CLASS_NAME_LEN: usize = 32;

/// The characters a dialled string may hold (a phone's keypad and `+`).
const ALPHABET: &[u8] = b"0123456789*#+";

/// One position of a pattern: the set of characters it accepts, as a bit
/// per [`ALPHABET`] entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CharSet(u16);

impl CharSet {
    fn of(chars: &[u8]) -> Self {
        CharSet(
            chars
                .iter()
                .filter_map(|c| index(*c))
                .fold(0, |m, i| m | (1 << i)),
        )
    }

    fn digits(from: u8, to: u8) -> Self {
        CharSet::of(&(from..=to).collect::<Vec<u8>>())
    }

    fn accepts(self, c: u8) -> bool {
        index(c).is_some_and(|i| self.0 & (1 << i) != 0)
    }

    /// The one character this set holds, if it holds one.
    fn single(self) -> Option<u8> {
        (self.0.count_ones() == 1)
            .then(|| ALPHABET.get(self.0.trailing_zeros() as usize).copied())
            .flatten()
    }
}

fn index(c: u8) -> Option<usize> {
    ALPHABET.iter().position(|a| *a == c)
}

/// What may follow the fixed positions of a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tail {
    /// Nothing: the dialled string has exactly the fixed positions.
    None,
    /// `.`: one or more characters.
    OneOrMore,
    /// `!`: zero or more.
    ZeroOrMore,
}

/// A compiled pattern; written and stored as its text.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Pattern {
    text: String,
    positions: Vec<CharSet>,
    tail: Tail,
}

impl Pattern {
    /// Compiles a pattern; the error says what is wrong and where.
    pub fn parse(input: &str) -> std::result::Result<Self, String> {
        let text = input.trim();
        if text.is_empty() {
            return Err("the pattern is empty".into());
        }
        if text.len() > MAX_PATTERN_LEN {
            return Err(format!(
                "the pattern is longer than {MAX_PATTERN_LEN} characters"
            ));
        }
        let Some(body) = text.strip_prefix('_') else {
            // A literal: every character must be one a phone can dial.
            if let Some(bad) = text.bytes().find(|b| index(*b).is_none()) {
                return Err(format!(
                    "'{}' cannot be dialled (a literal pattern holds digits, '*', '#' and '+'; \
                     start with '_' for X, Z, N, [..], '.' or '!')",
                    bad as char
                ));
            }
            return Ok(Pattern {
                text: text.to_owned(),
                positions: text.bytes().map(|b| CharSet::of(&[b])).collect(),
                tail: Tail::None,
            });
        };
        let bytes = body.as_bytes();
        let mut positions = Vec::new();
        let mut tail = Tail::None;
        let mut i = 0;
        while i < bytes.len() {
            let c = bytes[i];
            let at = i + 2; // 1-based, counting the '_'
            match c.to_ascii_uppercase() {
                b'X' => positions.push(CharSet::digits(b'0', b'9')),
                b'Z' => positions.push(CharSet::digits(b'1', b'9')),
                b'N' => positions.push(CharSet::digits(b'2', b'9')),
                b'.' | b'!' => {
                    if i + 1 != bytes.len() {
                        return Err(format!(
                            "'{}' at position {at} must be the pattern's last character",
                            c as char
                        ));
                    }
                    tail = if c == b'.' {
                        Tail::OneOrMore
                    } else {
                        Tail::ZeroOrMore
                    };
                }
                b'[' => {
                    let close = bytes[i..]
                        .iter()
                        .position(|b| *b == b']')
                        .map(|p| p + i)
                        .ok_or_else(|| format!("'[' at position {at} is never closed with ']'"))?;
                    let inside = &bytes[i + 1..close];
                    if inside.is_empty() {
                        return Err(format!("'[]' at position {at} accepts nothing"));
                    }
                    let mut set = Vec::new();
                    let mut j = 0;
                    while j < inside.len() {
                        let a = inside[j];
                        if index(a).is_none() {
                            return Err(format!(
                                "'{}' in '[...]' at position {at} cannot be dialled",
                                a as char
                            ));
                        }
                        if inside.get(j + 1) == Some(&b'-') && j + 2 < inside.len() {
                            let b = inside[j + 2];
                            if !a.is_ascii_digit() || !b.is_ascii_digit() || a > b {
                                return Err(format!(
                                    "'{}-{}' in '[...]' at position {at} is not a range of digits",
                                    a as char, b as char
                                ));
                            }
                            set.extend(a..=b);
                            j += 3;
                        } else {
                            set.push(a);
                            j += 1;
                        }
                    }
                    positions.push(CharSet::of(&set));
                    i = close;
                }
                _ if index(c).is_some() => positions.push(CharSet::of(&[c])),
                _ => {
                    return Err(format!(
                        "'{}' at position {at} is not part of the pattern syntax \
                         (X, Z, N, [..], digits, '*', '#', '+', and '.' or '!' at the end)",
                        c as char
                    ))
                }
            }
            i += 1;
        }
        if positions.is_empty() && tail != Tail::OneOrMore {
            return Err(
                "the pattern matches nothing or everything; give at least one position".into(),
            );
        }
        Ok(Pattern {
            text: text.to_owned(),
            positions,
            tail,
        })
    }

    /// Whether `dialled` matches, in one pass.
    pub fn matches(&self, dialled: &str) -> bool {
        let bytes = dialled.as_bytes();
        if bytes.iter().any(|b| index(*b).is_none()) || bytes.len() < self.positions.len() {
            return false;
        }
        let fixed_ok = self
            .positions
            .iter()
            .zip(bytes)
            .all(|(set, c)| set.accepts(*c));
        let rest = bytes.len() - self.positions.len();
        fixed_ok
            && match self.tail {
                Tail::None => rest == 0,
                Tail::OneOrMore => rest >= 1,
                Tail::ZeroOrMore => true,
            }
    }

    /// The fewest characters a matching string has.
    pub fn min_len(&self) -> usize {
        self.positions.len() + usize::from(self.tail == Tail::OneOrMore)
    }

    /// The character every match has at `position`, if there is one.
    fn fixed_at(&self, position: usize) -> Option<u8> {
        self.positions.get(position).and_then(|s| s.single())
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({})", self.text)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl TryFrom<String> for Pattern {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        Pattern::parse(&s)
    }
}

impl From<Pattern> for String {
    fn from(p: Pattern) -> Self {
        p.text
    }
}

/// Who may use a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Allow {
    /// Every user of the domain.
    All,
    /// These users.
    Users(BTreeSet<UserName>),
    /// The users of the plan's class of that name.
    Class(String),
}

impl Allow {
    /// Parses `all`, `users:alice,bob` or `class:international`.
    pub fn parse(input: &str) -> Result<Self> {
        let text = input.trim();
        if text.is_empty() || text.eq_ignore_ascii_case("all") {
            return Ok(Allow::All);
        }
        if let Some(list) = text.strip_prefix("users:") {
            let users = list
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(UserName::parse)
                .collect::<Result<BTreeSet<_>>>()?;
            if users.is_empty() {
                return Err(Error::invalid("allow", "users: needs at least one user"));
            }
            return Ok(Allow::Users(users));
        }
        if let Some(class) = text.strip_prefix("class:") {
            return Ok(Allow::Class(class.trim().to_owned()));
        }
        Err(Error::invalid(
            "allow",
            format!("'{text}' is not all, users:NAME,NAME or class:NAME"),
        ))
    }
}

impl fmt::Display for Allow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Allow::All => f.write_str("all"),
            Allow::Users(users) => {
                f.write_str("users:")?;
                for (i, u) in users.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{u}")?;
                }
                Ok(())
            }
            Allow::Class(c) => write!(f, "class:{c}"),
        }
    }
}

/// One rule of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub pattern: Pattern,
    /// Leading characters dropped from the dialled string.
    #[serde(default)]
    pub strip: u32,
    /// Put before what remains (`+1`, `+44`); empty when the dialled
    /// string is E.164 already after `strip`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// The trunk (a name in the domain's trunks) calls leave by.
    pub trunk: UserName,
    pub allow: Allow,
}

impl Rule {
    /// The E.164 number `dialled` becomes by this rule (it must match).
    pub fn normalise(&self, dialled: &str) -> Option<E164> {
        let rest = dialled.get(self.strip as usize..)?;
        E164::parse(&format!("{}{rest}", self.prefix)).ok()
    }
}

/// A rule as written (API, CLI): each field as text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WrittenRule {
    pub pattern: String,
    pub strip: u32,
    pub prefix: String,
    pub trunk: String,
    /// `all` (or empty), `users:alice,bob`, `class:NAME`.
    pub allow: String,
}

/// A domain's dial plan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialPlan {
    /// Named lists of users that rules allow by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub classes: BTreeMap<String, BTreeSet<UserName>>,
    pub rules: Vec<Rule>,
}

/// Where a dialled number goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The number to send to the carrier.
    pub number: E164,
    pub trunk: UserName,
    /// The rule that decided, 1-based (as messages and the CLI count).
    pub rule: usize,
}

impl DialPlan {
    /// Compiles a written plan. A refusal names the rule (1-based, with its
    /// pattern) and says why; the field is `dial_plan`.
    pub fn compile(classes: &BTreeMap<String, Vec<String>>, rules: &[WrittenRule]) -> Result<Self> {
        let invalid = |reason: String| Error::invalid("dial_plan", reason);
        if rules.len() > MAX_RULES {
            return Err(invalid(format!(
                "at most {MAX_RULES} rules, got {}",
                rules.len()
            )));
        }
        if classes.len() > MAX_CLASSES {
            return Err(invalid(format!(
                "at most {MAX_CLASSES} classes, got {}",
                classes.len()
            )));
        }
        let mut compiled_classes = BTreeMap::new();
        for (name, users) in classes {
            check_class_name(name).map_err(|r| invalid(format!("class '{name}': {r}")))?;
            if users.len() > MAX_USERS {
                return Err(invalid(format!(
                    "class '{name}': at most {MAX_USERS} users"
                )));
            }
            let users = users
                .iter()
                .map(|u| {
                    UserName::parse(u.trim())
                        .map_err(|e| invalid(format!("class '{name}': user '{u}': {e}")))
                })
                .collect::<Result<BTreeSet<_>>>()?;
            compiled_classes.insert(name.clone(), users);
        }
        let mut compiled = Vec::with_capacity(rules.len());
        for (i, written) in rules.iter().enumerate() {
            let label = format!("rule {} ('{}')", i + 1, written.pattern.trim());
            let rule = compile_rule(written, &compiled_classes)
                .map_err(|reason| invalid(format!("{label}: {reason}")))?;
            compiled.push(rule);
        }
        Ok(DialPlan {
            classes: compiled_classes,
            rules: compiled,
        })
    }

    /// The rules as written back (the inverse of [`DialPlan::compile`]).
    pub fn written(&self) -> Vec<WrittenRule> {
        self.rules
            .iter()
            .map(|r| WrittenRule {
                pattern: r.pattern.to_string(),
                strip: r.strip,
                prefix: r.prefix.clone(),
                trunk: r.trunk.to_string(),
                allow: r.allow.to_string(),
            })
            .collect()
    }

    /// Whether `caller` may use `rule`.
    fn allows(&self, rule: &Rule, caller: &UserName) -> bool {
        match &rule.allow {
            Allow::All => true,
            Allow::Users(users) => users.contains(caller),
            Allow::Class(class) => self.classes.get(class).is_some_and(|u| u.contains(caller)),
        }
    }

    /// Where `dialled`, dialled by `caller` (a user of the plan's domain),
    /// goes: the first rule that matches, that the caller may use and
    /// whose normalisation gives an E.164 number. `None`: no rule does
    /// (the call is not for a trunk).
    pub fn route(&self, dialled: &str, caller: &UserName) -> Option<Route> {
        self.rules.iter().enumerate().find_map(|(i, rule)| {
            if !rule.pattern.matches(dialled) || !self.allows(rule, caller) {
                return None;
            }
            rule.normalise(dialled).map(|number| Route {
                number,
                trunk: rule.trunk.clone(),
                rule: i + 1,
            })
        })
    }

    /// The trunks the rules name, each once, with the first rule (1-based)
    /// naming it.
    pub fn trunks(&self) -> BTreeMap<&UserName, usize> {
        let mut found = BTreeMap::new();
        for (i, rule) in self.rules.iter().enumerate() {
            found.entry(&rule.trunk).or_insert(i + 1);
        }
        found
    }

    /// The users the plan names (in classes and rules).
    pub fn users(&self) -> BTreeSet<&UserName> {
        let mut users: BTreeSet<&UserName> = self.classes.values().flatten().collect();
        for rule in &self.rules {
            if let Allow::Users(list) = &rule.allow {
                users.extend(list);
            }
        }
        users
    }
}

fn check_class_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_CLASS_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "a class name is 1 to {MAX_CLASS_NAME_LEN} lower-case letters, digits, '-' or '_'"
        ))
    }
}

fn compile_rule(
    written: &WrittenRule,
    classes: &BTreeMap<String, BTreeSet<UserName>>,
) -> std::result::Result<Rule, String> {
    let pattern = Pattern::parse(&written.pattern)?;
    let prefix = written.prefix.trim().to_owned();
    if prefix.len() > MAX_PREFIX_LEN {
        return Err(format!(
            "the prefix is longer than {MAX_PREFIX_LEN} characters"
        ));
    }
    let prefix_ok = prefix.is_empty()
        || prefix
            .strip_prefix('+')
            .is_some_and(|d| d.bytes().all(|b| b.is_ascii_digit()));
    if !prefix_ok {
        return Err(format!(
            "prefix '{prefix}' must be '+' and digits (the start of an E.164 number, e.g. +1)"
        ));
    }
    let strip = written.strip as usize;
    if strip > pattern.min_len() {
        return Err(format!(
            "strip {strip} is more than the pattern's shortest match ({} characters)",
            pattern.min_len()
        ));
    }
    if prefix.is_empty() && pattern.fixed_at(strip) != Some(b'+') {
        return Err(
            "the normalised number would not start with '+': give a prefix (e.g. +1), \
             or a pattern whose character after the stripped ones is '+'"
                .into(),
        );
    }
    let trunk = UserName::parse(written.trunk.trim())
        .map_err(|e| format!("trunk '{}': {e}", written.trunk.trim()))?;
    let allow = Allow::parse(&written.allow).map_err(|e| e.to_string())?;
    match &allow {
        Allow::Class(c) if !classes.contains_key(c) => {
            return Err(format!("class '{c}' is not one of the plan's classes"));
        }
        Allow::Users(users) if users.len() > MAX_USERS => {
            return Err(format!("at most {MAX_USERS} users"));
        }
        _ => {}
    }
    Ok(Rule {
        pattern,
        strip: written.strip,
        prefix,
        trunk,
        allow,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    fn rule(pattern: &str, strip: u32, prefix: &str, trunk: &str, allow: &str) -> WrittenRule {
        WrittenRule {
            pattern: pattern.into(),
            strip,
            prefix: prefix.into(),
            trunk: trunk.into(),
            allow: allow.into(),
        }
    }

    fn user(s: &str) -> UserName {
        UserName::parse(s).unwrap()
    }

    #[test]
    fn patterns_match_as_asterisk_does() {
        assert!(p("_NXXNXXXXXX").matches("2125551234"));
        assert!(!p("_NXXNXXXXXX").matches("1125551234"));
        assert!(!p("_NXXNXXXXXX").matches("212555123"));
        assert!(p("_1[2-9]XX").matches("1555"));
        assert!(!p("_1[2-9]XX").matches("1155"));
        assert!(p("_00Z.").matches("00441234"));
        assert!(!p("_00Z.").matches("004"));
        assert!(p("_9!").matches("9"));
        assert!(p("_+X.").matches("+15550001"));
        assert!(p("911").matches("911"));
        assert!(!p("911").matches("9111"));
        assert!(p("_*[57]X").matches("*72"));
        assert!(!p("_X.").matches("12a"));
    }

    #[test]
    fn bad_patterns_say_why() {
        for (bad, why) in [
            ("", "empty"),
            ("_9N[XX", "never closed"),
            ("_9.X", "last character"),
            ("_9Q", "not part of the pattern syntax"),
            ("9a1", "cannot be dialled"),
            ("_[]", "accepts nothing"),
            ("_[9-1]", "not a range"),
            ("_!", "matches nothing or everything"),
        ] {
            let err = Pattern::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn a_plan_routes_the_first_allowed_match() {
        let classes = BTreeMap::from([("intl".to_owned(), vec!["alice".to_owned()])]);
        let plan = DialPlan::compile(
            &classes,
            &[
                rule("_00Z.", 2, "+", "carrier", "class:intl"),
                rule("_1NXXNXXXXXX", 0, "+", "carrier", "all"),
                rule("_NXXNXXXXXX", 0, "+1", "backup", "users:bob,carol"),
                rule("_+X.", 0, "", "carrier", "all"),
            ],
        )
        .unwrap();
        let alice = user("alice");
        let bob = user("bob");
        let r = plan.route("00442071234567", &alice).unwrap();
        assert_eq!(r.number.to_string(), "+442071234567");
        assert_eq!((r.trunk.as_str(), r.rule), ("carrier", 1));
        assert_eq!(plan.route("00442071234567", &bob), None);
        let r = plan.route("12125551234", &bob).unwrap();
        assert_eq!(r.number.to_string(), "+12125551234");
        let r = plan.route("2125551234", &bob).unwrap();
        assert_eq!(
            (r.number.to_string().as_str(), r.trunk.as_str()),
            ("+12125551234", "backup")
        );
        assert_eq!(plan.route("2125551234", &alice), None);
        let r = plan.route("+33123456789", &alice).unwrap();
        assert_eq!((r.number.to_string().as_str(), r.rule), ("+33123456789", 4));
        assert_eq!(plan.route("alice", &alice), None);
    }

    #[test]
    fn rules_that_do_not_compile_are_named() {
        let err = DialPlan::compile(
            &BTreeMap::new(),
            &[
                rule("_X.", 0, "+", "carrier", "all"),
                rule("_9N[XX", 0, "+", "carrier", "all"),
            ],
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(matches!(
            err,
            Error::Invalid {
                field: "dial_plan",
                ..
            }
        ));
        assert!(text.contains("rule 2 ('_9N[XX')"), "{text}");
        assert!(text.contains("never closed"), "{text}");
        for (bad, why) in [
            (rule("_NXX", 0, "", "t", "all"), "would not start with '+'"),
            (rule("_NXX", 0, "1", "t", "all"), "must be '+' and digits"),
            (
                rule("_NXX", 4, "+1", "t", "all"),
                "more than the pattern's shortest",
            ),
            (rule("_NXX", 0, "+1", "t", "class:nope"), "class 'nope'"),
            (rule("_NXX", 0, "+1", "not a name", "all"), "trunk"),
            (rule("_NXX", 0, "+1", "t", "some"), "not all"),
        ] {
            let err = DialPlan::compile(&BTreeMap::new(), std::slice::from_ref(&bad)).unwrap_err();
            assert!(err.to_string().contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_plan_survives_its_stored_form() {
        let plan = DialPlan::compile(
            &BTreeMap::from([("intl".to_owned(), vec!["alice".to_owned()])]),
            &[rule("_00Z.", 2, "+", "carrier", "class:intl")],
        )
        .unwrap();
        let json = serde_json::to_string(&plan).unwrap();
        let back: DialPlan = serde_json::from_str(&json).unwrap();
        assert_eq!(back, plan);
        assert_eq!(back.written()[0].allow, "class:intl");
    }
}
