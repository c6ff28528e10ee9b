#![no_main]
//! Fuzz target `tracker_2025`: see `mosaic_gateway_fuzz::tracker_2025`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mosaic_gateway_fuzz::tracker_2025(data));
