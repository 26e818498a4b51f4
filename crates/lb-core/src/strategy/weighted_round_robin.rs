use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Context, Strategy};
use crate::Backend;
use crate::pool::Snapshot;

/// Longest precomputed cycle; heavier weight sums are scaled down to fit (shares then are
/// approximate, to within one part in this many).
const MAX_CYCLE: u64 = 1 << 20;

/// Each eligible backend in turn, as often as its weight says, interleaved.
///
/// How it picks: nginx's smooth weighted round robin. Weights 5, 1, 1 give `a a b a c a a`,
/// not `a a a a a b c`, and every full cycle (the sum of the weights, after dividing out their
/// greatest common divisor) gives each backend exactly its weight.
///
/// Cost per pick: the cycle is computed once per snapshot (when health or the backend set
/// changes, not per request) into a table; a pick is one `fetch_add` and an index, at any pool
/// size. With all weights equal it is plain round robin, and the table takes O(n) to build;
/// with unequal weights, O(n × cycle length) (nginx's algorithm scans every backend per step),
/// which is milliseconds for hundreds of backends but grows quadratically beyond.
///
/// Reads: the snapshot's eligible backends and their weights.
#[derive(Debug, Default)]
pub struct WeightedRoundRobin {
    next: AtomicUsize,
}

impl WeightedRoundRobin {
    /// Starts at the beginning of the cycle.
    pub fn new() -> Self {
        WeightedRoundRobin::default()
    }
}

/// One full cycle of picks, as indices into the snapshot's backends.
struct Cycle(Vec<u32>);

impl Strategy for WeightedRoundRobin {
    fn pick(&self, snapshot: &Snapshot, ctx: &Context<'_>) -> Option<usize> {
        let cycle = &snapshot.prepared::<Cycle>()?.0;
        let n = cycle.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let backends = snapshot.backends();
        (0..n)
            .map(|k| cycle[(start + k) % n] as usize)
            .find(|&i| !ctx.is_excluded(&backends[i]))
    }

    fn prepare(
        &self,
        backends: &[Arc<Backend>],
        eligible: &[usize],
    ) -> Option<Box<dyn Any + Send + Sync>> {
        let weights: Vec<u64> = eligible
            .iter()
            .map(|&i| backends[i].effective_weight())
            .collect();
        Some(Box::new(Cycle(smooth_cycle(eligible, &weights))))
    }
}

/// nginx's smooth weighted round robin, run for one full cycle.
fn smooth_cycle(eligible: &[usize], weights: &[u64]) -> Vec<u32> {
    // Equal weights make the cycle the eligible backends in order: O(n), not O(n²).
    if weights.windows(2).all(|w| w[0] == w[1]) {
        return eligible.iter().map(|&i| i as u32).collect();
    }
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let mut weights: Vec<u64> = weights.iter().map(|w| w / divisor).collect();
    let total: u64 = weights.iter().sum();
    if total > MAX_CYCLE {
        for w in &mut weights {
            *w = (*w * MAX_CYCLE / total).max(1);
        }
    }
    let total: i64 = weights.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; weights.len()];
    let mut cycle = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += *w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        cycle.push(eligible[best] as u32);
    }
    cycle
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::{Health, Pool};

    fn pool(weights: &[u32]) -> Pool {
        Pool::new(
            weights.iter().enumerate().map(|(i, w)| {
                format!("http://10.0.0.{}:80,weight={w}", i + 1)
                    .parse()
                    .unwrap()
            }),
            WeightedRoundRobin::new(),
        )
        .unwrap()
    }

    fn names(pool: &Pool, picks: usize) -> String {
        (0..picks)
            .map(|_| {
                let id = pool.select(&Context::new()).unwrap().id().to_owned();
                (b'a'
                    + id.split(':')
                        .next()
                        .unwrap()
                        .rsplit('.')
                        .next()
                        .unwrap()
                        .parse::<u8>()
                        .unwrap()
                    - 1) as char
            })
            .collect()
    }

    #[test]
    fn weights_5_1_1_interleave_like_nginx() {
        assert_eq!(names(&pool(&[5, 1, 1]), 14), "aabacaaaabacaa");
    }

    #[test]
    fn every_full_cycle_gives_exact_shares() {
        let pool = pool(&[3, 2, 1, 4]);
        let mut seen: HashMap<String, usize> = HashMap::new();
        for _ in 0..10 * 10 {
            *seen
                .entry(pool.select(&Context::new()).unwrap().id().to_owned())
                .or_default() += 1;
        }
        assert_eq!(seen["10.0.0.1:80"], 30);
        assert_eq!(seen["10.0.0.2:80"], 20);
        assert_eq!(seen["10.0.0.3:80"], 10);
        assert_eq!(seen["10.0.0.4:80"], 40);
    }

    #[test]
    fn equal_weights_are_round_robin_and_gcd_shortens_the_cycle() {
        assert_eq!(names(&pool(&[1, 1, 1]), 6), "abcabc");
        assert_eq!(names(&pool(&[10, 20]), 6), "babbab");
    }

    #[test]
    fn unhealthy_backends_drop_out_of_the_cycle() {
        let pool = pool(&[5, 1, 1]);
        let a = pool.get("10.0.0.1:80").unwrap();
        pool.set_health(&a, Health::Unhealthy);
        assert_eq!(names(&pool, 4), "bcbc");
        pool.set_health(&a, Health::Unhealthy);
        for b in pool.load().backends() {
            pool.set_health(b, Health::Unhealthy);
        }
        assert!(pool.select(&Context::new()).is_none());
    }

    #[test]
    fn exclusions_skip_ahead_in_the_cycle() {
        let pool = pool(&[5, 1, 1]);
        let snap = pool.load();
        let a = snap.backends()[0].key();
        for _ in 0..7 {
            assert_ne!(
                snap.select(&Context::new().excluding(&[a])).unwrap().key(),
                a
            );
        }
    }

    #[test]
    fn huge_weights_are_scaled_to_a_bounded_cycle() {
        let cycle = smooth_cycle(&[0, 1], &[4_000_000_000, 1_000_000_001]);
        assert!(cycle.len() as u64 <= MAX_CYCLE + 2);
        let zeros = cycle.iter().filter(|&&i| i == 0).count() as f64;
        assert!((zeros / cycle.len() as f64 - 0.8).abs() < 0.001);
    }
}
