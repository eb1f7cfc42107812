#![no_main]
//! Fuzz target: `foobar::fuzzing::vrrp_advert`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| foobar::fuzzing::vrrp_advert(data));
