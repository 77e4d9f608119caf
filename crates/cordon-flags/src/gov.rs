//! The governance API: change requests (Unleash's paths and shapes), their settings,
//! users, agents, personal tokens and console logins. The rules live in [`crate::cr`]
//! and [`crate::people`]; this module parses and bounds what arrives, checks the
//! caller's role, and answers JSON.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use unleash_types::client_features::{FeatureDependency, Variant};

use crate::admin::{StrategyInput, check_segment, check_variants, to_strategy};
use crate::cr::{Action, NewChange, Transition, Update, View};
use crate::people::{self, Kind, Permission, Principal, Role, User};
use crate::rows::now_millis;
use crate::server::{ApiError, Shared, blocking, parse_json, valid_flag_name};
use crate::store::{AdminSegment, AdminStrategy, StoreError, TokenRecord};
use crate::token::{self, TokenHash, TokenType};

/// Failed logins per name allowed in [`LOGIN_WINDOW_MS`] before that name is
/// refused. Counted in the database, so replicas sharing one count together.
const MAX_LOGIN_FAILURES: i64 = 5;
const LOGIN_WINDOW_MS: i64 = 5 * 60 * 1000;

fn json_view(v: View) -> Json<Value> {
    Json(v.to_json())
}

/// A change as the API accepts it: `{feature, action, payload}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeInput {
    #[serde(default)]
    feature: Option<String>,
    action: String,
    #[serde(default)]
    payload: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnabledPayload {
    enabled: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdPayload {
    id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VariantsPayload {
    variants: Vec<Variant>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DependencyPayload {
    #[serde(default)]
    feature: Option<String>,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    variants: Option<Vec<String>>,
}

fn payload<T: serde::de::DeserializeOwned>(action: &str, v: Value) -> Result<T, ApiError> {
    serde_json::from_value(if v.is_null() { json!({}) } else { v })
        .map_err(|e| ApiError::bad_request(format!("bad payload for {action}: {e}")))
}

/// Validate one change exactly as the direct endpoint would validate it.
fn to_change(input: ChangeInput) -> Result<NewChange, ApiError> {
    let feature = input.feature.unwrap_or_default();
    let a = input.action.as_str();
    let action = match a {
        "updateEnabled" => {
            let p: EnabledPayload = payload(a, input.payload)?;
            Action::UpdateEnabled { enabled: p.enabled }
        }
        "addStrategy" | "updateStrategy" => {
            let mut v = input.payload;
            let id = v
                .as_object_mut()
                .and_then(|o| o.remove("id"))
                .and_then(|i| i.as_str().map(str::to_owned));
            let strategy = to_strategy(payload::<StrategyInput>(a, v)?)?;
            if a == "addStrategy" {
                Action::AddStrategy(strategy)
            } else {
                let id = id.ok_or_else(|| {
                    ApiError::bad_request("updateStrategy needs the strategy's id in the payload")
                })?;
                Action::UpdateStrategy(AdminStrategy { id, strategy })
            }
        }
        "deleteStrategy" => {
            let p: IdPayload = payload(a, input.payload)?;
            Action::DeleteStrategy { id: p.id }
        }
        "patchVariant" => {
            let p: VariantsPayload = payload(a, input.payload)?;
            check_variants(&p.variants)?;
            Action::PatchVariant {
                variants: p.variants,
            }
        }
        "archiveFeature" => Action::ArchiveFeature {},
        "addDependency" => {
            let p: DependencyPayload = payload(a, input.payload)?;
            let parent = p
                .feature
                .ok_or_else(|| ApiError::bad_request("addDependency needs the parent feature"))?;
            if p.variants.as_ref().is_some_and(|v| v.len() > 100) {
                return Err(ApiError::bad_request(
                    "at most 100 variants in a dependency",
                ));
            }
            Action::AddDependency(FeatureDependency {
                feature: parent,
                enabled: p.enabled,
                variants: p.variants,
            })
        }
        "deleteDependency" => {
            let p: DependencyPayload = payload(a, input.payload)?;
            Action::DeleteDependency { feature: p.feature }
        }
        "updateSegment" => {
            let s: AdminSegment = payload(a, input.payload)?;
            if s.id <= 0 {
                return Err(ApiError::bad_request(
                    "updateSegment needs the id of an existing segment",
                ));
            }
            check_segment(&s)?;
            Action::UpdateSegment(s)
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown change action {other:?}; use updateEnabled, addStrategy, updateStrategy, \
                 deleteStrategy, patchVariant, archiveFeature, addDependency, deleteDependency \
                 or updateSegment"
            )));
        }
    };
    if !matches!(action, Action::UpdateSegment(_)) && !valid_flag_name(&feature) {
        return Err(ApiError::bad_request(format!(
            "{a} needs the flag's name in \"feature\""
        )));
    }
    Ok(NewChange { feature, action })
}

/// `GET /api/admin/projects/:p/change-requests/config`.
pub(crate) async fn get_settings(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(project): Path<String>,
) -> Result<Json<Value>, ApiError> {
    app.principal(&headers, Permission::Read)?;
    let a = app.clone();
    let s = blocking(move || a.store.change_request_settings(&project)).await??;
    Ok(Json(crate::wire::to_value(&s)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SettingInput {
    change_requests_enabled: bool,
    #[serde(default = "one")]
    required_approvals: i64,
}

fn one() -> i64 {
    1
}

/// `PUT /api/admin/projects/:p/environments/:env/change-requests/config`.
pub(crate) async fn put_settings(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path((project, environment)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let who = app.principal(&headers, Permission::Administer)?;
    let (s, _): (SettingInput, _) = parse_json(body)?;
    let a = app.clone();
    blocking(move || {
        a.store.set_change_request_settings(
            &project,
            &environment,
            s.change_requests_enabled,
            s.required_approvals,
            &who.actor(),
        )
    })
    .await??;
    app.changed().await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/admin/projects/:p/environments/:env/change-requests`: one change or an
/// array, added to the caller's draft.
pub(crate) async fn submit(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path((project, environment)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let who = app.principal(&headers, Permission::Edit)?;
    let (v, _): (Value, _) = parse_json(body)?;
    let inputs: Vec<ChangeInput> = match v {
        Value::Array(items) => items
            .into_iter()
            .map(serde_json::from_value)
            .collect::<Result<_, _>>(),
        one => serde_json::from_value(one).map(|c| vec![c]),
    }
    .map_err(|e| ApiError::bad_request(format!("bad change: {e}")))?;
    if inputs.len() > crate::cr::MAX_CHANGES {
        return Err(ApiError::bad_request(format!(
            "at most {} changes at once",
            crate::cr::MAX_CHANGES
        )));
    }
    let changes = inputs
        .into_iter()
        .map(to_change)
        .collect::<Result<Vec<_>, _>>()?;
    let a = app.clone();
    let view = blocking(move || {
        a.store
            .submit_changes(&project, &environment, &changes, &who)
    })
    .await??;
    Ok(json_view(view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    #[serde(default)]
    state: Option<String>,
}

/// `GET /api/admin/projects/:p/change-requests[?state=...]`.
pub(crate) async fn list(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(project): Path<String>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    app.principal(&headers, Permission::Read)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let state =
        match q.state.as_deref() {
            None => None,
            Some(s) => Some(crate::cr::State::parse(s).ok_or_else(|| {
                ApiError::bad_request(format!("unknown change-request state {s:?}"))
            })?),
        };
    let a = app.clone();
    let all = blocking(move || a.store.change_requests(&project)).await??;
    Ok(Json(Value::Array(
        all.into_iter()
            .filter(|v| state.is_none_or(|s| v.request.state == s))
            .map(|v| v.to_json())
            .collect(),
    )))
}

/// `GET /api/admin/projects/:p/change-requests/open`: not applied, rejected or
/// cancelled.
pub(crate) async fn list_open(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(project): Path<String>,
) -> Result<Json<Value>, ApiError> {
    app.principal(&headers, Permission::Read)?;
    let a = app.clone();
    let all = blocking(move || a.store.change_requests(&project)).await??;
    Ok(Json(Value::Array(
        all.into_iter()
            .filter(|v| !v.request.state.is_closed())
            .map(|v| v.to_json())
            .collect(),
    )))
}

type RequestPath = Path<(String, i64)>;

/// `GET /api/admin/projects/:p/change-requests/:id`.
pub(crate) async fn get(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path((project, id)): RequestPath,
) -> Result<Json<Value>, ApiError> {
    app.principal(&headers, Permission::Read)?;
    let a = app.clone();
    Ok(json_view(
        blocking(move || a.store.change_request(&project, id)).await??,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct StateInput {
    state: String,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    scheduled_at: Option<String>,
}

/// `PUT /api/admin/projects/:p/change-requests/:id/state`.
pub(crate) async fn put_state(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path((project, id)): RequestPath,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let (input, _): (StateInput, _) = parse_json(body)?;
    if input
        .comment
        .as_deref()
        .is_some_and(|c| c.chars().count() > crate::cr::MAX_TEXT)
    {
        return Err(ApiError::bad_request("the comment is too long"));
    }
    let state = crate::cr::State::parse(&input.state).ok_or_else(|| {
        ApiError::bad_request(format!("unknown change-request state {:?}", input.state))
    })?;
    use crate::cr::State as S;
    let (to, need) = match state {
        S::InReview => (Transition::Submit, Permission::Edit),
        S::Approved => (Transition::Approve(input.comment), Permission::Approve),
        S::Rejected => (Transition::Reject(input.comment), Permission::Approve),
        S::Applied => (Transition::Apply, Permission::Apply),
        S::Cancelled => (Transition::Cancel, Permission::Edit),
        S::Scheduled => {
            let at = input
                .scheduled_at
                .as_deref()
                .ok_or_else(|| ApiError::bad_request("Scheduled needs scheduledAt (RFC 3339)"))?;
            let at = crate::metrics::parse_rfc3339(at).ok_or_else(|| {
                ApiError::bad_request(format!("scheduledAt {at:?} is not an RFC 3339 time"))
            })?;
            (Transition::Schedule(at), Permission::Apply)
        }
        S::Draft => {
            return Err(ApiError::bad_request(
                "a change request cannot go back to Draft",
            ));
        }
    };
    let who = app.principal(&headers, need)?;
    let a = app.clone();
    let view = blocking(move || {
        a.store
            .update_change_request(&project, id, &Update::Move(to), &who)
    })
    .await??;
    if view.request.state == S::Applied {
        app.changed().await;
    }
    Ok(json_view(view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TitleInput {
    title: String,
}

/// `PUT /api/admin/projects/:p/change-requests/:id/title`.
pub(crate) async fn put_title(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path((project, id)): RequestPath,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let who = app.principal(&headers, Permission::Edit)?;
    let (t, _): (TitleInput, _) = parse_json(body)?;
    let a = app.clone();
    Ok(json_view(
        blocking(move || {
            a.store
                .update_change_request(&project, id, &Update::Title(t.title), &who)
        })
        .await??,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommentInput {
    text: String,
}

/// `POST /api/admin/projects/:p/change-requests/:id/comments`.
pub(crate) async fn comment(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path((project, id)): RequestPath,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let who = app.principal(&headers, Permission::Read)?;
    if who.kind == Kind::User && who.role == Role::Viewer {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "viewers cannot comment on change requests",
        ));
    }
    let (c, _): (CommentInput, _) = parse_json(body)?;
    let a = app.clone();
    let view = blocking(move || {
        a.store
            .update_change_request(&project, id, &Update::Comment(c.text), &who)
    })
    .await??;
    Ok((StatusCode::CREATED, json_view(view)))
}

/// `PUT /api/admin/projects/:p/change-requests/:id/changes/:change`: replace a change.
pub(crate) async fn put_change(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path((project, id, change)): Path<(String, i64, u32)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let who = app.principal(&headers, Permission::Edit)?;
    let (input, _): (ChangeInput, _) = parse_json(body)?;
    let replacement = to_change(input)?;
    let a = app.clone();
    Ok(json_view(
        blocking(move || {
            let u = Update::Change {
                id: change,
                replacement: Some(replacement),
            };
            a.store.update_change_request(&project, id, &u, &who)
        })
        .await??,
    ))
}

/// `DELETE /api/admin/projects/:p/change-requests/:id/changes/:change`.
pub(crate) async fn delete_change(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path((project, id, change)): Path<(String, i64, u32)>,
) -> Result<Json<Value>, ApiError> {
    let who = app.principal(&headers, Permission::Edit)?;
    let a = app.clone();
    Ok(json_view(
        blocking(move || {
            let u = Update::Change {
                id: change,
                replacement: None,
            };
            a.store.update_change_request(&project, id, &u, &who)
        })
        .await??,
    ))
}

fn user_json(u: &User) -> Value {
    json!({
        "username": u.name,
        "name": u.name,
        "kind": u.kind.as_str(),
        "role": u.role.as_str(),
        "rootRole": u.role.as_str(),
        "session": u.session,
        "createdAt": crate::metrics::rfc3339(u.created_ms),
    })
}

/// `GET /api/admin/user`: who the caller is.
pub(crate) async fn me(
    State(app): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let who = app.principal(&headers, Permission::Read)?;
    Ok(Json(json!({
        "username": who.name,
        "id": who.id(),
        "kind": who.kind.as_str(),
        "role": who.role.as_str(),
        "session": who.session,
        "permissions": {
            "edit": who.may(Permission::Edit),
            "kill": who.may(Permission::Kill),
            "approve": who.may(Permission::Approve),
            "apply": who.may(Permission::Apply),
            "administer": who.may(Permission::Administer),
        },
    })))
}

/// Users or agents, as `{key: [...]}`.
async fn list_people(
    app: Shared,
    headers: HeaderMap,
    need: Permission,
    kind: Kind,
    key: &str,
) -> Result<Json<Value>, ApiError> {
    app.principal(&headers, need)?;
    let a = app.clone();
    let people = blocking(move || a.store.users()).await??;
    let listed: Vec<Value> = people
        .iter()
        .filter(|u| u.kind == kind)
        .map(user_json)
        .collect();
    Ok(Json(json!({ key: listed })))
}

/// `GET /api/admin/user-admin`: users.
pub(crate) async fn list_users(
    State(app): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    list_people(app, headers, Permission::Administer, Kind::User, "users").await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UserInput {
    username: String,
    #[serde(alias = "rootRole")]
    role: String,
    #[serde(default)]
    password: Option<String>,
}

fn parse_role(role: &str) -> Result<Role, ApiError> {
    Role::parse(role).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unknown role {role:?}; use viewer, editor, approver or admin"
        ))
    })
}

/// `POST /api/admin/user-admin`.
pub(crate) async fn create_user(
    State(app): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let who = app.principal(&headers, Permission::Administer)?;
    let (u, _): (UserInput, _) = parse_json(body)?;
    if !people::valid_name(&u.username) {
        return Err(ApiError::bad_request(
            "a user name has 1-64 of a-z A-Z 0-9 - _ . @",
        ));
    }
    let role = parse_role(&u.role)?;
    let a = app.clone();
    let user = blocking(move || -> Result<User, StoreError> {
        let user = User {
            name: u.username,
            kind: Kind::User,
            role,
            password_hash: u
                .password
                .as_deref()
                .map(people::hash_password)
                .transpose()?,
            session: None,
            created_ms: now_millis(),
        };
        a.store.create_user(&user, &who.actor())?;
        a.reload_tokens()?;
        Ok(user)
    })
    .await??;
    Ok((StatusCode::CREATED, Json(user_json(&user))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UserUpdate {
    #[serde(default, alias = "rootRole")]
    role: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// `PUT /api/admin/user-admin/:name`: role or password (admins; anyone for their own
/// password).
pub(crate) async fn update_user(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let who = app.principal(&headers, Permission::Read)?;
    let (u, _): (UserUpdate, _) = parse_json(body)?;
    let own_password = who.kind == Kind::User && who.name == name && u.role.is_none();
    if !own_password {
        who.require(Permission::Administer)
            .map_err(|m| ApiError::new(StatusCode::FORBIDDEN, m))?;
    }
    let role = u.role.as_deref().map(parse_role).transpose()?;
    let a = app.clone();
    blocking(move || -> Result<(), StoreError> {
        let hash = u
            .password
            .as_deref()
            .map(people::hash_password)
            .transpose()?;
        a.store
            .update_user(&name, role, hash.as_deref(), &who.actor())?;
        a.reload_tokens()
    })
    .await??;
    Ok(StatusCode::OK)
}

/// `DELETE /api/admin/user-admin/:name` (also deletes agents).
pub(crate) async fn delete_user(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let who = app.principal(&headers, Permission::Administer)?;
    let a = app.clone();
    blocking(move || -> Result<(), StoreError> {
        a.store.delete_user(&name, &who.actor())?;
        a.reload_tokens()
    })
    .await??;
    Ok(StatusCode::OK)
}

/// A fresh admin-typed token owned by `owner`; returns its text (shown once).
fn mint(
    app: &Shared,
    name: &str,
    owner: &str,
    expires_ms: Option<i64>,
    actor: &crate::audit::Actor,
) -> Result<String, StoreError> {
    let text = token::generate("*", "*").map_err(StoreError::Random)?;
    let record = TokenRecord {
        name: name.to_owned(),
        token_type: TokenType::Admin,
        project: "*".into(),
        environment: "*".into(),
        hash: TokenHash::of(&text),
        owner: Some(owner.to_owned()),
        expires_ms,
    };
    app.store.insert_token(&record, actor)?;
    app.reload_tokens()?;
    Ok(text)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PatInput {
    #[serde(default)]
    description: Option<String>,
    /// When the token stops working (RFC 3339); none means it lasts until revoked.
    #[serde(default)]
    expires_at: Option<String>,
}

/// `POST /api/admin/user/tokens`: a personal token for the calling user.
pub(crate) async fn create_personal_token(
    State(app): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let who = app.principal(&headers, Permission::Read)?;
    if who.kind != Kind::User {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "personal tokens are for users; agents get tokens from an admin",
        ));
    }
    let (p, _): (PatInput, _) = parse_json(body)?;
    let description = p.description.unwrap_or_else(|| "personal".into());
    if description.is_empty() || description.chars().count() > 100 {
        return Err(ApiError::bad_request(
            "a token description has 1-100 characters",
        ));
    }
    let expires_ms = crate::server::parse_expiry(p.expires_at.as_deref())?;
    let a = app.clone();
    let (d, name) = (description.clone(), who.name.clone());
    let secret = blocking(move || mint(&a, &d, &name, expires_ms, &who.actor())).await??;
    let mut out = json!({ "secret": secret, "description": description });
    if let Some(ms) = expires_ms {
        out["expiresAt"] = crate::metrics::rfc3339(ms).into();
    }
    Ok((StatusCode::CREATED, Json(out)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentInput {
    name: String,
    #[serde(default)]
    session: Option<String>,
}

/// `POST /api/admin/agents`: an agent identity and its token (shown once).
pub(crate) async fn create_agent(
    State(app): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let who = app.principal(&headers, Permission::Administer)?;
    let (input, _): (AgentInput, _) = parse_json(body)?;
    if !people::valid_name(&input.name) {
        return Err(ApiError::bad_request(
            "an agent name has 1-64 of a-z A-Z 0-9 - _ . @",
        ));
    }
    if input
        .session
        .as_deref()
        .is_some_and(|s| !people::valid_session(s))
    {
        return Err(ApiError::bad_request(
            "a session id has 1-128 of a-z A-Z 0-9 - _ .",
        ));
    }
    let a = app.clone();
    let (name, session) = (input.name.clone(), input.session.clone());
    let secret = blocking(move || -> Result<String, StoreError> {
        let agent = User {
            name: input.name,
            kind: Kind::Agent,
            role: Role::Editor,
            password_hash: None,
            session: input.session,
            created_ms: now_millis(),
        };
        let actor = who.actor();
        a.store.create_user(&agent, &actor)?;
        mint(&a, "agent", &agent.name, None, &actor)
    })
    .await??;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "name": name, "session": session, "secret": secret })),
    ))
}

/// `GET /api/admin/agents`.
pub(crate) async fn list_agents(
    State(app): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    list_people(app, headers, Permission::Read, Kind::Agent, "agents").await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginInput {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    token: Option<String>,
}

fn login_refused() -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "wrong user name or password")
}

/// Count a failed login for `name` (when `failed`); `Err` once it has failed too
/// often recently, through this server or any replica sharing its database.
async fn login_allowed(app: &Shared, name: &str, failed: bool) -> Result<(), ApiError> {
    let a = app.clone();
    let n = name.to_owned();
    let failures = blocking(move || {
        a.store
            .login_failures(&n, failed, now_millis(), LOGIN_WINDOW_MS)
    })
    .await??;
    if failures >= MAX_LOGIN_FAILURES {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many failed logins for {name:?}; wait five minutes"),
        ));
    }
    Ok(())
}

/// `POST /api/admin/login`: a console session (12 hours) for a user, given their
/// password or one of their personal tokens.
pub(crate) async fn login(
    State(app): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let (input, _): (LoginInput, _) = parse_json(body)?;
    let user = match (input.username, input.password, input.token) {
        (Some(name), Some(password), None) => {
            if name.len() > 64 || password.len() > people::MAX_PASSWORD {
                return Err(login_refused());
            }
            login_allowed(&app, &name, false).await?;
            let a = app.clone();
            let n = name.clone();
            let found = blocking(move || -> Result<Option<User>, StoreError> {
                let users = a.store.users()?;
                let user = users
                    .into_iter()
                    .find(|u| u.name == n && u.kind == Kind::User);
                let hash = user
                    .as_ref()
                    .and_then(|u| u.password_hash.clone())
                    .unwrap_or_else(|| people::decoy_hash().to_owned());
                Ok(user.filter(|_| people::verify_password(&password, &hash)))
            })
            .await??;
            match found {
                Some(u) => u,
                None => {
                    login_allowed(&app, &name, true).await?;
                    return Err(login_refused());
                }
            }
        }
        (None, None, Some(token)) => {
            let mut headers = HeaderMap::new();
            let value = token
                .parse()
                .map_err(|_| ApiError::new(StatusCode::UNAUTHORIZED, "invalid API token"))?;
            headers.insert(axum::http::header::AUTHORIZATION, value);
            let who: Principal = app.principal(&headers, Permission::Read)?;
            if who.kind != Kind::User {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "only users log in to the console; use a personal token",
                ));
            }
            User {
                name: who.name,
                kind: who.kind,
                role: who.role,
                password_hash: None,
                session: None,
                created_ms: 0,
            }
        }
        _ => {
            return Err(ApiError::bad_request(
                "send {\"username\", \"password\"} or {\"token\"}",
            ));
        }
    };
    let a = app.clone();
    let expires = now_millis() + people::SESSION_MS;
    let name = user.name.clone();
    let actor = crate::audit::Actor(format!("user:{name}"));
    let token =
        blocking(move || mint(&a, people::SESSION_TOKEN_NAME, &name, Some(expires), &actor))
            .await??;
    Ok(Json(json!({
        "token": token,
        "username": user.name,
        "role": user.role.as_str(),
        "expiresAt": crate::metrics::rfc3339(expires),
    })))
}

/// `POST /api/admin/logout`: end the session whose token made the request.
pub(crate) async fn logout(
    State(app): State<Shared>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let who = app.principal(&headers, Permission::Read)?;
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let presented = presented.strip_prefix("Bearer ").unwrap_or(presented);
    let hash = TokenHash::of(presented);
    let a = app.clone();
    blocking(move || -> Result<(), StoreError> {
        let is_session = a
            .store
            .tokens()?
            .iter()
            .any(|t| t.hash == hash && t.name == people::SESSION_TOKEN_NAME);
        if is_session {
            a.store.delete_token(&hash, &who.actor())?;
            a.reload_tokens()?;
        }
        Ok(())
    })
    .await??;
    Ok(StatusCode::NO_CONTENT)
}
