//! The state export: one row per user key, as of one revision.

use super::{
    export_error, write_manifest, ExportReport, FORMAT_VERSION, META_APPLIED, META_DRAINING,
    META_EXPORT, META_LEASES, META_MEMBERSHIP, META_REVISION, META_TIME, META_VERSION,
};
use crate::state_machine::keys::{self, Record};
use crate::types::{LogId, StoredMembership};
use arrow_array::builder::{BinaryBuilder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use ferry_engine::columnar::{
    ContentChecksum, ExportManifest, ExportOptions, PartSink, PartWriter,
};
use ferry_engine::Snapshot;
use std::io;
use std::sync::Arc;

pub(crate) const KIND: &str = "state";

pub(crate) fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Binary, false),
        Field::new("value", DataType::Binary, false),
        Field::new("create_revision", DataType::UInt64, false),
        Field::new("mod_revision", DataType::UInt64, false),
        Field::new("version", DataType::UInt64, false),
        Field::new("lease", DataType::UInt64, false),
    ]))
}

/// Rows gathered for the next batch.
#[derive(Default)]
struct Rows {
    keys: BinaryBuilder,
    values: BinaryBuilder,
    create: UInt64Builder,
    modified: UInt64Builder,
    version: UInt64Builder,
    lease: UInt64Builder,
    bytes: usize,
}

impl Rows {
    fn add(&mut self, key: &[u8], record: &Record) {
        self.keys.append_value(key);
        self.values.append_value(&record.value);
        self.create.append_value(record.create_revision);
        self.modified.append_value(record.mod_revision);
        self.version.append_value(record.version);
        self.lease.append_value(record.lease);
        self.bytes += key.len() + record.value.len() + 32;
    }

    fn flush<S: PartSink>(&mut self, writer: &mut PartWriter<S>) -> io::Result<()> {
        if self.bytes == 0 {
            return Ok(());
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.keys.finish()),
            Arc::new(self.values.finish()),
            Arc::new(self.create.finish()),
            Arc::new(self.modified.finish()),
            Arc::new(self.version.finish()),
            Arc::new(self.lease.finish()),
        ];
        let batch = RecordBatch::try_new(writer.schema().clone(), columns).map_err(export_error)?;
        writer.write(&batch).map_err(export_error)?;
        self.bytes = 0;
        Ok(())
    }
}

/// The applied log id, membership and proposal time a view holds.
pub(crate) struct Point {
    pub(crate) applied: Option<LogId>,
    pub(crate) membership: StoredMembership,
    pub(crate) time_ms: u64,
}

pub(crate) fn point(view: &Snapshot) -> io::Result<Point> {
    let get = |key: &[u8]| view.get(key).map_err(io::Error::other);
    fn decode(what: &'static str) -> impl Fn(postcard::Error) -> io::Error {
        move |e| io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {e}"))
    }
    Ok(Point {
        applied: match get(keys::APPLIED)? {
            Some(bytes) => postcard::from_bytes(&bytes).map_err(decode("applied record"))?,
            None => None,
        },
        membership: match get(keys::MEMBERSHIP)? {
            Some(bytes) => postcard::from_bytes(&bytes).map_err(decode("membership record"))?,
            None => StoredMembership::default(),
        },
        time_ms: match get(keys::TIME)? {
            Some(bytes) => postcard::from_bytes(&bytes).map_err(decode("time record"))?,
            None => 0,
        },
    })
}

/// The content checksum of a view's user state (see the module docs).
pub fn user_checksum(view: &Snapshot) -> io::Result<u64> {
    let mut checksum = ContentChecksum::new();
    let (from, to) = keys::user_bounds(&[], None);
    for item in view.range(from..to) {
        let (key, value) = item.map_err(io::Error::other)?;
        let record =
            Record::decode(&value).ok_or_else(|| keys::undecodable("record", &key[1..]))?;
        checksum.add(&key[1..], &record.state_bytes());
    }
    Ok(checksum.value())
}

/// Exports the user state of `view` into `sink`, parts then `EXPORT`.
pub fn export<S: PartSink>(
    view: &Snapshot,
    options: &ExportOptions,
    sink: S,
    progress: &mut dyn FnMut(u64),
) -> io::Result<(ExportReport, S)> {
    let point = point(view)?;
    let revision = point.applied.map_or(0, |l| l.index);
    let mut metadata = vec![
        (META_EXPORT.to_owned(), KIND.to_owned()),
        (META_VERSION.to_owned(), FORMAT_VERSION.to_owned()),
        (META_REVISION.to_owned(), revision.to_string()),
        (META_APPLIED.to_owned(), json(&point.applied)?),
        (META_MEMBERSHIP.to_owned(), json(&point.membership)?),
        (META_TIME.to_owned(), point.time_ms.to_string()),
        (META_LEASES.to_owned(), json(&leases(view)?)?),
    ];
    let draining = crate::lease::store::draining(view)?;
    if !draining.is_empty() {
        metadata.push((META_DRAINING.to_owned(), json(&draining)?));
    }
    let mut writer = PartWriter::new(schema(), options, metadata, sink).map_err(export_error)?;
    let mut rows = Rows::default();
    let mut total = ContentChecksum::new();
    let (from, to) = keys::user_bounds(&[], None);
    for item in view.range(from..to) {
        let (engine_key, value) = item.map_err(io::Error::other)?;
        let key = &engine_key[1..];
        let record = Record::decode(&value).ok_or_else(|| keys::undecodable("record", key))?;
        let canonical = record.state_bytes();
        total.add(key, &canonical);
        writer.checksum(key, &canonical);
        rows.add(key, &record);
        if rows.bytes >= options.batch_bytes {
            rows.flush(&mut writer)?;
            progress(total.rows());
        }
    }
    rows.flush(&mut writer)?;
    let (parts, bytes, mut sink) = writer.finish().map_err(export_error)?;
    let manifest = ExportManifest {
        sequence: revision,
        rows: total.rows(),
        checksum: total.value(),
        parts,
    };
    write_manifest(&mut sink, &manifest)?;
    progress(total.rows());
    Ok((ExportReport { manifest, bytes }, sink))
}

/// The leases `view` holds, as `(id, ttl_ms)`: a restore grants them anew,
/// each for its whole TTL, from when the restored cluster starts.
fn leases(view: &Snapshot) -> io::Result<Vec<(u64, u64)>> {
    Ok(crate::lease::store::all(view)?
        .into_iter()
        .map(|(id, record)| (id, record.ttl_ms))
        .collect())
}

fn json<T: serde::Serialize>(value: &T) -> io::Result<String> {
    serde_json::to_string(value).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Command, Entry, Op, Txn};
    use ferry_engine::columnar::DirSink;
    use ferry_engine::fs::OsFs;
    use ferry_engine::Db;
    use openraft::entry::RaftEntry;

    #[test]
    fn a_replicas_checksum_is_the_checksum_of_its_export() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path().join("db"), Default::default()).unwrap();

        // Two puts in one command (the second at index 1 of its revision),
        // then an overwrite.
        let entries = [
            Txn::batch(vec![Op::put("a", "1"), Op::put("b", "2")]),
            Txn::batch(vec![Op::put("a", "3")]),
        ]
        .into_iter()
        .enumerate()
        .map(|(at, txn)| {
            Entry::new_normal(
                crate::types::log_id(1, 1, at as u64 + 1),
                Command::Txn(txn).into(),
            )
        })
        .collect::<Vec<_>>();
        crate::state_machine::apply::apply_and_write(&db, &entries, |_, _| Ok(())).unwrap();
        let view = db.snapshot();
        let parts = dir.path().join("export");
        std::fs::create_dir(&parts).unwrap();
        let (report, _) = export(
            &view,
            &ExportOptions::default(),
            DirSink::new(&OsFs, &parts),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(report.manifest.rows, 2);
        assert_eq!(user_checksum(&view).unwrap(), report.manifest.checksum);
    }
}
