//! Reading a log segment back, with the torn-tail and corruption rules.

use super::record::{
    decode_header, record_crc, LogKind, FORMAT_VERSION, MAGIC, MAX_PAYLOAD_LEN, RECORD_HEADER_LEN,
    SEGMENT_HEADER_LEN,
};
use crate::error::IoContext;
use crate::fs::FileSystem;
use crate::{Error, Result};
use std::io::Read;
use std::path::Path;

/// How damage at the end of a segment is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailPolicy {
    /// This is the last segment: a torn tail is cut off and reported.
    TolerateTornTail,
    /// Not the last segment: any damage is corruption.
    Strict,
    /// Salvage: any damage ends the segment, reported, never an error.
    Salvage,
}

/// What reading a segment found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentOutcome {
    /// Records delivered.
    pub records: u64,
    /// Length of the segment up to the end of the last good record.
    pub valid_len: u64,
    /// Offset and cause of damage that ended the segment early, if any.
    pub damage: Option<(u64, String)>,
    /// Bytes after `valid_len` that were dropped.
    pub dropped_bytes: u64,
    /// Zero bytes after the last record of a segment that reserved space
    /// ahead of its appends ([`crate::fs::FileSystem::create_log`]) and was
    /// not finished: unused space, not damage. Only in the last segment
    /// (or when salvaging); anywhere else a zero tail is corruption.
    pub unused_bytes: u64,
}

/// Reads every record of a segment, streaming (memory: one record), and hands
/// `(sequence, payload)` to `on_record`. Sequences must not decrease.
pub fn read_segment(
    fs: &dyn FileSystem,
    path: &Path,
    kind: LogKind,
    policy: TailPolicy,
    mut on_record: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<SegmentOutcome> {
    let file_len = fs.file_size(path).at(path)?;
    let mut reader = fs.open_sequential(path).at(path)?;
    let mut outcome = SegmentOutcome::default();

    // A segment whose header never fully reached the disk was created just
    // before a crash and holds nothing.
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    if file_len < SEGMENT_HEADER_LEN as u64 {
        return damaged_tail(
            path,
            policy,
            outcome,
            0,
            file_len,
            "segment header is cut short".into(),
            &mut reader,
        );
    }
    reader.read_exact(&mut header).at(path)?;
    if &header[..8] != MAGIC {
        if header.iter().all(|&b| b == 0) {
            return damaged_tail(
                path,
                policy,
                outcome,
                0,
                file_len,
                "segment header is zeroed".into(),
                &mut reader,
            );
        }
        return Err(Error::corruption(
            path,
            0,
            "bad magic: not a Ferry log segment",
        ));
    }
    let version = u32::from_le_bytes(header[8..12].try_into().unwrap_or_default());
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            path: path.to_path_buf(),
            version,
        });
    }
    let found_kind = u32::from_le_bytes(header[12..16].try_into().unwrap_or_default());
    if found_kind != kind as u32 {
        return Err(Error::corruption(
            path,
            12,
            format!("log kind {found_kind}, expected {}", kind as u32),
        ));
    }

    let mut offset = SEGMENT_HEADER_LEN as u64;
    outcome.valid_len = offset;
    let mut payload = Vec::new();
    let mut last_sequence: Option<u64> = None;
    while offset < file_len {
        let remaining = file_len - offset;
        // A header, or as much of one as the file still holds.
        let header_len = remaining.min(RECORD_HEADER_LEN as u64) as usize;
        let mut header_bytes = [0u8; RECORD_HEADER_LEN];
        reader
            .read_exact(&mut header_bytes[..header_len])
            .at(path)?;
        if policy != TailPolicy::Strict && all_zero(&header_bytes[..header_len]) {
            // No record has an all-zero header (its CRC would have to be
            // the CRC of twelve zero bytes, which is not zero): this is
            // where the records end, if only zeros follow.
            if rest_is_zero(&mut reader).at(path)? {
                outcome.unused_bytes = remaining;
                return Ok(outcome);
            }
            return damaged_strict(
                path,
                policy,
                outcome,
                offset,
                file_len,
                "zeroed record header followed by data".into(),
            );
        }
        if header_len < RECORD_HEADER_LEN {
            // The partial header is the last thing in the file: nothing
            // follows it, so it is a torn write whatever its bytes are.
            return torn_or_strict(
                path,
                policy,
                outcome,
                offset,
                file_len,
                "record header is cut short".into(),
                true,
            );
        }
        let header = decode_header(&header_bytes);
        let record_end = offset + (RECORD_HEADER_LEN + header.length) as u64;
        let bad_extent = if header.length > MAX_PAYLOAD_LEN {
            Some(format!("implausible record length {}", header.length))
        } else if record_end > file_len {
            Some("record is cut short".to_owned())
        } else {
            None
        };
        if let Some(reason) = bad_extent {
            return damaged_after_header(
                path,
                policy,
                outcome,
                offset,
                file_len,
                reason,
                &header_bytes,
                last_sequence,
                &mut reader,
            );
        }
        payload.resize(header.length, 0);
        reader.read_exact(&mut payload).at(path)?;
        if record_crc(&header_bytes, &payload) != header.crc {
            // A bad record with nothing but zeros after it (the end of the
            // file, or a segment's reserved space) is what a torn write
            // leaves; with data after it, it is corruption.
            let reason = "record checksum mismatch".to_owned();
            return damaged_tail(path, policy, outcome, offset, file_len, reason, &mut reader);
        }
        if last_sequence.is_some_and(|last| header.sequence < last) {
            return Err(Error::corruption(
                path,
                offset,
                format!(
                    "sequence {} after {}",
                    header.sequence,
                    last_sequence.unwrap_or_default()
                ),
            ));
        }
        last_sequence = Some(header.sequence);
        on_record(header.sequence, &payload)?;
        outcome.records += 1;
        offset = record_end;
        outcome.valid_len = offset;
    }
    Ok(outcome)
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// Whether everything left in `reader` is zero, read in bounded memory.
fn rest_is_zero(reader: &mut impl Read) -> std::io::Result<bool> {
    let mut buffer = [0u8; 64 << 10];
    loop {
        match reader.read(&mut buffer)? {
            0 => return Ok(true),
            read if !all_zero(&buffer[..read]) => return Ok(false),
            _ => {}
        }
    }
}

/// Damage where the bytes up to the end of the file might be a torn write:
/// torn if everything from `offset` on is either missing or zero.
#[allow(clippy::too_many_arguments)]
fn damaged_after_header(
    path: &Path,
    policy: TailPolicy,
    outcome: SegmentOutcome,
    offset: u64,
    file_len: u64,
    reason: String,
    header_bytes: &[u8],
    last_sequence: Option<u64>,
    reader: &mut Box<dyn Read + Send>,
) -> Result<SegmentOutcome> {
    if all_zero(header_bytes) {
        return damaged_tail(path, policy, outcome, offset, file_len, reason, reader);
    }
    // A non-zero header whose length runs past the end of the file is a
    // record whose write was interrupted, unless a whole record follows
    // it: then its length field is damaged, and taking it for a torn tail
    // would drop that record and every later one.
    let declared_past_end = {
        let header: [u8; RECORD_HEADER_LEN] =
            header_bytes.try_into().unwrap_or([0; RECORD_HEADER_LEN]);
        let length = decode_header(&header).length as u64;
        offset + RECORD_HEADER_LEN as u64 + length > file_len
    };
    if declared_past_end {
        let remaining = file_len - offset - RECORD_HEADER_LEN as u64;
        if record_follows(reader, remaining, last_sequence).at(path)? {
            let reason = format!("{reason}, but whole records follow: a damaged length");
            return damaged_strict(path, policy, outcome, offset, file_len, reason);
        }
        // Whatever follows the header is the record's own partial payload.
        return torn_or_strict(path, policy, outcome, offset, file_len, reason, true);
    }
    damaged_strict(path, policy, outcome, offset, file_len, reason)
}

/// Whether the `remaining` bytes of `reader` hold, at any offset, a whole
/// record with a good checksum and a sequence just after `last` (within
/// 2^32: sequences grow by batch sizes). A torn write leaves only its own
/// partial payload there. The search reads everything left (a log segment
/// is bounded) and checks the checksum only where the sequence fits.
fn record_follows(
    reader: &mut Box<dyn Read + Send>,
    remaining: u64,
    last: Option<u64>,
) -> std::io::Result<bool> {
    /// Beyond this, damage is not taken for a torn write at all.
    const SEARCHED: u64 = 1 << 30;
    let Some(last) = last else {
        // Nothing to tell a following record by: the first record's own.
        return Ok(false);
    };
    if remaining > SEARCHED {
        return Ok(true);
    }
    let mut rest = Vec::with_capacity(remaining as usize);
    reader.take(remaining).read_to_end(&mut rest)?;
    let fits = |sequence: u64| sequence > last && sequence - last <= 1 << 32;
    for at in 0..rest.len().saturating_sub(RECORD_HEADER_LEN) {
        let bytes: [u8; RECORD_HEADER_LEN] = rest[at..at + RECORD_HEADER_LEN]
            .try_into()
            .expect("a header's length");
        let header = decode_header(&bytes);
        let start = at + RECORD_HEADER_LEN;
        if !fits(header.sequence) || header.length > rest.len() - start {
            continue;
        }
        if record_crc(&bytes, &rest[start..start + header.length]) == header.crc {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Damage in a region that runs to the end of the file: a torn tail if
/// nothing but zeros follows.
fn damaged_tail(
    path: &Path,
    policy: TailPolicy,
    outcome: SegmentOutcome,
    offset: u64,
    file_len: u64,
    reason: String,
    reader: &mut Box<dyn Read + Send>,
) -> Result<SegmentOutcome> {
    // A torn write may be followed only by zeros (a file system that
    // extended the file before the data landed); anything else after it
    // means this is not a tail.
    let torn = rest_is_zero(reader).at(path)?;
    torn_or_strict(path, policy, outcome, offset, file_len, reason, torn)
}

fn torn_or_strict(
    path: &Path,
    policy: TailPolicy,
    mut outcome: SegmentOutcome,
    offset: u64,
    file_len: u64,
    reason: String,
    torn: bool,
) -> Result<SegmentOutcome> {
    match policy {
        TailPolicy::TolerateTornTail if torn => {
            outcome.damage = Some((offset, reason));
            outcome.dropped_bytes = file_len - outcome.valid_len;
            Ok(outcome)
        }
        _ => damaged_strict(path, policy, outcome, offset, file_len, reason),
    }
}

fn damaged_strict(
    path: &Path,
    policy: TailPolicy,
    mut outcome: SegmentOutcome,
    offset: u64,
    file_len: u64,
    reason: String,
) -> Result<SegmentOutcome> {
    if policy == TailPolicy::Salvage {
        outcome.damage = Some((offset, reason));
        outcome.dropped_bytes = file_len - outcome.valid_len;
        return Ok(outcome);
    }
    Err(Error::corruption(path, offset, reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{FaultInjectionFs, FileSystem};
    use crate::wal::LogWriter;

    fn write_log(fs: &FaultInjectionFs, path: &Path, records: &[&[u8]]) {
        let mut writer = LogWriter::create(fs, path, LogKind::Wal).unwrap();
        for (i, record) in records.iter().enumerate() {
            writer.append(i as u64 + 1, record).unwrap();
        }
        writer.sync().unwrap();
    }

    fn read_all(
        fs: &FaultInjectionFs,
        path: &Path,
        policy: TailPolicy,
    ) -> Result<(Vec<Vec<u8>>, SegmentOutcome)> {
        let mut out = Vec::new();
        let outcome = read_segment(fs, path, LogKind::Wal, policy, |_, p| {
            out.push(p.to_vec());
            Ok(())
        })?;
        Ok((out, outcome))
    }

    fn setup() -> (FaultInjectionFs, std::path::PathBuf) {
        let fs = FaultInjectionFs::new();
        fs.create_dir_all(Path::new("/w")).unwrap();
        (fs, Path::new("/w/000001.log").to_path_buf())
    }

    #[test]
    fn round_trip() {
        let (fs, path) = setup();
        write_log(&fs, &path, &[b"one", b"", b"three"]);
        let (records, outcome) = read_all(&fs, &path, TailPolicy::Strict).unwrap();
        assert_eq!(records, vec![b"one".to_vec(), vec![], b"three".to_vec()]);
        assert_eq!(outcome.damage, None);
    }

    #[test]
    fn torn_tail_is_cut_only_in_last_segment() {
        let (fs, path) = setup();
        write_log(&fs, &path, &[b"one", b"two"]);
        let len = fs.file_size(&path).unwrap();
        fs.truncate(&path, len - 2).unwrap();
        let (records, outcome) = read_all(&fs, &path, TailPolicy::TolerateTornTail).unwrap();
        assert_eq!(records, vec![b"one".to_vec()]);
        assert_eq!(outcome.damage.as_ref().map(|d| d.0), Some(16 + 16 + 3));
        let err = read_all(&fs, &path, TailPolicy::Strict).unwrap_err();
        assert!(err.to_string().contains("offset 35"), "{err}");
    }

    #[test]
    fn bit_flip_in_the_middle_is_corruption_even_in_last_segment() {
        let (fs, path) = setup();
        write_log(&fs, &path, &[b"one", b"two", b"three"]);
        fs.corrupt_byte(&path, 16 + 16 + 1).unwrap();
        let err = read_all(&fs, &path, TailPolicy::TolerateTornTail).unwrap_err();
        assert!(err.is_corruption());
        assert!(err.to_string().contains("000001.log at offset 16"), "{err}");
        let (records, outcome) = read_all(&fs, &path, TailPolicy::Salvage).unwrap();
        assert!(records.is_empty());
        assert_eq!(outcome.damage.unwrap().0, 16);
    }

    #[test]
    fn bit_flip_in_last_record_is_a_torn_tail() {
        let (fs, path) = setup();
        write_log(&fs, &path, &[b"one", b"two"]);
        let len = fs.file_size(&path).unwrap() as usize;
        fs.corrupt_byte(&path, len - 1).unwrap();
        let (records, _) = read_all(&fs, &path, TailPolicy::TolerateTornTail).unwrap();
        assert_eq!(records, vec![b"one".to_vec()]);
    }

    fn append_raw(fs: &FaultInjectionFs, path: &Path, bytes: &[u8]) {
        let mut file = fs.open_append(path).unwrap();
        file.append(bytes).unwrap();
        file.sync().unwrap();
    }

    #[test]
    fn zero_filled_tail_is_unused_space_only_in_last_segment() {
        // A reserving segment that was never finished: records, then zeros,
        // in lengths that end inside and past a record header.
        for zeros in [7usize, 100, 70_000] {
            let (fs, path) = setup();
            write_log(&fs, &path, &[b"one"]);
            append_raw(&fs, &path, &vec![0u8; zeros]);
            for policy in [TailPolicy::TolerateTornTail, TailPolicy::Salvage] {
                let (records, outcome) = read_all(&fs, &path, policy).unwrap();
                assert_eq!(records, vec![b"one".to_vec()]);
                assert_eq!(outcome.damage, None);
                assert_eq!(outcome.unused_bytes, zeros as u64);
                assert_eq!(outcome.valid_len, 16 + 16 + 3);
            }
            let err = read_all(&fs, &path, TailPolicy::Strict).unwrap_err();
            assert!(err.is_corruption(), "{err}");
        }
    }

    #[test]
    fn a_torn_record_before_reserved_zeros_is_a_torn_tail() {
        // A writer killed while storing a record into reserved space leaves
        // a prefix of its bytes, then zeros: cut at every length.
        let (fs, path) = setup();
        write_log(&fs, &path, &[b"one"]);
        let mut record = Vec::new();
        crate::wal::encode_record(&mut record, 2, b"a record that was being stored");
        for landed in 1..record.len() {
            let (fs, path) = (fs.process_crash_image(), path.clone());
            let mut tail = record[..landed].to_vec();
            tail.resize(4096, 0);
            append_raw(&fs, &path, &tail);
            let (records, outcome) = read_all(&fs, &path, TailPolicy::TolerateTornTail)
                .unwrap_or_else(|e| panic!("{landed} bytes landed: {e}"));
            assert_eq!(records, vec![b"one".to_vec()], "{landed} bytes landed");
            assert_eq!(outcome.valid_len, 16 + 16 + 3);
        }
    }

    #[test]
    fn zeros_followed_by_data_are_corruption() {
        let (fs, path) = setup();
        write_log(&fs, &path, &[b"one"]);
        let mut tail = vec![0u8; 100];
        tail.push(1);
        append_raw(&fs, &path, &tail);
        let err = read_all(&fs, &path, TailPolicy::TolerateTornTail).unwrap_err();
        assert!(err.to_string().contains("offset 35"), "{err}");
    }

    #[test]
    fn an_all_zero_header_is_never_a_valid_record() {
        let header = [0u8; RECORD_HEADER_LEN];
        assert_ne!(record_crc(&header, &[]), 0);
    }

    #[test]
    fn partial_record_header_at_the_end_is_torn_whatever_its_bytes() {
        let (fs, path) = setup();
        write_log(&fs, &path, &[b"one"]);
        let mut file = fs.open_append(&path).unwrap();
        file.append(&[0x5a; 9]).unwrap();
        file.sync().unwrap();
        let (records, outcome) = read_all(&fs, &path, TailPolicy::TolerateTornTail).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(outcome.dropped_bytes, 9);
        let err = read_all(&fs, &path, TailPolicy::Strict).unwrap_err();
        assert!(err.to_string().contains("cut short"), "{err}");
    }
}
