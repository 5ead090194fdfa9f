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
//! ## Format (version 2)
//!
//! ```text
//! head                                   the chain's head (see `head`): which term may extend
//!                                        the chain and how far it is committed; envelope
//!                                        "FERRYHED" v1, body postcard(Head)
//! objects/<crc32, 8 hex>-<size>-<name>   the bytes of a checkpoint file named <name>
//!                                        (immutable; shared by every checkpoint holding it)
//! checkpoints/<index, 20 digits>-<term, 20 digits>.ckpt
//!                                        a checkpoint record, for the state at log index <index>,
//!                                        shipped by the leader of <term>
//! log/<first, 20 digits>-<last, 20 digits>-<term, 20 digits>.log
//!                                        committed entries first..=last: one segment of the
//!                                        Raft log format (engine WAL framing, kind Raft,
//!                                        record sequence = log index, payload = postcard(Entry))
//!
//! checkpoint record = envelope "FERRYBCK" v1, body postcard(CheckpointRecord)
//! envelope          = ferry_engine::envelope: magic: 8 bytes | version: u32 LE
//!                     | body length: u32 LE | body CRC32: u32 LE | body
//! ```
//!
//! Version 1 (release 0.1.0) had no head and no term in the names
//! (`checkpoints/<index>.ckpt`, `log/<first>-<last>.log`). Such a chain
//! still reads: its files count as term 0, and the first leader to ship
//! into it writes a head that keeps them.
//!
//! Invariants:
//! - Every name is written once, atomically and create-only
//!   ([`BackupTarget::put`]): a reader sees a whole file or none, and no
//!   writer replaces what another wrote.
//! - A checkpoint record is written after every object it names, so a
//!   listed checkpoint is complete.
//! - Only files the head holds are the chain ([`head`]): a deposed leader
//!   that keeps writing adds orphans, never chain.
//! - Log chunks hold only applied (hence committed) entries, so two chunks
//!   that overlap agree on every index they share (Raft's log matching).
//! - Retention removes whole chains, oldest first, records before the
//!   files they need ([`Retention`]).
//! - A restore checks every byte it uses: objects against their size and
//!   CRC32, log records by their framing CRC; a gap in the log is an error,
//!   never a silently shorter state. [`verify`] checks the same without
//!   restoring.

mod catalog;
pub mod cpu;
pub mod head;
mod restore;
mod retention;
mod shipper;
mod target;
mod verify;

pub use catalog::{Catalog, CheckpointRecord, LogChunk};
pub use head::Head;
pub use restore::{
    restore, restore_with_progress, OnProgress, RestorePoint, RestoreProgress, RestoreReport,
};
pub use retention::Retention;
pub use shipper::{
    BackupOptions, BackupShipper, BackupStatus, ChainSummary, ShipReport, ShippedCheckpoint,
    MAX_CHUNK_BYTES,
};
pub use target::{open, BackupTarget, LocalDir, ObjectTarget, S3Options, Version};
pub use verify::{verify, Problem, Restorable, VerifyReport};
