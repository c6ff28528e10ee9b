#![no_main]
//! Fuzz target `proxy_protocol`: see `mosaic_gateway_fuzz::proxy_protocol`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mosaic_gateway_fuzz::proxy_protocol(data));
