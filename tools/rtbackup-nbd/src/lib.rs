//! A read-only NBD server: the fixed newstyle handshake (`NBD_OPT_GO`,
//! `NBD_OPT_INFO`, `NBD_OPT_EXPORT_NAME`, `NBD_OPT_LIST`, `NBD_OPT_ABORT`,
//! and `NBD_OPT_STARTTLS`, whose TLS the caller runs: [`negotiate`])
//! and transmission with simple replies, following the protocol
//! specification (<https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>).
//! Writes, trims and write-zeroes are refused with `EPERM`.
//!
//! Exports come from an [`Exports`] implementation: rtbackup's server
//! resolves names like `VOLUME@2026-11-26T05:00:00Z` to a past state of a
//! volume. The wire codec ([`proto`]) is pure and separate from the I/O
//! loop ([`serve`]).

#[doc(hidden)]
pub mod fuzz;
pub mod proto;
mod serve;

pub use serve::{
    greet, negotiate, serve, Export, ExportInfo, Exports, Handshake, NbdError, TlsMode,
};
