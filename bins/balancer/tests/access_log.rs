//! `--access-log`: one logfmt line per request, to a file or to standard output.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use http_body_util::Full;
use hyper::Request;
use support::*;

/// The `key=value` fields of one logfmt line (values here have no spaces; quotes are removed).
fn fields(line: &str) -> HashMap<&str, &str> {
    line.split(' ')
        .map(|field| {
            let (key, value) = field
                .split_once('=')
                .unwrap_or_else(|| panic!("{field:?} in {line:?}"));
            (key, value.trim_matches('"'))
        })
        .collect()
}

fn millis(value: &str) -> f64 {
    let (whole, fraction) = value.split_once('.').unwrap();
    assert_eq!(fraction.len(), 3, "{value}");
    format!("{whole}.{fraction}").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_one_line_with_every_field() {
    let backends = backends(2).await;
    let dir = std::env::temp_dir().join(format!("lb-access-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("access.log");
    let mut args = args_for(&backends);
    args.extend(["--access-log".to_owned(), log.to_str().unwrap().to_owned()]);
    let mut lb = Balancer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let client = client();
    let first = send(
        &client,
        Request::get(lb.url("/ping?x=1"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    let second = send(
        &client,
        Request::post(lb.url("/echo"))
            .body(Full::from("hello"))
            .unwrap(),
    )
    .await;
    let third = send(
        &client,
        Request::get(lb.url("/status/503"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    // A request the balancer answers itself (405 for CONNECT), from a client of its own.
    let refused = raw_exchange(
        lb.addr,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    );
    assert!(refused.starts_with("HTTP/1.1 405"), "{refused}");
    // A client that goes away before its answer: 499, as nginx logs it.
    {
        use std::io::Write;
        let mut gone = std::net::TcpStream::connect(lb.addr).unwrap();
        gone.write_all(b"GET /delay/2000 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        // Long enough for the balancer to have the request under way (hard to miss on a busy
        // machine), shorter than the backend's delay.
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }

    // Written out within a fraction of a second, though nothing else happens.
    let mut lines = Vec::new();
    let written = eventually(Duration::from_secs(3), async || {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        lines.len() >= 5
    })
    .await;
    assert!(written, "{lines:?}");
    assert_eq!(lines.len(), 5, "{lines:?}");
    // A query's `=` is quoted, as strict logfmt parsers want; a plain path is not.
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains(" target=\"/ping?x=1\" "))
            .count(),
        1,
        "{lines:?}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains(" target=/echo "))
            .count(),
        1
    );
    let mut by_target: HashMap<String, HashMap<&str, &str>> = HashMap::new();
    for line in &lines {
        let f = fields(line);
        assert_eq!(
            f.keys().copied().collect::<std::collections::BTreeSet<_>>(),
            [
                "backend",
                "client",
                "method",
                "status",
                "target",
                "time",
                "total_ms",
                "upstream_ms"
            ]
            .into_iter()
            .collect()
        );
        assert!(f["time"].ends_with('Z') && f["time"].len() == 24, "{line}");
        assert!(f["client"].starts_with("127.0.0.1:"), "{line}");
        by_target.insert(f["target"].to_owned(), f);
    }
    let expect = |target: &str, method: &str, status: &str, backend: &str| {
        let f = &by_target[target];
        assert_eq!(
            (f["method"], f["status"], f["backend"]),
            (method, status, backend),
            "{f:?}"
        );
        if backend == "-" {
            assert_eq!(f["upstream_ms"], "-");
        } else {
            assert!(millis(f["total_ms"]) >= millis(f["upstream_ms"]), "{f:?}");
        }
    };
    expect("/ping?x=1", "GET", "200", &first.backend());
    expect("/echo", "POST", "200", &second.backend());
    expect("/status/503", "GET", "503", &third.backend());
    expect("example.com:443", "CONNECT", "405", "-");
    expect("/delay/2000", "GET", "499", "-");

    lb.signal("TERM");
    assert!(lb.wait(Duration::from_secs(10)).success());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_without_a_file_writes_to_standard_output() {
    let backends = backends(1).await;
    let mut args = args_for(&backends);
    args.push("--access-log".to_owned());
    let lb = Balancer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    for _ in 0..3 {
        assert_eq!(get(&lb.url("/ping")).await.status, 200);
    }
    let logged = eventually(Duration::from_secs(3), async || {
        lb.stdout()
            .matches(" method=GET target=/ping status=200 ")
            .count()
            == 3
    })
    .await;
    assert!(logged, "{}", lb.stdout());
}

#[test]
fn an_access_log_that_cannot_be_opened_is_refused_by_name() {
    let (code, stderr) = run_to_exit(&["--access-log", "/nonexistent-dir/access.log"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("/nonexistent-dir/access.log"), "{stderr}");
}
