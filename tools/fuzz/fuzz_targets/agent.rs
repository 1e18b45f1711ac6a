//! Fuzz target `agent`: see `rtbackup_agent::fuzz::server_frames_target`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rtbackup_agent::fuzz::server_frames_target(data));
