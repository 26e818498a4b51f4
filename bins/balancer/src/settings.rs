//! Every setting of the balancer, from the command line over the config file over the defaults.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use lb_core::BackendSpec;
use lb_proxy::HashKey;
use serde::{Deserialize, Deserializer};

/// A strategy's name on the command line and in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum StrategyName {
    /// Each healthy backend in turn.
    RoundRobin,
    /// In turn, as often as each backend's weight says, interleaved (nginx's smooth algorithm).
    WeightedRoundRobin,
    /// The backend with the fewest requests in flight for its weight.
    LeastConnections,
    /// The less loaded of two backends picked at random (see --load).
    PowerOfTwo,
    /// A backend at random, in proportion to the weights.
    Random,
    /// The same backend for the same request key (see --hash-key), Maglev table.
    ConsistentHash,
}

/// How power-of-two measures load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum LoadName {
    /// Requests in flight.
    InFlight,
    /// Peak-EWMA of response latency times requests in flight (linkerd, tower).
    PeakEwma,
}

/// How backends are probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ProbeKind {
    /// GET the health path; an expected status is healthy.
    Http,
    /// A TCP connection opens.
    Tcp,
}

impl fmt::Display for StrategyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_possible_value() {
            Some(value) => f.write_str(value.get_name()),
            None => Ok(()),
        }
    }
}

/// An HTTP load balancer: forwards requests to healthy backends in turn.
#[derive(Debug, Clone, Parser)]
#[command(name = "balancer", version, max_term_width = 100)]
pub(crate) struct Args {
    /// TOML file with any of the settings below (the command line wins); SIGHUP reloads it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check FILE (with the other flags given) and exit: 0 if the balancer would start with it,
    /// 2 with a message naming what is wrong (like `nginx -t`).
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check_config: Option<PathBuf>,
    /// Address (IP:port) to accept client connections on [default: 127.0.0.1:8000].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// A backend, `http://host:port[,weight=N]`; repeat for more
    /// [default: http://127.0.0.1:8080, :8081 and :8082].
    #[arg(long = "backend", value_name = "URL", value_parser = parse_backend)]
    backends: Vec<BackendSpec>,
    /// How to choose a backend for each request [default: round-robin].
    #[arg(long, value_name = "NAME", value_enum)]
    strategy: Option<StrategyName>,
    /// How power-of-two measures load [default: in-flight].
    #[arg(long, value_name = "LOAD", value_enum)]
    load: Option<LoadName>,
    /// What consistent-hash maps to a backend: ip, header:NAME, cookie:NAME, query:NAME or path
    /// [default: ip].
    #[arg(long, value_name = "KEY", value_parser = parse_hash_key)]
    hash_key: Option<HashKey>,
    /// With consistent-hash, no backend takes more than FACTOR (> 1) x the mean in-flight load;
    /// a key then goes to its next backend [default: no bound].
    #[arg(long, value_name = "FACTOR", value_parser = parse_factor)]
    hash_bounded_load: Option<f64>,
    /// Seed for the random strategies (random, power-of-two), for reproducible runs
    /// [default: random].
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Path probed on every backend [default: /health].
    #[arg(long, value_name = "PATH")]
    health_path: Option<String>,
    /// How backends are probed: http (GET the health path) or tcp (a connection opens)
    /// [default: http].
    #[arg(long, value_name = "KIND", value_enum)]
    health_probe: Option<ProbeKind>,
    /// Statuses that mean healthy to the http probe: one code (200) or a range (200-399)
    /// [default: 200-299].
    #[arg(long, value_name = "RANGE", value_parser = parse_status_range)]
    health_status: Option<(u16, u16)>,
    /// Passing probes in a row that bring an unhealthy backend back [default: 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    health_rise: Option<u32>,
    /// Failing probes in a row that take a healthy backend out [default: 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    health_fall: Option<u32>,
    /// Failures in a row in live traffic (connect failures, resets, timeouts, 5xx answers) that
    /// eject a backend; 0 turns passive health off [default: 5].
    #[arg(long, value_name = "N")]
    eject_after: Option<u32>,
    /// How long a first ejection lasts; each one soon after doubles it, up to ten times
    /// [default: 30s].
    #[arg(long, value_name = "DUR", value_parser = parse_duration, allow_hyphen_values = true)]
    eject_time: Option<Duration>,
    /// Most backends ejected at once, in percent of the pool (one always may be) [default: 50].
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(0..=100))]
    max_ejected_percent: Option<u8>,
    /// A backend that recovers gets a tenth of its weight, growing to all of it over this long
    /// (weighted strategies) [default: off].
    #[arg(long, value_name = "DUR", value_parser = parse_duration, allow_hyphen_values = true)]
    slow_start: Option<Duration>,
    /// When no backend is healthy, send requests to every backend not draining rather than
    /// answer 503.
    #[arg(long)]
    fail_open: bool,
    /// Retries to another backend, in percent of requests (plus 10 a second per worker);
    /// beyond it a failed request is not retried [default: 20].
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
    retry_budget: Option<f32>,
    /// Time between two probes of a backend [default: 1s].
    #[arg(long, value_name = "DUR", value_parser = parse_duration, allow_hyphen_values = true)]
    health_interval: Option<Duration>,
    /// Longest wait for a probe's answer [default: 1s].
    #[arg(long, value_name = "DUR", value_parser = parse_duration, allow_hyphen_values = true)]
    health_timeout: Option<Duration>,
    /// Longest wait for a TCP connection to a backend [default: 1s].
    #[arg(long, value_name = "DUR", value_parser = parse_duration, allow_hyphen_values = true)]
    connect_timeout: Option<Duration>,
    /// Longest wait for a backend's response headers once the request is sent; past it the client
    /// gets 504 [default: 30s].
    #[arg(long, value_name = "DUR", value_parser = parse_duration, allow_hyphen_values = true)]
    response_timeout: Option<Duration>,
    /// Longest time a client may take to send a request head once it has begun; slower gets 408
    /// and is disconnected (slowloris) [default: 10s].
    #[arg(long, value_name = "DUR", value_parser = parse_duration, allow_hyphen_values = true)]
    client_header_timeout: Option<Duration>,
    /// Idle keep-alive client connections are closed after this long [default: 60s].
    #[arg(long, value_name = "DUR", value_parser = parse_duration, allow_hyphen_values = true)]
    idle_timeout: Option<Duration>,
    /// Most client connections open at once; more wait in the listen backlog [default: no limit].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: Option<u32>,
    /// Most requests in flight to any one backend; when every backend is full, requests wait in
    /// a short queue, then get 503 [default: no limit].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    backend_max_in_flight: Option<u32>,
    /// Most requests waiting for a backend with room (with --backend-max-in-flight) [default: 128].
    #[arg(long, value_name = "N")]
    queue_size: Option<u32>,
    /// Longest wait in that queue before a 503 [default: 1s].
    #[arg(long, value_name = "DUR", value_parser = parse_duration, allow_hyphen_values = true)]
    queue_timeout: Option<Duration>,
    /// Query parameter carrying the request counter; "" turns it off [default: reqCounter].
    #[arg(long, value_name = "NAME")]
    request_counter_param: Option<String>,
    /// Address (IP:port) of the admin listener (status page, /metrics, /backends, drain and
    /// enable, /healthz); off by default.
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Worker threads serving requests, each with its own event loop, listener and upstream
    /// connections [default: $TOKIO_WORKER_THREADS if set, else the CPUs this process may use].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,
    /// How long requests in flight may still run after SIGTERM or SIGINT [default: 30s].
    #[arg(long, value_name = "DUR", value_parser = parse_duration, allow_hyphen_values = true)]
    grace_period: Option<Duration>,
    /// Write one line per request (client, method, target, status, backend, upstream and total
    /// time) to FILE, or to standard output if FILE is `-` or left out; off by default.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    access_log: Option<PathBuf>,
    /// Reload the --config file whenever it changes (checked every second), not only on SIGHUP.
    #[arg(long)]
    watch_config: bool,
    /// Also start three test backends in this process and balance over them, in place of the
    /// default backends.
    #[arg(long)]
    demo: bool,
}

/// The config file: the same settings as the flags, under the same names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct File {
    listen: Option<SocketAddr>,
    #[serde(default)]
    backend: Vec<FileBackend>,
    strategy: Option<StrategyName>,
    load: Option<LoadName>,
    #[serde(default, deserialize_with = "hash_key")]
    hash_key: Option<HashKey>,
    hash_bounded_load: Option<f64>,
    seed: Option<u64>,
    health_path: Option<String>,
    health_probe: Option<ProbeKind>,
    #[serde(default, deserialize_with = "status_range")]
    health_status: Option<(u16, u16)>,
    health_rise: Option<u32>,
    health_fall: Option<u32>,
    eject_after: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    eject_time: Option<Duration>,
    max_ejected_percent: Option<u8>,
    #[serde(default, deserialize_with = "duration")]
    slow_start: Option<Duration>,
    fail_open: Option<bool>,
    retry_budget: Option<f32>,
    #[serde(default, deserialize_with = "duration")]
    health_interval: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    health_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    response_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    client_header_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    idle_timeout: Option<Duration>,
    max_connections: Option<u32>,
    backend_max_in_flight: Option<u32>,
    queue_size: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    queue_timeout: Option<Duration>,
    request_counter_param: Option<String>,
    admin: Option<SocketAddr>,
    workers: Option<u16>,
    #[serde(default, deserialize_with = "duration")]
    grace_period: Option<Duration>,
    access_log: Option<PathBuf>,
    watch_config: Option<bool>,
}

/// One `[[backend]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBackend {
    url: String,
    weight: Option<u32>,
}

/// The settings the balancer runs with.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) listen: SocketAddr,
    pub(crate) backends: Vec<BackendSpec>,
    pub(crate) strategy: StrategyName,
    pub(crate) load: LoadName,
    pub(crate) hash_key: HashKey,
    pub(crate) hash_bounded_load: Option<f64>,
    pub(crate) seed: Option<u64>,
    pub(crate) health_path: String,
    pub(crate) health_probe: ProbeKind,
    pub(crate) health_status: (u16, u16),
    pub(crate) health_rise: u32,
    pub(crate) health_fall: u32,
    pub(crate) eject_after: u32,
    pub(crate) eject_time: Duration,
    pub(crate) max_ejected_percent: u8,
    pub(crate) slow_start: Option<Duration>,
    pub(crate) fail_open: bool,
    pub(crate) retry_budget: f32,
    pub(crate) health_interval: Duration,
    pub(crate) health_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) client_header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: Option<usize>,
    pub(crate) backend_max_in_flight: Option<u64>,
    pub(crate) queue_size: usize,
    pub(crate) queue_timeout: Duration,
    pub(crate) request_counter_param: Option<String>,
    pub(crate) admin: Option<SocketAddr>,
    pub(crate) workers: usize,
    pub(crate) grace_period: Duration,
    /// No backend was given anywhere: these are the original's three.
    pub(crate) default_backends: bool,
    pub(crate) access_log: Option<PathBuf>,
    /// The config file read, which SIGHUP reads again.
    pub(crate) config: Option<PathBuf>,
    pub(crate) watch_config: bool,
    pub(crate) demo: bool,
    /// `--check-config`: the file checked, and nothing to run.
    pub(crate) check_only: Option<PathBuf>,
}

/// The backends of the original Go balancer.
pub(crate) const DEFAULT_BACKENDS: [&str; 3] = [
    "http://127.0.0.1:8080",
    "http://127.0.0.1:8081",
    "http://127.0.0.1:8082",
];

impl Settings {
    /// Merges the command line over the config file (if any) over the defaults, and checks what
    /// clap could not. Every error names the value at fault.
    pub(crate) fn from_args(args: Args) -> Result<Self, String> {
        let check_only = args.check_config.clone();
        let file = match args.config.as_ref().or(check_only.as_ref()) {
            Some(path) => read_file(path)?,
            None => File::default(),
        };
        let mut backends = args.backends;
        if backends.is_empty() {
            for b in file.backend {
                let spec = b.url.parse::<BackendSpec>().map_err(|e| e.to_string())?;
                let spec = match b.weight {
                    Some(w) => spec.with_weight(w).map_err(|e| e.to_string())?,
                    None => spec,
                };
                backends.push(spec);
            }
        }
        let demo = args.demo;
        let default_backends = backends.is_empty() && !demo;
        if default_backends {
            backends = DEFAULT_BACKENDS
                .iter()
                .map(|u| u.parse())
                .collect::<Result<_, _>>()
                .map_err(|e: lb_core::Error| e.to_string())?;
        }
        let settings = Settings {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8000))),
            backends,
            strategy: args
                .strategy
                .or(file.strategy)
                .unwrap_or(StrategyName::RoundRobin),
            load: args.load.or(file.load).unwrap_or(LoadName::InFlight),
            hash_key: args.hash_key.or(file.hash_key).unwrap_or(HashKey::ClientIp),
            hash_bounded_load: match args.hash_bounded_load.or(file.hash_bounded_load) {
                Some(f) if f.is_finite() && f > 1.0 => Some(f),
                Some(f) => {
                    return Err(format!(
                        "invalid --hash-bounded-load \"{f}\": must be a number above 1, e.g. 1.25"
                    ));
                }
                None => None,
            },
            seed: args.seed.or(file.seed),
            health_path: args
                .health_path
                .or(file.health_path)
                .unwrap_or_else(|| "/health".to_owned()),
            health_probe: args
                .health_probe
                .or(file.health_probe)
                .unwrap_or(ProbeKind::Http),
            health_status: args
                .health_status
                .or(file.health_status)
                .unwrap_or((200, 299)),
            health_rise: at_least_one("health-rise", args.health_rise.or(file.health_rise))?
                .unwrap_or(1),
            health_fall: at_least_one("health-fall", args.health_fall.or(file.health_fall))?
                .unwrap_or(1),
            eject_after: args.eject_after.or(file.eject_after).unwrap_or(5),
            eject_time: args
                .eject_time
                .or(file.eject_time)
                .unwrap_or(Duration::from_secs(30)),
            max_ejected_percent: match args.max_ejected_percent.or(file.max_ejected_percent) {
                Some(p) if p > 100 => {
                    return Err(format!(
                        "invalid max-ejected-percent \"{p}\": must be 0 to 100"
                    ));
                }
                p => p.unwrap_or(50),
            },
            slow_start: args.slow_start.or(file.slow_start),
            fail_open: args.fail_open || file.fail_open.unwrap_or(false),
            retry_budget: match args.retry_budget.or(file.retry_budget) {
                Some(p) => {
                    check_percent(p).map_err(|e| format!("invalid retry-budget \"{p}\": {e}"))?
                }
                None => 20.0,
            },
            health_interval: args
                .health_interval
                .or(file.health_interval)
                .unwrap_or(Duration::from_secs(1)),
            health_timeout: args
                .health_timeout
                .or(file.health_timeout)
                .unwrap_or(Duration::from_secs(1)),
            connect_timeout: args
                .connect_timeout
                .or(file.connect_timeout)
                .unwrap_or(Duration::from_secs(1)),
            response_timeout: args
                .response_timeout
                .or(file.response_timeout)
                .unwrap_or(Duration::from_secs(30)),
            client_header_timeout: args
                .client_header_timeout
                .or(file.client_header_timeout)
                .unwrap_or(Duration::from_secs(10)),
            idle_timeout: args
                .idle_timeout
                .or(file.idle_timeout)
                .unwrap_or(Duration::from_secs(60)),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .filter(|&n| n > 0)
                .map(|n| n as usize),
            backend_max_in_flight: args
                .backend_max_in_flight
                .or(file.backend_max_in_flight)
                .filter(|&n| n > 0)
                .map(u64::from),
            queue_size: args.queue_size.or(file.queue_size).unwrap_or(128) as usize,
            queue_timeout: args
                .queue_timeout
                .or(file.queue_timeout)
                .unwrap_or(Duration::from_secs(1)),
            request_counter_param: Some(
                args.request_counter_param
                    .or(file.request_counter_param)
                    .unwrap_or_else(|| "reqCounter".to_owned()),
            )
            .filter(|p| !p.is_empty()),
            admin: args.admin.or(file.admin),
            workers: args
                .workers
                .or(file.workers)
                .map_or_else(default_workers, usize::from),
            grace_period: args
                .grace_period
                .or(file.grace_period)
                .unwrap_or(Duration::from_secs(30)),
            default_backends,
            access_log: args.access_log.or(file.access_log),
            config: args.config,
            watch_config: args.watch_config || file.watch_config.unwrap_or(false),
            demo,
            check_only,
        };
        if settings.watch_config && settings.config.is_none() {
            return Err("--watch-config needs a --config file to watch".to_owned());
        }
        if settings.admin == Some(settings.listen) && settings.listen.port() != 0 {
            return Err(format!(
                "--admin {} is the traffic address; give the admin listener its own",
                settings.listen
            ));
        }
        Ok(settings)
    }
}

impl Settings {
    /// The settings that differ in `new` and that a reload cannot change (they are read once,
    /// when listeners and workers start): they take effect at the next restart.
    pub(crate) fn restart_only_changes(&self, new: &Settings) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut check = |name, differs: bool| {
            if differs {
                changed.push(name);
            }
        };
        check("listen", self.listen != new.listen);
        check("admin", self.admin != new.admin);
        check("workers", self.workers != new.workers);
        check("hash-key", self.hash_key != new.hash_key);
        check("retry-budget", self.retry_budget != new.retry_budget);
        check(
            "connect-timeout",
            self.connect_timeout != new.connect_timeout,
        );
        check(
            "response-timeout",
            self.response_timeout != new.response_timeout,
        );
        check(
            "client-header-timeout",
            self.client_header_timeout != new.client_header_timeout,
        );
        check("idle-timeout", self.idle_timeout != new.idle_timeout);
        check(
            "max-connections",
            self.max_connections != new.max_connections,
        );
        check(
            "backend-max-in-flight",
            self.backend_max_in_flight != new.backend_max_in_flight,
        );
        check("queue-size", self.queue_size != new.queue_size);
        check("queue-timeout", self.queue_timeout != new.queue_timeout);
        check(
            "request-counter-param",
            self.request_counter_param != new.request_counter_param,
        );
        check("grace-period", self.grace_period != new.grace_period);
        check("access-log", self.access_log != new.access_log);
        check("watch-config", self.watch_config != new.watch_config);
        changed
    }
}

/// `$TOKIO_WORKER_THREADS` if it is a positive number, else the CPUs this process may run on
/// (which respects `taskset`), else 1.
fn default_workers() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1)
}

fn read_file(path: &Path) -> Result<File, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        // One line, so that a refused reload is one log line: where, then what.
        let at = e.span().map_or(String::new(), |span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(" line {line}, column {column}:")
        });
        format!(
            "invalid config file {}:{at} {}",
            path.display(),
            e.message().trim_end()
        )
    })
}

fn at_least_one(name: &str, value: Option<u32>) -> Result<Option<u32>, String> {
    match value {
        Some(0) => Err(format!("invalid {name} \"0\": must be at least 1")),
        v => Ok(v),
    }
}

/// `200` or `200-399`: statuses from 100 to 599, low to high.
fn parse_status_range(text: &str) -> Result<(u16, u16), String> {
    let (low, high) = text.split_once('-').unwrap_or((text, text));
    let code = |t: &str| {
        t.trim()
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
    };
    match (code(low), code(high)) {
        (Some(low), Some(high)) if low <= high => Ok((low, high)),
        _ => Err("must be a status code (200) or a range of them (200-399), 100 to 599".into()),
    }
}

fn status_range<'de, D: Deserializer<'de>>(de: D) -> Result<Option<(u16, u16)>, D::Error> {
    let text = String::deserialize(de)?;
    parse_status_range(&text)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("invalid status range {text:?}: {e}")))
}

/// A percentage, 0 to 1000 (tower's budget allows several retries per request).
fn parse_percent(text: &str) -> Result<f32, String> {
    text.trim_end_matches('%')
        .parse::<f32>()
        .map_err(|_| PERCENT.to_owned())
        .and_then(check_percent)
}

fn check_percent(p: f32) -> Result<f32, String> {
    if (0.0..=1000.0).contains(&p) {
        Ok(p)
    } else {
        Err(PERCENT.to_owned())
    }
}

const PERCENT: &str = "must be a percentage from 0 to 1000, e.g. 20";

fn parse_hash_key(text: &str) -> Result<HashKey, String> {
    text.parse()
        .map_err(|e: lb_proxy::ProxyError| e.to_string())
}

fn parse_factor(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() && f > 1.0 => Ok(f),
        _ => Err("must be a number above 1, e.g. 1.25".to_owned()),
    }
}

fn hash_key<'de, D: Deserializer<'de>>(de: D) -> Result<Option<HashKey>, D::Error> {
    let text = String::deserialize(de)?;
    parse_hash_key(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn parse_backend(text: &str) -> Result<BackendSpec, String> {
    text.parse().map_err(|e: lb_core::Error| e.to_string())
}

/// A positive human duration; zero would mean "never wait" or "probe in a busy loop".
fn parse_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be greater than zero".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e} (examples: 500ms, 1s, 2m)")),
    }
}

fn duration<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(de)?;
    parse_duration(&text)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Result<Settings, String> {
        let args = Args::try_parse_from(std::iter::once("balancer").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Settings::from_args(args)
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.listen, "127.0.0.1:8000".parse().unwrap());
        let ids: Vec<_> = s.backends.iter().map(|b| b.id()).collect();
        assert_eq!(ids, ["127.0.0.1:8080", "127.0.0.1:8081", "127.0.0.1:8082"]);
        assert_eq!(s.strategy, StrategyName::RoundRobin);
        assert_eq!(s.load, LoadName::InFlight);
        assert_eq!(s.hash_key, HashKey::ClientIp);
        assert_eq!(s.hash_bounded_load, None);
        assert_eq!(s.health_path, "/health");
        assert_eq!(s.health_interval, Duration::from_secs(1));
        assert_eq!(s.health_timeout, Duration::from_secs(1));
        assert_eq!(s.connect_timeout, Duration::from_secs(1));
        assert_eq!(s.response_timeout, Duration::from_secs(30));
        assert_eq!(s.client_header_timeout, Duration::from_secs(10));
        assert_eq!(s.idle_timeout, Duration::from_secs(60));
        assert_eq!(s.grace_period, Duration::from_secs(30));
        assert_eq!(s.request_counter_param.as_deref(), Some("reqCounter"));
        assert_eq!(s.admin, None);
        assert!(!s.demo);
    }

    #[test]
    fn flags_override_and_empty_counter_param_disables() {
        let s = settings(&[
            "--backend",
            "http://127.0.0.1:9",
            "--health-interval",
            "500ms",
            "--response-timeout",
            "2m",
            "--request-counter-param",
            "",
        ])
        .unwrap();
        assert_eq!(s.backends.len(), 1);
        assert_eq!(s.health_interval, Duration::from_millis(500));
        assert_eq!(s.response_timeout, Duration::from_secs(120));
        assert_eq!(s.request_counter_param, None);
    }

    #[test]
    fn health_settings_default_and_parse() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.health_probe, ProbeKind::Http);
        assert_eq!(s.health_status, (200, 299));
        assert_eq!((s.health_rise, s.health_fall), (1, 1));
        assert_eq!(s.eject_after, 5);
        assert_eq!(s.eject_time, Duration::from_secs(30));
        assert_eq!(s.max_ejected_percent, 50);
        assert_eq!(s.slow_start, None);
        assert!(!s.fail_open);
        assert_eq!(s.retry_budget, 20.0);

        let s = settings(&[
            "--health-probe",
            "tcp",
            "--health-status",
            "200-399",
            "--health-rise",
            "3",
            "--health-fall",
            "2",
            "--eject-after",
            "0",
            "--eject-time",
            "5s",
            "--max-ejected-percent",
            "100",
            "--slow-start",
            "30s",
            "--fail-open",
            "--retry-budget",
            "5%",
        ])
        .unwrap();
        assert_eq!(s.health_probe, ProbeKind::Tcp);
        assert_eq!(s.health_status, (200, 399));
        assert_eq!((s.health_rise, s.health_fall), (3, 2));
        assert_eq!(s.eject_after, 0);
        assert_eq!(s.eject_time, Duration::from_secs(5));
        assert_eq!(s.max_ejected_percent, 100);
        assert_eq!(s.slow_start, Some(Duration::from_secs(30)));
        assert!(s.fail_open);
        assert_eq!(s.retry_budget, 5.0);
        assert_eq!(
            settings(&["--health-status", "204"]).unwrap().health_status,
            (204, 204)
        );

        for (flag, value) in [
            ("--health-probe", "icmp"),
            ("--health-status", "299-200"),
            ("--health-status", "2xx"),
            ("--health-rise", "0"),
            ("--health-fall", "-1"),
            ("--eject-after", "many"),
            ("--eject-time", "0s"),
            ("--max-ejected-percent", "101"),
            ("--slow-start", "soon"),
            ("--retry-budget", "-5"),
        ] {
            let err = settings(&[flag, value]).unwrap_err();
            assert!(err.contains(value), "{flag} {value}: {err}");
        }
    }

    #[test]
    fn demo_alone_brings_no_default_backends() {
        assert!(settings(&["--demo"]).unwrap().backends.is_empty());
    }

    #[test]
    fn bad_values_are_named() {
        assert!(
            settings(&["--backend", "ftp://x:1"])
                .unwrap_err()
                .contains("ftp://x:1")
        );
        assert!(
            settings(&["--health-interval", "5x"])
                .unwrap_err()
                .contains("5x")
        );
        assert!(
            settings(&["--strategy", "fastest"])
                .unwrap_err()
                .contains("fastest")
        );
        assert!(
            settings(&["--hash-key", "body"])
                .unwrap_err()
                .contains("body")
        );
        assert!(
            settings(&["--hash-bounded-load", "0.9"])
                .unwrap_err()
                .contains("0.9")
        );
        assert!(
            settings(&["--load", "vibes"])
                .unwrap_err()
                .contains("vibes")
        );
        assert!(
            settings(&["--listen", "nowhere"])
                .unwrap_err()
                .contains("nowhere")
        );
        assert!(
            settings(&["--connect-timeout", "0s"])
                .unwrap_err()
                .contains("--connect-timeout")
        );
        assert!(
            settings(&["--frobnicate"])
                .unwrap_err()
                .contains("--frobnicate")
        );
    }

    #[test]
    fn the_shipped_example_config_is_valid_and_matches_the_defaults() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../balancer.toml");
        let mut from_file = settings(&["--config", example]).unwrap();
        assert_eq!(from_file.config.take().unwrap(), PathBuf::from(example));
        // The same three backends, listed rather than defaulted.
        assert!(!from_file.default_backends);
        from_file.default_backends = true;
        let defaults = settings(&[]).unwrap();
        assert_eq!(format!("{from_file:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn config_file_is_read_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("lb-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ok.toml");
        std::fs::write(
            &path,
            r#"
listen = "127.0.0.1:9100"
health-interval = "2s"
request-counter-param = "n"

[[backend]]
url = "http://127.0.0.1:7001"
weight = 2

[[backend]]
url = "http://127.0.0.1:7002"
"#,
        )
        .unwrap();
        let file = path.to_str().unwrap();
        let s = settings(&["--config", file, "--health-interval", "3s"]).unwrap();
        assert_eq!(s.listen, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(s.health_interval, Duration::from_secs(3));
        assert_eq!(s.request_counter_param.as_deref(), Some("n"));
        assert_eq!(s.backends.len(), 2);
        assert_eq!(s.backends[0].weight(), 2);

        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "listen = \"127.0.0.1:1\"\ncolour = \"red\"\n").unwrap();
        let err = settings(&["--config", bad.to_str().unwrap()]).unwrap_err();
        assert!(err.contains("colour") && err.contains("line 2"), "{err}");

        let bad = dir.join("bad-duration.toml");
        std::fs::write(&bad, "health-timeout = \"soon\"\n").unwrap();
        let err = settings(&["--config", bad.to_str().unwrap()]).unwrap_err();
        assert!(err.contains("soon"), "{err}");

        let err = settings(&["--config", "/nonexistent/lb.toml"]).unwrap_err();
        assert!(err.contains("/nonexistent/lb.toml"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
