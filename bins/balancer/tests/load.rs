//! The original balancer's own checks, run through ours: `ab -n 100000 -c 1` and
//! `wrk -t1 -c5 ... /ping` must finish with zero failed requests, zero non-2xx answers and zero
//! socket errors. Throughput is not asserted here (that is what `benches/` is for).
//!
//! Also `h2load` (nghttp2-client) over HTTP/2 with prior knowledge, h2c all the way through.
//!
//! Needs `ab` (apache2-utils), `wrk` and `h2load`. Without them the test says so and passes, unless
//! `LB_REQUIRE_LOAD_TOOLS=1` (as in CI), where a missing tool fails it. `LB_WRK_SECONDS` sets the
//! wrk run's length (default 10; the original used 60).
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

use support::*;

fn tool(name: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("LB_REQUIRE_LOAD_TOOLS").is_err(),
            "{name} is not installed and LB_REQUIRE_LOAD_TOOLS is set"
        );
        eprintln!(
            "SKIPPED: {name} is not installed (apt-get install -y apache2-utils wrk nghttp2-client)"
        );
    }
    found
}

/// The number after `label` on the line that starts with it, if that line is there.
fn figure(output: &str, label: &str) -> Option<u64> {
    output
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_100000_sequential_requests_all_succeed() {
    if !tool("ab") {
        return;
    }
    let backends = backends(3).await;
    let args = args_for(&backends);
    let lb = Balancer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("ab")
            .args([
                "-q",
                "-n",
                "100000",
                "-c",
                "1",
                &format!("http://{}/ping", lb.addr),
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(figure(&text, "Complete requests:"), Some(100_000), "{text}");
    assert_eq!(figure(&text, "Failed requests:"), Some(0), "{text}");
    assert_eq!(figure(&text, "Non-2xx responses:"), None, "{text}");
    let served: u64 = backends.iter().map(|b| b.requests()).sum();
    assert!(served >= 100_000, "backends served {served}");
    eprintln!("{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrk_five_connections_see_no_errors() {
    if !tool("wrk") {
        return;
    }
    let seconds = std::env::var("LB_WRK_SECONDS").unwrap_or_else(|_| "10".into());
    let backends = backends(3).await;
    let args = args_for(&backends);
    let lb = Balancer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let url = format!("http://{}/ping", lb.addr);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("wrk")
            .args(["-t1", "-c5", &format!("-d{seconds}s"), "--latency", &url])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no request count: {text}"));
    assert!(requests > 1000, "{text}");
    assert!(!text.contains("Non-2xx or 3xx responses"), "{text}");
    assert!(!text.contains("Socket errors"), "{text}");
    eprintln!("{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_multiplexed_streams_all_succeed() {
    if !tool("h2load") {
        return;
    }
    let backends = backends(3).await;
    let mut args = Vec::new();
    for b in &backends {
        args.push("--backend".to_owned());
        args.push(format!("h2c://{}", b.local_addr()));
    }
    let lb = Balancer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let url = format!("http://{}/ping", lb.addr);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("h2load")
            .args(["-n", "20000", "-c", "10", "-m", "10", &url])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_else(|| panic!("no summary: {text}"));
    assert!(
        line.contains("20000 succeeded, 0 failed, 0 errored"),
        "{line}"
    );
    assert!(text.contains("status codes: 20000 2xx"), "{text}");
    let served: u64 = backends.iter().map(|b| b.requests()).sum();
    assert!(served >= 20_000, "backends served {served}");
    eprintln!("{text}");
}
