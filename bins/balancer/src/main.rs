//! `balancer`: the standalone load balancer. Parses its settings, wires the pool, the health
//! checker and the proxy together, serves until SIGTERM or SIGINT, then drains and exits 0.

mod admin;
mod settings;
mod workers;

use std::io::IsTerminal;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use lb_backend::TestBackend;
use lb_core::{
    ConsistentHash, Health, LeastConnections, Load, Observer, Pool, PowerOfTwo, Random, RoundRobin,
    Strategy, WeightedRoundRobin,
};
use lb_health::{Checker, HttpProbe, Policy, TcpProbe};
use lb_proxy::{Proxy, RetryBudget, Server};
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

use crate::settings::{Args, LoadName, ProbeKind, Settings, StrategyName};
use crate::workers::Workers;

/// Exit code for a bad flag or config (as clap uses).
const USAGE: u8 = 2;

fn main() -> ExitCode {
    let settings = match Settings::from_args(Args::parse()) {
        Ok(settings) => settings,
        Err(message) => return fail(USAGE, &message),
    };
    // RUST_LOG: a level, or `target=level` pairs (`info,lb_proxy=debug`). `Targets` parses that
    // without the regex engine EnvFilter would link in and start (less code, less memory).
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| spec.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(Level::INFO));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .with(filter)
        .init();

    // Every client and upstream connection is a file descriptor: raise the soft limit to the
    // hard one, as nginx (worker_rlimit_nofile) and Go programs do, so that thousands of
    // connections do not hit a default soft limit of 1024.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open files limit"),
    }

    // Everything that can be refused is checked before the first socket is bound.
    let demo = match (0..if settings.demo { 3 } else { 0 })
        .map(|_| StdListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(listeners) => listeners,
        Err(e) => return fail(1, &format!("cannot start the demo backends: {e}")),
    };
    let mut specs = settings.backends.clone();
    for listener in &demo {
        match listener.local_addr().map(|a| format!("http://{a}").parse()) {
            Ok(Ok(spec)) => specs.push(spec),
            _ => return fail(1, "cannot read a demo backend's address"),
        }
    }
    let pool = match Pool::new(specs, strategy(&settings)) {
        Ok(pool) => Arc::new(pool),
        Err(e) => return fail(USAGE, &e.to_string()),
    };
    pool.set_fail_open(settings.fail_open);
    let checker = match settings.health_probe {
        ProbeKind::Http => match HttpProbe::new(&settings.health_path) {
            Ok(probe) => {
                let (low, high) = settings.health_status;
                Checker::new(Arc::clone(&pool), probe.with_expected_status(low..=high))
            }
            Err(e) => return fail(USAGE, &e.to_string()),
        },
        ProbeKind::Tcp => Checker::new(Arc::clone(&pool), TcpProbe),
    }
    .with_interval(settings.health_interval)
    .with_timeout(settings.health_timeout)
    .with_policy(Policy {
        rise: settings.health_rise,
        fall: settings.health_fall,
        eject_after: settings.eject_after,
        ejection: settings.eject_time,
        max_ejection: settings.eject_time.saturating_mul(10),
        max_ejected_percent: settings.max_ejected_percent,
        slow_start: settings.slow_start,
    });
    let proxy = match Proxy::builder(Arc::clone(&pool))
        .counter_param(settings.request_counter_param.as_deref())
        .connect_timeout(settings.connect_timeout)
        .response_timeout(settings.response_timeout)
        .max_in_flight_per_backend(settings.backend_max_in_flight)
        .queue(settings.queue_size, settings.queue_timeout)
        .hash_key(
            (settings.strategy == StrategyName::ConsistentHash).then(|| settings.hash_key.clone()),
        )
        .observer(
            (settings.eject_after > 0).then(|| Arc::new(checker.clone()) as Arc<dyn Observer>),
        )
        .retry_budget(Some(RetryBudget {
            percent: settings.retry_budget,
            ..RetryBudget::default()
        }))
        .build()
    {
        Ok(proxy) => proxy,
        Err(e) => return fail(USAGE, &e.to_string()),
    };
    if let Some(path) = &settings.check_only {
        println!(
            "config {} is valid: {} backends, {}",
            path.display(),
            pool.load().backends().len(),
            settings.strategy
        );
        return ExitCode::SUCCESS;
    }
    let listeners = match workers::bind(settings.listen, settings.workers) {
        Ok(listeners) => listeners,
        Err(message) => return fail(1, &message),
    };
    let admin = match settings.admin.map(bind).transpose() {
        Ok(admin) => admin,
        Err(message) => return fail(1, &message),
    };

    // The main thread runs what is not on the request path (signals, health checks, the admin
    // listener, demo backends) on a single-threaded runtime; requests are served by the worker
    // threads, each with a runtime of its own.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(1, &format!("cannot start the runtime: {e}")),
    };
    let served = runtime.block_on(async {
        let signals = Signals::new()?;
        let demo = start_demo(demo)?;
        let addr = listeners[0].local_addr()?;
        tracing::info!(
            backends = pool.load().backends().len(),
            workers = settings.workers,
            strategy = %settings.strategy,
            health = %health_summary(&settings),
            "starting"
        );
        checker.check_all().await;
        // One log line per health transition, starting with every backend's initial state.
        let mut events = checker.subscribe();
        tokio::spawn(async move {
            while let Some(transition) = events.recv().await {
                if transition.to == Health::Healthy {
                    tracing::info!("{transition}");
                } else {
                    tracing::warn!("{transition}");
                }
            }
        });
        let (stop, stopped) = watch::channel(());
        let health = tokio::spawn(checker.clone().run(closed(stopped.clone())));
        if let Some(admin) = admin {
            let admin = TcpListener::from_std(admin)?;
            tracing::info!(addr = %admin.local_addr()?, "admin listening");
            tokio::spawn(admin::serve(
                admin,
                Arc::clone(&pool),
                checker.clone(),
                closed(stopped.clone()),
            ));
        }
        let server = Server::new(proxy.clone())
            .client_header_timeout(settings.client_header_timeout)
            .idle_timeout(settings.idle_timeout)
            .max_connections(settings.max_connections)
            .grace_period(settings.grace_period);
        let workers = Workers::start(listeners, &proxy, &server)?;
        println!("balancer listening on {addr}");
        if !demo.is_empty() {
            println!(
                "demo: {} test backends in this process; try: curl http://{addr}/ping",
                demo.len()
            );
        }
        signals.first().await;
        workers.stop().await;
        drop(stop);
        let _ = health.await;
        for backend in demo {
            backend.kill().await;
        }
        Ok::<_, std::io::Error>(())
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, &e.to_string()),
    }
}

/// How backends are checked, for the start-up line.
fn health_summary(settings: &Settings) -> String {
    let probe = match settings.health_probe {
        ProbeKind::Http => format!("GET {}", settings.health_path),
        ProbeKind::Tcp => "TCP connect".to_owned(),
    };
    let passive = match settings.eject_after {
        0 => "passive off".to_owned(),
        n => format!("eject after {n} failures"),
    };
    format!(
        "{probe} every {:?}, rise {} fall {}, {passive}{}",
        settings.health_interval,
        settings.health_rise,
        settings.health_fall,
        if settings.fail_open {
            ", fail-open"
        } else {
            ""
        }
    )
}

/// The strategy the settings name, seeded if a seed was given.
fn strategy(settings: &Settings) -> Box<dyn Strategy> {
    match settings.strategy {
        StrategyName::RoundRobin => Box::new(RoundRobin::new()),
        StrategyName::WeightedRoundRobin => Box::new(WeightedRoundRobin::new()),
        StrategyName::LeastConnections => Box::new(LeastConnections::new()),
        StrategyName::PowerOfTwo => {
            let p2c = settings
                .seed
                .map_or_else(PowerOfTwo::new, PowerOfTwo::from_seed);
            Box::new(p2c.with_load(match settings.load {
                LoadName::InFlight => Load::InFlight,
                LoadName::PeakEwma => Load::PeakEwma {
                    default_rtt: Duration::from_millis(30),
                },
            }))
        }
        StrategyName::Random => Box::new(settings.seed.map_or_else(Random::new, Random::from_seed)),
        StrategyName::ConsistentHash => {
            Box::new(ConsistentHash::new().with_bounded_load(settings.hash_bounded_load))
        }
    }
}

fn bind(addr: SocketAddr) -> Result<StdListener, String> {
    let listener = StdListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    Ok(listener)
}

fn start_demo(listeners: Vec<StdListener>) -> std::io::Result<Vec<TestBackend>> {
    listeners
        .into_iter()
        .map(|l| {
            l.set_nonblocking(true)?;
            TestBackend::from_listener(TcpListener::from_std(l)?, None)
        })
        .collect()
}

/// Completes when every sender of `rx` is gone.
async fn closed(mut rx: watch::Receiver<()>) {
    while rx.changed().await.is_ok() {}
}

/// SIGTERM and SIGINT, caught from the moment this is created (before the listening line, so a
/// signal sent right after it is never the default, fatal one).
struct Signals {
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Completes on the first SIGTERM or SIGINT; a second one ends the process at once.
    async fn first(mut self) {
        tokio::select! {
            _ = self.terminate.recv() => tracing::info!("SIGTERM received"),
            _ = self.interrupt.recv() => tracing::info!("SIGINT received"),
        }
        tokio::spawn(async move {
            tokio::select! {
                _ = self.terminate.recv() => {},
                _ = self.interrupt.recv() => {},
            }
            tracing::warn!("second signal: exiting now");
            std::process::exit(130);
        });
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("balancer: error: {message}");
    ExitCode::from(code)
}
