//! Criterion benches of the append path against SQLite in a temp dir on the
//! real disk: every iteration pays real fsyncs, so the figures are the
//! durable ones. `examples/append_load.rs` is the sustained-load companion
//! (events/s, batch sizes, latency percentiles).
//!
//! ```text
//! cargo bench -p dialtone-eventlog --bench append
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dialtone_eventlog::sqlite::{SqliteOptions, SqliteStore};
use dialtone_eventlog::{EventStore, ExpectedVersion, NewEvent};
use uuid::Uuid;

fn event() -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "ContactRefreshed".to_owned(),
        schema_version: 1,
        occurred_at_us: 1_700_000_000_000_000,
        domain_id: None,
        user_id: None,
        correlation_id: None,
        data: format!(r#"{{"pad":"{}"}}"#, "x".repeat(190)),
    }
}

/// `concurrency` appends of one event each, issued together, per iteration:
/// with 1 it is the latency of one durable append; with more, how well group
/// commit shares the fsync.
fn bench_append(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("temp dir");
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("events.db"), SqliteOptions::new("bench"))
            .expect("open"),
    );

    let mut group = c.benchmark_group("append");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    for concurrency in [1usize, 8, 64] {
        group.throughput(Throughput::Elements(concurrency as u64));
        group.bench_with_input(
            BenchmarkId::new("concurrent_1_event_appends", concurrency),
            &concurrency,
            |b, &concurrency| {
                b.iter_custom(|iterations| {
                    runtime.block_on(async {
                        let started = Instant::now();
                        for i in 0..iterations {
                            let appends = (0..concurrency).map(|w| {
                                let store = store.clone();
                                tokio::spawn(async move {
                                    store
                                        .append(
                                            &format!("bench-{concurrency}-{w}-{}", i % 16),
                                            ExpectedVersion::Any,
                                            vec![event()],
                                        )
                                        .await
                                })
                            });
                            for append in futures::future::join_all(appends).await {
                                append.expect("task").expect("append");
                            }
                        }
                        started.elapsed()
                    })
                })
            },
        );
    }
    group.finish();
    runtime.block_on(store.close()).expect("close");
}

criterion_group!(benches, bench_append);
criterion_main!(benches);
