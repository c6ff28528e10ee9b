//! Every integration test in one binary: each scenario is a module here, so nostr-sdk and
//! the crate are linked once instead of once per file (issue 11 §4). All modules share one
//! process and run on parallel threads, so a scenario must not change process-wide state
//! (environment, current directory, signal dispositions, a global tracing subscriber);
//! scenarios that need signals or a fixed set-up run the `mosaic-gateway` binary as a child.
//!
//! One scenario: `cargo test --test it tls_gateway::`; one test:
//! `cargo test --test it -- --exact tls_gateway::<name>`.

mod common;
mod support;

mod acme;
mod browser;
mod config_check;
mod deploy_manifests;
mod dev_servers;
mod dev_stack;
mod edge_rules;
mod fuzz_regression;
mod hardening;
mod http2;
mod memory_after_spike;
// Named like the crate: only here at the root does `mosaic_gateway` mean this module, so
// write `::mosaic_gateway` for the crate in this file; the modules are unaffected.
mod mosaic2025;
mod mosaic_gateway;
mod nostr_gateway;
mod observability;
mod operations;
mod operator_controls;
mod pool_balancing;
mod pool_discovery_reload;
mod pool_health;
mod rate_limits;
mod routes;
mod slow_and_noisy_peers;
mod status_page;
mod structure;
mod tls;
mod tls_edge;
mod tls_gateway;
mod tls_gnutls;
mod uploads;
