#![no_main]
//! Fuzz target `request_rules`: see `mosaic_gateway_fuzz::request_rules`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mosaic_gateway_fuzz::request_rules(data));
