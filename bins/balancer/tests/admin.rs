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
    let mut admin = None;
    assert!(
        eventually(Duration::from_secs(5), async || {
            admin = lb
                .stderr()
                .split("admin listening addr=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok());
            admin.is_some()
        })
        .await,
        "{}",
        lb.stderr()
    );
    (lb, admin.unwrap())
}

async fn post(url: String) -> Reply {
    send(&client(), Request::post(url).body(Full::default()).unwrap()).await
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

    let drained = post(format!("http://{admin}/backends/{target}/drain")).await;
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

    let enabled = post(format!("http://{admin}/backends/{target}/enable")).await;
    assert_eq!(enabled.json()["health"], "healthy");
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(get(&lb.url("/ping")).await.backend());
    }
    assert!(seen.contains(&target), "{seen:?}");

    assert_eq!(
        post(format!("http://{admin}/backends/127.0.0.1:1/drain"))
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
