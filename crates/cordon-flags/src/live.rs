//! The parts of the client API that follow changes or report back: delta, streaming,
//! registration and metrics, and the admin endpoints that read what SDKs reported.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::Value;

use crate::metrics;
use crate::people::Permission;
use crate::rows::now_millis;
use crate::server::{ApiError, Authenticated, Shared, blocking, parse_json};
use crate::store::TokenRecord;
use crate::stream::{FeedError, Frame};

/// How often an idle stream gets a comment line, well inside the Node SDK's 60 s read
/// timeout, so proxies and clients keep the connection.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Longest look back the metrics query allows (31 days).
const MAX_HOURS_BACK: u32 = 24 * 31;

impl From<FeedError> for ApiError {
    fn from(e: FeedError) -> Self {
        match e {
            FeedError::Store(e) => e.into(),
            // 429 makes the Node SDK fall back to polling at once (503 only after five tries).
            FeedError::Full(_) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
            FeedError::Task => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

/// A revision a client presents back: a plain or quoted (optionally weak) number.
/// Anything else is treated as no revision at all, which means a full hydration.
fn presented_revision(value: Option<&HeaderValue>) -> Option<u64> {
    let s = value?.to_str().ok()?.trim();
    let s = s.strip_prefix("W/").unwrap_or(s);
    let s = s
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s);
    s.parse().ok()
}

fn sse_event(name: &'static str, frame: &Frame) -> Event {
    Event::default()
        .event(name)
        .id(frame.revision.to_string())
        .data(&*frame.json)
}

/// `GET /api/client/streaming`: `unleash-connected` with a hydration (or, with a
/// resumable `Last-Event-ID`, `unleash-updated` with what was missed), then one
/// `unleash-updated` per change in this token's scope.
pub(crate) async fn client_streaming(
    State(app): State<Shared>,
    Extension(Authenticated(token)): Extension<Authenticated>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let last = presented_revision(headers.get("last-event-id"));
    let scope = (token.environment, token.project);
    let start = app.feeds.subscribe(&scope, last).await?;
    let first = if start.hydration {
        "unleash-connected"
    } else {
        "unleash-updated"
    };
    let initial: Vec<Result<Event, Infallible>> = start
        .frames
        .iter()
        .map(|f| Ok(sse_event(first, f)))
        .collect();
    let live = futures_util::stream::unfold(start.live, |mut live| async move {
        let frame = live.next().await?;
        Some((Ok(sse_event("unleash-updated", &frame)), live))
    });
    let stream = futures_util::stream::iter(initial).chain(live);
    let mut resp = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    resp.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// `GET /api/client/delta`: the events since the revision in `If-None-Match`, a
/// hydration when that revision is unknown, `304` when nothing changed. The `ETag` is
/// the revision, quoted.
pub(crate) async fn client_delta(
    State(app): State<Shared>,
    Extension(Authenticated(token)): Extension<Authenticated>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let since = presented_revision(headers.get(header::IF_NONE_MATCH));
    let scope = (token.environment, token.project);
    let (revision, body) = app.feeds.delta(&scope, since).await?;
    let mut resp = match body {
        None => StatusCode::NOT_MODIFIED.into_response(),
        Some(json) => {
            let mut r = (StatusCode::OK, json).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
    };
    if let Ok(v) = HeaderValue::from_str(&format!("\"{revision}\"")) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    Ok(resp)
}

/// `POST /api/client/register`: an SDK instance announces itself. `202`.
pub(crate) async fn client_register(
    State(app): State<Shared>,
    Extension(Authenticated(token)): Extension<Authenticated>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let (value, _): (Value, _) = parse_json(body)?;
    let registration = metrics::parse_registration(&value, &token.environment, now_millis())
        .map_err(|e| ApiError::bad_request(format!("invalid registration: {e}")))?;
    let a = app.clone();
    blocking(move || a.store.register_client(&registration)).await??;
    Ok(StatusCode::ACCEPTED)
}

async fn record(
    app: Shared,
    token: TokenRecord,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let (value, _): (Value, _) = parse_json(body)?;
    let report = metrics::parse_report(&value, &token.environment, now_millis())
        .map_err(|e| ApiError::bad_request(format!("invalid metrics: {e}")))?;
    let a = app.clone();
    blocking(move || a.store.record_metrics(&report)).await??;
    Ok(StatusCode::ACCEPTED)
}

/// `POST /api/client/metrics`: evaluation counts from a server-side SDK. `202`.
pub(crate) async fn client_metrics(
    State(app): State<Shared>,
    Extension(Authenticated(token)): Extension<Authenticated>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    record(app, token, body).await
}

/// `POST /api/frontend/client/metrics`: the same from a frontend SDK.
pub(crate) async fn frontend_metrics(
    State(app): State<Shared>,
    Extension(Authenticated(token)): Extension<Authenticated>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    record(app, token, body).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct MetricsQuery {
    hours_back: Option<u32>,
}

/// `GET /api/admin/client-metrics/features/:name/raw?hoursBack=N`: hourly counts of
/// one flag per application and environment (default the last 24 hours).
pub(crate) async fn admin_feature_metrics(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
    q: Result<Query<MetricsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    app.principal(&headers, Permission::Read)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let hours_back = q.hours_back.unwrap_or(24);
    if !(1..=MAX_HOURS_BACK).contains(&hours_back) {
        return Err(ApiError::bad_request(format!(
            "hoursBack must be between 1 and {MAX_HOURS_BACK}"
        )));
    }
    let now = now_millis();
    let since = metrics::hour_start(now) - i64::from(hours_back - 1) * metrics::HOUR_MS;
    let a = app.clone();
    let flag = name.clone();
    let rows = blocking(move || a.store.feature_metrics(&flag, since)).await??;
    Ok(axum::Json(serde_json::json!({
        "version": 1,
        "maturity": "stable",
        "featureName": name,
        "hoursBack": hours_back,
        "data": rows,
    }))
    .into_response())
}

/// `GET /api/admin/metrics/applications`: applications and their instances.
pub(crate) async fn admin_applications(
    State(app): State<Shared>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    app.principal(&headers, Permission::Read)?;
    let a = app.clone();
    let apps = blocking(move || a.store.applications()).await??;
    Ok(axum::Json(serde_json::json!({ "applications": apps })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presented_revisions_parse_or_mean_none() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(presented_revision(Some(&h("42"))), Some(42));
        assert_eq!(presented_revision(Some(&h("\"42\""))), Some(42));
        assert_eq!(presented_revision(Some(&h("W/\"42\""))), Some(42));
        assert_eq!(presented_revision(Some(&h("W/\"a1b2\""))), None);
        assert_eq!(presented_revision(Some(&h("-1"))), None);
        assert_eq!(presented_revision(None), None);
    }
}
