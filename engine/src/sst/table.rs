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

/// A point lookup, prepared once and asked of every table in turn: the
/// seek key and the bloom hash are computed once per read, not per table.
pub(crate) struct PointQuery<'a> {
    pub(crate) user_key: &'a [u8],
    pub(crate) target: Vec<u8>,
    pub(crate) hash: u64,
}

impl<'a> PointQuery<'a> {
    pub(crate) fn new(user_key: &'a [u8], sequence: SeqNo) -> Self {
        PointQuery {
            user_key,
            target: key::seek_key(user_key, sequence),
            hash: bloom::hash(user_key),
        }
    }
}

/// An open, immutable table file. Index and filter stay in memory; data
/// blocks are read through the mmap and the shared block cache.
pub(crate) struct Table {
    file: Arc<dyn RandomAccessFile>,
    path: Arc<PathBuf>,
    number: u64,
    index: Arc<Block>,
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
        let index = Block::new(
            decode_block(bytes, footer.index, path)?,
            shared_path.clone(),
            footer.index.offset,
        )?;
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
            index: Arc::new(index),
            filter,
            properties,
            cache,
            counters,
        })
    }

    pub(crate) fn properties(&self) -> &TableProperties {
        &self.properties
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn read_block(&self, index_value: &[u8]) -> Result<Arc<Block>> {
        let handle = BlockHandle::decode_varint(index_value).ok_or_else(|| {
            Error::corruption(
                self.path.as_path(),
                self.index_offset(),
                "index entry does not decode",
            )
        })?;
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

    fn index_offset(&self) -> u64 {
        self.file
            .bytes()
            .len()
            .saturating_sub(super::format::FOOTER_LEN) as u64
    }

    /// The newest version of the query's key at or below its sequence.
    pub(crate) fn get(&self, query: &PointQuery<'_>) -> Result<Lookup> {
        let (user_key, target) = (query.user_key, &query.target);
        if !bloom::may_contain(&self.filter, query.hash) {
            Counters::add(&self.counters.bloom_negatives, 1);
            return Ok(Lookup::Absent);
        }
        let mut index = BlockIter::new(self.index.clone());
        index.seek_ge(target)?;
        if !index.valid() {
            return Ok(Lookup::Absent);
        }
        let mut data = BlockIter::new(self.read_block(index.value())?);
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
    index: BlockIter,
    data: Option<BlockIter>,
}

impl TableIter {
    pub(crate) fn new(table: Arc<Table>, reverse: bool) -> Self {
        let index = BlockIter::new(table.index.clone());
        TableIter {
            table,
            reverse,
            index,
            data: None,
        }
    }

    fn load_block(&mut self) -> Result<()> {
        self.data = if self.index.valid() {
            Some(BlockIter::new(self.table.read_block(self.index.value())?))
        } else {
            None
        };
        Ok(())
    }

    fn data_valid(&self) -> bool {
        self.data.as_ref().is_some_and(BlockIter::valid)
    }

    /// Steps to neighbouring blocks until positioned or out of blocks.
    fn skip_empty_blocks(&mut self) -> Result<()> {
        while !self.data_valid() && self.index.valid() {
            if self.reverse {
                self.index.prev()?;
                self.load_block()?;
                if let Some(data) = &mut self.data {
                    data.seek_to_last()?;
                }
            } else {
                self.index.next()?;
                self.load_block()?;
                if let Some(data) = &mut self.data {
                    data.seek_to_first()?;
                }
            }
        }
        Ok(())
    }
}

impl EntryIter for TableIter {
    fn seek(&mut self, target: Option<&[u8]>) -> Result<()> {
        match (target, self.reverse) {
            (None, false) => {
                self.index.seek_to_first()?;
                self.load_block()?;
                if let Some(data) = &mut self.data {
                    data.seek_to_first()?;
                }
            }
            (None, true) => {
                self.index.seek_to_last()?;
                self.load_block()?;
                if let Some(data) = &mut self.data {
                    data.seek_to_last()?;
                }
            }
            (Some(target), false) => {
                self.index.seek_ge(target)?;
                self.load_block()?;
                if let Some(data) = &mut self.data {
                    data.seek_ge(target)?;
                }
            }
            (Some(target), true) => {
                // The last entry <= target is in the first block whose last
                // key is >= target, or at the end of the block before it.
                self.index.seek_ge(target)?;
                if !self.index.valid() {
                    self.index.seek_to_last()?;
                }
                self.load_block()?;
                if let Some(data) = &mut self.data {
                    data.seek_le(target)?;
                }
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
