//! One upstream server and the guard that counts requests in flight to it.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use url::{Host, Url};

use crate::{Error, Stats};

/// Whether a backend may be given new requests, and if not, why.
///
/// Stored in one atomic byte per backend; the pool's snapshot copies it into its list of eligible
/// backends whenever it changes, so the request path never reads it separately. Only `Healthy`
/// takes new requests (unless the pool fails open, see [`Pool::set_fail_open`]).
///
/// [`Pool::set_fail_open`]: crate::Pool::set_fail_open
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Health {
    /// Takes traffic. Every backend starts here, so a pool without a health checker serves.
    Healthy = 0,
    /// Failed its active health checks; takes no traffic until they pass again.
    Unhealthy = 1,
    /// Taken out by passive health (outlier detection): too many failures in live traffic.
    Ejected = 2,
    /// Taken out by an operator: no new requests, those in flight finish.
    Draining = 3,
}

impl Health {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Health::Healthy,
            2 => Health::Ejected,
            3 => Health::Draining,
            _ => Health::Unhealthy,
        }
    }

    /// True when a backend in this state may get new requests.
    pub fn is_eligible(self) -> bool {
        self == Health::Healthy
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Ejected => "ejected",
            Health::Draining => "draining",
        })
    }
}

/// The HTTP version spoken to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// HTTP/1.1 over TCP, one request at a time per connection (`http://`).
    #[default]
    Http1,
    /// HTTP/2 over cleartext TCP with prior knowledge, many requests multiplexed on one
    /// connection (`h2c://`, or `,protocol=h2c`).
    H2c,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http1 => "http1",
            Protocol::H2c => "h2c",
        })
    }
}

/// Where to connect: an IP address is used as is, a host name is resolved at connect time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// An IP literal and port.
    Ip(SocketAddr),
    /// A DNS name and port.
    Name(String, u16),
}

/// A backend as written by a user: `http://host:port[,weight=N][,protocol=h2c]`, or
/// `h2c://host:port` for an HTTP/2 (cleartext, prior knowledge) backend.
///
/// Parsing checks everything that can be checked without the network, and every error names the
/// text at fault.
///
/// ```
/// use lb_core::BackendSpec;
///
/// let spec: BackendSpec = "http://127.0.0.1:8080,weight=3".parse().unwrap();
/// assert_eq!(spec.id(), "127.0.0.1:8080");
/// assert_eq!(spec.weight(), 3);
/// assert!("ftp://127.0.0.1:21".parse::<BackendSpec>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    url: Url,
    id: String,
    address: Address,
    weight: u32,
    protocol: Protocol,
}

impl BackendSpec {
    /// Parses a bare backend URL (`http://host[:port]` or `h2c://host[:port]`, port 80 when
    /// omitted), weight 1.
    pub fn from_url(text: &str) -> Result<Self, Error> {
        let url = Url::parse(text).map_err(|e| Error::InvalidUrl {
            url: text.to_owned(),
            reason: e.to_string(),
        })?;
        let protocol = match url.scheme() {
            "http" => Protocol::Http1,
            "h2c" => Protocol::H2c,
            other => {
                return Err(Error::UnsupportedScheme {
                    scheme: other.to_owned(),
                    url: text.to_owned(),
                });
            }
        };
        let unexpected = |part| Error::UnexpectedPart {
            url: text.to_owned(),
            part,
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(unexpected("credentials"));
        }
        // `h2c` is not a scheme the URL standard knows, so its empty path stays empty.
        if !matches!(url.path(), "/" | "") {
            return Err(unexpected("a path"));
        }
        if url.query().is_some() {
            return Err(unexpected("a query"));
        }
        if url.fragment().is_some() {
            return Err(unexpected("a fragment"));
        }
        let port = url.port().unwrap_or(80);
        let (address, id) = match url.host() {
            Some(Host::Ipv4(ip)) => (
                Address::Ip(SocketAddr::new(IpAddr::V4(ip), port)),
                format!("{ip}:{port}"),
            ),
            Some(Host::Ipv6(ip)) => (
                Address::Ip(SocketAddr::new(IpAddr::V6(ip), port)),
                format!("[{ip}]:{port}"),
            ),
            // In a URL of a scheme the URL standard does not know (h2c), an IPv4 address stays
            // an opaque name: recognise it here.
            Some(Host::Domain(name)) if !name.is_empty() => {
                let address = match name.parse::<IpAddr>() {
                    Ok(ip) => Address::Ip(SocketAddr::new(ip, port)),
                    Err(_) => Address::Name(name.to_owned(), port),
                };
                (address, format!("{name}:{port}"))
            }
            _ => {
                return Err(Error::InvalidUrl {
                    url: text.to_owned(),
                    reason: "no host".to_owned(),
                });
            }
        };
        Ok(BackendSpec {
            url,
            id,
            address,
            weight: 1,
            protocol,
        })
    }

    /// Sets the protocol spoken to the backend.
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Sets the weight; 0 is refused because a backend that never gets traffic should be removed.
    pub fn with_weight(mut self, weight: u32) -> Result<Self, Error> {
        if weight == 0 {
            return Err(Error::InvalidOption {
                key: "weight",
                value: "0".to_owned(),
                spec: self.url.as_str().to_owned(),
                reason: "must be a whole number from 1",
            });
        }
        self.weight = weight;
        Ok(self)
    }

    /// `host:port`, the name this backend goes by in logs, metrics and the admin API.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The URL, normalised (`http://host:port/`).
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Where to connect.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The relative share of traffic for weighted strategies (default 1).
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// The protocol spoken to the backend (default HTTP/1.1).
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }
}

impl FromStr for BackendSpec {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let mut parts = text.split(',');
        let mut spec = BackendSpec::from_url(parts.next().unwrap_or_default().trim())?;
        for option in parts {
            let (key, value) = option.split_once('=').unwrap_or((option, ""));
            match key.trim() {
                "weight" => {
                    let weight = value
                        .trim()
                        .parse::<u32>()
                        .map_err(|_| Error::InvalidOption {
                            key: "weight",
                            value: value.to_owned(),
                            spec: text.to_owned(),
                            reason: "must be a whole number from 1",
                        })?;
                    spec = spec.with_weight(weight).map_err(|_| Error::InvalidOption {
                        key: "weight",
                        value: value.to_owned(),
                        spec: text.to_owned(),
                        reason: "must be a whole number from 1",
                    })?;
                }
                "protocol" => {
                    let protocol = match value.trim() {
                        "http1" | "http/1.1" => Protocol::Http1,
                        "h2c" | "http2" => Protocol::H2c,
                        _ => {
                            return Err(Error::InvalidOption {
                                key: "protocol",
                                value: value.to_owned(),
                                spec: text.to_owned(),
                                reason: "must be http1 or h2c",
                            });
                        }
                    };
                    spec = spec.with_protocol(protocol);
                }
                other => {
                    return Err(Error::UnknownOption {
                        key: other.to_owned(),
                        spec: text.to_owned(),
                    });
                }
            }
        }
        Ok(spec)
    }
}

impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.protocol {
            Protocol::Http1 => "http",
            Protocol::H2c => "h2c",
        };
        write!(f, "{scheme}://{}", self.id)?;
        if self.weight != 1 {
            write!(f, ",weight={}", self.weight)?;
        }
        Ok(())
    }
}

/// [`Backend::weight_scale`] of a backend at its full weight.
pub const FULL_WEIGHT: u32 = 1000;

/// A live backend: its description plus the atomics the request path and the health checker share.
///
/// A `Backend` lives in an `Arc` owned by the [`Pool`](crate::Pool); snapshots share it, so its
/// counters survive every snapshot swap.
pub struct Backend {
    key: u64,
    in_flight: AtomicU64,
    health: AtomicU8,
    /// Failures in a row seen in live traffic (passive health's input).
    failure_streak: AtomicU32,
    /// The configured weight (a reload may change it).
    weight: AtomicU32,
    /// Share of the weight in force, in thousandths: below 1000 while slow start ramps it up.
    weight_scale: AtomicU32,
    stats: Stats,
    /// Requests in flight to every backend of the pool this one belongs to.
    total_in_flight: Arc<AtomicU64>,
    latency: PeakEwma,
    spec: BackendSpec,
}

impl Backend {
    /// A healthy backend with no request in flight, in a pool of its own.
    pub fn new(spec: BackendSpec) -> Self {
        Backend::in_group(spec, Arc::new(AtomicU64::new(0)))
    }

    /// A backend whose requests in flight also count towards `total_in_flight`, the total of
    /// its pool (what bounded-load hashing compares a backend against).
    pub(crate) fn in_group(spec: BackendSpec, total_in_flight: Arc<AtomicU64>) -> Self {
        static NEXT_KEY: AtomicU64 = AtomicU64::new(1);
        Backend {
            key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
            in_flight: AtomicU64::new(0),
            health: AtomicU8::new(Health::Healthy as u8),
            failure_streak: AtomicU32::new(0),
            weight: AtomicU32::new(spec.weight()),
            weight_scale: AtomicU32::new(FULL_WEIGHT),
            stats: Stats::default(),
            total_in_flight,
            latency: PeakEwma::new(),
            spec,
        }
    }

    /// A number unique to this backend within the process, stable for its lifetime; cheap to
    /// hash and compare, unlike its [`id`](Self::id).
    pub fn key(&self) -> u64 {
        self.key
    }

    /// `host:port`.
    pub fn id(&self) -> &str {
        self.spec.id()
    }

    /// What this backend was built from.
    pub fn spec(&self) -> &BackendSpec {
        &self.spec
    }

    /// Where to connect.
    pub fn address(&self) -> &Address {
        self.spec.address()
    }

    /// The relative share of traffic for weighted strategies: the spec's, until a reload
    /// ([`Pool::reconfigure`](crate::Pool::reconfigure)) changes it.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Stores a new weight (never 0); only the pool calls this, then publishes a snapshot.
    pub(crate) fn store_weight(&self, weight: u32) -> u32 {
        self.weight.swap(weight.max(1), Ordering::Relaxed)
    }

    /// What happened to this backend's requests so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The weight strategies use now, in thousandths of a weight unit: [`weight`](Self::weight)
    /// × 1000, less while slow start ramps a backend that just recovered back up.
    pub fn effective_weight(&self) -> u64 {
        u64::from(self.weight()) * u64::from(self.weight_scale.load(Ordering::Relaxed))
    }

    /// The share of its weight a backend has now, in thousandths (1000 = all of it).
    pub fn weight_scale(&self) -> u32 {
        self.weight_scale.load(Ordering::Relaxed)
    }

    /// Stores a new weight scale; only the pool calls this, then publishes a snapshot.
    pub(crate) fn store_weight_scale(&self, thousandths: u32) -> u32 {
        self.weight_scale
            .swap(thousandths.clamp(1, FULL_WEIGHT), Ordering::Relaxed)
    }

    /// Records a request that went well, ending any failure streak. Reads before it writes, so
    /// a healthy backend's cache line is not written on every request.
    pub fn record_success(&self) {
        if self.failure_streak.load(Ordering::Relaxed) != 0 {
            self.failure_streak.store(0, Ordering::Relaxed);
        }
    }

    /// Records a failed request; returns how many failed in a row, this one included.
    pub fn record_failure(&self) -> u32 {
        self.failure_streak.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Failures in a row in live traffic.
    pub fn failure_streak(&self) -> u32 {
        self.failure_streak.load(Ordering::Relaxed)
    }

    /// The protocol spoken to this backend.
    pub fn protocol(&self) -> Protocol {
        self.spec.protocol()
    }

    /// The current health state (what the last writer stored).
    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Acquire))
    }

    /// Stores a new health state and returns the previous one. Only the pool calls this, under
    /// its writer lock, so that the snapshot it then publishes agrees with the atomics.
    pub(crate) fn store_health(&self, health: Health) -> Health {
        let previous = Health::from_u8(self.health.swap(health as u8, Ordering::AcqRel));
        if health == Health::Ejected && previous != Health::Ejected {
            self.stats.record_ejection();
        }
        previous
    }

    /// Requests sent to this backend whose response has not finished yet.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts one request in flight until the returned guard is dropped.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.total_in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// Requests in flight to every backend of this one's pool.
    pub fn pool_in_flight(&self) -> u64 {
        self.total_in_flight.load(Ordering::Relaxed)
    }

    /// Like [`start_request`](Self::start_request), but only while fewer than `limit`
    /// requests are in flight; `None` when the backend is full. Lock-free (a compare-and-swap
    /// loop), and the count never exceeds `limit`, even for a moment.
    pub fn try_start_request(self: &Arc<Self>, limit: u64) -> Option<InFlight> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        self.total_in_flight.fetch_add(1, Ordering::Relaxed);
        Some(InFlight(Arc::clone(self)))
    }

    /// Records how long a response took (to its headers), for latency-aware strategies.
    pub fn observe_latency(&self, latency: Duration, now: Instant) {
        self.latency.observe(latency, now);
    }

    /// The peak-EWMA latency estimate at `now`, decayed by the time since the last response (or,
    /// before the first one, `default` decayed by the time since the backend was created), so a
    /// backend that gets no traffic looks better and better until it is tried again.
    pub fn latency_estimate(&self, now: Instant, default: Duration) -> Duration {
        self.latency.estimate(now, default)
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("id", &self.id())
            .field("weight", &self.weight())
            .field("health", &self.health())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

/// One request in flight to a backend; dropping it ends the count (tower's `PendingRequests` handle).
#[derive(Debug)]
pub struct InFlight(Arc<Backend>);

impl InFlight {
    /// The backend this request went to.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.total_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A peak-sensitive exponentially weighted moving average of response latency, as in linkerd
/// and tower's `PeakEwma`: a slower response raises the estimate at once, faster ones bring it
/// down gradually, and with no responses at all it decays towards zero (time constant 10 s), so
/// a backend that was avoided is tried again after a while. Two atomics, updated without a
/// lock; two racing updates may lose one of the samples, which an average can afford.
#[derive(Debug)]
struct PeakEwma {
    /// The estimate in nanoseconds, as `f64` bits; 0 until the first sample.
    estimate_ns: AtomicU64,
    /// When it was last updated, in nanoseconds since [`epoch`].
    updated_ns: AtomicU64,
}

/// How fast old samples fade: their weight falls by e every 10 s.
const DECAY_NS: f64 = 10e9;

/// A fixed point in time to express instants as integers.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos_since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

impl PeakEwma {
    fn new() -> Self {
        PeakEwma {
            estimate_ns: AtomicU64::new(0f64.to_bits()),
            updated_ns: AtomicU64::new(nanos_since_epoch(Instant::now())),
        }
    }

    /// How much of an estimate made at `updated_ns` is left at `now_ns`.
    fn decay(&self, now_ns: u64) -> f64 {
        let elapsed = now_ns.saturating_sub(self.updated_ns.load(Ordering::Relaxed)) as f64;
        (-elapsed / DECAY_NS).exp()
    }

    fn observe(&self, latency: Duration, now: Instant) {
        let sample = latency.as_nanos() as f64;
        let now_ns = nanos_since_epoch(now);
        let previous = f64::from_bits(self.estimate_ns.load(Ordering::Relaxed));
        let next = if previous == 0.0 || sample > previous {
            sample
        } else {
            let decay = self.decay(now_ns);
            previous * decay + sample * (1.0 - decay)
        };
        self.estimate_ns.store(next.to_bits(), Ordering::Relaxed);
        self.updated_ns.store(now_ns, Ordering::Relaxed);
    }

    /// The estimate at `now`: the last one (or `default` before the first sample), decayed by
    /// the time since.
    fn estimate(&self, now: Instant, default: Duration) -> Duration {
        let stored = f64::from_bits(self.estimate_ns.load(Ordering::Relaxed));
        let base = if stored > 0.0 {
            stored
        } else {
            default.as_nanos() as f64
        };
        Duration::from_nanos((base * self.decay(nanos_since_epoch(now))) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        text.parse::<BackendSpec>().expect_err(text).to_string()
    }

    #[test]
    fn parses_the_forms_users_write() {
        let spec: BackendSpec = "http://127.0.0.1:8080".parse().unwrap();
        assert_eq!(spec.id(), "127.0.0.1:8080");
        assert_eq!(
            spec.address(),
            &Address::Ip("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(spec.weight(), 1);

        let spec: BackendSpec = "http://localhost".parse().unwrap();
        assert_eq!(spec.id(), "localhost:80");
        assert_eq!(spec.address(), &Address::Name("localhost".into(), 80));

        let spec: BackendSpec = "http://[::1]:9000/".parse().unwrap();
        assert_eq!(spec.id(), "[::1]:9000");

        let spec: BackendSpec = "http://10.0.0.1:81, weight=7".parse().unwrap();
        assert_eq!(spec.weight(), 7);
        assert_eq!(spec.to_string(), "http://10.0.0.1:81,weight=7");
        assert_eq!(spec.protocol(), Protocol::Http1);

        let spec: BackendSpec = "h2c://127.0.0.1:9000".parse().unwrap();
        assert_eq!(spec.protocol(), Protocol::H2c);
        assert_eq!(spec.id(), "127.0.0.1:9000");
        assert_eq!(spec.to_string(), "h2c://127.0.0.1:9000");
        assert_eq!(
            spec.address(),
            &Address::Ip("127.0.0.1:9000".parse().unwrap())
        );
        assert!("h2c://127.0.0.1:9000/api".parse::<BackendSpec>().is_err());
        let spec: BackendSpec = "http://127.0.0.1:9000,protocol=h2c".parse().unwrap();
        assert_eq!(spec.protocol(), Protocol::H2c);
        assert_eq!("h2c://a".parse::<BackendSpec>().unwrap().id(), "a:80");
    }

    #[test]
    fn errors_name_the_value_at_fault() {
        assert!(err("ftp://127.0.0.1:21").contains("\"ftp\""));
        assert!(err("https://127.0.0.1:443").contains("unsupported scheme \"https\""));
        assert!(err("not a url").contains("\"not a url\""));
        assert!(err("http://127.0.0.1:99999").contains("127.0.0.1:99999"));
        assert!(err("http://127.0.0.1:80/api").contains("a path"));
        assert!(err("http://127.0.0.1:80/?a=1").contains("a query"));
        assert!(err("http://u:p@127.0.0.1:80").contains("credentials"));
        assert!(err("http://127.0.0.1:80,weight=0").contains("\"0\""));
        assert!(err("http://127.0.0.1:80,weight=x").contains("\"x\""));
        assert!(err("http://127.0.0.1:80,colour=red").contains("\"colour\""));
        assert!(err("http://127.0.0.1:80,protocol=spdy").contains("\"spdy\""));
    }

    #[test]
    fn in_flight_guard_counts_until_dropped() {
        let backend = Arc::new(Backend::new("http://127.0.0.1:1".parse().unwrap()));
        let a = backend.start_request();
        let b = backend.start_request();
        assert_eq!(backend.in_flight(), 2);
        drop(a);
        assert_eq!(backend.in_flight(), 1);
        drop(b);
        assert_eq!(backend.in_flight(), 0);
    }

    #[test]
    fn try_start_request_holds_the_limit_under_contention() {
        let backend = Arc::new(Backend::new("http://127.0.0.1:1".parse().unwrap()));
        let max_seen = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        if let Some(guard) = backend.try_start_request(3) {
                            max_seen.fetch_max(backend.in_flight(), Ordering::Relaxed);
                            drop(guard);
                        }
                    }
                });
            }
        });
        assert!(max_seen.load(Ordering::Relaxed) <= 3);
        assert_eq!(backend.in_flight(), 0);
        let held: Vec<_> = (0..3)
            .map(|_| backend.try_start_request(3).unwrap())
            .collect();
        assert!(backend.try_start_request(3).is_none());
        drop(held);
        assert!(backend.try_start_request(3).is_some());
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let backend = Backend::new("http://127.0.0.1:1".parse().unwrap());
        let t0 = Instant::now();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let default = Duration::from_millis(30);
        assert!((ms(backend.latency_estimate(t0, default)) - 30.0).abs() < 0.1);
        backend.observe_latency(Duration::from_millis(10), t0);
        assert!((ms(backend.latency_estimate(t0, default)) - 10.0).abs() < 0.01);
        // A slower sample is taken at once (peak).
        let t1 = t0 + Duration::from_millis(1);
        backend.observe_latency(Duration::from_millis(500), t1);
        assert!((ms(backend.latency_estimate(t1, default)) - 500.0).abs() < 0.01);
        // Faster ones pull it down by the time that passed: after 10 s, 1/e of the old weight.
        let t2 = t1 + Duration::from_secs(10);
        backend.observe_latency(Duration::from_millis(10), t2);
        let expected = 500.0 / std::f64::consts::E + 10.0 * (1.0 - 1.0 / std::f64::consts::E);
        assert!((ms(backend.latency_estimate(t2, default)) - expected).abs() < 0.5);
        // With no answers, it decays towards zero, so an avoided backend gets tried again.
        let later = ms(backend.latency_estimate(t2 + Duration::from_secs(20), default));
        assert!(
            (later - expected / std::f64::consts::E.powi(2)).abs() < 0.5,
            "{later}"
        );
    }

    #[test]
    fn the_pool_total_follows_every_backend() {
        let total = Arc::new(AtomicU64::new(0));
        let a = Arc::new(Backend::in_group(
            "http://127.0.0.1:1".parse().unwrap(),
            Arc::clone(&total),
        ));
        let b = Arc::new(Backend::in_group(
            "http://127.0.0.1:2".parse().unwrap(),
            Arc::clone(&total),
        ));
        let g1 = a.start_request();
        let g2 = b.start_request();
        let g3 = b.try_start_request(5).unwrap();
        assert_eq!(a.pool_in_flight(), 3);
        drop((g1, g2));
        assert_eq!(b.pool_in_flight(), 1);
        assert!(b.try_start_request(1).is_none());
        assert_eq!(b.pool_in_flight(), 1, "a refused request does not count");
        drop(g3);
        assert_eq!(total.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn keys_are_unique() {
        let spec: BackendSpec = "http://127.0.0.1:1".parse().unwrap();
        assert_ne!(Backend::new(spec.clone()).key(), Backend::new(spec).key());
    }
}
