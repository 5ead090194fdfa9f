//! The chain's head: which leader may extend the chain, and how far it
//! is committed. It is what fences a deposed leader.
//!
//! Every shipped name carries the term of the leader that wrote it. The
//! head lists, per term that shipped, the first index that term's leader
//! shipped (its *segment*), and the highest index committed to the chain.
//! A file of term `t` belongs to the chain only if `t` has a segment and
//! the file ends before the next term's segment starts (or, for the newest
//! term, at or before the committed index). A leader:
//! 1. claims the chain at the start of every round: it appends a segment
//!    for its term, by compare-and-swap of the head, unless a higher term
//!    holds it (then it is fenced and writes nothing);
//! 2. writes its files (create-only);
//! 3. commits: moves the head's index forward, again by compare-and-swap,
//!    which fails if a higher term claimed meanwhile.
//!
//! So an old leader, still running behind a partition, can write files
//! after the new one claimed, but none of them belongs to the chain: they
//! end after the new segment starts, and its commit fails. Readers ignore
//! them and retention removes them. Files written before the claim are
//! committed entries the new leader's log holds too (Raft's log matching).
//!
//! ## Format (version 1)
//!
//! `head` = envelope "FERRYHED", version 1, body = postcard(Head).

use super::target::{BackupTarget, Version};
use crate::types::now_ms;
use ferry_engine::envelope;
use serde::{Deserialize, Serialize};
use std::io;

pub(crate) const NAME: &str = "head";
const KIND: envelope::Kind = envelope::Kind {
    magic: *b"FERRYHED",
    version: 1,
    unsized_versions: &[],
    what: "backup chain head",
};
/// Swaps retried when another writer changed the head between read and swap.
const SWAP_ATTEMPTS: usize = 20;

/// The head record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Terms that shipped, ascending, each with where its files start.
    pub segments: Vec<Segment>,
    /// The highest log index committed to the chain.
    pub shipped: u64,
    /// When the head last changed (ms since the Unix epoch).
    pub updated_ms: u64,
}

/// The part of the chain one leader's term shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub term: u64,
    /// The node that led in that term.
    pub node: u64,
    /// The first index it shipped: files of earlier terms end before it.
    pub start: u64,
}

impl Head {
    /// Whether a file of `term` whose last index is `last` belongs to the chain.
    pub fn holds(&self, term: u64, last: u64) -> bool {
        let Some(at) = self.segments.iter().position(|s| s.term == term) else {
            return false;
        };
        match self.segments.get(at + 1) {
            Some(next) => last < next.start,
            None => last <= self.shipped,
        }
    }

    /// The term that may extend the chain now.
    pub fn term(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.term)
    }

    pub(crate) fn encode(&self) -> io::Result<Vec<u8>> {
        let body = postcard::to_stdvec(self).map_err(io::Error::other)?;
        Ok(envelope::seal(&KIND, &body))
    }

    pub(crate) fn decode(bytes: &[u8]) -> io::Result<Head> {
        let body = envelope::open(&KIND, bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{NAME}: {e}")))?
            .body;
        let head: Head = postcard::from_bytes(body).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{NAME}: body: {e}"))
        })?;
        let ascending = head
            .segments
            .windows(2)
            .all(|w| w[0].term < w[1].term && w[0].start <= w[1].start);
        if !ascending {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{NAME}: segments out of order"),
            ));
        }
        Ok(head)
    }
}

/// The error of a leader that a higher term fenced off the chain.
pub fn fenced(mine: u64, head: &Head) -> io::Error {
    let holder = head.segments.last().copied();
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "fenced: the backup chain belongs to term {} (node {}); this leader's term {mine} \
             may not extend it",
            head.term(),
            holder.map_or(0, |s| s.node)
        ),
    )
}

/// Reads the head, if the chain has one (a chain of release 0.1.0 has none).
pub fn read(target: &dyn BackupTarget) -> io::Result<Option<(Head, Version)>> {
    target
        .read_versioned(NAME)?
        .map(|(bytes, version)| Ok((Head::decode(&bytes)?, version)))
        .transpose()
}

/// Claims the chain for `term` (led by `node`). `legacy_last` gives the
/// last index of a chain without a head (its files, all of term 0, stay
/// in it). Returns the head after the claim.
pub fn claim(
    target: &dyn BackupTarget,
    term: u64,
    node: u64,
    legacy_last: impl Fn() -> io::Result<u64>,
) -> io::Result<Head> {
    update(target, |stored| {
        let mut head = match stored {
            Some(head) => head.clone(),
            None => {
                let last = legacy_last()?;
                Head {
                    segments: (last > 0)
                        .then_some(Segment {
                            term: 0,
                            node: 0,
                            start: 0,
                        })
                        .into_iter()
                        .collect(),
                    shipped: last,
                    updated_ms: 0,
                }
            }
        };
        if head.term() > term {
            return Err(fenced(term, &head));
        }
        if head.term() == term && !head.segments.is_empty() {
            return Ok(None);
        }
        head.segments.push(Segment {
            term,
            node,
            start: head.shipped + 1,
        });
        Ok(Some(head))
    })
}

/// Commits the chain up to `shipped` for `term`, which must still hold it.
pub fn commit(target: &dyn BackupTarget, term: u64, shipped: u64) -> io::Result<Head> {
    update(target, |stored| {
        let Some(head) = stored else {
            return Err(io::Error::other("the backup chain lost its head"));
        };
        if head.term() != term {
            return Err(fenced(term, head));
        }
        if shipped <= head.shipped {
            return Ok(None);
        }
        Ok(Some(Head {
            shipped,
            ..head.clone()
        }))
    })
}

/// Read, change, compare-and-swap; `change` returns `None` for "no change".
fn update(
    target: &dyn BackupTarget,
    change: impl Fn(Option<&Head>) -> io::Result<Option<Head>>,
) -> io::Result<Head> {
    for _ in 0..SWAP_ATTEMPTS {
        let stored = read(target)?;
        let Some(mut head) = change(stored.as_ref().map(|(h, _)| h))? else {
            return Ok(stored.expect("no change needs a stored head").0);
        };
        head.updated_ms = now_ms();
        match target.swap(NAME, &head.encode()?, stored.as_ref().map(|(_, v)| v)) {
            Ok(()) => return Ok(head),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "{}: the chain's head kept changing under {SWAP_ATTEMPTS} attempts to update it",
        target.describe()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::LocalDir;

    #[test]
    fn a_higher_term_fences_a_lower_one() {
        let dir = tempfile::tempdir().unwrap();
        let target = LocalDir::new(dir.path()).unwrap();
        let head = claim(&target, 5, 1, || Ok(0)).unwrap();
        assert_eq!(
            head.segments,
            vec![Segment {
                term: 5,
                node: 1,
                start: 1
            }]
        );
        commit(&target, 5, 100).unwrap();
        assert!(claim(&target, 5, 1, || unreachable!()).is_ok());
        let head = claim(&target, 7, 2, || unreachable!()).unwrap();
        assert_eq!(
            head.segments[1],
            Segment {
                term: 7,
                node: 2,
                start: 101
            }
        );
        let error = commit(&target, 5, 150).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::PermissionDenied, "{error}");
        assert!(claim(&target, 6, 3, || unreachable!()).is_err());
        let head = commit(&target, 7, 120).unwrap();
        assert!(head.holds(5, 100) && !head.holds(5, 101) && !head.holds(6, 10));
        assert!(head.holds(7, 120) && !head.holds(7, 121));
    }

    #[test]
    fn a_chain_without_a_head_keeps_its_files_as_term_zero() {
        let dir = tempfile::tempdir().unwrap();
        let target = LocalDir::new(dir.path()).unwrap();
        let head = claim(&target, 3, 1, || Ok(75)).unwrap();
        assert!(head.holds(0, 75) && !head.holds(0, 76));
        assert_eq!(head.segments[1].start, 76);
        let damaged = {
            let mut bytes = head.encode().unwrap();
            let at = bytes.len() - 1;
            bytes[at] ^= 1;
            bytes
        };
        assert!(Head::decode(&damaged).is_err());
    }
}
