//! The health state machine of one backend: every signal (probes, live traffic, an operator) in,
//! one [`Health`] out, as plain functions of the inputs and the time, so that they are tested
//! without a clock or a socket.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lb_core::{FULL_WEIGHT, Health, Outcome};
use tokio::time::Instant;

/// How signals become states. The defaults keep the original balancer's behaviour for probes
/// (one failure takes a backend out, one pass brings it back) and add Envoy's outlier detection
/// defaults for live traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Passing probes in a row that bring an unhealthy backend back (default 1).
    pub rise: u32,
    /// Failing probes in a row that take a healthy backend out (default 1).
    pub fall: u32,
    /// Failures in a row in live traffic (connect failures, resets, timeouts, 5xx answers) that
    /// eject a backend; 0 turns passive health off (default 5).
    pub eject_after: u32,
    /// How long the first ejection lasts; each ejection that follows soon after doubles it
    /// (default 30 s).
    pub ejection: Duration,
    /// The longest an ejection may grow (default 300 s).
    pub max_ejection: Duration,
    /// Most backends ejected at once, in percent of the pool; one may always be (default 50).
    pub max_ejected_percent: u8,
    /// A backend that recovers gets a share of its weight that grows from a tenth to all of it
    /// over this long (default off).
    pub slow_start: Option<Duration>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            rise: 1,
            fall: 1,
            eject_after: 5,
            ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
            slow_start: None,
        }
    }
}

/// Why a backend changed state.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Reason {
    /// Its state when the checker first knew it (first probe), or when a subscription began.
    Initial,
    /// Active probes passed `in_a_row` times.
    ProbePassed {
        /// Passing probes in a row.
        in_a_row: u32,
    },
    /// Active probes failed `in_a_row` times; `error` is the last failure.
    ProbeFailed {
        /// Failing probes in a row.
        in_a_row: u32,
        /// What the last probe found.
        error: String,
    },
    /// Live traffic failed `failures` times in a row (the last one `last`).
    Ejected {
        /// Failures in a row.
        failures: u32,
        /// How the last one failed.
        last: Outcome,
        /// How long the ejection lasts.
        duration: Duration,
    },
    /// The ejection time is over and a probe passed.
    EjectionEnded,
    /// An operator asked for it to be drained.
    Drained,
    /// An operator enabled it again after a drain.
    Enabled,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Initial => f.write_str("initial state"),
            Reason::ProbePassed { in_a_row } => write!(f, "probe passed {}", times(*in_a_row)),
            Reason::ProbeFailed { in_a_row, error } => {
                write!(f, "probe failed {}: {error}", times(*in_a_row))
            }
            Reason::Ejected {
                failures,
                last,
                duration,
            } => write!(
                f,
                "{failures} failures in a row in live traffic (last: {last}), ejected for {duration:?}"
            ),
            Reason::EjectionEnded => f.write_str("ejection ended and a probe passed"),
            Reason::Drained => f.write_str("drained by an operator"),
            Reason::Enabled => f.write_str("enabled by an operator"),
        }
    }
}

fn times(n: u32) -> String {
    match n {
        1 => "once".to_owned(),
        n => format!("{n} times in a row"),
    }
}

/// One change of one backend's state: what subscribers receive and the balancer logs.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The backend's `host:port`.
    pub backend: Arc<str>,
    /// The state before; `None` for an initial state.
    pub from: Option<Health>,
    /// The state now.
    pub to: Health,
    /// Why.
    pub reason: Reason,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.from {
            Some(from) => write!(
                f,
                "backend {} {from} -> {}: {}",
                self.backend, self.to, self.reason
            ),
            None => write!(
                f,
                "backend {} is {}: {}",
                self.backend, self.to, self.reason
            ),
        }
    }
}

/// Everything known about one backend's health. Each `on_*` method takes one signal and returns
/// the new state and its reason when the state changed.
#[derive(Debug, Clone)]
pub struct Machine {
    state: Health,
    /// The active probes' verdict, after rise and fall.
    probes_pass: bool,
    /// Probe results in a row that disagree with `probes_pass`.
    against: u32,
    ejected_until: Option<Instant>,
    /// Ejections so far that have not yet been forgiven: the backoff exponent.
    level: u32,
    /// When the backend last became healthy (slow start, forgiving ejections).
    healthy_since: Instant,
    draining: bool,
}

impl Machine {
    /// A backend whose first probe passed (or failed): no rise or fall for the first verdict,
    /// so that the balancer starts with what it knows.
    pub fn first(passed: bool, now: Instant) -> Self {
        Machine {
            state: if passed {
                Health::Healthy
            } else {
                Health::Unhealthy
            },
            probes_pass: passed,
            against: 0,
            ejected_until: None,
            level: 0,
            healthy_since: now,
            draining: false,
        }
    }

    /// The state now.
    pub fn state(&self) -> Health {
        self.state
    }

    /// When the current ejection ends, if ejected.
    pub fn ejected_until(&self) -> Option<Instant> {
        self.ejected_until.filter(|_| self.state == Health::Ejected)
    }

    /// Since when the backend is healthy (meaningful while it is).
    pub fn healthy_since(&self) -> Instant {
        self.healthy_since
    }

    /// What the signals add up to.
    fn derive(&self, now: Instant) -> Health {
        if self.draining {
            Health::Draining
        } else if self.ejected_until.is_some_and(|until| now < until)
            || (self.ejected_until.is_some() && self.state == Health::Ejected && self.probes_pass)
        {
            // Still ejected, or the ejection is over but no probe has passed since.
            Health::Ejected
        } else if self.probes_pass {
            Health::Healthy
        } else {
            Health::Unhealthy
        }
    }

    fn settle(&mut self, now: Instant, reason: impl FnOnce(Health) -> Reason) -> Option<Change> {
        let to = self.derive(now);
        let from = self.state;
        if to == from {
            return None;
        }
        self.state = to;
        if to == Health::Healthy {
            self.healthy_since = now;
        }
        Some(Change {
            from,
            to,
            reason: reason(to),
        })
    }

    /// A probe finished. `error` is what it found, `None` if it passed.
    pub fn on_probe(
        &mut self,
        error: Option<String>,
        now: Instant,
        policy: &Policy,
    ) -> Option<Change> {
        let passed = error.is_none();
        if passed == self.probes_pass {
            self.against = 0;
        } else {
            self.against += 1;
            if self.against >= if passed { policy.rise } else { policy.fall }.max(1) {
                self.probes_pass = passed;
                self.against = 0;
            }
        }
        let ejection_over = self.ejected_until.is_some_and(|until| now >= until);
        if ejection_over && passed && self.probes_pass {
            self.ejected_until = None;
        }
        let in_a_row = if passed == self.probes_pass {
            // The verdict just flipped (or held): count the run that made it.
            if passed { policy.rise } else { policy.fall }.max(1)
        } else {
            self.against
        };
        self.settle(now, |to| match (to, error) {
            (Health::Healthy, _) if ejection_over => Reason::EjectionEnded,
            (_, Some(error)) => Reason::ProbeFailed { in_a_row, error },
            (_, None) => Reason::ProbePassed { in_a_row },
        })
    }

    /// Live traffic to the backend failed `failures` times in a row, the last as `last`.
    /// `ejected` backends of `pool_size` are ejected already (this one not included).
    pub fn on_failures(
        &mut self,
        failures: u32,
        last: Outcome,
        now: Instant,
        policy: &Policy,
        (ejected, pool_size): (usize, usize),
    ) -> Option<Change> {
        if policy.eject_after == 0
            || failures < policy.eject_after
            || self.state != Health::Healthy
            || !may_eject(ejected, pool_size, policy.max_ejected_percent)
        {
            return None;
        }
        let healthy_for = now.saturating_duration_since(self.healthy_since);
        let level = forgiven(self.level, healthy_for, policy.ejection);
        let duration = ejection_time(policy, level);
        self.level = level + 1;
        self.ejected_until = Some(now + duration);
        self.settle(now, |_| Reason::Ejected {
            failures,
            last,
            duration,
        })
    }

    /// An operator drains the backend: no new requests.
    pub fn on_drain(&mut self, now: Instant) -> Option<Change> {
        self.draining = true;
        self.settle(now, |_| Reason::Drained)
    }

    /// An operator enables a drained backend again; it is healthy if its probes pass.
    pub fn on_enable(&mut self, now: Instant) -> Option<Change> {
        self.draining = false;
        self.settle(now, |_| Reason::Enabled)
    }
}

/// A state change that a signal caused.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The state before.
    pub from: Health,
    /// The state now.
    pub to: Health,
    /// Why.
    pub reason: Reason,
}

/// Whether one more backend may be ejected when `ejected` of `pool_size` already are: at most
/// `max_percent` % of the pool, rounded down, but always one (Envoy's rule), and never with
/// `max_percent` 0.
pub fn may_eject(ejected: usize, pool_size: usize, max_percent: u8) -> bool {
    if max_percent == 0 {
        return false;
    }
    let cap = (pool_size * usize::from(max_percent.min(100)) / 100).max(1);
    ejected < cap
}

/// How long the ejection at backoff `level` (0 for the first) lasts: the base time doubled per
/// level, capped at the maximum.
pub fn ejection_time(policy: &Policy, level: u32) -> Duration {
    let factor = 1u32.checked_shl(level.min(31)).unwrap_or(u32::MAX);
    policy
        .ejection
        .saturating_mul(factor)
        .min(policy.max_ejection.max(policy.ejection))
}

/// The backoff level after a backend stayed healthy for `healthy_for`: one level forgiven per
/// base ejection time of good behaviour, so a backend that failed once long ago starts again
/// from the base time.
pub fn forgiven(level: u32, healthy_for: Duration, base: Duration) -> u32 {
    if base.is_zero() {
        return 0;
    }
    let periods = healthy_for.as_nanos() / base.as_nanos();
    level.saturating_sub(u32::try_from(periods).unwrap_or(u32::MAX))
}

/// Slow start's share of the weight, in thousandths, `elapsed` after a backend recovered: a
/// tenth at once, then in ten even steps up to all of it at `window`. Steps rather than a
/// smooth curve, because every step publishes a snapshot (and weighted round robin's table
/// stays short when weights are multiples of a tenth).
pub fn slow_start_scale(elapsed: Duration, window: Duration) -> u32 {
    if window.is_zero() || elapsed >= window {
        return FULL_WEIGHT;
    }
    let tenths = (elapsed.as_nanos() * 10 / window.as_nanos()) as u32;
    (tenths + 1).min(10) * (FULL_WEIGHT / 10)
}

/// When slow start's next step is due, or `None` once the full weight is reached.
pub fn slow_start_next(healthy_since: Instant, now: Instant, window: Duration) -> Option<Instant> {
    let elapsed = now.saturating_duration_since(healthy_since);
    if window.is_zero() || elapsed >= window {
        return None;
    }
    let step = window / 10;
    let steps_done = (elapsed.as_nanos() / step.as_nanos().max(1)) as u32;
    Some(healthy_since + step * (steps_done + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            rise: 3,
            fall: 2,
            ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(60),
            ..Policy::default()
        }
    }

    fn fail() -> Option<String> {
        Some("unexpected status 503".into())
    }

    #[test]
    fn fall_and_rise_need_that_many_probes_in_a_row() {
        let (p, t) = (policy(), Instant::now());
        let mut m = Machine::first(true, t);
        assert_eq!(m.on_probe(fail(), t, &p), None);
        // A pass in between starts the count again: no flapping on one bad probe.
        assert_eq!(m.on_probe(None, t, &p), None);
        assert_eq!(m.on_probe(fail(), t, &p), None);
        let change = m.on_probe(fail(), t, &p).unwrap();
        assert_eq!(
            (change.from, change.to),
            (Health::Healthy, Health::Unhealthy)
        );
        assert_eq!(
            change.reason,
            Reason::ProbeFailed {
                in_a_row: 2,
                error: "unexpected status 503".into()
            }
        );
        assert_eq!(m.on_probe(None, t, &p), None);
        assert_eq!(m.on_probe(None, t, &p), None);
        let change = m.on_probe(None, t, &p).unwrap();
        assert_eq!(change.to, Health::Healthy);
        assert_eq!(change.reason, Reason::ProbePassed { in_a_row: 3 });
    }

    #[test]
    fn defaults_flip_on_every_probe() {
        let (p, t) = (Policy::default(), Instant::now());
        let mut m = Machine::first(false, t);
        assert_eq!(m.state(), Health::Unhealthy);
        assert_eq!(m.on_probe(None, t, &p).unwrap().to, Health::Healthy);
        assert_eq!(m.on_probe(fail(), t, &p).unwrap().to, Health::Unhealthy);
    }

    #[test]
    fn ejection_needs_enough_failures_and_room_under_the_cap() {
        let (p, t) = (policy(), Instant::now());
        let mut m = Machine::first(true, t);
        assert_eq!(
            m.on_failures(4, Outcome::ConnectFailed, t, &p, (0, 3)),
            None
        );
        // 50 % of 3 is 1: with one ejected already, no other may be.
        assert_eq!(
            m.on_failures(5, Outcome::ConnectFailed, t, &p, (1, 3)),
            None
        );
        let change = m
            .on_failures(5, Outcome::ServerError(502), t, &p, (0, 3))
            .unwrap();
        assert_eq!(change.to, Health::Ejected);
        assert_eq!(
            change.reason,
            Reason::Ejected {
                failures: 5,
                last: Outcome::ServerError(502),
                duration: Duration::from_secs(10)
            }
        );
        assert_eq!(m.ejected_until(), Some(t + Duration::from_secs(10)));
        // Disabled with eject_after 0.
        let off = Policy {
            eject_after: 0,
            ..policy()
        };
        let mut m = Machine::first(true, t);
        assert_eq!(m.on_failures(100, Outcome::Reset, t, &off, (0, 3)), None);
    }

    #[test]
    fn an_ejected_backend_rejoins_only_after_its_time_and_a_passing_probe() {
        let (p, t) = (policy(), Instant::now());
        let mut m = Machine::first(true, t);
        m.on_failures(5, Outcome::Reset, t, &p, (0, 3)).unwrap();
        // Probes passing during the ejection change nothing.
        assert_eq!(m.on_probe(None, t + Duration::from_secs(5), &p), None);
        assert_eq!(m.state(), Health::Ejected);
        // Time is up but the probe fails: unhealthy, by the probe (fall 2 needs two).
        let end = t + Duration::from_secs(10);
        assert_eq!(m.on_probe(fail(), end, &p), None);
        let change = m.on_probe(fail(), end, &p).unwrap();
        assert_eq!(change.to, Health::Unhealthy);
        // Then rise 3 passes bring it back.
        m.on_probe(None, end, &p);
        m.on_probe(None, end, &p);
        assert_eq!(m.on_probe(None, end, &p).unwrap().to, Health::Healthy);

        let mut m = Machine::first(true, t);
        m.on_failures(5, Outcome::Reset, t, &p, (0, 3)).unwrap();
        let change = m.on_probe(None, end, &p).unwrap();
        assert_eq!(
            (change.to, change.reason),
            (Health::Healthy, Reason::EjectionEnded)
        );
    }

    #[test]
    fn ejections_back_off_exponentially_and_are_forgiven() {
        let p = policy();
        let lengths: Vec<u64> = (0..5).map(|l| ejection_time(&p, l).as_secs()).collect();
        assert_eq!(lengths, [10, 20, 40, 60, 60]);
        assert_eq!(ejection_time(&p, u32::MAX).as_secs(), 60);
        assert_eq!(forgiven(3, Duration::from_secs(9), p.ejection), 3);
        assert_eq!(forgiven(3, Duration::from_secs(25), p.ejection), 1);
        assert_eq!(forgiven(3, Duration::from_secs(3600), p.ejection), 0);

        // Through the machine: ejected again right after rejoining, the time doubles; after a
        // long healthy spell it is back to the base.
        let t = Instant::now();
        let mut m = Machine::first(true, t);
        let ejected_for = |m: &mut Machine, at: Instant| match m
            .on_failures(5, Outcome::Reset, at, &p, (0, 3))
            .unwrap()
            .reason
        {
            Reason::Ejected { duration, .. } => duration.as_secs(),
            other => panic!("{other:?}"),
        };
        assert_eq!(ejected_for(&mut m, t), 10);
        let back = t + Duration::from_secs(10);
        m.on_probe(None, back, &p).unwrap();
        assert_eq!(ejected_for(&mut m, back), 20);
        let back = back + Duration::from_secs(20);
        m.on_probe(None, back, &p).unwrap();
        let much_later = back + Duration::from_secs(100);
        assert_eq!(ejected_for(&mut m, much_later), 10);
    }

    #[test]
    fn the_ejection_cap_always_allows_one_and_never_with_zero() {
        assert!(may_eject(0, 1, 50));
        assert!(!may_eject(1, 1, 100));
        assert!(may_eject(4, 10, 50));
        assert!(!may_eject(5, 10, 50));
        assert!(!may_eject(0, 10, 0));
        assert!(may_eject(9, 10, 100));
    }

    #[test]
    fn drain_wins_over_everything_and_enable_restores_what_probes_say() {
        let (p, t) = (policy(), Instant::now());
        let mut m = Machine::first(true, t);
        assert_eq!(m.on_drain(t).unwrap().to, Health::Draining);
        assert_eq!(m.on_probe(fail(), t, &p), None);
        assert_eq!(m.on_probe(fail(), t, &p), None);
        assert_eq!(m.on_failures(9, Outcome::Reset, t, &p, (0, 3)), None);
        let change = m.on_enable(t).unwrap();
        assert_eq!(
            (change.from, change.to),
            (Health::Draining, Health::Unhealthy)
        );
    }

    #[test]
    fn slow_start_ramps_in_tenths() {
        let w = Duration::from_secs(10);
        let at = |s: u64| slow_start_scale(Duration::from_millis(s), w);
        assert_eq!(at(0), 100);
        assert_eq!(at(999), 100);
        assert_eq!(at(1000), 200);
        assert_eq!(at(5500), 600);
        assert_eq!(at(9999), 1000);
        assert_eq!(at(10_000), 1000);
        assert_eq!(slow_start_scale(Duration::ZERO, Duration::ZERO), 1000);

        let t = Instant::now();
        assert_eq!(slow_start_next(t, t, w), Some(t + Duration::from_secs(1)));
        assert_eq!(
            slow_start_next(t, t + Duration::from_millis(3500), w),
            Some(t + Duration::from_secs(4))
        );
        assert_eq!(slow_start_next(t, t + w, w), None);
    }

    #[test]
    fn transitions_read_as_one_line() {
        let t = Transition {
            backend: "127.0.0.1:8081".into(),
            from: Some(Health::Healthy),
            to: Health::Ejected,
            reason: Reason::Ejected {
                failures: 5,
                last: Outcome::ServerError(500),
                duration: Duration::from_secs(30),
            },
        };
        assert_eq!(
            t.to_string(),
            "backend 127.0.0.1:8081 healthy -> ejected: 5 failures in a row in live traffic \
             (last: status 500), ejected for 30s"
        );
        let initial = Transition {
            backend: "127.0.0.1:8080".into(),
            from: None,
            to: Health::Healthy,
            reason: Reason::Initial,
        };
        assert_eq!(
            initial.to_string(),
            "backend 127.0.0.1:8080 is healthy: initial state"
        );
    }
}
