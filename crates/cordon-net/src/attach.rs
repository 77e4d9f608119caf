//! Running the gateway for one session: its own tokio runtime, the stack on
//! the link the sandbox hands out, the L7 gateway behind it, and the control
//! socket.
//!
//! The session prepares the gateway before the sandbox starts (the sandbox
//! needs the CA certificate in its trust store), then attaches the link once
//! the backend passes it out, and shuts everything down when the agent ends.

use std::path::Path;
use std::sync::Arc;

use crate::Emit;
use crate::l7::{Gateway, GatewayConfig, GatewayError, GatewayStats};
use crate::stack::{self, Link, StackConfig};

/// Worker threads of the gateway's runtime. The agent runs on the same
/// machine; two workers keep TLS and the stack from waiting on each other
/// without taking every core.
const WORKERS: usize = 2;

/// A gateway ready for its link.
pub struct Prepared {
    rt: tokio::runtime::Runtime,
    gateway: Arc<Gateway>,
    emit: Emit,
}

/// Makes the session's gateway: CA, roots, secrets (fails closed when one
/// cannot be read).
pub fn prepare(cfg: GatewayConfig, emit: Emit) -> Result<Prepared, GatewayError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .thread_name("cordon-gateway")
        .enable_all()
        .build()
        .map_err(|e| GatewayError::Runtime(e.to_string()))?;
    let gateway = {
        let _guard = rt.enter();
        Gateway::new(cfg, emit.clone())?
    };
    Ok(Prepared { rt, gateway, emit })
}

impl Prepared {
    /// The session CA certificate the sandbox must trust (PEM).
    pub fn ca_cert_pem(&self) -> String {
        self.gateway.ca_cert_pem()
    }

    /// Starts the stack on `link`, the gateway behind it, and the control
    /// socket at `control`.
    pub fn attach(self, link: Link, control: &Path) -> std::io::Result<Attached> {
        let Prepared { rt, gateway, emit } = self;
        let _guard = rt.enter();
        let cfg = StackConfig {
            emit,
            dns_allows: {
                let g = gateway.clone();
                Arc::new(move |name: &str| g.dns_allows(name))
            },
            direct_allows: {
                let g = gateway.clone();
                Arc::new(move |ip, port| g.direct_allows(ip, port))
            },
        };
        let (stack, flows) = stack::spawn(link, cfg)?;
        rt.spawn(gateway.clone().serve(flows));
        let stats = {
            let (g, s) = (gateway.clone(), stack.stats_reader());
            Arc::new(move || g.stats().with_stack(&s.get()))
        };
        crate::control::serve(gateway.clone(), stats, control)?;
        drop(_guard);
        Ok(Attached {
            rt,
            gateway,
            stack,
            control: control.to_path_buf(),
        })
    }
}

/// A running gateway.
pub struct Attached {
    rt: tokio::runtime::Runtime,
    gateway: Arc<Gateway>,
    stack: stack::StackHandle,
    control: std::path::PathBuf,
}

impl Attached {
    /// The gateway's counters with the stack's refusals.
    pub fn stats(&self) -> GatewayStats {
        self.gateway.stats().with_stack(&self.stack.stats())
    }

    /// Stops the stack and the control socket and returns the final
    /// counters. The runtime (with every connection still in it) is torn down
    /// on a thread of its own: dropping the TAP device's descriptor makes the
    /// kernel unregister the device, which takes 10-20 ms the caller need not
    /// wait for. Events emitted meanwhile are the caller's to discard.
    pub fn shutdown(self) -> GatewayStats {
        self.stack.stop();
        let _ = std::fs::remove_file(&self.control);
        let stats = self.stats();
        let Attached { rt, stack, .. } = self;
        let _ = std::thread::Builder::new()
            .name("cordon-gateway-down".into())
            .spawn(move || {
                drop(stack);
                rt.shutdown_timeout(std::time::Duration::from_millis(500));
            });
        stats
    }
}
