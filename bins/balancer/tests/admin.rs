//! Operating it: the admin listener's endpoints and `--check-config`.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Full;
use hyper::Request;
use support::*;

/// Starts the balancer with an admin listener on a free port; returns it and the admin address.
async fn start_with_admin(backends: &[TestBackend]) -> (Balancer, SocketAddr) {
    let mut args = args_for(backends);
    args.extend(["--admin", "127.0.0.1:0"].map(String::from));
    let lb = Balancer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let admin = lb.admin_addr().await;
    (lb, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_via_admin_stops_new_traffic_while_an_in_flight_request_completes() {
    let backends = backends(3).await;
    let (lb, admin) = start_with_admin(&backends).await;
    let target = backends[1].id().to_owned();

    // Three slow requests, round robin: one of them is on the backend to drain.
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let url = lb.url("/delay/1500");
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let drained = post(&format!("http://{admin}/backends/{target}/drain")).await;
    assert_eq!(drained.status, 200, "{}", drained.text());
    assert_eq!(drained.json()["health"], "draining");
    assert_eq!(drained.json()["in_flight"], 1);

    for _ in 0..9 {
        let reply = get(&lb.url("/ping")).await;
        assert_eq!(reply.status, 200);
        assert_ne!(
            reply.backend(),
            target,
            "a drained backend got a new request"
        );
    }
    let listed = get(&format!("http://{admin}/backends")).await.json();
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == target.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["health"], "draining");
    assert_eq!(entry["eligible"], false);

    // The request that was in flight on it finishes normally.
    let mut served_by = Vec::new();
    for request in slow {
        let reply = request.await.unwrap();
        assert_eq!(reply.status, 200);
        served_by.push(reply.backend());
    }
    assert!(served_by.contains(&target), "{served_by:?}");

    let enabled = post(&format!("http://{admin}/backends/{target}/enable")).await;
    assert_eq!(enabled.json()["health"], "healthy");
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(get(&lb.url("/ping")).await.backend());
    }
    assert!(seen.contains(&target), "{seen:?}");

    assert_eq!(
        post(&format!("http://{admin}/backends/127.0.0.1:1/drain"))
            .await
            .status,
        404
    );
    assert_eq!(
        get(&format!("http://{admin}/backends/{target}/drain"))
            .await
            .status,
        405
    );
    assert_eq!(get(&format!("http://{admin}/healthz")).await.text(), "ok\n");
}

#[test]
fn check_config_exits_0_for_a_good_file_and_2_naming_the_fault() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../balancer.toml");
    let (code, _) = run_to_exit(&["--check-config", example]);
    assert_eq!(code, Some(0));

    let dir = std::env::temp_dir().join(format!("lb-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "listen = \"127.0.0.1:1\"\nhealth-rise = 0\n").unwrap();
    let (code, stderr) = run_to_exit(&["--check-config", bad.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("health-rise") && stderr.contains('0'),
        "{stderr}"
    );

    let dup = dir.join("dup.toml");
    std::fs::write(
        &dup,
        "[[backend]]\nurl = \"http://127.0.0.1:7001\"\n[[backend]]\nurl = \"http://127.0.0.1:7001/\"\n",
    )
    .unwrap();
    let (code, stderr) = run_to_exit(&["--check-config", dup.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("127.0.0.1:7001"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Parses a scrape, failing on any line that is not a comment, a sample or empty.
fn scrape(text: &str) -> prometheus_parse::Scrape {
    for line in text.lines() {
        assert!(
            !matches!(
                prometheus_parse::LineInfo::parse(line),
                prometheus_parse::LineInfo::Ignored
            ),
            "not Prometheus text: {line:?}"
        );
    }
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of the sample `name` whose labels include all of `labels`; 0 if there is none.
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name} is not a number: {other:?}"),
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_count_the_requests_sent() {
    let backends = backends(3).await;
    let (lb, admin) = start_with_admin(&backends).await;
    let client = client();
    let mut by_backend = std::collections::HashMap::<String, f64>::new();
    for i in 0..30 {
        let path = if i % 10 == 9 { "/status/503" } else { "/ping" };
        let reply = send(
            &client,
            Request::get(lb.url(path)).body(Full::default()).unwrap(),
        )
        .await;
        *by_backend.entry(reply.backend()).or_default() += 1.0;
    }
    for _ in 0..4 {
        let request = Request::post(lb.url("/echo"))
            .body(Full::from("hi"))
            .unwrap();
        assert_eq!(send(&client, request).await.status, 200);
    }

    let reply = get(&format!("http://{admin}/metrics")).await;
    assert_eq!(reply.status, 200);
    let content_type = reply.headers["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let m = scrape(&reply.text());
    let responses = "lb_backend_responses_total";
    assert_eq!(value(&m, "lb_requests_received_total", &[]), 34.0);
    assert_eq!(value(&m, responses, &[]), 34.0);
    assert_eq!(
        value(&m, responses, &[("method", "GET"), ("class", "2xx")]),
        27.0
    );
    assert_eq!(
        value(&m, responses, &[("method", "GET"), ("class", "5xx")]),
        3.0
    );
    assert_eq!(
        value(&m, responses, &[("method", "POST"), ("class", "2xx")]),
        4.0
    );
    for b in &backends {
        let id = b.id();
        let gets = value(&m, responses, &[("backend", id), ("method", "GET")]);
        assert_eq!(gets, by_backend[id], "{id}");
        assert_eq!(
            value(
                &m,
                "lb_backend_health",
                &[("backend", id), ("state", "healthy")]
            ),
            1.0
        );
        assert_eq!(value(&m, "lb_backend_in_flight", &[("backend", id)]), 0.0);
        assert_eq!(
            value(&m, "lb_backend_ejections_total", &[("backend", id)]),
            0.0
        );
        // Every response is in the backend's latency histogram.
        let histogram = m
            .samples
            .iter()
            .find(|s| {
                s.metric == "lb_backend_response_seconds" && s.labels.get("backend") == Some(id)
            })
            .unwrap_or_else(|| panic!("no histogram for {id}"));
        let prometheus_parse::Value::Histogram(buckets) = &histogram.value else {
            panic!("{histogram:?}")
        };
        let all = buckets.iter().find(|b| b.less_than.is_infinite()).unwrap();
        assert_eq!(all.count, value(&m, responses, &[("backend", id)]));
    }
    // One client connection, sequential requests: upstream connections are reused (a request
    // that finds the last one still finishing opens another, so not exactly one per backend).
    let opened = value(&m, "lb_upstream_connections_opened_total", &[]);
    assert!(
        (1.0..=17.0).contains(&opened),
        "{opened} connections for 34 requests"
    );
    assert_eq!(
        value(&m, "lb_backend_connections_opened_total", &[]),
        opened
    );
    assert_eq!(value(&m, "lb_retries_total", &[]), 0.0);

    // Responses of the balancer's own are counted by status, and the health state follows.
    for b in &backends {
        post(&format!("http://{admin}/backends/{}/drain", b.id())).await;
    }
    for _ in 0..2 {
        assert_eq!(get(&lb.url("/ping")).await.status, 503);
    }
    let m = scrape(&get(&format!("http://{admin}/metrics")).await.text());
    assert_eq!(
        value(&m, "lb_local_responses_total", &[("status", "503")]),
        2.0
    );
    assert_eq!(value(&m, "lb_requests_received_total", &[]), 36.0);
    assert_eq!(
        value(&m, "lb_backend_health", &[("state", "draining")]),
        3.0
    );
    assert_eq!(value(&m, "lb_backend_eligible", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_json_shows_requests_failures_and_the_last_probe() {
    let backends = backends(2).await;
    let (lb, admin) = start_with_admin(&backends).await;
    for _ in 0..4 {
        assert_eq!(get(&lb.url("/ping")).await.status, 200);
    }
    let list = get(&format!("http://{admin}/backends")).await.json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    for entry in list {
        assert_eq!(entry["requests"], 2, "{entry}");
        assert_eq!(entry["responses"]["2xx"], 2, "{entry}");
        assert_eq!(entry["failures"], 0, "{entry}");
        assert_eq!(entry["weight"], 1, "{entry}");
        assert_eq!(entry["state"], "healthy", "{entry}");
        assert!(
            entry["url"]
                .as_str()
                .unwrap()
                .starts_with("http://127.0.0.1:")
        );
        assert_eq!(entry["last_probe"]["ok"], true, "{entry}");
        assert!(entry["last_probe"]["took_ms"].as_f64().unwrap() >= 0.0);
        assert!(entry["last_probe"]["at"].as_str().unwrap().ends_with('Z'));
    }

    // A backend that fails its probe shows why.
    backends[0].set_healthy(false);
    let id = backends[0].id().to_owned();
    let shown = eventually(Duration::from_secs(5), async || {
        let list = get(&format!("http://{admin}/backends")).await.json();
        let entry = list
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id.as_str())
            .cloned();
        entry.is_some_and(|e| {
            e["health"] == "unhealthy"
                && e["last_probe"]["ok"] == false
                && e["last_probe"]["error"]
                    .as_str()
                    .unwrap_or("")
                    .contains("503")
        })
    })
    .await;
    assert!(
        shown,
        "{}",
        get(&format!("http://{admin}/backends")).await.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_and_unknown_paths_on_the_admin_port() {
    let backends = backends(1).await;
    let (_lb, admin) = start_with_admin(&backends).await;
    let page = get(&format!("http://{admin}/")).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    assert!(page.text().contains("fetch(\"/backends\""));
    assert_eq!(get(&format!("http://{admin}/nope")).await.status, 404);
    assert_eq!(post(&format!("http://{admin}/metrics")).await.status, 405);
}
