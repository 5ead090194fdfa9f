//! The replicated state and its history as Parquet, for people and tools:
//! user keys and values with their revisions, and one row per change. No
//! internal row (applied marker, exactly-once table, history indexes)
//! appears; what a restore needs goes in each file's metadata.
//!
//! Exports are written into a [`PartSink`](ferry_engine::columnar::PartSink):
//! the server's streams them to a client, which writes them into a local
//! directory, so a server never writes at a path a client chose. A state
//! export rebuilds a new single-node cluster ([`restore::from_state_export`]).
//!
//! ## Format (version 1)
//!
//! ```text
//! <dir>/part-NNNNNN.parquet   rows in order (state: by key; history: by revision)
//! <dir>/EXPORT                the engine's export manifest (see ferry_engine::columnar);
//!                             its "sequence" is the export's revision
//!
//! state schema:    key binary | value binary | create_revision uint64 | mod_revision uint64
//!                  | version uint64 | lease uint64                     (all required)
//! history schema:  revision uint64 | time timestamp[ms, UTC] | key binary | op utf8 ("put",
//!                  "delete") | value binary (null for a delete) | prev_revision uint64
//!
//! file key-value metadata (every part):
//!   ferry.export            "state" or "history"
//!   ferry.format_version    "1"
//!   ferry.rows, ferry.content_checksum      this part's rows and checksum
//!   state:   ferry.revision        the revision the state is of
//!            ferry.applied         JSON: the Raft log id applied at that revision
//!            ferry.membership      JSON: the membership at that revision
//!            ferry.time_ms         the latest proposal time in the state
//!            ferry.leases          JSON [[id, ttl_ms], …]: the leases the state holds
//!                                  (absent from exports of earlier releases)
//!            ferry.draining        JSON [id, …]: revoked leases whose keys are still
//!                                  being deleted (absent from exports of earlier
//!                                  releases, and when there are none)
//!   history: ferry.from_revision, ferry.to_revision   the revisions it covers
//! ```
//!
//! The content checksum of a state export is the engine's content
//! checksum over, per row, the key and `create_revision | mod_revision |
//! version | lease` (u64 LE each) then the value: what
//! [`crate::Node::user_checksum`] computes for a live replica, so an
//! export and a restore are checked end to end.
//! Of a history export, over the change log's own rows.

pub mod history;
pub mod restore;
pub mod state;

use ferry_engine::columnar::{
    ExportManifest, ExportOptions, ParquetCompression, PartSink, EXPORT_FILE,
};
use std::io::{self, Write};

pub(crate) const META_EXPORT: &str = "ferry.export";
pub(crate) const META_VERSION: &str = "ferry.format_version";
pub(crate) const META_REVISION: &str = "ferry.revision";
pub(crate) const META_APPLIED: &str = "ferry.applied";
pub(crate) const META_MEMBERSHIP: &str = "ferry.membership";
pub(crate) const META_TIME: &str = "ferry.time_ms";
pub(crate) const META_LEASES: &str = "ferry.leases";
pub(crate) const META_DRAINING: &str = "ferry.draining";
pub(crate) const META_FROM: &str = "ferry.from_revision";
pub(crate) const META_TO: &str = "ferry.to_revision";
pub(crate) const FORMAT_VERSION: &str = "1";

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportReport {
    /// Parts, rows, checksum; also written as the `EXPORT` file.
    pub manifest: ExportManifest,
    /// Bytes of Parquet written.
    pub bytes: u64,
}

/// Layout of an export sent over the network: smaller row groups than the
/// engine's default, so the server buffers less per export.
pub fn streaming_options() -> ExportOptions {
    ExportOptions {
        batch_bytes: 2 << 20,
        row_group_bytes: 16 << 20,
        file_bytes: 256 << 20,
        compression: ParquetCompression::Zstd(3),
    }
}

/// Writes the `EXPORT` file into `sink`, after the parts it lists.
pub(crate) fn write_manifest<S: PartSink>(
    sink: &mut S,
    manifest: &ExportManifest,
) -> io::Result<()> {
    let mut file = sink.create(EXPORT_FILE)?;
    file.write_all(manifest.encode().as_bytes())?;
    sink.finish(EXPORT_FILE, file)?;
    Ok(())
}

fn export_error(error: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("export: {error}"))
}
