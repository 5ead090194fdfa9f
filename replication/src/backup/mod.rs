//! The backup chain: checkpoints and the committed Raft log, shipped to a
//! [`BackupTarget`], and point-in-time restore from them.
//!
//! A shipper ([`BackupShipper`]) runs on the leader. Every log interval it
//! ships the entries applied since the last round as a log chunk; every
//! checkpoint interval it ships a checkpoint (a Raft snapshot of the
//! state). Checkpoint files go to content-named objects, so a checkpoint
//! ships only the tables the chain does not hold yet: after the first,
//! each one is a delta of its predecessor. [`restore`] rebuilds the state
//! as of a log index or a time from the newest checkpoint before that
//! point plus the log after it, applied through the same code as the
//! replicas' state machine, and writes it as a new single-node cluster.
//!
//! The recovery point of the chain is the log interval (plus the time one
//! round takes); what a restore costs is fetching one checkpoint and
//! replaying at most one checkpoint interval of log.
//!
//! ## Format (version 1)
//!
//! ```text
//! objects/<crc32, 8 hex>-<size>-<name>   the bytes of a checkpoint file named <name>
//!                                        (immutable; shared by every checkpoint holding it)
//! checkpoints/<index, 20 digits>.ckpt    a checkpoint record, for the state at log index <index>
//! log/<first, 20 digits>-<last, 20 digits>.log
//!                                        committed entries first..=last: one segment of the
//!                                        Raft log format (engine WAL framing, kind Raft,
//!                                        record sequence = log index, payload = postcard(Entry))
//!
//! checkpoint record = "FERRYBCK" | version: u32 LE (1) | body length: u32 LE
//!                     | body CRC32: u32 LE | body = postcard(CheckpointRecord)
//! ```
//!
//! Invariants:
//! - Every name is written once, atomically ([`BackupTarget::put`]): a
//!   reader sees a whole file or none.
//! - A checkpoint record is written after every object it names, so a
//!   listed checkpoint is complete.
//! - Log chunks hold only applied (hence committed) entries, so two chunks
//!   that overlap agree on every index they share (Raft's log matching);
//!   shippers on successive leaders may overlap without harm.
//! - A restore checks every byte it uses: objects against their size and
//!   CRC32, log records by their framing CRC; a gap in the log is an error,
//!   never a silently shorter state.

mod catalog;
mod restore;
mod shipper;
mod target;

pub use catalog::{Catalog, CheckpointRecord, LogChunk};
pub use restore::{restore, RestorePoint, RestoreReport};
pub use shipper::{
    BackupOptions, BackupShipper, BackupStatus, ChainSummary, ShipReport, ShippedCheckpoint,
};
pub use target::{BackupTarget, LocalDir};
