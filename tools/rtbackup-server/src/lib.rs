//! The rtbackup backup server: receives record streams from agents
//! (Documentation/protocol.rst) into a store (`rtbackup-store`), and
//! restores volumes from it.

pub mod cli;
pub mod server;

pub use server::{Server, SERVER_VERSION};
