#![no_main]
//! Fuzz target: `foobar::fuzzing::configuration`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| foobar::fuzzing::configuration(data));
