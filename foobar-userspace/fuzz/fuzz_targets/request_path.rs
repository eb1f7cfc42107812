#![no_main]
//! Fuzz target: `foobar::fuzzing::request_path`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| foobar::fuzzing::request_path(data));
