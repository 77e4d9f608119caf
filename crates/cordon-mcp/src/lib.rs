//! An MCP server that lets a coding agent work with feature flags on a Cordon flag
//! server (`cordon-flags`): create a flag, read its state, explain an evaluation,
//! roll it out, ask to enable it, kill it, wrap a change in it, clean it up.
//!
//! - [`api`]: the HTTP seam ([`api::FlagApi`]) and its real implementation.
//! - [`tools`]: each tool's arguments, validation and requests, including the
//!   governance decision (protected environment → change request, never a direct
//!   change).
//! - [`snippet`]: `wrap_change`'s code templates.
//! - [`FlagsServer`]: the MCP face (the official `rmcp` SDK), served over stdio
//!   ([`serve_stdio`]) or streamable HTTP at `/mcp` ([`serve_http`]).
//!
//! It holds no state of its own and no power beyond its token's: with an agent
//! token it can propose changes to protected environments but never approve them
//! (the flag server enforces that). See `docs/mcp.md`.

pub mod api;
pub mod snippet;
pub mod tools;

use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, ServiceExt, tool, tool_handler, tool_router};
use serde_json::Value;

use crate::api::FlagApi;
use crate::tools::ToolError;

/// Errors starting or running the MCP server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start the MCP server: {0}")]
    Start(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("the MCP server stopped: {0}")]
    Serve(String),
}

/// The MCP server: one tool per flag operation, each a call to [`tools`] on a
/// blocking thread (the HTTP client is blocking).
#[derive(Clone)]
pub struct FlagsServer {
    api: Arc<dyn FlagApi>,
    tool_router: ToolRouter<Self>,
}

impl FlagsServer {
    pub fn new(api: Arc<dyn FlagApi>) -> Self {
        Self {
            api,
            tool_router: Self::tool_router(),
        }
    }

    /// Run `f` on a blocking thread and turn its outcome into MCP's.
    async fn run<A: Send + 'static>(
        &self,
        args: A,
        f: fn(&dyn FlagApi, &A) -> Result<Value, ToolError>,
    ) -> Result<CallToolResult, ErrorData> {
        let api = self.api.clone();
        let outcome = tokio::task::spawn_blocking(move || f(api.as_ref(), &args))
            .await
            .map_err(|e| ErrorData::internal_error(format!("the tool failed: {e}"), None))?;
        result(outcome)
    }
}

/// Every failure is a *tool* error (`isError: true` with one line of text), bad
/// arguments included: that is what the MCP specification asks for input
/// validation (the model reads it and corrects the call), and what rmcp itself does
/// when arguments do not match a tool's schema. Protocol errors are left to rmcp
/// (unknown tool, malformed request).
fn result(outcome: Result<Value, ToolError>) -> Result<CallToolResult, ErrorData> {
    match outcome {
        Ok(v) => Ok(CallToolResult::structured(v)),
        Err(ToolError::InvalidArgument(m)) => Ok(CallToolResult::error(vec![ContentBlock::text(
            format!("invalid arguments: {m}"),
        )])),
        Err(e) => Ok(CallToolResult::error(vec![ContentBlock::text(
            e.to_string(),
        )])),
    }
}

#[tool_router]
impl FlagsServer {
    #[tool(
        description = "Create a feature flag. It starts OFF in every environment, so code guarded by it ships dark. Returns the flag with its per-environment state."
    )]
    async fn create_flag(
        &self,
        Parameters(a): Parameters<tools::CreateFlag>,
    ) -> Result<CallToolResult, ErrorData> {
        self.run(a, tools::create_flag).await
    }

    #[tool(
        description = "A flag's state per environment: enabled, protected (changes need a human-approved change request), strategies (with ids, parameters, constraints) and variants.",
        annotations(read_only_hint = true)
    )]
    async fn get_flag_state(
        &self,
        Parameters(a): Parameters<tools::FlagRef>,
    ) -> Result<CallToolResult, ErrorData> {
        self.run(a, tools::get_flag_state).await
    }

    #[tool(
        description = "List the flags of a project with the environments each is enabled in.",
        annotations(read_only_hint = true)
    )]
    async fn list_flags(
        &self,
        Parameters(a): Parameters<tools::ListFlags>,
    ) -> Result<CallToolResult, ErrorData> {
        self.run(a, tools::list_flags).await
    }

    #[tool(
        description = "Evaluate a flag for a context (userId, sessionId, remoteAddress, properties...) in one environment, as the SDKs would, and explain WHY: whether the environment is on, which strategy matched, and which constraints or segments failed.",
        annotations(read_only_hint = true)
    )]
    async fn evaluate(
        &self,
        Parameters(a): Parameters<tools::Evaluate>,
    ) -> Result<CallToolResult, ErrorData> {
        self.run(a, tools::evaluate).await
    }

    #[tool(
        description = "Roll a flag out to a percentage (0-100) of users in one environment with a flexibleRollout strategy (replacing an existing flexibleRollout's percentage, keeping its constraints). In a protected environment this opens a change request for human review instead and says so."
    )]
    async fn set_rollout(
        &self,
        Parameters(a): Parameters<tools::SetRollout>,
    ) -> Result<CallToolResult, ErrorData> {
        self.run(a, tools::set_rollout).await
    }

    #[tool(
        description = "Turn a flag on in one environment. Unprotected environments are switched directly; in a protected one a change request is opened and submitted for review (a human must approve it). The result says which happened."
    )]
    async fn request_enable(
        &self,
        Parameters(a): Parameters<tools::RequestEnable>,
    ) -> Result<CallToolResult, ErrorData> {
        self.run(a, tools::request_enable).await
    }

    #[tool(
        description = "Kill switch: turn a flag OFF in one environment, or in every environment when none is given. Always allowed, also in protected environments; SDKs that stream see it within milliseconds.",
        annotations(destructive_hint = true, idempotent_hint = true)
    )]
    async fn kill_flag(
        &self,
        Parameters(a): Parameters<tools::KillFlag>,
    ) -> Result<CallToolResult, ErrorData> {
        self.run(a, tools::kill_flag).await
    }

    #[tool(
        description = "Code that guards a change with a flag, using the official Unleash SDK of the repository's language (typescript, javascript, python, go, rust, java; detected from `path` when `language` is omitted): the if/else guard around `code`, the client setup, and the package to install.",
        annotations(read_only_hint = true)
    )]
    async fn wrap_change(
        &self,
        Parameters(a): Parameters<snippet::WrapChange>,
    ) -> Result<CallToolResult, ErrorData> {
        result(snippet::wrap_change(&a))
    }

    #[tool(
        description = "Help remove a flag that is no longer needed: reports where it is still enabled and whether for everyone, with what to do in the code; with archive=true it then archives the flag (in a protected environment: opens a change request to archive it)."
    )]
    async fn cleanup_flag(
        &self,
        Parameters(a): Parameters<tools::CleanupFlag>,
    ) -> Result<CallToolResult, ErrorData> {
        self.run(a, tools::cleanup_flag).await
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for FlagsServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_instructions(
            "Feature flags on a Cordon (Unleash-compatible) flag server. Ship new code dark: \
             create_flag, wrap_change around the change, then set_rollout / request_enable. \
             Protected environments only take change requests, which a human approves. \
             kill_flag turns a flag off anywhere at once.",
        )
    }
}

/// Serve MCP over standard input and output until the client closes it.
pub async fn serve_stdio(api: Arc<dyn FlagApi>) -> Result<(), Error> {
    let running = FlagsServer::new(api)
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| Error::Start(e.to_string()))?;
    running
        .waiting()
        .await
        .map_err(|e| Error::Serve(e.to_string()))?;
    Ok(())
}

/// Serve MCP over streamable HTTP at `/mcp` on `listener` until `shutdown` resolves.
pub async fn serve_http(
    api: Arc<dyn FlagApi>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    };
    let ct = tokio_util::sync::CancellationToken::new();
    let server = FlagsServer::new(api);
    let service: StreamableHttpService<FlagsServer, LocalSessionManager> =
        StreamableHttpService::new(
            move || Ok(server.clone()),
            Default::default(),
            StreamableHttpServerConfig::default().with_cancellation_token(ct.child_token()),
        );
    let router = axum::Router::new().nest_service("/mcp", service);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            ct.cancel();
        })
        .await
        .map_err(|e| Error::Serve(e.to_string()))
}
