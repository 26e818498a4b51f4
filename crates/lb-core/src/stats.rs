//! What happened to one backend's requests, counted with relaxed atomics so the request path
//! takes no lock: responses by method and status class, failures by kind, a latency histogram,
//! connections opened and ejections. Exporters (the balancer's `/metrics`) read it when scraped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::Outcome;

/// The methods counted apart; every other method is counted as [`Stats::OTHER_METHOD`].
pub const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

/// Upper bounds of the latency histogram's buckets, in seconds (Prometheus' `le`); the last,
/// implicit bucket is `+Inf`.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const BUCKET_NANOS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Failure kinds counted apart ([`Outcome`]s other than an answer).
pub const FAILURES: [&str; 3] = ["connect", "reset", "timeout"];

/// Counters of one backend; see the module documentation. All reads are relaxed: a scrape may
/// see one counter a request ahead of another, never a torn value.
#[derive(Debug, Default)]
pub struct Stats {
    /// `[method][status class 1xx..5xx]`.
    responses: [[AtomicU64; 5]; METHODS.len() + 1],
    failures: [AtomicU64; FAILURES.len()],
    /// Non-cumulative bucket counts, `+Inf` last.
    latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_nanos: AtomicU64,
    connections_opened: AtomicU64,
    ejections: AtomicU64,
}

/// A histogram as read at one moment: cumulative counts per bucket of [`LATENCY_BUCKETS`] (then
/// `+Inf`, which is also the total count) and the sum of all observations in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// `(upper bound in seconds, observations at or below it)`, ascending, `+Inf` last.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of every observation, in seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Stats {
    /// Index in [`METHODS`] of every method not listed there.
    pub const OTHER_METHOD: usize = METHODS.len();

    /// Records a response head from the backend: its request's method, its status and how long
    /// it took from sending the request.
    pub fn record_response(&self, method: &str, status: u16, latency: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[method_index(method)][class].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKET_NANOS.partition_point(|&bound| bound < nanos);
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Records a request that got no answer (connect failed, connection reset, timeout); other
    /// outcomes are answers and are counted by [`record_response`](Self::record_response).
    pub fn record_failure(&self, outcome: Outcome) {
        let kind = match outcome {
            Outcome::ConnectFailed => 0,
            Outcome::Reset => 1,
            Outcome::Timeout => 2,
            _ => return,
        };
        self.failures[kind].fetch_add(1, Ordering::Relaxed);
    }

    /// Records a new connection to the backend.
    pub fn record_connection(&self) {
        self.connections_opened.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_ejection(&self) {
        self.ejections.fetch_add(1, Ordering::Relaxed);
    }

    /// Responses for requests of method `METHODS[method]` (or another method, for
    /// [`OTHER_METHOD`](Self::OTHER_METHOD)) with status class `class` (1 to 5).
    pub fn responses(&self, method: usize, class: u16) -> u64 {
        let class = usize::from(class.clamp(1, 5)) - 1;
        self.responses
            .get(method)
            .map_or(0, |row| row[class].load(Ordering::Relaxed))
    }

    /// Every response, whatever its method and status.
    pub fn total_responses(&self) -> u64 {
        self.responses
            .iter()
            .flatten()
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }

    /// Requests of the kind `FAILURES[kind]` that got no answer.
    pub fn failures(&self, kind: usize) -> u64 {
        self.failures
            .get(kind)
            .map_or(0, |n| n.load(Ordering::Relaxed))
    }

    /// Every request that got no answer.
    pub fn total_failures(&self) -> u64 {
        self.failures
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }

    /// Connections opened to the backend; with [`total_responses`](Self::total_responses) it
    /// shows how well they are reused.
    pub fn connections_opened(&self) -> u64 {
        self.connections_opened.load(Ordering::Relaxed)
    }

    /// Times the backend was ejected by passive health.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// The latency histogram as it is now.
    pub fn latency(&self) -> Histogram {
        let mut count = 0;
        let mut buckets = Vec::with_capacity(self.latency.len());
        for (i, n) in self.latency.iter().enumerate() {
            count += n.load(Ordering::Relaxed);
            buckets.push((
                LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY),
                count,
            ));
        }
        Histogram {
            buckets,
            sum: Duration::from_nanos(self.latency_sum_nanos.load(Ordering::Relaxed)).as_secs_f64(),
            count,
        }
    }
}

fn method_index(method: &str) -> usize {
    METHODS
        .iter()
        .position(|&m| m == method)
        .unwrap_or(Stats::OTHER_METHOD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_counted_by_method_and_class() {
        let stats = Stats::default();
        stats.record_response("GET", 200, Duration::from_micros(300));
        stats.record_response("GET", 204, Duration::from_millis(3));
        stats.record_response("POST", 503, Duration::from_secs(20));
        stats.record_response("BREW", 418, Duration::ZERO);
        assert_eq!(stats.responses(0, 2), 2);
        assert_eq!(stats.responses(2, 5), 1);
        assert_eq!(stats.responses(Stats::OTHER_METHOD, 4), 1);
        assert_eq!(stats.responses(1, 2), 0);
        assert_eq!(stats.total_responses(), 4);
    }

    #[test]
    fn the_histogram_is_cumulative_and_sums_seconds() {
        let stats = Stats::default();
        stats.record_response("GET", 200, Duration::from_micros(300)); // ≤ 0.5 ms
        stats.record_response("GET", 200, Duration::from_micros(500)); // ≤ 0.5 ms (inclusive)
        stats.record_response("GET", 200, Duration::from_millis(3)); // ≤ 5 ms
        stats.record_response("GET", 200, Duration::from_secs(20)); // +Inf
        let h = stats.latency();
        assert_eq!(h.count, 4);
        assert_eq!(h.buckets[0], (0.0005, 2));
        assert_eq!(h.buckets[2], (0.0025, 2));
        assert_eq!(h.buckets[3], (0.005, 3));
        assert_eq!(h.buckets[13], (10.0, 3));
        assert_eq!(h.buckets[14], (f64::INFINITY, 4));
        assert!((h.sum - 20.0038).abs() < 1e-9, "{}", h.sum);
    }

    #[test]
    fn failures_are_counted_by_kind_and_answers_are_not_failures() {
        let stats = Stats::default();
        stats.record_failure(Outcome::ConnectFailed);
        stats.record_failure(Outcome::Reset);
        stats.record_failure(Outcome::Reset);
        stats.record_failure(Outcome::ServerError(502));
        stats.record_failure(Outcome::Success);
        assert_eq!(
            [stats.failures(0), stats.failures(1), stats.failures(2)],
            [1, 2, 0]
        );
        assert_eq!(stats.total_failures(), 3);
    }
}
