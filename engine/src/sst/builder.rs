//! Writing a table file from entries in sorted order.

use super::block::BlockBuilder;
use super::bloom;
use super::format::{encode_block, BlockHandle, Footer, TableProperties};
use crate::error::IoContext;
use crate::fs::WritableFile;
use crate::key::{self, ValueKind};
use crate::Result;
use std::cmp::Ordering;
use std::path::{Path, PathBuf};

/// Layout choices for a table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TableOptions {
    pub(crate) block_bytes: usize,
    pub(crate) restart_interval: usize,
    pub(crate) bloom_bits_per_key: usize,
    pub(crate) compression: bool,
}

impl From<&crate::Options> for TableOptions {
    fn from(options: &crate::Options) -> Self {
        TableOptions {
            block_bytes: options.block_bytes,
            restart_interval: options.block_restart_interval,
            bloom_bits_per_key: options.bloom_bits_per_key,
            compression: options.compression,
        }
    }
}

/// What a finished table is, as the manifest records it.
pub(crate) struct FinishedTable {
    pub(crate) properties: TableProperties,
    pub(crate) size: u64,
    pub(crate) file_crc: u32,
}

/// Streams sorted entries into a table file; memory holds one block plus
/// the index and one hash per distinct user key.
pub(crate) struct TableBuilder {
    file: Box<dyn WritableFile>,
    path: PathBuf,
    options: TableOptions,
    data: BlockBuilder,
    index: BlockBuilder,
    key_hashes: Vec<u64>,
    properties: TableProperties,
    offset: u64,
    scratch: Vec<u8>,
    /// CRC32 of every byte written, recorded in the manifest so that
    /// checkpoints and transfers can verify a whole file without a second
    /// read at write time.
    file_crc: crc32fast::Hasher,
}

impl TableBuilder {
    pub(crate) fn new(file: Box<dyn WritableFile>, path: &Path, options: TableOptions) -> Self {
        TableBuilder {
            file,
            path: path.to_path_buf(),
            options,
            data: BlockBuilder::new(options.restart_interval),
            index: BlockBuilder::new(1),
            key_hashes: Vec::new(),
            properties: TableProperties {
                min_sequence: u64::MAX,
                ..TableProperties::default()
            },
            offset: 0,
            scratch: Vec::new(),
            file_crc: crc32fast::Hasher::new(),
        }
    }

    /// Adds an entry; internal keys must strictly increase.
    pub(crate) fn add(&mut self, internal_key: &[u8], value: &[u8]) -> Result<()> {
        let properties = &mut self.properties;
        debug_assert!(
            properties.entries == 0
                || key::compare(&properties.largest, internal_key) == Ordering::Less,
            "table keys out of order"
        );
        let user_key = key::user_key(internal_key);
        if properties.entries == 0 || key::user_key(&properties.largest) != user_key {
            self.key_hashes.push(bloom::hash(user_key));
        }
        if properties.entries == 0 {
            properties.smallest = internal_key.to_vec();
        }
        properties.largest.clear();
        properties.largest.extend_from_slice(internal_key);
        properties.entries += 1;
        let sequence = key::sequence(internal_key);
        properties.min_sequence = properties.min_sequence.min(sequence);
        properties.max_sequence = properties.max_sequence.max(sequence);
        if key::kind(internal_key) == Some(ValueKind::Delete) {
            properties.deletes += 1;
        }
        properties.key_bytes += internal_key.len() as u64;
        properties.value_bytes += value.len() as u64;

        self.data.add(internal_key, value);
        if self.data.estimated_len() >= self.options.block_bytes {
            self.finish_data_block()?;
        }
        Ok(())
    }

    /// Bytes written so far plus the block being built.
    pub(crate) fn estimated_len(&self) -> u64 {
        self.offset + self.data.estimated_len() as u64
    }

    fn finish_data_block(&mut self) -> Result<()> {
        if self.data.is_empty() {
            return Ok(());
        }
        let last_key = self.data.last_key().to_vec();
        let raw = self.data.finish();
        let handle = self.write_block(&raw, self.options.compression)?;
        let mut encoded = Vec::with_capacity(16);
        handle.encode_varint(&mut encoded);
        self.index.add(&last_key, &encoded);
        Ok(())
    }

    fn write_block(&mut self, raw: &[u8], compress: bool) -> Result<BlockHandle> {
        self.scratch.clear();
        encode_block(raw, compress, &mut self.scratch);
        let handle = BlockHandle {
            offset: self.offset,
            size: (self.scratch.len() - super::format::BLOCK_TRAILER_LEN) as u64,
        };
        self.file.append(&self.scratch).at(&self.path)?;
        self.file_crc.update(&self.scratch);
        self.offset += self.scratch.len() as u64;
        Ok(handle)
    }

    /// Writes the filter, properties, index and footer, then syncs the file.
    pub(crate) fn finish(mut self) -> Result<FinishedTable> {
        self.finish_data_block()?;
        if self.properties.entries == 0 {
            self.properties.min_sequence = 0;
        }
        let filter = bloom::build(&self.key_hashes, self.options.bloom_bits_per_key);
        let filter = self.write_block(&filter, false)?;
        let properties = self.properties.encode();
        let properties = self.write_block(&properties, false)?;
        let index = self.index.finish();
        let index = self.write_block(&index, false)?;
        let footer = Footer {
            filter,
            properties,
            index,
        };
        let footer = footer.encode();
        self.file.append(&footer).at(&self.path)?;
        self.file_crc.update(&footer);
        self.offset += super::format::FOOTER_LEN as u64;
        self.file.sync().at(&self.path)?;
        Ok(FinishedTable {
            properties: self.properties,
            size: self.offset,
            file_crc: self.file_crc.finalize(),
        })
    }
}
