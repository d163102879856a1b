//! Property tests of the dial plan (`dial_plan::DialPlan::route`, ADR
//! 0028): whatever is dialled, a route is an E.164 number by the first
//! rule that matches and allows the caller; a caller no rule allows is
//! never routed; a pattern made from a number matches it and not the
//! number with a position broken.

use std::collections::BTreeMap;

use dialtone_domain::dial_plan::{DialPlan, Pattern, WrittenRule};
use dialtone_domain::number::E164;
use dialtone_domain::UserName;
use proptest::prelude::*;

fn user(s: &str) -> UserName {
    UserName::parse(s).unwrap()
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

fn plan() -> DialPlan {
    DialPlan::compile(
        &BTreeMap::from([("intl".to_owned(), vec!["alice".to_owned()])]),
        &[
            rule("_00Z.", 2, "+", "intl-carrier", "class:intl"),
            rule("_011Z.", 3, "+", "intl-carrier", "users:alice,bob"),
            rule("_1NXXNXXXXXX", 0, "+", "carrier", "all"),
            rule("_NXXNXXXXXX", 0, "+1", "carrier", "all"),
            rule("_+Z!", 0, "", "carrier", "all"),
            rule("911", 0, "+1911", "emergency", "all"),
        ],
    )
    .unwrap()
}

fn dialled() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,18}",
        "\\+[0-9]{1,17}",
        "00[0-9]{1,15}",
        "011[0-9]{1,15}",
        "[0-9*#+]{0,20}",
        "[a-z0-9@.]{1,12}",
    ]
}

fn caller() -> impl Strategy<Value = UserName> {
    prop_oneof![Just(user("alice")), Just(user("bob")), Just(user("carol"))]
}

proptest! {
    /// A route is an E.164 number, by the first rule that matches and
    /// allows the caller and normalises to E.164; no earlier rule could
    /// have taken it.
    #[test]
    fn a_route_is_the_first_allowed_match_and_e164(d in dialled(), c in caller()) {
        let plan = plan();
        let expected = plan.rules.iter().enumerate().find_map(|(i, r)| {
            let allowed = match r.allow.to_string().as_str() {
                "all" => true,
                "class:intl" => c.as_str() == "alice",
                "users:alice,bob" => c.as_str() != "carol",
                other => panic!("unexpected allow {other}"),
            };
            (r.pattern.matches(&d) && allowed)
                .then(|| r.normalise(&d))
                .flatten()
                .map(|n| (n, i + 1))
        });
        let got = plan.route(&d, &c);
        prop_assert_eq!(got.as_ref().map(|r| (r.number, r.rule)), expected);
        if let Some(route) = got {
            prop_assert!(E164::parse(&route.number.to_string()).is_ok());
            let trunk = plan.rules[route.rule - 1].trunk.clone();
            prop_assert_eq!(route.trunk, trunk);
        }
    }

    /// carol is in no class and no list: she never gets the international
    /// rules, whatever she dials.
    #[test]
    fn a_caller_not_allowed_never_gets_the_rule(d in "(00|011)[1-9][0-9]{4,12}") {
        let route = plan().route(&d, &user("carol"));
        prop_assert!(route.is_none(), "{d}: {route:?}");
    }

    /// A pattern made of a dialled number, some digits replaced by X, Z or
    /// N where the digit fits, matches the number; the number with one
    /// position changed to a digit outside the class does not.
    #[test]
    fn patterns_made_from_a_number_match_it(
        digits in "[0-9]{1,15}",
        classes in proptest::collection::vec(0u8..4, 15),
        flip in 0usize..15,
    ) {
        let mut pattern = String::from("_");
        for (i, b) in digits.bytes().enumerate() {
            let c = match classes[i] {
                1 => 'X',
                2 if b >= b'1' => 'Z',
                3 if b >= b'2' => 'N',
                _ => b as char,
            };
            pattern.push(c);
        }
        let compiled = Pattern::parse(&pattern).unwrap();
        prop_assert!(compiled.matches(&digits), "{pattern} vs {digits}");
        let longer = format!("{digits}0");
        prop_assert!(!compiled.matches(&longer), "{} vs {}", pattern, longer);
        let i = flip % digits.len();
        let p = pattern.as_bytes()[i + 1];
        let d = digits.as_bytes()[i];
        // A digit the position refuses: another digit for a literal, 0 for
        // Z, 1 for N; X accepts every digit.
        let other = match p {
            b'X' => None,
            b'Z' => Some(b'0'),
            b'N' => Some(b'1'),
            _ => Some(if d == b'9' { b'0' } else { d + 1 }),
        };
        if let Some(other) = other {
            let mut broken = digits.clone().into_bytes();
            broken[i] = other;
            let broken = String::from_utf8(broken).unwrap();
            prop_assert!(!compiled.matches(&broken), "{pattern} vs {broken}");
        }
    }

    /// `_X.` with prefix `+` routes every digit string that makes an E.164
    /// number, to exactly that number.
    #[test]
    fn an_open_rule_normalises_by_prefix(d in "[1-9][0-9]{1,14}") {
        let plan = DialPlan::compile(&BTreeMap::new(), &[rule("_X.", 0, "+", "t", "")]).unwrap();
        let route = plan.route(&d, &user("anyone")).unwrap();
        prop_assert_eq!(route.number.to_string(), format!("+{d}"));
    }
}

#[test]
fn a_result_that_is_not_e164_is_passed_over() {
    // `_X.` matches 20 digits, but +20 digits is not E.164: the next rule
    // (none here) decides.
    let plan = DialPlan::compile(&BTreeMap::new(), &[rule("_X.", 0, "+", "t", "")]).unwrap();
    assert_eq!(plan.route("12345678901234567890", &user("a")), None);
    assert_eq!(plan.route("0123", &user("a")), None);
    assert_eq!(
        plan.route("4420", &user("a")).map(|r| r.number.to_string()),
        Some("+4420".to_owned())
    );
}
