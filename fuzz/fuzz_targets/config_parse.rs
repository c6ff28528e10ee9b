#![no_main]
//! Fuzz target `config_parse`: see `mosaic_gateway_fuzz::config_parse`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mosaic_gateway_fuzz::config_parse(data));
