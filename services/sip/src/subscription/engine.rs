//! The subscription table: sans-IO. Inputs are an accepted SUBSCRIBE
//! (parsed, authenticated, its expiry granted), an in-dialog SUBSCRIBE
//! (refresh or unsubscribe), a recorded change of a watched user, a
//! response to one of our NOTIFYs, and timers, each with `now`. Outputs
//! are NOTIFY requests to send on flows ([`Action`]) and the next
//! deadline ([`Engine::poll_timeout`]). The async shell in the parent
//! module owns the clock, the sockets and the lock.
//!
//! Rules (RFC 6665):
//! - an accepted SUBSCRIBE is *held* until its 200 is sent
//!   ([`Engine::release`]); the NOTIFY it calls for follows at once
//!   (s.4.2.1.2 and s.4.2.2: also after a refresh);
//! - one NOTIFY per subscription is in flight at a time; changes meanwhile
//!   are coalesced into the next one, which carries the latest full
//!   state, so a slow subscriber costs one pending state, never a queue;
//! - a NOTIFY is a client transaction: over UDP it is retransmitted
//!   (Timer E: T1 doubling up to T2), and without a final response within
//!   Timer F (64*T1) the subscription is removed, as it is after any final
//!   non-2xx response (481 included: s.4.2.2);
//! - at expiry or on `Expires: 0`, a last NOTIFY with
//!   `Subscription-State: terminated;reason=timeout` is sent and the
//!   dialog is forgotten at once (a later refresh gets 481); the entry
//!   itself goes when that NOTIFY's transaction ends;
//! - a subscription that is not terminating counts against its
//!   subscriber's and its domain's limits and the table's capacity.
//!
//! Every timer belongs to one subscription and is removed with it, so the
//! table holds exactly: per subscription one expiry timer (none once
//! terminating), and per NOTIFY in flight a timeout timer plus, over UDP,
//! a retransmission timer ([`Engine::check_invariants`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::backend::{
    Availability, CallPhase, CallState, MessageCounts, ResourceChange, ResourceState, RouteTarget,
};
use crate::transaction::{MAGIC_COOKIE, T1, T2};
use crate::transport::Flow;

use super::dialog_info::Tags;
use super::package::{message_summary_body, Package};
use super::{dialog_info, pidf};

/// Timer F: a NOTIFY without a final response after this is given up,
/// and its subscription with it.
pub const NOTIFY_TIMEOUT: Duration = Duration::from_millis(64 * 500);

/// A subscription held for its 200 longer than this (its request was
/// dropped, e.g. at shutdown) is released anyway: no entry waits forever.
pub const HOLD_LIMIT: Duration = Duration::from_secs(32);

/// Calls whose dialog tags are remembered (the oldest are forgotten).
pub const TAGS_CAPACITY: usize = 4096;

/// The table's limits (from the gateway configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Live subscriptions one subscriber (`user@domain`) may hold.
    pub per_subscriber: usize,
    /// Live subscriptions in one domain.
    pub per_domain: usize,
    /// Live subscriptions in the table.
    pub total: usize,
}

/// Which limit refused a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    Subscriber,
    Domain,
    Total,
}

impl LimitHit {
    pub fn label(self) -> &'static str {
        match self {
            LimitHit::Subscriber => "subscriber",
            LimitHit::Domain => "domain",
            LimitHit::Total => "total",
        }
    }
}

/// A subscription's id in the table (never reused while the node runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubId(pub u64);

/// An authenticated, admissible initial SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSubscription {
    pub call_id: String,
    /// The subscriber's From tag.
    pub remote_tag: String,
    /// The SUBSCRIBE's From header value: the NOTIFYs' To.
    pub remote_header: String,
    /// The SUBSCRIBE's To header value (no tag): the NOTIFYs' From, with
    /// our tag added.
    pub local_header: String,
    /// The subscriber, `user@domain` (authenticated).
    pub subscriber: String,
    /// The subscriber's domain (lower case): the limits' domain.
    pub domain: String,
    /// The watched user, `user@domain`.
    pub resource: String,
    pub package: Package,
    /// The `Event` header value to echo (with its `id` parameter).
    pub event: String,
    /// Granted expiry in seconds; 0 fetches the state once (one NOTIFY,
    /// terminated).
    pub expires: u32,
    pub cseq: u32,
    /// The subscriber's Contact URI: the NOTIFYs' Request-URI.
    pub contact: String,
    /// The SUBSCRIBE's Record-Route entries, in order: the NOTIFYs' Route.
    pub route_set: Vec<String>,
    /// Where the NOTIFYs go (the flow the SUBSCRIBE came on).
    pub flow: Flow,
}

/// What an accepted SUBSCRIBE (or refresh) is answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub id: SubId,
    /// Our tag (the 200's To tag).
    pub local_tag: String,
    pub expires: u32,
}

/// The outcome of an in-dialog SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refresh {
    Accepted(Accepted),
    /// No such subscription (expired, never existed, or the node
    /// restarted): 481, and the phone subscribes afresh (RFC 6665
    /// s.4.1.2.4).
    Unknown,
    /// CSeq not above the last one: 500.
    OutOfOrder,
}

/// Something to do on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send(Flow, Bytes),
}

/// Counters of the table's contents (tests, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Subscriptions not terminating (the live ones).
    pub active: usize,
    /// Entries, terminating ones included.
    pub entries: usize,
    pub notifies_in_flight: usize,
    pub timers: usize,
    pub resources: usize,
}

/// Why a subscription left the table (metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Expired or unsubscribed, and its last NOTIFY answered (or lost).
    Terminated,
    /// A NOTIFY got a final non-2xx response.
    Rejected,
    /// A NOTIFY got no final response within Timer F.
    TimedOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerKind {
    Expiry,
    Hold,
    Retransmit,
    NotifyTimeout,
}

type TimerKey = (Instant, u64);

/// A watched user's state, as the subscriptions know it.
#[derive(Debug, Clone, Default)]
struct Resource {
    /// `None` until the first SUBSCRIBE's [`ResourceState`] arrived.
    known: Option<ResourceState>,
    /// Changes that arrived before `known` (a SUBSCRIBE waiting for the
    /// backend), applied after it when newer than it.
    buffered: Vec<(u64, ResourceChange)>,
    /// SUBSCRIBEs waiting for the backend's state of this user.
    pending: u32,
    watchers: Vec<SubId>,
}

/// Which watchers of a resource a change concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watchers {
    All,
    MessageSummary,
    PresenceAndDialog,
}

/// The state a NOTIFY shows.
#[derive(Debug, Clone)]
enum Snapshot {
    Availability(Availability),
    Calls(Vec<(CallState, Option<Tags>)>),
    MessageSummary(MessageCounts),
}

/// Which side of a call's dialog a tag is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagSide {
    /// The From tag of the caller's INVITE.
    Caller,
    /// The To tag of a 1xx; a later one replaces it.
    CalleeEarly,
    /// The To tag of the 2xx: the dialog's.
    CalleeAnswered,
}

#[derive(Debug)]
struct InFlight {
    branch: String,
    bytes: Bytes,
    interval: Duration,
    retransmit: Option<TimerKey>,
    timeout: TimerKey,
    /// The terminated NOTIFY: its end is the subscription's end.
    last: bool,
}

#[derive(Debug)]
struct Subscription {
    dialog: (String, String),
    remote_tag: String,
    remote_header: String,
    /// Our From header (with our tag).
    local_header: String,
    subscriber: String,
    domain: String,
    resource: String,
    package: Package,
    event: String,
    contact: String,
    route_set: Vec<String>,
    flow: Flow,
    local_cseq: u32,
    remote_cseq: u32,
    expires_at: Instant,
    /// `None` once terminating.
    expiry: Option<TimerKey>,
    /// Waiting for its 200 to be sent before any NOTIFY, until this timer.
    hold: Option<TimerKey>,
    terminating: bool,
    in_flight: Option<InFlight>,
    /// The state to send once nothing is in flight (and not held).
    queued: Option<Snapshot>,
    /// The next dialog-info `version`.
    dialog_version: u32,
}

/// See the module documentation.
pub struct Engine {
    advertised: String,
    limits: Limits,
    seed: u64,
    counter: u64,
    subs: HashMap<SubId, Subscription>,
    dialogs: HashMap<(String, String), SubId>,
    notifies: HashMap<String, SubId>,
    resources: HashMap<String, Resource>,
    per_subscriber: HashMap<String, usize>,
    per_domain: HashMap<String, usize>,
    active: usize,
    /// Live subscriptions to the `dialog` package.
    dialog_watchers: usize,
    /// Dialog tags by SIP Call-ID, of calls seen while someone watched
    /// dialogs; `tags_order` forgets the oldest beyond [`TAGS_CAPACITY`].
    tags: HashMap<String, (Tags, bool)>,
    tags_order: VecDeque<String>,
    timers: BTreeMap<TimerKey, (SubId, TimerKind)>,
    actions: VecDeque<Action>,
    ended: Vec<Ended>,
}

impl Engine {
    /// `advertised` is our `host[:port]` for Via and Contact; `seed`
    /// makes the tags and branches unpredictable.
    pub fn new(advertised: String, limits: Limits, seed: u64) -> Engine {
        Engine {
            advertised,
            limits,
            seed,
            counter: 0,
            subs: HashMap::new(),
            dialogs: HashMap::new(),
            notifies: HashMap::new(),
            resources: HashMap::new(),
            per_subscriber: HashMap::new(),
            per_domain: HashMap::new(),
            active: 0,
            dialog_watchers: 0,
            tags: HashMap::new(),
            tags_order: VecDeque::new(),
            timers: BTreeMap::new(),
            actions: VecDeque::new(),
            ended: Vec::new(),
        }
    }

    /// A fresh token: 16 hex digits, unpredictable without the seed.
    fn token(&mut self) -> String {
        self.counter += 1;
        // splitmix64 of seed + counter.
        let mut z = self
            .seed
            .wrapping_add(self.counter.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        format!("{z:016x}")
    }

    fn timer(&mut self, at: Instant, id: SubId, kind: TimerKind) -> TimerKey {
        self.counter += 1;
        let key = (at, self.counter);
        self.timers.insert(key, (id, kind));
        key
    }

    /// Would a new subscription of `subscriber` in `domain` fit the limits?
    pub fn check_limits(&self, subscriber: &str, domain: &str) -> Result<(), LimitHit> {
        if self.active >= self.limits.total {
            return Err(LimitHit::Total);
        }
        if self.per_domain.get(domain).copied().unwrap_or(0) >= self.limits.per_domain {
            return Err(LimitHit::Domain);
        }
        if self.per_subscriber.get(subscriber).copied().unwrap_or(0) >= self.limits.per_subscriber {
            return Err(LimitHit::Subscriber);
        }
        Ok(())
    }

    /// A SUBSCRIBE for `resource` asks the backend for its state: from
    /// now until [`Engine::subscribe`] or [`Engine::abandon_watch`], its
    /// changes are kept.
    pub fn begin_watch(&mut self, resource: &str) {
        self.resources
            .entry(resource.to_owned())
            .or_default()
            .pending += 1;
    }

    /// The backend's answer did not lead to a subscription.
    pub fn abandon_watch(&mut self, resource: &str) {
        if let Some(r) = self.resources.get_mut(resource) {
            r.pending = r.pending.saturating_sub(1);
            if r.pending == 0 {
                r.buffered.clear();
            }
        }
        self.forget_resource_if_unused(resource);
    }

    fn forget_resource_if_unused(&mut self, resource: &str) {
        if self
            .resources
            .get(resource)
            .is_some_and(|r| r.pending == 0 && r.watchers.is_empty())
        {
            self.resources.remove(resource);
        }
    }

    /// Adds a subscription (after [`Engine::begin_watch`]) with the
    /// watched user's recorded `state`. Held until [`Engine::release`].
    pub fn subscribe(
        &mut self,
        new: NewSubscription,
        state: ResourceState,
        now: Instant,
    ) -> Result<Accepted, LimitHit> {
        let fetch = new.expires == 0;
        let limits = if fetch {
            Ok(())
        } else {
            self.check_limits(&new.subscriber, &new.domain)
        };
        // The state: the backend's, with the changes seen meanwhile. When
        // it is newer than what the other watchers were shown (the feed
        // lags behind the actor), they are shown it too: the feed's
        // changes up to it will be ignored as old.
        let advanced = {
            let r = self.resources.entry(new.resource.clone()).or_default();
            r.pending = r.pending.saturating_sub(1);
            let had = r.known.is_some();
            let keep = r.known.as_ref().is_some_and(|k| k.version >= state.version);
            if !keep {
                let mut known = state;
                for (version, change) in r.buffered.iter().cloned() {
                    apply(&mut known, version, change);
                }
                r.known = Some(known);
            }
            if r.pending == 0 {
                r.buffered.clear();
            }
            had && !keep
        };
        if advanced {
            self.notify_watchers(&new.resource, Watchers::All, now);
        }
        if let Err(hit) = limits {
            self.forget_resource_if_unused(&new.resource);
            return Err(hit);
        }
        self.counter += 1;
        let id = SubId(self.counter);
        let local_tag = self.token();
        let dialog = (new.call_id.clone(), local_tag.clone());
        let expires_at = now + Duration::from_secs(u64::from(new.expires));
        let expiry = (!fetch).then(|| self.timer(expires_at, id, TimerKind::Expiry));
        let hold = Some(self.timer(now + HOLD_LIMIT, id, TimerKind::Hold));
        let snapshot = self.snapshot(&new.resource, new.package);
        let sub = Subscription {
            dialog: dialog.clone(),
            remote_tag: new.remote_tag,
            remote_header: new.remote_header,
            local_header: format!("{};tag={local_tag}", new.local_header),
            subscriber: new.subscriber,
            domain: new.domain,
            resource: new.resource.clone(),
            package: new.package,
            event: new.event,
            contact: new.contact,
            route_set: new.route_set,
            flow: new.flow,
            local_cseq: 0,
            remote_cseq: new.cseq,
            expires_at,
            expiry,
            hold,
            terminating: fetch,
            in_flight: None,
            queued: Some(snapshot),
            dialog_version: 0,
        };
        if !fetch {
            *self
                .per_subscriber
                .entry(sub.subscriber.clone())
                .or_default() += 1;
            *self.per_domain.entry(sub.domain.clone()).or_default() += 1;
            self.active += 1;
            if sub.package == Package::Dialog {
                self.dialog_watchers += 1;
            }
            self.dialogs.insert(dialog, id);
            if let Some(r) = self.resources.get_mut(&new.resource) {
                r.watchers.push(id);
            }
        } else {
            self.forget_resource_if_unused(&new.resource);
        }
        self.subs.insert(id, sub);
        Ok(Accepted {
            id,
            local_tag,
            expires: new.expires,
        })
    }

    /// An in-dialog SUBSCRIBE: `expires` granted (0 ends the
    /// subscription). Held until [`Engine::release`] on success.
    pub fn refresh(
        &mut self,
        call_id: &str,
        local_tag: &str,
        remote_tag: &str,
        cseq: u32,
        expires: u32,
        now: Instant,
    ) -> Refresh {
        let key = (call_id.to_owned(), local_tag.to_owned());
        let Some(&id) = self.dialogs.get(&key) else {
            return Refresh::Unknown;
        };
        let Some(sub) = self.subs.get_mut(&id) else {
            return Refresh::Unknown;
        };
        if sub.remote_tag != remote_tag {
            return Refresh::Unknown;
        }
        if cseq <= sub.remote_cseq {
            return Refresh::OutOfOrder;
        }
        sub.remote_cseq = cseq;
        let (resource, package) = (sub.resource.clone(), sub.package);
        let old = [sub.expiry.take(), sub.hold.take()];
        for k in old.into_iter().flatten() {
            self.timers.remove(&k);
        }
        let hold = self.timer(now + HOLD_LIMIT, id, TimerKind::Hold);
        if let Some(sub) = self.subs.get_mut(&id) {
            sub.hold = Some(hold);
        }
        if expires == 0 {
            self.end_active(id);
        } else {
            let expires_at = now + Duration::from_secs(u64::from(expires));
            let k = self.timer(expires_at, id, TimerKind::Expiry);
            if let Some(sub) = self.subs.get_mut(&id) {
                sub.expires_at = expires_at;
                sub.expiry = Some(k);
            }
        }
        let snapshot = self.snapshot(&resource, package);
        if let Some(sub) = self.subs.get_mut(&id) {
            sub.queued = Some(snapshot);
        }
        Refresh::Accepted(Accepted {
            id,
            local_tag: local_tag.to_owned(),
            expires,
        })
    }

    /// The 200 of subscription `id`'s SUBSCRIBE was sent: its NOTIFY may
    /// go now.
    pub fn release(&mut self, id: SubId, now: Instant) {
        if let Some(k) = self.subs.get_mut(&id).and_then(|s| s.hold.take()) {
            self.timers.remove(&k);
        }
        self.send_queued(id, now);
    }

    /// The subscription leaves the dialog table, the watchers and the
    /// limits: from now on it only waits for its last NOTIFY.
    fn end_active(&mut self, id: SubId) {
        let Some(sub) = self.subs.get_mut(&id) else {
            return;
        };
        if sub.terminating {
            return;
        }
        sub.terminating = true;
        if let Some(k) = sub.expiry.take() {
            self.timers.remove(&k);
        }
        let (dialog, subscriber, domain, resource) = (
            sub.dialog.clone(),
            sub.subscriber.clone(),
            sub.domain.clone(),
            sub.resource.clone(),
        );
        if sub.package == Package::Dialog {
            self.dialog_watchers -= 1;
        }
        self.dialogs.remove(&dialog);
        decrement(&mut self.per_subscriber, &subscriber);
        decrement(&mut self.per_domain, &domain);
        self.active -= 1;
        if let Some(r) = self.resources.get_mut(&resource) {
            r.watchers.retain(|w| *w != id);
        }
        self.forget_resource_if_unused(&resource);
    }

    /// Removes subscription `id` and every timer it has.
    fn remove(&mut self, id: SubId, why: Ended) {
        self.end_active(id);
        if let Some(sub) = self.subs.remove(&id) {
            if let Some(k) = sub.hold {
                self.timers.remove(&k);
            }
            if let Some(f) = sub.in_flight {
                self.notifies.remove(&f.branch);
                self.timers.remove(&f.timeout);
                if let Some(r) = f.retransmit {
                    self.timers.remove(&r);
                }
            }
            self.ended.push(why);
        }
    }

    fn snapshot(&self, resource: &str, package: Package) -> Snapshot {
        let known = self.resources.get(resource).and_then(|r| r.known.as_ref());
        match package {
            Package::Presence => {
                Snapshot::Availability(known.map(|k| k.availability).unwrap_or_default())
            }
            Package::Dialog => Snapshot::Calls(
                known
                    .map(|k| {
                        k.calls
                            .iter()
                            .map(|c| {
                                let tags = self.tags.get(&c.sip_call_id).map(|t| t.0.clone());
                                (c.clone(), tags)
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            Package::MessageSummary => {
                Snapshot::MessageSummary(known.map(|k| k.messages).unwrap_or_default())
            }
        }
    }

    /// A recorded change of `resource` (`user@domain`) at `version`.
    /// Changes of users nobody watches are ignored.
    pub fn changed(&mut self, resource: &str, version: u64, change: ResourceChange, now: Instant) {
        let Some(r) = self.resources.get_mut(resource) else {
            return;
        };
        let Some(known) = r.known.as_mut() else {
            r.buffered.push((version, change));
            return;
        };
        if r.pending > 0 {
            // A SUBSCRIBE may bring an older state: it replays these.
            r.buffered.push((version, change.clone()));
        }
        // A box's counts concern only message-summary watchers, and only
        // they: presence and dialog watchers hear of calls and presence.
        let which = if matches!(change, ResourceChange::Messages(_)) {
            Watchers::MessageSummary
        } else {
            Watchers::PresenceAndDialog
        };
        if apply(known, version, change) {
            self.notify_watchers(resource, which, now);
        }
    }

    /// Queues `resource`'s state for each of its watchers and sends it
    /// where nothing is in flight.
    fn notify_watchers(&mut self, resource: &str, which: Watchers, now: Instant) {
        let Some(r) = self.resources.get(resource) else {
            return;
        };
        let watchers = r.watchers.clone();
        for id in watchers {
            let Some(sub) = self.subs.get(&id) else {
                continue;
            };
            let mwi = sub.package == Package::MessageSummary;
            let wanted = match which {
                Watchers::All => true,
                Watchers::MessageSummary => mwi,
                Watchers::PresenceAndDialog => !mwi,
            };
            if !wanted {
                continue;
            }
            let snapshot = self.snapshot(resource, sub.package);
            if let Some(sub) = self.subs.get_mut(&id) {
                sub.queued = Some(snapshot);
            }
            self.send_queued(id, now);
        }
        // Terminated legs are shown once (above), then forgotten, with
        // their tags.
        if let Some(known) = self
            .resources
            .get_mut(resource)
            .and_then(|r| r.known.as_mut())
        {
            let tags = &mut self.tags;
            known.calls.retain(|c| {
                let ended = c.phase == CallPhase::Terminated;
                if ended {
                    tags.remove(&c.sip_call_id);
                }
                !ended
            });
        }
    }

    /// Sends subscription `id`'s queued state if nothing holds it back.
    fn send_queued(&mut self, id: SubId, now: Instant) {
        let Some(sub) = self.subs.get(&id) else {
            return;
        };
        if sub.hold.is_some() || sub.in_flight.is_some() || sub.queued.is_none() {
            return;
        }
        let branch = format!("{MAGIC_COOKIE}sub{}", self.token());
        let Some(sub) = self.subs.get_mut(&id) else {
            return;
        };
        let Some(snapshot) = sub.queued.take() else {
            return;
        };
        sub.local_cseq += 1;
        let last = sub.terminating;
        let bytes = notify_bytes(&self.advertised, sub, &branch, &snapshot, now);
        let flow = sub.flow;
        let reliable = flow.is_reliable();
        let timeout = self.timer(now + NOTIFY_TIMEOUT, id, TimerKind::NotifyTimeout);
        let retransmit = (!reliable).then(|| self.timer(now + T1, id, TimerKind::Retransmit));
        if let Some(sub) = self.subs.get_mut(&id) {
            sub.in_flight = Some(InFlight {
                branch: branch.clone(),
                bytes: bytes.clone(),
                interval: T1,
                retransmit,
                timeout,
                last,
            });
        }
        self.notifies.insert(branch, id);
        self.actions.push_back(Action::Send(flow, bytes));
    }

    /// A response to a request with top Via `branch` arrived. False when
    /// it is not a response to one of our NOTIFYs.
    pub fn on_response(&mut self, branch: &str, code: u16, now: Instant) -> bool {
        let Some(&id) = self.notifies.get(branch) else {
            return false;
        };
        if code < 200 {
            // Provisional: Timer E keeps going at T2 (RFC 3261 s.17.1.2.2).
            return true;
        }
        self.notifies.remove(branch);
        let Some(f) = self.subs.get_mut(&id).and_then(|s| s.in_flight.take()) else {
            return true;
        };
        self.timers.remove(&f.timeout);
        if let Some(r) = f.retransmit {
            self.timers.remove(&r);
        }
        if code >= 300 {
            self.remove(id, Ended::Rejected);
        } else if f.last {
            self.remove(id, Ended::Terminated);
        } else {
            self.send_queued(id, now);
        }
        true
    }

    /// Does a live `message-summary` subscription to `resource` come from
    /// the device of registered contact `target` (see
    /// [`super::unsolicited::same_device`])? Then that contact gets its
    /// counts from the subscription and no unsolicited NOTIFY.
    pub fn message_summary_subscribed(&self, resource: &str, target: &RouteTarget) -> bool {
        let Some(r) = self.resources.get(resource) else {
            return false;
        };
        r.watchers.iter().any(|id| {
            self.subs.get(id).is_some_and(|s| {
                s.package == Package::MessageSummary
                    && super::unsolicited::same_device(target, &s.contact, &s.flow)
            })
        })
    }

    /// Is anyone subscribed to the `dialog` package (then the tags of
    /// calls are worth noting)?
    pub fn watches_dialogs(&self) -> bool {
        self.dialog_watchers > 0
    }

    /// A dialog tag of the call with SIP Call-ID `sip_call_id` went
    /// through the gateway. An early tag does not replace the answered one.
    pub fn note_tag(&mut self, sip_call_id: &str, side: TagSide, tag: &str) {
        if !self.tags.contains_key(sip_call_id) {
            if self.tags_order.len() >= TAGS_CAPACITY {
                if let Some(oldest) = self.tags_order.pop_front() {
                    self.tags.remove(&oldest);
                }
            }
            self.tags_order.push_back(sip_call_id.to_owned());
        }
        let (tags, answered) = self.tags.entry(sip_call_id.to_owned()).or_default();
        match side {
            TagSide::Caller => tags.caller = Some(tag.to_owned()),
            TagSide::CalleeEarly if !*answered => tags.callee = Some(tag.to_owned()),
            TagSide::CalleeEarly => {}
            TagSide::CalleeAnswered => {
                tags.callee = Some(tag.to_owned());
                *answered = true;
            }
        }
    }

    /// The earliest timer, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.keys().next().map(|k| k.0)
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((&key, &(id, kind))) = self.timers.iter().next() {
            if key.0 > now {
                break;
            }
            self.timers.remove(&key);
            match kind {
                TimerKind::Expiry => {
                    if let Some(sub) = self.subs.get_mut(&id) {
                        sub.expiry = None;
                    }
                    self.end_active(id);
                    let snapshot = self
                        .subs
                        .get(&id)
                        .map(|s| self.snapshot(&s.resource, s.package));
                    if let Some(sub) = self.subs.get_mut(&id) {
                        sub.queued = snapshot;
                    }
                    self.send_queued(id, now);
                }
                TimerKind::Hold => {
                    if let Some(sub) = self.subs.get_mut(&id) {
                        sub.hold = None;
                    }
                    self.send_queued(id, now);
                }
                TimerKind::Retransmit => {
                    let Some(sub) = self.subs.get_mut(&id) else {
                        continue;
                    };
                    let flow = sub.flow;
                    let Some(f) = sub.in_flight.as_mut() else {
                        continue;
                    };
                    f.interval = (f.interval * 2).min(T2);
                    let (bytes, interval) = (f.bytes.clone(), f.interval);
                    let k = self.timer(now + interval, id, TimerKind::Retransmit);
                    if let Some(f) = self.subs.get_mut(&id).and_then(|s| s.in_flight.as_mut()) {
                        f.retransmit = Some(k);
                    }
                    self.actions.push_back(Action::Send(flow, bytes));
                }
                TimerKind::NotifyTimeout => self.remove(id, Ended::TimedOut),
            }
        }
    }

    /// The next thing to do on the network.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Why subscriptions left the table since the last call (metrics).
    pub fn take_ended(&mut self) -> Vec<Ended> {
        std::mem::take(&mut self.ended)
    }

    pub fn counts(&self) -> Counts {
        Counts {
            active: self.active,
            entries: self.subs.len(),
            notifies_in_flight: self.notifies.len(),
            timers: self.timers.len(),
            resources: self.resources.len(),
        }
    }

    /// The bookkeeping agrees with the entries (tests): every timer and
    /// every index entry belongs to a live subscription, and each
    /// subscription has exactly the timers its state calls for.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut expected_timers = 0;
        let mut active = 0;
        for (id, sub) in &self.subs {
            if !sub.terminating {
                active += 1;
                if self.dialogs.get(&sub.dialog) != Some(id) {
                    return Err(format!("{id:?} not in the dialog table"));
                }
                if sub.expiry.is_none() {
                    return Err(format!("{id:?} active without expiry timer"));
                }
                let watched = self
                    .resources
                    .get(&sub.resource)
                    .is_some_and(|r| r.watchers.contains(id));
                if !watched {
                    return Err(format!("{id:?} not among its resource's watchers"));
                }
            } else if sub.expiry.is_some() {
                return Err(format!("{id:?} terminating with an expiry timer"));
            }
            expected_timers += usize::from(sub.expiry.is_some()) + usize::from(sub.hold.is_some());
            if sub.hold.is_none() && sub.in_flight.is_none() && sub.queued.is_some() {
                return Err(format!("{id:?} has a state to send and nothing sends it"));
            }
            if let Some(f) = &sub.in_flight {
                expected_timers += 1 + usize::from(f.retransmit.is_some());
                if self.notifies.get(&f.branch) != Some(id) {
                    return Err(format!("{id:?}'s NOTIFY not indexed"));
                }
            }
        }
        if active != self.active {
            return Err(format!("active {} counted {}", active, self.active));
        }
        if self.dialogs.len() != active {
            return Err("stale dialog entries".into());
        }
        if self.timers.len() != expected_timers {
            return Err(format!(
                "{} timers, {} expected",
                self.timers.len(),
                expected_timers
            ));
        }
        if self
            .timers
            .values()
            .any(|(id, _)| !self.subs.contains_key(id))
        {
            return Err("a timer of a removed subscription".into());
        }
        if self.notifies.len() != self.subs.values().filter(|s| s.in_flight.is_some()).count() {
            return Err("stale NOTIFY entries".into());
        }
        let dialog_watchers = self
            .subs
            .values()
            .filter(|s| !s.terminating && s.package == Package::Dialog)
            .count();
        if dialog_watchers != self.dialog_watchers {
            return Err("dialog watchers miscounted".into());
        }
        if self.tags.len() > TAGS_CAPACITY || self.tags_order.len() > TAGS_CAPACITY {
            return Err("too many tags kept".into());
        }
        let counted: usize = self.per_subscriber.values().sum();
        let by_domain: usize = self.per_domain.values().sum();
        if counted != active || by_domain != active {
            return Err("limit counters disagree".into());
        }
        for (name, r) in &self.resources {
            if r.pending == 0 && r.watchers.is_empty() {
                return Err(format!("unused resource {name}"));
            }
        }
        Ok(())
    }
}

fn decrement(map: &mut HashMap<String, usize>, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

/// Applies a change newer than `known`; false when it is not newer.
fn apply(known: &mut ResourceState, version: u64, change: ResourceChange) -> bool {
    if version <= known.version {
        return false;
    }
    known.version = version;
    match change {
        ResourceChange::Availability(a) => known.availability = a,
        ResourceChange::Call(call) => {
            match known.calls.iter_mut().find(|c| c.call_id == call.call_id) {
                Some(c) => *c = call,
                None => known.calls.push(call),
            }
        }
        ResourceChange::CallPhase { call_id, phase } => {
            if let Some(c) = known.calls.iter_mut().find(|c| c.call_id == call_id) {
                c.phase = phase;
            }
        }
        ResourceChange::Messages(counts) => known.messages = counts,
    }
    true
}

/// The NOTIFY of `sub` showing `snapshot` (RFC 6665 s.4.2.2, s.8.2.3).
fn notify_bytes(
    advertised: &str,
    sub: &mut Subscription,
    branch: &str,
    snapshot: &Snapshot,
    now: Instant,
) -> Bytes {
    let body = match snapshot {
        Snapshot::Availability(a) => pidf::body(&sub.resource, *a),
        Snapshot::Calls(calls) => {
            let version = sub.dialog_version;
            sub.dialog_version += 1;
            dialog_info::body(
                &sub.resource,
                version,
                calls.iter().map(|(c, t)| (c, t.as_ref())),
            )
        }
        Snapshot::MessageSummary(counts) => message_summary_body(&sub.resource, *counts),
    };
    let state = if sub.terminating {
        "terminated;reason=timeout".to_owned()
    } else {
        let left = sub.expires_at.saturating_duration_since(now);
        // Whole seconds, rounded up: never 0 while active.
        let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        format!("active;expires={}", secs.max(1))
    };
    let transport = sub.flow.transport.as_str();
    let mut m = String::with_capacity(512 + body.len());
    m.push_str("NOTIFY ");
    m.push_str(&sub.contact);
    m.push_str(" SIP/2.0\r\nVia: SIP/2.0/");
    m.push_str(transport);
    m.push(' ');
    m.push_str(advertised);
    m.push_str(";branch=");
    m.push_str(branch);
    m.push_str(";rport\r\nMax-Forwards: 70\r\n");
    for r in &sub.route_set {
        m.push_str("Route: ");
        m.push_str(r);
        m.push_str("\r\n");
    }
    m.push_str("From: ");
    m.push_str(&sub.local_header);
    m.push_str("\r\nTo: ");
    m.push_str(&sub.remote_header);
    m.push_str("\r\nCall-ID: ");
    m.push_str(&sub.dialog.0);
    m.push_str("\r\nCSeq: ");
    m.push_str(&sub.local_cseq.to_string());
    m.push_str(" NOTIFY\r\nContact: <sip:");
    m.push_str(advertised);
    m.push_str(";transport=");
    m.push_str(&transport.to_ascii_lowercase());
    m.push_str(">\r\nEvent: ");
    m.push_str(&sub.event);
    m.push_str("\r\nSubscription-State: ");
    m.push_str(&state);
    m.push_str("\r\nContent-Type: ");
    m.push_str(sub.package.content_type());
    m.push_str("\r\nContent-Length: ");
    m.push_str(&body.len().to_string());
    m.push_str("\r\n\r\n");
    m.push_str(&body);
    Bytes::from(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CallDirection;
    use crate::transport::Transport;
    use crate::wire::message::Message;
    use std::net::SocketAddr;

    const LIMITS: Limits = Limits {
        per_subscriber: 3,
        per_domain: 5,
        total: 8,
    };

    fn engine() -> Engine {
        Engine::new("192.0.2.10:5060".into(), LIMITS, 7)
    }

    fn flow(transport: Transport, port: u16) -> Flow {
        Flow::new(transport, SocketAddr::from(([192, 0, 2, 1], port)))
    }

    fn new_sub(n: u32, subscriber: &str, resource: &str, package: Package) -> NewSubscription {
        let domain = subscriber.split('@').nth(1).unwrap_or("").to_owned();
        NewSubscription {
            call_id: format!("call-{n}"),
            remote_tag: format!("rt{n}"),
            remote_header: format!("<sip:{subscriber}>;tag=rt{n}"),
            local_header: format!("<sip:{resource}>"),
            subscriber: subscriber.into(),
            domain,
            resource: resource.into(),
            package,
            event: package.name().into(),
            expires: 600,
            cseq: 1,
            contact: "sip:phone@192.0.2.1:5070".into(),
            route_set: vec![],
            flow: flow(Transport::Udp, 5070),
        }
    }

    fn state(version: u64, availability: Availability) -> ResourceState {
        ResourceState {
            version,
            availability,
            calls: vec![],
            messages: MessageCounts::default(),
        }
    }

    fn sent(e: &mut Engine) -> Vec<(Flow, String)> {
        let mut out = vec![];
        while let Some(Action::Send(f, b)) = e.poll_action() {
            out.push((f, String::from_utf8(b.to_vec()).unwrap()));
        }
        out
    }

    fn header(raw: &str, name: &str) -> String {
        let m = Message::parse(raw.as_bytes()).unwrap();
        m.headers
            .iter()
            .find(|h| h.raw_name.eq_ignore_ascii_case(name))
            .map(|h| h.value.to_string())
            .unwrap_or_default()
    }

    fn branch(raw: &str) -> String {
        let m = Message::parse(raw.as_bytes()).unwrap();
        m.top_via().unwrap().branch().unwrap().to_owned()
    }

    fn body(raw: &str) -> String {
        raw.split("\r\n\r\n").nth(1).unwrap_or("").to_owned()
    }

    /// Subscribes, releases and answers the first NOTIFY; returns the id.
    fn active(e: &mut Engine, n: u32, subscriber: &str, resource: &str, now: Instant) -> SubId {
        e.begin_watch(resource);
        let a = e
            .subscribe(
                new_sub(n, subscriber, resource, Package::Presence),
                state(1, Availability::Offline),
                now,
            )
            .unwrap();
        e.release(a.id, now);
        for (_, n) in sent(e) {
            assert!(e.on_response(&branch(&n), 200, now));
        }
        a.id
    }

    #[test]
    fn a_subscription_sends_nothing_before_its_200_then_the_state() {
        let mut e = engine();
        let now = Instant::now();
        e.begin_watch("alice@x.test");
        let a = e
            .subscribe(
                new_sub(1, "bob@x.test", "alice@x.test", Package::Presence),
                state(4, Availability::Offline),
                now,
            )
            .unwrap();
        assert_eq!(a.expires, 600);
        assert!(sent(&mut e).is_empty(), "held until its 200 is sent");
        e.release(a.id, now);
        let out = sent(&mut e);
        assert_eq!(out.len(), 1);
        let (f, n) = &out[0];
        assert_eq!(*f, flow(Transport::Udp, 5070));
        assert!(n.starts_with("NOTIFY sip:phone@192.0.2.1:5070 SIP/2.0\r\n"));
        assert_eq!(header(n, "Event"), "presence");
        assert_eq!(header(n, "Subscription-State"), "active;expires=600");
        assert_eq!(header(n, "CSeq"), "1 NOTIFY");
        assert_eq!(header(n, "To"), "<sip:bob@x.test>;tag=rt1");
        assert_eq!(
            header(n, "From"),
            format!("<sip:alice@x.test>;tag={}", a.local_tag)
        );
        assert_eq!(header(n, "Content-Type"), "application/pidf+xml");
        assert!(body(n).contains("<basic>closed</basic>"));
        assert_eq!(header(n, "Content-Length"), body(n).len().to_string());
        assert_eq!(e.counts().active, 1);
        e.check_invariants().unwrap();
    }

    #[test]
    fn changes_are_coalesced_while_a_notify_is_in_flight() {
        let mut e = engine();
        let now = Instant::now();
        e.begin_watch("alice@x.test");
        let a = e
            .subscribe(
                new_sub(1, "bob@x.test", "alice@x.test", Package::Presence),
                state(1, Availability::Offline),
                now,
            )
            .unwrap();
        e.release(a.id, now);
        let first = sent(&mut e);
        e.changed(
            "alice@x.test",
            2,
            ResourceChange::Availability(Availability::Online),
            now,
        );
        e.changed(
            "alice@x.test",
            3,
            ResourceChange::Availability(Availability::OnThePhone),
            now,
        );
        assert!(sent(&mut e).is_empty(), "one NOTIFY in flight at a time");
        assert!(e.on_response(&branch(&first[0].1), 200, now));
        let next = sent(&mut e);
        assert_eq!(next.len(), 1);
        assert!(
            body(&next[0].1).contains("on-the-phone"),
            "the latest state"
        );
        assert_eq!(header(&next[0].1, "CSeq"), "2 NOTIFY");
        // An old or repeated change is not news.
        assert!(e.on_response(&branch(&next[0].1), 200, now));
        e.changed(
            "alice@x.test",
            3,
            ResourceChange::Availability(Availability::Online),
            now,
        );
        assert!(sent(&mut e).is_empty());
        e.check_invariants().unwrap();
    }

    #[test]
    fn refresh_extends_and_rejects_unknown_dialogs_and_old_cseqs() {
        let mut e = engine();
        let now = Instant::now();
        let id = active(&mut e, 1, "bob@x.test", "alice@x.test", now);
        let tag = e.subs[&id].dialog.1.clone();
        assert_eq!(
            e.refresh("call-1", "nope", "rt1", 2, 600, now),
            Refresh::Unknown
        );
        assert_eq!(
            e.refresh("call-1", &tag, "other", 2, 600, now),
            Refresh::Unknown
        );
        assert_eq!(
            e.refresh("call-1", &tag, "rt1", 1, 600, now),
            Refresh::OutOfOrder
        );
        let later = now + Duration::from_secs(500);
        let Refresh::Accepted(a) = e.refresh("call-1", &tag, "rt1", 2, 900, later) else {
            panic!("refresh refused");
        };
        assert_eq!(a.expires, 900);
        assert!(sent(&mut e).is_empty(), "held until the 200");
        e.release(id, later);
        let out = sent(&mut e);
        assert_eq!(
            header(&out[0].1, "Subscription-State"),
            "active;expires=900"
        );
        assert!(e.on_response(&branch(&out[0].1), 200, later));
        // The old expiry is gone: nothing happens at +600 s.
        e.handle_timeout(now + Duration::from_secs(601));
        assert!(sent(&mut e).is_empty());
        assert_eq!(e.counts().active, 1);
        e.check_invariants().unwrap();
    }

    #[test]
    fn unsubscribe_sends_a_terminated_notify_and_forgets_the_dialog() {
        let mut e = engine();
        let now = Instant::now();
        let id = active(&mut e, 1, "bob@x.test", "alice@x.test", now);
        let tag = e.subs[&id].dialog.1.clone();
        let Refresh::Accepted(a) = e.refresh("call-1", &tag, "rt1", 2, 0, now) else {
            panic!("unsubscribe refused");
        };
        assert_eq!(a.expires, 0);
        assert_eq!(e.counts().active, 0);
        e.release(id, now);
        let out = sent(&mut e);
        assert_eq!(
            header(&out[0].1, "Subscription-State"),
            "terminated;reason=timeout"
        );
        assert_eq!(
            e.refresh("call-1", &tag, "rt1", 3, 600, now),
            Refresh::Unknown
        );
        assert!(e.on_response(&branch(&out[0].1), 200, now));
        assert_eq!(e.counts(), Counts::default());
        e.check_invariants().unwrap();
    }

    #[test]
    fn expiry_sends_a_terminated_notify() {
        let mut e = engine();
        let now = Instant::now();
        active(&mut e, 1, "bob@x.test", "alice@x.test", now);
        e.handle_timeout(now + Duration::from_secs(599));
        assert!(sent(&mut e).is_empty());
        let at = now + Duration::from_secs(600);
        e.handle_timeout(at);
        let out = sent(&mut e);
        assert_eq!(out.len(), 1);
        assert_eq!(
            header(&out[0].1, "Subscription-State"),
            "terminated;reason=timeout"
        );
        assert_eq!(e.counts().active, 0);
        e.check_invariants().unwrap();
        assert!(e.on_response(&branch(&out[0].1), 200, at));
        assert_eq!(e.counts(), Counts::default());
    }

    #[test]
    fn a_481_ends_the_subscription() {
        let mut e = engine();
        let now = Instant::now();
        active(&mut e, 1, "bob@x.test", "alice@x.test", now);
        e.changed(
            "alice@x.test",
            2,
            ResourceChange::Availability(Availability::Online),
            now,
        );
        let out = sent(&mut e);
        assert!(e.on_response(&branch(&out[0].1), 100, now), "provisional");
        assert_eq!(e.counts().active, 1);
        assert!(e.on_response(&branch(&out[0].1), 481, now));
        assert_eq!(e.counts(), Counts::default());
        assert_eq!(e.take_ended(), vec![Ended::Rejected]);
        assert!(
            !e.on_response(&branch(&out[0].1), 200, now),
            "not ours any more"
        );
    }

    #[test]
    fn an_unanswered_notify_is_retransmitted_then_ends_the_subscription() {
        let mut e = engine();
        let now = Instant::now();
        e.begin_watch("alice@x.test");
        let a = e
            .subscribe(
                new_sub(1, "bob@x.test", "alice@x.test", Package::Presence),
                state(1, Availability::Offline),
                now,
            )
            .unwrap();
        e.release(a.id, now);
        let first = sent(&mut e);
        let mut copies = 0;
        let mut t = now;
        while e.counts().entries > 0 {
            t = e.poll_timeout().unwrap();
            e.handle_timeout(t);
            for (_, n) in sent(&mut e) {
                assert_eq!(n, first[0].1, "a retransmission is the same request");
                copies += 1;
            }
            e.check_invariants().unwrap();
        }
        // Timer E: 0.5, 1, 2, 4, 4, ... s up to Timer F (32 s).
        assert_eq!(copies, 10);
        assert_eq!(t.duration_since(now), NOTIFY_TIMEOUT);
        assert_eq!(e.counts(), Counts::default());
        assert_eq!(e.take_ended(), vec![Ended::TimedOut]);
    }

    #[test]
    fn over_tcp_a_notify_is_not_retransmitted() {
        let mut e = engine();
        let now = Instant::now();
        e.begin_watch("alice@x.test");
        let mut n = new_sub(1, "bob@x.test", "alice@x.test", Package::Presence);
        n.flow = flow(Transport::Tcp, 5070);
        let a = e.subscribe(n, state(1, Availability::Online), now).unwrap();
        e.release(a.id, now);
        let out = sent(&mut e);
        assert!(out[0]
            .1
            .contains("Via: SIP/2.0/TCP 192.0.2.10:5060;branch=z9hG4bKsub"));
        assert_eq!(e.poll_timeout(), Some(now + NOTIFY_TIMEOUT));
        e.handle_timeout(now + NOTIFY_TIMEOUT);
        assert!(sent(&mut e).is_empty());
        assert_eq!(e.counts(), Counts::default());
    }

    #[test]
    fn limits_per_subscriber_domain_and_total() {
        let mut e = engine();
        let now = Instant::now();
        for i in 0..3 {
            active(&mut e, i, "bob@x.test", &format!("u{i}@x.test"), now);
        }
        assert_eq!(
            e.check_limits("bob@x.test", "x.test"),
            Err(LimitHit::Subscriber)
        );
        e.begin_watch("u9@x.test");
        assert_eq!(
            e.subscribe(
                new_sub(9, "bob@x.test", "u9@x.test", Package::Presence),
                state(1, Availability::Offline),
                now
            ),
            Err(LimitHit::Subscriber)
        );
        // A fetch (Expires: 0) holds nothing and is not limited.
        e.begin_watch("u9@x.test");
        let mut fetch = new_sub(10, "bob@x.test", "u9@x.test", Package::Presence);
        fetch.expires = 0;
        let a = e
            .subscribe(fetch, state(1, Availability::Offline), now)
            .unwrap();
        e.release(a.id, now);
        let out = sent(&mut e);
        assert_eq!(
            header(&out[0].1, "Subscription-State"),
            "terminated;reason=timeout"
        );
        assert!(e.on_response(&branch(&out[0].1), 200, now));
        for i in 3..5 {
            active(&mut e, i, "carol@x.test", &format!("u{i}@x.test"), now);
        }
        assert_eq!(
            e.check_limits("dave@x.test", "x.test"),
            Err(LimitHit::Domain)
        );
        assert_eq!(e.check_limits("dave@y.test", "y.test"), Ok(()));
        for i in 5..8 {
            active(&mut e, i, &format!("p{i}@y.test"), "w@y.test", now);
        }
        assert_eq!(e.check_limits("z@z.test", "z.test"), Err(LimitHit::Total));
        e.check_invariants().unwrap();
    }

    #[test]
    fn changes_during_the_backend_call_are_not_lost() {
        let mut e = engine();
        let now = Instant::now();
        e.begin_watch("alice@x.test");
        // Recorded while the backend read the state (version 1).
        e.changed(
            "alice@x.test",
            2,
            ResourceChange::Availability(Availability::Online),
            now,
        );
        let a = e
            .subscribe(
                new_sub(1, "bob@x.test", "alice@x.test", Package::Presence),
                state(1, Availability::Offline),
                now,
            )
            .unwrap();
        e.release(a.id, now);
        let out = sent(&mut e);
        assert!(body(&out[0].1).contains("<basic>open</basic>"));
        // Already in the backend's state: not applied twice.
        e.begin_watch("alice@x.test");
        e.changed(
            "alice@x.test",
            3,
            ResourceChange::Availability(Availability::Offline),
            now,
        );
        let b = e
            .subscribe(
                new_sub(2, "carol@x.test", "alice@x.test", Package::Presence),
                state(3, Availability::Offline),
                now,
            )
            .unwrap();
        e.release(b.id, now);
        let out = sent(&mut e);
        assert!(body(&out[0].1).contains("<basic>closed</basic>"));
        e.check_invariants().unwrap();
    }

    #[test]
    fn a_newer_state_from_a_second_subscribe_reaches_the_first_watcher() {
        let mut e = engine();
        let now = Instant::now();
        // bob watches alice (offline, version 1).
        active(&mut e, 1, "bob@x.test", "alice@x.test", now);
        // alice registered (version 2); carol's SUBSCRIBE reads it from the
        // actor before the feed has delivered it.
        e.begin_watch("alice@x.test");
        let c = e
            .subscribe(
                new_sub(2, "carol@x.test", "alice@x.test", Package::Presence),
                state(2, Availability::Online),
                now,
            )
            .unwrap();
        let out = sent(&mut e);
        assert_eq!(out.len(), 1, "bob is told");
        assert_eq!(header(&out[0].1, "To"), "<sip:bob@x.test>;tag=rt1");
        assert!(body(&out[0].1).contains("<basic>open</basic>"));
        e.release(c.id, now);
        assert!(body(&sent(&mut e)[0].1).contains("<basic>open</basic>"));
        // The feed's copy of that change is old news for both.
        e.changed(
            "alice@x.test",
            2,
            ResourceChange::Availability(Availability::Online),
            now,
        );
        assert!(sent(&mut e).is_empty());
        e.check_invariants().unwrap();
    }

    #[test]
    fn a_subscription_whose_200_was_never_sent_is_released_after_the_hold_limit() {
        let mut e = engine();
        let now = Instant::now();
        e.begin_watch("alice@x.test");
        e.subscribe(
            new_sub(1, "bob@x.test", "alice@x.test", Package::Presence),
            state(1, Availability::Offline),
            now,
        )
        .unwrap();
        e.handle_timeout(now + HOLD_LIMIT - Duration::from_millis(1));
        assert!(sent(&mut e).is_empty());
        e.handle_timeout(now + HOLD_LIMIT);
        assert_eq!(sent(&mut e).len(), 1);
        e.check_invariants().unwrap();
    }

    #[test]
    fn an_abandoned_watch_leaves_nothing() {
        let mut e = engine();
        let now = Instant::now();
        e.begin_watch("alice@x.test");
        e.changed(
            "alice@x.test",
            2,
            ResourceChange::Availability(Availability::Online),
            now,
        );
        e.abandon_watch("alice@x.test");
        assert_eq!(e.counts(), Counts::default());
        e.check_invariants().unwrap();
    }

    #[test]
    fn the_dialog_package_follows_a_call_and_shows_its_end_once() {
        let mut e = engine();
        let now = Instant::now();
        e.begin_watch("alice@x.test");
        let a = e
            .subscribe(
                new_sub(1, "bob@x.test", "alice@x.test", Package::Dialog),
                state(1, Availability::Online),
                now,
            )
            .unwrap();
        e.release(a.id, now);
        let expect = |e: &mut Engine, needle: &str, version: u32| {
            let out = sent(e);
            assert_eq!(out.len(), 1, "{needle}");
            let n = &out[0].1;
            assert_eq!(header(n, "Content-Type"), "application/dialog-info+xml");
            assert!(body(n).contains(&format!("version=\"{version}\"")), "{n}");
            assert!(body(n).contains(needle), "{needle} in {n}");
            assert!(e.on_response(&branch(n), 200, now));
            body(n)
        };
        let b = expect(&mut e, "state=\"full\"", 0);
        assert!(!b.contains("<dialog "));
        let call = CallState {
            call_id: "leg-1".into(),
            sip_call_id: "sip-1".into(),
            direction: CallDirection::Inbound,
            remote: "carol@x.test".into(),
            phase: CallPhase::Trying,
        };
        e.changed("alice@x.test", 2, ResourceChange::Call(call), now);
        expect(&mut e, "<state>trying</state>", 1);
        let phase = |p| ResourceChange::CallPhase {
            call_id: "leg-1".into(),
            phase: p,
        };
        e.changed("alice@x.test", 3, phase(CallPhase::Early), now);
        expect(&mut e, "direction=\"recipient\"><state>early</state>", 2);
        e.changed("alice@x.test", 4, phase(CallPhase::Confirmed), now);
        expect(&mut e, "<state>confirmed</state>", 3);
        e.changed("alice@x.test", 5, phase(CallPhase::Terminated), now);
        expect(&mut e, "<state>terminated</state>", 4);
        // Presence changes reach dialog subscribers too (a full state):
        // the ended call is no longer listed.
        e.changed(
            "alice@x.test",
            6,
            ResourceChange::Availability(Availability::Online),
            now,
        );
        let b = expect(&mut e, "version=\"5\"", 5);
        assert!(!b.contains("<dialog "));
        e.check_invariants().unwrap();
    }

    #[test]
    fn the_dialog_package_gives_the_tags_seen_and_forgets_them_with_the_call() {
        let mut e = engine();
        let now = Instant::now();
        assert!(!e.watches_dialogs());
        e.begin_watch("alice@x.test");
        let a = e
            .subscribe(
                new_sub(1, "bob@x.test", "alice@x.test", Package::Dialog),
                state(1, Availability::Online),
                now,
            )
            .unwrap();
        assert!(e.watches_dialogs());
        e.release(a.id, now);
        let next = |e: &mut Engine| {
            let out = sent(e);
            assert!(e.on_response(&branch(&out[0].1), 200, now));
            body(&out[0].1)
        };
        next(&mut e);
        e.note_tag("sip-1", TagSide::Caller, "caller-tag");
        let call = CallState {
            call_id: "leg-1".into(),
            sip_call_id: "sip-1".into(),
            direction: CallDirection::Inbound,
            remote: "carol@x.test".into(),
            phase: CallPhase::Trying,
        };
        e.changed("alice@x.test", 2, ResourceChange::Call(call), now);
        let b = next(&mut e);
        assert!(
            b.contains("direction=\"recipient\" remote-tag=\"caller-tag\">"),
            "{b}"
        );
        e.note_tag("sip-1", TagSide::CalleeEarly, "early-tag");
        e.note_tag("sip-1", TagSide::CalleeAnswered, "answer-tag");
        e.note_tag("sip-1", TagSide::CalleeEarly, "late-early-tag");
        let phase = |p| ResourceChange::CallPhase {
            call_id: "leg-1".into(),
            phase: p,
        };
        e.changed("alice@x.test", 3, phase(CallPhase::Confirmed), now);
        let b = next(&mut e);
        assert!(
            b.contains("local-tag=\"answer-tag\" remote-tag=\"caller-tag\"><state>confirmed"),
            "{b}"
        );
        e.changed("alice@x.test", 4, phase(CallPhase::Terminated), now);
        next(&mut e);
        assert!(e.tags.is_empty(), "forgotten with the call");
        // Bounded however many calls pass.
        for i in 0..TAGS_CAPACITY + 10 {
            e.note_tag(&format!("c{i}"), TagSide::Caller, "t");
        }
        assert_eq!(e.tags.len(), TAGS_CAPACITY);
        e.check_invariants().unwrap();
        // The last dialog watcher gone, tags are no longer worth noting.
        let tag = e.subs[&a.id].dialog.1.clone();
        e.refresh("call-1", &tag, "rt1", 2, 0, now);
        assert!(!e.watches_dialogs());
    }

    #[test]
    fn a_message_summary_subscription_covers_the_contacts_of_its_device_only() {
        let mut e = engine();
        let now = Instant::now();
        let phone =
            RouteTarget::for_binding("sip:alice@192.0.2.1:5070", flow(Transport::Udp, 5070));
        let other =
            RouteTarget::for_binding("sip:alice@192.0.2.1:5072", flow(Transport::Udp, 5072));
        assert!(!e.message_summary_subscribed("alice@x.test", &phone));
        // A presence subscription from the phone does not count.
        active(&mut e, 1, "alice@x.test", "alice@x.test", now);
        assert!(!e.message_summary_subscribed("alice@x.test", &phone));
        e.begin_watch("alice@x.test");
        let a = e
            .subscribe(
                new_sub(2, "alice@x.test", "alice@x.test", Package::MessageSummary),
                state(1, Availability::Online),
                now,
            )
            .unwrap();
        assert!(e.message_summary_subscribed("alice@x.test", &phone));
        assert!(!e.message_summary_subscribed("alice@x.test", &other));
        assert!(!e.message_summary_subscribed("bob@x.test", &phone));
        e.release(a.id, now);
        for (_, n) in sent(&mut e) {
            e.on_response(&branch(&n), 200, now);
        }
        // Unsubscribed: no longer covered (its last NOTIFY is on its way).
        let tag = e.subs[&a.id].dialog.1.clone();
        let Refresh::Accepted(ended) = e.refresh("call-2", &tag, "rt2", 2, 0, now) else {
            panic!("the unsubscribe was refused");
        };
        e.release(ended.id, now);
        let last = sent(&mut e);
        assert_eq!(last.len(), 1);
        assert!(!e.message_summary_subscribed("alice@x.test", &phone));
    }

    #[test]
    fn message_summary_says_nothing_waiting_and_ignores_presence() {
        let mut e = engine();
        let now = Instant::now();
        e.begin_watch("alice@x.test");
        let a = e
            .subscribe(
                new_sub(1, "alice@x.test", "alice@x.test", Package::MessageSummary),
                state(1, Availability::Online),
                now,
            )
            .unwrap();
        e.release(a.id, now);
        let out = sent(&mut e);
        assert_eq!(
            header(&out[0].1, "Content-Type"),
            "application/simple-message-summary"
        );
        assert!(body(&out[0].1).starts_with("Messages-Waiting: no\r\n"));
        assert!(e.on_response(&branch(&out[0].1), 200, now));
        e.changed(
            "alice@x.test",
            2,
            ResourceChange::Availability(Availability::Offline),
            now,
        );
        assert!(sent(&mut e).is_empty());
        // A message left: the message-summary watcher hears of it.
        e.changed(
            "alice@x.test",
            3,
            ResourceChange::Messages(MessageCounts { new: 2, old: 1 }),
            now,
        );
        let out = sent(&mut e);
        assert_eq!(out.len(), 1);
        assert_eq!(
            body(&out[0].1),
            "Messages-Waiting: yes\r\nMessage-Account: sip:alice@x.test\r\nVoice-Message: 2/1 (0/0)\r\n"
        );
    }

    #[test]
    fn presence_watchers_do_not_hear_of_messages() {
        let mut e = engine();
        let now = Instant::now();
        e.begin_watch("alice@x.test");
        let a = e
            .subscribe(
                new_sub(1, "alice@x.test", "alice@x.test", Package::Presence),
                state(1, Availability::Online),
                now,
            )
            .unwrap();
        e.release(a.id, now);
        let out = sent(&mut e);
        assert!(e.on_response(&branch(&out[0].1), 200, now));
        e.changed(
            "alice@x.test",
            2,
            ResourceChange::Messages(MessageCounts { new: 1, old: 0 }),
            now,
        );
        assert!(sent(&mut e).is_empty());
    }

    #[test]
    fn a_thousand_subscribers_are_notified_of_one_change() {
        let mut e = Engine::new(
            "192.0.2.10:5060".into(),
            Limits {
                per_subscriber: 10,
                per_domain: 10_000,
                total: 10_000,
            },
            1,
        );
        let now = Instant::now();
        for i in 0..1000 {
            active(&mut e, i, &format!("u{i}@x.test"), "boss@x.test", now);
        }
        let started = Instant::now();
        e.changed(
            "boss@x.test",
            2,
            ResourceChange::Availability(Availability::Online),
            now,
        );
        let out = sent(&mut e);
        let took = started.elapsed();
        assert_eq!(out.len(), 1000);
        // The budget for the whole fan-out is 200 ms; building the
        // requests is a small part of it, even unoptimised.
        assert!(took < Duration::from_millis(200), "{took:?}");
        e.check_invariants().unwrap();
    }

    /// Seeded random sequences of subscribe, refresh, unsubscribe,
    /// changes, answered and lost NOTIFYs and time passing: the
    /// bookkeeping holds after every step, and once every subscription
    /// has expired nothing is left (no entry, timer or index).
    #[test]
    fn simulation_leaves_no_subscription_or_timer_behind() {
        for seed in 0..200u64 {
            simulate(seed);
        }
    }

    fn simulate(seed: u64) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut e = Engine::new(
            "192.0.2.10:5060".into(),
            Limits {
                per_subscriber: 4,
                per_domain: 12,
                total: 20,
            },
            seed,
        );
        let start = Instant::now();
        let mut now = start;
        let mut version = 1u64;
        // (call-id, our tag, their tag, next cseq) of accepted subscriptions.
        let mut dialogs: Vec<(String, String, String, u32)> = vec![];
        let mut in_flight: Vec<String> = vec![];
        let mut last_body = std::collections::HashMap::new();
        let resources = ["a@x.test", "b@x.test", "c@y.test"];
        for step in 0..300u32 {
            match rng.random_range(0..10) {
                0 | 1 => {
                    let r = resources[rng.random_range(0..resources.len())];
                    let domain = r.split('@').nth(1).unwrap_or("");
                    let subscriber = format!("s{}@{domain}", rng.random_range(0..4));
                    let package = Package::ALL[rng.random_range(0..3)];
                    let mut n = new_sub(step, &subscriber, r, package);
                    n.expires = [0, 60, 600][rng.random_range(0..3)];
                    if rng.random_bool(0.3) {
                        n.flow = flow(Transport::Tcp, 5070);
                    }
                    e.begin_watch(r);
                    if rng.random_bool(0.1) {
                        e.abandon_watch(r);
                    } else {
                        let st = state(version, Availability::Online);
                        if let Ok(a) = e.subscribe(n.clone(), st, now) {
                            if rng.random_bool(0.95) {
                                e.release(a.id, now);
                            }
                            dialogs.push((n.call_id, a.local_tag, n.remote_tag, 2));
                        }
                    }
                }
                2 if !dialogs.is_empty() => {
                    let i = rng.random_range(0..dialogs.len());
                    let (c, l, r, cseq) = dialogs[i].clone();
                    dialogs[i].3 += 1;
                    let expires = [0, 60, 600][rng.random_range(0..3)];
                    if let Refresh::Accepted(a) = e.refresh(&c, &l, &r, cseq, expires, now) {
                        e.release(a.id, now);
                    }
                }
                3 | 4 => {
                    version += 1;
                    let r = resources[rng.random_range(0..resources.len())];
                    let change = if rng.random_bool(0.5) {
                        ResourceChange::Availability(
                            [
                                Availability::Online,
                                Availability::Offline,
                                Availability::OnThePhone,
                            ][rng.random_range(0..3)],
                        )
                    } else {
                        ResourceChange::Call(CallState {
                            call_id: format!("leg{}", rng.random_range(0..3)),
                            sip_call_id: "s".into(),
                            direction: CallDirection::Outbound,
                            remote: "z@x.test".into(),
                            phase: [CallPhase::Trying, CallPhase::Terminated]
                                [rng.random_range(0..2)],
                        })
                    };
                    e.changed(r, version, change, now);
                }
                5 | 6 if !in_flight.is_empty() => {
                    // Answer (or lose: never answered) a NOTIFY.
                    let i = rng.random_range(0..in_flight.len());
                    let b = in_flight.swap_remove(i);
                    if rng.random_bool(0.8) {
                        let code = [200, 200, 200, 481, 500][rng.random_range(0..5)];
                        e.on_response(&b, code, now);
                    }
                }
                _ => {
                    now += Duration::from_millis(rng.random_range(0..20_000));
                    e.handle_timeout(now);
                }
            }
            while let Some(Action::Send(_, b)) = e.poll_action() {
                let raw = String::from_utf8(b.to_vec()).unwrap();
                in_flight.push(branch(&raw));
                last_body.insert(header(&raw, "Call-ID"), body(&raw));
            }
            if let Err(err) = e.check_invariants() {
                panic!("seed {seed} step {step}: {err}");
            }
        }
        // Every NOTIFY still in flight is answered, and so are the ones
        // that follows: then each presence subscriber whose NOTIFYs were
        // not lost has been shown its user's latest state.
        while let Some(b) = in_flight.pop() {
            e.on_response(&b, 200, now);
            while let Some(Action::Send(_, b)) = e.poll_action() {
                let raw = String::from_utf8(b.to_vec()).unwrap();
                in_flight.push(branch(&raw));
                last_body.insert(header(&raw, "Call-ID"), body(&raw));
            }
        }
        for sub in e.subs.values() {
            if sub.package != Package::Presence
                || sub.terminating
                || sub.hold.is_some()
                || sub.in_flight.is_some()
            {
                continue;
            }
            let known = e.resources[&sub.resource].known.as_ref().unwrap();
            assert_eq!(
                last_body.get(&sub.dialog.0),
                Some(&pidf::body(&sub.resource, known.availability)),
                "seed {seed}: {} was not shown {:?}",
                sub.subscriber,
                known.availability
            );
        }
        // Everything expires; NOTIFYs still in flight run into Timer F.
        let end = now + Duration::from_secs(3600) + NOTIFY_TIMEOUT * 2;
        while let Some(t) = e.poll_timeout().filter(|t| *t <= end) {
            e.handle_timeout(t);
            while e.poll_action().is_some() {}
            e.check_invariants()
                .unwrap_or_else(|err| panic!("seed {seed} draining: {err}"));
        }
        assert_eq!(e.counts(), Counts::default(), "seed {seed}");
    }
}
