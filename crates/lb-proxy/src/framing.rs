//! A guard against request smuggling on HTTP/1.1 client connections.
//!
//! A request with both `Content-Length` and `Transfer-Encoding` can be framed two ways, and a
//! proxy and a backend that pick differently disagree on where the next request starts: the
//! classic smuggling attack (RFC 9112 §6.3 lets a server reject such a request, and we do).
//! hyper resolves the conflict safely by itself (it ignores `Content-Length` and closes the
//! connection afterwards) but hides it from the service, which then cannot answer 400.
//!
//! So [`ClientIo`](crate::client_io::ClientIo) reads the request stream as hyper does, one message head at a time, and when
//! a head carries both headers it spoils that head's final line feed before hyper sees it. hyper
//! then rejects the head as malformed with its own 400 and closes the connection, and nothing of
//! the request reaches a backend. Bodies are skipped, not copied: `Content-Length` bytes are
//! counted and chunked bodies are followed chunk by chunk. Anything the wrapper does not follow
//! (upgrades, HTTP/2, a head hyper will reject anyway) turns it off for the rest of the
//! connection, leaving the decision to hyper.
//!
//! Heads are not parsed twice: the guard only finds line ends and the three headers that decide
//! framing (`Content-Length`, `Transfer-Encoding`, `Upgrade`), and leaves validation to hyper.

/// Follows HTTP/1 message framing on a client connection's bytes; see the module docs.
#[derive(Debug)]
pub(crate) struct Inspector {
    state: State,
    /// The start of a head that did not fit in one read.
    partial: Vec<u8>,
    max_head: usize,
    /// Request heads read to their end so far.
    heads: u64,
    /// An upgrade (or CONNECT) was asked for: the bytes may stop being HTTP.
    upgrade: bool,
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
    /// Something hyper decides on its own (bad lengths, other codings).
    Unfollowed,
    /// An upgrade or CONNECT: what follows may not be HTTP.
    Upgrade,
}

impl Inspector {
    /// Follows a new connection; heads longer than `max_head` are left for hyper to refuse.
    pub(crate) fn new(max_head: usize) -> Self {
        Inspector {
            state: State::Head,
            partial: Vec::new(),
            max_head,
            heads: 0,
            upgrade: false,
        }
    }

    /// Request heads read to their end so far.
    pub(crate) fn heads(&self) -> u64 {
        self.heads
    }

    /// True while a request head has begun but not ended.
    pub(crate) fn in_head(&self) -> bool {
        !self.partial.is_empty()
    }

    /// True when every byte read so far belongs to a message that was read to its end (head
    /// and body): what the connection sends next, if anything, begins a new request.
    pub(crate) fn between_requests(&self) -> bool {
        self.state == State::Head && self.partial.is_empty()
    }

    /// True once a request asked to switch protocols.
    pub(crate) fn upgrade_requested(&self) -> bool {
        self.upgrade
    }

    /// Follows `data`, the bytes just read, spoiling the head of an ambiguous request.
    pub(crate) fn inspect(&mut self, data: &mut [u8]) {
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
                self.heads += 1;
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
                    Framing::Upgrade => {
                        self.upgrade = true;
                        State::Off
                    }
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

/// Finds the end of the request head at the start of `bytes` and how its body is framed.
///
/// Not a full parser: hyper parses (and validates) every head anyway. This only finds the line
/// ends, as hyper does (CRLF or bare LF), and looks at the three headers that decide framing,
/// which costs a fraction of parsing the head again. A request line that is not HTTP/1.x
/// (the HTTP/2 preface, garbage) is `Invalid`, which turns the guard off: hyper answers it.
fn parse(bytes: &[u8]) -> Parsed {
    let Some(line_end) = memchr::memchr(b'\n', bytes) else {
        return Parsed::Partial;
    };
    let request_line = trim_cr(&bytes[..line_end]);
    if !(request_line.ends_with(b" HTTP/1.1") || request_line.ends_with(b" HTTP/1.0")) {
        return Parsed::Invalid;
    }
    let mut head = Head {
        connect: request_line.starts_with(b"CONNECT "),
        ..Head::default()
    };
    let first = line_end + 1;
    let mut start = first;
    for end in memchr::memchr_iter(b'\n', &bytes[first..]).map(|i| first + i) {
        let line = trim_cr(&bytes[start..end]);
        if line.is_empty() {
            return Parsed::Complete(end + 1, head.framing());
        }
        head.header(line);
        start = end + 1;
    }
    Parsed::Partial
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// What a head says about framing, gathered line by line.
#[derive(Default)]
struct Head {
    connect: bool,
    upgrade: bool,
    length: Option<u64>,
    has_length: bool,
    bad_length: bool,
    has_encoding: bool,
    chunked: bool,
}

impl Head {
    fn header(&mut self, line: &[u8]) {
        let Some(colon) = memchr::memchr(b':', line) else {
            return;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                self.has_length = true;
                let n = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok());
                match n {
                    Some(n)
                        if value.first().is_some_and(u8::is_ascii_digit)
                            && self.length.is_none_or(|l| l == n) =>
                    {
                        self.length = Some(n);
                    }
                    _ => self.bad_length = true,
                }
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                self.has_encoding = true;
                let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
                self.chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
            }
            7 if name.eq_ignore_ascii_case(b"upgrade") => self.upgrade = true,
            _ => {}
        }
    }

    fn framing(&self) -> Framing {
        if self.has_length && self.has_encoding {
            Framing::Ambiguous
        } else if self.connect || self.upgrade {
            Framing::Upgrade
        } else if self.bad_length || (self.has_encoding && !self.chunked) {
            Framing::Unfollowed
        } else if self.has_encoding {
            Framing::Chunked
        } else {
            self.length.map_or(Framing::None, Framing::Length)
        }
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
        let mut inspector = Inspector::new(1024);
        inspector.inspect(&mut ws.to_vec());
        assert!(inspector.upgrade_requested());
        assert_eq!(inspector.heads(), 1);
        let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00";
        let (out, state) = feed(h2, &[]);
        assert_eq!(&out[..], &h2[..]);
        assert_eq!(state, State::Off);
    }

    #[test]
    fn heads_are_counted_and_an_unfinished_one_is_seen() {
        let mut inspector = Inspector::new(1024);
        inspector.inspect(&mut b"GET / HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\nHo".to_vec());
        assert_eq!(inspector.heads(), 1);
        assert!(inspector.in_head());
        inspector.inspect(&mut b"st: a\r\n\r\n".to_vec());
        assert_eq!(inspector.heads(), 2);
        assert!(!inspector.in_head());
        assert!(!inspector.upgrade_requested());
    }

    #[test]
    fn the_scanner_reads_framing_as_hyper_would() {
        let framing = |head: &str| match parse(head.as_bytes()) {
            Parsed::Complete(len, framing) => {
                assert_eq!(len, head.len());
                Some(framing)
            }
            Parsed::Partial => panic!("partial: {head:?}"),
            Parsed::Invalid => None,
        };
        assert_eq!(
            framing("GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(Framing::None)
        );
        assert_eq!(
            framing("POST / HTTP/1.0\nContent-Length: 12\n\n"),
            Some(Framing::Length(12))
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\ncontent-length: 3\r\nContent-Length: 3\r\n\r\n"),
            Some(Framing::Length(3))
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            Some(Framing::Unfollowed)
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n"),
            Some(Framing::Unfollowed)
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\nContent-Length:\r\n\r\n"),
            Some(Framing::Unfollowed)
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Some(Framing::Unfollowed)
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\nTRANSFER-ENCODING:  Chunked \r\n\r\n"),
            Some(Framing::Chunked)
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: x\r\n\r\n"),
            Some(Framing::Ambiguous)
        );
        assert_eq!(
            framing("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"),
            Some(Framing::Upgrade)
        );
        assert_eq!(
            framing("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"),
            Some(Framing::Upgrade)
        );
        assert_eq!(framing("PRI * HTTP/2.0\r\n\r\n"), None);
        assert_eq!(framing("garbage\r\n\r\n"), None);
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Parsed::Partial
        ));
        assert!(matches!(parse(b"GET / HTT"), Parsed::Partial));
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

    mod properties {
        use proptest::prelude::*;
        use proptest::sample::Index;

        use super::*;

        /// What request streams are made of: request lines, the headers that decide framing
        /// (valid and not), blank lines, bodies and chunks, and arbitrary bytes.
        fn piece() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                Just(b"GET / HTTP/1.1\r\n".to_vec()),
                Just(b"POST /a HTTP/1.0\n".to_vec()),
                Just(b"CONNECT a:443 HTTP/1.1\r\n".to_vec()),
                Just(b"PRI * HTTP/2.0\r\n".to_vec()),
                Just(b"Host: a\r\n".to_vec()),
                (0u64..40).prop_map(|n| format!("Content-Length: {n}\r\n").into_bytes()),
                Just(b"content-length: +1\r\n".to_vec()),
                Just(b"Transfer-Encoding: chunked\r\n".to_vec()),
                Just(b"transfer-encoding: gzip, chunked\n".to_vec()),
                Just(b"Transfer-Encoding: gzip\r\n".to_vec()),
                Just(b"Upgrade: websocket\r\n".to_vec()),
                Just(b"\r\n".to_vec()),
                Just(b"\n".to_vec()),
                Just(b"5;x=1\r\nhello\r\n".to_vec()),
                Just(b"0\r\n\r\n".to_vec()),
                Just(b"0\r\nX-Trailer: 1\r\n\r\n".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..16),
            ]
        }

        /// A well-formed request message, and how the guard must treat it.
        #[derive(Debug, Clone)]
        struct Message {
            bytes: Vec<u8>,
            /// Where its head's final line feed is.
            head_end: usize,
            /// Both `Content-Length` and `Transfer-Encoding`: the guard spoils that line feed.
            ambiguous: bool,
            /// An upgrade, or framing the guard leaves to hyper: it stops following.
            stops: bool,
        }

        prop_compose! {
            fn message()(
                line in prop_oneof![
                    Just("GET / HTTP/1.1"),
                    Just("POST /a HTTP/1.0"),
                    Just("CONNECT a:443 HTTP/1.1"),
                ],
                headers in proptest::collection::vec(
                    prop_oneof![Just("Host: a"), Just("X-A: b"), Just("Upgrade: websocket")],
                    0..3,
                ),
                framing in 0u8..5,
                body in proptest::collection::vec(any::<u8>(), 0..24),
                chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..20), 0..3),
                crlf in any::<bool>(),
            ) -> Message {
                let eol = if crlf { "\r\n" } else { "\n" };
                let mut head = format!("{line}{eol}");
                for header in &headers {
                    head += header;
                    head += eol;
                }
                let n = body.len();
                head += &match framing {
                    1 => format!("Content-Length: {n}{eol}"),
                    2 => format!("Transfer-Encoding: chunked{eol}"),
                    3 => format!("content-length: {n}{eol}transfer-encoding: gzip, chunked{eol}"),
                    4 => format!("Content-Length: +{n}{eol}"),
                    _ => String::new(),
                };
                head += eol;
                let mut bytes = head.into_bytes();
                let head_end = bytes.len() - 1;
                match framing {
                    1 | 3 | 4 => bytes.extend_from_slice(&body),
                    2 => {
                        for chunk in &chunks {
                            bytes.extend(format!("{:x};e=1\r\n", chunk.len()).bytes());
                            bytes.extend_from_slice(chunk);
                            bytes.extend(b"\r\n");
                        }
                        bytes.extend(b"0\r\nX-Trailer: 1\r\n\r\n");
                    }
                    _ => {}
                }
                let upgrade = line.starts_with("CONNECT") || headers.contains(&"Upgrade: websocket");
                Message { bytes, head_end, ambiguous: framing == 3, stops: upgrade || framing == 4 }
            }
        }

        /// Cut points for a stream of `len` bytes, sorted.
        fn cut(len: usize, at: &[Index]) -> Vec<usize> {
            let mut cuts: Vec<usize> = at.iter().map(|i| i.index(len + 1)).collect();
            cuts.sort_unstable();
            cuts
        }

        proptest! {
            /// Any bytes, in one read or cut anywhere into up to five: the guard follows them the
            /// same way (and does not panic), and changes at most one byte, a line feed.
            #[test]
            fn any_stream_cut_anywhere_is_followed_the_same_way(
                pieces in proptest::collection::vec(piece(), 0..24),
                at in proptest::collection::vec(any::<Index>(), 0..5),
            ) {
                let stream = pieces.concat();
                let cuts = cut(stream.len(), &at);
                let (out, state) = feed(&stream, &cuts);
                let whole = feed(&stream, &[]);
                prop_assert_eq!(&out, &whole.0, "cut at {:?}", cuts);
                prop_assert_eq!(state, whole.1, "cut at {:?}", cuts);
                let changed: Vec<usize> =
                    (0..stream.len()).filter(|&i| stream[i] != out[i]).collect();
                prop_assert!(changed.len() <= 1, "changed at {:?}", changed);
                for i in changed {
                    prop_assert_eq!((stream[i], out[i]), (b'\n', 0));
                    prop_assert_eq!(state, State::Off);
                }
            }

            /// Well-formed requests one after another, bodies of every framing, cut anywhere:
            /// the first ambiguous head is spoiled, exactly, unless an earlier request stopped
            /// the guard; nothing else is touched.
            #[test]
            fn the_first_ambiguous_request_is_caught_wherever_the_reads_end(
                messages in proptest::collection::vec(message(), 1..6),
                at in proptest::collection::vec(any::<Index>(), 0..5),
            ) {
                let stream: Vec<u8> = messages.iter().flat_map(|m| m.bytes.clone()).collect();
                let mut expected = stream.clone();
                let mut expected_state = State::Head;
                let mut offset = 0;
                for m in &messages {
                    if m.ambiguous {
                        expected[offset + m.head_end] = 0;
                    }
                    if m.ambiguous || m.stops {
                        expected_state = State::Off;
                        break;
                    }
                    offset += m.bytes.len();
                }
                let cuts = cut(stream.len(), &at);
                let (out, state) = feed(&stream, &cuts);
                prop_assert_eq!(out, expected, "cut at {:?}", cuts);
                prop_assert_eq!(state, expected_state, "cut at {:?}", cuts);
            }
        }
    }
}
