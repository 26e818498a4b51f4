//! Reloading the configuration (SIGHUP, `--watch-config`) while serving.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use support::*;

/// A config file in a directory of its own, removed when dropped.
struct ConfigFile {
    dir: PathBuf,
    path: PathBuf,
}

impl ConfigFile {
    fn new(name: &str) -> ConfigFile {
        let dir = std::env::temp_dir().join(format!("lb-reload-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("balancer.toml");
        ConfigFile { dir, path }
    }

    /// Writes `settings` (top-level keys) and one `[[backend]]` per `(url, weight)`.
    fn write(&self, settings: &str, backends: &[(&str, u32)]) {
        let mut text = format!("{settings}\n");
        for (url, weight) in backends {
            text.push_str(&format!(
                "[[backend]]\nurl = \"{url}\"\nweight = {weight}\n"
            ));
        }
        // Written whole under another name, then renamed: a reload never reads half a file.
        let temporary = self.dir.join("next.toml");
        std::fs::write(&temporary, text).unwrap();
        std::fs::rename(&temporary, &self.path).unwrap();
    }

    fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An address nothing listens on.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

/// Clients that each send requests one after another on one keep-alive connection of their
/// own, until stopped; a request that fails, or a connection that breaks, is recorded.
struct SteadyClients {
    stop: Arc<AtomicBool>,
    /// Which backends answered, by phase of the test.
    phase: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<ClientReport>>,
}

#[derive(Debug, Default)]
struct ClientReport {
    ok: usize,
    failures: Vec<String>,
    /// `(phase, backend)` of every answer.
    answers: Vec<(usize, String)>,
}

impl SteadyClients {
    async fn start(lb: &Balancer, n: usize) -> SteadyClients {
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..n {
            let stream = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let (stop, phase, host) = (Arc::clone(&stop), Arc::clone(&phase), lb.addr.to_string());
            tasks.push(tokio::spawn(async move {
                let mut report = ClientReport::default();
                while !stop.load(Ordering::Relaxed) {
                    let request = Request::get("/ping")
                        .header("host", &host)
                        .body(Empty::new())
                        .unwrap();
                    let answer = async {
                        let response = sender.send_request(request).await?;
                        let status = response.status();
                        let backend = response
                            .headers()
                            .get("x-backend-id")
                            .map(|v| v.to_str().unwrap_or("").to_owned())
                            .unwrap_or_default();
                        response.into_body().collect().await?;
                        Ok::<_, hyper::Error>((status, backend))
                    };
                    match tokio::time::timeout(Duration::from_secs(5), answer).await {
                        Ok(Ok((status, backend))) if status == 200 => {
                            report.ok += 1;
                            report
                                .answers
                                .push((phase.load(Ordering::Relaxed), backend));
                        }
                        Ok(Ok((status, backend))) => {
                            report.failures.push(format!("{status} from {backend:?}"));
                        }
                        Ok(Err(error)) => {
                            // The connection is gone: that is a failure, and the end of it.
                            report.failures.push(format!("connection broke: {error}"));
                            break;
                        }
                        Err(_) => {
                            report.failures.push("no answer in 5 s".to_owned());
                            break;
                        }
                    }
                }
                report
            }));
        }
        SteadyClients { stop, phase, tasks }
    }

    fn next_phase(&self) {
        self.phase.fetch_add(1, Ordering::Relaxed);
    }

    async fn stop(self) -> Vec<ClientReport> {
        self.stop.store(true, Ordering::Relaxed);
        let mut reports = Vec::new();
        for task in self.tasks {
            reports.push(task.await.unwrap());
        }
        reports
    }
}

async fn backends_json(admin: std::net::SocketAddr) -> Vec<serde_json::Value> {
    let list = get(&format!("http://{admin}/backends")).await.json();
    list.as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_load_loses_no_request_and_no_connection() {
    let backends = backends(3).await;
    let (a, b, c) = (&backends[0], &backends[1], &backends[2]);
    let dead = dead_url();
    let config = ConfigFile::new("load");
    config.write(
        "strategy = \"round-robin\"\nhealth-interval = \"200ms\"",
        &[(&a.url(), 1), (&b.url(), 1)],
    );
    let lb = Balancer::start(&["--config", config.arg(), "--admin", "127.0.0.1:0"]);
    let admin = lb.admin_addr().await;

    // Slow requests in flight across the reload, some of them on A, which the reload removes.
    let mut slow = Vec::new();
    for _ in 0..4 {
        let url = lb.url("/delay/1500");
        slow.push(tokio::spawn(async move { get(&url).await }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let clients = SteadyClients::start(&lb, 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A leaves; B is re-weighted; C joins, and a backend that is down joins too; the strategy
    // becomes weighted round robin.
    config.write(
        "strategy = \"weighted-round-robin\"\nhealth-interval = \"200ms\"",
        &[(&b.url(), 3), (&c.url(), 1), (&dead, 1)],
    );
    lb.signal("HUP");
    lb.wait_for_log("configuration reloaded", 1).await;
    clients.next_phase();
    tokio::time::sleep(Duration::from_millis(600)).await;

    // Health settings and the strategy change again.
    config.write(
        "strategy = \"round-robin\"\nhealth-interval = \"300ms\"\nhealth-fall = 2",
        &[(&b.url(), 3), (&c.url(), 1), (&dead, 1)],
    );
    lb.signal("HUP");
    lb.wait_for_log("configuration reloaded", 2).await;
    clients.next_phase();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let reports = clients.stop().await;

    let mut by_phase: HashMap<(usize, String), usize> = HashMap::new();
    for report in &reports {
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        assert!(report.ok > 10, "{report:?}");
        for answer in &report.answers {
            *by_phase.entry(answer.clone()).or_default() += 1;
        }
    }
    let count = |phase: usize, backend: &TestBackend| {
        by_phase
            .get(&(phase, backend.id().to_owned()))
            .copied()
            .unwrap_or(0)
    };
    // Before: A and B. After: never A, never the dead backend; B three times as often as C.
    assert!(count(0, a) > 0 && count(0, b) > 0, "{by_phase:?}");
    for phase in 1..=2 {
        assert_eq!(
            count(phase, a),
            0,
            "A got traffic after its removal: {by_phase:?}"
        );
        let others: usize = by_phase
            .iter()
            .filter(|((p, id), _)| *p == phase && id != b.id() && id != c.id())
            .map(|(_, n)| n)
            .sum();
        assert_eq!(others, 0, "{by_phase:?}");
    }
    let (b1, c1) = (count(1, b), count(1, c));
    assert!(c1 > 0 && b1 >= 2 * c1, "weights 3:1, got B {b1} C {c1}");
    let (b2, c2) = (count(2, b), count(2, c));
    assert!(
        c2 > 0 && b2 <= 2 * c2,
        "round robin again, got B {b2} C {c2}"
    );

    // The requests in flight when A was removed finished.
    let mut slow_backends = Vec::new();
    for request in slow {
        let reply = request.await.unwrap();
        assert_eq!(reply.status, 200);
        slow_backends.push(reply.backend());
    }
    assert!(
        slow_backends.contains(&a.id().to_owned()),
        "{slow_backends:?}"
    );

    let listed = backends_json(admin).await;
    let ids: Vec<_> = listed.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [b.id(), c.id(), &dead["http://".len()..]]);
    assert_eq!(listed[0]["weight"], 3);
    assert_eq!(listed[2]["health"], "unhealthy");
    let m = get(&format!("http://{admin}/metrics")).await.text();
    assert!(
        m.contains("lb_config_reloads_total{result=\"success\"} 2"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_backends_keep_their_counters_and_pooled_connections() {
    let backends = backends(3).await;
    let config = ConfigFile::new("keep");
    config.write("", &[(&backends[0].url(), 1), (&backends[1].url(), 1)]);
    let lb = Balancer::start(&["--config", config.arg(), "--admin", "127.0.0.1:0"]);
    let admin = lb.admin_addr().await;
    let client = client();
    let request = || {
        Request::get(lb.url("/ping"))
            .body(Default::default())
            .unwrap()
    };
    // A pause after each request lets its upstream connection go back to the pool, ready, before
    // the next one: back to back, a request can find it still finishing and open another.
    for _ in 0..10 {
        assert_eq!(send(&client, request()).await.status, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = backends_json(admin).await;

    config.write(
        "strategy = \"weighted-round-robin\"\nhealth-interval = \"500ms\"",
        &[
            (&backends[0].url(), 1),
            (&backends[1].url(), 1),
            (&backends[2].url(), 1),
        ],
    );
    lb.signal("HUP");
    lb.wait_for_log("configuration reloaded", 1).await;
    for _ in 0..12 {
        assert_eq!(send(&client, request()).await.status, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = backends_json(admin).await;
    assert_eq!(after.len(), 3);
    for i in 0..2 {
        // Same backend: its counters go on from where they were, and the requests after the
        // reload went over the connections pooled before it.
        assert_eq!(after[i]["id"], before[i]["id"]);
        assert!(after[i]["requests"].as_u64() > before[i]["requests"].as_u64());
        assert_eq!(
            after[i]["connections_opened"],
            before[i]["connections_opened"]
        );
    }
    assert!(after[2]["requests"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_reload_is_refused_and_the_old_configuration_keeps_serving() {
    let backends = backends(2).await;
    let (a, b) = (&backends[0], &backends[1]);
    let config = ConfigFile::new("invalid");
    config.write("", &[(&a.url(), 1), (&b.url(), 1)]);
    let lb = Balancer::start(&["--config", config.arg(), "--admin", "127.0.0.1:0"]);
    let admin = lb.admin_addr().await;

    let bad = [
        ("bogus-key = 1", vec![(a.url(), 1)], "bogus-key"),
        ("health-rise = 0", vec![(a.url(), 1)], "health-rise"),
        ("", vec![(b.url(), 1), (b.url(), 2)], b.id()),
        // An empty file (one being written, say) does not swap in the default backends.
        ("", vec![], "lists no backend"),
    ];
    for (i, (settings, list, named)) in bad.iter().enumerate() {
        let list: Vec<_> = list.iter().map(|(u, w)| (u.as_str(), *w)).collect();
        config.write(settings, &list);
        lb.signal("HUP");
        lb.wait_for_log("reload refused", i + 1).await;
        let refusal = lb
            .stderr()
            .lines()
            .filter(|l| l.contains("reload refused"))
            .nth(i)
            .unwrap()
            .to_owned();
        assert!(refusal.contains(named), "{refusal}");
        // Still both backends, in turn.
        let seen: Vec<_> = [get(&lb.url("/ping")).await, get(&lb.url("/ping")).await]
            .iter()
            .map(|r| {
                assert_eq!(r.status, 200);
                r.backend()
            })
            .collect();
        assert!(seen.contains(&a.id().to_owned()) && seen.contains(&b.id().to_owned()));
    }
    let m = get(&format!("http://{admin}/metrics")).await.text();
    assert!(
        m.contains("lb_config_reloads_total{result=\"failure\"} 4"),
        "{m}"
    );

    // A valid file is taken; what only a restart can change is named in a warning.
    config.write("request-counter-param = \"n\"", &[(&b.url(), 1)]);
    lb.signal("HUP");
    lb.wait_for_log("configuration reloaded", 1).await;
    lb.wait_for_log("only take effect at the next restart", 1)
        .await;
    assert!(
        lb.stderr().contains("request-counter-param"),
        "{}",
        lb.stderr()
    );
    for _ in 0..4 {
        assert_eq!(get(&lb.url("/ping")).await.backend(), b.id());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_config_reloads_when_the_file_changes() {
    let backends = backends(2).await;
    let config = ConfigFile::new("watch");
    config.write("", &[(&backends[0].url(), 1), (&backends[1].url(), 1)]);
    let lb = Balancer::start(&["--config", config.arg(), "--watch-config"]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    config.write("", &[(&backends[1].url(), 1)]);
    lb.wait_for_log("configuration reloaded", 1).await;
    assert!(
        lb.stderr().contains("config file changed"),
        "{}",
        lb.stderr()
    );
    for _ in 0..4 {
        assert_eq!(get(&lb.url("/ping")).await.backend(), backends[1].id());
    }
}

#[test]
fn watch_config_without_a_config_file_is_refused() {
    let (code, stderr) = run_to_exit(&["--watch-config"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--watch-config"), "{stderr}");
}
