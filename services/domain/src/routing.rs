//! Who is rung when a user is called: [`route`] turns a call and what is
//! known of its callee into a [`Plan`] of contacts to ring, or a
//! [`Refusal`].
//!
//! Routing is a rule of the model, not of the wiring: which contacts ring,
//! in which order, for how long, and what happens when nobody answers are
//! exactly what call features (forwarding, do-not-disturb, ring groups,
//! find-me/follow-me) change. Keeping the decision in one pure function
//! gives those features one place to live and lets property tests cover
//! every rule without a network. The SIP gateway executes the plan: it
//! knows transactions and timers, never why a contact rings.
//!
//! # Inputs
//!
//! - [`Call`]: who calls whom (the caller's domain and its cross-domain
//!   setting, the callee's address, the moment schedules are read at);
//! - [`Callee`]: what is known of the callee (its domain's status,
//!   cross-domain setting and time zone; the user, if it exists: enabled,
//!   presence, bindings, forwarding rules, do-not-disturb);
//! - [`Users`]: the same for the users forwards lead to;
//! - `now` (µs), to tell live bindings from expired ones: the caller reads
//!   the clock, routing does not.
//!
//! A new call feature is a new field (on [`CalleeUser`] when it is a user
//! setting, on [`Call`] when it depends on the call) and a new rule in
//! [`route`] that shapes the plan's steps: ring timeouts, continuing on
//! busy / no answer / unavailable, further steps with other targets.
//!
//! # Rules
//!
//! The refusals, in this order (the first that applies decides):
//!
//! 1. the callee's domain is absent or deleted: [`Refusal::UnknownDomain`];
//! 2. it is suspended: [`Refusal::DomainSuspended`];
//! 3. the call crosses domains (names differ ASCII-case-insensitively) and
//!    the caller's domain does not allow it:
//!    [`Refusal::CrossDomainForbidden`];
//! 4. the user does not exist: [`Refusal::UnknownUser`];
//! 5. it is disabled: [`Refusal::UserDisabled`].
//!
//! The domain checks come first so that nothing about a user is revealed
//! to a caller who may not call into its domain (an unknown user and a
//! forbidden call would otherwise answer differently), and so that the
//! user need not even be looked up then ([`admit`]).
//!
//! Then the user's call features ([`crate::forwarding`]) shape the plan.
//! For the dialled user, and again for every user a call is forwarded to:
//!
//! A rule with a time condition ([`Forwarding::when`]) is used only while
//! the condition holds at [`Call::schedule_time`] in the time zone of the
//! forwarding user's domain ([`Callee::time_zone`]); otherwise it is as if
//! it did not exist.
//!
//! 6. forward always: the call goes to the target; the user's phones do
//!    not ring;
//! 7. do-not-disturb: the call goes to the busy rule's target, or is
//!    refused with [`Refusal::Busy`] (486) when there is none (for a user
//!    reached by forwarding: that forward is not taken);
//! 8. no live binding: the call goes to the unavailable rule's target, or
//!    is refused with [`Refusal::NotRegistered`] (480);
//! 9. otherwise a step rings every live binding in parallel, in binding
//!    order, for the no-answer rule's ring time if there is one (else
//!    until the call's own no-answer timeout); its outcome busy, no answer
//!    or unavailable moves the call to that rule's target, if any.
//!
//! A forward is taken only when its target can be rung: a user, a ring
//! group, a voicemail box or a conference room (numbers are not routed
//! yet) of an active domain that the forwarding user's domain may call, that exists, is enabled, is not
//! already on the chain that led here (a loop) and is at most
//! [`Limits::max_forward_hops`] forwards away from the dialled user. A
//! forward that cannot be taken is as if its rule did not exist, so a chain
//! ends at its last valid target: a loop `alice -> bob -> alice` rings
//! bob. Every step records the chain of forwards that led to it
//! ([`Step::diversions`]), which the SIP gateway sends on (Diversion,
//! History-Info) and records as the call's path.
//!
//! Forward targets are read through [`Users`]: what the caller has looked
//! up so far. When routing needs a user it was not given, it stops with
//! [`Unrouted::NeedsUser`]; the caller looks the user up and routes again
//! (at most once per forward of the chain).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::call::ForwardReason;
use crate::domain::Status;
use crate::forwarding::{ForwardTarget, Forwarding, Rule};
use crate::names::{DomainName, UserAddress};
use crate::registration::Presence;
use crate::ring_group::{Member, RingGroup, Strategy};
use crate::schedule::{LocalTime, TimeZone};
use crate::Timestamp;

/// The time zone of a domain that has none.
static UTC: std::sync::LazyLock<TimeZone> = std::sync::LazyLock::new(TimeZone::utc);

/// Default of [`Limits::max_forward_hops`].
pub const DEFAULT_MAX_FORWARD_HOPS: usize = 5;
/// Most steps a plan may have: every rule of every user on a chain may
/// branch, so a plan is bounded whatever the rules.
pub const MAX_PLAN_STEPS: usize = 32;
/// Most users and groups one call's routing may ask for
/// ([`Unrouted::NeedsUser`]): a forward target per step, and the members
/// of the groups on the way.
pub const MAX_LOOKUPS: usize = 2 * MAX_PLAN_STEPS + 4 * crate::ring_group::MAX_MEMBERS;

/// The call being routed, as the SIP gateway authenticated it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call<'a> {
    /// The caller's domain (its digest realm).
    pub caller_domain: &'a str,
    /// The caller's domain lets its users call other domains (its
    /// `allow_cross_domain_calls` setting; false when the caller's domain is
    /// not known). Only read when the call crosses domains, so a caller may
    /// leave it false otherwise without looking it up.
    pub caller_may_call_other_domains: bool,
    /// The callee's domain, from the Request-URI.
    pub callee_domain: &'a str,
    /// The callee's user name, from the Request-URI.
    pub callee_user: &'a str,
    /// The moment the time conditions of forwarding rules are evaluated
    /// at; `None`: `now`. (A node under test runs its schedules on a test
    /// clock; everything else, binding expiry included, on `now`.)
    pub schedule_time: Option<Timestamp>,
}

impl Call<'_> {
    /// Whether caller and callee are in different domains. Domain names
    /// are case-insensitive (RFC 3261 s.19.1.4).
    pub fn crosses_domains(&self) -> bool {
        !self.caller_domain.eq_ignore_ascii_case(self.callee_domain)
    }
}

/// Bounds of forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most forwards from the dialled user to the last target of a chain.
    pub max_forward_hops: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_forward_hops: DEFAULT_MAX_FORWARD_HOPS,
        }
    }
}

/// What is known of a user when a call is routed to it (the dialled user,
/// or a forwarding target).
///
/// `R` is how one of the user's bindings is reached (the REGISTER's
/// source address and transport, in whatever form the caller holds them).
/// Routing does not read it: it hands it back in the [`Target`]s, because
/// how to send to a contact is the SIP gateway's business, not a routing
/// rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callee<'a, R> {
    /// The status of the user's domain ([`Status::Absent`] when the
    /// domain is not served here at all).
    pub domain: Status,
    /// The user's domain lets its users call other domains: read when the
    /// user's calls are forwarded into another domain.
    pub domain_calls_out: bool,
    /// The time zone of the user's domain, where its forwarding rules'
    /// time conditions are read; `None`: UTC.
    pub time_zone: Option<&'a TimeZone>,
    /// The user, or `None` when the domain has no (live) user of that name.
    /// Need not be looked up when [`admit`] refuses the call: the user is
    /// then never read.
    pub user: Option<CalleeUser<'a, R>>,
    /// The ring group of that name, when the name is a group's (then
    /// `user` is `None`): its members are read through [`Users`].
    pub group: Option<CalleeGroup<'a>>,
    /// The name is a conference room's (then `user` and `group` are
    /// `None`) and the node answers calls to rooms: a `conference:`
    /// forward to it is taken.
    pub room: bool,
}

/// A ring group being called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CalleeGroup<'a> {
    pub group: &'a RingGroup,
    /// How many calls the group's round-robin strategy started before this
    /// one (it starts with the member after the previous call's first).
    pub rotation: usize,
}

/// A user that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalleeUser<'a, R> {
    pub enabled: bool,
    /// The user's presence, when the caller knows it. No rule reads it yet;
    /// ring groups that skip members on a call will.
    pub presence: Option<Presence>,
    /// The user's registered contacts, possibly including some that expired
    /// since they were read (routing drops them by `now`). Their order is
    /// the order of the targets in the plan.
    pub bindings: Vec<CalleeBinding<'a, R>>,
    /// The user's forwarding rules (`None`: none).
    pub forwarding: Option<&'a Forwarding>,
    /// Do-not-disturb is on.
    pub dnd: bool,
    /// The user has an answered call in progress (ring groups skip it).
    pub on_call: bool,
    /// When the user's last answered call ended (ring groups' longest-idle
    /// strategy); `None`: never, as far as its state remembers.
    pub last_call_ended: Option<Timestamp>,
    /// The user's voicemail box is enabled: forwards to it are taken.
    pub voicemail: bool,
}

/// One registered contact of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalleeBinding<'a, R> {
    /// The contact URI, as registered.
    pub uri: &'a str,
    /// `q` in thousandths, when given and known. No rule reads it yet;
    /// sequential ringing by preference will.
    pub q: Option<u16>,
    /// The first instant at which the binding no longer holds (µs), as in
    /// [`Binding::is_expired`](crate::registration::Binding::is_expired).
    pub expires_at: Timestamp,
    /// How the binding is reached; passed through to its [`Target`].
    pub reach: R,
}

impl<R> CalleeBinding<'_, R> {
    /// Whether the binding still holds at `now`.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.expires_at > now
    }
}

/// The users routing may forward to, as far as the caller has looked them
/// up: `None` means "not looked up yet", never "does not exist" (an absent
/// user is a [`Callee`] whose `user` is `None`).
pub trait Users<'a, R> {
    fn get(&self, address: &UserAddress) -> Option<&Callee<'a, R>>;
}

/// Nobody looked up: every forward stops routing with
/// [`Unrouted::NeedsUser`].
pub struct NoUsers;

impl<'a, R> Users<'a, R> for NoUsers {
    fn get(&self, _: &UserAddress) -> Option<&Callee<'a, R>> {
        None
    }
}

impl<'a, R> Users<'a, R> for HashMap<UserAddress, Callee<'a, R>> {
    fn get(&self, address: &UserAddress) -> Option<&Callee<'a, R>> {
        HashMap::get(self, address)
    }
}

/// Why a call is not routed. Each maps to the SIP final response the caller
/// gets ([`Refusal::sip_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The callee's domain is not served here (absent or deleted).
    UnknownDomain,
    /// The callee's domain is suspended.
    DomainSuspended,
    /// The call crosses domains and the caller's domain does not allow it.
    CrossDomainForbidden,
    /// No such user in the callee's domain.
    UnknownUser,
    /// The callee is disabled.
    UserDisabled,
    /// The callee has no live binding (and no forward for that).
    NotRegistered,
    /// The callee has do-not-disturb on (and no busy forward).
    Busy,
}

impl Refusal {
    /// The SIP status the caller is answered with: 404 Not Found for what
    /// does not exist, 403 Forbidden for what is not allowed, 480
    /// Temporarily Unavailable for a callee that exists but cannot be
    /// reached now (RFC 3261 s.21.4.18: it may be reachable later), 486
    /// Busy Here for do-not-disturb.
    pub fn sip_status(self) -> u16 {
        match self {
            Refusal::UnknownDomain | Refusal::UnknownUser => 404,
            Refusal::CrossDomainForbidden => 403,
            Refusal::DomainSuspended | Refusal::UserDisabled | Refusal::NotRegistered => 480,
            Refusal::Busy => 486,
        }
    }
}

/// Why [`route`] returned no plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unrouted {
    /// The call is refused.
    Refused(Refusal),
    /// A forward leads to this user, which [`Users`] does not know yet:
    /// look it up and route again.
    NeedsUser(UserAddress),
}

impl From<Refusal> for Unrouted {
    fn from(refusal: Refusal) -> Self {
        Unrouted::Refused(refusal)
    }
}

/// A user a call rings or was forwarded by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Party<'a> {
    pub domain: &'a str,
    pub user: &'a str,
}

impl<'a> Party<'a> {
    fn of(address: &'a UserAddress) -> Self {
        Party {
            domain: address.domain.as_str(),
            user: address.username.as_str(),
        }
    }

    /// The same user: domains compare case-insensitively, user names
    /// exactly (RFC 3261 s.19.1.4).
    pub fn is(&self, other: &Party<'_>) -> bool {
        self.user == other.user && self.domain.eq_ignore_ascii_case(other.domain)
    }
}

/// One forward on the way to a step: `from`'s call went to `to` because
/// of `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Diversion<'a> {
    pub from: Party<'a>,
    pub to: &'a ForwardTarget,
    pub reason: ForwardReason,
}

/// How a call is rung: steps, each ringing its targets in parallel,
/// starting with the first. The first answer of any step answers the call;
/// when a step ends without one, its [`Next`] says which step comes next
/// for that outcome. `T` is a target ([`Target`] for what [`route`] plans).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<'a, T> {
    /// Never empty, and no step is without targets but a voicemail or a
    /// conference step: a
    /// callee with nothing to ring is refused instead. At most
    /// [`MAX_PLAN_STEPS`].
    pub steps: Vec<Step<'a, T>>,
}

impl<'a, T> Plan<'a, T> {
    /// One step ringing `owner`'s `targets` together until the call's
    /// no-answer timeout, and the call ends with it: the plan of a user
    /// without call features.
    pub fn parallel(owner: Party<'a>, targets: Vec<T>) -> Self {
        Plan {
            steps: vec![Step {
                targets,
                ring_timeout: None,
                next: Next::NONE,
                owner,
                group: None,
                voicemail: false,
                conference: false,
                diversions: Vec::new(),
                skipped: Vec::new(),
            }],
        }
    }
}

/// One step of a [`Plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step<'a, T> {
    /// Rung together.
    pub targets: Vec<T>,
    /// How long the step rings before it counts as not answered; `None`:
    /// until the call's own no-answer timeout.
    pub ring_timeout: Option<Duration>,
    /// Where the call goes after each outcome of this step.
    pub next: Next,
    /// Whose phones the targets are: a user, or the ring group whose
    /// members' phones they are (then each target names its member).
    pub owner: Party<'a>,
    /// The ring group this step rings members of (`owner` is then the
    /// group); `None` for a user's own phones.
    pub group: Option<Party<'a>>,
    /// The step is `owner`'s voicemail box (ADR 0022): it has no targets;
    /// the node answers the call itself. Always the last step it leads to.
    pub voicemail: bool,
    /// The step is the conference room `owner` (ADR 0025): it has no
    /// targets; the node answers the call and the caller joins the room.
    /// Always the last step it leads to.
    pub conference: bool,
    /// The forwards that led from the dialled user to this step, oldest
    /// first (empty for the dialled user's own phones).
    pub diversions: Vec<Diversion<'a>>,
    /// The owner's forwarding rules that apply now but cannot be taken
    /// for this call, and why: what the call's events tell of a loop, a
    /// chain cut at the hop limit or a target that cannot ring.
    pub skipped: Vec<Skipped<'a>>,
}

/// A forwarding rule not taken for a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skipped<'a> {
    /// The rule (by the reason it would forward for).
    pub rule: ForwardReason,
    pub to: &'a ForwardTarget,
    pub why: SkipReason,
}

/// Why a forward was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The target is already on the chain that led here.
    Loop,
    /// The chain already has the most forwards allowed.
    HopLimit,
    /// The plan already has the most steps allowed.
    PlanLimit,
    /// A number: not routed yet.
    NotRoutable,
    /// The target user, ring group or conference room, or its domain,
    /// does not exist.
    UnknownTarget,
    /// The target's domain is suspended, or the target user disabled, or
    /// its voicemail box is off.
    TargetUnavailable,
    /// The forwarding user's domain may not call the target's domain.
    CrossDomainForbidden,
    /// The target has do-not-disturb on and no busy forward of its own.
    TargetBusy,
    /// No phone of the target is registered and it has no unavailable
    /// forward of its own.
    TargetNotRegistered,
}

impl SkipReason {
    pub const ALL: [SkipReason; 9] = [
        SkipReason::Loop,
        SkipReason::HopLimit,
        SkipReason::PlanLimit,
        SkipReason::NotRoutable,
        SkipReason::UnknownTarget,
        SkipReason::TargetUnavailable,
        SkipReason::CrossDomainForbidden,
        SkipReason::TargetBusy,
        SkipReason::TargetNotRegistered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Loop => "loop",
            SkipReason::HopLimit => "hop_limit",
            SkipReason::PlanLimit => "plan_limit",
            SkipReason::NotRoutable => "not_routable",
            SkipReason::UnknownTarget => "unknown_target",
            SkipReason::TargetUnavailable => "target_unavailable",
            SkipReason::CrossDomainForbidden => "cross_domain_forbidden",
            SkipReason::TargetBusy => "target_busy",
            SkipReason::TargetNotRegistered => "target_not_registered",
        }
    }

    /// Why the forward's target refused it.
    fn of(refusal: Refusal) -> SkipReason {
        match refusal {
            Refusal::UnknownDomain | Refusal::UnknownUser => SkipReason::UnknownTarget,
            Refusal::DomainSuspended | Refusal::UserDisabled => SkipReason::TargetUnavailable,
            Refusal::CrossDomainForbidden => SkipReason::CrossDomainForbidden,
            Refusal::Busy => SkipReason::TargetBusy,
            Refusal::NotRegistered => SkipReason::TargetNotRegistered,
        }
    }
}

/// The step that follows each outcome of a step: an index into the plan's
/// steps, always greater than the step's own (so a plan always ends), or
/// `None` when the call ends with that outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Next {
    /// Every target answered busy.
    pub busy: Option<usize>,
    /// The step's ring timeout passed, or a target did not answer in time.
    pub no_answer: Option<usize>,
    /// Anything else that is not an answer (not found, server errors...).
    pub unavailable: Option<usize>,
}

impl Next {
    /// The last step: whatever happens, the call ends with it.
    pub const NONE: Next = Next {
        busy: None,
        no_answer: None,
        unavailable: None,
    };
}

/// A contact to ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a, R> {
    /// The contact URI (the Request-URI of the INVITE sent to it).
    pub uri: &'a str,
    /// How the contact is reached, from its [`CalleeBinding`].
    pub reach: R,
    /// The ring group member whose phone this is, in a step that rings a
    /// group's members; `None`: the step's owner's.
    pub member: Option<Party<'a>>,
}

/// The refusals that depend on the domains only (rules 1 to 3 of the
/// module documentation). [`route`] applies them first; a caller may call
/// this before looking the user up, since the user cannot change a refusal
/// given here.
pub fn admit(call: &Call<'_>, callee_domain: Status) -> Result<(), Refusal> {
    match callee_domain {
        Status::Absent | Status::Deleted => return Err(Refusal::UnknownDomain),
        Status::Suspended => return Err(Refusal::DomainSuspended),
        Status::Active => {}
    }
    // The caller's domain decides whether its users may call out of it
    // (off by default): the callee's domain has no say, so a domain cannot
    // be reached from another one that never opted in.
    if call.crosses_domains() && !call.caller_may_call_other_domains {
        return Err(Refusal::CrossDomainForbidden);
    }
    Ok(())
}

/// Routes `call` to `callee` at `now`: the rules of the module
/// documentation, in their order. Forward targets are read from `users`.
/// The plan's targets borrow the bindings' URIs and clone their `reach`.
pub fn route<'a, R: Clone>(
    call: &Call<'a>,
    callee: &Callee<'a, R>,
    users: &impl Users<'a, R>,
    now: Timestamp,
    limits: Limits,
) -> Result<Plan<'a, Target<'a, R>>, Unrouted> {
    admit(call, callee.domain)?;
    let dialled = Party {
        domain: call.callee_domain,
        user: call.callee_user,
    };
    let mut planner = Planner {
        users,
        now,
        schedule_time: call.schedule_time.unwrap_or(now),
        limits,
        steps: Vec::new(),
        clock: None,
    };
    let planned = match (&callee.user, &callee.group) {
        (Some(user), _) => {
            if !user.enabled {
                return Err(Refusal::UserDisabled.into());
            }
            planner.user(dialled, callee, user, &[])?
        }
        (None, Some(group)) => planner.group(dialled, callee, *group, &[])?,
        (None, None) => return Err(Refusal::UnknownUser.into()),
    };
    match planned {
        Ok(first) => {
            debug_assert_eq!(first, 0, "the first step planned is the first rung");
            Ok(Plan {
                steps: planner.steps,
            })
        }
        Err(refusal) => Err(refusal.into()),
    }
}

/// Builds a plan's steps depth first: a user's own step before the steps
/// its rules lead to, so every `next` points forward.
struct Planner<'p, 'a, R, U> {
    users: &'p U,
    now: Timestamp,
    schedule_time: Timestamp,
    limits: Limits,
    steps: Vec<Step<'a, Target<'a, R>>>,
    /// The last time zone read and the schedule time on its clock.
    clock: Option<(&'a TimeZone, LocalTime)>,
}

impl<'a, R: Clone, U: Users<'a, R>> Planner<'_, 'a, R, U> {
    /// Plans the call for `party` (an existing, enabled user), reached by
    /// `via`: the index of the step where its call begins, or why nothing
    /// can ring. The outer error is a user to look up.
    fn user(
        &mut self,
        party: Party<'a>,
        callee: &Callee<'a, R>,
        user: &CalleeUser<'a, R>,
        via: &[Diversion<'a>],
    ) -> Result<Result<usize, Refusal>, Unrouted> {
        let rules = user.forwarding;
        // The rules that apply now, in the time zone of this user's domain
        // (its clock read once per route, and only for time conditions).
        let (at, tz) = (self.schedule_time, callee.time_zone.unwrap_or(&UTC));
        let local = match rules {
            Some(f) if !f.when.is_empty() => Some(self.local_time(tz)),
            _ => None,
        };
        let local = || local.unwrap_or_else(|| LocalTime::new(at, tz));
        let rule = |r: Rule| rules.and_then(|f| f.target_when(r, local));
        // The rules of this user not taken for this call, and why; kept
        // on the user's step (none when the user has no step).
        let mut skipped = Vec::new();
        let mut taken_or_skip = |taken: Result<usize, SkipReason>,
                                 to: &'a ForwardTarget,
                                 rule: ForwardReason| match taken {
            Ok(step) => Some(step),
            Err(why) => {
                skipped.push(Skipped { rule, to, why });
                None
            }
        };
        if let Some(target) = rule(Rule::Always) {
            let taken = self.forward(party, callee, target, ForwardReason::Unconditional, via)?;
            if let Some(step) = taken_or_skip(taken, target, ForwardReason::Unconditional) {
                return Ok(Ok(step));
            }
        }
        if user.dnd {
            let taken = match rule(Rule::Busy) {
                Some(target) => self
                    .forward(party, callee, target, ForwardReason::DoNotDisturb, via)?
                    .ok(),
                None => None,
            };
            return Ok(taken.ok_or(Refusal::Busy));
        }
        let targets = self.phones(user, None);
        // Find-me/follow-me: the phones of the follow-me targets that can
        // ring now, each target's with its user as member.
        let mut following = Vec::new();
        if let Some(fm) = rules.and_then(|f| f.follow_me.as_ref()) {
            for target in &fm.targets {
                if let Some(phones) = self.follow_target(party, callee, target, via)? {
                    following.push(phones);
                }
            }
        }
        if targets.is_empty() && following.is_empty() {
            let taken = match rule(Rule::Unavailable) {
                Some(target) => self
                    .forward(party, callee, target, ForwardReason::Unavailable, via)?
                    .ok(),
                None => None,
            };
            return Ok(taken.ok_or(Refusal::NotRegistered));
        }
        let no_answer = rules
            .and_then(|f| f.no_answer.as_ref())
            .filter(|_| rule(Rule::NoAnswer).is_some());
        let no_answer_time = no_answer.map(|r| Duration::from_secs(u64::from(r.after_secs)));
        let first = self.steps.len();
        let own = !targets.is_empty();
        if own {
            self.steps.push(Step {
                targets: targets.clone(),
                ring_timeout: no_answer_time,
                next: Next::NONE,
                owner: party,
                group: None,
                voicemail: false,
                conference: false,
                diversions: via.to_vec(),
                skipped: Vec::new(),
            });
        }
        // The follow-me steps: the own phones go on ringing (the engine
        // keeps a phone of two consecutive steps ringing) while the
        // targets join, all at once or one after the other.
        let mut follow_steps = Vec::new();
        if let Some(fm) = rules
            .and_then(|f| f.follow_me.as_ref())
            .filter(|_| !following.is_empty())
        {
            let ring = Duration::from_secs(u64::from(fm.ring_secs));
            let groups: Vec<Vec<Target<'a, R>>> = if fm.sequential {
                following
            } else {
                vec![following.into_iter().flatten().collect()]
            };
            let n = groups.len();
            for (k, phones) in groups.into_iter().enumerate() {
                if self.steps.len() >= MAX_PLAN_STEPS {
                    break;
                }
                let last = k + 1 == n;
                let ring_timeout = match (fm.sequential, last) {
                    (true, false) => Some(ring),
                    (true, true) => no_answer_time.map(|_| ring),
                    (false, _) => no_answer_time,
                };
                follow_steps.push(self.steps.len());
                self.steps.push(Step {
                    targets: targets.iter().cloned().chain(phones).collect(),
                    ring_timeout,
                    next: Next::NONE,
                    owner: party,
                    group: None,
                    voicemail: false,
                    conference: false,
                    diversions: via.to_vec(),
                    skipped: Vec::new(),
                });
            }
            if own {
                self.steps[first].ring_timeout =
                    Some(Duration::from_secs(u64::from(fm.after_secs)));
            }
        }
        let mut next = Next::NONE;
        if let Some(target) = rule(Rule::Busy) {
            let taken = self.forward(party, callee, target, ForwardReason::UserBusy, via)?;
            next.busy = taken_or_skip(taken, target, ForwardReason::UserBusy);
        }
        if let Some(rule) = no_answer {
            let taken = self.forward(party, callee, &rule.target, ForwardReason::NoAnswer, via)?;
            next.no_answer = taken_or_skip(taken, &rule.target, ForwardReason::NoAnswer);
        }
        if let Some(target) = rule(Rule::Unavailable) {
            let taken = self.forward(party, callee, target, ForwardReason::Unavailable, via)?;
            next.unavailable = taken_or_skip(taken, target, ForwardReason::Unavailable);
        }
        // Each step before the last follow-me step goes on to the next
        // one, except that busy phones follow the busy rule when there is
        // one; the last step follows the user's rules.
        let chain: Vec<usize> = own
            .then_some(first)
            .into_iter()
            .chain(follow_steps.iter().copied())
            .collect();
        for (k, &step) in chain.iter().enumerate() {
            self.steps[step].next = match chain.get(k + 1) {
                Some(&following) => Next {
                    busy: next.busy.or(Some(following)),
                    no_answer: Some(following),
                    unavailable: Some(following),
                },
                None => next,
            };
        }
        self.steps[first].skipped = skipped;
        Ok(Ok(first))
    }

    /// The phones of a follow-me target of `from`, when it can ring now: a
    /// user (not on the chain that led here, of a domain `from`'s may
    /// call), enabled, without do-not-disturb, registered. Its forwarding
    /// rules are not followed.
    fn follow_target(
        &mut self,
        from: Party<'a>,
        from_callee: &Callee<'a, R>,
        target: &'a ForwardTarget,
        via: &[Diversion<'a>],
    ) -> Result<Option<Vec<Target<'a, R>>>, Unrouted> {
        let Some(address) = target.user() else {
            return Ok(None);
        };
        let to = Party::of(address);
        if on_chain(to, from, via) {
            return Ok(None);
        }
        let Some(callee) = self.users.get(address) else {
            return Err(Unrouted::NeedsUser(address.clone()));
        };
        let hop = self.hop(from, from_callee, to);
        if admit(&hop, callee.domain).is_err() {
            return Ok(None);
        }
        let Some(user) = callee.user.as_ref().filter(|u| u.enabled && !u.dnd) else {
            return Ok(None);
        };
        let phones = self.phones(user, Some(to));
        Ok((!phones.is_empty()).then_some(phones))
    }

    /// The live bindings of `user` as targets (of `member`, in a step that
    /// rings others' phones too).
    fn phones(&self, user: &CalleeUser<'a, R>, member: Option<Party<'a>>) -> Vec<Target<'a, R>> {
        user.bindings
            .iter()
            .filter(|b| b.is_live(self.now))
            .map(|b| Target {
                uri: b.uri,
                reach: b.reach.clone(),
                member,
            })
            .collect()
    }

    /// The call `from` makes to `to` when its calls go there: what
    /// [`admit`] judges a forward or a follow-me target by.
    fn hop(&self, from: Party<'a>, from_callee: &Callee<'a, R>, to: Party<'a>) -> Call<'a> {
        Call {
            caller_domain: from.domain,
            caller_may_call_other_domains: from_callee.domain_calls_out,
            callee_domain: to.domain,
            callee_user: to.user,
            schedule_time: Some(self.schedule_time),
        }
    }

    /// The schedule time on the wall clock of `tz`: the time zone
    /// conversion costs more than testing a schedule, and every user of a
    /// domain shares its zone, so the last one read is kept.
    fn local_time(&mut self, tz: &'a TimeZone) -> LocalTime {
        match self.clock {
            Some((zone, local)) if std::ptr::eq(zone, tz) || zone == tz => local,
            _ => {
                let local = LocalTime::new(self.schedule_time, tz);
                self.clock = Some((tz, local));
                local
            }
        }
    }

    /// Takes `from`'s forward to `target` if it can be taken (see the
    /// module documentation): the index of the step where the forwarded
    /// call begins, or why it is not taken.
    fn forward(
        &mut self,
        from: Party<'a>,
        from_callee: &Callee<'a, R>,
        target: &'a ForwardTarget,
        reason: ForwardReason,
        via: &[Diversion<'a>],
    ) -> Result<Result<usize, SkipReason>, Unrouted> {
        match target {
            ForwardTarget::Voicemail(address) => {
                return self.app(
                    from,
                    from_callee,
                    address,
                    target,
                    reason,
                    via,
                    App::Voicemail,
                )
            }
            ForwardTarget::Conference(address) => {
                return self.app(
                    from,
                    from_callee,
                    address,
                    target,
                    reason,
                    via,
                    App::Conference,
                )
            }
            _ => {}
        }
        // Numbers are not routed yet.
        let Some(address) = rung(target) else {
            return Ok(Err(SkipReason::NotRoutable));
        };
        let to = Party::of(address);
        if on_chain(to, from, via) {
            return Ok(Err(SkipReason::Loop));
        }
        if via.len() >= self.limits.max_forward_hops {
            return Ok(Err(SkipReason::HopLimit));
        }
        if self.steps.len() >= MAX_PLAN_STEPS {
            return Ok(Err(SkipReason::PlanLimit));
        }
        let Some(callee) = self.users.get(address) else {
            return Err(Unrouted::NeedsUser(address.clone()));
        };
        let hop = self.hop(from, from_callee, to);
        if let Err(refusal) = admit(&hop, callee.domain) {
            return Ok(Err(SkipReason::of(refusal)));
        }
        let mut chain = Vec::with_capacity(via.len() + 1);
        chain.extend_from_slice(via);
        chain.push(Diversion {
            from,
            to: target,
            reason,
        });
        // A `group:` target rings a group, a user target a user: a name
        // that is the other kind (now) is unknown as that target.
        let planned = match (target, &callee.user, &callee.group) {
            (ForwardTarget::Group(_), _, Some(group)) => self.group(to, callee, *group, &chain)?,
            (ForwardTarget::User(_), Some(user), _) => {
                if !user.enabled {
                    return Ok(Err(SkipReason::TargetUnavailable));
                }
                self.user(to, callee, user, &chain)?
            }
            _ => return Ok(Err(SkipReason::UnknownTarget)),
        };
        Ok(planned.map_err(SkipReason::of))
    }

    /// Takes `from`'s forward to an application of the node at `address`:
    /// a last step that the node answers, when `address` can be called
    /// from here and is, now, what the target names: the user's voicemail
    /// box, enabled (ADR 0022), or a conference room (ADR 0025). Neither
    /// can loop: nothing is forwarded on from there.
    #[allow(clippy::too_many_arguments)]
    fn app(
        &mut self,
        from: Party<'a>,
        from_callee: &Callee<'a, R>,
        address: &'a UserAddress,
        target: &'a ForwardTarget,
        reason: ForwardReason,
        via: &[Diversion<'a>],
        app: App,
    ) -> Result<Result<usize, SkipReason>, Unrouted> {
        if via.len() >= self.limits.max_forward_hops {
            return Ok(Err(SkipReason::HopLimit));
        }
        if self.steps.len() >= MAX_PLAN_STEPS {
            return Ok(Err(SkipReason::PlanLimit));
        }
        let to = Party::of(address);
        let Some(callee) = self.users.get(address) else {
            return Err(Unrouted::NeedsUser(address.clone()));
        };
        let hop = self.hop(from, from_callee, to);
        if let Err(refusal) = admit(&hop, callee.domain) {
            return Ok(Err(SkipReason::of(refusal)));
        }
        match (app, &callee.user) {
            (App::Voicemail, Some(user)) if user.enabled && user.voicemail => {}
            (App::Voicemail, Some(_)) => return Ok(Err(SkipReason::TargetUnavailable)),
            (App::Voicemail, None) => return Ok(Err(SkipReason::UnknownTarget)),
            (App::Conference, _) if callee.room => {}
            (App::Conference, _) => return Ok(Err(SkipReason::UnknownTarget)),
        }
        let mut diversions = Vec::with_capacity(via.len() + 1);
        diversions.extend_from_slice(via);
        diversions.push(Diversion {
            from,
            to: target,
            reason,
        });
        self.steps.push(Step {
            targets: Vec::new(),
            ring_timeout: None,
            next: Next::NONE,
            owner: to,
            group: None,
            voicemail: app == App::Voicemail,
            conference: app == App::Conference,
            diversions,
            skipped: Vec::new(),
        });
        Ok(Ok(self.steps.len() - 1))
    }

    /// Plans the call for the ring group `party`, reached by `via`: its
    /// own forwarding rules, then its members by its strategy (see
    /// [`crate::ring_group`]), then where an unanswered call goes.
    fn group(
        &mut self,
        party: Party<'a>,
        callee: &Callee<'a, R>,
        called: CalleeGroup<'a>,
        via: &[Diversion<'a>],
    ) -> Result<Result<usize, Refusal>, Unrouted> {
        let group = called.group;
        let rules = &group.forwarding;
        let tz = callee.time_zone.unwrap_or(&UTC);
        let local = (!rules.when.is_empty()).then(|| self.local_time(tz));
        let at = self.schedule_time;
        let local = || local.unwrap_or_else(|| LocalTime::new(at, tz));
        let rule = |r: Rule| rules.target_when(r, local);
        let mut skipped = Vec::new();
        if let Some(target) = rule(Rule::Always) {
            match self.forward(party, callee, target, ForwardReason::Unconditional, via)? {
                Ok(step) => return Ok(Ok(step)),
                Err(why) => skipped.push(Skipped {
                    rule: ForwardReason::Unconditional,
                    to: target,
                    why,
                }),
            }
        }
        // The members that can ring now, in the group's order.
        let mut ringable: Vec<Ringable<'a, '_, R>> = Vec::with_capacity(group.members.len());
        let mut busy = false;
        let start = match group.strategy {
            Strategy::RoundRobin => called.rotation % group.members.len().max(1),
            _ => 0,
        };
        let domain = callee_domain_name(party)?;
        for member in group.members[start..].iter().chain(&group.members[..start]) {
            let address = UserAddress {
                username: member.user.clone(),
                domain: domain.clone(),
            };
            let Some(found) = self.users.get(&address) else {
                return Err(Unrouted::NeedsUser(address));
            };
            // A member deleted or disabled since it was listed is skipped.
            let Some(user) = found.user.as_ref().filter(|u| u.enabled) else {
                continue;
            };
            if (user.dnd && group.skip_dnd) || (user.on_call && group.skip_busy) {
                busy = true;
                continue;
            }
            let owner = Party {
                domain: party.domain,
                user: member.user.as_str(),
            };
            let targets = self.phones(user, Some(owner));
            if !targets.is_empty() {
                ringable.push((owner, member, targets, user.last_call_ended));
            }
        }
        if ringable.is_empty() {
            let (r, reason, refusal) = if busy {
                (Rule::Busy, ForwardReason::UserBusy, Refusal::Busy)
            } else {
                (
                    Rule::Unavailable,
                    ForwardReason::Unavailable,
                    Refusal::NotRegistered,
                )
            };
            let taken = match rule(r) {
                Some(target) => self.forward(party, callee, target, reason, via)?.ok(),
                None => None,
            };
            return Ok(taken.ok_or(refusal));
        }
        if group.strategy == Strategy::LongestIdle {
            // Never had a call first, then the longest since the last one
            // ended; the listed order among equals (a stable sort).
            ringable.sort_by_key(|(_, _, _, ended)| ended.map_or(i64::MIN, |t| t));
        }
        let timeout = Duration::from_secs(u64::from(group.timeout_secs));
        let first = self.steps.len();
        if group.strategy == Strategy::Simultaneous {
            let targets = ringable.into_iter().flat_map(|(_, _, t, _)| t).collect();
            self.push_group_step(party, targets, timeout, via);
        } else {
            // One member after the other, within the group's timeout.
            let mut left = timeout;
            for (_, member, targets, _) in ringable {
                if left.is_zero() || self.steps.len() >= MAX_PLAN_STEPS {
                    break;
                }
                let ring = Duration::from_secs(u64::from(group.ring_secs_of(member))).min(left);
                left = left.saturating_sub(ring);
                self.push_group_step(party, targets, ring, via);
            }
        }
        let last = self.steps.len() - 1;
        // Each member's step goes on to the next one, whatever its outcome.
        for i in first..last {
            self.steps[i].next = Next {
                busy: Some(i + 1),
                no_answer: Some(i + 1),
                unavailable: Some(i + 1),
            };
        }
        // After the last: the group's targets for busy and unavailable,
        // else its no-answer target.
        let mut fallback = |planner: &mut Self, r: Rule, reason: ForwardReason| {
            let Some(target) = rule(r) else {
                return Ok(None);
            };
            let taken = planner.forward(party, callee, target, reason, via)?;
            Ok::<_, Unrouted>(match taken {
                Ok(step) => Some(step),
                Err(why) => {
                    skipped.push(Skipped {
                        rule: reason,
                        to: target,
                        why,
                    });
                    None
                }
            })
        };
        let no_answer = fallback(self, Rule::NoAnswer, ForwardReason::NoAnswer)?;
        let busy = fallback(self, Rule::Busy, ForwardReason::UserBusy)?;
        let unavailable = fallback(self, Rule::Unavailable, ForwardReason::Unavailable)?;
        self.steps[last].next = Next {
            busy: busy.or(no_answer),
            no_answer,
            unavailable: unavailable.or(no_answer),
        };
        self.steps[first].skipped = skipped;
        Ok(Ok(first))
    }

    fn push_group_step(
        &mut self,
        group: Party<'a>,
        targets: Vec<Target<'a, R>>,
        ring: Duration,
        via: &[Diversion<'a>],
    ) {
        self.steps.push(Step {
            targets,
            ring_timeout: Some(ring),
            next: Next::NONE,
            owner: group,
            group: Some(group),
            voicemail: false,
            conference: false,
            diversions: via.to_vec(),
            skipped: Vec::new(),
        });
    }
}

/// The node's applications a forward can end at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum App {
    Voicemail,
    Conference,
}

/// A ring group member that can ring now: who, its settings in the group,
/// its phones, and when its last call ended.
type Ringable<'a, 'g, R> = (Party<'a>, &'g Member, Vec<Target<'a, R>>, Option<Timestamp>);

/// Whether `to` is `from` or already on the chain of forwards `via` (a
/// loop).
fn on_chain(to: Party<'_>, from: Party<'_>, via: &[Diversion<'_>]) -> bool {
    to.is(&from)
        || via
            .iter()
            .any(|d| d.from.is(&to) || rung(d.to).is_some_and(|a| Party::of(a).is(&to)))
}

/// The user or ring group a target rings, if it is one.
fn rung(target: &ForwardTarget) -> Option<&UserAddress> {
    match target {
        ForwardTarget::User(a) | ForwardTarget::Group(a) => Some(a),
        _ => None,
    }
}

/// The domain of a group being routed, as a name to look its members up
/// by. It came from a parsed address or an admitted call, so it parses;
/// a failure is a caller's bug, reported as an unknown domain.
fn callee_domain_name(group: Party<'_>) -> Result<DomainName, Unrouted> {
    DomainName::parse(group.domain).map_err(|_| Unrouted::Refused(Refusal::UnknownDomain))
}
