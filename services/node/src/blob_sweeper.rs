//! The blob sweeper: deletes voicemail audio that no mailbox names and that
//! is older than a grace period (ADR 0023, "Sweeping orphans").
//!
//! # Why there are orphans
//! Audio is put (fsynced) in the blob store *before* the event naming it
//! (`VoicemailLeft`, `GreetingChanged`) is appended, and deleted only
//! *after* the event dropping it (`VoicemailDeleted`, a greeting replaced
//! or reset) is durable: so an event never names missing audio, but a
//! crash or a refused append between the two steps, or a delete that
//! fails, leaves audio nothing names. Nothing else would ever remove it.
//!
//! # What is "named"
//! A blob is kept when some mailbox names it *now*: a message in a box, or
//! a box's greeting. The node's [`AudioIndex`] (a checkpointed projection
//! of the log's voicemail events, in `dialtone-actors`) answers that for
//! any id in one lookup, so a sweep costs one pass over the blob store's
//! ids (paged, [`BlobStore::list_older_than`]) and no user actor is loaded.
//! Only ids of voicemail audio (`vm-` and 32 hex digits) are considered:
//! anything else in the store is not the sweeper's.
//!
//! # Why the grace period makes it safe
//! The race is "blob written" then "event appended": between the two, the
//! blob looks like an orphan. A sweep reads the clock (`t0`), then the
//! log's head `H`, waits until the index has folded in everything up to
//! `H`, and only then looks at blobs created before `t0 - grace`. Such a
//! blob whose event is not among the first `H` events would have an
//! append that happened after `t0`, that is more than `grace` after its
//! put was acknowledged. Ids are fresh random values, never reused, so no
//! event made later names an old blob. What is left is an assumption: a
//! save (a put, then one command to the user's actor) takes milliseconds,
//! seconds when the log is slow; nothing in the code bounds it, so the
//! grace period is the bound assumed (an hour by default, a minute at the
//! least). A save slower than that would find its audio swept, and its
//! message would play as missing (`NOT_FOUND` over the API), never crash
//! anything. The times compared are the same machine's wall clock (a
//! blob's creation time is the blob store's): a clock stepped back by
//! more than the grace period would shorten it.
//!
//! A conference's recording is named from its `ConferenceRecordingStarted`
//! on (its audio is stored when it stops): the index keeps it too.
//!
//! The other way round, a blob a mailbox names is kept however old it is:
//! the index names every message left and not deleted, and the greeting.
//!
//! # Metrics
//! `dialtone_blobs_swept_total`, `dialtone_blobs_swept_bytes_total` (orphans
//! deleted and their size), `dialtone_blobs_sweeps_total{outcome}` (`ok`,
//! `failed`); one log line per sweep.

use std::time::{Duration, Instant};

use dialtone_actors::AudioIndex;
use dialtone_domain::mailbox::AudioId;
use dialtone_eventlog::{SharedBlobStore, SharedStore};

/// Blob ids looked at per page of the blob store's listing.
const PAGE: usize = 500;

/// How long a sweep waits for the audio index to reach the log's head
/// before giving up (the next sweep tries again).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// When sweeps run and what they spare.
#[derive(Debug, Clone, Copy)]
pub struct SweepConfig {
    /// Before the first sweep, after start-up.
    pub delay: Duration,
    /// Between sweeps (from the end of one to the start of the next).
    pub interval: Duration,
    /// Blobs younger than this are never swept.
    pub grace: Duration,
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Blobs old enough to be looked at.
    pub checked: u64,
    /// Orphans deleted, and their bytes.
    pub swept: u64,
    pub swept_bytes: u64,
    /// Old enough, but named by a mailbox.
    pub named: u64,
    /// Not voicemail audio (another id format): not the sweeper's.
    pub foreign: u64,
    /// Orphans whose delete failed (tried again next sweep).
    pub failed: u64,
}

/// The sweeper's metric handles.
struct Metrics {
    swept: metrics::Counter,
    swept_bytes: metrics::Counter,
    ok: metrics::Counter,
    failed: metrics::Counter,
}

impl Metrics {
    fn new() -> Self {
        Self {
            swept: metrics::counter!("dialtone_blobs_swept_total"),
            swept_bytes: metrics::counter!("dialtone_blobs_swept_bytes_total"),
            ok: metrics::counter!("dialtone_blobs_sweeps_total", "outcome" => "ok"),
            failed: metrics::counter!("dialtone_blobs_sweeps_total", "outcome" => "failed"),
        }
    }
}

/// Runs sweeps in the background: the first after `config.delay`, then
/// every `config.interval`, until `stop` turns true.
pub fn spawn(
    store: SharedStore,
    blobs: SharedBlobStore,
    index: AudioIndex,
    config: SweepConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let metrics = Metrics::new();
        let mut wait = config.delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
            wait = config.interval;
            let started = Instant::now();
            // A sweep stopped half-way leaves only orphans for the next one.
            let result = tokio::select! {
                result = sweep(&store, &blobs, &index, config.grace, dialtone_actors::now_us()) => result,
                _ = stop.wait_for(|stop| *stop) => return,
            };
            let elapsed_ms = started.elapsed().as_millis() as u64;
            match result {
                Ok(s) => {
                    metrics.ok.increment(1);
                    metrics.swept.increment(s.swept);
                    metrics.swept_bytes.increment(s.swept_bytes);
                    tracing::info!(
                        checked = s.checked,
                        swept = s.swept,
                        swept_bytes = s.swept_bytes,
                        named = s.named,
                        foreign = s.foreign,
                        failed = s.failed,
                        elapsed_ms,
                        "blob sweep done"
                    );
                }
                Err(e) => {
                    metrics.failed.increment(1);
                    tracing::warn!(error = %e, elapsed_ms, "blob sweep failed; trying again at the next one");
                }
            }
        }
    })
}

/// One sweep at wall-clock time `now_us`: deletes every voicemail blob
/// created before `now_us - grace` that no mailbox names (see the module
/// doc for why the order of the steps matters).
pub async fn sweep(
    store: &SharedStore,
    blobs: &SharedBlobStore,
    index: &AudioIndex,
    grace: Duration,
    now_us: i64,
) -> anyhow::Result<Sweep> {
    // The clock first, then the head: every blob created before the cutoff
    // had its put acknowledged more than `grace` before the head was read.
    let cutoff_us = now_us.saturating_sub(i64::try_from(grace.as_micros()).unwrap_or(i64::MAX));
    let head = store.head_position();
    if !index.caught_up(head, CATCH_UP_TIMEOUT).await {
        anyhow::bail!(
            "the voicemail audio index is at position {} of {head} after {} s",
            index.position(),
            CATCH_UP_TIMEOUT.as_secs()
        );
    }
    let mut sweep = Sweep::default();
    let mut after: Option<String> = None;
    loop {
        let page = blobs
            .list_older_than(cutoff_us, after.as_deref(), PAGE)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        for blob in page {
            sweep.checked += 1;
            if AudioId::parse(&blob.id).is_err() {
                sweep.foreign += 1;
                continue;
            }
            if index.names(&blob.id) {
                sweep.named += 1;
                continue;
            }
            match blobs.delete(&blob.id).await {
                Ok(true) => {
                    sweep.swept += 1;
                    sweep.swept_bytes += blob.size;
                    tracing::debug!(id = %blob.id, size = blob.size, created_at_us = blob.created_at_us, "swept orphaned audio");
                }
                // Deleted meanwhile (a DeleteMessage finishing its job).
                Ok(false) => {}
                Err(dialtone_eventlog::Error::Closed) => {
                    anyhow::bail!("the blob store closed during the sweep")
                }
                Err(e) => {
                    sweep.failed += 1;
                    tracing::warn!(id = %blob.id, error = %e, "cannot delete orphaned audio");
                }
            }
        }
    }
    Ok(sweep)
}
