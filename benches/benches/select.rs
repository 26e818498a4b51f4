//! Cost of one pick, and of building a Maglev table.
//!
//! - `select/<strategy>/backends=N/healthy=P%/threads=T`: the strategy's pick on a snapshot,
//!   which is what a strategy costs.
//! - `pool_select/...`: the whole [`Pool::select`] a request pays: load the current snapshot
//!   (arc-swap), pick, and take a reference to the backend (an `Arc` clone and drop).
//!
//! `threads=2` runs the same loop on two threads against one shared pool and reports the time per
//! pick on each thread; a lock would make it grow far beyond the single-thread figure, where
//! shared atomics (the round-robin counter, the backend's reference count) add the cost of moving
//! a cache line between cores.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use lb_benches::pool;
use lb_core::{
    ConsistentHash, Context, LeastConnections, Load, Pool, PowerOfTwo, Random, RoundRobin,
    Strategy, WeightedRoundRobin,
};

/// Pool sizes measured.
const SIZES: [usize; 3] = [3, 100, 10_000];

/// Builds a pool of `n` backends, half of them unhealthy if asked.
type Build = fn(usize, bool) -> Pool;

/// Every strategy under test, by the name it has in benchmark ids.
const STRATEGIES: [(&str, Build); 8] = [
    ("round_robin", |n, half| pool(n, half, RoundRobin::new())),
    ("weighted_round_robin", |n, half| {
        pool(n, half, WeightedRoundRobin::new())
    }),
    ("least_connections", |n, half| {
        pool(n, half, LeastConnections::new())
    }),
    ("power_of_two", |n, half| {
        pool(n, half, PowerOfTwo::from_seed(1))
    }),
    ("power_of_two_peak_ewma", |n, half| {
        pool(
            n,
            half,
            PowerOfTwo::from_seed(1).with_load(Load::PeakEwma {
                default_rtt: Duration::from_millis(30),
            }),
        )
    }),
    ("random", |n, half| pool(n, half, Random::from_seed(1))),
    ("consistent_hash", |n, half| {
        pool(n, half, ConsistentHash::new())
    }),
    ("consistent_hash_bounded", |n, half| {
        pool(n, half, ConsistentHash::new().with_bounded_load(Some(1.25)))
    }),
];

/// Picks `iters` times on one snapshot: the strategy's own cost. Every pick carries a different
/// request key (strategies that do not hash ignore it).
fn pick_n(pool: &Pool, iters: u64) {
    let snapshot = pool.load();
    for i in 0..iters {
        let ctx = Context::new().with_key(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        black_box(snapshot.select(black_box(&ctx)));
    }
}

/// Selects `iters` times through the pool, as the proxy does per request.
fn pool_select_n(pool: &Pool, iters: u64) {
    let ctx = Context::new();
    for _ in 0..iters {
        black_box(pool.select(black_box(&ctx)));
    }
}

/// Times `iters` calls of `run` on one thread.
fn alone(pool: &Pool, iters: u64, run: fn(&Pool, u64)) -> Duration {
    let start = Instant::now();
    run(pool, iters);
    start.elapsed()
}

/// Two threads run `iters` calls each on one pool; returns the slower thread's time.
fn contended(pool: &Arc<Pool>, iters: u64, run: fn(&Pool, u64)) -> Duration {
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let pool = Arc::clone(pool);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                alone(&pool, iters, run)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("bench thread"))
        .max()
        .unwrap_or_default()
}

fn bench_select(c: &mut Criterion) {
    let mut group = c.benchmark_group("select");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for (name, build) in STRATEGIES {
        for n in SIZES {
            for half in [false, true] {
                let pool = Arc::new(build(n, half));
                let id = format!(
                    "{name}/backends={n}/healthy={}%",
                    if half { 50 } else { 100 }
                );
                group.bench_function(format!("{id}/threads=1"), |b| {
                    b.iter_custom(|iters| alone(&pool, iters, pick_n))
                });
                group.bench_function(format!("{id}/threads=2"), |b| {
                    b.iter_custom(|iters| contended(&pool, iters, pick_n))
                });
            }
        }
    }
    group.finish();

    let mut group = c.benchmark_group("pool_select");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for (name, build) in STRATEGIES {
        let pool = Arc::new(build(100, false));
        let id = format!("{name}/backends=100/healthy=100%");
        group.bench_function(format!("{id}/threads=1"), |b| {
            b.iter_custom(|iters| alone(&pool, iters, pool_select_n))
        });
        group.bench_function(format!("{id}/threads=2"), |b| {
            b.iter_custom(|iters| contended(&pool, iters, pool_select_n))
        });
    }
    group.finish();
}

/// Building a Maglev table, which happens once per snapshot (health change, reload).
fn bench_maglev_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev_build");
    group.measurement_time(Duration::from_secs(3));
    for n in [100, 1000] {
        let pool = pool(n, false, ConsistentHash::new());
        let snapshot = pool.load();
        let backends = snapshot.backends().to_vec();
        let eligible = snapshot.eligible().to_vec();
        let strategy = ConsistentHash::new();
        group.bench_function(format!("backends={n}"), |b| {
            b.iter(|| black_box(strategy.prepare(black_box(&backends), black_box(&eligible))))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_select, bench_maglev_build);
criterion_main!(benches);
