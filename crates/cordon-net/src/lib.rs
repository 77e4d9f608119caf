//! The egress gateway: the sandbox's only route to anything.
//!
//! * [`tap`]: creating and configuring the TAP device inside the sandbox's
//!   network namespace (called by the sandbox's init; plain syscalls).
//! * [`stack`]: a userspace TCP/IP stack (smoltcp) on the host side of that
//!   TAP device, or of QEMU's `-netdev stream` socket. It answers ARP and DNS
//!   itself, accepts TCP connections to the addresses its DNS handed out, and
//!   hands each one to the L7 layer as a [`stack::Flow`]. Nothing else passes.
//! * [`l7`]: TLS interception with a per-session CA, HTTP/1.1 and HTTP/2
//!   proxying, request rules, secret injection and scrubbing, upstream dialing
//!   that refuses private addresses, and the `ask` queue.

pub mod attach;
pub mod control;
pub mod l7;
pub mod stack;
pub mod tap;

use std::sync::Arc;

/// Where the gateway reports what it does: an event kind (see
/// `cordon_events::kind`) and its fields. Called from any thread; must not block.
pub type Emit = Arc<dyn Fn(&str, serde_json::Map<String, serde_json::Value>) + Send + Sync>;

/// An [`Emit`] that drops everything (unit tests).
pub fn null_emit() -> Emit {
    Arc::new(|_, _| {})
}
