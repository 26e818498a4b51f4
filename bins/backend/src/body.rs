//! Response bodies: small texts, and two generated bodies that keep memory flat for any size.

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use tokio::time::Sleep;

/// The body type of every response.
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The largest data frame a generated body sends.
pub(crate) const CHUNK: usize = 64 * 1024;

/// What `/bytes/<n>` sends, a chunk at a time: `x` repeated.
static FILL: [u8; CHUNK] = [b'x'; CHUNK];

/// A body of bytes or text held in memory.
pub(crate) fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).boxed_unsync()
}

/// Any body of ours, boxed.
pub(crate) fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes, Error = Infallible> + Send + 'static,
{
    body.boxed_unsync()
}

/// An empty body.
pub(crate) fn empty() -> Body {
    full(Bytes::new())
}

/// Exactly `len` bytes, sent in frames of up to [`CHUNK`] bytes that borrow one static buffer.
///
/// Its size hint is exact, so hyper sends `content-length: len`.
#[derive(Debug)]
pub(crate) struct Filler {
    remaining: u64,
}

impl Filler {
    pub(crate) fn new(len: u64) -> Self {
        Self { remaining: len }
    }
}

impl http_body::Body for Filler {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = usize::try_from(self.remaining).map_or(CHUNK, |r| r.min(CHUNK));
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&FILL[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// `chunk 1\n` .. `chunk <count>\n`, each as its own data frame, `interval` apart; the first
/// is ready at once.
///
/// Its size is unknown up front, so HTTP/1.1 sends it chunked.
#[derive(Debug)]
pub(crate) struct Ticker {
    next: u64,
    count: u64,
    interval: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Ticker {
    pub(crate) fn new(count: u64, interval: Duration) -> Self {
        Self {
            next: 1,
            count,
            interval,
            sleep: None,
        }
    }
}

impl http_body::Body for Ticker {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.next > self.count {
            return Poll::Ready(None);
        }
        if let Some(sleep) = self.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        let chunk = Bytes::from(format!("chunk {}\n", self.next));
        self.next += 1;
        if self.next <= self.count {
            self.sleep = Some(Box::pin(tokio::time::sleep(self.interval)));
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.next > self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn filler_sends_exactly_len_bytes_in_bounded_frames() {
        let len = 3 * CHUNK as u64 + 17;
        let mut body = Filler::new(len);
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(len));
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            let data = frame.expect("infallible").into_data().expect("data frame");
            assert!(data.len() <= CHUNK);
            total += data.len() as u64;
        }
        assert_eq!(total, len);
    }

    #[tokio::test]
    async fn ticker_numbers_its_chunks() {
        let mut body = Ticker::new(3, Duration::ZERO);
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            frames.push(frame.expect("infallible").into_data().expect("data frame"));
        }
        assert_eq!(frames, ["chunk 1\n", "chunk 2\n", "chunk 3\n"]);
        assert!(http_body::Body::is_end_stream(&Ticker::new(
            0,
            Duration::ZERO
        )));
    }
}
