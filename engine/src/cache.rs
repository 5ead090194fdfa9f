//! The bounded cache of decompressed blocks shared by all tables.

use crate::sst::block::Block;
use std::sync::Arc;

#[derive(Clone, Debug)]
struct BlockWeighter;

impl quick_cache::Weighter<(u64, u64), Arc<Block>> for BlockWeighter {
    fn weight(&self, _key: &(u64, u64), block: &Arc<Block>) -> u64 {
        block.len() as u64 + 64
    }
}

/// Maps `(table number, block offset)` to a decoded block, evicting by bytes.
pub(crate) struct BlockCache {
    cache: quick_cache::sync::Cache<(u64, u64), Arc<Block>, BlockWeighter>,
}

impl BlockCache {
    pub(crate) fn new(capacity_bytes: u64) -> Self {
        let estimated_items = (capacity_bytes / 4096).clamp(16, 1 << 20) as usize;
        BlockCache {
            cache: quick_cache::sync::Cache::with_weighter(
                estimated_items,
                capacity_bytes.max(1),
                BlockWeighter,
            ),
        }
    }

    pub(crate) fn get(&self, table: u64, offset: u64) -> Option<Arc<Block>> {
        self.cache.get(&(table, offset))
    }

    pub(crate) fn insert(&self, table: u64, offset: u64, block: Arc<Block>) {
        self.cache.insert((table, offset), block);
    }
}
