//! Kill-switch propagation time, for `bench/flags` (not part of cordon itself).
//!
//! ```text
//! propagation --url http://127.0.0.1:4242 --admin-token T --client-token T
//!             [--flag kill-switch] [--project default] [--environment production]
//!             [--clients 100] [--flips 200]
//! ```
//!
//! Opens `--clients` streaming connections (`GET /api/client/streaming`, the
//! way the Unleash SDKs' streaming mode does), waits for every one's
//! `unleash-connected`, then `--flips` times switches the flag off and on
//! through the admin API (`POST .../features/FLAG/environments/ENV/off|on`) and
//! measures, for every client, the time from sending the admin request to that
//! client having read the `unleash-updated` event that carries the flag's new
//! state. One flip at a time: the next starts when every client has the
//! previous one. Prints one JSON line: percentiles over all (flip, client)
//! samples, of the slowest client per flip, and of the admin request's own
//! round trip, in milliseconds.
//!
//! The flag must exist in the project and environment; it starts switched on.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// How long one flip may take to reach every client before the run fails.
const FLIP_TIMEOUT: Duration = Duration::from_secs(10);

struct Options {
    addr: SocketAddr,
    admin_token: String,
    client_token: String,
    flag: String,
    project: String,
    environment: String,
    clients: usize,
    flips: usize,
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn number(args: &[String], name: &str, default: usize) -> Result<usize, Error> {
    match arg(args, name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|e| format!("{name} {v:?} is not a number: {e}").into()),
    }
}

async fn options() -> Result<Options, Error> {
    let args: Vec<String> = std::env::args().collect();
    let url = arg(&args, "--url").unwrap_or_else(|| "http://127.0.0.1:4242".into());
    let host = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--url {url:?}: only http:// URLs are supported"))?
        .trim_end_matches('/');
    let addr = tokio::net::lookup_host(host)
        .await
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host:?} resolves to no address"))?;
    let required = |name: &str| {
        arg(&args, name).ok_or_else(|| -> Error { format!("{name} is required").into() })
    };
    Ok(Options {
        addr,
        admin_token: required("--admin-token")?,
        client_token: required("--client-token")?,
        flag: arg(&args, "--flag").unwrap_or_else(|| "kill-switch".into()),
        project: arg(&args, "--project").unwrap_or_else(|| "default".into()),
        environment: arg(&args, "--environment").unwrap_or_else(|| "production".into()),
        clients: number(&args, "--clients", 100)?,
        flips: number(&args, "--flips", 200)?,
    })
}

/// One keep-alive HTTP/1.1 connection.
async fn connect(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, Error> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// What a streaming client reports to the coordinator.
enum Seen {
    /// `unleash-connected` arrived.
    Connected,
    /// The flag's new state arrived, at this instant.
    Flag { enabled: bool, at: Instant },
}

/// The flag's state if this `unleash-updated` payload carries it.
fn flag_state(data: &str, flag: &str) -> Option<bool> {
    let v: serde_json::Value = serde_json::from_str(data).ok()?;
    v["events"]
        .as_array()?
        .iter()
        .filter(|e| e["type"] == "feature-updated" && e["feature"]["name"] == flag)
        .filter_map(|e| e["feature"]["enabled"].as_bool())
        .next_back()
}

/// Reads one stream until it ends, reporting `unleash-connected` and every
/// state of `flag` it sees.
async fn stream_client(
    o: &Options,
    id: usize,
    tx: mpsc::UnboundedSender<(usize, Seen)>,
) -> Result<(), Error> {
    let mut sender = connect(o.addr).await?;
    let req = hyper::Request::get("/api/client/streaming")
        .header("host", o.addr.to_string())
        .header("authorization", &o.client_token)
        .header("accept", "text/event-stream")
        .body(Empty::new())?;
    let resp = sender.send_request(req).await?;
    if resp.status() != hyper::StatusCode::OK {
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        return Err(format!(
            "streaming answered {status}: {}",
            String::from_utf8_lossy(&body)
        )
        .into());
    }
    let mut body = resp.into_body();
    let mut buf = String::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        buf.push_str(&String::from_utf8_lossy(&data));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut event = "";
            let mut payload = String::new();
            for line in block.lines() {
                let (k, v) = line.split_once(':').unwrap_or((line, ""));
                let v = v.strip_prefix(' ').unwrap_or(v);
                match k {
                    "event" => event = v,
                    "data" => payload.push_str(v),
                    _ => {}
                }
            }
            let seen = match event {
                "unleash-connected" => Some(Seen::Connected),
                "unleash-updated" => flag_state(&payload, &o.flag).map(|enabled| Seen::Flag {
                    enabled,
                    at: Instant::now(),
                }),
                _ => None,
            };
            if let Some(seen) = seen
                && tx.send((id, seen)).is_err()
            {
                return Ok(());
            }
        }
    }
    Err("the stream ended".into())
}

/// Switches the flag; returns when the server has answered.
async fn switch(admin: &mut SendRequest<Empty<Bytes>>, o: &Options, on: bool) -> Result<(), Error> {
    let path = format!(
        "/api/admin/projects/{}/features/{}/environments/{}/{}",
        o.project,
        o.flag,
        o.environment,
        if on { "on" } else { "off" }
    );
    let req = hyper::Request::post(path)
        .header("host", o.addr.to_string())
        .header("authorization", &o.admin_token)
        .body(Empty::new())?;
    admin.ready().await?;
    let resp = admin.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if status != hyper::StatusCode::OK {
        return Err(format!(
            "switching {} {} answered {status}: {}",
            o.flag,
            if on { "on" } else { "off" },
            String::from_utf8_lossy(&body)
        )
        .into());
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(mut samples: Vec<f64>) -> serde_json::Value {
    samples.sort_by(f64::total_cmp);
    serde_json::json!({
        "p50_ms": percentile(&samples, 50.0),
        "p99_ms": percentile(&samples, 99.0),
        "max_ms": samples.last().copied().unwrap_or(f64::NAN),
    })
}

async fn run(o: Options) -> Result<serde_json::Value, Error> {
    let o = std::sync::Arc::new(o);
    let mut admin = connect(o.addr).await?;
    // Start from "on" so every flip below changes the state (and makes an event).
    switch(&mut admin, &o, true).await?;

    let (tx, mut rx) = mpsc::unbounded_channel();
    for id in 0..o.clients {
        let (o, tx) = (o.clone(), tx.clone());
        tokio::spawn(async move {
            if let Err(e) = stream_client(&o, id, tx).await {
                eprintln!("streaming client {id}: {e}");
            }
        });
    }
    drop(tx);
    let mut connected = 0;
    while connected < o.clients {
        match tokio::time::timeout(FLIP_TIMEOUT, rx.recv()).await {
            Ok(Some((_, Seen::Connected))) => connected += 1,
            Ok(Some(_)) => {}
            Ok(None) => return Err("every streaming client failed".into()),
            Err(_) => {
                return Err(format!("only {connected} of {} clients connected", o.clients).into());
            }
        }
    }

    let mut all = Vec::with_capacity(o.flips * o.clients);
    let mut slowest = Vec::with_capacity(o.flips);
    let mut admin_rtt = Vec::with_capacity(o.flips);
    let mut before_answer = 0usize;
    for flip in 0..o.flips {
        let on = flip % 2 == 1;
        let mut got = vec![false; o.clients];
        let mut remaining = o.clients;
        let mut worst = Duration::ZERO;
        let sent = Instant::now();
        switch(&mut admin, &o, on).await?;
        let answered = Instant::now();
        admin_rtt.push(ms(answered - sent));
        let deadline = tokio::time::Instant::now() + FLIP_TIMEOUT;
        while remaining > 0 {
            let next = tokio::time::timeout_at(deadline, rx.recv()).await;
            let (id, at) = match next {
                Ok(Some((id, Seen::Flag { enabled, at }))) if enabled == on => (id, at),
                Ok(Some(_)) => continue,
                Ok(None) => return Err("every streaming client failed".into()),
                Err(_) => {
                    return Err(format!(
                        "flip {flip}: {remaining} of {} clients never saw it",
                        o.clients
                    )
                    .into());
                }
            };
            if std::mem::replace(&mut got[id], true) {
                continue;
            }
            remaining -= 1;
            let took = at.saturating_duration_since(sent);
            if at < answered {
                before_answer += 1;
            }
            worst = worst.max(took);
            all.push(ms(took));
        }
        slowest.push(ms(worst));
    }
    let samples = all.len();
    Ok(serde_json::json!({
        "clients": o.clients,
        "flips": o.flips,
        "samples": samples,
        "all": summary(all),
        "slowest_client": summary(slowest),
        "admin_rtt": summary(admin_rtt),
        "seen_before_admin_answer": before_answer,
    }))
}

fn main() {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("propagation: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(async { run(options().await?).await });
    match result {
        Ok(report) => println!("{report}"),
        Err(e) => {
            eprintln!("propagation: {e}");
            std::process::exit(1);
        }
    }
}
