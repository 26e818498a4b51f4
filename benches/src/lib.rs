//! Shared set-up for the `lb` benchmarks: pools of a given size and health.

use lb_core::{Health, Pool, Strategy};

/// A pool of `n` backends on 10.0.x.y, every other one unhealthy when `half_unhealthy`.
pub fn pool(n: usize, half_unhealthy: bool, strategy: impl Strategy) -> Pool {
    let specs = (0..n).map(|i| {
        format!("http://10.0.{}.{}:8080", i / 250, i % 250 + 1)
            .parse()
            .expect("a valid backend URL")
    });
    let pool = Pool::new(specs, strategy).expect("distinct backends");
    if half_unhealthy {
        let snapshot = pool.load();
        pool.set_health_many(
            snapshot
                .backends()
                .iter()
                .step_by(2)
                .map(|b| (&**b, Health::Unhealthy)),
        );
    }
    pool
}

/// The README's code examples, compiled (and run where not `no_run`) as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
