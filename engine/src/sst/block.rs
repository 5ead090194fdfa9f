//! Data and index blocks: sorted entries with key prefix compression.
//!
//! ## Format (inside a block, after decompression)
//!
//! ```text
//! block   = entry* restart* num_restarts: u32 LE
//! entry   = shared: varint | unshared: varint | value_len: varint | key[unshared] | value[value_len]
//! restart = u32 LE offset of an entry stored with shared = 0
//! ```
//!
//! Every `restart_interval`-th entry stores its whole key, so a seek binary
//! searches the restart points and then scans at most one interval.
//! On disk each block is followed by a 5-byte trailer (see [`super::format`]).

use crate::key;
use crate::varint::{self, Cursor};
use crate::{Error, Result};
use std::cmp::Ordering;
use std::path::PathBuf;
use std::sync::Arc;

/// Builds one block.
pub(crate) struct BlockBuilder {
    buffer: Vec<u8>,
    restarts: Vec<u32>,
    restart_interval: usize,
    since_restart: usize,
    last_key: Vec<u8>,
    entries: usize,
}

impl BlockBuilder {
    pub(crate) fn new(restart_interval: usize) -> Self {
        debug_assert!(restart_interval > 0);
        BlockBuilder {
            buffer: Vec::new(),
            restarts: vec![0],
            restart_interval,
            since_restart: 0,
            last_key: Vec::new(),
            entries: 0,
        }
    }

    /// Adds an entry; keys must arrive in strictly increasing internal order.
    pub(crate) fn add(&mut self, key: &[u8], value: &[u8]) {
        debug_assert!(self.entries == 0 || key::compare(&self.last_key, key) == Ordering::Less);
        let shared = if self.since_restart >= self.restart_interval {
            self.restarts.push(self.buffer.len() as u32);
            self.since_restart = 0;
            0
        } else {
            self.last_key
                .iter()
                .zip(key)
                .take_while(|(a, b)| a == b)
                .count()
        };
        varint::put_u64(&mut self.buffer, shared as u64);
        varint::put_u64(&mut self.buffer, (key.len() - shared) as u64);
        varint::put_u64(&mut self.buffer, value.len() as u64);
        self.buffer.extend_from_slice(&key[shared..]);
        self.buffer.extend_from_slice(value);
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        self.since_restart += 1;
        self.entries += 1;
    }

    pub(crate) fn estimated_len(&self) -> usize {
        self.buffer.len() + self.restarts.len() * 4 + 4
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries == 0
    }

    pub(crate) fn last_key(&self) -> &[u8] {
        &self.last_key
    }

    /// Finishes the block and returns its bytes; the builder is reset.
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buffer);
        for restart in &self.restarts {
            out.extend_from_slice(&restart.to_le_bytes());
        }
        out.extend_from_slice(&(self.restarts.len() as u32).to_le_bytes());
        self.restarts = vec![0];
        self.since_restart = 0;
        self.last_key.clear();
        self.entries = 0;
        out
    }
}

/// A decoded (decompressed, checksum-verified) block.
#[derive(Debug)]
pub(crate) struct Block {
    data: Vec<u8>,
    /// End of the entries, where the restart array begins.
    entries_end: usize,
    num_restarts: usize,
    /// [`key::prefix_u128`] of each restart key's user key, computed once
    /// when the block is loaded: a seek's binary search compares these
    /// integers and decodes a restart key only when prefixes tie.
    restart_prefixes: Vec<u128>,
    /// Where the block came from, for error messages.
    path: Arc<PathBuf>,
    offset: u64,
}

impl Block {
    /// Validates the restart array of freshly read bytes.
    pub(crate) fn new(data: Vec<u8>, path: Arc<PathBuf>, offset: u64) -> Result<Self> {
        let bad = |reason: &str| {
            Error::corruption(path.to_path_buf(), offset, format!("block: {reason}"))
        };
        let len = data.len();
        let tail: [u8; 4] = data
            .get(len.wrapping_sub(4)..)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| bad("shorter than its restart count"))?;
        let num_restarts = u32::from_le_bytes(tail) as usize;
        let restarts_len = num_restarts
            .checked_mul(4)
            .and_then(|n| n.checked_add(4))
            .filter(|&n| n <= len && num_restarts > 0)
            .ok_or_else(|| bad("restart count out of range"))?;
        let entries_end = len - restarts_len;
        let restarts_ok = (0..num_restarts).all(|index| {
            let at = entries_end + index * 4;
            let restart =
                u32::from_le_bytes(data[at..at + 4].try_into().unwrap_or_default()) as usize;
            let previous = (index > 0).then(|| {
                let at = at - 4;
                u32::from_le_bytes(data[at..at + 4].try_into().unwrap_or_default()) as usize
            });
            // The first entry starts a restart: a reader stepping back
            // from any entry finds a restart at or before it.
            let first_ok = index > 0 || restart == 0;
            first_ok && restart <= entries_end && previous.is_none_or(|p| p < restart)
        });
        if !restarts_ok {
            return Err(bad("restart points out of order"));
        }
        let mut restart_prefixes = Vec::with_capacity(num_restarts);
        for index in 0..num_restarts {
            let at = entries_end + index * 4;
            let restart =
                u32::from_le_bytes(data[at..at + 4].try_into().unwrap_or_default()) as usize;
            if restart == entries_end {
                // Only an empty block has a restart at its end; it sorts last.
                restart_prefixes.push(u128::MAX);
                continue;
            }
            let user_key = restart_key_at(&data[..entries_end], restart)
                .ok_or_else(|| bad("restart entry does not decode"))?;
            restart_prefixes.push(key::prefix_u128(key::user_key(user_key)));
        }
        Ok(Block {
            data,
            entries_end,
            num_restarts,
            restart_prefixes,
            path,
            offset,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.data.len()
    }

    fn restart(&self, index: usize) -> usize {
        let at = self.entries_end + index * 4;
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(&self.data[at..at + 4]);
        u32::from_le_bytes(bytes) as usize
    }

    fn corruption(&self, at: usize) -> Error {
        Error::corruption(
            self.path.as_path(),
            self.offset,
            format!("block entry at {at} does not decode"),
        )
    }
}

/// The whole key stored at a restart point (`shared = 0`), if it decodes.
fn restart_key_at(entries: &[u8], at: usize) -> Option<&[u8]> {
    let mut cursor = Cursor::new(entries.get(at..)?);
    let shared = cursor.usize()?;
    let unshared = cursor.usize()?;
    let _value_len = cursor.usize()?;
    if shared != 0 || unshared < key::TRAILER_LEN {
        return None;
    }
    cursor.take(unshared)
}

/// A cursor over one block that can move both ways.
pub(crate) struct BlockIter {
    block: Arc<Block>,
    /// Offset of the current entry; `entries_end` when not positioned.
    offset: usize,
    next_offset: usize,
    key: Vec<u8>,
    value: (usize, usize),
}

impl BlockIter {
    pub(crate) fn new(block: Arc<Block>) -> Self {
        let end = block.entries_end;
        BlockIter {
            block,
            offset: end,
            next_offset: end,
            key: Vec::new(),
            value: (0, 0),
        }
    }

    pub(crate) fn valid(&self) -> bool {
        self.offset < self.block.entries_end
    }

    pub(crate) fn key(&self) -> &[u8] {
        &self.key
    }

    pub(crate) fn value(&self) -> &[u8] {
        &self.block.data[self.value.0..self.value.1]
    }

    fn invalidate(&mut self) {
        self.offset = self.block.entries_end;
        self.next_offset = self.block.entries_end;
    }

    /// Decodes the entry at `at`, whose predecessor's key is in `self.key`.
    fn decode_at(&mut self, at: usize) -> Result<()> {
        let block = &self.block;
        let entry = (|| {
            let mut cursor = Cursor::new(block.data.get(at..block.entries_end)?);
            let shared = cursor.usize()?;
            let unshared = cursor.usize()?;
            let value_len = cursor.usize()?;
            let key_delta = cursor.take(unshared)?;
            let value_start = at + cursor.position();
            cursor.take(value_len)?;
            if shared > self.key.len() || shared + unshared < key::TRAILER_LEN {
                return None;
            }
            self.key.truncate(shared);
            self.key.extend_from_slice(key_delta);
            Some((value_start, value_start + value_len))
        })();
        let Some(value) = entry else {
            let error = self.block.corruption(at);
            self.invalidate();
            return Err(error);
        };
        self.offset = at;
        self.value = value;
        self.next_offset = value.1;
        Ok(())
    }

    /// Key stored whole at restart point `index`.
    fn restart_key(&self, index: usize) -> Result<&[u8]> {
        let at = self.block.restart(index);
        restart_key_at(&self.block.data[..self.block.entries_end], at)
            .ok_or_else(|| self.block.corruption(at))
    }

    /// Index of the last restart whose key is `< target` (or `<= target`
    /// when `inclusive`), or 0.
    fn restart_before(&self, target: &[u8], inclusive: bool) -> Result<usize> {
        let target_prefix = key::prefix_u128(key::user_key(target));
        let (mut low, mut high) = (0, self.block.num_restarts);
        while high - low > 1 {
            let mid = (low + high) / 2;
            let order = match self.block.restart_prefixes[mid].cmp(&target_prefix) {
                Ordering::Equal => key::compare(self.restart_key(mid)?, target),
                decided => decided,
            };
            if order == Ordering::Less || (inclusive && order == Ordering::Equal) {
                low = mid;
            } else {
                high = mid;
            }
        }
        Ok(low)
    }

    fn start_at_restart(&mut self, index: usize) -> Result<()> {
        self.key.clear();
        let at = self.block.restart(index);
        if at >= self.block.entries_end {
            self.invalidate();
            return Ok(());
        }
        self.decode_at(at)
    }

    pub(crate) fn seek_to_first(&mut self) -> Result<()> {
        self.start_at_restart(0)
    }

    pub(crate) fn seek_to_last(&mut self) -> Result<()> {
        self.start_at_restart(self.block.num_restarts - 1)?;
        while self.valid() && self.next_offset < self.block.entries_end {
            self.next()?;
        }
        Ok(())
    }

    /// First entry `>= target`.
    pub(crate) fn seek_ge(&mut self, target: &[u8]) -> Result<()> {
        let restart = self.restart_before(target, false)?;
        self.start_at_restart(restart)?;
        while self.valid() && key::compare(&self.key, target) == Ordering::Less {
            self.next()?;
        }
        Ok(())
    }

    /// Last entry `<= target`.
    pub(crate) fn seek_le(&mut self, target: &[u8]) -> Result<()> {
        let restart = self.restart_before(target, true)?;
        self.start_at_restart(restart)?;
        if !self.valid() || key::compare(&self.key, target) == Ordering::Greater {
            self.invalidate();
            return Ok(());
        }
        while self.next_offset < self.block.entries_end {
            let (offset, key, value) = (self.offset, self.key.clone(), self.value);
            self.next()?;
            if key::compare(&self.key, target) == Ordering::Greater {
                // Step back: restore the previous entry.
                self.offset = offset;
                self.next_offset = value.1;
                self.key = key;
                self.value = value;
                break;
            }
        }
        Ok(())
    }

    pub(crate) fn next(&mut self) -> Result<()> {
        if !self.valid() {
            return Ok(());
        }
        if self.next_offset >= self.block.entries_end {
            self.invalidate();
            return Ok(());
        }
        self.decode_at(self.next_offset)
    }

    pub(crate) fn prev(&mut self) -> Result<()> {
        if !self.valid() {
            return Ok(());
        }
        let current = self.offset;
        if current == 0 {
            self.invalidate();
            return Ok(());
        }
        // Re-decode from the last restart before the current entry.
        let mut restart = self.block.num_restarts - 1;
        while self.block.restart(restart) >= current {
            restart -= 1;
        }
        self.start_at_restart(restart)?;
        while self.next_offset < current {
            self.decode_at(self.next_offset)?;
        }
        debug_assert_eq!(self.next_offset, current);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::ValueKind;

    fn build(count: u64, interval: usize) -> Arc<Block> {
        let mut builder = BlockBuilder::new(interval);
        for i in 0..count {
            let k = key::encode(format!("key{:04}", i * 2).as_bytes(), 1, ValueKind::Put);
            builder.add(&k, format!("v{i}").as_bytes());
        }
        Arc::new(Block::new(builder.finish(), Arc::new("t".into()), 0).unwrap())
    }

    fn user(iter: &BlockIter) -> String {
        String::from_utf8(key::user_key(iter.key()).to_vec()).unwrap()
    }

    #[test]
    fn seeks_and_walks_both_ways() {
        for interval in [1, 3, 16] {
            let block = build(50, interval);
            let mut iter = BlockIter::new(block);
            iter.seek_ge(&key::seek_key(b"key0011", 9)).unwrap();
            assert_eq!(user(&iter), "key0012");
            assert_eq!(iter.value(), b"v6");
            iter.prev().unwrap();
            assert_eq!(user(&iter), "key0010");
            iter.seek_le(&key::seek_key(b"key0011", 9)).unwrap();
            assert_eq!(user(&iter), "key0010");
            iter.next().unwrap();
            assert_eq!(user(&iter), "key0012");
            iter.seek_le(&key::seek_key(b"key", 9)).unwrap();
            assert!(!iter.valid());
            iter.seek_ge(&key::seek_key(b"zzz", 9)).unwrap();
            assert!(!iter.valid());
            iter.seek_to_last().unwrap();
            assert_eq!(user(&iter), "key0098");
            let mut count = 1;
            while {
                iter.prev().unwrap();
                iter.valid()
            } {
                count += 1;
            }
            assert_eq!(count, 50);
        }
    }

    #[test]
    fn garbage_is_rejected() {
        let path = Arc::new(PathBuf::from("t"));
        assert!(Block::new(vec![1, 2], path.clone(), 0).is_err());
        assert!(Block::new(vec![0, 0, 0, 0], path.clone(), 0).is_err());
        // A restart entry that does not decode is refused when the block is loaded.
        let err = Block::new(vec![9, 9, 9, 0, 0, 0, 0, 1, 0, 0, 0], path.clone(), 7).unwrap_err();
        assert!(err.is_corruption());
        // A later entry that does not decode fails the cursor that reaches it.
        let mut bytes = vec![0, 10, 0];
        bytes.extend_from_slice(b"key\0\0\0\0\0\0\x01");
        bytes.extend_from_slice(&[0, 200, 0]);
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes());
        let mut iter = BlockIter::new(Arc::new(Block::new(bytes, path.clone(), 7).unwrap()));
        iter.seek_to_first().unwrap();
        assert!(iter.next().unwrap_err().is_corruption());
        // A first restart after the first entry: stepping back to that
        // entry would find no restart before it.
        let mut builder = BlockBuilder::new(16);
        for i in 0..3u64 {
            let k = key::encode(format!("k{i}").as_bytes(), 1, ValueKind::Put);
            builder.add(&k, b"v");
        }
        let mut bytes = builder.finish();
        // One restart, the count after it.
        let restarts_at = bytes.len() - 8;
        bytes[restarts_at..restarts_at + 4].copy_from_slice(&1u32.to_le_bytes());
        assert!(Block::new(bytes, path, 7).unwrap_err().is_corruption());
    }
}
