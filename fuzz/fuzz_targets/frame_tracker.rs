#![no_main]
//! Fuzz target `frame_tracker`: see `mosaic_gateway_fuzz::frame_tracker`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mosaic_gateway_fuzz::frame_tracker(data));
