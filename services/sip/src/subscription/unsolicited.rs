//! Unsolicited message-waiting NOTIFYs: sans-IO.
//!
//! A phone that does not subscribe to `message-summary` (RFC 3842) can
//! still light its lamp from an out-of-dialog NOTIFY with
//! `Event: message-summary` and `Subscription-State: active`: what
//! Asterisk (`res_pjsip_mwi`, unsolicited), FreeSWITCH and Kamailio send,
//! and what phones accept. The box's owner turns it on per user
//! (`unsolicited_mwi`). This module decides who gets one ([`recipients`]:
//! each registered contact without a live `message-summary` subscription
//! from the same device), builds the request ([`request`]) and runs each
//! as a non-INVITE client transaction ([`Table`]): over UDP retransmitted
//! at T1 doubling to T2 (Timer E), given up after 64·T1 (Timer F).
//!
//! A 4xx/5xx or a timeout is reported ([`Outcome`]) and never retried: the
//! next change of the counts sends the next NOTIFY. At most one NOTIFY per
//! contact is in flight; a change meanwhile waits as that contact's one
//! pending state (the latest) and goes when the first ends, so a burst of
//! changes or a phone that never answers costs one entry, never a queue.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::backend::{MessageCounts, RouteTarget};
use crate::transaction::{MAGIC_COOKIE, T1, T2};
use crate::transport::Flow;

use super::package::{message_summary_body, Package};

/// Timer F: an unanswered NOTIFY is given up after this.
pub const TIMEOUT: Duration = Duration::from_millis(64 * 500);

/// The branch prefix of our unsolicited NOTIFYs (their responses are
/// recognised by it).
pub const BRANCH_PREFIX: &str = concat!("z9hG4bK", "mwi");

/// NOTIFYs in flight on the node at most; beyond it a new one is dropped
/// (and counted): a storm of changes cannot grow the table without bound.
pub const MAX_IN_FLIGHT: usize = 10_000;

/// The counts to tell one contact of `resource` (`user@domain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub resource: String,
    pub counts: MessageCounts,
    pub target: RouteTarget,
}

/// How an unsolicited NOTIFY ended (metrics and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx.
    Ok,
    /// A final non-2xx (the phone does not take unsolicited NOTIFYs, or
    /// knows no such user): logged, not retried.
    Rejected { code: u16, target: String },
    /// No final response within Timer F.
    TimedOut { target: String },
    /// Not sent: [`MAX_IN_FLIGHT`] reached.
    Dropped,
}

impl Outcome {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Rejected { .. } => "rejected",
            Outcome::TimedOut { .. } => "timeout",
            Outcome::Dropped => "dropped",
        }
    }
}

/// Does `target` (a registered contact) belong to the same device as a
/// subscription whose NOTIFYs go to `contact` on `flow`? The same
/// connection; else the same transport and remote address (a phone sends
/// its REGISTER and SUBSCRIBE from one socket); else the same address in
/// the contact URIs.
pub fn same_device(target: &RouteTarget, contact: &str, flow: &Flow) -> bool {
    if let (Some(a), Some(b)) = (target.flow.connection, flow.connection) {
        return a == b;
    }
    if target.flow.transport == flow.transport && target.flow.remote == flow.remote {
        return true;
    }
    match (
        crate::transport::uri_destination(&target.uri),
        crate::transport::uri_destination(contact),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// The contacts that get an unsolicited NOTIFY: those for which
/// `subscribed` (a live `message-summary` subscription from the same
/// device) is false, each once.
pub fn recipients(
    targets: Vec<RouteTarget>,
    subscribed: impl Fn(&RouteTarget) -> bool,
) -> Vec<RouteTarget> {
    let mut out: Vec<RouteTarget> = Vec::with_capacity(targets.len());
    for t in targets {
        if !subscribed(&t) && !out.iter().any(|o| o.uri == t.uri && o.flow == t.flow) {
            out.push(t);
        }
    }
    out
}

/// The NOTIFY for `notice`: out of any dialog (a fresh Call-ID and From
/// tag), to the contact URI, `From` and `To` the account,
/// `Subscription-State: active`, the RFC 3842 body.
pub fn request(advertised: &str, branch: &str, call_id: &str, tag: &str, notice: &Notice) -> Bytes {
    let body = message_summary_body(&notice.resource, notice.counts);
    let transport = notice.target.flow.transport.as_str();
    let package = Package::MessageSummary;
    let mut m = String::with_capacity(512 + body.len());
    m.push_str("NOTIFY ");
    m.push_str(&notice.target.uri);
    m.push_str(" SIP/2.0\r\nVia: SIP/2.0/");
    m.push_str(transport);
    m.push(' ');
    m.push_str(advertised);
    m.push_str(";branch=");
    m.push_str(branch);
    m.push_str(";rport\r\nMax-Forwards: 70\r\nFrom: <sip:");
    m.push_str(&notice.resource);
    m.push_str(">;tag=");
    m.push_str(tag);
    m.push_str("\r\nTo: <sip:");
    m.push_str(&notice.resource);
    m.push_str(">\r\nCall-ID: ");
    m.push_str(call_id);
    m.push_str("\r\nCSeq: 1 NOTIFY\r\nContact: <sip:");
    m.push_str(advertised);
    m.push_str(";transport=");
    m.push_str(&transport.to_ascii_lowercase());
    m.push_str(">\r\nEvent: ");
    m.push_str(package.name());
    m.push_str("\r\nSubscription-State: active\r\nContent-Type: ");
    m.push_str(package.content_type());
    m.push_str("\r\nContent-Length: ");
    m.push_str(&body.len().to_string());
    m.push_str("\r\n\r\n");
    m.push_str(&body);
    Bytes::from(m)
}

/// Something to do on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send(Flow, Bytes),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerKind {
    Retransmit,
    Timeout,
}

type TimerKey = (Instant, u64);

/// Which contact of which account a NOTIFY is for.
type ContactKey = (String, String, Flow);

#[derive(Debug)]
struct InFlight {
    contact: ContactKey,
    bytes: Bytes,
    flow: Flow,
    interval: Duration,
    retransmit: Option<TimerKey>,
    timeout: TimerKey,
}

/// The NOTIFYs in flight: see the module documentation.
pub struct Table {
    advertised: String,
    seed: u64,
    counter: u64,
    /// By branch.
    in_flight: HashMap<String, InFlight>,
    /// The contacts with a NOTIFY in flight, and the state to send them
    /// when it ends (if another change came meanwhile).
    busy: HashMap<ContactKey, Option<Notice>>,
    timers: BTreeMap<TimerKey, (String, TimerKind)>,
    actions: VecDeque<Action>,
    outcomes: Vec<Outcome>,
}

impl Table {
    /// `advertised` is our `host[:port]` for Via and Contact; `seed`
    /// makes the Call-IDs, tags and branches unpredictable.
    pub fn new(advertised: String, seed: u64) -> Table {
        Table {
            advertised,
            seed,
            counter: 0,
            in_flight: HashMap::new(),
            busy: HashMap::new(),
            timers: BTreeMap::new(),
            actions: VecDeque::new(),
            outcomes: Vec::new(),
        }
    }

    /// A fresh token: 16 hex digits (splitmix64 of seed + counter).
    fn token(&mut self) -> String {
        self.counter += 1;
        let mut z = self
            .seed
            .wrapping_add(self.counter.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        format!("{z:016x}")
    }

    fn timer(&mut self, at: Instant, branch: &str, kind: TimerKind) -> TimerKey {
        self.counter += 1;
        let key = (at, self.counter);
        self.timers.insert(key, (branch.to_owned(), kind));
        key
    }

    /// Tells `notice`'s contact its counts: now, or after the NOTIFY in
    /// flight to it (replacing any state already waiting).
    pub fn notify(&mut self, notice: Notice, now: Instant) {
        let key = (
            notice.resource.clone(),
            notice.target.uri.clone(),
            notice.target.flow,
        );
        if let Some(waiting) = self.busy.get_mut(&key) {
            *waiting = Some(notice);
            return;
        }
        self.send(key, notice, now);
    }

    fn send(&mut self, key: ContactKey, notice: Notice, now: Instant) {
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            self.outcomes.push(Outcome::Dropped);
            return;
        }
        let branch = format!("{MAGIC_COOKIE}mwi{}", self.token());
        let call_id = format!("mwi{}", self.token());
        let tag = self.token();
        let bytes = request(&self.advertised, &branch, &call_id, &tag, &notice);
        let flow = notice.target.flow;
        let timeout = self.timer(now + TIMEOUT, &branch, TimerKind::Timeout);
        let retransmit =
            (!flow.is_reliable()).then(|| self.timer(now + T1, &branch, TimerKind::Retransmit));
        self.busy.insert(key.clone(), None);
        self.in_flight.insert(
            branch,
            InFlight {
                contact: key,
                bytes: bytes.clone(),
                flow,
                interval: T1,
                retransmit,
                timeout,
            },
        );
        self.actions.push_back(Action::Send(flow, bytes));
    }

    /// Ends the transaction `branch` with `outcome`, then sends what waits
    /// for its contact.
    fn end(&mut self, branch: &str, outcome: impl FnOnce(&str) -> Outcome, now: Instant) {
        let Some(f) = self.in_flight.remove(branch) else {
            return;
        };
        self.timers.remove(&f.timeout);
        if let Some(r) = f.retransmit {
            self.timers.remove(&r);
        }
        self.outcomes.push(outcome(&f.contact.1));
        if let Some(Some(next)) = self.busy.remove(&f.contact) {
            self.send(f.contact, next, now);
        }
    }

    /// A response whose top Via has `branch`. False when it is not one to
    /// our unsolicited NOTIFYs.
    pub fn on_response(&mut self, branch: &str, code: u16, now: Instant) -> bool {
        if !self.in_flight.contains_key(branch) {
            return false;
        }
        if code >= 200 {
            self.end(
                branch,
                |target| {
                    if code < 300 {
                        Outcome::Ok
                    } else {
                        Outcome::Rejected {
                            code,
                            target: target.to_owned(),
                        }
                    }
                },
                now,
            );
        }
        // Provisional: Timer E goes on (RFC 3261 s.17.1.2.2).
        true
    }

    /// The earliest timer, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.keys().next().map(|k| k.0)
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((&key, (branch, kind))) = self.timers.iter().next() {
            if key.0 > now {
                break;
            }
            let (branch, kind) = (branch.clone(), *kind);
            self.timers.remove(&key);
            match kind {
                TimerKind::Timeout => self.end(
                    &branch,
                    |target| Outcome::TimedOut {
                        target: target.to_owned(),
                    },
                    now,
                ),
                TimerKind::Retransmit => {
                    let Some(f) = self.in_flight.get_mut(&branch) else {
                        continue;
                    };
                    f.interval = (f.interval * 2).min(T2);
                    let (bytes, flow, interval) = (f.bytes.clone(), f.flow, f.interval);
                    let k = self.timer(now + interval, &branch, TimerKind::Retransmit);
                    if let Some(f) = self.in_flight.get_mut(&branch) {
                        f.retransmit = Some(k);
                    }
                    self.actions.push_back(Action::Send(flow, bytes));
                }
            }
        }
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// How the NOTIFYs that ended since the last call ended.
    pub fn take_outcomes(&mut self) -> Vec<Outcome> {
        std::mem::take(&mut self.outcomes)
    }

    /// NOTIFYs in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The table's bookkeeping holds: per NOTIFY in flight a timeout timer
    /// and, over UDP, a retransmission timer; a busy contact per NOTIFY.
    pub fn check_invariants(&self) -> Result<(), String> {
        let expected: usize = self
            .in_flight
            .values()
            .map(|f| 1 + usize::from(f.retransmit.is_some()))
            .sum();
        if expected != self.timers.len() {
            return Err(format!(
                "{} timers for {} expected",
                self.timers.len(),
                expected
            ));
        }
        if self.busy.len() != self.in_flight.len() {
            return Err(format!(
                "{} busy contacts for {} NOTIFYs in flight",
                self.busy.len(),
                self.in_flight.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{ConnectionId, Transport};
    use crate::wire::message::{Message, StartLine};
    use std::net::SocketAddr;

    fn target(transport: Transport, port: u16) -> RouteTarget {
        RouteTarget::for_binding(
            &format!("sip:alice@192.0.2.1:{port}"),
            Flow::new(transport, SocketAddr::from(([192, 0, 2, 1], port))),
        )
    }

    fn notice(new: u32, old: u32, target: RouteTarget) -> Notice {
        Notice {
            resource: "alice@example.test".into(),
            counts: MessageCounts { new, old },
            target,
        }
    }

    fn sent(table: &mut Table) -> Vec<(Flow, Bytes)> {
        let mut out = Vec::new();
        while let Some(Action::Send(f, b)) = table.poll_action() {
            out.push((f, b));
        }
        out
    }

    fn branch_of(bytes: &Bytes) -> String {
        let m = Message::parse(bytes).unwrap();
        m.top_via().unwrap().branch().unwrap().to_owned()
    }

    #[test]
    fn the_request_is_an_out_of_dialog_message_summary_notify() {
        let bytes = request(
            "192.0.2.10:5060",
            "z9hG4bKmwi1",
            "mwi2",
            "3",
            &notice(2, 1, target(Transport::Udp, 5062)),
        );
        let m = Message::parse(&bytes).unwrap();
        let StartLine::Request {
            method_text, uri, ..
        } = m.start
        else {
            panic!("not a request");
        };
        assert_eq!(method_text, "NOTIFY");
        assert_eq!(uri, "sip:alice@192.0.2.1:5062");
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.contains("Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKmwi1;rport\r\n"));
        assert!(text.contains("From: <sip:alice@example.test>;tag=3\r\n"));
        // No To tag: out of any dialog.
        assert!(text.contains("To: <sip:alice@example.test>\r\n"));
        assert!(text.contains("CSeq: 1 NOTIFY\r\n"));
        assert!(text.contains("Event: message-summary\r\n"));
        assert!(text.contains("Subscription-State: active\r\n"));
        assert!(text.contains("Content-Type: application/simple-message-summary\r\n"));
        let body = "Messages-Waiting: yes\r\nMessage-Account: sip:alice@example.test\r\nVoice-Message: 2/1 (0/0)\r\n";
        assert!(text.ends_with(&format!("Content-Length: {}\r\n\r\n{body}", body.len())));
    }

    #[test]
    fn only_contacts_without_a_subscription_from_their_device_get_one() {
        let a = target(Transport::Udp, 5062);
        let b = target(Transport::Udp, 5064);
        let subscribed_flow = Flow::new(Transport::Udp, SocketAddr::from(([192, 0, 2, 1], 5064)));
        let got = recipients(vec![a.clone(), b.clone(), a.clone()], |t| {
            same_device(t, "sip:alice@192.0.2.1:5064", &subscribed_flow)
        });
        assert_eq!(got, vec![a.clone()]);

        // A subscription from another port of the same host, naming the
        // contact's address: the same device.
        let other = Flow::new(Transport::Udp, SocketAddr::from(([192, 0, 2, 1], 40000)));
        assert!(same_device(&a, "sip:alice@192.0.2.1:5062", &other));
        assert!(!same_device(&a, "sip:alice@192.0.2.1:5064", &other));
        // Connections decide when both have one.
        let mut tcp = target(Transport::Tcp, 5070);
        tcp.flow.connection = Some(ConnectionId(7));
        let mut sub = tcp.flow;
        assert!(same_device(&tcp, "sip:x@192.0.2.9", &sub));
        sub.connection = Some(ConnectionId(8));
        assert!(!same_device(&tcp, &tcp.uri, &sub));
    }

    #[test]
    fn udp_retransmits_at_t1_doubling_to_t2_and_gives_up_at_timer_f() {
        let t0 = Instant::now();
        let mut table = Table::new("192.0.2.10:5060".into(), 1);
        table.notify(notice(1, 0, target(Transport::Udp, 5062)), t0);
        let first = sent(&mut table);
        assert_eq!(first.len(), 1);
        let mut at = Vec::new();
        let mut now = t0;
        while let Some(next) = table.poll_timeout() {
            now = next;
            table.handle_timeout(now);
            table.check_invariants().unwrap();
            for (_, bytes) in sent(&mut table) {
                assert_eq!(bytes, first[0].1);
                at.push(now.duration_since(t0).as_millis());
            }
        }
        assert_eq!(
            at,
            [500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
        );
        assert_eq!(now.duration_since(t0), TIMEOUT);
        assert_eq!(
            table.take_outcomes(),
            vec![Outcome::TimedOut {
                target: "sip:alice@192.0.2.1:5062".into()
            }]
        );
        assert_eq!(table.in_flight(), 0);
    }

    #[test]
    fn a_rejection_is_reported_once_and_not_retried() {
        let t0 = Instant::now();
        let mut table = Table::new("192.0.2.10:5060".into(), 1);
        table.notify(notice(1, 0, target(Transport::Tcp, 5062)), t0);
        let out = sent(&mut table);
        let branch = branch_of(&out[0].1);
        assert!(branch.starts_with(BRANCH_PREFIX));
        // TCP: no retransmission timer, only Timer F.
        table.check_invariants().unwrap();
        assert_eq!(table.poll_timeout(), Some(t0 + TIMEOUT));
        assert!(table.on_response(&branch, 100, t0));
        assert!(table.on_response(&branch, 489, t0));
        assert!(!table.on_response(&branch, 489, t0));
        assert!(!table.on_response("z9hG4bKsub1", 200, t0));
        assert_eq!(
            table.take_outcomes(),
            vec![Outcome::Rejected {
                code: 489,
                target: "sip:alice@192.0.2.1:5062".into()
            }]
        );
        assert_eq!(table.poll_timeout(), None);
        table.handle_timeout(t0 + TIMEOUT * 2);
        assert!(sent(&mut table).is_empty());
    }

    #[test]
    fn changes_during_a_notify_coalesce_into_one_with_the_latest_counts() {
        let t0 = Instant::now();
        let mut table = Table::new("192.0.2.10:5060".into(), 1);
        let phone = target(Transport::Udp, 5062);
        table.notify(notice(1, 0, phone.clone()), t0);
        let first = sent(&mut table);
        for n in 2..=5 {
            table.notify(notice(n, 0, phone.clone()), t0);
        }
        // Another phone of the same user is not held back.
        table.notify(notice(5, 0, target(Transport::Udp, 5064)), t0);
        assert_eq!(sent(&mut table).len(), 1);
        table.check_invariants().unwrap();
        assert!(table.on_response(&branch_of(&first[0].1), 200, t0));
        let next = sent(&mut table);
        assert_eq!(next.len(), 1);
        let text = std::str::from_utf8(&next[0].1).unwrap();
        assert!(text.contains("Voice-Message: 5/0 (0/0)"), "{text}");
        assert_ne!(branch_of(&next[0].1), branch_of(&first[0].1));
        assert!(table.on_response(&branch_of(&next[0].1), 200, t0));
        assert!(sent(&mut table).is_empty());
        assert_eq!(table.take_outcomes(), vec![Outcome::Ok, Outcome::Ok]);
        assert_eq!(table.in_flight(), 1);
        table.check_invariants().unwrap();
    }

    #[test]
    fn beyond_the_limit_a_notify_is_dropped_and_counted() {
        let t0 = Instant::now();
        let mut table = Table::new("192.0.2.10:5060".into(), 1);
        for i in 0..MAX_IN_FLIGHT {
            let port = 1024 + u16::try_from(i).unwrap();
            table.notify(notice(1, 0, target(Transport::Tcp, port)), t0);
        }
        assert!(table.take_outcomes().is_empty());
        table.notify(notice(1, 0, target(Transport::Tcp, 60000)), t0);
        assert_eq!(table.take_outcomes(), vec![Outcome::Dropped]);
        assert_eq!(table.in_flight(), MAX_IN_FLIGHT);
        table.check_invariants().unwrap();
    }
}
