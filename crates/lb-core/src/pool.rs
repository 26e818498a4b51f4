//! The backend pool: an immutable snapshot of backends and their eligibility, swapped whole.

use std::any::Any;
use std::collections::HashSet;
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;

use crate::strategy::{Context, Strategy};
use crate::{Backend, BackendSpec, Error, Health};

/// The set of backends, the strategy that chooses among them, and which of them may take new
/// requests, as one immutable value.
///
/// Readers get a snapshot without a lock ([`Pool::load`]); writers (the health checker, a reload)
/// build a new one and swap it in. Because eligibility lives in the snapshot next to the backends,
/// a reader can never see a backend without its health or a health without its backend.
pub struct Snapshot {
    generation: u64,
    backends: Vec<Arc<Backend>>,
    eligible: Vec<usize>,
    /// No backend was healthy, and the pool fails open: `eligible` holds every backend not
    /// draining.
    failing_open: bool,
    strategy: Arc<dyn Strategy>,
    /// What the strategy built for this set of eligible backends (tables, sequences).
    prepared: Option<Box<dyn Any + Send + Sync>>,
}

impl Snapshot {
    fn build(
        generation: u64,
        backends: Vec<Arc<Backend>>,
        strategy: Arc<dyn Strategy>,
        fail_open: bool,
    ) -> Self {
        let indices_where = |keep: fn(Health) -> bool| -> Vec<usize> {
            (0..backends.len())
                .filter(|&i| keep(backends[i].health()))
                .collect()
        };
        let mut eligible = indices_where(Health::is_eligible);
        let failing_open = fail_open && eligible.is_empty();
        if failing_open {
            eligible = indices_where(|h| h != Health::Draining);
        }
        let prepared = strategy.prepare(&backends, &eligible);
        Snapshot {
            generation,
            backends,
            eligible,
            failing_open,
            strategy,
            prepared,
        }
    }

    /// True when no backend is healthy and the pool fails open, so requests go to every backend
    /// that is not draining.
    pub fn failing_open(&self) -> bool {
        self.failing_open
    }

    /// What this snapshot's strategy built in [`Strategy::prepare`], if it is a `T`.
    pub fn prepared<T: Any>(&self) -> Option<&T> {
        self.prepared.as_deref()?.downcast_ref()
    }

    /// Grows by one with every swap; tells a reader that something changed.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Every backend, eligible or not, in configuration order.
    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// Indices into [`backends`](Self::backends) of those that may take new requests, ascending.
    pub fn eligible(&self) -> &[usize] {
        &self.eligible
    }

    /// The strategy this snapshot selects with.
    pub fn strategy(&self) -> &Arc<dyn Strategy> {
        &self.strategy
    }

    /// Picks a backend for one request with this snapshot's strategy; `None` when no eligible
    /// backend is left (after `ctx`'s exclusions).
    pub fn select(&self, ctx: &Context<'_>) -> Option<&Arc<Backend>> {
        self.strategy.pick(self, ctx).map(|i| &self.backends[i])
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("generation", &self.generation)
            .field("backends", &self.backends)
            .field("eligible", &self.eligible)
            .field("failing_open", &self.failing_open)
            .field("strategy", &self.strategy)
            .finish()
    }
}

/// The shared, lock-free view of the backends.
///
/// ```
/// use lb_core::{Context, Health, Pool, RoundRobin};
///
/// let pool = Pool::new(
///     ["http://127.0.0.1:8080", "http://127.0.0.1:8081"].map(|u| u.parse().unwrap()),
///     RoundRobin::new(),
/// )?;
/// let a = pool.select(&Context::new()).unwrap();
/// let b = pool.select(&Context::new()).unwrap();
/// assert_ne!(a.id(), b.id());
///
/// pool.set_health(&a, Health::Unhealthy);
/// assert_eq!(pool.select(&Context::new()).unwrap().id(), b.id());
/// assert_eq!(pool.select(&Context::new()).unwrap().id(), b.id());
/// # Ok::<(), lb_core::Error>(())
/// ```
pub struct Pool {
    current: ArcSwap<Snapshot>,
    /// Serialises writers so that each new snapshot starts from the latest one.
    writer: Mutex<()>,
    /// Requests in flight to all backends, kept by every backend of the pool.
    total_in_flight: Arc<AtomicU64>,
    fail_open: AtomicBool,
    /// Whether the current snapshot's strategy reads request keys, readable without loading it.
    uses_key: AtomicBool,
}

impl Pool {
    /// A pool of healthy backends. Fails on two backends with the same `host:port`.
    pub fn new(
        specs: impl IntoIterator<Item = BackendSpec>,
        strategy: impl Strategy,
    ) -> Result<Self, Error> {
        let total_in_flight = Arc::new(AtomicU64::new(0));
        let backends = unique(
            specs
                .into_iter()
                .map(|s| Arc::new(Backend::in_group(s, Arc::clone(&total_in_flight))))
                .collect(),
        )?;
        Ok(Pool {
            uses_key: AtomicBool::new(strategy.uses_key()),
            current: ArcSwap::from_pointee(Snapshot::build(0, backends, Arc::new(strategy), false)),
            writer: Mutex::new(()),
            total_in_flight,
            fail_open: AtomicBool::new(false),
        })
    }

    /// The current snapshot, without a lock. Hold it briefly: it pins the snapshot in memory.
    pub fn load(&self) -> impl Deref<Target = Arc<Snapshot>> + use<> {
        self.current.load()
    }

    /// Picks a backend for one request; `None` when no eligible backend is left.
    pub fn select(&self, ctx: &Context<'_>) -> Option<Arc<Backend>> {
        self.current.load().select(ctx).cloned()
    }

    /// True when the strategy in force reads the request's key ([`Strategy::uses_key`]): one
    /// relaxed load, for a caller deciding whether to compute a key at all.
    pub fn uses_key(&self) -> bool {
        self.uses_key.load(Ordering::Acquire)
    }

    /// Requests in flight to all of the pool's backends.
    pub fn in_flight(&self) -> u64 {
        self.total_in_flight.load(Ordering::Relaxed)
    }

    /// The backend with this `host:port`, if it is in the pool.
    pub fn get(&self, id: &str) -> Option<Arc<Backend>> {
        self.current
            .load()
            .backends
            .iter()
            .find(|b| b.id() == id)
            .cloned()
    }

    /// Sets a backend's health. When that changes it, a new snapshot is published before this
    /// returns. Returns the previous state if it changed, `None` if the
    /// backend already was in that state or is no longer in the pool.
    pub fn set_health(&self, backend: &Backend, health: Health) -> Option<Health> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.current.load();
        if !current.backends.iter().any(|b| b.key() == backend.key()) {
            return None;
        }
        let previous = backend.store_health(health);
        if previous == health {
            return None;
        }
        // Every change is published, not only those of eligibility: when the pool fails open,
        // a draining backend leaves the list even though it was not eligible before either.
        self.publish(
            &current,
            current.backends.clone(),
            Arc::clone(&current.strategy),
        );
        Some(previous)
    }

    /// Sets the health of many backends and publishes one snapshot for all of the changes (a
    /// round of probes, a reload), rather than one per backend. Returns how many changed;
    /// backends not in the pool are ignored.
    pub fn set_health_many<'a>(
        &self,
        changes: impl IntoIterator<Item = (&'a Backend, Health)>,
    ) -> usize {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.current.load();
        let keys: HashSet<u64> = current.backends.iter().map(|b| b.key()).collect();
        let changed = changes
            .into_iter()
            .filter(|(b, health)| keys.contains(&b.key()) && b.store_health(*health) != *health)
            .count();
        if changed > 0 {
            self.republish();
        }
        changed
    }

    /// When every backend is out (unhealthy, ejected), send requests to all of them that are
    /// not draining rather than answer 503 (Envoy's panic threshold at 100 %, sozu's fail-open).
    /// Off by default. Publishes a new snapshot at once.
    pub fn set_fail_open(&self, fail_open: bool) {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if self.fail_open.swap(fail_open, Ordering::Relaxed) != fail_open {
            self.republish();
        }
    }

    /// Sets the share of its weight a backend gets, in thousandths (slow start ramps it from a
    /// tenth up to 1000) and publishes a new snapshot, since weighted strategies precompute
    /// their tables per snapshot. Returns false if the backend is not in the pool.
    pub fn set_weight_scale(&self, backend: &Backend, thousandths: u32) -> bool {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if !self
            .current
            .load()
            .backends
            .iter()
            .any(|b| b.key() == backend.key())
        {
            return false;
        }
        if backend.store_weight_scale(thousandths) != thousandths {
            self.republish();
        }
        true
    }

    /// Adds a backend (healthy, full weight). Fails if one with the same `host:port` is there.
    pub fn add(&self, spec: BackendSpec) -> Result<Arc<Backend>, Error> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.current.load();
        let backend = Arc::new(Backend::in_group(spec, Arc::clone(&self.total_in_flight)));
        let mut backends = current.backends.clone();
        backends.push(Arc::clone(&backend));
        let backends = unique(backends)?;
        self.publish(&current, backends, Arc::clone(&current.strategy));
        Ok(backend)
    }

    /// Takes the backend with this `host:port` out of the pool: new snapshots no longer hold
    /// it, and requests in flight to it finish (they hold their own reference). Drain it first
    /// to be sure no new request starts meanwhile. Returns it, or `None` if it was not there.
    pub fn remove(&self, id: &str) -> Option<Arc<Backend>> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.current.load();
        let position = current.backends.iter().position(|b| b.id() == id)?;
        let mut backends = current.backends.clone();
        let removed = backends.remove(position);
        self.publish(&current, backends, Arc::clone(&current.strategy));
        Some(removed)
    }

    /// Makes the pool hold the backends of `specs`, in that order, and (if given) select with
    /// `strategy`, in one new snapshot: what a configuration reload does.
    ///
    /// A backend whose `host:port`, URL and protocol are unchanged is kept as it is: its
    /// health, counters, in-flight requests and (in the proxy) pooled connections survive; only
    /// its weight is updated. Backends that are new join with `new_health` (`Unhealthy` keeps
    /// them out until a health check has passed, as Envoy does for new hosts, unless the pool
    /// fails open and nothing is healthy). Backends no
    /// longer listed leave every new snapshot and are marked draining: requests in flight to
    /// them finish. Fails, changing nothing, if two specs name the same `host:port`.
    pub fn reconfigure(
        &self,
        specs: impl IntoIterator<Item = BackendSpec>,
        strategy: Option<Arc<dyn Strategy>>,
        new_health: Health,
    ) -> Result<Reconfigured, Error> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.current.load();
        let mut changes = Reconfigured::default();
        let mut backends = Vec::new();
        for spec in specs {
            let kept = current.backends.iter().find(|b| {
                b.id() == spec.id()
                    && b.spec().url() == spec.url()
                    && b.protocol() == spec.protocol()
            });
            match kept {
                Some(backend) => {
                    if backend.weight() != spec.weight() {
                        changes.reweighted.push(Arc::clone(backend));
                    }
                    backends.push((Arc::clone(backend), spec.weight()));
                }
                None => {
                    let weight = spec.weight();
                    let backend =
                        Arc::new(Backend::in_group(spec, Arc::clone(&self.total_in_flight)));
                    changes.added.push(Arc::clone(&backend));
                    backends.push((backend, weight));
                }
            }
        }
        let weighted = backends;
        let backends = unique(weighted.iter().map(|(b, _)| Arc::clone(b)).collect())?;
        changes.removed = current
            .backends
            .iter()
            .filter(|old| !backends.iter().any(|b| b.key() == old.key()))
            .cloned()
            .collect();
        for backend in &changes.added {
            backend.store_health(new_health);
        }
        for backend in &changes.removed {
            backend.store_health(Health::Draining);
        }
        for (backend, weight) in weighted {
            backend.store_weight(weight);
        }
        let strategy = strategy.unwrap_or_else(|| Arc::clone(&current.strategy));
        self.publish(&current, backends, strategy);
        Ok(changes)
    }

    /// Publishes the current backends again (under the writer lock).
    fn republish(&self) {
        let current = self.current.load();
        self.publish(
            &current,
            current.backends.clone(),
            Arc::clone(&current.strategy),
        );
    }

    fn publish(
        &self,
        current: &Snapshot,
        backends: Vec<Arc<Backend>>,
        strategy: Arc<dyn Strategy>,
    ) {
        // Raised before a keyed strategy takes over and lowered after one leaves, so that a
        // request meets a keyed strategy without a key only if it read the flag just before a
        // switch; such a request is sent as a keyless one (round robin), never lost.
        let uses_key = strategy.uses_key();
        if uses_key {
            self.uses_key.store(true, Ordering::Release);
        }
        let next = Snapshot::build(
            current.generation + 1,
            backends,
            strategy,
            self.fail_open.load(Ordering::Relaxed),
        );
        self.current.store(Arc::new(next));
        if !uses_key {
            self.uses_key.store(false, Ordering::Release);
        }
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("current", &self.current.load())
            .finish()
    }
}

/// What [`Pool::reconfigure`] changed.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Reconfigured {
    /// Backends that joined.
    pub added: Vec<Arc<Backend>>,
    /// Backends that left (now draining; those still referenced finish their requests).
    pub removed: Vec<Arc<Backend>>,
    /// Backends kept whose weight changed.
    pub reweighted: Vec<Arc<Backend>>,
}

impl Reconfigured {
    /// True when no backend was added, removed or re-weighted.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.reweighted.is_empty()
    }
}

fn unique(backends: Vec<Arc<Backend>>) -> Result<Vec<Arc<Backend>>, Error> {
    let mut seen = HashSet::with_capacity(backends.len());
    for b in &backends {
        if !seen.insert(b.id()) {
            return Err(Error::DuplicateBackend {
                id: b.id().to_owned(),
            });
        }
    }
    Ok(backends)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RoundRobin;

    fn pool(n: u16) -> Pool {
        Pool::new(
            (0..n).map(|i| format!("http://127.0.0.1:{}", 8000 + i).parse().unwrap()),
            RoundRobin::new(),
        )
        .unwrap()
    }

    #[test]
    fn duplicate_backends_are_refused() {
        let err = Pool::new(
            ["http://127.0.0.1:1", "http://127.0.0.1:1/"].map(|u| u.parse().unwrap()),
            RoundRobin::new(),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "duplicate backend 127.0.0.1:1");
    }

    #[test]
    fn health_flips_publish_a_new_snapshot_with_matching_eligibility() {
        let pool = pool(3);
        let before = pool.load().clone();
        assert_eq!(before.eligible(), &[0, 1, 2]);

        let b1 = pool.get("127.0.0.1:8001").unwrap();
        assert_eq!(
            pool.set_health(&b1, Health::Unhealthy),
            Some(Health::Healthy)
        );
        let after = pool.load().clone();
        assert_eq!(after.eligible(), &[0, 2]);
        assert_eq!(after.generation(), before.generation() + 1);
        // The old snapshot is unchanged: readers that hold it see a consistent, older view.
        assert_eq!(before.eligible(), &[0, 1, 2]);

        // Setting the same state again publishes nothing.
        assert_eq!(pool.set_health(&b1, Health::Unhealthy), None);
        assert_eq!(pool.load().generation(), after.generation());

        assert_eq!(
            pool.set_health(&b1, Health::Healthy),
            Some(Health::Unhealthy)
        );
        assert_eq!(pool.load().eligible(), &[0, 1, 2]);
    }

    #[test]
    fn a_backend_from_elsewhere_is_ignored() {
        let pool = pool(2);
        let stranger = Backend::new("http://127.0.0.1:8000".parse().unwrap());
        assert_eq!(pool.set_health(&stranger, Health::Unhealthy), None);
        assert_eq!(pool.load().eligible(), &[0, 1]);
    }

    #[test]
    fn no_eligible_backend_selects_none() {
        let pool = pool(2);
        for b in pool.load().backends() {
            pool.set_health(b, Health::Unhealthy);
        }
        assert!(pool.select(&Context::new()).is_none());
    }

    fn specs(urls: &[&str]) -> Vec<BackendSpec> {
        urls.iter().map(|u| u.parse().unwrap()).collect()
    }

    #[test]
    fn reconfigure_keeps_unchanged_backends_and_swaps_the_rest_in_one_snapshot() {
        let pool = pool(3); // 8000, 8001, 8002
        let kept = pool.get("127.0.0.1:8001").unwrap();
        pool.set_health(&kept, Health::Unhealthy);
        let _in_flight = kept.start_request();
        kept.stats().record_connection();
        let removed = pool.get("127.0.0.1:8000").unwrap();
        let generation = pool.load().generation();

        let changes = pool
            .reconfigure(
                specs(&[
                    "http://127.0.0.1:8001,weight=3",
                    "http://127.0.0.1:8002",
                    "http://127.0.0.1:8003",
                ]),
                Some(Arc::new(crate::WeightedRoundRobin::new())),
                Health::Unhealthy,
            )
            .unwrap();

        let snap = pool.load();
        assert_eq!(snap.generation(), generation + 1);
        let ids: Vec<_> = snap.backends().iter().map(|b| b.id()).collect();
        assert_eq!(ids, ["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"]);
        // The kept backend is the same one, with its state and counters, re-weighted.
        assert!(Arc::ptr_eq(&snap.backends()[0], &kept));
        assert_eq!(kept.health(), Health::Unhealthy);
        assert_eq!(kept.in_flight(), 1);
        assert_eq!(kept.stats().connections_opened(), 1);
        assert_eq!(kept.weight(), 3);
        // New ones wait for a check; removed ones drain.
        assert_eq!(snap.backends()[2].health(), Health::Unhealthy);
        assert_eq!(removed.health(), Health::Draining);
        assert_eq!(snap.eligible(), &[1]);
        assert!(format!("{:?}", snap.strategy()).starts_with("WeightedRoundRobin"));
        let ids = |v: &[Arc<Backend>]| v.iter().map(|b| b.id().to_owned()).collect::<Vec<_>>();
        assert_eq!(ids(&changes.added), ["127.0.0.1:8003"]);
        assert_eq!(ids(&changes.removed), ["127.0.0.1:8000"]);
        assert_eq!(ids(&changes.reweighted), ["127.0.0.1:8001"]);
    }

    #[test]
    fn reconfigure_with_a_changed_protocol_replaces_the_backend() {
        let pool = pool(1);
        let old = pool.get("127.0.0.1:8000").unwrap();
        let changes = pool
            .reconfigure(specs(&["h2c://127.0.0.1:8000"]), None, Health::Healthy)
            .unwrap();
        assert_eq!((changes.added.len(), changes.removed.len()), (1, 1));
        assert!(!Arc::ptr_eq(&pool.get("127.0.0.1:8000").unwrap(), &old));
    }

    #[test]
    fn a_refused_reconfigure_changes_nothing() {
        let pool = pool(2);
        let before = pool.load().clone();
        let err = pool
            .reconfigure(
                specs(&["http://127.0.0.1:9000,weight=5", "http://127.0.0.1:9000"]),
                None,
                Health::Healthy,
            )
            .unwrap_err();
        assert_eq!(err.to_string(), "duplicate backend 127.0.0.1:9000");
        assert!(Arc::ptr_eq(&pool.load(), &before));
        assert!(
            before
                .backends()
                .iter()
                .all(|b| b.health() == Health::Healthy)
        );
    }

    #[test]
    fn writers_from_many_threads_leave_a_consistent_snapshot() {
        let pool = Arc::new(pool(16));
        std::thread::scope(|s| {
            for t in 0..4 {
                let pool = Arc::clone(&pool);
                s.spawn(move || {
                    for round in 0..200 {
                        for (i, b) in pool.load().backends().iter().enumerate() {
                            let down = (i + t + round) % 3 == 0;
                            pool.set_health(
                                b,
                                if down {
                                    Health::Unhealthy
                                } else {
                                    Health::Healthy
                                },
                            );
                        }
                    }
                });
            }
        });
        let snap = pool.load();
        let expected: Vec<usize> = snap
            .backends()
            .iter()
            .enumerate()
            .filter(|(_, b)| b.health().is_eligible())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(snap.eligible(), expected.as_slice());
    }
}
