//! mosaic-gateway: one public WebSocket endpoint for Mosaic and nostr clients.
//!
//! [`runtime`] binds the listeners and starts the background tasks; `server` assembles the
//! connection pipeline in one function: the PROXY header ([`proxy_protocol`]), TLS
//! ([`tls`]), the first request head, then either the hyper path for plain HTTP (`front`)
//! or the upgrade (`upgrade`: limits, [`route`], the backend pool, the upstream's handshake
//! first), and finally the relay (`connection`, [`relay`]) that moves frames both ways,
//! inspecting Mosaic messages in flight. Each stage knows only the stages after it; the
//! shared state they read ([`App`], [`Gateway`]) depends on none of them.
#![deny(missing_docs)]
// The one call that needs `unsafe` (mimalloc's collect) lives in the binary, `main.rs`.
#![forbid(unsafe_code)]

mod acme_http;
mod admin;
mod admission;
mod answer;
mod body;
mod certificates;
mod client_addr;
mod connection;
mod drain;
mod enforcer;
mod front;
mod front_h2;
mod gateway;
mod health;
mod logging;
mod metrics;
mod nip86;
mod pool;
mod rate_limit;
mod retry;
mod routes;
mod server;
mod status;
mod upgrade;
mod upstream;
mod workers;

pub mod cli;
pub mod config;
pub mod dev;
pub mod discovery;
pub mod error;
pub mod fields;
pub mod handshake;
pub mod hello;
pub mod keys;
pub mod proxy_protocol;
pub mod relay;
pub mod request_head;
pub mod route;
pub mod route_table;
pub mod runtime;
pub mod shutdown;
pub mod tls;

pub use admission::Limits;
pub use answer::Rejection;
pub use gateway::{App, BuildError, Gateway, NotReady};
pub use metrics::Metrics;
