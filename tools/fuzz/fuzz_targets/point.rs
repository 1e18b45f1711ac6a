//! Fuzz target `point`: see `rtbackup_store::fuzz::point_target`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rtbackup_store::fuzz::point_target(data));
