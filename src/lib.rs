//! mosaic-gateway: one public WebSocket endpoint for Mosaic and nostr clients.
//!
//! The folders are the parts, listed here from the top of the pipeline down; each imports
//! only the parts after it (`tests/it/structure.rs` checks the order):
//! - [`cli`] and [`runtime`] start everything; [`dev`] runs local backends for `dev`.
//! - `ops`: the admin listener, the status page, NIP-86, signals, reload and drain.
//! - `pipeline`: what each accepted connection goes through, in order: accept, PROXY
//!   header, TLS hand-off, the first request head, then the hyper doors for plain HTTP and
//!   HTTP/2 or the upgrade, and the connection's relay hand-off.
//! - [`Gateway`] and [`App`]: the shared state the stages read (one configuration
//!   generation; the process).
//! - [`routing`]: which host/path route a request belongs to, and its pools.
//! - [`upstreams`]: the pools of backends and relays, their health, DNS discovery,
//!   connecting and retrying.
//! - `rate_limit`: admission, rate limits, access lists, bans.
//! - [`config`], [`tls`] (certificates, ACME and their upkeep), [`protocol`] (the pure
//!   rules of request heads, upgrades, PROXY headers and HELLO), [`relay`] (moving frames
//!   both ways, inspecting Mosaic messages in flight); [`error`] prints an error's causes.
#![deny(missing_docs)]
// The one call that needs `unsafe` (mimalloc's collect) lives in the binary, `main.rs`.
#![forbid(unsafe_code)]

mod drain;
mod gateway;
mod logging;
mod metrics;
mod ops;
mod pipeline;
mod rate_limit;

pub mod cli;
pub mod config;
pub mod dev;
pub mod error;
pub mod keys;
pub mod protocol;
pub mod relay;
pub mod routing;
pub mod runtime;
pub mod tls;
pub mod upstreams;

// The paths outside code (tests, fuzz targets) used while these modules sat at the root.
pub use ops::shutdown;
pub use protocol::{fields, handshake, hello, proxy_protocol, request_head};
pub use upstreams::discovery;

pub use gateway::{App, BuildError, Gateway, NotReady};
pub use metrics::Metrics;
pub use protocol::reason::Rejection;
pub use rate_limit::admission::Limits;
