//! Criterion benches of the routing decision (`routing::route`) with call
//! features, on a domain of 1,000 users that all have forwarding rules
//! (`routing_cases`). The timed part is one `route` call on the complete
//! `Users` map, and the freeing of the plan it returns; the inputs are
//! built once. `examples/routing_p99.rs` measures percentiles of the same
//! cases (the target is a p99: "routing decision p99 <= 50 µs with
//! 1,000-rule domains").
//!
//! ```text
//! cargo bench -p dialtone-domain --bench routing
//! ```

mod routing_cases;

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use routing_cases::{call, check, decide, Directory};

fn bench_route(c: &mut Criterion) {
    let dir = Directory::new();
    let users = dir.users();
    eprintln!(
        "{} users, {} ring groups, {} forwarding rules ({} with a time condition), {} on DND",
        users.len() - dir.ring_groups(),
        dir.ring_groups(),
        dir.rules(),
        dir.conditions(),
        dir.dnd()
    );
    eprint!("{}", check(&dir, &users));

    let mut group = c.benchmark_group("route");
    group.measurement_time(Duration::from_secs(5));
    for case in &dir.cases {
        let calls: Vec<_> = case
            .dialled
            .iter()
            .map(|&u| {
                let address = dir.address(u);
                (call(address), &users[address])
            })
            .collect();
        let mut next = 0;
        group.bench_function(case.name, |b| {
            b.iter(|| {
                let (call, callee) = &calls[next];
                next = (next + 1) % calls.len();
                decide(black_box(call), black_box(callee), black_box(&users))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_route);
criterion_main!(benches);
