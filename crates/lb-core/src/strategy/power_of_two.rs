use std::time::{Duration, Instant};

use super::rng::SplitMix;
use super::{Context, Strategy};
use crate::Backend;
use crate::pool::Snapshot;

/// How [`PowerOfTwo`] measures a backend's load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Requests in flight (+ 1, the one about to start), divided by the weight.
    InFlight,
    /// Peak-EWMA latency times (requests in flight + 1), divided by the weight: the estimator of
    /// linkerd and tower's `PeakEwma`. A backend that turns slow is avoided after its first slow
    /// answer, before requests pile up on it. `default_rtt` stands in for a backend with no
    /// answer yet.
    PeakEwma {
        /// The latency assumed before the first response (tower's default is 30 ms).
        default_rtt: Duration,
    },
}

/// The less loaded of two eligible backends picked at random ("power of two choices").
///
/// How it picks: draws two distinct eligible backends and takes the one with the lower
/// [`Load`]. Mitzenmacher showed that two random choices already bring the maximum load down
/// exponentially compared with one, at O(1) cost, without the herd behaviour of always taking
/// the global minimum from a stale view (Mitzenmacher, "The Power of Two Choices in Randomized
/// Load Balancing", 2001).
///
/// Cost per pick: two draws from a lock-free generator and two backends' atomics (with peak
/// EWMA also a clock read), at any pool size.
///
/// Reads: two eligible backends' in-flight counts, weights and (with peak EWMA) latency
/// estimates; the proxy reports latencies only when this strategy asks for them.
#[derive(Debug)]
pub struct PowerOfTwo {
    rng: SplitMix,
    load: Load,
}

impl PowerOfTwo {
    /// Load by requests in flight, seeded from the operating system's randomness.
    pub fn new() -> Self {
        PowerOfTwo {
            rng: SplitMix::from_entropy(),
            load: Load::InFlight,
        }
    }

    /// The same draws for the same seed.
    pub fn from_seed(seed: u64) -> Self {
        PowerOfTwo {
            rng: SplitMix::from_seed(seed),
            load: Load::InFlight,
        }
    }

    /// Measures load this way (default [`Load::InFlight`]).
    pub fn with_load(mut self, load: Load) -> Self {
        self.load = load;
        self
    }

    /// The load of `backend`; `now` is read once per pick, and only for peak EWMA.
    fn cost(&self, backend: &Backend, now: Option<Instant>) -> f64 {
        let pending = backend.in_flight() as f64;
        let weight = backend.effective_weight() as f64;
        match self.load {
            // + 1: the request about to start, so that weights count even with nothing in flight.
            Load::InFlight => (pending + 1.0) / weight,
            Load::PeakEwma { default_rtt } => {
                let now = now.unwrap_or_else(Instant::now);
                let rtt = backend.latency_estimate(now, default_rtt).as_nanos() as f64;
                rtt * (pending + 1.0) / weight
            }
        }
    }
}

impl Default for PowerOfTwo {
    fn default() -> Self {
        PowerOfTwo::new()
    }
}

impl Strategy for PowerOfTwo {
    fn pick(&self, snapshot: &Snapshot, ctx: &Context<'_>) -> Option<usize> {
        let eligible = snapshot.eligible();
        let backends = snapshot.backends();
        let n = eligible.len();
        if n < 2 {
            return eligible
                .first()
                .copied()
                .filter(|&i| !ctx.is_excluded(&backends[i]));
        }
        let a = self.rng.below(n);
        let mut b = self.rng.below(n - 1);
        if b >= a {
            b += 1;
        }
        let (a, b) = (eligible[a], eligible[b]);
        let now = self.uses_latency().then(|| ctx.now());
        match (ctx.is_excluded(&backends[a]), ctx.is_excluded(&backends[b])) {
            (false, false) => Some(
                if self.cost(&backends[b], now) < self.cost(&backends[a], now) {
                    b
                } else {
                    a
                },
            ),
            (false, true) => Some(a),
            (true, false) => Some(b),
            // Both were tried already: the least loaded of those left.
            (true, true) => eligible
                .iter()
                .copied()
                .filter(|&i| !ctx.is_excluded(&backends[i]))
                .min_by(|&x, &y| {
                    self.cost(&backends[x], now)
                        .total_cmp(&self.cost(&backends[y], now))
                }),
        }
    }

    fn uses_latency(&self) -> bool {
        matches!(self.load, Load::PeakEwma { .. })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::Pool;

    fn pool(n: usize, strategy: PowerOfTwo) -> Pool {
        Pool::new(
            (1..=n).map(|i| format!("http://10.0.0.{i}:80").parse().unwrap()),
            strategy,
        )
        .unwrap()
    }

    #[test]
    fn never_picks_the_more_loaded_of_its_two_draws() {
        // With two backends both are always drawn: the loaded one is never picked.
        let pool = pool(2, PowerOfTwo::from_seed(5));
        let snap = pool.load();
        let _busy = snap.backends()[0].start_request();
        for _ in 0..100 {
            assert_eq!(pool.select(&Context::new()).unwrap().id(), "10.0.0.2:80");
        }
    }

    #[test]
    fn held_requests_spread_with_a_small_maximum() {
        // 1000 requests held open on 10 backends: one random choice would give a maximum of
        // ~130; two choices keep every backend within a few of the mean (100).
        let pool = pool(10, PowerOfTwo::from_seed(11));
        let held: Vec<_> = (0..1000)
            .map(|_| pool.select(&Context::new()).unwrap().start_request())
            .collect();
        let max = pool
            .load()
            .backends()
            .iter()
            .map(|b| b.in_flight())
            .max()
            .unwrap();
        assert!(max <= 103, "max {max}");
        drop(held);
    }

    #[test]
    fn peak_ewma_steers_away_from_a_slow_backend_before_requests_pile_up() {
        let pool = pool(
            2,
            PowerOfTwo::from_seed(3).with_load(Load::PeakEwma {
                default_rtt: Duration::from_millis(30),
            }),
        );
        assert!(pool.load().strategy().uses_latency());
        let now = Instant::now();
        let snap = pool.load();
        snap.backends()[0].observe_latency(Duration::from_millis(900), now);
        snap.backends()[1].observe_latency(Duration::from_millis(10), now);
        // Even with 20 requests in flight on the fast one (10 ms x 21 < 900 ms x 1).
        let _held: Vec<_> = (0..20)
            .map(|_| snap.backends()[1].start_request())
            .collect();
        for _ in 0..50 {
            assert_eq!(
                pool.select(&Context::new().at(now)).unwrap().id(),
                "10.0.0.2:80"
            );
        }
    }

    #[test]
    fn exclusions_leave_the_other_candidates() {
        let pool = pool(3, PowerOfTwo::from_seed(8));
        let snap = pool.load();
        let keys: Vec<u64> = snap.backends().iter().map(|b| b.key()).collect();
        for _ in 0..100 {
            assert_eq!(
                snap.select(&Context::new().excluding(&keys[..2]))
                    .unwrap()
                    .key(),
                keys[2]
            );
        }
        assert!(snap.select(&Context::new().excluding(&keys)).is_none());
        assert!(!PowerOfTwo::new().uses_latency());
    }
}
