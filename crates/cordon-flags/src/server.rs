//! The HTTP server: Unleash's client, frontend and admin APIs, and the routes.
//!
//! Every route that needs a token sits behind a [`Gate`]: the `Authorization` header
//! is checked against the in-memory token list (hashes only) before the handler's
//! extractors run, so a bad token is a `401` (a wrong one `403`) without its request
//! body being read. Handlers then check the exact permission they need, read flag
//! state through the [`Store`] on a blocking thread, and keep one compiled
//! [`Snapshot`] per (environment, project scope): the client-API bodies with their
//! ETags and a yggdrasil [`EngineState`] for the frontend API. Any write through this
//! server drops every snapshot; so does a change another replica made, when the store
//! announces one ([`Store::watch_changes`]), which also reloads the tokens.
//!
//! Here: the client and frontend APIs, state import/export, token creation, flags in
//! a project (create, list, show, on/off per environment, archive) and audit
//! verification. The rest of the admin API is in [`crate::admin`] (strategies,
//! variants, segments, projects, environments, tags, archive, events, tokens),
//! [`crate::live`] (streaming, delta, metrics), [`crate::playground`] and
//! [`crate::gov`] (users, agents, change requests). Unleash's newer
//! `/api/admin/features-batch` import/export is not implemented (docs/flags.md).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Notify;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use unleash_types::client_features::{ClientFeatures, Context};
use unleash_yggdrasil::{EngineState, UpdateMessage};

use crate::people::{Permission, Principal, User};
use crate::store::{FeatureSummary, NewFeature, Store, StoreError, TokenRecord};
use crate::stream::Feeds;
use crate::token::{self, TokenHash, TokenType};

/// Limits and knobs of the server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Largest request body accepted by the client, frontend and token APIs.
    pub max_body_bytes: usize,
    /// Largest state accepted by the admin import.
    pub max_import_bytes: usize,
    /// Most streaming clients served at once; more get `429` (SDKs fall back to polling).
    pub max_streams: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            max_import_bytes: 32 * 1024 * 1024,
            max_streams: 10_000,
        }
    }
}

/// An error answered to the client as `{"error": "..."}` with a 4xx or 5xx status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownEnvironment(_)
            | StoreError::UnknownSegment(_)
            | StoreError::Invalid(_) => ApiError::bad_request(e.to_string()),
            StoreError::UnknownProject(_)
            | StoreError::UnknownFlag { .. }
            | StoreError::UnknownStrategy { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, e.to_string())
            }
            StoreError::FlagExists(_)
            | StoreError::ProjectExists(_)
            | StoreError::EnvironmentExists(_)
            | StoreError::SegmentInUse { .. }
            | StoreError::UserExists(_)
            | StoreError::ChangeRequestRequired { .. }
            | StoreError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            StoreError::Forbidden(_) => ApiError::new(StatusCode::FORBIDDEN, e.to_string()),
            StoreError::UnknownChangeRequest { .. } | StoreError::UnknownUser(_) => {
                ApiError::new(StatusCode::NOT_FOUND, e.to_string())
            }
            StoreError::NotArchived(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            StoreError::Full(_) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
            e => {
                tracing::error!(error = %e, "flag store failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        }
    }
}

/// The compiled state of one (environment, project scope).
struct Snapshot {
    engine: EngineState,
    /// Every flag's name and `impressionData`, in name order: the frontend API's list.
    toggles: Vec<(String, bool)>,
    /// Segments as a top-level list (clients with spec >= 4.2.0).
    with_segments: Body,
    /// Segment constraints copied into each strategy (older clients).
    inlined: Body,
}

impl Snapshot {
    /// The client-API body this client understands.
    fn body_for(&self, headers: &HeaderMap) -> &Body {
        if understands_segments(headers) {
            &self.with_segments
        } else {
            &self.inlined
        }
    }
}

struct Body {
    state: ClientFeatures,
    json: Bytes,
    etag: String,
}

impl Body {
    fn new(state: ClientFeatures) -> Self {
        let json = Bytes::from(crate::wire::to_vec(&state));
        let digest = Sha256::digest(&json);
        let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        Self {
            state,
            json,
            etag: format!("W/\"{hex}\""),
        }
    }
}

#[derive(Default)]
struct SnapshotCache {
    /// Bumped by every write; a snapshot built from an older generation is not kept.
    generation: u64,
    /// One cell per scope: the first request after a change builds the snapshot, the
    /// requests arriving meanwhile wait for that build instead of each starting their
    /// own (with many pollers, one build per poller stalled every poll for a second).
    map: HashMap<(String, String), Arc<tokio::sync::OnceCell<Arc<Snapshot>>>>,
}

pub(crate) struct AppState {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) feeds: Arc<Feeds>,
    tokens: RwLock<Arc<Vec<TokenRecord>>>,
    /// Users and agents, for the owners of personal and agent tokens.
    users: RwLock<Arc<Vec<User>>>,
    /// Set when another replica may have created a token.
    tokens_stale: Notify,
    cache: Mutex<SnapshotCache>,
}

pub(crate) type Shared = Arc<AppState>;

impl AppState {
    pub(crate) fn authenticate(
        &self,
        headers: &HeaderMap,
        allowed: &[TokenType],
    ) -> Result<TokenRecord, ApiError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing Authorization header; send an API token",
            ));
        };
        let presented = value.to_str().unwrap_or("");
        let presented = presented.strip_prefix("Bearer ").unwrap_or(presented);
        let tokens = self
            .tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(record) = token::find(&tokens, presented) else {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid API token"));
        };
        if let Some(expired) = record
            .expires_ms
            .filter(|&ms| ms <= crate::rows::now_millis())
        {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                format!(
                    "this token expired at {}; log in again or use a new token",
                    crate::metrics::rfc3339(expired)
                ),
            ));
        }
        if !allowed.contains(&record.token_type) {
            let names: Vec<&str> = allowed.iter().map(|t| t.as_str()).collect();
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "this endpoint needs a {} token; this one is a {} token",
                    names.join(" or "),
                    record.token_type.as_str()
                ),
            ));
        }
        Ok(record.clone())
    }

    fn invalidate(&self) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.generation += 1;
        cache.map.clear();
    }

    /// After a change through this server: drop the snapshots and push the change to
    /// every stream before the writer gets its answer.
    pub(crate) async fn changed(&self) {
        self.invalidate();
        self.feeds.refresh().await;
    }

    /// Another replica may have changed something: drop the snapshots now (the next
    /// request reads the database), and have the tokens and every stream caught up in
    /// the background. Calls that come before those run coalesce.
    pub(crate) fn changed_elsewhere(&self) {
        self.invalidate();
        self.tokens_stale.notify_one();
        self.feeds.changed_elsewhere();
    }

    /// The background task that reloads the tokens after [`Self::changed_elsewhere`].
    pub(crate) async fn keep_tokens_fresh(self: Arc<Self>) {
        loop {
            self.tokens_stale.notified().await;
            let this = self.clone();
            match tokio::task::spawn_blocking(move || this.reload_tokens()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "cannot reload the API tokens"),
                Err(e) => tracing::error!(error = %e, "reloading the API tokens failed"),
            }
        }
    }

    pub(crate) fn reload_tokens(&self) -> Result<(), StoreError> {
        let users = self.store.users()?;
        let tokens = self.store.tokens()?;
        *self.users.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(users);
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tokens);
        Ok(())
    }

    /// Apply scheduled change requests when they are due, once a second.
    pub(crate) async fn run_schedules(self: Arc<Self>) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let store = self.store.clone();
            let now = crate::rows::now_millis();
            match tokio::task::spawn_blocking(move || store.run_schedules(now)).await {
                Ok(Ok(applied)) if !applied.is_empty() => {
                    tracing::info!(?applied, "applied scheduled change requests");
                    self.changed().await;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "cannot run scheduled change requests"),
                Err(e) => tracing::error!(error = %e, "running scheduled change requests failed"),
            }
        }
    }

    /// The user, agent or service behind an admin-API request, if it may do `need`.
    pub(crate) fn principal(
        &self,
        headers: &HeaderMap,
        need: Permission,
    ) -> Result<Principal, ApiError> {
        let token = self.authenticate(headers, &[TokenType::Admin])?;
        let users = self.users.read().unwrap_or_else(|p| p.into_inner()).clone();
        let who =
            Principal::of_token(&token, &users, crate::rows::now_millis()).ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "this token has expired or its owner was deleted; log in again",
                )
            })?;
        who.require(need)
            .map_err(|m| ApiError::new(StatusCode::FORBIDDEN, m))?;
        Ok(who)
    }

    async fn snapshot(
        self: &Arc<Self>,
        environment: &str,
        project: &str,
    ) -> Result<Arc<Snapshot>, ApiError> {
        let key = (environment.to_owned(), project.to_owned());
        let cell = {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.map.entry(key.clone()).or_default().clone()
        };
        let this = self.clone();
        let snapshot = cell
            .get_or_try_init(|| async move {
                let (env, proj) = key;
                let built = blocking(move || -> Result<Snapshot, ApiError> {
                    let (state, _) = this.store.client_state(&env, &proj)?;
                    let engine = EngineState::default();
                    if let Some(warnings) =
                        engine.take_state(UpdateMessage::FullResponse(state.clone()))
                    {
                        for w in warnings {
                            tracing::warn!(toggle = %w.toggle_name, message = %w.message, "flag does not compile");
                        }
                    }
                    let mut toggles: Vec<(String, bool)> = state
                        .features
                        .iter()
                        .map(|f| (f.name.clone(), f.impression_data.unwrap_or_default()))
                        .collect();
                    toggles.sort_unstable();
                    Ok(Snapshot {
                        engine,
                        toggles,
                        inlined: Body::new(inline_segments(&state)),
                        with_segments: Body::new(state),
                    })
                })
                .await??;
                Ok::<_, ApiError>(Arc::new(built))
            })
            .await?;
        // A change meanwhile replaced the map, so this cell is no longer served from:
        // the snapshot is what the store held when this request arrived.
        Ok(snapshot.clone())
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        tracing::error!(error = %e, "blocking task failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    })
}

/// Copy each referenced segment's constraints into the strategy, for clients that do
/// not understand top-level segments. A reference to a missing segment is kept, so the
/// strategy still cannot match in clients that do understand segments.
fn inline_segments(state: &ClientFeatures) -> ClientFeatures {
    let segments: HashMap<i32, &Vec<_>> = state
        .segments
        .iter()
        .flatten()
        .map(|s| (s.id, &s.constraints))
        .collect();
    let mut out = state.clone();
    out.segments = None;
    for strategy in out
        .features
        .iter_mut()
        .flat_map(|f| f.strategies.iter_mut().flatten())
    {
        let Some(ids) = strategy.segments.take() else {
            continue;
        };
        let mut missing = Vec::new();
        for id in ids {
            match segments.get(&id) {
                Some(c) => strategy
                    .constraints
                    .get_or_insert_with(Vec::new)
                    .extend(c.iter().cloned()),
                None => missing.push(id),
            }
        }
        if !missing.is_empty() {
            strategy.segments = Some(missing);
        }
    }
    out
}

/// Whether the client declared `Unleash-Client-Spec` >= 4.2.0 (understands segments).
fn understands_segments(headers: &HeaderMap) -> bool {
    let Some(v) = headers
        .get("unleash-client-spec")
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mut parts = v.trim().split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    version >= (4, 2, 0)
}

fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|candidate| candidate == etag || candidate == "*")
}

/// Parse a JSON body, turning every failure into a precise 400/413.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<(T, Bytes), ApiError> {
    let body = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid: {e}")))?;
    Ok((value, body))
}

/// Names of fields in `original` that deserializing into the Unleash model dropped,
/// as JSON paths. The import is rejected when there are any: a misspelt `strategies`
/// would otherwise import a flag that is on for everyone.
/// Fields Unleash itself serves in a client-features state that the evaluation model
/// has no place for and that change no evaluation: a segment's `name`, a strategy
/// variant's `weightType`. A state copied from Unleash imports with them.
fn ignorable(path: &str) -> bool {
    /// `rest` is `[N]` exactly.
    fn index_only(rest: &str) -> bool {
        rest.strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }
    let Some((parent, last)) = path.rsplit_once('.') else {
        return false;
    };
    match last {
        "name" => parent.strip_prefix("$.segments").is_some_and(index_only),
        "weightType" => parent.rsplit_once(".variants").is_some_and(|(owner, i)| {
            index_only(i)
                && owner
                    .rsplit_once(".strategies")
                    .is_some_and(|(feature, j)| index_only(j) && !feature.contains(".strategies"))
        }),
        _ => false,
    }
}

fn dropped_fields(
    original: &serde_json::Value,
    kept: &serde_json::Value,
    path: &str,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (original, kept) {
        (Value::Object(o), Value::Object(k)) => {
            for (key, v) in o {
                let p = format!("{path}.{key}");
                match k.get(key) {
                    Some(kv) => dropped_fields(v, kv, &p, out),
                    None if v.is_null() || ignorable(&p) => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(o), Value::Array(k)) => {
            for (i, (ov, kv)) in o.iter().zip(k).enumerate() {
                dropped_fields(ov, kv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// What a group of routes demands of the `Authorization` header before its handler
/// runs. The handler still checks the exact permission it needs (some depend on the
/// request); the gate only makes sure no body is read for a token that could never
/// pass.
#[derive(Clone, Copy)]
enum Gate {
    /// A client or frontend token of this type.
    Token(TokenType),
    /// An admin token (service, personal or session) whose holder may do this.
    Admin(Permission),
}

/// The client or frontend token a [`Gate::Token`] accepted, for the handler.
#[derive(Clone)]
pub(crate) struct Authenticated(pub(crate) TokenRecord);

/// Middleware: answer `401`/`403` for a token that does not pass the gate, before the
/// handler's extractors run. A handler that takes the body would otherwise read all
/// of it (32 MiB for an import) before it could look at the token.
async fn check_token(
    State((app, gate)): State<(Shared, Gate)>,
    mut request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let passed = match gate {
        // The client and frontend handlers need nothing but the token: they take it
        // from here rather than looking it up again.
        Gate::Token(t) => app
            .authenticate(headers, &[t])
            .map(|token| drop(request.extensions_mut().insert(Authenticated(token)))),
        Gate::Admin(p) => app.principal(headers, p).map(drop),
    };
    match passed {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// Longest error body [`json_errors`] reads to quote it.
const MAX_ERROR_TEXT: usize = 4096;

/// Middleware: every error the API answers is `{"error": "..."}`, also those axum
/// answers before a handler runs, which are plain text (a path parameter that is not
/// UTF-8, or not a number where one is expected) or empty (a method the path does not
/// have: `405`, whose `Allow` header is kept and named in the message).
async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_ERROR_TEXT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let allowed = parts
        .headers
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let message = match (status, allowed) {
        (StatusCode::METHOD_NOT_ALLOWED, Some(allowed)) => {
            format!("method {method} is not allowed here; this path takes {allowed}")
        }
        _ if !text.is_empty() => text,
        _ => status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase(),
    };
    let (json_parts, json_body) = ApiError::new(status, message).into_response().into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.extend(json_parts.headers);
    Response::from_parts(parts, json_body)
}

pub(crate) fn router(
    store: Arc<dyn Store>,
    options: &ServeOptions,
) -> Result<(Router, Arc<AppState>), StoreError> {
    let state = Arc::new(AppState {
        tokens: RwLock::new(Arc::new(store.tokens()?)),
        users: RwLock::new(Arc::new(store.users()?)),
        tokens_stale: Notify::new(),
        feeds: Feeds::new(store.clone(), options.max_streams),
        store,
        cache: Mutex::new(SnapshotCache::default()),
    });
    let gate = |g: Gate| middleware::from_fn_with_state((state.clone(), g), check_token);
    let state_api = Router::new()
        .route(
            "/api/admin/state/import",
            post(admin_import).route_layer(gate(Gate::Admin(Permission::Administer))),
        )
        .route("/api/admin/state/export", get(admin_export))
        .route_layer(gate(Gate::Admin(Permission::Read)))
        .layer(DefaultBodyLimit::max(options.max_import_bytes));
    let admin_api = Router::new()
        .route(
            "/api/admin/api-tokens",
            post(admin_create_token).get(crate::admin::list_tokens),
        )
        .route(
            "/api/admin/api-tokens/{token}",
            delete(crate::admin::delete_token),
        )
        .route(
            "/api/admin/projects",
            get(crate::admin::list_projects).post(crate::admin::create_project),
        )
        .route("/api/admin/events", get(crate::admin::events))
        .route(
            "/api/admin/environments",
            get(crate::admin::list_environments).post(crate::admin::create_environment),
        )
        .route(
            "/api/admin/segments",
            get(crate::admin::list_segments).post(crate::admin::create_segment),
        )
        .route(
            "/api/admin/segments/{id}",
            put(crate::admin::update_segment).delete(crate::admin::delete_segment),
        )
        .route("/api/admin/archive/features", get(crate::admin::archived))
        .route(
            "/api/admin/archive/revive/{name}",
            post(crate::admin::revive),
        )
        .route(
            "/api/admin/archive/{name}",
            delete(crate::admin::delete_archived),
        )
        .route(
            "/api/admin/features/{name}/tags",
            get(crate::admin::list_tags).post(crate::admin::add_tag),
        )
        .route(
            "/api/admin/features/{name}/tags/{tag_type}/{value}",
            delete(crate::admin::remove_tag),
        )
        .route(
            "/api/admin/projects/{project}/features/{name}/dependencies",
            post(crate::admin::add_dependency).delete(crate::admin::remove_dependency),
        )
        .route(
            "/api/admin/projects/{project}/features/{name}/dependencies/{parent}",
            delete(crate::admin::remove_dependency),
        )
        .route(
            "/api/admin/projects/{project}/features/{name}/environments/{env}",
            get(crate::admin::get_environment),
        )
        .route(
            "/api/admin/projects/{project}/features/{name}/environments/{env}/strategies",
            get(crate::admin::list_strategies).post(crate::admin::add_strategy),
        )
        .route(
            "/api/admin/projects/{project}/features/{name}/environments/{env}/strategies/{id}",
            put(crate::admin::update_strategy).delete(crate::admin::delete_strategy),
        )
        .route(
            "/api/admin/projects/{project}/features/{name}/environments/{env}/variants",
            put(crate::admin::put_variants),
        )
        .route("/api/admin/audit/verify", get(admin_audit_verify))
        .route("/api/admin/playground", post(crate::playground::playground))
        .route(
            "/api/admin/projects/{project}/features",
            get(admin_list_features).post(admin_create_feature),
        )
        .route(
            "/api/admin/projects/{project}/features/{name}",
            get(admin_get_feature)
                .put(crate::admin::update_feature)
                .delete(admin_archive_feature),
        )
        .route(
            "/api/admin/projects/{project}/features/{name}/environments/{env}/{switch}",
            post(admin_switch_feature),
        )
        .route(
            "/api/admin/client-metrics/features/{name}/raw",
            get(crate::live::admin_feature_metrics),
        )
        .route(
            "/api/admin/metrics/applications",
            get(crate::live::admin_applications),
        )
        .route(
            "/api/admin/projects/{project}/change-requests/config",
            get(crate::gov::get_settings),
        )
        .route(
            "/api/admin/projects/{project}/environments/{env}/change-requests/config",
            put(crate::gov::put_settings),
        )
        .route(
            "/api/admin/projects/{project}/environments/{env}/change-requests",
            post(crate::gov::submit),
        )
        .route(
            "/api/admin/projects/{project}/change-requests",
            get(crate::gov::list),
        )
        .route(
            "/api/admin/projects/{project}/change-requests/open",
            get(crate::gov::list_open),
        )
        .route(
            "/api/admin/projects/{project}/change-requests/{id}",
            get(crate::gov::get),
        )
        .route(
            "/api/admin/projects/{project}/change-requests/{id}/state",
            put(crate::gov::put_state),
        )
        .route(
            "/api/admin/projects/{project}/change-requests/{id}/title",
            put(crate::gov::put_title),
        )
        .route(
            "/api/admin/projects/{project}/change-requests/{id}/comments",
            post(crate::gov::comment),
        )
        .route(
            "/api/admin/projects/{project}/change-requests/{id}/changes/{change}",
            put(crate::gov::put_change).delete(crate::gov::delete_change),
        )
        .route("/api/admin/user", get(crate::gov::me))
        .route(
            "/api/admin/user/tokens",
            post(crate::gov::create_personal_token),
        )
        .route(
            "/api/admin/user-admin",
            get(crate::gov::list_users).post(crate::gov::create_user),
        )
        .route(
            "/api/admin/user-admin/{name}",
            put(crate::gov::update_user).delete(crate::gov::delete_user),
        )
        .route(
            "/api/admin/agents",
            get(crate::gov::list_agents).post(crate::gov::create_agent),
        )
        .route("/api/admin/logout", post(crate::gov::logout))
        .route_layer(gate(Gate::Admin(Permission::Read)));
    let client_api = Router::new()
        .route("/api/client/features", get(client_features))
        .route("/api/client/features/{name}", get(client_feature))
        .route("/api/client/delta", get(crate::live::client_delta))
        .route("/api/client/streaming", get(crate::live::client_streaming))
        .route("/api/client/register", post(crate::live::client_register))
        .route("/api/client/metrics", post(crate::live::client_metrics))
        .route_layer(gate(Gate::Token(TokenType::Client)));
    let frontend_api = Router::new()
        .route(
            "/api/frontend/client/metrics",
            post(crate::live::frontend_metrics),
        )
        .route("/api/frontend", get(frontend_get).post(frontend_post))
        .route_layer(gate(Gate::Token(TokenType::Frontend)));
    let open = Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"health": "GOOD"})) }),
        )
        .route("/api/admin/login", post(crate::gov::login));
    let rest = admin_api
        .merge(client_api)
        .merge(frontend_api)
        .merge(open)
        .layer(DefaultBodyLimit::max(options.max_body_bytes));
    let router = state_api
        .merge(rest)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state.clone());
    // Around the whole router, not each route (`Router::layer`), so that the middleware
    // sees the answer as routing finished it: a 405 gets its Allow header only there.
    let router = Router::new()
        .fallback_service(router)
        .layer(middleware::from_fn(json_errors));
    let router = router.clone().merge(crate::console::routes(router));
    Ok((router, state))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvironmentQuery {
    environment: String,
}

fn environment_query(
    q: Result<Query<EnvironmentQuery>, QueryRejection>,
) -> Result<EnvironmentQuery, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("{}; pass ?environment=NAME", e.body_text())))
}

async fn admin_import(
    State(app): State<Shared>,
    headers: HeaderMap,
    q: Result<Query<EnvironmentQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let who = app.principal(&headers, Permission::Administer)?;
    let q = environment_query(q)?;
    let (state, raw): (ClientFeatures, Bytes) = parse_json(body)?;
    let original: serde_json::Value = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid: {e}")))?;
    let kept = crate::wire::to_value(&state);
    let mut dropped = Vec::new();
    dropped_fields(&original, &kept, "$", &mut dropped);
    if !dropped.is_empty() {
        return Err(ApiError::bad_request(format!(
            "unknown fields in the state: {}",
            dropped.join(", ")
        )));
    }
    let a = app.clone();
    blocking(move || a.store.import_state(&q.environment, &state, &who.actor())).await??;
    app.changed().await;
    Ok(StatusCode::ACCEPTED)
}

async fn admin_export(
    State(app): State<Shared>,
    headers: HeaderMap,
    q: Result<Query<EnvironmentQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    app.principal(&headers, Permission::Read)?;
    let q = environment_query(q)?;
    let a = app.clone();
    let envs = blocking(move || a.store.environments()).await??;
    if !envs.contains(&q.environment) {
        return Err(StoreError::UnknownEnvironment(q.environment).into());
    }
    let snapshot = app.snapshot(&q.environment, "*").await?;
    Ok(json_response(&snapshot.with_segments))
}

fn json_response(body: &Body) -> Response {
    let mut resp = (StatusCode::OK, body.json.clone()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&body.etag) {
        h.insert(header::ETAG, v);
    }
    resp
}

async fn client_features(
    State(app): State<Shared>,
    Extension(Authenticated(token)): Extension<Authenticated>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let snapshot = app.snapshot(&token.environment, &token.project).await?;
    let body = snapshot.body_for(&headers);
    if etag_matches(&headers, &body.etag) {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(v) = HeaderValue::from_str(&body.etag) {
            resp.headers_mut().insert(header::ETAG, v);
        }
        return Ok(resp);
    }
    Ok(json_response(body))
}

async fn client_feature(
    State(app): State<Shared>,
    Extension(Authenticated(token)): Extension<Authenticated>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let snapshot = app.snapshot(&token.environment, &token.project).await?;
    let body = snapshot.body_for(&headers);
    body.state
        .features
        .iter()
        .find(|f| f.name == name)
        .map(|f| Json(crate::wire::to_value(f)))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no flag named {name:?} in this token's scope"),
            )
        })
}

/// Unleash's frontend API response.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FrontendResponse {
    pub toggles: Vec<FrontendToggle>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FrontendToggle {
    pub name: String,
    pub enabled: bool,
    pub variant: FrontendVariant,
    pub impression_data: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FrontendVariant {
    pub name: String,
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<unleash_types::client_features::Payload>,
}

async fn frontend_eval(
    app: Shared,
    token: TokenRecord,
    peer: SocketAddr,
    mut context: Context,
) -> Result<Response, ApiError> {
    // As Unleash does: a context without remoteAddress is evaluated with the caller's
    // address. Forwarding headers are not trusted (a client could claim any address).
    if context.remote_address.is_none() {
        context.remote_address = Some(peer.ip().to_canonical().to_string());
    }
    let snapshot = app.snapshot(&token.environment, &token.project).await?;
    let body = frontend_body(&snapshot, &context).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("could not encode the answer: {e}"),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The frontend API's answer: the flags enabled for `context`, in name order, each
/// with its variant. The same results as yggdrasil's `resolve_all`, which this
/// replaced because it resolves a variant for every flag, enabled or not (evaluating
/// each flag's strategies twice), and collects everything into a map of cloned names
/// that then had to be filtered and sorted; with 350 flags that was most of a
/// request's time.
fn frontend_body(snapshot: &Snapshot, context: &Context) -> serde_json::Result<Vec<u8>> {
    /// [`FrontendToggle`] with a borrowed name.
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Toggle<'a> {
        name: &'a str,
        enabled: bool,
        variant: FrontendVariant,
        impression_data: bool,
    }
    #[derive(Serialize)]
    struct Answer<'a> {
        toggles: Vec<Toggle<'a>>,
    }
    let engine = &snapshot.engine;
    let toggles = snapshot
        .toggles
        .iter()
        .filter(|(name, _)| engine.is_enabled(name, context, &None))
        .map(|(name, impression_data)| {
            let v = engine.get_variant(name, context, &None);
            Toggle {
                name,
                enabled: true,
                variant: FrontendVariant {
                    name: v.name,
                    enabled: v.enabled,
                    payload: v.payload,
                },
                impression_data: *impression_data,
            }
        })
        .collect();
    // 100 bytes a toggle is about what one without a payload takes.
    let mut out = Vec::with_capacity(16 + 100 * snapshot.toggles.len());
    serde_json::to_writer(&mut out, &Answer { toggles })?;
    Ok(out)
}

async fn frontend_get(
    State(app): State<Shared>,
    Extension(Authenticated(token)): Extension<Authenticated>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    // Unleash accepts both `properties[key]=v` and bare `key=v` for custom properties.
    let mut map = serde_json::Map::new();
    let mut properties = serde_json::Map::new();
    for (k, v) in params {
        match k
            .strip_prefix("properties[")
            .and_then(|k| k.strip_suffix(']'))
        {
            Some(p) => properties.insert(p.to_owned(), v.into()),
            None => map.insert(k, v.into()),
        };
    }
    if !properties.is_empty() {
        map.insert("properties".into(), properties.into());
    }
    let context: Context = serde_json::from_value(map.into())
        .map_err(|e| ApiError::bad_request(format!("invalid context: {e}")))?;
    frontend_eval(app, token, peer, context).await
}

async fn frontend_post(
    State(app): State<Shared>,
    Extension(Authenticated(token)): Extension<Authenticated>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (context, _): (Context, _) = parse_json(body)?;
    frontend_eval(app, token, peer, context).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateToken {
    #[serde(alias = "username")]
    token_name: String,
    #[serde(rename = "type")]
    token_type: String,
    environment: Option<String>,
    project: Option<String>,
    projects: Option<Vec<String>>,
    /// When the token stops working (RFC 3339), as Unleash takes it.
    expires_at: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreatedToken {
    secret: String,
    token_name: String,
    #[serde(rename = "type")]
    token_type: &'static str,
    project: String,
    projects: Vec<String>,
    environment: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
}

/// An `expiresAt` from a request as milliseconds since the epoch: an RFC 3339 time in
/// the future, else a `400` saying which.
pub(crate) fn parse_expiry(expires_at: Option<&str>) -> Result<Option<i64>, ApiError> {
    let Some(t) = expires_at else {
        return Ok(None);
    };
    let Some(ms) = crate::metrics::parse_rfc3339(t) else {
        return Err(ApiError::bad_request(format!(
            "expiresAt {t:?} is not an RFC 3339 time (e.g. 2027-01-31T00:00:00Z)"
        )));
    };
    if ms <= crate::rows::now_millis() {
        return Err(ApiError::bad_request(format!(
            "expiresAt {t:?} is not in the future"
        )));
    }
    Ok(Some(ms))
}

async fn admin_create_token(
    State(app): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let who = app.principal(&headers, Permission::Administer)?;
    let (req, _): (CreateToken, _) = parse_json(body)?;
    let expires_ms = parse_expiry(req.expires_at.as_deref())?;
    let token_type = TokenType::parse(&req.token_type).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unknown token type {:?}; use client, frontend or admin",
            req.token_type
        ))
    })?;
    // Several projects are kept as one comma-separated scope ("a,b"); project names
    // cannot contain commas. A list containing "*" is every project.
    let project = match (req.project, req.projects) {
        (Some(p), None) => p,
        (None, Some(list)) if list.is_empty() => {
            return Err(ApiError::bad_request(
                "projects must name at least one project",
            ));
        }
        (None, Some(list)) if list.iter().any(|p| p == "*") => "*".to_owned(),
        (None, Some(mut list)) => {
            if list.len() > 100 || list.iter().any(|p| p.is_empty() || p.contains(',')) {
                return Err(ApiError::bad_request(
                    "projects is a list of at most 100 project names",
                ));
            }
            list.sort();
            list.dedup();
            list.join(",")
        }
        (None, None) => "*".to_owned(),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give either project or projects, not both",
            ));
        }
    };
    let environment = match token_type {
        TokenType::Admin => {
            if req.environment.as_deref().is_some_and(|e| e != "*") || project != "*" {
                return Err(ApiError::bad_request(
                    "admin tokens cover every project and environment; omit environment and project",
                ));
            }
            "*".to_owned()
        }
        _ => req.environment.ok_or_else(|| {
            ApiError::bad_request("client and frontend tokens need an environment")
        })?,
    };
    if project.contains([':', '.']) || environment.contains([':', '.']) {
        return Err(ApiError::bad_request(
            "project and environment names cannot contain ':' or '.'",
        ));
    }
    let a = app.clone();
    let env = environment.clone();
    let envs = blocking(move || a.store.environments()).await??;
    if env != "*" && !envs.contains(&env) {
        return Err(StoreError::UnknownEnvironment(env).into());
    }
    // Unleash writes a token for several projects as `[]:env.secret`.
    let shown_project = if project.contains(',') {
        "[]"
    } else {
        &project
    };
    let secret = token::generate(shown_project, &environment).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot draw random bytes: {e}"),
        )
    })?;
    let record = TokenRecord {
        name: req.token_name.clone(),
        token_type,
        project: project.clone(),
        environment: environment.clone(),
        hash: TokenHash::of(&secret),
        owner: None,
        expires_ms,
    };
    let a = app.clone();
    blocking(move || {
        a.store.insert_token(&record, &who.actor())?;
        a.reload_tokens()
    })
    .await??;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            secret,
            token_name: req.token_name,
            token_type: token_type.as_str(),
            projects: project.split(',').map(str::to_owned).collect(),
            project,
            environment,
            expires_at: expires_ms.map(crate::metrics::rfc3339),
        }),
    ))
}

/// `GET /api/admin/audit/verify`: the [`crate::audit::Report`] of the whole chain;
/// `200` whether or not it is intact (the answer is the report).
async fn admin_audit_verify(
    State(app): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<crate::audit::Report>, ApiError> {
    app.principal(&headers, Permission::Read)?;
    let a = app.clone();
    Ok(Json(
        blocking(move || crate::audit::verify(a.store.as_ref())).await??,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateFeature {
    name: String,
    #[serde(rename = "type")]
    feature_type: Option<String>,
    description: Option<String>,
    #[serde(default)]
    impression_data: bool,
}

/// Unleash's flag types. A flag is one of them: SDKs, the console and Unleash's own
/// tools know no others.
pub(crate) const FLAG_TYPES: [&str; 5] = [
    "release",
    "experiment",
    "operational",
    "kill-switch",
    "permission",
];

/// `400` unless `flag_type` is one of [`FLAG_TYPES`].
pub(crate) fn check_flag_type(flag_type: &str) -> Result<(), ApiError> {
    if FLAG_TYPES.contains(&flag_type) {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "unknown flag type {flag_type:?}; use one of {}",
        FLAG_TYPES.join(", ")
    )))
}

/// Unleash accepts URL-friendly names only; so do we, so every flag can be addressed
/// in a path.
pub(crate) fn valid_flag_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
        && name != "."
        && name != ".."
}

/// `POST /api/admin/projects/:project/features`: a new flag, disabled in every
/// environment and without strategies, so agent-written code ships dark.
async fn admin_create_feature(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(project): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<FeatureSummary>), ApiError> {
    let who = app.principal(&headers, Permission::Edit)?;
    let (req, _): (CreateFeature, _) = parse_json(body)?;
    if !valid_flag_name(&req.name) {
        return Err(ApiError::bad_request(format!(
            "flag name {:?} is not URL-friendly; use 1-100 of a-z A-Z 0-9 - _ . ~",
            req.name
        )));
    }
    if let Some(t) = &req.feature_type {
        check_flag_type(t)?;
    }
    let feature = NewFeature {
        name: req.name,
        feature_type: req.feature_type.or(Some("release".into())),
        description: req.description,
        impression_data: req.impression_data,
    };
    let a = app.clone();
    let created = blocking(move || -> Result<Vec<FeatureSummary>, StoreError> {
        a.store.create_feature(&project, &feature, &who.actor())?;
        Ok(a.store
            .features(&project)?
            .into_iter()
            .filter(|f| f.name == feature.name)
            .collect())
    })
    .await??;
    app.changed().await;
    let created = created
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the new flag vanished"))?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn admin_list_features(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(project): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.principal(&headers, Permission::Read)?;
    let a = app.clone();
    let features = blocking(move || a.store.features(&project)).await??;
    Ok(Json(
        serde_json::json!({ "version": 1, "features": features }),
    ))
}

async fn admin_get_feature(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path((project, name)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.principal(&headers, Permission::Read)?;
    let a = app.clone();
    let (p, n) = (project.clone(), name.clone());
    // As Unleash answers it: each environment with its strategies and variants.
    let found = blocking(move || -> Result<_, StoreError> {
        let Some(summary) = a.store.features(&p)?.into_iter().find(|f| f.name == n) else {
            return Ok(None);
        };
        let mut envs = Vec::new();
        for e in &summary.environments {
            let config = a.store.feature_environment(&p, &n, &e.name)?;
            envs.push(serde_json::json!({
                "name": e.name,
                "enabled": config.enabled,
                "strategyCount": e.strategy_count,
                "strategies": crate::wire::to_value(&config.strategies),
                "variants": crate::wire::to_value(&config.variants),
            }));
        }
        let mut json = serde_json::to_value(&summary).unwrap_or_default();
        json["environments"] = envs.into();
        Ok(Some(json))
    })
    .await??;
    found.map(Json).ok_or_else(|| {
        StoreError::UnknownFlag {
            project,
            flag: name,
        }
        .into()
    })
}

/// `POST .../features/:name/environments/:env/on|off`. Turning off is the kill
/// switch: it drops every cached snapshot, so the next client request sees it.
async fn admin_switch_feature(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path((project, name, env, switch)): Path<(String, String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let who = app.principal(
        &headers,
        if switch == "off" {
            Permission::Kill
        } else {
            Permission::Edit
        },
    )?;
    let enabled = match switch.as_str() {
        "on" => true,
        "off" => false,
        _ => return Err(ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")),
    };
    let a = app.clone();
    let changed = blocking(move || {
        a.store
            .set_enabled(&project, &name, &env, enabled, &who.actor())
    })
    .await??;
    if changed {
        app.changed().await;
    }
    Ok(StatusCode::OK)
}

/// `DELETE .../features/:name`: archive (Unleash's meaning of delete in a project).
async fn admin_archive_feature(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path((project, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let who = app.principal(&headers, Permission::Edit)?;
    let a = app.clone();
    blocking(move || a.store.archive_feature(&project, &name, &who.actor())).await??;
    app.changed().await;
    Ok(StatusCode::ACCEPTED)
}
