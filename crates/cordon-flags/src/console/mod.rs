//! The web console of `cordon flags serve`: server-rendered HTML under `/console`.
//!
//! It is a front over the JSON admin API and nothing more. Every page and every button
//! calls the API router in-process ([`api`]) with the signed-in person's session token,
//! so the console shows and does exactly what that person's role allows, and every
//! refusal on screen is the API's own message. Signing in exchanges a password (or a
//! personal token) for a session token at `POST /api/admin/login`; the browser keeps it
//! in an `HttpOnly`, `SameSite=Strict` cookie, and every form carries a CSRF token
//! bound to it ([`session`]). Pages are built with `maud`, which escapes everything
//! ([`view`]); there is no script at all, and the Content-Security-Policy says so.
//!
//! It does not keep sessions, decide permissions or talk to the store: the API does.
//! See `docs/console.md`.

mod api;
mod session;
mod view;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use api::{Api, Caller, Refusal, seg};
use session::Visitor;
use view::{button, csrf_field, diff, page, refusal, text};

/// Console forms are a few short fields; anything bigger is refused (`413`).
const MAX_FORM_BYTES: usize = 16 * 1024;

/// How many audit events one page shows.
const AUDIT_PAGE: usize = 100;

/// The console's routes, served beside `api` (the fully built API router, which the
/// console calls in-process).
pub fn routes(api: Router) -> Router {
    let console = Arc::new(Api::new(api));
    Router::new()
        .route("/console", get(home))
        .route("/console/", get(home))
        .route("/console/style.css", get(style))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/flags", get(flags_page).post(create_flag))
        .route("/console/projects/{project}/flags/{name}", get(flag_page))
        .route(
            "/console/projects/{project}/flags/{name}/environments/{env}/{switch}",
            post(switch),
        )
        .route(
            "/console/projects/{project}/change-requests",
            get(change_requests_page),
        )
        .route(
            "/console/projects/{project}/change-requests/{id}",
            get(change_request_page),
        )
        .route(
            "/console/projects/{project}/change-requests/{id}/state",
            post(change_request_state),
        )
        .route(
            "/console/projects/{project}/change-requests/{id}/comments",
            post(change_request_comment),
        )
        .route("/console/audit", get(audit_page))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .with_state(console)
}

type Console = State<Arc<Api>>;

// ---------------------------------------------------------------------------------
// Responses

/// Headers every console answer carries: no caching of pages that show state, no
/// framing (clickjacking), no script, forms only to ourselves, no referrer leaking
/// flag names to other sites.
fn harden(mut r: Response) -> Response {
    let h = r.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: header::HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(h, header::CACHE_CONTROL, "no-store");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'",
    );
    r
}

fn html_page(status: StatusCode, markup: Markup) -> Response {
    harden(
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            markup.into_string(),
        )
            .into_response(),
    )
}

fn see_other(to: &str) -> Response {
    harden(Redirect::to(to).into_response())
}

/// To the login page, forgetting the session (it is missing, expired or revoked).
fn to_login() -> Response {
    let mut r = see_other("/console/login");
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie()) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// A page that could not be shown: the API's refusal, or the login page when the
/// session is gone.
fn failed(nav: Option<&view::Nav>, r: &Refusal) -> Response {
    if r.status == StatusCode::UNAUTHORIZED {
        return to_login();
    }
    html_page(r.status, page("Refused", nav, refusal(r)))
}

// ---------------------------------------------------------------------------------
// Sessions

/// A signed-in visitor: API calls as them, and what the navigation bar shows.
struct Session<'a> {
    api: &'a Api,
    peer: Option<axum::extract::ConnectInfo<std::net::SocketAddr>>,
    token: String,
    csrf: String,
    user: Option<String>,
}

impl<'a> Session<'a> {
    /// The visitor's session, checked with the API (`GET /api/admin/user`); `None`
    /// sends them to the login page.
    async fn of(api: &'a Api, visitor: &Visitor) -> Result<Session<'a>, Response> {
        let Some(token) = visitor.session.clone() else {
            return Err(to_login());
        };
        let mut s = Session {
            api,
            peer: visitor.peer,
            csrf: session::csrf_token(&token),
            token,
            user: None,
        };
        match s.call(Method::GET, "/api/admin/user", None).await {
            Ok(me) => {
                s.user = Some(format!("{} ({})", text(&me, "username"), text(&me, "role")));
            }
            Err(r) => return Err(failed(None, &r)),
        }
        Ok(s)
    }

    /// A POST from this session: refused with 403 unless its CSRF token matches.
    async fn of_form(api: &'a Api, visitor: &Visitor, csrf: &str) -> Result<Session<'a>, Response> {
        let Some(token) = visitor.session.as_deref() else {
            return Err(to_login());
        };
        if !session::csrf_ok(token, csrf) {
            return Err(html_page(
                StatusCode::FORBIDDEN,
                page(
                    "Refused",
                    None,
                    html! {
                        div.alert.error role="alert" {
                            "This form is stale or did not come from the console (CSRF token missing or wrong). "
                            a href="/console/flags" { "Reload the console" } " and try again."
                        }
                    },
                ),
            ));
        }
        Session::of(api, visitor).await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Refusal> {
        Caller {
            api: self.api,
            token: Some(&self.token),
            peer: self.peer,
        }
        .call(method, path, body)
        .await
    }

    async fn get(&self, path: &str) -> Result<Value, Refusal> {
        self.call(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, Refusal> {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn put(&self, path: &str, body: &Value) -> Result<Value, Refusal> {
        self.call(Method::PUT, path, Some(body)).await
    }

    fn nav(&self, project: &str) -> view::Nav {
        view::Nav {
            project: seg(project),
            user: self.user.clone(),
            csrf: self.csrf.clone(),
        }
    }
}

// ---------------------------------------------------------------------------------
// Login and logout

async fn home(visitor: Visitor) -> Response {
    match visitor.session {
        Some(_) => see_other("/console/flags"),
        None => see_other("/console/login"),
    }
}

async fn style() -> Response {
    harden(
        (
            [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
            view::CSS,
        )
            .into_response(),
    )
}

fn login_view(error: Option<&Refusal>) -> Markup {
    page(
        "Sign in",
        None,
        html! {
            div.login {
                h1 { "Sign in" }
                @if let Some(e) = error { (refusal(e)) }
                form.card method="post" action="/console/login" {
                    label for="username" { "User name" }
                    input #username name="username" autocomplete="username" maxlength="255";
                    label for="password" { "Password" }
                    input #password name="password" type="password" autocomplete="current-password" maxlength="1024";
                    div.actions { button.primary #sign-in type="submit" { "Sign in" } }
                }
                form.card method="post" action="/console/login" {
                    label for="token" { "…or a personal API token" }
                    input #token name="token" type="password" autocomplete="off" maxlength="1024";
                    div.actions { button #sign-in-token type="submit" { "Sign in with token" } }
                }
            }
        },
    )
}

async fn login_page() -> Response {
    html_page(StatusCode::OK, login_view(None))
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    token: String,
}

async fn login(State(api): Console, visitor: Visitor, Form(form): Form<LoginForm>) -> Response {
    let caller = Caller {
        api: &api,
        token: None,
        peer: visitor.peer,
    };
    let body = if form.token.trim().is_empty() {
        json!({"username": form.username.trim(), "password": form.password})
    } else {
        json!({"token": form.token.trim()})
    };
    let session = match caller.post("/api/admin/login", &body).await {
        Ok(answer) => match answer.get("token").and_then(Value::as_str) {
            Some(t) if !t.is_empty() => t.to_owned(),
            _ => {
                let r = Refusal::new(StatusCode::BAD_GATEWAY, "the login answer has no token");
                return html_page(r.status, login_view(Some(&r)));
            }
        },
        Err(r) => return html_page(r.status, login_view(Some(&r))),
    };
    let mut r = see_other("/console/flags");
    match HeaderValue::from_str(&session::set_cookie(&session)) {
        Ok(v) => {
            r.headers_mut().insert(header::SET_COOKIE, v);
            r
        }
        Err(_) => {
            let r = Refusal::new(
                StatusCode::BAD_GATEWAY,
                "the session token cannot be a cookie",
            );
            html_page(r.status, login_view(Some(&r)))
        }
    }
}

#[derive(Deserialize)]
struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

async fn logout(State(api): Console, visitor: Visitor, Form(form): Form<CsrfOnly>) -> Response {
    let Some(token) = visitor.session.as_deref() else {
        return to_login();
    };
    if !session::csrf_ok(token, &form.csrf) {
        return html_page(
            StatusCode::FORBIDDEN,
            page(
                "Refused",
                None,
                html! { div.alert.error { "CSRF token missing or wrong." } },
            ),
        );
    }
    // The cookie goes whatever the API says: an expired session is logged out too.
    let _ = Caller {
        api: &api,
        token: Some(token),
        peer: visitor.peer,
    }
    .post("/api/admin/logout", &json!({}))
    .await;
    to_login()
}

// ---------------------------------------------------------------------------------
// Flags

#[derive(Deserialize)]
struct ProjectQuery {
    project: Option<String>,
}

async fn flags_page(
    State(api): Console,
    visitor: Visitor,
    Query(q): Query<ProjectQuery>,
) -> Response {
    let s = match Session::of(&api, &visitor).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let project = q.project.unwrap_or_else(|| "default".into());
    flags_view(&s, &project, None).await
}

async fn flags_view(s: &Session<'_>, project: &str, error: Option<&Refusal>) -> Response {
    let nav = s.nav(project);
    let features_path = format!("/api/admin/projects/{}/features", seg(project));
    let (projects, envs, features) = match tokio::try_join!(
        s.get("/api/admin/projects"),
        s.get("/api/admin/environments"),
        s.get(&features_path),
    ) {
        Ok(x) => x,
        Err(r) => return failed(Some(&nav), &r),
    };
    let envs: Vec<String> = list(&envs, "environments")
        .iter()
        .map(|e| text(e, "name").to_owned())
        .collect();
    let features = list(&features, "features");
    let body = html! {
        h1 { "Flags in " code { (project) } }
        @if let Some(e) = error { (refusal(e)) }
        div.card {
            "Project: "
            @for p in list(&projects, "projects") {
                @let id = text(p, "id");
                @if id == project { strong { (id) } " " }
                @else { a href={ "/console/flags?project=" (seg(id)) } { (id) } " " }
            }
        }
        table #flags {
            thead { tr {
                th { "Flag" } th { "Type" } th { "Description" }
                @for env in &envs { th { (env) } }
            } }
            tbody {
                @if features.is_empty() {
                    tr { td colspan=(3 + envs.len()) .muted { "No flags yet." } }
                }
                @for f in features {
                    @let name = text(f, "name");
                    tr data-flag=(name) {
                        td { a href=(flag_url(project, name)) { (name) } }
                        td { (text(f, "type")) }
                        td { (text(f, "description")) }
                        @for env in &envs {
                            @let enabled = env_enabled(f, env);
                            td data-env=(env) {
                                @if enabled == Some(true) {
                                    span.on { "on" } " "
                                    (button(&switch_url(project, name, env, "off"), &s.csrf, &[("back", "flags")], "Kill", "danger"))
                                } @else if enabled == Some(false) {
                                    span.off { "off" }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Create a flag" }
        form.card #create-flag method="post" action="/console/flags" {
            (csrf_field(&s.csrf))
            input type="hidden" name="project" value=(project);
            div.row {
                div { label for="name" { "Name" } input #name name="name" required maxlength="255"; }
                div { label for="type" { "Type" }
                    select #type name="type" {
                        @for t in crate::server::FLAG_TYPES {
                            option value=(t) { (t) }
                        }
                    }
                }
                div { label for="description" { "Description" } input #description name="description" size="40" maxlength="1000"; }
                div { button.primary type="submit" { "Create (off everywhere)" } }
            }
        }
    };
    html_page(
        error.map_or(StatusCode::OK, |e| e.status),
        page("Flags", Some(&nav), body),
    )
}

#[derive(Deserialize)]
struct CreateFlagForm {
    #[serde(default)]
    csrf: String,
    project: String,
    name: String,
    #[serde(default, rename = "type")]
    flag_type: String,
    #[serde(default)]
    description: String,
}

async fn create_flag(
    State(api): Console,
    visitor: Visitor,
    Form(form): Form<CreateFlagForm>,
) -> Response {
    let s = match Session::of_form(&api, &visitor, &form.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut body = json!({"name": form.name.trim()});
    if !form.flag_type.is_empty() {
        body["type"] = form.flag_type.clone().into();
    }
    if !form.description.trim().is_empty() {
        body["description"] = form.description.trim().into();
    }
    match s
        .post(
            &format!("/api/admin/projects/{}/features", seg(&form.project)),
            &body,
        )
        .await
    {
        Ok(_) => see_other(&flag_url(&form.project, form.name.trim())),
        Err(r) if r.status == StatusCode::UNAUTHORIZED => to_login(),
        Err(r) => flags_view(&s, &form.project, Some(&r)).await,
    }
}

async fn flag_page(
    State(api): Console,
    visitor: Visitor,
    Path((project, name)): Path<(String, String)>,
) -> Response {
    let s = match Session::of(&api, &visitor).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    flag_view(&s, &project, &name, None).await
}

/// Change-request settings per environment of a project: `(required approvals)` for
/// the protected ones. A server without change requests protects none.
async fn protected_envs(s: &Session<'_>, project: &str) -> Result<Vec<(String, u64)>, Refusal> {
    match s
        .get(&format!(
            "/api/admin/projects/{}/change-requests/config",
            seg(project)
        ))
        .await
    {
        Ok(config) => Ok(config
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter(|c| c.get("changeRequestEnabled").and_then(Value::as_bool) == Some(true))
            .map(|c| {
                let n = c
                    .get("requiredApprovals")
                    .and_then(Value::as_u64)
                    .unwrap_or(1);
                (text(c, "environment").to_owned(), n)
            })
            .collect()),
        Err(r) => Err(r),
    }
}

async fn flag_view(
    s: &Session<'_>,
    project: &str,
    name: &str,
    error: Option<&Refusal>,
) -> Response {
    let nav = s.nav(project);
    let flag_path = format!(
        "/api/admin/projects/{}/features/{}",
        seg(project),
        seg(name)
    );
    let metrics_path = format!(
        "/api/admin/client-metrics/features/{}/raw?hoursBack=24",
        seg(name)
    );
    let events_path = format!("/api/admin/events?feature={}&limit=20", seg(name));
    let (flag, protected, metrics, events) = match tokio::try_join!(
        s.get(&flag_path),
        protected_envs(s, project),
        s.get(&metrics_path),
        s.get(&events_path),
    ) {
        Ok(x) => x,
        Err(r) => return failed(Some(&nav), &r),
    };
    let envs = list(&flag, "environments");
    let metric_rows = list(&metrics, "data");
    let body = html! {
        h1 { "Flag " code #flag-name { (name) } }
        @if let Some(e) = error { (refusal(e)) }
        div.card {
            "Project " code { (project) } " · type " (text(&flag, "type"))
            @if flag.get("stale").and_then(Value::as_bool) == Some(true) { " · " span.badge { "stale" } }
            @let description = text(&flag, "description");
            @if !description.is_empty() { p { (description) } }
        }
        h2 { "Environments" }
        @for env in envs {
            @let env_name = text(env, "name");
            @let enabled = env.get("enabled").and_then(Value::as_bool) == Some(true);
            @let approvals = protected.iter().find(|(e, _)| e == env_name).map(|(_, n)| *n);
            div.card data-env=(env_name) {
                div.row {
                    strong { (env_name) }
                    @if enabled { span.on.state { "on" } } @else { span.off.state { "off" } }
                    @if let Some(n) = approvals {
                        span.badge.protected title="changes here go through a change request" {
                            "protected · " (n) " approval" @if n != 1 { "s" }
                        }
                    }
                    @if enabled {
                        (button(&switch_url(project, name, env_name, "off"), &s.csrf, &[("back", "flag")], "Kill", "danger"))
                    } @else if approvals.is_some() {
                        (button(&switch_url(project, name, env_name, "on"), &s.csrf, &[("back", "flag")], "Request enable", "primary"))
                    } @else {
                        (button(&switch_url(project, name, env_name, "on"), &s.csrf, &[("back", "flag")], "Enable", "primary"))
                    }
                }
                @let strategies = list(env, "strategies");
                @if strategies.is_empty() {
                    p.muted { "No strategies: when on, on for everyone." }
                } @else {
                    table.strategies {
                        thead { tr { th { "Strategy" } th { "Parameters" } th { "Constraints" } th { "Segments" } } }
                        tbody {
                            @for st in strategies {
                                tr {
                                    td { (text(st, "name")) br; span.muted { code { (text(st, "id")) } } }
                                    td { (view::json(st.get("parameters").unwrap_or(&Value::Null))) }
                                    td { (view::json(st.get("constraints").unwrap_or(&Value::Null))) }
                                    td { (view::json(st.get("segments").unwrap_or(&Value::Null))) }
                                }
                            }
                        }
                    }
                }
                @let variants = list(env, "variants");
                @if !variants.is_empty() {
                    h2 { "Variants" }
                    table.variants {
                        thead { tr { th { "Variant" } th { "Weight" } th { "Stickiness" } th { "Payload" } } }
                        tbody {
                            @for v in variants {
                                tr {
                                    td { (text(v, "name")) }
                                    td { (v.get("weight").map(Value::to_string).unwrap_or_default()) }
                                    td { (text(v, "stickiness")) }
                                    td { (view::json(v.get("payload").unwrap_or(&Value::Null))) }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Evaluations, last 24 hours" }
        @if metric_rows.is_empty() {
            p.muted #metrics { "No SDK has reported evaluations of this flag in the last 24 hours." }
        } @else {
            table #metrics {
                thead { tr { th { "Hour" } th { "Environment" } th { "Application" } th { "Yes" } th { "No" } } }
                tbody {
                    @for m in metric_rows {
                        tr {
                            td { (text(m, "timestamp")) }
                            td { (text(m, "environment")) }
                            td { (text(m, "appName")) }
                            td { (m.get("yes").map(Value::to_string).unwrap_or_default()) }
                            td { (m.get("no").map(Value::to_string).unwrap_or_default()) }
                        }
                    }
                }
            }
        }
        h2 { "Recent changes" }
        (events_table(list(&events, "events")))
        p { a href={ "/console/audit?feature=" (seg(name)) } { "Full history of this flag" } }
    };
    html_page(
        error.map_or(StatusCode::OK, |e| e.status),
        page(name, Some(&nav), body),
    )
}

#[derive(Deserialize)]
struct SwitchForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    back: String,
}

/// Kill (off) or enable (on) a flag in one environment. Turning off is always direct
/// (break-glass); turning on in a protected environment opens a change request — also
/// when the console did not know the environment was protected and the API answers
/// `409`.
async fn switch(
    State(api): Console,
    visitor: Visitor,
    Path((project, name, env, switch)): Path<(String, String, String, String)>,
    Form(form): Form<SwitchForm>,
) -> Response {
    let s = match Session::of_form(&api, &visitor, &form.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let result = match switch.as_str() {
        "off" | "on" => switch_in(&s, &project, &name, &env, switch == "on").await,
        _ => Err(Refusal::new(StatusCode::NOT_FOUND, "no such action")),
    };
    match result {
        Ok(Some(id)) => see_other(&change_request_url(&project, &id)),
        Ok(None) if form.back == "flags" => {
            see_other(&format!("/console/flags?project={}", seg(&project)))
        }
        Ok(None) => see_other(&flag_url(&project, &name)),
        Err(r) if r.status == StatusCode::UNAUTHORIZED => to_login(),
        Err(r) if form.back == "flags" => flags_view(&s, &project, Some(&r)).await,
        Err(r) => flag_view(&s, &project, &name, Some(&r)).await,
    }
}

/// Switch through the API; `Some(id)` when that opened (or added to) a change request.
async fn switch_in(
    s: &Session<'_>,
    project: &str,
    name: &str,
    env: &str,
    on: bool,
) -> Result<Option<String>, Refusal> {
    let direct = format!(
        "/api/admin/projects/{}/features/{}/environments/{}/{}",
        seg(project),
        seg(name),
        seg(env),
        if on { "on" } else { "off" }
    );
    if !on {
        return s.post(&direct, &json!({})).await.map(|_| None);
    }
    let protected = protected_envs(s, project)
        .await?
        .iter()
        .any(|(e, _)| e == env);
    if !protected {
        match s.post(&direct, &json!({})).await {
            Ok(_) => return Ok(None),
            Err(r) if r.status == StatusCode::CONFLICT => {}
            Err(r) => return Err(r),
        }
    }
    let change = json!({"feature": name, "action": "updateEnabled", "payload": {"enabled": true}});
    let cr = s
        .post(
            &format!(
                "/api/admin/projects/{}/environments/{}/change-requests",
                seg(project),
                seg(env)
            ),
            &change,
        )
        .await?;
    Ok(cr.get("id").map(id_text))
}

// ---------------------------------------------------------------------------------
// Change requests

#[derive(Deserialize)]
struct StateQuery {
    state: Option<String>,
}

async fn change_requests_page(
    State(api): Console,
    visitor: Visitor,
    Path(project): Path<String>,
    Query(q): Query<StateQuery>,
) -> Response {
    let s = match Session::of(&api, &visitor).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let nav = s.nav(&project);
    let mut path = format!("/api/admin/projects/{}/change-requests", seg(&project));
    if let Some(state) = q.state.as_deref().filter(|s| !s.is_empty()) {
        path.push_str(&format!("?state={}", seg(state)));
    }
    let requests = match s.get(&path).await {
        Ok(r) => r,
        Err(r) => return failed(Some(&nav), &r),
    };
    let requests = requests.as_array().map(Vec::as_slice).unwrap_or_default();
    let body = html! {
        h1 { "Change requests in " code { (project) } }
        div.card {
            "Show: " a href="?" { "all" }
            @for st in STATES { " · " a href={ "?state=" (seg(st)) } { (st) } }
        }
        table #change-requests {
            thead { tr { th { "#" } th { "Title" } th { "Environment" } th { "State" } th { "Approvals" } th { "By" } th { "Created" } } }
            tbody {
                @if requests.is_empty() { tr { td colspan="7" .muted { "No change requests." } } }
                @for cr in requests {
                    @let id = cr.get("id").map(id_text).unwrap_or_default();
                    tr {
                        td { a href=(change_request_url(&project, &id)) { (id) } }
                        td { a href=(change_request_url(&project, &id)) { (text(cr, "title")) } }
                        td { (text(cr, "environment")) }
                        td { span.badge.state { (text(cr, "state")) } }
                        td { (list(cr, "approvals").len()) " / " (cr.get("minApprovals").map(Value::to_string).unwrap_or_default()) }
                        td { (cr.get("createdBy").map(|c| text(c, "username")).unwrap_or("")) }
                        td { (text(cr, "createdAt")) }
                    }
                }
            }
        }
    };
    html_page(StatusCode::OK, page("Change requests", Some(&nav), body))
}

/// Every state a change request can be in, as the API spells them.
const STATES: [&str; 7] = [
    "Draft",
    "In review",
    "Approved",
    "Scheduled",
    "Applied",
    "Rejected",
    "Cancelled",
];

/// The state changes a person can ask for from each state, with the button label. The
/// API decides whether this person may.
fn transitions(state: &str) -> &'static [(&'static str, &'static str, &'static str)] {
    match state {
        "Draft" => &[
            ("In review", "Submit for review", "primary"),
            ("Cancelled", "Cancel", ""),
        ],
        "In review" => &[
            ("Approved", "Approve", "primary"),
            ("Rejected", "Reject", "danger"),
            ("Cancelled", "Cancel", ""),
        ],
        "Approved" => &[
            ("Applied", "Apply", "primary"),
            ("Rejected", "Reject", "danger"),
            ("Cancelled", "Cancel", ""),
        ],
        "Scheduled" => &[("Cancelled", "Cancel", "")],
        _ => &[],
    }
}

async fn change_request_page(
    State(api): Console,
    visitor: Visitor,
    Path((project, id)): Path<(String, String)>,
) -> Response {
    let s = match Session::of(&api, &visitor).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    change_request_view(&s, &project, &id, None).await
}

async fn change_request_view(
    s: &Session<'_>,
    project: &str,
    id: &str,
    error: Option<&Refusal>,
) -> Response {
    let nav = s.nav(project);
    let cr = match s
        .get(&format!(
            "/api/admin/projects/{}/change-requests/{}",
            seg(project),
            seg(id)
        ))
        .await
    {
        Ok(cr) => cr,
        Err(r) => return failed(Some(&nav), &r),
    };
    let state = text(&cr, "state");
    let url = change_request_url(project, id);
    let people = |key: &str| -> Vec<String> {
        list(&cr, key)
            .iter()
            .map(|a| match a.get("createdBy") {
                Some(Value::String(s)) => s.clone(),
                Some(v) => text(v, "username").to_owned(),
                None => String::new(),
            })
            .collect()
    };
    let body = html! {
        h1 { "Change request #" (id) ": " (text(&cr, "title")) }
        @if let Some(e) = error { (refusal(e)) }
        div.card #summary {
            "State " span.badge.state #state { (state) }
            " · environment " code { (text(&cr, "environment")) }
            " · by " (cr.get("createdBy").map(|c| text(c, "username")).unwrap_or(""))
            " · " (text(&cr, "createdAt"))
            br;
            "Approvals " (list(&cr, "approvals").len()) " of " (cr.get("minApprovals").map(Value::to_string).unwrap_or_default()) " required"
            @let approvers = people("approvals");
            @if !approvers.is_empty() { ": " (approvers.join(", ")) }
            @let rejecters = people("rejections");
            @if !rejecters.is_empty() { " · rejected by " (rejecters.join(", ")) }
            @if let Some(schedule) = cr.get("schedule").filter(|v| !v.is_null()) {
                br; "Scheduled at " (text(schedule, "scheduledAt")) " · " (text(schedule, "status"))
                @let reason = text(schedule, "reason");
                @if !reason.is_empty() { " · " (reason) }
            }
            @let moves = transitions(state);
            @if !moves.is_empty() {
                form.actions #transitions method="post" action={ (url) "/state" } {
                    (csrf_field(&s.csrf))
                    div { label for="comment" { "Comment (optional)" } input #comment name="comment" size="40" maxlength="1000"; }
                    @for (to, label, class) in moves {
                        button.(class) type="submit" name="state" value=(to) { (label) }
                    }
                }
            }
        }
        @for feature in list(&cr, "features") {
            div.card.feature {
                h2 { "Flag " a href=(flag_url(project, text(feature, "name"))) { (text(feature, "name")) } }
                ul {
                    @for change in list(feature, "changes") {
                        li { code { (text(change, "action")) } " " (view::pretty(change.get("payload").unwrap_or(&Value::Null))) }
                    }
                }
                p.muted { "Before → after applying, in " (text(&cr, "environment")) ":" }
                (diff(feature.get("before").unwrap_or(&Value::Null), feature.get("after").unwrap_or(&Value::Null)))
            }
        }
        h2 { "Comments" }
        @for c in list(&cr, "comments") {
            div.card {
                strong { (match c.get("createdBy") { Some(Value::String(s)) => s.clone(), Some(v) => text(v, "username").to_owned(), None => String::new() }) }
                " " span.muted { (text(c, "createdAt")) }
                p { (text(c, "text")) }
            }
        }
        form.card method="post" action={ (url) "/comments" } {
            (csrf_field(&s.csrf))
            label for="text" { "Add a comment" }
            textarea #text name="text" rows="3" cols="60" maxlength="1000" {}
            div.actions { button type="submit" { "Comment" } }
        }
    };
    html_page(
        error.map_or(StatusCode::OK, |e| e.status),
        page(&format!("Change request {id}"), Some(&nav), body),
    )
}

#[derive(Deserialize)]
struct StateForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    comment: String,
}

async fn change_request_state(
    State(api): Console,
    visitor: Visitor,
    Path((project, id)): Path<(String, String)>,
    Form(form): Form<StateForm>,
) -> Response {
    let s = match Session::of_form(&api, &visitor, &form.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !STATES.contains(&form.state.as_str()) {
        let r = Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("{:?} is not a change-request state", form.state),
        );
        return change_request_view(&s, &project, &id, Some(&r)).await;
    }
    let mut body = json!({"state": form.state});
    if !form.comment.trim().is_empty() {
        body["comment"] = form.comment.trim().into();
    }
    let path = format!(
        "/api/admin/projects/{}/change-requests/{}/state",
        seg(&project),
        seg(&id)
    );
    match s.put(&path, &body).await {
        Ok(_) => see_other(&change_request_url(&project, &id)),
        Err(r) if r.status == StatusCode::UNAUTHORIZED => to_login(),
        Err(r) => change_request_view(&s, &project, &id, Some(&r)).await,
    }
}

#[derive(Deserialize)]
struct CommentForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    text: String,
}

async fn change_request_comment(
    State(api): Console,
    visitor: Visitor,
    Path((project, id)): Path<(String, String)>,
    Form(form): Form<CommentForm>,
) -> Response {
    let s = match Session::of_form(&api, &visitor, &form.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let path = format!(
        "/api/admin/projects/{}/change-requests/{}/comments",
        seg(&project),
        seg(&id)
    );
    match s.post(&path, &json!({"text": form.text})).await {
        Ok(_) => see_other(&change_request_url(&project, &id)),
        Err(r) if r.status == StatusCode::UNAUTHORIZED => to_login(),
        Err(r) => change_request_view(&s, &project, &id, Some(&r)).await,
    }
}

// ---------------------------------------------------------------------------------
// Audit log

#[derive(Deserialize)]
struct AuditQuery {
    feature: Option<String>,
}

async fn audit_page(
    State(api): Console,
    visitor: Visitor,
    Query(q): Query<AuditQuery>,
) -> Response {
    let s = match Session::of(&api, &visitor).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let nav = s.nav("default");
    let feature = q.feature.filter(|f| !f.is_empty());
    let mut path = format!("/api/admin/events?limit={AUDIT_PAGE}");
    if let Some(f) = &feature {
        path.push_str(&format!("&feature={}", seg(f)));
    }
    let (events, report) = match tokio::try_join!(s.get(&path), s.get("/api/admin/audit/verify")) {
        Ok(x) => x,
        Err(r) => return failed(Some(&nav), &r),
    };
    let report: Option<crate::audit::Report> = serde_json::from_value(report).ok();
    let body = html! {
        h1 { "Audit log" @if let Some(f) = &feature { " of " code { (f) } } }
        @match &report {
            Some(report) if report.ok() => {
                div.alert.ok #verify {
                    strong { "Chain verified: " } (report.events) " events, intact."
                    @if let Some(head) = &report.head { " Head " code { (head) } " — record it outside this server too." }
                }
            }
            Some(report) => {
                div.alert.error #verify role="alert" {
                    strong { "The audit chain does not verify (" (report.problems.len()) " problems):" }
                    ul { @for p in &report.problems { li { (p.to_string()) } } }
                }
            }
            None => { div.alert.error #verify { "The verification report could not be read." } }
        }
        p.muted { (events.get("totalEvents").map(Value::to_string).unwrap_or_default()) " events; the newest " (AUDIT_PAGE) " are shown, newest first." }
        (events_table(list(&events, "events")))
    };
    html_page(StatusCode::OK, page("Audit log", Some(&nav), body))
}

/// Audit events as a table, each with its before → after diff folded away.
fn events_table(events: &[Value]) -> Markup {
    html! {
        table.events {
            thead { tr { th { "#" } th { "When" } th { "Who" } th { "What" } th { "Flag" } th { "Env" } th { "Change" } } }
            tbody {
                @if events.is_empty() { tr { td colspan="7" .muted { "No events." } } }
                @for e in events {
                    tr {
                        td { (e.get("id").map(Value::to_string).unwrap_or_default()) }
                        td { (text(e, "createdAt")) }
                        td { (text(e, "createdBy")) }
                        td { code { (text(e, "type")) } }
                        td { (text(e, "featureName")) }
                        td { (text(e, "environment")) }
                        td {
                            details {
                                summary { "diff" }
                                (diff(e.get("preData").unwrap_or(&Value::Null), e.get("data").unwrap_or(&Value::Null)))
                            }
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Helpers

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn env_enabled(feature: &Value, env: &str) -> Option<bool> {
    list(feature, "environments")
        .iter()
        .find(|e| text(e, "name") == env)
        .and_then(|e| e.get("enabled").and_then(Value::as_bool))
}

/// A change request id as text, whether the API sends a number or a string.
fn id_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

fn flag_url(project: &str, name: &str) -> String {
    format!("/console/projects/{}/flags/{}", seg(project), seg(name))
}

fn switch_url(project: &str, name: &str, env: &str, switch: &str) -> String {
    format!(
        "{}/environments/{}/{switch}",
        flag_url(project, name),
        seg(env)
    )
}

fn change_request_url(project: &str, id: &str) -> String {
    format!(
        "/console/projects/{}/change-requests/{}",
        seg(project),
        seg(id)
    )
}
