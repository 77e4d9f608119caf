//! Frame buffers between the link and smoltcp, in QEMU's `-netdev stream`
//! format: each frame preceded by its length as a 4-byte big-endian integer.
//!
//! Outgoing frames are stored in that format whatever the link, so smoltcp
//! writes each frame in place once: a stream link sends the buffer as it is,
//! a TAP link writes the frames one by one.

use std::fmt;

/// Bytes of the length prefix.
pub(crate) const HEADER_LEN: usize = 4;
/// Longest frame the stream codec accepts: a maximal IPv4 packet plus an
/// Ethernet header. Anything longer means a broken or hostile peer.
pub(crate) const MAX_STREAM_FRAME: usize = 65_535 + 14;

/// A length prefix over [`MAX_STREAM_FRAME`]: the stream cannot be trusted any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameTooLong(pub usize);

impl fmt::Display for FrameTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the QEMU stream announced a {}-byte frame (at most {MAX_STREAM_FRAME} allowed); closing the link",
            self.0
        )
    }
}

/// Finds the first complete frame in `buf`: `Ok(Some((start, end)))` with the
/// frame at `buf[start..end]` (the next frame starts at `end`), `Ok(None)` if
/// more bytes are needed.
pub(crate) fn decode(buf: &[u8]) -> Result<Option<(usize, usize)>, FrameTooLong> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > MAX_STREAM_FRAME {
        return Err(FrameTooLong(len));
    }
    let end = HEADER_LEN + len;
    Ok((buf.len() >= end).then_some((HEADER_LEN, end)))
}

/// Most unwritten bytes kept: a peer that sends but never reads loses the
/// replies beyond this (smoltcp's sockets stop earlier, see `device`).
const TX_LIMIT: usize = 4 * 1024 * 1024;

/// Frames waiting to be written to the link.
pub(crate) struct TxBuf {
    buf: Vec<u8>,
    head: usize,
    frames: u64,
    /// Frames discarded because the buffer was over [`TX_LIMIT`].
    pub(crate) discarded: u64,
    scratch: Vec<u8>,
}

impl TxBuf {
    pub(crate) fn new() -> Self {
        Self {
            buf: Vec::with_capacity(256 * 1024),
            head: 0,
            frames: 0,
            discarded: 0,
            scratch: Vec::new(),
        }
    }

    /// Appends a `len`-byte frame that `fill` writes in place.
    pub(crate) fn push_with<R>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> R {
        if self.buf.len() - self.head >= TX_LIMIT {
            self.discarded += 1;
            self.scratch.clear();
            self.scratch.resize(len, 0);
            return fill(&mut self.scratch);
        }
        if self.head == self.buf.len() {
            self.buf.clear();
            self.head = 0;
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(&(len as u32).to_be_bytes());
        self.buf.resize(start + HEADER_LEN + len, 0);
        self.frames += 1;
        fill(&mut self.buf[start + HEADER_LEN..])
    }

    /// Bytes not yet written (stream format).
    pub(crate) fn pending(&self) -> &[u8] {
        &self.buf[self.head..]
    }

    /// The next unwritten frame without its prefix (for TAP), if a whole one is pending.
    pub(crate) fn next_frame(&self) -> Option<&[u8]> {
        let (start, end) = decode(self.pending()).ok()??;
        Some(&self.pending()[start..end])
    }

    /// Marks `n` more bytes (prefixes included) as written.
    pub(crate) fn advance(&mut self, n: usize) {
        self.head = (self.head + n).min(self.buf.len());
        if self.head == self.buf.len() {
            self.buf.clear();
            self.head = 0;
        } else if self.head > 1024 * 1024 {
            self.buf.drain(..self.head);
            self.head = 0;
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.head == self.buf.len()
    }

    /// Frames pushed so far.
    pub(crate) fn frames(&self) -> u64 {
        self.frames
    }
}

/// Bytes read from a stream link, not yet cut into frames.
pub(crate) struct RxBuf {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl RxBuf {
    pub(crate) fn new(capacity: usize) -> Self {
        assert!(capacity >= HEADER_LEN + MAX_STREAM_FRAME);
        Self {
            buf: vec![0; capacity].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// The next complete frame, if any; consumed by the call.
    pub(crate) fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameTooLong> {
        match decode(&self.buf[self.start..self.end])? {
            Some((s, e)) => {
                let frame = self.start + s..self.start + e;
                self.start += e;
                Ok(Some(&self.buf[frame]))
            }
            None => Ok(None),
        }
    }

    /// Room to read more bytes into (moves a partial frame to the front first).
    pub(crate) fn spare(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.buf.len() - self.end < HEADER_LEN + MAX_STREAM_FRAME {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were read into [`RxBuf::spare`].
    pub(crate) fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(frames: &[&[u8]]) -> Vec<u8> {
        let mut tx = TxBuf::new();
        for f in frames {
            tx.push_with(f.len(), |b| b.copy_from_slice(f));
        }
        tx.pending().to_vec()
    }

    #[test]
    fn encodes_big_endian_length_prefix() {
        assert_eq!(encode(&[b"abc"]), [0, 0, 0, 3, b'a', b'b', b'c']);
    }

    #[test]
    fn decodes_frames_split_anywhere() {
        let frames: Vec<Vec<u8>> = (1..50).map(|n| vec![n as u8; n * 31]).collect();
        let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
        let wire = encode(&refs);
        for chunk in [1, 3, 7, 1000, wire.len()] {
            let mut rx = RxBuf::new(HEADER_LEN + MAX_STREAM_FRAME);
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                let spare = rx.spare();
                spare[..piece.len()].copy_from_slice(piece);
                rx.filled(piece.len());
                while let Some(f) = rx.next_frame().unwrap() {
                    got.push(f.to_vec());
                }
            }
            assert_eq!(got, frames, "chunk size {chunk}");
        }
    }

    #[test]
    fn rejects_oversize_length() {
        let mut wire = ((MAX_STREAM_FRAME + 1) as u32).to_be_bytes().to_vec();
        wire.extend_from_slice(&[0; 16]);
        assert_eq!(decode(&wire), Err(FrameTooLong(MAX_STREAM_FRAME + 1)));
        let huge = u32::MAX.to_be_bytes();
        assert_eq!(decode(&huge), Err(FrameTooLong(u32::MAX as usize)));
        // The largest allowed length is only incomplete, not an error.
        let max = (MAX_STREAM_FRAME as u32).to_be_bytes();
        assert_eq!(decode(&max), Ok(None));
    }

    #[test]
    fn tx_frames_for_tap_and_partial_stream_writes() {
        let mut tx = TxBuf::new();
        tx.push_with(2, |b| b.copy_from_slice(b"hi"));
        tx.push_with(3, |b| b.copy_from_slice(b"abc"));
        assert_eq!(tx.next_frame(), Some(&b"hi"[..]));
        tx.advance(HEADER_LEN + 2);
        assert_eq!(tx.next_frame(), Some(&b"abc"[..]));
        tx.advance(5);
        assert_eq!(tx.pending(), b"bc");
        tx.advance(2);
        assert!(tx.is_empty());
        assert_eq!(tx.frames(), 2);
    }

    #[test]
    fn tx_buffer_is_bounded() {
        let mut tx = TxBuf::new();
        for _ in 0..(TX_LIMIT / 1000 + 10) {
            tx.push_with(1000, |b| b.fill(7));
        }
        assert!(tx.pending().len() < TX_LIMIT + 1100);
        assert!(tx.discarded > 0);
        tx.advance(tx.pending().len());
        tx.push_with(3, |b| b.copy_from_slice(b"new"));
        assert_eq!(tx.next_frame(), Some(&b"new"[..]));
    }
}
