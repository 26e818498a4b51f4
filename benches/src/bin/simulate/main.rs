//! Why the strategy matters: a deterministic discrete-event simulation of `lb-core`'s strategies.
//!
//! ```text
//! cargo run --release -p lb-benches --bin simulate [-- --seed N]
//! ```
//!
//! The model, in virtual time (no sockets, no sleeping; the same numbers on every run for a seed):
//!
//! - 10 backends, `b0` to `b9`. Each serves 4 requests at a time, with a FIFO queue of unbounded
//!   length behind those 4 slots. Service times are exponential with a mean of 10 ms (each
//!   request carries one unit-exponential draw, scaled by its backend's mean when its service
//!   starts, so every strategy sees the same work). Capacity: 10 × 4 / 10 ms = 4000 requests/s.
//! - Open-loop Poisson arrivals at 2000 requests/s (50 % of capacity) for 60 s, each from one of
//!   1000 clients drawn uniformly; nobody gives up, so every request completes (the run drains).
//! - "one slow backend": `b3`'s mean service time is 1 s instead of 10 ms for services that start
//!   between t = 20 s and t = 40 s. It keeps answering, so health checks would not eject it: only
//!   the strategy can route around it. "all equal": no slow backend, the control.
//!
//! Each request is routed at its arrival by the real strategy (`Snapshot::select` with
//! `Context::new().at(now).with_key(xxh3_64(client id))`, virtual instants being a base `Instant`
//! plus the virtual time), holds an `InFlight` guard from arrival to completion (queued requests
//! count as in flight, as in the proxy), and on completion reports its latency (queueing +
//! service) with `Backend::observe_latency` before dropping the guard. All randomness is seeded:
//! arrivals and service times from a SplitMix64 of our own, the random strategies by `from_seed`.
//!
//! It prints one markdown table per scenario and writes them to `benches/results/simulation.md`,
//! with the latency distributions (CCDF, log-log) in `benches/results/strategies.svg`.

mod model;
mod report;

use std::error::Error;
use std::path::Path;
use std::time::{Duration, Instant};

use lb_core::{
    BackendSpec, ConsistentHash, LeastConnections, Load, Pool, PowerOfTwo, Random, RoundRobin,
    Strategy, WeightedRoundRobin,
};

use model::{Outcome, Scenario, simulate, workload};
use report::{plot, table};

const BACKENDS: usize = 10;
const SLOTS: usize = 4;
const MEAN_SERVICE: Duration = Duration::from_millis(10);
const SLOW_SERVICE: Duration = Duration::from_secs(1);
const SLOW_BACKEND: usize = 3;
const SLOW_FROM: Duration = Duration::from_secs(20);
const SLOW_UNTIL: Duration = Duration::from_secs(40);
const RATE_PER_SECOND: f64 = 2000.0;
const RUN: Duration = Duration::from_secs(60);
const CLIENTS: u64 = 1000;
const DEADLINE: Duration = Duration::from_secs(1);
const DEFAULT_SEED: u64 = 2024;

/// One strategy under test: its name in the tables and how to build a pool with it.
struct Contender {
    name: &'static str,
    pool: fn(u64) -> Pool,
}

const CONTENDERS: [Contender; 8] = [
    Contender {
        name: "round-robin",
        pool: |_| pool(RoundRobin::new()),
    },
    Contender {
        name: "weighted-round-robin (weights 1)",
        pool: |_| pool(WeightedRoundRobin::new()),
    },
    Contender {
        name: "least-connections",
        pool: |_| pool(LeastConnections::new()),
    },
    Contender {
        name: "power-of-two (in-flight)",
        pool: |seed| pool(PowerOfTwo::from_seed(seed)),
    },
    Contender {
        name: "power-of-two (peak-ewma, 30 ms)",
        pool: |seed| {
            pool(PowerOfTwo::from_seed(seed).with_load(Load::PeakEwma {
                default_rtt: Duration::from_millis(30),
            }))
        },
    },
    Contender {
        name: "random",
        pool: |seed| pool(Random::from_seed(seed)),
    },
    Contender {
        name: "consistent-hash",
        pool: |_| pool(ConsistentHash::new()),
    },
    Contender {
        name: "consistent-hash (bounded 1.25)",
        pool: |_| pool(ConsistentHash::new().with_bounded_load(Some(1.25))),
    },
];

fn pool(strategy: impl Strategy) -> Pool {
    let specs = (0..BACKENDS).map(|i| -> BackendSpec {
        format!("http://10.0.0.{}:8080", i + 1)
            .parse()
            .expect("a valid backend URL")
    });
    Pool::new(specs, strategy).expect("distinct backends")
}

fn seed_from_args() -> Result<u64, Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let mut seed = DEFAULT_SEED;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seed" => {
                let value = args.next().ok_or("--seed needs a value")?;
                seed = value
                    .parse()
                    .map_err(|_| format!("invalid seed {value:?}: use a whole number"))?;
            }
            other => return Err(format!("unknown argument {other:?}; use [--seed N]").into()),
        }
    }
    Ok(seed)
}

fn main() -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    let seed = seed_from_args()?;
    // Virtual instants are `base + virtual time`; lb-core only compares and subtracts them.
    let base = Instant::now();
    let workload = workload(seed);

    let mut results = Vec::new();
    let mut tables = String::new();
    for scenario in [Scenario::SlowBackend, Scenario::AllEqual] {
        let outcomes: Vec<Outcome> = CONTENDERS
            .iter()
            .map(|c| simulate(&workload, scenario, &(c.pool)(seed), base))
            .collect();
        let table = table(scenario, &outcomes);
        println!("{table}");
        tables.push_str(&table);
        tables.push('\n');
        results.push((scenario, outcomes));
    }

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
    std::fs::create_dir_all(&dir)?;
    let header = format!(
        "# Strategies under a slow backend: a simulation\n\n\
         Produced by `cargo run --release -p lb-benches --bin simulate` (seed {seed}; \
         `-- --seed N` for another), which drives lb-core's real strategies in virtual time.\n\n\
         Model: 10 backends, each serving 4 requests at a time with a FIFO queue behind them, \
         exponential service times with a mean of 10 ms (capacity 4000 requests/s); open-loop \
         Poisson arrivals at 2000 requests/s for 60 s from 1000 clients (the hash key of \
         consistent-hash). In \"one slow backend\", b3's mean service time is 1 s from t = 20 s \
         to 40 s; it still answers, so no health check ejects it. Latency is arrival to \
         completion (queueing + service); a request is in flight, for the strategies, from its \
         arrival until it completes, and every strategy sees the same {n} requests.\n\n\
         No request is abandoned: \"over 1 s\" counts those that would have missed a 1 s deadline. \
         \"to b3\" is the share of the requests arriving in that interval that were sent to b3; \
         the last column shows whether a strategy gives b3 its share back once it has recovered. \
         The latency distributions are plotted in `strategies.svg`.\n\n",
        n = workload.len(),
    );
    std::fs::write(dir.join("simulation.md"), header + &tables)?;
    plot(&dir.join("strategies.svg"), &results)?;
    eprintln!(
        "wrote {} and {} in {:.2} s",
        dir.join("simulation.md").display(),
        dir.join("strategies.svg").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
