//! Verification of a backup chain without restoring it: every object's
//! size and checksum, every log chunk's framing and indexes, each
//! checkpoint's files (a delta's base included), and the log's continuity.
//! Files are streamed to a scratch file one at a time, so memory stays
//! bounded whatever the chain's size.

use super::catalog::{object_name, Catalog, CheckpointRecord, LogChunk};
use super::target::BackupTarget;
use crate::types::Entry;
use ferry_engine::fs::FileSystem;
use ferry_engine::wal::{read_segment, LogKind, TailPolicy};
use openraft::entry::RaftEntry;
use openraft::EntryPayload;
use std::collections::BTreeMap;
use std::io;
use std::path::Path;

/// One thing wrong with a chain, named by the file it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub name: String,
    pub what: String,
}

/// What a restore could reach: from the oldest intact checkpoint to the
/// last entry the newest intact checkpoint's log reaches without a gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restorable {
    pub first_index: u64,
    /// The newest write in the state at `first_index` (ms since the epoch).
    pub first_time_ms: u64,
    pub last_index: u64,
    pub last_time_ms: u64,
}

/// The result of [`verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub problems: Vec<Problem>,
    pub checkpoints: u64,
    pub objects: u64,
    pub log_chunks: u64,
    /// Files outside the chain (a fenced leader's, a failed round's).
    pub orphans: u64,
    pub bytes_read: u64,
    pub restorable: Option<Restorable>,
}

/// Verifies the chain in `target`, fetching into `scratch` (a local file
/// on `fs`). An unreadable listing is an error; damage is a [`Problem`].
///
/// A live chain can be pruned while it is read: a file listed at the
/// start may be gone when its turn comes. So a report with problems is
/// taken again from a fresh listing if the chain's start moved meanwhile
/// (at most three times); a damaged chain that nothing prunes gives the
/// same report.
pub fn verify(
    fs: &dyn FileSystem,
    target: &dyn BackupTarget,
    scratch: &Path,
) -> io::Result<VerifyReport> {
    let start = |catalog: &Catalog| {
        (
            catalog.checkpoints.first().copied(),
            catalog.log.first().copied(),
        )
    };
    let mut catalog = Catalog::read(target)?;
    let mut attempts = 0;
    loop {
        let listed_start = start(&catalog);
        let report = verify_listed(fs, target, scratch, catalog)?;
        attempts += 1;
        if report.problems.is_empty() || attempts == 3 {
            return Ok(report);
        }
        // The listing that shows whether the start moved is the next
        // attempt's.
        catalog = Catalog::read(target)?;
        if start(&catalog) == listed_start {
            return Ok(report);
        }
    }
}

/// [`verify`] against the listing `catalog`.
fn verify_listed(
    fs: &dyn FileSystem,
    target: &dyn BackupTarget,
    scratch: &Path,
    catalog: Catalog,
) -> io::Result<VerifyReport> {
    let mut report = VerifyReport {
        orphans: catalog.orphans.len() as u64,
        ..VerifyReport::default()
    };
    let problem = |report: &mut VerifyReport, name: &str, what: String| {
        report.problems.push(Problem {
            name: name.to_string(),
            what,
        })
    };
    // Objects are shared between checkpoints: check each once.
    let mut objects: BTreeMap<String, bool> = BTreeMap::new();
    let mut intact: Vec<CheckpointRecord> = Vec::new();
    for &index in &catalog.checkpoints {
        report.checkpoints += 1;
        let record = match catalog.checkpoint(fs, target, index, scratch) {
            Ok(record) => record,
            Err(error) => {
                problem(
                    &mut report,
                    &catalog.checkpoint_name(index),
                    error.to_string(),
                );
                continue;
            }
        };
        let mut whole = true;
        for file in &record.files {
            let name = object_name(file);
            if let Some(&good) = objects.get(&name) {
                whole &= good;
                continue;
            }
            report.objects += 1;
            let good = match target.get(&name, scratch) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    problem(
                        &mut report,
                        &name,
                        format!("missing (checkpoint {index} needs it)"),
                    );
                    false
                }
                Err(e) => {
                    problem(&mut report, &name, e.to_string());
                    false
                }
                Ok(size) => {
                    report.bytes_read += size;
                    let crc = fs.file_crc(scratch)?;
                    let good = size == file.size && crc == file.crc;
                    if !good {
                        problem(
                            &mut report,
                            &name,
                            format!(
                                "holds {size} bytes with CRC {crc:08x}, expected {} bytes with CRC {:08x}",
                                file.size, file.crc
                            ),
                        );
                    }
                    good
                }
            };
            objects.insert(name, good);
            whole &= good;
        }
        if whole {
            intact.push(record);
        }
    }
    // Per good chunk: its range and the newest command time in it.
    let mut chunks: Vec<(LogChunk, u64)> = Vec::new();
    for chunk in &catalog.log {
        report.log_chunks += 1;
        let name = chunk.name();
        match check_chunk(fs, target, chunk, scratch) {
            Ok((bytes, time)) => {
                report.bytes_read += bytes;
                chunks.push((*chunk, time));
            }
            Err(error) => problem(&mut report, &name, error.to_string()),
        }
    }
    let _ = fs.remove_file(scratch);
    if catalog.checkpoints.is_empty() {
        problem(
            &mut report,
            "checkpoints/",
            "the chain holds no checkpoint".into(),
        );
    }
    // Continuity from the oldest intact checkpoint on: every gap between
    // good chunks is a stretch no restore can cross.
    if let (Some(oldest), Some(newest)) = (intact.first(), intact.last()) {
        let mut covered = oldest.index();
        for (chunk, _) in &chunks {
            if chunk.last <= covered {
                continue;
            }
            if chunk.first > covered + 1 {
                let resumes = intact.iter().find(|r| r.index() + 1 >= chunk.first);
                problem(
                    &mut report,
                    "log/",
                    format!(
                        "log entries {}..={} are missing: no restore crosses them{}",
                        covered + 1,
                        chunk.first - 1,
                        match resumes {
                            Some(r) => format!(" (the chain resumes at checkpoint {})", r.index()),
                            None => String::new(),
                        }
                    ),
                );
            }
            covered = covered.max(chunk.last);
        }
        let (mut last, mut last_time) = (newest.index(), newest.time_ms);
        for (chunk, time) in &chunks {
            if chunk.last <= last {
                continue;
            }
            if chunk.first > last + 1 {
                break;
            }
            last = chunk.last;
            last_time = last_time.max(*time);
        }
        // Lost newest chunks leave no gap before a later one; the head
        // says how far the chain is committed.
        let committed = catalog.head.as_ref().map_or(0, |head| head.shipped);
        if last < committed {
            problem(
                &mut report,
                "log/",
                format!(
                    "log entries {}..={committed} are missing or damaged: the chain is committed                      to {committed}, restores reach {last}",
                    last + 1
                ),
            );
        }
        report.restorable = Some(Restorable {
            first_index: oldest.index(),
            first_time_ms: oldest.time_ms,
            last_index: last,
            last_time_ms: last_time,
        });
    }
    Ok(report)
}

/// Reads one chunk whole: framing CRCs, indexes `first..=last` in order,
/// entries that decode. Returns its size and its newest command time.
fn check_chunk(
    fs: &dyn FileSystem,
    target: &dyn BackupTarget,
    chunk: &LogChunk,
    scratch: &Path,
) -> io::Result<(u64, u64)> {
    let bytes = target.get(&chunk.name(), scratch)?;
    let mut next = chunk.first;
    let mut time = 0;
    read_segment(
        fs,
        scratch,
        LogKind::Raft,
        TailPolicy::Strict,
        |index, payload| {
            let bad = |reason: String| ferry_engine::Error::Corruption {
                path: scratch.to_path_buf(),
                offset: 0,
                reason,
            };
            if index != next {
                return Err(bad(format!("entry {index} where {next} was expected")));
            }
            let entry: Entry =
                postcard::from_bytes(payload).map_err(|e| bad(format!("entry {index}: {e}")))?;
            if entry.log_id().index != index {
                return Err(bad(format!(
                    "entry {index} holds entry {}",
                    entry.log_id().index
                )));
            }
            if let EntryPayload::Normal(command) = &entry.payload {
                time = time.max(command.time_ms());
            }
            next += 1;
            Ok(())
        },
    )
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    if next != chunk.last + 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "ends at entry {} where its name says {}",
                next - 1,
                chunk.last
            ),
        ));
    }
    Ok((bytes, time))
}
