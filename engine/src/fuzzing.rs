//! Entry points for the fuzz targets in `fuzz/`: every decoder that reads
//! bytes from disk, run on arbitrary input. Each must return an error for
//! garbage, never panic, hang or allocate without bound.
//!
//! Not part of the stable API.

use crate::batch::BatchIter;
use crate::cache::BlockCache;
use crate::fs::{FaultInjectionFs, FileSystem};
use crate::iter::EntryIter;
use crate::manifest::edit::VersionEdit;
use crate::sst::table::{Table, TableIter};
use crate::stats::Counters;
use crate::wal::{read_segment, LogKind, TailPolicy};
use std::path::Path;
use std::sync::Arc;

fn file_system_with(bytes: &[u8]) -> (FaultInjectionFs, &'static Path) {
    let fs = FaultInjectionFs::new();
    let dir = Path::new("/fuzz");
    let path = Path::new("/fuzz/000001.bin");
    let created = fs.create_dir_all(dir).and_then(|()| fs.create(path));
    if let Ok(mut file) = created {
        let _ = file.append(bytes).and_then(|()| file.sync());
    }
    (fs, path)
}

/// Reads `bytes` as a WAL segment under every tail policy, decoding each
/// record as a write batch.
pub fn wal_segment(bytes: &[u8]) {
    let (fs, path) = file_system_with(bytes);
    for policy in [
        TailPolicy::Strict,
        TailPolicy::TolerateTornTail,
        TailPolicy::Salvage,
    ] {
        let _ = read_segment(&fs, path, LogKind::Wal, policy, |_, payload| {
            write_batch(payload);
            Ok(())
        });
    }
}

/// Decodes `bytes` as a write batch payload. Property: a payload whose
/// ops all decode is the encoding of the batch of those ops (up to any
/// bytes after the last op, which the decoder does not read).
pub fn write_batch(bytes: &[u8]) {
    let Some(ops) = BatchIter::decode(bytes) else {
        return;
    };
    let mut rebuilt = crate::WriteBatch::new();
    // The count comes from the input: stop at the first bad op, and never
    // loop longer than the bytes could hold.
    for op in ops.take(bytes.len() + 1) {
        let Some(op) = op else {
            return;
        };
        match op.kind {
            crate::key::ValueKind::Put => rebuilt.put(op.key, op.value),
            crate::key::ValueKind::Delete => rebuilt.delete(op.key),
        }
    }
    let (count, body) = rebuilt.wal_payload();
    let encoded = [count.as_slice(), body].concat();
    assert!(
        bytes.starts_with(&encoded),
        "a decoded batch re-encodes to other bytes"
    );
}

/// Decodes `bytes` as a manifest version edit. Property: a decoded edit
/// re-encodes into bytes that decode to the same edit.
pub fn version_edit(bytes: &[u8]) {
    if let Ok(edit) = VersionEdit::decode(bytes) {
        let again = VersionEdit::decode(&edit.encode()).expect("a re-encoded edit decodes");
        assert_eq!(again, edit, "version edit round trip");
    }
}

/// Opens `bytes` as a table and reads it both ways and by point lookups.
/// Property: when both scans read the whole table without an error, the
/// backward scan yields the forward scan's entries in reverse.
pub fn table(bytes: &[u8]) {
    let (fs, path) = file_system_with(bytes);
    let cache = Arc::new(BlockCache::new(1 << 20));
    let Ok(table) = Table::open(&fs, path, 1, cache, Arc::new(Counters::default())) else {
        return;
    };
    let table = Arc::new(table);
    type Entries = Vec<(Vec<u8>, Vec<u8>)>;
    let mut scans: Vec<Option<Entries>> = Vec::new();
    for reverse in [false, true] {
        let mut iter = TableIter::new(table.clone(), reverse);
        let mut entries = Vec::new();
        let mut whole = iter.seek(None).is_ok();
        while whole && entries.len() < 100_000 {
            let Some((key, value)) = iter.current() else {
                break;
            };
            entries.push((key.to_vec(), value.to_vec()));
            whole = iter.advance().is_ok();
        }
        scans.push((whole && entries.len() < 100_000).then_some(entries));
    }
    if let [Some(forward), Some(backward)] = &scans[..] {
        let mut reversed = backward.clone();
        reversed.reverse();
        assert!(
            *forward == reversed,
            "a table's backward scan is not its forward scan reversed"
        );
    }
    for probe in [&b""[..], b"a", b"key", b"\xff\xff"] {
        let _ = table.get(&crate::sst::table::PointQuery::new(
            probe,
            crate::key::MAX_SEQUENCE,
        ));
    }
}

/// Decodes `bytes` as a checkpoint's `CHECKPOINT` file. Property: what
/// decodes re-encodes into bytes that decode to the same metadata, with
/// the checksum the encoder reported.
pub fn checkpoint_meta(bytes: &[u8]) {
    use crate::checkpoint::meta::CheckpointMeta;
    let path = Path::new("CHECKPOINT");
    if let Ok((meta, _)) = CheckpointMeta::decode(bytes, path) {
        let (again, crc) = meta.encode();
        let (decoded, decoded_crc) =
            CheckpointMeta::decode(&again, path).expect("a re-encoded CHECKPOINT decodes");
        assert_eq!(decoded, meta, "CHECKPOINT round trip");
        assert_eq!(decoded_crc, crc);
    }
}

/// A valid `CHECKPOINT` file (a delta with new and base files), for seeds.
pub fn sample_checkpoint_meta() -> Vec<u8> {
    use crate::checkpoint::meta::{BaseRef, CheckpointFile, CheckpointMeta, Origin};
    CheckpointMeta {
        id: "ckpt-2".into(),
        sequence: 4711,
        created_unix_ms: 1_700_000_000_000,
        base: Some(BaseRef {
            id: "ckpt-1".into(),
            checksum: 0xdead_beef,
        }),
        files: vec![
            CheckpointFile {
                name: "000004.sst".into(),
                size: 4096,
                crc: 7,
                origin: Origin::New,
            },
            CheckpointFile {
                name: "000002.sst".into(),
                size: 1 << 20,
                crc: 9,
                origin: Origin::Base,
            },
        ],
    }
    .encode()
    .0
}

/// A real table, for seeds: mutations of it reach past the footer.
pub fn sample_table() -> Vec<u8> {
    let fs = FaultInjectionFs::new();
    fs.create_dir_all(Path::new("/t")).unwrap();
    let path = Path::new("/t/1.sst");
    let options = crate::sst::builder::TableOptions {
        block_bytes: 128,
        restart_interval: 4,
        bloom_bits_per_key: 10,
        compression: true,
    };
    let mut builder =
        crate::sst::builder::TableBuilder::new(fs.create(path).unwrap(), path, options);
    for i in 0..200u32 {
        let mut key = Vec::new();
        crate::key::encode_into(
            &mut key,
            format!("key{i:04}").as_bytes(),
            1,
            crate::key::ValueKind::Put,
        );
        builder
            .add(&key, format!("value{i}").repeat(3).as_bytes())
            .unwrap();
    }
    builder.finish().unwrap();
    fs.read_all(path).unwrap()
}

/// A Parquet part of a columnar export, read as an import reads it: its
/// metadata, then every row batch. Property: damage of any kind is a typed
/// error (the reader turns the parquet crate's panics into errors), and
/// reading ends.
pub fn parquet_part(bytes: &[u8]) {
    let (fs, path) = file_system_with(bytes);
    let Ok(mut reader) = crate::columnar::PartReader::open(&fs, path) else {
        return;
    };
    let _ = reader.metadata("ferry.export");
    // A part's batches are bounded by its bytes; the cap is for a reader bug.
    for _ in 0..bytes.len() + 1 {
        match reader.next_batch() {
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return,
        }
    }
    panic!(
        "a part of {} bytes gave more batches than bytes",
        bytes.len()
    );
}

/// A real part of a columnar export, for seeds.
pub fn sample_parquet_part() -> Vec<u8> {
    let fs = FaultInjectionFs::new();
    let options = crate::Options {
        fs: Arc::new(fs.clone()),
        background_work: false,
        ..crate::Options::default()
    };
    let db = crate::Db::open("/db", options).expect("an in-memory database");
    for i in 0..50u32 {
        db.put(format!("key{i:03}"), format!("value{i}"))
            .expect("an in-memory write");
    }
    let snapshot = db.snapshot();
    db.export_parquet(
        &snapshot,
        "/export",
        &crate::columnar::ExportOptions::default(),
        &mut |_| {},
    )
    .expect("an in-memory export");
    let part = fs
        .list(Path::new("/export"))
        .expect("the export's directory")
        .into_iter()
        .find(|name| name.ends_with(".parquet"))
        .expect("a part");
    fs.read_all(&Path::new("/export").join(part))
        .expect("the part's bytes")
}

/// A fuzz target: its name (the fuzz crate's binary, the corpus folder)
/// and its entry point.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by name (the fuzz crate's binaries and the stable runner
/// in `ferry-replication`'s tests take them from here).
pub const TARGETS: &[Target] = &[
    ("wal_segment", wal_segment),
    ("write_batch", write_batch),
    ("version_edit", version_edit),
    ("table", table),
    ("checkpoint_meta", checkpoint_meta),
    ("parquet_part", parquet_part),
];

/// Valid inputs for every target, built by this release's writers.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut batch = crate::WriteBatch::new();
    batch.put(b"task/1", b"queued");
    batch.delete(b"task/0");
    let (count, body) = batch.wal_payload();
    let payload = [count.as_slice(), body].concat();
    let mut segment = crate::wal::segment_header(LogKind::Wal).to_vec();
    crate::wal::encode_record(&mut segment, 1, &payload);
    crate::wal::encode_record(&mut segment, 3, &payload);
    let edit = VersionEdit {
        log_number: Some(9),
        next_file_number: Some(12),
        last_sequence: Some(4711),
        deleted: vec![(0, 3)],
        ..VersionEdit::default()
    };
    vec![
        ("wal_segment", segment),
        ("write_batch", payload),
        ("version_edit", edit.encode()),
        ("table", sample_table()),
        ("checkpoint_meta", sample_checkpoint_meta()),
        ("parquet_part", sample_parquet_part()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        #[test]
        fn decoders_survive_garbage(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            wal_segment(&bytes);
            write_batch(&bytes);
            version_edit(&bytes);
            table(&bytes);
            checkpoint_meta(&bytes);
        }

        #[test]
        fn batches_and_edits_hold_their_round_trip_under_mutations(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
            let mut batch = crate::WriteBatch::new();
            batch.put(b"task/1", b"queued");
            batch.delete(b"task/0");
            batch.put(b"", vec![7u8; 200]);
            let (count, body) = batch.wal_payload();
            let mut batch_bytes = [count.as_slice(), body].concat();
            let edit = VersionEdit {
                log_number: Some(9),
                next_file_number: Some(12),
                last_sequence: Some(4711),
                added: vec![(1, crate::manifest::edit::TableMeta {
                    number: 11,
                    size: 4096,
                    file_crc: 7,
                    min_sequence: 1,
                    max_sequence: 4711,
                    smallest: b"a".to_vec(),
                    largest: b"z".to_vec(),
                })],
                deleted: vec![(0, 3)],
            };
            let mut edit_bytes = edit.encode();
            for (index, value) in flips {
                let at = index.index(batch_bytes.len());
                batch_bytes[at] = value;
                let at = index.index(edit_bytes.len());
                edit_bytes[at] = value;
            }
            write_batch(&batch_bytes);
            version_edit(&edit_bytes);
        }

        #[test]
        fn checkpoint_meta_survives_mutations(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
            let mut bytes = sample_checkpoint_meta();
            for (index, value) in flips {
                let at = index.index(bytes.len());
                bytes[at] = value;
            }
            checkpoint_meta(&bytes);
        }

        #[test]
        fn table_reader_survives_mutations(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
            let mut bytes = sample_table();
            for (index, value) in flips {
                let at = index.index(bytes.len());
                bytes[at] = value;
            }
            table(&bytes);
        }
    }
}
