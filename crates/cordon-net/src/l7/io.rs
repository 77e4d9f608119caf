//! Stream adapters for the sandbox side of a connection.
//!
//! * [`Metered`] counts bytes each way and closes a connection on which
//!   nothing moved for the idle timeout.
//! * [`Rewind`] replays the bytes read while sniffing the protocol.
//! * [`H1Guard`] follows HTTP/1.1 message framing on the bytes the sandbox
//!   sends, to catch what hyper hides from a service: a request head with
//!   both `Content-Length` and `Transfer-Encoding` (hyper drops the length
//!   and goes on, RFC 9112 §6.3; we refuse such connections outright, since
//!   the only clients that send them are smuggling attempts).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Byte counters shared between a connection and whoever reports on it.
#[derive(Default, Debug)]
pub(crate) struct ByteCounts {
    /// From the sandbox.
    pub(crate) up: AtomicU64,
    /// To the sandbox.
    pub(crate) down: AtomicU64,
}

pub(crate) struct Metered<S> {
    inner: S,
    counts: Arc<ByteCounts>,
    total: Arc<ByteCounts>,
    idle: Duration,
    last: Instant,
    timer: Pin<Box<Sleep>>,
}

impl<S> Metered<S> {
    /// `counts` for this connection, `total` for the gateway.
    pub(crate) fn new(
        inner: S,
        counts: Arc<ByteCounts>,
        total: Arc<ByteCounts>,
        idle: Duration,
    ) -> Metered<S> {
        let now = Instant::now();
        Metered {
            inner,
            counts,
            total,
            idle,
            last: now,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
        }
    }

    /// Ready with an error once the connection has been idle too long. The
    /// timer is re-armed lazily: activity only moves `last`.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            let deadline = self.last + self.idle;
            if deadline <= Instant::now() {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle for too long",
                ));
            }
            self.timer.as_mut().reset(deadline);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n > 0 {
                    this.counts.up.fetch_add(n as u64, Ordering::Relaxed);
                    this.total.up.fetch_add(n as u64, Ordering::Relaxed);
                    this.last = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.poll_idle(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                this.counts.down.fetch_add(n as u64, Ordering::Relaxed);
                this.total.down.fetch_add(n as u64, Ordering::Relaxed);
                this.last = Instant::now();
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.poll_idle(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A stream with some already-read bytes put back in front.
pub(crate) struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub(crate) fn new(prefix: Bytes, inner: S) -> Rewind<S> {
        Rewind { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

/// Writes go straight to the wrapped stream (`inner`) of a read-side wrapper.
macro_rules! write_through {
    ($wrapper:ident) => {
        impl<S: AsyncWrite + Unpin> AsyncWrite for $wrapper<S> {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                data: &[u8],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.get_mut().inner).poll_flush(cx)
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
            }
        }
    };
}

write_through!(Rewind);

/// Longest request head or chunk-size line the framing tracker follows;
/// hyper refuses longer heads itself.
const MAX_TRACKED_LINE: usize = 64 << 10;

#[derive(Debug, PartialEq, Eq)]
enum Framing {
    /// Reading a request head line by line.
    Head,
    /// Skipping a body of known length.
    Fixed(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    Trailers,
    /// Not HTTP/1.x (h2 preface, upgraded, or lost track): stop looking.
    Off,
}

/// Follows HTTP/1.x framing over the bytes a client sends and raises a flag
/// when a request head carries both `Content-Length` and
/// `Transfer-Encoding`, or conflicting `Content-Length`s.
pub(crate) struct Tracker {
    state: Framing,
    line: Vec<u8>,
    head_lines: usize,
    head_bytes: usize,
    has_te: bool,
    te_chunked: bool,
    lengths: Vec<u64>,
    bad_length: bool,
    connect: bool,
    flag: Arc<AtomicBool>,
}

impl Tracker {
    pub(crate) fn new(flag: Arc<AtomicBool>) -> Tracker {
        Tracker {
            state: Framing::Head,
            line: Vec::new(),
            head_lines: 0,
            head_bytes: 0,
            has_te: false,
            te_chunked: false,
            lengths: Vec::new(),
            bad_length: false,
            connect: false,
            flag,
        }
    }

    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                Framing::Off => return,
                Framing::Fixed(n) => {
                    let take = (n.min(data.len() as u64)) as usize;
                    data = &data[take..];
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        Framing::Head
                    } else {
                        Framing::Fixed(left)
                    };
                }
                Framing::ChunkData(n) => {
                    let take = (n.min(data.len() as u64)) as usize;
                    data = &data[take..];
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        Framing::ChunkEnd
                    } else {
                        Framing::ChunkData(left)
                    };
                }
                Framing::Head | Framing::ChunkSize | Framing::ChunkEnd | Framing::Trailers => {
                    let Some(nl) = memchr::memchr(b'\n', data) else {
                        self.push_line_bytes(data);
                        return;
                    };
                    self.push_line_bytes(&data[..nl]);
                    data = &data[nl + 1..];
                    if self.state == Framing::Off {
                        return;
                    }
                    let mut line = std::mem::take(&mut self.line);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    self.on_line(&line);
                }
            }
        }
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) {
        self.head_bytes += bytes.len();
        if self.line.len() + bytes.len() > MAX_TRACKED_LINE || self.head_bytes > MAX_TRACKED_LINE {
            self.state = Framing::Off;
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn on_line(&mut self, line: &[u8]) {
        match self.state {
            Framing::Head => self.on_head_line(line),
            Framing::ChunkSize => {
                let size = line.split(|b| *b == b';').next().unwrap_or(b"");
                let size = std::str::from_utf8(size)
                    .ok()
                    .and_then(|s| u64::from_str_radix(s.trim(), 16).ok());
                self.head_bytes = 0;
                self.state = match size {
                    Some(0) => Framing::Trailers,
                    Some(n) => Framing::ChunkData(n),
                    None => Framing::Off,
                };
            }
            Framing::ChunkEnd => {
                self.head_bytes = 0;
                self.state = if line.is_empty() {
                    Framing::ChunkSize
                } else {
                    Framing::Off
                };
            }
            Framing::Trailers if line.is_empty() => {
                self.head_bytes = 0;
                self.state = Framing::Head;
            }
            _ => {}
        }
    }

    fn on_head_line(&mut self, line: &[u8]) {
        if self.head_lines == 0 {
            if line.is_empty() {
                self.head_bytes = 0;
                return; // blank lines before a request are ignored
            }
            if line.starts_with(b"PRI * HTTP/2") {
                self.state = Framing::Off;
                return;
            }
            self.connect = line.starts_with(b"CONNECT ");
            self.head_lines = 1;
            return;
        }
        if !line.is_empty() {
            self.head_lines += 1;
            let Some(colon) = memchr::memchr(b':', line) else {
                return;
            };
            let name = line[..colon].trim_ascii();
            let value = line[colon + 1..].trim_ascii();
            if name.eq_ignore_ascii_case(b"transfer-encoding") {
                self.has_te = true;
                self.te_chunked = value
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if name.eq_ignore_ascii_case(b"content-length") {
                match std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()) {
                    Some(n) => self.lengths.push(n),
                    None => self.bad_length = true,
                }
            }
            return;
        }
        // End of the head.
        let conflicting = self.lengths.windows(2).any(|w| w[0] != w[1]);
        if (self.has_te && (!self.lengths.is_empty() || self.bad_length)) || conflicting {
            self.flag.store(true, Ordering::Relaxed);
        }
        self.state = if self.connect || self.bad_length || conflicting {
            Framing::Off
        } else if self.has_te {
            if self.te_chunked {
                Framing::ChunkSize
            } else {
                Framing::Off
            }
        } else {
            match self.lengths.first() {
                Some(0) | None => Framing::Head,
                Some(n) => Framing::Fixed(*n),
            }
        };
        self.head_lines = 0;
        self.head_bytes = 0;
        self.has_te = false;
        self.te_chunked = false;
        self.lengths.clear();
        self.connect = false;
    }
}

/// A stream whose inbound bytes pass through a [`Tracker`] (when enabled).
pub(crate) struct H1Guard<S> {
    inner: S,
    tracker: Option<Tracker>,
}

impl<S> H1Guard<S> {
    pub(crate) fn new(inner: S, flag: Option<Arc<AtomicBool>>) -> H1Guard<S> {
        H1Guard {
            inner,
            tracker: flag.map(Tracker::new),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for H1Guard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Some(t) = &mut this.tracker {
            t.feed(&buf.filled()[before..]);
        }
        Poll::Ready(Ok(()))
    }
}

write_through!(H1Guard);

#[cfg(test)]
mod tests {
    use super::*;

    fn flagged(chunks: &[&[u8]]) -> bool {
        let flag = Arc::new(AtomicBool::new(false));
        let mut t = Tracker::new(flag.clone());
        for c in chunks {
            t.feed(c);
        }
        flag.load(Ordering::Relaxed)
    }

    #[test]
    fn flags_length_and_chunked_together() {
        let evil = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert!(flagged(&[evil]));
        let evil2 = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 4\r\n\r\n";
        assert!(flagged(&[evil2]));
        let split: Vec<&[u8]> = evil.chunks(3).collect();
        assert!(flagged(&split));
        assert!(flagged(&[
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        ]));
    }

    #[test]
    fn follows_bodies_so_their_bytes_are_not_heads() {
        let body = b"x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut fixed =
            format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        fixed.extend_from_slice(body);
        fixed.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(!flagged(&[&fixed]));

        let mut chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        chunked.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
        chunked.extend_from_slice(body);
        chunked.extend_from_slice(b"\r\n0\r\nx-trailer: 1\r\n\r\n");
        chunked.extend_from_slice(b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(!flagged(&[&chunked]));
        let bytewise: Vec<&[u8]> = chunked.chunks(1).collect();
        assert!(!flagged(&bytewise));

        // ... and a smuggling attempt after a legitimate request is caught.
        chunked.extend_from_slice(
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert!(flagged(&[&chunked]));
    }

    #[test]
    fn stops_at_an_h2_preface() {
        assert!(!flagged(&[
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ]));
    }
}
