//! `cordon flags cr|user|agent|login`: change requests, users and agents on a running
//! flag server, through its admin API (see docs/flags-governance.md).

use std::io::BufRead;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::cmd_flags::{FlagsCliError, Remote, admin, segment};

#[derive(Subcommand)]
pub enum CrCmd {
    /// List change requests (newest first).
    List(CrListArgs),
    /// Show one request: its changes, the before/after diff, reviews and comments.
    Show(CrIdArgs),
    /// Open a request to turn FLAG on in a protected environment and submit it.
    Enable(CrEnableArgs),
    /// Submit a draft for review (or resubmit a suspended/stale one).
    Submit(CrIdArgs),
    /// Approve someone else's request (approvers and admins).
    Approve(CrReviewArgs),
    /// Reject someone else's request (approvers and admins).
    Reject(CrReviewArgs),
    /// Apply an approved request now.
    Apply(CrIdArgs),
    /// Apply an approved request at a time (RFC 3339, e.g. 2026-12-01T09:00:00Z).
    Schedule(CrScheduleArgs),
    /// Cancel a request (its author or an admin).
    Cancel(CrIdArgs),
    /// Comment on a request.
    Comment(CrCommentArgs),
    /// Protect an environment (or stop): changes there then need change requests.
    Config(CrConfigArgs),
}

#[derive(Args)]
pub struct CrListArgs {
    #[arg(long, default_value = "default")]
    project: String,
    /// Only requests in this state: Draft, "In review", Approved, Scheduled, Applied,
    /// Rejected, Cancelled.
    #[arg(long)]
    state: Option<String>,
    /// Print the server's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub struct CrIdArgs {
    id: i64,
    #[arg(long, default_value = "default")]
    project: String,
    /// Print the server's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub struct CrReviewArgs {
    #[command(flatten)]
    target: CrIdArgs,
    /// A note kept with the review.
    #[arg(long)]
    comment: Option<String>,
}

#[derive(Args)]
pub struct CrScheduleArgs {
    #[command(flatten)]
    target: CrIdArgs,
    /// When to apply it (RFC 3339).
    #[arg(long)]
    at: String,
}

#[derive(Args)]
pub struct CrCommentArgs {
    #[command(flatten)]
    target: CrIdArgs,
    text: String,
}

#[derive(Args)]
pub struct CrEnableArgs {
    flag: String,
    #[arg(long, default_value = "production")]
    env: String,
    #[arg(long, default_value = "default")]
    project: String,
    /// Title of the request.
    #[arg(long)]
    title: Option<String>,
    /// Print the server's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub struct CrConfigArgs {
    #[arg(long)]
    env: String,
    #[arg(long, default_value = "default")]
    project: String,
    /// Stop requiring change requests there.
    #[arg(long)]
    off: bool,
    /// Approvals each request needs (1-10).
    #[arg(long, default_value_t = 1)]
    approvals: i64,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Create a user; with --password-stdin the first line of stdin is the password.
    Add(UserAddArgs),
    /// List users.
    List(JsonRemote),
    /// Change a user's role.
    SetRole(UserRoleArgs),
    /// Delete a user and every token they own.
    Delete(UserNameArgs),
    /// Create a personal token for the user whose token is used (shown once).
    Token(UserTokenArgs),
}

#[derive(Args)]
pub struct UserAddArgs {
    name: String,
    /// viewer, editor, approver or admin.
    #[arg(long)]
    role: String,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub struct UserRoleArgs {
    name: String,
    #[arg(long)]
    role: String,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub struct UserNameArgs {
    name: String,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub struct UserTokenArgs {
    #[arg(long, default_value = "cli")]
    description: String,
    /// When the token stops working: a duration from now (`90d`, `12h`, `30m`) or
    /// an RFC 3339 time. Without it the token lasts until revoked.
    #[arg(long, value_name = "WHEN", value_parser = parse_expiry)]
    expires: Option<String>,
    #[command(flatten)]
    remote: Remote,
}

/// `--expires`: a duration from now (`90d`, `12h`, `30m`) or an RFC 3339 time, as
/// the RFC 3339 time the server takes.
fn parse_expiry(s: &str) -> Result<String, String> {
    let unit = |c: char| match c {
        'd' => Some(86_400),
        'h' => Some(3_600),
        'm' => Some(60),
        _ => None,
    };
    if let Some(last) = s.chars().last()
        && let Some(secs) = unit(last)
        && let Ok(n) = s[..s.len() - 1].parse::<i64>()
    {
        if n <= 0 || n > 3650 * 86_400 / secs {
            return Err(format!("{s:?}: give a duration between 1 and 10 years"));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs() as i64;
        let at = chrono::DateTime::from_timestamp(now + n * secs, 0)
            .ok_or_else(|| format!("{s:?} is too far away"))?;
        return Ok(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
        .map_err(|_| format!("{s:?} is neither a duration (90d, 12h, 30m) nor an RFC 3339 time"))
}

#[derive(Args)]
pub struct JsonRemote {
    /// Print the server's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Subcommand)]
pub enum AgentCmd {
    /// Create an agent identity and print its token once. Agents create flags and
    /// open change requests; they never approve or apply.
    Create(AgentCreateArgs),
    /// List agents.
    List(JsonRemote),
}

#[derive(Args)]
pub struct AgentCreateArgs {
    name: String,
    /// The `cordon run` session the agent works in; recorded on every event it causes.
    #[arg(long)]
    session: Option<String>,
    /// Print the server's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub struct LoginArgs {
    /// User name; the password is the first line of standard input.
    user: String,
    /// Flag server, e.g. http://127.0.0.1:4242.
    #[arg(
        long,
        env = "CORDON_FLAGS_URL",
        default_value = "http://127.0.0.1:4242"
    )]
    url: String,
}

fn cr_path(project: &str, rest: &str) -> String {
    format!(
        "/api/admin/projects/{}/change-requests{rest}",
        segment(project)
    )
}

fn read_line() -> Result<String, FlagsCliError> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|source| FlagsCliError::Read {
            path: "standard input".into(),
            source,
        })?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

pub fn cr(cmd: CrCmd) -> Result<i32, FlagsCliError> {
    match cmd {
        CrCmd::List(a) => cr_list(a),
        CrCmd::Show(a) => {
            let v =
                admin(&a.remote)?.send("GET", &cr_path(&a.project, &format!("/{}", a.id)), None)?;
            print_request(&v, a.json);
            Ok(0)
        }
        CrCmd::Enable(a) => cr_enable(a),
        CrCmd::Submit(a) => set_state(&a, json!({"state": "In review"})),
        CrCmd::Approve(a) => set_state(
            &a.target,
            json!({"state": "Approved", "comment": a.comment}),
        ),
        CrCmd::Reject(a) => set_state(
            &a.target,
            json!({"state": "Rejected", "comment": a.comment}),
        ),
        CrCmd::Apply(a) => set_state(&a, json!({"state": "Applied"})),
        CrCmd::Schedule(a) => set_state(
            &a.target,
            json!({"state": "Scheduled", "scheduledAt": a.at}),
        ),
        CrCmd::Cancel(a) => set_state(&a, json!({"state": "Cancelled"})),
        CrCmd::Comment(a) => {
            let t = &a.target;
            let v = admin(&t.remote)?.send(
                "POST",
                &cr_path(&t.project, &format!("/{}/comments", t.id)),
                Some(&json!({ "text": a.text })),
            )?;
            print_request(&v, t.json);
            Ok(0)
        }
        CrCmd::Config(a) => {
            admin(&a.remote)?.send(
                "PUT",
                &format!(
                    "/api/admin/projects/{}/environments/{}/change-requests/config",
                    segment(&a.project),
                    segment(&a.env)
                ),
                Some(&json!({
                    "changeRequestsEnabled": !a.off,
                    "requiredApprovals": a.approvals,
                })),
            )?;
            if a.off {
                eprintln!("{} no longer needs change requests", a.env);
            } else {
                eprintln!(
                    "{} now needs change requests with {} approval(s); turning flags off stays direct",
                    a.env, a.approvals
                );
            }
            Ok(0)
        }
    }
}

fn cr_list(a: CrListArgs) -> Result<i32, FlagsCliError> {
    let mut path = cr_path(&a.project, "");
    if let Some(s) = &a.state {
        path.push_str("?state=");
        path.push_str(&segment(s));
    }
    let v = admin(&a.remote)?.send("GET", &path, None)?;
    if a.json {
        println!("{v}");
        return Ok(0);
    }
    for r in v.as_array().into_iter().flatten() {
        let approvals = r["approvals"].as_array().map_or(0, Vec::len);
        println!(
            "#{}\t{}\t{}\t{}/{} approvals\t{}\t{}",
            r["id"],
            r["state"].as_str().unwrap_or("?"),
            r["environment"].as_str().unwrap_or("?"),
            approvals,
            r["minApprovals"],
            r["createdBy"]["username"].as_str().unwrap_or("?"),
            r["title"].as_str().unwrap_or(""),
        );
    }
    Ok(0)
}

fn cr_enable(a: CrEnableArgs) -> Result<i32, FlagsCliError> {
    let client = admin(&a.remote)?;
    let opened = client.send(
        "POST",
        &format!(
            "/api/admin/projects/{}/environments/{}/change-requests",
            segment(&a.project),
            segment(&a.env)
        ),
        Some(&json!({
            "feature": a.flag,
            "action": "updateEnabled",
            "payload": {"enabled": true},
        })),
    )?;
    let id = opened["id"].as_i64().unwrap_or_default();
    if let Some(t) = &a.title {
        client.send(
            "PUT",
            &cr_path(&a.project, &format!("/{id}/title")),
            Some(&json!({ "title": t })),
        )?;
    }
    let v = client.send(
        "PUT",
        &cr_path(&a.project, &format!("/{id}/state")),
        Some(&json!({"state": "In review"})),
    )?;
    if a.json {
        println!("{v}");
    } else {
        println!("{id}");
        eprintln!(
            "change request #{id} to turn {} on in {} is in review; another person must approve it",
            a.flag, a.env
        );
    }
    Ok(0)
}

fn set_state(a: &CrIdArgs, body: Value) -> Result<i32, FlagsCliError> {
    let v = admin(&a.remote)?.send(
        "PUT",
        &cr_path(&a.project, &format!("/{}/state", a.id)),
        Some(&body),
    )?;
    if a.json {
        println!("{v}");
    } else {
        eprintln!(
            "change request #{} is {}",
            a.id,
            v["state"].as_str().unwrap_or("?")
        );
    }
    Ok(0)
}

/// A readable change request: header, changes, the before/after of each flag as a
/// unified diff of its JSON, reviews and comments.
fn print_request(v: &Value, as_json: bool) {
    if as_json {
        println!("{v}");
        return;
    }
    let s = |x: &Value| x.as_str().unwrap_or("-").to_owned();
    println!("#{} {}  [{}]", v["id"], s(&v["title"]), s(&v["state"]));
    println!(
        "  {} / {}, by {}, {} approval(s) needed",
        s(&v["project"]),
        s(&v["environment"]),
        s(&v["createdBy"]["username"]),
        v["minApprovals"]
    );
    if let Some(sc) = v["schedule"].as_object() {
        println!(
            "  scheduled at {} ({}){}",
            s(&sc["scheduledAt"]),
            s(&sc["status"]),
            sc.get("reason")
                .and_then(Value::as_str)
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
    }
    if v["stale"] == true {
        println!("  ! the flags changed since it was reviewed: it must be resubmitted");
    }
    for f in v["features"].as_array().into_iter().flatten() {
        println!("  flag {}:", s(&f["name"]));
        for c in f["changes"].as_array().into_iter().flatten() {
            println!(
                "    change {}: {} {}",
                c["id"],
                s(&c["action"]),
                c["payload"]
            );
        }
    }
    for d in v["diff"].as_array().into_iter().flatten() {
        let pretty = |x: &Value| serde_json::to_string_pretty(x).unwrap_or_default() + "\n";
        let (before, after) = (pretty(&d["before"]), pretty(&d["after"]));
        let diff = similar::TextDiff::from_lines(&before, &after);
        println!("  --- {} (now)", s(&d["name"]));
        println!("  +++ {} (after)", s(&d["name"]));
        for change in diff.iter_all_changes() {
            let sign = match change.tag() {
                similar::ChangeTag::Delete => '-',
                similar::ChangeTag::Insert => '+',
                similar::ChangeTag::Equal => ' ',
            };
            print!("  {sign}{change}");
        }
    }
    for (label, key) in [("approved", "approvals"), ("rejected", "rejections")] {
        for r in v[key].as_array().into_iter().flatten() {
            println!(
                "  {label} by {} at {}{}",
                s(&r["createdBy"]["username"]),
                s(&r["createdAt"]),
                r["comment"]
                    .as_str()
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default()
            );
        }
    }
    for c in v["comments"].as_array().into_iter().flatten() {
        println!(
            "  {} ({}): {}",
            s(&c["createdBy"]["username"]),
            s(&c["createdAt"]),
            s(&c["text"])
        );
    }
}

pub fn user(cmd: UserCmd) -> Result<i32, FlagsCliError> {
    match cmd {
        UserCmd::Add(a) => {
            let mut body = json!({"username": a.name, "role": a.role});
            if a.password_stdin {
                body["password"] = read_line()?.into();
            }
            admin(&a.remote)?.send("POST", "/api/admin/user-admin", Some(&body))?;
            eprintln!("created {} ({})", a.name, a.role);
            Ok(0)
        }
        UserCmd::List(a) => {
            let v = admin(&a.remote)?.send("GET", "/api/admin/user-admin", None)?;
            print_people(&v["users"], a.json);
            Ok(0)
        }
        UserCmd::SetRole(a) => {
            admin(&a.remote)?.send(
                "PUT",
                &format!("/api/admin/user-admin/{}", segment(&a.name)),
                Some(&json!({ "role": a.role })),
            )?;
            eprintln!("{} is now {}", a.name, a.role);
            Ok(0)
        }
        UserCmd::Delete(a) => {
            admin(&a.remote)?.send(
                "DELETE",
                &format!("/api/admin/user-admin/{}", segment(&a.name)),
                None,
            )?;
            eprintln!("deleted {} and their tokens", a.name);
            Ok(0)
        }
        UserCmd::Token(a) => {
            let v = admin(&a.remote)?.send(
                "POST",
                "/api/admin/user/tokens",
                Some(&json!({ "description": a.description, "expiresAt": a.expires })),
            )?;
            println!("{}", v["secret"].as_str().unwrap_or_default());
            eprintln!("this personal token is shown once; only its hash is stored");
            match v["expiresAt"].as_str() {
                Some(t) => eprintln!("it stops working at {t}"),
                None => eprintln!("it works until revoked (--expires sets an end)"),
            }
            Ok(0)
        }
    }
}

fn print_people(list: &Value, as_json: bool) {
    if as_json {
        println!("{list}");
        return;
    }
    for u in list.as_array().into_iter().flatten() {
        println!(
            "{}\t{}\t{}{}",
            u["username"].as_str().unwrap_or("?"),
            u["kind"].as_str().unwrap_or("?"),
            u["role"].as_str().unwrap_or("?"),
            u["session"]
                .as_str()
                .map(|s| format!("\tsession={s}"))
                .unwrap_or_default()
        );
    }
}

pub fn agent(cmd: AgentCmd) -> Result<i32, FlagsCliError> {
    match cmd {
        AgentCmd::Create(a) => {
            let v = admin(&a.remote)?.send(
                "POST",
                "/api/admin/agents",
                Some(&json!({"name": a.name, "session": a.session})),
            )?;
            if a.json {
                println!("{v}");
            } else {
                println!("{}", v["secret"].as_str().unwrap_or_default());
                eprintln!(
                    "agent {} created; its token is shown once. It can create flags and open \
                     change requests, never approve or apply.",
                    a.name
                );
            }
            Ok(0)
        }
        AgentCmd::List(a) => {
            let v = admin(&a.remote)?.send("GET", "/api/admin/agents", None)?;
            print_people(&v["agents"], a.json);
            Ok(0)
        }
    }
}

/// Log in with a password (first line of stdin); prints a 12-hour session token.
pub fn login(a: LoginArgs) -> Result<i32, FlagsCliError> {
    let password = read_line()?;
    // The login endpoint takes no token; the client still wants one to send.
    let client = cordon_flags::client::AdminClient::new(&a.url, "-")?;
    let v = client.send(
        "POST",
        "/api/admin/login",
        Some(&json!({"username": a.user, "password": password})),
    )?;
    println!("{}", v["token"].as_str().unwrap_or_default());
    eprintln!(
        "logged in as {} ({}) until {}",
        a.user,
        v["role"].as_str().unwrap_or("?"),
        v["expiresAt"].as_str().unwrap_or("?")
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::parse_expiry;

    #[test]
    fn expiry_is_a_duration_from_now_or_a_time() {
        let t = parse_expiry("2030-05-01T12:00:00+02:00").unwrap();
        assert_eq!(t, "2030-05-01T10:00:00Z");
        let in_a_day = parse_expiry("1d").unwrap();
        let at = chrono::DateTime::parse_from_rfc3339(&in_a_day).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((at.timestamp() - now - 86_400).abs() < 5, "{in_a_day}");
        assert!(parse_expiry("90m").is_ok() && parse_expiry("12h").is_ok());
        for bad in [
            "",
            "d",
            "0d",
            "-1d",
            "1w",
            "11000d",
            "tomorrow",
            "2030-13-01T00:00:00Z",
        ] {
            assert!(parse_expiry(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
