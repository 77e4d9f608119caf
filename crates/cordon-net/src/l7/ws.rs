//! Bridging an upgraded connection (WebSocket) between the sandbox and the
//! real server.
//!
//! Sandbox-to-server bytes pass unchanged: WebSocket clients mask their
//! frames, so placeholders cannot be looked for (or injected) there. In the
//! server-to-sandbox direction real secret values are replaced by `*` bytes of
//! the same length, so frame lengths stay valid. Bytes held back because they
//! might begin a value are released after a short quiet period, so a quiet
//! stream does not stall; the cost is that a value split across two writes
//! more than that period apart, or across two frames, is not masked.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::scrub::{Mode, Needle, Scrubber};

/// How long held-back bytes wait for the rest of a possible secret value.
const HOLD_BACK: Duration = Duration::from_millis(50);

/// Runs until both directions are closed or idle for `idle`; returns the
/// bytes carried (sandbox to server, server to sandbox).
pub(crate) async fn bridge(
    down: OnUpgrade,
    up: OnUpgrade,
    needles: &Arc<[Needle]>,
    idle: Duration,
) -> (u64, u64) {
    let (Ok(down), Ok(up)) = tokio::join!(down, up) else {
        return (0, 0);
    };
    let (mut down_r, mut down_w) = tokio::io::split(TokioIo::new(down));
    let (mut up_r, mut up_w) = tokio::io::split(TokioIo::new(up));
    let activity = Activity::new(idle);
    let to_server = copy(&mut down_r, &mut up_w, None, &activity);
    let to_sandbox = copy(
        &mut up_r,
        &mut down_w,
        Some(Scrubber::new(needles, Mode::Mask)),
        &activity,
    );
    tokio::join!(to_server, to_sandbox)
}

/// When data last moved in either direction.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    idle: Duration,
}

impl Activity {
    fn new(idle: Duration) -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            idle,
        }
    }
    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn expired(&self) -> bool {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last) >= self.idle
    }
}

/// Copies until EOF, an error, or `idle` without data in either direction;
/// then shuts `w` down.
async fn copy<R, W>(r: &mut R, w: &mut W, mut scrub: Option<Scrubber>, activity: &Activity) -> u64
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 << 10];
    let mut total = 0u64;
    loop {
        let holding = scrub.as_ref().is_some_and(Scrubber::holding);
        let wait = if holding { HOLD_BACK } else { activity.idle };
        let n = match tokio::time::timeout(wait, r.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => 0,
            Err(_) if holding => {
                if let Some(s) = scrub.as_mut() {
                    let rest = s.flush();
                    if w.write_all(&rest).await.is_err() {
                        break;
                    }
                    total += rest.len() as u64;
                    let _ = w.flush().await;
                }
                continue;
            }
            Err(_) if !activity.expired() => continue,
            Err(_) => 0,
        };
        if n == 0 {
            if let Some(s) = scrub.as_mut() {
                let rest = s.flush();
                if w.write_all(&rest).await.is_ok() {
                    total += rest.len() as u64;
                }
            }
            break;
        }
        activity.touch();
        let out = match scrub.as_mut() {
            Some(s) => s.push(&buf[..n]),
            None => bytes::Bytes::copy_from_slice(&buf[..n]),
        };
        if w.write_all(&out).await.is_err() || w.flush().await.is_err() {
            break;
        }
        total += out.len() as u64;
    }
    let _ = w.shutdown().await;
    total
}
