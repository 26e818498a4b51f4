//! Helpers for the balancer's black-box tests: start the real binary and real test backends on
//! 127.0.0.1 ephemeral ports, talk HTTP to them, and stop everything by PID.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
pub use lb_backend::TestBackend;

/// The balancer binary under test.
pub const BALANCER: &str = env!("CARGO_BIN_EXE_balancer");

/// A running balancer process, killed when dropped.
pub struct Balancer {
    child: Child,
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
}

impl Balancer {
    /// Starts the balancer with `args` (plus `--listen 127.0.0.1:0` unless given) and waits for its
    /// `listening on` line.
    pub fn start(args: &[&str]) -> Balancer {
        let mut cmd = Command::new(BALANCER);
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start the balancer");
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        collect(
            child.stdout.take().expect("stdout"),
            Arc::clone(&stdout),
            Some(tx),
        );
        collect(
            child.stderr.take().expect("stderr"),
            Arc::clone(&stderr),
            None,
        );
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "balancer did not print its listening line; stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        Balancer {
            child,
            addr,
            stderr,
            stdout,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The admin listener's address, read from its `admin listening addr=` log line (the
    /// balancer was started with `--admin 127.0.0.1:0`).
    pub async fn admin_addr(&self) -> SocketAddr {
        let mut admin = None;
        let found = eventually(Duration::from_secs(5), async || {
            admin = self
                .stderr()
                .split("admin listening addr=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok());
            admin.is_some()
        })
        .await;
        assert!(found, "no admin listening line: {}", self.stderr());
        admin.unwrap()
    }

    /// Waits (bounded: 10 s) until `text` has appeared `count` times in the balancer's stderr.
    pub async fn wait_for_log(&self, text: &str, count: usize) {
        let seen = eventually(Duration::from_secs(10), async || {
            self.stderr().matches(text).count() >= count
        })
        .await;
        assert!(seen, "{text:?} not logged {count} times: {}", self.stderr());
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Peak resident memory of the balancer so far, in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }

    /// Sends SIGTERM to this process (by its PID).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "balancer still running after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(
    pipe: impl Read + Send + 'static,
    into: Arc<Mutex<String>>,
    listening: Option<mpsc::Sender<SocketAddr>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Some(tx) = &listening
                && let Some(addr) = line.split("listening on ").nth(1)
                && let Ok(addr) = addr.trim().parse()
            {
                let _ = tx.send(addr);
            }
            let mut text = into.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    });
}

/// Runs the balancer to completion with `args` and returns (exit code, stderr).
pub fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(BALANCER)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the balancer");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("balancer {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    (status.code(), stderr)
}

/// Starts `n` test backends on 127.0.0.1 ephemeral ports.
pub async fn backends(n: usize) -> Vec<TestBackend> {
    let mut all = Vec::new();
    for _ in 0..n {
        all.push(
            TestBackend::start("127.0.0.1:0".parse().unwrap(), None)
                .await
                .expect("start a test backend"),
        );
    }
    all
}

/// `--backend URL` for each backend, plus fast health checks.
pub fn args_for(backends: &[TestBackend]) -> Vec<String> {
    let mut args = Vec::new();
    for b in backends {
        args.push("--backend".to_owned());
        args.push(b.url());
    }
    args
}

/// A keep-alive HTTP client (HTTP/1.1).
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn backend(&self) -> String {
        self.headers
            .get("x-backend-id")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Sends `request` with `client` and reads the whole response (bounded: 30 s).
pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Reply {
    let exchange = async {
        let response = client.request(request).await.expect("request failed");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("read body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("response within 30 s")
}

/// POST an empty body to `url` on a fresh client.
pub async fn post(url: &str) -> Reply {
    send(&client(), Request::post(url).body(Full::default()).unwrap()).await
}

/// GET `url` on a fresh client.
pub async fn get(url: &str) -> Reply {
    send(&client(), Request::get(url).body(Full::default()).unwrap()).await
}

/// Writes `raw` bytes on a new connection to `addr` and returns everything read until the peer
/// closes or 5 s pass.
pub fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(raw).expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls `check` every 50 ms until it holds or `within` passes; returns whether it held.
pub async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
