#![no_main]
//! Fuzz target: `foobar::fuzzing::bgp_daemon_answers`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| foobar::fuzzing::bgp_daemon_answers(data));
