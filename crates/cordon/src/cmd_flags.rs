//! `cordon flags ...`: the FeatureOps control plane. `serve` runs the server
//! (`cordon-flags`); the other commands talk to a running server's admin API at
//! `CORDON_FLAGS_URL` with the admin token `CORDON_FLAGS_TOKEN`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};
use cordon_flags::client::AdminClient;
use cordon_flags::{PgStore, ServeOptions, SqliteStore, Store};
use cordon_fs::workspace::DataDir;

#[derive(Subcommand)]
pub enum FlagsCmd {
    /// Serve the Unleash-compatible flag APIs (client, frontend, admin) and the web console.
    #[command(
        long_about = "Serve the Unleash-compatible flag APIs over HTTP, at Unleash's \
paths: the client API for server-side SDKs (/api/client/features, delta, streaming, \
register, metrics; client tokens), the frontend API (/api/frontend; frontend tokens) and \
the admin API (admin, personal or agent tokens): flags, strategies, variants, segments, \
projects, environments, tags, archive, dependencies, API tokens, events and audit \
verification, metrics, the playground, state import/export, users, agents and \
change requests. The web console is at /console. See docs/flags.md.\n\n\
On first start an admin token is created: the one given with --init-admin-token, or a \
generated one printed once on standard output. Only its SHA-256 hash is stored."
    )]
    Serve(ServeArgs),
    /// Kill switch: turn FLAG off in one environment (default production).
    Kill(SwitchArgs),
    /// Turn FLAG on in one environment.
    Enable(SwitchArgs),
    /// Turn FLAG off in one environment.
    Disable(SwitchArgs),
    /// List the flags of a project.
    List(ListArgs),
    /// Create a flag, disabled in every environment.
    Create(CreateArgs),
    /// Show one flag: metadata, state, strategies and variants per environment, and
    /// its evaluation counts of the last 24 hours.
    Show(ShowArgs),
    /// A flag's strategies in one environment.
    #[command(subcommand)]
    Strategy(StrategyCmd),
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Print an environment's full state (Unleash client-features JSON).
    Export(ExportArgs),
    /// Replace an environment's full state with a file written by `export`.
    Import(ImportArgs),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Change requests: four-eyes control over protected environments.
    #[command(subcommand)]
    Cr(crate::cmd_flags_gov::CrCmd),
    /// Users (humans with a role: viewer, editor, approver, admin).
    #[command(subcommand)]
    User(crate::cmd_flags_gov::UserCmd),
    /// Agent identities and their tokens.
    #[command(subcommand)]
    Agent(crate::cmd_flags_gov::AgentCmd),
    /// Log in as a user (password on stdin); prints a 12-hour session token.
    Login(crate::cmd_flags_gov::LoginArgs),
}

#[derive(Subcommand)]
pub enum StrategyCmd {
    /// Add a strategy (e.g. `--name flexibleRollout --param rollout=25`).
    Add(StrategyAddArgs),
    /// List the strategies with their ids.
    List(StrategyListArgs),
    /// Remove a strategy by id.
    Remove(StrategyRemoveArgs),
}

#[derive(Args)]
pub struct FlagEnv {
    flag: String,
    #[arg(long, default_value = "production")]
    env: String,
    #[arg(long, default_value = "default")]
    project: String,
}

#[derive(Args)]
pub struct StrategyAddArgs {
    #[command(flatten)]
    target: FlagEnv,
    /// Strategy name: default, flexibleRollout, userWithId, remoteAddress,
    /// applicationHostname, or a custom one.
    #[arg(long, default_value = "default")]
    name: String,
    /// A parameter as KEY=VALUE (repeatable), e.g. rollout=25, stickiness=userId,
    /// groupId=checkout, userIds=alice,bob.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// A constraint as Unleash JSON (repeatable), e.g.
    /// '{"contextName":"region","operator":"IN","values":["eu"]}'.
    #[arg(long = "constraint", value_name = "JSON")]
    constraints: Vec<String>,
    /// A segment id the strategy requires (repeatable).
    #[arg(long = "segment", value_name = "ID")]
    segments: Vec<i32>,
    /// Print the server's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub struct StrategyListArgs {
    #[command(flatten)]
    target: FlagEnv,
    /// Print the server's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub struct StrategyRemoveArgs {
    #[command(flatten)]
    target: FlagEnv,
    /// The strategy id, as `strategy list` shows it.
    id: String,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a token; its secret is printed once (only its hash is stored).
    Create(TokenCreateArgs),
    /// List tokens: names, types and scopes (secrets are not stored).
    List(TokenListArgs),
    /// Revoke a token at once. Give its secret, or `-` to read it from stdin.
    Delete(TokenDeleteArgs),
}

#[derive(Args)]
pub struct TokenCreateArgs {
    /// client (server-side SDKs), frontend (browser/mobile) or admin.
    #[arg(long = "type", value_name = "TYPE")]
    token_type: String,
    /// Environment the token reads (client and frontend tokens).
    #[arg(long)]
    env: Option<String>,
    /// Project the token reads, or * for all.
    #[arg(long, default_value = "*")]
    project: String,
    /// A name to recognise it by.
    #[arg(long, default_value = "cli")]
    name: String,
    /// Print the server's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub struct TokenListArgs {
    /// Print the server's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub struct TokenDeleteArgs {
    /// The token's full text, or - to read it from stdin (keeps it out of `ps`).
    secret: String,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub struct ShowArgs {
    flag: String,
    #[arg(long, default_value = "default")]
    project: String,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub struct ExportArgs {
    #[arg(long, default_value = "production")]
    env: String,
    /// Write to FILE instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub struct ImportArgs {
    #[arg(long)]
    env: String,
    /// The state file, or - for standard input (at most 32 MiB).
    file: PathBuf,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Check the hash chain on the server; exit 1 naming every edited, inserted or
    /// deleted event.
    Verify(Remote),
}

#[derive(Args)]
pub struct Remote {
    /// Flag server, e.g. http://127.0.0.1:4242.
    #[arg(
        long,
        env = "CORDON_FLAGS_URL",
        default_value = "http://127.0.0.1:4242"
    )]
    url: String,
    /// API token: an admin token, or a user's personal or session token, or an
    /// agent's token (what it may do follows its role).
    #[arg(long, env = "CORDON_FLAGS_TOKEN", hide_env_values = true)]
    token: String,
}

#[derive(Args)]
pub struct SwitchArgs {
    flag: String,
    #[arg(long, default_value = "production")]
    env: String,
    #[arg(long, default_value = "default")]
    project: String,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub struct ListArgs {
    #[arg(long, default_value = "default")]
    project: String,
    /// Print the server's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub struct CreateArgs {
    name: String,
    #[arg(long, default_value = "default")]
    project: String,
    #[arg(long)]
    description: Option<String>,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4242")]
    listen: SocketAddr,
    /// SQLite database file (created with its schema if missing).
    /// Default: flags.db in the data directory ($CORDON_HOME).
    #[arg(long, conflicts_with = "database_url")]
    db: Option<PathBuf>,
    /// PostgreSQL instead of SQLite, for several replicas sharing one database:
    /// postgres://USER:PASSWORD@HOST[:PORT]/DB. Changes made through any replica reach
    /// the streaming clients of every replica (LISTEN/NOTIFY). Prefer the environment
    /// variable, which keeps the password out of `ps`.
    #[arg(long, env = "CORDON_FLAGS_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Admin token to create if no admin token exists yet, as `*:*.SECRET`
    /// (secret of 16 characters or more). Ignored once an admin token exists.
    #[arg(long, env = "CORDON_FLAGS_INIT_ADMIN_TOKEN", hide_env_values = true)]
    init_admin_token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FlagsCliError {
    #[error(transparent)]
    Flags(#[from] cordon_flags::Error),
    #[error(transparent)]
    Store(#[from] cordon_flags::StoreError),
    #[error(transparent)]
    DataDir(#[from] cordon_fs::Error),
    #[error("cannot create the data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(#[from] cordon_flags::client::ClientError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{0}")]
    Usage(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}; is another server using it? pass --listen")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub fn run(cmd: FlagsCmd) -> Result<i32, FlagsCliError> {
    match cmd {
        FlagsCmd::Serve(a) => serve(a),
        FlagsCmd::Kill(a) | FlagsCmd::Disable(a) => switch(a, false),
        FlagsCmd::Enable(a) => switch(a, true),
        FlagsCmd::List(a) => list(a),
        FlagsCmd::Create(a) => create(a),
        FlagsCmd::Show(a) => show(a),
        FlagsCmd::Strategy(StrategyCmd::Add(a)) => strategy_add(a),
        FlagsCmd::Strategy(StrategyCmd::List(a)) => strategy_list(a),
        FlagsCmd::Strategy(StrategyCmd::Remove(a)) => strategy_remove(a),
        FlagsCmd::Token(TokenCmd::Create(a)) => token_create(a),
        FlagsCmd::Token(TokenCmd::List(a)) => token_list(a),
        FlagsCmd::Token(TokenCmd::Delete(a)) => token_delete(a),
        FlagsCmd::Export(a) => export(a),
        FlagsCmd::Import(a) => import(a),
        FlagsCmd::Audit(AuditCmd::Verify(r)) => audit_verify(r),
        FlagsCmd::Cr(c) => crate::cmd_flags_gov::cr(c),
        FlagsCmd::User(c) => crate::cmd_flags_gov::user(c),
        FlagsCmd::Agent(c) => crate::cmd_flags_gov::agent(c),
        FlagsCmd::Login(a) => crate::cmd_flags_gov::login(a),
    }
}

pub(crate) fn admin(r: &Remote) -> Result<AdminClient, FlagsCliError> {
    Ok(AdminClient::new(&r.url, &r.token)?)
}

/// Path segments come from the command line; the server only accepts URL-friendly
/// names, so anything else is escaped and then refused by the server with a 404/400.
pub(crate) fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn switch(a: SwitchArgs, on: bool) -> Result<i32, FlagsCliError> {
    let path = format!(
        "/api/admin/projects/{}/features/{}/environments/{}/{}",
        segment(&a.project),
        segment(&a.flag),
        segment(&a.env),
        if on { "on" } else { "off" }
    );
    admin(&a.remote)?.send("POST", &path, None)?;
    eprintln!(
        "{} is now {} in {}",
        a.flag,
        if on { "on" } else { "off" },
        a.env
    );
    Ok(0)
}

fn list(a: ListArgs) -> Result<i32, FlagsCliError> {
    let path = format!("/api/admin/projects/{}/features", segment(&a.project));
    let answer = admin(&a.remote)?.send("GET", &path, None)?;
    if a.json {
        println!("{answer}");
        return Ok(0);
    }
    for f in answer["features"].as_array().into_iter().flatten() {
        let envs: Vec<String> = f["environments"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let state = if e["enabled"] == true { "on" } else { "off" };
                format!("{}={state}", e["name"].as_str().unwrap_or("?"))
            })
            .collect();
        println!("{}\t{}", f["name"].as_str().unwrap_or("?"), envs.join(" "));
    }
    Ok(0)
}

fn create(a: CreateArgs) -> Result<i32, FlagsCliError> {
    let path = format!("/api/admin/projects/{}/features", segment(&a.project));
    let mut body = serde_json::json!({ "name": a.name });
    if let Some(d) = a.description {
        body["description"] = d.into();
    }
    admin(&a.remote)?.send("POST", &path, Some(&body))?;
    eprintln!("created {} (off in every environment)", a.name);
    Ok(0)
}

/// Largest state file `import` reads (the server's own limit).
const MAX_IMPORT: u64 = 32 << 20;

fn env_path(t: &FlagEnv) -> String {
    format!(
        "/api/admin/projects/{}/features/{}/environments/{}",
        segment(&t.project),
        segment(&t.flag),
        segment(&t.env)
    )
}

fn describe_strategy(s: &serde_json::Value) -> String {
    let mut parts = vec![s["name"].as_str().unwrap_or("?").to_owned()];
    let mut params: Vec<String> = s["parameters"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    params.sort();
    parts.extend(params);
    for c in s["constraints"].as_array().into_iter().flatten() {
        let values: Vec<&str> = c["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .chain(c["value"].as_str())
            .collect();
        parts.push(format!(
            "[{}{} {} {}]",
            if c["inverted"] == true { "NOT " } else { "" },
            c["contextName"].as_str().unwrap_or("?"),
            c["operator"].as_str().unwrap_or("?"),
            values.join(",")
        ));
    }
    for id in s["segments"].as_array().into_iter().flatten() {
        parts.push(format!("segment:{id}"));
    }
    parts.join(" ")
}

fn show(a: ShowArgs) -> Result<i32, FlagsCliError> {
    let client = admin(&a.remote)?;
    let base = format!(
        "/api/admin/projects/{}/features/{}",
        segment(&a.project),
        segment(&a.flag)
    );
    let mut flag = client.send("GET", &base, None)?;
    let envs: Vec<String> = flag["environments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str().map(str::to_owned))
        .collect();
    let mut details = Vec::new();
    for env in &envs {
        details.push(client.send(
            "GET",
            &format!("{base}/environments/{}", segment(env)),
            None,
        )?);
    }
    let metrics = client.send(
        "GET",
        &format!(
            "/api/admin/client-metrics/features/{}/raw",
            segment(&a.flag)
        ),
        None,
    )?;
    if a.json {
        flag["environments"] = details.into();
        flag["metrics"] = metrics["data"].clone();
        println!("{flag}");
        return Ok(0);
    }
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    println!("{}  (project {})", a.flag, a.project);
    println!("  type: {}", text(&flag["type"]));
    println!("  description: {}", text(&flag["description"]));
    if flag["stale"] == true {
        println!("  stale: yes");
    }
    for d in &details {
        let on = if d["enabled"] == true { "ON" } else { "off" };
        println!("  {}: {on}", text(&d["name"]));
        for s in d["strategies"].as_array().into_iter().flatten() {
            println!("    {}  {}", text(&s["id"]), describe_strategy(s));
        }
        let variants: Vec<String> = d["variants"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| format!("{}:{}", text(&v["name"]), v["weight"]))
            .collect();
        if !variants.is_empty() {
            println!("    variants: {}", variants.join(" "));
        }
    }
    let (mut yes, mut no) = (0u64, 0u64);
    for row in metrics["data"].as_array().into_iter().flatten() {
        yes += row["yes"].as_u64().unwrap_or(0);
        no += row["no"].as_u64().unwrap_or(0);
    }
    println!("  evaluations (24 h): {yes} yes, {no} no");
    Ok(0)
}

fn strategy_add(a: StrategyAddArgs) -> Result<i32, FlagsCliError> {
    let mut params = serde_json::Map::new();
    for p in &a.params {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| FlagsCliError::Usage(format!("--param {p:?} is not KEY=VALUE")))?;
        params.insert(k.to_owned(), v.into());
    }
    let constraints = a
        .constraints
        .iter()
        .map(|c| {
            serde_json::from_str::<serde_json::Value>(c)
                .map_err(|e| FlagsCliError::Usage(format!("--constraint {c:?} is not JSON: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let body = serde_json::json!({
        "name": a.name, "parameters": params, "constraints": constraints, "segments": a.segments,
    });
    let added = admin(&a.remote)?.send(
        "POST",
        &format!("{}/strategies", env_path(&a.target)),
        Some(&body),
    )?;
    if a.json {
        println!("{added}");
    } else {
        println!("{}", added["id"].as_str().unwrap_or("?"));
        eprintln!(
            "added to {} in {}: {}",
            a.target.flag,
            a.target.env,
            describe_strategy(&added)
        );
    }
    Ok(0)
}

fn strategy_list(a: StrategyListArgs) -> Result<i32, FlagsCliError> {
    let list =
        admin(&a.remote)?.send("GET", &format!("{}/strategies", env_path(&a.target)), None)?;
    if a.json {
        println!("{list}");
        return Ok(0);
    }
    for s in list.as_array().into_iter().flatten() {
        println!(
            "{}	{}",
            s["id"].as_str().unwrap_or("?"),
            describe_strategy(s)
        );
    }
    Ok(0)
}

fn strategy_remove(a: StrategyRemoveArgs) -> Result<i32, FlagsCliError> {
    admin(&a.remote)?.send(
        "DELETE",
        &format!("{}/strategies/{}", env_path(&a.target), segment(&a.id)),
        None,
    )?;
    eprintln!(
        "removed strategy {} from {} in {}",
        a.id, a.target.flag, a.target.env
    );
    Ok(0)
}

fn token_create(a: TokenCreateArgs) -> Result<i32, FlagsCliError> {
    let mut body = serde_json::json!({"tokenName": a.name, "type": a.token_type});
    if a.token_type != "admin" {
        body["project"] = a.project.clone().into();
    }
    if let Some(env) = &a.env {
        body["environment"] = env.clone().into();
    }
    let created = admin(&a.remote)?.send("POST", "/api/admin/api-tokens", Some(&body))?;
    if a.json {
        println!("{created}");
    } else {
        eprintln!("Created the token (shown only this once; only its hash is stored):");
        println!("{}", created["secret"].as_str().unwrap_or("?"));
    }
    Ok(0)
}

fn token_list(a: TokenListArgs) -> Result<i32, FlagsCliError> {
    let list = admin(&a.remote)?.send("GET", "/api/admin/api-tokens", None)?;
    if a.json {
        println!("{list}");
        return Ok(0);
    }
    for t in list["tokens"].as_array().into_iter().flatten() {
        println!(
            "{}	{}	project={}	environment={}",
            t["tokenName"].as_str().unwrap_or("?"),
            t["type"].as_str().unwrap_or("?"),
            t["project"].as_str().unwrap_or("?"),
            t["environment"].as_str().unwrap_or("?")
        );
    }
    Ok(0)
}

fn token_delete(a: TokenDeleteArgs) -> Result<i32, FlagsCliError> {
    let secret = if a.secret == "-" {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|source| FlagsCliError::Read {
                path: "-".into(),
                source,
            })?;
        line.trim().to_owned()
    } else {
        a.secret
    };
    admin(&a.remote)?.send(
        "DELETE",
        &format!("/api/admin/api-tokens/{}", segment(&secret)),
        None,
    )?;
    eprintln!("token revoked");
    Ok(0)
}

fn export(a: ExportArgs) -> Result<i32, FlagsCliError> {
    let state = admin(&a.remote)?.send(
        "GET",
        &format!("/api/admin/state/export?environment={}", segment(&a.env)),
        None,
    )?;
    let text = serde_json::to_string_pretty(&state).unwrap_or_default() + "\n";
    match a.output {
        None => print!("{text}"),
        Some(path) => {
            std::fs::write(&path, text).map_err(|source| FlagsCliError::Write { path, source })?
        }
    }
    Ok(0)
}

fn import(a: ImportArgs) -> Result<i32, FlagsCliError> {
    use std::io::Read;
    let read_err = |source| FlagsCliError::Read {
        path: a.file.clone(),
        source,
    };
    let mut raw = Vec::new();
    if a.file.as_os_str() == "-" {
        std::io::stdin()
            .take(MAX_IMPORT + 1)
            .read_to_end(&mut raw)
            .map_err(read_err)?;
    } else {
        std::fs::File::open(&a.file)
            .and_then(|f| f.take(MAX_IMPORT + 1).read_to_end(&mut raw))
            .map_err(read_err)?;
    }
    if raw.len() as u64 > MAX_IMPORT {
        return Err(FlagsCliError::Usage(format!(
            "{} is larger than {} MiB",
            a.file.display(),
            MAX_IMPORT >> 20
        )));
    }
    let state: serde_json::Value = serde_json::from_slice(&raw)
        .map_err(|e| FlagsCliError::Usage(format!("{} is not JSON: {e}", a.file.display())))?;
    admin(&a.remote)?.send(
        "POST",
        &format!("/api/admin/state/import?environment={}", segment(&a.env)),
        Some(&state),
    )?;
    let n = state["features"].as_array().map_or(0, Vec::len);
    eprintln!("imported {n} flags into {}", a.env);
    Ok(0)
}

fn audit_verify(r: Remote) -> Result<i32, FlagsCliError> {
    let report = admin(&r)?.send("GET", "/api/admin/audit/verify", None)?;
    let report: cordon_flags::audit::Report = serde_json::from_value(report)
        .map_err(|_| cordon_flags::client::ClientError::Malformed { url: r.url.clone() })?;
    for p in &report.problems {
        println!("{p}");
    }
    if report.ok() {
        println!(
            "audit chain intact: {} events, head {}",
            report.events,
            report.head.as_deref().unwrap_or("-")
        );
        Ok(0)
    } else {
        Ok(1)
    }
}

fn serve(a: ServeArgs) -> Result<i32, FlagsCliError> {
    let (store, where_): (Arc<dyn Store>, String) = match a.database_url.as_deref() {
        Some(url) if !url.is_empty() => {
            let store = PgStore::connect(url)?;
            let name = format!("PostgreSQL {}", store.database());
            (Arc::new(store), name)
        }
        _ => {
            let db = match a.db {
                Some(p) => p,
                None => {
                    let root = DataDir::from_env()?.root().to_owned();
                    std::fs::create_dir_all(&root).map_err(|source| FlagsCliError::CreateDir {
                        path: root.clone(),
                        source,
                    })?;
                    root.join("flags.db")
                }
            };
            (Arc::new(SqliteStore::open(&db)?), db.display().to_string())
        }
    };
    let init = a.init_admin_token.as_deref().filter(|t| !t.is_empty());
    if let Some(generated) = cordon_flags::bootstrap_admin_token(store.as_ref(), init)? {
        eprintln!("Created the admin token (shown only this once; only its hash is stored):");
        println!("{generated}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(FlagsCliError::Runtime)?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .map_err(|source| FlagsCliError::Listen {
                addr: a.listen,
                source,
            })?;
        let addr = listener.local_addr().unwrap_or(a.listen);
        eprintln!("cordon flags: serving on http://{addr} (database {where_})");
        cordon_flags::serve(listener, store, ServeOptions::default()).await?;
        Ok(0)
    })
}
