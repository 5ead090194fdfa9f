//! Which versions of a key survive a flush or compaction.
//!
//! Live snapshots cut the sequence space into *stripes*: stripe `i` holds
//! sequences above snapshot `i-1` and at most snapshot `i`; the last stripe
//! holds what only the present sees. A reader sees the newest version within
//! its stripe or below, so per user key only the newest version of each
//! stripe can ever be read: older ones in the same stripe are dropped.
//!
//! A tombstone is dropped only when it is in stripe 0 (every reader sees
//! it) and no deeper level may hold an older version of its key, which
//! could otherwise reappear.

use crate::key::{self, SeqNo, ValueKind};

pub(crate) struct Retention {
    snapshots: Vec<SeqNo>,
    last_user_key: Vec<u8>,
    last_stripe: Option<usize>,
}

impl Retention {
    /// `snapshots` are the sequences of live snapshots, in any order.
    pub(crate) fn new(mut snapshots: Vec<SeqNo>) -> Self {
        snapshots.sort_unstable();
        snapshots.dedup();
        Retention {
            snapshots,
            last_user_key: Vec::new(),
            last_stripe: None,
        }
    }

    fn stripe(&self, sequence: SeqNo) -> usize {
        self.snapshots.partition_point(|&s| s < sequence)
    }

    /// Decides for the next entry, in internal-key order. `is_bottom` says
    /// whether no deeper level can hold the user key.
    pub(crate) fn keep(
        &mut self,
        internal_key: &[u8],
        is_bottom: impl FnOnce(&[u8]) -> bool,
    ) -> bool {
        let user_key = key::user_key(internal_key);
        let stripe = self.stripe(key::sequence(internal_key));
        let same_key = self.last_stripe.is_some() && self.last_user_key == user_key;
        if same_key && self.last_stripe == Some(stripe) {
            return false;
        }
        debug_assert!(!same_key || self.last_stripe.is_some_and(|last| stripe < last));
        if !same_key {
            self.last_user_key.clear();
            self.last_user_key.extend_from_slice(user_key);
        }
        self.last_stripe = Some(stripe);
        !(key::kind(internal_key) == Some(ValueKind::Delete) && stripe == 0 && is_bottom(user_key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(snapshots: Vec<SeqNo>, entries: &[(u64, ValueKind)], bottom: bool) -> Vec<u64> {
        let mut retention = Retention::new(snapshots);
        entries
            .iter()
            .filter(|(seq, kind)| retention.keep(&key::encode(b"k", *seq, *kind), |_| bottom))
            .map(|(seq, _)| *seq)
            .collect()
    }

    #[test]
    fn keeps_newest_per_stripe() {
        use ValueKind::*;
        let entries = [(9, Put), (7, Put), (5, Delete), (3, Put), (1, Put)];
        assert_eq!(run(vec![], &entries, false), vec![9]);
        assert_eq!(run(vec![6], &entries, false), vec![9, 5]);
        assert_eq!(run(vec![6, 2], &entries, false), vec![9, 5, 1]);
        assert_eq!(
            run(vec![8], &[(9, Put), (5, Delete), (3, Put)], true),
            vec![9]
        );
        assert_eq!(run(vec![], &[(5, Delete), (3, Put)], false), vec![5]);
        assert_eq!(run(vec![4], &[(5, Delete), (3, Put)], true), vec![5, 3]);
    }
}
