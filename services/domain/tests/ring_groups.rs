//! Routing calls to ring groups (`routing::route` with a [`CalleeGroup`]):
//! a property test over random groups of random members (do-not-disturb,
//! on a call, registered or not, idle for different times) in every
//! strategy, then given/when/then unit tests for each rule.
//!
//! A binding's `reach` is the index of its member, so a plan's targets can
//! be traced back to whose phone each one rings.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use dialtone_domain::call::ForwardReason;
use dialtone_domain::domain::Status;
use dialtone_domain::forwarding::{ForwardTarget, Forwarding, NoAnswerRule, RuleTimes};
use dialtone_domain::names::UserAddress;
use dialtone_domain::ring_group::{Member, RingGroup, Strategy as RingStrategy};
use dialtone_domain::routing::{
    route, Call, Callee, CalleeBinding, CalleeGroup, CalleeUser, Limits, Plan, Refusal, Target,
    Unrouted, MAX_LOOKUPS,
};
use dialtone_domain::schedule::{TimeCondition, TimeZone};
use dialtone_domain::UserName;
use proptest::prelude::*;

const NOW: i64 = 1_764_150_000_000_000;
const SEC: i64 = 1_000_000;
const DOMAIN: &str = "a.example";

#[derive(Debug, Clone)]
struct MemberSpec {
    exists: bool,
    registered: bool,
    dnd: bool,
    on_call: bool,
    last_call_ended: Option<i64>,
}

impl MemberSpec {
    fn ringable(&self, group: &RingGroup) -> bool {
        self.exists
            && self.registered
            && !(self.dnd && group.skip_dnd)
            && !(self.on_call && group.skip_busy)
    }
}

fn name(i: usize) -> String {
    format!("m{i}")
}

fn address(user: &str) -> UserAddress {
    UserAddress::parse(&format!("{user}@{DOMAIN}")).unwrap()
}

/// Owned inputs lent to routing: the members as users, the group as the
/// dialled callee.
struct Setup {
    group: RingGroup,
    members: Vec<MemberSpec>,
    uris: Vec<String>,
    rotation: usize,
    /// Other users (forward targets): name -> registered.
    others: Vec<(&'static str, bool)>,
}

impl Setup {
    fn new(group: RingGroup, members: Vec<MemberSpec>) -> Self {
        let uris = (0..members.len())
            .map(|i| format!("sip:{}@192.0.2.{i}", name(i)))
            .collect();
        Setup {
            group,
            members,
            uris,
            rotation: 0,
            others: Vec::new(),
        }
    }

    fn user<'a>(&'a self, i: usize) -> Callee<'a, usize> {
        let spec = &self.members[i];
        Callee {
            domain: Status::Active,
            domain_calls_out: false,
            time_zone: None,
            user: spec.exists.then(|| CalleeUser {
                enabled: true,
                presence: None,
                bindings: spec
                    .registered
                    .then(|| CalleeBinding {
                        uri: self.uris[i].as_str(),
                        q: None,
                        expires_at: NOW + 3600 * SEC,
                        reach: i,
                    })
                    .into_iter()
                    .collect(),
                forwarding: None,
                dnd: spec.dnd,
                on_call: spec.on_call,
                last_call_ended: spec.last_call_ended,
                voicemail: false,
            }),
            group: None,
            room: false,
        }
    }

    fn directory(&self) -> HashMap<UserAddress, Callee<'_, usize>> {
        let mut all: HashMap<_, _> = (0..self.members.len())
            .map(|i| (address(&name(i)), self.user(i)))
            .collect();
        for (i, (user, registered)) in self.others.iter().enumerate() {
            all.insert(
                address(user),
                Callee {
                    domain: Status::Active,
                    domain_calls_out: false,
                    time_zone: None,
                    user: Some(CalleeUser {
                        enabled: true,
                        presence: None,
                        bindings: registered
                            .then(|| CalleeBinding {
                                uri: "sip:other@192.0.2.200",
                                q: None,
                                expires_at: NOW + 3600 * SEC,
                                reach: 100 + i,
                            })
                            .into_iter()
                            .collect(),
                        forwarding: None,
                        dnd: false,
                        on_call: false,
                        last_call_ended: None,
                        voicemail: false,
                    }),
                    group: None,
                    room: false,
                },
            );
        }
        all
    }

    fn route_at<'a>(
        &'a self,
        at: Option<i64>,
        zone: Option<&'a TimeZone>,
    ) -> Result<Plan<'a, Target<'a, usize>>, Unrouted> {
        let call = Call {
            caller_domain: DOMAIN,
            caller_may_call_other_domains: false,
            callee_domain: DOMAIN,
            callee_user: "sales",
            schedule_time: at,
        };
        let callee = Callee {
            domain: Status::Active,
            domain_calls_out: false,
            time_zone: zone,
            user: None,
            group: Some(CalleeGroup {
                group: &self.group,
                rotation: self.rotation,
            }),
            room: false,
        };
        route(&call, &callee, &self.directory(), NOW, Limits::default())
    }

    fn route(&self) -> Result<Plan<'_, Target<'_, usize>>, Unrouted> {
        self.route_at(None, None)
    }
}

fn group(strategy: RingStrategy, members: usize) -> RingGroup {
    RingGroup {
        members: (0..members)
            .map(|i| Member {
                user: UserName::parse(&name(i)).unwrap(),
                ring_secs: None,
            })
            .collect(),
        strategy,
        ring_secs: 20,
        timeout_secs: 60,
        skip_busy: true,
        skip_dnd: true,
        forwarding: Forwarding::default(),
    }
}

fn available() -> MemberSpec {
    MemberSpec {
        exists: true,
        registered: true,
        dnd: false,
        on_call: false,
        last_call_ended: None,
    }
}

/// The members each step rings, by index.
fn members_by_step(plan: &Plan<'_, Target<'_, usize>>) -> Vec<Vec<usize>> {
    plan.steps
        .iter()
        .map(|s| s.targets.iter().map(|t| t.reach).collect())
        .collect()
}

fn member_spec() -> impl Strategy<Value = MemberSpec> {
    (
        prop::bool::weighted(0.9),
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
        prop::option::of(0i64..1000),
    )
        .prop_map(|(exists, registered, dnd, on_call, ended)| MemberSpec {
            exists,
            registered,
            dnd,
            on_call,
            last_call_ended: ended.map(|e| NOW - e * SEC),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any group, any members: the plan rings exactly the members that
    /// can ring (never one skipped for do-not-disturb or a call, never one
    /// twice), each target marked with its member, within the group's
    /// timeout, in the strategy's order; or refuses as the members say.
    #[test]
    fn a_group_rings_exactly_its_ringable_members_in_the_strategys_order(
        specs in prop::collection::vec(member_spec(), 1..8),
        strategy in prop::sample::select(&RingStrategy::ALL[..]),
        skip_busy in any::<bool>(),
        skip_dnd in any::<bool>(),
        ring_secs in 1u32..40,
        timeout_secs in 1u32..120,
        rotation in 0usize..20,
    ) {
        let mut g = group(strategy, specs.len());
        g.skip_busy = skip_busy;
        g.skip_dnd = skip_dnd;
        g.ring_secs = ring_secs;
        g.timeout_secs = timeout_secs;
        let mut setup = Setup::new(g.clone(), specs.clone());
        setup.rotation = rotation;
        let ringable: Vec<usize> = (0..specs.len()).filter(|&i| specs[i].ringable(&g)).collect();
        match setup.route() {
            Err(Unrouted::Refused(refusal)) => {
                prop_assert!(ringable.is_empty(), "{refusal:?} with {ringable:?} ringable");
                let busy = specs.iter().any(|s| s.exists && ((s.dnd && skip_dnd) || (s.on_call && skip_busy)));
                prop_assert_eq!(refusal, if busy { Refusal::Busy } else { Refusal::NotRegistered });
            }
            Err(other) => prop_assert!(false, "{other:?}"),
            Ok(plan) => {
                let by_step = members_by_step(&plan);
                let rung: Vec<usize> = by_step.iter().flatten().copied().collect();
                let unique: BTreeSet<usize> = rung.iter().copied().collect();
                prop_assert_eq!(unique.len(), rung.len(), "a member rung twice: {:?}", by_step);
                prop_assert!(rung.iter().all(|i| ringable.contains(i)), "{:?} not all ringable {:?}", rung, ringable);
                for step in &plan.steps {
                    prop_assert!(step.group.is_some());
                    for t in &step.targets {
                        let member = name(t.reach);
                        prop_assert_eq!(t.member.map(|m| m.user), Some(member.as_str()));
                    }
                    for n in [step.next.busy, step.next.no_answer, step.next.unavailable].into_iter().flatten() {
                        prop_assert!(n > 0 && n < plan.steps.len());
                    }
                }
                let total: Duration = plan.steps.iter().filter_map(|s| s.ring_timeout).sum();
                prop_assert!(total <= Duration::from_secs(u64::from(timeout_secs)), "{total:?}");
                match strategy {
                    RingStrategy::Simultaneous => {
                        prop_assert_eq!(by_step.len(), 1);
                        prop_assert_eq!(&rung, &ringable);
                    }
                    _ => {
                        prop_assert!(by_step.iter().all(|s| s.len() == 1));
                        // Every ringable member, unless the timeout ran out.
                        let expected: Vec<usize> = match strategy {
                            RingStrategy::Sequential => ringable.clone(),
                            RingStrategy::RoundRobin => {
                                let start = rotation % specs.len();
                                (start..specs.len()).chain(0..start).filter(|i| ringable.contains(i)).collect()
                            }
                            _ => {
                                let mut by_idle = ringable.clone();
                                by_idle.sort_by_key(|&i| specs[i].last_call_ended.unwrap_or(i64::MIN));
                                by_idle
                            }
                        };
                        prop_assert_eq!(&rung[..], &expected[..rung.len()]);
                        if rung.len() < expected.len() {
                            prop_assert_eq!(total, Duration::from_secs(u64::from(timeout_secs)));
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn members_are_looked_up_one_by_one() {
    let setup = Setup::new(
        group(RingStrategy::Simultaneous, 2),
        vec![available(), available()],
    );
    let call = Call {
        caller_domain: DOMAIN,
        caller_may_call_other_domains: false,
        callee_domain: DOMAIN,
        callee_user: "sales",
        schedule_time: None,
    };
    let callee = Callee::<usize> {
        domain: Status::Active,
        domain_calls_out: false,
        time_zone: None,
        user: None,
        group: Some(CalleeGroup {
            group: &setup.group,
            rotation: 0,
        }),
        room: false,
    };
    let none: HashMap<UserAddress, Callee<'_, usize>> = HashMap::new();
    assert_eq!(
        route(&call, &callee, &none, NOW, Limits::default()),
        Err(Unrouted::NeedsUser(address("m0")))
    );
    const { assert!(MAX_LOOKUPS >= 64 + 2 * 32) };
}

#[test]
fn sequential_members_ring_for_their_own_times_within_the_group_timeout() {
    let mut g = group(RingStrategy::Sequential, 3);
    g.members[0].ring_secs = Some(5);
    g.timeout_secs = 30;
    let setup = Setup::new(g, vec![available(), available(), available()]);
    let plan = setup.route().unwrap();
    let times: Vec<Option<Duration>> = plan.steps.iter().map(|s| s.ring_timeout).collect();
    // 5 s, then 20 s, then what is left of the 30 s.
    assert_eq!(times, [5, 20, 5].map(|s| Some(Duration::from_secs(s))));
    assert_eq!(members_by_step(&plan), [[0], [1], [2]]);
    assert_eq!(plan.steps[0].next.no_answer, Some(1));
    assert_eq!(plan.steps[1].next.busy, Some(2));
    assert_eq!(plan.steps[2].next.no_answer, None);
}

#[test]
fn an_unanswered_group_goes_to_its_no_answer_target_as_a_forward_from_the_group() {
    let mut g = group(RingStrategy::Simultaneous, 2);
    g.forwarding.no_answer = Some(NoAnswerRule {
        target: ForwardTarget::User(address("boss")),
        after_secs: 60,
    });
    let mut setup = Setup::new(g, vec![available(), available()]);
    setup.others.push(("boss", true));
    let plan = setup.route().unwrap();
    assert_eq!(plan.steps.len(), 2);
    assert_eq!(plan.steps[0].ring_timeout, Some(Duration::from_secs(60)));
    // Whatever the members' outcome, the call then goes to boss.
    assert_eq!(plan.steps[0].next.no_answer, Some(1));
    assert_eq!(plan.steps[0].next.busy, Some(1));
    assert_eq!(plan.steps[0].next.unavailable, Some(1));
    let last = &plan.steps[1];
    assert_eq!(last.group, None);
    assert_eq!(last.owner.user, "boss");
    assert_eq!(last.diversions.len(), 1);
    assert_eq!(last.diversions[0].from.user, "sales");
    assert_eq!(last.diversions[0].reason, ForwardReason::NoAnswer);
}

#[test]
fn members_on_a_call_or_with_dnd_are_skipped_unless_the_group_says_otherwise() {
    let busy = MemberSpec {
        on_call: true,
        ..available()
    };
    let dnd = MemberSpec {
        dnd: true,
        ..available()
    };
    let setup = Setup::new(
        group(RingStrategy::Simultaneous, 3),
        vec![busy.clone(), dnd.clone(), available()],
    );
    assert_eq!(members_by_step(&setup.route().unwrap()), [[2]]);
    let mut g = group(RingStrategy::Simultaneous, 3);
    g.skip_busy = false;
    let setup = Setup::new(g, vec![busy.clone(), dnd.clone(), available()]);
    assert_eq!(members_by_step(&setup.route().unwrap()), [[0, 2]]);
    // Only skipped members: busy (486), or the busy target.
    let setup = Setup::new(group(RingStrategy::Simultaneous, 2), vec![busy, dnd]);
    assert_eq!(setup.route(), Err(Unrouted::Refused(Refusal::Busy)));
    let mut g = group(RingStrategy::Simultaneous, 1);
    g.forwarding.busy = Some(ForwardTarget::User(address("boss")));
    let mut setup = Setup::new(
        g,
        vec![MemberSpec {
            dnd: true,
            ..available()
        }],
    );
    setup.others.push(("boss", true));
    let plan = setup.route().unwrap();
    assert_eq!(plan.steps[0].owner.user, "boss");
    assert_eq!(plan.steps[0].diversions[0].reason, ForwardReason::UserBusy);
    // Nobody registered: 480.
    let setup = Setup::new(
        group(RingStrategy::Sequential, 1),
        vec![MemberSpec {
            registered: false,
            ..available()
        }],
    );
    assert_eq!(
        setup.route(),
        Err(Unrouted::Refused(Refusal::NotRegistered))
    );
}

#[test]
fn round_robin_starts_after_the_previous_calls_first_member() {
    let mut setup = Setup::new(
        group(RingStrategy::RoundRobin, 3),
        vec![available(), available(), available()],
    );
    let firsts: Vec<usize> = (0..4)
        .map(|rotation| {
            setup.rotation = rotation;
            members_by_step(&setup.route().unwrap())[0][0]
        })
        .collect();
    assert_eq!(firsts, [0, 1, 2, 0]);
}

#[test]
fn longest_idle_rings_who_never_had_a_call_then_the_longest_idle() {
    let idle_since = |secs: i64| MemberSpec {
        last_call_ended: Some(NOW - secs * SEC),
        ..available()
    };
    let mut g = group(RingStrategy::LongestIdle, 4);
    g.timeout_secs = 80;
    let setup = Setup::new(
        g,
        vec![idle_since(10), idle_since(300), available(), idle_since(60)],
    );
    assert_eq!(
        members_by_step(&setup.route().unwrap()),
        [[2], [1], [3], [0]]
    );
    // Within the default 60 s, the three longest idle ring 20 s each.
    let setup = Setup::new(
        group(RingStrategy::LongestIdle, 4),
        vec![idle_since(10), idle_since(300), available(), idle_since(60)],
    );
    assert_eq!(members_by_step(&setup.route().unwrap()), [[2], [1], [3]]);
}

#[test]
fn after_hours_a_group_sends_its_calls_to_the_always_target() {
    let mut g = group(RingStrategy::Simultaneous, 1);
    g.forwarding = Forwarding {
        always: Some(ForwardTarget::User(address("boss"))),
        when: RuleTimes {
            always: Some(TimeCondition::parse("outside mon-fri 09:00-17:00").unwrap()),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut setup = Setup::new(g, vec![available()]);
    setup.others.push(("boss", true));
    let zone = TimeZone::parse("Europe/Berlin").unwrap();
    // Monday 2026-12-07 10:00 in Berlin (09:00 UTC): the members ring.
    let monday_10 = 1_796_634_000 * SEC;
    let plan = setup.route_at(Some(monday_10), Some(&zone)).unwrap();
    assert_eq!(plan.steps[0].group.map(|g| g.user), Some("sales"));
    // 19:05 the same day: the after-hours target.
    let plan = setup
        .route_at(Some(monday_10 + (9 * 3600 + 300) * SEC), Some(&zone))
        .unwrap();
    assert_eq!(plan.steps[0].owner.user, "boss");
    assert_eq!(
        plan.steps[0].diversions[0].reason,
        ForwardReason::Unconditional
    );
}
