//! The gateway's control socket: how `cordon pending`, `cordon approve` and
//! `cordon deny` reach a running session's gateway.
//!
//! A Unix stream socket in the session directory (mode 0600, outside the
//! sandbox's view). Each connection carries one request line and gets one
//! answer line, both JSON:
//!
//! ```text
//! {"op":"pending"}                      -> {"ok":true,"pending":[...]}
//! {"op":"decide","id":7,"allow":true}   -> {"ok":true} | {"ok":false,"error":"..."}
//! {"op":"stats"}                        -> {"ok":true,"stats":{...}}
//! ```
//!
//! Only the user running the session (or root) may talk to it: the socket's
//! mode says so, and the server checks the peer's credentials as well.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use crate::l7::{Gateway, GatewayStats};

/// What the `stats` request answers with.
pub type StatsFn = Arc<dyn Fn() -> GatewayStats + Send + Sync>;

/// Name of the socket file in the session directory.
pub const SOCKET_FILE: &str = "gateway.sock";

/// Longest request line the server reads.
const MAX_REQUEST: u64 = 4096;
/// How long one client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Request {
    Pending,
    Decide { id: u64, allow: bool },
    Stats,
}

/// Binds the socket at `path` (replacing a stale one) and serves it until the
/// runtime stops; `stats` answers the `stats` request (the gateway's and the
/// stack's counters). Must be called inside a tokio runtime.
pub fn serve(gateway: Arc<Gateway>, stats: StatsFn, path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Created with the process umask, then narrowed before anyone is told
    // where it is (the session directory is not shared either).
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let me = current_uid();
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of descriptors, say: wait instead of spinning.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let allowed = stream
                .peer_cred()
                .map(|c| c.uid() == me || c.uid() == 0)
                .unwrap_or(false);
            if !allowed {
                continue;
            }
            let (gateway, stats) = (gateway.clone(), stats.clone());
            tokio::spawn(async move {
                let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(gateway, stats, stream)).await;
            });
        }
    });
    Ok(())
}

fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

async fn answer(
    gateway: Arc<Gateway>,
    stats: StatsFn,
    stream: tokio::net::UnixStream,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST))
        .read_line(&mut line)
        .await?;
    let reply = match serde_json::from_str::<Request>(line.trim_end()) {
        Err(e) => json!({ "ok": false, "error": format!("bad request: {e}") }),
        Ok(Request::Pending) => json!({ "ok": true, "pending": gateway.pending() }),
        Ok(Request::Stats) => json!({ "ok": true, "stats": stats() }),
        Ok(Request::Decide { id, allow }) => {
            if gateway.decide(id, allow) {
                json!({ "ok": true })
            } else {
                json!({
                    "ok": false,
                    "error": format!("no request {id} is waiting (it was decided already, or timed out)")
                })
            }
        }
    };
    let mut bytes = serde_json::to_vec(&reply).unwrap_or_default();
    bytes.push(b'\n');
    write.write_all(&bytes).await?;
    write.shutdown().await
}

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nobody listens: the session is not running (or has no network).
    #[error("the session's gateway is not running (is the session still running, with network?)")]
    NotRunning,
    #[error("gateway control socket: {0}")]
    Io(#[from] std::io::Error),
    /// The gateway answered with an error.
    #[error("{0}")]
    Refused(String),
}

fn call(path: &Path, request: Value) -> Result<Value, ControlError> {
    let mut stream = match StdUnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ControlError::NotRunning);
        }
        Err(e) => return Err(e.into()),
    };
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut bytes = serde_json::to_vec(&request).unwrap_or_default();
    bytes.push(b'\n');
    stream.write_all(&bytes)?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(stream, 16 << 20)).read_line(&mut line)?;
    let reply: Value = serde_json::from_str(&line).map_err(|e| {
        ControlError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unreadable answer: {e}"),
        ))
    })?;
    if reply["ok"] == Value::Bool(true) {
        Ok(reply)
    } else {
        Err(ControlError::Refused(
            reply["error"].as_str().unwrap_or("refused").to_string(),
        ))
    }
}

/// The requests waiting for a decision at the gateway behind `path`.
pub fn pending(path: &Path) -> Result<Vec<Value>, ControlError> {
    let reply = call(path, json!({ "op": "pending" }))?;
    Ok(reply["pending"].as_array().cloned().unwrap_or_default())
}

/// Lets request `id` through (`allow`) or refuses it.
pub fn decide(path: &Path, id: u64, allow: bool) -> Result<(), ControlError> {
    call(path, json!({ "op": "decide", "id": id, "allow": allow })).map(|_| ())
}

/// The gateway's counters.
pub fn stats(path: &Path) -> Result<Value, ControlError> {
    Ok(call(path, json!({ "op": "stats" }))?["stats"].clone())
}
