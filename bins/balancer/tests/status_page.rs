//! The admin status page, in a real headless browser: Debian's chromium, driven over the
//! DevTools protocol (a WebSocket) from this test.
//!
//! Without chromium the test says so and passes, unless `LB_REQUIRE_LOAD_TOOLS=1` (as in CI,
//! which installs it), where a missing browser fails it. The page's screenshot is written to
//! `target/tmp/status-page-*.png` for a human to look at.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::*;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// The browser's executable, if one is installed.
fn browser() -> Option<String> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| {
            Command::new("sh")
                .args(["-c", &format!("command -v {name}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(str::to_owned);
    if found.is_none() {
        assert!(
            std::env::var("LB_REQUIRE_LOAD_TOOLS").is_err(),
            "chromium is not installed and LB_REQUIRE_LOAD_TOOLS is set"
        );
        eprintln!("SKIPPED: chromium is not installed (apt-get install -y chromium)");
    }
    found
}

/// A headless browser with a DevTools endpoint on a free port, killed (by its PID) when dropped.
struct Browser {
    child: Child,
    profile: PathBuf,
    devtools: String,
}

impl Browser {
    fn start(executable: &str) -> Browser {
        let profile = std::env::temp_dir().join(format!("lb-chromium-{}", std::process::id()));
        let mut child = Command::new(executable)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,480",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let Ok(ws) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not print its DevTools address");
        };
        let devtools = ws
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        Browser {
            child,
            profile,
            devtools,
        }
    }

    /// A DevTools session on the browser's first page.
    async fn page(&self) -> Page {
        let targets = get(&format!("http://{}/json/list", self.devtools))
            .await
            .json();
        let url = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_owned();
        let stream = TcpStream::connect(&self.devtools).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(url, stream)
            .await
            .expect("DevTools WebSocket");
        Page { ws, next_id: 0 }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

struct Page {
    ws: WebSocketStream<TcpStream>,
    next_id: u64,
}

impl Page {
    /// Sends one DevTools command and returns its result (events on the way are skipped).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(Message::text(command.to_string()))
            .await
            .unwrap();
        let answer = async {
            while let Some(message) = self.ws.next().await {
                if let Message::Text(text) = message.unwrap() {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    if value["id"] == id {
                        assert!(value.get("error").is_none(), "{method}: {value}");
                        return value["result"].clone();
                    }
                }
            }
            panic!("DevTools connection closed");
        };
        tokio::time::timeout(Duration::from_secs(30), answer)
            .await
            .unwrap_or_else(|_| panic!("no answer to {method}"))
    }

    /// The backends table as the page shows it: `(backend, state)` per row.
    async fn rows(&mut self) -> Vec<(String, String)> {
        let expression = "JSON.stringify([...document.querySelectorAll('#backends tr')]\
            .map(r => [r.cells[0].textContent, r.querySelector('.state').textContent]))";
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        serde_json::from_str(result["result"]["value"].as_str().unwrap()).unwrap()
    }

    async fn screenshot(&mut self, name: &str) -> PathBuf {
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&path, png).unwrap();
        path
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_every_backend_and_follows_a_backend_going_down() {
    let Some(executable) = browser() else { return };
    let backends = backends(3).await;
    let mut args = args_for(&backends);
    args.extend(["--admin", "127.0.0.1:0", "--health-interval", "200ms"].map(String::from));
    let lb = Balancer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let admin = lb.admin_addr().await;
    for _ in 0..30 {
        assert_eq!(get(&lb.url("/ping")).await.status, 200);
    }

    let browser = Browser::start(&executable);
    let mut page = browser.page().await;
    page.call(
        "Page.navigate",
        json!({ "url": format!("http://{admin}/") }),
    )
    .await;
    let ids: Vec<String> = backends.iter().map(|b| b.id().to_owned()).collect();
    let all_healthy = ids
        .iter()
        .map(|id| (id.clone(), "healthy".to_owned()))
        .collect::<Vec<_>>();
    let mut rows = Vec::new();
    let loaded = eventually(Duration::from_secs(15), async || {
        rows = page.rows().await;
        rows == all_healthy
    })
    .await;
    assert!(loaded, "the page shows {rows:?}");

    // Live request rates: traffic while the page is open shows up in its req/s column.
    let url = lb.url("/ping");
    let traffic = tokio::spawn(async move {
        let client = client();
        let until = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < until {
            let request = hyper::Request::get(&url).body(Default::default()).unwrap();
            assert_eq!(send(&client, request).await.status, 200);
        }
    });
    let mut rates = Vec::new();
    let live = eventually(Duration::from_secs(3), async || {
        let result = page
            .call(
                "Runtime.evaluate",
                json!({
                    "expression": "JSON.stringify([...document.querySelectorAll('#backends td.rate')].map(c => Number(c.textContent)))",
                    "returnByValue": true,
                }),
            )
            .await;
        rates = serde_json::from_str(result["result"]["value"].as_str().unwrap()).unwrap();
        rates.len() == 3 && rates.iter().all(|&r: &f64| r > 0.0)
    })
    .await;
    assert!(live, "request rates on the page: {rates:?}");
    page.screenshot("status-page-healthy.png").await;
    traffic.await.unwrap();

    // The same page, not reloaded, follows the backend going down.
    backends[1].set_healthy(false);
    let mut expected = all_healthy.clone();
    expected[1].1 = "unhealthy".to_owned();
    let followed = eventually(Duration::from_secs(10), async || {
        rows = page.rows().await;
        rows == expected
    })
    .await;
    assert!(followed, "the page shows {rows:?}");
    let summary = page
        .call(
            "Runtime.evaluate",
            json!({ "expression": "document.getElementById('summary').textContent", "returnByValue": true }),
        )
        .await;
    let summary = summary["result"]["value"].as_str().unwrap().to_owned();
    assert!(
        summary.starts_with("2 of 3 backends taking traffic"),
        "{summary}"
    );
    let path = page.screenshot("status-page-one-down.png").await;
    eprintln!("screenshot: {}", path.display());
}
