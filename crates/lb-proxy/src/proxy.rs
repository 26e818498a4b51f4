//! The proxy service: pick a backend, rewrite the request, forward it, stream the answer back.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use lb_core::{Backend, Observer, Outcome, Pool};
use smallvec::SmallVec;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::retry::budget::{Budget, TpsBudget};

use crate::HashKey;
use crate::ProxyError;
use crate::access_log::{AccessLog, Pending};
use crate::admission::{self, Admission, Admitted, Limits};
use crate::body::{ProxyBody, RequestBody};
use crate::replay::Replay;
use crate::rewrite;
use crate::upstream::{Conn, Upstream, UpstreamConfig};

/// Builds a [`Proxy`]. Defaults: counter parameter `reqCounter`, connect timeout 1 s, response
/// timeout 30 s, after a failed connect every other eligible backend tried once (as nginx does),
/// idle upstream connections kept 90 s, at most 256 of them per backend.
#[derive(Debug, Clone)]
pub struct ProxyBuilder {
    pool: Arc<Pool>,
    counter_param: Option<String>,
    connect_timeout: Duration,
    response_timeout: Duration,
    retries: Option<usize>,
    idle_timeout: Duration,
    max_idle_per_backend: usize,
    max_in_flight: Option<u64>,
    max_queued: usize,
    queue_timeout: Duration,
    hash_key: Option<HashKey>,
    observer: Option<Arc<dyn Observer>>,
    retry_budget: Option<RetryBudget>,
    retry_idempotent: bool,
    access_log: Option<Arc<dyn AccessLog>>,
}

/// How many retries a proxy may make: `percent` of its requests (per second, over a 10 s
/// window) plus `min_per_second`, per worker (tower's `TpsBudget`, Finagle's retry budget), so
/// that retries cannot multiply the load on backends that are failing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    /// Retries allowed per 100 requests (default 20).
    pub percent: f32,
    /// Retries allowed every second on top (default 10).
    pub min_per_second: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            percent: 20.0,
            min_per_second: 10,
        }
    }
}

impl RetryBudget {
    fn build(self) -> TpsBudget {
        TpsBudget::new(
            Duration::from_secs(10),
            self.min_per_second,
            self.percent.clamp(0.0, 1000.0) / 100.0,
        )
    }
}

impl ProxyBuilder {
    /// Appends `name=N` to every forwarded request's query, N counting the requests received
    /// from 1; `None` (or an empty name) turns it off. Default `reqCounter`.
    pub fn counter_param(mut self, name: Option<&str>) -> Self {
        self.counter_param = name.filter(|n| !n.is_empty()).map(str::to_owned);
        self
    }

    /// Longest wait for a TCP connection to a backend (default 1 s). A backend that does not
    /// connect in time is skipped for the next one, as a refused one is.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Longest wait for a backend's response headers once the request, body included, has been
    /// sent (default 30 s); past it the client gets 504.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How many other backends to try after one that could not be connected to; `None` (the
    /// default) tries every eligible backend once.
    pub fn retries(mut self, retries: Option<usize>) -> Self {
        self.retries = retries;
        self
    }

    /// How long an unused upstream connection is kept for reuse (default 90 s).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Most idle connections kept per backend (default 256; 0 turns reuse off).
    pub fn max_idle_per_backend(mut self, max: usize) -> Self {
        self.max_idle_per_backend = max;
        self
    }

    /// Most requests in flight to any one backend (default: no limit). A request whose backend
    /// is full goes to another one with room; when all are full it waits in the queue.
    pub fn max_in_flight_per_backend(mut self, max: Option<u64>) -> Self {
        self.max_in_flight = max.filter(|&m| m > 0);
        self
    }

    /// The queue for requests that find every backend full: at most `max_queued` of them wait,
    /// each at most `timeout`; beyond either they get 503 at once (defaults 128 and 1 s). Only
    /// used with [`max_in_flight_per_backend`](Self::max_in_flight_per_backend).
    pub fn queue(mut self, max_queued: usize, timeout: Duration) -> Self {
        self.max_queued = max_queued;
        self.queue_timeout = timeout;
        self
    }

    /// The part of each request that strategies hashing requests to backends
    /// ([`ConsistentHash`](lb_core::ConsistentHash)) use; default none (such strategies then send
    /// requests round robin).
    pub fn hash_key(mut self, key: Option<HashKey>) -> Self {
        self.hash_key = key;
        self
    }

    /// Receives the outcome of every request to a backend: passive health
    /// (`lb_health::Checker` is one). Default none.
    pub fn observer(mut self, observer: Option<Arc<dyn Observer>>) -> Self {
        self.observer = observer;
        self
    }

    /// Caps retries to other backends (default [`RetryBudget::default`]); `None` lets every
    /// request try every eligible backend once.
    pub fn retry_budget(mut self, budget: Option<RetryBudget>) -> Self {
        self.retry_budget = budget;
        self
    }

    /// Whether an idempotent request without a body (GET, HEAD, OPTIONS, TRACE, PUT, DELETE)
    /// whose backend broke the connection before answering is retried on another backend
    /// (default true). It costs a copy of the request head per such request.
    pub fn retry_idempotent(mut self, retry: bool) -> Self {
        self.retry_idempotent = retry;
        self
    }

    /// Receives one entry per request once its response has ended; default none.
    pub fn access_log(mut self, log: Option<Arc<dyn AccessLog>>) -> Self {
        self.access_log = log;
        self
    }

    /// Checks the settings and builds the proxy. Fails on a counter parameter name that would
    /// need escaping in a query string.
    pub fn build(self) -> Result<Proxy, ProxyError> {
        if let Some(name) = &self.counter_param
            && !rewrite::is_valid_param(name)
        {
            return Err(ProxyError::InvalidCounterParam(name.clone()));
        }
        Ok(Proxy {
            shared: Arc::new(Shared {
                pool: Arc::clone(&self.pool),
                upstream: Upstream::new(UpstreamConfig {
                    connect_timeout: self.connect_timeout,
                    idle_timeout: self.idle_timeout,
                    max_idle_per_backend: self.max_idle_per_backend,
                    pool: self.pool,
                }),
                counter: Arc::new(AtomicU64::new(0)),
                counter_param: self.counter_param.map(Arc::from),
                response_timeout: self.response_timeout,
                retries: self.retries,
                limits: self
                    .max_in_flight
                    .map(|max| Arc::new(Limits::new(max, self.max_queued, self.queue_timeout))),
                hash_key: self.hash_key.map(Arc::new),
                observer: self.observer,
                retry_budget: self.retry_budget,
                budget: self.retry_budget.map(RetryBudget::build),
                retry_idempotent: self.retry_idempotent,
                access_log: self.access_log,
                local_responses: Arc::new(LocalResponses::default()),
                retries_made: Arc::new(AtomicU64::new(0)),
                tunnels: TaskTracker::new(),
                close_tunnels: CancellationToken::new(),
            }),
        })
    }
}

/// An HTTP reverse proxy over a [`Pool`]: cheap to clone, shared by every connection.
///
/// Use [`serve`](crate::serve) to run it on a listener, or embed it: [`Proxy::service`] is a
/// hyper [`Service`](hyper::service::Service) for one client connection, and
/// [`Proxy::forward`] forwards a single request.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

struct Shared {
    pool: Arc<Pool>,
    upstream: Upstream,
    counter: Arc<AtomicU64>,
    counter_param: Option<Arc<str>>,
    response_timeout: Duration,
    retries: Option<usize>,
    /// The per-backend limit of requests in flight and its queue, shared by all workers.
    limits: Option<Arc<Limits>>,
    hash_key: Option<Arc<HashKey>>,
    observer: Option<Arc<dyn Observer>>,
    retry_budget: Option<RetryBudget>,
    /// This worker's retry budget.
    budget: Option<TpsBudget>,
    retry_idempotent: bool,
    access_log: Option<Arc<dyn AccessLog>>,
    /// Responses the proxy made itself (errors), by every worker.
    local_responses: Arc<LocalResponses>,
    /// Retries made by every worker.
    retries_made: Arc<AtomicU64>,
    /// Upgraded connections (WebSocket) being tunnelled, and their stop signal.
    tunnels: TaskTracker,
    close_tunnels: CancellationToken,
}

impl Proxy {
    /// Starts a builder with the defaults listed on [`ProxyBuilder`].
    pub fn builder(pool: Arc<Pool>) -> ProxyBuilder {
        ProxyBuilder {
            pool,
            counter_param: Some("reqCounter".to_owned()),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(30),
            retries: None,
            idle_timeout: Duration::from_secs(90),
            max_idle_per_backend: 256,
            max_in_flight: None,
            max_queued: 128,
            queue_timeout: Duration::from_secs(1),
            hash_key: None,
            observer: None,
            retry_budget: Some(RetryBudget::default()),
            retry_idempotent: true,
            access_log: None,
        }
    }

    /// The pool this proxy selects from.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.shared.pool
    }

    /// Requests received so far (the last counter value handed out).
    pub fn requests_received(&self) -> u64 {
        self.shared.counter.load(Ordering::Relaxed)
    }

    /// Upstream connections opened so far, by this proxy and every [`worker`](Self::worker) made
    /// from it; compare with [`requests_received`](Self::requests_received) to see keep-alive
    /// reuse.
    pub fn upstream_connections_opened(&self) -> u64 {
        self.shared.upstream.connections_opened()
    }

    /// A proxy that shares this one's pool, request counter and settings but has connections of
    /// its own: its own keep-alive pool of upstream connections and its own upgraded
    /// connections. Give one to each worker thread, and the workers share nothing on the request
    /// path but the pool's snapshot and the counter.
    pub fn worker(&self) -> Proxy {
        let shared = &self.shared;
        Proxy {
            shared: Arc::new(Shared {
                pool: Arc::clone(&shared.pool),
                upstream: shared.upstream.fresh(),
                counter: Arc::clone(&shared.counter),
                counter_param: shared.counter_param.clone(),
                response_timeout: shared.response_timeout,
                retries: shared.retries,
                limits: shared.limits.clone(),
                hash_key: shared.hash_key.clone(),
                observer: shared.observer.clone(),
                retry_budget: shared.retry_budget,
                budget: shared.retry_budget.map(RetryBudget::build),
                retry_idempotent: shared.retry_idempotent,
                access_log: shared.access_log.clone(),
                local_responses: Arc::clone(&shared.local_responses),
                retries_made: Arc::clone(&shared.retries_made),
                tunnels: TaskTracker::new(),
                close_tunnels: CancellationToken::new(),
            }),
        }
    }

    /// Requests sent again to another backend, by this proxy and every worker made from it.
    pub fn retries_made(&self) -> u64 {
        self.shared.retries_made.load(Ordering::Relaxed)
    }

    /// Responses the proxy made itself because no backend could answer (or the request was
    /// refused), by status, by this proxy and every worker made from it: `(status, count)` for
    /// each status it can send.
    pub fn local_responses(&self) -> Vec<(u16, u64)> {
        self.shared.local_responses.read()
    }

    /// Upgraded connections (WebSocket) currently tunnelled to a backend.
    pub fn upgraded_connections(&self) -> usize {
        self.shared.tunnels.len()
    }

    /// Closes every upgraded connection and waits until they are gone. [`Server::serve`]
    /// calls this once its in-flight requests are done.
    ///
    /// [`Server::serve`]: crate::Server::serve
    pub async fn close_upgraded_connections(&self) {
        self.shared.close_tunnels.cancel();
        self.shared.tunnels.close();
        self.shared.tunnels.wait().await;
    }

    /// The service for one client connection from `client`.
    pub fn service(&self, client: SocketAddr) -> ProxyService {
        ProxyService {
            proxy: self.clone(),
            client,
            client_ip: ip_header(client.ip()),
        }
    }

    /// Forwards one request from `client` and returns the response to send back, which is an
    /// error page of the proxy's own when no backend could answer (see [`ProxyError::status`]).
    pub async fn forward(
        &self,
        request: Request<Incoming>,
        client: SocketAddr,
    ) -> Response<ProxyBody> {
        let Ok(response) = self
            .forward_from(request, client, &ip_header(client.ip()))
            .await;
        response
    }

    /// Starts forwarding a request. What needs no waiting (the counter, the checks, the
    /// rewriting) is done before the future is made, and the future owns only the rewritten
    /// request: the server boxes one such future per request, so its size is paid on every
    /// request (written as one `async fn` holding the client's request, the rewritten one and
    /// every step's state at once, it was 4 KiB).
    fn forward_from(
        &self,
        request: Request<Incoming>,
        client: SocketAddr,
        client_ip: &HeaderValue,
    ) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static {
        let n = self.shared.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let log = self.shared.access_log.as_ref().map(|sink| {
            Box::new(Pending {
                sink: Arc::clone(sink),
                client,
                method: request.method().clone(),
                target: request.uri().clone(),
                // What stays logged if the client goes away before its answer (nginx's 499).
                status: 499,
                backend: None,
                upstream: None,
                started: std::time::Instant::now(),
            })
        });
        let mut prepared = self.prepare(request, n, client_ip);
        let proxy = self.clone();
        async move {
            // Matched in place: binding the upvar by value would copy it into the future again.
            let forwarded = match prepared {
                Ok(ref mut prepared) => match proxy.dispatch(prepared).await {
                    Ok(exchanged) => proxy.finish(exchanged, prepared.client_upgrade.take()),
                    Err(error) => Err(error),
                },
                Err(error) => Err(error),
            };
            let (mut response, answered) = match forwarded {
                Ok((response, _)) if log.is_none() => return Ok(response),
                Ok(forwarded) => forwarded,
                Err(error) => {
                    tracing::debug!(%error, request = n, "request not forwarded");
                    proxy.shared.local_responses.count(error.status().as_u16());
                    (error_response(&error), None)
                }
            };
            if let Some(mut log) = log {
                log.status = response.status().as_u16();
                if let Some((backend, upstream)) = answered {
                    log.backend = Some(backend);
                    log.upstream = Some(upstream);
                }
                response.body_mut().log_on_drop(log);
            }
            Ok(response)
        }
    }

    /// Checks the request and rewrites it for the backend: hop-by-hop headers out,
    /// `X-Forwarded-*` in, the counter parameter appended, HTTP/1.1.
    fn prepare(
        &self,
        request: Request<Incoming>,
        n: u64,
        client_ip: &HeaderValue,
    ) -> Result<Prepared, ProxyError> {
        if request.method() == Method::CONNECT {
            return Err(ProxyError::MethodNotAllowed);
        }
        // RFC 9112 §3.2: an HTTP/1.1 request without Host is answered 400.
        if request.version() == Version::HTTP_11
            && !request.headers().contains_key(header::HOST)
            && request.uri().authority().is_none()
        {
            return Err(ProxyError::BadRequest("missing Host header\n"));
        }
        let (mut parts, body) = request.into_parts();
        // The key is read from the request as the client sent it, when the strategy in force
        // (which a reload may change) reads one.
        let key = self
            .shared
            .hash_key
            .as_deref()
            .filter(|_| self.shared.pool.uses_key())
            .and_then(|key| key.hash(&parts, client_ip));
        let upgrade = rewrite::is_upgrade_request(parts.version, &parts.headers);
        let client_upgrade = if upgrade {
            parts.extensions.remove::<OnUpgrade>()
        } else {
            None
        };
        rewrite::strip_hop_by_hop(&mut parts.headers, upgrade);
        rewrite::add_forwarding_headers(&mut parts.headers, &parts.uri, client_ip);
        let counter = self.shared.counter_param.as_deref().map(|p| (p, n));
        rewrite::rewrite_target(&mut parts.uri, counter)?;
        parts.version = Version::HTTP_11;
        let (body, body_sent) = RequestBody::new(body);
        Ok(Prepared {
            request: Some(Request::from_parts(parts, body)),
            replay: None,
            body_sent,
            client_upgrade,
            key,
        })
    }

    /// Turns the backend's response into the client's: hop-by-hop headers out, the body
    /// streamed through, or for `101 Switching Protocols` a tunnel between the two connections.
    fn finish(
        &self,
        Exchanged {
            mut response,
            conn,
            admitted,
            upstream,
        }: Exchanged,
        client_upgrade: Option<OnUpgrade>,
    ) -> Result<(Response<ProxyBody>, Answered), ProxyError> {
        let answered = self
            .shared
            .access_log
            .is_some()
            .then(|| (Arc::clone(admitted.backend()), upstream));
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                return Err(ProxyError::UnexpectedUpgrade {
                    backend: admitted.backend().id().to_owned(),
                });
            };
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let closed = self.shared.close_tunnels.clone().cancelled_owned();
            self.shared
                .tunnels
                .spawn(tunnel(client_upgrade, upstream_upgrade, admitted, closed));
            rewrite::strip_hop_by_hop(response.headers_mut(), true);
            return Ok((response.map(|_| ProxyBody::empty()), answered));
        }
        rewrite::strip_hop_by_hop(response.headers_mut(), false);
        Ok((
            response.map(|body| ProxyBody::upstream(body, Some(conn), Some(admitted))),
            answered,
        ))
    }

    /// Sends the request to a backend, moving on to another one (never one already tried, and
    /// only within the retry budget) while the request provably has not left the proxy
    /// (connect failed, or a pooled connection turned out closed), or when it is idempotent,
    /// has no body and its backend broke the connection before answering.
    ///
    /// The request stays in `prepared` (owned by the caller's future) and is taken out only to
    /// be sent, so no await point here holds a copy of it; the rare waits (a queue, a connect)
    /// are boxed, so they add nothing to the future of a request that needs neither.
    async fn dispatch(&self, prepared: &mut Prepared) -> Result<Exchanged, ProxyError> {
        let shared = &self.shared;
        if let Some(budget) = &shared.budget {
            budget.deposit();
        }
        let mut tried: SmallVec<[u64; 2]> = SmallVec::new();
        // Boxed: it is rare, and would otherwise take room in every request's future.
        let mut last_error: Option<Box<ProxyError>> = None;
        'backends: while shared.retries.is_none_or(|r| tried.len() <= r) {
            let admitted = match admission::admit_now(
                &shared.pool,
                shared.limits.as_ref(),
                &tried,
                prepared.key,
            ) {
                Admission::Admitted(admitted) => admitted,
                Admission::NoneEligible => break,
                Admission::Queue(limits) => {
                    match Box::pin(admission::queue(&shared.pool, limits, &tried, prepared.key))
                        .await?
                    {
                        Some(admitted) => admitted,
                        None => break,
                    }
                }
            };
            if !tried.is_empty() {
                if shared.budget.as_ref().is_some_and(|b| !b.withdraw()) {
                    tracing::debug!("retry budget spent: not retrying");
                    break;
                }
                shared.retries_made.fetch_add(1, Ordering::Relaxed);
            }
            let backend = admitted.backend();
            tried.push(backend.key());
            // When the request is sent, for its response timeout and latency; read once for
            // the pool too.
            let mut sent_at = Instant::now();
            let mut conn = match shared.upstream.kept(backend, sent_at) {
                Some(conn) => conn,
                None => match Box::pin(shared.upstream.connect_or_join(backend)).await {
                    Ok(conn) => {
                        sent_at = Instant::now();
                        conn
                    }
                    Err(error) => {
                        tracing::debug!(%error, "trying the next backend");
                        self.observe(backend, Outcome::ConnectFailed);
                        last_error = Some(Box::new(error));
                        continue;
                    }
                },
            };
            loop {
                // One exchange, in a block: what it needs is gone before the reconnect below.
                let error = {
                    let (response, timer, method) = {
                        let Some(request) = prepared.request.take() else {
                            // Cannot happen: every way back here puts the request back first.
                            break 'backends;
                        };
                        let method = request.method().clone();
                        prepared.replay = self.replay_of(&request, &admitted);
                        let (response, timer) = conn.send(request);
                        (response, timer, method)
                    };
                    let body_sent = prepared.body_sent.as_mut();
                    let timeout = shared.response_timeout;
                    // The response timeout counts from when the body has been sent; without a
                    // body, from now (one clock read per request fewer).
                    let deadline = async move {
                        let from = match body_sent {
                            Some(sent) => {
                                let _ = sent.await;
                                Instant::now()
                            }
                            None => sent_at,
                        };
                        let deadline = from + timeout;
                        std::future::poll_fn(|cx| timer.poll_until(cx, deadline)).await;
                    };
                    let outcome = tokio::select! {
                        biased;
                        response = response => Some(response),
                        () = deadline => None,
                    };
                    match outcome {
                        Some(Ok(response)) => {
                            let now = std::time::Instant::now();
                            let upstream = now - sent_at.into_std();
                            // Latency-aware strategies get each response's time to headers.
                            if admitted.observes_latency() {
                                backend.observe_latency(upstream, now);
                            }
                            let status = response.status();
                            backend.stats().record_response(
                                method.as_str(),
                                status.as_u16(),
                                upstream,
                            );
                            self.observe(
                                backend,
                                if status.is_server_error() {
                                    Outcome::ServerError(status.as_u16())
                                } else {
                                    Outcome::Success
                                },
                            );
                            return Ok(Exchanged {
                                response,
                                conn,
                                admitted,
                                upstream,
                            });
                        }
                        Some(Err(error)) => error,
                        None => {
                            self.observe(backend, Outcome::Timeout);
                            return Err(ProxyError::ResponseTimeout {
                                backend: backend.id().to_owned(),
                                timeout: shared.response_timeout,
                            });
                        }
                    }
                };
                let (unsent, source) = unsent_and_cause(error);
                let failed = || ProxyError::Upstream {
                    backend: backend.id().to_owned(),
                    source,
                };
                let Some(unsent) = unsent else {
                    // Sent, and the connection broke before the answer.
                    self.observe(backend, Outcome::Reset);
                    let error = failed();
                    prepared.request = prepared.replay.take().and_then(|r| r.request());
                    if prepared.request.is_none() {
                        return Err(error);
                    }
                    tracing::debug!(%error, "idempotent request: trying the next backend");
                    last_error = Some(Box::new(error));
                    continue 'backends;
                };
                prepared.request = Some(unsent);
                if !conn.is_reused() {
                    self.observe(backend, Outcome::Reset);
                    last_error = Some(Box::new(failed()));
                    continue 'backends;
                }
                // A pooled connection the backend had closed: same backend, new connection.
                conn = match Box::pin(shared.upstream.connect(backend)).await {
                    Ok(conn) => {
                        sent_at = Instant::now();
                        conn
                    }
                    Err(error) => {
                        self.observe(backend, Outcome::ConnectFailed);
                        last_error = Some(Box::new(error));
                        continue 'backends;
                    }
                };
            }
        }
        Err(last_error.map_or(ProxyError::NoHealthyBackend, |error| *error))
    }

    fn observe(&self, backend: &Arc<Backend>, outcome: Outcome) {
        backend.stats().record_failure(outcome);
        if let Some(observer) = &self.shared.observer {
            observer.observe(backend, outcome);
        }
    }

    /// A copy of `request` to send elsewhere should its backend break the connection before
    /// answering: only for idempotent requests without a body (RFC 9110 §9.2.2), and only when
    /// another backend is left to try, since the copy costs allocations.
    fn replay_of(&self, request: &Request<RequestBody>, admitted: &Admitted) -> Option<Replay> {
        if !self.shared.retry_idempotent
            || !request.method().is_idempotent()
            || !http_body::Body::is_end_stream(request.body())
            || !admitted.others_left()
        {
            return None;
        }
        Some(Replay::of(request))
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("pool", &self.shared.pool)
            .field("upstream", &self.shared.upstream)
            .field("counter_param", &self.shared.counter_param)
            .field("response_timeout", &self.shared.response_timeout)
            .field("retries", &self.shared.retries)
            .finish()
    }
}

/// A backend's answer, with what the rest of the request needs of the exchange.
struct Exchanged {
    response: Response<Incoming>,
    conn: Conn,
    admitted: Admitted,
    /// From sending the request to the response headers.
    upstream: Duration,
}

/// The backend that answered and its time to headers, when the access log wants them.
type Answered = Option<(Arc<Backend>, Duration)>;

/// Responses the proxy made itself, counted by status.
#[derive(Debug, Default)]
struct LocalResponses([AtomicU64; LOCAL_STATUSES.len() + 1]);

/// The statuses the proxy sends itself; anything else is counted as 500.
const LOCAL_STATUSES: [u16; 6] = [400, 405, 413, 502, 503, 504];

impl LocalResponses {
    fn count(&self, status: u16) {
        let i = LOCAL_STATUSES
            .iter()
            .position(|&s| s == status)
            .unwrap_or(LOCAL_STATUSES.len());
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    fn read(&self) -> Vec<(u16, u64)> {
        LOCAL_STATUSES
            .iter()
            .chain(&[500])
            .zip(&self.0)
            .map(|(&status, n)| (status, n.load(Ordering::Relaxed)))
            .collect()
    }
}

/// A request rewritten for the backend, with what the exchange needs to know about it.
struct Prepared {
    /// Taken out while it is being sent; put back when it comes back unsent, or made again from
    /// its replay, to go to another backend.
    request: Option<Request<RequestBody>>,
    /// A copy of the request being sent, if it may be sent again should its backend break the
    /// connection before answering.
    replay: Option<Replay>,
    body_sent: Option<oneshot::Receiver<()>>,
    client_upgrade: Option<OnUpgrade>,
    key: Option<u64>,
}

/// The proxy as a hyper service for one client connection (it knows the client's address).
#[derive(Clone)]
pub struct ProxyService {
    proxy: Proxy,
    client: SocketAddr,
    client_ip: HeaderValue,
}

impl fmt::Debug for ProxyService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyService")
            .field("client_ip", &self.client_ip)
            .finish()
    }
}

impl hyper::service::Service<Request<Incoming>> for ProxyService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let forwarding = self
            .proxy
            .forward_from(request, self.client, &self.client_ip);
        // Boxed once per request. Up to 1032 bytes, glibc serves it from its per-thread cache; a
        // larger block goes through the main allocator (and memory moves: it was 4 KiB once).
        debug_assert!(
            std::mem::size_of_val(&forwarding) <= 1032,
            "the request future grew to {} bytes",
            std::mem::size_of_val(&forwarding)
        );
        Box::pin(forwarding)
    }
}

/// The request a connection handed back unsent, if it did, and why it failed. A function of its
/// own so that the error, borrowed to take the request out, is not kept in the request's future.
fn unsent_and_cause<T>(mut error: TrySendError<T>) -> (Option<T>, hyper::Error) {
    (error.take_message(), error.into_error())
}

fn ip_header(ip: IpAddr) -> HeaderValue {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

fn error_response(error: &ProxyError) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(Bytes::from_static(
        error.public_message().as_bytes(),
    )));
    *response.status_mut() = error.status();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Copies bytes both ways between an upgraded client connection and its backend connection
/// until either side closes, or `closed` completes.
async fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    _admitted: Admitted,
    closed: impl Future<Output = ()>,
) {
    let relay = async {
        let (client, upstream) = tokio::try_join!(client, upstream)?;
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    };
    tokio::select! {
        () = closed => {},
        ended = relay => if let Err(error) = ended {
            tracing::debug!(%error, "upgraded connection ended with an error");
        },
    }
}
