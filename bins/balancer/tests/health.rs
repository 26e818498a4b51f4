//! Health through the binary: passive ejection, rise/fall against flapping, retries that go
//! somewhere useful within their budget, and a chaos run.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::Request;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn start(backends: &[String], extra: &[&str]) -> Balancer {
    let mut args: Vec<String> = Vec::new();
    for url in backends {
        args.push("--backend".into());
        args.push(url.clone());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    Balancer::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// How a [`Fake`] backend treats a request.
#[derive(Clone, Copy)]
enum Behaviour {
    /// `GET /health` is 200, everything else 500.
    ServerError,
    /// Reads the request, then resets the connection (RST) without answering.
    Reset,
}

/// A raw-socket backend that misbehaves on purpose, counting the requests it saw.
struct Fake {
    url: String,
    requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Fake {
    async fn start(behaviour: Behaviour) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let counted = Arc::clone(&counted);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut filled = 0;
                    loop {
                        let Ok(n) = stream.read(&mut buf[filled..]).await else {
                            return;
                        };
                        if n == 0 {
                            return; // a TCP probe, or the proxy closing an idle connection
                        }
                        filled += n;
                        let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n")
                        else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.copy_within(end + 4..filled, 0);
                        filled -= end + 4;
                        let health = head.starts_with("GET /health ");
                        if !health {
                            counted.fetch_add(1, Ordering::SeqCst);
                        }
                        match behaviour {
                            Behaviour::Reset if !health => {
                                let _ = stream.set_zero_linger();
                                return;
                            }
                            _ => {
                                let status = if health { "200 OK" } else { "500 Oops" };
                                let answer = format!(
                                    "HTTP/1.1 {status}\r\nx-backend-id: fake\r\ncontent-length: 0\r\n\r\n"
                                );
                                if stream.write_all(answer.as_bytes()).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        Fake {
            url,
            requests,
            task,
        }
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Four keep-alive clients sending `GET path` in a loop, `pause` apart, until `finish`.
struct SteadyLoad {
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<Vec<u16>>>,
}

impl SteadyLoad {
    fn start(lb: &Arc<Balancer>, path: &'static str, pause: Duration) -> SteadyLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..4)
            .map(|_| {
                let (lb, stop) = (Arc::clone(lb), Arc::clone(&stop));
                tokio::spawn(async move {
                    let client = client();
                    let mut statuses = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let request = Request::get(lb.url(path)).body(Full::default()).unwrap();
                        statuses.push(send(&client, request).await.status.as_u16());
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                    statuses
                })
            })
            .collect();
        SteadyLoad { stop, clients }
    }

    /// Stops the clients and returns every status they received.
    async fn finish(self) -> Vec<u16> {
        self.stop.store(true, Ordering::SeqCst);
        let mut statuses = Vec::new();
        for client in self.clients {
            statuses.extend(client.await.unwrap());
        }
        statuses
    }
}

async fn get_ping(lb: &Balancer) -> Reply {
    send(
        &client(),
        Request::get(lb.url("/ping")).body(Full::default()).unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_answering_5xx_is_ejected_after_n_failures_without_a_probe() {
    let good = backends(2).await;
    let bad = Fake::start(Behaviour::ServerError).await;
    let urls = vec![good[0].url(), good[1].url(), bad.url.clone()];
    // Probes would see nothing wrong (/health answers 200), and come only every 10 s anyway.
    let lb = start(
        &urls,
        &[
            "--eject-after",
            "3",
            "--health-interval",
            "10s",
            "--workers",
            "1",
        ],
    );
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(get_ping(&lb).await.status.as_u16());
    }
    assert_eq!(bad.requests(), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 500).count(), 3);
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 27);
    let id = bad.url.trim_start_matches("http://");
    let line = format!(
        "backend {id} healthy -> ejected: 3 failures in a row in live traffic (last: status 500), ejected for 30s"
    );
    assert!(
        eventually(Duration::from_secs(2), async || lb.stderr().contains(&line)).await,
        "{}",
        lb.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_backend_with_rise_and_fall_3_stays_in_the_pool() {
    let all = backends(3).await;
    let urls: Vec<String> = all.iter().map(|b| b.url()).collect();
    let lb = start(
        &urls,
        &[
            "--health-interval",
            "100ms",
            "--health-rise",
            "3",
            "--health-fall",
            "3",
        ],
    );
    // Its /health flips every 150 ms: probes every 90-100 ms see at most two failures in a row.
    let stop = Arc::new(AtomicBool::new(false));
    let flapper = {
        let stop = Arc::clone(&stop);
        let url = all[2].url();
        tokio::spawn(async move {
            // The backend's own switch, as a user would flip it.
            let flip = async |state: &str| {
                let request = Request::post(format!("{url}/health/{state}"))
                    .body(Full::default())
                    .unwrap();
                assert_eq!(send(&client(), request).await.status, 200);
            };
            let mut healthy = true;
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(150)).await;
                healthy = !healthy;
                flip(if healthy { "up" } else { "down" }).await;
            }
            flip("up").await;
        })
    };
    let client = client();
    let started = Instant::now();
    let mut to_flapper = 0;
    let mut total = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let reply = send(
            &client,
            Request::get(lb.url("/ping")).body(Full::default()).unwrap(),
        )
        .await;
        assert_eq!(reply.status, 200);
        total += 1;
        if reply.backend() == all[2].id() {
            to_flapper += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::SeqCst);
    flapper.await.unwrap();
    // Round robin over three that never left: a third each, exactly give or take one.
    assert!(to_flapper * 3 + 3 >= total, "{to_flapper} of {total}");
    let stderr = lb.stderr();
    assert!(
        !stderr.contains(&format!("backend {} healthy ->", all[2].id())),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_costs_no_client_request_under_steady_load() {
    let mut all = backends(3).await;
    let urls: Vec<String> = all.iter().map(|b| b.url()).collect();
    let lb = Arc::new(start(&urls, &["--health-interval", "200ms"]));
    let load = SteadyLoad::start(&lb, "/delay/2", Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(700)).await;
    all.pop().unwrap().kill().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let statuses = load.finish().await;
    let failed: Vec<_> = statuses.iter().filter(|&&s| s != 200).collect();
    assert!(statuses.len() > 200, "{} requests", statuses.len());
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        statuses.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_reset_by_its_backend_reaches_the_next_one_whole_and_a_post_does_not() {
    let reset = Fake::start(Behaviour::Reset).await;
    let good = backends(1).await;
    // Round robin from the resetting backend: each GET meets it first or second.
    let lb = start(
        &[reset.url.clone(), good[0].url()],
        &[
            "--health-probe",
            "tcp",
            "--eject-after",
            "0",
            "--workers",
            "1",
        ],
    );
    for n in 1..=4 {
        let request = Request::get(lb.url("/echo/a%20b?x=1&x=2"))
            .header("x-multi", "one")
            .header("x-multi", "two, three")
            .header("x-empty", "")
            .header("accept", "*/*")
            .body(Full::default())
            .unwrap();
        let reply = send(&client(), request).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let echo = reply.json();
        assert_eq!(echo["method"], "GET");
        assert_eq!(echo["path"], "/echo/a%20b");
        // The replay keeps the request's counter value.
        assert_eq!(echo["query"], format!("x=1&x=2&reqCounter={n}"));
        let headers = &echo["headers"];
        assert_eq!(headers["x-multi"], serde_json::json!(["one", "two, three"]));
        assert_eq!(headers["x-empty"], serde_json::json!([""]));
        assert_eq!(headers["accept"], serde_json::json!(["*/*"]));
        assert_eq!(headers["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));
        assert_eq!(headers["host"], headers["x-forwarded-host"]);
    }
    assert!(
        reset.requests() >= 2,
        "the resetting backend saw {}",
        reset.requests()
    );
    // A request with a body may have been acted on: it is not sent twice.
    let mut posts = Vec::new();
    for _ in 0..4 {
        let request = Request::post(lb.url("/echo"))
            .body(Full::new(bytes::Bytes::from_static(b"payload")))
            .unwrap();
        posts.push(send(&client(), request).await.status.as_u16());
    }
    posts.sort_unstable();
    assert_eq!(posts, [200, 200, 502, 502]);
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_retries_when_every_backend_fails() {
    let fakes = [
        Fake::start(Behaviour::Reset).await,
        Fake::start(Behaviour::Reset).await,
        Fake::start(Behaviour::Reset).await,
    ];
    let urls: Vec<String> = fakes.iter().map(|f| f.url.clone()).collect();
    // TCP probes pass (the port accepts), passive health is off: every request finds three
    // "healthy" backends that reset it, and without a budget would be tried on all three.
    let lb = start(
        &urls,
        &[
            "--health-probe",
            "tcp",
            "--eject-after",
            "0",
            "--retry-budget",
            "0",
            "--workers",
            "1",
        ],
    );
    let requests = 300;
    for _ in 0..requests {
        assert_eq!(get_ping(&lb).await.status, 502);
    }
    let seen: u64 = fakes.iter().map(Fake::requests).sum();
    let retries = seen - requests;
    // The floor (10 a second over tower's 10 s window) is all a zero percent budget allows;
    // unbudgeted, it would be two retries per request (600).
    assert!(
        (50..=110).contains(&retries),
        "{retries} retries for {requests} requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_one_backend_killed_and_restarted_every_second_for_ten_seconds() {
    let mut all = backends(3).await;
    let urls: Vec<String> = all.iter().map(|b| b.url()).collect();
    let lb = Arc::new(start(
        &urls,
        &["--health-interval", "100ms", "--health-timeout", "100ms"],
    ));
    let load = SteadyLoad::start(&lb, "/ping", Duration::from_millis(2));
    for round in 0..10 {
        let victim = round % 3;
        let addr = all[victim].local_addr();
        let backend = all.remove(victim);
        backend.kill().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let restarted = TestBackend::start(addr, None)
            .await
            .expect("restart on the same port");
        all.insert(victim, restarted);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let statuses = load.finish().await;
    // Two of three backends are up at every moment, so "none healthy" (503) never happens.
    let not_ok: Vec<_> = statuses.iter().filter(|&&s| s != 200).collect();
    assert!(statuses.len() > 1000, "{} requests", statuses.len());
    assert!(
        not_ok.is_empty(),
        "{} of {} not 200: {not_ok:?}",
        not_ok.len(),
        statuses.len()
    );
}
