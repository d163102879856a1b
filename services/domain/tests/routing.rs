//! Routing of calls (`routing::route`): property tests over arbitrary calls
//! and callees (domain status, user, bindings alive or expired, domain
//! names in any case), then one unit test per refusal.
//!
//! The bindings' `reach` is their index in the generated list, so a plan's
//! targets can be traced back to the binding each one rings.
//!
//! When proptest finds and shrinks a failure, keep the shrunk case as a plain
//! regression test at the end of this file.

use std::collections::BTreeMap;

use dialtone_domain::domain::Status;
use dialtone_domain::registration::{Presence, MAX_Q, MICROS_PER_SEC};
use dialtone_domain::routing::{
    self, admit, Call, Callee, CalleeBinding, CalleeUser, Limits, Next, NoUsers, Party, Plan,
    Refusal, Target, Unrouted,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;

const NOW: i64 = 1_764_150_000_000_000;

/// Routing of a user without call features: nobody else is looked up.
fn route<'a>(
    call: &Call<'a>,
    callee: &Callee<'a, usize>,
    now: i64,
) -> Result<Plan<'a, Target<'a, usize>>, Refusal> {
    routing::route(call, callee, &NoUsers, now, Limits::default()).map_err(|e| match e {
        Unrouted::Refused(refusal) => refusal,
        Unrouted::NeedsUser(who) => panic!("a user without rules needed {who}"),
    })
}

// ================================================================ inputs

/// A generated binding (owned; [`callee`] lends it to routing).
#[derive(Debug, Clone)]
struct BindingSpec {
    uri: String,
    q: Option<u16>,
    expires_at: i64,
}

impl BindingSpec {
    fn is_live(&self, now: i64) -> bool {
        self.expires_at > now
    }
}

#[derive(Debug, Clone)]
struct UserSpec {
    enabled: bool,
    presence: Option<Presence>,
    bindings: Vec<BindingSpec>,
}

#[derive(Debug, Clone)]
struct CallSpec {
    caller_domain: String,
    caller_may_call_other_domains: bool,
    callee_domain: String,
    callee_user: String,
}

impl CallSpec {
    fn call(&self) -> Call<'_> {
        Call {
            caller_domain: &self.caller_domain,
            caller_may_call_other_domains: self.caller_may_call_other_domains,
            callee_domain: &self.callee_domain,
            callee_user: &self.callee_user,
            schedule_time: None,
        }
    }
}

/// The callee routing sees: each binding's `reach` is its index in `user`.
fn callee(status: Status, user: Option<&UserSpec>) -> Callee<'_, usize> {
    Callee {
        domain: status,
        domain_calls_out: false,
        time_zone: None,
        group: None,
        room: false,
        user: user.map(|u| CalleeUser {
            enabled: u.enabled,
            presence: u.presence,
            bindings: u
                .bindings
                .iter()
                .enumerate()
                .map(|(i, b)| CalleeBinding {
                    uri: &b.uri,
                    q: b.q,
                    expires_at: b.expires_at,
                    reach: i,
                })
                .collect(),
            forwarding: None,
            dnd: false,
            on_call: false,
            last_call_ended: None,
            voicemail: false,
        }),
    }
}

/// A domain name in any letter case, from a small set so that caller and
/// callee often share it.
fn domain_name() -> impl Strategy<Value = String> {
    (
        select(vec!["a.example", "b.example", "xn--bcher-kva.example"]),
        vec(any::<bool>(), 24),
    )
        .prop_map(|(name, upper)| {
            name.chars()
                .zip(upper.into_iter().cycle())
                .map(|(c, up)| if up { c.to_ascii_uppercase() } else { c })
                .collect()
        })
}

fn status() -> impl Strategy<Value = Status> {
    select(vec![
        Status::Absent,
        Status::Active,
        Status::Suspended,
        Status::Deleted,
    ])
}

fn call_spec() -> impl Strategy<Value = CallSpec> {
    (domain_name(), any::<bool>(), domain_name(), "[a-z]{1,6}").prop_map(
        |(caller_domain, caller_may_call_other_domains, callee_domain, callee_user)| CallSpec {
            caller_domain,
            caller_may_call_other_domains,
            callee_domain,
            callee_user,
        },
    )
}

/// Expiries around `NOW`: well before, just before, exactly at (expired),
/// just after, well after.
fn binding() -> impl Strategy<Value = BindingSpec> {
    (
        "[a-z]{1,4}",
        0u8..4,
        option::of(0..=MAX_Q),
        prop_oneof![
            Just(0i64),
            Just(1),
            Just(-1),
            -3_600 * MICROS_PER_SEC..3_600 * MICROS_PER_SEC,
        ],
    )
        .prop_map(|(user, host, q, delta)| BindingSpec {
            // Equal URIs may occur: routing rings bindings, not URIs.
            uri: format!("sip:{user}@192.0.2.{host}:5060"),
            q,
            expires_at: NOW + delta,
        })
}

fn user_spec() -> impl Strategy<Value = UserSpec> {
    (
        prop_oneof![4 => Just(true), 1 => Just(false)],
        option::of(select(vec![
            Presence::Offline,
            Presence::Online,
            Presence::Ringing,
            Presence::OnCall,
            Presence::Dnd,
        ])),
        vec(binding(), 0..8),
    )
        .prop_map(|(enabled, presence, bindings)| UserSpec {
            enabled,
            presence,
            bindings,
        })
}

/// The indices of the bindings a plan rings, step by step.
fn rung(plan: &Plan<Target<'_, usize>>) -> Vec<Vec<usize>> {
    plan.steps
        .iter()
        .map(|s| s.targets.iter().map(|t| t.reach).collect())
        .collect()
}

/// What the SIP bridge decided before routing moved into the domain,
/// transcribed from it step by step: the reference for precedence.
fn route_as_before(
    call: &CallSpec,
    status: Status,
    user: Option<&UserSpec>,
    now: i64,
) -> Result<Vec<usize>, Refusal> {
    match status {
        Status::Absent | Status::Deleted => return Err(Refusal::UnknownDomain),
        Status::Suspended => return Err(Refusal::DomainSuspended),
        Status::Active => {}
    }
    if !call.caller_domain.eq_ignore_ascii_case(&call.callee_domain)
        && !call.caller_may_call_other_domains
    {
        return Err(Refusal::CrossDomainForbidden);
    }
    let Some(user) = user else {
        return Err(Refusal::UnknownUser);
    };
    if !user.enabled {
        return Err(Refusal::UserDisabled);
    }
    let targets: Vec<usize> = (0..user.bindings.len())
        .filter(|&i| user.bindings[i].expires_at > now)
        .collect();
    if targets.is_empty() {
        Err(Refusal::NotRegistered)
    } else {
        Ok(targets)
    }
}

// ================================================================ properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The decision is the one the SIP bridge made before: same refusal in
    /// the same precedence, same targets in the same order.
    #[test]
    fn decides_as_the_bridge_did(
        call in call_spec(),
        status in status(),
        user in option::of(user_spec()),
    ) {
        let decision = route(&call.call(), &callee(status, user.as_ref()), NOW);
        let expected = route_as_before(&call, status, user.as_ref(), NOW);
        match (&decision, &expected) {
            (Ok(plan), Ok(targets)) => prop_assert_eq!(rung(plan), vec![targets.clone()]),
            (Err(got), Err(want)) => prop_assert_eq!(got, want),
            _ => prop_assert!(false, "decided {:?}, expected {:?}", decision, expected),
        }
    }

    /// Today's plan: one step, no ring timeout of its own, never continuing,
    /// with at least one target.
    #[test]
    fn a_plan_is_one_parallel_final_step(
        call in call_spec(),
        user in user_spec(),
    ) {
        if let Ok(plan) = route(&call.call(), &callee(Status::Active, Some(&user)), NOW) {
            prop_assert_eq!(plan.steps.len(), 1);
            let step = &plan.steps[0];
            prop_assert!(!step.targets.is_empty());
            prop_assert_eq!(step.ring_timeout, None);
            prop_assert_eq!(step.next, Next::NONE);
        }
    }

    /// No plan rings a binding that has expired at `now`, and each target
    /// carries its binding's URI.
    #[test]
    fn never_rings_an_expired_binding(
        call in call_spec(),
        status in status(),
        user in user_spec(),
        now_delta in -10 * MICROS_PER_SEC..10 * MICROS_PER_SEC,
    ) {
        let now = NOW + now_delta;
        if let Ok(plan) = route(&call.call(), &callee(status, Some(&user)), now) {
            for target in plan.steps.iter().flat_map(|s| &s.targets) {
                let binding = &user.bindings[target.reach];
                prop_assert!(binding.is_live(now), "rings {:?} at {}", binding, now);
                prop_assert_eq!(target.uri, binding.uri.as_str());
            }
        }
    }

    /// An enabled user of an active domain, called from the same domain:
    /// every live binding is rung exactly once, or the user is not
    /// registered when there is none.
    #[test]
    fn rings_every_live_binding_exactly_once(
        domain in domain_name(),
        mut user in user_spec(),
        now_delta in -10 * MICROS_PER_SEC..10 * MICROS_PER_SEC,
    ) {
        user.enabled = true;
        let now = NOW + now_delta;
        let call = CallSpec {
            caller_domain: domain.to_ascii_uppercase(),
            caller_may_call_other_domains: false,
            callee_domain: domain,
            callee_user: "bob".into(),
        };
        let live: Vec<usize> = (0..user.bindings.len())
            .filter(|&i| user.bindings[i].is_live(now))
            .collect();
        match route(&call.call(), &callee(Status::Active, Some(&user)), now) {
            Ok(plan) => {
                let mut times_rung = BTreeMap::<usize, usize>::new();
                for target in plan.steps.iter().flat_map(|s| &s.targets) {
                    *times_rung.entry(target.reach).or_default() += 1;
                }
                prop_assert_eq!(times_rung, live.iter().map(|&i| (i, 1)).collect::<BTreeMap<_, _>>());
            }
            Err(refusal) => {
                prop_assert_eq!(refusal, Refusal::NotRegistered);
                prop_assert!(live.is_empty());
            }
        }
    }

    /// A disabled user, or a domain that is not active, is never rung,
    /// whatever its bindings.
    #[test]
    fn disabled_user_or_inactive_domain_is_never_rung(
        call in call_spec(),
        status in status(),
        user in user_spec(),
    ) {
        let decision = route(&call.call(), &callee(status, Some(&user)), NOW);
        if !user.enabled || status != Status::Active {
            prop_assert!(decision.is_err(), "rings {:?} in a {:?} domain", user, status);
        }
        match status {
            Status::Absent | Status::Deleted => {
                prop_assert_eq!(decision, Err(Refusal::UnknownDomain));
            }
            Status::Suspended => prop_assert_eq!(decision, Err(Refusal::DomainSuspended)),
            Status::Active => {}
        }
    }

    /// A call into an active domain is refused as cross-domain exactly when
    /// the domain names differ ignoring ASCII case and the caller's domain
    /// does not allow calls out of it.
    #[test]
    fn cross_domain_refusal_exactly_when_not_allowed(
        call in call_spec(),
        user in option::of(user_spec()),
    ) {
        let decision = route(&call.call(), &callee(Status::Active, user.as_ref()), NOW);
        let differ = !call.caller_domain.eq_ignore_ascii_case(&call.callee_domain);
        prop_assert_eq!(call.call().crosses_domains(), differ);
        prop_assert_eq!(
            decision == Err(Refusal::CrossDomainForbidden),
            differ && !call.caller_may_call_other_domains
        );
    }

    /// The letter case of the domain names never changes the decision.
    #[test]
    fn domain_case_does_not_matter(
        call in call_spec(),
        status in status(),
        user in option::of(user_spec()),
    ) {
        let upper = CallSpec {
            caller_domain: call.caller_domain.to_ascii_uppercase(),
            callee_domain: call.callee_domain.to_ascii_lowercase(),
            ..call.clone()
        };
        let callee = callee(status, user.as_ref());
        // The plan names the owner as dialled; what rings is the same.
        let shape = |plan: Plan<'_, Target<'_, usize>>| {
            (rung(&plan), plan.steps.iter().map(|s| (s.next, s.ring_timeout)).collect::<Vec<_>>())
        };
        prop_assert_eq!(
            route(&call.call(), &callee, NOW).map(shape),
            route(&upper.call(), &callee, NOW).map(shape)
        );
    }

    /// When the domains refuse the call (`admit`), `route` refuses it the
    /// same way whatever is known of the user, so the user need not be
    /// looked up; when they admit it, the decision is the user's.
    #[test]
    fn admit_is_the_domain_part_of_route(
        call in call_spec(),
        status in status(),
        user in option::of(user_spec()),
    ) {
        let decision = route(&call.call(), &callee(status, user.as_ref()), NOW);
        match admit(&call.call(), status) {
            Err(refusal) => {
                prop_assert_eq!(&decision, &Err(refusal));
                prop_assert_eq!(route(&call.call(), &callee(status, None), NOW), Err(refusal));
            }
            Ok(()) => prop_assert!(!matches!(
                decision,
                Err(Refusal::UnknownDomain | Refusal::DomainSuspended | Refusal::CrossDomainForbidden)
            )),
        }
    }

    /// Reordering the bindings reorders the targets and changes nothing
    /// else; the targets keep the bindings' order.
    #[test]
    fn binding_order_only_orders_the_targets(
        call in call_spec(),
        status in status(),
        (user, order) in user_spec().prop_flat_map(|u| {
            let n = u.bindings.len();
            (Just(u), Just((0..n).collect::<Vec<_>>()).prop_shuffle())
        }),
    ) {
        let shuffled = UserSpec {
            bindings: order.iter().map(|&i| user.bindings[i].clone()).collect(),
            ..user.clone()
        };
        let decision = route(&call.call(), &callee(status, Some(&user)), NOW);
        let reordered = route(&call.call(), &callee(status, Some(&shuffled)), NOW);
        match (&decision, &reordered) {
            (Ok(plan), Ok(other)) => {
                prop_assert_eq!(plan.steps.len(), other.steps.len());
                for (step, other_step) in plan.steps.iter().zip(&other.steps) {
                    prop_assert_eq!(step.ring_timeout, other_step.ring_timeout);
                    prop_assert_eq!(step.next, other_step.next);
                    // Back to the original indices.
                    let mut other_targets: Vec<usize> =
                        other_step.targets.iter().map(|t| order[t.reach]).collect();
                    let targets: Vec<usize> = step.targets.iter().map(|t| t.reach).collect();
                    prop_assert!(targets.windows(2).all(|w| w[0] < w[1]), "targets out of binding order");
                    other_targets.sort_unstable();
                    prop_assert_eq!(targets, other_targets);
                }
            }
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            _ => prop_assert!(false, "{:?} became {:?}", decision, reordered),
        }
    }

    /// Presence and `q` are carried but no rule reads them yet: they never
    /// change today's decision.
    #[test]
    fn presence_and_q_do_not_route_yet(
        call in call_spec(),
        status in status(),
        user in user_spec(),
    ) {
        let plain = UserSpec {
            presence: None,
            bindings: user.bindings.iter().map(|b| BindingSpec { q: None, ..b.clone() }).collect(),
            ..user.clone()
        };
        prop_assert_eq!(
            route(&call.call(), &callee(status, Some(&user)), NOW),
            route(&call.call(), &callee(status, Some(&plain)), NOW)
        );
    }
}

// ================================================================ unit tests

static SAME_DOMAIN_CALL: std::sync::LazyLock<CallSpec> = std::sync::LazyLock::new(same_domain_call);

fn same_domain_call() -> CallSpec {
    CallSpec {
        caller_domain: "a.example".into(),
        caller_may_call_other_domains: false,
        callee_domain: "a.example".into(),
        callee_user: "bob".into(),
    }
}

fn registered_user() -> UserSpec {
    UserSpec {
        enabled: true,
        presence: Some(Presence::Online),
        bindings: vec![
            BindingSpec {
                uri: "sip:bob@192.0.2.1:5060".into(),
                q: Some(1000),
                expires_at: NOW + 60 * MICROS_PER_SEC,
            },
            BindingSpec {
                uri: "sip:bob@192.0.2.2:5060".into(),
                q: None,
                expires_at: NOW - MICROS_PER_SEC,
            },
            BindingSpec {
                uri: "sip:bob@192.0.2.3:5060;transport=tcp".into(),
                q: Some(500),
                expires_at: NOW + 1,
            },
        ],
    }
}

#[test]
fn rings_the_live_bindings_together() {
    let user = registered_user();
    let plan = route(
        &SAME_DOMAIN_CALL.call(),
        &callee(Status::Active, Some(&user)),
        NOW,
    )
    .expect("routed");
    assert_eq!(
        plan,
        Plan::parallel(
            Party {
                domain: "a.example",
                user: "bob"
            },
            vec![
                Target {
                    uri: "sip:bob@192.0.2.1:5060",
                    reach: 0,
                    member: None,
                },
                Target {
                    uri: "sip:bob@192.0.2.3:5060;transport=tcp",
                    reach: 2,
                    member: None,
                },
            ]
        )
    );
}

#[test]
fn absent_or_deleted_domain_is_not_found() {
    for status in [Status::Absent, Status::Deleted] {
        let user = registered_user();
        let decision = route(&SAME_DOMAIN_CALL.call(), &callee(status, Some(&user)), NOW);
        assert_eq!(decision, Err(Refusal::UnknownDomain));
    }
    assert_eq!(Refusal::UnknownDomain.sip_status(), 404);
}

#[test]
fn suspended_domain_is_unavailable() {
    let user = registered_user();
    let decision = route(
        &SAME_DOMAIN_CALL.call(),
        &callee(Status::Suspended, Some(&user)),
        NOW,
    );
    assert_eq!(decision, Err(Refusal::DomainSuspended));
    assert_eq!(Refusal::DomainSuspended.sip_status(), 480);
}

#[test]
fn cross_domain_call_is_forbidden_unless_the_callers_domain_allows_it() {
    let user = registered_user();
    let mut call = CallSpec {
        caller_domain: "b.example".into(),
        ..same_domain_call()
    };
    let decision = route(&call.call(), &callee(Status::Active, Some(&user)), NOW);
    assert_eq!(decision, Err(Refusal::CrossDomainForbidden));
    assert_eq!(Refusal::CrossDomainForbidden.sip_status(), 403);

    call.caller_may_call_other_domains = true;
    assert!(route(&call.call(), &callee(Status::Active, Some(&user)), NOW).is_ok());
}

#[test]
fn forbidden_cross_domain_call_does_not_reveal_whether_the_user_exists() {
    let call = CallSpec {
        caller_domain: "b.example".into(),
        ..same_domain_call()
    };
    assert_eq!(
        route(&call.call(), &callee(Status::Active, None), NOW),
        Err(Refusal::CrossDomainForbidden)
    );
}

#[test]
fn same_domain_in_another_case_is_not_cross_domain() {
    let user = registered_user();
    let call = CallSpec {
        caller_domain: "A.Example".into(),
        ..same_domain_call()
    };
    assert!(!call.call().crosses_domains());
    assert!(route(&call.call(), &callee(Status::Active, Some(&user)), NOW).is_ok());
}

#[test]
fn unknown_user_is_not_found() {
    let decision = route(&SAME_DOMAIN_CALL.call(), &callee(Status::Active, None), NOW);
    assert_eq!(decision, Err(Refusal::UnknownUser));
    assert_eq!(Refusal::UnknownUser.sip_status(), 404);
}

#[test]
fn disabled_user_is_unavailable_even_when_registered() {
    let user = UserSpec {
        enabled: false,
        ..registered_user()
    };
    let decision = route(
        &SAME_DOMAIN_CALL.call(),
        &callee(Status::Active, Some(&user)),
        NOW,
    );
    assert_eq!(decision, Err(Refusal::UserDisabled));
    assert_eq!(Refusal::UserDisabled.sip_status(), 480);
}

#[test]
fn user_without_live_binding_is_not_registered() {
    for bindings in [vec![], registered_user().bindings] {
        let user = UserSpec {
            bindings,
            ..registered_user()
        };
        // Later than every binding's expiry, also the one expiring exactly now.
        let now = NOW + 60 * MICROS_PER_SEC;
        let decision = route(
            &SAME_DOMAIN_CALL.call(),
            &callee(Status::Active, Some(&user)),
            now,
        );
        assert_eq!(decision, Err(Refusal::NotRegistered));
    }
    assert_eq!(Refusal::NotRegistered.sip_status(), 480);
}

#[test]
fn a_binding_expires_at_its_expires_at() {
    let user = registered_user();
    let at_expiry = NOW + 1;
    let plan = route(
        &SAME_DOMAIN_CALL.call(),
        &callee(Status::Active, Some(&user)),
        at_expiry,
    )
    .expect("routed");
    let rung: Vec<usize> = plan.steps[0].targets.iter().map(|t| t.reach).collect();
    assert_eq!(rung, vec![0]);
}

#[test]
fn admit_checks_the_domains_only() {
    let call = same_domain_call();
    assert_eq!(admit(&call.call(), Status::Active), Ok(()));
    assert_eq!(
        admit(&call.call(), Status::Suspended),
        Err(Refusal::DomainSuspended)
    );
}
