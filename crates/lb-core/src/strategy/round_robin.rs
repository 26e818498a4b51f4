use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Context, Strategy};
use crate::pool::Snapshot;

/// Each eligible backend in turn.
///
/// How it picks: one shared counter, incremented per pick, indexes the snapshot's list of eligible
/// backends, so with `m` eligible backends every run of `k·m` picks gives each exactly `k`
/// (pingora's `RoundRobin` is the same single `AtomicUsize`).
///
/// Cost per pick: one relaxed `fetch_add` and one division, whatever the pool size and whatever
/// share of it is unhealthy, because unhealthy backends are not in the eligible list at all.
/// Exclusions (a retry) walk forward from there, at most once around.
///
/// Reads: the snapshot's eligible list; ignores weights and the request's key.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// Starts with the first eligible backend.
    pub fn new() -> Self {
        RoundRobin::default()
    }
}

impl Strategy for RoundRobin {
    fn pick(&self, snapshot: &Snapshot, ctx: &Context<'_>) -> Option<usize> {
        in_turn(&self.next, snapshot, ctx)
    }
}

/// Round robin on `counter`: the next eligible backend that `ctx` does not exclude. Also what
/// strategies that need a request key do for a request without one.
pub(crate) fn in_turn(
    counter: &AtomicUsize,
    snapshot: &Snapshot,
    ctx: &Context<'_>,
) -> Option<usize> {
    let eligible = snapshot.eligible();
    let n = eligible.len();
    if n == 0 {
        return None;
    }
    let start = counter.fetch_add(1, Ordering::Relaxed) % n;
    if !ctx.has_exclusions() {
        return Some(eligible[start]);
    }
    let backends = snapshot.backends();
    (0..n)
        .map(|k| eligible[(start + k) % n])
        .find(|&i| !ctx.is_excluded(&backends[i]))
}

/// The first eligible backend that `ctx` does not exclude: where a strategy's own choices are
/// all used up by a retry.
pub(crate) fn first_allowed(snapshot: &Snapshot, ctx: &Context<'_>) -> Option<usize> {
    let backends = snapshot.backends();
    snapshot
        .eligible()
        .iter()
        .copied()
        .find(|&i| !ctx.is_excluded(&backends[i]))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::{Health, Pool};

    fn pool(n: u16) -> Pool {
        Pool::new(
            (0..n).map(|i| format!("http://127.0.0.1:{}", 9000 + i).parse().unwrap()),
            RoundRobin::new(),
        )
        .unwrap()
    }

    fn counts(pool: &Pool, picks: usize) -> HashMap<String, usize> {
        let mut seen = HashMap::new();
        for _ in 0..picks {
            let b = pool.select(&Context::new()).unwrap();
            *seen.entry(b.id().to_owned()).or_default() += 1;
        }
        seen
    }

    #[test]
    fn visits_backends_in_order() {
        let pool = pool(3);
        let order: Vec<_> = (0..6)
            .map(|_| pool.select(&Context::new()).unwrap().id().to_owned())
            .collect();
        assert_eq!(
            order,
            ["127.0.0.1:9000", "127.0.0.1:9001", "127.0.0.1:9002"].repeat(2)
        );
    }

    #[test]
    fn k_times_m_picks_give_exactly_k_each_and_skip_unhealthy() {
        let pool = pool(5);
        let down = pool.get("127.0.0.1:9003").unwrap();
        pool.set_health(&down, Health::Unhealthy);
        let seen = counts(&pool, 4 * 25);
        assert_eq!(seen.len(), 4);
        assert!(seen.values().all(|&c| c == 25), "{seen:?}");
        assert!(!seen.contains_key("127.0.0.1:9003"));
    }

    #[test]
    fn exclusions_move_on_to_the_next_eligible_backend() {
        let pool = pool(3);
        let snap = pool.load();
        let all: Vec<u64> = snap.backends().iter().map(|b| b.key()).collect();
        for _ in 0..6 {
            let picked = snap.select(&Context::new().excluding(&all[..1])).unwrap();
            assert_ne!(picked.key(), all[0]);
        }
        assert!(snap.select(&Context::new().excluding(&all)).is_none());
    }

    #[test]
    fn empty_pool_picks_none() {
        let pool = Pool::new([], RoundRobin::new()).unwrap();
        assert!(pool.select(&Context::new()).is_none());
    }
}
