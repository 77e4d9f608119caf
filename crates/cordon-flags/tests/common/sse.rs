//! A server-sent-events reader over a real HTTP/1.1 connection (hyper), for the
//! streaming API tests and the propagation benchmark.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;

/// One event as the wire had it.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {}", self.data))
    }
}

pub struct SseStream {
    pub status: u16,
    body: Incoming,
    buf: String,
    _conn: tokio::task::JoinHandle<()>,
}

/// Open `GET path` with `headers` and return the stream (whatever the status).
pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseStream {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::get(path).header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    SseStream {
        status: resp.status().as_u16(),
        body: resp.into_body(),
        buf: String::new(),
        _conn: conn,
    }
}

impl SseStream {
    /// The next event (comments skipped), or `None` if none arrives within `wait` or
    /// the stream ends.
    pub async fn next(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent {
                    event: "message".into(),
                    id: None,
                    data: String::new(),
                };
                let mut any = false;
                for line in block.lines() {
                    let (k, v) = line.split_once(':').unwrap_or((line, ""));
                    let v = v.strip_prefix(' ').unwrap_or(v);
                    match k {
                        "event" => ev.event = v.to_owned(),
                        "id" => ev.id = Some(v.to_owned()),
                        "data" => {
                            if any {
                                ev.data.push('\n');
                            }
                            ev.data.push_str(v);
                            any = true;
                        }
                        _ => {}
                    }
                }
                if any {
                    return Some(ev);
                }
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .ok()??
                .ok()?;
            if let Ok(data) = frame.into_data() {
                self.buf.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }
}
