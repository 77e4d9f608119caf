//! Change requests: four-eyes control over protected environments.
//!
//! Per project and environment, `change_request_settings` says whether changes there
//! need a change request and how many approvals. The store's direct writes call
//! [`guard`] (and its variants) inside their own transaction, so no path around the
//! HTTP layer (console, CLI, import) can skip it; turning a flag *off* is never
//! guarded.
//!
//! A request is one row: its header in columns, its changes, reviews, comments and
//! schedule in one JSON body (bounded: [`MAX_CHANGES`], [`MAX_COMMENTS`]). Every step is
//! an audit event in the same transaction. Applying is atomic: the request's changes
//! are simulated on the flags' current state and written together, or not at all.
//!
//! A request records a fingerprint of the state it was reviewed against (the flags and
//! segments it touches, when it was submitted). Applying refuses a request whose flags
//! changed since, so nobody applies something the approvers did not see; a scheduled
//! request whose flags change is suspended. Approvals are counted again against the
//! environment's requirement when a request is applied or scheduled.
//!
//! The scheduler applies each due request in a savepoint of its own: one that fails
//! writes nothing, is marked failed with its reason, and the others still apply.
//!
//! What it does not do: merge concurrent requests, or protect segments per
//! environment (a segment used in several protected environments is changed by one
//! request, approved in any one of them).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use unleash_types::client_features::{FeatureDependency, Strategy, Variant};

use crate::audit::{Actor, Change};
use crate::people::{Permission, Principal};
use crate::rows::now_millis;
use crate::sql::{Json, Sql};
use crate::store::{
    AdminSegment, AdminStrategy, EnvConfig, StoreError, append_event, check_dependency,
    drop_dependency, feature_project, known_environment, mark_archived, new_id, read_dependencies,
    read_env_config, read_segments, write_dependency, write_env_config, write_segment,
};

type Result<T> = std::result::Result<T, StoreError>;

/// Most changes in one request.
pub const MAX_CHANGES: usize = 50;
/// Most comments on one request.
pub const MAX_COMMENTS: usize = 200;
/// Longest comment or title, in characters.
pub const MAX_TEXT: usize = 4000;
/// Most approvals a setting may require.
pub const MAX_APPROVALS: i64 = 10;
/// Furthest ahead a request may be scheduled.
pub const MAX_SCHEDULE_MS: i64 = 366 * 24 * 3600 * 1000;

/// Where a change request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Draft,
    #[serde(rename = "In review")]
    InReview,
    Approved,
    Applied,
    Scheduled,
    Rejected,
    Cancelled,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Draft => "Draft",
            State::InReview => "In review",
            State::Approved => "Approved",
            State::Applied => "Applied",
            State::Scheduled => "Scheduled",
            State::Rejected => "Rejected",
            State::Cancelled => "Cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            State::Draft,
            State::InReview,
            State::Approved,
            State::Applied,
            State::Scheduled,
            State::Rejected,
            State::Cancelled,
        ]
        .into_iter()
        .find(|st| st.as_str().eq_ignore_ascii_case(s))
    }

    /// No further transition is possible.
    pub fn is_closed(self) -> bool {
        matches!(self, State::Applied | State::Rejected | State::Cancelled)
    }
}

/// One change, as Unleash's change-request API names them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "action", content = "payload", rename_all = "camelCase")]
pub enum Action {
    UpdateEnabled {
        enabled: bool,
    },
    AddStrategy(Strategy),
    UpdateStrategy(AdminStrategy),
    DeleteStrategy {
        id: String,
    },
    PatchVariant {
        variants: Vec<Variant>,
    },
    ArchiveFeature {},
    AddDependency(FeatureDependency),
    DeleteDependency {
        #[serde(default)]
        feature: Option<String>,
    },
    UpdateSegment(AdminSegment),
}

impl Action {
    fn name(&self) -> &'static str {
        match self {
            Action::UpdateEnabled { .. } => "updateEnabled",
            Action::AddStrategy(_) => "addStrategy",
            Action::UpdateStrategy(_) => "updateStrategy",
            Action::DeleteStrategy { .. } => "deleteStrategy",
            Action::PatchVariant { .. } => "patchVariant",
            Action::ArchiveFeature {} => "archiveFeature",
            Action::AddDependency(_) => "addDependency",
            Action::DeleteDependency { .. } => "deleteDependency",
            Action::UpdateSegment(_) => "updateSegment",
        }
    }
}

/// A change as submitted: which flag (ignored for segment changes) and what.
#[derive(Debug, Clone)]
pub struct NewChange {
    pub feature: String,
    pub action: Action,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredChange {
    id: u32,
    feature: String,
    change: Action,
    by: String,
    at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Review {
    by: String,
    approved: bool,
    #[serde(default)]
    comment: Option<String>,
    at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Comment {
    by: String,
    text: String,
    at: i64,
}

/// When a scheduled request applies, and how that went.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Schedule {
    pub at: i64,
    /// `pending`; `suspended` (a flag changed meanwhile, or a change no longer
    /// applies); `failed` (applying it failed when due, and wrote nothing); `applied`.
    pub status: String,
    /// Why it is suspended or failed, in one line.
    #[serde(default)]
    pub reason: Option<String>,
}

/// The before/after of one flag (or `segment:ID`) that a request touches.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Diff {
    pub name: String,
    pub before: Value,
    pub after: Value,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Body {
    changes: Vec<StoredChange>,
    reviews: Vec<Review>,
    comments: Vec<Comment>,
    #[serde(default)]
    schedule: Option<Schedule>,
    /// What the request was reviewed against; set on submit and on every edit.
    #[serde(default)]
    fingerprint: Option<String>,
    /// The before/after at the moment it was applied.
    #[serde(default)]
    applied: Option<Vec<Diff>>,
    next_change: u32,
}

/// A stored change request.
#[derive(Debug, Clone)]
pub struct ChangeRequest {
    pub id: i64,
    pub project: String,
    pub environment: String,
    pub title: String,
    pub state: State,
    /// The author's [`Principal::id`].
    pub created_by: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    body: Body,
}

/// A request with what it would do now (or did, once applied) and the approvals it
/// needs: what the API and console show.
#[derive(Debug, Clone)]
pub struct View {
    pub request: ChangeRequest,
    pub diff: Vec<Diff>,
    pub min_approvals: i64,
    /// The flags changed since the request was reviewed (applying would be refused).
    pub stale: bool,
}

impl View {
    /// Unleash's change-request JSON, plus `diff`-style `before`/`after` per feature.
    pub fn to_json(&self) -> Value {
        let r = &self.request;
        let b = &r.body;
        let user = |id: &str| json!({ "username": id });
        let mut features: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
        let mut segments = Vec::new();
        for c in &b.changes {
            let mut v = crate::wire::to_value(&c.change);
            v["id"] = c.id.into();
            v["createdBy"] = user(&c.by);
            v["createdAt"] = crate::metrics::rfc3339(c.at).into();
            if matches!(c.change, Action::UpdateSegment(_)) {
                segments.push(v);
            } else {
                features.entry(&c.feature).or_default().push(v);
            }
        }
        let diff_of = |name: &str| self.diff.iter().find(|d| d.name == name);
        let features: Vec<Value> = features
            .into_iter()
            .map(|(name, changes)| {
                let d = diff_of(name);
                json!({
                    "name": name,
                    "changes": changes,
                    "before": d.map(|d| d.before.clone()),
                    "after": d.map(|d| d.after.clone()),
                })
            })
            .collect();
        let reviews = |approved: bool| -> Vec<Value> {
            b.reviews
                .iter()
                .filter(|v| v.approved == approved)
                .map(|v| {
                    json!({
                        "createdBy": user(&v.by),
                        "createdAt": crate::metrics::rfc3339(v.at),
                        "comment": v.comment,
                    })
                })
                .collect()
        };
        json!({
            "id": r.id,
            "title": r.title,
            "project": r.project,
            "environment": r.environment,
            "state": r.state.as_str(),
            "minApprovals": self.min_approvals,
            "createdBy": user(&r.created_by),
            "createdAt": crate::metrics::rfc3339(r.created_ms),
            "updatedAt": crate::metrics::rfc3339(r.updated_ms),
            "features": features,
            "segments": segments,
            "diff": self.diff,
            "approvals": reviews(true),
            "rejections": reviews(false),
            "comments": b.comments.iter().map(|c| json!({
                "text": c.text,
                "createdBy": user(&c.by),
                "createdAt": crate::metrics::rfc3339(c.at),
            })).collect::<Vec<_>>(),
            "schedule": b.schedule.as_ref().map(|s| json!({
                "scheduledAt": crate::metrics::rfc3339(s.at),
                "status": s.status,
                "reason": s.reason,
            })),
            "stale": self.stale,
        })
    }
}

/// One environment's change-request setting in a project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Setting {
    pub environment: String,
    #[serde(rename = "type")]
    pub environment_type: String,
    pub change_request_enabled: bool,
    pub required_approvals: i64,
}

/// Every environment's setting in `project` (disabled, 1 approval, where none is
/// stored).
pub(crate) fn settings(c: &dyn Sql, project: &str) -> Result<Vec<Setting>> {
    project_exists(c, project)?;
    c.rows(
        "read change-request settings",
        "SELECT e.name, COALESCE(s.enabled, FALSE), COALESCE(s.required_approvals, 1)
         FROM environments e LEFT JOIN change_request_settings s
            ON s.environment = e.name AND s.project = ?1
         ORDER BY e.name",
        &[&project],
        |r| {
            let environment = r.text(0)?;
            Ok(Setting {
                environment_type: if environment == "production" {
                    "production".into()
                } else {
                    "development".into()
                },
                environment,
                change_request_enabled: r.flag(1)?,
                required_approvals: r.int(2)?,
            })
        },
    )
}

fn project_exists(c: &dyn Sql, project: &str) -> Result<()> {
    if c.exists(
        "look up the project",
        "SELECT 1 FROM projects WHERE name = ?1",
        &[&project],
    )? {
        Ok(())
    } else {
        Err(StoreError::UnknownProject(project.to_owned()))
    }
}

pub(crate) fn set_settings(
    tx: &dyn Sql,
    project: &str,
    environment: &str,
    enabled: bool,
    required: i64,
    actor: &Actor,
) -> Result<()> {
    project_exists(tx, project)?;
    known_environment(tx, environment)?;
    if !(1..=MAX_APPROVALS).contains(&required) {
        return Err(StoreError::Invalid(format!(
            "requiredApprovals must be from 1 to {MAX_APPROVALS}"
        )));
    }
    let before = settings(tx, project)?
        .into_iter()
        .find(|s| s.environment == environment);
    tx.execute(
        "store a change-request setting",
        "INSERT INTO change_request_settings (project, environment, enabled, required_approvals)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (project, environment) DO UPDATE SET
            enabled = excluded.enabled, required_approvals = excluded.required_approvals",
        &[&project, &environment, &enabled, &required],
    )?;
    append_event(
        tx,
        actor,
        Change::new("change-request-settings-updated")
            .environment(environment)
            .before_if(before)
            .after(json!({
                "project": project,
                "changeRequestEnabled": enabled,
                "requiredApprovals": required,
            })),
    )
}

/// The approvals changes in (`project`, `environment`) need; `None` when it is not
/// protected.
pub(crate) fn required_approvals(
    c: &dyn Sql,
    project: &str,
    environment: &str,
) -> Result<Option<i64>> {
    c.row(
        "read a change-request setting",
        "SELECT required_approvals FROM change_request_settings
         WHERE project = ?1 AND environment = ?2 AND enabled",
        &[&project, &environment],
        |r| r.int(0),
    )
}

/// Protected environments of `project`, sorted.
pub(crate) fn protected_environments(c: &dyn Sql, project: &str) -> Result<Vec<String>> {
    c.rows(
        "read protected environments",
        "SELECT environment FROM change_request_settings WHERE project = ?1 AND enabled
         ORDER BY environment",
        &[&project],
        |r| r.text(0),
    )
}

fn needs_request(project: &str, environment: &str) -> StoreError {
    StoreError::ChangeRequestRequired {
        project: project.to_owned(),
        environment: environment.to_owned(),
    }
}

/// Refuse a direct change in a protected environment.
pub(crate) fn guard(c: &dyn Sql, project: &str, environment: &str) -> Result<()> {
    match required_approvals(c, project, environment)? {
        Some(_) => Err(needs_request(project, environment)),
        None => Ok(()),
    }
}

/// Refuse a direct change that holds in every environment of `project` (archive,
/// dependencies) when any of them is protected.
pub(crate) fn guard_project(c: &dyn Sql, project: &str) -> Result<()> {
    match protected_environments(c, project)?.into_iter().next() {
        Some(environment) => Err(needs_request(project, &environment)),
        None => Ok(()),
    }
}

/// Refuse a direct change to every project's flags in `environment` (import).
pub(crate) fn guard_environment(c: &dyn Sql, environment: &str) -> Result<()> {
    let project = c.row(
        "read protected projects",
        "SELECT project FROM change_request_settings WHERE environment = ?1 AND enabled
         ORDER BY project LIMIT 1",
        &[&environment],
        |r| r.text(0),
    )?;
    match project {
        Some(p) => Err(needs_request(&p, environment)),
        None => Ok(()),
    }
}

/// Refuse a direct change to a segment that a strategy in a protected environment
/// uses.
pub(crate) fn guard_segment(c: &dyn Sql, id: i32) -> Result<()> {
    let uses = c.rows(
        "look for protected segment users",
        "SELECT DISTINCT f.project, s.environment, s.segments FROM strategies s
         JOIN features f ON f.name = s.feature
         JOIN change_request_settings c
            ON c.project = f.project AND c.environment = s.environment AND c.enabled",
        &[],
        |r| Ok((r.text(0)?, r.text(1)?, r.json(2)?)),
    )?;
    for (project, environment, segments) in uses {
        let ids: Option<Vec<i32>> = crate::rows::from_json("strategy segments", &segments)?;
        if ids.unwrap_or_default().contains(&id) {
            return Err(needs_request(&project, &environment));
        }
    }
    Ok(())
}

fn read_request(r: &dyn crate::sql::Columns) -> Result<ChangeRequest> {
    let state = r.text(4)?;
    Ok(ChangeRequest {
        id: r.int(0)?,
        project: r.text(1)?,
        environment: r.text(2)?,
        title: r.text(3)?,
        state: State::parse(&state).ok_or_else(|| {
            StoreError::Invalid(format!("stored change request has unknown state {state:?}"))
        })?,
        created_by: r.text(5)?,
        created_ms: r.int(6)?,
        updated_ms: r.int(7)?,
        body: crate::rows::from_json("change request", &r.json(8)?)?,
    })
}

const COLUMNS: &str = "id, project, environment, title, state, created_by, created_ms, \
                       updated_ms, body FROM change_requests";

/// The requests of `project`, newest first.
pub(crate) fn list(c: &dyn Sql, project: &str) -> Result<Vec<ChangeRequest>> {
    project_exists(c, project)?;
    c.rows(
        "list change requests",
        &format!("SELECT {COLUMNS} WHERE project = ?1 ORDER BY id DESC"),
        &[&project],
        read_request,
    )
}

pub(crate) fn load(c: &dyn Sql, project: &str, id: i64) -> Result<ChangeRequest> {
    c.row(
        "read a change request",
        &format!("SELECT {COLUMNS} WHERE project = ?1 AND id = ?2"),
        &[&project, &id],
        read_request,
    )?
    .ok_or_else(|| StoreError::UnknownChangeRequest {
        project: project.to_owned(),
        id,
    })
}

fn save(tx: &dyn Sql, r: &ChangeRequest) -> Result<()> {
    tx.execute(
        "store a change request",
        "UPDATE change_requests SET title = ?2, state = ?3, updated_ms = ?4, body = ?5
         WHERE id = ?1",
        &[
            &r.id,
            &r.title,
            &r.state.as_str(),
            &r.updated_ms,
            &Json::of(&r.body),
        ],
    )?;
    Ok(())
}

fn event(
    tx: &dyn Sql,
    actor: &Actor,
    action: &str,
    r: &ChangeRequest,
    detail: Value,
) -> Result<()> {
    let mut after = json!({
        "changeRequest": r.id,
        "project": r.project,
        "title": r.title,
        "state": r.state.as_str(),
    });
    if let (Some(a), Value::Object(d)) = (after.as_object_mut(), detail) {
        a.extend(d);
    }
    append_event(
        tx,
        actor,
        Change::new(action).environment(&r.environment).after(after),
    )
}

/// The flag state a request changes: one environment's configuration, and what holds
/// in all of them.
#[derive(Debug, Clone, Serialize)]
struct FlagState {
    enabled: bool,
    strategies: Vec<AdminStrategy>,
    variants: Vec<Variant>,
    archived: bool,
    dependencies: Vec<FeatureDependency>,
}

fn read_flag(c: &dyn Sql, project: &str, flag: &str, environment: &str) -> Result<FlagState> {
    match feature_project(c, flag)? {
        Some((p, archived)) if p == project => {
            let EnvConfig {
                enabled,
                variants,
                strategies,
            } = read_env_config(c, flag, environment)?;
            Ok(FlagState {
                enabled,
                strategies,
                variants,
                archived,
                dependencies: read_dependencies(c, flag)?,
            })
        }
        _ => Err(StoreError::UnknownFlag {
            project: project.to_owned(),
            flag: flag.to_owned(),
        }),
    }
}

fn unknown_strategy(flag: &str, environment: &str, id: &str) -> StoreError {
    StoreError::UnknownStrategy {
        flag: flag.to_owned(),
        environment: environment.to_owned(),
        id: id.to_owned(),
    }
}

fn simulate(s: &mut FlagState, action: &Action, flag: &str, environment: &str) -> Result<()> {
    match action {
        Action::UpdateEnabled { enabled } => s.enabled = *enabled,
        Action::AddStrategy(strategy) => s.strategies.push(AdminStrategy {
            id: String::new(),
            strategy: strategy.clone(),
        }),
        Action::UpdateStrategy(u) => {
            let found = s
                .strategies
                .iter_mut()
                .find(|x| x.id == u.id)
                .ok_or_else(|| unknown_strategy(flag, environment, &u.id))?;
            found.strategy = u.strategy.clone();
        }
        Action::DeleteStrategy { id } => {
            let before = s.strategies.len();
            s.strategies.retain(|x| &x.id != id);
            if s.strategies.len() == before {
                return Err(unknown_strategy(flag, environment, id));
            }
        }
        Action::PatchVariant { variants } => s.variants = variants.clone(),
        Action::ArchiveFeature {} => s.archived = true,
        Action::AddDependency(d) => {
            s.dependencies.retain(|x| x.feature != d.feature);
            s.dependencies.push(d.clone());
        }
        Action::DeleteDependency { feature } => {
            let before = s.dependencies.len();
            s.dependencies
                .retain(|x| feature.as_ref().is_some_and(|f| &x.feature != f));
            if s.dependencies.len() == before {
                return Err(StoreError::Invalid(format!(
                    "{flag:?} has no such dependency"
                )));
            }
        }
        Action::UpdateSegment(_) => {}
    }
    Ok(())
}

/// What the request would do to the current state: the before/after of every flag and
/// segment it touches, in order of first mention.
fn preview(c: &dyn Sql, r: &ChangeRequest) -> Result<Vec<Diff>> {
    let mut flags: Vec<(String, FlagState, FlagState)> = Vec::new();
    let mut segments: Vec<(i32, Option<AdminSegment>, AdminSegment)> = Vec::new();
    for ch in &r.body.changes {
        if let Action::UpdateSegment(seg) = &ch.change {
            match segments.iter_mut().find(|(id, _, _)| *id == seg.id) {
                Some(entry) => entry.2 = seg.clone(),
                None => {
                    let before = read_segments(c)?.into_iter().find(|s| s.id == seg.id);
                    segments.push((seg.id, before, seg.clone()));
                }
            }
            continue;
        }
        let i = match flags.iter().position(|(n, _, _)| n == &ch.feature) {
            Some(i) => i,
            None => {
                let s = read_flag(c, &r.project, &ch.feature, &r.environment)?;
                flags.push((ch.feature.clone(), s.clone(), s));
                flags.len() - 1
            }
        };
        if let Action::AddDependency(d) = &ch.change {
            // What the store checks when it writes the dependency, against the state
            // as it will be then: earlier changes of this request applied.
            check_dependency(c, &r.project, &ch.feature, &d.feature, |c| {
                nested_after(c, &flags, &ch.feature, &d.feature)
            })?;
        }
        simulate(&mut flags[i].2, &ch.change, &ch.feature, &r.environment)?;
    }
    let mut out: Vec<Diff> = flags
        .into_iter()
        .map(|(name, before, after)| Diff {
            name,
            before: crate::wire::to_value(&before),
            after: crate::wire::to_value(&after),
        })
        .collect();
    out.extend(segments.into_iter().map(|(id, before, after)| Diff {
        name: format!("segment:{id}"),
        before: crate::wire::to_value(&before),
        after: crate::wire::to_value(&after),
    }));
    Ok(out)
}

/// Whether `parent` has parents or `child` is a parent once the changes `preview` has
/// simulated so far are applied: the flags in `flags` as simulated, others as stored.
fn nested_after(
    c: &dyn Sql,
    flags: &[(String, FlagState, FlagState)],
    child: &str,
    parent: &str,
) -> Result<bool> {
    let simulated = |name: &str| {
        flags
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, after)| after)
    };
    let parent_has_parents = match simulated(parent) {
        Some(s) => !s.dependencies.is_empty(),
        None => !read_dependencies(c, parent)?.is_empty(),
    };
    if parent_has_parents {
        return Ok(true);
    }
    if flags
        .iter()
        .any(|(_, _, after)| after.dependencies.iter().any(|d| d.feature == child))
    {
        return Ok(true);
    }
    let stored_children = c.rows(
        "read a flag's dependents",
        "SELECT child FROM feature_dependencies WHERE parent = ?1",
        &[&child],
        |r| r.text(0),
    )?;
    Ok(stored_children.iter().any(|k| simulated(k).is_none()))
}

/// A hash of the current state of everything the request touches.
fn fingerprint(diff: &[Diff]) -> String {
    let mut h = Sha256::new();
    for d in diff {
        h.update(d.name.as_bytes());
        h.update([0]);
        h.update(crate::wire::to_vec(&d.before));
        h.update([0]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A request with its preview (or its applied diff) and required approvals. A request
/// that no longer applies (a strategy it edits is gone) shows the error as its diff.
pub(crate) fn view(c: &dyn Sql, r: ChangeRequest) -> Result<View> {
    let min_approvals = required_approvals(c, &r.project, &r.environment)?.unwrap_or(1);
    let (diff, stale) = match &r.body.applied {
        Some(d) => (d.clone(), false),
        None if r.state.is_closed() => (Vec::new(), false),
        None => match preview(c, &r) {
            Ok(d) => {
                let stale = r
                    .body
                    .fingerprint
                    .as_ref()
                    .is_some_and(|f| *f != fingerprint(&d));
                (d, stale)
            }
            Err(e) => (
                vec![Diff {
                    name: "error".into(),
                    before: Value::Null,
                    after: json!({ "error": e.to_string() }),
                }],
                true,
            ),
        },
    };
    Ok(View {
        request: r,
        diff,
        min_approvals,
        stale,
    })
}

fn check_text(what: &str, text: &str) -> Result<()> {
    if text.trim().is_empty() || text.chars().count() > MAX_TEXT {
        return Err(StoreError::Invalid(format!(
            "a {what} has 1 to {MAX_TEXT} characters"
        )));
    }
    Ok(())
}

/// Add changes to `who`'s open draft in (`project`, `environment`), creating it.
/// Returns the request's id.
pub(crate) fn submit_changes(
    tx: &dyn Sql,
    project: &str,
    environment: &str,
    changes: &[NewChange],
    who: &Principal,
) -> Result<i64> {
    project_exists(tx, project)?;
    known_environment(tx, environment)?;
    if required_approvals(tx, project, environment)?.is_none() {
        return Err(StoreError::Invalid(format!(
            "environment {environment:?} of project {project:?} does not use change requests; change it directly"
        )));
    }
    if changes.is_empty() {
        return Err(StoreError::Invalid("no changes given".into()));
    }
    let author = who.id();
    let now = now_millis();
    let draft = tx.row(
        "find a draft",
        &format!(
            "SELECT {COLUMNS} WHERE project = ?1 AND environment = ?2 AND created_by = ?3
             AND state = 'Draft' ORDER BY id DESC LIMIT 1"
        ),
        &[&project, &environment, &author],
        read_request,
    )?;
    let (mut r, created) = match draft {
        Some(r) => (r, false),
        None => {
            let id = tx
                .row(
                    "number a change request",
                    "SELECT COALESCE(MAX(id), 0) + 1 FROM change_requests",
                    &[],
                    |r| r.int(0),
                )?
                .unwrap_or(1);
            let r = ChangeRequest {
                id,
                project: project.to_owned(),
                environment: environment.to_owned(),
                title: format!("Change request #{id}"),
                state: State::Draft,
                created_by: author.clone(),
                created_ms: now,
                updated_ms: now,
                body: Body {
                    next_change: 1,
                    ..Body::default()
                },
            };
            tx.execute(
                "store a change request",
                "INSERT INTO change_requests
                    (id, project, environment, title, state, created_by, created_ms,
                     updated_ms, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                &[
                    &r.id,
                    &r.project,
                    &r.environment,
                    &r.title,
                    &r.state.as_str(),
                    &r.created_by,
                    &r.created_ms,
                    &r.updated_ms,
                    &Json::of(&r.body),
                ],
            )?;
            (r, true)
        }
    };
    if r.body.changes.len() + changes.len() > MAX_CHANGES {
        return Err(StoreError::Invalid(format!(
            "a change request holds at most {MAX_CHANGES} changes; submit this one and open another"
        )));
    }
    for c in changes {
        r.body.changes.push(StoredChange {
            id: r.body.next_change,
            feature: c.feature.clone(),
            change: c.action.clone(),
            by: author.clone(),
            at: now,
        });
        r.body.next_change += 1;
    }
    // Every change must apply to the current state, or it is refused now.
    preview(tx, &r)?;
    r.updated_ms = now;
    save(tx, &r)?;
    let names: Vec<String> = changes
        .iter()
        .map(|c| format!("{} {}", c.action.name(), c.feature))
        .collect();
    event(
        tx,
        &who.actor(),
        if created {
            "change-request-created"
        } else {
            "change-request-changes-added"
        },
        &r,
        json!({ "changes": names }),
    )?;
    Ok(r.id)
}

/// A request that is not closed, else a conflict naming its state.
fn open_request(tx: &dyn Sql, project: &str, id: i64) -> Result<ChangeRequest> {
    let r = load(tx, project, id)?;
    if r.state.is_closed() {
        return Err(StoreError::Conflict(format!(
            "change request {id} is {} and cannot change any more",
            r.state.as_str()
        )));
    }
    Ok(r)
}

/// After an edit: approvals no longer stand, the request is back in review (unless a
/// draft), and it is reviewed against the state as it is now.
fn revoke(tx: &dyn Sql, r: &mut ChangeRequest, actor: &Actor) -> Result<()> {
    if r.state == State::Draft {
        return Ok(());
    }
    let had = r.body.reviews.len();
    r.body.reviews.clear();
    r.body.schedule = None;
    r.state = State::InReview;
    r.body.fingerprint = Some(fingerprint(&preview(tx, r)?));
    event(
        tx,
        actor,
        "change-request-approvals-revoked",
        r,
        json!({ "revokedReviews": had }),
    )
}

fn author_only(r: &ChangeRequest, who: &Principal, what: &str) -> Result<()> {
    if r.created_by != who.id() {
        return Err(StoreError::Forbidden(format!(
            "only the author ({}) may {what} change request {}",
            r.created_by, r.id
        )));
    }
    Ok(())
}

/// Replace (`Some`) or drop (`None`) one change of a request. Author only; revokes
/// approvals.
fn edit_change(
    tx: &dyn Sql,
    project: &str,
    id: i64,
    change_id: u32,
    replacement: Option<NewChange>,
    who: &Principal,
) -> Result<()> {
    let mut r = open_request(tx, project, id)?;
    author_only(&r, who, "edit")?;
    let Some(i) = r.body.changes.iter().position(|c| c.id == change_id) else {
        return Err(StoreError::Invalid(format!(
            "change request {id} has no change {change_id}"
        )));
    };
    let action = match replacement {
        Some(n) => {
            let c = &mut r.body.changes[i];
            c.feature = n.feature;
            c.change = n.action;
            c.at = now_millis();
            "change-request-change-edited"
        }
        None => {
            r.body.changes.remove(i);
            "change-request-change-discarded"
        }
    };
    preview(tx, &r)?;
    let actor = who.actor();
    revoke(tx, &mut r, &actor)?;
    r.updated_ms = now_millis();
    save(tx, &r)?;
    event(tx, &actor, action, &r, json!({ "change": change_id }))
}

fn set_title(tx: &dyn Sql, project: &str, id: i64, title: &str, who: &Principal) -> Result<()> {
    check_text("title", title)?;
    let mut r = open_request(tx, project, id)?;
    author_only(&r, who, "rename")?;
    r.title = title.trim().to_owned();
    r.updated_ms = now_millis();
    save(tx, &r)?;
    event(
        tx,
        &who.actor(),
        "change-request-title-updated",
        &r,
        json!({}),
    )
}

fn add_comment(tx: &dyn Sql, project: &str, id: i64, text: &str, who: &Principal) -> Result<()> {
    check_text("comment", text)?;
    let mut r = load(tx, project, id)?;
    if r.body.comments.len() >= MAX_COMMENTS {
        return Err(StoreError::Invalid(format!(
            "change request {id} already has {MAX_COMMENTS} comments"
        )));
    }
    r.body.comments.push(Comment {
        by: who.id(),
        text: text.to_owned(),
        at: now_millis(),
    });
    r.updated_ms = now_millis();
    save(tx, &r)?;
    event(
        tx,
        &who.actor(),
        "change-request-comment-added",
        &r,
        json!({ "comment": text }),
    )
}

/// A change to an existing request.
#[derive(Debug, Clone)]
pub enum Update {
    /// Replace (`Some`) or drop (`None`) one change; author only, revokes approvals.
    Change {
        id: u32,
        replacement: Option<NewChange>,
    },
    Title(String),
    Comment(String),
    Move(Transition),
}

pub(crate) fn update(
    tx: &dyn Sql,
    project: &str,
    id: i64,
    update: &Update,
    who: &Principal,
) -> Result<()> {
    match update {
        Update::Change {
            id: change,
            replacement,
        } => edit_change(tx, project, id, *change, replacement.clone(), who),
        Update::Title(t) => set_title(tx, project, id, t, who),
        Update::Comment(c) => add_comment(tx, project, id, c, who),
        Update::Move(to) => transition(tx, project, id, to, who),
    }
}

/// Where a request should go next, as `PUT .../state` asks.
#[derive(Debug, Clone)]
pub enum Transition {
    /// Draft (or an approved/suspended request after an edit elsewhere) to review.
    Submit,
    Approve(Option<String>),
    Reject(Option<String>),
    Apply,
    Schedule(i64),
    Cancel,
}

fn wrong_state(r: &ChangeRequest, wanted: &str) -> StoreError {
    StoreError::Conflict(format!(
        "change request {} is {}; it must be {wanted}",
        r.id,
        r.state.as_str()
    ))
}

fn permit(who: &Principal, p: Permission) -> Result<()> {
    who.require(p).map_err(StoreError::Forbidden)
}

/// Move a request. Permission to reach the endpoint is checked by the caller; the
/// rules that depend on the request (author, approvals, state) are checked here, in
/// the transaction.
fn transition(
    tx: &dyn Sql,
    project: &str,
    id: i64,
    to: &Transition,
    who: &Principal,
) -> Result<()> {
    let mut r = open_request(tx, project, id)?;
    let actor = who.actor();
    let now = now_millis();
    let me = who.id();
    match to {
        Transition::Submit => {
            author_only(&r, who, "submit")?;
            if r.body.changes.is_empty() {
                return Err(StoreError::Invalid(format!(
                    "change request {id} has no changes"
                )));
            }
            match r.state {
                State::Draft => {
                    r.state = State::InReview;
                    r.body.fingerprint = Some(fingerprint(&preview(tx, &r)?));
                    r.updated_ms = now;
                    save(tx, &r)?;
                    event(tx, &actor, "change-request-submitted", &r, json!({}))?;
                }
                State::Approved | State::Scheduled => {
                    // Re-review against today's state (after a conflicting change).
                    revoke(tx, &mut r, &actor)?;
                    r.updated_ms = now;
                    save(tx, &r)?;
                }
                _ => return Err(wrong_state(&r, "a draft")),
            }
        }
        Transition::Approve(comment) => {
            permit(who, Permission::Approve)?;
            if r.created_by == me {
                return Err(StoreError::Forbidden(format!(
                    "you cannot approve your own change request ({me} opened {id}); another approver must"
                )));
            }
            let needed = required_approvals(tx, &r.project, &r.environment)?.unwrap_or(1);
            // An approved request still takes approvals when the requirement was
            // raised after it was approved, or it could never be applied.
            let short = r.state == State::Approved && approvals(&r) < needed;
            if r.state != State::InReview && !short {
                return Err(wrong_state(&r, "In review"));
            }
            if r.body.reviews.iter().any(|v| v.by == me && v.approved) {
                return Err(StoreError::Conflict(format!(
                    "{me} has already approved change request {id}"
                )));
            }
            r.body.reviews.retain(|v| v.by != me);
            r.body.reviews.push(Review {
                by: me,
                approved: true,
                comment: comment.clone(),
                at: now,
            });
            let approvals = approvals(&r);
            if approvals >= needed {
                r.state = State::Approved;
            }
            r.updated_ms = now;
            save(tx, &r)?;
            event(
                tx,
                &actor,
                "change-request-approved",
                &r,
                json!({ "approvals": approvals, "required": needed, "comment": comment }),
            )?;
        }
        Transition::Reject(comment) => {
            permit(who, Permission::Approve)?;
            if r.created_by == me {
                return Err(StoreError::Forbidden(format!(
                    "you cannot reject your own change request {id}; cancel it instead"
                )));
            }
            if !matches!(
                r.state,
                State::InReview | State::Approved | State::Scheduled
            ) {
                return Err(wrong_state(&r, "In review, Approved or Scheduled"));
            }
            r.body.reviews.push(Review {
                by: me,
                approved: false,
                comment: comment.clone(),
                at: now,
            });
            r.state = State::Rejected;
            r.body.schedule = None;
            r.updated_ms = now;
            save(tx, &r)?;
            event(
                tx,
                &actor,
                "change-request-rejected",
                &r,
                json!({ "comment": comment }),
            )?;
        }
        Transition::Apply => {
            permit(who, Permission::Apply)?;
            if r.state != State::Approved {
                return Err(wrong_state(&r, "Approved"));
            }
            apply(tx, &mut r, &actor)?;
        }
        Transition::Schedule(at) => {
            permit(who, Permission::Apply)?;
            if r.state != State::Approved {
                return Err(wrong_state(&r, "Approved"));
            }
            if *at <= now || *at > now + MAX_SCHEDULE_MS {
                return Err(StoreError::Invalid(
                    "scheduledAt must be in the future, at most a year ahead".into(),
                ));
            }
            check_approvals(tx, &r)?;
            check_fresh(tx, &r)?;
            r.state = State::Scheduled;
            r.body.schedule = Some(Schedule {
                at: *at,
                status: "pending".into(),
                reason: None,
            });
            r.updated_ms = now;
            save(tx, &r)?;
            event(
                tx,
                &actor,
                "change-request-scheduled",
                &r,
                json!({ "scheduledAt": crate::metrics::rfc3339(*at) }),
            )?;
        }
        Transition::Cancel => {
            if r.created_by != me && !who.may(Permission::Administer) {
                return Err(StoreError::Forbidden(format!(
                    "only the author ({}) or an admin may cancel change request {id}",
                    r.created_by
                )));
            }
            r.state = State::Cancelled;
            r.body.schedule = None;
            r.updated_ms = now;
            save(tx, &r)?;
            event(tx, &actor, "change-request-cancelled", &r, json!({}))?;
        }
    }
    Ok(())
}

fn approvals(r: &ChangeRequest) -> i64 {
    r.body.reviews.iter().filter(|v| v.approved).count() as i64
}

/// Refuse to go on with an approved request that has fewer approvals than its
/// environment requires now: `requiredApprovals` may have been raised since.
fn check_approvals(tx: &dyn Sql, r: &ChangeRequest) -> Result<()> {
    let needed = required_approvals(tx, &r.project, &r.environment)?.unwrap_or(1);
    let have = approvals(r);
    if have >= needed {
        return Ok(());
    }
    let plural = |n: i64| if n == 1 { "" } else { "s" };
    let more = needed - have;
    Err(StoreError::Conflict(format!(
        "change request {} has {have} approval{}, but environment {:?} of project {:?} now \
         requires {needed}: {more} more approver{} must approve it first",
        r.id,
        plural(have),
        r.environment,
        r.project,
        plural(more),
    )))
}

/// Refuse to go on with a request whose flags changed since it was reviewed.
fn check_fresh(tx: &dyn Sql, r: &ChangeRequest) -> Result<Vec<Diff>> {
    let diff = preview(tx, r)?;
    if r.body.fingerprint.as_deref() != Some(fingerprint(&diff).as_str()) {
        return Err(StoreError::Conflict(format!(
            "the flags of change request {} changed since it was reviewed, so the approvals \
             were for a different state; the author must resubmit it for review",
            r.id
        )));
    }
    Ok(diff)
}

/// Write every change of an approved (or due scheduled) request, atomically.
fn apply(tx: &dyn Sql, r: &mut ChangeRequest, actor: &Actor) -> Result<()> {
    check_approvals(tx, r)?;
    let diff = check_fresh(tx, r)?;
    let mut flags: Vec<(String, FlagState)> = Vec::new();
    for ch in &r.body.changes {
        match &ch.change {
            Action::UpdateSegment(seg) => {
                write_segment(tx, seg, actor)?;
            }
            Action::AddDependency(d) => {
                write_dependency(tx, &r.project, &ch.feature, d, actor)?;
            }
            Action::DeleteDependency { feature } => {
                drop_dependency(tx, &r.project, &ch.feature, feature.as_deref(), actor)?;
            }
            other => {
                let i = match flags.iter().position(|(n, _)| n == &ch.feature) {
                    Some(i) => i,
                    None => {
                        let s = read_flag(tx, &r.project, &ch.feature, &r.environment)?;
                        flags.push((ch.feature.clone(), s));
                        flags.len() - 1
                    }
                };
                simulate(&mut flags[i].1, other, &ch.feature, &r.environment)?;
            }
        }
    }
    for (flag, mut after) in flags {
        let before = read_flag(tx, &r.project, &flag, &r.environment)?;
        for s in &mut after.strategies {
            if s.id.is_empty() {
                s.id = new_id()?;
            }
        }
        let config = EnvConfig {
            enabled: after.enabled,
            variants: after.variants.clone(),
            strategies: after.strategies.clone(),
        };
        write_env_config(tx, &flag, &r.environment, &config)?;
        if after.archived && !before.archived {
            mark_archived(tx, &flag)?;
        }
        append_event(
            tx,
            actor,
            Change::new("feature-changed-by-change-request")
                .flag(&flag)
                .environment(&r.environment)
                .before(json!({ "changeRequest": r.id, "state": before }))
                .after(json!({ "changeRequest": r.id, "state": after })),
        )?;
    }
    r.state = State::Applied;
    r.body.applied = Some(diff);
    if let Some(s) = &mut r.body.schedule {
        s.status = "applied".into();
    }
    r.updated_ms = now_millis();
    save(tx, r)?;
    event(tx, actor, "change-request-applied", r, json!({}))
}

/// Apply scheduled requests that are due; suspend those whose flags changed since they
/// were reviewed (or whose changes no longer apply), and mark those that fail to apply
/// as failed. Each request applies in a savepoint of its own, so one that fails writes
/// nothing and does not hold up the others. Returns the ids applied.
pub(crate) fn run_schedules(tx: &dyn Sql, now: i64) -> Result<Vec<i64>> {
    let scheduled = tx.rows(
        "read scheduled change requests",
        &format!("SELECT {COLUMNS} WHERE state = 'Scheduled' ORDER BY id"),
        &[],
        read_request,
    )?;
    let system = Actor("system:scheduler".into());
    let mut applied = Vec::new();
    for mut r in scheduled {
        let Some(schedule) = r.body.schedule.clone() else {
            continue;
        };
        if schedule.status != "pending" {
            continue;
        }
        let stale = match preview(tx, &r) {
            Ok(d) if r.body.fingerprint.as_deref() == Some(fingerprint(&d).as_str()) => None,
            Ok(_) => Some(
                "a flag it changes was changed after it was reviewed; resubmit it for review"
                    .to_owned(),
            ),
            Err(e) => Some(format!(
                "it no longer applies ({}); resubmit it for review",
                one_line(&e)
            )),
        };
        if let Some(reason) = stale {
            stop_schedule(tx, &system, &mut r, schedule, now, Stop::Suspended, reason)?;
            continue;
        }
        if schedule.at > now {
            continue;
        }
        let by = Actor(format!("system:scheduler for {}", r.created_by));
        let mut applying = r.clone();
        match tx.savepoint("scheduled_change_request", || apply(tx, &mut applying, &by))? {
            Ok(()) => applied.push(r.id),
            Err(e) => {
                let reason = format!(
                    "applying it failed and changed nothing: {}; resubmit it for review, or cancel it",
                    one_line(&e)
                );
                stop_schedule(tx, &system, &mut r, schedule, now, Stop::Failed, reason)?;
            }
        }
    }
    Ok(applied)
}

/// Why a schedule stopped: the request stays `Scheduled` and is never applied as it
/// is; resubmitting it (back to review) or cancelling it are the ways on.
#[derive(Clone, Copy)]
enum Stop {
    /// Stale before it was due: nothing was tried.
    Suspended,
    /// Applying it when due failed; its savepoint undid whatever it had written.
    Failed,
}

/// Mark a scheduled request's schedule as stopped, with its audit event.
fn stop_schedule(
    tx: &dyn Sql,
    system: &Actor,
    r: &mut ChangeRequest,
    schedule: Schedule,
    now: i64,
    stop: Stop,
    reason: String,
) -> Result<()> {
    let (status, action) = match stop {
        Stop::Suspended => ("suspended", "change-request-schedule-suspended"),
        Stop::Failed => ("failed", "change-request-schedule-failed"),
    };
    r.body.schedule = Some(Schedule {
        status: status.into(),
        reason: Some(reason.clone()),
        ..schedule
    });
    r.updated_ms = now;
    save(tx, r)?;
    event(tx, system, action, r, json!({ "reason": reason }))
}

/// An error as one line, for a schedule's reason.
fn one_line(e: &StoreError) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_as_unleash_spells_them() {
        assert_eq!(State::parse("In review"), Some(State::InReview));
        assert_eq!(State::parse("approved"), Some(State::Approved));
        assert_eq!(State::parse("Merged"), None);
        assert!(State::Applied.is_closed() && !State::Scheduled.is_closed());
    }

    #[test]
    fn actions_read_unleash_payloads() {
        let a: Action = serde_json::from_value(json!({
            "action": "updateEnabled", "payload": {"enabled": true}
        }))
        .unwrap();
        assert!(matches!(a, Action::UpdateEnabled { enabled: true }));
        let a: Action = serde_json::from_value(json!({
            "action": "deleteStrategy", "payload": {"id": "x"}
        }))
        .unwrap();
        assert_eq!(a.name(), "deleteStrategy");
        assert!(
            serde_json::from_value::<Action>(json!({"action": "dropTable", "payload": {}}))
                .is_err()
        );
    }

    #[test]
    fn simulation_refuses_what_would_not_apply() {
        let mut s = FlagState {
            enabled: false,
            strategies: Vec::new(),
            variants: Vec::new(),
            archived: false,
            dependencies: Vec::new(),
        };
        simulate(&mut s, &Action::UpdateEnabled { enabled: true }, "f", "e").unwrap();
        assert!(s.enabled);
        assert!(matches!(
            simulate(
                &mut s,
                &Action::DeleteStrategy { id: "nope".into() },
                "f",
                "e"
            ),
            Err(StoreError::UnknownStrategy { .. })
        ));
        assert!(
            simulate(
                &mut s,
                &Action::DeleteDependency { feature: None },
                "f",
                "e"
            )
            .is_err()
        );
    }
}
