//! Cursors over internal entries and how they combine.
//!
//! Every source (memtable, table, level) exposes one-directional cursors:
//! a forward cursor seeks to the first entry `>=` a target and advances
//! upwards, a reverse cursor seeks to the last entry `<=` a target and
//! advances downwards. Fixing the direction at construction keeps each
//! cursor simple; a user iterator that walks both ways holds two.

pub(crate) mod merge;

use crate::Result;

/// A one-directional cursor over `(internal key, value)` entries in
/// internal-key order (or its reverse).
pub(crate) trait EntryIter: Send {
    /// Positions on the first entry `>=` target (forward) or the last entry
    /// `<=` target (reverse); `None` means the very start (or end).
    fn seek(&mut self, target: Option<&[u8]>) -> Result<()>;
    /// Moves one entry in the cursor's direction. No-op when exhausted.
    fn advance(&mut self) -> Result<()>;
    /// The current entry, `None` when exhausted.
    fn current(&self) -> Option<(&[u8], &[u8])>;
}

impl EntryIter for Box<dyn EntryIter> {
    fn seek(&mut self, target: Option<&[u8]>) -> Result<()> {
        (**self).seek(target)
    }
    fn advance(&mut self) -> Result<()> {
        (**self).advance()
    }
    fn current(&self) -> Option<(&[u8], &[u8])> {
        (**self).current()
    }
}
