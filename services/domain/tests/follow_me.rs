//! Find-me/follow-me in `routing::route`: the plan rings the user's own
//! phones alone first, then with the follow-me targets (together, or one
//! after the other), and the user's own rules after that. A property test
//! over random target lists, then given/when/then tests.
//!
//! A binding's `reach` is its user's index (0 is the dialled user).

use std::collections::HashMap;
use std::time::Duration;

use dialtone_domain::domain::Status;
use dialtone_domain::forwarding::{FollowMe, ForwardTarget, Forwarding, NoAnswerRule};
use dialtone_domain::names::UserAddress;
use dialtone_domain::routing::{
    route, Call, Callee, CalleeBinding, CalleeUser, Limits, Plan, Target, Unrouted,
};
use proptest::prelude::*;

const NOW: i64 = 1_764_150_000_000_000;
const DOMAIN: &str = "a.example";

#[derive(Debug, Clone)]
struct Person {
    registered: bool,
    dnd: bool,
}

fn address(i: usize) -> UserAddress {
    UserAddress::parse(&format!("u{i}@{DOMAIN}")).unwrap()
}

struct Setup {
    people: Vec<Person>,
    uris: Vec<String>,
    forwarding: Forwarding,
}

impl Setup {
    fn new(people: Vec<Person>, forwarding: Forwarding) -> Self {
        let uris = (0..people.len())
            .map(|i| format!("sip:u{i}@192.0.2.{i}"))
            .collect();
        Setup {
            people,
            uris,
            forwarding,
        }
    }

    fn callee(&self, i: usize) -> Callee<'_, usize> {
        let p = &self.people[i];
        Callee {
            domain: Status::Active,
            domain_calls_out: false,
            time_zone: None,
            user: Some(CalleeUser {
                enabled: true,
                presence: None,
                bindings: p
                    .registered
                    .then(|| CalleeBinding {
                        uri: self.uris[i].as_str(),
                        q: None,
                        expires_at: NOW + 3_600_000_000,
                        reach: i,
                    })
                    .into_iter()
                    .collect(),
                forwarding: (i == 0).then_some(&self.forwarding),
                dnd: p.dnd,
                on_call: false,
                last_call_ended: None,
                voicemail: false,
            }),
            group: None,
            room: false,
        }
    }

    fn route(&self) -> Result<Plan<'_, Target<'_, usize>>, Unrouted> {
        let call = Call {
            caller_domain: DOMAIN,
            caller_may_call_other_domains: false,
            callee_domain: DOMAIN,
            callee_user: "u0",
            schedule_time: None,
        };
        let users: HashMap<UserAddress, Callee<'_, usize>> = (1..self.people.len())
            .map(|i| (address(i), self.callee(i)))
            .collect();
        route(&call, &self.callee(0), &users, NOW, Limits::default())
    }
}

fn follow(targets: &[usize], after_secs: u32, sequential: bool) -> Forwarding {
    Forwarding {
        follow_me: Some(FollowMe {
            targets: targets
                .iter()
                .map(|&i| ForwardTarget::User(address(i)))
                .collect(),
            after_secs,
            sequential,
            ring_secs: 15,
        }),
        ..Default::default()
    }
}

fn rung(plan: &Plan<'_, Target<'_, usize>>) -> Vec<Vec<usize>> {
    plan.steps
        .iter()
        .map(|s| s.targets.iter().map(|t| t.reach).collect())
        .collect()
}

fn available() -> Person {
    Person {
        registered: true,
        dnd: false,
    }
}

proptest! {
    /// Any follow-me list: the own phones ring in every step (when
    /// registered), each target that can ring joins exactly one step in
    /// its list's order (all in one step unless sequential), marked with
    /// its user; targets that cannot ring (unregistered, DND) never ring;
    /// every step leads forward.
    #[test]
    fn follow_me_adds_each_ringable_target_once_in_order(
        people in prop::collection::vec((prop::bool::weighted(0.8), prop::bool::weighted(0.2)), 2..7),
        sequential in any::<bool>(),
        after in 0u32..30,
    ) {
        let people: Vec<Person> = people
            .into_iter()
            .map(|(registered, dnd)| Person { registered, dnd })
            .collect();
        let targets: Vec<usize> = (1..people.len()).collect();
        let setup = Setup::new(people.clone(), follow(&targets, after, sequential));
        let ringable: Vec<usize> = targets
            .iter()
            .copied()
            .filter(|&i| people[i].registered && !people[i].dnd)
            .collect();
        match setup.route() {
            Ok(plan) => {
                prop_assert!(!people[0].dnd);
                let own = people[0].registered;
                let steps = rung(&plan);
                let mut joined = Vec::new();
                for (k, step) in steps.iter().enumerate() {
                    prop_assert_eq!(step.contains(&0), own, "{:?}", steps);
                    let next = plan.steps[k].next;
                    for n in [next.busy, next.no_answer, next.unavailable].into_iter().flatten() {
                        prop_assert!(n > k);
                    }
                    for t in &plan.steps[k].targets {
                        if t.reach != 0 {
                            prop_assert_eq!(t.member.map(|m| m.user.to_owned()), Some(format!("u{}", t.reach)));
                            joined.push(t.reach);
                        }
                    }
                }
                prop_assert_eq!(&joined, &ringable);
                let expected_steps = usize::from(own)
                    + if ringable.is_empty() { 0 } else if sequential { ringable.len() } else { 1 };
                prop_assert_eq!(steps.len(), expected_steps);
            }
            // Do-not-disturb comes first: follow-me is a ring plan.
            Err(Unrouted::Refused(dialtone_domain::routing::Refusal::Busy)) => {
                prop_assert!(people[0].dnd);
            }
            Err(e) => {
                prop_assert!(
                    !people[0].dnd && !people[0].registered && ringable.is_empty(),
                    "{:?}",
                    e
                );
            }
        }
    }
}

#[test]
fn the_own_phones_ring_alone_then_with_the_targets() {
    let setup = Setup::new(
        vec![available(), available(), available()],
        follow(&[1, 2], 10, false),
    );
    let plan = setup.route().unwrap();
    assert_eq!(rung(&plan), [vec![0], vec![0, 1, 2]]);
    assert_eq!(plan.steps[0].ring_timeout, Some(Duration::from_secs(10)));
    assert_eq!(plan.steps[0].next.no_answer, Some(1));
    // Without a no-answer rule the last step rings until the call's timeout.
    assert_eq!(plan.steps[1].ring_timeout, None);
    assert_eq!(plan.steps[1].next.no_answer, None);
}

#[test]
fn sequential_targets_ring_in_turn_and_the_no_answer_rule_follows_the_last() {
    let mut forwarding = follow(&[1, 2], 5, true);
    forwarding.no_answer = Some(NoAnswerRule {
        target: ForwardTarget::User(address(3)),
        after_secs: 20,
    });
    let setup = Setup::new(
        vec![available(), available(), available(), available()],
        forwarding,
    );
    let plan = setup.route().unwrap();
    assert_eq!(rung(&plan), [vec![0], vec![0, 1], vec![0, 2], vec![3]]);
    let times: Vec<_> = plan.steps.iter().map(|s| s.ring_timeout).collect();
    assert_eq!(
        times[..3],
        [5, 15, 15].map(|s| Some(Duration::from_secs(s)))
    );
    assert_eq!(plan.steps[2].next.no_answer, Some(3));
    assert_eq!(plan.steps[3].owner.user, "u3");
}

#[test]
fn an_unregistered_user_with_follow_me_rings_the_targets() {
    let setup = Setup::new(
        vec![
            Person {
                registered: false,
                dnd: false,
            },
            available(),
        ],
        follow(&[1], 10, false),
    );
    let plan = setup.route().unwrap();
    assert_eq!(rung(&plan), [vec![1]]);
    assert_eq!(plan.steps[0].owner.user, "u0");
}
