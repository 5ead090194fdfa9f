//! etcd's snapshot stream (`Maintenance.Snapshot`, what `etcdctl snapshot
//! save` writes to a file), carrying Ferry's snapshot, and the reader that
//! unpacks such a file (`ferry snapshot restore --from FILE`).
//!
//! etcd's clients check one thing of the stream: that its length is a
//! multiple of 512 plus 32, the last 32 bytes being the SHA-256 of all
//! before. Everything else is Ferry's; the file is not an etcd (bbolt)
//! database, so `etcdctl snapshot restore` and `status` do not read it.
//!
//! ## Format (version 1)
//!
//! ```text
//! magic "ferry-etcd-snap\0" (16 bytes) | version u8 (1)
//! chunk*        each a varint length (1 .. MAX_CHUNK) and a Ferry
//!               `SnapshotChunk` message (info, file header or data), in
//!               the order Ferry's own Snapshot RPC sends them
//! 0             a zero length: the end
//! zero bytes    padding, up to 512k + 32 bytes in all
//! SHA-256       of everything before it (32 bytes)
//! ```

use ferry_client::pb;
use ferry_engine::fs::FileSystem;
use prost::Message;
use ring::digest;
use std::io::Read;
use std::path::Path;

const MAGIC: &[u8; 16] = b"ferry-etcd-snap\0";
const VERSION: u8 = 1;
/// The largest chunk message a reader accepts (Ferry sends 1 MiB of data
/// per chunk).
const MAX_CHUNK: u64 = 16 << 20;
const SECTOR: u64 = 512;
const DIGEST: usize = 32;

/// Why a file is not a snapshot this release reads.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a Ferry snapshot saved through etcd's API (no magic)")]
    NotAnArchive,
    #[error("snapshot format version {0}; this release reads version {VERSION}")]
    Version(u8),
    #[error("the SHA-256 at the end does not match the content: the file is damaged")]
    Digest,
    #[error("damaged: {0}")]
    Damaged(&'static str),
}

/// Builds the stream, one piece at a time, hashing what it emits.
pub struct Writer {
    digest: digest::Context,
    written: u64,
}

impl Writer {
    /// A writer and the stream's first bytes (magic and version).
    pub fn start() -> (Writer, Vec<u8>) {
        let mut writer = Writer {
            digest: digest::Context::new(&digest::SHA256),
            written: 0,
        };
        let mut head = MAGIC.to_vec();
        head.push(VERSION);
        writer.hash(&head);
        (writer, head)
    }

    fn hash(&mut self, bytes: &[u8]) {
        self.digest.update(bytes);
        self.written += bytes.len() as u64;
    }

    /// The bytes of one chunk.
    pub fn chunk(&mut self, chunk: &pb::SnapshotChunk) -> Vec<u8> {
        let bytes = chunk.encode_length_delimited_to_vec();
        self.hash(&bytes);
        bytes
    }

    /// The end: the zero length, the padding and the digest.
    pub fn finish(mut self) -> Vec<u8> {
        let mut tail = vec![0u8];
        let after = (self.written + 1) % SECTOR;
        let padding = if after == 0 { 0 } else { SECTOR - after };
        tail.resize(1 + padding as usize, 0);
        self.hash(&tail);
        debug_assert_eq!(self.written % SECTOR, 0);
        tail.extend_from_slice(self.digest.finish().as_ref());
        tail
    }
}

/// Reads the chunks of the file at `path`, after checking its digest, and
/// hands each to `each`; memory stays at one chunk.
pub fn read(
    fs: &dyn FileSystem,
    path: &Path,
    mut each: impl FnMut(pb::SnapshotChunk) -> Result<(), ArchiveError>,
) -> Result<(), ArchiveError> {
    let size = fs.file_size(path)?;
    if size < (MAGIC.len() + 1 + DIGEST) as u64 || size % SECTOR != DIGEST as u64 {
        return Err(ArchiveError::NotAnArchive);
    }
    let content = size - DIGEST as u64;
    // First pass: the digest.
    let mut file = fs.open_sequential(path)?;
    let mut hash = digest::Context::new(&digest::SHA256);
    let mut left = content;
    let mut buffer = vec![0u8; 1 << 20];
    while left > 0 {
        let n = (left as usize).min(buffer.len());
        file.read_exact(&mut buffer[..n])?;
        hash.update(&buffer[..n]);
        left -= n as u64;
    }
    let mut stored = [0u8; DIGEST];
    file.read_exact(&mut stored)?;
    if hash.finish().as_ref() != stored {
        return Err(ArchiveError::Digest);
    }
    // Second pass: the chunks.
    let mut reader = std::io::BufReader::new(fs.open_sequential(path)?.take(content));
    let mut head = [0u8; MAGIC.len() + 1];
    reader.read_exact(&mut head)?;
    if &head[..MAGIC.len()] != MAGIC {
        return Err(ArchiveError::NotAnArchive);
    }
    if head[MAGIC.len()] != VERSION {
        return Err(ArchiveError::Version(head[MAGIC.len()]));
    }
    loop {
        let length = read_varint(&mut reader)?;
        if length == 0 {
            return Ok(());
        }
        if length > MAX_CHUNK {
            return Err(ArchiveError::Damaged("a chunk longer than 16 MiB"));
        }
        let mut message = vec![0u8; length as usize];
        reader.read_exact(&mut message)?;
        let chunk = pb::SnapshotChunk::decode(message.as_slice())
            .map_err(|_| ArchiveError::Damaged("an undecodable chunk"))?;
        each(chunk)?;
    }
}

fn read_varint(reader: &mut impl Read) -> Result<u64, ArchiveError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let mut byte = [0u8];
        reader.read_exact(&mut byte)?;
        value |= u64::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(ArchiveError::Damaged("a length of more than 10 bytes"))
}

/// Whether the file at `path` starts as such a snapshot.
pub fn is_archive(fs: &dyn FileSystem, path: &Path) -> bool {
    let mut head = [0u8; MAGIC.len()];
    fs.open_sequential(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && &head == MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_engine::fs::OsFs;

    fn write(chunks: &[pb::SnapshotChunk]) -> Vec<u8> {
        let (mut writer, mut out) = Writer::start();
        for chunk in chunks {
            out.extend(writer.chunk(chunk));
        }
        out.extend(writer.finish());
        out
    }

    fn data(bytes: &[u8]) -> pb::SnapshotChunk {
        pb::SnapshotChunk {
            chunk: Some(pb::snapshot_chunk::Chunk::Data(bytes.to_vec())),
        }
    }

    #[test]
    fn the_stream_has_etcds_shape_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        for n in [0usize, 1, 100, 480, 481, 5000] {
            let chunks = vec![data(&vec![7u8; n]), data(b"x")];
            let bytes = write(&chunks);
            assert_eq!(bytes.len() as u64 % SECTOR, DIGEST as u64, "{n}");
            let path = dir.path().join(format!("s{n}"));
            std::fs::write(&path, &bytes).unwrap();
            assert!(is_archive(&OsFs, &path));
            let mut back = Vec::new();
            read(&OsFs, &path, |c| {
                back.push(c);
                Ok(())
            })
            .unwrap();
            assert_eq!(back, chunks);
        }
    }

    #[test]
    fn damage_is_refused_before_anything_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = write(&[data(b"hello")]);
        let path = dir.path().join("s");
        bytes[20] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let mut seen = 0;
        let result = read(&OsFs, &path, |_| {
            seen += 1;
            Ok(())
        });
        assert!(matches!(result, Err(ArchiveError::Digest)), "{result:?}");
        assert_eq!(seen, 0);
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(matches!(
            read(&OsFs, &path, |_| Ok(())),
            Err(ArchiveError::NotAnArchive)
        ));
    }
}
