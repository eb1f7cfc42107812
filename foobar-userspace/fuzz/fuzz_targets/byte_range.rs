#![no_main]
//! Fuzz target: `foobar::fuzzing::byte_range`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| foobar::fuzzing::byte_range(data));
