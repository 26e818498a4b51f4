//! Which backend a request may go to now: the strategy's pick, within an optional limit of
//! requests in flight per backend, with a short bounded queue when every backend is full.
//!
//! Without a limit this is one pick and one atomic increment. With one, a request whose pick is
//! full tries the other eligible backends, then waits in the queue (FIFO, and ahead of requests
//! arriving later) until a request somewhere finishes; a full queue or a wait past the queue
//! timeout is a fast 503, so an overload costs bounded memory and the requests let in still
//! succeed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lb_core::{Backend, Context, InFlight, Pool, Snapshot};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::ProxyError;

/// The per-backend limit and its queue, shared by every worker of a proxy.
#[derive(Debug)]
pub(crate) struct Limits {
    max_in_flight: u64,
    max_queued: usize,
    queue_timeout: Duration,
    queued: AtomicUsize,
    freed: Notify,
}

impl Limits {
    pub(crate) fn new(max_in_flight: u64, max_queued: usize, queue_timeout: Duration) -> Self {
        Limits {
            max_in_flight,
            max_queued,
            queue_timeout,
            queued: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }
}

/// A request let through to a backend: counts as in flight there until dropped, and then
/// wakes a queued request, if any.
#[derive(Debug)]
pub(crate) struct Admitted {
    in_flight: InFlight,
    limits: Option<Arc<Limits>>,
    observes_latency: bool,
    /// The snapshot it was admitted from had eligible backends besides this one and those
    /// already tried: a request failing here could go elsewhere.
    others_left: bool,
}

impl Admitted {
    /// A request counted in flight at a backend picked from `snapshot`, after `tried`.
    fn new(
        in_flight: InFlight,
        limits: Option<Arc<Limits>>,
        snapshot: &Snapshot,
        tried: &[u64],
    ) -> Self {
        Admitted {
            in_flight,
            limits,
            observes_latency: snapshot.strategy().uses_latency(),
            others_left: snapshot.eligible().len() > tried.len() + 1,
        }
    }

    /// The backend the request goes to.
    pub(crate) fn backend(&self) -> &Arc<Backend> {
        self.in_flight.backend()
    }

    /// True if the strategy that picked the backend wants its response latency reported.
    pub(crate) fn observes_latency(&self) -> bool {
        self.observes_latency
    }

    /// True if another eligible backend, not yet tried, was left when this one was picked.
    pub(crate) fn others_left(&self) -> bool {
        self.others_left
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(limits) = &self.limits
            && limits.queued.load(Ordering::Acquire) > 0
        {
            limits.freed.notify_one();
        }
    }
}

/// What a request finds when it asks to be let through now.
pub(crate) enum Admission<'a> {
    Admitted(Admitted),
    /// No eligible backend is left at all (none healthy, or every one already tried).
    NoneEligible,
    /// Every eligible backend is full, or other requests are already waiting: wait in the
    /// [`queue`] of these limits.
    Queue(&'a Arc<Limits>),
}

/// Admits a request to a backend not in `tried`, if that can be done without waiting.
///
/// Synchronous, so that the request's future (allocated per request) carries no queue wait:
/// only a request that must queue awaits [`queue`].
pub(crate) fn admit_now<'a>(
    pool: &Pool,
    limits: Option<&'a Arc<Limits>>,
    tried: &[u64],
    key: Option<u64>,
) -> Admission<'a> {
    let Some(limits) = limits else {
        let snapshot = pool.load();
        return match snapshot.select(&context(tried, key)) {
            Some(backend) => Admission::Admitted(Admitted::new(
                backend.start_request(),
                None,
                &snapshot,
                tried,
            )),
            None => Admission::NoneEligible,
        };
    };
    // Requests already waiting go first.
    if limits.queued.load(Ordering::Acquire) > 0 {
        return Admission::Queue(limits);
    }
    match try_admit(pool, limits, tried, key) {
        Attempt::Admitted(admitted) => Admission::Admitted(admitted),
        Attempt::NoneEligible => Admission::NoneEligible,
        Attempt::AllFull => Admission::Queue(limits),
    }
}

/// Waits in the queue until a backend not in `tried` has room. `Ok(None)`: no eligible backend
/// is left at all. `Err(Overloaded)`: every eligible backend stayed full for the whole queue
/// timeout, or the queue was full.
pub(crate) async fn queue(
    pool: &Pool,
    limits: &Arc<Limits>,
    tried: &[u64],
    key: Option<u64>,
) -> Result<Option<Admitted>, ProxyError> {
    if limits.queued.fetch_add(1, Ordering::AcqRel) >= limits.max_queued {
        limits.queued.fetch_sub(1, Ordering::AcqRel);
        return Err(ProxyError::Overloaded);
    }
    let _in_queue = Dequeue(limits);
    let deadline = Instant::now() + limits.queue_timeout;
    loop {
        // Listen before looking, so a slot freed in between is not missed.
        let freed = limits.freed.notified();
        let mut freed = std::pin::pin!(freed);
        freed.as_mut().enable();
        match try_admit(pool, limits, tried, key) {
            Attempt::Admitted(admitted) => return Ok(Some(admitted)),
            Attempt::NoneEligible => return Ok(None),
            Attempt::AllFull => {}
        }
        if tokio::time::timeout_at(deadline, freed).await.is_err() {
            return Err(ProxyError::Overloaded);
        }
    }
}

fn context(tried: &[u64], key: Option<u64>) -> Context<'_> {
    let ctx = Context::new().excluding(tried);
    match key {
        Some(key) => ctx.with_key(key),
        None => ctx,
    }
}

/// Leaves the queue however the wait ends.
struct Dequeue<'a>(&'a Limits);

impl Drop for Dequeue<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

enum Attempt {
    Admitted(Admitted),
    AllFull,
    NoneEligible,
}

/// The strategy's pick if it has room, else the next pick among the others, until one has room
/// or every eligible backend has been found full.
fn try_admit(pool: &Pool, limits: &Arc<Limits>, tried: &[u64], key: Option<u64>) -> Attempt {
    let snapshot = pool.load();
    let mut skip = tried.to_vec();
    while let Some(backend) = snapshot.select(&context(&skip, key)) {
        if let Some(in_flight) = backend.try_start_request(limits.max_in_flight) {
            return Attempt::Admitted(Admitted::new(
                in_flight,
                Some(Arc::clone(limits)),
                &snapshot,
                tried,
            ));
        }
        skip.push(backend.key());
    }
    if skip.len() > tried.len() {
        Attempt::AllFull
    } else {
        Attempt::NoneEligible
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_core::RoundRobin;

    /// Admits at once or after waiting, as the proxy does.
    async fn admit(
        pool: &Pool,
        limits: Option<&Arc<Limits>>,
        tried: &[u64],
        key: Option<u64>,
    ) -> Result<Option<Admitted>, ProxyError> {
        match admit_now(pool, limits, tried, key) {
            Admission::Admitted(admitted) => Ok(Some(admitted)),
            Admission::NoneEligible => Ok(None),
            Admission::Queue(limits) => queue(pool, limits, tried, key).await,
        }
    }

    fn pool(n: u16) -> Pool {
        Pool::new(
            (0..n).map(|i| format!("http://127.0.0.1:{}", 7000 + i).parse().unwrap()),
            RoundRobin::new(),
        )
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn without_limits_it_is_the_strategys_pick() {
        let pool = pool(2);
        let a = admit(&pool, None, &[], None).await.unwrap().unwrap();
        let b = admit(&pool, None, &[], None).await.unwrap().unwrap();
        assert_ne!(a.backend().id(), b.backend().id());
        let both = [a.backend().key(), b.backend().key()];
        assert!(admit(&pool, None, &both, None).await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_backend_is_passed_over_then_the_queue_waits_for_a_slot() {
        let pool = pool(2);
        let limits = Arc::new(Limits::new(1, 10, Duration::from_secs(1)));
        let a = admit(&pool, Some(&limits), &[], None)
            .await
            .unwrap()
            .unwrap();
        let b = admit(&pool, Some(&limits), &[], None)
            .await
            .unwrap()
            .unwrap();
        assert_ne!(
            a.backend().id(),
            b.backend().id(),
            "the second went to the free backend"
        );

        // Both full: the next waits, and gets the slot the moment one is freed.
        let waiting = tokio::spawn({
            let pool_limits = Arc::clone(&limits);
            let pool = Arc::new(pool);
            let held = Arc::clone(&pool);
            async move {
                let admitted = admit(&held, Some(&pool_limits), &[], None).await;
                admitted.map(|a| a.map(|a| a.backend().id().to_owned()))
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(limits.queued.load(Ordering::Acquire), 1);
        let freed = b.backend().id().to_owned();
        drop(b);
        assert_eq!(waiting.await.unwrap().unwrap().unwrap(), freed);
        assert_eq!(limits.queued.load(Ordering::Acquire), 0);
        drop(a);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_the_queue_timeout_or_a_full_queue_is_overloaded() {
        let pool = Arc::new(pool(1));
        let limits = Arc::new(Limits::new(1, 1, Duration::from_millis(200)));
        let _held = admit(&pool, Some(&limits), &[], None)
            .await
            .unwrap()
            .unwrap();

        let queued = tokio::spawn({
            let (pool, limits) = (Arc::clone(&pool), Arc::clone(&limits));
            async move {
                admit(&pool, Some(&limits), &[], None)
                    .await
                    .map(|a| a.is_some())
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The queue (of one) is taken: turned away at once.
        assert!(matches!(
            admit(&pool, Some(&limits), &[], None).await,
            Err(ProxyError::Overloaded)
        ));
        // The queued one gives up after the queue timeout.
        assert!(matches!(queued.await.unwrap(), Err(ProxyError::Overloaded)));
        assert_eq!(limits.queued.load(Ordering::Acquire), 0);
    }
}
