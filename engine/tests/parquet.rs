//! Parquet export and import: round trips, bounded layout, damage, and
//! readability by other tools.

use ferry_engine::columnar::{self, ExportOptions, ParquetCompression, EXPORT_FILE};
use ferry_engine::{Db, Durability, Error, Options};
use std::fs;
use std::path::Path;

#[path = "support/duckdb.rs"]
mod duckdb;

fn options() -> Options {
    Options {
        durability: Durability::Buffered,
        write_buffer_bytes: 256 << 10,
        target_file_bytes: 256 << 10,
        ..Options::default()
    }
}

fn fill(db: &Db, rows: u32) {
    for i in 0..rows {
        db.put(
            format!("key{i:07}"),
            format!("value-{i}-{}", "z".repeat((i % 40) as usize)),
        )
        .unwrap();
    }
    // Some overwrites and deletes, so the snapshot is not just the inserts.
    for i in (0..rows).step_by(7) {
        db.put(format!("key{i:07}"), b"overwritten").unwrap();
    }
    for i in (0..rows).step_by(11) {
        db.delete(format!("key{i:07}")).unwrap();
    }
}

fn small_parts() -> ExportOptions {
    ExportOptions {
        batch_bytes: 16 << 10,
        row_group_bytes: 32 << 10,
        file_bytes: 64 << 10,
        compression: ParquetCompression::Zstd(3),
    }
}

#[test]
fn export_import_round_trip_keeps_content_checksum() {
    let root = tempfile::tempdir().unwrap();
    let source = Db::open(root.path().join("source"), options()).unwrap();
    fill(&source, 30_000);
    let snapshot = source.snapshot();
    // Writes after the snapshot are not exported.
    source.put(b"zzz-after", b"not exported").unwrap();
    let expected = snapshot.content_checksum().unwrap();
    let mut stages = Vec::new();
    let report = source
        .export_parquet(
            &snapshot,
            root.path().join("export"),
            &small_parts(),
            &mut |p| stages.push(p),
        )
        .unwrap();
    assert_eq!(report.manifest.checksum, expected);
    assert_eq!(report.manifest.sequence, snapshot.sequence());
    assert!(
        report.manifest.parts.len() > 1,
        "file_bytes cuts parts: {:?}",
        report.manifest.parts
    );
    assert_eq!(report.manifest.rows, snapshot.iter().count() as u64);
    assert!(stages.last().is_some_and(|p| p.done_bytes == p.total_bytes));

    let target = Db::open(root.path().join("target"), options()).unwrap();
    let imported = target
        .import_parquet(root.path().join("export"), &mut |_| {})
        .unwrap();
    assert_eq!(imported.checksum, expected);
    assert_eq!(target.snapshot().content_checksum().unwrap(), expected);
    assert_eq!(target.get(b"zzz-after").unwrap(), None);
    assert_eq!(target.latest_sequence(), snapshot.sequence());
    // Sequences survive: revisions read the same on both sides.
    let mut a = snapshot.iter();
    let mut b = target.iter();
    for _ in 0..1000 {
        let (ka, _, sa) = a.next_with_sequence().unwrap().unwrap();
        let (kb, _, sb) = b.next_with_sequence().unwrap().unwrap();
        assert_eq!((ka, sa), (kb, sb));
    }
    // The imported database is a normal one: it takes writes after the
    // imported sequence and survives a reopen.
    let written = target.put(b"new", b"after import").unwrap();
    assert!(written > snapshot.sequence());
    target.close().unwrap();
    let reopened = Db::open(root.path().join("target"), options()).unwrap();
    assert_eq!(
        reopened.get(b"new").unwrap().as_deref(),
        Some(&b"after import"[..])
    );
    assert_eq!(reopened.iter().count() as u64, report.manifest.rows + 1);

    // Import refuses a non-empty database.
    assert!(matches!(
        reopened.import_parquet(root.path().join("export"), &mut |_| {}),
        Err(Error::InvalidOptions(_))
    ));
}

#[test]
fn lz4_and_empty_exports() {
    let root = tempfile::tempdir().unwrap();
    let db = Db::open(root.path().join("db"), options()).unwrap();
    let empty = db
        .export_parquet(
            &db.snapshot(),
            root.path().join("empty"),
            &ExportOptions::default(),
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(empty.manifest.rows, 0);
    fill(&db, 2000);
    let lz4 = ExportOptions {
        compression: ParquetCompression::Lz4,
        ..ExportOptions::default()
    };
    let report = db
        .export_parquet(&db.snapshot(), root.path().join("lz4"), &lz4, &mut |_| {})
        .unwrap();
    let restored = root.path().join("restored");
    columnar::restore_parquet(&root.path().join("lz4"), &restored, options(), &mut |_| {}).unwrap();
    let copy = Db::open(&restored, options()).unwrap();
    assert_eq!(
        copy.snapshot().content_checksum().unwrap(),
        report.manifest.checksum
    );
    let nothing = Db::open(root.path().join("from-empty"), options()).unwrap();
    nothing
        .import_parquet(root.path().join("empty"), &mut |_| {})
        .unwrap();
    assert_eq!(nothing.iter().count(), 0);
}

fn exported(root: &Path) -> std::path::PathBuf {
    let db = Db::open(root.join("db"), options()).unwrap();
    fill(&db, 20_000);
    db.export_parquet(
        &db.snapshot(),
        root.join("export"),
        &small_parts(),
        &mut |_| {},
    )
    .unwrap();
    root.join("export")
}

/// Restores `export` over an existing database and checks that the failure
/// names `file` and leaves the old database untouched.
fn expect_failed_restore(root: &Path, export: &Path, file: &str) {
    let target = root.join("live");
    if !target.exists() {
        let db = Db::open(&target, options()).unwrap();
        db.put(b"precious", b"old data").unwrap();
        db.close().unwrap();
    }
    match columnar::restore_parquet(export, &target, options(), &mut |_| {}) {
        Err(error @ (Error::Corruption { .. } | Error::Io { .. } | Error::TooLarge { .. })) => {
            assert!(
                error.to_string().contains(file),
                "error names {file}: {error}"
            )
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a damaged export was restored"),
    }
    let db = Db::open(&target, options()).unwrap();
    assert_eq!(
        db.get(b"precious").unwrap().as_deref(),
        Some(&b"old data"[..])
    );
    assert_eq!(db.iter().count(), 1, "no partial restore");
    assert!(!root.join("live.restoring").exists());
}

#[test]
fn damaged_exports_are_refused_without_partial_restore() {
    let root = tempfile::tempdir().unwrap();
    let export = exported(root.path());
    let part = export.join("part-000001.parquet");
    let original = fs::read(&part).unwrap();

    // Truncated part.
    fs::write(&part, &original[..original.len() / 2]).unwrap();
    expect_failed_restore(root.path(), &export, "part-000001.parquet");

    // A flipped byte inside the data pages.
    let mut flipped = original.clone();
    flipped[original.len() / 3] ^= 0x5a;
    fs::write(&part, &flipped).unwrap();
    expect_failed_restore(root.path(), &export, "part-000001.parquet");

    // Garbage where a Parquet file should be.
    fs::write(&part, b"PAR1 this is not parquet PAR1").unwrap();
    expect_failed_restore(root.path(), &export, "part-000001.parquet");

    // A missing part.
    fs::remove_file(&part).unwrap();
    expect_failed_restore(root.path(), &export, "part-000001.parquet");
    fs::write(&part, &original).unwrap();

    // A tampered EXPORT file.
    let manifest = export.join(EXPORT_FILE);
    let text = fs::read_to_string(&manifest).unwrap();
    fs::write(&manifest, text.replacen("rows ", "rows 1", 1)).unwrap();
    expect_failed_restore(root.path(), &export, EXPORT_FILE);
    fs::write(&manifest, &text).unwrap();

    // Parts swapped: each file is valid, the order is not.
    let first = export.join("part-000000.parquet");
    let a = fs::read(&first).unwrap();
    fs::write(&first, &original).unwrap();
    fs::write(&part, &a).unwrap();
    expect_failed_restore(root.path(), &export, "part-00000");
}

/// DuckDB (installed from PyPI by the test's support code; the test fails
/// if it cannot be had) reads every row of the export, and each is the
/// key, value and sequence the database holds.
#[test]
fn duckdb_reads_every_row_of_the_export() {
    let root = tempfile::tempdir().unwrap();
    let db = Db::open(root.path().join("db"), options()).unwrap();
    for i in 0..20_000u32 {
        db.put(
            format!("key{i:05}"),
            format!("value{i}-{}", "x".repeat((i % 50) as usize)),
        )
        .unwrap();
    }
    db.delete("key00007").unwrap();
    let snapshot = db.snapshot();
    let report = db
        .export_parquet(
            &snapshot,
            root.path().join("export"),
            &small_parts(),
            &mut |_| {},
        )
        .unwrap();
    assert!(report.manifest.parts.len() > 1);
    let files = format!("{}/*.parquet", root.path().join("export").display());
    let rows = duckdb::query(&format!(
        "select decode(key), decode(value), sequence from read_parquet('{files}') order by key"
    ));
    let mut expected = Vec::new();
    let mut iter = snapshot.iter();
    while let Some(entry) = iter.next_with_sequence() {
        let (key, value, sequence) = entry.unwrap();
        expected.push(vec![
            String::from_utf8(key).unwrap(),
            String::from_utf8(value).unwrap(),
            sequence.to_string(),
        ]);
    }
    assert_eq!(rows.len(), 19_999);
    assert_eq!(rows, expected);
}

/// A part is a file from outside the engine: another process may cut it
/// short while it is read (a copy still under way). That is an error
/// naming the file; a memory map of it would fault the whole process.
#[test]
fn a_part_cut_short_while_it_is_read_is_an_error() {
    let root = tempfile::tempdir().unwrap();
    let db = Db::open(root.path().join("db"), options()).unwrap();
    fill(&db, 20_000);
    let export = root.path().join("export");
    let layout = ExportOptions {
        row_group_bytes: 4 << 10,
        file_bytes: 64 << 20,
        ..small_parts()
    };
    db.export_parquet(&db.snapshot(), &export, &layout, &mut |_| {})
        .unwrap();
    let part = export.join("part-000000.parquet");
    let mut reader = columnar::PartReader::open(&ferry_engine::fs::OsFs, &part).unwrap();
    let size = reader.size();
    fs::OpenOptions::new()
        .write(true)
        .open(&part)
        .unwrap()
        .set_len(size / 4)
        .unwrap();
    let error = loop {
        match reader.next_batch() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("every row read from a part cut to a quarter"),
            Err(error) => break error,
        }
    };
    assert!(error.to_string().contains("part-000000.parquet"), "{error}");
}
