use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Context, Strategy};
use crate::pool::Snapshot;

/// The eligible backend with the fewest requests in flight for its weight.
///
/// How it picks: scans the eligible backends for the lowest `(in_flight + 1) / weight` (compared by
/// cross-multiplying, no division), starting from a position that advances by one per pick, so
/// that equal backends are picked in turn: with no request in flight it is exactly round robin.
/// HAProxy's `leastconn` and nginx's `least_conn` pick the same way.
///
/// Cost per pick: one atomic load per eligible backend, O(n): cheap for tens of backends, and
/// the strategy to avoid for thousands (power of two choices gets most of the benefit in O(1)).
///
/// Reads: each eligible backend's in-flight count and weight.
#[derive(Debug, Default)]
pub struct LeastConnections {
    next: AtomicUsize,
}

impl LeastConnections {
    /// A new strategy; the first tie goes to the first eligible backend.
    pub fn new() -> Self {
        LeastConnections::default()
    }
}

impl Strategy for LeastConnections {
    fn pick(&self, snapshot: &Snapshot, ctx: &Context<'_>) -> Option<usize> {
        let eligible = snapshot.eligible();
        let n = eligible.len();
        if n == 0 {
            return None;
        }
        let backends = snapshot.backends();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(usize, u64, u64)> = None;
        for k in 0..n {
            let i = eligible[(start + k) % n];
            let backend = &backends[i];
            if ctx.is_excluded(backend) {
                continue;
            }
            // Counting the request about to start (+ 1) lets weights, and slow start's ramp, matter
            // even when nothing is in flight (Envoy's least-request does the same).
            let (load, weight) = (backend.in_flight() + 1, backend.effective_weight());
            match best {
                // load / weight < best_load / best_weight
                Some((_, best_load, best_weight))
                    if u128::from(load) * u128::from(best_weight)
                        >= u128::from(best_load) * u128::from(weight) => {}
                _ => best = Some((i, load, weight)),
            }
        }
        best.map(|(i, _, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::Pool;

    fn pool(specs: &[&str]) -> Pool {
        Pool::new(
            specs.iter().map(|s| s.parse().unwrap()),
            LeastConnections::new(),
        )
        .unwrap()
    }

    #[test]
    fn with_nothing_in_flight_it_is_round_robin() {
        let pool = pool(&[
            "http://10.0.0.1:80",
            "http://10.0.0.2:80",
            "http://10.0.0.3:80",
        ]);
        let order: Vec<String> = (0..6)
            .map(|_| pool.select(&Context::new()).unwrap().id().to_owned())
            .collect();
        assert_eq!(
            order,
            ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"].repeat(2)
        );
    }

    #[test]
    fn the_least_loaded_backend_wins() {
        let pool = pool(&[
            "http://10.0.0.1:80",
            "http://10.0.0.2:80",
            "http://10.0.0.3:80",
        ]);
        let snap = pool.load();
        let b = snap.backends();
        let _held = [
            b[0].start_request(),
            b[0].start_request(),
            b[2].start_request(),
        ];
        for _ in 0..5 {
            assert_eq!(pool.select(&Context::new()).unwrap().id(), "10.0.0.2:80");
        }
    }

    #[test]
    fn requests_held_open_spread_evenly() {
        let pool = pool(&[
            "http://10.0.0.1:80",
            "http://10.0.0.2:80",
            "http://10.0.0.3:80",
        ]);
        let held: Vec<_> = (0..30)
            .map(|_| pool.select(&Context::new()).unwrap().start_request())
            .collect();
        let mut per: HashMap<String, usize> = HashMap::new();
        for guard in &held {
            *per.entry(guard.backend().id().to_owned()).or_default() += 1;
        }
        assert!(per.values().all(|&n| n == 10), "{per:?}");
    }

    #[test]
    fn weights_scale_the_load() {
        // Weight 3 carries three times the in-flight requests before it stops being the least loaded.
        let pool = pool(&["http://10.0.0.1:80,weight=3", "http://10.0.0.2:80"]);
        let held: Vec<_> = (0..40)
            .map(|_| pool.select(&Context::new()).unwrap().start_request())
            .collect();
        let heavy = held
            .iter()
            .filter(|g| g.backend().id() == "10.0.0.1:80")
            .count();
        assert_eq!(heavy, 30);
    }

    #[test]
    fn exclusions_are_honoured() {
        let pool = pool(&["http://10.0.0.1:80", "http://10.0.0.2:80"]);
        let snap = pool.load();
        let first = snap.backends()[0].key();
        let second = snap.backends()[1].key();
        for _ in 0..4 {
            assert_eq!(
                snap.select(&Context::new().excluding(&[first]))
                    .unwrap()
                    .key(),
                second
            );
        }
        assert!(
            snap.select(&Context::new().excluding(&[first, second]))
                .is_none()
        );
    }
}
