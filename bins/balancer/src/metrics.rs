//! `GET /metrics`: the balancer's numbers in Prometheus text format, with `prometheus-client`.
//!
//! Nothing is recorded for metrics on the request path beyond the relaxed atomics the pool's
//! backends and the proxy keep anyway ([`lb_core::Stats`]); this collector reads them when
//! scraped, so metrics cost nothing between scrapes and take no lock per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use lb_core::stats::{FAILURES, METHODS};
use lb_core::{Backend, Health, Pool};
use lb_proxy::Proxy;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Counts of configuration reloads, kept by the reloader and read by `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Reloads {
    succeeded: AtomicU64,
    failed: AtomicU64,
    /// Seconds since the epoch of the last successful load (start-up counts).
    last_success: AtomicU64,
}

impl Reloads {
    pub(crate) fn new() -> Self {
        let reloads = Reloads::default();
        reloads.stamp();
        reloads
    }

    pub(crate) fn record(&self, ok: bool) {
        if ok {
            self.succeeded.fetch_add(1, Ordering::Relaxed);
            self.stamp();
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn stamp(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.last_success.store(now, Ordering::Relaxed);
    }
}

/// Reads everything at scrape time.
#[derive(Debug)]
struct Balancer {
    pool: Arc<Pool>,
    proxy: Proxy,
    reloads: Arc<Reloads>,
}

/// The registry `/metrics` encodes.
pub(crate) fn registry(pool: Arc<Pool>, proxy: Proxy, reloads: Arc<Reloads>) -> Registry {
    let mut registry = Registry::with_prefix("lb");
    registry.register_collector(Box::new(Balancer {
        pool,
        proxy,
        reloads,
    }));
    registry
}

/// Encodes `registry` in the Prometheus text format (version 0.0.4).
pub(crate) fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, registry);
    text
}

const HEALTH_STATES: [Health; 4] = [
    Health::Healthy,
    Health::Unhealthy,
    Health::Ejected,
    Health::Draining,
];

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl Collector for Balancer {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snapshot = self.pool.load();
        let backends = snapshot.backends();

        counter(
            &mut encoder,
            "requests_received",
            "Requests received from clients.",
            self.proxy.requests_received(),
        )?;
        counter(
            &mut encoder,
            "retries",
            "Requests sent again to another backend.",
            self.proxy.retries_made(),
        )?;
        counter(
            &mut encoder,
            "upstream_connections_opened",
            "Connections opened to backends (compare with requests to read keep-alive reuse).",
            self.proxy.upstream_connections_opened(),
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "local_responses",
                "Responses the balancer made itself, by status (no backend could answer, or the request was refused).",
                None,
                MetricType::Counter,
            )?;
            for (status, n) in self.proxy.local_responses() {
                let status = status.to_string();
                let labels = [("status", status.as_str())];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }

        per_backend(
            &mut encoder,
            backends,
            ("backend_responses", MetricType::Counter),
            "Responses from each backend, by request method and status class.",
            |b, family| {
                for (m, method) in METHODS.iter().chain(&["other"]).enumerate() {
                    for (c, class) in CLASSES.iter().enumerate() {
                        let n = b.stats().responses(m, c as u16 + 1);
                        if n > 0 {
                            let labels =
                                [("backend", b.id()), ("method", method), ("class", class)];
                            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                        }
                    }
                }
                Ok(())
            },
        )?;
        per_backend(
            &mut encoder,
            backends,
            ("backend_failures", MetricType::Counter),
            "Requests to each backend that got no answer, by kind (connect, reset, timeout).",
            |b, family| {
                for (k, kind) in FAILURES.iter().enumerate() {
                    let labels = [("backend", b.id()), ("kind", kind)];
                    ConstCounter::new(b.stats().failures(k))
                        .encode(family.encode_family(&labels)?)?;
                }
                Ok(())
            },
        )?;
        per_backend(
            &mut encoder,
            backends,
            ("backend_response_seconds", MetricType::Histogram),
            "Time from sending a request to a backend to its response headers.",
            |b, family| {
                let h = b.stats().latency();
                // The encoder sums the buckets up itself: it wants each bucket's own count.
                let mut below = 0;
                let own: Vec<(f64, u64)> = h
                    .buckets
                    .iter()
                    .map(|&(le, cumulative)| {
                        (le, cumulative - std::mem::replace(&mut below, cumulative))
                    })
                    .collect();
                let labels = [("backend", b.id())];
                family
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(h.sum, h.count, &own, None)
            },
        )?;
        per_backend_value(
            &mut encoder,
            backends,
            ("backend_in_flight", MetricType::Gauge),
            "Requests in flight to each backend.",
            |_, b| b.in_flight(),
        )?;
        per_backend(
            &mut encoder,
            backends,
            ("backend_health", MetricType::Gauge),
            "Each backend's health state: 1 for the state it is in, 0 for the others.",
            |b, family| {
                let now = b.health();
                for state in HEALTH_STATES {
                    let name = state.to_string();
                    let labels = [("backend", b.id()), ("state", name.as_str())];
                    ConstGauge::new(i64::from(state == now))
                        .encode(family.encode_family(&labels)?)?;
                }
                Ok(())
            },
        )?;
        per_backend_value(
            &mut encoder,
            backends,
            ("backend_eligible", MetricType::Gauge),
            "1 if the backend takes new requests now.",
            |i, _| u64::from(snapshot.eligible().binary_search(&i).is_ok()),
        )?;
        per_backend_value(
            &mut encoder,
            backends,
            ("backend_weight", MetricType::Gauge),
            "Each backend's configured weight.",
            |_, b| u64::from(b.weight()),
        )?;
        per_backend_value(
            &mut encoder,
            backends,
            ("backend_ejections", MetricType::Counter),
            "Times each backend was ejected by passive health.",
            |_, b| b.stats().ejections(),
        )?;
        per_backend_value(
            &mut encoder,
            backends,
            ("backend_connections_opened", MetricType::Counter),
            "Connections opened to each backend.",
            |_, b| b.stats().connections_opened(),
        )?;

        {
            let mut family = encoder.encode_descriptor(
                "config_reloads",
                "Configuration reloads, by result.",
                None,
                MetricType::Counter,
            )?;
            for (result, n) in [
                ("success", &self.reloads.succeeded),
                ("failure", &self.reloads.failed),
            ] {
                let labels = [("result", result)];
                ConstCounter::new(n.load(Ordering::Relaxed))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        let last = self.reloads.last_success.load(Ordering::Relaxed);
        ConstGauge::new(last as i64).encode(encoder.encode_descriptor(
            "config_last_success_timestamp_seconds",
            "When the configuration was last loaded successfully, in seconds since the epoch.",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(encoder.encode_descriptor(
        name,
        help,
        None,
        MetricType::Counter,
    )?)
}

/// One metric family with a sample (or several) per backend.
fn per_backend(
    encoder: &mut DescriptorEncoder<'_>,
    backends: &[Arc<Backend>],
    (name, kind): (&str, MetricType),
    help: &str,
    mut each: impl FnMut(&Backend, &mut MetricEncoder<'_>) -> Result<(), std::fmt::Error>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for backend in backends {
        each(backend, &mut family)?;
    }
    Ok(())
}

/// One counter or gauge per backend, labelled with its `host:port` only; `value` gets the
/// backend's index in the snapshot and the backend.
fn per_backend_value(
    encoder: &mut DescriptorEncoder<'_>,
    backends: &[Arc<Backend>],
    (name, kind): (&str, MetricType),
    help: &str,
    value: impl Fn(usize, &Backend) -> u64,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (i, backend) in backends.iter().enumerate() {
        let labels = [("backend", backend.id())];
        let sample = family.encode_family(&labels)?;
        let n = value(i, backend);
        match kind {
            MetricType::Counter => ConstCounter::new(n).encode(sample)?,
            _ => ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX)).encode(sample)?,
        }
    }
    Ok(())
}
