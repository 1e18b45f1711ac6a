//! Fuzz target `records`: see `rtbackup_proto::fuzz::records_target`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rtbackup_proto::fuzz::records_target(data));
