//! Test helpers for the rtbackup VM tests; see the binaries in `src/bin`.
