//! The model: a workload of arrivals, backends with slots and queues, virtual time.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_core::{Context, InFlight, Pool};
use xxhash_rust::xxh3::xxh3_64;

use crate::{
    BACKENDS, CLIENTS, MEAN_SERVICE, RATE_PER_SECOND, RUN, SLOTS, SLOW_BACKEND, SLOW_FROM,
    SLOW_SERVICE, SLOW_UNTIL,
};

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Scenario {
    SlowBackend,
    AllEqual,
}

impl Scenario {
    pub(crate) fn title(self) -> &'static str {
        match self {
            Scenario::SlowBackend => "one slow backend (b3: 1 s mean service, t = 20-40 s)",
            Scenario::AllEqual => "all equal (control)",
        }
    }

    /// The mean service time of `backend` for a service starting at `at_ns`.
    fn mean_service_ns(self, backend: usize, at_ns: u64) -> f64 {
        let slow = self == Scenario::SlowBackend
            && backend == SLOW_BACKEND
            && (nanos(SLOW_FROM)..nanos(SLOW_UNTIL)).contains(&at_ns);
        nanos(if slow { SLOW_SERVICE } else { MEAN_SERVICE }) as f64
    }
}

pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).expect("durations of this program fit in u64 nanoseconds")
}

/// SplitMix64 (Steele, Lea and Flood, 2014): a dozen lines, seeded, good enough for a workload.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Exponential with mean 1.
    fn exponential(&mut self) -> f64 {
        -self.unit().ln()
    }

    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// One request of the workload, the same for every strategy.
pub(crate) struct Arrival {
    at_ns: u64,
    key: u64,
    /// Its work, in units of its backend's mean service time.
    work: f64,
}

pub(crate) fn workload(seed: u64) -> Vec<Arrival> {
    let mut rng = SplitMix64(seed);
    let mean_gap_ns = 1e9 / RATE_PER_SECOND;
    let mut arrivals = Vec::new();
    let mut t = 0.0;
    loop {
        t += rng.exponential() * mean_gap_ns;
        if t >= nanos(RUN) as f64 {
            return arrivals;
        }
        let client = rng.below(CLIENTS);
        arrivals.push(Arrival {
            at_ns: t as u64,
            key: xxh3_64(&client.to_le_bytes()),
            work: rng.exponential(),
        });
    }
}

/// What one strategy did in one scenario.
pub(crate) struct Outcome {
    /// Latency of every request, sorted, in nanoseconds.
    pub(crate) latencies: Vec<u64>,
    /// Requests arriving in the slow window, and how many of them went to b3.
    pub(crate) in_window: usize,
    pub(crate) in_window_to_b3: usize,
    /// Requests arriving after the slow window, and how many of them went to b3.
    pub(crate) after_window: usize,
    pub(crate) after_window_to_b3: usize,
}

pub(crate) fn simulate(
    workload: &[Arrival],
    scenario: Scenario,
    pool: &Pool,
    base: Instant,
) -> Outcome {
    let snapshot = pool.load();
    let backends = snapshot.backends();
    let n = workload.len();
    let mut assigned = vec![usize::MAX; n];
    let mut guards: Vec<Option<InFlight>> = (0..n).map(|_| None).collect();
    let mut busy = [0usize; BACKENDS];
    let mut queues: Vec<VecDeque<usize>> = vec![VecDeque::new(); BACKENDS];
    // Completions: (time, request), earliest first.
    let mut completions: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut latencies = Vec::with_capacity(n);
    let mut next = 0;

    let start_service = |request: usize, backend: usize, at_ns: u64, busy: &mut [usize]| {
        busy[backend] += 1;
        let service = workload[request].work * scenario.mean_service_ns(backend, at_ns);
        Reverse((at_ns + (service as u64).max(1), request))
    };

    loop {
        let arrival = workload.get(next).map(|a| a.at_ns);
        let completion = completions.peek().map(|Reverse((t, _))| *t);
        match (arrival, completion) {
            (None, None) => break,
            // A completion at the same instant as an arrival frees its slot first.
            (Some(a), Some(c)) if c <= a => {}
            (None, Some(_)) => {}
            (Some(at_ns), _) => {
                let request = next;
                next += 1;
                let ctx = Context::new()
                    .at(base + Duration::from_nanos(at_ns))
                    .with_key(workload[request].key);
                let chosen = snapshot.select(&ctx).expect("every backend is healthy");
                let backend = backends
                    .iter()
                    .position(|b| Arc::ptr_eq(b, chosen))
                    .expect("the pick is one of the snapshot's backends");
                assigned[request] = backend;
                guards[request] = Some(chosen.start_request());
                if busy[backend] < SLOTS {
                    completions.push(start_service(request, backend, at_ns, &mut busy));
                } else {
                    queues[backend].push_back(request);
                }
                continue;
            }
        }
        let Some(Reverse((now_ns, request))) = completions.pop() else {
            break;
        };
        let latency = now_ns - workload[request].at_ns;
        let guard = guards[request].take().expect("a request completes once");
        guard.backend().observe_latency(
            Duration::from_nanos(latency),
            base + Duration::from_nanos(now_ns),
        );
        drop(guard);
        latencies.push(latency);
        let backend = assigned[request];
        busy[backend] -= 1;
        if let Some(waiting) = queues[backend].pop_front() {
            completions.push(start_service(waiting, backend, now_ns, &mut busy));
        }
    }
    latencies.sort_unstable();

    let share = |from: Duration, until: Duration| {
        let range = nanos(from)..nanos(until);
        let (mut all, mut to_b3) = (0, 0);
        for (arrival, &backend) in workload.iter().zip(&assigned) {
            if range.contains(&arrival.at_ns) {
                all += 1;
                to_b3 += usize::from(backend == SLOW_BACKEND);
            }
        }
        (all, to_b3)
    };
    let (in_window, in_window_to_b3) = share(SLOW_FROM, SLOW_UNTIL);
    let (after_window, after_window_to_b3) = share(SLOW_UNTIL, RUN);
    Outcome {
        latencies,
        in_window,
        in_window_to_b3,
        after_window,
        after_window_to_b3,
    }
}

impl Outcome {
    /// Nearest-rank percentile, in nanoseconds.
    pub(crate) fn percentile(&self, p: f64) -> u64 {
        let rank = (p / 100.0 * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }

    /// Share of requests slower than `x_ns`.
    pub(crate) fn slower_than(&self, x_ns: f64) -> f64 {
        let faster = self.latencies.partition_point(|&l| l as f64 <= x_ns);
        (self.latencies.len() - faster) as f64 / self.latencies.len() as f64
    }
}
