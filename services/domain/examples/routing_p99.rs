//! Percentiles of the routing decision (`routing::route`) with call
//! features, for the target "routing decision p99 <= 50 µs with 1,000-rule
//! domains": the cases of `benches/routing.rs` (the same domain of 1,000
//! users, built once), each routed `ITERATIONS` times after a warm-up, every
//! call timed on its own with `Instant` (the `route` call and the freeing of
//! its plan; `Instant::now` itself adds a few tens of nanoseconds).
//! Percentiles by nearest rank.
//!
//! ```text
//! cargo run -p dialtone-domain --release --example routing_p99 [CASE...]
//! ```
//!
//! With arguments, only the cases whose names contain one of them (for
//! `perf stat` / `perf record` of one case).

#[path = "../benches/routing_cases/mod.rs"]
mod routing_cases;

use std::hint::black_box;
use std::time::{Duration, Instant};

use routing_cases::{call, check, decide, Directory};

const ITERATIONS: usize = 100_000;
const WARM_UP: usize = 10_000;
/// The target, for the verdict column.
const P99_TARGET: Duration = Duration::from_micros(50);

/// The value at nearest rank `ceil(p * n)` of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn us(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e6)
}

fn main() {
    let dir = Directory::new();
    let users = dir.users();
    println!(
        "{} users, {} ring groups, {} forwarding rules ({} with a time condition), {} on DND; \
         {ITERATIONS} timed calls per case after {WARM_UP} untimed",
        users.len() - dir.ring_groups(),
        dir.ring_groups(),
        dir.rules(),
        dir.conditions(),
        dir.dnd()
    );
    print!("{}", check(&dir, &users));
    println!();
    println!("| case | p50 µs | p99 µs | p99.9 µs | max µs | mean µs | p99 <= 50 µs |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    let mut all_met = true;
    let only: Vec<String> = std::env::args().skip(1).collect();
    for case in &dir.cases {
        if !only.is_empty() && !only.iter().any(|o| case.name.contains(o.as_str())) {
            continue;
        }
        let calls: Vec<_> = case
            .dialled
            .iter()
            .map(|&u| {
                let address = dir.address(u);
                (call(address), &users[address])
            })
            .collect();
        for i in 0..WARM_UP {
            let (call, callee) = &calls[i % calls.len()];
            black_box(decide(black_box(call), black_box(callee), black_box(&users)).ok());
        }
        let mut samples = Vec::with_capacity(ITERATIONS);
        for i in 0..ITERATIONS {
            let (call, callee) = &calls[i % calls.len()];
            let started = Instant::now();
            let decision = decide(black_box(call), black_box(callee), black_box(&users));
            drop(black_box(decision));
            samples.push(started.elapsed());
        }
        let mean = samples.iter().sum::<Duration>() / ITERATIONS as u32;
        samples.sort_unstable();
        let p99 = percentile(&samples, 0.99);
        let met = p99 <= P99_TARGET;
        all_met &= met;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            case.name,
            us(percentile(&samples, 0.50)),
            us(p99),
            us(percentile(&samples, 0.999)),
            us(samples[samples.len() - 1]),
            us(mean),
            if met { "yes" } else { "NO" }
        );
    }
    println!();
    println!(
        "verdict: {}",
        if all_met {
            "every case meets p99 <= 50 µs"
        } else {
            "some case misses p99 <= 50 µs"
        }
    );
}
