//! Forwards to conference rooms (`conference:standup`): given a user's
//! rules and what is known of the room, when the call is routed, then the
//! plan ends in a step the node answers (no targets, `conference`), with
//! the forwards that led there; a room that is gone, out of reach or too
//! many forwards away is a forward not taken, and the call's events say
//! why (`Step::skipped`).

use std::collections::HashMap;

use dialtone_domain::call::ForwardReason;
use dialtone_domain::domain::Status;
use dialtone_domain::forwarding::{ForwardTarget, Forwarding, NoAnswerRule};
use dialtone_domain::names::UserAddress;
use dialtone_domain::routing::{
    route, Call, Callee, CalleeBinding, CalleeUser, Limits, Next, Party, Plan, SkipReason, Target,
    Unrouted,
};

const NOW: i64 = 1_764_150_000_000_000;

fn address(text: &str) -> UserAddress {
    UserAddress::parse(text).unwrap()
}

fn room_target(text: &str) -> ForwardTarget {
    ForwardTarget::parse(text, &address("alice@example.com")).unwrap()
}

/// A user of `example.com` with one live phone (or none) and `rules`.
fn user<'a>(rules: Option<&'a Forwarding>, registered: bool) -> Callee<'a, usize> {
    Callee {
        domain: Status::Active,
        domain_calls_out: false,
        time_zone: None,
        user: Some(CalleeUser {
            enabled: true,
            presence: None,
            bindings: registered
                .then_some(CalleeBinding {
                    uri: "sip:phone@192.0.2.1:5060",
                    q: None,
                    expires_at: NOW + 3_600_000_000,
                    reach: 7,
                })
                .into_iter()
                .collect(),
            forwarding: rules,
            dnd: false,
            on_call: false,
            last_call_ended: None,
            voicemail: false,
        }),
        group: None,
        room: false,
    }
}

/// What routing knows of a room's name: its domain, and whether it is a
/// room (the node runs rooms and the domain has one of that name).
fn room<'a>(domain: Status, is_room: bool) -> Callee<'a, usize> {
    Callee {
        domain,
        domain_calls_out: false,
        time_zone: None,
        user: None,
        group: None,
        room: is_room,
    }
}

fn call_alice() -> Call<'static> {
    Call {
        caller_domain: "example.com",
        caller_may_call_other_domains: false,
        callee_domain: "example.com",
        callee_user: "alice",
        schedule_time: None,
    }
}

fn routed<'a>(
    alice: &Callee<'a, usize>,
    others: &HashMap<UserAddress, Callee<'a, usize>>,
    limits: Limits,
) -> Result<Plan<'a, Target<'a, usize>>, Unrouted> {
    route(&call_alice(), alice, others, NOW, limits)
}

fn standup() -> Party<'static> {
    Party {
        domain: "example.com",
        user: "standup",
    }
}

#[test]
fn always_to_a_room_plans_one_step_the_node_answers() {
    let rules = Forwarding {
        always: Some(room_target("conference:standup")),
        ..Default::default()
    };
    let alice = user(Some(&rules), true);
    let others = HashMap::from([(address("standup@example.com"), room(Status::Active, true))]);
    let plan = routed(&alice, &others, Limits::default()).unwrap();
    assert_eq!(plan.steps.len(), 1, "{plan:?}");
    let step = &plan.steps[0];
    assert!(step.conference && !step.voicemail);
    assert!(step.targets.is_empty(), "the node answers: no phone rings");
    assert!(step.owner.is(&standup()));
    assert_eq!(step.next, Next::NONE);
    assert_eq!(step.diversions.len(), 1);
    assert!(step.diversions[0].from.is(&Party {
        domain: "example.com",
        user: "alice"
    }));
    assert_eq!(
        step.diversions[0].to.to_string(),
        "conference:standup@example.com"
    );
    assert_eq!(step.diversions[0].reason, ForwardReason::Unconditional);
}

#[test]
fn a_room_not_looked_up_yet_is_asked_for_by_its_address() {
    let rules = Forwarding {
        always: Some(room_target("conference:standup")),
        ..Default::default()
    };
    let alice = user(Some(&rules), true);
    assert_eq!(
        routed(&alice, &HashMap::new(), Limits::default()),
        Err(Unrouted::NeedsUser(address("standup@example.com")))
    );
}

#[test]
fn no_answer_rings_the_phones_for_the_set_time_then_the_room() {
    let rules = Forwarding {
        no_answer: Some(NoAnswerRule {
            target: room_target("conference:standup"),
            after_secs: 3,
        }),
        ..Default::default()
    };
    let alice = user(Some(&rules), true);
    let others = HashMap::from([(address("standup@example.com"), room(Status::Active, true))]);
    let plan = routed(&alice, &others, Limits::default()).unwrap();
    assert_eq!(plan.steps.len(), 2, "{plan:?}");
    let phones = &plan.steps[0];
    assert_eq!(
        phones.targets.iter().map(|t| t.reach).collect::<Vec<_>>(),
        [7]
    );
    assert_eq!(phones.ring_timeout, Some(std::time::Duration::from_secs(3)));
    assert_eq!(phones.next.no_answer, Some(1));
    assert_eq!(phones.next.busy, None);
    let conference = &plan.steps[1];
    assert!(conference.conference && conference.owner.is(&standup()));
    assert_eq!(conference.diversions[0].reason, ForwardReason::NoAnswer);
}

/// A room deleted since the rule was set (or a name that is no room, or
/// a node without rooms): the forward is not taken, the phones ring, and
/// the step says why; with no phone either, the call is refused as for
/// any user that cannot be reached.
#[test]
fn a_room_that_is_gone_is_a_forward_not_taken() {
    let rules = Forwarding {
        always: Some(room_target("conference:standup")),
        ..Default::default()
    };
    let others = HashMap::from([(address("standup@example.com"), room(Status::Active, false))]);
    let alice = user(Some(&rules), true);
    let plan = routed(&alice, &others, Limits::default()).unwrap();
    assert_eq!(plan.steps.len(), 1);
    assert!(!plan.steps[0].conference);
    assert_eq!(plan.steps[0].targets.len(), 1);
    assert_eq!(plan.steps[0].skipped.len(), 1);
    assert_eq!(plan.steps[0].skipped[0].why, SkipReason::UnknownTarget);
    assert_eq!(
        plan.steps[0].skipped[0].to.to_string(),
        "conference:standup@example.com"
    );

    let unregistered = user(Some(&rules), false);
    assert!(matches!(
        routed(&unregistered, &others, Limits::default()),
        Err(Unrouted::Refused(_))
    ));
}

#[test]
fn a_room_of_another_domain_follows_the_cross_domain_policy() {
    let rules = Forwarding {
        always: Some(room_target("conference:standup@other.example")),
        ..Default::default()
    };
    let others = HashMap::from([(address("standup@other.example"), room(Status::Active, true))]);
    // alice's domain does not let its users call other domains.
    let alice = user(Some(&rules), true);
    let plan = routed(&alice, &others, Limits::default()).unwrap();
    assert!(!plan.steps[0].conference);
    assert_eq!(
        plan.steps[0].skipped[0].why,
        SkipReason::CrossDomainForbidden
    );
    // Once it does, the call goes to the room.
    let mut allowed = user(Some(&rules), true);
    allowed.domain_calls_out = true;
    let plan = routed(&allowed, &others, Limits::default()).unwrap();
    assert!(plan.steps[0].conference);
    assert!(plan.steps[0].owner.is(&Party {
        domain: "other.example",
        user: "standup"
    }));
    // A suspended domain's room is out of reach.
    let suspended = HashMap::from([(
        address("standup@other.example"),
        room(Status::Suspended, true),
    )]);
    let plan = routed(&allowed, &suspended, Limits::default()).unwrap();
    assert_eq!(plan.steps[0].skipped[0].why, SkipReason::TargetUnavailable);
}

/// alice → bob → the room: a chain ends in the room with both forwards,
/// and within the hop limit only.
#[test]
fn a_chain_of_forwards_ends_in_the_room_within_the_hop_limit() {
    let to_bob = Forwarding {
        always: Some(room_target("bob")),
        ..Default::default()
    };
    let to_room = Forwarding {
        busy: Some(room_target("conference:standup")),
        unavailable: Some(room_target("conference:standup")),
        ..Default::default()
    };
    let alice = user(Some(&to_bob), true);
    let others = HashMap::from([
        (address("bob@example.com"), user(Some(&to_room), false)),
        (address("standup@example.com"), room(Status::Active, true)),
    ]);
    let plan = routed(&alice, &others, Limits::default()).unwrap();
    assert_eq!(plan.steps.len(), 1, "{plan:?}");
    let step = &plan.steps[0];
    assert!(step.conference);
    let reasons: Vec<_> = step.diversions.iter().map(|d| d.reason).collect();
    assert_eq!(
        reasons,
        [ForwardReason::Unconditional, ForwardReason::Unavailable]
    );
    // With one forward allowed, bob's own forward is cut: bob has no
    // phone, so bob cannot be reached, and alice's phones ring instead.
    let plan = routed(
        &alice,
        &others,
        Limits {
            max_forward_hops: 1,
        },
    )
    .unwrap();
    assert!(plan.steps.iter().all(|s| !s.conference), "{plan:?}");
    assert_eq!(plan.steps[0].targets.len(), 1);
}
