//! `cordon pending`, `cordon approve` and `cordon deny`: answering the
//! gateway's questions (`on_unknown = "ask"`, `action = "ask"` rules) while a
//! session runs.

use clap::Args;
use cordon_fs::workspace::DataDir;
use cordon_net::control;
use cordon_sandbox::session;
use serde_json::{Value, json};

use crate::cmd_session::SessionCliError;
use crate::output::Out;

#[derive(Args)]
pub struct PendingArgs {
    /// Only this session (a unique prefix is enough); default: every running session.
    session: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct DecideArgs {
    /// Session id (a unique prefix is enough).
    session: String,
    /// The request's number, as `cordon pending` shows it.
    request: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

type R = Result<i32, SessionCliError>;

fn socket(data: &DataDir, id: &str) -> std::path::PathBuf {
    session::session_dir(data, id).join(control::SOCKET_FILE)
}

fn control_err(id: &str, e: control::ControlError) -> SessionCliError {
    SessionCliError::Refused(format!("session {id}: {e}"))
}

pub fn pending_cmd(a: PendingArgs, out: &Out) -> R {
    let data = DataDir::from_env()?;
    let ids: Vec<String> = match &a.session {
        Some(s) => vec![data.resolve(s)?.id],
        None => session::list(&data)?.into_iter().map(|m| m.id).collect(),
    };
    let mut rows: Vec<Value> = Vec::new();
    for id in &ids {
        let path = socket(&data, id);
        if a.session.is_none() && !path.exists() {
            continue;
        }
        match control::pending(&path) {
            Ok(list) => rows.extend(list.into_iter().map(|mut p| {
                p["session"] = json!(id);
                p
            })),
            // Without a session named, sessions that ended meanwhile are skipped.
            Err(control::ControlError::NotRunning) if a.session.is_none() => {}
            Err(e) => return Err(control_err(id, e)),
        }
    }
    if a.json {
        out.json(&rows)?;
        return Ok(0);
    }
    if rows.is_empty() {
        out.status("nothing is waiting for a decision");
        return Ok(0);
    }
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|p| {
            let target = match (p["method"].as_str(), p["path"].as_str()) {
                (Some(m), Some(path)) => format!("{m} {}{path}", text(&p["host"])),
                _ => format!("{}:{}", text(&p["host"]), text(&p["port"])),
            };
            let waited = p["since"]
                .as_i64()
                .map(|t| format!("{}s", (now - t).max(0) / 1000))
                .unwrap_or_default();
            vec![
                text(&p["session"]),
                text(&p["id"]),
                text(&p["kind"]),
                target,
                waited,
            ]
        })
        .collect();
    out.table(&["SESSION", "REQ", "KIND", "TARGET", "WAITING"], &table)?;
    out.status("answer with `cordon approve SESSION REQ` or `cordon deny SESSION REQ`");
    Ok(0)
}

pub fn decide_cmd(a: DecideArgs, allow: bool, out: &Out) -> R {
    let data = DataDir::from_env()?;
    let id = data.resolve(&a.session)?.id;
    control::decide(&socket(&data, &id), a.request, allow).map_err(|e| control_err(&id, e))?;
    let verb = if allow { "approved" } else { "denied" };
    if a.json {
        out.json(&json!({ "session": id, "request": a.request, "decision": verb }))?;
    } else {
        out.status(&format!("request {} of session {id} {verb}", a.request));
    }
    Ok(0)
}
