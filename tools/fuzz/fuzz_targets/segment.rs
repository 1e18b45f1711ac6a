//! Fuzz target `segment`: see `rtbackup_store::fuzz::segment_target`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rtbackup_store::fuzz::segment_target(data));
