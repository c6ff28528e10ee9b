//! The connection pipeline: every accepted connection goes through these stages in order,
//! each knowing only the stages after it — [`accept`] (the listener, the PROXY header, the
//! TLS hand-off, the first request head), the hyper doors for plain HTTP ([`front`],
//! [`front_h2`], with [`body`]), the WebSocket [`upgrade`], and the relayed [`connection`].
//! [`answer`] holds the answers the gateway writes itself; [`workers`] the event loops.

pub mod accept;
pub mod answer;
pub mod body;
pub mod connection;
pub mod front;
pub mod front_h2;
pub mod upgrade;
pub mod workers;
