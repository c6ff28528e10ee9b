//! What operators work the running gateway with: the admin listener (metrics, probes,
//! status page, NIP-86), the enforcer that applies standing changes to open connections,
//! and signals (reload, drain).

pub mod admin;
pub mod enforcer;
pub mod nip86;
pub mod shutdown;
pub mod status;
