//! HTML building blocks of the console: the page frame, forms with their CSRF token,
//! JSON and diffs. Everything goes through `maud`, which escapes every interpolated
//! string: names, descriptions, payloads and messages come from the database or from
//! other people and are treated as hostile text, never as markup.

use maud::{DOCTYPE, Markup, html};
use serde_json::Value;
use similar::{ChangeTag, TextDiff};

use super::api::Refusal;

/// The console's whole style sheet, served as `/console/style.css` (no inline style,
/// so the Content-Security-Policy can forbid inline code).
pub(super) const CSS: &str = r#"
:root { --fg:#1d2433; --muted:#5b6475; --line:#d8dce4; --bg:#f6f7f9; --on:#12703a; --off:#8a8f99; --bad:#b3261e; --accent:#2453c5; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color:var(--fg); background:var(--bg); }
header { display:flex; align-items:center; gap:1.5rem; padding:.6rem 1.2rem; background:#1d2433; color:#fff; }
header a { color:#fff; text-decoration:none; } header a:hover { text-decoration:underline; }
header .brand { font-weight:700; } header .who { margin-left:auto; color:#cfd5e2; }
header form { margin:0; }
main { max-width:1200px; margin:1.2rem auto; padding:0 1.2rem; }
h1 { font-size:1.4rem; margin:.2rem 0 1rem; } h2 { font-size:1.1rem; margin:1.4rem 0 .6rem; }
table { border-collapse:collapse; width:100%; background:#fff; border:1px solid var(--line); }
th, td { text-align:left; padding:.45rem .6rem; border-bottom:1px solid var(--line); vertical-align:top; }
th { background:#eef0f4; font-weight:600; }
.card { background:#fff; border:1px solid var(--line); border-radius:6px; padding:.8rem 1rem; margin-bottom:1rem; }
.on { color:var(--on); font-weight:600; } .off { color:var(--off); }
.badge { display:inline-block; padding:0 .45rem; border-radius:9px; font-size:12px; background:#e4e8f0; }
.badge.protected { background:#fde7c2; } .badge.state { background:#dde7fb; }
.alert { padding:.7rem 1rem; border-radius:6px; margin-bottom:1rem; border:1px solid; }
.alert.error { background:#fdecea; border-color:#f3b8b3; color:var(--bad); }
.alert.ok { background:#e8f5ec; border-color:#b5dcc2; color:var(--on); }
form.inline { display:inline; margin:0; }
button { font:inherit; padding:.25rem .7rem; border-radius:4px; border:1px solid #9aa3b2; background:#fff; cursor:pointer; }
button.primary { background:var(--accent); border-color:var(--accent); color:#fff; }
button.danger { background:var(--bad); border-color:var(--bad); color:#fff; }
input, select, textarea { font:inherit; padding:.3rem .45rem; border:1px solid #9aa3b2; border-radius:4px; }
label { display:block; margin:.4rem 0 .15rem; color:var(--muted); }
.row { display:flex; gap:.8rem; align-items:flex-end; flex-wrap:wrap; }
.row label { margin-top:0; }
pre, code { font:12.5px/1.4 ui-monospace, "SFMono-Regular", Menlo, monospace; }
pre { margin:0; white-space:pre-wrap; word-break:break-word; }
.diff { border:1px solid var(--line); background:#fff; }
.diff div { padding:0 .5rem; white-space:pre-wrap; word-break:break-word; font:12.5px/1.5 ui-monospace, monospace; }
.diff .ins { background:#e6f6ea; } .diff .del { background:#fdecea; } .diff .gap { color:var(--muted); background:#f1f3f6; }
.muted { color:var(--muted); }
.login { max-width:380px; margin:4rem auto; }
.login input { width:100%; }
.actions { display:flex; gap:.5rem; flex-wrap:wrap; align-items:flex-end; margin-top:.6rem; }
"#;

/// A whole page: the frame, the navigation (when signed in) and `body`.
pub(super) fn page(title: &str, nav: Option<&Nav>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Cordon flags" }
                link rel="stylesheet" href="/console/style.css";
            }
            body {
                header {
                    span.brand { "Cordon flags" }
                    @if let Some(nav) = nav {
                        a href={ "/console/flags?project=" (nav.project) } { "Flags" }
                        a href={ "/console/projects/" (nav.project) "/change-requests" } { "Change requests" }
                        a href="/console/audit" { "Audit log" }
                        span.who {
                            @match &nav.user {
                                Some(u) => { (u) }
                                None => { "signed in" }
                            }
                        }
                        form.inline method="post" action="/console/logout" {
                            (csrf_field(&nav.csrf))
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// What the navigation bar needs: the current project (URL-encoded), who is signed
/// in, and the session's CSRF token for the logout form.
pub(super) struct Nav {
    pub project: String,
    pub user: Option<String>,
    pub csrf: String,
}

pub(super) fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

/// The API's refusal, said plainly.
pub(super) fn refusal(r: &Refusal) -> Markup {
    html! {
        div.alert.error role="alert" {
            strong { "Refused: " } (r.message)
            span.muted { " (HTTP " (r.status.as_u16()) ")" }
        }
    }
}

/// One button that posts `fields` and the CSRF token to `action`.
pub(super) fn button(
    action: &str,
    csrf: &str,
    fields: &[(&str, &str)],
    label: &str,
    class: &str,
) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            (csrf_field(csrf))
            @for (name, value) in fields {
                input type="hidden" name=(name) value=(value);
            }
            button.(class) type="submit" { (label) }
        }
    }
}

/// A JSON value as indented text.
pub(super) fn json(v: &Value) -> Markup {
    html! { pre { (pretty(v)) } }
}

pub(super) fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// Text of a JSON string field, or empty.
pub(super) fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// A unified diff of two JSON values, pretty-printed with sorted keys so that only
/// real changes show; unchanged stretches longer than six lines are folded.
pub(super) fn diff(before: &Value, after: &Value) -> Markup {
    let (old, new) = (diff_text(before), diff_text(after));
    let diff = TextDiff::from_lines(&old, &new);
    let groups = diff.grouped_ops(3);
    html! {
        div.diff {
            @if groups.is_empty() {
                div.gap { "no difference" }
            }
            @for (i, group) in groups.iter().enumerate() {
                @if i > 0 { div.gap { "⋯" } }
                @for op in group {
                    @for change in diff.iter_changes(op) {
                        @let (class, sign) = match change.tag() {
                            ChangeTag::Delete => ("del", "-"),
                            ChangeTag::Insert => ("ins", "+"),
                            ChangeTag::Equal => ("eq", " "),
                        };
                        div class=(class) { (sign) " " (change.value().trim_end_matches('\n')) }
                    }
                }
            }
        }
    }
}

fn diff_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        v => pretty(v) + "\n",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hostile_text_is_escaped() {
        let html = page(
            "<script>alert(1)</script>",
            Some(&Nav {
                project: "default".into(),
                user: Some("<img src=x onerror=alert(1)>".into()),
                csrf: "\"><script>".into(),
            }),
            json(&json!({"description": "</pre><script>alert(2)</script>"})),
        )
        .into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    }

    #[test]
    fn a_diff_shows_what_changed() {
        let before = json!({"enabled": false, "strategies": [], "variants": []});
        let after = json!({"enabled": true, "strategies": [], "variants": []});
        let html = diff(&before, &after).into_string();
        assert!(
            html.contains(r#"<div class="del">-   &quot;enabled&quot;: false,</div>"#),
            "{html}"
        );
        assert!(
            html.contains(r#"<div class="ins">+   &quot;enabled&quot;: true,</div>"#),
            "{html}"
        );
        assert!(
            diff(&before, &before)
                .into_string()
                .contains("no difference")
        );
    }
}
