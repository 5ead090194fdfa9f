//! Raft replication of a [`ferry_engine::Db`].
//!
//! Not built yet: this crate will hold the openraft log store (sharing the
//! engine's WAL framing), the state machine over the engine, snapshot
//! shipping from checkpoints and differential state transfer. Until then it
//! only re-exports the engine so that the dependency direction
//! (`replication` → `engine`, never the reverse) is fixed from the start.

pub use ferry_engine as engine;
