//! `POST /api/admin/playground`: evaluate every flag of some projects in one
//! environment for a given context, and say *why* each came out as it did.
//!
//! Request and response are Unleash's playground shapes:
//! `{environment, projects: "*" | [..], context}` →
//! `{input, features: [{name, projectId, isEnabled, isEnabledInCurrentEnvironment,
//! hasUnsatisfiedDependency, strategies: {result, data: [{name, id, result: {enabled,
//! evaluationStatus}, constraints: [{..constraint, result}], segments: [{id, name,
//! result, constraints}], parameters, variants}]}, variant, variants}]}`.
//!
//! The overall answer (`isEnabled`, `variant`) comes from the real engine, a
//! yggdrasil [`EngineState`] loaded with the whole environment (so dependencies on
//! parent flags count). yggdrasil only answers yes or no for a whole flag, so the
//! explanation is built with a trick: each strategy, each of its constraints and each
//! segment is compiled into a *scratch* flag of its own (enabled, no dependencies,
//! one `default` strategy carrying just that constraint, or just that strategy) in a
//! throw-away `EngineState`, and evaluated for the same context. The evaluation logic
//! is therefore yggdrasil's everywhere; nothing here re-implements an operator.
//!
//! It does not evaluate custom strategies (their `evaluationStatus` is
//! `incomplete`, as in Unleash) and it does not count metrics.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use unleash_types::client_features::{
    ClientFeature, ClientFeatures, Constraint, Context, Segment, Strategy,
};
use unleash_yggdrasil::{EngineState, UpdateMessage};

use crate::server::{ApiError, Shared, blocking, parse_json};
use crate::store::AdminSegment;

/// Strategies yggdrasil evaluates itself; any other name is a custom strategy.
const BUILT_IN: &[&str] = &[
    "default",
    "flexibleRollout",
    "userWithId",
    "gradualRolloutUserId",
    "gradualRolloutSessionId",
    "gradualRolloutRandom",
    "remoteAddress",
    "applicationHostname",
];
const MAX_PROPERTIES: usize = 100;
const MAX_CONTEXT_VALUE: usize = 1_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaygroundRequest {
    environment: String,
    #[serde(default)]
    projects: Option<Projects>,
    context: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Projects {
    All(String),
    Some(Vec<String>),
}

/// Check the context as Unleash's `sdkContextSchema` does (string values, a
/// `properties` object of strings, a parsable `currentTime`) plus our bounds, and
/// turn it into yggdrasil's [`Context`]. Unknown top-level keys become properties,
/// as in Unleash.
fn parse_context(raw: &Map<String, Value>, environment: &str) -> Result<Context, ApiError> {
    let text = |key: &str, v: &Value| -> Result<String, ApiError> {
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "context.{key} must be a string"
                )));
            }
        };
        if s.len() > MAX_CONTEXT_VALUE {
            return Err(ApiError::bad_request(format!(
                "context.{key} is longer than {MAX_CONTEXT_VALUE} bytes"
            )));
        }
        Ok(s)
    };
    let mut context = Context::default();
    let mut properties = HashMap::new();
    for (key, value) in raw {
        match key.as_str() {
            "userId" => context.user_id = Some(text(key, value)?),
            "sessionId" => context.session_id = Some(text(key, value)?),
            "remoteAddress" => context.remote_address = Some(text(key, value)?),
            "environment" => context.environment = Some(text(key, value)?),
            "appName" => context.app_name = Some(text(key, value)?),
            "currentTime" => {
                let t = text(key, value)?;
                if chrono_like_rfc3339(&t).is_none() {
                    return Err(ApiError::bad_request(format!(
                        "context.currentTime {t:?} is not an RFC 3339 date-time like 2026-01-31T12:00:00Z"
                    )));
                }
                context.current_time = Some(t);
            }
            "properties" => {
                let Value::Object(props) = value else {
                    return Err(ApiError::bad_request(
                        "context.properties must be an object of string values",
                    ));
                };
                for (k, v) in props {
                    properties.insert(k.clone(), text(&format!("properties.{k}"), v)?);
                }
            }
            _ => {
                properties.insert(key.clone(), text(key, value)?);
            }
        }
    }
    if properties.len() > MAX_PROPERTIES {
        return Err(ApiError::bad_request(format!(
            "context has {} properties; at most {MAX_PROPERTIES} are accepted",
            properties.len()
        )));
    }
    if !properties.is_empty() {
        context.properties = Some(properties);
    }
    if context.environment.is_none() {
        context.environment = Some(environment.to_owned());
    }
    Ok(context)
}

/// `Some(())` when `t` has the shape of an RFC 3339 date-time (yggdrasil parses it
/// again; this only rejects text that would silently evaluate as "now").
fn chrono_like_rfc3339(t: &str) -> Option<()> {
    let b = t.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    (b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && matches!(b[10], b'T' | b't' | b' ')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && (t.ends_with('Z') || t.ends_with('z') || t[19..].contains(['+', '-'])))
    .then_some(())
}

/// A throw-away engine holding `features` (and `segments`), asked about `name`.
fn scratch_enabled(feature: ClientFeature, segments: &[Segment], context: &Context) -> bool {
    let name = feature.name.clone();
    let engine = EngineState::default();
    // A strategy the store accepted compiles; warnings would only repeat that.
    let _ = engine.take_state(UpdateMessage::FullResponse(ClientFeatures {
        version: 2,
        features: vec![feature],
        segments: Some(segments.to_vec()),
        query: None,
        meta: None,
    }));
    engine.is_enabled(&name, context, &None)
}

/// A flag that is on, depends on nothing and has exactly `strategies`.
fn scratch_flag(name: &str, strategies: Vec<Strategy>) -> ClientFeature {
    ClientFeature {
        name: name.to_owned(),
        enabled: true,
        strategies: Some(strategies),
        ..ClientFeature::default()
    }
}

fn default_with(constraints: Vec<Constraint>) -> Strategy {
    Strategy {
        name: "default".into(),
        sort_order: None,
        segments: None,
        constraints: Some(constraints),
        parameters: None,
        variants: None,
    }
}

fn explain_constraints(
    name: &str,
    constraints: &[Constraint],
    context: &Context,
) -> (Vec<Value>, bool) {
    let mut all = true;
    let out = constraints
        .iter()
        .map(|c| {
            let ok = scratch_enabled(
                scratch_flag(name, vec![default_with(vec![c.clone()])]),
                &[],
                context,
            );
            all &= ok;
            let mut v = crate::wire::to_value(c);
            v["result"] = Value::Bool(ok);
            v
        })
        .collect();
    (out, all)
}

fn explain_strategy(
    flag: &str,
    id: &str,
    strategy: &Strategy,
    segments: &HashMap<i32, &AdminSegment>,
    all_segments: &[Segment],
    context: &Context,
) -> (Value, bool) {
    let (constraints, constraints_ok) = explain_constraints(
        flag,
        strategy.constraints.as_deref().unwrap_or(&[]),
        context,
    );
    let mut segments_ok = true;
    let segment_results: Vec<Value> = strategy
        .segments
        .iter()
        .flatten()
        .map(|sid| match segments.get(sid) {
            Some(seg) => {
                let (cs, ok) = explain_constraints(flag, &seg.constraints, context);
                segments_ok &= ok;
                json!({"id": sid, "name": seg.name, "result": ok, "constraints": cs})
            }
            None => {
                segments_ok = false;
                json!({"id": sid, "name": "", "result": false, "constraints": []})
            }
        })
        .collect();
    let built_in = BUILT_IN.contains(&strategy.name.as_str());
    let (enabled, status) = if built_in {
        let on = scratch_enabled(
            scratch_flag(flag, vec![strategy.clone()]),
            all_segments,
            context,
        );
        (Value::Bool(on), "complete")
    } else if constraints_ok && segments_ok {
        (Value::String("unknown".into()), "incomplete")
    } else {
        (Value::Bool(false), "incomplete")
    };
    let on = enabled == Value::Bool(true);
    let value = json!({
        "name": strategy.name,
        "id": id,
        "disabled": false,
        "result": {"enabled": enabled, "evaluationStatus": status},
        "constraints": constraints,
        "segments": segment_results,
        "parameters": strategy.parameters.clone().unwrap_or_default(),
        "variants": crate::wire::to_value(&strategy.variants.clone().unwrap_or_default()),
    });
    (value, on)
}

/// `POST /api/admin/playground`.
pub(crate) async fn playground(
    State(app): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    app.principal(&headers, crate::people::Permission::Read)?;
    let (req, raw): (PlaygroundRequest, Bytes) = parse_json(body)?;
    let projects = match &req.projects {
        None => "*".to_owned(),
        Some(Projects::All(s)) if s == "*" => "*".to_owned(),
        Some(Projects::All(s)) => {
            return Err(ApiError::bad_request(format!(
                "projects must be \"*\" or a list of project ids, not {s:?}"
            )));
        }
        Some(Projects::Some(list)) => {
            if list.is_empty() || list.iter().any(|p| p.is_empty() || p.contains(',')) {
                return Err(ApiError::bad_request(
                    "projects must be \"*\" or a non-empty list of project ids",
                ));
            }
            list.join(",")
        }
    };
    let context = parse_context(&req.context, &req.environment)?;
    let environment = req.environment;
    let input: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let a = app.clone();
    let features = blocking(move || -> Result<Vec<Value>, ApiError> {
        if !a.store.environments()?.contains(&environment) {
            return Err(ApiError::bad_request(format!(
                "unknown environment {environment:?}; list them with GET /api/admin/environments"
            )));
        }
        let (state, _) = a.store.client_state(&environment, &projects)?;
        let admin_segments = a.store.segments()?;
        let by_id: HashMap<i32, &AdminSegment> = admin_segments.iter().map(|s| (s.id, s)).collect();
        let all_segments = state.segments.clone().unwrap_or_default();
        let engine = EngineState::default();
        let _ = engine.take_state(UpdateMessage::FullResponse(state.clone()));
        let mut out = Vec::with_capacity(state.features.len());
        for feature in &state.features {
            let project = feature.project.clone().unwrap_or_else(|| "default".into());
            // The ids the admin API addresses strategies by, in the same order.
            let ids: Vec<String> = a
                .store
                .feature_environment(&project, &feature.name, &environment)
                .map(|c| c.strategies.into_iter().map(|s| s.id).collect())
                .unwrap_or_default();
            let strategies = feature.strategies.clone().unwrap_or_default();
            let mut data = Vec::with_capacity(strategies.len());
            let mut unknown = false;
            for (i, s) in strategies.iter().enumerate() {
                let id = ids.get(i).map(String::as_str).unwrap_or("");
                let (v, _) = explain_strategy(&feature.name, id, s, &by_id, &all_segments, &context);
                unknown |= v["result"]["enabled"] == "unknown";
                data.push(v);
            }
            // The strategies alone, as if the flag were on and had no parents.
            let strategies_on = scratch_enabled(
                scratch_flag(&feature.name, strategies.clone()),
                &all_segments,
                &context,
            );
            let strategies_result = if !strategies_on && unknown {
                Value::String("unknown".into())
            } else {
                Value::Bool(strategies_on)
            };
            let resolved = engine.resolve(&feature.name, &context, &None);
            let enabled = resolved.as_ref().is_some_and(|r| r.enabled);
            let variant = resolved
                .map(|r| {
                    let mut v = json!({"name": r.variant.name, "enabled": r.variant.enabled});
                    if let Some(p) = r.variant.payload {
                        v["payload"] = crate::wire::to_value(&p);
                    }
                    v
                })
                .unwrap_or_else(|| json!({"name": "disabled", "enabled": false}));
            let has_parents = feature.dependencies.as_ref().is_some_and(|d| !d.is_empty());
            out.push(json!({
                "name": feature.name,
                "projectId": project,
                "isEnabled": enabled,
                "isEnabledInCurrentEnvironment": feature.enabled,
                "hasUnsatisfiedDependency": has_parents && feature.enabled && strategies_on && !enabled,
                "strategies": {"result": strategies_result, "data": data},
                "variant": variant,
                "variants": crate::wire::to_value(&feature.variants.clone().unwrap_or_default()),
            }));
        }
        Ok(out)
    })
    .await??;
    Ok(Json(json!({"input": input, "features": features})))
}
