//! mosaic-gateway: one public WebSocket endpoint for Mosaic and nostr clients.
//!
//! The data path, layer by layer: [`server`] accepts (with [`listener`] limits and
//! [`tls`]), reads the upgrade ([`handshake`]), decides the route ([`route`]), picks a
//! backend ([`pool`]), completes the upstream upgrade first ([`upstream`]), then [`relay`]
//! moves frames both ways, inspecting Mosaic messages in flight.
#![deny(missing_docs)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod connection;
pub mod dev;
pub mod discovery;
pub mod front;
pub mod handshake;
pub mod health;
pub mod keys;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod pool;
pub mod proxy_protocol;
pub mod relay;
pub mod route;
pub mod runtime;
pub mod server;
pub mod shutdown;
pub mod tls;
pub mod upgrade;
pub mod upstream;
