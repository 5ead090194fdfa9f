//! What a backup chain holds: checkpoint records and log chunks, found by
//! their names (see the module's format).

use super::target::BackupTarget;
use crate::snapshot::SnapshotFile;
use crate::types::LogId;
use serde::{Deserialize, Serialize};
use std::io;

const MAGIC: &[u8; 8] = b"FERRYBCK";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 20;

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
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decodes a record read from `name`; damage is an error naming it.
    pub(crate) fn decode(bytes: &[u8], name: &str) -> io::Result<Self> {
        let bad =
            |what: String| io::Error::new(io::ErrorKind::InvalidData, format!("{name}: {what}"));
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(bad("not a Ferry checkpoint record".into()));
        }
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]));
        let version = word(8);
        if version != VERSION {
            return Err(bad(format!(
                "record version {version}; this build reads {VERSION}"
            )));
        }
        let body = &bytes[HEADER_LEN..];
        if word(12) as usize != body.len() {
            return Err(bad(format!(
                "body of {} bytes where the header says {}",
                body.len(),
                word(12)
            )));
        }
        if crc32fast::hash(body) != word(16) {
            return Err(bad("CRC mismatch".into()));
        }
        postcard::from_bytes(body).map_err(|e| bad(format!("body: {e}")))
    }
}

/// The name under which a checkpoint file's bytes are stored. Content
/// (CRC and size) is part of it, so two different files never share an
/// object even when an engine reuses a table name.
pub(crate) fn object_name(file: &SnapshotFile) -> String {
    format!("objects/{:08x}-{}-{}", file.crc, file.size, file.name)
}

pub(crate) fn checkpoint_name(index: u64) -> String {
    format!("checkpoints/{index:020}.ckpt")
}

pub(crate) fn log_name(first: u64, last: u64) -> String {
    format!("log/{first:020}-{last:020}.log")
}

/// A shipped run of log entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogChunk {
    pub first: u64,
    pub last: u64,
}

impl LogChunk {
    pub fn name(&self) -> String {
        log_name(self.first, self.last)
    }
}

/// The chain as listed by name (records are read on demand).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// Indexes of the shipped checkpoints, ascending.
    pub checkpoints: Vec<u64>,
    /// Shipped log chunks, by first index.
    pub log: Vec<LogChunk>,
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
        let mut checkpoints = Vec::new();
        for name in target.list("checkpoints")? {
            let index = name
                .strip_prefix("checkpoints/")
                .and_then(|n| n.strip_suffix(".ckpt"))
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| unexpected(&name))?;
            checkpoints.push(index);
        }
        checkpoints.sort_unstable();
        let mut log = Vec::new();
        for name in target.list("log")? {
            let chunk = name
                .strip_prefix("log/")
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.split_once('-'))
                .and_then(|(a, b)| {
                    Some(LogChunk {
                        first: a.parse().ok()?,
                        last: b.parse().ok()?,
                    })
                })
                .filter(|c| c.first <= c.last)
                .ok_or_else(|| unexpected(&name))?;
            log.push(chunk);
        }
        log.sort_unstable();
        Ok(Catalog { checkpoints, log })
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
        fs: &dyn ferry_engine::fs::FileSystem,
        target: &dyn BackupTarget,
        index: u64,
        scratch: &std::path::Path,
    ) -> io::Result<CheckpointRecord> {
        let name = checkpoint_name(index);
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
        target.put(&checkpoint_name(12), &file).unwrap();
        target.put(&log_name(13, 20), &file).unwrap();
        target.put(&log_name(21, 21), &file).unwrap();
        let catalog = Catalog::read(&target).unwrap();
        assert_eq!(catalog.checkpoints, vec![12]);
        assert_eq!(
            catalog.log,
            vec![
                LogChunk {
                    first: 13,
                    last: 20
                },
                LogChunk {
                    first: 21,
                    last: 21
                }
            ]
        );
        assert_eq!(catalog.last_index(), Some(21));
        assert!(catalog.log_gaps().is_empty());
        target.put(&log_name(30, 31), &file).unwrap();
        assert_eq!(Catalog::read(&target).unwrap().log_gaps(), vec![(22, 29)]);
        target.put("log/notes.txt", &file).unwrap();
        assert!(Catalog::read(&target).is_err());
    }
}
