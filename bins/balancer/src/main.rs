//! `balancer`: the standalone load balancer. Parses its settings, wires the pool, the health
//! checker and the proxy together, serves until SIGTERM or SIGINT, then drains and exits 0.

mod access_log;
mod admin;
mod metrics;
mod reload;
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
    BackendSpec, ConsistentHash, Health, LeastConnections, Load, Observer, Pool, PowerOfTwo,
    Random, RoundRobin, Strategy, WeightedRoundRobin,
};
use lb_health::{Checker, HttpProbe, Policy, Probe, TcpProbe};
use lb_proxy::{AccessLog, Proxy, RetryBudget, Server};
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
    let args = Args::parse();
    let settings = match Settings::from_args(args.clone()) {
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
    let mut demo_specs = Vec::new();
    for listener in &demo {
        match listener.local_addr().map(|a| format!("http://{a}").parse()) {
            Ok(Ok(spec)) => demo_specs.push(spec),
            _ => return fail(1, "cannot read a demo backend's address"),
        }
    }
    let specs = settings.backends.iter().chain(&demo_specs).cloned();
    let pool = match Pool::new(specs, strategy(&settings)) {
        Ok(pool) => Arc::new(pool),
        Err(e) => return fail(USAGE, &e.to_string()),
    };
    pool.set_fail_open(settings.fail_open);
    let checker = match probe(&settings) {
        Ok(probe) => Checker::new(Arc::clone(&pool), probe),
        Err(message) => return fail(USAGE, &message),
    };
    configure_health(&checker, &settings);
    let access_log = match settings.access_log.as_deref().map(access_log::Lines::open) {
        Some(Ok(lines)) => Some(Arc::new(lines) as Arc<dyn AccessLog>),
        Some(Err(message)) => return fail(USAGE, &message),
        None => None,
    };
    let proxy = match Proxy::builder(Arc::clone(&pool))
        .counter_param(settings.request_counter_param.as_deref())
        .connect_timeout(settings.connect_timeout)
        .response_timeout(settings.response_timeout)
        .max_in_flight_per_backend(settings.backend_max_in_flight)
        .queue(settings.queue_size, settings.queue_timeout)
        // Read per request only while the strategy in force hashes requests (a reload may
        // switch to one that does).
        .hash_key(Some(settings.hash_key.clone()))
        // Passive health; a reload may turn it on or off (`eject-after`), so always attached.
        .observer(Some(Arc::new(checker.clone()) as Arc<dyn Observer>))
        .retry_budget(Some(RetryBudget {
            percent: settings.retry_budget,
            ..RetryBudget::default()
        }))
        .access_log(access_log.clone())
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

    // The main thread runs what is not on the request path (signals, health checks, reloads,
    // the admin listener, demo backends) on a single-threaded runtime; requests are served by
    // the worker threads, each with a runtime of its own.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(1, &format!("cannot start the runtime: {e}")),
    };
    let served = runtime.block_on(async {
        let mut signals = Signals::new()?;
        let demo = start_demo(demo)?;
        let addr = listeners[0].local_addr()?;
        tracing::info!(
            backends = pool.load().backends().len(),
            workers = settings.workers,
            strategy = %settings.strategy,
            health = %health_summary(&settings),
            config = %settings.config.as_deref().map_or("none".into(), |p| p.display().to_string()),
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
        let reloads = Arc::new(metrics::Reloads::new());
        if let Some(admin) = admin {
            let admin = TcpListener::from_std(admin)?;
            tracing::info!(addr = %admin.local_addr()?, "admin listening");
            let state = admin::Admin {
                pool: Arc::clone(&pool),
                checker: checker.clone(),
                metrics: metrics::registry(Arc::clone(&pool), proxy.clone(), Arc::clone(&reloads)),
            };
            tokio::spawn(admin::serve(
                admin,
                Arc::new(state),
                closed(stopped.clone()),
            ));
        }
        let mut file_changes = match (&settings.config, settings.watch_config) {
            (Some(path), true) => reload::watch(path.clone(), closed(stopped.clone())),
            _ => tokio::sync::mpsc::channel(1).1,
        };
        let server = Server::new(proxy.clone())
            .client_header_timeout(settings.client_header_timeout)
            .idle_timeout(settings.idle_timeout)
            .max_connections(settings.max_connections)
            .grace_period(settings.grace_period);
        let workers = Workers::start(listeners, &proxy, &server, access_log.is_some())?;
        println!("balancer listening on {addr}");
        if !demo.is_empty() {
            println!(
                "demo: {} test backends in this process; try: curl http://{addr}/ping",
                demo.len()
            );
        }
        let mut reloader = Reloader {
            args,
            running: settings,
            demo: demo_specs,
            checker: checker.clone(),
            pool: Arc::clone(&pool),
            reloads,
        };
        'serving: loop {
            let cause = tokio::select! {
                signalled = signals.next() => match signalled {
                    Signalled::Stop => break,
                    Signalled::Reload => "SIGHUP",
                },
                Some(()) = file_changes.recv() => "config file changed",
            };
            // A reload waits for new backends' first probes: SIGTERM is still heard meanwhile
            // (a SIGHUP then is already being served by the reload under way).
            let mut reload = std::pin::pin!(reloader.reload(cause));
            loop {
                tokio::select! {
                    () = &mut reload => break,
                    signalled = signals.next() => if let Signalled::Stop = signalled {
                        break 'serving;
                    },
                }
            }
        }
        signals.exit_on_second();
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

/// Applies a changed configuration file to the running balancer (SIGHUP, `--watch-config`).
struct Reloader {
    args: Args,
    running: Settings,
    /// The `--demo` backends, which every configuration keeps.
    demo: Vec<BackendSpec>,
    checker: Checker,
    pool: Arc<Pool>,
    reloads: Arc<metrics::Reloads>,
}

impl Reloader {
    /// Reads the configuration again and swaps it in; if it is invalid, logs why and keeps the
    /// one in force.
    async fn reload(&mut self, cause: &str) {
        match self.try_reload(cause).await {
            Ok(()) => self.reloads.record(true),
            Err(error) => {
                self.reloads.record(false);
                tracing::error!(
                    cause,
                    %error,
                    "reload refused: still serving the previous configuration"
                );
            }
        }
    }

    async fn try_reload(&mut self, cause: &str) -> Result<(), String> {
        let new = Settings::from_args(self.args.clone())?;
        if new.default_backends && !self.running.default_backends {
            // An empty or cut-off file (one being written, say) must not replace every backend
            // with the built-in defaults.
            return Err("the configuration lists no backend".to_owned());
        }
        let probe = probe(&new)?;
        let specs: Vec<BackendSpec> = new.backends.iter().chain(&self.demo).cloned().collect();
        let mut ids = std::collections::HashSet::new();
        if let Some(twice) = specs.iter().find(|s| !ids.insert(s.id())) {
            return Err(format!("duplicate backend {}", twice.id()));
        }
        let strategy_changed = (new.strategy, new.load, new.seed, new.hash_bounded_load)
            != (
                self.running.strategy,
                self.running.load,
                self.running.seed,
                self.running.hash_bounded_load,
            );
        let strategy = strategy_changed.then(|| Arc::from(strategy(&new)));
        // Nothing below can fail now: health settings first, so that new backends are probed
        // the new way.
        self.pool.set_fail_open(new.fail_open);
        self.checker.set_probe(probe);
        configure_health(&self.checker, &new);
        let changes = self
            .checker
            .update_backends(specs, strategy)
            .await
            .map_err(|e| e.to_string())?;
        let ids = |backends: &[Arc<lb_core::Backend>]| {
            backends
                .iter()
                .map(|b| b.id())
                .collect::<Vec<_>>()
                .join(" ")
        };
        tracing::info!(
            cause,
            backends = self.pool.load().backends().len(),
            added = %ids(&changes.added),
            removed = %ids(&changes.removed),
            reweighted = %ids(&changes.reweighted),
            strategy = %new.strategy,
            health = %health_summary(&new),
            "configuration reloaded"
        );
        let restart = self.running.restart_only_changes(&new);
        if !restart.is_empty() {
            tracing::warn!(
                settings = %restart.join(", "),
                "changed, but only take effect at the next restart"
            );
        }
        self.running = new;
        Ok(())
    }
}

/// The probe the settings ask for.
fn probe(settings: &Settings) -> Result<Arc<dyn Probe>, String> {
    Ok(match settings.health_probe {
        ProbeKind::Http => {
            let (low, high) = settings.health_status;
            let probe = HttpProbe::new(&settings.health_path).map_err(|e| e.to_string())?;
            Arc::new(probe.with_expected_status(low..=high))
        }
        ProbeKind::Tcp => Arc::new(TcpProbe),
    })
}

/// Sets the checker's interval, timeout and policy from the settings.
fn configure_health(checker: &Checker, settings: &Settings) {
    checker.set_interval(settings.health_interval);
    checker.set_timeout(settings.health_timeout);
    checker.set_policy(Policy {
        rise: settings.health_rise,
        fall: settings.health_fall,
        eject_after: settings.eject_after,
        ejection: settings.eject_time,
        max_ejection: settings.eject_time.saturating_mul(10),
        max_ejected_percent: settings.max_ejected_percent,
        slow_start: settings.slow_start,
    });
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

/// SIGTERM, SIGINT and SIGHUP, caught from the moment this is created (before the listening
/// line, so a signal sent right after it is never the default, fatal one).
struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

enum Signalled {
    /// SIGTERM or SIGINT.
    Stop,
    /// SIGHUP.
    Reload,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal that asks for something.
    async fn next(&mut self) -> Signalled {
        tokio::select! {
            _ = self.terminate.recv() => tracing::info!("SIGTERM received"),
            _ = self.interrupt.recv() => tracing::info!("SIGINT received"),
            _ = self.hangup.recv() => {
                tracing::info!("SIGHUP received: reloading the configuration");
                return Signalled::Reload;
            }
        }
        Signalled::Stop
    }

    /// From now on, a second SIGTERM or SIGINT ends the process at once (SIGHUP is ignored).
    fn exit_on_second(mut self) {
        tokio::spawn(async move {
            while let Signalled::Reload = self.next().await {}
            tracing::warn!("second signal: exiting now");
            std::process::exit(130);
        });
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("balancer: error: {message}");
    ExitCode::from(code)
}
