//! The active checker: one task that probes every backend of a pool each interval.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lb_core::{Backend, Health, Pool};
use tokio::task::{Id, JoinSet};
use tokio::time::{self, Instant, MissedTickBehavior};

use crate::{Probe, ProbeError};

/// A finished probe: which backend, and what it found.
type Outcome = (Arc<Backend>, Result<(), ProbeError>);

/// Probes every backend of a [`Pool`] each interval and flips its health with the result.
///
/// - Probes of different backends run concurrently, so a slow backend never delays the others.
/// - Probes of one backend never overlap: a turn that comes while the previous probe is still
///   running waits for it, and starts the moment it ends.
/// - Every probe is bounded by the timeout; no answer in time is a failure.
/// - The backends are read from the pool's current snapshot at every tick, so backends added or
///   removed later are picked up without restarting the checker.
///
/// Defaults: interval 1 s, timeout 1 s.
#[derive(Debug, Clone)]
pub struct Checker {
    pool: Arc<Pool>,
    probe: Arc<dyn Probe>,
    interval: Duration,
    timeout: Duration,
}

impl Checker {
    /// A checker of `pool` that uses `probe`.
    pub fn new(pool: Arc<Pool>, probe: impl Probe) -> Self {
        Checker {
            pool,
            probe: Arc::new(probe),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        }
    }

    /// Time between the starts of two probes of one backend (default 1 s).
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Longest wait for one probe (default 1 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Probes every backend once, concurrently, and applies the results before returning.
    /// The balancer runs this before it starts listening, so its first requests already avoid
    /// backends that are down.
    pub async fn check_all(&self) {
        let mut probes: JoinSet<Outcome> = JoinSet::new();
        for backend in self.pool.load().backends() {
            probes.spawn(self.probe_one(Arc::clone(backend)));
        }
        while let Some(done) = probes.join_next().await {
            if let Ok((backend, result)) = done {
                self.apply(&backend, result);
            }
        }
    }

    /// Runs until `shutdown` completes, probing every interval (the first round one interval
    /// from now; call [`check_all`](Self::check_all) first for an immediate one). Probes still
    /// running at shutdown are cancelled.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut ticker = time::interval_at(Instant::now() + self.interval, self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut probes: JoinSet<Outcome> = JoinSet::new();
        let mut running: HashMap<Id, u64> = HashMap::new();
        // Backends whose turn came while their previous probe was still running.
        let mut owed: HashSet<u64> = HashSet::new();
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                Some(done) = probes.join_next_with_id() => {
                    let (id, finished) = match done {
                        Ok((id, (backend, result))) => {
                            self.apply(&backend, result);
                            (id, Some(backend))
                        }
                        Err(e) => (e.id(), None),
                    };
                    let key = running.remove(&id);
                    // A skipped turn is made up at once, so a slow probe delays the next one
                    // by as little as possible (and never makes two overlap).
                    if let (Some(key), Some(backend)) = (key, finished)
                        && owed.remove(&key)
                    {
                        let handle = probes.spawn(self.probe_one(backend));
                        running.insert(handle.id(), key);
                    }
                }
                _ = ticker.tick() => {
                    let busy: HashSet<u64> = running.values().copied().collect();
                    for backend in self.pool.load().backends() {
                        if busy.contains(&backend.key()) {
                            owed.insert(backend.key());
                        } else {
                            let handle = probes.spawn(self.probe_one(Arc::clone(backend)));
                            running.insert(handle.id(), backend.key());
                        }
                    }
                }
            }
        }
    }

    fn probe_one(&self, backend: Arc<Backend>) -> impl Future<Output = Outcome> + Send + 'static {
        let probe = Arc::clone(&self.probe);
        let timeout = self.timeout;
        async move {
            let result = match time::timeout(timeout, probe.probe(&backend)).await {
                Ok(result) => result,
                Err(_) => Err(ProbeError::Timeout(timeout)),
            };
            (backend, result)
        }
    }

    fn apply(&self, backend: &Backend, result: Result<(), ProbeError>) {
        let health = if result.is_ok() {
            Health::Healthy
        } else {
            Health::Unhealthy
        };
        if let Some(previous) = self.pool.set_health(backend, health) {
            match result {
                Ok(()) => {
                    tracing::info!(backend = backend.id(), from = %previous, "backend is healthy")
                }
                Err(e) => {
                    tracing::warn!(backend = backend.id(), from = %previous, reason = %e, "backend is unhealthy")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use lb_core::{Context, RoundRobin};

    use super::*;

    /// A probe whose answer and delay per backend the test controls, and which records overlap.
    #[derive(Debug, Default)]
    struct Scripted {
        down: Mutex<HashSet<String>>,
        slow: Mutex<HashMap<String, Duration>>,
        calls: Mutex<HashMap<String, usize>>,
        starts: Mutex<Vec<(String, Instant)>>,
        active: Mutex<HashSet<String>>,
        overlaps: AtomicUsize,
    }

    #[async_trait]
    impl Probe for Arc<Scripted> {
        async fn probe(&self, backend: &Backend) -> Result<(), ProbeError> {
            let id = backend.id().to_owned();
            *self.calls.lock().unwrap().entry(id.clone()).or_default() += 1;
            self.starts
                .lock()
                .unwrap()
                .push((id.clone(), Instant::now()));
            if !self.active.lock().unwrap().insert(id.clone()) {
                self.overlaps.fetch_add(1, Ordering::SeqCst);
            }
            let delay = self.slow.lock().unwrap().get(&id).copied();
            if let Some(delay) = delay {
                time::sleep(delay).await;
            }
            self.active.lock().unwrap().remove(&id);
            if self.down.lock().unwrap().contains(&id) {
                Err(ProbeError::Status(503))
            } else {
                Ok(())
            }
        }
    }

    fn pool() -> Arc<Pool> {
        Arc::new(
            Pool::new(
                [
                    "http://127.0.0.1:1",
                    "http://127.0.0.1:2",
                    "http://127.0.0.1:3",
                ]
                .map(|u| u.parse().unwrap()),
                RoundRobin::new(),
            )
            .unwrap(),
        )
    }

    fn eligible_ids(pool: &Pool) -> Vec<String> {
        let snap = pool.load();
        snap.eligible()
            .iter()
            .map(|&i| snap.backends()[i].id().to_owned())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn check_all_applies_every_result_before_returning() {
        let pool = pool();
        let probe = Arc::new(Scripted::default());
        probe.down.lock().unwrap().insert("127.0.0.1:2".into());
        Checker::new(Arc::clone(&pool), Arc::clone(&probe))
            .check_all()
            .await;
        assert_eq!(eligible_ids(&pool), ["127.0.0.1:1", "127.0.0.1:3"]);
        assert!(pool.select(&Context::new()).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_is_a_failure() {
        let pool = pool();
        let probe = Arc::new(Scripted::default());
        probe
            .slow
            .lock()
            .unwrap()
            .insert("127.0.0.1:3".into(), Duration::from_secs(5));
        Checker::new(Arc::clone(&pool), Arc::clone(&probe))
            .with_timeout(Duration::from_millis(500))
            .check_all()
            .await;
        assert_eq!(eligible_ids(&pool), ["127.0.0.1:1", "127.0.0.1:2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_backend_delays_nobody_and_probes_never_overlap() {
        let pool = pool();
        let probe = Arc::new(Scripted::default());
        // Backend 3 takes 3.5 intervals to answer; its timeout is longer still.
        probe
            .slow
            .lock()
            .unwrap()
            .insert("127.0.0.1:3".into(), Duration::from_millis(3500));
        let checker = Checker::new(Arc::clone(&pool), Arc::clone(&probe))
            .with_interval(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(10));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let t0 = Instant::now();
        let task = tokio::spawn(checker.run(async {
            let _ = stopped.await;
        }));
        time::sleep(Duration::from_millis(10_500)).await;
        let _ = stop.send(());
        task.await.unwrap();

        let calls = probe.calls.lock().unwrap().clone();
        // Ticks at 1..=10 s: the fast backends are probed at every one of them.
        assert_eq!(calls["127.0.0.1:1"], 10);
        assert_eq!(calls["127.0.0.1:2"], 10);
        // The slow one starts at 1 s and answers at 4.5 s; its turns at 2-4 s wait for that, and
        // it starts again at once (4.5 s, 8 s): never two at a time, never idle while owed.
        assert_eq!(calls["127.0.0.1:3"], 3, "{calls:?}");
        let slow_starts: Vec<u128> = probe
            .starts
            .lock()
            .unwrap()
            .iter()
            .filter(|(id, _)| id == "127.0.0.1:3")
            .map(|(_, at)| (*at - t0).as_millis())
            .collect();
        assert_eq!(slow_starts, [1000, 4500, 8000]);
        assert_eq!(probe.overlaps.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn health_follows_the_probe_both_ways() {
        let pool = pool();
        let probe = Arc::new(Scripted::default());
        let checker = Checker::new(Arc::clone(&pool), Arc::clone(&probe));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(checker.run(async {
            let _ = stopped.await;
        }));

        probe.down.lock().unwrap().insert("127.0.0.1:1".into());
        time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(eligible_ids(&pool), ["127.0.0.1:2", "127.0.0.1:3"]);

        probe.down.lock().unwrap().clear();
        time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            eligible_ids(&pool),
            ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
        );

        let _ = stop.send(());
        task.await.unwrap();
    }
}
