//! Encoding of segment headers and records (see the module docs for the format).

/// Magic bytes at the start of every log segment.
pub const MAGIC: &[u8; 8] = b"FERRYLOG";
/// Current version of the log format.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of a segment header.
pub const SEGMENT_HEADER_LEN: usize = 16;
/// Bytes of a record header.
pub const RECORD_HEADER_LEN: usize = 16;
/// Largest payload a record may carry. A length above it in a header is
/// damage, not a record: it keeps a flipped bit from making us read gigabytes.
pub const MAX_PAYLOAD_LEN: usize = 1 << 30;

/// Which log a segment belongs to, so a manifest can never be replayed as a
/// WAL by mistake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum LogKind {
    /// The engine's write-ahead log (payload: a write batch).
    Wal = 1,
    /// The engine's manifest (payload: a version edit).
    Manifest = 2,
    /// The Raft log of `ferry-replication`.
    Raft = 3,
}

/// The header that opens every segment of a log of `kind`.
pub fn segment_header(kind: LogKind) -> [u8; SEGMENT_HEADER_LEN] {
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&(kind as u32).to_le_bytes());
    header
}

/// Appends one framed record to `out`.
pub fn encode_record(out: &mut Vec<u8>, sequence: u64, payload: &[u8]) {
    out.extend_from_slice(&record_header(sequence, &[payload]));
    out.extend_from_slice(payload);
}

/// The header of a record whose payload is `parts` laid end to end, so a
/// writer can frame a payload it holds in pieces without first copying it
/// into one buffer.
pub(crate) fn record_header(sequence: u64, parts: &[&[u8]]) -> [u8; RECORD_HEADER_LEN] {
    let length: usize = parts.iter().map(|part| part.len()).sum();
    assert!(
        length <= MAX_PAYLOAD_LEN,
        "record payload over the format limit"
    );
    let mut header = [0u8; RECORD_HEADER_LEN];
    header[4..8].copy_from_slice(&(length as u32).to_le_bytes());
    header[8..16].copy_from_slice(&sequence.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[4..]);
    for part in parts {
        hasher.update(part);
    }
    header[..4].copy_from_slice(&hasher.finalize().to_le_bytes());
    header
}

/// A decoded record header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordHeader {
    pub(crate) crc: u32,
    pub(crate) length: usize,
    pub(crate) sequence: u64,
}

pub(crate) fn decode_header(bytes: &[u8; RECORD_HEADER_LEN]) -> RecordHeader {
    let word =
        |range: std::ops::Range<usize>| -> [u8; 4] { bytes[range].try_into().unwrap_or([0; 4]) };
    let mut sequence = [0u8; 8];
    sequence.copy_from_slice(&bytes[8..16]);
    RecordHeader {
        crc: u32::from_le_bytes(word(0..4)),
        length: u32::from_le_bytes(word(4..8)) as usize,
        sequence: u64::from_le_bytes(sequence),
    }
}

/// CRC of a record from its header bytes (after the CRC field) and payload.
pub(crate) fn record_crc(header: &[u8; RECORD_HEADER_LEN], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[4..]);
    hasher.update(payload);
    hasher.finalize()
}

/// Decodes the one record that starts at `offset` of segment `path`, given
/// `bytes` = the record header and payload as read from there (a reader
/// that keeps an index of record offsets reads exactly
/// [`RECORD_HEADER_LEN`] + length bytes). Returns the sequence and payload
/// after checking length and CRC; damage is [`crate::Error::Corruption`]
/// naming the file and offset.
pub fn decode_record_at<'a>(
    path: &std::path::Path,
    offset: u64,
    bytes: &'a [u8],
) -> crate::Result<(u64, &'a [u8])> {
    let Some(header_bytes) = bytes.first_chunk::<RECORD_HEADER_LEN>() else {
        return Err(crate::Error::corruption(
            path,
            offset,
            "record header is cut short",
        ));
    };
    let header = decode_header(header_bytes);
    let payload = &bytes[RECORD_HEADER_LEN..];
    if header.length != payload.len() {
        return Err(crate::Error::corruption(
            path,
            offset,
            format!(
                "record length {} where {} bytes were expected",
                header.length,
                payload.len()
            ),
        ));
    }
    if record_crc(header_bytes, payload) != header.crc {
        return Err(crate::Error::corruption(
            path,
            offset,
            "record CRC mismatch",
        ));
    }
    Ok((header.sequence, payload))
}
