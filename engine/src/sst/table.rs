//! Reading a table: point lookups and cursors.

use super::block::{Block, BlockIter};
use super::bloom;
use super::format::{decode_block, BlockHandle, Footer, TableProperties};
use crate::cache::BlockCache;
use crate::error::IoContext;
use crate::fs::{FileSystem, RandomAccessFile};
use crate::iter::EntryIter;
use crate::key::{self, SeqNo, ValueKind};
use crate::memtable::Lookup;
use crate::stats::Counters;
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A point lookup, prepared once and asked of every memtable and table in
/// turn: the seek key and the bloom hash are computed once per read, not
/// per source.
pub(crate) struct PointQuery<'a> {
    pub(crate) user_key: &'a [u8],
    pub(crate) sequence: SeqNo,
    pub(crate) target: Vec<u8>,
    pub(crate) hash: u64,
}

impl<'a> PointQuery<'a> {
    pub(crate) fn new(user_key: &'a [u8], sequence: SeqNo) -> Self {
        PointQuery {
            user_key,
            sequence,
            target: key::seek_key(user_key, sequence),
            hash: bloom::hash(user_key),
        }
    }
}

/// One data block as the in-memory index knows it.
struct IndexEntry {
    /// [`key::prefix_u128`] of the last key's user key: most probes are
    /// decided by comparing it alone.
    prefix: u128,
    /// The block's last internal key.
    last_key: Box<[u8]>,
    handle: BlockHandle,
}

/// An open, immutable table file. Index and filter stay in memory; data
/// blocks are read through the mmap and the shared block cache.
pub(crate) struct Table {
    file: Arc<dyn RandomAccessFile>,
    path: Arc<PathBuf>,
    number: u64,
    /// The index block, decoded once at open: the last internal key of
    /// every data block and its handle, searched with a plain binary search.
    index: Vec<IndexEntry>,
    filter: Vec<u8>,
    properties: TableProperties,
    cache: Arc<BlockCache>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table").field("path", &self.path).finish()
    }
}

impl Table {
    pub(crate) fn open(
        fs: &dyn FileSystem,
        path: &Path,
        number: u64,
        cache: Arc<BlockCache>,
        counters: Arc<Counters>,
    ) -> Result<Table> {
        let file = fs.open_random(path).at(path)?;
        let bytes = file.bytes();
        let footer = Footer::decode(bytes, path)?;
        let shared_path = Arc::new(path.to_path_buf());
        let index_block = Block::new(
            decode_block(bytes, footer.index, path)?,
            shared_path.clone(),
            footer.index.offset,
        )?;
        let mut index = Vec::new();
        let mut entries = BlockIter::new(Arc::new(index_block));
        entries.seek_to_first()?;
        while entries.valid() {
            let handle = BlockHandle::decode_varint(entries.value()).ok_or_else(|| {
                Error::corruption(path, footer.index.offset, "index entry does not decode")
            })?;
            if index.last().is_some_and(|last: &IndexEntry| {
                key::compare(&last.last_key, entries.key()) != std::cmp::Ordering::Less
            }) {
                return Err(Error::corruption(
                    path,
                    footer.index.offset,
                    "index keys out of order",
                ));
            }
            index.push(IndexEntry {
                prefix: key::prefix_u128(key::user_key(entries.key())),
                last_key: entries.key().into(),
                handle,
            });
            entries.next()?;
        }
        let filter = decode_block(bytes, footer.filter, path)?;
        let properties = TableProperties::decode(&decode_block(bytes, footer.properties, path)?)
            .ok_or_else(|| {
                Error::corruption(
                    path,
                    footer.properties.offset,
                    "properties block does not decode",
                )
            })?;
        Ok(Table {
            file,
            path: shared_path,
            number,
            index,
            filter,
            properties,
            cache,
            counters,
        })
    }

    /// Index of the first data block whose last key is `>= target`
    /// (`index.len()` if none).
    fn first_block_ending_at_or_after(&self, target: &[u8]) -> usize {
        let target_prefix = key::prefix_u128(key::user_key(target));
        self.index.partition_point(|entry| {
            let order = entry
                .prefix
                .cmp(&target_prefix)
                .then_with(|| key::compare(&entry.last_key, target));
            order == std::cmp::Ordering::Less
        })
    }

    pub(crate) fn properties(&self) -> &TableProperties {
        &self.properties
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn read_block(&self, handle: BlockHandle) -> Result<Arc<Block>> {
        if let Some(block) = self.cache.get(self.number, handle.offset) {
            Counters::add(&self.counters.block_cache_hits, 1);
            return Ok(block);
        }
        Counters::add(&self.counters.block_cache_misses, 1);
        let raw = decode_block(self.file.bytes(), handle, &self.path)?;
        let block = Arc::new(Block::new(raw, self.path.clone(), handle.offset)?);
        self.cache.insert(self.number, handle.offset, block.clone());
        Ok(block)
    }

    /// The newest version of the query's key at or below its sequence.
    pub(crate) fn get(&self, query: &PointQuery<'_>) -> Result<Lookup> {
        let (user_key, target) = (query.user_key, &query.target);
        if !bloom::may_contain(&self.filter, query.hash) {
            Counters::add(&self.counters.bloom_negatives, 1);
            return Ok(Lookup::Absent);
        }
        let Some(&IndexEntry { handle, .. }) =
            self.index.get(self.first_block_ending_at_or_after(target))
        else {
            return Ok(Lookup::Absent);
        };
        let mut data = BlockIter::new(self.read_block(handle)?);
        data.seek_ge(target)?;
        if !data.valid() || key::user_key(data.key()) != user_key {
            return Ok(Lookup::Absent);
        }
        Ok(match key::kind(data.key()) {
            Some(ValueKind::Put) => Lookup::Found(data.value().to_vec()),
            Some(ValueKind::Delete) => Lookup::Deleted,
            None => {
                return Err(Error::corruption(
                    self.path.as_path(),
                    0,
                    "entry with unknown kind",
                ))
            }
        })
    }
}

/// A one-directional cursor over a table.
pub(crate) struct TableIter {
    table: Arc<Table>,
    reverse: bool,
    /// Position in the table's index; `None` when exhausted.
    block: Option<usize>,
    data: Option<BlockIter>,
}

impl TableIter {
    pub(crate) fn new(table: Arc<Table>, reverse: bool) -> Self {
        TableIter {
            table,
            reverse,
            block: None,
            data: None,
        }
    }

    /// Loads block `position` (if it exists) and positions inside it.
    fn load_block(
        &mut self,
        position: Option<usize>,
        place: impl FnOnce(&mut BlockIter) -> Result<()>,
    ) -> Result<()> {
        self.block = position.filter(|&p| p < self.table.index.len());
        self.data = match self.block {
            Some(p) => {
                let mut data = BlockIter::new(self.table.read_block(self.table.index[p].handle)?);
                place(&mut data)?;
                Some(data)
            }
            None => None,
        };
        Ok(())
    }

    fn data_valid(&self) -> bool {
        self.data.as_ref().is_some_and(BlockIter::valid)
    }

    /// Steps to neighbouring blocks until positioned or out of blocks.
    fn skip_empty_blocks(&mut self) -> Result<()> {
        while !self.data_valid() {
            let Some(current) = self.block else {
                return Ok(());
            };
            if self.reverse {
                self.load_block(current.checked_sub(1), BlockIter::seek_to_last)?;
            } else {
                self.load_block(Some(current + 1), BlockIter::seek_to_first)?;
            }
        }
        Ok(())
    }
}

impl EntryIter for TableIter {
    fn seek(&mut self, target: Option<&[u8]>) -> Result<()> {
        let blocks = self.table.index.len();
        match (target, self.reverse) {
            (None, false) => self.load_block(Some(0), BlockIter::seek_to_first)?,
            (None, true) => self.load_block(blocks.checked_sub(1), BlockIter::seek_to_last)?,
            (Some(target), false) => {
                let first = self.table.first_block_ending_at_or_after(target);
                self.load_block(Some(first), |data| data.seek_ge(target))?;
            }
            (Some(target), true) => {
                // The last entry <= target is in the first block whose last
                // key is >= target, or at the end of the block before it.
                let first = self.table.first_block_ending_at_or_after(target);
                let position = if first < blocks {
                    Some(first)
                } else {
                    blocks.checked_sub(1)
                };
                self.load_block(position, |data| data.seek_le(target))?;
            }
        }
        self.skip_empty_blocks()
    }

    fn advance(&mut self) -> Result<()> {
        if let Some(data) = &mut self.data {
            if self.reverse {
                data.prev()?;
            } else {
                data.next()?;
            }
        }
        self.skip_empty_blocks()
    }

    fn current(&self) -> Option<(&[u8], &[u8])> {
        let data = self.data.as_ref().filter(|d| d.valid())?;
        Some((data.key(), data.value()))
    }
}
