//! Retention: which checkpoints of a backup chain to keep, and pruning
//! the rest.
//!
//! A chain is a run of checkpoints, each followed by the log up to the
//! next; a kept checkpoint needs every log entry after it and every object
//! it names. So pruning is "everything the oldest kept checkpoint does not
//! need": older checkpoint records, log chunks that end at or before it,
//! and objects no kept checkpoint names. Files go in that order (records
//! first), so at every moment each listed checkpoint is complete and the
//! chain restores.
//!
//! Only the leader that holds the chain's head prunes, right after it
//! committed a round (see `head`), and it re-reads the chain first. It
//! lists the objects before it reads the chain, so an object uploaded
//! meanwhile is never swept, and it checks the head again before the
//! sweep: a leader that claimed the chain since stops it.

use super::catalog::{object_name, Catalog};
use super::target::BackupTarget;
use ferry_engine::fs::FileSystem;
use std::collections::BTreeSet;
use std::io;
use std::path::Path;
use std::time::Duration;

/// Which checkpoints to keep. With both set, a checkpoint either keeps is
/// kept; with neither, nothing is pruned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep the newest N checkpoints (each with the log after it); N ≥ 1.
    pub keep_chains: Option<usize>,
    /// Keep what restores any point of the last `keep_for`: the newest
    /// checkpoint shipped before then, and everything after it.
    pub keep_for: Option<Duration>,
}

impl Retention {
    pub fn is_none(&self) -> bool {
        self.keep_chains.is_none() && self.keep_for.is_none()
    }

    /// The oldest checkpoint to keep, of `checkpoints` (index and time it
    /// was shipped, ascending by index) at `now_ms`.
    pub fn oldest_kept(&self, checkpoints: &[(u64, u64)], now_ms: u64) -> Option<u64> {
        let first = checkpoints.first()?.0;
        let by_count = self.keep_chains.map(|n| {
            let n = n.max(1);
            checkpoints[checkpoints.len().saturating_sub(n)].0
        });
        let by_age = self.keep_for.map(|age| {
            let cutoff = now_ms.saturating_sub(age.as_millis() as u64);
            checkpoints
                .iter()
                .rev()
                .find(|(_, shipped)| *shipped <= cutoff)
                .map_or(first, |(index, _)| *index)
        });
        match (by_count, by_age) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b).or(Some(first)),
        }
    }

    /// Prunes what the policy does not keep from `target`, which `term`
    /// holds; returns the number of files removed. `scratch` is a local
    /// file on `fs` records are fetched into.
    pub fn prune(
        &self,
        fs: &dyn FileSystem,
        target: &dyn BackupTarget,
        term: u64,
        scratch: &Path,
        now_ms: u64,
    ) -> io::Result<u64> {
        // Listed before anything else: an object uploaded after this (by a
        // leader that claimed the chain meanwhile, for a record not yet
        // written) is never taken for one nothing needs.
        let objects = target.list("objects")?;
        let catalog = Catalog::read(target)?;
        if let Some(head) = &catalog.head {
            if head.term() != term {
                return Err(super::head::fenced(term, head));
            }
        }
        // A record that cannot be read (damaged, or the read failed) names
        // objects nobody knows: while it is kept, no object goes.
        let (mut records, mut unreadable) = (Vec::new(), Vec::new());
        for &index in &catalog.checkpoints {
            match catalog.checkpoint(fs, target, index, scratch) {
                Ok(record) => records.push((index, record)),
                Err(error) => {
                    tracing::warn!(%error, index, "a checkpoint record could not be read: the objects stay");
                    unreadable.push(index);
                }
            }
        }
        let times: Vec<(u64, u64)> = records.iter().map(|(i, r)| (*i, r.created_ms)).collect();
        let Some(oldest) = self.oldest_kept(&times, now_ms) else {
            return Ok(0);
        };
        let objects_known = unreadable.iter().all(|&index| index < oldest);
        let needed: BTreeSet<String> = records
            .iter()
            .filter(|(index, _)| *index >= oldest)
            .flat_map(|(_, record)| record.files.iter().map(object_name))
            .collect();
        let mut removed = 0;
        let mut remove = |name: &str| -> io::Result<()> {
            target.delete(name)?;
            removed += 1;
            Ok(())
        };
        // A record another one shadows names objects no kept record may
        // need: it goes too, or it would show once the other went.
        for (_, name) in &catalog.shadowed {
            remove(name)?;
        }
        let old_records = records.iter().map(|(index, _)| *index).chain(unreadable);
        for index in old_records.filter(|index| *index < oldest) {
            remove(&catalog.checkpoint_name(index))?;
        }
        for chunk in catalog.log.iter().filter(|c| c.last <= oldest) {
            remove(&chunk.name())?;
        }
        // Checked again before the objects go: a leader that claimed the
        // chain since may be shipping a checkpoint that names some.
        if let Some((head, _)) = super::head::read(target)? {
            if head.term() != term {
                return Err(super::head::fenced(term, &head));
            }
        }
        for name in objects.into_iter().filter(|_| objects_known) {
            if !needed.contains(&name) {
                remove(&name)?;
            }
        }
        // Files older leaders wrote after they were fenced, or a failed
        // round left; this term's own stay (a later commit may hold them,
        // and they hold what this term ships anyway).
        for (name, _) in catalog.orphans.iter().filter(|(_, t)| *t < term) {
            remove(name)?;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_kept_checkpoint_by_count_age_and_both() {
        let at = [(10, 1_000), (20, 2_000), (30, 3_000), (40, 4_000)];
        let count = |n| Retention {
            keep_chains: Some(n),
            keep_for: None,
        };
        let age = |ms| Retention {
            keep_chains: None,
            keep_for: Some(Duration::from_millis(ms)),
        };
        assert_eq!(Retention::default().oldest_kept(&at, 9_000), Some(10));
        assert_eq!(count(1).oldest_kept(&at, 0), Some(40));
        assert_eq!(count(2).oldest_kept(&at, 0), Some(30));
        assert_eq!(count(9).oldest_kept(&at, 0), Some(10));
        assert_eq!(count(0).oldest_kept(&at, 0), Some(40));
        // Now 5 000, keep 2 500 ms: the cutoff is 2 500; checkpoint 20
        // (shipped at 2 000) is the newest before it, so it stays.
        assert_eq!(age(2_500).oldest_kept(&at, 5_000), Some(20));
        assert_eq!(age(60_000).oldest_kept(&at, 5_000), Some(10));
        assert_eq!(age(0).oldest_kept(&at, 5_000), Some(40));
        let both = Retention {
            keep_chains: Some(1),
            keep_for: Some(Duration::from_millis(2_500)),
        };
        assert_eq!(both.oldest_kept(&at, 5_000), Some(20));
        assert_eq!(count(1).oldest_kept(&[], 0), None);
    }
}
