#![no_main]
//! Fuzz target `upgrade_route`: see `mosaic_gateway_fuzz::upgrade_route`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mosaic_gateway_fuzz::upgrade_route(data));
