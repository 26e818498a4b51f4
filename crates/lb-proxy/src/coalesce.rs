//! Short vectored writes sent as one `send`.
//!
//! hyper writes a message's head and its body as separate buffers, with `writev`. On Linux a
//! `writev` costs the kernel more than a `send` of the same bytes (it goes through the VFS
//! layer): for small requests that was about 5 % of their CPU time, on both connections. So a
//! vectored write of at most [`MAX`] bytes is copied into one buffer on the stack and sent with
//! a plain write; a longer one keeps `writev` and copies nothing. (hyper's `writev(false)` gets
//! the small-message gain too, but copies every body byte: 10-20 % less throughput on 1 MiB
//! bodies.)

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The longest write that is copied into one buffer: copying it costs less than `writev`'s
/// overhead.
pub(crate) const MAX: usize = 2048;

/// Writes `bufs` to `io`: short ones as one plain write, see the [module docs](self).
pub(crate) fn poll_write_vectored<W: AsyncWrite + Unpin>(
    io: &mut W,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    let mut pieces = bufs.iter().filter(|buf| !buf.is_empty());
    if let (Some(only), None) = (pieces.next(), pieces.next()) {
        // One piece: a plain write, nothing to copy.
        return Pin::new(io).poll_write(cx, only);
    }
    let total: usize = bufs.iter().map(|buf| buf.len()).sum();
    if total > MAX {
        return Pin::new(io).poll_write_vectored(cx, bufs);
    }
    let mut joined = [0u8; MAX];
    let mut len = 0;
    for buf in bufs {
        joined[len..len + buf.len()].copy_from_slice(buf);
        len += buf.len();
    }
    Pin::new(io).poll_write(cx, &joined[..len])
}

/// A stream whose short vectored writes are [coalesced](self): for connections to backends.
#[derive(Debug)]
pub(crate) struct Coalesced<T>(pub(crate) T);

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        poll_write_vectored(&mut self.get_mut().0, cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Writes `pieces` with one vectored write and reads back what arrived.
    async fn through(pieces: &[&[u8]]) -> (usize, Vec<u8>) {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut a = Coalesced(a);
        let slices: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
        let written = a.write_vectored(&slices).await.unwrap();
        drop(a);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        (written, got)
    }

    #[tokio::test]
    async fn short_pieces_arrive_joined_in_order() {
        let (written, got) = through(&[b"HTTP/1.1 200 OK\r\n\r\n", b"", b"pong\n"]).await;
        assert_eq!(written, 24);
        assert_eq!(got, b"HTTP/1.1 200 OK\r\n\r\npong\n");
        let (written, got) = through(&[b"", b"only"]).await;
        assert_eq!((written, got.as_slice()), (4, &b"only"[..]));
        let exactly = vec![b'x'; MAX - 1];
        let (written, got) = through(&[b"y", &exactly]).await;
        assert_eq!(written, MAX);
        assert_eq!(got.len(), MAX);
    }

    #[tokio::test]
    async fn long_pieces_are_written_as_they_are() {
        let body = vec![7u8; 3 * MAX];
        let (written, got) = through(&[b"head\r\n\r\n", &body]).await;
        // A vectored write may take any prefix; whatever it took arrived, in order.
        assert!(written > 0 && written <= 8 + body.len());
        assert_eq!(&got[..8], b"head\r\n\r\n");
        assert!(got[8..].iter().all(|&b| b == 7));
        assert_eq!(got.len(), written);
    }
}
