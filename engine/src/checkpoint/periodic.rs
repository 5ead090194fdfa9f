//! Periodic delta checkpoints: the building block of the backup RPO.
//!
//! With [`PeriodicCheckpoints`] set in [`Options`](crate::Options), a
//! background thread takes a checkpoint every `interval` (or as soon as
//! `every_bytes` have been written): the first of a chain is full, the next
//! `deltas_per_chain` are deltas against the previous one, then a new chain
//! starts. Only the newest `keep_chains` chains are kept.
//!
//! **Recovery point.** If the database directory is lost, the newest
//! checkpoint holds every write acknowledged up to the moment it was taken,
//! so at most one interval of writes (or `every_bytes`), plus the time one
//! checkpoint takes, is lost: RPO ≤ `interval` + checkpoint time. Shipping
//! the target directory elsewhere extends that guarantee to the loss of the
//! machine; what must be shipped per checkpoint is its new bytes only.
//!
//! Layout: `dir/chain-NNNNNN/NNNNNN/` (chain number, then position in it).

use std::path::PathBuf;
use std::time::Duration;

/// Settings of periodic checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodicCheckpoints {
    /// Directory that receives the chains.
    pub dir: PathBuf,
    /// Time between checkpoints.
    pub interval: Duration,
    /// Also checkpoint once this many user bytes were written since the last one.
    pub every_bytes: Option<u64>,
    /// Deltas after each full checkpoint before a new chain starts.
    pub deltas_per_chain: usize,
    /// Chains kept; older ones are deleted.
    pub keep_chains: usize,
}

impl PeriodicCheckpoints {
    /// One checkpoint per `interval` into `dir`, chains of one full and 59
    /// deltas, two chains kept.
    ///
    /// ```
    /// use std::time::Duration;
    /// let periodic = ferry_engine::checkpoint::periodic::PeriodicCheckpoints::new("/backups/ferry", Duration::from_secs(1));
    /// assert_eq!(periodic.keep_chains, 2);
    /// ```
    pub fn new(dir: impl Into<PathBuf>, interval: Duration) -> Self {
        PeriodicCheckpoints {
            dir: dir.into(),
            interval,
            every_bytes: None,
            deltas_per_chain: 59,
            keep_chains: 2,
        }
    }
}
