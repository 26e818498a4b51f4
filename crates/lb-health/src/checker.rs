//! The checker: one state machine per backend, fed by active probes, live traffic and
//! operators, publishing every change to the pool and to subscribers.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use lb_core::{
    Backend, BackendSpec, FULL_WEIGHT, Health, Observer, Outcome, Pool, Reconfigured, SplitMix,
    Strategy,
};
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinSet;
use tokio::time::{self, Instant};

use crate::state::{self, Change, Machine, Policy, Reason, Transition};
use crate::{Probe, ProbeError};

/// Joins active probes, passive health and operator actions into one [`Health`] per backend.
///
/// - Active: each backend has its own task that probes it every interval (less a random jitter
///   of up to a tenth, so that many backends and many balancers do not probe in lockstep). A
///   slow backend never delays the probes of the others, and probes of one backend never
///   overlap. Every probe is bounded by the timeout; no answer in time is a failure. Rise and
///   fall thresholds come from the [`Policy`].
/// - Passive: the proxy reports every request's [`Outcome`] ([`Observer`]); failures in a row
///   eject a backend for a time that doubles with each ejection (up to a cap) and is forgiven
///   after it stays healthy. The cap on ejected backends is respected. An ejected backend
///   rejoins when its time is up and a probe passes.
/// - Operators: [`drain`](Self::drain) and [`enable`](Self::enable).
/// - Slow start: a backend that recovers gets a tenth of its weight, then more in ten steps.
///
/// Every change is published to the pool (a new snapshot, so the request path reads one atomic
/// per backend and takes no lock) and sent to [`subscribe`](Self::subscribe)rs as a
/// [`Transition`]. Defaults: interval 1 s, timeout 1 s, [`Policy::default`].
///
/// Everything can change while it runs (a configuration reload): the probe and settings with
/// [`set_probe`](Self::set_probe) and its siblings, the backends with
/// [`update_backends`](Self::update_backends). Clones share all of it.
#[derive(Clone)]
pub struct Checker {
    pool: Arc<Pool>,
    settings: Arc<ArcSwap<Settings>>,
    shared: Arc<Shared>,
}

#[derive(Debug, Clone)]
struct Settings {
    probe: Arc<dyn Probe>,
    interval: Duration,
    timeout: Duration,
    policy: Policy,
}

struct Shared {
    machines: Mutex<HashMap<u64, Tracked>>,
    events: broadcast::Sender<Transition>,
    /// Draws the probes' jitter.
    jitter: SplitMix,
    /// Tells [`Checker::run`] that the pool's backends changed.
    backends_changed: Notify,
}

struct Tracked {
    machine: Machine,
    /// Wakes the backend's task when its timers change (an ejection began, a new interval).
    wake: Arc<Notify>,
    last_probe: Option<ProbeRecord>,
}

impl Tracked {
    fn new(machine: Machine) -> Self {
        Tracked {
            machine,
            wake: Arc::new(Notify::new()),
            last_probe: None,
        }
    }
}

/// The last active probe of a backend, for operators ([`Checker::last_probe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRecord {
    /// When it started.
    pub at: SystemTime,
    /// How long it took (up to the timeout).
    pub took: Duration,
    /// Why it failed; `None` if it passed.
    pub error: Option<String>,
}

impl Shared {
    fn new(jitter: SplitMix) -> Arc<Self> {
        Arc::new(Shared {
            machines: Mutex::new(HashMap::new()),
            events: broadcast::channel(1024).0,
            jitter,
            backends_changed: Notify::new(),
        })
    }
}

impl Checker {
    /// A checker of `pool` that uses `probe`.
    pub fn new(pool: Arc<Pool>, probe: impl Probe) -> Self {
        Checker {
            pool,
            settings: Arc::new(ArcSwap::from_pointee(Settings {
                probe: Arc::new(probe),
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                policy: Policy::default(),
            })),
            shared: Shared::new(SplitMix::from_entropy()),
        }
    }

    /// Time between the starts of two probes of one backend (default 1 s), less the jitter.
    pub fn with_interval(self, interval: Duration) -> Self {
        self.set_interval(interval);
        self
    }

    /// Longest wait for one probe (default 1 s).
    pub fn with_timeout(self, timeout: Duration) -> Self {
        self.set_timeout(timeout);
        self
    }

    /// Thresholds, ejection and slow start (default [`Policy::default`]).
    pub fn with_policy(self, policy: Policy) -> Self {
        self.set_policy(policy);
        self
    }

    /// Seeds the jitter, for reproducible tests (default: from the operating system).
    pub fn with_jitter_seed(mut self, seed: u64) -> Self {
        self.shared = Shared::new(SplitMix::from_seed(seed));
        self
    }

    /// Probes with `probe` from now on (a probe already running finishes with the old one).
    pub fn set_probe(&self, probe: impl Probe) {
        let probe: Arc<dyn Probe> = Arc::new(probe);
        self.settings.rcu(|s| Settings {
            probe: Arc::clone(&probe),
            ..Settings::clone(s)
        });
    }

    /// Changes the interval; every backend's next probe comes at most one new interval from
    /// now.
    pub fn set_interval(&self, interval: Duration) {
        let interval = interval.max(Duration::from_millis(1));
        self.settings.rcu(|s| Settings {
            interval,
            ..Settings::clone(s)
        });
        for tracked in self.lock().values() {
            tracked.wake.notify_one();
        }
    }

    /// Changes the probe timeout, from the next probe on.
    pub fn set_timeout(&self, timeout: Duration) {
        self.settings.rcu(|s| Settings {
            timeout,
            ..Settings::clone(s)
        });
    }

    /// Changes the policy. Backends keep their state; the new thresholds count from the next
    /// probe or failure on.
    pub fn set_policy(&self, policy: Policy) {
        self.settings.rcu(|s| Settings {
            policy: policy.clone(),
            ..Settings::clone(s)
        });
    }

    /// The policy in force.
    pub fn policy(&self) -> Policy {
        self.settings.load().policy.clone()
    }

    /// Makes the pool hold the backends of `specs` (and select with `strategy`, if given) with
    /// [`Pool::reconfigure`]: unchanged backends keep their health; removed ones drain and are
    /// no longer probed. New backends take no traffic until their first probe, which runs
    /// before this returns, so a reload never sends requests to a new backend that is down.
    pub async fn update_backends(
        &self,
        specs: impl IntoIterator<Item = BackendSpec>,
        strategy: Option<Arc<dyn Strategy>>,
    ) -> Result<Reconfigured, lb_core::Error> {
        let changes = self.pool.reconfigure(specs, strategy, Health::Unhealthy)?;
        {
            let mut machines = self.lock();
            for removed in &changes.removed {
                machines.remove(&removed.key());
            }
        }
        self.shared.backends_changed.notify_one();
        self.check(changes.added.iter().cloned()).await;
        Ok(changes)
    }

    /// The last active probe of the backend with this `host:port`, if it has been probed.
    pub fn last_probe(&self, id: &str) -> Option<ProbeRecord> {
        let backend = self.pool.get(id)?;
        self.lock().get(&backend.key())?.last_probe.clone()
    }

    /// Probes every backend once, concurrently, and applies the results before returning. For
    /// a backend probed for the first time, the result is its initial state (no rise or fall).
    /// The balancer runs this before it starts listening, so that its first requests already
    /// avoid backends that are down.
    pub async fn check_all(&self) {
        let backends = self.pool.load().backends().to_vec();
        self.check(backends).await;
    }

    /// [`check_all`](Self::check_all) for some backends.
    async fn check(&self, backends: impl IntoIterator<Item = Arc<Backend>>) {
        let mut probes = JoinSet::new();
        for backend in backends {
            let this = self.clone();
            probes.spawn(async move {
                let result = this.probe_once(&backend).await;
                (backend, result)
            });
        }
        let mut results = Vec::new();
        while let Some(done) = probes.join_next().await {
            if let Ok(result) = done {
                results.push(result);
            }
        }
        self.apply_probes(&results);
    }

    /// Runs until `shutdown` completes: one task per backend of the pool, started for backends
    /// added later and stopped for those removed (checked every interval). The first probes
    /// come one interval from now; call [`check_all`](Self::check_all) first for an immediate
    /// round. Probes still running at shutdown are cancelled.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut tasks = JoinSet::new();
        let mut watched: HashMap<u64, tokio::task::AbortHandle> = HashMap::new();
        loop {
            let snapshot = Arc::clone(&self.pool.load());
            let present: HashMap<u64, &Arc<Backend>> =
                snapshot.backends().iter().map(|b| (b.key(), b)).collect();
            watched.retain(|key, task| {
                let keep = present.contains_key(key);
                if !keep {
                    task.abort();
                }
                keep
            });
            self.forget_all_but(&present);
            for (key, backend) in &present {
                if !watched.contains_key(key) {
                    let wake = self.track(backend);
                    let task = tasks.spawn(self.clone().watch(Arc::clone(backend), wake));
                    watched.insert(*key, task);
                }
            }
            let interval = self.settings.load().interval;
            tokio::select! {
                () = &mut shutdown => return,
                () = time::sleep(interval) => {}
                () = self.shared.backends_changed.notified() => {}
            }
            // Reap finished (aborted) tasks so the set does not grow.
            while tasks.try_join_next().is_some() {}
        }
    }

    /// Subscribes to every transition from now on, preceded by the current state of every
    /// backend (reason [`Reason::Initial`]), so a subscriber never misses where things stand.
    pub fn subscribe(&self) -> Events {
        let machines = self.lock();
        let receiver = self.shared.events.subscribe();
        let snapshot = self.pool.load();
        let initial = snapshot
            .backends()
            .iter()
            .map(|b| Transition {
                backend: b.id().into(),
                from: None,
                to: machines
                    .get(&b.key())
                    .map_or(b.health(), |t| t.machine.state()),
                reason: Reason::Initial,
            })
            .collect();
        Events { initial, receiver }
    }

    /// Drains the backend with this `host:port`: no new requests go to it, those in flight
    /// finish (watch [`Backend::in_flight`]). Then [`Pool::remove`] it, or
    /// [`enable`](Self::enable) it again. Returns the backend, `None` if it is not in the pool.
    pub fn drain(&self, id: &str) -> Option<Arc<Backend>> {
        self.operate(id, Machine::on_drain)
    }

    /// Ends a drain: the backend takes traffic again once its probes pass (at once if they
    /// did). Returns the backend, `None` if it is not in the pool.
    pub fn enable(&self, id: &str) -> Option<Arc<Backend>> {
        self.operate(id, Machine::on_enable)
    }

    fn operate(
        &self,
        id: &str,
        signal: fn(&mut Machine, Instant) -> Option<Change>,
    ) -> Option<Arc<Backend>> {
        let backend = self.pool.get(id)?;
        let mut machines = self.lock();
        let tracked = self.tracked(&mut machines, &backend)?;
        if let Some(change) = signal(&mut tracked.machine, Instant::now()) {
            self.publish(&backend, change);
        }
        Some(backend)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Tracked>> {
        self.shared
            .machines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The backend's entry, created from the pool's view if the checker has not probed it yet;
    /// `None` for a backend no longer in the pool (a reload removed it), which gets no entry.
    fn tracked<'m>(
        &self,
        machines: &'m mut HashMap<u64, Tracked>,
        backend: &Arc<Backend>,
    ) -> Option<&'m mut Tracked> {
        if !self.in_pool(backend) {
            return None;
        }
        Some(machines.entry(backend.key()).or_insert_with(|| {
            Tracked::new(Machine::first(
                backend.health() == Health::Healthy,
                Instant::now(),
            ))
        }))
    }

    /// True if this very backend (not only one with its `host:port`) is in the pool.
    fn in_pool(&self, backend: &Backend) -> bool {
        self.pool
            .get(backend.id())
            .is_some_and(|b| b.key() == backend.key())
    }

    fn track(&self, backend: &Arc<Backend>) -> Arc<Notify> {
        let mut machines = self.lock();
        self.tracked(&mut machines, backend)
            .map_or_else(|| Arc::new(Notify::new()), |t| Arc::clone(&t.wake))
    }

    fn forget_all_but(&self, present: &HashMap<u64, &Arc<Backend>>) {
        self.lock().retain(|key, _| present.contains_key(key));
    }

    /// Stores a change in the pool, logs nothing (subscribers do), and tells subscribers.
    /// Called with the machines locked, so changes reach subscribers in order.
    fn publish(&self, backend: &Arc<Backend>, change: Change) {
        let failing_open = self.pool.load().failing_open();
        if change.to == Health::Healthy
            && change.from != Health::Draining
            && let Some(window) = self.settings.load().policy.slow_start
        {
            self.pool
                .set_weight_scale(backend, state::slow_start_scale(Duration::ZERO, window));
        }
        self.pool.set_health(backend, change.to);
        self.report_fail_open(failing_open);
        let _ = self.shared.events.send(Transition {
            backend: backend.id().into(),
            from: Some(change.from),
            to: change.to,
            reason: change.reason,
        });
    }

    fn report_fail_open(&self, before: bool) {
        let snapshot = self.pool.load();
        match (before, snapshot.failing_open()) {
            (false, true) => tracing::warn!(
                backends = snapshot.eligible().len(),
                "no healthy backend: failing open, sending requests to every backend not draining"
            ),
            (true, false) => tracing::info!("a backend is healthy again: no longer failing open"),
            _ => {}
        }
    }

    /// Applies a round of probe results; first results become initial states, in one snapshot.
    fn apply_probes(&self, results: &[(Arc<Backend>, ProbeRecord)]) {
        let now = Instant::now();
        let mut machines = self.lock();
        let failing_open = self.pool.load().failing_open();
        let policy = self.policy();
        let mut initial = Vec::new();
        for (backend, record) in results {
            let error = record.error.clone();
            if !self.in_pool(backend) {
                continue;
            }
            let tracked = machines
                .entry(backend.key())
                .or_insert_with(|| Tracked::new(Machine::first(error.is_none(), now)));
            // A backend's first probe result is its initial state (no rise or fall), also when
            // its task made its entry before any result came in; a drain or an ejection stays.
            let first = tracked.last_probe.is_none()
                && matches!(tracked.machine.state(), Health::Healthy | Health::Unhealthy);
            tracked.last_probe = Some(record.clone());
            if first {
                tracked.machine = Machine::first(error.is_none(), now);
                initial.push((Arc::clone(backend), tracked.machine.state(), error));
            } else if let Some(change) = tracked.machine.on_probe(error, now, &policy) {
                self.publish(backend, change);
            }
        }
        self.pool
            .set_health_many(initial.iter().map(|(b, health, _)| (&**b, *health)));
        self.report_fail_open(failing_open);
        for (backend, to, error) in initial {
            let reason = match error {
                None => Reason::Initial,
                Some(error) => Reason::ProbeFailed { in_a_row: 1, error },
            };
            let _ = self.shared.events.send(Transition {
                backend: backend.id().into(),
                from: None,
                to,
                reason,
            });
        }
    }

    /// One backend's task: probes every (jittered) interval, ends ejections, steps slow start.
    async fn watch(self, backend: Arc<Backend>, wake: Arc<Notify>) {
        let mut next_probe = Instant::now() + self.jittered();
        let mut last_probe: Option<Instant> = None;
        loop {
            let (ejection_end, ramp_step) = self.timers(&backend);
            // An ejection's end calls for one probe at once; if the backend is still ejected
            // after it (fall not reached yet), the next probes keep the usual interval.
            let ejection_end = ejection_end.filter(|&end| last_probe.is_none_or(|p| p < end));
            let due = [Some(next_probe), ejection_end, ramp_step]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(next_probe);
            tokio::select! {
                () = time::sleep_until(due) => {}
                () = wake.notified() => {
                    // The interval may have changed: the next probe is at most one away.
                    next_probe = next_probe.min(Instant::now() + self.jittered());
                    continue;
                }
            }
            let now = Instant::now();
            if ramp_step.is_some_and(|at| at <= now) {
                self.ramp(&backend, now);
            }
            if next_probe <= now || ejection_end.is_some_and(|at| at <= now) {
                last_probe = Some(now);
                let result = self.probe_once(&backend).await;
                self.apply_probes(&[(Arc::clone(&backend), result)]);
                next_probe = (now + self.jittered()).max(Instant::now());
            }
        }
    }

    /// When the backend's ejection ends and slow start's next step is due, if they are.
    fn timers(&self, backend: &Backend) -> (Option<Instant>, Option<Instant>) {
        let machines = self.lock();
        let Some(tracked) = machines.get(&backend.key()) else {
            return (None, None);
        };
        let ramp = self
            .settings
            .load()
            .policy
            .slow_start
            .filter(|_| {
                tracked.machine.state() == Health::Healthy && backend.weight_scale() < FULL_WEIGHT
            })
            .and_then(|window| {
                state::slow_start_next(tracked.machine.healthy_since(), Instant::now(), window)
            });
        (tracked.machine.ejected_until(), ramp)
    }

    fn ramp(&self, backend: &Backend, now: Instant) {
        let machines = self.lock();
        if let (Some(tracked), Some(window)) = (
            machines.get(&backend.key()),
            self.settings.load().policy.slow_start,
        ) && tracked.machine.state() == Health::Healthy
        {
            let elapsed = now.saturating_duration_since(tracked.machine.healthy_since());
            self.pool
                .set_weight_scale(backend, state::slow_start_scale(elapsed, window));
        }
    }

    async fn probe_once(&self, backend: &Backend) -> ProbeRecord {
        let settings = self.settings.load_full();
        let (at, started) = (SystemTime::now(), Instant::now());
        let result = match time::timeout(settings.timeout, settings.probe.probe(backend)).await {
            Ok(result) => result,
            Err(_) => Err(ProbeError::Timeout(settings.timeout)),
        };
        ProbeRecord {
            at,
            took: started.elapsed(),
            error: result.err().map(|e| e.to_string()),
        }
    }

    /// The interval less a random part of up to a tenth of it.
    fn jittered(&self) -> Duration {
        let interval = self.settings.load().interval;
        let draw = self.shared.jitter.next_u64();
        let tenth = interval / 10;
        let jitter = Duration::from_nanos(
            ((u128::from(draw) * tenth.as_nanos()) >> 64)
                .try_into()
                .unwrap_or(0),
        );
        interval - jitter
    }
}

impl Observer for Checker {
    fn observe(&self, backend: &Arc<Backend>, outcome: Outcome) {
        if !outcome.is_failure() {
            backend.record_success();
            return;
        }
        let failures = backend.record_failure();
        let settings = self.settings.load();
        let policy = &settings.policy;
        // The common failure (a backend already out, or a streak still short) takes no lock.
        if policy.eject_after == 0
            || failures < policy.eject_after
            || backend.health() != Health::Healthy
        {
            return;
        }
        let mut machines = self.lock();
        let ejected = machines
            .values()
            .filter(|t| t.machine.state() == Health::Ejected)
            .count();
        let pool_size = self.pool.load().backends().len();
        let Some(tracked) = self.tracked(&mut machines, backend) else {
            return;
        };
        if let Some(change) = tracked.machine.on_failures(
            failures,
            outcome,
            Instant::now(),
            policy,
            (ejected, pool_size),
        ) {
            let wake = Arc::clone(&tracked.wake);
            backend.record_success();
            self.publish(backend, change);
            wake.notify_one();
        }
    }
}

impl fmt::Debug for Checker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings = self.settings.load();
        f.debug_struct("Checker")
            .field("probe", &settings.probe)
            .field("interval", &settings.interval)
            .field("timeout", &settings.timeout)
            .field("policy", &settings.policy)
            .finish()
    }
}

/// The transitions a subscriber receives: first the state of every backend when it subscribed,
/// then every change.
#[derive(Debug)]
pub struct Events {
    initial: VecDeque<Transition>,
    receiver: broadcast::Receiver<Transition>,
}

impl Events {
    /// The next transition; `None` once the checker is gone. A subscriber that falls more than
    /// 1024 transitions behind skips the oldest ones it missed.
    pub async fn recv(&mut self) -> Option<Transition> {
        if let Some(initial) = self.initial.pop_front() {
            return Some(initial);
        }
        loop {
            match self.receiver.recv().await {
                Ok(transition) => return Some(transition),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "health event subscriber fell behind");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests;
