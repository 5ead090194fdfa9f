//! The write-ahead log: segmented files of CRC32-framed records.
//!
//! The same framing serves three logs: the engine's WAL (payload = a write
//! batch), the manifest (payload = a version edit) and, later, the Raft log
//! store of `ferry-replication`. Each log is a sequence of *segments*; a
//! segment is written once, front to back, and never modified afterwards
//! except that recovery may cut a torn tail off the last one.
//!
//! ## Format (version 1)
//!
//! ```text
//! segment = header record*
//! header  = magic "FERRYLOG" (8 bytes) | version: u32 LE | log kind: u32 LE     (16 bytes)
//! record  = crc: u32 LE | length: u32 LE | sequence: u64 LE | payload[length]  (16 + length bytes)
//! crc     = CRC32 (crc32fast, IEEE) over length ‖ sequence ‖ payload
//! ```
//!
//! A segment of the engine's WAL reserves disk space ahead of its records
//! (see `fs::mapped`): until it is finished, its file runs on past the last
//! record in zero bytes. An all-zero record header cannot be a record (its
//! CRC would not match), so where one starts and only zeros follow, the
//! records end. Finished segments are cut back to their last record.
//!
//! The sequence is the log's own ordering number: the first write sequence
//! of a batch in the WAL, an edit number in the manifest, a log index in the
//! Raft log. Readers check that it never goes backwards.
//!
//! Recovery rules (see [`reader`]): a record that is cut short, fails its
//! CRC with nothing after it, or is followed only by zero bytes, at the end
//! of the *last* segment, is a torn write: it is truncated and reported.
//! Zero bytes alone after the last good record of the last segment are its
//! unused reserved space: cut off, not reported as damage. Any other damage
//! (a zero tail in an earlier segment included) is corruption, reported
//! with file and offset.

pub mod reader;
pub mod record;
pub mod writer;

pub use reader::{read_segment, SegmentOutcome, TailPolicy};
pub use record::{
    decode_record_at, encode_record, segment_header, LogKind, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
pub use writer::LogWriter;

use std::path::{Path, PathBuf};

/// File name of WAL segment `number` inside `dir`.
pub(crate) fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:06}.log"))
}
