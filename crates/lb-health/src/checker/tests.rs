//! The checker's timing, with tokio's paused clock: exact and fast.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use lb_core::{Context, RoundRobin, WeightedRoundRobin};

use super::*;

/// A probe whose answer and delay per backend the test controls, and which records overlap.
#[derive(Debug, Default)]
struct Scripted {
    down: Mutex<HashSet<String>>,
    slow: Mutex<HashMap<String, Duration>>,
    starts: Mutex<Vec<(String, Instant)>>,
    active: Mutex<HashSet<String>>,
    overlaps: AtomicUsize,
}

impl Scripted {
    fn set_down(&self, id: &str, down: bool) {
        let mut set = self.down.lock().unwrap();
        if down {
            set.insert(id.to_owned());
        } else {
            set.remove(id);
        }
    }

    fn starts_of(&self, id: &str) -> Vec<Instant> {
        let starts = self.starts.lock().unwrap();
        starts
            .iter()
            .filter(|(b, _)| b == id)
            .map(|(_, at)| *at)
            .collect()
    }
}

#[async_trait]
impl Probe for Scripted {
    async fn probe(&self, backend: &Backend) -> Result<(), ProbeError> {
        let id = backend.id().to_owned();
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

const A: &str = "127.0.0.1:1";
const B: &str = "127.0.0.1:2";
const C: &str = "127.0.0.1:3";

fn pool() -> Arc<Pool> {
    Arc::new(
        Pool::new(
            [A, B, C].map(|id| format!("http://{id}").parse().unwrap()),
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

/// A checker with a fixed jitter seed, running in the background until the guard drops.
struct Running {
    checker: Checker,
    probe: Arc<Scripted>,
    pool: Arc<Pool>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(policy: Policy, probe: Arc<Scripted>) -> Running {
    let pool = pool();
    let checker = Checker::new(Arc::clone(&pool), Arc::clone(&probe))
        .with_jitter_seed(7)
        .with_interval(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(10))
        .with_policy(policy);
    checker.check_all().await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(checker.clone().run(async {
        let _ = stopped.await;
    }));
    Running {
        checker,
        probe,
        pool,
        _stop: stop,
    }
}

fn backend(pool: &Pool, id: &str) -> Arc<Backend> {
    pool.get(id).unwrap()
}

#[tokio::test(start_paused = true)]
async fn check_all_sets_initial_states_in_one_snapshot() {
    let pool = pool();
    let probe = Arc::new(Scripted::default());
    probe.set_down(B, true);
    probe
        .slow
        .lock()
        .unwrap()
        .insert(C.into(), Duration::from_secs(5));
    let checker = Checker::new(Arc::clone(&pool), Arc::clone(&probe))
        .with_timeout(Duration::from_millis(500));
    let generation = pool.load().generation();
    checker.check_all().await;
    // B answered 503 and C not in time: both out, published together.
    assert_eq!(eligible_ids(&pool), [A]);
    assert_eq!(pool.load().generation(), generation + 1);
}

#[tokio::test(start_paused = true)]
async fn a_slow_backend_delays_nobody_and_probes_never_overlap() {
    let probe = Arc::new(Scripted::default());
    // C takes 3.5 intervals to answer; its timeout (10 s) is longer still.
    probe
        .slow
        .lock()
        .unwrap()
        .insert(C.into(), Duration::from_millis(3500));
    let t0 = Instant::now();
    let running = start(Policy::default(), probe).await;
    time::sleep(Duration::from_millis(12_000)).await;

    // From the second probe on: check_all (the first) returns when C's probe does, at 3.5 s.
    let gaps = |id: &str| -> Vec<Duration> {
        running.probe.starts_of(id)[1..]
            .windows(2)
            .map(|w| w[1] - w[0])
            .collect()
    };
    // The fast ones: every interval less at most a tenth of jitter, whatever C does.
    for id in [A, B] {
        let gaps = gaps(id);
        assert!(gaps.len() >= 6, "{id}: {gaps:?}");
        assert!(
            gaps.iter()
                .all(|g| (Duration::from_millis(900)..=Duration::from_secs(1)).contains(g)),
            "{id}: {gaps:?}"
        );
    }
    // C: the next probe starts the moment the previous one ends, never sooner.
    let c = gaps(C);
    assert!(c.len() >= 2, "{c:?}");
    assert!(c.iter().all(|g| *g == Duration::from_millis(3500)), "{c:?}");
    assert_eq!(running.probe.overlaps.load(Ordering::SeqCst), 0);
    // The check_all round at t0 included.
    assert_eq!(running.probe.starts_of(A)[0], t0);
}

#[tokio::test(start_paused = true)]
async fn jitter_keeps_backends_out_of_lockstep() {
    let running = start(Policy::default(), Arc::new(Scripted::default())).await;
    time::sleep(Duration::from_secs(5)).await;
    let (a, b) = (running.probe.starts_of(A), running.probe.starts_of(B));
    // Same first round (check_all), then apart.
    assert_eq!(a[0], b[0]);
    assert!(
        a[1..].iter().zip(&b[1..]).any(|(x, y)| x != y),
        "{a:?} {b:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn fall_and_rise_thresholds_hold_through_the_checker() {
    let policy = Policy {
        rise: 3,
        fall: 3,
        ..Policy::default()
    };
    let running = start(policy, Arc::new(Scripted::default())).await;
    running.probe.set_down(A, true);
    time::sleep(Duration::from_millis(2050)).await;
    assert_eq!(
        eligible_ids(&running.pool),
        [A, B, C],
        "two failures are not three"
    );
    time::sleep(Duration::from_secs(1)).await;
    assert_eq!(eligible_ids(&running.pool), [B, C]);
    running.probe.set_down(A, false);
    time::sleep(Duration::from_millis(2050)).await;
    assert_eq!(eligible_ids(&running.pool), [B, C]);
    time::sleep(Duration::from_secs(1)).await;
    assert_eq!(eligible_ids(&running.pool), [A, B, C]);
}

#[tokio::test(start_paused = true)]
async fn failures_in_traffic_eject_without_a_probe_and_the_backend_returns_after_its_time() {
    let policy = Policy {
        eject_after: 3,
        ejection: Duration::from_secs(10),
        ..Policy::default()
    };
    let running = start(policy, Arc::new(Scripted::default())).await;
    let mut events = running.checker.subscribe();
    for _ in 0..3 {
        assert_eq!(events.recv().await.unwrap().reason, Reason::Initial);
    }
    let a = backend(&running.pool, A);
    running.checker.observe(&a, Outcome::ServerError(500));
    // A success ends the streak.
    running.checker.observe(&a, Outcome::Success);
    running.checker.observe(&a, Outcome::ServerError(500));
    running.checker.observe(&a, Outcome::ConnectFailed);
    assert_eq!(eligible_ids(&running.pool), [A, B, C]);
    running.checker.observe(&a, Outcome::Reset);
    assert_eq!(eligible_ids(&running.pool), [B, C], "ejected at once");
    let ejected = events.recv().await.unwrap();
    assert_eq!(
        ejected.to_string(),
        "backend 127.0.0.1:1 healthy -> ejected: 3 failures in a row in live traffic \
         (last: connection reset), ejected for 10s"
    );

    // Probes pass meanwhile, but the ejection lasts its time.
    time::sleep(Duration::from_millis(9900)).await;
    assert_eq!(eligible_ids(&running.pool), [B, C]);
    time::sleep(Duration::from_millis(200)).await;
    assert_eq!(eligible_ids(&running.pool), [A, B, C]);
    let back = events.recv().await.unwrap();
    assert_eq!(
        (back.to, back.reason),
        (Health::Healthy, Reason::EjectionEnded)
    );

    // Ejected again soon after: twice as long.
    for _ in 0..3 {
        running.checker.observe(&a, Outcome::ServerError(503));
    }
    match events.recv().await.unwrap().reason {
        Reason::Ejected { duration, .. } => assert_eq!(duration, Duration::from_secs(20)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn an_ejection_that_ends_while_probes_fail_leaves_the_backend_unhealthy() {
    let policy = Policy {
        eject_after: 1,
        ejection: Duration::from_secs(5),
        ..Policy::default()
    };
    let running = start(policy, Arc::new(Scripted::default())).await;
    let a = backend(&running.pool, A);
    running.checker.observe(&a, Outcome::ConnectFailed);
    running.probe.set_down(A, true);
    time::sleep(Duration::from_millis(5100)).await;
    assert_eq!(a.health(), Health::Unhealthy);
    running.probe.set_down(A, false);
    time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(a.health(), Health::Healthy);
}

#[tokio::test(start_paused = true)]
async fn after_an_ejection_ends_probes_keep_their_interval_until_fall_is_reached() {
    let policy = Policy {
        eject_after: 1,
        fall: 3,
        ejection: Duration::from_secs(5),
        ..Policy::default()
    };
    let running = start(policy, Arc::new(Scripted::default())).await;
    let a = backend(&running.pool, A);
    let ejected_at = Instant::now();
    running.checker.observe(&a, Outcome::ConnectFailed);
    // Probes pass during the ejection and start failing just before it ends, so the backend
    // is still ejected (fall 3 not reached) after the probe at its end.
    time::sleep(Duration::from_millis(4500)).await;
    running.probe.set_down(A, true);
    time::sleep(Duration::from_millis(3500)).await;
    let after: Vec<Duration> = running
        .probe
        .starts_of(A)
        .into_iter()
        .filter(|&at| at >= ejected_at + Duration::from_secs(5))
        .map(|at| at - ejected_at)
        .collect();
    // One probe the moment the ejection ends, then one per interval (less jitter), not a burst.
    assert_eq!(after[0], Duration::from_secs(5), "{after:?}");
    assert!(
        after
            .windows(2)
            .all(|w| w[1] - w[0] >= Duration::from_millis(900)),
        "{after:?}"
    );
    assert_eq!(a.health(), Health::Unhealthy);
}

#[tokio::test(start_paused = true)]
async fn never_more_than_the_allowed_share_is_ejected() {
    let running = start(Policy::default(), Arc::new(Scripted::default())).await;
    for id in [A, B, C] {
        let b = backend(&running.pool, id);
        for _ in 0..10 {
            running.checker.observe(&b, Outcome::ConnectFailed);
        }
    }
    // 50 % of 3 backends: one.
    assert_eq!(eligible_ids(&running.pool), [B, C]);
}

#[tokio::test(start_paused = true)]
async fn subscribers_see_initial_states_then_changes_in_order() {
    let probe = Arc::new(Scripted::default());
    probe.set_down(C, true);
    let running = start(Policy::default(), probe).await;
    let mut events = running.checker.subscribe();
    let mut initial = Vec::new();
    for _ in 0..3 {
        let t = events.recv().await.unwrap();
        assert_eq!((t.from, &t.reason), (None, &Reason::Initial));
        initial.push((t.backend.to_string(), t.to));
    }
    assert_eq!(
        initial,
        [
            (A.to_owned(), Health::Healthy),
            (B.to_owned(), Health::Healthy),
            (C.to_owned(), Health::Unhealthy)
        ]
    );
    running.probe.set_down(C, false);
    running.probe.set_down(A, true);
    time::sleep(Duration::from_millis(1100)).await;
    let mut seen = [events.recv().await.unwrap(), events.recv().await.unwrap()];
    seen.sort_by(|x, y| x.backend.cmp(&y.backend));
    assert_eq!(
        seen[0].to_string(),
        "backend 127.0.0.1:1 healthy -> unhealthy: probe failed once: unexpected status 503"
    );
    assert_eq!(
        seen[1].to_string(),
        "backend 127.0.0.1:3 unhealthy -> healthy: probe passed once"
    );
}

#[tokio::test(start_paused = true)]
async fn a_drained_backend_gets_no_new_requests_until_enabled() {
    let running = start(Policy::default(), Arc::new(Scripted::default())).await;
    let b = running.checker.drain(B).unwrap();
    assert_eq!(b.health(), Health::Draining);
    assert_eq!(eligible_ids(&running.pool), [A, C]);
    // Passing probes do not undo a drain.
    time::sleep(Duration::from_secs(3)).await;
    assert_eq!(eligible_ids(&running.pool), [A, C]);
    assert!(running.checker.drain("127.0.0.1:9").is_none());
    running.checker.enable(B).unwrap();
    assert_eq!(eligible_ids(&running.pool), [A, B, C]);
    // Drained, then removed: the checker stops probing it.
    running.checker.drain(B).unwrap();
    running.pool.remove(B).unwrap();
    time::sleep(Duration::from_secs(2)).await;
    let probes = running.probe.starts_of(B).len();
    time::sleep(Duration::from_secs(3)).await;
    assert_eq!(running.probe.starts_of(B).len(), probes);
}

#[tokio::test(start_paused = true)]
async fn slow_start_ramps_a_recovered_backend_in_ten_steps() {
    let probe = Arc::new(Scripted::default());
    probe.set_down(A, true);
    let policy = Policy {
        slow_start: Some(Duration::from_secs(10)),
        ..Policy::default()
    };
    let pool = Arc::new(
        Pool::new(
            [A, B].map(|id| format!("http://{id}").parse().unwrap()),
            WeightedRoundRobin::new(),
        )
        .unwrap(),
    );
    let checker = Checker::new(Arc::clone(&pool), Arc::clone(&probe))
        .with_jitter_seed(1)
        .with_policy(policy);
    checker.check_all().await;
    // Initial states are not a recovery: B starts at full weight.
    assert_eq!(backend(&pool, B).weight_scale(), FULL_WEIGHT);
    tokio::spawn(checker.clone().run(std::future::pending()));
    probe.set_down(A, false);
    time::sleep(Duration::from_millis(1050)).await;
    let a = backend(&pool, A);
    assert_eq!(a.health(), Health::Healthy);
    assert_eq!(a.weight_scale(), 100);
    // Weighted round robin gives it a tenth of B's share.
    let picks: Vec<String> = (0..110)
        .map(|_| pool.select(&Context::new()).unwrap().id().to_owned())
        .collect();
    assert_eq!(picks.iter().filter(|id| *id == A).count(), 10);
    let mut scales = Vec::new();
    for _ in 0..10 {
        time::sleep(Duration::from_secs(1)).await;
        scales.push(a.weight_scale());
    }
    assert_eq!(scales, [200, 300, 400, 500, 600, 700, 800, 900, 1000, 1000]);
}

#[tokio::test(start_paused = true)]
async fn fail_open_routes_to_every_backend_when_none_is_healthy() {
    let probe = Arc::new(Scripted::default());
    let running = start(Policy::default(), probe).await;
    running.pool.set_fail_open(true);
    for id in [A, B, C] {
        running.probe.set_down(id, true);
    }
    time::sleep(Duration::from_millis(1100)).await;
    let snapshot = running.pool.load();
    assert!(snapshot.failing_open());
    assert_eq!(snapshot.eligible(), [0, 1, 2]);
    drop(snapshot);
    // A drained backend stays out even then.
    running.checker.drain(A).unwrap();
    assert_eq!(eligible_ids(&running.pool), [B, C]);
    running.probe.set_down(C, false);
    time::sleep(Duration::from_secs(1)).await;
    assert!(!running.pool.load().failing_open());
    assert_eq!(eligible_ids(&running.pool), [C]);
}

#[tokio::test(start_paused = true)]
async fn update_backends_keeps_state_probes_new_ones_first_and_forgets_removed_ones() {
    let probe = Arc::new(Scripted::default());
    probe.set_down(B, true);
    let policy = Policy {
        rise: 1,
        fall: 1,
        ..Policy::default()
    };
    let running = start(policy, Arc::clone(&probe)).await;
    let (pool, checker) = (&running.pool, &running.checker);
    assert_eq!(eligible_ids(pool), [A, C]);
    let b = backend(pool, B);

    // D is new and up, E is new and down; A leaves; B stays down; C is re-weighted.
    const D: &str = "127.0.0.1:4";
    const E: &str = "127.0.0.1:5";
    probe.set_down(E, true);
    let specs = [B, &format!("{C},weight=4"), D, E].map(|s| format!("http://{s}").parse().unwrap());
    let changes = checker.update_backends(specs, None).await.unwrap();
    assert_eq!(changes.added.len(), 2);
    assert_eq!(changes.removed.len(), 1);
    // New backends were probed before it returned: D in, E out, from the start.
    assert_eq!(eligible_ids(pool), [C, D]);
    assert!(Arc::ptr_eq(&backend(pool, B), &b));
    assert_eq!(backend(pool, C).weight(), 4);
    assert!(checker.last_probe(E).unwrap().error.is_some());
    assert!(checker.last_probe(D).unwrap().error.is_none());
    assert!(checker.last_probe(A).is_none());

    // The running checker watches the new backends (D fails, then recovers) and no longer
    // probes A.
    let probes_of_a = probe.starts_of(A).len();
    probe.set_down(D, true);
    time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(eligible_ids(pool), [C]);
    probe.set_down(B, false);
    probe.set_down(D, false);
    time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(eligible_ids(pool), [B, C, D]);
    assert_eq!(probe.starts_of(A).len(), probes_of_a);
}

#[tokio::test(start_paused = true)]
async fn a_new_backends_first_probe_is_its_initial_state_whatever_the_rise() {
    let probe = Arc::new(Scripted::default());
    let policy = Policy {
        rise: 3,
        slow_start: Some(Duration::from_secs(10)),
        ..Policy::default()
    };
    let running = start(policy, Arc::clone(&probe)).await;
    let mut events = running.checker.subscribe();
    for _ in 0..3 {
        events.recv().await.unwrap();
    }
    const D: &str = "127.0.0.1:4";
    let specs = [A, B, C, D].map(|s| format!("http://{s}").parse().unwrap());
    running.checker.update_backends(specs, None).await.unwrap();
    // In at once, at full weight (not three probes later, not slow-started), and announced as
    // its initial state; also after the running checker's task for it has started.
    assert_eq!(eligible_ids(&running.pool), [A, B, C, D]);
    assert_eq!(backend(&running.pool, D).weight_scale(), FULL_WEIGHT);
    let event = events.recv().await.unwrap();
    assert_eq!((event.backend.as_ref(), event.reason), (D, Reason::Initial));
    time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(eligible_ids(&running.pool), [A, B, C, D]);
}

#[tokio::test(start_paused = true)]
async fn a_shorter_interval_applies_at_once() {
    let probe = Arc::new(Scripted::default());
    let running = start(Policy::default(), Arc::clone(&probe)).await;
    running.checker.set_interval(Duration::from_secs(60));
    time::sleep(Duration::from_secs(2)).await;
    let before = probe.starts_of(A).len();
    // With a 60 s interval, the next probe of A is ~a minute away; a 100 ms one takes over now.
    running.checker.set_interval(Duration::from_millis(100));
    time::sleep(Duration::from_secs(1)).await;
    let probes = probe.starts_of(A).len() - before;
    assert!((9..=12).contains(&probes), "{probes} probes in 1 s");
}

#[tokio::test(start_paused = true)]
async fn set_probe_and_set_policy_take_effect_on_the_next_probe() {
    let probe = Arc::new(Scripted::default());
    let running = start(Policy::default(), Arc::clone(&probe)).await;
    let other = Arc::new(Scripted::default());
    other.set_down(A, true);
    running.checker.set_policy(Policy {
        fall: 1,
        ..Policy::default()
    });
    running.checker.set_probe(Arc::clone(&other));
    time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(eligible_ids(&running.pool), [B, C]);
    assert!(!other.starts_of(B).is_empty());
    assert_eq!(running.checker.policy().fall, 1);
}
