//! Non-blocking frame I/O on a [`Link`]: readiness from tokio, frames in
//! batches. A TAP fd gives one frame per `read(2)`; a QEMU stream gives
//! length-prefixed frames in whatever chunks the socket delivers.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::Link;
use super::framing::{HEADER_LEN, MAX_STREAM_FRAME, RxBuf, TxBuf};

/// Read buffer of a stream link: several frames per `read(2)`.
const STREAM_RX_BUFFER: usize = 512 * 1024;

pub(crate) enum LinkIo {
    Tap {
        fd: AsyncFd<OwnedFd>,
        scratch: Box<[u8]>,
    },
    Stream {
        sock: tokio::net::UnixStream,
        rx: RxBuf,
    },
}

/// How a batch of reads ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadEnd {
    /// Nothing more to read now.
    Drained,
    /// The batch budget ran out with frames still waiting.
    Budget,
    /// The sandbox side closed the link.
    Closed,
}

impl LinkIo {
    /// Registers `link` with the current tokio runtime.
    pub(crate) fn new(link: Link) -> io::Result<Self> {
        match link {
            Link::Tap(fd) => {
                set_nonblocking(&fd)?;
                // SAFETY: an `OwnedFd` stays open and returns the same descriptor
                // from `as_raw_fd` until it is dropped, which only the `AsyncFd` does.
                let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
                Ok(LinkIo::Tap {
                    fd,
                    scratch: vec![0; HEADER_LEN + MAX_STREAM_FRAME].into_boxed_slice(),
                })
            }
            Link::QemuStream(sock) => {
                sock.set_nonblocking(true)?;
                Ok(LinkIo::Stream {
                    sock: tokio::net::UnixStream::from_std(sock)?,
                    rx: RxBuf::new(STREAM_RX_BUFFER),
                })
            }
        }
    }

    /// Waits until the link may have frames to read.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        match self {
            // Dropping the guard keeps the readiness; `try_io` clears it on EAGAIN.
            LinkIo::Tap { fd, .. } => fd.readable().await.map(drop),
            LinkIo::Stream { sock, .. } => sock.readable().await,
        }
    }

    /// Waits until the link may accept more frames.
    pub(crate) async fn writable(&self) -> io::Result<()> {
        match self {
            LinkIo::Tap { fd, .. } => fd.writable().await.map(drop),
            LinkIo::Stream { sock, .. } => sock.writable().await,
        }
    }

    /// Reads up to `budget` frames without blocking, handing each to `each`.
    pub(crate) fn read_frames(
        &mut self,
        budget: usize,
        mut each: impl FnMut(&[u8]),
    ) -> io::Result<ReadEnd> {
        match self {
            LinkIo::Tap { fd, scratch } => {
                for _ in 0..budget {
                    let n = match fd.try_io(Interest::READABLE, |fd| read(fd, scratch)) {
                        Ok(0) => return Ok(ReadEnd::Closed),
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            return Ok(ReadEnd::Drained);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    };
                    each(&scratch[..n]);
                }
                Ok(ReadEnd::Budget)
            }
            LinkIo::Stream { sock, rx } => {
                let mut left = budget;
                loop {
                    while left > 0 {
                        match rx.next_frame() {
                            Ok(Some(frame)) => {
                                each(frame);
                                left -= 1;
                            }
                            Ok(None) => break,
                            Err(e) => {
                                return Err(io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    e.to_string(),
                                ));
                            }
                        }
                    }
                    if left == 0 {
                        return Ok(ReadEnd::Budget);
                    }
                    match sock.try_read(rx.spare()) {
                        Ok(0) => return Ok(ReadEnd::Closed),
                        Ok(n) => rx.filled(n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            return Ok(ReadEnd::Drained);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// Writes as much of `tx` as the link takes without blocking; returns
    /// the number of frames a TAP device refused (they are dropped).
    pub(crate) fn flush(&mut self, tx: &mut TxBuf) -> io::Result<u64> {
        let mut refused = 0;
        match self {
            LinkIo::Tap { fd, .. } => {
                while let Some(frame) = tx.next_frame() {
                    let len = frame.len();
                    match fd.try_io(Interest::WRITABLE, |fd| write(fd, frame)) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        // The interface is down (EIO) or the frame was refused
                        // (EINVAL): the frame is lost, as on a real wire.
                        Err(e) if matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) => {
                            refused += 1;
                        }
                        Err(e) => return Err(e),
                    }
                    tx.advance(HEADER_LEN + len);
                }
            }
            LinkIo::Stream { sock, .. } => {
                while !tx.is_empty() {
                    match sock.try_write(tx.pending()) {
                        Ok(0) => {
                            return Err(io::Error::new(
                                io::ErrorKind::WriteZero,
                                "the QEMU stream socket accepts no more bytes",
                            ));
                        }
                        Ok(n) => tx.advance(n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(refused)
    }
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no memory is passed.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn read(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn write(fd: &OwnedFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the whole call.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}
