//! Every --strategy through the real binary, the distribution read from x-backend-id.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;

use http_body_util::Full;
use hyper::Request;
use support::*;

fn start(backends: &[TestBackend], weights: &[u32], extra: &[&str]) -> Balancer {
    let mut args = Vec::new();
    for (b, w) in backends
        .iter()
        .zip(weights.iter().chain(std::iter::repeat(&1)))
    {
        args.push("--backend".to_owned());
        args.push(format!("{},weight={w}", b.url()));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    Balancer::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Which backend answers each of `n` sequential GETs of `path` with `headers`.
async fn order(lb: &Balancer, path: &str, n: usize, headers: &[(&str, &str)]) -> Vec<String> {
    let client = client();
    let mut seen = Vec::new();
    for _ in 0..n {
        let mut request = Request::get(lb.url(path));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let reply = send(&client, request.body(Full::default()).unwrap()).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        seen.push(reply.backend());
    }
    seen
}

fn counts(order: &[String]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for id in order {
        *counts.entry(id.clone()).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_interleaves_by_weight() {
    let b = backends(3).await;
    let lb = start(&b, &[5, 1, 1], &["--strategy", "weighted-round-robin"]);
    let seen = order(&lb, "/ping", 14, &[]).await;
    let letters: String = seen
        .iter()
        .map(|id| {
            if id == b[0].id() {
                'a'
            } else if id == b[1].id() {
                'b'
            } else {
                'c'
            }
        })
        .collect();
    assert_eq!(letters, "aabacaaaabacaa");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_avoids_the_backend_with_requests_in_flight() {
    let b = backends(2).await;
    let lb = start(&b, &[], &["--strategy", "least-connections"]);
    // Nothing in flight: exactly round robin.
    let seen = counts(&order(&lb, "/ping", 10, &[]).await);
    assert!(seen.values().all(|&n| n == 5), "{seen:?}");
    // Two slow requests in flight (one on each), then a third on whichever: now one backend
    // has two and the other one, and every quick request goes to the one with one.
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let url = lb.url("/delay/1500");
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let quick = order(&lb, "/ping", 10, &[]).await;
    let first = quick[0].clone();
    assert!(quick.iter().all(|id| *id == first), "{quick:?}");
    for s in slow {
        assert_eq!(s.await.unwrap().status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_of_two_spreads_over_every_backend() {
    let b = backends(3).await;
    let lb = start(&b, &[], &["--strategy", "power-of-two", "--seed", "7"]);
    let seen = counts(&order(&lb, "/ping", 300, &[]).await);
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|&n| n >= 40), "{seen:?}");
    // With peak EWMA, a backend is preferred once its measured latency compares well: a backend
    // still on the 30 ms default may wait while the others answer in well under a millisecond.
    let lb = start(
        &b,
        &[],
        &[
            "--strategy",
            "power-of-two",
            "--load",
            "peak-ewma",
            "--seed",
            "7",
        ],
    );
    let seen = counts(&order(&lb, "/ping", 300, &[]).await);
    assert_eq!(seen.values().sum::<usize>(), 300);
    assert!(seen.len() >= 2, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_with_a_seed_spreads_by_weight() {
    let b = backends(2).await;
    let lb = start(&b, &[3, 1], &["--strategy", "random", "--seed", "42"]);
    let seen = counts(&order(&lb, "/ping", 400, &[]).await);
    let heavy = seen.get(b[0].id()).copied().unwrap_or(0);
    // 300 expected, sigma ~8.7.
    assert!((255..345).contains(&heavy), "{seen:?}");
}

/// The path and headers of user `n`'s request.
type KeyedRequest = fn(usize) -> (String, Vec<(&'static str, String)>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_each_key_on_one_backend() {
    let b = backends(4).await;
    let cases: &[(&[&str], KeyedRequest)] = &[
        (&["--hash-key", "header:x-user"], |u| {
            ("/echo".into(), vec![("x-user", format!("user-{u}"))])
        }),
        (&["--hash-key", "cookie:session"], |u| {
            (
                "/echo".into(),
                vec![("cookie", format!("a=1; session=s{u}"))],
            )
        }),
        (&["--hash-key", "query:uid"], |u| {
            (format!("/echo?uid={u}"), vec![])
        }),
        (&["--hash-key", "path"], |u| (format!("/echo/{u}"), vec![])),
    ];
    for (flags, request) in cases {
        let mut args = vec!["--strategy", "consistent-hash"];
        args.extend_from_slice(flags);
        let lb = start(&b, &[], &args);
        let mut home: HashMap<usize, String> = HashMap::new();
        for round in 0..3 {
            for user in 0..40 {
                let (path, headers) = request(user);
                let headers: Vec<(&str, &str)> =
                    headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let id = order(&lb, &path, 1, &headers).await.remove(0);
                if round == 0 {
                    home.insert(user, id);
                } else {
                    assert_eq!(home[&user], id, "{flags:?}: user {user} moved");
                }
            }
        }
        let spread = counts(&home.values().cloned().collect::<Vec<_>>());
        assert!(spread.len() >= 3, "{flags:?}: 40 keys on {spread:?}");
    }
    // By client address (the default key): one client, one backend.
    let lb = start(&b, &[], &["--strategy", "consistent-hash"]);
    let seen = counts(&order(&lb, "/ping", 20, &[]).await);
    assert_eq!(seen.len(), 1, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_moves_only_the_keys_of_a_backend_that_goes_down() {
    let b = backends(4).await;
    let lb = start(
        &b,
        &[],
        &[
            "--strategy",
            "consistent-hash",
            "--hash-key",
            "header:x-user",
            "--health-interval",
            "100ms",
        ],
    );
    let home = |lb: &Balancer| {
        let lb_url = lb.url("/ping");
        async move {
            let client = client();
            let mut home = Vec::new();
            for user in 0..60 {
                let request = Request::get(&lb_url)
                    .header("x-user", format!("u{user}"))
                    .body(Full::default())
                    .unwrap();
                home.push(send(&client, request).await.backend());
            }
            home
        }
    };
    let before = home(&lb).await;
    let down = b[1].id().to_owned();
    b[1].set_healthy(false);
    assert!(
        eventually(std::time::Duration::from_secs(3), async || !home(&lb)
            .await
            .contains(&down))
        .await
    );
    let after = home(&lb).await;
    for (user, (was, is)) in before.iter().zip(&after).enumerate() {
        if *was != down {
            assert_eq!(was, is, "user {user} moved though its backend stayed up");
        }
    }
}

#[test]
fn bad_strategy_options_exit_2() {
    for (args, named) in [
        (&["--strategy", "fastest"][..], "fastest"),
        (&["--load", "vibes"], "vibes"),
        (&["--hash-key", "body"], "body"),
        (&["--hash-key", "header:bad header"], "bad header"),
        (&["--hash-bounded-load", "1"], "1"),
        (&["--hash-bounded-load", "lots"], "lots"),
    ] {
        let (code, stderr) = run_to_exit(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
}
