//! A client connection's byte stream, with the request smuggling guard and the two client
//! timeouts: idle keep-alive connections and slow request heads (slowloris).
//!
//! Both timeouts share one timer per connection, armed lazily: a busy connection moves no timer
//! per request (hyper's own header timeout, which does, cost ~4 % of a request's instructions).
//! The timer fires at the earliest deadline it may have to enforce, and only then looks at what
//! the connection did meanwhile.
//!
//! It also tells HTTP/1.1 from HTTP/2 (prior knowledge) by the first bytes, keeping them for
//! hyper, which then gets them together with whatever follows them on the socket.
//!
//! And it notices a client that hangs up while its request is being answered, which hyper is
//! told not to look for (`half_close`): hyper would read the socket for it, and a read while
//! the request's header values still share hyper's read buffer costs a new 8 KiB buffer per
//! request. Here it costs a peek: see [`ClientIo::poll_hang_up`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

use crate::coalesce;
use crate::framing::Inspector;

/// How an HTTP/2 client with prior knowledge begins (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a client speaks, told by [`ClientIo::sniff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    Http2,
}

/// Sent when a request head does not arrive in time, before the connection is closed.
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// The client timeouts; see [`Server`](crate::Server).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientTimeouts {
    /// Longest time a connection may wait for a request without one being under way.
    pub(crate) idle: Duration,
    /// Longest time from the first byte of a request head to its end.
    pub(crate) header: Duration,
}

/// A client connection; see the module docs.
#[derive(Debug)]
pub(crate) struct ClientIo<T> {
    io: T,
    inspector: Inspector,
    timeouts: ClientTimeouts,
    timer: Pin<Box<Sleep>>,
    /// When the current request head began, if one is being read.
    head_since: Option<Instant>,
    /// The last read or write.
    last_active: Instant,
    /// A request head was read and nothing has been written since: the answer is being made.
    answering: bool,
    /// Request heads seen when last looked.
    heads: u64,
    /// The first bytes, read to tell the protocol; `sniffed[taken..len]` is not yet read by hyper.
    sniffed: [u8; PREFACE.len()],
    sniffed_len: u8,
    sniffed_taken: u8,
    /// An error met reading on after the sniffed bytes, for the next read.
    deferred: Option<io::Error>,
    /// The connection's place under the server's `max_connections`, held for as long as its
    /// bytes are in use; see [`with_permit`](Self::with_permit).
    permit: Option<OwnedSemaphorePermit>,
    /// A request head was read and hyper has not asked for the next one yet: the request is
    /// being answered (its response may be streaming), and a hang-up ends it.
    exchanging: bool,
    /// Bytes of a next request arrived behind the one being answered (pipelining): no hang-up
    /// is watched for until the exchange ends (hyper does not look either while it holds
    /// unread bytes).
    more_behind: bool,
}

/// A look at what is waiting to be read, without taking it: how [`ClientIo`] tells a client that
/// hung up from one that sent more.
pub(crate) trait Peek {
    /// As [`TcpStream::poll_peek`](tokio::net::TcpStream::poll_peek).
    fn poll_peek(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<usize>>;
}

impl Peek for tokio::net::TcpStream {
    fn poll_peek(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<usize>> {
        tokio::net::TcpStream::poll_peek(self, cx, buf)
    }
}

impl<T> ClientIo<T> {
    /// Wraps a new connection. Heads longer than `max_head` are left for hyper to refuse.
    pub(crate) fn new(io: T, max_head: usize, timeouts: ClientTimeouts) -> Self {
        let now = Instant::now();
        ClientIo {
            io,
            inspector: Inspector::new(max_head),
            timeouts,
            timer: Box::pin(tokio::time::sleep_until(now + timeouts.idle)),
            head_since: None,
            last_active: now,
            answering: false,
            heads: 0,
            sniffed: [0; PREFACE.len()],
            sniffed_len: 0,
            sniffed_taken: 0,
            deferred: None,
            permit: None,
            exchanging: false,
            more_behind: false,
        }
    }

    /// Holds `permit` until the connection is dropped: by hyper, or, once a request was
    /// upgraded (WebSocket), by the tunnel that took the connection over from hyper. So an
    /// upgraded connection counts under the server's `max_connections` as long as it is open.
    pub(crate) fn with_permit(mut self, permit: Option<OwnedSemaphorePermit>) -> Self {
        self.permit = permit;
        self
    }

    /// Follows freshly read bytes: the framing guard, and what the timers must watch next.
    fn on_read(&mut self, data: &mut [u8]) {
        self.inspector.inspect(data);
        if self.inspector.heads() != self.heads {
            let new_heads = self.inspector.heads() - self.heads;
            self.heads = self.inspector.heads();
            self.answering = true;
            if self.exchanging || new_heads > 1 {
                self.more_behind = true;
            }
            self.exchanging = true;
        }
        let in_head = self.inspector.in_head();
        // While a request is being answered the idle timeout is not checked, and the answer's
        // first write sets the time again: a read that ends a head needs no clock.
        if !self.answering || in_head {
            self.last_active = Instant::now();
        }
        self.head_since = match (in_head, self.head_since) {
            (false, _) => None,
            (true, Some(since)) => Some(since),
            (true, None) => {
                // A head split across reads: make sure the timer fires by its deadline.
                let deadline = self.last_active + self.timeouts.header;
                if deadline < self.timer.deadline() {
                    self.timer.as_mut().reset(deadline);
                }
                Some(self.last_active)
            }
        };
    }

    /// Called when the timer fires: `Err` if a timeout is up, else the timer is set again for
    /// the next deadline that may apply.
    fn on_timer(&mut self) -> Result<(), Expired> {
        let now = Instant::now();
        if let Some(since) = self.head_since
            && now >= since + self.timeouts.header
        {
            return Err(Expired::Header);
        }
        let idle_deadline = if self.answering || self.inspector.upgrade_requested() {
            // Waiting on a backend, or a tunnel (WebSocket) that may rightly be quiet for long:
            // not idle. Look again later.
            now + self.timeouts.idle
        } else {
            let deadline = self.last_active + self.timeouts.idle;
            if now >= deadline {
                return Err(Expired::Idle);
            }
            deadline
        };
        let next = match self.head_since {
            Some(since) => idle_deadline.min(since + self.timeouts.header),
            None => idle_deadline,
        };
        self.timer.as_mut().reset(next);
        Ok(())
    }
}

enum Expired {
    Idle,
    Header,
}

impl<T: AsyncRead + AsyncWrite + Unpin> ClientIo<T> {
    /// Reads the connection's first bytes, as far as needed to tell HTTP/2 with prior knowledge
    /// (its 24-byte preface) from HTTP/1.1 (anything else, an empty connection included). The
    /// client timeouts apply while it waits. hyper reads the bytes again from here.
    pub(crate) async fn sniff(&mut self) -> io::Result<Protocol> {
        std::future::poll_fn(|cx| self.poll_sniff(cx)).await
    }

    fn poll_sniff(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Protocol>> {
        loop {
            let len = usize::from(self.sniffed_len);
            if self.sniffed[..len] != PREFACE[..len] {
                return Poll::Ready(Ok(Protocol::Http1));
            }
            if len == PREFACE.len() {
                return Poll::Ready(Ok(Protocol::Http2));
            }
            let mut more = [0; PREFACE.len()];
            let mut buf = ReadBuf::new(&mut more[..PREFACE.len() - len]);
            ready!(self.poll_read_io(cx, &mut buf))?;
            let n = buf.filled().len();
            if n == 0 {
                // The client closed: hyper will see the end too, and close quietly.
                return Poll::Ready(Ok(Protocol::Http1));
            }
            self.sniffed[len..len + n].copy_from_slice(&more[..n]);
            self.sniffed_len += n as u8;
        }
    }

    /// Reads from the socket through the guard; the timeouts are the caller's.
    fn poll_read_guarded(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = ready!(Pin::new(&mut self.io).poll_read(cx, buf));
        if read.is_ok() && buf.filled().len() > before {
            self.on_read(&mut buf.filled_mut()[before..]);
        }
        Poll::Ready(read)
    }

    /// Reads from the socket, through the guard and the timeouts.
    fn poll_read_io(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Poll::Ready(read) = self.poll_read_guarded(cx, buf) {
            return Poll::Ready(read);
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            match self.on_timer() {
                Ok(()) => continue,
                Err(Expired::Idle) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "idle timeout",
                    )));
                }
                Err(Expired::Header) => {
                    // Best effort: nothing of this request has been answered yet, so a
                    // 408 is a well-formed reply; if the socket will not take it now,
                    // the connection closes without it.
                    let _ = Pin::new(&mut self.io).poll_write(cx, REQUEST_TIMEOUT);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request header timeout",
                    )));
                }
            }
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let (taken, len) = (
            usize::from(this.sniffed_taken),
            usize::from(this.sniffed_len),
        );
        if taken == len {
            if this.inspector.between_requests() {
                // hyper reads between requests only once the last one is answered.
                this.exchanging = false;
                this.more_behind = false;
            }
            if let Some(error) = this.deferred.take() {
                return Poll::Ready(Err(error));
            }
            return this.poll_read_io(cx, buf);
        }
        let n = (len - taken).min(buf.remaining());
        buf.put_slice(&this.sniffed[taken..taken + n]);
        this.sniffed_taken += n as u8;
        if taken + n == len && buf.remaining() > 0 {
            // Read on in the same call, so that hyper gets the rest of the head with the first
            // bytes: a first read of only these makes hyper double its read buffer (8 to 16
            // KiB per connection). What is not there yet, or an error, is for the next read.
            if let Poll::Ready(Err(error)) = this.poll_read_guarded(cx, buf) {
                this.deferred = Some(error);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Peek + Unpin> AsyncWrite for ClientIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.io).poll_write(cx, buf));
        this.on_write(&written);
        Poll::Ready(written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(coalesce::poll_write_vectored(&mut this.io, cx, bufs));
        this.on_write(&written);
        Poll::Ready(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        this.poll_hang_up(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<T: Peek> ClientIo<T> {
    /// Fails once the client has hung up while its request is being answered (the socket's end,
    /// or a reset, is next to read); that ends the connection and with it the request, as hyper
    /// does when it notices. Asked on every flush: hyper flushes each time the connection's task
    /// runs, so this registers the task to be woken when the socket has something to read.
    /// Bytes of a next request (pipelining) are left for hyper and end the watch for this
    /// exchange. nginx looks the same way, with a one-byte `MSG_PEEK` (`ngx_http_test_reading`).
    ///
    /// Only once the request has been read whole, as the framing guard follows it: while its
    /// body is still arriving hyper reads it, and sees an end itself.
    fn poll_hang_up(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.exchanging || self.more_behind || !self.inspector.between_requests() {
            return Poll::Ready(Ok(()));
        }
        let mut byte = [0; 1];
        match self.io.poll_peek(cx, &mut ReadBuf::new(&mut byte)) {
            Poll::Pending => Poll::Ready(Ok(())),
            Poll::Ready(Ok(0)) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the client hung up before its answer",
            ))),
            Poll::Ready(Ok(_)) => {
                self.more_behind = true;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
        }
    }
}

impl<T> ClientIo<T> {
    fn on_write(&mut self, written: &io::Result<usize>) {
        if matches!(written, Ok(n) if *n > 0) {
            self.answering = false;
            self.last_active = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    fn client_io(io: tokio::io::DuplexStream) -> ClientIo<tokio::io::DuplexStream> {
        let timeouts = ClientTimeouts {
            idle: Duration::from_secs(5),
            header: Duration::from_secs(5),
        };
        ClientIo::new(io, 32 * 1024, timeouts)
    }

    #[tokio::test]
    async fn http1_is_told_at_the_first_byte_and_its_bytes_read_again_with_what_follows() {
        let (mut client, server) = duplex(1024);
        let mut io = client_io(server);
        let request = b"GET /a HTTP/1.1\r\nHost: a\r\nX-Long: 0123456789\r\n\r\n";
        client.write_all(&request[..30]).await.unwrap();
        assert_eq!(io.sniff().await.unwrap(), Protocol::Http1);
        client.write_all(&request[30..]).await.unwrap();
        // One read: the sniffed bytes and the rest that had arrived, as hyper wants them.
        let mut buf = [0; 1024];
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &request[..]);
    }

    #[tokio::test]
    async fn the_http2_preface_is_waited_for_across_reads() {
        let (mut client, server) = duplex(1024);
        let mut io = client_io(server);
        let sniffing = tokio::spawn(async move {
            let protocol = io.sniff().await.unwrap();
            (protocol, io)
        });
        client.write_all(&PREFACE[..5]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!sniffing.is_finished(), "decided on a partial preface");
        client.write_all(&PREFACE[5..]).await.unwrap();
        client.write_all(b"frames").await.unwrap();
        let (protocol, mut io) = sniffing.await.unwrap();
        assert_eq!(protocol, Protocol::Http2);
        let mut read = Vec::new();
        let mut buf = [0; 7];
        while read.len() < PREFACE.len() + 6 {
            let n = io.read(&mut buf).await.unwrap();
            read.extend_from_slice(&buf[..n]);
        }
        assert_eq!(&read[..PREFACE.len()], &PREFACE[..]);
        assert_eq!(&read[PREFACE.len()..], b"frames");
    }

    /// Reads `data` once, then fails with a reset.
    struct ResetAfter(Option<&'static [u8]>);

    impl AsyncRead for ResetAfter {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            match self.0.take() {
                Some(data) => {
                    buf.put_slice(data);
                    Poll::Ready(Ok(()))
                }
                None => Poll::Ready(Err(io::ErrorKind::ConnectionReset.into())),
            }
        }
    }

    impl AsyncWrite for ResetAfter {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn an_error_right_after_the_sniffed_bytes_comes_with_the_next_read() {
        let timeouts = ClientTimeouts {
            idle: Duration::from_secs(5),
            header: Duration::from_secs(5),
        };
        let head = b"GET / HTTP/1.1\r\nHost: a";
        let mut io = ClientIo::new(ResetAfter(Some(head)), 1024, timeouts);
        assert_eq!(io.sniff().await.unwrap(), Protocol::Http1);
        let mut buf = [0; 64];
        assert_eq!(io.read(&mut buf).await.unwrap(), head.len());
        let error = io.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
    }

    #[tokio::test]
    async fn a_partial_preface_that_turns_out_otherwise_is_http1_and_an_empty_connection_too() {
        let (mut client, server) = duplex(1024);
        let mut io = client_io(server);
        client.write_all(b"PRI * HTTP/1.1\r\n").await.unwrap();
        assert_eq!(io.sniff().await.unwrap(), Protocol::Http1);

        let (client, server) = duplex(1024);
        let mut io = client_io(server);
        drop(client);
        assert_eq!(io.sniff().await.unwrap(), Protocol::Http1);
        assert_eq!(io.read(&mut [0; 8]).await.unwrap(), 0);
    }

    /// A connection over loopback: the client's end, and ours as the server wraps it.
    async fn tcp_pair() -> (tokio::net::TcpStream, ClientIo<tokio::net::TcpStream>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let timeouts = ClientTimeouts {
            idle: Duration::from_secs(5),
            header: Duration::from_secs(5),
        };
        (client, ClientIo::new(server, 32 * 1024, timeouts))
    }

    /// Flushes `io` as hyper does each time the connection's task runs, until a flush fails or
    /// `within` passes; the error, if one did.
    async fn flush_fails_within(
        io: &mut ClientIo<tokio::net::TcpStream>,
        within: Duration,
    ) -> Option<io::Error> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Err(error) = io.flush().await {
                return Some(error);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    #[tokio::test]
    async fn a_client_that_hangs_up_while_answered_fails_the_connection() {
        let (mut client, mut io) = tcp_pair().await;
        let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        client.write_all(request).await.unwrap();
        assert_eq!(io.sniff().await.unwrap(), Protocol::Http1);
        io.read_exact(&mut vec![0; request.len()]).await.unwrap();
        assert!(
            flush_fails_within(&mut io, Duration::from_millis(100))
                .await
                .is_none(),
            "a client waiting for its answer is not gone"
        );
        drop(client);
        let error = flush_fails_within(&mut io, Duration::from_secs(2))
            .await
            .expect("the hang-up was not noticed");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
    }

    #[tokio::test]
    async fn a_pipelined_request_a_finished_exchange_or_a_body_on_its_way_is_no_hang_up() {
        let quiet = Duration::from_millis(300);
        // The next request waits behind the one being answered; hyper reads it afterwards, and
        // would not look for the client's end meanwhile either.
        let (mut client, mut io) = tcp_pair().await;
        let first = b"GET /1 HTTP/1.1\r\n\r\n";
        client.write_all(first).await.unwrap();
        io.read_exact(&mut vec![0; first.len()]).await.unwrap();
        client.write_all(b"GET /2 HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(flush_fails_within(&mut io, quiet).await.is_none());
        drop(client);
        assert!(flush_fails_within(&mut io, quiet).await.is_none());

        // Answered, and hyper reading for the next request: an end now is a close, which hyper
        // sees itself.
        let (mut client, mut io) = tcp_pair().await;
        let request = b"GET / HTTP/1.1\r\n\r\n";
        client.write_all(request).await.unwrap();
        io.read_exact(&mut vec![0; request.len()]).await.unwrap();
        io.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        let nothing_yet = tokio::time::timeout(quiet, io.read(&mut [0; 1024])).await;
        assert!(nothing_yet.is_err());
        drop(client);
        assert!(flush_fails_within(&mut io, quiet).await.is_none());

        // A body still arriving: hyper reads it, and sees it cut short itself.
        let (mut client, mut io) = tcp_pair().await;
        let partial = b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc";
        client.write_all(partial).await.unwrap();
        io.read_exact(&mut vec![0; partial.len()]).await.unwrap();
        drop(client);
        assert!(flush_fails_within(&mut io, quiet).await.is_none());
    }

    mod properties {
        use proptest::collection::vec;
        use proptest::prelude::*;
        use proptest::sample::Index;

        use super::*;

        /// Streams that begin with all of the preface, part of it, or anything at all.
        fn stream() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                vec(any::<u8>(), 0..64),
                vec(any::<u8>(), 0..64).prop_map(|rest| [&PREFACE[..], &rest].concat()),
                (0..PREFACE.len(), vec(any::<u8>(), 0..8)).prop_map(|(n, rest)| [
                    &PREFACE[..n],
                    &rest
                ]
                .concat()),
            ]
        }

        proptest! {
            /// Whatever a client sends, in whatever reads: HTTP/2 exactly when it begins with
            /// the whole preface, and hyper reads every byte back, in order, none twice.
            #[test]
            fn the_protocol_is_told_and_every_byte_handed_on(
                stream in stream(),
                at in vec(any::<Index>(), 0..4),
            ) {
                let mut cuts: Vec<usize> = at.iter().map(|i| i.index(stream.len() + 1)).collect();
                cuts.sort_unstable();
                cuts.push(stream.len());
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .unwrap();
                let (protocol, read) = runtime.block_on(async {
                    let (mut client, server) = duplex(4096);
                    let mut io = client_io(server);
                    let pieces = cuts.iter().scan(0, |start, &end| {
                        let piece = &stream[*start..end];
                        *start = end;
                        Some(piece)
                    });
                    let write = async {
                        for piece in pieces {
                            client.write_all(piece).await.unwrap();
                            tokio::task::yield_now().await;
                        }
                        drop(client);
                    };
                    let read = async {
                        let protocol = io.sniff().await.unwrap();
                        let mut read = Vec::new();
                        io.read_to_end(&mut read).await.unwrap();
                        (protocol, read)
                    };
                    tokio::join!(write, read).1
                });
                let expected = if stream.starts_with(PREFACE) {
                    Protocol::Http2
                } else {
                    Protocol::Http1
                };
                prop_assert_eq!(protocol, expected);
                prop_assert_eq!(read, stream);
            }
        }
    }
}
