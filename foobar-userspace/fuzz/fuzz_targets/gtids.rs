#![no_main]
//! Fuzz target: `foobar::fuzzing::gtids`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| foobar::fuzzing::gtids(data));
