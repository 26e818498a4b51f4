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
use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use lb_proxy::{AccessEntry, AccessLog};

/// Where lines go, chosen once at start.
static OUTPUT: OnceLock<Output> = OnceLock::new();

const FLUSH_AT: usize = 32 * 1024;
const FLUSH_EVERY: Duration = Duration::from_millis(200);

thread_local! {
    static BUFFER: RefCell<Buffer> = const { RefCell::new(Buffer::new()) };
}

/// One thread's lines not yet written, and the last timestamp it formatted.
struct Buffer {
    lines: String,
    /// Milliseconds since the epoch of `stamp`.
    stamp_millis: u64,
    stamp: String,
}

impl Buffer {
    const fn new() -> Self {
        Buffer {
            lines: String::new(),
            stamp_millis: 0,
            stamp: String::new(),
        }
    }

    /// Appends one line; the timestamp is formatted once per millisecond, not once per line.
    fn push(&mut self, entry: &AccessEntry<'_>, now: SystemTime) {
        let millis = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if millis != self.stamp_millis || self.stamp.is_empty() {
            self.stamp.clear();
            let _ = write!(self.stamp, "{}", humantime::format_rfc3339_millis(now));
            self.stamp_millis = millis;
        }
        format_line(&mut self.lines, &self.stamp, entry);
    }
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
            buffer.push(entry, SystemTime::now());
            if buffer.lines.len() >= FLUSH_AT {
                write_out(&mut buffer.lines);
            }
        });
    }
}

/// Writes out what this thread has buffered.
pub(crate) fn flush() {
    BUFFER.with_borrow_mut(|buffer| write_out(&mut buffer.lines));
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

/// Appends one line. Plain pushes and `itoa` rather than `write!`: the formatting machinery was
/// most of the log's cost per request.
fn format_line(out: &mut String, time: &str, e: &AccessEntry<'_>) {
    let mut numbers = itoa::Buffer::new();
    out.push_str("time=");
    out.push_str(time);
    out.push_str(" client=");
    match e.client {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(numbers.format(*octet));
            }
            out.push(':');
            out.push_str(numbers.format(v4.port()));
        }
        v6 => {
            let _ = write!(out, "{v6}");
        }
    }
    out.push_str(" method=");
    out.push_str(e.method.as_str());
    out.push_str(" target=");
    push_value(out, e.target);
    out.push_str(" status=");
    out.push_str(numbers.format(e.status));
    out.push_str(" backend=");
    out.push_str(e.backend.unwrap_or("-"));
    out.push_str(" upstream_ms=");
    match e.upstream {
        Some(upstream) => millis(out, upstream),
        None => out.push('-'),
    }
    out.push_str(" total_ms=");
    millis(out, e.total);
    out.push('\n');
}

/// A logfmt value: as it is when it needs no quoting, else in double quotes with `"` and `\`
/// escaped (a query's `=` needs quoting for strict parsers such as go-logfmt and Loki's).
fn push_value(out: &mut String, value: &str) {
    if !value
        .bytes()
        .any(|b| b <= b' ' || matches!(b, b'=' | b'"' | b'\\' | 0x7f))
    {
        out.push_str(value);
        return;
    }
    out.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `d` in milliseconds with three decimals.
fn millis(out: &mut String, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let mut numbers = itoa::Buffer::new();
    out.push_str(numbers.format(micros / 1000));
    out.push('.');
    let fraction = micros % 1000;
    if fraction < 100 {
        out.push('0');
    }
    if fraction < 10 {
        out.push('0');
    }
    out.push_str(numbers.format(fraction));
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
            Duration::from_micros(61_005),
        );
        let mut buffer = Buffer::new();
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_064_800_123);
        buffer.push(&entry, at);
        let line = buffer.lines;
        assert_eq!(
            line,
            "time=2025-11-25T10:00:00.123Z client=127.0.0.1:5000 method=GET target=\"/ping?a=1\" \
             status=200 backend=127.0.0.1:8081 upstream_ms=0.412 total_ms=61.005\n"
        );
    }

    #[test]
    fn targets_are_quoted_only_when_logfmt_needs_it() {
        let mut out = String::new();
        push_value(&mut out, "/a/b.css");
        out.push(' ');
        push_value(&mut out, "/q?x=1");
        out.push(' ');
        push_value(&mut out, r#"/say"hi"\"#);
        assert_eq!(out, r#"/a/b.css "/q?x=1" "/say\"hi\"\\""#);
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
            Duration::from_micros(2_040),
        );
        let mut buffer = Buffer::new();
        buffer.push(&entry, SystemTime::UNIX_EPOCH);
        let line = buffer.lines;
        assert!(
            line.ends_with(
                "client=[::1]:5000 method=POST target=/ status=503 backend=- upstream_ms=- total_ms=2.040\n"
            ),
            "{line}"
        );
    }

    #[test]
    fn the_timestamp_is_formatted_again_when_the_millisecond_changes() {
        let method = http::Method::GET;
        let entry = AccessEntry::new(
            "127.0.0.1:1".parse().unwrap(),
            &method,
            "/",
            200,
            None,
            None,
            Duration::ZERO,
        );
        let mut buffer = Buffer::new();
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_064_800_123);
        buffer.push(&entry, at);
        buffer.push(&entry, at + Duration::from_micros(400));
        buffer.push(&entry, at + Duration::from_millis(1));
        let stamps: Vec<_> = buffer.lines.lines().map(|l| &l[5..29]).collect();
        assert_eq!(
            stamps,
            [
                "2025-11-25T10:00:00.123Z",
                "2025-11-25T10:00:00.123Z",
                "2025-11-25T10:00:00.124Z"
            ]
        );
    }
}
