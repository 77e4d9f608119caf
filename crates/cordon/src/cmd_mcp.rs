//! `cordon mcp ...`: MCP servers for coding agents. `flags` serves the flag tools
//! of `cordon-mcp` against a flag server's admin API, over stdio (what MCP clients
//! launch) or, with `--listen`, streamable HTTP at `/mcp`.

use std::sync::Arc;

use clap::{Args, Subcommand};
use cordon_mcp::api::HttpFlagApi;

#[derive(Subcommand)]
pub enum McpCmd {
    /// Feature flag tools (create, state, evaluate, rollout, enable, kill, wrap, cleanup).
    #[command(
        long_about = "Serve the feature flag tools over MCP for a coding agent: \
create_flag, get_flag_state, list_flags, evaluate, set_rollout, request_enable, kill_flag, \
wrap_change, cleanup_flag. Standard input/output by default (for an MCP client to launch); \
with --listen, streamable HTTP at http://ADDR/mcp. Give it an agent token: in protected \
environments it can only open change requests, which a human approves. See docs/mcp.md."
    )]
    Flags(FlagsArgs),
}

#[derive(Args)]
pub struct FlagsArgs {
    /// Flag server, e.g. http://127.0.0.1:4242.
    #[arg(
        long,
        env = "CORDON_FLAGS_URL",
        default_value = "http://127.0.0.1:4242"
    )]
    url: String,
    /// Token for the flag server's admin API (an agent token).
    #[arg(long, env = "CORDON_FLAGS_TOKEN", hide_env_values = true)]
    token: String,
    /// Serve streamable HTTP at /mcp on this address (e.g. 127.0.0.1:8765) instead
    /// of stdio. Prints `listening on ADDR` on standard error once ready.
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum McpCliError {
    #[error(transparent)]
    Api(#[from] cordon_mcp::api::ApiError),
    #[error(transparent)]
    Mcp(#[from] cordon_mcp::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

pub fn run(cmd: McpCmd) -> Result<i32, McpCliError> {
    match cmd {
        McpCmd::Flags(a) => flags(a),
    }
}

fn flags(a: FlagsArgs) -> Result<i32, McpCliError> {
    let api = Arc::new(HttpFlagApi::new(&a.url, &a.token)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(McpCliError::Runtime)?;
    rt.block_on(async move {
        match a.listen {
            None => cordon_mcp::serve_stdio(api).await?,
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| McpCliError::Listen { addr, source })?;
                let local = listener
                    .local_addr()
                    .map_err(|source| McpCliError::Listen { addr, source })?;
                eprintln!("listening on {local}");
                let shutdown = async {
                    let _ = tokio::signal::ctrl_c().await;
                };
                cordon_mcp::serve_http(api, listener, shutdown).await?;
            }
        }
        Ok::<_, McpCliError>(())
    })?;
    Ok(0)
}
