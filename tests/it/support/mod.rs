//! Outside programs the scenarios drive: headless Chromium over the DevTools protocol, and
//! Pebble, Let's Encrypt's test ACME server; and a logging upstream (`recorder`).

pub mod chromium;
pub mod pebble;
pub mod recorder;
