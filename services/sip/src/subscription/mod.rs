//! SIP subscriptions (RFC 6665) to the users of a domain, by users of the
//! same domain: `presence` (RFC 3856), `dialog` (RFC 4235, busy-lamp
//! fields) and `message-summary` (RFC 3842).
//!
//! The logic is the sans-IO table in [`engine`]; the bodies are built by
//! [`pidf`], [`dialog_info`] and [`package`]. This module is the thin
//! shell around it: [`Subscriptions`] runs the table under a mutex,
//! sends what it asks for through the proxy's [`Outbound`], wakes it at
//! its next deadline, receives the watched users' recorded changes from
//! the backend (it is the [`ResourceWatcher`]) and keeps the metrics.
//! The SUBSCRIBE itself (authentication, checks, responses) is handled in
//! `core`. Subscriptions live in memory only (ADR 0014): after a restart
//! a refresh gets 481 and the phone subscribes afresh.
//!
//! The same shell sends unsolicited message-waiting NOTIFYs
//! ([`unsolicited`]) to the registered contacts of a user whose box asks
//! for them and that do not subscribe to `message-summary` themselves:
//! it knows the subscriptions, so a phone never gets both.

pub mod dialog_info;
pub mod engine;
pub mod package;
pub mod pidf;
pub mod unsolicited;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::backend::{MessageCounts, ResourceChange, ResourceState, ResourceWatcher, RouteTarget};
use crate::guard::{Guard, GuardConfig};
use crate::proxy::Outbound;
use crate::transport::Flow;

pub use engine::{Accepted, Engine, LimitHit, Limits, NewSubscription, Refresh, SubId, TagSide};
pub use package::{Package, ALLOW_EVENTS};

/// Metric names.
pub mod metric {
    /// Gauge: subscriptions live (not terminating).
    pub const LIVE: &str = "dialtone_sip_subscriptions";
    /// Counter by `outcome`: NOTIFYs answered `ok`, `rejected` (final
    /// non-2xx: the subscription ends), `timeout` (no answer within
    /// Timer F: the subscription ends).
    pub const NOTIFY_OUTCOMES: &str = "dialtone_sip_notify_total";
    /// Counter by `reason`: SUBSCRIBEs refused by a limit (`subscriber`,
    /// `domain`, `total`, `rate`).
    pub const REFUSED: &str = "dialtone_sip_subscribe_refused_total";
    /// Histogram: seconds from a recorded change reaching the gateway to
    /// the last NOTIFY of its fan-out being handed to the transport.
    pub const FANOUT_SECONDS: &str = "dialtone_sip_notify_fanout_seconds";
    /// Counter by `outcome`: unsolicited message-waiting NOTIFYs answered
    /// `ok`, `rejected` (final non-2xx), `timeout` (Timer F), or
    /// `dropped` (too many in flight). None is retried.
    pub const UNSOLICITED_MWI: &str = "dialtone_sip_unsolicited_mwi_total";
}

/// Subscription settings (part of the gateway configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionConfig {
    /// Below this (and above 0) a SUBSCRIBE gets 423 with Min-Expires.
    pub min_expires: u32,
    /// Longer requested expiries are granted this. Subscriptions live in
    /// memory (ADR 0014): after a restart a phone learns at its next
    /// refresh (481) that it must subscribe again, so this bounds how long
    /// a busy-lamp field can stay stale; 600 s rather than the packages'
    /// 3600 s default.
    pub max_expires: u32,
    /// Expiry when the SUBSCRIBE gives none.
    pub default_expires: u32,
    /// Live subscriptions one subscriber (`user@domain`) may hold: a desk
    /// phone with a busy-lamp field per colleague needs dozens.
    pub max_per_subscriber: usize,
    /// Live subscriptions in one domain.
    pub max_per_domain: usize,
    /// Live subscriptions on the node.
    pub max_total: usize,
    /// SUBSCRIBEs per second one source address may send (0: no limit);
    /// beyond it and its burst: 503 with Retry-After.
    pub source_rate: u32,
    pub source_burst: u32,
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        SubscriptionConfig {
            min_expires: 60,
            max_expires: 600,
            default_expires: 600,
            max_per_subscriber: 200,
            max_per_domain: 20_000,
            max_total: 200_000,
            source_rate: 50,
            source_burst: 200,
        }
    }
}

/// A subscription's longest sleep between timer checks.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// See the module documentation.
pub struct Subscriptions {
    cfg: SubscriptionConfig,
    engine: Mutex<Engine>,
    out: Arc<dyn Outbound>,
    wake: Notify,
    timer_started: OnceLock<()>,
    /// The SUBSCRIBE rate limit per source (the guard's token buckets;
    /// its lock-out side is not used).
    rate: Guard,
    /// Someone subscribes to the `dialog` package: the calls' tags are
    /// noted (one relaxed load per INVITE and INVITE response otherwise).
    dialogs_watched: AtomicBool,
    /// Unsolicited message-waiting NOTIFYs in flight. Locked after the
    /// table, never while holding it.
    unsolicited: Mutex<unsolicited::Table>,
    this: Weak<Subscriptions>,
}

/// An unsolicited message-waiting NOTIFY to send to the contacts a
/// REGISTER just added, after its 200 (see [`Subscriptions::after_register`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageWaitingAfter {
    /// `user@domain`.
    pub resource: String,
    pub counts: MessageCounts,
    pub targets: Vec<RouteTarget>,
}

impl Subscriptions {
    pub fn new(
        cfg: SubscriptionConfig,
        advertised: String,
        out: Arc<dyn Outbound>,
    ) -> Arc<Subscriptions> {
        let limits = Limits {
            per_subscriber: cfg.max_per_subscriber,
            per_domain: cfg.max_per_domain,
            total: cfg.max_total,
        };
        let rate = Guard::new(GuardConfig {
            user_source_threshold: 0,
            source_threshold: 0,
            source_rate: cfg.source_rate,
            source_burst: cfg.source_burst.max(cfg.source_rate),
            ..GuardConfig::default()
        });
        Arc::new_cyclic(|this| Subscriptions {
            cfg,
            unsolicited: Mutex::new(unsolicited::Table::new(advertised.clone(), rand::random())),
            engine: Mutex::new(Engine::new(advertised, limits, rand::random())),
            out,
            wake: Notify::new(),
            timer_started: OnceLock::new(),
            rate,
            dialogs_watched: AtomicBool::new(false),
            this: this.clone(),
        })
    }

    pub fn config(&self) -> &SubscriptionConfig {
        &self.cfg
    }

    /// May `ip` send another SUBSCRIBE now?
    pub fn admit_source(&self, ip: IpAddr, now: Instant) -> bool {
        self.rate.admit(ip, now)
    }

    /// Runs `f` on the table, then sends what it asked for (in order,
    /// after `first` when given) and wakes the timer task when its
    /// deadline moved closer.
    fn run<R>(
        &self,
        first: Option<(Flow, bytes::Bytes)>,
        f: impl FnOnce(&mut Engine, Instant) -> R,
    ) -> R {
        let now = Instant::now();
        let (result, actions, counts, ended) = {
            // A panic while holding the lock left the table as it was
            // before the failed input: carry on with it.
            let mut engine = self
                .engine
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let before = engine.poll_timeout();
            let result = f(&mut engine, now);
            let mut actions = Vec::new();
            while let Some(engine::Action::Send(flow, bytes)) = engine.poll_action() {
                actions.push((flow, bytes));
            }
            if engine
                .poll_timeout()
                .is_some_and(|t| before.is_none_or(|b| t < b))
            {
                self.wake.notify_one();
            }
            self.dialogs_watched
                .store(engine.watches_dialogs(), Ordering::Relaxed);
            (result, actions, engine.counts(), engine.take_ended())
        };
        if let Some((flow, bytes)) = first {
            self.out.send(flow, bytes);
        }
        for (flow, bytes) in actions {
            self.out.send(flow, bytes);
        }
        metrics::gauge!(metric::LIVE).set(counts.active as f64);
        for e in ended {
            let outcome = match e {
                engine::Ended::Terminated => continue,
                engine::Ended::Rejected => "rejected",
                engine::Ended::TimedOut => "timeout",
            };
            metrics::counter!(metric::NOTIFY_OUTCOMES, "outcome" => outcome).increment(1);
        }
        result
    }

    /// Would a new subscription fit the limits (checked again when it is
    /// added)?
    pub fn check_limits(&self, subscriber: &str, domain: &str) -> Result<(), LimitHit> {
        let r = self
            .engine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check_limits(subscriber, domain);
        if let Err(hit) = r {
            metrics::counter!(metric::REFUSED, "reason" => hit.label()).increment(1);
        }
        r
    }

    /// Counts a SUBSCRIBE refused by the rate limit.
    pub fn refused_by_rate(&self) {
        metrics::counter!(metric::REFUSED, "reason" => "rate").increment(1);
    }

    /// Keeps `resource`'s changes from now on, until the returned guard
    /// is given to [`Subscriptions::subscribe`] or dropped.
    pub fn begin_watch(&self, resource: &str) -> WatchGuard<'_> {
        self.run(None, |e, _| e.begin_watch(resource));
        WatchGuard {
            subscriptions: self,
            resource: Some(resource.to_owned()),
        }
    }

    /// Adds a subscription, held until [`Subscriptions::release`].
    pub fn subscribe(
        &self,
        mut watch: WatchGuard<'_>,
        new: NewSubscription,
        state: ResourceState,
    ) -> Result<Accepted, LimitHit> {
        watch.resource = None;
        self.start_timer();
        let r = self.run(None, |e, now| e.subscribe(new, state, now));
        if let Err(hit) = r {
            metrics::counter!(metric::REFUSED, "reason" => hit.label()).increment(1);
        }
        r
    }

    /// An in-dialog SUBSCRIBE (see [`Engine::refresh`]).
    pub fn refresh(
        &self,
        call_id: &str,
        local_tag: &str,
        remote_tag: &str,
        cseq: u32,
        expires: u32,
    ) -> Refresh {
        self.run(None, |e, now| {
            e.refresh(call_id, local_tag, remote_tag, cseq, expires, now)
        })
    }

    /// Sends the 200 of subscription `id`'s SUBSCRIBE on `flow`, then the
    /// NOTIFY it calls for (in this order: phones expect it so).
    pub fn release(&self, id: SubId, flow: Flow, response: bytes::Bytes) {
        self.run(Some((flow, response)), |e, now| e.release(id, now));
    }

    /// A response to one of our NOTIFYs? Handled if so.
    pub fn on_response(&self, branch: &str, code: u16) -> bool {
        if branch.starts_with(unsolicited::BRANCH_PREFIX) {
            return self.run_unsolicited(None, |t, now| t.on_response(branch, code, now));
        }
        if !branch.starts_with(concat!("z9hG4bK", "sub")) {
            return false;
        }
        let handled = self.run(None, |e, now| e.on_response(branch, code, now));
        if handled && (200..300).contains(&code) {
            metrics::counter!(metric::NOTIFY_OUTCOMES, "outcome" => "ok").increment(1);
        }
        handled
    }

    /// Sends a REGISTER's 200 on `flow`, then the unsolicited NOTIFYs
    /// `after` asks for (in this order: the phone hears of its
    /// registration before anything sent to its new contact).
    pub fn after_register(&self, flow: Flow, response: bytes::Bytes, after: MessageWaitingAfter) {
        self.notify_unsolicited(
            Some((flow, response)),
            &after.resource,
            after.counts,
            after.targets,
        );
    }

    /// Tells `resource`'s (`user@domain`) registered contacts `targets`
    /// its counts by unsolicited NOTIFY (after sending `first`), except
    /// the contacts whose device subscribes to its `message-summary`
    /// (they hear it from the subscription).
    fn notify_unsolicited(
        &self,
        first: Option<(Flow, bytes::Bytes)>,
        resource: &str,
        counts: MessageCounts,
        targets: Vec<RouteTarget>,
    ) {
        let targets = {
            let engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
            unsolicited::recipients(targets, |t| engine.message_summary_subscribed(resource, t))
        };
        if !targets.is_empty() {
            self.start_timer();
        }
        self.run_unsolicited(first, |table, now| {
            for target in targets {
                table.notify(
                    unsolicited::Notice {
                        resource: resource.to_owned(),
                        counts,
                        target,
                    },
                    now,
                );
            }
        });
    }

    /// [`Subscriptions::run`] for the unsolicited NOTIFYs' table: runs
    /// `f`, sends (after `first`), wakes the timer, logs and counts the
    /// outcomes.
    fn run_unsolicited<R>(
        &self,
        first: Option<(Flow, bytes::Bytes)>,
        f: impl FnOnce(&mut unsolicited::Table, Instant) -> R,
    ) -> R {
        let now = Instant::now();
        let (result, actions, outcomes) = {
            let mut table = self
                .unsolicited
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let before = table.poll_timeout();
            let result = f(&mut table, now);
            let mut actions = Vec::new();
            while let Some(unsolicited::Action::Send(flow, bytes)) = table.poll_action() {
                actions.push((flow, bytes));
            }
            if table
                .poll_timeout()
                .is_some_and(|t| before.is_none_or(|b| t < b))
            {
                self.wake.notify_one();
            }
            (result, actions, table.take_outcomes())
        };
        if let Some((flow, bytes)) = first {
            self.out.send(flow, bytes);
        }
        for (flow, bytes) in actions {
            self.out.send(flow, bytes);
        }
        for o in outcomes {
            match &o {
                unsolicited::Outcome::Ok => {}
                unsolicited::Outcome::Rejected { code, target } => {
                    tracing::info!(code, %target, "unsolicited message-waiting NOTIFY refused; not retried");
                }
                unsolicited::Outcome::TimedOut { target } => {
                    tracing::info!(%target, "unsolicited message-waiting NOTIFY unanswered; not retried");
                }
                unsolicited::Outcome::Dropped => {
                    tracing::warn!(
                        limit = unsolicited::MAX_IN_FLIGHT,
                        "too many unsolicited message-waiting NOTIFYs in flight: one dropped"
                    );
                }
            }
            metrics::counter!(metric::UNSOLICITED_MWI, "outcome" => o.label()).increment(1);
        }
        result
    }

    /// Does anyone watch dialogs (see [`Subscriptions::note_tag`])?
    pub fn dialogs_watched(&self) -> bool {
        self.dialogs_watched.load(Ordering::Relaxed)
    }

    /// A dialog tag of a call passed through the gateway (for the
    /// `dialog` package's `local-tag`/`remote-tag`).
    pub fn note_tag(&self, sip_call_id: &str, side: TagSide, tag: &str) {
        self.engine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .note_tag(sip_call_id, side, tag);
    }

    /// Live subscriptions and other counts (tests, metrics).
    pub fn counts(&self) -> engine::Counts {
        self.engine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .counts()
    }

    fn start_timer(&self) {
        self.timer_started.get_or_init(|| {
            if tokio::runtime::Handle::try_current().is_ok() {
                tokio::spawn(timer(self.this.clone()));
            }
        });
    }
}

impl ResourceWatcher for Subscriptions {
    fn changed(&self, domain: &str, user: &str, version: u64, change: ResourceChange) {
        let started = Instant::now();
        let resource = format!("{user}@{domain}");
        self.run(None, |e, now| e.changed(&resource, version, change, now));
        metrics::histogram!(metric::FANOUT_SECONDS).record(started.elapsed().as_secs_f64());
    }

    fn message_waiting(
        &self,
        domain: &str,
        user: &str,
        counts: MessageCounts,
        contacts: Vec<RouteTarget>,
    ) {
        self.notify_unsolicited(None, &format!("{user}@{domain}"), counts, contacts);
    }
}

/// Forgets a watch whose SUBSCRIBE did not become a subscription (refused,
/// failed, or its request dropped at shutdown).
pub struct WatchGuard<'a> {
    subscriptions: &'a Subscriptions,
    resource: Option<String>,
}

impl Drop for WatchGuard<'_> {
    fn drop(&mut self) {
        if let Some(resource) = self.resource.take() {
            self.subscriptions
                .run(None, |e, _| e.abandon_watch(&resource));
        }
    }
}

/// Wakes the table at its deadlines (retransmissions, Timer F, expiry).
async fn timer(subscriptions: Weak<Subscriptions>) {
    loop {
        let Some(s) = subscriptions.upgrade() else {
            return;
        };
        let now = Instant::now();
        let subscriptions_due = s
            .engine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .poll_timeout();
        let unsolicited_due = s
            .unsolicited
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .poll_timeout();
        let until = [subscriptions_due, unsolicited_due]
            .into_iter()
            .flatten()
            .fold(now + MAX_SLEEP, Instant::min);
        tokio::select! {
            _ = s.wake.notified() => {}
            _ = tokio::time::sleep_until(until.into()) => {}
        }
        s.run(None, |e, now| e.handle_timeout(now));
        s.run_unsolicited(None, |t, now| t.handle_timeout(now));
    }
}
