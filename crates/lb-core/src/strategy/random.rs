use std::any::Any;
use std::sync::Arc;

use super::rng::SplitMix;
use super::round_robin::first_allowed;
use super::{Context, Strategy};
use crate::Backend;
use crate::pool::Snapshot;

/// An eligible backend at random, in proportion to the weights.
///
/// How it picks: uniformly when all weights are equal; otherwise a random point on the
/// cumulative weights, found by binary search. Seed it ([`Random::from_seed`]) for reproducible
/// tests and simulations.
///
/// Cost per pick: one `fetch_add` on the generator's state, a few multiplications, and with
/// unequal weights a binary search over the eligible backends (O(log n)).
///
/// Reads: the snapshot's eligible backends and their weights.
#[derive(Debug)]
pub struct Random {
    rng: SplitMix,
}

impl Random {
    /// Seeded from the operating system's randomness.
    pub fn new() -> Self {
        Random {
            rng: SplitMix::from_entropy(),
        }
    }

    /// The same picks for the same seed (and the same sequence of snapshots).
    pub fn from_seed(seed: u64) -> Self {
        Random {
            rng: SplitMix::from_seed(seed),
        }
    }
}

impl Default for Random {
    fn default() -> Self {
        Random::new()
    }
}

/// Cumulative weights of the eligible backends, when they differ.
struct Cumulative {
    ends: Vec<u64>,
}

impl Strategy for Random {
    fn pick(&self, snapshot: &Snapshot, ctx: &Context<'_>) -> Option<usize> {
        let eligible = snapshot.eligible();
        let n = eligible.len();
        if n == 0 {
            return None;
        }
        let backends = snapshot.backends();
        let cumulative = snapshot.prepared::<Cumulative>();
        let draw = || match cumulative {
            None => eligible[self.rng.below(n)],
            Some(c) => {
                let total = c.ends[n - 1];
                let point = ((u128::from(self.rng.next_u64()) * u128::from(total)) >> 64) as u64;
                eligible[c.ends.partition_point(|&end| end <= point)]
            }
        };
        // A few draws find a backend a retry may use; after that, the first one left.
        (0..4)
            .map(|_| draw())
            .find(|&i| !ctx.is_excluded(&backends[i]))
            .or_else(|| first_allowed(snapshot, ctx))
    }

    fn prepare(
        &self,
        backends: &[Arc<Backend>],
        eligible: &[usize],
    ) -> Option<Box<dyn Any + Send + Sync>> {
        let first = eligible.first().map(|&i| backends[i].effective_weight())?;
        if eligible
            .iter()
            .all(|&i| backends[i].effective_weight() == first)
        {
            return None;
        }
        let mut end = 0;
        let ends = eligible
            .iter()
            .map(|&i| {
                end += backends[i].effective_weight();
                end
            })
            .collect();
        Some(Box::new(Cumulative { ends }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::{Health, Pool};

    fn shares(pool: &Pool, picks: usize) -> HashMap<String, usize> {
        let mut seen = HashMap::new();
        for _ in 0..picks {
            *seen
                .entry(pool.select(&Context::new()).unwrap().id().to_owned())
                .or_default() += 1;
        }
        seen
    }

    #[test]
    fn uniform_shares_within_bounds_for_a_fixed_seed() {
        let pool = Pool::new(
            (1..=4).map(|i| format!("http://10.0.0.{i}:80").parse().unwrap()),
            Random::from_seed(1),
        )
        .unwrap();
        let seen = shares(&pool, 40_000);
        // 10 000 expected each; sigma ~87: a 5-sigma bound.
        assert!(
            seen.values().all(|&n| (9_550..10_450).contains(&n)),
            "{seen:?}"
        );
    }

    #[test]
    fn weighted_shares_follow_the_weights() {
        let pool = Pool::new(
            ["http://10.0.0.1:80,weight=1", "http://10.0.0.2:80,weight=3"]
                .map(|s| s.parse().unwrap()),
            Random::from_seed(2),
        )
        .unwrap();
        let seen = shares(&pool, 40_000);
        // 30 000 expected for the heavy one; sigma ~87.
        assert!((29_550..30_450).contains(&seen["10.0.0.2:80"]), "{seen:?}");
    }

    #[test]
    fn the_same_seed_picks_the_same_backends() {
        let make = || {
            Pool::new(
                (1..=5).map(|i| format!("http://10.0.0.{i}:80").parse().unwrap()),
                Random::from_seed(99),
            )
            .unwrap()
        };
        let (a, b) = (make(), make());
        let picks = |p: &Pool| -> Vec<String> {
            (0..20)
                .map(|_| p.select(&Context::new()).unwrap().id().to_owned())
                .collect()
        };
        assert_eq!(picks(&a), picks(&b));
    }

    #[test]
    fn unhealthy_and_excluded_backends_are_never_picked() {
        let pool = Pool::new(
            (1..=3).map(|i| format!("http://10.0.0.{i}:80").parse().unwrap()),
            Random::from_seed(3),
        )
        .unwrap();
        pool.set_health(&pool.get("10.0.0.2:80").unwrap(), Health::Unhealthy);
        let snap = pool.load();
        let third = snap.backends()[2].key();
        for _ in 0..200 {
            let id = snap
                .select(&Context::new().excluding(&[third]))
                .unwrap()
                .id()
                .to_owned();
            assert_eq!(id, "10.0.0.1:80");
        }
    }
}
