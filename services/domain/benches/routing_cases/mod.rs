//! The inputs of the routing benchmarks (`benches/routing.rs`, criterion
//! means) and `examples/routing_p99.rs` (percentiles): one domain of 1,000
//! users in Europe/Berlin where every user but the plain one of case (a)
//! has forwarding rules (one of them find-me/follow-me too), two ring groups
//! of 64 of them, and the dialled users (or groups) of each case.
//!
//! The call is routed on Monday 2026-12-07 at 10:00 in Berlin (09:00 UTC):
//! inside `mon-fri 09:00-17:00`, so a rule "outside business hours" does
//! not apply then and a rule "inside business hours" does.
//!
//! Built once, outside any timed loop; the timed part is one
//! [`route`] call on the complete [`Users`](dialtone_domain::routing::Users)
//! map, as a node has it after its lookups.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};

use dialtone_domain::domain::Status;
use dialtone_domain::forwarding::{FollowMe, ForwardTarget, Forwarding, NoAnswerRule, RuleTimes};
use dialtone_domain::names::UserAddress;
use dialtone_domain::ring_group::{Member, RingGroup, Strategy};
use dialtone_domain::routing::{
    route, Call, Callee, CalleeBinding, CalleeGroup, CalleeUser, Limits, Plan, Target, Unrouted,
    MAX_PLAN_STEPS,
};
use dialtone_domain::schedule::{TimeCondition, TimeZone};
use dialtone_domain::{Timestamp, UserName};

/// 2026-12-07T09:00:00Z: Monday, 10:00 in Berlin.
pub const NOW: Timestamp = 1_796_634_000_000_000;
/// Users in the domain.
pub const USERS: usize = 1_000;
pub const DOMAIN: &str = "example.com";
pub const ZONE: &str = "Europe/Berlin";

/// Holds at [`NOW`] (business hours; a year of holidays, none on NOW).
const IN_HOURS: &str = "inside mon-fri 09:00-17:00; holidays 2026-01-01, 2026-04-03, \
     2026-04-06, 2026-05-01, 2026-05-14, 2026-05-25, 2026-10-03, 2026-12-24..2026-12-26, \
     2026-12-31, 2027-01-01";
/// Does not hold at [`NOW`] (the brief's example condition).
const OFF_HOURS: &str = "outside mon-fri 09:00-17:00; holidays 2026-12-25";
/// More shapes for the rest of the domain.
const OTHER_CONDITIONS: [&str; 4] = [
    "inside mon-fri 08:00-12:00, 13:00-18:00",
    "outside mon-fri 08:00-18:00; sat 09:00-13:00; holidays 2026-12-24..2026-12-26, 2027-01-01",
    "inside sat-sun 00:00-24:00",
    "outside daily 07:00-22:00",
];

/// One user as written by the builder.
struct Spec {
    name: String,
    /// Expiry of each binding relative to [`NOW`] (µs; negative: expired).
    bindings: Vec<i64>,
    forwarding: Option<Forwarding>,
    dnd: bool,
}

/// A benchmark case: whom to dial and what the plan must look like.
pub struct Case {
    pub name: &'static str,
    /// Index of the dialled user; for `population`, every user in turn.
    pub dialled: Vec<usize>,
    /// Steps of the plan (for a single dialled user).
    pub steps: Option<usize>,
}

/// The owned inputs; [`Directory::users`] lends them to routing.
pub struct Directory {
    zone: TimeZone,
    /// The users', then the ring groups'.
    addresses: Vec<UserAddress>,
    /// Ring groups (their addresses follow the users').
    groups: Vec<RingGroup>,
    specs: Vec<Spec>,
    uris: Vec<Vec<String>>,
    pub cases: Vec<Case>,
}

/// Deterministic pseudo-random numbers (splitmix64): the same domain on
/// every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `percent` %.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    /// A user of the domain other than `user`.
    fn other(&mut self, user: usize) -> usize {
        loop {
            let t = self.below(USERS);
            if t != user {
                return t;
            }
        }
    }

    /// A time condition for 30 % of the rules.
    fn condition(&mut self) -> Option<TimeCondition> {
        self.chance(30).then(|| {
            condition(match self.below(6) {
                0 => IN_HOURS,
                1 => OFF_HOURS,
                k => OTHER_CONDITIONS[k - 2],
            })
        })
    }
}

fn condition(text: &str) -> TimeCondition {
    TimeCondition::parse(text).expect("a valid condition")
}

const HOUR: i64 = 3_600_000_000;

#[derive(Default)]
struct Builder {
    specs: Vec<Spec>,
}

impl Builder {
    /// Reserves a user (its rules are set later, once every index is known).
    fn user(&mut self, name: String, live: usize) -> usize {
        self.specs.push(Spec {
            name,
            bindings: vec![HOUR; live],
            forwarding: None,
            dnd: false,
        });
        self.specs.len() - 1
    }

    fn target(&self, index: usize) -> ForwardTarget {
        ForwardTarget::User(
            UserAddress::parse(&format!("{}@{DOMAIN}", self.specs[index].name)).unwrap(),
        )
    }

    fn no_answer(&self, index: usize, after_secs: u32) -> NoAnswerRule {
        NoAnswerRule {
            target: self.target(index),
            after_secs,
        }
    }
}

impl Directory {
    /// The domain and its cases.
    pub fn new() -> Self {
        let mut b = Builder::default();

        // (a) A plain user: two phones, no rules.
        let plain = b.user("plain".into(), 2);

        // (b) busy and no-answer forwards: b0's phones, then b1 on busy or
        // b2 after 20 s. b1 and b2 have rules too, which do not apply or
        // cannot be taken: a plan of 3 steps.
        let b0 = b.user("b0".into(), 2);
        let b1 = b.user("b1".into(), 1);
        let b2 = b.user("b2".into(), 3);

        // (c) A chain of 5 forwards, each rule with a condition that holds:
        // c0 always -> c1 (DND) busy -> c2 (no phone) unavailable -> c3
        // always -> c4 (DND) busy -> c5, whose own rules are past the hop
        // limit. c2 has an expired binding.
        let c: Vec<usize> = (0..6)
            .map(|i| b.user(format!("c{i}"), if i == 2 { 0 } else { 2 }))
            .collect();

        // (d) A loop: l0 always -> l1 always -> l2 always -> l0 (cut), so
        // l2's phones ring; l2's other rules lead back onto the chain.
        let l: Vec<usize> = (0..3).map(|i| b.user(format!("l{i}"), 1)).collect();

        // (e) The worst case: a tree of users, each with 3 live phones, an
        // always rule whose condition does not hold and busy / no-answer /
        // unavailable rules (conditions that hold) to 3 more users of the
        // tree, 5 levels deep (1 + 3 + 9 + 27 + 81 + 243 = 364 users).
        // Depth first, the plan reaches MAX_PLAN_STEPS with every step
        // carrying up to 5 diversions.
        let tree_size = 364;
        let w: Vec<usize> = (0..tree_size)
            .map(|i| b.user(format!("w{i:03}"), 3))
            .collect();

        // The rest of the domain: 1-3 live phones (some with an expired
        // one too), every user with rules to random users of the domain,
        // some always, some on DND, some rules with time conditions.
        let first_pop = b.specs.len();
        let mut rng = Rng(0x5eed_0000_2026_1207);
        for i in first_pop..USERS {
            let live = 1 + rng.below(3);
            let index = b.user(format!("u{i:04}"), live);
            if rng.chance(20) {
                b.specs[index].bindings.push(-HOUR);
            }
        }
        assert_eq!(b.specs.len(), USERS);

        // Rules.
        let held = |t: ForwardTarget| Some(t);
        {
            let f = Forwarding {
                busy: held(b.target(b1)),
                no_answer: Some(b.no_answer(b2, 20)),
                ..Forwarding::default()
            };
            b.specs[b0].forwarding = Some(f);
            // b1: always to a random user outside business hours (not now),
            // busy back to b0 (on the chain: cut).
            let f = Forwarding {
                always: held(b.target(first_pop)),
                busy: held(b.target(b0)),
                when: RuleTimes {
                    always: Some(condition(OFF_HOURS)),
                    ..RuleTimes::default()
                },
                ..Forwarding::default()
            };
            b.specs[b1].forwarding = Some(f);
            // b2: no answer to b1 and unavailable to another user, both
            // outside business hours only: not now.
            let f = Forwarding {
                no_answer: Some(b.no_answer(b1, 15)),
                unavailable: held(b.target(first_pop + 1)),
                when: RuleTimes {
                    no_answer: Some(condition(OFF_HOURS)),
                    unavailable: Some(condition(OFF_HOURS)),
                    ..RuleTimes::default()
                },
                ..Forwarding::default()
            };
            b.specs[b2].forwarding = Some(f);
        }
        {
            let in_hours = || Some(condition(IN_HOURS));
            // c0 always -> c1
            b.specs[c[0]].forwarding = Some(Forwarding {
                always: held(b.target(c[1])),
                when: RuleTimes {
                    always: in_hours(),
                    ..RuleTimes::default()
                },
                ..Forwarding::default()
            });
            // c1 DND, busy -> c2
            b.specs[c[1]].dnd = true;
            b.specs[c[1]].forwarding = Some(Forwarding {
                always: held(b.target(first_pop + 2)),
                busy: held(b.target(c[2])),
                when: RuleTimes {
                    always: Some(condition(OFF_HOURS)),
                    busy: in_hours(),
                    ..RuleTimes::default()
                },
                ..Forwarding::default()
            });
            // c2 no live phone, unavailable -> c3
            b.specs[c[2]].bindings = vec![-HOUR];
            b.specs[c[2]].forwarding = Some(Forwarding {
                always: held(b.target(first_pop + 3)),
                unavailable: held(b.target(c[3])),
                when: RuleTimes {
                    always: Some(condition(OFF_HOURS)),
                    unavailable: in_hours(),
                    ..RuleTimes::default()
                },
                ..Forwarding::default()
            });
            // c3 always -> c4
            b.specs[c[3]].forwarding = Some(Forwarding {
                always: held(b.target(c[4])),
                busy: held(b.target(first_pop + 4)),
                when: RuleTimes {
                    always: in_hours(),
                    busy: in_hours(),
                    ..RuleTimes::default()
                },
                ..Forwarding::default()
            });
            // c4 DND, busy -> c5
            b.specs[c[4]].dnd = true;
            b.specs[c[4]].forwarding = Some(Forwarding {
                busy: held(b.target(c[5])),
                when: RuleTimes {
                    busy: in_hours(),
                    ..RuleTimes::default()
                },
                ..Forwarding::default()
            });
            // c5: rules that hold, but 5 forwards away from c0: cut.
            b.specs[c[5]].forwarding = Some(Forwarding {
                always: held(b.target(first_pop + 5)),
                busy: held(b.target(first_pop + 6)),
                no_answer: Some(b.no_answer(first_pop + 7, 25)),
                unavailable: held(b.target(first_pop + 8)),
                when: RuleTimes {
                    always: Some(condition(OFF_HOURS)),
                    busy: in_hours(),
                    no_answer: in_hours(),
                    unavailable: in_hours(),
                },
                follow_me: None,
            });
        }
        {
            b.specs[l[0]].forwarding = Some(Forwarding {
                always: held(b.target(l[1])),
                ..Forwarding::default()
            });
            b.specs[l[1]].forwarding = Some(Forwarding {
                always: held(b.target(l[2])),
                ..Forwarding::default()
            });
            b.specs[l[2]].forwarding = Some(Forwarding {
                always: held(b.target(l[0])),
                busy: held(b.target(l[1])),
                no_answer: Some(b.no_answer(l[0], 20)),
                ..Forwarding::default()
            });
        }
        for (j, &user) in w.iter().enumerate() {
            // Children in the tree; the leaves point into the rest of the
            // domain (past the hop limit, never taken).
            let child = |k: usize| {
                let c = 3 * j + k;
                if c < tree_size {
                    w[c]
                } else {
                    first_pop + (c % (USERS - first_pop))
                }
            };
            b.specs[user].forwarding = Some(Forwarding {
                always: held(b.target(first_pop + j % (USERS - first_pop))),
                busy: held(b.target(child(1))),
                no_answer: Some(b.no_answer(child(2), 20)),
                unavailable: held(b.target(child(3))),
                when: RuleTimes {
                    always: Some(condition(OFF_HOURS)),
                    busy: Some(condition(IN_HOURS)),
                    no_answer: Some(condition(IN_HOURS)),
                    unavailable: Some(condition(IN_HOURS)),
                },
                follow_me: None,
            });
        }
        for user in first_pop..USERS {
            let mut f = Forwarding::default();
            if rng.chance(10) {
                f.always = held(b.target(rng.other(user)));
            }
            if rng.chance(70) {
                f.busy = held(b.target(rng.other(user)));
            }
            if rng.chance(80) {
                let after_secs = 10 + rng.below(4) as u32 * 5;
                f.no_answer = Some(b.no_answer(rng.other(user), after_secs));
            }
            if rng.chance(60) || f == Forwarding::default() {
                f.unavailable = held(b.target(rng.other(user)));
            }
            f.when = RuleTimes {
                always: f.always.as_ref().and_then(|_| rng.condition()),
                busy: f.busy.as_ref().and_then(|_| rng.condition()),
                no_answer: f.no_answer.as_ref().and_then(|_| rng.condition()),
                unavailable: f.unavailable.as_ref().and_then(|_| rng.condition()),
            };
            b.specs[user].forwarding = Some(f);
            b.specs[user].dnd = rng.chance(5);
        }

        // (h) Find-me/follow-me: the last user of the population: its phones ring
        // alone 10 s, then with 10 other users' phones in turn.
        let fm = USERS - 1;
        let fm_targets: Vec<ForwardTarget> =
            (1..=10).map(|k| b.target(first_pop + 100 + k)).collect();
        if let Some(f) = b.specs[fm].forwarding.as_mut() {
            f.follow_me = Some(FollowMe {
                targets: fm_targets,
                after_secs: 10,
                sequential: true,
                ring_secs: 15,
            });
        }
        b.specs[fm].dnd = false;
        b.specs[fm].bindings = vec![HOUR; 2];

        // (g) Ring groups of 64 members of the population (some with
        // do-not-disturb, skipped): all at once, and one after the other.
        let member_names: Vec<UserName> = (first_pop + 200..first_pop + 264)
            .map(|u| UserName::parse(&b.specs[u].name).unwrap())
            .collect();
        let group = |strategy| RingGroup {
            members: member_names
                .iter()
                .map(|user| Member {
                    user: user.clone(),
                    ring_secs: None,
                })
                .collect(),
            strategy,
            ring_secs: 20,
            timeout_secs: 300,
            skip_busy: true,
            skip_dnd: true,
            forwarding: Forwarding::default(),
        };
        let groups = vec![group(Strategy::Simultaneous), group(Strategy::LongestIdle)];

        let specs = b.specs;
        let mut addresses: Vec<UserAddress> = specs
            .iter()
            .map(|s| UserAddress::parse(&format!("{}@{DOMAIN}", s.name)).unwrap())
            .collect();
        for name in ["sales", "support"] {
            addresses.push(UserAddress::parse(&format!("{name}@{DOMAIN}")).unwrap());
        }
        let uris = specs
            .iter()
            .enumerate()
            .map(|(u, s)| {
                (0..s.bindings.len())
                    .map(|k| {
                        format!(
                            "sip:{}@10.{}.{}.{}:5060;transport=udp;ob",
                            s.name,
                            u / 256,
                            u % 256,
                            k + 1
                        )
                    })
                    .collect()
            })
            .collect();
        let cases = vec![
            Case {
                name: "a_plain_user",
                dialled: vec![plain],
                steps: Some(1),
            },
            Case {
                name: "b_busy_no_answer",
                dialled: vec![b0],
                steps: Some(3),
            },
            Case {
                name: "c_chain_5_hops",
                dialled: vec![c[0]],
                steps: Some(1),
            },
            Case {
                name: "d_loop_cut",
                dialled: vec![l[0]],
                steps: Some(1),
            },
            Case {
                name: "e_worst_32_steps",
                dialled: vec![w[0]],
                steps: Some(MAX_PLAN_STEPS),
            },
            Case {
                name: "f_every_user",
                dialled: (0..USERS).collect(),
                steps: None,
            },
            Case {
                name: "g_group_64_simultaneous",
                dialled: vec![USERS],
                steps: Some(1),
            },
            Case {
                name: "g_group_64_longest_idle",
                dialled: vec![USERS + 1],
                // 20 s each within 300 s.
                steps: Some(15),
            },
            Case {
                name: "h_follow_me_10_in_turn",
                dialled: vec![fm],
                steps: None,
            },
        ];
        Directory {
            zone: TimeZone::parse(ZONE).unwrap(),
            addresses,
            groups,
            specs,
            uris,
            cases,
        }
    }

    /// Forwarding rules in the domain, counting each rule of each user.
    pub fn rules(&self) -> usize {
        self.specs
            .iter()
            .filter_map(|s| s.forwarding.as_ref())
            .map(|f| f.targets().count())
            .sum()
    }

    /// Rules with a time condition.
    pub fn conditions(&self) -> usize {
        self.specs
            .iter()
            .filter_map(|s| s.forwarding.as_ref())
            .map(|f| f.when.conditions().count())
            .sum()
    }

    /// Ring groups in the domain.
    pub fn ring_groups(&self) -> usize {
        self.groups.len()
    }

    /// Users on DND.
    pub fn dnd(&self) -> usize {
        self.specs.iter().filter(|s| s.dnd).count()
    }

    pub fn address(&self, user: usize) -> &UserAddress {
        &self.addresses[user]
    }

    /// Every user of the domain, looked up: the complete `Users` map.
    pub fn users(&self) -> HashMap<UserAddress, Callee<'_, SocketAddr>> {
        self.specs
            .iter()
            .enumerate()
            .map(|(u, s)| {
                let callee = Callee {
                    domain: Status::Active,
                    domain_calls_out: false,
                    time_zone: Some(&self.zone),
                    group: None,
                    room: false,
                    user: Some(CalleeUser {
                        enabled: true,
                        presence: None,
                        bindings: s
                            .bindings
                            .iter()
                            .enumerate()
                            .map(|(k, expiry)| CalleeBinding {
                                uri: self.uris[u][k].as_str(),
                                q: None,
                                expires_at: NOW + expiry,
                                reach: SocketAddr::from((
                                    Ipv4Addr::new(
                                        10,
                                        (u / 256) as u8,
                                        (u % 256) as u8,
                                        k as u8 + 1,
                                    ),
                                    5060,
                                )),
                            })
                            .collect(),
                        forwarding: s.forwarding.as_ref(),
                        dnd: s.dnd,
                        on_call: false,
                        last_call_ended: None,
                        voicemail: false,
                    }),
                };
                (self.addresses[u].clone(), callee)
            })
            .chain(self.groups.iter().enumerate().map(|(g, group)| {
                let callee = Callee {
                    domain: Status::Active,
                    domain_calls_out: false,
                    time_zone: Some(&self.zone),
                    user: None,
                    group: Some(CalleeGroup { group, rotation: 0 }),
                    room: false,
                };
                (self.addresses[USERS + g].clone(), callee)
            }))
            .collect()
    }
}

/// The call from another user of the domain to `dialled`.
pub fn call(dialled: &UserAddress) -> Call<'_> {
    Call {
        caller_domain: DOMAIN,
        caller_may_call_other_domains: false,
        callee_domain: dialled.domain.as_str(),
        callee_user: dialled.username.as_str(),
        schedule_time: None,
    }
}

/// The routing decision being measured.
#[inline(never)]
pub fn decide<'a>(
    call: &Call<'a>,
    callee: &Callee<'a, SocketAddr>,
    users: &HashMap<UserAddress, Callee<'a, SocketAddr>>,
) -> Result<Plan<'a, Target<'a, SocketAddr>>, Unrouted> {
    route(call, callee, users, NOW, Limits::default())
}

/// Routes every case once and checks the plans have the shapes the cases
/// claim (so the benchmark measures what it says). Returns a description.
pub fn check(dir: &Directory, users: &HashMap<UserAddress, Callee<'_, SocketAddr>>) -> String {
    let mut out = String::new();
    for case in &dir.cases {
        let mut steps = 0usize;
        let mut refused = 0usize;
        for &u in &case.dialled {
            let address = dir.address(u);
            let callee = &users[address];
            match decide(&call(address), callee, users) {
                Ok(plan) => {
                    steps += plan.steps.len();
                    if case.dialled.len() == 1 {
                        let diversions: Vec<usize> =
                            plan.steps.iter().map(|s| s.diversions.len()).collect();
                        out.push_str(&format!(
                            "{}: {} steps, diversions per step {:?}\n",
                            case.name,
                            plan.steps.len(),
                            diversions
                        ));
                    }
                }
                Err(Unrouted::Refused(_)) => refused += 1,
                Err(Unrouted::NeedsUser(a)) => panic!("{}: needs {a}", case.name),
            }
        }
        if let Some(expected) = case.steps {
            assert_eq!(steps, expected, "{}", case.name);
        } else {
            out.push_str(&format!(
                "{}: {} users, {:.2} steps per plan on average, {} refused\n",
                case.name,
                case.dialled.len(),
                steps as f64 / (case.dialled.len() - refused) as f64,
                refused
            ));
        }
    }
    out
}
