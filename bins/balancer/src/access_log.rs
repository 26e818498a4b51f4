//! `--access-log`: one line per request, in logfmt, buffered per worker thread.
//!
//! ```text
//! time=2026-11-25T10:00:00.123Z client=127.0.0.1:53422 method=GET target=/ping status=200 backend=127.0.0.1:8081 upstream_ms=0.412 total_ms=0.530
//! ```
//!
//! Each worker thread formats its lines into a buffer of its own (no lock, no allocation once
//! the buffer has grown) and writes it out when it passes 32 KiB, every 200 ms, and when the
//! worker stops: one `write` per many requests instead of one per request, as nginx's
//! `access_log ... buffer=` does.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use lb_proxy::{AccessEntry, AccessLog};

/// Where lines go, chosen once at start.
static OUTPUT: OnceLock<Output> = OnceLock::new();

const FLUSH_AT: usize = 32 * 1024;
const FLUSH_EVERY: Duration = Duration::from_millis(200);

thread_local! {
    static BUFFER: RefCell<String> = const { RefCell::new(String::new()) };
}

#[derive(Debug)]
enum Output {
    Stdout,
    File(File),
}

/// The access log; see the module documentation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lines;

impl Lines {
    /// Opens `path` for appending (`-` is standard output) and makes it the log's output.
    pub(crate) fn open(path: &Path) -> Result<Lines, String> {
        let output = if path == Path::new("-") {
            Output::Stdout
        } else {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open access log {}: {e}", path.display()))?;
            Output::File(file)
        };
        let _ = OUTPUT.set(output);
        Ok(Lines)
    }
}

impl AccessLog for Lines {
    fn log(&self, entry: &AccessEntry<'_>) {
        BUFFER.with_borrow_mut(|buffer| {
            format_line(buffer, entry, SystemTime::now());
            if buffer.len() >= FLUSH_AT {
                write_out(buffer);
            }
        });
    }
}

/// Writes out what this thread has buffered.
pub(crate) fn flush() {
    BUFFER.with_borrow_mut(write_out);
}

/// Flushes this thread's buffer every 200 ms; spawn it on each worker's runtime.
pub(crate) async fn flush_periodically() {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    loop {
        tick.tick().await;
        flush();
    }
}

fn write_out(buffer: &mut String) {
    if buffer.is_empty() {
        return;
    }
    let written = match OUTPUT.get() {
        Some(Output::Stdout) => io::stdout().lock().write_all(buffer.as_bytes()),
        Some(Output::File(file)) => (&*file).write_all(buffer.as_bytes()),
        None => Ok(()),
    };
    if let Err(error) = written {
        tracing::warn!(%error, "cannot write the access log");
    }
    buffer.clear();
}

fn format_line(out: &mut String, e: &AccessEntry<'_>, now: SystemTime) {
    let _ = write!(
        out,
        "time={} client={} method={} target={} status={} backend={} upstream_ms=",
        humantime::format_rfc3339_millis(now),
        e.client,
        e.method,
        e.target,
        e.status,
        e.backend.unwrap_or("-"),
    );
    match e.upstream {
        Some(upstream) => millis(out, upstream),
        None => out.push('-'),
    }
    out.push_str(" total_ms=");
    millis(out, e.total);
    out.push('\n');
}

/// `d` in milliseconds with three decimals, with integer formatting only.
fn millis(out: &mut String, d: Duration) {
    let micros = d.as_micros();
    let _ = write!(out, "{}.{:03}", micros / 1000, micros % 1000);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_has_every_field_in_logfmt() {
        let method = http::Method::GET;
        let entry = AccessEntry::new(
            "127.0.0.1:5000".parse().unwrap(),
            &method,
            "/ping?a=1",
            200,
            Some("127.0.0.1:8081"),
            Some(Duration::from_micros(412)),
            Duration::from_micros(1530),
        );
        let mut line = String::new();
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_064_800_123);
        format_line(&mut line, &entry, at);
        assert_eq!(
            line,
            "time=2025-11-25T10:00:00.123Z client=127.0.0.1:5000 method=GET target=/ping?a=1 \
             status=200 backend=127.0.0.1:8081 upstream_ms=0.412 total_ms=1.530\n"
        );
    }

    #[test]
    fn an_answer_of_the_proxy_has_no_backend_and_no_upstream_time() {
        let method = http::Method::POST;
        let entry = AccessEntry::new(
            "[::1]:5000".parse().unwrap(),
            &method,
            "/",
            503,
            None,
            None,
            Duration::from_millis(2),
        );
        let mut line = String::new();
        format_line(&mut line, &entry, SystemTime::UNIX_EPOCH);
        assert!(
            line.ends_with(
                "client=[::1]:5000 method=POST target=/ status=503 backend=- upstream_ms=- total_ms=2.000\n"
            ),
            "{line}"
        );
    }
}
