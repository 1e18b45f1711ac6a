//! The rtbackup backup server: receives record streams from agents
//! (Documentation/protocol.rst) into a store (`rtbackup-store`), restores
//! volumes from it, and exports past states over NBD.

pub mod cmd;
mod error;
mod maintenance;
pub mod metrics;
pub mod nbd;
mod rollback;
pub mod server;
mod verify;

pub use error::{Result, ServerError};
pub use server::{Server, SERVER_VERSION};
