//! Body wrappers: request bodies that stop at the size limit or at a
//! placeholder headed to the wrong host, and response bodies scrubbed of real
//! secret values as they stream.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::scrub::{Detector, Mode, Needle, Scrubber};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request body was cut off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Tripped {
    TooLarge {
        limit: u64,
    },
    /// A placeholder of secret `secret` appeared in the body (`place`:
    /// `"body"` or `"trailer:NAME"`).
    Placeholder {
        secret: usize,
        place: String,
    },
}

/// Shared between a request body and the code waiting for its response.
#[derive(Default)]
pub(crate) struct Trip(Mutex<Option<Tripped>>);

impl Trip {
    pub(crate) fn get(&self) -> Option<Tripped> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn set(&self, t: Tripped) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(t);
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the request body was refused by the gateway")]
pub(crate) struct BodyRefused;

/// The sandbox's request body on its way upstream.
pub(crate) struct RequestBody {
    inner: Incoming,
    limit: u64,
    seen: u64,
    detector: Detector,
    /// Secret index for each detector needle.
    watched: Vec<(usize, Vec<u8>)>,
    trip: Arc<Trip>,
    bytes: Arc<AtomicU64>,
    failed: bool,
}

impl RequestBody {
    pub(crate) fn new(
        inner: Incoming,
        limit: u64,
        watched: Vec<(usize, Vec<u8>)>,
        trip: Arc<Trip>,
        bytes: Arc<AtomicU64>,
    ) -> RequestBody {
        RequestBody {
            detector: Detector::new(watched.iter().map(|(_, p)| p.as_slice())),
            inner,
            limit,
            seen: 0,
            watched,
            trip,
            bytes,
            failed: false,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(Some(Err(Box::new(BodyRefused))));
        }
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => f,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            this.seen += data.len() as u64;
            if this.seen > this.limit {
                this.trip.set(Tripped::TooLarge { limit: this.limit });
                this.failed = true;
                return Poll::Ready(Some(Err(Box::new(BodyRefused))));
            }
            if let Some(k) = this.detector.push(data) {
                this.trip.set(Tripped::Placeholder {
                    secret: this.watched[k].0,
                    place: "body".into(),
                });
                this.failed = true;
                return Poll::Ready(Some(Err(Box::new(BodyRefused))));
            }
            this.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        } else if let Some(trailers) = frame.trailers_ref() {
            for (name, value) in trailers {
                if let Some((secret, _)) = this
                    .watched
                    .iter()
                    .find(|(_, p)| memchr::memmem::find(value.as_bytes(), p).is_some())
                {
                    this.trip.set(Tripped::Placeholder {
                        secret: *secret,
                        place: format!("trailer:{name}"),
                    });
                    this.failed = true;
                    return Poll::Ready(Some(Err(Box::new(BodyRefused))));
                }
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Called once when a response body is finished or dropped, with the bytes
/// it delivered.
pub(crate) type OnDone = Box<dyn FnOnce(u64) + Send>;

/// An upstream response body on its way to the sandbox.
pub(crate) struct ResponseBody {
    inner: Incoming,
    needles: Arc<[Needle]>,
    scrubber: Scrubber,
    trailers: Option<http::HeaderMap>,
    ended: bool,
    delivered: u64,
    trip: Arc<Trip>,
    on_done: Option<OnDone>,
}

impl ResponseBody {
    pub(crate) fn new(
        inner: Incoming,
        needles: Arc<[Needle]>,
        trip: Arc<Trip>,
        on_done: OnDone,
    ) -> ResponseBody {
        ResponseBody {
            inner,
            scrubber: Scrubber::new(&needles, Mode::Replace),
            needles,
            trailers: None,
            ended: false,
            delivered: 0,
            trip,
            on_done: Some(on_done),
        }
    }

    fn data(&mut self, b: Bytes) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.delivered += b.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(b))))
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(done) = self.on_done.take() {
            done(self.delivered);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.trip.get().is_some() {
                return Poll::Ready(Some(Err(Box::new(BodyRefused))));
            }
            if let Some(t) = this.trailers.take() {
                this.ended = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Ready(None) => {
                    this.ended = true;
                    let rest = this.scrubber.flush();
                    if !rest.is_empty() {
                        return this.data(rest);
                    }
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let out = this.scrubber.push(&data);
                        if !out.is_empty() {
                            return this.data(out);
                        }
                    }
                    Err(frame) => {
                        if let Ok(mut trailers) = frame.into_trailers() {
                            super::proxy::scrub_headers(&mut trailers, &this.needles);
                            this.trailers = Some(trailers);
                            let rest = this.scrubber.flush();
                            if !rest.is_empty() {
                                return this.data(rest);
                            }
                        }
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.scrubber.is_empty() {
            self.inner.size_hint()
        } else {
            SizeHint::default()
        }
    }
}
