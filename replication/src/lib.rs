//! Raft replication of a [`ferry_engine::Db`] with openraft.
//!
//! Placeholder doc; see DESIGN.md.

pub use ferry_engine as engine;

pub mod log_store;
pub mod snapshot;
pub mod state_machine;
pub mod types;
