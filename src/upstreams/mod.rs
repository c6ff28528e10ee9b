//! The upstreams: pools of Mosaic backends and nostr relays ([`pool`]), their active
//! health checks ([`health`]), DNS discovery of their addresses ([`discovery`]), opening a
//! connection and its WebSocket upgrade ([`connect`]), and the retry across a pool
//! ([`retry`]).

pub(crate) mod connect;
pub mod discovery;
pub(crate) mod health;
pub(crate) mod pool;
pub(crate) mod retry;
