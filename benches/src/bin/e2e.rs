//! End-to-end benchmark: upstreams, a proxy and a load generator on loopback.
//!
//! ```text
//! cargo build --release
//! cargo run --release -p lb-benches --bin e2e -- [--targets ours,ours-access-log,ours@PATH,haproxy,nginx]
//!     [--rounds 3]
//!     [--duration 10] [--connections 50,5] [--pin shared|split|none] [--idle N]
//! ```
//!
//! For each round and each target (order rotated every round) it starts the proxy in front of
//! three upstreams, warms it up, runs `wrk -t1 -cC -dDs --latency GET /ping` for each connection
//! count, and records requests/s, p50/p99 latency, the proxy's CPU time per request (user +
//! system of its process tree, from /proc), its system calls per request (with `perf`, when it
//! can count them) and its peak RSS. It prints the medians as a markdown table with ratios to
//! HAProxy. With `--idle N` it also opens N keep-alive connections to each proxy (one request
//! each, then held) and reports its memory per idle connection.
//!
//! Upstreams are one nginx with three server blocks when nginx is installed (the cheapest
//! upstream, as in the project's peer harness), else three `target/release/backend`. HAProxy and
//! nginx as proxies are measured when installed, with configs equivalent to ours: round robin,
//! keep-alive to the upstreams, active health checks for HAProxy. Pinning (`--pin`): `shared`
//! (default) puts everything on CPU 0, the steadiest mode on small VMs; `split` gives the proxy
//! CPU 1 and the load CPU 0; `none` does not pin.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const UPSTREAMS: [u16; 3] = [19301, 19302, 19303];
const PROXY_PORT: u16 = 19310;

type Error = Box<dyn std::error::Error>;

struct Options {
    targets: Vec<String>,
    rounds: usize,
    duration: u32,
    connections: Vec<u32>,
    pin: String,
    idle: usize,
}

fn options() -> Result<Options, Error> {
    let mut o = Options {
        targets: vec!["ours".into(), "haproxy".into(), "nginx".into()],
        rounds: 3,
        duration: 10,
        connections: vec![50, 5],
        pin: "shared".into(),
        idle: 0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--targets" => o.targets = value()?.split(',').map(str::to_owned).collect(),
            "--rounds" => o.rounds = value()?.parse()?,
            "--duration" => o.duration = value()?.parse()?,
            "--connections" => {
                o.connections = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--pin" => o.pin = value()?,
            "--idle" => o.idle = value()?.parse()?,
            "-h" | "--help" => {
                println!("see the doc comment of benches/src/bin/e2e.rs, or benches/README.md");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    Ok(o)
}

fn main() -> Result<(), Error> {
    let o = options()?;
    let root = workspace_root();
    let dir = std::env::temp_dir().join(format!("lb-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for tool in ["wrk"] {
        if !installed(tool) {
            return Err(format!("{tool} is required (apt-get install -y wrk)").into());
        }
    }
    let ours = root.join("target/release/balancer");
    if !ours.exists() {
        return Err("build first: cargo build --release".into());
    }
    let targets: Vec<String> = o
        .targets
        .iter()
        .filter(|t| match t.as_str() {
            "ours" | "ours-access-log" => true,
            other if other.starts_with("ours@") => Path::new(&other["ours@".len()..]).exists(),
            "haproxy" | "nginx" => {
                let found = installed(t);
                if !found {
                    eprintln!("{t} is not installed: skipped");
                }
                found
            }
            other => {
                eprintln!("unknown target {other}: skipped");
                false
            }
        })
        .cloned()
        .collect();
    let (proxy_cpus, load_cpus) = match o.pin.as_str() {
        "shared" => (Some("0"), Some("0")),
        "split" => (Some("1"), Some("0")),
        _ => (None, None),
    };

    let _upstreams = Upstreams::start(&root, &dir, load_cpus)?;
    let mut results: BTreeMap<(String, u32), Vec<Run>> = BTreeMap::new();
    let mut idle: BTreeMap<String, f64> = BTreeMap::new();
    for round in 0..o.rounds {
        let mut order = targets.clone();
        order.rotate_left(round % targets.len().max(1));
        for target in &order {
            let mut proxy = Proxy::start(target, &ours, &dir, proxy_cpus, 4000)?;
            wrk(load_cpus, 50, 2)?; // warm-up, not recorded
            for &c in &o.connections {
                let run = proxy.measure(load_cpus, c, o.duration)?;
                eprintln!(
                    "round {}/{} {target:8} -c{c:<3} {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms  {:.2} us/req  {} syscalls/req",
                    round + 1,
                    o.rounds,
                    run.rps,
                    run.p50_ms,
                    run.p99_ms,
                    run.cpu_us_per_req,
                    run.syscalls_per_req
                        .map_or("?".into(), |s| format!("{s:.2}")),
                );
                results.entry((target.clone(), c)).or_default().push(run);
            }
            proxy.stop();
        }
    }
    if o.idle > 0 {
        for target in &targets {
            // HAProxy reserves about two descriptors per connection it may hold.
            let maxconn = u32::try_from(o.idle + 100).unwrap_or(u32::MAX);
            let mut proxy = Proxy::start(target, &ours, &dir, proxy_cpus, maxconn)?;
            idle.insert(target.clone(), proxy.idle_memory(o.idle)?);
            proxy.stop();
        }
    }
    report(&o, &targets, &results, &idle);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn installed(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn pinned(cpus: Option<&str>, program: &str) -> Command {
    match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus, program]);
            c
        }
        None => Command::new(program),
    }
}

fn wait_for_port(port: u16) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("nothing listens on port {port}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Three upstreams answering `GET /ping` and `GET /health`.
struct Upstreams(Vec<Child>);

impl Upstreams {
    fn start(root: &Path, dir: &Path, cpus: Option<&str>) -> Result<Self, Error> {
        let children = if installed("nginx") {
            let servers: String = UPSTREAMS
                .iter()
                .map(|p| {
                    format!(
                        "server {{ listen 127.0.0.1:{p}; location /ping {{ return 200 \"pong\\n\"; }} \
                         location /health {{ return 200 \"ok\\n\"; }} }}\n"
                    )
                })
                .collect();
            let conf = dir.join("upstream.conf");
            std::fs::write(
                &conf,
                format!(
                    "worker_processes 1; daemon off; master_process off; pid {0}/upstream.pid; error_log {0}/upstream.err warn;\n\
                     events {{ worker_connections 20000; }}\n\
                     http {{ access_log off; keepalive_requests 100000000;\n{servers}}}\n",
                    dir.display()
                ),
            )?;
            vec![
                pinned(cpus, "nginx")
                    .arg("-c")
                    .arg(&conf)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?,
            ]
        } else {
            let backend = root.join("target/release/backend");
            UPSTREAMS
                .iter()
                .map(|p| {
                    pinned(cpus, backend.to_str().unwrap_or("backend"))
                        .args(["--bind", &format!("127.0.0.1:{p}")])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                })
                .collect::<Result<_, _>>()?
        };
        for p in UPSTREAMS {
            wait_for_port(p)?;
        }
        Ok(Upstreams(children))
    }
}

impl Drop for Upstreams {
    fn drop(&mut self) {
        for child in &mut self.0 {
            terminate(child);
        }
    }
}

/// SIGTERM, then SIGKILL if it is still there after 10 s; reaps it either way.
fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// One measured run.
#[derive(Debug, Clone)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_req: f64,
    syscalls_per_req: Option<f64>,
    peak_rss_kib: u64,
}

struct Proxy {
    child: Child,
}

impl Proxy {
    fn start(
        target: &str,
        ours: &Path,
        dir: &Path,
        cpus: Option<&str>,
        maxconn: u32,
    ) -> Result<Self, Error> {
        let listen = format!("127.0.0.1:{PROXY_PORT}");
        let mut cmd = match target {
            ours_target if ours_target.starts_with("ours") => {
                // `ours@PATH` measures another build of the balancer (an older commit, say).
                let binary = ours_target.strip_prefix("ours@").map_or(ours, Path::new);
                let mut c = pinned(cpus, binary.to_str().unwrap_or("balancer"));
                c.args(["--listen", &listen, "--workers", "1"]);
                for p in UPSTREAMS {
                    c.args(["--backend", &format!("http://127.0.0.1:{p}")]);
                }
                if target == "ours-access-log" {
                    c.arg("--access-log").arg(dir.join("access.log"));
                }
                c
            }
            "haproxy" => {
                let servers: String = UPSTREAMS
                    .iter()
                    .enumerate()
                    .map(|(i, p)| format!("  server u{i} 127.0.0.1:{p} check inter 1s\n"))
                    .collect();
                let conf = dir.join("haproxy.cfg");
                std::fs::write(
                    &conf,
                    format!(
                        "global\n  nbthread 1\n  maxconn {maxconn}\ndefaults\n  mode http\n  timeout connect 1s\n  \
                         timeout client 30s\n  timeout server 30s\n  http-reuse always\n\
                         frontend fe\n  bind {listen}\n  default_backend be\n\
                         backend be\n  balance roundrobin\n  option httpchk GET /health\n{servers}"
                    ),
                )?;
                let mut c = pinned(cpus, "haproxy");
                c.arg("-f").arg(conf).arg("-db");
                c
            }
            "nginx" => {
                let servers: String = UPSTREAMS
                    .iter()
                    .map(|p| format!("server 127.0.0.1:{p};"))
                    .collect();
                let conf = dir.join("proxy-nginx.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "worker_processes 1; daemon off; master_process off; pid {0}/proxy.pid; error_log {0}/proxy.err warn;\n\
                         events {{ worker_connections 20000; }}\n\
                         http {{ access_log off; keepalive_requests 100000000;\n\
                         upstream up {{ {servers} keepalive 64; }}\n\
                         server {{ listen {listen}; location / {{ proxy_pass http://up; \
                         proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}\n",
                        dir.display()
                    ),
                )?;
                let mut c = pinned(cpus, "nginx");
                c.arg("-c").arg(conf);
                c
            }
            other => return Err(format!("unknown target {other}").into()),
        };
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        wait_for_port(PROXY_PORT)?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(Proxy { child })
    }

    fn measure(
        &mut self,
        load_cpus: Option<&str>,
        connections: u32,
        seconds: u32,
    ) -> Result<Run, Error> {
        let pid = self.child.id();
        let perf = installed("perf").then(|| {
            Command::new("perf")
                .args([
                    "stat",
                    "-e",
                    "raw_syscalls:sys_enter",
                    "-x",
                    ",",
                    "-p",
                    &pid.to_string(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .ok()
        });
        let cpu_before = cpu_ticks(pid);
        let out = wrk(load_cpus, connections, seconds)?;
        let cpu_after = cpu_ticks(pid);
        let syscalls = perf.flatten().and_then(|mut p| {
            let _ = Command::new("kill")
                .args(["-INT", &p.id().to_string()])
                .status();
            let mut err = String::new();
            p.stderr.take()?.read_to_string(&mut err).ok()?;
            let _ = p.wait();
            err.lines()
                .find(|l| l.contains("sys_enter"))?
                .split(',')
                .next()?
                .trim()
                .parse::<f64>()
                .ok()
        });
        let requests = out.requests.max(1) as f64;
        let ticks = sysconf_clk_tck();
        Ok(Run {
            rps: out.rps,
            p50_ms: out.p50_ms,
            p99_ms: out.p99_ms,
            cpu_us_per_req: (cpu_after - cpu_before) as f64 / ticks * 1e6 / requests,
            syscalls_per_req: syscalls.map(|s| s / requests),
            peak_rss_kib: peak_rss_kib(pid),
        })
    }

    /// Opens `n` keep-alive connections, one request each, holds them, and returns the proxy's
    /// memory per idle connection in KiB.
    fn idle_memory(&mut self, n: usize) -> Result<f64, Error> {
        let pid = self.child.id();
        let before = rss_kib(pid);
        let addr: SocketAddr = ([127, 0, 0, 1], PROXY_PORT).into();
        let mut held = Vec::with_capacity(n);
        for _ in 0..n {
            let mut s = TcpStream::connect(addr)?;
            s.write_all(b"GET /ping HTTP/1.1\r\nHost: bench\r\n\r\n")?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut reply = BufReader::new(s.try_clone()?);
            let mut status = String::new();
            reply.read_line(&mut status)?;
            if !status.contains(" 200 ") {
                return Err(format!("idle connection got {status:?}").into());
            }
            held.push(s);
        }
        std::thread::sleep(Duration::from_secs(1));
        let after = rss_kib(pid);
        drop(held);
        Ok((after.saturating_sub(before)) as f64 / n as f64)
    }

    fn stop(mut self) {
        terminate(&mut self.child);
    }
}

struct WrkOut {
    rps: f64,
    requests: u64,
    p50_ms: f64,
    p99_ms: f64,
}

fn wrk(cpus: Option<&str>, connections: u32, seconds: u32) -> Result<WrkOut, Error> {
    let out = pinned(cpus, "wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            &format!("http://127.0.0.1:{PROXY_PORT}/ping"),
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        return Err(format!("wrk saw errors:\n{text}").into());
    }
    let field = |prefix: &str| {
        text.lines().find_map(|l| {
            l.trim()
                .strip_prefix(prefix)
                .map(str::trim)
                .map(str::to_owned)
        })
    };
    let rps = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .ok_or("no Requests/sec")?;
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or("no request count")?;
    let millis = |v: Option<String>| -> f64 {
        let v = v.unwrap_or_default();
        if let Some(us) = v.strip_suffix("us") {
            us.parse::<f64>().unwrap_or(f64::NAN) / 1000.0
        } else if let Some(ms) = v.strip_suffix("ms") {
            ms.parse().unwrap_or(f64::NAN)
        } else if let Some(s) = v.strip_suffix('s') {
            s.parse::<f64>().unwrap_or(f64::NAN) * 1000.0
        } else {
            f64::NAN
        }
    };
    Ok(WrkOut {
        rps,
        requests,
        p50_ms: millis(field("50%")),
        p99_ms: millis(field("99%")),
    })
}

/// User + system CPU ticks of `pid` and its children and threads.
fn cpu_ticks(pid: u32) -> u64 {
    let mut total = 0;
    for p in std::iter::once(pid).chain(children(pid)) {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
            let after = stat.rsplit(')').next().unwrap_or_default();
            let f: Vec<&str> = after.split_whitespace().collect();
            // Fields 14-17 of stat (utime, stime, cutime, cstime) are 11..=14 after the ')'.
            total += f
                .get(11..15)
                .map_or(0, |v| v.iter().filter_map(|x| x.parse::<u64>().ok()).sum());
        }
    }
    total
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::iter::once(pid)
        .chain(children(pid))
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .sum()
}

fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

fn sysconf_clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn report(
    o: &Options,
    targets: &[String],
    results: &BTreeMap<(String, u32), Vec<Run>>,
    idle: &BTreeMap<String, f64>,
) {
    println!(
        "\n# e2e: wrk -t1 -d{}s GET /ping, {} round(s), --pin {}, one worker/thread per proxy, medians\n",
        o.duration, o.rounds, o.pin
    );
    for &c in &o.connections {
        println!("## {c} connections\n");
        println!(
            "| proxy | req/s | min–max | ÷ HAProxy | p50 ms | p99 ms | CPU µs/req | syscalls/req | peak RSS MiB |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        let hap = results
            .get(&("haproxy".to_owned(), c))
            .map(|r| median(r.iter().map(|r| r.rps).collect()));
        for t in targets {
            let Some(runs) = results.get(&(t.clone(), c)) else {
                continue;
            };
            let rps = median(runs.iter().map(|r| r.rps).collect());
            let min = runs.iter().map(|r| r.rps).fold(f64::INFINITY, f64::min);
            let max = runs.iter().map(|r| r.rps).fold(0.0, f64::max);
            let syscalls: Vec<f64> = runs.iter().filter_map(|r| r.syscalls_per_req).collect();
            println!(
                "| {t} | {rps:.0} | {min:.0}–{max:.0} | {} | {:.3} | {:.3} | {:.2} | {} | {:.1} |",
                hap.map_or("—".into(), |h| format!("{:.2}", rps / h)),
                median(runs.iter().map(|r| r.p50_ms).collect()),
                median(runs.iter().map(|r| r.p99_ms).collect()),
                median(runs.iter().map(|r| r.cpu_us_per_req).collect()),
                if syscalls.is_empty() {
                    "—".into()
                } else {
                    format!("{:.2}", median(syscalls))
                },
                runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0) as f64 / 1024.0,
            );
        }
        println!();
    }
    if !idle.is_empty() {
        println!("## {} idle keep-alive client connections\n", o.idle);
        println!("| proxy | KiB per idle connection | MiB for all |");
        println!("|---|---:|---:|");
        for (t, kib) in idle {
            println!("| {t} | {kib:.1} | {:.0} |", kib * o.idle as f64 / 1024.0);
        }
        println!();
    }
}
