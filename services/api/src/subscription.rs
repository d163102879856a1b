//! The engine behind `EventService.Subscribe`: catch-up from the log, then
//! live, with filters and checkpoints.
//!
//! # How delivery works
//! One task per subscriber reads the log by global position
//! ([`EventStore::read_all`], a page at a time), keeps the events that match
//! its filter, converts them and hands them to the gRPC response through a
//! small bounded queue. When a read comes back empty the subscriber has
//! caught up: it waits on the store's head watch (a doorbell only) and
//! reads again. The catch-up/live switch is therefore not a switch at all —
//! the same read-by-position loop runs throughout — so there is no gap and
//! no duplicate, whatever the append rate.
//!
//! Subscribers reading the same part of the log (those following the head,
//! or a group catching up) share their reads and their encoding through a
//! [`LogCache`]: a read-through cache of recently read blocks of the log,
//! each event with its response message encoded once. It is filled only
//! from `read_all` results, contiguously, and looked up by position; a
//! position it does not hold is read from the log. It is a cache of the
//! log, not a channel: nothing is pushed into it that a reader could miss.
//!
//! Nothing is buffered per subscriber beyond the bounded queue and HTTP/2's
//! flow-control window, so a subscriber that stops reading costs a parked
//! task and never slows appends or other subscribers: it just falls behind
//! and reads from the log when it resumes. Once it has been live, a
//! subscriber that falls more than [`SubscriptionConfig::max_lag`] events
//! behind the head is ended with `RESOURCE_EXHAUSTED` and the position to
//! resume from (catching up from an old position is never "lag": it is
//! reading history).
//!
//! [`EventStore::read_all`]: dialtone_eventlog::EventStore::read_all

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;

use dialtone_domain::event::{category_of, EventCategory, Upcasters};
use dialtone_eventlog::{Position, RecordedEvent, SharedStore};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};
use uuid::Uuid;

use crate::convert;
use crate::pb::{self, subscribe_response::Message};

/// Trailer naming the position a subscriber should resume from when its
/// stream ends with an error.
pub const RESUME_POSITION_TRAILER: &str = "dialtone-resume-position";

/// Settings of the subscription engine. `Default` suits a single node.
#[derive(Debug, Clone)]
pub struct SubscriptionConfig {
    /// A subscriber that has caught up once and then falls more than this
    /// many events behind the head (head position − position scanned) is
    /// ended with `RESOURCE_EXHAUSTED`. 0: no limit.
    pub max_lag: u64,
    /// Default interval of checkpoints (a request may choose its own).
    pub checkpoint_interval: Duration,
    /// A checkpoint is also sent after this many events were scanned
    /// without one matching the filter, whatever the interval.
    pub checkpoint_after_events: u64,
    /// Events read from the log per call.
    pub page_size: usize,
    /// Messages queued per subscriber ahead of the gRPC stream.
    pub queue: usize,
    /// How often a subscriber blocked on a slow client checks its lag and
    /// whether the server is stopping.
    pub lag_check_interval: Duration,
    /// Events kept in the shared [`LogCache`], in blocks of 1024 (0: no
    /// cache; every subscriber reads the log itself). About 1 KB per event
    /// (the stored event and its encoded response), so the default of
    /// 32,768 is some 32 MB at most.
    pub cache_events: usize,
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        SubscriptionConfig {
            max_lag: 1_000_000,
            checkpoint_interval: Duration::from_secs(1),
            checkpoint_after_events: 10_000,
            page_size: 1000,
            queue: 256,
            lag_check_interval: Duration::from_millis(200),
            cache_events: 32_768,
        }
    }
}

/// Which events a subscriber wants: each non-empty set must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub domains: HashSet<Uuid>,
    pub users: HashSet<Uuid>,
    pub event_types: HashSet<String>,
    pub categories: HashSet<EventCategory>,
}

impl Filter {
    /// Decided on the envelope alone: events that do not match are never
    /// decoded.
    pub fn matches(&self, e: &RecordedEvent) -> bool {
        (self.domains.is_empty() || e.domain_id.is_some_and(|d| self.domains.contains(&d)))
            && (self.users.is_empty() || e.user_id.is_some_and(|u| self.users.contains(&u)))
            && (self.event_types.is_empty() || self.event_types.contains(&e.event_type))
            && (self.categories.is_empty()
                || category_of(&e.event_type).is_some_and(|c| self.categories.contains(&c)))
    }
}

/// One validated subscription.
pub struct Subscription {
    pub store: SharedStore,
    /// Position of the first event to deliver.
    pub from: Position,
    /// Send a checkpoint at `from - 1` first, so that the client knows where
    /// the subscription starts (for "from now", which it cannot know).
    pub announce_start: bool,
    pub filter: Filter,
    pub format: Format,
    pub checkpoint_interval: Duration,
    pub config: SubscriptionConfig,
    pub upcasters: Arc<Upcasters>,
    /// Shared with the other subscriptions of the same service.
    pub cache: Arc<LogCache>,
    /// Becomes true when the server stops.
    pub stopping: Option<watch::Receiver<bool>>,
}

/// A message of a subscription's response stream: an event's response
/// already encoded (shared by every subscriber that gets it), or a message
/// to encode.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// An encoded `SubscribeResponse`.
    Encoded(Bytes),
    Message(Box<pb::SubscribeResponse>),
}

impl Outgoing {
    /// The message itself (decoding an encoded one).
    pub fn into_message(self) -> Result<pb::SubscribeResponse, Status> {
        match self {
            Outgoing::Message(m) => Ok(*m),
            Outgoing::Encoded(bytes) => pb::SubscribeResponse::decode(bytes)
                .map_err(|e| Status::internal(format!("cannot decode a cached event: {e}"))),
        }
    }
}

/// Which forms of an event's data a subscriber gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Both = 0,
    Typed = 1,
    Json = 2,
}

impl Format {
    fn json(self) -> bool {
        matches!(self, Format::Both | Format::Json)
    }

    fn typed(self) -> bool {
        matches!(self, Format::Both | Format::Typed)
    }
}

/// A stored event with its response, encoded once per format on demand.
pub struct Cached {
    pub record: RecordedEvent,
    encoded: [OnceLock<Bytes>; 3],
}

impl Cached {
    fn new(record: RecordedEvent) -> Arc<Self> {
        Arc::new(Cached {
            record,
            encoded: Default::default(),
        })
    }

    /// The encoded `SubscribeResponse` carrying this event in `format`.
    pub fn encoded(&self, format: Format, upcasters: &Upcasters) -> Bytes {
        self.encoded[format as usize]
            .get_or_init(|| {
                let event = convert::subscribed_event(
                    self.record.clone(),
                    upcasters,
                    format.json(),
                    format.typed(),
                );
                let response = pb::SubscribeResponse {
                    message: Some(Message::Event(event)),
                };
                Bytes::from(response.encode_to_vec())
            })
            .clone()
    }
}

/// Events per cache block (blocks are aligned on multiples of it).
const BLOCK: u64 = 1024;

/// Recently read events of the log, shared by the subscriptions of one
/// service so that subscribers reading the same part of the log — those
/// following the head, or a group catching up together — read and encode
/// each event once, not once each.
///
/// The log is cut into aligned blocks of [`BLOCK`] positions; the cache
/// keeps the most recently used blocks. A block is filled only from
/// `read_all`, from its first position on and contiguously (the block at
/// the head is partial and grows as it is read again), and one reader at a
/// time fills a block while the others wait for it.
pub struct LogCache {
    blocks: Mutex<Blocks>,
    max_blocks: usize,
}

#[derive(Default)]
struct Blocks {
    map: std::collections::HashMap<u64, Arc<Block>>,
    /// Ticks of last use, for eviction.
    clock: u64,
}

#[derive(Default)]
struct Block {
    /// The block's events from its first position on, without gaps.
    events: Mutex<Vec<Arc<Cached>>>,
    /// Held while reading the log to extend the block.
    filling: tokio::sync::Mutex<()>,
    last_used: std::sync::atomic::AtomicU64,
}

impl Block {
    fn slice(&self, offset: usize, max: usize) -> Vec<Arc<Cached>> {
        match self.events.lock() {
            Ok(events) => events.iter().skip(offset).take(max).cloned().collect(),
            Err(_) => Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.events.lock().map(|e| e.len()).unwrap_or(0)
    }
}

impl LogCache {
    /// A cache of about `events` events (0: none).
    pub fn new(events: usize) -> Self {
        LogCache {
            blocks: Mutex::new(Blocks::default()),
            max_blocks: events.div_ceil(BLOCK as usize),
        }
    }

    /// The block with number `id`, created empty if needed (evicting the
    /// least recently used one beyond the limit).
    fn block(&self, id: u64) -> Option<Arc<Block>> {
        let mut blocks = self.blocks.lock().ok()?;
        blocks.clock += 1;
        let now = blocks.clock;
        if let Some(block) = blocks.map.get(&id) {
            block
                .last_used
                .store(now, std::sync::atomic::Ordering::Relaxed);
            return Some(block.clone());
        }
        if blocks.map.len() >= self.max_blocks {
            let oldest = blocks
                .map
                .iter()
                .min_by_key(|(_, b)| b.last_used.load(std::sync::atomic::Ordering::Relaxed))
                .map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                blocks.map.remove(&oldest);
            }
        }
        let block = Arc::new(Block::default());
        block
            .last_used
            .store(now, std::sync::atomic::Ordering::Relaxed);
        blocks.map.insert(id, block.clone());
        Some(block)
    }

    /// Events from position `from` on (at most `max`, and not beyond the
    /// end of `from`'s block), in order, from the cache or else the log.
    pub async fn read(
        &self,
        store: &SharedStore,
        from: Position,
        max: usize,
    ) -> dialtone_eventlog::Result<Vec<Arc<Cached>>> {
        let block = match self.max_blocks {
            0 => None,
            _ => self.block(from / BLOCK),
        };
        let Some(block) = block else {
            let events = store.read_all(from, max).await?;
            return Ok(events.into_iter().map(Cached::new).collect());
        };
        // Positions start at 1, so block 0 starts at 1 and the others at a
        // multiple of BLOCK; every block ends before the next multiple.
        let id = from / BLOCK;
        let first = (id * BLOCK).max(1);
        let offset = (from - first) as usize;
        let hit = block.slice(offset, max);
        if !hit.is_empty() {
            return Ok(hit);
        }
        if from > store.head_position() {
            // Caught up (the usual case once a wake-up has been served):
            // nothing to read, no need to queue for the block.
            return Ok(Vec::new());
        }
        let _filling = block.filling.lock().await;
        let hit = block.slice(offset, max);
        if !hit.is_empty() {
            return Ok(hit);
        }
        // Extend the block from where it ends up to its last position.
        let start = first + block.len() as u64;
        let end = (id + 1) * BLOCK;
        let events = store.read_all(start, (end - start) as usize).await?;
        if let Ok(mut cached) = block.events.lock() {
            cached.extend(events.into_iter().map(Cached::new));
        }
        Ok(block.slice(offset, max))
    }
}

type Item = Result<Outgoing, Status>;

/// How a subscription ended.
enum End {
    /// The client went away: nothing to send.
    ClientGone,
    Status(Status),
}

impl Subscription {
    /// Starts the subscriber's task; the receiver is the gRPC response.
    pub fn start(self) -> mpsc::Receiver<Item> {
        // One extra slot, reserved up front for the final status, so that
        // it can be queued even when the client has stopped reading.
        let (tx, rx) = mpsc::channel(self.config.queue.max(1) + 1);
        tokio::spawn(async move {
            let Ok(last_slot) = tx.clone().reserve_owned().await else {
                return;
            };
            metrics::gauge!("dialtone_api_subscriptions").increment(1.0);
            let end = Pump::new(self, tx).run().await;
            metrics::gauge!("dialtone_api_subscriptions").decrement(1.0);
            let reason = match &end {
                End::ClientGone => "client_gone",
                End::Status(s) if s.code() == Code::ResourceExhausted => "lagged",
                End::Status(s) if s.code() == Code::Unavailable => "unavailable",
                End::Status(_) => "error",
            };
            metrics::counter!("dialtone_api_subscriptions_ended_total", "reason" => reason)
                .increment(1);
            if let End::Status(status) = end {
                last_slot.send(Err(status));
            }
        });
        rx
    }
}

struct Pump {
    sub: Subscription,
    tx: mpsc::Sender<Item>,
    /// Position of the next event to consider: every event before it has
    /// been scanned and, if it matched, queued. Where a resume starts.
    next: Position,
    /// The last position the client was told about (event or checkpoint).
    told: Position,
    live: bool,
    last_checkpoint: Instant,
    scanned_since_told: u64,
}

impl Pump {
    fn new(sub: Subscription, tx: mpsc::Sender<Item>) -> Self {
        let next = sub.from.max(1);
        Pump {
            sub,
            tx,
            next,
            told: next - 1,
            live: false,
            last_checkpoint: Instant::now(),
            scanned_since_told: 0,
        }
    }

    fn end(&self, code: Code, reason: &str) -> End {
        let message = format!(
            "{reason}; resume with from_position {} (every event before it was sent)",
            self.next
        );
        let mut trailers = MetadataMap::new();
        if let Ok(value) = self.next.to_string().parse() {
            trailers.insert(RESUME_POSITION_TRAILER, value);
        }
        End::Status(Status::with_metadata(code, message, trailers))
    }

    fn stopping_now(&self) -> bool {
        // A dropped sender means the server is gone too.
        self.sub
            .stopping
            .as_ref()
            .is_some_and(|s| *s.borrow() || s.has_changed().is_err())
    }

    async fn run(mut self) -> End {
        let store = self.sub.store.clone();
        let mut head = store.watch_head();
        let page_size = self.sub.config.page_size.max(1);
        if self.sub.announce_start {
            // "Now" is the head: the subscription is live from the start.
            self.live = true;
            if let Err(end) = self.checkpoint().await {
                return end;
            }
        }
        loop {
            if self.stopping_now() {
                return self.end(Code::Unavailable, "the server is shutting down");
            }
            // Mark the head seen *before* reading, so that a commit landing
            // after the read still wakes the wait below.
            head.borrow_and_update();
            let events = match self.sub.cache.read(&store, self.next, page_size).await {
                Ok(events) => events,
                Err(e) => {
                    return self.end(
                        Code::Unavailable,
                        &format!("cannot read the event log: {e}"),
                    )
                }
            };
            if events.is_empty() {
                if !self.live {
                    self.live = true;
                    if let Err(end) = self.checkpoint().await {
                        return end;
                    }
                } else if let Err(end) = self.checkpoint_if_due().await {
                    return end;
                }
                if let Err(end) = self.wait_for_events(&mut head).await {
                    return end;
                }
                continue;
            }
            for e in events {
                let position = e.record.position;
                if self.sub.filter.matches(&e.record) {
                    let encoded = e.encoded(self.sub.format, &self.sub.upcasters);
                    if let Err(end) = self.send(Outgoing::Encoded(encoded)).await {
                        return end;
                    }
                    self.told = position;
                    self.scanned_since_told = 0;
                } else {
                    self.scanned_since_told += 1;
                }
                self.next = position + 1;
            }
            let lag = store.head_position().saturating_sub(self.next - 1);
            metrics::histogram!("dialtone_api_subscription_lag_events").record(lag as f64);
            if let Some(end) = self.lagged(lag) {
                return end;
            }
            if let Err(end) = self.checkpoint_if_due().await {
                return end;
            }
        }
    }

    /// The end of a live subscriber that is too far behind.
    fn lagged(&self, lag: u64) -> Option<End> {
        let max = self.sub.config.max_lag;
        (self.live && max > 0 && lag > max).then(|| {
            self.end(
                Code::ResourceExhausted,
                &format!("subscriber fell {lag} events behind the head (limit {max})"),
            )
        })
    }

    /// Parks until the head moves, the client leaves, the server stops, or
    /// a pending checkpoint is due.
    async fn wait_for_events(&mut self, head: &mut watch::Receiver<Position>) -> Result<(), End> {
        let pending = self.next - 1 > self.told;
        let due = self.last_checkpoint + self.sub.checkpoint_interval;
        let mut stopping = self.sub.stopping.clone();
        tokio::select! {
            changed = head.changed() => {
                if changed.is_err() {
                    return Err(self.end(Code::Unavailable, "the event log is closed"));
                }
            }
            () = self.tx.closed() => return Err(End::ClientGone),
            () = stopped(&mut stopping) => {}
            () = tokio::time::sleep_until(due), if pending => {
                self.checkpoint().await?;
            }
        }
        Ok(())
    }

    async fn checkpoint_if_due(&mut self) -> Result<(), End> {
        let pending = self.next - 1 > self.told;
        let due = self.last_checkpoint.elapsed() >= self.sub.checkpoint_interval
            || self.scanned_since_told >= self.sub.config.checkpoint_after_events;
        if pending && due {
            self.checkpoint().await?;
        }
        Ok(())
    }

    async fn checkpoint(&mut self) -> Result<(), End> {
        let position = self.next - 1;
        let checkpoint = pb::Checkpoint {
            position,
            head_position: self.sub.store.head_position().max(position),
            live: self.live,
        };
        let message = pb::SubscribeResponse {
            message: Some(Message::Checkpoint(checkpoint)),
        };
        self.send(Outgoing::Message(Box::new(message))).await?;
        self.told = position;
        self.scanned_since_told = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// Queues one message, waiting while the client is not reading; while
    /// waiting, checks the lag limit and whether the server is stopping.
    async fn send(&mut self, response: Outgoing) -> Result<(), End> {
        // The common case, without timers: there is room in the queue.
        match self.tx.try_reserve() {
            Ok(permit) => {
                permit.send(Ok(response));
                return Ok(());
            }
            Err(mpsc::error::TrySendError::Closed(())) => return Err(End::ClientGone),
            Err(mpsc::error::TrySendError::Full(())) => {}
        }
        loop {
            let mut stopping = self.sub.stopping.clone();
            tokio::select! {
                biased;
                permit = self.tx.reserve() => {
                    let Ok(permit) = permit else {
                        return Err(End::ClientGone);
                    };
                    permit.send(Ok(response));
                    return Ok(());
                }
                () = stopped(&mut stopping) => {
                    return Err(self.end(Code::Unavailable, "the server is shutting down"));
                }
                () = tokio::time::sleep(self.sub.config.lag_check_interval) => {
                    let lag = self.sub.store.head_position().saturating_sub(self.next - 1);
                    if let Some(end) = self.lagged(lag) {
                        return Err(end);
                    }
                }
            }
        }
    }
}

/// Completes when the server stops (never without a stop signal).
async fn stopped(stopping: &mut Option<watch::Receiver<bool>>) {
    match stopping {
        Some(rx) => {
            // A dropped sender means the server is gone too.
            let _ = rx.wait_for(|stop| *stop).await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dialtone_eventlog::sqlite::{SqliteOptions, SqliteStore};
    use dialtone_eventlog::{ExpectedVersion, NewEvent};

    fn events(n: usize) -> Vec<NewEvent> {
        (0..n)
            .map(|i| NewEvent {
                event_id: Uuid::new_v4(),
                event_type: "UserEnabled".into(),
                schema_version: 1,
                occurred_at_us: i as i64,
                domain_id: None,
                user_id: None,
                correlation_id: None,
                data: "{}".into(),
            })
            .collect()
    }

    async fn read_through(cache: &LogCache, store: &SharedStore, from: u64) -> Vec<u64> {
        let mut positions = Vec::new();
        let mut next = from;
        loop {
            let page = cache.read(store, next, 300).await.unwrap();
            let Some(last) = page.last() else {
                return positions;
            };
            next = last.record.position + 1;
            positions.extend(page.iter().map(|e| e.record.position));
        }
    }

    #[tokio::test]
    async fn the_cache_reads_exactly_what_the_log_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore = Arc::new(
            SqliteStore::open(&dir.path().join("e.db"), SqliteOptions::default()).unwrap(),
        );
        // Three blocks; the head block partial, then growing.
        let cache = LogCache::new(2 * BLOCK as usize);
        store
            .append("s", ExpectedVersion::Any, events(1500))
            .await
            .unwrap();
        let all: Vec<u64> = (1..=1500).collect();
        assert_eq!(read_through(&cache, &store, 1).await, all);
        assert_eq!(read_through(&cache, &store, 1023).await, all[1022..]);
        assert_eq!(read_through(&cache, &store, 1024).await, all[1023..]);
        assert!(read_through(&cache, &store, 1501).await.is_empty());
        store
            .append("s", ExpectedVersion::Any, events(1000))
            .await
            .unwrap();
        let all: Vec<u64> = (1..=2500).collect();
        assert_eq!(read_through(&cache, &store, 1400).await, all[1399..]);
        // Block 0 was evicted (two blocks kept); it is read again.
        assert_eq!(read_through(&cache, &store, 1).await, all);
        for from in [1, 2, 700, 1023, 1024, 1025, 2047, 2048, 2049, 2500] {
            let page = cache.read(&store, from, 5).await.unwrap();
            let want = store.read_all(from, 5).await.unwrap();
            let got: Vec<_> = page.iter().map(|e| e.record.clone()).collect();
            assert_eq!(got, want[..got.len()], "from {from}");
            assert!(!got.is_empty());
        }
        // Without a cache: straight from the log.
        let none = LogCache::new(0);
        assert_eq!(read_through(&none, &store, 1).await, all);
    }
}
