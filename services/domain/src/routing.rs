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
//!   setting, the callee's address);
//! - [`Callee`]: what is known of the callee (its domain's status; the
//!   user, if it exists: enabled, presence, bindings);
//! - `now` (µs), to tell live bindings from expired ones: the caller reads
//!   the clock, routing does not.
//!
//! A new call feature is a new field (on [`CalleeUser`] when it is a user
//! setting, on [`Call`] when it depends on the call) and a new rule in
//! [`route`] that shapes the plan's steps: ring timeouts, continuing on
//! busy / no answer / unavailable, further steps with other targets.
//!
//! # Rules today
//!
//! In this order (the first that applies decides):
//!
//! 1. the callee's domain is absent or deleted: [`Refusal::UnknownDomain`];
//! 2. it is suspended: [`Refusal::DomainSuspended`];
//! 3. the call crosses domains (names differ ASCII-case-insensitively) and
//!    the caller's domain does not allow it:
//!    [`Refusal::CrossDomainForbidden`];
//! 4. the user does not exist: [`Refusal::UnknownUser`];
//! 5. it is disabled: [`Refusal::UserDisabled`];
//! 6. it has no binding alive at `now`: [`Refusal::NotRegistered`];
//! 7. otherwise one step rings every live binding in parallel, in binding
//!    order, until the call's own no-answer timeout, and the call ends with
//!    it ([`Plan::parallel`]).
//!
//! The domain checks come first so that nothing about a user is revealed
//! to a caller who may not call into its domain (an unknown user and a
//! forbidden call would otherwise answer differently), and so that the
//! user need not even be looked up then ([`admit`]).

use std::time::Duration;

use crate::domain::Status;
use crate::registration::Presence;
use crate::Timestamp;

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
}

impl Call<'_> {
    /// Whether caller and callee are in different domains. Domain names
    /// are case-insensitive (RFC 3261 s.19.1.4).
    pub fn crosses_domains(&self) -> bool {
        !self.caller_domain.eq_ignore_ascii_case(self.callee_domain)
    }
}

/// What is known of the callee when the call is routed.
///
/// `R` is how one of the callee's bindings is reached (the REGISTER's
/// source address and transport, in whatever form the caller holds them).
/// Routing does not read it: it hands it back in the [`Target`]s, because
/// how to send to a contact is the SIP gateway's business, not a routing
/// rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callee<'a, R> {
    /// The status of the callee's domain ([`Status::Absent`] when the
    /// domain is not served here at all).
    pub domain: Status,
    /// The user, or `None` when the domain has no (live) user of that name.
    /// Need not be looked up when [`admit`] refuses the call: the user is
    /// then never read.
    pub user: Option<CalleeUser<'a, R>>,
}

/// A callee that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalleeUser<'a, R> {
    pub enabled: bool,
    /// The user's presence, when the caller knows it. No rule reads it yet;
    /// do-not-disturb will.
    pub presence: Option<Presence>,
    /// The user's registered contacts, possibly including some that expired
    /// since they were read (routing drops them by `now`). Their order is
    /// the order of the targets in the plan.
    pub bindings: Vec<CalleeBinding<'a, R>>,
}

/// One registered contact of the callee.
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
    /// The callee has no live binding.
    NotRegistered,
}

impl Refusal {
    /// The SIP status the caller is answered with: 404 Not Found for what
    /// does not exist, 403 Forbidden for what is not allowed, 480
    /// Temporarily Unavailable for a callee that exists but cannot be
    /// reached now (RFC 3261 s.21.4.18: it may be reachable later).
    pub fn sip_status(self) -> u16 {
        match self {
            Refusal::UnknownDomain | Refusal::UnknownUser => 404,
            Refusal::CrossDomainForbidden => 403,
            Refusal::DomainSuspended | Refusal::UserDisabled | Refusal::NotRegistered => 480,
        }
    }
}

/// How a call is rung: steps tried one after the other, each ringing its
/// targets in parallel. The first answer of any step answers the call; when
/// a step ends without one, its [`ContinueOn`] says whether the next step
/// is tried. `T` is a target ([`Target`] for what [`route`] plans).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<T> {
    /// Never empty, and no step is without targets: a callee with nothing
    /// to ring is refused instead.
    pub steps: Vec<Step<T>>,
}

impl<T> Plan<T> {
    /// One step ringing `targets` together until the call's no-answer
    /// timeout, and the call ends with it: the plan of a user without call
    /// features.
    pub fn parallel(targets: Vec<T>) -> Self {
        Plan {
            steps: vec![Step {
                targets,
                ring_timeout: None,
                continue_on: ContinueOn::NEVER,
            }],
        }
    }
}

/// One step of a [`Plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step<T> {
    /// Rung together.
    pub targets: Vec<T>,
    /// How long the step rings before it counts as not answered; `None`:
    /// until the call's own no-answer timeout.
    pub ring_timeout: Option<Duration>,
    /// Which outcomes of this step move the call on to the next one.
    pub continue_on: ContinueOn,
}

/// The outcomes of a step after which the next step is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ContinueOn {
    /// Every target answered busy.
    pub busy: bool,
    /// The step's ring timeout passed, or a target did not answer in time.
    pub no_answer: bool,
    /// Anything else that is not an answer (not found, server errors...).
    pub unavailable: bool,
}

impl ContinueOn {
    /// The last step: whatever happens, the call ends with it.
    pub const NEVER: ContinueOn = ContinueOn {
        busy: false,
        no_answer: false,
        unavailable: false,
    };
}

/// A contact to ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a, R> {
    /// The contact URI (the Request-URI of the INVITE sent to it).
    pub uri: &'a str,
    /// How the contact is reached, from its [`CalleeBinding`].
    pub reach: R,
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
/// documentation, in their order. The plan's targets borrow the bindings'
/// URIs and clone their `reach`.
pub fn route<'a, R: Clone>(
    call: &Call<'_>,
    callee: &Callee<'a, R>,
    now: Timestamp,
) -> Result<Plan<Target<'a, R>>, Refusal> {
    admit(call, callee.domain)?;
    let user = callee.user.as_ref().ok_or(Refusal::UnknownUser)?;
    if !user.enabled {
        return Err(Refusal::UserDisabled);
    }
    let targets: Vec<_> = user
        .bindings
        .iter()
        .filter(|b| b.is_live(now))
        .map(|b| Target {
            uri: b.uri,
            reach: b.reach.clone(),
        })
        .collect();
    if targets.is_empty() {
        return Err(Refusal::NotRegistered);
    }
    Ok(Plan::parallel(targets))
}
