//! Starting and stopping: bad arguments, a busy port, `--demo`, and a graceful SIGTERM.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::Request;
use support::*;

#[test]
fn every_kind_of_bad_argument_exits_2_and_names_the_value() {
    let dir = std::env::temp_dir().join(format!("lb-lifecycle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad_config = dir.join("bad.toml");
    std::fs::write(
        &bad_config,
        "listen = \"127.0.0.1:0\"\nflavour = \"vanilla\"\n",
    )
    .unwrap();
    let bad_config = bad_config.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--frobnicate"], "--frobnicate"),
        (&["--backend", "not a url"], "not a url"),
        (&["--backend", "http://"], "http://"),
        (&["--backend", "ftp://127.0.0.1:21"], "ftp"),
        (&["--backend", "https://127.0.0.1:443"], "https"),
        (&["--backend", "http://127.0.0.1:1,weight=0"], "weight"),
        (&["--health-interval", "5 parsecs"], "5 parsecs"),
        (&["--health-timeout", "soon"], "soon"),
        (&["--connect-timeout", "-1s"], "-1s"),
        (&["--response-timeout", "0s"], "--response-timeout"),
        (&["--strategy", "fastest-please"], "fastest-please"),
        (&["--listen", "localhost:port"], "localhost:port"),
        (&["--health-path", "health"], "health"),
        (&["--request-counter-param", "a&b"], "a&b"),
        (
            &[
                "--backend",
                "http://127.0.0.1:1",
                "--backend",
                "http://127.0.0.1:1",
            ],
            "127.0.0.1:1",
        ),
        (
            &["--config", "/nonexistent/balancer.toml"],
            "/nonexistent/balancer.toml",
        ),
        (&["--config", bad_config], "flavour"),
    ];
    for (args, named) in cases {
        let (code, stderr) = run_to_exit(args);
        assert_eq!(code, Some(2), "{args:?} exited {code:?}: {stderr}");
        assert!(
            stderr.contains(named),
            "{args:?}: stderr does not name {named:?}: {stderr}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_busy_port_is_a_clear_nonzero_exit() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = run_to_exit(&["--listen", &addr, "--backend", "http://127.0.0.1:1"]);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains(&addr) && stderr.to_lowercase().contains("in use"),
        "{stderr}"
    );
}

/// Each worker's listener shares the port with the others (`SO_REUSEPORT`); a second balancer
/// must not join them and take part of the first one's connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_another_balancer_listens_on_is_refused() {
    let backends = backends(1).await;
    let first = Balancer::start(
        &args_for(&backends)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let addr = first.addr.to_string();
    for workers in ["1", "2"] {
        let (code, stderr) = run_to_exit(&[
            "--listen",
            &addr,
            "--workers",
            workers,
            "--backend",
            "http://127.0.0.1:1",
        ]);
        assert_eq!(code, Some(1), "--workers {workers}: {stderr}");
        assert!(
            stderr.contains(&addr) && stderr.to_lowercase().contains("in use"),
            "{stderr}"
        );
    }
    assert_eq!(get(&first.url("/ping")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_from_its_own_backends_and_says_how_to_try_it() {
    let lb = Balancer::start(&["--demo"]);
    let mut ids = std::collections::HashSet::new();
    for _ in 0..3 {
        let reply = get(&lb.url("/ping")).await;
        assert_eq!(reply.status, 200);
        assert!(reply.text().contains("pong"));
        ids.insert(reply.backend());
    }
    assert_eq!(ids.len(), 3);
    assert!(
        lb.stdout()
            .contains(&format!("curl http://{}/ping", lb.addr)),
        "{}",
        lb.stdout()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_request_in_flight_then_exits_0() {
    let backends = backends(1).await;
    let mut lb = Balancer::start(&["--backend", &backends[0].url()]);
    let client = client();
    let idle = client.clone();
    // An idle keep-alive connection, to be closed by the shutdown.
    assert_eq!(
        send(
            &idle,
            Request::get(lb.url("/ping")).body(Full::default()).unwrap()
        )
        .await
        .status,
        200
    );

    let url = lb.url("/delay/800");
    let in_flight = tokio::spawn(async move {
        send(&client, Request::get(url).body(Full::default()).unwrap()).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let signalled = Instant::now();
    lb.signal("TERM");

    // It stops accepting at once...
    let refused = async {
        loop {
            if tokio::net::TcpStream::connect(lb.addr).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(2), refused)
        .await
        .expect("listener closed after SIGTERM");
    // ...the request in flight completes...
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200);
    // ...and the process exits 0 once it has, not after a long grace period.
    let status = lb.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "stderr: {}", lb.stderr());
    assert!(signalled.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_still_running_when_the_grace_period_ends_is_cut_off() {
    let backends = backends(1).await;
    let mut lb = Balancer::start(&["--backend", &backends[0].url(), "--grace-period", "300ms"]);
    let url = lb.url("/delay/5000");
    let in_flight = tokio::spawn(async move {
        let started = Instant::now();
        let outcome = client()
            .request(Request::get(url).body(Full::default()).unwrap())
            .await;
        (outcome.map(|r| r.status()), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let signalled = Instant::now();
    lb.signal("TERM");
    let status = lb.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "stderr: {}", lb.stderr());
    let exited_after = signalled.elapsed();
    assert!(
        exited_after >= Duration::from_millis(250) && exited_after < Duration::from_secs(3),
        "the grace period was not what ended it: {exited_after:?}"
    );
    // The client is not left waiting for the backend's 5 s: its connection was closed.
    let (outcome, waited) = tokio::time::timeout(Duration::from_secs(4), in_flight)
        .await
        .expect("the cut-off request ends with the balancer")
        .unwrap();
    assert!(outcome.is_err(), "{outcome:?}");
    assert!(waited < Duration::from_secs(4), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_an_idle_balancer_with_0() {
    let backends = backends(1).await;
    let mut lb = Balancer::start(&["--backend", &backends[0].url()]);
    assert_eq!(get(&lb.url("/ping")).await.status, 200);
    lb.signal("INT");
    assert_eq!(lb.wait(Duration::from_secs(10)).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listening_line_comes_after_the_first_probe_round() {
    let backends = backends(2).await;
    backends[0].set_healthy(false);
    let lb = Balancer::start(&[
        "--backend",
        &backends[0].url(),
        "--backend",
        &backends[1].url(),
        "--health-interval",
        "1h",
    ]);
    // With hourly probes, only the round before listening can have marked the first one down.
    for _ in 0..4 {
        assert_eq!(get(&lb.url("/ping")).await.backend(), backends[1].id());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_right_after_the_listening_line_is_still_graceful() {
    let backends = backends(1).await;
    for name in ["TERM", "INT", "TERM", "INT", "TERM", "INT"] {
        let mut lb = Balancer::start(&["--backend", &backends[0].url()]);
        lb.signal(name);
        assert_eq!(
            lb.wait(Duration::from_secs(10)).code(),
            Some(0),
            "SIG{name}: {}",
            lb.stderr()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_websockets_once_requests_are_done() {
    use futures_util::StreamExt;
    let backends = backends(1).await;
    let mut lb = Balancer::start(&["--backend", &backends[0].url()]);
    let stream = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", lb.addr), stream)
        .await
        .unwrap();
    lb.signal("TERM");
    assert_eq!(lb.wait(Duration::from_secs(10)).code(), Some(0));
    // The tunnel was closed, not left behind: the client sees the end of the stream.
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("closed");
    assert!(!matches!(
        end,
        Some(Ok(tokio_tungstenite::tungstenite::Message::Text(_)))
    ));
}
