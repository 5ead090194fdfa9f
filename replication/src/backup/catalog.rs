//! What a backup chain holds: checkpoint records and log chunks, found by
//! their names (see the module's format).

use super::head::{self, Head};
use super::target::BackupTarget;
use crate::snapshot::SnapshotFile;
use crate::types::LogId;
use ferry_engine::envelope;
use serde::{Deserialize, Serialize};
use std::io;

const KIND: envelope::Kind = envelope::Kind {
    magic: *b"FERRYBCK",
    version: 1,
    unsized_versions: &[],
    what: "checkpoint record",
};

/// One shipped checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// The last log entry the checkpoint's state holds.
    pub applied: Option<LogId>,
    /// The latest proposal time of any command in the state (ms since the
    /// Unix epoch; 0 = none had one).
    pub time_ms: u64,
    /// When the shipper wrote this record (ms since the Unix epoch).
    pub created_ms: u64,
    /// The engine checkpoint's files; each is stored as [`object_name`].
    pub files: Vec<SnapshotFile>,
    /// Bytes this checkpoint added to the chain (files it did not hold yet).
    pub new_bytes: u64,
}

impl CheckpointRecord {
    pub fn index(&self) -> u64 {
        self.applied.map_or(0, |l| l.index)
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    pub(crate) fn encode(&self) -> io::Result<Vec<u8>> {
        let body = postcard::to_stdvec(self).map_err(io::Error::other)?;
        Ok(envelope::seal(&KIND, &body))
    }

    /// Decodes a record read from `name`; damage is an error naming it.
    pub(crate) fn decode(bytes: &[u8], name: &str) -> io::Result<Self> {
        let body = envelope::open(&KIND, bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{name}: {e}")))?
            .body;
        postcard::from_bytes(body)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{name}: body: {e}")))
    }
}

/// The name under which a checkpoint file's bytes are stored. Content
/// (CRC and size) is part of it, so two different files never share an
/// object even when an engine reuses a table name.
pub(crate) fn object_name(file: &SnapshotFile) -> String {
    format!("objects/{:08x}-{}-{}", file.crc, file.size, file.name)
}

/// Term 0 is a file of a chain written before terms were in the names.
pub(crate) fn checkpoint_name(index: u64, term: u64) -> String {
    match term {
        0 => format!("checkpoints/{index:020}.ckpt"),
        _ => format!("checkpoints/{index:020}-{term:020}.ckpt"),
    }
}

pub(crate) fn log_name(first: u64, last: u64, term: u64) -> String {
    match term {
        0 => format!("log/{first:020}-{last:020}.log"),
        _ => format!("log/{first:020}-{last:020}-{term:020}.log"),
    }
}

/// `<a>-<b>` or `<a>-<b>-<term>` (term 0 when absent).
fn numbers(text: &str) -> Option<Vec<u64>> {
    let parts: Vec<u64> = text
        .split('-')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    (!parts.is_empty() && parts.len() <= 3).then_some(parts)
}

/// A shipped run of log entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogChunk {
    pub first: u64,
    pub last: u64,
    /// The term of the leader that shipped it (0: a chain of release 0.1.0).
    pub term: u64,
}

impl LogChunk {
    pub fn name(&self) -> String {
        log_name(self.first, self.last, self.term)
    }
}

/// The chain as listed by name (records are read on demand): only the
/// files its head holds (see [`head`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// Indexes of the shipped checkpoints, ascending.
    pub checkpoints: Vec<u64>,
    /// Shipped log chunks, by first index.
    pub log: Vec<LogChunk>,
    /// The head (none: a chain of release 0.1.0, or an empty one).
    pub head: Option<Head>,
    /// Names in the chain's folders that the head does not hold: files a
    /// fenced leader wrote, or a round that failed before committing.
    /// Each with the term its name carries.
    pub orphans: Vec<(String, u64)>,
    /// The term of each checkpoint's name, by index.
    terms: std::collections::BTreeMap<u64, u64>,
    /// Records the chain holds at an index where a later term's record is
    /// used instead (two leaders shipped the same state): by index.
    pub shadowed: Vec<(u64, String)>,
}

impl Catalog {
    /// Lists `target`. Names that do not parse are reported, not skipped:
    /// a chain with foreign files in its folders is not one we wrote.
    pub fn read(target: &dyn BackupTarget) -> io::Result<Catalog> {
        let unexpected = |name: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: unexpected file {name} in a backup chain",
                    target.describe()
                ),
            )
        };
        let head = head::read(target)?.map(|(h, _)| h);
        let held = |term: u64, last: u64| head.as_ref().is_none_or(|h| h.holds(term, last));
        let mut catalog = Catalog {
            head: head.clone(),
            ..Catalog::default()
        };
        for name in target.list("checkpoints")? {
            let (index, term) = name
                .strip_prefix("checkpoints/")
                .and_then(|n| n.strip_suffix(".ckpt"))
                .and_then(numbers)
                .and_then(|n| match n[..] {
                    [index] => Some((index, 0)),
                    [index, term] if term > 0 => Some((index, term)),
                    _ => None,
                })
                .ok_or_else(|| unexpected(&name))?;
            if !held(term, index) {
                catalog.orphans.push((name, term));
                continue;
            }
            // Two leaders may both have shipped a checkpoint of one index
            // (the same state); one is enough: the later term's.
            let kept = catalog.terms.entry(index).or_insert(term);
            if *kept != term {
                let older = (*kept).min(term);
                *kept = (*kept).max(term);
                catalog
                    .shadowed
                    .push((index, checkpoint_name(index, older)));
            }
        }
        catalog.checkpoints = catalog.terms.keys().copied().collect();
        for name in target.list("log")? {
            let chunk = name
                .strip_prefix("log/")
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(numbers)
                .and_then(|n| match n[..] {
                    [first, last] => Some(LogChunk {
                        first,
                        last,
                        term: 0,
                    }),
                    [first, last, term] if term > 0 => Some(LogChunk { first, last, term }),
                    _ => None,
                })
                .filter(|c| c.first <= c.last)
                .ok_or_else(|| unexpected(&name))?;
            if !held(chunk.term, chunk.last) {
                catalog.orphans.push((name, chunk.term));
                continue;
            }
            catalog.log.push(chunk);
        }
        catalog.log.sort_unstable();
        Ok(catalog)
    }

    /// The name of the checkpoint record at `index` (which the chain holds).
    pub fn checkpoint_name(&self, index: u64) -> String {
        checkpoint_name(index, self.terms.get(&index).copied().unwrap_or(0))
    }

    /// Stretches of log (inclusive) missing between the first shipped chunk
    /// and the last: a restore cannot cross them.
    pub fn log_gaps(&self) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut covered: Option<u64> = None;
        for chunk in &self.log {
            if let Some(end) = covered {
                if chunk.first > end + 1 {
                    gaps.push((end + 1, chunk.first - 1));
                }
            }
            covered = Some(covered.map_or(chunk.last, |end| end.max(chunk.last)));
        }
        gaps
    }

    /// The highest log index the chain holds (by checkpoint or log).
    pub fn last_index(&self) -> Option<u64> {
        let checkpoint = self.checkpoints.last().copied();
        let log = self.log.iter().map(|c| c.last).max();
        checkpoint.max(log)
    }

    /// Reads and checks the record of the checkpoint at `index`.
    /// `scratch` is a local file on `fs` it is fetched into.
    pub fn checkpoint(
        &self,
        fs: &dyn ferry_engine::fs::FileSystem,
        target: &dyn BackupTarget,
        index: u64,
        scratch: &std::path::Path,
    ) -> io::Result<CheckpointRecord> {
        let name = self.checkpoint_name(index);
        target.get(&name, scratch)?;
        let bytes = fs.read_all(scratch)?;
        let _ = fs.remove_file(scratch);
        let record = CheckpointRecord::decode(&bytes, &name)?;
        if record.index() != index {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{name}: record of index {} under the name of {index}",
                    record.index()
                ),
            ));
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_damage_is_named() {
        let record = CheckpointRecord {
            applied: None,
            time_ms: 7,
            created_ms: 9,
            files: vec![SnapshotFile {
                name: "000001.sst".into(),
                size: 10,
                crc: 3,
            }],
            new_bytes: 10,
        };
        let bytes = record.encode().unwrap();
        assert_eq!(CheckpointRecord::decode(&bytes, "c").unwrap(), record);
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            let error = CheckpointRecord::decode(&damaged, "checkpoints/x.ckpt").unwrap_err();
            assert!(
                error.to_string().starts_with("checkpoints/x.ckpt: "),
                "{error}"
            );
        }
        assert!(CheckpointRecord::decode(&bytes[..bytes.len() - 1], "c").is_err());
    }

    #[test]
    fn names_parse_back() {
        let dir = tempfile::tempdir().unwrap();
        let target = super::super::LocalDir::new(dir.path()).unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        target.put(&checkpoint_name(12, 0), &file).unwrap();
        target.put(&log_name(13, 20, 0), &file).unwrap();
        target.put(&log_name(21, 21, 2), &file).unwrap();
        let catalog = Catalog::read(&target).unwrap();
        assert_eq!(catalog.checkpoints, vec![12]);
        assert_eq!(
            catalog.log,
            vec![
                LogChunk {
                    first: 13,
                    last: 20,
                    term: 0
                },
                LogChunk {
                    first: 21,
                    last: 21,
                    term: 2
                }
            ]
        );
        assert_eq!(catalog.last_index(), Some(21));
        assert!(catalog.log_gaps().is_empty());
        target.put(&log_name(30, 31, 2), &file).unwrap();
        assert_eq!(Catalog::read(&target).unwrap().log_gaps(), vec![(22, 29)]);
        // With a head, files past what it holds are orphans, not the chain.
        head::claim(&target, 2, 1, || Ok(21)).unwrap();
        let catalog = Catalog::read(&target).unwrap();
        assert_eq!(catalog.last_index(), Some(21));
        assert_eq!(catalog.orphans, vec![(log_name(30, 31, 2), 2)]);
        head::commit(&target, 2, 31).unwrap();
        assert!(Catalog::read(&target).unwrap().orphans.is_empty());
        target.put("log/notes.txt", &file).unwrap();
        assert!(Catalog::read(&target).is_err());
    }
}
