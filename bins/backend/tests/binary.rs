//! The `backend` binary: its command line, its listening line, and SIGTERM/SIGINT.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

const BACKEND: &str = env!("CARGO_BIN_EXE_backend");
const WAIT: Duration = Duration::from_secs(10);

/// The child we started, killed (by its own PID, through `Child::kill`) if a test fails early.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn spawn(args: &[&str]) -> Running {
        let mut child = Command::new(BACKEND)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn backend");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines }
    }

    /// The address from the `listening on <ip:port>` line, waiting at most [`WAIT`].
    fn listening_line(&self) -> (String, SocketAddr) {
        let line = self
            .lines
            .recv_timeout(WAIT)
            .expect("a listening line within 10 s");
        let addr = line
            .rsplit_once("listening on ")
            .map(|(_, addr)| addr)
            .expect("`listening on <addr>` at the end of the line");
        let addr = addr.parse().expect("a socket address");
        (line, addr)
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "backend did not exit within 10 s"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn ping(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    stream
        .write_all(b"GET /ping HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
}

#[test]
fn serves_then_exits_0_on_sigterm() {
    let mut backend = Running::spawn(&["--bind", "127.0.0.1:0", "--id", "t1"]);
    let (line, addr) = backend.listening_line();
    assert_eq!(line, format!("backend t1 listening on {addr}"));
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 0);

    let response = ping(addr);
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("x-backend-id: t1\r\n"), "{response}");
    assert!(response.ends_with("pong from t1\n"), "{response}");

    backend.signal("TERM");
    let status = backend.wait();
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn default_id_is_the_address_and_sigint_exits_0() {
    let mut backend = Running::spawn(&["--bind", "127.0.0.1:0"]);
    let (line, addr) = backend.listening_line();
    assert_eq!(line, format!("backend {addr} listening on {addr}"));
    assert!(ping(addr).contains(&format!("x-backend-id: {addr}\r\n")));

    backend.signal("INT");
    assert_eq!(backend.wait().code(), Some(0));
}

#[test]
fn bad_arguments_exit_2_naming_the_bad_value() {
    for (args, bad) in [
        (&["--bind", "nope"][..], "nope"),
        (&["notaport"][..], "notaport"),
        (&["--frobnicate"][..], "--frobnicate"),
        (&["70000"][..], "70000"),
    ] {
        let mut child = Command::new(BACKEND)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn backend");
        let mut stderr = child.stderr.take().expect("piped stderr");
        // clap writes a few lines and exits at once; reading to EOF ends when it does.
        let reader = thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut running = Running {
            child,
            lines: mpsc::channel().1,
        };
        let status = running.wait();
        let stderr = reader.join().expect("stderr reader");
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(bad), "{args:?}: {stderr}");
    }
}

#[test]
fn a_taken_address_fails_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("local addr").to_string();
    let child = Command::new(BACKEND)
        .args(["--bind", &addr])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn backend");
    let mut running = Running {
        child,
        lines: mpsc::channel().1,
    };
    let status = running.wait();
    let mut stderr = String::new();
    if let Some(mut pipe) = running.child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert!(!status.success());
    assert!(stderr.contains(&addr), "{stderr}");
}
