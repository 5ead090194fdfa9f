//! Damaged files are detected and reported with file and offset, never
//! returned as data.

use ferry_engine::{Db, Durability, Error, Options, WalRecovery};
use std::fs;
use std::path::{Path, PathBuf};

fn options() -> Options {
    Options {
        durability: Durability::Sync,
        block_bytes: 1024,
        ..Options::default()
    }
}

fn key(i: u32) -> Vec<u8> {
    format!("key{i:06}").into_bytes()
}

fn value(i: u32) -> Vec<u8> {
    format!("value-{i}-{}", "x".repeat(40)).into_bytes()
}

fn files_with_suffix(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    files
}

/// The manifest of the database or checkpoint in `dir`.
fn manifest_in(dir: &Path) -> PathBuf {
    files_with_suffix(dir, "")
        .into_iter()
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("MANIFEST-")
        })
        .unwrap()
}

fn flip(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x10;
    fs::write(path, bytes).unwrap();
}

/// A database whose data is only in its WAL (no flush happened).
fn wal_only(n: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    for i in 0..n {
        db.put(key(i), value(i)).unwrap();
    }
    db.close().unwrap();
    let wal = files_with_suffix(dir.path(), ".log")
        .into_iter()
        .find(|p| fs::metadata(p).unwrap().len() > 16)
        .expect("a WAL segment with data");
    (dir, wal)
}

/// A database whose data is only in tables.
fn tables_only(n: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    for i in 0..n {
        db.put(key(i), value(i)).unwrap();
    }
    db.flush().unwrap();
    db.close().unwrap();
    let table = files_with_suffix(dir.path(), ".sst")
        .pop()
        .expect("a table");
    (dir, table)
}

fn expect_corruption(result: Result<Db, Error>, file: &Path) -> (PathBuf, u64) {
    match result {
        Err(Error::Corruption {
            path,
            offset,
            reason,
        }) => {
            assert_eq!(
                path.file_name(),
                file.file_name(),
                "names the damaged file ({reason})"
            );
            (path, offset)
        }
        Err(other) => panic!("expected corruption in {}, got {other}", file.display()),
        Ok(_) => panic!("damage in {} went unnoticed", file.display()),
    }
}

/// A damaged length field in the middle of the last segment that now runs
/// past the end of the file: whole records follow it, so it is corruption,
/// not a torn write (which would drop them, acknowledged as they were).
#[test]
fn a_damaged_record_length_with_records_after_it_fails_open() {
    let (dir, wal) = wal_only(100);
    let record = 16 + (4 + 1 + 1 + 9 + 1 + value(0).len()) as u64;
    // The length is bytes 4..8 of the header: its top byte.
    flip(&wal, 16 + 10 * record + 7);
    let (_, offset) = expect_corruption(Db::open(dir.path(), options()), &wal);
    assert_eq!(offset, 16 + 10 * record, "offset of the damaged record");
}

#[test]
fn flipped_bit_in_the_middle_of_the_wal_fails_open_with_offset() {
    let (dir, wal) = wal_only(100);
    // Record 10 starts at 16 + 10 * record size; flip inside its payload.
    let record = 16 + (4 + 1 + 1 + 9 + 1 + value(0).len()) as u64;
    let target = 16 + 10 * record + 20;
    flip(&wal, target);
    let (_, offset) = expect_corruption(Db::open(dir.path(), options()), &wal);
    assert_eq!(offset, 16 + 10 * record, "offset of the damaged record");
    // Nothing was changed by the failed open: it fails the same way again.
    expect_corruption(Db::open(dir.path(), options()), &wal);

    // Salvage mode opens, keeps what precedes the damage, and says so.
    let salvage = Options {
        wal_recovery: WalRecovery::Salvage,
        ..options()
    };
    let db = Db::open(dir.path(), salvage).unwrap();
    assert_eq!(db.recovery_report().salvaged.len(), 1);
    assert_eq!(db.recovery_report().salvaged[0].1, 16 + 10 * record);
    for i in 0..10 {
        assert_eq!(db.get(key(i)).unwrap(), Some(value(i)));
    }
    assert_eq!(db.get(key(10)).unwrap(), None);
}

#[test]
fn torn_write_at_the_tail_is_truncated_and_reported() {
    let (dir, wal) = wal_only(50);
    let len = fs::metadata(&wal).unwrap().len();
    let file = fs::OpenOptions::new().write(true).open(&wal).unwrap();
    file.set_len(len - 7).unwrap();
    drop(file);
    let db = Db::open(dir.path(), options()).unwrap();
    let (path, _, dropped) = db
        .recovery_report()
        .torn_tail
        .clone()
        .expect("torn tail reported");
    assert_eq!(path.file_name(), wal.file_name());
    assert!(dropped > 0);
    for i in 0..49 {
        assert_eq!(db.get(key(i)).unwrap(), Some(value(i)));
    }
    assert_eq!(
        db.get(key(49)).unwrap(),
        None,
        "the torn record is not half-applied"
    );
    // The cut is durable: the next open finds a clean log.
    db.close().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    assert!(db.recovery_report().torn_tail.is_none());
    assert_eq!(db.iter().count(), 49);
}

#[test]
fn flipped_bit_in_a_data_block_is_an_error_never_data() {
    let (dir, table) = tables_only(2000);
    let len = fs::metadata(&table).unwrap().len();
    flip(&table, len / 3);
    let db = Db::open(dir.path(), options()).expect("index and footer are intact");
    let mut errors = 0;
    for i in 0..2000 {
        match db.get(key(i)) {
            Ok(found) => assert_eq!(
                found,
                Some(value(i)),
                "key {i}: wrong answer instead of an error"
            ),
            Err(Error::Corruption { path, reason, .. }) => {
                assert_eq!(path.file_name(), table.file_name());
                assert!(
                    reason.contains("checksum") || reason.contains("lz4"),
                    "{reason}"
                );
                errors += 1;
            }
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    assert!(errors > 0, "the damaged block was read and must fail");
    let scan: Result<Vec<_>, _> = db.iter().collect();
    assert!(
        scan.unwrap_err().is_corruption(),
        "a scan through the damage fails"
    );
}

#[test]
fn flipped_bit_in_a_footer_or_index_fails_open() {
    for from_end in [3u64, 30, 70] {
        let (dir, table) = tables_only(500);
        let len = fs::metadata(&table).unwrap().len();
        flip(&table, len - from_end);
        expect_corruption(Db::open(dir.path(), options()), &table);
    }
}

#[test]
fn truncated_table_fails_open() {
    let (dir, table) = tables_only(500);
    let len = fs::metadata(&table).unwrap().len();
    let file = fs::OpenOptions::new().write(true).open(&table).unwrap();
    file.set_len(len / 2).unwrap();
    drop(file);
    expect_corruption(Db::open(dir.path(), options()), &table);
}

#[test]
fn flipped_bit_in_the_manifest_fails_open() {
    let (dir, _) = tables_only(100);
    // Make the manifest hold more than one edit, then damage the first.
    {
        let db = Db::open(dir.path(), options()).unwrap();
        db.put(b"more", b"data").unwrap();
        db.flush().unwrap();
        db.close().unwrap();
    }
    let manifest = manifest_in(dir.path());
    flip(&manifest, 16 + 16 + 2);
    expect_corruption(Db::open(dir.path(), options()), &manifest);
}

/// A manifest of one record (a checkpoint's, or one just rolled) whose
/// record is damaged: the damage is not taken for a torn tail, which would
/// open an empty database and delete every table.
#[test]
fn a_damaged_manifest_of_one_record_fails_open_and_keeps_the_tables() {
    let (dir, _) = tables_only(100);
    let checkpoint = dir.path().join("checkpoint");
    {
        let db = Db::open(dir.path(), options()).unwrap();
        db.checkpoint(&checkpoint).unwrap();
        db.close().unwrap();
    }
    let tables = files_with_suffix(&checkpoint, ".sst");
    assert!(!tables.is_empty());
    let manifest = manifest_in(&checkpoint);
    // A bit of the record's CRC, then (a fresh copy) of its length.
    let pristine = fs::read(&manifest).unwrap();
    for offset in [16 + 2, 16 + 10] {
        fs::write(&manifest, &pristine).unwrap();
        flip(&manifest, offset);
        expect_corruption(Db::open(&checkpoint, options()), &manifest);
        assert_eq!(files_with_suffix(&checkpoint, ".sst"), tables);
    }
}

#[test]
fn missing_current_with_data_present_is_reported() {
    let (dir, _) = tables_only(10);
    fs::remove_file(dir.path().join("CURRENT")).unwrap();
    match Db::open(dir.path(), options()) {
        Err(Error::Corruption { reason, .. }) => assert!(reason.contains("CURRENT")),
        other => panic!("expected a corruption error, got {other:?}"),
    }
}

/// What a first open killed after writing its manifest, before CURRENT,
/// leaves (a manifest, nothing else): no database was ever there, so the
/// next open creates one instead of refusing the directory.
#[test]
fn a_first_open_stopped_before_current_is_a_new_database() {
    let dir = tempfile::tempdir().unwrap();
    Db::open(dir.path(), options()).unwrap().close().unwrap();
    fs::remove_file(dir.path().join("CURRENT")).unwrap();
    for log in files_with_suffix(dir.path(), ".log") {
        fs::remove_file(log).unwrap();
    }
    assert!(!files_with_suffix(dir.path(), "").is_empty());
    let db = Db::open(dir.path(), options()).unwrap();
    assert_eq!(db.get(b"k").unwrap(), None);
    db.put(b"k", b"v").unwrap();
    db.close().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn a_table_the_manifest_needs_is_missing() {
    let (dir, table) = tables_only(10);
    fs::remove_file(&table).unwrap();
    match Db::open(dir.path(), options()) {
        Err(Error::Io { path, .. }) => assert_eq!(path, table),
        other => panic!("expected an I/O error naming the table, got {other:?}"),
    }
}
