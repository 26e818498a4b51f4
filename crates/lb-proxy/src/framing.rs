//! A guard against request smuggling on HTTP/1.1 client connections.
//!
//! A request with both `Content-Length` and `Transfer-Encoding` can be framed two ways, and a
//! proxy and a backend that pick differently disagree on where the next request starts: the
//! classic smuggling attack (RFC 9112 §6.3 lets a server reject such a request, and we do).
//! hyper resolves the conflict safely by itself (it ignores `Content-Length` and closes the
//! connection afterwards) but hides it from the service, which then cannot answer 400.
//!
//! So this wrapper reads the request stream as hyper does, one message head at a time, and when
//! a head carries both headers it spoils that head's final line feed before hyper sees it. hyper
//! then rejects the head as malformed with its own 400 and closes the connection, and nothing of
//! the request reaches a backend. Bodies are skipped, not copied: `Content-Length` bytes are
//! counted and chunked bodies are followed chunk by chunk. Anything the wrapper does not follow
//! (upgrades, HTTP/2, a head hyper will reject anyway) turns it off for the rest of the
//! connection, leaving the decision to hyper.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Headers read per request head; more is hyper's 431 to give.
const MAX_HEADERS: usize = 100;

/// Wraps a client connection's byte stream; see the module docs.
#[derive(Debug)]
pub(crate) struct FramingGuard<T> {
    io: T,
    inspector: Inspector,
}

impl<T> FramingGuard<T> {
    /// Guards `io`; heads longer than `max_head` are left for hyper to refuse.
    pub(crate) fn new(io: T, max_head: usize) -> Self {
        FramingGuard {
            io,
            inspector: Inspector::new(max_head),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FramingGuard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        this.inspector.inspect(&mut buf.filled_mut()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FramingGuard<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[derive(Debug)]
struct Inspector {
    state: State,
    /// The start of a head that did not fit in one read.
    partial: Vec<u8>,
    max_head: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a request head (blank lines between messages allowed).
    Head,
    /// Inside a body of known length: this many bytes left.
    Body(u64),
    /// Inside a chunked body.
    Chunked(Chunk),
    /// Not following this connection any more.
    Off,
}

/// How a request head says its body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Both `Content-Length` and `Transfer-Encoding`: refuse.
    Ambiguous,
    /// Something hyper decides on its own (upgrade, CONNECT, bad lengths, other codings).
    Unfollowed,
}

impl Inspector {
    fn new(max_head: usize) -> Self {
        Inspector {
            state: State::Head,
            partial: Vec::new(),
            max_head,
        }
    }

    /// Follows `data`, the bytes just read, spoiling the head of an ambiguous request.
    fn inspect(&mut self, data: &mut [u8]) {
        let mut pos = 0;
        while pos < data.len() {
            match self.state {
                State::Off => return,
                State::Body(left) => {
                    let take = left.min((data.len() - pos) as u64);
                    pos += take as usize;
                    self.state = if take == left {
                        State::Head
                    } else {
                        State::Body(left - take)
                    };
                }
                State::Chunked(chunk) => match chunk.advance(&data[pos..]) {
                    Step::More(next) => {
                        self.state = State::Chunked(next);
                        pos = data.len();
                    }
                    Step::Done(used) => {
                        self.state = State::Head;
                        pos += used;
                    }
                    Step::Invalid => self.state = State::Off,
                },
                State::Head => match self.head(data, pos) {
                    Some(end) => pos = end,
                    None => return,
                },
            }
        }
    }

    /// Reads a head starting at `data[pos..]` (after any partial one). Returns where it ends in
    /// `data`, or `None` when it needs more bytes or the connection is no longer followed.
    fn head(&mut self, data: &mut [u8], mut pos: usize) -> Option<usize> {
        if self.partial.is_empty() {
            while pos < data.len() && matches!(data[pos], b'\r' | b'\n') {
                pos += 1;
            }
            if pos == data.len() {
                return None;
            }
        }
        let carried = self.partial.len();
        let parsed = if carried == 0 {
            parse(&data[pos..])
        } else {
            self.partial.extend_from_slice(&data[pos..]);
            parse(&self.partial)
        };
        match parsed {
            Parsed::Complete(len, framing) => {
                self.partial = Vec::new();
                let end = pos + (len - carried);
                self.state = match framing {
                    Framing::None | Framing::Length(0) => State::Head,
                    Framing::Length(n) => State::Body(n),
                    Framing::Chunked => State::Chunked(Chunk::Size(0)),
                    Framing::Ambiguous => {
                        // The head's last byte is its final line feed, and it arrived in this
                        // read (else the head would have been complete before).
                        data[end - 1] = 0;
                        State::Off
                    }
                    Framing::Unfollowed => State::Off,
                };
                Some(end)
            }
            Parsed::Partial => {
                if carried == 0 {
                    self.partial.extend_from_slice(&data[pos..]);
                }
                if self.partial.len() > self.max_head {
                    self.partial = Vec::new();
                    self.state = State::Off;
                }
                None
            }
            Parsed::Invalid => {
                self.partial = Vec::new();
                self.state = State::Off;
                None
            }
        }
    }
}

enum Parsed {
    Complete(usize, Framing),
    Partial,
    Invalid,
}

fn parse(bytes: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => Parsed::Complete(len, framing(&request)),
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Invalid,
    }
}

fn framing(request: &httparse::Request<'_, '_>) -> Framing {
    let mut length: Option<u64> = None;
    let mut has_length = false;
    let mut has_encoding = false;
    let mut chunked = false;
    let mut unfollowed = request.method == Some("CONNECT");
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            has_length = true;
            let value = std::str::from_utf8(header.value).ok().map(str::trim);
            match value.and_then(|v| v.parse::<u64>().ok()) {
                Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                _ => unfollowed = true,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            has_encoding = true;
            let last = header
                .value
                .rsplit(|&b| b == b',')
                .next()
                .unwrap_or_default();
            chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case("upgrade") {
            unfollowed = true;
        }
    }
    if has_length && has_encoding {
        Framing::Ambiguous
    } else if unfollowed || (has_encoding && !chunked) {
        Framing::Unfollowed
    } else if has_encoding {
        Framing::Chunked
    } else {
        length.map_or(Framing::None, Framing::Length)
    }
}

/// Where a chunked body reader is (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading hex digits of a chunk size (the value so far).
    Size(u64),
    /// In a chunk extension, up to the end of the size line.
    Extension(u64),
    /// Seen CR after a size line.
    SizeLf(u64),
    /// Inside chunk data: bytes left.
    Data(u64),
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer line.
    TrailerLine,
    /// Seen CR of the final empty line.
    EndLf,
}

/// What following a piece of a chunked body found.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// The piece ended inside the body, here.
    More(Chunk),
    /// The body ended after this many bytes of the piece.
    Done(usize),
    /// Not a valid chunked body: hyper will fail the request.
    Invalid,
}

impl Chunk {
    /// Follows `data`, a piece of a chunked body.
    fn advance(mut self, data: &[u8]) -> Step {
        let mut i = 0;
        while i < data.len() {
            if let Chunk::Data(left) = self {
                let take = left.min((data.len() - i) as u64);
                i += take as usize;
                self = if take == left {
                    Chunk::DataCr
                } else {
                    Chunk::Data(left - take)
                };
                continue;
            }
            let b = data[i];
            i += 1;
            self = match (self, b) {
                (Chunk::Size(n), b) if b.is_ascii_hexdigit() => match n.checked_mul(16) {
                    Some(n) => Chunk::Size(n + u64::from(hex(b))),
                    None => return Step::Invalid,
                },
                (Chunk::Size(n), b';' | b' ' | b'\t') => Chunk::Extension(n),
                (Chunk::Size(n) | Chunk::Extension(n), b'\r') => Chunk::SizeLf(n),
                (Chunk::Extension(n), _) => Chunk::Extension(n),
                (Chunk::Size(0) | Chunk::SizeLf(0), b'\n') => Chunk::TrailerStart,
                (Chunk::Size(n) | Chunk::SizeLf(n), b'\n') => Chunk::Data(n),
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataCr | Chunk::DataLf, b'\n') => Chunk::Size(0),
                (Chunk::TrailerStart, b'\r') => Chunk::EndLf,
                (Chunk::TrailerStart | Chunk::EndLf, b'\n') => return Step::Done(i),
                (Chunk::TrailerLine, b'\n') => Chunk::TrailerStart,
                (Chunk::TrailerStart | Chunk::TrailerLine, _) => Chunk::TrailerLine,
                _ => return Step::Invalid,
            };
        }
        Step::More(self)
    }
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` to a fresh inspector in pieces split at `cuts`, returning what hyper would
    /// read and the final state.
    fn feed(stream: &[u8], cuts: &[usize]) -> (Vec<u8>, State) {
        let mut inspector = Inspector::new(32 * 1024);
        let mut out = stream.to_vec();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
            inspector.inspect(&mut out[start..cut]);
            start = cut;
        }
        (out, inspector.state)
    }

    /// Every way of splitting `stream` in two or three reads gives the same result.
    fn same_for_every_split(stream: &[u8]) -> (Vec<u8>, State) {
        let whole = feed(stream, &[]);
        for a in 0..=stream.len() {
            assert_eq!(feed(stream, &[a]), whole, "split at {a}");
            for b in a..=stream.len() {
                assert_eq!(feed(stream, &[a, b]), whole, "split at {a}, {b}");
            }
        }
        whole
    }

    #[test]
    fn ambiguous_heads_are_spoiled_in_either_order() {
        for stream in [
            &b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n",
        ] {
            let (out, state) = same_for_every_split(stream);
            let head_end = stream.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            assert_eq!(out[head_end - 1], 0);
            assert_eq!(&out[..head_end - 1], &stream[..head_end - 1]);
            assert_eq!(state, State::Off);
        }
    }

    #[test]
    fn a_smuggled_request_behind_a_body_is_caught() {
        let first = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        let second = b"GET /b HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n";
        let stream = [&first[..], &second[..]].concat();
        let (out, _) = same_for_every_split(&stream);
        assert_eq!(out[stream.len() - 1], 0);
        assert_eq!(&out[..first.len()], first);
    }

    #[test]
    fn chunked_bodies_are_followed_to_the_next_request() {
        let stream = b"POST /a HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n\
\r\nGET /b HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (out, state) = same_for_every_split(stream);
        assert_eq!(
            out[stream.len() - 1],
            0,
            "the second request is the ambiguous one"
        );
        assert_eq!(state, State::Off);
    }

    #[test]
    fn body_bytes_that_look_like_headers_are_left_alone() {
        let body = b"GET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let head = format!("POST /a HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len());
        let stream = [head.as_bytes(), &body[..], b"GET /c HTTP/1.1\r\n\r\n"].concat();
        let (out, state) = same_for_every_split(&stream);
        assert_eq!(out, stream);
        assert_eq!(state, State::Head);
    }

    #[test]
    fn ordinary_traffic_passes_untouched() {
        let stream = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\nHost: a\n\nPOST /3 HTTP/1.1\r\nContent-Length: 2\r\n\r\nokGET /4 HTTP/1.1\r\n\r\n";
        let (out, state) = same_for_every_split(stream);
        assert_eq!(&out[..], &stream[..]);
        assert_eq!(state, State::Head);
    }

    #[test]
    fn upgrades_and_http2_are_left_to_hyper() {
        let ws = b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nbinary\r\n\r\nframes";
        assert_eq!(feed(ws, &[]).1, State::Off);
        let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00";
        let (out, state) = feed(h2, &[]);
        assert_eq!(&out[..], &h2[..]);
        assert_eq!(state, State::Off);
    }

    #[test]
    fn oversized_heads_stop_the_guard() {
        let mut inspector = Inspector::new(1024);
        let mut start = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        inspector.inspect(&mut start);
        let mut filler = vec![b'a'; 2048];
        inspector.inspect(&mut filler);
        assert_eq!(inspector.state, State::Off);
        assert!(inspector.partial.is_empty());
    }

    #[test]
    fn malformed_chunks_stop_the_guard() {
        let stream = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert_eq!(feed(stream, &[]).1, State::Off);
        let huge = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF\r\n";
        assert_eq!(feed(huge, &[]).1, State::Off);
    }
}
