#![no_main]
//! Fuzz target: `foobar::fuzzing::control_request`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| foobar::fuzzing::control_request(data));
