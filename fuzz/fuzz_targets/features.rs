#![no_main]
//! Fuzz target `features`: see `mosaic_gateway_fuzz::features`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mosaic_gateway_fuzz::features(data));
