//! The admin API beyond flag creation and switching: a flag's configuration per
//! environment (strategies, variants), flag metadata, projects, token listing and
//! deletion, and the event log. Same paths and JSON shapes as Unleash's admin API.
//!
//! Every strategy is compiled by the evaluation engine before it is stored, so a
//! constraint the engine cannot evaluate (an unknown operator, a date or version that
//! does not parse) is a `400` naming the problem, not a flag that silently never
//! matches.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use unleash_types::client_features::{
    ClientFeature, ClientFeatures, Constraint, FeatureDependency, Operator, Strategy,
    StrategyVariant, Variant,
};
use unleash_yggdrasil::{EngineState, UpdateMessage};

use crate::people::Permission;
use crate::server::{ApiError, Shared, blocking, parse_json};
use crate::store::{
    AdminSegment, AdminStrategy, EnvConfig, FeatureEnvTarget, FeatureUpdate, StoreError,
};
use crate::token::{TokenHash, TokenType};

/// Most strategies on one flag in one environment.
const MAX_STRATEGIES: usize = 100;
/// Most constraints on one strategy.
const MAX_CONSTRAINTS: usize = 100;
/// Most values in one constraint.
const MAX_VALUES: usize = 1000;
/// Most variants on one flag or strategy.
const MAX_VARIANTS: usize = 100;
/// Longest name, context field, parameter or constraint value.
const MAX_TEXT: usize = 1000;

type FlagEnvPath = Path<(String, String, String)>;

/// A strategy as the admin API accepts it (Unleash's `createFeatureStrategySchema`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct StrategyInput {
    name: String,
    /// Accepted for compatibility and not kept.
    #[serde(default)]
    #[allow(dead_code)]
    title: Option<String>,
    #[serde(default)]
    disabled: Option<bool>,
    #[serde(default)]
    sort_order: Option<i32>,
    #[serde(default)]
    constraints: Vec<Constraint>,
    /// Unleash sends strings, but tools also send numbers (`"rollout": 50`).
    #[serde(default)]
    parameters: HashMap<String, Value>,
    #[serde(default)]
    segments: Vec<i32>,
    #[serde(default)]
    variants: Vec<StrategyVariant>,
    /// Ignored on input: the path names the strategy.
    #[serde(default)]
    #[allow(dead_code)]
    id: Option<String>,
}

fn too_long(s: &str) -> bool {
    s.chars().count() > MAX_TEXT
}

/// Bounds, operators and values of a constraint list (strategies and segments).
///
/// Beyond what compiling catches: yggdrasil compiles a REGEX that does not parse, or an
/// IN_CIDR value that is not an address, into a constraint that never matches, so
/// those are parsed here with the same crates. A list operator other than `IN` and
/// `NOT_IN` needs a value (the engine cannot compile it without); `IN []` and
/// `NOT_IN []` are accepted, as Unleash and yggdrasil accept them.
fn check_constraints(constraints: &[Constraint]) -> Result<(), ApiError> {
    let bad = |m: String| Err(ApiError::bad_request(m));
    if constraints.len() > MAX_CONSTRAINTS {
        return bad(format!("more than {MAX_CONSTRAINTS} constraints"));
    }
    for c in constraints {
        if let Operator::Unknown(op) = &c.operator {
            return bad(format!("unknown constraint operator {op:?}"));
        }
        let values = c.values.as_deref().unwrap_or_default();
        if c.context_name.is_empty() || too_long(&c.context_name) {
            return bad("a constraint needs a contextName of 1-1000 characters".into());
        }
        let on = &c.context_name;
        if values.len() > MAX_VALUES
            || values.iter().any(|v| too_long(v))
            || c.value.as_deref().is_some_and(too_long)
        {
            return bad(format!(
                "constraint on {on:?}: at most {MAX_VALUES} values of at most {MAX_TEXT} characters"
            ));
        }
        let needs_values = match c.operator {
            Operator::StrContains => Some("STR_CONTAINS"),
            Operator::StrStartsWith => Some("STR_STARTS_WITH"),
            Operator::StrEndsWith => Some("STR_ENDS_WITH"),
            Operator::InCidr => Some("IN_CIDR"),
            _ => None,
        };
        if let Some(op) = needs_values
            && values.is_empty()
        {
            return bad(format!(
                "constraint on {on:?}: {op} needs at least one value in \"values\""
            ));
        }
        match c.operator {
            Operator::RegexMatch => {
                // What yggdrasil compiles: `value`, absent meaning the empty pattern.
                let pattern = c.value.as_deref().unwrap_or_default();
                if let Err(e) = regex::RegexBuilder::new(pattern)
                    .case_insensitive(c.case_insensitive)
                    .build()
                {
                    return bad(format!(
                        "constraint on {on:?}: {pattern:?} is not a valid regular expression ({})",
                        regex_problem(&e)
                    ));
                }
            }
            Operator::InCidr => {
                if let Some(v) = values
                    .iter()
                    .find(|v| v.parse::<ipnetwork::IpNetwork>().is_err())
                {
                    return bad(format!(
                        "constraint on {on:?}: {v:?} is not an IP address or CIDR range \
                         (such as 10.0.0.0/8 or 2001:db8::/32)"
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The one line of a regex error that says what is wrong (its `Display` draws the
/// pattern with a caret under the spot over several lines).
fn regex_problem(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text.lines().map(str::trim).rfind(|l| !l.is_empty());
    last.map_or(text.clone(), |l| l.trim_start_matches("error: ").to_owned())
}

/// Check a strategy's shape and compile it with the evaluation engine.
pub(crate) fn to_strategy(input: StrategyInput) -> Result<Strategy, ApiError> {
    let bad = |m: String| Err(ApiError::bad_request(m));
    if input.name.is_empty() || input.name.chars().count() > 100 {
        return bad("a strategy needs a name of 1-100 characters".into());
    }
    if input.disabled == Some(true) {
        return bad("disabled strategies are not supported; delete the strategy instead".into());
    }
    check_constraints(&input.constraints)?;
    let mut parameters = HashMap::new();
    for (k, v) in input.parameters {
        let text = match v {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return bad(format!("parameter {k:?} must be a string or a number")),
        };
        if too_long(&k) || too_long(&text) {
            return bad(format!(
                "parameter {k:?} is longer than {MAX_TEXT} characters"
            ));
        }
        parameters.insert(k, text);
    }
    if let Some(r) = parameters.get("rollout")
        && !r.parse::<u32>().is_ok_and(|r| r <= 100)
    {
        return bad(format!(
            "rollout must be a whole number from 0 to 100, not {r:?}"
        ));
    }
    if input.variants.len() > MAX_VARIANTS
        || input
            .variants
            .iter()
            .any(|v| !(0..=1000).contains(&v.weight) || too_long(&v.name))
    {
        return bad(format!(
            "at most {MAX_VARIANTS} strategy variants, each with a weight from 0 to 1000"
        ));
    }
    let strategy = Strategy {
        name: input.name,
        sort_order: input.sort_order,
        segments: (!input.segments.is_empty()).then_some(input.segments),
        constraints: Some(input.constraints),
        parameters: Some(parameters),
        variants: Some(input.variants),
    };
    compile(std::slice::from_ref(&strategy), &[])?;
    Ok(strategy)
}

/// Compile a flag with these strategies and variants; any engine warning is a `400`.
fn compile(strategies: &[Strategy], variants: &[Variant]) -> Result<(), ApiError> {
    // Segments are checked against the store when written; here the engine only needs
    // to see the strategy's own constraints, so segment references are left out.
    let strategies = strategies
        .iter()
        .map(|s| Strategy {
            segments: None,
            ..s.clone()
        })
        .collect();
    let state = ClientFeatures {
        version: 2,
        features: vec![ClientFeature {
            name: "validation".into(),
            enabled: true,
            strategies: Some(strategies),
            variants: Some(variants.to_vec()),
            ..ClientFeature::default()
        }],
        segments: None,
        query: None,
        meta: None,
    };
    let engine = EngineState::default();
    if let Some(w) = engine
        .take_state(UpdateMessage::FullResponse(state))
        .and_then(|w| w.into_iter().next())
    {
        return Err(ApiError::bad_request(format!(
            "the strategy does not compile: {}",
            w.message
        )));
    }
    Ok(())
}

fn strategy_json(s: &AdminStrategy) -> Value {
    crate::wire::to_value(s)
}

async fn edit(
    app: &Shared,
    who: crate::people::Principal,
    (project, flag, environment): (String, String, String),
    action: &'static str,
    mut f: impl FnMut(&mut EnvConfig) -> Result<(), StoreError> + Send + 'static,
) -> Result<EnvConfig, ApiError> {
    let a = app.clone();
    let config = blocking(move || {
        let target = FeatureEnvTarget {
            project: &project,
            flag: &flag,
            environment: &environment,
            action,
        };
        a.store
            .edit_feature_environment(&target, &mut f, &who.actor())
    })
    .await??;
    app.changed().await;
    Ok(config)
}

/// `GET .../features/:f/environments/:env`: enabled, strategies, variants.
pub(crate) async fn get_environment(
    State(app): State<Shared>,
    headers: axum::http::HeaderMap,
    Path((project, flag, env)): FlagEnvPath,
) -> Result<Json<Value>, ApiError> {
    app.principal(&headers, Permission::Read)?;
    let a = app.clone();
    let (f, e) = (flag.clone(), env.clone());
    let c = blocking(move || a.store.feature_environment(&project, &f, &e)).await??;
    Ok(Json(serde_json::json!({
        "name": env,
        "environment": env,
        "featureName": flag,
        "enabled": c.enabled,
        "strategies": c.strategies.iter().map(strategy_json).collect::<Vec<_>>(),
        "variants": crate::wire::to_value(&c.variants),
    })))
}

/// `GET .../environments/:env/strategies`.
pub(crate) async fn list_strategies(
    State(app): State<Shared>,
    headers: axum::http::HeaderMap,
    Path((project, flag, env)): FlagEnvPath,
) -> Result<Json<Vec<Value>>, ApiError> {
    app.principal(&headers, Permission::Read)?;
    let a = app.clone();
    let c = blocking(move || a.store.feature_environment(&project, &flag, &env)).await??;
    Ok(Json(c.strategies.iter().map(strategy_json).collect()))
}

/// `POST .../environments/:env/strategies`: add a strategy; answers it with its id.
pub(crate) async fn add_strategy(
    State(app): State<Shared>,
    headers: axum::http::HeaderMap,
    Path(path): FlagEnvPath,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let who = app.principal(&headers, Permission::Edit)?;
    let (input, _): (StrategyInput, _) = parse_json(body)?;
    let strategy = to_strategy(input)?;
    let id = crate::store::new_id()?;
    let new_id = id.clone();
    let config = edit(&app, who, path, "feature-strategy-add", move |c| {
        if c.strategies.len() >= MAX_STRATEGIES {
            return Err(StoreError::Invalid(format!(
                "a flag has at most {MAX_STRATEGIES} strategies per environment"
            )));
        }
        c.strategies.push(AdminStrategy {
            id: new_id.clone(),
            strategy: strategy.clone(),
        });
        Ok(())
    })
    .await?;
    let added = config
        .strategies
        .iter()
        .find(|s| s.id == id)
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "strategy vanished"))?;
    Ok(Json(strategy_json(added)))
}

type StrategyPath = Path<(String, String, String, String)>;

/// `PUT .../environments/:env/strategies/:id`: replace a strategy.
pub(crate) async fn update_strategy(
    State(app): State<Shared>,
    headers: axum::http::HeaderMap,
    Path((project, flag, env, id)): StrategyPath,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let who = app.principal(&headers, Permission::Edit)?;
    let (input, _): (StrategyInput, _) = parse_json(body)?;
    let strategy = to_strategy(input)?;
    let (f, e, i) = (flag.clone(), env.clone(), id.clone());
    let config = edit(
        &app,
        who,
        (project, flag, env),
        "feature-strategy-update",
        move |c| {
            let s = c.strategies.iter_mut().find(|s| s.id == i).ok_or_else(|| {
                StoreError::UnknownStrategy {
                    flag: f.clone(),
                    environment: e.clone(),
                    id: i.clone(),
                }
            })?;
            s.strategy = strategy.clone();
            Ok(())
        },
    )
    .await?;
    let s = config
        .strategies
        .iter()
        .find(|s| s.id == id)
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "strategy vanished"))?;
    Ok(Json(strategy_json(s)))
}

/// `DELETE .../environments/:env/strategies/:id`.
pub(crate) async fn delete_strategy(
    State(app): State<Shared>,
    headers: axum::http::HeaderMap,
    Path((project, flag, env, id)): StrategyPath,
) -> Result<StatusCode, ApiError> {
    let who = app.principal(&headers, Permission::Edit)?;
    let (f, e) = (flag.clone(), env.clone());
    edit(
        &app,
        who,
        (project, flag, env),
        "feature-strategy-remove",
        move |c| {
            let before = c.strategies.len();
            c.strategies.retain(|s| s.id != id);
            if c.strategies.len() == before {
                return Err(StoreError::UnknownStrategy {
                    flag: f.clone(),
                    environment: e.clone(),
                    id: id.clone(),
                });
            }
            Ok(())
        },
    )
    .await?;
    Ok(StatusCode::OK)
}

/// Bounds of a flag's variants, and that the engine compiles them.
pub(crate) fn check_variants(variants: &[Variant]) -> Result<(), ApiError> {
    if variants.len() > MAX_VARIANTS
        || variants
            .iter()
            .any(|v| !(0..=1000).contains(&v.weight) || v.name.is_empty() || too_long(&v.name))
    {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_VARIANTS} variants, each named, with a weight from 0 to 1000"
        )));
    }
    compile(&[], variants)
}

/// `PUT .../environments/:env/variants`: replace the flag's variants there.
pub(crate) async fn put_variants(
    State(app): State<Shared>,
    headers: axum::http::HeaderMap,
    Path(path): FlagEnvPath,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let who = app.principal(&headers, Permission::Edit)?;
    let (variants, _): (Vec<Variant>, _) = parse_json(body)?;
    check_variants(&variants)?;
    let config = edit(
        &app,
        who,
        path,
        "feature-environment-variants-updated",
        move |c| {
            c.variants = variants.clone();
            Ok(())
        },
    )
    .await?;
    Ok(Json(serde_json::json!({
        "variants": crate::wire::to_value(&config.variants)
    })))
}

/// The body of a flag update: Unleash's `updateFeatureSchema`, and the two fields its
/// own console and older versions send back with it (a flag as `GET` answered it).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UpdateFeatureBody {
    /// Must be the flag's own name: a flag cannot be renamed (Unleash: "Cannot change
    /// name of feature flag"). Empty counts as absent, as in Unleash.
    name: Option<String>,
    description: Option<String>,
    #[serde(rename = "type")]
    feature_type: Option<String>,
    stale: Option<bool>,
    impression_data: Option<bool>,
    /// `true` archives the flag, as Unleash's update does.
    archived: Option<bool>,
    /// Ignored, as Unleash ignores it: when a flag was created is not editable.
    #[serde(rename = "createdAt")]
    _created_at: Option<serde::de::IgnoredAny>,
}

/// `PUT /api/admin/projects/:p/features/:f`: description, type, stale, impression data,
/// and archiving.
pub(crate) async fn update_feature(
    State(app): State<Shared>,
    headers: axum::http::HeaderMap,
    Path((project, flag)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let who = app.principal(&headers, Permission::Edit)?;
    let (body, _): (UpdateFeatureBody, _) = parse_json(body)?;
    if let Some(name) = body.name.as_deref().filter(|n| !n.is_empty())
        && name != flag
    {
        return Err(ApiError::bad_request(format!(
            "name {name:?} is not this flag's ({flag:?}): a flag cannot be renamed; \
             omit name or send {flag:?}"
        )));
    }
    let update = FeatureUpdate {
        description: body.description,
        feature_type: body.feature_type,
        stale: body.stale,
        impression_data: body.impression_data,
        archived: body.archived,
    };
    if update.description.as_deref().is_some_and(too_long) {
        return Err(ApiError::bad_request(
            "description is at most 1000 characters",
        ));
    }
    if let Some(t) = &update.feature_type {
        crate::server::check_flag_type(t)?;
    }
    let a = app.clone();
    blocking(move || {
        a.store
            .update_feature(&project, &flag, &update, &who.actor())
    })
    .await??;
    app.changed().await;
    Ok(StatusCode::OK)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenInfo {
    token_name: String,
    #[serde(rename = "type")]
    token_type: &'static str,
    project: String,
    projects: Vec<String>,
    environment: String,
    /// When it stops (or stopped) working; an expired token is still listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
}

/// `GET /api/admin/api-tokens`: names and scopes; secrets are not stored, so not shown.
pub(crate) async fn list_tokens(
    State(app): State<Shared>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    app.principal(&headers, Permission::Administer)?;
    let a = app.clone();
    let tokens = blocking(move || a.store.tokens()).await??;
    // Personal, agent and session tokens belong to their owner, not to this list.
    let tokens: Vec<TokenInfo> = tokens
        .into_iter()
        .filter(|t| t.owner.is_none())
        .map(|t| TokenInfo {
            token_name: t.name,
            token_type: t.token_type.as_str(),
            projects: t.project.split(',').map(str::to_owned).collect(),
            project: t.project,
            environment: t.environment,
            expires_at: t.expires_ms.map(crate::metrics::rfc3339),
        })
        .collect();
    Ok(Json(serde_json::json!({ "tokens": tokens })))
}

/// `DELETE /api/admin/api-tokens/:token`: revoke a token given its secret, at once
/// (admins any token, users their own personal tokens).
/// The last admin token cannot be deleted (that would lock everyone out).
pub(crate) async fn delete_token(
    State(app): State<Shared>,
    headers: axum::http::HeaderMap,
    Path(secret): Path<String>,
) -> Result<StatusCode, ApiError> {
    let who = app.principal(&headers, Permission::Read)?;
    let hash = TokenHash::of(&secret);
    let a = app.clone();
    let deleted = blocking(move || -> Result<bool, ApiError> {
        let tokens = a.store.tokens()?;
        let target = tokens.iter().find(|t| t.hash == hash);
        // Users revoke their own personal tokens; everything else is an admin's.
        let own = who.kind == crate::people::Kind::User
            && target.is_some_and(|t| t.owner.as_deref() == Some(who.name.as_str()));
        if !own {
            who.require(Permission::Administer)
                .map_err(|m| ApiError::new(StatusCode::FORBIDDEN, m))?;
        }
        let service =
            |t: &&crate::store::TokenRecord| t.token_type == TokenType::Admin && t.owner.is_none();
        let admins = tokens.iter().filter(service).count();
        if target.is_some_and(|t| service(&t)) && admins == 1 {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "this is the last admin token; create another admin token before deleting it",
            ));
        }
        let deleted = a.store.delete_token(&hash, &who.actor())?;
        a.reload_tokens()?;
        Ok(deleted)
    })
    .await??;
    if !deleted {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such token"));
    }
    app.changed().await;
    Ok(StatusCode::OK)
}

/// `GET /api/admin/projects`.
pub(crate) async fn list_projects(
    State(app): State<Shared>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    app.principal(&headers, Permission::Read)?;
    let a = app.clone();
    let projects = blocking(move || a.store.projects()).await??;
    let projects: Vec<Value> = projects
        .into_iter()
        .map(|p| serde_json::json!({"id": p, "name": p}))
        .collect();
    Ok(Json(
        serde_json::json!({"version": 1, "projects": projects}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewProject {
    id: String,
    /// Accepted for compatibility; the id is the name.
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

/// `POST /api/admin/projects` `{"id": ...}`.
pub(crate) async fn create_project(
    State(app): State<Shared>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let who = app.principal(&headers, Permission::Administer)?;
    let (p, _): (NewProject, _) = parse_json(body)?;
    if !crate::server::valid_flag_name(&p.id) || p.id.contains('.') || p.id == "*" {
        return Err(ApiError::bad_request(
            "a project id is 1-100 of a-z A-Z 0-9 - _ ~",
        ));
    }
    let a = app.clone();
    let id = p.id.clone();
    blocking(move || a.store.create_project(&id, &who.actor())).await??;
    app.changed().await;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"id": p.id, "name": p.id})),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    feature: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/admin/events[?feature=F&limit=N]`: the audit log, newest first, in
/// Unleash's event shape plus each event's hash.
pub(crate) async fn events(
    State(app): State<Shared>,
    headers: axum::http::HeaderMap,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    app.principal(&headers, Permission::Read)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let a = app.clone();
    let all = blocking(move || a.store.audit_events()).await??;
    let parse = |s: &Option<String>| {
        s.as_deref()
            .map(|t| serde_json::from_str(t).unwrap_or(Value::String(t.to_owned())))
    };
    let matching: Vec<&crate::audit::Event> = all
        .iter()
        .rev()
        .filter(|e| q.feature.is_none() || e.flag == q.feature)
        .collect();
    let events: Vec<Value> = matching
        .iter()
        .take(limit)
        .map(|e| {
            serde_json::json!({
                "id": e.seq,
                "type": e.action,
                "createdBy": e.actor,
                "createdAt": crate::metrics::rfc3339(e.ts),
                "featureName": e.flag,
                "environment": e.environment,
                "preData": parse(&e.before),
                "data": parse(&e.after),
                "hash": e.hash,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({
        "version": 1,
        "events": events,
        "totalEvents": matching.len(),
    })))
}

type Headers = axum::http::HeaderMap;

fn valid_name(s: &str) -> bool {
    crate::server::valid_flag_name(s) && !s.contains('.')
}

/// `GET /api/admin/environments`.
pub(crate) async fn list_environments(
    State(app): State<Shared>,
    headers: Headers,
) -> Result<Json<Value>, ApiError> {
    app.principal(&headers, Permission::Read)?;
    let a = app.clone();
    let envs = blocking(move || a.store.environments()).await??;
    let envs: Vec<Value> = envs
        .into_iter()
        .enumerate()
        .map(|(i, name)| serde_json::json!({"name": name, "enabled": true, "sortOrder": i}))
        .collect();
    Ok(Json(
        serde_json::json!({"version": 1, "environments": envs}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewEnvironment {
    name: String,
    /// Accepted for compatibility (Unleash's `development`/`production` kinds).
    #[serde(rename = "type", default)]
    #[allow(dead_code)]
    env_type: Option<String>,
}

/// `POST /api/admin/environments` `{"name": ...}`: every flag gets it, disabled.
pub(crate) async fn create_environment(
    State(app): State<Shared>,
    headers: Headers,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let who = app.principal(&headers, Permission::Administer)?;
    let (e, _): (NewEnvironment, _) = parse_json(body)?;
    if !valid_name(&e.name) || e.name == "*" {
        return Err(ApiError::bad_request(
            "an environment name is 1-100 of a-z A-Z 0-9 - _ ~",
        ));
    }
    let a = app.clone();
    let name = e.name.clone();
    blocking(move || a.store.create_environment(&name, &who.actor())).await??;
    app.changed().await;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"name": e.name})),
    ))
}

/// `GET /api/admin/segments`.
pub(crate) async fn list_segments(
    State(app): State<Shared>,
    headers: Headers,
) -> Result<Json<Value>, ApiError> {
    app.principal(&headers, Permission::Read)?;
    let a = app.clone();
    let segments = blocking(move || a.store.segments()).await??;
    Ok(Json(
        serde_json::json!({"segments": crate::wire::to_value(&segments)}),
    ))
}

pub(crate) fn check_segment(s: &AdminSegment) -> Result<(), ApiError> {
    if s.name.is_empty() || s.name.chars().count() > 100 {
        return Err(ApiError::bad_request(
            "a segment needs a name of 1-100 characters",
        ));
    }
    if s.description.as_deref().is_some_and(too_long) {
        return Err(ApiError::bad_request(
            "description is at most 1000 characters",
        ));
    }
    check_constraints(&s.constraints)?;
    let probe = Strategy {
        name: "default".into(),
        sort_order: None,
        segments: None,
        constraints: Some(s.constraints.clone()),
        parameters: None,
        variants: None,
    };
    compile(&[probe], &[])
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SegmentInput {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    constraints: Vec<Constraint>,
    /// Accepted for compatibility; segments are global here.
    #[serde(default)]
    #[allow(dead_code)]
    project: Option<String>,
}

async fn save_segment(
    app: Shared,
    headers: Headers,
    id: i32,
    body: Result<Bytes, BytesRejection>,
) -> Result<AdminSegment, ApiError> {
    let who = app.principal(&headers, Permission::Edit)?;
    let (input, _): (SegmentInput, _) = parse_json(body)?;
    let segment = AdminSegment {
        id,
        name: input.name,
        description: input.description,
        constraints: input.constraints,
    };
    check_segment(&segment)?;
    let a = app.clone();
    let s = segment.clone();
    let id = blocking(move || a.store.save_segment(&s, &who.actor())).await??;
    app.changed().await;
    Ok(AdminSegment { id, ..segment })
}

/// `POST /api/admin/segments`.
pub(crate) async fn create_segment(
    State(app): State<Shared>,
    headers: Headers,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let s = save_segment(app, headers, 0, body).await?;
    Ok((StatusCode::CREATED, Json(crate::wire::to_value(&s))))
}

/// `PUT /api/admin/segments/:id`.
pub(crate) async fn update_segment(
    State(app): State<Shared>,
    headers: Headers,
    Path(id): Path<i32>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    if id <= 0 {
        return Err(StoreError::UnknownSegment(id).into());
    }
    let s = save_segment(app, headers, id, body).await?;
    Ok(Json(crate::wire::to_value(&s)))
}

/// `DELETE /api/admin/segments/:id`: refused (409) while a strategy uses it.
pub(crate) async fn delete_segment(
    State(app): State<Shared>,
    headers: Headers,
    Path(id): Path<i32>,
) -> Result<StatusCode, ApiError> {
    let who = app.principal(&headers, Permission::Edit)?;
    let a = app.clone();
    blocking(move || a.store.delete_segment(id, &who.actor())).await??;
    app.changed().await;
    Ok(StatusCode::OK)
}

/// `GET /api/admin/archive/features`.
pub(crate) async fn archived(
    State(app): State<Shared>,
    headers: Headers,
) -> Result<Json<Value>, ApiError> {
    app.principal(&headers, Permission::Read)?;
    let a = app.clone();
    let features = blocking(move || a.store.archived_features()).await??;
    Ok(Json(
        serde_json::json!({"version": 1, "features": features}),
    ))
}

/// `POST /api/admin/archive/revive/:f`: back, disabled everywhere.
pub(crate) async fn revive(
    State(app): State<Shared>,
    headers: Headers,
    Path(flag): Path<String>,
) -> Result<StatusCode, ApiError> {
    let who = app.principal(&headers, Permission::Edit)?;
    let a = app.clone();
    blocking(move || a.store.revive_feature(&flag, &who.actor())).await??;
    app.changed().await;
    Ok(StatusCode::OK)
}

/// `DELETE /api/admin/archive/:f`: delete an archived flag for good.
pub(crate) async fn delete_archived(
    State(app): State<Shared>,
    headers: Headers,
    Path(flag): Path<String>,
) -> Result<StatusCode, ApiError> {
    let who = app.principal(&headers, Permission::Administer)?;
    let a = app.clone();
    blocking(move || a.store.delete_archived_feature(&flag, &who.actor())).await??;
    app.changed().await;
    Ok(StatusCode::OK)
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Tag {
    #[serde(rename = "type")]
    tag_type: String,
    value: String,
}

/// `GET /api/admin/features/:f/tags`.
pub(crate) async fn list_tags(
    State(app): State<Shared>,
    headers: Headers,
    Path(flag): Path<String>,
) -> Result<Json<Value>, ApiError> {
    app.principal(&headers, Permission::Read)?;
    let a = app.clone();
    let tags = blocking(move || a.store.tags(&flag)).await??;
    let tags: Vec<Tag> = tags
        .into_iter()
        .map(|(tag_type, value)| Tag { tag_type, value })
        .collect();
    Ok(Json(serde_json::json!({"version": 1, "tags": tags})))
}

/// `POST /api/admin/features/:f/tags` `{"type": ..., "value": ...}`.
pub(crate) async fn add_tag(
    State(app): State<Shared>,
    headers: Headers,
    Path(flag): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let who = app.principal(&headers, Permission::Edit)?;
    let (tag, _): (Tag, _) = parse_json(body)?;
    if !valid_name(&tag.tag_type) || tag.value.is_empty() || tag.value.chars().count() > 100 {
        return Err(ApiError::bad_request(
            "a tag type is 1-100 of a-z A-Z 0-9 - _ ~ and a value 1-100 characters",
        ));
    }
    let a = app.clone();
    let (t, v) = (tag.tag_type.clone(), tag.value.clone());
    let added = blocking(move || a.store.add_tag(&flag, &t, &v, &who.actor())).await??;
    let status = if added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(serde_json::json!({"version": 1, "tag": tag}))))
}

/// `DELETE /api/admin/features/:f/tags/:type/:value`.
pub(crate) async fn remove_tag(
    State(app): State<Shared>,
    headers: Headers,
    Path((flag, tag_type, value)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let who = app.principal(&headers, Permission::Edit)?;
    let a = app.clone();
    let removed =
        blocking(move || a.store.remove_tag(&flag, &tag_type, &value, &who.actor())).await??;
    if removed {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "the flag has no such tag",
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DependencyInput {
    feature: String,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    variants: Option<Vec<String>>,
}

/// `POST /api/admin/projects/:p/features/:child/dependencies`.
pub(crate) async fn add_dependency(
    State(app): State<Shared>,
    headers: Headers,
    Path((project, child)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let who = app.principal(&headers, Permission::Edit)?;
    let (d, _): (DependencyInput, _) = parse_json(body)?;
    if d.variants.as_ref().is_some_and(|v| v.len() > MAX_VARIANTS) {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_VARIANTS} variants in a dependency"
        )));
    }
    let dependency = FeatureDependency {
        feature: d.feature,
        enabled: d.enabled,
        variants: d.variants,
    };
    let a = app.clone();
    blocking(move || {
        a.store
            .set_dependency(&project, &child, &dependency, &who.actor())
    })
    .await??;
    app.changed().await;
    Ok(StatusCode::OK)
}

/// `DELETE .../dependencies/:parent` and `DELETE .../dependencies` (all).
pub(crate) async fn remove_dependency(
    State(app): State<Shared>,
    headers: Headers,
    Path(path): Path<Vec<(String, String)>>,
) -> Result<StatusCode, ApiError> {
    let who = app.principal(&headers, Permission::Edit)?;
    let get = |k: &str| path.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let (Some(project), Some(child)) = (get("project"), get("name")) else {
        return Err(ApiError::bad_request("bad path"));
    };
    let parent = get("parent");
    let a = app.clone();
    blocking(move || {
        a.store
            .remove_dependency(&project, &child, parent.as_deref(), &who.actor())
    })
    .await??;
    app.changed().await;
    Ok(StatusCode::OK)
}
