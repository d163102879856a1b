//! Call detail records, read from the log (the log is the truth; no
//! projection of finished calls is kept).
//!
//! A call is anchored on its caller's leg: the `CallStarted` with direction
//! `outbound`. Its other legs (`inbound`, one per callee user) share its
//! `call_id` and are started while the proxy routes the caller's INVITE, so
//! they are found in the log within [`JOIN_WINDOW_US`] of the anchor (before
//! or after it: two actors' appends commit in either order). A call belongs
//! to a domain when any of its legs' users does.
//!
//! # Reading a page
//!
//! 1. Where to start: the page token (a log position), else the first
//!    position whose event occurred at or after `from - JOIN_WINDOW_US`,
//!    found by binary search over positions (`occurred_at` follows commit
//!    order up to the small skew between actors deciding and committing,
//!    which the window covers): O(log n) one-event reads.
//! 2. A page after the first also reads the [`LOOKBACK_EVENTS`] events
//!    before its start, for callee legs committed just before their
//!    caller's leg.
//! 3. The log is scanned forward (every event is read; only `CallStarted`
//!    is decoded). An anchor is settled once the scan is past its window;
//!    settled anchors of the domain become records until the page is full.
//!    The scan stops at the head, past `to + JOIN_WINDOW_US`, or after
//!    [`SCAN_BUDGET`] events (the page is then returned, possibly short or
//!    empty, with a token to go on).
//! 4. Each leg's outcome is read from its user's stream, from its
//!    `CallStarted` onwards up to its `CallEnded`/`CallFailed`/
//!    `CallForwarded` (at most [`LEG_READ_MAX`] events: a leg not finished
//!    by then is shown in progress). A `CallTransferred` of the leg is
//!    looked for up to [`TRANSFER_TAIL`] events past its end as well (the
//!    transferor often hangs up before the new call is recognised).
//! 5. A leg that ended with `CallForwarded` is followed by the leg of the
//!    user the call went to, started by the proxy right after it (the
//!    forward and the new leg's start are recorded in that order): it is
//!    found by scanning the log from the `CallForwarded` onwards, for at
//!    most [`FORWARD_SCAN_MAX`] events. Forwarded legs may start long after
//!    the caller's (a no-answer forward rings 20 s first), so step 3's
//!    window does not find them.
//!
//! 6. A ring group's members ring one after the other: when the call went
//!    on after every callee leg found had ended (see [`record`]), the next
//!    member's leg is found the same way, after the last one's end.
//!
//! The next page token is the position after the page's last anchor, so
//! pages never repeat or skip a call, however the log grows meanwhile.
//! Cost: one page reads about every event of the time span its calls cover
//! (bounded by the budget) plus a few events per leg from user streams.

use std::collections::HashMap;
use std::sync::Arc;

use dialtone_domain::call::{Cause, Direction, ForwardReason, HangupSide, TransferKind};
use dialtone_domain::event::Upcasters;
use dialtone_domain::{user, DomainId, Event, Timestamp};
use dialtone_eventlog::{Position, RecordedEvent, SharedStore};
use tonic::Status;

use crate::payload::{cause, direction, forward_reason, hangup_side, timestamp, transfer_kind};
use crate::{pb, status};

/// The legs of one call are started within this time of each other.
pub const JOIN_WINDOW_US: i64 = 2_000_000;
/// Events read before a page's start, for callee legs committed before
/// their caller's leg.
pub const LOOKBACK_EVENTS: u64 = 5_000;
/// Events scanned at most per page.
pub const SCAN_BUDGET: usize = 200_000;
/// Events read from a user's stream at most to find a leg's outcome.
pub const LEG_READ_MAX: usize = 5_000;
/// Events of a leg's stream read at most after its `CallEnded` for the
/// leg's `CallTransferred` (recorded when the transferee's new call comes,
/// usually a moment after the transferor hung up).
const TRANSFER_TAIL: usize = 32;

/// Events scanned at most after a `CallForwarded` for the leg it started.
pub const FORWARD_SCAN_MAX: usize = 5_000;
/// Forwards followed at most in one record (a node's forwarding hop limit
/// is far lower).
pub const FORWARDS_FOLLOWED_MAX: usize = 16;
/// Ring group members followed at most in one record (a group's members).
pub const GROUP_MEMBERS_FOLLOWED_MAX: usize = 64;
/// A call that ended this much after its last callee leg went on to
/// another one (a ring group's next member).
const GROUP_GAP_US: i64 = 1_000_000;
pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;
const READ_BATCH: usize = 1000;

/// What to list.
#[derive(Debug, Clone)]
pub struct Query {
    pub domain: DomainId,
    /// Inclusive, µs.
    pub from: Timestamp,
    /// Exclusive, µs.
    pub to: Timestamp,
    pub page_size: usize,
    /// The page token: where the scan resumes.
    pub resume_at: Option<Position>,
}

/// A `CallStarted` as found in the log.
#[derive(Debug, Clone)]
struct LegStart {
    position: Position,
    stream: String,
    version: u64,
    user_id: String,
    domain_id: Option<DomainId>,
    call_id: String,
    direction: Direction,
    from: String,
    to: String,
    sip_call_id: String,
    started_at: Timestamp,
}

#[derive(Debug)]
struct Anchor {
    caller: LegStart,
    callees: Vec<LegStart>,
}

impl Anchor {
    fn in_domain(&self, domain: DomainId) -> bool {
        std::iter::once(&self.caller)
            .chain(&self.callees)
            .any(|l| l.domain_id == Some(domain))
    }
}

/// A page of records.
#[derive(Debug, Default)]
pub struct Page {
    pub calls: Vec<pb::CallRecord>,
    pub next: Option<Position>,
}

/// Decodes a `CallStarted` (other events: `None`).
fn leg_start(upcasters: &Upcasters, e: &RecordedEvent) -> Result<Option<LegStart>, Status> {
    if e.event_type != "CallStarted" {
        return Ok(None);
    }
    let event = upcasters
        .decode(&e.event_type, e.schema_version, &e.data)
        .map_err(|err| Status::internal(format!("event at position {}: {err}", e.position)))?;
    let Event::User(user::Event::CallStarted {
        call_id,
        direction,
        from,
        to,
        sip_call_id,
        started_at,
    }) = event
    else {
        return Ok(None);
    };
    Ok(Some(LegStart {
        position: e.position,
        stream: e.stream.clone(),
        version: e.version,
        user_id: e.user_id.map(|u| u.to_string()).unwrap_or_default(),
        domain_id: e.domain_id.map(DomainId),
        call_id,
        direction,
        from,
        to,
        sip_call_id,
        started_at,
    }))
}

/// The first position whose event occurred at or after `at` (one past the
/// head when none did).
async fn first_position_at(store: &SharedStore, at: Timestamp) -> Result<Position, Status> {
    let head = store.head_position();
    let (mut low, mut high) = (1, head + 1);
    while low < high {
        let middle = low + (high - low) / 2;
        let events = store
            .read_all(middle, 1)
            .await
            .map_err(status::from_store)?;
        match events.first() {
            Some(e) if e.occurred_at_us < at => low = e.position + 1,
            _ => high = middle,
        }
    }
    Ok(low)
}

/// One page of call detail records.
pub async fn list(
    store: &SharedStore,
    upcasters: &Arc<Upcasters>,
    query: &Query,
) -> Result<Page, Status> {
    let head = store.head_position();
    let start = match query.resume_at {
        Some(position) => position,
        None => first_position_at(store, query.from.saturating_sub(JOIN_WINDOW_US)).await?,
    };
    // Callee legs waiting for their caller's leg, by call_id.
    let mut waiting: HashMap<String, Vec<LegStart>> = HashMap::new();
    if query.resume_at.is_some() && start > 1 {
        let mut position = start.saturating_sub(LOOKBACK_EVENTS).max(1);
        while position < start {
            let want = usize::try_from(start - position).unwrap_or(READ_BATCH);
            let events = store
                .read_all(position, want.min(READ_BATCH))
                .await
                .map_err(status::from_store)?;
            let Some(last) = events.last() else { break };
            position = last.position + 1;
            for e in events.iter().filter(|e| e.position < start) {
                if let Some(leg) = leg_start(upcasters, e)? {
                    if leg.direction == Direction::Inbound {
                        waiting.entry(leg.call_id.clone()).or_default().push(leg);
                    }
                }
            }
        }
    }

    let stop_after = query.to.saturating_add(JOIN_WINDOW_US);
    let mut anchors: Vec<Anchor> = Vec::new();
    let mut anchor_of: HashMap<String, usize> = HashMap::new();
    let mut settled = 0usize;
    // Indices into `anchors` of the page's records.
    let mut records: Vec<usize> = Vec::new();
    let mut next: Option<Position> = None;
    let mut position = start;
    let mut scanned = 0usize;
    let mut reached_end = false;
    'scan: loop {
        if position > head || scanned >= SCAN_BUDGET {
            reached_end = position > head;
            break;
        }
        let events = store
            .read_all(position, READ_BATCH)
            .await
            .map_err(status::from_store)?;
        if events.is_empty() {
            reached_end = true;
            break;
        }
        for e in &events {
            position = e.position + 1;
            scanned += 1;
            if let Some(leg) = leg_start(upcasters, e)? {
                match leg.direction {
                    Direction::Outbound => {
                        let in_range = (query.from..query.to).contains(&leg.started_at);
                        if in_range && !anchor_of.contains_key(&leg.call_id) {
                            let callees = waiting.remove(&leg.call_id).unwrap_or_default();
                            anchor_of.insert(leg.call_id.clone(), anchors.len());
                            anchors.push(Anchor {
                                caller: leg,
                                callees,
                            });
                        }
                    }
                    Direction::Inbound => match anchor_of.get(&leg.call_id) {
                        Some(&i) => anchors[i].callees.push(leg),
                        None => waiting.entry(leg.call_id.clone()).or_default().push(leg),
                    },
                }
            }
            // Settle the anchors whose window is behind the scan.
            while let Some(anchor) = anchors.get(settled) {
                if e.occurred_at_us <= anchor.caller.started_at.saturating_add(JOIN_WINDOW_US) {
                    break;
                }
                settled += 1;
                if anchor.in_domain(query.domain) {
                    records.push(settled - 1);
                    if records.len() >= query.page_size {
                        next = Some(anchor.caller.position + 1);
                        break 'scan;
                    }
                }
            }
            if e.occurred_at_us > stop_after {
                reached_end = true;
                break 'scan;
            }
        }
    }
    if next.is_none() {
        // Past the range or at the head: what is left is settled as is
        // (at the head, a callee leg not started yet is not shown).
        if reached_end {
            while let Some(anchor) = anchors.get(settled) {
                settled += 1;
                if anchor.in_domain(query.domain) {
                    records.push(settled - 1);
                    if records.len() >= query.page_size {
                        if anchors.len() > settled {
                            next = Some(anchor.caller.position + 1);
                        }
                        break;
                    }
                }
            }
        } else {
            // Out of budget: resume at the first anchor not settled, or
            // where the scan stopped.
            next = Some(
                anchors
                    .get(settled)
                    .map(|a| a.caller.position)
                    .unwrap_or(position),
            );
        }
    }
    let mut calls = Vec::with_capacity(records.len());
    for i in records {
        calls.push(record(store, upcasters, &anchors[i]).await?);
    }
    Ok(Page { calls, next })
}

/// What a leg's stream says after its `CallStarted`.
#[derive(Debug, Default)]
struct Outcome {
    answered_at: Option<Timestamp>,
    contact: Option<String>,
    ended_at: Option<Timestamp>,
    cause: Option<Cause>,
    sip_status: u16,
    hangup_side: Option<HangupSide>,
    duration_ms: u64,
    /// The leg ended with `CallForwarded`: to whom, why, and the global
    /// position of that event.
    forwarded: Option<(String, ForwardReason, Position)>,
    /// The global position of the event that ended the leg.
    ended_position: Option<Position>,
    /// The leg's user transferred the call (`CallTransferred`).
    transferred: Option<Transfer>,
}

/// What a `CallTransferred` says, for the leg's record.
#[derive(Debug)]
struct Transfer {
    new_call_id: String,
    transferee: String,
    target: String,
    kind: TransferKind,
    replaced_call_id: Option<String>,
}

async fn outcome(
    store: &SharedStore,
    upcasters: &Upcasters,
    leg: &LegStart,
) -> Result<Outcome, Status> {
    let mut outcome = Outcome::default();
    let mut version = leg.version + 1;
    let mut read = 0usize;
    // Events read after the leg's end, looking for its `CallTransferred`
    // (a transferor often hangs up before the new call is recognised).
    let mut after_end: Option<usize> = None;
    while read < LEG_READ_MAX && after_end.is_none_or(|n| n < TRANSFER_TAIL) {
        let events = store
            .read_stream(&leg.stream, version, 500)
            .await
            .map_err(status::from_store)?;
        let Some(last) = events.last() else { break };
        version = last.version + 1;
        read += events.len();
        for e in &events {
            if let Some(n) = after_end.as_mut() {
                *n += 1;
                if *n > TRANSFER_TAIL {
                    return Ok(outcome);
                }
                if e.event_type != "CallTransferred" {
                    continue;
                }
            }
            if !e.event_type.starts_with("Call") || e.event_type == "CallStarted" {
                continue;
            }
            let event = upcasters
                .decode(&e.event_type, e.schema_version, &e.data)
                .map_err(|err| {
                    Status::internal(format!("event {} v{}: {err}", e.stream, e.version))
                })?;
            match event {
                Event::User(user::Event::CallAnswered {
                    call_id,
                    contact,
                    answered_at,
                }) if call_id == leg.call_id => {
                    outcome.answered_at = Some(answered_at);
                    outcome.contact = Some(contact);
                }
                Event::User(user::Event::CallEnded {
                    call_id,
                    cause,
                    hangup_side,
                    duration_ms,
                    ended_at,
                }) if call_id == leg.call_id => {
                    outcome.ended_at = Some(ended_at);
                    outcome.cause = Some(cause);
                    outcome.hangup_side = Some(hangup_side);
                    outcome.duration_ms = duration_ms;
                    outcome.sip_status = if outcome.answered_at.is_some() {
                        200
                    } else {
                        0
                    };
                    outcome.ended_position = Some(e.position);
                    if outcome.transferred.is_some() {
                        return Ok(outcome);
                    }
                    after_end = Some(0);
                }
                Event::User(user::Event::CallTransferred {
                    call_id,
                    new_call_id,
                    transferee,
                    target,
                    kind,
                    replaced_call_id,
                    ..
                }) if call_id == leg.call_id => {
                    outcome.transferred = Some(Transfer {
                        new_call_id,
                        transferee,
                        target,
                        kind,
                        replaced_call_id,
                    });
                    if after_end.is_some() {
                        return Ok(outcome);
                    }
                }
                Event::User(user::Event::CallFailed {
                    call_id,
                    sip_status,
                    cause,
                    failed_at,
                }) if call_id == leg.call_id => {
                    outcome.ended_at = Some(failed_at);
                    outcome.cause = Some(cause);
                    outcome.sip_status = sip_status;
                    outcome.ended_position = Some(e.position);
                    return Ok(outcome);
                }
                Event::User(user::Event::CallForwarded {
                    call_id,
                    to,
                    reason,
                    forwarded_at,
                }) if call_id == leg.call_id => {
                    outcome.ended_at = Some(forwarded_at);
                    outcome.forwarded = Some((to, reason, e.position));
                    outcome.ended_position = Some(e.position);
                    return Ok(outcome);
                }
                _ => {}
            }
        }
    }
    Ok(outcome)
}

fn leg_record(leg: &LegStart, outcome: &Outcome) -> pb::CallLegRecord {
    let t = outcome.transferred.as_ref();
    pb::CallLegRecord {
        user_id: leg.user_id.clone(),
        domain_id: leg.domain_id.map(|d| d.to_string()).unwrap_or_default(),
        direction: direction(leg.direction) as i32,
        started_at: timestamp(leg.started_at),
        answered_at: outcome.answered_at.and_then(timestamp),
        ended_at: outcome.ended_at.and_then(timestamp),
        duration_ms: outcome.duration_ms,
        cause: outcome.cause.map(|c| cause(c) as i32).unwrap_or_default(),
        sip_status: u32::from(outcome.sip_status),
        hangup_side: outcome
            .hangup_side
            .map(|s| hangup_side(s) as i32)
            .unwrap_or_default(),
        contact: outcome.contact.clone().unwrap_or_default(),
        in_progress: outcome.ended_at.is_none(),
        position: leg.position,
        forwarded_to: outcome
            .forwarded
            .as_ref()
            .map(|(to, _, _)| to.clone())
            .unwrap_or_default(),
        forward_reason: outcome
            .forwarded
            .as_ref()
            .map(|(_, reason, _)| forward_reason(*reason) as i32)
            .unwrap_or_default(),
        transferred_to_call_id: t.map(|t| t.new_call_id.clone()).unwrap_or_default(),
        transferee: t.map(|t| t.transferee.clone()).unwrap_or_default(),
        transfer_target: t.map(|t| t.target.clone()).unwrap_or_default(),
        transfer_kind: t.map(|t| transfer_kind(t.kind) as i32).unwrap_or_default(),
        transfer_replaced_call_id: t
            .and_then(|t| t.replaced_call_id.clone())
            .unwrap_or_default(),
    }
}

/// The inbound leg of `call_id` started at or after `after` (a
/// `CallForwarded`'s position): the leg of the user the call was forwarded
/// to. `None` when it is not within [`FORWARD_SCAN_MAX`] events (a node
/// that stopped between the two records).
async fn forwarded_leg(
    store: &SharedStore,
    upcasters: &Upcasters,
    call_id: &str,
    after: Position,
) -> Result<Option<LegStart>, Status> {
    let mut position = after + 1;
    let mut scanned = 0usize;
    while scanned < FORWARD_SCAN_MAX {
        let events = store
            .read_all(position, READ_BATCH.min(FORWARD_SCAN_MAX - scanned))
            .await
            .map_err(status::from_store)?;
        let Some(last) = events.last() else {
            break;
        };
        position = last.position + 1;
        scanned += events.len();
        for e in &events {
            if let Some(leg) = leg_start(upcasters, e)? {
                if leg.call_id == call_id && leg.direction == Direction::Inbound {
                    return Ok(Some(leg));
                }
            }
        }
    }
    Ok(None)
}

/// The record of a call: the caller's leg says how the call went; a callee
/// leg fills in what the caller's leg does not know (yet).
async fn record(
    store: &SharedStore,
    upcasters: &Upcasters,
    anchor: &Anchor,
) -> Result<pb::CallRecord, Status> {
    let caller = outcome(store, upcasters, &anchor.caller).await?;
    let mut legs = vec![leg_record(&anchor.caller, &caller)];
    // The callee legs in the order the call went: each dialled user's leg,
    // then the legs its forwards led to. Legs of different users commit in
    // either order, so a forwarded-to leg may come first in the log; one
    // started after the join window is found by a scan after its forward.
    let mut found = Vec::with_capacity(anchor.callees.len());
    for leg in &anchor.callees {
        found.push(Some((leg.clone(), outcome(store, upcasters, leg).await?)));
    }
    let forwarded_to: Vec<String> = found
        .iter()
        .flatten()
        .filter_map(|(_, o)| {
            o.forwarded
                .as_ref()
                .map(|(to, _, _)| to.to_ascii_lowercase())
        })
        .collect();
    let mut callees = Vec::with_capacity(found.len());
    let mut order: Vec<usize> = (0..found.len()).collect();
    // Dialled legs (no forward led to them) first, in log order.
    order.sort_by_key(|&i| {
        found[i]
            .as_ref()
            .is_some_and(|(l, _)| forwarded_to.contains(&l.to.to_ascii_lowercase()))
    });
    for i in order {
        let Some((leg, mut outcome)) = found[i].take() else {
            continue;
        };
        legs.push(leg_record(&leg, &outcome));
        let mut followed = 0;
        while let Some((to, _, at)) = outcome.forwarded.clone() {
            if followed >= FORWARDS_FOLLOWED_MAX {
                break;
            }
            followed += 1;
            let known = found.iter().position(|f| {
                f.as_ref()
                    .is_some_and(|(l, _)| l.to.eq_ignore_ascii_case(&to))
            });
            let (next, next_outcome) = match known.and_then(|k| found[k].take()) {
                Some(pair) => pair,
                None => match forwarded_leg(store, upcasters, &leg.call_id, at).await? {
                    Some(next) if !legs.iter().any(|l| l.position == next.position) => {
                        let o = self::outcome(store, upcasters, &next).await?;
                        (next, o)
                    }
                    _ => break,
                },
            };
            callees.push(outcome);
            legs.push(leg_record(&next, &next_outcome));
            outcome = next_outcome;
        }
        callees.push(outcome);
    }
    // A ring group rings its members one after the other: a member's leg
    // starts when the previous one's turn ends, possibly long after the
    // join window. When the call went on after every callee leg found had
    // ended (the caller's leg was answered by none of them, or ended more
    // than a second after the last of them), the next member's leg is
    // found by a scan after the last one's end.
    let mut members_followed = 0;
    while members_followed < GROUP_MEMBERS_FOLLOWED_MAX
        && callees
            .iter()
            .all(|o| o.ended_at.is_some() && o.answered_at.is_none())
    {
        let Some(last) = callees
            .iter()
            .filter(|o| o.forwarded.is_none())
            .max_by_key(|o| o.ended_position)
        else {
            break;
        };
        let went_on = caller.answered_at.is_some()
            || caller.ended_at.is_none()
            || caller
                .ended_at
                .zip(last.ended_at)
                .is_some_and(|(call, leg)| call - leg > GROUP_GAP_US);
        let Some(after) = last.ended_position.filter(|_| went_on) else {
            break;
        };
        members_followed += 1;
        match forwarded_leg(store, upcasters, &anchor.caller.call_id, after).await? {
            Some(next) if !legs.iter().any(|l| l.position == next.position) => {
                let o = outcome(store, upcasters, &next).await?;
                legs.push(leg_record(&next, &o));
                callees.push(o);
            }
            _ => break,
        }
    }
    let answered = callees.iter().find(|o| o.answered_at.is_some());
    // A forwarded leg's end is not the call's.
    let ended = callees
        .iter()
        .find(|o| o.ended_at.is_some() && o.forwarded.is_none());
    let result = if caller.ended_at.is_some() {
        Some(&caller)
    } else {
        ended
    };
    let in_progress = caller.ended_at.is_none() || callees.iter().any(|o| o.ended_at.is_none());
    let c = &anchor.caller;
    Ok(pb::CallRecord {
        call_id: c.call_id.clone(),
        caller: c.from.clone(),
        callee: c.to.clone(),
        sip_call_id: c.sip_call_id.clone(),
        started_at: timestamp(c.started_at),
        answered_at: caller
            .answered_at
            .or(answered.and_then(|o| o.answered_at))
            .and_then(timestamp),
        ended_at: result.and_then(|o| o.ended_at).and_then(timestamp),
        duration_ms: result.map(|o| o.duration_ms).unwrap_or_default(),
        cause: result
            .and_then(|o| o.cause)
            .map(|x| cause(x) as i32)
            .unwrap_or_default(),
        sip_status: result.map(|o| u32::from(o.sip_status)).unwrap_or_default(),
        hangup_side: result
            .and_then(|o| o.hangup_side)
            .map(|s| hangup_side(s) as i32)
            .unwrap_or_default(),
        answered_contact: caller
            .contact
            .clone()
            .or_else(|| answered.and_then(|o| o.contact.clone()))
            .unwrap_or_default(),
        in_progress,
        legs,
    })
}
