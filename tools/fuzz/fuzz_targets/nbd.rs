//! Fuzz target `nbd`: see `rtbackup_nbd::fuzz::nbd_target`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rtbackup_nbd::fuzz::nbd_target(data));
