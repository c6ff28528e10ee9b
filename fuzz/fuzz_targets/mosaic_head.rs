#![no_main]
//! Fuzz target `mosaic_head`: see `mosaic_gateway_fuzz::mosaic_head`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mosaic_gateway_fuzz::mosaic_head(data));
