//! What each tool does, independent of MCP: arguments (with their JSON schemas),
//! validation, the requests sent through [`FlagApi`], and the answer.
//!
//! The governance decision lives here: a change to a *protected* environment (one
//! whose `changeRequestEnabled` is set in `GET .../change-requests/config`) is never
//! made directly; it becomes a change request submitted for review, which only a
//! human can approve. Turning a flag off is always direct (break-glass).

use rmcp::schemars::{self, JsonSchema};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{ApiError, FlagApi, segment};

/// Why a tool call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    /// The arguments are wrong; nothing was sent.
    #[error("{0}")]
    InvalidArgument(String),
    /// The flag server refused or could not be reached.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The server answered, but not with what the tool can act on.
    #[error("{0}")]
    Failed(String),
}

type Result<T> = std::result::Result<T, ToolError>;

fn default_project() -> String {
    "default".into()
}

/// Names the flag server accepts for flags, projects and environments (Unleash's
/// URL-friendly rule), checked here so the agent gets the reason before a request.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(ToolError::InvalidArgument(format!(
            "{what} {name:?} is not a valid name: use 1-100 characters of a-z A-Z 0-9 - _ . ~"
        )))
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateFlag {
    /// Project the flag belongs to.
    #[serde(default = "default_project")]
    #[schemars(default = "default_project")]
    pub project: String,
    /// Flag name: 1-100 characters of a-z A-Z 0-9 - _ . ~ (e.g. `checkout-v2`).
    pub name: String,
    /// What the flag guards, for the humans reviewing it.
    pub description: Option<String>,
    /// Unleash flag type: release (default), experiment, operational, kill-switch, permission.
    #[serde(rename = "type")]
    pub flag_type: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagRef {
    /// Project the flag belongs to.
    #[serde(default = "default_project")]
    #[schemars(default = "default_project")]
    pub project: String,
    /// Flag name.
    pub name: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListFlags {
    /// Project whose flags to list.
    #[serde(default = "default_project")]
    #[schemars(default = "default_project")]
    pub project: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Evaluate {
    /// Flag name.
    pub flag: String,
    /// Environment to evaluate in, e.g. `production`.
    pub environment: String,
    /// Unleash context: userId, sessionId, remoteAddress, appName, currentTime
    /// (RFC 3339), properties {name: value}; other string fields count as properties.
    #[serde(default)]
    pub context: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SetRollout {
    /// Project the flag belongs to.
    #[serde(default = "default_project")]
    #[schemars(default = "default_project")]
    pub project: String,
    /// Flag name.
    pub flag: String,
    /// Environment, e.g. `production`.
    pub environment: String,
    /// Share of users who get the flag, 0-100.
    pub percentage: i64,
    /// Context field that keeps a user's answer stable: `default`, `userId`,
    /// `sessionId`, `random` or a custom property. Default `default`.
    pub stickiness: Option<String>,
    /// Hash group; flags with the same groupId roll out to the same users.
    /// Default: the flag name.
    pub group_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestEnable {
    /// Project the flag belongs to.
    #[serde(default = "default_project")]
    #[schemars(default = "default_project")]
    pub project: String,
    /// Flag name.
    pub flag: String,
    /// Environment to turn the flag on in.
    pub environment: String,
    /// Why, for the human who reviews the change request.
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KillFlag {
    /// Project the flag belongs to.
    #[serde(default = "default_project")]
    #[schemars(default = "default_project")]
    pub project: String,
    /// Flag name.
    pub flag: String,
    /// Environment to turn it off in; every environment when omitted.
    pub environment: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CleanupFlag {
    /// Project the flag belongs to.
    #[serde(default = "default_project")]
    #[schemars(default = "default_project")]
    pub project: String,
    /// Flag name.
    pub flag: String,
    /// Archive the flag after reporting (only once no code reads it any more).
    #[serde(default)]
    pub archive: bool,
}

fn feature_path(project: &str, flag: &str) -> String {
    format!(
        "/api/admin/projects/{}/features/{}",
        segment(project),
        segment(flag)
    )
}

fn env_path(project: &str, flag: &str, env: &str) -> String {
    format!(
        "{}/environments/{}",
        feature_path(project, flag),
        segment(env)
    )
}

pub fn create_flag(api: &dyn FlagApi, a: &CreateFlag) -> Result<Value> {
    check_name("project", &a.project)?;
    check_name("flag", &a.name)?;
    let mut body = json!({"name": a.name});
    if let Some(d) = &a.description {
        body["description"] = d.clone().into();
    }
    if let Some(t) = &a.flag_type {
        body["type"] = t.clone().into();
    }
    api.send(
        "POST",
        &format!("/api/admin/projects/{}/features", segment(&a.project)),
        Some(&body),
    )?;
    let flag = api.send("GET", &feature_path(&a.project, &a.name), None)?;
    Ok(json!({
        "created": flag,
        "note": "The flag is off in every environment. Guard the new code with it (wrap_change), then roll it out (set_rollout / request_enable).",
    }))
}

pub fn get_flag_state(api: &dyn FlagApi, a: &FlagRef) -> Result<Value> {
    check_name("project", &a.project)?;
    check_name("flag", &a.name)?;
    let flag = api.send("GET", &feature_path(&a.project, &a.name), None)?;
    let protected = protected_environments(api, &a.project)?;
    let environments: Vec<Value> = flag["environments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let name = e["name"].as_str().unwrap_or_default();
            json!({
                "name": name,
                "enabled": e["enabled"],
                "protected": protected.iter().any(|p| p == name),
                "strategies": e["strategies"],
                "variants": e["variants"],
            })
        })
        .collect();
    Ok(json!({
        "name": flag["name"],
        "project": flag["project"],
        "type": flag["type"],
        "description": flag["description"],
        "stale": flag["stale"],
        "environments": environments,
    }))
}

pub fn list_flags(api: &dyn FlagApi, a: &ListFlags) -> Result<Value> {
    check_name("project", &a.project)?;
    let list = api.send(
        "GET",
        &format!("/api/admin/projects/{}/features", segment(&a.project)),
        None,
    )?;
    let flags: Vec<Value> = list["features"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            let on: Vec<&Value> = f["environments"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["enabled"] == true)
                .map(|e| &e["name"])
                .collect();
            json!({"name": f["name"], "type": f["type"], "description": f["description"],
                   "stale": f["stale"], "enabledIn": on})
        })
        .collect();
    Ok(json!({"project": a.project, "flags": flags}))
}

/// Turn the playground's answer for one flag into: the result, and why.
pub fn explain(feature: &Value) -> Value {
    let mut reasons = Vec::new();
    let enabled = feature["isEnabled"] == true;
    if feature["isEnabledInCurrentEnvironment"] != true {
        reasons.push("the flag is switched off in this environment".to_owned());
    }
    if feature["hasUnsatisfiedDependency"] == true {
        reasons.push("a parent flag it depends on is not satisfied".to_owned());
    }
    let mut strategies = Vec::new();
    let data = feature["strategies"]["data"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if data.is_empty() {
        reasons.push("it has no strategies, so it is on for everyone when switched on".into());
    }
    let mut matched = None;
    for s in &data {
        let failed: Vec<Value> = s["constraints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["result"] == false)
            .cloned()
            .collect();
        let failed_segments: Vec<Value> = s["segments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["result"] == false)
            .map(|seg| json!({"id": seg["id"], "name": seg["name"]}))
            .collect();
        let on = s["result"]["enabled"] == true;
        if on && matched.is_none() {
            matched = Some(json!({"name": s["name"], "id": s["id"]}));
        }
        let why = if on {
            "matched".to_owned()
        } else if !failed.is_empty() || !failed_segments.is_empty() {
            let mut parts: Vec<String> = failed
                .iter()
                .map(|c| {
                    format!(
                        "constraint {} {}{} {} failed",
                        c["contextName"].as_str().unwrap_or("?"),
                        if c["inverted"] == true { "NOT " } else { "" },
                        c["operator"].as_str().unwrap_or("?"),
                        c.get("values")
                            .filter(|v| !v.is_null())
                            .or_else(|| c.get("value"))
                            .map(Value::to_string)
                            .unwrap_or_default()
                    )
                })
                .collect();
            parts.extend(
                failed_segments
                    .iter()
                    .map(|s| format!("segment {} failed", s["name"].as_str().unwrap_or("?"))),
            );
            parts.join("; ")
        } else if s["result"]["evaluationStatus"] != "complete" {
            "custom strategy: the server cannot evaluate it".to_owned()
        } else {
            let p = &s["parameters"];
            match s["name"].as_str() {
                Some("flexibleRollout") => format!(
                    "constraints passed, but this context is outside the {}% rollout (stickiness {})",
                    p["rollout"].as_str().unwrap_or("?"),
                    p["stickiness"].as_str().unwrap_or("default")
                ),
                _ => "constraints passed, but the strategy's own rule did not match".to_owned(),
            }
        };
        strategies.push(json!({
            "name": s["name"], "id": s["id"], "enabled": s["result"]["enabled"],
            "evaluationStatus": s["result"]["evaluationStatus"],
            "why": why,
            "failedConstraints": failed, "failedSegments": failed_segments,
            "parameters": s["parameters"],
        }));
    }
    if !data.is_empty() {
        match &matched {
            Some(m) => reasons.push(format!(
                "strategy {} ({}) matched",
                m["name"].as_str().unwrap_or("?"),
                m["id"].as_str().unwrap_or("")
            )),
            None => reasons.push("no strategy matched this context".to_owned()),
        }
    }
    json!({
        "flag": feature["name"],
        "project": feature["projectId"],
        "enabled": enabled,
        "enabledInEnvironment": feature["isEnabledInCurrentEnvironment"],
        "variant": feature["variant"],
        "matchedStrategy": matched,
        "why": reasons.join("; "),
        "strategies": strategies,
    })
}

pub fn evaluate(api: &dyn FlagApi, a: &Evaluate) -> Result<Value> {
    check_name("flag", &a.flag)?;
    check_name("environment", &a.environment)?;
    let answer = api.send(
        "POST",
        "/api/admin/playground",
        Some(&json!({"environment": a.environment, "projects": "*", "context": a.context})),
    )?;
    let feature = answer["features"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["name"] == a.flag.as_str())
        .ok_or_else(|| {
            ToolError::Failed(format!(
                "flag {:?} does not exist (or is archived); list_flags shows the flags of a project",
                a.flag
            ))
        })?;
    Ok(explain(feature))
}

/// Environments of `project` where changes need a change request. A server
/// without change requests (the endpoint answers 404 "no such endpoint") has none.
pub fn protected_environments(api: &dyn FlagApi, project: &str) -> Result<Vec<String>> {
    let path = format!(
        "/api/admin/projects/{}/change-requests/config",
        segment(project)
    );
    match api.send("GET", &path, None) {
        Ok(list) => Ok(list
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["changeRequestEnabled"] == true)
            .filter_map(|e| e["environment"].as_str().map(str::to_owned))
            .collect()),
        Err(ApiError::Refused {
            status: 404,
            message,
            ..
        }) if message == "no such endpoint" => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// Open (or add to) the caller's change request for `environment` and submit it
/// for review. Answers what the agent should be told.
fn propose(
    api: &dyn FlagApi,
    project: &str,
    environment: &str,
    change: Value,
    comment: Option<&str>,
) -> Result<Value> {
    let base = format!(
        "/api/admin/projects/{}/environments/{}/change-requests",
        segment(project),
        segment(environment)
    );
    let cr = api.send("POST", &base, Some(&change))?;
    let id = cr["id"]
        .as_i64()
        .map(|i| i.to_string())
        .or_else(|| cr["id"].as_str().map(str::to_owned))
        .ok_or_else(|| {
            ToolError::Failed(format!(
                "the flag server opened a change request but sent no id: {cr}"
            ))
        })?;
    let mut state = json!({"state": "In review"});
    if let Some(c) = comment {
        state["comment"] = c.into();
    }
    let submitted = api.send(
        "PUT",
        &format!(
            "/api/admin/projects/{}/change-requests/{}/state",
            segment(project),
            segment(&id)
        ),
        Some(&state),
    )?;
    let state = submitted["state"]
        .as_str()
        .unwrap_or("In review")
        .to_owned();
    Ok(json!({
        "outcome": "change-request",
        "changeRequest": {"id": cr["id"], "state": state, "project": project, "environment": environment},
        "note": format!(
            "{environment} is protected: nothing changed yet. Change request {id} is {state}; \
             a human with the approver role must approve it (you cannot), then it is applied."
        ),
    }))
}

pub fn set_rollout(api: &dyn FlagApi, a: &SetRollout) -> Result<Value> {
    check_name("project", &a.project)?;
    check_name("flag", &a.flag)?;
    check_name("environment", &a.environment)?;
    if !(0..=100).contains(&a.percentage) {
        return Err(ToolError::InvalidArgument(format!(
            "percentage {} is outside 0-100; pass a whole number of percent",
            a.percentage
        )));
    }
    let stickiness = a.stickiness.clone().unwrap_or_else(|| "default".into());
    if stickiness.is_empty() {
        return Err(ToolError::InvalidArgument(
            "stickiness is empty; use default, userId, sessionId, random or a property name".into(),
        ));
    }
    let group_id = a.group_id.clone().unwrap_or_else(|| a.flag.clone());
    let parameters = json!({
        "rollout": a.percentage.to_string(),
        "stickiness": stickiness,
        "groupId": group_id,
    });
    let env = api.send("GET", &env_path(&a.project, &a.flag, &a.environment), None)?;
    let existing = env["strategies"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == "flexibleRollout")
        .cloned();
    // Replacing keeps the strategy's constraints, segments and variants: only the
    // rollout changes.
    let strategy = match &existing {
        Some(s) => json!({
            "name": "flexibleRollout",
            "parameters": parameters,
            "constraints": s.get("constraints").cloned().unwrap_or(json!([])),
            "segments": s.get("segments").cloned().unwrap_or(json!([])),
            "variants": s.get("variants").cloned().unwrap_or(json!([])),
        }),
        None => json!({"name": "flexibleRollout", "parameters": parameters,
                       "constraints": [], "segments": [], "variants": []}),
    };
    let id = existing
        .as_ref()
        .and_then(|s| s["id"].as_str())
        .map(str::to_owned);
    if protected_environments(api, &a.project)?.contains(&a.environment) {
        let (action, mut payload) = match &id {
            Some(id) => {
                let mut p = strategy.clone();
                p["id"] = id.clone().into();
                ("updateStrategy", p)
            }
            None => ("addStrategy", strategy.clone()),
        };
        payload["title"] = format!("{}% rollout", a.percentage).into();
        payload["disabled"] = false.into();
        return propose(
            api,
            &a.project,
            &a.environment,
            json!({"feature": a.flag, "action": action, "payload": payload}),
            Some(&format!("roll {} out to {}%", a.flag, a.percentage)),
        );
    }
    let strategies = format!(
        "{}/strategies",
        env_path(&a.project, &a.flag, &a.environment)
    );
    let (outcome, saved) = match &id {
        Some(id) => (
            "updated",
            api.send(
                "PUT",
                &format!("{strategies}/{}", segment(id)),
                Some(&strategy),
            )?,
        ),
        None => ("added", api.send("POST", &strategies, Some(&strategy))?),
    };
    let enabled = env["enabled"] == true;
    Ok(json!({
        "outcome": outcome,
        "strategy": saved,
        "environmentEnabled": enabled,
        "note": if enabled {
            format!("{}% of {} now get {}.", a.percentage, a.environment, a.flag)
        } else {
            format!("The rollout is set, but {} is off in {}: request_enable turns it on.", a.flag, a.environment)
        },
    }))
}

pub fn request_enable(api: &dyn FlagApi, a: &RequestEnable) -> Result<Value> {
    check_name("project", &a.project)?;
    check_name("flag", &a.flag)?;
    check_name("environment", &a.environment)?;
    if protected_environments(api, &a.project)?.contains(&a.environment) {
        return propose(
            api,
            &a.project,
            &a.environment,
            json!({"feature": a.flag, "action": "updateEnabled", "payload": {"enabled": true}}),
            a.reason.as_deref(),
        );
    }
    api.send(
        "POST",
        &format!("{}/on", env_path(&a.project, &a.flag, &a.environment)),
        None,
    )?;
    Ok(json!({
        "outcome": "enabled",
        "flag": a.flag,
        "environment": a.environment,
        "note": format!("{} is on in {} (it was not a protected environment).", a.flag, a.environment),
    }))
}

pub fn kill_flag(api: &dyn FlagApi, a: &KillFlag) -> Result<Value> {
    check_name("project", &a.project)?;
    check_name("flag", &a.flag)?;
    let environments = match &a.environment {
        Some(e) => {
            check_name("environment", e)?;
            vec![e.clone()]
        }
        None => {
            let flag = api.send("GET", &feature_path(&a.project, &a.flag), None)?;
            flag["environments"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["name"].as_str().map(str::to_owned))
                .collect()
        }
    };
    for env in &environments {
        api.send(
            "POST",
            &format!("{}/off", env_path(&a.project, &a.flag, env)),
            None,
        )?;
    }
    Ok(json!({
        "outcome": "off",
        "flag": a.flag,
        "environments": environments,
        "note": "Off now; SDKs that stream hear it within milliseconds, polling ones at their next poll.",
    }))
}

pub fn cleanup_flag(api: &dyn FlagApi, a: &CleanupFlag) -> Result<Value> {
    check_name("project", &a.project)?;
    check_name("flag", &a.flag)?;
    let state = get_flag_state(
        api,
        &FlagRef {
            project: a.project.clone(),
            name: a.flag.clone(),
        },
    )?;
    let envs = state["environments"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let enabled_in: Vec<Value> = envs
        .iter()
        .filter(|e| e["enabled"] == true)
        .map(|e| {
            let full = e["strategies"].as_array().into_iter().flatten().any(|s| {
                s["name"] == "default"
                    && s["constraints"].as_array().is_none_or(Vec::is_empty)
                    && s["segments"].as_array().is_none_or(Vec::is_empty)
                    || s["name"] == "flexibleRollout"
                        && s["parameters"]["rollout"] == "100"
                        && s["constraints"].as_array().is_none_or(Vec::is_empty)
            }) || e["strategies"].as_array().is_none_or(Vec::is_empty);
            json!({"environment": e["name"], "onForEveryone": full})
        })
        .collect();
    let guidance = if enabled_in.is_empty() {
        format!(
            "{} is off everywhere: delete the guarded new code path and keep the old one, \
             then archive the flag.",
            a.flag
        )
    } else {
        format!(
            "{} is still on in {}: if the new behaviour is for everyone, delete the flag check and \
             the old code path (keep the guarded code), deploy, then archive. Search the code for \
             the name {:?} to find every check.",
            a.flag,
            enabled_in
                .iter()
                .map(|e| e["environment"].as_str().unwrap_or("?"))
                .collect::<Vec<_>>()
                .join(", "),
            a.flag
        )
    };
    let mut out = json!({
        "flag": a.flag,
        "project": a.project,
        "enabledIn": enabled_in,
        "state": state,
        "guidance": guidance,
        "archived": false,
    });
    if a.archive {
        let protected = protected_environments(api, &a.project)?;
        let in_protected: Vec<&String> = protected
            .iter()
            .filter(|p| envs.iter().any(|e| e["name"] == p.as_str()))
            .collect();
        if let Some(env) = in_protected.first() {
            out["changeRequest"] = propose(
                api,
                &a.project,
                env,
                json!({"feature": a.flag, "action": "archiveFeature", "payload": {}}),
                Some("archive a flag no code reads any more"),
            )?;
        } else {
            api.send("DELETE", &feature_path(&a.project, &a.flag), None)?;
            out["archived"] = true.into();
            out["guidance"] = format!(
                "{} is archived: SDKs no longer see it. Its name stays taken.",
                a.flag
            )
            .into();
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A scripted flag server: answers by (method, path prefix), records requests.
    #[derive(Default)]
    struct Script {
        answers: Vec<(&'static str, String, std::result::Result<Value, ApiError>)>,
        sent: Mutex<Vec<(String, String, Option<Value>)>>,
    }

    impl Script {
        fn on(mut self, method: &'static str, path: &str, answer: Value) -> Self {
            self.answers.push((method, path.to_owned(), Ok(answer)));
            self
        }
        fn refuse(mut self, method: &'static str, path: &str, status: u16, msg: &str) -> Self {
            self.answers.push((
                method,
                path.to_owned(),
                Err(ApiError::Refused {
                    method,
                    path: path.to_owned(),
                    status,
                    message: msg.to_owned(),
                }),
            ));
            self
        }
        fn sent(&self) -> Vec<String> {
            self.sent
                .lock()
                .unwrap()
                .iter()
                .map(|(m, p, _)| format!("{m} {p}"))
                .collect()
        }
        fn body(&self, method: &str, path: &str) -> Value {
            self.sent
                .lock()
                .unwrap()
                .iter()
                .find(|(m, p, _)| m == method && p == path)
                .and_then(|(_, _, b)| b.clone())
                .unwrap_or(Value::Null)
        }
    }

    impl FlagApi for Script {
        fn send(
            &self,
            method: &'static str,
            path: &str,
            body: Option<&Value>,
        ) -> std::result::Result<Value, ApiError> {
            self.sent
                .lock()
                .unwrap()
                .push((method.into(), path.into(), body.cloned()));
            self.answers
                .iter()
                .find(|(m, p, _)| *m == method && p == path)
                .map(|(_, _, a)| a.clone())
                .unwrap_or_else(|| panic!("unexpected {method} {path}"))
        }
    }

    const CONFIG: &str = "/api/admin/projects/default/change-requests/config";
    const ENV: &str = "/api/admin/projects/default/features/f/environments/production";

    fn config(protected: bool) -> Value {
        json!([{"environment": "production", "type": "production",
                "changeRequestEnabled": protected, "requiredApprovals": 1}])
    }

    fn rollout(pct: i64) -> SetRollout {
        SetRollout {
            project: "default".into(),
            flag: "f".into(),
            environment: "production".into(),
            percentage: pct,
            stickiness: None,
            group_id: None,
        }
    }

    #[test]
    fn names_are_checked_before_anything_is_sent() {
        let api = Script::default();
        let err = create_flag(
            &api,
            &CreateFlag {
                project: "default".into(),
                name: "has space".into(),
                description: None,
                flag_type: None,
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, ToolError::InvalidArgument(ref m) if m.contains("\"has space\"") && m.contains("a-z")),
            "{err}"
        );
        assert!(api.sent().is_empty());
        assert!(check_name("flag", "").is_err());
        assert!(check_name("flag", "..").is_err());
        assert!(check_name("flag", &"a".repeat(101)).is_err());
        assert!(check_name("flag", "checkout-v2.beta_~").is_ok());
    }

    #[test]
    fn rollout_outside_0_to_100_is_refused() {
        let api = Script::default();
        for bad in [-1, 101] {
            let err = set_rollout(&api, &rollout(bad)).unwrap_err();
            assert!(
                matches!(err, ToolError::InvalidArgument(ref m) if m.contains("0-100")),
                "{err}"
            );
        }
        assert!(api.sent().is_empty());
    }

    #[test]
    fn rollout_in_unprotected_environment_adds_a_strategy() {
        let api = Script::default()
            .on("GET", ENV, json!({"enabled": true, "strategies": []}))
            .on("GET", CONFIG, config(false))
            .on("POST", &format!("{ENV}/strategies"), json!({"id": "s1"}));
        let out = set_rollout(&api, &rollout(25)).unwrap();
        assert_eq!(out["outcome"], "added");
        let body = api.body("POST", &format!("{ENV}/strategies"));
        assert_eq!(body["name"], "flexibleRollout");
        assert_eq!(
            body["parameters"],
            json!({"rollout": "25", "stickiness": "default", "groupId": "f"})
        );
    }

    #[test]
    fn rollout_replaces_the_existing_flexible_rollout_keeping_its_constraints() {
        let c = json!([{"contextName": "region", "operator": "IN", "values": ["eu"]}]);
        let api = Script::default()
            .on(
                "GET",
                ENV,
                json!({"enabled": false, "strategies": [
                    {"id": "d", "name": "default"},
                    {"id": "r", "name": "flexibleRollout", "constraints": c,
                     "parameters": {"rollout": "5"}}]}),
            )
            .on("GET", CONFIG, config(false))
            .on("PUT", &format!("{ENV}/strategies/r"), json!({"id": "r"}));
        let out = set_rollout(&api, &rollout(50)).unwrap();
        assert_eq!(out["outcome"], "updated");
        assert!(out["note"].as_str().unwrap().contains("request_enable"));
        let body = api.body("PUT", &format!("{ENV}/strategies/r"));
        assert_eq!(body["constraints"], c);
        assert_eq!(body["parameters"]["rollout"], "50");
    }

    #[test]
    fn rollout_in_protected_environment_opens_a_change_request() {
        let crs = "/api/admin/projects/default/environments/production/change-requests";
        let api = Script::default()
            .on(
                "GET",
                ENV,
                json!({"enabled": true, "strategies": [{"id": "r", "name": "flexibleRollout"}]}),
            )
            .on("GET", CONFIG, config(true))
            .on("POST", crs, json!({"id": 7, "state": "Draft"}))
            .on(
                "PUT",
                "/api/admin/projects/default/change-requests/7/state",
                json!({"id": 7, "state": "In review"}),
            );
        let out = set_rollout(&api, &rollout(10)).unwrap();
        assert_eq!(out["outcome"], "change-request");
        assert_eq!(out["changeRequest"]["id"], 7);
        assert_eq!(out["changeRequest"]["state"], "In review");
        assert!(out["note"].as_str().unwrap().contains("approve"));
        let change = api.body("POST", crs);
        assert_eq!(change["action"], "updateStrategy");
        assert_eq!(change["payload"]["id"], "r");
        assert_eq!(change["payload"]["parameters"]["rollout"], "10");
        assert!(!api.sent().iter().any(|s| s.contains("/strategies")));
    }

    #[test]
    fn enable_is_direct_only_where_unprotected() {
        let api = Script::default().on("GET", CONFIG, config(false)).on(
            "POST",
            &format!("{ENV}/on"),
            Value::Null,
        );
        let a = RequestEnable {
            project: "default".into(),
            flag: "f".into(),
            environment: "production".into(),
            reason: None,
        };
        assert_eq!(request_enable(&api, &a).unwrap()["outcome"], "enabled");

        let crs = "/api/admin/projects/default/environments/production/change-requests";
        let api = Script::default()
            .on("GET", CONFIG, config(true))
            .on("POST", crs, json!({"id": 3}))
            .on(
                "PUT",
                "/api/admin/projects/default/change-requests/3/state",
                json!({"state": "In review"}),
            );
        let a = RequestEnable {
            reason: Some("ship it".into()),
            ..a
        };
        let out = request_enable(&api, &a).unwrap();
        assert_eq!(out["outcome"], "change-request");
        assert_eq!(
            api.body("POST", crs),
            json!({"feature": "f", "action": "updateEnabled", "payload": {"enabled": true}})
        );
        assert_eq!(
            api.body("PUT", "/api/admin/projects/default/change-requests/3/state"),
            json!({"state": "In review", "comment": "ship it"})
        );
        assert!(!api.sent().iter().any(|s| s.ends_with("/on")));
    }

    #[test]
    fn a_server_without_change_requests_has_no_protected_environments() {
        let api = Script::default().refuse("GET", CONFIG, 404, "no such endpoint");
        assert!(protected_environments(&api, "default").unwrap().is_empty());
        // But an unknown project is still an error.
        let api = Script::default().refuse("GET", CONFIG, 404, "unknown project \"default\"");
        assert!(protected_environments(&api, "default").is_err());
    }

    #[test]
    fn kill_without_environment_turns_off_every_environment_even_protected() {
        let api = Script::default()
            .on(
                "GET",
                "/api/admin/projects/default/features/f",
                json!({"environments": [{"name": "development"}, {"name": "production"}]}),
            )
            .on(
                "POST",
                "/api/admin/projects/default/features/f/environments/development/off",
                Value::Null,
            )
            .on("POST", &format!("{ENV}/off"), Value::Null);
        let out = kill_flag(
            &api,
            &KillFlag {
                project: "default".into(),
                flag: "f".into(),
                environment: None,
            },
        )
        .unwrap();
        assert_eq!(out["environments"], json!(["development", "production"]));
        assert!(!api.sent().iter().any(|s| s.contains("change-requests")));
    }

    #[test]
    fn unauthorized_says_which_token_to_fix() {
        let e = ApiError::Refused {
            method: "GET",
            path: "/x".into(),
            status: 401,
            message: "invalid API token".into(),
        };
        let m = e.to_string();
        assert!(
            m.contains("invalid API token") && m.contains("CORDON_FLAGS_TOKEN"),
            "{m}"
        );
        assert!(!m.contains('\n'));
    }

    #[test]
    fn explain_names_the_failing_constraint() {
        let feature = json!({
            "name": "f", "projectId": "default", "isEnabled": false,
            "isEnabledInCurrentEnvironment": true, "hasUnsatisfiedDependency": false,
            "variant": {"name": "disabled", "enabled": false},
            "strategies": {"result": false, "data": [{
                "name": "flexibleRollout", "id": "s1",
                "result": {"enabled": false, "evaluationStatus": "complete"},
                "constraints": [
                    {"contextName": "region", "operator": "IN", "values": ["eu"], "inverted": false, "result": false},
                    {"contextName": "userId", "operator": "IN", "values": ["a"], "inverted": false, "result": true}],
                "segments": [], "parameters": {"rollout": "100"}}]}
        });
        let out = explain(&feature);
        assert_eq!(out["enabled"], false);
        assert_eq!(out["why"], "no strategy matched this context");
        let s = &out["strategies"][0];
        assert_eq!(s["failedConstraints"].as_array().unwrap().len(), 1);
        assert_eq!(s["why"], "constraint region IN [\"eu\"] failed");
    }
}
