//! Outside programs the scenarios drive: headless Chromium over the DevTools protocol, and
//! Pebble, Let's Encrypt's test ACME server.

pub mod chromium;
pub mod pebble;
