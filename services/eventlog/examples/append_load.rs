//! Append load test for the SQLite event log.
//!
//! N concurrent writers (tokio tasks), each appending K-event appends (1 by
//! default) to its own streams with an exact expected version, one append in flight per
//! writer, against a store in a temp dir on the real disk. Prints events/s,
//! events per commit and append latency.
//!
//! ```text
//! cargo run -p dialtone-eventlog --release --example append_load -- \
//!     --writers 64 --seconds 10
//! ```
//!
//! Options: `--writers N` (64), `--seconds S` (10), `--warmup S` (2),
//! `--streams N` streams per writer (8), `--events-per-append K` (1),
//! `--v7-ids` (time-ordered event ids, as the actors use), `--data-bytes B` (200),
//! `--dir PATH` (a new temp dir under it; default the system temp dir),
//! `--max-batch-events N`, `--max-batch-appends N`, `--gather-us N`,
//! `--index-chunk N` (events per stream-index chunk).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use dialtone_eventlog::sqlite::{SqliteOptions, SqliteStore};
use dialtone_eventlog::{EventStore, ExpectedVersion, NewEvent};
use uuid::Uuid;

struct Args {
    writers: usize,
    seconds: f64,
    warmup: f64,
    streams: usize,
    events_per_append: usize,
    data_bytes: usize,
    dir: Option<PathBuf>,
    v7_ids: bool,
    options: SqliteOptions,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        writers: 64,
        seconds: 10.0,
        warmup: 2.0,
        streams: 8,
        events_per_append: 1,
        data_bytes: 200,
        dir: None,
        v7_ids: false,
        options: SqliteOptions::new("bench"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--writers" => args.writers = value()?.parse()?,
            "--seconds" => args.seconds = value()?.parse()?,
            "--warmup" => args.warmup = value()?.parse()?,
            "--streams" => args.streams = value()?.parse()?,
            "--events-per-append" => args.events_per_append = value()?.parse::<usize>()?.max(1),
            "--data-bytes" => args.data_bytes = value()?.parse()?,
            "--dir" => args.dir = Some(value()?.into()),
            "--v7-ids" => args.v7_ids = true,
            "--max-batch-events" => args.options.max_batch_events = value()?.parse()?,
            "--max-batch-appends" => args.options.max_batch_appends = value()?.parse()?,
            "--gather-us" => {
                args.options.max_gather_delay = Duration::from_micros(value()?.parse()?)
            }
            "--index-chunk" => args.options.index_chunk_events = value()?.parse()?,
            other => bail!("unknown option {other}"),
        }
    }
    Ok(args)
}

/// User + system CPU seconds of this process (Linux), to tell CPU-bound from
/// fsync-bound runs.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of proc(5), counted after the name: indexes 11, 12.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Bytes this process caused to be sent to the storage layer (Linux).
fn written_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes: "))?
        .trim()
        .parse()
        .ok()
}

/// The disk's own durable-write latency at the same place, for context:
/// 200 times, overwrite 4 KiB and fsync (what a 1-page commit costs at least).
fn probe_fsync(dir: &std::path::Path) -> anyhow::Result<(f64, f64)> {
    use std::io::{Seek, SeekFrom, Write};
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path)?;
    file.write_all(&vec![0u8; 1 << 20])?;
    file.sync_all()?;
    let block = vec![7u8; 4096];
    let mut micros = Vec::with_capacity(200);
    for i in 0..200u64 {
        let started = Instant::now();
        file.seek(SeekFrom::Start((i % 256) * 4096))?;
        file.write_all(&block)?;
        file.sync_all()?;
        micros.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    drop(file);
    std::fs::remove_file(&path)?;
    micros.sort_unstable();
    Ok((
        f64::from(percentile(&micros, 0.5)) / 1000.0,
        f64::from(percentile(&micros, 0.99)) / 1000.0,
    ))
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&base).with_context(|| format!("temp dir in {base:?}"))?;
    let path = dir.path().join("events.db");
    let (fsync_p50, fsync_p99) = probe_fsync(dir.path())?;
    let store = Arc::new(SqliteStore::open(&path, args.options.clone())?);
    println!(
        "append_load: {} writers x {}-event appends ({} ids), {} streams each, {} data bytes, \
         {}s (+{}s warmup), db {}",
        args.writers,
        args.events_per_append,
        if args.v7_ids { "v7" } else { "v4" },
        args.streams,
        args.data_bytes,
        args.seconds,
        args.warmup,
        path.display()
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "disk: 4 KiB write + fsync p50 {fsync_p50:.2} ms, p99 {fsync_p99:.2} ms; load average {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "options: max_batch_events={} max_batch_appends={} max_gather_delay={:?}",
        args.options.max_batch_events,
        args.options.max_batch_appends,
        args.options.max_gather_delay
    );

    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let data = format!(
        r#"{{"pad":"{}"}}"#,
        "x".repeat(args.data_bytes.saturating_sub(10))
    );
    let writers: Vec<_> = (0..args.writers)
        .map(|w| {
            let store = store.clone();
            let stop = stop.clone();
            let measuring = measuring.clone();
            let data = data.clone();
            let v7_ids = args.v7_ids;
            let per_append = args.events_per_append;
            let streams: Vec<String> = (0..args.streams)
                .map(|s| {
                    format!(
                        "user-{}",
                        Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("{w}-{s}").as_bytes())
                    )
                })
                .collect();
            tokio::spawn(async move {
                let mut versions: Vec<Option<u64>> = vec![None; streams.len()];
                let mut latencies_us: Vec<u32> = Vec::with_capacity(1 << 16);
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let s = i % streams.len();
                    i += 1;
                    let expected =
                        versions[s].map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                    let batch: Vec<NewEvent> = (0..per_append)
                        .map(|_| NewEvent {
                            event_id: if v7_ids {
                                Uuid::now_v7()
                            } else {
                                Uuid::new_v4()
                            },
                            event_type: "ContactRefreshed".to_owned(),
                            schema_version: 1,
                            occurred_at_us: 1_700_000_000_000_000 + i as i64,
                            domain_id: None,
                            user_id: None,
                            correlation_id: None,
                            data: data.clone(),
                        })
                        .collect();
                    let started = Instant::now();
                    let outcome = store.append(&streams[s], expected, batch).await?;
                    let micros = started.elapsed().as_micros();
                    versions[s] = Some(outcome.last_version);
                    if measuring.load(Ordering::Relaxed) {
                        latencies_us.push(u32::try_from(micros).unwrap_or(u32::MAX));
                    }
                }
                anyhow::Ok(latencies_us)
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    let before = store.stats();
    let cpu_before = cpu_seconds();
    let written_before = written_bytes();
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let after = store.stats();
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = cpu_seconds();
    let written_after = written_bytes();
    stop.store(true, Ordering::Relaxed);

    let mut latencies = Vec::new();
    for writer in writers {
        latencies.extend(writer.await??);
    }
    store.close().await?;
    latencies.sort_unstable();

    let events = after.events - before.events;
    let commits = after.commits - before.commits;
    println!(
        "events/s:        {:.0} ({:.0} appends/s)",
        events as f64 / elapsed,
        (after.appends - before.appends) as f64 / elapsed
    );
    println!(
        "commits/s:       {:.0} (failed batches: {})",
        commits as f64 / elapsed,
        after.failed_batches
    );
    println!(
        "events/commit:   mean {:.1}, max {} (max since open)",
        events as f64 / commits.max(1) as f64,
        after.max_batch_events
    );
    println!(
        "append latency:  p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} appends)",
        f64::from(percentile(&latencies, 0.50)) / 1000.0,
        f64::from(percentile(&latencies, 0.99)) / 1000.0,
        f64::from(latencies.last().copied().unwrap_or(0)) / 1000.0,
        latencies.len()
    );
    let share = |d: Duration| 100.0 * d.as_secs_f64() / elapsed;
    println!(
        "writer thread:   {:.0}% inserting (of which {:.0}% indexing), {:.0}% committing \
         (WAL write + fsync), {:.0}% checkpointing, rest waiting for appends",
        share(after.write_time - before.write_time),
        share(after.index_time - before.index_time),
        share(after.commit_time - before.commit_time),
        share(after.checkpoint_time - before.checkpoint_time)
    );
    if let (Some(a), Some(b)) = (written_before, written_after) {
        println!(
            "disk writes:     {:.1} MB/s, {:.0} bytes/event",
            (b - a) as f64 / elapsed / 1e6,
            (b - a) as f64 / events.max(1) as f64
        );
    }
    let wal_bytes = (after.wal_frames - before.wal_frames) * (after.page_size + 24);
    println!(
        "WAL writes:      {:.0} bytes/event, {:.1} pages/commit ({} B pages)",
        wal_bytes as f64 / events.max(1) as f64,
        (after.wal_frames - before.wal_frames) as f64 / commits.max(1) as f64,
        after.page_size
    );
    if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
        println!(
            "cpu:             {:.2} cores busy on average",
            (b - a) / elapsed
        );
    }
    Ok(())
}
