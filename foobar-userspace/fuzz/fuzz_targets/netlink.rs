#![no_main]
//! Fuzz target: `foobar::fuzzing::netlink`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| foobar::fuzzing::netlink(data));
