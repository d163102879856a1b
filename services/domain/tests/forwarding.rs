//! Routing with call features (`routing::route` with forwarding rules and
//! do-not-disturb): property tests over small directories of users whose
//! rules point at each other (loops, chains, other domains, unusable
//! targets), then given/when/then unit tests for each rule.
//!
//! Each binding's `reach` is `(user index, binding index)`, so a plan's
//! targets can be traced back to the phone each one rings.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use dialtone_domain::call::ForwardReason;
use dialtone_domain::domain::Status;
use dialtone_domain::forwarding::{ForwardTarget, Forwarding, NoAnswerRule, Rule, RuleTimes};
use dialtone_domain::names::UserAddress;
use dialtone_domain::registration::MICROS_PER_SEC;
use dialtone_domain::routing::{
    route, Call, Callee, CalleeBinding, CalleeUser, Limits, Next, Party, Plan, Refusal, SkipReason,
    Skipped, Target, Unrouted, Users, MAX_PLAN_STEPS,
};
use dialtone_domain::schedule::{TimeCondition, TimeZone};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

const NOW: i64 = 1_764_150_000_000_000;

/// The users of a generated directory: `u0` is dialled.
const NAMES: [&str; 5] = [
    "u0@a.example",
    "u1@a.example",
    "u2@a.example",
    "u3@b.example",
    "u4@b.example",
];

#[derive(Debug, Clone)]
struct UserSpec {
    domain: Status,
    domain_calls_out: bool,
    exists: bool,
    enabled: bool,
    /// Expiry of each binding, relative to `NOW`.
    bindings: Vec<i64>,
    forwarding: Forwarding,
    dnd: bool,
    /// The voicemail box is enabled.
    voicemail: bool,
}

/// Owned inputs; [`Directory::callees`] lends them to routing.
#[derive(Debug, Clone)]
struct Directory {
    users: Vec<UserSpec>,
    uris: Vec<Vec<String>>,
    /// Every domain's time zone (`None`: not set, UTC).
    zone: Option<TimeZone>,
}

impl Directory {
    fn new(users: Vec<UserSpec>) -> Self {
        let uris = users
            .iter()
            .enumerate()
            .map(|(u, spec)| {
                (0..spec.bindings.len())
                    .map(|b| format!("sip:u{u}@192.0.2.{b}:5060"))
                    .collect()
            })
            .collect();
        Directory {
            users,
            uris,
            zone: None,
        }
    }

    fn callee(&self, i: usize) -> Callee<'_, (usize, usize)> {
        let spec = &self.users[i];
        Callee {
            domain: spec.domain,
            domain_calls_out: spec.domain_calls_out,
            time_zone: self.zone.as_ref(),
            group: None,
            room: false,
            user: spec.exists.then(|| CalleeUser {
                enabled: spec.enabled,
                presence: None,
                bindings: spec
                    .bindings
                    .iter()
                    .enumerate()
                    .map(|(b, delta)| CalleeBinding {
                        uri: &self.uris[i][b],
                        q: None,
                        expires_at: NOW + delta,
                        reach: (i, b),
                    })
                    .collect(),
                forwarding: Some(&spec.forwarding),
                dnd: spec.dnd,
                on_call: false,
                last_call_ended: None,
                voicemail: spec.voicemail,
            }),
        }
    }

    /// Every user, as a complete lookup (with `nobody@a.example`, a user
    /// that does not exist).
    fn callees(&self) -> HashMap<UserAddress, Callee<'_, (usize, usize)>> {
        let mut all: HashMap<_, _> = (0..self.users.len())
            .map(|i| (address(i), self.callee(i)))
            .collect();
        all.insert(
            UserAddress::parse("nobody@a.example").unwrap(),
            Callee {
                domain: self.users[1].domain,
                domain_calls_out: self.users[1].domain_calls_out,
                time_zone: self.zone.as_ref(),
                group: None,
                room: false,
                user: None,
            },
        );
        all
    }

    fn live(&self, i: usize) -> Vec<(usize, usize)> {
        (0..self.users[i].bindings.len())
            .filter(|&b| self.users[i].bindings[b] > 0)
            .map(|b| (i, b))
            .collect()
    }
}

fn address(i: usize) -> UserAddress {
    UserAddress::parse(NAMES[i]).unwrap()
}

fn index_of(party: &Party<'_>) -> usize {
    NAMES
        .iter()
        .position(|n| *n == format!("{}@{}", party.user, party.domain))
        .unwrap()
}

fn dialled_call(caller_domain: &str) -> Call<'_> {
    Call {
        caller_domain,
        caller_may_call_other_domains: true,
        callee_domain: "a.example",
        callee_user: "u0",
        schedule_time: None,
    }
}

type Routed<'a> = Result<Plan<'a, Target<'a, (usize, usize)>>, Unrouted>;

fn route_all<'a>(
    dir: &'a Directory,
    users: &impl Users<'a, (usize, usize)>,
    limits: Limits,
) -> Routed<'a> {
    route(
        &dialled_call("a.example"),
        &dir.callee(0),
        users,
        NOW,
        limits,
    )
}

// ================================================================ inputs

fn target() -> impl Strategy<Value = ForwardTarget> {
    prop_oneof![
        8 => (0..NAMES.len()).prop_map(|i| ForwardTarget::User(address(i))),
        1 => Just(ForwardTarget::Number("+15551234567".into())),
        1 => Just(ForwardTarget::Voicemail(address(1))),
        1 => Just(ForwardTarget::User(UserAddress::parse("nobody@a.example").unwrap())),
    ]
}

fn forwarding() -> impl Strategy<Value = Forwarding> {
    (
        option::weighted(0.25, target()),
        option::weighted(0.5, target()),
        option::weighted(0.5, (target(), 1u32..60)),
        option::weighted(0.5, target()),
    )
        .prop_map(|(always, busy, no_answer, unavailable)| Forwarding {
            always,
            busy,
            no_answer: no_answer.map(|(target, after_secs)| NoAnswerRule { target, after_secs }),
            unavailable,
            when: RuleTimes::default(),
            // Follow-me has properties of its own (tests/follow_me.rs).
            follow_me: None,
        })
}

fn user_spec() -> impl Strategy<Value = UserSpec> {
    (
        prop_oneof![8 => Just(Status::Active), 1 => Just(Status::Suspended), 1 => Just(Status::Deleted)],
        any::<bool>(),
        prop::bool::weighted(0.9),
        prop::bool::weighted(0.9),
        vec(prop_oneof![Just(-MICROS_PER_SEC), Just(0i64), Just(60 * MICROS_PER_SEC)], 0..3),
        forwarding(),
        prop::bool::weighted(0.2),
        any::<bool>(),
    )
        .prop_map(|(domain, domain_calls_out, exists, enabled, bindings, forwarding, dnd, voicemail)| UserSpec {
            domain,
            domain_calls_out,
            exists,
            enabled,
            bindings,
            forwarding,
            dnd,
            voicemail,
        })
}

fn directory() -> impl Strategy<Value = Directory> {
    vec(user_spec(), NAMES.len()).prop_map(|mut users| {
        // The dialled user's domain is active: the domain refusals are
        // covered by tests/routing.rs.
        users[0].domain = Status::Active;
        // Domains share their status and setting, as in the real thing.
        for i in [2, 4] {
            users[i].domain = users[i - 1].domain;
            users[i].domain_calls_out = users[i - 1].domain_calls_out;
        }
        users[1].domain = Status::Active;
        users[2].domain = Status::Active;
        users[1].domain_calls_out = users[0].domain_calls_out;
        users[2].domain_calls_out = users[0].domain_calls_out;
        Directory::new(users)
    })
}

fn limits() -> impl Strategy<Value = Limits> {
    (0usize..7).prop_map(|max_forward_hops| Limits { max_forward_hops })
}

// ================================================================ checks

/// Every path through the plan from its first step, as step indices.
fn paths(plan: &Plan<'_, Target<'_, (usize, usize)>>) -> Vec<Vec<usize>> {
    fn walk(
        plan: &Plan<'_, Target<'_, (usize, usize)>>,
        at: usize,
        path: &mut Vec<usize>,
        out: &mut Vec<Vec<usize>>,
    ) {
        path.push(at);
        let next = plan.steps[at].next;
        let children: BTreeSet<usize> = [next.busy, next.no_answer, next.unavailable]
            .into_iter()
            .flatten()
            .collect();
        if children.is_empty() {
            out.push(path.clone());
        }
        for child in children {
            walk(plan, child, path, out);
        }
        path.pop();
    }
    let mut out = Vec::new();
    walk(plan, 0, &mut Vec::new(), &mut out);
    out
}

/// Whether user `i` can be rung by a forward from user `from`.
fn reachable_from(dir: &Directory, from: usize, i: usize) -> bool {
    let (f, u) = (&dir.users[from], &dir.users[i]);
    let crosses = address(from).domain != address(i).domain;
    u.domain == Status::Active && u.exists && u.enabled && (!crosses || f.domain_calls_out)
}

fn check_plan(dir: &Directory, plan: &Plan<'_, Target<'_, (usize, usize)>>, limits: Limits) {
    assert!(!plan.steps.is_empty() && plan.steps.len() <= MAX_PLAN_STEPS);
    for (i, step) in plan.steps.iter().enumerate() {
        // Next always points forward: every plan ends.
        for next in [step.next.busy, step.next.no_answer, step.next.unavailable]
            .into_iter()
            .flatten()
        {
            assert!(next > i && next < plan.steps.len(), "step {i} -> {next}");
        }
        let owner = index_of(&step.owner);
        let spec = &dir.users[owner];
        if step.voicemail {
            // The owner's box: no phones, the end of the call's path, and
            // only for an enabled user whose box is on.
            assert!(step.targets.is_empty() && step.next == Next::NONE);
            assert_eq!(step.ring_timeout, None);
            assert!(spec.exists && spec.enabled && spec.voicemail);
            assert_eq!(spec.domain, Status::Active);
        } else {
            // A step rings exactly its owner's live phones; the owner can ring.
            let rung: Vec<_> = step.targets.iter().map(|t| t.reach).collect();
            assert_eq!(rung, dir.live(owner), "step {i}");
            assert!(spec.exists && spec.enabled && spec.domain == Status::Active && !spec.dnd);
            // Rules shape the step.
            assert_eq!(
                step.ring_timeout,
                spec.forwarding
                    .no_answer
                    .as_ref()
                    .map(|r| Duration::from_secs(u64::from(r.after_secs)))
            );
        }
        // The chain of forwards: from the dialled user to the owner, each
        // one taken from where the previous one led, within the limit,
        // into domains the forwarding user may call.
        assert!(step.diversions.len() <= limits.max_forward_hops);
        let mut at = 0;
        for d in &step.diversions {
            assert_eq!(index_of(&d.from), at);
            let to = match d.to {
                ForwardTarget::Voicemail(a) => a,
                t => t.user().expect("only users and boxes are forwarded to"),
            };
            let to = NAMES.iter().position(|n| *n == to.to_string()).unwrap();
            assert!(reachable_from(dir, at, to), "forward {at} -> {to}");
            let rules = &dir.users[at].forwarding;
            let rule = match d.reason {
                ForwardReason::Unconditional => rules.always.as_ref(),
                ForwardReason::UserBusy | ForwardReason::DoNotDisturb => rules.busy.as_ref(),
                ForwardReason::NoAnswer => rules.no_answer.as_ref().map(|r| &r.target),
                ForwardReason::Unavailable => rules.unavailable.as_ref(),
            };
            assert_eq!(rule, Some(d.to), "the rule for {:?}", d.reason);
            at = to;
        }
        assert_eq!(at, owner);
    }
    // Along any path of outcomes, no user is rung twice and no user is
    // forwarded through twice.
    for path in paths(plan) {
        let mut seen = BTreeSet::new();
        // (A box is not a phone: a user's own box follows its phones.)
        for &i in path.iter().filter(|&&i| !plan.steps[i].voicemail) {
            assert!(
                seen.insert(index_of(&plan.steps[i].owner)),
                "path {path:?} rings a user twice"
            );
        }
        let last = &plan.steps[*path.last().unwrap()];
        let mut chain: Vec<usize> = last.diversions.iter().map(|d| index_of(&d.from)).collect();
        if !last.voicemail {
            chain.push(index_of(&last.owner));
        }
        let distinct: BTreeSet<_> = chain.iter().collect();
        assert_eq!(distinct.len(), chain.len(), "chain {chain:?} loops");
        // Each edge's forward is the previous step's own rule for it.
        for w in path.windows(2) {
            let (parent, child) = (&plan.steps[w[0]], &plan.steps[w[1]]);
            assert!(child.diversions.starts_with(&parent.diversions));
            let first = &child.diversions[parent.diversions.len()];
            assert_eq!(first.from, parent.owner);
            // Each forward of a step is planned on its own: one edge per
            // child, and the forward's reason is the edge's outcome.
            let edge = parent.next;
            let expected = match w[1] {
                c if edge.busy == Some(c) => ForwardReason::UserBusy,
                c if edge.no_answer == Some(c) => ForwardReason::NoAnswer,
                _ => ForwardReason::Unavailable,
            };
            assert_eq!(first.reason, expected, "edge {w:?}");
            let edges = [edge.busy, edge.no_answer, edge.unavailable];
            assert_eq!(edges.iter().filter(|e| **e == Some(w[1])).count(), 1);
            // Forwards after the first happen without ringing.
            for d in &child.diversions[parent.diversions.len() + 1..] {
                assert!(matches!(
                    d.reason,
                    ForwardReason::Unconditional
                        | ForwardReason::DoNotDisturb
                        | ForwardReason::Unavailable
                ));
            }
        }
    }
}

/// A lookup that counts what it was asked for and knows only what was
/// handed in so far.
struct Partial<'a> {
    known: HashMap<UserAddress, Callee<'a, (usize, usize)>>,
}

impl<'a> Users<'a, (usize, usize)> for Partial<'a> {
    fn get(&self, address: &UserAddress) -> Option<&Callee<'a, (usize, usize)>> {
        self.known.get(address)
    }
}

/// A time condition: always, never, or one that depends on the day and
/// hour (NOW is a Wednesday, 09:40 UTC).
fn condition() -> impl Strategy<Value = TimeCondition> {
    prop::sample::select(vec![
        "inside daily 00:00-24:00",
        "outside daily 00:00-24:00",
        "inside mon-fri 09:00-17:00",
        "outside mon-fri 09:00-17:00",
        "inside wed 00:00-10:00; holidays 2025-11-26",
        "outside sat,sun 00:00-24:00",
        "inside daily 22:00-06:00",
    ])
    .prop_map(|text| TimeCondition::parse(text).unwrap())
}

/// A directory whose rules have time conditions, in one of a few zones.
fn timed_directory() -> impl Strategy<Value = Directory> {
    (
        directory(),
        vec(
            (
                option::weighted(0.5, condition()),
                option::weighted(0.5, condition()),
                option::weighted(0.5, condition()),
                option::weighted(0.5, condition()),
            ),
            NAMES.len(),
        ),
        prop::sample::select(vec![
            None,
            Some("Europe/Berlin"),
            Some("America/New_York"),
            Some("Pacific/Kiritimati"),
        ]),
    )
        .prop_map(|(mut dir, times, zone)| {
            for (user, (always, busy, no_answer, unavailable)) in dir.users.iter_mut().zip(times) {
                user.forwarding.when = RuleTimes {
                    always,
                    busy,
                    no_answer,
                    unavailable,
                };
            }
            dir.zone = zone.map(|z| TimeZone::parse(z).unwrap());
            dir
        })
}

/// The rules of `f` that apply at `at` in `tz`, without conditions.
fn rules_at(f: &Forwarding, at: i64, tz: &TimeZone) -> Forwarding {
    let pick = |rule| f.target_at(rule, at, tz).cloned();
    Forwarding {
        always: pick(Rule::Always),
        busy: pick(Rule::Busy),
        no_answer: f
            .no_answer
            .clone()
            .filter(|_| pick(Rule::NoAnswer).is_some()),
        unavailable: pick(Rule::Unavailable),
        when: RuleTimes::default(),
        follow_me: f.follow_me.clone(),
    }
}

// ================================================================ properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Any rules, any presence: the plan is bounded, always ends, never
    /// rings a user twice on any path, rings only users that can be rung
    /// (active domain, enabled, not on do-not-disturb, allowed across
    /// domains) and each with exactly its live phones, and records the
    /// forwards that led to each step.
    #[test]
    fn plans_are_bounded_loop_free_and_follow_the_rules(dir in directory(), limits in limits()) {
        match route_all(&dir, &dir.callees(), limits) {
            Ok(plan) => check_plan(&dir, &plan, limits),
            Err(Unrouted::Refused(refusal)) => {
                let u0 = &dir.users[0];
                match refusal {
                    Refusal::UnknownUser => prop_assert!(!u0.exists),
                    Refusal::UserDisabled => prop_assert!(!u0.enabled),
                    Refusal::Busy => prop_assert!(u0.dnd),
                    Refusal::NotRegistered => prop_assert!(dir.live(0).is_empty()),
                    other => prop_assert!(false, "refused {:?}", other),
                }
            }
            Err(Unrouted::NeedsUser(who)) => prop_assert!(false, "a complete lookup needed {}", who),
        }
    }

    /// Looking users up one at a time, as the SIP bridge does (route, look
    /// up the user asked for, route again), gives the same decision as
    /// knowing everyone, asks only for users a rule names, and never twice.
    #[test]
    fn incremental_lookup_decides_the_same(dir in directory(), limits in limits()) {
        let all = dir.callees();
        let expected = route_all(&dir, &all, limits);
        let mut partial = Partial { known: HashMap::new() };
        let mut asked = BTreeSet::new();
        let decided = loop {
            match route_all(&dir, &partial, limits) {
                Err(Unrouted::NeedsUser(who)) => {
                    prop_assert!(asked.insert(who.to_string()), "asked twice for {}", who);
                    let named = dir.users.iter().any(|u| {
                        u.forwarding.targets().any(|(_, t)| {
                            t.user() == Some(&who)
                                || matches!(t, ForwardTarget::Voicemail(a) if *a == who)
                        })
                    });
                    prop_assert!(named, "asked for {} that no rule names", who);
                    let callee = all.get(&who).cloned().expect("every named user is known");
                    partial.known.insert(who, callee);
                }
                other => break other,
            }
        };
        prop_assert_eq!(decided, expected);
    }

    /// Every rule of a step's owner that follows the ring (busy, no answer,
    /// unavailable) and applies is either taken (the outcome leads to a
    /// step) or noted as skipped, never both.
    #[test]
    fn each_rule_is_taken_or_noted(dir in directory(), limits in limits()) {
        if let Ok(plan) = route_all(&dir, &dir.callees(), limits) {
            // A box has no rules of its own.
            for step in plan.steps.iter().filter(|s| !s.voicemail) {
                let f = &dir.users[index_of(&step.owner)].forwarding;
                for (rule, has, next) in [
                    (ForwardReason::UserBusy, f.busy.is_some(), step.next.busy),
                    (ForwardReason::NoAnswer, f.no_answer.is_some(), step.next.no_answer),
                    (ForwardReason::Unavailable, f.unavailable.is_some(), step.next.unavailable),
                ] {
                    let noted = step.skipped.iter().filter(|k| k.rule == rule).count();
                    if has {
                        prop_assert_eq!(noted + usize::from(next.is_some()), 1, "{:?} of {:?}", rule, step);
                    } else {
                        prop_assert_eq!(noted, 0);
                        prop_assert!(next.is_none());
                    }
                }
            }
        }
    }

    /// Schedules: a call is routed exactly as if each rule whose time
    /// condition does not hold (at the call's schedule time, in the
    /// domain's zone) did not exist and the others had no condition; the
    /// schedule time, not `now`, decides.
    #[test]
    fn rules_apply_only_while_their_time_condition_holds(
        dir in timed_directory(),
        limits in limits(),
        hours in 0i64..24 * 8,
    ) {
        let at = NOW + hours * 3600 * MICROS_PER_SEC;
        let tz = dir.zone.clone().unwrap_or_default();
        let mut plain = dir.clone();
        for user in &mut plain.users {
            user.forwarding = rules_at(&user.forwarding, at, &tz);
        }
        let call = Call {
            schedule_time: Some(at),
            ..dialled_call("a.example")
        };
        let timed = route(&call, &dir.callee(0), &dir.callees(), NOW, limits);
        let expected = route(&dialled_call("a.example"), &plain.callee(0), &plain.callees(), NOW, limits);
        prop_assert_eq!(timed, expected);
    }

    /// Do-not-disturb: the user's phones never ring; without a busy rule
    /// the dialled user is refused busy unless forward-always takes the
    /// call elsewhere.
    #[test]
    fn a_dnd_user_is_never_rung(mut dir in directory(), limits in limits()) {
        dir.users[0].dnd = true;
        dir.users[0].exists = true;
        dir.users[0].enabled = true;
        match route_all(&dir, &dir.callees(), limits) {
            Ok(plan) => {
                prop_assert!(plan.steps.iter().all(|s| index_of(&s.owner) != 0));
                prop_assert!(dir.users[0].forwarding.busy.is_some() || dir.users[0].forwarding.always.is_some());
            }
            Err(e) => prop_assert_eq!(e, Unrouted::Refused(Refusal::Busy)),
        }
    }
}

// ================================================================ unit tests

fn user(bindings: Vec<i64>, forwarding: Forwarding) -> UserSpec {
    UserSpec {
        domain: Status::Active,
        domain_calls_out: false,
        exists: true,
        enabled: true,
        bindings,
        forwarding,
        dnd: false,
        voicemail: false,
    }
}

const LIVE: i64 = 60 * MICROS_PER_SEC;

fn to(i: usize) -> Option<ForwardTarget> {
    Some(ForwardTarget::User(address(i)))
}

fn registered(i: usize) -> UserSpec {
    let _ = i;
    user(vec![LIVE], Forwarding::default())
}

/// `u0` with `rules`, and `u1`..`u4` registered without rules.
fn given(rules: Forwarding) -> Directory {
    let mut users: Vec<UserSpec> = (0..NAMES.len()).map(registered).collect();
    users[0].forwarding = rules;
    Directory::new(users)
}

fn owners(plan: &Plan<'_, Target<'_, (usize, usize)>>) -> Vec<usize> {
    plan.steps.iter().map(|s| index_of(&s.owner)).collect()
}

#[test]
fn busy_and_no_answer_lead_to_their_targets_after_ringing() {
    let dir = given(Forwarding {
        busy: to(1),
        no_answer: Some(NoAnswerRule {
            target: to(2).unwrap(),
            after_secs: 15,
        }),
        ..Forwarding::default()
    });
    let plan = route_all(&dir, &dir.callees(), Limits::default()).unwrap();
    assert_eq!(owners(&plan), [0, 1, 2]);
    assert_eq!(plan.steps[0].ring_timeout, Some(Duration::from_secs(15)));
    assert_eq!(
        plan.steps[0].next,
        Next {
            busy: Some(1),
            no_answer: Some(2),
            unavailable: None
        }
    );
    assert_eq!(plan.steps[1].diversions.len(), 1);
    assert_eq!(plan.steps[1].diversions[0].reason, ForwardReason::UserBusy);
    assert_eq!(plan.steps[2].diversions[0].reason, ForwardReason::NoAnswer);
    assert_eq!(plan.steps[1].next, Next::NONE);
}

fn voicemail_of(i: usize) -> ForwardTarget {
    ForwardTarget::Voicemail(address(i))
}

#[test]
fn no_answer_goes_to_the_voicemail_box_as_a_last_step_without_targets() {
    let mut dir = given(Forwarding {
        no_answer: Some(NoAnswerRule {
            target: voicemail_of(0),
            after_secs: 20,
        }),
        busy: Some(voicemail_of(0)),
        ..Forwarding::default()
    });
    dir.users[0].voicemail = true;
    let plan = route_all(&dir, &dir.callees(), Limits::default()).unwrap();
    assert_eq!(owners(&plan), [0, 0, 0]);
    assert_eq!(plan.steps[0].ring_timeout, Some(Duration::from_secs(20)));
    assert!(!plan.steps[0].voicemail);
    for (i, reason) in [(1, ForwardReason::UserBusy), (2, ForwardReason::NoAnswer)] {
        let step = &plan.steps[i];
        assert!(step.voicemail, "step {i} is the box");
        assert!(step.targets.is_empty());
        assert_eq!(step.next, Next::NONE, "the box is the end");
        assert_eq!(step.diversions.len(), 1);
        assert_eq!(step.diversions[0].reason, reason);
        assert_eq!(*step.diversions[0].to, voicemail_of(0));
    }
    assert_eq!(
        plan.steps[0].next,
        Next {
            busy: Some(1),
            no_answer: Some(2),
            unavailable: None
        }
    );
}

#[test]
fn a_user_without_phones_goes_straight_to_another_users_box() {
    let mut dir = given(Forwarding {
        unavailable: Some(voicemail_of(1)),
        always: None,
        ..Forwarding::default()
    });
    dir.users[0].bindings.clear();
    dir.users[1].voicemail = true;
    let plan = route_all(&dir, &dir.callees(), Limits::default()).unwrap();
    assert_eq!(owners(&plan), [1]);
    assert!(plan.steps[0].voicemail);
    assert_eq!(
        plan.steps[0].diversions[0].reason,
        ForwardReason::Unavailable
    );
}

#[test]
fn a_box_that_is_off_is_a_forward_not_taken() {
    let dir = given(Forwarding {
        always: Some(voicemail_of(1)),
        ..Forwarding::default()
    });
    let plan = route_all(&dir, &dir.callees(), Limits::default()).unwrap();
    assert_eq!(owners(&plan), [0], "rings the user's own phones");
    assert!(!plan.steps[0].voicemail);
    assert_eq!(plan.steps[0].skipped.len(), 1);
    assert_eq!(plan.steps[0].skipped[0].why, SkipReason::TargetUnavailable);
}

#[test]
fn always_skips_the_users_phones() {
    let dir = given(Forwarding {
        always: to(1),
        busy: to(2),
        ..Forwarding::default()
    });
    let plan = route_all(&dir, &dir.callees(), Limits::default()).unwrap();
    assert_eq!(owners(&plan), [1]);
    assert_eq!(
        plan.steps[0].diversions[0].reason,
        ForwardReason::Unconditional
    );
}

#[test]
fn a_three_step_chain_is_followed_and_recorded() {
    let mut dir = given(Forwarding {
        always: to(1),
        ..Forwarding::default()
    });
    dir.users[1].forwarding.always = to(2);
    dir.users[2].forwarding.busy = to(3);
    dir.users[0].domain_calls_out = true;
    dir.users[1].domain_calls_out = true;
    dir.users[2].domain_calls_out = true;
    let plan = route_all(&dir, &dir.callees(), Limits::default()).unwrap();
    assert_eq!(owners(&plan), [2, 3]);
    let chain: Vec<_> = plan.steps[1]
        .diversions
        .iter()
        .map(|d| (index_of(&d.from), d.reason))
        .collect();
    assert_eq!(
        chain,
        [
            (0, ForwardReason::Unconditional),
            (1, ForwardReason::Unconditional),
            (2, ForwardReason::UserBusy)
        ]
    );
}

#[test]
fn a_loop_ends_at_its_last_valid_target() {
    let mut dir = given(Forwarding {
        always: to(1),
        ..Forwarding::default()
    });
    dir.users[1].forwarding.always = to(0);
    let plan = route_all(&dir, &dir.callees(), Limits::default()).unwrap();
    // u1's forward back to u0 is not taken: u1 rings, and its step says
    // why its rule was not used.
    assert_eq!(owners(&plan), [1]);
    assert_eq!(
        plan.steps[0].skipped,
        [Skipped {
            rule: ForwardReason::Unconditional,
            to: &to(0).unwrap(),
            why: SkipReason::Loop,
        }]
    );
}

#[test]
fn every_rule_not_taken_is_noted_with_why() {
    // u0 rings; busy -> a number (not routable), no answer -> u1 (which
    // is disabled), unavailable -> u2 (taken with a hop limit of 1; with
    // 0, no forward is taken and the limit is what every rule meets
    // after the number's).
    let mut dir = given(Forwarding {
        busy: Some(ForwardTarget::Number("+15551234567".into())),
        no_answer: Some(NoAnswerRule {
            target: to(1).unwrap(),
            after_secs: 10,
        }),
        unavailable: to(2),
        ..Forwarding::default()
    });
    dir.users[1].enabled = false;
    let plan = route_all(
        &dir,
        &dir.callees(),
        Limits {
            max_forward_hops: 1,
        },
    )
    .unwrap();
    let s = &plan.steps[0];
    assert_eq!(s.next.busy, None);
    assert_eq!(s.next.no_answer, None);
    assert!(s.next.unavailable.is_some());
    let why: Vec<(ForwardReason, SkipReason)> = s.skipped.iter().map(|k| (k.rule, k.why)).collect();
    assert_eq!(
        why,
        [
            (ForwardReason::UserBusy, SkipReason::NotRoutable),
            (ForwardReason::NoAnswer, SkipReason::TargetUnavailable),
        ]
    );
    let plan = route_all(
        &dir,
        &dir.callees(),
        Limits {
            max_forward_hops: 0,
        },
    )
    .unwrap();
    let why: Vec<SkipReason> = plan.steps[0].skipped.iter().map(|k| k.why).collect();
    assert_eq!(
        why,
        [
            SkipReason::NotRoutable,
            SkipReason::HopLimit,
            SkipReason::HopLimit
        ]
    );
}

#[test]
fn the_hop_limit_stops_a_chain() {
    let mut dir = given(Forwarding {
        always: to(1),
        ..Forwarding::default()
    });
    dir.users[1].forwarding.always = to(2);
    let plan = route_all(
        &dir,
        &dir.callees(),
        Limits {
            max_forward_hops: 1,
        },
    )
    .unwrap();
    assert_eq!(owners(&plan), [1]);
    let plan = route_all(
        &dir,
        &dir.callees(),
        Limits {
            max_forward_hops: 0,
        },
    )
    .unwrap();
    assert_eq!(owners(&plan), [0]);
}

#[test]
fn unregistered_goes_to_the_unavailable_target_or_is_refused() {
    let mut dir = given(Forwarding {
        unavailable: to(1),
        ..Forwarding::default()
    });
    dir.users[0].bindings = vec![-MICROS_PER_SEC];
    let plan = route_all(&dir, &dir.callees(), Limits::default()).unwrap();
    assert_eq!(owners(&plan), [1]);
    assert_eq!(
        plan.steps[0].diversions[0].reason,
        ForwardReason::Unavailable
    );
    dir.users[0].forwarding = Forwarding::default();
    assert_eq!(
        route_all(&dir, &dir.callees(), Limits::default()),
        Err(Unrouted::Refused(Refusal::NotRegistered))
    );
}

#[test]
fn dnd_follows_the_busy_rule_or_answers_busy() {
    let mut dir = given(Forwarding {
        busy: to(1),
        ..Forwarding::default()
    });
    dir.users[0].dnd = true;
    let plan = route_all(&dir, &dir.callees(), Limits::default()).unwrap();
    assert_eq!(owners(&plan), [1]);
    assert_eq!(
        plan.steps[0].diversions[0].reason,
        ForwardReason::DoNotDisturb
    );
    dir.users[0].forwarding = Forwarding::default();
    assert_eq!(
        route_all(&dir, &dir.callees(), Limits::default()),
        Err(Unrouted::Refused(Refusal::Busy))
    );
    assert_eq!(Refusal::Busy.sip_status(), 486);
}

#[test]
fn forwards_that_cannot_be_rung_are_not_taken() {
    // Another domain without cross-domain calls, a number (no trunks yet),
    // a disabled user, a user on do-not-disturb, a suspended domain.
    let mut dir = given(Forwarding {
        always: to(3),
        ..Forwarding::default()
    });
    let plan = route_all(&dir, &dir.callees(), Limits::default()).unwrap();
    assert_eq!(owners(&plan), [0]);
    dir.users[0].domain_calls_out = true;
    let plan = route_all(&dir, &dir.callees(), Limits::default()).unwrap();
    assert_eq!(owners(&plan), [3]);
    dir.users[3].domain = Status::Suspended;
    assert_eq!(
        owners(&route_all(&dir, &dir.callees(), Limits::default()).unwrap()),
        [0]
    );

    let mut dir = given(Forwarding {
        always: Some(ForwardTarget::Number("+15551234567".into())),
        ..Forwarding::default()
    });
    assert_eq!(
        owners(&route_all(&dir, &dir.callees(), Limits::default()).unwrap()),
        [0]
    );
    dir.users[0].forwarding.always = to(1);
    dir.users[1].enabled = false;
    assert_eq!(
        owners(&route_all(&dir, &dir.callees(), Limits::default()).unwrap()),
        [0]
    );
    dir.users[1].enabled = true;
    dir.users[1].dnd = true;
    assert_eq!(
        owners(&route_all(&dir, &dir.callees(), Limits::default()).unwrap()),
        [0]
    );
}

#[test]
fn each_forwarding_users_rules_are_read_in_its_own_domains_zone() {
    // u0 (a.example, Berlin) forwards always to u3 (b.example, New York)
    // in Berlin's business hours; u3 forwards always to u4 in New York's.
    // Routing reads the clock once per zone, not once per route.
    let hours = || Some(TimeCondition::parse("inside mon-fri 09:00-17:00").unwrap());
    let mut dir = given(Forwarding {
        always: to(3),
        when: RuleTimes {
            always: hours(),
            ..RuleTimes::default()
        },
        ..Forwarding::default()
    });
    dir.users[0].domain_calls_out = true;
    dir.users[3].forwarding = Forwarding {
        always: to(4),
        when: RuleTimes {
            always: hours(),
            ..RuleTimes::default()
        },
        ..Forwarding::default()
    };
    dir.zone = Some(TimeZone::parse("Europe/Berlin").unwrap());
    let new_york = TimeZone::parse("America/New_York").unwrap();
    let mut users = dir.callees();
    for i in [3, 4] {
        users.get_mut(&address(i)).unwrap().time_zone = Some(&new_york);
    }
    // Monday 2026-12-07, in UTC.
    let monday = |hour: i64| (1_796_601_600 + hour * 3600) * MICROS_PER_SEC;
    for (utc_hour, expected) in [
        // 10:00 in Berlin, 04:00 in New York.
        (9, 3),
        // 16:00 in Berlin, 10:00 in New York.
        (15, 4),
        // 18:00 in Berlin, 12:00 in New York.
        (17, 0),
    ] {
        let call = Call {
            schedule_time: Some(monday(utc_hour)),
            ..dialled_call("a.example")
        };
        let plan = route(&call, &dir.callee(0), &users, NOW, Limits::default()).unwrap();
        assert_eq!(owners(&plan), [expected], "at {utc_hour}:00 UTC");
    }
}
