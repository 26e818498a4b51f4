//! A client connection's byte stream, with the request smuggling guard and the two client
//! timeouts: idle keep-alive connections and slow request heads (slowloris).
//!
//! Both timeouts share one timer per connection, armed lazily: a busy connection moves no timer
//! per request (hyper's own header timeout, which does, cost ~4 % of a request's instructions).
//! The timer fires at the earliest deadline it may have to enforce, and only then looks at what
//! the connection did meanwhile.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::coalesce;
use crate::framing::Inspector;

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
        }
    }

    /// Follows freshly read bytes: the framing guard, and what the timers must watch next.
    fn on_read(&mut self, data: &mut [u8]) {
        self.inspector.inspect(data);
        if self.inspector.heads() != self.heads {
            self.heads = self.inspector.heads();
            self.answering = true;
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

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.on_read(&mut buf.filled_mut()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                while this.timer.as_mut().poll(cx).is_ready() {
                    match this.on_timer() {
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
                            let _ = Pin::new(&mut this.io).poll_write(cx, REQUEST_TIMEOUT);
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
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ClientIo<T> {
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
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
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
